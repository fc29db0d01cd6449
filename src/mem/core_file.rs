//! `ljleak mem --core FILE`: the parts of the breakdown that are memory
//! walks — LuaJIT's allocator and JIT code from `g`, glibc's arenas from
//! `main_arena` in libc's data, nginx's zones and timers from `ngx_cycle` —
//! read from a core file by the same readers as a live process
//! ([`super::read_owners`], through the [`crate::target::Memory`] the core
//! implements), plus the mapped bytes of each owner from the core's
//! segments and NT_FILE.
//!
//! What is kernel state and not memory is not in a core: page residency,
//! sharing and swap (smaps), hence the Rss reconciliation, and the open
//! files and sockets. Those parts are named in [`CoreMem::absent`] with the
//! reason, and left out of the JSON, never reported as zeros.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{anon_vma, glibc, nginx, read_owners, FileRss, MemOpts, MemReport, Owner, Rows, Timer};
use crate::offline::{self, CoreOpts};
use crate::report::envelope::{Stamp, SCHEMA_VERSION};
use crate::target::core::elfc::{AT_SYSINFO_EHDR, REG_RSP};

/// Why residency figures are absent.
const NO_SMAPS: &str = "a core holds the process's memory, not the kernel's page accounting (smaps): residency, sharing and swap are not in it";
/// Why fds are absent.
const NO_FDS: &str =
    "open files and sockets are kernel objects, not process memory: a core does not hold them";
/// Mappings larger than this are not probed page by page.
const MAX_PROBED: u64 = 1 << 36;

/// What a report read from a core holds instead of the kernel's figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct CoreMem {
    /// The core file.
    pub file: String,
    /// Mapped bytes (address space, not residency) by owner, from the
    /// core's segments: the same owners as the live `rows`.
    pub mapped: Rows,
    /// Σ mapped.
    pub mapped_total: u64,
    /// Bytes of mappings the core holds the contents of.
    pub dumped: u64,
    /// The parts of a live report a core cannot give (JSON keys, `a.b`
    /// for a key of every element of `a`), with the reason.
    pub absent: BTreeMap<String, String>,
}

/// The keys of a live report that are absent from a core's, with why.
fn absent() -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    for k in [
        "rss",
        "pss",
        "anon",
        "file",
        "swap",
        "kernel",
        "rows",
        "stacks",
        "other_anon",
        "unattributed",
        "files.rss",
        "files.pss",
        "shm.rss",
        "shm.pss",
    ] {
        a.insert(k.to_string(), NO_SMAPS.to_string());
    }
    a.insert("fds".into(), NO_FDS.into());
    a
}

