//! Pausing every thread of a target with `PTRACE_SEIZE` + `PTRACE_INTERRUPT`.
//!
//! Never SIGSTOP: a seized tracee resumes by itself when its tracer dies, so
//! an ljleak killed with SIGKILL while it holds the pause leaves the target
//! running. [`Pause`] detaches in `Drop` for every orderly exit (errors,
//! panics that unwind).

use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::ptrace;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::TargetError;

/// Syscalls during which LuaJIT's heap may be mid-change: its allocator maps,
/// unmaps and resizes memory (lj_alloc.c), and the JIT flips code pages.
const MM_SYSCALLS: &[u64] = &[
    9,  // mmap
    10, // mprotect
    11, // munmap
    12, // brk
    25, // mremap
    28, // madvise
];

/// Where the VM thread was when it stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quiescence {
    /// Blocked in a syscall that does not manage memory: the heap is consistent.
    Syscall(u64),
    /// Inside a memory-management syscall (possibly mid-GC).
    MmSyscall(u64),
    /// Running user code.
    UserCode,
}

impl Quiescence {
    /// True when the heap can be walked as consistent.
    pub fn is_quiescent(self) -> bool {
        matches!(self, Quiescence::Syscall(_))
    }

    /// Short description for reports.
    pub fn describe(self) -> String {
        match self {
            Quiescence::Syscall(n) => format!("blocked in syscall {} ({n})", syscall_name(n)),
            Quiescence::MmSyscall(n) => format!("in memory syscall {} ({n})", syscall_name(n)),
            Quiescence::UserCode => "running user code".into(),
        }
    }
}

/// A few syscall names for messages.
pub fn syscall_name(n: u64) -> &'static str {
    match n {
        0 => "read",
        1 => "write",
        7 => "poll",
        9 => "mmap",
        10 => "mprotect",
        11 => "munmap",
        12 => "brk",
        23 => "select",
        25 => "mremap",
        28 => "madvise",
        35 => "nanosleep",
        61 => "wait4",
        202 => "futex",
        230 => "clock_nanosleep",
        232 => "epoll_wait",
        270 => "pselect6",
        271 => "ppoll",
        281 => "epoll_pwait",
        441 => "epoll_pwait2",
        _ => "syscall",
    }
}

/// All threads of a process held in ptrace stops. Detaches on drop.
#[derive(Debug)]
pub struct Pause {
    pid: i32,
    /// Seized threads, stopped or not yet.
    tids: Vec<i32>,
    /// Signals that stopped a thread before our interrupt did (a
    /// signal-delivery stop): handed back at detach so none is lost.
    pending: Vec<(i32, Signal)>,
    started: Instant,
}

fn os(pid: i32, what: &str, e: Errno) -> TargetError {
    TargetError::from_io(pid, what, std::io::Error::from_raw_os_error(e as i32))
}

fn task_alive(pid: i32, tid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists()
}

/// Outcome of one non-blocking wait on a seized thread.
enum Waited {
    Running,
    Stopped(Option<Signal>),
    Gone,
}

fn wait_once(tid: i32) -> Result<Waited, Errno> {
    match waitpid(
        Pid::from_raw(tid),
        Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG),
    ) {
        Ok(WaitStatus::StillAlive) => Ok(Waited::Running),
        Ok(WaitStatus::Exited(..)) | Ok(WaitStatus::Signaled(..)) | Err(Errno::ECHILD) => {
            Ok(Waited::Gone)
        }
        // Stopped by a signal before the interrupt: the signal must be
        // delivered when we let go.
        Ok(WaitStatus::Stopped(_, sig)) => Ok(Waited::Stopped(Some(sig))),
        // PTRACE_EVENT_STOP (our interrupt, or a group stop).
        Ok(_) => Ok(Waited::Stopped(None)),
        Err(e) => Err(e),
    }
}

impl Pause {
    /// Seize and interrupt every thread of `pid`, waiting up to `timeout`
    /// for each to stop. Threads created meanwhile are picked up by listing
    /// the tasks again until the list is stable, also once everything has
    /// stopped (a thread that was still running may have spawned another).
    pub fn new(pid: i32, timeout: Duration) -> Result<Pause, TargetError> {
        let mut pause = Pause {
            pid,
            tids: Vec::new(),
            pending: Vec::new(),
            started: Instant::now(),
        };
        let deadline = Instant::now() + timeout;
        let mut stopped: Vec<i32> = Vec::new();
        for _round in 0..16 {
            let fresh: Vec<i32> = super::threads(pid)?
                .into_iter()
                .filter(|t| !pause.tids.contains(t))
                .collect();
            if fresh.is_empty() {
                pause.tids.retain(|t| stopped.contains(t));
                if !pause.tids.contains(&pid) {
                    return Err(TargetError::Exited(pid));
                }
                return Ok(pause);
            }
            for tid in fresh {
                match ptrace::seize(Pid::from_raw(tid), ptrace::Options::empty()) {
                    Ok(()) => {}
                    // The thread exited between listing and seizing.
                    Err(Errno::ESRCH) if tid != pid => continue,
                    // One tracer per task: name the one in the way rather
                    // than blame privileges.
                    Err(Errno::EPERM) if super::tracer_of(tid).is_some() => {
                        let (tracer, comm) = super::tracer_of(tid).unwrap_or_default();
                        return Err(TargetError::Traced { pid, tracer, comm });
                    }
                    Err(e) => return Err(os(pid, "PTRACE_SEIZE", e)),
                }
                pause.tids.push(tid);
                match ptrace::interrupt(Pid::from_raw(tid)) {
                    Ok(()) | Err(Errno::ESRCH) => {}
                    Err(e) => return Err(os(pid, "PTRACE_INTERRUPT", e)),
                }
            }
            pause.wait_all(&mut stopped, deadline)?;
        }
        Err(TargetError::Io {
            pid,
            what: "pausing".into(),
            source: std::io::Error::other(
                "threads keep appearing faster than they can be paused; try again",
            ),
        })
    }

