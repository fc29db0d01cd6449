//! `watch -o FILE.svg`: the GC total of every series (each worker and
//! their total) and the fitted line the verdict used, drawn with plotters'
//! SVG backend (no font feature: the SVG carries text elements and the
//! viewer picks the font). With a request counter the x axis is requests
//! since the start (the verdict's fit is bytes per request), else seconds.

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::report::watch::{request_axis, verdict_name, Sample, Summary};

/// Colours of the worker series (the total is black).
const PALETTE: [RGBColor; 6] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// SVG of `series` (per worker, the total last when there are several)
/// with the fit of the last summary (the total, or the one process).
pub fn watch_svg(series: &[Vec<Sample>], sums: &[Summary], master: i32) -> anyhow::Result<String> {
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (900, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        draw_gc(&root, series, sums, master)?;
        root.present().map_err(plot_err)?;
    }
    Ok(buf)
}

/// `watch --mem -o x.svg`: the GC plot above, and below the stacked
/// resident components of the main series (the total, or the one process)
/// with the verdict that names the growing one.
pub fn watch_mem_svg(
    series: &[Vec<Sample>],
    sums: &[Summary],
    master: i32,
) -> anyhow::Result<String> {
    let main: Vec<(f64, &crate::report::watch_mem::MemSample)> = series
        .last()
        .map(|s| {
            s.iter()
                .filter_map(|x| Some((x.t, x.mem.as_ref()?)))
                .collect()
        })
        .unwrap_or_default();
    let verdict = sums
        .last()
        .and_then(|s| s.mem_verdict.clone())
        .unwrap_or_default();
    let who = if series.len() > 1 {
        "all workers"
    } else {
        "resident"
    };
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (900, 1000)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let halves = root.split_evenly((2, 1));
        draw_gc(&halves[0], series, sums, master)?;
        crate::report::watch_mem::draw_stacked(
            &halves[1],
            &main,
            &format!("memory components ({who}): {verdict}"),
        )?;
        root.present().map_err(plot_err)?;
    }
    Ok(buf)
}

/// The GC plot on `root`.
fn draw_gc(
    root: &DrawingArea<SVGBackend, Shift>,
    series: &[Vec<Sample>],
    sums: &[Summary],
    master: i32,
) -> anyhow::Result<()> {
    let main = sums.last();
    let per_request = main.and_then(|m| m.per_request.as_ref());
    // x of each sample of each series.
    let xs: Vec<Vec<f64>> = series
        .iter()
        .map(|s| match (per_request, request_axis(s)) {
            (Some(_), Some(a)) => a,
            _ => s.iter().map(|x| x.t).collect(),
        })
        .collect();
    let x_max = xs.iter().flatten().fold(0.0f64, |a, &b| a.max(b)).max(1e-3);
    let mib = |b: f64| b / 1048576.0;
    let y_max = series
        .iter()
        .flatten()
        .map(|x| mib(x.gc_total as f64))
        .fold(0.0, f64::max)
        .max(1e-3)
        * 1.1;
    let fit_text = match (main, per_request) {
        (Some(m), Some(t)) => t.fit.map(|f| {
            format!(
                "fit {} ({})",
                crate::units::rate(f.slope, "request"),
                verdict_name(m.verdict)
            )
        }),
        (Some(m), None) => m.gc.fit.map(|f| {
            format!(
                "fit {} ({})",
                crate::units::rate(f.slope, "min"),
                verdict_name(m.verdict)
            )
        }),
        _ => None,
    }
    .unwrap_or_else(|| "no fit".into());
    let who = if series.len() > 1 {
        format!("nginx master {master}: each worker, total in black")
    } else {
        format!(
            "pid {}",
            series.first().and_then(|s| s.first()).map_or(0, |x| x.pid)
        )
    };
    {
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!("ljleak watch, GC total: {who}; dashed: {fit_text}"),
                ("sans-serif", 16),
            )
            .margin(15)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc(if per_request.is_some() {
                "requests since the start (server-wide)"
            } else {
                "seconds"
            })
            .y_desc("MiB")
            .draw()
            .map_err(plot_err)?;
        let n = series.len();
        for (k, (s, x)) in series.iter().zip(&xs).enumerate() {
            let total = n > 1 && k == n - 1;
            let color = if total || n == 1 {
                BLACK
            } else {
                PALETTE[k % PALETTE.len()]
            };
            let label = if total {
                "total".to_string()
            } else {
                format!("pid {}", s.first().map_or(0, |x| x.pid))
            };
            chart
                .draw_series(LineSeries::new(
                    x.iter().zip(s).map(|(&x, v)| (x, mib(v.gc_total as f64))),
                    color.stroke_width(if total { 2 } else { 1 }),
                ))
                .map_err(plot_err)?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        let fit = match per_request {
            Some(t) => t.fit,
            None => main.and_then(|m| m.gc.fit).map(|mut f| {
                // The time fit is per minute; the axis is seconds.
                f.slope /= 60.0;
                f
            }),
        };
        if let Some(f) = fit {
            let at = |x: f64| mib(f.intercept + f.slope * x);
            let steps = 40;
            let dashes: Vec<(f64, f64)> = (0..=steps)
                .map(|i| x_max * i as f64 / steps as f64)
                .map(|x| (x, at(x)))
                .collect();
            // Dashed: every other segment.
            for w in dashes.chunks(2) {
                if let [a, b] = w {
                    chart
                        .draw_series(LineSeries::new([*a, *b], BLACK.stroke_width(2)))
                        .map_err(plot_err)?;
                }
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
    }
    Ok(())
}

fn plot_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the plot: {e}")
}
