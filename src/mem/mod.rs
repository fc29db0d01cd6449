//! Where a process's memory goes: the kernel's count (smaps) reconciled,
//! resident byte for resident byte, with the owners ljleak can name —
//! LuaJIT's allocator and JIT code, glibc's arenas and mmapped chunks,
//! nginx shared memory zones, thread stacks, file-backed mappings — plus
//! what the process holds open (fds, TCP sockets) and nginx's timers.
//!
//! The allocators' state is read during one brief pause (PTRACE_SEIZE +
//! INTERRUPT, taken while the main thread sits in a syscall that is not
//! memory management); `nonblocking` skips it. Either way every pointer is
//! validated and every loop is bounded, so a heap changing under us costs
//! accuracy (with a warning), never a hang. /proc files and page residency
//! are read outside the pause. `breakdown` is the library entry point (`ljleak mem`, and
//! exporters, call it).

pub mod core_file;
pub mod fds;
pub mod glibc;
pub mod ljalloc;
pub mod nginx;
pub mod smaps;
pub mod timers;

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::report::envelope::{schema_v1, Stamp, SCHEMA_VERSION};
use crate::target::{Maps, Memory, ProcessMemory, ReadExt, TargetError};

pub use core_file::{breakdown_core, CoreMem};
pub use fds::Fds;
pub use glibc::Glibc;
pub use ljalloc::LuajitMem;
pub use nginx::{ShmZone, Timers};

/// Options of [`breakdown`].
#[derive(Debug, Clone, Default)]
pub struct MemOpts {
    /// How to find the LuaJIT VM.
    pub locate: crate::luajit::LocateOpts,
    /// Skip the fd and socket tables.
    pub no_fds: bool,
    /// Read the allocators without pausing the target (tolerating a heap
    /// that changes under us).
    pub nonblocking: bool,
    /// Pause attempts to find the main thread blocked in a syscall.
    pub attempts: u32,
}

/// Resident bytes of one file's mappings.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct FileRss {
    /// Path as the target sees it.
    pub path: String,
    /// Resident bytes.
    pub rss: u64,
    /// Proportional share.
    pub pss: u64,
    /// Mapped bytes.
    pub size: u64,
}

/// The reconciliation rows: resident bytes by owner, adding up exactly to
/// `rss` (every row is a sum of pages the kernel counts as resident).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Rows {
    /// LuaJIT allocator segments and direct chunks.
    pub luajit_arena: u64,
    /// JIT machine code areas.
    pub luajit_mcode: u64,
    /// glibc arenas (brk heap, thread arena heaps).
    pub glibc_arenas: u64,
    /// glibc mmapped chunks.
    pub glibc_mmapped: u64,
    /// Shared memory mappings (nginx zones and other shared anonymous memory).
    pub shm: u64,
    /// Thread stacks.
    pub stacks: u64,
    /// File-backed mappings.
    pub files: u64,
    /// Other anonymous memory with a known kind (.bss after a file, vdso...).
    pub other_anon: u64,
    /// Anonymous memory no owner claims.
    pub unattributed: u64,
}

impl Rows {
    /// Sum of all rows.
    pub fn sum(&self) -> u64 {
        self.luajit_arena
            + self.luajit_mcode
            + self.glibc_arenas
            + self.glibc_mmapped
            + self.shm
            + self.stacks
            + self.files
            + self.other_anon
            + self.unattributed
    }
}

