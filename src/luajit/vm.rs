//! A LuaJIT VM seen through [`Memory`]: typed access to `global_State`, GC
//! object headers, and the exact size of each object, i.e. what
//! `lj_gc.c`'s sweep hands back to the allocator when it frees it.

use std::cell::RefCell;

use super::layout::Layout;
use crate::target::{MemError, Memory, ReadExt, Window};

/// `gct` values (= ~itype), lj_obj.h.
pub mod gct {
    /// String.
    pub const STR: u8 = 4;
    /// Upvalue.
    pub const UPVAL: u8 = 5;
    /// Thread (coroutine).
    pub const THREAD: u8 = 6;
    /// Function prototype.
    pub const PROTO: u8 = 7;
    /// Function (Lua, C or fast function).
    pub const FUNC: u8 = 8;
    /// JIT trace.
    pub const TRACE: u8 = 9;
    /// FFI cdata.
    pub const CDATA: u8 = 10;
    /// Table.
    pub const TAB: u8 = 11;
    /// Userdata.
    pub const UDATA: u8 = 12;
}

/// Mark bits, lj_gc.h.
pub mod mark {
    /// Both white bits.
    pub const WHITES: u8 = 0x03;
    /// Never collected.
    pub const FIXED: u8 = 0x20;
    /// Never collected, not even at VM close (the main thread, lj_gc.h).
    pub const SFIXED: u8 = 0x40;
    /// cdata with a finalizer.
    pub const CDATA_FIN: u8 = 0x10;
    /// Variable-length or vector cdata (a GCcdataVar precedes it).
    pub const CDATA_VAR: u8 = 0x80;
}

/// Type names as stap++'s lj-gc-objs printed them, indexed by `gct - 4`.
pub const TYPE_NAMES: [&str; 9] = [
    "string", "upvalue", "thread", "proto", "function", "trace", "cdata", "table", "userdata",
];

/// Name of a gct value.
pub fn type_name(t: u8) -> &'static str {
    TYPE_NAMES
        .get((t as usize).wrapping_sub(4))
        .copied()
        .unwrap_or("unknown")
}

// Element sizes fixed by LuaJIT's own types on every build: TValue and
// IRIns are 8 bytes, SnapShot 12, SnapEntry 4, CTypeID1 2 (lj_obj.h, lj_jit.h,
// lj_ctype.h), and CTSIZE_PTR is 8 on x86_64.
pub(crate) const TVALUE: u64 = 8;
pub(crate) const IRINS: u64 = 8;
pub(crate) const SNAPSHOT: u64 = 12;
pub(crate) const SNAPENTRY: u64 = 4;
pub(crate) const CTYPEID1: u64 = 2;
const CTSIZE_PTR: u64 = 8;
/// Attribute kind of a CType (CT_ATTRIB), and the last kind with a size.
const CT_ATTRIB: u32 = 8;
const CT_HASSIZE: u32 = 5;
/// udtype of string.buffer objects (lj_obj.h UDTYPE_BUFFER) and the SBuf
/// flags that mean the buffer does not own its memory (lj_buf.h).
const UDTYPE_BUFFER: u64 = 3;
const SBUF_FLAG_COW: u64 = 2;
const SBUF_FLAG_BORROW: u64 = 4;

/// Bytes borrowed at once for an object header (covers `nextgc`, `marked`,
/// `gct` on every build) and for the fields that size an object (the largest
/// header read, GCtrace's, ends before 120 bytes).
const HEAD_WINDOW: usize = 16;
const OBJ_WINDOW: usize = 128;

/// A VM: a layout plus where its global state is.
pub struct Vm<'m, M: Memory + ?Sized> {
    /// Memory (live or copied).
    pub m: &'m M,
    /// Offsets.
    pub lay: &'m Layout,
    /// `global_State *`.
    pub g: u64,
    /// Main thread = start of GG_State.
    pub main: u64,
    ctsize: RefCell<Vec<u32>>,
}

/// Sentinel for "not yet computed" in the ctype size cache.
const UNKNOWN: u32 = u32::MAX;

impl<'m, M: Memory + ?Sized> Vm<'m, M> {
    /// A VM whose global state is at `g` and main thread at `main`.
    pub fn new(m: &'m M, lay: &'m Layout, g: u64, main: u64) -> Self {
        Vm {
            m,
            lay,
            g,
            main,
            ctsize: RefCell::new(Vec::new()),
        }
    }

