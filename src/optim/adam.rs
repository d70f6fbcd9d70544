//! [`Adam`] and [`AdamConfig`]: Adam, AdamW and AMSGrad with PyTorch's update rule.

use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;

use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, Zip, aview_mut1, aview1};
use rayon::prelude::*;

use super::clip::{NormAccumulator, check_max_norm, clip_coefficient};
use super::{AdamState, DecayFilter, LrSchedule, ParamState, invalid};
use crate::error::ExpectedShape;
use crate::exec::{UPDATE_CHUNK, for_each_split, worth_parallel};
use crate::kernels::elementwise::{WideLoop, run_widest};
use crate::{Error, Float, Layer, LayerInput, Result};

const LAYER: &str = "Adam";

/// The hyper-parameters of [`Adam`]. The defaults are PyTorch's `torch.optim.Adam` defaults.
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
    /// Weight decay `λ ≥ 0`, applied to the parameters the [`DecayFilter`] selects.
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
    /// [`Error::InvalidConfig`] naming the field.
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

/// What one [`Adam`] step did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepInfo {
    /// The step number `t` just taken (1 for the first step).
    pub step: u64,
    /// The learning rate used, `lr · schedule.factor(t)`.
    pub lr: f64,
    /// The global gradient norm before clipping (computed in `f64`).
    pub grad_norm: f64,
    /// Whether the gradients were scaled down by `max_grad_norm`.
    pub clipped: bool,
}

/// The Adam optimizer (with AdamW, AMSGrad, clipping and a learning-rate schedule), keyed by
/// parameter name.
///
/// # Update rule
///
/// This is PyTorch's `torch.optim.Adam` / `AdamW` (single-tensor path), step for step. For
/// every parameter `p` with gradient `g`, at step `t = 1, 2, …`:
///
/// ```text
/// lr_t = lr · schedule.factor(t)
/// g    ← g · max_norm / (‖g‖ + 1e-6)          if max_grad_norm is set and ‖g‖ > max_norm
///                                              (‖g‖: global norm over all parameters)
/// if λ ≠ 0 and the DecayFilter selects p:
///     g ← g + λ·p                              Adam  (decoupled_weight_decay = false)
///     p ← p · (1 − lr_t·λ)                     AdamW (decoupled_weight_decay = true)
/// m    ← β1·m + (1 − β1)·g                     (as torch's lerp: m + (1 − β1)·(g − m))
/// v    ← β2·v + (1 − β2)·g²
/// v̂    ← max(v̂, v) with AMSGrad, else v
/// p    ← p − (lr_t / (1 − β1^t)) · m / (sqrt(v̂) / sqrt(1 − β2^t) + ε)
/// ```
///
/// `m`, `v` (and `v̂`) start at zero; `ε` is added outside the square root. On the first
/// step `m/(1 − β1) = g` and `v/(1 − β2) = g²`, so every parameter moves by about
/// `−lr·sign(g)`.
///
/// # Two ways to hold parameters
///
/// * [`Adam::step`] walks a model's parameters through the visitor
///   ([`Layer::for_each_param_mut`]) under their dotted names.
/// * [`Adam::step_slices`] takes `(value, grad)` slice pairs for parameters you keep
///   yourself; pair `i` is named `"i"`.
///
/// # Safety net
///
/// A step is atomic: first every gradient is checked (finite, shaped like its value), every
/// name against the state (no parameter without moments after the first step, no moments
/// without a parameter, no shape change, no duplicate name), and only then is anything
/// written. On error, parameters, gradients and optimizer state are unchanged.
///
/// # Example
///
/// Overfit one batch with a small [`Gpt`](crate::Gpt):
///
/// ```
/// use baregpt::{Adam, AdamConfig, Gpt, GptConfig, Layer};
/// use ndarray::array;
/// use rand::SeedableRng;
///
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// let config = GptConfig { vocab_size: 8, d_model: 16, n_heads: 2, n_layers: 1, context: 4,
///                          mlp_hidden: 32, final_norm: true };
/// let mut gpt = Gpt::<f32>::new(config, &mut rng)?;
/// let mut adam = Adam::new(AdamConfig { max_grad_norm: Some(1.0), ..AdamConfig::adam(1e-2) })?;
/// let (ids, targets) = (array![[1, 2, 3, 4]], array![[2, 3, 4, 5]]);
///
/// let first = gpt.loss(&ids, &targets)?;
/// for _ in 0..30 {
///     gpt.zero_grad();
///     gpt.loss(&ids, &targets)?;
///     gpt.backward()?;
///     adam.step(&mut gpt)?;
/// }
/// let last = gpt.loss(&ids, &targets)?;
/// assert!(last < first / 4.0, "{first} -> {last}");
/// assert_eq!(adam.step_count(), 30);
/// # Ok::<(), baregpt::Error>(())
/// ```
///
/// Plain arrays:
///
/// ```
/// use baregpt::{Adam, AdamConfig};
///
/// let mut adam = Adam::<f64>::new(AdamConfig::adam(0.1))?;
/// let (mut w, mut b) = (vec![1.0, -2.0], vec![0.5]);
/// let (gw, gb) = (vec![0.3, -4.0], vec![0.0]);
/// adam.step_slices(&mut [(&mut w[..], &gw[..]), (&mut b[..], &gb[..])])?;
/// assert!((w[0] - 0.9).abs() < 1e-6 && (w[1] + 1.9).abs() < 1e-6); // −lr·sign(g)
/// assert_eq!(b[0], 0.5);                                             // zero gradient
/// # Ok::<(), baregpt::Error>(())
/// ```
#[derive(Clone)]
pub struct Adam<F: Float> {
    config: AdamConfig,
    decay_filter: DecayFilter,
    state: AdamState<F>,
}

impl<F: Float> fmt::Debug for Adam<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Adam")
            .field("config", &self.config)
            .field("decay_filter", &self.decay_filter)
            .field("step", &self.state.step)
            .field("params_with_state", &self.state.params.len())
            .finish()
    }
}

