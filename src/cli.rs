//! Command-line definitions (clap derive). Each subcommand's options struct
//! lives here; the work is in `cmd`.

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::report::output::{formats, Format};

/// Formats of `gc`.
pub const GC_FORMATS: &[Format] = &[Format::Text, Format::Json];
/// Formats of `objs`.
pub const OBJS_FORMATS: &[Format] = &[
    Format::Text,
    Format::Json,
    Format::Pprof,
    Format::Folded,
    Format::Svg,
];
/// Formats of `threads`.
pub const THREADS_FORMATS: &[Format] = &[Format::Text, Format::Json, Format::Folded, Format::Svg];
/// Formats of `refs`.
pub const REFS_FORMATS: &[Format] = &[Format::Text, Format::Json, Format::Svg, Format::Folded];
/// Formats of `leaks`.
pub const LEAKS_FORMATS: &[Format] = &[
    Format::Folded,
    Format::Svg,
    Format::Json,
    Format::Pprof,
    Format::Stap,
    Format::Text,
];
/// Formats of `mem`.
pub const MEM_FORMATS: &[Format] = &[Format::Text, Format::Json, Format::Svg];
/// Formats of `diff`.
pub const DIFF_FORMATS: &[Format] = &[Format::Text, Format::Json, Format::Markdown, Format::Svg];
/// Formats of `watch`.
pub const WATCH_FORMATS: &[Format] = &[
    Format::Text,
    Format::Csv,
    Format::Jsonl,
    Format::Json,
    Format::Svg,
];
/// Formats of `convert`.
pub const CONVERT_FORMATS: &[Format] = &[Format::Pprof, Format::Folded, Format::Svg];
/// Formats of `probes`.
pub const PROBES_FORMATS: &[Format] = &[Format::Text, Format::Json];

/// Find memory leaks in running OpenResty / LuaJIT processes.
#[derive(Debug, Parser)]
#[command(name = "ljleak", version, about, after_help = crate::error::EXIT_CODES_HELP)]
pub struct Cli {
    /// More detail on stderr (repeat for debug output).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// With capabilities and a non-root real user: inspect processes of
    /// other users too (refused by default, as the kernel would).
    #[arg(long, global = true)]
    pub allow_other_users: bool,
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
    #[command(after_help = REFS_HELP)]
    Refs(RefsArgs),
    /// Compare two snapshots (objs, leaks or refs JSON, or folded stacks); gate CI on growth.
    #[command(after_help = DIFF_HELP)]
    Diff(DiffArgs),
    /// Sample memory over time and say whether it grows (leak), saturates or is stable.
    Watch(WatchArgs),
    /// Convert a snapshot (census, leaks or refs JSON) or folded-stack file to pprof, folded stacks or SVG.
    Convert(ConvertArgs),
    /// Trace allocations for a while and report what is still outstanding,
    /// by stack (C and Lua), as folded stacks, stap text, SVG or JSON.
    Leaks(LeaksArgs),
    /// List the USDT (SystemTap SDT) probes of every object mapped in a process.
    Probes(ProbesArgs),
    /// Where the memory goes: Rss reconciled with LuaJIT, glibc, shm zones, stacks, files; fds, sockets, timers.
    Mem(MemArgs),
    /// Long-running agent: Prometheus /metrics and pprof endpoints
    /// (/debug/pprof/heap, /debug/pprof/goroutine) for Parca, Pyroscope/Alloy.
    #[command(after_help = crate::serve::SERVE_HELP)]
    Serve(ServeArgs),
    /// Write the process's memory as an ELF core file (for gdb, and for
    /// objs/refs/threads/mem --core on another machine).
    Dump(DumpArgs),
    /// Internal: makes and looks after a fork snapshot for another ljleak.
    #[command(hide = true)]
    SnapshotHelper(SnapshotHelperArgs),
    /// Write man pages (one per command) into DIR (packaging).
    #[command(hide = true)]
    Man {
        /// Output folder.
        #[arg(value_name = "DIR")]
        dir: std::path::PathBuf,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(hide = true)]
    Completions {
        /// The shell.
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
}

/// `ljleak dump`.
#[derive(Debug, Args)]
pub struct DumpArgs {
    /// Target.
    #[command(flatten)]
    pub target: TargetArgs,
    /// The core file to write (mode 0600; replaced atomically).
    #[arg(short, long, value_name = "FILE")]
    pub output: std::path::PathBuf,
    /// Dump every readable mapping, not only what the LuaJIT model needs
    /// (heap, writable data, stacks, and the first page of each ELF file).
    #[arg(long)]
    pub all: bool,
    /// How the heap is copied.
    #[command(flatten)]
    pub capture: CaptureArgs,
}

/// `ljleak snapshot-helper` (internal; see src/target/forker.rs).
#[derive(Debug, Args)]
pub struct SnapshotHelperArgs {
    /// PID ATTEMPTS HOLD_MS SITE RDX MAX_LIFE_S MAX_COW.
    #[arg(num_args = 7, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Options shared by every command that attaches to a live process.
#[derive(Debug, Args, Clone)]
pub struct TargetArgs {
    /// Process ID of the nginx worker or LuaJIT process (or an nginx
    /// master: every worker in turn, one paused at a time, plus a total).
    #[arg(
        short = 'p',
        long = "pid",
        visible_short_alias = 'x',
        visible_alias = "master",
        value_name = "PID",
        required_unless_present = "core",
        default_value_t = 0,
        hide_default_value = true
    )]
    pub pid: i32,
    /// Read an ELF core file (from `ljleak dump`, gdb's `gcore` or the
    /// kernel) instead of a live process (objs, refs, threads, and the
    /// memory walks of mem).
    #[arg(long, value_name = "FILE", conflicts_with = "pid")]
    pub core: Option<std::path::PathBuf>,
    /// With --core: look for the executable and libraries the core names
    /// under DIR (like gdb's `set sysroot`).
    #[arg(long, value_name = "DIR", requires = "core")]
    pub sysroot: Option<std::path::PathBuf>,
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
    /// How the heap is captured: `copy` it while the target is paused
    /// (the pause grows with the heap), `fork` a copy-on-write snapshot
    /// (a pause of page-table copying; the target copies only the pages it
    /// writes while ljleak reads), or `auto` (fork when a copy would pause
    /// longer than 100 ms).
    #[arg(long, value_enum, default_value = "auto", value_name = "HOW")]
    pub snapshot: SnapshotArg,
    /// Memory for reading a fork snapshot, in MiB (default: a sixteenth of
    /// the heap, 16 to 256).
    #[arg(long, value_name = "MIB")]
    pub snapshot_cache: Option<usize>,
}

