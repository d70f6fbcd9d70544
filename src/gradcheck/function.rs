//! [`check_fn`]: any function of several float arrays returning several arrays, given its
//! backward (vector-Jacobian product): every kernel of [`crate::kernels`] is one.
//!
//! Each output `y_o` gets its own random projection `R_o`. For each output, the backward is
//! called with cotangent `R_o` on that output and zeros on the others, which gives
//! `∂(Σ y_o ⊙ R_o)/∂x_i` for every input `x_i`; the finite differences of one perturbed forward
//! serve every output at once. So the report has one entry per (output, input) pair.
//!
//! The backward **adds** its gradients into the buffers it is handed (as the kernels'
//! `d_w`/`d_b` arguments do; add returned gradients in with `+=`), so the accumulation,
//! zero-cotangent, linearity and determinism checks apply to every pair.

use ndarray::{ArrayD, ArrayView, ArrayViewD, ArrayViewMut, Dimension, IxDyn};
use rand::{SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, StandardNormal};

use super::contract::{self, Repeatable};
use super::layer::objective;
use super::numeric::Perturb;
use super::options::{GradCheckOptions, unit_roundoff};
use super::report::GradCheckReport;
use super::sampling::{self, Target};
use crate::error::ExpectedShape;
use crate::{Error, Float, Result};

/// `a` with a fixed dimensionality, for calling a kernel from a [`check_fn`] closure.
///
/// # Errors
/// [`Error::ShapeMismatch`] when `a` does not have `D`'s number of axes.
pub fn as_dim<'a, F, D: Dimension>(a: &'a ArrayViewD<'_, F>) -> Result<ArrayView<'a, F, D>> {
    a.view()
        .into_dimensionality::<D>()
        .map_err(|_| rank_error(a.shape(), D::NDIM))
}

/// `a` mutably with a fixed dimensionality, for handing a gradient buffer to a kernel.
///
/// # Errors
/// [`Error::ShapeMismatch`] when `a` does not have `D`'s number of axes.
pub fn as_dim_mut<F, D: Dimension>(a: &mut ArrayD<F>) -> Result<ArrayViewMut<'_, F, D>> {
    let shape = a.shape().to_vec();
    a.view_mut()
        .into_dimensionality::<D>()
        .map_err(|_| rank_error(&shape, D::NDIM))
}

fn rank_error(shape: &[usize], ndim: Option<usize>) -> Error {
    Error::ShapeMismatch {
        layer: "gradcheck",
        what: "array",
        expected: ExpectedShape(vec![None; ndim.unwrap_or(0)]),
        actual: shape.to_vec(),
    }
}

fn invalid(reason: String) -> Error {
    Error::InvalidConfig {
        layer: "gradcheck",
        reason,
    }
}

