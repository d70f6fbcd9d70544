//! [`Attention`]: causal self-attention with multi-head, grouped-query or multi-query heads,
//! optional projection biases and optional rotary position embeddings ([`AttentionConfig`]),
//! on the tiled or the plain attention kernel ([`AttentionKernel`]).

use ndarray::{Array1, Array2, Array3, Array4, ArrayView2, ArrayView3, Axis};
use rand::Rng;

use super::init::{check_matrix, check_positive, glorot_uniform};
use crate::kernels::dropout::{DropoutMask, check_probability};
use crate::kernels::linear::linear_backward_add;
use crate::kernels::recycle;
use crate::kernels::{
    FlashView, attention_dropout_backward, attention_dropout_forward, flash_attention_backward,
    flash_attention_forward,
};
use crate::kernels::{
    grouped_attention_backward, grouped_attention_forward, linear_backward, linear_forward,
    rope_backward, rope_forward,
};
use crate::layer::rows::rows_reusing;
use crate::layer::{
    Cache, DropoutMode, DropoutSite, InferState, LayerKv, check_width, from_rows, into_rows, rows,
};
use crate::param::{Param1, Param2, Params};
use crate::{Error, Float, Layer, Result, params};

const LAYER: &str = "Attention";

/// What the backward needs from the forward.
#[derive(Clone, Debug)]
struct AttentionCache<F> {
    x_rows: Array2<F>,
    heads: Heads<F>,
    /// The dropout mask of this forward, if it dropped (regenerated in the backward).
    mask: Option<DropoutMask>,
}

/// The intermediate results of one pass: `q (B, T, H·D)` and `k, v (B, T, H_kv·D)` (`q` and
/// `k` after the rotation, when there is one), what the kernel's backward needs of the
/// softmax, and the context rows `(N, C)`. Not the scores.
#[derive(Clone, Debug)]
struct Heads<F> {
    q: Array3<F>,
    k: Array3<F>,
    v: Array3<F>,
    softmax: Softmax<F>,
    ctx_rows: Array2<F>,
}

impl<F: Float> Heads<F> {
    /// Hands the arrays back for the next forward to [reuse](crate::kernels::recycle).
    fn recycle(self) {
        for array in [self.q, self.k, self.v] {
            recycle::give(array);
        }
        match self.softmax {
            Softmax::Probs(probs) => recycle::give(probs),
            Softmax::Lse(lse) => recycle::give(lse),
        }
        recycle::give(self.ctx_rows);
    }
}

/// What the attention backward keeps of the softmax: the plain kernel's probabilities, or the
/// tiled kernel's per-row log-sum-exp (from which, with `q`, `k` and the context, it rebuilds
/// them).
#[derive(Clone, Debug)]
enum Softmax<F> {
    /// `probs (B, H, T_q, T_k)` from [`AttentionKernel::Plain`].
    Probs(Array4<F>),
    /// `lse (B, H, T_q)` from [`AttentionKernel::Tiled`].
    Lse(Array3<F>),
}

