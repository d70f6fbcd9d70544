//! Numeric differentiation with an error estimate: central differences at two step sizes,
//! Richardson extrapolation, and steps scaled to the value perturbed.
//!
//! For a step `h`, `D(h) = (f(θ + h) − f(θ − h)) / 2h` has truncation error `c·h² + O(h⁴)`.
//! Two step sizes cancel the `h²` term (Richardson): `R = (4·D(h/2) − D(h)) / 3`, with error
//! `O(h⁴)`. The estimate of the error of `R` is `|D(h) − D(h/2)|` (three times the `h²` term
//! of `D(h/2)`, so generous for `R`), plus the round-off of the differences:
//! `3·δ / h` for objective values known to `δ = ROUNDOFF_FACTOR · u · Σ|y ⊙ R|`, `u` the unit
//! round-off of the type the forward runs in.

use ndarray::{ArrayD, ArrayViewMutD};
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};

use crate::{Float, Result};

/// How many unit round-offs of `Σ|y ⊙ R|` an objective value is trusted to.
const ROUNDOFF_FACTOR: f64 = 16.0;

/// A numeric derivative and an estimate of its own error.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Estimate {
    /// The Richardson-extrapolated central difference.
    pub value: f64,
    /// Estimated bound on `|value − true derivative|`.
    pub error: f64,
}

/// One objective `f = Σ y ⊙ R` evaluated: its value and `Σ|y ⊙ R|`, the scale of its
/// round-off.
#[derive(Clone, Copy, Debug)]
pub(super) struct Objective {
    pub value: f64,
    pub magnitude: f64,
}

/// A change applied to the tensor under test.
pub(super) type Perturb<'a, F> = dyn FnMut(&mut ArrayViewMutD<'_, F>) + 'a;

/// Applies a change to the tensor under test and, if asked, evaluates every objective (one
/// per output). Without evaluation it returns an empty vector.
pub(super) type Eval<'a, F> = dyn FnMut(&mut Perturb<'_, F>, bool) -> Result<Vec<Objective>> + 'a;

/// Element `flat` (in logical order) of `t`.
fn element_mut<'t, F>(t: &'t mut ArrayViewMutD<'_, F>, flat: usize) -> Option<&'t mut F> {
    if t.is_standard_layout() {
        t.as_slice_mut().and_then(|s| s.get_mut(flat))
    } else {
        t.iter_mut().nth(flat)
    }
}

/// Richardson combination of the objectives at `θ ± h` and `θ ± h/2` (with the steps as
/// actually represented), for every output.
fn richardson(
    outer: (&[Objective], &[Objective], f64),
    inner: (&[Objective], &[Objective], f64),
    h: f64,
    roundoff: f64,
) -> Vec<Estimate> {
    let (plus1, minus1, span1) = outer;
    let (plus2, minus2, span2) = inner;
    (0..plus1.len())
        .map(|o| {
            if span1 == 0.0 || span2 == 0.0 {
                // The step is below the value's resolution: nothing can be said.
                return Estimate {
                    value: 0.0,
                    error: f64::INFINITY,
                };
            }
            let d1 = (plus1[o].value - minus1[o].value) / span1;
            let d2 = (plus2[o].value - minus2[o].value) / span2;
            let magnitude = [plus1[o], minus1[o], plus2[o], minus2[o]]
                .iter()
                .map(|v| v.magnitude)
                .fold(0.0, f64::max);
            let noise = 3.0 * ROUNDOFF_FACTOR * roundoff * magnitude / h;
            let error = (d1 - d2).abs() + noise;
            Estimate {
                value: (4.0 * d2 - d1) / 3.0,
                error: if error.is_nan() { f64::INFINITY } else { error },
            }
        })
        .collect()
}

/// The numeric derivative of every objective with respect to every element of the tensor
/// under test: `[output][flat element]`. Every perturbation is undone exactly (the original
/// value is written back, not re-subtracted).
pub(super) fn elementwise<F: Float>(
    len: usize,
    eps: f64,
    roundoff: f64,
    eval: &mut Eval<'_, F>,
) -> Result<Vec<Vec<Estimate>>> {
    let mut out: Vec<Vec<Estimate>> = Vec::new();
    for flat in 0..len {
        let mut original = F::zero();
        eval(
            &mut |t| {
                if let Some(v) = element_mut(t, flat) {
                    original = *v;
                }
            },
            false,
        )?;
        let theta = original.to_f64_exact();
        let h = eps * theta.abs().max(1.0);
        // Returns the objectives at θ + delta and the step actually taken.
        let mut at = |delta: f64| -> Result<(Vec<Objective>, f64)> {
            let mut taken = 0.0;
            let shifted = eval(
                &mut |t| {
                    if let Some(v) = element_mut(t, flat) {
                        *v = F::of(theta + delta);
                        taken = v.to_f64_exact() - theta;
                    }
                },
                true,
            );
            eval(
                &mut |t| {
                    if let Some(v) = element_mut(t, flat) {
                        *v = original;
                    }
                },
                false,
            )?;
            Ok((shifted?, taken))
        };
        let (p1, a1) = at(h)?;
        let (m1, b1) = at(-h)?;
        let (p2, a2) = at(h / 2.0)?;
        let (m2, b2) = at(-h / 2.0)?;
        let estimates = richardson((&p1, &m1, a1 - b1), (&p2, &m2, a2 - b2), h, roundoff);
        if out.is_empty() {
            out = vec![Vec::with_capacity(len); estimates.len()];
        }
        for (o, e) in estimates.into_iter().enumerate() {
            if let Some(column) = out.get_mut(o) {
                column.push(e);
            }
        }
    }
    Ok(out)
}

/// A random direction of unit Euclidean norm, of the given shape.
pub(super) fn unit_direction(shape: ndarray::IxDyn, rng: &mut StdRng) -> ArrayD<f64> {
    let mut d: ArrayD<f64> = ArrayD::from_shape_simple_fn(shape, || StandardNormal.sample(rng));
    let norm = d.iter().map(|v| v * v).sum::<f64>().sqrt();
    if norm > 0.0 {
        d.mapv_inplace(|v| v / norm);
    }
    d
}

/// The numeric directional derivative of every objective along `direction` (unit norm),
/// with the step scaled to the root-mean-square of the tensor's values.
pub(super) fn directional<F: Float>(
    direction: &ArrayD<f64>,
    eps: f64,
    roundoff: f64,
    eval: &mut Eval<'_, F>,
) -> Result<Vec<Estimate>> {
    let mut original: Vec<F> = Vec::new();
    eval(&mut |t| original = t.iter().copied().collect(), false)?;
    let n = original.len().max(1) as f64;
    let rms = (original
        .iter()
        .map(|v| v.to_f64_exact().powi(2))
        .sum::<f64>()
        / n)
        .sqrt();
    let h = eps * rms.max(1.0);
    let mut along = |step: f64| -> Result<Vec<Objective>> {
        let shifted = eval(
            &mut |t| {
                t.iter_mut()
                    .zip(&original)
                    .zip(direction)
                    .for_each(|((v, &o), &d)| *v = F::of(o.to_f64_exact() + step * d));
            },
            true,
        );
        eval(
            &mut |t| t.iter_mut().zip(&original).for_each(|(v, &o)| *v = o),
            false,
        )?;
        shifted
    };
    let p1 = along(h)?;
    let m1 = along(-h)?;
    let p2 = along(h / 2.0)?;
    let m2 = along(-h / 2.0)?;
    Ok(richardson((&p1, &m1, 2.0 * h), (&p2, &m2, h), h, roundoff))
}
