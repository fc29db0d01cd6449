//! `ljleak serve`: a long-running agent that exports Prometheus metrics
//! (`/metrics`) and pprof profiles (`/debug/pprof/heap`, `/allocs`,
//! `/goroutine`) of the LuaJIT VMs on this box, for Prometheus, Parca and
//! Grafana Pyroscope (Alloy) to scrape.
//!
//! Threads: the main thread waits for SIGTERM/SIGINT (blocked everywhere
//! else, so no handler ever runs inside a pause); an acceptor and a small
//! pool of HTTP handler threads ([`http`]); with `--census-interval`, one
//! census thread ([`profiles::census_loop`]). Scrapes only read memory;
//! every pause goes through one lock in [`profiles`].

pub mod http;
pub mod mem_metrics;
pub mod metrics;
pub mod profiles;
pub mod targets;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::cli::ServeArgs;
use crate::error::{Classified, ExitCode};
use crate::luajit::Vm;
use crate::target::ProcessMemory;
use http::{Request, Response};
use targets::{Target, Targets};

/// `--help` epilogue: scrape configurations for Prometheus, Parca and Alloy.
pub const SERVE_HELP: &str = "\
Endpoints: /metrics (Prometheus text format), /debug/pprof/heap (= /allocs) and
/debug/pprof/goroutine (gzipped pprof; ?pid=N or ?master=N, else every watched
process merged, each stack under a `pid N` root frame when there are several;
other parameters such as ?seconds are ignored), / (this list and the watched
processes). Scrapes never pause a worker;
pprof endpoints pause each worker at most once per --min-census-interval.

Prometheus (prometheus.yml):
  scrape_configs:
    - job_name: ljleak
      scrape_interval: 15s
      static_configs:
        - targets: ['127.0.0.1:9145']

Parca (parca.yaml; memory = /debug/pprof/allocs, goroutine as named):
  scrape_configs:
    - job_name: ljleak
      scrape_interval: 60s
      static_configs:
        - targets: ['127.0.0.1:9145']
      profiling_config:
        pprof_config:
          process_cpu: {enabled: false}
          block: {enabled: false}
          mutex: {enabled: false}

Grafana Alloy (pyroscope.scrape):
  pyroscope.scrape \"ljleak\" {
    targets    = [{\"__address__\" = \"127.0.0.1:9145\", \"service_name\" = \"openresty\"}]
    forward_to = [pyroscope.write.default.receiver]
    scrape_interval = \"60s\"
    profiling_config {
      profile.process_cpu { enabled = false }
      profile.block       { enabled = false }
      profile.mutex       { enabled = false }
    }
  }

Listening on a non-loopback address needs --allow-remote: heap contents are
sensitive. SIGTERM or SIGINT stops cleanly (no process left paused).";

/// A memory breakdown, when it was read, and the process's start time.
type MemEntry = (Instant, Option<u64>, Arc<crate::mem::MemReport>);

/// Shared state of a running server.
pub struct State {
    targets: Mutex<Targets>,
    /// ljleak's own counters.
    pub health: Mutex<metrics::Health>,
    /// Held while a target is paused: one pause at a time, and none
    /// starts once stopping.
    pub pause: Mutex<()>,
    /// Set on SIGTERM/SIGINT.
    pub stopping: AtomicBool,
    /// Wakes the census loop early when stopping.
    pub wake: (Mutex<()>, Condvar),
    /// Cached censuses.
    pub caches: profiles::Caches,
    /// Test hook: hold each pause this long.
    pub hold: Option<Duration>,
    census_interval: Option<Duration>,
    min_census_interval: Duration,
    mem_interval: Duration,
    mem_cache: Mutex<HashMap<i32, MemEntry>>,
}

impl State {
    /// Resolve the current targets; log and count what appeared and went.
    pub fn refresh(&self) -> Vec<Target> {
        let (now, ch) = self
            .targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .resolve();
        for t in &ch.new {
            log::info!("watching {}", describe(t));
        }
        if !ch.gone.is_empty() || !ch.given_gone.is_empty() {
            let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
            for t in &ch.gone {
                // Plain stderr line at the default log level: a vanished
                // worker is worth a line in the journal.
                log::warn!("{} is gone", describe(t));
                h.targets_gone += 1;
                h.error("target_gone");
                self.caches.forget(t.pid);
            }
            for p in &ch.given_gone {
                log::warn!("process {p} (given with -p) is gone");
                h.error("target_gone");
            }
        }
        now
    }

    /// Read `g->gc.total` of `t` without a pause.
    fn gc_total(&self, t: &Target) -> Result<u64> {
        let vm = self
            .targets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .vm(t.pid)?;
        let mem = ProcessMemory::new(t.pid);
        let v = Vm::new(&mem, &vm.layout, vm.roots.g, vm.roots.main);
        v.gc_total().map_err(|e| {
            crate::target::TargetError::from_io(t.pid, "reading gc.total", std::io::Error::other(e))
                .into()
        })
    }
}

impl State {
    /// The memory breakdown of `pid` (no pause), re-read at most every
    /// `--mem-interval`: it walks smaps, both allocators and the fd table,
    /// tens of milliseconds of ljleak's time, too much for every scrape.
    fn mem(&self, pid: i32) -> Result<Arc<crate::mem::MemReport>> {
        let start = targets::start_time(pid);
        let mut c = self.mem_cache.lock().unwrap_or_else(|e| e.into_inner());
        c.retain(|&p, e| targets::start_time(p) == e.1);
        if let Some((at, st, r)) = c.get(&pid) {
            if at.elapsed() < self.mem_interval && *st == start {
                return Ok(Arc::clone(r));
            }
        }
        drop(c);
        let r = Arc::new(crate::mem::breakdown(pid, &crate::mem::MemOpts::default())?);
        self.mem_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pid, (Instant::now(), start, Arc::clone(&r)));
        Ok(r)
    }
}

