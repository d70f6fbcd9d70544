//! The parts a [`Gpt`](super::Gpt) is assembled from, one enum per slot: each variant is a
//! choice of layer, and owns how that layer is built, how many parameters it has and how it
//! is written into a checkpoint's metadata.
//!
//! Adding a part means adding its kernel, its layer, and one variant here (its arm in each
//! `match` of its enum); nothing else changes. See `docs/architecture.md`, "Adding a part".

use super::Head;
use super::meta::Meta;
use crate::kernels::rope::DEFAULT_ROPE_THETA;
use crate::layers::{
    Attention, AttentionConfig, Embedding, LayerNorm, Linear, Mlp, RmsNorm, SwiGlu, TiedHead,
};
use crate::{Error, Float, Layer, Result};
use rand::Rng;

const CONFIG: &str = "GptConfig";

/// `a · b + c` without overflow.
fn mul_add(a: usize, b: usize, c: usize) -> Option<usize> {
    a.checked_mul(b)?.checked_add(c)
}

fn unknown(key: &str, value: &str, known: &str) -> Error {
    Error::Checkpoint(format!(
        "metadata `config.{key}` = {value:?} is not a part this version implements ({known})"
    ))
}

/// The normalisation of each block's two branches (`ln1`, `ln2`) and of `ln_f`.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum NormKind {
    /// [`LayerNorm`]: `gamma ⊙ (x − μ)/√(σ² + eps) + beta`, parameters `gamma`, `beta`.
    LayerNorm {
        /// Added to the variance.
        eps: f64,
    },
    /// [`RmsNorm`]: `gamma ⊙ x/√(mean(x²) + eps)` (Llama's), one parameter `gamma`.
    RmsNorm {
        /// Added to the mean square.
        eps: f64,
    },
}

impl Default for NormKind {
    /// LayerNorm with `eps = 1e-5`, as the original.
    fn default() -> Self {
        Self::LayerNorm {
            eps: LayerNorm::<f64>::DEFAULT_EPS,
        }
    }
}

impl NormKind {
    /// The layer, for width `c`.
    ///
    /// # Errors
    /// The layer's constructor's (an invalid `eps`, a zero width).
    pub fn build<F: Float>(&self, c: usize) -> Result<Box<dyn Layer<F>>> {
        match *self {
            Self::LayerNorm { eps } => Ok(Box::new(LayerNorm::with_eps(c, eps)?)),
            Self::RmsNorm { eps } => Ok(Box::new(RmsNorm::with_eps(c, eps)?)),
        }
    }

    /// The layer's parameter count at width `c`, if it fits in `usize`.
    pub fn param_count(&self, c: usize) -> Option<usize> {
        match self {
            Self::LayerNorm { .. } => c.checked_mul(2),
            Self::RmsNorm { .. } => Some(c),
        }
    }

    pub(super) fn validate(&self) -> Result<()> {
        match *self {
            Self::LayerNorm { eps } | Self::RmsNorm { eps } if !(eps.is_finite() && eps >= 0.0) => {
                Err(Error::InvalidConfig {
                    layer: CONFIG,
                    reason: format!("norm eps {eps} is not finite and non-negative"),
                })
            }
            Self::LayerNorm { .. } | Self::RmsNorm { .. } => Ok(()),
        }
    }

    pub(super) fn encode(&self, meta: &mut Vec<(&'static str, String)>) {
        match self {
            Self::LayerNorm { eps } => {
                meta.push(("norm", "layer_norm".into()));
                meta.push(("norm_eps", eps.to_string()));
            }
            Self::RmsNorm { eps } => {
                meta.push(("norm", "rms_norm".into()));
                meta.push(("norm_eps", eps.to_string()));
            }
        }
    }

    pub(super) fn decode(meta: &Meta<'_>) -> Result<Self> {
        match meta.text("norm")? {
            None | Some("layer_norm") => Ok(Self::LayerNorm {
                eps: meta
                    .parse("norm_eps")?
                    .unwrap_or(LayerNorm::<f64>::DEFAULT_EPS),
            }),
            Some("rms_norm") => Ok(Self::RmsNorm {
                eps: meta
                    .parse("norm_eps")?
                    .unwrap_or(RmsNorm::<f64>::DEFAULT_EPS),
            }),
            Some(other) => Err(unknown("norm", other, "layer_norm, rms_norm")),
        }
    }
}

/// The sequence mixer of each block (`attn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttentionKind {
    /// [`Attention`]: causal multi-head attention with `n_heads` heads and four `(C, C)`
    /// projections `w_q`, `w_k`, `w_v`, `w_o`.
    MultiHead {
        /// Whether the projections have biases `b_q`, `b_k`, `b_v`, `b_o` (GPT-2 has them).
        bias: bool,
    },
    /// [`Attention`] with `n_kv_heads` key/value heads shared by the `n_heads` query heads:
    /// `w_k`, `w_v` are `(C, n_kv_heads·D)`. One key/value head is multi-query attention.
    GroupedQuery {
        /// Key/value heads; must divide `n_heads`.
        n_kv_heads: usize,
        /// Whether the projections have biases.
        bias: bool,
    },
}

