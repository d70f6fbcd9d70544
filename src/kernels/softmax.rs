//! Row softmax with a causal mask, and its backward.
//!
//! Masked positions take no probability at all: they are never exponentiated and hold an
//! exact zero (no large negative constant is added). The row maximum over the visible
//! entries is subtracted before exponentiating.

use ndarray::{ArrayView2, ArrayViewMut2, Zip, s};

use super::elementwise::map_in_place;
use crate::Float;

/// In place on `scores (T_q, T_k)`: row `i` becomes the softmax of its entries `j ≤ i + offset`,
/// and entries `j > i + offset` become 0.
///
/// `offset = 0` with `T_q = T_k` is ordinary causal self-attention. With a key/value cache,
/// query `i` is absolute position `offset + i`, so it sees keys `0..=offset + i`.
/// Every row sees at least key 0, so no row is empty.
pub fn causal_softmax_forward<F: Float>(mut scores: ArrayViewMut2<'_, F>, offset: usize) {
    for (i, mut row) in scores.rows_mut().into_iter().enumerate() {
        let visible = (i + offset + 1).min(row.len());
        let mut seen = row.slice_mut(s![..visible]);
        let max = seen.fold(F::neg_infinity(), |m, &v| m.max(v));
        match seen.as_slice_mut() {
            Some(values) => map_in_place(values, |v| (v - max).exp_nonpositive()),
            None => seen.mapv_inplace(|v| (v - max).exp_nonpositive()),
        }
        let inv_sum = F::one() / seen.sum();
        seen.mapv_inplace(|v| v * inv_sum);
        row.slice_mut(s![visible..]).fill(F::zero());
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
pub fn softmax_backward_in_place<F: Float>(
    probs: ArrayView2<'_, F>,
    mut d_probs: ArrayViewMut2<'_, F>,
) {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;
    use ndarray::{Array2, array};

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
