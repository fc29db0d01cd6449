//! Lua frames in C stacks. When a sampled stack passes through the LuaJIT
//! interpreter, the interpreter's C frame (`cf`, its `%rsp` while it runs
//! bytecode) holds the `lua_State` and the saved bytecode PC (lj_frame.h
//! `CFRAME_OFS_L`, `CFRAME_OFS_PC`). Both are read from the stack copy taken
//! with the event, so the innermost Lua frame is exact; the PC is mapped to
//! `chunkname:line` through a [`ProtoIndex`] built from a heap capture.
//!
//! An interpreter frame is a frame in the LuaJIT object called from outside
//! it or from its exported API (`lua_pcall`, `lua_resume`, ... call
//! `lj_vm_pcall`, `lj_vm_resume`, ..., which set up the C frame and run the
//! bytecode; luajit2's `lua_resume` tail-calls the VM, so its caller may be
//! nginx itself). Frames the VM calls (`lj_cf_*`, `lj_ccall_func`) have
//! callers inside the object and are not candidates. Every interpreter
//! activation on the stack is spliced; deeper Lua frames of one activation
//! are not read after the event (they may have changed), a marker frame
//! ends the Lua part instead.
//!
//! A JIT-compiled trace frame (see [`super::jit`]) stands for the
//! interpreter frame it runs in: it is named by the line of the trace
//! snapshot covering the call (where LuaJIT would resume the interpreter),
//! and
//! the C functions a trace calls (`lj_tab_new`, `lj_mem_newgco`, ...) are
//! not interpreter frames even though their caller is outside the object.

use std::ops::Range;

use object::{Object, ObjectSymbol};

use crate::luajit::frames::{CFrameOffsets, LuaLoc, ProtoIndex};
use crate::luajit::layout::Layout;
use crate::target::elf::ElfFile;
use crate::target::Maps;

/// Marks a frame entry that holds a saved Lua PC instead of a code address.
pub const LUA_PC_TAG: u64 = 1 << 63;

/// Name of the frame that ends the Lua part of a stack.
pub const LUA_MARKER: &str = "[lua]";

/// Whether an exported symbol is part of the Lua C API (which enters the VM).
fn is_api(name: &str) -> bool {
    name.starts_with("lua_") || name.starts_with("luaL_") || name.starts_with("luaJIT_")
}

/// Finds interpreter frames in unwound stacks and names Lua PCs.
#[derive(Debug)]
pub struct LuaFrames {
    /// Executable ranges of the LuaJIT object.
    object: Vec<Range<u64>>,
    /// Its exported API functions.
    entries: Vec<Range<u64>>,
    offs: CFrameOffsets,
    /// Prototypes known (rebuilt by the caller when PCs are unknown).
    pub index: ProtoIndex,
    /// JIT traces read from the same capture, for the unwinder to take.
    pub traces: Option<super::jit::TraceMap>,
    /// The live VM, for whole Lua call chains (BPF tracer).
    pub chain_vm: Option<super::lua_chain::ChainVm>,
    /// Names of chain frames.
    pub chain_names: super::lua_chain::ChainNames,
}

impl LuaFrames {
    /// Set up for the LuaJIT in `object` (its path as the target sees it).
    pub fn new(
        pid: i32,
        maps: &Maps,
        object: &str,
        layout: &Layout,
        index: ProtoIndex,
    ) -> Option<LuaFrames> {
        let elf = ElfFile::open(pid, object).ok()?;
        let bias = elf.bias(maps)?;
        let entries: Vec<Range<u64>> = elf
            .object()
            .dynamic_symbols()
            .filter(|s| s.name().is_ok_and(is_api) && s.size() > 0)
            .map(|s| bias + s.address()..bias + s.address() + s.size())
            .collect();
        let object: Vec<Range<u64>> = maps
            .of_file(object)
            .filter(|m| m.exec)
            .map(|m| m.start..m.end)
            .collect();
        if object.is_empty() {
            return None;
        }
        Some(LuaFrames {
            object,
            entries,
            offs: CFrameOffsets::for_layout(layout),
            index,
            traces: None,
            chain_vm: None,
            chain_names: Default::default(),
        })
    }

    fn in_object(&self, a: u64) -> bool {
        self.object.iter().any(|r| r.contains(&a))
    }

