//! `ljleak gc` and `ljleak objs`.

use std::time::{Duration, Instant};

use anyhow::Result;

use super::emit;
use crate::capture;
use crate::cli::{CaptureArgs, GcArgs, ObjsArgs, TargetArgs, GC_FORMATS, OBJS_FORMATS};
use crate::luajit::layout::gc_state_name;
use crate::luajit::{census, Vm};
use crate::report::census::{
    census_folded, census_report, census_text, gc_text, luajit_info, CensusReport,
};
use crate::report::output::{Format, Formats};
use crate::target::ProcessMemory;

/// `ljleak gc`: one read of `g->gc.total`, no pause needed. Given an nginx
/// master, every worker in turn plus the total.
pub fn gc(a: GcArgs) -> Result<()> {
    let spec = Formats {
        command: "gc",
        supported: GC_FORMATS,
        stdout: Format::Text,
        file: Format::Json,
    };
    let outs = emit::outputs(&spec, &a.output, a.format)?;
    if let Some(w) = super::workers::workers_of(a.target.pid) {
        let one = |pid| {
            gc_report(&TargetArgs {
                pid,
                ..a.target.clone()
            })
        };
        let reps = super::workers::collect_each(a.target.pid, &w, one)?;
        return emit::emit(&outs, |f| {
            super::workers::render_workers(a.target.pid, &reps, f == Format::Json, gc_text)
                .map(String::into_bytes)
        });
    }
    let r = gc_report(&a.target)?;
    emit::emit(&outs, |f| match f {
        Format::Json => emit::json(&r),
        _ => emit::text(gc_text(&r)),
    })
}

/// The `gc` report of one process.
pub fn gc_report(t: &TargetArgs) -> Result<CensusReport> {
    let pid = t.pid;
    let (exe, _maps, vm) = capture::locate(pid, &super::locate_opts(t))?;
    log::info!("VM found by {}", vm.method.name());
    let mem = ProcessMemory::new(pid);
    let v = Vm::new(&mem, &vm.layout, vm.roots.g, vm.roots.main);
    let total = v.gc_total().map_err(|e| {
        crate::target::TargetError::from_io(pid, "reading gc.total", std::io::Error::other(e))
    })?;
    let mut r = CensusReport {
        kind: "gc".into(),
        pid,
        exe,
        luajit: luajit_info(&vm),
        gc_total: total,
        walker_total: None,
        gc_state: gc_state_name(v.gc_state().unwrap_or(u64::MAX)).into(),
        gc_threshold: vm.layout.f.g_threshold.get(&mem, vm.roots.g).unwrap_or(0),
        pause_us: 0,
        consistency: "none".into(),
        stopped_in: None,
        types: Default::default(),
        dead: Default::default(),
        cdata_types: Vec::new(),
        overheads: None,
        mcode_jit: 0,
        mcode_callbacks: 0,
        objects: 0,
        image_bytes: 0,
        walk_us: 0,
        walk_cpu_us: 0,
        warnings: Vec::new(),
        ..Default::default()
    };
    r.stamp(crate::report::envelope::Stamp::now(pid, &r.exe));
    Ok(r)
}

pub use crate::report::census::WalkTime;

fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// Take a census of `pid` (shared by objs and later commands).
pub fn take_census(
    t: &TargetArgs,
    c: &CaptureArgs,
    hold: Option<Duration>,
) -> Result<(capture::Capture, census::Census, WalkTime)> {
    let cap = crate::offline::capture_target(t, &super::capture_opts(t, c, hold))?;
    for n in &cap.vm.notes {
        log::info!("{n}");
    }
    log::info!(
        "VM found by {}; layout {} ({}); paused {} us in {} attempt(s); copied {} bytes",
        cap.vm.method.name(),
        cap.vm.layout.name,
        cap.vm.layout.source.kind(),
        cap.pause_us,
        cap.attempts,
        cap.image.total_bytes()
    );
    let t0 = Instant::now();
    let cpu0 = thread_cpu();
    let vm = cap.heap_vm();
    let lim = cap.walk_limits();
    let c = census::take(&vm, lim);
    cap.check_alive()?;
    if let crate::target::HeapSource::Paged(p) = &cap.image {
        let st = p.stats();
        log::info!(
            "fork snapshot read: {} reads, {} blocks fetched; target copied {} bytes on write",
            st.reads,
            st.misses,
            cap.cow_bytes()
        );
    }
    let walk = WalkTime {
        wall_us: t0.elapsed().as_micros() as u64,
        cpu_us: thread_cpu().saturating_sub(cpu0).as_micros() as u64,
    };
    log::info!(
        "walked {} objects in {} us ({} us of CPU)",
        c.walk.objects,
        walk.wall_us,
        walk.cpu_us
    );
    Ok((cap, c, walk))
}

