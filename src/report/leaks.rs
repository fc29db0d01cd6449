//! `ljleak leaks` outputs: folded stacks (root first, `a;b;c BYTES`, for
//! inferno / flamegraph.pl), the stap text format (frames innermost first as
//! ` 0x… : sym+0x…/0x… [module]`, then a tab and the bytes, as
//! stackcollapse-stap.pl reads it), an SVG flame graph drawn with inferno,
//! and JSON with the summary and the top sites.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::leaks::{Counts, Origin};

/// A frame as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SiteFrame {
    /// Name (function, Lua `chunk:line`, or `module+0xOFF`).
    pub name: String,
    /// Address (0 for synthetic frames).
    pub addr: u64,
    /// Offset in the function.
    pub offset: u64,
    /// Function size (0 when unknown).
    pub size: u64,
    /// Object path.
    pub module: String,
}

/// Outstanding memory allocated from one stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeakSite {
    /// Outstanding bytes.
    pub bytes: u64,
    /// Outstanding allocations.
    pub count: u64,
    /// Allocator.
    pub origin: Origin,
    /// Frames, innermost first.
    pub frames: Vec<SiteFrame>,
}

/// The summary always printed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LeakSummary {
    /// Target.
    pub pid: i32,
    /// Seconds traced.
    pub seconds: f64,
    /// Stopped early by Ctrl-C.
    pub interrupted: bool,
    /// Threads traced.
    pub threads: u64,
    /// `malloc`, `luajit` or `all`.
    pub source: String,
    /// Call counters.
    pub counts: Counts,
    /// Outstanding allocations (after --min-age).
    pub outstanding_count: u64,
    /// Outstanding bytes (after --min-age).
    pub outstanding_bytes: u64,
    /// Records the kernel lost.
    pub lost_events: u64,
    /// Throttle records.
    pub throttled: u64,
    /// Allocation stacks that could not be unwound to their root.
    pub truncated_stacks: u64,
    /// Allocation events seen in total (including nested).
    pub samples: u64,
    /// `--min-age` in seconds.
    pub min_age: f64,
    /// With `--sample-bytes`: outstanding figures are estimates from these samples.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampling: Option<crate::leaks::sample::SamplingSummary>,
}

/// The whole report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LeakReport {
    /// Summary.
    pub summary: LeakSummary,
    /// Sites, most bytes first.
    pub sites: Vec<LeakSite>,
}

/// Make a frame name safe for the folded format (`;` separates frames).
fn folded_name(n: &str) -> String {
    n.replace(';', ":").replace('\n', " ")
}

/// Folded lines, root first, identical stacks merged, sorted.
pub fn folded(r: &LeakReport) -> String {
    let mut merged: BTreeMap<String, u64> = BTreeMap::new();
    for s in &r.sites {
        let stack: Vec<String> = s
            .frames
            .iter()
            .rev()
            .map(|f| folded_name(&f.name))
            .collect();
        *merged.entry(stack.join(";")).or_default() += s.bytes;
    }
    let mut out = String::new();
    for (k, v) in merged {
        let _ = writeln!(out, "{k} {v}");
    }
    out
}

/// stap-style text: one block per site.
pub fn stap(r: &LeakReport) -> String {
    let mut out = String::new();
    for s in &r.sites {
        for f in &s.frames {
            let module = if f.module.is_empty() {
                "unknown"
            } else {
                &f.module
            };
            let _ = writeln!(
                out,
                " {:#x} : {}+{:#x}/{:#x} [{}]",
                f.addr,
                folded_name(&f.name),
                f.offset,
                f.size,
                module
            );
        }
        let _ = writeln!(out, "\t{}\n", s.bytes);
    }
    out
}

/// JSON with the summary and the `top` largest sites.
pub fn json(r: &LeakReport, top: usize) -> String {
    let mut r2 = r.clone();
    r2.sites.truncate(top);
    serde_json::to_string_pretty(&r2).unwrap_or_default() + "\n"
}

