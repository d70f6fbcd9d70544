//! Dropout's statistics, its training/evaluation modes, and its reproducibility: the keep
//! rate is `1 − p` and `E[y] = x`; training forwards drop, inference and `Off` never do;
//! the same seed rng and the same forwards give the same masks; a model without dropout
//! draws exactly the weights it drew before dropout existed.

mod common;

use baregpt::layer::DropoutMode;
use baregpt::layers::{Block, Dropout};
use baregpt::prelude::*;
use baregpt::{DropoutConfig, Gpt, GptConfig};
use common::rng;
use ndarray::{Array2, Array3, array};

/// A 2-layer GPT of width 8 with the given dropout.
fn config(dropout: DropoutConfig) -> GptConfig {
    GptConfig {
        mlp_hidden: 16,
        dropout,
        ..GptConfig::with_sizes(11, 8, 2, 2, 6)
    }
}

fn with_dropout(p: f64) -> DropoutConfig {
    DropoutConfig {
        embed: p,
        residual: p,
        ..DropoutConfig::default()
    }
}

#[test]
fn keep_rate_is_one_minus_p_and_the_mean_is_the_input() {
    // 200,000 elements per p: the standard error of the keep rate is below 0.0012, of the
    // mean of y/x below 0.0035 (for p = 0.5; less for the others).
    let x = Array3::from_shape_fn((4, 50, 1000), |(b, t, c)| {
        1.0 + ((b * 50_000 + t * 1000 + c) as f64 * 0.37).sin()
    });
    for p in [0.1, 0.3, 0.5] {
        let mut drop = Dropout::<f64>::new(p, 11).unwrap();
        let y = drop.forward(&x).unwrap();
        let n = y.len() as f64;
        let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / n;
        assert!((kept - (1.0 - p)).abs() < 0.006, "p {p}: keep rate {kept}");
        let ratio = y.iter().zip(&x).map(|(a, b)| a / b).sum::<f64>() / n;
        assert!((ratio - 1.0).abs() < 0.02, "p {p}: mean of y/x {ratio}");
        // Kept elements are exactly x / (1 − p).
        assert!(
            y.iter()
                .zip(&x)
                .all(|(&a, &b)| a == 0.0 || a == b * (1.0 / (1.0 - p)))
        );
    }
}

#[test]
fn expectation_over_passes_is_the_input_elementwise() {
    // Averaged over 2,000 training passes, every element of y approaches x.
    let x = Array3::from_shape_fn((1, 3, 4), |(_, t, c)| (t * 4 + c) as f64 - 5.5);
    let mut drop = Dropout::<f64>::new(0.25, 3).unwrap();
    let mut sum = Array3::<f64>::zeros(x.raw_dim());
    let passes = 2000;
    for _ in 0..passes {
        sum += &drop.forward(&x).unwrap();
    }
    assert_eq!(drop.site().passes(), passes);
    for (s, v) in sum.iter().zip(&x) {
        // Standard error of the mean: |x|·√(p/(1−p)/n) ≈ 0.013·|x|.
        let mean = s / passes as f64;
        assert!((mean - v).abs() <= 0.06 * v.abs() + 1e-12, "{mean} vs {v}");
    }
}

#[test]
fn training_drops_and_evaluation_does_not() {
    let mut gpt = Gpt::<f64>::new(config(with_dropout(0.3)), &mut rng(1)).unwrap();
    let (ids, targets) = (array![[1, 2, 3, 4]], array![[2, 3, 4, 5]]);
    let clean = gpt.infer(&ids).unwrap();
    let a = gpt.forward(&ids).unwrap();
    let b = gpt.forward(&ids).unwrap();
    assert_ne!(a, clean);
    assert_ne!(a, b, "each training forward draws new masks");
    gpt.set_dropout(DropoutMode::Off);
    assert_eq!(gpt.forward(&ids).unwrap(), clean);
    let off = gpt.loss(&ids, &targets).unwrap();
    assert_eq!(off, gpt.eval_loss(&ids, &targets).unwrap());
    gpt.set_dropout(DropoutMode::Hold);
    let held = gpt.forward(&ids).unwrap();
    assert_eq!(held, b, "Hold repeats the last training pass's masks");
    assert_eq!(gpt.forward(&ids).unwrap(), held);
    gpt.set_dropout(DropoutMode::Train);
    assert_ne!(gpt.forward(&ids).unwrap(), held);
    // eval_loss is inference whatever the mode.
    assert_eq!(gpt.eval_loss(&ids, &targets).unwrap(), off);
}

