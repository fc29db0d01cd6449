//! What each GC object references, as the mark phase of `lj_gc.c` sees it:
//! the roots (`gc_mark_start`, `atomic`) and the per-type traversals
//! (`gc_traverse_tab`, `_func`, `_proto`, `_thread`, `_trace`, and `gc_mark`
//! for userdata and upvalues). Weak table sides are left out, exactly where
//! the collector would not mark them.
//!
//! Each reference comes with a [`Label`], a small `Copy` value saying where
//! in the object it was found; [`Refs::name`] turns a label into the text a
//! Lua programmer reads (`._LOADED`, `["a.b"]`, `[3]`, `upvalue cache`) and
//! is meant to be called only for the few edges a report prints.
//!
//! LuaJIT has no ephemerons: a weak-keyed table marks its values strongly
//! during a cycle, and `gc_clearweak` clears an entry at the end of the
//! cycle once its key was not marked. A value under a collectable,
//! non-string key of a weak-keyed table is therefore reported apart, as
//! [`Label::WeakKeyVal`]: whether it survives the next cycle depends on
//! its key, which only the whole graph can tell
//! ([`crate::analysis::graph`] decides).
//!
//! Not modelled: GC constants inside trace IR (`IR_KGC`), string.buffer
//! dictionaries, and the trace being recorded (`J->cur`); heaps are copied
//! at a quiescent point, where no trace is being recorded.

use std::collections::HashMap;

use super::vm::{gct, Vm, TVALUE};
use crate::target::{for_each_elem, MemError, Memory, ReadExt};

/// Where a reference was found. Indexes are element numbers, not bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    /// `g->registrytv`.
    Registry,
    /// The main thread.
    MainThread,
    /// The main thread's environment (the globals table).
    MainEnv,
    /// `g->gcroot[i]` (metamethod names, base metatables, io handles).
    GcRoot(u16),
    /// `g->cur_L`.
    CurrentThread,
    /// The FFI finalizer table (`cts->finalizer`).
    FfiFinalizer,
    /// An object on `g->gc.mmudata` (its finalizer has not run yet).
    PendingFinalizer,
    /// A fixed object, never collected (lj_gc.h LJ_GC_FIXED: reserved words,
    /// metamethod names, C type keywords).
    Fixed,
    /// Table array slot.
    Array(u32),
    /// Value of hash node `i`.
    HashVal(u32),
    /// Value of hash node `i` of a weak-keyed table whose key is a
    /// collectable object other than a string: the entry lives only as
    /// long as its key (lj_gc.c gc_clearweak).
    WeakKeyVal(u32),
    /// From a key to the value it keeps alive in a weak-keyed table (an
    /// edge the object graph adds; the key object does not hold it).
    KeyOf,
    /// Key of hash node `i`.
    HashKey(u32),
    /// Table or userdata metatable.
    Metatable,
    /// Function, thread or userdata environment.
    Env,
    /// A Lua function's prototype.
    Proto,
    /// Lua function upvalue `i` (the GCupval object).
    Upvalue(u16),
    /// C function upvalue `i` (a TValue inside the function).
    CUpvalue(u16),
    /// The value an upvalue object holds.
    UpvalValue,
    /// An open upvalue of a thread.
    OpenUpvalue,
    /// Prototype GC constant `i` (`proto_kgc(pt, -1-i)`).
    Const(u32),
    /// Prototype chunk name.
    ChunkName,
    /// The first root trace of a prototype.
    Trace,
    /// Thread stack slot `i` (from the bottom of the stack).
    Stack(u32),
    /// The function of the frame at stack slot `i` (non-GC64 frames hide it).
    Frame(u32),
    /// A trace's start prototype.
    StartPt,
    /// A trace's link, next root or next side trace.
    TraceLink,
}

/// A decoded TValue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tv {
    /// nil.
    Nil,
    /// A boolean.
    Bool(bool),
    /// Light userdata (its raw pointer bits).
    LightUd(u64),
    /// A number.
    Num(f64),
    /// A GC object: type tag and address.
    Gc(u8, u64),
}

/// `__mode` bits (lj_gc.h LJ_GC_WEAKKEY / LJ_GC_WEAKVAL).
pub mod weak {
    /// Keys are weak.
    pub const KEY: u8 = 1;
    /// Values are weak.
    pub const VAL: u8 = 2;
}

