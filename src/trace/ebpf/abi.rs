//! Rust mirrors of the structs in `src/trace/bpf/ljleak.h` (map values,
//! ring-buffer records, the load-time configuration). The unit test below
//! checks every size and field offset against the BTF of the compiled
//! object, so the two sides cannot drift silently.

/// The compiled BPF object (built by build.rs from src/trace/bpf/).
pub static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ljleak.bpf.o"));

/// Record types: a tracked allocation call returned.
pub const REC_ALLOC: u32 = 1;

/// Function kinds (low byte of a site's cookie).
pub mod func {
    /// malloc.
    pub const MALLOC: u64 = 1;
    /// calloc.
    pub const CALLOC: u64 = 2;
    /// realloc.
    pub const REALLOC: u64 = 3;
    /// reallocarray.
    pub const REALLOCARRAY: u64 = 4;
    /// free.
    pub const FREE: u64 = 5;
    /// posix_memalign.
    pub const POSIX_MEMALIGN: u64 = 6;
    /// aligned_alloc, memalign.
    pub const ALIGNED_ALLOC: u64 = 7;
    /// valloc, pvalloc.
    pub const VALLOC: u64 = 8;
    /// LuaJIT's allocf.
    pub const LUA_ALLOCF: u64 = 9;
}

/// Counter indices (per-CPU array `counters`).
pub mod counter {
    /// Allocations.
    pub const ALLOCS: usize = 0;
    /// Their bytes.
    pub const ALLOC_BYTES: usize = 1;
    /// Frees of tracked pointers.
    pub const FREES: usize = 2;
    /// Frees of pointers allocated before the window.
    pub const PRE_FREES: usize = 3;
    /// Their bytes when known.
    pub const PRE_FREE_BYTES: usize = 4;
    /// Nested calls.
    pub const NESTED: usize = 5;
    /// Entries whose return never came.
    pub const UNMATCHED: usize = 6;
    /// Failed allocations.
    pub const FAILED: usize = 7;
    /// Frees of untracked pointers when sampling.
    pub const UNTRACKED_FREES: usize = 8;
    /// Records dropped (ring buffer full).
    pub const LOST: usize = 9;
    /// Allocations sampled.
    pub const SAMPLED: usize = 10;
    /// Allocations not tracked because the live map was full.
    pub const LIVE_FULL: usize = 11;
    /// Program runs.
    pub const HITS: usize = 12;
    /// Lua walks done.
    pub const LUA_WALKS: usize = 13;
    /// Lua walks that stopped at a frame they could not validate.
    pub const LUA_BAD: usize = 14;
    /// Stacks copied only up to their thread's anchor.
    pub const ANCHORED: usize = 15;
    /// Stack bytes copied.
    pub const STACK_BYTES: usize = 16;
    /// Array size.
    pub const N: usize = 18;
}

/// Bytes of Lua stack copied below the frames' base.
pub const LUA_STACK: usize = 2048;
/// C frames of the chain copied.
pub const MAX_CF: usize = 4;
/// Largest stack copy.
pub const MAX_STACK: u32 = 65528;
/// `LJ_TSLOTS`: slots of the per-thread arrays (`pend`, `anchors`),
/// indexed by tid modulo this.
pub const TSLOTS: u32 = 1 << 15;
/// `LJ_SLOTS_LOG2`: the live set's array holds 2^this pointers.
pub const SLOTS_LOG2: u32 = 20;
/// `LJ_SLOT_MUL0`, `LJ_SLOT_MUL1`: a pointer's two slots are the top
/// SLOTS_LOG2 bits of `(ptr >> 4) * MUL`.
pub const SLOT_MUL: [u64; 2] = [0x9E37_79B9_7F4A_7C15, 0xC2B2_AE3D_27D4_EB4F];

/// The two slots of `ptr` in the live set's array.
pub fn slots_of(ptr: u64) -> [usize; 2] {
    SLOT_MUL.map(|m| ((ptr >> 4).wrapping_mul(m) >> (64 - SLOTS_LOG2)) as usize)
}

/// Lua snapshot flags.
pub mod lua_flags {
    /// cur_L validated against the interpreter's C frame.
    pub const OK: u32 = 1;
    /// A trace was running (base is g->jit_base).
    pub const TRACE: u32 = 2;
    /// A Lua state exists but did not validate.
    pub const BAD: u32 = 4;
}

/// Return flag: the live map was full, the allocation is not tracked.
pub const RET_UNTRACKED: u32 = 1;

