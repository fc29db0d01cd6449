//! The object graph of a copied heap: every object the heap walk finds,
//! indexed `0..n` by address, and its strong references as CSR arrays
//! (`off[i]..off[i+1]` indexes `dst`). Edge names are not stored: they are
//! recomputed for the few edges a report prints ([`Graph::edge_label`]).
//!
//! Memory: per object 8 (address) + 8 (size) + 1 (type) + 4 (offset)
//! bytes, per edge 4 bytes.
//!
//! # Weak-keyed tables
//!
//! The graph holds what survives the collector's next full cycle. LuaJIT
//! 2.1 has no ephemerons: `gc_traverse_tab` marks the values of a
//! weak-keyed table strongly, then `gc_clearweak` (atomic phase) clears
//! every entry whose key was not marked. So an entry `t[k] = v` with a
//! collectable, non-string key ([`Label::WeakKeyVal`]) becomes:
//! - an edge `k → v` ([`Label::KeyOf`]) when `k` is reachable without the
//!   table's help: the entry lives exactly as long as its key, so the
//!   holder of the key (Kong's plugin list of confs) retains the value,
//!   not the cache table;
//! - an edge `t → v` when `k` is reachable only through weak-keyed values
//!   (a value referring to its own key): LuaJIT marks it every cycle and
//!   the table keeps both for good;
//! - nothing when `k` is not marked: the next cycle clears the entry.

use crate::luajit::refs::{Label, Refs};
use crate::luajit::vm::{mark, Vm};
use crate::luajit::walk::{self, Limits, List, WalkReport};
use crate::target::Memory;

/// Index of the virtual super-root in edge lists (`n`, one past the last
/// object).
pub type NodeId = u32;

/// The object graph.
#[derive(Debug, Default)]
pub struct Graph {
    /// Object addresses, ascending.
    pub addr: Vec<u64>,
    /// Exact allocation sizes.
    pub size: Vec<u64>,
    /// Type tags (`gct`).
    pub gct: Vec<u8>,
    /// CSR offsets into `dst`, `n + 1` entries.
    pub off: Vec<u32>,
    /// Edge targets.
    pub dst: Vec<NodeId>,
    /// Successors of the super-root, in the order [`Refs::roots`] gives
    /// them, then pending finalizers.
    pub roots: Vec<NodeId>,
    /// Objects on `g->gc.mmudata` (roots labelled "pending finalizer").
    pub pending: Vec<NodeId>,
    /// Fixed objects (never collected; roots labelled "fixed").
    pub fixed: Vec<NodeId>,
    /// References to addresses that are no object the walk found.
    pub dangling: u64,
    /// The heap walk's report (totals, warnings).
    pub walk: WalkReport,
    /// Problems met while reading references.
    pub warnings: Vec<String>,
    /// `(key, value)` edges added for weak-keyed entries, sorted.
    pub key_edges: Vec<(NodeId, NodeId)>,
    /// Weak-keyed entries the next cycle clears (their key is not marked).
    pub cleared_entries: u64,
}

/// An entry `t[k] = v` of a weak-keyed table with a collectable key.
#[derive(Debug, Clone, Copy)]
struct Ephemeron {
    t: NodeId,
    k: NodeId,
    v: NodeId,
}

const MAX_WARNINGS: usize = 20;

impl Graph {
    /// Number of objects.
    pub fn len(&self) -> usize {
        self.addr.len()
    }

    /// True when the heap had no objects.
    pub fn is_empty(&self) -> bool {
        self.addr.is_empty()
    }

    /// The super-root's id.
    pub fn super_root(&self) -> NodeId {
        self.addr.len() as NodeId
    }

    /// Number of edges (super-root edges excluded).
    pub fn edges(&self) -> usize {
        self.dst.len()
    }

    /// Successors of `v` (the super-root included).
    #[inline]
    pub fn succ(&self, v: NodeId) -> &[NodeId] {
        if v as usize == self.addr.len() {
            &self.roots
        } else {
            &self.dst[self.off[v as usize] as usize..self.off[v as usize + 1] as usize]
        }
    }

    /// The object at `addr`.
    #[inline]
    pub fn index(&self, addr: u64) -> Option<NodeId> {
        index_in(&self.addr, addr)
    }

