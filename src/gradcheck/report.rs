//! What a check found: [`GradCheckReport`], one [`TensorReport`] per tensor (or per
//! (output, input) pair of a function), contract violations, and how they read.

use std::fmt;

use ndarray::ArrayViewD;

use super::numeric::Estimate;
use super::options::{Mode, Resolved};

/// The worst element of a tensor: where the error was largest against its tolerance.
#[derive(Clone, Debug, PartialEq)]
pub struct WorstElement {
    /// The element's index (in [`Mode::Fast`], `[direction]`).
    pub index: Vec<usize>,
    /// The backward's value.
    pub analytic: f64,
    /// The finite-difference value (Richardson-extrapolated).
    pub numeric: f64,
    /// The estimated error of `numeric` itself.
    pub error_estimate: f64,
}

/// Which part of the backward's contract a tensor breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContractKind {
    /// A second backward without zeroing did not add the same amount again: the backward
    /// assigns (`=`) or otherwise fails to add (`+=`) into the gradient.
    Overwrites,
    /// A backward with an all-zero cotangent changed the gradient (or returned a non-zero
    /// input gradient).
    ZeroCotangentAdds,
    /// Backward of `2·dy` did not give twice the gradient of `dy`.
    NotLinear,
    /// Two identical backward passes from zeroed gradients differ by more than
    /// [`GradCheckOptions::nondeterminism_tol`](super::GradCheckOptions::nondeterminism_tol).
    NotDeterministic,
}

impl ContractKind {
    /// The short status shown in a report line.
    pub fn label(self) -> &'static str {
        match self {
            Self::Overwrites => "OVERWRITES",
            Self::ZeroCotangentAdds => "ZERO DY ADDS",
            Self::NotLinear => "NOT LINEAR",
            Self::NotDeterministic => "NOT DETERMINISTIC",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Overwrites => {
                "a second backward without zero_grad did not add the same amount (`=` instead of `+=`?)"
            }
            Self::ZeroCotangentAdds => "backward of a zero dy changed the gradient",
            Self::NotLinear => "backward of 2·dy is not twice backward of dy",
            Self::NotDeterministic => "two identical backward passes disagree",
        }
    }
}

/// One broken part of the backward's contract, at the element where it shows most.
#[derive(Clone, Debug, PartialEq)]
pub struct ContractViolation {
    /// What is broken.
    pub kind: ContractKind,
    /// The element's index.
    pub index: Vec<usize>,
    /// The value found there.
    pub actual: f64,
    /// The value the contract requires.
    pub expected: f64,
}

/// The comparison for one named tensor (`"input"` or a dotted parameter name), or for one
/// (output, input) pair of a function.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorReport {
    /// `"input"`, the parameter's dotted name, or the function input's name.
    pub name: String,
    /// For a function check, the output whose projection was differentiated.
    pub output: Option<String>,
    /// The tensor's shape.
    pub shape: Vec<usize>,
    /// Elements (or, in fast mode, directions) compared.
    pub checked: usize,
    /// How many differ by more than the tolerance (beyond the numeric error estimate).
    pub failed: usize,
    /// How many could not be judged: the numeric derivative's own estimated error exceeds the
    /// tolerance and explains the difference (a kink, or curvature too large for the step).
    /// Counted apart, neither passed nor failed.
    pub unreliable: usize,
    /// The index of the first unreliable element.
    pub first_unreliable: Option<Vec<usize>>,
    /// Largest `|analytic − numeric|` over judged elements.
    pub max_abs_error: f64,
    /// Largest `max(0, |analytic − numeric| − error estimate) / max(|analytic|, |numeric|)`
    /// over judged elements above their noise floor: the part of the discrepancy that the
    /// numeric derivative's own error cannot explain, so a correct backward reports about 0.
    pub max_rel_error: f64,
    /// Largest error estimate of a numeric value (over judged elements).
    pub max_error_estimate: f64,
    /// The element with the largest error relative to its tolerance.
    pub worst: Option<WorstElement>,
    /// The analytic gradient is exactly zero while the numeric one is not: backward never
    /// wrote this gradient.
    pub missing_gradient: bool,
    /// Fast mode failed on this tensor, and these figures come from a full check of it alone.
    pub localized: bool,
    /// Broken parts of the backward's contract (accumulate, zero cotangent, linearity,
    /// determinism), checked on this tensor's gradient.
    pub contract: Vec<ContractViolation>,
}

impl TensorReport {
    /// Whether every judged element is within tolerance and the contract holds.
    /// Unreliable elements do not fail a tensor; see [`fully_judged`](Self::fully_judged).
    pub fn passed(&self) -> bool {
        self.failed == 0 && !self.missing_gradient && self.contract.is_empty()
    }

