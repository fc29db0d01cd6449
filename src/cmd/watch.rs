//! `ljleak watch`: sample memory over time and say whether it grows.
//!
//! Each sample reads `g->gc.total` (one word through /proc/PID/mem, no
//! pause: the VM was located once at the start), VmRSS and RssAnon from
//! /proc/PID/status, optionally a full census (a pause per sample), and the
//! nginx request counter from a stub_status URL. At the end: a least-squares
//! slope with a 95% band and a verdict ([`crate::compare::trend`]).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::emit;
use crate::capture;
use crate::cli::{TargetArgs, WatchArgs, WATCH_FORMATS};
use crate::luajit::census::CountSum;
use crate::luajit::{LocateOpts, Vm};
use crate::report::output::{Format, Formats};
use crate::target::ProcessMemory;

pub use crate::report::watch::{Sample, Summary};
use crate::report::watch_mem::MemSample;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// SIGINT sets [`STOP`] while this lives; the old disposition comes back on
/// drop, so a second Ctrl-C after watch ends behaves as usual.
struct SigintGuard(Option<nix::sys::signal::SigAction>);

impl SigintGuard {
    fn install() -> SigintGuard {
        use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
        let act = SigAction::new(
            SigHandler::Handler(on_sigint),
            SaFlags::empty(),
            SigSet::empty(),
        );
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe; Drop restores the previous action.
        SigintGuard(unsafe { sigaction(Signal::SIGINT, &act) }.ok())
    }
}

impl Drop for SigintGuard {
    fn drop(&mut self) {
        if let Some(old) = self.0.take() {
            // SAFETY: restoring the disposition saved in install().
            let _ = unsafe { nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGINT, &old) };
        }
    }
}

/// (VmRSS, RssAnon) of `pid` in bytes.
pub fn proc_memory(pid: i32) -> std::io::Result<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("RssAnon:")))
}

/// Requests handled so far, from an nginx `stub_status` page at `url`
/// (`http://HOST:PORT/PATH`; plain HTTP only).
pub fn fetch_requests(url: &str) -> Result<u64> {
    use std::io::Read;
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("--requests-url {url}: only http:// URLs are supported"))?;
    let (hostport, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&hostport)
        .ok()
        .and_then(|mut a| a.next())
        .with_context(|| format!("--requests-url {url}: cannot resolve {hostport}"))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("--requests-url {url}: cannot connect"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n")?;
    let mut body = String::new();
    s.take(1 << 16).read_to_string(&mut body)?;
    parse_stub_status(&body)
        .with_context(|| format!("--requests-url {url} is not an nginx stub_status page"))
}

/// The `requests` figure of an nginx stub_status page: the third number on
/// the line after `server accepts handled requests`.
pub fn parse_stub_status(page: &str) -> Option<u64> {
    let mut lines = page.lines();
    lines.find(|l| l.trim() == "server accepts handled requests")?;
    lines.next()?.split_whitespace().nth(2)?.parse().ok()
}

struct Target {
    pid: i32,
    found: crate::luajit::FoundVm,
    mem: ProcessMemory,
}

impl Target {
    fn gc_total(&self) -> Result<u64> {
        let v = Vm::new(
            &self.mem,
            &self.found.layout,
            self.found.roots.g,
            self.found.roots.main,
        );
        v.gc_total().map_err(|e| {
            if crate::target::process_exists(self.pid) {
                anyhow::anyhow!("reading gc.total of {}: {e}", self.pid)
            } else {
                crate::target::TargetError::Exited(self.pid).into()
            }
        })
    }
}

