//! GELU, tanh approximation: `y = ½·x·(1 + tanh(u))`, `u = √(2/π)·(x + 0.044715·x³)`.
//!
//! Element-wise, so any shape works; the output has the input's shape.

use ndarray::{Array, ArrayView, Dimension};

use super::elementwise::{map_array, zip_map_array};
use super::fast_math::gelu_tanh;
use crate::error::check_shape;
use crate::{Float, Result};

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
const CUBIC: f64 = 0.044_715;

/// Applies tanh-GELU element-wise: any shape in, the same shape out.
pub fn gelu_forward<F: Float, D: Dimension>(x: ArrayView<'_, F, D>) -> Array<F, D> {
    map_array(x, gelu::<F>())
}

/// `x ↦ ½·x·(1 + tanh(u))`.
fn gelu<F: Float>() -> impl Fn(F) -> F + Sync + Copy {
    let (s, a, half) = (F::of(SQRT_2_OVER_PI), F::of(CUBIC), F::of(0.5));
    move |x: F| half * x * (F::one() + gelu_tanh(s * (x + a * x * x * x)))
}

/// Backward of [`gelu_forward`]: `dx = dy · gelu'(x)`, with `x` the forward's input.
///
/// With `th = tanh(u)` and `u = s·(x + a·x³)`:
///
/// `gelu'(x) = ½·(1 + th) + ½·x·(1 − th²)·s·(1 + 3a·x²)`
///
/// the first term from differentiating the factor `x` *(term 1)*, the second from `tanh(u)`
/// through `du/dx = s·(1 + 3a·x²)` *(term 2)*.
///
/// # Errors
/// [`Error::ShapeMismatch`](crate::Error::ShapeMismatch) when `dy` and `x` differ in shape.
pub fn gelu_backward<F: Float, D: Dimension>(
    x: ArrayView<'_, F, D>,
    dy: ArrayView<'_, F, D>,
) -> Result<Array<F, D>> {
    let expected: Vec<Option<usize>> = x.shape().iter().map(|&n| Some(n)).collect();
    check_shape("gelu", "dy", dy.shape(), &expected)?;
    let (s, a, half) = (F::of(SQRT_2_OVER_PI), F::of(CUBIC), F::of(0.5));
    let three_a = F::of(3.0 * CUBIC);
    let d_gelu = move |x: F, dy: F| {
        let x2 = x * x;
        let th = gelu_tanh(s * (x + a * x2 * x));
        let term_1 = half * (F::one() + th);
        let term_2 = half * x * (F::one() - th * th) * s * (F::one() + three_a * x2);
        dy * (term_1 + term_2)
    };
    Ok(zip_map_array(x, dy, d_gelu))
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_abs_diff_eq;
    use ndarray::array;

    #[test]
    fn known_values() {
        let y = gelu_forward(array![0.0, 1.0, -1.0, 3.0].view());
        // 0.5·(1 + tanh(√(2/π)·1.044715)) = 0.841192 ...
        assert_abs_diff_eq!(
            y,
            array![
                0.0,
                0.841_191_990_608_276_8,
                -0.158_808_009_391_723_24,
                2.996_362_607_918_227
            ],
            epsilon = 1e-12
        );
    }

    #[test]
    fn derivative_at_zero_is_one_half() {
        let dx = gelu_backward(array![0.0].view(), array![1.0].view()).unwrap();
        assert_abs_diff_eq!(dx[0], 0.5, epsilon = 1e-15);
    }
}
