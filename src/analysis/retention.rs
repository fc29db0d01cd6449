//! Retained sizes, leak suspects, shortest retention paths and retention
//! flame graph stacks over an object [`Graph`].
//!
//! The retained size of an object is its own size plus the sizes of every
//! object it dominates: what the collector would free if the object's last
//! strong reference went away. A *leak suspect* is an object whose retained
//! memory is spread over many small dominated objects (an accumulation
//! point, as Eclipse MAT calls it) rather than passed down to one big child:
//! chains of single holders (`registry → _LOADED → mymod → function`) are
//! the path to the suspect, not suspects themselves.

use super::dominators::{DomTree, NONE};
use super::graph::{Graph, NodeId};
use super::retained::Retained;
use crate::luajit::refs::Refs;
use crate::luajit::vm::gct;
use crate::target::Memory;

/// A dominator child holding more than 1/BIG_CHILD of its parent's
/// retained size is "big": its memory is not counted as the parent's own
/// accumulation.
const BIG_CHILD: u64 = 10;

/// Dominators, retained sizes and BFS parents of a graph.
#[derive(Debug)]
pub struct Retention {
    /// The dominator tree from the super-root.
    pub dom: DomTree,
    /// Retained bytes by preorder number.
    pub retained: Vec<u64>,
    /// Objects in each dominator subtree (the object included), by preorder.
    pub count: Vec<u64>,
    /// Retained bytes not passed down to a big dominator child, by preorder.
    pub accumulated: Vec<u64>,
    /// BFS parent of each node id (the super-root for roots; [`NONE`] when
    /// unreachable): shortest paths from the roots.
    pub bfs_parent: Vec<u32>,
}

impl Retention {
    /// Compute everything for `g`.
    pub fn compute(g: &Graph) -> Retention {
        let sr = g.super_root();
        let Retained { dom, retained } = Retained::compute(g);
        let m = dom.order.len();
        let mut count: Vec<u64> = dom.order.iter().map(|&v| u64::from(v != sr)).collect();
        for k in (1..m).rev() {
            count[dom.idom[k] as usize] += count[k];
        }
        let mut accumulated = retained.clone();
        for k in 1..m {
            let p = dom.idom[k] as usize;
            if retained[k] * BIG_CHILD > retained[p] {
                accumulated[p] -= retained[k];
            }
        }
        let bfs_parent = bfs(g);
        Retention {
            dom,
            retained,
            count,
            accumulated,
            bfs_parent,
        }
    }

    /// Preorder number of node `v`, None when unreachable.
    #[inline]
    pub fn pre(&self, v: NodeId) -> Option<usize> {
        self.dom.pre_of(v)
    }

    /// Retained bytes of node `v` (None when unreachable).
    pub fn retained_of(&self, v: NodeId) -> Option<u64> {
        self.pre(v).map(|k| self.retained[k])
    }

    /// Bytes and objects reachable from the roots.
    pub fn reachable(&self) -> (u64, u64) {
        (self.retained[0], self.count[0])
    }

    /// Shortest path from a root to `v`: node ids, root first, `v` last.
    pub fn path(&self, g: &Graph, v: NodeId) -> Option<Vec<NodeId>> {
        let sr = g.super_root();
        let mut p = vec![v];
        let mut x = v;
        loop {
            let up = *self.bfs_parent.get(x as usize)?;
            if up == NONE {
                return None;
            }
            if up == sr {
                break;
            }
            p.push(up);
            x = up;
            if p.len() > g.len() {
                return None;
            }
        }
        p.reverse();
        Some(p)
    }

    /// Names of the edges along the shortest path to `v`, starting with
    /// the root's name; empty names (an upvalue's value) are left out.
    pub fn path_names<M: Memory + ?Sized>(
        &self,
        g: &Graph,
        refs: &mut Refs<'_, '_, M>,
        v: NodeId,
    ) -> Option<Vec<String>> {
        let p = self.path(g, v)?;
        let mut prev = g.super_root();
        let mut names = Vec::with_capacity(p.len());
        for x in p {
            let s = g.edge_name(refs, prev, x);
            if !s.is_empty() {
                names.push(s);
            }
            prev = x;
        }
        Some(names)
    }

