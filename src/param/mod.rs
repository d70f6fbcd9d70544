//! Parameters (a value and its gradient), the [`Params`] trait that lists them once, and
//! named access to them.
//!
//! Anything that owns parameters implements [`Params`]: a [`Param`] is the leaf, and a layer
//! lists its fields with the [`params!`](crate::params!) macro, which writes both visits
//! (read-only and mutable) from one list. Containers nest their children's names, so a
//! parameter of the second block's attention is reached as `blocks.1.attn.w_q`. The
//! optimizer, clipping, the gradient checker and checkpoints all take `impl Params<F>`;
//! nothing keeps a second list of parameters.
//!
//! ```
//! use baregpt::param::{Param1, Param2, Params};
//! use baregpt::{Float, params};
//!
//! struct Affine<F: Float> {
//!     w: Param2<F>,
//!     b: Option<Param1<F>>,
//! }
//!
//! impl<F: Float> Params<F> for Affine<F> {
//!     params!(F; w, b);
//! }
//!
//! let mut affine = Affine::<f64> {
//!     w: Param2::new(ndarray::Array2::ones((3, 2))),
//!     b: Some(Param1::new(ndarray::Array1::zeros(2))),
//! };
//! assert_eq!(affine.param_names(), ["w", "b"]);
//! assert_eq!(affine.num_params(), 8);
//! affine.param_mut("b").unwrap().value.fill(0.5);
//! assert_eq!(affine.param("b").unwrap().value[[1]], 0.5);
//! ```

mod map;
mod path;

use ndarray::{Array, ArrayViewD, ArrayViewMutD, Dimension};

pub use map::ParamMap;
pub use path::ParamPath;

use crate::kernels::elementwise::fill_zero;
use crate::{Float, Result};

/// A trainable tensor: its value and the gradient accumulated into it by `backward`.
#[derive(Clone, Debug, PartialEq)]
pub struct Param<F, D: Dimension> {
    /// The parameter's current value.
    pub value: Array<F, D>,
    /// dL/dvalue, summed over every `backward` call since the last `zero_grad`.
    pub grad: Array<F, D>,
}

/// A 1-D parameter (a bias, a LayerNorm gain).
pub type Param1<F> = Param<F, ndarray::Ix1>;
/// A 2-D parameter (a weight matrix, an embedding table).
pub type Param2<F> = Param<F, ndarray::Ix2>;

impl<F: Float, D: Dimension> Param<F, D> {
    /// Wraps `value` with a zero gradient of the same shape.
    pub fn new(value: Array<F, D>) -> Self {
        let grad = Array::zeros(value.raw_dim());
        Self { value, grad }
    }

    /// A read-only view of value and gradient, with the dimension erased.
    pub fn view(&self) -> ParamView<'_, F> {
        ParamView {
            value: self.value.view().into_dyn(),
            grad: self.grad.view().into_dyn(),
        }
    }

    /// A mutable view of value and gradient, with the dimension erased.
    pub fn view_mut(&mut self) -> ParamViewMut<'_, F> {
        ParamViewMut {
            value: self.value.view_mut().into_dyn(),
            grad: self.grad.view_mut().into_dyn(),
        }
    }
}

/// A read-only parameter as a visit sees it.
#[derive(Debug)]
pub struct ParamView<'a, F> {
    /// The value.
    pub value: ArrayViewD<'a, F>,
    /// The accumulated gradient (same shape as `value`).
    pub grad: ArrayViewD<'a, F>,
}

/// A mutable parameter as a visit sees it.
#[derive(Debug)]
pub struct ParamViewMut<'a, F> {
    /// The value.
    pub value: ArrayViewMutD<'a, F>,
    /// The accumulated gradient (same shape as `value`).
    pub grad: ArrayViewMutD<'a, F>,
}

