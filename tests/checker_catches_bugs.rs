//! The gradient checker catches realistic backward bugs in user-written layers, names exactly
//! the broken tensor by its dotted name, passes the correct ones, and leaves the layer as it
//! found it.
//!
//! The buggy layers are written here, outside the crate, through the public `Layer` and `Params` traits
//! and `Param`, the way a user would write their own: parameters listed once with
//! `baregpt::params!`, the computation written once and called from `forward` and `infer_with`.

mod common;

use baregpt::error::check_shape;
use baregpt::gradcheck::{self, ContractKind, GradCheckOptions, GradCheckReport, Mode};
use baregpt::kernels::{DropoutMask, dropout_backward, dropout_forward};
use baregpt::layer::{DropoutMode, DropoutSite, InferState};
use baregpt::layers::{Attention, Gelu, LayerNorm, Linear, Sequential};
use baregpt::param::{Param1, Param2, ParamPath, ParamVisitor, ParamVisitorMut};
use baregpt::prelude::*;
use baregpt::{CrossEntropy, Error, Gpt, GptConfig, Result};
use common::{jitter_params, rng, snapshot};
use ndarray::{Array1, Array2, Array3, Axis};
use rand::RngExt;

/// Which mistake a hand-written backward makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bug {
    /// A correct backward (the control).
    None,
    /// `dW` scaled by 1.1, as from a wrong constant.
    ScaledWeightGrad,
    /// `db` is never written.
    MissingBiasGrad,
    /// `dW` written as `(xᵀ·dy)ᵀ`, as from swapped operands (needs a square `W`).
    TransposedWeightGrad,
    /// `dW` gets a tiny amount that depends on how often backward ran.
    NonDeterministic,
    /// `dW` is assigned (`=`), not added (`+=`): right after `zero_grad`, wrong when
    /// gradients accumulate over micro-batches or a weight is shared.
    OverwriteWeightGrad,
    /// Weight decay folded into backward: `dW += λ·W` even when `dy` is zero.
    DecayInBackward,
}

/// `(B, T, C)` → `(N, C)` rows (test inputs are in standard layout).
fn to_rows(x: &Array3<f64>) -> Array2<f64> {
    let (b, t, c) = x.dim();
    x.to_shape((b * t, c)).unwrap().to_owned()
}

fn from_rows(y: Array2<f64>, b: usize, t: usize) -> Array3<f64> {
    let c = y.ncols();
    y.into_shape_with_order((b, t, c)).unwrap()
}

/// A user's affine layer `y = x·W + b` whose backward may carry one [`Bug`].
struct HandLinear {
    w: Param2<f64>,
    b: Param1<f64>,
    bug: Bug,
    cache: Option<(Array2<f64>, usize, usize)>,
    backward_calls: u32,
}

impl HandLinear {
    fn new(c_in: usize, c_out: usize, bug: Bug, seed: u64) -> Self {
        let mut r = rng(seed);
        let w = Array2::from_shape_simple_fn((c_in, c_out), || r.random::<f64>() - 0.5);
        let b = Array1::from_shape_simple_fn(c_out, || r.random::<f64>() - 0.5);
        Self {
            w: Param2::new(w),
            b: Param1::new(b),
            bug,
            cache: None,
            backward_calls: 0,
        }
    }
}

impl Params<f64> for HandLinear {
    baregpt::params!(f64; w, b);
}

impl HandLinear {
    /// The output and the input rows the backward needs.
    fn compute(&self, x: &Array3<f64>) -> Result<(Array3<f64>, Array2<f64>)> {
        check_shape(
            "HandLinear",
            "input",
            x.shape(),
            &[None, None, Some(self.w.value.nrows())],
        )?;
        let (b, t, _) = x.dim();
        let x_rows = to_rows(x);
        let y = x_rows.dot(&self.w.value) + &self.b.value;
        Ok((from_rows(y, b, t), x_rows))
    }
}

impl Layer<f64> for HandLinear {
    fn kind(&self) -> &'static str {
        "HandLinear"
    }

    fn forward(&mut self, x: &Array3<f64>) -> Result<Array3<f64>> {
        let (y, x_rows) = self.compute(x)?;
        let (b, t, _) = x.dim();
        self.cache = Some((x_rows, b, t));
        Ok(y)
    }

    fn infer_with(&self, x: &Array3<f64>, _: &mut InferState<'_, f64>) -> Result<Array3<f64>> {
        self.compute(x).map(|(y, _)| y)
    }

    fn backward(&mut self, dy: &Array3<f64>) -> Result<Array3<f64>> {
        let (x_rows, b, t) = self.cache.as_ref().ok_or(Error::BackwardBeforeForward {
            layer: "HandLinear",
        })?;
        let c_out = self.w.value.ncols();
        check_shape(
            "HandLinear",
            "dy",
            dy.shape(),
            &[Some(*b), Some(*t), Some(c_out)],
        )?;
        self.backward_calls += 1;
        let dy_rows = to_rows(dy);
        let mut d_w = x_rows.t().dot(&dy_rows);
        match self.bug {
            Bug::ScaledWeightGrad => d_w *= 1.1,
            Bug::TransposedWeightGrad => d_w = d_w.t().to_owned(),
            Bug::NonDeterministic => d_w += 1e-12 * f64::from(self.backward_calls),
            Bug::DecayInBackward => d_w += &(&self.w.value * 1e-3),
            Bug::None | Bug::MissingBiasGrad | Bug::OverwriteWeightGrad => {}
        }
        if self.bug == Bug::OverwriteWeightGrad {
            self.w.grad.assign(&d_w);
        } else {
            self.w.grad += &d_w;
        }
        if self.bug != Bug::MissingBiasGrad {
            self.b.grad += &dy_rows.sum_axis(Axis(0));
        }
        Ok(from_rows(dy_rows.dot(&self.w.value.t()), *b, *t))
    }
}

