//! [`Linear`]: `y = x·W + b` applied at every position.

use ndarray::{Array1, Array2, Array3, ArrayView2};
use rand::Rng;

use super::init::{check_matrix, check_positive, glorot_uniform};
use crate::error::check_shape;
use crate::kernels::{linear_backward, linear_forward};
use crate::layer::rows::rows_reusing;
use crate::layer::{Cache, InferState, check_width, from_rows, rows};
use crate::param::{Param1, Param2, Params};
use crate::{Float, Layer, Result, params};

const LAYER: &str = "Linear";

/// A position-wise affine map: `(B, T, C_in)` → `(B, T, C_out)`.
///
/// Parameters: `w (C_in, C_out)`, Glorot-uniform initialised, and optionally `b (C_out)`,
/// zero-initialised. The computation on rows, [`Linear::forward_rows`] and
/// [`Linear::backward_rows`], is public for layers that hold their own cache (as
/// [`Mlp`](super::Mlp) does).
///
/// # Example
///
/// ```
/// use baregpt::{layers::Linear, prelude::*};
/// use ndarray::Array3;
/// use rand::SeedableRng;
///
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// let mut linear = Linear::<f32>::new(8, 3, true, &mut rng)?;
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
    /// The last input as rows `(B·T, C_in)`.
    cache: Cache<Array2<F>>,
}

impl<F: Float> Params<F> for Linear<F> {
    params!(F; w, b);
}

impl<F: Float> Linear<F> {
    /// A new layer with Glorot-uniform weights drawn from `rng` and, if `bias`, a zero bias.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) when a width is zero;
    /// [`Error::TooLarge`](crate::Error::TooLarge) when the weight would exceed
    /// [`MAX_ALLOC_BYTES`](crate::limits::MAX_ALLOC_BYTES).
    pub fn new<R: Rng + ?Sized>(
        c_in: usize,
        c_out: usize,
        bias: bool,
        rng: &mut R,
    ) -> Result<Self> {
        check_positive(LAYER, "c_in", c_in)?;
        check_positive(LAYER, "c_out", c_out)?;
        check_matrix::<F>(LAYER, c_in, c_out)?;
        let w = glorot_uniform(c_in, c_out, rng);
        Self::from_arrays(w, bias.then(|| Array1::zeros(c_out)))
    }

    /// A layer with the given weight `(C_in, C_out)` and optional bias `(C_out)`.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when the bias length is not `C_out`;
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) when the weight has no rows or
    /// columns.
    pub fn from_arrays(w: Array2<F>, b: Option<Array1<F>>) -> Result<Self> {
        check_positive(LAYER, "c_in (the weight's rows)", w.nrows())?;
        check_positive(LAYER, "c_out (the weight's columns)", w.ncols())?;
        if let Some(b) = &b {
            check_shape(LAYER, "b", b.shape(), &[Some(w.ncols())])?;
        }
        Ok(Self {
            w: Param2::new(w),
            b: b.map(Param1::new),
            cache: Cache::new(),
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

    /// The computation: `x (N, C_in)` → `x·W + b (N, C_out)`.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when `x` is not `(N, C_in)`.
    pub fn forward_rows(&self, x: ArrayView2<'_, F>) -> Result<Array2<F>> {
        linear_forward(
            x,
            self.w.value.view(),
            self.b.as_ref().map(|b| b.value.view()),
        )
    }

    /// The backward of [`Linear::forward_rows`] at input `x (N, C_in)`: **adds**
    /// `xᵀ·dy` into `w`'s gradient and the column sums of `dy` into `b`'s, and returns
    /// `dx = dy·Wᵀ (N, C_in)` (derivation at [`linear_backward`]).
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when `x` or `dy (N, C_out)` is
    /// misshapen; then no gradient changes.
    pub fn backward_rows(
        &mut self,
        x: ArrayView2<'_, F>,
        dy: ArrayView2<'_, F>,
    ) -> Result<Array2<F>> {
        linear_backward(
            x,
            self.w.value.view(),
            dy,
            self.w.grad.view_mut(),
            self.b.as_mut().map(|b| b.grad.view_mut()),
        )
    }
}

impl<F: Float> Layer<F> for Linear<F> {
    fn kind(&self) -> &'static str {
        LAYER
    }

    fn forward(&mut self, x: &Array3<F>) -> Result<Array3<F>> {
        // The previous forward is forgotten first (its buffer is reused): a failed forward
        // leaves nothing to backpropagate.
        let buffer = self.cache.take();
        let (b, t) = check_width(LAYER, "input", x.view(), self.c_in())?;
        let x_rows = rows_reusing(buffer, x.view());
        let y = from_rows(LAYER, self.forward_rows(x_rows.view())?, (b, t))?;
        self.cache.store(x_rows, y.dim());
        Ok(y)
    }

    fn infer_with(&self, x: &Array3<F>, _: &mut InferState<'_, F>) -> Result<Array3<F>> {
        let (b, t) = check_width(LAYER, "input", x.view(), self.c_in())?;
        from_rows(LAYER, self.forward_rows(rows(x.view()).view())?, (b, t))
    }

    fn backward(&mut self, dy: &Array3<F>) -> Result<Array3<F>> {
        let x_rows = self.cache.get(LAYER, dy)?;
        let (b, t, _) = dy.dim();
        let dx = linear_backward(
            x_rows.view(),
            self.w.value.view(),
            rows(dy.view()).view(),
            self.w.grad.view_mut(),
            self.b.as_mut().map(|b| b.grad.view_mut()),
        )?;
        from_rows(LAYER, dx, (b, t))
    }
}
