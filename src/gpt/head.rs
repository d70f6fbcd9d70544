//! [`Head`]: a [`Gpt`](super::Gpt)'s output head, either a layer of its own or tied to the
//! token embedding table.

use ndarray::Array3;

use crate::layer::{DropoutMode, InferState};
use crate::layers::TiedHead;
use crate::param::{Param2, ParamPath, ParamVisitor, ParamVisitorMut, Params};
use crate::{Float, Layer, Result};

/// The map from the last hidden state `(B, T, C)` to the logits `(B, T, V)`, as
/// [`HeadKind::build`](super::parts::HeadKind::build) makes it.
///
/// A head either owns its weights ([`Head::Layer`], e.g. a [`Linear`](crate::layers::Linear)
/// `head.w (C, V)`) or uses the token embedding table `embed.tok (V, C)` ([`Head::Tied`]). The
/// table is owned by the embedding, so every method takes it as an argument, and only the
/// tied variant reads it: the tied backward adds its share of the table's gradient, the
/// embedding's backward the other. Its parameters are those of the layer or of the
/// [`TiedHead`] (the optional bias), never the table.
#[non_exhaustive]
pub enum Head<F: Float> {
    /// A float layer `(B, T, C)` → `(B, T, V)` with its own parameters.
    Layer(Box<dyn Layer<F>>),
    /// `x·Eᵀ + b` with the token table `E`.
    Tied(TiedHead<F>),
}

impl<F: Float> std::fmt::Debug for Head<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Layer(layer) => f.debug_tuple("Layer").field(&layer.kind()).finish(),
            Self::Tied(head) => f.debug_tuple("Tied").field(head).finish(),
        }
    }
}

impl<F: Float> Params<F> for Head<F> {
    fn visit_params<'a>(&'a self, path: &mut ParamPath, f: &mut ParamVisitor<'a, '_, F>) {
        match self {
            Self::Layer(layer) => layer.visit_params(path, f),
            Self::Tied(head) => head.visit_params(path, f),
        }
    }

    fn visit_params_mut<'a>(
        &'a mut self,
        path: &mut ParamPath,
        f: &mut ParamVisitorMut<'a, '_, F>,
    ) {
        match self {
            Self::Layer(layer) => layer.visit_params_mut(path, f),
            Self::Tied(head) => head.visit_params_mut(path, f),
        }
    }
}

impl<F: Float> Head<F> {
    /// Whether the head uses the token table (and so owns no weight matrix).
    pub fn is_tied(&self) -> bool {
        matches!(self, Self::Tied(_))
    }

    /// The name used in errors: the layer's kind, or `TiedHead`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Layer(layer) => layer.kind(),
            Self::Tied(_) => "TiedHead",
        }
    }

    /// Passes [`Layer::set_dropout`] to a head that is a layer (a tied head has no dropout).
    pub fn set_dropout(&mut self, mode: DropoutMode) {
        if let Self::Layer(layer) = self {
            layer.set_dropout(mode);
        }
    }

    /// The logits of `x (B, T, C)`, caching what the backward needs; `table` is the token
    /// table `(V, C)`.
    ///
    /// # Errors
    /// The layer's, or [`TiedHead::forward`]'s.
    pub fn forward(&mut self, x: &Array3<F>, table: &Param2<F>) -> Result<Array3<F>> {
        match self {
            Self::Layer(layer) => layer.forward(x),
            Self::Tied(head) => head.forward(x, table),
        }
    }

    /// The logits of `x (B, T, C)`, caching nothing.
    ///
    /// # Errors
    /// The layer's, or [`TiedHead::infer`]'s.
    pub fn infer_with(
        &self,
        x: &Array3<F>,
        state: &mut InferState<'_, F>,
        table: &Param2<F>,
    ) -> Result<Array3<F>> {
        match self {
            Self::Layer(layer) => layer.infer_with(x, state),
            Self::Tied(head) => head.infer(x, table),
        }
    }

    /// The backward of the last forward at `dy (B, T, V)`: adds into the head's parameter
    /// gradients (and, when tied, into `table.grad`), returns `dx (B, T, C)`.
    ///
    /// # Errors
    /// The layer's, or [`TiedHead::backward`]'s.
    pub fn backward(&mut self, dy: &Array3<F>, table: &mut Param2<F>) -> Result<Array3<F>> {
        match self {
            Self::Layer(layer) => layer.backward(dy),
            Self::Tied(head) => head.backward(dy, table),
        }
    }
}
