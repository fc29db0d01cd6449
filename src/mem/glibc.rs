//! glibc malloc seen from outside: its arenas (main and thread arenas,
//! through the `next` ring of `struct malloc_state`), their free chunks
//! (bins, fastbins, top), the tcache of each arena's first thread, and the
//! mmapped chunks counted in `mp_`.
//!
//! `main_arena` and `mp_` are static in libc: with a debug file (libc6-dbg)
//! their addresses come from its symbol table; otherwise they are found in
//! libc's writable data by their invariants (see [`find_main_arena`],
//! [`find_mp`]) and validated the same way. Definitions follow glibc's own
//! `int_mallinfo` (malloc.c), so the figures compare with `mallinfo2()`:
//! free = top + fastbins + bins, in use = system − free (tcache chunks
//! count as in use there, as here; they are reported apart as `tcache`).

use serde::{Deserialize, Serialize};

use crate::luajit::fields::FieldMap;
use crate::target::elf::ElfFile;
use crate::target::{Maps, Memory, ReadExt};

const LAYOUT: &str = include_str!("layouts/glibc-x86_64.txt");

/// Chunk size bits (malloc.c): PREV_INUSE 1, IS_MMAPPED 2, NON_MAIN_ARENA 4.
const SIZE_BITS: u64 = 7;
/// HEAP_MAX_SIZE on 64-bit: 2 * DEFAULT_MMAP_THRESHOLD_MAX (arena.c).
pub const HEAP_MAX: u64 = 64 << 20;
/// Upper bound on chunks visited per arena walk (a heap changing under us
/// must not make us loop).
const MAX_CHUNKS: u64 = 4_000_000;
/// Upper bound on arenas (glibc caps them at 8 × cores by default).
const MAX_ARENAS: usize = 1024;

/// Offsets from the data table.
#[derive(Debug, Clone, Copy)]
struct Off {
    fastbins: u64,
    top: u64,
    bins: u64,
    next: u64,
    system_mem: u64,
    max_system_mem: u64,
    arena_size: u64,
    mp_mmap_threshold: u64,
    mp_n_mmaps: u64,
    mp_n_mmaps_max: u64,
    mp_mmapped_mem: u64,
    mp_sbrk_base: u64,
    mp_tcache_bins: u64,
    mp_tcache_max_bytes: u64,
    mp_tcache_count: u64,
    mp_arena_test: u64,
    hi_ar_ptr: u64,
    hi_prev: u64,
    hi_size: u64,
    hi_sizeof: u64,
}

fn off() -> Off {
    let fm = FieldMap::parse(LAYOUT);
    let o = |k: &str| fm.get(k).map(|x| x.0).expect("glibc table complete");
    let s = |k: &str| fm.get(k).map(|x| x.1).expect("glibc table complete");
    Off {
        fastbins: o("malloc_state.fastbinsY"),
        top: o("malloc_state.top"),
        bins: o("malloc_state.bins"),
        next: o("malloc_state.next"),
        system_mem: o("malloc_state.system_mem"),
        max_system_mem: o("malloc_state.max_system_mem"),
        arena_size: s("malloc_state.SIZEOF"),
        mp_mmap_threshold: o("malloc_par.mmap_threshold"),
        mp_n_mmaps: o("malloc_par.n_mmaps"),
        mp_n_mmaps_max: o("malloc_par.n_mmaps_max"),
        mp_mmapped_mem: o("malloc_par.mmapped_mem"),
        mp_sbrk_base: o("malloc_par.sbrk_base"),
        mp_tcache_bins: o("malloc_par.tcache_bins"),
        mp_tcache_max_bytes: o("malloc_par.tcache_max_bytes"),
        mp_tcache_count: o("malloc_par.tcache_count"),
        mp_arena_test: o("malloc_par.arena_test"),
        hi_ar_ptr: o("heap_info.ar_ptr"),
        hi_prev: o("heap_info.prev"),
        hi_size: o("heap_info.size"),
        hi_sizeof: s("heap_info.SIZEOF"),
    }
}

