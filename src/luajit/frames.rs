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
//! What it is not: a native (C) stack unwinder, nor a function *namer* (the
//! caller names C functions; see [`LuaFrame::what`]).

use std::collections::HashMap;
use std::sync::Arc;

use super::layout::Layout;
use super::vm::{gct, Vm};
use super::walk::{self, Limits};
use crate::target::{MemError, Memory, ReadExt};

/// Size of one bytecode instruction (lj_def.h `BCIns` is a uint32_t).
const BCINS: u64 = 4;
/// Size of a stack slot (TValue).
const SLOT: u64 = 8;
/// `LUA_IDSIZE` (luaconf.h): size of `short_src` including the NUL.
const LUA_IDSIZE: usize = 60;
/// GC64 keeps GC pointers in the low 47 bits of a TValue (lj_obj.h LJ_GCVMASK).
const GCVMASK: u64 = (1 << 47) - 1;
/// Frame type bits (lj_frame.h).
const FRAME_TYPE: i64 = 3;
const FRAME_TYPEP: i64 = 7;
/// `CFRAME_RAWMASK` (lj_frame.h): low bits of `L->cframe` are flags.
const CFRAME_RAWMASK: u64 = !3;

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
        ix.by_addr = ix
            .protos
            .iter()
            .enumerate()
            .map(|(i, p)| (p.addr, i))
            .collect();
        ix
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
    if vm.header(a)?.1 != gct::PROTO {
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

/// Type of a frame link (lj_frame.h `FRAME_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameType {
    /// Called from Lua: the link is the caller's return PC.
    Lua,
    /// Called from C.
    C,
    /// Continuation (metamethod call).
    Cont,
    /// Vararg pseudo-frame.
    Vararg,
    /// `lua_cpcall`/`lua_pcall` frame.
    Cpcall,
    /// `pcall`/`xpcall` fast-function frame.
    Pcall,
}

impl FrameType {
    fn of(ftsz: i64) -> FrameType {
        match ftsz & FRAME_TYPEP {
            0 | 4 => FrameType::Lua,
            1 => FrameType::C,
            2 => FrameType::Cont,
            3 => FrameType::Vararg,
            5 => FrameType::Cpcall,
            _ => FrameType::Pcall,
        }
    }
}

/// What function a frame runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FuncKind {
    /// A Lua function with this prototype.
    Lua {
        /// GCproto address.
        proto: u64,
    },
    /// A C function (`ffid` 1).
    C {
        /// The `lua_CFunction` address in the target.
        f: u64,
    },
    /// A fast function (builtin) with this `ffid` (lj_ffdef.h numbering).
    Fast {
        /// Fast-function id.
        ffid: u8,
        /// Its fallback C handler address.
        f: u64,
    },
}

/// One level of a Lua backtrace, innermost first, as `lua_getstack` and
/// `lua_getinfo` see it.
#[derive(Debug, Clone)]
pub struct LuaFrame {
    /// Address of the frame slot (`base-1`).
    pub frame: u64,
    /// The GCfunc.
    pub func: u64,
    /// Lua, C or fast function.
    pub what: FuncKind,
    /// This frame's own link type.
    pub link: FrameType,
    /// Current line (Lua functions whose PC is known; `currentline`).
    pub loc: Option<LuaLoc>,
    /// Where the function is defined (Lua functions; `linedefined`).
    pub defined: Option<LuaLoc>,
}

impl LuaFrame {
    /// The location prefix `debug.traceback` prints: `file.lua:12` (or
    /// `file.lua` when the line is unknown) for Lua, `[C]` otherwise.
    pub fn traceback_loc(&self) -> String {
        match (&self.loc, &self.defined) {
            (Some(l), _) if l.line > 0 => l.short(),
            (_, Some(d)) => short_src(&d.chunk),
            _ => "[C]".into(),
        }
    }
}

/// Reads frame links of one build.
struct Frames<'a, 'm, M: Memory + ?Sized> {
    vm: &'a Vm<'m, M>,
    gc64: bool,
    cf: CFrameOffsets,
    l: u64,
    stack: u64,
    stack_end: u64,
    base: u64,
}

impl<M: Memory + ?Sized> Frames<'_, '_, M> {
    fn check(&self, f: u64) -> Result<u64, MemError> {
        if f < self.stack || f >= self.stack_end || (f - self.stack) % SLOT != 0 {
            return Err(MemError::Unmapped { addr: f, len: 8 });
        }
        Ok(f)
    }

    /// `frame_gc(f)`.
    fn gc(&self, f: u64) -> Result<u64, MemError> {
        if self.gc64 {
            Ok(self.vm.m.u64(self.check(f - SLOT)?)? & GCVMASK)
        } else {
            Ok(self.vm.m.u32(self.check(f)?)? as u64)
        }
    }

