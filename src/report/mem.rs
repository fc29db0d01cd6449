//! `ljleak mem` output: text led by one line per process that adds up to its
//! Rss, the JSON snapshot (one report, or a master with its workers and a
//! total that counts each shared zone once), and an SVG breakdown.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::mem::{FileRss, MemReport, ShmZone};
use crate::report::envelope::{schema_v1, Stamp, SCHEMA_VERSION};

/// A master with its workers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MasterDoc {
    /// Snapshot schema version.
    #[serde(default = "schema_v1")]
    pub schema: u32,
    /// Always `mem`.
    pub kind: String,
    /// The master.
    pub pid: i32,
    /// Its executable.
    pub exe: String,
    /// Envelope.
    #[serde(flatten)]
    pub stamp: Stamp,
    /// The master process itself.
    pub master: MemReport,
    /// One report per worker, in PID order.
    pub workers: Vec<MemReport>,
    /// Master and workers summed, each shared zone counted once.
    pub total: MemReport,
}

/// What `mem` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Doc {
    /// A master, its workers, the total.
    Master(Box<MasterDoc>),
    /// One process.
    One(Box<MemReport>),
}

impl Doc {
    /// The report to compare or gate on: the one process, or the total.
    pub fn main(&self) -> &MemReport {
        match self {
            Doc::Master(m) => &m.total,
            Doc::One(r) => r,
        }
    }
}

/// Build the master document.
pub fn master_doc(master: MemReport, workers: Vec<MemReport>) -> MasterDoc {
    let mut all = vec![&master];
    all.extend(workers.iter());
    let total = sum(&all, master.pid);
    MasterDoc {
        schema: SCHEMA_VERSION,
        kind: "mem".into(),
        pid: master.pid,
        exe: master.exe.clone(),
        stamp: master.stamp.clone(),
        master: master.clone(),
        workers,
        total,
    }
}

