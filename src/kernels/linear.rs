//! Affine map `y = x·W + b`.
//!
//! Shapes: `x (N, C_in)`, `W (C_in, C_out)`, `b (C_out)`, `y (N, C_out)`. The weight is stored
//! input-major, as in the NumPy original, so the forward is one plain product.

use ndarray::{Array2, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, Zip};

use super::matmul::{matmul, matmul_into};
use super::reduce::add_column_sums;
use crate::error::check_shape;
use crate::exec::{for_each_split, join_products};
use crate::{Float, Result};

const KERNEL: &str = "linear";

/// `y = x·W + b`: `x (N, C_in)`, `w (C_in, C_out)`, optional `b (C_out)` → `y (N, C_out)`.
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when the shapes disagree;
/// [`Error::TooLarge`](crate::Error::TooLarge) when `y` would exceed
/// [`MAX_ALLOC_BYTES`](crate::limits::MAX_ALLOC_BYTES).
pub fn linear_forward<F: Float>(
    x: ArrayView2<'_, F>,
    w: ArrayView2<'_, F>,
    b: Option<ArrayView1<'_, F>>,
) -> Result<Array2<F>> {
    check_forward(x, w, b)?;
    let shape = (x.nrows(), w.ncols());
    crate::limits::check_alloc::<F>(KERNEL, "y", &[shape.0, shape.1])?;
    Ok(linear_over(x, w, b, super::recycle::array(shape)))
}

/// `x·W + b` written over `y (N, C_out)`, whose values are not read; the caller checked the
/// shapes. With a bias, every row starts from it and the product is accumulated onto it: one
/// pass over `y` instead of a product followed by a broadcast add.
pub(crate) fn linear_over<F: Float>(
    x: ArrayView2<'_, F>,
    w: ArrayView2<'_, F>,
    b: Option<ArrayView1<'_, F>>,
    mut y: Array2<F>,
) -> Array2<F> {
    let beta = match b {
        Some(b) => {
            for_each_split!(y.len(), Zip::from(y.rows_mut()), |mut row| row.assign(&b));
            F::one()
        }
        None => F::zero(),
    };
    matmul_into(F::one(), x, w, beta, &mut y.view_mut());
    y
}

/// The shape checks of [`linear_forward`].
fn check_forward<F>(
    x: ArrayView2<'_, F>,
    w: ArrayView2<'_, F>,
    b: Option<ArrayView1<'_, F>>,
) -> Result<()> {
    let (c_in, c_out) = w.dim();
    check_shape(KERNEL, "x", x.shape(), &[None, Some(c_in)])?;
    if let Some(b) = &b {
        check_shape(KERNEL, "b", b.shape(), &[Some(c_out)])?;
    }
    Ok(())
}

/// Backward of [`linear_forward`]; returns `dx (N, C_in)` and **adds** into `d_w` and `d_b`.
///
/// With `y_nj = Σ_i x_ni W_ij + b_j`:
///
/// * `dL/dW_ij = Σ_n x_ni dy_nj`, that is `dW += xᵀ·dy` — *(dW)*
/// * `dL/db_j  = Σ_n dy_nj` — *(db)*
/// * `dL/dx_ni = Σ_j dy_nj W_ij`, that is `dx = dy·Wᵀ` — *(dx)*
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when the shapes disagree.
pub fn linear_backward<F: Float>(
    x: ArrayView2<'_, F>,
    w: ArrayView2<'_, F>,
    dy: ArrayView2<'_, F>,
    d_w: ArrayViewMut2<'_, F>,
    d_b: Option<ArrayViewMut1<'_, F>>,
) -> Result<Array2<F>> {
    check_param_grads(x, w, dy, &d_w, &d_b)?;
    // (dW, db) beside (dx): the two products are independent.
    let ((), dx) = join_products(
        x.len() * w.ncols(),
        || add_param_grads(x, dy, d_w, d_b),
        || matmul(dy, w.t()),
    );
    Ok(dx)
}

/// [`linear_backward`] that adds `dy·Wᵀ` into `dx (N, C_in)` instead of returning it, for
/// an input feeding several linear maps (the attention's Q, K and V projections).
pub(crate) fn linear_backward_add<F: Float>(
    x: ArrayView2<'_, F>,
    w: ArrayView2<'_, F>,
    dy: ArrayView2<'_, F>,
    d_w: ArrayViewMut2<'_, F>,
    dx: &mut ArrayViewMut2<'_, F>,
) -> Result<()> {
    check_shape(
        KERNEL,
        "dx",
        dx.shape(),
        &[Some(x.nrows()), Some(w.nrows())],
    )?;
    check_param_grads(x, w, dy, &d_w, &None)?;
    join_products(
        x.len() * w.ncols(),
        || add_param_grads(x, dy, d_w, None),
        // (dx), accumulated
        || matmul_into(F::one(), dy, w.t(), F::one(), dx),
    );
    Ok(())
}