    /// In `frames` (innermost first, with each frame's stack pointer in
    /// `sps`), replace every interpreter frame by its tagged saved PC, read
    /// from `stack` (copied from `sp0` up). Returns how many were spliced.
    pub fn splice(&self, frames: &mut [u64], sps: &[u64], stack: &[u8], sp0: u64) -> usize {
        let mut n = 0;
        for k in 1..frames.len().saturating_sub(1) {
            // Return addresses point after the call: look at the call itself.
            let (here, caller) = (frames[k].wrapping_sub(1), frames[k + 1].wrapping_sub(1));
            // Called from a trace: a helper of JIT-compiled code.
            let entered = !is_lua_pc(frames[k + 1])
                && (!self.in_object(caller) || self.entries.iter().any(|r| r.contains(&caller)));
            if !self.in_object(here) || self.entries.iter().any(|r| r.contains(&here)) || !entered {
                continue;
            }
            let Some(pc) = self.saved_pc(sps[k], stack, sp0) else {
                continue;
            };
            // A PC of a known prototype is certain; an unknown one (code
            // loaded after the index was built) is kept if it is at least
            // a plausible instruction address, and looked up again later.
            if self.index.proto_of_pc(pc).is_some() || (pc % 4 == 0 && pc > 0x10000) {
                frames[k] = pc | LUA_PC_TAG;
                n += 1;
            }
        }
        n
    }

    /// `SAVE_PC` of the interpreter frame whose `%rsp` is `cf`; None when
    /// it holds `SAVE_L` instead, as set on VM entry (lj_vm_cpcall,
    /// lj_vm_resume, ...: "any value outside of bytecode") and left so
    /// until the interpreter first calls out: no Lua PC was saved (lj_debug.c
    /// `debug_framepc`), e.g. while a trace entered from there still runs.
    fn saved_pc(&self, cf: u64, stack: &[u8], sp0: u64) -> Option<u64> {
        let slot = |at: u64| -> Option<u64> {
            let off = cf.checked_add(at)?.checked_sub(sp0)? as usize;
            let n = self.offs.ref_size as usize;
            let b = stack.get(off..off.checked_add(n)?)?;
            let mut w = [0u8; 8];
            w[..n].copy_from_slice(b);
            Some(u64::from_le_bytes(w))
        };
        let pc = slot(self.offs.pc)?;
        (pc != 0 && pc & LUA_PC_TAG == 0 && Some(pc) != slot(self.offs.l)).then_some(pc)
    }

    /// The location of a tagged frame entry, if its PC is known. For a
    /// trace frame, the line of its snapshot PC (or start PC).
    pub fn locate(&self, entry: u64) -> Option<LuaLoc> {
        match super::jit::decode(entry) {
            // `lookup` takes a saved PC (one past the instruction).
            Some((_, pc)) => self.index.lookup(pc + 4),
            None => self.index.lookup(entry & !LUA_PC_TAG),
        }
    }
}

/// The PC and the frame name of a tagged entry: `chunk:line` for an
/// interpreter frame; `chunk:line (trace N)` for a trace frame, where the
/// line is that of the snapshot covering the call (the line LuaJIT's own
/// error messages would give for an error raised there), or the trace's
/// start line on builds without snapshot code offsets; a `[lua pc 0x…]` /
/// `[trace N]` marker when the prototype is not known.
pub fn frame_name(lf: Option<&LuaFrames>, entry: u64) -> (u64, String) {
    if super::lua_chain::is_chain(entry) {
        let name = lf.and_then(|l| l.chain_names.name(entry));
        return (
            0,
            name.unwrap_or(super::lua_chain::CHAIN_MARKER).to_string(),
        );
    }
    let loc = lf.and_then(|l| l.locate(entry));
    match super::jit::decode(entry) {
        Some((no, startpc)) => match loc {
            Some(loc) => (startpc, format!("{loc} (trace {no})")),
            None => (startpc, format!("[trace {no}]")),
        },
        None => {
            let pc = entry & !LUA_PC_TAG;
            match loc {
                Some(loc) => (pc, loc.to_string()),
                None => (pc, format!("[lua pc {pc:#x}]")),
            }
        }
    }
}

/// Put before a Lua frame name whose line may be stale.
pub const STALE_MARK: char = '~';

/// Whether the line of interpreter frame `entry` may be stale, given the
/// name of the frame it called (`callee`, the next inner frame). The
/// interpreter saves its PC in the C frame when a bytecode calls a VM
/// helper (`lj_tab_new`, `lj_gc_step`, `lj_meta_*`: vm_x64.dasc
/// `savePC`), but not when it calls a C function directly (`BC_FUNCC`:
/// `lj_cf_*` library functions, the FFI, nginx's `ngx.*` functions), so
/// the line is then that of the last instruction that left the VM. A
/// callee without a symbol inside a stripped LuaJIT cannot be told apart
/// and is not marked. Trace frames are exact (snapshot of the call).
pub fn saved_pc_may_be_stale(entry: u64, callee: Option<&str>) -> bool {
    if super::jit::decode(entry).is_some() {
        return false;
    }
    let Some(c) = callee else { return false };
    // A metamethod (a cdata's `__call`, `__index`...) is reached through
    // `vmeta_call`/`vmeta_tgets`, which save the PC first.
    if c.starts_with("lj_cf_ffi_meta___") {
        return false;
    }
    // No symbol (`object+0xOFF`): inside LuaJIT (a stripped build) it
    // could be either kind, and the common cases (FFI calls through a
    // cdata's `__call`, helpers) save the PC, so it is not marked; outside
    // LuaJIT it is a C function the interpreter called directly.
    if let Some((object, _)) = c.split_once("+0x") {
        return !object.contains("luajit");
    }
    let helper = c.starts_with("lj_")
        && ![
            "lj_cf_",
            "lj_ffh_",
            "lj_fff",
            "lj_ccall",
            "lj_vm_ffi",
            "lj_clib",
        ]
        .iter()
        .any(|p| c.starts_with(p));
    !helper
}

