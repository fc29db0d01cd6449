//! Human names for FFI C types (`char[?]`, `struct foo`, `uint8_t *`),
//! rebuilt from the VM's C type table the way `lj_ctype_repr` reads it.

use super::vm::Vm;
use crate::target::Memory;

// lj_ctype.h: kinds are info >> 28; flag bits depend on the kind.
const CT_NUM: u32 = 0;
const CT_STRUCT: u32 = 1;
const CT_PTR: u32 = 2;
const CT_ARRAY: u32 = 3;
const CT_VOID: u32 = 4;
const CT_ENUM: u32 = 5;
const CT_FUNC: u32 = 6;
const CT_TYPEDEF: u32 = 7;
const CT_ATTRIB: u32 = 8;
const CTF_BOOL: u32 = 0x0800_0000;
const CTF_FP: u32 = 0x0400_0000;
const CTF_CONST: u32 = 0x0200_0000;
const CTF_UNSIGNED: u32 = 0x0080_0000;
const CTF_LONG: u32 = 0x0040_0000;
const CTF_VECTOR: u32 = 0x0800_0000;
const CTF_UNION: u32 = 0x0080_0000;
const CTF_REF: u32 = 0x0080_0000;
const CTF_VLA: u32 = 0x0010_0000;
/// CTID_CCHAR: plain `char` (lj_ctype.h CTTYDEF order).
const CTID_CCHAR: u64 = 4;

/// Name of C type `id`, or `ctype#ID` when the table cannot be read.
pub fn ctype_name<M: Memory + ?Sized>(vm: &Vm<'_, M>, id: u64) -> String {
    repr(vm, id, 0).unwrap_or_else(|| format!("ctype#{id}"))
}

fn name_of<M: Memory + ?Sized>(vm: &Vm<'_, M>, id: u64) -> Option<String> {
    let a = vm.ctype_addr(id).ok()?;
    let s = vm.gcref(a + vm.lay.f.ct_name.off).ok()?;
    if s == 0 {
        return None;
    }
    vm.string(s, 200).ok()
}

fn repr<M: Memory + ?Sized>(vm: &Vm<'_, M>, id: u64, depth: u32) -> Option<String> {
    if depth > 12 {
        return None;
    }
    let (info, size) = vm.ctype(id).ok()?;
    let child = (info & 0xffff) as u64;
    let kind = info >> 28;
    let konst = if info & CTF_CONST != 0 { "const " } else { "" };
    Some(match kind {
        CT_NUM => {
            let base = if id == CTID_CCHAR {
                "char".to_string()
            } else if info & CTF_BOOL != 0 {
                "bool".into()
            } else if info & CTF_FP != 0 {
                match size {
                    4 => "float".into(),
                    8 => "double".into(),
                    _ => "long double".into(),
                }
            } else {
                // lj_ctype_repr spells integers by size: char, short, int,
                // long (CTF_LONG), int64_t, with an `unsigned ` prefix.
                let u = info & CTF_UNSIGNED != 0;
                let name = match size {
                    1 => "char",
                    2 => "short",
                    4 => "int",
                    _ if info & CTF_LONG != 0 => "long",
                    _ => {
                        if u {
                            "uint64_t"
                        } else {
                            "int64_t"
                        }
                    }
                };
                if u && (size != 8 || info & CTF_LONG != 0) {
                    format!("unsigned {name}")
                } else {
                    name.to_string()
                }
            };
            format!("{konst}{base}")
        }
        CT_STRUCT => {
            let kw = if info & CTF_UNION != 0 {
                "union"
            } else {
                "struct"
            };
            match name_of(vm, id) {
                Some(n) => format!("{kw} {n}"),
                None => format!("{kw} {id}"),
            }
        }
        CT_PTR => {
            let star = if info & CTF_REF != 0 { "&" } else { "*" };
            format!("{} {star}", repr(vm, child, depth + 1)?)
        }
        CT_ARRAY => {
            let elem = repr(vm, child, depth + 1)?;
            if info & CTF_VECTOR != 0 {
                format!("{elem} __attribute__((vector_size({size})))")
            } else if info & CTF_VLA != 0 || size == u32::MAX {
                format!("{elem}[?]")
            } else {
                let esz = vm.ctype_size(child).ok().filter(|&s| s > 0);
                match esz {
                    Some(e) => format!("{elem}[{}]", size as u64 / e),
                    None => format!("{elem}[]"),
                }
            }
        }
        CT_VOID => format!("{konst}void"),
        CT_ENUM => format!("enum {}", name_of(vm, id).unwrap_or_else(|| id.to_string())),
        CT_FUNC => format!("{}()", name_of(vm, id).unwrap_or_else(|| "function".into())),
        CT_TYPEDEF => name_of(vm, id).unwrap_or_else(|| format!("ctype#{id}")),
        CT_ATTRIB => repr(vm, child, depth + 1)?,
        _ => format!("ctype#{id}"),
    })
}