/// A user's affine LayerNorm whose input gradient drops the `−mean(g)` term:
/// it computes `dx = rstd·(g − x̂·mean(g ⊙ x̂))` instead of
/// `dx = rstd·(g − mean(g) − x̂·mean(g ⊙ x̂))`, with `g = dy ⊙ gamma`. The parameter
/// gradients are right.
struct LayerNormMissingMeanTerm {
    gamma: Param1<f64>,
    beta: Param1<f64>,
    cache: Option<(Array2<f64>, Array1<f64>, usize, usize)>,
}

impl LayerNormMissingMeanTerm {
    const EPS: f64 = 1e-5;

    fn new(c: usize) -> Self {
        Self {
            gamma: Param1::new(Array1::ones(c)),
            beta: Param1::new(Array1::zeros(c)),
            cache: None,
        }
    }
}

impl Params<f64> for LayerNormMissingMeanTerm {
    baregpt::params!(f64; gamma, beta);
}

impl LayerNormMissingMeanTerm {
    /// The output and the normalised rows and reciprocal deviations the backward needs.
    fn compute(&self, x: &Array3<f64>) -> Result<(Array3<f64>, Array2<f64>, Array1<f64>)> {
        let c = self.gamma.value.len();
        check_shape(self.kind(), "input", x.shape(), &[None, None, Some(c)])?;
        let (b, t, _) = x.dim();
        let x_rows = to_rows(x);
        let mean = x_rows.mean_axis(Axis(1)).unwrap().insert_axis(Axis(1));
        let centred = &x_rows - &mean;
        let var = (&centred * &centred).mean_axis(Axis(1)).unwrap();
        let rstd = var.mapv(|v| 1.0 / (v + Self::EPS).sqrt());
        let x_hat = &centred * &rstd.view().insert_axis(Axis(1));
        let y = &x_hat * &self.gamma.value + &self.beta.value;
        Ok((from_rows(y, b, t), x_hat, rstd))
    }
}

impl Layer<f64> for LayerNormMissingMeanTerm {
    fn kind(&self) -> &'static str {
        "LayerNormMissingMeanTerm"
    }

    fn forward(&mut self, x: &Array3<f64>) -> Result<Array3<f64>> {
        let (y, x_hat, rstd) = self.compute(x)?;
        let (b, t, _) = x.dim();
        self.cache = Some((x_hat, rstd, b, t));
        Ok(y)
    }

    fn infer_with(&self, x: &Array3<f64>, _: &mut InferState<'_, f64>) -> Result<Array3<f64>> {
        self.compute(x).map(|(y, _, _)| y)
    }

    fn backward(&mut self, dy: &Array3<f64>) -> Result<Array3<f64>> {
        let (x_hat, rstd, b, t) = self.cache.as_ref().ok_or(Error::BackwardBeforeForward {
            layer: "LayerNormMissingMeanTerm",
        })?;
        let c = self.gamma.value.len();
        check_shape(
            self.kind(),
            "dy",
            dy.shape(),
            &[Some(*b), Some(*t), Some(c)],
        )?;
        let dy_rows = to_rows(dy);
        self.gamma.grad += &(&dy_rows * x_hat).sum_axis(Axis(0));
        self.beta.grad += &dy_rows.sum_axis(Axis(0));
        let g = &dy_rows * &self.gamma.value;
        let mean_g_xhat = (&g * x_hat)
            .mean_axis(Axis(1))
            .unwrap()
            .insert_axis(Axis(1));
        // BUG: `- mean(g)` is missing here.
        let dx = (&g - &(x_hat * &mean_g_xhat)) * rstd.view().insert_axis(Axis(1));
        Ok(from_rows(dx, *b, *t))
    }
}

/// A user's tied-weight bottleneck `y = (x·W)·Wᵀ`, `W (C, K)`, whose weight gradient keeps
/// only the encoder's use of `W`: it computes `dW = xᵀ·(dy·W)` and drops the decoder's term
/// `dyᵀ·(x·W)`. Its input gradient `dx = dy·W·Wᵀ` is right.
struct TiedMissingDecoderTerm {
    w: Param2<f64>,
    cache: Option<(Array2<f64>, usize, usize)>,
}

/// Written by hand rather than with `params!`, as a user may.
impl Params<f64> for TiedMissingDecoderTerm {
    fn visit_params<'a>(&'a self, path: &mut ParamPath, f: &mut ParamVisitor<'a, '_, f64>) {
        path.scoped("w", |path| self.w.visit_params(path, f));
    }

    fn visit_params_mut<'a>(
        &'a mut self,
        path: &mut ParamPath,
        f: &mut ParamVisitorMut<'a, '_, f64>,
    ) {
        path.scoped("w", |path| self.w.visit_params_mut(path, f));
    }
}

impl TiedMissingDecoderTerm {
    /// The output and the input rows the backward needs.
    fn compute(&self, x: &Array3<f64>) -> Result<(Array3<f64>, Array2<f64>)> {
        let c = self.w.value.nrows();
        check_shape(self.kind(), "input", x.shape(), &[None, None, Some(c)])?;
        let (b, t, _) = x.dim();
        let x_rows = to_rows(x);
        let y = x_rows.dot(&self.w.value).dot(&self.w.value.t());
        Ok((from_rows(y, b, t), x_rows))
    }
}

