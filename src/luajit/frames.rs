//! Lua frames: where a bytecode PC is in the source ([`ProtoIndex`]), the
//! interpreter's C frame offsets ([`CFrameOffsets`]), and the Lua backtrace of
//! a `lua_State` ([`lua_backtrace`]) with the same frames and lines that
//! `debug.traceback(co)` prints.
//!
//! Everything here replicates LuaJIT's own code (lj_debug.c `lj_debug_frame`,
//! `debug_framepc`, `lj_debug_line`, `lj_debug_shortname`; lj_frame.h frame
//! links), reading memory only through [`Memory`]; every pointer is checked
//! and every loop bounded, so a corrupt or changing heap gives fewer frames,
//! never a panic or a hang.
//!
//! The frame walk itself is in `backtrace` and re-exported here.
//!
//! Naming the Lua line behind a C call (an allocation stack, say): read
//! `L->cframe` of the running thread (`g->cur_L`), then
//! `CFrameOffsets::for_layout(lay).current_pc(mem, cframe)` and
//! [`ProtoIndex::lookup`] of that PC.
//!
//! What it is not: a native (C) stack unwinder.

use std::collections::HashMap;
use std::sync::Arc;

pub use super::backtrace::{lua_backtrace, FrameType, FuncKind, LuaFrame};
use super::layout::Layout;
use super::vm::{gct, Vm};
use super::walk::{self, Limits};
use crate::target::{MemError, Memory, ReadExt};

/// Size of one bytecode instruction (lj_def.h `BCIns` is a uint32_t).
pub(super) const BCINS: u64 = 4;
/// Size of a stack slot (TValue).
pub(super) const SLOT: u64 = 8;
/// `LUA_IDSIZE` (luaconf.h): size of `short_src` including the NUL.
const LUA_IDSIZE: usize = 60;
/// GC64 keeps GC pointers in the low 47 bits of a TValue (lj_obj.h LJ_GCVMASK).
pub(super) const GCVMASK: u64 = (1 << 47) - 1;
/// Frame type bits (lj_frame.h).
pub(super) const FRAME_TYPE: i64 = 3;
pub(super) const FRAME_TYPEP: i64 = 7;
/// `CFRAME_RAWMASK` (lj_frame.h): low bits of `L->cframe` are flags.
pub(super) const CFRAME_RAWMASK: u64 = !3;

/// Where a PC is: chunk name exactly as LuaJIT stores it (`@/path/file.lua`,
/// `=content_by_lua(nginx.conf:40)`), line, and the prototype.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LuaLoc {
    /// The proto's chunkname.
    pub chunk: Arc<str>,
    /// Source line (`lj_debug_line`; 0 when the proto has no line info).
    pub line: i32,
    /// The GCproto address.
    pub proto: u64,
    /// The proto's first line (`linedefined`).
    pub firstline: i32,
}

impl LuaLoc {
    /// `short_src:line` as `debug.traceback` prints it.
    pub fn short(&self) -> String {
        format!("{}:{}", short_src(&self.chunk), self.line)
    }
}

impl std::fmt::Display for LuaLoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.chunk, self.line)
    }
}

/// The source name the way `lj_debug_shortname` shortens it: `=name` loses
/// its `=`, `@file` loses its `@` (long paths keep their last part behind
/// `...`), other chunks become `[string "first line..."]`.
pub fn short_src(chunk: &str) -> String {
    let b = chunk.as_bytes();
    match b.first() {
        Some(b'=') => {
            let s = &b[1..];
            String::from_utf8_lossy(&s[..s.len().min(LUA_IDSIZE - 1)]).into_owned()
        }
        Some(b'@') => {
            let s = &b[1..];
            if s.len() >= LUA_IDSIZE {
                let tail = &s[s.len() - (LUA_IDSIZE - 4)..];
                format!("...{}", String::from_utf8_lossy(tail))
            } else {
                String::from_utf8_lossy(s).into_owned()
            }
        }
        _ => {
            let len = b
                .iter()
                .take(LUA_IDSIZE - 12)
                .position(|&c| c < b' ')
                .unwrap_or(b.len().min(LUA_IDSIZE - 12));
            if len < b.len() {
                let n = len.min(LUA_IDSIZE - 15);
                format!("[string \"{}...\"]", String::from_utf8_lossy(&b[..n]))
            } else {
                format!("[string \"{}\"]", String::from_utf8_lossy(b))
            }
        }
    }
}

