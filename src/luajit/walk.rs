//! The heap walk: every GC object on every list LuaJIT keeps, plus the
//! fixed allocations `g->gc.total` also counts, so that the sum equals
//! `gc.total` to the byte.
//!
//! Lists (lj_gc.c): `g->gc.root` (all but strings), the string table chains,
//! the circular finalizer list `g->gc.mmudata`, and each thread's open
//! upvalues. Every loop is bounded and every pointer checked: a heap changing
//! under us gives a warning and partial counts, never a hang or a panic.

use super::vm::{gct, mark, Vm, CTYPEID1, IRINS, SNAPENTRY, SNAPSHOT};
use crate::target::{MemError, Memory};

/// Which list an object was found on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum List {
    /// `g->gc.root`.
    Root,
    /// A string table chain.
    Strings,
    /// `g->gc.mmudata` (pending finalizers).
    Finalizers,
    /// A thread's open upvalues.
    OpenUpvalues,
}

/// One object as the walk reports it.
#[derive(Debug, Clone, Copy)]
pub struct Obj {
    /// Address.
    pub addr: u64,
    /// Type tag.
    pub gct: u8,
    /// Mark bits.
    pub marked: u8,
    /// Exact allocation size.
    pub size: u64,
    /// Already dead, waiting for the sweep to free it.
    pub dead: bool,
    /// Which list.
    pub list: List,
}

/// Allocations that are not GC objects but are in `gc.total`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Overheads {
    /// `sizeof(GG_State) - sizeof(lua_State)`.
    pub global_state: u64,
    /// String hash table: one GCRef per bucket.
    pub string_table: u64,
    /// `g->tmpbuf`.
    pub tmpbuf: u64,
    /// IR, snapshot and trace arrays of the JIT.
    pub jit_state: u64,
    /// C type table, CTState and callback id table.
    pub ctype_state: u64,
    /// Light userdata segment map (64-bit builds).
    pub lightud_segments: u64,
}

impl Overheads {
    /// Sum of all.
    pub fn total(&self) -> u64 {
        self.global_state
            + self.string_table
            + self.tmpbuf
            + self.jit_state
            + self.ctype_state
            + self.lightud_segments
    }
}

/// Result of a walk besides the per-object callbacks.
#[derive(Debug, Clone, Default)]
pub struct WalkReport {
    /// Objects visited.
    pub objects: u64,
    /// Their bytes.
    pub object_bytes: u64,
    /// Fixed allocations.
    pub overheads: Overheads,
    /// Problems met (bad pointers, cut-off lists); empty on a clean heap.
    pub warnings: Vec<String>,
    /// Strings found vs `g->str.num`.
    pub strings_found: u64,
    /// `g->str.num`.
    pub strings_expected: u64,
}

impl WalkReport {
    /// `object_bytes + overheads`.
    pub fn total(&self) -> u64 {
        self.object_bytes + self.overheads.total()
    }
}

/// Limits for one walk.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most objects followed on any one list before it is declared cyclic.
    pub max_objects: u64,
}

/// Sweep progress, to tell dead-but-unswept objects (lj_gc.c gc_sweep keeps
/// an object iff it is fixed or lacks the other white).
struct Sweep {
    state: u64,
    otherwhite: u8,
    /// `g->gc.sweep`: address of the GCRef holding the next root-list object
    /// to sweep.
    cursor: u64,
    /// `g->gc.sweepstr`: next string bucket to sweep.
    strcursor: u64,
}

impl Sweep {
    fn dead(&self, marked: u8, unswept: bool) -> bool {
        unswept && marked & self.otherwhite != 0 && marked & mark::FIXED == 0
    }
}

const MAX_WARNINGS: usize = 20;

