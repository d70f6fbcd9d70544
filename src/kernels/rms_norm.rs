//! Root-mean-square normalisation over the last axis (Llama's `RMSNorm`).
//!
//! Shapes: `x (N, C)`, `gamma (C)`, `y (N, C)`. Per row: `ms = mean(x²)`,
//! `rstd = 1/√(ms + eps)`, `x̂ = x·rstd`, `y = gamma ⊙ x̂`. Unlike LayerNorm there is no mean
//! subtraction and no shift: the row is only rescaled.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut1, Zip};

use super::reduce::add_column_sums;
use crate::error::check_shape;
use crate::exec::for_each_split;
use crate::{Float, Result};

const KERNEL: &str = "rms_norm";

/// What [`rms_norm_backward`] needs from the forward: the normalised input and the
/// reciprocal root mean square of each row.
#[derive(Clone, Debug)]
pub struct RmsNormCache<F> {
    /// `x̂ = x·rstd`, shape `(N, C)`.
    pub x_hat: Array2<F>,
    /// `rstd = 1/√(mean(x²) + eps)` per row, shape `(N)`.
    pub rstd: Array1<F>,
}

/// Rescales each row of `x (N, C)` by its reciprocal root mean square and applies the gain
/// `gamma (C)`; returns `y (N, C)` and the cache for the backward.
///
/// The order of operations is Hugging Face Llama's `LlamaRMSNorm`:
/// `x̂ = x·rsqrt(mean(x²) + eps)`, then `y = gamma ⊙ x̂`.
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when `gamma` is not `(C)`;
/// [`Error::TooLarge`](crate::Error::TooLarge) when `y` would exceed
/// [`MAX_ALLOC_BYTES`](crate::limits::MAX_ALLOC_BYTES).
pub fn rms_norm_forward<F: Float>(
    x: ArrayView2<'_, F>,
    gamma: ArrayView1<'_, F>,
    eps: F,
) -> Result<(Array2<F>, RmsNormCache<F>)> {
    let (n, c) = x.dim();
    check_shape(KERNEL, "gamma", gamma.shape(), &[Some(c)])?;
    crate::limits::check_alloc::<F>(KERNEL, "y", &[n, c])?;
    let inv_c = F::one() / F::of(c as f64);
    // Every element of the three is written below.
    let mut x_hat = super::recycle::array((n, c));
    let mut rstd = Array1::zeros(n);
    let mut y = super::recycle::array((n, c));
    for_each_split!(
        n * c,
        Zip::from(x.rows())
            .and(x_hat.rows_mut())
            .and(&mut rstd)
            .and(y.rows_mut()),
        |x, mut x_hat, rstd, mut y| {
            let mean_square = x.fold(F::zero(), |acc, &v| acc + v * v) * inv_c;
            *rstd = F::one() / (mean_square + eps).sqrt();
            Zip::from(&mut x_hat)
                .and(&mut y)
                .and(&x)
                .and(&gamma)
                .for_each(|x_hat, y, &x, &g| {
                    *x_hat = x * *rstd;
                    *y = g * *x_hat;
                });
        }
    );
    Ok((y, RmsNormCache { x_hat, rstd }))
}

