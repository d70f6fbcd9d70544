//! The architecture's promises (issue 10): boxed layers go wherever a layer or "something with
//! parameters" is expected; parameters are reachable, exportable and importable by name, all
//! or nothing; inference is the training forward's computation, bit for bit; and a backward
//! never differentiates a mix of two forwards.

mod common;

use baregpt::checkpoint;
use baregpt::gradcheck::{self, GradCheckOptions};
use baregpt::layer::KvCache;
use baregpt::layers::{
    Attention, Block, Embedding, Gelu, LayerNorm, Linear, Mlp, RmsNorm, Sequential, SwiGlu,
};
use baregpt::optim::{clip_grad_norm, grad_norm};
use baregpt::param::ParamMap;
use baregpt::prelude::*;
use baregpt::{Adam, AdamConfig, CrossEntropy, Error, Gpt, GptConfig};
use common::{rng, snapshot};
use ndarray::{Array2, Array3, ArrayD, array, s};
use rand::RngExt;

fn input(shape: (usize, usize, usize), seed: u64) -> Array3<f64> {
    let mut r = rng(seed);
    Array3::from_shape_simple_fn(shape, || r.random::<f64>() * 2.0 - 1.0)
}

fn small_gpt(seed: u64) -> Gpt<f64> {
    let config = GptConfig {
        mlp_hidden: 12,
        ..GptConfig::with_sizes(9, 6, 2, 2, 7)
    };
    Gpt::new(config, &mut rng(seed)).unwrap()
}

/// [`small_gpt`]'s sizes with RMSNorm and the SwiGLU MLP.
fn llama_gpt(seed: u64) -> Gpt<f64> {
    use baregpt::gpt::parts::{MlpKind, NormKind};
    let config = GptConfig {
        mlp_hidden: 12,
        norm: NormKind::RmsNorm { eps: 1e-6 },
        mlp: MlpKind::SwiGlu,
        ..GptConfig::with_sizes(9, 6, 2, 2, 7)
    };
    Gpt::new(config, &mut rng(seed)).unwrap()
}

fn boxed_net(seed: u64) -> Box<dyn Layer<f64>> {
    let mut r = rng(seed);
    Box::new(
        Sequential::new()
            .push(Linear::new(4, 6, true, &mut r).unwrap())
            .push(Attention::new(6, 2, &mut r).unwrap())
            .push(LayerNorm::new(6).unwrap())
            .push(Linear::new(6, 3, false, &mut r).unwrap()),
    )
}