/// Decode the 8 bytes of a TValue. GC64: the tag is the arithmetic shift
/// `(int64)v >> 47` (~itype) and the pointer the low 47 bits; otherwise
/// the tag is the high word and the pointer the low word (lj_obj.h).
#[inline]
pub fn decode_tv(raw: u64, gc64: bool) -> Tv {
    let (tag, ptr) = if gc64 {
        (((raw as i64) >> 47) as u32, raw & ((1 << 47) - 1))
    } else {
        ((raw >> 32) as u32, raw & 0xffff_ffff)
    };
    // Tags below LJ_TISNUM (~13) are the high word of a double.
    if tag < !13u32 {
        return Tv::Num(f64::from_bits(raw));
    }
    match !tag as u8 {
        0 => Tv::Nil,
        1 => Tv::Bool(false),
        2 => Tv::Bool(true),
        3 => Tv::LightUd(ptr),
        t @ gct::STR..=gct::UDATA => Tv::Gc(t, ptr),
        _ => Tv::Num(f64::from_bits(raw)),
    }
}

/// Most slots, nodes or constants read from one object: a bound against
/// corrupt sizes (LuaJIT caps tables at 2^27 array slots and nodes).
const MAX_ELEMS: u64 = 1 << 28;
/// Most links followed on an open upvalue chain or a frame chain.
const MAX_CHAIN: u64 = 1 << 20;
/// Frame type bits in a non-GC64 frame link (lj_frame.h FRAME_TYPE,
/// FRAME_TYPEP, FRAME_LUA).
const FRAME_TYPE: u64 = 3;
const FRAME_TYPEP: u64 = 7;
const FRAME_LUA: u64 = 0;

/// Reference enumerator over one VM. Caches the weak mode of metatables.
pub struct Refs<'v, 'm, M: Memory + ?Sized> {
    vm: &'v Vm<'m, M>,
    gc64: bool,
    gcref: u64,
    modes: HashMap<u64, u8>,
}

impl<'v, 'm, M: Memory + ?Sized> Refs<'v, 'm, M> {
    /// An enumerator for `vm`.
    pub fn new(vm: &'v Vm<'m, M>) -> Self {
        Refs {
            vm,
            gc64: vm.lay.gc64,
            gcref: vm.lay.gcref(),
            modes: HashMap::new(),
        }
    }

    /// The VM.
    pub fn vm(&self) -> &'v Vm<'m, M> {
        self.vm
    }

    #[inline]
    fn tv(&self, addr: u64) -> Result<Tv, MemError> {
        Ok(decode_tv(self.vm.m.u64(addr)?, self.gc64))
    }

    #[inline]
    fn emit_tv(
        &self,
        addr: u64,
        label: Label,
        f: &mut impl FnMut(Label, u64),
    ) -> Result<(), MemError> {
        if let Tv::Gc(_, p) = self.tv(addr)? {
            f(label, p);
        }
        Ok(())
    }

    #[inline]
    fn emit_ref(
        &self,
        addr: u64,
        label: Label,
        f: &mut impl FnMut(Label, u64),
    ) -> Result<(), MemError> {
        let p = self.vm.gcref(addr)?;
        if p != 0 {
            f(label, p);
        }
        Ok(())
    }

    /// The GC roots, as `gc_mark_start` and `atomic` mark them (pending
    /// finalizers come from the heap walk, not from here).
    pub fn roots(&self, mut f: impl FnMut(Label, u64)) -> Result<(), MemError> {
        let fl = &self.vm.lay.f;
        let g = self.vm.g;
        f(Label::MainThread, self.vm.main);
        self.emit_ref(self.vm.main + fl.l_env.off, Label::MainEnv, &mut f)?;
        self.emit_tv(g + fl.g_registrytv.off, Label::Registry, &mut f)?;
        let n = fl.g_gcroot.size / self.gcref;
        for i in 0..n.min(256) {
            self.emit_ref(
                g + fl.g_gcroot.off + i * self.gcref,
                Label::GcRoot(i as u16),
                &mut f,
            )?;
        }
        self.emit_ref(g + fl.g_cur_l.off, Label::CurrentThread, &mut f)?;
        let cts = self.vm.ctype_state()?;
        if cts != 0 {
            self.emit_ref(cts + fl.cts_finalizer.off, Label::FfiFinalizer, &mut f)?;
        }
        Ok(())
    }

    /// Weak mode of a table whose metatable is `mt`: the `__mode` string's
    /// `k` and `v` letters (lj_gc.c gc_traverse_tab reads it with
    /// lj_meta_fastg, i.e. a plain string-key lookup in `mt`).
    pub fn weak_mode(&mut self, mt: u64) -> u8 {
        if mt == 0 {
            return 0;
        }
        if let Some(&m) = self.modes.get(&mt) {
            return m;
        }
        let m = self.lookup_mode(mt).unwrap_or(0);
        self.modes.insert(mt, m);
        m
    }

