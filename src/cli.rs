//! Command-line definitions (clap derive). Each subcommand's options struct
//! lives here; the work is in `cmd`.

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Find memory leaks in running OpenResty / LuaJIT processes.
#[derive(Debug, Parser)]
#[command(name = "ljleak", version, about, after_help = crate::error::EXIT_CODES_HELP)]
pub struct Cli {
    /// More detail on stderr (repeat for debug output).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub cmd: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the LuaJIT GC total (like stap++ lj-gc).
    Gc(GcArgs),
    /// Census of GC objects by type (like stap++ lj-gc-objs), exact to the byte.
    Objs(ObjsArgs),
    /// Every Lua thread (coroutine) with its status and backtrace, grouped by stack.
    Threads(ThreadsArgs),
    /// Who holds the memory: leak suspects, retained sizes, retention paths and flame graph.
    Refs(RefsArgs),
    /// Compare two snapshots (objs -o JSON, or folded stacks); gate CI on growth.
    #[command(after_help = DIFF_HELP)]
    Diff(DiffArgs),
    /// Sample memory over time and say whether it grows (leak), saturates or is stable.
    Watch(WatchArgs),
    /// Convert a snapshot or folded-stack file to another format (pprof).
    Convert(ConvertArgs),
    /// Trace allocations for a while and report what is still outstanding,
    /// by stack (C and Lua), as folded stacks, stap text, SVG or JSON.
    Leaks(LeaksArgs),
    /// List the USDT (SystemTap SDT) probes of every object mapped in a process.
    Probes(ProbesArgs),
}

/// Options shared by every command that attaches to a live process.
#[derive(Debug, Args, Clone)]
pub struct TargetArgs {
    /// Process ID of the nginx worker or LuaJIT process (gc, objs and watch
    /// also take an nginx master: every worker in turn, plus a total).
    #[arg(
        short = 'p',
        long = "pid",
        visible_short_alias = 'x',
        visible_alias = "master",
        value_name = "PID"
    )]
    pub pid: i32,
    /// Address of a lua_State (hex) when ljleak cannot find the VM by itself.
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub lua_state: Option<u64>,
    /// Force a built-in layout (luajit2-gc64, luajit2-nogc64, upstream-gc64, upstream-nogc64).
    #[arg(long, value_name = "NAME")]
    pub layout: Option<String>,
}

/// Options of every command that copies the heap.
#[derive(Debug, Args, Clone)]
pub struct CaptureArgs {
    /// Walk without pausing the target, tolerating inconsistency.
    #[arg(long)]
    pub nonblocking: bool,
    /// Pause attempts to find the VM thread blocked in a syscall.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub attempts: u32,
}

impl Default for CaptureArgs {
    fn default() -> Self {
        CaptureArgs {
            nonblocking: false,
            attempts: 50,
        }
    }
}

/// Output format of gc and objs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CensusFormat {
    /// Text like stap++.
    Text,
    /// One JSON object.
    Json,
    /// Gzipped pprof profile.proto (objs only; needs -o when stdout is a terminal).
    Pprof,
}

/// Output format of reports that are text or JSON only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TextOrJson {
    /// Human-readable text.
    Text,
    /// One JSON object.
    Json,
}

/// `ljleak gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Target.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: CensusFormat,
}

/// `ljleak objs`.
#[derive(Debug, Args)]
pub struct ObjsArgs {
    /// Target.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Output format [default: text, or json (a snapshot for `ljleak diff`) with -o].
    #[arg(long, value_enum)]
    pub format: Option<CensusFormat>,
    /// Write the report to FILE instead of stdout (atomically, mode 0600).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
    /// How the heap is copied.
    #[command(flatten)]
    pub capture: CaptureArgs,
    /// How many cdata C types to list in text output.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub top_cdata: usize,
    /// Save the copied heap image to FILE (for offline analysis and bug reports).
    #[arg(long, value_name = "FILE", hide = true)]
    pub save_image: Option<std::path::PathBuf>,
    /// Test hook: hold the target paused this many milliseconds.
    #[arg(long, value_name = "MS", hide = true)]
    pub debug_hold_pause_ms: Option<u64>,
}

/// Output format of threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ThreadsFormat {
    /// Groups, Go goroutine-profile style.
    Text,
    /// One JSON object.
    Json,
    /// Folded stacks (flame graph input).
    Folded,
}

/// What each thread weighs in folded output and flame graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ThreadsWeight {
    /// One per thread.
    Count,
    /// Bytes each thread retains: its own object and stack plus everything
    /// only it holds (its dominator subtree, as `ljleak refs` computes it).
    Bytes,
}

/// `ljleak threads`.
#[derive(Debug, Args)]
pub struct ThreadsArgs {
    /// Target.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: ThreadsFormat,
    /// Write to FILE instead of stdout; a name ending in `.svg` gets a flame graph.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
    /// Weight of each thread in folded output and flame graphs: `count`, or
    /// `bytes` retained (the thread, its stack and everything only it holds).
    #[arg(long, value_enum, default_value = "count")]
    pub weight: ThreadsWeight,
    /// Skip retained sizes in text and JSON output (saves building the
    /// object graph, about 0.5 s per million objects).
    #[arg(long)]
    pub no_retained: bool,
    /// Most Lua frames shown per thread.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_depth: usize,
    /// How the heap is copied.
    #[command(flatten)]
    pub capture: CaptureArgs,
}

