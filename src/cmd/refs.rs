//! `ljleak refs`: copy the heap (pausing briefly), resume the target, then
//! build the object graph, its dominator tree and retained sizes, and report
//! leak suspects, the objects asked for, and a retention flame graph.

use std::fmt::Write as _;
use std::time::Instant;

use anyhow::{Context, Result};

use super::emit;
use crate::analysis::graph::{Graph, NodeId};
use crate::analysis::retention::Retention;
use crate::cli::{RefsArgs, REFS_FORMATS};
use crate::error::{Classified, ExitCode};
use crate::luajit::census::type_index;
use crate::luajit::refs::Refs;
use crate::luajit::vm::{type_name, TYPE_NAMES};
use crate::report::census::luajit_info;
use crate::report::output::{with_stdout_report, Format, Formats};
use crate::report::refs::{refs_text, refs_total_text, total_of, HeldObject, RefsReport};
use crate::target::Memory;

/// The formats of `refs`.
const REFS: Formats = Formats {
    command: "refs",
    supported: REFS_FORMATS,
    stdout: Format::Text,
    file: Format::Svg,
};

/// `ljleak refs`. Given an nginx master, every worker in turn (each paused
/// alone): one section per worker, and suspects summed by path over them.
pub fn refs(a: RefsArgs) -> Result<()> {
    let want_type = match &a.ty {
        None => None,
        Some(t) => Some(
            type_index(t).ok_or_else(|| {
                Classified::new(
                    ExitCode::Usage,
                    format!("unknown --type `{t}`: use one of {}", TYPE_NAMES.join(", ")),
                )
            })? as u8
                + crate::luajit::vm::gct::STR,
        ),
    };
    // A V8 heap snapshot is written by one_process, beside the formats
    // the output rule knows.
    let mut files: Vec<std::path::PathBuf> = a
        .output
        .iter()
        .filter(|p| !is_heapsnapshot(p))
        .cloned()
        .collect();
    if let Some(f) = &a.folded {
        files.push(f.clone());
    }
    let outs = emit::outputs(&REFS, &files, a.format)?;
    let outs = if files.len() == 1 && a.folded.is_some() {
        // `--folded FILE` alone keeps the text report on stdout.
        with_stdout_report(outs, a.format.unwrap_or(Format::Text))
    } else if a.format.is_none() {
        with_stdout_report(outs, Format::Text)
    } else {
        outs
    };
    let graphic = outs
        .iter()
        .any(|o| matches!(o.format, Format::Svg | Format::Folded));
    let workers = match a.target.core {
        Some(_) => None,
        None => super::workers::workers_of(a.target.pid),
    };
    if let Some(w) = workers {
        let master = a.target.pid;
        if a.output.iter().any(|p| is_heapsnapshot(p)) {
            return Err(Classified::new(
                ExitCode::Usage,
                format!("a heap snapshot holds one process: give one worker of master {master} (-p WORKER)"),
            )
            .into());
        }
        let one = |pid| one_process(&a, pid, want_type, graphic);
        let reps = super::workers::collect_each(master, &w, one)?;
        let total = total_of(&reps.iter().map(|x| &x.0).collect::<Vec<_>>(), a.top);
        let folded: String = reps
            .iter()
            .flat_map(|(r, lines)| lines.iter().map(move |l| format!("pid {};{l}\n", r.pid)))
            .collect();
        return emit::emit(&outs, |f| match f {
            Format::Json => {
                let list: Vec<&RefsReport> = reps.iter().map(|x| &x.0).collect();
                emit::json(&super::workers::PerWorker {
                    schema: crate::report::envelope::SCHEMA_VERSION,
                    kind: "workers",
                    of: "refs",
                    master,
                    workers: &list,
                    total: Some(&total),
                })
            }
            Format::Folded => emit::text(folded.clone()),
            Format::Svg => emit::text(flamegraph(
                folded.lines(),
                &format!("nginx master {master}, {} workers", reps.len()),
            )?),
            _ => emit::text(super::workers::sections(
                master,
                &reps,
                |x| x.0.pid,
                |x| refs_text(&x.0),
                &refs_total_text(&total),
            )),
        });
    }
    let (r, lines) = one_process(&a, a.target.pid, want_type, graphic)?;
    emit::emit(&outs, |f| match f {
        Format::Json => emit::json(&r),
        Format::Folded => emit::text(lines.iter().map(|l| format!("{l}\n")).collect()),
        Format::Svg => emit::text(flamegraph(
            lines.iter().map(String::as_str),
            &format!("pid {}", r.pid),
        )?),
        _ => emit::text(refs_text(&r)),
    })
}

