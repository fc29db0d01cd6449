//! Comparing folded-stack profiles (`frame;frame;... N` lines): which
//! stacks are new, grew, shrank or vanished, and a differential flame graph
//! that shows all of them.
//!
//! # Why not plain `inferno::differential` + flamegraph
//!
//! inferno's differential mode writes `stack A B` lines for the union of
//! stacks and the flame graph then sizes every frame by B (or by A with
//! `--negate`), coloring by B − A. A stack that vanished (B = 0) has zero
//! width and is not drawn at all: exactly the stacks a "what did my fix
//! remove" diff is about. We keep inferno's merge (it already produces the
//! union) and rewrite each line to `stack (W − (B − A)) W` with
//! W = max(A, B): the flame graph then draws the *union shape* (every stack
//! at the larger of its two sizes) while its colour still comes from
//! W − (W − (B − A)) = B − A, so red still means grew, blue shrank, and
//! vanished stacks appear in full blue.

use std::collections::BTreeSet;

use serde::Serialize;

use super::gate::{Metric, Metrics};
use super::snapshot::Folded;

/// How a stack changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Only in B.
    New,
    /// Bigger in B.
    Grown,
    /// Smaller in B.
    Shrunk,
    /// Only in A.
    Vanished,
}

/// One changed stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StackDelta {
    /// Frames joined by `;`.
    pub stack: String,
    /// Value in A.
    pub a: u64,
    /// Value in B.
    pub b: u64,
    /// B − A.
    pub delta: i64,
    /// Kind of change.
    pub change: Change,
}

/// The comparison of two folded profiles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FoldedDiff {
    /// File A.
    pub a_file: String,
    /// File B.
    pub b_file: String,
    /// Sum of A's values.
    pub total_a: u64,
    /// Sum of B's values.
    pub total_b: u64,
    /// Distinct stacks in A.
    pub stacks_a: u64,
    /// Distinct stacks in B.
    pub stacks_b: u64,
    /// Changed stacks, by change (largest growth first, vanished last).
    pub stacks: Vec<StackDelta>,
}

impl FoldedDiff {
    /// Stacks with change `c`.
    pub fn with(&self, c: Change) -> impl Iterator<Item = &StackDelta> {
        self.stacks.iter().filter(move |s| s.change == c)
    }
}

/// Compare `a` with `b`.
pub fn diff(a_file: &str, a: &Folded, b_file: &str, b: &Folded) -> FoldedDiff {
    let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let mut stacks: Vec<StackDelta> = names
        .into_iter()
        .filter_map(|s| {
            let (va, vb) = (
                a.get(s).copied().unwrap_or(0),
                b.get(s).copied().unwrap_or(0),
            );
            let change = match (va, vb) {
                (0, _) => Change::New,
                (_, 0) => Change::Vanished,
                _ if vb > va => Change::Grown,
                _ if vb < va => Change::Shrunk,
                _ => return None,
            };
            Some(StackDelta {
                stack: s.clone(),
                a: va,
                b: vb,
                delta: vb as i64 - va as i64,
                change,
            })
        })
        .collect();
    stacks.sort_by(|x, y| y.delta.cmp(&x.delta).then(x.stack.cmp(&y.stack)));
    FoldedDiff {
        a_file: a_file.into(),
        b_file: b_file.into(),
        total_a: a.values().sum(),
        total_b: b.values().sum(),
        stacks_a: a.len() as u64,
        stacks_b: b.len() as u64,
        stacks,
    }
}

impl Metrics for FoldedDiff {
    fn metric(&self, name: &str) -> Option<Metric> {
        match name {
            "total" => Some(Metric {
                a: self.total_a,
                b: self.total_b,
                bytes: true,
            }),
            "stacks" => Some(Metric {
                a: self.stacks_a,
                b: self.stacks_b,
                bytes: false,
            }),
            _ => None,
        }
    }

    fn metric_help(&self) -> &'static str {
        "total, stacks"
    }
}

fn to_lines(f: &Folded) -> String {
    f.iter().map(|(s, n)| format!("{s} {n}\n")).collect()
}

/// Merged differential input: `stack (W − (B − A)) W` with W = max(A, B)
/// for every stack in either profile (see the module docs).
pub fn union_lines(a: &Folded, b: &Folded) -> std::io::Result<Vec<String>> {
    let mut merged = Vec::new();
    let opts = inferno::differential::Options::default();
    inferno::differential::from_readers(
        opts,
        to_lines(a).as_bytes(),
        to_lines(b).as_bytes(),
        &mut merged,
    )?;
    let text = String::from_utf8_lossy(&merged);
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.rsplitn(3, ' ');
        let (Some(nb), Some(na), Some(stack)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let (Ok(na), Ok(nb)) = (na.parse::<i64>(), nb.parse::<i64>()) else {
            continue;
        };
        let w = na.max(nb);
        out.push(format!("{stack} {} {w}", w - (nb - na)));
    }
    Ok(out)
}

/// Write a differential flame graph of `a` → `b` as SVG into `w`.
pub fn differential_svg<W: std::io::Write>(
    a: &Folded,
    b: &Folded,
    title: &str,
    w: W,
) -> std::io::Result<()> {
    let lines = union_lines(a, b)?;
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.into();
    opts.subtitle =
        Some("red: grew, blue: shrank or vanished; widths are the larger of the two".into());
    opts.count_name = "bytes".into();
    opts.deterministic = true;
    inferno::flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(pairs: &[(&str, u64)]) -> Folded {
        pairs.iter().map(|(s, n)| (s.to_string(), *n)).collect()
    }

    #[test]
    fn classifies_and_keeps_vanished_in_the_union() {
        let a = f(&[("m;gone", 50), ("m;same", 10), ("m;up", 10), ("m;down", 30)]);
        let b = f(&[("m;new", 5), ("m;same", 10), ("m;up", 40), ("m;down", 20)]);
        let d = diff("a", &a, "b", &b);
        let kinds: Vec<_> = d
            .stacks
            .iter()
            .map(|s| (s.stack.as_str(), s.change))
            .collect();
        assert_eq!(
            kinds,
            [
                ("m;up", Change::Grown),
                ("m;new", Change::New),
                ("m;down", Change::Shrunk),
                ("m;gone", Change::Vanished)
            ]
        );
        let mut u = union_lines(&a, &b).unwrap();
        u.sort();
        // Width max(A,B), colour delta B-A preserved as last - first.
        assert_eq!(
            u,
            [
                "m;down 40 30",
                "m;gone 100 50",
                "m;new 0 5",
                "m;same 10 10",
                "m;up 10 40"
            ]
        );
    }
}
