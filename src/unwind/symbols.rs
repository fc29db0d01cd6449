//! Names for frame addresses: the symbol tables (`.symtab`, `.dynsym`) of
//! each mapped object, and DWARF through addr2line (inlined functions) when
//! the object or its separate debug file (by build-id or `.gnu_debuglink`,
//! found by `ElfFile::debug_file`) has it.

use std::collections::HashMap;
use std::path::Path;

use object::{Object, ObjectSymbol, SymbolKind};

use crate::target::elf::ElfFile;
use crate::target::Maps;

/// One symbolized frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Frame address (AVMA).
    pub addr: u64,
    /// Function name (or `module+0xOFF` when unknown).
    pub name: String,
    /// Offset of `addr` in the function.
    pub offset: u64,
    /// Size of the function (0 when unknown).
    pub size: u64,
    /// Object file path (empty when unmapped).
    pub module: String,
}

struct ObjSyms {
    bias: u64,
    /// (start SVMA, size, name), sorted by start.
    syms: Vec<(u64, u64, String)>,
    dwarf: Option<addr2line::Loader>,
}

/// Cached symbol tables per object.
#[derive(Default)]
pub struct Symbolizer {
    pid: i32,
    objs: HashMap<String, Option<ObjSyms>>,
    /// Functions known by address only (AVMA, name), e.g. `g->allocf`.
    known: Vec<(u64, String)>,
}

impl std::fmt::Debug for Symbolizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Symbolizer({} objects)", self.objs.len())
    }
}

fn load(pid: i32, path: &str, maps: &Maps, known: &[(u64, String)]) -> Option<ObjSyms> {
    let elf = ElfFile::open(pid, path).ok()?;
    let bias = elf.bias(maps)?;
    let obj = elf.object();
    let mut syms: Vec<(u64, u64, String)> = obj
        .symbols()
        .chain(obj.dynamic_symbols())
        .filter(|s| s.kind() == SymbolKind::Text && s.address() != 0)
        .filter_map(|s| {
            let name = s.name().ok()?;
            let name = addr2line::demangle_auto(name.into(), None).into_owned();
            Some((s.address(), s.size(), name))
        })
        .collect();
    let luajit = super::ljnames::is_luajit(&obj);
    if luajit || !known.is_empty() {
        let fdes = super::ljnames::fdes(&obj);
        // A function known by address is named over its FDE's range.
        let by_addr = known
            .iter()
            .filter_map(|(avma, name)| {
                let svma = avma.wrapping_sub(bias);
                let f = fdes.iter().find(|f| f.start <= svma && svma < f.end)?;
                Some((f.start, f.end - f.start, name.clone()))
            })
            .collect();
        add_names(&mut syms, by_addr);
        if luajit {
            add_names(&mut syms, super::ljnames::luajit_ranges(&fdes));
        }
    }
    sort_syms(&mut syms);
    let root = format!("/proc/{pid}/root");
    let dwarf = match elf.debug_file(Path::new(&root)) {
        Some(dbg) => addr2line::Loader::new(dbg).ok(),
        None if elf.has_dwarf() => addr2line::Loader::new(&elf.host_path).ok(),
        None => None,
    };
    Some(ObjSyms { bias, syms, dwarf })
}

/// Sort symbols by start (largest first at one start) and keep one per start.
fn sort_syms(syms: &mut Vec<(u64, u64, String)>) {
    syms.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    syms.dedup_by_key(|s| s.0);
}

/// Add `known` ranges (start, size, name) to a symbol list where no
/// symbol of the object's own tables overlaps them: a real symbol table
/// (`lj_vm_asm_begin`, `lj_BC_*` in an unstripped build) always wins.
fn add_names(syms: &mut Vec<(u64, u64, String)>, known: Vec<(u64, u64, String)>) {
    for k in known {
        let overlaps = syms
            .iter()
            .any(|s| s.0 < k.0 + k.1 && k.0 < s.0 + s.1.max(1));
        if !overlaps {
            syms.push(k);
        }
    }
}

/// The symbol covering `svma` in a sorted list (a size 0 symbol covers
/// everything up to the next one).
fn lookup(syms: &[(u64, u64, String)], svma: u64) -> Option<&(u64, u64, String)> {
    let i = syms.partition_point(|s| s.0 <= svma);
    i.checked_sub(1)
        .map(|j| &syms[j])
        .filter(|s| s.1 == 0 || svma < s.0 + s.1)
}

impl Symbolizer {
    /// A symbolizer for `pid`.
    pub fn new(pid: i32) -> Symbolizer {
        Symbolizer {
            pid,
            objs: HashMap::new(),
            known: Vec::new(),
        }
    }

    /// Name the function that contains AVMA `addr` (its unwind-info
    /// range) `name` when the object's symbol table does not: e.g.
    /// `g->allocf` as `lj_alloc_f` in a stripped LuaJIT. Call before
    /// symbolizing addresses of that object.
    pub fn name_function_at(&mut self, maps: &Maps, addr: u64, name: &str) {
        self.known.push((addr, name.to_string()));
        // Reload the object on next use, with the new name.
        if let Some(path) = maps.find(addr).and_then(|m| m.file_path()) {
            self.objs.remove(path);
        }
    }

