//! Small helpers shared by the layers: flattening `(B, T, C)` to rows, cache access and
//! weight initialisation.

use ndarray::{Array2, Array3, ArrayView2, ArrayView3, CowArray, Ix2};
use rand::{Rng, RngExt};
use rand_distr::{Distribution, StandardNormal};

use crate::error::{ExpectedShape, check_shape};
use crate::{Error, Float, Result};

/// Views `(B, T, C)` as `(B·T, C)` rows, copying only if `x` is not in standard layout.
pub(crate) fn rows<'a, F: Float>(x: ArrayView3<'a, F>) -> CowArray<'a, F, Ix2> {
    let (b, t, c) = x.dim();
    if x.is_standard_layout() {
        if let Ok(view) = x.into_shape_with_order((b * t, c)) {
            return CowArray::from(view);
        }
    }
    // Row n of the result is position (n / T, n % T); with T = 0 there are no rows to fill.
    CowArray::from(Array2::from_shape_fn((b * t, c), |(n, j)| {
        x[[n / t, n % t, j]]
    }))
}

/// Turns an owned `(B, T, C)` array into `(B·T, C)` rows, moving rather than copying when it
/// is in standard layout.
/// `x` copied into `buffer` when that has the same shape (reusing its allocation, as the
/// caches do from one step to the next), otherwise into a new array.
pub(crate) fn copy_reusing<F: Float>(buffer: Option<Array2<F>>, x: ArrayView2<'_, F>) -> Array2<F> {
    match buffer {
        Some(mut buffer) if buffer.dim() == x.dim() => {
            buffer.assign(&x);
            buffer
        }
        _ => x.to_owned(),
    }
}

pub(crate) fn into_rows<F: Float>(x: Array3<F>) -> Array2<F> {
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

/// Reshapes `(B·T, C)` rows back to `(B, T, C)`.
pub(crate) fn unrows<F: Float>(
    layer: &'static str,
    y: Array2<F>,
    b: usize,
    t: usize,
) -> Result<Array3<F>> {
    let (n, c) = y.dim();
    // Kernel outputs are fresh standard-layout arrays, so this reshape moves, not copies.
    let y = if y.is_standard_layout() {
        y
    } else {
        y.as_standard_layout().into_owned()
    };
    y.into_shape_with_order((b, t, c))
        .map_err(|_| Error::ShapeMismatch {
            layer,
            what: "output",
            expected: ExpectedShape(vec![Some(b * t), Some(c)]),
            actual: vec![n, c],
        })
}

/// Checks an activation `(B, T, C)` against the width `c`, returning `(B, T)`.
pub(crate) fn check_activation<F>(
    layer: &'static str,
    what: &'static str,
    x: ArrayView3<'_, F>,
    c: usize,
) -> Result<(usize, usize)> {
    check_shape(layer, what, x.shape(), &[None, None, Some(c)])?;
    Ok((x.dim().0, x.dim().1))
}

/// Checks that `dy` has exactly the shape `(B, T, C)` of the last forward's output.
pub(crate) fn check_dy<F>(
    layer: &'static str,
    dy: &Array3<F>,
    shape: (usize, usize, usize),
) -> Result<()> {
    check_shape(
        layer,
        "dy",
        dy.shape(),
        &[Some(shape.0), Some(shape.1), Some(shape.2)],
    )
}

/// The cache of the last forward, or [`Error::BackwardBeforeForward`].
pub(crate) fn cached<'a, T>(layer: &'static str, cache: &'a Option<T>) -> Result<&'a T> {
    cache.as_ref().ok_or(Error::BackwardBeforeForward { layer })
}

/// Glorot (Xavier) uniform: `U(−l, l)` with `l = √(6 / (fan_in + fan_out))`, shape
/// `(fan_in, fan_out)`. This is the original's initialisation for every weight matrix.
pub fn glorot_uniform<F: Float, R: Rng + ?Sized>(
    fan_in: usize,
    fan_out: usize,
    rng: &mut R,
) -> Array2<F> {
    let limit = if fan_in + fan_out == 0 {
        0.0
    } else {
        (6.0 / (fan_in + fan_out) as f64).sqrt()
    };
    Array2::from_shape_simple_fn((fan_in, fan_out), || {
        F::of((rng.random::<f64>() * 2.0 - 1.0) * limit)
    })
}

/// Normal `N(0, std²)` entries of shape `(rows, cols)`.
pub fn normal<F: Float, R: Rng + ?Sized>(
    rows: usize,
    cols: usize,
    std: f64,
    rng: &mut R,
) -> Array2<F> {
    Array2::from_shape_simple_fn((rows, cols), || {
        let z: f64 = StandardNormal.sample(rng);
        F::of(z * std)
    })
}

/// Checks token ids `(B, T)` against the vocabulary and context, naming `layer`.
pub(crate) fn check_ids_for(
    layer: &'static str,
    ids: &ndarray::Array2<usize>,
    vocab_size: usize,
    context: usize,
) -> Result<()> {
    crate::kernels::embedding::check_ids(layer, ids.view(), vocab_size, context)
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
}