/// The memory of one process.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MemReport {
    /// Snapshot schema version.
    #[serde(default = "schema_v1")]
    pub schema: u32,
    /// Always `mem`.
    pub kind: String,
    /// The process.
    pub pid: i32,
    /// Its executable.
    pub exe: String,
    /// Envelope.
    #[serde(flatten)]
    pub stamp: Stamp,
    /// Resident bytes (Σ smaps Rss; `kernel.rss` is smaps_rollup's).
    pub rss: u64,
    /// Proportional set size.
    pub pss: u64,
    /// Anonymous resident bytes.
    pub anon: u64,
    /// File-backed and shared resident bytes (rss − anon).
    pub file: u64,
    /// Swapped out.
    pub swap: u64,
    /// Resident anonymous bytes no owner claims (never spread over the rows).
    pub unattributed: u64,
    /// LuaJIT.
    pub luajit: LuajitMem,
    /// glibc malloc.
    pub glibc: Glibc,
    /// nginx shared memory zones (or shared mappings when not nginx).
    pub shm: Vec<ShmZone>,
    /// Thread stacks, resident.
    pub stacks: u64,
    /// File-backed mappings by file, most resident first.
    pub files: Vec<FileRss>,
    /// Other anonymous resident memory of a known kind.
    pub other_anon: u64,
    /// Open files and sockets.
    pub fds: Fds,
    /// nginx lua timers.
    pub timers: Timers,
    /// The reconciliation.
    pub rows: Rows,
    /// smaps_rollup, as read before the walk.
    pub kernel: smaps::Rollup,
    /// Threads.
    pub threads: u64,
    /// Microseconds each part took.
    pub timings_us: BTreeMap<String, u64>,
    /// How long the target was paused (0: never).
    pub pause_us: u64,
    /// What could not be read or did not validate.
    pub warnings: Vec<String>,
    /// Read from a core file: mapped bytes by owner, and the parts a core
    /// cannot give (absent from this JSON).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub core: Option<core_file::CoreMem>,
}

/// A claimed address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    LjArena,
    LjMcode,
    GlibcArena,
    GlibcMmapped,
    Stack,
}

