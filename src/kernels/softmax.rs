//! Row softmax with a causal mask, and its backward.
//!
//! Masked positions take no probability at all: they are never exponentiated and hold an
//! exact zero (no large negative constant is added). The row maximum over the visible
//! entries is subtracted before exponentiating.

use ndarray::{ArrayView2, ArrayViewMut2, Zip, s};

use super::elementwise::{WideLoop, run_widest};
use super::fast_math::exp_nonpositive;
use crate::error::check_shape;
use crate::exec::LANES;
use crate::{Float, Result};

const KERNEL: &str = "softmax";

/// In place on `scores (T_q, T_k)`: row `i` becomes the softmax of its entries `j ≤ i + offset`,
/// and entries `j > i + offset` become 0.
///
/// `offset = 0` with `T_q = T_k` is ordinary causal self-attention. With a key/value cache,
/// query `i` is absolute position `offset + i`, so it sees keys `0..=offset + i`.
/// Every row sees at least key 0, so no row is empty.
pub fn causal_softmax_forward<F: Float>(scores: ArrayViewMut2<'_, F>, offset: usize) {
    run_widest(CausalSoftmaxRows { scores, offset });
}

/// The rows of [`causal_softmax_forward`], as one loop for [`run_widest`].
struct CausalSoftmaxRows<'a, F> {
    scores: ArrayViewMut2<'a, F>,
    offset: usize,
}

impl<F: Float> WideLoop for CausalSoftmaxRows<'_, F> {
    type Output = ();

    #[inline(always)]
    fn run(mut self) {
        for (i, mut row) in self.scores.rows_mut().into_iter().enumerate() {
            // Saturating: an offset near `usize::MAX` sees the whole row rather than wrapping.
            let visible = i
                .saturating_add(self.offset)
                .saturating_add(1)
                .min(row.len());
            if let Some(values) = row.as_slice_mut() {
                let (seen, hidden) = values.split_at_mut(visible);
                softmax_in_place(seen);
                hidden.fill(F::zero());
                continue;
            }
            let mut seen = row.slice_mut(s![..visible]);
            let max = seen.fold(F::neg_infinity(), |m, &v| m.max(v));
            seen.mapv_inplace(|v| exp_nonpositive(v - max));
            let inv_sum = F::one() / seen.sum();
            seen.mapv_inplace(|v| v * inv_sum);
            row.slice_mut(s![visible..]).fill(F::zero());
        }
    }
}

/// The softmax of a contiguous, non-empty row, in place: the maximum is subtracted, the
/// exponentials and their sum taken in one pass, then each is divided by the sum. The running
/// maximum and sum are kept in [`LANES`] independent accumulators, so those loops vectorise.
#[inline(always)]
fn softmax_in_place<F: Float>(row: &mut [F]) {
    let mut lanes = [F::neg_infinity(); LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(v);
        }
    }
    let max = (chunks.remainder().iter().chain(&lanes)).fold(F::neg_infinity(), |m, &v| m.max(v));
    let mut lanes = [F::zero(); LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *v = exp_nonpositive(*v - max);
            *lane += *v;
        }
    }
    let mut sum = F::zero();
    for v in chunks.into_remainder() {
        *v = exp_nonpositive(*v - max);
        sum += *v;
    }
    let inv_sum = F::one() / lanes.iter().fold(sum, |acc, &lane| acc + lane);
    for v in row.iter_mut() {
        *v *= inv_sum;
    }
}

