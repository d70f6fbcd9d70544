//! Saving and loading a [`Gpt`] as a [safetensors](https://huggingface.co/docs/safetensors)
//! file, optionally with its vocabulary and optimizer state.
//!
//! # Format
//!
//! * **Tensors**: every model parameter under its dotted name (`embed.tok`,
//!   `blocks.0.attn.w_q`, …), little-endian `F32` or `F64` as the model's float type, or
//!   `F16`/`BF16` when saved with a narrower [`Storage`] (loading widens them exactly); optimizer
//!   state, when present and always in the model's float type, as `optimizer.<slot>.<parameter name>` (for Adam: `optimizer.m.*`
//!   and `optimizer.v.*`).
//! * **Metadata** (string to string): `format` = [`FORMAT`], `dtype` (`f32`/`f64`), one
//!   `config.<field>` per [`GptConfig`] field, `vocab` (the characters in id order) when a
//!   vocabulary is saved, `optimizer.kind`, `optimizer.step` and `optimizer.setting.<name>`
//!   when optimizer state is saved, and `user.<key>` for free-form [`Extras::metadata`].
//!
//! # Guarantees
//!
//! * **All or nothing.** Loading parses and checks the whole file (config, dtype, the name and
//!   shape of every tensor, no tensor missing or extra) into temporaries before it assigns
//!   anything, so a failed load leaves the model exactly as it was.
//! * **Typed errors, no panics**, whatever the bytes: [`Error::Checkpoint`] for a file that is
//!   not a readable checkpoint (truncated, corrupt, not safetensors, missing metadata),
//!   [`Error::ConfigMismatch`] for a checkpoint of another model shape,
//!   [`Error::DtypeMismatch`] for `f64` data loaded as `f32` (or any other dtype),
//!   [`Error::ParamMismatch`] for a missing, extra or reshaped tensor, [`Error::Io`] when the
//!   file cannot be read or written.
//! * **Atomic save.** [`save`] writes a temporary file in the target's directory, syncs it
//!   and renames it over the target, so an interrupted save never destroys the previous
//!   checkpoint.
//!
//! # Example
//!
//! ```
//! use baregpt::{checkpoint, Gpt, GptConfig};
//! use rand::SeedableRng;
//!
//! let mut rng = rand::rngs::StdRng::seed_from_u64(0);
//! let model = Gpt::<f32>::new(GptConfig::tiny(12), &mut rng)?;
//! let dir = std::env::temp_dir().join(format!("baregpt-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let path = dir.join("model.safetensors");
//!
//! checkpoint::save(&path, &model, &checkpoint::Extras::default())?;
//! let (restored, _extras) = checkpoint::load::<f32>(&path)?;
//! assert_eq!(restored.config(), model.config());
//!
//! // A checkpoint of another shape is refused, and the model is left untouched.
//! let mut other = Gpt::<f32>::new(GptConfig::tiny(13), &mut rng)?;
//! assert!(checkpoint::load_into(&path, &mut other).is_err());
//! // f32 data is not silently converted to f64.
//! assert!(checkpoint::load::<f64>(&path).is_err());
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), baregpt::Error>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use rand::SeedableRng;
use safetensors::tensor::{Dtype, SafeTensors};

use crate::data::CharVocab;
use crate::optim::ParamState;
use crate::param::{ParamMap, Params};
use crate::{Adam, AdamState, Error, Float, Gpt, GptConfig, Result};

/// The value of the `format` metadata key of every checkpoint this version writes.
pub const FORMAT: &str = "baregpt-checkpoint/1";

/// The prefix of optimizer tensors and metadata.
const OPTIMIZER: &str = "optimizer";
/// The `kind` of Adam's optimizer state.
const ADAM: &str = "adam";
/// The prefix of free-form metadata.
const USER: &str = "user.";

/// The state of an optimizer, in a form any optimizer can export to and import from.
///
/// Each *slot* is one named tensor per model parameter (Adam has two: `m` and `v`); the
/// `step` counts the updates done so far and `settings` holds hyper-parameters as strings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OptimizerState<F> {
    /// What kind of optimizer wrote the state (for example `"adam"`).
    pub kind: String,
    /// The number of updates done so far.
    pub step: u64,
    /// Slot name (no `.`) → parameter's dotted name → tensor of the parameter's shape.
    pub slots: BTreeMap<String, BTreeMap<String, ArrayD<F>>>,
    /// Hyper-parameters and other settings, as strings.
    pub settings: BTreeMap<String, String>,
}

