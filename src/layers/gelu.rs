//! [`Gelu`]: the tanh-approximated GELU activation as a parameter-free layer.

use ndarray::Array3;

use super::util::cached;
use crate::error::check_shape;
use crate::kernels::{gelu_backward, gelu_forward};
use crate::param::{ParamPath, ParamVisitor, ParamVisitorMut};
use crate::{Float, Layer, Result};

const LAYER: &str = "Gelu";

/// Element-wise tanh-GELU, `(B, T, C)` → `(B, T, C)`. No parameters.
///
/// # Example
///
/// ```
/// use baregpt::{layers::Gelu, Layer};
/// use ndarray::Array3;
///
/// let mut gelu = Gelu::<f64>::new();
/// let y = gelu.forward(&Array3::zeros((1, 2, 3)))?;
/// assert_eq!(y, Array3::<f64>::zeros((1, 2, 3)));
/// # Ok::<(), baregpt::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct Gelu<F: Float> {
    input: Option<Array3<F>>,
}

impl<F: Float> Gelu<F> {
    /// A GELU layer with an empty cache.
    pub fn new() -> Self {
        Self { input: None }
    }
}

impl<F: Float> Gelu<F> {
    /// [`Layer::forward`] for an input the caller no longer needs: it is moved into the
    /// cache instead of copied.
    pub(crate) fn forward_owned(&mut self, x: Array3<F>) -> Result<Array3<F>> {
        let y = gelu_forward(x.view());
        self.input = Some(x);
        Ok(y)
    }
}

impl<F: Float> Layer<F> for Gelu<F> {
    fn kind(&self) -> &'static str {
        LAYER
    }

    fn forward(&mut self, x: &Array3<F>) -> Result<Array3<F>> {
        self.forward_owned(x.clone())
    }

    fn backward(&mut self, dy: &Array3<F>) -> Result<Array3<F>> {
        let x = cached(LAYER, &self.input)?;
        let expected: Vec<Option<usize>> = x.shape().iter().map(|&n| Some(n)).collect();
        check_shape(LAYER, "dy", dy.shape(), &expected)?;
        gelu_backward(x.view(), dy.view())
    }

    fn visit_params(&self, _: &mut ParamPath, _: &mut ParamVisitor<'_, F>) {}

    fn visit_params_mut(&mut self, _: &mut ParamPath, _: &mut ParamVisitorMut<'_, F>) {}
}
