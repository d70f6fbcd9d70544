//! [`check_layer`]: any [`Layer`], its input and every parameter by dotted name.

use ndarray::{Array3, ArrayD, ArrayViewD, ArrayViewMutD};
use rand::{SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, StandardNormal};

use super::contract::{self, Repeatable};
use super::numeric::{Objective, Perturb};
use super::options::{GradCheckOptions, Resolved, unit_roundoff};
use super::report::{ContractViolation, GradCheckReport};
use super::sampling::{self, Target};
use crate::layer::{DropoutMode, LayerInput};
use crate::param::Params;
use crate::{Float, Layer, Result};

/// Finite-difference check of `layer`'s backward at input `x`, and of its contract; see the
/// [module docs](super).
///
/// The layer's parameter values and gradients are restored when the check returns, even
/// when it fails or errors; its cache holds the last perturbed forward.
///
/// **Dropout.** A layer with dropout is checked as one fixed function: the check first sets
/// [`DropoutMode::Hold`] (through [`Layer::set_dropout`]), so every forward it runs reuses
/// the mask of the layer's last training pass (or draws pass 0's if it has none), and sets
/// [`DropoutMode::Train`] when it returns. A layer that was [`Off`](DropoutMode::Off) is
/// therefore checked with its dropout on, and left training: set `Off` again afterwards if
/// you were evaluating. A layer of your own that holds dropout layers must pass
/// `set_dropout` on to them.
///
/// # Errors
/// [`Error::InvalidConfig`](crate::Error::InvalidConfig) for options that cannot check
/// anything; otherwise whatever the layer's forward or backward returns for `x` (for example
/// a shape error).
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
    let tol = options.resolve_for::<F>()?;
    let saved = collect_grads(layer);
    layer.set_dropout(DropoutMode::Hold);
    let result = (|| {
        let mut rng = StdRng::seed_from_u64(tol.seed);
        let mut report = GradCheckReport::new(&tol, F::NAME);
        let mut analytic = analytic_phase(layer, x, &tol, &mut rng, &mut report)?;
        let projection = std::mem::take(&mut analytic.projection);
        numeric_phase(layer, x, &projection, analytic, &tol, &mut rng, &mut report)?;
        Ok(report)
    })();
    restore_grads(layer, &saved);
    layer.set_dropout(DropoutMode::Train);
    result
}

/// What the analytic phase hands the numeric one.
pub(super) struct Analytic<F> {
    /// The projection `R` of the output.
    pub projection: Array3<F>,
    /// `"input"` (if differentiable) then the parameter names.
    pub names: Vec<String>,
    /// Whether the first tensor is the input.
    pub has_input: bool,
    /// Gradients of one backward of `R` from zero, per tensor.
    pub grads: Vec<ArrayD<f64>>,
    /// Contract violations per tensor.
    pub violations: Vec<Vec<ContractViolation>>,
}

/// A layer's backward of `R`, repeatable.
struct LayerRun<'a, F: Float, X, L: ?Sized> {
    layer: &'a mut L,
    x: &'a X,
    projection: &'a Array3<F>,
    has_input: bool,
    forwards: usize,
}

impl<F, X, L> Repeatable for LayerRun<'_, F, X, L>
where
    F: Float,
    X: LayerInput<F>,
    L: Layer<F, X> + ?Sized,
{
    fn zero(&mut self) {
        self.layer.zero_grad();
    }

    fn refresh(&mut self) -> Result<()> {
        self.forwards += 1;
        self.layer.forward(self.x).map(|_| ())
    }

    fn run(&mut self, scale: f64) -> Result<Vec<ArrayD<f64>>> {
        let s = F::of(scale);
        let dx = self.layer.backward(&self.projection.mapv(|r| r * s))?;
        let mut out = Vec::new();
        if self.has_input {
            out.push(widen(X::grad_view(&dx)));
        }
        self.layer
            .for_each_param(&mut |_, p| out.push(widen(Some(p.grad.view()))));
        Ok(out)
    }

    fn accumulates(&self, i: usize) -> bool {
        !(self.has_input && i == 0)
    }
}

/// An `F` array as `f64` (exact); an empty array for `None`.
fn widen<F: Float>(a: Option<ArrayViewD<'_, F>>) -> ArrayD<f64> {
    a.map_or_else(
        || ArrayD::zeros(ndarray::IxDyn(&[0])),
        |a| a.mapv(|v| v.to_f64_exact()),
    )
}