impl<F: Float> OptimizerState<F> {
    /// The state of an [`Adam`] optimizer: slots `m`, `v` (and `v_max` with AMSGrad), its step
    /// count, and its hyper-parameters as settings (for the record; they are not read back).
    pub fn from_adam(adam: &Adam<F>) -> Self {
        let state = adam.state();
        let mut slots: BTreeMap<String, BTreeMap<String, ArrayD<F>>> = BTreeMap::new();
        for (name, p) in &state.params {
            let mut put = |slot: &str, value: &ArrayD<F>| {
                slots
                    .entry(slot.to_owned())
                    .or_default()
                    .insert(name.clone(), value.clone());
            };
            put("m", &p.m);
            put("v", &p.v);
            if let Some(v_max) = &p.v_max {
                put("v_max", v_max);
            }
        }
        let c = adam.config();
        let settings = [
            ("lr", c.lr.to_string()),
            ("beta1", c.beta1.to_string()),
            ("beta2", c.beta2.to_string()),
            ("eps", c.eps.to_string()),
            ("weight_decay", c.weight_decay.to_string()),
            (
                "decoupled_weight_decay",
                c.decoupled_weight_decay.to_string(),
            ),
            ("amsgrad", c.amsgrad.to_string()),
            (
                "max_grad_norm",
                c.max_grad_norm.map_or("none".to_owned(), |n| n.to_string()),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        Self {
            kind: ADAM.to_owned(),
            step: state.step,
            slots,
            settings,
        }
    }

    /// Converts back to an [`AdamState`] for [`Adam::load_state`].
    ///
    /// # Errors
    /// [`Error::Checkpoint`] when the state is not Adam's, or its slots do not hold the same
    /// parameters (an `m` and a `v` for each, a `v_max` for all or none).
    pub fn to_adam_state(&self) -> Result<AdamState<F>> {
        if self.kind != ADAM {
            return Err(Error::Checkpoint(format!(
                "optimizer state of kind {:?}, expected {ADAM:?}",
                self.kind
            )));
        }
        if let Some(slot) = self
            .slots
            .keys()
            .find(|k| !["m", "v", "v_max"].contains(&k.as_str()))
        {
            return Err(Error::Checkpoint(format!(
                "unknown Adam state slot {slot:?}"
            )));
        }
        let empty = BTreeMap::new();
        let slot = |name: &str| self.slots.get(name).unwrap_or(&empty);
        let (m, v, v_max) = (slot("m"), slot("v"), self.slots.get("v_max"));
        let same_names = |other: &BTreeMap<String, ArrayD<F>>| other.keys().eq(m.keys());
        if !same_names(v) || v_max.is_some_and(|v_max| !same_names(v_max)) {
            return Err(Error::Checkpoint(
                "the Adam state slots m, v (and v_max) do not name the same parameters".into(),
            ));
        }
        let params = m
            .iter()
            .map(|(name, m)| {
                let state = ParamState {
                    m: m.clone(),
                    v: v[name].clone(),
                    v_max: v_max.map(|v_max| v_max[name].clone()),
                };
                (name.clone(), state)
            })
            .collect();
        Ok(AdamState {
            step: self.step,
            params,
        })
    }
}

/// What a checkpoint holds besides the model's parameters and config.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Extras<F> {
    /// The character vocabulary the model's ids refer to.
    pub vocab: Option<CharVocab>,
    /// The optimizer state, for resuming training exactly.
    pub optimizer: Option<OptimizerState<F>>,
    /// Free-form string metadata (saved under `user.<key>`).
    pub metadata: BTreeMap<String, String>,
}

/// Saves `model` and `extras` to `path`, atomically (temporary file, sync, rename).
///
/// # Errors
/// [`Error::Checkpoint`] when the float type has no safetensors dtype, the vocabulary's size
/// is not `config.vocab_size`, an optimizer slot name is empty or contains `.`, or an
/// optimizer tensor does not match a model parameter; [`Error::TooLarge`] when the file would
/// exceed [`MAX_ALLOC_BYTES`](crate::limits::MAX_ALLOC_BYTES); [`Error::Io`] when the file
/// cannot be written. On error the previous file at `path`, if any, is untouched.
///
/// Each call writes its own uniquely named temporary file next to `path` and renames it over
/// `path`: concurrent saves to one path (threads or processes) never mix, and the file holds
/// whole the model of the last rename. The bytes are those of [`to_bytes`], which are
/// deterministic.
pub fn save<F: Float>(path: impl AsRef<Path>, model: &Gpt<F>, extras: &Extras<F>) -> Result<()> {
    save_with(path, model, extras, Storage::Native)
}

/// How a checkpoint stores the model's parameters. Optimizer state is always stored in the
/// model's float type (its second moments would underflow in 16 bits).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Storage {
    /// The model's float type (`F32` or `F64`): exact.
    #[default]
    Native,
    /// IEEE half precision (`F16`): 2 bytes a parameter, 11 significant bits, magnitudes up
    /// to 65504. Values are rounded to nearest; a finite value beyond the range is refused.
    F16,
    /// bfloat16 (`BF16`): 2 bytes a parameter, 8 significant bits, `f32`'s range.
    Bf16,
}