    /// Read a GC reference stored at `addr`.
    #[inline]
    pub fn gcref(&self, addr: u64) -> Result<u64, MemError> {
        self.lay.ref_at(self.m, addr)
    }

    /// `g->gc.total`.
    pub fn gc_total(&self) -> Result<u64, MemError> {
        self.lay.f.g_total.get(self.m, self.g)
    }

    /// `g->gc.state`.
    pub fn gc_state(&self) -> Result<u64, MemError> {
        self.lay.f.g_state.get(self.m, self.g)
    }

    /// `g->vmstate` (negative: ~LJ_VMST_*, else the running trace number).
    pub fn vmstate(&self) -> Result<i32, MemError> {
        Ok(self.lay.f.g_vmstate.get(self.m, self.g)? as u32 as i32)
    }

    /// The `jit_State` (inside GG_State).
    pub fn jit_state(&self) -> u64 {
        self.main + self.lay.f.gg_j.off
    }

    /// `g->ctype_state` (0 when the FFI was never loaded).
    pub fn ctype_state(&self) -> Result<u64, MemError> {
        self.lay.f.g_ctype_state.get(self.m, self.g)
    }

    /// `o->nextgc`.
    #[inline]
    pub fn next(&self, o: u64) -> Result<u64, MemError> {
        self.gcref(o + self.lay.f.hdr_next.off)
    }

    /// Object header: (`marked`, `gct`).
    #[inline]
    pub fn header(&self, o: u64) -> Result<(u8, u8), MemError> {
        let (_, marked, t) = self.head(o)?;
        Ok((marked, t))
    }

    /// Header of object `o`: (`nextgc`, `marked`, `gct`), in one lookup.
    #[inline]
    pub fn head(&self, o: u64) -> Result<(u64, u8, u8), MemError> {
        match Window::new(self.m, o, HEAD_WINDOW) {
            Some(w) => self.head_in(&w, o),
            None => self.head_in(self.m, o),
        }
    }

    #[inline]
    fn head_in<N: Memory + ?Sized>(&self, m: &N, o: u64) -> Result<(u64, u8, u8), MemError> {
        let f = &self.lay.f;
        Ok((
            f.hdr_next.get(m, o)?,
            m.u8(o + f.hdr_marked.off)?,
            m.u8(o + f.hdr_gct.off)?,
        ))
    }

    /// Exact bytes the allocator holds for object `o` of type `t`, excluding
    /// a thread's open upvalues (those are objects of their own).
    #[inline]
    pub fn obj_size(&self, o: u64, t: u8, marked: u8) -> Result<u64, MemError> {
        match Window::new(self.m, o, OBJ_WINDOW) {
            Some(w) => self.obj_size_in(&w, o, t, marked),
            None => self.obj_size_in(self.m, o, t, marked),
        }
    }

    fn obj_size_in<N: Memory + ?Sized>(
        &self,
        m: &N,
        o: u64,
        t: u8,
        marked: u8,
    ) -> Result<u64, MemError> {
        let f = &self.lay.f;
        Ok(match t {
            // lj_str_size(len) = sizeof(GCstr) + ((len + 4) & ~3)
            gct::STR => f.s_size.off + ((f.s_len.get(m, o)? + 4) & !3),
            gct::UPVAL => f.uv_size.off,
            gct::THREAD => f.l_size.off + TVALUE * f.l_stacksize.get(m, o)?,
            gct::PROTO => f.p_sizept.get(m, o)?,
            gct::FUNC => {
                let n = f.f_nupvalues.get(m, o)?;
                if f.f_ffid.get(m, o)? == 0 {
                    // sizeLfunc(n): the GCRef uvptr[] array starts at uvptr.
                    f.fl_uvptr.off + self.lay.gcref() * n
                } else {
                    // sizeCfunc(n): TValue upvalue[] starts at upvalue.
                    f.fc_upvalue.off + TVALUE * n
                }
            }
            gct::TRACE => {
                let nins = f.tr_nins.get(m, o)?;
                let nk = f.tr_nk.get(m, o)?;
                ((f.tr_size.off + 7) & !7)
                    + IRINS * nins.wrapping_sub(nk) as u32 as u64
                    + SNAPSHOT * f.tr_nsnap.get(m, o)?
                    + SNAPENTRY * f.tr_nsnapmap.get(m, o)?
            }
            gct::CDATA => {
                if marked & mark::CDATA_VAR != 0 {
                    let v = o.wrapping_sub(f.cdv_size.off);
                    f.cdv_len.get(m, v)? + f.cdv_extra.get(m, v)?
                } else {
                    let id = f.cd_ctypeid.get(m, o)?;
                    f.cd_size.off + self.ctype_size(id)?
                }
            }
            gct::TAB => {
                let colo = f.t_colo.get(m, o)? as u8 as i8;
                let asize = f.t_asize.get(m, o)?;
                let hmask = f.t_hmask.get(m, o)?;
                let mut sz = f.t_size.off;
                if hmask > 0 {
                    sz += f.n_size.off * (hmask + 1);
                }
                if colo != 0 {
                    sz += TVALUE * (colo as u8 & 0x7f) as u64;
                }
                if asize > 0 && colo <= 0 {
                    sz += TVALUE * asize;
                }
                sz
            }
            gct::UDATA => {
                let len = f.u_len.get(m, o)?;
                let mut sz = f.u_size.off + len;
                if f.u_udtype.get(m, o)? == UDTYPE_BUFFER {
                    sz += self.sbuf_owned(o + f.u_size.off)?;
                }
                sz
            }
            _ => {
                return Err(MemError::Unmapped { addr: o, len: 0 });
            }
        })
    }

