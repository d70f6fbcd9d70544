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