/// [`save`], with the parameters stored as `storage` says: `Storage::F16` halves an `f32`
/// model's file, for shipping a trained model; loading it gives the rounded values exactly.
///
/// ```
/// use baregpt::{checkpoint::{self, Extras, Storage}, Gpt, GptConfig};
/// use rand::SeedableRng;
///
/// let model = Gpt::<f32>::new(GptConfig::tiny(12), &mut rand::rngs::StdRng::seed_from_u64(0))?;
/// let full = checkpoint::to_bytes(&model, &Extras::default())?;
/// let half = checkpoint::to_bytes_with(&model, &Extras::default(), Storage::F16)?;
/// assert!(half.len() * 10 < full.len() * 6);
/// let (restored, _) = checkpoint::from_bytes::<f32>(&half)?;
/// assert_eq!(restored.config(), model.config());
/// # Ok::<(), baregpt::Error>(())
/// ```
///
/// # Errors
/// As [`save`], and [`Error::Checkpoint`] naming the tensor when a finite parameter is
/// beyond `F16`'s range.
pub fn save_with<F: Float>(
    path: impl AsRef<Path>,
    model: &Gpt<F>,
    extras: &Extras<F>,
    storage: Storage,
) -> Result<()> {
    let bytes = to_bytes_with(model, extras, storage)?;
    write_atomically(path.as_ref(), &bytes)
}

/// Loads a checkpoint into a new model built from the config it records.
///
/// # Errors
/// As [`load_into`] (except [`Error::ConfigMismatch`]), and [`Error::InvalidConfig`] when the
/// recorded config is not a valid one.
pub fn load<F: Float>(path: impl AsRef<Path>) -> Result<(Gpt<F>, Extras<F>)> {
    from_bytes(&read(path.as_ref())?)
}

/// Loads a checkpoint into an existing model of the same config; all or nothing.
///
/// Parameter gradients are reset to zero. The drop probabilities
/// ([`GptConfig::dropout`](crate::GptConfig::dropout)) are training settings, not part of the
/// model's shape: they need not match, and the model keeps its own (fine-tuning with dropout
/// from a checkpoint trained without, or the reverse, works).
///
/// # Errors
/// [`Error::Io`] when the file cannot be read; [`Error::Checkpoint`] when it is not a valid
/// checkpoint; [`Error::ConfigMismatch`] when it was saved from a model of another shape;
/// [`Error::DtypeMismatch`] when it holds another float type; [`Error::ParamMismatch`] for a
/// missing, extra or reshaped tensor. On error `model` is unchanged.
pub fn load_into<F: Float>(path: impl AsRef<Path>, model: &mut Gpt<F>) -> Result<Extras<F>> {
    load_bytes_into(&read(path.as_ref())?, model)
}

/// Reads only the config recorded in a checkpoint (the tensors are checked for integrity but
/// not converted).
///
/// # Errors
/// [`Error::Io`] and [`Error::Checkpoint`] as [`load`].
pub fn read_config(path: impl AsRef<Path>) -> Result<GptConfig> {
    let bytes = read(path.as_ref())?;
    let (_, meta) = parse_file(&bytes)?;
    GptConfig::from_metadata(&meta)
}