    fn lookup_mode(&self, mt: u64) -> Result<u8, MemError> {
        let Some(Tv::Gc(gct::STR, s)) = self.get_str(mt, b"__mode")? else {
            return Ok(0);
        };
        let mut mode = 0;
        for c in self.str_bytes(s, 64)? {
            match c {
                b'k' => mode |= weak::KEY,
                b'v' => mode |= weak::VAL,
                _ => {}
            }
        }
        Ok(mode)
    }

    /// `t[key]` for a string key, looked up by content in the hash part.
    pub fn get_str(&self, t: u64, key: &[u8]) -> Result<Option<Tv>, MemError> {
        let fl = &self.vm.lay.f;
        let m = self.vm.m;
        let hmask = fl.t_hmask.get(m, t)?;
        if hmask == 0 && fl.t_node.get(m, t)? == 0 {
            return Ok(None);
        }
        let node = fl.t_node.get(m, t)?;
        for i in 0..=hmask.min(MAX_ELEMS) {
            let n = node + i * fl.n_size.off;
            if let Tv::Gc(gct::STR, k) = self.tv(n + fl.n_key.off)? {
                if fl.s_len.get(m, k)? == key.len() as u64 && self.str_bytes(k, key.len())? == key {
                    return Ok(Some(self.tv(n + fl.n_val.off)?));
                }
            }
        }
        Ok(None)
    }

    /// The key of hash node `i` of table `t`.
    pub fn node_key(&self, t: u64, i: u32) -> Result<Tv, MemError> {
        let fl = &self.vm.lay.f;
        let node = fl.t_node.get(self.vm.m, t)?;
        self.tv(node + u64::from(i) * fl.n_size.off + fl.n_key.off)
    }

    /// Up to `max` bytes of the string at `s`.
    pub fn str_bytes(&self, s: u64, max: usize) -> Result<Vec<u8>, MemError> {
        let fl = &self.vm.lay.f;
        let len = (fl.s_len.get(self.vm.m, s)? as usize).min(max);
        self.vm.m.vec(s + fl.s_size.off, len)
    }

    /// Every strong reference of object `o` of type `t`, in a fixed order.
    pub fn refs(&mut self, o: u64, t: u8, f: &mut impl FnMut(Label, u64)) -> Result<(), MemError> {
        match t {
            gct::TAB => self.table(o, false, f),
            gct::FUNC => self.func(o, f),
            gct::UPVAL => {
                let v = self.vm.gcref(o + self.vm.lay.f.uv_v.off)?;
                self.emit_tv(v, Label::UpvalValue, f)
            }
            gct::PROTO => self.proto(o, f),
            gct::THREAD => self.thread(o, f),
            gct::TRACE => self.trace(o, f),
            gct::UDATA => {
                let fl = &self.vm.lay.f;
                self.emit_ref(o + fl.u_metatable.off, Label::Metatable, f)?;
                self.emit_ref(o + fl.u_env.off, Label::Env, f)
            }
            _ => Ok(()),
        }
    }

    /// The references of table `o` that the GC does not follow (the weak
    /// side of a weak table, strings excepted): what [`Refs::refs`] leaves
    /// out. Heap snapshots show them as weak edges.
    pub fn weak_refs(&mut self, o: u64, f: &mut impl FnMut(Label, u64)) -> Result<(), MemError> {
        self.table(o, true, f)
    }

