//! USDT (SystemTap SDT) probes: the `.note.stapsdt` notes of an object
//! (no maintained Rust parser exists, so they are read here with explicit
//! little-endian decoding), and their argument specs (`8@%rdi`,
//! `-4@-20(%rbp)`), evaluated on sampled registers and stack copies.
//!
//! Semaphores are left to the kernel: a uprobe created with
//! `ref_ctr_offset` (the PMU's `config:32-63`) increments the semaphore
//! while the probe exists and decrements it when the fd closes, even when
//! ljleak is killed, so ljleak itself never writes target memory.

use object::{Object, ObjectSection};

use super::probes::svma_to_offset;
use super::record::Regs;
use crate::target::elf::ElfFile;

/// One SDT probe of an object.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SdtProbe {
    /// Object path as the target sees it.
    pub object: String,
    /// Provider.
    pub provider: String,
    /// Name.
    pub name: String,
    /// SVMA of the probe site (after `.stapsdt.base` adjustment).
    pub address: u64,
    /// File offset of the site (what the uprobe takes).
    pub offset: Option<u64>,
    /// SVMA of the semaphore (0: none).
    pub semaphore: u64,
    /// File offset of the semaphore (`ref_ctr_offset`).
    pub semaphore_offset: Option<u64>,
    /// Argument specs, as written in the note.
    pub args: String,
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Parse the notes in `data` (a `.note.stapsdt` section): (pc, base,
/// semaphore, provider, name, args) per note of type 3 named `stapsdt`.
pub fn parse_notes(data: &[u8]) -> Vec<(u64, u64, u64, String, String, String)> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    let align4 = |n: usize| (n + 3) & !3;
    // Bounded by the section size: each note advances by at least 12 bytes.
    while let (Some(namesz), Some(descsz), Some(ty)) = (
        u32_at(data, pos),
        u32_at(data, pos + 4),
        u32_at(data, pos + 8),
    ) {
        let name_at = pos + 12;
        let desc_at = name_at + align4(namesz as usize);
        let next = desc_at + align4(descsz as usize);
        let name = data.get(name_at..name_at + namesz as usize).unwrap_or(&[]);
        let desc = data.get(desc_at..desc_at + descsz as usize);
        if ty == 3 && name.starts_with(b"stapsdt") {
            if let Some(d) = desc {
                if let (Some(pc), Some(base), Some(sem)) =
                    (u64_at(d, 0), u64_at(d, 8), u64_at(d, 16))
                {
                    let mut strs = d[24..]
                        .split(|&c| c == 0)
                        .map(|s| String::from_utf8_lossy(s).into_owned());
                    let provider = strs.next().unwrap_or_default();
                    let pname = strs.next().unwrap_or_default();
                    let args = strs.next().unwrap_or_default();
                    out.push((pc, base, sem, provider, pname, args));
                }
            }
        }
        if next <= pos || next > data.len() {
            break;
        }
        pos = next;
    }
    out
}

/// Every SDT probe of `elf`.
pub fn probes_of(elf: &ElfFile) -> Vec<SdtProbe> {
    let obj = elf.object();
    let Some(sec) = obj.section_by_name(".note.stapsdt") else {
        return Vec::new();
    };
    let Ok(data) = sec.data() else {
        return Vec::new();
    };
    let base_sec = obj.section_by_name(".stapsdt.base").map(|s| s.address());
    parse_notes(data)
        .into_iter()
        .map(|(pc, base, sem, provider, name, args)| {
            // Prelink-style adjustment (systemtap's sdt.h notes): addresses
            // move by how far .stapsdt.base moved from the recorded base.
            let adj = |a: u64| match base_sec {
                Some(b) if a != 0 => a.wrapping_add(b.wrapping_sub(base)),
                _ => a,
            };
            let (address, semaphore) = (adj(pc), adj(sem));
            SdtProbe {
                object: elf.target_path.clone(),
                provider,
                name,
                address,
                offset: svma_to_offset(elf, address),
                semaphore,
                semaphore_offset: (semaphore != 0)
                    .then(|| svma_to_offset(elf, semaphore))
                    .flatten(),
                args,
            }
        })
        .collect()
}

/// One argument location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgLoc {
    /// A register (perf register value).
    Reg(Gpr),
    /// Memory at register + displacement.
    Mem(Gpr, i64),
    /// An immediate.
    Imm(i64),
}

/// The registers an argument can name that ljleak samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gpr {
    /// rax.
    Ax,
    /// rcx.
    Cx,
    /// rdx.
    Dx,
    /// rsi.
    Si,
    /// rdi.
    Di,
    /// rbp.
    Bp,
    /// rsp.
    Sp,
    /// rbx.
    Bx,
    /// r8..r15 (index 0..8).
    R(u8),
}