/// Serialises `model` and `extras` to the bytes of a checkpoint file.
///
/// # Errors
/// As [`save`], without the I/O.
pub fn to_bytes<F: Float>(model: &Gpt<F>, extras: &Extras<F>) -> Result<Vec<u8>> {
    to_bytes_with(model, extras, Storage::Native)
}

/// [`to_bytes`] with the parameters stored as `storage` says (see [`save_with`]).
///
/// # Errors
/// As [`save_with`], without the I/O.
pub fn to_bytes_with<F: Float>(
    model: &Gpt<F>,
    extras: &Extras<F>,
    storage: Storage,
) -> Result<Vec<u8>> {
    let mut tensors = param_tensors(model, storage)?;
    let shapes: HashMap<String, Vec<usize>> = tensors
        .iter()
        .map(|t| (t.name.clone(), t.shape.clone()))
        .collect();
    let mut meta = base_metadata::<F>();
    for (field, value) in model.config().to_metadata() {
        meta.insert(format!("config.{field}"), value);
    }
    if let Some(vocab) = &extras.vocab {
        // Refused here, not only when loading: a file that cannot be loaded is not written.
        if vocab.len() != model.config().vocab_size {
            return Err(Error::Checkpoint(format!(
                "the vocabulary has {} characters but config.vocab_size is {}",
                vocab.len(),
                model.config().vocab_size
            )));
        }
        meta.insert("vocab".to_owned(), vocab.to_string());
    }
    if let Some(opt) = &extras.optimizer {
        meta.insert(format!("{OPTIMIZER}.kind"), opt.kind.clone());
        meta.insert(format!("{OPTIMIZER}.step"), opt.step.to_string());
        for (key, value) in &opt.settings {
            meta.insert(format!("{OPTIMIZER}.setting.{key}"), value.clone());
        }
        for (slot, params) in &opt.slots {
            check_slot_name(slot)?;
            for (name, value) in params {
                let full = format!("{OPTIMIZER}.{slot}.{name}");
                match shapes.get(name) {
                    Some(shape) if shape.as_slice() == value.shape() => {}
                    _ => {
                        return Err(Error::Checkpoint(format!(
                            "optimizer tensor `{full}` of shape {:?} matches no model parameter",
                            value.shape()
                        )));
                    }
                }
                tensors.push(Encoded::new(
                    full,
                    value.shape(),
                    value.iter(),
                    Storage::Native,
                )?);
            }
        }
    }
    for (key, value) in &extras.metadata {
        meta.insert(format!("{USER}{key}"), value.clone());
    }
    serialize(&tensors, meta)
}

/// Saves only the parameters of `model` — any [`Params`]: a layer, a boxed layer, a model
/// of your own — under their dotted names, atomically. [`load_params_into`] reads it back.
///
/// # Errors
/// As [`save`].
pub fn save_params<F: Float, P: Params<F> + ?Sized>(
    path: impl AsRef<Path>,
    model: &P,
) -> Result<()> {
    let bytes = serialize(
        &param_tensors(model, Storage::Native)?,
        base_metadata::<F>(),
    )?;
    write_atomically(path.as_ref(), &bytes)
}

/// Loads the parameters saved by [`save_params`] (or those of a whole-model checkpoint,
/// ignoring its optimizer state) into `model` by name; all or nothing, through
/// [`Params::import_params`]. Gradients are left alone.
///
/// # Errors
/// [`Error::Io`] and [`Error::Checkpoint`] as [`load`]; [`Error::DtypeMismatch`] for another
/// float type; [`Error::ParamMismatch`] for a missing, extra or reshaped tensor. On error
/// `model` is unchanged.
pub fn load_params_into<F: Float, P: Params<F> + ?Sized>(
    path: impl AsRef<Path>,
    model: &mut P,
) -> Result<()> {
    load_params_bytes_into(&read(path.as_ref())?, model)
}

