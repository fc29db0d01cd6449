//! The fork snapshot is made and looked after by a helper process (the
//! hidden `ljleak snapshot-helper`), not by ljleak itself, so that a SIGKILL
//! of ljleak can never land while the target's registers are borrowed:
//! the helper finishes what it is doing, then sees its stdin close, kills
//! the snapshot and reaps it inside the target (an injected `wait4`), and
//! exits. Nothing stays behind: no stopped target, no child, no zombie.
//!
//! The helper ignores SIGINT, SIGTERM and SIGHUP: it ends when ljleak's
//! end of the pipe closes, whichever way ljleak ended, or when the snapshot
//! outlives its limits.
//!
//! One hazard has no fix: a SIGKILL of the helper itself while the
//! injected `clone` runs makes the kernel detach the target with borrowed
//! registers, and the target runs the tail of libc's `_exit` (no syscall
//! site is safe for both the target and a child that might run). So the
//! helper keeps out of the ways processes get killed in bulk:
//! - its own session and process group (`setsid`): Ctrl-C, `kill -- -PGID`
//!   and `timeout` reach ljleak, not the helper;
//! - a name without "ljleak": started through `/proc/self/exe` with
//!   `argv[0]` `lj-snapshot`, so neither its `comm` nor its command line
//!   matches `pkill ljleak`, `pkill -f ljleak` or `killall ljleak` (a
//!   pattern such as `pkill -f snapshot-helper`, or `killall` given the
//!   executable's path, still does);
//! - `oom_score_adj` -1000, so the OOM killer picks another process.
//!
//! No `PR_SET_PDEATHSIG`: it would deliver its signal mid-injection (and
//! fires when the spawning *thread* ends, not the process). ljleak's death
//! closes the pipe, which the helper acts on once any injected call is
//! done; it also stops when it is reparented.
//!
//! Protocol, one line each way: the helper prints `ok CHILD PAUSE_US
//! ATTEMPTS QUIESCENCE`, `refused MESSAGE` or `failed MESSAGE`; ljleak
//! closes the helper's stdin when done.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use std::os::unix::process::CommandExt;

use nix::sys::signal::{kill, signal, SigHandler, Signal};
use nix::unistd::Pid;

use super::fork::{self, ForkError, ForkLimits, Preflight};
use super::inject::Site;
use super::pause::{Pause, Quiescence};

/// The helper's `comm` and `argv[0]`: nothing a kill by ljleak's name
/// matches.
pub const HELPER_NAME: &str = "lj-snapshot";

/// The file to exec for the helper: `/proc/self/exe` (the kernel names the
/// new `comm` after the path's last part, `exe`, until the helper renames
/// itself), or ljleak's path when /proc is not mounted.
fn helper_exe(exe: &std::path::Path) -> std::path::PathBuf {
    let p = std::path::PathBuf::from("/proc/self/exe");
    if p.exists() {
        p
    } else {
        exe.to_path_buf()
    }
}

/// Keep the helper out of bulk kills: its `comm`, and the OOM killer's
/// last choice. Failures (no CAP_SYS_RESOURCE) only lose the latter.
fn harden() {
    let name = std::ffi::CString::new(HELPER_NAME).expect("no NUL");
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0);
    }
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "-1000") {
        log::debug!("snapshot helper: oom_score_adj: {e}");
    }
}

/// What the helper needs to know.
#[derive(Debug, Clone)]
pub struct HelperArgs {
    /// Target.
    pub pid: i32,
    /// Pause attempts before settling for a best-effort snapshot.
    pub attempts: u32,
    /// Test hook: hold the pause this long before forking.
    pub hold_ms: u64,
    /// The `syscall` to use.
    pub site: Site,
    /// Limits of the snapshot's life.
    pub limits: ForkLimits,
}

impl HelperArgs {
    fn to_args(&self) -> Vec<String> {
        vec![
            "snapshot-helper".into(),
            self.pid.to_string(),
            self.attempts.to_string(),
            self.hold_ms.to_string(),
            format!("{:#x}", self.site.addr),
            self.site.rdx.to_string(),
            self.limits.max_life.as_secs().to_string(),
            self.limits.max_cow.to_string(),
        ]
    }