    /// `frame_ftsz(f)`.
    fn ftsz(&self, f: u64) -> Result<i64, MemError> {
        if self.gc64 {
            Ok(self.vm.m.u64(self.check(f)?)? as i64)
        } else {
            Ok(self.vm.m.u32(self.check(f)? + 4)? as i32 as i64)
        }
    }

    /// `frame_pc(f)`.
    fn pc(&self, f: u64) -> Result<u64, MemError> {
        if self.gc64 {
            self.vm.m.u64(self.check(f)?)
        } else {
            Ok(self.vm.m.u32(self.check(f)? + 4)? as u64)
        }
    }

    /// `frame_prev(f)`: `frame_prevl` reads the A operand of the CALL
    /// instruction before the return PC; `frame_prevd` subtracts the delta.
    fn prev(&self, f: u64) -> Result<u64, MemError> {
        let ftsz = self.ftsz(f)?;
        let p = if ftsz & FRAME_TYPE == 0 {
            let ins = self.vm.m.u32((ftsz as u64).wrapping_sub(BCINS))?;
            let a = ((ins >> 8) & 0xff) as u64;
            f.wrapping_sub(SLOT * (1 + self.gc64 as u64 + a))
        } else {
            f.wrapping_sub((ftsz & !FRAME_TYPEP) as u64)
        };
        // Frames only go down the stack; anything else is corruption.
        if p >= f {
            return Err(MemError::Unmapped { addr: p, len: 0 });
        }
        Ok(p)
    }

    /// `debug_framepc`: the saved PC for the Lua function of a frame whose
    /// next (inner) frame is `next` (None for the innermost).
    fn saved_pc(&self, next: Option<u64>) -> Result<Option<u64>, MemError> {
        let m = self.vm.m;
        let Some(nf) = next else {
            // Only set while an error or hook is handled; a suspended
            // coroutine has no C frame.
            let cf = self.vm.lay.f.l_cframe.get(m, self.l)? & CFRAME_RAWMASK;
            if cf == 0 {
                return Ok(None);
            }
            let pc = self.cf.saved_pc(m, cf)?;
            return Ok((pc != self.cf.saved_l(m, cf)?).then_some(pc));
        };
        let ftsz = self.ftsz(nf)?;
        match FrameType::of(ftsz) {
            FrameType::Lua => return Ok(Some(self.pc(nf)?)),
            FrameType::Cont if ftsz & FRAME_TYPEP == 2 => {
                let slots = if self.gc64 { 2 } else { 1 };
                return Ok(Some(self.pc(nf - slots * SLOT)?));
            }
            _ => {}
        }
        // A Lua function below a C/pcall frame: its PC is in the C frame
        // that called out of it; walk frames and C frames in step.
        let mut cf = self.vm.lay.f.l_cframe.get(m, self.l)? & CFRAME_RAWMASK;
        let mut f = self.base.wrapping_sub(SLOT);
        for _ in 0..self.max_steps() {
            if cf == 0 {
                return Ok(None);
            }
            let mut inner = 0;
            loop {
                let nres = self.cf.nres(m, cf)?;
                if nres >= 0 || f >= self.stack.wrapping_add(nres.unsigned_abs() as u64) {
                    break;
                }
                cf = self.cf.prev_raw(m, cf)?;
                inner += 1;
                if cf == 0 || inner > self.max_steps() {
                    return Ok(None);
                }
            }
            if f < nf {
                return Ok(Some(self.cf.saved_pc(m, cf)?));
            }
            let ft = self.ftsz(f)?;
            if ft & FRAME_TYPE == 1 {
                cf = self.cf.prev_raw(m, cf)?;
            }
            f = self.prev(f)?;
        }
        Ok(None)
    }

    fn max_steps(&self) -> usize {
        ((self.stack_end - self.stack) / SLOT) as usize + 1
    }

    /// `debug_framepc` + `lj_debug_line` for a Lua function's prototype.
    fn current_loc(&self, index: &ProtoIndex, p: &ProtoInfo, next: Option<u64>) -> Option<LuaLoc> {
        let ins = self.saved_pc(next).ok()??;
        let mut pos = (ins.wrapping_sub(p.bc) / BCINS).wrapping_sub(1);
        if pos > p.sizebc as u64 {
            // Undo lj_trace_exit's JLOOP patching: the PC then points just
            // past a trace's `startins`; the trace knows the real start.
            let f = &self.vm.lay.f;
            let t = ins.wrapping_sub(BCINS).wrapping_sub(f.tr_startins.off);
            let startpc = f.tr_startpc.get(self.vm.m, t).ok()?;
            pos = startpc.wrapping_sub(p.bc) / BCINS;
            if pos > p.sizebc as u64 {
                return None;
            }
        }
        Some(index.loc(p, pos as u32))
    }
}