/// [`load_params_into`] from bytes.
///
/// # Errors
/// As [`load_params_into`], without the I/O.
pub fn load_params_bytes_into<F: Float, P: Params<F> + ?Sized>(
    bytes: &[u8],
    model: &mut P,
) -> Result<()> {
    dtype_of::<F>()?;
    let (file, meta) = parse_file(bytes)?;
    check_dtype_metadata::<F>(&meta)?;
    let mut map = ParamMap::new();
    let mut names = file.names();
    names.sort_unstable();
    for name in names {
        if name
            .strip_prefix(OPTIMIZER)
            .is_some_and(|rest| rest.starts_with('.'))
        {
            continue;
        }
        map.insert(name, tensor::<F>(&file, name)?);
    }
    model.import_params(&map)
}

/// One tensor ready to be written: its name, shape, safetensors dtype and little-endian
/// bytes.
pub(crate) struct Encoded {
    name: String,
    shape: Vec<usize>,
    dtype: Dtype,
    bytes: Vec<u8>,
}

impl Encoded {
    /// `values` (row-major, of `shape`) encoded as `storage` says.
    pub(crate) fn new<'a, F: Float>(
        name: String,
        shape: &[usize],
        values: impl Iterator<Item = &'a F>,
        storage: Storage,
    ) -> Result<Self> {
        let (dtype, bytes) = encode(&name, values, storage)?;
        Ok(Self {
            name,
            shape: shape.to_vec(),
            dtype,
            bytes,
        })
    }
}

/// Every parameter of `model`, in visit order, stored as `storage` says.
fn param_tensors<F: Float, P: Params<F> + ?Sized>(
    model: &P,
    storage: Storage,
) -> Result<Vec<Encoded>> {
    let mut tensors = Vec::new();
    let mut failed = None;
    model.for_each_param(&mut |name, p| {
        if failed.is_none() {
            match Encoded::new(name.to_owned(), p.value.shape(), p.value.iter(), storage) {
                Ok(t) => tensors.push(t),
                Err(e) => failed = Some(e),
            }
        }
    });
    failed.map_or(Ok(tensors), Err)
}

/// The metadata every file starts with: `format` and `dtype`.
fn base_metadata<F: Float>() -> HashMap<String, String> {
    HashMap::from([
        ("format".to_owned(), FORMAT.to_owned()),
        ("dtype".to_owned(), F::NAME.to_owned()),
    ])
}

/// Refuses a file whose recorded dtype is not `F`'s.
fn check_dtype_metadata<F: Float>(meta: &HashMap<String, String>) -> Result<()> {
    let stored = meta.get("dtype").map(String::as_str).unwrap_or("(none)");
    if stored != F::NAME {
        return Err(Error::DtypeMismatch {
            name: "(checkpoint)".into(),
            expected: F::NAME,
            found: stored.to_owned(),
        });
    }
    Ok(())
}

/// The safetensors bytes of `tensors` with `meta`.
pub(crate) fn serialize(tensors: &[Encoded], meta: HashMap<String, String>) -> Result<Vec<u8>> {
    // Written by hand rather than by `safetensors::serialize`, whose header lists the
    // metadata in hash order: here the metadata keys and the tensors are sorted by name, so
    // one model and its extras always give the same bytes. The layout is safetensors': an
    // 8-byte little-endian header length, the JSON header padded with spaces to a multiple
    // of 8, then the tensors' bytes in header order.
    let meta: BTreeMap<String, String> = meta.into_iter().collect();
    let mut order: Vec<&Encoded> = tensors.iter().collect();
    order.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(pair) = order.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(Error::Checkpoint(format!(
            "tensor `{}` is listed twice",
            pair[0].name
        )));
    }
    let mut header = String::from("{\"__metadata__\":{");
    for (i, (key, value)) in meta.iter().enumerate() {
        if i > 0 {
            header.push(',');
        }
        push_json_string(&mut header, key);
        header.push(':');
        push_json_string(&mut header, value);
    }
    header.push('}');
    let mut offset = 0usize;
    for Encoded {
        name,
        shape,
        dtype,
        bytes: data,
    } in &order
    {
        if crate::limits::bytes_of(shape, dtype.bitsize() / 8) != Some(data.len()) {
            return Err(Error::Checkpoint(format!(
                "tensor `{name}`: {} bytes for shape {shape:?}",
                data.len()
            )));
        }
        let end = offset + data.len();
        header.push(',');
        push_json_string(&mut header, name);
        header.push_str(&format!(
            ":{{\"dtype\":\"{dtype:?}\",\"shape\":{shape:?},\"data_offsets\":[{offset},{end}]}}"
        ));
        offset = end;
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let total = 8 + header.len() + offset;
    crate::limits::check_alloc::<u8>("checkpoint", "the file", &[total])?;
    let mut bytes = Vec::with_capacity(total);
    bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for tensor in &order {
        bytes.extend_from_slice(&tensor.bytes);
    }
    Ok(bytes)
}

