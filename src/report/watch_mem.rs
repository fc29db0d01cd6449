//! `watch --mem`: the components of `ljleak mem` over time. Each sample
//! holds the resident bytes of each component (they stack up to the Rss),
//! whether the allocator figures were measured at that sample or carried
//! over from the last pause, and the fd count. The verdict comes from
//! [`crate::compare::mem_trend`], over the samples whose figures were all
//! measured together (a carried-over figure would show growth between two
//! pauses as "other" and then take it back).

use plotters::coord::Shift;
use plotters::prelude::*;
use serde::Serialize;

use crate::compare::mem_trend::{self, ComponentTrend};
use crate::mem::MemReport;

/// The memory components of one process at one sample (bytes).
#[derive(Debug, Clone, Default, Serialize)]
pub struct MemSample {
    /// Whether the allocator figures (LuaJIT arena, glibc arenas) were read
    /// at this sample; false: carried over from the last full breakdown.
    pub measured: bool,
    /// Resident bytes (VmRSS at a light sample, Σ smaps Rss at a full one).
    pub rss: u64,
    /// `g->gc.total` (resident part of the LuaJIT arena).
    pub gc_heap: u64,
    /// Resident LuaJIT arena not holding GC objects.
    pub luajit_arena_free: u64,
    /// JIT machine code.
    pub jit_code: u64,
    /// Resident glibc arena bytes in chunks in use.
    pub glibc_in_use: u64,
    /// Resident glibc arena bytes in free chunks and top.
    pub glibc_free: u64,
    /// glibc mmapped chunks, resident.
    pub glibc_mmapped: u64,
    /// Shared memory mappings, resident in this process.
    pub shm: u64,
    /// Thread stacks.
    pub stacks: u64,
    /// File-backed mappings.
    pub files: u64,
    /// The rest of the Rss (other anonymous memory, unattributed, and at a
    /// light sample any change since the last full breakdown).
    pub other: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// How long the allocator walk paused the target, µs (0 at a light
    /// sample; a master's total: the longest worker's).
    pub pause_us: u64,
    /// The report's unattributed row (full samples only).
    #[serde(skip)]
    unattributed: u64,
    /// glibc's own (not resident) free figure, for the verdict.
    #[serde(skip)]
    glibc_free_bytes: u64,
    /// glibc's own in-use figure.
    #[serde(skip)]
    glibc_in_use_bytes: u64,
    /// glibc's mmapped figure.
    #[serde(skip)]
    glibc_mmapped_bytes: u64,
    /// LuaJIT's own arena-free figure.
    #[serde(skip)]
    arena_free_bytes: u64,
    /// nginx zones' used bytes.
    #[serde(skip)]
    shm_used: u64,
}

/// The stacked layers, bottom first, with the names the verdict uses.
pub const LAYERS: &[&str] = &[
    "GC heap",
    "LuaJIT arena free",
    "JIT code",
    "glibc in use",
    "glibc free chunks",
    "glibc mmapped",
    "shm",
    "stacks",
    "files",
    "other",
];

impl MemSample {
    /// The components of a full breakdown. The resident glibc arena bytes
    /// are split between in-use and free in glibc's own proportion (a free
    /// chunk's pages may have been given back; glibc does not say which).
    pub fn from_report(r: &MemReport, fds: u64) -> MemSample {
        let rows = &r.rows;
        let gc = r.luajit.gc_total.min(rows.luajit_arena);
        let g = &r.glibc;
        // `in_use` and `free` are arena bytes (mmapped chunks apart).
        let arena_total = g.in_use + g.free;
        let in_use = if arena_total == 0 {
            0
        } else {
            (rows.glibc_arenas as u128 * g.in_use as u128 / arena_total as u128) as u64
        };
        let mut s = MemSample {
            measured: true,
            rss: r.rss,
            gc_heap: gc,
            luajit_arena_free: rows.luajit_arena - gc,
            jit_code: rows.luajit_mcode,
            glibc_in_use: in_use,
            glibc_free: rows.glibc_arenas - in_use,
            glibc_mmapped: rows.glibc_mmapped,
            shm: rows.shm,
            stacks: rows.stacks,
            files: rows.files,
            other: 0,
            fds,
            pause_us: r.pause_us,
            unattributed: r.unattributed,
            glibc_free_bytes: g.free,
            glibc_in_use_bytes: g.in_use,
            glibc_mmapped_bytes: g.mmapped,
            arena_free_bytes: r.luajit.arena_free,
            shm_used: r.shm.iter().map(|z| z.used).sum(),
        };
        s.other = s
            .rss
            .saturating_sub(s.layers()[..LAYERS.len() - 1].iter().sum());
        s
    }

