//! Dropout with a counter-based mask: which elements a pass drops is a pure function of a
//! seed, the pass number and each element's index, so the mask costs no memory — forward and
//! backward regenerate it — and is the same on any number of threads.
//!
//! For drop probability `p`, element `i` of pass `n` of the site with seed `s` is kept when
//! `bits(s, n, i) >> 11 ≥ ⌊p · 2⁵³⌋`, where `bits` is the SplitMix64 finaliser applied to
//! `key + (i + 1)·γ`, `key = mix(s + mix(n))` and `γ = 0x9E37_79B9_7F4A_7C15`. Kept elements
//! are scaled by `1/(1 − p)` so that the expectation of the output is the input (inverted
//! dropout). `tests/parity/generate.py` reimplements the rule in a few lines of Python, which
//! is how the parity fixtures use the same masks as this crate.

use ndarray::{Array, ArrayView, ArrayViewMut, Dimension};

use crate::{Error, Float, Result};

const LAYER: &str = "Dropout";

/// The SplitMix64 increment (the golden ratio in 64-bit fixed point).
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 finaliser: a bijection of `u64` whose outputs look independent.
const fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The mask of one pass of one dropout site: keeps each element with probability `1 − p`
/// and scales the kept ones by `1/(1 − p)`. Small and `Copy`; the mask itself is never
/// stored.
///
/// ```
/// use baregpt::kernels::dropout::{DropoutMask, dropout_backward, dropout_forward};
/// use ndarray::Array2;
///
/// let mask = DropoutMask::new(0.25, 7, 0)?;
/// let x = Array2::<f64>::ones((4, 50));
/// let y = dropout_forward(x.view(), &mask);
/// let kept = y.iter().filter(|&&v| v != 0.0).count();
/// assert!((120..=180).contains(&kept)); // about 75% of 200
/// assert!(y.iter().all(|&v| v == 0.0 || v == 1.0 / 0.75));
/// // The backward multiplies by the same mask.
/// assert_eq!(dropout_backward(x.view(), &mask), y);
/// # Ok::<(), baregpt::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropoutMask {
    p_bits: u64,
    threshold: u64,
    key: u64,
}

impl DropoutMask {
    /// The mask of pass `pass` of the site seeded with `seed`, dropping with probability `p`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] unless `0 ≤ p < 1`.
    pub fn new(p: f64, seed: u64, pass: u64) -> Result<Self> {
        check_probability(p)?;
        Ok(Self {
            p_bits: p.to_bits(),
            // Exact: p · 2⁵³ scales by a power of two, and the cast truncates.
            threshold: (p * 9_007_199_254_740_992.0) as u64,
            key: mix(seed.wrapping_add(mix(pass))),
        })
    }

    /// The drop probability `p`.
    pub fn p(&self) -> f64 {
        f64::from_bits(self.p_bits)
    }

    /// Whether element `index` (in row-major order) is kept.
    pub fn keeps(&self, index: u64) -> bool {
        let bits = mix(self
            .key
            .wrapping_add(index.wrapping_add(1).wrapping_mul(GAMMA)));
        bits >> 11 >= self.threshold
    }

    /// The factor `1/(1 − p)` of the kept elements.
    pub fn scale<F: Float>(&self) -> F {
        F::of(1.0 / (1.0 - self.p()))
    }

    /// Multiplies `x` by the mask, element `j` of `x` (row-major) by the mask's element
    /// `offset + j`: so a tensor processed in pieces gets the mask of the whole.
    pub fn apply_in_place<F: Float, D: Dimension>(
        &self,
        mut x: ArrayViewMut<'_, F, D>,
        offset: u64,
    ) {
        if self.threshold == 0 {
            return; // p = 0 keeps everything, unscaled
        }
        let scale = self.scale::<F>();
        for (j, v) in x.iter_mut().enumerate() {
            *v = if self.keeps(offset.wrapping_add(j as u64)) {
                *v * scale
            } else {
                F::zero()
            };
        }
    }
}