/// Appends `s` as a JSON string literal.
fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Builds a model from checkpoint bytes (see [`load`]).
///
/// # Errors
/// As [`load`], without the I/O.
pub fn from_bytes<F: Float>(bytes: &[u8]) -> Result<(Gpt<F>, Extras<F>)> {
    let parsed = parse::<F>(bytes)?;
    parsed.config.validate()?;
    // Refuse before allocating a model that the file's tensors cannot fill (a corrupt config
    // could otherwise ask for an enormous model).
    let stored: usize = parsed.params.values().map(ArrayD::len).sum();
    let needed = parsed.config.checked_param_count();
    if needed != Some(stored) {
        return Err(Error::Checkpoint(format!(
            "the recorded config needs {} parameters but the file holds {stored}",
            needed.map_or("too many".to_owned(), |n| n.to_string())
        )));
    }
    // The initial values are overwritten; any seed will do. Dropout seeds are not saved:
    // a loaded model's come from this rng, and its sites start at pass 0.
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut model = Gpt::new(parsed.config.clone(), &mut rng)?;
    let extras = parsed.apply(&mut model)?;
    Ok((model, extras))
}

/// Loads checkpoint bytes into `model` (see [`load_into`]).
///
/// # Errors
/// As [`load_into`], without the I/O.
pub fn load_bytes_into<F: Float>(bytes: &[u8], model: &mut Gpt<F>) -> Result<Extras<F>> {
    parse::<F>(bytes)?.apply(model)
}

/// A checkpoint decoded into owned arrays, not yet checked against a model.
struct Parsed<F> {
    config: GptConfig,
    params: BTreeMap<String, ArrayD<F>>,
    extras: Extras<F>,
}

