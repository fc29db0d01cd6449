//! `ljleak refs` report: who holds the memory. A self-describing JSON object
//! (`kind: "refs"`; field names are stable, `ljleak diff` reads them) and a
//! text rendering.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::census::LuajitInfo;

/// One object with its retention facts and its shortest path from a root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldObject {
    /// Address (`0x…`).
    pub addr: String,
    /// Type name (`table`, `cdata`...).
    #[serde(rename = "type")]
    pub ty: String,
    /// What it is (`table: 0x…`, `function @file.lua:3`, `cdata<char [100]>: 0x…`).
    pub desc: String,
    /// Own size in bytes.
    pub size: u64,
    /// Retained size: own size plus everything it dominates. 0 when unreachable.
    pub retained: u64,
    /// Objects it retains (itself included).
    pub retained_objects: u64,
    /// Retained bytes held in small pieces (not passed to one big child).
    pub accumulated: u64,
    /// Names of the references on the shortest path from a root, root
    /// first; empty when the object is unreachable.
    pub path: Vec<String>,
    /// False when no strong path from a root leads to it (garbage waiting
    /// for the sweep, or held only through weak references).
    pub reachable: bool,
}

/// The `refs` JSON object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefsReport {
    /// Always `refs`.
    pub kind: String,
    /// Target.
    pub pid: i32,
    /// Its executable.
    pub exe: String,
    /// LuaJIT build.
    pub luajit: LuajitInfo,
    /// `g->gc.total`.
    pub gc_total: u64,
    /// Objects in the heap.
    pub objects: u64,
    /// Their bytes.
    pub object_bytes: u64,
    /// Strong references between objects.
    pub edges: u64,
    /// Objects reachable from the roots.
    pub reachable_objects: u64,
    /// Their bytes.
    pub reachable_bytes: u64,
    /// Bytes of heap mappings copied.
    pub image_bytes: u64,
    /// How the heap was captured: `copy` or `fork`.
    #[serde(default)]
    pub snapshot: String,
    /// Bytes the target copied on write while a fork snapshot lived.
    #[serde(default)]
    pub cow_bytes: u64,
    /// How long the target was held, microseconds.
    pub pause_us: u64,
    /// `quiescent`, `best-effort` or `nonblocking`.
    pub consistency: String,
    /// Time to build the graph and compute dominators, microseconds.
    pub analysis_us: u64,
    /// Leak suspects, biggest accumulation first.
    pub suspects: Vec<HeldObject>,
    /// Objects asked for with `--size` / `--type` / `--addr`, biggest first.
    pub matches: Vec<HeldObject>,
    /// Matches left out by `--limit`.
    pub matches_omitted: u64,
    /// Problems met while walking or reading references.
    pub warnings: Vec<String>,
}

/// Bytes with a binary unit, for text.
pub(crate) fn human(b: u64) -> String {
    crate::units::bytes(b)
}

fn held_text(out: &mut String, n: usize, h: &HeldObject) {
    let _ = writeln!(
        out,
        "#{n} {} retains {} ({} bytes, {} objects); own size {}",
        h.desc,
        human(h.retained),
        h.retained,
        h.retained_objects,
        h.size
    );
    if h.reachable {
        let _ = writeln!(
            out,
            "    held by: {}",
            crate::analysis::retention::join_path(&h.path)
        );
    } else {
        let _ = writeln!(
            out,
            "    unreachable: garbage awaiting the sweep, or held only by weak references"
        );
    }
}

/// Text rendering.
pub fn refs_text(r: &RefsReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "ljleak refs: pid {} ({})", r.pid, r.exe);
    let _ = writeln!(
        s,
        "GC total {} bytes; {} objects ({} bytes), {} references",
        r.gc_total, r.objects, r.object_bytes, r.edges
    );
    let _ = writeln!(
        s,
        "reachable from the roots: {} in {} objects; unreachable: {} in {} objects",
        human(r.reachable_bytes),
        r.reachable_objects,
        human(r.object_bytes.saturating_sub(r.reachable_bytes)),
        r.objects.saturating_sub(r.reachable_objects)
    );
    let _ = writeln!(
        s,
        "paused {} us ({}), analysed in {} ms",
        r.pause_us,
        r.consistency,
        r.analysis_us / 1000
    );
    if !r.suspects.is_empty() {
        let _ = writeln!(s, "\nLeak suspects (objects holding many small objects):");
        for (i, h) in r.suspects.iter().enumerate() {
            held_text(&mut s, i + 1, h);
        }
    }
    if !r.matches.is_empty() || r.matches_omitted > 0 {
        let _ = writeln!(s, "\nMatching objects:");
        for (i, h) in r.matches.iter().enumerate() {
            held_text(&mut s, i + 1, h);
        }
        if r.matches_omitted > 0 {
            let _ = writeln!(s, "... {} more (raise --limit)", r.matches_omitted);
        }
    }
    for w in &r.warnings {
        let _ = writeln!(s, "warning: {w}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human(10), "10 B");
        assert_eq!(human(2048), "2.0 KiB");
        assert_eq!(human(3 << 20), "3.0 MiB");
    }
}