/// An SVG flame graph of the folded stacks.
pub fn svg(r: &LeakReport, title: Option<&str>) -> Result<String, String> {
    let lines = folded(r);
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.unwrap_or("Memory Leak Flame Graph").to_string();
    opts.count_name = "bytes".to_string();
    opts.deterministic = true;
    let mut out = Vec::new();
    if lines.is_empty() {
        // inferno refuses empty input; draw an explicit empty graph.
        opts.subtitle = Some("no outstanding allocations".into());
        inferno::flamegraph::from_lines(
            &mut opts,
            std::iter::once("(no outstanding allocations) 1"),
            &mut out,
        )
        .map_err(|e| e.to_string())?;
    } else {
        inferno::flamegraph::from_lines(&mut opts, lines.lines(), &mut out)
            .map_err(|e| e.to_string())?;
    }
    String::from_utf8(out).map_err(|e| e.to_string())
}

/// The summary as text (stderr).
pub fn summary_text(s: &LeakSummary) -> String {
    let c = &s.counts;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ljleak leaks: pid {}, traced {:.1} s{} on {} thread(s), source {}",
        s.pid,
        s.seconds,
        if s.interrupted { " (interrupted)" } else { "" },
        s.threads,
        s.source
    );
    let _ = writeln!(
        out,
        "  allocations {} ({} bytes), frees {}, frees of memory allocated before the window {} ({} bytes known)",
        c.allocs, c.alloc_bytes, c.frees, c.pre_window_frees, c.pre_window_free_bytes
    );
    let _ = writeln!(
        out,
        "  outstanding {} allocations, {} bytes{}",
        s.outstanding_count,
        s.outstanding_bytes,
        if s.min_age > 0.0 {
            format!(" (at least {} s old)", s.min_age)
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "  lost events {}, throttled {}, truncated stacks {}, nested calls {}, unmatched entries {}, failed calls {}",
        s.lost_events, s.throttled, s.truncated_stacks, c.nested, c.unmatched, c.failed
    );
    if let Some(sm) = &s.sampling {
        let _ = writeln!(
            out,
            "  sampled 1 per {} bytes: {} allocations sampled, outstanding figures are estimates from {} sampled allocations; frees of untracked pointers {}",
            sm.sample_bytes, sm.sampled, sm.outstanding_sampled, c.untracked_frees
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(name: &str, addr: u64) -> SiteFrame {
        SiteFrame {
            name: name.into(),
            addr,
            offset: 4,
            size: 32,
            module: "/lib/x.so".into(),
        }
    }

    fn report() -> LeakReport {
        LeakReport {
            summary: LeakSummary::default(),
            sites: vec![
                LeakSite {
                    bytes: 300,
                    count: 3,
                    origin: Origin::Libc,
                    frames: vec![
                        frame("malloc", 0x10),
                        frame("leaf;x", 0x20),
                        frame("main", 0x30),
                    ],
                },
                LeakSite {
                    bytes: 5,
                    count: 1,
                    origin: Origin::Libc,
                    frames: vec![frame("malloc", 0x10), frame("main", 0x31)],
                },
                LeakSite {
                    bytes: 7,
                    count: 1,
                    origin: Origin::Libc,
                    frames: vec![frame("malloc", 0x11), frame("main", 0x32)],
                },
            ],
        }
    }

    #[test]
    fn folded_is_root_first_and_merged() {
        assert_eq!(
            folded(&report()),
            "main;leaf:x;malloc 300\nmain;malloc 12\n"
        );
    }

    #[test]
    fn stap_lines() {
        let s = stap(&report());
        assert!(
            s.starts_with(" 0x10 : malloc+0x4/0x20 [/lib/x.so]\n"),
            "{s}"
        );
        assert!(s.contains("\t300\n"));
    }

    #[test]
    fn svg_has_title_and_frames() {
        let s = svg(&report(), None).unwrap();
        assert!(s.contains("Memory Leak Flame Graph"));
        assert!(s.contains("leaf:x"));
        assert!(svg(&LeakReport::default(), None).unwrap().contains("<svg"));
    }
}
