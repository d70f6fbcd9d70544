//! SiLU (`x·σ(x)`, also called swish) and the SwiGLU gate `silu(g) ⊙ u`.
//!
//! Element-wise, so any shape works; outputs have the inputs' shape. A SwiGLU MLP
//! ([`SwiGlu`](crate::layers::SwiGlu)) is `(silu(x·W_gate) ⊙ (x·W_up))·W_down`: the two
//! products and the last one are [`linear`](super::linear) kernels, the gate in between is
//! [`swiglu_forward`] / [`swiglu_backward`].

use ndarray::{Array, ArrayView, ArrayViewMut, Dimension, Zip};

use super::elementwise::{map_array, zip_map_array};
use crate::error::check_shape;
use crate::exec::for_each_split;
use crate::{Float, Result};

/// `σ(x) = 1/(1 + e^{−x})`, evaluated as `e^x/(1 + e^x)` for negative `x` so that `e^{−x}`
/// never overflows; NaN stays NaN.
#[inline]
fn sigmoid<F: Float>(x: F) -> F {
    if x >= F::zero() {
        F::one() / (F::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (F::one() + e)
    }
}

/// `silu(x) = x·σ(x)`.
#[inline]
fn silu<F: Float>(x: F) -> F {
    x * sigmoid(x)
}

/// `silu'(x) = σ(x) + x·σ(x)·(1 − σ(x))` (derivation at [`silu_backward`]).
#[inline]
fn silu_derivative<F: Float>(x: F) -> F {
    let s = sigmoid(x);
    // (term 1) + (term 2)
    s + x * s * (F::one() - s)
}

/// Checks that `actual` (the shape of `what`) is `expected`, naming `kernel`.
fn same_shape(
    kernel: &'static str,
    what: &'static str,
    expected: &[usize],
    actual: &[usize],
) -> Result<()> {
    let expected: Vec<Option<usize>> = expected.iter().map(|&n| Some(n)).collect();
    check_shape(kernel, what, actual, &expected)
}

/// Applies `silu(x) = x·σ(x)` element-wise: any shape in, the same shape out.
pub fn silu_forward<F: Float, D: Dimension>(x: ArrayView<'_, F, D>) -> Array<F, D> {
    map_array(x, silu)
}

/// Backward of [`silu_forward`]: `dx = dy ⊙ silu'(x)`, with `x` the forward's input.
///
/// With `σ' = σ·(1 − σ)`, the product rule on `x·σ(x)` gives
///
/// `silu'(x) = σ(x) + x·σ(x)·(1 − σ(x)) = σ(x)·(1 + x·(1 − σ(x)))`
///
/// the first term from the factor `x` *(term 1)*, the second from `σ(x)` *(term 2)*.
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when `dy` and `x` differ in shape.
pub fn silu_backward<F: Float, D: Dimension>(
    x: ArrayView<'_, F, D>,
    dy: ArrayView<'_, F, D>,
) -> Result<Array<F, D>> {
    same_shape("silu", "dy", x.shape(), dy.shape())?;
    Ok(zip_map_array(x, dy, |x, dy| dy * silu_derivative(x)))
}

/// The SwiGLU gate: `a = silu(gate) ⊙ up`, element-wise, `gate` and `up` of one shape
/// (`(N, H)` in [`SwiGlu`](crate::layers::SwiGlu)); `a` has that shape.
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when `up` and `gate` differ in shape.
pub fn swiglu_forward<F: Float, D: Dimension>(
    gate: ArrayView<'_, F, D>,
    up: ArrayView<'_, F, D>,
) -> Result<Array<F, D>> {
    same_shape("swiglu", "up", gate.shape(), up.shape())?;
    Ok(zip_map_array(gate, up, |g, u| silu(g) * u))
}

/// Backward of [`swiglu_forward`]: returns `(d_gate, d_up)`, both of `gate`'s shape.
///
/// `a = silu(g) ⊙ u` is a product of two element-wise factors, so
///
/// * `d_up   = da ⊙ silu(g)` — *(dup)*
/// * `d_gate = da ⊙ u ⊙ silu'(g)`, with `silu'(g) = σ(g)·(1 + g·(1 − σ(g)))` as in
///   [`silu_backward`] — *(dgate)*
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when `up` or `da` differ from `gate`
/// in shape.
pub fn swiglu_backward<F: Float, D: Dimension>(
    gate: ArrayView<'_, F, D>,
    up: ArrayView<'_, F, D>,
    da: ArrayView<'_, F, D>,
) -> Result<(Array<F, D>, Array<F, D>)> {
    same_shape("swiglu", "up", gate.shape(), up.shape())?;
    same_shape("swiglu", "da", gate.shape(), da.shape())?;
    let mut d_gate = super::recycle::array(gate.raw_dim());
    d_gate.assign(&da);
    let mut d_up = super::recycle::zeros(gate.raw_dim());
    swiglu_backward_in_place(gate, up, d_gate.view_mut(), d_up.view_mut());
    Ok((d_gate, d_up))
}

/// [`swiglu_backward`] into buffers: `d` holds `da` on entry and `d_gate` on return, and
/// `d_up` is overwritten. All four of one shape (checked by the caller). The SwiGLU layer
/// uses it to turn its `da` and a spent `(N, H)` buffer into the two gradients without
/// allocating.
pub(crate) fn swiglu_backward_in_place<F: Float, D: Dimension>(
    gate: ArrayView<'_, F, D>,
    up: ArrayView<'_, F, D>,
    d: ArrayViewMut<'_, F, D>,
    d_up: ArrayViewMut<'_, F, D>,
) {
    for_each_split!(
        d.len(),
        Zip::from(d).and(d_up).and(gate).and(up),
        |d, d_up, &g, &u| {
            let da = *d;
            // (dup)
            *d_up = da * silu(g);
            // (dgate)
            *d = da * u * silu_derivative(g);
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;
    use ndarray::array;

    #[test]
    fn known_values_and_extremes() {
        let y = silu_forward(array![0.0, 1.0, -1.0, 1000.0, -1000.0, f64::NAN].view());
        // silu(1) = 1/(1 + e^{-1}) = 0.731058578630...
        assert_abs_diff_eq!(y[0], 0.0);
        assert_abs_diff_eq!(y[1], 0.731_058_578_630_004_9, epsilon = 1e-15);
        assert_abs_diff_eq!(y[2], -0.268_941_421_369_995_1, epsilon = 1e-15);
        assert_eq!(y[3], 1000.0);
        assert_eq!(y[4], 0.0);
        assert!(y[5].is_nan());
        let d = silu_backward(
            array![0.0, 1000.0, -1000.0].view(),
            array![1.0, 1.0, 1.0].view(),
        )
        .unwrap();
        assert_eq!(d, array![0.5, 1.0, 0.0]);
    }

    #[test]
    fn gate_backward_matches_the_product_rule() {
        let (g, u, da) = (
            array![[0.5, -1.5], [2.0, 0.0]],
            array![[1.0, 2.0], [-0.5, 3.0]],
            array![[1.0, -1.0], [0.25, 2.0]],
        );
        let a = swiglu_forward(g.view(), u.view()).unwrap();
        assert_abs_diff_eq!(a, silu_forward(g.view()) * &u, epsilon = 1e-15);
        let (d_gate, d_up) = swiglu_backward(g.view(), u.view(), da.view()).unwrap();
        assert_abs_diff_eq!(d_up, &da * &silu_forward(g.view()), epsilon = 1e-15);
        let expected = silu_backward(g.view(), (&da * &u).view()).unwrap();
        assert_abs_diff_eq!(d_gate, expected, epsilon = 1e-15);
        let err = swiglu_backward(g.view(), u.view(), array![[1.0]].view()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "swiglu: da has shape [1, 1], expected [2, 2]"
        );
    }
}
