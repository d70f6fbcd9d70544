//! The finite-difference gradient checker: proves a layer's backward agrees with its forward.
//!
//! [`check_layer`] works on any [`Layer`], including your own and id-input layers such as
//! [`Embedding`](crate::layers::Embedding) (then only parameters are checked). The output is
//! reduced to a scalar by a fixed random projection, `f = Σ y ⊙ R` with `R ~ N(0, 1)` drawn
//! from [`GradCheckOptions::seed`], so that errors in different elements cannot cancel.
//! The analytic gradient is the layer's backward of `R`; the numeric one is the central
//! difference `(f(θ + ε) − f(θ − ε)) / 2ε`.
//!
//! An element fails when `|analytic − numeric| > atol + rtol·|numeric|`. The result is a
//! [`GradCheckReport`], never a panic: per named tensor, the largest absolute and relative
//! errors, the worst element with both values, the failure count, and whether the analytic
//! gradient is missing altogether.
//!
//! The layer's parameters, gradients and anything else the user owns are restored when the
//! check returns; its cache holds the last perturbed forward.
//!
//! ```
//! use baregpt::{gradcheck, layers::LayerNorm};
//! use ndarray::Array3;
//!
//! let mut ln = LayerNorm::<f64>::new(4)?;
//! let x = Array3::from_shape_fn((2, 3, 4), |(b, t, c)| ((b * 12 + t * 4 + c) as f64).sin());
//! let report = gradcheck::check_layer(&mut ln, &x, &Default::default())?;
//! assert!(report.passed(), "{report}");
//! # Ok::<(), baregpt::Error>(())
//! ```

use std::fmt;

use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, Dimension};
use rand::{SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, StandardNormal};

use crate::layer::LayerInput;
use crate::param::Params;
use crate::{Float, Layer, Result};

/// How the numeric gradient is sampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Perturb every element: exact per-element comparison, two forwards per element.
    Full,
    /// Per tensor, compare directional derivatives along `count` random directions
    /// (`⟨g, d⟩` against `(f(θ + εd) − f(θ − εd)) / 2ε`): two forwards per direction, for big
    /// layers. The "index" of a failure is the direction's number.
    RandomDirections {
        /// Directions per tensor.
        count: usize,
    },
}

/// Options of [`check_layer`]; `None` tolerances take the float type's defaults
/// ([`Float::GRADCHECK_EPS`], [`Float::GRADCHECK_ATOL`], [`Float::GRADCHECK_RTOL`]).
#[derive(Clone, Debug, PartialEq)]
pub struct GradCheckOptions {
    /// Finite-difference step ε.
    pub eps: Option<f64>,
    /// Absolute tolerance.
    pub atol: Option<f64>,
    /// Relative tolerance (relative to the numeric value).
    pub rtol: Option<f64>,
    /// Full or random-direction sampling.
    pub mode: Mode,
    /// Seed of the projection `R` and of random directions.
    pub seed: u64,
    /// Also run forward and backward a second time and require bit-identical gradients.
    pub check_determinism: bool,
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
        }
    }
}

/// The worst element of a tensor: where the error was largest against its tolerance.
#[derive(Clone, Debug, PartialEq)]
pub struct WorstElement {
    /// The element's index (in [`Mode::RandomDirections`], `[direction]`).
    pub index: Vec<usize>,
    /// The backward's value.
    pub analytic: f64,
    /// The finite-difference value.
    pub numeric: f64,
}

/// The comparison for one named tensor (`"input"` or a dotted parameter name).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorReport {
    /// `"input"` or the parameter's dotted name.
    pub name: String,
    /// The tensor's shape.
    pub shape: Vec<usize>,
    /// Elements (or directions) compared.
    pub checked: usize,
    /// How many exceeded `atol + rtol·|numeric|`.
    pub failed: usize,
    /// Largest `|analytic − numeric|`.
    pub max_abs_error: f64,
    /// Largest `|analytic − numeric| / max(|analytic|, |numeric|)`, over elements whose
    /// values exceed `atol` (relative error is meaningless at round-off scale).
    pub max_rel_error: f64,
    /// The element with the largest error relative to its tolerance.
    pub worst: Option<WorstElement>,
    /// The analytic gradient is exactly zero while the numeric one is not: backward never
    /// wrote this gradient.
    pub missing_gradient: bool,
}

