//! LuaJIT's own allocator (lj_alloc.c, a dlmalloc derivative) and the JIT's
//! machine code, read from the VM's `global_State`.
//!
//! `g->allocd` is the allocator's `malloc_state` when `g->allocf` is
//! `lj_alloc_f`: lj_alloc_create places it as the first chunk of the first
//! segment, so the last segment of `m->seg`'s chain starts 16 bytes before
//! it. When that does not hold (allocd NULL, or not an mstate) the build
//! allocates through the system malloc (LUAJIT_USE_SYSMALLOC: `mem_alloc`
//! in lib_aux.c calls realloc/free) or a custom allocator.

use serde::{Deserialize, Serialize};

use crate::luajit::fields::FieldMap;
use crate::target::{Maps, Memory, ReadExt};

const LAYOUT: &str = include_str!("layouts/lj_alloc-x86_64.txt");
/// lj_alloc.c: PINUSE_BIT 1, CINUSE_BIT 2, FLAG4 4 (unused); IS_DIRECT_BIT 1.
const INUSE_BITS: u64 = 3;
/// FENCEPOST_HEAD = INUSE_BITS | SIZE_T_SIZE.
const FENCEPOST_HEAD: u64 = INUSE_BITS | 8;
/// DIRECT_FOOT_PAD = FOUR_SIZE_T_SIZES.
const DIRECT_FOOT_PAD: u64 = 32;
const MAX_SEGMENTS: usize = 1 << 16;
const MAX_CHUNKS: u64 = 8_000_000;

/// LuaJIT's memory, as the JSON contract names it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct LuajitMem {
    /// A VM was found.
    pub found: bool,
    /// `g->gc.total`: bytes the GC accounts for.
    pub gc_total: u64,
    /// Bytes mapped by the allocator: segments plus direct mmaps.
    pub arena_mapped: u64,
    /// mapped − free.
    pub arena_used: u64,
    /// Free inside the arenas: top + designated victim + small and tree bins.
    pub arena_free: u64,
    /// Bytes in segments.
    pub segments_bytes: u64,
    /// Number of segments.
    pub segments: u64,
    /// Bytes in chunks mapped directly (≥ the mmap threshold), found by
    /// their headers in anonymous memory.
    pub direct_bytes: u64,
    /// Their number.
    pub direct_chunks: u64,
    /// The top chunk.
    pub top: u64,
    /// The designated victim.
    pub dv: u64,
    /// Free chunks in small bins (bytes).
    pub smallbins_free: u64,
    /// Free chunks in tree bins (bytes).
    pub treebins_free: u64,
    /// Free chunks counted.
    pub free_chunks: u64,
    /// The bins did not walk (the heap changed under us): free counts only
    /// top and dv.
    pub bins_incomplete: bool,
    /// JIT machine code areas (`J->szallmcarea`).
    pub mcode: u64,
    /// Number of machine code areas.
    pub mcode_areas: u64,
    /// The build allocates through the system malloc (or a custom allocator).
    pub system_malloc: bool,
    /// The allocator's state (AVMA), 0 when system malloc.
    pub mstate: u64,
    /// Layout of the VM.
    pub layout: String,
    /// Segment and mcode ranges (for residency).
    #[serde(skip)]
    pub segment_ranges: Vec<(u64, u64)>,
    /// Machine code ranges.
    #[serde(skip)]
    pub mcode_ranges: Vec<(u64, u64)>,
}

struct Off {
    dvsize: u64,
    topsize: u64,
    smallbins: u64,
    treebins: u64,
    seg: u64,
    seg_base: u64,
    seg_size: u64,
    seg_next: u64,
    t_fd: u64,
    t_child: u64,
    mc_next: u64,
    mc_size: u64,
}

fn off() -> Off {
    let fm = FieldMap::parse(LAYOUT);
    let o = |k: &str| fm.get(k).map(|x| x.0).expect("lj_alloc table complete");
    Off {
        dvsize: o("malloc_state.dvsize"),
        topsize: o("malloc_state.topsize"),
        smallbins: o("malloc_state.smallbins"),
        treebins: o("malloc_state.treebins"),
        seg: o("malloc_state.seg"),
        seg_base: o("malloc_segment.base"),
        seg_size: o("malloc_segment.size"),
        seg_next: o("malloc_segment.next"),
        t_fd: o("malloc_tree_chunk.fd"),
        t_child: o("malloc_tree_chunk.child"),
        mc_next: o("MCLink.next"),
        mc_size: o("MCLink.size"),
    }
}

