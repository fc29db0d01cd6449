//! A copy-on-write snapshot of a paused target: the target forks, by one
//! register-only injected `clone`, and ljleak reads the child at leisure
//! while the target runs on. The pause lasts as long as the kernel takes to
//! copy page tables, not pages (Redis takes its snapshots the same way).
//!
//! Who is who: the target's thread T clones C (exit signal 0, so the worker
//! gets no SIGCHLD), the snapshot. C is auto-attached from birth
//! (PTRACE_O_TRACECLONE) and never runs a user instruction:
//! - C gets PTRACE_O_EXITKILL right after birth: it dies with ljleak.
//!   Before that, if ljleak dies, C runs the code after the `syscall` in
//!   `_exit`, which can only exit (checked by emulation, see `inject`).
//! - The target itself never has EXITKILL: if ljleak dies, it is detached
//!   and runs on. Its registers are restored after each injected call; a
//!   SIGKILL of ljleak during one (microseconds) leaves it running `_exit`'s
//!   tail, i.e. the worker exits.
//! - When ljleak is done, C is killed and reaped by one more injected
//!   `wait4` in T (one thread held for microseconds), so no zombie stays
//!   behind. A C killed with ljleak stays a zombie of the worker, invisible
//!   to it (no SIGCHLD, and `waitpid` without `__WALL` does not see it),
//!   until the next fork snapshot of that target reaps it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::ptrace::{self, Options};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::inject::{self, nr, InjectError, Site, WALL};
use super::pause::Pause;

/// Why a fork snapshot was not taken. `Refused` falls back to a copy.
#[derive(Debug, thiserror::Error)]
pub enum ForkError {
    /// The target or the system will not fork here; a copy can still be made.
    #[error("{0}")]
    Refused(String),
    /// Not enough memory for the worst case of copy-on-write.
    #[error("{0}")]
    NoRoom(String),
    /// Something went wrong mid-way (the target was left as it was).
    #[error("fork snapshot failed: {0}")]
    Failed(#[from] InjectError),
}

/// Limits on the snapshot's life.
#[derive(Debug, Clone, Copy)]
pub struct ForkLimits {
    /// Kill the snapshot after this long.
    pub max_life: Duration,
    /// Kill it when the target has copied this many bytes on write.
    pub max_cow: u64,
}

/// What is known before pausing: the syscall site and the memory room.
#[derive(Debug, Clone, Copy)]
pub struct Preflight {
    site: Site,
    /// Worst case of copy-on-write: the target's private anonymous memory.
    pub worst_cow: u64,
    /// Room for it (MemAvailable and cgroup limits).
    pub room: u64,
}

/// Check, before any pause, that `pid` may be forked: no seccomp filter
/// (a filter may kill the process on `clone`), a safe `syscall` site in its
/// libc, and room for the worst case of copy-on-write.
pub fn preflight(pid: i32, maps: &super::Maps) -> Result<Preflight, ForkError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    if field(&status, "Seccomp:").is_some_and(|v| v != 0) {
        return Err(ForkError::Refused(
            "the target runs under a seccomp filter (a filtered clone could kill it)".into(),
        ));
    }
    let site = inject::find_site(pid, maps).map_err(|e| ForkError::Refused(e.to_string()))?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let worst_cow = field(&rollup, "Anonymous:").unwrap_or(0) * 1024;
    let room = memory_room(pid);
    if worst_cow > room {
        return Err(ForkError::NoRoom(format!(
            "a fork snapshot could need up to {} MB (the target's private anonymous memory: \
             every page it writes while the snapshot lives is copied), but only {} MB are \
             free (MemAvailable, cgroup memory limit); use --snapshot copy or free memory",
            worst_cow >> 20,
            room >> 20
        )));
    }
    Ok(Preflight {
        site,
        worst_cow,
        room,
    })
}

/// `Name:   N kB` style fields of /proc files.
fn field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Memory that can still be allocated for `pid`: MemAvailable, and the
/// room left under every memory limit of its cgroup and their parents
/// (v2 memory.max - memory.current, v1 limit_in_bytes - usage_in_bytes).
pub fn memory_room(pid: i32) -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mut room = field(&meminfo, "MemAvailable:").map_or(u64::MAX, |k| k * 1024);
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    for line in cg.lines() {
        let mut it = line.splitn(3, ':');
        let (Some(_), Some(ctrl), Some(path)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let (base, max, cur) = match ctrl {
            "" => ("/sys/fs/cgroup", "memory.max", "memory.current"),
            c if c.split(',').any(|x| x == "memory") => (
                "/sys/fs/cgroup/memory",
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
            ),
            _ => continue,
        };
        let mut dir = std::path::PathBuf::from(format!("{base}{path}"));
        loop {
            let read = |f: &str| {
                std::fs::read_to_string(dir.join(f))
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
            };
            if let (Some(m), Some(c)) = (read(max), read(cur)) {
                room = room.min(m.saturating_sub(c));
            }
            if dir.as_os_str().len() <= base.len() || !dir.pop() {
                break;
            }
        }
    }
    room
}

