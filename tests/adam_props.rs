//! Property tests of `Adam` and gradient clipping, in f32 and f64:
//!
//! * the first step moves every parameter by about `lr·sign(g)` (exactly 0 where `g = 0`);
//! * zero gradients leave parameters unchanged when the weight decay is 0;
//! * clipping bounds the global norm and returns the unclipped norm;
//! * export → restore → step equals uninterrupted steps bit for bit;
//! * the visitor path and the slice path agree bit for bit;
//! * a non-finite gradient anywhere is an error that changes nothing.

use baregpt::optim::{LrSchedule, StepInfo, clip_grad_norm, clip_grad_norm_slices, grad_norm};
use baregpt::param::Param;
use baregpt::prelude::*;
use baregpt::{Adam, AdamConfig, Error};
use common::NamedParams;
use ndarray::{Array1, Ix1};
use proptest::prelude::*;

mod common;

/// Parameters as plain vectors: values and, per step, gradients of the same lengths.
#[derive(Clone, Debug)]
struct Problem {
    values: Vec<Vec<f64>>,
    /// `grads[step][param]`.
    grads: Vec<Vec<Vec<f64>>>,
}

impl Problem {
    fn values_as<F: Float>(&self) -> Vec<Vec<F>> {
        convert(&self.values)
    }

    fn grads_as<F: Float>(&self, step: usize) -> Vec<Vec<F>> {
        convert(&self.grads[step])
    }
}

fn convert<F: Float>(v: &[Vec<f64>]) -> Vec<Vec<F>> {
    v.iter()
        .map(|a| a.iter().map(|&x| F::of(x)).collect())
        .collect()
}

/// A gradient element: exactly zero, or ±10^e for e in [-3, 3).
fn grad_element() -> impl Strategy<Value = f64> {
    prop_oneof![
        1 => Just(0.0),
        6 => (any::<bool>(), -3.0f64..3.0).prop_map(|(neg, e)| {
            let g = 10f64.powf(e);
            if neg { -g } else { g }
        }),
    ]
}

/// 1 to 3 parameters of 1 to 9 elements, values in [-1, 1], gradients for `steps` steps.
fn problem(steps: usize) -> impl Strategy<Value = Problem> {
    prop::collection::vec(1usize..10, 1..4).prop_flat_map(move |lens| {
        let values = lens
            .iter()
            .map(|&n| prop::collection::vec(-1.0f64..1.0, n))
            .collect::<Vec<_>>();
        let step = lens
            .iter()
            .map(|&n| prop::collection::vec(grad_element(), n))
            .collect::<Vec<_>>();
        let grads = prop::collection::vec(step, steps);
        (values, grads).prop_map(|(values, grads)| Problem { values, grads })
    })
}

/// Any valid configuration; weight decay only when `decay`.
fn config(decay: bool) -> impl Strategy<Value = AdamConfig> {
    let schedule = prop_oneof![
        Just(LrSchedule::constant()),
        (1u64..4).prop_map(|w| LrSchedule::linear_warmup(w).unwrap()),
        (0u64..3, 3u64..8, 0.0f64..0.5)
            .prop_map(|(w, n, floor)| LrSchedule::warmup_cosine(w, n, floor).unwrap()),
    ];
    let weight_decay = if decay {
        prop_oneof![Just(0.0), 0.0f64..0.3].boxed()
    } else {
        Just(0.0).boxed()
    };
    (
        (1e-4f64..0.1, 0.0f64..0.99, 0.0f64..0.9999, 1e-10f64..1e-6),
        (weight_decay, any::<bool>(), any::<bool>()),
        (prop::option::of(0.01f64..10.0), schedule),
    )
        .prop_map(
            |((lr, beta1, beta2, eps), (weight_decay, decoupled, amsgrad), (clip, schedule))| {
                AdamConfig {
                    lr,
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                    decoupled_weight_decay: decoupled,
                    amsgrad,
                    max_grad_norm: clip,
                    schedule,
                }
            },
        )
}

