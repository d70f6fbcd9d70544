//! `config.json` ↔ [`GptConfig`]: which Hugging Face architecture a config is, its fields
//! mapped both ways, and every option baregpt does not implement refused by name.

use serde_json::{Map, Value, json};

use crate::gpt::families::{GPT2_LN_EPS, LLAMA_RMS_EPS};
use crate::gpt::parts::{AttentionKind, HeadKind, MlpKind, NormKind, PositionKind};
use crate::kernels::rope::DEFAULT_ROPE_THETA;
use crate::{DropoutConfig, Error, GptConfig, Result};

const FILE: &str = "config.json";

/// The Hugging Face architectures baregpt reads and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Family {
    /// `GPT2LMHeadModel` (`model_type` `"gpt2"`): learned positions, LayerNorm with biases,
    /// biased attention with a fused `c_attn`, a tanh-GELU MLP, the head tied to `wte`.
    Gpt2,
    /// `LlamaForCausalLM` (`model_type` `"llama"`): RMSNorm, rotary positions, grouped-query
    /// attention, a SwiGLU MLP, an untied (or tied) head without bias.
    Llama,
}

impl Family {
    /// The `model_type` of `config.json`.
    pub fn model_type(self) -> &'static str {
        match self {
            Self::Gpt2 => "gpt2",
            Self::Llama => "llama",
        }
    }

    /// The `architectures` entry of `config.json` (the `transformers` class).
    pub fn architecture(self) -> &'static str {
        match self {
            Self::Gpt2 => "GPT2LMHeadModel",
            Self::Llama => "LlamaForCausalLM",
        }
    }

    /// The family whose Hugging Face model computes what a model of `config` computes.
    ///
    /// # Errors
    /// [`Error::Unsupported`] naming the first [`GptConfig`] field that neither family has
    /// (for example rotary positions with LayerNorm, or a biased head).
    pub fn of(config: &GptConfig) -> Result<Self> {
        let refuse = |field: &str, value: String, reason: &str| Error::Unsupported {
            field: format!("GptConfig::{field}"),
            value,
            reason: reason.to_owned(),
        };
        let family = match (config.norm, config.mlp, config.positions) {
            (NormKind::LayerNorm { .. }, MlpKind::Gelu, PositionKind::Learned) => Self::Gpt2,
            (NormKind::RmsNorm { .. }, MlpKind::SwiGlu, PositionKind::Rotary { .. }) => Self::Llama,
            (norm, mlp, positions) => {
                return Err(refuse(
                    "norm, mlp, positions",
                    format!("{norm:?}, {mlp:?}, {positions:?}"),
                    "GPT-2 is LayerNorm, Gelu and Learned; Llama is RmsNorm, SwiGlu and Rotary",
                ));
            }
        };
        if !config.final_norm {
            return Err(refuse(
                "final_norm",
                "false".into(),
                "both families end with a final norm",
            ));
        }
        if matches!(
            config.head,
            HeadKind::Linear { bias: true } | HeadKind::Tied { bias: true }
        ) {
            return Err(refuse(
                "head",
                format!("{:?}", config.head),
                "both families' heads have no bias",
            ));
        }
        match (family, config.attention) {
            (Self::Gpt2, AttentionKind::MultiHead { bias: true }) => {}
            (Self::Gpt2, other) => {
                return Err(refuse(
                    "attention",
                    format!("{other:?}"),
                    "GPT-2's attention is AttentionKind::MultiHead { bias: true }",
                ));
            }
            (Self::Llama, _) => {}
        }
        Ok(family)
    }
}

/// The JSON text of a value, for error messages.
fn shown(value: Option<&Value>) -> String {
    value.map_or_else(|| "missing".to_owned(), Value::to_string)
}

fn field_error(field: &str, reason: impl Into<String>) -> Error {
    Error::Hf {
        file: FILE.to_owned(),
        reason: format!("`{field}` {}", reason.into()),
    }
}

