//! The [`Layer`] trait: a forward that caches, a backward that accumulates.

use ndarray::{Array2, Array3, ArrayViewD, ArrayViewMutD};

use crate::kernels::elementwise::fill_zero;
use crate::param::{ParamPath, ParamVisitor, ParamVisitorMut};
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

    /// The input's shape (for messages).
    fn shape_of(&self) -> Vec<usize>;
}

impl<F: Float> LayerInput<F> for Array3<F> {
    type Grad = Array3<F>;

    fn float_view_mut(&mut self) -> Option<ArrayViewMutD<'_, F>> {
        Some(self.view_mut().into_dyn())
    }

    fn grad_view(grad: &Array3<F>) -> Option<ArrayViewD<'_, F>> {
        Some(grad.view().into_dyn())
    }

    fn shape_of(&self) -> Vec<usize> {
        self.shape().to_vec()
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

    fn shape_of(&self) -> Vec<usize> {
        self.shape().to_vec()
    }
}

/// A differentiable layer with hand-written forward and backward passes.
///
/// * [`forward`](Layer::forward) computes the output `(B, T, C_out)` and caches what backward
///   needs (replacing any earlier cache).
/// * [`backward`](Layer::backward) takes dL/dy of the output's shape, **adds** (`+=`) into
///   every parameter gradient, and returns dL/dx. It reads the cache without consuming it:
///   two backward calls after one forward give twice the gradients, which is what gradient
///   accumulation and weight sharing rely on. Backward before any forward is
///   [`Error::BackwardBeforeForward`](crate::Error::BackwardBeforeForward).
/// * Parameters are reached by dotted name through
///   [`visit_params`](Layer::visit_params) / [`visit_params_mut`](Layer::visit_params_mut).
///
/// The trait is object safe: `Box<dyn Layer<F>>` is a float-to-float layer, and
/// `Box<dyn Layer<F, Array2<usize>>>` one that takes token ids.
///
/// # Example
///
/// ```
/// use baregpt::{layers::LayerNorm, Layer};
/// use ndarray::Array3;
///
/// let mut ln: Box<dyn Layer<f64>> = Box::new(LayerNorm::new(4));
/// let x = Array3::from_shape_fn((2, 3, 4), |(b, t, c)| (b + 2 * t + c * c) as f64);
/// let y = ln.forward(&x)?;
/// let dx = ln.backward(&Array3::ones(y.raw_dim()))?;
/// assert_eq!(dx.shape(), x.shape());
/// assert_eq!(ln.num_params(), 8); // gamma and beta
/// # Ok::<(), baregpt::Error>(())
/// ```
pub trait Layer<F: Float, X: LayerInput<F> = Array3<F>> {
    /// The layer's type name, used in error messages (for example `"LayerNorm"`).
    fn kind(&self) -> &'static str;

    /// Computes the output and caches what [`backward`](Layer::backward) needs.
    ///
    /// # Errors
    /// A typed error when `x` has the wrong shape or holds out-of-range ids.
    fn forward(&mut self, x: &X) -> Result<Array3<F>>;

    /// Adds this call's parameter gradients into the accumulated ones and returns dL/dx.
    ///
    /// # Errors
    /// [`Error::BackwardBeforeForward`](crate::Error::BackwardBeforeForward) with no cache;
    /// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when `dy` does not have the last
    /// output's shape.
    fn backward(&mut self, dy: &Array3<F>) -> Result<X::Grad>;

    /// Calls `f` with every parameter, named `path.<local name>`.
    fn visit_params(&self, path: &mut ParamPath, f: &mut ParamVisitor<'_, F>);

    /// Calls `f` with every parameter, mutably, named `path.<local name>`.
    fn visit_params_mut(&mut self, path: &mut ParamPath, f: &mut ParamVisitorMut<'_, F>);

    /// Calls `f` with every parameter under its dotted name from this layer down.
    fn for_each_param(&self, f: &mut ParamVisitor<'_, F>) {
        self.visit_params(&mut ParamPath::new(), f);
    }

    /// Calls `f` with every parameter, mutably, under its dotted name from this layer down.
    fn for_each_param_mut(&mut self, f: &mut ParamVisitorMut<'_, F>) {
        self.visit_params_mut(&mut ParamPath::new(), f);
    }

    /// Sets every parameter gradient to zero.
    fn zero_grad(&mut self) {
        self.for_each_param_mut(&mut |_, mut p| fill_zero(&mut p.grad));
    }

    /// The number of scalar parameters.
    fn num_params(&self) -> usize {
        let mut n = 0;
        self.for_each_param(&mut |_, p| n += p.value.len());
        n
    }

    /// The dotted names of all parameters, in visit order.
    fn param_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        self.for_each_param(&mut |name, _| names.push(name.to_owned()));
        names
    }
}
