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
use serde::Serialize;

use crate::capture;
use crate::cli::{TargetArgs, WatchArgs, WatchFormat};
use crate::compare::trend::{self, Trend};
use crate::luajit::census::CountSum;
use crate::luajit::{LocateOpts, Vm};
use crate::target::ProcessMemory;

/// One sample of one process.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the first sample.
    pub t: f64,
    /// Process (the master's PID on `total` rows).
    pub pid: i32,
    /// `g->gc.total`, bytes.
    pub gc_total: u64,
    /// VmRSS, bytes.
    pub rss: u64,
    /// RssAnon, bytes.
    pub anon: u64,
    /// Objects in the census (with --census).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objects: Option<u64>,
    /// Per-type objects and bytes (with --census; JSON lines only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub types: Option<std::collections::BTreeMap<String, CountSum>>,
    /// Requests served so far per the status URL (with --requests-url).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
}

/// The end-of-run summary for one series.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Process, or the master for the total.
    pub pid: i32,
    /// Samples.
    pub samples: usize,
    /// Seconds covered.
    pub seconds: f64,
    /// GC total trend (x in minutes).
    pub gc: Trend,
    /// RSS trend.
    pub rss: Trend,
    /// Requests served during the window (status requests excluded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// GC growth per request, bytes (fitted change / requests).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gc_bytes_per_request: Option<f64>,
}

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
    let mut out = std::io::stdout().lock();
    match a.format {
        WatchFormat::Text => writeln!(
            out,
            "{:>8}  {:>8}  {:>14}  {:>14}  {:>14}{}{}",
            "time(s)",
            "pid",
            "gc_total",
            "rss",
            "anon",
            if a.census {
                format!("  {:>10}", "objects")
            } else {
                String::new()
            },
            if a.requests_url.is_some() {
                format!("  {:>10}", "requests")
            } else {
                String::new()
            }
        )?,
        WatchFormat::Csv => writeln!(out, "t,pid,gc_total,rss,anon,objects,requests")?,
        WatchFormat::Jsonl => {}
    }
    let mut series: Vec<Vec<Sample>> = vec![Vec::new(); targets.len() + usize::from(multi)];
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
        for tg in &targets {
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
            row.push(Sample {
                t,
                pid: tg.pid,
                gc_total,
                rss,
                anon,
                objects,
                types,
                requests,
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
            row.push(Sample {
                t,
                pid: master,
                gc_total: sum(|s| s.gc_total),
                rss: sum(|s| s.rss),
                anon: sum(|s| s.anon),
                objects,
                types,
                requests,
            });
        }
        for (k, s) in row.into_iter().enumerate() {
            print_sample(&mut out, a.format, &s, multi && k == targets.len())?;
            series[k].push(s);
        }
        if tty {
            out.flush()?;
        }
    }
    let summaries: Vec<Summary> = series
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| summarize(s))
        .collect();
    match a.format {
        WatchFormat::Jsonl => {
            for s in &summaries {
                writeln!(out, "{}", serde_json::json!({ "summary": s }))?;
            }
        }
        WatchFormat::Text => write!(out, "{}", summary_text(&summaries, multi, master))?,
        WatchFormat::Csv => eprint!("{}", summary_text(&summaries, multi, master)),
    }
    out.flush()?;
    if let (Some(path), Some(s)) = (&a.output, series.last()) {
        let svg = crate::report::plot::watch_svg(s, summaries.last().map(|x| &x.gc))?;
        super::write_output(Some(path), &svg)?;
    }
    match exited {
        Some(e) if series.iter().all(|s| s.len() < 2) => Err(e),
        Some(e) => {
            log::warn!("stopped early: {e:#}");
            Ok(())
        }
        None => Ok(()),
    }
}

