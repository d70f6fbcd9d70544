//! Column reductions over rows `(N, C)` → `(C)`: the bias, `gamma` and `beta` gradients.
//!
//! Large inputs are summed in parallel over fixed blocks of rows; the blocks' partial sums are
//! then added in block order. The block size does not depend on the thread count, so the
//! result is the same, bit for bit, on any number of threads.

use ndarray::{Array2, ArrayView2, ArrayViewMut1, Zip};
use rayon::prelude::*;

use crate::Float;
use crate::exec::{SUM_ROWS_PER_BLOCK, worth_parallel};

/// `acc += Σ_n a[n, ·]` (with `b`: `acc += Σ_n a[n, ·] ⊙ b[n, ·]`).
///
/// Shapes: `acc (C)`, `a (N, C)`, `b (N, C)`; the caller has checked them.
pub(crate) fn add_column_sums<F: Float>(
    mut acc: ArrayViewMut1<'_, F>,
    a: ArrayView2<'_, F>,
    b: Option<ArrayView2<'_, F>>,
) {
    let (n, c) = a.dim();
    // One partial sum per block, all in one array; a single block when not worth splitting.
    let rows_per_block = if worth_parallel(n * c) {
        SUM_ROWS_PER_BLOCK
    } else {
        n.max(1)
    };
    let mut partial = Array2::<F>::zeros((n.div_ceil(rows_per_block), c));
    let block_sum = |(i, mut sum): (usize, ArrayViewMut1<'_, F>)| {
        for row in i * rows_per_block..((i + 1) * rows_per_block).min(n) {
            match &b {
                Some(b) => Zip::from(&mut sum)
                    .and(a.row(row))
                    .and(b.row(row))
                    .for_each(|s, &x, &y| *s += x * y),
                None => sum += &a.row(row),
            }
        }
    };
    if partial.nrows() > 1 {
        partial
            .outer_iter_mut()
            .into_par_iter()
            .enumerate()
            .for_each(block_sum);
    } else {
        partial.outer_iter_mut().enumerate().for_each(block_sum);
    }
    for sum in partial.rows() {
        acc += &sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array1;

    fn sample(n: usize, c: usize, seed: f64) -> Array2<f64> {
        Array2::from_shape_fn((n, c), |(i, j)| ((i * 13 + j * 7) as f64 * seed).sin())
    }

    #[test]
    fn sums_match_sum_axis_serial_and_parallel() {
        // 10 × 3 takes the serial path; 1000 × 70 the parallel one (with a partial last block).
        for (n, c) in [(10, 3), (1000, 70)] {
            let (a, b) = (sample(n, c, 0.31), sample(n, c, 0.17));
            let mut acc = Array1::from_elem(c, 1.0);
            add_column_sums(acc.view_mut(), a.view(), None);
            let expected = a.sum_axis(ndarray::Axis(0)) + 1.0;
            approx::assert_abs_diff_eq!(acc, expected, epsilon = 1e-10);
            let mut acc = Array1::zeros(c);
            add_column_sums(acc.view_mut(), a.view(), Some(b.view()));
            approx::assert_abs_diff_eq!(acc, (&a * &b).sum_axis(ndarray::Axis(0)), epsilon = 1e-10);
        }
    }

    #[test]
    fn parallel_sums_do_not_depend_on_the_thread_count() {
        let a = sample(1000, 70, 0.23);
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut acc = Array1::zeros(70);
                add_column_sums(acc.view_mut(), a.view(), None);
                acc
            })
        };
        assert_eq!(run(1), run(3));
    }
}