/// Take the breakdown of process `pid`.
pub fn breakdown(pid: i32, opts: &MemOpts) -> Result<MemReport, TargetError> {
    crate::target::check_process(pid)?;
    let mut t = Timer {
        at: Some(Instant::now()),
    };
    let exe = crate::target::exe_path(pid)?;
    let mut r = MemReport {
        schema: SCHEMA_VERSION,
        kind: "mem".into(),
        pid,
        exe: exe.clone(),
        ..Default::default()
    };
    let maps = Maps::read(pid)?;
    let mem = ProcessMemory::new(pid);
    let mut warnings = Vec::new();

    // Everything that reads ELF files first (symbols, DWARF layouts), so
    // that the pause below only copies allocator state.
    let found = crate::luajit::find_vm(pid, &maps, &opts.locate);
    if let Err(e) = &found {
        log::info!("no LuaJIT VM: {e}");
    }
    let gsyms = glibc::symbols(pid, &maps);
    let nsyms = nginx::symbols(pid, &maps);
    let stacks = thread_stacks(pid, &maps);
    t.lap(&mut r, "symbols");

    // The allocators' state is read in one brief pause, taken while the
    // main thread is blocked in a syscall that is not memory management
    // (so no allocator call is half done), as `objs` does.
    let pause = if opts.nonblocking {
        None
    } else {
        Some(quiescent_pause(pid, opts.attempts.max(1), &mut warnings)?)
    };
    t.lap(&mut r, "pause_wait");
    // The mappings as they are now: a busy worker maps a new segment every
    // few milliseconds, and pointers are validated against these.
    let maps = if pause.is_some() {
        Maps::read(pid)?
    } else {
        maps
    };
    let (mut claims, ngx) = read_owners(
        &mem,
        &maps,
        found.as_ref().ok(),
        &gsyms,
        nsyms.as_ref(),
        &mut r,
        &mut t,
        &mut warnings,
    );
    if let Some(p) = pause {
        r.pause_us = p.resume().as_micros() as u64;
    }
    claims.extend(stacks.into_iter().map(|(s, e)| (s, e, Owner::Stack)));
    claims.sort_by_key(|c| c.0);
    // The kernel's count, after the pause (smaps walks page tables: on a
    // large heap it takes longer than the allocator reads). A segment
    // mapped meanwhile is counted by the kernel but claimed by nobody, so
    // it shows as unattributed: the race is visible, never hidden.
    t.lap(&mut r, "resume");
    let rollup = smaps::read_rollup(pid)?;
    let entries = smaps::read_smaps(pid)?;
    t.lap(&mut r, "smaps");

    // Walk every mapping once.
    let mut pm = smaps::Pagemap::open(pid);
    if !pm.available() {
        warnings.push("pagemap unreadable: anonymous mappings are attributed whole".into());
    }
    let page = pm.page();
    let mut files: BTreeMap<String, FileRss> = BTreeMap::new();
    let mut shm_maps: Vec<&smaps::SmapsEntry> = Vec::new();
    let mut prev_file_end = None;
    // Header probes of unclaimed pages (one small read each).
    let mut scan_budget: u64 = 1 << 17;
    for e in &entries {
        let m = &e.map;
        r.rss += e.rss;
        r.pss += e.pss;
        r.anon += e.anon;
        r.swap += e.swap;
        let after_file = prev_file_end == Some(m.start);
        prev_file_end = m.file_path().map(|_| m.end);
        if m.path == "[stack]" {
            r.rows.stacks += e.rss;
        } else if m.path.starts_with('[') && m.path != "[heap]" {
            r.rows.other_anon += e.rss;
        } else if !m.private || m.path.starts_with("/memfd:") || m.path.starts_with("/SYSV") {
            r.rows.shm += e.rss;
            shm_maps.push(e);
        } else if let Some(p) = m.file_path() {
            r.rows.files += e.rss;
            let f = files.entry(p.to_string()).or_insert_with(|| FileRss {
                path: p.to_string(),
                ..Default::default()
            });
            f.rss += e.rss;
            f.pss += e.pss;
            f.size += m.len();
        } else {
            let present = pm.present(m.start, m.end);
            anon_vma(
                &mem,
                present,
                page,
                m,
                e.rss,
                &claims,
                after_file,
                &mut scan_budget,
                &mut r.rows,
                &mut r.luajit,
            );
        }
    }
    t.lap(&mut r, "attribution");
    r.luajit.finish();
    r.shm = nginx::zones_with_rss(ngx.zones, &shm_maps);
    r.timers = ngx.timers;
    r.file = r.rss.saturating_sub(r.anon);
    r.stacks = r.rows.stacks;
    r.other_anon = r.rows.other_anon;
    r.unattributed = r.rows.unattributed;
    let mut fl: Vec<FileRss> = files.into_values().collect();
    fl.sort_by(|a, b| b.rss.cmp(&a.rss).then(a.path.cmp(&b.path)));
    r.files = fl;
    if let Some(k) = rollup {
        r.kernel = k;
    }
    if !opts.no_fds {
        match fds::read(pid) {
            Ok(f) => r.fds = f,
            Err(e) => warnings.push(format!("fds: {e}")),
        }
    }
    t.lap(&mut r, "fds");
    r.threads = crate::target::threads(pid)
        .map(|t| t.len() as u64)
        .unwrap_or(0);
    r.warnings = warnings;
    r.stamp = Stamp::now(pid, &exe);
    if !crate::target::process_alive(pid) {
        return Err(TargetError::Exited(pid));
    }
    Ok(r)
}

/// The owners ljleak can name, read from memory: LuaJIT's allocator and
/// JIT code, glibc's arenas, nginx's zones and timers; with the ranges each
/// claims. The same reads for a live process (during its pause) and for a
/// core file.
#[allow(clippy::too_many_arguments)]
fn read_owners<M: Memory + ?Sized>(
    mem: &M,
    maps: &Maps,
    vm: Option<&crate::luajit::FoundVm>,
    gsyms: &glibc::Symbols,
    nsyms: Option<&nginx::Symbols>,
    r: &mut MemReport,
    t: &mut Timer,
    warnings: &mut Vec<String>,
) -> (Vec<(u64, u64, Owner)>, nginx::Nginx) {
    let mut claims: Vec<(u64, u64, Owner)> = Vec::new();
    if let Some(vm) = vm {
        let lj = ljalloc::read(
            mem,
            &vm.layout,
            vm.roots.g,
            vm.roots.main + vm.layout.f.gg_j.off,
            maps,
            warnings,
        );
        claims.extend(
            lj.segment_ranges
                .iter()
                .map(|&(s, e)| (s, e, Owner::LjArena)),
        );
        claims.extend(lj.mcode_ranges.iter().map(|&(s, e)| (s, e, Owner::LjMcode)));
        r.luajit = lj;
    }
    t.lap(r, "luajit");
    r.glibc = glibc::read(mem, maps, gsyms, warnings);
    for a in &r.glibc.arenas {
        claims.extend(a.ranges.iter().map(|&(s, e)| (s, e, Owner::GlibcArena)));
    }
    t.lap(r, "glibc");
    // nginx zones name the shared mappings; timers come from its rbtree.
    let ngx = match nsyms {
        Some(ns) => nginx::read(mem, maps, ns, vm, warnings),
        None => nginx::Nginx::default(),
    };
    t.lap(r, "nginx");
    (claims, ngx)
}

