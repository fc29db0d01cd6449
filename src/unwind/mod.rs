//! Unwinding sampled user stacks: DWARF CFI from `.eh_frame` (and
//! `.debug_frame` of a separate debug file when there is one) of every
//! mapped object, applied by framehop to the registers and stack copy taken
//! with each event. Debian's nginx, LuaJIT and libc have no frame pointers,
//! so the kernel's own callchains are useless there (tracing.md).
//!
//! JIT-compiled Lua traces have no CFI; [`jit`] steps over them.
//!
//! Not here: turning addresses into names ([`symbols`]).

pub mod jit;
pub mod ljnames;
pub mod lua;
pub mod lua_chain;
pub mod symbols;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder as _};
use object::{Object, ObjectSection};

use crate::target::elf::ElfFile;
use crate::target::Maps;
use crate::trace::record::Regs;

/// Most frames kept per stack.
pub const MAX_FRAMES: usize = 256;

/// The word at `addr` of a stack copy taken from `sp` (None outside it).
pub fn stack_word(stack: &[u8], sp: u64, addr: u64) -> Option<u64> {
    let off = usize::try_from(addr.checked_sub(sp)?).ok()?;
    let b = stack.get(off..off.checked_add(8)?)?;
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

/// How a stack walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// At a root frame (no return address).
    Complete,
    /// Short of the root (stack copy too small, code without unwind info).
    Truncated,
}

/// Unwinder over the objects mapped in one process.
pub struct Unwinder {
    pid: i32,
    fh: UnwinderX86_64<Vec<u8>>,
    cache: CacheX86_64,
    loaded: HashSet<(String, u64)>,
    last_refresh: Option<Instant>,
    /// Live LuaJIT traces, to unwind through JIT-compiled code.
    pub jit: Option<jit::TraceMap>,
}

impl std::fmt::Debug for Unwinder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Unwinder(pid {}, {} modules)",
            self.pid,
            self.loaded.len()
        )
    }
}

fn section(obj: &object::File<'_>, name: &str) -> Option<(std::ops::Range<u64>, Vec<u8>)> {
    let s = obj.section_by_name(name)?;
    let data = s.uncompressed_data().ok()?.into_owned();
    Some((s.address()..s.address() + s.size(), data))
}

impl Unwinder {
    /// An unwinder for `pid` with every currently mapped object loaded.
    pub fn new(pid: i32, maps: &Maps) -> Unwinder {
        let mut u = Unwinder {
            pid,
            fh: UnwinderX86_64::new(),
            cache: CacheX86_64::new(),
            loaded: HashSet::new(),
            last_refresh: None,
            jit: None,
        };
        u.load(maps);
        u
    }

    /// Add modules for executable mappings not yet known.
    pub fn load(&mut self, maps: &Maps) {
        let root = format!("/proc/{}/root", self.pid);
        for m in maps.list.iter().filter(|m| m.exec) {
            let Some(path) = m.file_path() else { continue };
            if !self.loaded.insert((path.to_string(), m.start)) {
                continue;
            }
            let Ok(elf) = ElfFile::open(self.pid, path) else {
                continue;
            };
            let Some(bias) = elf.bias(maps) else { continue };
            let obj = elf.object();
            let mut info = ExplicitModuleSectionInfo::<Vec<u8>> {
                base_svma: 0,
                ..Default::default()
            };
            if let Some((r, d)) = section(&obj, ".text") {
                info.text_svma = Some(r);
                info.text = Some(d);
            }
            if let Some((r, d)) = section(&obj, ".eh_frame") {
                info.eh_frame_svma = Some(r);
                info.eh_frame = Some(d);
            }
            if let Some((r, d)) = section(&obj, ".eh_frame_hdr") {
                info.eh_frame_hdr_svma = Some(r);
                info.eh_frame_hdr = Some(d);
            }
            if let Some((r, _)) = section(&obj, ".got") {
                info.got_svma = Some(r);
            }
            info.debug_frame = section(&obj, ".debug_frame").map(|x| x.1).or_else(|| {
                let dbg = elf.debug_file(Path::new(&root))?;
                let f = ElfFile::open_host(path, &dbg).ok()?;
                section(&f.object(), ".debug_frame").map(|x| x.1)
            });
            log::debug!(
                "unwind module {path} at {:#x}..{:#x} bias {bias:#x}",
                m.start,
                m.end
            );
            self.fh
                .add_module(Module::new(path.to_string(), m.start..m.end, bias, info));
        }
    }

    /// Reload maps when an address is in no module (a library loaded
    /// later), at most once a second.
    fn maybe_refresh(&mut self) {
        if self
            .last_refresh
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.last_refresh = Some(Instant::now());
        if let Ok(maps) = Maps::read(self.pid) {
            self.load(&maps);
        }
    }

    /// Unwind from `regs` over `stack` (copied from `regs.sp` up), pushing
    /// frame addresses into `out`, innermost first: the instruction pointer,
    /// then return addresses; `sps` gets each frame's stack pointer.
    pub fn unwind(
        &mut self,
        regs: &Regs,
        stack: &[u8],
        out: &mut Vec<u64>,
        sps: &mut Vec<u64>,
    ) -> End {
        self.unwind_from(regs, stack, false, out, sps)
    }

    /// [`Self::unwind`]; with `at_return`, `regs.ip` is a return address
    /// (the registers were taken as a call returned), looked up as such.
    pub fn unwind_from(
        &mut self,
        regs: &Regs,
        stack: &[u8],
        at_return: bool,
        out: &mut Vec<u64>,
        sps: &mut Vec<u64>,
    ) -> End {
        let sp = regs.sp;
        let mut read = |addr: u64| stack_word(stack, sp, addr).ok_or(());
        let mut refreshed = false;
        loop {
            out.clear();
            sps.clear();
            let mut r = UnwindRegsX86_64::new(regs.ip, regs.sp, regs.bp);
            let mut addr = match at_return {
                true => match FrameAddress::from_return_address(regs.ip) {
                    Some(a) => a,
                    None => return End::Truncated,
                },
                false => FrameAddress::InstructionPointer(regs.ip),
            };
            let end = loop {
                let trace = (self.jit.as_mut()).and_then(|j| j.find(addr.address_for_lookup()));
                out.push(
                    trace
                        .as_ref()
                        .map_or(addr.address(), |t| t.entry_at(addr.address_for_lookup())),
                );
                sps.push(r.sp());
                if out.len() >= MAX_FRAMES {
                    break End::Truncated;
                }
                let step = match &trace {
                    Some(t) => t.unwind(&mut r, &mut read),
                    None => self
                        .fh
                        .unwind_frame(addr, &mut r, &mut self.cache, &mut read),
                };
                match step {
                    Ok(Some(ret)) => match FrameAddress::from_return_address(ret) {
                        Some(a) => addr = a,
                        None => break End::Complete,
                    },
                    Ok(None) => break End::Complete,
                    Err(e) => {
                        log::trace!("unwind stopped after {} frames: {e:?}", out.len());
                        break End::Truncated;
                    }
                }
            };
            if end == End::Truncated && out.len() <= 1 && !refreshed {
                refreshed = true;
                let before = self.loaded.len();
                self.maybe_refresh();
                if self.loaded.len() != before {
                    continue;
                }
            }
            return end;
        }
    }
}
