//! The `(B, T, C)` ↔ `(N, C)` reshapes and the width check every position-wise layer needs.
//!
//! Activations cross layer boundaries as `(B, T, C)`; position-wise kernels work on rows
//! `(N, C)` with `N = B·T`, row `n` being position `(n / T, n % T)`.

use ndarray::{Array2, Array3, ArrayView3, CowArray, Ix2};

use crate::error::{ExpectedShape, check_shape};
use crate::{Error, Float, Result};

/// Checks an activation `(B, T, C)` against the width `c`, returning `(B, T)`; `layer` and
/// `what` name it in the error.
///
/// # Errors
/// [`Error::ShapeMismatch`] when the last axis is not `c`.
pub fn check_width<F>(
    layer: &'static str,
    what: &'static str,
    x: ArrayView3<'_, F>,
    c: usize,
) -> Result<(usize, usize)> {
    check_shape(layer, what, x.shape(), &[None, None, Some(c)])?;
    Ok((x.dim().0, x.dim().1))
}

/// Views `(B, T, C)` as `(B·T, C)` rows, copying only if `x` is not in standard layout.
pub fn rows<'a, F: Float>(x: ArrayView3<'a, F>) -> CowArray<'a, F, Ix2> {
    let (b, t, c) = x.dim();
    if x.is_standard_layout()
        && let Ok(view) = x.into_shape_with_order((b * t, c))
    {
        return CowArray::from(view);
    }
    // Row n of the result is position (n / T, n % T); with T = 0 there are no rows to fill.
    CowArray::from(Array2::from_shape_fn((b * t, c), |(n, j)| {
        x[[n / t, n % t, j]]
    }))
}

/// Turns an owned `(B, T, C)` array into `(B·T, C)` rows, moving rather than copying when it
/// is in standard layout.
pub fn into_rows<F: Float>(x: Array3<F>) -> Array2<F> {
    let (b, t, c) = x.dim();
    if x.is_standard_layout() {
        match x.into_shape_with_order((b * t, c)) {
            Ok(flat) => flat,
            Err(e) => unreachable!("a standard-layout (B, T, C) array reshapes to rows: {e}"),
        }
    } else {
        rows(x.view()).into_owned()
    }
}

/// `x` as rows, written into `buffer` when that has the right shape (reusing a cache's
/// allocation from one step to the next), otherwise into a new array.
pub(crate) fn rows_reusing<F: Float>(buffer: Option<Array2<F>>, x: ArrayView3<'_, F>) -> Array2<F> {
    let (b, t, c) = x.dim();
    match buffer {
        Some(mut buffer) if buffer.dim() == (b * t, c) => {
            buffer.assign(&rows(x));
            buffer
        }
        _ => rows(x).into_owned(),
    }
}

/// Reshapes `(B·T, C)` rows back to `(B, T, C)`, moving when `y` is in standard layout.
///
/// # Errors
/// [`Error::ShapeMismatch`] (naming `layer`) when `y` does not have `B·T` rows.
pub fn from_rows<F: Float>(
    layer: &'static str,
    y: Array2<F>,
    (b, t): (usize, usize),
) -> Result<Array3<F>> {
    let (n, c) = y.dim();
    let y = if y.is_standard_layout() {
        y
    } else {
        y.as_standard_layout().into_owned()
    };
    y.into_shape_with_order((b, t, c))
        .map_err(|_| Error::ShapeMismatch {
            layer,
            what: "output rows",
            expected: ExpectedShape(vec![b.checked_mul(t), Some(c)]),
            actual: vec![n, c],
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_of_a_non_standard_layout_match_the_standard_copy() {
        // A (B, T, C) = (2, 3, 4) view whose memory is laid out (C, T, B).
        let storage = Array3::from_shape_fn((4, 3, 2), |(c, t, b)| (100 * b + 10 * t + c) as f64);
        let x = storage.view().reversed_axes();
        assert!(!x.is_standard_layout());
        let flat = rows(x);
        assert_eq!(flat.dim(), (6, 4));
        assert_eq!(flat, rows(x.as_standard_layout().view()));
        assert_eq!(flat[[4, 2]], 112.0); // b = 1, t = 1, c = 2
        assert_eq!(rows(Array3::<f64>::zeros((2, 0, 3)).view()).dim(), (0, 3));
    }

    #[test]
    fn rows_round_trip() {
        let x = Array3::from_shape_fn((2, 3, 4), |(b, t, c)| (b * 12 + t * 4 + c) as f64);
        let back = from_rows("test", into_rows(x.clone()), (2, 3)).unwrap();
        assert_eq!(back, x);
        assert!(from_rows("test", Array2::<f64>::zeros((5, 4)), (2, 3)).is_err());
    }
}
