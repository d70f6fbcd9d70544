//! The [`Layer`] trait (a forward that caches, an inference that does not, a backward that
//! accumulates) and the pieces a layer is written with: [`Cache`] for what the backward
//! needs, the `(B, T, C)` ↔ `(N, C)` [row helpers](rows), and the inference state
//! ([`InferState`], [`KvCache`]) that incremental decoding threads through the layers.

mod cache;
mod dropout;
mod kv_cache;
pub(crate) mod rows;

use ndarray::{Array2, Array3, ArrayViewD, ArrayViewMutD};

pub use cache::Cache;
pub use dropout::{DropoutMode, DropoutSite};
pub use kv_cache::{InferState, KvCache, LayerKv};
pub use rows::{check_width, from_rows, into_rows, rows};

use crate::param::Params;
use crate::{Float, Result};

/// What a layer can take as input, and what its backward returns for that input.
///
/// Float layers take activations `Array3<F>` of shape `(B, T, C)` and return an input gradient
/// of the same type. [`Embedding`](crate::layers::Embedding) and [`Gpt`](crate::Gpt) take
/// token ids `Array2<usize>` of shape `(B, T)`, which have no gradient, so their backward
/// returns `()`.
///
/// The two view methods let [`gradcheck`](crate::gradcheck) perturb float inputs and read their
/// gradients; for ids both return `None` and only the parameters are checked.
pub trait LayerInput<F>: Sized {
    /// The gradient of the loss with respect to this input.
    type Grad;

    /// The input as a mutable float view, if it is differentiable.
    fn float_view_mut(&mut self) -> Option<ArrayViewMutD<'_, F>>;

    /// The gradient as a float view, if the input is differentiable.
    fn grad_view(grad: &Self::Grad) -> Option<ArrayViewD<'_, F>>;
}

impl<F: Float> LayerInput<F> for Array3<F> {
    type Grad = Array3<F>;

    fn float_view_mut(&mut self) -> Option<ArrayViewMutD<'_, F>> {
        Some(self.view_mut().into_dyn())
    }

    fn grad_view(grad: &Array3<F>) -> Option<ArrayViewD<'_, F>> {
        Some(grad.view().into_dyn())
    }
}

impl<F: Float> LayerInput<F> for Array2<usize> {
    type Grad = ();

    fn float_view_mut(&mut self) -> Option<ArrayViewMutD<'_, F>> {
        None
    }

    fn grad_view(_: &()) -> Option<ArrayViewD<'_, F>> {
        None
    }
}

/// A differentiable layer with hand-written forward and backward passes.
///
/// * [`forward`](Layer::forward) computes the output `(B, T, C_out)` and caches what backward
///   needs (replacing any earlier cache).
/// * [`infer_with`](Layer::infer_with) computes the same output from `&self`, caching
///   nothing, so one model can serve several threads; with a [`KvCache`] in the
///   [`InferState`] it continues a sequence (incremental decoding). [`infer`](Layer::infer)
///   is the stateless shorthand. A layer writes its computation once and calls it from both.
/// * [`backward`](Layer::backward) takes dL/dy of the output's shape, **adds** (`+=`) into
///   every parameter gradient, and returns dL/dx. It reads the cache without consuming it:
///   two backward calls after one forward give twice the gradients, which is what gradient
///   accumulation and weight sharing rely on. Backward before any forward is
///   [`Error::BackwardBeforeForward`](crate::Error::BackwardBeforeForward).
/// * Parameters come from the supertrait [`Params`], reached by dotted name.
///
/// The trait is object safe: `Box<dyn Layer<F>>` is a float-to-float layer, and
/// `Box<dyn Layer<F, Array2<usize>>>` one that takes token ids. `Box<L>` and `&mut L` are
/// layers whenever `L` is. Layers are `Send + Sync` so that inference can be shared between
/// threads.
///
/// # Example
///
/// ```
/// use baregpt::prelude::*;
/// use baregpt::layers::LayerNorm;
/// use ndarray::Array3;
///
/// let mut ln: Box<dyn Layer<f64>> = Box::new(LayerNorm::new(4)?);
/// let x = Array3::from_shape_fn((2, 3, 4), |(b, t, c)| (b + 2 * t + c * c) as f64);
/// let y = ln.forward(&x)?;
/// assert_eq!(ln.infer(&x)?, y); // the same computation, nothing cached
/// let dx = ln.backward(&Array3::ones(y.raw_dim()))?;
/// assert_eq!(dx.shape(), x.shape());
/// assert_eq!(ln.num_params(), 8); // gamma and beta
/// # Ok::<(), baregpt::Error>(())
/// ```
pub trait Layer<F: Float, X: LayerInput<F> = Array3<F>>: Params<F> + Send + Sync {
    /// The layer's type name, used in error messages (for example `"LayerNorm"`).
    fn kind(&self) -> &'static str;

