//! [`AdamState`]: the optimizer's state as plain data, keyed by parameter name.

use std::collections::BTreeMap;

use ndarray::ArrayD;

use crate::{Error, Float, Result};

/// Everything [`Adam`](crate::Adam) remembers between steps, as plain data.
///
/// Export it with [`Adam::export_state`](crate::Adam::export_state) and restore it with
/// [`Adam::load_state`](crate::Adam::load_state): an optimizer built from the same
/// [`AdamConfig`](crate::AdamConfig) and given the same state continues **bit-identically**
/// (the moments are stored in the parameter type `F`, never converted).
///
/// The configuration (learning rate, betas, schedule, …) is not part of the state; keep the
/// `AdamConfig` with it when checkpointing.
///
/// For serialisation each entry is a name and two or three arrays of the parameter's shape:
/// `m`, `v` and, with AMSGrad, `v_max`, plus the step counter. Store them in any format that
/// keeps `F` exactly (safetensors, raw little-endian bytes, …).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AdamState<F> {
    /// Number of steps taken so far (`t` of the last update; the next step is `t + 1`).
    pub step: u64,
    /// Per-parameter moments, keyed by dotted parameter name. Empty before the first step;
    /// after it, exactly one entry per parameter of the model.
    pub params: BTreeMap<String, ParamState<F>>,
}

/// The moment estimates of one parameter; every array has the parameter's shape.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamState<F> {
    /// First moment `m`: exponential moving average of the gradient.
    pub m: ArrayD<F>,
    /// Second moment `v`: exponential moving average of the squared gradient.
    pub v: ArrayD<F>,
    /// AMSGrad's running maximum of `v` (`Some` exactly when AMSGrad is on).
    pub v_max: Option<ArrayD<F>>,
}

impl<F: Float> ParamState<F> {
    /// Zero moments for a parameter of `shape`, with `v_max` when `amsgrad`.
    pub fn zeros(shape: &[usize], amsgrad: bool) -> Self {
        Self {
            m: ArrayD::zeros(shape),
            v: ArrayD::zeros(shape),
            v_max: amsgrad.then(|| ArrayD::zeros(shape)),
        }
    }

    /// The parameter's shape (that of `m`).
    pub fn shape(&self) -> &[usize] {
        self.m.shape()
    }

    /// Whether the second moment is exactly zero everywhere, i.e. every gradient this
    /// parameter has been stepped with was zero (up to underflow of `g²`).
    pub fn never_had_gradient(&self) -> bool {
        self.v.iter().all(|&x| x == F::zero())
    }
}

impl<F: Float> AdamState<F> {
    /// Checks that the state is internally consistent for an optimizer with or without
    /// AMSGrad: no entries before the first step, `m`, `v` and `v_max` of one shape, `v_max`
    /// present exactly when `amsgrad`, every value finite and the second moments
    /// non-negative.
    ///
    /// Whether the names and shapes match a model is checked by the next step.
    ///
    /// # Errors
    /// [`Error::ParamMismatch`] naming the first offending parameter.
    pub fn validate(&self, amsgrad: bool) -> Result<()> {
        if self.step == 0
            && let Some(name) = self.params.keys().next()
        {
            return Err(mismatch(name, "has moments but the step count is 0".into()));
        }
        for (name, state) in &self.params {
            let shape = state.m.shape();
            if state.v.shape() != shape {
                return Err(mismatch(
                    name,
                    format!("v has shape {:?} but m has {shape:?}", state.v.shape()),
                ));
            }
            match (&state.v_max, amsgrad) {
                (Some(v_max), true) if v_max.shape() != shape => {
                    return Err(mismatch(
                        name,
                        format!("v_max has shape {:?} but m has {shape:?}", v_max.shape()),
                    ));
                }
                (None, true) => {
                    return Err(mismatch(
                        name,
                        "has no v_max but the optimizer uses AMSGrad".into(),
                    ));
                }
                (Some(_), false) => {
                    return Err(mismatch(
                        name,
                        "has v_max but the optimizer does not use AMSGrad".into(),
                    ));
                }
                _ => {}
            }
            let second = state.v.iter().chain(state.v_max.iter().flatten());
            if !state.m.iter().all(|x| x.is_finite())
                || !second.clone().all(|x| x.is_finite() && *x >= F::zero())
            {
                return Err(mismatch(
                    name,
                    "has a non-finite moment or a negative second moment".into(),
                ));
            }
        }
        Ok(())
    }
}

fn mismatch(name: &str, reason: String) -> Error {
    Error::ParamMismatch {
        name: name.to_owned(),
        reason: format!("optimizer state: {reason}"),
    }
}
