//! JIT-compiled LuaJIT traces in sampled stacks. Trace machine code has no
//! unwind info, so CFI unwinding stops at the first trace frame (and a
//! frame-pointer fallback gives garbage: traces use `%rbp` as a general
//! register). This module knows where every live trace's code is
//! ([`TraceMap`], read from `J->trace[]`) and steps over a trace frame with
//! the rule LuaJIT itself gives GDB ([`Trace::unwind`]); the caller of a
//! trace is the code that entered the interpreter, so CFI unwinding goes on
//! from there.
//!
//! A trace frame is kept in the stack as a tagged entry ([`Trace::entry`])
//! carrying the trace number and the PC of the snapshot covering the call, so it can be named
//! (`@app.lua:17 (trace 5)`) after the trace is gone.
//!
//! Not here: when to unwind, naming code addresses ([`super::symbols`]), the
//! interpreter's Lua frames ([`super::lua`]).

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use framehop::x86_64::UnwindRegsX86_64;

use super::lua::LUA_PC_TAG;
use crate::luajit::frames::CFrameOffsets;
use crate::luajit::layout::Layout;
use crate::luajit::vm::gct;
use crate::target::{Maps, MemError, Memory, Pause, ProcessMemory, ReadExt};

/// Marks a tagged Lua entry (bit 63, [`LUA_PC_TAG`]) as a trace frame.
pub const TRACE_TAG: u64 = 1 << 62;
/// Trace number bits in an entry: 45..61 (trace numbers are below 65536,
/// lj_trace.c `trace_findfree` caps `maxtrace` at 65535).
const TRACENO_SHIFT: u32 = 45;
/// Start PC bits: the PC divided by 4 (instructions are 4-byte aligned), so
/// 45 bits cover the whole 47-bit x86_64 user address space.
const PC_MASK: u64 = (1 << TRACENO_SHIFT) - 1;
/// Most trace slots read (`J->sizetrace` is at most 65536, see above).
const MAX_SIZETRACE: u64 = 1 << 16;
/// Largest plausible trace (`maxmcode` defaults to 512 KB for all traces).
const MAX_SZMCODE: u64 = 64 << 20;
/// Least time between two re-reads of the trace list (each pauses the
/// target for well under a millisecond). Traces are compiled in bursts at
/// warm-up and their code runs at once, so a new trace must be found soon.
pub const REFRESH_MIN: Duration = Duration::from_millis(20);
/// Longest time between two re-reads: the interval doubles after every
/// re-read that did not find the address asked for (code that is no
/// trace, or a trace already gone), up to this.
pub const REFRESH_MAX: Duration = Duration::from_secs(2);

/// One compiled trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// Start of its machine code (`T->mcode`).
    pub mcode: u64,
    /// End of its machine code (`mcode + szmcode`).
    pub end: u64,
    /// CFA offset from `%rsp` inside the trace: `CFRAME_SIZE_JIT + spadjust`.
    pub cfa_off: u64,
    /// `T->traceno`.
    pub traceno: u32,
    /// `T->startpc`: the bytecode instruction the trace starts at.
    pub startpc: u64,
    /// Its snapshots as `(mcofs, pc)`: the machine-code offset where the
    /// code of each snapshot starts, ascending, and the bytecode PC the
    /// interpreter resumes at from there. Empty for builds without
    /// `SnapShot.mcofs`.
    pub snaps: Arc<[(u32, u64)]>,
}

impl Trace {
    /// The stack entry standing for a frame in this trace at its start PC.
    pub fn entry(&self) -> u64 {
        self.entry_with(self.startpc)
    }

    /// The stack entry for a frame of this trace whose code address is
    /// `addr` (a return address minus one): it carries the PC of the
    /// snapshot covering `addr`, found as LuaJIT finds the exit to unwind
    /// to when an error is thrown through a trace (lj_trace.c
    /// `lj_trace_unwind`: the rightmost snapshot whose `mcofs` is at or
    /// below the offset). That is the instruction the interpreter would
    /// resume at, whose line LuaJIT's own error messages name. Without
    /// snapshot offsets, the start PC.
    pub fn entry_at(&self, addr: u64) -> u64 {
        self.entry_with(self.pc_at(addr))
    }

