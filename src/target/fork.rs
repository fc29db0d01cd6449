//! A copy-on-write snapshot of a paused target: the target forks, by one
//! register-only injected `clone`, and ljleak reads the child at leisure
//! while the target runs on. The pause lasts as long as the kernel takes to
//! copy page tables, not pages (Redis takes its snapshots the same way).
//!
//! The process that does this is a helper of ljleak's (see `forker`), so a
//! SIGKILL of ljleak itself never lands in the middle of it.
//!
//! Who is who: the target's thread T clones C (exit signal 0, so the worker
//! gets no SIGCHLD), the snapshot. C is auto-attached from birth
//! (PTRACE_O_TRACECLONE) and never runs a user instruction:
//! - C gets PTRACE_O_EXITKILL right after birth: it dies with ljleak.
//!   Before that, if ljleak dies, C runs the code after the `syscall` in
//!   `_exit`, which can only exit (checked by emulation, see `inject`).
//! - The target itself never has EXITKILL: if its tracer dies, it is
//!   detached and runs on. Its registers are restored after each injected
//!   call; only a SIGKILL of the helper itself during one (the length of a
//!   clone) would leave it running `_exit`'s tail, i.e. the worker exits.
//! - When ljleak is done (or dead), C is killed and reaped by one more
//!   injected `wait4` in T (one thread held for microseconds), so no
//!   zombie stays behind. Should even that fail (the helper killed too), C
//!   stays a zombie of the worker, invisible to it (no SIGCHLD, and
//!   `waitpid` without `__WALL` does not see it), until the next fork
//!   snapshot of that target reaps it.

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
    /// The `syscall` used.
    pub site: Site,
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

/// Bytes the snapshot now holds alone: the pages the target has written
/// since the fork (it got the copies; G kept the originals).
pub fn private_bytes(pid: i32) -> Option<u64> {
    let r = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    Some((field(&r, "Private_Dirty:")? + field(&r, "Private_Clean:").unwrap_or(0)) * 1024)
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
pub fn reap_in_target(
    target: i32,
    tid: i32,
    site: Site,
    children: &[i32],
) -> Result<(), InjectError> {
    if !super::process_alive(target) {
        return Ok(());
    }
    // Another tracer (a second ljleak) may hold the target for a moment.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut t = loop {
        match OneThread::seize(tid) {
            Ok(t) => break t,
            Err(InjectError::Ptrace {
                errno: nix::errno::Errno::EPERM,
                ..
            }) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(e),
        }
    };
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
pub fn reap(pid: i32, timeout: Duration) {
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

/// Longest wait for one injected call or one stop.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Make the paused target fork a snapshot; returns its PID. `pause` holds
/// every thread; `tid` is the thread used (stopped, ideally in a system
/// call); `stale` are snapshots of earlier runs to reap first (see
/// [`stale_snapshots`]). The child is stopped, traced by this process with
/// PTRACE_O_EXITKILL.
pub fn fork_snapshot(
    pause: &mut Pause,
    tid: i32,
    site: Site,
    stale: &[i32],
) -> Result<i32, ForkError> {
    let t = Pid::from_raw(tid);
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
    // clone(flags = 0: no CLONE_VM, exit signal 0). The child is looked
    // after only once the target's registers are back: it cannot run a
    // user instruction but exit meanwhile, and the target's window of
    // injected registers stays as short as the clone itself.
    let (r, sigs) = inject::call(
        tid,
        site,
        nr::CLONE,
        [Some(0), Some(0), None, Some(0), Some(0), Some(0)],
        &restore,
        CALL_TIMEOUT,
        &mut |_| Ok(()),
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
    let held = inject::wait_born(c, Instant::now() + CALL_TIMEOUT).and_then(|_| {
        ptrace::setoptions(Pid::from_raw(c), Options::PTRACE_O_EXITKILL)
            .map_err(pt("PTRACE_SETOPTIONS (child)"))
    });
    if let Err(e) = held {
        let _ = kill(Pid::from_raw(c), Signal::SIGKILL);
        reap(c, CALL_TIMEOUT);
        let _ = wait4_in(tid, site, c, &restore);
        return Err(e.into());
    }
    Ok(c)
}
