//! Loading the BPF object, attaching it to the probe set, draining records.

use std::os::fd::AsFd;

use libbpf_rs::{MapCore, MapFlags, ObjectBuilder, UprobeMultiOpts};

use super::abi::{self, LjConfig, LjLuaCfg, LjRecAlloc};
use super::ring::BpfRing;
use crate::trace::probes::{Func, ProbeSpec};

/// Why the BPF tracer cannot be used (the caller falls back to perf).
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// A probe of the set has no BPF equivalent (USDT arguments).
    #[error("{0}")]
    Unsupported(String),
    /// Loading or attaching failed.
    #[error("{what}: {source}")]
    Load {
        /// What was being done.
        what: String,
        /// libbpf's error.
        source: libbpf_rs::Error,
    },
    /// Mapping the ring buffer or the live set failed.
    #[error("mapping a BPF map: {0}")]
    Ring(std::io::Error),
}

impl BpfError {
    /// True when the kernel refused for lack of privileges.
    pub fn is_permission(&self) -> bool {
        match self {
            // EPERM: the verifier's refusals come back as EACCES, which
            // is not a lack of privileges.
            BpfError::Load { source, .. } => source.to_string().contains("Operation not permitted"),
            _ => false,
        }
    }
}

/// Options of the BPF tracer.
#[derive(Debug, Clone, Copy, Default)]
pub struct BpfOpts {
    /// Bytes of user stack copied with each tracked allocation.
    pub stack_bytes: u32,
    /// Mean bytes between samples (None: every allocation).
    pub sample_bytes: Option<u64>,
    /// Ring buffer bytes (rounded up to a power of two).
    pub ring_bytes: usize,
    /// LuaJIT layout for the Lua walk (None: no Lua frames in records).
    pub lua: Option<LjLuaCfg>,
    /// Benchmark floor: attach a program that only counts hits.
    pub count_only: bool,
}

/// One record from the ring: a tracked allocation call returned.
#[derive(Debug)]
pub struct Event<'a> {
    /// The record's fixed part.
    pub rec: &'a LjRecAlloc,
    /// The Lua stack bytes the kernel copied (below `lua.base`).
    pub lstack: &'a [u8],
    /// The user stack copy (from `regs.sp`, at the return).
    pub stack: &'a [u8],
    /// The allocated pointer (posix_memalign's `*memptr`, else the
    /// return value).
    pub ptr: u64,
    /// The pointer was no longer in the live set when the record was
    /// read: freed already (its stack will not be needed).
    pub freed: bool,
}

/// The kernel's live set, mapped read-only: `LJ_SLOTS` words, then the
/// count of pointers spilled to the `live` hash.
struct LiveSlots {
    map: memmap2::Mmap,
}