    /// Wait until every seized thread has stopped or gone, until `deadline`
    /// (a thread in uninterruptible sleep may take a while).
    fn wait_all(&mut self, stopped: &mut Vec<i32>, deadline: Instant) -> Result<(), TargetError> {
        loop {
            let mut waiting = false;
            let mut gone = Vec::new();
            for &tid in &self.tids {
                if stopped.contains(&tid) {
                    continue;
                }
                match wait_once(tid).map_err(|e| os(self.pid, "waiting for a thread to stop", e))? {
                    Waited::Running => waiting = true,
                    Waited::Stopped(sig) => {
                        stopped.push(tid);
                        if let Some(sig) = sig {
                            self.pending.push((tid, sig));
                        }
                    }
                    Waited::Gone => gone.push(tid),
                }
            }
            self.tids.retain(|t| !gone.contains(t));
            if !waiting {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(TargetError::Io {
                    pid: self.pid,
                    what: "pausing".into(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "a thread did not stop in time (uninterruptible sleep?); try again",
                    ),
                });
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Where thread `tid` (by default the main thread) stopped.
    pub fn quiescence(&self, tid: i32) -> Result<Quiescence, TargetError> {
        let regs =
            ptrace::getregs(Pid::from_raw(tid)).map_err(|e| os(self.pid, "PTRACE_GETREGS", e))?;
        // orig_rax is the syscall number while stopped inside (or restarting)
        // a syscall, and negative when the thread was stopped in user code
        // (-1; older kernels stored ~vector on interrupt entry).
        let nr = regs.orig_rax;
        Ok(if (nr as i64) < 0 {
            Quiescence::UserCode
        } else if MM_SYSCALLS.contains(&nr) {
            Quiescence::MmSyscall(nr)
        } else {
            Quiescence::Syscall(nr)
        })
    }

    /// The stack pointer of every paused thread (threads whose registers
    /// cannot be read are left out).
    pub fn stack_pointers(&self) -> Vec<u64> {
        self.tids
            .iter()
            .filter_map(|&t| ptrace::getregs(Pid::from_raw(t)).ok())
            .map(|r| r.rsp)
            .collect()
    }

    /// A signal that stopped `tid` while we ran something in it: delivered
    /// when we let go, like those met while pausing.
    pub fn add_pending(&mut self, tid: i32, sig: Signal) {
        self.pending.push((tid, sig));
    }

    /// The process.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Paused threads.
    pub fn tids(&self) -> &[i32] {
        &self.tids
    }

    /// Time since the pause began.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Resume every thread now; returns how long the target was held.
    pub fn resume(mut self) -> Duration {
        self.detach_all();
        self.started.elapsed()
    }

    /// Detach every seized thread, handing back any signal that stopped it.
    /// PTRACE_DETACH needs a stopped tracee: a thread seized but not yet
    /// stopped (an error path, a timeout) is interrupted again and waited
    /// for, briefly, so that it is never left traced with a stop pending.
    fn detach_all(&mut self) {
        for tid in std::mem::take(&mut self.tids) {
            let sig = self.pending.iter().find(|(t, _)| *t == tid).map(|p| p.1);
            match ptrace::detach(Pid::from_raw(tid), sig) {
                Ok(()) => {}
                Err(Errno::ESRCH) if task_alive(self.pid, tid) => {
                    let _ = ptrace::interrupt(Pid::from_raw(tid));
                    let until = Instant::now() + Duration::from_secs(1);
                    while Instant::now() < until {
                        match wait_once(tid) {
                            Ok(Waited::Running) => std::thread::sleep(Duration::from_micros(100)),
                            Ok(Waited::Stopped(late)) => {
                                let _ = ptrace::detach(Pid::from_raw(tid), late.or(sig));
                                break;
                            }
                            _ => break,
                        }
                    }
                }
                // Gone, or nothing more can be done; the kernel detaches
                // every tracee when this process exits in any case.
                Err(_) => {}
            }
        }
        self.pending.clear();
    }
}

impl Drop for Pause {
    fn drop(&mut self) {
        self.detach_all();
    }
}
