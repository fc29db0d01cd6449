/* The Lua state at an allocation. The kernel side only copies what the
 * frame walk needs while the probe runs (the Lua stack lives in the heap
 * and changes as soon as the thread continues): the running coroutine
 * (g->cur_L), validated against the interpreter's C frame (its SAVE_L must
 * be that coroutine: lj_frame.h cframe_L), the frames' base (g->jit_base
 * while a trace runs, else L->base), the Lua stack slots below the base in
 * one read (by the caller, into the record's data), and the chain of C
 * frames. ljleak replays its own frame walk
 * (lj_debug.c's rules, src/luajit/backtrace.rs) over this copy, so frame
 * links, saved PCs, vararg, continuation and C frames, GC64 and non-GC64
 * are decoded in one place. All offsets come from cfg.lua. */

/* Read a GC reference or MRef of `size` bytes (8 with GC64, else 4). */
static __always_inline int read_ref(__u64 *out, const void *addr, __u32 gc64)
{
	*out = 0;
	if (gc64)
		return bpf_probe_read_user(out, 8, addr);
	return bpf_probe_read_user(out, 4, addr);
}

/* The reference at byte `off` of a block read (`off` comes from the
 * read-only configuration: a constant to the verifier). */
static __always_inline __u64 ref_at(const void *blk, __u32 off, __u32 gc64)
{
	if (gc64)
		return *(const __u64 *)((const __u8 *)blk + off);
	return *(const __u32 *)((const __u8 *)blk + off);
}

/* A probe read costs ~65 ns here whatever its size (up to a few cache
 * lines): the fields are read in blocks where the layout allows (g->cur_L
 * with g->jit_base; L->base up to L->cframe; the saved L with the C frame
 * chain), else one by one. */
#define LJ_GBLK 16
#define LJ_LBLK 64
_Static_assert(sizeof(((struct lj_lua_snap *)0)->cf) >= LJ_LBLK, "block room");

static __always_inline void lua_snap(__u64 sp, struct lj_lua_snap *s)
{
	const __u64 g = cfg.lua.g;
	const __u32 gc64 = cfg.lua.gc64;
	const __u32 rsz = gc64 ? 8 : 4;
	s->l = 0;
	s->base = 0;
	s->stack = 0;
	s->cframe = 0;
	s->lstack_from = 0;
	s->lstack_len = 0;
	s->flags = 0;
	s->ncf = 0;
	s->pad = 0;
	if (!g)
		return;
	count(LJ_C_LUA_WALKS, 1);
	__u64 l = 0, cf = 0, base = 0, stack = 0, jit_base = 0, save_l = 0;
	/* g->cur_L and g->jit_base. */
	const __u32 g0 = cfg.lua.g_cur_l, gj = cfg.lua.g_jit_base;
	/* The blocks are read into the room of the C frames (stack space is
	 * short), which the chain overwrites afterwards. */
	if (gj > g0 && gj - g0 + rsz <= LJ_GBLK) {
		__u8 *blk = (__u8 *)s->cf;
		if (bpf_probe_read_user(blk, gj - g0 + rsz, (void *)(g + g0)))
			return;
		l = ref_at(blk, 0, gc64);
		jit_base = ref_at(blk, gj - g0, gc64);
	} else if (read_ref(&l, (void *)(g + g0), gc64) ||
		   read_ref(&jit_base, (void *)(g + gj), gc64)) {
		return;
	}
	if (!l)
		return;
	s->l = l;
	/* L->base (a pointer in every build), L->stack, L->cframe. */
	const __u32 lb = cfg.lua.l_base, ls = cfg.lua.l_stack, lc = cfg.lua.l_cframe;
	if (ls > lb && lc > lb && ls + rsz - lb <= LJ_LBLK && lc + 8 - lb <= LJ_LBLK) {
		__u8 *blk = (__u8 *)s->cf;
		const __u32 n = (ls + rsz > lc + 8 ? ls + rsz : lc + 8) - lb;
		if (bpf_probe_read_user(blk, n, (void *)(l + lb)))
			goto bad;
		base = *(const __u64 *)((const __u8 *)blk);
		stack = ref_at(blk, ls - lb, gc64);
		cf = *(const __u64 *)((const __u8 *)blk + (lc - lb));
	} else if (bpf_probe_read_user(&cf, 8, (void *)(l + lc)) ||
		   bpf_probe_read_user(&base, 8, (void *)(l + lb)) ||
		   read_ref(&stack, (void *)(l + ls), gc64)) {
		goto bad;
	}
	s->cframe = cf;
	cf &= ~3ULL; /* CFRAME_RAWMASK */
	/* The C frame must be on this thread's stack, above the probe's sp. */
	if (cf <= sp || cf - sp > (8 << 20))
		goto bad;
	if (jit_base) {
		base = jit_base;
		s->flags |= LJ_LUA_TRACE;
	}
	if (base <= stack)
		goto bad;
	/* The C frame chain (lua_call from C, FFI callbacks nest segments);
	 * the innermost frame's saved L must be the running coroutine. */
	const __u32 sl = cfg.lua.cf_save_l;
	const bool sl_in = sl + rsz <= sizeof(s->cf[0].w);
	for (int i = 0; i < LJ_MAX_CF; i++) {
		if (!cf)
			break;
		if (bpf_probe_read_user(s->cf[i].w, sizeof(s->cf[i].w), (void *)cf)) {
			if (i == 0)
				goto bad;
			break;
		}
		if (i == 0) {
			if (sl_in)
				save_l = ref_at(s->cf[0].w, sl, gc64);
			else if (read_ref(&save_l, (void *)(cf + sl), gc64))
				goto bad;
			if (save_l != l)
				goto bad;
		}
		s->cf[i].addr = cf;
		s->ncf = i + 1;
		__u32 prev = cfg.lua.cf_prev / 8;
		if (prev >= 5)
			break;
		cf = s->cf[i].w[prev] & ~3ULL;
	}
	s->base = base;
	s->stack = stack;
	__u64 len = base - stack;
	if (len > LJ_LUA_STACK)
		len = LJ_LUA_STACK;
	len &= ~7ULL;
	/* The caller copies these bytes into the record. */
	s->lstack_from = base - len;
	s->lstack_len = len;
	s->flags |= LJ_LUA_OK;
	return;
bad:
	s->ncf = 0;
	s->flags |= LJ_LUA_BAD;
	count(LJ_C_LUA_BAD, 1);
}
