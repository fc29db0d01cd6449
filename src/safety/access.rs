//! The access check a capability-granted ljleak owes its real user.
//!
//! With file capabilities (`setcap cap_sys_ptrace,...`), the kernel lets
//! ljleak read any process, so any local user could dump another user's
//! worker (request headers, keys). When the real uid is not root, ljleak
//! applies the kernel's own ptrace rule for an unprivileged caller
//! (`__ptrace_may_access`, kernel/ptrace.c): every uid and gid of the
//! target (real, effective, saved, filesystem) must be the caller's real
//! ones, and the target must be dumpable — a non-dumpable process's
//! /proc/PID is owned by root (proc(5)), which is what is checked.
//! `--allow-other-users` lifts this, for an operator who means it.

use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::target::TargetError;

static ALLOW_OTHER_USERS: AtomicBool = AtomicBool::new(false);

/// `--allow-other-users`: skip the check.
pub fn allow_other_users(yes: bool) {
    ALLOW_OTHER_USERS.store(yes, Ordering::Relaxed);
}

/// Refuse `pid` when a non-root real user could not ptrace it without the
/// capabilities this binary may carry.
pub fn check_target_access(pid: i32) -> Result<(), TargetError> {
    // SAFETY: getuid/getgid cannot fail.
    let (ruid, rgid) = unsafe { (libc::getuid(), libc::getgid()) };
    if ruid == 0 || ALLOW_OTHER_USERS.load(Ordering::Relaxed) {
        return Ok(());
    }
    let refuse = |why: String| TargetError::Permission {
        pid,
        what: format!(
            "{why}; ljleak runs for uid {ruid} and inspects only that user's dumpable processes \
             (as the kernel would without capabilities); pass --allow-other-users to override"
        ),
    };
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return Ok(()); // gone: the caller reports that
    };
    let ids = |key: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| {
                v.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let (uids, gids) = (ids("Uid:"), ids("Gid:"));
    if uids.is_empty() || uids.iter().any(|&u| u != ruid) {
        return Err(refuse(format!("it runs as uid {uids:?}")));
    }
    if gids.is_empty() || gids.iter().any(|&g| g != rgid) {
        return Err(refuse(format!("it runs as gid {gids:?}")));
    }
    match std::fs::metadata(format!("/proc/{pid}")) {
        Ok(md) if md.uid() != ruid => Err(refuse("it is not dumpable".into())),
        _ => Ok(()),
    }
}