/// One arena's figures (bytes unless named a count).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Arena {
    /// `main` or `thread`.
    pub kind: String,
    /// AVMA of its malloc_state.
    pub addr: u64,
    /// `system_mem`: memory the arena took from the system.
    pub system: u64,
    /// system − free.
    pub in_use: u64,
    /// top + fastbins + bins.
    pub free: u64,
    /// The top chunk.
    pub top: u64,
    /// Free chunks in the regular bins (unsorted, small, large).
    pub bins_free: u64,
    /// Their number.
    pub bins_chunks: u64,
    /// Free chunks in fastbins.
    pub fastbin_free: u64,
    /// Their number.
    pub fastbin_chunks: u64,
    /// Chunks held in the tcache of the arena's first thread (part of in_use).
    pub tcache: u64,
    /// Their number.
    pub tcache_chunks: u64,
    /// `max_system_mem`.
    pub max_system: u64,
    /// Address ranges of the arena's heaps (thread arenas) or brk heap.
    #[serde(skip)]
    pub ranges: Vec<(u64, u64)>,
}

/// glibc malloc as a whole.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Glibc {
    /// False when libc is not mapped or its malloc state was not found.
    pub found: bool,
    /// `debug-symbols` or `invariants`.
    pub located_by: String,
    /// With a debug file: whether the invariant search found the same
    /// main_arena and mp_ as its symbols (None without one).
    pub invariants_match_symbols: Option<bool>,
    /// Σ arena system memory (mmapped chunks apart).
    pub system: u64,
    /// Σ in use in arenas.
    pub in_use: u64,
    /// Σ free in arenas.
    pub free: u64,
    /// Bytes in mmapped chunks (`mp_.mmapped_mem`).
    pub mmapped: u64,
    /// Their number (`mp_.n_mmaps`).
    pub mmapped_chunks: u64,
    /// Σ tcache bytes (included in in_use).
    pub tcache: u64,
    /// Σ fastbin bytes (included in free).
    pub fastbins: u64,
    /// The mmap threshold in force.
    pub mmap_threshold: u64,
    /// Per arena.
    pub arenas: Vec<Arena>,
}

/// The libc mapped by the target (path in the target's view).
pub fn libc_path(maps: &Maps) -> Option<String> {
    maps.files()
        .into_iter()
        .find(|p| {
            let name = p.rsplit('/').next().unwrap_or("");
            name.starts_with("libc.so") || (name.starts_with("libc-") && name.ends_with(".so"))
        })
        .map(str::to_string)
}

