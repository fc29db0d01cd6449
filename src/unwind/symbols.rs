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
}

impl std::fmt::Debug for Symbolizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Symbolizer({} objects)", self.objs.len())
    }
}

fn load(pid: i32, path: &str, maps: &Maps) -> Option<ObjSyms> {
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
    syms.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    syms.dedup_by_key(|s| s.0);
    let root = format!("/proc/{pid}/root");
    let dwarf = match elf.debug_file(Path::new(&root)) {
        Some(dbg) => addr2line::Loader::new(dbg).ok(),
        None if elf.has_dwarf() => addr2line::Loader::new(&elf.host_path).ok(),
        None => None,
    };
    Some(ObjSyms { bias, syms, dwarf })
}

impl Symbolizer {
    /// A symbolizer for `pid`.
    pub fn new(pid: i32) -> Symbolizer {
        Symbolizer {
            pid,
            objs: HashMap::new(),
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
            .or_insert_with(|| load(pid, path, maps));
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
        let i = o.syms.partition_point(|s| s.0 <= svma);
        let sym = i
            .checked_sub(1)
            .map(|j| &o.syms[j])
            .filter(|s| s.1 == 0 || svma < s.0 + s.1);
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