/// `--snapshot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SnapshotArg {
    /// Fork a copy-on-write snapshot.
    Fork,
    /// Copy the heap while paused.
    Copy,
    /// Fork when a copy would pause the target longer than 100 ms.
    Auto,
}

impl Default for CaptureArgs {
    fn default() -> Self {
        CaptureArgs {
            nonblocking: false,
            attempts: 50,
            snapshot: SnapshotArg::Auto,
            snapshot_cache: None,
        }
    }
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
    /// Output format of stdout and of -o files without a known extension [default: text].
    #[arg(long, value_parser = formats(GC_FORMATS))]
    pub format: Option<Format>,
    /// Write to FILE (atomically, mode 0600) in the format its extension
    /// names (.json .svg .txt .folded .pb.gz .md .stap .csv .jsonl);
    /// repeat -o for several files from one run.
    #[arg(short, long, value_name = "FILE")]
    pub output: Vec<std::path::PathBuf>,
}

/// `ljleak objs`.
#[derive(Debug, Args)]
pub struct ObjsArgs {
    /// Target.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Output format of stdout [default: text] and of -o files without a
    /// known extension [default: json, a snapshot for `ljleak diff`].
    #[arg(long, value_parser = formats(OBJS_FORMATS))]
    pub format: Option<Format>,
    /// Write to FILE (atomically, mode 0600) in the format its extension
    /// names (.json .svg .txt .folded .pb.gz .md .stap .csv .jsonl);
    /// repeat -o for several files from one run.
    #[arg(short, long, value_name = "FILE")]
    pub output: Vec<std::path::PathBuf>,
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
    /// Output format of stdout and of -o files without a known extension [default: text].
    #[arg(long, value_parser = formats(THREADS_FORMATS))]
    pub format: Option<Format>,
    /// Write to FILE (atomically, mode 0600) in the format its extension
    /// names (.json .svg .txt .folded .pb.gz .md .stap .csv .jsonl);
    /// repeat -o for several files from one run.
    #[arg(short, long, value_name = "FILE")]
    pub output: Vec<std::path::PathBuf>,
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
    /// Output format of stdout [default: text] and of -o files without a
    /// known extension [default: svg, the retention flame graph].
    #[arg(long, value_parser = formats(REFS_FORMATS))]
    pub format: Option<Format>,
    /// How many leak suspects to report.
    #[arg(long, default_value_t = 10, value_name = "K")]
    pub top: usize,
    /// Report the path to every object of at least SIZE bytes (own size; 10KiB, 1MB...).
    #[arg(long, value_name = "SIZE", value_parser = crate::units::parse_size)]
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
    /// Write to FILE (atomically, mode 0600) in the format its extension
    /// names (.json .svg .txt .folded .pb.gz .md .stap .csv .jsonl);
    /// repeat -o for several files from one run.
    #[arg(short, long, visible_alias = "flamegraph", value_name = "FILE")]
    pub output: Vec<std::path::PathBuf>,
    /// Also write the retention flame graph's folded stacks to FILE (as `-o FILE.folded`).
    #[arg(long, value_name = "FILE")]
    pub folded: Option<std::path::PathBuf>,
    /// Smallest retained size drawn as its own flame graph frame (default: 1/2000 of the reachable heap).
    #[arg(long, value_name = "SIZE", value_parser = crate::units::parse_size)]
    pub min_frame: Option<u64>,
    /// How the heap is copied.
    #[command(flatten)]
    pub capture: CaptureArgs,
    /// Test hook: write the strong object graph (nodes, edges, roots) as JSON to FILE.
    #[arg(long, value_name = "FILE", hide = true)]
    pub dump_graph: Option<std::path::PathBuf>,
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
    /// How long to trace (10s, 500ms, 2m; a plain number is seconds; Ctrl-C stops early and still reports).
    #[arg(short, long, default_value = "10s", value_name = "DURATION", value_parser = crate::units::parse_positive_duration)]
    pub time: std::time::Duration,
    /// Write to FILE (atomically, mode 0600) in the format its extension
    /// names (.json .svg .txt .folded .pb.gz .md .stap .csv .jsonl);
    /// repeat -o for several files from one run.
    #[arg(short, long, value_name = "FILE")]
    pub output: Vec<std::path::PathBuf>,
    /// Also write folded stacks to FILE (as `-o FILE.folded`).
    #[arg(long, value_name = "FILE")]
    pub folded: Option<std::path::PathBuf>,
    /// Output format of stdout and of -o files without a known extension [default: folded].
    #[arg(long, value_parser = formats(LEAKS_FORMATS))]
    pub format: Option<Format>,
    /// Only count allocations at least this old at the end of the window (1s, 500ms).
    #[arg(long, default_value = "0s", value_name = "DURATION", value_parser = crate::units::parse_duration)]
    pub min_age: std::time::Duration,
    /// Which allocators to trace.
    #[arg(long, value_enum, default_value = "all")]
    pub source: LeakSource,
    /// User stack copied with each allocation (8K, 4096; deeper stacks are truncated).
    #[arg(long, default_value = "8K", value_name = "SIZE", value_parser = parse_stack_bytes)]
    pub stack_bytes: u32,
    /// Sample allocations: on average one per SIZE allocated bytes (1MB,
    /// 512K), each weighted by the bytes it stands for (outstanding
    /// figures become unbiased estimates, printed with a 95% interval).
    /// Saves ljleak's work per allocation, not the uprobe's.
    // A negative number is a value to refuse with the size parser's
    // message, not an unknown option `-1`.
    #[arg(long, value_name = "SIZE", allow_negative_numbers = true, value_parser = crate::units::parse_positive_size)]
    pub sample_bytes: Option<u64>,
    /// Ring buffer pages per thread (a power of two).
    #[arg(long, default_value_t = 2048, value_name = "PAGES")]
    pub ring_pages: usize,
    /// Fold the nginx event-loop prefix (`_start` … `ngx_http_lua_run_thread`)
    /// of flame graph stacks into one frame [default: true for nginx and
    /// OpenResty, false otherwise]; `--trim=false` keeps whole stacks.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub trim: Option<bool>,
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
    /// Refuse to trace more than N perf events (threads x probes): each takes
    /// ~0.1 s to remove at the end (exit 22).
    #[arg(long, value_name = "N", default_value_t = crate::trace::session::DEFAULT_MAX_EVENTS)]
    pub max_events: usize,
    /// Exit 23 (after the report) when the kernel lost more than N events:
    /// the outstanding figures are then wrong.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub max_lost: u64,
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
    /// Output format of stdout and of -o files without a known extension [default: text].
    #[arg(long, value_parser = formats(PROBES_FORMATS))]
    pub format: Option<Format>,
    /// Write to FILE (atomically, mode 0600) in the format its extension
    /// names (.json .svg .txt .folded .pb.gz .md .stap .csv .jsonl);
    /// repeat -o for several files from one run.
    #[arg(short, long, value_name = "FILE")]
    pub output: Vec<std::path::PathBuf>,
}

