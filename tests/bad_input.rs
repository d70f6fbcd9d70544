//! Bad input through the public API: every error variant the layers can produce is reached,
//! with a message naming the layer and the expected and actual shapes; random shapes and ids
//! never panic; and a failed call changes no parameter or gradient.
//!
//! An input the composite layers (`Block`, `Sequential`, `Gpt`) pass on unchecked is reported
//! by the sub-layer that refused it: a `Block` given the wrong width fails in its first
//! `LayerNorm`, and the message says so. A backward is checked by the composite itself (its
//! last forward must have completed, with `dy` of that forward's output shape), so it names
//! the composite; `Mlp` checks its input width itself too.

mod common;

use baregpt::gpt::parts::{AttentionKind, MlpKind, NormKind, PositionKind};
use baregpt::kernels::{
    attention_forward, grouped_attention_backward, grouped_attention_forward, rope_backward,
    rope_forward, token_embedding_backward, token_embedding_forward,
};
use baregpt::layer::KvCache;
use baregpt::layers::{
    Attention, AttentionConfig, Block, Embedding, Gelu, LayerNorm, Linear, Mlp, RmsNorm,
    Sequential, SwiGlu,
};
use baregpt::prelude::*;
use baregpt::{CrossEntropy, Error, Gpt, GptConfig};
use common::{config, rng, snapshot};
use ndarray::{Array1, Array2, Array3, array};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::panic::{AssertUnwindSafe, catch_unwind};

const REGRESSIONS: &str = "proptest-regressions/bad_input.txt";

fn x(b: usize, t: usize, c: usize) -> Array3<f64> {
    Array3::from_shape_fn((b, t, c), |(i, j, k)| {
        ((i + 2 * j + 3 * k) as f64 * 0.3).sin()
    })
}

fn small_config() -> GptConfig {
    GptConfig {
        mlp_hidden: 16,
        final_norm: true,
        ..GptConfig::with_sizes(10, 8, 2, 1, 4)
    }
}

/// Asserts `result` is an error whose message is exactly `message`, and returns it.
#[track_caller]
fn expect_err<T: std::fmt::Debug>(result: baregpt::Result<T>, message: &str) -> Error {
    let err = result.expect_err("expected an error");
    assert_eq!(err.to_string(), message);
    err
}

/// Runs `call` on `layer` (after a valid forward and backward so gradients are non-zero),
/// requires it to fail with `message`, and requires parameters and gradients to be unchanged.
#[track_caller]
fn fails_without_side_effects<L: Layer<f64> + ?Sized, T: std::fmt::Debug>(
    layer: &mut L,
    valid_x: &Array3<f64>,
    call: impl FnOnce(&mut L) -> baregpt::Result<T>,
    message: &str,
) -> Error {
    let y = layer.forward(valid_x).unwrap();
    layer.backward(&y.mapv(|v| v + 0.5)).unwrap();
    let before = snapshot(layer);
    let err = expect_err(call(layer), message);
    assert!(
        snapshot(layer) == before,
        "the failed call changed the layer"
    );
    err
}

#[test]
fn shape_mismatch_names_each_layer_and_both_shapes() {
    let mut r = rng(0);
    let good = x(2, 3, 4);
    let wide = x(2, 3, 5);

    let mut linear = Linear::new(4, 3, true, &mut r).unwrap();
    let err = fails_without_side_effects(
        &mut linear,
        &good,
        |l| l.forward(&wide),
        "Linear: input has shape [2, 3, 5], expected [*, *, 4]",
    );
    assert!(matches!(
        err,
        Error::ShapeMismatch { layer: "Linear", what: "input", ref actual, .. } if actual == &[2, 3, 5]
    ));
    fails_without_side_effects(
        &mut linear,
        &good,
        |l| l.backward(&x(2, 3, 4)),
        "Linear: dy has shape [2, 3, 4], expected [2, 3, 3]",
    );
    expect_err(
        Linear::from_arrays(Array2::<f64>::zeros((4, 3)), Some(Array1::zeros(2))),
        "Linear: b has shape [2], expected [3]",
    );

    let mut ln = LayerNorm::new(4).unwrap();
    fails_without_side_effects(
        &mut ln,
        &good,
        |l| l.forward(&wide),
        "LayerNorm: input has shape [2, 3, 5], expected [*, *, 4]",
    );
    fails_without_side_effects(
        &mut ln,
        &good,
        |l| l.backward(&x(1, 3, 4)),
        "LayerNorm: dy has shape [1, 3, 4], expected [2, 3, 4]",
    );

    let mut rms = RmsNorm::new(4).unwrap();
    fails_without_side_effects(
        &mut rms,
        &good,
        |l| l.forward(&wide),
        "RmsNorm: input has shape [2, 3, 5], expected [*, *, 4]",
    );
    fails_without_side_effects(
        &mut rms,
        &good,
        |l| l.backward(&x(2, 3, 3)),
        "RmsNorm: dy has shape [2, 3, 3], expected [2, 3, 4]",
    );

    let mut gelu = Gelu::new();
    fails_without_side_effects(
        &mut gelu,
        &good,
        |l| l.backward(&x(2, 2, 4)),
        "Gelu: dy has shape [2, 2, 4], expected [2, 3, 4]",
    );

    let mut attn = Attention::new(4, 2, &mut r).unwrap();
    fails_without_side_effects(
        &mut attn,
        &good,
        |l| l.forward(&wide),
        "Attention: input has shape [2, 3, 5], expected [*, *, 4]",
    );
    fails_without_side_effects(
        &mut attn,
        &good,
        |l| l.backward(&x(2, 4, 4)),
        "Attention: dy has shape [2, 4, 4], expected [2, 3, 4]",
    );

    // Composite layers: the forward's first check names the layer that makes it (the Mlp
    // checks its width, a Block leaves it to its first norm); the backward is checked by the
    // composite before any part accumulates.
    let mut mlp = Mlp::new(4, 8, &mut r).unwrap();
    fails_without_side_effects(
        &mut mlp,
        &good,
        |l| l.forward(&wide),
        "Mlp: input has shape [2, 3, 5], expected [*, *, 4]",
    );
    fails_without_side_effects(
        &mut mlp,
        &good,
        |l| l.backward(&wide),
        "Mlp: dy has shape [2, 3, 5], expected [2, 3, 4]",
    );
    let mut swiglu = SwiGlu::new(4, 7, &mut r).unwrap();
    fails_without_side_effects(
        &mut swiglu,
        &good,
        |l| l.forward(&wide),
        "SwiGlu: input has shape [2, 3, 5], expected [*, *, 4]",
    );
    fails_without_side_effects(
        &mut swiglu,
        &good,
        |l| l.backward(&x(2, 1, 4)),
        "SwiGlu: dy has shape [2, 1, 4], expected [2, 3, 4]",
    );
    let mut block = Block::new(4, 2, 8, &mut r).unwrap();
    fails_without_side_effects(
        &mut block,
        &good,
        |l| l.forward(&wide),
        "LayerNorm: input has shape [2, 3, 5], expected [*, *, 4]",
    );
    fails_without_side_effects(
        &mut block,
        &good,
        |l| l.backward(&wide),
        "Block: dy has shape [2, 3, 5], expected [2, 3, 4]",
    );

    let mut seq = Sequential::new()
        .push(Linear::new(4, 6, true, &mut r).unwrap())
        .push(LayerNorm::new(6).unwrap());
    fails_without_side_effects(
        &mut seq,
        &good,
        |l| l.forward(&wide),
        "Linear: input has shape [2, 3, 5], expected [*, *, 4]",
    );
    fails_without_side_effects(
        &mut seq,
        &good,
        |l| l.backward(&good),
        "Sequential: dy has shape [2, 3, 4], expected [2, 3, 6]",
    );

    let mut embed = Embedding::<f64>::new(10, 4, 6, &mut r).unwrap();
    embed.forward(&array![[1, 2, 3]]).unwrap();
    expect_err(
        embed.backward(&x(1, 3, 5)),
        "Embedding: dy has shape [1, 3, 5], expected [1, 3, 4]",
    );

    let mut head = CrossEntropy::<f64>::new();
    expect_err(
        head.loss(&x(2, 3, 5), &array![[0, 1], [2, 3]]),
        "cross_entropy: targets has shape [2, 2], expected [2, 3]",
    );
    head.set_targets(array![[0, 1, 2], [3, 4, 0]]);
    head.forward(&x(2, 3, 5)).unwrap();
    expect_err(
        head.backward(&x(2, 1, 1)),
        "CrossEntropy: dy has shape [2, 1, 1], expected [1, 1, 1]",
    );

    let mut gpt = Gpt::<f64>::new(small_config(), &mut r).unwrap();
    let ids = array![[1, 2, 3], [4, 5, 6]];
    let err = expect_err(
        gpt.loss(&ids, &array![[1, 2, 3]]),
        "Gpt: targets has shape [1, 3], expected [2, 3]",
    );
    assert!(matches!(
        err,
        Error::ShapeMismatch {
            layer: "Gpt",
            what: "targets",
            ..
        }
    ));
    gpt.forward(&ids).unwrap();
    let before = snapshot(&gpt);
    expect_err(
        Layer::backward(&mut gpt, &x(2, 3, 9)),
        "Gpt: dy has shape [2, 3, 9], expected [2, 3, 10]",
    );
    assert!(snapshot(&gpt) == before);

    let q = x(1, 3, 4);
    expect_err(
        attention_forward(q.view(), x(1, 3, 6).view(), q.view(), 2),
        "attention: k has shape [1, 3, 6], expected [1, *, 4]",
    );
}

