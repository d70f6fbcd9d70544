//! Hugging Face interop against `transformers`: the tiny GPT-2 and Llama folders of
//! `tests/hf/fixtures/` (written by `tests/hf/generate.py` with `save_pretrained`, with
//! reference logits, losses and gradients computed by `transformers` in float64).
//!
//! Tolerances, with `Δ = max |ours − reference|` and `M = max |reference|` over a tensor:
//! f64 `Δ / max(1, M) ≤ 1e-10`; f32 `Δ / max(M, 1e-3) ≤ 1e-4`.
//!
//! The folders saved by [`saved_folders_match_the_fixture_layout`] are left in
//! `target/tmp/hf-saved/` for `python3 tests/hf/generate.py --check`, which loads them in
//! `transformers` and compares the logits.
#![cfg(feature = "hf")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use baregpt::checkpoint::Storage;
use baregpt::hf::{self, Family, SaveOptions, Tokenizer, Which};
use baregpt::prelude::*;
use baregpt::{Error, Float, Gpt};
use ndarray::{Array2, ArrayD, IxDyn};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

const F64_TOL: f64 = 1e-10;
const F32_TOL: f64 = 1e-4;
const F32_FLOOR: f64 = 1e-3;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/hf/fixtures")
}

/// A reference file: `ids`, `targets`, `logits`, `loss` and (full-precision folders)
/// `grad.<hf name>`.
struct Reference {
    ids: Array2<usize>,
    targets: Array2<usize>,
    tensors: BTreeMap<String, ArrayD<f64>>,
}

fn reference(folder: &str) -> Reference {
    let path = fixtures().join(format!("{folder}.reference.safetensors"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let file = SafeTensors::deserialize(&bytes).expect("a safetensors file");
    let mut ints = BTreeMap::new();
    let mut tensors = BTreeMap::new();
    for (name, view) in file.tensors() {
        let shape = view.shape().to_vec();
        match view.dtype() {
            Dtype::I64 => {
                let v: Vec<usize> = view
                    .data()
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as usize)
                    .collect();
                ints.insert(
                    name,
                    Array2::from_shape_vec((shape[0], shape[1]), v).unwrap(),
                );
            }
            Dtype::F64 => {
                let v: Vec<f64> = view
                    .data()
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                tensors.insert(name, ArrayD::from_shape_vec(IxDyn(&shape), v).unwrap());
            }
            other => panic!("{folder}: unexpected dtype {other:?} for {name}"),
        }
    }
    Reference {
        ids: ints.remove("ids").expect("ids"),
        targets: ints.remove("targets").expect("targets"),
        tensors,
    }
}

/// `Δ / scale` of `ours` against `theirs`, with each float type's scale rule.
fn deviation<F: Float>(ours: &ArrayD<F>, theirs: &ArrayD<f64>) -> f64 {
    assert_eq!(ours.shape(), theirs.shape());
    let delta = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| (a.to_f64_exact() - b).abs())
        .fold(0.0, f64::max);
    let max = theirs.iter().map(|x| x.abs()).fold(0.0, f64::max);
    let scale = if F::NAME == "f64" {
        max.max(1.0)
    } else {
        max.max(F32_FLOOR)
    };
    delta / scale
}

fn tolerance<F: Float>() -> f64 {
    if F::NAME == "f64" { F64_TOL } else { F32_TOL }
}