impl LiveSlots {
    fn word(&self, i: usize) -> u64 {
        let Some(b) = self.map.get(i * 8..i * 8 + 8) else {
            return 0;
        };
        // The kernel updates words with compare-and-swap while this reads:
        // one aligned 8-byte load sees either value whole.
        // SAFETY: `b` is 8 bytes of the mapping, 8-aligned (the mapping
        // is page-aligned); AtomicU64 has u64's layout.
        let a = unsafe { &*(b.as_ptr() as *const std::sync::atomic::AtomicU64) };
        a.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether `ptr` is in the live set (`obj` holds the spill hash).
    fn holds(&self, obj: &libbpf_rs::Object, ptr: u64) -> bool {
        if ptr == 0 {
            return false;
        }
        if abi::slots_of(ptr).iter().any(|&i| self.word(i) == ptr) {
            return true;
        }
        // Spilled pointers (both slots taken) are in the hash.
        if self.word(1 << abi::SLOTS_LOG2) as i64 <= 0 {
            return false;
        }
        let Some(m) = obj.maps().find(|m| m.name() == "live") else {
            return true;
        };
        !matches!(m.lookup(&ptr.to_ne_bytes(), MapFlags::ANY), Ok(None))
    }
}

/// The function kind the BPF program knows `f` as.
fn kind(f: Func) -> Option<u64> {
    use abi::func::*;
    Some(match f {
        Func::Malloc => MALLOC,
        Func::Calloc => CALLOC,
        Func::Realloc => REALLOC,
        Func::ReallocArray => REALLOCARRAY,
        Func::Free => FREE,
        Func::PosixMemalign => POSIX_MEMALIGN,
        Func::AlignedAlloc | Func::Memalign => ALIGNED_ALLOC,
        Func::Valloc | Func::Pvalloc => VALLOC,
        Func::LuaAllocf => LUA_ALLOCF,
        Func::UsdtAlloc | Func::UsdtFree => return None,
    })
}

/// The BPF tracer attached to one process.
pub struct BpfSession {
    // Field order is drop order: unmap the ring, detach, then free the
    // object (programs and maps).
    ring: BpfRing,
    links: Vec<libbpf_rs::Link>,
    obj: libbpf_rs::Object,
    specs: Vec<ProbeSpec>,
    sampling: bool,
    /// Threads seen (listed at a poll, or in a record).
    tids: std::collections::HashSet<u32>,
    /// Whether `tids` holds the threads listed at the start (those seen
    /// after are logged as new).
    threads_listed: bool,
    /// The live set's array, mapped.
    slots: LiveSlots,
    /// When held allocations were last checked against it, and how many
    /// were left.
    swept: (std::time::Instant, usize),
    /// Slot of `anchors` -> the thread anchored there.
    anchored: crate::inthash::IntMap<u32, u32>,
    /// How long loading and attaching took.
    pub attach_time: std::time::Duration,
}

impl std::fmt::Debug for BpfSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BpfSession({} links)", self.links.len())
    }
}

/// libbpf's own messages go to the log (debug), not raw to stderr.
fn route_libbpf_messages() {
    fn print(level: libbpf_rs::PrintLevel, msg: String) {
        match level {
            libbpf_rs::PrintLevel::Warn => log::debug!("libbpf: {}", msg.trim_end()),
            _ => log::trace!("libbpf: {}", msg.trim_end()),
        }
    }
    libbpf_rs::set_print(Some((libbpf_rs::PrintLevel::Debug, print)));
}