    /// Walk the heap of `vm` and read every object's references.
    pub fn build<M: Memory + ?Sized>(vm: &Vm<'_, M>, lim: Limits) -> Graph {
        // (addr, size, gct, pending finalizer, fixed)
        let mut objs: Vec<(u64, u64, u8, bool, bool)> = Vec::new();
        let rep = walk::walk(vm, lim, |o| {
            let fixed = o.marked & (mark::FIXED | mark::SFIXED) != 0;
            objs.push((o.addr, o.size, o.gct, o.list == List::Finalizers, fixed));
        });
        objs.sort_unstable_by_key(|o| o.0);
        objs.dedup_by_key(|o| o.0);
        let mut g = Graph {
            addr: objs.iter().map(|o| o.0).collect(),
            size: objs.iter().map(|o| o.1).collect(),
            gct: objs.iter().map(|o| o.2).collect(),
            walk: rep,
            ..Default::default()
        };
        let select = |pick: fn(&(u64, u64, u8, bool, bool)) -> bool| -> Vec<NodeId> {
            (0..objs.len())
                .filter(|&i| pick(&objs[i]))
                .map(|i| i as NodeId)
                .collect()
        };
        let pending = select(|o| o.3);
        let fixed = select(|o| o.4);
        drop(objs);
        let mut refs = Refs::new(vm);
        let mut roots = Vec::new();
        let mut dangling = 0u64;
        if let Err(e) = refs.roots(|_, a| match index_in(&g.addr, a) {
            Some(i) => roots.push(i),
            None => dangling += 1,
        }) {
            g.warn(format!("GC roots: {e}"));
        }
        roots.extend_from_slice(&pending);
        roots.extend_from_slice(&fixed);
        g.pending = pending;
        g.fixed = fixed;
        g.roots = roots;
        let n = g.addr.len();
        let mut off = Vec::with_capacity(n + 1);
        let mut dst: Vec<NodeId> = Vec::with_capacity(n * 2);
        let mut warnings = Vec::new();
        let mut eph: Vec<Ephemeron> = Vec::new();
        let mut weak_vals: Vec<(u32, NodeId)> = Vec::new();
        for i in 0..n {
            off.push(dst.len() as u32);
            let (a, t) = (g.addr[i], g.gct[i]);
            let addrs = &g.addr;
            weak_vals.clear();
            let res = refs.refs(a, t, &mut |l, target| match index_in(addrs, target) {
                Some(j) => match l {
                    Label::WeakKeyVal(node) => weak_vals.push((node, j)),
                    _ => dst.push(j),
                },
                None => dangling += 1,
            });
            for &(node, v) in &weak_vals {
                if let Ok(crate::luajit::refs::Tv::Gc(_, k)) = refs.node_key(a, node) {
                    if let Some(k) = index_in(&g.addr, k) {
                        eph.push(Ephemeron {
                            t: i as NodeId,
                            k,
                            v,
                        });
                    }
                }
            }
            if let Err(e) = res {
                if warnings.len() < MAX_WARNINGS {
                    warnings.push(format!(
                        "references of {} at {a:#x}: {e}",
                        crate::luajit::vm::type_name(t)
                    ));
                }
            }
            if dst.len() > u32::MAX as usize - (1 << 24) {
                warnings.push("more than 4G references; graph cut short".into());
                off.resize(n, dst.len() as u32);
                break;
            }
        }
        off.push(dst.len() as u32);
        g.off = off;
        g.dst = dst;
        g.dangling = dangling;
        for w in warnings {
            g.warn(w);
        }
        if !eph.is_empty() {
            g.resolve_weak_keys(&eph);
        }
        g
    }

