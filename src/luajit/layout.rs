//! The offsets and sizes the walker needs, composed from a [`FieldMap`], and
//! the choice of layout for a live VM: from DWARF when the binary has it
//! (cross-checked against the tables), otherwise by validating invariants of
//! each built-in table against the VM's memory.

use super::fields::{Builtin, FieldMap, Variant, BUILTINS};
use super::vm::gct;
use crate::target::{MemError, Memory, ReadExt};

/// One struct member: offset from the start of its object and byte width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct F {
    /// Offset.
    pub off: u64,
    /// Width in bytes (1, 2, 4 or 8).
    pub size: u64,
}

impl F {
    /// Read this field of the object at `base` as an unsigned integer.
    #[inline]
    pub fn get<M: Memory + ?Sized>(self, m: &M, base: u64) -> Result<u64, MemError> {
        m.uint(base.wrapping_add(self.off), self.size)
    }
}

/// Where a layout came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayoutSource {
    /// DWARF of this file.
    Dwarf(String),
    /// A built-in table, chosen by validating invariants.
    Table,
    /// A built-in table named by the user.
    Forced,
}

impl LayoutSource {
    /// Short name for reports (`dwarf`, `table`, `forced`).
    pub fn kind(&self) -> &'static str {
        match self {
            LayoutSource::Dwarf(_) => "dwarf",
            LayoutSource::Table => "table",
            LayoutSource::Forced => "forced",
        }
    }
}

