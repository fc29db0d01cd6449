//! Comparing two `ljleak mem` snapshots: every figure as a named metric
//! (`rss`, `glibc.free`, `luajit.arena_free`, `shm.ZONE.used`,
//! `fds.tcp.close_wait`, `timers.pending`...) for deltas and CI gates.
//! A master snapshot compares by its `total`.

use std::collections::BTreeMap;
use std::path::Path;

use super::gate::{Gate, Metric, Metrics, Mode};
use super::snapshot::InputError;
use crate::mem::MemReport;
use crate::report::envelope::SCHEMA_VERSION;

/// Metric names gates accept, for messages.
pub const METRIC_HELP: &str = "rss, pss, anon, file, unattributed, stacks, other_anon, \
luajit.{gc_total,arena_mapped,arena_used,arena_free,mcode}, \
glibc.{system,in_use,free,mmapped,tcache,fastbins}, rows.NAME, \
shm.ZONE.{size,used,free,rss,pss,used_pct}, fds.total, fds.KIND (tcp, udp, unix, pipe, file...), \
fds.tcp.STATE (established, close_wait, time_wait...), timers.{pending,running}";

/// Whether `path` holds a mem snapshot; its report (a master's total) if so.
pub fn load(path: &Path) -> Result<Option<MemReport>, InputError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|err| InputError::Read {
        file: file.clone(),
        err,
    })?;
    if !text.trim_start().starts_with('{') {
        return Ok(None);
    }
    let malformed = |why: String| InputError::Malformed {
        file: file.clone(),
        why,
    };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| malformed(e.to_string()))?;
    if v.get("kind").and_then(|k| k.as_str()) != Some("mem") {
        return Ok(None);
    }
    let schema = v.get("schema").and_then(|s| s.as_u64()).unwrap_or(1);
    if schema > SCHEMA_VERSION as u64 || schema == 0 {
        return Err(InputError::Schema {
            file,
            found: schema as u32,
        });
    }
    let v = match v.get("total") {
        Some(t) if v.get("workers").is_some() => t.clone(),
        _ => v,
    };
    serde_json::from_value(v)
        .map(Some)
        .map_err(|e| malformed(e.to_string()))
}

/// Every metric of one report: name -> (value, is bytes).
pub fn flat(r: &MemReport) -> BTreeMap<String, (u64, bool)> {
    let mut m = BTreeMap::new();
    let mut put = |k: String, v: u64, b: bool| {
        m.insert(k, (v, b));
    };
    for (k, v) in [
        ("rss", r.rss),
        ("pss", r.pss),
        ("anon", r.anon),
        ("file", r.file),
        ("swap", r.swap),
        ("unattributed", r.unattributed),
        ("stacks", r.stacks),
        ("other_anon", r.other_anon),
        ("luajit.gc_total", r.luajit.gc_total),
        ("luajit.arena_mapped", r.luajit.arena_mapped),
        ("luajit.arena_used", r.luajit.arena_used),
        ("luajit.arena_free", r.luajit.arena_free),
        ("luajit.mcode", r.luajit.mcode),
        ("glibc.system", r.glibc.system),
        ("glibc.in_use", r.glibc.in_use),
        ("glibc.free", r.glibc.free),
        ("glibc.mmapped", r.glibc.mmapped),
        ("glibc.tcache", r.glibc.tcache),
        ("glibc.fastbins", r.glibc.fastbins),
        ("rows.luajit_arena", r.rows.luajit_arena),
        ("rows.luajit_mcode", r.rows.luajit_mcode),
        ("rows.glibc_arenas", r.rows.glibc_arenas),
        ("rows.glibc_mmapped", r.rows.glibc_mmapped),
        ("rows.shm", r.rows.shm),
        ("rows.files", r.rows.files),
    ] {
        put(k.into(), v, true);
    }
    for z in &r.shm {
        let k = format!("shm.{}", z.name);
        put(format!("{k}.size"), z.size, true);
        put(format!("{k}.used"), z.used, true);
        put(format!("{k}.free"), z.free, true);
        put(format!("{k}.rss"), z.rss, true);
        put(format!("{k}.pss"), z.pss, true);
        if let Some(pct) = (z.used * 100).checked_div(z.size) {
            put(format!("{k}.used_pct"), pct, false);
        }
    }
    put("fds.total".into(), r.fds.total, false);
    for (k, v) in &r.fds.by_kind {
        put(format!("fds.{k}"), *v, false);
    }
    for (k, v) in &r.fds.tcp_states {
        put(format!("fds.tcp.{}", k.to_ascii_lowercase()), *v, false);
    }
    put("timers.pending".into(), r.timers.pending, false);
    put("timers.running".into(), r.timers.running, false);
    m
}