/// One prototype as the index keeps it.
#[derive(Debug, Clone)]
pub struct ProtoInfo {
    /// GCproto address.
    pub addr: u64,
    /// First bytecode instruction (`proto_bc`: right after the header).
    pub bc: u64,
    /// Number of instructions.
    pub sizebc: u32,
    /// Chunk name.
    pub chunk: Arc<str>,
    /// `firstline` (-1 for bytecode builtins).
    pub firstline: i32,
    /// `numline`.
    pub numline: u32,
    /// Range of this proto's line deltas in the index's shared array
    /// (empty when the proto has no line info).
    lines: std::ops::Range<usize>,
}

impl ProtoInfo {
    /// End of the bytecode.
    pub fn bc_end(&self) -> u64 {
        self.bc + BCINS * self.sizebc as u64
    }

    /// True when the proto has line info (bytecode builtins, with
    /// `firstline` -1, and stripped bytecode have none: every line is 0).
    pub fn has_lineinfo(&self) -> bool {
        !self.lines.is_empty()
    }
}

/// Every prototype of a heap, sorted by bytecode address, for PC → source
/// line lookups.
#[derive(Debug, Clone, Default)]
pub struct ProtoIndex {
    protos: Vec<ProtoInfo>,
    lines: Vec<u32>,
    by_addr: HashMap<u64, usize>,
    /// Protos that could not be read (address, why).
    pub skipped: Vec<(u64, MemError)>,
}

/// Most line-info entries read for one proto (a proto has at most
/// `LJ_MAX_BCINS` = 2^26 instructions, lj_def.h).
const MAX_SIZEBC: u64 = 1 << 26;

impl ProtoIndex {
    /// Walk the heap of `vm` and index every live prototype.
    pub fn build<M: Memory + ?Sized>(vm: &Vm<'_, M>, lim: Limits) -> ProtoIndex {
        let mut addrs = Vec::new();
        walk::walk(vm, lim, |o| {
            if o.gct == gct::PROTO && !o.dead {
                addrs.push(o.addr);
            }
        });
        ProtoIndex::from_protos(vm, addrs)
    }

    /// Index the prototypes at `addrs`.
    pub fn from_protos<M: Memory + ?Sized>(
        vm: &Vm<'_, M>,
        addrs: impl IntoIterator<Item = u64>,
    ) -> ProtoIndex {
        let mut ix = ProtoIndex::default();
        let mut chunks: HashMap<u64, Arc<str>> = HashMap::new();
        for a in addrs {
            match read_proto(vm, a, &mut chunks, &mut ix.lines) {
                Ok(p) => ix.protos.push(p),
                Err(e) => ix.skipped.push((a, e)),
            }
        }
        ix.protos.sort_by_key(|p| p.bc);
        ix.reindex();
        ix
    }

    fn reindex(&mut self) {
        self.by_addr = self
            .protos
            .iter()
            .enumerate()
            .map(|(i, p)| (p.addr, i))
            .collect();
    }

    /// Number of prototypes.
    pub fn len(&self) -> usize {
        self.protos.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.protos.is_empty()
    }

    /// All prototypes, by bytecode address.
    pub fn protos(&self) -> &[ProtoInfo] {
        &self.protos
    }

    /// The prototype at GCproto address `addr`.
    pub fn proto(&self, addr: u64) -> Option<&ProtoInfo> {
        self.by_addr.get(&addr).map(|&i| &self.protos[i])
    }

    /// The prototype whose bytecode a *saved* PC belongs to. A saved PC
    /// points after the instruction being executed, so it ranges over
    /// `(bc, bc + 4*sizebc]`.
    pub fn proto_of_pc(&self, pc: u64) -> Option<&ProtoInfo> {
        let i = self.protos.partition_point(|p| p.bc < pc);
        let p = self.protos.get(i.checked_sub(1)?)?;
        (pc > p.bc && pc <= p.bc_end() + BCINS).then_some(p)
    }

    /// Source location of a saved PC (as found in a frame link or a C
    /// frame's `SAVE_PC`): the line of the instruction before it
    /// (lj_debug.c `debug_framepc` then `lj_debug_line`).
    pub fn lookup(&self, pc: u64) -> Option<LuaLoc> {
        let p = self.proto_of_pc(pc)?;
        let pos = ((pc - p.bc) / BCINS - 1) as u32;
        Some(self.loc(p, pos))
    }

    /// Read the prototype at `addr` and add it.
    pub fn insert<M: Memory + ?Sized>(
        &mut self,
        vm: &Vm<'_, M>,
        addr: u64,
    ) -> Result<(), MemError> {
        let mut chunks = HashMap::new();
        let p = read_proto(vm, addr, &mut chunks, &mut self.lines)?;
        let i = self.protos.partition_point(|q| q.bc < p.bc);
        self.protos.insert(i, p);
        self.reindex();
        Ok(())
    }