/// The refs report of one process and, when `graphic`, its retention
/// flame graph's folded lines.
fn one_process(
    a: &RefsArgs,
    pid: i32,
    want_type: Option<u8>,
    graphic: bool,
) -> Result<(RefsReport, Vec<String>)> {
    let t = crate::cli::TargetArgs {
        pid,
        ..a.target.clone()
    };
    let opts = super::capture_opts(&t, &a.capture, None);
    let cap = crate::offline::capture_target(&t, &opts)?;
    log::info!(
        "layout {}; paused {} us; copied {} bytes",
        cap.vm.layout.name,
        cap.pause_us,
        cap.image.total_bytes()
    );
    let t0 = Instant::now();
    let vm = cap.heap_vm();
    let lim = cap.walk_limits();
    let graph = Graph::build(&vm, lim);
    let t_graph = t0.elapsed();
    if graph.cleared_entries > 0 {
        log::info!(
            "{} weak-keyed entries have a dead key: the next GC cycle clears them",
            graph.cleared_entries
        );
    }
    let ret = Retention::compute(&graph);
    let analysis_us = t0.elapsed().as_micros() as u64;
    log::info!(
        "graph of {} objects and {} references in {} ms; dominators and paths in {} ms",
        graph.len(),
        graph.edges(),
        t_graph.as_millis(),
        (t0.elapsed() - t_graph).as_millis()
    );
    let mut refs = Refs::new(&vm);
    let suspects = ret
        .suspects(a.top, 1)
        .into_iter()
        .map(|v| held(&graph, &ret, &mut refs, v))
        .collect();
    let (picked, omitted) = matches(&graph, a, want_type);
    let matches = picked
        .into_iter()
        .map(|v| held(&graph, &ret, &mut refs, v))
        .collect();
    for p in a.output.iter().filter(|p| is_heapsnapshot(p)) {
        let t = Instant::now();
        let mut names = Refs::new(&vm);
        let w = super::dump::write_new_file(p, |out| {
            crate::report::heapsnapshot::write(out, &graph, &mut names).map(|w| {
                log::info!(
                    "heap snapshot: {} nodes, {} edges, {} bytes in {} ms",
                    w.nodes,
                    w.edges,
                    w.bytes,
                    t.elapsed().as_millis()
                );
                w.bytes
            })
        })?;
        log::debug!("wrote {w} bytes to {}", p.display());
    }
    let mut lines = Vec::new();
    if graphic {
        let (reach_bytes, _) = ret.reachable();
        let min = a.min_frame.unwrap_or(reach_bytes / 2000).max(1);
        lines = crate::report::flame::group_siblings(
            &ret.folded(&graph, &mut refs, min),
            crate::report::flame::GROUP_SIBLINGS,
        );
    }
    if let Some(p) = &a.dump_graph {
        super::write_output(Some(p), &dump_graph(&graph))?;
    }
    cap.check_alive()?;
    let (reachable_bytes, reachable_objects) = ret.reachable();
    let mut warnings = graph.walk.warnings.clone();
    warnings.extend(graph.warnings.iter().cloned());
    let r = RefsReport {
        kind: "refs".into(),
        pid: cap.pid,
        exe: cap.exe.clone(),
        luajit: luajit_info(&cap.vm),
        gc_total: vm.gc_total().unwrap_or(0),
        objects: graph.len() as u64,
        object_bytes: graph.walk.object_bytes,
        edges: graph.edges() as u64,
        reachable_objects,
        reachable_bytes,
        image_bytes: cap.image.total_bytes(),
        snapshot: cap.method().into(),
        cow_bytes: cap.cow_bytes(),
        pause_us: cap.pause_us,
        consistency: cap.consistency.name().into(),
        analysis_us,
        suspects,
        matches,
        matches_omitted: omitted as u64,
        warnings,
    };
    Ok((r, lines))
}

