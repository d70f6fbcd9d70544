//! The float bound every kernel and layer is generic over.
//!
//! [`Float`] is implemented for `f32` (the training type: fast, half the memory) and `f64`
//! (the checking type: finite differences need its precision).

use std::fmt::{Debug, Display};
use std::iter::Sum;

use ndarray::{LinalgScalar, ScalarOperand};
use num_traits::{FromPrimitive, NumAssign};

/// A floating-point element type usable by every kernel, layer and optimizer in the crate.
///
/// It bundles `num_traits::Float` arithmetic with the ndarray traits the kernels need
/// (matrix products, scalar operands) and a few constants the gradient checker uses.
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

    /// `tanh`, as the GELU kernels evaluate it: for `f64` exactly `f64::tanh`; for `f32` a
    /// branch-free approximation that vectorises, with absolute error below `2e-7`
    /// (see [`tanh_f32`]).
    fn gelu_tanh(self) -> Self;

    /// `exp(self)` for `self ≤ 0`, as the softmax kernels evaluate it: for `f64` exactly
    /// `f64::exp`; for `f32` a branch-free polynomial that vectorises, relative error below
    /// `2e-7`. Inputs below −87 give about `1.6e-38` instead of a subnormal or zero.
    fn exp_nonpositive(self) -> Self;
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

    #[inline]
    fn gelu_tanh(self) -> Self {
        tanh_f32(self)
    }

    #[inline]
    fn exp_nonpositive(self) -> Self {
        exp_nonpositive_f32(self)
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

    #[inline]
    fn gelu_tanh(self) -> Self {
        self.tanh()
    }

    #[inline]
    fn exp_nonpositive(self) -> Self {
        self.exp()
    }
}

/// `exp(x)` for `x ≤ 0` in `f32`, branch-free: `x = k·ln2 + r` with `|r| ≤ ln2/2`, then
/// `2^k · Σ_{n≤7} rⁿ/n!`. Inputs below −87 are clamped (the result underflows to ~0 anyway).
#[inline]
fn exp_nonpositive_f32(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.max(-87.0);
    // Round to nearest by adding and removing 1.5·2²³ (exact for |y| < 2²²), which compiles
    // to two additions instead of a libm call.
    const ROUNDER: f32 = 12_582_912.0;
    let k = (x * std::f32::consts::LOG2_E + ROUNDER) - ROUNDER;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    // Taylor series of exp(r) to degree 7, in Horner form.
    let mut p = 1.0 / 5040.0;
    for coefficient in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p * r + coefficient;
    }
    // 2^k from the bits of k + 127 + 2²³: that float's low mantissa bits hold the integer
    // k + 127 ∈ [1, 127], which shifted into the exponent field is 2^k. No float-to-int
    // conversion, so the loop stays in vector registers.
    const EXPONENT_MAGIC: f32 = 127.0 + 8_388_608.0;
    let scale = f32::from_bits((k + EXPONENT_MAGIC).to_bits() << 23);
    p * scale
}

/// `tanh(x)` in `f32` as `sign(x)·(1 − e)/(1 + e)` with `e = exp(−2|x|)`: absolute error
/// below `2e-7` for every finite `x`, and branch-free so loops over it vectorise.
#[inline]
pub fn tanh_f32(x: f32) -> f32 {
    let e = exp_nonpositive_f32(-2.0 * x.abs());
    ((1.0 - e) / (1.0 + e)).copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_tanh_is_accurate_everywhere() {
        let mut worst = 0.0f64;
        let mut x = -20.0f32;
        while x <= 20.0 {
            let err = (f64::from(tanh_f32(x)) - f64::from(x).tanh()).abs();
            worst = worst.max(err);
            x += 0.000_37;
        }
        assert!(worst < 2e-7, "worst absolute error {worst:e}");
        assert_eq!(tanh_f32(0.0), 0.0);
        assert_eq!(tanh_f32(100.0), 1.0);
        assert_eq!(tanh_f32(-100.0), -1.0);
    }

    #[test]
    fn fast_exp_is_accurate_on_its_domain() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let exact = f64::from(x).exp();
            worst = worst.max((f64::from(exp_nonpositive_f32(x)) - exact).abs() / exact);
            x += 0.000_71;
        }
        assert!(worst < 2e-7, "worst relative error {worst:e}");
        assert_eq!(exp_nonpositive_f32(0.0), 1.0);
    }
}
