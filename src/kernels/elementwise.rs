//! Element-wise maps over contiguous slices, run in parallel chunks and compiled for the
//! widest vector unit the CPU has.
//!
//! The crate is built for the baseline x86-64 target (SSE2), where a loop of `f32`
//! exponentials and divisions runs four lanes at a time. The same loop body is compiled
//! three times — for AVX-512, for AVX2 with FMA, and for the baseline — and the widest one
//! the running CPU supports is chosen at run time.

use ndarray::{Array, ArrayView, Dimension, Zip};
use rayon::prelude::*;

use crate::Float;
use crate::exec::{ELEMENTWISE_CHUNK, PARALLEL_MIN_LEN};

/// `[f(x[0]), f(x[1]), …]` as a new vector, as [`map_binary`].
///
/// It runs on the two-input path with `x` read twice, so one compiled loop serves both.
pub(crate) fn map_unary<F: Float>(x: &[F], f: impl Fn(F) -> F + Sync) -> Vec<F> {
    map_binary(x, x, move |v, _| f(v))
}

/// `[f(x[0], y[0]), …]` as a new vector (the shorter input bounds it), each element written
/// once; a large vector is a [recycled](super::recycle) one.
pub(crate) fn map_binary<F: Float>(x: &[F], y: &[F], f: impl Fn(F, F) -> F + Sync) -> Vec<F> {
    let mut out = super::recycle::vec(x.len().min(y.len()));
    map_binary_into(x, y, &mut out, f);
    out
}

/// `f` applied to every element of `x`: on the vectorised parallel path for standard-layout
/// input, with `Array::mapv` otherwise.
pub(crate) fn map_array<F: Float, D: Dimension>(
    x: ArrayView<'_, F, D>,
    f: impl Fn(F) -> F + Sync,
) -> Array<F, D> {
    match x.as_slice() {
        Some(xs) => from_standard_vec(x.raw_dim(), map_unary(xs, f)),
        None => x.mapv(f),
    }
}

/// `f(x, y)` for every pair of elements of `x` and `y`, of the same shape (checked by the
/// caller), as [`map_array`].
pub(crate) fn zip_map_array<F: Float, D: Dimension>(
    x: ArrayView<'_, F, D>,
    y: ArrayView<'_, F, D>,
    f: impl Fn(F, F) -> F + Sync,
) -> Array<F, D> {
    match (x.as_slice(), y.as_slice()) {
        (Some(xs), Some(ys)) => from_standard_vec(x.raw_dim(), map_binary(xs, ys, f)),
        _ => Zip::from(&x).and(&y).map_collect(|&x, &y| f(x, y)),
    }
}

/// The standard-layout array of `shape` holding `values`, one per element.
fn from_standard_vec<F: Float, D: Dimension>(shape: D, values: Vec<F>) -> Array<F, D> {
    match Array::from_shape_vec(shape, values) {
        Ok(array) => array,
        Err(e) => unreachable!("a map over a standard-layout input keeps its length: {e}"),
    }
}

/// Writes `f(x[i], y[i])` into every element of `out` (all three the same length).
fn map_binary_into<F: Float>(x: &[F], y: &[F], out: &mut [F], f: impl Fn(F, F) -> F + Sync) {
    if x.len() >= PARALLEL_MIN_LEN {
        out.par_chunks_mut(ELEMENTWISE_CHUNK)
            .zip(
                x.par_chunks(ELEMENTWISE_CHUNK)
                    .zip(y.par_chunks(ELEMENTWISE_CHUNK)),
            )
            .for_each(|(out, (x, y))| run_widest(BinaryLoop { x, y, out, f: &f }));
    } else {
        run_widest(BinaryLoop { x, y, out, f: &f });
    }
}

/// `dst += src` element-wise, in parallel chunks when large (the residual connections).
///
/// Shapes: `dst` and `src` the same (checked by the caller); standard-layout arrays take the
/// slice path, others a plain `Zip`.
pub(crate) fn add_assign<F: Float, D: ndarray::Dimension>(
    dst: &mut ndarray::ArrayRef<F, D>,
    src: &ndarray::ArrayRef<F, D>,
) {
    match (dst.as_slice_mut(), src.as_slice()) {
        (Some(dst), Some(src)) if dst.len() >= PARALLEL_MIN_LEN => dst
            .par_chunks_mut(ELEMENTWISE_CHUNK)
            .zip(src.par_chunks(ELEMENTWISE_CHUNK))
            .for_each(|(dst, src)| add_slices(dst, src)),
        (Some(dst), Some(src)) => add_slices(dst, src),
        _ => *dst += src,
    }
}

