//! The Lua frame walk behind [`lua_backtrace`]: frame links (lj_frame.h),
//! `lj_debug_frame`'s levels, `debug_framepc`'s saved PCs (including the walk
//! of C frames and the JLOOP undo) and the call-site names of
//! `lj_debug_funcname`, over [`Memory`], bounded and panic-free.

use super::frames::{
    short_src, CFrameOffsets, LuaLoc, ProtoIndex, ProtoInfo, BCINS, CFRAME_RAWMASK, FRAME_TYPE,
    FRAME_TYPEP, GCVMASK, SLOT,
};
use super::funcname::{call_name, CallName};
use super::vm::{gct, Vm};
use crate::target::{MemError, Memory, ReadExt};

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
    /// The name its caller used (`lua_getinfo` `n`: `'inner'`, `'__index'`).
    pub called: Option<CallName>,
    /// Bytecode position of the current instruction (Lua functions whose
    /// PC is known; `debug_framepc`), for naming the frame's locals.
    pub pos: Option<u32>,
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
            // A suspended coroutine has no C frame; a running thread's
            // C frame holds the PC saved when the VM last called out to C.
            let cf = self.vm.lay.f.l_cframe.get(m, self.l)?;
            return self.cf.current_pc(m, cf);
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

    /// `debug_framepc`: the bytecode position in `p` of the frame whose
    /// next (inner) frame is `next`.
    fn pos(&self, p: &ProtoInfo, next: Option<u64>) -> Option<u32> {
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
        Some(pos as u32)
    }

    /// The Lua prototype of function `func`, or None for C functions.
    fn lua_proto(&self, func: u64) -> Result<Option<u64>, MemError> {
        let f = &self.vm.lay.f;
        if self.vm.head(func)?.2 != gct::FUNC {
            return Err(MemError::Unmapped { addr: func, len: 0 });
        }
        if f.f_ffid.get(self.vm.m, func)? != 0 {
            return Ok(None);
        }
        Ok(Some(
            self.vm.gcref(func + f.f_pc.off)?.wrapping_sub(f.p_size.off),
        ))
    }

    /// `lj_debug_funcname`: the name the caller used for the function of
    /// `frame`, from the caller's call instruction.
    fn call_name(&self, protos: &mut Protos<'_>, frame: u64) -> Option<CallName> {
        if frame <= self.stack {
            return None;
        }
        let mut f = frame;
        if FrameType::of(self.ftsz(f).ok()?) == FrameType::Vararg {
            f = self.prev(f).ok()?;
        }
        let pframe = self.prev(f).ok()?;
        if pframe <= self.stack {
            return None;
        }
        let proto = self.lua_proto(self.gc(pframe).ok()?).ok()??;
        let (_, p) = protos.get(self.vm, proto)?;
        let pos = self.pos(&p, Some(f))?;
        call_name(self.vm, &p, pos)
    }
}

/// Prototypes: the caller's index, plus any read on the fly.
struct Protos<'i> {
    index: &'i ProtoIndex,
    local: ProtoIndex,
}

impl Protos<'_> {
    fn get<M: Memory + ?Sized>(
        &mut self,
        vm: &Vm<'_, M>,
        proto: u64,
    ) -> Option<(&ProtoIndex, ProtoInfo)> {
        if let Some(p) = self.index.proto(proto) {
            return Some((self.index, p.clone()));
        }
        if self.local.proto(proto).is_none() {
            self.local.insert(vm, proto).ok()?;
        }
        let p = self.local.proto(proto)?.clone();
        Some((&self.local, p))
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
    let mut protos = Protos {
        index,
        local: ProtoIndex::default(),
    };
    let mut frame = fr.check(fr.base.wrapping_sub(SLOT))?;
    let mut next: Option<u64> = None;
    let mut after_varg = false;
    for _ in 0..fr.max_steps() {
        if frame <= stack || out.len() >= max {
            break;
        }
        let func = fr.gc(frame)?;
        let link = FrameType::of(fr.ftsz(frame)?);
        // lj_err_optype_call pushes dummy frames whose "function" is L.
        if func != l {
            if !after_varg {
                out.push(describe(&fr, &mut protos, frame, func, link, next)?);
            }
            after_varg = link == FrameType::Vararg;
        }
        next = Some(frame);
        frame = fr.prev(frame)?;
    }
    Ok(())
}

fn describe<M: Memory + ?Sized>(
    fr: &Frames<'_, '_, M>,
    protos: &mut Protos<'_>,
    frame: u64,
    func: u64,
    link: FrameType,
    next: Option<u64>,
) -> Result<LuaFrame, MemError> {
    let vm = fr.vm;
    let f = &vm.lay.f;
    let mut lf = LuaFrame {
        frame,
        func,
        what: FuncKind::C { f: 0 },
        link,
        loc: None,
        defined: None,
        called: fr.call_name(protos, frame),
        pos: None,
    };
    let Some(proto) = fr.lua_proto(func)? else {
        let ffid = f.f_ffid.get(vm.m, func)? as u8;
        let cf = f.fc_f.get(vm.m, func)?;
        lf.what = if ffid == 1 {
            FuncKind::C { f: cf }
        } else {
            FuncKind::Fast { ffid, f: cf }
        };
        return Ok(lf);
    };
    lf.what = FuncKind::Lua { proto };
    let (ix, p) = protos.get(vm, proto).ok_or(MemError::Unmapped {
        addr: proto,
        len: 0,
    })?;
    lf.defined = Some(LuaLoc {
        chunk: p.chunk.clone(),
        line: p.firstline,
        proto,
        firstline: p.firstline,
    });
    lf.pos = fr.pos(&p, next);
    lf.loc = lf.pos.map(|pos| ix.loc(&p, pos));
    Ok(lf)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
