//! The parts a [`Gpt`](super::Gpt) is assembled from, one enum per slot: each variant is a
//! choice of layer, and owns how that layer is built, how many parameters it has and how it
//! is written into a checkpoint's metadata.
//!
//! Adding a part means adding its kernel, its layer, and one variant here (its arm in each
//! `match` of its enum); nothing else changes. See `docs/architecture.md`, "Adding a part".

use rand::Rng;

use super::Head;
use super::meta::Meta;
use crate::layers::{Attention, LayerNorm, Linear, Mlp, TiedHead};
use crate::{Error, Float, Layer, Result};

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
        }
    }

    /// The layer's parameter count at width `c`, if it fits in `usize`.
    pub fn param_count(&self, c: usize) -> Option<usize> {
        match self {
            Self::LayerNorm { .. } => c.checked_mul(2),
        }
    }

    pub(super) fn validate(&self) -> Result<()> {
        match *self {
            Self::LayerNorm { eps } if !(eps.is_finite() && eps >= 0.0) => {
                Err(Error::InvalidConfig {
                    layer: CONFIG,
                    reason: format!("norm eps {eps} is not finite and non-negative"),
                })
            }
            Self::LayerNorm { .. } => Ok(()),
        }
    }

    pub(super) fn encode(&self, meta: &mut Vec<(&'static str, String)>) {
        match self {
            Self::LayerNorm { eps } => {
                meta.push(("norm", "layer_norm".into()));
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
            Some(other) => Err(unknown("norm", other, "layer_norm")),
        }
    }
}

/// The sequence mixer of each block (`attn`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttentionKind {
    /// [`Attention`]: causal multi-head attention with `n_heads` heads and four bias-free
    /// `(C, C)` projections `w_q`, `w_k`, `w_v`, `w_o`.
    #[default]
    MultiHead,
}

impl AttentionKind {
    /// The layer, for width `c` and `n_heads` heads, weights drawn from `rng`.
    ///
    /// # Errors
    /// The layer's constructor's (heads not dividing the width, a zero size).
    pub fn build<F: Float, R: Rng + ?Sized>(
        &self,
        c: usize,
        n_heads: usize,
        rng: &mut R,
    ) -> Result<Box<dyn Layer<F>>> {
        match self {
            Self::MultiHead => Ok(Box::new(Attention::new(c, n_heads, rng)?)),
        }
    }

    /// The layer's parameter count at width `c`, if it fits in `usize`.
    pub fn param_count(&self, c: usize) -> Option<usize> {
        match self {
            Self::MultiHead => c.checked_mul(c)?.checked_mul(4),
        }
    }

    pub(super) fn encode(&self, meta: &mut Vec<(&'static str, String)>) {
        match self {
            Self::MultiHead => meta.push(("attention", "multi_head".into())),
        }
    }

    pub(super) fn decode(meta: &Meta<'_>) -> Result<Self> {
        match meta.text("attention")? {
            None | Some("multi_head") => Ok(Self::MultiHead),
            Some(other) => Err(unknown("attention", other, "multi_head")),
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
        }
    }

    /// The layer's parameter count, if it fits in `usize`.
    pub fn param_count(&self, c: usize, hidden: usize) -> Option<usize> {
        match self {
            // fc: C·H + H, proj: H·C + C
            Self::Gelu => mul_add(c, hidden, hidden)?.checked_add(mul_add(hidden, c, c)?),
        }
    }

    pub(super) fn encode(&self, meta: &mut Vec<(&'static str, String)>) {
        match self {
            Self::Gelu => meta.push(("mlp", "gelu".into())),
        }
    }

    pub(super) fn decode(meta: &Meta<'_>) -> Result<Self> {
        match meta.text("mlp")? {
            None | Some("gelu") => Ok(Self::Gelu),
            Some(other) => Err(unknown("mlp", other, "gelu")),
        }
    }
}

/// How positions enter the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum PositionKind {
    /// A learned table `embed.pos (context, C)` added to the token embeddings.
    #[default]
    Learned,
}

impl PositionKind {
    /// The parameter count of the position encoding, if it fits in `usize`.
    pub fn param_count(&self, context: usize, c: usize) -> Option<usize> {
        match self {
            Self::Learned => context.checked_mul(c),
        }
    }

    pub(super) fn encode(&self, meta: &mut Vec<(&'static str, String)>) {
        match self {
            Self::Learned => meta.push(("positions", "learned".into())),
        }
    }

    pub(super) fn decode(meta: &Meta<'_>) -> Result<Self> {
        match meta.text("positions")? {
            None | Some("learned") => Ok(Self::Learned),
            Some(other) => Err(unknown("positions", other, "learned")),
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
