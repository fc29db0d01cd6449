//! Pausing every thread of a target with `PTRACE_SEIZE` + `PTRACE_INTERRUPT`.
//!
//! Never SIGSTOP: a seized tracee resumes by itself when its tracer dies, so
//! an ljleak killed with SIGKILL while it holds the pause leaves the target
//! running. [`Pause`] detaches in `Drop` for every orderly exit (errors,
//! panics that unwind).

use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::ptrace;
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
    tids: Vec<i32>,
    started: Instant,
}

impl Pause {
    /// Seize and interrupt every thread of `pid`, waiting up to `timeout`
    /// for each to stop. Threads created while seizing are picked up by
    /// listing the tasks again until the list is stable.
    pub fn new(pid: i32, timeout: Duration) -> Result<Pause, TargetError> {
        let started = Instant::now();
        let mut pause = Pause {
            pid,
            tids: Vec::new(),
            started,
        };
        for _round in 0..16 {
            let tids = super::threads(pid)?;
            let fresh: Vec<i32> = tids
                .into_iter()
                .filter(|t| !pause.tids.contains(t))
                .collect();
            if fresh.is_empty() {
                break;
            }
            for tid in fresh {
                match ptrace::seize(Pid::from_raw(tid), ptrace::Options::empty()) {
                    Ok(()) => {}
                    // The thread exited between listing and seizing.
                    Err(Errno::ESRCH) if tid != pid => continue,
                    Err(e) => {
                        return Err(TargetError::from_io(
                            pid,
                            "PTRACE_SEIZE",
                            std::io::Error::from_raw_os_error(e as i32),
                        ))
                    }
                }
                pause.tids.push(tid);
                if let Err(e) = ptrace::interrupt(Pid::from_raw(tid)) {
                    if e != Errno::ESRCH {
                        return Err(TargetError::from_io(
                            pid,
                            "PTRACE_INTERRUPT",
                            std::io::Error::from_raw_os_error(e as i32),
                        ));
                    }
                }
            }
        }
        // Wait for each thread's stop; a thread in uninterruptible sleep gets
        // until the deadline.
        let deadline = Instant::now() + timeout;
        let mut stopped: Vec<i32> = Vec::with_capacity(pause.tids.len());
        let mut gone: Vec<i32> = Vec::new();
        while stopped.len() + gone.len() < pause.tids.len() {
            let mut progress = false;
            for &tid in &pause.tids {
                if stopped.contains(&tid) || gone.contains(&tid) {
                    continue;
                }
                match waitpid(
                    Pid::from_raw(tid),
                    Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG),
                ) {
                    Ok(WaitStatus::StillAlive) => {}
                    Ok(WaitStatus::Exited(..)) | Ok(WaitStatus::Signaled(..)) => {
                        gone.push(tid);
                        progress = true;
                    }
                    Ok(_) => {
                        stopped.push(tid);
                        progress = true;
                    }
                    Err(Errno::ECHILD) => {
                        gone.push(tid);
                        progress = true;
                    }
                    Err(e) => {
                        return Err(TargetError::from_io(
                            pid,
                            "waiting for the thread to stop",
                            std::io::Error::from_raw_os_error(e as i32),
                        ))
                    }
                }
            }
            if !progress {
                if Instant::now() > deadline {
                    return Err(TargetError::Io {
                        pid,
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
        if gone.contains(&pid) {
            return Err(TargetError::Exited(pid));
        }
        pause.tids.retain(|t| !gone.contains(t));
        Ok(pause)
    }

    /// Where thread `tid` (by default the main thread) stopped.
    pub fn quiescence(&self, tid: i32) -> Result<Quiescence, TargetError> {
        let regs = ptrace::getregs(Pid::from_raw(tid)).map_err(|e| {
            TargetError::from_io(
                self.pid,
                "PTRACE_GETREGS",
                std::io::Error::from_raw_os_error(e as i32),
            )
        })?;
        // orig_rax is the syscall number while stopped inside (or restarting)
        // a syscall, and -1 when the thread was stopped in user code.
        let nr = regs.orig_rax;
        Ok(if nr as i64 == -1 {
            Quiescence::UserCode
        } else if MM_SYSCALLS.contains(&nr) {
            Quiescence::MmSyscall(nr)
        } else {
            Quiescence::Syscall(nr)
        })
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

    fn detach_all(&mut self) {
        for tid in self.tids.drain(..) {
            // ESRCH: already gone. Nothing else can be done about a failure here.
            let _ = ptrace::detach(Pid::from_raw(tid), None);
        }
    }
}

impl Drop for Pause {
    fn drop(&mut self) {
        self.detach_all();
    }
}
