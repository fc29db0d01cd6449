// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* ljleak's in-kernel allocation tracer: one uprobe session program on every
 * allocation site (uprobe_multi links, PID-filtered by the link), pairing
 * entries with returns per thread, keeping the live set keyed by pointer,
 * and writing records to one BPF ring buffer without waking user space
 * (ljleak polls on a timer). With cfg.sample_bytes the entry decides, and
 * an unsampled call returns 1 so the kernel skips its return probe. */
#include <stdbool.h>
#include <linux/bpf.h>
#include <asm/ptrace.h>
#include <bpf/bpf_helpers.h>
#include "ljleak.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* uprobe session kfuncs (kernel >= 6.12). */
extern bool bpf_session_is_return(void) __ksym;

const volatile struct lj_config cfg = {};

/* Keep the record types in the object's BTF (ljleak's layout test reads
 * them there); never used. */
struct lj_rec_alloc *btf_rec_alloc __attribute__((unused));
struct lj_lua_snap *btf_lua_snap __attribute__((unused));
struct lj_cframe *btf_cframe __attribute__((unused));
struct lj_regs *btf_regs __attribute__((unused));
struct lj_anchor *btf_anchor __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 26); /* resized at load */
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 1 << 22);
	__type(key, __u64);
	__type(value, __u8);
} live SEC(".maps");

/* The live set, read by ljleak in place (it maps this array: a pointer
 * is live while either of its two slots holds it, the kernel reports no
 * frees). Two slots per pointer (each claimed and released with
 * compare-and-swap: an inlined array access where a hash map takes a
 * locked update and delete); a pointer finding both taken goes to `live`,
 * and the last word, LJ_SLOTS, counts those, so that a free (and ljleak)
 * looks in `live` only when something is there. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, LJ_SLOTS + 1);
	__type(key, __u32);
	__type(value, __u64);
} slots SEC(".maps");

/* Slot `which` (0 or 1) of a pointer: Fibonacci hashing of the pointer
 * without its alignment bits, by two multipliers (ljleak computes the
 * same: slots_of in src/trace/ebpf/abi.rs). */
static __always_inline __u64 *slot_of(__u64 ptr, int which)
{
	__u64 m = which ? LJ_SLOT_MUL1 : LJ_SLOT_MUL0;
	__u32 k = (__u32)(((ptr >> 4) * m) >> (64 - LJ_SLOTS_LOG2));
	return bpf_map_lookup_elem(&slots, &k);
}

static __always_inline __s64 *spilled(void)
{
	__u32 k = LJ_SLOTS;
	return (__s64 *)bpf_map_lookup_elem(&slots, &k);
}

static __always_inline bool slot_claim(__u64 ptr, int which)
{
	__u64 *s = slot_of(ptr, which);
	if (!s)
		return false;
	__u64 was = __sync_val_compare_and_swap(s, 0, ptr);
	return was == 0 || was == ptr;
}

static __always_inline bool slot_release(__u64 ptr, int which)
{
	__u64 *s = slot_of(ptr, which);
	return s && *s == ptr && __sync_val_compare_and_swap(s, ptr, 0) == ptr;
}

/* Track `ptr`; false when the set is full. */
static __always_inline bool live_add(__u64 ptr)
{
	if (slot_claim(ptr, 0) || slot_claim(ptr, 1))
		return true;
	__u8 one = 1;
	if (bpf_map_update_elem(&live, &ptr, &one, BPF_NOEXIST) != 0)
		return bpf_map_lookup_elem(&live, &ptr) != 0;
	__s64 *n = spilled();
	if (n)
		__sync_fetch_and_add(n, 1);
	return true;
}

/* Stop tracking `ptr`; true when it was tracked. */
static __always_inline bool live_del(__u64 ptr)
{
	if (slot_release(ptr, 0) || slot_release(ptr, 1))
		return true;
	__s64 *n = spilled();
	if (!n || *n <= 0)
		return false;
	if (bpf_map_delete_elem(&live, &ptr) != 0)
		return false;
	__sync_fetch_and_add(n, -1);
	return true;
}

/* Calls in progress, per thread: a thread claims the slot of `pend` its
 * tid maps to when it is free and keeps it (sp 0 while idle); a thread
 * whose slot another thread holds uses `pending` (LRU: entries of threads
 * gone are evicted first). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LJ_TSLOTS);
	__type(key, __u32);
	__type(value, struct lj_pending);
} pend SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1 << 16);
	__type(key, __u32);
	__type(value, struct lj_pending);
} pending SEC(".maps");

/* The calling thread's pending state: its slot of `pend` (claimed when
 * free), else its entry in `pending`; NULL only when another thread holds
 * the slot and the thread has no entry in `pending` yet. */