/// Run `ljleak watch`.
pub fn watch(a: WatchArgs) -> Result<()> {
    let master = a.target.pid;
    let pids = super::workers::workers_of(master).unwrap_or_else(|| vec![master]);
    if pids.is_empty() {
        anyhow::bail!("nginx master {master} has no worker processes");
    }
    let lo = LocateOpts {
        lua_state: a.target.lua_state,
        layout: a.target.layout.clone(),
    };
    let targets: Vec<Target> = pids
        .iter()
        .map(|&pid| {
            let (_, _, found) = capture::locate(pid, &lo)?;
            Ok(Target {
                pid,
                found,
                mem: ProcessMemory::new(pid),
            })
        })
        .collect::<Result<_>>()?;
    let multi = targets.len() > 1;
    let tty = std::io::stdout().is_terminal();
    let _sig = SigintGuard::install();
    STOP.store(false, Ordering::SeqCst);
    let spec = Formats {
        command: "watch",
        supported: WATCH_FORMATS,
        stdout: Format::Text,
        file: Format::Svg,
    };
    // A stream format (text, csv, jsonl) names the live output on stdout:
    // files keep the format of their extension (`--format jsonl -o
    // watch.svg` streams JSON lines and draws the plot).
    let outs = match a.format {
        Some(f @ (Format::Text | Format::Csv | Format::Jsonl)) if !a.output.is_empty() => {
            let mut v = Vec::new();
            for p in &a.output {
                let known = Format::from_path(p).is_some();
                v.extend(emit::outputs(
                    &spec,
                    std::slice::from_ref(p),
                    (!known).then_some(f),
                )?);
            }
            v
        }
        f => emit::outputs(&spec, &a.output, f)?,
    };
    // The live stream on stdout: the --format asked for when it is a
    // stream, else text rows (a document format goes to stdout at the end).
    let live = match a.format {
        Some(f @ (Format::Csv | Format::Jsonl)) => f,
        _ => Format::Text,
    };
    let at_end: Vec<_> = outs
        .iter()
        .filter(|o| {
            o.path.is_some() || !matches!(o.format, Format::Text | Format::Csv | Format::Jsonl)
        })
        .cloned()
        .collect();
    let mut out = std::io::stdout().lock();
    let header = match live {
        Format::Csv => crate::report::watch::CSV_HEADER.to_string(),
        Format::Jsonl => String::new(),
        _ => crate::report::watch::text_header(a.census, a.requests_url.is_some()),
    };
    write!(out, "{header}")?;
    let mut series: Vec<Vec<Sample>> = vec![Vec::new(); targets.len() + usize::from(multi)];
    // --mem: each target's last full breakdown (seconds, components).
    let mut mem_last: Vec<Option<(f64, MemSample)>> = vec![None; targets.len()];
    let mem_opts = crate::mem::MemOpts {
        locate: super::locate_opts(&a.target),
        no_fds: true,
        nonblocking: a.capture.nonblocking,
        attempts: a.capture.attempts,
    };
    let t0 = Instant::now();
    let mut exited = None;
    for i in 0..a.count.unwrap_or(u64::MAX) {
        if i > 0 {
            // Sleep in small steps so Ctrl-C ends the run promptly.
            let due = t0 + a.interval.mul_f64(i as f64);
            while Instant::now() < due && !STOP.load(Ordering::SeqCst) {
                std::thread::sleep((due - Instant::now()).min(Duration::from_millis(50)));
            }
        }
        if STOP.load(Ordering::SeqCst) {
            break;
        }
        let requests = match &a.requests_url {
            Some(u) => Some(fetch_requests(u)?),
            None => None,
        };
        let t = t0.elapsed().as_secs_f64();
        let mut row = Vec::new();
        for (ti, tg) in targets.iter().enumerate() {
            let gc_total = match tg.gc_total() {
                Ok(v) => v,
                Err(e) => {
                    exited = Some(e);
                    break;
                }
            };
            let (rss, anon) = proc_memory(tg.pid).unwrap_or((0, 0));
            let (objects, types) = if a.census {
                let ta = TargetArgs {
                    pid: tg.pid,
                    ..a.target.clone()
                };
                let (_, c, _) = super::census::take_census(&ta, &a.capture, None)?;
                let types = c.by_count().into_iter().map(|(n, s)| {
                    (
                        n.to_string(),
                        CountSum {
                            count: s.count,
                            sum: s.sum,
                        },
                    )
                });
                (Some(c.walk.objects), Some(types.collect()))
            } else {
                (None, None)
            };
            let mem = if a.mem {
                match mem_sample(
                    tg.pid,
                    t,
                    a.mem_every,
                    &mem_opts,
                    &mut mem_last[ti],
                    rss,
                    gc_total,
                ) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        exited = Some(e);
                        break;
                    }
                }
            } else {
                None
            };
            row.push(Sample {
                t,
                pid: tg.pid,
                gc_total,
                rss,
                anon,
                objects,
                types,
                requests,
                mem,
            });
        }
        if exited.is_some() {
            break;
        }
        if multi {
            let sum = |f: fn(&Sample) -> u64| row.iter().map(f).sum::<u64>();
            let objects = a.census.then(|| row.iter().filter_map(|s| s.objects).sum());
            let types = a.census.then(|| {
                let mut m: std::collections::BTreeMap<String, CountSum> = Default::default();
                for (n, cs) in row.iter().filter_map(|s| s.types.as_ref()).flatten() {
                    let e = m.entry(n.clone()).or_default();
                    e.count += cs.count;
                    e.sum += cs.sum;
                }
                m
            });
            let mem = a
                .mem
                .then(|| MemSample::sum(row.iter().filter_map(|s| s.mem.as_ref())));
            row.push(Sample {
                t,
                pid: master,
                gc_total: sum(|s| s.gc_total),
                rss: sum(|s| s.rss),
                anon: sum(|s| s.anon),
                objects,
                types,
                requests,
                mem,
            });
        }
        for (k, s) in row.into_iter().enumerate() {
            let total = multi && k == targets.len();
            write!(out, "{}", crate::report::watch::row(live, &s, total))?;
            if let (Format::Text, Some(m)) = (live, &s.mem) {
                writeln!(out, "{}", mem_line(m))?;
            }
            series[k].push(s);
        }
        if tty {
            out.flush()?;
        }
    }
    // stub_status counts the whole server's requests: they are this
    // series' own only for the total, or a lone worker.
    let lone = !multi && single_worker_server(master);
    let summaries: Vec<Summary> = series
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.is_empty())
        .map(|(k, s)| {
            let total = multi && k == targets.len();
            let mut x = crate::report::watch::summarize(s, total, total || lone);
            let pts: Vec<(f64, &MemSample)> = s
                .iter()
                .filter_map(|x| Some((x.t, x.mem.as_ref()?)))
                .collect();
            if let Some((c, v)) = crate::report::watch_mem::verdict(&pts) {
                x.mem_verdict = Some(v);
                x.mem_components = Some(c);
            } else if a.mem {
                x.mem_verdict = Some(format!(
                    "fewer than two allocator walks (one every {:?}): no verdict",
                    a.mem_every
                ));
            }
            x
        })
        .collect();
    let summary = crate::report::watch::summary_text(&summaries, master);
    match live {
        Format::Jsonl => {
            for s in &summaries {
                writeln!(out, "{}", serde_json::json!({ "summary": s }))?;
            }
        }
        Format::Text => write!(out, "{summary}")?,
        _ => eprint!("{summary}"),
    }
    out.flush()?;
    drop(out);
    let rows = |f: Format| -> String {
        let mut s = String::new();
        let n = series.iter().map(Vec::len).max().unwrap_or(0);
        for i in 0..n {
            for (k, ser) in series.iter().enumerate() {
                if let Some(x) = ser.get(i) {
                    s.push_str(&crate::report::watch::row(
                        f,
                        x,
                        multi && k == targets.len(),
                    ));
                }
            }
        }
        s
    };
    emit::emit(&at_end, |f| match f {
        Format::Svg if a.mem => emit::text(crate::report::plot::watch_mem_svg(
            &series, &summaries, master,
        )?),
        Format::Svg => emit::text(crate::report::plot::watch_svg(&series, &summaries, master)?),
        Format::Json => emit::json(&serde_json::json!({
            "kind": "watch",
            "schema": crate::report::envelope::SCHEMA_VERSION,
            "master": if multi { Some(master) } else { None },
            "samples": series,
            "summaries": summaries,
        })),
        Format::Csv => emit::text(format!("{}{}", crate::report::watch::CSV_HEADER, rows(f))),
        Format::Jsonl => {
            let mut s = rows(f);
            for x in &summaries {
                s.push_str(&format!("{}\n", serde_json::json!({ "summary": x })));
            }
            emit::text(s)
        }
        _ => emit::text(format!(
            "{}{}{summary}",
            crate::report::watch::text_header(a.census, a.requests_url.is_some()),
            rows(f)
        )),
    })?;
    match exited {
        Some(e) if series.iter().all(|s| s.len() < 2) => Err(e),
        Some(e) => {
            log::warn!("stopped early: {e:#}");
            Ok(())
        }
        None => Ok(()),
    }
}