fn step<F: Float>(adam: &mut Adam<F>, values: &mut [Vec<F>], grads: &[Vec<F>]) -> StepInfo {
    try_step(adam, values, grads).unwrap()
}

fn try_step<F: Float>(
    adam: &mut Adam<F>,
    values: &mut [Vec<F>],
    grads: &[Vec<F>],
) -> baregpt::Result<StepInfo> {
    let mut pairs: Vec<(&mut [F], &[F])> = values
        .iter_mut()
        .zip(grads)
        .map(|(v, g)| (v.as_mut_slice(), g.as_slice()))
        .collect();
    adam.step_slices(&mut pairs)
}

fn bits<F: Float>(v: &[Vec<F>]) -> Vec<Vec<u64>> {
    v.iter()
        .map(|a| a.iter().map(|x| x.to_f64_exact().to_bits()).collect())
        .collect()
}

fn norm(v: &[Vec<f64>]) -> f64 {
    v.iter().flatten().map(|g| g * g).sum::<f64>().sqrt()
}

/// The first step's displacement is `−lr·g/(|g| + eps)`: within `tol·lr` of `−lr·sign(g)`
/// for `|g| ≥ 1e-3`, and exactly 0 for `g = 0`.
fn check_first_step<F: Float>(problem: &Problem, config: AdamConfig, tol: f64) {
    let mut adam = Adam::<F>::new(config).unwrap();
    let before = problem.values_as::<F>();
    let mut values = before.clone();
    let info = step(&mut adam, &mut values, &problem.grads_as::<F>(0));
    let lr = info.lr;
    for (k, g_k) in problem.grads[0].iter().enumerate() {
        for (i, &g) in g_k.iter().enumerate() {
            let delta = values[k][i].to_f64_exact() - before[k][i].to_f64_exact();
            if g == 0.0 {
                assert_eq!(delta, 0.0, "param {k}[{i}] moved with a zero gradient");
            } else {
                let want = -lr * g.signum();
                assert!(
                    (delta - want).abs() <= tol * lr,
                    "param {k}[{i}]: g = {g:e}, moved {delta:e}, expected ≈ {want:e} (lr {lr:e})"
                );
            }
        }
    }
}

/// With zero gradients and no weight decay, any number of steps changes nothing.
fn check_zero_grads<F: Float>(problem: &Problem, config: AdamConfig) {
    let mut adam = Adam::<F>::new(config).unwrap();
    let before = problem.values_as::<F>();
    let mut values = before.clone();
    let zeros: Vec<Vec<F>> = before.iter().map(|v| vec![F::zero(); v.len()]).collect();
    for _ in 0..problem.grads.len() {
        let info = step(&mut adam, &mut values, &zeros);
        assert_eq!(info.grad_norm, 0.0);
        assert!(!info.clipped);
    }
    assert_eq!(bits(&values), bits(&before));
}

/// `n1` steps, export, restore into a fresh optimizer, `n2` more, against `n1 + n2` steps
/// of one optimizer: bit for bit.
fn check_resume<F: Float>(problem: &Problem, config: AdamConfig, n1: usize) {
    let mut straight = Adam::<F>::new(config.clone()).unwrap();
    let mut straight_values = problem.values_as::<F>();
    for s in 0..problem.grads.len() {
        step(
            &mut straight,
            &mut straight_values,
            &problem.grads_as::<F>(s),
        );
    }

    let mut first = Adam::<F>::new(config.clone()).unwrap();
    let mut values = problem.values_as::<F>();
    for s in 0..n1 {
        step(&mut first, &mut values, &problem.grads_as::<F>(s));
    }
    let exported = first.export_state();
    drop(first);
    let mut resumed = Adam::<F>::new(config).unwrap();
    resumed.load_state(exported).unwrap();
    for s in n1..problem.grads.len() {
        step(&mut resumed, &mut values, &problem.grads_as::<F>(s));
    }

    assert_eq!(bits(&values), bits(&straight_values));
    assert_eq!(resumed.step_count(), straight.step_count());
    let (a, b) = (resumed.state(), straight.state());
    assert_eq!(a.params.len(), b.params.len());
    for (name, sa) in &a.params {
        let sb = &b.params[name];
        let arr_bits = |x: &ndarray::ArrayD<F>| -> Vec<u64> {
            x.iter().map(|v| v.to_f64_exact().to_bits()).collect()
        };
        assert_eq!(arr_bits(&sa.m), arr_bits(&sb.m), "{name}: m");
        assert_eq!(arr_bits(&sa.v), arr_bits(&sb.v), "{name}: v");
        assert_eq!(
            sa.v_max.as_ref().map(arr_bits),
            sb.v_max.as_ref().map(arr_bits),
            "{name}: v_max"
        );
    }
}