/// `struct lj_regs`: where the unwinder starts.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
#[allow(missing_docs)]
pub struct LjRegs {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

/// `struct lj_cframe`: 40 bytes of an interpreter C frame.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LjCframe {
    /// Its address.
    pub addr: u64,
    /// The words from `addr` on.
    pub w: [u64; 5],
}

/// `struct lj_lua_snap`: the Lua state at an allocation.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
#[allow(missing_docs)]
pub struct LjLuaSnap {
    pub l: u64,
    pub base: u64,
    pub stack: u64,
    pub cframe: u64,
    pub lstack_from: u64,
    pub lstack_len: u32,
    pub flags: u32,
    pub ncf: u32,
    pub pad: u32,
    pub cf: [LjCframe; MAX_CF],
}

/// `struct lj_anchor`: where a thread's stack copies may stop.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct LjAnchor {
    pub tid: u32,
    pub pad: u32,
    pub slot: u64,
    pub word: u64,
    pub slot2: u64,
    pub word2: u64,
    pub top: u64,
}

/// `struct lj_rec_alloc` (followed by `lua_room` bytes for the Lua stack,
/// then the user stack): one tracked allocation, written at its return.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
#[allow(missing_docs)]
pub struct LjRecAlloc {
    pub ty: u32,
    pub tid: u32,
    pub time: u64,
    pub cookie: u64,
    pub stack_len: u32,
    pub sampled: u32,
    pub anchor: u64,
    pub anchor_word: u64,
    pub lua_room: u32,
    pub flags: u32,
    pub a: [u64; 4],
    pub ret: u64,
    pub deref: u64,
    pub entry_ip: u64,
    pub regs: LjRegs,
    pub lua: LjLuaSnap,
}

/// `struct lj_lua_cfg`: LuaJIT layout for the in-kernel walk.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
#[allow(missing_docs)]
pub struct LjLuaCfg {
    pub g: u64,
    pub gc64: u32,
    pub g_cur_l: u32,
    pub g_jit_base: u32,
    pub l_base: u32,
    pub l_stack: u32,
    pub l_cframe: u32,
    pub cf_save_l: u32,
    pub cf_prev: u32,
}

/// `struct lj_config` (the `.rodata` variable `cfg`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
#[allow(missing_docs)]
pub struct LjConfig {
    pub sample_bytes: u64,
    pub stack_bytes: u32,
    pub pad: u32,
    pub lua: LjLuaCfg,
}

/// Plain-old-data: every bit pattern is a valid value and there is no
/// padding the compiler could leave uninitialised (checked by the layout
/// test), so values can be read from and written as bytes.
///
/// # Safety
/// Implement only for `#[repr(C)]` structs of integers without implicit
/// padding.
pub unsafe trait Pod: Copy {}
// SAFETY: repr(C) integer structs with explicit padding (see the test).
unsafe impl Pod for LjRecAlloc {}
// SAFETY: as above.
unsafe impl Pod for LjConfig {}
// SAFETY: as above.
unsafe impl Pod for LjAnchor {}
// SAFETY: a u32.
unsafe impl Pod for u32 {}