/// The snapshot process G: stopped, traced by us with EXITKILL, killed on
/// drop (or by the watchdog when it lives too long or costs too much).
pub struct ForkSnapshot {
    pid: i32,
    target: i32,
    tid: i32,
    site: Site,
    stop: Arc<AtomicBool>,
    cow: Arc<AtomicU64>,
    killed: Arc<Mutex<Option<String>>>,
    watchdog: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for ForkSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ForkSnapshot({})", self.pid)
    }
}

/// Bytes the snapshot now holds alone: the pages the target has written
/// since the fork (it got the copies; G kept the originals).
pub fn private_bytes(pid: i32) -> Option<u64> {
    let r = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    Some((field(&r, "Private_Dirty:")? + field(&r, "Private_Clean:").unwrap_or(0)) * 1024)
}

impl ForkSnapshot {
    /// The snapshot's PID (read its memory through it).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Bytes the target copied on write so far (as last measured).
    pub fn cow_bytes(&self) -> u64 {
        let now = private_bytes(self.pid).unwrap_or(0);
        self.cow.fetch_max(now, Ordering::Relaxed).max(now)
    }

    /// Why the watchdog killed the snapshot, if it did.
    pub fn killed(&self) -> Option<String> {
        self.killed.lock().ok()?.clone()
    }

    fn start_watchdog(&mut self, lim: ForkLimits) {
        let (pid, stop, cow, killed) = (
            self.pid,
            self.stop.clone(),
            self.cow.clone(),
            self.killed.clone(),
        );
        let born = Instant::now();
        self.watchdog = Some(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let why = if born.elapsed() > lim.max_life {
                    Some(format!(
                        "the snapshot lived longer than {} s",
                        lim.max_life.as_secs()
                    ))
                } else {
                    let c = private_bytes(pid).unwrap_or(0);
                    cow.fetch_max(c, Ordering::Relaxed);
                    (c > lim.max_cow).then(|| {
                        format!(
                            "the target copied {} MB on write, more than the {} MB allowed",
                            c >> 20,
                            lim.max_cow >> 20
                        )
                    })
                };
                if let Some(w) = why {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    if let Ok(mut k) = killed.lock() {
                        *k = Some(w);
                    }
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }));
    }
}

impl Drop for ForkSnapshot {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        reap(self.pid, Duration::from_secs(2));
        if let Some(w) = self.watchdog.take() {
            let _ = w.join();
        }
        if let Err(e) = reap_in_target(self.target, self.tid, self.site, &[self.pid]) {
            log::warn!(
                "could not reap the snapshot {} in process {}: {e} (a zombie stays until the next fork snapshot)",
                self.pid,
                self.target
            );
        }
    }
}

/// One thread of the target held alone, for an injected call; detached
/// on drop, with any signal that stopped it handed back.
struct OneThread {
    tid: i32,
    sigs: Vec<Signal>,
}

impl OneThread {
    fn seize(tid: i32) -> Result<OneThread, InjectError> {
        let p = Pid::from_raw(tid);
        let pt = |what: &'static str| move |errno| InjectError::Ptrace { what, errno };
        ptrace::seize(p, Options::PTRACE_O_TRACESYSGOOD).map_err(pt("PTRACE_SEIZE"))?;
        let mut t = OneThread {
            tid,
            sigs: Vec::new(),
        };
        ptrace::interrupt(p).map_err(pt("PTRACE_INTERRUPT"))?;
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match waitpid(p, Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                Ok(WaitStatus::Stopped(_, sig)) => {
                    t.sigs.push(sig);
                    break;
                }
                Ok(WaitStatus::PtraceEvent(..)) | Ok(WaitStatus::PtraceSyscall(_)) => break,
                Ok(other) => {
                    return Err(InjectError::Lost {
                        tid,
                        what: format!("{other:?}"),
                    })
                }
                Err(e) => return Err(pt("waitpid")(e)),
            }
            if Instant::now() > deadline {
                return Err(InjectError::Lost {
                    tid,
                    what: "did not stop in time".into(),
                });
            }
            std::thread::sleep(Duration::from_micros(20));
        }
        Ok(t)
    }
}

impl Drop for OneThread {
    fn drop(&mut self) {
        let _ = ptrace::detach(Pid::from_raw(self.tid), self.sigs.first().copied());
    }
}