    /// Whether every element could be judged (none unreliable).
    pub fn fully_judged(&self) -> bool {
        self.unreliable == 0
    }

    /// `name`, or `∂output/∂name` for a function's pair.
    pub fn label(&self) -> String {
        match &self.output {
            Some(o) => format!("∂{o}/∂{}", self.name),
            None => self.name.clone(),
        }
    }

    /// The violation of `kind`, if any.
    pub fn violation(&self, kind: ContractKind) -> Option<&ContractViolation> {
        self.contract.iter().find(|v| v.kind == kind)
    }

    fn status(&self) -> String {
        if self.missing_gradient {
            "MISSING GRADIENT".into()
        } else if self.failed > 0 {
            format!("FAILED {}/{}", self.failed, self.checked)
        } else if let Some(v) = self.contract.first() {
            v.kind.label().into()
        } else {
            "ok".into()
        }
    }
}

/// The result of a check.
#[derive(Clone, Debug, PartialEq)]
pub struct GradCheckReport {
    /// One entry per checked tensor: the input first (if differentiable), then the parameters
    /// in visit order; for a function, one per (output, input) pair, output-major.
    pub tensors: Vec<TensorReport>,
    /// `Some(false)` when two identical backward passes gave different gradients.
    pub deterministic: Option<bool>,
    /// The sampling used.
    pub mode: Mode,
    /// What was compared with what: `"f64"`, `"f32"`, or `"f32 backward against f64 finite
    /// differences"`.
    pub arithmetic: String,
    /// Finite-difference step ε used (relative to `max(1, |θ|)`).
    pub eps: f64,
    /// Absolute tolerance used.
    pub atol: f64,
    /// Relative tolerance used.
    pub rtol: f64,
    /// Forward evaluations made by the check (finite differences, localisation and the
    /// analytic passes).
    pub forward_evals: usize,
}

impl GradCheckReport {
    pub(super) fn new(tol: &Resolved, arithmetic: &str) -> Self {
        Self {
            tensors: Vec::new(),
            deterministic: None,
            mode: tol.mode,
            arithmetic: arithmetic.into(),
            eps: tol.eps,
            atol: tol.atol,
            rtol: tol.rtol,
            forward_evals: 0,
        }
    }

    /// Whether every tensor passed and (if checked) the backward is deterministic.
    /// Unreliable elements do not fail a check; see [`unreliable`](Self::unreliable).
    pub fn passed(&self) -> bool {
        self.tensors.iter().all(TensorReport::passed) && self.deterministic != Some(false)
    }

    /// The tensors (or pairs) that failed.
    pub fn failures(&self) -> impl Iterator<Item = &TensorReport> {
        self.tensors.iter().filter(|t| !t.passed())
    }

    /// The tensor report named `name` (for a function, the first pair with input `name`).
    pub fn tensor(&self, name: &str) -> Option<&TensorReport> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The report of a function's `(output, input)` pair.
    pub fn pair(&self, output: &str, input: &str) -> Option<&TensorReport> {
        self.tensors
            .iter()
            .find(|t| t.name == input && t.output.as_deref() == Some(output))
    }

    /// Elements that could not be judged, over all tensors.
    pub fn unreliable(&self) -> usize {
        self.tensors.iter().map(|t| t.unreliable).sum()
    }

    /// The largest relative error over all tensors (beyond the numeric error estimates).
    pub fn max_rel_error(&self) -> f64 {
        self.tensors
            .iter()
            .map(|t| t.max_rel_error)
            .fold(0.0, f64::max)
    }

    /// The largest absolute error over all tensors.
    pub fn max_abs_error(&self) -> f64 {
        self.tensors
            .iter()
            .map(|t| t.max_abs_error)
            .fold(0.0, f64::max)
    }
}