/// The shape checks of [`linear_backward`].
fn check_param_grads<F: Float>(
    x: ArrayView2<'_, F>,
    w: ArrayView2<'_, F>,
    dy: ArrayView2<'_, F>,
    d_w: &ArrayViewMut2<'_, F>,
    d_b: &Option<ArrayViewMut1<'_, F>>,
) -> Result<()> {
    let (c_in, c_out) = w.dim();
    let n = x.nrows();
    check_shape(KERNEL, "x", x.shape(), &[None, Some(c_in)])?;
    check_shape(KERNEL, "dy", dy.shape(), &[Some(n), Some(c_out)])?;
    check_shape(KERNEL, "d_w", d_w.shape(), &[Some(c_in), Some(c_out)])?;
    if let Some(d_b) = &d_b {
        check_shape(KERNEL, "d_b", d_b.shape(), &[Some(c_out)])?;
    }
    Ok(())
}

/// The parameter terms *(dW)* and *(db)* of [`linear_backward`], shapes already checked.
fn add_param_grads<F: Float>(
    x: ArrayView2<'_, F>,
    dy: ArrayView2<'_, F>,
    mut d_w: ArrayViewMut2<'_, F>,
    d_b: Option<ArrayViewMut1<'_, F>>,
) {
    // (dW)
    matmul_into(F::one(), x.t(), dy, F::one(), &mut d_w);
    // (db)
    if let Some(mut d_b) = d_b {
        add_column_sums(d_b.view_mut(), dy, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array1, array};

    #[test]
    fn hand_computed_forward_and_backward() {
        let x = array![[1.0, 2.0], [3.0, 4.0]];
        let w = array![[1.0, 0.0, -1.0], [2.0, 1.0, 0.5]];
        let b = array![0.5, -0.5, 0.0];
        let y = linear_forward(x.view(), w.view(), Some(b.view())).unwrap();
        assert_eq!(y, array![[5.5, 1.5, 0.0], [11.5, 3.5, -1.0]]);

        let dy = array![[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]];
        let mut d_w = Array2::zeros((2, 3));
        let mut d_b = Array1::zeros(3);
        let dx = linear_backward(
            x.view(),
            w.view(),
            dy.view(),
            d_w.view_mut(),
            Some(d_b.view_mut()),
        )
        .unwrap();
        assert_eq!(dx, array![[0.0, 2.5], [0.0, 1.0]]);
        assert_eq!(d_w, array![[1.0, 3.0, 1.0], [2.0, 4.0, 2.0]]);
        assert_eq!(d_b, array![1.0, 1.0, 1.0]);
    }

    #[test]
    fn large_backward_on_the_parallel_paths_matches_reference() {
        // Big enough for the joined products and the parallel bias-gradient sum.
        use crate::kernels::matmul::matmul_reference;
        let sample = |r: usize, c: usize, k: f64| {
            Array2::from_shape_fn((r, c), |(i, j)| ((i * 7 + j * 3) as f64 * k).sin())
        };
        let (x, w, dy) = (
            sample(800, 80, 0.13),
            sample(80, 70, 0.29),
            sample(800, 70, 0.41),
        );
        const { assert!(800 * 80 * 70 >= crate::exec::PARALLEL_MIN_MACS) };
        let (mut d_w, mut d_b) = (Array2::ones((80, 70)), Array1::ones(70));
        let dx = linear_backward(
            x.view(),
            w.view(),
            dy.view(),
            d_w.view_mut(),
            Some(d_b.view_mut()),
        )
        .unwrap();
        approx::assert_abs_diff_eq!(dx, matmul_reference(dy.view(), w.t()), epsilon = 1e-10);
        let expected_d_w = matmul_reference(x.t(), dy.view()) + 1.0;
        approx::assert_abs_diff_eq!(d_w, expected_d_w, epsilon = 1e-10);
        let expected_d_b = dy.sum_axis(ndarray::Axis(0)) + 1.0;
        approx::assert_abs_diff_eq!(d_b, expected_d_b, epsilon = 1e-10);
        let mut dx_sum = dx.clone();
        let mut d_w2 = Array2::zeros((80, 70));
        linear_backward_add(
            x.view(),
            w.view(),
            dy.view(),
            d_w2.view_mut(),
            &mut dx_sum.view_mut(),
        )
        .unwrap();
        approx::assert_abs_diff_eq!(dx_sum, &dx * 2.0, epsilon = 1e-10);
        approx::assert_abs_diff_eq!(d_w2, expected_d_w - 1.0, epsilon = 1e-10);
    }

    #[test]
    fn mismatched_inner_dimension_is_an_error() {
        let x = Array2::<f64>::zeros((2, 3));
        let w = Array2::<f64>::zeros((2, 4));
        let err = linear_forward(x.view(), w.view(), None).unwrap_err();
        assert!(
            err.to_string()
                .contains("linear: x has shape [2, 3], expected [*, 2]"),
            "{err}"
        );
    }
}