/// Read glibc's malloc state of `pid`.
pub fn read<M: Memory + ?Sized>(
    m: &M,
    maps: &Maps,
    syms: &Symbols,
    warnings: &mut Vec<String>,
) -> Glibc {
    let o = off();
    let Some(libc) = syms.libc.clone() else {
        warnings.push("glibc: no libc mapped (static binary or another C library)".into());
        return Glibc::default();
    };
    let (sym_arena, sym_mp) = (syms.main_arena, syms.mp);
    let data = libc_data(maps, &libc);
    // The invariant search always runs: it is the method on a box without
    // debug files, and where symbols exist they check it.
    let inv_arena = find_main_arena(m, &o, maps, &data);
    let inv_mp = find_mp(m, &o, maps, &data);
    let agree = match (sym_arena, sym_mp) {
        (Some(a), Some(p)) => Some(inv_arena == Some(a) && inv_mp == Some(p)),
        _ => None,
    };
    if agree == Some(false) {
        warnings.push(format!(
            "glibc: invariant search found main_arena {inv_arena:x?} and mp_ {inv_mp:x?}, debug symbols say {sym_arena:x?} and {sym_mp:x?}"
        ));
    }
    let (arena, mp, by) = match (sym_arena, sym_mp) {
        (Some(a), Some(p)) if valid_arena(m, &o, a, maps) => (a, Some(p), "debug-symbols"),
        _ => {
            let Some(a) = inv_arena else {
                warnings.push(format!(
                    "glibc: main_arena not found in {libc}'s data (install its debug file, e.g. libc6-dbg)"
                ));
                return Glibc::default();
            };
            (a, inv_mp, "invariants")
        }
    };
    let mut g = Glibc {
        found: true,
        located_by: by.into(),
        invariants_match_symbols: agree,
        ..Default::default()
    };
    let sbrk_base = mp.and_then(|p| m.u64(p + o.mp_sbrk_base).ok()).unwrap_or(0);
    if let Some(p) = mp {
        g.mmapped = m.u64(p + o.mp_mmapped_mem).unwrap_or(0);
        g.mmapped_chunks = m.u32(p + o.mp_n_mmaps).unwrap_or(0) as u64;
        g.mmap_threshold = m.u64(p + o.mp_mmap_threshold).unwrap_or(0);
    } else {
        warnings.push("glibc: mp_ not found: mmapped chunks unknown".into());
    }
    let mut a = arena;
    let mut budget = MAX_CHUNKS;
    for i in 0..MAX_ARENAS {
        let main = i == 0;
        match walk_arena(m, &o, a, main, sbrk_base, maps, &mut budget) {
            Ok(ar) => g.arenas.push(ar),
            Err(why) => {
                warnings.push(format!("glibc: arena {a:#x}: {why}"));
                break;
            }
        }
        match m.u64(a + o.next) {
            Ok(n) if n == arena => break,
            Ok(n) if n != 0 && !g.arenas.iter().any(|x| x.addr == n) => a = n,
            _ => {
                warnings.push("glibc: arena ring broken (changed under us?)".into());
                break;
            }
        }
    }
    for ar in &g.arenas {
        g.system += ar.system;
        g.in_use += ar.in_use;
        g.free += ar.free;
        g.tcache += ar.tcache;
        g.fastbins += ar.fastbin_free;
    }
    g
}

/// Where the brk heap starts (`mp_.sbrk_base`; 0 before the first brk):
/// for a core, whose mappings carry no `[heap]` name.
pub fn sbrk_base<M: Memory + ?Sized>(m: &M, maps: &Maps, syms: &Symbols) -> Option<u64> {
    let o = off();
    let mp = match syms.mp {
        Some(p) => p,
        None => find_mp(m, &o, maps, &libc_data(maps, syms.libc.as_deref()?))?,
    };
    m.u64(mp + o.mp_sbrk_base).ok().filter(|&b| b != 0)
}

/// What the ELF files say, looked up before any pause (opening libc's
/// debug file takes tens of milliseconds).
#[derive(Debug, Clone, Default)]
pub struct Symbols {
    /// libc's path in the target.
    pub libc: Option<String>,
    /// `main_arena` from the debug file.
    pub main_arena: Option<u64>,
    /// `mp_` from the debug file.
    pub mp: Option<u64>,
}

/// Look up libc and its debug symbols.
pub fn symbols(pid: i32, maps: &Maps) -> Symbols {
    let root = std::path::PathBuf::from(format!("/proc/{pid}/root"));
    symbols_in(maps, &|p| ElfFile::open(pid, p).ok(), &root)
}

/// Look up libc and its debug symbols, opening files with `open` (by their
/// path in the target) and looking for debug files under `root`: a live
/// process's root, or a core's `--sysroot`.
pub fn symbols_in(
    maps: &Maps,
    open: &dyn Fn(&str) -> Option<ElfFile>,
    root: &std::path::Path,
) -> Symbols {
    let Some(libc) = libc_path(maps) else {
        return Symbols::default();
    };
    let (main_arena, mp) = debug_symbols(open, &libc, maps, root);
    Symbols {
        libc: Some(libc),
        main_arena,
        mp,
    }
}