    /// Strong references of table `o`, or (`weak_only`) only its weak ones.
    fn table(
        &mut self,
        o: u64,
        weak_only: bool,
        f: &mut impl FnMut(Label, u64),
    ) -> Result<(), MemError> {
        let fl = &self.vm.lay.f;
        let m = self.vm.m;
        let mt = self.vm.gcref(o + fl.t_metatable.off)?;
        if mt != 0 && !weak_only {
            f(Label::Metatable, mt);
        }
        // A weak side still holds strings: lj_gc.c gc_mayclear marks them,
        // strings cannot be weak references.
        let mode = self.weak_mode(mt);
        if weak_only && mode == 0 {
            return Ok(());
        }
        let keep = |weak: bool, t: u8| (!weak || t == gct::STR) != weak_only;
        let asize = fl.t_asize.get(m, o)?.min(MAX_ELEMS);
        if asize > 0 {
            let arr = self.vm.gcref(o + fl.t_array.off)?;
            let wv = mode & weak::VAL != 0;
            self.tvalues(arr, asize, 0, Label::Array, &mut |l, t, p| {
                if keep(wv, t) {
                    f(l, p)
                }
            })?;
        }
        let hmask = fl.t_hmask.get(m, o)?.min(MAX_ELEMS);
        let node = fl.t_node.get(m, o)?;
        if hmask == 0 && node == 0 {
            return Ok(());
        }
        let nsz = fl.n_size.off;
        let (ko, vo) = (fl.n_key.off as usize, fl.n_val.off as usize);
        let (wk, wv) = (mode & weak::KEY != 0, mode & weak::VAL != 0);
        for_each_elem(m, node, hmask + 1, nsz as usize, |i, n| {
            let val = decode_tv(le64(&n[vo..]), self.gc64);
            if val == Tv::Nil {
                return;
            }
            let key = decode_tv(le64(&n[ko..]), self.gc64);
            if let Tv::Gc(t, p) = key {
                if keep(wk, t) {
                    f(Label::HashKey(i as u32), p);
                }
            }
            if let Tv::Gc(t, p) = val {
                if keep(wv, t) {
                    // gc_mayclear: only a collectable, non-string key can
                    // make the entry go away.
                    let weak_key = wk && matches!(key, Tv::Gc(kt, _) if kt != gct::STR);
                    f(
                        if weak_key {
                            Label::WeakKeyVal(i as u32)
                        } else {
                            Label::HashVal(i as u32)
                        },
                        p,
                    );
                }
            }
        })?;
        Ok(())
    }

    /// `n` TValues at `at`, labelled from index `first` on.
    fn tvalues(
        &self,
        at: u64,
        n: u64,
        first: u32,
        label: fn(u32) -> Label,
        f: &mut impl FnMut(Label, u8, u64),
    ) -> Result<(), MemError> {
        for_each_elem(self.vm.m, at, n, TVALUE as usize, |i, c| {
            if let Tv::Gc(t, p) = decode_tv(le64(c), self.gc64) {
                f(label(first + i as u32), t, p);
            }
        })
    }

    fn func(&self, o: u64, f: &mut impl FnMut(Label, u64)) -> Result<(), MemError> {
        let fl = &self.vm.lay.f;
        let m = self.vm.m;
        self.emit_ref(o + fl.f_env.off, Label::Env, f)?;
        let n = fl.f_nupvalues.get(m, o)?;
        if fl.f_ffid.get(m, o)? == 0 {
            f(Label::Proto, self.proto_of(o)?);
            for i in 0..n {
                self.emit_ref(
                    o + fl.fl_uvptr.off + i * self.gcref,
                    Label::Upvalue(i as u16),
                    f,
                )?;
            }
        } else {
            for i in 0..n {
                self.emit_tv(
                    o + fl.fc_upvalue.off + i * TVALUE,
                    Label::CUpvalue(i as u16),
                    f,
                )?;
            }
        }
        Ok(())
    }

    /// The prototype of Lua function `fn`: `funcproto(fn)`, the bytecode
    /// follows the GCproto header.
    pub fn proto_of(&self, func: u64) -> Result<u64, MemError> {
        let fl = &self.vm.lay.f;
        Ok(self
            .vm
            .gcref(func + fl.f_pc.off)?
            .wrapping_sub(fl.p_size.off))
    }

    fn proto(&self, o: u64, f: &mut impl FnMut(Label, u64)) -> Result<(), MemError> {
        let fl = &self.vm.lay.f;
        let m = self.vm.m;
        self.emit_ref(o + fl.p_chunkname.off, Label::ChunkName, f)?;
        let k = self.vm.gcref(o + fl.p_k.off)?;
        let n = fl.p_sizekgc.get(m, o)?.min(MAX_ELEMS);
        for i in 0..n {
            // GC constants sit below pt->k (lj_obj.h proto_kgc).
            self.emit_ref(
                k.wrapping_sub((i + 1) * self.gcref),
                Label::Const(i as u32),
                f,
            )?;
        }
        let tr = fl.p_trace.get(m, o)?;
        if let Some(t) = self.trace_ref(tr)? {
            f(Label::Trace, t);
        }
        Ok(())
    }

