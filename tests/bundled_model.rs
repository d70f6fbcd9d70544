//! The pretrained Shakespeare model shipped in `models/shakespeare/`: its file, config and
//! vocabulary, and its loss on a slice of the validation text it was held out on, which must
//! stay within 0.02 of the figure recorded when it was trained (`losses.json`).

#[path = "../examples/common/mod.rs"]
mod common;

use std::path::PathBuf;

use baregpt::checkpoint;
use baregpt::gpt::parts::{AttentionKind, HeadKind, MlpKind, NormKind, PositionKind};
use baregpt::prelude::*;
use baregpt::{Float, Gpt};
use rand::SeedableRng;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn recorded() -> Value {
    let path = root().join("models/shakespeare/losses.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The slice: the first 32 windows of 256 characters of the validation split (the last 10%
/// of tiny-shakespeare), plus the last window's final target.
fn slice() -> String {
    std::fs::read_to_string(root().join("tests/fixtures/shakespeare_val_slice.txt")).unwrap()
}

fn bundled() -> PathBuf {
    root().join("models/shakespeare/model.safetensors")
}

const VOCAB: &str = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

#[test]
fn the_bundled_file_is_small_and_stored_in_f16() {
    let path = root().join("models/shakespeare/model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() <= 5 * 1024 * 1024, "{} bytes", bytes.len());
    let file = SafeTensors::deserialize(&bytes).unwrap();
    assert!(file.tensors().iter().all(|(_, t)| t.dtype() == Dtype::F16));
    assert!(!file.names().iter().any(|n| n.starts_with("optimizer")));
}

#[test]
fn the_bundled_model_has_its_config_and_vocabulary() {
    let (model, extras) = checkpoint::load::<f32>(bundled()).unwrap();
    let c = model.config();
    assert_eq!(
        (c.vocab_size, c.d_model, c.n_heads, c.n_layers, c.context),
        (65, 192, 6, 5, 256)
    );
    assert!(matches!(c.norm, NormKind::RmsNorm { .. }));
    assert!(matches!(c.mlp, MlpKind::SwiGlu));
    assert!(matches!(c.positions, PositionKind::Rotary { .. }));
    assert!(matches!(
        c.attention,
        AttentionKind::GroupedQuery {
            n_kv_heads: 6,
            bias: false
        }
    ));
    assert!(matches!(c.head, HeadKind::Linear { bias: false }));
    assert_eq!(extras.vocab.unwrap().to_string(), VOCAB);
    assert_eq!(
        model.num_params(),
        recorded()["parameters"].as_u64().unwrap() as usize
    );
}

fn slice_loss<F: Float>(model: &Gpt<F>) -> f64 {
    let vocab = baregpt::data::CharVocab::from_chars(VOCAB.chars()).unwrap();
    let ids = vocab.encode(&slice()).unwrap();
    let (loss, windows) = common::split_loss(model, &ids, 256).unwrap();
    assert_eq!(windows, 32);
    loss
}

#[test]
fn the_bundled_model_scores_the_recorded_loss_on_the_shipped_slice() {
    let want = recorded()["val_slice_loss"].as_f64().unwrap();
    let (model, _) = checkpoint::load::<f32>(bundled()).unwrap();
    let got = slice_loss(&model);
    eprintln!("validation slice: loss {got:.4}, recorded {want:.4}");
    assert!(
        (got - want).abs() <= 0.02,
        "loss {got} against the recorded {want}"
    );
}

#[test]
fn an_untrained_model_of_the_same_shape_is_far_from_the_figure() {
    // What the check above would see if the weights were lost: the loss of a random model.
    let (model, _) = checkpoint::load::<f32>(bundled()).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let fresh = Gpt::<f32>::new(model.config().clone(), &mut rng).unwrap();
    let want = recorded()["val_slice_loss"].as_f64().unwrap();
    assert!(slice_loss(&fresh) - want > 1.0);
}