/// Backward of [`rms_norm_forward`]; returns `dx (N, C)` and **adds** into `d_gamma (C)`.
///
/// * `d_gamma += Σ_n dy ⊙ x̂` — *(dgamma)*
/// * With `g = dy ⊙ gamma` (the gradient reaching `x̂`): `x̂_j = x_j·rstd` and
///   `∂rstd/∂x_i = −rstd³·x_i/C = −rstd²·x̂_i/C`, so
///   `∂x̂_j/∂x_i = rstd·(δ_ij − x̂_i·x̂_j/C)` and
///   `dx = rstd·(g − x̂·mean(g ⊙ x̂))` per row — *(dx)*
///
/// It is LayerNorm's formula without the `mean(g)` term, which there comes from subtracting
/// the mean. The full derivation is in `docs/gradients.md`.
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when the cache's `rstd` is not one
/// value per row of its `x_hat`, or `dy`, `gamma` or `d_gamma` do not match the cache.
/// Everything is checked before anything is added.
pub fn rms_norm_backward<F: Float>(
    cache: &RmsNormCache<F>,
    dy: ArrayView2<'_, F>,
    gamma: ArrayView1<'_, F>,
    mut d_gamma: ArrayViewMut1<'_, F>,
) -> Result<Array2<F>> {
    let (n, c) = cache.x_hat.dim();
    check_shape(KERNEL, "rstd", cache.rstd.shape(), &[Some(n)])?;
    check_shape(KERNEL, "dy", dy.shape(), &[Some(n), Some(c)])?;
    check_shape(KERNEL, "gamma", gamma.shape(), &[Some(c)])?;
    check_shape(KERNEL, "d_gamma", d_gamma.shape(), &[Some(c)])?;
    // (dgamma)
    add_column_sums(d_gamma.view_mut(), dy, Some(cache.x_hat.view()));
    // (dx)
    let inv_c = F::one() / F::of(c as f64);
    let mut dx = super::recycle::array((n, c)); // written whole below
    for_each_split!(
        n * c,
        Zip::from(dx.rows_mut())
            .and(dy.rows())
            .and(cache.x_hat.rows())
            .and(&cache.rstd),
        |mut dx, dy, x_hat, &rstd| {
            let mut mean_g_xhat = F::zero();
            Zip::from(&dy)
                .and(&gamma)
                .and(&x_hat)
                .for_each(|&dy, &g, &xh| mean_g_xhat += dy * g * xh);
            mean_g_xhat *= inv_c;
            Zip::from(&mut dx)
                .and(&dy)
                .and(&gamma)
                .and(&x_hat)
                .for_each(|dx, &dy, &g, &xh| *dx = rstd * (dy * g - xh * mean_g_xhat));
        }
    );
    Ok(dx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;
    use ndarray::array;

    #[test]
    fn hand_computed_row() {
        // Row [1, 2, 2]: mean(x²) = 3, rstd = 1/√3 (eps = 0).
        let x = array![[1.0, 2.0, 2.0]];
        let gamma = array![1.0, 2.0, -1.0];
        let (y, cache) = rms_norm_forward(x.view(), gamma.view(), 0.0).unwrap();
        let r = 1.0 / 3.0f64.sqrt();
        assert_abs_diff_eq!(y, array![[r, 4.0 * r, -2.0 * r]], epsilon = 1e-15);
        assert_abs_diff_eq!(cache.rstd[0], r, epsilon = 1e-15);
    }

    #[test]
    fn scaling_a_row_has_zero_gradient_along_it() {
        // y(s·x) = y(x) for s > 0 (with eps = 0), so dx is orthogonal to x: Σ_i dx_i x_i = 0.
        let x = array![[0.3, -1.2, 2.0, 0.7], [1.0, 1.5, -0.5, 0.1]];
        let gamma = array![1.0, 0.5, -2.0, 1.5];
        let (_, cache) = rms_norm_forward(x.view(), gamma.view(), 0.0).unwrap();
        let dy = array![[1.0, -2.0, 0.5, 3.0], [0.2, 0.1, -0.4, 1.0]];
        let mut dg = Array1::from_elem(4, 1.0);
        let dx = rms_norm_backward(&cache, dy.view(), gamma.view(), dg.view_mut()).unwrap();
        for (dx, x) in dx.rows().into_iter().zip(x.rows()) {
            assert_abs_diff_eq!(dx.dot(&x), 0.0, epsilon = 1e-12);
        }
        // d_gamma was added to, not overwritten.
        let expected = (&dy * &cache.x_hat).sum_axis(ndarray::Axis(0)) + 1.0;
        assert_abs_diff_eq!(dg, expected, epsilon = 1e-15);
    }
}
