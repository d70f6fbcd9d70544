//! Matrix products: the one place the crate calls into a GEMM.
//!
//! Every kernel multiplies through these helpers, so the GEMM backend is chosen in one file.
//! The backend is the pure-Rust `gemm` crate (runtime-dispatched AVX2/FMA and AVX-512
//! micro-kernels, parallel over rayon's pool); `docs/performance.md` records why it won over
//! ndarray's default `matrixmultiply` (with and without its threading) on this workload.
//! Views may be strided (transposes and head slices are passed without copying).

use std::mem::MaybeUninit;

use gemm::Parallelism;
use ndarray::{Array2, ArrayView2, ArrayViewMut2};

use crate::Float;
use crate::exec::product_threads;

/// The parallelism of an `(m, k) · (k, n)` product issued from this thread: as many threads
/// as [`product_threads`] allows.
fn parallelism(m: usize, n: usize, k: usize) -> Parallelism {
    match product_threads(m * n * k) {
        1 => Parallelism::None,
        threads => Parallelism::Rayon(threads),
    }
}

/// `a · b` for `a` of shape `(M, K)` and `b` of shape `(K, N)`, giving `(M, N)`.
///
/// Callers check that the inner dimensions agree. A large result is written into a
/// [recycled](super::recycle) buffer.
pub(crate) fn matmul<F: Float>(a: ArrayView2<'_, F>, b: ArrayView2<'_, F>) -> Array2<F> {
    let mut c = super::recycle::array((a.nrows(), b.ncols()));
    matmul_into(F::one(), a, b, F::zero(), &mut c.view_mut());
    c
}

/// `c = alpha · a · b` into an uninitialised `c (M, N)`, returned as an initialised view:
/// the output of a product is written whole, so it need not be zeroed first.
///
/// Callers check the shapes, as for [`matmul_into`].
pub(crate) fn matmul_uninit<'c, F: Float>(
    alpha: F,
    a: ArrayView2<'_, F>,
    b: ArrayView2<'_, F>,
    mut c: ArrayViewMut2<'c, MaybeUninit<F>>,
) -> ArrayViewMut2<'c, F> {
    let (m, k) = a.dim();
    let n = b.ncols();
    assert_eq!(b.nrows(), k, "matmul: inner dimensions differ");
    assert_eq!(c.dim(), (m, n), "matmul: output shape differs");
    if k == 0 {
        c.fill(MaybeUninit::new(F::zero()));
    } else if m > 0 && n > 0 {
        let c_strides = stride2(c.strides());
        // SAFETY: `c` is a live, uniquely borrowed (m, n) view with these strides, and
        // `MaybeUninit<F>` has `F`'s layout; with beta = 0 gemm writes every element of `c`
        // without reading it.
        unsafe {
            gemm_raw(
                alpha,
                a,
                b,
                F::zero(),
                c.as_mut_ptr().cast::<F>(),
                c_strides,
            )
        }
    }
    // SAFETY: every element was written just above.
    unsafe { c.assume_init() }
}

/// `c = alpha · a · b + beta · c` in place; shapes `(M, K)`, `(K, N)`, `(M, N)`.
///
/// When `beta` is zero, `c` is overwritten without being read. Callers check the shapes;
/// a mismatch here is a bug in the crate and panics rather than reaching the unsafe GEMM.
pub(crate) fn matmul_into<F: Float>(
    alpha: F,
    a: ArrayView2<'_, F>,
    b: ArrayView2<'_, F>,
    beta: F,
    c: &mut ArrayViewMut2<'_, F>,
) {
    let (m, k) = a.dim();
    let n = b.ncols();
    assert_eq!(b.nrows(), k, "matmul: inner dimensions differ");
    assert_eq!(c.dim(), (m, n), "matmul: output shape differs");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if beta.is_zero() {
            c.fill(F::zero());
        } else {
            c.mapv_inplace(|v| v * beta);
        }
        return;
    }
    let c_strides = stride2(c.strides());
    // SAFETY: `c` is a live, uniquely borrowed (m, n) view with these strides.
    unsafe { gemm_raw(alpha, a, b, beta, c.as_mut_ptr(), c_strides) }
}

