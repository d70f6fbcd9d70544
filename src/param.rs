//! Parameters (a value and its gradient) and the visitor that reaches them by dotted name.
//!
//! Every layer owns its parameters as [`Param`]s and exposes them through
//! [`Layer::visit_params`](crate::Layer::visit_params) and
//! [`Layer::visit_params_mut`](crate::Layer::visit_params_mut). Containers prefix the names
//! of their children with [`ParamPath::scoped`], so a parameter of the second block's
//! attention is reached as `blocks.1.attn.w_q`. The optimizer, the gradient checker and
//! checkpoints all walk this one visitor; nothing keeps a second list of parameters.

use std::fmt::Write as _;

use ndarray::{Array, ArrayViewD, ArrayViewMutD, Dimension};

use crate::Float;

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

    /// Calls `f` with this parameter under the name `path.name`.
    pub fn visit(&self, name: &str, path: &mut ParamPath, f: &mut ParamVisitor<'_, F>) {
        path.scoped(name, |path| f(path.as_str(), self.view()));
    }

    /// Calls `f` with this parameter, mutably, under the name `path.name`.
    pub fn visit_mut(&mut self, name: &str, path: &mut ParamPath, f: &mut ParamVisitorMut<'_, F>) {
        path.scoped(name, |path| f(path.as_str(), self.view_mut()));
    }
}

/// A read-only parameter as the visitor sees it.
#[derive(Debug)]
pub struct ParamView<'a, F> {
    /// The value.
    pub value: ArrayViewD<'a, F>,
    /// The accumulated gradient (same shape as `value`).
    pub grad: ArrayViewD<'a, F>,
}

/// A mutable parameter as the visitor sees it.
#[derive(Debug)]
pub struct ParamViewMut<'a, F> {
    /// The value.
    pub value: ArrayViewMutD<'a, F>,
    /// The accumulated gradient (same shape as `value`).
    pub grad: ArrayViewMutD<'a, F>,
}

/// The callback of a read-only parameter visit: `(dotted name, parameter)`.
pub type ParamVisitor<'f, F> = dyn FnMut(&str, ParamView<'_, F>) + 'f;
/// The callback of a mutable parameter visit: `(dotted name, parameter)`.
pub type ParamVisitorMut<'f, F> = dyn FnMut(&str, ParamViewMut<'_, F>) + 'f;

/// The dotted name under construction while a visit descends into nested layers.
///
/// It is one reusable string buffer: descending pushes a segment, returning pops it, so a
/// visit allocates nothing once the buffer has grown to the longest name.
#[derive(Clone, Debug, Default)]
pub struct ParamPath {
    buf: String,
}

impl ParamPath {
    /// An empty path (the root of a visit).
    pub fn new() -> Self {
        Self::default()
    }

    /// A path that starts with `prefix` (for visiting a layer that lives inside something
    /// else).
    pub fn with_prefix(prefix: &str) -> Self {
        Self {
            buf: prefix.to_owned(),
        }
    }

    /// The dotted name so far.
    pub fn as_str(&self) -> &str {
        &self.buf
    }

    /// Runs `f` with `segment` appended (after a `.` unless the path is empty), then removes it.
    pub fn scoped<R>(&mut self, segment: &str, f: impl FnOnce(&mut Self) -> R) -> R {
        let len = self.buf.len();
        if len > 0 {
            self.buf.push('.');
        }
        self.buf.push_str(segment);
        let result = f(self);
        self.buf.truncate(len);
        result
    }

    /// Like [`ParamPath::scoped`] with a numeric segment (`blocks.3`).
    pub fn scoped_index<R>(&mut self, index: usize, f: impl FnOnce(&mut Self) -> R) -> R {
        let len = self.buf.len();
        if len > 0 {
            self.buf.push('.');
        }
        // Writing into a String cannot fail.
        let _ = write!(self.buf, "{index}");
        let result = f(self);
        self.buf.truncate(len);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoped_paths_nest_and_unwind() {
        let mut path = ParamPath::new();
        let inner = path.scoped("blocks", |p| {
            p.scoped_index(3, |p| p.scoped("w_q", |p| p.as_str().to_owned()))
        });
        assert_eq!(inner, "blocks.3.w_q");
        assert_eq!(path.as_str(), "");
    }
}
