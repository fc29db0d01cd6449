//! `ljleak refs` report: who holds the memory. A self-describing JSON object
//! (`kind: "refs"`; field names are stable, `ljleak diff` reads them) and a
//! text rendering.

use std::fmt::Write as _;

pub use crate::model::refs::{HeldObject, PathTotal, RefsReport, RefsTotal};

/// Sum reports of several processes; the `top` biggest paths.
pub fn total_of(reps: &[&RefsReport], top: usize) -> RefsTotal {
    let mut by: std::collections::BTreeMap<(Vec<String>, String), PathTotal> = Default::default();
    for r in reps {
        for h in r.suspects.iter().filter(|h| h.reachable) {
            let e = by
                .entry((h.path.clone(), h.ty.clone()))
                .or_insert_with(|| PathTotal {
                    path: h.path.clone(),
                    ty: h.ty.clone(),
                    retained: 0,
                    retained_objects: 0,
                    processes: 0,
                });
            e.retained += h.retained;
            e.retained_objects += h.retained_objects;
            e.processes += 1;
        }
    }
    let mut suspects: Vec<PathTotal> = by.into_values().collect();
    suspects.sort_by(|a, b| b.retained.cmp(&a.retained).then(a.path.cmp(&b.path)));
    suspects.truncate(top);
    RefsTotal {
        pids: reps.iter().map(|r| r.pid).collect(),
        gc_total: reps.iter().map(|r| r.gc_total).sum(),
        reachable_bytes: reps.iter().map(|r| r.reachable_bytes).sum(),
        reachable_objects: reps.iter().map(|r| r.reachable_objects).sum(),
        suspects,
    }
}

/// Text of a [`RefsTotal`].
pub fn refs_total_text(t: &RefsTotal) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "GC total {} ({} bytes); reachable {} in {} objects",
        human(t.gc_total),
        t.gc_total,
        human(t.reachable_bytes),
        t.reachable_objects
    );
    if !t.suspects.is_empty() {
        let _ = writeln!(s, "\nLeak suspects by path, summed over the workers:");
        for (i, p) in t.suspects.iter().enumerate() {
            let _ = writeln!(
                s,
                "#{} {} retains {} ({} bytes, {} objects) in {} of {} workers\n    held by: {}",
                i + 1,
                p.ty,
                human(p.retained),
                p.retained,
                p.retained_objects,
                p.processes,
                t.pids.len(),
                crate::analysis::retention::join_path(&p.path)
            );
        }
    }
    s
}

/// Bytes with a binary unit, for text.
pub(crate) fn human(b: u64) -> String {
    crate::units::bytes(b)
}

fn held_text(out: &mut String, n: usize, h: &HeldObject) {
    let _ = writeln!(
        out,
        "#{n} {} retains {} ({} bytes, {} objects); own size {}",
        h.desc,
        human(h.retained),
        h.retained,
        h.retained_objects,
        h.size
    );
    if h.reachable {
        let _ = writeln!(
            out,
            "    held by: {}",
            crate::analysis::retention::join_path(&h.path)
        );
    } else {
        let _ = writeln!(
            out,
            "    unreachable: garbage awaiting the sweep, or held only by weak references"
        );
    }
}

/// Text rendering.
pub fn refs_text(r: &RefsReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "ljleak refs: pid {} ({})", r.pid, r.exe);
    let _ = writeln!(
        s,
        "GC total {} ({} bytes); {} objects ({}), {} references",
        human(r.gc_total),
        r.gc_total,
        r.objects,
        human(r.object_bytes),
        r.edges
    );
    let _ = writeln!(
        s,
        "reachable from the roots: {} in {} objects; unreachable: {} in {} objects",
        human(r.reachable_bytes),
        r.reachable_objects,
        human(r.object_bytes.saturating_sub(r.reachable_bytes)),
        r.objects.saturating_sub(r.reachable_objects)
    );
    let _ = writeln!(
        s,
        "paused {} ({}), analysed in {}",
        crate::units::micros(r.pause_us),
        r.consistency,
        crate::units::micros(r.analysis_us)
    );
    if !r.suspects.is_empty() {
        let _ = writeln!(s, "\nLeak suspects (objects holding many small objects):");
        for (i, h) in r.suspects.iter().enumerate() {
            held_text(&mut s, i + 1, h);
        }
    }
    if !r.matches.is_empty() || r.matches_omitted > 0 {
        let _ = writeln!(s, "\nMatching objects:");
        for (i, h) in r.matches.iter().enumerate() {
            held_text(&mut s, i + 1, h);
        }
        if r.matches_omitted > 0 {
            let _ = writeln!(s, "... {} more (raise --limit)", r.matches_omitted);
        }
    }
    for w in &r.warnings {
        let _ = writeln!(s, "warning: {w}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human(10), "10 B");
        assert_eq!(human(2048), "2.0 KiB");
        assert_eq!(human(3 << 20), "3.0 MiB");
    }
}
