//! Exit codes and the error kinds that map to them.
//!
//! Every failure a user can cause (a wrong PID, missing privileges, a process
//! without LuaJIT) has its own exit code, documented in `ljleak --help` and the
//! README, so scripts can tell them apart.

/// Documented process exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// Success.
    Ok = 0,
    /// Any other failure (bad arguments, I/O errors, a target that changed too much).
    Failure = 1,
    /// Command-line usage error (clap's own code).
    Usage = 2,
    /// A CI gate tripped (`ljleak diff --fail-if`).
    GateTripped = 3,
    /// No such process.
    NoProcess = 4,
    /// Permission denied (ptrace, /proc/PID/mem, perf_event_open).
    Permission = 5,
    /// The process has no LuaJIT VM that ljleak could find.
    NoVm = 6,
    /// A LuaJIT VM was found but its memory layout is not one ljleak supports.
    UnsupportedLayout = 7,
    /// The target exited while ljleak was working on it.
    TargetExited = 8,
    /// An input file is not usable: malformed snapshot, unsupported schema
    /// version, or two snapshots that cannot be compared (`ljleak diff`).
    BadInput = 9,
    /// An output path ljleak will not write: a symbolic link (dangling or
    /// looping too), a directory, a device other than a character device, a
    /// socket, or a FIFO without a reader.
    OutputRefused = 10,
    /// The target is already traced by another process (strace, gdb, a
    /// second ljleak): the message names it.
    AlreadyTraced = 11,
    /// The target is a zombie or a kernel thread: it has no memory to read.
    NotUserProcess = 12,
    /// A core file names an executable or library that is not on this
    /// machine (by path and build-id), and the VM could not be found
    /// without it.
    MissingFile = 13,
    /// Tracing is unavailable (no uprobe PMU in the kernel).
    NoTracing = 20,
    /// Nothing to trace: no libc mapped (static binary) and no LuaJIT allocator.
    NothingToTrace = 21,
    /// Too many perf events (threads × probes) for the per-thread tracer:
    /// see `--max-events`.
    TooManyEvents = 22,
    /// The kernel lost more events than `--max-lost` allows: the report
    /// would be wrong.
    LostEvents = 23,
    /// `serve` cannot listen on the address (in use, not local, not allowed).
    ListenFailed = 30,
    /// `serve --discover` found no target (no nginx master with the lua module).
    NoTargets = 31,
}

/// Text for `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  other failure (I/O error, inconsistent heap)
  2  usage error
  3  a --fail-if gate tripped (diff)
  4  no such process
  5  permission denied (run as root or grant CAP_SYS_PTRACE / CAP_PERFMON)
  6  no LuaJIT VM found in the process
  7  LuaJIT VM found but its layout is not supported
  8  the target exited during the run
  9  bad input file (malformed snapshot or core file, newer schema, kinds or LuaJIT builds differ,
     over the size limit, totals overflow)
  10 output path refused (a symlink, directory, block device, socket, FIFO without reader)
  11 the target is already traced by another process (named in the message)
  12 the target is a zombie or a kernel thread
  13 a core file needs an executable or library that is missing here (see --sysroot)
  20 uprobe tracing unavailable (kernel without the uprobe PMU)
  21 nothing to trace (no libc mapped, e.g. a static binary; see --source)
  22 too many perf events (threads x probes over --max-events)
  23 too many lost events (over --max-lost)
  30 serve: cannot listen on the address (in use, or not loopback without --allow-remote)
  31 serve: --discover found no nginx master with the lua module";

/// An error that carries its own exit code. Commands wrap their failures in
/// this (through `anyhow`) so that `main` can pick the right code from the
/// error chain.
#[derive(Debug, thiserror::Error)]
#[error("{msg}")]
pub struct Classified {
    /// The code `main` exits with.
    pub code: ExitCode,
    /// One-line message saying what went wrong and what to do.
    pub msg: String,
}

impl Classified {
    /// Build an error with an exit code and a one-line message.
    pub fn new(code: ExitCode, msg: impl Into<String>) -> Self {
        Classified {
            code,
            msg: msg.into(),
        }
    }
}

/// Find the exit code for an error chain: the first [`Classified`] in it, or
/// an errno-based guess for raw I/O errors, or [`ExitCode::Failure`].
pub fn exit_code_of(err: &anyhow::Error) -> ExitCode {
    for cause in err.chain() {
        if let Some(c) = cause.downcast_ref::<Classified>() {
            return c.code;
        }
        if let Some(e) = cause.downcast_ref::<crate::target::TargetError>() {
            return e.exit_code();
        }
        if let Some(e) = cause.downcast_ref::<crate::trace::TraceError>() {
            return e.exit_code();
        }
        if let Some(e) = cause.downcast_ref::<crate::safety::OutputError>() {
            return e.exit_code();
        }
    }
    ExitCode::Failure
}
