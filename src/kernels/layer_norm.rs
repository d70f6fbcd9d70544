//! Affine layer normalisation over the last axis.
//!
//! Shapes: `x (N, C)`, `gamma (C)`, `beta (C)`, `y (N, C)`. Per row: `μ = mean(x)`,
//! `σ² = mean((x − μ)²)` (biased), `rstd = 1/√(σ² + eps)`, `x̂ = (x − μ)·rstd`,
//! `y = gamma ⊙ x̂ + beta`.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut1, Zip};

use super::reduce::add_column_sums;
use crate::error::check_shape;
use crate::exec::for_each_split;
use crate::{Float, Result};

const KERNEL: &str = "layer_norm";

/// What [`layer_norm_backward`] needs from the forward: the normalised input and the
/// reciprocal standard deviation of each row.
#[derive(Clone, Debug)]
pub struct LayerNormCache<F> {
    /// `x̂ = (x − μ)·rstd`, shape `(N, C)`.
    pub x_hat: Array2<F>,
    /// `rstd = 1/√(σ² + eps)` per row, shape `(N)`.
    pub rstd: Array1<F>,
}

/// Normalises each row of `x (N, C)` and applies `gamma (C)`, `beta (C)`; returns `y (N, C)`.
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when `gamma` or `beta` is not `(C)`.
pub fn layer_norm_forward<F: Float>(
    x: ArrayView2<'_, F>,
    gamma: ArrayView1<'_, F>,
    beta: ArrayView1<'_, F>,
    eps: F,
) -> Result<(Array2<F>, LayerNormCache<F>)> {
    let (n, c) = x.dim();
    check_shape(KERNEL, "gamma", gamma.shape(), &[Some(c)])?;
    check_shape(KERNEL, "beta", beta.shape(), &[Some(c)])?;
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
            let mean = x.sum() * inv_c;
            let var = x.fold(F::zero(), |acc, &v| acc + (v - mean) * (v - mean)) * inv_c;
            *rstd = F::one() / (var + eps).sqrt();
            Zip::from(&mut x_hat)
                .and(&mut y)
                .and(&x)
                .and(&gamma)
                .and(&beta)
                .for_each(|x_hat, y, &x, &g, &b| {
                    *x_hat = (x - mean) * *rstd;
                    *y = g * *x_hat + b;
                });
        }
    );
    Ok((y, LayerNormCache { x_hat, rstd }))
}

/// Backward of [`layer_norm_forward`]; returns `dx (N, C)` and **adds** into `d_gamma`,
/// `d_beta`.
///
/// * `d_gamma += Σ_n dy ⊙ x̂` and `d_beta += Σ_n dy` — *(dgamma, dbeta)*
/// * With `g = dy ⊙ gamma` (the gradient reaching `x̂`), and since
///   `∂x̂_j/∂x_i = rstd·(δ_ij − 1/C − x̂_i·x̂_j/C)`:
///   `dx = rstd·(g − mean(g) − x̂·mean(g ⊙ x̂))` per row — *(dx)*
///
/// The full derivation is in `docs/gradients.md`.
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when the cache's `rstd` is not one
/// value per row of its `x_hat`, or `dy`, `gamma` or the gradient buffers do not match the
/// cache. Everything is checked before anything is added.
pub fn layer_norm_backward<F: Float>(
    cache: &LayerNormCache<F>,
    dy: ArrayView2<'_, F>,
    gamma: ArrayView1<'_, F>,
    mut d_gamma: ArrayViewMut1<'_, F>,
    mut d_beta: ArrayViewMut1<'_, F>,
) -> Result<Array2<F>> {
    let (n, c) = cache.x_hat.dim();
    check_shape(KERNEL, "rstd", cache.rstd.shape(), &[Some(n)])?;
    check_shape(KERNEL, "dy", dy.shape(), &[Some(n), Some(c)])?;
    check_shape(KERNEL, "gamma", gamma.shape(), &[Some(c)])?;
    check_shape(KERNEL, "d_gamma", d_gamma.shape(), &[Some(c)])?;
    check_shape(KERNEL, "d_beta", d_beta.shape(), &[Some(c)])?;
    // (dgamma, dbeta)
    add_column_sums(d_gamma.view_mut(), dy, Some(cache.x_hat.view()));
    add_column_sums(d_beta.view_mut(), dy, None);
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
            let (mut mean_g, mut mean_g_xhat) = (F::zero(), F::zero());
            Zip::from(&dy)
                .and(&gamma)
                .and(&x_hat)
                .for_each(|&dy, &g, &xh| {
                    mean_g += dy * g;
                    mean_g_xhat += dy * g * xh;
                });
            mean_g *= inv_c;
            mean_g_xhat *= inv_c;
            Zip::from(&mut dx)
                .and(&dy)
                .and(&gamma)
                .and(&x_hat)
                .for_each(|dx, &dy, &g, &xh| *dx = rstd * (dy * g - mean_g - xh * mean_g_xhat));
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
        // Row [1, 2, 3]: μ = 2, σ² = 2/3, x̂ = [-1, 0, 1]·√(3/2) (eps = 0).
        let x = array![[1.0, 2.0, 3.0]];
        let gamma = array![1.0, 2.0, 1.0];
        let beta = array![0.0, 0.5, 0.0];
        let (y, cache) = layer_norm_forward(x.view(), gamma.view(), beta.view(), 0.0).unwrap();
        let r = 1.5f64.sqrt();
        assert_abs_diff_eq!(y, array![[-r, 0.5, r]], epsilon = 1e-12);
        assert_abs_diff_eq!(cache.rstd[0], r, epsilon = 1e-12);
    }

    #[test]
    fn constant_shift_of_input_has_zero_gradient() {
        // y does not depend on adding a constant to a row, so Σ_i dx_i = 0 for any dy.
        let x = array![[0.3, -1.2, 2.0, 0.7], [1.0, 1.5, -0.5, 0.0]];
        let gamma = array![1.0, 0.5, -2.0, 1.5];
        let beta = Array1::zeros(4);
        let (_, cache) = layer_norm_forward(x.view(), gamma.view(), beta.view(), 1e-5).unwrap();
        let dy = array![[1.0, -2.0, 0.5, 3.0], [0.2, 0.1, -0.4, 1.0]];
        let (mut dg, mut db) = (Array1::zeros(4), Array1::zeros(4));
        let dx = layer_norm_backward(
            &cache,
            dy.view(),
            gamma.view(),
            dg.view_mut(),
            db.view_mut(),
        )
        .unwrap();
        for row in dx.rows() {
            assert_abs_diff_eq!(row.sum(), 0.0, epsilon = 1e-12);
        }
        assert_abs_diff_eq!(db, array![1.2, -1.9, 0.1, 4.0], epsilon = 1e-15);
    }
}