#[test]
fn token_ids_out_of_range_are_refused() {
    let mut embed = Embedding::<f64>::new(10, 4, 6, &mut rng(1)).unwrap();
    let err = expect_err(
        embed.forward(&array![[1, 2, 3], [4, 10, 6]]),
        "Embedding: token id 10 at (b, t) = (1, 1) is out of range for vocabulary size 10",
    );
    assert!(matches!(
        err,
        Error::TokenOutOfRange {
            layer: "Embedding",
            id: 10,
            position: (1, 1),
            vocab_size: 10
        }
    ));
    // Through a key/value cache (inference at an offset) the ids are checked too.
    let mut cache = KvCache::new(1, 6).unwrap();
    expect_err(
        cache.infer(&embed, &array![[usize::MAX]]),
        &format!(
            "Embedding: token id {} at (b, t) = (0, 0) is out of range for vocabulary size 10",
            usize::MAX
        ),
    );
    assert!(cache.is_empty(), "the failed pass advanced the cache");
    cache.infer(&embed, &array![[1, 2]]).unwrap();
    expect_err(
        cache.infer(&embed, &array![[3, 10]]),
        "Embedding: token id 10 at (b, t) = (0, 1) is out of range for vocabulary size 10",
    );
    assert_eq!(cache.len(), 2, "the failed pass advanced the cache");

    let mut gpt = Gpt::<f64>::new(small_config(), &mut rng(1)).unwrap();
    let message =
        "Embedding: token id 12 at (b, t) = (0, 2) is out of range for vocabulary size 10";
    expect_err(gpt.forward(&array![[0, 1, 12]]), message);
    let before = snapshot(&gpt);
    expect_err(gpt.loss(&array![[0, 1, 12]], &array![[0, 1, 2]]), message);
    assert!(snapshot(&gpt) == before);
}

#[test]
fn targets_out_of_range_are_refused() {
    let mut head = CrossEntropy::<f64>::new();
    let err = expect_err(
        head.loss(&x(1, 3, 5), &array![[0, 5, 1]]),
        "cross_entropy: target 5 at (b, t) = (0, 1) is out of range for 5 classes",
    );
    assert!(matches!(
        err,
        Error::TargetOutOfRange {
            target: 5,
            classes: 5,
            ..
        }
    ));
    head.set_targets(array![[0, 1, 7]]);
    expect_err(
        head.forward(&x(1, 3, 5)),
        "cross_entropy: target 7 at (b, t) = (0, 2) is out of range for 5 classes",
    );

    let mut gpt = Gpt::<f64>::new(small_config(), &mut rng(2)).unwrap();
    let before = snapshot(&gpt);
    expect_err(
        gpt.loss(&array![[0, 1]], &array![[3, 10]]),
        "cross_entropy: target 10 at (b, t) = (0, 1) is out of range for 10 classes",
    );
    assert!(snapshot(&gpt) == before);
    // The failed loss leaves nothing to backpropagate.
    expect_err(
        gpt.backward_loss(),
        "CrossEntropy: backward called before forward (nothing cached)",
    );
}

#[test]
fn sequence_lengths_outside_one_to_context_are_refused() {
    let mut embed = Embedding::<f64>::new(10, 4, 3, &mut rng(3)).unwrap();
    let err = expect_err(
        embed.forward(&Array2::zeros((2, 4))),
        "Embedding: sequence length 4 is not in 1..=3",
    );
    assert!(matches!(
        err,
        Error::SequenceLength {
            layer: "Embedding",
            len: 4,
            context: 3
        }
    ));
    expect_err(
        embed.forward(&Array2::zeros((2, 0))),
        "Embedding: sequence length 0 is not in 1..=3",
    );
    // Two new positions after two cached ones end past the context: refused by the
    // embedding itself (a cache longer than the context) and by a cache of the context's
    // capacity, both naming the embedding.
    for capacity in [10, 3] {
        let mut cache = KvCache::new(1, capacity).unwrap();
        cache.infer(&embed, &Array2::zeros((1, 2))).unwrap();
        expect_err(
            cache.infer(&embed, &Array2::zeros((1, 2))),
            "Embedding: sequence length 4 is not in 1..=3",
        );
        assert_eq!(cache.len(), 2, "the failed pass advanced the cache");
    }

    let mut gpt = Gpt::<f64>::new(small_config(), &mut rng(3)).unwrap();
    expect_err(
        gpt.forward(&Array2::zeros((1, 5))),
        "Embedding: sequence length 5 is not in 1..=4",
    );
    expect_err(
        gpt.loss(&Array2::zeros((3, 0)), &Array2::zeros((3, 0))),
        "Embedding: sequence length 0 is not in 1..=4",
    );
}

