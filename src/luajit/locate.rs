//! Finding the LuaJIT VM in a process and choosing its layout.
//!
//! Methods, in order (the first that yields a valid VM wins):
//! 1. nginx with the lua module: `ngx_cycle->conf_ctx[ngx_http_module.index]
//!    ->main_conf[ngx_http_lua_module.ctx_index]->lua` using `.dynsym` only;
//! 2. the `globalL` static of the luajit host (in `.symtab`);
//! 3. a scan of anonymous writable memory for a main lua_State embedded at
//!    the start of GG_State (validated by back-pointers);
//!
//! A `--lua-state ADDR` given by the user is tried alone: an address the user
//! typed that is not a VM is an error, not a hint to guess elsewhere.

use super::fields::FieldMap;
use super::layout::{self, Layout, LayoutSource, VmRoots};
use crate::target::elf::{ElfFile, SymTable};
use crate::target::{Maps, Memory, ProcessMemory, ReadExt};

/// How the VM was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// The nginx lua module's main conf.
    Nginx,
    /// The `globalL` symbol.
    GlobalL,
    /// Memory scan for GG_State.
    Scan,
    /// `--lua-state`.
    User,
}

impl Method {
    /// Name for `--verbose` and reports.
    pub fn name(self) -> &'static str {
        match self {
            Method::Nginx => "nginx lua module main conf (ngx_cycle)",
            Method::GlobalL => "globalL symbol",
            Method::Scan => "scan of anonymous memory for GG_State",
            Method::User => "--lua-state",
        }
    }
}

/// A VM found and understood.
#[derive(Debug, Clone)]
pub struct FoundVm {
    /// How.
    pub method: Method,
    /// Its layout.
    pub layout: Layout,
    /// lua_State, global_State, main thread.
    pub roots: VmRoots,
    /// The object file holding LuaJIT (library or executable), if known.
    pub luajit_object: Option<String>,
    /// Notes for `--verbose` (DWARF vs table differences...).
    pub notes: Vec<String>,
}

/// Why no VM was found.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// Nothing found by any method.
    #[error("no LuaJIT VM found in {what} (tried {tried}); if it does run LuaJIT, pass --lua-state ADDR")]
    NotFound {
        /// Target (`process 1234`, `core FILE`).
        what: String,
        /// What was tried and why it failed.
        tried: String,
    },
    /// A VM candidate exists but no layout fits.
    #[error(transparent)]
    Layout(#[from] layout::LayoutError),
}

/// Options for [`find_vm`].
#[derive(Debug, Clone, Default)]
pub struct LocateOpts {
    /// `--lua-state`.
    pub lua_state: Option<u64>,
    /// `--layout NAME`: skip detection.
    pub layout: Option<String>,
}

/// Where the VM is looked for: a memory, its mappings, and how to open the
/// files mapped in it (a live process's own files, or the files a core
/// names, found by build-id).
pub struct Host<'a, M: Memory + ?Sized> {
    /// The memory.
    pub mem: &'a M,
    /// Its mappings.
    pub maps: &'a Maps,
    /// The executable's path as the target saw it.
    pub exe: Option<String>,
    /// Open a mapped file by its path in the target.
    pub open: &'a dyn Fn(&str) -> Option<ElfFile>,
    /// Root of the filesystem to look for separate debug files under.
    pub debug_root: std::path::PathBuf,
    /// What is searched, for messages (`process 1234`, `core FILE`).
    pub what: String,
}

/// Find the VM of `pid`, reading live memory.
pub fn find_vm(pid: i32, maps: &Maps, opts: &LocateOpts) -> Result<FoundVm, LocateError> {
    let mem = ProcessMemory::new(pid);
    let exe = crate::target::exe_path(pid).ok();
    let open = |path: &str| ElfFile::open(pid, path).ok();
    let host = Host {
        mem: &mem,
        maps,
        exe: exe.map(|e| e.strip_suffix(" (deleted)").unwrap_or(&e).to_string()),
        open: &open,
        debug_root: std::path::PathBuf::from(format!("/proc/{pid}/root")),
        what: format!("process {pid}"),
    };
    find_vm_in(&host, opts)
}