    /// The bytecode PC standing for code address `addr` of this trace.
    pub fn pc_at(&self, addr: u64) -> u64 {
        let Some(ofs) = addr.checked_sub(self.mcode) else {
            return self.startpc;
        };
        let i = self
            .snaps
            .partition_point(|&(mcofs, _)| u64::from(mcofs) <= ofs);
        match i.checked_sub(1).and_then(|i| self.snaps.get(i)) {
            Some(&(_, pc)) => pc,
            None => self.startpc,
        }
    }

    fn entry_with(&self, pc: u64) -> u64 {
        LUA_PC_TAG
            | TRACE_TAG
            | (u64::from(self.traceno & 0xffff) << TRACENO_SHIFT)
            | ((pc >> 2) & PC_MASK)
    }

    /// Step over a frame of this trace: `regs` become the caller's, and the
    /// return address is returned (`Ok(None)` when it is 0: a root).
    ///
    /// The rule is the unwind info lj_gdbjit.c (`gdbjit_ehframe`,
    /// `lj_gdbjit_addtrace`) registers with GDB for every x86_64 trace: the
    /// CIE says `DW_CFA_def_cfa rsp, 8` and `DW_CFA_offset ra, 1` (data
    /// alignment -8: the return address is at CFA-8); the FDE saves `rbp`
    /// at offset 2 (CFA-16) and ends with `DW_CFA_def_cfa_offset spadj`,
    /// `spadj = CFRAME_SIZE_JIT + T->spadjust`. So CFA = rsp +
    /// CFRAME_SIZE_JIT + spadjust, and the caller's rsp is the CFA. (The
    /// FDE's first instruction uses the parent's size, an approximation
    /// LuaJIT itself makes; allocations never happen there.) The CFA is the
    /// interpreter C frame's (BC_JLOOP in vm_x64.dasc enters the trace with
    /// `sub rsp, 16`, hence `CFRAME_SIZE + 16`), so the caller is whatever
    /// called into the VM (`lua_pcall`, or nginx through `lua_resume`).
    pub fn unwind(
        &self,
        regs: &mut UnwindRegsX86_64,
        read: &mut impl FnMut(u64) -> Result<u64, ()>,
    ) -> Result<Option<u64>, framehop::Error> {
        let cfa = regs
            .sp()
            .checked_add(self.cfa_off)
            .ok_or(framehop::Error::IntegerOverflow)?;
        let at = |a: u64, read: &mut dyn FnMut(u64) -> Result<u64, ()>| {
            read(a).map_err(|_| framehop::Error::CouldNotReadStack(a))
        };
        let ret = at(cfa - 8, read)?;
        let bp = at(cfa - 16, read)?;
        if ret == 0 {
            return Ok(None);
        }
        regs.set_sp(cfa);
        regs.set_bp(bp);
        regs.set_ip(ret);
        Ok(Some(ret))
    }
}

/// Whether a stack entry is a trace frame.
pub fn is_trace(entry: u64) -> bool {
    entry & (LUA_PC_TAG | TRACE_TAG) == LUA_PC_TAG | TRACE_TAG
}

/// `(traceno, pc)` of a trace frame entry (the snapshot's PC, or the
/// trace's start PC).
pub fn decode(entry: u64) -> Option<(u32, u64)> {
    let no = ((entry >> TRACENO_SHIFT) & 0xffff) as u32;
    is_trace(entry).then_some((no, (entry & PC_MASK) << 2))
}