impl BpfSession {
    /// Load the programs and attach one session link per object file to
    /// the entry sites of `specs` (return specs share their entry's link: the session runs
    /// the same program at the return) to process `pid`.
    pub fn attach(pid: i32, specs: Vec<ProbeSpec>, o: BpfOpts) -> Result<BpfSession, BpfError> {
        let t0 = std::time::Instant::now();
        if let Some(s) = specs.iter().find(|s| kind(s.func).is_none()) {
            return Err(BpfError::Unsupported(format!(
                "{} probes are traced by the perf tracer only",
                s.func.name()
            )));
        }
        route_libbpf_messages();
        let load = |what: &str| {
            let what = what.to_string();
            move |source| BpfError::Load { what, source }
        };
        let mut open = ObjectBuilder::default()
            .open_memory(abi::OBJECT)
            .map_err(load("opening the embedded BPF object"))?;
        let ring_bytes = o.ring_bytes.max(1 << 16).next_power_of_two();
        let cfg = LjConfig {
            sample_bytes: o.sample_bytes.unwrap_or(0),
            stack_bytes: o.stack_bytes.min(abi::MAX_STACK) & !7,
            pad: 0,
            lua: o.lua.unwrap_or_default(),
        };
        for mut m in open.maps_mut() {
            let name = m.name().to_string_lossy().into_owned();
            if name == "events" {
                m.set_max_entries(ring_bytes as u32)
                    .map_err(load("sizing the ring buffer"))?;
            } else if name.ends_with(".rodata") {
                let bytes = abi::bytes(&cfg);
                if let Some(v) = m.initial_value_mut() {
                    if v.len() >= bytes.len() {
                        v[..bytes.len()].copy_from_slice(&bytes);
                    }
                }
            }
        }
        let obj = open.load().map_err(load("loading the BPF programs"))?;
        let mut links = Vec::new();
        {
            let prog = obj
                .progs_mut()
                .find(|p| {
                    p.name()
                        == if o.count_only {
                            "ljleak_count"
                        } else {
                            "ljleak_alloc"
                        }
                })
                .ok_or_else(|| BpfError::Unsupported("program ljleak_alloc missing".into()))?;
            // One link per object file, holding all its sites: each link
            // costs an RCU grace period to detach (~50 ms here), whatever
            // its number of sites.
            let mut by_path: Vec<(&str, &str, Vec<usize>, Vec<u64>)> = Vec::new();
            for (i, s) in specs.iter().enumerate() {
                if s.retprobe() {
                    continue;
                }
                let cookie = ((i as u64) << 8) | kind(s.func).unwrap_or(0);
                let off = s.attr.offset as usize;
                match by_path.iter_mut().find(|g| g.0 == s.attr.path) {
                    Some(g) => {
                        g.2.push(off);
                        g.3.push(cookie);
                    }
                    None => by_path.push((&s.attr.path, &s.target_path, vec![off], vec![cookie])),
                }
            }
            for (path, target_path, offsets, cookies) in by_path {
                let n = offsets.len();
                let opts = UprobeMultiOpts {
                    offsets,
                    cookies,
                    session: true,
                    ..Default::default()
                };
                let l = prog
                    .attach_uprobe_multi_with_opts(pid, path, "", opts)
                    .map_err(|source| BpfError::Load {
                        what: format!(
                            "attaching a uprobe_multi session link to {n} sites of {target_path}"
                        ),
                        source,
                    })?;
                links.push(l);
            }
        }
        let ring_fd = {
            let m = obj
                .maps()
                .find(|m| m.name() == "events")
                .ok_or_else(|| BpfError::Unsupported("map events missing".into()))?;
            m.as_fd().try_clone_to_owned().map_err(BpfError::Ring)?
        };
        let ring = BpfRing::map(ring_fd, ring_bytes).map_err(BpfError::Ring)?;
        let slots = {
            let m = obj
                .maps()
                .find(|m| m.name() == "slots")
                .ok_or_else(|| BpfError::Unsupported("map slots missing".into()))?;
            // SAFETY: a read-only shared mapping of a BPF array the kernel
            // keeps as long as the map; read only through atomic loads.
            let map = unsafe {
                memmap2::MmapOptions::new()
                    .len(((1usize << abi::SLOTS_LOG2) + 1) * 8)
                    .map(&m.as_fd())
            }
            .map_err(BpfError::Ring)?;
            LiveSlots { map }
        };
        Ok(BpfSession {
            ring,
            links,
            obj,
            specs,
            sampling: o.sample_bytes.is_some(),
            tids: Default::default(),
            threads_listed: false,
            slots,
            swept: (std::time::Instant::now(), 0),
            anchored: Default::default(),
            attach_time: t0.elapsed(),
        })
    }

    /// The probe set (as given, return specs included).
    pub fn specs(&self) -> &[ProbeSpec] {
        &self.specs
    }

    /// Whether the kernel samples (`--sample-bytes`).
    pub fn sampling(&self) -> bool {
        self.sampling
    }

    /// Note the threads `pid` has now (the links cover them already: this
    /// only counts them for the summary).
    pub fn note_threads(&mut self, pid: i32) {
        let Ok(t) = crate::target::threads(pid) else {
            return;
        };
        for tid in t {
            if self.tids.insert(tid as u32) && self.threads_listed {
                log_new_thread(tid as u32);
            }
        }
        self.threads_listed = true;
    }

    /// Threads seen so far.
    pub fn thread_count(&self) -> usize {
        self.tids.len()
    }

    /// Links attached.
    pub fn link_count(&self) -> usize {
        self.links.len()
    }

    /// Whether ljleak should check its held allocations against the live
    /// set, holding `held`: half a second since the last check, or twice
    /// as many held as after it.
    pub fn sweep_due(&self, held: usize) -> bool {
        let (at, after) = self.swept;
        held > 2 * after + 4096 || at.elapsed() > std::time::Duration::from_millis(500)
    }

    /// A check left `held` allocations.
    pub fn swept(&mut self, held: usize) {
        self.swept = (std::time::Instant::now(), held);
    }

    /// Whether `ptr` is in the kernel's live set now (allocated by a
    /// traced call and not freed since).
    pub fn is_live(&self, ptr: u64) -> bool {
        self.slots.holds(&self.obj, ptr)
    }

