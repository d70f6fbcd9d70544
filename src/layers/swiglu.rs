//! [`SwiGlu`]: the gated feed-forward network of Llama, `(silu(x·W_gate) ⊙ (x·W_up))·W_down`.

use ndarray::{Array2, Array3, ArrayView2};
use rand::Rng;

use super::init::{check_matrix, check_positive, glorot_uniform};
use crate::kernels::linear::linear_backward_add;
use crate::kernels::swiglu::swiglu_backward_in_place;
use crate::kernels::{linear_backward, linear_forward, recycle, swiglu_forward};
use crate::layer::rows::rows_reusing;
use crate::layer::{Cache, InferState, check_width, from_rows, rows};
use crate::param::{Param2, Params};
use crate::{Float, Layer, Result, params};

const LAYER: &str = "SwiGlu";

/// What the backward needs, as rows `(N, ·)`.
#[derive(Clone, Debug)]
struct SwiGluCache<F> {
    /// The input `(N, C)`: both input products' left factor.
    x: Array2<F>,
    /// `g = x·W_gate (N, H)`.
    gate: Array2<F>,
    /// `u = x·W_up (N, H)`.
    up: Array2<F>,
}

/// The SwiGLU MLP: `y = (silu(x·W_gate) ⊙ (x·W_up))·W_down`, `(B, T, C)` → `(B, T, H)` →
/// `(B, T, C)`, no biases (Hugging Face Llama's `LlamaMLP`).
///
/// Parameters: `w_gate (C, H)`, `w_up (C, H)`, `w_down (H, C)`, stored input-major like every
/// weight here (torch's `gate_proj.weight`, `up_proj.weight`, `down_proj.weight` transposed),
/// Glorot-uniform initialised in that order. `silu(z) = z·σ(z)`.
///
/// The backward, with `g = x·W_gate`, `u = x·W_up`, `a = silu(g) ⊙ u`:
/// `dW_down += aᵀ·dy`, `da = dy·W_downᵀ`, `dg = da ⊙ u ⊙ silu'(g)`, `du = da ⊙ silu(g)`,
/// `dW_gate += xᵀ·dg`, `dW_up += xᵀ·du`, `dx = dg·W_gateᵀ + du·W_upᵀ`.
///
/// Memory: the forward caches `x (N, C)`, `g` and `u (N, H)`, as much as [`Mlp`](super::Mlp)
/// caches (its `x`, `h`, `a`); `a` is recomputed from `g` and `u` in the backward (one
/// element-wise pass) rather than cached, and its buffer then holds `du` while `da`'s holds
/// `dg`, so the backward allocates two `(N, H)` arrays and `dx`.
///
/// # Example
///
/// ```
/// use baregpt::{layers::SwiGlu, prelude::*};
/// use ndarray::Array3;
/// use rand::SeedableRng;
///
/// let mut rng = rand::rngs::StdRng::seed_from_u64(1);
/// let mut mlp = SwiGlu::<f64>::new(4, 10, &mut rng)?;
/// let y = mlp.forward(&Array3::ones((2, 3, 4)))?;
/// let dx = mlp.backward(&y)?;
/// assert_eq!(dx.shape(), &[2, 3, 4]);
/// assert_eq!(mlp.param_names(), ["w_gate", "w_up", "w_down"]);
/// assert_eq!(mlp.num_params(), 3 * 4 * 10);
/// # Ok::<(), baregpt::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct SwiGlu<F: Float> {
    w_gate: Param2<F>,
    w_up: Param2<F>,
    w_down: Param2<F>,
    cache: Cache<SwiGluCache<F>>,
}

impl<F: Float> Params<F> for SwiGlu<F> {
    params!(F; w_gate, w_up, w_down);
}

impl<F: Float> SwiGlu<F> {
    /// A new SwiGLU MLP of width `c` and hidden width `hidden`, the three weights drawn
    /// Glorot-uniform from `rng` (`w_gate`, `w_up`, then `w_down`).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) when `c` or `hidden` is zero;
    /// [`Error::TooLarge`](crate::Error::TooLarge) when a weight would exceed
    /// [`MAX_ALLOC_BYTES`](crate::limits::MAX_ALLOC_BYTES).
    pub fn new<R: Rng + ?Sized>(c: usize, hidden: usize, rng: &mut R) -> Result<Self> {
        check_positive(LAYER, "the width", c)?;
        check_positive(LAYER, "the hidden width", hidden)?;
        check_matrix::<F>(LAYER, c, hidden)?;
        let w_gate = glorot_uniform(c, hidden, rng);
        let w_up = glorot_uniform(c, hidden, rng);
        let w_down = glorot_uniform(hidden, c, rng);
        Ok(Self {
            w_gate: Param2::new(w_gate),
            w_up: Param2::new(w_up),
            w_down: Param2::new(w_down),
            cache: Cache::new(),
        })
    }

