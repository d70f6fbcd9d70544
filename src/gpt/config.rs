//! [`GptConfig`]: the shape and parts of a [`Gpt`](super::Gpt), its presets, validation,
//! parameter count and checkpoint encoding, each stated once.

use std::collections::HashMap;

use super::dropout::DropoutConfig;
use super::meta::Meta;
use super::parts::{AttentionKind, HeadKind, MlpKind, NormKind, PositionKind};
use crate::{Error, Result};

const LAYER: &str = "GptConfig";

/// The shape of a [`Gpt`](super::Gpt) and the parts it is assembled from.
///
/// Start from a preset and change what differs with struct-update syntax:
///
/// ```
/// use baregpt::GptConfig;
///
/// let config = GptConfig { n_layers: 4, context: 64, ..GptConfig::tiny(65) };
/// assert!(config.validate().is_ok());
/// assert_eq!(GptConfig::baregpt(65).param_count(), 1_643_585);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct GptConfig {
    /// Number of token ids `V`.
    pub vocab_size: usize,
    /// Residual width `C`.
    pub d_model: usize,
    /// Attention heads `H`; must divide `d_model`.
    pub n_heads: usize,
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Longest sequence `T` (rows of the position table).
    pub context: usize,
    /// Hidden width of each block's MLP (usually `4·d_model`).
    pub mlp_hidden: usize,
    /// Whether a norm (`ln_f`) precedes the head.
    pub final_norm: bool,
    /// The norm of the blocks and of `ln_f`.
    pub norm: NormKind,
    /// The blocks' attention.
    pub attention: AttentionKind,
    /// The blocks' MLP.
    pub mlp: MlpKind,
    /// How positions are encoded.
    pub positions: PositionKind,
    /// The output head.
    pub head: HeadKind,
    /// Where training forwards drop activations, and how much (none by default).
    pub dropout: DropoutConfig,
}

impl GptConfig {
    /// A model of the original's parts (LayerNorm, multi-head attention, GELU MLP, learned
    /// positions, linear head with bias) and the given sizes.
    pub fn with_sizes(
        vocab_size: usize,
        d_model: usize,
        n_heads: usize,
        n_layers: usize,
        context: usize,
    ) -> Self {
        Self {
            vocab_size,
            d_model,
            n_heads,
            n_layers,
            context,
            mlp_hidden: d_model.saturating_mul(4),
            final_norm: true,
            norm: NormKind::default(),
            attention: AttentionKind::default(),
            mlp: MlpKind::default(),
            positions: PositionKind::default(),
            head: HeadKind::default(),
            dropout: DropoutConfig::default(),
        }
    }

    /// The original BareGPT model: `d_model` 256, 4 heads, 2 layers, context 128, MLP 1024,
    /// no final LayerNorm. Its bugs are fixed here: LayerNorm is affine and trained, and any
    /// `T ≤ context` works.
    pub fn baregpt(vocab_size: usize) -> Self {
        Self {
            final_norm: false,
            ..Self::with_sizes(vocab_size, 256, 4, 2, 128)
        }
    }

    /// The `tiny` benchmark preset: `d_model` 64, 4 heads, 2 layers, context 32, with a final
    /// LayerNorm.
    pub fn tiny(vocab_size: usize) -> Self {
        Self::with_sizes(vocab_size, 64, 4, 2, 32)
    }

    /// The `char-6l` benchmark preset: `d_model` 384, 6 heads, 6 layers, context 256, final
    /// LayerNorm.
    pub fn char_6l(vocab_size: usize) -> Self {
        Self::with_sizes(vocab_size, 384, 6, 6, 256)
    }

