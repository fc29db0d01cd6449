//! Names for LuaJIT's own code in a build whose symbol table was stripped
//! (Debian's libluajit-5.1.so.2 keeps only `.dynsym`, the Lua C API), so
//! that a leak stack reads `lj_vm (interpreter)` rather than
//! `libluajit-5.1.so.2.1.0+0x4036d`.
//!
//! The interpreter is found through its unwind info, which stripping
//! keeps: vm_x64.dasc (and vm_arm64.dasc) emit one hand-written FDE for the
//! whole assembler VM, `lj_vm_asm_begin` up to `lj_vm_ffi_call`, whose CFA
//! is already `rsp + CFRAME_SIZE` at its first byte (the VM runs on the C
//! frame that `lj_vm_pcall` & co. set up: 80 bytes on x64 POSIX). No
//! compiler-generated function starts with a CFA other than `rsp + 8` (the
//! return address just pushed). When the FFI is built in, the next FDE,
//! starting where the VM's ends, is `lj_vm_ffi_call`'s (vm_x64.dasc
//! `.Lfde1`).

use gimli::{
    BaseAddresses, CfaRule, CieOrFde, EhFrame, NativeEndian, UnwindContext, UnwindSection,
};
use object::{Object, ObjectSection};

/// Name given to the interpreter's range.
pub const VM_NAME: &str = "lj_vm (interpreter)";
/// Name given to the FFI call helper that follows it.
pub const FFI_CALL_NAME: &str = "lj_vm_ffi_call";
/// The VM's C frame size on x64 POSIX (lj_frame.h `CFRAME_SIZE`, GC64 and
/// not), the CFA offset at its first instruction.
const CFRAME_SIZE_X64: i64 = 80;
/// DWARF register number of `rsp` on x86-64.
const X64_RSP: u16 = 7;
/// Most FDEs read from one object.
const MAX_FDES: usize = 1 << 18;

/// One FDE: `[start, end)` and the CFA at `start` as `(register, offset)`
/// (None for an expression).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fde {
    /// First address (SVMA).
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// CFA rule at `start`.
    pub cfa: Option<(u16, i64)>,
}

/// The LuaJIT ranges among `fdes`: `(start, size, name)` SVMAs. The
/// interpreter is the largest FDE whose CFA at entry is `rsp + 80`.
pub fn luajit_ranges(fdes: &[Fde]) -> Vec<(u64, u64, String)> {
    let vm = fdes
        .iter()
        .filter(|f| f.cfa == Some((X64_RSP, CFRAME_SIZE_X64)) && f.end > f.start)
        .max_by_key(|f| f.end - f.start);
    let Some(vm) = vm else { return Vec::new() };
    let mut out = vec![(vm.start, vm.end - vm.start, VM_NAME.to_string())];
    if let Some(ffi) = fdes.iter().find(|f| f.start == vm.end && f.end > f.start) {
        out.push((ffi.start, ffi.end - ffi.start, FFI_CALL_NAME.to_string()));
    }
    out
}

/// The FDEs of an x86-64 object's `.eh_frame` with their entry CFA; empty
/// for other architectures or unreadable unwind info.
pub fn fdes(obj: &object::File<'_>) -> Vec<Fde> {
    if obj.architecture() != object::Architecture::X86_64 {
        return Vec::new();
    }
    let Some(sec) = obj.section_by_name(".eh_frame") else {
        return Vec::new();
    };
    let Ok(data) = sec.data() else {
        return Vec::new();
    };
    let mut eh = EhFrame::new(data, NativeEndian);
    eh.set_address_size(8);
    let bases = BaseAddresses::default().set_eh_frame(sec.address());
    let mut ctx = Box::new(UnwindContext::new());
    let mut out = Vec::new();
    let mut entries = eh.entries(&bases);
    while out.len() < MAX_FDES {
        let Ok(Some(entry)) = entries.next() else {
            break;
        };
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let Ok(fde) = partial.parse(EhFrame::cie_from_offset) else {
            continue;
        };
        let start = fde.initial_address();
        let cfa = fde
            .unwind_info_for_address(&eh, &bases, &mut ctx, start)
            .ok()
            .and_then(|row| match row.cfa() {
                CfaRule::RegisterAndOffset { register, offset } => Some((register.0, *offset)),
                CfaRule::Expression(_) => None,
            });
        out.push(Fde {
            start,
            end: start.wrapping_add(fde.len()),
            cfa,
        });
    }
    out
}

/// Whether an object is LuaJIT (the library, or a program linking it in
/// statically): it exports `luaJIT_setmode`.
pub fn is_luajit(obj: &object::File<'_>) -> bool {
    use object::ObjectSymbol;
    obj.dynamic_symbols()
        .chain(obj.symbols())
        .any(|s| s.name() == Ok("luaJIT_setmode"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fde(start: u64, end: u64, off: i64) -> Fde {
        Fde {
            start,
            end,
            cfa: Some((X64_RSP, off)),
        }
    }

    #[test]
    fn names_the_interpreter_and_the_ffi_call() {
        // Layout of Debian's libluajit-5.1.so.2.1.0 (readelf -wF).
        let table = [
            fde(0x8000, 0x8100, 8),
            fde(0x9e40, 0xde92, 80),
            fde(0xde92, 0xdf32, 8),
            // A C function that later grows its frame to 80 bytes.
            fde(0xecd0, 0xedc8, 8),
            fde(0x12980, 0x12a00, 80),
        ];
        assert_eq!(
            luajit_ranges(&table),
            [
                (0x9e40, 0xde92 - 0x9e40, VM_NAME.to_string()),
                (0xde92, 0xdf32 - 0xde92, FFI_CALL_NAME.to_string()),
            ]
        );
        // No interpreter FDE (not LuaJIT, or another architecture).
        assert!(luajit_ranges(&[fde(0x1000, 0x2000, 8)]).is_empty());
        assert!(luajit_ranges(&[]).is_empty());
    }

    #[test]
    fn reads_debians_luajit_unwind_info() {
        let path = "/usr/lib/x86_64-linux-gnu/libluajit-5.1.so.2";
        let Ok(data) = std::fs::read(path) else {
            return;
        };
        let obj = object::File::parse(&*data).unwrap();
        assert!(is_luajit(&obj));
        let r = luajit_ranges(&fdes(&obj));
        assert_eq!(r.first().map(|x| x.2.as_str()), Some(VM_NAME), "{r:?}");
        assert!(r[0].1 > 0x1000, "the interpreter is large: {r:?}");
    }
}
