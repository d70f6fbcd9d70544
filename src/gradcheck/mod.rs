//! The finite-difference gradient checker: proves a backward agrees with its forward, and
//! that it keeps the backward's contract.
//!
//! * [`check_layer`] checks any [`Layer`](crate::Layer), including your own and id-input
//!   layers such as [`Embedding`](crate::layers::Embedding) (then only parameters are
//!   checked), reporting per named tensor.
//! * [`check_fn`] checks any function of several float arrays returning several arrays,
//!   given its backward: every kernel of [`crate::kernels`]. It reports per (output, input)
//!   pair.
//! * [`check_layer_f32`] checks an `f32` backward, as it runs in training, against finite
//!   differences of the same layer in `f64`: it catches a 1% error that `f32` finite
//!   differences cannot.
//!
//! **How.** Each output is reduced to a scalar by a fixed random projection,
//! `f = Σ y ⊙ R` with `R ~ N(0, 1)` drawn from [`GradCheckOptions::seed`], so that errors in
//! different elements cannot cancel. The analytic gradient is the backward of `R`. The
//! numeric one is a central difference at two step sizes `h = ε·max(1, |θ|)` and `h/2`,
//! Richardson-extrapolated, with an estimate of its own error (their difference plus the
//! round-off of the objective). An element passes when
//! `|analytic − numeric| ≤ atol + rtol·max(|analytic|, |numeric|)` (widened by the error
//! estimate, at most doubled). Where the numeric derivative's own error exceeds the tolerance
//! (a kink, or curvature too large for the step) and explains the difference, the element is
//! counted as **unreliable**, with its index, rather than passed or failed.
//!
//! **The contract.** Backward is run again without zeroing (it must *add* the same amount:
//! an `=` instead of `+=` is reported as [`ContractKind::Overwrites`]), with a zero cotangent
//! (it must add nothing), with `2·R` (twice the gradients) and, by default, from zero a second
//! time (the same gradients, bit for bit unless
//! [`nondeterminism_tol`](GradCheckOptions::nondeterminism_tol) allows a difference).
//!
//! **Dropout.** A random forward has no derivative to check, so the layer checkers set
//! [`DropoutMode::Hold`](crate::layer::DropoutMode::Hold) first: every forward of the check
//! uses one mask, and the layer is one fixed function whose backward must multiply by that
//! same mask. They leave the layer in `DropoutMode::Train`.
//!
//! **Fast mode** ([`Mode::Fast`]) compares random directional derivatives per tensor, and when
//! one fails, locates the failing elements with a full check of that tensor alone.
//!
//! The result is a [`GradCheckReport`], never a panic: per tensor (or pair), the largest
//! absolute error, the largest relative error beyond the numeric noise, the worst element
//! with both values and the error estimate, the failure and unreliable counts, a missing
//! gradient flag and the contract violations. Everything the user owns is restored when the
//! check returns; a layer's cache holds the last perturbed forward. `docs/gradcheck.md`
//! explains how to read a report and compares the checker with PyTorch's and JAX's.
//!
//! ```
//! use baregpt::{gradcheck, layers::LayerNorm};
//! use ndarray::Array3;
//!
//! let mut ln = LayerNorm::<f64>::new(4)?;
//! let x = Array3::from_shape_fn((2, 3, 4), |(b, t, c)| ((b * 12 + t * 4 + c) as f64).sin());
//! let report = gradcheck::check_layer(&mut ln, &x, &Default::default())?;
//! assert!(report.passed(), "{report}");
//! assert!(report.max_rel_error() < 1e-6, "{report}");
//! # Ok::<(), baregpt::Error>(())
//! ```

mod contract;
mod f32_check;
mod function;
mod layer;
mod numeric;
mod options;
mod report;
mod sampling;

pub use f32_check::{WidenInput, check_layer_f32};
pub use function::{as_dim, as_dim_mut, check_fn};
pub use layer::check_layer;
pub use options::{GradCheckOptions, MAX_DIRECTIONS, Mode, f32_defaults};
pub use report::{ContractKind, ContractViolation, GradCheckReport, TensorReport, WorstElement};