impl Layer<f64> for TiedMissingDecoderTerm {
    fn kind(&self) -> &'static str {
        "TiedMissingDecoderTerm"
    }

    fn forward(&mut self, x: &Array3<f64>) -> Result<Array3<f64>> {
        let (y, x_rows) = self.compute(x)?;
        let (b, t, _) = x.dim();
        self.cache = Some((x_rows, b, t));
        Ok(y)
    }

    fn infer_with(&self, x: &Array3<f64>, _: &mut InferState<'_, f64>) -> Result<Array3<f64>> {
        self.compute(x).map(|(y, _)| y)
    }

    fn backward(&mut self, dy: &Array3<f64>) -> Result<Array3<f64>> {
        let (x_rows, b, t) = self.cache.as_ref().ok_or(Error::BackwardBeforeForward {
            layer: "TiedMissingDecoderTerm",
        })?;
        let c = self.w.value.nrows();
        check_shape(
            self.kind(),
            "dy",
            dy.shape(),
            &[Some(*b), Some(*t), Some(c)],
        )?;
        let dy_rows = to_rows(dy);
        let dy_w = dy_rows.dot(&self.w.value);
        // BUG: `+ dyᵀ·(x·W)` is missing here.
        self.w.grad += &x_rows.t().dot(&dy_w);
        Ok(from_rows(dy_w.dot(&self.w.value.t()), *b, *t))
    }
}

const C: usize = 5;

fn input() -> Array3<f64> {
    Array3::from_shape_fn((2, 3, C), |(b, t, c)| {
        ((7 * b + 3 * t + c) as f64 * 0.77).sin() * 1.5
    })
}

/// `LayerNorm → HandLinear(bug) → Gelu`: parameters `0.gamma`, `0.beta`, `1.w`, `1.b`.
fn net_with(bug: Bug) -> Sequential<f64> {
    let mut net = Sequential::new()
        .push(LayerNorm::new(C).unwrap())
        .push(HandLinear::new(C, C, bug, 3))
        .push(Gelu::new());
    jitter_params(&mut net, 8, 0.4);
    net
}

fn check(layer: &mut dyn Layer<f64>, mode: Mode) -> GradCheckReport {
    let options = GradCheckOptions {
        mode,
        ..Default::default()
    };
    gradcheck::check_layer(layer, &input(), &options).unwrap()
}

