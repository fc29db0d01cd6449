//! Which part of a process's memory grows: the trend of each `mem`
//! component over a series of samples, and a verdict that names the
//! growing ones ("growing: glibc free chunks +40.0 MiB/min; GC heap stable").

use serde::Serialize;

use super::trend::{analyze, Trend, Verdict};
use crate::mem::MemReport;

/// Reads one component's bytes from a report.
pub type Getter = fn(&MemReport) -> u64;

/// The components followed, with how to read each from a report.
pub const COMPONENTS: &[(&str, Getter)] = &[
    ("Rss", |r| r.rss),
    ("GC heap", |r| r.luajit.gc_total),
    ("LuaJIT arena free", |r| r.luajit.arena_free),
    ("JIT code", |r| r.luajit.mcode),
    ("glibc in use", |r| r.glibc.in_use),
    ("glibc free chunks", |r| r.glibc.free),
    ("glibc mmapped", |r| r.glibc.mmapped),
    ("shm used", |r| r.shm.iter().map(|z| z.used).sum()),
    ("stacks", |r| r.stacks),
    ("unattributed", |r| r.unattributed),
];

/// One component's trend.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentTrend {
    /// Name.
    pub name: String,
    /// Trend of its bytes (x in minutes).
    pub trend: Trend,
}

/// Trends of every component over `samples` of (minutes since start, report).
pub fn components(samples: &[(f64, &MemReport)]) -> Vec<ComponentTrend> {
    COMPONENTS
        .iter()
        .map(|(name, get)| ComponentTrend {
            name: (*name).into(),
            trend: analyze(
                &samples
                    .iter()
                    .map(|(t, r)| (*t, get(r) as f64))
                    .collect::<Vec<_>>(),
            ),
        })
        .collect()
}

/// The verdict line: growing components with their slope, then the GC
/// heap's state when it is not among them.
pub fn verdict(c: &[ComponentTrend]) -> String {
    let mib = |b: f64| b / 1048576.0;
    let growing: Vec<String> = c
        .iter()
        .filter(|x| x.name != "Rss")
        .filter(|x| matches!(x.trend.verdict, Verdict::Growing | Verdict::Saturating))
        .map(|x| {
            let slope = x.trend.fit.map(|f| f.slope).unwrap_or(0.0);
            format!("{} {:+.1} MiB/min", x.name, mib(slope))
        })
        .collect();
    let gc = c.iter().find(|x| x.name == "GC heap");
    let gc_state = gc
        .filter(|g| !matches!(g.trend.verdict, Verdict::Growing | Verdict::Saturating))
        .map(|g| format!("; GC heap {}", verdict_name(&g.trend.verdict)))
        .unwrap_or_default();
    if growing.is_empty() {
        format!("nothing grows{gc_state}")
    } else {
        format!("growing: {}{gc_state}", growing.join(", "))
    }
}

fn verdict_name(v: &Verdict) -> &'static str {
    match v {
        Verdict::Growing => "growing",
        Verdict::Saturating => "saturating",
        Verdict::Stable => "stable",
        Verdict::Shrinking => "shrinking",
        Verdict::Unknown => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_growing_component() {
        let reps: Vec<MemReport> = (0..10u64)
            .map(|i| {
                let mut r = MemReport::default();
                r.luajit.gc_total = 48 << 20; // flat
                r.glibc.free = (100 << 20) + i * (40 << 20); // +40 MiB a sample
                r.rss = r.glibc.free + r.luajit.gc_total;
                r
            })
            .collect();
        let s: Vec<(f64, &MemReport)> = reps
            .iter()
            .enumerate()
            .map(|(i, r)| (i as f64, r))
            .collect();
        let v = verdict(&components(&s));
        assert_eq!(
            v,
            "growing: glibc free chunks +40.0 MiB/min; GC heap stable"
        );
    }
}
