//! [`check_layer_f32`]: an `f32` backward, as it runs in training, against finite differences
//! of the same layer in `f64` with the same weights.
//!
//! Finite differences in `f32` itself cannot see a 1% error: with a unit round-off of `6e-8`,
//! the best central difference is only accurate to about `1e-3`..`1e-2` relative, and the
//! default `f32` tolerances must be loose enough to pass correct layers. Here the analytic
//! gradient comes from the `f32` layer and the numeric one from its `f64` twin (weights copied
//! exactly, input widened exactly, the same projection `R`), whose differences are accurate to
//! about `1e-9`. So the tolerances can be set by the `f32` backward's own round-off
//! ([`f32_defaults`](super::f32_defaults)).
//!
//! **What it sees:** any error of the `f32` backward larger than its round-off: a wrong term,
//! a wrong constant, a 1% scale, a missing or overwritten gradient, an `f32`-only branch.
//! **What it cannot see:** errors that the `f64` twin shares (the same wrong *forward* in both
//! types is the function being differentiated, so a backward that matches a wrong forward
//! passes; that is what parity tests are for), and differences between the `f32` and `f64`
//! forwards below the tolerance (the `f32` fast `exp`/`tanh` approximations are within it).
//! The twin must compute the same function: the check refuses a twin whose forward differs
//! from the `f32` layer's by more than `1e-3` relative.

use ndarray::{Array2, Array3};

use super::layer::{analytic_phase, collect_grads, numeric_phase, restore_grads};
use super::options::{GradCheckOptions, f32_defaults, unit_roundoff};
use super::report::GradCheckReport;
use crate::layer::{DropoutMode, LayerInput};
use crate::{Error, Layer, Result};
use rand::{SeedableRng, rngs::StdRng};

/// An `f32` layer input that has an exact `f64` counterpart (activations are widened, token
/// ids stay as they are).
pub trait WidenInput: LayerInput<f32> + Clone {
    /// The `f64` counterpart.
    type Wide: LayerInput<f64> + Clone;

    /// The input in `f64`, exactly.
    fn widen(&self) -> Self::Wide;
}

impl WidenInput for Array3<f32> {
    type Wide = Array3<f64>;

    fn widen(&self) -> Array3<f64> {
        self.mapv(f64::from)
    }
}

impl WidenInput for Array2<usize> {
    type Wide = Array2<usize>;

    fn widen(&self) -> Array2<usize> {
        self.clone()
    }
}

