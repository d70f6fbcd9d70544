//! The backward's contract, checked by repeating backward passes: it **adds** into the
//! gradients (a second pass without zeroing adds the same amount again), a zero cotangent adds
//! nothing, it is linear in the cotangent, and (optionally) it is deterministic.

use ndarray::{ArrayD, Dimension};

use super::report::{ContractKind, ContractViolation};
use crate::Result;

/// How many unit round-offs of a tensor's largest gradient element two sums of the same terms
/// in different orders may differ by (an accumulating matrix product adds the old gradient in
/// at a different point than a fresh one).
const REORDER_FACTOR: f64 = 64.0;

/// A backward pass the contract checks can repeat.
pub(super) trait Repeatable {
    /// Zeroes every accumulated gradient.
    fn zero(&mut self);
    /// Runs the forward again (for the determinism check).
    fn refresh(&mut self) -> Result<()>;
    /// Runs backward with the cotangent scaled by `scale`; returns, per tensor under test, the
    /// accumulated gradient after the call, or the returned gradient for a tensor whose
    /// gradient is returned rather than accumulated.
    fn run(&mut self, scale: f64) -> Result<Vec<ArrayD<f64>>>;
    /// Whether tensor `i`'s gradient is accumulated (a parameter), not returned (an input).
    fn accumulates(&self, i: usize) -> bool;
}

/// What the contract checks found.
pub(super) struct Outcome {
    /// The gradients of one backward from zero: what the finite differences are compared with.
    pub grads: Vec<ArrayD<f64>>,
    /// Violations per tensor.
    pub violations: Vec<Vec<ContractViolation>>,
    /// `None` when determinism was not checked.
    pub deterministic: Option<bool>,
}

/// The element of `actual` furthest from `expected` beyond `tol(expected element)`, as a
/// violation of `kind`.
fn worst_excess(
    kind: ContractKind,
    actual: &ArrayD<f64>,
    expected: &ArrayD<f64>,
    tol: f64,
) -> Option<ContractViolation> {
    worst_excess_rel(kind, actual, expected, tol, 0.0)
}

/// [`worst_excess`] with an element-wise tolerance `tol + rel·|expected element|`.
fn worst_excess_rel(
    kind: ContractKind,
    actual: &ArrayD<f64>,
    expected: &ArrayD<f64>,
    tol: f64,
    rel: f64,
) -> Option<ContractViolation> {
    let mut worst: Option<(f64, ContractViolation)> = None;
    for ((index, &a), &e) in actual.indexed_iter().zip(expected.iter()) {
        let excess = if a.is_nan() != e.is_nan() {
            f64::INFINITY
        } else if a == e || (a.is_nan() && e.is_nan()) {
            continue;
        } else {
            (a - e).abs() - tol - rel * e.abs()
        };
        if excess > 0.0 && worst.as_ref().is_none_or(|(w, _)| excess > *w) {
            worst = Some((
                excess,
                ContractViolation {
                    kind,
                    index: index.slice().to_vec(),
                    actual: a,
                    expected: e,
                },
            ));
        }
    }
    worst.map(|(_, v)| v)
}

/// Runs the contract checks. `roundoff` is the unit round-off of the backward's type,
/// `nondet_tol` the allowed absolute difference between passes that should agree.
pub(super) fn check(
    subject: &mut dyn Repeatable,
    roundoff: f64,
    nondet_tol: f64,
    check_determinism: bool,
) -> Result<Outcome> {
    subject.zero();
    let once = subject.run(1.0)?;
    let twice = subject.run(1.0)?;
    let after_zero = subject.run(0.0)?;
    subject.zero();
    let doubled = subject.run(2.0)?;
    let again = if check_determinism {
        subject.zero();
        subject.refresh()?;
        Some(subject.run(1.0)?)
    } else {
        None
    };

    let mut violations = Vec::with_capacity(once.len());
    let mut deterministic = again.as_ref().map(|_| true);
    for (i, g1) in once.iter().enumerate() {
        let scale = g1.iter().fold(0.0_f64, |m, v| m.max(v.abs()));
        // Drift that the determinism check already reports is not blamed on accumulation.
        let drift = again.as_ref().and_then(|a| a.get(i)).map_or(0.0, |g5| {
            g5.iter()
                .zip(g1)
                .fold(0.0_f64, |m, (a, b)| m.max((a - b).abs()))
        });
        let drift = if drift.is_nan() { 0.0 } else { drift };
        let reorder = REORDER_FACTOR * roundoff * scale + drift;
        let times_two = g1.mapv(|v| 2.0 * v);
        let zeros = g1.mapv(|_| 0.0);
        let mut found = Vec::new();
        let accumulates = subject.accumulates(i);
        if let Some(g2) = twice.get(i) {
            let v = if accumulates {
                // Relative to each element too: when a gradient is a sum of large terms that
                // cancel, its rounding is set by the terms, not by the tensor's largest
                // element, while a backward that overwrites or half-adds is off by O(1).
                worst_excess_rel(
                    ContractKind::Overwrites,
                    g2,
                    &times_two,
                    2.0 * nondet_tol + reorder,
                    roundoff.sqrt(),
                )
            } else {
                worst_excess(ContractKind::NotDeterministic, g2, g1, nondet_tol)
            };
            found.extend(v);
        }
        if let (Some(g0), Some(g2)) = (after_zero.get(i), twice.get(i)) {
            let expected = if accumulates { g2 } else { &zeros };
            found.extend(worst_excess(
                ContractKind::ZeroCotangentAdds,
                g0,
                expected,
                nondet_tol + drift,
            ));
        }
        if let Some(g4) = doubled.get(i) {
            found.extend(worst_excess(
                ContractKind::NotLinear,
                g4,
                &times_two,
                2.0 * nondet_tol + reorder,
            ));
        }
        if let Some(g5) = again.as_ref().and_then(|a| a.get(i))
            && let Some(v) = worst_excess(ContractKind::NotDeterministic, g5, g1, nondet_tol)
        {
            deterministic = Some(false);
            found.push(v);
        }
        found.dedup_by_key(|v| v.kind);
        violations.push(found);
    }
    Ok(Outcome {
        grads: once,
        violations,
        deterministic,
    })
}
