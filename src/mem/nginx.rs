//! nginx's shared memory zones (`ngx_cycle->shared_memory`, an `ngx_list_t`
//! of `ngx_shm_zone_t`) with their slab pools, and the lua module's timers.
//!
//! nginx builds carry no debug info: offsets come from a data table for
//! nginx 1.22 and are accepted only when every zone passes its invariants
//! (the slab pool's `start`/`end` lie inside the zone, `pfree` fits); when
//! the table's list offset fails, the cycle is searched for the one
//! `ngx_list_t` whose element size is `sizeof(ngx_shm_zone_t)`.

use serde::{Deserialize, Serialize};

use crate::luajit::fields::FieldMap;
use crate::target::elf::ElfFile;
use crate::target::{Maps, Memory, ReadExt};

const LAYOUT: &str = include_str!("layouts/nginx-1.22-x86_64.txt");
const MAX_ZONES: usize = 4096;

/// One shared memory zone (or, outside nginx, one shared mapping).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ShmZone {
    /// Zone name (the dictionary name for lua_shared_dict).
    pub name: String,
    /// `lua_shared_dict`, `nginx` (another module's zone) or `mapping`.
    pub kind: String,
    /// Zone size (`ngx.shared.DICT:capacity()`).
    pub size: u64,
    /// size − free.
    pub used: u64,
    /// Free slab pages × page size (`ngx.shared.DICT:free_space()`).
    pub free: u64,
    /// Slab pages in all.
    pub pages: u64,
    /// Free slab pages.
    pub pages_free: u64,
    /// Resident in this process.
    pub rss: u64,
    /// Proportional share in this process.
    pub pss: u64,
    /// AVMA of the zone.
    pub addr: u64,
}

/// ngx.timer counts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Timers {
    /// The counts were read.
    pub found: bool,
    /// Pending timers (`lmcf->pending_timers`).
    pub pending: u64,
    /// Running timers (`lmcf->running_timers`).
    pub running: u64,
    /// Pending timers by callback `chunk:line`.
    pub by_callback: Vec<Site>,
}

/// Timers of one callback.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Site {
    /// `chunk:line`.
    pub site: String,
    /// How many.
    pub count: u64,
}

/// What was read from nginx.
#[derive(Debug, Default)]
pub struct Nginx {
    /// Zones (rss/pss filled later).
    pub zones: Vec<ShmZone>,
    /// Timers.
    pub timers: Timers,
}

struct Off {
    cycle_shm: u64,
    list_part: u64,
    list_size: u64,
    list_nalloc: u64,
    part_elts: u64,
    part_nelts: u64,
    part_next: u64,
    zone_shm: u64,
    zone_tag: u64,
    zone_size: u64,
    shm_addr: u64,
    shm_size: u64,
    shm_name: u64,
    str_len: u64,
    str_data: u64,
    slab_pfree: u64,
    slab_start: u64,
    slab_end: u64,
}

fn off() -> Off {
    let fm = FieldMap::parse(LAYOUT);
    let o = |k: &str| fm.get(k).map(|x| x.0).expect("nginx table complete");
    Off {
        cycle_shm: o("ngx_cycle_t.shared_memory"),
        list_part: o("ngx_list_t.part"),
        list_size: o("ngx_list_t.size"),
        list_nalloc: o("ngx_list_t.nalloc"),
        part_elts: o("ngx_list_part_t.elts"),
        part_nelts: o("ngx_list_part_t.nelts"),
        part_next: o("ngx_list_part_t.next"),
        zone_shm: o("ngx_shm_zone_t.shm"),
        zone_tag: o("ngx_shm_zone_t.tag"),
        zone_size: fm
            .get("ngx_shm_zone_t.SIZEOF")
            .map(|x| x.1)
            .expect("sizeof"),
        shm_addr: o("ngx_shm_t.addr"),
        shm_size: o("ngx_shm_t.size"),
        shm_name: o("ngx_shm_t.name"),
        str_len: o("ngx_str_t.len"),
        str_data: o("ngx_str_t.data"),
        slab_pfree: o("ngx_slab_pool_t.pfree"),
        slab_start: o("ngx_slab_pool_t.start"),
        slab_end: o("ngx_slab_pool_t.end"),
    }
}

