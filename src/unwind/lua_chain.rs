//! The whole Lua call chain of an allocation traced by the BPF tracer. The
//! kernel copies, while the probe runs, the running coroutine's Lua stack
//! below its base, the chain of interpreter C frames and the `lua_State`
//! fields the walk starts from (src/trace/bpf/lua_walk.h). Here ljleak's own
//! frame walk ([`crate::luajit::backtrace::lua_backtrace`], lj_debug.c's
//! rules for every frame type, GC64 and not) runs over that copy, with the
//! rest (prototypes, bytecode, function headers) read from the live process,
//! which does not change under running code.
//!
//! The frames are split into segments at frames called from C (`lua_call`,
//! `lua_pcall`, an FFI callback, the coroutine's resume): segment `i` is
//! spliced into the C stack at the interpreter frame whose stack pointer is
//! C frame `i` of the chain. Lua frames only (C functions already appear as
//! native frames), outermost first when printed. While a trace runs, the
//! innermost frame is the trace's own (`(trace N)`, from the unwinder): the
//! chain's first frame, the trace's start function, is dropped.

use std::collections::HashMap;

use crate::luajit::backtrace::{lua_backtrace, FrameType, FuncKind};
use crate::luajit::frames::ProtoIndex;
use crate::luajit::layout::Layout;
use crate::luajit::vm::Vm;
use crate::target::{MemError, Memory, ProcessMemory};
use crate::trace::ebpf::abi::{lua_flags, LjLuaSnap};

use super::lua::LUA_PC_TAG;

/// Marks a tagged Lua entry (with [`LUA_PC_TAG`]) as an index into
/// [`ChainNames`].
pub const CHAIN_TAG: u64 = 1 << 61;

/// Name of the frame that ends a segment that could not be walked.
pub const CHAIN_MARKER: &str = "[lua ?]";

/// Interned frame names of chain entries.
#[derive(Debug, Default)]
pub struct ChainNames {
    names: Vec<String>,
    ids: HashMap<String, u32>,
}

impl ChainNames {
    /// The entry standing for `name`.
    pub fn entry(&mut self, name: String) -> u64 {
        let n = self.names.len() as u32;
        let id = *self.ids.entry(name.clone()).or_insert(n);
        if id == n {
            self.names.push(name);
        }
        LUA_PC_TAG | CHAIN_TAG | id as u64
    }

    /// The name of a chain entry.
    pub fn name(&self, entry: u64) -> Option<&str> {
        if !is_chain(entry) {
            return None;
        }
        self.names
            .get((entry & 0xffff_ffff) as usize)
            .map(|s| s.as_str())
    }
}

/// Whether an entry is a chain frame.
pub fn is_chain(entry: u64) -> bool {
    entry & (LUA_PC_TAG | CHAIN_TAG | super::jit::TRACE_TAG) == LUA_PC_TAG | CHAIN_TAG
}

/// The live VM the walk reads prototypes and bytecode from.
#[derive(Debug)]
pub struct ChainVm {
    /// Target.
    pub pid: i32,
    /// Its layout.
    pub layout: Layout,
    /// `global_State *`.
    pub g: u64,
    /// Main thread.
    pub main: u64,
}

/// Live memory under the copies taken at the event.
struct SnapMem<'a> {
    snap: &'a LjLuaSnap,
    /// `L->base`, `L->stack`, `L->cframe` as the kernel read them.
    fields: [(u64, u64, u64); 3],
    /// The Lua stack bytes copied from `snap.lstack_from`.
    lstack: &'a [u8],
    stack: &'a [u8],
    sp: u64,
    live: &'a ProcessMemory,
}

fn copy_from(region: &[u8], start: u64, addr: u64, buf: &mut [u8]) -> bool {
    let Some(off) = addr.checked_sub(start) else {
        return false;
    };
    let Some(end) = (off as usize).checked_add(buf.len()) else {
        return false;
    };
    match region.get(off as usize..end) {
        Some(b) => {
            buf.copy_from_slice(b);
            true
        }
        None => false,
    }
}

impl Memory for SnapMem<'_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        for &(at, size, v) in &self.fields {
            if addr == at && buf.len() as u64 <= size {
                buf.copy_from_slice(&v.to_le_bytes()[..buf.len()]);
                return Ok(());
            }
        }
        let s = self.snap;
        if copy_from(self.lstack, s.lstack_from, addr, buf) {
            return Ok(());
        }
        for c in s.cf.iter().take((s.ncf as usize).min(s.cf.len())) {
            let mut b = [0u8; 40];
            for (i, w) in c.w.iter().enumerate() {
                b[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
            }
            if copy_from(&b, c.addr, addr, buf) {
                return Ok(());
            }
        }
        if copy_from(self.stack, self.sp, addr, buf) {
            return Ok(());
        }
        self.live.read(addr, buf)
    }
}