impl<F: Float> Adam<F> {
    /// A new optimizer with no state; every parameter is decayed ([`DecayFilter::all`]).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when the config does not [validate](AdamConfig::validate).
    pub fn new(config: AdamConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            decay_filter: DecayFilter::all(),
            state: AdamState::default(),
        })
    }

    /// Chooses which parameters receive weight decay (for example [`DecayFilter::usual`]).
    pub fn with_decay_filter(mut self, filter: DecayFilter) -> Self {
        self.decay_filter = filter;
        self
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &AdamConfig {
        &self.config
    }

    /// The weight-decay filter.
    pub fn decay_filter(&self) -> &DecayFilter {
        &self.decay_filter
    }

    /// Sets the base learning rate (the schedule still multiplies it).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `lr` is negative or not finite; nothing changes then.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        AdamConfig {
            lr,
            ..self.config.clone()
        }
        .validate()?;
        self.config.lr = lr;
        Ok(())
    }

    /// The number of steps taken (`t` of the last update).
    pub fn step_count(&self) -> u64 {
        self.state.step
    }

    /// The learning rate the next step will use.
    pub fn next_lr(&self) -> f64 {
        let t = self.state.step.saturating_add(1);
        self.config.schedule.lr(self.config.lr, t)
    }

    /// The state, read-only.
    pub fn state(&self) -> &AdamState<F> {
        &self.state
    }

    /// A copy of the state, for checkpointing. See [`AdamState`].
    pub fn export_state(&self) -> AdamState<F> {
        self.state.clone()
    }

    /// Replaces the state with `state` (for example one from [`Adam::export_state`]).
    ///
    /// # Errors
    /// [`Error::ParamMismatch`] when the state is inconsistent (see [`AdamState::validate`]);
    /// the current state is kept then.
    pub fn load_state(&mut self, state: AdamState<F>) -> Result<()> {
        state.validate(self.config.amsgrad)?;
        self.state = state;
        Ok(())
    }

    /// Forgets all state: the next step is step 1 again.
    pub fn reset(&mut self) {
        self.state = AdamState::default();
    }

    /// The parameters (sorted by name) every one of whose gradients so far has been exactly
    /// zero, which usually means the parameter is not wired into the backward pass. Empty
    /// before the first step.
    pub fn untrained_params(&self) -> Vec<String> {
        self.state
            .params
            .iter()
            .filter(|(_, s)| s.never_had_gradient())
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Fails when some parameter has received only zero gradients in every step so far (see
    /// [`Adam::untrained_params`]). Call it after a few steps to catch a parameter that the
    /// backward pass never reaches.
    ///
    /// # Errors
    /// [`Error::ParamMismatch`] naming the first such parameter.
    pub fn check_all_trained(&self) -> Result<()> {
        match self.untrained_params().into_iter().next() {
            Some(name) => Err(Error::ParamMismatch {
                reason: format!(
                    "its gradient was exactly zero in all {} optimizer steps \
                     (is it connected to the loss?)",
                    self.state.step
                ),
                name,
            }),
            None => Ok(()),
        }
    }

    /// One update of every parameter of `model`, reached through
    /// [`Layer::for_each_param_mut`] under its dotted name. Gradients are read, not reset:
    /// call [`Layer::zero_grad`] before the next backward. For a `Box<dyn Layer<F>>` pass
    /// `boxed.as_mut()`.
    ///
    /// # Errors
    /// [`Error::NonFiniteGradient`] for a NaN or infinite gradient; [`Error::ParamMismatch`]
    /// when, after the first step, a parameter has no state, its shape changed, state exists
    /// for a name the model does not have, or two parameters share a name. On error nothing
    /// is modified.
    pub fn step<X, L>(&mut self, model: &mut L) -> Result<StepInfo>
    where
        X: LayerInput<F>,
        L: Layer<F, X> + ?Sized,
    {
        self.step_set(&mut ModelParams(model, PhantomData))
    }

    /// One update of parameters held as `(value, grad)` slice pairs; pair `i` is named `"i"`
    /// in the state and in errors, so pass the pairs in the same order every step.
    ///
    /// # Errors
    /// As [`Adam::step`], plus [`Error::ShapeMismatch`] when a gradient's length differs from
    /// its value's. On error nothing is modified.
    pub fn step_slices(&mut self, params: &mut [(&mut [F], &[F])]) -> Result<StepInfo> {
        self.step_set(&mut SliceParams(params))
    }

    /// Validates everything, then updates everything.
    fn step_set(&mut self, params: &mut dyn ParamSet<F>) -> Result<StepInfo> {
        let t = self
            .state
            .step
            .checked_add(1)
            .ok_or_else(|| invalid(LAYER, "the step counter overflowed".into()))?;
        let grad_norm = self.validate(params)?;
        let lr = self.config.schedule.lr(self.config.lr, t);
        let clip = self
            .config
            .max_grad_norm
            .and_then(|max_norm| clip_coefficient(grad_norm, max_norm));
        let coeffs = Coeffs::new(&self.config, lr, t, clip);

        let (filter, states) = (&self.decay_filter, &mut self.state.params);
        let amsgrad = self.config.amsgrad;
        params.write(&mut |name, value, grad| {
            let decay = filter.decays(name);
            if !states.contains_key(name) {
                states.insert(name.to_owned(), ParamState::zeros(value.shape(), amsgrad));
            }
            if let Some(state) = states.get_mut(name) {
                update(value, grad, state, &coeffs, decay);
            }
        });
        self.state.step = t;
        Ok(StepInfo {
            step: t,
            lr,
            grad_norm,
            clipped: clip.is_some(),
        })
    }

    /// The read-only pass: checks names, shapes, finiteness and state; returns the global
    /// gradient norm.
    fn validate(&self, params: &mut dyn ParamSet<F>) -> Result<f64> {
        let mut norm = NormAccumulator::default();
        let mut seen = Seen::with_capacity(self.state.params.len());
        let mut first_error: Option<Error> = None;
        params.read(&mut |name, value, grad| {
            if first_error.is_some() {
                return;
            }
            norm.add(name, grad.view());
            first_error = self
                .check_param(name, &value, &grad, &mut seen)
                .and_then(|()| norm.error())
                .err();
        });
        if let Some(err) = first_error {
            return Err(err);
        }
        if self.state.step > 0 {
            if let Some(name) = self
                .state
                .params
                .keys()
                .find(|k| !seen.known.contains(k.as_str()))
            {
                return Err(Error::ParamMismatch {
                    name: name.clone(),
                    reason: "the optimizer has state for it but it was not among the \
                             parameters stepped (removed or renamed, or another model?)"
                        .into(),
                });
            }
        }
        norm.finish(&mut |f| params.read(&mut |name, _, grad| f(name, grad)))
    }

    /// Checks one parameter: unique name, gradient shape, and (after the first step) that
    /// its state exists with the same shape.
    fn check_param<'s>(
        &'s self,
        name: &str,
        value: &ArrayViewD<'_, F>,
        grad: &ArrayViewD<'_, F>,
        seen: &mut Seen<'s>,
    ) -> Result<()> {
        let first_time = match self.state.params.get_key_value(name) {
            Some((key, _)) => seen.known.insert(key.as_str()),
            None => !seen.new.contains(name) && seen.new.insert(name.to_owned()),
        };
        if !first_time {
            return Err(Error::ParamMismatch {
                name: name.to_owned(),
                reason: "two parameters have this name; optimizer state is keyed by name".into(),
            });
        }
        if grad.shape() != value.shape() {
            return Err(Error::ShapeMismatch {
                layer: LAYER,
                what: "grad",
                expected: ExpectedShape(value.shape().iter().map(|&n| Some(n)).collect()),
                actual: grad.shape().to_vec(),
            });
        }
        if self.state.step == 0 {
            return Ok(());
        }
        match self.state.params.get(name) {
            None => Err(Error::ParamMismatch {
                name: name.to_owned(),
                reason: format!(
                    "has no optimizer state after {} steps (added after the first step?)",
                    self.state.step
                ),
            }),
            Some(state) if state.shape() != value.shape() => Err(Error::ParamMismatch {
                name: name.to_owned(),
                reason: format!(
                    "shape changed from {:?} (optimizer state) to {:?}",
                    state.shape(),
                    value.shape()
                ),
            }),
            Some(_) => Ok(()),
        }
    }
}

