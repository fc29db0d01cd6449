//! Dominators by Lengauer–Tarjan (the "simple" version with path
//! compression, O(E log N)), iterative throughout so that a million-object
//! heap with deep chains cannot overflow the stack.
//!
//! Everything is computed in DFS preorder numbering: vertex `k` is the
//! `k`th vertex reached from the start, `order[k]` its node id. Dominators
//! are DFS-tree ancestors, so `idom[k] < k` for every `k > 0`, which lets
//! callers accumulate subtree sums in one reverse pass.

/// "No vertex".
pub const NONE: u32 = u32::MAX;

/// The dominator tree of the vertices reachable from a start vertex.
#[derive(Debug, Clone, Default)]
pub struct DomTree {
    /// Node id of each preorder number; `order[0]` is the start.
    pub order: Vec<u32>,
    /// Preorder number of each node id, [`NONE`] when unreachable.
    pub pre: Vec<u32>,
    /// Immediate dominator of each preorder number (a preorder number;
    /// `idom[0] == 0`).
    pub idom: Vec<u32>,
}

impl DomTree {
    /// Preorder number of node `v`, None when unreachable.
    #[inline]
    pub fn pre_of(&self, v: u32) -> Option<usize> {
        match self.pre.get(v as usize) {
            Some(&k) if k != NONE => Some(k as usize),
            _ => None,
        }
    }
}

/// Dominators of the graph with `n` nodes whose successors `succ` gives,
/// from `start`.
pub fn dominators<'a>(n: usize, start: u32, succ: impl Fn(u32) -> &'a [u32]) -> DomTree {
    // Depth-first search: preorder numbers and DFS-tree parents.
    let mut pre = vec![NONE; n];
    let mut order: Vec<u32> = Vec::new();
    let mut parent: Vec<u32> = Vec::new();
    let mut stack: Vec<(u32, u32)> = Vec::new();
    pre[start as usize] = 0;
    order.push(start);
    parent.push(0);
    stack.push((start, 0));
    while let Some(&mut (v, ref mut i)) = stack.last_mut() {
        let s = succ(v);
        let mut pushed = None;
        while (*i as usize) < s.len() {
            let w = s[*i as usize];
            *i += 1;
            if pre[w as usize] == NONE {
                pre[w as usize] = order.len() as u32;
                parent.push(pre[v as usize]);
                order.push(w);
                pushed = Some(w);
                break;
            }
        }
        match pushed {
            Some(w) => stack.push((w, 0)),
            None => {
                stack.pop();
            }
        }
    }
    drop(stack);
    let m = order.len();
    // Predecessors in preorder space (CSR).
    let mut poff = vec![0u32; m + 1];
    for &v in &order {
        for &w in succ(v) {
            let k = pre[w as usize];
            if k != NONE {
                poff[k as usize + 1] += 1;
            }
        }
    }
    for k in 0..m {
        poff[k + 1] += poff[k];
    }
    let mut fill = poff.clone();
    let mut preds = vec![0u32; poff[m] as usize];
    for (kv, &v) in order.iter().enumerate() {
        for &w in succ(v) {
            let k = pre[w as usize];
            if k != NONE {
                preds[fill[k as usize] as usize] = kv as u32;
                fill[k as usize] += 1;
            }
        }
    }
    drop(fill);

    let mut semi: Vec<u32> = (0..m as u32).collect();
    let mut label: Vec<u32> = (0..m as u32).collect();
    let mut ancestor = vec![NONE; m];
    let mut idom = vec![0u32; m];
    let mut bucket_head = vec![NONE; m];
    let mut bucket_next = vec![NONE; m];
    let mut path: Vec<u32> = Vec::new();

    // eval(v): the vertex of minimum semi on the forest path above v.
    let mut eval = |v: u32, ancestor: &mut [u32], label: &mut [u32], semi: &[u32]| -> u32 {
        if ancestor[v as usize] == NONE {
            return v;
        }
        // compress(v), iteratively.
        let mut x = v;
        while ancestor[ancestor[x as usize] as usize] != NONE {
            path.push(x);
            x = ancestor[x as usize];
        }
        while let Some(x) = path.pop() {
            let a = ancestor[x as usize] as usize;
            if semi[label[a] as usize] < semi[label[x as usize] as usize] {
                label[x as usize] = label[a];
            }
            ancestor[x as usize] = ancestor[a];
        }
        label[v as usize]
    };

    for w in (1..m).rev() {
        for &v in &preds[poff[w] as usize..poff[w + 1] as usize] {
            let u = eval(v, &mut ancestor, &mut label, &semi);
            if semi[u as usize] < semi[w] {
                semi[w] = semi[u as usize];
            }
        }
        let s = semi[w] as usize;
        bucket_next[w] = bucket_head[s];
        bucket_head[s] = w as u32;
        let p = parent[w];
        ancestor[w] = p;
        let mut b = bucket_head[p as usize];
        bucket_head[p as usize] = NONE;
        while b != NONE {
            let u = eval(b, &mut ancestor, &mut label, &semi);
            idom[b as usize] = if semi[u as usize] < semi[b as usize] {
                u
            } else {
                p
            };
            b = bucket_next[b as usize];
        }
    }
    for w in 1..m {
        if idom[w] != semi[w] {
            idom[w] = idom[idom[w] as usize];
        }
    }
    idom[0] = 0;
    DomTree { order, pre, idom }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dominators by definition: d dominates v iff v is unreachable from
    /// the start once d is removed.
    fn brute(n: usize, start: u32, adj: &[Vec<u32>]) -> Vec<Option<u32>> {
        let reach = |skip: u32| {
            let mut seen = vec![false; n];
            let mut st = vec![start];
            if start != skip {
                seen[start as usize] = true;
            } else {
                return seen;
            }
            while let Some(v) = st.pop() {
                for &w in &adj[v as usize] {
                    if w != skip && !seen[w as usize] {
                        seen[w as usize] = true;
                        st.push(w);
                    }
                }
            }
            seen
        };
        let all = reach(u32::MAX);
        let mut doms: Vec<Vec<u32>> = vec![Vec::new(); n];
        for d in 0..n as u32 {
            let r = reach(d);
            for v in 0..n {
                if all[v] && !r[v] && v as u32 != d {
                    doms[v].push(d);
                }
            }
        }
        // The immediate dominator is the strict dominator dominated by all
        // the others: the one with the most dominators itself.
        (0..n)
            .map(|v| {
                if !all[v] || v as u32 == start {
                    return None;
                }
                doms[v]
                    .iter()
                    .copied()
                    .max_by_key(|&d| doms[d as usize].len())
            })
            .collect()
    }

    #[test]
    fn matches_brute_force_on_random_graphs() {
        let mut seed = 0x2545F4914F6CDD1Du64;
        let mut rnd = |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        };
        for round in 0..300 {
            let n = 2 + rnd(30) as usize;
            let e = rnd((n * 3) as u64) as usize;
            let mut adj = vec![Vec::new(); n];
            for _ in 0..e {
                let a = rnd(n as u64) as usize;
                let b = rnd(n as u64) as u32;
                adj[a].push(b);
            }
            let t = dominators(n, 0, |v| &adj[v as usize]);
            let want = brute(n, 0, &adj);
            for (v, want_v) in want.iter().enumerate() {
                let got = match t.pre[v] {
                    NONE => None,
                    0 => None,
                    k => Some(t.order[t.idom[k as usize] as usize]),
                };
                assert_eq!(got, *want_v, "round {round} node {v} adj {adj:?}");
            }
        }
    }
}