/// The breakdown of the core file `path`.
pub fn breakdown_core(path: &Path, opts: &MemOpts, copts: &CoreOpts) -> anyhow::Result<MemReport> {
    let mut t = Timer {
        at: Some(std::time::Instant::now()),
    };
    let cv = offline::open_vm(path, &opts.locate, copts)?;
    if let Err(why) = crate::luajit::layout::validate(&cv.core, &cv.vm.layout, cv.vm.roots.l) {
        return Err(offline::not_intact(&cv.vm, &why));
    }
    let core = &cv.core;
    let open = |p: &str| cv.open(p);
    let gsyms = glibc::symbols_in(&cv.maps, &open, &cv.root);
    let maps = &with_brk_heap(&cv.maps, glibc::sbrk_base(core, &cv.maps, &gsyms));
    let mut stamp = Stamp::now(-1, "");
    stamp.exe_build_id = offline::build_ids(core, maps).remove(&cv.exe);
    let mut r = MemReport {
        schema: SCHEMA_VERSION,
        kind: "mem".into(),
        pid: core.pid,
        exe: cv.exe.clone(),
        stamp,
        threads: core.threads.len() as u64,
        pause_us: cv.note.as_ref().map_or(0, |n| n.pause_us),
        ..Default::default()
    };
    let mut warnings = Vec::new();
    let nsyms = nginx::symbols_in(maps, &open, &cv.exe);
    t.lap(&mut r, "symbols");
    let (mut claims, ngx) = read_owners(
        core,
        maps,
        Some(&cv.vm),
        &gsyms,
        nsyms.as_ref(),
        &mut r,
        &mut t,
        &mut warnings,
    );
    // Stacks: the mapping under each thread's stack pointer (the main
    // thread's whole, the others' from their start, as live).
    let main_sp = core
        .thread(core.pid)
        .or(core.threads.first())
        .map(|th| th.regs[REG_RSP]);
    let main_stack = main_sp.and_then(|sp| maps.find(sp)).map(|m| m.start);
    for th in &core.threads {
        if Some(th.regs[REG_RSP]) == main_sp {
            continue;
        }
        if let Some(m) = maps
            .find(th.regs[REG_RSP])
            .filter(|m| m.file_path().is_none())
        {
            let end = m.end.min(m.start + (8 << 20)).max(th.regs[REG_RSP] + 1);
            claims.push((m.start, end.min(m.end), Owner::Stack));
        }
    }
    claims.sort_by_key(|c| c.0);
    let vdso = core
        .auxv
        .iter()
        .find(|(k, _)| *k == AT_SYSINFO_EHDR)
        .map(|(_, v)| *v);
    let zones: Vec<u64> = ngx.zones.iter().map(|z| z.addr).collect();

    let page = super::smaps::page_size();
    let mut c = CoreMem {
        file: path.display().to_string(),
        absent: absent(),
        ..Default::default()
    };
    let mut files: BTreeMap<String, FileRss> = BTreeMap::new();
    let mut shm_maps = Vec::new();
    let mut prev_file_end = None;
    // Every page of the core counts as there (a core has no residency), so
    // more pages are probed than live, where only resident ones are.
    let mut scan_budget: u64 = 1 << 21;
    for m in &maps.list {
        let len = m.len();
        c.mapped_total += len;
        c.dumped += core.segment(m.start).map_or(0, |s| s.filesz);
        let after_file = prev_file_end == Some(m.start);
        prev_file_end = m.file_path().map(|_| m.end);
        let shared_path = m.file_path().is_some_and(|p| {
            ["/dev/zero", "/SYSV", "/memfd:", "/dev/shm/"]
                .iter()
                .any(|x| p.starts_with(x))
        });
        if Some(m.start) == main_stack {
            c.mapped.stacks += len;
        } else if vdso.is_some_and(|v| m.contains(v)) {
            c.mapped.other_anon += len;
        } else if shared_path || zones.iter().any(|&z| m.contains(z)) {
            c.mapped.shm += len;
            let mut map = m.clone();
            // A shared anonymous mapping: /proc/PID/maps names its unlinked
            // shmem file so; cores may drop the suffix.
            if map.path == "/dev/zero" {
                map.path = "/dev/zero (deleted)".into();
            }
            shm_maps.push(super::smaps::SmapsEntry {
                map,
                rss: 0,
                pss: 0,
                anon: 0,
                swap: 0,
                shared: 0,
            });
        } else if let Some(p) = m.file_path() {
            c.mapped.files += len;
            let f = files.entry(p.to_string()).or_insert_with(|| FileRss {
                path: p.to_string(),
                ..Default::default()
            });
            f.size += len;
        } else if !m.read || len > MAX_PROBED {
            super::add(&mut c.mapped, None, len, after_file);
        } else {
            // Every page counts as there: the mapped bytes are attributed
            // as the live pages are, and direct chunks are found by their
            // headers the same way (a page the core lacks reads as absent).
            let present = Some(vec![true; (len / page) as usize]);
            anon_vma(
                core,
                present,
                page,
                m,
                len,
                &claims,
                after_file,
                &mut scan_budget,
                &mut c.mapped,
                &mut r.luajit,
            );
        }
    }
    t.lap(&mut r, "attribution");
    r.luajit.finish();
    r.shm = nginx::zones_with_rss(ngx.zones, &shm_maps.iter().collect::<Vec<_>>());
    r.timers = ngx.timers;
    let mut fl: Vec<FileRss> = files.into_values().collect();
    fl.sort_by(|a, b| b.size.cmp(&a.size).then(a.path.cmp(&b.path)));
    r.files = fl;
    if let Some(n) = &cv.note {
        if n.consistency != "quiescent" {
            warnings.push(format!(
                "the dump was taken {} (stopped in {}): allocator figures are best-effort",
                n.consistency,
                n.stopped_in.as_deref().unwrap_or("?")
            ));
        }
    } else if let Some(q) = offline::quiescence_of(core).filter(|q| !q.is_quiescent()) {
        warnings.push(format!(
            "the main thread was {} when the core was written: allocator figures are best-effort",
            q.describe()
        ));
    }
    r.warnings = warnings;
    r.core = Some(c);
    Ok(r)
}

