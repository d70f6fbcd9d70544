//! The Adam update rule, element by element ([`Rule::apply`]), and the loops that run it
//! over a parameter: flat, vectorised and parallel when the arrays are laid out alike, an
//! ndarray `Zip` otherwise. The two give bit-identical results.

use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, Zip};
use rayon::prelude::*;

use super::{AdamConfig, ParamState};
use crate::Float;
use crate::exec::{UPDATE_CHUNK, for_each_split, worth_parallel};
use crate::kernels::elementwise::{WideLoop, run_widest};

/// The per-step scalars of the update, converted once to `F`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Coeffs<F> {
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
    pub(super) fn new(config: &AdamConfig, lr: f64, t: u64, clip: Option<f64>) -> Self {
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
pub(super) fn update<F: Float>(
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

#[cfg(test)]
mod tests {
    use ndarray::{Axis, IxDyn, ShapeBuilder};
    use rand::SeedableRng;

    use super::*;
    use crate::optim::LrSchedule;

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
