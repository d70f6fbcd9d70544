//! [`Sequential`]: boxed float layers applied in order.

use ndarray::Array3;

use super::util::{cached, check_dy};
use crate::param::{ParamPath, ParamVisitor, ParamVisitorMut};
use crate::{Float, Layer, Result};

/// Layers applied one after another; backward runs them in reverse.
///
/// Parameters are named by position: `0.w`, `1.gamma`, ...
///
/// # Example
///
/// ```
/// use baregpt::{layers::{Gelu, LayerNorm, Linear, Sequential}, Layer};
/// use ndarray::Array3;
/// use rand::SeedableRng;
///
/// let mut rng = rand::rngs::StdRng::seed_from_u64(4);
/// let mut net = Sequential::<f64>::new()
///     .push(Linear::new(4, 8, true, &mut rng))
///     .push(Gelu::new())
///     .push(LayerNorm::new(8));
/// let y = net.forward(&Array3::ones((1, 2, 4)))?;
/// assert_eq!(y.shape(), &[1, 2, 8]);
/// assert_eq!(net.param_names(), ["0.w", "0.b", "2.gamma", "2.beta"]);
/// # Ok::<(), baregpt::Error>(())
/// ```
pub struct Sequential<F: Float> {
    layers: Vec<Box<dyn Layer<F>>>,
    /// The output shape of the last forward, if it completed.
    out_shape: Option<(usize, usize, usize)>,
}

impl<F: Float> Default for Sequential<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F: Float> Sequential<F> {
    /// An empty sequence (the identity).
    pub fn new() -> Self {
        Self {
            layers: Vec::new(),
            out_shape: None,
        }
    }

    /// A sequence of already boxed layers.
    pub fn from_layers(layers: Vec<Box<dyn Layer<F>>>) -> Self {
        Self {
            layers,
            out_shape: None,
        }
    }

    /// Appends a layer (builder style).
    #[must_use]
    pub fn push(mut self, layer: impl Layer<F> + 'static) -> Self {
        self.layers.push(Box::new(layer));
        self
    }

    /// The layers, in order.
    pub fn layers(&self) -> &[Box<dyn Layer<F>>] {
        &self.layers
    }

    /// The number of layers.
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether the sequence has no layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

impl<F: Float> Layer<F> for Sequential<F> {
    fn kind(&self) -> &'static str {
        "Sequential"
    }

    fn forward(&mut self, x: &Array3<F>) -> Result<Array3<F>> {
        self.out_shape = None;
        let mut layers = self.layers.iter_mut();
        let mut y = match layers.next() {
            Some(first) => first.forward(x)?,
            None => x.clone(),
        };
        for layer in layers {
            y = layer.forward(&y)?;
        }
        self.out_shape = Some(y.dim());
        Ok(y)
    }

    fn backward(&mut self, dy: &Array3<F>) -> Result<Array3<F>> {
        // Check before any layer accumulates, so a failed call changes no gradient.
        let shape = *cached("Sequential", &self.out_shape)?;
        check_dy("Sequential", dy, shape)?;
        let mut layers = self.layers.iter_mut().rev();
        let mut d = match layers.next() {
            Some(last) => last.backward(dy)?,
            None => dy.clone(),
        };
        for layer in layers {
            d = layer.backward(&d)?;
        }
        Ok(d)
    }

    fn visit_params(&self, path: &mut ParamPath, f: &mut ParamVisitor<'_, F>) {
        for (i, layer) in self.layers.iter().enumerate() {
            path.scoped_index(i, |p| layer.visit_params(p, f));
        }
    }

    fn visit_params_mut(&mut self, path: &mut ParamPath, f: &mut ParamVisitorMut<'_, F>) {
        for (i, layer) in self.layers.iter_mut().enumerate() {
            path.scoped_index(i, |p| layer.visit_params_mut(p, f));
        }
    }
}
