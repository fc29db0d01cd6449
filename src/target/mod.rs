//! Access to a target process: its mappings, its memory, its binaries, and
//! pausing it safely.
//!
//! Vocabulary (as in samply): an *AVMA* is an address in the target process;
//! an *SVMA* is an address as stated in an ELF file; a *file offset* is a
//! position in the file (what a uprobe takes).

pub mod core;
pub mod core_write;
pub mod elf;
pub mod fork;
pub mod forker;
pub mod image;
pub mod inject;
pub mod maps;
pub mod mem;
pub mod paged;
pub mod pagemap;
pub mod pause;
pub mod source;

pub use image::HeapImage;
pub use maps::{Mapping, Maps};
pub use mem::{for_each_elem, MemError, Memory, ProcessMemory, ReadExt, Window};
pub use pause::{Pause, Quiescence};
pub use source::HeapSource;

use crate::error::ExitCode;

/// Errors about the target process as a whole.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The PID does not exist.
    #[error("no such process: {0} (check the PID with `pgrep nginx` or `ps`)")]
    NoProcess(i32),
    /// We may not look at or trace it.
    #[error("permission denied on process {pid} ({what}): run as root or grant CAP_SYS_PTRACE")]
    Permission {
        /// The target.
        pid: i32,
        /// What was refused.
        what: String,
    },
    /// Another process already traces the target (ptrace allows one tracer).
    #[error("process {pid} is already traced by process {tracer} ({comm}): stop that tracer (strace, gdb, another ljleak) and retry")]
    Traced {
        /// The target.
        pid: i32,
        /// TracerPid from /proc/PID/status.
        tracer: i32,
        /// The tracer's command name.
        comm: String,
    },
    /// A zombie or a kernel thread: nothing to read or trace.
    #[error("process {pid} is {what}: it has no user memory to inspect; pick a live user process")]
    NotUserProcess {
        /// The target.
        pid: i32,
        /// "a zombie (exited, not yet reaped by its parent)" or "a kernel thread".
        what: &'static str,
    },
    /// The target went away while we worked.
    #[error("process {0} exited during the run")]
    Exited(i32),
    /// Anything else from the OS.
    #[error("{what} for process {pid}: {source}")]
    Io {
        /// The target.
        pid: i32,
        /// What failed.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl TargetError {
    /// The exit code this error maps to.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            TargetError::NoProcess(_) => ExitCode::NoProcess,
            TargetError::Permission { .. } => ExitCode::Permission,
            TargetError::Traced { .. } => ExitCode::AlreadyTraced,
            TargetError::NotUserProcess { .. } => ExitCode::NotUserProcess,
            TargetError::Exited(_) => ExitCode::TargetExited,
            TargetError::Io { .. } => ExitCode::Failure,
        }
    }

    /// Classify an OS error from a call on `pid`.
    pub fn from_io(pid: i32, what: &str, e: std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ESRCH) => {
                // A killed target stays a zombie until its parent reaps it.
                if process_alive(pid) {
                    TargetError::Io {
                        pid,
                        what: what.into(),
                        source: e,
                    }
                } else {
                    TargetError::Exited(pid)
                }
            }
            Some(libc::EPERM) | Some(libc::EACCES) => TargetError::Permission {
                pid,
                what: what.into(),
            },
            _ if e.kind() == std::io::ErrorKind::NotFound && !process_exists(pid) => {
                TargetError::NoProcess(pid)
            }
            _ => TargetError::Io {
                pid,
                what: what.into(),
                source: e,
            },
        }
    }
}

/// True when /proc has the process (it may be a zombie).
pub fn process_exists(pid: i32) -> bool {
    pid > 0 && std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// True when the process exists and is neither a zombie nor dead.
pub fn process_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    match stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
    {
        Some("Z") | Some("X") | Some("x") | None => false,
        Some(_) => true,
    }
}

/// Check that `pid` names a live user process, with the right error if not
/// (a zombie or a kernel thread has no memory to read).
pub fn check_process(pid: i32) -> Result<(), TargetError> {
    if pid <= 0 || !process_exists(pid) {
        return Err(TargetError::NoProcess(pid));
    }
    if let Some(what) = not_user_process(pid) {
        return Err(TargetError::NotUserProcess { pid, what });
    }
    crate::safety::access::check_target_access(pid)
}

/// Why `pid` is not a user process with memory: a zombie (state Z/X in
/// /proc/PID/stat) or a kernel thread (PF_KTHREAD, 0x00200000, in the
/// flags field, include/linux/sched.h).
pub fn not_user_process(pid: i32) -> Option<&'static str> {
    const PF_KTHREAD: u64 = 0x0020_0000;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // Fields after the name: state(3) ppid pgrp session tty_nr tpgid flags(9).
    if matches!(rest.first(), Some(&"Z") | Some(&"X") | Some(&"x")) {
        return Some("a zombie (exited, not yet reaped by its parent)");
    }
    let flags: u64 = rest.get(6)?.parse().ok()?;
    (flags & PF_KTHREAD != 0).then_some("a kernel thread")
}

/// The tracer of `pid` (TracerPid in /proc/PID/status) and its command.
pub fn tracer_of(pid: i32) -> Option<(i32, String)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let tracer: i32 = status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))?
        .trim()
        .parse()
        .ok()?;
    if tracer <= 0 {
        return None;
    }
    let comm = std::fs::read_to_string(format!("/proc/{tracer}/comm"))
        .map(|c| crate::safety::escape::escape_field(c.trim_end()).into_owned())
        .unwrap_or_else(|_| "?".into());
    Some((tracer, comm))
}

/// The executable path of the process as the process sees it.
pub fn exe_path(pid: i32) -> Result<String, TargetError> {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|e| match not_user_process(pid) {
            Some(what) => TargetError::NotUserProcess { pid, what },
            None => TargetError::from_io(pid, "reading /proc/PID/exe", e),
        })
}

/// Thread IDs of the process.
pub fn threads(pid: i32) -> Result<Vec<i32>, TargetError> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(|e| TargetError::from_io(pid, "listing threads", e))?;
    let mut tids: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    Ok(tids)
}