/// `--stack-bytes`: a size the kernel accepts for a user stack sample
/// (`sample_stack_user` is a u32, a multiple of 8, at most 65528 bytes).
fn parse_stack_bytes(s: &str) -> Result<u32, String> {
    let b = crate::units::parse_size(s)?;
    if !(8..=65528).contains(&b) {
        return Err(format!(
            "`{s}` is out of range: the stack sample takes 8 bytes to 64K-8"
        ));
    }
    Ok(b as u32 & !7)
}

/// `ljleak mem`.
#[derive(Debug, Args)]
pub struct MemArgs {
    /// Target (an nginx master: the master, every worker, and a total).
    #[command(flatten)]
    pub target: TargetArgs,
    /// Output format of stdout and of -o files without a known extension [default: text].
    #[arg(long, value_parser = formats(MEM_FORMATS))]
    pub format: Option<Format>,
    /// Write to FILE (atomically, mode 0600) in the format its extension
    /// names (.json snapshot for diff, .svg breakdown chart, .txt);
    /// repeat -o for several files from one run.
    #[arg(short, long, value_name = "FILE")]
    pub output: Vec<std::path::PathBuf>,
    /// Skip the file descriptor and socket tables.
    #[arg(long)]
    pub no_fds: bool,
    /// Pausing.
    #[command(flatten)]
    pub capture: CaptureArgs,
    /// Take this many samples and say which component grows (1: one breakdown).
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub count: u32,
    /// Time between samples with --count (`10s`, `500ms`).
    #[arg(long, default_value = "10s", value_name = "INTERVAL", value_parser = crate::units::parse_interval)]
    pub interval: std::time::Duration,
}