    /// Computes the output and caches what [`backward`](Layer::backward) needs.
    ///
    /// # Errors
    /// A typed error when `x` has the wrong shape or holds out-of-range ids. On error the
    /// layer's parameters are unchanged and a following backward is refused rather than run
    /// on a mix of two forwards.
    fn forward(&mut self, x: &X) -> Result<Array3<F>>;

    /// Computes the output without caching anything for backward, continuing the sequence
    /// held in `state`'s [`KvCache`] if it has one. Equal, bit for bit, to
    /// [`forward`](Layer::forward)'s output.
    ///
    /// # Errors
    /// As [`forward`](Layer::forward), plus the cache's errors (a batch or width other than
    /// the cache's, a sequence longer than its capacity).
    fn infer_with(&self, x: &X, state: &mut InferState<'_, F>) -> Result<Array3<F>>;

    /// Adds this call's parameter gradients into the accumulated ones and returns dL/dx.
    ///
    /// # Errors
    /// [`Error::BackwardBeforeForward`](crate::Error::BackwardBeforeForward) with no cache;
    /// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when `dy` does not have the last
    /// output's shape. On error no gradient has changed.
    fn backward(&mut self, dy: &Array3<F>) -> Result<X::Grad>;

    /// [`infer_with`](Layer::infer_with) a whole sequence from position 0, with no cache.
    ///
    /// # Errors
    /// As [`forward`](Layer::forward).
    fn infer(&self, x: &X) -> Result<Array3<F>> {
        self.infer_with(x, &mut InferState::new())
    }

    /// Sets what this layer's dropout does in later [`forward`](Layer::forward)s: a fresh
    /// mask each pass, the last mask again, or none (see [`DropoutMode`]). Layers with
    /// dropout override it, and composites pass it on to every part; the provided method,
    /// for layers without dropout, does nothing.
    fn set_dropout(&mut self, mode: DropoutMode) {
        let _ = mode;
    }
}

impl<F: Float, X: LayerInput<F>, L: Layer<F, X> + ?Sized> Layer<F, X> for Box<L> {
    fn kind(&self) -> &'static str {
        (**self).kind()
    }

    fn forward(&mut self, x: &X) -> Result<Array3<F>> {
        (**self).forward(x)
    }

    fn infer_with(&self, x: &X, state: &mut InferState<'_, F>) -> Result<Array3<F>> {
        (**self).infer_with(x, state)
    }

    fn backward(&mut self, dy: &Array3<F>) -> Result<X::Grad> {
        (**self).backward(dy)
    }

    fn set_dropout(&mut self, mode: DropoutMode) {
        (**self).set_dropout(mode);
    }
}

impl<F: Float, X: LayerInput<F>, L: Layer<F, X> + ?Sized> Layer<F, X> for &mut L {
    fn kind(&self) -> &'static str {
        (**self).kind()
    }

    fn forward(&mut self, x: &X) -> Result<Array3<F>> {
        (**self).forward(x)
    }

    fn infer_with(&self, x: &X, state: &mut InferState<'_, F>) -> Result<Array3<F>> {
        (**self).infer_with(x, state)
    }

    fn backward(&mut self, dy: &Array3<F>) -> Result<X::Grad> {
        (**self).backward(dy)
    }

    fn set_dropout(&mut self, mode: DropoutMode) {
        (**self).set_dropout(mode);
    }
}