/// A model made of 1-D parameters named `p0`, `p1`, …, for the visitor path.
type Vectors<F> = NamedParams<F, Ix1>;

impl<F: Float> Vectors<F> {
    fn new(values: &[Vec<F>]) -> Self {
        NamedParams(
            values
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("p{i}"), Param::new(Array1::from(v.clone()))))
                .collect(),
        )
    }

    fn set_grads(&mut self, grads: &[Vec<F>]) {
        for ((_, p), g) in self.0.iter_mut().zip(grads) {
            p.grad = Array1::from(g.clone());
        }
    }

    fn values(&self) -> Vec<Vec<F>> {
        self.0.iter().map(|(_, p)| p.value.to_vec()).collect()
    }

    fn grads(&self) -> Vec<Vec<F>> {
        self.0.iter().map(|(_, p)| p.grad.to_vec()).collect()
    }
}

/// The visitor path and the slice path give identical results.
fn check_paths_agree<F: Float>(problem: &Problem, config: AdamConfig) {
    let mut by_slices = Adam::<F>::new(config.clone()).unwrap();
    let mut by_model = Adam::<F>::new(config).unwrap();
    let mut values = problem.values_as::<F>();
    let mut model = Vectors::new(&values);
    for s in 0..problem.grads.len() {
        let grads = problem.grads_as::<F>(s);
        let a = step(&mut by_slices, &mut values, &grads);
        model.set_grads(&grads);
        let b = by_model.step(&mut model).unwrap();
        assert_eq!(a, b);
        assert_eq!(bits(&values), bits(&model.values()));
    }
}

/// Clipping returns the unclipped norm and leaves a norm of at most `max_norm`.
fn check_clip<F: Float>(grads: &[Vec<f64>], max_norm: f64, rel_tol: f64) {
    let want = norm(grads);
    let original = convert::<F>(grads);
    let mut clipped = original.clone();
    let mut refs: Vec<&mut [F]> = clipped.iter_mut().map(Vec::as_mut_slice).collect();
    let got = clip_grad_norm_slices(&mut refs, max_norm).unwrap();
    // The f32 gradients are the f64 ones rounded, so their norm differs by ~1e-7.
    assert!((got - want).abs() <= rel_tol * want, "norm {got} vs {want}");

    let after = clipped
        .iter()
        .flatten()
        .map(|x| x.to_f64_exact().powi(2))
        .sum::<f64>()
        .sqrt();
    assert!(
        after <= max_norm * (1.0 + rel_tol),
        "after {after} > {max_norm}"
    );
    if got <= max_norm {
        assert_eq!(
            bits(&clipped),
            bits(&original),
            "clipped below the threshold"
        );
    } else {
        assert!(
            after >= max_norm * (1.0 - 2e-4),
            "after {after} ≪ {max_norm}"
        );
    }

    // The same through a model: `grad_norm` and `clip_grad_norm` see exactly its parameters.
    let mut model = Vectors::<F>::new(&original);
    model.set_grads(&original);
    assert_eq!(grad_norm(&model).unwrap().to_bits(), got.to_bits());
    assert_eq!(
        clip_grad_norm(&mut model, max_norm).unwrap().to_bits(),
        got.to_bits()
    );
    assert_eq!(bits(&model.grads()), bits(&clipped));
}