/// Whether a frame entry is a tagged Lua PC.
pub fn is_lua_pc(entry: u64) -> bool {
    entry & LUA_PC_TAG != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_lines_after_direct_c_calls() {
        let interp = 0x1234 | LUA_PC_TAG;
        for (callee, stale) in [
            ("lj_tab_new", false),
            ("lj_gc_step", false),
            ("lj_cf_ffi_meta___call", false),
            ("lj_cf_ffi_new", true),
            ("ngx_http_lua_ngx_say", true),
            ("libluajit-5.1.so.2.1.0+0x4036d", false),
            ("nginx+0x70d7e", true),
        ] {
            assert_eq!(
                saved_pc_may_be_stale(interp, Some(callee)),
                stale,
                "{callee}"
            );
        }
        assert!(!saved_pc_may_be_stale(interp, None));
    }

    #[test]
    fn splices_interpreter_frames_only() {
        // LuaJIT object at 0x1000..0x9000 exporting lua_pcall at 0x2000..0x2100.
        let lf = LuaFrames {
            object: std::iter::once(0x1000..0x9000).collect(),
            entries: std::iter::once(0x2000..0x2100).collect(),
            offs: CFrameOffsets::X64_GC64,
            index: ProtoIndex::default(),
            traces: None,
            chain_vm: None,
            chain_names: Default::default(),
        };
        let sp0 = 0x7000_0000u64;
        let cf = sp0 + 0x100;
        let mut stack = vec![0u8; 0x200];
        stack[0x100 + 24..0x100 + 32].copy_from_slice(&0x5555_0004u64.to_le_bytes());
        // malloc (libc), lj_ccall_func (object, called by the VM), the VM
        // (object, called from nginx), nginx.
        let mut frames = vec![0x7f00_0000, 0x3000, 0x4000, 0x55_0000];
        let sps = vec![sp0, sp0 + 0x40, cf, cf + 0x80];
        assert_eq!(lf.splice(&mut frames, &sps, &stack, sp0), 1);
        assert_eq!(frames[2], 0x5555_0004 | LUA_PC_TAG);
        assert_eq!(
            frames[1], 0x3000,
            "a callee of the VM is not an interpreter frame"
        );
        // Called from the exported API inside the object counts too.
        let mut frames = vec![0x7f00_0000, 0x3000, 0x4000, 0x2050];
        assert_eq!(lf.splice(&mut frames, &sps, &stack, sp0), 1);
        // No PC saved since VM entry (SAVE_PC == SAVE_L): not spliced.
        let mut no_pc = stack.clone();
        no_pc[0x100 + 16..0x100 + 24].copy_from_slice(&0x5555_0004u64.to_le_bytes());
        let mut frames = vec![0x7f00_0000, 0x3000, 0x4000, 0x55_0000];
        assert_eq!(lf.splice(&mut frames, &sps, &no_pc, sp0), 0);
        // A saved PC outside the stack copy is not guessed.
        let mut frames = vec![0x7f00_0000, 0x3000, 0x4000, 0x55_0000];
        assert_eq!(lf.splice(&mut frames, &sps, &stack[..0x110], sp0), 0);
        assert!(is_lua_pc(LUA_PC_TAG | 4) && !is_lua_pc(4));
        // A C function called from a trace is not an interpreter frame; the
        // trace entry stays as the unwinder made it.
        let tr = super::super::jit::Trace {
            mcode: 0x7f00_0000,
            end: 0x7f00_1000,
            cfa_off: 96,
            traceno: 3,
            startpc: 0x5555_0100,
            snaps: std::sync::Arc::from(Vec::new()),
        };
        let mut frames = vec![0x7f00_0000, 0x3000, 0x4000, tr.entry(), 0x55_0000];
        let sps = vec![sp0, sp0 + 0x40, cf, cf + 0x80, cf + 0x100];
        assert_eq!(lf.splice(&mut frames, &sps, &stack, sp0), 0);
        assert_eq!(frames[3], tr.entry());
        assert_eq!(
            frame_name(Some(&lf), tr.entry()),
            (0x5555_0100, "[trace 3]".to_string())
        );
    }
}
