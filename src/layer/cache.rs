//! [`Cache`]: what a layer's forward keeps for its backward.

use ndarray::Array3;

use crate::error::check_shape;
use crate::{Error, Result};

/// What a layer's forward keeps for its backward, with the output shape it produced.
///
/// It does the two checks every backward starts with: that a forward ran
/// ([`Error::BackwardBeforeForward`] otherwise) and that `dy` has the last output's shape
/// ([`Error::ShapeMismatch`] otherwise).
///
/// ```
/// use baregpt::layer::Cache;
/// use ndarray::Array3;
///
/// let mut cache = Cache::<Vec<f64>>::new();
/// let dy = Array3::<f64>::zeros((2, 3, 4));
/// assert!(cache.get("MyLayer", &dy).is_err()); // backward before forward
/// cache.store(vec![1.0], (2, 3, 4));
/// assert_eq!(cache.get("MyLayer", &dy)?, &vec![1.0]);
/// assert!(cache.get("MyLayer", &Array3::<f64>::zeros((2, 3, 5))).is_err()); // wrong dy
/// # Ok::<(), baregpt::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Cache<T> {
    slot: Option<(T, (usize, usize, usize))>,
}

impl<T> Default for Cache<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Cache<T> {
    /// An empty cache.
    pub const fn new() -> Self {
        Self { slot: None }
    }

    /// Keeps `value` for the backward of a forward whose output had shape `output`
    /// `(B, T, C_out)`, replacing what was there.
    pub fn store(&mut self, value: T, output: (usize, usize, usize)) {
        self.slot = Some((value, output));
    }

    /// The cached value for a backward with `dy`, after checking that a forward ran and that
    /// `dy` has that forward's output shape; `layer` names the layer in the error.
    ///
    /// # Errors
    /// [`Error::BackwardBeforeForward`] when nothing is cached; [`Error::ShapeMismatch`] when
    /// `dy`'s shape is not the output's.
    pub fn get<F>(&self, layer: &'static str, dy: &Array3<F>) -> Result<&T> {
        let (value, (b, t, c)) = self
            .slot
            .as_ref()
            .ok_or(Error::BackwardBeforeForward { layer })?;
        check_shape(layer, "dy", dy.shape(), &[Some(*b), Some(*t), Some(*c)])?;
        Ok(value)
    }

    /// The cached value, if any, without checks.
    pub fn value(&self) -> Option<&T> {
        self.slot.as_ref().map(|(v, _)| v)
    }

    /// The output shape `(B, T, C_out)` of the cached forward, if any.
    pub fn output_shape(&self) -> Option<(usize, usize, usize)> {
        self.slot.as_ref().map(|(_, shape)| *shape)
    }

    /// Removes and returns the cached value (for reusing its buffers in the next forward).
    pub fn take(&mut self) -> Option<T> {
        self.slot.take().map(|(v, _)| v)
    }

    /// Forgets what is cached: the next backward is refused until a forward runs.
    pub fn clear(&mut self) {
        self.slot = None;
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.slot.is_none()
    }
}
