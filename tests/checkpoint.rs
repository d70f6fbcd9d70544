//! Checkpoints: bit-identical round trips, a typed error for every kind of bad file (and no
//! panic for any corruption or truncation), all-or-nothing loading, and atomic saving.

use baregpt::checkpoint::{self, Extras, OptimizerState, Storage};
use baregpt::data::CharVocab;
use baregpt::prelude::*;
use baregpt::{Adam, AdamConfig, Error, Float, Gpt, GptConfig};
use ndarray::{ArrayD, array};
use proptest::prelude::*;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

fn small_config(vocab_size: usize) -> GptConfig {
    GptConfig {
        mlp_hidden: 16,
        final_norm: true,
        ..GptConfig::with_sizes(vocab_size, 8, 2, 2, 6)
    }
}

fn model<F: Float>(seed: u64, config: GptConfig) -> Gpt<F> {
    Gpt::new(config, &mut StdRng::seed_from_u64(seed)).unwrap()
}

/// Every parameter value as exact bits (f64 holds every f32 exactly).
fn bits<F: Float>(gpt: &Gpt<F>) -> Vec<(String, Vec<u64>)> {
    let mut out = Vec::new();
    gpt.for_each_param(&mut |name, p| {
        let values = p.value.iter().map(|v| v.to_f64_exact().to_bits()).collect();
        out.push((name.to_owned(), values));
    });
    out
}

/// A fake optimizer state with one slot tensor per parameter, filled from `seed`.
fn optimizer_state<F: Float>(gpt: &Gpt<F>, seed: u64) -> OptimizerState<F> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut slots: BTreeMap<String, BTreeMap<String, ArrayD<F>>> = BTreeMap::new();
    for slot in ["m", "v"] {
        gpt.for_each_param(&mut |name, p| {
            let value = p.value.mapv(|_| F::of(rng.random::<f64>() - 0.5));
            slots
                .entry(slot.to_owned())
                .or_default()
                .insert(name.to_owned(), value);
        });
    }
    OptimizerState {
        kind: "adam".into(),
        step: 42,
        slots,
        settings: BTreeMap::from([("beta1".into(), "0.9".into())]),
    }
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("baregpt-ckpt-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn round_trip<F: Float>() {
    let dir = scratch_dir(&format!("round-trip-{}", F::NAME));
    let path = dir.join("model.safetensors");
    let saved = model::<F>(1, small_config(5));
    let extras = Extras {
        vocab: Some(CharVocab::from_chars("ab\n é".chars()).unwrap()),
        optimizer: Some(optimizer_state(&saved, 2)),
        metadata: BTreeMap::from([("task".into(), "addition".into())]),
    };
    checkpoint::save(&path, &saved, &extras).unwrap();

    // Into a differently initialised model of the same shape ...
    let mut into = model::<F>(99, small_config(5));
    assert_ne!(bits(&into), bits(&saved));
    let loaded = checkpoint::load_into(&path, &mut into).unwrap();
    assert_eq!(bits(&into), bits(&saved));
    assert_eq!(loaded, extras);
    // ... and into a model built from the file.
    let (built, loaded) = checkpoint::load::<F>(&path).unwrap();
    assert_eq!(bits(&built), bits(&saved));
    assert_eq!(built.config(), saved.config());
    assert_eq!(loaded, extras);
    assert_eq!(checkpoint::read_config(&path).unwrap(), *saved.config());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn round_trip_is_bit_identical_f32() {
    round_trip::<f32>();
}

#[test]
fn round_trip_is_bit_identical_f64() {
    round_trip::<f64>();
}

#[test]
fn loaded_model_computes_the_same_loss_and_gradients() {
    let mut saved = model::<f32>(3, small_config(7));
    let bytes = checkpoint::to_bytes(&saved, &Extras::default()).unwrap();
    let (mut loaded, _) = checkpoint::from_bytes::<f32>(&bytes).unwrap();
    let ids = ndarray::array![[1, 2, 3, 4], [6, 5, 4, 0]];
    let targets = ndarray::array![[2, 3, 4, 5], [5, 4, 0, 1]];
    let a = saved.loss(&ids, &targets).unwrap();
    let b = loaded.loss(&ids, &targets).unwrap();
    assert_eq!(a.to_bits(), b.to_bits());
    saved.backward_loss().unwrap();
    loaded.backward_loss().unwrap();
    let grads = |g: &Gpt<f32>| {
        let mut out = Vec::new();
        g.for_each_param(&mut |_, p| out.extend(p.grad.iter().map(|v| v.to_bits())));
        out
    };
    assert_eq!(grads(&saved), grads(&loaded));
}

#[test]
fn a_checkpoint_without_extras_has_none() {
    let saved = model::<f64>(4, small_config(3));
    let bytes = checkpoint::to_bytes(&saved, &Extras::default()).unwrap();
    let (_, extras) = checkpoint::from_bytes::<f64>(&bytes).unwrap();
    assert_eq!(extras, Extras::default());
}

/// A tensor as raw parts: name, dtype, shape, little-endian bytes.
type RawTensor = (String, Dtype, Vec<usize>, Vec<u8>);

/// Builds a checkpoint file by hand from tensors and metadata (to make bad ones).
fn craft(tensors: &[RawTensor], meta: HashMap<String, String>) -> Vec<u8> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            (
                name.clone(),
                TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, Some(meta)).unwrap()
}

