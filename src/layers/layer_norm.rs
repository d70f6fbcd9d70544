//! [`LayerNorm`]: affine normalisation of each position's features.

use ndarray::{Array1, Array3};

use super::init::check_positive;
use crate::kernels::{LayerNormCache, layer_norm_backward, layer_norm_forward, recycle};
use crate::layer::{Cache, InferState, check_width, from_rows, rows};
use crate::param::{Param1, Params};
use crate::{Error, Float, Layer, Result, params};

const LAYER: &str = "LayerNorm";

/// Layer normalisation over the last axis, `(B, T, C)` → `(B, T, C)`.
///
/// `y = gamma ⊙ (x − μ)/√(σ² + eps) + beta` per position, biased variance, `eps = 1e-5`.
/// Parameters: `gamma (C)` (ones) and `beta (C)` (zeros), both used and trained.
///
/// # Example
///
/// ```
/// use baregpt::{layers::LayerNorm, prelude::*};
/// use ndarray::Array3;
///
/// let mut ln = LayerNorm::<f64>::new(3)?;
/// let y = ln.forward(&Array3::from_shape_vec((1, 1, 3), vec![1.0, 2.0, 3.0]).unwrap())?;
/// assert!((y[[0, 0, 2]] - 1.5f64.sqrt()).abs() < 1e-5);
/// assert!(LayerNorm::<f64>::with_eps(3, -1.0).is_err());
/// # Ok::<(), baregpt::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct LayerNorm<F: Float> {
    gamma: Param1<F>,
    beta: Param1<F>,
    eps: F,
    cache: Cache<LayerNormCache<F>>,
}

impl<F: Float> Params<F> for LayerNorm<F> {
    params!(F; gamma, beta);
}

impl<F: Float> LayerNorm<F> {
    /// The default `eps` added to the variance.
    pub const DEFAULT_EPS: f64 = 1e-5;

    /// A LayerNorm over `c` features with `gamma = 1`, `beta = 0`, `eps = 1e-5`.
    ///
    /// # Errors
    /// As [`LayerNorm::with_eps`].
    pub fn new(c: usize) -> Result<Self> {
        Self::with_eps(c, Self::DEFAULT_EPS)
    }

    /// As [`LayerNorm::new`] with a chosen `eps`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `c` is zero or `eps` is negative or not finite in `F`;
    /// [`Error::TooLarge`] when `c` values would exceed
    /// [`MAX_ALLOC_BYTES`](crate::limits::MAX_ALLOC_BYTES).
    pub fn with_eps(c: usize, eps: f64) -> Result<Self> {
        check_positive(LAYER, "the width", c)?;
        crate::limits::check_alloc::<F>(LAYER, "gamma", &[c])?;
        let eps_f = F::of(eps);
        if !(eps >= 0.0 && eps_f.is_finite()) {
            return Err(Error::InvalidConfig {
                layer: LAYER,
                reason: format!("eps {eps} is not a finite non-negative {}", F::NAME),
            });
        }
        Ok(Self {
            gamma: Param1::new(Array1::from_elem(c, F::one())),
            beta: Param1::new(Array1::zeros(c)),
            eps: eps_f,
            cache: Cache::new(),
        })
    }

    /// The number of features `C`.
    pub fn width(&self) -> usize {
        self.gamma.value.len()
    }

    /// The gain parameter `(C)`.
    pub fn gamma(&self) -> &Param1<F> {
        &self.gamma
    }

    /// The shift parameter `(C)`.
    pub fn beta(&self) -> &Param1<F> {
        &self.beta
    }

    /// The computation: the output and what the backward needs.
    fn apply(&self, x: &Array3<F>) -> Result<(Array3<F>, LayerNormCache<F>)> {
        let (b, t) = check_width(LAYER, "input", x.view(), self.width())?;
        let (y, cache) = layer_norm_forward(
            rows(x.view()).view(),
            self.gamma.value.view(),
            self.beta.value.view(),
            self.eps,
        )?;
        Ok((from_rows(LAYER, y, (b, t))?, cache))
    }
}

impl<F: Float> Layer<F> for LayerNorm<F> {
    fn kind(&self) -> &'static str {
        LAYER
    }

    fn forward(&mut self, x: &Array3<F>) -> Result<Array3<F>> {
        // A forward forgets the previous one first, so a failed forward leaves nothing to
        // backpropagate (architecture.md, §6).
        if let Some(old) = self.cache.take() {
            recycle::give(old.x_hat); // for this forward's x̂
        }
        let (y, cache) = self.apply(x)?;
        self.cache.store(cache, y.dim());
        Ok(y)
    }

    fn infer_with(&self, x: &Array3<F>, _: &mut InferState<'_, F>) -> Result<Array3<F>> {
        Ok(self.apply(x)?.0)
    }

    fn backward(&mut self, dy: &Array3<F>) -> Result<Array3<F>> {
        let cache = self.cache.get(LAYER, dy)?;
        let (b, t, _) = dy.dim();
        let dx = layer_norm_backward(
            cache,
            rows(dy.view()).view(),
            self.gamma.value.view(),
            self.gamma.grad.view_mut(),
            self.beta.grad.view_mut(),
        )?;
        from_rows(LAYER, dx, (b, t))
    }
}