    /// Parse the helper's arguments (after the subcommand name).
    pub fn parse(a: &[String]) -> Option<HelperArgs> {
        let n = |i: usize| a.get(i)?.parse::<u64>().ok();
        Some(HelperArgs {
            pid: a.first()?.parse().ok()?,
            attempts: n(1)? as u32,
            hold_ms: n(2)?,
            site: Site {
                addr: u64::from_str_radix(a.get(3)?.trim_start_matches("0x"), 16).ok()?,
                rdx: n(4)?,
            },
            limits: ForkLimits {
                max_life: Duration::from_secs(n(5)?),
                max_cow: n(6)?,
            },
        })
    }
}

/// ljleak's side: a running helper holding a snapshot.
pub struct ForkSnapshot {
    child: i32,
    helper: Child,
    stdin: Option<ChildStdin>,
    /// How long the target was held, microseconds.
    pub pause_us: u64,
    /// Pause attempts made.
    pub attempts: u32,
    /// Where the VM thread was.
    pub quiescence: Quiescence,
}

impl std::fmt::Debug for ForkSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ForkSnapshot({})", self.child)
    }
}

impl ForkSnapshot {
    /// Start the helper and wait for its snapshot.
    pub fn take(args: &HelperArgs) -> Result<ForkSnapshot, ForkError> {
        let exe = std::env::current_exe()
            .map_err(|e| ForkError::Refused(format!("cannot find ljleak's executable: {e}")))?;
        let mut cmd = Command::new(helper_exe(&exe));
        cmd.arg0(HELPER_NAME);
        // SAFETY: runs between fork and exec; setsid is async-signal-safe.
        // The child is no group leader (fresh from fork), so it cannot fail.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut helper = cmd
            .args(args.to_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| ForkError::Refused(format!("cannot start the snapshot helper: {e}")))?;
        let stdin = helper.stdin.take();
        let mut line = String::new();
        let read = helper
            .stdout
            .take()
            .map(|o| BufReader::new(o).read_line(&mut line));
        let mut snap = ForkSnapshot {
            child: 0,
            helper,
            stdin,
            pause_us: 0,
            attempts: 0,
            quiescence: Quiescence::UserCode,
        };
        if !matches!(read, Some(Ok(n)) if n > 0) {
            return Err(ForkError::Refused("the snapshot helper ended early".into()));
        }
        let mut it = line.trim_end().splitn(2, ' ');
        let (word, rest) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
        match word {
            "ok" => {
                let f: Vec<&str> = rest.split(' ').collect();
                let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
                snap.child = num(0).unwrap_or(0) as i32;
                snap.pause_us = num(1).unwrap_or(0);
                snap.attempts = num(2).unwrap_or(1) as u32;
                snap.quiescence = match (f.get(3).copied(), num(4)) {
                    (Some("s"), Some(n)) => Quiescence::Syscall(n),
                    (Some("m"), Some(n)) => Quiescence::MmSyscall(n),
                    _ => Quiescence::UserCode,
                };
                if snap.child <= 0 {
                    return Err(ForkError::Refused(format!("bad helper reply `{line}`")));
                }
                Ok(snap)
            }
            "refused" => Err(ForkError::Refused(rest.into())),
            _ => Err(ForkError::Failed(super::inject::InjectError::Lost {
                tid: args.pid,
                what: rest.into(),
            })),
        }
    }

    /// The snapshot's PID (read its memory through it).
    pub fn pid(&self) -> i32 {
        self.child
    }

    /// Bytes the target copied on write so far: the pages the snapshot now
    /// holds alone (the target got the copies, the snapshot kept the
    /// originals).
    pub fn cow_bytes(&self) -> u64 {
        fork::private_bytes(self.child).unwrap_or(0)
    }

    /// Why the snapshot is gone before we were done, if it is.
    pub fn killed(&self) -> Option<String> {
        (!super::process_alive(self.child)).then(|| {
            "the snapshot process ended before the walk did (see the message above)".into()
        })
    }
}

impl Drop for ForkSnapshot {
    fn drop(&mut self) {
        if let Some(mut s) = self.stdin.take() {
            let _ = s.write_all(b"done\n");
        }
        // The helper kills and reaps the snapshot; give it time to finish
        // an injected call rather than kill it in the middle of one.
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.helper.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = self.helper.kill();
        let _ = self.helper.wait();
    }
}

