//! The loss-curve plot: train and validation loss against the step, as an SVG image.

use std::path::Path;

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

/// Draws `points` (train and validation loss, log scale) to an SVG file at `path`.
///
/// SVG keeps the text as text, so no font files or system libraries are needed to draw it.
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
    let (lo, hi) = (lo.max(floor) * 0.8, hi.max(lo * 2.0) * 1.25);
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(0u64..max_step, (lo..hi).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("cross-entropy loss (log scale)")
            .draw()?;
        let series = |f: fn(&EvalPoint) -> f64| {
            points
                .iter()
                .map(move |p| (p.step, f(p).max(floor)))
                .collect::<Vec<_>>()
        };
        chart
            .draw_series(LineSeries::new(
                series(|p| p.train_loss),
                BLUE.stroke_width(2),
            ))?
            .label("train")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        chart
            .draw_series(LineSeries::new(series(|p| p.val_loss), RED.stroke_width(2)))?
            .label("validation")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| format!("cannot draw the loss plot {}: {e}", path.display()))
}