fn describe(t: &Target) -> String {
    match (t.master, t.worker) {
        (Some(m), Some(w)) => format!("worker {w} (pid {}) of nginx master {m}", t.pid),
        (Some(m), None) => format!("worker pid {} of nginx master {m}", t.pid),
        _ => format!("process {}", t.pid),
    }
}

/// Answer `/metrics`.
fn metrics_page(s: &State) -> Response {
    let t0 = Instant::now();
    let targets = s.refresh();
    let mut gc = Vec::with_capacity(targets.len());
    for t in targets.iter() {
        match s.gc_total(t) {
            Ok(v) => gc.push((t.clone(), Some(v))),
            Err(e) => {
                let kind = metrics::error_kind(&e, t.pid);
                log::debug!("reading gc.total of pid {}: {e:#}", t.pid);
                s.targets
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .forget_vm(t.pid);
                s.health
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .error(kind);
                gc.push((t.clone(), None));
            }
        }
    }
    let mut mems = Vec::with_capacity(gc.len());
    for (t, v) in &gc {
        if v.is_none() {
            continue;
        }
        match s.mem(t.pid) {
            Ok(r) => mems.push((t.clone(), r)),
            Err(e) => {
                log::debug!("memory breakdown of pid {}: {e:#}", t.pid);
                let kind = match metrics::error_kind(&e, t.pid) {
                    "read" => "mem",
                    k => k,
                };
                s.health
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .error(kind);
            }
        }
    }
    let mut w = metrics::Writer::default();
    metrics::gc(&mut w, &gc);
    let refs: Vec<(Target, &crate::mem::MemReport)> =
        mems.iter().map(|(t, r)| (t.clone(), &**r)).collect();
    mem_metrics::mem(&mut w, &refs);
    if s.census_interval.is_some() {
        let cs: Vec<(Target, Arc<crate::report::census::CensusReport>)> = targets
            .iter()
            .filter_map(|t| Some((t.clone(), profiles::last_census(s, t.pid)?)))
            .collect();
        let refs: Vec<(Target, &crate::report::census::CensusReport)> =
            cs.iter().map(|(t, r)| (t.clone(), &**r)).collect();
        metrics::census(&mut w, &refs);
    }
    let h = {
        let mut h = s.health.lock().unwrap_or_else(|e| e.into_inner());
        h.scrapes += 1;
        h.clone()
    };
    metrics::health(&mut w, &h, targets.len(), t0.elapsed().as_secs_f64());
    metrics::process(&mut w);
    Response {
        status: 200,
        content_type: "text/plain; version=0.0.4; charset=utf-8",
        headers: Vec::new(),
        body: w.finish().into_bytes(),
    }
}

fn pprof_response(name: &str, p: &crate::report::pprof::proto::Profile) -> Response {
    match crate::report::pprof::encode(p) {
        Ok(body) => Response {
            status: 200,
            content_type: "application/octet-stream",
            headers: vec![(
                "Content-Disposition",
                format!("attachment; filename=\"{name}\""),
            )],
            body,
        },
        Err(e) => Response::text(500, format!("encoding the profile: {e}\n")),
    }
}

