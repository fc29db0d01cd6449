/* Shared between the BPF programs (ljleak.bpf.c) and ljleak's Rust side
 * (src/trace/ebpf/abi.rs mirrors every struct with #[repr(C)]; a unit test
 * checks sizes and offsets against this object's BTF). Fixed-width types
 * only, every field naturally aligned, explicit padding. */
#ifndef LJLEAK_BPF_H
#define LJLEAK_BPF_H

#include <linux/types.h>

/* Record types (first u32 of every ring-buffer record). */
#define LJ_REC_ALLOC 1 /* a tracked allocation call returned */

/* Function kinds: the low byte of each site's BPF cookie (the rest is the
 * index of the probe in ljleak's probe set). */
#define LJ_F_MALLOC 1
#define LJ_F_CALLOC 2
#define LJ_F_REALLOC 3
#define LJ_F_REALLOCARRAY 4
#define LJ_F_FREE 5
#define LJ_F_POSIX_MEMALIGN 6
#define LJ_F_ALIGNED_ALLOC 7 /* and memalign: (align, size) */
#define LJ_F_VALLOC 8 /* and pvalloc: (size) */
#define LJ_F_LUA_ALLOCF 9 /* allocf(ud, ptr, osize, nsize) */

/* Counters (indices of the per-CPU array `counters`). */
#define LJ_C_ALLOCS 0
#define LJ_C_ALLOC_BYTES 1
#define LJ_C_FREES 2
#define LJ_C_PRE_FREES 3
#define LJ_C_PRE_FREE_BYTES 4
#define LJ_C_NESTED 5
#define LJ_C_UNMATCHED 6
#define LJ_C_FAILED 7
#define LJ_C_UNTRACKED_FREES 8
#define LJ_C_LOST 9 /* ring buffer full */
#define LJ_C_SAMPLED 10
#define LJ_C_LIVE_FULL 11 /* live map full: allocation not tracked */
#define LJ_C_HITS 12
#define LJ_C_LUA_WALKS 13
#define LJ_C_LUA_BAD 14
#define LJ_C_ANCHORED 15 /* stack copied only up to the thread's anchor */
#define LJ_C_STACK_BYTES 16 /* stack bytes copied */
#define LJ_C_N 18

/* The Lua state at an allocation: what ljleak's frame walker
 * (src/luajit/backtrace.rs) reads, copied while the probe runs. */
#define LJ_LUA_STACK 2048 /* bytes of Lua stack copied below the base */
#define LJ_MAX_CF 4 /* C frames of the chain copied */
/* Per-thread state lives in arrays indexed by tid & (LJ_TSLOTS - 1) (an
 * inlined lookup, where a hash map costs ~40 ns a run): a slot belongs to
 * the thread whose tid it holds. */
#define LJ_TSLOTS (1 << 15)
/* The live set's array (map `slots`): LJ_SLOTS pointers, two slots per
 * pointer from the top LJ_SLOTS_LOG2 bits of (ptr >> 4) times each
 * multiplier; word LJ_SLOTS counts the pointers spilled to `live`. */
#define LJ_SLOTS_LOG2 20
#define LJ_SLOTS (1 << LJ_SLOTS_LOG2)
#define LJ_SLOT_MUL0 0x9E3779B97F4A7C15ULL
#define LJ_SLOT_MUL1 0xC2B2AE3D27D4EB4FULL

/* Lua snapshot flags. */
#define LJ_LUA_OK 1 /* cur_L validated against the interpreter's C frame */
#define LJ_LUA_TRACE 2 /* a trace was running: base is g->jit_base */
#define LJ_LUA_BAD 4 /* a Lua state exists but did not validate */

/* Return-record flags. */
#define LJ_RET_UNTRACKED 1 /* the live map was full: forget the allocation */

/* The registers ljleak's unwinder starts from (framehop's x86-64 rules
 * use no others). */
struct lj_regs {
	__u64 ip, sp, bp;
};

/* 40 bytes of one interpreter C frame (SAVE_L, SAVE_PC, PREV, NRES). */
struct lj_cframe {
	__u64 addr;
	__u64 w[5];
};

