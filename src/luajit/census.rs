//! The heap census: count, min, avg, max and sum per object type (what
//! stap++'s lj-gc-objs printed), the dead-but-unswept share, and cdata by C
//! type.

use std::collections::HashMap;

use super::vm::{gct, Vm, TYPE_NAMES};
use super::walk::{self, Limits, Overheads, WalkReport};
use crate::target::Memory;

/// Statistics of one object type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Objects.
    pub count: u64,
    /// Bytes.
    pub sum: u64,
    /// Smallest object.
    pub min: u64,
    /// Largest object.
    pub max: u64,
}

impl Stats {
    /// Account one object.
    #[inline]
    pub fn add(&mut self, size: u64) {
        if self.count == 0 || size < self.min {
            self.min = size;
        }
        if size > self.max {
            self.max = size;
        }
        self.count += 1;
        self.sum += size;
    }

    /// Mean size, rounded down (as lj-gc-objs printed it).
    pub fn avg(&self) -> u64 {
        self.sum.checked_div(self.count).unwrap_or(0)
    }
}

/// Count and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CountSum {
    /// Objects.
    pub count: u64,
    /// Bytes.
    pub sum: u64,
}

/// One line of the cdata-by-type table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CdataType {
    /// C type as LuaJIT prints it.
    pub name: String,
    /// Objects.
    pub count: u64,
    /// Bytes.
    pub sum: u64,
}

/// Tables in one power-of-two size class: every table whose allocation
/// (header, array part and hash part, as `lj_tab.c` allocates them) is at
/// most `le` bytes and more than `le / 2`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SizeClass {
    /// Upper bound of the class in bytes (a power of two).
    pub le: u64,
    /// Tables.
    pub count: u64,
    /// Their bytes.
    pub sum: u64,
}

/// The power-of-two size class of an allocation of `size` bytes.
pub fn size_class(size: u64) -> u64 {
    size.max(1).checked_next_power_of_two().unwrap_or(u64::MAX)
}

/// A full census of one VM.
#[derive(Debug, Clone)]
pub struct Census {
    /// Per type, indexed by `gct - 4`.
    pub types: [Stats; 9],
    /// Dead objects not yet swept.
    pub dead: CountSum,
    /// cdata grouped by C type, biggest first.
    pub cdata_types: Vec<CdataType>,
    /// Tables by size class, smallest class first.
    pub table_classes: Vec<SizeClass>,
    /// `g->gc.total`.
    pub gc_total: u64,
    /// `g->gc.state`.
    pub gc_state: u64,
    /// `g->gc.threshold`.
    pub gc_threshold: u64,
    /// JIT machine code area (mmapped, not in gc.total).
    pub mcode_jit: u64,
    /// FFI callback machine code.
    pub mcode_callbacks: u64,
    /// Walk results (totals, overheads, warnings).
    pub walk: WalkReport,
}

impl Census {
    /// What the walker counted: objects plus fixed allocations.
    pub fn walker_total(&self) -> u64 {
        self.walk.total()
    }

    /// Fixed allocations.
    pub fn overheads(&self) -> &Overheads {
        &self.walk.overheads
    }

    /// (name, stats) of types present, most numerous first (lj-gc-objs order).
    pub fn by_count(&self) -> Vec<(&'static str, Stats)> {
        let mut v: Vec<_> = TYPE_NAMES
            .iter()
            .zip(self.types.iter())
            .filter(|(_, s)| s.count > 0)
            .map(|(n, s)| (*n, *s))
            .collect();
        v.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(b.1.sum.cmp(&a.1.sum)));
        v
    }
}

/// Walk `vm` and aggregate.
pub fn take<M: Memory + ?Sized>(vm: &Vm<'_, M>, lim: Limits) -> Census {
    let mut types = [Stats::default(); 9];
    let mut dead = CountSum::default();
    let mut cdata: HashMap<u64, CountSum> = HashMap::new();
    let mut tables: std::collections::BTreeMap<u64, CountSum> = Default::default();
    let ctypeid = vm.lay.f.cd_ctypeid;
    let rep = walk::walk(vm, lim, |o| {
        types[(o.gct - gct::STR) as usize].add(o.size);
        if o.dead {
            dead.count += 1;
            dead.sum += o.size;
        }
        if o.gct == gct::CDATA {
            let id = ctypeid.get(vm.m, o.addr).unwrap_or(0);
            let e = cdata.entry(id).or_default();
            e.count += 1;
            e.sum += o.size;
        }
        if o.gct == gct::TAB {
            let e = tables.entry(size_class(o.size)).or_default();
            e.count += 1;
            e.sum += o.size;
        }
    });
    // Different ids can print the same (e.g. two anonymous `char[?]`s).
    let mut named: HashMap<String, CountSum> = HashMap::new();
    for (id, cs) in cdata {
        let e = named.entry(super::ctype::ctype_name(vm, id)).or_default();
        e.count += cs.count;
        e.sum += cs.sum;
    }
    let mut cdata_types: Vec<CdataType> = named
        .into_iter()
        .map(|(name, cs)| CdataType {
            name,
            count: cs.count,
            sum: cs.sum,
        })
        .collect();
    cdata_types.sort_by(|a, b| {
        b.sum
            .cmp(&a.sum)
            .then(b.count.cmp(&a.count))
            .then(a.name.cmp(&b.name))
    });
    let f = &vm.lay.f;
    let (mcode_jit, mcode_callbacks) = walk::mcode_sizes(vm);
    let table_classes = tables
        .into_iter()
        .map(|(le, cs)| SizeClass {
            le,
            count: cs.count,
            sum: cs.sum,
        })
        .collect();
    Census {
        types,
        dead,
        cdata_types,
        table_classes,
        gc_total: vm.gc_total().unwrap_or(0),
        gc_state: vm.gc_state().unwrap_or(u64::MAX),
        gc_threshold: f.g_threshold.get(vm.m, vm.g).unwrap_or(0),
        mcode_jit,
        mcode_callbacks,
        walk: rep,
    }
}

/// Index of a type name in [`TYPE_NAMES`].
pub fn type_index(name: &str) -> Option<usize> {
    TYPE_NAMES.iter().position(|n| *n == name)
}
