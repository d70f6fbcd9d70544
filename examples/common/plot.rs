//! The loss-curve plot: train and validation loss against the step, as an SVG image.

use std::path::Path;

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;

/// One evaluation point of a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalPoint {
    /// The optimizer step after which the evaluation was made.
    pub step: u64,
    /// The mean training loss over the steps since the previous point.
    pub train_loss: f64,
    /// The validation (held-out) loss.
    pub val_loss: f64,
}

/// Draws `points` to an SVG file at `path`: train and validation loss against the step.
///
/// The loss axis is linear when the losses span less than a factor of 8 (a text run, say from
/// 4.2 down to 1.5), and logarithmic when they span more (the addition task falls to 1e-3).
/// Each training point is the mean over the steps since the previous point, so it is drawn at
/// the middle of those steps. SVG keeps the text as text, so no font files or system libraries
/// are needed to draw it.
pub fn loss_plot(path: &Path, title: &str, points: &[EvalPoint]) -> Result<(), String> {
    if points.is_empty() {
        return Err("no evaluation points to plot".into());
    }
    let floor = 1e-5;
    let max_step = points.iter().map(|p| p.step).max().unwrap_or(1).max(1);
    let losses = points
        .iter()
        .flat_map(|p| [p.train_loss, p.val_loss])
        .filter(|l| l.is_finite());
    let (lo, hi) = losses.fold((f64::INFINITY, 0.0f64), |(lo, hi), l| {
        (lo.min(l.max(floor)), hi.max(l))
    });
    let lo = lo.min(hi).max(floor);
    let mut train = Vec::with_capacity(points.len());
    let mut window_start = 0;
    for p in points {
        train.push((
            (window_start + p.step) as f64 / 2.0,
            p.train_loss.max(floor),
        ));
        window_start = p.step;
    }
    let val: Vec<(f64, f64)> = points
        .iter()
        .map(|p| (p.step as f64, p.val_loss.max(floor)))
        .collect();
    let series = Series {
        title,
        max_step: max_step as f64,
        train,
        val,
    };
    let drawn = if hi / lo < 8.0 {
        let pad = (hi - lo).max(0.05 * hi) * 0.1;
        series.draw(path, (lo - pad).max(0.0)..hi + pad, "cross-entropy loss")
    } else {
        series.draw(
            path,
            (lo * 0.8..hi * 1.25).log_scale(),
            "cross-entropy loss (log scale)",
        )
    };
    drawn.map_err(|e| format!("cannot draw the loss plot {}: {e}", path.display()))
}

/// The two curves of a plot, in plot coordinates.
struct Series<'a> {
    title: &'a str,
    max_step: f64,
    train: Vec<(f64, f64)>,
    val: Vec<(f64, f64)>,
}

impl Series<'_> {
    fn draw<Y>(&self, path: &Path, y: Y, y_desc: &str) -> Result<(), Box<dyn std::error::Error>>
    where
        Y: AsRangedCoord<Value = f64>,
        Y::CoordDescType: ValueFormatter<f64>,
    {
        let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(self.title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..self.max_step, y)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc(y_desc)
            .y_labels(10)
            .draw()?;
        chart
            .draw_series(LineSeries::new(self.train.clone(), BLUE.stroke_width(2)))?
            .label("train (mean since the last point)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        chart
            .draw_series(LineSeries::new(self.val.clone(), RED.stroke_width(2)))?
            .label("validation")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    }
}
