//! [`LrSchedule`]: the learning-rate multiplier as a function of the step number.

use std::f64::consts::PI;

use super::invalid;
use crate::Result;

const LAYER: &str = "LrSchedule";

/// A learning-rate schedule: a multiplier of the base learning rate for each step.
///
/// Steps are counted from 1, as in [`Adam`](crate::Adam): step `t` is the `t`-th update. The
/// learning rate used at step `t` is `lr · factor(t)`. Three shapes are provided:
///
/// * [`constant`](LrSchedule::constant): `factor(t) = 1`.
/// * [`linear_warmup`](LrSchedule::linear_warmup)`(W)`: `factor(t) = min(1, t / W)`, so the
///   first step uses `lr / W` and step `W` onward uses `lr`.
/// * [`warmup_cosine`](LrSchedule::warmup_cosine)`(W, N, floor)`: the linear warmup for
///   `t ≤ W`, then a half cosine from 1 down to `floor` at step `N`, and `floor` after that:
///
///   ```text
///   p         = (t − W) / (N − W)                    for W < t ≤ N
///   factor(t) = floor + (1 − floor) · (1 + cos(π·p)) / 2
///   ```
///
///   With `W = 0` it is a plain cosine decay. `floor` is a fraction of the base learning rate
///   (`0.1` decays to a tenth of it).
///
/// The fields are private so that every schedule has been validated: `factor` never panics
/// and always returns a finite value in `[0, 1]`.
///
/// # Example
///
/// ```
/// use baregpt::optim::LrSchedule;
///
/// let schedule = LrSchedule::warmup_cosine(10, 110, 0.1)?;
/// assert_eq!(schedule.factor(5), 0.5);    // halfway through the warmup
/// assert_eq!(schedule.factor(10), 1.0);   // peak
/// assert!((schedule.factor(60) - 0.55).abs() < 1e-12); // halfway down the cosine
/// assert_eq!(schedule.factor(110), 0.1);  // the floor, and it stays there
/// assert_eq!(schedule.factor(1000), 0.1);
/// # Ok::<(), baregpt::Error>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LrSchedule {
    kind: Kind,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
enum Kind {
    #[default]
    Constant,
    LinearWarmup {
        warmup: u64,
    },
    WarmupCosine {
        warmup: u64,
        total: u64,
        floor: f64,
    },
}

impl LrSchedule {
    /// The constant schedule: every step uses the base learning rate (the default).
    pub fn constant() -> Self {
        Self {
            kind: Kind::Constant,
        }
    }

    /// A linear warmup over `warmup_steps` steps, constant afterwards.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) when `warmup_steps` is 0 (use [`LrSchedule::constant`]).
    pub fn linear_warmup(warmup_steps: u64) -> Result<Self> {
        if warmup_steps == 0 {
            return Err(invalid(
                LAYER,
                "linear_warmup needs warmup_steps > 0 (use constant() for no warmup)".into(),
            ));
        }
        Ok(Self {
            kind: Kind::LinearWarmup {
                warmup: warmup_steps,
            },
        })
    }

    /// A linear warmup over `warmup_steps` (may be 0), then cosine decay that reaches
    /// `floor · lr` at step `total_steps` and stays there.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`](crate::Error::InvalidConfig) unless `total_steps > warmup_steps` and `0 ≤ floor ≤ 1`.
    pub fn warmup_cosine(warmup_steps: u64, total_steps: u64, floor: f64) -> Result<Self> {
        if total_steps <= warmup_steps {
            return Err(invalid(
                LAYER,
                format!(
                    "warmup_cosine needs total_steps ({total_steps}) > warmup_steps ({warmup_steps})"
                ),
            ));
        }
        if !(0.0..=1.0).contains(&floor) {
            return Err(invalid(
                LAYER,
                format!(
                    "warmup_cosine floor {floor} is not in [0, 1] (it is a fraction of the base lr)"
                ),
            ));
        }
        Ok(Self {
            kind: Kind::WarmupCosine {
                warmup: warmup_steps,
                total: total_steps,
                floor,
            },
        })
    }

