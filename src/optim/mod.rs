//! Training: the [`Adam`] optimizer (Adam, AdamW, AMSGrad), global gradient-norm clipping,
//! learning-rate schedules and weight-decay filters.
//!
//! * [`Adam`] / [`AdamConfig`]: PyTorch's update rule, state keyed by dotted parameter
//!   name, atomic steps, exportable [`AdamState`].
//! * [`clip_grad_norm`] / [`grad_norm`]: the global norm over exactly a model's parameters.
//! * [`LrSchedule`]: constant, linear warmup, warmup + cosine decay to a floor.
//! * [`DecayFilter`]: which parameters weight decay applies to.

mod adam;
mod clip;
mod config;
mod decay;
mod schedule;
mod state;
mod update;

pub use adam::{Adam, StepInfo};
pub use clip::{clip_grad_norm, clip_grad_norm_slices, grad_norm};
pub use config::AdamConfig;
pub use decay::{DecayFilter, is_usually_excluded};
pub use schedule::LrSchedule;
pub use state::{AdamState, ParamState};

/// An [`Error::InvalidConfig`](crate::Error::InvalidConfig) from `layer` with `reason`.
fn invalid(layer: &'static str, reason: String) -> crate::Error {
    crate::Error::InvalidConfig { layer, reason }
}