/// The chain's segments, innermost first, each with the C frame it is
/// spliced at and its frame entries (innermost first); None when the
/// snapshot did not validate.
pub fn segments(
    vm: &ChainVm,
    index: &ProtoIndex,
    names: &mut ChainNames,
    snap: &LjLuaSnap,
    lstack: &[u8],
    stack: &[u8],
    sp: u64,
) -> Option<Vec<(u64, Vec<u64>)>> {
    if snap.flags & lua_flags::OK == 0 {
        return None;
    }
    let live = ProcessMemory::new(vm.pid);
    let f = &vm.layout.f;
    let m = SnapMem {
        snap,
        fields: [
            (snap.l + f.l_base.off, f.l_base.size, snap.base),
            (snap.l + f.l_stack.off, f.l_stack.size, snap.stack),
            (snap.l + f.l_cframe.off, 8, snap.cframe),
        ],
        lstack,
        stack,
        sp,
        live: &live,
    };
    let v = Vm::new(&m, &vm.layout, vm.g, vm.main);
    let frames = lua_backtrace(&v, index, snap.l, 200);
    log::debug!(
        "Lua chain: L {:#x} base {:#x} stack {:#x} flags {} cframes {}: {} frames",
        snap.l,
        snap.base,
        snap.stack,
        snap.flags,
        snap.ncf,
        frames.len()
    );
    let cfs: Vec<u64> = snap
        .cf
        .iter()
        .take((snap.ncf as usize).min(snap.cf.len()))
        .map(|c| c.addr)
        .collect();
    let mut out: Vec<(u64, Vec<u64>)> = Vec::new();
    let mut seg = 0usize;
    let mut cur: Vec<u64> = Vec::new();
    let mut first = snap.flags & lua_flags::TRACE != 0;
    for fr in &frames {
        if let FuncKind::Lua { .. } = fr.what {
            if first {
                // The trace frame of the unwound stack stands for it.
                first = false;
            } else {
                let loc = match &fr.loc {
                    Some(l) if l.line > 0 => l.to_string(),
                    _ => match &fr.defined {
                        Some(d) => format!("{}:?", d.chunk),
                        None => CHAIN_MARKER.to_string(),
                    },
                };
                let name = match &fr.called {
                    Some(c) => format!("{loc} ({})", c.name),
                    None => loc,
                };
                cur.push(names.entry(name));
            }
        } else if first {
            first = false;
        }
        if matches!(fr.link, FrameType::C | FrameType::Cpcall) {
            if let Some(&cf) = cfs.get(seg) {
                out.push((cf, std::mem::take(&mut cur)));
            }
            seg += 1;
        }
    }
    if !cur.is_empty() {
        match cfs.get(seg) {
            Some(&cf) => out.push((cf, cur)),
            // Frames past the C frames copied: end with a marker.
            None => {
                if let Some(last) = out.last_mut() {
                    last.1.extend(cur);
                    last.1.push(names.entry(CHAIN_MARKER.to_string()));
                }
            }
        }
    }
    Some(out)
}

/// Replace each segment's interpreter frame (the unwound frame whose stack
/// pointer is the segment's C frame) by the segment's Lua frames. A trace
/// runs on the interpreter's C frame without a frame of its own there: the
/// innermost segment then goes right outside the trace frame. Returns how
/// many segments were spliced.
pub fn splice(frames: &mut Vec<u64>, sps: &mut Vec<u64>, segs: &[(u64, Vec<u64>)]) -> usize {
    let mut n = 0;
    for (i, (cf, seg)) in segs.iter().enumerate() {
        let (at, replace) = match sps.iter().position(|s| s == cf) {
            Some(k) => (k, 1),
            None if i == 0 => match frames.iter().position(|&f| super::jit::is_trace(f)) {
                Some(k) => (k + 1, 0),
                None => continue,
            },
            None => continue,
        };
        if at + replace > frames.len() {
            continue;
        }
        frames.splice(at..at + replace, seg.iter().copied());
        sps.splice(at..at + replace, seg.iter().map(|_| *cf));
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_interned_and_splices_replace_the_vm_frame() {
        let mut names = ChainNames::default();
        let a = names.entry("@a.lua:3 (f)".into());
        let b = names.entry("@b.lua:9".into());
        assert_eq!(names.entry("@a.lua:3 (f)".into()), a);
        assert!(is_chain(a) && !is_chain(a & !CHAIN_TAG));
        assert_eq!(names.name(b), Some("@b.lua:9"));
        // malloc, lj_cf_x, VM (cf 0x100), lua_resume (cf 0x200 = another VM), main.
        let mut frames = vec![1, 2, 3, 4, 5];
        let mut sps = vec![0x10, 0x20, 0x100, 0x200, 0x300];
        let segs = vec![(0x100, vec![a, b]), (0x999, vec![b])];
        assert_eq!(splice(&mut frames, &mut sps, &segs), 1);
        assert_eq!(frames, vec![1, 2, a, b, 4, 5]);
        assert_eq!(sps.len(), frames.len());
    }
}