/// One `--mem` sample of `pid` at `t` seconds: a full breakdown (a brief
/// pause) when the last is `every` old or more, else the last figures with
/// the Rss, GC total and fd count of now.
fn mem_sample(
    pid: i32,
    t: f64,
    every: Duration,
    opts: &crate::mem::MemOpts,
    last: &mut Option<(f64, MemSample)>,
    rss: u64,
    gc_total: u64,
) -> Result<MemSample> {
    // Counting /proc/PID/fd is cheap; the socket tables are `mem`'s job.
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    let due = last
        .as_ref()
        .is_none_or(|(t0, _)| t - t0 >= every.as_secs_f64());
    if due {
        match crate::mem::breakdown(pid, opts) {
            Ok(r) => {
                let m = MemSample::from_report(&r, fds);
                for w in &r.warnings {
                    log::info!("mem {pid}: {w}");
                }
                *last = Some((t, m.clone()));
                return Ok(m);
            }
            Err(e) if !crate::target::process_alive(pid) => return Err(e.into()),
            // A failed walk (a heap mid-change) keeps the last figures.
            Err(e) => log::warn!("mem breakdown of {pid}: {e}"),
        }
    }
    match last {
        Some((_, m)) => Ok(m.light(rss, gc_total, fds)),
        None => anyhow::bail!("--mem: the first breakdown of {pid} failed"),
    }
}

/// The components of one sample, under its text row.
fn mem_line(m: &MemSample) -> String {
    let mut s = String::from("          ");
    for (name, b) in crate::report::watch_mem::LAYERS.iter().zip(m.layers()) {
        if b > 0 {
            s.push_str(&format!(" {name} {};", crate::units::bytes(b)));
        }
    }
    s.push_str(&format!(" fds {}", m.fds));
    if m.measured {
        s.push_str(&format!(" (walked, paused {} µs)", m.pause_us));
    } else {
        s.push_str(" (allocators: last walk)");
    }
    s
}

/// Whether `pid` is the only worker of its nginx master (or not a worker
/// at all): then a server-wide request count is its own.
fn single_worker_server(pid: i32) -> bool {
    let parent = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse::<i32>()
                .ok()
        });
    match parent.and_then(super::workers::workers_of) {
        Some(w) => w.len() <= 1,
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_status() {
        let page = "Active connections: 1 \nserver accepts handled requests\n 7 7 42 \nReading: 0 Writing: 1 Waiting: 0 \n";
        assert_eq!(parse_stub_status(page), Some(42));
        assert_eq!(parse_stub_status("hello"), None);
    }
}