static __always_inline struct lj_pending *pend_of(__u32 tid)
{
	__u32 k = tid & (LJ_TSLOTS - 1);
	struct lj_pending *p = bpf_map_lookup_elem(&pend, &k);
	if (p && (p->tid == tid || (p->tid == 0 && __sync_val_compare_and_swap(&p->tid, 0, tid) == 0)))
		return p;
	return bpf_map_lookup_elem(&pending, &tid);
}

/* Per-thread anchors (see struct lj_anchor), written by ljleak into the
 * slot of the thread's tid; a slot holding another tid is no anchor. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LJ_TSLOTS);
	__type(key, __u32);
	__type(value, struct lj_anchor);
} anchors SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LJ_C_N);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* Bytes left before the next sample point, per CPU (the Poisson process of
 * sample points on the allocated byte stream is memoryless, so splitting it
 * per CPU keeps every allocation's sampling probability). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __s64);
} countdown SEC(".maps");

static __always_inline void count(__u32 i, __u64 n)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &i);
	if (c)
		*c += n;
}

/* -log2(u / 2^32) in 16.16 fixed point, u > 0: normalise, then one
 * fraction bit per squaring (the classic shift-and-square log). */
static __always_inline __u64 neg_log2_q16(__u32 u)
{
	__u32 k = 0;
	__u64 m = u;
	for (int i = 0; i < 32; i++) {
		if (m & 0x80000000ULL)
			break;
		m <<= 1;
		k++;
	}
	/* m / 2^31 is in [1, 2): log2(u / 2^32) = log2(m / 2^31) - 1 - k. */
	__u64 frac = 0;
	for (int i = 15; i >= 0; i--) {
		m = (m * m) >> 31;
		if (m >= (1ULL << 32)) {
			m >>= 1;
			frac |= 1ULL << i;
		}
	}
	return ((__u64)(k + 1) << 16) - frac;
}

/* An exponential variate with mean cfg.sample_bytes: -ln(U) * N. */
static __always_inline __s64 draw(void)
{
	__u32 u = bpf_get_prandom_u32() | 1;
	/* ln 2 = 45426 / 2^16. */
	__u64 e = (neg_log2_q16(u) * 45426) >> 16;
	return (__s64)((e * cfg.sample_bytes) >> 16) + 1;
}

/* Whether an allocation of `size` bytes is sampled. */
static __always_inline bool sampled(__u64 size)
{
	__u32 z = 0;
	__s64 *left = bpf_map_lookup_elem(&countdown, &z);
	if (!left || size == 0)
		return false;
	if (*left == 0)
		*left = draw();
	*left -= (__s64)size;
	if (*left > 0)
		return false;
	/* Points may fall past this allocation: keep the overshoot. */
	__s64 next = draw();
	for (int i = 0; i < 8 && *left + next <= 0; i++)
		next += draw();
	*left += next;
	return true;
}

/* Bytes a call asks for; 0 for a call that only frees. */
static __always_inline __u64 requested(__u32 f, struct pt_regs *ctx)
{
	switch (f) {
	case LJ_F_MALLOC:
	case LJ_F_VALLOC:
		return ctx->rdi;
	case LJ_F_CALLOC:
		return ctx->rdi * ctx->rsi;
	case LJ_F_ALIGNED_ALLOC:
		return ctx->rsi;
	case LJ_F_POSIX_MEMALIGN:
		return ctx->rdx;
	case LJ_F_REALLOC:
		return ctx->rsi;
	case LJ_F_REALLOCARRAY:
		return ctx->rsi * ctx->rdx;
	case LJ_F_LUA_ALLOCF:
		return ctx->rcx;
	}
	return 0;
}

/* A free of `ptr` (osize bytes when the allocator says): counted; ljleak
 * learns it from the live set. */
static __always_inline void do_free(__u64 ptr, __u64 osize)
{
	if (!ptr)
		return;
	if (!live_del(ptr)) {
		if (cfg.sample_bytes) {
			count(LJ_C_UNTRACKED_FREES, 1);
		} else {
			count(LJ_C_PRE_FREES, 1);
			count(LJ_C_PRE_FREE_BYTES, osize);
		}
		return;
	}
	count(LJ_C_FREES, 1);
}

#include "lua_walk.h"

static __always_inline void copy_regs(struct lj_regs *d, struct pt_regs *s)
{
	d->ip = s->rip;
	d->sp = s->rsp;
	d->bp = s->rbp;
}