/// `ljleak refs`.
#[derive(Debug, Args)]
pub struct RefsArgs {
    /// Target.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: TextOrJson,
    /// How many leak suspects to report.
    #[arg(long, default_value_t = 10, value_name = "K")]
    pub top: usize,
    /// Report the path to every object of at least N bytes (own size).
    #[arg(long, value_name = "N")]
    pub size: Option<u64>,
    /// With --size: only objects of this type (cdata, table, string, function, userdata...).
    #[arg(long = "type", value_name = "TYPE")]
    pub ty: Option<String>,
    /// Report the object at this address (hex, as `tostring(t)` prints it); repeatable.
    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    pub addr: Vec<u64>,
    /// Most objects listed for --size / --addr.
    #[arg(long, default_value_t = 100, value_name = "K")]
    pub limit: usize,
    /// Write the retention flame graph (SVG) to FILE.
    #[arg(short = 'o', long = "flamegraph", value_name = "FILE")]
    pub flamegraph: Option<std::path::PathBuf>,
    /// Write the retention flame graph's folded stacks to FILE.
    #[arg(long, value_name = "FILE")]
    pub folded: Option<std::path::PathBuf>,
    /// Smallest retained size drawn as its own flame graph frame (default: 1/2000 of the reachable heap).
    #[arg(long, value_name = "BYTES")]
    pub min_frame: Option<u64>,
    /// How the heap is copied.
    #[command(flatten)]
    pub capture: CaptureArgs,
    /// Test hook: write the strong object graph (nodes, edges, roots) as JSON to FILE.
    #[arg(long, value_name = "FILE", hide = true)]
    pub dump_graph: Option<std::path::PathBuf>,
}

/// Output format of `leaks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LeakFormat {
    /// Flame graph (inferno).
    Svg,
    /// Folded stacks, root first: `a;b;c BYTES`.
    Folded,
    /// SystemTap-style backtraces (for stackcollapse-stap.pl).
    Stap,
    /// Summary and top sites (the leak snapshot file).
    Json,
    /// Gzipped pprof profile.proto (inuse_objects/count, inuse_space/bytes).
    Pprof,
}

/// Which allocators `leaks` traces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LeakSource {
    /// libc malloc, calloc, realloc, free, posix_memalign...
    Malloc,
    /// LuaJIT's own allocator (g->allocf).
    Luajit,
    /// Both.
    All,
    /// Only the probes named by --alloc-usdt / --free-usdt.
    Usdt,
}

/// `ljleak leaks`.
#[derive(Debug, Args)]
pub struct LeaksArgs {
    /// Target.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Seconds to trace (Ctrl-C stops early and still reports).
    #[arg(short, long, default_value_t = 10.0, value_name = "SECS")]
    pub time: f64,
    /// Write the report to FILE (format from --format, else from the extension).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
    /// Also write folded stacks to FILE.
    #[arg(long, value_name = "FILE")]
    pub folded: Option<std::path::PathBuf>,
    /// Output format (default: from -o's extension: .svg, .json, .stap, .pb.gz; else folded).
    #[arg(long, value_enum)]
    pub format: Option<LeakFormat>,
    /// Only count allocations at least this old at the end of the window.
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    pub min_age: f64,
    /// Which allocators to trace.
    #[arg(long, value_enum, default_value = "all")]
    pub source: LeakSource,
    /// Bytes of user stack copied with each allocation (deeper stacks are truncated).
    #[arg(long, default_value_t = 8192, value_name = "BYTES")]
    pub stack_bytes: u32,
    /// Sample allocations: on average one per N allocated bytes, each
    /// weighted by the bytes it stands for (outstanding figures become
    /// unbiased estimates). Saves ljleak's work per allocation, not the
    /// uprobe's.
    #[arg(long, value_name = "N")]
    pub sample_bytes: Option<u64>,
    /// Ring buffer pages per thread (a power of two).
    #[arg(long, default_value_t = 2048, value_name = "PAGES")]
    pub ring_pages: usize,
    /// Sites listed in JSON output.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub top: usize,
    /// Also trace a custom allocator's USDT probe PROVIDER:NAME with
    /// arguments (pointer, size).
    #[arg(long, value_name = "PROVIDER:NAME")]
    pub alloc_usdt: Option<String>,
    /// Its free probe PROVIDER:NAME with argument (pointer).
    #[arg(long, value_name = "PROVIDER:NAME")]
    pub free_usdt: Option<String>,
    /// Test hook: where to look for the uprobe PMU.
    #[arg(long, value_name = "DIR", hide = true)]
    pub uprobe_pmu_dir: Option<std::path::PathBuf>,
    /// Benchmark hook: read and drop every record (measures the kernel's
    /// share of the overhead; the report is empty).
    #[arg(long, hide = true)]
    pub debug_discard: bool,
    /// Test hook: force a tracer (`bpf`, the default, or `perf`, the
    /// fallback); the environment variable LJLEAK_TRACER does the same.
    #[arg(long, value_enum, hide = true)]
    pub tracer: Option<TracerKind>,
    /// Benchmark hook: BPF programs that only count hits at the same sites
    /// (the floor of any tracer that traps on every call); the report is empty.
    #[arg(long, hide = true)]
    pub debug_count_only: bool,
}