fn debug_symbols(
    open: &dyn Fn(&str) -> Option<ElfFile>,
    libc: &str,
    maps: &Maps,
    root: &std::path::Path,
) -> (Option<u64>, Option<u64>) {
    let Some(elf) = open(libc) else {
        return (None, None);
    };
    let Some(bias) = elf.bias(maps) else {
        return (None, None);
    };
    let Some(dbg) = elf.debug_file(root) else {
        return (None, None);
    };
    let Ok(d) = ElfFile::open_host(&dbg.to_string_lossy(), &dbg) else {
        return (None, None);
    };
    let at = |n: &str| d.symbol(n, true).map(|(s, _)| s.wrapping_add(bias));
    (at("main_arena"), at("mp_"))
}

/// libc's writable data: its rw file mappings and the anonymous mapping
/// right after them (.bss). Bytes copied once, searched locally.
fn libc_data(maps: &Maps, libc: &str) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut last_end = None;
    for mp in &maps.list {
        if mp.file_path() == Some(libc) {
            if mp.write {
                out.push((mp.start, mp.end));
            }
            last_end = Some(mp.end);
        } else if mp.inode == 0 && mp.write && Some(mp.start) == last_end {
            out.push((mp.start, mp.end));
            last_end = None;
        }
    }
    out
}

fn readable(maps: &Maps, a: u64) -> bool {
    maps.find(a).is_some_and(|m| m.read)
}

/// The invariants of a live `malloc_state` at `a`: `next` ring closes on
/// itself within MAX_ARENAS, top is a chunk in readable memory (or, before
/// the first allocation, the unsorted bin itself), every bin is empty
/// (self-linked) or links 16-byte-aligned chunks, sizes are page multiples.
fn valid_arena<M: Memory + ?Sized>(m: &M, o: &Off, a: u64, maps: &Maps) -> bool {
    let Ok(buf) = m.vec(a, o.arena_size as usize) else {
        return false;
    };
    valid_arena_bytes(&buf, o, a, maps) && ring_closes(m, o, a, maps)
}

fn le(b: &[u8], at: u64) -> u64 {
    u64::from_le_bytes(b[at as usize..at as usize + 8].try_into().expect("8 bytes"))
}

fn valid_arena_bytes(b: &[u8], o: &Off, a: u64, maps: &Maps) -> bool {
    let bin_at = |i: u64| a + o.bins + (i - 1) * 16 - 16;
    let top = le(b, o.top);
    if top != bin_at(1) && (top % 16 != 0 || !readable(maps, top)) {
        return false;
    }
    let sys = le(b, o.system_mem);
    let max = le(b, o.max_system_mem);
    if sys % 4096 != 0 || max < sys || max > 1 << 46 {
        return false;
    }
    let mutex = u32::from_le_bytes(b[0..4].try_into().expect("4")) as u64;
    if mutex > 2 {
        return false;
    }
    let mut empty = 0;
    for i in 1..128u64 {
        let fd = le(b, o.bins + (i - 1) * 16);
        let bk = le(b, o.bins + (i - 1) * 16 + 8);
        if fd == bin_at(i) && bk == bin_at(i) {
            empty += 1;
        } else if fd % 16 != 0 || bk % 16 != 0 || !readable(maps, fd) || !readable(maps, bk) {
            return false;
        }
    }
    empty > 0 && le(b, o.next) != 0
}

fn ring_closes<M: Memory + ?Sized>(m: &M, o: &Off, a: u64, maps: &Maps) -> bool {
    let mut x = a;
    for _ in 0..MAX_ARENAS {
        match m.u64(x + o.next) {
            Ok(n) if n == a => return true,
            Ok(n) if readable(maps, n) => x = n,
            _ => return false,
        }
    }
    false
}

/// Search libc's data for `main_arena`: the one 8-aligned place where a
/// whole `malloc_state` passes [`valid_arena`].
fn find_main_arena<M: Memory + ?Sized>(
    m: &M,
    o: &Off,
    maps: &Maps,
    data: &[(u64, u64)],
) -> Option<u64> {
    for &(s, e) in data {
        let Ok(buf) = m.vec(s, (e - s) as usize) else {
            continue;
        };
        let n = buf.len() as u64;
        let mut at = 0u64;
        while at + o.arena_size <= n {
            let a = s + at;
            // Cheap filter first: `next` non-null and the unsorted bin's
            // links are self or aligned.
            let nx = le(&buf, at + o.next);
            if nx != 0 && nx % 8 == 0 {
                let w = &buf[at as usize..(at + o.arena_size) as usize];
                if valid_arena_bytes(w, o, a, maps) && ring_closes(m, o, a, maps) {
                    return Some(a);
                }
            }
            at += 16;
        }
    }
    None
}