/// Loads `folder`, checks logits and loss (and, when the reference has them, every
/// gradient) against `transformers`; returns the largest deviation.
fn check_folder<F: Float>(folder: &str) -> f64 {
    let pretrained = hf::load::<F>(fixtures().join(folder)).expect("the folder loads");
    let mut model = pretrained.model;
    let r = reference(folder);
    let logits = Layer::forward(&mut model, &r.ids).unwrap().into_dyn();
    let mut worst = deviation(&logits, &r.tensors["logits"]);
    let loss = model.loss(&r.ids, &r.targets).unwrap();
    let loss = ArrayD::from_elem(IxDyn(&[1]), loss);
    worst = worst.max(deviation(&loss, &r.tensors["loss"]));
    model.zero_grad();
    model.loss(&r.ids, &r.targets).unwrap();
    model.backward_loss().unwrap();
    let grads = hf::hf_tensors(&model, Which::Grads).unwrap();
    let expected: BTreeSet<&str> = r
        .tensors
        .keys()
        .filter_map(|k| k.strip_prefix("grad."))
        .collect();
    if !expected.is_empty() {
        let ours: BTreeSet<&str> = grads.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(ours, expected, "{folder}: the gradients' names");
        for (name, grad) in &grads {
            let d = deviation(grad, &r.tensors[&format!("grad.{name}")]);
            assert!(
                d <= tolerance::<F>(),
                "{folder} {}: grad {name} off by {d:e}",
                F::NAME
            );
            worst = worst.max(d);
        }
    }
    eprintln!(
        "{folder} ({}): logits, loss{} within {worst:.2e} of transformers",
        F::NAME,
        if expected.is_empty() {
            ""
        } else {
            " and every gradient"
        }
    );
    assert!(
        worst <= tolerance::<F>(),
        "{folder} {}: off by {worst:e}",
        F::NAME
    );
    worst
}

#[test]
fn tiny_gpt2_matches_transformers() {
    check_folder::<f64>("tiny-gpt2");
    check_folder::<f32>("tiny-gpt2");
}

#[test]
fn tiny_llama_matches_transformers() {
    check_folder::<f64>("tiny-llama");
    check_folder::<f32>("tiny-llama");
}

#[test]
fn half_precision_and_sharded_folders_match_transformers() {
    check_folder::<f64>("tiny-gpt2-f16");
    check_folder::<f32>("tiny-gpt2-f16");
    check_folder::<f64>("tiny-llama-bf16-sharded");
    check_folder::<f32>("tiny-llama-bf16-sharded");
}

#[test]
fn the_configs_map_to_the_families() {
    let (family, config) = hf::read_config(fixtures().join("tiny-gpt2")).unwrap();
    assert_eq!(family, Family::Gpt2);
    assert_eq!(config, baregpt::GptConfig::gpt2(320, 16, 2, 2, 32));
    let (family, config) = hf::read_config(fixtures().join("tiny-llama")).unwrap();
    assert_eq!(family, Family::Llama);
    assert_eq!(
        config,
        baregpt::GptConfig {
            mlp_hidden: 40,
            ..baregpt::GptConfig::llama(349, 16, 4, 2, 2, 32)
        }
    );
}

/// Every parameter's bits.
fn bits<F: Float>(model: &Gpt<F>) -> Vec<(String, Vec<u64>)> {
    model
        .export_params()
        .iter()
        .map(|(n, v)| {
            (
                n.to_owned(),
                v.iter().map(|x| x.to_f64_exact().to_bits()).collect(),
            )
        })
        .collect()
}

/// Tensor names and shapes of a folder's checkpoint (every shard).
fn layout(dir: &Path) -> BTreeMap<String, Vec<usize>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            let bytes = std::fs::read(&path).unwrap();
            for (name, view) in SafeTensors::deserialize(&bytes).unwrap().tensors() {
                out.insert(name, view.shape().to_vec());
            }
        }
    }
    out
}

fn config_keys(dir: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let value: Value = serde_json::from_str(&text).unwrap();
    value.as_object().unwrap().keys().cloned().collect()
}

fn saved_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("hf-saved")
        .join(name)
}

