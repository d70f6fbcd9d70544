//! Helpers shared by the integration tests: proptest configuration, parameter jitter,
//! bit-exact snapshots of a layer's parameters and gradients, and a bag of named parameters.

// Each test crate includes this module and uses a different subset of it.
#![allow(dead_code)]

use baregpt::gradcheck::{self, GradCheckOptions, GradCheckReport};
use baregpt::param::{Param, ParamPath, ParamVisitor, ParamVisitorMut, Params};
use baregpt::{Float, Layer, LayerInput};
use ndarray::Dimension;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// A proptest configuration with `cases` cases whose failures are persisted in
/// `proptest-regressions/<file>` at the crate root (integration tests have no `src/` beside
/// them, so proptest's default would scatter files next to the test sources).
pub fn config(cases: u32, file: &'static str) -> Config {
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(file))),
        ..Config::default()
    }
}

/// A seeded RNG.
pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Adds uniform noise in `±scale` to every parameter, drawn from `seed`, so that checks do not
/// run at special values (unit gains and zero biases hide bugs such as a forgotten `gamma`).
pub fn jitter_params<F, L>(layer: &mut L, seed: u64, scale: f64)
where
    F: Float,
    L: Params<F> + ?Sized,
{
    let mut rng = rng(seed ^ 0x9E37_79B9_7F4A_7C15);
    layer.for_each_param_mut(&mut |_, mut p| {
        p.value.mapv_inplace(|v| {
            let noise = (rng.random::<f64>() * 2.0 - 1.0) * scale;
            F::of(v.to_f64_exact() + noise)
        });
    });
}

/// Every parameter as `(name, value bits, grad bits)`: compares NaNs and signed zeros exactly.
pub type Snapshot = Vec<(String, Vec<u64>, Vec<u64>)>;

/// A bit-exact snapshot of every parameter value and gradient.
pub fn snapshot<F, L>(layer: &L) -> Snapshot
where
    F: Float,
    L: Params<F> + ?Sized,
{
    let mut out = Vec::new();
    layer.for_each_param(&mut |name, p| {
        let bits =
            |a: &ndarray::ArrayViewD<'_, F>| a.iter().map(|v| v.to_f64_exact().to_bits()).collect();
        out.push((name.to_owned(), bits(&p.value), bits(&p.grad)));
    });
    out
}

/// Every gradient as `(name, values)`, in visit order.
pub fn grads<F, L>(layer: &L) -> Vec<(String, Vec<F>)>
where
    F: Float,
    L: Params<F> + ?Sized,
{
    let mut out = Vec::new();
    layer.for_each_param(&mut |name, p| {
        out.push((name.to_owned(), p.grad.iter().copied().collect()))
    });
    out
}

/// Runs the checker with default options and requires that it passes, and that it covered
/// the input (when `float_input`) and every parameter by name, in visit order.
pub fn gradcheck_passes<X, L>(
    layer: &mut L,
    x: &X,
    float_input: bool,
) -> Result<GradCheckReport, TestCaseError>
where
    X: LayerInput<f64> + Clone,
    L: Layer<f64, X> + ?Sized,
{
    let mut expected: Vec<String> = Vec::new();
    if float_input {
        expected.push("input".into());
    }
    expected.extend(layer.param_names());
    let report = gradcheck::check_layer(layer, x, &GradCheckOptions::default())
        .map_err(|e| TestCaseError::fail(format!("check_layer returned an error: {e}")))?;
    let checked: Vec<&str> = report.tensors.iter().map(|t| t.name.as_str()).collect();
    if checked != expected {
        return Err(TestCaseError::fail(format!(
            "checked tensors {checked:?}, expected {expected:?}"
        )));
    }
    if !report.passed() {
        return Err(TestCaseError::fail(format!("{report}")));
    }
    Ok(report)
}

/// A "model" that is nothing but named parameters: drives `Adam` and the gradient-norm
/// functions through the parameter visitor.
#[derive(Clone, Debug)]
pub struct NamedParams<F: Float, D: Dimension>(pub Vec<(String, Param<F, D>)>);

impl<F: Float, D: Dimension> Params<F> for NamedParams<F, D> {
    fn visit_params<'a>(&'a self, path: &mut ParamPath, f: &mut ParamVisitor<'a, '_, F>) {
        for (name, p) in &self.0 {
            path.scoped(name, |path| p.visit_params(path, f));
        }
    }

    fn visit_params_mut<'a>(
        &'a mut self,
        path: &mut ParamPath,
        f: &mut ParamVisitorMut<'a, '_, F>,
    ) {
        for (name, p) in &mut self.0 {
            path.scoped(name, |path| p.visit_params_mut(path, f));
        }
    }
}
