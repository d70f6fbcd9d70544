//! Rotary position embeddings (RoPE), in the convention of Hugging Face's Llama
//! (`rotate_half`).
//!
//! Shapes: `x (B, T, C)` holding `C / D` heads of even size `D` as contiguous column slices,
//! at absolute positions `start..start + T`; output `(B, T, C)`.
//!
//! Within each head the `D` dims are split in two halves, and dim `i < D/2` is paired with
//! dim `i + D/2`. The pair at position `p` is rotated by the angle `a = p·ω_i`, with
//! `ω_i = θ^(−2i/D)`:
//!
//! ```text
//! y[i]       = x[i]·cos a − x[i + D/2]·sin a
//! y[i + D/2] = x[i + D/2]·cos a + x[i]·sin a
//! ```
//!
//! which is `y = x ⊙ cos + rotate_half(x) ⊙ sin` with `cos`, `sin` of `p·ω` repeated over
//! both halves and `rotate_half(x) = (−x[D/2..], x[..D/2])`. Every head (query or key) at a
//! position gets the same rotation, so the score of a query at `p` and a key at `p'` depends
//! on the positions only through `p − p'`.

use ndarray::{Array2, Array3, ArrayView3, Axis, Zip};

use crate::limits::check_alloc;
use crate::{Error, Float, Result};

const KERNEL: &str = "rope";

/// Hugging Face's default `rope_theta`.
pub const DEFAULT_ROPE_THETA: f64 = 10_000.0;

/// Checks `head_dim`, `theta` and the positions; returns `(B, T, C)`.
fn check<F: Float>(
    x: &ArrayView3<'_, F>,
    head_dim: usize,
    start: usize,
    theta: f64,
) -> Result<(usize, usize, usize)> {
    let (b, t, c) = x.dim();
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(Error::InvalidConfig {
            layer: KERNEL,
            reason: format!("the head size {head_dim} must be even and positive"),
        });
    }
    if !c.is_multiple_of(head_dim) {
        return Err(Error::InvalidConfig {
            layer: KERNEL,
            reason: format!("the head size {head_dim} does not divide the width {c}"),
        });
    }
    if !(theta.is_finite() && theta > 0.0) {
        return Err(Error::InvalidConfig {
            layer: KERNEL,
            reason: format!("theta {theta} is not finite and positive"),
        });
    }
    if start.checked_add(t).is_none() {
        return Err(Error::SequenceLength {
            layer: KERNEL,
            len: usize::MAX,
            context: usize::MAX,
        });
    }
    check_alloc::<F>(KERNEL, "angles", &[t, head_dim / 2])?;
    check_alloc::<F>(KERNEL, "y", &[b, t, c])?;
    Ok((b, t, c))
}

/// `x` rotated by `sign · p·ω_i` at each position `p` (the shared body of both directions).
fn rotate<F: Float>(
    x: ArrayView3<'_, F>,
    head_dim: usize,
    start: usize,
    theta: f64,
    sign: f64,
) -> Result<Array3<F>> {
    let (b, t, c) = check(&x, head_dim, start, theta)?;
    let half = head_dim / 2;
    // cos and sin of every position's angles, (T, D/2), computed in f64.
    let angle = |ti: usize, i: usize| {
        let inv_freq = 1.0 / theta.powf((2 * i) as f64 / head_dim as f64);
        (start + ti) as f64 * inv_freq
    };
    let cos = Array2::from_shape_fn((t, half), |(ti, i)| F::of(angle(ti, i).cos()));
    let sin = Array2::from_shape_fn((t, half), |(ti, i)| F::of(sign * angle(ti, i).sin()));
    let mut y = super::recycle::zeros((b, t, c));
    Zip::indexed(y.lanes_mut(Axis(2)))
        .and(x.lanes(Axis(2)))
        .for_each(|(_, ti), mut y, x| {
            let (cos, sin) = (cos.row(ti), sin.row(ti));
            for head in 0..c / head_dim {
                let o = head * head_dim;
                for i in 0..half {
                    let (x1, x2) = (x[o + i], x[o + half + i]);
                    y[o + i] = x1 * cos[i] - x2 * sin[i];
                    y[o + half + i] = x2 * cos[i] + x1 * sin[i];
                }
            }
        });
    Ok(y)
}