#[test]
fn saved_folders_match_the_fixture_layout_and_round_trip_bit_for_bit() {
    for folder in ["tiny-gpt2", "tiny-llama"] {
        let source = fixtures().join(folder);
        let loaded = hf::load::<f32>(&source).unwrap();
        let out = saved_dir(folder);
        let _ = std::fs::remove_dir_all(&out);
        let options = SaveOptions {
            base_config: Some(loaded.config_json.clone()),
            ..SaveOptions::default()
        };
        hf::save_with(&out, &loaded.model, loaded.tokenizer.as_ref(), &options).unwrap();
        assert_eq!(
            layout(&out),
            layout(&source),
            "{folder}: tensor names and shapes"
        );
        assert_eq!(
            config_keys(&out),
            config_keys(&source),
            "{folder}: config keys"
        );
        let again = hf::load::<f32>(&out).unwrap();
        assert_eq!(again.family, loaded.family);
        assert_eq!(again.model.config(), loaded.model.config());
        assert_eq!(
            bits(&again.model),
            bits(&loaded.model),
            "{folder}: round trip"
        );
        // The stored f32 bytes are the fixture's own, tensor for tensor.
        let ours = std::fs::read(out.join("model.safetensors")).unwrap();
        let theirs = std::fs::read(source.join("model.safetensors")).unwrap();
        let (ours, theirs) = (
            SafeTensors::deserialize(&ours).unwrap(),
            SafeTensors::deserialize(&theirs).unwrap(),
        );
        for (name, view) in theirs.tensors() {
            assert_eq!(
                ours.tensor(&name).unwrap().data(),
                view.data(),
                "{folder}: {name}"
            );
        }
        // The tokenizer saved with the folder encodes as the original.
        let text = std::fs::read_to_string(fixtures().join("corpus.txt")).unwrap();
        let (a, b) = (loaded.tokenizer.unwrap(), again.tokenizer.unwrap());
        assert_eq!(
            a.encode(&text, true).unwrap(),
            b.encode(&text, true).unwrap()
        );
    }
}

#[test]
fn a_save_without_a_base_config_writes_what_transformers_needs() {
    let loaded = hf::load::<f64>(fixtures().join("tiny-llama")).unwrap();
    let out = saved_dir("llama-no-base");
    let _ = std::fs::remove_dir_all(&out);
    hf::save(&out, &loaded.model, None).unwrap();
    let keys = config_keys(&out);
    let fixture = config_keys(&fixtures().join("tiny-llama"));
    let informational: BTreeSet<String> = [
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "transformers_version",
    ]
    .map(String::from)
    .into();
    assert!(
        keys.is_subset(&fixture),
        "{:?}",
        keys.difference(&fixture).collect::<Vec<_>>()
    );
    assert_eq!(
        fixture.difference(&keys).cloned().collect::<BTreeSet<_>>(),
        informational
    );
    let again = hf::load::<f64>(&out).unwrap();
    assert_eq!(bits(&again.model), bits(&loaded.model));
    assert!(again.tokenizer.is_none());
}

#[test]
fn half_precision_saves_round_the_weights_and_reload_them_exactly() {
    let loaded = hf::load::<f32>(fixtures().join("tiny-gpt2")).unwrap();
    let out = saved_dir("gpt2-f16");
    let _ = std::fs::remove_dir_all(&out);
    let options = SaveOptions {
        storage: Storage::F16,
        ..SaveOptions::default()
    };
    hf::save_with(&out, &loaded.model, None, &options).unwrap();
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["dtype"], "float16");
    let half = hf::load::<f32>(&out).unwrap();
    // The fixture's f16 folder holds the same weights rounded by torch: the same bits.
    let torch_half = hf::load::<f32>(fixtures().join("tiny-gpt2-f16")).unwrap();
    assert_eq!(bits(&half.model), bits(&torch_half.model));
}

// ----------------------------------------------------------------------------------------
// Tokenizers
// ----------------------------------------------------------------------------------------