/// The Lua backtrace of thread `l`, innermost first, at most `max` levels:
/// the levels `lua_getstack` returns (dummy frames and the frame hidden by a
/// vararg pseudo-frame skipped, lj_debug.c `lj_debug_frame`), each with its
/// current line as `lua_getinfo(L, "l")` computes it.
///
/// Lua prototypes missing from `index` are read from `vm` on the fly.
pub fn lua_backtrace<M: Memory + ?Sized>(
    vm: &Vm<'_, M>,
    index: &ProtoIndex,
    l: u64,
    max: usize,
) -> Vec<LuaFrame> {
    let mut out = Vec::new();
    let _ = backtrace_into(vm, index, l, max, &mut out);
    out
}

fn backtrace_into<M: Memory + ?Sized>(
    vm: &Vm<'_, M>,
    index: &ProtoIndex,
    l: u64,
    max: usize,
    out: &mut Vec<LuaFrame>,
) -> Result<(), MemError> {
    let f = &vm.lay.f;
    let m = vm.m;
    let stack = vm.gcref(l + f.l_stack.off)?;
    let size = f.l_stacksize.get(m, l)?;
    let fr = Frames {
        vm,
        gc64: vm.lay.gc64,
        cf: CFrameOffsets::for_layout(vm.lay),
        l,
        stack,
        stack_end: stack.wrapping_add(SLOT * size.min(1 << 24)),
        base: f.l_base.get(m, l)?,
    };
    let mut frame = fr.check(fr.base.wrapping_sub(SLOT))?;
    let mut next: Option<u64> = None;
    let mut after_varg = false;
    let mut local = ProtoIndex::default();
    let mut chunks = HashMap::new();
    for _ in 0..fr.max_steps() {
        if frame <= stack || out.len() >= max {
            break;
        }
        let func = fr.gc(frame)?;
        let ftsz = fr.ftsz(frame)?;
        let link = FrameType::of(ftsz);
        // lj_err_optype_call pushes dummy frames whose "function" is L.
        if func != l {
            if !after_varg {
                out.push(describe(
                    vm,
                    index,
                    &mut local,
                    &mut chunks,
                    &fr,
                    frame,
                    func,
                    link,
                    next,
                )?);
            }
            after_varg = link == FrameType::Vararg;
        }
        next = Some(frame);
        frame = fr.prev(frame)?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn describe<M: Memory + ?Sized>(
    vm: &Vm<'_, M>,
    index: &ProtoIndex,
    local: &mut ProtoIndex,
    chunks: &mut HashMap<u64, Arc<str>>,
    fr: &Frames<'_, '_, M>,
    frame: u64,
    func: u64,
    link: FrameType,
    next: Option<u64>,
) -> Result<LuaFrame, MemError> {
    let f = &vm.lay.f;
    let m = vm.m;
    if vm.header(func)?.1 != gct::FUNC {
        return Err(MemError::Unmapped { addr: func, len: 0 });
    }
    let ffid = f.f_ffid.get(m, func)? as u8;
    let mut lf = LuaFrame {
        frame,
        func,
        what: FuncKind::C { f: 0 },
        link,
        loc: None,
        defined: None,
    };
    if ffid != 0 {
        let cf = f.fc_f.get(m, func)?;
        lf.what = if ffid == 1 {
            FuncKind::C { f: cf }
        } else {
            FuncKind::Fast { ffid, f: cf }
        };
        return Ok(lf);
    }
    let proto = vm.gcref(func + f.f_pc.off)?.wrapping_sub(f.p_size.off);
    lf.what = FuncKind::Lua { proto };
    let (ix, p) = match index.proto(proto) {
        Some(p) => (index, p.clone()),
        None => {
            let p = read_proto(vm, proto, chunks, &mut local.lines)?;
            (&*local, p)
        }
    };
    lf.defined = Some(LuaLoc {
        chunk: p.chunk.clone(),
        line: p.firstline,
        proto,
        firstline: p.firstline,
    });
    lf.loc = fr.current_loc(ix, &p, next);
    Ok(lf)
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
    fn frame_types_from_link_bits() {
        assert_eq!(FrameType::of(0x5600_0000_1000), FrameType::Lua);
        assert_eq!(FrameType::of(16 + 1), FrameType::C);
        assert_eq!(FrameType::of(16 + 2), FrameType::Cont);
        assert_eq!(FrameType::of(16 + 3), FrameType::Vararg);
        assert_eq!(FrameType::of(16 + 5), FrameType::Cpcall);
        assert_eq!(FrameType::of(16 + 6), FrameType::Pcall);
        assert_eq!(FrameType::of(16 + 7), FrameType::Pcall);
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