/// Find the VM in any [`Host`].
pub fn find_vm_in<M: Memory + ?Sized>(
    host: &Host<'_, M>,
    opts: &LocateOpts,
) -> Result<FoundVm, LocateError> {
    let mem = host.mem;
    let maps = host.maps;
    let luajit_obj = luajit_object_in(host);
    let dwarf = luajit_obj
        .as_ref()
        .and_then(|e| dwarf_layout(&host.debug_root, e));
    let mut tried = Vec::new();
    let mut layout_err = None;

    let mut attempt = |method: Method, l: u64, tried: &mut Vec<String>| -> Option<FoundVm> {
        match choose_layout(mem, l, opts.layout.as_deref(), dwarf.as_ref()) {
            Ok((layout, roots, notes)) => Some(FoundVm {
                method,
                layout,
                roots,
                luajit_object: luajit_obj.as_ref().map(|e| e.target_path.clone()),
                notes,
            }),
            Err(e) => {
                tried.push(format!("{} gave {l:#x}, rejected: {e}", method.name()));
                layout_err = Some(e);
                None
            }
        }
    };

    if let Some(l) = opts.lua_state {
        if let Some(vm) = attempt(Method::User, l, &mut tried) {
            return Ok(vm);
        }
        return Err(LocateError::NotFound {
            what: host.what.clone(),
            tried: format!(
                "--lua-state {l:#x}: {}",
                layout_err.map(|e| e.to_string()).unwrap_or_default()
            ),
        });
    }
    match nginx_lua_state(host) {
        Ok(l) => {
            if let Some(vm) = attempt(Method::Nginx, l, &mut tried) {
                return Ok(vm);
            }
        }
        Err(why) => tried.push(format!("nginx: {why}")),
    }
    match global_l(host) {
        Ok(l) => {
            if let Some(vm) = attempt(Method::GlobalL, l, &mut tried) {
                return Ok(vm);
            }
        }
        Err(why) => tried.push(format!("globalL: {why}")),
    }
    // GG_State is LuaJIT's first allocation, so it is usually in the first
    // mappings: stop at the first candidate that validates.
    let mut seen = false;
    for m in maps.list.iter().filter(|m| m.is_anon_heap()) {
        for l in scan_mapping(mem, m) {
            seen = true;
            if let Some(vm) = attempt(Method::Scan, l, &mut tried) {
                return Ok(vm);
            }
        }
    }
    if !seen {
        tried.push("scan: no GG_State signature in anonymous memory".into());
    }
    // A VM was seen but nothing fits: say so precisely.
    if let Some(e) = layout_err {
        if matches!(
            e,
            layout::LayoutError::NoMatch { .. }
                | layout::LayoutError::Missing { .. }
                | layout::LayoutError::Inconsistent { .. }
        ) {
            return Err(LocateError::Layout(e));
        }
    }
    Err(LocateError::NotFound {
        what: host.what.clone(),
        tried: tried.join("; "),
    })
}

/// Pick the layout for the VM at `l`: forced, DWARF (cross-checked), or the
/// one built-in table whose invariants hold.
fn choose_layout<M: Memory + ?Sized>(
    m: &M,
    l: u64,
    forced: Option<&str>,
    dwarf: Option<&Layout>,
) -> Result<(Layout, VmRoots, Vec<String>), layout::LayoutError> {
    let mut notes = Vec::new();
    if let Some(name) = forced {
        let lay = Layout::builtins()
            .into_iter()
            .find(|b| b.name == name)
            .ok_or_else(|| layout::LayoutError::NoMatch {
                l,
                reasons: format!("--layout {name} is not a known layout"),
            })?;
        let mut lay = lay;
        lay.source = LayoutSource::Forced;
        let roots = layout::validate(m, &lay, l).map_err(|why| layout::LayoutError::NoMatch {
            l,
            reasons: format!("{name}: {why}"),
        })?;
        return Ok((lay, roots, notes));
    }
    if let Some(d) = dwarf {
        match layout::validate(m, d, l) {
            Ok(roots) => {
                let mut d = d.clone();
                if let Some(table) = layout::matching_builtin(&d) {
                    let diff = d.f.diff(&table.f);
                    if diff.is_empty() {
                        d.name = table.name.clone();
                        notes.push(format!(
                            "DWARF layout equals the built-in table {}",
                            table.name
                        ));
                    } else {
                        notes.push(format!(
                            "DWARF layout differs from built-in table {} in {:?}; using DWARF",
                            table.name, diff
                        ));
                    }
                }
                return Ok((d, roots, notes));
            }
            Err(why) => notes.push(format!(
                "DWARF layout rejected by the VM's invariants: {why}"
            )),
        }
    }
    let (lay, roots) = layout::choose_builtin(m, l)?;
    Ok((lay, roots, notes))
}