    /// Up to `k` leak suspects, biggest accumulation first: objects holding
    /// at least `min_bytes`, and at least half of what they retain, in small
    /// pieces.
    pub fn suspects(&self, k: usize, min_bytes: u64) -> Vec<NodeId> {
        let mut v: Vec<usize> = (1..self.dom.order.len())
            .filter(|&i| {
                let a = self.accumulated[i];
                a >= min_bytes.max(1) && a * 2 >= self.retained[i] && self.count[i] > 1
            })
            .collect();
        v.sort_unstable_by(|&a, &b| {
            self.accumulated[b]
                .cmp(&self.accumulated[a])
                .then(self.retained[b].cmp(&self.retained[a]))
                .then(a.cmp(&b))
        });
        v.truncate(k);
        v.into_iter().map(|i| self.dom.order[i]).collect()
    }

    /// Folded stacks of the retention flame graph: one line per dominator
    /// tree node retaining at least `min_bytes`, its frames the named steps
    /// of the dominator tree path, its weight what it retains minus what its
    /// printed children retain, so the widths add up without double
    /// counting and the whole graph is as wide as everything reachable
    /// (roots too small for a frame of their own share one `(other roots)`
    /// line). Upvalue objects get no frame of their own: the step through
    /// them reads `upvalue name` and lands on the value.
    pub fn folded<M: Memory + ?Sized>(
        &self,
        g: &Graph,
        refs: &mut Refs<'_, '_, M>,
        min_bytes: u64,
    ) -> Vec<String> {
        let m = self.dom.order.len();
        let keep = |k: usize| k > 0 && self.retained[k] >= min_bytes.max(1);
        let transparent = |k: usize| g.gct.get(self.dom.order[k] as usize) == Some(&gct::UPVAL);
        let eff_parent = |k: usize| {
            let mut p = self.dom.idom[k] as usize;
            while p != 0 && transparent(p) {
                p = self.dom.idom[p] as usize;
            }
            p
        };
        let kept: Vec<usize> = (1..m).filter(|&k| keep(k)).collect();
        let mut slot = vec![NONE; m];
        let mut weight: Vec<u64> = Vec::with_capacity(kept.len());
        for (i, &k) in kept.iter().enumerate() {
            slot[k] = i as u32;
            weight.push(self.retained[k]);
        }
        let mut rest = self.retained[0];
        for &k in &kept {
            match self.dom.idom[k] as usize {
                0 => rest -= self.retained[k],
                p => weight[slot[p] as usize] -= self.retained[k],
            }
        }
        for &k in kept.iter().rev() {
            if transparent(k) {
                let w = std::mem::take(&mut weight[slot[k] as usize]);
                match eff_parent(k) {
                    0 => rest += w,
                    p => weight[slot[p] as usize] += w,
                }
            }
        }
        // Stacks in preorder: a parent's stack is built before its children's.
        let mut stacks: Vec<String> = vec![String::new(); kept.len()];
        let mut lines = Vec::with_capacity(kept.len() + 1);
        for (i, &k) in kept.iter().enumerate() {
            if transparent(k) {
                continue;
            }
            let p = eff_parent(k);
            let frame = self.step_name(g, refs, p, k).replace(';', ",");
            let stack = if p == 0 {
                frame
            } else {
                format!("{};{frame}", stacks[slot[p] as usize])
            };
            if weight[i] > 0 {
                lines.push(format!("{stack} {}", weight[i]));
            }
            stacks[i] = stack;
        }
        if rest > 0 {
            lines.push(format!("(other roots) {rest}"));
        }
        lines
    }