/// Checks a drop probability: `0 ≤ p < 1`.
///
/// # Errors
/// [`Error::InvalidConfig`] naming `Dropout` otherwise (including NaN).
pub fn check_probability(p: f64) -> Result<()> {
    if (0.0..1.0).contains(&p) {
        Ok(())
    } else {
        Err(Error::InvalidConfig {
            layer: LAYER,
            reason: format!("the drop probability {p} is not in [0, 1)"),
        })
    }
}

/// Dropout forward, any shape: `y = m ⊙ x` with `mᵢ = 1/(1 − p)` where `mask` keeps
/// element `i` and `0` where it drops it.
pub fn dropout_forward<F: Float, D: Dimension>(
    x: ArrayView<'_, F, D>,
    mask: &DropoutMask,
) -> Array<F, D> {
    let mut y = x.to_owned();
    mask.apply_in_place(y.view_mut(), 0);
    y
}

/// Dropout backward, any shape: `dx = m ⊙ dy`.
///
/// Derivation: `yᵢ = mᵢ·xᵢ` with `mᵢ` a constant of the pass, so `∂yᵢ/∂xⱼ = mᵢ·δᵢⱼ` and
/// `dxⱼ = Σᵢ dyᵢ·∂yᵢ/∂xⱼ = mⱼ·dyⱼ` (dx): the same mask, regenerated from its seed and pass,
/// multiplies the upstream gradient. Nothing is cached between the two.
pub fn dropout_backward<F: Float, D: Dimension>(
    dy: ArrayView<'_, F, D>,
    mask: &DropoutMask,
) -> Array<F, D> {
    let mut dx = dy.to_owned(); // (dx) = m ⊙ dy
    mask.apply_in_place(dx.view_mut(), 0);
    dx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_rate_is_one_minus_p_and_masks_differ_by_seed_and_pass() {
        let n = 100_000u64;
        for p in [0.1, 0.5, 0.9] {
            let m = DropoutMask::new(p, 3, 1).unwrap();
            let kept = (0..n).filter(|&i| m.keeps(i)).count() as f64 / n as f64;
            assert!((kept - (1.0 - p)).abs() < 0.01, "p {p}: kept {kept}");
        }
        let masks = [(3, 1), (4, 1), (3, 2)].map(|(s, n)| DropoutMask::new(0.5, s, n).unwrap());
        let pattern = |m: &DropoutMask| (0..256).map(|i| m.keeps(i)).collect::<Vec<_>>();
        assert_ne!(pattern(&masks[0]), pattern(&masks[1]));
        assert_ne!(pattern(&masks[0]), pattern(&masks[2]));
    }

    #[test]
    fn zero_p_is_the_identity_and_bad_p_is_refused() {
        let m = DropoutMask::new(0.0, 1, 2).unwrap();
        assert!((0..1000).all(|i| m.keeps(i)));
        let x = ndarray::Array1::from_iter((0..10).map(f64::from));
        assert_eq!(dropout_forward(x.view(), &m), x);
        for p in [1.0, -0.1, f64::NAN, f64::INFINITY] {
            assert!(DropoutMask::new(p, 0, 0).is_err(), "{p}");
        }
    }

    #[test]
    fn pieces_with_offsets_give_the_mask_of_the_whole() {
        let m = DropoutMask::new(0.3, 9, 4).unwrap();
        let x = ndarray::Array2::<f32>::ones((6, 7));
        let whole = dropout_forward(x.view(), &m);
        let mut pieces = x.clone();
        for (r, row) in pieces.rows_mut().into_iter().enumerate() {
            m.apply_in_place(row, (r * 7) as u64);
        }
        assert_eq!(pieces, whole);
    }

    #[test]
    fn known_values_pin_the_rule() {
        // Pins the mask rule that tests/parity/generate.py reimplements.
        let m = DropoutMask::new(0.5, 0, 0).unwrap();
        let bits: String = (0..32)
            .map(|i| if m.keeps(i) { '1' } else { '0' })
            .collect();
        assert_eq!(bits, "10010001010111110101111011001110");
        assert_eq!(mix(0), 0);
        assert_eq!(mix(1), 0x5692_161D_100B_05E5);
    }
}
