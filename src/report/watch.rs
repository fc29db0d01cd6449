//! `ljleak watch` data and outputs: the samples, the end-of-run summary
//! (trends over time and, with a request counter, over requests), and their
//! renderings (live text rows with human units, CSV and JSON lines with
//! exact bytes, one JSON document, and the text summary).
//!
//! Why bytes per request: under varying load, memory that leaks a fixed
//! amount per request grows fast while traffic is high and slowly while it
//! is low, which a fit over time calls "saturating". Against the
//! cumulative request count the same leak is a straight line, so with
//! `--requests-url` the verdict comes from the fit over requests.
//!
//! nginx's stub_status counts requests for the whole server: per-worker
//! bytes per request cannot be had from it (a worker's growth over the
//! server's requests is off by the number of workers, and more when load
//! is uneven), so only the total (or a server with one worker) gets one.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::compare::trend::{self, Trend};
use crate::luajit::census::CountSum;
use crate::units;

/// One sample of one process.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the first sample.
    pub t: f64,
    /// Process (the master's PID on `total` rows).
    pub pid: i32,
    /// `g->gc.total`, bytes.
    pub gc_total: u64,
    /// VmRSS, bytes.
    pub rss: u64,
    /// RssAnon, bytes.
    pub anon: u64,
    /// Objects in the census (with --census).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objects: Option<u64>,
    /// Per-type objects and bytes (with --census; JSON lines only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub types: Option<BTreeMap<String, CountSum>>,
    /// Requests served so far per the status URL (with --requests-url).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// The components of `ljleak mem` (with --mem).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem: Option<crate::report::watch_mem::MemSample>,
}

/// The end-of-run summary for one series.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Process, or the master for the total.
    pub pid: i32,
    /// Whether this is the total over a master's workers.
    pub total: bool,
    /// Samples.
    pub samples: usize,
    /// Seconds covered.
    pub seconds: f64,
    /// GC total trend (x in minutes).
    pub gc: Trend,
    /// RSS trend.
    pub rss: Trend,
    /// Requests served during the window (status requests excluded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// GC total against cumulative requests (x in requests: the slope is
    /// bytes per request). None for a worker of a several-worker server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_request: Option<Trend>,
    /// GC growth per request, bytes (the slope of `per_request`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gc_bytes_per_request: Option<f64>,
    /// Why there is no per-request figure although requests were counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_request_note: Option<String>,
    /// The verdict: from `per_request` when there is one, else from `gc`.
    pub verdict: trend::Verdict,
    /// With --mem: which component grows ("growing: glibc free chunks
    /// +40.0 MiB/min; GC heap stable").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_verdict: Option<String>,
    /// With --mem: each component's trend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_components: Option<Vec<crate::compare::mem_trend::ComponentTrend>>,
}

/// Requests since the first sample, leaving out the status fetches
/// themselves (nginx counts each one).
pub fn request_axis(s: &[Sample]) -> Option<Vec<f64>> {
    let r0 = s.first()?.requests?;
    s.iter()
        .enumerate()
        .map(|(i, x)| {
            x.requests
                .map(|r| r.saturating_sub(r0).saturating_sub(i as u64) as f64)
        })
        .collect()
}

/// Trends of one series. `server_wide` says the request counter counts
/// this series' requests (the total, or a server with one worker).
pub fn summarize(s: &[Sample], total: bool, server_wide: bool) -> Summary {
    let pts = |f: fn(&Sample) -> u64| {
        s.iter()
            .map(|x| (x.t / 60.0, f(x) as f64))
            .collect::<Vec<_>>()
    };
    let gc = trend::analyze(&pts(|x| x.gc_total));
    let rss = trend::analyze(&pts(|x| x.rss));
    let axis = request_axis(s);
    let requests = axis.as_ref().and_then(|a| a.last()).map(|&r| r as u64);
    let (per_request, note) = match (&axis, server_wide) {
        (Some(a), true) if requests.unwrap_or(0) > 0 => {
            let p: Vec<(f64, f64)> = a
                .iter()
                .zip(s)
                .map(|(&r, x)| (r, x.gc_total as f64))
                .collect();
            (Some(trend::analyze_per(&p, "request")), None)
        }
        (Some(_), true) => (None, Some("no requests: growth does not track load".into())),
        (Some(_), false) => (
            None,
            Some(
                "per-worker bytes per request cannot be had from stub_status (it counts the whole server); see the total"
                    .into(),
            ),
        ),
        (None, _) => (None, None),
    };
    let gc_bytes_per_request = per_request.as_ref().and_then(|t| t.fit).map(|f| f.slope);
    let verdict = per_request.as_ref().map_or(gc.verdict, |t| t.verdict);
    Summary {
        pid: s.first().map(|x| x.pid).unwrap_or(0),
        total,
        samples: s.len(),
        seconds: s.last().map(|x| x.t).unwrap_or(0.0),
        gc,
        rss,
        requests,
        per_request,
        gc_bytes_per_request,
        per_request_note: note,
        verdict,
        mem_verdict: None,
        mem_components: None,
    }
}

/// Name of a verdict as printed.
pub fn verdict_name(v: trend::Verdict) -> &'static str {
    match v {
        trend::Verdict::Growing => "GROWING",
        trend::Verdict::Saturating => "saturating",
        trend::Verdict::Stable => "stable",
        trend::Verdict::Shrinking => "shrinking",
        trend::Verdict::Unknown => "unknown",
    }
}

