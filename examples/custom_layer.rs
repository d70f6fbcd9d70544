//! Writing your own layer: RMSNorm with a learned gain, implemented outside the crate through
//! the public [`Layer`] and [`Params`] traits and the layer helpers, proven with the gradient
//! checker, then composed with the crate's layers in a boxed [`Sequential`] and checked
//! again.
//!
//! ```text
//! cargo run --release --example custom_layer
//! ```
//!
//! It prints both reports and exits with a non-zero status if either check fails.

use std::process::ExitCode;

use baregpt::gradcheck::{self, GradCheckOptions, GradCheckReport};
use baregpt::layer::{Cache, InferState, check_width, from_rows, rows};
use baregpt::layers::{Attention, Gelu, LayerNorm, Linear, Sequential};
use baregpt::param::Param1;
use baregpt::prelude::*;
use baregpt::{Result, params};
use ndarray::{Array1, Array2, Array3, Axis};
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
    /// What the backward needs: `x̂ (B·T, C)` and `r (B·T)`.
    cache: Cache<(Array2<F>, Array1<F>)>,
}

impl<F: Float> Params<F> for RmsNorm<F> {
    params!(F; gain);
}

impl<F: Float> RmsNorm<F> {
    /// An RMSNorm with the given gain `(C)` and `eps = 1e-6`.
    pub fn new(gain: Array1<F>) -> Self {
        let (gain, eps, cache) = (Param1::new(gain), F::of(1e-6), Cache::new());
        Self { gain, eps, cache }
    }

    /// The computation, for forward and inference alike: `y`, `x̂` and `r`.
    fn apply(&self, x: &Array3<F>) -> Result<(Array3<F>, Array2<F>, Array1<F>)> {
        let bt = check_width(NAME, "input", x.view(), self.gain.value.len())?;
        let mut x_hat = rows(x.view()).into_owned();
        let c = F::of(x_hat.ncols() as f64);
        let r = x_hat.map_axis(Axis(1), |x| F::one() / (x.dot(&x) / c + self.eps).sqrt());
        x_hat *= &r.view().insert_axis(Axis(1));
        Ok((from_rows(NAME, &x_hat * &self.gain.value, bt)?, x_hat, r))
    }
}

impl<F: Float> Layer<F> for RmsNorm<F> {
    fn kind(&self) -> &'static str {
        NAME
    }

    fn forward(&mut self, x: &Array3<F>) -> Result<Array3<F>> {
        // The crate's rule: a forward forgets the previous one first, so after a failed
        // forward backward is `BackwardBeforeForward` rather than the last good cache.
        self.cache.clear();
        let (y, x_hat, r) = self.apply(x)?;
        self.cache.store((x_hat, r), y.dim());
        Ok(y)
    }

    fn infer_with(&self, x: &Array3<F>, _: &mut InferState<'_, F>) -> Result<Array3<F>> {
        Ok(self.apply(x)?.0)
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
        let (x_hat, r) = self.cache.get(NAME, dy)?; // a forward ran, and dy has its shape
        let dy_rows = rows(dy.view());
        self.gain.grad += &(&dy_rows * x_hat).sum_axis(Axis(0)); // (d_gain)
        let h = &dy_rows * &self.gain.value;
        let c = F::of(h.ncols() as f64);
        let mean_h_xhat = (&h * x_hat).sum_axis(Axis(1)) / c;
        let r = r.view().insert_axis(Axis(1));
        let dx = (h - x_hat * &mean_h_xhat.insert_axis(Axis(1))) * r; // (dx)
        from_rows(NAME, dx, (dy.dim().0, dy.dim().1))
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
    let mut rms = RmsNorm::new(gain);
    let alone = gradcheck::check_layer(&mut rms, &x, &options)?;
    let mut passed = show("RmsNorm alone", &alone);
    // Inference runs the same computation from `&self`, caching nothing.
    passed &= rms.infer(&x)? == rms.forward(&x)?;

    // 2. Boxed among the crate's layers; its gain is reached as `1.gain`, `4.gain`.
    let layers: Vec<Box<dyn Layer<f64>>> = vec![
        Box::new(Linear::new(c, width, true, &mut rng)?),
        Box::new(RmsNorm::new(Array1::ones(width))),
        Box::new(Attention::new(width, 2, &mut rng)?),
        Box::new(Gelu::new()),
        Box::new(RmsNorm::new(Array1::from_elem(width, 1.5))),
        Box::new(LayerNorm::new(width)?),
        Box::new(Linear::new(width, c, false, &mut rng)?),
    ];
    let mut net: Box<dyn Layer<f64>> = Box::new(Sequential::from_layers(layers));
    let composed = gradcheck::check_layer(&mut net, &x, &options)?;
    passed &= show("RmsNorm inside a boxed Sequential", &composed);
    println!(
        "the second RmsNorm's gain: {:?}",
        net.param("4.gain")
            .map(|p| p.value.iter().copied().collect::<Vec<_>>())
    );

    // 3. The same code runs in f32, the training type.
    let mut rms32 = RmsNorm::<f32>::new(Array1::ones(c));
    let y32 = rms32.forward(&x.mapv(|v| v as f32))?;
    rms32.backward(&Array3::ones(y32.raw_dim()))?;
    let first_row = y32.slice(ndarray::s![0, 0, ..]).mapv(|v| v * v);
    println!(
        "f32 forward and backward ran; mean square of the first output row: {:.4}",
        first_row.mean().unwrap_or(0.0)
    );

    // 4. Bad input is an error, not a panic.
    let err = rms.forward(&Array3::zeros((1, 2, c + 1))).unwrap_err();
    println!("wrong width: {err}");
    let err = RmsNorm::<f64>::new(Array1::ones(c))
        .backward(&x)
        .unwrap_err();
    println!("backward first: {err}");
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
