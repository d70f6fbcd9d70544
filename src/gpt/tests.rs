//! The training step on [recycled](crate::kernels::recycle) buffers.

use std::sync::atomic::Ordering;

use ndarray::Array2;
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::kernels::recycle::{POISON, exclusive};
use crate::param::Params;
use crate::{Gpt, GptConfig};

/// The loss and every parameter gradient of one step of a fresh model on `(batch, t)` ids,
/// bit for bit.
fn one_step(config: &GptConfig, (batch, t): (usize, usize)) -> (u64, Vec<(String, Vec<u64>)>) {
    let mut gpt = Gpt::<f64>::new(config.clone(), &mut StdRng::seed_from_u64(11)).unwrap();
    let v = config.vocab_size;
    let ids = Array2::from_shape_fn((batch, t), |(b, i)| (7 * b + 3 * i + i * i) % v);
    let targets = Array2::from_shape_fn((batch, t), |(b, i)| (b + 5 * i + 1) % v);
    let loss = gpt.loss(&ids, &targets).unwrap();
    gpt.backward_loss().unwrap();
    let mut grads = Vec::new();
    gpt.for_each_param(&mut |name, p| {
        grads.push((
            name.to_string(),
            p.grad.iter().map(|g| g.to_bits()).collect(),
        ));
    });
    (loss.to_bits(), grads)
}

/// Clears [`POISON`] when dropped, even if the test fails.
struct Antidote;

impl Drop for Antidote {
    fn drop(&mut self) {
        POISON.store(false, Ordering::Relaxed);
    }
}

/// Steps large enough for every `(B·T, C)` activation and gradient, the MLP's hidden rows and
/// the attention probabilities to come from recycled buffers (a megabyte of `f64` or more),
/// once as they are and once with every buffer filled with NaN when it is lent: an output read
/// before it is written would change the loss or a gradient.
#[test]
fn a_step_on_buffers_full_of_nan_computes_what_a_clean_step_does() {
    let _only_us = exclusive();
    let gpt = GptConfig::with_sizes(23, 256, 4, 1, 256);
    let mut llama = GptConfig::llama(23, 256, 4, 2, 1, 256);
    llama.mlp_hidden = 512;
    for config in [gpt, llama] {
        // T = 128 runs the plain attention kernel, T = 256 the tiled one.
        for shape in [(4, 128), (2, 256)] {
            let clean = one_step(&config, shape);
            let _antidote = Antidote;
            POISON.store(true, Ordering::Relaxed);
            let poisoned = one_step(&config, shape);
            assert!(
                clean == poisoned,
                "{config:?} at {shape:?}: a stale value was read"
            );
        }
    }
}
