//! The name a function was called by, derived from the caller's bytecode
//! exactly as lj_debug.c does for `debug.traceback` ("in function
//! 'inner'"): `lj_debug_funcname`, `lj_debug_slotname`, `debug_varname`,
//! `lj_debug_uvname`.
//!
//! Bytecode facts (lj_bc.h, LuaJIT 2.1 and luajit2): instruction `op` in
//! bits 0-7, `A` 8-15, `C` 16-23, `B` 24-31, `D` 16-31; the operand mode of
//! A and the metamethod of each opcode are the [`OPS`] table below.

use super::frames::ProtoInfo;
use super::vm::Vm;
use crate::target::{MemError, Memory, ReadExt};

/// Mode of operand A (lj_bc.h `BCMode`, only the ones the namer needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum A {
    /// Writes slot A.
    Dst,
    /// Uses slots from A upwards.
    Base,
    /// Anything else.
    Other,
}

/// Opcodes the namer looks at (lj_bc.h BCDEF order).
const BC_MOV: u8 = 0x12;
const BC_KNIL: u8 = 0x2c;
const BC_UGET: u8 = 0x2d;
const BC_GGET: u8 = 0x36;
const BC_TGETS: u8 = 0x39;
const BC_ITERC: u8 = 0x45;

/// `(mode of A, metamethod)` per opcode 0x00..=0x60 (lj_bc.h BCDEF); the
/// metamethod is `call` for calls, a `__name` for ops that may invoke one,
/// empty for none.
#[rustfmt::skip]
const OPS: [(A, &str); 0x61] = {
    use A::{Base as B, Dst as D, Other as O};
    [
        // 00-0B comparisons
        (O, "__lt"), (O, "__lt"), (O, "__le"), (O, "__le"),
        (O, "__eq"), (O, "__eq"), (O, "__eq"), (O, "__eq"),
        (O, "__eq"), (O, "__eq"), (O, "__eq"), (O, "__eq"),
        // 0C ISTC 0D ISFC 0E IST 0F ISF 10 ISTYPE 11 ISNUM
        (D, ""), (D, ""), (O, ""), (O, ""), (O, ""), (O, ""),
        // 12 MOV 13 NOT 14 UNM 15 LEN
        (D, ""), (D, ""), (D, "__unm"), (D, "__len"),
        // 16-24 arithmetic VN, NV, VV; 25 POW 26 CAT
        (D, "__add"), (D, "__sub"), (D, "__mul"), (D, "__div"), (D, "__mod"),
        (D, "__add"), (D, "__sub"), (D, "__mul"), (D, "__div"), (D, "__mod"),
        (D, "__add"), (D, "__sub"), (D, "__mul"), (D, "__div"), (D, "__mod"),
        (D, "__pow"), (D, "__concat"),
        // 27 KSTR 28 KCDATA 29 KSHORT 2A KNUM 2B KPRI 2C KNIL
        (D, ""), (D, ""), (D, ""), (D, ""), (D, ""), (B, ""),
        // 2D UGET 2E-31 USET* 32 UCLO 33 FNEW
        (D, ""), (O, ""), (O, ""), (O, ""), (O, ""), (O, ""), (D, "__gc"),
        // 34 TNEW 35 TDUP 36 GGET 37 GSET 38-3B TGET* 3C-3E TSET* 3F TSETM 40 TSETR
        (D, "__gc"), (D, "__gc"), (D, "__index"), (O, "__newindex"),
        (D, "__index"), (D, "__index"), (D, "__index"), (D, "__index"),
        (O, "__newindex"), (O, "__newindex"), (O, "__newindex"), (B, "__newindex"), (O, "__newindex"),
        // 41 CALLM 42 CALL 43 CALLMT 44 CALLT 45 ITERC 46 ITERN 47 VARG 48 ISNEXT
        (B, "call"), (B, "call"), (B, "call"), (B, "call"), (B, "call"), (B, "call"), (B, ""), (B, ""),
        // 49 RETM 4A-4C RET*
        (B, ""), (O, ""), (O, ""), (O, ""),
        // 4D FORI 4E JFORI 4F FORL 50 IFORL 51 JFORL 52 ITERL 53 IITERL 54 JITERL
        (B, ""), (B, ""), (B, ""), (B, ""), (B, ""), (B, ""), (B, ""), (B, ""),
        // 55-57 LOOP 58 JMP 59-60 FUNC*
        (O, ""), (O, ""), (O, ""), (O, ""),
        (O, ""), (O, ""), (O, ""), (O, ""), (O, ""), (O, ""), (O, ""), (O, ""),
    ]
};