/// The formats of `objs`.
const OBJS: Formats = Formats {
    command: "objs",
    supported: OBJS_FORMATS,
    stdout: Format::Text,
    file: Format::Json,
};

/// `ljleak objs`. Given an nginx master, every worker in turn (each paused
/// alone) plus the total.
pub fn objs(a: ObjsArgs) -> Result<()> {
    let hold = a.debug_hold_pause_ms.map(Duration::from_millis);
    let outs = emit::outputs(&OBJS, &a.output, a.format)?;
    let workers = match a.target.core {
        Some(_) => None,
        None => super::workers::workers_of(a.target.pid),
    };
    if let Some(w) = workers {
        let one = |pid| {
            let t = TargetArgs {
                pid,
                ..a.target.clone()
            };
            let (cap, c, walk) = take_census(&t, &a.capture, hold)?;
            Ok(census_report(&cap, &c, walk))
        };
        let reps = super::workers::collect_each(a.target.pid, &w, one)?;
        return emit::emit(&outs, |f| match f {
            Format::Pprof => Ok(crate::report::pprof::encode(
                &crate::report::pprof::from_censuses(&reps, true),
            )?),
            Format::Folded => emit::text(workers_folded(&reps)),
            Format::Svg => emit::text(census_svg(
                &format!("nginx master {}, {} workers", a.target.pid, reps.len()),
                &workers_folded(&reps),
            )?),
            _ => super::workers::render_workers(a.target.pid, &reps, f == Format::Json, |r| {
                census_text(r, a.top_cdata)
            })
            .map(String::into_bytes),
        });
    }
    let (cap, c, walk) = take_census(&a.target, &a.capture, hold)?;
    if let Some(p) = &a.save_image {
        let img = cap.image.image().ok_or_else(|| {
            anyhow::anyhow!("--save-image needs a copied heap: add --snapshot copy")
        })?;
        img.save(p).map_err(|e| {
            anyhow::anyhow!(
                "cannot write heap image {}: {e} (choose a new file in a writable folder)",
                p.display()
            )
        })?;
    }
    let mut r = census_report(&cap, &c, walk);
    if let Some(core) = &a.target.core {
        r.exe_build_id = crate::offline::core_exe_build_id(core);
    }
    emit::emit(&outs, |f| match f {
        Format::Pprof => Ok(crate::report::pprof::encode(
            &crate::report::pprof::from_census(&r),
        )?),
        Format::Folded => emit::text(folded_lines(&census_folded(&r), None)),
        Format::Svg => emit::text(census_svg(
            &format!("pid {}", r.pid),
            &folded_lines(&census_folded(&r), None),
        )?),
        Format::Json => emit::json(&r),
        _ => emit::text(census_text(&r, a.top_cdata)),
    })
}

/// Folded lines of a census, each stack under `prefix` when given.
fn folded_lines(f: &std::collections::BTreeMap<String, u64>, prefix: Option<&str>) -> String {
    f.iter()
        .map(|(s, n)| match prefix {
            Some(p) => format!("{p};{s} {n}\n"),
            None => format!("{s} {n}\n"),
        })
        .collect()
}

/// Every worker's census, each under a `pid N` frame.
fn workers_folded(reps: &[CensusReport]) -> String {
    reps.iter()
        .map(|r| folded_lines(&census_folded(r), Some(&format!("pid {}", r.pid))))
        .collect()
}

/// The census flame graph: width = bytes by type, C type and table size.
fn census_svg(who: &str, folded: &str) -> Result<String> {
    crate::report::flame::svg(
        &crate::report::flame::Flame {
            title: "Lua heap by object type".into(),
            what: who.into(),
            unit: "bytes".into(),
            trim: false,
        },
        folded.lines(),
    )
}