/// Read every live trace of the VM whose `jit_State` is at `j`: the
/// non-null slots of `J->trace[0..sizetrace]`, sorted by code address.
/// Slots that do not hold a valid trace are skipped.
pub fn read_traces<M: Memory + ?Sized>(
    m: &M,
    lay: &Layout,
    j: u64,
) -> Result<Vec<Trace>, MemError> {
    let f = &lay.f;
    let size_jit = CFrameOffsets::for_layout(lay).size_jit;
    let n = f.j_sizetrace.get(m, j)?.min(MAX_SIZETRACE);
    let arr = f.j_trace.get(m, j)?;
    let mut out = Vec::new();
    if arr == 0 || n == 0 {
        return Ok(out);
    }
    let w = lay.gcref();
    let raw = m.vec(arr, (n * w) as usize)?;
    for (no, slot) in raw.chunks_exact(w as usize).enumerate() {
        let mut b = [0u8; 8];
        b[..slot.len()].copy_from_slice(slot);
        let t = u64::from_le_bytes(b);
        if t == 0 {
            continue;
        }
        let one = || -> Result<Option<Trace>, MemError> {
            if m.u8(t + f.hdr_gct.off)? != gct::TRACE || f.tr_traceno.get(m, t)? != no as u64 {
                return Ok(None);
            }
            let mcode = f.tr_mcode.get(m, t)?;
            let sz = f.tr_szmcode.get(m, t)?;
            if mcode == 0 || sz == 0 || sz > MAX_SZMCODE {
                return Ok(None);
            }
            let snaps = read_snaps(m, lay, t, sz).unwrap_or_else(|e| {
                log::debug!("trace {no}: snapshots unreadable: {e}");
                Vec::new()
            });
            Ok(Some(Trace {
                mcode,
                end: mcode + sz,
                cfa_off: size_jit + f.tr_spadjust.get(m, t)?,
                traceno: no as u32,
                startpc: f.tr_startpc.get(m, t)?,
                snaps: snaps.into(),
            }))
        };
        match one() {
            Ok(Some(tr)) => out.push(tr),
            Ok(None) => {}
            Err(e) => log::debug!("trace {no} at {t:#x} unreadable: {e}"),
        }
    }
    out.sort_by_key(|t| t.mcode);
    Ok(out)
}

/// Most snapshots read per trace (`nsnap` is a u16).
const MAX_NSNAP: u64 = 1 << 16;

/// The snapshots of trace `t` (code size `sz`) as `(mcofs, pc)`, ascending
/// by offset; empty when the build has no `SnapShot.mcofs`. A snapshot's
/// PC follows its `nent` slot entries in the snapshot map (lj_jit.h
/// `snap_pc`: with GC64 a 64-bit word holding the PC shifted left by 8,
/// else a 32-bit PC). Offsets that go backwards or past the code, and PCs
/// that are not instruction addresses, end the list there.
fn read_snaps<M: Memory + ?Sized>(
    m: &M,
    lay: &Layout,
    t: u64,
    sz: u64,
) -> Result<Vec<(u32, u64)>, MemError> {
    let f = &lay.f;
    if f.sn_mcofs.size == 0 || f.sn_size.off == 0 {
        return Ok(Vec::new());
    }
    let n = f.tr_nsnap.get(m, t)?.min(MAX_NSNAP);
    let nmap = f.tr_nsnapmap.get(m, t)?;
    let (snap, map) = (f.tr_snap.get(m, t)?, f.tr_snapmap.get(m, t)?);
    if n == 0 || snap == 0 || map == 0 {
        return Ok(Vec::new());
    }
    let stride = f.sn_size.off;
    let raw = m.vec(snap, (n * stride) as usize)?;
    let mut out = Vec::with_capacity(n as usize);
    for s in raw.chunks_exact(stride as usize) {
        let field = |x: crate::luajit::layout::F| -> u64 {
            let b = &s[x.off as usize..(x.off + x.size) as usize];
            let mut w = [0u8; 8];
            w[..b.len()].copy_from_slice(b);
            u64::from_le_bytes(w)
        };
        let (mapofs, mcofs, nent) = (field(f.sn_mapofs), field(f.sn_mcofs), field(f.sn_nent));
        let at = mapofs + nent;
        if mcofs >= sz || out.last().is_some_and(|&(o, _)| u64::from(o) > mcofs) {
            break;
        }
        let pc = if lay.gc64 {
            if at + 2 > nmap {
                break;
            }
            m.u64(map + at * 4)? >> 8
        } else {
            if at + 1 > nmap {
                break;
            }
            m.u32(map + at * 4)? as u64
        };
        if pc == 0 || pc % 4 != 0 {
            break;
        }
        out.push((mcofs as u32, pc));
    }
    Ok(out)
}