#[test]
fn backward_before_forward_is_refused_by_every_layer() {
    let mut r = rng(4);
    let dy = x(1, 2, 4);
    let cases: Vec<(Box<dyn Layer<f64>>, &str)> = vec![
        (Box::new(Linear::new(4, 4, true, &mut r).unwrap()), "Linear"),
        (Box::new(LayerNorm::new(4).unwrap()), "LayerNorm"),
        (Box::new(RmsNorm::new(4).unwrap()), "RmsNorm"),
        (Box::new(Gelu::new()), "Gelu"),
        (Box::new(Attention::new(4, 2, &mut r).unwrap()), "Attention"),
        // Composite layers refuse a backward themselves, before any part runs.
        (Box::new(Mlp::new(4, 8, &mut r).unwrap()), "Mlp"),
        (Box::new(SwiGlu::new(4, 8, &mut r).unwrap()), "SwiGlu"),
        (Box::new(Block::new(4, 2, 8, &mut r).unwrap()), "Block"),
        (
            Box::new(Sequential::new().push(LayerNorm::new(4).unwrap())),
            "Sequential",
        ),
        (Box::new(Sequential::new()), "Sequential"),
        (Box::new(CrossEntropy::new()), "CrossEntropy"),
    ];
    for (mut layer, name) in cases {
        let before = snapshot(layer.as_ref());
        let err = expect_err(
            layer.backward(&dy),
            &format!("{name}: backward called before forward (nothing cached)"),
        );
        assert!(matches!(err, Error::BackwardBeforeForward { layer } if layer == name));
        assert!(snapshot(layer.as_ref()) == before);
    }

    let mut embed = Embedding::<f64>::new(5, 4, 3, &mut r).unwrap();
    expect_err(
        embed.backward(&dy),
        "Embedding: backward called before forward (nothing cached)",
    );
    expect_err(
        CrossEntropy::<f64>::new().backward_loss(),
        "CrossEntropy: backward called before forward (nothing cached)",
    );

    let mut gpt = Gpt::<f64>::new(small_config(), &mut r).unwrap();
    expect_err(
        gpt.backward_loss(),
        "CrossEntropy: backward called before forward (nothing cached)",
    );
    expect_err(
        Layer::backward(&mut gpt, &x(1, 2, 10)),
        "Gpt: backward called before forward (nothing cached)",
    );
    // A forward alone is not a loss: the inherent backward still has nothing to start from.
    gpt.forward(&array![[1, 2]]).unwrap();
    expect_err(
        gpt.backward_loss(),
        "CrossEntropy: backward called before forward (nothing cached)",
    );

    // A forward that failed part-way through a Sequential leaves nothing to backpropagate.
    let mut seq = Sequential::new()
        .push(Linear::new(4, 3, true, &mut r).unwrap())
        .push(LayerNorm::new(5).unwrap());
    expect_err(
        seq.forward(&x(1, 2, 4)),
        "LayerNorm: input has shape [1, 2, 3], expected [*, *, 5]",
    );
    expect_err(
        seq.backward(&x(1, 2, 5)),
        "Sequential: backward called before forward (nothing cached)",
    );
}

#[test]
fn invalid_configurations_are_refused() {
    let mut r = rng(5);
    let err = expect_err(
        Attention::<f64>::new(8, 3, &mut r),
        "Attention: invalid configuration: 3 heads do not divide d_model 8",
    );
    assert!(matches!(
        err,
        Error::InvalidConfig {
            layer: "Attention",
            ..
        }
    ));
    expect_err(
        Attention::<f64>::new(8, 0, &mut r),
        "Attention: invalid configuration: 0 heads do not divide d_model 8",
    );
    expect_err(
        Block::<f32>::new(6, 4, 8, &mut r),
        "Attention: invalid configuration: 4 heads do not divide d_model 6",
    );
    let q = x(1, 2, 6);
    expect_err(
        attention_forward(q.view(), q.view(), q.view(), 4),
        "attention: invalid configuration: 4 heads do not divide the width 6",
    );

    let heads = GptConfig {
        n_heads: 3,
        ..small_config()
    };
    let message = "GptConfig: invalid configuration: n_heads 3 does not divide d_model 8";
    expect_err(heads.validate(), message);
    expect_err(Gpt::<f64>::new(heads, &mut r), message);

    type Zero = fn(&mut GptConfig);
    let zeroed: [(&str, Zero); 5] = [
        ("vocab_size", |c| c.vocab_size = 0),
        ("d_model", |c| c.d_model = 0),
        ("n_heads", |c| c.n_heads = 0),
        ("context", |c| c.context = 0),
        ("mlp_hidden", |c| c.mlp_hidden = 0),
    ];
    for (field, zero) in zeroed {
        let mut cfg = small_config();
        zero(&mut cfg);
        let message = format!("GptConfig: invalid configuration: {field} must be positive");
        expect_err(cfg.validate(), &message);
        let err = expect_err(Gpt::<f32>::new(cfg, &mut r), &message);
        assert!(matches!(
            err,
            Error::InvalidConfig {
                layer: "GptConfig",
                ..
            }
        ));
    }

    let mut head = CrossEntropy::<f64>::new();
    expect_err(
        head.forward(&x(1, 2, 3)),
        "CrossEntropy: invalid configuration: no targets set: call set_targets before forward",
    );
    expect_err(
        RmsNorm::<f64>::new(0),
        "RmsNorm: invalid configuration: the width must be positive",
    );
    expect_err(
        RmsNorm::<f64>::with_eps(4, -1e-5),
        "RmsNorm: invalid configuration: eps -0.00001 is not a finite non-negative f64",
    );
    expect_err(
        RmsNorm::<f32>::with_eps(4, 1e39),
        "RmsNorm: invalid configuration: eps 1000000000000000000000000000000000000000 is not a \
         finite non-negative f32",
    );
    expect_err(
        SwiGlu::<f64>::new(0, 4, &mut r),
        "SwiGlu: invalid configuration: the width must be positive",
    );
    expect_err(
        SwiGlu::<f64>::new(4, 0, &mut r),
        "SwiGlu: invalid configuration: the hidden width must be positive",
    );
    let bad_eps = GptConfig {
        norm: NormKind::RmsNorm { eps: f64::INFINITY },
        ..small_config()
    };
    let message = "GptConfig: invalid configuration: norm eps inf is not finite and non-negative";
    expect_err(bad_eps.validate(), message);
    expect_err(Gpt::<f64>::new(bad_eps, &mut r), message);
    let zero_hidden = GptConfig {
        mlp: MlpKind::SwiGlu,
        mlp_hidden: 0,
        ..small_config()
    };
    expect_err(
        Gpt::<f64>::new(zero_hidden, &mut r),
        "GptConfig: invalid configuration: mlp_hidden must be positive",
    );
}

