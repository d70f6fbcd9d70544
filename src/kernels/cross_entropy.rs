//! Softmax cross-entropy over the last axis, mean over all `B·T` positions, with a fused
//! backward.
//!
//! Shapes: `logits (B, T, V)`, `targets (B, T)` of class ids in `0..V`, `probs (B, T, V)`.
//! The loss is computed with log-sum-exp: `loss_n = lse(z_n) − z_n[target_n]`, with no
//! `+1e-9` inside a logarithm.

use ndarray::{Array2, Array3, ArrayView2, ArrayView3, Axis, Zip};

use super::elementwise::map_array;
use super::fast_math::exp_nonpositive;
use crate::error::check_shape;
use crate::exec::for_each_split;
use crate::{Error, Float, Result};

const KERNEL: &str = "cross_entropy";

/// Checks that every target is a valid class.
fn check_targets(targets: ArrayView2<'_, usize>, classes: usize) -> Result<()> {
    match targets.indexed_iter().find(|&(_, &t)| t >= classes) {
        Some(((b, t), &target)) => Err(Error::TargetOutOfRange {
            layer: KERNEL,
            target,
            position: (b, t),
            classes,
        }),
        None => Ok(()),
    }
}

/// Mean cross-entropy of `logits (B, T, V)` against `targets (B, T)`; returns
/// `(loss, probs (B, T, V))`, the probabilities being what the backward needs.
///
/// # Errors
/// [`Error::ShapeMismatch`] when `targets` is not `(B, T)`; [`Error::EmptyInput`] when
/// `B·T = 0` or `V = 0`; [`Error::TargetOutOfRange`] for a target `≥ V`.
pub fn cross_entropy_forward<F: Float>(
    logits: ArrayView3<'_, F>,
    targets: ArrayView2<'_, usize>,
) -> Result<(F, Array3<F>)> {
    let (b, t, v) = logits.dim();
    check_shape(KERNEL, "targets", targets.shape(), &[Some(b), Some(t)])?;
    if b == 0 || t == 0 {
        return Err(Error::EmptyInput {
            layer: KERNEL,
            what: "logits",
            shape: logits.shape().to_vec(),
            axis: "positions (B·T = 0)",
            reason: "the mean loss over no positions is undefined",
        });
    }
    if v == 0 {
        return Err(Error::EmptyInput {
            layer: KERNEL,
            what: "logits",
            shape: logits.shape().to_vec(),
            axis: "classes (V = 0)",
            reason: "a softmax needs at least one class",
        });
    }
    check_targets(targets, v)?;
    // Every row of probabilities is written whole below.
    let mut probs = super::recycle::array((b, t, v));
    let mut row_losses = Array2::zeros((b, t));
    for_each_split!(
        b * t * v,
        Zip::from(probs.lanes_mut(Axis(2)))
            .and(logits.lanes(Axis(2)))
            .and(targets)
            .and(&mut row_losses),
        |mut p, z, &target, row_loss| {
            let max = z.fold(F::neg_infinity(), |m, &v| m.max(v));
            let sum_exp = z.fold(F::zero(), |acc, &v| acc + exp_nonpositive(v - max));
            let lse = max + sum_exp.ln();
            *row_loss = lse - z[target];
            Zip::from(&mut p).and(&z).for_each(|p, &z| {
                *p = exp_nonpositive(z - lse);
            });
        }
    );
    // Summed in a fixed order, so the loss does not depend on the thread count.
    Ok((row_losses.sum() / F::of((b * t) as f64), probs))
}

/// Backward of [`cross_entropy_forward`]: `dlogits (B, T, V)` for an upstream `d_loss`.
///
/// With `loss = (1/N)·Σ_n (lse(z_n) − z_n[y_n])` and `∂lse/∂z = softmax(z)`:
///
/// `dlogits_n = d_loss·(probs_n − onehot(y_n)) / N`, `N = B·T` — *(dlogits)*
///
/// Each row sums to zero, because `probs_n` sums to one.
///
/// # Errors
/// [`Error::ShapeMismatch`] / [`Error::TargetOutOfRange`] as in the forward.
pub fn cross_entropy_backward<F: Float>(
    probs: ArrayView3<'_, F>,
    targets: ArrayView2<'_, usize>,
    d_loss: F,
) -> Result<Array3<F>> {
    let (b, t, v) = probs.dim();
    check_shape(KERNEL, "targets", targets.shape(), &[Some(b), Some(t)])?;
    check_targets(targets, v)?;
    // (dlogits): d_loss·probs/N, then −d_loss/N at each target
    let scale = d_loss / F::of((b * t).max(1) as f64);
    let mut d_logits = map_array(probs, |p| p * scale);
    Zip::from(d_logits.lanes_mut(Axis(2)))
        .and(targets)
        .for_each(|mut row, &target| row[target] -= scale);
    Ok(d_logits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;
    use ndarray::{Array2, array};

    #[test]
    fn uniform_logits_give_log_v() {
        let logits = Array3::<f64>::zeros((2, 3, 5));
        let targets = Array2::from_elem((2, 3), 4);
        let (loss, _) = cross_entropy_forward(logits.view(), targets.view()).unwrap();
        assert_abs_diff_eq!(loss, 5f64.ln(), epsilon = 1e-14);
    }

    #[test]
    fn confident_wrong_answer_is_large_but_finite() {
        let logits = array![[[1000.0, -1000.0]]];
        let targets = array![[1]];
        let (loss, _) = cross_entropy_forward(logits.view(), targets.view()).unwrap();
        assert_abs_diff_eq!(loss, 2000.0, epsilon = 1e-9);
    }

    #[test]
    fn d_logits_rows_sum_to_zero() {
        let logits = array![[[0.3, -1.0, 2.0], [1.0, 1.0, 0.0]]];
        let targets = array![[2, 0]];
        let (_, probs) = cross_entropy_forward(logits.view(), targets.view()).unwrap();
        let d = cross_entropy_backward(probs.view(), targets.view(), 1.0).unwrap();
        for row in d.lanes(Axis(2)) {
            assert_abs_diff_eq!(row.sum(), 0.0, epsilon = 1e-15);
        }
    }

    #[test]
    fn out_of_range_target_names_position() {
        let logits = Array3::<f32>::zeros((1, 2, 3));
        let err = cross_entropy_forward(logits.view(), array![[0, 3]].view()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cross_entropy: target 3 at (b, t) = (0, 1) is out of range for 3 classes"
        );
    }
}
