//! Deltas between two census snapshots: the GC total, per object type,
//! cdata by C type and tables by size class.

use std::collections::BTreeMap;

use serde::Serialize;

use super::gate::{Metric, Metrics};
use crate::luajit::vm::TYPE_NAMES;
use crate::model::census::CensusReport;

/// A value in A and B.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Delta {
    /// In A.
    pub a: u64,
    /// In B.
    pub b: u64,
    /// B − A.
    pub delta: i64,
    /// Change in percent of A (None when A is 0).
    pub pct: Option<f64>,
}

impl Delta {
    /// From two values.
    pub fn new(a: u64, b: u64) -> Delta {
        let delta = b as i64 - a as i64;
        Delta {
            a,
            b,
            delta,
            pct: (a != 0).then(|| delta as f64 * 100.0 / a as f64),
        }
    }
}

/// Count and byte deltas of one named group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// Type, C type or size class.
    pub name: String,
    /// Objects.
    pub count: Delta,
    /// Bytes.
    pub bytes: Delta,
}

/// Where a snapshot came from, for the report header.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Source {
    /// File name as given.
    pub file: String,
    /// Target pid.
    pub pid: i32,
    /// Host.
    pub host: String,
    /// When.
    pub created: String,
    /// Executable.
    pub exe: String,
    /// Its build-id.
    pub exe_build_id: Option<String>,
    /// LuaJIT layout name.
    pub layout: String,
    /// Copy consistency.
    pub consistency: String,
}

/// The whole comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CensusDiff {
    /// First snapshot.
    pub a: Source,
    /// Second snapshot.
    pub b: Source,
    /// `gc.total` bytes.
    pub total: Delta,
    /// Walker totals (census only).
    pub walker_total: Option<Delta>,
    /// All objects.
    pub objects: Delta,
    /// Dead, unswept.
    pub dead: Row,
    /// Per type, by byte growth (largest first).
    pub types: Vec<Row>,
    /// cdata by C type, by byte growth; unchanged ones left out.
    pub cdata_types: Vec<Row>,
    /// Tables by size class, smallest class first (name `<=N`).
    pub table_classes: Vec<Row>,
    /// Things that make the comparison less trustworthy.
    pub warnings: Vec<String>,
}

fn source(file: &str, r: &CensusReport) -> Source {
    Source {
        file: file.into(),
        pid: r.pid,
        host: r.host.clone(),
        created: r.created.clone(),
        exe: r.exe.clone(),
        exe_build_id: r.exe_build_id.clone(),
        layout: r.luajit.layout.clone(),
        consistency: r.consistency.clone(),
    }
}

/// Join two name-keyed (count, bytes) maps into rows sorted by byte growth.
fn rows(
    a: BTreeMap<String, (u64, u64)>,
    b: BTreeMap<String, (u64, u64)>,
    keep_unchanged: bool,
) -> Vec<Row> {
    let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
    names.sort();
    names.dedup();
    let mut v: Vec<Row> = names
        .into_iter()
        .map(|n| {
            let (ca, sa) = a.get(n).copied().unwrap_or_default();
            let (cb, sb) = b.get(n).copied().unwrap_or_default();
            Row {
                name: n.clone(),
                count: Delta::new(ca, cb),
                bytes: Delta::new(sa, sb),
            }
        })
        .filter(|r| keep_unchanged || r.count.delta != 0 || r.bytes.delta != 0)
        .collect();
    v.sort_by(|x, y| {
        y.bytes
            .delta
            .cmp(&x.bytes.delta)
            .then(y.count.delta.cmp(&x.count.delta))
            .then(x.name.cmp(&y.name))
    });
    v
}