/// The traces of one VM, re-read (paused, at most every [`REFRESH_MIN`],
/// backing off to [`REFRESH_MAX`]) when a stack reaches code that is in no
/// file and in no known trace.
#[derive(Debug)]
pub struct TraceMap {
    pid: i32,
    lay: Layout,
    /// The `jit_State`.
    j: u64,
    traces: Vec<Trace>,
    /// File-backed executable mappings (code that is never a trace).
    files: Vec<Range<u64>>,
    last_refresh: Option<Instant>,
    /// Current least time between re-reads.
    interval: Duration,
    /// Times the list was re-read.
    pub refreshes: u32,
}

fn file_code(maps: &Maps) -> Vec<Range<u64>> {
    maps.list
        .iter()
        .filter(|m| m.exec && m.file_path().is_some())
        .map(|m| m.start..m.end)
        .collect()
}

impl TraceMap {
    /// The traces in a heap capture (the one taken at attach).
    pub fn from_capture(cap: &crate::capture::Capture) -> TraceMap {
        let vm = cap.heap_vm();
        let j = vm.jit_state();
        let traces = read_traces(&cap.image, &cap.vm.layout, j).unwrap_or_else(|e| {
            log::info!("no JIT traces read from the capture: {e}");
            Vec::new()
        });
        log::info!("{} JIT traces mapped", traces.len());
        TraceMap::new(cap.pid, cap.vm.layout.clone(), j, traces, &cap.maps)
    }

    /// A map of `traces` of the VM whose `jit_State` is at `j`.
    pub fn new(pid: i32, lay: Layout, j: u64, traces: Vec<Trace>, maps: &Maps) -> TraceMap {
        TraceMap {
            pid,
            lay,
            j,
            traces,
            files: file_code(maps),
            last_refresh: None,
            interval: REFRESH_MIN,
            refreshes: 0,
        }
    }

    /// Known traces, by code address.
    pub fn traces(&self) -> &[Trace] {
        &self.traces
    }

    fn lookup(&self, addr: u64) -> Option<Trace> {
        let i = self.traces.partition_point(|t| t.mcode <= addr);
        let t = self.traces.get(i.checked_sub(1)?)?;
        (addr < t.end).then(|| t.clone())
    }

    /// The trace whose code holds `addr`. An address in no file-backed
    /// mapping and no known trace (a trace compiled since the last read)
    /// makes the list be read again, if that was not done lately.
    pub fn find(&mut self, addr: u64) -> Option<Trace> {
        if let Some(t) = self.lookup(addr) {
            return Some(t);
        }
        if self.files.iter().any(|r| r.contains(&addr))
            || self
                .last_refresh
                .is_some_and(|t| t.elapsed() < self.interval)
        {
            return None;
        }
        self.last_refresh = Some(Instant::now());
        let Ok(maps) = Maps::read(self.pid) else {
            return None;
        };
        self.files = file_code(&maps);
        // Not only executable mappings: LuaJIT makes its code area
        // writable, not executable, while it assembles a trace (lj_mcode.c
        // MCPROT_GEN), and the maps may be read just then.
        let anon = maps.find(addr).is_some_and(|m| m.path.is_empty());
        if !anon {
            return None;
        }
        self.refresh();
        let found = self.lookup(addr);
        self.interval = match found {
            Some(_) => REFRESH_MIN,
            None => (self.interval * 2).min(REFRESH_MAX),
        };
        found
    }