    /// Turn weak-keyed entries into the edges the next cycle keeps (see
    /// the module docs).
    fn resolve_weak_keys(&mut self, eph: &[Ephemeron]) {
        let n = self.len();
        // LuaJIT's mark: weak-keyed values are marked like strong ones.
        let marked = self.reach(eph, |seen, e| seen[e.t as usize]);
        // Ephemeron reachability: a value counts once table and key do.
        let live = self.reach(eph, |seen, e| seen[e.t as usize] && seen[e.k as usize]);
        let mut extra: Vec<(NodeId, NodeId)> = Vec::new();
        let mut key_edges = Vec::new();
        for e in eph {
            let (t, k) = (e.t as usize, e.k as usize);
            if live[t] && live[k] {
                extra.push((e.k, e.v));
                key_edges.push((e.k, e.v));
            } else if marked[t] && marked[k] {
                extra.push((e.t, e.v));
            } else if marked[t] {
                self.cleared_entries += 1;
            }
        }
        key_edges.sort_unstable();
        key_edges.dedup();
        self.key_edges = key_edges;
        extra.sort_unstable();
        let mut off = Vec::with_capacity(n + 1);
        let mut dst = Vec::with_capacity(self.dst.len() + extra.len());
        let mut x = 0;
        for u in 0..n {
            off.push(dst.len() as u32);
            dst.extend_from_slice(&self.dst[self.off[u] as usize..self.off[u + 1] as usize]);
            while x < extra.len() && extra[x].0 as usize == u {
                dst.push(extra[x].1);
                x += 1;
            }
        }
        off.push(dst.len() as u32);
        self.off = off;
        self.dst = dst;
    }

    /// Objects reachable from the roots over the strong edges plus the
    /// weak-keyed values whose entry `counts` (given what is reached so
    /// far). Iterative, bounded by the number of objects and entries.
    fn reach(&self, eph: &[Ephemeron], counts: impl Fn(&[bool], &Ephemeron) -> bool) -> Vec<bool> {
        let n = self.len();
        // Entries by table and by key, so reaching either re-checks them.
        let mut by_node: Vec<(NodeId, u32)> = Vec::with_capacity(eph.len() * 2);
        for (i, e) in eph.iter().enumerate() {
            by_node.push((e.t, i as u32));
            if e.k != e.t {
                by_node.push((e.k, i as u32));
            }
        }
        by_node.sort_unstable();
        let mut seen = vec![false; n];
        let mut stack: Vec<NodeId> = Vec::new();
        for &r in &self.roots {
            if !seen[r as usize] {
                seen[r as usize] = true;
                stack.push(r);
            }
        }
        while let Some(u) = stack.pop() {
            for &v in self.succ(u) {
                if !seen[v as usize] {
                    seen[v as usize] = true;
                    stack.push(v);
                }
            }
            let from = by_node.partition_point(|x| x.0 < u);
            for &(_, i) in by_node[from..].iter().take_while(|x| x.0 == u) {
                let e = &eph[i as usize];
                if !seen[e.v as usize] && counts(&seen, e) {
                    seen[e.v as usize] = true;
                    stack.push(e.v);
                }
            }
        }
        seen
    }

    fn warn(&mut self, w: String) {
        if self.warnings.len() < MAX_WARNINGS {
            self.warnings.push(w);
        }
    }

    /// The label of the first reference from `u` to `v` (either may be the
    /// super-root), found by enumerating `u`'s references again.
    pub fn edge_label<M: Memory + ?Sized>(
        &self,
        refs: &mut Refs<'_, '_, M>,
        u: NodeId,
        v: NodeId,
    ) -> Option<Label> {
        let target = *self.addr.get(v as usize)?;
        let mut found = None;
        if u == self.super_root() {
            if self.pending.binary_search(&v).is_ok() {
                return Some(Label::PendingFinalizer);
            }
            let _ = refs.roots(|l, a| {
                if found.is_none() && a == target {
                    found = Some(l);
                }
            });
            if found.is_none() && self.fixed.binary_search(&v).is_ok() {
                return Some(Label::Fixed);
            }
            return found;
        }
        if self.key_edges.binary_search(&(u, v)).is_ok() {
            return Some(Label::KeyOf);
        }
        let (a, t) = (self.addr[u as usize], self.gct[u as usize]);
        let _ = refs.refs(a, t, &mut |l, x| {
            if found.is_none() && x == target {
                found = Some(l);
            }
        });
        found
    }

    /// The name of the reference from `u` to `v`.
    pub fn edge_name<M: Memory + ?Sized>(
        &self,
        refs: &mut Refs<'_, '_, M>,
        u: NodeId,
        v: NodeId,
    ) -> String {
        let src = self.addr.get(u as usize).copied().unwrap_or(0);
        match self.edge_label(refs, u, v) {
            Some(l) => refs.name(src, l, self.addr[v as usize]),
            None => "?".into(),
        }
    }
}

#[inline]
fn index_in(addrs: &[u64], a: u64) -> Option<NodeId> {
    addrs.binary_search(&a).ok().map(|i| i as NodeId)
}