/* What a return found: rax, posix_memalign's *memptr, LJ_RET_* flags. */
struct lj_alloc_out {
	__u64 ret, deref;
	__u32 flags;
};

/* How a record copies the user stack: `len` bytes from sp; when the
 * thread's anchor is usable, the copy reaches its second slot and the two
 * return-address slots are checked in the copy itself (one read, no probe
 * reads of single words): if they still hold what ljleak learned, the
 * frames above repeat (ljleak has their bytes) and the record keeps only
 * [sp, slot + 8). Else `full` bytes are copied: up to the thread's top
 * when known, else cfg.stack_bytes. */
struct stack_plan {
	__u64 len, full;
	__u64 slot, word, slot2, word2; /* slot 0: no anchor */
};

static __always_inline void plan_stack(__u64 sp, __u32 tid, __u64 n, struct stack_plan *p)
{
	__u32 k = tid & (LJ_TSLOTS - 1);
	struct lj_anchor *a = bpf_map_lookup_elem(&anchors, &k);
	p->slot = 0;
	p->full = n;
	p->len = n;
	if (!a || a->tid != tid)
		return;
	if (a->top > sp && a->top - sp < n)
		p->full = (a->top - sp + 7) & ~7ULL;
	p->len = p->full;
	if (a->slot >= sp && a->slot2 > a->slot && a->slot2 + 8 - sp <= n) {
		p->slot = a->slot;
		p->word = a->word;
		p->slot2 = a->slot2;
		p->word2 = a->word2;
		p->len = a->slot2 + 8 - sp;
	}
}

/* The word at `off` of a stack copy of `len` valid bytes in a room of
 * `room` (0 when outside the copy: a stale word of the ring never counts). */
static __always_inline __u64 word_at(const __u8 *copy, __u64 off, __u64 len, const __u32 room)
{
	if (off + 8 > len || room < 8 || off > room - 8)
		return 0;
	return *(const __u64 *)(copy + (off & ~7ULL));
}

/* Write an ALLOC record with room for `lroom` bytes of Lua stack and
 * `sroom` of user stack (constants at each call, so the verifier sees the
 * bounds), copying the stack as `pl` says. */
static __always_inline int emit_sized(struct pt_regs *ctx, __u64 sp, const struct lj_pending *q,
				      __u32 tid, const struct lj_alloc_out *o,
				      const struct lj_lua_snap *snap, const struct stack_plan *pl,
				      const __u32 lroom, const __u32 sroom)
{
	struct lj_rec_alloc *e = bpf_ringbuf_reserve(&events, sizeof(*e) + lroom + sroom, 0);
	if (!e) {
		count(LJ_C_LOST, 1);
		return 0;
	}
	e->type = LJ_REC_ALLOC;
	e->tid = tid;
	e->time = 0; /* ljleak stamps records as it drains them */
	e->cookie = q->cookie;
	e->sampled = q->sampled;
	e->lua_room = lroom;
	e->flags = o->flags;
	e->a[0] = q->a0;
	e->a[1] = q->a1;
	e->a[2] = q->a2;
	e->a[3] = q->a3;
	e->ret = o->ret;
	e->deref = o->deref;
	e->entry_ip = q->ip;
	copy_regs(&e->regs, ctx);
	e->lua = *snap;
	if (lroom) {
		__u64 ll = snap->lstack_len;
		if (ll > lroom)
			ll = lroom;
		if (ll && bpf_probe_read_user(e->data, ll, (void *)snap->lstack_from)) {
			e->lua.flags = (e->lua.flags & ~LJ_LUA_OK) | LJ_LUA_BAD;
			ll = 0;
		}
		e->lua.lstack_len = ll;
	} else {
		e->lua.lstack_len = 0;
	}
	e->stack_len = 0;
	e->anchor = 0;
	e->anchor_word = 0;
	__u8 *copy = e->data + lroom;
	__u64 len = pl->len;
	if (pl->slot) {
		if (len > sroom)
			len = sroom;
		if (len && bpf_probe_read_user(copy, len, (void *)sp) == 0 &&
		    word_at(copy, pl->slot - sp, len, sroom) == pl->word &&
		    word_at(copy, pl->slot2 - sp, len, sroom) == pl->word2) {
			e->stack_len = pl->slot + 8 - sp;
			e->anchor = pl->slot;
			e->anchor_word = pl->word;
			count(LJ_C_ANCHORED, 1);
			count(LJ_C_STACK_BYTES, len);
			bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
			return 1;
		}
		len = pl->full;
		if (len > sroom) {
			/* This path does not pass the anchor and needs more
			 * room: the caller retries in a larger record. */
			bpf_ringbuf_discard(e, BPF_RB_NO_WAKEUP);
			return -1;
		}
	}
	/* Near the top of a stack a long copy faults where the mapping ends,
	 * at a page boundary: end the copy a page lower each time (halving
	 * could stop it pages short of the outer frames), then halve. */
	for (int i = 0; i < 8; i++) {
		if (len > sroom)
			len = sroom;
		if (len == 0)
			break;
		if (bpf_probe_read_user(copy, len, (void *)sp) == 0) {
			e->stack_len = len;
			count(LJ_C_STACK_BYTES, len);
			break;
		}
		__u64 lower = ((sp + len - 1) & ~4095ULL) - sp;
		len = i < 5 && lower < len ? lower : (len >> 1) & ~7ULL;
	}
	bpf_ringbuf_submit(e, BPF_RB_NO_WAKEUP);
	return 1;
}

