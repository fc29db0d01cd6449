//! Deltas between two leak snapshots: outstanding bytes and allocations in
//! total, and per allocation stack (root-first frame names joined by `;`,
//! as in the folded output) which stacks are new, grew, shrank or vanished.
//! The classification and ordering are [`super::folded::diff`]'s, on bytes;
//! counts ride along.

use serde::Serialize;

use super::census_diff::Delta;
use super::folded::{self, Change};
use super::gate::{Metric, Metrics};
use super::snapshot::Folded;
use crate::model::leaks::{folded_map, LeakReport};

/// Where a leak snapshot came from, for the report header.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeakSource {
    /// File name as given.
    pub file: String,
    /// Target pid.
    pub pid: i32,
    /// Host.
    pub host: String,
    /// When.
    pub created: String,
    /// Executable.
    pub exe: String,
    /// Its build-id.
    pub exe_build_id: Option<String>,
    /// LuaJIT build (`luajit2 GC64`...) or `unknown`.
    pub build: String,
    /// Seconds traced.
    pub window_seconds: f64,
    /// Allocators traced.
    pub source: String,
}

/// One stack that changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeakStackDelta {
    /// Frames, root first, joined by `;`.
    pub stack: String,
    /// Kind of change (by bytes).
    pub change: Change,
    /// Outstanding bytes.
    pub bytes: Delta,
    /// Outstanding allocations.
    pub count: Delta,
}

/// The comparison of two leak snapshots.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LeakDiff {
    /// First snapshot.
    pub a: LeakSource,
    /// Second snapshot.
    pub b: LeakSource,
    /// Outstanding bytes (the summary's, not cut by `--top`).
    pub total: Delta,
    /// Outstanding allocations.
    pub count: Delta,
    /// Distinct outstanding stacks.
    pub stacks: Delta,
    /// Changed stacks, largest byte growth first.
    pub changed: Vec<LeakStackDelta>,
    /// Things that make the comparison less trustworthy.
    pub warnings: Vec<String>,
}

impl LeakDiff {
    /// Stacks with change `c`.
    pub fn with(&self, c: Change) -> impl Iterator<Item = &LeakStackDelta> {
        self.changed.iter().filter(move |s| s.change == c)
    }
}

fn source(file: &str, r: &LeakReport) -> LeakSource {
    LeakSource {
        file: file.into(),
        pid: r.pid,
        host: r.stamp.host.clone(),
        created: r.stamp.created.clone(),
        exe: r.exe.clone(),
        exe_build_id: r.stamp.exe_build_id.clone(),
        build: r.build_name(),
        window_seconds: r.window_seconds,
        source: r.summary.source.clone(),
    }
}

/// The report's stacks by bytes, the shape `diff -o x.svg` draws.
pub fn bytes_folded(r: &LeakReport) -> Folded {
    folded_map(r)
        .into_iter()
        .filter(|(_, (b, _))| *b > 0)
        .map(|(k, (b, _))| (k, b))
        .collect()
}

/// Compare snapshot `ra` (file `fa`) with `rb` (file `fb`).
pub fn diff(fa: &str, ra: &LeakReport, fb: &str, rb: &LeakReport) -> LeakDiff {
    let (ma, mb) = (folded_map(ra), folded_map(rb));
    let fd = folded::diff(fa, &bytes_folded(ra), fb, &bytes_folded(rb));
    let count = |m: &std::collections::BTreeMap<String, (u64, u64)>, k: &str| {
        m.get(k).map(|v| v.1).unwrap_or(0)
    };
    let changed = fd
        .stacks
        .into_iter()
        .map(|s| LeakStackDelta {
            count: Delta::new(count(&ma, &s.stack), count(&mb, &s.stack)),
            bytes: Delta::new(s.a, s.b),
            change: s.change,
            stack: s.stack,
        })
        .collect();
    let mut warnings = Vec::new();
    if ra.stamp.exe_build_id.is_some()
        && rb.stamp.exe_build_id.is_some()
        && ra.stamp.exe_build_id != rb.stamp.exe_build_id
    {
        warnings.push(format!(
            "the executables differ ({fa} build-id {:?}, {fb} build-id {:?})",
            ra.stamp.exe_build_id, rb.stamp.exe_build_id
        ));
    }
    if ra.summary.source != rb.summary.source {
        warnings.push(format!(
            "{fa} traced `{}` allocators and {fb} `{}`",
            ra.summary.source, rb.summary.source
        ));
    }
    if (ra.window_seconds - rb.window_seconds).abs() > 0.5 {
        warnings.push(format!(
            "the windows differ ({:.1} s and {:.1} s): outstanding memory grows with the window",
            ra.window_seconds, rb.window_seconds
        ));
    }
    for (f, r) in [(fa, ra), (fb, rb)] {
        let s = &r.summary;
        if s.lost_events > 0 {
            warnings.push(format!(
                "{f}: {} events lost: figures are a lower bound",
                s.lost_events
            ));
        }
        if r.sites_total > r.sites.len() as u64 {
            warnings.push(format!(
                "{f} lists {} of {} stacks (leaks --top): the others count in the totals only",
                r.sites.len(),
                r.sites_total
            ));
        }
    }
    let stacks = |r: &LeakReport| r.sites_total.max(r.sites.len() as u64);
    LeakDiff {
        a: source(fa, ra),
        b: source(fb, rb),
        total: Delta::new(ra.summary.outstanding_bytes, rb.summary.outstanding_bytes),
        count: Delta::new(ra.summary.outstanding_count, rb.summary.outstanding_count),
        stacks: Delta::new(stacks(ra), stacks(rb)),
        changed,
        warnings,
    }
}

