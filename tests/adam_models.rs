//! Adam on whole models: every parameter of a `Gpt` is trained, AdamW decays only what its
//! filter selects, and a boxed layer steps directly.

use baregpt::layers::{Linear, Sequential};
use baregpt::optim::DecayFilter;
use baregpt::prelude::*;
use baregpt::{Adam, AdamConfig, Gpt, GptConfig};
use ndarray::{Array3, ArrayD, array};
use rand::SeedableRng;

#[test]
fn every_gpt_parameter_is_trained_including_layer_norm() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let config = GptConfig {
        mlp_hidden: 16,
        final_norm: true,
        ..GptConfig::with_sizes(7, 8, 2, 2, 5)
    };
    let mut gpt = Gpt::<f64>::new(config, &mut rng).unwrap();
    let mut adam = Adam::new(AdamConfig::adam(1e-2)).unwrap();
    let before: Vec<ArrayD<f64>> = {
        let mut v = Vec::new();
        gpt.for_each_param(&mut |_, p| v.push(p.value.to_owned()));
        v
    };
    for _ in 0..2 {
        gpt.zero_grad();
        gpt.loss(&array![[1, 2, 3, 4]], &array![[2, 3, 4, 5]])
            .unwrap();
        gpt.backward_loss().unwrap();
        adam.step(&mut gpt).unwrap();
    }
    adam.check_all_trained().unwrap();
    assert_eq!(adam.state().params.len(), gpt.param_names().len());
    let mut i = 0;
    gpt.for_each_param(&mut |name, p| {
        assert_ne!(p.value, before[i].view(), "{name} did not move");
        i += 1;
    });
}

#[test]
fn adamw_decays_only_what_the_filter_selects() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let config = GptConfig {
        mlp_hidden: 8,
        final_norm: true,
        ..GptConfig::with_sizes(5, 4, 1, 1, 3)
    };
    let mut gpt = Gpt::<f64>::new(config, &mut rng).unwrap();
    let mut before = Vec::new();
    gpt.for_each_param(&mut |name, p| before.push((name.to_owned(), p.value.to_owned())));
    let (lr, wd) = (0.1, 0.5);
    let mut adam = Adam::new(AdamConfig::adamw(lr, wd))
        .unwrap()
        .with_decay_filter(DecayFilter::usual());
    // Zero gradients: the Adam part of the update is exactly 0, only decay remains.
    let info = adam.step(&mut gpt).unwrap();
    assert_eq!((info.grad_norm, info.clipped), (0.0, false));
    let mut i = 0;
    gpt.for_each_param(&mut |name, p| {
        let (_, old) = &before[i];
        i += 1;
        let expect = if baregpt::optim::is_usually_excluded(name) {
            old.clone()
        } else {
            old.mapv(|x| x * (1.0 - lr * wd))
        };
        assert_eq!(p.value, expect.view(), "{name}");
    });
    assert_eq!(i, before.len());
}

#[test]
fn boxed_layers_step_directly() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut model: Box<dyn Layer<f64>> = Box::new(
        Sequential::new()
            .push(Linear::new(3, 4, true, &mut rng).unwrap())
            .push(Linear::new(4, 2, false, &mut rng).unwrap()),
    );
    let x = Array3::from_shape_fn((2, 3, 3), |(b, t, c)| (b + t + c) as f64 * 0.1);
    model.forward(&x).unwrap();
    model.backward(&Array3::ones((2, 3, 2))).unwrap();
    let mut adam = Adam::new(AdamConfig::adam(0.01)).unwrap();
    let info = adam.step(&mut model).unwrap();
    assert!(info.grad_norm > 0.0);
    let names: Vec<&String> = adam.state().params.keys().collect();
    assert_eq!(names.len(), model.param_names().len());
}

/// A tied `Gpt`: its token table's gradient is the sum of the embedding's and the head's
/// shares (checked against the untied model with `head.w = tokᵀ`, whose two gradients are
/// separate), and one Adam step moves the table once, by exactly the first-step rule
/// `−lr·g/(|g| + eps)` applied to that summed `g`.
#[test]
fn a_tied_table_gets_the_sum_of_both_gradients_and_one_adam_update_per_step() {
    use baregpt::gpt::parts::HeadKind;
    let sizes = GptConfig {
        mlp_hidden: 12,
        ..GptConfig::with_sizes(7, 6, 2, 2, 5)
    };
    let tied_config = GptConfig {
        head: HeadKind::Tied { bias: true },
        ..sizes.clone()
    };
    let untied_config = GptConfig {
        head: HeadKind::Linear { bias: true },
        ..sizes
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let mut tied = Gpt::<f64>::new(tied_config, &mut rng).unwrap();
    let mut untied = Gpt::<f64>::new(untied_config, &mut rng).unwrap();
    // The untied model computes the same function when its head.w is tokᵀ.
    let mut map = tied.export_params();
    let tok = map.get("embed.tok").unwrap().to_owned();
    map.insert("head.w", tok.t().to_owned());
    untied.import_params(&map).unwrap();

    let (ids, targets) = (
        array![[1, 2, 3, 4, 1], [0, 6, 5, 1, 1]],
        array![[2, 3, 4, 5, 6], [6, 5, 1, 0, 2]],
    );
    let tied_loss = tied.loss(&ids, &targets).unwrap();
    let untied_loss = untied.loss(&ids, &targets).unwrap();
    assert!((tied_loss - untied_loss).abs() < 1e-12);
    tied.backward_loss().unwrap();
    untied.backward_loss().unwrap();
    let grad = |g: &Gpt<f64>, name: &str| g.param(name).unwrap().grad.to_owned();
    let embedding_share = grad(&untied, "embed.tok");
    let head_share = grad(&untied, "head.w").reversed_axes();
    let summed = grad(&tied, "embed.tok");
    // Both shares are substantial, so a lost one could not hide in the tolerance.
    for share in [&embedding_share, &head_share] {
        assert!(share.iter().any(|g| g.abs() > 1e-3));
    }
    let expected = &embedding_share + &head_share;
    let worst = (&summed - &expected)
        .iter()
        .fold(0.0f64, |m, d| m.max(d.abs()));
    assert!(
        worst < 1e-12,
        "tied gradient differs from the sum of the shares by {worst}"
    );

    let (lr, eps) = (1e-2, 1e-8);
    let mut adam = Adam::new(AdamConfig {
        eps,
        ..AdamConfig::adam(lr)
    })
    .unwrap();
    adam.step(&mut tied).unwrap();
    // One state entry for the table, none for a head matrix.
    assert_eq!(adam.state().params.len(), tied.param_names().len());
    let after = tied.param("embed.tok").unwrap().value.to_owned();
    let once = ndarray::Zip::from(&tok)
        .and(&summed)
        .map_collect(|&w, &g| w - lr * g / (g.abs() + eps));
    let worst = (&after - &once).iter().fold(0.0f64, |m, d| m.max(d.abs()));
    assert!(
        worst < 1e-15,
        "the table moved {worst} away from one update"
    );
}