/// Internal variable names (lj_debug.h VARNAMEDEF), indexed by `vn - 1`.
const VARNAMES: [&str; 6] = [
    "(for index)",
    "(for limit)",
    "(for step)",
    "(for generator)",
    "(for state)",
    "(for control)",
];
/// Most bytes of varinfo or uvinfo read.
const MAX_INFO: usize = 1 << 16;

/// How a function was called: `namewhat` (`global`, `local`, `method`,
/// `field`, `upvalue`, `metamethod`) and the name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct CallName {
    /// Kind of name, as `lua_getinfo` `namewhat`.
    pub what: &'static str,
    /// The name.
    pub name: String,
}

fn op(ins: u32) -> u8 {
    ins as u8
}
fn ra(ins: u32) -> u32 {
    (ins >> 8) & 0xff
}
fn rb(ins: u32) -> u32 {
    ins >> 24
}
fn rc(ins: u32) -> u32 {
    (ins >> 16) & 0xff
}
fn rd(ins: u32) -> u32 {
    ins >> 16
}

fn mode(o: u8) -> (A, &'static str) {
    OPS.get(o as usize).copied().unwrap_or((A::Other, ""))
}

/// `lj_debug_funcname` given the caller's prototype and the bytecode
/// position of its call instruction (from `debug_framepc`).
pub fn call_name<M: Memory + ?Sized>(vm: &Vm<'_, M>, p: &ProtoInfo, pos: u32) -> Option<CallName> {
    if pos >= p.sizebc {
        return None;
    }
    let ip = p.bc + 4 * pos as u64;
    let ins = vm.m.u32(ip).ok()?;
    match mode(op(ins)).1 {
        "" => None,
        "call" => {
            let mut slot = ra(ins);
            if op(ins) == BC_ITERC {
                slot = slot.wrapping_sub(3);
            }
            slot_name(vm, p, pos, slot).ok().flatten()
        }
        mm => Some(CallName {
            what: "metamethod",
            name: mm.into(),
        }),
    }
}

/// `lj_debug_slotname`: what slot `slot` holds at instruction `pos`.
fn slot_name<M: Memory + ?Sized>(
    vm: &Vm<'_, M>,
    p: &ProtoInfo,
    mut pos: u32,
    mut slot: u32,
) -> Result<Option<CallName>, MemError> {
    let rd_ins = |i: u32| vm.m.u32(p.bc + 4 * i as u64);
    // Each MOV restarts the search further up; bound the restarts too.
    for _ in 0..p.sizebc {
        if let Some(n) = var_name(vm, p, pos, slot)? {
            return Ok(Some(CallName {
                what: "local",
                name: n,
            }));
        }
        let mut restarted = false;
        while pos > 1 {
            pos -= 1;
            let ins = rd_ins(pos)?;
            let (am, _) = mode(op(ins));
            let a = ra(ins);
            if am == A::Base {
                if slot >= a && (op(ins) != BC_KNIL || slot <= rd(ins)) {
                    return Ok(None);
                }
            } else if am == A::Dst && a == slot {
                return Ok(match op(ins) {
                    BC_MOV => {
                        slot = rd(ins);
                        restarted = true;
                        break;
                    }
                    BC_GGET => kgc_str(vm, p, rd(ins))?.map(|name| CallName {
                        what: "global",
                        name,
                    }),
                    BC_TGETS => kgc_str(vm, p, rc(ins))?.map(|name| {
                        let method = pos > 0
                            && rd_ins(pos - 1).is_ok_and(|prev| {
                                op(prev) == BC_MOV && ra(prev) == a + 1 && rd(prev) == rb(ins)
                            });
                        CallName {
                            what: if method { "method" } else { "field" },
                            name,
                        }
                    }),
                    BC_UGET => Some(CallName {
                        what: "upvalue",
                        name: uv_name(vm, p, rd(ins))?,
                    }),
                    _ => None,
                });
            }
        }
        if !restarted {
            return Ok(None);
        }
    }
    Ok(None)
}

