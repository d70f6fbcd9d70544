//! Writing your own layer: RMSNorm with a learned gain, implemented outside the crate through
//! the public [`Layer`] trait and [`Param`], proven with the gradient checker, then composed
//! with the crate's layers in a [`Sequential`] and checked again.
//!
//! ```text
//! cargo run --release --example custom_layer
//! ```
//!
//! It prints both reports and exits with a non-zero status if either check fails.

use std::process::ExitCode;

use baregpt::prelude::*;
use baregpt::error::check_shape;
use baregpt::gradcheck::{self, GradCheckOptions, GradCheckReport};
use baregpt::layers::{Attention, Gelu, LayerNorm, Linear, Sequential};
use baregpt::param::{Param1, ParamPath, ParamVisitor, ParamVisitorMut};
use baregpt::{Error, Float, Layer, Result};
use ndarray::{Array1, Array2, Array3, Axis, Zip};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const NAME: &str = "RmsNorm";

/// Root-mean-square normalisation with a learned gain, `(B, T, C)` → `(B, T, C)`.
///
/// Per position, with `x` the row of `C` features:
/// `r = 1/√(mean(x²) + eps)`, `x̂ = x·r`, `y = gain ⊙ x̂`.
/// Unlike LayerNorm it does not subtract the mean and has no shift.
pub struct RmsNorm<F: Float> {
    gain: Param1<F>,
    eps: F,
    cache: Option<RmsCache<F>>,
}

/// What the backward needs: `x̂ (B·T, C)`, `r (B·T)` and the batch shape `(B, T)`.
struct RmsCache<F> {
    x_hat: Array2<F>,
    inv_rms: Array1<F>,
    batch: (usize, usize),
}

impl<F: Float> RmsNorm<F> {
    /// An RMSNorm over `c` features with unit gain and `eps = 1e-6`.
    pub fn new(c: usize) -> Self {
        Self::with_gain(Array1::from_elem(c, F::one()))
    }

    /// An RMSNorm with the given gain `(C)`.
    pub fn with_gain(gain: Array1<F>) -> Self {
        Self {
            gain: Param1::new(gain),
            eps: F::of(1e-6),
            cache: None,
        }
    }

    fn width(&self) -> usize {
        self.gain.value.len()
    }
}

/// `(B, T, C)` as `(B·T, C)` rows (a copy, whatever the input's memory layout).
fn to_rows<F: Float>(x: &Array3<F>) -> Array2<F> {
    let (b, t, c) = x.dim();
    Array2::from_shape_fn((b * t, c), |(n, k)| x[[n / t, n % t, k]])
}

/// `(B·T, C)` rows back to `(B, T, C)`.
fn from_rows<F: Float>(rows: &Array2<F>, (b, t): (usize, usize)) -> Array3<F> {
    Array3::from_shape_fn((b, t, rows.ncols()), |(i, j, k)| rows[[i * t + j, k]])
}