/// A required positive integer field (the first of `names` present).
fn size(obj: &Map<String, Value>, names: &[&str]) -> Result<usize> {
    let (name, value) = names
        .iter()
        .find_map(|n| obj.get(*n).filter(|v| !v.is_null()).map(|v| (*n, v)))
        .ok_or_else(|| field_error(names[0], "is missing"))?;
    match value.as_u64().and_then(|n| usize::try_from(n).ok()) {
        Some(n) if n > 0 => Ok(n),
        _ => Err(field_error(
            name,
            format!("must be a positive integer, found {value}"),
        )),
    }
}

/// An optional positive integer field.
fn optional_size(obj: &Map<String, Value>, name: &str) -> Result<Option<usize>> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => size(obj, &[name]).map(Some),
    }
}

/// An optional number field, `default` when absent.
fn number(obj: &Map<String, Value>, name: &str, default: f64) -> Result<f64> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .ok_or_else(|| field_error(name, format!("must be a finite number, found {v}"))),
    }
}

/// An optional boolean field, `default` when absent.
fn flag(obj: &Map<String, Value>, name: &str, default: bool) -> Result<bool> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_bool()
            .ok_or_else(|| field_error(name, format!("must be true or false, found {v}"))),
    }
}

/// Refuses `name` unless it is absent or one of `allowed` (compared as JSON values).
fn require(obj: &Map<String, Value>, name: &str, allowed: &[Value], reason: &str) -> Result<()> {
    match obj.get(name) {
        None => Ok(()),
        Some(v) if allowed.contains(v) => Ok(()),
        Some(v) => Err(Error::Unsupported {
            field: name.to_owned(),
            value: v.to_string(),
            reason: reason.to_owned(),
        }),
    }
}