/// Finite-difference check of a function's backward, per (output, input) pair by name.
///
/// * `inputs`: the named float inputs (anything else the function needs, such as ids, head
///   counts or targets, the closures capture).
/// * `outputs`: the names of the arrays `forward` returns, in order.
/// * `forward(inputs)` returns the outputs.
/// * `backward(inputs, cotangents, grads)` **adds** `∂(Σ_o y_o ⊙ cotangent_o)/∂input_i` into
///   `grads[i]`, which has input `i`'s shape.
///
/// ```
/// use baregpt::gradcheck::{self, as_dim, as_dim_mut};
/// use baregpt::kernels::{linear_backward, linear_forward};
/// use ndarray::{Array2, Array1, Ix1, Ix2};
///
/// let x = Array2::from_shape_fn((3, 4), |(i, j)| ((i * 4 + j) as f64).sin()).into_dyn();
/// let w = Array2::from_shape_fn((4, 2), |(i, j)| ((i + 3 * j) as f64).cos()).into_dyn();
/// let b = Array1::from_vec(vec![0.1, -0.2]).into_dyn();
/// let report = gradcheck::check_fn(
///     &[("x", x), ("w", w), ("b", b)],
///     &["y"],
///     |i| Ok(vec![linear_forward(as_dim(&i[0])?, as_dim(&i[1])?, Some(as_dim(&i[2])?))?.into_dyn()]),
///     |i, dy, grads| {
///         let [dx, dw, db] = grads else { unreachable!("three inputs") };
///         let dx_new = linear_backward(as_dim(&i[0])?, as_dim(&i[1])?, as_dim(&dy[0])?,
///                                      as_dim_mut::<_, Ix2>(dw)?, Some(as_dim_mut::<_, Ix1>(db)?))?;
///         *dx += &dx_new.into_dyn();
///         Ok(())
///     },
///     &Default::default(),
/// )?;
/// assert!(report.passed(), "{report}");
/// assert_eq!(report.tensors.len(), 3); // ∂y/∂x, ∂y/∂w, ∂y/∂b
/// # Ok::<(), baregpt::Error>(())
/// ```
///
/// # Errors
/// [`Error::InvalidConfig`] for options that cannot check anything, no inputs or outputs,
/// repeated names, or a forward returning another number of outputs than named;
/// [`Error::ShapeMismatch`] when an output changes shape under a perturbation or the backward
/// replaces a gradient buffer with one of another shape; and whatever the closures return.
pub fn check_fn<F, Fw, Bw>(
    inputs: &[(&str, ArrayD<F>)],
    outputs: &[&str],
    mut forward: Fw,
    mut backward: Bw,
    options: &GradCheckOptions,
) -> Result<GradCheckReport>
where
    F: Float,
    Fw: FnMut(&[ArrayViewD<'_, F>]) -> Result<Vec<ArrayD<F>>>,
    Bw: FnMut(&[ArrayViewD<'_, F>], &[ArrayViewD<'_, F>], &mut [ArrayD<F>]) -> Result<()>,
{
    let tol = options.resolve_for::<F>()?;
    if inputs.is_empty() || outputs.is_empty() {
        return Err(invalid(
            "check_fn needs at least one input and one output".into(),
        ));
    }
    let names: Vec<&str> = inputs
        .iter()
        .map(|(n, _)| *n)
        .chain(outputs.iter().copied())
        .collect();
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            return Err(invalid(format!("check_fn: the name `{n}` is used twice")));
        }
    }
    let mut work: Vec<ArrayD<F>> = inputs.iter().map(|(_, a)| a.clone()).collect();
    let mut report = GradCheckReport::new(&tol, F::NAME);
    let ys = call_forward(&mut forward, &work, outputs.len())?;
    report.forward_evals += 1;
    let mut rng = StdRng::seed_from_u64(tol.seed);
    let projections: Vec<ArrayD<F>> = ys
        .iter()
        .map(|y| y.mapv(|_| F::of(StandardNormal.sample(&mut rng))))
        .collect();

    // Per output: the analytic gradients and contract violations, per input.
    let mut analytic = Vec::with_capacity(outputs.len());
    let mut deterministic = None;
    for o in 0..outputs.len() {
        let mut run = FnRun {
            backward: &mut backward,
            inputs: &work,
            projections: &projections,
            output: o,
            grads: work.iter().map(|a| ArrayD::zeros(a.raw_dim())).collect(),
        };
        let outcome = contract::check(
            &mut run,
            unit_roundoff::<F>(),
            tol.nondet_tol,
            tol.check_determinism,
        )?;
        deterministic = match (deterministic, outcome.deterministic) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (_, d) => d,
        };
        analytic.push(outcome);
    }
    report.deterministic = deterministic;

    let targets: Vec<Target<'_>> = inputs
        .iter()
        .enumerate()
        .map(|(i, (name, _))| Target {
            name,
            analytic: analytic.iter().map(|a| &a.grads[i]).collect(),
        })
        .collect();
    let output_names: Vec<Option<&str>> = outputs.iter().map(|o| Some(*o)).collect();
    let shapes: Vec<IxDyn> = ys.iter().map(|y| y.raw_dim()).collect();
    let mut eval = |t: usize, perturb: &mut Perturb<'_, F>, evaluate: bool| {
        if let Some(a) = work.get_mut(t) {
            perturb(&mut a.view_mut());
        }
        if !evaluate {
            return Ok(Vec::new());
        }
        let ys = call_forward(&mut forward, &work, shapes.len())?;
        ys.iter()
            .zip(&shapes)
            .zip(&projections)
            .map(|((y, shape), r)| {
                if y.raw_dim() != *shape {
                    return Err(Error::ShapeMismatch {
                        layer: "gradcheck",
                        what: "a perturbed forward's output",
                        expected: ExpectedShape(shape.slice().iter().map(|&n| Some(n)).collect()),
                        actual: y.shape().to_vec(),
                    });
                }
                Ok(objective(y.view(), r.view()))
            })
            .collect()
    };
    let (reports, evals) = sampling::sample(&targets, &output_names, &tol, &mut rng, &mut eval)?;
    report.forward_evals += evals;
    // Output-major order, with each pair's contract violations.
    let mut by_input: Vec<std::vec::IntoIter<_>> =
        reports.into_iter().map(Vec::into_iter).collect();
    for (o, outcome) in analytic.into_iter().enumerate() {
        for (i, violations) in outcome.violations.into_iter().enumerate() {
            if let Some(mut pair) = by_input.get_mut(i).and_then(Iterator::next) {
                debug_assert_eq!(pair.output.as_deref(), Some(outputs[o]));
                pair.contract = violations;
                report.tensors.push(pair);
            }
        }
    }
    Ok(report)
}

