//! [`Attention`]: causal multi-head self-attention with bias-free projections.

use ndarray::{Array2, Array3, Array4, s};
use rand::Rng;

use super::util::{
    cached, check_activation, check_dy, copy_reusing, glorot_uniform, into_rows, rows, unrows,
};
use crate::error::check_shape;
use crate::generate::LayerKv;
use crate::kernels::linear::linear_backward_add;
use crate::kernels::{attention_backward, attention_forward, linear_backward, linear_forward};
use crate::param::{Param2, ParamPath, ParamVisitor, ParamVisitorMut};
use crate::{Error, Float, Layer, Result};

const LAYER: &str = "Attention";

/// What the backward needs from the forward.
#[derive(Clone, Debug)]
struct AttentionCache<F> {
    x_rows: Array2<F>,
    q: Array3<F>,
    k: Array3<F>,
    v: Array3<F>,
    probs: Array4<F>,
    ctx_rows: Array2<F>,
    batch: (usize, usize),
}

/// Causal multi-head self-attention, `(B, T, C)` → `(B, T, C)`.
///
/// `Q = x·W_q`, `K = x·W_k`, `V = x·W_v`; per head (a contiguous slice of `C / H`
/// columns) `ctx = softmax_causal(Q·Kᵀ/√(C/H))·V`; `y = ctx·W_o`. Parameters
/// `w_q, w_k, w_v, w_o`, each `(C, C)`, Glorot-uniform, no biases (as in the original).
///
/// # Example
///
/// ```
/// use baregpt::{layers::Attention, Layer};
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
    cache: Option<AttentionCache<F>>,
}

