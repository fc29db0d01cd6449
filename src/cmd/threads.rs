//! `ljleak threads`: pause, copy the heap, resume, then list every Lua
//! thread with its status and backtrace, grouped by identical stacks, and
//! what each thread alone retains (from the dominator tree of `refs`).

use std::time::Instant;

use anyhow::Result;

use super::emit;
use crate::analysis::graph::Graph;
use crate::analysis::retained::Retained;
use crate::cli::{ThreadsArgs, ThreadsWeight, THREADS_FORMATS};
use crate::luajit::threads::{threads, Threads};
use crate::luajit::walk::Limits;
use crate::report::output::{with_stdout_report, Format, Formats};
use crate::report::threads::{self as rep, Weight};
use crate::target::Memory;

/// The formats of `threads`.
const THREADS: Formats = Formats {
    command: "threads",
    supported: THREADS_FORMATS,
    stdout: Format::Text,
    file: Format::Text,
};

/// Run `ljleak threads`. Given an nginx master, every worker in turn (each
/// paused alone): a section per worker, and the thread counts summed.
pub fn run(a: ThreadsArgs) -> Result<()> {
    let outs = emit::outputs(&THREADS, &a.output, a.format)?;
    let outs = if a.format.is_none() {
        with_stdout_report(outs, Format::Text)
    } else {
        outs
    };
    let weight = match a.weight {
        ThreadsWeight::Count => Weight::Count,
        ThreadsWeight::Bytes => Weight::Retained,
    };
    // Text and JSON always show retained bytes; folded stacks and flame
    // graphs need them only when weighed by bytes.
    let shown = outs
        .iter()
        .any(|o| matches!(o.format, Format::Text | Format::Json));
    let retained = (shown && !a.no_retained) || weight == Weight::Retained;
    let draw = |folded: &str, who: &str| {
        crate::report::flame::svg(
            &crate::report::flame::Flame {
                title: "Lua threads".into(),
                what: format!("{who}: each stack a group of threads, root first"),
                unit: match weight {
                    Weight::Count => "threads".into(),
                    Weight::Retained => "bytes".into(),
                },
                trim: false,
            },
            folded.lines(),
        )
    };
    let workers = match a.target.core {
        Some(_) => None,
        None => super::workers::workers_of(a.target.pid),
    };
    if let Some(w) = workers {
        let master = a.target.pid;
        let reps = super::workers::collect_each(master, &w, |pid| one(&a, pid, retained))?;
        let total = rep::total_of(&reps);
        let folded: String = reps
            .iter()
            .flat_map(|r| {
                rep::folded(r, weight)
                    .lines()
                    .map(|l| format!("pid {};{l}\n", r.pid))
                    .collect::<Vec<_>>()
            })
            .collect();
        return emit::emit(&outs, |f| match f {
            Format::Json => emit::json(&super::workers::PerWorker {
                schema: crate::report::envelope::SCHEMA_VERSION,
                kind: "workers",
                of: "threads",
                master,
                workers: &reps,
                total: Some(&total),
            }),
            Format::Folded => emit::text(folded.clone()),
            Format::Svg => emit::text(draw(
                &folded,
                &format!("nginx master {master}, {} workers", reps.len()),
            )?),
            _ => emit::text(super::workers::sections(
                master,
                &reps,
                |r| r.pid,
                rep::text,
                &rep::total_text(&total),
            )),
        });
    }
    let r = one(&a, a.target.pid, retained)?;
    emit::emit(&outs, |f| match f {
        Format::Json => emit::json(&r),
        Format::Folded => emit::text(rep::folded(&r, weight)),
        Format::Svg => emit::text(draw(&rep::folded(&r, weight), &format!("pid {}", r.pid))?),
        _ => emit::text(rep::text(&r)),
    })
}

/// The threads report of one process.
fn one(a: &ThreadsArgs, pid: i32, retained: bool) -> Result<rep::ThreadsReport> {
    let t = crate::cli::TargetArgs {
        pid,
        ..a.target.clone()
    };
    let opts = super::capture_opts(&t, &a.capture, None);
    let cap = crate::offline::capture_target(&t, &opts)?;
    let t0 = Instant::now();
    let vm = cap.heap_vm();
    let mut t = threads(&vm, cap.walk_limits(), a.max_depth.max(1));
    log::info!("{} threads analysed in {:?}", t.threads.len(), t0.elapsed());
    if retained {
        add_retained(&vm, cap.walk_limits(), &mut t);
    }
    cap.check_alive()?;
    Ok(rep::report(
        cap.pid,
        &cap.exe,
        &t,
        cap.pause_us,
        cap.consistency.name(),
    ))
}

/// Build the object graph of the copy and its dominator tree, and set each
/// thread's retained bytes and the thread (if any) whose bytes include it.
fn add_retained<M: Memory + ?Sized>(vm: &crate::luajit::Vm<'_, M>, lim: Limits, t: &mut Threads) {
    let t0 = Instant::now();
    let g = Graph::build(vm, lim);
    let t_graph = t0.elapsed();
    let ret = Retained::compute(&g);
    let nodes: Vec<_> = t.threads.iter().map(|th| g.index(th.addr)).collect();
    let members: Vec<_> = nodes.iter().flatten().copied().collect();
    let mut near = ret.nearest_dominating(&members).into_iter();
    for (th, v) in t.threads.iter_mut().zip(nodes) {
        let Some(v) = v else { continue };
        // An unreachable thread is garbage: freeing it frees nothing more.
        th.retained = Some(ret.of(v).unwrap_or(0));
        th.held_by = near.next().flatten().map(|u| g.addr[u as usize]);
    }
    t.warnings.extend(g.warnings.iter().cloned());
    log::info!(
        "retained sizes: graph of {} objects and {} references in {} ms, dominators in {} ms",
        g.len(),
        g.edges(),
        t_graph.as_millis(),
        (t0.elapsed() - t_graph).as_millis()
    );
}
