//! [`Sequential`]: boxed float layers applied in order.

use ndarray::Array3;

use crate::layer::{Cache, DropoutMode, InferState};
use crate::param::{ParamPath, ParamVisitor, ParamVisitorMut, Params};
use crate::{Float, Layer, Result};

const LAYER: &str = "Sequential";

/// Layers applied one after another; backward runs them in reverse.
///
/// Parameters are named by position: `0.w`, `1.gamma`, ...
///
/// # Example
///
/// ```
/// use baregpt::{layers::{Gelu, LayerNorm, Linear, Sequential}, prelude::*};
/// use ndarray::Array3;
/// use rand::SeedableRng;
///
/// let mut rng = rand::rngs::StdRng::seed_from_u64(4);
/// let mut net = Sequential::<f64>::new()
///     .push(Linear::new(4, 8, true, &mut rng)?)
///     .push(Gelu::new())
///     .push(LayerNorm::new(8)?);
/// let y = net.forward(&Array3::ones((1, 2, 4)))?;
/// assert_eq!(y.shape(), &[1, 2, 8]);
/// assert_eq!(net.param_names(), ["0.w", "0.b", "2.gamma", "2.beta"]);
/// # Ok::<(), baregpt::Error>(())
/// ```
pub struct Sequential<F: Float> {
    layers: Vec<Box<dyn Layer<F>>>,
    /// The output shape of the last forward that completed: every layer's cache is from it.
    done: Cache<()>,
}

impl<F: Float> Default for Sequential<F> {
    fn default() -> Self {
        Self::new()
    }
}

/// The layers' parameters under their positions, `0.*`, `1.*`, ... (no `layers.` prefix).
impl<F: Float> Params<F> for Sequential<F> {
    fn visit_params<'a>(&'a self, path: &mut ParamPath, f: &mut ParamVisitor<'a, '_, F>) {
        self.layers.visit_params(path, f);
    }

    fn visit_params_mut<'a>(
        &'a mut self,
        path: &mut ParamPath,
        f: &mut ParamVisitorMut<'a, '_, F>,
    ) {
        self.layers.visit_params_mut(path, f);
    }
}

impl<F: Float> Sequential<F> {
    /// An empty sequence (the identity).
    pub fn new() -> Self {
        Self::from_layers(Vec::new())
    }

    /// A sequence of already boxed layers.
    pub fn from_layers(layers: Vec<Box<dyn Layer<F>>>) -> Self {
        Self {
            layers,
            done: Cache::new(),
        }
    }

    /// Appends a layer (builder style).
    #[must_use]
    pub fn push(mut self, layer: impl Layer<F> + 'static) -> Self {
        self.layers.push(Box::new(layer));
        self.done.clear();
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
        LAYER
    }

    fn forward(&mut self, x: &Array3<F>) -> Result<Array3<F>> {
        self.done.clear();
        let mut y = x.clone();
        for layer in &mut self.layers {
            y = layer.forward(&y)?;
        }
        self.done.store((), y.dim());
        Ok(y)
    }

    fn infer_with(&self, x: &Array3<F>, state: &mut InferState<'_, F>) -> Result<Array3<F>> {
        let mut y = x.clone();
        for layer in &self.layers {
            y = layer.infer_with(&y, state)?;
        }
        Ok(y)
    }

    fn backward(&mut self, dy: &Array3<F>) -> Result<Array3<F>> {
        // Check before any layer accumulates, so a failed call changes no gradient.
        self.done.get(LAYER, dy)?;
        let mut d = dy.clone();
        for layer in self.layers.iter_mut().rev() {
            d = layer.backward(&d)?;
        }
        Ok(d)
    }

    fn set_dropout(&mut self, mode: DropoutMode) {
        for layer in &mut self.layers {
            layer.set_dropout(mode);
        }
    }
}