    /// Frames for address `addr`; `ret` says it is a return address (look
    /// up the call instruction before it). Inlined functions come first
    /// (innermost first), as addr2line reports them.
    pub fn frames(&mut self, maps: &Maps, addr: u64, ret: bool) -> Vec<Frame> {
        let probe = if ret { addr.saturating_sub(1) } else { addr };
        let Some(m) = maps.find(probe) else {
            return vec![Frame {
                addr,
                name: format!("[unknown {addr:#x}]"),
                offset: 0,
                size: 0,
                module: String::new(),
            }];
        };
        let Some(path) = m.file_path() else {
            let name = if m.path.is_empty() {
                // Anonymous executable memory: JIT-compiled code (LuaJIT
                // traces have no unwind info, so the stack ends here).
                if m.exec {
                    "[jit code]".to_string()
                } else {
                    "[anon]".to_string()
                }
            } else {
                m.path.clone()
            };
            return vec![Frame {
                addr,
                name,
                offset: 0,
                size: 0,
                module: String::new(),
            }];
        };
        let pid = self.pid;
        let o = self
            .objs
            .entry(path.to_string())
            .or_insert_with(|| load(pid, path, maps, &self.known));
        let base = path.rsplit('/').next().unwrap_or(path);
        let Some(o) = o else {
            return vec![Frame {
                addr,
                name: format!("{base}+{:#x}", probe - m.start + m.offset),
                offset: 0,
                size: 0,
                module: path.to_string(),
            }];
        };
        let svma = probe.wrapping_sub(o.bias);
        let sym = lookup(&o.syms, svma);
        let mut out = Vec::new();
        if let Some(ctx) = &o.dwarf {
            if let Ok(mut it) = ctx.find_frames(svma) {
                let mut names = Vec::new();
                while let Ok(Some(f)) = it.next() {
                    if let Some(func) = f.function {
                        if let Ok(n) = func.demangle() {
                            names.push(n.into_owned());
                        }
                    }
                }
                // All but the outermost are inlined; the outermost is the
                // symbol itself, named below.
                names.pop();
                for n in names {
                    out.push(Frame {
                        addr,
                        name: n,
                        offset: 0,
                        size: 0,
                        module: path.to_string(),
                    });
                }
            }
        }
        out.push(match sym {
            Some((start, size, name)) => Frame {
                addr,
                name: name.clone(),
                offset: addr.wrapping_sub(o.bias).wrapping_sub(*start),
                size: *size,
                module: path.to_string(),
            },
            None => Frame {
                addr,
                name: format!("{base}+{:#x}", probe - m.start + m.offset),
                offset: 0,
                size: 0,
                module: path.to_string(),
            },
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unwind::ljnames::{luajit_ranges, Fde, VM_NAME};

    #[test]
    fn stripped_luajit_frames_get_known_names() {
        // A stripped LuaJIT: only the C API in .dynsym, the VM's FDE
        // (entry CFA rsp+80) and the FFI call helper right after it.
        let mut syms = vec![
            (0x2000, 0x40, "lua_pushnil".to_string()),
            (0x2100, 0x80, "lua_newstate".to_string()),
        ];
        let fdes = [
            Fde {
                start: 0x2000,
                end: 0x2040,
                cfa: Some((7, 8)),
            },
            Fde {
                start: 0x9e40,
                end: 0xde92,
                cfa: Some((7, 80)),
            },
            Fde {
                start: 0xde92,
                end: 0xdf32,
                cfa: Some((7, 8)),
            },
        ];
        add_names(&mut syms, luajit_ranges(&fdes));
        sort_syms(&mut syms);
        assert_eq!(lookup(&syms, 0xa36d).map(|s| s.2.as_str()), Some(VM_NAME));
        assert_eq!(
            lookup(&syms, 0xde92).map(|s| s.2.as_str()),
            Some("lj_vm_ffi_call")
        );
        assert_eq!(
            lookup(&syms, 0x2010).map(|s| s.2.as_str()),
            Some("lua_pushnil")
        );
        // Outside every range: no name (the caller prints object+0xOFF).
        assert_eq!(lookup(&syms, 0x5000), None);
        assert_eq!(lookup(&syms, 0xdf32), None);

        // An unstripped build names the same range itself: its names win.
        let mut syms = vec![
            (0x9e40, 0, "lj_vm_asm_begin".to_string()),
            (0x9e50, 0x10, "lj_BC_ISLT".to_string()),
        ];
        add_names(&mut syms, luajit_ranges(&fdes));
        sort_syms(&mut syms);
        assert!(syms.iter().all(|s| s.2 != VM_NAME), "{syms:?}");
        assert_eq!(
            lookup(&syms, 0x9e55).map(|s| s.2.as_str()),
            Some("lj_BC_ISLT")
        );
    }
}
