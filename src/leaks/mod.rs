//! Leak accounting: which allocations made inside the window are still live
//! at its end, keyed by pointer, with the stack that made them.
//!
//! Calls arrive as entry and return events per thread. An allocation
//! function called from inside another traced call on the same thread
//! (glibc's reallocarray calls realloc, realloc(p, 0) calls free) is nested:
//! only the outermost call counts. A call is nested when its stack pointer
//! is below that of a pending call on the thread; a pending call whose
//! return was lost is recognised when a later call arrives at the same or a
//! higher stack pointer, and dropped.
//!
//! Not here: decoding samples (`crate::trace`), unwinding (`crate::unwind`).

pub mod stacks;

use std::collections::HashMap;

use crate::trace::probes::Func;

/// Where an allocation came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// libc malloc and friends.
    Libc,
    /// LuaJIT's allocator.
    Luajit,
    /// A custom allocator's USDT probes.
    Usdt,
}

/// A live allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Live {
    /// Requested bytes.
    pub size: u64,
    /// Stack id (see [`stacks::StackTable`]).
    pub stack: u32,
    /// When (perf clock, ns).
    pub time: u64,
    /// Which allocator.
    pub origin: Origin,
}

/// Arguments of an entry event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Args {
    /// rdi.
    pub a0: u64,
    /// rsi.
    pub a1: u64,
    /// rdx.
    pub a2: u64,
    /// rcx.
    pub a3: u64,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    func: Func,
    sp: u64,
    args: Args,
    stack: u32,
    time: u64,
    nested: bool,
}

/// Counters for the summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Counts {
    /// Allocations seen (outermost calls that returned a pointer).
    pub allocs: u64,
    /// Bytes they asked for.
    pub alloc_bytes: u64,
    /// Frees of memory allocated inside the window.
    pub frees: u64,
    /// Frees of memory allocated before the window (or whose allocation was lost).
    pub pre_window_frees: u64,
    /// Bytes of those, when the allocator tells (LuaJIT's does; free() does not).
    pub pre_window_free_bytes: u64,
    /// Calls nested in another traced call (not counted twice).
    pub nested: u64,
    /// Entries whose return never came (lost events).
    pub unmatched: u64,
    /// Allocation calls that failed (returned NULL).
    pub failed: u64,
}

/// The live set and per-thread call state.
#[derive(Debug, Default)]
pub struct Tracker {
    live: HashMap<u64, Live>,
    pending: HashMap<u32, Vec<Pending>>,
    /// Counters.
    pub counts: Counts,
}

/// Bound on pending calls per thread (deeper means lost returns).
const MAX_PENDING: usize = 16;

impl Tracker {
    /// A fresh tracker.
    pub fn new() -> Tracker {
        Tracker::default()
    }

    fn drop_stale(&mut self, tid: u32, sp: u64) {
        if let Some(p) = self.pending.get_mut(&tid) {
            while p.last().is_some_and(|q| sp >= q.sp) {
                p.pop();
                self.counts.unmatched += 1;
            }
        }
    }

    /// Whether a call at `sp` on `tid` would be nested in a pending one (so
    /// its stack need not be unwound).
    pub fn is_nested(&mut self, tid: u32, sp: u64) -> bool {
        self.drop_stale(tid, sp);
        self.pending.get(&tid).is_some_and(|p| !p.is_empty())
    }

    /// An allocation function was entered.
    pub fn on_entry(&mut self, tid: u32, func: Func, sp: u64, args: Args, stack: u32, time: u64) {
        let nested = self.is_nested(tid, sp);
        if nested {
            self.counts.nested += 1;
            log::trace!(
                "{func:?} nested in {:?}",
                self.pending[&tid].last().map(|p| p.func)
            );
        }
        let p = self.pending.entry(tid).or_default();
        if p.len() >= MAX_PENDING {
            p.remove(0);
            self.counts.unmatched += 1;
        }
        p.push(Pending {
            func,
            sp,
            args,
            stack,
            time,
            nested,
        });
    }