    /// A light sample: the last full figures with a new Rss, GC total and
    /// fd count (no pause). What changed since goes to `other`.
    pub fn light(&self, rss: u64, gc_total: u64, fds: u64) -> MemSample {
        let mut s = self.clone();
        s.measured = false;
        s.rss = rss;
        // The GC heap is read at every sample anyway (one word): move the
        // difference between it and the arena's free part, as `mem` would.
        let arena = s.gc_heap + s.luajit_arena_free;
        s.gc_heap = gc_total.min(arena);
        s.luajit_arena_free = arena - s.gc_heap;
        s.fds = fds;
        s.pause_us = 0;
        s.other = rss.saturating_sub(s.layers()[..LAYERS.len() - 1].iter().sum());
        s
    }

    /// Bytes of each of [`LAYERS`].
    pub fn layers(&self) -> [u64; 10] {
        [
            self.gc_heap,
            self.luajit_arena_free,
            self.jit_code,
            self.glibc_in_use,
            self.glibc_free,
            self.glibc_mmapped,
            self.shm,
            self.stacks,
            self.files,
            self.other,
        ]
    }

    /// Sum of several processes' samples (a master's total: shared zones
    /// count in each worker, as the RSS total does).
    pub fn sum<'a>(xs: impl IntoIterator<Item = &'a MemSample>) -> MemSample {
        let mut t = MemSample {
            measured: true,
            ..Default::default()
        };
        for x in xs {
            t.measured &= x.measured;
            t.rss += x.rss;
            t.gc_heap += x.gc_heap;
            t.luajit_arena_free += x.luajit_arena_free;
            t.jit_code += x.jit_code;
            t.glibc_in_use += x.glibc_in_use;
            t.glibc_free += x.glibc_free;
            t.glibc_mmapped += x.glibc_mmapped;
            t.shm += x.shm;
            t.stacks += x.stacks;
            t.files += x.files;
            t.other += x.other;
            t.fds += x.fds;
            t.pause_us = t.pause_us.max(x.pause_us);
            t.unattributed += x.unattributed;
            t.glibc_free_bytes += x.glibc_free_bytes;
            t.glibc_in_use_bytes += x.glibc_in_use_bytes;
            t.glibc_mmapped_bytes += x.glibc_mmapped_bytes;
            t.arena_free_bytes += x.arena_free_bytes;
            t.shm_used += x.shm_used;
        }
        t
    }

    /// The figures [`mem_trend::COMPONENTS`] reads, as a report.
    fn as_report(&self) -> MemReport {
        let mut r = MemReport {
            rss: self.rss,
            stacks: self.stacks,
            unattributed: self.unattributed,
            ..Default::default()
        };
        r.luajit.gc_total = self.gc_heap;
        r.luajit.arena_free = self.arena_free_bytes;
        r.luajit.mcode = self.jit_code;
        r.glibc.in_use = self.glibc_in_use_bytes;
        r.glibc.free = self.glibc_free_bytes;
        r.glibc.mmapped = self.glibc_mmapped_bytes;
        r.shm = vec![crate::mem::ShmZone {
            used: self.shm_used,
            ..Default::default()
        }];
        r
    }
}