fn parse_addr(s: &str) -> Result<u64, String> {
    let t = s.trim_start_matches("0x").trim_start_matches("0X");
    u64::from_str_radix(t, 16).map_err(|_| format!("`{s}` is not a hex address like 0x7f12345678"))
}

const REFS_HELP: &str = "\
Retention follows what survives the collector's next full cycle. Weak table
sides do not retain. A value in a weak-keyed table (`__mode = \"k\"`) under
an object key is retained by the holder of its key, not by the table: LuaJIT
clears the entry once the key dies (lj_gc.c gc_clearweak; LuaJIT 2.1 has no
ephemerons). An entry whose key is reachable only weakly is cleared by the
next cycle and retains nothing; one whose key is reachable only through
weak-keyed values (a value referring to its own key) is kept by the table for
good, as the VM does. Given an nginx master, every worker in turn.";

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
    /// Output format of stdout and of -o files without a known extension [default: text].
    #[arg(long, value_parser = formats(DIFF_FORMATS))]
    pub format: Option<Format>,
    /// Write to FILE in the format its extension names (.txt .json .md,
    /// .svg: a differential flame graph; the report then goes to stdout);
    /// repeat -o for several files.
    #[arg(short, long, value_name = "FILE")]
    pub output: Vec<std::path::PathBuf>,
    /// Print whole stacks in tables (default: the prefix all stacks share
    /// once, then each stack from where it differs).
    #[arg(long)]
    pub full: bool,
    /// Rows per list (cdata types, stacks).
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub top: usize,
    /// Compare snapshots of different LuaJIT builds anyway.
    #[arg(long)]
    pub allow_build_mismatch: bool,
    /// Refuse input files larger than this many bytes (exit 9).
    #[arg(long, value_name = "BYTES", default_value_t = crate::compare::snapshot::DEFAULT_MAX_INPUT)]
    pub max_input: u64,
}