/* Copies that end at an anchor are short: a record of this room keeps
 * the ring's footprint (and its cache misses) small. */
#define LJ_SHORT_STACK 1024

/* The ALLOC record of a tracked call, at its return: registers, Lua
 * frames, stack copy, in a record only as large as the copy needs (one of
 * four sizes). */
static __always_inline bool emit_alloc(struct pt_regs *ctx, __u64 sp, const struct lj_pending *q,
				       __u32 tid, const struct lj_alloc_out *o)
{
	const __u32 n = cfg.stack_bytes & ~7U;
	struct lj_lua_snap snap;
	lua_snap(sp, &snap);
	struct stack_plan pl = {};
	if (n > 0 && n <= LJ_MAX_STACK)
		plan_stack(sp, tid, n, &pl);
	bool lua = snap.lstack_len > 0 && (snap.flags & LJ_LUA_OK);
	if (pl.len <= LJ_SHORT_STACK || n <= LJ_SHORT_STACK) {
		int r = lua ? emit_sized(ctx, sp, q, tid, o, &snap, &pl, LJ_LUA_STACK,
					 LJ_SHORT_STACK) :
			      emit_sized(ctx, sp, q, tid, o, &snap, &pl, 0, LJ_SHORT_STACK);
		if (r >= 0)
			return r;
		pl.slot = 0;
		pl.len = pl.full;
	}
	const __u32 room = n <= LJ_MAX_STACK ? n : 0;
	if (lua)
		return emit_sized(ctx, sp, q, tid, o, &snap, &pl, LJ_LUA_STACK, room) > 0;
	return emit_sized(ctx, sp, q, tid, o, &snap, &pl, 0, room) > 0;
}

static __always_inline int on_entry(struct pt_regs *ctx, __u64 cookie, __u32 tid)
{
	__u32 f = cookie & 0xff;
	__u64 sp = ctx->rsp;
	/* A thread's entry stays in `pending` once made: sp 0 marks it idle
	 * (an update and a delete per call cost more than the write). */
	struct lj_pending *p = pend_of(tid);
	if (p && p->sp) {
		if (p->sp > sp) {
			/* Called from inside a traced call on this thread
			 * (posix_memalign -> malloc, realloc(p, 0) -> free). */
			count(LJ_C_NESTED, 1);
			return 1;
		}
		/* Its return never came (longjmp, a thread that died). */
		count(LJ_C_UNMATCHED, 1);
		p->sp = 0;
	}
	if (f == LJ_F_FREE) {
		do_free(ctx->rdi, 0);
		return 1;
	}
	__u64 size = requested(f, ctx);
	bool track = true, smp = false;
	if (size == 0) {
		/* realloc(p, 0), allocf(.., nsize 0): a free. Still pending, so
		 * the free it calls inside is nested. */
		if (f == LJ_F_REALLOC)
			do_free(ctx->rdi, 0);
		else if (f == LJ_F_LUA_ALLOCF)
			do_free(ctx->rsi, ctx->rdx);
		track = false;
	} else if (cfg.sample_bytes) {
		if (!sampled(size)) {
			/* No return trap for this call. The old block of a
			 * realloc may go: forget it if tracked. */
			count(LJ_C_ALLOCS, 1);
			count(LJ_C_ALLOC_BYTES, size);
			if (f == LJ_F_REALLOC || f == LJ_F_REALLOCARRAY)
				do_free(ctx->rdi, 0);
			else if (f == LJ_F_LUA_ALLOCF)
				do_free(ctx->rsi, ctx->rdx);
			return 1;
		}
		smp = true;
		count(LJ_C_SAMPLED, 1);
	}
	if (p) {
		p->a0 = ctx->rdi;
		p->a1 = ctx->rsi;
		p->a2 = ctx->rdx;
		p->a3 = ctx->rcx;
		p->cookie = cookie;
		p->ip = ctx->rip;
		p->track = track;
		p->sampled = smp;
		p->sp = sp;
	} else {
		struct lj_pending np = {
			.tid = tid,
			.sp = sp,
			.a0 = ctx->rdi,
			.a1 = ctx->rsi,
			.a2 = ctx->rdx,
			.a3 = ctx->rcx,
			.cookie = cookie,
			.ip = ctx->rip,
			.track = track,
			.sampled = smp,
		};
		bpf_map_update_elem(&pending, &tid, &np, BPF_ANY);
	}
	return 0;
}

