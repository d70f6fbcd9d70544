//! Hugging Face interop (feature `hf`): load a `GPT2LMHeadModel` or `LlamaForCausalLM`
//! folder into a [`Gpt`], save a GPT-2- or Llama-family [`Gpt`] as such a folder, and read
//! its `tokenizer.json`.
//!
//! A folder holds `config.json`, the weights (`model.safetensors`, or shards listed by
//! `model.safetensors.index.json`) and usually `tokenizer.json`. [`load`] maps the config to
//! a [`GptConfig`] ([`parse_config`]; options baregpt does not implement are refused by
//! name), the tensor names and layouts to the model's parameters ([`tensor_maps`]; GPT-2's
//! fused `c_attn` is split, `nn.Linear` weights are transposed, a tied head shares the
//! embedding table), and converts `F32`, `F16`, `BF16` or `F64` storage to `F`. [`save`]
//! writes the same layout back, so that `transformers`'
//! `AutoModelForCausalLM.from_pretrained(dir)` computes the same logits.
//!
//! ```no_run
//! use baregpt::hf;
//!
//! let pretrained = hf::load::<f32>("gpt2")?;             // a folder from the Hub
//! let tokenizer = pretrained.tokenizer.as_ref().expect("gpt2 ships tokenizer.json");
//! let ids = tokenizer.encode("Hello, my name is", false)?;
//! // ... train `pretrained.model` with `Gpt::loss`, `Gpt::backward_loss` and `Adam` ...
//! hf::save("gpt2-finetuned", &pretrained.model, Some(tokenizer))?;
//! # Ok::<(), baregpt::Error>(())
//! ```
//!
//! `docs/huggingface.md` walks through fine-tuning `gpt2` and continuing in PyTorch.

mod config;
mod files;
mod names;
mod tokenizer;

use std::collections::HashSet;
use std::path::Path;

use ndarray::{ArrayD, Axis};
use rand::SeedableRng;
use rand::rngs::StdRng;

pub use config::{Family, config_json, parse_config};
pub use files::{INDEX_FILE, MODEL_FILE};
pub use names::{Source, TensorMap, is_skippable, tensor_maps};
pub use tokenizer::Tokenizer;

use crate::checkpoint::{Encoded, Storage, serialize, write_atomically};
use crate::gpt::parts::HeadKind;
use crate::param::ParamMap;
use crate::{Error, Float, Gpt, GptConfig, Params, Result};

/// The config file of a folder.
pub const CONFIG_FILE: &str = "config.json";
/// The tokenizer file of a folder.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// A model loaded from a Hugging Face folder.
#[derive(Debug)]
pub struct Pretrained<F: Float> {
    /// The model, with the folder's weights.
    pub model: Gpt<F>,
    /// Which architecture the folder held.
    pub family: Family,
    /// The folder's `tokenizer.json`, if it has one.
    pub tokenizer: Option<Tokenizer>,
    /// The folder's `config.json` as it was, for [`SaveOptions::base_config`] (so that a
    /// fine-tuned model keeps its token ids and other settings baregpt does not use).
    pub config_json: serde_json::Value,
}

/// How [`save_with`] writes a folder.
#[derive(Clone, Debug, Default)]
pub struct SaveOptions {
    /// How the parameters are stored (`Storage::Native`: the model's float type).
    pub storage: Storage,
    /// The `config.json` the model was loaded from ([`Pretrained::config_json`]), whose keys
    /// baregpt does not write are kept (see [`config_json`]).
    pub base_config: Option<serde_json::Value>,
}

/// Reads `dir/config.json`: the family and the [`GptConfig`] of its model.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read; otherwise as [`parse_config`].
pub fn read_config(dir: impl AsRef<Path>) -> Result<(Family, GptConfig)> {
    parse_config(&read_config_text(dir.as_ref())?)
}