impl<F: Float> Parsed<F> {
    /// Checks everything against `model`, then assigns; nothing is assigned on error.
    fn apply(self, model: &mut Gpt<F>) -> Result<Extras<F>> {
        // Dropout is a training setting, not the shape: the model keeps its own.
        let theirs = crate::GptConfig {
            dropout: model.config().dropout,
            ..self.config.clone()
        };
        if let Some((field, model, checkpoint)) = model.config().first_difference(&theirs) {
            return Err(Error::ConfigMismatch {
                field,
                model,
                checkpoint,
            });
        }
        let mut expected: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        model.for_each_param(&mut |name, p| {
            expected.insert(name.to_owned(), p.value.shape().to_vec());
        });
        for (name, shape) in &expected {
            match self.params.get(name) {
                None => return Err(mismatch(name, "missing from the checkpoint".into())),
                Some(value) if value.shape() != shape.as_slice() => {
                    return Err(mismatch(
                        name,
                        format!(
                            "shape {:?} in the checkpoint, {shape:?} in the model",
                            value.shape()
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        if let Some(extra) = self.params.keys().find(|k| !expected.contains_key(*k)) {
            return Err(mismatch(
                extra,
                "in the checkpoint but not a model parameter".into(),
            ));
        }
        if let Some(opt) = &self.extras.optimizer {
            for (slot, tensors) in &opt.slots {
                for (name, value) in tensors {
                    if expected.get(name).map(Vec::as_slice) != Some(value.shape()) {
                        return Err(mismatch(
                            &format!("{OPTIMIZER}.{slot}.{name}"),
                            format!(
                                "optimizer tensor of shape {:?} matches no model parameter",
                                value.shape()
                            ),
                        ));
                    }
                }
            }
        }
        // Everything is checked: the import cannot fail, and it makes the model forget the
        // forward and loss computed before the load.
        let params: ParamMap<F> = self.params.into_iter().collect();
        model.import_params(&params)?;
        model.zero_grad();
        Ok(self.extras)
    }
}

fn mismatch(name: &str, reason: String) -> Error {
    Error::ParamMismatch {
        name: name.to_owned(),
        reason,
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).map_err(|e| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("cannot read checkpoint {}: {e}", path.display()),
        ))
    })
}

/// Parses the safetensors container: its tensors and its metadata.
fn parse_file(bytes: &[u8]) -> Result<(SafeTensors<'_>, HashMap<String, String>)> {
    let corrupt = |e: safetensors::SafeTensorError| {
        Error::Checkpoint(format!("not a readable safetensors file: {e}"))
    };
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(corrupt)?;
    let file = SafeTensors::deserialize(bytes).map_err(corrupt)?;
    let meta = header.metadata().clone().unwrap_or_default();
    match meta.get("format") {
        Some(format) if format == FORMAT => Ok((file, meta)),
        Some(format) => Err(Error::Checkpoint(format!(
            "unsupported format {format:?} (this version reads {FORMAT:?})"
        ))),
        None => Err(Error::Checkpoint(
            "a safetensors file without baregpt metadata (no `format` key)".into(),
        )),
    }
}

/// Decodes a whole checkpoint for the float type `F`.
fn parse<F: Float>(bytes: &[u8]) -> Result<Parsed<F>> {
    dtype_of::<F>()?;
    let (file, meta) = parse_file(bytes)?;
    let config = GptConfig::from_metadata(&meta)?;
    check_dtype_metadata::<F>(&meta)?;
    let vocab = match meta.get("vocab") {
        None => None,
        Some(chars) => {
            let vocab = CharVocab::from_chars(chars.chars())
                .map_err(|e| Error::Checkpoint(format!("bad vocabulary: {e}")))?;
            if vocab.len() != config.vocab_size {
                return Err(Error::Checkpoint(format!(
                    "the vocabulary has {} characters but config.vocab_size is {}",
                    vocab.len(),
                    config.vocab_size
                )));
            }
            Some(vocab)
        }
    };
    let mut optimizer = optimizer_from(&meta)?;
    let mut params = BTreeMap::new();
    let mut names = file.names();
    names.sort_unstable();
    for name in names {
        let value = tensor::<F>(&file, name)?;
        match name
            .strip_prefix(OPTIMIZER)
            .and_then(|r| r.strip_prefix('.'))
        {
            None => {
                params.insert(name.to_owned(), value);
            }
            Some(rest) => {
                let (slot, param) = rest.split_once('.').ok_or_else(|| {
                    Error::Checkpoint(format!("optimizer tensor `{name}` names no parameter"))
                })?;
                let opt = optimizer.as_mut().ok_or_else(|| {
                    Error::Checkpoint(format!(
                        "optimizer tensor `{name}` but no `{OPTIMIZER}.kind` metadata"
                    ))
                })?;
                opt.slots
                    .entry(slot.to_owned())
                    .or_default()
                    .insert(param.to_owned(), value);
            }
        }
    }
    let metadata = meta
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(USER)?.to_owned(), v.clone())))
        .collect();
    Ok(Parsed {
        config,
        params,
        extras: Extras {
            vocab,
            optimizer,
            metadata,
        },
    })
}

fn optimizer_from<F>(meta: &HashMap<String, String>) -> Result<Option<OptimizerState<F>>> {
    let Some(kind) = meta.get(&format!("{OPTIMIZER}.kind")) else {
        return Ok(None);
    };
    let step_key = format!("{OPTIMIZER}.step");
    let step = meta
        .get(&step_key)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::Checkpoint(format!("missing or unreadable `{step_key}`")))?;
    let prefix = format!("{OPTIMIZER}.setting.");
    let settings = meta
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?.to_owned(), v.clone())))
        .collect();
    Ok(Some(OptimizerState {
        kind: kind.clone(),
        step,
        slots: BTreeMap::new(),
        settings,
    }))
}

fn check_slot_name(slot: &str) -> Result<()> {
    if slot.is_empty() || slot.contains('.') {
        return Err(Error::Checkpoint(format!(
            "optimizer slot name {slot:?} must be non-empty and contain no `.`"
        )));
    }
    Ok(())
}