impl TensorReport {
    /// Whether every element is within tolerance.
    pub fn passed(&self) -> bool {
        self.failed == 0 && !self.missing_gradient
    }
}

/// The result of [`check_layer`].
#[derive(Clone, Debug, PartialEq)]
pub struct GradCheckReport {
    /// One entry per checked tensor: the input first (if differentiable), then the parameters
    /// in visit order.
    pub tensors: Vec<TensorReport>,
    /// `Some(false)` when two identical backward passes gave different gradients.
    pub deterministic: Option<bool>,
    /// Finite-difference step ε used.
    pub eps: f64,
    /// Absolute tolerance used.
    pub atol: f64,
    /// Relative tolerance used.
    pub rtol: f64,
}

impl GradCheckReport {
    /// Whether every tensor passed and (if checked) the backward is deterministic.
    pub fn passed(&self) -> bool {
        self.tensors.iter().all(TensorReport::passed) && self.deterministic != Some(false)
    }

    /// The tensors that failed.
    pub fn failures(&self) -> impl Iterator<Item = &TensorReport> {
        self.tensors.iter().filter(|t| !t.passed())
    }

    /// The tensor report named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorReport> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The largest relative error over all tensors.
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
        writeln!(
            f,
            "gradcheck {verdict} (eps {:e}, atol {:e}, rtol {:e})",
            self.eps, self.atol, self.rtol
        )?;
        if self.deterministic == Some(false) {
            writeln!(
                f,
                "  backward is not deterministic: two identical passes gave different gradients"
            )?;
        }
        for t in &self.tensors {
            let status = match (t.missing_gradient, t.failed) {
                (true, _) => "MISSING GRADIENT".to_string(),
                (false, 0) => "ok".to_string(),
                (false, n) => format!("FAILED {n}/{}", t.checked),
            };
            write!(
                f,
                "  {:<28} {:<16} {status:<16} max abs {:.2e}  max rel {:.2e}",
                t.name,
                format!("{:?}", t.shape),
                t.max_abs_error,
                t.max_rel_error
            )?;
            if let (false, Some(w)) = (t.passed(), &t.worst) {
                write!(
                    f,
                    "  worst at {:?}: analytic {:.6e}, numeric {:.6e}",
                    w.index, w.analytic, w.numeric
                )?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// The resolved numbers of a check.
#[derive(Clone, Copy)]
struct Tolerance {
    eps: f64,
    atol: f64,
    rtol: f64,
}

/// Finite-difference check of `layer`'s backward at input `x`; see the [module docs](self).
///
/// # Errors
/// Whatever the layer's forward or backward returns for `x` (for example a shape error).
pub fn check_layer<F, X, L>(
    layer: &mut L,
    x: &X,
    options: &GradCheckOptions,
) -> Result<GradCheckReport>
where
    F: Float,
    X: LayerInput<F> + Clone,
    L: Layer<F, X> + ?Sized,
{
    let tol = Tolerance {
        eps: options.eps.unwrap_or(F::GRADCHECK_EPS),
        atol: options.atol.unwrap_or(F::GRADCHECK_ATOL),
        rtol: options.rtol.unwrap_or(F::GRADCHECK_RTOL),
    };
    let saved_grads = collect_grads(layer);
    let result = run_check(layer, x, options, tol);
    restore_grads(layer, &saved_grads);
    result
}

fn run_check<F, X, L>(
    layer: &mut L,
    x: &X,
    options: &GradCheckOptions,
    tol: Tolerance,
) -> Result<GradCheckReport>
where
    F: Float,
    X: LayerInput<F> + Clone,
    L: Layer<F, X> + ?Sized,
{
    let mut rng = StdRng::seed_from_u64(options.seed);
    let y = layer.forward(x)?;
    let projection = y.mapv(|_| F::of(StandardNormal.sample(&mut rng)));
    let (input_grad, param_grads) = analytic_grads(layer, x, &projection)?;
    let deterministic = if options.check_determinism {
        let again = analytic_grads(layer, x, &projection)?;
        Some(again.0 == input_grad && again.1 == param_grads)
    } else {
        None
    };

    let objective = |layer: &mut L, x: &X| -> Result<f64> {
        let y = layer.forward(x)?;
        Ok(y.iter()
            .zip(&projection)
            .map(|(&a, &r)| a.to_f64_exact() * r.to_f64_exact())
            .sum())
    };
    let mut tensors = Vec::new();
    if let Some(analytic) = &input_grad {
        let mut x_work = x.clone();
        let numeric = numeric_grad(
            analytic.view(),
            options.mode,
            &mut rng,
            tol.eps,
            &mut |perturb, evaluate| {
                if let Some(mut view) = x_work.float_view_mut() {
                    perturb(&mut view);
                }
                if evaluate {
                    objective(layer, &x_work)
                } else {
                    Ok(0.0)
                }
            },
        )?;
        tensors.push(compare(
            "input",
            analytic.view(),
            &numeric,
            options.mode,
            tol,
        ));
    }
    for (index, (name, analytic)) in param_grads.iter().enumerate() {
        let numeric = numeric_grad(
            analytic.view(),
            options.mode,
            &mut rng,
            tol.eps,
            &mut |perturb, evaluate| {
                with_param(layer, index, |value| perturb(value));
                if evaluate {
                    objective(layer, x)
                } else {
                    Ok(0.0)
                }
            },
        )?;
        tensors.push(compare(name, analytic.view(), &numeric, options.mode, tol));
    }
    Ok(GradCheckReport {
        tensors,
        deterministic,
        eps: tol.eps,
        atol: tol.atol,
        rtol: tol.rtol,
    })
}

/// Input gradient and named parameter gradients of `Σ y ⊙ R`, from zeroed gradients.
type AnalyticGrads<F> = (Option<ArrayD<F>>, Vec<(String, ArrayD<F>)>);

fn analytic_grads<F, X, L>(
    layer: &mut L,
    x: &X,
    projection: &ndarray::Array3<F>,
) -> Result<AnalyticGrads<F>>
where
    F: Float,
    X: LayerInput<F>,
    L: Layer<F, X> + ?Sized,
{
    layer.forward(x)?;
    layer.zero_grad();
    let dx = layer.backward(projection)?;
    let input_grad = X::grad_view(&dx).map(|g| g.to_owned());
    let mut params = Vec::new();
    layer.for_each_param(&mut |name, p| params.push((name.to_owned(), p.grad.to_owned())));
    Ok((input_grad, params))
}

/// A change applied to a tensor before evaluating the objective.
type Perturb<'a, F> = dyn FnMut(&mut ArrayViewMutD<'_, F>) + 'a;

/// Applies a change to the tensor under test and, if asked, evaluates the objective.
type Eval<'a, F> = dyn FnMut(&mut Perturb<'_, F>, bool) -> Result<f64> + 'a;

/// Element `flat` (in logical order) of `t`.
fn element_mut<'t, F>(t: &'t mut ArrayViewMutD<'_, F>, flat: usize) -> Option<&'t mut F> {
    if t.is_standard_layout() {
        t.as_slice_mut().and_then(|s| s.get_mut(flat))
    } else {
        t.iter_mut().nth(flat)
    }
}

/// Numeric gradient: per element (full) or `(⟨g, d⟩, numeric)` per direction. `eval` applies
/// a perturbation to the tensor under test and returns the objective; every perturbation is
/// undone exactly (the original values are written back, not re-subtracted).
fn numeric_grad<F: Float>(
    analytic: ArrayViewD<'_, F>,
    mode: Mode,
    rng: &mut StdRng,
    eps: f64,
    eval: &mut Eval<'_, F>,
) -> Result<Numeric> {
    match mode {
        Mode::Full => {
            let mut numeric = ArrayD::zeros(analytic.raw_dim());
            for (flat, out) in numeric.iter_mut().enumerate() {
                let mut value_at = |delta: f64| -> Result<f64> {
                    let mut original = F::zero();
                    let shifted = eval(
                        &mut |t| {
                            if let Some(v) = element_mut(t, flat) {
                                original = *v;
                                *v = F::of(v.to_f64_exact() + delta);
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
                    shifted
                };
                let plus = value_at(eps)?;
                let minus = value_at(-eps)?;
                *out = (plus - minus) / (2.0 * eps);
            }
            Ok(Numeric::Elements(numeric))
        }
        Mode::RandomDirections { count } => {
            let mut pairs = Vec::with_capacity(count);
            for _ in 0..count {
                let direction: ArrayD<f64> =
                    ArrayD::from_shape_simple_fn(analytic.raw_dim(), || StandardNormal.sample(rng));
                let mut along = |sign: f64| -> Result<f64> {
                    let mut original = Vec::new();
                    let shifted = eval(
                        &mut |t| {
                            original = t.iter().copied().collect();
                            t.zip_mut_with(&direction, |v, &d| {
                                *v = F::of(v.to_f64_exact() + sign * eps * d)
                            });
                        },
                        true,
                    );
                    eval(
                        &mut |t| t.iter_mut().zip(&original).for_each(|(v, &o)| *v = o),
                        false,
                    )?;
                    shifted
                };
                let plus = along(1.0)?;
                let minus = along(-1.0)?;
                let projected = analytic
                    .iter()
                    .zip(&direction)
                    .map(|(&g, &d)| g.to_f64_exact() * d)
                    .sum();
                pairs.push((projected, (plus - minus) / (2.0 * eps)));
            }
            Ok(Numeric::Directions(pairs))
        }
    }
}

enum Numeric {
    Elements(ArrayD<f64>),
    Directions(Vec<(f64, f64)>),
}

fn compare<F: Float>(
    name: &str,
    analytic: ArrayViewD<'_, F>,
    numeric: &Numeric,
    mode: Mode,
    tol: Tolerance,
) -> TensorReport {
    let pairs: Vec<(Vec<usize>, f64, f64)> = match (numeric, mode) {
        (Numeric::Elements(n), _) => analytic
            .indexed_iter()
            .zip(n.iter())
            .map(|((idx, &a), &n)| (idx.slice().to_vec(), a.to_f64_exact(), n))
            .collect(),
        (Numeric::Directions(d), _) => d
            .iter()
            .enumerate()
            .map(|(i, &(a, n))| (vec![i], a, n))
            .collect(),
    };
    let mut report = TensorReport {
        name: name.to_owned(),
        shape: analytic.shape().to_vec(),
        checked: pairs.len(),
        failed: 0,
        max_abs_error: 0.0,
        max_rel_error: 0.0,
        worst: None,
        missing_gradient: false,
    };
    let mut worst_ratio = -1.0;
    for (index, a, n) in pairs {
        let abs = (a - n).abs();
        let allowed = tol.atol + tol.rtol * n.abs();
        report.max_abs_error = report.max_abs_error.max(abs);
        let scale = a.abs().max(n.abs());
        if scale > tol.atol {
            report.max_rel_error = report.max_rel_error.max(abs / scale);
        }
        if abs.is_nan() || abs > allowed {
            report.failed += 1;
        }
        let ratio = if abs.is_nan() {
            f64::INFINITY
        } else {
            abs / allowed
        };
        if ratio > worst_ratio {
            worst_ratio = ratio;
            report.worst = Some(WorstElement {
                index,
                analytic: a,
                numeric: n,
            });
        }
    }
    let analytic_all_zero = analytic.iter().all(|g| g.is_zero());
    let numeric_nonzero = match numeric {
        Numeric::Elements(n) => n.iter().any(|v| v.abs() > tol.atol),
        Numeric::Directions(d) => d.iter().any(|(_, v)| v.abs() > tol.atol),
    };
    report.missing_gradient = analytic_all_zero && numeric_nonzero;
    report
}

/// Runs `f` on the value of the `index`-th parameter in visit order.
fn with_param<F: Float, L: Params<F> + ?Sized>(
    layer: &mut L,
    index: usize,
    f: impl FnOnce(&mut ArrayViewMutD<'_, F>),
) {
    let mut f = Some(f);
    let mut i = 0;
    layer.for_each_param_mut(&mut |_, mut p| {
        if i == index
            && let Some(f) = f.take()
        {
            f(&mut p.value);
        }
        i += 1;
    });
}

fn collect_grads<F: Float, L: Params<F> + ?Sized>(layer: &L) -> Vec<ArrayD<F>> {
    let mut grads = Vec::new();
    layer.for_each_param(&mut |_, p| grads.push(p.grad.to_owned()));
    grads
}

fn restore_grads<F: Float, L: Params<F> + ?Sized>(layer: &mut L, saved: &[ArrayD<F>]) {
    let mut i = 0;
    layer.for_each_param_mut(&mut |_, mut p| {
        if let Some(g) = saved.get(i) {
            p.grad.assign(g);
        }
        i += 1;
    });
}
