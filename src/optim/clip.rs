//! Global gradient-norm clipping over exactly a model's parameters.
//!
//! The global norm is `‖g‖ = sqrt(Σ_p Σ_i g_p,i²)` over every parameter `p` the model's
//! visitor reaches, and nothing else: there is no side table of gradients that could hold
//! "orphans" belonging to no parameter (the original counted those). Clipping follows
//! PyTorch's `clip_grad_norm_`: when `‖g‖ > max_norm` every gradient is multiplied by
//! `max_norm / (‖g‖ + 1e-6)`, so afterwards the norm is at most `max_norm`.
//!
//! The norm is accumulated in `f64` whatever the parameter type. Gradients are checked first:
//! a NaN or infinity anywhere is [`Error::NonFiniteGradient`] naming the parameter, and
//! nothing is modified.

use ndarray::{ArrayViewD, aview1};
use rayon::prelude::*;

use crate::exec::{LANES, NORM_CHUNK, worth_parallel};
use crate::kernels::elementwise::{WideLoop, run_widest};
use crate::param::Params;
use crate::{Error, Float, Result};

/// Added to the norm in the clipping coefficient, as PyTorch does.
const CLIP_EPS: f64 = 1e-6;

/// The global L2 norm of every parameter gradient of `model`.
///
/// # Errors
/// [`Error::NonFiniteGradient`] naming the first parameter with a NaN or infinite gradient.
///
/// # Example
///
/// ```
/// use baregpt::{layers::Linear, optim::grad_norm, prelude::*};
/// use ndarray::Array3;
/// use rand::SeedableRng;
///
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// let mut linear = Linear::<f64>::new(2, 2, true, &mut rng)?;
/// linear.forward(&Array3::zeros((1, 1, 2)))?;
/// linear.backward(&Array3::from_elem((1, 1, 2), 1.0))?; // dW = 0, db = [1, 1]
/// assert!((grad_norm(&linear)? - 2f64.sqrt()).abs() < 1e-15);
/// # Ok::<(), baregpt::Error>(())
/// ```
pub fn grad_norm<F: Float, P: Params<F> + ?Sized>(model: &P) -> Result<f64> {
    Ok(norm_parts(&mut |f| model.for_each_param(&mut |name, p| f(name, p.grad)))?.value())
}

/// Scales the gradients of `model` so that their global norm is at most `max_norm`, and
/// returns the norm **before** clipping.
///
/// Nothing changes when the norm is already at most `max_norm`. Otherwise every gradient is
/// multiplied by `max_norm / (norm + 1e-6)`.
///
/// # Errors
/// [`Error::InvalidConfig`] when `max_norm` is not positive and finite;
/// [`Error::NonFiniteGradient`] naming the first parameter with a NaN or infinite gradient.
/// On error no gradient is modified.
///
/// # Example
///
/// ```
/// use baregpt::{layers::Linear, optim::{clip_grad_norm, grad_norm}, prelude::*};
/// use ndarray::Array3;
/// use rand::SeedableRng;
///
/// let mut rng = rand::rngs::StdRng::seed_from_u64(0);
/// let mut linear = Linear::<f64>::new(3, 4, true, &mut rng)?;
/// linear.forward(&Array3::ones((2, 5, 3)))?;
/// linear.backward(&Array3::ones((2, 5, 4)))?;
/// let before = clip_grad_norm(&mut linear, 1.0)?;
/// assert!(before > 1.0);
/// assert!(grad_norm(&linear)? <= 1.0);
/// # Ok::<(), baregpt::Error>(())
/// ```
pub fn clip_grad_norm<F: Float, P: Params<F> + ?Sized>(
    model: &mut P,
    max_norm: f64,
) -> Result<f64> {
    check_max_norm("clip_grad_norm", max_norm)?;
    let norm = norm_parts(&mut |f| model.for_each_param(&mut |name, p| f(name, p.grad)))?;
    if let Some(coef) = norm.clip_coefficient(max_norm) {
        let coef = F::of(coef);
        model.for_each_param_mut(&mut |_, mut p| p.grad.mapv_inplace(|g| g * coef));
    }
    Ok(norm.value())
}