/// The maps with the brk heap named `[heap]`, as /proc/PID/maps names it
/// (glibc's main arena lives there; a core does not name it): the
/// anonymous mapping holding glibc's `mp_.sbrk_base`, and the anonymous
/// mappings contiguous with it (an mprotect or madvise splits the heap).
fn with_brk_heap(maps: &crate::target::Maps, sbrk_base: Option<u64>) -> crate::target::Maps {
    let mut out = maps.clone();
    if out.list.iter().any(|m| m.path == "[heap]") {
        return out;
    }
    let anon = |m: &crate::target::Mapping| m.inode == 0 && m.path.is_empty() && m.write;
    let Some(first) =
        sbrk_base.and_then(|b| out.list.iter().position(|m| m.contains(b) && anon(m)))
    else {
        return out;
    };
    let mut end = out.list[first].start;
    for m in out.list[first..].iter_mut() {
        if m.start != end || !anon(m) {
            break;
        }
        m.path = "[heap]".into();
        end = m.end;
    }
    out
}

/// The JSON of a report read from a core: the live report's keys, less the
/// absent ones (listed in `core.absent`).
pub fn json(r: &MemReport) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    let Some(c) = &r.core else { return v };
    let Some(o) = v.as_object_mut() else { return v };
    for k in c.absent.keys() {
        match k.split_once('.') {
            None => {
                o.remove(k);
            }
            Some((list, key)) => {
                if let Some(a) = o.get_mut(list).and_then(|x| x.as_array_mut()) {
                    for e in a.iter_mut().filter_map(|e| e.as_object_mut()) {
                        e.remove(key);
                    }
                }
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::{Mapping, Maps};

    fn anon(start: u64, end: u64) -> Mapping {
        Mapping {
            start,
            end,
            read: true,
            write: true,
            exec: false,
            private: true,
            offset: 0,
            inode: 0,
            path: String::new(),
        }
    }

    #[test]
    fn brk_heap_is_named_from_sbrk_base() {
        let mut exe = anon(0x1000, 0x2000);
        exe.inode = 1;
        exe.path = "/usr/bin/luajit".into();
        let maps = Maps {
            list: vec![
                exe,
                anon(0x2000, 0x3000), // .bss
                anon(0x9000, 0xa000), // the heap, split in two
                anon(0xa000, 0xb000),
                anon(0x20000, 0x21000), // an mmap
            ],
        };
        let named = with_brk_heap(&maps, Some(0x9010));
        let heap: Vec<u64> = named
            .list
            .iter()
            .filter(|m| m.path == "[heap]")
            .map(|m| m.start)
            .collect();
        assert_eq!(heap, vec![0x9000, 0xa000]);
        let none = with_brk_heap(&maps, None);
        assert!(none.list.iter().all(|m| m.path != "[heap]"));
    }

    #[test]
    fn json_leaves_out_what_a_core_lacks() {
        let r = MemReport {
            files: vec![FileRss {
                path: "/lib/x".into(),
                size: 4096,
                ..Default::default()
            }],
            core: Some(CoreMem {
                absent: absent(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = json(&r);
        for k in ["rss", "pss", "rows", "fds", "kernel", "unattributed"] {
            assert!(v.get(k).is_none(), "{k}");
        }
        assert!(v["files"][0].get("rss").is_none());
        assert_eq!(v["files"][0]["size"], 4096);
        assert!(v["luajit"].is_object() && v["glibc"].is_object());
        assert!(v["core"]["absent"]["fds"]
            .as_str()
            .unwrap()
            .contains("kernel"));
    }
}