/// Reap `children` (dead, exit signal 0) of the target by an injected
/// `wait4(child, NULL, __WALL|WNOHANG, NULL)` in its thread `tid`, held
/// alone for the purpose.
fn reap_in_target(target: i32, tid: i32, site: Site, children: &[i32]) -> Result<(), InjectError> {
    if !super::process_alive(target) {
        return Ok(());
    }
    let mut t = OneThread::seize(tid)?;
    let saved = ptrace::getregs(Pid::from_raw(tid)).map_err(|errno| InjectError::Ptrace {
        what: "PTRACE_GETREGS",
        errno,
    })?;
    let restore = inject::restartable(&saved);
    for &c in children {
        let (_, sigs) = wait4_in(tid, site, c, &restore)?;
        t.sigs.extend(sigs);
    }
    Ok(())
}

fn wait4_in(
    tid: i32,
    site: Site,
    child: i32,
    restore: &nix::libc::user_regs_struct,
) -> Result<(inject::Call, Vec<Signal>), InjectError> {
    inject::call(
        tid,
        site,
        nr::WAIT4,
        [
            Some(child as u64),
            Some(0),
            Some(WALL | libc::WNOHANG as u64),
            Some(0),
            Some(0),
            Some(0),
        ],
        restore,
        CALL_TIMEOUT,
        &mut |_| Ok(()),
    )
}

/// Zombie children of `pid` with exit signal 0: snapshots left by an
/// ljleak that was killed (nothing else makes such children of a worker
/// that does not create threads by hand).
pub fn stale_snapshots(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        // Fields after the name: state(3) ppid(4) ... exit_signal(38).
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.first() == Some(&"Z")
            && f.get(1).and_then(|s| s.parse::<i32>().ok()) == Some(pid)
            && f.get(35) == Some(&"0")
        {
            out.push(p);
        }
    }
    out
}

/// Collect a traced task we killed (bounded wait).
fn reap(pid: i32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match waitpid(
            Pid::from_raw(pid),
            Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG),
        ) {
            Ok(WaitStatus::Exited(..)) | Ok(WaitStatus::Signaled(..)) | Err(_) => return,
            // Stops reported before the kill took effect.
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_micros(50)),
            Ok(_) => {}
        }
    }
}

const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Make the paused target fork a snapshot. `pause` holds every thread;
/// `tid` is the thread used (stopped, ideally in a system call); `stale`
/// are snapshots of earlier runs to reap first (see [`stale_snapshots`]).
pub fn fork_snapshot(
    pause: &mut Pause,
    tid: i32,
    pre: &Preflight,
    lim: ForkLimits,
    stale: &[i32],
) -> Result<ForkSnapshot, ForkError> {
    let t = Pid::from_raw(tid);
    let site = pre.site;
    let pt = |what: &'static str| move |errno| InjectError::Ptrace { what, errno };
    ptrace::setoptions(
        t,
        Options::PTRACE_O_TRACECLONE | Options::PTRACE_O_TRACESYSGOOD,
    )
    .map_err(pt("PTRACE_SETOPTIONS"))?;
    let saved = ptrace::getregs(t).map_err(pt("PTRACE_GETREGS"))?;
    let restore = inject::restartable(&saved);
    for &z in stale {
        match wait4_in(tid, site, z, &restore) {
            Ok((r, sigs)) => {
                sigs.into_iter().for_each(|s| pause.add_pending(tid, s));
                log::info!("reaped snapshot {z} left by an earlier run ({})", r.ret);
            }
            Err(e) => log::warn!("reaping snapshot {z} left by an earlier run: {e}"),
        }
    }
    // The child: dies with us, never runs (it is only read).
    let born = |c: i32| -> Result<(), InjectError> {
        inject::wait_born(c, Instant::now() + CALL_TIMEOUT)?;
        ptrace::setoptions(Pid::from_raw(c), Options::PTRACE_O_EXITKILL)
            .map_err(pt("PTRACE_SETOPTIONS (child)"))
    };
    // clone(flags = 0: no CLONE_VM, exit signal 0).
    let (r, sigs) = inject::call(
        tid,
        site,
        nr::CLONE,
        [Some(0), Some(0), None, Some(0), Some(0), Some(0)],
        &restore,
        CALL_TIMEOUT,
        &mut |c| born(c),
    )?;
    sigs.into_iter().for_each(|s| pause.add_pending(tid, s));
    let c = match (r.ret, r.child) {
        (ret, _) if ret < 0 => {
            return Err(ForkError::Refused(format!(
                "the target's clone failed: {} (a pids cgroup limit?)",
                nix::errno::Errno::from_raw(-ret as i32)
            )))
        }
        (_, Some(c)) => c,
        (ret, None) => {
            return Err(ForkError::Failed(InjectError::Lost {
                tid,
                what: format!("clone returned {ret} without a clone event"),
            }))
        }
    };
    let mut snap = ForkSnapshot {
        pid: c,
        target: pause.pid(),
        tid,
        site,
        stop: Arc::new(AtomicBool::new(false)),
        cow: Arc::new(AtomicU64::new(0)),
        killed: Arc::new(Mutex::new(None)),
        watchdog: None,
    };
    snap.start_watchdog(lim);
    Ok(snap)
}
