//! The census report (`gc`, `objs`): the snapshot file `objs -o X.json`
//! writes and `diff`/`convert` read back. Data only; the text renderings
//! are in [`crate::report::census`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::luajit::census::{CdataType, CountSum, SizeClass, Stats};
use crate::luajit::walk::Overheads;
use crate::model::envelope::{schema_v1, Stamp, SCHEMA_VERSION};

/// Which LuaJIT build.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LuajitInfo {
    /// `luajit2` or `upstream`.
    pub variant: String,
    /// GC64 build.
    pub gc64: bool,
    /// Layout name (`luajit2-gc64`...).
    pub layout: String,
    /// `dwarf`, `table` or `forced`.
    pub layout_source: String,
    /// How the VM was found.
    pub method: String,
    /// `lua_State *` found.
    pub lua_state: String,
    /// `global_State *`.
    pub global_state: String,
    /// Object file holding LuaJIT.
    #[serde(default)]
    pub object: Option<String>,
}

/// Per-type statistics with the average spelled out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeStats {
    /// Objects.
    pub count: u64,
    /// Bytes.
    pub sum: u64,
    /// Smallest.
    pub min: u64,
    /// Largest.
    pub max: u64,
    /// Mean (rounded down).
    pub avg: u64,
}

impl From<Stats> for TypeStats {
    fn from(s: Stats) -> Self {
        TypeStats {
            count: s.count,
            sum: s.sum,
            min: s.min,
            max: s.max,
            avg: s.avg(),
        }
    }
}

/// The `objs` (and `gc`) JSON object, which is also the snapshot file
/// format (`objs -o FILE`, read back by `ljleak diff`). The envelope fields
/// (`schema` ... `command_line`, see [`crate::report::envelope`]) have serde
/// defaults so files written before they existed still parse.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CensusReport {
    /// Snapshot schema version.
    #[serde(default = "schema_v1")]
    pub schema: u32,
    /// Report kind: `census` (or `gc` for the total alone).
    pub kind: String,
    /// Target.
    pub pid: i32,
    /// Its executable.
    pub exe: String,
    /// LuaJIT build.
    pub luajit: LuajitInfo,
    /// `g->gc.total`.
    pub gc_total: u64,
    /// Sum of every object and fixed allocation the walker found.
    pub walker_total: Option<u64>,
    /// GC state name.
    pub gc_state: String,
    /// `g->gc.threshold`.
    #[serde(default)]
    pub gc_threshold: u64,
    /// Microseconds the target was paused.
    pub pause_us: u64,
    /// `quiescent`, `best-effort`, `nonblocking` or `none` (gc reads one word).
    pub consistency: String,
    /// Where the VM thread was when paused.
    #[serde(default)]
    pub stopped_in: Option<String>,
    /// Per type, by name.
    #[serde(default)]
    pub types: BTreeMap<String, TypeStats>,
    /// Dead objects not yet swept.
    #[serde(default)]
    pub dead: CountSum,
    /// cdata by C type, biggest first.
    #[serde(default)]
    pub cdata_types: Vec<CdataType>,
    /// Fixed allocations in gc.total.
    #[serde(default)]
    pub overheads: Option<Overheads>,
    /// JIT machine code area (not in gc.total).
    #[serde(default)]
    pub mcode_jit: u64,
    /// FFI callback machine code (not in gc.total).
    #[serde(default)]
    pub mcode_callbacks: u64,
    /// Objects walked.
    #[serde(default)]
    pub objects: u64,
    /// Bytes copied from the target.
    #[serde(default)]
    pub image_bytes: u64,
    /// How the heap was captured: `copy` or `fork` (empty in older files).
    #[serde(default)]
    pub snapshot: String,
    /// Bytes the target copied on write while a fork snapshot lived.
    #[serde(default)]
    pub cow_bytes: u64,
    /// Walk time after the pause, microseconds.
    #[serde(default)]
    pub walk_us: u64,
    /// CPU time of the walk, microseconds.
    #[serde(default)]
    pub walk_cpu_us: u64,
    /// Problems met during the walk.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Tables by power-of-two size class, smallest first.
    #[serde(default)]
    pub table_classes: Vec<SizeClass>,
    /// When the snapshot was taken (UTC, RFC 3339).
    #[serde(default)]
    pub created: String,
    /// The same instant in milliseconds since the Unix epoch.
    #[serde(default)]
    pub created_unix_ms: u64,
    /// Host name of the machine.
    #[serde(default)]
    pub host: String,
    /// GNU build-id of the executable (hex).
    #[serde(default)]
    pub exe_build_id: Option<String>,
    /// ljleak version that wrote the file.
    #[serde(default)]
    pub ljleak_version: String,
    /// Command line that produced it.
    #[serde(default)]
    pub command_line: Vec<String>,
    /// Set on the total of an nginx master's workers: their PIDs (`diff`
    /// warns when it compares such a total with one process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<Vec<i32>>,
}

impl CensusReport {
    /// Fill the envelope fields (schema, time, host, build-id, version,
    /// command line).
    pub fn stamp(&mut self, s: Stamp) {
        self.schema = SCHEMA_VERSION;
        self.created = s.created;
        self.created_unix_ms = s.created_unix_ms;
        self.host = s.host;
        self.exe_build_id = s.exe_build_id;
        self.ljleak_version = s.ljleak_version;
        self.command_line = s.command_line;
    }
}

/// How long the walk of the copy took: wall clock, and this thread's CPU
/// time (what benchmarks compare: it does not grow when other processes
/// compete for the CPU).
#[derive(Debug, Clone, Copy, Default)]
pub struct WalkTime {
    /// Wall-clock microseconds.
    pub wall_us: u64,
    /// CPU microseconds of the walking thread.
    pub cpu_us: u64,
}
