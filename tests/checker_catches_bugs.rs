//! The gradient checker catches realistic backward bugs in user-written layers, names exactly
//! the broken tensor by its dotted name, passes the correct ones, and leaves the layer as it
//! found it.
//!
//! The buggy layers are written here, outside the crate, through the public `Layer` and `Params` traits
//! and `Param`, the way a user would write their own: parameters listed once with
//! `baregpt::params!`, the computation written once and called from `forward` and `infer_with`.

mod common;

use baregpt::error::check_shape;
use baregpt::gradcheck::{self, GradCheckOptions, GradCheckReport, Mode};
use baregpt::layer::InferState;
use baregpt::layers::{Gelu, LayerNorm, Linear, Sequential};
use baregpt::param::{Param1, Param2, ParamPath, ParamVisitor, ParamVisitorMut};
use baregpt::prelude::*;
use baregpt::{Error, Gpt, GptConfig, Result};
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
            Bug::None | Bug::MissingBiasGrad => {}
        }
        self.w.grad += &d_w;
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
    for mode in [Mode::Full, Mode::RandomDirections { count: 4 }] {
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
fn random_directions_catch_a_scaled_weight_gradient() {
    let report = check(
        &mut net_with(Bug::ScaledWeightGrad),
        Mode::RandomDirections { count: 3 },
    );
    assert_only_broken(&report, "1.w", "FAILED");
    assert_eq!(report.tensor("1.w").unwrap().checked, 3);
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
    assert!(!report.passed(), "{text}");
    // The drift (1e-12) is far below the tolerances: only the determinism check sees it.
    assert_eq!(report.failures().count(), 0, "{text}");
    assert!(text.contains("not deterministic"), "{text}");

    let options = GradCheckOptions {
        check_determinism: false,
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
    for mode in [Mode::Full, Mode::RandomDirections { count: 2 }] {
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
