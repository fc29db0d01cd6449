//! `/metrics`: the Prometheus text exposition format (version 0.0.4) and
//! one function per source of metrics. Names are a contract with
//! dashboards: base units, `_bytes` / `_seconds` / `_total` suffixes, one
//! `# HELP` and `# TYPE` per family, label values escaped as the format
//! says (`\\`, `\"`, `\n`).
//!
//! Nothing here pauses a target: the GC total is one `process_vm_readv` of
//! `g->gc.total`; the census figures come from the background loop's last
//! result.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::targets::Target;
use crate::report::census::CensusReport;

/// Kinds of `ljleak_scrape_errors_total`, always exported (0 until one
/// happens) so that `rate()` works from the first scrape.
pub const ERROR_KINDS: &[&str] = &[
    "target_gone",
    "no_vm",
    "permission",
    "read",
    "census",
    "profile",
    "mem",
];

/// Text exposition being written.
#[derive(Debug, Default)]
pub struct Writer {
    out: String,
}

/// Escape a label value (text format: backslash, double quote, newline).
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// A sample value as the format spells it (`+Inf`, `NaN`, integers plain).
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

impl Writer {
    /// Start a family: `# HELP` (escaped) and `# TYPE`.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample of the current family.
    pub fn sample<S: AsRef<str>>(&mut self, name: &str, labels: &[(&str, S)], v: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(val.as_ref()));
            }
            self.out.push('}');
        }
        self.out.push(' ');
        self.out.push_str(&format_value(v));
        self.out.push('\n');
    }

    /// The finished text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// A cumulative histogram with fixed bucket bounds.
#[derive(Debug, Clone)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// Pause buckets, seconds: a quiescent pause of a small heap takes well
/// under a millisecond, a million-object heap tens of milliseconds.
pub const PAUSE_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

impl Histogram {
    /// Empty, with these upper bounds (ascending).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    /// Record one value.
    pub fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(self.counts.iter_mut()) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Write as family `name` (`_bucket`, `_sum`, `_count`).
    pub fn write(&self, w: &mut Writer, name: &str, help: &str) {
        w.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            w.sample(&bucket, &[("le", format_value(*b))], *c as f64);
        }
        w.sample(&bucket, &[("le", "+Inf")], self.count as f64);
        w.sample(&format!("{name}_sum"), &[] as &[(&str, &str)], self.sum);
        w.sample(
            &format!("{name}_count"),
            &[] as &[(&str, &str)],
            self.count as f64,
        );
    }
}

/// ljleak's own health counters, shared by scrapes and the census loop.
#[derive(Debug, Clone)]
pub struct Health {
    /// Errors by kind.
    pub errors: BTreeMap<&'static str, u64>,
    /// Every pause serve made.
    pub pauses: Histogram,
    /// `/metrics` requests answered.
    pub scrapes: u64,
    /// Censuses taken (background loop and pprof endpoints).
    pub censuses: u64,
    /// Targets that went away since start.
    pub targets_gone: u64,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            errors: ERROR_KINDS.iter().map(|k| (*k, 0)).collect(),
            pauses: Histogram::new(PAUSE_BUCKETS),
            scrapes: 0,
            censuses: 0,
            targets_gone: 0,
        }
    }
}

impl Health {
    /// Count one error of `kind` (one of [`ERROR_KINDS`]).
    pub fn error(&mut self, kind: &'static str) {
        *self.errors.entry(kind).or_insert(0) += 1;
    }
}

/// The error kind of a failure on a target.
pub fn error_kind(e: &anyhow::Error, pid: i32) -> &'static str {
    use crate::error::{exit_code_of, ExitCode};
    if !crate::target::process_alive(pid) {
        return "target_gone";
    }
    match exit_code_of(e) {
        ExitCode::NoProcess | ExitCode::TargetExited => "target_gone",
        ExitCode::NoVm | ExitCode::UnsupportedLayout => "no_vm",
        ExitCode::Permission => "permission",
        _ => "read",
    }
}

/// Per-target GC totals: `ljleak_luajit_gc_bytes` and `ljleak_up`.
/// `gc` holds, per target, the total read (None when the read failed).
pub fn gc(w: &mut Writer, gc: &[(Target, Option<u64>)]) {
    w.family(
        "ljleak_luajit_gc_bytes",
        "gauge",
        "LuaJIT GC total (g->gc.total) of each watched process, read without a pause.",
    );
    for (t, v) in gc {
        if let Some(v) = v {
            w.sample("ljleak_luajit_gc_bytes", &t.labels(), *v as f64);
        }
    }
    w.family(
        "ljleak_up",
        "gauge",
        "1 when the watched process's LuaJIT VM could be read at this scrape, else 0.",
    );
    for (t, v) in gc {
        w.sample(
            "ljleak_up",
            &t.labels(),
            if v.is_some() { 1.0 } else { 0.0 },
        );
    }
}

/// The last background census of each target: `ljleak_objects`,
/// `ljleak_object_bytes` (by type) and `ljleak_census_timestamp_seconds`.
pub fn census(w: &mut Writer, cs: &[(Target, &CensusReport)]) {
    if cs.is_empty() {
        return;
    }
    let labels = |t: &Target, ty: &str| -> Vec<(&'static str, String)> {
        let [m, p, _] = t.labels();
        vec![m, p, ("type", ty.to_string())]
    };
    w.family(
        "ljleak_objects",
        "gauge",
        "Live GC objects by type at the last census (--census-interval).",
    );
    for (t, r) in cs {
        for (ty, s) in &r.types {
            w.sample("ljleak_objects", &labels(t, ty), s.count as f64);
        }
    }
    w.family(
        "ljleak_object_bytes",
        "gauge",
        "Bytes of live GC objects by type at the last census (--census-interval).",
    );
    for (t, r) in cs {
        for (ty, s) in &r.types {
            w.sample("ljleak_object_bytes", &labels(t, ty), s.sum as f64);
        }
    }
    w.family(
        "ljleak_census_timestamp_seconds",
        "gauge",
        "When the last census of the process was taken (Unix time).",
    );
    for (t, r) in cs {
        let [m, p, _] = t.labels();
        w.sample(
            "ljleak_census_timestamp_seconds",
            &[m, p],
            r.created_unix_ms as f64 / 1000.0,
        );
    }
}