    /// Decode every record now in the ring; `f` gets each with the index
    /// of the probe (entry spec) it came from.
    pub fn drain(&mut self, mut f: impl FnMut(usize, Event<'_>)) -> usize {
        let mut bad = 0;
        let tids = &mut self.tids;
        let listed = self.threads_listed;
        let (slots, obj) = (&self.slots, &self.obj);
        let n = self.ring.drain(|rec| {
            if let Some(tid) = rec.get(4..8) {
                let tid = u32::from_le_bytes(tid.try_into().unwrap_or([0; 4]));
                if tids.insert(tid) && listed {
                    log_new_thread(tid);
                }
            }
            let ev = match abi::read::<u32>(rec) {
                Some(abi::REC_ALLOC) => abi::view::<LjRecAlloc>(rec).map(|e| {
                    let data = rec.get(std::mem::size_of::<LjRecAlloc>()..).unwrap_or(&[]);
                    let part = |from: usize, len: usize| {
                        let from = from.min(data.len());
                        &data[from..from + len.min(data.len() - from)]
                    };
                    let ptr = match e.deref {
                        0 => e.ret,
                        d => d,
                    };
                    Event {
                        rec: e,
                        lstack: part(0, (e.lua.lstack_len as usize).min(e.lua_room as usize)),
                        stack: part(e.lua_room as usize, e.stack_len as usize),
                        ptr,
                        freed: !slots.holds(obj, ptr),
                    }
                }),
                _ => None,
            };
            match ev {
                Some(ev) => f((ev.rec.cookie >> 8) as usize, ev),
                None => bad += 1,
            }
        });
        if bad > 0 {
            log::debug!("{bad} BPF records did not decode");
        }
        n
    }

    /// Set (or replace) the anchor of thread `tid`, in the slot of its
    /// tid. A slot is kept by the first thread anchored there: a thread
    /// whose tid shares it gets no anchor (its copies go to its top).
    pub fn set_anchor(&mut self, tid: u32, a: &abi::LjAnchor) {
        let slot = tid & (abi::TSLOTS - 1);
        match self.anchored.get(&slot) {
            Some(&owner) if owner != tid => {
                log::debug!("thread {tid}: its anchor slot is thread {owner}'s");
                return;
            }
            _ => {}
        }
        let Some(m) = self.obj.maps().find(|m| m.name() == "anchors") else {
            return;
        };
        let a = abi::LjAnchor { tid, ..*a };
        match m.update(&slot.to_ne_bytes(), &abi::bytes(&a), MapFlags::ANY) {
            Ok(()) => {
                self.anchored.insert(slot, tid);
            }
            Err(e) => log::debug!("setting the stack anchor of thread {tid}: {e}"),
        }
    }

    /// The programs' counters, summed over CPUs.
    pub fn counters(&self) -> [u64; abi::counter::N] {
        let mut out = [0u64; abi::counter::N];
        let Some(m) = self.obj.maps().find(|m| m.name() == "counters") else {
            return out;
        };
        for (i, slot) in out.iter_mut().enumerate() {
            let key = (i as u32).to_ne_bytes();
            if let Ok(Some(per_cpu)) = m.lookup_percpu(&key, MapFlags::ANY) {
                *slot = per_cpu
                    .iter()
                    .filter_map(|v| v.get(..8))
                    .map(|b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])))
                    .sum();
            }
        }
        out
    }
}

/// A thread first seen after the start (in the log at `-v`: when it was
/// noticed, for anyone timing a short-lived thread against the window).
fn log_new_thread(tid: u32) {
    log::info!("thread {tid} started during the window");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_have_the_slots_user_space_indexes() {
        let open = ObjectBuilder::default().open_memory(abi::OBJECT).unwrap();
        let max = |name: &str| {
            open.maps()
                .find(|m| m.name() == name)
                .unwrap_or_else(|| panic!("map {name}"))
                .max_entries()
        };
        assert_eq!(max("pend"), abi::TSLOTS);
        assert_eq!(max("anchors"), abi::TSLOTS);
        // ljleak maps the live set's slots and the spill count after them.
        assert_eq!(max("slots"), (1 << abi::SLOTS_LOG2) + 1);
    }
}
