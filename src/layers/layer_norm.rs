//! [`LayerNorm`]: affine normalisation of each position's features.

use ndarray::{Array1, Array3};

use super::util::{cached, check_activation, check_dy, rows, unrows};
use crate::kernels::{LayerNormCache, layer_norm_backward, layer_norm_forward};
use crate::param::{Param1, ParamPath, ParamVisitor, ParamVisitorMut};
use crate::{Float, Layer, Result};

const LAYER: &str = "LayerNorm";

/// Layer normalisation over the last axis, `(B, T, C)` → `(B, T, C)`.
///
/// `y = gamma ⊙ (x − μ)/√(σ² + eps) + beta` per position, biased variance, `eps = 1e-5`.
/// Parameters: `gamma (C)` (ones) and `beta (C)` (zeros), both used and trained.
///
/// # Example
///
/// ```
/// use baregpt::{layers::LayerNorm, Layer};
/// use ndarray::Array3;
///
/// let mut ln = LayerNorm::<f64>::new(3);
/// let y = ln.forward(&Array3::from_shape_vec((1, 1, 3), vec![1.0, 2.0, 3.0]).unwrap())?;
/// assert!((y[[0, 0, 2]] - 1.5f64.sqrt()).abs() < 1e-5);
/// # Ok::<(), baregpt::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct LayerNorm<F: Float> {
    gamma: Param1<F>,
    beta: Param1<F>,
    eps: F,
    cache: Option<(LayerNormCache<F>, (usize, usize))>,
}

impl<F: Float> LayerNorm<F> {
    /// The default `eps` added to the variance.
    pub const DEFAULT_EPS: f64 = 1e-5;

    /// A LayerNorm over `c` features with `gamma = 1`, `beta = 0`, `eps = 1e-5`.
    pub fn new(c: usize) -> Self {
        Self::with_eps(c, Self::DEFAULT_EPS)
    }

    /// As [`LayerNorm::new`] with a chosen `eps`.
    pub fn with_eps(c: usize, eps: f64) -> Self {
        Self {
            gamma: Param1::new(Array1::from_elem(c, F::one())),
            beta: Param1::new(Array1::zeros(c)),
            eps: F::of(eps),
            cache: None,
        }
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

    /// The forward pass without caching anything (for inference): `(B, T, C)` → `(B, T, C)`.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when the last axis is not `C`.
    pub fn infer(&self, x: &Array3<F>) -> Result<Array3<F>> {
        let (b, t) = check_activation(LAYER, "input", x.view(), self.width())?;
        let (y, _) = layer_norm_forward(
            rows(x.view()).view(),
            self.gamma.value.view(),
            self.beta.value.view(),
            self.eps,
        )?;
        unrows(LAYER, y, b, t)
    }
}

impl<F: Float> Layer<F> for LayerNorm<F> {
    fn kind(&self) -> &'static str {
        LAYER
    }

    fn forward(&mut self, x: &Array3<F>) -> Result<Array3<F>> {
        let (b, t) = check_activation(LAYER, "input", x.view(), self.width())?;
        let (y, cache) = layer_norm_forward(
            rows(x.view()).view(),
            self.gamma.value.view(),
            self.beta.value.view(),
            self.eps,
        )?;
        self.cache = Some((cache, (b, t)));
        unrows(LAYER, y, b, t)
    }

    fn backward(&mut self, dy: &Array3<F>) -> Result<Array3<F>> {
        let (cache, (b, t)) = cached(LAYER, &self.cache)?;
        check_dy(LAYER, dy, (*b, *t, self.width()))?;
        let dx = layer_norm_backward(
            cache,
            rows(dy.view()).view(),
            self.gamma.value.view(),
            self.gamma.grad.view_mut(),
            self.beta.grad.view_mut(),
        )?;
        unrows(LAYER, dx, *b, *t)
    }

    fn visit_params(&self, path: &mut ParamPath, f: &mut ParamVisitor<'_, F>) {
        self.gamma.visit("gamma", path, f);
        self.beta.visit("beta", path, f);
    }

    fn visit_params_mut(&mut self, path: &mut ParamPath, f: &mut ParamVisitorMut<'_, F>) {
        self.gamma.visit_mut("gamma", path, f);
        self.beta.visit_mut("beta", path, f);
    }
}