/// Rotates every head of size `head_dim` of `x (B, T, C)`, at positions `start..start + T`,
/// with base `theta`; returns `(B, T, C)`.
///
/// # Errors
/// [`Error::InvalidConfig`] when `head_dim` is zero or odd or does not divide `C`, or `theta`
/// is not finite and positive; [`Error::SequenceLength`] when `start + T` overflows;
/// [`Error::TooLarge`] when the output would exceed
/// [`MAX_ALLOC_BYTES`](crate::limits::MAX_ALLOC_BYTES).
pub fn rope_forward<F: Float>(
    x: ArrayView3<'_, F>,
    head_dim: usize,
    start: usize,
    theta: f64,
) -> Result<Array3<F>> {
    rotate(x, head_dim, start, theta, 1.0)
}

/// Backward of [`rope_forward`]: `dx` from `dy (B, T, C)`, returned fresh (no parameters).
///
/// Each pair `(x[i], x[i + D/2])` at position `p` is multiplied by the rotation matrix
///
/// ```text
/// R(a) = | cos a  −sin a |
///        | sin a   cos a |        a = p·ω_i,
/// ```
///
/// so `y = R·x` and `dx = Rᵀ·dy`. A rotation matrix is orthogonal, `R(a)ᵀ = R(−a)`, so the
/// backward is the rotation by the opposite angle:
///
/// ```text
/// dx[i]       =  dy[i]·cos a + dy[i + D/2]·sin a
/// dx[i + D/2] = −dy[i]·sin a + dy[i + D/2]·cos a
/// ```
///
/// which is [`rope_forward`] with `sin a` negated — *(dx)*. Pairs, heads and positions are
/// independent, so nothing else contributes.
///
/// # Errors
/// As [`rope_forward`].
pub fn rope_backward<F: Float>(
    dy: ArrayView3<'_, F>,
    head_dim: usize,
    start: usize,
    theta: f64,
) -> Result<Array3<F>> {
    // (dx): the rotation by −a, i.e. sin negated.
    rotate(dy, head_dim, start, theta, -1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;

    fn x(b: usize, t: usize, c: usize) -> Array3<f64> {
        Array3::from_shape_fn((b, t, c), |(i, j, l)| {
            ((i * 13 + j * 7 + l) as f64 * 0.41).sin()
        })
    }

    #[test]
    fn position_zero_is_the_identity_and_norms_are_kept() {
        let x = x(2, 5, 12);
        let y = rope_forward(x.view(), 4, 0, 10_000.0).unwrap();
        assert_eq!(y.index_axis(Axis(1), 0), x.index_axis(Axis(1), 0));
        for (a, b) in x.lanes(Axis(2)).into_iter().zip(y.lanes(Axis(2))) {
            assert_abs_diff_eq!(a.dot(&a), b.dot(&b), epsilon = 1e-12);
        }
    }

    #[test]
    fn backward_undoes_forward_and_scores_depend_on_the_offset_only() {
        let x = x(1, 6, 8);
        let y = rope_forward(x.view(), 8, 3, 100.0).unwrap();
        let back = rope_backward(y.view(), 8, 3, 100.0).unwrap();
        assert_abs_diff_eq!(back, x, epsilon = 1e-12);
        // q at position 5 against k at position 2, and the same vectors at 9 and 6.
        let q = x.slice(ndarray::s![.., 0..1, ..]).to_owned();
        let k = x.slice(ndarray::s![.., 1..2, ..]).to_owned();
        let score = |pq, pk| {
            let rq = rope_forward(q.view(), 8, pq, 100.0).unwrap();
            let rk = rope_forward(k.view(), 8, pk, 100.0).unwrap();
            (&rq * &rk).sum()
        };
        assert_abs_diff_eq!(score(5, 2), score(9, 6), epsilon = 1e-12);
    }

    #[test]
    fn a_hand_computed_pair() {
        // D = 2: one pair, ω_0 = 1, position 1: a rotation by 1 radian.
        let x = ndarray::array![[[1.0, 2.0]]];
        let y = rope_forward(x.view(), 2, 1, 10_000.0).unwrap();
        let (c, s) = (1f64.cos(), 1f64.sin());
        assert_abs_diff_eq!(
            y,
            ndarray::array![[[c - 2.0 * s, 2.0 * c + s]]],
            epsilon = 1e-15
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        let x = x(1, 2, 6);
        for (d, theta) in [(0, 1e4), (3, 1e4), (4, 1e4), (2, 0.0), (2, f64::NAN)] {
            let err = rope_forward(x.view(), d, 0, theta).unwrap_err();
            assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
        }
        let err = rope_forward(x.view(), 2, usize::MAX, 1e4).unwrap_err();
        assert!(matches!(err, Error::SequenceLength { .. }), "{err}");
    }
}