impl Default for AttentionKind {
    /// Multi-head attention without biases, as the original.
    fn default() -> Self {
        Self::MultiHead { bias: false }
    }
}

impl AttentionKind {
    /// The layer's settings for `n_heads` query heads and rotary base `rope_theta` (if any).
    pub fn layer_config(&self, n_heads: usize, rope_theta: Option<f64>) -> AttentionConfig {
        let config = match *self {
            Self::MultiHead { bias } => AttentionConfig::new(n_heads).with_bias(bias),
            Self::GroupedQuery { n_kv_heads, bias } => AttentionConfig::new(n_heads)
                .kv_heads(n_kv_heads)
                .with_bias(bias),
        };
        AttentionConfig {
            rope_theta,
            ..config
        }
    }

    /// The layer, for width `c`, `n_heads` heads and rotary embeddings of base `rope_theta`
    /// (none when `None`), weights drawn from `rng`.
    ///
    /// # Errors
    /// The layer's constructor's (heads not dividing the width or key/value heads not
    /// dividing the heads, an odd head size with rotary embeddings, a zero size).
    pub fn build<F: Float, R: Rng + ?Sized>(
        &self,
        c: usize,
        n_heads: usize,
        rope_theta: Option<f64>,
        rng: &mut R,
    ) -> Result<Box<dyn Layer<F>>> {
        let config = self.layer_config(n_heads, rope_theta);
        Ok(Box::new(Attention::with_config(c, config, rng)?))
    }

    /// The layer's parameter count at width `c` with `n_heads` heads, if it fits in `usize`
    /// (`None` also when `n_heads` is zero).
    pub fn param_count(&self, c: usize, n_heads: usize) -> Option<usize> {
        let (n_kv_heads, bias) = match *self {
            Self::MultiHead { bias } => (n_heads, bias),
            Self::GroupedQuery { n_kv_heads, bias } => (n_kv_heads, bias),
        };
        // w_q, w_o: C·C each; w_k, w_v: C·C_kv each; biases C + 2·C_kv + C.
        let c_kv = c.checked_div(n_heads)?.checked_mul(n_kv_heads)?;
        let widths = c.checked_mul(2)?.checked_add(c_kv.checked_mul(2)?)?;
        mul_add(c, widths, if bias { widths } else { 0 })
    }

    pub(super) fn validate(&self, n_heads: usize) -> Result<()> {
        match *self {
            Self::GroupedQuery { n_kv_heads, .. }
                if n_kv_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) =>
            {
                Err(Error::InvalidConfig {
                    layer: CONFIG,
                    reason: format!("n_kv_heads {n_kv_heads} does not divide n_heads {n_heads}"),
                })
            }
            Self::MultiHead { .. } | Self::GroupedQuery { .. } => Ok(()),
        }
    }

    pub(super) fn encode(&self, meta: &mut Vec<(&'static str, String)>) {
        match self {
            Self::MultiHead { bias } => {
                meta.push(("attention", "multi_head".into()));
                meta.push(("attention_bias", bias.to_string()));
            }
            Self::GroupedQuery { n_kv_heads, bias } => {
                meta.push(("attention", "grouped_query".into()));
                meta.push(("attention_kv_heads", n_kv_heads.to_string()));
                meta.push(("attention_bias", bias.to_string()));
            }
        }
    }

    pub(super) fn decode(meta: &Meta<'_>) -> Result<Self> {
        // Checkpoints written before biases existed have no `attention_bias`: none.
        let bias = meta.parse("attention_bias")?.unwrap_or(false);
        match meta.text("attention")? {
            None | Some("multi_head") => Ok(Self::MultiHead { bias }),
            Some("grouped_query") => Ok(Self::GroupedQuery {
                n_kv_heads: meta.require("attention_kv_heads")?,
                bias,
            }),
            Some(other) => Err(unknown("attention", other, "multi_head, grouped_query")),
        }
    }
}