#[test]
fn tokenizers_encode_and_decode_as_the_python_library() {
    let cases: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tokenizer_cases.json")).unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for (name, file) in cases["tokenizers"].as_object().unwrap() {
        let tokenizer = Tokenizer::from_file(fixtures().join(file.as_str().unwrap())).unwrap();
        for case in cases["cases"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let want = &case[name];
            let ids = |v: &Value| -> Vec<usize> {
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as usize)
                    .collect()
            };
            let plain = tokenizer.encode(text, false).unwrap();
            assert_eq!(plain, ids(&want["ids"]), "{name}: {text:?}");
            let special = tokenizer.encode(text, true).unwrap();
            assert_eq!(
                special,
                ids(&want["ids_with_special"]),
                "{name}: {text:?} (special)"
            );
            assert_eq!(
                tokenizer.decode(&plain, false).unwrap(),
                want["decoded"],
                "{name}: {text:?}"
            );
            assert_eq!(
                tokenizer.decode(&special, false).unwrap(),
                want["decoded_with_special"],
                "{name}: {text:?} (special)"
            );
            checked += 1;
        }
    }
    assert!(checked >= 60, "only {checked} cases");
    let gpt2 = Tokenizer::from_file(fixtures().join("tiny-gpt2/tokenizer.json")).unwrap();
    assert_eq!(gpt2.vocab_size(), 320);
    assert_eq!(gpt2.token_to_id("<|endoftext|>"), Some(319));
    assert!(matches!(
        gpt2.decode(&[5, 320], false),
        Err(Error::TokenOutOfRange { id: 320, .. })
    ));
}

#[test]
fn unreadable_tokenizers_are_typed_errors() {
    assert!(matches!(
        Tokenizer::from_bytes(b"{not json"),
        Err(Error::Tokenizer(_))
    ));
    assert!(matches!(
        Tokenizer::from_bytes(b"{\"model\": 3}"),
        Err(Error::Tokenizer(_))
    ));
    assert!(matches!(
        Tokenizer::from_file("/nonexistent/tokenizer.json"),
        Err(Error::Io(_))
    ));
}

// ----------------------------------------------------------------------------------------
// Bad folders
// ----------------------------------------------------------------------------------------

/// A copy of a fixture folder to break, under the test's temporary directory.
fn copy_of(folder: &str, name: &str) -> PathBuf {
    let out = saved_dir("broken").join(name);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    for entry in std::fs::read_dir(fixtures().join(folder)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, out.join(path.file_name().unwrap())).unwrap();
    }
    out
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let path = dir.join("config.json");
    let mut value: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(value.as_object_mut().unwrap());
    std::fs::write(&path, serde_json::to_string_pretty(&value).unwrap()).unwrap();
}

/// Rewrites `dir/model.safetensors` with `edit` applied to its (name, dtype, shape, bytes).
fn edit_tensors(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let out = safetensors::serialize(views, None).unwrap();
    std::fs::write(&path, out).unwrap();
}

fn load_err(dir: &Path) -> Error {
    match hf::load::<f32>(dir) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => {
            eprintln!("{}: {e}", dir.file_name().unwrap().to_string_lossy());
            e
        }
    }
}

#[test]
fn unsupported_options_are_refused_by_name() {
    let cases: Vec<(&str, &str, &str, Value)> = vec![
        (
            "tiny-gpt2",
            "act",
            "activation_function",
            Value::from("gelu"),
        ),
        (
            "tiny-gpt2",
            "inv-layer",
            "scale_attn_by_inverse_layer_idx",
            Value::from(true),
        ),
        (
            "tiny-gpt2",
            "cross",
            "add_cross_attention",
            Value::from(true),
        ),
        ("tiny-gpt2", "type", "model_type", Value::from("gpt_neox")),
        (
            "tiny-llama",
            "hidden-act",
            "hidden_act",
            Value::from("gelu"),
        ),
        ("tiny-llama", "mlp-bias", "mlp_bias", Value::from(true)),
        ("tiny-llama", "head-dim", "head_dim", Value::from(8)),
        (
            "tiny-llama",
            "rope-scaling",
            "rope_scaling",
            serde_json::json!({"rope_type": "linear", "factor": 2.0}),
        ),
        (
            "tiny-llama",
            "rope-params",
            "rope_parameters",
            serde_json::json!({"rope_type": "llama3", "rope_theta": 5e5}),
        ),
    ];
    for (folder, name, field, value) in cases {
        let dir = copy_of(folder, name);
        edit_config(&dir, |c| {
            c.insert(field.to_owned(), value.clone());
        });
        match load_err(&dir) {
            Error::Unsupported { field: f, .. } => {
                assert!(f.starts_with(field), "{name}: refused {f}, not {field}")
            }
            other => panic!("{name}: {other}"),
        }
    }
}