impl Metrics for LeakDiff {
    fn metric(&self, name: &str) -> Option<Metric> {
        let (d, bytes) = match name {
            "total" | "bytes" => (&self.total, true),
            "count" => (&self.count, false),
            "stacks" => (&self.stacks, false),
            _ => return None,
        };
        Some(Metric {
            a: d.a,
            b: d.b,
            bytes,
        })
    }

    fn metric_help(&self) -> &'static str {
        "total (outstanding bytes), count (outstanding allocations), stacks"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leaks::Origin;
    use crate::model::leaks::{LeakSite, SiteFrame};

    fn site(frames: &[&str], bytes: u64, count: u64) -> LeakSite {
        LeakSite {
            bytes,
            count,
            origin: Origin::Libc,
            // Innermost first.
            frames: frames
                .iter()
                .rev()
                .map(|n| SiteFrame {
                    name: n.to_string(),
                    addr: 0,
                    offset: 0,
                    size: 0,
                    module: "m".into(),
                })
                .collect(),
        }
    }

    fn report(sites: Vec<LeakSite>) -> LeakReport {
        let mut r = LeakReport {
            sites_total: sites.len() as u64,
            ..Default::default()
        };
        r.summary.outstanding_bytes = sites.iter().map(|s| s.bytes).sum();
        r.summary.outstanding_count = sites.iter().map(|s| s.count).sum();
        r.sites = sites;
        r
    }

    #[test]
    fn stacks_classified_with_counts_and_gated() {
        let a = report(vec![
            site(&["main", "leak", "malloc"], 1000, 10),
            site(&["main", "gone", "malloc"], 50, 1),
            // Two sites with one name stack merge.
            site(&["main", "down", "malloc"], 30, 3),
            site(&["main", "down", "malloc"], 30, 3),
        ]);
        let b = report(vec![
            site(&["main", "leak", "malloc"], 3000, 30),
            site(&["main", "new", "malloc"], 7, 1),
            site(&["main", "down", "malloc"], 20, 2),
        ]);
        let d = diff("a", &a, "b", &b);
        let got: Vec<_> = d
            .changed
            .iter()
            .map(|s| (s.stack.as_str(), s.change, s.bytes.delta, s.count.delta))
            .collect();
        assert_eq!(
            got,
            [
                ("main;leak;malloc", Change::Grown, 2000, 20),
                ("main;new;malloc", Change::New, 7, 1),
                ("main;down;malloc", Change::Shrunk, -40, -4),
                ("main;gone;malloc", Change::Vanished, -50, -1),
            ]
        );
        assert_eq!((d.total.a, d.total.b), (1110, 3027));
        assert_eq!((d.stacks.a, d.stacks.b), (4, 3));
        let trips = |e: &str| {
            crate::compare::gate::Gate::parse(e)
                .unwrap()
                .eval(&d)
                .unwrap()
                .tripped
        };
        assert!(!trips("total>+1917"));
        assert!(trips("total>+1916"));
        assert!(trips("count>+15"));
        assert!(!trips("stacks>+0"));
        // The differential flame graph draws the stack only A has.
        let mut svg = Vec::new();
        folded::differential_svg(&bytes_folded(&a), &bytes_folded(&b), "t", &mut svg).unwrap();
        let svg = String::from_utf8(svg).unwrap();
        assert!(
            svg.contains(">gone<") || svg.contains("gone ("),
            "vanished stack drawn"
        );
    }
}
