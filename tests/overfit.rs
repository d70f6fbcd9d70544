//! A small `Gpt` trained with `Adam` on one fixed batch must memorise it: the loss falls by a
//! large factor, in f32 and in f64. This exercises the whole stack (forward, hand-written
//! backward, the parameter visitor, clipping, the schedule and the optimizer) end to end.

use baregpt::optim::LrSchedule;
use baregpt::prelude::*;
use baregpt::{Adam, AdamConfig, DecayFilter, Gpt, GptConfig};
use ndarray::Array2;
use rand::{RngExt, SeedableRng};

const STEPS: u64 = 100;
/// The loss must fall below initial / FACTOR.
const FACTOR: f64 = 100.0;

fn config() -> GptConfig {
    GptConfig {
        mlp_hidden: 64,
        final_norm: true,
        ..GptConfig::with_sizes(16, 32, 4, 2, 12)
    }
}

/// A fixed batch `(B, T) = (8, 12)` of random ids; targets are random too, so nothing but
/// memorisation can lower the loss.
fn batch() -> (Array2<usize>, Array2<usize>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1234);
    let ids = Array2::from_shape_fn((8, 12), |_| rng.random_range(0..16));
    let targets = Array2::from_shape_fn((8, 12), |_| rng.random_range(0..16));
    (ids, targets)
}

/// Trains for `STEPS` steps; returns the loss before each step and after the last.
fn train<F: Float>() -> Vec<f64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut gpt = Gpt::<F>::new(config(), &mut rng).unwrap();
    let mut adam = Adam::new(AdamConfig {
        max_grad_norm: Some(1.0),
        schedule: LrSchedule::warmup_cosine(10, STEPS, 0.1).unwrap(),
        ..AdamConfig::adamw(3e-3, 0.01)
    })
    .unwrap()
    .with_decay_filter(DecayFilter::usual());
    let (ids, targets) = batch();
    let mut losses = Vec::new();
    for _ in 0..STEPS {
        gpt.zero_grad();
        losses.push(gpt.loss(&ids, &targets).unwrap().to_f64_exact());
        gpt.backward_loss().unwrap();
        adam.step(&mut gpt).unwrap();
    }
    losses.push(gpt.loss(&ids, &targets).unwrap().to_f64_exact());
    adam.check_all_trained().unwrap();
    losses
}

fn check<F: Float>() {
    let losses = train::<F>();
    let curve: Vec<String> = losses
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 10 == 0 || *i == losses.len() - 1)
        .map(|(i, l)| format!("{i}: {l:.5}"))
        .collect();
    println!("{} loss curve (step: loss): {}", F::NAME, curve.join(", "));
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    // Random init over 16 classes starts near ln 16 ≈ 2.77 (Glorot head: somewhat above).
    assert!(
        first > 2.0 && first < 16f64.ln() + 1.0,
        "initial loss {first}"
    );
    assert!(
        last < first / FACTOR,
        "{}: loss went from {first} to only {last} (wanted < {})",
        F::NAME,
        first / FACTOR
    );
}

#[test]
fn gpt_overfits_one_batch_f32() {
    check::<f32>();
}

#[test]
fn gpt_overfits_one_batch_f64() {
    check::<f64>();
}