/// Forward, the projection, and the contract checks (which give the analytic gradients).
pub(super) fn analytic_phase<F, X, L>(
    layer: &mut L,
    x: &X,
    tol: &Resolved,
    rng: &mut StdRng,
    report: &mut GradCheckReport,
) -> Result<Analytic<F>>
where
    F: Float,
    X: LayerInput<F> + Clone,
    L: Layer<F, X> + ?Sized,
{
    let y = layer.forward(x)?;
    let projection = y.mapv(|_| F::of(StandardNormal.sample(rng)));
    let has_input = x.clone().float_view_mut().is_some();
    let mut names: Vec<String> = Vec::new();
    if has_input {
        names.push("input".into());
    }
    layer.for_each_param(&mut |name, _| names.push(name.to_owned()));
    let mut run = LayerRun {
        layer,
        x,
        projection: &projection,
        has_input,
        forwards: 1,
    };
    let outcome = contract::check(
        &mut run,
        unit_roundoff::<F>(),
        tol.nondet_tol,
        tol.check_determinism,
    )?;
    report.forward_evals += run.forwards;
    report.deterministic = outcome.deterministic;
    Ok(Analytic {
        projection,
        names,
        has_input,
        grads: outcome.grads,
        violations: outcome.violations,
    })
}

/// `Σ y ⊙ R` and `Σ |y ⊙ R|`.
pub(super) fn objective<G: Float>(y: ArrayViewD<'_, G>, r: ArrayViewD<'_, G>) -> Objective {
    let (mut value, mut magnitude) = (0.0, 0.0);
    for (&a, &b) in y.iter().zip(r.iter()) {
        let p = a.to_f64_exact() * b.to_f64_exact();
        value += p;
        magnitude += p.abs();
    }
    Objective { value, magnitude }
}

/// Finite differences of `layer` (which may be a wider copy of the analytic one) against the
/// analytic phase's gradients; fills `report`.
pub(super) fn numeric_phase<G, X, L, F>(
    layer: &mut L,
    x: &X,
    projection: &Array3<G>,
    analytic: Analytic<F>,
    tol: &Resolved,
    rng: &mut StdRng,
    report: &mut GradCheckReport,
) -> Result<()>
where
    G: Float,
    X: LayerInput<G> + Clone,
    L: Layer<G, X> + ?Sized,
{
    let targets: Vec<Target<'_>> = analytic
        .names
        .iter()
        .zip(&analytic.grads)
        .map(|(name, g)| Target {
            name,
            analytic: vec![g],
        })
        .collect();
    let mut x_work = x.clone();
    let offset = usize::from(analytic.has_input);
    let r = projection.view().into_dyn();
    let mut eval = |t: usize, perturb: &mut Perturb<'_, G>, evaluate: bool| {
        if t < offset {
            if let Some(mut view) = x_work.float_view_mut() {
                perturb(&mut view);
            }
        } else {
            with_param(layer, t - offset, |v| perturb(v));
        }
        if evaluate {
            let y = layer.forward(&x_work)?;
            Ok(vec![objective(y.view().into_dyn(), r.view())])
        } else {
            Ok(Vec::new())
        }
    };
    let (reports, evals) = sampling::sample(&targets, &[None], tol, rng, &mut eval)?;
    report.forward_evals += evals;
    for (mut tensor, violations) in reports.into_iter().flatten().zip(analytic.violations) {
        tensor.contract = violations;
        report.tensors.push(tensor);
    }
    Ok(())
}

/// Runs `f` on the value of the `index`-th parameter in visit order.
pub(super) fn with_param<F: Float, L: Params<F> + ?Sized>(
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

pub(super) fn collect_grads<F: Float, L: Params<F> + ?Sized>(layer: &L) -> Vec<ArrayD<F>> {
    let mut grads = Vec::new();
    layer.for_each_param(&mut |_, p| grads.push(p.grad.to_owned()));
    grads
}

pub(super) fn restore_grads<F: Float, L: Params<F> + ?Sized>(layer: &mut L, saved: &[ArrayD<F>]) {
    let mut i = 0;
    layer.for_each_param_mut(&mut |_, mut p| {
        if let Some(g) = saved.get(i) {
            p.grad.assign(g);
        }
        i += 1;
    });
}
