//! `tanh` and `exp` as the GELU, softmax and cross-entropy kernels evaluate them: for `f64`
//! exactly the library functions; for `f32` branch-free approximations that vectorise.
//!
//! [`FastMath`] is a supertrait of [`Float`](crate::Float), so every kernel generic over
//! `Float` can call [`gelu_tanh`] and [`exp_nonpositive`]. This module is private to the
//! crate, so code outside it cannot name `FastMath` (and so cannot implement `Float` for
//! another type: `Float` is sealed), and cannot call `FastMath`'s methods through a `Float`
//! bound either: they take a [`Private`] token that only this module can make.

/// The fast-math operations of a float type, implemented for `f32` and `f64` only. The crate
/// calls them through [`gelu_tanh`] and [`exp_nonpositive`].
///
/// Code outside the crate cannot call them, not even through a `Float` bound:
///
/// ```compile_fail,E0061
/// fn tanh<F: baregpt::Float>(x: F) -> F {
///     x.gelu_tanh()
/// }
/// ```
pub trait FastMath {
    /// [`gelu_tanh`] for this type.
    fn gelu_tanh(self, _: Private) -> Self;

    /// [`exp_nonpositive`] for this type.
    fn exp_nonpositive(self, _: Private) -> Self;
}

/// The argument that keeps [`FastMath`]'s methods inside the crate: its field is private to
/// this module, so only this module's functions can make one.
#[derive(Clone, Copy, Debug)]
pub struct Private(());

/// `tanh(x)`, as the GELU kernels evaluate it: for `f64` exactly `f64::tanh`; for `f32` a
/// branch-free approximation that vectorises, with absolute error below `2e-7`
/// (see [`tanh_f32`]).
#[inline]
pub(crate) fn gelu_tanh<F: FastMath>(x: F) -> F {
    x.gelu_tanh(Private(()))
}

/// `exp(x)` for `x ≤ 0`, as the softmax and cross-entropy kernels evaluate it: for `f64`
/// exactly `f64::exp`; for `f32` a branch-free polynomial that vectorises, relative error
/// below `2e-7`. Inputs below −87 give about `1.6e-38` instead of a subnormal or zero.
#[inline]
pub(crate) fn exp_nonpositive<F: FastMath>(x: F) -> F {
    x.exp_nonpositive(Private(()))
}

impl FastMath for f32 {
    #[inline]
    fn gelu_tanh(self, _: Private) -> Self {
        tanh_f32(self)
    }

    #[inline]
    fn exp_nonpositive(self, _: Private) -> Self {
        exp_nonpositive_f32(self)
    }
}

impl FastMath for f64 {
    #[inline]
    fn gelu_tanh(self, _: Private) -> Self {
        self.tanh()
    }

    #[inline]
    fn exp_nonpositive(self, _: Private) -> Self {
        self.exp()
    }
}

/// `exp(x)` for `x ≤ 0` in `f32`, branch-free: `x = k·ln2 + r` with `|r| ≤ ln2/2`, then
/// `2^k · Σ_{n≤7} rⁿ/n!`. Inputs below −87 are clamped (the result underflows to ~0 anyway).
/// A NaN input gives NaN, as `f64::exp` does (the clamp is a comparison, not `f32::max`, which
/// would turn NaN into −87 and a NaN logit into a finite loss).
#[inline]
fn exp_nonpositive_f32(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = if x < -87.0 { -87.0 } else { x };
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
pub(crate) fn tanh_f32(x: f32) -> f32 {
    let e = exp_nonpositive_f32(-2.0 * x.abs());
    ((1.0 - e) / (1.0 + e)).copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nan_stays_nan_as_in_f64() {
        assert!(exp_nonpositive_f32(f32::NAN).is_nan());
        assert!(tanh_f32(f32::NAN).is_nan());
        assert!(f64::NAN.exp().is_nan());
        assert_eq!(exp_nonpositive_f32(0.0), 1.0);
    }

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

    #[test]
    fn f32_takes_the_fast_path_and_f64_the_library_functions() {
        for x in [-3.5f64, -0.25, 0.0, 0.75, 9.0] {
            assert_eq!(gelu_tanh(x as f32).to_bits(), tanh_f32(x as f32).to_bits());
            assert_eq!(gelu_tanh(x).to_bits(), f64::tanh(x).to_bits());
            let x = -x.abs();
            let e = exp_nonpositive(x as f32);
            assert_eq!(e.to_bits(), exp_nonpositive_f32(x as f32).to_bits());
            assert_eq!(exp_nonpositive(x).to_bits(), f64::exp(x).to_bits());
        }
    }
}