/// The line of the report's `Display` that describes tensor `name`.
fn report_line(text: &str, name: &str) -> String {
    text.lines()
        .find(|line| line.trim_start().starts_with(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no line for `{name}` in\n{text}"))
        .to_owned()
}

/// The report fails, names exactly `broken` among its failures, passes every other tensor,
/// and says so in its `Display`.
fn assert_only_broken(report: &GradCheckReport, broken: &str, status: &str) {
    let text = report.to_string();
    assert!(!report.passed(), "{text}");
    assert!(text.starts_with("gradcheck FAILED"), "{text}");
    let failed: Vec<&str> = report.failures().map(|t| t.name.as_str()).collect();
    assert_eq!(failed, [broken], "{text}");
    assert!(report_line(&text, broken).contains(status), "{text}");
    for t in report.tensors.iter().filter(|t| t.name != broken) {
        assert!(t.passed(), "`{}` should pass:\n{text}", t.name);
        assert!(report_line(&text, &t.name).contains(" ok "), "{text}");
    }
}

#[test]
fn correct_hand_written_layer_passes() {
    let mut net = net_with(Bug::None);
    // The hand-written `infer_with` is the forward's computation, bit for bit.
    assert!(net.infer(&input()).unwrap() == net.forward(&input()).unwrap());
    for mode in [Mode::Full, Mode::Fast { directions: 4 }] {
        let report = check(&mut net, mode);
        assert!(report.passed(), "{report}");
        assert_eq!(report.tensors.len(), 5, "{report}");
    }
}

#[test]
fn catches_a_scaled_weight_gradient() {
    let report = check(&mut net_with(Bug::ScaledWeightGrad), Mode::Full);
    assert_only_broken(&report, "1.w", "FAILED");
    let w = report.tensor("1.w").unwrap();
    assert_eq!(w.failed, w.checked, "every element is 10% off:\n{report}");
    let worst = w.worst.as_ref().unwrap();
    assert!(
        (worst.analytic / worst.numeric - 1.1).abs() < 1e-4,
        "{report}"
    );
}

#[test]
fn fast_mode_catches_a_scaled_weight_gradient_and_locates_it() {
    let report = check(
        &mut net_with(Bug::ScaledWeightGrad),
        Mode::Fast { directions: 3 },
    );
    assert_only_broken(&report, "1.w", "FAILED");
    // The failing tensor alone was checked again in full: element indices, every one off.
    let w = report.tensor("1.w").unwrap();
    assert!(w.localized, "{report}");
    assert_eq!((w.checked, w.failed), (C * C, C * C), "{report}");
    assert_eq!(w.worst.as_ref().unwrap().index.len(), 2, "{report}");
    // The passing tensors stayed directional.
    let b = report.tensor("1.b").unwrap();
    assert!(!b.localized && b.checked == 3, "{report}");
}

#[test]
fn catches_a_dropped_term_in_the_input_gradient() {
    // The buggy LayerNorm comes first, so only the input gradient is wrong.
    let mut net = Sequential::new()
        .push(LayerNormMissingMeanTerm::new(C))
        .push(Linear::new(C, 3, true, &mut rng(4)).unwrap());
    jitter_params(&mut net, 9, 0.4);
    let report = check(&mut net, Mode::Full);
    assert_only_broken(&report, "input", "FAILED");
    assert_eq!(
        report
            .tensors
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["input", "0.gamma", "0.beta", "1.w", "1.b"]
    );
}

#[test]
fn catches_a_dropped_term_in_a_tied_weight_gradient() {
    let mut r = rng(6);
    let w = Array2::from_shape_simple_fn((C, 2), || r.random::<f64>() - 0.5);
    let mut net = Sequential::new()
        .push(LayerNorm::new(C).unwrap())
        .push(Sequential::new().push(TiedMissingDecoderTerm {
            w: Param2::new(w),
            cache: None,
        }));
    jitter_params(&mut net, 10, 0.4);
    let report = check(&mut net, Mode::Full);
    assert_only_broken(&report, "1.0.w", "FAILED");
}

#[test]
fn catches_a_missing_parameter_gradient() {
    let report = check(&mut net_with(Bug::MissingBiasGrad), Mode::Full);
    assert_only_broken(&report, "1.b", "MISSING GRADIENT");
    let b = report.tensor("1.b").unwrap();
    assert!(b.missing_gradient, "{report}");
    assert!(
        report
            .tensors
            .iter()
            .filter(|t| t.name != "1.b")
            .all(|t| !t.missing_gradient)
    );
}

#[test]
fn catches_a_transposed_weight_gradient() {
    let report = check(&mut net_with(Bug::TransposedWeightGrad), Mode::Full);
    assert_only_broken(&report, "1.w", "FAILED");
    // The diagonal of a transposed square matrix is right; only off-diagonal elements fail.
    let w = report.tensor("1.w").unwrap();
    assert!(w.failed > 0 && w.failed <= C * C - C, "{report}");
    let index = &w.worst.as_ref().unwrap().index;
    assert_ne!(index[0], index[1], "{report}");
}

#[test]
fn determinism_check_catches_a_non_deterministic_backward() {
    let mut net = net_with(Bug::NonDeterministic);
    let report = check(&mut net, Mode::Full);
    let text = report.to_string();
    assert_eq!(report.deterministic, Some(false), "{text}");
    // The drift (1e-12) is far below the finite-difference tolerances: only the determinism
    // check sees it, on the tensor that drifts, and it is not blamed on accumulation.
    assert_only_broken(&report, "1.w", "NOT DETERMINISTIC");
    let w = report.tensor("1.w").unwrap();
    assert_eq!(w.failed, 0, "{text}");
    let kinds: Vec<ContractKind> = w.contract.iter().map(|v| v.kind).collect();
    assert_eq!(kinds, [ContractKind::NotDeterministic], "{text}");
    assert!(text.contains("not deterministic"), "{text}");

    // A non-determinism tolerance above the drift accepts it (the accumulation and
    // linearity checks then allow it too).
    let options = GradCheckOptions {
        nondeterminism_tol: 1e-9,
        ..Default::default()
    };
    let report = gradcheck::check_layer(&mut net, &input(), &options).unwrap();
    assert_eq!(report.deterministic, Some(true));
    assert!(report.passed(), "{report}");

    let options = GradCheckOptions {
        check_determinism: false,
        nondeterminism_tol: 1e-9,
        ..Default::default()
    };
    let report = gradcheck::check_layer(&mut net, &input(), &options).unwrap();
    assert_eq!(report.deterministic, None);
    assert!(report.passed(), "{report}");

    let report = check(&mut net_with(Bug::None), Mode::Full);
    assert_eq!(report.deterministic, Some(true), "{report}");
}

/// Fills every gradient with something non-zero, checks, and requires the values and
/// gradients to be bit-for-bit what they were.
fn assert_restored<X, L>(layer: &mut L, x: &X)
where
    X: baregpt::LayerInput<f64> + Clone,
    L: Layer<f64, X> + ?Sized,
{
    let y = layer.forward(x).unwrap();
    layer.backward(&y.mapv(|v| v.cos() + 0.25)).unwrap();
    let before = snapshot(layer);
    assert!(
        before
            .iter()
            .any(|(_, _, g)| g.iter().any(|&g| f64::from_bits(g) != 0.0))
    );
    for mode in [Mode::Full, Mode::Fast { directions: 2 }] {
        let options = GradCheckOptions {
            mode,
            ..Default::default()
        };
        gradcheck::check_layer(layer, x, &options).unwrap();
        assert!(
            snapshot(layer) == before,
            "check_layer changed the layer ({mode:?})"
        );
    }
    assert!(
        layer.forward(x).unwrap() == y,
        "the forward changed after the check"
    );
}

#[test]
fn check_layer_restores_values_and_gradients_exactly() {
    assert_restored(&mut net_with(Bug::None), &input());
    // A failing check restores too.
    assert_restored(&mut net_with(Bug::TransposedWeightGrad), &input());

    let cfg = GptConfig {
        mlp_hidden: 8,
        final_norm: true,
        ..GptConfig::with_sizes(7, 4, 2, 1, 4)
    };
    let mut gpt = Gpt::<f64>::new(cfg, &mut rng(1)).unwrap();
    assert_restored(&mut gpt, &ndarray::array![[1, 5, 2], [6, 0, 0]]);
}

#[test]
fn a_check_that_errors_leaves_the_layer_unchanged() {
    let mut net = net_with(Bug::None);
    let x = input();
    let y = net.forward(&x).unwrap();
    net.backward(&y).unwrap();
    let before = snapshot(&net);
    let wrong = Array3::<f64>::zeros((1, 2, C + 1));
    let err = gradcheck::check_layer(&mut net, &wrong, &GradCheckOptions::default()).unwrap_err();
    assert!(err.to_string().contains("LayerNorm"), "{err}");
    assert!(snapshot(&net) == before);
}

#[test]
fn catches_an_overwrite_instead_of_an_accumulation() {
    let mut net = net_with(Bug::OverwriteWeightGrad);
    let report = check(&mut net, Mode::Full);
    // Distinct from a wrong value: the values are right, the contract is not.
    assert_only_broken(&report, "1.w", "OVERWRITES");
    let w = report.tensor("1.w").unwrap();
    assert_eq!(w.failed, 0, "{report}");
    let v = w
        .violation(ContractKind::Overwrites)
        .expect("an overwrite violation");
    // After two backwards the gradient holds one backward's worth: half the expected value.
    assert!(
        (v.actual * 2.0 - v.expected).abs() < 1e-12 * v.expected.abs(),
        "{report}"
    );
    assert!(
        report.to_string().contains("`=` instead of `+=`"),
        "{report}"
    );
}

#[test]
fn catches_a_zero_cotangent_that_adds() {
    let report = check(&mut net_with(Bug::DecayInBackward), Mode::Full);
    let text = report.to_string();
    let failed: Vec<&str> = report.failures().map(|t| t.name.as_str()).collect();
    assert_eq!(failed, ["1.w"], "{text}");
    let w = report.tensor("1.w").unwrap();
    let zero = w
        .violation(ContractKind::ZeroCotangentAdds)
        .expect("a zero-cotangent violation");
    // The amount added is λ·W at that element.
    assert!(zero.actual != zero.expected, "{text}");
    assert!(w.violation(ContractKind::NotLinear).is_some(), "{text}");
    assert!(w.violation(ContractKind::Overwrites).is_none(), "{text}");
    assert!(text.contains("ZERO DY ADDS"), "{text}");
}

/// A layer written generically over `F` whose backward scales its input gradient by
/// `factor`: `factor = 1.01` is a 1% error.
struct ScaleInputGrad<L> {
    inner: L,
    factor: f64,
}

impl<F: Float, L: Params<F>> Params<F> for ScaleInputGrad<L> {
    fn visit_params<'a>(&'a self, path: &mut ParamPath, f: &mut ParamVisitor<'a, '_, F>) {
        self.inner.visit_params(path, f);
    }

    fn visit_params_mut<'a>(
        &'a mut self,
        path: &mut ParamPath,
        f: &mut ParamVisitorMut<'a, '_, F>,
    ) {
        self.inner.visit_params_mut(path, f);
    }
}