/// Sum reports: byte counts add up, except that each shared zone's
/// resident pages count once (the largest Rss any process shows for it).
pub fn sum(rs: &[&MemReport], pid: i32) -> MemReport {
    let mut t = MemReport {
        schema: SCHEMA_VERSION,
        kind: "mem".into(),
        pid,
        exe: rs.first().map(|r| r.exe.clone()).unwrap_or_default(),
        stamp: rs.first().map(|r| r.stamp.clone()).unwrap_or_default(),
        ..Default::default()
    };
    let mut zones: BTreeMap<(String, u64, u64), ShmZone> = BTreeMap::new();
    let mut files: BTreeMap<String, FileRss> = BTreeMap::new();
    let mut peers: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut sites: BTreeMap<String, u64> = BTreeMap::new();
    let mut dup_shm = 0u64;
    for r in rs {
        t.rss += r.rss;
        t.pss += r.pss;
        t.anon += r.anon;
        t.file += r.file;
        t.swap += r.swap;
        t.unattributed += r.unattributed;
        t.stacks += r.stacks;
        t.other_anon += r.other_anon;
        t.threads += r.threads;
        let (a, b) = (&mut t.rows, &r.rows);
        a.luajit_arena += b.luajit_arena;
        a.luajit_mcode += b.luajit_mcode;
        a.glibc_arenas += b.glibc_arenas;
        a.glibc_mmapped += b.glibc_mmapped;
        a.shm += b.shm;
        a.stacks += b.stacks;
        a.files += b.files;
        a.other_anon += b.other_anon;
        a.unattributed += b.unattributed;
        let (a, b) = (&mut t.luajit, &r.luajit);
        a.found |= b.found;
        a.system_malloc |= b.system_malloc;
        a.gc_total += b.gc_total;
        a.arena_mapped += b.arena_mapped;
        a.arena_used += b.arena_used;
        a.arena_free += b.arena_free;
        a.segments += b.segments;
        a.segments_bytes += b.segments_bytes;
        a.direct_bytes += b.direct_bytes;
        a.direct_chunks += b.direct_chunks;
        a.mcode += b.mcode;
        a.mcode_areas += b.mcode_areas;
        let (a, b) = (&mut t.glibc, &r.glibc);
        a.found |= b.found;
        a.system += b.system;
        a.in_use += b.in_use;
        a.free += b.free;
        a.mmapped += b.mmapped;
        a.mmapped_chunks += b.mmapped_chunks;
        a.tcache += b.tcache;
        a.fastbins += b.fastbins;
        a.arenas.extend(b.arenas.iter().cloned());
        for z in &r.shm {
            // Zones match by name and size: the same zone in every process
            // of one server (mapped before fork, at the same address).
            let key = (z.name.clone(), z.size, z.addr);
            match zones.get_mut(&key) {
                Some(x) => {
                    dup_shm += x.rss.min(z.rss);
                    x.rss = x.rss.max(z.rss);
                    x.pss += z.pss;
                }
                None => {
                    zones.insert(key, z.clone());
                }
            }
        }
        for f in &r.files {
            let x = files.entry(f.path.clone()).or_insert_with(|| FileRss {
                path: f.path.clone(),
                ..Default::default()
            });
            x.rss += f.rss;
            x.pss += f.pss;
            x.size = x.size.max(f.size);
        }
        t.fds.total += r.fds.total;
        for (k, v) in &r.fds.by_kind {
            *t.fds.by_kind.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &r.fds.tcp_states {
            *t.fds.tcp_states.entry(k.clone()).or_default() += v;
        }
        for p in &r.fds.tcp_peers {
            *peers.entry((p.peer.clone(), p.state.clone())).or_default() += p.count;
        }
        t.timers.found |= r.timers.found;
        t.timers.pending += r.timers.pending;
        t.timers.running += r.timers.running;
        for s in &r.timers.by_callback {
            *sites.entry(s.site.clone()).or_default() += s.count;
        }
        t.pause_us = t.pause_us.max(r.pause_us);
        for (k, v) in &r.timings_us {
            *t.timings_us.entry(k.clone()).or_default() += v;
        }
        t.warnings
            .extend(r.warnings.iter().map(|w| format!("pid {}: {w}", r.pid)));
    }
    // Shared pages are resident once however many processes map them.
    t.rss -= dup_shm;
    t.rows.shm -= dup_shm;
    t.file = t.file.saturating_sub(dup_shm);
    t.shm = zones.into_values().collect();
    t.files = files.into_values().collect();
    t.files
        .sort_by(|a, b| b.rss.cmp(&a.rss).then(a.path.cmp(&b.path)));
    t.fds.tcp_peers = peers
        .into_iter()
        .map(|((peer, state), count)| crate::mem::fds::Peer { peer, state, count })
        .collect();
    t.fds
        .tcp_peers
        .sort_by(|a, b| b.count.cmp(&a.count).then(a.peer.cmp(&b.peer)));
    t.timers.by_callback = sites
        .into_iter()
        .map(|(site, count)| crate::mem::nginx::Site { site, count })
        .collect();
    t.timers
        .by_callback
        .sort_by(|a, b| b.count.cmp(&a.count).then(a.site.cmp(&b.site)));
    t
}

/// Bytes in binary units with three significant digits: `1.02 GiB`, `48 MiB`.
pub fn human(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else if v >= 100.0 {
        format!("{v:.0} {}", U[i])
    } else if v >= 10.0 {
        format!("{v:.1} {}", U[i])
    } else {
        format!("{v:.2} {}", U[i])
    }
}

/// The parts of the headline, adding up exactly to `rss`.
pub fn headline_parts(r: &MemReport) -> Vec<(&'static str, u64)> {
    let lj = r.rows.luajit_arena;
    let gc = r.luajit.gc_total.min(lj);
    vec![
        ("GC", gc),
        ("LuaJIT arena free", lj - gc),
        ("glibc", r.rows.glibc_arenas + r.rows.glibc_mmapped),
        ("shm", r.rows.shm),
        ("code", r.rows.files + r.rows.luajit_mcode),
        ("stacks", r.rows.stacks),
        ("other", r.rows.other_anon),
        ("unattributed", r.rows.unattributed),
    ]
}

/// The one line a person reads first.
pub fn headline(r: &MemReport) -> String {
    let mut s = format!("Rss {} =", human(r.rss));
    for (i, (name, b)) in headline_parts(r).into_iter().enumerate() {
        if i > 0 {
            s.push_str(" +");
        }
        let _ = write!(s, " {name} {}", human(b));
        if name == "glibc" && r.glibc.found {
            let _ = write!(s, " (free {})", human(r.glibc.free));
        }
    }
    s
}

fn role(r: &MemReport, what: &str) -> String {
    format!("pid {} ({what})", r.pid)
}

/// Text of a document.
pub fn text(d: &Doc) -> String {
    let mut s = String::new();
    match d {
        Doc::One(r) => {
            let _ = writeln!(s, "{}: {}", role(r, "process"), headline(r));
            details(&mut s, r);
        }
        Doc::Master(m) => {
            let _ = writeln!(s, "{}: {}", role(&m.master, "master"), headline(&m.master));
            for w in &m.workers {
                let _ = writeln!(s, "{}: {}", role(w, "worker"), headline(w));
            }
            let _ = writeln!(s, "total (shared zones once): {}", headline(&m.total));
            for w in &m.workers {
                let _ = writeln!(s, "\n== worker {} ==", w.pid);
                details(&mut s, w);
            }
            let _ = writeln!(s, "\n== total ==");
            details(&mut s, &m.total);
        }
    }
    s
}

fn details(s: &mut String, r: &MemReport) {
    let _ = writeln!(
        s,
        "kernel: Rss {} Pss {} anonymous {} file/shared {} swap {} (smaps_rollup Rss {})",
        human(r.rss),
        human(r.pss),
        human(r.anon),
        human(r.file),
        human(r.swap),
        human(r.kernel.rss)
    );
    owners(s, r, &r.rows, "resident");
    let _ = writeln!(
        s,
        "stacks {}; other anonymous {}; unattributed {}",
        human(r.stacks),
        human(r.other_anon),
        human(r.unattributed)
    );
    for f in r.files.iter().take(8) {
        let _ = writeln!(
            s,
            "  file {} Rss {} Pss {}",
            f.path,
            human(f.rss),
            human(f.pss)
        );
    }
    let f = &r.fds;
    let kinds: Vec<String> = f.by_kind.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(s, "fds: {} ({})", f.total, kinds.join(", "));
    if !f.tcp_states.is_empty() {
        let st: Vec<String> = f
            .tcp_states
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(s, "  tcp: {}", st.join(", "));
        for p in f.tcp_peers.iter().take(10) {
            let _ = writeln!(s, "  {:>6} {} {}", p.count, p.state, p.peer);
        }
    }
    run_notes(s, r);
}

/// LuaJIT, glibc and the shared zones, with the bytes each owner holds
/// (`word`: resident live, mapped in a core).
fn owners(s: &mut String, r: &MemReport, rows: &crate::mem::Rows, word: &str) {
    let l = &r.luajit;
    if l.found {
        if l.system_malloc {
            let _ = writeln!(
                s,
                "LuaJIT: GC {} (allocates through the system malloc: see glibc); JIT code {} in {} areas",
                human(l.gc_total),
                human(l.mcode),
                l.mcode_areas
            );
        } else {
            let _ = writeln!(
                s,
                "LuaJIT: GC {}; arena mapped {} = used {} + free {} (top {}, dv {}, bins {} in {} chunks); {} segments, {} direct chunks ({}); JIT code {} in {} areas; {word} {}",
                human(l.gc_total),
                human(l.arena_mapped),
                human(l.arena_used),
                human(l.arena_free),
                human(l.top),
                human(l.dv),
                human(l.smallbins_free + l.treebins_free),
                l.free_chunks,
                l.segments,
                l.direct_chunks,
                human(l.direct_bytes),
                human(l.mcode),
                l.mcode_areas,
                human(rows.luajit_arena + rows.luajit_mcode)
            );
        }
    } else {
        let _ = writeln!(s, "LuaJIT: no VM found");
    }
    let g = &r.glibc;
    if g.found {
        let _ = writeln!(
            s,
            "glibc malloc ({}): system {} = in use {} + free {} (fastbins {}; tcache holds {} of the in-use); mmapped chunks {} ({}); {word} {}",
            g.located_by,
            human(g.system),
            human(g.in_use),
            human(g.free),
            human(g.fastbins),
            human(g.tcache),
            g.mmapped_chunks,
            human(g.mmapped),
            human(rows.glibc_arenas + rows.glibc_mmapped)
        );
        for a in g.arenas.iter().take(16) {
            let _ = writeln!(
                s,
                "  {} arena {:#x}: system {} in use {} free {} (top {}, bins {} in {}, fastbins {} in {}, tcache {} in {})",
                a.kind,
                a.addr,
                human(a.system),
                human(a.in_use),
                human(a.free),
                human(a.top),
                human(a.bins_free),
                a.bins_chunks,
                human(a.fastbin_free),
                a.fastbin_chunks,
                human(a.tcache),
                a.tcache_chunks
            );
        }
    }
    for z in &r.shm {
        let _ = write!(
            s,
            "shm {} [{}]: size {} used {} free {} ({} of {} pages free)",
            z.name,
            z.kind,
            human(z.size),
            human(z.used),
            human(z.free),
            z.pages_free,
            z.pages,
        );
        if r.core.is_none() {
            let _ = write!(s, "; Rss {} Pss {}", human(z.rss), human(z.pss));
        }
        s.push('\n');
    }
}

/// Timers, timings, warnings.
fn run_notes(s: &mut String, r: &MemReport) {
    let t = &r.timers;
    if t.found {
        let _ = writeln!(s, "timers: pending {} running {}", t.pending, t.running);
        for x in t.by_callback.iter().take(10) {
            let _ = writeln!(s, "  {:>6} {}", x.count, x.site);
        }
    }
    let tm: Vec<String> = r
        .timings_us
        .iter()
        .map(|(k, v)| format!("{k} {v} us"))
        .collect();
    let pause = if r.core.is_some() && r.pause_us > 0 {
        format!("the dump paused the target {} us", r.pause_us)
    } else if r.pause_us > 0 {
        format!("target paused {} us for the allocator reads", r.pause_us)
    } else {
        "never paused".to_string()
    };
    let _ = writeln!(s, "took: {} ({pause})", tm.join(", "));
    for w in &r.warnings {
        let _ = writeln!(s, "warning: {w}");
    }
}

/// Text of a report read from a core: the memory walks, mapped bytes by
/// owner, and what a core cannot tell.
pub fn core_text(r: &MemReport) -> String {
    let mut s = String::new();
    let Some(c) = &r.core else {
        return text(&Doc::One(Box::new(r.clone())));
    };
    let m = &c.mapped;
    let _ = writeln!(
        s,
        "pid {} (core {}): mapped {} = LuaJIT {} + glibc {} + shm {} + files {} + stacks {} + other {} + unattributed {} ({} of it in the core)",
        r.pid,
        c.file,
        human(c.mapped_total),
        human(m.luajit_arena + m.luajit_mcode),
        human(m.glibc_arenas + m.glibc_mmapped),
        human(m.shm),
        human(m.files),
        human(m.stacks),
        human(m.other_anon),
        human(m.unattributed),
        human(c.dumped)
    );
    owners(&mut s, r, m, "mapped");
    for f in r.files.iter().take(8) {
        let _ = writeln!(s, "  file {} mapped {}", f.path, human(f.size));
    }
    s.push_str(
        "absent from a core: Rss, Pss, swap and the reconciliation by owner (a core holds memory, not the kernel's page accounting); fds and sockets (kernel objects, not memory)\n",
    );
    run_notes(&mut s, r);
    s
}

/// SVG: one stacked bar per process (and the total), parts as in the headline.
pub fn svg(d: &Doc) -> anyhow::Result<String> {
    use plotters::prelude::*;
    let bars: Vec<(String, &MemReport)> = match d {
        Doc::One(r) => vec![(format!("pid {}", r.pid), r.as_ref())],
        Doc::Master(m) => {
            let mut v = vec![(format!("master {}", m.master.pid), &m.master)];
            v.extend(m.workers.iter().map(|w| (format!("worker {}", w.pid), w)));
            v.push(("total".into(), &m.total));
            v
        }
    };
    let colors = [
        RGBColor(214, 39, 40),
        RGBColor(255, 152, 150),
        RGBColor(31, 119, 180),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(127, 127, 127),
        RGBColor(23, 23, 23),
    ];
    let mib = |b: u64| b as f64 / 1048576.0;
    let ymax = bars.iter().map(|b| mib(b.1.rss)).fold(1.0, f64::max) * 1.15;
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, (900, 520)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("ljleak mem: resident memory by owner", ("sans-serif", 18))
            .margin(15)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .right_y_label_area_size(10)
            .build_cartesian_2d(0.0..bars.len() as f64 + 1.6, 0.0..ymax)
            .map_err(plot_err)?;
        let names: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(bars.len() + 2)
            .x_label_formatter(&|x| {
                let i = (*x - 0.5).round();
                if (*x - 0.5 - i).abs() < 0.01 && i >= 0.0 {
                    names.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc("MiB")
            .draw()
            .map_err(plot_err)?;
        for (i, (_, r)) in bars.iter().enumerate() {
            let mut y = 0.0;
            for (k, (_, b)) in headline_parts(r).into_iter().enumerate() {
                let h = mib(b);
                let c = colors[k % colors.len()];
                chart
                    .draw_series(std::iter::once(Rectangle::new(
                        [(i as f64 + 0.15, y), (i as f64 + 0.85, y + h)],
                        c.filled(),
                    )))
                    .map_err(plot_err)?;
                y += h;
            }
        }
        // Legend as text boxes on the right.
        for (k, (name, _)) in headline_parts(bars[0].1).into_iter().enumerate() {
            let y = ymax * (0.95 - k as f64 * 0.07);
            let x = bars.len() as f64 + 0.1;
            let c = colors[k % colors.len()];
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x, y), (x + 0.12, y - ymax * 0.04)],
                    c.filled(),
                )))
                .map_err(plot_err)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    name.to_string(),
                    (x + 0.18, y),
                    ("sans-serif", 13),
                )))
                .map_err(plot_err)?;
        }
        root.present().map_err(plot_err)?;
    }
    Ok(buf)
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the chart: {e:?}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(48 << 20), "48.0 MiB");
        assert_eq!(human(1_095_216_660), "1.02 GiB");
    }

    #[test]
    fn headline_adds_up() {
        let mut r = MemReport::default();
        r.rows.luajit_arena = 100;
        r.luajit.gc_total = 60;
        r.rows.glibc_arenas = 50;
        r.rows.files = 7;
        r.rows.unattributed = 3;
        r.rss = r.rows.sum();
        let s: u64 = headline_parts(&r).iter().map(|p| p.1).sum();
        assert_eq!(s, r.rss);
    }

    #[test]
    fn total_counts_a_shared_zone_once() {
        let z = ShmZone {
            name: "cache".into(),
            size: 1 << 20,
            rss: 1 << 20,
            pss: 1 << 19,
            ..Default::default()
        };
        let mut a = MemReport::default();
        a.shm.push(z.clone());
        a.rss = 3 << 20;
        a.rows.shm = 1 << 20;
        let b = a.clone();
        let t = sum(&[&a, &b], 1);
        assert_eq!(t.rss, 5 << 20);
        assert_eq!(t.shm.len(), 1);
        assert_eq!(t.shm[0].pss, 1 << 20);
    }
}