/// [`clip_grad_norm`] for gradients held as plain slices; returns the norm before clipping.
///
/// A non-finite gradient is reported under its index in `grads` (`"0"`, `"1"`, …).
///
/// # Errors
/// As [`clip_grad_norm`]; on error no gradient is modified.
///
/// # Example
///
/// ```
/// use baregpt::optim::clip_grad_norm_slices;
///
/// let (mut a, mut b) = (vec![3.0f64, 0.0], vec![4.0f64]);
/// let norm = clip_grad_norm_slices(&mut [&mut a[..], &mut b[..]], 1.0)?;
/// assert_eq!(norm, 5.0);
/// assert!((a[0] - 0.6).abs() < 1e-6 && (b[0] - 0.8).abs() < 1e-6);
/// # Ok::<(), baregpt::Error>(())
/// ```
pub fn clip_grad_norm_slices<F: Float>(grads: &mut [&mut [F]], max_norm: f64) -> Result<f64> {
    check_max_norm("clip_grad_norm_slices", max_norm)?;
    let norm = norm_parts(&mut |f| {
        let mut name = String::new();
        for (i, g) in grads.iter().enumerate() {
            name.clear();
            name.push_str(&i.to_string());
            f(&name, aview1(g).into_dyn());
        }
    })?;
    if let Some(coef) = norm.clip_coefficient(max_norm) {
        let coef = F::of(coef);
        for g in grads.iter_mut() {
            g.iter_mut().for_each(|x| *x *= coef);
        }
    }
    Ok(norm.value())
}

/// A global gradient norm as `scale · unit`: `scale` is 1 unless the plain sum of squares
/// overflowed `f64`, and then the largest magnitude, so that a norm above `f64::MAX` (whose
/// value is +inf) still gives a finite, correct clipping factor.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Norm {
    scale: f64,
    unit: f64,
}

impl Norm {
    /// The norm (+inf when it exceeds `f64::MAX`).
    pub(crate) fn value(&self) -> f64 {
        self.scale * self.unit
    }

    /// The factor `max_norm / (norm + 1e-6)` when `norm > max_norm`, `None` when no clipping
    /// is needed. For a norm beyond `f64::MAX` it is `(max_norm / scale) / unit`, which is
    /// finite: clipping then scales the gradients to `max_norm` instead of zeroing them.
    pub(crate) fn clip_coefficient(&self, max_norm: f64) -> Option<f64> {
        let norm = self.value();
        (norm > max_norm).then(|| match norm.is_finite() {
            true => max_norm / (norm + CLIP_EPS),
            false => (max_norm / self.scale) / self.unit,
        })
    }
}

/// Checks that a clipping threshold is positive and finite.
pub(crate) fn check_max_norm(who: &'static str, max_norm: f64) -> Result<()> {
    if max_norm > 0.0 && max_norm.is_finite() {
        Ok(())
    } else {
        Err(Error::InvalidConfig {
            layer: who,
            reason: format!("max_norm must be positive and finite, got {max_norm}"),
        })
    }
}

/// A visit over named gradients: it calls its argument once per `(name, grad)`.
pub(crate) type GradVisit<'a, F> = dyn FnMut(&mut dyn FnMut(&str, ArrayViewD<'_, F>)) + 'a;

/// The global norm of the gradients that `visit` reaches, or the first non-finite one as an
/// error. `visit` may be called twice (the second time only when the plain sum of squares
/// overflows `f64`).
pub(crate) fn norm_parts<F: Float>(visit: &mut GradVisit<'_, F>) -> Result<Norm> {
    let mut acc = NormAccumulator::default();
    visit(&mut |name, grad| acc.add(name, grad));
    acc.finish(visit)
}

/// [`norm_parts`] as a number.
#[cfg(test)]
pub(crate) fn norm_of<F: Float>(visit: &mut GradVisit<'_, F>) -> Result<f64> {
    Ok(norm_parts(visit)?.value())
}

/// Accumulates the sum of squares and the largest magnitude of gradients, and remembers the
/// first parameter with a non-finite gradient.
#[derive(Debug, Default)]
pub(crate) struct NormAccumulator {
    sum_sq: f64,
    max_abs: f64,
    non_finite: Option<String>,
    /// Per-chunk results of a parallel pass, kept to reuse the allocation.
    partials: Vec<(f64, f64)>,
}

impl NormAccumulator {
    /// Adds one gradient (ignored once a non-finite one has been seen).
    pub(crate) fn add<F: Float>(&mut self, name: &str, grad: ArrayViewD<'_, F>) {
        if self.non_finite.is_some() {
            return;
        }
        let (sum_sq, max_abs) = match grad.as_slice_memory_order() {
            Some(slice) => {
                let (sum_sq, max_abs) = slice_sum_sq(slice, |g| g, &mut self.partials);
                (sum_sq, self.max_abs.max(max_abs))
            }
            None => {
                let (mut sum_sq, mut max_abs) = (0.0f64, self.max_abs);
                for &g in grad.iter() {
                    let g = g.to_f64_exact();
                    sum_sq += g * g;
                    max_abs = max_abs.max(g.abs());
                }
                (sum_sq, max_abs)
            }
        };
        if !max_abs.is_finite() || sum_sq.is_nan() {
            self.non_finite = Some(name.to_owned());
            return;
        }
        self.sum_sq += sum_sq;
        self.max_abs = max_abs;
    }

