//! [`Adam`]: Adam, AdamW and AMSGrad with PyTorch's update rule, keyed by parameter name,
//! with atomic steps. The rule itself is in `update.rs`, the hyper-parameters in
//! `config.rs`.

use std::collections::HashSet;
use std::fmt;

use ndarray::{ArrayViewD, ArrayViewMutD, aview_mut1, aview1};

use super::clip::{Norm, NormAccumulator};
use super::update::{Coeffs, update};
use super::{AdamConfig, AdamState, DecayFilter, ParamState, invalid};
use crate::error::ExpectedShape;
use crate::param::Params;
use crate::{Error, Float, Result};

const LAYER: &str = "Adam";

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
///   ([`Params::for_each_param_mut`]) under their dotted names.
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
/// use baregpt::{Adam, AdamConfig, Gpt, GptConfig, prelude::*};
/// use ndarray::array;
/// use rand::SeedableRng;
///
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// let config = GptConfig { mlp_hidden: 32, ..GptConfig::with_sizes(8, 16, 2, 1, 4) };
/// let mut gpt = Gpt::<f32>::new(config, &mut rng)?;
/// let mut adam = Adam::new(AdamConfig { max_grad_norm: Some(1.0), ..AdamConfig::adam(1e-2) })?;
/// let (ids, targets) = (array![[1, 2, 3, 4]], array![[2, 3, 4, 5]]);
///
/// let first = gpt.loss(&ids, &targets)?;
/// for _ in 0..30 {
///     gpt.zero_grad();
///     gpt.loss(&ids, &targets)?;
///     gpt.backward_loss()?;
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
    /// [`Error::InvalidConfig`] when the config does not [validate](AdamConfig::validate), or a
    /// setting finite in `f64` is not finite in `F` (an `lr` of `1e39` in `f32`).
    pub fn new(config: AdamConfig) -> Result<Self> {
        validate_in::<F>(&config)?;
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
    /// [`Error::InvalidConfig`] when `lr` is negative or not finite (in `f64` or in `F`);
    /// nothing changes then.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        validate_in::<F>(&AdamConfig {
            lr,
            ..self.config.clone()
        })?;
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
    /// [`Params::for_each_param_mut`] under its dotted name. Gradients are read, not reset:
    /// call [`Params::zero_grad`] before the next backward. Anything with parameters goes:
    /// a layer, a model, a `Box<dyn Layer<F>>`.
    ///
    /// # Errors
    /// [`Error::NonFiniteGradient`] for a NaN or infinite gradient; [`Error::ParamMismatch`]
    /// when, after the first step, a parameter has no state, its shape changed, state exists
    /// for a name the model does not have, or two parameters share a name. On error nothing
    /// is modified.
    pub fn step<P: Params<F> + ?Sized>(&mut self, model: &mut P) -> Result<StepInfo> {
        self.step_set(&mut ModelParams(model))
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
        let (norm, largest, l2_term) = self.validate(params)?;
        let grad_norm = norm.value();
        let lr = self.config.schedule.lr(self.config.lr, t);
        let clip = self
            .config
            .max_grad_norm
            .and_then(|max_norm| norm.clip_coefficient(max_norm));
        // The second moment stores g²: a gradient whose square overflows `F` would leave an
        // infinite moment (and a state that cannot be loaded back), so it is refused here,
        // before anything is written. `|g| ≤ √MAX / 2` keeps `β₂·v + (1 − β₂)·g²` finite
        // (`g` after clipping, plus `λ·|p|` under L2 decay).
        if let Some((name, max_abs)) = largest {
            let magnitude = max_abs * clip.unwrap_or(1.0) + l2_term;
            let limit = F::max_value().to_f64_exact().sqrt() / 2.0;
            if magnitude > limit {
                return Err(Error::GradientTooLarge {
                    name,
                    magnitude,
                    limit,
                    float: F::NAME,
                });
            }
        }
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
    /// gradient norm, the parameter with the largest gradient magnitude, and `λ·max|p|` over
    /// the parameters under L2 decay (0 without it).
    #[allow(clippy::type_complexity)]
    fn validate(&self, params: &mut dyn ParamSet<F>) -> Result<(Norm, Option<(String, f64)>, f64)> {
        let mut norm = NormAccumulator::default();
        let mut largest: Option<(String, f64)> = None;
        let l2 = self.config.weight_decay != 0.0 && !self.config.decoupled_weight_decay;
        let mut max_value = 0.0f64;
        let mut seen = Seen::with_capacity(self.state.params.len());
        let mut first_error: Option<Error> = None;
        params.read(&mut |name, value, grad| {
            if first_error.is_some() {
                return;
            }
            norm.add(name, grad.view());
            if largest.as_ref().is_none_or(|(_, m)| norm.max_abs() > *m) {
                largest = Some((name.to_owned(), norm.max_abs()));
            }
            // Coupled (L2) decay adds `λ·p` to the gradient before its square is taken, so
            // the values count too (one more read, only with L2 decay on).
            if l2 && self.decay_filter.decays(name) {
                let p = value
                    .iter()
                    .fold(0.0f64, |m, v| m.max(v.to_f64_exact().abs()));
                max_value = max_value.max(p);
            }
            first_error = self
                .check_param(name, &value, &grad, &mut seen)
                .and_then(|()| norm.error())
                .err();
        });
        if let Some(err) = first_error {
            return Err(err);
        }
        if self.state.step > 0
            && let Some(name) = self
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
        let grad_norm = norm.finish(&mut |f| params.read(&mut |name, _, grad| f(name, grad)))?;
        Ok((grad_norm, largest, self.config.weight_decay * max_value))
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
struct ModelParams<'a, P: ?Sized>(&'a mut P);

impl<F: Float, P: Params<F> + ?Sized> ParamSet<F> for ModelParams<'_, P> {
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

/// [`AdamConfig::validate`], and every setting finite in `F` too.
fn validate_in<F: Float>(config: &AdamConfig) -> Result<()> {
    config.validate()?;
    let settings = [
        ("lr", Some(config.lr)),
        ("eps", Some(config.eps)),
        ("weight_decay", Some(config.weight_decay)),
        // (`max_grad_norm` is used in f64 only.)
    ];
    for (field, x) in settings {
        if let Some(x) = x.filter(|&x| !F::of(x).is_finite()) {
            return Err(invalid(
                LAYER,
                format!("{field} {x} is finite in f64 but not in {}", F::NAME),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use ndarray::{ArrayD, Dimension, IxDyn};

    use super::*;
    use crate::optim::LrSchedule;
    use crate::param::{Param, ParamPath, ParamVisitor, ParamVisitorMut};

    /// A model that is only named parameters, whose set and shapes a test can change.
    #[derive(Clone, Debug)]
    struct Named(Vec<(String, Param<f64, IxDyn>)>);

    impl Named {
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

    impl Params<f64> for Named {
        fn visit_params<'a>(&'a self, path: &mut ParamPath, f: &mut ParamVisitor<'a, '_, f64>) {
            for (name, p) in &self.0 {
                path.scoped(name, |path| p.visit_params(path, f));
            }
        }

        fn visit_params_mut<'a>(
            &'a mut self,
            path: &mut ParamPath,
            f: &mut ParamVisitorMut<'a, '_, f64>,
        ) {
            for (name, p) in &mut self.0 {
                path.scoped(name, |path| p.visit_params_mut(path, f));
            }
        }
    }

    fn two_params() -> Named {
        Named::new(&[("layer.w", &[2, 3]), ("layer.b", &[3])])
    }

    /// Takes two good steps, then returns the model and optimizer.
    fn stepped(config: AdamConfig) -> (Named, Adam<f64>) {
        let mut model = two_params();
        let mut adam = Adam::new(config).unwrap();
        for s in 0..2 {
            model.set_grads(s as f64);
            adam.step(&mut model).unwrap();
        }
        (model, adam)
    }

    /// Asserts that a failed step changed nothing.
    fn assert_untouched(before: &(Named, Adam<f64>), after: &(Named, Adam<f64>)) {
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
        let mut model = Named::new(&[("x", &[2]), ("x", &[2])]);
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
}