/// Read a `T` from the start of `b` (None when too short).
pub fn read<T: Pod>(b: &[u8]) -> Option<T> {
    if b.len() < std::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: `b` holds at least size_of::<T>() bytes; T is Pod (any bit
    // pattern is valid); read_unaligned has no alignment requirement.
    Some(unsafe { std::ptr::read_unaligned(b.as_ptr() as *const T) })
}

/// A `T` at the start of `b` in place (None when too short or not
/// aligned for `T`; ring-buffer records are 8-byte aligned).
pub fn view<T: Pod>(b: &[u8]) -> Option<&T> {
    if b.len() < std::mem::size_of::<T>() || (b.as_ptr() as usize) % std::mem::align_of::<T>() != 0
    {
        return None;
    }
    // SAFETY: `b` holds at least size_of::<T>() bytes at an address
    // aligned for T; T is Pod (any bit pattern is valid); the reference
    // borrows `b`, so the bytes outlive it.
    Some(unsafe { &*(b.as_ptr() as *const T) })
}

/// The bytes of a `T`.
pub fn bytes<T: Pod>(v: &T) -> Vec<u8> {
    // SAFETY: T is Pod without implicit padding, so all its bytes are
    // initialised; the slice lives only for this copy.
    unsafe { std::slice::from_raw_parts(v as *const T as *const u8, std::mem::size_of::<T>()) }
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use libbpf_rs::btf::types::{MemberAttr, Struct};
    use libbpf_rs::btf::{Btf, HasSize};
    use std::mem::{offset_of, size_of};

    /// (field, byte offset) of a struct in the object's BTF.
    fn btf_layout(btf: &Btf<'_>, name: &str) -> (usize, Vec<(String, usize)>) {
        let s: Struct<'_> = btf
            .type_by_name(name)
            .unwrap_or_else(|| panic!("{name} not in BTF"));
        let fields = s
            .iter()
            .map(|m| {
                let off = match m.attr {
                    MemberAttr::Normal { offset } => offset,
                    MemberAttr::BitField { offset, .. } => offset,
                };
                (
                    m.name
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    off as usize / 8,
                )
            })
            .collect();
        (s.size(), fields)
    }

    macro_rules! check {
        ($btf:expr, $cname:literal, $ty:ty, [$(($cf:literal, $rf:ident)),* $(,)?] $(, $extra:expr)?) => {{
            let (size, fields) = btf_layout(&$btf, $cname);
            assert_eq!(size, size_of::<$ty>(), "sizeof {}", $cname);
            #[allow(unused_mut)]
            let mut want: Vec<(String, usize)> = vec![$(($cf.to_string(), offset_of!($ty, $rf))),*];
            $(want.push($extra);)?
            assert_eq!(fields, want, "fields of {}", $cname);
        }};
    }

    #[test]
    fn views_need_the_length_and_the_alignment() {
        let words = [0x0102_0304_0506_0708u64, 9, 10];
        // SAFETY: reading the bytes of a live u64 array.
        let b = unsafe { std::slice::from_raw_parts(words.as_ptr() as *const u8, 24) };
        assert_eq!(view::<LjAnchor>(b).map(|_| ()), None, "too short");
        assert_eq!(view::<u32>(b).copied(), Some(0x0506_0708));
        assert_eq!(view::<u32>(&b[1..]), None, "misaligned");
        assert_eq!(view::<u32>(&b[4..]).copied(), Some(0x0102_0304));
    }

    #[test]
    fn rust_mirrors_match_the_compiled_object() {
        let btf = Btf::from_raw("ljleak", OBJECT)
            .unwrap()
            .expect("BTF in object");
        check!(btf, "lj_regs", LjRegs, [("ip", ip), ("sp", sp), ("bp", bp)]);
        check!(btf, "lj_cframe", LjCframe, [("addr", addr), ("w", w)]);
        check!(
            btf,
            "lj_lua_snap",
            LjLuaSnap,
            [
                ("l", l),
                ("base", base),
                ("stack", stack),
                ("cframe", cframe),
                ("lstack_from", lstack_from),
                ("lstack_len", lstack_len),
                ("flags", flags),
                ("ncf", ncf),
                ("pad", pad),
                ("cf", cf)
            ]
        );
        check!(
            btf,
            "lj_anchor",
            LjAnchor,
            [
                ("tid", tid),
                ("pad", pad),
                ("slot", slot),
                ("word", word),
                ("slot2", slot2),
                ("word2", word2),
                ("top", top)
            ]
        );
        // The data bytes follow the fixed part.
        check!(
            btf,
            "lj_rec_alloc",
            LjRecAlloc,
            [
                ("type", ty),
                ("tid", tid),
                ("time", time),
                ("cookie", cookie),
                ("stack_len", stack_len),
                ("sampled", sampled),
                ("anchor", anchor),
                ("anchor_word", anchor_word),
                ("lua_room", lua_room),
                ("flags", flags),
                ("a", a),
                ("ret", ret),
                ("deref", deref),
                ("entry_ip", entry_ip),
                ("regs", regs),
                ("lua", lua)
            ],
            ("data".to_string(), size_of::<LjRecAlloc>())
        );
        check!(
            btf,
            "lj_lua_cfg",
            LjLuaCfg,
            [
                ("g", g),
                ("gc64", gc64),
                ("g_cur_l", g_cur_l),
                ("g_jit_base", g_jit_base),
                ("l_base", l_base),
                ("l_stack", l_stack),
                ("l_cframe", l_cframe),
                ("cf_save_l", cf_save_l),
                ("cf_prev", cf_prev)
            ]
        );
        check!(
            btf,
            "lj_config",
            LjConfig,
            [
                ("sample_bytes", sample_bytes),
                ("stack_bytes", stack_bytes),
                ("pad", pad),
                ("lua", lua)
            ]
        );
    }
}
