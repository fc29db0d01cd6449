//! The probe set: which functions of which objects, at which file offsets,
//! entry or return, and what each sample must carry.
//!
//! libc's allocation functions are found in `.dynsym` of the mapped libc;
//! LuaJIT's allocator has no exported symbol in stripped builds, so its
//! address is read from the VM (`g->allocf`) and turned into a file offset
//! through the mapping that holds it.

use iced_x86::Register;

use super::perf::{sample, ProbeAttr};
use super::record::REGS_MASK;
use super::site::{self, Site};
use super::TraceError;
use crate::target::elf::ElfFile;
use crate::target::Maps;

/// A traced function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Func {
    /// malloc(size).
    Malloc,
    /// calloc(n, size).
    Calloc,
    /// realloc(ptr, size).
    Realloc,
    /// reallocarray(ptr, n, size).
    ReallocArray,
    /// free(ptr).
    Free,
    /// posix_memalign(&ptr, align, size).
    PosixMemalign,
    /// aligned_alloc(align, size).
    AlignedAlloc,
    /// memalign(align, size).
    Memalign,
    /// valloc(size).
    Valloc,
    /// pvalloc(size).
    Pvalloc,
    /// LuaJIT's `g->allocf(ud, ptr, osize, nsize)`.
    LuaAllocf,
    /// A USDT allocation probe (pointer, size).
    UsdtAlloc,
    /// A USDT free probe (pointer).
    UsdtFree,
}

impl Func {
    /// The libc functions, in probe order.
    pub const LIBC: [Func; 10] = [
        Func::Malloc,
        Func::Calloc,
        Func::Realloc,
        Func::ReallocArray,
        Func::Free,
        Func::PosixMemalign,
        Func::AlignedAlloc,
        Func::Memalign,
        Func::Valloc,
        Func::Pvalloc,
    ];

    /// Symbol name.
    pub fn name(self) -> &'static str {
        match self {
            Func::Malloc => "malloc",
            Func::Calloc => "calloc",
            Func::Realloc => "realloc",
            Func::ReallocArray => "reallocarray",
            Func::Free => "free",
            Func::PosixMemalign => "posix_memalign",
            Func::AlignedAlloc => "aligned_alloc",
            Func::Memalign => "memalign",
            Func::Valloc => "valloc",
            Func::Pvalloc => "pvalloc",
            Func::LuaAllocf => "lj_alloc_f (g->allocf)",
            Func::UsdtAlloc => "usdt alloc",
            Func::UsdtFree => "usdt free",
        }
    }

    /// Argument registers an entry probe reads.
    fn arg_regs(self) -> &'static [Register] {
        use Register::*;
        match self {
            Func::Malloc | Func::Free | Func::Valloc | Func::Pvalloc => &[RDI],
            Func::Calloc | Func::Realloc | Func::AlignedAlloc | Func::Memalign => &[RDI, RSI],
            Func::ReallocArray | Func::PosixMemalign => &[RDI, RSI, RDX],
            Func::LuaAllocf => &[RSI, RDX, RCX],
            Func::UsdtAlloc | Func::UsdtFree => &[],
        }
    }

    /// Whether the function returns a pointer we must see (free does not).
    pub fn needs_return(self) -> bool {
        !matches!(self, Func::Free | Func::UsdtAlloc | Func::UsdtFree)
    }

    /// The registers a sample of this function's entry (or return) probe
    /// carries: each one costs the target time on every hit (~0.45 µs a
    /// sample here for all 17 against the handful needed), so only what is
    /// read: arguments, the stack pointer (call nesting, stack copy base),
    /// and for allocations what the unwinder starts from. USDT arguments
    /// may live in any register: those probes take them all.
    pub fn regs_mask(self, retprobe: bool) -> u64 {
        use super::record::reg;
        let bit = |r: u32| 1u64 << r;
        if retprobe {
            return bit(reg::AX) | bit(reg::SP);
        }
        let args: u64 = self
            .arg_regs()
            .iter()
            .map(|r| match r {
                Register::RDI => bit(reg::DI),
                Register::RSI => bit(reg::SI),
                Register::RDX => bit(reg::DX),
                _ => bit(reg::CX),
            })
            .sum();
        match self {
            Func::Free => args | bit(reg::SP),
            Func::UsdtAlloc | Func::UsdtFree => REGS_MASK,
            _ => args | bit(reg::SP) | bit(reg::IP) | bit(reg::BP),
        }
    }

    /// Whether entry samples carry a stack copy (allocations do).
    pub fn wants_stack(self) -> bool {
        !matches!(self, Func::Free | Func::UsdtFree)
    }
}

/// One probe to open on every thread.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    /// What it traces.
    pub func: Func,
    /// Path of the object as the target sees it.
    pub target_path: String,
    /// Entry file offset of the function.
    pub entry_offset: u64,
    /// Where the probe sits (for entry probes possibly past the entry).
    pub site: Site,
    /// The perf attributes.
    pub attr: ProbeAttr,
    /// USDT argument locations (empty for functions).
    pub usdt_args: Vec<(i8, super::usdt::ArgLoc)>,
}

impl ProbeSpec {
    /// True for a return probe.
    pub fn retprobe(&self) -> bool {
        self.attr.retprobe
    }
}

/// Options for building the set.
#[derive(Debug, Clone, Copy)]
pub struct ProbeOpts {
    /// Bytes of user stack to copy with each allocation.
    pub stack_bytes: u32,
}

/// The file offset of SVMA `svma` in `elf`, through its PT_LOAD segments.
pub fn svma_to_offset(elf: &ElfFile, svma: u64) -> Option<u64> {
    use object::{Object, ObjectSegment};
    elf.object().segments().find_map(|s| {
        let (off, fsize) = s.file_range();
        (svma >= s.address() && svma < s.address() + fsize).then(|| svma - s.address() + off)
    })
}