/// Wall time of each part, into `timings_us`.
struct Timer {
    at: Option<Instant>,
}

impl Timer {
    fn lap(&mut self, r: &mut MemReport, what: &str) {
        let now = Instant::now();
        let since = self.at.unwrap_or(now);
        if self.at.is_some() {
            r.timings_us
                .insert(what.into(), now.duration_since(since).as_micros() as u64);
        } else {
            r.timings_us.insert(what.into(), 0);
        }
        self.at = Some(now);
    }
}

/// Attribute one private anonymous mapping page by page: claimed ranges to
/// their owner, glibc mmapped and LuaJIT direct chunks found by their
/// headers, the rest to `other_anon` (a .bss right after a file) or
/// `unattributed`. Rows never exceed the mapping's Rss; pages the pagemap
/// shows but smaps does not count (the shared zero page) come off
/// unattributed first.
#[allow(clippy::too_many_arguments)]
fn anon_vma<M: Memory + ?Sized>(
    mem: &M,
    present: Option<Vec<bool>>,
    page: u64,
    m: &crate::target::Mapping,
    rss: u64,
    claims: &[(u64, u64, Owner)],
    after_file: bool,
    scan_budget: &mut u64,
    rows: &mut Rows,
    lj: &mut LuajitMem,
) {
    let Some(present) = present else {
        // No pagemap: the whole mapping goes to its first claimant.
        let owner = claims
            .iter()
            .find(|c| c.0 < m.end && c.1 > m.start)
            .map(|c| c.2);
        add(rows, owner, rss, after_file);
        return;
    };
    let mut by: [u64; 5] = [0; 5];
    let mut rest = 0u64;
    let npages = present.len() as u64;
    let mut i = 0u64;
    let mut ci = claims.partition_point(|c| c.1 <= m.start);
    while i < npages {
        let a = m.start + i * page;
        while ci < claims.len() && claims[ci].1 <= a {
            ci += 1;
        }
        if ci < claims.len() && claims[ci].0 <= a {
            let (_, end, o) = claims[ci];
            let stop = ((end.min(m.end) - m.start).div_ceil(page)).max(i + 1);
            let n = present[i as usize..stop as usize]
                .iter()
                .filter(|x| **x)
                .count() as u64;
            by[o as usize] += n * page;
            i = stop;
            continue;
        }
        if !present[i as usize] {
            i += 1;
            continue;
        }
        // An unclaimed resident page: a chunk mapped on its own? (Bounded:
        // a huge unattributed region is not probed page by page forever.)
        let probe = if *scan_budget > 0 {
            *scan_budget -= 1;
            mem.bytes::<16>(a).ok()
        } else {
            None
        };
        if let Some(h) = probe {
            let prev = u64::from_le_bytes(h[..8].try_into().expect("8"));
            let size = u64::from_le_bytes(h[8..].try_into().expect("8"));
            let len = glibc::mmapped_chunk_at(prev, size, page)
                .map(|l| (l, Owner::GlibcMmapped))
                .or_else(|| {
                    ljalloc::direct_chunk_at(prev, size, page, |o| mem.u64(a + o).ok())
                        .map(|l| (l, Owner::LjArena))
                });
            if let Some((len, o)) = len.filter(|(l, _)| a + l <= m.end) {
                let stop = i + len / page;
                let n = present[i as usize..stop as usize]
                    .iter()
                    .filter(|x| **x)
                    .count() as u64;
                by[o as usize] += n * page;
                if o == Owner::LjArena {
                    lj.add_direct(len);
                }
                i = stop;
                continue;
            }
        }
        rest += page;
        i += 1;
    }
    // Reconcile with the kernel's Rss of this mapping.
    let mut budget = rss;
    for (k, b) in by.iter_mut().enumerate() {
        let take = (*b).min(budget);
        budget -= take;
        add(rows, Some(owner_of(k)), take, after_file);
    }
    add(rows, None, rest.min(budget), after_file);
    budget -= rest.min(budget);
    // Pages smaps counts but pagemap did not show (faulted in meanwhile).
    add(rows, None, budget, after_file);
}

