//! `ljleak gc` and `ljleak objs` reports: lj-gc / lj-gc-objs compatible text
//! and a stable JSON object.

use std::fmt::Write as _;

use crate::capture::Capture;
use crate::luajit::census::Census;
use crate::luajit::layout::gc_state_name;
use crate::model::envelope::Stamp;

pub use crate::model::census::{CensusReport, LuajitInfo, TypeStats, WalkTime};

/// LuaJIT info from a found VM.
pub fn luajit_info(vm: &crate::luajit::FoundVm) -> LuajitInfo {
    LuajitInfo {
        variant: vm.layout.variant.name().into(),
        gc64: vm.layout.gc64,
        layout: vm.layout.name.clone(),
        layout_source: vm.layout.source.kind().into(),
        method: format!("{:?}", vm.method).to_lowercase(),
        lua_state: format!("{:#x}", vm.roots.l),
        global_state: format!("{:#x}", vm.roots.g),
        object: vm.luajit_object.clone(),
    }
}

/// Build the census report.
pub fn census_report(cap: &Capture, c: &Census, walk: WalkTime) -> CensusReport {
    let types = c
        .by_count()
        .into_iter()
        .map(|(n, s)| (n.to_string(), TypeStats::from(s)))
        .collect();
    let mut warnings = c.walk.warnings.clone();
    if c.walker_total() != c.gc_total && warnings.is_empty() {
        warnings.push(format!(
            "walker total {} differs from gc.total {} by {}",
            c.walker_total(),
            c.gc_total,
            c.walker_total() as i64 - c.gc_total as i64
        ));
    }
    let mut r = CensusReport {
        kind: "census".into(),
        pid: cap.pid,
        exe: cap.exe.clone(),
        luajit: luajit_info(&cap.vm),
        gc_total: c.gc_total,
        walker_total: Some(c.walker_total()),
        gc_state: gc_state_name(c.gc_state).into(),
        gc_threshold: c.gc_threshold,
        pause_us: cap.pause_us,
        consistency: cap.consistency.name().into(),
        stopped_in: cap.quiescence.map(|q| q.describe()),
        types,
        dead: c.dead,
        cdata_types: c.cdata_types.clone(),
        overheads: Some(*c.overheads()),
        mcode_jit: c.mcode_jit,
        mcode_callbacks: c.mcode_callbacks,
        objects: c.walk.objects,
        image_bytes: cap.image.total_bytes(),
        snapshot: cap.method().into(),
        cow_bytes: cap.cow_bytes(),
        walk_us: walk.wall_us,
        walk_cpu_us: walk.cpu_us,
        warnings,
        table_classes: c.table_classes.clone(),
        ..Default::default()
    };
    r.stamp(Stamp::now(cap.pid, &cap.exe));
    r
}