fn dwarf_layout(root: &std::path::Path, elf: &ElfFile) -> Option<Layout> {
    let mut files = vec![(elf.target_path.clone(), elf.host_path.clone())];
    if let Some(dbg) = elf.debug_file(root) {
        files.insert(0, (dbg.to_string_lossy().into_owned(), dbg));
    }
    for (name, path) in files {
        let Ok(f) = ElfFile::open_host(&name, &path) else {
            continue;
        };
        if !f.has_dwarf() {
            continue;
        }
        match super::dwarf::field_map(f.data()) {
            Ok(Some(fm)) => {
                let lname = layout_name_from_map(&fm);
                match Layout::from_map(&fm, &lname, LayoutSource::Dwarf(name.clone())) {
                    Ok(l) => return Some(l),
                    Err(e) => log::info!("DWARF of {name}: {e}"),
                }
            }
            Ok(None) => {}
            Err(e) => log::info!("DWARF of {name}: {e}"),
        }
    }
    None
}

fn layout_name_from_map(fm: &FieldMap) -> String {
    let v = if fm.get("lua_State.exdata").is_some() {
        "luajit2"
    } else {
        "upstream"
    };
    let g = if fm.get("GCtab.metatable").map(|x| x.1) == Some(8) {
        "gc64"
    } else {
        "nogc64"
    };
    format!("dwarf-{v}-{g}")
}

/// The mapped object that holds LuaJIT: the one exporting `lua_newstate`.
pub fn luajit_object(pid: i32, maps: &Maps) -> Option<ElfFile> {
    let open = |path: &str| ElfFile::open(pid, path).ok();
    let mem = ProcessMemory::new(pid);
    luajit_object_in(&Host {
        mem: &mem,
        maps,
        exe: None,
        open: &open,
        debug_root: std::path::PathBuf::from(format!("/proc/{pid}/root")),
        what: format!("process {pid}"),
    })
}

/// [`luajit_object`] in any [`Host`].
pub fn luajit_object_in<M: Memory + ?Sized>(host: &Host<'_, M>) -> Option<ElfFile> {
    for path in host.maps.files() {
        if path.starts_with("/dev/") || path.starts_with("/memfd:") {
            continue;
        }
        let Some(elf) = (host.open)(path) else {
            continue;
        };
        if elf.symbol("lua_newstate", false).is_some()
            || elf.symbol("luaJIT_setmode", false).is_some()
        {
            return Some(elf);
        }
    }
    None
}

/// AVMA of a `.dynsym` (or `.symtab`) symbol in the first mapped file that has it.
fn symbol_avma<M: Memory + ?Sized>(
    host: &Host<'_, M>,
    files: &[&str],
    name: &str,
    static_too: bool,
) -> Option<(u64, String)> {
    for path in files {
        let Some(elf) = (host.open)(path) else {
            continue;
        };
        if let Some((svma, table)) = elf.symbol(name, static_too) {
            if !static_too && table != SymTable::Dynamic {
                continue;
            }
            let bias = elf.bias(host.maps)?;
            return Some((svma.wrapping_add(bias), path.to_string()));
        }
    }
    None
}

fn exe_target_path<M: Memory + ?Sized>(host: &Host<'_, M>) -> Option<String> {
    let exe = host.exe.as_deref()?;
    host.maps
        .files()
        .into_iter()
        .find(|p| *p == exe)
        .map(str::to_string)
}

