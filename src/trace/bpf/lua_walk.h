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

static __always_inline void lua_snap(__u64 sp, struct lj_lua_snap *s)
{
	const __u64 g = cfg.lua.g;
	const __u32 gc64 = cfg.lua.gc64;
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
	if (read_ref(&l, (void *)(g + cfg.lua.g_cur_l), gc64) || !l)
		return;
	s->l = l;
	if (bpf_probe_read_user(&cf, 8, (void *)(l + cfg.lua.l_cframe)))
		goto bad;
	s->cframe = cf;
	cf &= ~3ULL; /* CFRAME_RAWMASK */
	/* The C frame must be on this thread's stack, above the probe's sp. */
	if (cf <= sp || cf - sp > (8 << 20))
		goto bad;
	if (read_ref(&save_l, (void *)(cf + cfg.lua.cf_save_l), gc64) || save_l != l)
		goto bad;
	if (read_ref(&jit_base, (void *)(g + cfg.lua.g_jit_base), gc64))
		goto bad;
	if (jit_base) {
		base = jit_base;
		s->flags |= LJ_LUA_TRACE;
	} else if (bpf_probe_read_user(&base, 8, (void *)(l + cfg.lua.l_base))) {
		/* TValue *base: a pointer in every build, not an MRef. */
		goto bad;
	}
	if (read_ref(&stack, (void *)(l + cfg.lua.l_stack), gc64) || base <= stack)
		goto bad;
	s->base = base;
	s->stack = stack;
	__u64 len = base - stack;
	if (len > LJ_LUA_STACK)
		len = LJ_LUA_STACK;
	len &= ~7ULL;
	/* The caller copies these bytes into the record. */
	s->lstack_from = base - len;
	s->lstack_len = len;
	/* The C frame chain (lua_call from C, FFI callbacks nest segments). */
	for (int i = 0; i < LJ_MAX_CF; i++) {
		if (!cf)
			break;
		if (bpf_probe_read_user(s->cf[i].w, sizeof(s->cf[i].w), (void *)cf))
			break;
		s->cf[i].addr = cf;
		s->ncf = i + 1;
		__u32 prev = cfg.lua.cf_prev / 8;
		if (prev >= 5)
			break;
		cf = s->cf[i].w[prev] & ~3ULL;
	}
	s->flags |= LJ_LUA_OK;
	return;
bad:
	s->flags |= LJ_LUA_BAD;
	count(LJ_C_LUA_BAD, 1);
}
