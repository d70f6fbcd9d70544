//! [`Attention`]: causal multi-head self-attention with bias-free projections.

use ndarray::{Array2, Array3, Array4, ArrayView2};
use rand::Rng;

use super::init::{check_matrix, check_positive, glorot_uniform};
use crate::kernels::linear::linear_backward_add;
use crate::kernels::{attention_backward, attention_forward, linear_backward, linear_forward};
use crate::layer::rows::rows_reusing;
use crate::layer::{Cache, InferState, LayerKv, check_width, from_rows, into_rows, rows};
use crate::param::{Param2, Params};
use crate::{Error, Float, Layer, Result, params};

const LAYER: &str = "Attention";

/// What the backward needs from the forward.
#[derive(Clone, Debug)]
struct AttentionCache<F> {
    x_rows: Array2<F>,
    heads: Heads<F>,
}

/// The intermediate results of one pass: `q, k, v (B, T, C)`, `probs (B, H, T, T)` and the
/// context rows `(N, C)`. Not the scores: the softmax backward needs only its output.
#[derive(Clone, Debug)]
struct Heads<F> {
    q: Array3<F>,
    k: Array3<F>,
    v: Array3<F>,
    probs: Array4<F>,
    ctx_rows: Array2<F>,
}

/// Causal multi-head self-attention, `(B, T, C)` → `(B, T, C)`.
///
/// `Q = x·W_q`, `K = x·W_k`, `V = x·W_v`; per head (a contiguous slice of `C / H`
/// columns) `ctx = softmax_causal(Q·Kᵀ/√(C/H))·V`; `y = ctx·W_o`. Parameters
/// `w_q, w_k, w_v, w_o`, each `(C, C)`, Glorot-uniform, no biases (as in the original).
///
/// With a [`KvCache`](crate::layer::KvCache) in the inference state, the new positions'
/// keys and values are appended to this layer's slot and the new queries attend over all
/// cached keys, each up to its own position. When the state is
/// [recording attention](crate::layer::InferState::recording_attention), inference hands it
/// the probabilities `(B, H, T_q, T_k)`.
///
/// # Example
///
/// ```
/// use baregpt::{layers::Attention, prelude::*};
/// use ndarray::Array3;
/// use rand::SeedableRng;
///
/// let mut rng = rand::rngs::StdRng::seed_from_u64(2);
/// let mut attn = Attention::<f64>::new(8, 2, &mut rng)?;
/// let y = attn.forward(&Array3::from_elem((1, 4, 8), 0.5))?;
/// let dx = attn.backward(&Array3::ones(y.raw_dim()))?;
/// assert_eq!(dx.shape(), &[1, 4, 8]);
/// assert!(Attention::<f64>::new(8, 3, &mut rng).is_err()); // 3 heads do not divide 8
/// # Ok::<(), baregpt::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Attention<F: Float> {
    w_q: Param2<F>,
    w_k: Param2<F>,
    w_v: Param2<F>,
    w_o: Param2<F>,
    n_heads: usize,
    cache: Cache<AttentionCache<F>>,
}

impl<F: Float> Params<F> for Attention<F> {
    params!(F; w_q, w_k, w_v, w_o);
}

impl<F: Float> Attention<F> {
    /// A new attention layer of width `c` with `n_heads` heads, weights drawn from `rng`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `c` or `n_heads` is zero or `n_heads` does not divide
    /// `c`; [`Error::TooLarge`] when a weight would exceed
    /// [`MAX_ALLOC_BYTES`](crate::limits::MAX_ALLOC_BYTES).
    pub fn new<R: Rng + ?Sized>(c: usize, n_heads: usize, rng: &mut R) -> Result<Self> {
        check_positive(LAYER, "the width", c)?;
        if n_heads == 0 || !c.is_multiple_of(n_heads) {
            return Err(Error::InvalidConfig {
                layer: LAYER,
                reason: format!("{n_heads} heads do not divide d_model {c}"),
            });
        }
        check_matrix::<F>(LAYER, c, c)?;
        let mut weight = || Param2::new(glorot_uniform(c, c, rng));
        Ok(Self {
            w_q: weight(),
            w_k: weight(),
            w_v: weight(),
            w_o: weight(),
            n_heads,
            cache: Cache::new(),
        })
    }