/// The callback of a read-only visit: `(dotted name, parameter)`. The view borrows the
/// parameter for `'a`, the lifetime of the visited object, so it may outlive the call.
pub type ParamVisitor<'a, 'f, F> = dyn FnMut(&str, ParamView<'a, F>) + 'f;
/// The callback of a mutable visit: `(dotted name, parameter)`, borrowed for `'a`.
pub type ParamVisitorMut<'a, 'f, F> = dyn FnMut(&str, ParamViewMut<'a, F>) + 'f;

/// Something that owns parameters, each reached under a dotted name.
///
/// Implement it with the [`params!`](crate::params!) macro, which lists the fields once:
/// each field is a [`Param`], anything else that implements `Params` (a layer, a boxed
/// layer), or an `Option` or `Vec` of those. A field named `attn` contributes its
/// parameters as `attn.*`; the elements of a `Vec` field `blocks` as `blocks.0.*`,
/// `blocks.1.*`. The two required methods exist because Rust cannot abstract over `&` and
/// `&mut`; write them by hand only for an unusual layout (see
/// [`Sequential`](crate::layers::Sequential)).
///
/// Every other method is provided: counting, naming, zeroing gradients, named access, and
/// export / all-or-nothing import of every value as a [`ParamMap`].
///
/// `Box<P>` and `&mut P` are `Params` whenever `P` is, so a `Box<dyn Layer<F>>` goes
/// straight to [`Adam::step`](crate::Adam::step), the clipping functions, the checker and
/// checkpoints.
pub trait Params<F: Float> {
    /// Calls `f` with every parameter, named `path.<local name>`, in a fixed order (the
    /// *visit order*).
    fn visit_params<'a>(&'a self, path: &mut ParamPath, f: &mut ParamVisitor<'a, '_, F>);

    /// Calls `f` with every parameter, mutably, in the same order and under the same names
    /// as [`Params::visit_params`].
    fn visit_params_mut<'a>(&'a mut self, path: &mut ParamPath, f: &mut ParamVisitorMut<'a, '_, F>);

    /// Calls `f` with every parameter under its dotted name from this object down.
    fn for_each_param<'a>(&'a self, f: &mut ParamVisitor<'a, '_, F>) {
        self.visit_params(&mut ParamPath::new(), f);
    }

    /// Calls `f` with every parameter, mutably, under its dotted name from this object down.
    fn for_each_param_mut<'a>(&'a mut self, f: &mut ParamVisitorMut<'a, '_, F>) {
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

    /// The parameter named `name` (a dotted path such as `blocks.0.attn.w_q`), if any.
    fn param(&self, name: &str) -> Option<ParamView<'_, F>> {
        let mut found = None;
        self.for_each_param(&mut |n, p| {
            if found.is_none() && n == name {
                found = Some(p);
            }
        });
        found
    }

    /// The parameter named `name`, mutably, if any.
    fn param_mut(&mut self, name: &str) -> Option<ParamViewMut<'_, F>> {
        let mut found = None;
        self.for_each_param_mut(&mut |n, p| {
            if found.is_none() && n == name {
                found = Some(p);
            }
        });
        found
    }

    /// Every parameter's value, copied, under its dotted name in visit order.
    fn export_params(&self) -> ParamMap<F> {
        let mut map = ParamMap::new();
        self.for_each_param(&mut |name, p| {
            map.insert(name, p.value.to_owned());
        });
        map
    }

    /// Sets every parameter's value from `map`, all or nothing.
    ///
    /// `map` must hold exactly this object's parameter names (in any order), each with the
    /// parameter's shape and only finite numbers. Gradients are left alone.
    ///
    /// # Errors
    /// [`Error::ParamMismatch`](crate::Error::ParamMismatch) naming the first problem: a
    /// parameter missing from the map, a name the model does not have, a wrong shape, or a
    /// non-finite value. On error no parameter has changed.
    fn import_params(&mut self, map: &ParamMap<F>) -> Result<()> {
        import(self, map)
    }
}

/// The provided [`Params::import_params`], for an implementation that overrides it to do
/// more (as [`Gpt`](crate::Gpt) does, forgetting its caches).
///
/// # Errors
/// As [`Params::import_params`].
pub fn import<F: Float, P: Params<F> + ?Sized>(model: &mut P, map: &ParamMap<F>) -> Result<()> {
    map::check_import(model, map)?;
    model.for_each_param_mut(&mut |name, p| {
        if let Some(value) = map.get(name) {
            let mut target = p.value;
            target.assign(value);
        }
    });
    Ok(())
}

/// A parameter is the leaf of a visit: it is visited under the path itself.
impl<F: Float, D: Dimension> Params<F> for Param<F, D> {
    fn visit_params<'a>(&'a self, path: &mut ParamPath, f: &mut ParamVisitor<'a, '_, F>) {
        f(path.as_str(), self.view());
    }

    fn visit_params_mut<'a>(
        &'a mut self,
        path: &mut ParamPath,
        f: &mut ParamVisitorMut<'a, '_, F>,
    ) {
        f(path.as_str(), self.view_mut());
    }
}