/// Answer `/debug/pprof/heap` (and `/allocs`) or `/debug/pprof/goroutine`.
fn profile_page(s: &State, req: &Request, heap: bool) -> Response {
    let sel = match profiles::select(s, req) {
        Ok(v) => v,
        Err(msg) => return Response::text(404, msg + "\n"),
    };
    let max_age = s.min_census_interval;
    // A process failing in a merged profile (a worker exiting meanwhile)
    // is left out and counted; the request fails only when all do.
    let mut first_err: Option<(u16, String)> = None;
    let mut fail = |pid: i32, e: anyhow::Error| {
        let kind = match metrics::error_kind(&e, pid) {
            "read" => "profile",
            k => k,
        };
        s.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .error(kind);
        log::warn!("profile of pid {pid}: {e:#}");
        let code = if kind == "target_gone" { 404 } else { 500 };
        first_err.get_or_insert((code, format!("pid {pid}: {e:#}\n")));
    };
    let p = if heap {
        let mut reps = Vec::with_capacity(sel.len());
        for t in &sel {
            match profiles::census(s, t.pid, max_age) {
                Ok(r) => reps.push((*r).clone()),
                Err(e) => fail(t.pid, e),
            }
        }
        (!reps.is_empty()).then(|| crate::report::pprof::from_censuses(&reps, reps.len() > 1))
    } else {
        let mut reps = Vec::with_capacity(sel.len());
        for t in &sel {
            match profiles::threads(s, t.pid, max_age) {
                Ok(r) => reps.push((*r).clone()),
                Err(e) => fail(t.pid, e),
            }
        }
        (!reps.is_empty()).then(|| crate::report::pprof::from_threads(&reps))
    };
    match (p, first_err) {
        (Some(p), _) => pprof_response(if heap { "heap" } else { "goroutine" }, &p),
        (None, Some((code, msg))) => Response::text(code, msg),
        (None, None) => Response::text(404, "no process is watched right now\n"),
    }
}

fn index_page(s: &State) -> Response {
    let targets = s.refresh();
    let mut t = String::from(
        "<html><head><title>ljleak serve</title></head><body>\n<h1>ljleak serve</h1>\n<ul>\n\
         <li><a href=\"/metrics\">/metrics</a>: Prometheus metrics (never pauses a process)</li>\n\
         <li><a href=\"/debug/pprof/heap\">/debug/pprof/heap</a> (also /debug/pprof/allocs): \
         object census as pprof (inuse_objects, inuse_space; type then C type)</li>\n\
         <li><a href=\"/debug/pprof/goroutine\">/debug/pprof/goroutine</a>: Lua threads \
         (coroutines) grouped by stack, as a goroutine profile</li>\n</ul>\n\
         <p>pprof endpoints take <code>?pid=N</code> or <code>?master=N</code>; without, every \
         watched process is merged. They pause a process at most once per --min-census-interval.</p>\n\
         <h2>Watched processes</h2>\n<ul>\n",
    );
    for x in &targets {
        t.push_str(&format!(
            "<li>{} <a href=\"/debug/pprof/heap?pid={p}\">heap</a> \
             <a href=\"/debug/pprof/goroutine?pid={p}\">goroutine</a></li>\n",
            describe(x),
            p = x.pid
        ));
    }
    t.push_str("</ul>\n</body></html>\n");
    Response {
        status: 200,
        content_type: "text/html; charset=utf-8",
        headers: Vec::new(),
        body: t.into_bytes(),
    }
}

fn route(s: &State, req: &Request) -> Response {
    match req.path.trim_end_matches('/') {
        "" => index_page(s),
        "/metrics" => metrics_page(s),
        "/debug/pprof/heap" | "/debug/pprof/allocs" => profile_page(s, req, true),
        "/debug/pprof/goroutine" => profile_page(s, req, false),
        "/debug/pprof" => index_page(s),
        _ => Response::text(404, "not found: see / for the endpoints\n"),
    }
}

fn is_loopback(a: &SocketAddr) -> bool {
    a.ip().is_loopback()
}

/// Bind, refusing non-loopback addresses without `allow_remote`.
fn bind(listen: &str, allow_remote: bool) -> Result<TcpListener> {
    let addrs: Vec<SocketAddr> = listen
        .to_socket_addrs()
        .map_err(|e| {
            Classified::new(
                ExitCode::Usage,
                format!("--listen {listen}: {e} (give ADDR:PORT, e.g. 127.0.0.1:9145)"),
            )
        })?
        .collect();
    let addr = *addrs.first().ok_or_else(|| {
        Classified::new(ExitCode::Usage, format!("--listen {listen}: no address"))
    })?;
    if !is_loopback(&addr) {
        if !allow_remote {
            return Err(Classified::new(
                ExitCode::ListenFailed,
                format!(
                    "--listen {addr} is not a loopback address: heap contents are sensitive; add --allow-remote to expose them"
                ),
            )
            .into());
        }
        log::warn!(
            "listening on {addr}, reachable from other hosts: heap contents (strings, table keys) are sensitive; firewall this port"
        );
    }
    TcpListener::bind(addr).map_err(|e| {
        Classified::new(
            ExitCode::ListenFailed,
            format!("cannot listen on {addr}: {e} (choose another port with --listen)"),
        )
        .into()
    })
}

