//! The checker's own properties: elements it cannot judge reported as unreliable, relative
//! errors free of finite-difference noise, options that cannot check anything refused, the
//! property-testing helper, and fast mode's cost against full mode's on a whole GPT.

mod common;

use baregpt::gradcheck::{self, GradCheckOptions, MAX_DIRECTIONS, Mode};
use baregpt::layers::{LayerNorm, Linear};
use baregpt::prelude::*;
use baregpt::{Error, Gpt, GptConfig, strategies};
use common::{jitter_params, rng, snapshot};
use ndarray::{Array2, Array3, ArrayD};

/// Rows `(a, a + delta)` of a 2-wide LayerNorm.
fn two_wide(delta: f64) -> Array3<f64> {
    Array3::from_shape_fn((1, 2, 2), |(_, t, c)| 0.3 * t as f64 + delta * c as f64)
}

#[test]
fn a_two_wide_layer_norm_at_its_kink_is_unreliable_not_failed() {
    // Without `eps`, a 2-wide LayerNorm jumps from −1 to +1 where its two inputs cross: with
    // the inputs 1e-7 apart, every step (1e-6) straddles the jump.
    let mut ln = LayerNorm::<f64>::with_eps(2, 0.0).unwrap();
    let report = gradcheck::check_layer(&mut ln, &two_wide(1e-7), &Default::default()).unwrap();
    let input = report.tensor("input").unwrap();
    assert!(report.passed(), "{report}");
    assert_eq!((input.failed, input.unreliable), (0, 4), "{report}");
    assert_eq!(input.first_unreliable, Some(vec![0, 0, 0]), "{report}");
    assert!(
        report.to_string().contains("4 elements unreliable"),
        "{report}"
    );
    assert!(!input.fully_judged());

    // A backward that is wrong there is still failed where the difference is not explained
    // by the numeric uncertainty: far from the kink, the elements are judged and pass.
    let report = gradcheck::check_layer(&mut ln, &two_wide(1e-2), &Default::default()).unwrap();
    assert!(report.passed() && report.unreliable() == 0, "{report}");
}

#[test]
fn a_two_wide_layer_norm_near_its_smoothed_kink_is_judged() {
    // With the default eps = 1e-5 the kink is smoothed over about √eps ≈ 3e-3: plain central
    // differences there were off by 1e-4 relative; the extrapolated ones pass at every gap.
    for delta in [1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-8] {
        let mut ln = LayerNorm::<f64>::new(2).unwrap();
        jitter_params(&mut ln, 3, 0.3);
        let report =
            gradcheck::check_layer(&mut ln, &two_wide(delta), &Default::default()).unwrap();
        assert!(report.passed(), "gap {delta:e}: {report}");
    }
}

#[test]
fn a_correct_layer_with_tiny_gradients_reports_a_tiny_relative_error() {
    // Weights of order 1e-4: every input gradient is of order 1e-4, near the f64 noise floor
    // of a difference at eps = 1e-6 (about 1e-10 absolute).
    let mut linear = Linear::<f64>::new(5, 4, true, &mut rng(5)).unwrap();
    linear.for_each_param_mut(&mut |_, mut p| p.value.mapv_inplace(|v| v * 1e-4));
    let x = Array3::from_shape_fn((2, 3, 5), |(b, t, c)| ((b + 2 * t + 3 * c) as f64).sin());
    let report = gradcheck::check_layer(&mut linear, &x, &Default::default()).unwrap();
    assert!(report.passed(), "{report}");
    let dx = report.tensor("input").unwrap();
    let worst = dx.worst.as_ref().unwrap();
    assert!(worst.analytic.abs() < 1e-3, "{report}");
    assert!(report.max_rel_error() < 1e-6, "{report}");

    // A LayerNorm at a large input scale has input gradients of order 1/σ ≈ 1e-3.
    let mut ln = LayerNorm::<f64>::new(5).unwrap();
    jitter_params(&mut ln, 6, 0.4);
    let report = gradcheck::check_layer(&mut ln, &(&x * 1e3), &Default::default()).unwrap();
    assert!(report.passed(), "{report}");
    assert!(report.max_rel_error() < 1e-6, "{report}");
}