impl Gpr {
    fn parse(s: &str) -> Option<Gpr> {
        Some(match s.trim_start_matches('%') {
            "rax" | "eax" => Gpr::Ax,
            "rcx" | "ecx" => Gpr::Cx,
            "rdx" | "edx" => Gpr::Dx,
            "rsi" | "esi" => Gpr::Si,
            "rdi" | "edi" => Gpr::Di,
            "rbp" | "ebp" => Gpr::Bp,
            "rsp" | "esp" => Gpr::Sp,
            "rbx" | "ebx" => Gpr::Bx,
            r => {
                let n: u8 = r
                    .strip_prefix('r')?
                    .trim_end_matches(['d', 'w', 'b'])
                    .parse()
                    .ok()?;
                if !(8..=15).contains(&n) {
                    return None;
                }
                Gpr::R(n - 8)
            }
        })
    }

    fn get(self, r: &Regs) -> u64 {
        match self {
            Gpr::Ax => r.ax,
            Gpr::Cx => r.cx,
            Gpr::Dx => r.dx,
            Gpr::Si => r.si,
            Gpr::Di => r.di,
            Gpr::Bp => r.bp,
            Gpr::Sp => r.sp,
            Gpr::Bx => r.bx,
            Gpr::R(i) => r.r[i as usize & 7],
        }
    }
}

/// Parse one argument spec (`8@%rdi`, `-4@-20(%rbp)`, `8@$42`): size in
/// bytes (negative: signed) and location.
pub fn parse_arg(spec: &str) -> Option<(i8, ArgLoc)> {
    let (size, loc) = spec.split_once('@')?;
    let size: i8 = size.parse().ok()?;
    let loc = if let Some(imm) = loc.strip_prefix('$') {
        ArgLoc::Imm(imm.parse().ok()?)
    } else if let Some((disp, reg)) = loc.split_once('(') {
        let disp = if disp.is_empty() {
            0
        } else {
            disp.parse().ok()?
        };
        ArgLoc::Mem(Gpr::parse(reg.strip_suffix(')')?)?, disp)
    } else {
        ArgLoc::Reg(Gpr::parse(loc)?)
    };
    Some((size, loc))
}

/// Evaluate argument `loc` of `size` bytes on sampled registers, reading
/// memory operands from the stack copy (taken at `regs.sp`).
pub fn eval_arg(size: i8, loc: &ArgLoc, regs: &Regs, stack: &[u8]) -> Option<u64> {
    let raw = match *loc {
        ArgLoc::Imm(v) => v as u64,
        ArgLoc::Reg(r) => r.get(regs),
        ArgLoc::Mem(r, disp) => {
            let addr = r.get(regs).wrapping_add(disp as u64);
            let off = addr.checked_sub(regs.sp)? as usize;
            u64_at(stack, off).or_else(|| {
                let n = size.unsigned_abs() as usize;
                let mut w = [0u8; 8];
                w[..n.min(8)].copy_from_slice(stack.get(off..off + n.min(8))?);
                Some(u64::from_le_bytes(w))
            })?
        }
    };
    let bits = (size.unsigned_abs() as u32 * 8).clamp(8, 64);
    Some(if bits == 64 {
        raw
    } else {
        raw & ((1u64 << bits) - 1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_note() {
        let mut desc = Vec::new();
        for v in [0x1234u64, 0x2000, 0x3000] {
            desc.extend_from_slice(&v.to_le_bytes());
        }
        desc.extend_from_slice(b"prov\0alloc\08@%rdi 8@-16(%rbp)\0");
        let mut note = Vec::new();
        note.extend_from_slice(&8u32.to_le_bytes());
        note.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        note.extend_from_slice(&3u32.to_le_bytes());
        note.extend_from_slice(b"stapsdt\0");
        note.extend_from_slice(&desc);
        while note.len() % 4 != 0 {
            note.push(0);
        }
        let n = parse_notes(&note);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].0, 0x1234);
        assert_eq!(n[0].2, 0x3000);
        assert_eq!((n[0].3.as_str(), n[0].4.as_str()), ("prov", "alloc"));
        assert_eq!(n[0].5, "8@%rdi 8@-16(%rbp)");
        assert!(parse_notes(&note[..10]).is_empty());
    }

    #[test]
    fn args() {
        assert_eq!(parse_arg("8@%rdi"), Some((8, ArgLoc::Reg(Gpr::Di))));
        assert_eq!(
            parse_arg("-4@-20(%rbp)"),
            Some((-4, ArgLoc::Mem(Gpr::Bp, -20)))
        );
        assert_eq!(parse_arg("8@$42"), Some((8, ArgLoc::Imm(42))));
        assert_eq!(parse_arg("8@%xmm0"), None);
        assert_eq!(parse_arg("-4@%r12d"), Some((-4, ArgLoc::Reg(Gpr::R(4)))));
        let regs = Regs {
            di: 0xdead,
            sp: 0x1000,
            bp: 0x1020,
            ..Default::default()
        };
        let mut stack = vec![0u8; 0x40];
        stack[0x10..0x18].copy_from_slice(&777u64.to_le_bytes());
        assert_eq!(
            eval_arg(8, &ArgLoc::Reg(Gpr::Di), &regs, &stack),
            Some(0xdead)
        );
        assert_eq!(
            eval_arg(8, &ArgLoc::Mem(Gpr::Bp, -16), &regs, &stack),
            Some(777)
        );
        assert_eq!(
            eval_arg(4, &ArgLoc::Reg(Gpr::Di), &regs, &stack),
            Some(0xdead)
        );
    }
}