/// `ljleak watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Target (an nginx master: every worker, plus a total).
    #[command(flatten)]
    pub target: TargetArgs,
    /// Time between samples (5s, 200ms, 1m).
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = crate::units::parse_interval)]
    pub interval: std::time::Duration,
    /// Samples to take [default: until Ctrl-C].
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Also take a full census per sample (pauses the target each time).
    #[arg(long)]
    pub census: bool,
    /// How each census captures the heap.
    #[command(flatten)]
    pub capture: CaptureArgs,
    /// nginx stub_status URL (http://127.0.0.1:PORT/status) to relate growth to requests.
    #[arg(long, value_name = "URL")]
    pub requests_url: Option<String>,
    /// Also follow the components of `ljleak mem` (GC heap, LuaJIT arena
    /// free, glibc in use / free chunks / mmapped, shm, stacks, files, fds):
    /// Rss and fds at every sample, the allocator walks (a brief pause) at
    /// most every --mem-every; the verdict names the component that grows
    /// and -o x.svg adds a stacked area. Off by default: it costs a pause.
    #[arg(long)]
    pub mem: bool,
    /// With --mem: least time between two allocator walks (each pauses the
    /// target briefly); samples in between reuse the last figures.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = crate::units::parse_interval, requires = "mem")]
    pub mem_every: std::time::Duration,
    /// Format of the live output on stdout (text, csv, jsonl) and of -o files
    /// without a known extension [default: text on stdout, svg for files].
    #[arg(long, value_parser = formats(WATCH_FORMATS))]
    pub format: Option<Format>,
    /// Write to FILE at the end in the format its extension names (.svg: a
    /// plot of every series and the fit the verdict used; .json, .jsonl,
    /// .csv, .txt); repeat -o for several files.
    #[arg(short, long, value_name = "FILE")]
    pub output: Vec<std::path::PathBuf>,
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
    /// A census snapshot (objs -o X.json), a leak snapshot (leaks -o X.json),
    /// a refs report (refs -o X.json: its suspects by path, weighted by
    /// retained bytes) or a folded-stack file.
    #[arg(value_name = "FILE")]
    pub input: std::path::PathBuf,
    /// Output format of stdout and of -o files without a known extension [default: pprof].
    #[arg(long, value_parser = formats(CONVERT_FORMATS))]
    pub format: Option<Format>,
    /// What a folded file's numbers count.
    #[arg(long, value_enum, default_value = "bytes")]
    pub unit: FoldedUnit,
    /// Write to FILE in the format its extension names (.pb.gz, .folded,
    /// .svg; required for pprof when stdout is a terminal); repeatable.
    #[arg(short, long, value_name = "FILE")]
    pub output: Vec<std::path::PathBuf>,
    /// Refuse input files larger than this many bytes (exit 9).
    #[arg(long, value_name = "BYTES", default_value_t = crate::compare::snapshot::DEFAULT_MAX_INPUT)]
    pub max_input: u64,
}

/// What `serve --discover` looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Discover {
    /// Every nginx master on the box that has the lua module loaded.
    Nginx,
}

/// `ljleak serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (loopback unless --allow-remote).
    #[arg(long, default_value = "127.0.0.1:9145", value_name = "ADDR:PORT")]
    pub listen: String,
    /// Listen on a non-loopback address (heap contents are sensitive).
    #[arg(long)]
    pub allow_remote: bool,
    /// A target: an nginx master (its current workers at each scrape) or a
    /// LuaJIT process (repeatable).
    #[arg(
        short = 'p',
        long = "pid",
        visible_short_alias = 'x',
        visible_alias = "master",
        value_name = "PID"
    )]
    pub pids: Vec<i32>,
    /// Also watch every nginx master with the lua module (rescanned at each scrape).
    #[arg(long, value_enum, value_name = "KIND")]
    pub discover: Option<Discover>,
    /// Take the object census (pauses each worker briefly, one at a time)
    /// this often in the background and export it [default: never].
    #[arg(long, value_name = "INTERVAL", value_parser = crate::units::parse_interval)]
    pub census_interval: Option<std::time::Duration>,
    /// pprof endpoints serve a cached result younger than this instead of
    /// pausing the target again.
    #[arg(long, default_value = "30s", value_name = "INTERVAL", value_parser = crate::units::parse_interval)]
    pub min_census_interval: std::time::Duration,
    /// Re-read the memory breakdown (`ljleak mem`: smaps, allocators, fds,
    /// sockets, shm zones; no pause) at most this often; scrapes in between
    /// export the last one.
    #[arg(long, default_value = "5s", value_name = "INTERVAL", value_parser = crate::units::parse_interval)]
    pub mem_interval: std::time::Duration,
    /// HTTP worker threads (requests beyond a small queue get 503).
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub http_threads: usize,
    /// Test hook: hold each target paused this many milliseconds.
    #[arg(long, value_name = "MS", hide = true)]
    pub debug_hold_pause_ms: Option<u64>,
}
