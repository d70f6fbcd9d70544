//! [`CrossEntropy`]: the softmax cross-entropy head with a fused backward.

use ndarray::{Array2, Array3};

use crate::error::check_shape;
use crate::kernels::{cross_entropy_backward, cross_entropy_forward, recycle};
use crate::layer::InferState;
use crate::param::Params;
use crate::{Error, Float, Layer, Result, params};

const LAYER: &str = "CrossEntropy";

/// Mean softmax cross-entropy of logits `(B, T, V)` against targets `(B, T)`.
///
/// Use it directly with [`CrossEntropy::loss`] and [`CrossEntropy::backward_loss`], or as a
/// [`Layer`] once targets are set: the layer's output is the loss as a `(1, 1, 1)` array and
/// its backward takes `dL/dloss` of that shape, so it can close a [`Sequential`] or be
/// gradient-checked like any layer.
///
/// [`Sequential`]: crate::layers::Sequential
///
/// # Example
///
/// ```
/// use baregpt::CrossEntropy;
/// use ndarray::{array, Array3};
///
/// let mut head = CrossEntropy::<f64>::new();
/// let loss = head.loss(&Array3::zeros((1, 2, 4)), &array![[0, 3]])?;
/// assert!((loss - 4f64.ln()).abs() < 1e-12);
/// let d_logits = head.backward_loss()?;  // (probs − onehot) / (B·T)
/// assert!((d_logits[[0, 0, 0]] - (0.25 - 1.0) / 2.0).abs() < 1e-12);
/// # Ok::<(), baregpt::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct CrossEntropy<F: Float> {
    targets: Option<Array2<usize>>,
    probs: Option<Array3<F>>,
}

impl<F: Float> CrossEntropy<F> {
    /// A loss head with no targets and an empty cache.
    pub fn new() -> Self {
        Self {
            targets: None,
            probs: None,
        }
    }

    /// Sets the targets `(B, T)` the [`Layer`] form scores against.
    pub fn set_targets(&mut self, targets: Array2<usize>) {
        self.targets = Some(targets);
        self.probs = None;
    }

    /// The mean loss of `logits (B, T, V)` against `targets (B, T)`; caches for
    /// [`CrossEntropy::backward_loss`].
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] for a targets shape other than `(B, T)`;
    /// [`Error::TargetOutOfRange`] for a target `≥ V`.
    pub fn loss(&mut self, logits: &Array3<F>, targets: &Array2<usize>) -> Result<F> {
        self.clear();
        let (loss, probs) = cross_entropy_forward(logits.view(), targets.view())?;
        self.targets = Some(targets.clone());
        self.probs = Some(probs);
        Ok(loss)
    }

    /// `dL/dlogits (B, T, V)` of the last [`CrossEntropy::loss`] (with `dL/dloss = 1`).
    ///
    /// # Errors
    /// [`Error::BackwardBeforeForward`] when no loss was computed.
    pub fn backward_loss(&self) -> Result<Array3<F>> {
        self.backward_scaled(F::one())
    }

    fn backward_scaled(&self, d_loss: F) -> Result<Array3<F>> {
        match (&self.probs, &self.targets) {
            (Some(probs), Some(targets)) => {
                cross_entropy_backward(probs.view(), targets.view(), d_loss)
            }
            _ => Err(Error::BackwardBeforeForward { layer: LAYER }),
        }
    }

    /// The softmax probabilities `(B, T, V)` of the last forward, if any.
    pub fn probs(&self) -> Option<&Array3<F>> {
        self.probs.as_ref()
    }

    /// Forgets the last loss: [`CrossEntropy::backward_loss`] is refused until the next.
    pub fn clear(&mut self) {
        if let Some(probs) = self.probs.take() {
            recycle::give(probs);
        }
    }

    fn targets(&self) -> Result<&Array2<usize>> {
        self.targets.as_ref().ok_or_else(|| Error::InvalidConfig {
            layer: LAYER,
            reason: "no targets set: call set_targets before forward".into(),
        })
    }
}

impl<F: Float> Params<F> for CrossEntropy<F> {
    params!(F;);
}

impl<F: Float> Layer<F> for CrossEntropy<F> {
    fn kind(&self) -> &'static str {
        LAYER
    }

    /// The loss as a `(1, 1, 1)` array; targets must have been set.
    fn forward(&mut self, logits: &Array3<F>) -> Result<Array3<F>> {
        self.clear();
        let (loss, probs) = cross_entropy_forward(logits.view(), self.targets()?.view())?;
        self.probs = Some(probs);
        Ok(Array3::from_elem((1, 1, 1), loss))
    }

    fn infer_with(&self, logits: &Array3<F>, _: &mut InferState<'_, F>) -> Result<Array3<F>> {
        let (loss, _) = cross_entropy_forward(logits.view(), self.targets()?.view())?;
        Ok(Array3::from_elem((1, 1, 1), loss))
    }

    fn backward(&mut self, dy: &Array3<F>) -> Result<Array3<F>> {
        if self.probs.is_none() {
            return Err(Error::BackwardBeforeForward { layer: LAYER });
        }
        check_shape(LAYER, "dy", dy.shape(), &[Some(1), Some(1), Some(1)])?;
        self.backward_scaled(dy[[0, 0, 0]])
    }
}