    /// Read the trace list again, with the target paused.
    fn refresh(&mut self) {
        let pause = match Pause::new(self.pid, Duration::from_millis(500)) {
            Ok(p) => p,
            Err(e) => {
                log::debug!("not re-reading JIT traces: {e}");
                return;
            }
        };
        let read = read_traces(&ProcessMemory::new(self.pid), &self.lay, self.j);
        let held = pause.resume();
        self.refreshes += 1;
        match read {
            Ok(t) => {
                log::debug!("{} JIT traces re-read (paused {held:?})", t.len());
                self.traces = t;
            }
            Err(e) => log::debug!("re-reading JIT traces: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace() -> Trace {
        Trace {
            mcode: 0x7f00_0000_1000,
            end: 0x7f00_0000_1400,
            cfa_off: CFrameOffsets::X64_GC64.size_jit + 0x20,
            traceno: 5,
            startpc: 0x7fe7_10ca_da80,
            snaps: Arc::from(vec![
                (0, 0x7fe7_10ca_da80),
                (0x40, 0x7fe7_10ca_da90),
                (0x40, 0x7fe7_10ca_da94),
                (0x100, 0x7fe7_10ca_daa0),
            ]),
        }
    }

    #[test]
    fn synthetic_cfa_step_on_a_stack_copy() {
        let t = trace();
        // rsp inside the trace; CFA = rsp + 96 + 0x20 = rsp + 0x80.
        let sp0 = 0x7ffd_0000_0000u64;
        let mut stack = vec![0u8; 0x100];
        let put = |s: &mut Vec<u8>, off: usize, v: u64| {
            s[off..off + 8].copy_from_slice(&v.to_le_bytes());
        };
        put(&mut stack, 0x80 - 8, 0x5555_0000_1234); // return address
        put(&mut stack, 0x80 - 16, 0x7ffd_0000_0400); // saved rbp
        let mut read = |a: u64| -> Result<u64, ()> {
            let off = a.checked_sub(sp0).ok_or(())? as usize;
            let b = stack.get(off..off + 8).ok_or(())?;
            Ok(u64::from_le_bytes(b.try_into().map_err(|_| ())?))
        };
        let mut r = UnwindRegsX86_64::new(0x7f00_0000_1100, sp0, 0xdead);
        assert_eq!(t.unwind(&mut r, &mut read), Ok(Some(0x5555_0000_1234)));
        assert_eq!(
            (r.sp(), r.bp(), r.ip()),
            (sp0 + 0x80, 0x7ffd_0000_0400, 0x5555_0000_1234)
        );
        // A CFA beyond the stack copy is an error, not a guess.
        let mut r = UnwindRegsX86_64::new(0x7f00_0000_1100, sp0 + 0xc0, 0);
        assert!(matches!(
            t.unwind(&mut r, &mut read),
            Err(framehop::Error::CouldNotReadStack(_))
        ));
    }

    #[test]
    fn entries_carry_trace_number_and_start_pc() {
        let t = trace();
        let e = t.entry();
        assert!(is_trace(e) && super::super::lua::is_lua_pc(e));
        assert_eq!(decode(e), Some((5, t.startpc)));
        assert!(!is_trace(LUA_PC_TAG | 0x1234) && decode(0x1234).is_none());
    }

    #[test]
    fn code_addresses_map_to_the_rightmost_snapshot_at_or_below() {
        let t = trace();
        let at = |ofs: u64| t.pc_at(t.mcode + ofs);
        assert_eq!(at(0), 0x7fe7_10ca_da80);
        assert_eq!(at(0x3f), 0x7fe7_10ca_da80);
        // Two snapshots at one offset (no code between them): the later.
        assert_eq!(at(0x40), 0x7fe7_10ca_da94);
        assert_eq!(at(0xff), 0x7fe7_10ca_da94);
        assert_eq!(at(0x100), 0x7fe7_10ca_daa0);
        assert_eq!(
            decode(t.entry_at(t.mcode + 0x120)),
            Some((5, 0x7fe7_10ca_daa0))
        );
        // No snapshots (an older build): the start PC.
        let old = Trace {
            snaps: Arc::from(Vec::new()),
            ..trace()
        };
        assert_eq!(old.pc_at(old.mcode + 0x120), old.startpc);
        assert_eq!(old.entry_at(old.mcode + 0x120), old.entry());
    }

    #[test]
    fn lookup_by_code_range() {
        let mut a = trace();
        let mut b = trace();
        let (a_mcode, a_end) = (a.mcode, a.end);
        b.mcode = a.end + 0x100;
        b.end = b.mcode + 0x40;
        b.traceno = 6;
        a.traceno = 5;
        let m = TraceMap::new(
            1,
            Layout::builtins().remove(0),
            0,
            vec![a, b.clone()],
            &Maps { list: vec![] },
        );
        assert_eq!(m.lookup(a_mcode).map(|t| t.traceno), Some(5));
        assert_eq!(m.lookup(a_end - 1).map(|t| t.traceno), Some(5));
        assert_eq!(m.lookup(a_end), None);
        assert_eq!(m.lookup(b.mcode + 4).map(|t| t.traceno), Some(6));
        assert_eq!(m.lookup(a_mcode - 1), None);
    }
}