struct lj_lua_snap {
	__u64 l; /* g->cur_L */
	__u64 base; /* the frames' base: g->jit_base while a trace runs, else L->base */
	__u64 stack; /* L->stack */
	__u64 cframe; /* L->cframe (flag bits included) */
	__u64 lstack_from; /* address of lstack[0] */
	__u32 lstack_len; /* valid bytes of lstack */
	__u32 flags; /* LJ_LUA_* */
	__u32 ncf; /* valid entries of cf */
	__u32 pad;
	struct lj_cframe cf[LJ_MAX_CF];
	/* The Lua stack slots [base - lstack_len, base) are the first
	 * lstack_len bytes of the entry record's data[]. */
};

/* A thread's anchor, learned by ljleak from the stacks it unwound: the
 * frames above `slot` (the return-address slot of a frame every stack of
 * the thread passes through, e.g. nginx's event loop) repeat on every
 * event, so when `slot` still holds `word` (and `slot2`, the next frame's
 * return-address slot, holds `word2`) only [sp, slot + 8) is copied and
 * ljleak glues the bytes above from the stack it learned the anchor from.
 * `top`: the thread's outermost frame, the end of any useful copy (0:
 * unknown). */
struct lj_anchor {
	__u32 tid; /* the thread this slot of `anchors` is for (0: none) */
	__u32 pad;
	__u64 slot, word;
	__u64 slot2, word2;
	__u64 top;
};

/* One tracked allocation, written when its call returns: the caller's
 * frames and callee-saved registers are as they were at the call, so the
 * stack is copied and unwound from the return address (ljleak puts the
 * allocation function, entry_ip, in front); the Lua state is unchanged by
 * the allocator. */
struct lj_rec_alloc {
	__u32 type;
	__u32 tid;
	__u64 time; /* 0: ljleak stamps records as it drains them */
	__u64 cookie;
	__u32 stack_len; /* valid bytes of the stack copy */
	__u32 sampled; /* 1: chosen by the in-kernel byte sampler */
	__u64 anchor; /* the anchor slot the copy ends at (slot + 8); 0: none */
	__u64 anchor_word; /* the word found there */
	__u32 lua_room; /* bytes of data[] before the user stack */
	__u32 flags; /* LJ_RET_* */
	__u64 a[4]; /* the call's first four arguments */
	__u64 ret; /* rax */
	__u64 deref; /* posix_memalign: *memptr read at return */
	__u64 entry_ip; /* the allocation function's entry */
	struct lj_regs regs; /* at the return */
	struct lj_lua_snap lua;
	/* lua_room bytes for the Lua stack (lua.lstack_len valid), then the
	 * user stack from regs.sp (stack_len valid). */
	__u8 data[];
};

/* A pending outermost call on one thread (map `pending`, key tid). */
struct lj_pending {
	__u32 tid; /* the thread owning this slot of `pend` (0: free) */
	__u32 pad;
	__u64 sp; /* 0: none */
	__u64 a0, a1, a2, a3;
	__u64 cookie;
	__u64 ip; /* the function's entry */
	__u32 track; /* 1: record the allocation at its return */
	__u32 sampled;
};

/* LuaJIT layout for the in-kernel Lua walk, filled from ljleak's layout
 * tables (never hard-coded here). All offsets in bytes. */
struct lj_lua_cfg {
	__u64 g; /* global_State address; 0: no Lua walk */
	__u32 gc64; /* 1: 8-byte TValue with 47-bit pointers */
	__u32 g_cur_l; /* offsetof(global_State, cur_L) */
	__u32 g_jit_base; /* offsetof(global_State, jit_base) */
	__u32 l_base;
	__u32 l_stack;
	__u32 l_cframe;
	__u32 cf_save_l; /* C frame: saved L */
	__u32 cf_prev; /* C frame: previous C frame */
};

/* Read-only configuration (.rodata, fixed at load: the verifier sees the
 * stack size as a constant). */
struct lj_config {
	__u64 sample_bytes; /* 0: exact */
	__u32 stack_bytes; /* multiple of 8, <= LJ_MAX_STACK */
	__u32 pad;
	struct lj_lua_cfg lua;
};

#define LJ_MAX_STACK 65528

#endif
