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
//! carrying the trace number and its start PC, so it can be named
//! (`@app.lua:17 (trace 5)`) after the trace is gone.
//!
//! Not here: when to unwind, naming code addresses ([`super::symbols`]), the
//! interpreter's Lua frames ([`super::lua`]).

use std::ops::Range;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
}

impl Trace {
    /// The stack entry standing for a frame in this trace.
    pub fn entry(&self) -> u64 {
        LUA_PC_TAG
            | TRACE_TAG
            | (u64::from(self.traceno & 0xffff) << TRACENO_SHIFT)
            | ((self.startpc >> 2) & PC_MASK)
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

/// `(traceno, startpc)` of a trace frame entry.
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
            Ok(Some(Trace {
                mcode,
                end: mcode + sz,
                cfa_off: size_jit + f.tr_spadjust.get(m, t)?,
                traceno: no as u32,
                startpc: f.tr_startpc.get(m, t)?,
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
        (addr < t.end).then_some(*t)
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
    fn lookup_by_code_range() {
        let mut a = trace();
        let mut b = trace();
        b.mcode = a.end + 0x100;
        b.end = b.mcode + 0x40;
        b.traceno = 6;
        a.traceno = 5;
        let m = TraceMap::new(
            1,
            Layout::builtins().remove(0),
            0,
            vec![a, b],
            &Maps { list: vec![] },
        );
        assert_eq!(m.lookup(a.mcode).map(|t| t.traceno), Some(5));
        assert_eq!(m.lookup(a.end - 1).map(|t| t.traceno), Some(5));
        assert_eq!(m.lookup(a.end), None);
        assert_eq!(m.lookup(b.mcode + 4).map(|t| t.traceno), Some(6));
        assert_eq!(m.lookup(a.mcode - 1), None);
    }
}