/// Parses `config.json`'s text into the family and the [`GptConfig`] of its model.
///
/// # Errors
/// [`Error::Hf`] when the text is not a JSON object, `model_type` is missing or a size is
/// missing or malformed; [`Error::Unsupported`] naming the field of any option baregpt does
/// not implement (another `model_type`, activation, rope scaling, cross-attention, MLP
/// biases, a `head_dim` other than `hidden_size / num_attention_heads`, …);
/// [`Error::InvalidConfig`] when the sizes do not make a valid model.
pub fn parse_config(text: &str) -> Result<(Family, GptConfig)> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| field_error("(file)", format!("is not valid JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| field_error("(file)", "is not a JSON object"))?;
    let model_type = obj.get("model_type").and_then(Value::as_str);
    let (family, config) = match model_type {
        Some("gpt2") => (Family::Gpt2, gpt2_config(obj)?),
        Some("llama") => (Family::Llama, llama_config(obj)?),
        _ => {
            return Err(Error::Unsupported {
                field: "model_type".into(),
                value: shown(obj.get("model_type")),
                reason: "baregpt reads \"gpt2\" and \"llama\"".into(),
            });
        }
    };
    if let Some(list) = obj.get("architectures").filter(|v| !v.is_null()) {
        let causal = [
            family.architecture(),
            &family
                .architecture()
                .replace("ForCausalLM", "Model")
                .replace("LMHeadModel", "Model"),
        ];
        let ok = list.as_array().is_some_and(|a| {
            a.iter()
                .any(|n| n.as_str().is_some_and(|n| causal.contains(&n)))
        });
        if !ok {
            return Err(Error::Unsupported {
                field: "architectures".into(),
                value: list.to_string(),
                reason: format!(
                    "a {} folder holds a {}",
                    model_type.unwrap_or(""),
                    family.architecture()
                ),
            });
        }
    }
    config.validate()?;
    Ok((family, config))
}

fn gpt2_config(obj: &Map<String, Value>) -> Result<GptConfig> {
    let d_model = size(obj, &["n_embd"])?;
    require(
        obj,
        "activation_function",
        &[
            json!("gelu_new"),
            json!("gelu_pytorch_tanh"),
            json!("gelu_fast"),
        ],
        "baregpt's GELU is the tanh approximation (gelu_new)",
    )?;
    require(
        obj,
        "scale_attn_weights",
        &[json!(true)],
        "scores are scaled by 1/√D",
    )?;
    require(
        obj,
        "scale_attn_by_inverse_layer_idx",
        &[json!(false)],
        "scores are not scaled by the layer index",
    )?;
    require(
        obj,
        "add_cross_attention",
        &[json!(false)],
        "decoder-only models",
    )?;
    let tied = flag(obj, "tie_word_embeddings", true)?;
    let context = size(obj, &["n_positions", "n_ctx"])?;
    let config = GptConfig {
        mlp_hidden: optional_size(obj, "n_inner")?.unwrap_or(d_model.saturating_mul(4)),
        norm: NormKind::LayerNorm {
            eps: number(obj, "layer_norm_epsilon", GPT2_LN_EPS)?,
        },
        head: if tied {
            HeadKind::Tied { bias: false }
        } else {
            HeadKind::Linear { bias: false }
        },
        dropout: DropoutConfig {
            embed: number(obj, "embd_pdrop", 0.1)?,
            attention: number(obj, "attn_pdrop", 0.1)?,
            residual: number(obj, "resid_pdrop", 0.1)?,
        },
        ..GptConfig::gpt2(
            size(obj, &["vocab_size"])?,
            d_model,
            size(obj, &["n_head"])?,
            size(obj, &["n_layer"])?,
            context,
        )
    };
    Ok(config)
}

/// The rotary base of a Llama config: `rope_parameters` (transformers 5) or `rope_theta`
/// (earlier), refusing any scaled variant.
fn rope_theta(obj: &Map<String, Value>) -> Result<f64> {
    let unscaled = "only unscaled rotary positions (rope_type \"default\")";
    for name in ["rope_scaling", "rope_parameters"] {
        match obj.get(name) {
            None | Some(Value::Null) => {}
            Some(Value::Object(p)) => {
                let kind = p.get("rope_type").or_else(|| p.get("type"));
                if !matches!(kind.and_then(Value::as_str), None | Some("default")) {
                    return Err(Error::Unsupported {
                        field: format!("{name}.rope_type"),
                        value: shown(kind),
                        reason: unscaled.into(),
                    });
                }
                if p.contains_key("rope_theta") {
                    return number(p, "rope_theta", DEFAULT_ROPE_THETA);
                }
            }
            Some(other) => {
                return Err(Error::Unsupported {
                    field: name.into(),
                    value: other.to_string(),
                    reason: unscaled.into(),
                });
            }
        }
    }
    number(obj, "rope_theta", DEFAULT_ROPE_THETA)
}

fn llama_config(obj: &Map<String, Value>) -> Result<GptConfig> {
    let d_model = size(obj, &["hidden_size"])?;
    let n_heads = size(obj, &["num_attention_heads"])?;
    require(
        obj,
        "hidden_act",
        &[json!("silu")],
        "the SwiGLU MLP gates with SiLU",
    )?;
    require(
        obj,
        "mlp_bias",
        &[json!(false)],
        "the SwiGLU MLP has no biases",
    )?;
    if let Some(head_dim) = optional_size(obj, "head_dim")?
        && head_dim.checked_mul(n_heads) != Some(d_model)
    {
        return Err(Error::Unsupported {
            field: "head_dim".into(),
            value: head_dim.to_string(),
            reason: format!(
                "heads are hidden_size / num_attention_heads = {d_model} / {n_heads} wide"
            ),
        });
    }
    let n_kv_heads = optional_size(obj, "num_key_value_heads")?.unwrap_or(n_heads);
    let bias = flag(obj, "attention_bias", false)?;
    let tied = flag(obj, "tie_word_embeddings", false)?;
    let config = GptConfig {
        mlp_hidden: size(obj, &["intermediate_size"])?,
        norm: NormKind::RmsNorm {
            eps: number(obj, "rms_norm_eps", LLAMA_RMS_EPS)?,
        },
        attention: AttentionKind::GroupedQuery { n_kv_heads, bias },
        positions: PositionKind::Rotary {
            theta: rope_theta(obj)?,
        },
        head: if tied {
            HeadKind::Tied { bias: false }
        } else {
            HeadKind::Linear { bias: false }
        },
        dropout: DropoutConfig {
            attention: number(obj, "attention_dropout", 0.0)?,
            ..DropoutConfig::default()
        },
        ..GptConfig::llama(
            size(obj, &["vocab_size"])?,
            d_model,
            n_heads,
            n_kv_heads,
            size(obj, &["num_hidden_layers"])?,
            size(obj, &["max_position_embeddings"])?,
        )
    };
    Ok(config)
}

/// The `config.json` of a model of `config` in `family` (the keys `transformers` 5
/// `save_pretrained` writes that describe the model, sorted), for parameters stored as
/// `dtype` (`"float32"`, `"float64"`, `"float16"` or `"bfloat16"`).
///
/// `base` is the `config.json` a model was loaded from: its other keys (token ids such as
/// `bos_token_id`, `transformers_version`, task settings) are kept, and every key written
/// here replaces its value. Legacy keys that would contradict the new ones (`rope_theta`,
/// `rope_scaling`, `torch_dtype`, `n_ctx`) are dropped.
pub fn config_json(family: Family, config: &GptConfig, dtype: &str, base: Option<&Value>) -> Value {
    let c = config;
    let tied = matches!(c.head, HeadKind::Tied { .. });
    let mut obj = match family {
        Family::Gpt2 => {
            let eps = match c.norm {
                NormKind::LayerNorm { eps } | NormKind::RmsNorm { eps } => eps,
            };
            json!({
                "activation_function": "gelu_new",
                "add_cross_attention": false,
                "attn_pdrop": c.dropout.attention,
                "embd_pdrop": c.dropout.embed,
                "initializer_range": 0.02,
                "layer_norm_epsilon": eps,
                "n_embd": c.d_model,
                "n_head": c.n_heads,
                "n_inner": c.mlp_hidden,
                "n_layer": c.n_layers,
                "n_positions": c.context,
                "reorder_and_upcast_attn": false,
                "resid_pdrop": c.dropout.residual,
                "scale_attn_by_inverse_layer_idx": false,
                "scale_attn_weights": true,
            })
        }
        Family::Llama => {
            let eps = match c.norm {
                NormKind::LayerNorm { eps } | NormKind::RmsNorm { eps } => eps,
            };
            let (n_kv_heads, bias) = match c.attention {
                AttentionKind::GroupedQuery { n_kv_heads, bias } => (n_kv_heads, bias),
                AttentionKind::MultiHead { bias } => (c.n_heads, bias),
            };
            let theta = match c.positions {
                PositionKind::Rotary { theta } => theta,
                PositionKind::Learned => DEFAULT_ROPE_THETA,
            };
            json!({
                "attention_bias": bias,
                "attention_dropout": c.dropout.attention,
                "head_dim": c.d_model / c.n_heads,
                "hidden_act": "silu",
                "hidden_size": c.d_model,
                "initializer_range": 0.02,
                "intermediate_size": c.mlp_hidden,
                "max_position_embeddings": c.context,
                "mlp_bias": false,
                "num_attention_heads": c.n_heads,
                "num_hidden_layers": c.n_layers,
                "num_key_value_heads": n_kv_heads,
                "pretraining_tp": 1,
                "rms_norm_eps": eps,
                "rope_parameters": { "rope_theta": theta, "rope_type": "default" },
            })
        }
    };
    if let Some(map) = obj.as_object_mut() {
        map.insert("architectures".into(), json!([family.architecture()]));
        map.insert("dtype".into(), json!(dtype));
        map.insert("model_type".into(), json!(family.model_type()));
        map.insert("tie_word_embeddings".into(), json!(tied));
        map.insert("use_cache".into(), json!(true));
        map.insert("vocab_size".into(), json!(c.vocab_size));
        if let Some(Value::Object(base)) = base {
            for (key, value) in base {
                let legacy = ["rope_theta", "rope_scaling", "torch_dtype", "n_ctx"];
                if !map.contains_key(key) && !legacy.contains(&key.as_str()) {
                    map.insert(key.clone(), value.clone());
                }
            }
        }
    }
    obj
}