static __always_inline void forget_old(struct pt_regs *ctx, struct lj_pending *p, __u32 tid,
				       __u32 f)
{
	if (f == LJ_F_REALLOC || f == LJ_F_REALLOCARRAY) {
		if (p->a0 && !live_del(p->a0)) {
			if (cfg.sample_bytes) {
				count(LJ_C_UNTRACKED_FREES, 1);
			} else {
				count(LJ_C_PRE_FREES, 1);
			}
		} else if (p->a0) {
			count(LJ_C_FREES, 1);
		}
	} else if (f == LJ_F_LUA_ALLOCF && p->a1) {
		if (!live_del(p->a1)) {
			if (cfg.sample_bytes) {
				count(LJ_C_UNTRACKED_FREES, 1);
			} else {
				count(LJ_C_PRE_FREES, 1);
				count(LJ_C_PRE_FREE_BYTES, p->a2);
			}
		} else {
			count(LJ_C_FREES, 1);
		}
	}
}

static __always_inline int on_return(struct pt_regs *ctx, __u32 tid)
{
	struct lj_pending *p = pend_of(tid);
	if (!p || !p->sp)
		return 0;
	struct lj_pending q = *p;
	p->sp = 0;
	__u32 f = q.cookie & 0xff;
	__u64 ret = ctx->rax, ptr = ret, deref = 0, size = 0;
	if (f == LJ_F_POSIX_MEMALIGN) {
		ptr = 0;
		if (ret == 0 && bpf_probe_read_user(&deref, 8, (void *)q.a0) == 0)
			ptr = deref;
		size = q.a2;
	} else {
		size = f == LJ_F_CALLOC		    ? q.a0 * q.a1 :
		       f == LJ_F_ALIGNED_ALLOC	    ? q.a1 :
		       f == LJ_F_REALLOC	    ? q.a1 :
		       f == LJ_F_REALLOCARRAY	    ? q.a1 * q.a2 :
		       f == LJ_F_LUA_ALLOCF	    ? q.a3 :
						      q.a0;
	}
	if (!q.track && size == 0)
		return 0; /* a free-like call: handled at entry */
	if (ptr == 0) {
		if (size > 0)
			count(LJ_C_FAILED, 1);
		return 0;
	}
	forget_old(ctx, &q, tid, f);
	if (!cfg.sample_bytes) {
		count(LJ_C_ALLOCS, 1);
		count(LJ_C_ALLOC_BYTES, size);
	}
	if (!q.track) {
		/* Not tracked: a block reusing a tracked address means its
		 * free was missed. */
		live_del(ptr);
		return 0;
	}
	struct lj_alloc_out o = { .ret = ret, .deref = deref };
	bool added = live_add(ptr);
	if (!added) {
		count(LJ_C_LIVE_FULL, 1);
		o.flags |= LJ_RET_UNTRACKED;
	}
	/* sp as the call left it: the caller's frames are intact. */
	__u64 sp = ctx->rsp;
	asm volatile("" : "+r"(sp));
	if (!emit_alloc(ctx, sp, &q, tid, &o) && added)
		live_del(ptr);
	return 0;
}

SEC("uprobe.session")
int ljleak_alloc(struct pt_regs *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 cookie = bpf_get_attach_cookie(ctx);
	count(LJ_C_HITS, 1);
	if (bpf_session_is_return())
		return on_return(ctx, tid);
	return on_entry(ctx, cookie, tid);
}

/* Benchmark floor (ljleak leaks --debug-count-only): the same sites and
 * traps as ljleak_alloc (a return trap for every allocation call, none for
 * free), counting only. */
SEC("uprobe.session")
int ljleak_count(struct pt_regs *ctx)
{
	count(LJ_C_HITS, 1);
	if (bpf_session_is_return())
		return 0;
	return (bpf_get_attach_cookie(ctx) & 0xff) == LJ_F_FREE;
}
