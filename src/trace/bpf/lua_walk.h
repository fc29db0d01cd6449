/* The Lua call chain at an allocation (filled in by lua_walk). */
static __always_inline void lua_walk(struct pt_regs *ctx, struct lj_rec_entry *e)
{
	(void)ctx;
	(void)e;
}