/// An absent part has no parameters; a present one is visited as itself.
impl<F: Float, P: Params<F>> Params<F> for Option<P> {
    fn visit_params<'a>(&'a self, path: &mut ParamPath, f: &mut ParamVisitor<'a, '_, F>) {
        if let Some(p) = self {
            p.visit_params(path, f);
        }
    }

    fn visit_params_mut<'a>(
        &'a mut self,
        path: &mut ParamPath,
        f: &mut ParamVisitorMut<'a, '_, F>,
    ) {
        if let Some(p) = self {
            p.visit_params_mut(path, f);
        }
    }
}

/// Element `i` is visited under `path.i`.
impl<F: Float, P: Params<F>> Params<F> for Vec<P> {
    fn visit_params<'a>(&'a self, path: &mut ParamPath, f: &mut ParamVisitor<'a, '_, F>) {
        for (i, p) in self.iter().enumerate() {
            path.scoped_index(i, |path| p.visit_params(path, f));
        }
    }

    fn visit_params_mut<'a>(
        &'a mut self,
        path: &mut ParamPath,
        f: &mut ParamVisitorMut<'a, '_, F>,
    ) {
        for (i, p) in self.iter_mut().enumerate() {
            path.scoped_index(i, |path| p.visit_params_mut(path, f));
        }
    }
}

impl<F: Float, P: Params<F> + ?Sized> Params<F> for Box<P> {
    fn visit_params<'a>(&'a self, path: &mut ParamPath, f: &mut ParamVisitor<'a, '_, F>) {
        (**self).visit_params(path, f);
    }

    fn visit_params_mut<'a>(
        &'a mut self,
        path: &mut ParamPath,
        f: &mut ParamVisitorMut<'a, '_, F>,
    ) {
        (**self).visit_params_mut(path, f);
    }
}

impl<F: Float, P: Params<F> + ?Sized> Params<F> for &mut P {
    fn visit_params<'a>(&'a self, path: &mut ParamPath, f: &mut ParamVisitor<'a, '_, F>) {
        (**self).visit_params(path, f);
    }

    fn visit_params_mut<'a>(
        &'a mut self,
        path: &mut ParamPath,
        f: &mut ParamVisitorMut<'a, '_, F>,
    ) {
        (**self).visit_params_mut(path, f);
    }
}

/// Writes both [`Params`] methods from one list of fields.
///
/// `params!(F; a, b, c)` inside `impl<F: Float> Params<F> for MyLayer<F>` visits the fields
/// `a`, `b`, `c` in that order, each under its field name: a [`Param`] field `a` is the
/// parameter `a`, a layer field `b` contributes `b.*`. The first argument names the float
/// type of the impl (usually `F`; `f64` for a layer that is not generic).
///
/// ```
/// use baregpt::param::{Param1, Params};
/// use baregpt::layers::Linear;
/// use baregpt::{Float, params};
///
/// struct Gated<F: Float> {
///     proj: Linear<F>,
///     gate: Param1<F>,
/// }
///
/// impl<F: Float> Params<F> for Gated<F> {
///     params!(F; proj, gate);
/// }
///
/// let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
/// let gated = Gated::<f32> {
///     proj: Linear::new(4, 4, true, &mut rng)?,
///     gate: Param1::new(ndarray::Array1::ones(4)),
/// };
/// assert_eq!(gated.param_names(), ["proj.w", "proj.b", "gate"]);
/// # Ok::<(), baregpt::Error>(())
/// ```
#[macro_export]
macro_rules! params {
    ($float:ty; $($field:ident),* $(,)?) => {
        fn visit_params<'a>(
            &'a self,
            path: &mut $crate::param::ParamPath,
            f: &mut $crate::param::ParamVisitor<'a, '_, $float>,
        ) {
            $(
                path.scoped(stringify!($field), |path| {
                    $crate::param::Params::<$float>::visit_params(&self.$field, path, f)
                });
            )*
            let _ = (path, f);
        }

        fn visit_params_mut<'a>(
            &'a mut self,
            path: &mut $crate::param::ParamPath,
            f: &mut $crate::param::ParamVisitorMut<'a, '_, $float>,
        ) {
            $(
                path.scoped(stringify!($field), |path| {
                    $crate::param::Params::<$float>::visit_params_mut(&mut self.$field, path, f)
                });
            )*
            let _ = (path, f);
        }
    };
}