fn print_sample(out: &mut impl Write, f: WatchFormat, s: &Sample, total: bool) -> Result<()> {
    let opt = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_default();
    let pid = if total {
        "total".to_string()
    } else {
        s.pid.to_string()
    };
    match f {
        WatchFormat::Text => writeln!(
            out,
            "{:>8.2}  {:>8}  {:>14}  {:>14}  {:>14}{}{}",
            s.t,
            pid,
            s.gc_total,
            s.rss,
            s.anon,
            s.objects.map(|o| format!("  {o:>10}")).unwrap_or_default(),
            s.requests.map(|o| format!("  {o:>10}")).unwrap_or_default()
        )?,
        WatchFormat::Csv => writeln!(
            out,
            "{:.3},{pid},{},{},{},{},{}",
            s.t,
            s.gc_total,
            s.rss,
            s.anon,
            opt(s.objects),
            opt(s.requests)
        )?,
        WatchFormat::Jsonl => {
            let mut v = serde_json::to_value(s)?;
            if total {
                v["pid"] = "total".into();
            }
            writeln!(out, "{v}")?
        }
    }
    Ok(())
}

/// Trends of one series.
pub fn summarize(s: &[Sample]) -> Summary {
    let pts = |f: fn(&Sample) -> u64| {
        s.iter()
            .map(|x| (x.t / 60.0, f(x) as f64))
            .collect::<Vec<_>>()
    };
    let gc = trend::analyze(&pts(|x| x.gc_total));
    let rss = trend::analyze(&pts(|x| x.rss));
    // Each status fetch is itself counted by nginx: leave those out.
    let requests = match (
        s.first().and_then(|x| x.requests),
        s.last().and_then(|x| x.requests),
    ) {
        (Some(a), Some(b)) => Some(
            b.saturating_sub(a)
                .saturating_sub(s.len().saturating_sub(1) as u64),
        ),
        _ => None,
    };
    let gc_bytes_per_request = requests
        .filter(|&r| r > 0)
        .map(|r| gc.fitted_change / r as f64);
    Summary {
        pid: s.first().map(|x| x.pid).unwrap_or(0),
        samples: s.len(),
        seconds: s.last().map(|x| x.t).unwrap_or(0.0),
        gc,
        rss,
        requests,
        gc_bytes_per_request,
    }
}

fn trend_line(name: &str, t: &Trend) -> String {
    match &t.fit {
        Some(f) => format!(
            "  {name}: {:+.0} ± {:.0} bytes/min (95%); {}: {}\n",
            f.slope,
            f.slope_ci95,
            verdict_name(t),
            t.evidence
        ),
        None => format!("  {name}: {}\n", t.evidence),
    }
}

fn verdict_name(t: &Trend) -> &'static str {
    match t.verdict {
        trend::Verdict::Growing => "GROWING",
        trend::Verdict::Saturating => "saturating",
        trend::Verdict::Stable => "stable",
        trend::Verdict::Shrinking => "shrinking",
        trend::Verdict::Unknown => "unknown",
    }
}

/// The human summary.
pub fn summary_text(sums: &[Summary], multi: bool, master: i32) -> String {
    let mut s = String::new();
    for (k, x) in sums.iter().enumerate() {
        let who = if multi && k == sums.len() - 1 {
            format!("all workers of {master}")
        } else {
            format!("pid {}", x.pid)
        };
        s.push_str(&format!(
            "\n{who}: {} samples over {:.1} s\n",
            x.samples, x.seconds
        ));
        s.push_str(&trend_line("GC total", &x.gc));
        s.push_str(&trend_line("RSS", &x.rss));
        if let Some(r) = x.requests {
            let per = x
                .gc_bytes_per_request
                .map(|b| format!("{b:.1} bytes of GC growth per request"))
                .unwrap_or_else(|| "no requests: growth does not track load".into());
            s.push_str(&format!("  requests: {r} during the window; {per}\n"));
        }
        s.push_str(&format!("  verdict: {}\n", verdict_name(&x.gc)));
    }
    s
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