fn trend_line(name: &str, t: &Trend, per: &str) -> String {
    match &t.fit {
        Some(f) => format!(
            "  {name}: {} ± {} (95%); {}: {}\n",
            units::rate(f.slope, per),
            units::bytes_f(f.slope_ci95),
            verdict_name(t.verdict),
            t.evidence
        ),
        None => format!("  {name}: {}\n", t.evidence),
    }
}

/// The human summary.
pub fn summary_text(sums: &[Summary], master: i32) -> String {
    let mut s = String::new();
    for x in sums {
        let who = if x.total {
            format!("all workers of {master}")
        } else {
            format!("pid {}", x.pid)
        };
        let _ = writeln!(s, "\n{who}: {} samples over {:.1} s", x.samples, x.seconds);
        s.push_str(&trend_line("GC total over time", &x.gc, "min"));
        s.push_str(&trend_line("RSS over time", &x.rss, "min"));
        if let Some(r) = x.requests {
            let _ = writeln!(s, "  requests: {r} during the window");
        }
        if let Some(t) = &x.per_request {
            s.push_str(&trend_line("GC total per request", t, "request"));
        }
        if let Some(n) = &x.per_request_note {
            let _ = writeln!(s, "  {n}");
        }
        let _ = writeln!(
            s,
            "  verdict: {}{}",
            verdict_name(x.verdict),
            if x.per_request.is_some() {
                " (from the fit over requests)"
            } else {
                ""
            }
        );
        if let Some(v) = &x.mem_verdict {
            let _ = writeln!(s, "  memory components: {v}");
        }
    }
    s
}

/// The text table's header.
pub fn text_header(census: bool, requests: bool) -> String {
    format!(
        "{:>8}  {:>8}  {:>11}  {:>11}  {:>11}{}{}\n",
        "time(s)",
        "pid",
        "gc_total",
        "rss",
        "anon",
        if census {
            format!("  {:>10}", "objects")
        } else {
            String::new()
        },
        if requests {
            format!("  {:>10}", "requests")
        } else {
            String::new()
        }
    )
}

/// The CSV header.
pub const CSV_HEADER: &str = "t,pid,gc_total,rss,anon,objects,requests\n";

/// One sample as a text row (human units), CSV row or JSON line (exact
/// bytes). `total` rows are labelled `total`.
pub fn row(format: crate::report::output::Format, s: &Sample, total: bool) -> String {
    use crate::report::output::Format;
    let opt = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_default();
    let pid = if total {
        "total".to_string()
    } else {
        s.pid.to_string()
    };
    match format {
        Format::Csv => format!(
            "{:.3},{pid},{},{},{},{},{}\n",
            s.t,
            s.gc_total,
            s.rss,
            s.anon,
            opt(s.objects),
            opt(s.requests)
        ),
        Format::Jsonl | Format::Json => {
            let mut v = serde_json::to_value(s).unwrap_or_default();
            if total {
                v["pid"] = "total".into();
            }
            format!("{v}\n")
        }
        _ => format!(
            "{:>8.2}  {:>8}  {:>11}  {:>11}  {:>11}{}{}\n",
            s.t,
            pid,
            units::bytes(s.gc_total),
            units::bytes(s.rss),
            units::bytes(s.anon),
            s.objects.map(|o| format!("  {o:>10}")).unwrap_or_default(),
            s.requests.map(|o| format!("  {o:>10}")).unwrap_or_default()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: f64, requests: u64, gc: u64) -> Sample {
        Sample {
            t,
            pid: 1,
            gc_total: gc,
            rss: 0,
            anon: 0,
            objects: None,
            types: None,
            requests: Some(requests),
            mem: None,
        }
    }

    /// A leak of 1000 bytes a request under load that drops to a trickle
    /// in the second half: over time it looks like a cache filling up,
    /// over requests it is a straight line.
    #[test]
    fn per_request_leak_under_varying_load_is_growing() {
        let mut req = 0u64;
        let mut s = Vec::new();
        for i in 0..20u64 {
            let load = if i < 10 { 500 } else { 20 };
            if i > 0 {
                req += load;
            }
            // +i: each status fetch is counted too.
            let wobble = if i % 2 == 0 { 3000 } else { 0 };
            s.push(sample(
                i as f64 * 5.0,
                req + i,
                5_000_000 + 1000 * req + wobble,
            ));
        }
        let x = summarize(&s, false, true);
        assert_eq!(x.gc.verdict, trend::Verdict::Saturating, "over time");
        assert_eq!(x.verdict, trend::Verdict::Growing, "over requests");
        let per = x.gc_bytes_per_request.unwrap();
        assert!((per - 1000.0).abs() < 20.0, "{per}");
        assert_eq!(x.requests, Some(req));
        let t = summary_text(&[x], 0);
        assert!(t.contains("GC total per request: +999.9 B/request"), "{t}");
        assert!(
            t.contains("verdict: GROWING (from the fit over requests)"),
            "{t}"
        );
        // A worker of a several-worker server gets no per-request figure.
        let w = summarize(&s, false, false);
        assert!(w.per_request.is_none() && w.per_request_note.is_some());
        assert_eq!(w.verdict, trend::Verdict::Saturating);
    }

    #[test]
    fn text_rows_use_human_units_and_csv_exact_bytes() {
        let s = sample(1.0, 5, 3 << 20);
        let t = row(crate::report::output::Format::Text, &s, false);
        assert!(t.contains("3.0 MiB"), "{t}");
        let c = row(crate::report::output::Format::Csv, &s, true);
        assert_eq!(c, "1.000,total,3145728,0,0,,5\n");
    }
}