/// The components' trends and the verdict line, over the samples (seconds,
/// sample) whose figures were all measured together; None with fewer than
/// two of those.
pub fn verdict(samples: &[(f64, &MemSample)]) -> Option<(Vec<ComponentTrend>, String)> {
    let reps: Vec<(f64, MemReport)> = samples
        .iter()
        .filter(|(_, s)| s.measured)
        .map(|(t, s)| (t / 60.0, s.as_report()))
        .collect();
    if reps.len() < 2 {
        return None;
    }
    let refs: Vec<(f64, &MemReport)> = reps.iter().map(|(t, r)| (*t, r)).collect();
    let c = mem_trend::components(&refs);
    let v = mem_trend::verdict(&c);
    Some((c, v))
}

/// Layer colours, bottom first.
const COLORS: [RGBColor; 10] = [
    RGBColor(44, 160, 44),
    RGBColor(152, 223, 138),
    RGBColor(188, 189, 34),
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(127, 127, 127),
    RGBColor(199, 199, 199),
];

/// Draw the stacked area of `s` (seconds, sample) on `area`, captioned with
/// `title`.
pub fn draw_stacked(
    area: &DrawingArea<SVGBackend, Shift>,
    s: &[(f64, &MemSample)],
    title: &str,
) -> anyhow::Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing the plot: {e}");
    let mib = |b: u64| b as f64 / 1048576.0;
    let x_max = s.iter().map(|x| x.0).fold(1e-3, f64::max);
    let y_max = s
        .iter()
        .map(|x| mib(x.1.layers().iter().sum()))
        .fold(1e-3, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("MiB resident")
        .draw()
        .map_err(|e| err(&e))?;
    // Cumulative tops of each layer; each band is the polygon between the
    // previous top and this one.
    let mut below = vec![0.0f64; s.len()];
    for (k, name) in LAYERS.iter().enumerate() {
        let top: Vec<f64> = s
            .iter()
            .zip(&below)
            .map(|((_, x), b)| b + mib(x.layers()[k]))
            .collect();
        if top.iter().zip(&below).all(|(t, b)| t <= b) {
            below = top;
            continue;
        }
        let mut poly: Vec<(f64, f64)> = s.iter().map(|x| x.0).zip(top.iter().copied()).collect();
        poly.extend(s.iter().map(|x| x.0).zip(below.iter().copied()).rev());
        let color = COLORS[k % COLORS.len()];
        chart
            .draw_series(std::iter::once(Polygon::new(poly, color.mix(0.8).filled())))
            .map_err(|e| err(&e))?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 15, y + 5)], color.filled()));
        below = top;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_stack_to_rss_and_verdict_skips_carried_samples() {
        let mut r = MemReport {
            rss: 100 << 20,
            ..Default::default()
        };
        r.rows.luajit_arena = 30 << 20;
        r.luajit.gc_total = 10 << 20;
        r.rows.glibc_arenas = 40 << 20;
        r.glibc.in_use = 10 << 20;
        r.glibc.free = 30 << 20;
        r.rows.files = 5 << 20;
        let s = MemSample::from_report(&r, 3);
        assert_eq!(s.layers().iter().sum::<u64>(), r.rss);
        assert_eq!((s.glibc_in_use, s.glibc_free), (10 << 20, 30 << 20));
        assert_eq!(s.luajit_arena_free, 20 << 20);
        let l = s.light(120 << 20, 12 << 20, 4);
        assert_eq!(l.layers().iter().sum::<u64>(), 120 << 20);
        assert_eq!((l.gc_heap, l.luajit_arena_free), (12 << 20, 18 << 20));
        assert!(!l.measured);
        // Only measured samples feed the verdict.
        let xs = [(0.0, &s), (30.0, &l)];
        assert!(verdict(&xs).is_none());
    }
}
