//! Weight initialisation: the original's Glorot-uniform matrices and normal tables.

use ndarray::Array2;
use rand::{Rng, RngExt};
use rand_distr::{Distribution, StandardNormal};

use crate::{Error, Float, Result};

/// Refuses a `(rows, cols)` matrix of `F` that could not be allocated, before allocating it.
pub(crate) fn check_matrix<F>(layer: &'static str, rows: usize, cols: usize) -> Result<()> {
    crate::limits::check_alloc::<F>(layer, "a parameter matrix", &[rows, cols])
}

pub(crate) fn check_positive(layer: &'static str, what: &str, n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::InvalidConfig {
            layer,
            reason: format!("{what} must be positive"),
        });
    }
    Ok(())
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
        (6.0 / (fan_in as f64 + fan_out as f64)).sqrt()
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