/// AVMA of a `.dynsym` symbol in the first mapped file that exports it.
pub fn dynsym(pid: i32, maps: &Maps, files: &[&str], name: &str) -> Option<u64> {
    dynsym_in(maps, &|p| ElfFile::open(pid, p).ok(), files, name)
}

/// [`dynsym`] with files opened by `open` (their path in the target).
fn dynsym_in(
    maps: &Maps,
    open: &dyn Fn(&str) -> Option<ElfFile>,
    files: &[&str],
    name: &str,
) -> Option<u64> {
    for path in files {
        let Some(elf) = open(path) else {
            continue;
        };
        if let Some((svma, _)) = elf.symbol(name, false) {
            return Some(svma.wrapping_add(elf.bias(maps)?));
        }
    }
    None
}

/// The nginx symbols `mem` reads through, looked up before any pause.
#[derive(Debug, Clone, Default)]
pub struct Symbols {
    /// The executable (target path).
    pub exe: String,
    /// `&ngx_cycle`.
    pub cycle: u64,
    /// `&ngx_http_module`.
    pub http_module: Option<u64>,
    /// `&ngx_http_lua_module`.
    pub lua_module: Option<u64>,
    /// `&ngx_event_timer_rbtree`.
    pub timer_rbtree: Option<u64>,
}

/// Look the symbols up; None when the process is not nginx.
pub fn symbols(pid: i32, maps: &Maps) -> Option<Symbols> {
    let exe = crate::target::exe_path(pid).ok()?;
    symbols_in(maps, &|p| ElfFile::open(pid, p).ok(), &exe)
}

/// [`symbols`] of the executable `exe` (its path in the target), files
/// opened by `open`: a live process's or a core's.
pub fn symbols_in(
    maps: &Maps,
    open: &dyn Fn(&str) -> Option<ElfFile>,
    exe: &str,
) -> Option<Symbols> {
    let exe = exe.strip_suffix(" (deleted)").unwrap_or(exe).to_string();
    let sym = |files: &[&str], name: &str| dynsym_in(maps, open, files, name);
    let cycle = sym(&[&exe], "ngx_cycle")?;
    // The lua module is a dynamic module (Debian) or built in.
    let mut files: Vec<&str> = maps
        .files()
        .into_iter()
        .filter(|p| p.contains("lua"))
        .collect();
    files.insert(0, &exe);
    Some(Symbols {
        http_module: sym(&[&exe], "ngx_http_module"),
        lua_module: sym(&files, "ngx_http_lua_module")
            .or_else(|| sym(&maps.files(), "ngx_http_lua_module")),
        timer_rbtree: sym(&[&exe], "ngx_event_timer_rbtree"),
        cycle,
        exe,
    })
}

/// Read the zones and timers of an nginx process. `vm` (the lua module's
/// VM) validates timer coroutines.
pub fn read<M: Memory + ?Sized>(
    m: &M,
    maps: &Maps,
    syms: &Symbols,
    vm: Option<&crate::luajit::FoundVm>,
    warnings: &mut Vec<String>,
) -> Nginx {
    let mut out = Nginx::default();
    let Ok(cycle) = m.u64(syms.cycle) else {
        return out;
    };
    let lua_mod = syms.lua_module;
    let o = off();
    let mut at = Some(cycle + o.cycle_shm);
    if !list_ok(m, &o, cycle + o.cycle_shm, maps) {
        at = (0..1024u64)
            .step_by(8)
            .map(|k| cycle + k)
            .find(|&l| list_ok(m, &o, l, maps));
        if let Some(a) = at {
            warnings.push(format!(
                "nginx: shared_memory list found at cycle+{} (table says {})",
                a - cycle,
                o.cycle_shm
            ));
        }
    }
    if let (Some(lm), Some(vm)) = (lua_mod, vm) {
        out.timers = super::timers::read(m, maps, syms, cycle, lm, vm, warnings);
    }
    let Some(list) = at else {
        warnings.push(
            "nginx: ngx_cycle->shared_memory not found (nginx version not in the table?)".into(),
        );
        return out;
    };
    let mut part = list + o.list_part;
    let mut n = 0;
    'parts: for _ in 0..MAX_ZONES {
        let (Ok(elts), Ok(nelts)) = (m.u64(part + o.part_elts), m.u64(part + o.part_nelts)) else {
            break;
        };
        for i in 0..nelts.min(MAX_ZONES as u64) {
            n += 1;
            if n > MAX_ZONES {
                break 'parts;
            }
            let z = elts + i * o.zone_size;
            match zone(m, &o, z, lua_mod) {
                Ok(zn) => out.zones.push(zn),
                Err(why) => warnings.push(format!("nginx: zone {i}: {why}")),
            }
        }
        match m.u64(part + o.part_next) {
            Ok(0) | Err(_) => break,
            Ok(nx) => part = nx,
        }
    }
    out
}