/// Which kernel an [`Attention`] layer computes its heads with. Both give the same function
/// and gradients (to rounding; the tests hold them to `1e-12` in `f64`) and draw the same
/// dropout masks; they differ in what a training forward keeps for the backward and in speed.
///
/// ```
/// use baregpt::layers::{AttentionConfig, AttentionKernel};
///
/// assert_eq!(AttentionConfig::new(4).kernel, AttentionKernel::Auto);
/// assert_eq!(AttentionKernel::Auto.for_keys(128), AttentionKernel::Plain);
/// assert_eq!(AttentionKernel::Auto.for_keys(1024), AttentionKernel::Tiled);
/// let reference = AttentionConfig::new(4).with_kernel(AttentionKernel::Plain);
/// assert_eq!(reference.kernel.for_keys(1024), AttentionKernel::Plain);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AttentionKernel {
    /// The default: [`Tiled`](Self::Tiled) when a pass attends over at least
    /// [`AttentionKernel::TILED_MIN_KEYS`] keys, [`Plain`](Self::Plain) below. Chosen by
    /// measurement (`docs/performance.md`): below that length the plain kernel is faster (the
    /// tiled backward does one more product per tile, to rebuild the probabilities) and its
    /// probabilities are a small part of the cache; from there on the tiled one is as fast or
    /// faster and the probabilities would dominate the memory.
    #[default]
    Auto,
    /// The tiled kernel ([`flash_attention_forward`](crate::kernels::flash_attention_forward)):
    /// the cache keeps each query's log-sum-exp, `B·H·T` numbers, and the backward
    /// recomputes the probabilities tile by tile.
    Tiled,
    /// The plain kernel ([`grouped_attention_forward`](crate::kernels::grouped_attention_forward)):
    /// the cache keeps the probabilities `(B, H, T, T)`. The readable reference, and the
    /// oracle the tiled kernel is tested against.
    Plain,
}

impl AttentionKernel {
    /// The number of keys from which [`AttentionKernel::Auto`] takes the tiled kernel: 256
    /// (the measurements are in `docs/performance.md`).
    pub const TILED_MIN_KEYS: usize = crate::exec::FLASH_MIN_KEYS;

    /// The kernel a pass over `t_k` keys runs: [`Tiled`](Self::Tiled) or
    /// [`Plain`](Self::Plain) (never `Auto`).
    pub fn for_keys(self, t_k: usize) -> Self {
        match self {
            Self::Auto if t_k >= Self::TILED_MIN_KEYS => Self::Tiled,
            Self::Auto => Self::Plain,
            kernel => kernel,
        }
    }
}

/// The shape of an [`Attention`] layer: its heads, whether its projections have biases, and
/// whether it rotates queries and keys. [`AttentionConfig::new`] is today's default
/// (multi-head, no biases, no rotation); the builder methods change one setting each.
///
/// ```
/// use baregpt::layers::AttentionConfig;
///
/// let llama_like = AttentionConfig::new(6).kv_heads(2).rotary(10_000.0);
/// let gpt2_like = AttentionConfig::new(12).with_bias(true);
/// assert_eq!(llama_like.n_kv_heads, 2);
/// assert!(gpt2_like.bias && gpt2_like.rope_theta.is_none());
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionConfig {
    /// Query heads `H`; must divide the width.
    pub n_heads: usize,
    /// Key/value heads `H_kv`; must divide `n_heads` (`n_heads`: multi-head, 1: multi-query).
    pub n_kv_heads: usize,
    /// Whether the four projections have biases `b_q, b_k, b_v, b_o` (zero-initialised).
    pub bias: bool,
    /// Rotary position embeddings on queries and keys with this base `θ`, or none. The head
    /// size must then be even.
    pub rope_theta: Option<f64>,
    /// Dropout on the attention probabilities (GPT-2's `attn_pdrop`) in training forwards:
    /// the drop probability `p` (`0 ≤ p < 1`; 0, the default, is none) and the seed of its
    /// masks. Inference never drops.
    pub dropout: (f64, u64),
    /// The kernel of the heads ([`AttentionKernel::Auto`] unless asked otherwise: tiled for
    /// long sequences, plain for short ones). It does not change the function (beyond
    /// rounding), the parameters or a checkpoint. Inference that
    /// records the probabilities
    /// ([`InferState::recording_attention`](crate::layer::InferState::recording_attention))
    /// also runs the plain kernel for them, since only that one forms them; the output is
    /// still this kernel's, bit for bit as without recording.
    pub kernel: AttentionKernel,
}

impl AttentionConfig {
    /// `n_heads` heads of multi-head attention, no biases, no rotary embeddings.
    pub fn new(n_heads: usize) -> Self {
        Self {
            n_heads,
            n_kv_heads: n_heads,
            bias: false,
            rope_theta: None,
            dropout: (0.0, 0),
            kernel: AttentionKernel::Auto,
        }
    }