    /// A USDT allocation probe fired (no return to wait for).
    pub fn on_usdt_alloc(&mut self, ptr: u64, size: u64, stack: u32, time: u64) {
        let p = Pending {
            func: Func::UsdtAlloc,
            sp: 0,
            args: Args::default(),
            stack,
            time,
            nested: false,
        };
        self.alloc(ptr, size, &p, Origin::Usdt);
    }

    /// free(ptr) was entered.
    pub fn on_free(&mut self, tid: u32, sp: u64, ptr: u64) {
        if self.is_nested(tid, sp) {
            self.counts.nested += 1;
            log::trace!(
                "free nested in {:?}",
                self.pending[&tid].last().map(|p| p.func)
            );
            return;
        }
        self.free(ptr, None);
    }

    fn free(&mut self, ptr: u64, known_size: Option<u64>) {
        if ptr == 0 {
            return;
        }
        if self.live.remove(&ptr).is_some() {
            self.counts.frees += 1;
        } else {
            self.counts.pre_window_frees += 1;
            self.counts.pre_window_free_bytes += known_size.unwrap_or(0);
        }
    }

    fn alloc(&mut self, ptr: u64, size: u64, p: &Pending, origin: Origin) {
        if ptr == 0 {
            if size > 0 {
                self.counts.failed += 1;
            }
            return;
        }
        self.counts.allocs += 1;
        self.counts.alloc_bytes += size;
        self.live.insert(
            ptr,
            Live {
                size,
                stack: p.stack,
                time: p.time,
                origin,
            },
        );
    }

    /// A traced function returned `ret` on `tid`. For posix_memalign,
    /// `deref` reads the pointer it stored through its first argument.
    pub fn on_return(
        &mut self,
        tid: u32,
        func: Func,
        ret: u64,
        deref: impl FnOnce(u64) -> Option<u64>,
    ) {
        let Some(stack) = self.pending.get_mut(&tid) else {
            return;
        };
        let Some(pos) = stack.iter().rposition(|p| p.func == func) else {
            return;
        };
        let dropped = stack.len() - 1 - pos;
        let p = stack.remove(pos);
        stack.truncate(pos);
        self.counts.unmatched += dropped as u64;
        if p.nested {
            return;
        }
        let a = p.args;
        match func {
            Func::Malloc | Func::Valloc | Func::Pvalloc => self.alloc(ret, a.a0, &p, Origin::Libc),
            Func::Calloc => self.alloc(ret, a.a0.saturating_mul(a.a1), &p, Origin::Libc),
            Func::AlignedAlloc | Func::Memalign => self.alloc(ret, a.a1, &p, Origin::Libc),
            Func::PosixMemalign => {
                // Returns 0 on success, the pointer is in *memptr.
                if ret == 0 {
                    if let Some(ptr) = deref(a.a0) {
                        self.alloc(ptr, a.a2, &p, Origin::Libc);
                    }
                } else {
                    self.counts.failed += 1;
                }
            }
            Func::Realloc | Func::ReallocArray => {
                let size = if func == Func::Realloc {
                    a.a1
                } else {
                    a.a1.saturating_mul(a.a2)
                };
                self.resize(a.a0, ret, size, &p, Origin::Libc, None);
            }
            Func::LuaAllocf => {
                // allocf(ud, ptr, osize, nsize) (lj_alloc_f in lj_alloc.c).
                let (ptr, osize, nsize) = (a.a1, a.a2, a.a3);
                if nsize == 0 {
                    self.free(ptr, Some(osize));
                } else {
                    self.resize(ptr, ret, nsize, &p, Origin::Luajit, Some(osize));
                }
            }
            Func::Free | Func::UsdtAlloc | Func::UsdtFree => {}
        }
    }

    /// realloc semantics: the old block is freed when a new one is returned
    /// (or when the size is 0), the new one is allocated.
    fn resize(
        &mut self,
        old: u64,
        new: u64,
        size: u64,
        p: &Pending,
        origin: Origin,
        osize: Option<u64>,
    ) {
        if old == 0 {
            return self.alloc(new, size, p, origin);
        }
        if size == 0 {
            return self.free(old, osize);
        }
        if new == 0 {
            // Failed: the old block is untouched.
            self.counts.failed += 1;
            return;
        }
        self.free(old, osize);
        self.alloc(new, size, p, origin);
    }

