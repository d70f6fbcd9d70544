//! The tied output head: logits from the token embedding table, `y = x·Eᵀ + b`.
//!
//! Shapes: `x (N, C)` (the last hidden rows), `E (V, C)` (the token table `embed.tok`, the
//! same array the embedding looks rows up in), optional `b (V)`, `y (N, V)`. The table is
//! used as stored, token-major: no transposed copy is made in either direction.

use ndarray::{Array2, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2};

use super::matmul::{matmul, matmul_into};
use super::reduce::add_column_sums;
use crate::error::check_shape;
use crate::exec::join_products;
use crate::{Float, Result};

const KERNEL: &str = "tied_head";

/// `y = x·Eᵀ + b`: `x (N, C)`, `table E (V, C)`, optional `b (V)` → `y (N, V)`; row `n` of
/// `y` holds the dot products of `x_n` with every token's embedding.
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when `x` is not `(N, C)` or `b`
/// not `(V)`; [`Error::TooLarge`](crate::Error::TooLarge) when `y` would exceed
/// [`MAX_ALLOC_BYTES`](crate::limits::MAX_ALLOC_BYTES).
pub fn tied_head_forward<F: Float>(
    x: ArrayView2<'_, F>,
    table: ArrayView2<'_, F>,
    b: Option<ArrayView1<'_, F>>,
) -> Result<Array2<F>> {
    let (v, c) = table.dim();
    check_shape(KERNEL, "x", x.shape(), &[None, Some(c)])?;
    if let Some(b) = &b {
        check_shape(KERNEL, "b", b.shape(), &[Some(v)])?;
    }
    crate::limits::check_alloc::<F>(KERNEL, "y", &[x.nrows(), v])?;
    // The linear map with `W = tableᵀ`, a strided view (no copy).
    let y = super::recycle::array((x.nrows(), v));
    Ok(super::linear::linear_over(x, table.t(), b, y))
}

/// Backward of [`tied_head_forward`]; returns `dx (N, C)` and **adds** into `d_table (V, C)`
/// and `d_b (V)`.
///
/// With `y_nv = Σ_c x_nc E_vc + b_v` and `dy = dL/dy (N, V)`:
///
/// * `dL/dE_vc = Σ_n dy_nv x_nc`, that is `dE += dyᵀ·x`, already in the table's `(V, C)`
///   layout — *(dE)*
/// * `dL/db_v  = Σ_n dy_nv` — *(db)*
/// * `dL/dx_nc = Σ_v dy_nv E_vc`, that is `dx = dy·E` — *(dx)*
///
/// This is the linear map's backward with `W = Eᵀ`. Because `E` is also the embedding's
/// table, *(dE)* is only this use's share of its gradient: the embedding's backward adds the
/// scatter of its own upstream gradient into the same array, and the sum of the two is
/// `dL/dE` (`docs/gradients.md`, "Tied embeddings").
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when the shapes disagree; then no
/// gradient changes.
pub fn tied_head_backward<F: Float>(
    x: ArrayView2<'_, F>,
    table: ArrayView2<'_, F>,
    dy: ArrayView2<'_, F>,
    mut d_table: ArrayViewMut2<'_, F>,
    d_b: Option<ArrayViewMut1<'_, F>>,
) -> Result<Array2<F>> {
    let (v, c) = table.dim();
    let n = x.nrows();
    check_shape(KERNEL, "x", x.shape(), &[None, Some(c)])?;
    check_shape(KERNEL, "dy", dy.shape(), &[Some(n), Some(v)])?;
    check_shape(KERNEL, "d_table", d_table.shape(), &[Some(v), Some(c)])?;
    if let Some(d_b) = &d_b {
        check_shape(KERNEL, "d_b", d_b.shape(), &[Some(v)])?;
    }
    crate::limits::check_alloc::<F>(KERNEL, "dx", &[n, c])?;
    let ((), dx) = join_products(
        n.saturating_mul(v).saturating_mul(c),
        || {
            // (dE)
            matmul_into(F::one(), dy.t(), x, F::one(), &mut d_table);
            // (db)
            if let Some(mut d_b) = d_b {
                add_column_sums(d_b.view_mut(), dy, None);
            }
        },
        // (dx)
        || matmul(dy, table),
    );
    Ok(dx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array1, array};

    #[test]
    fn hand_computed_forward_and_backward() {
        let x = array![[1.0, 2.0], [3.0, 4.0]];
        // Three tokens of width 2.
        let table = array![[1.0, 2.0], [0.0, 1.0], [-1.0, 0.5]];
        let b = array![0.5, -0.5, 0.0];
        let y = tied_head_forward(x.view(), table.view(), Some(b.view())).unwrap();
        assert_eq!(y, array![[5.5, 1.5, 0.0], [11.5, 3.5, -1.0]]);
        assert_eq!(
            tied_head_forward(x.view(), table.view(), None).unwrap(),
            array![[5.0, 2.0, 0.0], [11.0, 4.0, -1.0]]
        );

        let dy = array![[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]];
        let mut d_table = Array2::ones((3, 2));
        let mut d_b = Array1::zeros(3);
        let dx = tied_head_backward(
            x.view(),
            table.view(),
            dy.view(),
            d_table.view_mut(),
            Some(d_b.view_mut()),
        )
        .unwrap();
        assert_eq!(dx, array![[0.0, 2.5], [0.0, 1.0]]);
        // dyᵀ·x added onto the ones already there.
        assert_eq!(d_table, array![[2.0, 3.0], [4.0, 5.0], [2.0, 3.0]]);
        assert_eq!(d_b, array![1.0, 1.0, 1.0]);
    }

    #[test]
    fn a_wrong_table_gradient_changes_nothing() {
        let x = Array2::<f64>::ones((2, 3));
        let table = Array2::<f64>::ones((4, 3));
        let dy = Array2::<f64>::ones((2, 4));
        let mut d_b = Array1::<f64>::zeros(4);
        let mut d_table = Array2::<f64>::zeros((3, 4));
        let err = tied_head_backward(
            x.view(),
            table.view(),
            dy.view(),
            d_table.view_mut(),
            Some(d_b.view_mut()),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("tied_head: d_table has shape [3, 4], expected [4, 3]"),
            "{err}"
        );
        assert!(d_b.iter().all(|&g| g == 0.0));
    }
}