    /// Location of bytecode position `pos` of `p` (`lj_debug_line`).
    pub fn loc(&self, p: &ProtoInfo, pos: u32) -> LuaLoc {
        LuaLoc {
            chunk: p.chunk.clone(),
            line: self.line(p, pos),
            proto: p.addr,
            firstline: p.firstline,
        }
    }

    /// `lj_debug_line(pt, pos)`: 0 without line info or past the end.
    pub fn line(&self, p: &ProtoInfo, pos: u32) -> i32 {
        if pos > p.sizebc || p.lines.is_empty() {
            return 0;
        }
        if pos == p.sizebc {
            return p.firstline.wrapping_add(p.numline as i32);
        }
        if pos == 0 {
            return p.firstline;
        }
        let d = self
            .lines
            .get(p.lines.start + pos as usize - 1)
            .copied()
            .unwrap_or(0);
        p.firstline.wrapping_add(d as i32)
    }
}

/// Read one GCproto: header fields, chunk name and line info (lineinfo is an
/// array of u8, u16 or u32 deltas by `numline`, lj_debug.c `lj_debug_line`).
fn read_proto<M: Memory + ?Sized>(
    vm: &Vm<'_, M>,
    a: u64,
    chunks: &mut HashMap<u64, Arc<str>>,
    lines: &mut Vec<u32>,
) -> Result<ProtoInfo, MemError> {
    let f = &vm.lay.f;
    let m = vm.m;
    let bad = MemError::Unmapped { addr: a, len: 0 };
    if vm.head(a)?.2 != gct::PROTO {
        return Err(bad);
    }
    let sizebc = f.p_sizebc.get(m, a)?;
    if sizebc == 0 || sizebc > MAX_SIZEBC {
        return Err(bad);
    }
    let cn = vm.gcref(a + f.p_chunkname.off)?;
    let chunk = match chunks.get(&cn) {
        Some(c) => c.clone(),
        None => {
            let c: Arc<str> = vm.string(cn, 4096)?.into();
            chunks.insert(cn, c.clone());
            c
        }
    };
    let firstline = f.p_firstline.get(m, a)? as u32 as i32;
    let numline = f.p_numline.get(m, a)? as u32;
    let li = f.p_lineinfo.get(m, a)?;
    let start = lines.len();
    if li != 0 {
        // Entry i is the line of instruction i+1 (instruction 0 is the
        // function header); lj_parse.c fs_fixup_line writes sizebc-1 of them.
        let n = (sizebc - 1) as usize;
        let w: usize = if numline < 256 {
            1
        } else if numline < 65536 {
            2
        } else {
            4
        };
        let raw = m.vec(li, n * w)?;
        lines.extend(raw.chunks_exact(w).map(|c| match w {
            1 => c[0] as u32,
            2 => u16::from_le_bytes([c[0], c[1]]) as u32,
            _ => u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
        }));
        // A proto with sizebc == 1 has no deltas but still has line info.
        if n == 0 {
            lines.push(0);
        }
    }
    Ok(ProtoInfo {
        addr: a,
        bc: a + f.p_size.off,
        sizebc: sizebc as u32,
        chunk,
        firstline,
        numline,
        lines: start..lines.len(),
    })
}

/// Offsets in the interpreter's C frame (the `saveregs` frame of
/// vm_x64.dasc), x86_64 System V, from lj_frame.h:
/// GC64: `CFRAME_OFS_PREV 4*8, PC 3*8, L 2*8, ERRF 3*4, NRES 2*4,
/// MULTRES 0*4`; non-GC64: `PREV 4*8, PC 7*4, L 6*4, ERRF 5*4, NRES 4*4,
/// MULTRES 1*4`; both: `CFRAME_SIZE 10*8` (12*8 with LUAJIT_NO_UNWIND,
/// which Debian's and OpenResty's builds do not set) and
/// `CFRAME_SIZE_JIT = CFRAME_SIZE + 16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CFrameOffsets {
    /// `CFRAME_OFS_PREV`: the previous C frame (a pointer).
    pub prev: u64,
    /// `CFRAME_OFS_PC`: `SAVE_PC`, the saved bytecode PC (an MRef).
    pub pc: u64,
    /// `CFRAME_OFS_L`: `SAVE_L`, the lua_State (a GCRef).
    pub l: u64,
    /// `CFRAME_OFS_ERRF`: error function stack offset (i32).
    pub errf: u64,
    /// `CFRAME_OFS_NRES`: number of results, negative for a cpcall frame (i32).
    pub nres: u64,
    /// `CFRAME_OFS_MULTRES` (u32).
    pub multres: u64,
    /// `CFRAME_SIZE`: bytes the interpreter reserves below its saved registers.
    pub size: u64,
    /// `CFRAME_SIZE_JIT`: the same for frames entered from JIT code.
    pub size_jit: u64,
    /// Width of the PC and L slots (8 with GC64, 4 without).
    pub ref_size: u64,
}