impl<F: Float> Attention<F> {
    /// A new attention layer of width `c` with `n_heads` heads, weights drawn from `rng`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `n_heads` is zero or does not divide `c`.
    pub fn new<R: Rng + ?Sized>(c: usize, n_heads: usize, rng: &mut R) -> Result<Self> {
        if n_heads == 0 || c % n_heads != 0 {
            return Err(Error::InvalidConfig {
                layer: LAYER,
                reason: format!("{n_heads} heads do not divide d_model {c}"),
            });
        }
        let mut weight = || Param2::new(glorot_uniform(c, c, rng));
        Ok(Self {
            w_q: weight(),
            w_k: weight(),
            w_v: weight(),
            w_o: weight(),
            n_heads,
            cache: None,
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

    /// Attention of new positions over a key/value cache, without caching anything for
    /// backward (for generation): `x (B, T_new, C)` → `(B, T_new, C)`.
    ///
    /// The `T_new` positions follow the `T_c = kv.len()` already cached. Their keys and values
    /// are appended to `kv`, and each new query `i` attends causally to the cached keys and
    /// to the new ones up to its own position `T_c + i`. The result equals rows
    /// `T_c..T_c + T_new` of [`Layer::forward`] over all `T_c + T_new` positions, while
    /// computing only `T_new` query rows.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when `x` is not `(B, T_new, C)` for the cache's batch `B` and
    /// width `C`; [`Error::SequenceLength`] when `T_new` is zero or the cache has no room for
    /// it. On error `kv` is unchanged.
    pub fn forward_incremental(&self, x: &Array3<F>, kv: &mut LayerKv<F>) -> Result<Array3<F>> {
        let c = self.width();
        check_shape(
            LAYER,
            "input",
            x.shape(),
            &[Some(kv.batch()), None, Some(c)],
        )?;
        check_shape(
            LAYER,
            "kv cache",
            &[kv.batch(), kv.capacity(), kv.width()],
            &[Some(x.dim().0), None, Some(c)],
        )?;
        let (b, t_new, _) = x.dim();
        let (start, end) = (kv.len(), kv.len() + t_new);
        if t_new == 0 || end > kv.capacity() {
            return Err(Error::SequenceLength {
                layer: LAYER,
                len: end,
                context: kv.capacity(),
            });
        }
        let x_rows = rows(x.view());
        let project = |w: &Param2<F>| {
            linear_forward(x_rows.view(), w.value.view(), None)
                .and_then(|y| unrows(LAYER, y, b, t_new))
        };
        let (q, k, v) = (
            project(&self.w_q)?,
            project(&self.w_k)?,
            project(&self.w_v)?,
        );
        let (keys, values) = kv.buffers_mut();
        keys.slice_mut(s![.., start..end, ..]).assign(&k);
        values.slice_mut(s![.., start..end, ..]).assign(&v);
        let (ctx, _) = attention_forward(
            q.view(),
            keys.slice(s![.., ..end, ..]),
            values.slice(s![.., ..end, ..]),
            self.n_heads,
        )?;
        let y = linear_forward(rows(ctx.view()).view(), self.w_o.value.view(), None)?;
        let y = unrows(LAYER, y, b, t_new)?;
        kv.set_len(end);
        Ok(y)
    }
}

impl<F: Float> Layer<F> for Attention<F> {
    fn kind(&self) -> &'static str {
        LAYER
    }

    fn forward(&mut self, x: &Array3<F>) -> Result<Array3<F>> {
        let (b, t) = check_activation(LAYER, "input", x.view(), self.width())?;
        let x_rows = copy_reusing(
            self.cache.take().map(|old| old.x_rows),
            rows(x.view()).view(),
        );
        let project = |w: &Param2<F>| {
            linear_forward(x_rows.view(), w.value.view(), None).and_then(|y| unrows(LAYER, y, b, t))
        };
        let (q, k, v) = (
            project(&self.w_q)?,
            project(&self.w_k)?,
            project(&self.w_v)?,
        );
        let (ctx, probs) = attention_forward(q.view(), k.view(), v.view(), self.n_heads)?;
        let ctx_rows = into_rows(ctx);
        let y = linear_forward(ctx_rows.view(), self.w_o.value.view(), None)?;
        self.cache = Some(AttentionCache {
            x_rows,
            q,
            k,
            v,
            probs,
            ctx_rows,
            batch: (b, t),
        });
        unrows(LAYER, y, b, t)
    }

    /// Chain rule through `y = ctx·W_o`, the attention kernel, and the three projections;
    /// `dx = dQ·W_qᵀ + dK·W_kᵀ + dV·W_vᵀ` because `x` feeds all three.
    fn backward(&mut self, dy: &Array3<F>) -> Result<Array3<F>> {
        let cache = cached(LAYER, &self.cache)?;
        let (b, t) = cache.batch;
        check_dy(LAYER, dy, (b, t, self.width()))?;
        let d_ctx = linear_backward(
            cache.ctx_rows.view(),
            self.w_o.value.view(),
            rows(dy.view()).view(),
            self.w_o.grad.view_mut(),
            None,
        )?;
        let d_ctx = unrows(LAYER, d_ctx, b, t)?;
        let (dq, dk, dv) = attention_backward(
            cache.q.view(),
            cache.k.view(),
            cache.v.view(),
            cache.probs.view(),
            d_ctx.view(),
        )?;
        // dx = dq·W_qᵀ + dk·W_kᵀ + dv·W_vᵀ, accumulated in place by the products.
        let x_rows = cache.x_rows.view();
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
        unrows(LAYER, dx, b, t)
    }

    fn visit_params(&self, path: &mut ParamPath, f: &mut ParamVisitor<'_, F>) {
        self.w_q.visit("w_q", path, f);
        self.w_k.visit("w_k", path, f);
        self.w_v.visit("w_v", path, f);
        self.w_o.visit("w_o", path, f);
    }

    fn visit_params_mut(&mut self, path: &mut ParamPath, f: &mut ParamVisitorMut<'_, F>) {
        self.w_q.visit_mut("w_q", path, f);
        self.w_k.visit_mut("w_k", path, f);
        self.w_v.visit_mut("w_v", path, f);
        self.w_o.visit_mut("w_o", path, f);
    }
}