#[test]
fn a_boxed_layer_goes_straight_to_adam_the_checker_clipping_and_checkpoints() {
    let mut net = boxed_net(1);
    let x = input((2, 3, 4), 2);
    let y = net.forward(&x).unwrap();
    net.backward(&Array3::ones(y.raw_dim())).unwrap();

    let report = gradcheck::check_layer(&mut net, &x, &GradCheckOptions::default()).unwrap();
    assert!(report.passed(), "{report}");

    let norm = grad_norm(&net).unwrap();
    assert!(norm > 0.0);
    let before = clip_grad_norm(&mut net, norm / 2.0).unwrap();
    assert_eq!(before, norm);
    assert!(grad_norm(&net).unwrap() <= norm / 2.0 + 1e-12);

    let mut adam = Adam::new(AdamConfig::adam(1e-2)).unwrap();
    adam.step(&mut net).unwrap();
    assert_eq!(adam.state().params.len(), net.param_names().len());

    let dir = std::env::temp_dir().join(format!("baregpt-arch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("net.safetensors");
    checkpoint::save_params(&path, &net).unwrap();
    let mut other = boxed_net(99);
    assert_ne!(other.export_params(), net.export_params());
    checkpoint::load_params_into(&path, &mut other).unwrap();
    assert_eq!(other.export_params(), net.export_params());
    // A file of another model's parameters is refused and changes nothing.
    let mut gpt = small_gpt(3);
    let untouched = snapshot(&gpt);
    assert!(matches!(
        checkpoint::load_params_into(&path, &mut gpt),
        Err(Error::ParamMismatch { .. })
    ));
    assert_eq!(snapshot(&gpt), untouched);
    std::fs::remove_dir_all(&dir).unwrap();

    // `&mut L` is a layer too.
    let mut linear = Linear::<f64>::new(4, 2, true, &mut rng(4)).unwrap();
    let by_ref: &mut dyn Layer<f64> = &mut linear;
    let report = gradcheck::check_layer(&mut &mut *by_ref, &x, &GradCheckOptions::default());
    assert!(report.unwrap().passed());
}

#[test]
fn parameters_by_name() {
    let mut gpt = small_gpt(5);
    let names = gpt.param_names();
    assert_eq!(names.len(), 2 + 2 * 12 + 2 + 2);
    let w_q = gpt.param("blocks.1.attn.w_q").unwrap();
    assert_eq!(w_q.value.shape(), &[6, 6]);
    assert!(gpt.param("blocks.2.attn.w_q").is_none());
    gpt.param_mut("head.b").unwrap().value.fill(0.25);
    assert!(
        gpt.param("head.b")
            .unwrap()
            .value
            .iter()
            .all(|&v| v == 0.25)
    );
}

#[test]
fn export_then_import_is_bit_identical() {
    let source = small_gpt(6);
    let map = source.export_params();
    assert_eq!(map.names().collect::<Vec<_>>(), source.param_names());
    let mut target = small_gpt(7);
    target.import_params(&map).unwrap();
    let bits = |g: &Gpt<f64>| {
        g.export_params()
            .into_iter()
            .map(|(n, a)| (n, a.iter().map(|v| v.to_bits()).collect::<Vec<_>>()))
            .collect::<Vec<_>>()
    };
    assert_eq!(bits(&target), bits(&source));
    let ids = array![[1, 2, 3, 4]];
    assert_eq!(target.infer(&ids).unwrap(), source.infer(&ids).unwrap());
}

#[test]
fn a_bad_import_is_an_error_that_changes_nothing() {
    let good = small_gpt(8).export_params();
    let mut missing = good.clone();
    missing.remove("blocks.0.mlp.fc.b");
    let mut extra = good.clone();
    extra.insert("blocks.0.attn.w_x", ArrayD::zeros(vec![6, 6]));
    let mut reshaped = good.clone();
    reshaped.insert("embed.pos", ArrayD::zeros(vec![6, 7]));
    let mut not_finite = good.clone();
    not_finite.get_mut("ln_f.gamma").unwrap()[[3]] = f64::NAN;
    let cases: [(ParamMap<f64>, &str); 4] = [
        (missing, "blocks.0.mlp.fc.b"),
        (extra, "blocks.0.attn.w_x"),
        (reshaped, "embed.pos"),
        (not_finite, "ln_f.gamma"),
    ];
    for (map, culprit) in cases {
        let mut gpt = small_gpt(9);
        let before = snapshot(&gpt);
        match gpt.import_params(&map) {
            Err(Error::ParamMismatch { name, .. }) => assert_eq!(name, culprit),
            other => panic!("expected a mismatch for {culprit}, got {other:?}"),
        }
        assert_eq!(snapshot(&gpt), before, "{culprit}");
    }
}

/// `infer` equals `forward` bit for bit, for `layer` at input `x`.
fn infer_equals_forward<X: LayerInput<f64>>(layer: &mut dyn Layer<f64, X>, x: &X) {
    let inferred = layer.infer(x).unwrap();
    let trained = layer.forward(x).unwrap();
    let bits = |a: &Array3<f64>| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&inferred), bits(&trained), "{}", layer.kind());
}

