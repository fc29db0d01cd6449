//! `ljleak gc` and `ljleak objs`.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::capture;
use crate::cli::{CaptureArgs, CensusFormat, GcArgs, ObjsArgs, TargetArgs};
use crate::luajit::layout::gc_state_name;
use crate::luajit::{census, Vm};
use crate::report::census::{census_report, census_text, gc_text, luajit_info, CensusReport};
use crate::target::ProcessMemory;

/// `ljleak gc`: one read of `g->gc.total`, no pause needed. Given an nginx
/// master, every worker in turn plus the total.
pub fn gc(a: GcArgs) -> Result<()> {
    if a.format == CensusFormat::Pprof {
        anyhow::bail!(
            "gc has no pprof form (one number): use `ljleak objs --format pprof -o FILE`"
        );
    }
    let json = a.format == CensusFormat::Json;
    if let Some(w) = super::workers::workers_of(a.target.pid) {
        let one = |pid| {
            gc_report(&TargetArgs {
                pid,
                ..a.target.clone()
            })
        };
        let text = super::workers::for_each_worker(a.target.pid, &w, json, one, gc_text)?;
        return super::write_output(None, &text);
    }
    let r = gc_report(&a.target)?;
    let text = match a.format {
        CensusFormat::Text | CensusFormat::Pprof => gc_text(&r),
        CensusFormat::Json => serde_json::to_string_pretty(&r)? + "\n",
    };
    super::write_output(None, &text)
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

/// How long the walk of the copy took: wall clock, and this thread's CPU
/// time (what benchmarks compare: it does not grow when other processes
/// compete for the CPU).
#[derive(Debug, Clone, Copy, Default)]
pub struct WalkTime {
    /// Wall-clock microseconds.
    pub wall_us: u64,
    /// CPU microseconds of the walking thread.
    pub cpu_us: u64,
}

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

/// `ljleak objs`. Given an nginx master, every worker in turn (each paused
/// alone) plus the total.
pub fn objs(a: ObjsArgs) -> Result<()> {
    let hold = a.debug_hold_pause_ms.map(Duration::from_millis);
    let format = a.format.unwrap_or(if a.output.is_some() {
        CensusFormat::Json
    } else {
        CensusFormat::Text
    });
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
        if format == CensusFormat::Pprof {
            let reps = super::workers::collect(&w, one)?;
            return super::convert::write_pprof(
                a.output.as_deref(),
                &crate::report::pprof::from_censuses(&reps, true),
            );
        }
        let text = super::workers::for_each_worker(
            a.target.pid,
            &w,
            format == CensusFormat::Json,
            one,
            |r| census_text(r, a.top_cdata),
        )?;
        return super::write_output(a.output.as_deref(), &text);
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
    let text = match format {
        CensusFormat::Pprof => {
            return super::convert::write_pprof(
                a.output.as_deref(),
                &crate::report::pprof::from_census(&r),
            )
        }
        CensusFormat::Text => census_text(&r, a.top_cdata),
        CensusFormat::Json => serde_json::to_string_pretty(&r)? + "\n",
    };
    super::write_output(a.output.as_deref(), &text)
}