/// Two mem snapshots side by side.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemDiff {
    /// First file.
    pub a_file: String,
    /// Second file.
    pub b_file: String,
    /// Every metric in either: name -> (A, B); a metric absent on one side
    /// is 0 there (a zone or a TCP state that appeared).
    pub metrics: BTreeMap<String, (u64, u64)>,
    #[serde(skip)]
    bytes: BTreeMap<String, bool>,
}

/// Compare.
pub fn diff(fa: &str, a: &MemReport, fb: &str, b: &MemReport) -> MemDiff {
    let (xa, xb) = (flat(a), flat(b));
    let mut metrics = BTreeMap::new();
    let mut bytes = BTreeMap::new();
    for (k, (v, by)) in &xa {
        metrics.insert(k.clone(), (*v, xb.get(k).map(|x| x.0).unwrap_or(0)));
        bytes.insert(k.clone(), *by);
    }
    for (k, (v, by)) in &xb {
        metrics.entry(k.clone()).or_insert((0, *v));
        bytes.insert(k.clone(), *by);
    }
    MemDiff {
        a_file: fa.into(),
        b_file: fb.into(),
        metrics,
        bytes,
    }
}

/// `shm.ZONE.used>90%` reads as a fill level (used is 90% of the zone),
/// not as growth relative to A: it becomes `shm.ZONE.used_pct>90`.
pub fn rewrite_gate(g: &mut Gate) {
    let unsigned = !g.expr.contains(['+', '-']);
    if g.mode == Mode::Percent
        && unsigned
        && g.metric.starts_with("shm.")
        && g.metric.ends_with(".used")
    {
        g.metric.push_str("_pct");
        g.mode = Mode::Absolute;
    }
}

impl Metrics for MemDiff {
    fn metric(&self, name: &str) -> Option<Metric> {
        let lower = name.to_ascii_lowercase();
        let key = if self.metrics.contains_key(name) {
            name.to_string()
        } else if name.starts_with("fds.tcp.") {
            // A TCP state absent from both snapshots is simply zero.
            return Some(self.metrics.get(&lower).map_or(
                Metric {
                    a: 0,
                    b: 0,
                    bytes: false,
                },
                |&(a, b)| Metric { a, b, bytes: false },
            ));
        } else {
            return None;
        };
        let (a, b) = self.metrics[&key];
        Some(Metric {
            a,
            b,
            bytes: self.bytes.get(&key).copied().unwrap_or(true),
        })
    }

    fn metric_help(&self) -> &'static str {
        METRIC_HELP
    }
}

/// Text: every metric that changed, largest change first, then the gates.
pub fn text(d: &MemDiff, top: usize) -> String {
    use std::fmt::Write;
    let mut rows: Vec<(&String, u64, u64)> = d
        .metrics
        .iter()
        .filter(|(_, (a, b))| a != b)
        .map(|(k, (a, b))| (k, *a, *b))
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.2.abs_diff(r.1)));
    let mut s = format!("ljleak diff (mem): {} -> {}\n", d.a_file, d.b_file);
    let _ = writeln!(
        s,
        "{:<40} {:>16} {:>16} {:>16}",
        "metric", "A", "B", "change"
    );
    for (k, a, b) in rows.into_iter().take(top.max(1)) {
        let sign = if b >= a { "+" } else { "-" };
        let _ = writeln!(
            s,
            "{k:<40} {a:>16} {b:>16} {:>16}",
            format!("{sign}{}", b.abs_diff(a))
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_on_mem_metrics() {
        let mut a = MemReport::default();
        a.glibc.free = 10_000_000;
        a.fds.tcp_states.insert("CLOSE_WAIT".into(), 5);
        a.shm.push(crate::mem::ShmZone {
            name: "cache".into(),
            size: 1000,
            used: 500,
            ..Default::default()
        });
        let mut b = a.clone();
        b.glibc.free = 70_000_000;
        b.fds.tcp_states.insert("CLOSE_WAIT".into(), 200);
        b.shm[0].used = 950;
        let d = diff("a", &a, "b", &b);
        let tripped = |e: &str| {
            let mut g = Gate::parse(e).unwrap();
            rewrite_gate(&mut g);
            g.eval(&d).unwrap().tripped
        };
        assert!(tripped("glibc.free>+50MB"));
        assert!(!tripped("glibc.free>+70MB"));
        assert!(tripped("fds.tcp.close_wait>+100"));
        assert!(!tripped("fds.tcp.time_wait>+1"));
        assert!(tripped("shm.cache.used>90%"));
        assert!(!tripped("shm.cache.used>+100%"));
        assert!(!tripped("timers.pending>+1000"));
    }
}