    /// Bytes a string.buffer at `sb` owns: `e - b` unless it is copy-on-write
    /// or borrowed (lj_buf.h, lj_udata_free).
    fn sbuf_owned(&self, sb: u64) -> Result<u64, MemError> {
        let f = &self.lay.f;
        let flags = f.sb_l.get(self.m, sb)? & 7;
        if flags & (SBUF_FLAG_COW | SBUF_FLAG_BORROW) != 0 {
            return Ok(0);
        }
        let e = f.sb_e.get(self.m, sb)?;
        let b = f.sb_b.get(self.m, sb)?;
        Ok(e.saturating_sub(b))
    }

    /// Address of CType `id` in the C type table, bounds-checked.
    pub fn ctype_addr(&self, id: u64) -> Result<u64, MemError> {
        let f = &self.lay.f;
        let cts = self.ctype_state()?;
        if cts == 0 {
            return Err(MemError::Unmapped { addr: 0, len: 0 });
        }
        let top = f.cts_top.get(self.m, cts)?;
        if id >= top {
            return Err(MemError::Unmapped { addr: id, len: 0 });
        }
        Ok(f.cts_tab.get(self.m, cts)? + id * f.ct_sizeof.off)
    }

    /// `(info, size)` of CType `id`.
    pub fn ctype(&self, id: u64) -> Result<(u32, u32), MemError> {
        let a = self.ctype_addr(id)?;
        let f = &self.lay.f;
        Ok((
            f.ct_info.get(self.m, a)? as u32,
            f.ct_size.get(self.m, a)? as u32,
        ))
    }

    /// Payload size of a fixed-size cdata of C type `id`: `ctype_raw` skips
    /// attributes; kinds up to CT_HASSIZE have a size, others are pointers
    /// (lj_cdata_free).
    pub fn ctype_size(&self, id: u64) -> Result<u64, MemError> {
        if let Some(&s) = self.ctsize.borrow().get(id as usize) {
            if s != UNKNOWN {
                return Ok(s as u64);
            }
        }
        let mut cur = id;
        let mut size = None;
        for _ in 0..32 {
            let (info, sz) = self.ctype(cur)?;
            let kind = info >> 28;
            if kind == CT_ATTRIB {
                cur = (info & 0xffff) as u64;
                continue;
            }
            size = Some(if kind <= CT_HASSIZE {
                sz as u64
            } else {
                CTSIZE_PTR
            });
            break;
        }
        let size = size.ok_or(MemError::Unmapped { addr: id, len: 0 })?;
        let mut c = self.ctsize.borrow_mut();
        if (id as usize) < 1 << 16 {
            if c.len() <= id as usize {
                c.resize(id as usize + 1, UNKNOWN);
            }
            c[id as usize] = size as u32;
        }
        Ok(size)
    }

    /// The Lua string at `s` (lossy UTF-8, at most `max` bytes).
    pub fn string(&self, s: u64, max: usize) -> Result<String, MemError> {
        let f = &self.lay.f;
        let len = (f.s_len.get(self.m, s)? as usize).min(max);
        let bytes = self.m.vec(s + f.s_size.off, len)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}