/// The safetensors dtype of `F`.
fn dtype_of<F: Float>() -> Result<Dtype> {
    match F::NAME {
        "f32" => Ok(Dtype::F32),
        "f64" => Ok(Dtype::F64),
        other => Err(Error::Checkpoint(format!(
            "float type {other} has no safetensors dtype"
        ))),
    }
}

/// The tensor `name` of `file`, decoded as `F`.
fn tensor<F: Float>(file: &SafeTensors<'_>, name: &str) -> Result<ArrayD<F>> {
    let view = file
        .tensor(name)
        .map_err(|e| Error::Checkpoint(format!("tensor `{name}`: {e}")))?;
    let native = dtype_of::<F>()?;
    // 16-bit storage widens exactly into either float type; F32 and F64 must be F's own.
    if !matches!(view.dtype(), Dtype::F16 | Dtype::BF16) && view.dtype() != native {
        return Err(Error::DtypeMismatch {
            name: name.to_owned(),
            expected: F::NAME,
            found: format!("{:?}", view.dtype()),
        });
    }
    decode::<F>(name, view.dtype(), view.shape(), view.data())
}

/// The dtype and little-endian bytes of `values` (of tensor `name`) stored as `storage`
/// says: natively in the width of `F`, or rounded to nearest in 16 bits.
pub(crate) fn encode<'a, F: Float>(
    name: &str,
    values: impl Iterator<Item = &'a F>,
    storage: Storage,
) -> Result<(Dtype, Vec<u8>)> {
    let mut bytes = Vec::new();
    let dtype = match storage {
        Storage::Native => dtype_of::<F>()?,
        Storage::F16 => Dtype::F16,
        Storage::Bf16 => Dtype::BF16,
    };
    for &v in values {
        let x = v.to_f64_exact();
        match dtype {
            // Exact: the value is an f32 widened to f64.
            Dtype::F32 => bytes.extend_from_slice(&(x as f32).to_le_bytes()),
            Dtype::F16 => {
                let h = half::f16::from_f64(x);
                if h.is_infinite() && x.is_finite() {
                    return Err(Error::Checkpoint(format!(
                        "tensor `{name}`: the value {x} is beyond F16's range (±65504)"
                    )));
                }
                bytes.extend_from_slice(&h.to_le_bytes());
            }
            Dtype::BF16 => bytes.extend_from_slice(&half::bf16::from_f64(x).to_le_bytes()),
            _ => bytes.extend_from_slice(&x.to_le_bytes()),
        }
    }
    Ok((dtype, bytes))
}

/// Decodes little-endian data of `dtype` (F16, BF16, F32 or F64) into an array of `shape`.
pub(crate) fn decode<F: Float>(
    name: &str,
    dtype: Dtype,
    shape: &[usize],
    data: &[u8],
) -> Result<ArrayD<F>> {
    let values: Vec<F> = match dtype {
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| F::of(half::f16::from_le_bytes([c[0], c[1]]).to_f64()))
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| F::of(half::bf16::from_le_bytes([c[0], c[1]]).to_f64()))
            .collect(),
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| F::of(f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))))
            .collect(),
        _ => data
            .chunks_exact(8)
            .map(|c| {
                F::of(f64::from_le_bytes([
                    c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
                ]))
            })
            .collect(),
    };
    ArrayD::from_shape_vec(IxDyn(shape), values)
        .map_err(|e| Error::Checkpoint(format!("tensor `{name}`: {e}")))
}

/// Writes `bytes` to a temporary sibling of `path`, syncs it, and renames it over `path`.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::Checkpoint(format!("{} does not name a file", path.display())))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Unique per call (process id and a per-process counter), and created with `create_new`:
    // two saves,
    // from two threads or two processes, never share a temporary file, so each writes its
    // own bytes whole and the rename of the last one wins.
    static SAVES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = SAVES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".tmp-{}-{call}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let written = (|| -> std::io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    match written {
        Ok(()) => {
            // Make the rename itself durable where the platform allows (best effort).
            if let Ok(dir) = fs::File::open(&dir) {
                let _ = dir.sync_all();
            }
            Ok(())
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(Error::Io(std::io::Error::new(
                e.kind(),
                format!("cannot write checkpoint {}: {e}", path.display()),
            )))
        }
    }
}
