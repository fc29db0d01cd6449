//! Everything in `serve` that pauses a target: the background census loop
//! (`--census-interval`) and the pprof endpoints. One pause at a time
//! across the whole server (a mutex), each pause recorded in
//! `ljleak_pause_seconds`, and results cached: an endpoint answers from a
//! result younger than `--min-census-interval` instead of pausing again,
//! so a scraper (or an attacker on the port) cannot make ljleak pause a
//! worker more often than that.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;

use super::targets::{start_time, Target};
use super::State;
use crate::cli::{CaptureArgs, TargetArgs};
use crate::report::census::CensusReport;
use crate::report::threads::ThreadsReport;

/// A result and when it was taken, for one process.
#[derive(Debug)]
pub struct Cached<T> {
    at: Instant,
    start: Option<u64>,
    /// The result.
    pub value: Arc<T>,
}

/// Per-PID caches of the last census and thread census.
#[derive(Debug, Default)]
pub struct Caches {
    /// Last object census of each process.
    pub census: Mutex<HashMap<i32, Cached<CensusReport>>>,
    /// Last thread census of each process.
    pub threads: Mutex<HashMap<i32, Cached<ThreadsReport>>>,
}

impl Caches {
    /// Drop the entries of processes that are gone.
    pub fn forget(&self, pid: i32) {
        if let Ok(mut c) = self.census.lock() {
            c.remove(&pid);
        }
        if let Ok(mut c) = self.threads.lock() {
            c.remove(&pid);
        }
    }
}

fn fresh<T>(m: &Mutex<HashMap<i32, Cached<T>>>, pid: i32, max_age: Duration) -> Option<Arc<T>> {
    let c = m.lock().ok()?;
    let e = c.get(&pid)?;
    (e.at.elapsed() < max_age && e.start == start_time(pid)).then(|| Arc::clone(&e.value))
}

/// The last census of `pid`, whatever its age (for `/metrics`).
pub fn last_census(s: &State, pid: i32) -> Option<Arc<CensusReport>> {
    fresh(&s.caches.census, pid, Duration::MAX)
}

/// Run `take` under the server-wide pause lock unless a result younger
/// than `max_age` is cached; record the pause and count failures.
fn cached_or_take<T>(
    s: &State,
    m: &Mutex<HashMap<i32, Cached<T>>>,
    pid: i32,
    max_age: Duration,
    take: impl FnOnce() -> Result<(T, u64)>,
) -> Result<Arc<T>> {
    if let Some(v) = fresh(m, pid, max_age) {
        return Ok(v);
    }
    let _one_at_a_time = s.pause.lock().unwrap_or_else(|e| e.into_inner());
    if s.stopping.load(Ordering::SeqCst) {
        anyhow::bail!("ljleak is stopping");
    }
    // Another request may have taken it while we waited.
    if let Some(v) = fresh(m, pid, max_age) {
        return Ok(v);
    }
    let start = start_time(pid);
    let (v, pause_us) = take()?;
    let v = Arc::new(v);
    {
        let mut h = s.health.lock().unwrap_or_else(|e| e.into_inner());
        h.pauses.observe(pause_us as f64 / 1e6);
        h.censuses += 1;
    }
    if let Ok(mut c) = m.lock() {
        c.insert(
            pid,
            Cached {
                at: Instant::now(),
                start,
                value: Arc::clone(&v),
            },
        );
    }
    Ok(v)
}

fn target_args(pid: i32) -> TargetArgs {
    TargetArgs {
        pid,
        core: None,
        sysroot: None,
        lua_state: None,
        layout: None,
    }
}

/// The object census of `pid`, cached up to `max_age`.
pub fn census(s: &State, pid: i32, max_age: Duration) -> Result<Arc<CensusReport>> {
    cached_or_take(s, &s.caches.census, pid, max_age, || {
        let (cap, c, walk) =
            crate::cmd::census::take_census(&target_args(pid), &CaptureArgs::default(), s.hold)?;
        let r = crate::report::census::census_report(&cap, &c, walk);
        Ok((r, cap.pause_us))
    })
}

/// The thread census of `pid` (no retained sizes: a goroutine profile
/// counts threads), cached up to `max_age`.
pub fn threads(s: &State, pid: i32, max_age: Duration) -> Result<Arc<ThreadsReport>> {
    cached_or_take(s, &s.caches.threads, pid, max_age, || {
        let opts = crate::cmd::capture_opts(&target_args(pid), &CaptureArgs::default(), s.hold);
        let cap = crate::capture::capture(pid, &opts)?;
        let vm = cap.heap_vm();
        let t = crate::luajit::threads::threads(&vm, cap.walk_limits(), 64);
        let r = crate::report::threads::report(
            cap.pid,
            &cap.exe,
            &t,
            cap.pause_us,
            cap.consistency.name(),
        );
        Ok((r, cap.pause_us))
    })
}

/// Census every current target every `interval`, one at a time, until
/// the server stops. A round whose census is still fresh (an endpoint took
/// it) reuses it: never more often than asked.
pub fn census_loop(s: Arc<State>, interval: Duration) {
    loop {
        let round = Instant::now();
        let targets: Vec<Target> = s.refresh();
        for t in &targets {
            if s.stopping.load(Ordering::SeqCst) {
                return;
            }
            // A census an endpoint took in the last half interval is
            // reused; the loop's own ones are `interval` apart (reusing
            // anything younger than `interval` would skip every other round).
            if let Err(e) = census(&s, t.pid, interval / 2) {
                let kind = super::metrics::error_kind(&e, t.pid);
                let kind = if kind == "read" { "census" } else { kind };
                s.health
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .error(kind);
                log::warn!("census of pid {} failed: {e:#}", t.pid);
            }
        }
        let rest = interval.saturating_sub(round.elapsed());
        let (lock, cv) = &s.wake;
        let g = lock.lock().unwrap_or_else(|e| e.into_inner());
        let _ = cv.wait_timeout_while(g, rest, |_| !s.stopping.load(Ordering::SeqCst));
        if s.stopping.load(Ordering::SeqCst) {
            return;
        }
    }
}

/// Which targets a pprof request is about: `pid=N` (a watched process),
/// `master=N` (its workers), or every target.
pub fn select(s: &State, req: &super::http::Request) -> std::result::Result<Vec<Target>, String> {
    let all = s.refresh();
    let parse = |k: &str| -> std::result::Result<Option<i32>, String> {
        req.param(k)
            .map(|v| {
                v.parse::<i32>()
                    .map_err(|_| format!("{k}={v} is not a PID"))
            })
            .transpose()
    };
    let (pid, master) = (parse("pid")?, parse("master")?);
    let sel: Vec<Target> = all
        .into_iter()
        .filter(|t| pid.is_none_or(|p| t.pid == p) && master.is_none_or(|m| t.master == Some(m)))
        .collect();
    if sel.is_empty() {
        return Err(match (pid, master) {
            (Some(p), _) => format!("pid {p} is not a watched process (see /)"),
            (_, Some(m)) => format!("master {m} has no watched workers (see /)"),
            _ => "no process is watched right now".into(),
        });
    }
    Ok(sel)
}