impl<F: Float, L: Layer<F>> Layer<F> for ScaleInputGrad<L> {
    fn kind(&self) -> &'static str {
        "ScaleInputGrad"
    }

    fn forward(&mut self, x: &Array3<F>) -> Result<Array3<F>> {
        self.inner.forward(x)
    }

    fn infer_with(&self, x: &Array3<F>, state: &mut InferState<'_, F>) -> Result<Array3<F>> {
        self.inner.infer_with(x, state)
    }

    fn backward(&mut self, dy: &Array3<F>) -> Result<Array3<F>> {
        let factor = F::of(self.factor);
        Ok(self.inner.backward(dy)?.mapv(|v| v * factor))
    }
}

/// An f32 LayerNorm, attention or loss head with its input gradient scaled by `factor`,
/// checked against its f64 twin.
fn f32_report(part: &str, factor: f64, mode: Mode) -> GradCheckReport {
    let x = input().mapv(|v| v as f32);
    let options = GradCheckOptions {
        mode,
        ..Default::default()
    };
    match part {
        "layer_norm" => {
            let mut ln = LayerNorm::<f32>::new(C).unwrap();
            jitter_params(&mut ln, 21, 0.4);
            let mut layer = ScaleInputGrad { inner: ln, factor };
            let mut twin = LayerNorm::<f64>::new(C).unwrap();
            gradcheck::check_layer_f32(&mut layer, &mut twin, &x, &options).unwrap()
        }
        "attention" => {
            let attn = Attention::<f32>::new(6, 2, &mut rng(22)).unwrap();
            let mut layer = ScaleInputGrad {
                inner: attn,
                factor,
            };
            let mut twin = Attention::<f64>::new(6, 2, &mut rng(0)).unwrap();
            let x = Array3::from_shape_fn((2, 4, 6), |(b, t, c)| {
                ((5 * b + 3 * t + c) as f32 * 0.61).sin()
            });
            gradcheck::check_layer_f32(&mut layer, &mut twin, &x, &options).unwrap()
        }
        "loss_head" => {
            let targets = Array2::from_shape_fn((2, 3), |(b, t)| (2 * b + t) % C);
            let mut head = CrossEntropy::<f32>::new();
            head.set_targets(targets.clone());
            let mut layer = ScaleInputGrad {
                inner: head,
                factor,
            };
            let mut twin = CrossEntropy::<f64>::new();
            twin.set_targets(targets);
            gradcheck::check_layer_f32(&mut layer, &mut twin, &x.mapv(|v| 2.0 * v), &options)
                .unwrap()
        }
        other => panic!("no part {other}"),
    }
}

#[test]
fn the_f32_check_catches_a_1_percent_error_in_an_f32_backward() {
    for part in ["layer_norm", "attention", "loss_head"] {
        let correct = f32_report(part, 1.0, Mode::Full);
        assert!(correct.passed(), "{part}: {correct}");
        assert_eq!(correct.unreliable(), 0, "{part}: {correct}");
        let broken = f32_report(part, 1.01, Mode::Full);
        assert_only_broken(&broken, "input", "FAILED");
        let w = broken.tensor("input").unwrap().worst.clone().unwrap();
        assert!(
            (w.analytic / w.numeric - 1.01).abs() < 1e-3,
            "{part}: {broken}"
        );
    }
    // The same 1% error passes a check done in f32 alone: why the f32 check exists.
    let mut ln = ScaleInputGrad {
        inner: LayerNorm::<f32>::new(C).unwrap(),
        factor: 1.01,
    };
    let alone = gradcheck::check_layer(&mut ln, &input().mapv(|v| v as f32), &Default::default());
    assert!(alone.unwrap().passed());
}