macro_rules! layout_struct {
    ($( $(#[$doc:meta])* $name:ident = $key:literal ),* $(,)?) => {
        /// Member offsets of one LuaJIT build. Offsets in `global_State`,
        /// `jit_State` and `CTState` are from the start of that struct, even
        /// for members of nested structs (`g.gc.total` is `g_total`).
        #[derive(Debug, Clone, PartialEq, Eq)]
        #[allow(missing_docs)]
        pub struct Fields {
            $( $(#[$doc])* pub $name: F, )*
        }

        impl Fields {
            fn from_map(fm: &FieldMap, missing: &mut Vec<String>) -> Fields {
                Fields { $( $name: lookup(fm, $key, missing), )* }
            }

            /// Names of members that differ between two layouts.
            pub fn diff(&self, other: &Fields) -> Vec<&'static str> {
                let mut v = Vec::new();
                $( if self.$name != other.$name { v.push(stringify!($name)); } )*
                v
            }
        }
    };
}

/// Resolve `A.b` or a nested path `A.b+B.c` (offsets add up; the size is the
/// last member's), or `A.SIZEOF`.
/// A key starting with `?` is optional: when absent it resolves to
/// `F::default()` (size 0) instead of making the layout unusable.
fn lookup(fm: &FieldMap, key: &str, missing: &mut Vec<String>) -> F {
    if let Some(k) = key.strip_prefix('?') {
        let mut ignored = Vec::new();
        return lookup(fm, k, &mut ignored);
    }
    let mut off = 0;
    let mut size = 0;
    for part in key.split('+') {
        match fm.get(part) {
            Some((o, s)) => {
                off += o;
                size = s;
            }
            None => {
                missing.push(part.to_string());
                return F::default();
            }
        }
    }
    if key.ends_with(".SIZEOF") {
        F { off: size, size: 0 }
    } else {
        F { off, size }
    }
}

layout_struct! {
    hdr_next = "GCtab.nextgc",
    hdr_marked = "GCtab.marked",
    hdr_gct = "GCtab.gct",

    g_allocf = "global_State.allocf",
    g_total = "global_State.gc+GCState.total",
    g_threshold = "global_State.gc+GCState.threshold",
    g_currentwhite = "global_State.gc+GCState.currentwhite",
    g_state = "global_State.gc+GCState.state",
    g_lightudnum = "global_State.gc+GCState.lightudnum",
    g_root = "global_State.gc+GCState.root",
    g_sweep = "global_State.gc+GCState.sweep",
    g_sweepstr = "global_State.gc+GCState.sweepstr",
    g_mmudata = "global_State.gc+GCState.mmudata",
    g_lightudseg = "global_State.gc+GCState.lightudseg",
    g_strempty = "global_State.strempty",
    g_str_tab = "global_State.str+StrInternState.tab",
    g_str_mask = "global_State.str+StrInternState.mask",
    g_str_num = "global_State.str+StrInternState.num",
    g_vmstate = "global_State.vmstate",
    g_mainthref = "global_State.mainthref",
    g_tmpbuf_e = "global_State.tmpbuf+SBuf.e",
    g_tmpbuf_b = "global_State.tmpbuf+SBuf.b",
    g_registrytv = "global_State.registrytv",
    g_uvhead = "global_State.uvhead",
    g_cur_l = "global_State.cur_L",
    g_jit_base = "global_State.jit_base",
    g_ctype_state = "global_State.ctype_state",
    g_gcroot = "global_State.gcroot",
    gg_size = "GG_State.SIZEOF",
    gg_g = "GG_State.g",
    gg_j = "GG_State.J",

    l_status = "lua_State.status",
    l_glref = "lua_State.glref",
    l_base = "lua_State.base",
    l_top = "lua_State.top",
    l_maxstack = "lua_State.maxstack",
    l_stack = "lua_State.stack",
    l_openupval = "lua_State.openupval",
    l_env = "lua_State.env",
    l_cframe = "lua_State.cframe",
    l_stacksize = "lua_State.stacksize",
    l_size = "lua_State.SIZEOF",

    s_hash = "GCstr.hash",
    s_len = "GCstr.len",
    s_size = "GCstr.SIZEOF",

    t_colo = "GCtab.colo",
    t_array = "GCtab.array",
    t_metatable = "GCtab.metatable",
    t_node = "GCtab.node",
    t_asize = "GCtab.asize",
    t_hmask = "GCtab.hmask",
    t_size = "GCtab.SIZEOF",
    n_val = "Node.val",
    n_key = "Node.key",
    n_next = "Node.next",
    n_size = "Node.SIZEOF",

    u_udtype = "GCudata.udtype",
    u_env = "GCudata.env",
    u_len = "GCudata.len",
    u_metatable = "GCudata.metatable",
    u_size = "GCudata.SIZEOF",
    sb_w = "SBuf.w",
    sb_e = "SBuf.e",
    sb_b = "SBuf.b",
    sb_l = "SBuf.L",

    cd_ctypeid = "GCcdata.ctypeid",
    cd_size = "GCcdata.SIZEOF",
    cdv_offset = "GCcdataVar.offset",
    cdv_extra = "GCcdataVar.extra",
    cdv_len = "GCcdataVar.len",
    cdv_size = "GCcdataVar.SIZEOF",

    p_sizebc = "GCproto.sizebc",
    p_k = "GCproto.k",
    p_uv = "GCproto.uv",
    p_sizekgc = "GCproto.sizekgc",
    p_sizept = "GCproto.sizept",
    p_sizeuv = "GCproto.sizeuv",
    p_chunkname = "GCproto.chunkname",
    p_firstline = "GCproto.firstline",
    p_numline = "GCproto.numline",
    p_lineinfo = "GCproto.lineinfo",
    p_uvinfo = "GCproto.uvinfo",
    p_varinfo = "GCproto.varinfo",
    p_size = "GCproto.SIZEOF",
    p_trace = "GCproto.trace",

    f_ffid = "GCfuncL.ffid",
    f_nupvalues = "GCfuncL.nupvalues",
    f_env = "GCfuncL.env",
    f_pc = "GCfuncL.pc",
    fl_uvptr = "GCfuncL.uvptr",
    fl_size = "GCfuncL.SIZEOF",
    fc_f = "GCfuncC.f",
    fc_upvalue = "GCfuncC.upvalue",
    fc_size = "GCfuncC.SIZEOF",

    uv_closed = "GCupval.closed",
    uv_v = "GCupval.v",
    uv_size = "GCupval.SIZEOF",

    tr_nsnap = "GCtrace.nsnap",
    tr_nins = "GCtrace.nins",
    tr_nk = "GCtrace.nk",
    tr_nsnapmap = "GCtrace.nsnapmap",
    tr_startpt = "GCtrace.startpt",
    tr_szmcode = "GCtrace.szmcode",
    tr_mcode = "GCtrace.mcode",
    tr_spadjust = "GCtrace.spadjust",
    tr_traceno = "GCtrace.traceno",
    tr_startpc = "GCtrace.startpc",
    tr_startins = "GCtrace.startins",
    tr_size = "GCtrace.SIZEOF",
    tr_link = "GCtrace.link",
    tr_nextroot = "GCtrace.nextroot",
    tr_nextside = "GCtrace.nextside",
    tr_snap = "GCtrace.snap",
    tr_snapmap = "GCtrace.snapmap",
    // Snapshots' machine-code offsets came with LJ_UNWIND_JIT (2.1, late
    // 2022); older builds lack them (a `?` key may be missing: size 0).
    sn_mapofs = "?SnapShot.mapofs",
    sn_mcofs = "?SnapShot.mcofs",
    sn_nent = "?SnapShot.nent",
    sn_size = "?SnapShot.SIZEOF",

    ct_info = "CType.info",
    ct_size = "CType.size",
    ct_name = "CType.name",
    ct_sizeof = "CType.SIZEOF",

    cts_tab = "CTState.tab",
    cts_top = "CTState.top",
    cts_sizetab = "CTState.sizetab",
    cts_finalizer = "CTState.finalizer",
    cts_cb_mcode = "CTState.cb+CCallback.mcode",
    cts_cb_cbid = "CTState.cb+CCallback.cbid",
    cts_cb_sizeid = "CTState.cb+CCallback.sizeid",
    cts_size = "CTState.SIZEOF",

    j_irtoplim = "jit_State.irtoplim",
    j_irbotlim = "jit_State.irbotlim",
    j_sizesnap = "jit_State.sizesnap",
    j_sizesnapmap = "jit_State.sizesnapmap",
    j_trace = "jit_State.trace",
    j_sizetrace = "jit_State.sizetrace",
    j_szallmcarea = "jit_State.szallmcarea",
}

/// A complete layout: the member offsets plus what build it describes.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `luajit2-gc64`, ... (or `dwarf:<variant>-<gc64>` for a build with no table).
    pub name: String,
    /// Line of LuaJIT.
    pub variant: Variant,
    /// GC64 (8-byte GC references) or not.
    pub gc64: bool,
    /// Where the offsets came from.
    pub source: LayoutSource,
    /// The offsets.
    pub f: Fields,
}

/// Errors choosing a layout.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// A field map lacks members the walker needs.
    #[error(
        "layout {name} lacks {missing:?}: this LuaJIT build is older or newer than ljleak supports"
    )]
    Missing {
        /// Layout name.
        name: String,
        /// Missing `Struct.field` names.
        missing: Vec<String>,
    },
    /// No table fits the VM.
    #[error("no known LuaJIT layout fits the VM at {l:#x} ({reasons}); supported: luajit2 and upstream LuaJIT 2.1, GC64 and non-GC64, x86_64")]
    NoMatch {
        /// The lua_State tried.
        l: u64,
        /// Why each table was rejected.
        reasons: String,
    },
    /// A layout's identity holds (L, g and the main thread point at each
    /// other) but the global state's contents are impossible: the heap is
    /// damaged, not of an unknown build.
    #[error("the VM at {l:#x} matches layout {name} but its global_State is inconsistent ({why}): the heap is damaged or being changed")]
    Inconsistent {
        /// The lua_State tried.
        l: u64,
        /// Layout whose identity invariants hold.
        name: String,
        /// The invariant that failed.
        why: String,
    },
    /// More than one table fits.
    #[error("layouts {0} all fit the VM; name one with --layout")]
    Ambiguous(String),
}