    /// Checks that every size is positive, the heads divide `d_model`, the parts' settings
    /// and drop probabilities are valid and the parameter count fits in `usize`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the offending field.
    pub fn validate(&self) -> Result<()> {
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("n_heads", self.n_heads),
            ("context", self.context),
            ("mlp_hidden", self.mlp_hidden),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, n)| *n == 0) {
            return Err(invalid(format!("{name} must be positive")));
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            return Err(invalid(format!(
                "n_heads {} does not divide d_model {}",
                self.n_heads, self.d_model
            )));
        }
        self.norm.validate()?;
        self.dropout.validate()?;
        self.attention.validate(self.n_heads)?;
        self.positions.validate(self.d_model, self.n_heads)?;
        if self.checked_param_count().is_none() {
            return Err(invalid("the parameter count overflows usize".into()));
        }
        Ok(())
    }

    /// The number of scalar parameters a [`Gpt`](super::Gpt) of this config has, or `None`
    /// when it does not fit in `usize`.
    pub fn checked_param_count(&self) -> Option<usize> {
        let (v, c, h) = (self.vocab_size, self.d_model, self.mlp_hidden);
        let block = self
            .norm
            .param_count(c)?
            .checked_mul(2)?
            .checked_add(self.attention.param_count(c, self.n_heads)?)?
            .checked_add(self.mlp.param_count(c, h)?)?;
        let final_norm = if self.final_norm {
            self.norm.param_count(c)?
        } else {
            0
        };
        v.checked_mul(c)?
            .checked_add(self.positions.param_count(self.context, c)?)?
            .checked_add(self.n_layers.checked_mul(block)?)?
            .checked_add(final_norm)?
            .checked_add(self.head.param_count(c, v)?)
    }

    /// The number of scalar parameters a [`Gpt`](super::Gpt) of this config has (saturating
    /// at `usize::MAX`, which [`GptConfig::validate`] refuses).
    pub fn param_count(&self) -> usize {
        self.checked_param_count().unwrap_or(usize::MAX)
    }

    /// The config as `(field, value)` strings, as a checkpoint stores them under
    /// `config.<field>`.
    pub fn to_metadata(&self) -> Vec<(&'static str, String)> {
        let mut meta = vec![
            ("vocab_size", self.vocab_size.to_string()),
            ("d_model", self.d_model.to_string()),
            ("n_heads", self.n_heads.to_string()),
            ("n_layers", self.n_layers.to_string()),
            ("context", self.context.to_string()),
            ("mlp_hidden", self.mlp_hidden.to_string()),
            ("final_norm", self.final_norm.to_string()),
        ];
        self.norm.encode(&mut meta);
        self.attention.encode(&mut meta);
        self.mlp.encode(&mut meta);
        self.positions.encode(&mut meta);
        self.head.encode(&mut meta);
        self.dropout.encode(&mut meta);
        meta
    }

    /// Reads a config from checkpoint metadata (`config.<field>` keys). A part missing from
    /// the metadata is the original's (checkpoints written before parts were recorded), and
    /// a missing drop probability is 0 (they are written only when non-zero).
    ///
    /// # Errors
    /// [`Error::Checkpoint`] when a size is missing or unreadable, or a part is one this
    /// version does not implement.
    pub fn from_metadata(meta: &HashMap<String, String>) -> Result<Self> {
        let meta = Meta::new(meta);
        Ok(Self {
            vocab_size: meta.require("vocab_size")?,
            d_model: meta.require("d_model")?,
            n_heads: meta.require("n_heads")?,
            n_layers: meta.require("n_layers")?,
            context: meta.require("context")?,
            mlp_hidden: meta.require("mlp_hidden")?,
            final_norm: meta.require("final_norm")?,
            norm: NormKind::decode(&meta)?,
            attention: AttentionKind::decode(&meta)?,
            mlp: MlpKind::decode(&meta)?,
            positions: PositionKind::decode(&meta)?,
            head: HeadKind::decode(&meta)?,
            dropout: DropoutConfig::decode(&meta)?,
        })
    }

    /// The first field in which `other` differs from `self`, as `(field, self's value,
    /// other's value)`.
    pub fn first_difference(&self, other: &Self) -> Option<(&'static str, String, String)> {
        let (mine, theirs) = (self.to_metadata(), other.to_metadata());
        let theirs: HashMap<_, _> = theirs.into_iter().collect();
        mine.into_iter().find_map(|(field, value)| {
            let other = theirs
                .get(field)
                .cloned()
                .unwrap_or_else(|| "(absent)".into());
            (value != other).then_some((field, value, other))
        })
    }
}