    /// `traceref(J, n)`, or None for trace 0 or a number out of range.
    fn trace_ref(&self, n: u64) -> Result<Option<u64>, MemError> {
        if n == 0 {
            return Ok(None);
        }
        let fl = &self.vm.lay.f;
        let j = self.vm.jit_state();
        if n >= fl.j_sizetrace.get(self.vm.m, j)? {
            return Ok(None);
        }
        let arr = self.vm.gcref(j + fl.j_trace.off)?;
        let t = self.vm.gcref(arr + n * self.gcref)?;
        Ok((t != 0).then_some(t))
    }

    fn trace(&self, o: u64, f: &mut impl FnMut(Label, u64)) -> Result<(), MemError> {
        let fl = &self.vm.lay.f;
        let m = self.vm.m;
        if fl.tr_traceno.get(m, o)? == 0 {
            return Ok(());
        }
        for link in [fl.tr_link, fl.tr_nextroot, fl.tr_nextside] {
            if let Some(t) = self.trace_ref(link.get(m, o)?)? {
                f(Label::TraceLink, t);
            }
        }
        self.emit_ref(o + fl.tr_startpt.off, Label::StartPt, f)
    }

    fn thread(&self, o: u64, f: &mut impl FnMut(Label, u64)) -> Result<(), MemError> {
        let fl = &self.vm.lay.f;
        let m = self.vm.m;
        let stack = self.vm.gcref(o + fl.l_stack.off)?;
        let top = self.vm.gcref(o + fl.l_top.off)?;
        let size = fl.l_stacksize.get(m, o)?;
        let fr2 = u64::from(self.gc64);
        // lj_gc.c gc_traverse_thread: stack+1+LJ_FR2 .. top.
        let first = 1 + fr2;
        if top >= stack && (top - stack) / TVALUE <= size {
            let n = (top - stack) / TVALUE;
            if n > first {
                self.tvalues(
                    stack + first * TVALUE,
                    n - first,
                    first as u32,
                    Label::Stack,
                    &mut |l, _, p| f(l, p),
                )?;
            }
            if !self.gc64 {
                self.frames(o, stack, top, f)?;
            }
        }
        // No edges to the open upvalues: lj_gc.c gc_traverse_thread does not
        // mark openupval; closures keep them alive, and the thread's sweep
        // frees the ones no closure holds.
        self.emit_ref(o + fl.l_env.off, Label::Env, f)
    }

    /// Non-GC64 frames keep their function in the low word of the frame
    /// link slot, which is not a valid TValue: lj_gc.c gc_traverse_frames
    /// marks them explicitly.
    fn frames(
        &self,
        th: u64,
        stack: u64,
        top: u64,
        f: &mut impl FnMut(Label, u64),
    ) -> Result<(), MemError> {
        let m = self.vm.m;
        let base = self.vm.gcref(th + self.vm.lay.f.l_base.off)?;
        let mut frame = base.wrapping_sub(TVALUE);
        let mut n = 0;
        while frame > stack && frame < top && n < MAX_CHAIN {
            let func = m.u32(frame)? as u64;
            let ftsz = m.u32(frame + 4)? as u64;
            if func != 0 {
                f(Label::Frame(((frame - stack) / TVALUE) as u32), func);
            }
            let delta = if ftsz & FRAME_TYPE == FRAME_LUA {
                // frame_prevl: the A operand of the call instruction before
                // the return PC says how many slots the caller's frame had.
                let a = m.u8(ftsz.wrapping_sub(4) + 1)? as u64;
                (1 + a) * TVALUE
            } else {
                ftsz & !FRAME_TYPEP
            };
            if delta == 0 {
                break;
            }
            frame = frame.wrapping_sub(delta);
            n += 1;
        }
        Ok(())
    }
}

#[inline]
fn le64(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_le_bytes(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_gc64_and_32bit_tvalues() {
        let tab = 0x7f12_3456_7890u64;
        let raw = tab | ((!(gct::TAB as u64) & 0x1ffff) << 47);
        assert_eq!(decode_tv(raw, true), Tv::Gc(gct::TAB, tab));
        assert_eq!(decode_tv(u64::MAX, true), Tv::Nil);
        assert_eq!(decode_tv(3.5f64.to_bits(), true), Tv::Num(3.5));
        let raw32 = ((!(gct::STR as u32) as u64) << 32) | 0x1234_5678;
        assert_eq!(decode_tv(raw32, false), Tv::Gc(gct::STR, 0x1234_5678));
        assert_eq!(decode_tv(((!2u32) as u64) << 32, false), Tv::Bool(true));
        assert_eq!(decode_tv(2.0f64.to_bits(), false), Tv::Num(2.0));
    }
}