/// Compare snapshot `ra` (file `fa`) with `rb` (file `fb`).
pub fn diff(fa: &str, ra: &CensusReport, fb: &str, rb: &CensusReport) -> CensusDiff {
    let types = |r: &CensusReport| {
        r.types
            .iter()
            .map(|(n, t)| (n.clone(), (t.count, t.sum)))
            .collect()
    };
    let cdata = |r: &CensusReport| {
        let mut m: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for c in &r.cdata_types {
            let e = m.entry(c.name.clone()).or_default();
            e.0 += c.count;
            e.1 += c.sum;
        }
        m
    };
    let classes = |r: &CensusReport| {
        r.table_classes
            .iter()
            .map(|c| (c.le, (c.count, c.sum)))
            .collect::<BTreeMap<u64, _>>()
    };
    let (ca, cb) = (classes(ra), classes(rb));
    let mut les: Vec<u64> = ca.keys().chain(cb.keys()).copied().collect();
    les.sort_unstable();
    les.dedup();
    let table_classes = les
        .into_iter()
        .map(|le| {
            let (na, sa) = ca.get(&le).copied().unwrap_or_default();
            let (nb, sb) = cb.get(&le).copied().unwrap_or_default();
            Row {
                name: format!("<={le}"),
                count: Delta::new(na, nb),
                bytes: Delta::new(sa, sb),
            }
        })
        .collect();
    let objects = |r: &CensusReport| r.types.values().map(|t| t.count).sum::<u64>();
    let mut warnings = Vec::new();
    if ra.exe_build_id.is_some() && rb.exe_build_id.is_some() && ra.exe_build_id != rb.exe_build_id
    {
        warnings.push(format!(
            "the executables differ ({} build-id {:?}, {} build-id {:?})",
            fa, ra.exe_build_id, fb, rb.exe_build_id
        ));
    }
    for (f, r) in [(fa, ra), (fb, rb)] {
        if r.kind == "census" && r.consistency != "quiescent" {
            warnings.push(format!(
                "{f} is a {} copy: figures may be off",
                r.consistency
            ));
        }
        for w in &r.warnings {
            warnings.push(format!("{f}: {w}"));
        }
    }
    CensusDiff {
        a: source(fa, ra),
        b: source(fb, rb),
        total: Delta::new(ra.gc_total, rb.gc_total),
        walker_total: ra
            .walker_total
            .zip(rb.walker_total)
            .map(|(a, b)| Delta::new(a, b)),
        objects: Delta::new(objects(ra), objects(rb)),
        dead: Row {
            name: "dead".into(),
            count: Delta::new(ra.dead.count, rb.dead.count),
            bytes: Delta::new(ra.dead.sum, rb.dead.sum),
        },
        types: rows(types(ra), types(rb), true),
        cdata_types: rows(cdata(ra), cdata(rb), false),
        table_classes,
        warnings,
    }
}

impl Metrics for CensusDiff {
    fn metric(&self, name: &str) -> Option<Metric> {
        let m = |d: &Delta, bytes| {
            Some(Metric {
                a: d.a,
                b: d.b,
                bytes,
            })
        };
        match name {
            "total" | "gc_total" => return m(&self.total, true),
            "walker_total" => return self.walker_total.as_ref().and_then(|d| m(d, true)),
            "objects" => return m(&self.objects, false),
            _ => {}
        }
        let (ty, field) = name.split_once('.').unwrap_or((name, "bytes"));
        let row = if ty == "dead" {
            Some(&self.dead)
        } else if TYPE_NAMES.contains(&ty) {
            self.types.iter().find(|r| r.name == ty)
        } else {
            return None;
        };
        // A type absent from both snapshots is 0 in both.
        let zero = Row {
            name: ty.into(),
            count: Delta::default(),
            bytes: Delta::default(),
        };
        let row = row.unwrap_or(&zero);
        match field {
            "bytes" | "sum" => m(&row.bytes, true),
            "count" => m(&row.count, false),
            _ => None,
        }
    }

    fn metric_help(&self) -> &'static str {
        "total, walker_total, objects, TYPE.count, TYPE.bytes with TYPE one of string, upvalue, thread, proto, function, trace, cdata, table, userdata, dead"
    }
}