/// Check the targets given on the command line before serving.
fn check_targets(s: &State, a: &ServeArgs) -> Result<()> {
    for &p in &a.pids {
        crate::target::check_process(p)?;
    }
    if a.pids.is_empty() && a.discover.is_none() {
        return Err(Classified::new(
            ExitCode::Usage,
            "nothing to watch: give -p PID (an nginx master or a LuaJIT process) or --discover nginx",
        )
        .into());
    }
    let targets = s.refresh();
    if a.discover.is_some() && a.pids.is_empty() && targets.is_empty() {
        return Err(Classified::new(
            ExitCode::NoTargets,
            "--discover nginx found no nginx master with the lua module (start nginx first, or give -p PID)",
        )
        .into());
    }
    // Fail now, with the right code, on a process given with -p that has
    // no usable VM. Discovered ones and processes exiting right now are
    // left to the scrapes (a metric and a log line).
    for t in &targets {
        let given = a.pids.contains(&t.pid) || t.master.is_some_and(|m| a.pids.contains(&m));
        match s.gc_total(t) {
            Err(e) if given && crate::target::process_alive(t.pid) => {
                return Err(e.context(format!("pid {}", t.pid)))
            }
            Err(e) => log::warn!("pid {}: {e:#}", t.pid),
            Ok(_) => {}
        }
    }
    Ok(())
}

/// Run `ljleak serve` until SIGTERM or SIGINT.
pub fn run(a: ServeArgs) -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    // Block the stop signals in this thread before any other exists: every
    // thread inherits the mask, and only the main thread takes them, with
    // sigwait, outside any pause.
    let mut sigs = SigSet::empty();
    sigs.add(Signal::SIGTERM);
    sigs.add(Signal::SIGINT);
    sigs.thread_block()
        .map_err(|e| anyhow::anyhow!("blocking signals: {e}"))?;

    let listener = bind(&a.listen, a.allow_remote)?;
    let state = Arc::new(State {
        targets: Mutex::new(Targets::new(a.pids.clone(), a.discover.is_some())),
        health: Mutex::new(metrics::Health::default()),
        pause: Mutex::new(()),
        stopping: AtomicBool::new(false),
        wake: (Mutex::new(()), Condvar::new()),
        caches: profiles::Caches::default(),
        hold: a.debug_hold_pause_ms.map(Duration::from_millis),
        census_interval: a.census_interval,
        min_census_interval: a.min_census_interval,
        mem_interval: a.mem_interval,
        mem_cache: Mutex::new(HashMap::new()),
    });
    check_targets(&state, &a)?;
    let local = listener.local_addr()?;
    eprintln!("ljleak serve: listening on http://{local}/ (metrics at /metrics)");

    let s = Arc::clone(&state);
    let handler: http::Handler = Arc::new(move |req: &Request| route(&s, req));
    let threads = a.http_threads.clamp(1, 64);
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            if let Err(e) = http::run(listener, threads, handler) {
                log::error!("HTTP server stopped: {e}");
            }
        })?;
    if let Some(iv) = a.census_interval {
        let s = Arc::clone(&state);
        std::thread::Builder::new()
            .name("census".into())
            .spawn(move || profiles::census_loop(s, iv))?;
    }

    let sig = sigs
        .wait()
        .map_err(|e| anyhow::anyhow!("waiting for signals: {e}"))?;
    state.stopping.store(true, Ordering::SeqCst);
    state.wake.1.notify_all();
    // Wait for a pause in progress to end (each is bounded: Pause gives up
    // after 2 s), then exit holding the lock so that none starts. Had we
    // died instead, the kernel would have resumed the target anyway
    // (PTRACE_SEIZE: a tracer's exit detaches its tracees).
    let deadline = Instant::now() + Duration::from_secs(10);
    let _held = loop {
        match state.pause.try_lock() {
            Ok(g) => break Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => break Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(std::sync::TryLockError::WouldBlock) => break None,
        }
    };
    eprintln!("ljleak serve: {sig}, stopped");
    std::process::exit(0);
}