impl fmt::Display for GradCheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.passed() { "passed" } else { "FAILED" };
        let mode = match self.mode {
            Mode::Full => "full".to_string(),
            Mode::Fast { directions } => format!("fast, {directions} directions"),
        };
        write!(
            f,
            "gradcheck {verdict} ({}, {mode}; eps {:e}, atol {:e}, rtol {:e}; {} forward evaluations)",
            self.arithmetic, self.eps, self.atol, self.rtol, self.forward_evals
        )?;
        let unreliable = self.unreliable();
        if unreliable > 0 {
            write!(f, "; {unreliable} elements unreliable")?;
        }
        writeln!(f)?;
        if self.deterministic == Some(false) {
            writeln!(
                f,
                "  backward is not deterministic: two identical passes gave different gradients"
            )?;
        }
        for t in &self.tensors {
            write!(
                f,
                "  {:<28} {:<16} {:<18} max abs {:.2e}  max rel {:.2e}  est {:.1e}",
                t.label(),
                format!("{:?}", t.shape),
                t.status(),
                t.max_abs_error,
                t.max_rel_error,
                t.max_error_estimate,
            )?;
            if let (true, Some(w)) = (t.failed > 0 || t.missing_gradient, &t.worst) {
                write!(
                    f,
                    "  worst at {:?}: analytic {:.6e}, numeric {:.6e} (± {:.1e})",
                    w.index, w.analytic, w.numeric, w.error_estimate
                )?;
            }
            if t.localized {
                write!(f, "  (fast mode failed; located by a full check)")?;
            }
            if let Some(i) = &t.first_unreliable {
                write!(f, "  {} unreliable, first at {i:?}", t.unreliable)?;
            }
            writeln!(f)?;
            for v in &t.contract {
                writeln!(
                    f,
                    "      {}: {} — at {:?}: {:.6e}, expected {:.6e} (off by {:.1e})",
                    v.kind.label(),
                    v.kind.describe(),
                    v.index,
                    v.actual,
                    v.expected,
                    (v.actual - v.expected).abs()
                )?;
            }
        }
        Ok(())
    }
}

/// How one compared element came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Ok,
    Unreliable,
    Failed,
}

/// Judges `analytic` against a numeric estimate.
///
/// The tolerance `atol + rtol·max(|a|, |n|)` is widened by the numeric error estimate (at most
/// doubled). Where the estimate itself exceeds the tolerance, a difference the estimate
/// explains (within three times it) is unreliable rather than failed; so is an element whose
/// numeric derivative could not be computed (a non-finite forward next to it). A non-finite
/// analytic value always fails.
fn judge(a: f64, n: &Estimate, atol: f64, rtol: f64) -> (Verdict, f64) {
    let diff = (a - n.value).abs();
    let tol = atol + rtol * a.abs().max(n.value.abs());
    let verdict = if !a.is_finite() {
        Verdict::Failed
    } else if !n.value.is_finite() || n.error.is_infinite() {
        // The forward is not finite next to θ, or the step is below θ's resolution.
        Verdict::Unreliable
    } else if diff <= tol + n.error.min(tol) {
        Verdict::Ok
    } else if n.error > tol && diff <= tol + 3.0 * n.error {
        Verdict::Unreliable
    } else {
        Verdict::Failed
    };
    (
        verdict,
        if diff.is_nan() {
            f64::INFINITY
        } else {
            diff / tol
        },
    )
}

/// Builds a [`TensorReport`] from `(index, analytic, numeric)` triples.
pub(super) fn compare(
    name: &str,
    output: Option<&str>,
    analytic: ArrayViewD<'_, f64>,
    numeric: impl Iterator<Item = (Vec<usize>, f64, Estimate)>,
    tol: &Resolved,
) -> TensorReport {
    let mut report = TensorReport {
        name: name.to_owned(),
        output: output.map(str::to_owned),
        shape: analytic.shape().to_vec(),
        checked: 0,
        failed: 0,
        unreliable: 0,
        first_unreliable: None,
        max_abs_error: 0.0,
        max_rel_error: 0.0,
        max_error_estimate: 0.0,
        worst: None,
        missing_gradient: false,
        localized: false,
        contract: Vec::new(),
    };
    let mut worst_ratio = -1.0;
    let mut numeric_nonzero = false;
    for (index, a, n) in numeric {
        report.checked += 1;
        let (verdict, ratio) = judge(a, &n, tol.atol, tol.rtol);
        numeric_nonzero |= n.value.abs() > tol.atol + n.error;
        match verdict {
            Verdict::Unreliable => {
                report.unreliable += 1;
                if report.first_unreliable.is_none() {
                    report.first_unreliable = Some(index);
                }
                continue;
            }
            Verdict::Failed => report.failed += 1,
            Verdict::Ok => {}
        }
        let diff = (a - n.value).abs();
        report.max_abs_error = report.max_abs_error.max(diff);
        report.max_error_estimate = report.max_error_estimate.max(n.error);
        let scale = a.abs().max(n.value.abs());
        if scale > n.error && scale > 0.0 {
            report.max_rel_error = report.max_rel_error.max((diff - n.error).max(0.0) / scale);
        }
        if ratio > worst_ratio {
            worst_ratio = ratio;
            report.worst = Some(WorstElement {
                index,
                analytic: a,
                numeric: n.value,
                error_estimate: n.error,
            });
        }
    }
    report.missing_gradient = analytic.iter().all(|&g| g == 0.0) && numeric_nonzero;
    report
}