impl<F: Float> Layer<F> for RmsNorm<F> {
    fn kind(&self) -> &'static str {
        NAME
    }

    fn forward(&mut self, x: &Array3<F>) -> Result<Array3<F>> {
        // Check before touching anything: a wrong width is a typed error, not a panic.
        check_shape(NAME, "input", x.shape(), &[None, None, Some(self.width())])?;
        let (b, t, c) = x.dim();
        let mut x_hat = to_rows(x);
        let mut inv_rms = Array1::zeros(b * t);
        Zip::from(x_hat.rows_mut())
            .and(&mut inv_rms)
            .for_each(|mut row, r| {
                let mean_sq = row.iter().map(|&v| v * v).sum::<F>() / F::of(c as f64);
                *r = F::one() / (mean_sq + self.eps).sqrt();
                row *= *r;
            });
        let y = &x_hat * &self.gain.value;
        self.cache = Some(RmsCache {
            x_hat,
            inv_rms,
            batch: (b, t),
        });
        Ok(from_rows(&y, (b, t)))
    }

    /// The backward, per row (`C` features, `h = dy ⊙ gain`, the gradient reaching `x̂`):
    ///
    /// * `y = gain ⊙ x̂`, so `d_gain += Σ_rows dy ⊙ x̂` — *(d_gain)*
    /// * `r = (mean(x²) + eps)^(−1/2)` gives `∂r/∂x_i = −r³·x_i / C`.
    /// * `x̂_j = x_j·r` gives `∂x̂_j/∂x_i = r·δ_ij + x_j·∂r/∂x_i = r·(δ_ij − x̂_i·x̂_j / C)`.
    /// * Summing over `j`: `dx_i = Σ_j h_j·∂x̂_j/∂x_i = r·(h_i − x̂_i·mean(h ⊙ x̂))` — *(dx)*
    ///
    /// (LayerNorm's `dx` has one more term, `−mean(h)`, from subtracting the mean; RMSNorm does
    /// not centre, so that term is absent.)
    fn backward(&mut self, dy: &Array3<F>) -> Result<Array3<F>> {
        let cache = self
            .cache
            .as_ref()
            .ok_or(Error::BackwardBeforeForward { layer: NAME })?;
        let (b, t) = cache.batch;
        check_shape(
            NAME,
            "dy",
            dy.shape(),
            &[Some(b), Some(t), Some(self.width())],
        )?;
        let dy = to_rows(dy);
        // (d_gain)
        self.gain.grad += &(&dy * &cache.x_hat).sum_axis(Axis(0));
        // (dx)
        let h = &dy * &self.gain.value;
        let inv_c = F::one() / F::of(self.width() as f64);
        let mut dx = Array2::zeros(h.raw_dim());
        Zip::from(dx.rows_mut())
            .and(h.rows())
            .and(cache.x_hat.rows())
            .and(&cache.inv_rms)
            .for_each(|mut dx, h, x_hat, &r| {
                let mean_h_xhat = Zip::from(&h)
                    .and(&x_hat)
                    .fold(F::zero(), |acc, &h, &xh| acc + h * xh)
                    * inv_c;
                Zip::from(&mut dx)
                    .and(&h)
                    .and(&x_hat)
                    .for_each(|dx, &h, &xh| *dx = r * (h - xh * mean_h_xhat));
            });
        Ok(from_rows(&dx, (b, t)))
    }

    fn visit_params(&self, path: &mut ParamPath, f: &mut ParamVisitor<'_, F>) {
        self.gain.visit("gain", path, f);
    }

    fn visit_params_mut(&mut self, path: &mut ParamPath, f: &mut ParamVisitorMut<'_, F>) {
        self.gain.visit_mut("gain", path, f);
    }
}

/// Prints a report under a heading and returns whether it passed.
fn show(title: &str, report: &GradCheckReport) -> bool {
    println!("== {title}\n{report}");
    report.passed()
}

fn run() -> Result<bool> {
    let mut rng = StdRng::seed_from_u64(42);
    let (b, t, c, width) = (2, 5, 6, 8);
    let x = Array3::from_shape_simple_fn((b, t, c), || rng.random::<f64>() * 4.0 - 2.0);
    let options = GradCheckOptions::default();

    // 1. The layer alone, with a gain away from 1 so that a forgotten `gain` would show.
    let gain = Array1::from_shape_simple_fn(c, || 0.5 + rng.random::<f64>());
    let mut rms = RmsNorm::with_gain(gain);
    let alone = gradcheck::check_layer(&mut rms, &x, &options)?;
    let mut passed = show("RmsNorm alone", &alone);

    // 2. Boxed among the crate's layers; its gain is reached as `1.gain`, `4.gain`.
    let layers: Vec<Box<dyn Layer<f64>>> = vec![
        Box::new(Linear::new(c, width, true, &mut rng)),
        Box::new(RmsNorm::new(width)),
        Box::new(Attention::new(width, 2, &mut rng)?),
        Box::new(Gelu::new()),
        Box::new(RmsNorm::with_gain(Array1::from_elem(width, 1.5))),
        Box::new(LayerNorm::new(width)),
        Box::new(Linear::new(width, c, false, &mut rng)),
    ];
    let mut net = Sequential::from_layers(layers);
    let composed = gradcheck::check_layer(&mut net, &x, &options)?;
    passed &= show("RmsNorm inside a Sequential", &composed);

    // 3. The same code runs in f32, the training type.
    let mut rms32 = RmsNorm::<f32>::new(c);
    let y32 = rms32.forward(&x.mapv(|v| v as f32))?;
    rms32.backward(&Array3::ones(y32.raw_dim()))?;
    println!(
        "f32 forward and backward ran; mean square of the first output row: {:.4}",
        y32.slice(ndarray::s![0, 0, ..])
            .mapv(|v| v * v)
            .mean()
            .unwrap_or(0.0)
    );

    // 4. Bad input is an error, not a panic.
    let err = rms.forward(&Array3::zeros((1, 2, c + 1))).unwrap_err();
    println!("wrong width: {err}");
    Ok(passed)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("gradient check FAILED");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