#[test]
fn attention_variants_refuse_bad_settings_and_shapes() {
    let mut r = rng(6);
    let with = |config: AttentionConfig, r: &mut rand::rngs::StdRng| {
        Attention::<f64>::with_config(8, config, r)
    };
    expect_err(
        with(AttentionConfig::new(4).kv_heads(3), &mut r),
        "Attention: invalid configuration: 3 key/value heads do not divide the 4 heads",
    );
    expect_err(
        with(AttentionConfig::new(4).kv_heads(0), &mut r),
        "Attention: invalid configuration: 0 key/value heads do not divide the 4 heads",
    );
    expect_err(
        Attention::<f64>::with_config(6, AttentionConfig::new(2).rotary(1e4), &mut r),
        "Attention: invalid configuration: rotary embeddings need an even head size, and \
         d_model 6 / 2 heads is 3",
    );
    for theta in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let err = with(AttentionConfig::new(2).rotary(theta), &mut r).unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidConfig {
                    layer: "Attention",
                    ..
                }
            ),
            "{err}"
        );
    }

    for p in [1.0, -0.1, f64::NAN] {
        let err = with(AttentionConfig::new(2).with_dropout(p, 0), &mut r).unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidConfig {
                    layer: "Attention",
                    ..
                }
            ),
            "{err}"
        );
    }
    expect_err(
        with(AttentionConfig::new(2).with_dropout(1.0, 0), &mut r),
        "Attention: invalid configuration: the attention dropout probability 1 is not in [0, 1)",
    );

    // A grouped, biased, rotary layer refuses bad shapes without changing anything.
    let config = AttentionConfig::new(4)
        .kv_heads(2)
        .with_bias(true)
        .rotary(1e4);
    let mut gqa = with(config, &mut r).unwrap();
    let valid = x(2, 3, 8);
    fails_without_side_effects(
        &mut gqa,
        &valid,
        |l| l.forward(&x(2, 3, 6)),
        "Attention: input has shape [2, 3, 6], expected [*, *, 8]",
    );
    fails_without_side_effects(
        &mut gqa,
        &valid,
        |l| l.backward(&x(2, 4, 8)),
        "Attention: dy has shape [2, 4, 8], expected [2, 3, 8]",
    );
    // Its cache slot is H_kv·D = 4 wide: a multi-head layer of width 8 cannot continue it.
    let mut cache = KvCache::new(2, 6).unwrap();
    cache.infer(&gqa, &valid).unwrap();
    let mha = Attention::<f64>::new(8, 4, &mut r).unwrap();
    expect_err(
        cache.infer(&mha, &x(2, 1, 8)),
        "Attention: cached keys has shape [4], expected [8]",
    );
    assert_eq!(cache.len(), 3);

    // The kernels.
    let (q, kv) = (x(1, 3, 6), x(1, 3, 4));
    expect_err(
        grouped_attention_forward(q.view(), kv.view(), kv.view(), 3, 2),
        "attention: invalid configuration: 2 key/value heads do not divide the 3 heads",
    );
    expect_err(
        grouped_attention_forward(q.view(), kv.view(), kv.view(), 3, 1),
        "attention: k has shape [1, 3, 4], expected [1, *, 2]",
    );
    let (ctx, probs) =
        grouped_attention_forward(q.view(), x(1, 3, 2).view(), x(1, 3, 2).view(), 3, 1).unwrap();
    expect_err(
        grouped_attention_backward(q.view(), kv.view(), kv.view(), probs.view(), ctx.view(), 1),
        "attention: k has shape [1, 3, 4], expected [1, *, 2]",
    );
    expect_err(
        rope_forward(q.view(), 3, 0, 1e4),
        "rope: invalid configuration: the head size 3 must be even and positive",
    );
    expect_err(
        rope_backward(q.view(), 4, 0, 1e4),
        "rope: invalid configuration: the head size 4 does not divide the width 6",
    );
    expect_err(
        rope_forward(q.view(), 2, 0, -2.0),
        "rope: invalid configuration: theta -2 is not finite and positive",
    );
    expect_err(
        rope_forward(q.view(), 2, usize::MAX - 1, 1e4),
        "rope: sequence length 18446744073709551615 is not in 1..=18446744073709551615",
    );
    let tok = Array2::<f64>::zeros((3, 2));
    let err = token_embedding_forward(array![[0, 3]].view(), tok.view()).unwrap_err();
    assert!(matches!(err, Error::TokenOutOfRange { id: 3, .. }), "{err}");
    let mut d_tok = Array2::<f64>::zeros((3, 2));
    expect_err(
        token_embedding_backward(array![[0, 1]].view(), x(1, 2, 3).view(), d_tok.view_mut()),
        "embedding: dy has shape [1, 2, 3], expected [1, 2, 2]",
    );
    assert!(d_tok.iter().all(|&g| g == 0.0));

    // The config refuses what the layers would.
    let gqa = GptConfig {
        attention: AttentionKind::GroupedQuery {
            n_kv_heads: 3,
            bias: false,
        },
        ..small_config()
    };
    let message = "GptConfig: invalid configuration: n_kv_heads 3 does not divide n_heads 2";
    expect_err(gqa.validate(), message);
    expect_err(Gpt::<f64>::new(gqa, &mut r), message);
    let odd = GptConfig {
        positions: PositionKind::rotary(),
        ..GptConfig::with_sizes(10, 6, 2, 1, 4)
    };
    expect_err(
        Gpt::<f64>::new(odd, &mut r),
        "GptConfig: invalid configuration: rotary positions need an even head size, and \
         d_model 6 / n_heads 2 is odd",
    );
    let theta = GptConfig {
        positions: PositionKind::Rotary { theta: f64::NAN },
        ..small_config()
    };
    expect_err(
        theta.validate(),
        "GptConfig: invalid configuration: rope theta NaN is not finite and positive",
    );
}

/// One random case for the no-panic property: a layer kind, six sizes in `0..=4`, a seed, and
/// random inputs. Half the cases are well formed (positive sizes, heads dividing the width,
/// matching widths, ids and targets in range, `1 ≤ T ≤ context`), so that valid calls are
/// exercised too; the other half are anything, zero sizes and out-of-range ids included.
#[derive(Clone, Debug)]
struct Case {
    kind: usize,
    sizes: [usize; 6],
    well_formed: bool,
    seed: u64,
    x: Array3<f64>,
    dy: Array3<f64>,
    ids: Array2<usize>,
    targets: Array2<usize>,
}

fn random_array3(dims: (usize, usize, usize)) -> impl Strategy<Value = Array3<f64>> {
    proptest::collection::vec(-3.0..3.0f64, dims.0 * dims.1 * dims.2)
        .prop_map(move |v| Array3::from_shape_vec(dims, v).unwrap())
}

/// Ids of shape `dims` in `0..end`.
fn random_ids(dims: (usize, usize), end: usize) -> impl Strategy<Value = Array2<usize>> {
    proptest::collection::vec(0..end.max(1), dims.0 * dims.1)
        .prop_map(move |v| Array2::from_shape_vec(dims, v).unwrap())
}

fn case() -> impl Strategy<Value = Case> {
    (
        0..12usize,
        prop::array::uniform6(0..=4usize),
        any::<u64>(),
        any::<bool>(),
        (0..=3usize, 0..=5usize, 0..=5usize),
        (0..=3usize, 0..=5usize, 0..=5usize),
        (0..=3usize, 0..=5usize),
        (0..=3usize, 0..=5usize),
    )
        .prop_flat_map(
            |(kind, sizes, seed, well_formed, x_dims, dy_dims, id_dims, target_dims)| {
                let (sizes, x_dims, id_dims, target_dims, id_end) = if well_formed {
                    let sizes = sizes.map(|s| s.max(1));
                    let x_dims = (x_dims.0.max(1), x_dims.1.max(1), sizes[0]);
                    let id_dims = (id_dims.0.max(1), 1 + id_dims.1 % sizes[4]);
                    // CrossEntropy scores x (width sizes[0]); Gpt scores its logits for ids.
                    let target_dims = if kind == 7 {
                        (x_dims.0, x_dims.1)
                    } else {
                        id_dims
                    };
                    (sizes, x_dims, id_dims, target_dims, sizes[0])
                } else {
                    (sizes, x_dims, id_dims, target_dims, sizes[0] + 3)
                };
                (
                    random_array3(x_dims),
                    random_array3(dy_dims),
                    random_ids(id_dims, id_end),
                    random_ids(target_dims, id_end),
                )
                    .prop_map(move |(x, dy, ids, targets)| Case {
                        kind,
                        sizes,
                        well_formed,
                        seed,
                        x,
                        dy,
                        ids,
                        targets,
                    })
            },
        )
}