/// Search libc's data for `mp_`: tcache parameters in their allowed ranges
/// (tcache_bins ≤ 64 and tcache_max_bytes = the size of its last bin, as
/// do_set_tcache_max keeps them), an mmap threshold between its minimum and
/// maximum, sbrk_base 0 or the start of [heap].
fn find_mp<M: Memory + ?Sized>(m: &M, o: &Off, maps: &Maps, data: &[(u64, u64)]) -> Option<u64> {
    let heap = maps
        .list
        .iter()
        .find(|x| x.path == "[heap]")
        .map(|x| x.start);
    for &(s, e) in data {
        let Ok(buf) = m.vec(s, (e - s) as usize) else {
            continue;
        };
        let mut at = 0u64;
        while at + 136 <= buf.len() as u64 {
            let bins = le(&buf, at + o.mp_tcache_bins);
            let maxb = le(&buf, at + o.mp_tcache_max_bytes);
            let cnt = le(&buf, at + o.mp_tcache_count);
            let thr = le(&buf, at + o.mp_mmap_threshold);
            let sbrk = le(&buf, at + o.mp_sbrk_base);
            let nmax = u32::from_le_bytes(
                buf[(at + o.mp_n_mmaps_max) as usize..][..4]
                    .try_into()
                    .expect("4"),
            );
            let test = le(&buf, at + o.mp_arena_test);
            if (1..=64).contains(&bins)
                && maxb <= 1032
                && maxb + 16 > (bins - 1) * 16 + 24
                && cnt <= 65535
                && (128 << 10..=32 << 20).contains(&thr)
                && (sbrk == 0 || Some(sbrk) == heap || heap.is_none())
                && nmax > 0
                && (1..=1 << 20).contains(&test)
            {
                return Some(s + at);
            }
            at += 8;
        }
    }
    None
}

fn chunk_size<M: Memory + ?Sized>(m: &M, p: u64) -> Result<u64, String> {
    m.u64(p + 8)
        .map(|s| s & !SIZE_BITS)
        .map_err(|e| format!("chunk {p:#x}: {e}"))
}

