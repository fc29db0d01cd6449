//! Probe-site choice. A uprobe on an instruction the kernel can emulate
//! (push, nop, jmp, jcc, call: arch/x86/kernel/uprobes.c) costs ~1 µs per
//! hit; any other instruction is single-stepped out of line for 13–15 µs
//! (measured here, see tracing.md). glibc `free` starts with
//! `test %rdi,%rdi`, so an entry probe there is slow; the `je` right after
//! it is emulated and `%rdi` still holds the pointer.
//!
//! [`choose`] walks straight-line code from the entry and picks the first
//! emulated instruction, as long as nothing before it branches or writes a
//! register the probe reads. A return probe may share such a site when
//! `%rsp` is among the kept registers: the kernel hijacks the return address
//! at `%rsp` when it fires, which is still the caller's until the function
//! pushes or reserves its frame.

use iced_x86::{
    Decoder, DecoderOptions, FlowControl, InstructionInfoFactory, Mnemonic, OpAccess, Register,
};

/// How far to look past the entry.
const MAX_STEPS: usize = 4;

/// The chosen site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// Bytes past the function entry.
    pub delta: u64,
    /// The instruction at the entry, as text.
    pub entry_insn: String,
    /// The instruction probed, as text.
    pub probed_insn: String,
    /// Whether the probed instruction is one the kernel emulates.
    pub emulated: bool,
}

/// True for instructions the x86 uprobe code emulates instead of
/// single-stepping.
fn emulated(i: &iced_x86::Instruction) -> bool {
    match i.mnemonic() {
        Mnemonic::Nop | Mnemonic::Push => true,
        Mnemonic::Jmp | Mnemonic::Call => i.is_jmp_short_or_near() || i.is_call_near(),
        _ => i.flow_control() == FlowControl::ConditionalBranch && i.is_jcc_short_or_near(),
    }
}

/// Choose where to probe a function whose first bytes are `code`, loaded at
/// `ip` (any address; only used for text), for a probe that reads `keep`.
pub fn choose(code: &[u8], ip: u64, keep: &[Register]) -> Site {
    let mut dec = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    let mut entry_insn = String::new();
    let mut delta = 0u64;
    for step in 0..MAX_STEPS {
        if !dec.can_decode() {
            break;
        }
        let i = dec.decode();
        if i.is_invalid() {
            break;
        }
        let text = format!("{:?} ({} bytes)", i.mnemonic(), i.len()).to_lowercase();
        if step == 0 {
            entry_insn = text.clone();
        }
        if emulated(&i) {
            return Site {
                delta,
                entry_insn,
                probed_insn: text,
                emulated: true,
            };
        }
        if i.flow_control() != FlowControl::Next {
            break;
        }
        let writes_kept = info.info(&i).used_registers().iter().any(|u| {
            matches!(
                u.access(),
                OpAccess::Write
                    | OpAccess::ReadWrite
                    | OpAccess::CondWrite
                    | OpAccess::ReadCondWrite
            ) && keep.contains(&u.register().full_register())
        });
        if writes_kept {
            break;
        }
        delta += i.len() as u64;
    }
    Site {
        delta: 0,
        probed_insn: entry_insn.clone(),
        entry_insn,
        emulated: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_moves_past_test_to_je() {
        // test rdi,rdi ; je +0x40 ; push rbp
        let code = [0x48, 0x85, 0xff, 0x74, 0x40, 0x55];
        let s = choose(&code, 0x1000, &[Register::RDI]);
        assert_eq!(s.delta, 3);
        assert!(s.emulated);
        assert!(s.probed_insn.starts_with("je"), "{}", s.probed_insn);
    }

    #[test]
    fn push_at_entry_stays() {
        let code = [0x55, 0x48, 0x89, 0xe5];
        let s = choose(&code, 0, &[Register::RDI]);
        assert_eq!(s.delta, 0);
        assert!(s.emulated);
    }

    #[test]
    fn clobbered_argument_keeps_entry() {
        // mov rdi,rax ; je ...
        let code = [0x48, 0x89, 0xc7, 0x74, 0x40];
        let s = choose(&code, 0, &[Register::RDI]);
        assert_eq!(s.delta, 0);
        assert!(!s.emulated);
        // The same code is fine for a probe that only reads rsi.
        assert_eq!(choose(&code, 0, &[Register::RSI]).delta, 3);
    }
}
