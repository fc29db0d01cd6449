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
    /// Trace allocations for a while and report what is still outstanding,
    /// by stack (C and Lua), as folded stacks, stap text, SVG or JSON.
    Leaks(LeaksArgs),
    /// List the USDT (SystemTap SDT) probes of every object mapped in a process.
    Probes(ProbesArgs),
}

/// Options shared by every command that attaches to a live process.
#[derive(Debug, Args, Clone)]
pub struct TargetArgs {
    /// Process ID of the nginx worker or LuaJIT process.
    #[arg(
        short = 'p',
        long = "pid",
        visible_short_alias = 'x',
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

/// Output format of gc and objs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CensusFormat {
    /// Text like stap++.
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
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: CensusFormat,
    /// Write the report to FILE instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
    /// Walk without pausing the target, tolerating inconsistency.
    #[arg(long)]
    pub nonblocking: bool,
    /// How many cdata C types to list in text output.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub top_cdata: usize,
    /// Pause attempts to find the VM thread blocked in a syscall.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub attempts: u32,
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
    /// Bytes of the thread object, its stack and open upvalues.
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
    /// Weight of each thread in folded output and flame graphs.
    #[arg(long, value_enum, default_value = "count")]
    pub weight: ThreadsWeight,
    /// Most Lua frames shown per thread.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_depth: usize,
    /// Walk without pausing the target, tolerating inconsistency.
    #[arg(long)]
    pub nonblocking: bool,
    /// Pause attempts to find the VM thread blocked in a syscall.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub attempts: u32,
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
    /// Summary and top sites.
    Json,
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
    /// Output format (default: from -o's extension, else folded).
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
}

/// `ljleak probes`.
#[derive(Debug, Args)]
pub struct ProbesArgs {
    /// Process ID.
    #[arg(short = 'p', long = "pid", visible_short_alias = 'x', value_name = "PID")]
    pub pid: i32,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: CensusFormat,
}

fn parse_addr(s: &str) -> Result<u64, String> {
    let t = s.trim_start_matches("0x").trim_start_matches("0X");
    u64::from_str_radix(t, 16).map_err(|_| format!("`{s}` is not a hex address like 0x7f12345678"))
}
