//! Names for functions, the way a Lua programmer would call them:
//! `coroutine.yield`, `ngx.sleep`, `resty.http.receive`, found by reading
//! the loaded modules (`registry._LOADED`) and the globals' library tables
//! in a heap. Also the minimal TValue and table reading this needs.
//!
//! What it is not: a call-site namer (lj_debug.c `lj_debug_funcname`
//! derives `'inner'` from the caller's bytecode); a function that is in no
//! module table has no name here.

use std::collections::HashMap;

use super::vm::{gct, Vm};
use crate::target::{MemError, Memory, ReadExt};

/// GC64 keeps GC pointers in the low 47 bits of a TValue and the type in
/// the 17 bits above (lj_obj.h `LJ_GCVMASK`, `itype`).
const GCVMASK: u64 = (1 << 47) - 1;

/// Most entries read from one table (bounds a corrupt `hmask`/`asize`).
const MAX_TABLE_ENTRIES: u64 = 1 << 20;
/// Most names collected.
const MAX_NAMES: usize = 1 << 20;

/// A GC object a TValue points to: `(gct, address)`, or None for numbers,
/// nil, booleans and light userdata.
pub fn tv_gcobj<M: Memory + ?Sized>(
    vm: &Vm<'_, M>,
    tv: u64,
) -> Result<Option<(u8, u64)>, MemError> {
    let (t, p) = if vm.lay.gc64 {
        let v = vm.m.u64(tv)?;
        // ~itype in 17 bits: 0x1ffff - (v >> 47) is the gct.
        (0x1ffffu32.wrapping_sub((v >> 47) as u32), v & GCVMASK)
    } else {
        let lo = vm.m.u32(tv)?;
        let hi = vm.m.u32(tv + 4)?;
        (!hi, lo as u64)
    };
    Ok(((gct::STR as u32..=gct::UDATA as u32).contains(&t)).then_some((t as u8, p)))
}

/// Every (key, value) TValue address pair of table `t`: the array part
/// (keys are the integers, reported as `None`) then the hash part.
pub fn table_entries<M: Memory + ?Sized>(
    vm: &Vm<'_, M>,
    t: u64,
) -> Result<Vec<(Option<u64>, u64)>, MemError> {
    let f = &vm.lay.f;
    let m = vm.m;
    let mut out = Vec::new();
    let asize = f.t_asize.get(m, t)?.min(MAX_TABLE_ENTRIES);
    let arr = f.t_array.get(m, t)?;
    if arr != 0 {
        out.extend((0..asize).map(|i| (None, arr + 8 * i)));
    }
    let hmask = f.t_hmask.get(m, t)?;
    let node = f.t_node.get(m, t)?;
    if node != 0 && hmask < MAX_TABLE_ENTRIES {
        for i in 0..=hmask {
            let n = node + i * f.n_size.off;
            out.push((Some(n + f.n_key.off), n + f.n_val.off));
        }
    }
    Ok(out)
}

/// The string a TValue holds, if it is one (at most 256 bytes).
pub fn tv_string<M: Memory + ?Sized>(vm: &Vm<'_, M>, tv: u64) -> Option<String> {
    match tv_gcobj(vm, tv) {
        Ok(Some((gct::STR, s))) => vm.string(s, 256).ok(),
        _ => None,
    }
}

/// String-keyed entries of table `t` whose values are GC objects:
/// `(key, gct, object)`.
fn named_entries<M: Memory + ?Sized>(vm: &Vm<'_, M>, t: u64) -> Vec<(String, u8, u64)> {
    let Ok(entries) = table_entries(vm, t) else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|(k, v)| {
            let key = tv_string(vm, k?)?;
            let (g, o) = tv_gcobj(vm, v).ok()??;
            Some((key, g, o))
        })
        .collect()
}

/// The value of string key `key` in table `t`.
fn field<M: Memory + ?Sized>(vm: &Vm<'_, M>, t: u64, key: &str) -> Option<(u8, u64)> {
    named_entries(vm, t)
        .into_iter()
        .find(|(k, _, _)| k == key)
        .map(|(_, g, o)| (g, o))
}

/// Function names by GCfunc address.
#[derive(Debug, Clone, Default)]
pub struct FuncNames {
    names: HashMap<u64, String>,
}

impl FuncNames {
    /// Collect names from `registry._LOADED`: `module.key` for each function
    /// of each loaded module, then `lib.key` for each function in a table
    /// held by a global (`ngx.sleep` when only `_G.ngx` exists), then bare
    /// global function names. The first name found wins.
    pub fn from_heap<M: Memory + ?Sized>(vm: &Vm<'_, M>) -> FuncNames {
        let mut n = FuncNames::default();
        let reg = vm.g + vm.lay.f.g_registrytv.off;
        let Some((gct::TAB, registry)) = tv_gcobj(vm, reg).ok().flatten() else {
            return n;
        };
        let Some((gct::TAB, loaded)) = field(vm, registry, "_LOADED") else {
            return n;
        };
        let mut globals = None;
        for (modname, g, t) in named_entries(vm, loaded) {
            if g != gct::TAB {
                continue;
            }
            if modname == "_G" {
                globals = Some(t);
                continue;
            }
            n.add_table(vm, &modname, t);
        }
        if let Some(gt) = globals {
            let entries = named_entries(vm, gt);
            for (k, g, o) in &entries {
                if *g == gct::TAB && *o != gt {
                    n.add_table(vm, k, *o);
                }
            }
            for (k, g, o) in entries {
                if g == gct::FUNC {
                    n.add(o, k);
                }
            }
        }
        n
    }

    fn add_table<M: Memory + ?Sized>(&mut self, vm: &Vm<'_, M>, prefix: &str, t: u64) {
        for (k, g, o) in named_entries(vm, t) {
            if g == gct::FUNC {
                self.add(o, format!("{prefix}.{k}"));
            }
        }
    }

    fn add(&mut self, func: u64, name: String) {
        if self.names.len() < MAX_NAMES {
            self.names.entry(func).or_insert(name);
        }
    }

    /// The name of the function at `func`.
    pub fn get(&self, func: u64) -> Option<&str> {
        self.names.get(&func).map(String::as_str)
    }

    /// Number of named functions.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when none.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}
