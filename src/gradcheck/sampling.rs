//! Full and fast sampling of the tensors under test, and fast mode's localisation.
//!
//! [`Mode::Full`] differentiates every element. [`Mode::Fast`] compares, per tensor, `vᵀ·J·u`
//! for random unit directions `u` (the projection `R` plays `v`): four forwards per direction
//! whatever the tensor's size. Because `u` has unit norm, an absolute error of `atol` per
//! gradient element with random signs contributes about `atol` to `⟨g, u⟩`, so the tolerance
//! is used unscaled. When any direction fails, the tensor is checked again in full, alone,
//! and that element-level report replaces the directional one.

use ndarray::{ArrayD, Dimension, IxDyn};
use rand::rngs::StdRng;

use super::numeric::{self, Estimate, Eval, Objective, Perturb};
use super::options::{Mode, Resolved};
use super::report::{TensorReport, compare};
use crate::{Float, Result};

/// One tensor under test: its name and the analytic gradient of each output's objective.
pub(super) struct Target<'a> {
    pub name: &'a str,
    pub analytic: Vec<&'a ArrayD<f64>>,
}

/// The objectives of every output, with tensor `tensor` changed by `perturb` (and evaluated
/// if asked).
pub(super) type TensorEval<'a, F> =
    dyn FnMut(usize, &mut Perturb<'_, F>, bool) -> Result<Vec<Objective>> + 'a;

/// Numeric comparison of every target: `[tensor][output]` reports, and the number of
/// forward evaluations made.
pub(super) fn sample<F: Float>(
    targets: &[Target<'_>],
    outputs: &[Option<&str>],
    tol: &Resolved,
    rng: &mut StdRng,
    eval: &mut TensorEval<'_, F>,
) -> Result<(Vec<Vec<TensorReport>>, usize)> {
    let mut evals = 0;
    let mut all = Vec::with_capacity(targets.len());
    for (t, target) in targets.iter().enumerate() {
        let mut counted = |perturb: &mut Perturb<'_, F>, evaluate: bool| {
            if evaluate {
                evals += 1;
            }
            eval(t, perturb, evaluate)
        };
        let reports = match tol.mode {
            Mode::Full => full(target, outputs, tol, &mut counted)?,
            Mode::Fast { directions } => {
                let fast = fast(target, outputs, directions, tol, rng, &mut counted)?;
                if fast.iter().all(TensorReport::passed) {
                    fast
                } else {
                    let mut located = full(target, outputs, tol, &mut counted)?;
                    located.iter_mut().for_each(|r| r.localized = true);
                    located
                }
            }
        };
        all.push(reports);
    }
    Ok((all, evals))
}

fn full<F: Float>(
    target: &Target<'_>,
    outputs: &[Option<&str>],
    tol: &Resolved,
    eval: &mut Eval<'_, F>,
) -> Result<Vec<TensorReport>> {
    let len = target.analytic.first().map_or(0, |a| a.len());
    let numeric = numeric::elementwise(len, tol.eps, tol.roundoff, eval)?;
    Ok(outputs
        .iter()
        .enumerate()
        .map(|(o, output)| {
            let analytic = target.analytic[o];
            let column = numeric.get(o).map_or(&[][..], Vec::as_slice);
            let triples = analytic
                .indexed_iter()
                .zip(column)
                .map(|((idx, &a), &n)| (idx.slice().to_vec(), a, n));
            compare(target.name, *output, analytic.view(), triples, tol)
        })
        .collect())
}

fn fast<F: Float>(
    target: &Target<'_>,
    outputs: &[Option<&str>],
    directions: usize,
    tol: &Resolved,
    rng: &mut StdRng,
    eval: &mut Eval<'_, F>,
) -> Result<Vec<TensorReport>> {
    let shape = target
        .analytic
        .first()
        .map_or_else(|| IxDyn(&[0]), |a| a.raw_dim());
    // [output] of (direction, analytic ⟨g, u⟩, numeric).
    let mut pairs: Vec<Vec<(Vec<usize>, f64, Estimate)>> = vec![Vec::new(); outputs.len()];
    for d in 0..directions {
        let u = numeric::unit_direction(shape.clone(), rng);
        let estimates = numeric::directional(&u, tol.eps, tol.roundoff, eval)?;
        for (o, column) in pairs.iter_mut().enumerate() {
            let projected = target.analytic[o]
                .iter()
                .zip(&u)
                .map(|(g, u)| g * u)
                .sum::<f64>();
            let n = estimates.get(o).copied().unwrap_or_default();
            column.push((vec![d], projected, n));
        }
    }
    Ok(outputs
        .iter()
        .zip(pairs)
        .enumerate()
        .map(|(o, (output, column))| {
            compare(
                target.name,
                *output,
                target.analytic[o].view(),
                column.into_iter(),
                tol,
            )
        })
        .collect())
}