fn walk_arena<M: Memory + ?Sized>(
    m: &M,
    o: &Off,
    a: u64,
    main: bool,
    sbrk_base: u64,
    maps: &Maps,
    budget: &mut u64,
) -> Result<Arena, String> {
    let rd = |x: u64| m.u64(x).map_err(|e| e.to_string());
    let mut ar = Arena {
        kind: if main { "main" } else { "thread" }.into(),
        addr: a,
        system: rd(a + o.system_mem)?,
        max_system: rd(a + o.max_system_mem)?,
        ..Default::default()
    };
    let top = rd(a + o.top)?;
    let bin_at = |i: u64| a + o.bins + (i - 1) * 16 - 16;
    ar.top = if top == bin_at(1) {
        0
    } else {
        chunk_size(m, top)?
    };
    // Fastbins: singly linked, `fd` protected by safe-linking since 2.32
    // (PROTECT_PTR: stored = (&fd >> 12) ^ ptr).
    for i in 0..10u64 {
        let mut p = rd(a + o.fastbins + 8 * i)?;
        while p != 0 {
            if *budget == 0 {
                return Err("too many chunks (heap changing?)".into());
            }
            *budget -= 1;
            if p % 16 != 0 {
                return Err(format!("fastbin {i}: misaligned chunk {p:#x}"));
            }
            ar.fastbin_free += chunk_size(m, p)?;
            ar.fastbin_chunks += 1;
            let stored = rd(p + 16)?;
            p = ((p + 16) >> 12) ^ stored;
        }
    }
    // Regular bins, walked from `last` by `bk` as int_mallinfo does.
    for i in 1..128u64 {
        let b = bin_at(i);
        let mut p = rd(b + 24)?;
        while p != b {
            if *budget == 0 {
                return Err("too many chunks (heap changing?)".into());
            }
            *budget -= 1;
            if p % 16 != 0 || p == 0 {
                return Err(format!("bin {i}: bad link {p:#x}"));
            }
            ar.bins_free += chunk_size(m, p)?;
            ar.bins_chunks += 1;
            p = rd(p + 24)?;
        }
    }
    ar.free = ar.top + ar.fastbin_free + ar.bins_free;
    ar.in_use = ar.system.saturating_sub(ar.free);
    // Where the arena's memory is, and its first chunk (the tcache of the
    // first thread that used it is allocated there, tcache_init).
    let first_chunk;
    if main {
        // The brk heap; the kernel may show it as several VMAs (an
        // mprotect or madvise in the middle splits it).
        for h in maps.list.iter().filter(|x| x.path == "[heap]") {
            ar.ranges.push((h.start, h.end));
        }
        first_chunk = if sbrk_base != 0 {
            (sbrk_base + 15) & !15
        } else {
            0
        };
    } else {
        // heap_for_ptr: heaps are HEAP_MAX-aligned; the arena sits after the
        // heap_info of its first heap.
        let mut h = top & !(HEAP_MAX - 1);
        let mut first = 0;
        for _ in 0..4096 {
            if h == 0 || rd(h + o.hi_ar_ptr).ok() != Some(a) {
                break;
            }
            let size = rd(h + o.hi_size)?;
            ar.ranges.push((h, h + size.min(HEAP_MAX)));
            first = h;
            h = rd(h + o.hi_prev)?;
        }
        first_chunk = if first != 0 && a == first + o.hi_sizeof {
            // The first chunk follows the arena, aligned so that its user
            // pointer is 16-aligned (new_heap / _int_new_arena).
            let p = a + o.arena_size;
            p + ((16 - (p + 16) % 16) % 16)
        } else {
            0
        };
    }
    if first_chunk != 0 {
        // tcache_perthread_struct: a 0x290 chunk, in use (PREV_INUSE set).
        if let Ok(sz) = m.u64(first_chunk + 8) {
            if sz & !SIZE_BITS == 0x290 {
                if let Ok(counts) = m.vec(first_chunk + 16, 128) {
                    for (i, c) in counts.chunks_exact(2).enumerate() {
                        let n = u16::from_le_bytes([c[0], c[1]]) as u64;
                        if n > 0 && n <= 65535 {
                            ar.tcache_chunks += n;
                            ar.tcache += n * (32 + 16 * i as u64);
                        }
                    }
                }
            }
        }
    }
    Ok(ar)
}

/// Whether the 16 bytes at a page start look like a glibc mmapped chunk
/// header (prev_size 0, IS_MMAPPED set, NON_MAIN_ARENA clear, page-multiple
/// size): its length when so.
pub fn mmapped_chunk_at(prev: u64, size: u64, page: u64) -> Option<u64> {
    let len = size & !SIZE_BITS;
    (prev == 0 && size & SIZE_BITS == 2 && len >= page && len % page == 0).then_some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_ptype() {
        let o = off();
        assert_eq!(o.next, 2160);
        assert_eq!(o.system_mem, 2184);
        assert_eq!(o.arena_size, 2200);
        assert_eq!(o.mp_mmapped_mem, 80);
        assert_eq!(o.hi_sizeof, 48);
    }

    #[test]
    fn mmapped_header() {
        assert_eq!(mmapped_chunk_at(0, 0x21002, 4096), Some(0x21000));
        assert_eq!(mmapped_chunk_at(0, 0x21001, 4096), None);
        assert_eq!(mmapped_chunk_at(1, 0x21002, 4096), None);
    }
}