fn read_config_text(dir: &Path) -> Result<String> {
    let bytes = files::read_file(dir, CONFIG_FILE)?;
    String::from_utf8(bytes).map_err(|_| Error::Hf {
        file: CONFIG_FILE.into(),
        reason: "is not UTF-8 text".into(),
    })
}

/// Loads a `GPT2LMHeadModel` or `LlamaForCausalLM` folder: its config, weights and (if
/// present) tokenizer. Nothing is half-loaded: the model is returned only when every tensor
/// has been read, checked and converted.
///
/// # Errors
/// As [`read_config`]; [`Error::Io`] when the weights cannot be read; [`Error::Hf`] naming the
/// file when one is not readable safetensors, a shard is not where the index says, a tensor
/// is missing, has an element type other than `F32`, `F16`, `BF16` or `F64`, or belongs to no
/// parameter; [`Error::ParamMismatch`] naming the tensor when its shape is not the one the
/// config gives or it holds a non-finite number; [`Error::TooLarge`] when the model or a file
/// would exceed the allocation limit; [`Error::Tokenizer`] when `tokenizer.json` is
/// unreadable, and [`Error::InvalidConfig`] when it has more ids than the model's vocabulary.
pub fn load<F: Float>(dir: impl AsRef<Path>) -> Result<Pretrained<F>> {
    let dir = dir.as_ref();
    let text = read_config_text(dir)?;
    let (family, config) = parse_config(&text)?;
    let config_json = serde_json::from_str(&text).map_err(|e| Error::Hf {
        file: CONFIG_FILE.into(),
        reason: format!("is not valid JSON: {e}"),
    })?;
    let shards = files::Shards::read(dir)?;
    let tensors = shards.index()?;
    let mut model = Gpt::<F>::new(config, &mut StdRng::seed_from_u64(0))?;
    let params = params_from_hf(family, &model, &tensors)?;
    model.import_params(&params)?;
    let tokenizer = if dir.join(TOKENIZER_FILE).is_file() {
        let tokenizer = Tokenizer::from_file(dir.join(TOKENIZER_FILE))?;
        let vocab = model.config().vocab_size;
        if tokenizer.vocab_size() > vocab {
            return Err(Error::InvalidConfig {
                layer: "hf::load",
                reason: format!(
                    "{TOKENIZER_FILE} has {} ids but the model's vocabulary is {vocab}",
                    tokenizer.vocab_size()
                ),
            });
        }
        Some(tokenizer)
    } else {
        None
    };
    Ok(Pretrained {
        model,
        family,
        tokenizer,
        config_json,
    })
}

/// The shape of the Hugging Face tensor `source` makes, from the model's parameter shapes.
fn hf_shape<F: Float>(model: &Gpt<F>, source: &Source) -> Result<Vec<usize>> {
    let shape_of = |name: &str| {
        model
            .param(name)
            .map(|p| p.value.shape().to_vec())
            .ok_or_else(|| Error::ParamMismatch {
                name: name.to_owned(),
                reason: "the model has no such parameter".into(),
            })
    };
    match source {
        Source::Same(name) => shape_of(name),
        Source::Transposed(name) => Ok(shape_of(name)?.into_iter().rev().collect()),
        Source::Fused(names) => {
            let mut shape = shape_of(&names[0])?;
            let last = shape.len() - 1;
            shape[last] = 0;
            for name in names {
                shape[last] += shape_of(name)?.last().copied().unwrap_or(0);
            }
            Ok(shape)
        }
    }
}