fn invalid(reason: String) -> Error {
    Error::InvalidConfig {
        layer: LAYER,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn param_count_is_checked() {
        let huge = GptConfig {
            d_model: usize::MAX / 2,
            ..GptConfig::tiny(3)
        };
        assert_eq!(huge.checked_param_count(), None);
        assert_eq!(huge.param_count(), usize::MAX);
        assert!(huge.validate().is_err());
    }

    #[test]
    fn metadata_round_trips_and_old_metadata_means_the_original_parts() {
        let config = GptConfig {
            norm: NormKind::LayerNorm { eps: 1e-6 },
            head: HeadKind::Linear { bias: false },
            ..GptConfig::baregpt(65)
        };
        let meta: HashMap<String, String> = config
            .to_metadata()
            .into_iter()
            .map(|(k, v)| (format!("config.{k}"), v))
            .collect();
        assert_eq!(GptConfig::from_metadata(&meta).unwrap(), config);
        // A checkpoint of the first format records only the seven sizes.
        let old: HashMap<String, String> = meta
            .into_iter()
            .filter(|(k, _)| {
                ![
                    "norm",
                    "norm_eps",
                    "attention",
                    "attention_bias",
                    "mlp",
                    "positions",
                    "head",
                    "head_bias",
                ]
                .contains(&k.trim_start_matches("config."))
            })
            .collect();
        assert_eq!(old.len(), 7);
        assert_eq!(
            GptConfig::from_metadata(&old).unwrap(),
            GptConfig::baregpt(65)
        );
        let mut unknown = old.clone();
        unknown.insert("config.norm".into(), "batch_norm".into());
        assert!(GptConfig::from_metadata(&unknown).is_err());
    }

    #[test]
    fn rms_norm_and_swiglu_round_trip_through_metadata() {
        let config = GptConfig {
            norm: NormKind::RmsNorm { eps: 1e-6 },
            mlp: MlpKind::SwiGlu,
            ..GptConfig::tiny(11)
        };
        let meta: HashMap<String, String> = config
            .to_metadata()
            .into_iter()
            .map(|(k, v)| (format!("config.{k}"), v))
            .collect();
        assert_eq!(meta["config.norm"], "rms_norm");
        assert_eq!(meta["config.mlp"], "swiglu");
        assert_eq!(GptConfig::from_metadata(&meta).unwrap(), config);
        // Without an eps, the RMSNorm default.
        let mut no_eps = meta.clone();
        no_eps.remove("config.norm_eps");
        assert_eq!(
            GptConfig::from_metadata(&no_eps).unwrap().norm,
            NormKind::RmsNorm { eps: 1e-5 }
        );
        let mut unknown = meta;
        unknown.insert("config.mlp".into(), "geglu".into());
        let err = GptConfig::from_metadata(&unknown).unwrap_err().to_string();
        assert!(err.contains("(gelu, swiglu)"), "{err}");
    }

    #[test]
    fn attention_and_position_parts_round_trip_and_are_validated() {
        let to_meta = |config: &GptConfig| -> HashMap<String, String> {
            config
                .to_metadata()
                .into_iter()
                .map(|(k, v)| (format!("config.{k}"), v))
                .collect()
        };
        for (attention, positions) in [
            (
                AttentionKind::MultiHead { bias: true },
                PositionKind::Learned,
            ),
            (
                AttentionKind::GroupedQuery {
                    n_kv_heads: 2,
                    bias: true,
                },
                PositionKind::Rotary { theta: 500.0 },
            ),
            (
                AttentionKind::GroupedQuery {
                    n_kv_heads: 1,
                    bias: false,
                },
                PositionKind::rotary(),
            ),
        ] {
            let config = GptConfig {
                attention,
                positions,
                ..GptConfig::tiny(11)
            };
            assert!(config.validate().is_ok());
            assert_eq!(GptConfig::from_metadata(&to_meta(&config)).unwrap(), config);
        }
        // Rotary positions have no parameters; GQA's K/V projections are narrower.
        let (c, v) = (64, 11);
        let base = GptConfig::tiny(v);
        let rotary = GptConfig {
            positions: PositionKind::rotary(),
            ..base.clone()
        };
        assert_eq!(base.param_count() - rotary.param_count(), 32 * c);
        let gqa = GptConfig {
            attention: AttentionKind::GroupedQuery {
                n_kv_heads: 1,
                bias: false,
            },
            ..base.clone()
        };
        // Per layer w_k and w_v lose C·(C − C/4) each.
        assert_eq!(base.param_count() - gqa.param_count(), 2 * 2 * c * (c - 16));
        // A rotary checkpoint without `rope_theta` gets the default base.
        let mut meta = to_meta(&rotary);
        meta.remove("config.rope_theta");
        assert_eq!(GptConfig::from_metadata(&meta).unwrap(), rotary);
        // Settings that cannot be built are refused.
        for bad in [
            GptConfig {
                attention: AttentionKind::GroupedQuery {
                    n_kv_heads: 3,
                    bias: false,
                },
                ..base.clone()
            },
            GptConfig {
                attention: AttentionKind::GroupedQuery {
                    n_kv_heads: 0,
                    bias: false,
                },
                ..base.clone()
            },
            GptConfig {
                positions: PositionKind::Rotary { theta: -1.0 },
                ..base.clone()
            },
            // Head size 3 is odd.
            GptConfig {
                positions: PositionKind::rotary(),
                ..GptConfig::with_sizes(5, 6, 2, 1, 4)
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        let mut unknown = to_meta(&base);
        unknown.insert("config.attention".into(), "linear".into());
        assert!(GptConfig::from_metadata(&unknown).is_err());
    }

    #[test]
    fn first_difference_names_the_field() {
        let a = GptConfig::tiny(10);
        let b = GptConfig {
            n_layers: 3,
            ..a.clone()
        };
        assert_eq!(
            a.first_difference(&b),
            Some(("n_layers", "2".to_owned(), "3".to_owned()))
        );
        assert_eq!(a.first_difference(&a), None);
    }
}