/// The parameter names one step has visited so far.
struct Seen<'s> {
    /// Names that have optimizer state, borrowed from it (no allocation per name).
    known: HashSet<&'s str>,
    /// Names without state (every name on the first step).
    new: HashSet<String>,
}

impl Seen<'_> {
    fn with_capacity(known: usize) -> Self {
        Self {
            known: HashSet::with_capacity(known),
            new: HashSet::new(),
        }
    }
}

/// The per-step scalars of the update, converted once to `F`.
#[derive(Clone, Copy, Debug)]
struct Coeffs<F> {
    /// `1 − β1`, the weight of torch's `lerp`.
    lerp_weight: F,
    /// Whether torch's lerp takes its `weight < 0.5` branch.
    lerp_low: bool,
    beta2: F,
    one_minus_beta2: F,
    /// `lr_t / (1 − β1^t)`.
    step_size: F,
    /// `sqrt(1 − β2^t)`.
    bc2_sqrt: F,
    eps: F,
    /// `λ` for L2 weight decay (zero for AdamW or no decay).
    l2: F,
    /// `1 − lr_t·λ` for AdamW, `None` otherwise.
    decoupled: Option<F>,
    /// The clipping factor, if clipping.
    grad_scale: Option<F>,
    amsgrad: bool,
}

impl<F: Float> Coeffs<F> {
    fn new(config: &AdamConfig, lr: f64, t: u64, clip: Option<f64>) -> Self {
        // As in torch: the bias corrections are Python floats (f64) computed with `**`.
        let t = t as f64;
        let bias_correction1 = 1.0 - config.beta1.powf(t);
        let bias_correction2 = 1.0 - config.beta2.powf(t);
        let lerp_weight = 1.0 - config.beta1;
        let wd = config.weight_decay;
        let decays = wd != 0.0;
        Self {
            lerp_weight: F::of(lerp_weight),
            lerp_low: lerp_weight.abs() < 0.5,
            beta2: F::of(config.beta2),
            one_minus_beta2: F::of(1.0 - config.beta2),
            step_size: F::of(lr / bias_correction1),
            bc2_sqrt: F::of(bias_correction2.sqrt()),
            eps: F::of(config.eps),
            l2: F::of(if decays && !config.decoupled_weight_decay {
                wd
            } else {
                0.0
            }),
            decoupled: (decays && config.decoupled_weight_decay).then(|| F::of(1.0 - lr * wd)),
            grad_scale: clip.map(F::of),
            amsgrad: config.amsgrad,
        }
    }
}

/// The update of one element, with the per-parameter choices (decay or not) made.
#[derive(Clone, Copy, Debug)]
struct Rule<F> {
    c: Coeffs<F>,
    /// `λ` for L2 decay of this parameter, else zero.
    l2: F,
    /// `1 − lr_t·λ` when this parameter is decayed by AdamW.
    shrink: Option<F>,
}

impl<F: Float> Rule<F> {
    fn new(c: &Coeffs<F>, decay: bool) -> Self {
        Self {
            c: *c,
            l2: if decay { c.l2 } else { F::zero() },
            shrink: c.decoupled.filter(|_| decay),
        }
    }

    /// Updates one element `p` with gradient `g` and its moments.
    #[inline(always)]
    fn apply(&self, p: &mut F, g: F, m: &mut F, v: &mut F, v_max: Option<&mut F>) {
        let c = &self.c;
        let mut g = match c.grad_scale {
            Some(s) => g * s,
            None => g,
        };
        if self.l2 != F::zero() {
            g += self.l2 * *p;
        }
        if let Some(shrink) = self.shrink {
            *p *= shrink;
        }
        *m = if c.lerp_low {
            *m + c.lerp_weight * (g - *m)
        } else {
            g - (g - *m) * (F::one() - c.lerp_weight)
        };
        *v = *v * c.beta2 + c.one_minus_beta2 * g * g;
        let v_hat = match v_max {
            Some(v_max) => {
                *v_max = v_max.max(*v);
                *v_max
            }
            None => *v,
        };
        let denom = v_hat.sqrt() / c.bc2_sqrt + c.eps;
        *p += -c.step_size * (*m / denom);
    }
}

