//! `ljleak threads`: pause, copy the heap, resume, then list every Lua
//! thread with its status and backtrace, grouped by identical stacks, and
//! what each thread alone retains (from the dominator tree of `refs`).

use std::time::Instant;

use anyhow::Result;

use crate::analysis::graph::Graph;
use crate::analysis::retained::Retained;
use crate::cli::{ThreadsArgs, ThreadsFormat, ThreadsWeight};
use crate::luajit::threads::{threads, Threads};
use crate::luajit::walk::Limits;
use crate::report::threads::{self as rep, Weight};
use crate::target::Memory;

/// Run `ljleak threads`.
pub fn run(a: ThreadsArgs) -> Result<()> {
    let opts = super::capture_opts(&a.target, &a.capture, None);
    let cap = crate::offline::capture_target(&a.target, &opts)?;
    let t0 = Instant::now();
    let vm = cap.heap_vm();
    let mut t = threads(&vm, cap.walk_limits(), a.max_depth.max(1));
    log::info!("{} threads analysed in {:?}", t.threads.len(), t0.elapsed());
    let weight = match a.weight {
        ThreadsWeight::Count => Weight::Count,
        ThreadsWeight::Bytes => Weight::Retained,
    };
    let svg = a
        .output
        .as_deref()
        .is_some_and(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("svg")));
    // Text and JSON always show retained bytes; folded stacks and flame
    // graphs need them only when weighed by bytes.
    let shown = !svg && a.format != ThreadsFormat::Folded;
    if (shown && !a.no_retained) || weight == Weight::Retained {
        add_retained(&vm, cap.walk_limits(), &mut t);
    }
    cap.check_alive()?;
    let r = rep::report(cap.pid, &cap.exe, &t, cap.pause_us, cap.consistency.name());
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
