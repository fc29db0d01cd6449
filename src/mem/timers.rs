//! The lua module's timers: the pending and running counts it keeps in its
//! main conf (`lmcf->pending_timers`, `lmcf->running_timers`), and the
//! pending timers grouped by callback, from nginx's timer rbtree
//! (`ngx_event_timer_rbtree`, exported): an event whose handler lies in the
//! lua module's code and whose `data` is a timer context holding a
//! coroutine of this VM is an `ngx.timer.at` timer; the callback is the
//! function at the base of that coroutine (ngx_http_lua_ngx_timer_helper
//! moves it there before the timer fires).

use std::collections::BTreeMap;

use super::nginx::{Site, Timers};
use crate::luajit::fields::FieldMap;
use crate::luajit::vm::gct;
use crate::luajit::{FoundVm, Vm};
use crate::target::{Maps, Memory, ReadExt};

const LAYOUT: &str = include_str!("layouts/nginx-1.22-x86_64.txt");
const MAX_NODES: usize = 1 << 21;

/// Read the timers; `lua_mod` is `&ngx_http_lua_module`.
pub fn read<M: Memory + ?Sized>(
    m: &M,
    maps: &Maps,
    syms: &super::nginx::Symbols,
    cycle: u64,
    lua_mod: u64,
    found: &FoundVm,
    warnings: &mut Vec<String>,
) -> Timers {
    let fm = FieldMap::parse(LAYOUT);
    let o = |k: &str| fm.get(k).map(|x| x.0).expect("nginx table complete");
    let mut t = Timers::default();
    // lmcf, as locate.rs reaches it: conf_ctx[http.index] -> main_conf[ctx_index].
    let lmcf = (|| -> Option<u64> {
        let http_mod = syms.http_module?;
        let conf_ctx = m.u64(cycle).ok()?;
        let hidx = m.u64(http_mod + 8).ok().filter(|i| *i < 4096)?;
        let http_ctx = m.u64(conf_ctx + 8 * hidx).ok().filter(|x| *x != 0)?;
        let main_conf = m.u64(http_ctx).ok()?;
        let cidx = m.u64(lua_mod).ok().filter(|i| *i < 4096)?;
        m.u64(main_conf + 8 * cidx).ok().filter(|x| *x != 0)
    })();
    if let Some(l) = lmcf {
        let rd = |k: &str| m.u64(l + o(k)).ok();
        if let (Some(mp), Some(p), Some(mr), Some(r)) = (
            rd("ngx_http_lua_main_conf_t.max_pending_timers"),
            rd("ngx_http_lua_main_conf_t.pending_timers"),
            rd("ngx_http_lua_main_conf_t.max_running_timers"),
            rd("ngx_http_lua_main_conf_t.running_timers"),
        ) {
            if (1..1 << 31).contains(&mp) && p <= mp && (1..1 << 31).contains(&mr) && r <= mr {
                t.found = true;
                t.pending = p;
                t.running = r;
            } else {
                warnings.push(format!(
                    "timers: lua main conf counters implausible ({p}/{mp} pending, {r}/{mr} running): lua module version not in the table?"
                ));
            }
        }
    }
    // The rbtree.
    let Some(tree) = syms.timer_rbtree else {
        return t;
    };
    let module_code: Vec<(u64, u64)> = maps
        .list
        .iter()
        .filter(|x| x.exec && x.path.contains("ngx_http_lua_module"))
        .map(|x| (x.start, x.end))
        .collect();
    let vm = Vm::new(m, &found.layout, found.roots.g, found.roots.main);
    let (Ok(root), Ok(sentinel)) = (
        m.u64(tree + o("ngx_rbtree_t.root")),
        m.u64(tree + o("ngx_rbtree_t.sentinel")),
    ) else {
        return t;
    };
    let (left, right) = (o("ngx_rbtree_node_t.left"), o("ngx_rbtree_node_t.right"));
    let timer = o("ngx_event_t.timer");
    let mut sites: BTreeMap<String, u64> = BTreeMap::new();
    let mut stack = vec![root];
    let mut seen = 0usize;
    let mut lua_timers = 0u64;
    while let Some(n) = stack.pop() {
        if n == sentinel || n == 0 {
            continue;
        }
        seen += 1;
        if seen > MAX_NODES {
            warnings.push("timers: rbtree too large (changing under us?)".into());
            break;
        }
        let ev = n.wrapping_sub(timer);
        if let Ok(h) = m.u64(ev + o("ngx_event_t.handler")) {
            if module_code.iter().any(|&(s, e)| h >= s && h < e) {
                if let Some(site) = timer_site(&vm, m, ev, &o) {
                    lua_timers += 1;
                    *sites.entry(site).or_default() += 1;
                }
            }
        }
        for side in [left, right] {
            if let Ok(c) = m.u64(n + side) {
                stack.push(c);
            }
        }
    }
    if !t.found {
        t.pending = lua_timers;
    }
    t.by_callback = sites
        .into_iter()
        .map(|(site, count)| Site { site, count })
        .collect();
    t.by_callback
        .sort_by(|a, b| b.count.cmp(&a.count).then(a.site.cmp(&b.site)));
    t
}

/// `chunk:line` of the callback of the lua timer event `ev`, or None when
/// `ev` is not one (its context's coroutine must be a thread of this VM).
fn timer_site<M: Memory + ?Sized>(
    vm: &Vm<'_, M>,
    m: &M,
    ev: u64,
    o: &impl Fn(&str) -> u64,
) -> Option<String> {
    let f = &vm.lay.f;
    let tctx = m.u64(ev + o("ngx_event_t.data")).ok()?;
    let co = m.u64(tctx + o("ngx_http_lua_timer_ctx_t.co")).ok()?;
    let (_, t) = vm.header(co).ok()?;
    if t != gct::THREAD || f.l_glref.get(m, co).ok()? != vm.g {
        return None;
    }
    let base = f.l_base.get(m, co).ok()?;
    let (ft, func) = crate::luajit::names::tv_gcobj(vm, base).ok()??;
    if ft != gct::FUNC || f.f_ffid.get(m, func).ok()? != 0 {
        return Some("[C function]".into());
    }
    // A Lua function's pc points at its bytecode, right after its GCproto.
    let pt = f.f_pc.get(m, func).ok()?.wrapping_sub(f.p_size.off);
    let chunk = vm.gcref(pt + f.p_chunkname.off).ok()?;
    let name = vm.string(chunk, 512).ok()?;
    let line = f.p_firstline.get(m, pt).ok()?;
    let name = name.strip_prefix('@').unwrap_or(&name);
    Some(format!("{}:{line}", super::printable(name)))
}