/// GC states in which objects wait to be swept (lj_obj.h GCSsweepstring,
/// GCSsweep).
const GCS_SWEEPSTRING: u64 = 3;
const GCS_SWEEP: u64 = 4;
/// lj_ccallback.c maps CALLBACK_MCODE_SIZE (LJ_PAGESIZE * LJ_NUM_CBPAGE).
const CALLBACK_MCODE_SIZE: u64 = 4096;
/// Every GC object is at least this aligned (lj_alloc.c MALLOC_ALIGNMENT is
/// 8 on 64-bit hosts; strings and all other objects come from it).
pub const OBJ_ALIGN: u64 = 8;

struct Walker<'v, 'm, M: Memory + ?Sized, V: FnMut(&Obj)> {
    vm: &'v Vm<'m, M>,
    lim: Limits,
    visit: V,
    rep: WalkReport,
    sweep: Sweep,
}

/// Walk every object of `vm`, calling `visit` for each, and account the
/// fixed allocations. Never panics on bad memory; see `WalkReport::warnings`.
pub fn walk<M: Memory + ?Sized>(
    vm: &Vm<'_, M>,
    lim: Limits,
    visit: impl FnMut(&Obj),
) -> WalkReport {
    let f = &vm.lay.f;
    let g = vm.g;
    let rd = |fld: super::layout::F| fld.get(vm.m, g).unwrap_or(0);
    let cw = rd(f.g_currentwhite) as u8;
    let sweep = Sweep {
        state: rd(f.g_state),
        otherwhite: (cw ^ mark::WHITES) & mark::WHITES,
        cursor: rd(f.g_sweep),
        strcursor: rd(f.g_sweepstr),
    };
    let mut w = Walker {
        vm,
        lim,
        visit,
        rep: WalkReport::default(),
        sweep,
    };
    w.root_list();
    w.strings();
    w.finalizers();
    w.overheads();
    if w.rep.strings_found != w.rep.strings_expected {
        let (found, expected) = (w.rep.strings_found, w.rep.strings_expected);
        w.warn(format!("found {found} strings, g->str.num says {expected}"));
    }
    w.rep
}

impl<M: Memory + ?Sized, V: FnMut(&Obj)> Walker<'_, '_, M, V> {
    fn warn(&mut self, msg: String) {
        if self.rep.warnings.len() < MAX_WARNINGS {
            self.rep.warnings.push(msg);
        } else if self.rep.warnings.len() == MAX_WARNINGS {
            self.rep.warnings.push("further warnings suppressed".into());
        }
    }

    /// Check an object pointer and read its header: (`nextgc`, `marked`, `gct`).
    fn header(&mut self, o: u64, list: List) -> Option<(u64, u8, u8)> {
        if o % OBJ_ALIGN != 0 {
            self.warn(format!(
                "{list:?} list: misaligned object pointer {o:#x}; list cut short"
            ));
            return None;
        }
        match self.vm.head(o) {
            Ok((next, marked, t)) if (gct::STR..=gct::UDATA).contains(&t) => {
                Some((next, marked, t))
            }
            Ok((_, _, t)) => {
                self.warn(format!(
                    "{list:?} list: object {o:#x} has bad type tag {t}; list cut short"
                ));
                None
            }
            Err(e) => {
                self.warn(format!("{list:?} list: {e}; list cut short"));
                None
            }
        }
    }

    fn emit(&mut self, o: u64, t: u8, marked: u8, list: List, unswept: bool) -> bool {
        match self.vm.obj_size(o, t, marked) {
            Ok(size) => {
                let obj = Obj {
                    addr: o,
                    gct: t,
                    marked,
                    size,
                    dead: self.sweep.dead(marked, unswept),
                    list,
                };
                self.rep.objects += 1;
                self.rep.object_bytes += size;
                (self.visit)(&obj);
                true
            }
            Err(e) => {
                self.warn(format!(
                    "{list:?} list: size of {} at {o:#x}: {e}",
                    super::vm::type_name(t)
                ));
                false
            }
        }
    }