/// Sets every element to zero, in parallel chunks when large and contiguous (`zero_grad` of a
/// 124 M-parameter model writes half a gigabyte).
pub(crate) fn fill_zero<F: Float, D: ndarray::Dimension>(x: &mut ndarray::ArrayRef<F, D>) {
    match x.as_slice_memory_order_mut() {
        Some(values) if values.len() >= PARALLEL_MIN_LEN => values
            .par_chunks_mut(ELEMENTWISE_CHUNK)
            .for_each(|chunk| chunk.fill(F::zero())),
        Some(values) => values.fill(F::zero()),
        None => x.fill(F::zero()),
    }
}

/// Memory-bound: the baseline vector width already saturates the loads and stores.
fn add_slices<F: Float>(dst: &mut [F], src: &[F]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

/// `out[i] = f(x[i], y[i])`, as a loop for [`run_widest`].
struct BinaryLoop<'a, F, G> {
    x: &'a [F],
    y: &'a [F],
    out: &'a mut [F],
    f: &'a G,
}

impl<F: Copy, G: Fn(F, F) -> F> WideLoop for BinaryLoop<'_, F, G> {
    type Output = ();

    #[inline(always)]
    fn run(self) {
        for ((o, &x), &y) in self.out.iter_mut().zip(self.x).zip(self.y) {
            *o = (self.f)(x, y);
        }
    }
}

/// A loop for [`run_widest`]. Implement [`WideLoop::run`] with `#[inline(always)]`, so that
/// its body is compiled into each of the vector-unit variants.
pub(crate) trait WideLoop {
    /// What the loop returns.
    type Output;
    /// Runs the loop.
    fn run(self) -> Self::Output;
}

/// Runs `work` in a function compiled for the widest vector unit the CPU has (AVX-512, AVX2
/// with FMA, or the baseline), chosen at run time as for the maps above. Rust never
/// contracts `a * b + c` into an FMA on its own, so every variant computes the baseline's
/// result bit for bit.
pub(crate) fn run_widest<L: WideLoop>(work: L) -> L::Output {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f")]
        fn avx512<L: WideLoop>(work: L) -> L::Output {
            work.run()
        }

        #[target_feature(enable = "avx2,fma")]
        fn avx2<L: WideLoop>(work: L) -> L::Output {
            work.run()
        }

        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F, checked just above.
            return unsafe { avx512(work) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA, checked just above.
            return unsafe { avx2(work) };
        }
    }
    work.run()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_zero_clears_large_small_and_strided_arrays() {
        let mut large = ndarray::Array1::from_elem(PARALLEL_MIN_LEN + 3, 1.5f32);
        fill_zero(&mut large);
        assert!(large.iter().all(|&v| v == 0.0));
        let mut grid = ndarray::Array2::from_elem((4, 6), 2.0f64);
        let mut every_other = grid.slice_mut(ndarray::s![.., ..;2]);
        fill_zero(&mut every_other);
        assert!(
            grid.indexed_iter()
                .all(|((_, j), &v)| v == if j % 2 == 0 { 0.0 } else { 2.0 })
        );
        fill_zero(&mut grid);
        assert!(grid.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn maps_match_a_plain_loop_on_both_paths() {
        for n in [0, 5, 100, PARALLEL_MIN_LEN + 7] {
            let x: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
            let y: Vec<f64> = (0..n).map(|i| (i as f64 * 0.11).cos()).collect();
            let out = map_unary(&x, |v| v * v + 1.0);
            assert_eq!(out.len(), n);
            assert!(out.iter().zip(&x).all(|(o, v)| *o == v * v + 1.0));
            let out = map_binary(&x, &y, |a, b| a - 2.0 * b);
            assert_eq!(out.len(), n);
            assert!(
                out.iter()
                    .zip(x.iter().zip(&y))
                    .all(|(o, (a, b))| *o == a - 2.0 * b)
            );
        }
    }
}