/// Fresh layer: backward fails and changes nothing; forward changes no parameter; a failing
/// backward changes nothing; after a successful forward, a `dy` of the output's shape works.
fn exercise<X, L>(layer: &mut L, x: &X, dy: &Array3<f64>) -> Result<(), TestCaseError>
where
    X: LayerInput<f64>,
    L: Layer<f64, X> + ?Sized,
{
    let fresh = snapshot(layer);
    prop_assert!(
        layer.backward(dy).is_err(),
        "backward before forward succeeded"
    );
    prop_assert!(snapshot(layer) == fresh);
    let y = layer.forward(x);
    prop_assert!(
        snapshot(layer) == fresh,
        "forward changed a parameter or gradient"
    );
    if layer.backward(dy).is_err() {
        prop_assert!(
            snapshot(layer) == fresh,
            "a failed backward changed the layer"
        );
    }
    if let Ok(y) = y {
        let result = layer.backward(&y.mapv(|v| v * 0.5 - 0.25));
        prop_assert!(
            result.is_ok(),
            "backward after forward failed: {:?}",
            result.err()
        );
        let before = snapshot(layer);
        if layer.forward(x).is_ok() && layer.backward(dy).is_err() {
            prop_assert!(
                snapshot(layer) == before,
                "a failed backward changed the layer"
            );
        }
    }
    Ok(())
}

/// Runs `exercise` on a layer that was built, or requires that building it failed with
/// [`Error::InvalidConfig`] (zero sizes, heads that do not divide the width).
fn built<L>(
    layer: baregpt::Result<L>,
    exercise: impl FnOnce(L) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    match layer {
        Ok(layer) => exercise(layer),
        Err(e) => {
            prop_assert!(matches!(e, Error::InvalidConfig { .. }), "{}", e);
            Ok(())
        }
    }
}