    /// Name of the dominator-tree step from preorder `p` down to `k`: the
    /// edges of the shortest path between them (every path to `k` passes
    /// through its dominator), or the object's type when they are unnamed.
    fn step_name<M: Memory + ?Sized>(
        &self,
        g: &Graph,
        refs: &mut Refs<'_, '_, M>,
        p: usize,
        k: usize,
    ) -> String {
        let top = self.dom.order[p];
        let v = self.dom.order[k];
        let mut steps = Vec::new();
        let mut x = v;
        while x != top && steps.len() < 64 {
            let up = self.bfs_parent[x as usize];
            if up == NONE {
                break;
            }
            let s = g.edge_name(refs, up, x);
            if !s.is_empty() {
                steps.push(s);
            }
            x = up;
        }
        steps.reverse();
        let s = join_path(&steps);
        if s.is_empty() {
            format!("({})", crate::luajit::vm::type_name(g.gct[v as usize]))
        } else {
            s
        }
    }
}

/// Join edge names the way they read: index steps (`.x`, `[..]`,
/// `(key)..`) attach to what precedes them, other steps are separated
/// by ` → `.
pub fn join_path(names: &[String]) -> String {
    let mut s = String::new();
    for n in names {
        let attach = n.starts_with('.') || n.starts_with('[') || n.starts_with("(key)");
        if !s.is_empty() && !attach {
            s.push_str(" → ");
        }
        s.push_str(n);
    }
    s
}

/// Breadth-first search from the super-root: each node's parent on a
/// shortest path.
fn bfs(g: &Graph) -> Vec<u32> {
    let n = g.len();
    let sr = g.super_root();
    let mut parent = vec![NONE; n];
    let mut queue: Vec<u32> = Vec::with_capacity(n);
    for &r in g.succ(sr) {
        if parent[r as usize] == NONE {
            parent[r as usize] = sr;
            queue.push(r);
        }
    }
    let mut head = 0;
    while head < queue.len() {
        let v = queue[head];
        head += 1;
        for &w in g.succ(v) {
            if parent[w as usize] == NONE {
                parent[w as usize] = v;
                queue.push(w);
            }
        }
    }
    parent
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(sizes: &[u64], edges: &[(u32, u32)], roots: &[u32]) -> Graph {
        let n = sizes.len();
        let mut off = vec![0u32; n + 1];
        let mut e = edges.to_vec();
        e.sort();
        for &(a, _) in &e {
            off[a as usize + 1] += 1;
        }
        for i in 0..n {
            off[i + 1] += off[i];
        }
        Graph {
            addr: (0..n as u64).map(|i| 0x1000 + 0x40 * i).collect(),
            size: sizes.to_vec(),
            gct: vec![crate::luajit::vm::gct::TAB; n],
            off,
            dst: e.iter().map(|x| x.1).collect(),
            roots: roots.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn retained_sizes_and_suspects() {
        // 0 -> 1 -> 2 -> {3..9 small}; 0 -> 10; 10 <-> 11 (cycle); 12 unreachable.
        let mut sizes = vec![10, 20, 30];
        sizes.extend([5; 7]);
        sizes.extend([40, 50, 60]);
        let mut edges = vec![(0, 1), (1, 2), (0, 10), (10, 11), (11, 10)];
        edges.extend((3..10).map(|i| (2, i)));
        let g = graph(&sizes, &edges, &[0]);
        let r = Retention::compute(&g);
        assert_eq!(r.retained_of(2), Some(30 + 35));
        assert_eq!(r.retained_of(1), Some(20 + 65));
        assert_eq!(r.retained_of(10), Some(90));
        assert_eq!(r.retained_of(0), Some(10 + 85 + 90));
        assert_eq!(r.retained_of(12), None);
        assert_eq!(r.reachable(), (185, 12));
        assert_eq!(r.suspects(1, 1), vec![2]);
        assert_eq!(r.path(&g, 5), Some(vec![0, 1, 2, 5]));
        assert_eq!(r.path(&g, 12), None);
    }

    #[test]
    fn join_reads_like_lua() {
        let p: Vec<String> = ["registry", "._LOADED", "[\"a.b\"]", "upvalue cache", "[3]"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            join_path(&p),
            "registry._LOADED[\"a.b\"] → upvalue cache[3]"
        );
    }
}