/// ljleak's own health: errors by kind, pauses, scrape duration, targets.
pub fn health(w: &mut Writer, h: &Health, targets: usize, scrape_seconds: f64) {
    w.family(
        "ljleak_scrape_errors_total",
        "counter",
        "Failures reading or pausing a target, by kind.",
    );
    for (k, n) in &h.errors {
        w.sample("ljleak_scrape_errors_total", &[("kind", k)], *n as f64);
    }
    h.pauses.write(
        w,
        "ljleak_pause_seconds",
        "How long ljleak held a target paused (census and profiles; scrapes never pause).",
    );
    w.family(
        "ljleak_censuses_total",
        "counter",
        "Heap copies taken (background census and pprof endpoints).",
    );
    w.sample(
        "ljleak_censuses_total",
        &[] as &[(&str, &str)],
        h.censuses as f64,
    );
    w.family(
        "ljleak_targets",
        "gauge",
        "Processes watched at this scrape.",
    );
    w.sample("ljleak_targets", &[] as &[(&str, &str)], targets as f64);
    w.family(
        "ljleak_targets_gone_total",
        "counter",
        "Watched processes that went away (worker restarts, reloads, exits).",
    );
    w.sample(
        "ljleak_targets_gone_total",
        &[] as &[(&str, &str)],
        h.targets_gone as f64,
    );
    w.family(
        "ljleak_scrapes_total",
        "counter",
        "/metrics requests answered.",
    );
    w.sample(
        "ljleak_scrapes_total",
        &[] as &[(&str, &str)],
        h.scrapes as f64,
    );
    w.family(
        "ljleak_scrape_duration_seconds",
        "gauge",
        "Time taken to collect this scrape's metrics.",
    );
    w.sample(
        "ljleak_scrape_duration_seconds",
        &[] as &[(&str, &str)],
        scrape_seconds,
    );
}

/// ljleak's own process (the conventional `process_*` names), from /proc.
pub fn process(w: &mut Writer) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .map(|x| x.1.split_whitespace().collect())
        .unwrap_or_default();
    let num = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY-free sysconf values: clock ticks and page size are fixed on Linux x86_64.
    let tick = 100.0;
    let page = 4096.0;
    // Fields after the command (index 0 = field 3): utime 14, stime 15, rss 24.
    w.family(
        "process_cpu_seconds_total",
        "counter",
        "User and system CPU time of ljleak.",
    );
    w.sample(
        "process_cpu_seconds_total",
        &[] as &[(&str, &str)],
        (num(11) + num(12)) / tick,
    );
    w.family(
        "process_resident_memory_bytes",
        "gauge",
        "Resident set size of ljleak.",
    );
    w.sample(
        "process_resident_memory_bytes",
        &[] as &[(&str, &str)],
        num(21) * page,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_is_well_formed() {
        let mut w = Writer::default();
        let t = Target {
            pid: 12,
            master: Some(10),
            worker: Some(0),
        };
        let gone = Target {
            pid: 13,
            master: None,
            worker: None,
        };
        gc(&mut w, &[(t, Some(1234)), (gone, None)]);
        let mut h = Health::default();
        h.pauses.observe(0.0003);
        h.pauses.observe(0.02);
        h.error("census");
        health(&mut w, &h, 2, 0.0015);
        let s = w.finish();
        assert!(s.contains(
            "# HELP ljleak_luajit_gc_bytes LuaJIT GC total (g->gc.total) of each watched process, read without a pause.\n# TYPE ljleak_luajit_gc_bytes gauge\n"
        ));
        assert!(s.contains("ljleak_luajit_gc_bytes{master=\"10\",pid=\"12\",worker=\"0\"} 1234\n"));
        assert!(!s.contains("ljleak_luajit_gc_bytes{master=\"\",pid=\"13\""));
        assert!(s.contains("ljleak_up{master=\"\",pid=\"13\",worker=\"\"} 0\n"));
        assert!(s.contains("ljleak_pause_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(s.contains("ljleak_pause_seconds_bucket{le=\"0.025\"} 2\n"));
        assert!(s.contains("ljleak_pause_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(s.contains("ljleak_pause_seconds_count 2\n"));
        assert!(s.contains("ljleak_scrape_errors_total{kind=\"census\"} 1\n"));
        assert!(s.contains("ljleak_scrape_errors_total{kind=\"target_gone\"} 0\n"));
        assert!(s.contains("ljleak_scrape_duration_seconds 0.0015\n"));
        // Each family's TYPE appears once, before its samples.
        for line in s.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split(' ').nth(2).unwrap();
            assert_eq!(s.matches(&format!("# TYPE {name} ")).count(), 1, "{name}");
        }
    }

    #[test]
    fn label_values_and_numbers_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(format_value(1e3), "1000");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
        let mut w = Writer::default();
        w.family("x", "gauge", "multi\nline \\ help");
        w.sample("x", &[("zone", "we\"ird")], 1.0);
        assert_eq!(
            w.finish(),
            "# HELP x multi\\nline \\\\ help\n# TYPE x gauge\nx{zone=\"we\\\"ird\"} 1\n"
        );
    }
}