/// `proto_kgc(pt, ~idx)` as a string.
fn kgc_str<M: Memory + ?Sized>(
    vm: &Vm<'_, M>,
    p: &ProtoInfo,
    idx: u32,
) -> Result<Option<String>, MemError> {
    let k = vm.lay.f.p_k.get(vm.m, p.addr)?;
    let r = vm.lay.gcref();
    let s = vm.gcref(k.wrapping_sub(r * (idx as u64 + 1)))?;
    if vm.head(s)?.2 != super::vm::gct::STR {
        return Ok(None);
    }
    Ok(Some(vm.string(s, 256)?))
}

/// A debug-info byte array (uvinfo, varinfo) read lazily in small chunks,
/// at most [`MAX_INFO`] bytes, ending early at unreadable memory.
struct Info<'v, 'm, M: Memory + ?Sized> {
    vm: &'v Vm<'m, M>,
    at: u64,
    buf: Vec<u8>,
    end: bool,
}

impl<'v, 'm, M: Memory + ?Sized> Info<'v, 'm, M> {
    fn new(vm: &'v Vm<'m, M>, at: u64) -> Self {
        Info {
            vm,
            at,
            buf: Vec::new(),
            end: false,
        }
    }

    fn get(&mut self, i: usize) -> Option<u8> {
        while i >= self.buf.len() {
            if self.end || self.buf.len() >= MAX_INFO {
                return None;
            }
            let a = self.at + self.buf.len() as u64;
            let mut chunk = [0u8; 64];
            if self.vm.m.read(a, &mut chunk).is_ok() {
                self.buf.extend_from_slice(&chunk);
            } else {
                // The tail of a mapping: byte by byte.
                match self.vm.m.u8(a) {
                    Ok(b) => self.buf.push(b),
                    Err(_) => self.end = true,
                }
            }
        }
        Some(self.buf[i])
    }

    /// The NUL-terminated string at `*i`; leaves `*i` past the NUL.
    fn cstr(&mut self, i: &mut usize) -> String {
        let start = *i;
        while let Some(c) = self.get(*i) {
            *i += 1;
            if c == 0 {
                return String::from_utf8_lossy(&self.buf[start..*i - 1]).into_owned();
            }
        }
        String::from_utf8_lossy(&self.buf[start.min(self.buf.len())..]).into_owned()
    }

    fn uleb(&mut self, i: &mut usize) -> Option<u32> {
        let mut v: u32 = 0;
        for shift in (0..35).step_by(7) {
            let c = self.get(*i)?;
            *i += 1;
            v |= ((c & 0x7f) as u32) << shift;
            if c < 0x80 {
                return Some(v);
            }
        }
        None
    }
}

/// `lj_debug_uvname`.
fn uv_name<M: Memory + ?Sized>(
    vm: &Vm<'_, M>,
    p: &ProtoInfo,
    idx: u32,
) -> Result<String, MemError> {
    let at = vm.lay.f.p_uvinfo.get(vm.m, p.addr)?;
    if at == 0 {
        return Ok(String::new());
    }
    let mut info = Info::new(vm, at);
    let mut i = 0;
    for _ in 0..idx {
        info.cstr(&mut i);
    }
    Ok(info.cstr(&mut i))
}