impl Layout {
    /// Build a layout from a field map.
    pub fn from_map(
        fm: &FieldMap,
        name: &str,
        source: LayoutSource,
    ) -> Result<Layout, LayoutError> {
        let mut missing = Vec::new();
        let f = Fields::from_map(fm, &mut missing);
        if !missing.is_empty() {
            return Err(LayoutError::Missing {
                name: name.into(),
                missing,
            });
        }
        let variant = if fm.get("lua_State.exdata").is_some() {
            Variant::Luajit2
        } else {
            Variant::Upstream
        };
        let gc64 = f.t_metatable.size == 8;
        Ok(Layout {
            name: name.into(),
            variant,
            gc64,
            source,
            f,
        })
    }

    /// A built-in table.
    pub fn builtin(b: &Builtin) -> Layout {
        let mut l = Layout::from_map(&FieldMap::parse(b.text), b.name, LayoutSource::Table)
            .expect("built-in tables are complete");
        l.variant = b.variant;
        l.gc64 = b.gc64;
        l
    }

    /// Every built-in layout.
    pub fn builtins() -> Vec<Layout> {
        BUILTINS.iter().map(Layout::builtin).collect()
    }

    /// Size of a GC reference (8 in GC64, 4 otherwise).
    pub fn gcref(&self) -> u64 {
        self.f.t_metatable.size
    }