/// The smallest relative error in the input gradient (from a grid) that the f32 check flags,
/// for the closing note; every part must flag 1% and pass 0%.
#[test]
fn smallest_relative_error_the_f32_check_catches() {
    let grid = [1e-2, 5e-3, 2e-3, 1e-3, 5e-4, 2e-4, 1e-4, 5e-5, 2e-5, 1e-5];
    for part in ["layer_norm", "attention", "loss_head"] {
        let caught: Vec<f64> = grid
            .iter()
            .copied()
            .take_while(|&d| !f32_report(part, 1.0 + d, Mode::Full).passed())
            .collect();
        let smallest = caught.last().copied();
        eprintln!(
            "f32 check, {part}: smallest input-gradient error caught {smallest:?} (grid {grid:?})"
        );
        assert!(smallest.is_some_and(|d| d <= 1e-2), "{part}");
    }
}

/// `linear_backward` as a function: `grads = [dx, dW, db]`; `overwrite` assigns `dW`.
fn linear_case(overwrite: bool, mode: Mode) -> GradCheckReport {
    use baregpt::gradcheck::{as_dim, as_dim_mut};
    use baregpt::kernels::{linear_backward, linear_forward};
    let mut r = rng(30);
    let mut draw = |shape: &[usize]| {
        ndarray::ArrayD::from_shape_simple_fn(shape, || r.random::<f64>() * 2.0 - 1.0)
    };
    let inputs = [
        ("x", draw(&[3, 4])),
        ("w", draw(&[4, 5])),
        ("b", draw(&[5])),
    ];
    let options = GradCheckOptions {
        mode,
        ..Default::default()
    };
    gradcheck::check_fn(
        &inputs,
        &["y"],
        |i| {
            let b = as_dim(&i[2])?;
            Ok(vec![
                linear_forward(as_dim(&i[0])?, as_dim(&i[1])?, Some(b))?.into_dyn(),
            ])
        },
        |i, dy, grads| {
            let [dx, dw, db] = grads else {
                unreachable!("three inputs")
            };
            let (x, w, dy) = (as_dim(&i[0])?, as_dim(&i[1])?, as_dim(&dy[0])?);
            let mut fresh = ndarray::Array2::zeros(w.raw_dim());
            let target = if overwrite {
                fresh.view_mut()
            } else {
                as_dim_mut(dw)?
            };
            let dx_new = linear_backward(x, w, dy, target, Some(as_dim_mut(db)?))?;
            if overwrite {
                dw.assign(&fresh.into_dyn());
            }
            *dx += &dx_new.into_dyn();
            Ok(())
        },
        &options,
    )
    .unwrap()
}

/// `attention_backward(q, k, v, probs, d_ctx)` as a function of `(q, k, v)`, with `dk`
/// scaled by `dk_factor`.
fn attention_case(dk_factor: f64, mode: Mode) -> GradCheckReport {
    use baregpt::gradcheck::as_dim;
    use baregpt::kernels::{attention_backward, attention_forward};
    let mut r = rng(31);
    let mut draw =
        || ndarray::ArrayD::from_shape_simple_fn(&[2, 3, 4][..], || r.random::<f64>() * 2.0 - 1.0);
    let inputs = [("q", draw()), ("k", draw()), ("v", draw())];
    let options = GradCheckOptions {
        mode,
        ..Default::default()
    };
    gradcheck::check_fn(
        &inputs,
        &["ctx"],
        |i| {
            let (ctx, _) = attention_forward(as_dim(&i[0])?, as_dim(&i[1])?, as_dim(&i[2])?, 2)?;
            Ok(vec![ctx.into_dyn()])
        },
        |i, d, grads| {
            let (q, k, v) = (as_dim(&i[0])?, as_dim(&i[1])?, as_dim(&i[2])?);
            let (_, probs) = attention_forward(q, k, v, 2)?;
            let (dq, dk, dv) = attention_backward(q, k, v, probs.view(), as_dim(&d[0])?)?;
            grads[0] += &dq.into_dyn();
            grads[1] += &(dk * dk_factor).into_dyn();
            grads[2] += &dv.into_dyn();
            Ok(())
        },
        &options,
    )
    .unwrap()
}

/// A two-output function `(x, w) ↦ (x ⊙ w, sin x)` whose backward gets `∂(sin x)/∂x` wrong
/// (`cos x` scaled by 1.02) when `bug` is set.
fn two_outputs_case(bug: bool, mode: Mode) -> GradCheckReport {
    let x = ndarray::ArrayD::from_shape_fn(&[2, 3][..], |i| (i[0] * 3 + i[1]) as f64 * 0.4 - 1.0);
    let w = x.mapv(|v| 0.5 - v * v);
    let options = GradCheckOptions {
        mode,
        ..Default::default()
    };
    gradcheck::check_fn(
        &[("x", x), ("w", w)],
        &["prod", "sin"],
        |i| Ok(vec![&i[0] * &i[1], i[0].mapv(f64::sin)]),
        |i, d, grads| {
            let slope = if bug { 1.02 } else { 1.0 };
            grads[0] += &(&d[0] * &i[1] + &(&d[1] * &i[0].mapv(|v| slope * v.cos())));
            grads[1] += &(&d[0] * &i[0]);
            Ok(())
        },
        &options,
    )
    .unwrap()
}

/// The failing `(output, input)` pairs of a function report.
fn failing_pairs(report: &GradCheckReport) -> Vec<(String, String)> {
    report
        .failures()
        .map(|t| (t.output.clone().unwrap_or_default(), t.name.clone()))
        .collect()
}