/// GPT-2's tensor-name prefix in `tensors`: `"transformer."` or none.
fn gpt2_prefix(tensors: &files::Tensors<'_>) -> &'static str {
    if tensors.get("wte.weight").is_some() && tensors.get("transformer.wte.weight").is_none() {
        ""
    } else {
        "transformer."
    }
}

/// The model's parameters from the folder's tensors, checked and converted.
fn params_from_hf<F: Float>(
    family: Family,
    model: &Gpt<F>,
    tensors: &files::Tensors<'_>,
) -> Result<ParamMap<F>> {
    let prefix = if family == Family::Gpt2 {
        gpt2_prefix(tensors)
    } else {
        ""
    };
    let maps = tensor_maps(family, model.config(), prefix);
    let mut used = HashSet::new();
    let mut params = ParamMap::new();
    for map in &maps {
        let expected = hf_shape(model, &map.source)?;
        let (file, view) = tensors.get(&map.hf).ok_or_else(|| Error::Hf {
            file: MODEL_FILE.into(),
            reason: format!(
                "tensor `{}` is missing (config.json's model has it, shape {expected:?})",
                map.hf
            ),
        })?;
        if view.shape() != expected.as_slice() {
            return Err(Error::ParamMismatch {
                name: map.hf.clone(),
                reason: format!(
                    "{file} stores shape {:?}, config.json gives {expected:?}",
                    view.shape()
                ),
            });
        }
        use safetensors::Dtype;
        if !matches!(
            view.dtype(),
            Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64
        ) {
            return Err(Error::Hf {
                file: (*file).to_owned(),
                reason: format!(
                    "tensor `{}` is {:?}; baregpt reads F32, F16, BF16 and F64",
                    map.hf,
                    view.dtype()
                ),
            });
        }
        crate::limits::check_alloc::<F>("hf::load", "a tensor", view.shape())?;
        let array =
            crate::checkpoint::decode::<F>(&map.hf, view.dtype(), view.shape(), view.data())?;
        match &map.source {
            Source::Same(name) => {
                params.insert(name.clone(), array);
            }
            Source::Transposed(name) => {
                let t = array.reversed_axes().as_standard_layout().into_owned();
                params.insert(name.clone(), t);
            }
            Source::Fused(names) => {
                let axis = Axis(array.ndim() - 1);
                let mut start = 0;
                for name in names {
                    let width = hf_shape(model, &Source::Same(name.clone()))?
                        .last()
                        .copied()
                        .unwrap_or(0);
                    let part = array.slice_axis(axis, (start..start + width).into());
                    params.insert(name.clone(), part.as_standard_layout().into_owned());
                    start += width;
                }
            }
        }
        used.insert(map.hf.as_str());
    }
    let tied = matches!(model.config().head, HeadKind::Tied { .. });
    if let Some((name, file)) = tensors
        .names()
        .into_iter()
        .find(|(name, _)| !used.contains(name) && !is_skippable(family, name, tied))
    {
        return Err(Error::Hf {
            file: file.to_owned(),
            reason: format!(
                "tensor `{name}` belongs to no parameter of config.json's {} model",
                family.architecture()
            ),
        });
    }
    Ok(params)
}

/// What [`hf_tensors`] reads of each parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// The parameters' values.
    Values,
    /// Their accumulated gradients.
    Grads,
}

/// The model's parameters (or their gradients) as the Hugging Face tensors of its family,
/// in `transformers`' order and layout (the names `save_pretrained` writes; a tied head has
/// no tensor of its own, and the embedding table's gradient holds both uses).
///
/// # Errors
/// As [`Family::of`]; [`Error::TooLarge`] when a fused tensor would exceed the allocation
/// limit.
pub fn hf_tensors<F: Float>(model: &Gpt<F>, which: Which) -> Result<Vec<(String, ArrayD<F>)>> {
    let family = Family::of(model.config())?;
    let view = |name: &str| {
        let p = model.param(name).ok_or_else(|| Error::ParamMismatch {
            name: name.to_owned(),
            reason: "the model has no such parameter".into(),
        })?;
        Ok(match which {
            Which::Values => p.value,
            Which::Grads => p.grad,
        })
    };
    tensor_maps(family, model.config(), "transformer.")
        .into_iter()
        .map(|map| {
            let array = match &map.source {
                Source::Same(name) => view(name)?.to_owned(),
                Source::Transposed(name) => view(name)?
                    .reversed_axes()
                    .as_standard_layout()
                    .into_owned(),
                Source::Fused(names) => {
                    crate::limits::check_alloc::<F>(
                        "hf",
                        "a fused tensor",
                        &hf_shape(model, &map.source)?,
                    )?;
                    let parts = names.iter().map(|n| view(n)).collect::<Result<Vec<_>>>()?;
                    let axis = Axis(parts[0].ndim() - 1);
                    ndarray::concatenate(axis, &parts).map_err(|e| Error::ParamMismatch {
                        name: map.hf.clone(),
                        reason: format!("cannot fuse {names:?}: {e}"),
                    })?
                }
            };
            Ok((map.hf, array))
        })
        .collect()
}