    /// Allocations still live, at least `min_age_ns` old at time `end`.
    pub fn outstanding(&self, end: u64, min_age_ns: u64) -> impl Iterator<Item = (&u64, &Live)> {
        self.live
            .iter()
            .filter(move |(_, l)| end.saturating_sub(l.time) >= min_age_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a0: u64, a1: u64, a2: u64, a3: u64) -> Args {
        Args { a0, a1, a2, a3 }
    }

    #[test]
    fn realloc_chain_and_prewindow_free() {
        let mut t = Tracker::new();
        t.on_entry(1, Func::Malloc, 1000, args(10, 0, 0, 0), 1, 1);
        t.on_return(1, Func::Malloc, 0xa0, |_| None);
        t.on_entry(1, Func::Realloc, 1000, args(0xa0, 20, 0, 0), 2, 2);
        t.on_return(1, Func::Realloc, 0xb0, |_| None);
        t.on_entry(1, Func::Realloc, 1000, args(0xb0, 30, 0, 0), 3, 3);
        t.on_return(1, Func::Realloc, 0xc0, |_| None);
        t.on_free(1, 1000, 0x999);
        let out: Vec<_> = t.outstanding(10, 0).collect();
        assert_eq!(out.len(), 1);
        assert_eq!(*out[0].0, 0xc0);
        assert_eq!(out[0].1.size, 30);
        assert_eq!(out[0].1.stack, 3);
        assert_eq!(t.counts.frees, 2);
        assert_eq!(t.counts.pre_window_frees, 1);
    }

    #[test]
    fn nested_calls_count_once() {
        let mut t = Tracker::new();
        // reallocarray(NULL, 4, 8) calls realloc internally (deeper stack).
        t.on_entry(1, Func::ReallocArray, 1000, args(0, 4, 8, 0), 1, 1);
        assert!(t.is_nested(1, 900));
        t.on_entry(1, Func::Realloc, 900, args(0, 32, 0, 0), 0, 1);
        t.on_return(1, Func::Realloc, 0xa0, |_| None);
        t.on_return(1, Func::ReallocArray, 0xa0, |_| None);
        assert_eq!(t.counts.allocs, 1);
        assert_eq!(t.counts.nested, 1);
        assert_eq!(t.outstanding(5, 0).next().unwrap().1.size, 32);
        // A lost return: the next call at the same depth drops the stale entry.
        t.on_entry(1, Func::Malloc, 1000, args(5, 0, 0, 0), 1, 2);
        t.on_entry(1, Func::Malloc, 1000, args(6, 0, 0, 0), 1, 3);
        t.on_return(1, Func::Malloc, 0xd0, |_| None);
        assert_eq!(t.counts.unmatched, 1);
        assert_eq!(t.live[&0xd0].size, 6);
    }

    #[test]
    fn posix_memalign_luajit_and_min_age() {
        let mut t = Tracker::new();
        t.on_entry(1, Func::PosixMemalign, 1000, args(0x7ff0, 64, 100, 0), 1, 1);
        t.on_return(1, Func::PosixMemalign, 0, |a| (a == 0x7ff0).then_some(0xe0));
        assert_eq!(t.live[&0xe0].size, 100);
        t.on_entry(2, Func::LuaAllocf, 1000, args(0, 0, 0, 48), 2, 50);
        t.on_return(2, Func::LuaAllocf, 0xf0, |_| None);
        assert_eq!(t.live[&0xf0].origin, Origin::Luajit);
        // Free of a pre-window block with a known size.
        t.on_entry(2, Func::LuaAllocf, 1000, args(0, 0x123, 24, 0), 2, 60);
        t.on_return(2, Func::LuaAllocf, 0, |_| None);
        assert_eq!(t.counts.pre_window_free_bytes, 24);
        assert_eq!(t.outstanding(100, 60).count(), 1, "only the old one");
    }
}