#[test]
fn catches_a_wrong_gradient_for_one_input_of_a_several_input_kernel() {
    let correct = attention_case(1.0, Mode::Full);
    assert!(correct.passed(), "{correct}");
    let broken = attention_case(1.05, Mode::Full);
    let text = broken.to_string();
    assert_eq!(
        failing_pairs(&broken),
        [("ctx".into(), "k".into())],
        "{text}"
    );
    assert!(report_line(&text, "∂ctx/∂k").contains("FAILED"), "{text}");
    for ok in ["∂ctx/∂q", "∂ctx/∂v"] {
        assert!(report_line(&text, ok).contains(" ok "), "{text}");
    }
}

#[test]
fn catches_a_wrong_pair_of_a_several_output_function() {
    let correct = two_outputs_case(false, Mode::Full);
    assert!(correct.passed(), "{correct}");
    assert_eq!(correct.tensors.len(), 4, "{correct}");
    let broken = two_outputs_case(true, Mode::Full);
    assert_eq!(
        failing_pairs(&broken),
        [("sin".into(), "x".into())],
        "{broken}"
    );
    // `∂sin/∂w` is zero on both sides, and passes.
    assert!(broken.pair("sin", "w").unwrap().passed(), "{broken}");
}

#[test]
fn catches_an_overwriting_kernel_gradient() {
    assert!(linear_case(false, Mode::Full).passed());
    let broken = linear_case(true, Mode::Full);
    assert_eq!(
        failing_pairs(&broken),
        [("y".into(), "w".into())],
        "{broken}"
    );
    let w = broken.pair("y", "w").unwrap();
    assert_eq!(w.failed, 0, "{broken}");
    assert!(w.violation(ContractKind::Overwrites).is_some(), "{broken}");
}

/// Every bug of this file, as the names of what the full check flags and the fast check's
/// report of the same.
fn every_bug(mode: Mode) -> Vec<(&'static str, Vec<String>)> {
    let names = |r: &GradCheckReport| -> Vec<String> { r.failures().map(|t| t.label()).collect() };
    let mut out = Vec::new();
    for (what, bug) in [
        ("scaled weight gradient", Bug::ScaledWeightGrad),
        ("missing bias gradient", Bug::MissingBiasGrad),
        ("transposed weight gradient", Bug::TransposedWeightGrad),
        ("non-deterministic backward", Bug::NonDeterministic),
        ("overwrite instead of accumulate", Bug::OverwriteWeightGrad),
        ("zero cotangent adds", Bug::DecayInBackward),
    ] {
        out.push((what, names(&check(&mut net_with(bug), mode))));
    }
    let mut ln = Sequential::new()
        .push(LayerNormMissingMeanTerm::new(C))
        .push(Linear::new(C, 3, true, &mut rng(4)).unwrap());
    jitter_params(&mut ln, 9, 0.4);
    out.push(("dropped input-gradient term", names(&check(&mut ln, mode))));
    let mut r = rng(6);
    let w = Array2::from_shape_simple_fn((C, 2), || r.random::<f64>() - 0.5);
    let mut tied = Sequential::new()
        .push(LayerNorm::new(C).unwrap())
        .push(Sequential::new().push(TiedMissingDecoderTerm {
            w: Param2::new(w),
            cache: None,
        }));
    jitter_params(&mut tied, 10, 0.4);
    out.push(("dropped tied-weight term", names(&check(&mut tied, mode))));
    for part in ["layer_norm", "attention", "loss_head"] {
        out.push((
            "1% error in an f32 backward",
            names(&f32_report(part, 1.01, mode)),
        ));
    }
    out.push(("wrong dk of attention", names(&attention_case(1.05, mode))));
    out.push((
        "wrong pair of a two-output function",
        names(&two_outputs_case(true, mode)),
    ));
    out.push(("overwriting kernel", names(&linear_case(true, mode))));
    out
}

#[test]
fn fast_mode_catches_every_bug_the_full_mode_catches() {
    let full = every_bug(Mode::Full);
    let fast = every_bug(Mode::Fast { directions: 2 });
    for ((what, full), (_, fast)) in full.iter().zip(&fast) {
        assert!(!full.is_empty(), "full mode misses: {what}");
        assert_eq!(full, fast, "{what}");
    }
}

/// Prints, for the closing note, the report line of each bug class (run with --nocapture).
#[test]
fn report_lines_of_every_bug_class() {
    let line = |r: &GradCheckReport, label: &str| {
        let text = r.to_string();
        let mut lines = text
            .lines()
            .skip_while(|l| !l.trim_start().starts_with(&format!("{label} ")));
        let first = lines.next().unwrap_or_default().trim().to_owned();
        let contract: Vec<String> = lines
            .take_while(|l| l.starts_with("      "))
            .map(|l| l.trim().to_owned())
            .collect();
        (first, contract)
    };
    let cases: Vec<(&str, GradCheckReport, &str)> = vec![
        (
            "scaled weight gradient",
            check(&mut net_with(Bug::ScaledWeightGrad), Mode::Full),
            "1.w",
        ),
        (
            "missing bias gradient",
            check(&mut net_with(Bug::MissingBiasGrad), Mode::Full),
            "1.b",
        ),
        (
            "transposed weight gradient",
            check(&mut net_with(Bug::TransposedWeightGrad), Mode::Full),
            "1.w",
        ),
        (
            "non-deterministic backward",
            check(&mut net_with(Bug::NonDeterministic), Mode::Full),
            "1.w",
        ),
        (
            "overwrite instead of accumulate",
            check(&mut net_with(Bug::OverwriteWeightGrad), Mode::Full),
            "1.w",
        ),
        (
            "zero cotangent adds",
            check(&mut net_with(Bug::DecayInBackward), Mode::Full),
            "1.w",
        ),
        (
            "1% error in an f32 LayerNorm backward",
            f32_report("layer_norm", 1.01, Mode::Full),
            "input",
        ),
        (
            "wrong dk of the attention kernel",
            attention_case(1.05, Mode::Full),
            "∂ctx/∂k",
        ),
        (
            "overwriting linear kernel",
            linear_case(true, Mode::Full),
            "∂y/∂w",
        ),
        (
            "fast mode, scaled weight gradient",
            check(
                &mut net_with(Bug::ScaledWeightGrad),
                Mode::Fast { directions: 2 },
            ),
            "1.w",
        ),
    ];
    for (what, report, label) in &cases {
        let (first, contract) = line(report, label);
        assert!(!report.passed(), "{what}: {report}");
        eprintln!("{what}:\n    {first}");
        for c in contract {
            eprintln!("        {c}");
        }
    }
}

