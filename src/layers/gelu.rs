//! [`Gelu`]: the tanh-approximated GELU activation as a parameter-free layer.

use ndarray::Array3;

use crate::kernels::{gelu_backward, gelu_forward};
use crate::layer::{Cache, InferState};
use crate::param::Params;
use crate::{Float, Layer, Result, params};

const LAYER: &str = "Gelu";

/// Element-wise tanh-GELU, `(B, T, C)` → `(B, T, C)`. No parameters.
///
/// # Example
///
/// ```
/// use baregpt::{layers::Gelu, prelude::*};
/// use ndarray::Array3;
///
/// let mut gelu = Gelu::<f64>::new();
/// let y = gelu.forward(&Array3::zeros((1, 2, 3)))?;
/// assert_eq!(y, Array3::<f64>::zeros((1, 2, 3)));
/// # Ok::<(), baregpt::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct Gelu<F: Float> {
    /// The input: the derivative is computed from it.
    input: Cache<Array3<F>>,
}

impl<F: Float> Params<F> for Gelu<F> {
    params!(F;);
}

impl<F: Float> Gelu<F> {
    /// A GELU layer with an empty cache.
    pub fn new() -> Self {
        Self {
            input: Cache::new(),
        }
    }
}

impl<F: Float> Layer<F> for Gelu<F> {
    fn kind(&self) -> &'static str {
        LAYER
    }

    fn forward(&mut self, x: &Array3<F>) -> Result<Array3<F>> {
        // Forget the previous forward first (the rule of every layer; this one cannot fail).
        self.input.clear();
        let y = gelu_forward(x.view());
        self.input.store(x.clone(), y.dim());
        Ok(y)
    }

    fn infer_with(&self, x: &Array3<F>, _: &mut InferState<'_, F>) -> Result<Array3<F>> {
        Ok(gelu_forward(x.view()))
    }

    fn backward(&mut self, dy: &Array3<F>) -> Result<Array3<F>> {
        gelu_backward(self.input.get(LAYER, dy)?.view(), dy.view())
    }
}