    /// With the heads computed by `kernel` (for example [`AttentionKernel::Plain`], the
    /// reference kernel that keeps the probabilities, at every length).
    #[must_use]
    pub fn with_kernel(self, kernel: AttentionKernel) -> Self {
        Self { kernel, ..self }
    }

    /// With dropout of probability `p` on the attention probabilities, masks seeded by
    /// `seed`.
    #[must_use]
    pub fn with_dropout(self, p: f64, seed: u64) -> Self {
        Self {
            dropout: (p, seed),
            ..self
        }
    }

    /// With `n_kv_heads` key/value heads (grouped-query attention).
    #[must_use]
    pub fn kv_heads(self, n_kv_heads: usize) -> Self {
        Self { n_kv_heads, ..self }
    }

    /// With or without biases on the four projections.
    #[must_use]
    pub fn with_bias(self, bias: bool) -> Self {
        Self { bias, ..self }
    }

    /// With rotary position embeddings of base `theta` (Hugging Face's default is
    /// [`DEFAULT_ROPE_THETA`](crate::kernels::rope::DEFAULT_ROPE_THETA)).
    #[must_use]
    pub fn rotary(self, theta: f64) -> Self {
        Self {
            rope_theta: Some(theta),
            ..self
        }
    }

    /// Checks the settings against the width `c`; returns the head size `D = c / n_heads`.
    fn check(&self, c: usize) -> Result<usize> {
        let invalid = |reason: String| Error::InvalidConfig {
            layer: LAYER,
            reason,
        };
        check_positive(LAYER, "the width", c)?;
        let (h, h_kv) = (self.n_heads, self.n_kv_heads);
        if h == 0 || !c.is_multiple_of(h) {
            return Err(invalid(format!("{h} heads do not divide d_model {c}")));
        }
        if h_kv == 0 || !h.is_multiple_of(h_kv) {
            return Err(invalid(format!(
                "{h_kv} key/value heads do not divide the {h} heads"
            )));
        }
        check_probability(self.dropout.0).map_err(|_| {
            invalid(format!(
                "the attention dropout probability {} is not in [0, 1)",
                self.dropout.0
            ))
        })?;
        let d = c / h;
        if let Some(theta) = self.rope_theta {
            if !d.is_multiple_of(2) {
                return Err(invalid(format!(
                    "rotary embeddings need an even head size, and d_model {c} / {h} heads is {d}"
                )));
            }
            if !(theta.is_finite() && theta > 0.0) {
                return Err(invalid(format!(
                    "rope theta {theta} is not finite and positive"
                )));
            }
        }
        Ok(d)
    }
}

