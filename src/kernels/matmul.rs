//! Matrix products: the one place the crate calls into a GEMM.
//!
//! Every kernel multiplies through these helpers, so the GEMM backend can be changed in one
//! file. Views may be strided (transposes and head slices are passed without copying).

use ndarray::linalg::general_mat_mul;
use ndarray::{Array2, ArrayView2, ArrayViewMut2};

use crate::Float;

/// `a · b` for `a` of shape `(M, K)` and `b` of shape `(K, N)`, giving `(M, N)`.
///
/// Callers check that the inner dimensions agree.
pub(crate) fn matmul<F: Float>(a: ArrayView2<'_, F>, b: ArrayView2<'_, F>) -> Array2<F> {
    let mut c = Array2::zeros((a.nrows(), b.ncols()));
    general_mat_mul(F::one(), &a, &b, F::zero(), &mut c);
    c
}

/// `c = alpha · a · b + beta · c` in place; shapes `(M, K)`, `(K, N)`, `(M, N)`.
///
/// Callers check the shapes.
pub(crate) fn matmul_into<F: Float>(
    alpha: F,
    a: ArrayView2<'_, F>,
    b: ArrayView2<'_, F>,
    beta: F,
    c: &mut ArrayViewMut2<'_, F>,
) {
    general_mat_mul(alpha, &a, &b, beta, c);
}

/// The obviously-correct triple loop the fast path is tested against.
#[cfg(test)]
pub(crate) fn matmul_reference(a: ArrayView2<'_, f64>, b: ArrayView2<'_, f64>) -> Array2<f64> {
    let (m, k) = a.dim();
    let n = b.ncols();
    let mut c = Array2::zeros((m, n));
    for i in 0..m {
        for j in 0..n {
            let mut sum = 0.0;
            for p in 0..k {
                sum += a[[i, p]] * b[[p, j]];
            }
            c[[i, j]] = sum;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;
    use ndarray::Array2;

    #[test]
    fn fast_matmul_matches_reference_on_strided_views() {
        let a = Array2::from_shape_fn((7, 5), |(i, j)| (i as f64 - 2.0 * j as f64).sin());
        let b = Array2::from_shape_fn((7, 3), |(i, j)| (i * j) as f64 * 0.1 - 0.3);
        // aᵀ · b through a transposed (strided) view.
        let fast = matmul(a.t(), b.view());
        let slow = matmul_reference(a.t(), b.view());
        assert_abs_diff_eq!(fast, slow, epsilon = 1e-12);
        let mut c = Array2::ones((5, 3));
        matmul_into(2.0, a.t(), b.view(), 1.0, &mut c.view_mut());
        assert_abs_diff_eq!(c, slow * 2.0 + 1.0, epsilon = 1e-12);
    }
}
