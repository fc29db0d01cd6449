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
    /// Walk without pausing the target, tolerating inconsistency.
    #[arg(long)]
    pub nonblocking: bool,
    /// Pause attempts to find the VM thread blocked in a syscall.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub attempts: u32,
}

/// `ljleak refs`.
#[derive(Debug, Args)]
pub struct RefsArgs {
    /// Target.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: CensusFormat,
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
    /// Walk without pausing the target, tolerating inconsistency.
    #[arg(long)]
    pub nonblocking: bool,
    /// Pause attempts to find the VM thread blocked in a syscall.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub attempts: u32,
    /// Test hook: write the strong object graph (nodes, edges, roots) as JSON to FILE.
    #[arg(long, value_name = "FILE", hide = true)]
    pub dump_graph: Option<std::path::PathBuf>,
}

fn parse_addr(s: &str) -> Result<u64, String> {
    let t = s.trim_start_matches("0x").trim_start_matches("0X");
    u64::from_str_radix(t, 16).map_err(|_| format!("`{s}` is not a hex address like 0x7f12345678"))
}