    /// Decode a GC reference value: the 64-bit word in GC64 holds the
    /// pointer; in non-GC64 it is a zero-extended 32-bit address.
    #[inline]
    pub fn ref_at<M: Memory + ?Sized>(&self, m: &M, addr: u64) -> Result<u64, MemError> {
        m.uint(addr, self.gcref())
    }
}

/// The last GC state (lj_obj.h GCSfinalize).
const GCS_FINALIZE: u64 = 5;

/// What a validated VM looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmRoots {
    /// The lua_State we started from.
    pub l: u64,
    /// Its global_State.
    pub g: u64,
    /// The main thread (start of GG_State).
    pub main: u64,
}

/// Check the invariants of a VM at `l` under `lay`: `l` is a thread, its
/// `glref` leads to a global_State whose main thread sits at the start of
/// GG_State just before it, the embedded empty string is a string of length
/// 0, the GC state and string table are sane.
pub fn validate<M: Memory + ?Sized>(m: &M, lay: &Layout, l: u64) -> Result<VmRoots, String> {
    let f = &lay.f;
    let rd = |fld: F, base: u64, what: &str| -> Result<u64, String> {
        fld.get(m, base).map_err(|e| format!("{what}: {e}"))
    };
    if l == 0 || l % super::walk::OBJ_ALIGN != 0 {
        return Err(format!("lua_State {l:#x} is not an aligned pointer"));
    }
    if rd(f.hdr_gct, l, "L->gct")? != gct::THREAD as u64 {
        return Err("L is not a thread object".into());
    }
    let g = rd(f.l_glref, l, "L->glref")?;
    let main = rd(f.g_mainthref, g, "g->mainthref")?;
    if main.wrapping_add(f.gg_g.off) != g {
        return Err(format!(
            "g->mainthref + {} != g (global_State is not right after the main lua_State)",
            f.gg_g.off
        ));
    }
    if rd(f.hdr_gct, main, "main->gct")? != gct::THREAD as u64
        || rd(f.l_glref, main, "main->glref")? != g
    {
        return Err("main thread does not point back to g".into());
    }
    let se = g + f.g_strempty.off;
    if rd(f.hdr_gct, se, "strempty.gct")? != gct::STR as u64
        || rd(f.s_len, se, "strempty.len")? != 0
    {
        return Err("g->strempty is not an empty string".into());
    }
    let state = rd(f.g_state, g, "gc.state")?;
    if state > GCS_FINALIZE {
        return Err(format!("gc.state {state} out of range"));
    }
    let mask = rd(f.g_str_mask, g, "str.mask")?;
    if (mask.wrapping_add(1)) & mask != 0 || mask == 0 || mask > (1 << 28) {
        return Err(format!("str.mask {mask:#x} is not 2^n-1"));
    }
    let total = rd(f.g_total, g, "gc.total")?;
    if total < f.gg_size.off - f.l_size.off || total > 1 << 47 {
        return Err(format!("gc.total {total} implausible"));
    }
    Ok(VmRoots { l, g, main })
}