/// Backward of a row softmax, in place: `d_probs (T_q, T_k)` becomes `d_scores`.
///
/// With `P = softmax(S)` per row, `∂P_ij/∂S_ik = P_ij·(δ_jk − P_ik)`, so
///
/// `dS_ik = P_ik·(dP_ik − Σ_j P_ij·dP_ij)`: first the row's dot product `⟨P, dP⟩` *(dot)*,
/// then `dS = P ⊙ (dP − ⟨P, dP⟩)` *(dS)*.
///
/// Masked entries have `P_ik = 0` and receive exactly zero gradient.
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when `d_probs` is not shaped like
/// `probs`; `d_probs` is then unchanged.
pub fn softmax_backward_in_place<F: Float>(
    probs: ArrayView2<'_, F>,
    mut d_probs: ArrayViewMut2<'_, F>,
) -> Result<()> {
    let (t_q, t_k) = probs.dim();
    check_shape(KERNEL, "d_probs", d_probs.shape(), &[Some(t_q), Some(t_k)])?;
    Zip::from(probs.rows())
        .and(d_probs.rows_mut())
        .for_each(|p, mut dp| {
            // (dot)
            let dot = Zip::from(&p)
                .and(&dp)
                .fold(F::zero(), |acc, &p, &dp| acc + p * dp);
            // (dS)
            Zip::from(&mut dp)
                .and(&p)
                .for_each(|dp, &p| *dp = p * (*dp - dot));
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;
    use ndarray::{Array2, array};

    #[test]
    fn long_rows_match_a_plain_softmax() {
        // Rows longer than the accumulator lanes, with the maximum in the lanes or in the
        // remainder, and a strided (non-contiguous) view taking the fallback path.
        let mut s =
            Array2::from_shape_fn((3, 40), |(i, j)| ((i * 40 + j) as f64 * 0.37).sin() * 9.0);
        s[[2, 38]] = 30.0;
        let expected: Vec<Vec<f64>> = (0..3)
            .map(|i| {
                let seen: Vec<f64> = (0..=i + 37).map(|j| s[[i, j]]).collect();
                let max = seen.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let total: f64 = seen.iter().map(|v| (v - max).exp()).sum();
                seen.iter().map(|v| (v - max).exp() / total).collect()
            })
            .collect();
        // f32 evaluates exp only on its non-positive domain, so a maximum missed in the
        // remainder would show there.
        let mut single = s.mapv(|v| v as f32);
        causal_softmax_forward(single.view_mut(), 37);
        let mut strided = Array2::zeros((3, 80));
        strided.slice_mut(s![.., ..;2]).assign(&s);
        causal_softmax_forward(s.view_mut(), 37);
        causal_softmax_forward(strided.slice_mut(s![.., ..;2]), 37);
        for (i, row) in expected.iter().enumerate() {
            for (j, &p) in row.iter().enumerate() {
                assert_abs_diff_eq!(s[[i, j]], p, epsilon = 1e-14);
                assert_abs_diff_eq!(strided[[i, 2 * j]], p, epsilon = 1e-14);
                assert_abs_diff_eq!(f64::from(single[[i, j]]), p, epsilon = 1e-6);
            }
            assert!(s.row(i).iter().skip(row.len()).all(|&p| p == 0.0));
        }
    }

    #[test]
    fn rows_sum_to_one_and_future_is_exactly_zero() {
        let mut s = Array2::from_shape_fn((4, 4), |(i, j)| (i * 3 + j) as f64 * 0.7 - 2.0);
        causal_softmax_forward(s.view_mut(), 0);
        for (i, row) in s.rows().into_iter().enumerate() {
            assert_abs_diff_eq!(row.sum(), 1.0, epsilon = 1e-12);
            assert!(row.iter().skip(i + 1).all(|&p| p == 0.0));
        }
        assert_eq!(s[[0, 0]], 1.0);
    }

    #[test]
    fn offset_widens_the_visible_window() {
        let mut s = array![[0.0, 0.0, 0.0]];
        causal_softmax_forward(s.view_mut(), 1);
        assert_abs_diff_eq!(s, array![[0.5, 0.5, 0.0]], epsilon = 1e-15);
    }

    #[test]
    fn large_scores_do_not_overflow() {
        let mut s = array![[1000.0f32, 999.0]];
        causal_softmax_forward(s.view_mut(), 1);
        assert!(s.iter().all(|p| p.is_finite()));
    }
}