    /// The largest gradient magnitude seen so far.
    pub(crate) fn max_abs(&self) -> f64 {
        self.max_abs
    }

    /// The first parameter seen with a non-finite gradient, as an error.
    pub(crate) fn error(&self) -> Result<()> {
        match &self.non_finite {
            Some(name) => Err(Error::NonFiniteGradient { name: name.clone() }),
            None => Ok(()),
        }
    }

    /// The global norm. If the sum of squares overflowed (only possible for `f64` gradients
    /// above about `1e154`), it is recomputed from `visit` scaled by the largest magnitude.
    pub(crate) fn finish<F: Float>(mut self, visit: &mut GradVisit<'_, F>) -> Result<Norm> {
        self.error()?;
        if self.sum_sq.is_finite() {
            return Ok(Norm {
                scale: 1.0,
                unit: self.sum_sq.sqrt(),
            });
        }
        let scale = self.max_abs;
        let mut scaled_sum_sq = 0.0f64;
        visit(&mut |_, grad| match grad.as_slice_memory_order() {
            Some(slice) => {
                scaled_sum_sq += slice_sum_sq(slice, |g| g / scale, &mut self.partials).0;
            }
            None => {
                for &g in grad.iter() {
                    let r = g.to_f64_exact() / scale;
                    scaled_sum_sq += r * r;
                }
            }
        });
        Ok(Norm {
            scale,
            unit: scaled_sum_sq.sqrt(),
        })
    }
}

/// `(Σ prep(g)², max |g|)` over a contiguous gradient, in `f64`: per chunk of [`NORM_CHUNK`]
/// elements (in parallel when the slice is long), the chunks' sums then added in order.
/// NaNs are ignored by the maximum but make the sum NaN.
fn slice_sum_sq<F: Float>(
    x: &[F],
    prep: impl Fn(f64) -> f64 + Sync,
    partials: &mut Vec<(f64, f64)>,
) -> (f64, f64) {
    let chunk = |x: &[F]| run_widest(SumSqLoop { x, prep: &prep });
    let add = |(s, m): (f64, f64), &(cs, cm): &(f64, f64)| (s + cs, m.max(cm));
    if worth_parallel(x.len()) {
        x.par_chunks(NORM_CHUNK)
            .map(chunk)
            .collect_into_vec(partials);
        partials.iter().fold((0.0, 0.0), add)
    } else {
        x.chunks(NORM_CHUNK)
            .map(chunk)
            .fold((0.0, 0.0), |acc, part| add(acc, &part))
    }
}

/// `(Σ prep(g)², max |g|)` over one chunk, in [`LANES`] interleaved partial sums added in
/// lane order at the end.
struct SumSqLoop<'a, F, P> {
    x: &'a [F],
    prep: &'a P,
}

