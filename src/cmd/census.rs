//! `ljleak gc` and `ljleak objs`.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::capture::{self, CaptureOpts};
use crate::cli::{CensusFormat, GcArgs, ObjsArgs, TargetArgs};
use crate::luajit::layout::gc_state_name;
use crate::luajit::walk::Limits;
use crate::luajit::{census, LocateOpts, Vm};
use crate::report::census::{census_report, census_text, gc_text, luajit_info, CensusReport};
use crate::target::ProcessMemory;

pub(crate) fn locate_opts(t: &TargetArgs) -> LocateOpts {
    LocateOpts {
        lua_state: t.lua_state,
        layout: t.layout.clone(),
    }
}

/// `ljleak gc`: one read of `g->gc.total`, no pause needed.
pub fn gc(a: GcArgs) -> Result<()> {
    let pid = a.target.pid;
    let (exe, _maps, vm) = capture::locate(pid, &locate_opts(&a.target))?;
    log::info!("VM found by {}", vm.method.name());
    let mem = ProcessMemory::new(pid);
    let v = Vm::new(&mem, &vm.layout, vm.roots.g, vm.roots.main);
    let total = v.gc_total().map_err(|e| {
        crate::target::TargetError::from_io(pid, "reading gc.total", std::io::Error::other(e))
    })?;
    let r = CensusReport {
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
        warnings: Vec::new(),
    };
    let text = match a.format {
        CensusFormat::Text => gc_text(&r),
        CensusFormat::Json => serde_json::to_string_pretty(&r)? + "\n",
    };
    super::write_output(None, &text)
}

/// Take a census of `pid` (shared by objs and later commands).
pub fn take_census(
    t: &TargetArgs,
    nonblocking: bool,
    attempts: u32,
    hold: Option<Duration>,
) -> Result<(capture::Capture, census::Census, u64)> {
    let opts = CaptureOpts {
        locate: locate_opts(t),
        nonblocking,
        attempts,
        hold_pause: hold,
    };
    let cap = capture::capture(t.pid, &opts)?;
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
    let vm = Vm::new(
        &cap.image,
        &cap.vm.layout,
        cap.vm.roots.g,
        cap.vm.roots.main,
    );
    // No list can hold more objects than the copy has room for.
    let lim = Limits {
        max_objects: cap.image.total_bytes() / 16 + 16,
    };
    let c = census::take(&vm, lim);
    let walk_us = t0.elapsed().as_micros() as u64;
    log::info!("walked {} objects in {} us", c.walk.objects, walk_us);
    Ok((cap, c, walk_us))
}

/// `ljleak objs`.
pub fn objs(a: ObjsArgs) -> Result<()> {
    let hold = a.debug_hold_pause_ms.map(Duration::from_millis);
    let (cap, c, walk_us) = take_census(&a.target, a.nonblocking, a.attempts, hold)?;
    if let Some(p) = &a.save_image {
        cap.image.save(p)?;
    }
    let r = census_report(&cap, &c, walk_us);
    let text = match a.format {
        CensusFormat::Text => census_text(&r, a.top_cdata),
        CensusFormat::Json => serde_json::to_string_pretty(&r)? + "\n",
    };
    super::write_output(a.output.as_deref(), &text)
}
