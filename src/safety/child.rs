//! Child processes die with their parent.
//!
//! `PR_SET_PDEATHSIG(SIGKILL)` is set in the child between fork and exec,
//! then the parent PID is compared with the one expected: a parent that
//! died before the call would never send the signal (prctl(2): the setting
//! applies to the parent *at the time of the call*), so the child exits at
//! once instead of running orphaned with probes attached.

use std::os::unix::process::CommandExt;

/// Make `cmd`'s child receive SIGKILL when this process (the thread that
/// spawns it, see prctl(2)) dies, and exit at once if it already has.
pub fn die_with_parent(cmd: &mut std::process::Command) -> &mut std::process::Command {
    // SAFETY: getpid is async-signal-safe.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe calls (prctl, getppid, _exit).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        })
    }
}