#[test]
fn corrupt_truncated_and_mismatched_folders_are_typed_errors() {
    // config.json: not JSON, a size missing, a size of the wrong type.
    let dir = copy_of("tiny-gpt2", "config-garbage");
    std::fs::write(dir.join("config.json"), "{\"model_type\": ").unwrap();
    assert!(matches!(load_err(&dir), Error::Hf { .. }));
    let dir = copy_of("tiny-gpt2", "config-no-n-embd");
    edit_config(&dir, |c| {
        c.remove("n_embd");
    });
    assert!(matches!(load_err(&dir), Error::Hf { ref reason, .. } if reason.contains("n_embd")));
    let dir = copy_of("tiny-llama", "config-heads-string");
    edit_config(&dir, |c| {
        c.insert("num_attention_heads".into(), Value::from("four"));
    });
    assert!(
        matches!(load_err(&dir), Error::Hf { ref reason, .. } if reason.contains("num_attention_heads"))
    );
    // Sizes that disagree with the weights.
    let dir = copy_of("tiny-gpt2", "config-wider");
    edit_config(&dir, |c| {
        c.insert("vocab_size".into(), Value::from(321));
    });
    assert!(
        matches!(load_err(&dir), Error::ParamMismatch { ref name, .. } if name == "transformer.wte.weight")
    );
    let dir = copy_of("tiny-llama", "config-more-layers");
    edit_config(&dir, |c| {
        c.insert("num_hidden_layers".into(), Value::from(3));
    });
    assert!(
        matches!(load_err(&dir), Error::Hf { ref reason, .. } if reason.contains("model.layers.2"))
    );
    // No weights at all; a truncated file; garbage bytes.
    let dir = copy_of("tiny-gpt2", "no-weights");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    assert!(matches!(load_err(&dir), Error::Io(_)));
    for (name, keep) in [("truncated", 0.5), ("header-only", 0.02)] {
        let dir = copy_of("tiny-gpt2", name);
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        std::fs::write(
            dir.join("model.safetensors"),
            &bytes[..(bytes.len() as f64 * keep) as usize],
        )
        .unwrap();
        assert!(matches!(load_err(&dir), Error::Hf { .. }), "{name}");
    }
    let dir = copy_of("tiny-gpt2", "garbage");
    std::fs::write(dir.join("model.safetensors"), [0xffu8; 64]).unwrap();
    assert!(matches!(load_err(&dir), Error::Hf { .. }));
    // A missing tensor, an unexpected one, a transposed one, an integer one, a NaN.
    let dir = copy_of("tiny-gpt2", "missing-tensor");
    edit_tensors(&dir, |t| t.retain(|x| x.0 != "transformer.ln_f.bias"));
    assert!(
        matches!(load_err(&dir), Error::Hf { ref reason, .. } if reason.contains("transformer.ln_f.bias"))
    );
    let dir = copy_of("tiny-llama", "extra-tensor");
    edit_tensors(&dir, |t| {
        t.push((
            "model.layers.0.self_attn.q_norm.weight".into(),
            Dtype::F32,
            vec![4],
            vec![0; 16],
        ))
    });
    assert!(matches!(load_err(&dir), Error::Hf { ref reason, .. } if reason.contains("q_norm")));
    let dir = copy_of("tiny-llama", "transposed");
    edit_tensors(&dir, |t| {
        let x = t
            .iter_mut()
            .find(|x| x.0 == "model.layers.1.mlp.down_proj.weight")
            .unwrap();
        x.2.reverse();
    });
    assert!(
        matches!(load_err(&dir), Error::ParamMismatch { ref name, .. } if name == "model.layers.1.mlp.down_proj.weight")
    );
    let dir = copy_of("tiny-gpt2", "int-tensor");
    edit_tensors(&dir, |t| {
        let x = t
            .iter_mut()
            .find(|x| x.0 == "transformer.ln_f.weight")
            .unwrap();
        x.1 = Dtype::I32;
    });
    assert!(matches!(load_err(&dir), Error::Hf { ref reason, .. } if reason.contains("I32")));
    let dir = copy_of("tiny-gpt2", "nan");
    edit_tensors(&dir, |t| {
        let x = t
            .iter_mut()
            .find(|x| x.0 == "transformer.h.1.mlp.c_fc.bias")
            .unwrap();
        x.3[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    assert!(matches!(load_err(&dir), Error::ParamMismatch { .. }));
    // A tokenizer with more ids than the model's vocabulary.
    let dir = copy_of("tiny-gpt2", "big-tokenizer");
    std::fs::copy(
        fixtures().join("tiny-llama/tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    assert!(matches!(load_err(&dir), Error::InvalidConfig { .. }));
}

#[test]
fn broken_shards_are_typed_errors() {
    let dir = copy_of("tiny-llama-bf16-sharded", "index-garbage");
    std::fs::write(dir.join("model.safetensors.index.json"), "[]").unwrap();
    assert!(matches!(load_err(&dir), Error::Hf { .. }));
    let dir = copy_of("tiny-llama-bf16-sharded", "index-escape");
    let index_path = dir.join("model.safetensors.index.json");
    let mut index: Value =
        serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    let map = index["weight_map"].as_object_mut().unwrap();
    let first = map.keys().next().unwrap().clone();
    map.insert(first.clone(), Value::from("../tiny-gpt2/model.safetensors"));
    std::fs::write(&index_path, index.to_string()).unwrap();
    assert!(matches!(load_err(&dir), Error::Hf { .. }));
    let dir = copy_of("tiny-llama-bf16-sharded", "shard-missing");
    std::fs::remove_file(dir.join("model-00002-of-00003.safetensors")).unwrap();
    assert!(matches!(load_err(&dir), Error::Io(_)));
    let dir = copy_of("tiny-llama-bf16-sharded", "index-wrong-file");
    let mut index: Value =
        serde_json::from_str(&std::fs::read_to_string(&index_path).unwrap()).unwrap();
    let map = index["weight_map"].as_object_mut().unwrap();
    let (name, file) = map
        .iter()
        .next()
        .map(|(n, f)| (n.clone(), f.clone()))
        .unwrap();
    let other = if file == "model-00001-of-00003.safetensors" {
        "model-00002-of-00003.safetensors"
    } else {
        "model-00001-of-00003.safetensors"
    };
    map.insert(name, Value::from(other));
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    assert!(matches!(load_err(&dir), Error::Hf { .. }));
}

#[test]
fn models_of_neither_family_are_refused_on_save() {
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0);
    let baregpt = Gpt::<f32>::new(baregpt::GptConfig::tiny(12), &mut rng).unwrap();
    let out = saved_dir("refused");
    let _ = std::fs::remove_dir_all(&out);
    assert!(matches!(
        hf::save(&out, &baregpt, None),
        Err(Error::Unsupported { .. })
    ));
    assert!(!out.exists(), "nothing is written for a refused model");
}

#[test]
fn saving_over_a_sharded_folder_is_refused() {
    let dir = copy_of("tiny-llama-bf16-sharded", "save-over-shards");
    let loaded = hf::load::<f32>(&dir).unwrap();
    assert!(matches!(
        hf::save(&dir, &loaded.model, None),
        Err(Error::Hf { .. })
    ));
}