/// `debug_varname`: the local variable in `slot` at `pc`.
fn var_name<M: Memory + ?Sized>(
    vm: &Vm<'_, M>,
    p: &ProtoInfo,
    pc: u32,
    slot: u32,
) -> Result<Option<String>, MemError> {
    Ok(local_var(vm, p, pc, slot)?.map(|(n, _)| n))
}

/// `debug_varname` with the variable's scope start: the name of the
/// `slot`-th variable active at bytecode position `pc` and the position
/// where it became active (its `startpc`; lj_parse.c `var_add` sets it
/// right after the initialiser's code). None when the prototype has no
/// varinfo (stripped bytecode) or fewer active variables.
pub fn local_var<M: Memory + ?Sized>(
    vm: &Vm<'_, M>,
    p: &ProtoInfo,
    pc: u32,
    mut slot: u32,
) -> Result<Option<(String, u32)>, MemError> {
    let at = vm.lay.f.p_varinfo.get(vm.m, p.addr)?;
    if at == 0 {
        return Ok(None);
    }
    let mut info = Info::new(vm, at);
    let mut i = 0;
    let mut lastpc = 0u32;
    while let Some(vn) = info.get(i) {
        // Names are kept as positions; only the one returned is decoded.
        let name_at = i;
        if (vn as usize) <= VARNAMES.len() {
            if vn == 0 {
                break;
            }
            i += 1;
        } else {
            while info.get(i).is_some_and(|c| c != 0) {
                i += 1;
            }
            i += 1;
        }
        let Some(d) = info.uleb(&mut i) else { break };
        let startpc = lastpc.wrapping_add(d);
        lastpc = startpc;
        if startpc > pc {
            break;
        }
        let Some(len) = info.uleb(&mut i) else { break };
        let endpc = startpc.wrapping_add(len);
        if pc < endpc {
            if slot == 0 {
                let name = if (vn as usize) <= VARNAMES.len() {
                    VARNAMES[vn as usize - 1].to_string()
                } else {
                    let mut j = name_at;
                    info.cstr(&mut j)
                };
                return Ok(Some((name, startpc)));
            }
            slot -= 1;
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcode_table_matches_lj_bc_h() {
        assert_eq!(OPS.len(), 0x61, "LuaJIT 2.1 has 97 opcodes");
        assert_eq!(mode(BC_MOV), (A::Dst, ""));
        assert_eq!(mode(BC_KNIL), (A::Base, ""));
        assert_eq!(mode(BC_GGET), (A::Dst, "__index"));
        assert_eq!(mode(BC_TGETS), (A::Dst, "__index"));
        assert_eq!(mode(0x42), (A::Base, "call")); // CALL
        assert_eq!(mode(BC_ITERC), (A::Base, "call"));
        assert_eq!(mode(0x47).1, ""); // VARG
        assert_eq!(mode(0x26), (A::Dst, "__concat")); // CAT
        assert_eq!(mode(0x3f), (A::Base, "__newindex")); // TSETM
        assert_eq!(mode(0x60), (A::Other, "")); // FUNCCW
    }

    #[test]
    fn debug_info_bytes() {
        use crate::luajit::layout::Layout;
        use crate::target::HeapImage;
        let img = HeapImage::from_parts(vec![(0x1000, b"ab\0cd\0\x05\xe5\x8e\x26\x80".to_vec())]);
        let lay = Layout::builtins().remove(0);
        let vm = Vm::new(&img, &lay, 0, 0);
        let mut info = Info::new(&vm, 0x1000);
        let mut i = 0;
        assert_eq!(info.cstr(&mut i), "ab");
        assert_eq!(info.cstr(&mut i), "cd");
        assert_eq!(info.uleb(&mut i), Some(5));
        assert_eq!(info.uleb(&mut i), Some(624485));
        // Runs off the end of readable memory: no value, no panic.
        assert_eq!(info.uleb(&mut i), None);
        assert_eq!(info.get(100), None);
    }
}