impl CFrameOffsets {
    /// x86_64, GC64.
    pub const X64_GC64: CFrameOffsets = CFrameOffsets {
        prev: 4 * 8,
        pc: 3 * 8,
        l: 2 * 8,
        errf: 3 * 4,
        nres: 2 * 4,
        multres: 0,
        size: 10 * 8,
        size_jit: 10 * 8 + 16,
        ref_size: 8,
    };
    /// x86_64, non-GC64 (32-bit GC references).
    pub const X64_NOGC64: CFrameOffsets = CFrameOffsets {
        prev: 4 * 8,
        pc: 7 * 4,
        l: 6 * 4,
        errf: 5 * 4,
        nres: 4 * 4,
        multres: 4,
        size: 10 * 8,
        size_jit: 10 * 8 + 16,
        ref_size: 4,
    };

    /// The offsets for a layout's build.
    pub fn for_layout(lay: &Layout) -> CFrameOffsets {
        if lay.gc64 {
            Self::X64_GC64
        } else {
            Self::X64_NOGC64
        }
    }

    /// `cframe_pc(cf)`: the saved PC.
    pub fn saved_pc<M: Memory + ?Sized>(&self, m: &M, cf: u64) -> Result<u64, MemError> {
        m.uint(cf + self.pc, self.ref_size)
    }

    /// The bytecode PC the VM saved in C frame `cf` (`L->cframe`, flag bits
    /// allowed) before calling out to C, or None when the frame holds no PC
    /// (`cframe_pc == cframe_L`, set on VM entry; lj_debug.c
    /// `debug_framepc`). Feed it to [`ProtoIndex::lookup`] to name the Lua
    /// line that was running when C code (an allocation, a C function) ran.
    pub fn current_pc<M: Memory + ?Sized>(&self, m: &M, cf: u64) -> Result<Option<u64>, MemError> {
        let cf = cf & CFRAME_RAWMASK;
        if cf == 0 {
            return Ok(None);
        }
        let pc = self.saved_pc(m, cf)?;
        Ok((pc != self.saved_l(m, cf)?).then_some(pc))
    }

    /// `cframe_L(cf)`: the lua_State.
    pub fn saved_l<M: Memory + ?Sized>(&self, m: &M, cf: u64) -> Result<u64, MemError> {
        m.uint(cf + self.l, self.ref_size)
    }

    /// `cframe_raw(cframe_prev(cf))`.
    pub fn prev_raw<M: Memory + ?Sized>(&self, m: &M, cf: u64) -> Result<u64, MemError> {
        Ok(m.u64(cf + self.prev)? & CFRAME_RAWMASK)
    }

    /// `cframe_nres(cf)`.
    pub fn nres<M: Memory + ?Sized>(&self, m: &M, cf: u64) -> Result<i32, MemError> {
        Ok(m.u32(cf + self.nres)? as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_src_like_luajit() {
        assert_eq!(short_src("@/srv/app.lua"), "/srv/app.lua");
        assert_eq!(
            short_src("=content_by_lua(nginx.conf:40)"),
            "content_by_lua(nginx.conf:40)"
        );
        let long = format!("@/{}", "d/".repeat(40) + "file.lua");
        let s = short_src(&long);
        assert!(
            s.starts_with("...") && s.ends_with("/file.lua") && s.len() == LUA_IDSIZE - 1,
            "{s}"
        );
        assert_eq!(short_src("return 1"), "[string \"return 1\"]");
        assert_eq!(short_src("x = 1\ny = 2"), "[string \"x = 1...\"]");
    }

    #[test]
    fn cframe_offsets_from_lj_frame_h() {
        let g = CFrameOffsets::X64_GC64;
        assert_eq!(
            (g.pc, g.l, g.prev, g.size, g.size_jit),
            (24, 16, 32, 80, 96)
        );
        let n = CFrameOffsets::X64_NOGC64;
        assert_eq!((n.pc, n.l, n.nres, n.ref_size), (28, 24, 16, 4));
    }
}