/// Follow nginx's structures to the lua module's main `lua_State *`.
fn nginx_lua_state<M: Memory + ?Sized>(host: &Host<'_, M>) -> Result<u64, String> {
    let (maps, mem) = (host.maps, host.mem);
    let exe = exe_target_path(host).ok_or("executable not found in maps")?;
    let (cycle_sym, _) = symbol_avma(host, &[&exe], "ngx_cycle", false)
        .ok_or("no ngx_cycle in .dynsym (not nginx)")?;
    let (http_mod, _) =
        symbol_avma(host, &[&exe], "ngx_http_module", false).ok_or("no ngx_http_module")?;
    let mut files: Vec<&str> = vec![exe.as_str()];
    files.extend(maps.files().into_iter().filter(|p| *p != exe));
    let (lua_mod, _) = symbol_avma(host, &files, "ngx_http_lua_module", false)
        .ok_or("no ngx_http_lua_module in nginx or its modules (lua module not loaded)")?;
    let rd = |a: u64, what: &str| mem.u64(a).map_err(|e| format!("{what}: {e}"));
    let cycle = rd(cycle_sym, "ngx_cycle")?;
    let conf_ctx = rd(cycle, "cycle->conf_ctx")?;
    let http_index = rd(http_mod + 8, "ngx_http_module.index")?;
    if http_index > 4096 {
        return Err(format!("ngx_http_module.index {http_index} implausible"));
    }
    let http_ctx = rd(conf_ctx + 8 * http_index, "conf_ctx[http]")?;
    if http_ctx == 0 {
        return Err("no http block in the configuration".into());
    }
    let main_conf = rd(http_ctx, "http main_conf")?;
    let ctx_index = rd(lua_mod, "ngx_http_lua_module.ctx_index")?;
    if ctx_index > 4096 {
        return Err(format!(
            "ngx_http_lua_module.ctx_index {ctx_index} implausible"
        ));
    }
    let lmcf = rd(main_conf + 8 * ctx_index, "lua main conf")?;
    let l = rd(lmcf, "lmcf->lua")?;
    if l == 0 {
        return Err("lua main conf has no lua_State yet".into());
    }
    Ok(l)
}

/// The luajit host's `static lua_State *globalL`.
fn global_l<M: Memory + ?Sized>(host: &Host<'_, M>) -> Result<u64, String> {
    let exe = exe_target_path(host).ok_or("executable not found in maps")?;
    let (a, _) =
        symbol_avma(host, &[&exe], "globalL", true).ok_or("no globalL symbol (stripped?)")?;
    match host.mem.u64(a) {
        Ok(0) => Err("globalL is NULL".into()),
        Ok(l) => Ok(l),
        Err(e) => Err(e.to_string()),
    }
}

/// Scan byte ranges for main lua_States embedded in GG_State, under every
/// built-in layout's offsets: `gct == thread`, `L->glref == L + offsetof(GG, g)`
/// and `g->mainthref == L`.
pub fn scan(ranges: &[(u64, &[u8])]) -> Vec<u64> {
    let lays = Layout::builtins();
    let mut out = Vec::new();
    for lay in &lays {
        let f = &lay.f;
        let (gct, glref, gg_g, mainth) = (f.hdr_gct.off, f.l_glref, f.gg_g.off, f.g_mainthref);
        for &(start, data) in ranges {
            let mut off = 0usize;
            let end = data
                .len()
                .saturating_sub(gg_g as usize + mainth.off as usize + 8);
            while off < end {
                if data[off + gct as usize] == 6 {
                    let x = start + off as u64;
                    let rd = |o: usize, size: u64| -> u64 {
                        let mut b = [0u8; 8];
                        b[..size as usize].copy_from_slice(&data[o..o + size as usize]);
                        u64::from_le_bytes(b)
                    };
                    if rd(off + glref.off as usize, glref.size) == x + gg_g
                        && rd(off + gg_g as usize + mainth.off as usize, mainth.size) == x
                        && !out.contains(&x)
                    {
                        out.push(x);
                    }
                }
                off += 8;
            }
        }
    }
    out
}

/// [`scan`] over one live mapping, read in bounded chunks that overlap by
/// more than a GG_State signature spans.
fn scan_mapping<M: Memory + ?Sized>(mem: &M, m: &crate::target::Mapping) -> Vec<u64> {
    const CHUNK: u64 = 8 << 20;
    const OVERLAP: u64 = 16 << 10;
    let mut out = Vec::new();
    let mut buf = vec![0u8; CHUNK.min(m.len()) as usize];
    let mut at = m.start;
    while at < m.end {
        let len = CHUNK.min(m.end - at) as usize;
        if mem.read(at, &mut buf[..len]).is_ok() {
            for l in scan(&[(at, &buf[..len])]) {
                if !out.contains(&l) {
                    out.push(l);
                }
            }
        }
        if at + len as u64 >= m.end {
            break;
        }
        at += len as u64 - OVERLAP;
    }
    out
}
