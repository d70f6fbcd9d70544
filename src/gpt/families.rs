//! The GPT-2 and Llama families as [`GptConfig`]s: a constructor for any size, and presets.

use super::GptConfig;
use super::parts::{AttentionKind, HeadKind, MlpKind, NormKind, PositionKind};

/// GPT-2's LayerNorm `eps` (`layer_norm_epsilon`).
pub const GPT2_LN_EPS: f64 = 1e-5;
/// The RMSNorm `eps` of the Llama configurations here (Hugging Face's `rms_norm_eps`; Llama 2
/// checkpoints use 1e-5, Llama 3 1e-5 or 1e-6).
pub const LLAMA_RMS_EPS: f64 = 1e-6;
/// Meta's `multiple_of`: a Llama MLP's hidden width is rounded up to a multiple of it.
pub const LLAMA_MULTIPLE_OF: usize = 256;

impl GptConfig {
    /// A GPT-2 of the given sizes: learned positions, pre-LayerNorm blocks (`eps` 1e-5),
    /// multi-head attention with biases on all four projections, a GELU(tanh) MLP of hidden
    /// width `4·d_model` with biases, a final LayerNorm and a bias-free head tied to the
    /// token table (`logits = x·embed.tokᵀ`).
    ///
    /// Dropout is a training setting, not part of the shape: a model of this config has none.
    ///
    /// ```
    /// use baregpt::GptConfig;
    /// use baregpt::gpt::parts::HeadKind;
    ///
    /// let small = GptConfig::gpt2_small();
    /// assert_eq!(small, GptConfig::gpt2(50257, 768, 12, 12, 1024));
    /// assert_eq!(small.head, HeadKind::Tied { bias: false });
    /// assert_eq!(small.param_count(), 124_439_808); // Hugging Face's `gpt2`
    /// ```
    pub fn gpt2(
        vocab_size: usize,
        d_model: usize,
        n_heads: usize,
        n_layers: usize,
        context: usize,
    ) -> Self {
        Self {
            final_norm: true,
            norm: NormKind::LayerNorm { eps: GPT2_LN_EPS },
            attention: AttentionKind::MultiHead { bias: true },
            mlp: MlpKind::Gelu,
            positions: PositionKind::Learned,
            head: HeadKind::Tied { bias: false },
            ..Self::with_sizes(vocab_size, d_model, n_heads, n_layers, context)
        }
    }

    /// GPT-2 small, as released: vocabulary 50257, `d_model` 768, 12 heads, 12 layers,
    /// context 1024, tied head; 124,439,808 parameters.
    pub fn gpt2_small() -> Self {
        Self::gpt2(50257, 768, 12, 12, 1024)
    }

    /// A Llama of the given sizes: the token embedding alone, pre-RMSNorm blocks (`eps`
    /// [`LLAMA_RMS_EPS`]), rotary positions (`theta` 10000, `rotate_half`), grouped-query
    /// attention with `n_kv_heads` key/value heads and no biases, a SwiGLU MLP of hidden width
    /// [`GptConfig::llama_mlp_hidden`], a final RMSNorm and an untied bias-free head.
    ///
    /// ```
    /// use baregpt::GptConfig;
    ///
    /// let config = GptConfig::llama(32000, 4096, 32, 32, 32, 4096);
    /// assert_eq!(config.mlp_hidden, 11008);
    /// assert_eq!(config.param_count(), 6_738_415_616); // Llama 2 7B
    /// ```
    pub fn llama(
        vocab_size: usize,
        d_model: usize,
        n_heads: usize,
        n_kv_heads: usize,
        n_layers: usize,
        context: usize,
    ) -> Self {
        Self {
            mlp_hidden: Self::llama_mlp_hidden(d_model),
            final_norm: true,
            norm: NormKind::RmsNorm { eps: LLAMA_RMS_EPS },
            attention: AttentionKind::GroupedQuery {
                n_kv_heads,
                bias: false,
            },
            mlp: MlpKind::SwiGlu,
            positions: PositionKind::rotary(),
            head: HeadKind::Linear { bias: false },
            ..Self::with_sizes(vocab_size, d_model, n_heads, n_layers, context)
        }
    }

    /// Llama's SwiGLU hidden width for width `d_model`: `8·d_model/3` (the parameters of a
    /// `4·d_model` two-matrix MLP in three matrices) rounded up to a multiple of
    /// [`LLAMA_MULTIPLE_OF`]; 11008 for `d_model` 4096. Saturates instead of overflowing.
    pub fn llama_mlp_hidden(d_model: usize) -> usize {
        let two_thirds = d_model.saturating_mul(8) / 3;
        two_thirds
            .div_ceil(LLAMA_MULTIPLE_OF)
            .saturating_mul(LLAMA_MULTIPLE_OF)
    }

    /// A small Llama for quick runs: `d_model` 256, 8 heads on 4 key/value heads, 4 layers,
    /// context 256, MLP 768.
    pub fn llama_small(vocab_size: usize) -> Self {
        Self::llama(vocab_size, 256, 8, 4, 4, 256)
    }

    /// A Llama of about 100M parameters (99,496,704): vocabulary 32000 (Llama's tokenizer),
    /// `d_model` 768, 12 heads on 4 key/value heads, 8 layers, context 1024, MLP 2048.
    pub fn llama_100m() -> Self {
        Self::llama(32000, 768, 12, 4, 8, 1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_presets_have_their_published_sizes() {
        // Hugging Face's gpt2: 124,439,808 parameters (the head tied to wte).
        let gpt2 = GptConfig::gpt2_small();
        assert_eq!(gpt2.param_count(), 124_439_808);
        assert!(gpt2.validate().is_ok());
        // Llama 2 7B: 6,738,415,616.
        let llama = GptConfig::llama(32000, 4096, 32, 32, 32, 4096);
        assert_eq!(llama.param_count(), 6_738_415_616);
        assert_eq!(GptConfig::llama_mlp_hidden(4096), 11008);
        assert_eq!(GptConfig::llama_mlp_hidden(768), 2048);
        assert_eq!(GptConfig::llama_mlp_hidden(256), 768);
        assert_eq!(
            GptConfig::llama_mlp_hidden(usize::MAX) % LLAMA_MULTIPLE_OF,
            0
        );
        assert_eq!(GptConfig::llama_100m().param_count(), 99_496_704);
        for config in [
            GptConfig::llama_small(65),
            GptConfig::llama_100m(),
            GptConfig::gpt2(65, 64, 4, 2, 32),
        ] {
            assert!(config.validate().is_ok(), "{config:?}");
        }
    }

    #[test]
    fn family_configs_round_trip_through_metadata() {
        use std::collections::HashMap;
        for config in [GptConfig::gpt2_small(), GptConfig::llama_100m()] {
            let meta: HashMap<String, String> = config
                .to_metadata()
                .into_iter()
                .map(|(k, v)| (format!("config.{k}"), v))
                .collect();
            assert_eq!(GptConfig::from_metadata(&meta).unwrap(), config);
        }
    }
}