    /// The multiplier of the base learning rate at step `t` (counted from 1; `t = 0` is
    /// treated as the first step).
    pub fn factor(&self, t: u64) -> f64 {
        let t = t.max(1);
        match self.kind {
            Kind::Constant => 1.0,
            Kind::LinearWarmup { warmup } => warmup_factor(t, warmup),
            Kind::WarmupCosine {
                warmup,
                total,
                floor,
            } => {
                if t <= warmup {
                    warmup_factor(t, warmup)
                } else if t >= total {
                    floor
                } else {
                    let progress = (t - warmup) as f64 / (total - warmup) as f64;
                    floor + (1.0 - floor) * 0.5 * (1.0 + (PI * progress).cos())
                }
            }
        }
    }

    /// The learning rate at step `t` for the base rate `base_lr`: `base_lr · factor(t)`.
    pub fn lr(&self, base_lr: f64, t: u64) -> f64 {
        base_lr * self.factor(t)
    }
}

/// `min(1, t / warmup)` for `t ≥ 1`, `warmup ≥ 1`.
fn warmup_factor(t: u64, warmup: u64) -> f64 {
    if t >= warmup {
        1.0
    } else {
        t as f64 / warmup as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_is_one_everywhere() {
        let s = LrSchedule::constant();
        assert_eq!(s, LrSchedule::default());
        for t in [0, 1, 2, 1000, u64::MAX] {
            assert_eq!(s.factor(t), 1.0);
        }
    }

    #[test]
    fn linear_warmup_ramps_then_holds() {
        let s = LrSchedule::linear_warmup(4).unwrap();
        let got: Vec<f64> = (1..=6).map(|t| s.factor(t)).collect();
        assert_eq!(got, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
        assert_eq!(s.factor(0), 0.25);
        assert_eq!(s.lr(0.02, 2), 0.01);
        assert!(LrSchedule::linear_warmup(0).is_err());
    }

    #[test]
    fn warmup_cosine_hand_values() {
        let s = LrSchedule::warmup_cosine(2, 6, 0.2).unwrap();
        // Warmup: 1/2, 1. Cosine over steps 3..=6 with p = (t - 2) / 4.
        let expect = |p: f64| 0.2 + 0.8 * 0.5 * (1.0 + (PI * p).cos());
        assert_eq!(s.factor(1), 0.5);
        assert_eq!(s.factor(2), 1.0);
        assert_eq!(s.factor(3), expect(0.25));
        assert!((s.factor(4) - 0.6).abs() < 1e-15);
        assert_eq!(s.factor(5), expect(0.75));
        assert_eq!(s.factor(6), 0.2);
        assert_eq!(s.factor(u64::MAX), 0.2);
    }

    #[test]
    fn cosine_without_warmup_starts_at_one_and_is_monotone() {
        let s = LrSchedule::warmup_cosine(0, 100, 0.0).unwrap();
        assert!((s.factor(1) - 1.0).abs() < 1e-3);
        let mut last = f64::INFINITY;
        for t in 1..=120 {
            let f = s.factor(t);
            assert!(f <= last && (0.0..=1.0).contains(&f), "t = {t}: {f}");
            last = f;
        }
        assert_eq!(s.factor(100), 0.0);
    }

    #[test]
    fn bad_cosine_configs_are_errors() {
        assert!(LrSchedule::warmup_cosine(10, 10, 0.1).is_err());
        assert!(LrSchedule::warmup_cosine(10, 5, 0.1).is_err());
        assert!(LrSchedule::warmup_cosine(0, 5, -0.1).is_err());
        assert!(LrSchedule::warmup_cosine(0, 5, 1.5).is_err());
        assert!(LrSchedule::warmup_cosine(0, 5, f64::NAN).is_err());
        let err = LrSchedule::warmup_cosine(3, 2, 0.0).unwrap_err();
        assert!(err.to_string().contains("LrSchedule"), "{err}");
    }
}
