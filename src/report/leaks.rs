//! `ljleak leaks` outputs: folded stacks (root first, `a;b;c BYTES`, for
//! inferno / flamegraph.pl), the stap text format (frames innermost first as
//! ` 0x… : sym+0x…/0x… [module]`, then a tab and the bytes, as
//! stackcollapse-stap.pl reads it), an SVG flame graph drawn with inferno,
//! and JSON with the summary and the top sites.
//!
//! The JSON is also the leak snapshot file (`leaks -o leaks.json`, read back
//! by `ljleak diff` and `ljleak convert`): the census envelope
//! ([`crate::report::envelope`]) at the top level with kind `leaks`, the
//! target's exe and LuaJIT build, the window and pause, then `summary` and
//! `sites` (frames innermost first; [`folded_map`] gives them root first).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::leaks::{Counts, Origin};
use crate::report::census::LuajitInfo;
use crate::report::envelope::{schema_v1, Stamp, SCHEMA_VERSION};

/// A frame as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<crate::leaks::sample::SamplingSummary>,
}

/// The whole report, which is also the leak snapshot file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LeakReport {
    /// Snapshot schema version.
    #[serde(default = "schema_v1")]
    pub schema: u32,
    /// Always `leaks`.
    #[serde(default)]
    pub kind: String,
    /// Target.
    #[serde(default)]
    pub pid: i32,
    /// Its executable.
    #[serde(default)]
    pub exe: String,
    /// LuaJIT build, when the target runs one that was found.
    #[serde(default)]
    pub luajit: Option<LuajitInfo>,
    /// Seconds traced.
    #[serde(default)]
    pub window_seconds: f64,
    /// Microseconds the target was paused (to index Lua prototypes), if it was.
    #[serde(default)]
    pub pause_us: Option<u64>,
    /// Distinct outstanding stacks, before `--top` cut `sites`.
    #[serde(default)]
    pub sites_total: u64,
    /// When, where, which binary, which ljleak and command line.
    #[serde(flatten)]
    pub stamp: Stamp,
    /// Summary.
    pub summary: LeakSummary,
    /// Sites, most bytes first.
    pub sites: Vec<LeakSite>,
}

impl LeakReport {
    /// Fill the envelope: kind `leaks`, schema, and `s`.
    pub fn stamp(&mut self, s: Stamp) {
        self.schema = SCHEMA_VERSION;
        self.kind = "leaks".into();
        self.stamp = s;
    }

    /// The LuaJIT build as `variant GC64`, or `unknown`.
    pub fn build_name(&self) -> String {
        match &self.luajit {
            Some(l) => format!("{} {}", l.variant, if l.gc64 { "GC64" } else { "non-GC64" }),
            None => "unknown".into(),
        }
    }
}

/// Make a frame name safe for the folded format (`;` separates frames).
fn folded_name(n: &str) -> String {
    n.replace(';', ":").replace('\n', " ")
}

/// A site's stack as one folded key: frame names root first, joined by `;`.
pub fn stack_key(s: &LeakSite) -> String {
    let stack: Vec<String> = s
        .frames
        .iter()
        .rev()
        .map(|f| folded_name(&f.name))
        .collect();
    stack.join(";")
}

/// Stack key ([`stack_key`]) to (bytes, allocations), identical stacks merged.
pub fn folded_map(r: &LeakReport) -> BTreeMap<String, (u64, u64)> {
    let mut merged: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for s in &r.sites {
        let e = merged.entry(stack_key(s)).or_default();
        e.0 += s.bytes;
        e.1 += s.count;
    }
    merged
}

/// Folded lines, root first, identical stacks merged, sorted.
pub fn folded(r: &LeakReport) -> String {
    let mut out = String::new();
    for (k, (v, _)) in folded_map(r) {
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
            "  sampled 1 per {} bytes: {} allocations sampled, outstanding figures are estimates from {} sampled allocations (outstanding bytes {} +/- {}, 95% confidence); frees of untracked pointers {}",
            sm.sample_bytes, sm.sampled, sm.outstanding_sampled, s.outstanding_bytes, sm.ci95_bytes, c.untracked_frees
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
            ..Default::default()
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