    /// The model width `C`.
    pub fn width(&self) -> usize {
        self.w_gate.value.nrows()
    }

    /// The hidden width `H`.
    pub fn hidden(&self) -> usize {
        self.w_gate.value.ncols()
    }

    /// The gate projection `(C, H)`.
    pub fn w_gate(&self) -> &Param2<F> {
        &self.w_gate
    }

    /// The up projection `(C, H)`.
    pub fn w_up(&self) -> &Param2<F> {
        &self.w_up
    }

    /// The down projection `(H, C)`.
    pub fn w_down(&self) -> &Param2<F> {
        &self.w_down
    }

    /// The computation on rows `x (N, C)`: the output `(N, C)` and the hidden rows
    /// `g = x·W_gate` and `u = x·W_up`, `(N, H)`.
    fn apply(&self, x: ArrayView2<'_, F>) -> Result<(Array2<F>, Array2<F>, Array2<F>)> {
        let gate = linear_forward(x, self.w_gate.value.view(), None)?;
        let up = linear_forward(x, self.w_up.value.view(), None)?;
        let a = swiglu_forward(gate.view(), up.view())?;
        let y = linear_forward(a.view(), self.w_down.value.view(), None)?;
        recycle::give(a); // the backward recomputes it
        Ok((y, gate, up))
    }
}

impl<F: Float> Layer<F> for SwiGlu<F> {
    fn kind(&self) -> &'static str {
        LAYER
    }

    fn forward(&mut self, x: &Array3<F>) -> Result<Array3<F>> {
        // The previous forward is forgotten first (its buffers reused, the hidden rows
        // through the recycled ones): a failed forward leaves nothing to backpropagate.
        let buffer = self.cache.take().map(|old| {
            recycle::give(old.gate);
            recycle::give(old.up);
            old.x
        });
        let bt = check_width(LAYER, "input", x.view(), self.width())?;
        let x = rows_reusing(buffer, x.view());
        let (y, gate, up) = self.apply(x.view())?;
        let y = from_rows(LAYER, y, bt)?;
        self.cache.store(SwiGluCache { x, gate, up }, y.dim());
        Ok(y)
    }

    fn infer_with(&self, x: &Array3<F>, _: &mut InferState<'_, F>) -> Result<Array3<F>> {
        let bt = check_width(LAYER, "input", x.view(), self.width())?;
        from_rows(LAYER, self.apply(rows(x.view()).view())?.0, bt)
    }

    fn backward(&mut self, dy: &Array3<F>) -> Result<Array3<F>> {
        let cache = self.cache.get(LAYER, dy)?;
        let (b, t, _) = dy.dim();
        // Every shape below follows from the cache, checked against dy just above, so no
        // call can fail after a gradient has been added to.
        let mut a = swiglu_forward(cache.gate.view(), cache.up.view())?;
        // dW_down += aᵀ·dy, da = dy·W_downᵀ
        let mut d = linear_backward(
            a.view(),
            self.w_down.value.view(),
            rows(dy.view()).view(),
            self.w_down.grad.view_mut(),
            None,
        )?;
        // a is spent: its buffer takes du, and da's becomes dg.
        swiglu_backward_in_place(
            cache.gate.view(),
            cache.up.view(),
            d.view_mut(),
            a.view_mut(),
        );
        let (d_gate, d_up) = (d, a);
        // dW_gate += xᵀ·dg, dx = dg·W_gateᵀ; then dW_up += xᵀ·du, dx += du·W_upᵀ
        let mut dx = linear_backward(
            cache.x.view(),
            self.w_gate.value.view(),
            d_gate.view(),
            self.w_gate.grad.view_mut(),
            None,
        )?;
        linear_backward_add(
            cache.x.view(),
            self.w_up.value.view(),
            d_up.view(),
            self.w_up.grad.view_mut(),
            &mut dx.view_mut(),
        )?;
        for used in [d_gate, d_up] {
            recycle::give(used);
        }
        from_rows(LAYER, dx, (b, t))
    }
}