#[test]
fn same_seed_rng_and_same_forwards_give_the_same_masks() {
    let ids = array![[1, 2, 3], [4, 5, 6]];
    let run = |seed| {
        let mut gpt = Gpt::<f64>::new(config(with_dropout(0.2)), &mut rng(seed)).unwrap();
        (0..3)
            .map(|_| gpt.forward(&ids).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

#[test]
fn dropout_seeds_come_after_every_weight() {
    let plain = Gpt::<f64>::new(config(DropoutConfig::default()), &mut rng(4)).unwrap();
    let dropped = Gpt::<f64>::new(config(DropoutConfig::uniform(0.1)), &mut rng(4)).unwrap();
    assert_eq!(plain.export_params(), dropped.export_params());
    assert!(plain.dropout_sites().is_empty());
    // The embedding site, then two per block.
    let sites = dropped.dropout_sites();
    assert_eq!(sites.len(), 1 + 2 * 2);
    let mut seeds: Vec<u64> = sites.iter().map(|s| s.seed()).collect();
    seeds.sort_unstable();
    seeds.dedup();
    assert_eq!(seeds.len(), 5, "every site has its own seed");
}

#[test]
fn resuming_the_sites_reproduces_the_masks() {
    let ids = array![[3, 1, 4, 1, 5]];
    let mut a = Gpt::<f64>::new(config(with_dropout(0.25)), &mut rng(9)).unwrap();
    a.forward(&ids).unwrap();
    let state: Vec<(u64, u64)> = a
        .dropout_sites()
        .iter()
        .map(|s| (s.seed(), s.passes()))
        .collect();
    let next = a.forward(&ids).unwrap();
    // Another model with the same weights (a checkpoint) but other seeds, then the state.
    let mut b = Gpt::<f64>::new(config(with_dropout(0.25)), &mut rng(10)).unwrap();
    b.import_params(&a.export_params()).unwrap();
    assert_ne!(b.forward(&ids).unwrap(), next);
    for (site, (seed, passes)) in b.dropout_sites_mut().into_iter().zip(state) {
        site.set_seed(seed);
        site.set_passes(passes);
    }
    assert_eq!(b.forward(&ids).unwrap(), next);
}

#[test]
fn a_failed_forward_draws_no_mask() {
    let mut gpt = Gpt::<f64>::new(config(with_dropout(0.3)), &mut rng(2)).unwrap();
    let passes = |g: &Gpt<f64>| {
        g.dropout_sites()
            .iter()
            .map(|s| s.passes())
            .collect::<Vec<_>>()
    };
    gpt.forward(&array![[1, 2]]).unwrap();
    let before = passes(&gpt);
    assert!(gpt.forward(&array![[1, 11]]).is_err()); // id out of range
    assert!(gpt.forward(&Array2::zeros((1, 7))).is_err()); // longer than the context
    assert!(gpt.loss(&array![[1, 2]], &array![[1, 11]]).is_err()); // target out of range
    assert_eq!(passes(&gpt), before);
    gpt.loss(&array![[1, 2]], &array![[1, 2]]).unwrap();
    assert_ne!(passes(&gpt), before);
    // A block whose MLP part fails after the attention branch ran draws neither mask.
    let mut r = rng(3);
    let block = Block::<f64>::new(4, 2, 8, &mut r).unwrap();
    let mut block = block.with_residual_dropout(0.5, [1, 2]).unwrap();
    assert!(block.forward(&Array3::zeros((1, 2, 5))).is_err());
    assert_eq!(block.residual_dropout()[0].passes(), 0);
    block.forward(&Array3::zeros((1, 2, 4))).unwrap();
    assert_eq!(block.residual_dropout()[1].passes(), 1);
}

#[test]
fn residual_dropout_masks_the_branches_only() {
    // With p close to 1 nearly every branch element is dropped: the block is then nearly
    // the identity (the residual path is never dropped).
    let mut r = rng(5);
    let mut block = Block::<f64>::new(6, 2, 12, &mut r)
        .unwrap()
        .with_residual_dropout(0.999_999, [3, 4])
        .unwrap();
    let x = Array3::from_shape_fn((2, 3, 6), |(b, t, c)| (b + 2 * t + 3 * c) as f64 * 0.1);
    let y = block.forward(&x).unwrap();
    assert_eq!(y, x);
    assert_ne!(block.infer(&x).unwrap(), x);
    let dx = block.backward(&Array3::ones(x.raw_dim())).unwrap();
    assert_eq!(dx, Array3::<f64>::ones(x.raw_dim()));
}

#[test]
fn attention_dropout_in_a_gpt_trains_holds_and_turns_off() {
    let attention_only = DropoutConfig {
        attention: 0.3,
        ..DropoutConfig::default()
    };
    let plain = Gpt::<f64>::new(config(DropoutConfig::default()), &mut rng(5)).unwrap();
    let mut gpt = Gpt::<f64>::new(config(attention_only), &mut rng(5)).unwrap();
    // Its seeds come after every weight too.
    assert_eq!(plain.export_params(), gpt.export_params());
    let ids = array![[1, 2, 3, 4, 5]];
    let clean = gpt.infer(&ids).unwrap();
    assert_eq!(plain.infer(&ids).unwrap(), clean, "inference never drops");
    let a = gpt.forward(&ids).unwrap();
    assert_ne!(a, clean);
    assert_ne!(
        gpt.forward(&ids).unwrap(),
        a,
        "a new mask each training pass"
    );
    gpt.set_dropout(DropoutMode::Off);
    assert_eq!(gpt.forward(&ids).unwrap(), clean);
    // With the mask held, the whole model passes the checker.
    gpt.set_dropout(DropoutMode::Train);
    let report = baregpt::gradcheck::check_layer(
        &mut gpt,
        &ids,
        &baregpt::gradcheck::GradCheckOptions::default(),
    )
    .unwrap();
    assert!(report.passed(), "{report}");
    assert!(report.tensor("blocks.0.attn.w_v").is_some());
}