fn owner_of(k: usize) -> Owner {
    [
        Owner::LjArena,
        Owner::LjMcode,
        Owner::GlibcArena,
        Owner::GlibcMmapped,
        Owner::Stack,
    ][k]
}

fn add(row: &mut Rows, o: Option<Owner>, bytes: u64, after_file: bool) {
    match o {
        Some(Owner::LjArena) => row.luajit_arena += bytes,
        Some(Owner::LjMcode) => row.luajit_mcode += bytes,
        Some(Owner::GlibcArena) => row.glibc_arenas += bytes,
        Some(Owner::GlibcMmapped) => row.glibc_mmapped += bytes,
        Some(Owner::Stack) => row.stacks += bytes,
        None if after_file => row.other_anon += bytes,
        None => row.unattributed += bytes,
    }
}

/// Pause every thread of `pid` at a moment when the main thread is blocked
/// in a syscall that is not memory management; after `attempts` tries, hold
/// the last pause anyway and say so.
fn quiescent_pause(
    pid: i32,
    attempts: u32,
    warnings: &mut Vec<String>,
) -> Result<crate::target::Pause, TargetError> {
    let timeout = std::time::Duration::from_secs(2);
    for i in 0..attempts {
        let p = crate::target::Pause::new(pid, timeout)?;
        let q = p.quiescence(pid)?;
        if q.is_quiescent() || i + 1 == attempts {
            if !q.is_quiescent() {
                warnings.push(format!(
                    "the main thread was {} at each of {attempts} pauses: allocator figures are best-effort",
                    q.describe()
                ));
            }
            return Ok(p);
        }
        drop(p);
        std::thread::sleep(std::time::Duration::from_micros(500 + 200 * i as u64));
    }
    unreachable!("the loop returns on its last attempt")
}

/// Stacks of the threads other than the main one: the mapping that holds
/// each blocked thread's stack pointer (`/proc/PID/task/TID/syscall`), from
/// its start (right above glibc's guard page) for at most the stack size
/// limit.
fn thread_stacks(pid: i32, maps: &Maps) -> Vec<(u64, u64)> {
    let limit = stack_limit(pid);
    let mut out = Vec::new();
    for tid in crate::target::threads(pid).unwrap_or_default() {
        if tid == pid {
            continue;
        }
        let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")) else {
            continue;
        };
        let f: Vec<&str> = s.split_whitespace().collect();
        if f.len() < 3 {
            continue;
        }
        let Some(sp) = u64::from_str_radix(f[f.len() - 2].trim_start_matches("0x"), 16).ok() else {
            continue;
        };
        if let Some(m) = maps
            .find(sp)
            .filter(|m| m.file_path().is_none() && m.path != "[stack]")
        {
            let end = m.end.min(m.start + limit).max(sp + 1);
            out.push((m.start, end.min(m.end)));
        }
    }
    out
}

fn stack_limit(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()
        .and_then(|t| {
            let l = t.lines().find(|l| l.starts_with("Max stack size"))?;
            l.split_whitespace().nth(3)?.parse().ok()
        })
        .unwrap_or(8 << 20)
}

/// Text from the target made safe to print: control characters become
/// `\u{..}` escapes (a zone name or path must not drive the terminal).
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}