/// Read the allocator state of the VM whose global state is `g`, and the
/// JIT's machine code areas from its `jit_State` at `j`.
pub fn read<M: Memory + ?Sized>(
    m: &M,
    lay: &crate::luajit::Layout,
    g: u64,
    j: u64,
    maps: &Maps,
    warnings: &mut Vec<String>,
) -> LuajitMem {
    let o = off();
    let f = &lay.f;
    let mut r = LuajitMem {
        found: true,
        layout: lay.name.clone(),
        ..Default::default()
    };
    r.gc_total = f.g_total.get(m, g).unwrap_or(0);
    // global_State.allocd directly follows allocf (lj_obj.h) on every build.
    let allocd = m.u64(g + f.g_allocf.off + f.g_allocf.size).unwrap_or(0);
    match walk(m, &o, allocd, maps, &mut r) {
        Ok(()) => r.mstate = allocd,
        Err(why) => {
            r.system_malloc = true;
            r.segment_ranges.clear();
            (r.segments, r.segments_bytes) = (0, 0);
            log::info!("LuaJIT allocator: {why}; taking it for the system malloc");
        }
    }
    // Machine code: J->mcarea heads a chain of areas, each starting with an
    // MCLink {next, size} (lj_mcode.c).
    if f.j_szallmcarea.size != 0 {
        r.mcode = f.j_szallmcarea.get(m, j).unwrap_or(0);
        let mcarea_off = f.j_szallmcarea.off - 32; // mcarea, mctop, mcbot, szmcarea precede it
        let mut a = m.u64(j + mcarea_off).unwrap_or(0);
        let mut seen = 0u64;
        for _ in 0..4096 {
            if a == 0 {
                break;
            }
            let Ok(size) = m.u64(a + o.mc_size) else {
                warnings.push(format!("luajit: mcode area {a:#x} unreadable"));
                break;
            };
            if size == 0 || size > 1 << 32 {
                warnings.push(format!("luajit: mcode area {a:#x} has size {size}"));
                break;
            }
            r.mcode_ranges.push((a, a + size));
            seen += size;
            r.mcode_areas += 1;
            a = m.u64(a + o.mc_next).unwrap_or(0);
        }
        if seen != r.mcode && r.mcode_areas > 0 {
            warnings.push(format!(
                "luajit: mcode areas add up to {seen}, J->szallmcarea says {}",
                r.mcode
            ));
        }
    }
    r
}

fn walk<M: Memory + ?Sized>(
    m: &M,
    o: &Off,
    ms: u64,
    maps: &Maps,
    r: &mut LuajitMem,
) -> Result<(), String> {
    if ms == 0 || ms % 16 != 0 {
        return Err(format!("g->allocd {ms:#x} is not an allocator state"));
    }
    let rd = |a: u64| m.u64(a).map_err(|e| e.to_string());
    // Segments: m->seg is the newest; the oldest (next == 0) holds the mstate.
    let mut s = ms + o.seg;
    let mut last_base = 0;
    for _ in 0..MAX_SEGMENTS {
        let base = rd(s + o.seg_base)?;
        let size = rd(s + o.seg_size)?;
        if size == 0 || size > 1 << 40 || !maps.find(base).is_some_and(|x| x.write) {
            return Err(format!("segment {base:#x}+{size} is not mapped memory"));
        }
        r.segment_ranges.push((base, base + size));
        r.segments += 1;
        r.segments_bytes += size;
        last_base = base;
        s = rd(s + o.seg_next)?;
        if s == 0 {
            break;
        }
    }
    let _ = last_base;
    // lj_alloc_create makes the state the first chunk of the first segment
    // (prepend_alloc may since have moved that segment's base down): some
    // segment holds it, and its chunk head is pad_request(sizeof(struct
    // malloc_state)) with CINUSE set, 880 (864 bytes, or 872 with the
    // PRNG pointer of newer builds: both pad to 880).
    if !r.segment_ranges.iter().any(|&(b, e)| ms > b && ms < e) {
        return Err(format!("no segment holds the state {ms:#x}"));
    }
    let head = rd(ms - 8)?;
    if head & !7 != 880 || head & 2 == 0 {
        return Err(format!(
            "the state's chunk head is {head:#x}, not an in-use chunk of 880 bytes"
        ));
    }
    r.top = rd(ms + o.topsize)?;
    r.dv = rd(ms + o.dvsize)?;
    // The state is lj_alloc's from here on: a bin that does not walk is a
    // heap changing under us, a warning with partial figures, not a reason
    // to call the allocator something else.
    let segs = r.segment_ranges.clone();
    let in_segs = |p: u64| segs.iter().any(|&(b, e)| p >= b && p < e);
    let bins = || -> Result<(u64, u64, u64), String> {
        let mut budget = MAX_CHUNKS;
        let mut free_small = 0;
        let mut chunks = 0;
        // Only bins whose map bit is set hold chunks: emptying a small bin
        // clears its bit and leaves its links stale (unlink_first_small_chunk).
        let maps_word = rd(ms)?;
        let (smallmap, treemap) = (maps_word & 0xffff_ffff, maps_word >> 32);
        // Small bins: circular lists headed at smallbin_at(i) (bins overlap: a
        // bin's fd/bk sit at +16/+24 from its pseudo-chunk).
        for i in 0..32u64 {
            if smallmap & (1 << i) == 0 {
                continue;
            }
            let b = ms + o.smallbins + 16 * i;
            let mut p = rd(b + 16)?;
            while p != b {
                if budget == 0 || !in_segs(p) {
                    return Err(format!("small bin {i}: link {p:#x} outside the segments"));
                }
                budget -= 1;
                // head and fd in one read (a syscall per chunk, not two).
                let hf = m.bytes::<16>(p + 8).map_err(|e| e.to_string())?;
                free_small += u64::from_le_bytes(hf[..8].try_into().expect("8")) & !7;
                chunks += 1;
                p = u64::from_le_bytes(hf[8..].try_into().expect("8"));
            }
        }
        // Tree bins: binary tries; chunks of one size hang in a ring by fd.
        let mut free_tree = 0;
        let mut stack: Vec<u64> = Vec::new();
        for i in 0..32u64 {
            if treemap & (1 << i) == 0 {
                continue;
            }
            let t = rd(ms + o.treebins + 8 * i)?;
            if t != 0 {
                stack.push(t);
            }
        }
        while let Some(t) = stack.pop() {
            if budget == 0 || !in_segs(t) {
                return Err(format!("tree bin: node {t:#x} outside the segments"));
            }
            // One read per node: head, fd, bk and both children (a tree
            // chunk's fields from +8 up to child[1], malloc_tree_chunk).
            let le = |b: &[u8], at: u64| {
                let at = (at - 8) as usize;
                u64::from_le_bytes(b[at..at + 8].try_into().expect("8"))
            };
            let node = m.bytes::<40>(t + 8).map_err(|e| e.to_string())?;
            budget = budget.checked_sub(1).ok_or("too many free chunks")?;
            free_tree += le(&node, 8) & !7;
            chunks += 1;
            for c in 0..2 {
                let ch = le(&node, o.t_child + 8 * c);
                if ch != 0 {
                    stack.push(ch);
                }
            }
            // Chunks of the same size hang off the node in a ring by fd.
            let mut x = le(&node, o.t_fd);
            while x != t && in_segs(x) {
                budget = budget.checked_sub(1).ok_or("too many free chunks")?;
                let hf = m.bytes::<16>(x + 8).map_err(|e| e.to_string())?;
                free_tree += u64::from_le_bytes(hf[..8].try_into().expect("8")) & !7;
                chunks += 1;
                x = u64::from_le_bytes(hf[8..].try_into().expect("8"));
            }
        }
        Ok((free_small, free_tree, chunks))
    };
    let (free_small, free_tree, chunks) = match bins() {
        Ok(x) => x,
        Err(why) => {
            r.bins_incomplete = true;
            log::warn!("LuaJIT allocator bins: {why}");
            (0, 0, 0)
        }
    };
    r.smallbins_free = free_small;
    r.treebins_free = free_tree;
    r.free_chunks = chunks;
    r.arena_free = r.top + r.dv + free_small + free_tree;
    Ok(())
}