/// Causal self-attention, `(B, T, C)` → `(B, T, C)`, with `H` query heads and `H_kv`
/// key/value heads of size `D = C / H`.
///
/// `Q = x·W_q + b_q`, `K = x·W_k + b_k`, `V = x·W_v + b_v`; with rotary embeddings
/// `Q, K ← rope(Q), rope(K)` at each row's absolute position
/// ([`rope_forward`](crate::kernels::rope_forward)); per query head `h` (a contiguous slice
/// of `D` columns), with key/value head `g = h / (H / H_kv)`,
/// `ctx_h = softmax_causal(Q_h·K_gᵀ/√D)·V_g`; `y = ctx·W_o + b_o`.
///
/// Parameters, in visit order: `w_q (C, H·D)`, `w_k (C, H_kv·D)`, `w_v (C, H_kv·D)`,
/// `w_o (H·D, C)`, Glorot-uniform; and with biases `b_q (H·D)`, `b_k (H_kv·D)`,
/// `b_v (H_kv·D)`, `b_o (C)`, zero. With dropout (`AttentionConfig::with_dropout`), a training
/// forward uses `(P ⊙ M)·V_g` with a fresh counter-based mask `M` per pass (see
/// [`Layer::set_dropout`] for holding it or turning it off); inference never drops. [`Attention::new`] is the original's layer: `H_kv = H`,
/// no biases, no rotation; [`Attention::with_config`] builds any combination.
///
/// From [`AttentionKernel::TILED_MIN_KEYS`] keys on, the heads run on the tiled kernel by
/// default, whose training cache keeps `lse (B, H, T)` instead of the probabilities
/// `(B, H, T, T)`; [`AttentionConfig::with_kernel`] fixes one kernel for every length
/// ([`AttentionKernel`]).
///
/// With a [`KvCache`](crate::layer::KvCache) in the inference state, the new positions'
/// keys (already rotated, at their absolute positions) and values, `H_kv·D` wide, are
/// appended to this layer's slot and the new queries attend over all cached keys, each up to
/// its own position. When the state is
/// [recording attention](crate::layer::InferState::recording_attention), inference hands it
/// the probabilities `(B, H, T_q, T_k)` (from the plain kernel, beside the tiled one's output
/// on a tiled layer).
///
/// # Example
///
/// ```
/// use baregpt::{layers::{Attention, AttentionConfig}, prelude::*};
/// use ndarray::Array3;
/// use rand::SeedableRng;
///
/// let mut rng = rand::rngs::StdRng::seed_from_u64(2);
/// let mut attn = Attention::<f64>::new(8, 2, &mut rng)?;
/// let y = attn.forward(&Array3::from_elem((1, 4, 8), 0.5))?;
/// let dx = attn.backward(&Array3::ones(y.raw_dim()))?;
/// assert_eq!(dx.shape(), &[1, 4, 8]);
/// assert!(Attention::<f64>::new(8, 3, &mut rng).is_err()); // 3 heads do not divide 8
///
/// // Grouped-query attention with rotary embeddings and biases: 4 heads share 2 K/V heads.
/// let config = AttentionConfig::new(4).kv_heads(2).with_bias(true).rotary(10_000.0);
/// let mut gqa = Attention::<f64>::with_config(8, config, &mut rng)?;
/// assert_eq!(gqa.param("w_k").unwrap().value.shape(), &[8, 4]);
/// assert_eq!(gqa.param_names(), ["w_q", "w_k", "w_v", "w_o", "b_q", "b_k", "b_v", "b_o"]);
/// let y = gqa.forward(&Array3::from_elem((1, 4, 8), 0.5))?;
/// gqa.backward(&Array3::ones(y.raw_dim()))?;
/// assert!(Attention::<f64>::with_config(8, AttentionConfig::new(4).kv_heads(3), &mut rng).is_err());
/// # Ok::<(), baregpt::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Attention<F: Float> {
    w_q: Param2<F>,
    w_k: Param2<F>,
    w_v: Param2<F>,
    w_o: Param2<F>,
    b_q: Option<Param1<F>>,
    b_k: Option<Param1<F>>,
    b_v: Option<Param1<F>>,
    b_o: Option<Param1<F>>,
    config: AttentionConfig,
    /// The dropout on the probabilities, when `p > 0`.
    attn_drop: Option<DropoutSite>,
    cache: Cache<AttentionCache<F>>,
}

impl<F: Float> Params<F> for Attention<F> {
    params!(F; w_q, w_k, w_v, w_o, b_q, b_k, b_v, b_o);
}

impl<F: Float> Attention<F> {
    /// A new multi-head attention layer of width `c` with `n_heads` heads and no biases,
    /// weights drawn from `rng`: [`Attention::with_config`] with
    /// [`AttentionConfig::new`]`(n_heads)`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `c` or `n_heads` is zero or `n_heads` does not divide
    /// `c`; [`Error::TooLarge`] when a weight would exceed
    /// [`MAX_ALLOC_BYTES`](crate::limits::MAX_ALLOC_BYTES).
    pub fn new<R: Rng + ?Sized>(c: usize, n_heads: usize, rng: &mut R) -> Result<Self> {
        Self::with_config(c, AttentionConfig::new(n_heads), rng)
    }