/// Checks the `f32` backward of `layer` at `x` against finite differences of `reference`, the
/// same layer built in `f64`; see the [module docs](super) and [`f32_defaults`] for the
/// default tolerances.
///
/// `reference`'s parameters are overwritten with `layer`'s (widened exactly) for the check
/// and restored afterwards; `layer`'s values and gradients are restored too.
///
/// Both layers are checked in [`DropoutMode::Hold`] and left in [`DropoutMode::Train`], as
/// in [`check_layer`](super::check_layer). With dropout the twin must draw the same masks:
/// the same seeds and pass counts (two layers built alike and not yet run do).
///
/// ```
/// use baregpt::{gradcheck, layers::LayerNorm};
/// use ndarray::Array3;
///
/// let x = Array3::from_shape_fn((2, 3, 5), |(b, t, c)| ((b * 15 + t * 5 + c) as f32 * 0.7).sin());
/// let mut ln32 = LayerNorm::<f32>::new(5)?;
/// let mut ln64 = LayerNorm::<f64>::new(5)?;
/// let report = gradcheck::check_layer_f32(&mut ln32, &mut ln64, &x, &Default::default())?;
/// assert!(report.passed(), "{report}");
/// # Ok::<(), baregpt::Error>(())
/// ```
///
/// # Errors
/// [`Error::ParamMismatch`] when the two layers' parameter names or shapes differ;
/// [`Error::InvalidConfig`] for options that cannot check anything, or when the two forwards
/// disagree by more than `1e-3` relative; and whatever the layers return for `x`.
pub fn check_layer_f32<X, L, R>(
    layer: &mut L,
    reference: &mut R,
    x: &X,
    options: &GradCheckOptions,
) -> Result<GradCheckReport>
where
    X: WidenInput,
    L: Layer<f32, X> + ?Sized,
    R: Layer<f64, X::Wide> + ?Sized,
{
    let tol = options.resolve(
        (f32_defaults::EPS, f32_defaults::ATOL, f32_defaults::RTOL),
        unit_roundoff::<f64>(),
    )?;
    let mut values = Vec::new();
    layer.for_each_param(&mut |name, p| {
        values.push((name.to_owned(), p.value.mapv(f64::from)));
    });
    let mut reference_values = Vec::new();
    reference.for_each_param(&mut |name, p| {
        reference_values.push((name.to_owned(), p.value.to_owned()));
    });
    if let Some(problem) = mismatch(&values, &reference_values) {
        return Err(problem);
    }
    let saved = collect_grads(layer);
    let saved_reference = collect_grads(reference);
    layer.set_dropout(DropoutMode::Hold);
    reference.set_dropout(DropoutMode::Hold);
    let result = (|| {
        set_values(reference, &values);
        let wide = x.widen();
        let y32 = layer.forward(x)?;
        let y64 = reference.forward(&wide)?;
        let scale = y64.iter().fold(1.0_f64, |m, v| m.max(v.abs()));
        let gap = y32
            .iter()
            .zip(&y64)
            .fold(0.0_f64, |m, (&a, &b)| m.max((f64::from(a) - b).abs()));
        if y32.shape() != y64.shape() || gap.is_nan() || gap > 1e-3 * scale {
            return Err(Error::InvalidConfig {
                layer: "gradcheck",
                reason: format!(
                    "check_layer_f32: the f64 reference computes another function (outputs differ by {gap:e})"
                ),
            });
        }
        let mut rng = StdRng::seed_from_u64(tol.seed);
        let mut report = GradCheckReport::new(&tol, "f32 backward against f64 finite differences");
        report.forward_evals += 1;
        let analytic = analytic_phase(layer, x, &tol, &mut rng, &mut report)?;
        let projection = analytic.projection.mapv(f64::from);
        numeric_phase(
            reference,
            &wide,
            &projection,
            analytic,
            &tol,
            &mut rng,
            &mut report,
        )?;
        Ok(report)
    })();
    set_values(reference, &reference_values);
    restore_grads(reference, &saved_reference);
    restore_grads(layer, &saved);
    layer.set_dropout(DropoutMode::Train);
    reference.set_dropout(DropoutMode::Train);
    result
}

/// A [`Error::ParamMismatch`] when the two name/shape lists differ.
fn mismatch(
    a: &[(String, ndarray::ArrayD<f64>)],
    b: &[(String, ndarray::ArrayD<f64>)],
) -> Option<Error> {
    if a.len() != b.len() {
        return Some(Error::ParamMismatch {
            name: a
                .iter()
                .chain(b)
                .map(|(n, _)| n.clone())
                .find(|n| !(a.iter().any(|(m, _)| m == n) && b.iter().any(|(m, _)| m == n)))
                .unwrap_or_default(),
            reason: format!(
                "the f32 layer has {} parameters, the f64 reference {}",
                a.len(),
                b.len()
            ),
        });
    }
    a.iter().zip(b).find_map(|((na, va), (nb, vb))| {
        if na != nb {
            Some(Error::ParamMismatch {
                name: na.clone(),
                reason: format!("the f64 reference has `{nb}` in its place"),
            })
        } else if va.shape() != vb.shape() {
            Some(Error::ParamMismatch {
                name: na.clone(),
                reason: format!(
                    "shape {:?} in the f32 layer, {:?} in the f64 reference",
                    va.shape(),
                    vb.shape()
                ),
            })
        } else {
            None
        }
    })
}

fn set_values<R: crate::Params<f64> + ?Sized>(
    layer: &mut R,
    values: &[(String, ndarray::ArrayD<f64>)],
) {
    let mut i = 0;
    layer.for_each_param_mut(&mut |_, mut p| {
        if let Some((_, v)) = values.get(i) {
            p.value.assign(v);
        }
        i += 1;
    });
}