/// The tensors and metadata of a good f32 checkpoint, decomposed for editing.
fn parts(gpt: &Gpt<f32>) -> (Vec<RawTensor>, HashMap<String, String>) {
    let bytes = checkpoint::to_bytes(gpt, &Extras::default()).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let tensors = file
        .tensors()
        .into_iter()
        .map(|(name, v)| (name, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    (tensors, header.metadata().clone().unwrap())
}

/// Loads `bytes` into a fresh model and checks the error and that the model is untouched.
fn refused(bytes: &[u8]) -> Error {
    let mut target = model::<f32>(77, small_config(5));
    let before = bits(&target);
    let err = checkpoint::load_bytes_into(bytes, &mut target).unwrap_err();
    assert_eq!(
        bits(&target),
        before,
        "a failed load changed the model ({err})"
    );
    err
}

#[test]
fn mismatched_config_is_a_config_error() {
    let other = model::<f32>(
        5,
        GptConfig {
            d_model: 12,
            n_heads: 3,
            ..small_config(5)
        },
    );
    let err = refused(&checkpoint::to_bytes(&other, &Extras::default()).unwrap());
    assert!(
        matches!(&err, Error::ConfigMismatch { field: "d_model", model, checkpoint }
            if model == "8" && checkpoint == "12"),
        "{err}"
    );
    let other = model::<f32>(5, small_config(6));
    let err = refused(&checkpoint::to_bytes(&other, &Extras::default()).unwrap());
    assert!(
        matches!(
            err,
            Error::ConfigMismatch {
                field: "vocab_size",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn missing_extra_and_reshaped_tensors_are_param_errors() {
    let good = model::<f32>(6, small_config(5));
    let (tensors, meta) = parts(&good);

    let without: Vec<_> = tensors
        .iter()
        .filter(|t| t.0 != "blocks.1.attn.w_v")
        .cloned()
        .collect();
    let err = refused(&craft(&without, meta.clone()));
    assert!(
        matches!(&err, Error::ParamMismatch { name, .. } if name == "blocks.1.attn.w_v"),
        "{err}"
    );

    let mut with_extra = tensors.clone();
    with_extra.push(("blocks.9.attn.w_q".into(), Dtype::F32, vec![2], vec![0; 8]));
    let err = refused(&craft(&with_extra, meta.clone()));
    assert!(
        matches!(&err, Error::ParamMismatch { name, .. } if name == "blocks.9.attn.w_q"),
        "{err}"
    );

    let reshaped: Vec<_> = tensors
        .iter()
        .map(|t| {
            if t.0 == "head.w" {
                // (8, 5) stored as (5, 8): same bytes, wrong shape.
                (t.0.clone(), t.1, vec![5, 8], t.3.clone())
            } else {
                t.clone()
            }
        })
        .collect();
    let err = refused(&craft(&reshaped, meta.clone()));
    assert!(
        matches!(&err, Error::ParamMismatch { name, .. } if name == "head.w"),
        "{err}"
    );

    // An optimizer tensor for a parameter that does not exist.
    let mut meta_opt = meta.clone();
    meta_opt.insert("optimizer.kind".into(), "adam".into());
    meta_opt.insert("optimizer.step".into(), "3".into());
    let mut with_opt = tensors.clone();
    with_opt.push((
        "optimizer.m.nothing".into(),
        Dtype::F32,
        vec![1],
        vec![0; 4],
    ));
    let err = refused(&craft(&with_opt, meta_opt));
    assert!(
        matches!(&err, Error::ParamMismatch { name, .. } if name == "optimizer.m.nothing"),
        "{err}"
    );
    // An optimizer tensor without optimizer metadata.
    let err = refused(&craft(&with_opt, meta));
    assert!(matches!(err, Error::Checkpoint(_)), "{err}");
}

#[test]
fn wrong_dtype_is_a_dtype_error() {
    // A whole f64 checkpoint loaded as f32 ...
    let f64_model = model::<f64>(7, small_config(5));
    let err = refused(&checkpoint::to_bytes(&f64_model, &Extras::default()).unwrap());
    assert!(
        matches!(
            err,
            Error::DtypeMismatch {
                expected: "f32",
                ..
            }
        ),
        "{err}"
    );
    // ... and one integer tensor inside an f32 checkpoint (16-bit floats widen exactly, so
    // they are accepted: see `f16_and_bf16_storage_round_trip_the_rounded_values`).
    let (tensors, meta) = parts(&model::<f32>(7, small_config(5)));
    let ints: Vec<_> = tensors
        .iter()
        .map(|t| {
            if t.0 == "ln_f.gamma" {
                (t.0.clone(), Dtype::I32, t.2.clone(), t.3.clone())
            } else {
                t.clone()
            }
        })
        .collect();
    let err = refused(&craft(&ints, meta));
    assert!(
        matches!(&err, Error::DtypeMismatch { name, expected: "f32", found } if name == "ln_f.gamma" && found == "I32"),
        "{err}"
    );
}

#[test]
fn bad_files_are_checkpoint_errors() {
    let good = checkpoint::to_bytes(&model::<f32>(8, small_config(5)), &Extras::default()).unwrap();
    // Truncated anywhere: in the length prefix, the header, or the data.
    for cut in [0, 3, 8, 20, good.len() / 2, good.len() - 1] {
        let err = refused(&good[..cut]);
        assert!(matches!(err, Error::Checkpoint(_)), "cut at {cut}: {err}");
    }
    // Not a safetensors file at all.
    let err = refused(b"this is not a checkpoint, just some text....");
    assert!(matches!(err, Error::Checkpoint(_)), "{err}");
    // A corrupt header.
    let mut corrupt = good.clone();
    corrupt[8] = b'X';
    assert!(matches!(refused(&corrupt), Error::Checkpoint(_)));
    // A valid safetensors file without our metadata.
    let (tensors, meta) = parts(&model::<f32>(8, small_config(5)));
    let err = refused(&craft(&tensors, HashMap::new()));
    assert!(
        matches!(&err, Error::Checkpoint(m) if m.contains("format")),
        "{err}"
    );
    // Missing or unreadable config fields.
    let mut no_layers = meta.clone();
    no_layers.remove("config.n_layers");
    let err = refused(&craft(&tensors, no_layers));
    assert!(
        matches!(&err, Error::Checkpoint(m) if m.contains("config.n_layers")),
        "{err}"
    );
    let mut bad_value = meta.clone();
    bad_value.insert("config.final_norm".into(), "maybe".into());
    assert!(matches!(
        refused(&craft(&tensors, bad_value)),
        Error::Checkpoint(_)
    ));
    // A vocabulary that disagrees with the config.
    let mut bad_vocab = meta.clone();
    bad_vocab.insert("vocab".into(), "abc".into());
    assert!(matches!(
        refused(&craft(&tensors, bad_vocab)),
        Error::Checkpoint(_)
    ));
    // Another format version.
    let mut future = meta;
    future.insert("format".into(), "baregpt-checkpoint/99".into());
    assert!(matches!(
        refused(&craft(&tensors, future)),
        Error::Checkpoint(_)
    ));
}

#[test]
fn a_corrupt_config_cannot_make_load_allocate_a_huge_model() {
    let (tensors, mut meta) = parts(&model::<f32>(9, small_config(5)));
    meta.insert("config.vocab_size".into(), "100000000000".into());
    let err = checkpoint::from_bytes::<f32>(&craft(&tensors, meta)).unwrap_err();
    assert!(matches!(err, Error::Checkpoint(_)), "{err}");
}

#[test]
fn missing_file_is_an_io_error() {
    let err = checkpoint::load::<f32>("/nonexistent/dir/model.safetensors").unwrap_err();
    assert!(matches!(err, Error::Io(_)), "{err}");
    assert!(
        err.to_string()
            .contains("/nonexistent/dir/model.safetensors")
    );
}

#[test]
fn save_replaces_the_file_atomically() {
    let dir = scratch_dir("atomic");
    let path = dir.join("ckpt.safetensors");
    let old = model::<f32>(10, small_config(5));
    checkpoint::save(&path, &old, &Extras::default()).unwrap();
    let old_bytes = std::fs::read(&path).unwrap();

    // A hard link keeps the old inode: if save truncated and rewrote the file in place, the
    // link would see the new bytes. With write-then-rename it still sees the old ones.
    let link = dir.join("link.safetensors");
    std::fs::hard_link(&path, &link).unwrap();
    let new = model::<f32>(11, small_config(5));
    checkpoint::save(&path, &new, &Extras::default()).unwrap();
    assert_eq!(std::fs::read(&link).unwrap(), old_bytes);
    let (loaded, _) = checkpoint::load::<f32>(&path).unwrap();
    assert_eq!(bits(&loaded), bits(&new));

    // A save that fails leaves the previous checkpoint loadable and no temporary file behind.
    let mut bad = Extras::default();
    let mut state = optimizer_state(&new, 1);
    let slot = state.slots.remove("m").unwrap();
    state.slots.insert("bad.slot".into(), slot);
    bad.optimizer = Some(state);
    assert!(matches!(
        checkpoint::save(&path, &old, &bad),
        Err(Error::Checkpoint(_))
    ));
    let (loaded, _) = checkpoint::load::<f32>(&path).unwrap();
    assert_eq!(bits(&loaded), bits(&new));
    // A save into a directory that does not exist is an I/O error.
    let err = checkpoint::save(
        dir.join("no/such/dir/x.safetensors"),
        &old,
        &Extras::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Io(_)), "{err}");

    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["ckpt.safetensors", "link.safetensors"]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn optimizer_tensors_must_match_parameters_when_saving() {
    let gpt = model::<f32>(12, small_config(5));
    let mut state = optimizer_state(&gpt, 3);
    state
        .slots
        .get_mut("m")
        .unwrap()
        .insert("head.w".into(), ArrayD::zeros(vec![2, 2]));
    let extras = Extras {
        optimizer: Some(state),
        ..Extras::default()
    };
    assert!(matches!(
        checkpoint::to_bytes(&gpt, &extras),
        Err(Error::Checkpoint(_))
    ));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Overwriting random bytes never panics; a refused load leaves the model unchanged, and
    /// building a model from the bytes never panics either.
    #[test]
    fn random_corruption_never_panics(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let good = model::<f32>(13, small_config(5));
        let mut bytes = checkpoint::to_bytes(&good, &Extras {
            vocab: Some(CharVocab::from_chars("abcde".chars()).unwrap()),
            optimizer: Some(optimizer_state(&good, 4)),
            metadata: BTreeMap::new(),
        }).unwrap();
        for (index, byte) in &edits {
            let i = index.index(bytes.len());
            bytes[i] = *byte;
        }
        let mut target = model::<f32>(14, small_config(5));
        let before = bits(&target);
        if checkpoint::load_bytes_into(&bytes, &mut target).is_err() {
            prop_assert_eq!(bits(&target), before);
        }
        let _ = checkpoint::from_bytes::<f32>(&bytes);
    }

    /// Every truncation is refused with a typed error, and the model is unchanged.
    #[test]
    fn truncation_is_always_refused(cut in any::<prop::sample::Index>()) {
        let good = model::<f32>(15, small_config(5));
        let bytes = checkpoint::to_bytes(&good, &Extras::default()).unwrap();
        let cut = cut.index(bytes.len());
        let mut target = model::<f32>(16, small_config(5));
        let before = bits(&target);
        let err = checkpoint::load_bytes_into(&bytes[..cut], &mut target).unwrap_err();
        prop_assert!(matches!(err, Error::Checkpoint(_)), "{}", err);
        prop_assert_eq!(bits(&target), before);
        prop_assert!(checkpoint::from_bytes::<f32>(&bytes[..cut]).is_err());
    }

    /// Random bytes (a file that was never a checkpoint) are refused without a panic.
    #[test]
    fn random_bytes_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        prop_assert!(checkpoint::from_bytes::<f64>(&bytes).is_err());
    }
}

/// One Adam step per seed in `seeds`, each on a batch drawn from that seed (so a run can be
/// split anywhere and continued with the remaining seeds).
fn adam_steps(gpt: &mut Gpt<f32>, adam: &mut baregpt::Adam<f32>, seeds: std::ops::Range<u64>) {
    for seed in seeds {
        let mut rng = StdRng::seed_from_u64(seed);
        let ids = ndarray::Array2::from_shape_simple_fn((3, 6), || rng.random_range(0..5));
        let targets = ndarray::Array2::from_shape_simple_fn((3, 6), || rng.random_range(0..5));
        gpt.zero_grad();
        gpt.loss(&ids, &targets).unwrap();
        gpt.backward_loss().unwrap();
        adam.step(gpt).unwrap();
    }
}

fn adam_config(amsgrad: bool) -> baregpt::AdamConfig {
    baregpt::AdamConfig {
        amsgrad,
        max_grad_norm: Some(0.5),
        schedule: baregpt::LrSchedule::warmup_cosine(2, 20, 0.1).unwrap(),
        ..baregpt::AdamConfig::adamw(1e-2, 0.01)
    }
}

#[test]
fn resuming_from_a_checkpoint_continues_training_bit_identically() {
    for amsgrad in [false, true] {
        let dir = scratch_dir(&format!("resume-{amsgrad}"));
        let path = dir.join("run.safetensors");
        // The uninterrupted run: 8 steps.
        let mut straight = model::<f32>(20, small_config(5));
        let mut straight_opt = baregpt::Adam::new(adam_config(amsgrad)).unwrap();
        adam_steps(&mut straight, &mut straight_opt, 0..8);

        // The interrupted run: 5 steps, save, load into fresh objects, 3 more steps.
        let mut first = model::<f32>(20, small_config(5));
        let mut first_opt = baregpt::Adam::new(adam_config(amsgrad)).unwrap();
        adam_steps(&mut first, &mut first_opt, 0..5);
        let extras = Extras {
            optimizer: Some(OptimizerState::from_adam(&first_opt)),
            ..Extras::default()
        };
        checkpoint::save(&path, &first, &extras).unwrap();
        drop((first, first_opt));

        let (mut resumed, extras) = checkpoint::load::<f32>(&path).unwrap();
        let state = extras.optimizer.unwrap();
        assert_eq!(state.step, 5);
        assert_eq!(state.settings.get("amsgrad"), Some(&amsgrad.to_string()));
        let mut resumed_opt = baregpt::Adam::new(adam_config(amsgrad)).unwrap();
        resumed_opt
            .load_state(state.to_adam_state().unwrap())
            .unwrap();
        // The very next step is identical (on a copy of the resumed model: a model of
        // another initialisation given the resumed parameters) ...
        let mut after_one = model::<f32>(99, resumed.config().clone());
        assert_ne!(bits(&after_one), bits(&resumed));
        after_one.import_params(&resumed.export_params()).unwrap();
        assert_eq!(bits(&after_one), bits(&resumed));
        let mut after_one_opt = baregpt::Adam::new(adam_config(amsgrad)).unwrap();
        after_one_opt
            .load_state(resumed_opt.export_state())
            .unwrap();
        adam_steps(&mut after_one, &mut after_one_opt, 5..6);
        let mut reference = model::<f32>(20, small_config(5));
        let mut reference_opt = baregpt::Adam::new(adam_config(amsgrad)).unwrap();
        adam_steps(&mut reference, &mut reference_opt, 0..6);
        assert_eq!(bits(&after_one), bits(&reference), "amsgrad {amsgrad}");
        // ... and so is the end of the run, optimizer state included.
        adam_steps(&mut resumed, &mut resumed_opt, 5..8);
        assert_eq!(bits(&resumed), bits(&straight), "amsgrad {amsgrad}");
        assert_eq!(resumed_opt.export_state(), straight_opt.export_state());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn optimizer_state_that_is_not_adams_is_refused() {
    let mut gpt = model::<f32>(21, small_config(5));
    let mut adam = baregpt::Adam::new(adam_config(false)).unwrap();
    adam_steps(&mut gpt, &mut adam, 0..1);
    let good = OptimizerState::from_adam(&adam);
    assert_eq!(good.to_adam_state().unwrap(), adam.export_state());

    let mut other_kind = good.clone();
    other_kind.kind = "sgd".into();
    assert!(matches!(
        other_kind.to_adam_state(),
        Err(Error::Checkpoint(_))
    ));
    let mut missing_v = good.clone();
    missing_v.slots.get_mut("v").unwrap().remove("head.w");
    assert!(matches!(
        missing_v.to_adam_state(),
        Err(Error::Checkpoint(_))
    ));
    let mut unknown_slot = good.clone();
    unknown_slot.slots.insert("w".into(), BTreeMap::new());
    assert!(matches!(
        unknown_slot.to_adam_state(),
        Err(Error::Checkpoint(_))
    ));
    // The state survives a save and load unchanged.
    let bytes = checkpoint::to_bytes(
        &gpt,
        &Extras {
            optimizer: Some(good.clone()),
            ..Extras::default()
        },
    )
    .unwrap();
    let (_, extras) = checkpoint::from_bytes::<f32>(&bytes).unwrap();
    assert_eq!(extras.optimizer, Some(good));
}

/// A checkpoint written by the code before the architecture change (commit 575c544), which
/// records only the seven sizes of the config. It was written by this program, run at that
/// commit as an example:
///
/// ```text
/// let mut rng = StdRng::seed_from_u64(2026);
/// let config = GptConfig { vocab_size: 7, d_model: 8, n_heads: 2, n_layers: 2, context: 6,
///                          mlp_hidden: 12, final_norm: true };
/// let mut gpt = Gpt::<f32>::new(config, &mut rng)?;
/// let mut adam = Adam::new(AdamConfig::adam(1e-2))?;
/// let (ids, targets) = (array![[1, 2, 3, 4], [0, 6, 5, 1]], array![[2, 3, 4, 5], [6, 5, 1, 0]]);
/// for _ in 0..3 { gpt.zero_grad(); gpt.loss(&ids, &targets)?; gpt.backward()?; adam.step(&mut gpt)?; }
/// let logits = gpt.forward(&ids)?;  // saved as the bits of each f32, in user.logits_bits
/// // saved with vocab "abcdefg" and OptimizerState::from_adam(&adam)
/// ```
#[test]
fn a_checkpoint_written_before_parts_were_recorded_still_loads() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/checkpoint_575c544.safetensors"
    );
    let (gpt, extras) = checkpoint::load::<f32>(path).unwrap();
    let expected = GptConfig {
        mlp_hidden: 12,
        ..GptConfig::with_sizes(7, 8, 2, 2, 6)
    };
    assert_eq!(gpt.config(), &expected);
    assert_eq!(
        extras.vocab.map(|v| v.chars().iter().collect::<String>()),
        Some("abcdefg".to_owned())
    );
    let optimizer = extras.optimizer.expect("the Adam state was saved");
    assert_eq!(optimizer.step, 3);
    let mut adam = Adam::<f32>::new(AdamConfig::adam(1e-2)).unwrap();
    adam.load_state(optimizer.to_adam_state().unwrap()).unwrap();
    let logits = gpt.infer(&array![[1, 2, 3, 4], [0, 6, 5, 1]]).unwrap();
    let bits: Vec<String> = logits.iter().map(|v| v.to_bits().to_string()).collect();
    assert_eq!(extras.metadata["logits_bits"], bits.join(","));
}

/// A model with rotary positions, grouped-query attention and attention biases round-trips
/// with its parts, computes the same loss after loading, and is refused by a model of the
/// default parts (and the other way round).
#[test]
fn a_rotary_gqa_model_with_attention_biases_round_trips() {
    use baregpt::gpt::parts::{AttentionKind, PositionKind};
    let config = GptConfig {
        attention: AttentionKind::GroupedQuery {
            n_kv_heads: 1,
            bias: true,
        },
        positions: PositionKind::Rotary { theta: 123.5 },
        ..small_config(7)
    };
    let mut saved = model::<f64>(4, config.clone());
    // Non-zero biases, so that loading them is seen.
    saved.for_each_param_mut(&mut |name, mut p| {
        if name.contains(".b_") {
            p.value.fill(0.125);
        }
    });
    let bytes = checkpoint::to_bytes(&saved, &Extras::default()).unwrap();
    let (mut loaded, _) = checkpoint::from_bytes::<f64>(&bytes).unwrap();
    assert_eq!(loaded.config(), &config);
    assert_eq!(bits(&loaded), bits(&saved));
    assert!(loaded.param("embed.pos").is_none());
    assert!(loaded.param("blocks.1.attn.b_k").is_some());
    let ids = ndarray::array![[1, 2, 3, 4, 5], [6, 5, 4, 0, 1]];
    let targets = ndarray::array![[2, 3, 4, 5, 6], [5, 4, 0, 1, 2]];
    let a = saved.loss(&ids, &targets).unwrap();
    let b = loaded.loss(&ids, &targets).unwrap();
    assert_eq!(a.to_bits(), b.to_bits());

    let mut plain = model::<f64>(5, small_config(7));
    let dir = scratch_dir("rotary-gqa");
    let path = dir.join("model.safetensors");
    checkpoint::save(&path, &saved, &Extras::default()).unwrap();
    let before = bits(&plain);
    let err = checkpoint::load_into(&path, &mut plain).unwrap_err();
    assert!(matches!(err, Error::ConfigMismatch { .. }), "{err}");
    assert_eq!(bits(&plain), before);
    checkpoint::save(&path, &plain, &Extras::default()).unwrap();
    let err = checkpoint::load_into(&path, &mut loaded).unwrap_err();
    assert!(matches!(err, Error::ConfigMismatch { .. }), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn tied_config(bias: bool) -> GptConfig {
    GptConfig {
        head: baregpt::gpt::parts::HeadKind::Tied { bias },
        ..small_config(7)
    }
}

/// A tied model round-trips bit for bit (values, config with its `HeadKind::Tied`, Adam state
/// after a few steps), and its file holds the token table once and no head matrix.
#[test]
fn a_tied_model_round_trips_and_stores_its_table_once() {
    for bias in [false, true] {
        let mut saved = model::<f32>(40, tied_config(bias));
        let mut adam = Adam::new(adam_config(false)).unwrap();
        adam_steps(&mut saved, &mut adam, 0..3);
        let extras = Extras {
            optimizer: Some(OptimizerState::from_adam(&adam)),
            ..Extras::default()
        };
        let bytes = checkpoint::to_bytes(&saved, &extras).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let names: Vec<String> = file.names().into_iter().map(str::to_owned).collect();
        let count = |name: &str| names.iter().filter(|n| n.ends_with(name)).count();
        // The value once, and once per optimizer slot (m, v): never a second copy.
        assert_eq!(count("embed.tok"), 3, "{names:?}");
        assert_eq!(count("head.w"), 0, "{names:?}");
        assert_eq!(count("head.b"), if bias { 3 } else { 0 }, "{names:?}");
        // The parameter tensors (those outside the optimizer's) hold num_params values.
        let values: usize = file
            .tensors()
            .iter()
            .filter(|(n, _)| !n.starts_with("optimizer."))
            .map(|(_, t)| t.shape().iter().product::<usize>())
            .sum();
        assert_eq!(values, saved.num_params(), "{names:?}");

        let (mut loaded, loaded_extras) = checkpoint::from_bytes::<f32>(&bytes).unwrap();
        assert_eq!(loaded.config(), saved.config());
        assert_eq!(bits(&loaded), bits(&saved));
        assert_eq!(loaded_extras, extras);
        assert_eq!(
            checkpoint::to_bytes(&loaded, &extras).unwrap(),
            bytes,
            "saving the loaded model gives the same bytes"
        );
        // It goes on computing what the saved model computes.
        let ids = array![[1, 2, 3, 4], [6, 5, 4, 0]];
        let targets = array![[2, 3, 4, 5], [5, 4, 0, 1]];
        let a = saved.loss(&ids, &targets).unwrap();
        let b = loaded.loss(&ids, &targets).unwrap();
        assert_eq!(a.to_bits(), b.to_bits());

        // An untied model of the same sizes is another config: refused, named by field.
        let mut untied = model::<f32>(40, small_config(7));
        let err = checkpoint::load_bytes_into(&bytes, &mut untied).unwrap_err();
        assert!(matches!(err, Error::ConfigMismatch { .. }), "{err}");
        assert!(err.to_string().contains("head"), "{err}");
    }
}

#[test]
fn f16_and_bf16_storage_round_trip_the_rounded_values() {
    let original = model::<f32>(11, small_config(5));
    let vocab = Some(baregpt::data::CharVocab::from_chars("abcde".chars()).unwrap());
    let extras = Extras {
        vocab,
        ..Extras::default()
    };
    let native = checkpoint::to_bytes(&original, &extras).unwrap();
    for (storage, round) in [
        (
            Storage::F16,
            (|x: f32| half::f16::from_f32(x).to_f32()) as fn(f32) -> f32,
        ),
        (Storage::Bf16, |x: f32| half::bf16::from_f32(x).to_f32()),
    ] {
        let bytes = checkpoint::to_bytes_with(&original, &extras, storage).unwrap();
        // Two bytes a parameter instead of four (the headers differ by a few padded bytes).
        let saved = native.len() - bytes.len();
        assert!(
            saved.abs_diff(2 * original.num_params()) < 64,
            "{storage:?}: {saved}"
        );
        let (restored, back) = checkpoint::from_bytes::<f32>(&bytes).unwrap();
        assert_eq!(back.vocab, extras.vocab);
        let (a, b) = (original.export_params(), restored.export_params());
        let mut changed = 0;
        for (name, value) in a.iter() {
            let stored = b.get(name).unwrap();
            for (x, y) in value.iter().zip(stored.iter()) {
                assert_eq!(round(*x), *y, "{storage:?} {name}");
                changed += usize::from(x != y);
            }
        }
        assert!(changed > 0, "{storage:?}: rounding changed nothing");
        // Widening is exact, so an f64 model loads the same values from f16 storage ...
        let f64_model = model::<f64>(11, small_config(5));
        let bytes64 = checkpoint::to_bytes_with(&f64_model, &Extras::default(), storage).unwrap();
        assert!(checkpoint::from_bytes::<f64>(&bytes64).is_ok());
        // ... and saving the restored model again in the same storage is bit-identical.
        let again = checkpoint::to_bytes_with(&restored, &back, storage).unwrap();
        assert_eq!(again, bytes, "{storage:?}");
    }
    // A finite value beyond F16's range is refused, naming the tensor.
    let mut big = model::<f32>(11, small_config(5));
    big.param_mut("ln_f.gamma").unwrap().value[[0]] = 1e6;
    let err = checkpoint::to_bytes_with(&big, &Extras::default(), Storage::F16).unwrap_err();
    assert!(err.to_string().contains("ln_f.gamma"), "{err}");
    assert!(checkpoint::to_bytes_with(&big, &Extras::default(), Storage::Bf16).is_ok());
}

/// [`small_config`] with Llama's parts: RMSNorm (`eps = 1e-6`) and the SwiGLU MLP.
fn llama_config(vocab_size: usize) -> GptConfig {
    use baregpt::gpt::parts::{MlpKind, NormKind};
    GptConfig {
        norm: NormKind::RmsNorm { eps: 1e-6 },
        mlp: MlpKind::SwiGlu,
        ..small_config(vocab_size)
    }
}

#[test]
fn a_gpt_of_rms_norm_and_swiglu_round_trips_bit_identically() {
    let dir = scratch_dir("llama-parts");
    let path = dir.join("model.safetensors");
    let mut saved = model::<f64>(10, llama_config(5));
    let extras = Extras {
        optimizer: Some(optimizer_state(&saved, 11)),
        ..Extras::default()
    };
    checkpoint::save(&path, &saved, &extras).unwrap();
    assert_eq!(checkpoint::read_config(&path).unwrap(), llama_config(5));
    let (mut built, loaded) = checkpoint::load::<f64>(&path).unwrap();
    assert_eq!(built.config(), saved.config());
    assert_eq!(bits(&built), bits(&saved));
    assert_eq!(loaded, extras);
    assert!(built.param("blocks.0.mlp.w_gate").is_some());
    let mut into = model::<f64>(12, llama_config(5));
    assert_ne!(bits(&into), bits(&saved));
    checkpoint::load_into(&path, &mut into).unwrap();
    assert_eq!(bits(&into), bits(&saved));
    // The loaded model computes the same loss and gradients.
    let (ids, targets) = (array![[1, 2, 3, 4]], array![[2, 3, 4, 0]]);
    let a = saved.loss(&ids, &targets).unwrap();
    assert_eq!(a.to_bits(), built.loss(&ids, &targets).unwrap().to_bits());
    saved.backward_loss().unwrap();
    built.backward_loss().unwrap();
    let grads = |g: &Gpt<f64>| {
        let mut out = Vec::new();
        g.for_each_param(&mut |_, p| out.extend(p.grad.iter().map(|v| v.to_bits())));
        out
    };
    assert_eq!(grads(&saved), grads(&built));
    // Into a model of the original parts: a config error naming the norm, nothing changed.
    let mut original = model::<f64>(13, small_config(5));
    let before = bits(&original);
    let err = checkpoint::load_into(&path, &mut original).unwrap_err();
    assert!(
        matches!(&err, Error::ConfigMismatch { field: "norm", model, checkpoint }
            if model == "layer_norm" && checkpoint == "rms_norm"),
        "{err}"
    );
    assert_eq!(bits(&original), before);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_config_with_dropout_round_trips_and_one_without_writes_no_dropout_keys() {
    use baregpt::DropoutConfig;
    use baregpt::layer::DropoutMode;

    let dropout = DropoutConfig {
        embed: 0.1,
        attention: 0.05,
        residual: 0.2,
    };
    let config = GptConfig {
        dropout,
        ..small_config(7)
    };
    let mut saved = model::<f64>(5, config.clone());
    let bytes = checkpoint::to_bytes(&saved, &Extras::default()).unwrap();
    let (mut loaded, _) = checkpoint::from_bytes::<f64>(&bytes).unwrap();
    assert_eq!(loaded.config(), &config);
    assert_eq!(bits(&loaded), bits(&saved));
    // The seeds are not saved: a loaded model drops, with its own masks, and its
    // evaluation (dropout off) is the saved model's bit for bit.
    assert_eq!(loaded.dropout_sites().len(), 1 + 2 * config.n_layers);
    let (ids, targets) = (ndarray::array![[1, 2, 3, 4]], ndarray::array![[2, 3, 4, 5]]);
    saved.set_dropout(DropoutMode::Off);
    loaded.set_dropout(DropoutMode::Off);
    let (a, b) = (
        saved.loss(&ids, &targets).unwrap(),
        loaded.loss(&ids, &targets).unwrap(),
    );
    assert_eq!(a.to_bits(), b.to_bits());

    // Without dropout the metadata is what it was before dropout existed.
    let plain = model::<f64>(5, small_config(7));
    let keys: Vec<&str> = plain
        .config()
        .to_metadata()
        .iter()
        .map(|(k, _)| *k)
        .collect();
    assert!(!keys.iter().any(|k| k.starts_with("dropout")), "{keys:?}");
    let with: Vec<(&str, String)> = config.to_metadata();
    let dropout_keys: Vec<_> = with
        .iter()
        .filter(|(k, _)| k.starts_with("dropout"))
        .collect();
    assert_eq!(dropout_keys.len(), 3);
    // Dropout is a training setting: a checkpoint loads into a model that differs only in
    // its drop probabilities, either way round, and the model keeps its own.
    let mut plain = model::<f64>(6, small_config(7));
    checkpoint::load_bytes_into(&bytes, &mut plain).unwrap();
    assert_eq!(bits(&plain), bits(&saved));
    assert!(plain.dropout_sites().is_empty());
    let plain_bytes = checkpoint::to_bytes(&plain, &Extras::default()).unwrap();
    checkpoint::load_bytes_into(&plain_bytes, &mut loaded).unwrap();
    assert_eq!(loaded.config().dropout, dropout);
}