    /// A new attention layer of width `c` shaped by `config`, weights drawn from `rng` in the
    /// order `w_q, w_k, w_v, w_o` (biases start at zero).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `c` or a head count is zero, `n_heads` does not divide
    /// `c`, `n_kv_heads` does not divide `n_heads`, or rotary embeddings are asked for with an
    /// odd head size or a `theta` that is not finite and positive; [`Error::TooLarge`] when a
    /// weight would exceed [`MAX_ALLOC_BYTES`](crate::limits::MAX_ALLOC_BYTES). Nothing is
    /// drawn before these checks.
    pub fn with_config<R: Rng + ?Sized>(
        c: usize,
        config: AttentionConfig,
        rng: &mut R,
    ) -> Result<Self> {
        let d = config.check(c)?;
        // No overflow: n_kv_heads ≤ n_heads, so c_kv ≤ c.
        let c_kv = config.n_kv_heads * d;
        check_matrix::<F>(LAYER, c, c)?;
        let mut weight = |cols| Param2::new(glorot_uniform(c, cols, rng));
        let (w_q, w_k, w_v, w_o) = (weight(c), weight(c_kv), weight(c_kv), weight(c));
        let bias = |n: usize| config.bias.then(|| Param1::new(Array1::zeros(n)));
        Ok(Self {
            w_q,
            w_k,
            w_v,
            w_o,
            b_q: bias(c),
            b_k: bias(c_kv),
            b_v: bias(c_kv),
            b_o: bias(c),
            attn_drop: match config.dropout {
                (0.0, _) => None,
                (p, seed) => Some(DropoutSite::new(p, seed)?),
            },
            config,
            cache: Cache::new(),
        })
    }

    /// The model width `C`.
    pub fn width(&self) -> usize {
        self.w_q.value.nrows()
    }

    /// The number of query heads `H`.
    pub fn n_heads(&self) -> usize {
        self.config.n_heads
    }

    /// The number of key/value heads `H_kv`.
    pub fn n_kv_heads(&self) -> usize {
        self.config.n_kv_heads
    }

    /// The head size `D = C / H`.
    pub fn head_dim(&self) -> usize {
        self.width() / self.config.n_heads
    }

    /// The width of keys and values, `H_kv·D` (what a key/value cache stores per position).
    pub fn kv_width(&self) -> usize {
        self.w_k.value.ncols()
    }

    /// The layer's settings.
    pub fn config(&self) -> AttentionConfig {
        self.config
    }

