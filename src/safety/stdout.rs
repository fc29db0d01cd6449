//! Was standard output closed when ljleak started?
//!
//! The Rust runtime reopens a closed descriptor 0, 1 or 2 on /dev/null
//! before `main` (std's `sys::pal::unix::init` sanitizes them), so a report
//! written to a closed stdout (`ljleak objs -p X >&-`) would vanish without
//! an error. [`record_at_startup`] runs from the binary's `.init_array`,
//! before that, and remembers what it saw.

use std::sync::atomic::{AtomicBool, Ordering};

static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Look at descriptor 1 now (call before the Rust runtime starts).
pub extern "C" fn record_at_startup() {
    // SAFETY: F_GETFD only queries descriptor 1.
    let closed = unsafe { libc::fcntl(1, libc::F_GETFD) } < 0;
    STDOUT_CLOSED.store(closed, Ordering::Relaxed);
}

/// True when descriptor 1 was closed at startup or is closed now.
pub fn stdout_closed() -> bool {
    // SAFETY: F_GETFD only queries descriptor 1.
    STDOUT_CLOSED.load(Ordering::Relaxed) || unsafe { libc::fcntl(1, libc::F_GETFD) } < 0
}