impl<F: Float, P: Fn(f64) -> f64> WideLoop for SumSqLoop<'_, F, P> {
    type Output = (f64, f64);

    #[inline(always)]
    fn run(self) -> (f64, f64) {
        let mut sums = [0.0f64; LANES];
        let mut maxes = [0.0f64; LANES];
        let blocks = self.x.chunks_exact(LANES);
        let rest = blocks.remainder();
        let lane = |(sum, max): (&mut f64, &mut f64), g: F| {
            let g = g.to_f64_exact();
            let r = (self.prep)(g);
            *sum += r * r;
            *max = max.max(g.abs());
        };
        for block in blocks {
            for (acc, &g) in sums.iter_mut().zip(maxes.iter_mut()).zip(block) {
                lane(acc, g);
            }
        }
        for (acc, &g) in sums.iter_mut().zip(maxes.iter_mut()).zip(rest) {
            lane(acc, g);
        }
        let sum = sums.iter().fold(0.0, |s, &x| s + x);
        let max = maxes.iter().fold(0.0, |m: f64, &x| m.max(x));
        (sum, max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_norm_and_no_clip_below_threshold() {
        let (mut a, mut b) = (vec![1.0f32, 2.0], vec![2.0f32]);
        let norm = clip_grad_norm_slices(&mut [&mut a[..], &mut b[..]], 3.5).unwrap();
        assert_eq!(norm, 3.0);
        assert_eq!((a, b), (vec![1.0, 2.0], vec![2.0]));
    }

    #[test]
    fn non_finite_is_an_error_and_nothing_changes() {
        let (mut a, mut b) = (vec![10.0f64, 2.0], vec![f64::NAN]);
        let err = clip_grad_norm_slices(&mut [&mut a[..], &mut b[..]], 1.0).unwrap_err();
        assert!(
            matches!(&err, Error::NonFiniteGradient { name } if name == "1"),
            "{err}"
        );
        assert_eq!(a, [10.0, 2.0]);
        let mut c = [f64::NEG_INFINITY];
        assert!(clip_grad_norm_slices(&mut [&mut a[..], &mut c[..]], 1.0).is_err());
        assert_eq!(a, [10.0, 2.0]);
    }

    #[test]
    fn huge_f64_gradients_do_not_overflow_the_norm() {
        let mut a = vec![3e200f64, 4e200];
        let norm = clip_grad_norm_slices(&mut [&mut a[..]], 1.0).unwrap();
        assert!((norm / 5e200 - 1.0).abs() < 1e-15, "{norm}");
        assert!(
            (a[0] - 0.6).abs() < 1e-12 && (a[1] - 0.8).abs() < 1e-12,
            "{a:?}"
        );
    }

    #[test]
    fn bad_thresholds_are_errors() {
        let mut a = [1.0f64];
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(
                clip_grad_norm_slices(&mut [&mut a[..]], bad).is_err(),
                "{bad}"
            );
        }
    }

    /// `norm_of` over `grads` as they are.
    fn norm_of_views<F: Float>(grads: &[ArrayViewD<'_, F>]) -> Result<f64> {
        norm_of(&mut |f| {
            for (i, g) in grads.iter().enumerate() {
                f(&i.to_string(), g.view());
            }
        })
    }

    /// The chunked parallel norm of a large random gradient: close to a plain sequential
    /// `f64` sum, equal to the non-contiguous (element by element) path up to rounding, and
    /// the same bits whatever the number of threads.
    fn parallel_norm_matches_a_plain_sum<F: Float>() {
        use ndarray::{Array2, s};
        use rand::{RngExt, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        // 3 · 2^16 + 11 elements: many chunks, a partial chunk and a partial block of lanes.
        let n = 3 * (1 << 16) + 11;
        let big: Vec<F> = (0..n)
            .map(|_| F::of(rng.random_range(-1.0..1.0) * 10f64.powi(rng.random_range(-3..3))))
            .collect();
        let small = [F::of(0.5), F::of(-2.0)];
        let plain = big
            .iter()
            .chain(&small)
            .map(|&g| g.to_f64_exact() * g.to_f64_exact())
            .sum::<f64>()
            .sqrt();
        let views = [aview1(&big).into_dyn(), aview1(&small).into_dyn()];
        let norm = norm_of_views(&views).unwrap();
        assert!((norm - plain).abs() <= 1e-12 * plain, "{norm} vs {plain}");

        // The same gradient as every other element of a wider array: the fallback path.
        let mut wide = Array2::<F>::zeros((n, 2));
        wide.column_mut(0).assign(&aview1(&big));
        let strided = wide.slice(s![.., 0]).into_dyn();
        assert!(strided.as_slice_memory_order().is_none());
        let fallback = norm_of_views(&[strided, views[1].clone()]).unwrap();
        assert!(
            (fallback - plain).abs() <= 1e-12 * plain,
            "{fallback} vs {plain}"
        );

        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let again = pool.install(|| norm_of_views(&views).unwrap());
            assert_eq!(again.to_bits(), norm.to_bits(), "{threads} threads");
        }
    }

    #[test]
    fn a_norm_beyond_f64_max_still_clips_to_max_norm() {
        // The norm is 2·big ≈ 1.33·f64::MAX: +inf as a number.
        let big = f64::MAX / 1.5;
        let mut a = [big, -big, big, big, 1.0];
        let norm = clip_grad_norm_slices(&mut [&mut a[..]], 1.0).unwrap();
        assert_eq!(norm, f64::INFINITY);
        let clipped: f64 = a.iter().map(|g| g * g).sum::<f64>().sqrt();
        assert!((clipped - 1.0).abs() < 1e-12, "{a:?}");
        assert!((a[0] - 0.5).abs() < 1e-12 && (a[1] + 0.5).abs() < 1e-12);
    }

    #[test]
    fn parallel_norm_is_deterministic_and_matches_a_plain_sum() {
        parallel_norm_matches_a_plain_sum::<f32>();
        parallel_norm_matches_a_plain_sum::<f64>();
    }

    #[test]
    fn non_finite_deep_inside_a_large_gradient_is_found() {
        let n = 1 << 17;
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let ok = vec![1.0f32; 7];
            let mut big = vec![0.25f32; n];
            big[n - 3] = bad;
            let views = [aview1(&ok).into_dyn(), aview1(&big).into_dyn()];
            let err = norm_of_views(&views).unwrap_err();
            assert!(
                matches!(&err, Error::NonFiniteGradient { name } if name == "1"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn huge_f64_gradients_in_a_large_tensor_are_rescaled() {
        let n = 1 << 16;
        let big = vec![3e300f64; n];
        let norm = norm_of_views(&[aview1(&big).into_dyn()]).unwrap();
        let expect = 3e300 * (n as f64).sqrt();
        assert!((norm / expect - 1.0).abs() < 1e-14, "{norm} vs {expect}");
    }
}