    /// The model width `C`.
    pub fn width(&self) -> usize {
        self.w_q.value.nrows()
    }

    /// The number of heads `H`.
    pub fn n_heads(&self) -> usize {
        self.n_heads
    }

    /// The computation on input rows `x (B·T, C)`: the output rows and the intermediates.
    /// With a key/value slot, the new keys and values are appended to it and the queries
    /// attend over all of them.
    fn apply(
        &self,
        x_rows: ArrayView2<'_, F>,
        bt: (usize, usize),
        kv: Option<&mut LayerKv<F>>,
    ) -> Result<(Array2<F>, Heads<F>)> {
        let project = |w: &Param2<F>| {
            linear_forward(x_rows, w.value.view(), None).and_then(|y| from_rows(LAYER, y, bt))
        };
        let (q, k, v) = (
            project(&self.w_q)?,
            project(&self.w_k)?,
            project(&self.w_v)?,
        );
        let (ctx, probs) = match kv {
            None => attention_forward(q.view(), k.view(), v.view(), self.n_heads)?,
            Some(kv) => {
                let (keys, values) = kv.append(k.view(), v.view())?;
                attention_forward(q.view(), keys, values, self.n_heads)?
            }
        };
        let ctx_rows = into_rows(ctx);
        let y = linear_forward(ctx_rows.view(), self.w_o.value.view(), None)?;
        let heads = Heads {
            q,
            k,
            v,
            probs,
            ctx_rows,
        };
        Ok((y, heads))
    }
}

impl<F: Float> Layer<F> for Attention<F> {
    fn kind(&self) -> &'static str {
        LAYER
    }

    fn forward(&mut self, x: &Array3<F>) -> Result<Array3<F>> {
        // Forgotten first (and its buffer reused): a failed forward leaves no cache.
        let buffer = self.cache.take().map(|old| old.x_rows);
        let bt = check_width(LAYER, "input", x.view(), self.width())?;
        let x_rows = rows_reusing(buffer, x.view());
        let (y, heads) = self.apply(x_rows.view(), bt, None)?;
        let y = from_rows(LAYER, y, bt)?;
        self.cache.store(AttentionCache { x_rows, heads }, y.dim());
        Ok(y)
    }

    fn infer_with(&self, x: &Array3<F>, state: &mut InferState<'_, F>) -> Result<Array3<F>> {
        let bt = check_width(LAYER, "input", x.view(), self.width())?;
        state.positions(LAYER, bt.1)?;
        let kv = state.next_kv(LAYER, bt.0, self.width())?;
        let (y, heads) = self.apply(rows(x.view()).view(), bt, kv)?;
        state.record_attention(heads.probs);
        from_rows(LAYER, y, bt)
    }

    /// Chain rule through `y = ctx·W_o`, the attention kernel, and the three projections;
    /// `dx = dQ·W_qᵀ + dK·W_kᵀ + dV·W_vᵀ` because `x` feeds all three.
    fn backward(&mut self, dy: &Array3<F>) -> Result<Array3<F>> {
        let AttentionCache { x_rows, heads } = self.cache.get(LAYER, dy)?;
        let (b, t, _) = dy.dim();
        let d_ctx = linear_backward(
            heads.ctx_rows.view(),
            self.w_o.value.view(),
            rows(dy.view()).view(),
            self.w_o.grad.view_mut(),
            None,
        )?;
        let d_ctx = from_rows(LAYER, d_ctx, (b, t))?;
        let (dq, dk, dv) = attention_backward(
            heads.q.view(),
            heads.k.view(),
            heads.v.view(),
            heads.probs.view(),
            d_ctx.view(),
        )?;
        // dx = dq·W_qᵀ + dk·W_kᵀ + dv·W_vᵀ, accumulated in place by the products.
        let x_rows = x_rows.view();
        let mut dx = linear_backward(
            x_rows,
            self.w_q.value.view(),
            rows(dq.view()).view(),
            self.w_q.grad.view_mut(),
            None,
        )?;
        for (w, d) in [(&mut self.w_k, dk), (&mut self.w_v, dv)] {
            linear_backward_add(
                x_rows,
                w.value.view(),
                rows(d.view()).view(),
                w.grad.view_mut(),
                &mut dx.view_mut(),
            )?;
        }
        from_rows(LAYER, dx, (b, t))
    }
}