/// lj-gc-objs style text.
pub fn census_text(r: &CensusReport, top_cdata: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "Start tracing {} ({})", r.pid, r.exe);
    if r.mcode_jit > 0 {
        let _ = writeln!(s, "main machine code area size: {} bytes", r.mcode_jit);
    }
    if r.mcode_callbacks > 0 {
        let _ = writeln!(
            s,
            "C callback machine code size: {} bytes",
            r.mcode_callbacks
        );
    }
    let _ = writeln!(s, "GC total size: {} bytes", r.gc_total);
    let _ = writeln!(s, "GC state: {}", r.gc_state);
    let _ = writeln!(s);
    let mut types: Vec<_> = r.types.iter().collect();
    types.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(b.1.sum.cmp(&a.1.sum)));
    for (name, t) in types {
        let _ = writeln!(
            s,
            "{} {} objects: max={}, avg={}, min={}, sum={} (in bytes)",
            t.count, name, t.max, t.avg, t.min, t.sum
        );
    }
    let _ = writeln!(s);
    if let Some(o) = &r.overheads {
        let _ = writeln!(s, "JIT state size: {} bytes", o.jit_state);
        let _ = writeln!(s, "global state tmpbuf size: {} bytes", o.tmpbuf);
        let _ = writeln!(s, "C type state size: {} bytes", o.ctype_state);
        let _ = writeln!(
            s,
            "global state size: {} bytes, string hash table: {} bytes, light userdata segments: {} bytes",
            o.global_state, o.string_table, o.lightud_segments
        );
    }
    let _ = writeln!(s);
    if let Some(w) = r.walker_total {
        let _ = writeln!(s, "My GC walker detected for total {w} bytes.");
    }
    if r.dead.count > 0 || matches!(r.gc_state.as_str(), "sweep" | "sweep-string") {
        let _ = writeln!(
            s,
            "Dead but not yet swept: {} objects, {} bytes (GC state {}).",
            r.dead.count, r.dead.sum, r.gc_state
        );
    }
    if !r.cdata_types.is_empty() && top_cdata > 0 {
        let _ = writeln!(s, "\nTop cdata C types by bytes:");
        for c in r.cdata_types.iter().take(top_cdata) {
            let _ = writeln!(
                s,
                "  {:>12} bytes  {:>9} objects  {}",
                c.sum, c.count, c.name
            );
        }
    }
    if !r.table_classes.is_empty() {
        let _ = writeln!(s, "\nTables by size class:");
        for c in &r.table_classes {
            let _ = writeln!(
                s,
                "  <= {:>10} bytes  {:>9} tables  {:>12} bytes",
                c.le, c.count, c.sum
            );
        }
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{} microseconds elapsed in the probe handler.",
        r.pause_us
    );
    let _ = writeln!(
        s,
        "(target paused {} us, {}; walk {} us over {} bytes copied; layout {} from {}, VM found by {})",
        r.pause_us,
        r.stopped_in.as_deref().unwrap_or(&r.consistency),
        r.walk_us,
        r.image_bytes,
        r.luajit.layout,
        r.luajit.layout_source,
        r.luajit.method
    );
    if r.consistency != "quiescent" {
        let _ = writeln!(
            s,
            "WARNING: {} walk: the heap may have been changing; figures can be off.",
            r.consistency
        );
    }
    for w in &r.warnings {
        let _ = writeln!(s, "WARNING: {w}");
    }
    s
}

/// A census as stacks `TYPE` (or `cdata;C TYPE`, `table;<=N bytes`) with
/// (objects, bytes): the shape `diff -o x.svg` draws for census snapshots
/// and that `--format pprof` writes.
pub fn census_stacks(r: &CensusReport) -> Vec<(Vec<String>, u64, u64)> {
    let mut out = Vec::new();
    for (name, t) in &r.types {
        let parts: Vec<(String, u64, u64)> = match name.as_str() {
            "cdata" => r
                .cdata_types
                .iter()
                .map(|c| (c.name.clone(), c.count, c.sum))
                .collect(),
            "table" => r
                .table_classes
                .iter()
                .map(|c| (format!("<={} bytes", c.le), c.count, c.sum))
                .collect(),
            _ => Vec::new(),
        };
        let (mut cn, mut cb) = (0, 0);
        for (sub, n, b) in parts {
            cn += n;
            cb += b;
            out.push((vec![name.clone(), sub], n, b));
        }
        // Whatever the breakdown does not cover stays on the type itself.
        if t.count > cn || t.sum > cb {
            out.push((
                vec![name.clone()],
                t.count.saturating_sub(cn),
                t.sum.saturating_sub(cb),
            ));
        }
    }
    out
}

/// [`census_stacks`] folded by bytes.
pub fn census_folded(r: &CensusReport) -> std::collections::BTreeMap<String, u64> {
    let mut f = std::collections::BTreeMap::new();
    for (frames, _, bytes) in census_stacks(r) {
        if bytes > 0 {
            *f.entry(frames.join(";")).or_insert(0) += bytes;
        }
    }
    f
}

/// lj-gc style text.
pub fn gc_text(r: &CensusReport) -> String {
    format!(
        "Start tracing {} ({})\nTotal GC count: {} bytes\n",
        r.pid, r.exe, r.gc_total
    )
}
