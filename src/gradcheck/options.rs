//! What a check does and how strict it is: [`GradCheckOptions`], [`Mode`], and their validation.

use crate::{Error, Float, Result};

/// How the numeric gradient is sampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Perturb every element: an exact per-element comparison, four forwards per element
    /// (two step sizes, for the error estimate).
    Full,
    /// PyTorch's fast mode: per tensor, compare `vᵀ·J·u` (the projected output's directional
    /// derivative along `directions` random unit directions `u`) with the analytic
    /// `⟨g, u⟩`; four forwards per direction whatever the tensor's size. When a tensor fails,
    /// the checker runs [`Mode::Full`] on that tensor alone to name the failing elements
    /// (the report marks it [`localized`](crate::gradcheck::TensorReport::localized)).
    Fast {
        /// Random directions per tensor (`1..=`[`MAX_DIRECTIONS`]).
        directions: usize,
    },
}

/// The most random directions [`Mode::Fast`] accepts per tensor: more than this is a
/// mistake (use [`Mode::Full`]).
pub const MAX_DIRECTIONS: usize = 4096;

/// Options of every check; `None` tolerances take the defaults of the check (for
/// [`check_layer`](super::check_layer) and [`check_fn`](super::check_fn) the float type's
/// [`Float::GRADCHECK_EPS`], [`Float::GRADCHECK_ATOL`], [`Float::GRADCHECK_RTOL`]; for
/// [`check_layer_f32`](super::check_layer_f32) the constants in [`f32_defaults`]).
///
/// Options that cannot check anything are refused with [`Error::InvalidConfig`]: a step
/// `eps` that is not finite and positive, tolerances that are negative or NaN, and zero (or
/// more than [`MAX_DIRECTIONS`]) fast-mode directions.
#[derive(Clone, Debug, PartialEq)]
pub struct GradCheckOptions {
    /// Finite-difference step ε, relative to the magnitude of the value perturbed: an element
    /// `θ` is moved by `ε·max(1, |θ|)` (and by half that, for the error estimate).
    pub eps: Option<f64>,
    /// Absolute tolerance.
    pub atol: Option<f64>,
    /// Relative tolerance (relative to the larger of the two values).
    pub rtol: Option<f64>,
    /// Full or fast sampling.
    pub mode: Mode,
    /// Seed of the projection `R` and of random directions.
    pub seed: u64,
    /// Also run forward and backward a second time from zeroed gradients and require the same
    /// gradients (within [`nondeterminism_tol`](Self::nondeterminism_tol)).
    pub check_determinism: bool,
    /// The largest absolute difference allowed between two backward passes that should agree:
    /// the determinism check, and the accumulation, zero-cotangent and linearity checks. `0`
    /// (the default) requires bit-identical repeats, as PyTorch's `nondet_tol = 0`.
    pub nondeterminism_tol: f64,
}

impl Default for GradCheckOptions {
    fn default() -> Self {
        Self {
            eps: None,
            atol: None,
            rtol: None,
            mode: Mode::Full,
            seed: 0x5EED,
            check_determinism: true,
            nondeterminism_tol: 0.0,
        }
    }
}

impl GradCheckOptions {
    /// The defaults with [`Mode::Fast`] and `directions` random directions per tensor.
    pub fn fast(directions: usize) -> Self {
        Self {
            mode: Mode::Fast { directions },
            ..Self::default()
        }
    }

    /// The resolved numbers for a check whose defaults are `(eps, atol, rtol)` and whose
    /// finite differences are evaluated in a type of unit round-off `roundoff`.
    pub(super) fn resolve(&self, defaults: (f64, f64, f64), roundoff: f64) -> Result<Resolved> {
        let invalid = |reason: String| Error::InvalidConfig {
            layer: "gradcheck",
            reason,
        };
        let eps = self.eps.unwrap_or(defaults.0);
        if !(eps.is_finite() && eps > 0.0) {
            return Err(invalid(format!(
                "eps must be finite and positive, got {eps}"
            )));
        }
        let atol = self.atol.unwrap_or(defaults.1);
        let rtol = self.rtol.unwrap_or(defaults.2);
        for (what, v) in [
            ("atol", atol),
            ("rtol", rtol),
            ("nondeterminism_tol", self.nondeterminism_tol),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(invalid(format!(
                    "{what} must be finite and non-negative, got {v}"
                )));
            }
        }
        if atol == 0.0 && rtol == 0.0 {
            return Err(invalid(
                "atol and rtol are both zero: no finite difference can pass".into(),
            ));
        }
        if let Mode::Fast { directions } = self.mode {
            if directions == 0 {
                return Err(invalid(
                    "Mode::Fast with 0 directions would compare nothing".into(),
                ));
            }
            if directions > MAX_DIRECTIONS {
                return Err(invalid(format!(
                    "Mode::Fast with {directions} directions (at most {MAX_DIRECTIONS}; use Mode::Full)"
                )));
            }
        }
        Ok(Resolved {
            eps,
            atol,
            rtol,
            mode: self.mode,
            seed: self.seed,
            check_determinism: self.check_determinism,
            nondet_tol: self.nondeterminism_tol,
            roundoff,
        })
    }

    /// [`resolve`](Self::resolve) with `F`'s defaults, differences evaluated in `F`.
    pub(super) fn resolve_for<F: Float>(&self) -> Result<Resolved> {
        self.resolve(
            (F::GRADCHECK_EPS, F::GRADCHECK_ATOL, F::GRADCHECK_RTOL),
            unit_roundoff::<F>(),
        )
    }
}

/// The defaults of [`check_layer_f32`](super::check_layer_f32): an `f32` backward against
/// finite differences in `f64`.
///
/// `atol` and `rtol` are set by the `f32` backward's own round-off (about `1e-7` relative,
/// more where terms cancel), not by the finite differences, which are accurate to about
/// `1e-9` in `f64`: a correct `f32` backward stays well inside them, while a 1% error in any
/// gradient larger than about `1e-3` exceeds them.
pub mod f32_defaults {
    /// Step of the `f64` finite differences.
    pub const EPS: f64 = 1e-6;
    /// Absolute tolerance on an `f32` gradient element.
    pub const ATOL: f64 = 1e-5;
    /// Relative tolerance on an `f32` gradient element.
    pub const RTOL: f64 = 1e-3;
}

/// `F`'s unit round-off (half the machine epsilon).
pub(super) fn unit_roundoff<F: Float>() -> f64 {
    F::epsilon().to_f64_exact() / 2.0
}

/// Options with every default filled in and validated.
#[derive(Clone, Copy, Debug)]
pub(super) struct Resolved {
    pub eps: f64,
    pub atol: f64,
    pub rtol: f64,
    pub mode: Mode,
    pub seed: u64,
    pub check_determinism: bool,
    pub nondet_tol: f64,
    /// Unit round-off of the type the objective is evaluated in.
    pub roundoff: f64,
}
