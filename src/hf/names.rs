//! Tensor names and layouts: each Hugging Face tensor of a family, and the baregpt
//! parameters it is made of.
//!
//! | baregpt | GPT-2 (`transformer.` prefix) | Llama |
//! |---|---|---|
//! | `embed.tok (V, C)` | `wte.weight (V, C)` | `model.embed_tokens.weight (V, C)` |
//! | `embed.pos (T, C)` | `wpe.weight (T, C)` | — (rotary) |
//! | `blocks.{i}.ln1.gamma, .beta` | `h.{i}.ln_1.weight, .bias` | `model.layers.{i}.input_layernorm.weight` |
//! | `blocks.{i}.attn.w_q, w_k, w_v (C, ·)` | `h.{i}.attn.c_attn.weight (C, 3C)`: side by side | `…self_attn.{q,k,v}_proj.weight (·, C)`: transposed |
//! | `blocks.{i}.attn.b_q, b_k, b_v` | `h.{i}.attn.c_attn.bias (3C)` | `…self_attn.{q,k,v}_proj.bias` (`attention_bias`) |
//! | `blocks.{i}.attn.w_o, b_o` | `h.{i}.attn.c_proj.weight (C, C), .bias` | `…self_attn.o_proj.weight`: transposed |
//! | `blocks.{i}.ln2.*` | `h.{i}.ln_2.*` | `…post_attention_layernorm.weight` |
//! | `blocks.{i}.mlp.fc.w, .b / proj.w, .b` | `h.{i}.mlp.c_fc.*, c_proj.*` (`Conv1D`: as is) | — |
//! | `blocks.{i}.mlp.w_gate, w_up, w_down` | — | `…mlp.{gate,up,down}_proj.weight`: transposed |
//! | `ln_f.*` | `ln_f.*` | `model.norm.weight` |
//! | `head.w (C, V)` (untied) | `lm_head.weight (V, C)` | `lm_head.weight (V, C)` |
//!
//! GPT-2's `Conv1D` stores `(in, out)` as baregpt does; `nn.Linear` stores `(out, in)`. A tied
//! head has no tensor of its own: `transformers` ties `lm_head.weight` to the embedding table.

use super::Family;
use crate::GptConfig;
use crate::gpt::parts::{AttentionKind, HeadKind};

/// How one Hugging Face tensor is made of baregpt parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// One parameter, as it is.
    Same(String),
    /// One matrix parameter, transposed (`nn.Linear`'s `(out, in)` against baregpt's
    /// `(in, out)`).
    Transposed(String),
    /// Parameters side by side along their last axis (GPT-2's fused `c_attn`: queries, keys,
    /// values).
    Fused(Vec<String>),
}

/// One Hugging Face tensor of a model and what it is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorMap {
    /// Its name in the Hugging Face checkpoint.
    pub hf: String,
    /// The baregpt parameters it holds.
    pub source: Source,
}

fn same(hf: String, ours: String) -> TensorMap {
    TensorMap {
        hf,
        source: Source::Same(ours),
    }
}

fn transposed(hf: String, ours: String) -> TensorMap {
    TensorMap {
        hf,
        source: Source::Transposed(ours),
    }
}