/// Whether a page start holds a LuaJIT direct chunk (direct_alloc:
/// prev_foot = offset | IS_DIRECT_BIT with offset 0 on a page, head = psize |
/// CINUSE_BIT, a fencepost after psize, the mapping psize + DIRECT_FOOT_PAD
/// long): its mapping length when so. `fence` reads the fencepost head.
pub fn direct_chunk_at(
    prev: u64,
    head: u64,
    page: u64,
    fence: impl Fn(u64) -> Option<u64>,
) -> Option<u64> {
    let psize = head & !7;
    if prev != 1 || head & 7 != 2 || psize < page - DIRECT_FOOT_PAD {
        return None;
    }
    let len = psize + DIRECT_FOOT_PAD;
    if len % page != 0 || fence(psize + 8)? != FENCEPOST_HEAD {
        return None;
    }
    Some(len)
}

impl LuajitMem {
    /// Add a direct chunk found by its header.
    pub fn add_direct(&mut self, len: u64) {
        self.direct_chunks += 1;
        self.direct_bytes += len;
    }

    /// Fill the totals once direct chunks are known.
    pub fn finish(&mut self) {
        if self.system_malloc {
            return;
        }
        self.arena_mapped = self.segments_bytes + self.direct_bytes;
        self.arena_used = self.arena_mapped.saturating_sub(self.arena_free);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_header() {
        let fence = |_| Some(FENCEPOST_HEAD);
        assert_eq!(
            direct_chunk_at(1, 0x20000 - 32 + 2, 4096, fence),
            Some(0x20000)
        );
        assert_eq!(direct_chunk_at(0, 0x20000 - 32 + 2, 4096, fence), None);
        assert_eq!(direct_chunk_at(1, 0x20000 - 32 + 3, 4096, fence), None);
        assert_eq!(
            direct_chunk_at(1, 0x20000 - 32 + 2, 4096, |_| Some(0)),
            None
        );
    }

    #[test]
    fn table() {
        let o = off();
        assert_eq!(o.seg, 840);
        assert_eq!(o.treebins, 584);
    }
}