/// The retention facts of node `v`.
fn held<M: Memory + ?Sized>(
    g: &Graph,
    ret: &Retention,
    refs: &mut Refs<'_, '_, M>,
    v: NodeId,
) -> HeldObject {
    let k = ret.pre(v);
    let path = ret.path_names(g, refs, v);
    HeldObject {
        addr: format!("{:#x}", g.addr[v as usize]),
        ty: type_name(g.gct[v as usize]).into(),
        desc: refs.describe(g.addr[v as usize]),
        size: g.size[v as usize],
        retained: k.map_or(0, |k| ret.retained[k]),
        retained_objects: k.map_or(0, |k| ret.count[k]),
        accumulated: k.map_or(0, |k| ret.accumulated[k]),
        reachable: path.is_some(),
        path: path.unwrap_or_default(),
    }
}

/// Objects named by `--addr` (an address anywhere inside the object, so
/// a cdata's payload address works too), then those matching `--size` /
/// `--type`, biggest first, at most `--limit`; and how many were left out.
fn matches(g: &Graph, a: &RefsArgs, ty: Option<u8>) -> (Vec<NodeId>, usize) {
    let mut out: Vec<NodeId> = Vec::new();
    for &x in &a.addr {
        let i = g.addr.partition_point(|&o| o <= x);
        if i > 0 && x < g.addr[i - 1] + g.size[i - 1].max(1) {
            out.push((i - 1) as NodeId);
        } else {
            log::warn!("no object at {x:#x}");
        }
    }
    if a.size.is_none() && ty.is_none() {
        return (out, 0);
    }
    let min = a.size.unwrap_or(0);
    let mut found: Vec<NodeId> = (0..g.len() as NodeId)
        .filter(|&v| g.size[v as usize] >= min && ty.is_none_or(|t| g.gct[v as usize] == t))
        .collect();
    found.sort_unstable_by(|&x, &y| g.size[y as usize].cmp(&g.size[x as usize]).then(x.cmp(&y)));
    let omitted = found.len().saturating_sub(a.limit);
    found.truncate(a.limit);
    out.extend(found);
    (out, omitted)
}

fn flamegraph<'l>(lines: impl IntoIterator<Item = &'l str>, who: &str) -> Result<String> {
    crate::report::flame::svg(
        &crate::report::flame::Flame {
            title: "Retention flame graph".into(),
            what: format!(
                "{who}: width = bytes retained; each frame a reference path from a GC root"
            ),
            unit: "bytes".into(),
            trim: false,
        },
        lines,
    )
    .context("drawing the retention flame graph")
}

/// The strong graph as JSON: `nodes` as `[addr, type, size]`, `edges` as
/// `[from, to]` node indexes, `roots` as node indexes.
fn dump_graph(g: &Graph) -> String {
    let mut s = String::with_capacity(64 * g.len() + 16 * g.edges());
    s.push_str("{\"nodes\":[");
    for i in 0..g.len() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(
            s,
            "[{},\"{}\",{}]",
            g.addr[i],
            type_name(g.gct[i]),
            g.size[i]
        );
    }
    s.push_str("],\"edges\":[");
    let mut first = true;
    for u in 0..g.len() as NodeId {
        for &v in g.succ(u) {
            if !first {
                s.push(',');
            }
            first = false;
            let _ = write!(s, "[{u},{v}]");
        }
    }
    s.push_str("],\"roots\":[");
    for (i, r) in g.roots.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{r}");
    }
    s.push_str("]}\n");
    s
}

/// `-o X.heapsnapshot`: the object graph for Chrome DevTools and memlab.
fn is_heapsnapshot(p: &std::path::Path) -> bool {
    p.extension().is_some_and(|e| e == "heapsnapshot")
}