fn call_forward<F: Float>(
    forward: &mut impl FnMut(&[ArrayViewD<'_, F>]) -> Result<Vec<ArrayD<F>>>,
    inputs: &[ArrayD<F>],
    expected: usize,
) -> Result<Vec<ArrayD<F>>> {
    let views: Vec<ArrayViewD<'_, F>> = inputs.iter().map(|a| a.view()).collect();
    let ys = forward(&views)?;
    if ys.len() != expected {
        return Err(invalid(format!(
            "check_fn: forward returned {} outputs, {expected} are named",
            ys.len()
        )));
    }
    Ok(ys)
}

/// The function's backward for one output's projection, repeatable.
struct FnRun<'a, F, Bw> {
    backward: &'a mut Bw,
    inputs: &'a [ArrayD<F>],
    projections: &'a [ArrayD<F>],
    output: usize,
    grads: Vec<ArrayD<F>>,
}

impl<F, Bw> Repeatable for FnRun<'_, F, Bw>
where
    F: Float,
    Bw: FnMut(&[ArrayViewD<'_, F>], &[ArrayViewD<'_, F>], &mut [ArrayD<F>]) -> Result<()>,
{
    fn zero(&mut self) {
        self.grads.iter_mut().for_each(|g| g.fill(F::zero()));
    }

    fn refresh(&mut self) -> Result<()> {
        Ok(())
    }

    fn run(&mut self, scale: f64) -> Result<Vec<ArrayD<f64>>> {
        let s = F::of(scale);
        let cotangents: Vec<ArrayD<F>> = self
            .projections
            .iter()
            .enumerate()
            .map(|(o, r)| {
                if o == self.output {
                    r.mapv(|v| v * s)
                } else {
                    ArrayD::zeros(r.raw_dim())
                }
            })
            .collect();
        let views: Vec<ArrayViewD<'_, F>> = self.inputs.iter().map(|a| a.view()).collect();
        let cot: Vec<ArrayViewD<'_, F>> = cotangents.iter().map(|a| a.view()).collect();
        (self.backward)(&views, &cot, &mut self.grads)?;
        for (g, x) in self.grads.iter().zip(self.inputs) {
            if g.shape() != x.shape() {
                return Err(Error::ShapeMismatch {
                    layer: "gradcheck",
                    what: "a gradient buffer after backward",
                    expected: ExpectedShape(x.shape().iter().map(|&n| Some(n)).collect()),
                    actual: g.shape().to_vec(),
                });
            }
        }
        Ok(self
            .grads
            .iter()
            .map(|g| g.mapv(|v| v.to_f64_exact()))
            .collect())
    }

    fn accumulates(&self, _: usize) -> bool {
        true
    }
}
