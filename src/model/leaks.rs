//! The leak report (`leaks -o X.json`): summary and outstanding sites with
//! their frames, innermost first, under the snapshot envelope. Data only;
//! folded, stap, SVG and text forms are in [`crate::report::leaks`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::leaks::{Counts, Origin};
use crate::model::census::LuajitInfo;
use crate::model::envelope::{schema_v1, Stamp, SCHEMA_VERSION};

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
pub fn folded_name(n: &str) -> String {
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