/// The helper process: pause, fork, resume, report, then hold the snapshot
/// until stdin closes or a limit is hit; then kill and reap it. Returns the
/// exit code.
pub fn helper_main(a: &HelperArgs) -> i32 {
    harden();
    // SAFETY: getppid cannot fail.
    let parent = unsafe { libc::getppid() };
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGPIPE,
    ] {
        // SAFETY: SIG_IGN installs no handler code; nothing can race.
        let _ = unsafe { signal(s, SigHandler::SigIgn) };
    }
    let out = |s: String| {
        let mut o = std::io::stdout().lock();
        let _ = o.write_all(s.as_bytes());
        let _ = o.flush();
    };
    let stale = fork::stale_snapshots(a.pid);
    let mut made = None;
    for attempt in 1..=a.attempts.max(1) {
        let mut pause = match Pause::new(a.pid, Duration::from_secs(2)) {
            Ok(p) => p,
            Err(e) => {
                out(format!("refused {e}\n"));
                return 1;
            }
        };
        let q = pause.quiescence(a.pid).unwrap_or(Quiescence::UserCode);
        if !q.is_quiescent() && attempt != a.attempts.max(1) {
            drop(pause);
            std::thread::sleep(Duration::from_micros(500 + 997 * (attempt as u64 % 7)));
            continue;
        }
        if a.hold_ms > 0 {
            std::thread::sleep(Duration::from_millis(a.hold_ms));
        }
        let t_fork = pause.elapsed();
        let r = fork::fork_snapshot(&mut pause, a.pid, a.site, &stale);
        let t_done = pause.elapsed();
        let held = pause.resume();
        log::debug!(
            "snapshot helper: stopped after {t_fork:?}, forked after {t_done:?}, resumed after {held:?}"
        );
        made = Some((r, held, attempt, q));
        break;
    }
    let Some((r, held, attempt, q)) = made else {
        out("refused no pause\n".into());
        return 1;
    };
    let c = match r {
        Ok(c) => c,
        Err(ForkError::Failed(e)) => {
            out(format!("failed {e}\n"));
            return 1;
        }
        Err(e) => {
            out(format!("refused {e}\n"));
            return 1;
        }
    };
    let qs = match q {
        Quiescence::Syscall(n) => format!("s {n}"),
        Quiescence::MmSyscall(n) => format!("m {n}"),
        Quiescence::UserCode => "u 0".into(),
    };
    out(format!("ok {c} {} {attempt} {qs}\n", held.as_micros()));
    hold(c, a.limits, parent);
    let _ = kill(Pid::from_raw(c), Signal::SIGKILL);
    fork::reap(c, fork::CALL_TIMEOUT);
    if let Err(e) = fork::reap_in_target(a.pid, a.pid, a.site, &[c]) {
        eprintln!(
            "ljleak: could not reap the snapshot {c} in process {}: {e} (a zombie stays until the next fork snapshot)",
            a.pid
        );
    }
    0
}

/// Wait until stdin closes (or says anything), ljleak is gone (the helper
/// was reparented), or the snapshot outlives its limits.
fn hold(c: i32, lim: ForkLimits, parent: i32) {
    let born = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut b = [0u8; 16];
        let _ = std::io::stdin().read(&mut b);
        let _ = tx.send(());
    });
    loop {
        if rx.recv_timeout(Duration::from_millis(200)).is_ok() {
            return;
        }
        if born.elapsed() > lim.max_life {
            eprintln!(
                "ljleak: the fork snapshot lived longer than {} s: stopped",
                lim.max_life.as_secs()
            );
            return;
        }
        let cow = fork::private_bytes(c).unwrap_or(0);
        if cow > lim.max_cow {
            eprintln!(
                "ljleak: the target copied {} MB on write while the snapshot lived, more than the {} MB free: stopped",
                cow >> 20,
                lim.max_cow >> 20
            );
            return;
        }
        if !super::process_alive(c) {
            return;
        }
        // SAFETY: getppid cannot fail.
        if unsafe { libc::getppid() } != parent {
            return;
        }
    }
}

/// Make a fork snapshot of `pid` through a helper (see the module doc).
pub fn snapshot(
    pid: i32,
    attempts: u32,
    hold: Option<Duration>,
    pre: &Preflight,
    limits: ForkLimits,
) -> Result<ForkSnapshot, ForkError> {
    ForkSnapshot::take(&HelperArgs {
        pid,
        attempts,
        hold_ms: hold.map_or(0, |d| d.as_millis() as u64),
        site: pre.site,
        limits,
    })
}