    fn root_list(&mut self) {
        let f = &self.vm.lay.f;
        let mut link = self.vm.g + f.g_root.off;
        // Before the sweep cursor everything has been swept already; in the
        // sweep-string state the root list has not been touched yet.
        let in_sweep = self.sweep.state == GCS_SWEEPSTRING || self.sweep.state == GCS_SWEEP;
        let mut unswept = self.sweep.state == GCS_SWEEPSTRING;
        let mut o = match self.vm.gcref(link) {
            Ok(o) => o,
            Err(e) => return self.warn(format!("g->gc.root: {e}")),
        };
        let mut n = 0u64;
        while o != 0 {
            n += 1;
            if n > self.lim.max_objects {
                return self
                    .warn("root list longer than the heap can hold: cycle? cut short".into());
            }
            if in_sweep && link == self.sweep.cursor {
                unswept = true;
            }
            let Some((next, marked, t)) = self.header(o, List::Root) else {
                return;
            };
            self.vm.m.prefetch(next);
            if !self.emit(o, t, marked, List::Root, unswept) {
                return;
            }
            if t == gct::THREAD {
                self.open_upvalues(o, unswept);
            }
            link = o + f.hdr_next.off;
            o = next;
        }
    }

    fn open_upvalues(&mut self, th: u64, unswept: bool) {
        let mut o = match self.vm.gcref(th + self.vm.lay.f.l_openupval.off) {
            Ok(o) => o,
            Err(e) => return self.warn(format!("thread {th:#x} openupval: {e}")),
        };
        let mut n = 0u64;
        while o != 0 {
            n += 1;
            if n > self.lim.max_objects {
                return self.warn(format!(
                    "thread {th:#x}: open upvalue chain cyclic; cut short"
                ));
            }
            let Some((next, marked, t)) = self.header(o, List::OpenUpvalues) else {
                return;
            };
            self.vm.m.prefetch(next);
            if t != gct::UPVAL {
                return self.warn(format!(
                    "thread {th:#x}: non-upvalue {o:#x} on open upvalue chain"
                ));
            }
            if !self.emit(o, t, marked, List::OpenUpvalues, unswept) {
                return;
            }
            o = next;
        }
    }

    fn strings(&mut self) {
        let f = &self.vm.lay.f;
        let g = self.vm.g;
        let m = self.vm.m;
        let (tab, mask, num) = match (|| -> Result<_, MemError> {
            Ok((
                f.g_str_tab.get(m, g)?,
                f.g_str_mask.get(m, g)?,
                f.g_str_num.get(m, g)?,
            ))
        })() {
            Ok(x) => x,
            Err(e) => return self.warn(format!("g->str: {e}")),
        };
        self.rep.strings_expected = num;
        let gcref = self.vm.lay.gcref();
        let mut left = self.lim.max_objects;
        for i in 0..=mask.min(1 << 28) {
            // Bit 0 of a bucket head marks a chain that switched to the
            // secondary hash (lj_str.c); links inside a chain are clean.
            let mut o = match self.vm.gcref(tab + i * gcref) {
                Ok(x) => x & !1,
                Err(e) => return self.warn(format!("string bucket {i}: {e}")),
            };
            // Chains are short: the next miss is the next bucket's head.
            if let Ok(ahead) = self.vm.gcref(tab + (i + 2) * gcref) {
                self.vm.m.prefetch(ahead & !1);
            }
            let unswept = self.sweep.state == GCS_SWEEPSTRING && i >= self.sweep.strcursor;
            while o != 0 {
                if left == 0 {
                    return self
                        .warn("string chains longer than the heap can hold; cut short".into());
                }
                left -= 1;
                let Some((next, marked, t)) = self.header(o, List::Strings) else {
                    break;
                };
                self.vm.m.prefetch(next);
                if t != gct::STR {
                    self.warn(format!("string bucket {i}: non-string {o:#x}"));
                    break;
                }
                if !self.emit(o, t, marked, List::Strings, unswept) {
                    break;
                }
                self.rep.strings_found += 1;
                o = next;
            }
        }
    }

