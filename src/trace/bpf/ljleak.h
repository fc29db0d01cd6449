/* Shared between the BPF programs (ljleak.bpf.c) and ljleak's Rust side
 * (src/trace/bpf_abi.rs mirrors every struct with #[repr(C)]; a unit test
 * checks sizes and offsets against this object's BTF). Fixed-width types
 * only, every field naturally aligned, explicit padding. */
#ifndef LJLEAK_BPF_H
#define LJLEAK_BPF_H

#include <linux/types.h>

/* Record types (first u32 of every ring-buffer record). */
#define LJ_REC_ENTRY 1 /* a tracked allocation call entered */
#define LJ_REC_RETURN 2 /* that call returned */
#define LJ_REC_FREE 3 /* a tracked pointer was freed */

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
#define LJ_C_N 16

/* Lua frames recorded with an allocation. */
#define LJ_MAX_LUA 48

/* Flags of a Lua frame. */
#define LJ_LF_SEGMENT 1 /* first frame of a segment (a C frame boundary) */
#define LJ_LF_CFUNC 2 /* a C function's frame (fn is the GCfunc) */
#define LJ_LF_BAD 4 /* the walk could not validate past here: marker */
#define LJ_LF_TRACE 8 /* the segment's frames were read while a trace ran */

/* Return-record flags. */
#define LJ_RET_UNTRACKED 1 /* the live map was full: forget the allocation */

/* Registers as ljleak's unwinder and USDT argument decoding read them. */
struct lj_regs {
	__u64 ax, bx, cx, dx, si, di, bp, sp, ip;
	__u64 r[8]; /* r8..r15 */
};

struct lj_lua_frame {
	__u64 fn; /* GCfunc address */
	__u64 pc; /* bytecode PC (BCIns *) of the frame's current instruction, + 4 */
	__u64 cframe; /* C frame address of the segment (for splicing) */
	__u32 flags;
	__u32 pad;
};

struct lj_rec_entry {
	__u32 type;
	__u32 tid;
	__u64 time; /* CLOCK_MONOTONIC ns */
	__u64 cookie;
	__u32 stack_len; /* valid bytes of stack[] */
	__u32 sampled; /* 1: chosen by the in-kernel byte sampler */
	struct lj_regs regs;
	__u32 lua_n;
	__u32 lua_flags;
	struct lj_lua_frame lua[LJ_MAX_LUA];
	__u8 stack[]; /* user stack from regs.sp, cfg.stack_bytes long */
};

struct lj_rec_return {
	__u32 type;
	__u32 tid;
	__u64 time;
	__u64 cookie;
	__u64 ret; /* rax */
	__u64 deref; /* posix_memalign: *memptr read at return */
	__u64 sp;
	__u32 flags;
	__u32 pad;
};

struct lj_rec_free {
	__u32 type;
	__u32 tid;
	__u64 time;
	__u64 cookie;
	__u64 ptr;
	__u64 sp;
};

/* A pending outermost call on one thread (map `pending`, key tid). */
struct lj_pending {
	__u64 sp;
	__u64 a0, a1, a2, a3;
	__u64 cookie;
	__u32 emitted; /* an ENTRY record went out: a RETURN must follow */
	__u32 pad;
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
	__u32 fn_ffid; /* offsetof(GCfunc, ffid) (u8) */
	__u32 fn_pc; /* offsetof(GCfuncL, pc) (MRef) */
	__u32 cf_save_l; /* C frame: saved L */
	__u32 cf_save_pc; /* C frame: saved PC */
	__u32 cf_prev; /* C frame: previous C frame */
	__u32 pad;
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