/// Every tensor of the Hugging Face checkpoint of a `family` model of `config`, in the
/// order `transformers` lists its parameters. `gpt2_prefix` is GPT-2's `"transformer."`
/// (what `save_pretrained` writes) or `""` (the original `gpt2` upload's names).
pub fn tensor_maps(family: Family, config: &GptConfig, gpt2_prefix: &str) -> Vec<TensorMap> {
    let mut out = Vec::new();
    let untied = matches!(config.head, HeadKind::Linear { .. });
    match family {
        Family::Gpt2 => {
            let p = gpt2_prefix;
            out.push(same(format!("{p}wte.weight"), "embed.tok".into()));
            out.push(same(format!("{p}wpe.weight"), "embed.pos".into()));
            for i in 0..config.n_layers {
                let (h, b) = (format!("{p}h.{i}"), format!("blocks.{i}"));
                out.push(same(format!("{h}.ln_1.weight"), format!("{b}.ln1.gamma")));
                out.push(same(format!("{h}.ln_1.bias"), format!("{b}.ln1.beta")));
                let fused = |kind: &str| {
                    Source::Fused(
                        ["q", "k", "v"]
                            .map(|x| format!("{b}.attn.{kind}_{x}"))
                            .to_vec(),
                    )
                };
                out.push(TensorMap {
                    hf: format!("{h}.attn.c_attn.weight"),
                    source: fused("w"),
                });
                out.push(TensorMap {
                    hf: format!("{h}.attn.c_attn.bias"),
                    source: fused("b"),
                });
                out.push(same(
                    format!("{h}.attn.c_proj.weight"),
                    format!("{b}.attn.w_o"),
                ));
                out.push(same(
                    format!("{h}.attn.c_proj.bias"),
                    format!("{b}.attn.b_o"),
                ));
                out.push(same(format!("{h}.ln_2.weight"), format!("{b}.ln2.gamma")));
                out.push(same(format!("{h}.ln_2.bias"), format!("{b}.ln2.beta")));
                for (theirs, ours) in [("c_fc", "fc"), ("c_proj", "proj")] {
                    out.push(same(
                        format!("{h}.mlp.{theirs}.weight"),
                        format!("{b}.mlp.{ours}.w"),
                    ));
                    out.push(same(
                        format!("{h}.mlp.{theirs}.bias"),
                        format!("{b}.mlp.{ours}.b"),
                    ));
                }
            }
            out.push(same(format!("{p}ln_f.weight"), "ln_f.gamma".into()));
            out.push(same(format!("{p}ln_f.bias"), "ln_f.beta".into()));
        }
        Family::Llama => {
            out.push(same("model.embed_tokens.weight".into(), "embed.tok".into()));
            let bias = matches!(
                config.attention,
                AttentionKind::GroupedQuery { bias: true, .. }
                    | AttentionKind::MultiHead { bias: true }
            );
            for i in 0..config.n_layers {
                let (h, b) = (format!("model.layers.{i}"), format!("blocks.{i}"));
                out.push(same(
                    format!("{h}.input_layernorm.weight"),
                    format!("{b}.ln1.gamma"),
                ));
                for x in ["q", "k", "v", "o"] {
                    out.push(transposed(
                        format!("{h}.self_attn.{x}_proj.weight"),
                        format!("{b}.attn.w_{x}"),
                    ));
                    if bias {
                        out.push(same(
                            format!("{h}.self_attn.{x}_proj.bias"),
                            format!("{b}.attn.b_{x}"),
                        ));
                    }
                }
                out.push(same(
                    format!("{h}.post_attention_layernorm.weight"),
                    format!("{b}.ln2.gamma"),
                ));
                for x in ["gate", "up", "down"] {
                    out.push(transposed(
                        format!("{h}.mlp.{x}_proj.weight"),
                        format!("{b}.mlp.w_{x}"),
                    ));
                }
            }
            out.push(same("model.norm.weight".into(), "ln_f.gamma".into()));
        }
    }
    if untied {
        out.push(transposed("lm_head.weight".into(), "head.w".into()));
    }
    out
}

/// Whether a tensor of a Hugging Face file that maps to no parameter may be skipped:
/// buffers older `transformers` versions saved (GPT-2's causal masks `attn.bias` and
/// `attn.masked_bias`, Llama's `rotary_emb.inv_freq`), and a tied head's copy of the
/// embedding table.
pub fn is_skippable(family: Family, name: &str, tied: bool) -> bool {
    match family {
        Family::Gpt2 => {
            name.ends_with(".attn.bias") && !name.ends_with("c_attn.bias")
                || name.ends_with(".attn.masked_bias")
                || tied && name == "lm_head.weight"
        }
        Family::Llama => name.ends_with("rotary_emb.inv_freq") || tied && name == "lm_head.weight",
    }
}
