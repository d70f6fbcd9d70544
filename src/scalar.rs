//! The float bound every kernel and layer is generic over.
//!
//! [`Float`] is implemented for `f32` (the training type: fast, half the memory) and `f64`
//! (the checking type: finite differences need its precision). It is sealed: no other type
//! can implement it.

use std::fmt::{Debug, Display};
use std::iter::Sum;

use ndarray::{LinalgScalar, ScalarOperand};
use num_traits::{FromPrimitive, NumAssign};

use crate::kernels::fast_math::FastMath;

/// A floating-point element type usable by every kernel, layer and optimizer in the crate.
///
/// It bundles `num_traits::Float` arithmetic with the ndarray traits the kernels need
/// (matrix products, scalar operands) and a few constants the gradient checker uses.
///
/// `Float` is sealed: it is implemented for `f32` and `f64`, and cannot be implemented for
/// other types, because it also requires a crate-private trait that carries the kernels'
/// fast `tanh` and `exp` (vectorisable approximations for `f32`, the exact library functions
/// for `f64`).
pub trait Float:
    num_traits::Float
    + NumAssign
    + FromPrimitive
    + LinalgScalar
    + ScalarOperand
    + Sum
    + Default
    + Debug
    + Display
    + Send
    + Sync
    + 'static
    + FastMath
{
    /// The type's name as it appears in checkpoints and messages (`"f32"` or `"f64"`).
    const NAME: &'static str;
    /// Default finite-difference step for [`crate::gradcheck`].
    const GRADCHECK_EPS: f64;
    /// Default absolute tolerance for [`crate::gradcheck`].
    const GRADCHECK_ATOL: f64;
    /// Default relative tolerance for [`crate::gradcheck`].
    const GRADCHECK_RTOL: f64;

    /// Converts an `f64` constant to this type (rounding to nearest for `f32`).
    fn of(x: f64) -> Self;

    /// Converts this value to `f64` exactly.
    fn to_f64_exact(self) -> f64;
}

impl Float for f32 {
    const NAME: &'static str = "f32";
    const GRADCHECK_EPS: f64 = 1e-2;
    const GRADCHECK_ATOL: f64 = 1e-2;
    const GRADCHECK_RTOL: f64 = 5e-2;

    #[inline]
    fn of(x: f64) -> Self {
        x as f32
    }

    #[inline]
    fn to_f64_exact(self) -> f64 {
        f64::from(self)
    }
}

impl Float for f64 {
    const NAME: &'static str = "f64";
    const GRADCHECK_EPS: f64 = 1e-6;
    const GRADCHECK_ATOL: f64 = 1e-7;
    const GRADCHECK_RTOL: f64 = 1e-5;

    #[inline]
    fn of(x: f64) -> Self {
        x
    }

    #[inline]
    fn to_f64_exact(self) -> f64 {
        self
    }
}