/// [`Rule::apply`] over slices of one length, as a [`WideLoop`]; `v_max` is empty without
/// AMSGrad.
struct UpdateLoop<'a, F> {
    rule: Rule<F>,
    p: &'a mut [F],
    g: &'a [F],
    m: &'a mut [F],
    v: &'a mut [F],
    v_max: &'a mut [F],
}

impl<F: Float> WideLoop for UpdateLoop<'_, F> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        let Self {
            rule,
            p,
            g,
            m,
            v,
            v_max,
        } = self;
        let pgmv = p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut());
        if v_max.is_empty() {
            for (((p, &g), m), v) in pgmv {
                rule.apply(p, g, m, v, None);
            }
        } else {
            for ((((p, &g), m), v), v_max) in pgmv.zip(v_max.iter_mut()) {
                rule.apply(p, g, m, v, Some(v_max));
            }
        }
    }
}

/// Applies one update to one parameter (shapes already checked).
fn update<F: Float>(
    mut value: ArrayViewMutD<'_, F>,
    grad: ArrayViewD<'_, F>,
    state: &mut ParamState<F>,
    c: &Coeffs<F>,
    decay: bool,
) {
    // Shapes were validated; a Layer whose mutable visit disagrees with its read-only one
    // is skipped rather than allowed to panic inside Zip.
    let shape = value.shape();
    if grad.shape() != shape || state.m.shape() != shape || state.v.shape() != shape {
        return;
    }
    let v_max = match state.v_max.as_mut() {
        Some(v_max) if c.amsgrad && v_max.shape() == shape => Some(v_max),
        _ => None,
    };
    let rule = Rule::new(c, decay);
    // Every array laid out alike in one contiguous block: a flat loop over memory order.
    let strides = value.strides();
    let alike = |other: &[isize]| {
        shape
            .iter()
            .zip(strides.iter().zip(other))
            .all(|(&n, (a, b))| n <= 1 || a == b)
    };
    let flat = alike(grad.strides())
        && alike(state.m.strides())
        && alike(state.v.strides())
        && v_max.as_ref().is_none_or(|v_max| alike(v_max.strides()));
    if flat {
        let slices = (
            value.as_slice_memory_order_mut(),
            grad.as_slice_memory_order(),
            state.m.as_slice_memory_order_mut(),
            state.v.as_slice_memory_order_mut(),
        );
        if let (Some(p), Some(g), Some(m), Some(v)) = slices {
            match v_max {
                Some(v_max) => match v_max.as_slice_memory_order_mut() {
                    Some(v_max) => update_slices(&rule, p, g, m, v, v_max),
                    None => update_zip(&rule, value, grad, &mut state.m, &mut state.v, Some(v_max)),
                },
                None => update_slices(&rule, p, g, m, v, &mut []),
            }
            return;
        }
    }
    update_zip(&rule, value, grad, &mut state.m, &mut state.v, v_max);
}

/// The update over contiguous slices of one layout: parallel chunks, each compiled for the
/// widest vector unit. `v_max` is empty without AMSGrad.
fn update_slices<F: Float>(
    rule: &Rule<F>,
    p: &mut [F],
    g: &[F],
    m: &mut [F],
    v: &mut [F],
    v_max: &mut [F],
) {
    let run = |p: &mut [F], g: &[F], m: &mut [F], v: &mut [F], v_max: &mut [F]| {
        run_widest(UpdateLoop {
            rule: *rule,
            p,
            g,
            m,
            v,
            v_max,
        });
    };
    if !worth_parallel(p.len()) {
        return run(p, g, m, v, v_max);
    }
    let pgmv = p
        .par_chunks_mut(UPDATE_CHUNK)
        .zip(g.par_chunks(UPDATE_CHUNK))
        .zip(m.par_chunks_mut(UPDATE_CHUNK))
        .zip(v.par_chunks_mut(UPDATE_CHUNK));
    if v_max.is_empty() {
        pgmv.for_each(|(((p, g), m), v)| run(p, g, m, v, &mut []));
    } else {
        pgmv.zip(v_max.par_chunks_mut(UPDATE_CHUNK))
            .for_each(|((((p, g), m), v), v_max)| run(p, g, m, v, v_max));
    }
}

/// The update through an ndarray `Zip`, for views of any layout.
fn update_zip<F: Float>(
    rule: &Rule<F>,
    mut value: ArrayViewMutD<'_, F>,
    grad: ArrayViewD<'_, F>,
    m: &mut ArrayD<F>,
    v: &mut ArrayD<F>,
    v_max: Option<&mut ArrayD<F>>,
) {
    let work = value.len();
    let zip = Zip::from(&mut value).and(&grad).and(m).and(v);
    // Each element's update is independent, so large tensors are split across threads.
    match v_max {
        Some(v_max) => for_each_split!(work, zip.and(v_max), |p, &g, m, v, v_max| rule.apply(
            p,
            g,
            m,
            v,
            Some(v_max)
        )),
        None => for_each_split!(work, zip, |p, &g, m, v| rule.apply(p, g, m, v, None)),
    }
}

/// The read-only callback of a [`ParamSet`]: `(name, value, grad)`.
type ReadFn<'f, F> = dyn FnMut(&str, ArrayViewD<'_, F>, ArrayViewD<'_, F>) + 'f;
/// The mutable callback of a [`ParamSet`]: `(name, value, grad)`.
type WriteFn<'f, F> = dyn FnMut(&str, ArrayViewMutD<'_, F>, ArrayViewD<'_, F>) + 'f;