fn run_case(case: &Case) -> Result<(), TestCaseError> {
    let [s0, s1, s2, s3, s4, s5] = case.sizes;
    let mut r = rng(case.seed);
    // Well-formed cases use a head count that divides the width.
    let heads = if !case.well_formed || s0 % s1 == 0 {
        s1
    } else {
        1
    };
    let bias = case.seed.is_multiple_of(2);
    let (x, dy) = (&case.x, &case.dy);
    match case.kind {
        0 => built(Linear::new(s0, s1, bias, &mut r), |mut l| {
            exercise(&mut l, x, dy)
        }),
        1 => built(LayerNorm::new(s0), |mut l| exercise(&mut l, x, dy)),
        2 => exercise(&mut Gelu::new(), x, dy),
        3 => {
            // A third of the attention cases are grouped (s2 key/value heads, which may not
            // divide the heads) and rotary (the head size may be odd), with biases or not.
            let mut config = AttentionConfig::new(heads).with_bias(bias);
            if case.seed % 3 == 1 {
                config = config.kv_heads(s2).rotary(10_000.0);
            }
            built(Attention::with_config(s0, config, &mut r), |mut l| {
                exercise(&mut l, x, dy)
            })
        }
        4 => built(Mlp::new(s0, s1, &mut r), |mut l| exercise(&mut l, x, dy)),
        5 => built(Block::new(s0, heads, s2, &mut r), |mut l| {
            exercise(&mut l, x, dy)
        }),
        6 => {
            // Widths need not chain: a forward may fail part-way through.
            let linear = Linear::new(s0, s1, bias, &mut r);
            let norm = LayerNorm::new(if case.well_formed { s1 } else { s2 });
            let seq = linear.and_then(|linear| {
                Ok(Sequential::new().push(linear).push(Gelu::new()).push(norm?))
            });
            built(seq, |mut l| exercise(&mut l, x, dy))
        }
        7 => {
            let mut head = CrossEntropy::new();
            head.set_targets(case.targets.clone());
            exercise(&mut head, x, dy)?;
            let _ = head.loss(x, &case.ids);
            let _ = head.backward_loss();
            Ok(())
        }
        8 => built(Embedding::new(s0, s1, s4, &mut r), |mut embed| {
            // Inference at an offset: `s3` positions cached, then the ids (either may be
            // refused, for length or ids, but nothing panics).
            if let Ok(mut cache) = KvCache::new(case.ids.nrows(), s3 + s4) {
                let _ = cache.infer(&embed, &Array2::zeros((case.ids.nrows(), s3)));
                let _ = cache.infer(&embed, &case.ids);
            }
            exercise(&mut embed, &case.ids, dy)
        }),
        9 => built(RmsNorm::with_eps(s0, s1 as f64 * 1e-3), |mut l| {
            exercise(&mut l, x, dy)
        }),
        10 => built(SwiGlu::new(s0, s1, &mut r), |mut l| exercise(&mut l, x, dy)),
        _ => {
            // Every combination of the norms and MLPs, by two bits of the seed, with learned or
            // rotary positions.
            let rotary = case.seed % 3 == 1;
            let cfg = GptConfig {
                mlp_hidden: s5,
                final_norm: bias,
                norm: if case.seed & 2 == 0 {
                    NormKind::default()
                } else {
                    NormKind::RmsNorm { eps: 1e-6 }
                },
                mlp: if case.seed & 4 == 0 {
                    MlpKind::Gelu
                } else {
                    MlpKind::SwiGlu
                },
                positions: match rotary {
                    true => PositionKind::rotary(),
                    false => PositionKind::Learned,
                },
                attention: AttentionKind::MultiHead { bias: rotary },
                ..GptConfig::with_sizes(
                    s0,
                    if case.well_formed { s1 * s2 } else { s1 },
                    s2,
                    s3 % 3,
                    s4,
                )
            };
            match Gpt::<f64>::new(cfg, &mut r) {
                Ok(mut gpt) => {
                    let fresh = snapshot(&gpt);
                    prop_assert!(gpt.backward_loss().is_err());
                    if gpt.loss(&case.ids, &case.targets).is_err() || gpt.backward_loss().is_err() {
                        prop_assert!(snapshot(&gpt) == fresh, "a failed call changed the model");
                    }
                    let mut gpt = Gpt::<f64>::new(gpt.config().clone(), &mut r).unwrap();
                    exercise(&mut gpt, &case.ids, dy)?;
                    // One id past the vocabulary, and one position past the context.
                    let mut bad_id = case.ids.clone();
                    if let Some(first) = bad_id.iter_mut().next() {
                        *first = s0;
                        prop_assert!(gpt.forward(&bad_id).is_err());
                    }
                    let too_long = Array2::zeros((1, gpt.config().context + 1));
                    let before = snapshot(&gpt);
                    prop_assert!(gpt.loss(&too_long, &too_long).is_err());
                    prop_assert!(snapshot(&gpt) == before);
                    Ok(())
                }
                Err(e) => {
                    prop_assert!(matches!(e, Error::InvalidConfig { .. }), "{}", e);
                    Ok(())
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(config(1024, REGRESSIONS))]

    /// No public call panics on random shapes, sizes (zero included) and ids.
    #[test]
    fn random_inputs_never_panic(case in case()) {
        let outcome = catch_unwind(AssertUnwindSafe(|| run_case(&case)));
        match outcome {
            Ok(result) => result?,
            Err(_) => prop_assert!(false, "a public call panicked on {:?}", case),
        }
    }
}

// Issue 12: each problem found by fuzzing, pinned by a test of its own.

#[test]
fn softmax_backward_checks_shapes_and_changes_nothing_on_error() {
    let probs = Array2::<f64>::from_elem((2, 3), 1.0 / 3.0);
    let mut d = Array2::<f64>::ones((2, 4));
    let err = baregpt::kernels::softmax_backward_in_place(probs.view(), d.view_mut());
    expect_err(err, "softmax: d_probs has shape [2, 4], expected [2, 3]");
    assert!(d.iter().all(|&v| v == 1.0));
}

#[test]
fn layer_norm_backward_checks_rstd_before_adding_anything() {
    use baregpt::kernels::{LayerNormCache, layer_norm_backward};
    let cache = LayerNormCache {
        x_hat: Array2::<f64>::ones((3, 2)),
        rstd: Array1::ones(2),
    };
    let (mut dg, mut db) = (Array1::from_elem(2, 0.5), Array1::from_elem(2, 0.5));
    let dy = Array2::ones((3, 2));
    let result = layer_norm_backward(
        &cache,
        dy.view(),
        Array1::ones(2).view(),
        dg.view_mut(),
        db.view_mut(),
    );
    expect_err(result, "layer_norm: rstd has shape [2], expected [3]");
    assert_eq!(
        (dg, db),
        (Array1::from_elem(2, 0.5), Array1::from_elem(2, 0.5))
    );
}

#[test]
fn rms_norm_backward_checks_its_cache_before_adding_anything() {
    use baregpt::kernels::{RmsNormCache, rms_norm_backward, rms_norm_forward};
    let cache = RmsNormCache {
        x_hat: Array2::<f64>::ones((3, 2)),
        rstd: Array1::ones(2),
    };
    let mut dg = Array1::from_elem(2, 0.5);
    let dy = Array2::ones((3, 2));
    let result = rms_norm_backward(&cache, dy.view(), Array1::ones(2).view(), dg.view_mut());
    expect_err(result, "rms_norm: rstd has shape [2], expected [3]");
    let cache = RmsNormCache {
        rstd: Array1::ones(3),
        ..cache
    };
    let result = rms_norm_backward(&cache, dy.view(), Array1::ones(3).view(), dg.view_mut());
    expect_err(result, "rms_norm: gamma has shape [3], expected [2]");
    let result = rms_norm_backward(
        &cache,
        dy.view(),
        Array1::ones(2).view(),
        Array1::zeros(4).view_mut(),
    );
    expect_err(result, "rms_norm: d_gamma has shape [4], expected [2]");
    assert_eq!(dg, Array1::from_elem(2, 0.5));
    expect_err(
        rms_norm_forward(dy.view(), Array1::ones(3).view(), 1e-5),
        "rms_norm: gamma has shape [3], expected [2]",
    );
}

#[test]
fn silu_and_swiglu_kernels_check_shapes() {
    use baregpt::kernels::{silu_backward, swiglu_backward, swiglu_forward};
    let (a, b) = (Array2::<f64>::ones((2, 3)), Array2::<f64>::ones((3, 2)));
    expect_err(
        silu_backward(a.view(), b.view()),
        "silu: dy has shape [3, 2], expected [2, 3]",
    );
    expect_err(
        swiglu_forward(a.view(), b.view()),
        "swiglu: up has shape [3, 2], expected [2, 3]",
    );
    expect_err(
        swiglu_backward(a.view(), b.view(), a.view()),
        "swiglu: up has shape [3, 2], expected [2, 3]",
    );
    expect_err(
        swiglu_backward(a.view(), a.view(), b.view()),
        "swiglu: da has shape [3, 2], expected [2, 3]",
    );
}

#[test]
fn absurd_sizes_are_refused_before_allocating() {
    let mut r = rng(12);
    expect_err(
        Linear::<f32>::new(1 << 40, 1 << 40, true, &mut r),
        "Linear: a parameter matrix of shape [1099511627776, 1099511627776] needs more than \
         usize::MAX bytes, over the per-allocation limit of 68719476736 bytes",
    );
    assert!(matches!(
        Linear::<f32>::new(1 << 20, 1 << 15, true, &mut r),
        Err(Error::TooLarge { bytes: Some(b), .. }) if b == 1 << 37
    ));
    for edit in 0..4 {
        let mut c = GptConfig::tiny(10);
        match edit {
            0 => c.vocab_size = usize::MAX - 1,
            1 => c.context = usize::MAX,
            2 => c.n_layers = 1 << 30,
            _ => {
                c.d_model = 1 << 40;
                c.n_heads = 1;
            }
        }
        let err = Gpt::<f32>::new(c, &mut r).unwrap_err();
        assert!(
            matches!(err, Error::TooLarge { .. } | Error::InvalidConfig { .. }),
            "{err}"
        );
    }
    assert!(matches!(
        KvCache::<f32>::new(1 << 40, 8),
        Err(Error::TooLarge { .. })
    ));
    assert!(matches!(
        LayerNorm::<f32>::new(1 << 40),
        Err(Error::TooLarge { .. })
    ));
    assert!(matches!(
        RmsNorm::<f32>::new(1 << 40),
        Err(Error::TooLarge { .. })
    ));
    expect_err(
        SwiGlu::<f32>::new(8, 1 << 60, &mut r),
        "SwiGlu: a parameter matrix of shape [8, 1152921504606846976] needs more than \
         usize::MAX bytes, over the per-allocation limit of 68719476736 bytes",
    );
    assert!(matches!(
        SwiGlu::<f32>::new(1 << 20, 1 << 15, &mut r),
        Err(Error::TooLarge { bytes: Some(b), .. }) if b == 1 << 37
    ));
    let gpt = Gpt::<f32>::new(GptConfig::tiny(10), &mut r).unwrap();
    let opts = baregpt::generate::SampleOptions::default();
    let err = baregpt::generate::generate(&gpt, &[1], usize::MAX, &opts, &mut r, |_| {});
    assert!(matches!(
        err,
        Err(Error::TooLarge {
            layer: "generate",
            ..
        })
    ));
    let task = baregpt::data::AdditionTask::new(2).unwrap();
    assert!(matches!(
        task.train_pairs(usize::MAX, &mut r),
        Err(Error::TooLarge { .. })
    ));
    let data = baregpt::data::TextDataset::new(&"abc".repeat(20), 0.2).unwrap();
    let batch = data.batch(baregpt::data::Split::Train, 1 << 40, 2, &mut r);
    assert!(matches!(batch, Err(Error::TooLarge { .. })));
    // A zero-element input whose other axes are huge: the output is refused.
    let empty: [f64; 0] = [];
    let x = ndarray::ArrayView2::from_shape((1 << 40, 0), &empty).unwrap();
    let w = ndarray::ArrayView2::from_shape((0, 1 << 40), &empty).unwrap();
    assert!(matches!(
        baregpt::kernels::linear_forward(x, w, None),
        Err(Error::TooLarge {
            layer: "linear",
            ..
        })
    ));
}

#[test]
fn a_failed_forward_leaves_every_layer_refusing_backward() {
    let mut r = rng(13);
    let good = x(2, 3, 4);
    let bad = x(2, 3, 5);
    let mut layers: Vec<Box<dyn Layer<f64>>> = vec![
        Box::new(Linear::new(4, 4, true, &mut r).unwrap()),
        Box::new(LayerNorm::new(4).unwrap()),
        Box::new(Attention::new(4, 2, &mut r).unwrap()),
        Box::new(Mlp::new(4, 8, &mut r).unwrap()),
        Box::new(RmsNorm::new(4).unwrap()),
        Box::new(SwiGlu::new(4, 8, &mut r).unwrap()),
        Box::new(Block::new(4, 2, 8, &mut r).unwrap()),
        Box::new(Sequential::new().push(Linear::new(4, 4, true, &mut r).unwrap())),
    ];
    for layer in &mut layers {
        let y = layer.forward(&good).unwrap();
        assert!(layer.forward(&bad).is_err());
        let before = snapshot(&**layer);
        let err = layer.backward(&Array3::ones(y.dim())).unwrap_err();
        assert!(
            matches!(err, Error::BackwardBeforeForward { .. }),
            "{}: {err}",
            layer.kind()
        );
        assert!(snapshot(&**layer) == before);
    }
    let mut embed = Embedding::<f64>::new(5, 4, 3, &mut r).unwrap();
    let y = embed.forward(&array![[1, 2]]).unwrap();
    assert!(embed.forward(&array![[9]]).is_err());
    assert!(matches!(
        embed.backward(&Array3::ones(y.dim())),
        Err(Error::BackwardBeforeForward { layer: "Embedding" })
    ));
}

#[test]
fn an_empty_batch_says_what_is_empty() {
    let mut head = CrossEntropy::<f64>::new();
    expect_err(
        head.loss(&Array3::zeros((0, 3, 5)), &Array2::zeros((0, 3))),
        "cross_entropy: logits has shape [0, 3, 5], with no positions (B·T = 0); the mean loss \
         over no positions is undefined",
    );
    expect_err(
        head.loss(&Array3::zeros((1, 2, 0)), &Array2::zeros((1, 2))),
        "cross_entropy: logits has shape [1, 2, 0], with no classes (V = 0); a softmax needs at \
         least one class",
    );
}

#[test]
fn generation_checks_every_prompt_id_even_those_cropped() {
    let mut r = rng(14);
    let gpt = Gpt::<f64>::new(small_config(), &mut r).unwrap();
    let mut prompt = vec![1; gpt.config().context + 2];
    prompt[0] = 10;
    let opts = baregpt::generate::SampleOptions::default();
    let err = baregpt::generate::generate(&gpt, &prompt, 2, &opts, &mut r, |_| {});
    expect_err(
        err,
        "generate: token id 10 at (b, t) = (0, 0) is out of range for vocabulary size 10",
    );
    let err = baregpt::generate::generate_uncached(&gpt, &prompt, 2, &opts, &mut r, |_| {});
    assert!(matches!(err, Err(Error::TokenOutOfRange { id: 10, .. })));
}

#[test]
fn an_infinite_logit_takes_all_the_probability() {
    let mut r = rng(15);
    let opts = baregpt::generate::SampleOptions {
        temperature: 1.0,
        top_k: None,
    };
    for _ in 0..50 {
        let logits = array![0.0f32, f32::INFINITY, 3.0, f32::INFINITY, f32::NEG_INFINITY];
        let id = baregpt::generate::sample_logits(logits.view(), &opts, &mut r).unwrap();
        assert!(id == 1 || id == 3, "{id}");
    }
    let nan = array![0.0, f64::NAN];
    assert!(baregpt::generate::sample_logits(nan.view(), &opts, &mut r).is_err());
}

#[test]
fn adam_refuses_a_gradient_whose_square_overflows_and_can_always_reload_its_state() {
    use baregpt::{Adam, AdamConfig};
    let mut adam = Adam::<f32>::new(AdamConfig::adam(1e-3)).unwrap();
    let mut w = [1.0f32, 2.0];
    adam.step_slices(&mut [(&mut w[..], &[0.5, 0.5][..])])
        .unwrap();
    let (w_before, state_before) = (w, adam.export_state());
    let err = adam
        .step_slices(&mut [(&mut w[..], &[1e21, 0.0][..])])
        .unwrap_err();
    assert!(
        matches!(&err, Error::GradientTooLarge { name, float: "f32", .. } if name == "0"),
        "{err}"
    );
    assert_eq!((w, adam.export_state()), (w_before, state_before.clone()));
    adam.load_state(state_before).unwrap();
    // Clipped first, a huge gradient is fine.
    let mut clipped = Adam::<f32>::new(AdamConfig {
        max_grad_norm: Some(1.0),
        ..AdamConfig::adam(1e-3)
    })
    .unwrap();
    clipped
        .step_slices(&mut [(&mut w[..], &[1e21, 0.0][..])])
        .unwrap();
    clipped.load_state(clipped.export_state()).unwrap();
    // Settings finite in f64 but not in f32.
    assert!(Adam::<f32>::new(AdamConfig::adam(1e39)).is_err());
    assert!(Adam::<f64>::new(AdamConfig::adam(1e39)).is_ok());
    let mut ok = Adam::<f32>::new(AdamConfig::adam(1e-3)).unwrap();
    assert!(ok.set_lr(1e39).is_err());
    assert_eq!(ok.config().lr, 1e-3);
}

#[test]
fn checkpoint_bytes_are_deterministic_and_a_wrong_vocabulary_is_refused_on_save() {
    use baregpt::checkpoint::{Extras, from_bytes, to_bytes};
    use baregpt::data::CharVocab;
    let mut r = rng(16);
    let gpt = Gpt::<f32>::new(small_config(), &mut r).unwrap();
    let extras = Extras {
        vocab: Some(CharVocab::from_chars("0123456789".chars()).unwrap()),
        metadata: (0..20)
            .map(|i| (format!("k{i}"), format!("v\"{i}\\")))
            .collect(),
        ..Extras::default()
    };
    let bytes = to_bytes(&gpt, &extras).unwrap();
    for _ in 0..5 {
        assert_eq!(to_bytes(&gpt, &extras).unwrap(), bytes);
    }
    let (back, back_extras) = from_bytes::<f32>(&bytes).unwrap();
    assert_eq!(to_bytes(&back, &back_extras).unwrap(), bytes);
    let wrong = Extras {
        vocab: Some(CharVocab::from_chars("abc".chars()).unwrap()),
        ..Extras::default()
    };
    expect_err(
        to_bytes(&gpt, &wrong),
        "checkpoint: the vocabulary has 3 characters but config.vocab_size is 10",
    );
}

#[test]
fn a_model_without_blocks_decodes_like_any_other() {
    use baregpt::generate::{SampleOptions, generate, generate_uncached};
    let mut r = rng(17);
    let gpt = Gpt::<f64>::new(
        GptConfig {
            mlp_hidden: 4,
            ..GptConfig::with_sizes(7, 4, 2, 0, 5)
        },
        &mut r,
    )
    .unwrap();
    let opts = SampleOptions::default();
    let a = generate(&gpt, &[1, 2], 12, &opts, &mut rng(1), |_| {}).unwrap();
    let b = generate_uncached(&gpt, &[1, 2], 12, &opts, &mut rng(1), |_| {}).unwrap();
    assert_eq!(a, b);
    let mut cache = gpt.kv_cache(1).unwrap();
    let ids = array![[3, 1, 4]];
    let whole = gpt.infer(&ids).unwrap();
    for t in 0..3 {
        let step = cache.infer(&gpt, &array![[ids[[0, t]]]]).unwrap();
        assert_eq!(
            step.slice(ndarray::s![0, 0, ..]),
            whole.slice(ndarray::s![0, t, ..])
        );
    }
    assert!(gpt.infer(&Array2::zeros((1, 6))).is_err());
    assert!(cache.infer(&gpt, &Array2::zeros((1, 3))).is_err());
    assert_eq!(cache.len(), 3);
}

#[test]
fn drop_probabilities_outside_zero_to_one_are_refused() {
    use baregpt::kernels::DropoutMask;
    use baregpt::layer::DropoutSite;
    use baregpt::layers::Dropout;
    use baregpt::{DropoutConfig, checkpoint};

    let mut r = rng(6);
    for (p, shown) in [
        (1.0, "1"),
        (1.5, "1.5"),
        (-0.1, "-0.1"),
        (f64::NAN, "NaN"),
        (f64::INFINITY, "inf"),
    ] {
        let message = format!(
            "Dropout: invalid configuration: the drop probability {shown} is not in [0, 1)"
        );
        expect_err(Dropout::<f64>::new(p, 0), &message);
        expect_err(DropoutSite::new(p, 0), &message);
        expect_err(DropoutMask::new(p, 0, 0), &message);
        let block = Block::<f64>::new(4, 2, 8, &mut r).unwrap();
        expect_err(block.with_residual_dropout(p, [0, 1]), &message);
        type Set = fn(&mut DropoutConfig, f64);
        let fields: [(&str, Set); 3] = [
            ("embed", |d, p| d.embed = p),
            ("attention", |d, p| d.attention = p),
            ("residual", |d, p| d.residual = p),
        ];
        for (field, set) in fields {
            let mut cfg = small_config();
            set(&mut cfg.dropout, p);
            let message = format!(
                "GptConfig: invalid configuration: dropout.{field} {shown} is not a drop \
                 probability in [0, 1)"
            );
            expect_err(cfg.validate(), &message);
            expect_err(Gpt::<f64>::new(cfg, &mut r), &message);
        }
    }

    // A checkpoint whose drop probability is unreadable, or out of range, is refused.
    let cfg = GptConfig {
        dropout: DropoutConfig::uniform(0.1),
        ..small_config()
    };
    let gpt = Gpt::<f64>::new(cfg, &mut r).unwrap();
    let bytes = checkpoint::to_bytes(&gpt, &Default::default()).unwrap();
    let key = b"\"config.dropout_embed\":\"0.1\"";
    let at = bytes
        .windows(key.len())
        .position(|w| w == key)
        .expect("the probability is recorded");
    for (bad, message) in [
        (
            "0.x",
            "unreadable metadata `config.dropout_embed` = \"0.x\"",
        ),
        ("1.0", "dropout.embed 1 is not a drop probability in [0, 1)"),
    ] {
        let mut patched = bytes.clone();
        let value = at + key.len() - 4; // the three characters between the quotes
        patched[value..value + 3].copy_from_slice(bad.as_bytes());
        let err = checkpoint::from_bytes::<f64>(&patched).unwrap_err();
        assert!(err.to_string().contains(message), "{err}");
    }
}

/// The tied head: its kernel, the layer (which is handed the table) and a tied `Gpt` refuse
/// mismatched shapes with the expected and actual shapes, and change nothing when they do.
#[test]
fn a_tied_head_refuses_mismatched_tables_and_inputs() {
    use baregpt::gpt::parts::HeadKind;
    use baregpt::kernels::{tied_head_backward, tied_head_forward};
    use baregpt::layers::TiedHead;
    use baregpt::param::Param2;

    // Kernel: x's width must be the table's C, b and dy must have its V.
    let (xs, table) = (Array2::<f64>::ones((3, 4)), Array2::<f64>::ones((5, 4)));
    expect_err(
        tied_head_forward(Array2::<f64>::ones((3, 2)).view(), table.view(), None),
        "tied_head: x has shape [3, 2], expected [*, 4]",
    );
    expect_err(
        tied_head_forward(xs.view(), table.view(), Some(Array1::ones(4).view())),
        "tied_head: b has shape [4], expected [5]",
    );
    let mut d_table = Array2::from_elem((5, 4), 0.5);
    expect_err(
        tied_head_backward(
            xs.view(),
            table.view(),
            Array2::ones((3, 6)).view(),
            d_table.view_mut(),
            None,
        ),
        "tied_head: dy has shape [3, 6], expected [3, 5]",
    );
    assert!(d_table.iter().all(|&g| g == 0.5));

    // Layer: a table of another vocabulary than its bias, an input of another width, a
    // backward before any forward, a backward with another table.
    let mut head = TiedHead::<f64>::new(5, true).unwrap();
    let mut good = Param2::new(Array2::from_shape_fn((5, 4), |(v, c)| (v + c) as f64 * 0.1));
    let other = Param2::new(Array2::<f64>::ones((6, 4)));
    expect_err(
        head.forward(&x(2, 3, 4), &other),
        "TiedHead: table has shape [6, 4], expected [5, *]",
    );
    expect_err(
        head.backward(&Array3::ones((2, 3, 5)), &mut good),
        "TiedHead: backward called before forward (nothing cached)",
    );
    expect_err(
        head.forward(&x(2, 3, 3), &good),
        "TiedHead: input has shape [2, 3, 3], expected [*, *, 4]",
    );
    let y = head.forward(&x(2, 3, 4), &good).unwrap();
    head.backward(&y, &mut good).unwrap();
    let (before_head, before_table) = (snapshot(&head), snapshot(&good));
    let mut narrow = Param2::new(Array2::<f64>::ones((5, 3)));
    expect_err(
        head.backward(&y, &mut narrow),
        "TiedHead: table has shape [5, 3], expected [5, 4]",
    );
    expect_err(
        head.backward(&Array3::ones((2, 3, 4)), &mut good),
        "TiedHead: dy has shape [2, 3, 4], expected [2, 3, 5]",
    );
    assert!(snapshot(&head) == before_head && snapshot(&good) == before_table);
    assert!(narrow.grad.iter().all(|&g| g == 0.0) && other.grad.iter().all(|&g| g == 0.0));
    expect_err(
        TiedHead::<f64>::new(0, false),
        "TiedHead: invalid configuration: vocab_size must be positive",
    );

    // A tied Gpt: a dlogits of the wrong width is refused by the model and changes nothing.
    let config = GptConfig {
        head: HeadKind::Tied { bias: false },
        ..small_config()
    };
    let mut gpt = Gpt::<f64>::new(config, &mut rng(40)).unwrap();
    let ids = array![[1, 2, 3]];
    let logits = gpt.forward(&ids).unwrap();
    assert_eq!(logits.dim(), (1, 3, 10));
    gpt.backward(&logits).unwrap();
    let before = snapshot(&gpt);
    expect_err(
        gpt.backward(&Array3::ones((1, 3, 9))),
        "Gpt: dy has shape [1, 3, 9], expected [1, 3, 10]",
    );
    assert!(snapshot(&gpt) == before);
}
