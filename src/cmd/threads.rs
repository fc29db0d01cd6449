//! `ljleak threads`: pause, copy the heap, resume, then list every Lua
//! thread with its status and backtrace, grouped by identical stacks.

use std::time::Instant;

use anyhow::Result;

use crate::capture::{self, CaptureOpts};
use crate::cli::{ThreadsArgs, ThreadsFormat, ThreadsWeight};
use crate::luajit::threads::threads;
use crate::luajit::LocateOpts;
use crate::report::threads::{self as rep, Weight};

/// Run `ljleak threads`.
pub fn run(a: ThreadsArgs) -> Result<()> {
    let opts = CaptureOpts {
        locate: LocateOpts {
            lua_state: a.target.lua_state,
            layout: a.target.layout.clone(),
        },
        nonblocking: a.nonblocking,
        attempts: a.attempts,
        hold_pause: None,
    };
    let cap = capture::capture(a.target.pid, &opts)?;
    let t0 = Instant::now();
    let t = threads(&cap.heap_vm(), cap.walk_limits(), a.max_depth.max(1));
    log::info!("{} threads analysed in {:?}", t.threads.len(), t0.elapsed());
    let r = rep::report(cap.pid, &cap.exe, &t, cap.pause_us, cap.consistency.name());
    // Retained bytes need the dominator tree (ljleak refs); a thread's own
    // stack is what is known here.
    let weight = match a.weight {
        ThreadsWeight::Count => Weight::Count,
        ThreadsWeight::Bytes => Weight::StackBytes,
    };
    let svg = a
        .output
        .as_deref()
        .is_some_and(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("svg")));
    let text = if svg {
        rep::svg(&r, weight)?
    } else {
        match a.format {
            ThreadsFormat::Text => rep::text(&r),
            ThreadsFormat::Json => serde_json::to_string_pretty(&r)? + "\n",
            ThreadsFormat::Folded => rep::folded(&r, weight),
        }
    };
    super::write_output(a.output.as_deref(), &text)
}