/// [`save_with`] in the model's own float type.
///
/// # Errors
/// As [`save_with`].
pub fn save<F: Float>(
    dir: impl AsRef<Path>,
    model: &Gpt<F>,
    tokenizer: Option<&Tokenizer>,
) -> Result<()> {
    save_with(dir, model, tokenizer, &SaveOptions::default())
}

/// Saves a GPT-2- or Llama-family model as a Hugging Face folder: `config.json`,
/// `model.safetensors` (parameters stored as `options.storage` says) and, when given,
/// `tokenizer.json`. `transformers.AutoModelForCausalLM.from_pretrained(dir)` loads it, and
/// [`load`] gives back the same parameters bit for bit (`Storage::Native`). `dir` is created
/// if needed; each file is written whole or not at all.
///
/// # Errors
/// As [`Family::of`] when the model is of neither family; [`Error::Hf`] when `dir` holds a
/// sharded checkpoint's index (which `transformers` would read instead of the new file);
/// [`Error::Checkpoint`] when a value is beyond `F16`'s range; [`Error::Io`] when a file
/// cannot be written.
pub fn save_with<F: Float>(
    dir: impl AsRef<Path>,
    model: &Gpt<F>,
    tokenizer: Option<&Tokenizer>,
    options: &SaveOptions,
) -> Result<()> {
    let dir = dir.as_ref();
    let storage = options.storage;
    let family = Family::of(model.config())?;
    if dir.join(INDEX_FILE).exists() {
        return Err(Error::Hf {
            file: INDEX_FILE.into(),
            reason: format!(
                "{} holds a sharded checkpoint, which transformers would load instead: save to \
                 another folder",
                dir.display()
            ),
        });
    }
    let dtype = match (storage, F::NAME) {
        (Storage::F16, _) => "float16",
        (Storage::Bf16, _) => "bfloat16",
        (_, "f64") => "float64",
        _ => "float32",
    };
    let tensors = hf_tensors(model, Which::Values)?
        .into_iter()
        .map(|(name, array)| Encoded::new(name, array.shape(), array.iter(), storage))
        .collect::<Result<Vec<_>>>()?;
    let meta = [("format".to_owned(), "pt".to_owned())]
        .into_iter()
        .collect();
    let bytes = serialize(&tensors, meta)?;
    let mut config = serde_json::to_string_pretty(&config_json(
        family,
        model.config(),
        dtype,
        options.base_config.as_ref(),
    ))
    .map_err(|e| Error::Hf {
        file: CONFIG_FILE.into(),
        reason: format!("cannot be written: {e}"),
    })?;
    config.push('\n');
    std::fs::create_dir_all(dir).map_err(|e| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("cannot create {}: {e}", dir.display()),
        ))
    })?;
    write_atomically(&dir.join(MODEL_FILE), &bytes)?;
    write_atomically(&dir.join(CONFIG_FILE), config.as_bytes())?;
    if let Some(tokenizer) = tokenizer {
        tokenizer.save(dir.join(TOKENIZER_FILE))?;
    }
    Ok(())
}