/// Which tracer `ljleak leaks` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TracerKind {
    /// BPF programs on uprobe_multi session links (default).
    Bpf,
    /// perf uprobe events, one per thread and probe (fallback).
    Perf,
}

/// `ljleak probes`.
#[derive(Debug, Args)]
pub struct ProbesArgs {
    /// Process ID.
    #[arg(
        short = 'p',
        long = "pid",
        visible_short_alias = 'x',
        value_name = "PID"
    )]
    pub pid: i32,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: TextOrJson,
}

fn parse_addr(s: &str) -> Result<u64, String> {
    let t = s.trim_start_matches("0x").trim_start_matches("0X");
    u64::from_str_radix(t, 16).map_err(|_| format!("`{s}` is not a hex address like 0x7f12345678"))
}

/// Output format of diff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiffFormat {
    /// Aligned text.
    Text,
    /// One JSON object.
    Json,
    /// Markdown tables (for a CI comment).
    Markdown,
}

const DIFF_HELP: &str = "\
Gates (--fail-if, repeatable): METRIC OP VALUE, OP one of > >= < <=.
  A signed VALUE compares the change B-A (`table.count>+1000`, `cdata.bytes>+10MB`);
  `%` compares the change relative to A (`total>+5%`); an unsigned VALUE compares B
  itself (`total>100MB`). Units: B, KB/MB/GB (powers of 1000), KiB/MiB/GiB (1024).
  Census metrics: total, walker_total, objects, TYPE.count, TYPE.bytes (TYPE: string,
  table, cdata, function, proto, upvalue, thread, trace, userdata, dead).
  Folded metrics: total, stacks.
  Leaks metrics: total (outstanding bytes), count (outstanding allocations), stacks.
  A tripped gate exits with code 3; bad input files exit with 9.";

/// `ljleak diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The earlier snapshot (census JSON from `objs -o`, leaks JSON from `leaks -o`, or folded stacks).
    #[arg(value_name = "A")]
    pub a: std::path::PathBuf,
    /// The later snapshot, of the same kind.
    #[arg(value_name = "B")]
    pub b: std::path::PathBuf,
    /// Fail (exit 3) when EXPR holds, e.g. `total>+5%` (repeatable; see below).
    #[arg(long = "fail-if", value_name = "EXPR")]
    pub fail_if: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: DiffFormat,
    /// Write the report to FILE; a name ending in .svg gets a differential flame graph instead (report to stdout).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
    /// Rows per list (cdata types, stacks).
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub top: usize,
    /// Compare snapshots of different LuaJIT builds anyway.
    #[arg(long)]
    pub allow_build_mismatch: bool,
}

/// Output format of watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WatchFormat {
    /// A live table, then the summary.
    Text,
    /// CSV rows (summary on stderr).
    Csv,
    /// One JSON object per sample, then one `{"summary": ...}` per series.
    Jsonl,
}

/// `ljleak watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Target (an nginx master: every worker, plus a total).
    #[command(flatten)]
    pub target: TargetArgs,
    /// Time between samples (5s, 200ms, 1m).
    #[arg(long, default_value = "5s", value_parser = crate::cmd::watch::parse_interval)]
    pub interval: std::time::Duration,
    /// Samples to take [default: until Ctrl-C].
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Also take a full census per sample (pauses the target each time).
    #[arg(long)]
    pub census: bool,
    /// nginx stub_status URL (http://127.0.0.1:PORT/status) to relate growth to requests.
    #[arg(long, value_name = "URL")]
    pub requests_url: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: WatchFormat,
    /// Write an SVG plot of the series and the fit to FILE.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
}

/// What the numbers of a folded-stack file are, for pprof.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FoldedUnit {
    /// Bytes (pprof `inuse_space/bytes`).
    Bytes,
    /// Objects (pprof `inuse_objects/count`).
    Objects,
}

/// `ljleak convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// A census snapshot (objs -o), a leak snapshot (leaks -o X.json) or a folded-stack file.
    #[arg(value_name = "FILE")]
    pub input: std::path::PathBuf,
    /// Output format (only pprof for now).
    #[arg(long, value_enum, default_value = "pprof")]
    pub format: ConvertFormat,
    /// What a folded file's numbers count.
    #[arg(long, value_enum, default_value = "bytes")]
    pub unit: FoldedUnit,
    /// Write to FILE (required when stdout is a terminal).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
}

/// Output format of convert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConvertFormat {
    /// Gzipped pprof profile.proto.
    Pprof,
}