/// `c = alpha·a·b + beta·c` through the `gemm` crate, with `c` given as a pointer to its
/// first element and its `[row, column]` strides; `c` is not read when `beta` is zero.
///
/// # Safety
/// `c_ptr` with `c_strides` must address an `(a.nrows(), b.ncols())` matrix that is valid
/// for writes (and for reads when `beta ≠ 0`) and aliases neither `a` nor `b`; `a.ncols()`
/// must equal `b.nrows()` and be positive.
unsafe fn gemm_raw<F: Float>(
    alpha: F,
    a: ArrayView2<'_, F>,
    b: ArrayView2<'_, F>,
    beta: F,
    c_ptr: *mut F,
    c_strides: [isize; 2],
) {
    let (m, k) = a.dim();
    let n = b.ncols();
    let parallelism = parallelism(m, n, k);
    let ([a_rs, a_cs], [b_rs, b_cs], [c_rs, c_cs]) =
        (stride2(a.strides()), stride2(b.strides()), c_strides);
    // SAFETY: the caller guarantees `c`; `a` and `b` are live views whose pointers address
    // their first logical element, so every (row, column) index gemm forms within (m, k)
    // and (k, n) lies inside them. gemm computes dst = alpha_g·dst + beta_g·lhs·rhs and reads
    // dst only when asked to.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c_ptr,
            c_cs,
            c_rs,
            !beta.is_zero(),
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            beta,
            alpha,
            false,
            false,
            false,
            parallelism,
        );
    }
}

fn stride2(strides: &[isize]) -> [isize; 2] {
    [strides[0], strides[1]]
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
    use crate::exec::PARALLEL_MIN_MACS;
    use approx::assert_abs_diff_eq;
    use ndarray::{Array2, s};

    fn sample(rows: usize, cols: usize, seed: f64) -> Array2<f64> {
        Array2::from_shape_fn((rows, cols), |(i, j)| {
            ((i * 31 + j * 17) as f64 * seed).sin()
        })
    }

    #[test]
    fn fast_matmul_matches_reference_on_strided_views() {
        let a = sample(7, 5, 0.37);
        let b = sample(7, 3, 0.53);
        // aᵀ · b through a transposed (strided) view.
        let fast = matmul(a.t(), b.view());
        let slow = matmul_reference(a.t(), b.view());
        assert_abs_diff_eq!(fast, slow, epsilon = 1e-12);
        let mut c = Array2::ones((5, 3));
        matmul_into(2.0, a.t(), b.view(), 1.0, &mut c.view_mut());
        assert_abs_diff_eq!(c, &slow * 2.0 + 1.0, epsilon = 1e-12);
    }

    #[test]
    fn large_parallel_products_match_reference() {
        // Big enough to take the parallel path; column slices as in attention heads.
        let a = sample(300, 120, 0.11);
        let b = sample(120, 130, 0.07);
        const { assert!(300 * 120 * 130 >= PARALLEL_MIN_MACS) };
        let slow = matmul_reference(a.view(), b.view());
        assert_abs_diff_eq!(matmul(a.view(), b.view()), slow, epsilon = 1e-10);
        let mut wide = Array2::zeros((300, 260));
        matmul_into(
            1.0,
            a.view(),
            b.view(),
            0.0,
            &mut wide.slice_mut(s![.., 130..]),
        );
        assert_abs_diff_eq!(wide.slice(s![.., 130..]), slow, epsilon = 1e-10);
        assert!(wide.slice(s![.., ..130]).iter().all(|&v| v == 0.0));
    }

    #[test]
    fn f32_matches_f64_reference() {
        let a = sample(33, 65, 0.3);
        let b = sample(65, 17, 0.2);
        let fast = matmul(a.mapv(|v| v as f32).view(), b.mapv(|v| v as f32).view());
        let slow = matmul_reference(a.view(), b.view());
        assert_abs_diff_eq!(fast.mapv(f64::from), slow, epsilon = 1e-4);
    }

    #[test]
    fn empty_inner_dimension_scales_c() {
        let a = Array2::<f64>::zeros((2, 0));
        let b = Array2::<f64>::zeros((0, 3));
        let mut c = Array2::from_elem((2, 3), 4.0);
        matmul_into(1.0, a.view(), b.view(), 0.5, &mut c.view_mut());
        assert_eq!(c, Array2::from_elem((2, 3), 2.0));
    }
}
