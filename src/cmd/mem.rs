//! `ljleak mem`: the whole-process memory breakdown of a worker, or of a
//! master, its workers and their total.

use anyhow::Result;

use crate::cli::{MemArgs, MEM_FORMATS};
use crate::report::output::{with_stdout_report, Format, Formats};

/// The formats of `mem`.
const MEM: Formats = Formats {
    command: "mem",
    supported: MEM_FORMATS,
    stdout: Format::Text,
    file: Format::Json,
};
use crate::mem::{self, MemOpts, MemReport};
use crate::report::mem as render;

/// Run `ljleak mem`.
pub fn run(a: MemArgs) -> Result<()> {
    let opts = MemOpts {
        locate: super::locate_opts(&a.target),
        no_fds: a.no_fds,
        nonblocking: a.capture.nonblocking,
        attempts: a.capture.attempts,
    };
    let outs = super::emit::outputs(&MEM, &a.output, a.format)?;
    let outs = if a.format.is_none() {
        with_stdout_report(outs, Format::Text)
    } else {
        outs
    };
    if let Some(core) = &a.target.core {
        return run_core(&a, core, &opts, &outs);
    }
    let pid = a.target.pid;
    crate::target::check_process(pid)?;
    let one = |p: i32| -> Result<MemReport> { Ok(mem::breakdown(p, &opts)?) };
    if a.count > 1 {
        return series(&a, &outs, &one);
    }
    let doc = match super::workers::workers_of(pid) {
        Some(w) => {
            let master = one(pid)?;
            let mut workers = Vec::new();
            for p in w {
                match one(p) {
                    Ok(r) => workers.push(r),
                    // A worker that exits meanwhile (reload) is skipped.
                    Err(e) if !crate::target::process_alive(p) => {
                        log::warn!("worker {p} exited: {e}")
                    }
                    Err(e) => return Err(e),
                }
            }
            render::Doc::Master(Box::new(render::master_doc(master, workers)))
        }
        None => render::Doc::One(Box::new(one(pid)?)),
    };
    super::emit::emit(&outs, |f| match f {
        Format::Json => super::emit::json(&doc),
        Format::Svg => super::emit::text(render::svg(&doc)?),
        _ => super::emit::text(render::text(&doc)),
    })
}

/// `ljleak mem --core FILE`: the memory walks of the breakdown, read from a
/// core; the kernel's parts are reported absent.
fn run_core(
    a: &MemArgs,
    core: &std::path::Path,
    opts: &MemOpts,
    outs: &[crate::report::output::Output],
) -> Result<()> {
    use crate::error::{Classified, ExitCode};
    let usage =
        |m: &str| -> anyhow::Error { Classified::new(ExitCode::Usage, m.to_string()).into() };
    if a.count > 1 {
        return Err(usage(
            "mem --core reads one moment: --count needs a live process (-p PID)",
        ));
    }
    if a.no_fds {
        log::info!("--no-fds: a core holds no fds anyway");
    }
    if outs.iter().any(|o| o.format == Format::Svg) {
        return Err(usage(
            "mem --core draws no SVG (its bars add up to Rss, which a core does not hold); write .json or .txt",
        ));
    }
    let copts = crate::offline::CoreOpts {
        sysroot: a.target.sysroot.clone(),
    };
    let r = mem::breakdown_core(core, opts, &copts)?;
    super::emit::emit(outs, |f| match f {
        Format::Json => super::emit::json(&mem::core_file::json(&r)),
        _ => super::emit::text(render::core_text(&r)),
    })
}