/// The position-wise network of each block (`mlp`), of hidden width
/// [`GptConfig::mlp_hidden`](super::GptConfig::mlp_hidden).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum MlpKind {
    /// [`Mlp`]: `proj(gelu(fc(x)))`, both linears with bias.
    #[default]
    Gelu,
    /// [`SwiGlu`]: `(silu(x·w_gate) ⊙ (x·w_up))·w_down` (Llama's), no biases.
    SwiGlu,
}

impl MlpKind {
    /// The layer, for width `c` and hidden width `hidden`, weights drawn from `rng`.
    ///
    /// # Errors
    /// The layer's constructor's (a zero size, a weight too large).
    pub fn build<F: Float, R: Rng + ?Sized>(
        &self,
        c: usize,
        hidden: usize,
        rng: &mut R,
    ) -> Result<Box<dyn Layer<F>>> {
        match self {
            Self::Gelu => Ok(Box::new(Mlp::new(c, hidden, rng)?)),
            Self::SwiGlu => Ok(Box::new(SwiGlu::new(c, hidden, rng)?)),
        }
    }

    /// The layer's parameter count, if it fits in `usize`.
    pub fn param_count(&self, c: usize, hidden: usize) -> Option<usize> {
        match self {
            // fc: C·H + H, proj: H·C + C
            Self::Gelu => mul_add(c, hidden, hidden)?.checked_add(mul_add(hidden, c, c)?),
            // w_gate, w_up: C·H each, w_down: H·C
            Self::SwiGlu => c.checked_mul(hidden)?.checked_mul(3),
        }
    }

    pub(super) fn encode(&self, meta: &mut Vec<(&'static str, String)>) {
        match self {
            Self::Gelu => meta.push(("mlp", "gelu".into())),
            Self::SwiGlu => meta.push(("mlp", "swiglu".into())),
        }
    }

    pub(super) fn decode(meta: &Meta<'_>) -> Result<Self> {
        match meta.text("mlp")? {
            None | Some("gelu") => Ok(Self::Gelu),
            Some("swiglu") => Ok(Self::SwiGlu),
            Some(other) => Err(unknown("mlp", other, "gelu, swiglu")),
        }
    }
}

/// How positions enter the model.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub enum PositionKind {
    /// A learned table `embed.pos (context, C)` added to the token embeddings.
    #[default]
    Learned,
    /// Rotary position embeddings (RoPE, Hugging Face Llama's `rotate_half` convention):
    /// every attention layer rotates its queries and keys by angles `p·θ^(−2i/D)`; the
    /// embedding is the token table alone and there are no position parameters. The head
    /// size `D` must be even.
    Rotary {
        /// The base of the frequencies (`rope_theta`; Hugging Face's default is 10000).
        theta: f64,
    },
}

impl PositionKind {
    /// Rotary embeddings with Hugging Face's default base, `theta = 10000`.
    pub fn rotary() -> Self {
        Self::Rotary {
            theta: DEFAULT_ROPE_THETA,
        }
    }

    /// The parameter count of the position encoding, if it fits in `usize`.
    pub fn param_count(&self, context: usize, c: usize) -> Option<usize> {
        match self {
            Self::Learned => context.checked_mul(c),
            Self::Rotary { .. } => Some(0),
        }
    }

    /// The rotary base the attention layers rotate with, or `None` when positions are not
    /// rotary.
    pub fn rope_theta(&self) -> Option<f64> {
        match *self {
            Self::Learned => None,
            Self::Rotary { theta } => Some(theta),
        }
    }

    /// The embedding layer: token and position tables ([`Embedding::new`]) for learned
    /// positions, the token table alone ([`Embedding::token_only`]) for rotary ones.
    ///
    /// # Errors
    /// The layer's constructor's.
    pub fn build_embedding<F: Float, R: Rng + ?Sized>(
        &self,
        vocab_size: usize,
        c: usize,
        context: usize,
        rng: &mut R,
    ) -> Result<Embedding<F>> {
        match self {
            Self::Learned => Embedding::new(vocab_size, c, context, rng),
            Self::Rotary { .. } => Embedding::token_only(vocab_size, c, context, rng),
        }
    }

