//! [`DropoutConfig`]: where a [`Gpt`](super::Gpt) drops activations in training, GPT-2's
//! three placements, with its validation and checkpoint encoding.

use super::meta::Meta;
use crate::kernels::dropout::check_probability;
use crate::{Error, Result};

/// The drop probabilities of a [`Gpt`](super::Gpt)'s three dropout placements (GPT-2's
/// `embd_pdrop`, `attn_pdrop`, `resid_pdrop`). All are 0 by default: no dropout, the
/// original's model.
///
/// ```
/// use baregpt::{DropoutConfig, GptConfig};
///
/// let config = GptConfig {
///     dropout: DropoutConfig { embed: 0.1, residual: 0.1, ..DropoutConfig::default() },
///     ..GptConfig::tiny(65)
/// };
/// assert!(config.validate().is_ok());
/// assert!(DropoutConfig::uniform(0.1).attention > 0.0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct DropoutConfig {
    /// After the token and position embeddings are added, before the first block
    /// (`embd_pdrop`).
    pub embed: f64,
    /// On the attention probabilities inside each block's attention (`attn_pdrop`).
    ///
    /// Recorded and validated here; the attention layer applies it (see the note in
    /// [`Gpt::new`](super::Gpt::new)).
    pub attention: f64,
    /// On each block's attention and MLP branch outputs, before each residual add
    /// (`resid_pdrop`).
    pub residual: f64,
}

/// The metadata keys, in the order they are written, with their field's value.
fn fields(config: &DropoutConfig) -> [(&'static str, f64); 3] {
    [
        ("dropout_embed", config.embed),
        ("dropout_attention", config.attention),
        ("dropout_residual", config.residual),
    ]
}

impl DropoutConfig {
    /// The same probability `p` at all three placements (GPT-2 uses 0.1 everywhere).
    pub fn uniform(p: f64) -> Self {
        Self {
            embed: p,
            attention: p,
            residual: p,
        }
    }

    /// Whether any placement drops (a probability is non-zero).
    pub fn any(&self) -> bool {
        fields(self).iter().any(|&(_, p)| p != 0.0)
    }

    /// Checks each probability: `0 ≤ p < 1`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming `GptConfig` and the field.
    pub fn validate(&self) -> Result<()> {
        for (key, p) in fields(self) {
            check_probability(p).map_err(|_| Error::InvalidConfig {
                layer: "GptConfig",
                reason: format!(
                    "{} {p} is not a drop probability in [0, 1)",
                    key.replace('_', ".")
                ),
            })?;
        }
        Ok(())
    }

    /// Writes each non-zero probability, so a config without dropout writes exactly the
    /// metadata it wrote before dropout existed.
    pub(super) fn encode(&self, meta: &mut Vec<(&'static str, String)>) {
        for (key, p) in fields(self) {
            if p != 0.0 {
                meta.push((key, p.to_string()));
            }
        }
    }

    /// Reads the probabilities back; a missing one is 0 (checkpoints without dropout).
    pub(super) fn decode(meta: &Meta<'_>) -> Result<Self> {
        let read = |key| meta.parse(key).map(|p: Option<f64>| p.unwrap_or(0.0));
        Ok(Self {
            embed: read("dropout_embed")?,
            attention: read("dropout_attention")?,
            residual: read("dropout_residual")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn zero_writes_nothing_and_values_round_trip() {
        let mut meta = Vec::new();
        DropoutConfig::default().encode(&mut meta);
        assert!(meta.is_empty());
        let config = DropoutConfig {
            embed: 0.1,
            attention: 0.0,
            residual: 1.0 / 3.0,
        };
        config.encode(&mut meta);
        assert_eq!(meta.len(), 2);
        let entries: HashMap<String, String> = meta
            .into_iter()
            .map(|(k, v)| (format!("config.{k}"), v))
            .collect();
        assert_eq!(DropoutConfig::decode(&Meta::new(&entries)).unwrap(), config);
    }

    #[test]
    fn validation_names_the_field() {
        let bad = DropoutConfig {
            residual: f64::NAN,
            ..DropoutConfig::default()
        };
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("dropout.residual"), "{err}");
        assert!(DropoutConfig::uniform(1.0).validate().is_err());
        assert!(DropoutConfig::uniform(-0.1).validate().is_err());
        assert!(DropoutConfig::uniform(0.5).validate().is_ok());
    }
}