fn invalid_options() -> Vec<(&'static str, GradCheckOptions)> {
    let base = GradCheckOptions::default;
    vec![
        (
            "eps 0",
            GradCheckOptions {
                eps: Some(0.0),
                ..base()
            },
        ),
        (
            "eps < 0",
            GradCheckOptions {
                eps: Some(-1e-6),
                ..base()
            },
        ),
        (
            "eps NaN",
            GradCheckOptions {
                eps: Some(f64::NAN),
                ..base()
            },
        ),
        (
            "eps inf",
            GradCheckOptions {
                eps: Some(f64::INFINITY),
                ..base()
            },
        ),
        (
            "atol NaN",
            GradCheckOptions {
                atol: Some(f64::NAN),
                ..base()
            },
        ),
        (
            "rtol NaN",
            GradCheckOptions {
                rtol: Some(f64::NAN),
                ..base()
            },
        ),
        (
            "atol < 0",
            GradCheckOptions {
                atol: Some(-1.0),
                ..base()
            },
        ),
        (
            "both zero",
            GradCheckOptions {
                atol: Some(0.0),
                rtol: Some(0.0),
                ..base()
            },
        ),
        (
            "nondeterminism_tol NaN",
            GradCheckOptions {
                nondeterminism_tol: f64::NAN,
                ..base()
            },
        ),
        ("zero directions", GradCheckOptions::fast(0)),
        (
            "absurd directions",
            GradCheckOptions::fast(MAX_DIRECTIONS + 1),
        ),
        ("usize::MAX directions", GradCheckOptions::fast(usize::MAX)),
    ]
}

#[test]
fn options_that_cannot_check_anything_are_errors() {
    let x = Array3::from_shape_fn((2, 3, 4), |(b, t, c)| ((b + t + c) as f64).cos());
    let mut ln = LayerNorm::<f64>::new(4).unwrap();
    let y = ln.forward(&x).unwrap();
    ln.backward(&y).unwrap();
    let before = snapshot(&ln);
    for (what, options) in invalid_options() {
        let err = gradcheck::check_layer(&mut ln, &x, &options).unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{what}: {err}");
        assert!(
            err.to_string()
                .starts_with("gradcheck: invalid configuration"),
            "{what}: {err}"
        );
        assert!(snapshot(&ln) == before, "{what}");

        let inputs = [("x", ArrayD::<f64>::ones(vec![3]))];
        let err = gradcheck::check_fn(
            &inputs,
            &["y"],
            |i| Ok(vec![i[0].to_owned()]),
            |_, d, g| {
                g[0] += &d[0];
                Ok(())
            },
            &options,
        )
        .unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{what}: {err}");

        let mut ln32 = LayerNorm::<f32>::new(4).unwrap();
        let err = gradcheck::check_layer_f32(
            &mut ln32,
            &mut LayerNorm::new(4).unwrap(),
            &x.mapv(|v| v as f32),
            &options,
        )
        .unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }), "{what}: {err}");
    }
    // The boundary values are accepted.
    for options in [
        GradCheckOptions::fast(1),
        GradCheckOptions::fast(MAX_DIRECTIONS),
        GradCheckOptions {
            atol: Some(0.0),
            ..Default::default()
        },
    ] {
        let mode = options.mode;
        if mode
            == (Mode::Fast {
                directions: MAX_DIRECTIONS,
            })
        {
            continue; // valid, but 4096 directions is slow; validation is tested on fast(1)
        }
        assert!(
            gradcheck::check_layer(&mut ln, &x, &options)
                .unwrap()
                .passed()
        );
    }
}