/// Something holding named `(value, grad)` pairs that can be read and then written.
trait ParamSet<F> {
    /// Calls `f(name, value, grad)` for every parameter.
    fn read(&self, f: &mut ReadFn<'_, F>);
    /// Calls `f(name, value, grad)` for every parameter, with the value mutable.
    fn write(&mut self, f: &mut WriteFn<'_, F>);
}

/// A model's parameters through the visitor.
struct ModelParams<'a, L: ?Sized, X>(&'a mut L, PhantomData<fn(X)>);

impl<F, X, L> ParamSet<F> for ModelParams<'_, L, X>
where
    F: Float,
    X: LayerInput<F>,
    L: Layer<F, X> + ?Sized,
{
    fn read(&self, f: &mut ReadFn<'_, F>) {
        self.0
            .for_each_param(&mut |name, p| f(name, p.value, p.grad));
    }

    fn write(&mut self, f: &mut WriteFn<'_, F>) {
        self.0
            .for_each_param_mut(&mut |name, p| f(name, p.value, p.grad.view()));
    }
}

/// `(value, grad)` slice pairs named by index.
struct SliceParams<'a, 'b, 'c, F>(&'a mut [(&'b mut [F], &'c [F])]);

impl<F: Float> ParamSet<F> for SliceParams<'_, '_, '_, F> {
    fn read(&self, f: &mut ReadFn<'_, F>) {
        let mut name = String::new();
        for (i, (value, grad)) in self.0.iter().enumerate() {
            f(
                index_name(&mut name, i),
                aview1(value).into_dyn(),
                aview1(grad).into_dyn(),
            );
        }
    }

    fn write(&mut self, f: &mut WriteFn<'_, F>) {
        let mut name = String::new();
        for (i, (value, grad)) in self.0.iter_mut().enumerate() {
            f(
                index_name(&mut name, i),
                aview_mut1(value).into_dyn(),
                aview1(grad).into_dyn(),
            );
        }
    }
}

/// Writes `i` in decimal into `buf` (reusing its allocation) and returns it.
fn index_name(buf: &mut String, i: usize) -> &str {
    use std::fmt::Write;
    buf.clear();
    // Writing to a String cannot fail.
    let _ = write!(buf, "{i}");
    buf
}

#[cfg(test)]
mod tests {
    use ndarray::{Array3, ArrayD, Axis, Dimension, IxDyn, ShapeBuilder, array};
    use rand::SeedableRng;

    use super::*;
    use crate::optim::DecayFilter;
    use crate::param::{Param, ParamPath, ParamVisitor, ParamVisitorMut};
    use crate::{Gpt, GptConfig};

    /// A model that is only named parameters, whose set and shapes a test can change.
    #[derive(Clone, Debug)]
    struct Params(Vec<(String, Param<f64, IxDyn>)>);

    impl Params {
        fn new(specs: &[(&str, &[usize])]) -> Self {
            Self(
                specs
                    .iter()
                    .enumerate()
                    .map(|(k, (name, shape))| {
                        let value = ArrayD::from_shape_fn(IxDyn(shape), |ix| {
                            (k as f64 + ix.slice().iter().sum::<usize>() as f64 * 0.3).sin()
                        });
                        ((*name).to_owned(), Param::new(value))
                    })
                    .collect(),
            )
        }

        fn set_grads(&mut self, seed: f64) {
            for (k, (_, p)) in self.0.iter_mut().enumerate() {
                let mut i = 0.0;
                p.grad.mapv_inplace(|_| {
                    i += 1.0;
                    (seed + 0.7 * i + k as f64).cos()
                });
            }
        }

        fn values(&self) -> Vec<ArrayD<f64>> {
            self.0.iter().map(|(_, p)| p.value.clone()).collect()
        }

        fn grads(&self) -> Vec<ArrayD<f64>> {
            self.0.iter().map(|(_, p)| p.grad.clone()).collect()
        }
    }

    impl Layer<f64> for Params {
        fn kind(&self) -> &'static str {
            "Params"
        }

        fn forward(&mut self, x: &Array3<f64>) -> Result<Array3<f64>> {
            Ok(x.clone())
        }

        fn backward(&mut self, dy: &Array3<f64>) -> Result<Array3<f64>> {
            Ok(dy.clone())
        }

        fn visit_params(&self, path: &mut ParamPath, f: &mut ParamVisitor<'_, f64>) {
            for (name, p) in &self.0 {
                p.visit(name, path, f);
            }
        }