/// A NaN or infinity at `(k, i)` of the step-`s` gradient: the step fails, names the
/// parameter, and changes neither values nor state.
fn check_non_finite<F: Float>(problem: &Problem, config: AdamConfig, at: (usize, usize), bad: f64) {
    let mut adam = Adam::<F>::new(config).unwrap();
    let mut values = problem.values_as::<F>();
    let last = problem.grads.len() - 1;
    for s in 0..last {
        step(&mut adam, &mut values, &problem.grads_as::<F>(s));
    }
    let mut grads = problem.grads_as::<F>(last);
    let k = at.0 % grads.len();
    let i = at.1 % grads[k].len();
    grads[k][i] = F::of(bad);
    let (values_before, state_before) = (bits(&values), adam.export_state());
    let err = try_step(&mut adam, &mut values, &grads).unwrap_err();
    assert!(
        matches!(&err, Error::NonFiniteGradient { name } if *name == k.to_string()),
        "{err}"
    );
    assert_eq!(bits(&values), values_before);
    assert_eq!(adam.state(), &state_before);
    assert_eq!(adam.step_count(), last as u64);
}

fn no_clip(config: AdamConfig) -> AdamConfig {
    AdamConfig {
        max_grad_norm: None,
        ..config
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn first_step_moves_by_lr_sign_g_f64(p in problem(1), c in config(false)) {
        // |g| ≥ 1e-3 and eps ≤ 1e-6: the deviation eps/(|g|+eps) is below 1e-3.
        check_first_step::<f64>(&p, no_clip(c), 1e-3);
    }

    #[test]
    fn first_step_moves_by_lr_sign_g_f32(p in problem(1), c in config(false)) {
        // Plus f32 rounding of values of order 1 (2^-24 ≈ 6e-8) against lr ≥ 1e-4.
        check_first_step::<f32>(&p, no_clip(c), 2e-3);
    }

    #[test]
    fn zero_gradients_leave_parameters_unchanged(p in problem(4), c in config(false)) {
        check_zero_grads::<f64>(&p, c.clone());
        check_zero_grads::<f32>(&p, c);
    }

    #[test]
    fn clipping_bounds_the_norm_and_returns_the_unclipped_one(
        p in problem(1),
        log_max in -2.0f64..2.0,
    ) {
        let max_norm = 10f64.powf(log_max);
        check_clip::<f64>(&p.grads[0], max_norm, 1e-12);
        check_clip::<f32>(&p.grads[0], max_norm, 1e-6);
    }

    #[test]
    fn export_restore_then_step_is_bit_identical(
        p in problem(5),
        c in config(true),
        n1 in 0usize..5,
    ) {
        check_resume::<f64>(&p, c.clone(), n1);
        check_resume::<f32>(&p, c, n1);
    }

    #[test]
    fn visitor_and_slice_paths_agree(p in problem(3), c in config(true)) {
        check_paths_agree::<f64>(&p, c.clone());
        check_paths_agree::<f32>(&p, c);
    }

    #[test]
    fn non_finite_gradient_changes_nothing(
        p in problem(3),
        c in config(true),
        at in (0usize..100, 0usize..100),
        bad in prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY)],
    ) {
        check_non_finite::<f64>(&p, c.clone(), at, bad);
        check_non_finite::<f32>(&p, c, at, bad);
    }
}

#[test]
fn f32_overflowing_gradient_is_non_finite_in_f32_only() {
    // 1e39 is finite in f64 but infinite once rounded to f32: the f32 optimizer must refuse.
    let p = Problem {
        values: vec![vec![0.5]],
        grads: vec![vec![vec![1e39]]],
    };
    let mut adam = Adam::<f32>::new(AdamConfig::default()).unwrap();
    let mut values = p.values_as::<f32>();
    assert!(try_step(&mut adam, &mut values, &p.grads_as::<f32>(0)).is_err());
    let mut adam = Adam::<f64>::new(AdamConfig::default()).unwrap();
    let mut values = p.values_as::<f64>();
    assert!(try_step(&mut adam, &mut values, &p.grads_as::<f64>(0)).is_ok());
}
