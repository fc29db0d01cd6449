//! Where a process's memory goes: the kernel's count (smaps) reconciled,
//! resident byte for resident byte, with the owners ljleak can name —
//! LuaJIT's allocator and JIT code, glibc's arenas and mmapped chunks,
//! nginx shared memory zones, thread stacks, file-backed mappings — plus
//! what the process holds open (fds, TCP sockets) and nginx's timers.
//!
//! Reading needs no pause: every pointer is validated and every loop is
//! bounded, so a heap changing under us costs accuracy (with a warning),
//! never a hang. `breakdown` is the library entry point (`ljleak mem`, and
//! exporters, call it).

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
use crate::target::{Maps, ProcessMemory, ReadExt, TargetError};

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
    /// The target was never paused.
    pub pause_us: u64,
    /// What could not be read or did not validate.
    pub warnings: Vec<String>,
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
    let mut t = Timer::default();
    let exe = crate::target::exe_path(pid)?;
    let mut r = MemReport {
        schema: SCHEMA_VERSION,
        kind: "mem".into(),
        pid,
        exe: exe.clone(),
        ..Default::default()
    };
    let rollup = smaps::read_rollup(pid)?;
    let entries = smaps::read_smaps(pid)?;
    t.lap(&mut r, "smaps");
    let maps = Maps {
        list: entries.iter().map(|e| e.map.clone()).collect(),
    };
    let mem = ProcessMemory::new(pid);
    let mut warnings = Vec::new();

    // LuaJIT (any process: absent VM is normal here).
    let mut claims: Vec<(u64, u64, Owner)> = Vec::new();
    let found = crate::luajit::find_vm(pid, &maps, &opts.locate);
    match &found {
        Ok(vm) => {
            let lj = ljalloc::read(
                &mem,
                &vm.layout,
                vm.roots.g,
                vm.roots.main + vm.layout.f.gg_j.off,
                &maps,
                &mut warnings,
            );
            claims.extend(
                lj.segment_ranges
                    .iter()
                    .map(|&(s, e)| (s, e, Owner::LjArena)),
            );
            claims.extend(lj.mcode_ranges.iter().map(|&(s, e)| (s, e, Owner::LjMcode)));
            r.luajit = lj;
        }
        Err(e) => log::info!("no LuaJIT VM: {e}"),
    }
    t.lap(&mut r, "luajit");
    r.glibc = glibc::read(&mem, pid, &maps, &mut warnings);
    for a in &r.glibc.arenas {
        claims.extend(a.ranges.iter().map(|&(s, e)| (s, e, Owner::GlibcArena)));
    }
    t.lap(&mut r, "glibc");
    claims.extend(
        thread_stacks(pid, &maps)
            .into_iter()
            .map(|(s, e)| (s, e, Owner::Stack)),
    );
    claims.sort_by_key(|c| c.0);

    // nginx zones name the shared mappings.
    let ngx = nginx::read(&mem, pid, &maps, found.as_ref().ok(), &mut warnings);
    t.lap(&mut r, "nginx");

    // Walk every mapping once.
    let mut pm = smaps::Pagemap::open(pid);
    if !pm.available() {
        warnings.push("pagemap unreadable: anonymous mappings are attributed whole".into());
    }
    let page = pm.page();
    let mut files: BTreeMap<String, FileRss> = BTreeMap::new();
    let mut shm_maps: Vec<&smaps::SmapsEntry> = Vec::new();
    let mut prev_file_end = None;
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
            anon_vma(&mem, &mut pm, page, e, &claims, after_file, &mut r);
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

#[derive(Default)]
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
fn anon_vma(
    mem: &ProcessMemory,
    pm: &mut smaps::Pagemap,
    page: u64,
    e: &smaps::SmapsEntry,
    claims: &[(u64, u64, Owner)],
    after_file: bool,
    r: &mut MemReport,
) {
    let m = &e.map;
    let Some(present) = pm.present(m.start, m.end) else {
        // No pagemap: the whole mapping goes to its first claimant.
        let owner = claims
            .iter()
            .find(|c| c.0 < m.end && c.1 > m.start)
            .map(|c| c.2);
        add(r, owner, e.rss, after_file);
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
        // An unclaimed resident page: a chunk mapped on its own?
        if let Ok(h) = mem.bytes::<16>(a) {
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
                    r.luajit.add_direct(len);
                }
                i = stop;
                continue;
            }
        }
        rest += page;
        i += 1;
    }
    // Reconcile with the kernel's Rss of this mapping.
    let mut budget = e.rss;
    for (k, b) in by.iter_mut().enumerate() {
        let take = (*b).min(budget);
        budget -= take;
        add(r, Some(owner_of(k)), take, after_file);
    }
    add(r, None, rest.min(budget), after_file);
    budget -= rest.min(budget);
    // Pages smaps counts but pagemap did not show (faulted in meanwhile).
    add(r, None, budget, after_file);
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

fn add(r: &mut MemReport, o: Option<Owner>, bytes: u64, after_file: bool) {
    let row = &mut r.rows;
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