        fn visit_params_mut(&mut self, path: &mut ParamPath, f: &mut ParamVisitorMut<'_, f64>) {
            for (name, p) in &mut self.0 {
                p.visit_mut(name, path, f);
            }
        }
    }

    fn two_params() -> Params {
        Params::new(&[("layer.w", &[2, 3]), ("layer.b", &[3])])
    }

    /// Takes two good steps, then returns the model and optimizer.
    fn stepped(config: AdamConfig) -> (Params, Adam<f64>) {
        let mut model = two_params();
        let mut adam = Adam::new(config).unwrap();
        for s in 0..2 {
            model.set_grads(s as f64);
            adam.step(&mut model).unwrap();
        }
        (model, adam)
    }

    /// Asserts that a failed step changed nothing.
    fn assert_untouched(before: &(Params, Adam<f64>), after: &(Params, Adam<f64>)) {
        // Bitwise, so that a NaN gradient compares equal to itself.
        let bits = |arrays: Vec<ArrayD<f64>>| -> Vec<Vec<u64>> {
            arrays
                .iter()
                .map(|a| a.iter().map(|x| x.to_bits()).collect())
                .collect()
        };
        assert_eq!(bits(before.0.values()), bits(after.0.values()));
        assert_eq!(bits(before.0.grads()), bits(after.0.grads()));
        assert_eq!(before.1.state(), after.1.state());
    }

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

    #[test]
    fn non_finite_gradient_is_an_error_and_changes_nothing() {
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let mut run = stepped(AdamConfig::adam(0.1));
            run.0.set_grads(5.0);
            run.0.0[1].1.grad[[2]] = bad;
            let before = (run.0.clone(), run.1.clone());
            let err = run.1.step(&mut run.0).unwrap_err();
            assert!(
                matches!(&err, Error::NonFiniteGradient { name } if name == "layer.b"),
                "{err}"
            );
            assert_untouched(&before, &run);
            assert_eq!(run.1.step_count(), 2);
        }
    }

    #[test]
    fn shape_change_is_an_error_not_a_reset() {
        let mut run = stepped(AdamConfig::adam(0.1));
        run.0.0[1].1 = Param::new(ArrayD::zeros(IxDyn(&[4])));
        run.0.set_grads(1.0);
        let before = (run.0.clone(), run.1.clone());
        let err = run.1.step(&mut run.0).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(&err, Error::ParamMismatch { name, .. } if name == "layer.b"),
            "{msg}"
        );
        assert!(
            msg.contains("shape changed from [3]") && msg.contains("[4]"),
            "{msg}"
        );
        // `layer.w` was fine and visited first, yet it must not have moved.
        assert_untouched(&before, &run);
    }

    #[test]
    fn parameter_without_state_and_state_without_parameter_are_errors() {
        let mut run = stepped(AdamConfig::adam(0.1));
        run.0
            .0
            .push(("layer.extra".into(), Param::new(ArrayD::zeros(IxDyn(&[2])))));
        let before = (run.0.clone(), run.1.clone());
        let err = run.1.step(&mut run.0).unwrap_err();
        assert!(err.to_string().contains("no optimizer state"), "{err}");
        assert_untouched(&before, &run);

        let mut run = stepped(AdamConfig::adam(0.1));
        run.0.0.remove(0);
        let err = run.1.step(&mut run.0).unwrap_err();
        assert!(
            matches!(&err, Error::ParamMismatch { name, .. } if name == "layer.w"),
            "{err}"
        );
        assert!(
            err.to_string().contains("not among the parameters"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_names_are_an_error() {
        let mut model = Params::new(&[("x", &[2]), ("x", &[2])]);
        model.set_grads(0.0);
        let before = model.values();
        let mut adam = Adam::new(AdamConfig::default()).unwrap();
        let err = adam.step(&mut model).unwrap_err();
        assert!(
            err.to_string().contains("two parameters have this name"),
            "{err}"
        );
        assert_eq!(model.values(), before);
        assert_eq!(adam.step_count(), 0);
        assert!(adam.state().params.is_empty());
    }

    #[test]
    fn slice_gradient_of_the_wrong_length_is_a_shape_error() {
        let mut adam = Adam::<f32>::new(AdamConfig::default()).unwrap();
        let mut w = vec![1.0f32; 3];
        let g = [0.5f32; 2];
        let err = adam.step_slices(&mut [(&mut w[..], &g[..])]).unwrap_err();
        assert_eq!(err.to_string(), "Adam: grad has shape [2], expected [3]");
        assert_eq!(w, [1.0; 3]);
    }

    #[test]
    fn load_state_rejects_inconsistent_state() {
        let (_, adam) = stepped(AdamConfig {
            amsgrad: true,
            ..AdamConfig::adam(0.1)
        });
        let good = adam.export_state();
        let mut plain = Adam::<f64>::new(AdamConfig::adam(0.1)).unwrap();
        assert!(
            plain.load_state(good.clone()).is_err(),
            "v_max without amsgrad"
        );
        let mut target = Adam::<f64>::new(AdamConfig {
            amsgrad: true,
            ..AdamConfig::adam(0.1)
        })
        .unwrap();

        let mut no_step = good.clone();
        no_step.step = 0;
        let mut negative = good.clone();
        negative.params.get_mut("layer.b").unwrap().v[[0]] = -1.0;
        let mut reshaped = good.clone();
        reshaped.params.get_mut("layer.b").unwrap().v = ArrayD::zeros(IxDyn(&[4]));
        let mut nan = good.clone();
        nan.params.get_mut("layer.w").unwrap().m[[0, 0]] = f64::NAN;
        let mut missing_v_max = good.clone();
        missing_v_max.params.get_mut("layer.w").unwrap().v_max = None;
        for bad in [no_step, negative, reshaped, nan, missing_v_max] {
            assert!(target.load_state(bad).is_err());
            assert_eq!(target.step_count(), 0);
        }
        target.load_state(good.clone()).unwrap();
        assert_eq!(target.state(), &good);
    }

    #[test]
    fn a_parameter_that_never_gets_a_gradient_is_reported() {
        let mut adam = Adam::<f32>::new(AdamConfig::adam(0.01)).unwrap();
        assert!(adam.check_all_trained().is_ok()); // nothing known yet
        let (mut a, mut b) = (vec![1.0f32, 2.0], vec![3.0f32]);
        for s in 0..3 {
            let ga = [0.1 * s as f32 + 0.1, -0.2];
            let gb = [0.0f32];
            adam.step_slices(&mut [(&mut a[..], &ga[..]), (&mut b[..], &gb[..])])
                .unwrap();
        }
        assert_eq!(adam.untrained_params(), ["1"]);
        let err = adam.check_all_trained().unwrap_err();
        assert!(err.to_string().contains("all 3 optimizer steps"), "{err}");
        assert_eq!(b, [3.0]);
    }

    #[test]
    fn every_gpt_parameter_is_trained_including_layer_norm() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let config = GptConfig {
            vocab_size: 7,
            d_model: 8,
            n_heads: 2,
            n_layers: 2,
            context: 5,
            mlp_hidden: 16,
            final_norm: true,
        };
        let mut gpt = Gpt::<f64>::new(config, &mut rng).unwrap();
        let mut adam = Adam::new(AdamConfig::adam(1e-2)).unwrap();
        let before: Vec<ArrayD<f64>> = {
            let mut v = Vec::new();
            gpt.for_each_param(&mut |_, p| v.push(p.value.to_owned()));
            v
        };
        for _ in 0..2 {
            gpt.zero_grad();
            gpt.loss(&array![[1, 2, 3, 4]], &array![[2, 3, 4, 5]])
                .unwrap();
            gpt.backward().unwrap();
            adam.step(&mut gpt).unwrap();
        }
        adam.check_all_trained().unwrap();
        assert_eq!(adam.state().params.len(), gpt.param_names().len());
        let mut i = 0;
        gpt.for_each_param(&mut |name, p| {
            assert_ne!(p.value, before[i].view(), "{name} did not move");
            i += 1;
        });
    }

    #[test]
    fn adamw_decays_only_what_the_filter_selects() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let config = GptConfig {
            vocab_size: 5,
            d_model: 4,
            n_heads: 1,
            n_layers: 1,
            context: 3,
            mlp_hidden: 8,
            final_norm: true,
        };
        let mut gpt = Gpt::<f64>::new(config, &mut rng).unwrap();
        let mut before = Vec::new();
        gpt.for_each_param(&mut |name, p| before.push((name.to_owned(), p.value.to_owned())));
        let (lr, wd) = (0.1, 0.5);
        let mut adam = Adam::new(AdamConfig::adamw(lr, wd))
            .unwrap()
            .with_decay_filter(DecayFilter::usual());
        // Zero gradients: the Adam part of the update is exactly 0, only decay remains.
        let info = adam.step(&mut gpt).unwrap();
        assert_eq!((info.grad_norm, info.clipped), (0.0, false));
        let mut i = 0;
        gpt.for_each_param(&mut |name, p| {
            let (_, old) = &before[i];
            i += 1;
            let expect = if crate::optim::is_usually_excluded(name) {
                old.clone()
            } else {
                old.mapv(|x| x * (1.0 - lr * wd))
            };
            assert_eq!(p.value, expect.view(), "{name}");
        });
        assert_eq!(i, before.len());
    }

    #[test]
    fn l2_weight_decay_moves_parameters_even_with_zero_gradients() {
        let mut adam = Adam::<f64>::new(AdamConfig {
            weight_decay: 0.1,
            ..AdamConfig::adam(0.01)
        })
        .unwrap();
        let mut w = vec![2.0, -3.0, 0.0];
        adam.step_slices(&mut [(&mut w[..], &[0.0; 3][..])])
            .unwrap();
        // g = λ·p, so the first step moves by −lr·sign(p) (and 0 stays 0).
        assert!(
            (w[0] - 1.99).abs() < 1e-9 && (w[1] + 2.99).abs() < 1e-9,
            "{w:?}"
        );
        assert_eq!(w[2], 0.0);
    }

    #[test]
    fn clipping_inside_adam_leaves_stored_gradients_alone() {
        let mut model = two_params();
        model.set_grads(0.0);
        let grads = model.grads();
        let norm: f64 = grads.iter().flatten().map(|g| g * g).sum::<f64>().sqrt();
        let mut adam = Adam::new(AdamConfig {
            max_grad_norm: Some(norm / 2.0),
            ..AdamConfig::adam(0.1)
        })
        .unwrap();
        let info = adam.step(&mut model).unwrap();
        assert!(info.clipped);
        assert!((info.grad_norm - norm).abs() < 1e-12);
        assert_eq!(model.grads(), grads);
        // Adam's first step is scale-invariant: clipping changes the update only through eps.
        let mut unclipped = two_params();
        unclipped.set_grads(0.0);
        Adam::new(AdamConfig::adam(0.1))
            .unwrap()
            .step(&mut unclipped)
            .unwrap();
        for (a, b) in model.values().iter().zip(unclipped.values()) {
            assert!((a - &b).iter().all(|d| d.abs() < 1e-6));
        }
    }

    #[test]
    fn boxed_layers_step_through_as_mut() {
        use crate::layers::{Linear, Sequential};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut model: Box<dyn Layer<f64>> = Box::new(
            Sequential::new()
                .push(Linear::new(3, 4, true, &mut rng))
                .push(Linear::new(4, 2, false, &mut rng)),
        );
        let x = Array3::from_shape_fn((2, 3, 3), |(b, t, c)| (b + t + c) as f64 * 0.1);
        model.forward(&x).unwrap();
        model.backward(&Array3::ones((2, 3, 2))).unwrap();
        let mut adam = Adam::new(AdamConfig::adam(0.01)).unwrap();
        let info = adam.step(model.as_mut()).unwrap();
        assert!(info.grad_norm > 0.0);
        let names: Vec<&String> = adam.state().params.keys().collect();
        assert_eq!(names.len(), model.param_names().len());
    }

    #[test]
    fn huge_but_finite_f64_gradients_are_stepped() {
        let mut adam = Adam::<f64>::new(AdamConfig {
            max_grad_norm: Some(1.0),
            ..AdamConfig::adam(0.01)
        })
        .unwrap();
        let mut w = [0.0, 0.0];
        let info = adam
            .step_slices(&mut [(&mut w[..], &[3e200, -4e200][..])])
            .unwrap();
        assert!((info.grad_norm / 5e200 - 1.0).abs() < 1e-15, "{info:?}");
        assert!(info.clipped);
        assert!(
            (w[0] + 0.01).abs() < 1e-9 && (w[1] - 0.01).abs() < 1e-9,
            "{w:?}"
        );
    }

    #[test]
    fn schedule_drives_the_learning_rate_and_reset_restarts_it() {
        let mut adam = Adam::<f64>::new(AdamConfig {
            schedule: LrSchedule::linear_warmup(4).unwrap(),
            ..AdamConfig::adam(0.4)
        })
        .unwrap();
        let mut w = [1.0];
        let mut lrs = Vec::new();
        for _ in 0..5 {
            assert_eq!(
                adam.next_lr(),
                0.4 * LrSchedule::linear_warmup(4)
                    .unwrap()
                    .factor(adam.step_count() + 1)
            );
            lrs.push(
                adam.step_slices(&mut [(&mut w[..], &[1.0][..])])
                    .unwrap()
                    .lr,
            );
        }
        assert_eq!(lrs, [0.1, 0.2, 0.30000000000000004, 0.4, 0.4]);
        adam.reset();
        assert_eq!((adam.step_count(), adam.next_lr()), (0, 0.1));
        assert!(adam.state().params.is_empty());
        let debug = format!("{adam:?}");
        assert!(
            debug.contains("step: 0") && debug.contains("DecayFilter::all()"),
            "{debug}"
        );
    }

    /// Runs `steps` updates of one parameter through [`update`] with the arrays laid out by
    /// `layout` (which receives and returns standard-layout data) and returns the value and
    /// state afterwards, in standard layout.
    fn run_updates<F: Float>(
        config: &AdamConfig,
        decay: bool,
        init: &ArrayD<F>,
        grads: &[ArrayD<F>],
        layout: Layout,
    ) -> (ArrayD<F>, ParamState<F>) {
        // A contiguous array with its axes reversed in memory: (a, b) stored as (b, a).
        let fortran = |a: &ArrayD<F>| {
            let mut f = ArrayD::zeros(IxDyn(a.shape()).f());
            f.assign(a);
            f
        };
        // Every other element of an array twice as long: never contiguous.
        let strided = |a: &ArrayD<F>| {
            let mut shape = a.shape().to_vec();
            shape.push(2);
            let mut wide = ArrayD::zeros(IxDyn(&shape));
            wide.index_axis_mut(Axis(shape.len() - 1), 0).assign(a);
            wide
        };
        let narrow = |w: &mut ArrayD<F>| {
            let last = w.ndim() - 1;
            w.index_axis_mut(Axis(last), 0).to_owned()
        };
        let mut state = ParamState::zeros(init.shape(), config.amsgrad);
        let mut value = match layout {
            Layout::Standard | Layout::Strided => init.clone(),
            Layout::Mixed => fortran(init),
            Layout::Fortran => {
                state.m = fortran(&state.m);
                state.v = fortran(&state.v);
                state.v_max = state.v_max.as_ref().map(fortran);
                fortran(init)
            }
        };
        let mut wide_value = strided(init);
        for (t, grad) in grads.iter().enumerate() {
            let t = t as u64 + 1;
            let lr = config.schedule.lr(config.lr, t);
            let coeffs = Coeffs::new(config, lr, t, config.max_grad_norm.map(|_| 0.75));
            match layout {
                Layout::Standard => {
                    update(value.view_mut(), grad.view(), &mut state, &coeffs, decay)
                }
                Layout::Fortran | Layout::Mixed => update(
                    value.view_mut(),
                    fortran(grad).view(),
                    &mut state,
                    &coeffs,
                    decay,
                ),
                Layout::Strided => {
                    let wide_grad = strided(grad);
                    let last = Axis(wide_value.ndim() - 1);
                    update(
                        wide_value.index_axis_mut(last, 0),
                        wide_grad.index_axis(last, 0),
                        &mut state,
                        &coeffs,
                        decay,
                    );
                }
            }
        }
        if let Layout::Strided = layout {
            value = narrow(&mut wide_value);
        }
        let standard = |a: &ArrayD<F>| a.as_standard_layout().into_owned();
        let state = ParamState {
            m: standard(&state.m),
            v: standard(&state.v),
            v_max: state.v_max.as_ref().map(standard),
        };
        (standard(&value), state)
    }

    /// How [`run_updates`] lays out its arrays.
    #[derive(Clone, Copy, Debug)]
    enum Layout {
        /// Contiguous, row-major: the flat slice path.
        Standard,
        /// Contiguous with the axes reversed in memory, state included: the slice path over
        /// memory order.
        Fortran,
        /// Value and gradient are every other element of a larger array: the `Zip` path.
        Strided,
        /// Value and gradient with reversed axes, the state row-major: all contiguous, but
        /// not alike, so the `Zip` path.
        Mixed,
    }

    /// Asserts that the flat (parallel, vectorised) update and the `Zip` fallback agree bit
    /// for bit, on a tensor large enough to be split across threads.
    fn fast_and_fallback_agree<F: Float>() {
        use rand::RngExt;
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let shape = [181, 233]; // 42 173 elements: several parallel chunks and a ragged end
        let mut random = |scale: f64| {
            ArrayD::from_shape_simple_fn(IxDyn(&shape), || {
                F::of(scale * rng.random_range(-1.0..1.0))
            })
        };
        let init = random(1.0);
        let mut grads: Vec<ArrayD<F>> = (0..4).map(|k| random(10f64.powi(k - 2))).collect();
        grads[1][[3, 5]] = F::zero();
        let configs = [
            AdamConfig::adam(1e-2),
            AdamConfig {
                amsgrad: true,
                max_grad_norm: Some(1.0),
                ..AdamConfig::adamw(3e-3, 0.1)
            },
            AdamConfig {
                weight_decay: 0.05,
                beta1: 0.3, // torch's lerp takes its other branch
                schedule: LrSchedule::linear_warmup(3).unwrap(),
                ..AdamConfig::adam(1e-1)
            },
        ];
        for config in &configs {
            for decay in [true, false] {
                let fast = run_updates(config, decay, &init, &grads, Layout::Standard);
                assert_ne!(fast.0, init, "{config:?}: nothing moved");
                for layout in [Layout::Fortran, Layout::Strided, Layout::Mixed] {
                    let other = run_updates(config, decay, &init, &grads, layout);
                    let bits = |a: &ArrayD<F>| -> Vec<u64> {
                        a.iter().map(|x| x.to_f64_exact().to_bits()).collect()
                    };
                    assert!(
                        bits(&fast.0) == bits(&other.0),
                        "{config:?} {layout:?}: values"
                    );
                    assert!(
                        bits(&fast.1.m) == bits(&other.1.m),
                        "{config:?} {layout:?}: m"
                    );
                    assert!(
                        bits(&fast.1.v) == bits(&other.1.v),
                        "{config:?} {layout:?}: v"
                    );
                    assert_eq!(
                        fast.1.v_max.as_ref().map(bits),
                        other.1.v_max.as_ref().map(bits),
                        "{config:?} {layout:?}: v_max"
                    );
                }
            }
        }
    }

    #[test]
    fn flat_update_and_zip_fallback_agree_bitwise() {
        fast_and_fallback_agree::<f32>();
        fast_and_fallback_agree::<f64>();
    }
}