    pub(super) fn validate(&self, d_model: usize, n_heads: usize) -> Result<()> {
        let invalid = |reason| {
            Err(Error::InvalidConfig {
                layer: CONFIG,
                reason,
            })
        };
        match *self {
            Self::Learned => Ok(()),
            Self::Rotary { theta } if !(theta.is_finite() && theta > 0.0) => {
                invalid(format!("rope theta {theta} is not finite and positive"))
            }
            Self::Rotary { .. } if !(d_model / n_heads.max(1)).is_multiple_of(2) => {
                invalid(format!(
                    "rotary positions need an even head size, and d_model {d_model} / n_heads \
                     {n_heads} is odd"
                ))
            }
            Self::Rotary { .. } => Ok(()),
        }
    }

    pub(super) fn encode(&self, meta: &mut Vec<(&'static str, String)>) {
        match self {
            Self::Learned => meta.push(("positions", "learned".into())),
            Self::Rotary { theta } => {
                meta.push(("positions", "rotary".into()));
                meta.push(("rope_theta", theta.to_string()));
            }
        }
    }

    pub(super) fn decode(meta: &Meta<'_>) -> Result<Self> {
        match meta.text("positions")? {
            None | Some("learned") => Ok(Self::Learned),
            Some("rotary") => Ok(Self::Rotary {
                theta: meta.parse("rope_theta")?.unwrap_or(DEFAULT_ROPE_THETA),
            }),
            Some(other) => Err(unknown("positions", other, "learned, rotary")),
        }
    }
}

/// The map from the last hidden state to the logits (`head`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeadKind {
    /// A [`Linear`] `C → V` with its own weight `head.w (C, V)`.
    Linear {
        /// Whether it has a bias `head.b (V)`.
        bias: bool,
    },
    /// A [`TiedHead`]: `logits = x·tokᵀ (+ b)` with the token embedding table
    /// `embed.tok (V, C)` as the weight (GPT-2's weight tying). It owns no matrix; the table's
    /// gradient is the sum of the head's and the embedding's shares.
    Tied {
        /// Whether it has a bias `head.b (V)`.
        bias: bool,
    },
}

impl Default for HeadKind {
    /// A linear head with bias, as the original.
    fn default() -> Self {
        Self::Linear { bias: true }
    }
}

impl HeadKind {
    /// The head, for width `c` and vocabulary `v`, weights drawn from `rng` (a tied head
    /// draws nothing).
    ///
    /// # Errors
    /// The layer's constructor's.
    pub fn build<F: Float, R: Rng + ?Sized>(
        &self,
        c: usize,
        v: usize,
        rng: &mut R,
    ) -> Result<Head<F>> {
        match *self {
            Self::Linear { bias } => Ok(Head::Layer(Box::new(Linear::new(c, v, bias, rng)?))),
            Self::Tied { bias } => Ok(Head::Tied(TiedHead::new(v, bias)?)),
        }
    }

    /// The head's own parameter count, if it fits in `usize`. A tied head counts only its
    /// bias: the table is the embedding's, counted there once.
    pub fn param_count(&self, c: usize, v: usize) -> Option<usize> {
        match *self {
            Self::Linear { bias } => mul_add(c, v, if bias { v } else { 0 }),
            Self::Tied { bias } => Some(if bias { v } else { 0 }),
        }
    }

    pub(super) fn encode(&self, meta: &mut Vec<(&'static str, String)>) {
        match self {
            Self::Linear { bias } => {
                meta.push(("head", "linear".into()));
                meta.push(("head_bias", bias.to_string()));
            }
            Self::Tied { bias } => {
                meta.push(("head", "tied".into()));
                meta.push(("head_bias", bias.to_string()));
            }
        }
    }

    pub(super) fn decode(meta: &Meta<'_>) -> Result<Self> {
        match meta.text("head")? {
            None | Some("linear") => Ok(Self::Linear {
                bias: meta.parse("head_bias")?.unwrap_or(true),
            }),
            Some("tied") => Ok(Self::Tied {
                bias: meta.require("head_bias")?,
            }),
            Some(other) => Err(unknown("head", other, "linear, tied")),
        }
    }
}
