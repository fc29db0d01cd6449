//! `watch -o FILE.svg`: the GC total and RSS series with the fitted line,
//! drawn with plotters' SVG backend (no font feature: the SVG carries text
//! elements and the viewer picks the font).

use plotters::prelude::*;

use crate::cmd::watch::Sample;
use crate::compare::trend::Trend;

/// SVG of `s` (one process or the total) with the GC-total fit of `gc`.
pub fn watch_svg(s: &[Sample], gc: Option<&Trend>) -> anyhow::Result<String> {
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (900, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mib = |b: u64| b as f64 / 1048576.0;
        let t_max = s.last().map(|x| x.t).unwrap_or(1.0).max(1e-3);
        let y_max = s
            .iter()
            .map(|x| mib(x.rss.max(x.gc_total)))
            .fold(0.0, f64::max)
            .max(1e-3)
            * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "ljleak watch pid {}: GC total (red), RSS (blue), fit (black)",
                    s.first().map(|x| x.pid).unwrap_or(0)
                ),
                ("sans-serif", 18),
            )
            .margin(15)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..t_max, 0.0..y_max)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("MiB")
            .draw()
            .map_err(plot_err)?;
        chart
            .draw_series(LineSeries::new(
                s.iter().map(|x| (x.t, mib(x.gc_total))),
                &RED,
            ))
            .map_err(plot_err)?;
        chart
            .draw_series(LineSeries::new(s.iter().map(|x| (x.t, mib(x.rss))), &BLUE))
            .map_err(plot_err)?;
        if let Some(f) = gc.and_then(|t| t.fit) {
            // The fit is in minutes.
            let at = |t: f64| (f.intercept + f.slope * t / 60.0) / 1048576.0;
            chart
                .draw_series(LineSeries::new(
                    [(0.0, at(0.0)), (t_max, at(t_max))],
                    &BLACK,
                ))
                .map_err(plot_err)?;
        }
        root.present().map_err(plot_err)?;
    }
    Ok(buf)
}

fn plot_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the plot: {e}")
}