    /// The computation on input rows `x (B·T, C)` at positions `start..start + T`: the
    /// output rows and the intermediates. With a key/value slot, the new keys and values are
    /// appended to it and the queries attend over all of them. With `record` (inference
    /// only), the intermediates hold the probabilities whatever the kernel: the tiled kernel
    /// still computes the output, and the plain one the probabilities beside it.
    fn apply(
        &self,
        x_rows: ArrayView2<'_, F>,
        (bt, start): ((usize, usize), usize),
        kv: Option<&mut LayerKv<F>>,
        mask: Option<&DropoutMask>,
        record: bool,
    ) -> Result<(Array2<F>, Heads<F>)> {
        let project = |w: &Param2<F>, b: &Option<Param1<F>>| {
            let b = b.as_ref().map(|b| b.value.view());
            linear_forward(x_rows, w.value.view(), b).and_then(|y| from_rows(LAYER, y, bt))
        };
        let (mut q, mut k, v) = (
            project(&self.w_q, &self.b_q)?,
            project(&self.w_k, &self.b_k)?,
            project(&self.w_v, &self.b_v)?,
        );
        if let Some(theta) = self.config.rope_theta {
            let (rq, rk) = (
                rope_forward(q.view(), self.head_dim(), start, theta)?,
                rope_forward(k.view(), self.head_dim(), start, theta)?,
            );
            recycle::replace(&mut q, rq);
            recycle::replace(&mut k, rk);
        }
        let (h, h_kv) = (self.config.n_heads, self.config.n_kv_heads);
        let heads = |keys: ArrayView3<'_, F>, values: ArrayView3<'_, F>| {
            match (self.config.kernel.for_keys(keys.dim().1), mask) {
                (AttentionKernel::Tiled, mask) => {
                    let out = flash_attention_forward(q.view(), keys, values, h, h_kv, mask)?;
                    let softmax = if record {
                        let (_, probs) =
                            grouped_attention_forward(q.view(), keys, values, h, h_kv)?;
                        Softmax::Probs(probs)
                    } else {
                        Softmax::Lse(out.lse)
                    };
                    Ok((out.ctx, softmax))
                }
                // `for_keys` never gives Auto.
                (AttentionKernel::Plain | AttentionKernel::Auto, None) => {
                    grouped_attention_forward(q.view(), keys, values, h, h_kv)
                        .map(|(ctx, probs)| (ctx, Softmax::Probs(probs)))
                }
                (AttentionKernel::Plain | AttentionKernel::Auto, Some(mask)) => {
                    attention_dropout_forward(q.view(), keys, values, h, h_kv, mask)
                        .map(|(ctx, probs)| (ctx, Softmax::Probs(probs)))
                }
            }
        };
        let (ctx, softmax) = match kv {
            None => heads(k.view(), v.view())?,
            // Inference passes no mask.
            Some(kv) => {
                let (keys, values) = kv.append(k.view(), v.view())?;
                heads(keys, values)?
            }
        };
        let ctx_rows = into_rows(ctx);
        let b_o = self.b_o.as_ref().map(|b| b.value.view());
        let y = linear_forward(ctx_rows.view(), self.w_o.value.view(), b_o)?;
        let heads = Heads {
            q,
            k,
            v,
            softmax,
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
        // Forgotten first (and its buffers reused): a failed forward leaves no cache.
        let buffer = self.cache.take().map(|old| {
            old.heads.recycle();
            old.x_rows
        });
        let bt = check_width(LAYER, "input", x.view(), self.width())?;
        let x_rows = rows_reusing(buffer, x.view());
        let mask = self.attn_drop.as_mut().and_then(DropoutSite::next_mask);
        let (y, heads) = self.apply(x_rows.view(), (bt, 0), None, mask.as_ref(), false)?;
        let y = from_rows(LAYER, y, bt)?;
        self.cache.store(
            AttentionCache {
                x_rows,
                heads,
                mask,
            },
            y.dim(),
        );
        Ok(y)
    }

    /// Sets the mode of the dropout on the probabilities (nothing without dropout).
    fn set_dropout(&mut self, mode: DropoutMode) {
        if let Some(site) = &mut self.attn_drop {
            site.set_mode(mode);
        }
    }

    fn infer_with(&self, x: &Array3<F>, state: &mut InferState<'_, F>) -> Result<Array3<F>> {
        let bt = check_width(LAYER, "input", x.view(), self.width())?;
        let positions = state.positions(LAYER, bt.1)?;
        let record = state.is_recording_attention();
        let kv = state.next_kv(LAYER, bt.0, self.kv_width())?;
        let x_rows = rows(x.view());
        let (y, heads) = self.apply(x_rows.view(), (bt, positions.start), kv, None, record)?;
        if let Softmax::Probs(probs) = heads.softmax {
            state.record_attention(probs);
        }
        from_rows(LAYER, y, bt)
    }

    /// Chain rule through `y = ctx·W_o + b_o`, the attention kernel (which sums each shared
    /// key/value head's gradient over its query heads), the rotation (undone by the rotation
    /// by the opposite angle) and the three projections; `dx = dQ·W_qᵀ + dK·W_kᵀ + dV·W_vᵀ`
    /// because `x` feeds all three, and each bias gradient is its projection's output
    /// gradient summed over the rows.
    fn backward(&mut self, dy: &Array3<F>) -> Result<Array3<F>> {
        let AttentionCache {
            x_rows,
            heads,
            mask,
        } = self.cache.get(LAYER, dy)?;
        let (b, t, _) = dy.dim();
        let d_ctx = linear_backward(
            heads.ctx_rows.view(),
            self.w_o.value.view(),
            rows(dy.view()).view(),
            self.w_o.grad.view_mut(),
            self.b_o.as_mut().map(|b| b.grad.view_mut()),
        )?;
        let d_ctx_owned = from_rows(LAYER, d_ctx, (b, t))?;
        let (q, k, v) = (heads.q.view(), heads.k.view(), heads.v.view());
        let (h_kv, d_ctx) = (self.config.n_kv_heads, d_ctx_owned.view());
        let (mut dq, mut dk, dv) = match (&heads.softmax, mask) {
            (Softmax::Probs(probs), None) => {
                grouped_attention_backward(q, k, v, probs.view(), d_ctx, h_kv)?
            }
            (Softmax::Probs(probs), Some(mask)) => {
                attention_dropout_backward(q, k, v, probs.view(), d_ctx, h_kv, mask)?
            }
            (Softmax::Lse(lse), mask) => {
                // The context the forward returned, as (B, T, H·D).
                let ctx = from_rows_view(heads.ctx_rows.view(), (b, t))?;
                let saved = FlashView {
                    ctx,
                    lse: lse.view(),
                };
                flash_attention_backward(q, k, v, saved, d_ctx, h_kv, mask.as_ref())?
            }
        };
        if let Some(theta) = self.config.rope_theta {
            // Training passes are at positions 0..T.
            let d = self.width() / self.config.n_heads;
            let (rq, rk) = (
                rope_backward(dq.view(), d, 0, theta)?,
                rope_backward(dk.view(), d, 0, theta)?,
            );
            recycle::replace(&mut dq, rq);
            recycle::replace(&mut dk, rk);
        }
        // dx = dq·W_qᵀ + dk·W_kᵀ + dv·W_vᵀ, accumulated in place by the products.
        let x_rows = x_rows.view();
        let dq_rows = rows(dq.view());
        let mut dx = linear_backward(
            x_rows,
            self.w_q.value.view(),
            dq_rows.view(),
            self.w_q.grad.view_mut(),
            self.b_q.as_mut().map(|b| b.grad.view_mut()),
        )?;
        for (w, bias, d) in [
            (&mut self.w_k, &mut self.b_k, dk),
            (&mut self.w_v, &mut self.b_v, dv),
        ] {
            let d_rows = rows(d.view());
            linear_backward_add(
                x_rows,
                w.value.view(),
                d_rows.view(),
                w.grad.view_mut(),
                &mut dx.view_mut(),
            )?;
            if let Some(bias) = bias {
                // (db): the bias is added to every row.
                bias.grad += &d_rows.sum_axis(Axis(0));
            }
            drop(d_rows);
            recycle::give(d);
        }
        drop(dq_rows);
        for used in [dq, d_ctx_owned] {
            recycle::give(used);
        }
        from_rows(LAYER, dx, (b, t))
    }
}

/// Views cached rows `(B·T, C)` as `(B, T, C)`.
///
/// # Errors
/// [`Error::ShapeMismatch`] when the rows are not `B·T` standard-layout rows.
fn from_rows_view<F: Float>(
    rows: ArrayView2<'_, F>,
    (b, t): (usize, usize),
) -> Result<ArrayView3<'_, F>> {
    let (n, c) = rows.dim();
    rows.into_shape_with_order((b, t, c))
        .map_err(|_| Error::ShapeMismatch {
            layer: LAYER,
            what: "cached context rows",
            expected: crate::error::ExpectedShape(vec![b.checked_mul(t), Some(c)]),
            actual: vec![n, c],
        })
}
