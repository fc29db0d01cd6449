//! Retained sizes alone: the dominator tree of a [`Graph`] and what each
//! object retains, without the counts, accumulations and shortest paths of
//! [`Retention`](super::retention::Retention). What `ljleak threads` needs
//! to weigh threads by the memory they alone hold.

use super::dominators::{dominators, DomTree, NONE};
use super::graph::{Graph, NodeId};

/// The dominator tree from the super-root and retained bytes.
#[derive(Debug, Clone, Default)]
pub struct Retained {
    /// The dominator tree from the super-root.
    pub dom: DomTree,
    /// Retained bytes by preorder number: the object's own size plus those
    /// of every object it dominates.
    pub retained: Vec<u64>,
}

impl Retained {
    /// Dominators and retained sizes of `g`.
    pub fn compute(g: &Graph) -> Retained {
        let dom = dominators(g.len() + 1, g.super_root(), |v| g.succ(v));
        let mut retained: Vec<u64> = dom
            .order
            .iter()
            .map(|&v| g.size.get(v as usize).copied().unwrap_or(0))
            .collect();
        // idom[k] < k: one reverse pass sums every subtree.
        for k in (1..dom.order.len()).rev() {
            retained[dom.idom[k] as usize] += retained[k];
        }
        Retained { dom, retained }
    }

    /// Preorder number of node `v`, None when unreachable.
    #[inline]
    pub fn pre(&self, v: NodeId) -> Option<usize> {
        self.dom.pre_of(v)
    }

    /// Retained bytes of node `v` (None when unreachable).
    pub fn of(&self, v: NodeId) -> Option<u64> {
        self.pre(v).map(|k| self.retained[k])
    }

    /// For each of `members`, the nearest other member that dominates it
    /// (None when no member does, or it is unreachable). The retained
    /// bytes of a set of objects, each counted once, are the sum over the
    /// members no other member dominates. One pass over the tree.
    pub fn nearest_dominating(&self, members: &[NodeId]) -> Vec<Option<NodeId>> {
        let m = self.dom.order.len();
        let mut is = vec![false; m];
        for &v in members {
            if let Some(k) = self.pre(v) {
                is[k] = true;
            }
        }
        // near[k]: nearest strict dominator of k that is a member.
        let mut near = vec![NONE; m];
        for k in 1..m {
            let p = self.dom.idom[k] as usize;
            near[k] = if p != 0 && is[p] { p as u32 } else { near[p] };
        }
        members
            .iter()
            .map(|&v| {
                let k = self.pre(v)?;
                (near[k] != NONE).then(|| self.dom.order[near[k] as usize])
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_members_are_found() {
        // root -> 0 -> 1 -> 2 -> 3; root -> 4; 0 and 4 -> 5 (shared).
        let sizes = [1u64, 2, 4, 8, 16, 32];
        let mut edges = [(0u32, 1u32), (1, 2), (2, 3), (0, 5), (4, 5)];
        edges.sort();
        let mut off = vec![0u32; sizes.len() + 1];
        for &(a, _) in &edges {
            off[a as usize + 1] += 1;
        }
        for i in 0..sizes.len() {
            off[i + 1] += off[i];
        }
        let g = Graph {
            addr: (0..sizes.len() as u64).map(|i| 0x100 * (i + 1)).collect(),
            size: sizes.to_vec(),
            gct: vec![crate::luajit::vm::gct::THREAD; sizes.len()],
            off,
            dst: edges.iter().map(|e| e.1).collect(),
            roots: vec![0, 4],
            ..Default::default()
        };
        let r = Retained::compute(&g);
        assert_eq!(r.of(0), Some(1 + 2 + 4 + 8));
        assert_eq!(r.of(4), Some(16), "5 is shared with 0");
        assert_eq!(r.of(5), Some(32));
        assert_eq!(
            r.nearest_dominating(&[0, 2, 3, 4, 5]),
            vec![None, Some(0), Some(2), None, None]
        );
    }
}