/// Which mistake a hand-written dropout backward makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DropBug {
    /// A correct backward (the control).
    None,
    /// The mask regenerated from the site's advanced counter: the next pass's, not this one's.
    NextPassMask,
    /// The kept elements passed through unscaled: `1/(1 − p)` forgotten.
    ForgetsScale,
}

/// A user's dropout layer on [`DropoutSite`] and the mask kernels, whose backward may carry
/// one [`DropBug`].
struct HandDropout {
    site: DropoutSite,
    mask: Option<(Option<DropoutMask>, (usize, usize, usize))>,
    bug: DropBug,
}

impl Params<f64> for HandDropout {
    baregpt::params!(f64;);
}

impl Layer<f64> for HandDropout {
    fn kind(&self) -> &'static str {
        "HandDropout"
    }

    fn forward(&mut self, x: &Array3<f64>) -> Result<Array3<f64>> {
        let mask = self.site.next_mask();
        let y = mask.map_or_else(|| x.clone(), |m| dropout_forward(x.view(), &m));
        self.mask = Some((mask, y.dim()));
        Ok(y)
    }

    fn infer_with(&self, x: &Array3<f64>, _: &mut InferState<'_, f64>) -> Result<Array3<f64>> {
        Ok(x.clone())
    }

    fn backward(&mut self, dy: &Array3<f64>) -> Result<Array3<f64>> {
        let (mask, shape) = self.mask.ok_or(Error::BackwardBeforeForward {
            layer: "HandDropout",
        })?;
        check_shape(
            "HandDropout",
            "dy",
            dy.shape(),
            &[Some(shape.0), Some(shape.1), Some(shape.2)],
        )?;
        let Some(mask) = mask else {
            return Ok(dy.clone());
        };
        Ok(match self.bug {
            DropBug::None => dropout_backward(dy.view(), &mask),
            DropBug::NextPassMask => {
                let next = DropoutMask::new(self.site.p(), self.site.seed(), self.site.passes())?;
                dropout_backward(dy.view(), &next)
            }
            DropBug::ForgetsScale => {
                let mut dx = dy.clone();
                for (i, v) in dx.iter_mut().enumerate() {
                    if !mask.keeps(i as u64) {
                        *v = 0.0;
                    }
                }
                dx
            }
        })
    }

    fn set_dropout(&mut self, mode: DropoutMode) {
        self.site.set_mode(mode);
    }
}

/// `HandDropout(bug, p = 0.3) → LayerNorm → HandLinear → Gelu`: a dropout bug shows in the
/// input gradient only, since every parameter comes after it.
fn dropout_net(bug: DropBug) -> Sequential<f64> {
    let mut net = Sequential::new()
        .push(HandDropout {
            site: DropoutSite::new(0.3, 17).unwrap(),
            mask: None,
            bug,
        })
        .push(LayerNorm::new(C).unwrap())
        .push(HandLinear::new(C, C, Bug::None, 3))
        .push(Gelu::new());
    jitter_params(&mut net, 8, 0.4);
    net.forward(&input()).unwrap(); // a training pass: the check holds its mask
    net
}

#[test]
fn a_correct_dropout_backward_passes_with_its_mask_held() {
    let mut net = dropout_net(DropBug::None);
    let report = check(&mut net, Mode::Full);
    assert!(report.passed(), "{report}");
    // The same layer and the kernel's dropout agree: the mask really was on.
    assert_ne!(net.forward(&input()).unwrap(), net.infer(&input()).unwrap());
}

#[test]
fn catches_a_dropout_backward_that_uses_another_pass_mask() {
    let report = check(&mut dropout_net(DropBug::NextPassMask), Mode::Full);
    assert_only_broken(&report, "input", "FAIL");
}

#[test]
fn catches_a_dropout_backward_that_forgets_the_scale() {
    let report = check(&mut dropout_net(DropBug::ForgetsScale), Mode::Full);
    assert_only_broken(&report, "input", "FAIL");
    let fast = check(
        &mut dropout_net(DropBug::ForgetsScale),
        Mode::Fast { directions: 3 },
    );
    assert!(!fast.passed(), "{fast}");
}

#[test]
fn without_hold_a_dropout_layer_is_a_different_function_each_forward() {
    // What the checker's Hold prevents: a training-mode forward is random, so a layer that
    // ignored set_dropout could not be checked. Two training forwards differ.
    let mut net = dropout_net(DropBug::None);
    net.set_dropout(DropoutMode::Train);
    assert_ne!(
        net.forward(&input()).unwrap(),
        net.forward(&input()).unwrap()
    );
    // After a check the layer trains again (the documented mode it is left in).
    check(&mut net, Mode::Full);
    assert_ne!(
        net.forward(&input()).unwrap(),
        net.forward(&input()).unwrap()
    );
}