/// `ljleak diff A B` when both are mem snapshots: deltas of every figure and
/// the gates. Returns false (nothing done) when neither is a mem snapshot.
pub(crate) fn diff(a: &crate::cli::DiffArgs, gates: &[crate::compare::gate::Gate]) -> Result<bool> {
    use crate::compare::mem_diff;
    use crate::error::{Classified, ExitCode};
    let bad = |e: String| -> anyhow::Error { Classified::new(ExitCode::BadInput, e).into() };
    let (fa, fb) = (a.a.display().to_string(), a.b.display().to_string());
    let ra = mem_diff::load(&a.a).map_err(|e| bad(e.to_string()))?;
    let rb = mem_diff::load(&a.b).map_err(|e| bad(e.to_string()))?;
    let (ra, rb) = match (ra, rb) {
        (None, None) => return Ok(false),
        (Some(x), Some(y)) => (x, y),
        (x, _) => {
            let (m, o) = if x.is_some() { (&fa, &fb) } else { (&fb, &fa) };
            return Err(bad(format!(
                "cannot compare {m} (mem) with {o} (another kind): give two `ljleak mem` snapshots"
            )));
        }
    };
    // A core has no kernel figures (Rss, fds...): against a live report
    // every one of them would read as a change.
    if ra.core.is_some() != rb.core.is_some() {
        let (c, l) = if ra.core.is_some() {
            (&fa, &fb)
        } else {
            (&fb, &fa)
        };
        return Err(bad(format!(
            "cannot compare {c} (read from a core file) with {l} (a live process): a core \
             lacks the kernel's figures; compare two core reports or two live ones"
        )));
    }
    let d = mem_diff::diff(&fa, &ra, &fb, &rb);
    let mut results = Vec::new();
    for g in gates {
        let mut g = g.clone();
        mem_diff::rewrite_gate(&mut g);
        results.push(
            g.eval(&d)
                .map_err(|e| Classified::new(ExitCode::Usage, e.to_string()))?,
        );
    }
    let tripped: Vec<String> = results
        .iter()
        .filter(|r| r.tripped)
        .map(|r| format!("{} (observed {})", r.expr, r.observed))
        .collect();
    use crate::report::output::{with_stdout_report, Format, Formats};
    let outs = super::emit::outputs(
        &Formats {
            command: "diff",
            supported: &[Format::Text, Format::Json, Format::Markdown],
            stdout: Format::Text,
            file: Format::Text,
        },
        &a.output,
        a.format,
    )?;
    let outs = if a.format.is_none() {
        with_stdout_report(outs, Format::Text)
    } else {
        outs
    };
    super::emit::emit(&outs, |f| match f {
        Format::Json => super::emit::json(&serde_json::json!({
            "kind": "mem",
            "mem": d,
            "gates": results,
            "tripped": tripped.len(),
        })),
        Format::Markdown => super::emit::text(
            mem_diff::text(&d, a.top)
                + &crate::report::diff::gates(&results, crate::report::diff::Style::Markdown),
        ),
        _ => super::emit::text(
            mem_diff::text(&d, a.top)
                + &crate::report::diff::gates(&results, crate::report::diff::Style::Text),
        ),
    })?;
    if !tripped.is_empty() {
        return Err(Classified::new(
            ExitCode::GateTripped,
            format!("{} gate(s) tripped: {}", tripped.len(), tripped.join(", ")),
        )
        .into());
    }
    Ok(true)
}

/// `--count N`: sample the process (a master's total) N times and name the
/// component that grows.
fn series(
    a: &MemArgs,
    outs: &[crate::report::output::Output],
    one: &dyn Fn(i32) -> Result<MemReport>,
) -> Result<()> {
    use crate::compare::mem_trend;
    let live = outs
        .iter()
        .any(|o| o.path.is_none() && o.format == Format::Text);
    let pid = a.target.pid;
    let start = std::time::Instant::now();
    let mut reps: Vec<(f64, MemReport)> = Vec::new();
    for i in 0..a.count {
        if i > 0 {
            std::thread::sleep(a.interval);
        }
        let t = start.elapsed().as_secs_f64() / 60.0;
        let r = match super::workers::workers_of(pid) {
            Some(w) => {
                let master = one(pid)?;
                let workers = w.into_iter().filter_map(|p| one(p).ok()).collect();
                render::master_doc(master, workers).total
            }
            None => one(pid)?,
        };
        if live {
            eprintln!("{:>8.1}s {}", t * 60.0, render::headline(&r));
        }
        reps.push((t, r));
    }
    let s: Vec<(f64, &MemReport)> = reps.iter().map(|(t, r)| (*t, r)).collect();
    let comps = mem_trend::components(&s);
    let verdict = mem_trend::verdict(&comps);
    let json = || {
        serde_json::json!({
            "kind": "mem-series",
            "pid": pid,
            "verdict": verdict,
            "components": comps,
            "samples": reps.iter().map(|(t, r)| serde_json::json!({"minutes": t, "report": r})).collect::<Vec<_>>(),
        })
    };
    let text = || {
        let mut s = String::new();
        for c in &comps {
            let slope = c.trend.fit.map(|f| f.slope).unwrap_or(0.0);
            let sign = if slope < 0.0 { "-" } else { "+" };
            s.push_str(&format!(
                "{:<20} {sign}{:>12}/min  {}\n",
                c.name,
                render::human(slope.abs() as u64),
                c.trend.evidence
            ));
        }
        s + &format!("verdict: {verdict}\n")
    };
    super::emit::emit(outs, |f| match f {
        Format::Json => super::emit::json(&json()),
        Format::Svg => Err(crate::error::Classified::new(
            crate::error::ExitCode::Usage,
            "mem --count draws no SVG; write .json or .txt".to_string(),
        )
        .into()),
        _ => super::emit::text(text()),
    })
}