/// Build the entry (and return) probes of `func` at `entry_offset`.
pub fn probes_for(func: Func, elf: &ElfFile, entry_offset: u64, opts: ProbeOpts) -> Vec<ProbeSpec> {
    let code = elf
        .data()
        .get(entry_offset as usize..)
        .map(|c| &c[..c.len().min(64)])
        .unwrap_or(&[]);
    // Entry and return probes share one site (one trap per call, not two).
    // A return probe hijacks the return address at %rsp when it fires, so
    // the site may move past the entry only over instructions that leave
    // %rsp alone, as it may move only over ones that keep the arguments.
    let mut keep = func.arg_regs().to_vec();
    keep.push(Register::RSP);
    let site = site::choose(code, entry_offset, &keep);
    let base = |retprobe: bool, offset: u64, site: Site, stack: u32| {
        let mut st = sample::IDENTIFIER | sample::TID | sample::TIME | sample::REGS_USER;
        if stack > 0 {
            st |= sample::STACK_USER;
        }
        ProbeSpec {
            func,
            target_path: elf.target_path.clone(),
            entry_offset,
            site,
            attr: ProbeAttr {
                path: elf.host_path.to_string_lossy().into_owned(),
                offset,
                retprobe,
                sample_type: st,
                regs_mask: func.regs_mask(retprobe),
                stack_bytes: stack,
                ref_ctr_offset: 0,
            },
            usdt_args: Vec::new(),
        }
    };
    let entry_stack = if func.wants_stack() {
        opts.stack_bytes
    } else {
        0
    };
    let mut v = vec![base(
        false,
        entry_offset + site.delta,
        site.clone(),
        entry_stack,
    )];
    if func.needs_return() {
        // posix_memalign stores the pointer through its first argument,
        // usually a local of the caller: a short stack copy at the return
        // holds it synchronously.
        let ret_stack = if func == Func::PosixMemalign { 512 } else { 0 };
        v.push(base(true, entry_offset + site.delta, site, ret_stack));
    }
    v
}

/// The mapped libc of a process, if any.
pub fn find_libc(pid: i32, maps: &Maps) -> Option<ElfFile> {
    maps.files().into_iter().find_map(|p| {
        let base = p.rsplit('/').next().unwrap_or(p);
        let is_libc =
            base.starts_with("libc.so") || (base.starts_with("libc-") && base.ends_with(".so"));
        if is_libc {
            ElfFile::open(pid, p).ok()
        } else {
            None
        }
    })
}

/// Probes for every libc allocation function. Aliases (two names at one
/// offset, as glibc's memalign and aligned_alloc) are probed once.
pub fn libc_probes(pid: i32, maps: &Maps, opts: ProbeOpts) -> Result<Vec<ProbeSpec>, TraceError> {
    let Some(libc) = find_libc(pid, maps) else {
        // A libc is mapped but cannot be opened: say so, not "static binary".
        if let Some(p) = maps.files().into_iter().find(|p| {
            let base = p.rsplit('/').next().unwrap_or(p);
            base.starts_with("libc.so") || (base.starts_with("libc-") && base.ends_with(".so"))
        }) {
            let e = ElfFile::open(pid, p)
                .err()
                .unwrap_or_else(|| std::io::Error::other("?"));
            return Err(TraceError::Open {
                what: format!("opening libc {p} of process {pid}"),
                source: e,
            });
        }
        return Err(TraceError::NoLibc(pid));
    };
    let mut out: Vec<ProbeSpec> = Vec::new();
    for f in Func::LIBC {
        let Some((svma, _)) = libc.symbol(f.name(), false) else {
            log::info!("{} has no {}; not probed", libc.target_path, f.name());
            continue;
        };
        let Some(off) = svma_to_offset(&libc, svma) else {
            continue;
        };
        if out.iter().any(|p| p.entry_offset == off) {
            log::info!("{} is an alias of an already probed function", f.name());
            continue;
        }
        out.extend(probes_for(f, &libc, off, opts));
    }
    if out.is_empty() {
        return Err(TraceError::NoLibc(pid));
    }
    Ok(out)
}

/// Probes for LuaJIT's allocator at AVMA `allocf`.
pub fn luajit_probes(
    pid: i32,
    maps: &Maps,
    allocf: u64,
    opts: ProbeOpts,
) -> Result<Vec<ProbeSpec>, TraceError> {
    let m = maps
        .find(allocf)
        .filter(|m| m.exec)
        .ok_or(TraceError::AllocfNotMapped(allocf))?;
    let path = m.file_path().ok_or(TraceError::AllocfNotMapped(allocf))?;
    let elf = ElfFile::open(pid, path).map_err(|e| TraceError::Open {
        what: format!("opening {path}"),
        source: e,
    })?;
    let off = allocf - m.start + m.offset;
    Ok(probes_for(Func::LuaAllocf, &elf, off, opts))
}

/// A probe on USDT site `p` (its semaphore raised by the kernel while the
/// probe exists).
pub fn usdt_probe(
    func: Func,
    p: &super::usdt::SdtProbe,
    elf: &ElfFile,
    opts: ProbeOpts,
) -> Option<ProbeSpec> {
    let offset = p.offset?;
    let args: Vec<_> = p
        .args
        .split_whitespace()
        .map(super::usdt::parse_arg)
        .collect::<Option<_>>()?;
    let mut spec = probes_for(func, elf, offset, opts).into_iter().next()?;
    // SDT sites are nops: the probe sits exactly there.
    spec.site.delta = 0;
    spec.attr.offset = offset;
    spec.attr.ref_ctr_offset = p.semaphore_offset.unwrap_or(0);
    spec.usdt_args = args;
    Some(spec)
}