/// The first invariants of [`validate`], those that identify a layout:
/// L is a thread whose `glref` points at a g whose main thread sits right
/// before it in GG_State and points back. Random memory does not pass
/// them; a damaged global_State of a known build does.
fn identity_holds<M: Memory + ?Sized>(m: &M, lay: &Layout, l: u64) -> bool {
    let f = &lay.f;
    let ok = || -> Option<bool> {
        if l == 0 || l % super::walk::OBJ_ALIGN != 0 {
            return Some(false);
        }
        if f.hdr_gct.get(m, l).ok()? != gct::THREAD as u64 {
            return Some(false);
        }
        let g = f.l_glref.get(m, l).ok()?;
        let main = f.g_mainthref.get(m, g).ok()?;
        Some(
            main.wrapping_add(f.gg_g.off) == g
                && f.hdr_gct.get(m, main).ok()? == gct::THREAD as u64
                && f.l_glref.get(m, main).ok()? == g,
        )
    };
    ok().unwrap_or(false)
}

/// Pick the built-in layout that fits the VM at `l`.
pub fn choose_builtin<M: Memory + ?Sized>(m: &M, l: u64) -> Result<(Layout, VmRoots), LayoutError> {
    let mut fits = Vec::new();
    let mut reasons = Vec::new();
    for lay in Layout::builtins() {
        match validate(m, &lay, l) {
            Ok(r) => fits.push((lay, r)),
            Err(why) => reasons.push(format!("{}: {why}", lay.name)),
        }
    }
    match fits.len() {
        1 => Ok(fits.pop().expect("one")),
        0 if Layout::builtins()
            .iter()
            .any(|lay| identity_holds(m, lay, l)) =>
        {
            let lay = Layout::builtins()
                .into_iter()
                .find(|lay| identity_holds(m, lay, l))
                .expect("checked");
            let why = validate(m, &lay, l).err().unwrap_or_default();
            Err(LayoutError::Inconsistent {
                l,
                name: lay.name,
                why,
            })
        }
        0 => Err(LayoutError::NoMatch {
            l,
            reasons: reasons.join("; "),
        }),
        _ => Err(LayoutError::Ambiguous(
            fits.iter()
                .map(|(l, _)| l.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        )),
    }
}

/// The built-in table matching a DWARF-derived layout's build, for
/// cross-checking.
pub fn matching_builtin(lay: &Layout) -> Option<Layout> {
    BUILTINS
        .iter()
        .find(|b| b.variant == lay.variant && b.gc64 == lay.gc64)
        .map(Layout::builtin)
}

/// GC state names, as stap++ printed them.
pub fn gc_state_name(state: u64) -> &'static str {
    match state {
        0 => "pause",
        1 => "propagate",
        2 => "atomic",
        3 => "sweep-string",
        4 => "sweep",
        5 => "finalize",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_match_reference_numbers() {
        let l = Layout::builtin(&BUILTINS[0]);
        assert_eq!(l.name, "luajit2-gc64");
        assert_eq!(l.f.g_total.off, 16);
        assert_eq!(l.f.g_mainthref.off, 192);
        assert_eq!(l.f.g_str_mask.off, 160);
        assert_eq!(l.f.g_tmpbuf_e.off, 208);
        assert_eq!(l.f.gg_size.off, 6296);
        assert_eq!(l.f.cts_cb_sizeid.off, 248);
        assert_eq!(l.f.j_trace.off, 384);
        let n = Layout::builtin(&BUILTINS[1]);
        assert!(!n.gc64);
        assert_eq!(n.f.g_total.size, 4);
        assert_eq!(n.f.g_tmpbuf_e.off, 152);
        assert_eq!(n.f.gg_g.off, 80);
        let u = Layout::builtin(&BUILTINS[2]);
        assert_eq!(u.variant, Variant::Upstream);
        assert_eq!(u.f.l_size.off, 96);
        assert_eq!(u.f.cts_cb_mcode.off, 184);
        assert_eq!(u.f.gg_j.off, 824);
        assert!(!l.f.diff(&u.f).is_empty());
    }

    #[test]
    fn from_map_reports_missing_members() {
        let fm = FieldMap::parse("GCtab.nextgc 0 8\n");
        match Layout::from_map(&fm, "x", LayoutSource::Table) {
            Err(LayoutError::Missing { missing, .. }) => assert!(missing.len() > 50),
            other => panic!("{other:?}"),
        }
    }
}