    fn finalizers(&mut self) {
        let anchor = match self.vm.gcref(self.vm.g + self.vm.lay.f.g_mmudata.off) {
            Ok(a) => a,
            Err(e) => return self.warn(format!("g->gc.mmudata: {e}")),
        };
        if anchor == 0 {
            return;
        }
        // Circular; the anchor is the last element (lj_gc.c gc_finalize).
        let mut o = match self.vm.next(anchor) {
            Ok(x) => x,
            Err(e) => return self.warn(format!("mmudata: {e}")),
        };
        let mut n = 0u64;
        loop {
            n += 1;
            if n > self.lim.max_objects || o == 0 {
                return self.warn("finalizer list broken or not circular; cut short".into());
            }
            let Some((next, marked, t)) = self.header(o, List::Finalizers) else {
                return;
            };
            self.vm.m.prefetch(next);
            if !self.emit(o, t, marked, List::Finalizers, false) {
                return;
            }
            if o == anchor {
                return;
            }
            o = next;
        }
    }

    fn overheads(&mut self) {
        match overheads(self.vm) {
            Ok(o) => self.rep.overheads = o,
            Err(e) => self.warn(format!("fixed allocations: {e}")),
        }
    }
}

/// Allocations counted in `gc.total` that are not GC objects (lj_state.c,
/// lj_str.c, lj_buf.c, lj_trace.c, lj_ctype.c, lj_ccallback.c, lj_udata.c).
pub fn overheads<M: Memory + ?Sized>(vm: &Vm<'_, M>) -> Result<Overheads, MemError> {
    let f = &vm.lay.f;
    let (m, g) = (vm.m, vm.g);
    let mut o = Overheads {
        global_state: f.gg_size.off - f.l_size.off,
        string_table: vm.lay.gcref() * (f.g_str_mask.get(m, g)? + 1),
        tmpbuf: f
            .g_tmpbuf_e
            .get(m, g)?
            .saturating_sub(f.g_tmpbuf_b.get(m, g)?),
        ..Default::default()
    };
    let j = vm.jit_state();
    let ir = f
        .j_irtoplim
        .get(m, j)?
        .wrapping_sub(f.j_irbotlim.get(m, j)?) as u32 as u64;
    o.jit_state = SNAPENTRY * f.j_sizesnapmap.get(m, j)?
        + SNAPSHOT * f.j_sizesnap.get(m, j)?
        + IRINS * ir
        + vm.lay.gcref() * f.j_sizetrace.get(m, j)?;
    let cts = vm.ctype_state()?;
    if cts != 0 {
        o.ctype_state = f.ct_sizeof.off * f.cts_sizetab.get(m, cts)?
            + f.cts_size.off
            + CTYPEID1 * f.cts_cb_sizeid.get(m, cts)?;
    }
    if f.g_lightudseg.get(m, g)? != 0 {
        // The segment map doubles from 2 entries (lj_udata.c lj_lightud_intern).
        let n = f.g_lightudnum.get(m, g)? as u32;
        let entries = if n == 0 {
            2
        } else {
            2u64 << (31 - n.leading_zeros())
        };
        o.lightud_segments = 4 * entries;
    }
    Ok(o)
}

/// Machine-code sizes (mmapped, not in gc.total): (JIT area, callbacks).
pub fn mcode_sizes<M: Memory + ?Sized>(vm: &Vm<'_, M>) -> (u64, u64) {
    let f = &vm.lay.f;
    let jit = f.j_szallmcarea.get(vm.m, vm.jit_state()).unwrap_or(0);
    // lj_ccallback.c maps CALLBACK_MCODE_SIZE (one page) on first use.
    let cb = match vm.ctype_state() {
        Ok(cts) if cts != 0 => match f.cts_cb_mcode.get(vm.m, cts) {
            Ok(p) if p != 0 => CALLBACK_MCODE_SIZE,
            _ => 0,
        },
        _ => 0,
    };
    (jit, cb)
}