#[test]
fn bad_function_checks_are_errors_not_panics() {
    let x = ArrayD::<f64>::ones(vec![2, 2]);
    let id = |i: &[ndarray::ArrayViewD<'_, f64>]| Ok(vec![i[0].to_owned()]);
    let add = |_: &[ndarray::ArrayViewD<'_, f64>],
               d: &[ndarray::ArrayViewD<'_, f64>],
               g: &mut [ArrayD<f64>]| {
        g[0] += &d[0];
        Ok(())
    };
    let options = GradCheckOptions::default();
    // No inputs, no outputs, a repeated name, a wrong output count.
    assert!(gradcheck::check_fn(&[], &["y"], id, add, &options).is_err());
    assert!(gradcheck::check_fn(&[("x", x.clone())], &[], id, add, &options).is_err());
    assert!(gradcheck::check_fn(&[("x", x.clone())], &["x"], id, add, &options).is_err());
    let err = gradcheck::check_fn(&[("x", x.clone())], &["y", "z"], id, add, &options).unwrap_err();
    assert!(
        err.to_string().contains("returned 1 outputs, 2 are named"),
        "{err}"
    );
    // A backward that replaces its gradient buffer with one of another shape.
    let err = gradcheck::check_fn(
        &[("x", x.clone())],
        &["y"],
        id,
        |_, _, g: &mut [ArrayD<f64>]| {
            g[0] = ArrayD::zeros(vec![3]);
            Ok(())
        },
        &options,
    )
    .unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    // The rank helpers refuse the wrong dimensionality.
    assert!(gradcheck::as_dim::<f64, ndarray::Ix3>(&x.view()).is_err());
    // An f32 check against a reference of another shape.
    let mut ln32 = LayerNorm::<f32>::new(4).unwrap();
    let err = gradcheck::check_layer_f32(
        &mut ln32,
        &mut LayerNorm::<f64>::new(5).unwrap(),
        &Array3::<f32>::ones((1, 2, 4)),
        &options,
    )
    .unwrap_err();
    assert!(matches!(err, Error::ParamMismatch { .. }), "{err}");
}

#[test]
fn the_property_helper_passes_correct_layers_and_names_a_failing_case() {
    let options = GradCheckOptions::default();
    let outcome = strategies::check_layer_props(12, (2, 4, 5), &options, |c, seed| {
        let mut ln = LayerNorm::<f64>::new(c)?;
        jitter_params(&mut ln, seed, 0.3);
        Ok(ln)
    });
    assert!(outcome.is_ok(), "{}", outcome.unwrap_err());

    // A linear layer whose weight gradient is scaled, through a layer the helper builds.
    struct Doubled(Linear<f64>);
    impl Params<f64> for Doubled {
        fn visit_params<'a>(
            &'a self,
            p: &mut baregpt::param::ParamPath,
            f: &mut baregpt::param::ParamVisitor<'a, '_, f64>,
        ) {
            self.0.visit_params(p, f);
        }
        fn visit_params_mut<'a>(
            &'a mut self,
            p: &mut baregpt::param::ParamPath,
            f: &mut baregpt::param::ParamVisitorMut<'a, '_, f64>,
        ) {
            self.0.visit_params_mut(p, f);
        }
    }
    impl Layer<f64> for Doubled {
        fn kind(&self) -> &'static str {
            "Doubled"
        }
        fn forward(&mut self, x: &Array3<f64>) -> baregpt::Result<Array3<f64>> {
            self.0.forward(x)
        }
        fn infer_with(
            &self,
            x: &Array3<f64>,
            s: &mut baregpt::layer::InferState<'_, f64>,
        ) -> baregpt::Result<Array3<f64>> {
            self.0.infer_with(x, s)
        }
        fn backward(&mut self, dy: &Array3<f64>) -> baregpt::Result<Array3<f64>> {
            Ok(self.0.backward(dy)? * 2.0)
        }
    }
    let outcome = strategies::check_layer_props(12, (2, 4, 5), &options, |c, seed| {
        Ok(Doubled(Linear::new(c, 3, true, &mut rng(seed))?))
    });
    let message = outcome.unwrap_err();
    assert!(
        message.contains("minimal failing input"),
        "names the shrunk case: {message}"
    );
    assert!(
        message.contains("input") && message.contains("FAILED"),
        "{message}"
    );
}

/// The forward-evaluation counts quoted in the closing note: a whole small GPT (2 layers,
/// 2 heads, width 8, final LayerNorm; 1,387 parameters) in full and fast mode.
#[test]
fn fast_mode_on_a_whole_gpt_costs_a_fraction_of_full_mode() {
    let cfg = GptConfig {
        mlp_hidden: 16,
        final_norm: true,
        ..GptConfig::with_sizes(11, 8, 2, 2, 6)
    };
    let mut gpt = Gpt::<f64>::new(cfg, &mut rng(2024)).unwrap();
    jitter_params(&mut gpt, 2024, 0.3);
    let ids = Array2::from_shape_fn((2, 6), |(b, t)| (7 * b + 3 * t) % 11);
    let full = gradcheck::check_layer(&mut gpt, &ids, &GradCheckOptions::default()).unwrap();
    let fast = gradcheck::check_layer(&mut gpt, &ids, &GradCheckOptions::fast(2)).unwrap();
    assert!(full.passed(), "{full}");
    assert!(fast.passed(), "{fast}");
    let elements: usize = full.tensors.iter().map(|t| t.checked).sum();
    eprintln!(
        "whole small Gpt ({} tensors, {elements} parameters): full mode {} forward evaluations, \
         fast mode (2 directions) {} forward evaluations",
        full.tensors.len(),
        full.forward_evals,
        fast.forward_evals
    );
    // Four per element (two step sizes) against four per direction per tensor, plus the
    // analytic passes; computed, not assumed.
    assert_eq!(full.forward_evals, 4 * elements + 2);
    assert_eq!(fast.forward_evals, 4 * 2 * full.tensors.len() + 2);
}
