//! The refs report (`refs -o X.json`): leak suspects and asked-for
//! objects with retained sizes and named paths, and the total over a
//! master's workers. Data only; text is in [`crate::report::refs`].

use serde::{Deserialize, Serialize};

use crate::model::census::LuajitInfo;

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

/// Suspects with the same named path in several processes (the workers of
/// one nginx master run the same code), summed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathTotal {
    /// The path from a root, root first.
    pub path: Vec<String>,
    /// Type of the holder.
    #[serde(rename = "type")]
    pub ty: String,
    /// Retained bytes summed over the processes.
    pub retained: u64,
    /// Retained objects summed.
    pub retained_objects: u64,
    /// In how many processes this path was a suspect.
    pub processes: u64,
}

/// The total of `refs` over the workers of a master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefsTotal {
    /// The processes summed.
    pub pids: Vec<i32>,
    /// Sum of `g->gc.total`.
    pub gc_total: u64,
    /// Sum of reachable bytes.
    pub reachable_bytes: u64,
    /// Sum of reachable objects.
    pub reachable_objects: u64,
    /// Suspects by path, biggest first.
    pub suspects: Vec<PathTotal>,
}