fn list_ok<M: Memory + ?Sized>(m: &M, o: &Off, l: u64, maps: &Maps) -> bool {
    let rd = |a| m.u64(a).unwrap_or(u64::MAX);
    let size = rd(l + o.list_size);
    let nalloc = rd(l + o.list_nalloc);
    let nelts = rd(l + o.list_part + o.part_nelts);
    let elts = rd(l + o.list_part + o.part_elts);
    size == o.zone_size
        && (1..=MAX_ZONES as u64).contains(&nalloc)
        && nelts <= nalloc
        && maps.find(elts).is_some_and(|x| x.read)
}

fn zone<M: Memory + ?Sized>(
    m: &M,
    o: &Off,
    z: u64,
    lua_mod: Option<u64>,
) -> Result<ShmZone, String> {
    let rd = |a: u64| m.u64(a).map_err(|e| e.to_string());
    let shm = z + o.zone_shm;
    let addr = rd(shm + o.shm_addr)?;
    let size = rd(shm + o.shm_size)?;
    let nlen = rd(shm + o.shm_name + o.str_len)?.min(256);
    let ndata = rd(shm + o.shm_name + o.str_data)?;
    let name = m
        .vec(ndata, nlen as usize)
        .map(|b| super::printable(&String::from_utf8_lossy(&b)))
        .map_err(|e| e.to_string())?;
    let tag = rd(z + o.zone_tag)?;
    let mut zn = ShmZone {
        name,
        kind: if Some(tag) == lua_mod && tag != 0 {
            "lua_shared_dict"
        } else {
            "nginx"
        }
        .into(),
        size,
        addr,
        ..Default::default()
    };
    if addr == 0 {
        return Ok(zn); // not mapped yet (master before init)
    }
    // Zones that use the slab allocator start with their ngx_slab_pool_t
    // (ngx_init_zone_pool); ngx_slab_init sets start/end/pfree.
    let start = rd(addr + o.slab_start)?;
    let end = rd(addr + o.slab_end)?;
    let pfree = rd(addr + o.slab_pfree)?;
    let page = crate::mem::smaps::page_size();
    if start > addr && start < end && end <= addr + size && pfree <= (end - start) / page {
        zn.pages = (end - start) / page;
        zn.pages_free = pfree;
        zn.free = pfree * page;
        zn.used = size - zn.free;
    }
    Ok(zn)
}

/// Give each zone its mapping's Rss and Pss; shared mappings that are no
/// zone are listed by their path.
pub fn zones_with_rss(mut zones: Vec<ShmZone>, maps: &[&super::smaps::SmapsEntry]) -> Vec<ShmZone> {
    let mut used = vec![false; maps.len()];
    for z in zones.iter_mut() {
        if let Some((k, e)) = maps
            .iter()
            .enumerate()
            .find(|(_, e)| e.map.contains(z.addr))
        {
            used[k] = true;
            z.rss = e.rss;
            z.pss = e.pss;
        }
    }
    for (k, e) in maps.iter().enumerate() {
        if !used[k] {
            zones.push(ShmZone {
                name: super::printable(&e.map.path),
                kind: "mapping".into(),
                size: e.map.len(),
                rss: e.rss,
                pss: e.pss,
                addr: e.map.start,
                ..Default::default()
            });
        }
    }
    zones
}
