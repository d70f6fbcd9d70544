//! [`AdamConfig`]: the hyper-parameters of [`Adam`](super::Adam) and their ranges.

use super::clip::check_max_norm;
use super::{LrSchedule, invalid};
use crate::Result;

const LAYER: &str = "Adam";

/// The hyper-parameters of [`Adam`](super::Adam). The defaults are PyTorch's
/// `torch.optim.Adam` defaults.
///
/// | field | default | meaning |
/// |---|---|---|
/// | `lr` | `1e-3` | base learning rate (multiplied by the `schedule`) |
/// | `beta1`, `beta2` | `0.9`, `0.999` | decay rates of the first and second moments |
/// | `eps` | `1e-8` | added to `sqrt(v̂)` (outside the square root) |
/// | `weight_decay` | `0` | decay strength `λ` |
/// | `decoupled_weight_decay` | `false` | `false`: L2 added to the gradient (`Adam`); `true`: AdamW |
/// | `amsgrad` | `false` | normalise by the running maximum of `v` |
/// | `max_grad_norm` | `None` | clip the global gradient norm to this before each step |
/// | `schedule` | constant | learning-rate multiplier per step |
///
/// Use [`AdamConfig::adam`] or [`AdamConfig::adamw`] and struct-update syntax for the rest:
///
/// ```
/// use baregpt::{AdamConfig, optim::LrSchedule};
///
/// let config = AdamConfig {
///     amsgrad: true,
///     max_grad_norm: Some(1.0),
///     schedule: LrSchedule::warmup_cosine(100, 2000, 0.1)?,
///     ..AdamConfig::adamw(3e-4, 0.1)
/// };
/// assert!(config.validate().is_ok());
/// # Ok::<(), baregpt::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct AdamConfig {
    /// Base learning rate; step `t` uses `lr · schedule.factor(t)`.
    pub lr: f64,
    /// Decay rate of the first moment, in `[0, 1)`.
    pub beta1: f64,
    /// Decay rate of the second moment, in `[0, 1)`.
    pub beta2: f64,
    /// Added to the denominator `sqrt(v̂)/sqrt(1 − β2^t)` for stability; `≥ 0`.
    pub eps: f64,
    /// Weight decay `λ ≥ 0`, applied to the parameters the [`DecayFilter`](super::DecayFilter) selects.
    pub weight_decay: f64,
    /// `false`: PyTorch's `Adam` (`g ← g + λ·p`); `true`: PyTorch's `AdamW`
    /// (`p ← p·(1 − lr·λ)` before the update).
    pub decoupled_weight_decay: bool,
    /// Use AMSGrad: divide by `sqrt(max over steps of v)` instead of `sqrt(v)`.
    pub amsgrad: bool,
    /// When set, gradients are scaled as by [`clip_grad_norm`](crate::optim::clip_grad_norm)
    /// before the update (the stored gradients are left as they are).
    pub max_grad_norm: Option<f64>,
    /// Learning-rate schedule.
    pub schedule: LrSchedule,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled_weight_decay: false,
            amsgrad: false,
            max_grad_norm: None,
            schedule: LrSchedule::constant(),
        }
    }
}

impl AdamConfig {
    /// `torch.optim.Adam(lr=lr)`: the defaults with the given learning rate.
    pub fn adam(lr: f64) -> Self {
        Self {
            lr,
            ..Self::default()
        }
    }

    /// `torch.optim.AdamW(lr=lr, weight_decay=weight_decay)`: decoupled weight decay.
    pub fn adamw(lr: f64, weight_decay: f64) -> Self {
        Self {
            lr,
            weight_decay,
            decoupled_weight_decay: true,
            ..Self::default()
        }
    }

    /// Checks every field's range (the same checks as PyTorch's constructor, plus a positive
    /// clipping threshold).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) naming the field.
    pub fn validate(&self) -> Result<()> {
        let non_negative = [
            ("lr", self.lr),
            ("eps", self.eps),
            ("weight_decay", self.weight_decay),
        ];
        for (field, x) in non_negative {
            if !(x >= 0.0 && x.is_finite()) {
                return Err(invalid(
                    LAYER,
                    format!("{field} must be finite and ≥ 0, got {x}"),
                ));
            }
        }
        for (field, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err(invalid(
                    LAYER,
                    format!("{field} must be in [0, 1), got {beta}"),
                ));
            }
        }
        if let Some(max_norm) = self.max_grad_norm {
            check_max_norm(LAYER, max_norm)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Adam, Error};

    #[test]
    fn invalid_configs_are_rejected() {
        let bad = [
            AdamConfig::adam(-1.0),
            AdamConfig::adam(f64::NAN),
            AdamConfig {
                beta1: 1.0,
                ..AdamConfig::default()
            },
            AdamConfig {
                beta2: -0.1,
                ..AdamConfig::default()
            },
            AdamConfig {
                eps: f64::INFINITY,
                ..AdamConfig::default()
            },
            AdamConfig::adamw(1e-3, -0.1),
            AdamConfig {
                max_grad_norm: Some(0.0),
                ..AdamConfig::default()
            },
        ];
        for config in bad {
            let err = Adam::<f32>::new(config.clone()).unwrap_err();
            assert!(
                matches!(err, Error::InvalidConfig { .. }),
                "{config:?}: {err}"
            );
        }
        let mut adam = Adam::<f32>::new(AdamConfig::default()).unwrap();
        assert!(adam.set_lr(-1.0).is_err());
        assert_eq!(adam.config().lr, 1e-3);
        adam.set_lr(0.5).unwrap();
        assert_eq!(adam.next_lr(), 0.5);
    }

    #[test]
    fn defaults_are_pytorchs() {
        let c = AdamConfig::default();
        assert_eq!((c.lr, c.beta1, c.beta2, c.eps), (1e-3, 0.9, 0.999, 1e-8));
        assert_eq!(
            (c.weight_decay, c.decoupled_weight_decay, c.amsgrad),
            (0.0, false, false)
        );
        let w = AdamConfig::adamw(1e-3, 1e-2);
        assert!(w.decoupled_weight_decay && w.weight_decay == 1e-2);
    }
}