#[test]
fn inference_is_the_training_forward_bit_for_bit() {
    let mut r = rng(10);
    let x = input((3, 5, 8), 11);
    let floats: Vec<Box<dyn Layer<f64>>> = vec![
        Box::new(Linear::new(8, 5, true, &mut r).unwrap()),
        Box::new(LayerNorm::new(8).unwrap()),
        Box::new(Gelu::new()),
        Box::new(Mlp::new(8, 13, &mut r).unwrap()),
        Box::new(Attention::new(8, 4, &mut r).unwrap()),
        Box::new(Block::new(8, 2, 16, &mut r).unwrap()),
        Box::new(RmsNorm::new(8).unwrap()),
        Box::new(SwiGlu::new(8, 13, &mut r).unwrap()),
        boxed_net(12),
    ];
    for mut layer in floats {
        let x = if layer.kind() == "Sequential" {
            input((3, 5, 4), 13)
        } else {
            x.clone()
        };
        infer_equals_forward(layer.as_mut(), &x);
    }
    let mut loss = CrossEntropy::new();
    loss.set_targets(array![[0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [1, 1, 1, 1, 1]]);
    infer_equals_forward(&mut loss, &x);
    let ids = array![[1, 2, 3], [4, 5, 6]];
    infer_equals_forward(&mut Embedding::new(9, 4, 5, &mut r).unwrap(), &ids);
    infer_equals_forward(&mut small_gpt(14), &ids);
    infer_equals_forward(&mut llama_gpt(14), &ids);
    // A bigger model whose passes run on the pool and whose products are parallel.
    let mut big = Gpt::<f64>::new(GptConfig::tiny(20), &mut rng(15)).unwrap();
    let ids = Array2::from_shape_fn((4, 32), |(b, t)| (b * 7 + t * 3) % 20);
    infer_equals_forward(&mut big, &ids);
}

#[test]
fn incremental_decoding_through_any_composite_equals_the_full_pass() {
    // A Sequential of blocks, not a Gpt: the cache follows whatever attention layers it meets.
    let mut r = rng(16);
    let net = Sequential::<f64>::new()
        .push(Block::new(8, 2, 16, &mut r).unwrap())
        .push(Block::new(8, 4, 8, &mut r).unwrap());
    let x = input((2, 6, 8), 17);
    let full = net.infer(&x).unwrap();
    let mut cache = KvCache::new(2, 6).unwrap();
    let head = cache
        .infer(&net, &x.slice(s![.., ..4, ..]).to_owned())
        .unwrap();
    let tail = cache
        .infer(&net, &x.slice(s![.., 4.., ..]).to_owned())
        .unwrap();
    assert_eq!(cache.len(), 6);
    assert_eq!(cache.layers().len(), 2);
    let close = |a: ndarray::ArrayView3<'_, f64>, b: ndarray::ArrayView3<'_, f64>| {
        a.iter().zip(b).all(|(a, b)| (a - b).abs() < 1e-12)
    };
    assert!(close(head.view(), full.slice(s![.., ..4, ..])));
    assert!(close(tail.view(), full.slice(s![.., 4.., ..])));
    // Full: refused, and the cache is unchanged.
    let err = cache
        .infer(&net, &x.slice(s![.., ..1, ..]).to_owned())
        .unwrap_err();
    assert!(matches!(err, Error::SequenceLength { .. }), "{err}");
    assert_eq!(cache.len(), 6);
}

#[test]
fn decoding_a_gpt_of_rms_norm_and_swiglu_token_by_token_equals_the_full_pass() {
    let gpt = llama_gpt(25);
    let ids = array![[3, 1, 4, 1, 5, 8, 2], [2, 7, 1, 8, 2, 8, 0]];
    let full = gpt.infer(&ids).unwrap();
    let mut cache = gpt.kv_cache(2).unwrap();
    let head = cache
        .infer(&gpt, &ids.slice(s![.., ..3]).to_owned())
        .unwrap();
    assert!(
        head.iter()
            .zip(full.slice(s![.., ..3, ..]))
            .all(|(a, b)| (a - b).abs() < 1e-12)
    );
    for t in 3..7 {
        let step = cache
            .infer(&gpt, &ids.slice(s![.., t..t + 1]).to_owned())
            .unwrap();
        assert!(
            step.iter()
                .zip(full.slice(s![.., t..t + 1, ..]))
                .all(|(a, b)| (a - b).abs() < 1e-12),
            "position {t}"
        );
    }
}

#[test]
fn a_gpt_backward_never_mixes_two_forwards() {
    let (a, b) = (array![[1, 2, 3]], array![[4, 5, 6]]);
    let targets = array![[2, 3, 4]];

    // loss(a), then a forward of another batch of the same shape: the loss is forgotten.
    let mut gpt = small_gpt(18);
    gpt.loss(&a, &targets).unwrap();
    gpt.forward(&b).unwrap();
    let before = snapshot(&gpt);
    assert!(matches!(
        gpt.backward_loss(),
        Err(Error::BackwardBeforeForward { .. })
    ));
    assert_eq!(snapshot(&gpt), before);
    // Layer::backward of that forward is fine: it is one pass.
    gpt.backward(&Array3::ones((1, 3, 9))).unwrap();

    // loss(a), then loading parameters: both caches are forgotten.
    let map = small_gpt(19).export_params();
    gpt.loss(&a, &targets).unwrap();
    gpt.import_params(&map).unwrap();
    assert!(gpt.backward_loss().is_err());
    assert!(gpt.backward(&Array3::ones((1, 3, 9))).is_err());

    let dir = std::env::temp_dir().join(format!("baregpt-arch-ck-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gpt.safetensors");
    checkpoint::save(&path, &small_gpt(20), &Default::default()).unwrap();
    gpt.loss(&a, &targets).unwrap();
    checkpoint::load_into(&path, &mut gpt).unwrap();
    assert!(matches!(
        gpt.backward_loss(),
        Err(Error::BackwardBeforeForward { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();

    // Inference does not disturb a pending loss.
    gpt.loss(&a, &targets).unwrap();
    gpt.infer(&b).unwrap();
    gpt.backward_loss().unwrap();
}

#[test]
fn a_composite_whose_forward_failed_refuses_backward() {
    let mut r = rng(21);
    // The second layer rejects the first one's output width: the first has already cached.
    let mut net = Sequential::<f64>::new()
        .push(Linear::new(4, 6, true, &mut r).unwrap())
        .push(LayerNorm::new(5).unwrap());
    assert!(net.forward(&input((1, 2, 4), 22)).is_err());
    assert!(matches!(
        net.backward(&Array3::ones((1, 2, 5))),
        Err(Error::BackwardBeforeForward {
            layer: "Sequential"
        })
    ));
    // A block whose MLP part expects another width: the norms and attention ran.
    let mut block = Block::from_parts(
        Box::new(LayerNorm::<f64>::new(6).unwrap()),
        Box::new(Attention::new(6, 2, &mut r).unwrap()),
        Box::new(LayerNorm::new(6).unwrap()),
        Box::new(Linear::new(7, 6, true, &mut r).unwrap()),
    );
    let x = input((1, 3, 6), 23);
    assert!(block.forward(&x).is_err());
    let before = snapshot(&block);
    assert!(matches!(
        block.backward(&Array3::ones((1, 3, 6))),
        Err(Error::BackwardBeforeForward { layer: "Block" })
    ));
    assert_eq!(snapshot(&block), before);
}

#[test]
fn a_model_is_assembled_from_the_configured_parts() {
    use baregpt::gpt::parts::{HeadKind, NormKind};
    let config = GptConfig {
        norm: NormKind::LayerNorm { eps: 1e-3 },
        head: HeadKind::Linear { bias: false },
        ..GptConfig::with_sizes(9, 6, 2, 1, 7)
    };
    let gpt = Gpt::<f64>::new(config.clone(), &mut rng(24)).unwrap();
    assert!(gpt.param("head.b").is_none());
    assert_eq!(gpt.num_params(), config.param_count());
    // Llama's parts: one gain per norm, three bias-free (C, H) / (H, C) matrices per MLP.
    let llama = llama_gpt(24);
    assert_eq!(llama.num_params(), llama.config().param_count());
    let names = llama.param_names();
    for name in [
        "blocks.0.ln1.gamma",
        "blocks.0.mlp.w_gate",
        "blocks.0.mlp.w_up",
        "blocks.1.mlp.w_down",
        "ln_f.gamma",
    ] {
        assert!(names.contains(&name.to_owned()), "{name}");
    }
    assert!(
        !names
            .iter()
            .any(|n| n.ends_with(".beta") || n.contains(".mlp.fc"))
    );
    assert_eq!(
        llama.param("blocks.1.mlp.w_down").unwrap().value.shape(),
        &[12, 6]
    );
    assert!(
        Gpt::<f64>::new(
            GptConfig {
                norm: NormKind::LayerNorm { eps: -1.0 },
                ..config
            },
            &mut rng(24)
        )
        .is_err()
    );
    assert!(
        Gpt::<f64>::new(
            GptConfig {
                norm: NormKind::RmsNorm { eps: f64::NAN },
                ..config
            },
            &mut rng(24)
        )
        .is_err()
    );
}

/// With dropout switched off, every layer with dropout computes in `forward` what inference
/// does, bit for bit; in training they differ, and incremental decoding never drops.
#[test]
fn with_dropout_off_inference_is_the_training_forward_and_decoding_never_drops() {
    use baregpt::DropoutConfig;
    use baregpt::layer::DropoutMode;
    use baregpt::layers::Dropout;

    let mut r = rng(30);
    let x = input((3, 5, 8), 31);
    let block = Block::new(8, 2, 16, &mut r).unwrap();
    let layers: Vec<Box<dyn Layer<f64>>> = vec![
        Box::new(Dropout::new(0.3, 1).unwrap()),
        Box::new(block.with_residual_dropout(0.3, [2, 3]).unwrap()),
    ];
    let mut net = Sequential::from_layers(layers);
    assert_ne!(net.forward(&x).unwrap(), net.infer(&x).unwrap());
    net.set_dropout(DropoutMode::Off);
    infer_equals_forward(&mut net, &x);

    let config = GptConfig {
        dropout: DropoutConfig::uniform(0.25),
        mlp_hidden: 16,
        ..GptConfig::with_sizes(9, 8, 2, 2, 6)
    };
    let mut gpt = Gpt::<f64>::new(config, &mut rng(32)).unwrap();
    let ids = array![[1, 2, 3, 4, 5], [5, 4, 3, 2, 1]];
    assert_ne!(gpt.forward(&ids).unwrap(), gpt.infer(&ids).unwrap());
    gpt.set_dropout(DropoutMode::Off);
    infer_equals_forward(&mut gpt, &ids);
    // The KV cache path in training mode: no mask either.
    gpt.set_dropout(DropoutMode::Train);
    let full = gpt.infer(&ids).unwrap();
    let mut cache = gpt.kv_cache(2).unwrap();
    let head = cache
        .infer(&gpt, &ids.slice(s![.., ..3]).to_owned())
        .unwrap();
    let tail = cache
        .infer(&gpt, &ids.slice(s![.., 3..]).to_owned())
        .unwrap();
    let close = |a: ndarray::ArrayView3<'_, f64>, b: ndarray::ArrayView3<'_, f64>| {
        a.iter().zip(b).all(|(a, b)| (a - b).abs() < 1e-12)
    };
    assert!(close(head.view(), full.slice(s![.., ..3, ..])));
    assert!(close(tail.view(), full.slice(s![.., 3.., ..])));
}

/// A Gpt with rotary positions, grouped-query attention (4 heads on 2 key/value heads, head
/// size 2) and attention biases.
fn rotary_gqa_gpt(seed: u64) -> Gpt<f64> {
    use baregpt::gpt::parts::{AttentionKind, PositionKind};
    let config = GptConfig {
        mlp_hidden: 12,
        attention: AttentionKind::GroupedQuery {
            n_kv_heads: 2,
            bias: true,
        },
        positions: PositionKind::Rotary { theta: 50.0 },
        ..GptConfig::with_sizes(9, 8, 4, 2, 7)
    };
    Gpt::new(config, &mut rng(seed)).unwrap()
}

#[test]
fn attention_variants_infer_as_they_train_and_decode_as_the_full_pass() {
    use baregpt::layers::AttentionConfig;
    let mut r = rng(25);
    let x = input((2, 7, 12), 26);
    for config in [
        AttentionConfig::new(3).with_bias(true),
        AttentionConfig::new(6).kv_heads(2),
        AttentionConfig::new(4).kv_heads(1).with_bias(true),
        AttentionConfig::new(3).rotary(10_000.0),
        AttentionConfig::new(6)
            .kv_heads(3)
            .with_bias(true)
            .rotary(7.0),
    ] {
        let mut attn = Attention::<f64>::with_config(12, config, &mut r).unwrap();
        // Biases start at zero: give them values so that they matter.
        for name in ["b_q", "b_k", "b_v", "b_o"] {
            if let Some(mut p) = attn.param_mut(name) {
                p.value.mapv_inplace(|_| r.random::<f64>() - 0.5);
            }
        }
        infer_equals_forward(&mut attn, &x);
        let full = attn.infer(&x).unwrap();
        let mut cache = KvCache::new(2, 7).unwrap();
        let mut parts = vec![
            cache
                .infer(&attn, &x.slice(s![.., ..3, ..]).to_owned())
                .unwrap(),
        ];
        for t in 3..7 {
            parts.push(
                cache
                    .infer(&attn, &x.slice(s![.., t..=t, ..]).to_owned())
                    .unwrap(),
            );
        }
        // The cache holds only the key/value heads.
        assert_eq!(cache.layers()[0].width(), attn.kv_width());
        assert_eq!(attn.kv_width(), config.n_kv_heads * 12 / config.n_heads);
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        let decoded = ndarray::concatenate(ndarray::Axis(1), &views).unwrap();
        let worst = (&decoded - &full).iter().fold(0f64, |m, d| m.max(d.abs()));
        assert!(worst < 1e-12, "{config:?}: {worst}");
    }
}

#[test]
fn a_rotary_gqa_gpt_has_no_position_table_and_decodes_as_the_full_pass() {
    let mut gpt = rotary_gqa_gpt(27);
    assert!(gpt.param("embed.pos").is_none());
    assert_eq!(
        gpt.param("blocks.0.attn.w_k").unwrap().value.shape(),
        &[8, 4]
    );
    assert_eq!(gpt.param("blocks.1.attn.b_v").unwrap().value.shape(), &[4]);
    assert_eq!(gpt.num_params(), gpt.config().param_count());
    let ids = array![[1, 2, 3, 4, 5, 6, 7], [8, 0, 8, 0, 8, 0, 8]];
    infer_equals_forward(&mut gpt, &ids);
    let full = gpt.infer(&ids).unwrap();
    let mut cache = gpt.kv_cache(2).unwrap();
    let head = cache
        .infer(&gpt, &ids.slice(s![.., ..4]).to_owned())
        .unwrap();
    let tail: Vec<_> = (4..7)
        .map(|t| {
            cache
                .infer(&gpt, &ids.slice(s![.., t..=t]).to_owned())
                .unwrap()
        })
        .collect();
    assert!(cache.layers().iter().all(|l| l.width() == 4));
    let mut worst = (&head - &full.slice(s![.., ..4, ..]))
        .iter()
        .fold(0f64, |m, d| m.max(d.abs()));
    for (i, y) in tail.iter().enumerate() {
        let d = y - &full.slice(s![.., 4 + i..5 + i, ..]);
        worst = d.iter().fold(worst, |m, d| m.max(d.abs()));
    }
    assert!(worst < 1e-12, "{worst}");
}

#[test]
fn attention_dropout_drops_in_training_only() {
    use baregpt::layer::DropoutMode;
    use baregpt::layers::AttentionConfig;
    let x = input((2, 6, 8), 28);
    let config = AttentionConfig::new(4).kv_heads(2).rotary(1e4);
    let plain = Attention::<f64>::with_config(8, config, &mut rng(29)).unwrap();
    let mut dropped =
        Attention::<f64>::with_config(8, config.with_dropout(0.5, 3), &mut rng(29)).unwrap();
    // Same weights; inference never drops.
    let expected = plain.infer(&x).unwrap();
    assert_eq!(dropped.infer(&x).unwrap(), expected);
    // Training: a new mask each pass, none equal to the undropped output.
    let first = dropped.forward(&x).unwrap();
    let second = dropped.forward(&x).unwrap();
    assert_ne!(first, expected);
    assert_ne!(first, second);
    // Held: the last mask again; off: the inference output, bit for bit.
    dropped.set_dropout(DropoutMode::Hold);
    assert_eq!(dropped.forward(&x).unwrap(), second);
    dropped.set_dropout(DropoutMode::Off);
    infer_equals_forward(&mut dropped, &x);
    // Through a Gpt-like composite: Sequential passes the mode on.
    let mut net = Sequential::new()
        .push(Attention::<f64>::with_config(8, config.with_dropout(0.5, 4), &mut rng(30)).unwrap());
    net.set_dropout(DropoutMode::Off);
    infer_equals_forward(&mut net, &x);
}

fn tied_gpt(bias: bool, seed: u64) -> Gpt<f64> {
    use baregpt::gpt::parts::HeadKind;
    let config = GptConfig {
        mlp_hidden: 12,
        head: HeadKind::Tied { bias },
        ..GptConfig::with_sizes(9, 6, 2, 2, 7)
    };
    Gpt::new(config, &mut rng(seed)).unwrap()
}

#[test]
fn a_tied_head_owns_no_matrix_and_its_table_is_one_parameter() {
    for bias in [false, true] {
        let gpt = tied_gpt(bias, 30);
        let names = gpt.param_names();
        assert_eq!(names.iter().filter(|n| *n == "embed.tok").count(), 1);
        assert!(!names.iter().any(|n| n == "head.w"));
        assert_eq!(names.iter().any(|n| n == "head.b"), bias);
        assert_eq!(gpt.num_params(), gpt.config().param_count());
        // The untied model of the same sizes has exactly the head's (C, V) matrix more.
        let untied = GptConfig {
            head: baregpt::gpt::parts::HeadKind::Linear { bias },
            ..gpt.config().clone()
        };
        assert_eq!(untied.param_count() - gpt.num_params(), 6 * 9);
    }
}

#[test]
fn a_tied_head_computes_the_logits_from_the_token_table() {
    // Logit v is the hidden state times row v of the table. Change only row 5, a token not
    // among the ids, so that the embedding's output (and every hidden state) stays the same:
    // then exactly logit column 5 changes.
    let mut gpt = tied_gpt(false, 31);
    let ids = array![[1, 2, 3, 8]];
    let logits = gpt.forward(&ids).unwrap();
    let mut bumped = gpt.export_params();
    let mut tok = bumped.get("embed.tok").unwrap().to_owned();
    tok.slice_mut(s![5, ..]).mapv_inplace(|v| v + 0.5);
    bumped.insert("embed.tok", tok);
    gpt.import_params(&bumped).unwrap();
    let after = gpt.forward(&ids).unwrap();
    for v in 0..9 {
        let changed = (0..4).any(|t| after[[0, t, v]] != logits[[0, t, v]]);
        assert_eq!(changed, v == 5, "column {v}");
    }
}

#[test]
fn a_tied_gpt_infers_as_it_trains_and_decodes_incrementally() {
    for bias in [false, true] {
        let mut gpt = tied_gpt(bias, 32);
        jitter(&mut gpt, 33);
        let ids = array![[1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1]];
        infer_equals_forward(&mut gpt, &ids);
        let full = gpt.infer(&ids).unwrap();
        let mut cache = gpt.kv_cache(2).unwrap();
        let mut steps = Vec::new();
        for t in 0..6 {
            steps.push(
                cache
                    .infer(&gpt, &ids.slice(s![.., t..t + 1]).to_owned())
                    .unwrap(),
            );
        }
        for (t, step) in steps.iter().enumerate() {
            let want = full.slice(s![.., t..t + 1, ..]);
            assert!(step.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12));
        }
    }
}

fn jitter(gpt: &mut Gpt<f64>, seed: u64) {
    common::jitter_params(gpt, seed, 0.3);
}
