//! Tracing: uprobes created through `perf_event_open` with the `uprobe` PMU
//! (never tracefs), one event per thread and probe, samples with user
//! registers and a copy of the user stack, read from mmapped ring buffers.
//!
//! - [`pmu`]: the PMU's type and retprobe bit from sysfs;
//! - [`perf`]: the syscall and the ring buffer (the only unsafe code here);
//! - [`record`]: decoding records;
//! - [`site`]: where in a function to place a probe cheaply;
//! - [`probes`]: the probe set (libc allocation functions, LuaJIT's allocf);
//! - [`session`]: probes on every thread, draining the rings;
//! - [`ebpf`]: the default tracer: BPF programs on `uprobe_multi` session
//!   links, liveness and pairing in the kernel.
//!
//! Not here: what the samples mean for leaks (`crate::leaks`), unwinding
//! (`crate::unwind`).

pub mod ebpf;
pub mod perf;
pub mod pmu;
pub mod probes;
pub mod record;
pub mod session;
pub mod site;
pub mod usdt;

use std::path::PathBuf;

use crate::error::ExitCode;

/// Errors setting up tracing.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The kernel has no uprobe PMU.
    #[error("no uprobe PMU at {0} (kernel built without CONFIG_UPROBE_EVENTS?): ljleak leaks needs a kernel with uprobes")]
    NoUprobePmu(PathBuf),
    /// The target has no libc mapped.
    #[error("process {0} has no libc mapped (a static binary?): use --source luajit, or trace a dynamically linked process")]
    NoLibc(i32),
    /// g->allocf is not in a mapped file.
    #[error(
        "LuaJIT's allocator at {0:#x} is not in a mapped executable file; try --source malloc"
    )]
    AllocfNotMapped(u64),
    /// The target exited.
    #[error("process {0} exited")]
    Exited(i32),
    /// More perf events than the bound: setting them up and tearing them
    /// down would take minutes with the probes live.
    #[error("process {pid} has {threads} threads x {probes} probes = {} perf events, over --max-events {max} (removing each takes ~0.08 s with the probes live, ~{} s in all): trace fewer probes (--source luajit has 2) or raise --max-events", threads * probes, threads * probes * 81 / 1000)]
    TooManyEvents {
        /// The target.
        pid: i32,
        /// Its threads.
        threads: usize,
        /// Probes per thread.
        probes: usize,
        /// The bound.
        max: usize,
    },
    /// A syscall failed.
    #[error("{what}: {source}")]
    Open {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl TraceError {
    /// The exit code this error maps to.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            TraceError::NoUprobePmu(_) => ExitCode::NoTracing,
            TraceError::NoLibc(_) => ExitCode::NothingToTrace,
            TraceError::AllocfNotMapped(_) => ExitCode::NothingToTrace,
            TraceError::Exited(_) => ExitCode::TargetExited,
            TraceError::TooManyEvents { .. } => ExitCode::TooManyEvents,
            TraceError::Open { source, .. } => match source.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => ExitCode::Permission,
                Some(libc::ESRCH) => ExitCode::TargetExited,
                _ => ExitCode::Failure,
            },
        }
    }
}
