//! [`Linear`]: `y = x·W + b` applied at every position.

use ndarray::{Array1, Array2, Array3};
use rand::Rng;

use super::util::{
    cached, check_activation, check_dy, copy_reusing, glorot_uniform, into_rows, rows, unrows,
};
use crate::kernels::{linear_backward, linear_forward};
use crate::param::{Param1, Param2, ParamPath, ParamVisitor, ParamVisitorMut};
use crate::{Float, Layer, Result};

const LAYER: &str = "Linear";

/// A position-wise affine map: `(B, T, C_in)` → `(B, T, C_out)`.
///
/// Parameters: `w (C_in, C_out)`, Glorot-uniform initialised, and optionally `b (C_out)`,
/// zero-initialised.
///
/// # Example
///
/// ```
/// use baregpt::{layers::Linear, Layer};
/// use ndarray::Array3;
/// use rand::SeedableRng;
///
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// let mut linear = Linear::<f32>::new(8, 3, true, &mut rng);
/// let y = linear.forward(&Array3::ones((2, 5, 8)))?;
/// assert_eq!(y.shape(), &[2, 5, 3]);
/// let dx = linear.backward(&Array3::ones((2, 5, 3)))?;
/// assert_eq!(dx.shape(), &[2, 5, 8]);
/// assert_eq!(linear.param_names(), ["w", "b"]);
/// # Ok::<(), baregpt::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Linear<F: Float> {
    w: Param2<F>,
    b: Option<Param1<F>>,
    /// The last input as rows `(B·T, C_in)`, and `(B, T)`.
    cache: Option<(Array2<F>, (usize, usize))>,
}

impl<F: Float> Linear<F> {
    /// A new layer with Glorot-uniform weights drawn from `rng` and, if `bias`, a zero bias.
    pub fn new<R: Rng + ?Sized>(c_in: usize, c_out: usize, bias: bool, rng: &mut R) -> Self {
        let w = glorot_uniform(c_in, c_out, rng);
        let b = bias.then(|| Array1::zeros(c_out));
        Self {
            w: Param2::new(w),
            b: b.map(Param1::new),
            cache: None,
        }
    }

    /// A layer with the given weight `(C_in, C_out)` and optional bias `(C_out)`.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when the bias length is not `C_out`.
    pub fn from_arrays(w: Array2<F>, b: Option<Array1<F>>) -> Result<Self> {
        if let Some(b) = &b {
            crate::error::check_shape(LAYER, "b", b.shape(), &[Some(w.ncols())])?;
        }
        Ok(Self {
            w: Param2::new(w),
            b: b.map(Param1::new),
            cache: None,
        })
    }

    /// The weight parameter `(C_in, C_out)`.
    pub fn weight(&self) -> &Param2<F> {
        &self.w
    }

    /// The bias parameter `(C_out)`, if the layer has one.
    pub fn bias(&self) -> Option<&Param1<F>> {
        self.b.as_ref()
    }

    /// Input width `C_in`.
    pub fn c_in(&self) -> usize {
        self.w.value.nrows()
    }

    /// Output width `C_out`.
    pub fn c_out(&self) -> usize {
        self.w.value.ncols()
    }

    /// The forward pass without caching anything (for inference):
    /// `(B, T, C_in)` → `(B, T, C_out)`.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when the last axis is not `C_in`.
    pub fn infer(&self, x: &Array3<F>) -> Result<Array3<F>> {
        let (b, t) = check_activation(LAYER, "input", x.view(), self.c_in())?;
        let y = linear_forward(
            rows(x.view()).view(),
            self.w.value.view(),
            self.b.as_ref().map(|b| b.value.view()),
        )?;
        unrows(LAYER, y, b, t)
    }
}

impl<F: Float> Linear<F> {
    /// [`Layer::forward`] for an input the caller no longer needs: it is moved into the
    /// cache instead of copied.
    pub(crate) fn forward_owned(&mut self, x: Array3<F>) -> Result<Array3<F>> {
        let (b, t) = check_activation(LAYER, "input", x.view(), self.c_in())?;
        self.forward_rows(into_rows(x), b, t)
    }

    /// The forward on rows `(B·T, C_in)` already checked, caching them.
    fn forward_rows(&mut self, x_rows: Array2<F>, b: usize, t: usize) -> Result<Array3<F>> {
        let y = linear_forward(
            x_rows.view(),
            self.w.value.view(),
            self.b.as_ref().map(|b| b.value.view()),
        )?;
        self.cache = Some((x_rows, (b, t)));
        unrows(LAYER, y, b, t)
    }
}

impl<F: Float> Layer<F> for Linear<F> {
    fn kind(&self) -> &'static str {
        LAYER
    }

    fn forward(&mut self, x: &Array3<F>) -> Result<Array3<F>> {
        let (b, t) = check_activation(LAYER, "input", x.view(), self.c_in())?;
        let x_rows = copy_reusing(self.cache.take().map(|(old, _)| old), rows(x.view()).view());
        self.forward_rows(x_rows, b, t)
    }

    fn backward(&mut self, dy: &Array3<F>) -> Result<Array3<F>> {
        let (x_rows, (b, t)) = cached(LAYER, &self.cache)?;
        check_dy(LAYER, dy, (*b, *t, self.c_out()))?;
        let dy_rows = rows(dy.view());
        let dx = linear_backward(
            x_rows.view(),
            self.w.value.view(),
            dy_rows.view(),
            self.w.grad.view_mut(),
            self.b.as_mut().map(|b| b.grad.view_mut()),
        )?;
        unrows(LAYER, dx, *b, *t)
    }

    fn visit_params(&self, path: &mut ParamPath, f: &mut ParamVisitor<'_, F>) {
        self.w.visit("w", path, f);
        if let Some(b) = &self.b {
            b.visit("b", path, f);
        }
    }

    fn visit_params_mut(&mut self, path: &mut ParamPath, f: &mut ParamVisitorMut<'_, F>) {
        self.w.visit_mut("w", path, f);
        if let Some(b) = &mut self.b {
            b.visit_mut("b", path, f);
        }
    }
}
