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
//! Each tracked call carries a stack handle (from the caller's store, see
//! [`deferred`]); handles the tracker lets go of (freed allocations, failed
//! or nested calls) are listed by [`Tracker::released`] so the store can
//! drop their stacks. With a [`sample::Sampler`] only sampled allocations
//! are tracked, each weighted by the bytes it stands for.
//!
//! Not here: decoding samples (`crate::trace`), unwinding (`crate::unwind`).

pub mod deferred;
pub mod sample;
pub mod stacks;

use crate::inthash::IntMap;

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
    /// Bytes it stands for: `size`, or its sampling weight.
    pub weight: u64,
    /// Stack handle of the caller's store (after [`Tracker::map_stacks`],
    /// whatever that maps it to).
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
    /// Bytes the allocation stands for; None: not tracked (a free, or not
    /// sampled).
    weight: Option<u64>,
}

/// The stack handle of an untracked call.
pub const NO_STACK: u32 = u32::MAX;

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
    /// With sampling: frees of pointers not tracked (not sampled, or
    /// allocated before the window; the two cannot be told apart).
    pub untracked_frees: u64,
}

/// The live set and per-thread call state.
#[derive(Debug, Default)]
pub struct Tracker {
    live: IntMap<u64, Live>,
    pending: IntMap<u32, Vec<Pending>>,
    released: Vec<u32>,
    sampler: Option<sample::Sampler>,
    /// Counters.
    pub counts: Counts,
}

/// Bytes a call asks for, known at entry; None for calls that only free.
pub fn requested(func: Func, a: &Args) -> Option<u64> {
    match func {
        Func::Malloc | Func::Valloc | Func::Pvalloc => Some(a.a0),
        Func::Calloc => Some(a.a0.saturating_mul(a.a1)),
        Func::AlignedAlloc | Func::Memalign => Some(a.a1),
        Func::PosixMemalign => Some(a.a2),
        Func::Realloc if a.a0 != 0 && a.a1 == 0 => None,
        Func::Realloc => Some(a.a1),
        Func::ReallocArray => Some(a.a1.saturating_mul(a.a2)),
        // allocf(ud, ptr, osize, nsize): nsize 0 frees.
        Func::LuaAllocf if a.a3 == 0 => None,
        Func::LuaAllocf => Some(a.a3),
        Func::Free | Func::UsdtAlloc | Func::UsdtFree => None,
    }
}

/// Bound on pending calls per thread (deeper means lost returns).
const MAX_PENDING: usize = 16;

impl Tracker {
    /// A fresh tracker.
    pub fn new() -> Tracker {
        Tracker::default()
    }

    /// Track only allocations `s` samples.
    pub fn set_sampler(&mut self, s: sample::Sampler) {
        self.sampler = Some(s);
    }

    /// The sampler, when sampling.
    pub fn sampler(&self) -> Option<&sample::Sampler> {
        self.sampler.as_ref()
    }

    /// Stack handles no longer referenced (drain after each event).
    pub fn released(&mut self) -> std::vec::Drain<'_, u32> {
        self.released.drain(..)
    }

    fn release(&mut self, stack: u32) {
        if stack != NO_STACK {
            self.released.push(stack);
        }
    }

    /// Replace every live allocation's stack handle by `f(handle)`.
    pub fn map_stacks(&mut self, mut f: impl FnMut(u32) -> u32) {
        for l in self.live.values_mut() {
            l.stack = f(l.stack);
        }
    }

    /// Whether an allocation of `size` bytes (None: not an allocation) is
    /// tracked, and the bytes it then stands for.
    fn decide(&mut self, size: Option<u64>) -> Option<u64> {
        let size = size?;
        match &mut self.sampler {
            None => Some(size),
            Some(s) => s.sample(size).map(|w| w.round() as u64),
        }
    }

    fn drop_stale(&mut self, tid: u32, sp: u64) {
        if let Some(p) = self.pending.get_mut(&tid) {
            while p.last().is_some_and(|q| sp >= q.sp) {
                if let Some(q) = p.pop() {
                    if q.stack != NO_STACK {
                        self.released.push(q.stack);
                    }
                }
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

    /// An allocation function was entered. `store` keeps the event's stack
    /// and returns its handle; it is called only when the allocation is
    /// tracked (outermost, an allocation, sampled).
    pub fn on_entry(
        &mut self,
        tid: u32,
        func: Func,
        sp: u64,
        args: Args,
        time: u64,
        store: impl FnOnce() -> u32,
    ) {
        let nested = self.is_nested(tid, sp);
        let mut weight = None;
        if nested {
            self.counts.nested += 1;
            log::trace!(
                "{func:?} nested in {:?}",
                self.pending[&tid].last().map(|p| p.func)
            );
        } else {
            weight = self.decide(requested(func, &args));
        }
        let stack = if weight.is_some() { store() } else { NO_STACK };
        self.push_pending(
            tid,
            Pending {
                func,
                sp,
                args,
                stack,
                time,
                nested,
                weight,
            },
        );
    }

    /// Queue a call waiting for its return; past [`MAX_PENDING`] the
    /// oldest is counted as unmatched and dropped.
    fn push_pending(&mut self, tid: u32, call: Pending) {
        let p = self.pending.entry(tid).or_default();
        if p.len() >= MAX_PENDING {
            let q = p.remove(0);
            self.counts.unmatched += 1;
            self.release(q.stack);
        }
        self.pending.entry(tid).or_default().push(call);
    }

    /// An allocation call the kernel tracer already found outermost and
    /// chose to track (the BPF path decides nesting and sampling itself),
    /// standing for `weight` bytes.
    #[allow(clippy::too_many_arguments)]
    pub fn on_entry_tracked(
        &mut self,
        tid: u32,
        func: Func,
        sp: u64,
        args: Args,
        time: u64,
        weight: u64,
        store: impl FnOnce() -> u32,
    ) {
        // A pending call at or below this one lost its return record.
        self.drop_stale(tid, sp);
        let stack = store();
        self.push_pending(
            tid,
            Pending {
                func,
                sp,
                args,
                stack,
                time,
                nested: false,
                weight: Some(weight),
            },
        );
    }

    /// A tracked pointer was freed (the kernel tracer's live set says so).
    pub fn forget(&mut self, ptr: u64) {
        self.free(ptr, None);
    }

    /// Live allocations held.
    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    /// Forget every held allocation whose pointer `live` says is freed.
    pub fn retain_live(&mut self, mut live: impl FnMut(u64) -> bool) {
        let released = &mut self.released;
        let mut gone = 0;
        self.live.retain(|&ptr, l| {
            let keep = live(ptr);
            if !keep {
                gone += 1;
                if l.stack != NO_STACK {
                    released.push(l.stack);
                }
            }
            keep
        });
        self.counts.frees += gone;
    }

    /// A USDT allocation probe fired (no return to wait for).
    pub fn on_usdt_alloc(&mut self, ptr: u64, size: u64, time: u64, store: impl FnOnce() -> u32) {
        let weight = self.decide(Some(size));
        let p = Pending {
            func: Func::UsdtAlloc,
            sp: 0,
            args: Args::default(),
            stack: if weight.is_some() { store() } else { NO_STACK },
            time,
            nested: false,
            weight,
        };
        if !self.alloc(ptr, size, &p, Origin::Usdt) {
            self.release(p.stack);
        }
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
        if let Some(l) = self.live.remove(&ptr) {
            self.counts.frees += 1;
            self.release(l.stack);
        } else if self.sampler.is_some() {
            self.counts.untracked_frees += 1;
        } else {
            self.counts.pre_window_frees += 1;
            self.counts.pre_window_free_bytes += known_size.unwrap_or(0);
        }
    }

    /// Count an allocation; true when its stack handle is now owned by
    /// the live set.
    fn alloc(&mut self, ptr: u64, size: u64, p: &Pending, origin: Origin) -> bool {
        if ptr == 0 {
            if size > 0 {
                self.counts.failed += 1;
            }
            return false;
        }
        self.counts.allocs += 1;
        self.counts.alloc_bytes += size;
        let Some(weight) = p.weight else {
            // Not sampled; a block reusing a tracked address means its free
            // was missed.
            if let Some(old) = self.live.remove(&ptr) {
                self.release(old.stack);
            }
            return false;
        };
        let old = self.live.insert(
            ptr,
            Live {
                size,
                weight,
                stack: p.stack,
                time: p.time,
                origin,
            },
        );
        if let Some(old) = old {
            self.release(old.stack);
        }
        true
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
        let mut tail = stack.split_off(pos);
        let p = tail.remove(0);
        self.counts.unmatched += tail.len() as u64;
        for q in tail {
            self.release(q.stack);
        }
        if p.nested {
            return;
        }
        if !self.returned(func, ret, &p, deref) {
            self.release(p.stack);
        }
    }

    /// Account a returned outermost call; true when `p`'s stack handle is
    /// now owned by the live set.
    fn returned(
        &mut self,
        func: Func,
        ret: u64,
        p: &Pending,
        deref: impl FnOnce(u64) -> Option<u64>,
    ) -> bool {
        let a = p.args;
        match func {
            Func::Malloc | Func::Valloc | Func::Pvalloc => self.alloc(ret, a.a0, p, Origin::Libc),
            Func::Calloc => self.alloc(ret, a.a0.saturating_mul(a.a1), p, Origin::Libc),
            Func::AlignedAlloc | Func::Memalign => self.alloc(ret, a.a1, p, Origin::Libc),
            Func::PosixMemalign => {
                // Returns 0 on success, the pointer is in *memptr.
                if ret == 0 {
                    deref(a.a0).is_some_and(|ptr| self.alloc(ptr, a.a2, p, Origin::Libc))
                } else {
                    self.counts.failed += 1;
                    false
                }
            }
            Func::Realloc | Func::ReallocArray => {
                let size = if func == Func::Realloc {
                    a.a1
                } else {
                    a.a1.saturating_mul(a.a2)
                };
                self.resize(a.a0, ret, size, p, Origin::Libc, None)
            }
            Func::LuaAllocf => {
                // allocf(ud, ptr, osize, nsize) (lj_alloc_f in lj_alloc.c).
                let (ptr, osize, nsize) = (a.a1, a.a2, a.a3);
                if nsize == 0 {
                    self.free(ptr, Some(osize));
                    false
                } else {
                    self.resize(ptr, ret, nsize, p, Origin::Luajit, Some(osize))
                }
            }
            Func::Free | Func::UsdtAlloc | Func::UsdtFree => false,
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
    ) -> bool {
        if old == 0 {
            return self.alloc(new, size, p, origin);
        }
        if size == 0 {
            self.free(old, osize);
            return false;
        }
        if new == 0 {
            // Failed: the old block is untouched.
            self.counts.failed += 1;
            return false;
        }
        self.free(old, osize);
        self.alloc(new, size, p, origin)
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
        t.on_entry(1, Func::Malloc, 1000, args(10, 0, 0, 0), 1, || 1);
        t.on_return(1, Func::Malloc, 0xa0, |_| None);
        t.on_entry(1, Func::Realloc, 1000, args(0xa0, 20, 0, 0), 2, || 2);
        t.on_return(1, Func::Realloc, 0xb0, |_| None);
        t.on_entry(1, Func::Realloc, 1000, args(0xb0, 30, 0, 0), 3, || 3);
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
        t.on_entry(1, Func::ReallocArray, 1000, args(0, 4, 8, 0), 1, || 1);
        assert!(t.is_nested(1, 900));
        t.on_entry(1, Func::Realloc, 900, args(0, 32, 0, 0), 1, || 0);
        t.on_return(1, Func::Realloc, 0xa0, |_| None);
        t.on_return(1, Func::ReallocArray, 0xa0, |_| None);
        assert_eq!(t.counts.allocs, 1);
        assert_eq!(t.counts.nested, 1);
        assert_eq!(t.outstanding(5, 0).next().unwrap().1.size, 32);
        // A lost return: the next call at the same depth drops the stale entry.
        t.on_entry(1, Func::Malloc, 1000, args(5, 0, 0, 0), 2, || 1);
        t.on_entry(1, Func::Malloc, 1000, args(6, 0, 0, 0), 3, || 1);
        t.on_return(1, Func::Malloc, 0xd0, |_| None);
        assert_eq!(t.counts.unmatched, 1);
        assert_eq!(t.live[&0xd0].size, 6);
    }

    #[test]
    fn posix_memalign_luajit_and_min_age() {
        let mut t = Tracker::new();
        t.on_entry(
            1,
            Func::PosixMemalign,
            1000,
            args(0x7ff0, 64, 100, 0),
            1,
            || 1,
        );
        t.on_return(1, Func::PosixMemalign, 0, |a| (a == 0x7ff0).then_some(0xe0));
        assert_eq!(t.live[&0xe0].size, 100);
        t.on_entry(2, Func::LuaAllocf, 1000, args(0, 0, 0, 48), 50, || 2);
        t.on_return(2, Func::LuaAllocf, 0xf0, |_| None);
        assert_eq!(t.live[&0xf0].origin, Origin::Luajit);
        // Free of a pre-window block with a known size.
        t.on_entry(2, Func::LuaAllocf, 1000, args(0, 0x123, 24, 0), 60, || 2);
        t.on_return(2, Func::LuaAllocf, 0, |_| None);
        assert_eq!(t.counts.pre_window_free_bytes, 24);
        assert_eq!(t.outstanding(100, 60).count(), 1, "only the old one");
    }

    #[test]
    fn stack_handles_are_released_and_frees_store_none() {
        let mut t = Tracker::new();
        let mut stored = 0;
        t.on_entry(1, Func::Malloc, 1000, args(10, 0, 0, 0), 1, || 7);
        t.on_return(1, Func::Malloc, 0xa0, |_| None);
        // A LuaJIT free asks for no stack.
        t.on_entry(1, Func::LuaAllocf, 1000, args(0, 0xa8, 8, 0), 2, || {
            stored += 1;
            9
        });
        t.on_return(1, Func::LuaAllocf, 0, |_| None);
        assert_eq!(stored, 0);
        assert_eq!(t.released().count(), 0);
        t.on_free(1, 1000, 0xa0);
        assert_eq!(t.released().collect::<Vec<_>>(), vec![7]);
        // A failed allocation releases its stack at once.
        t.on_entry(1, Func::Malloc, 1000, args(10, 0, 0, 0), 3, || 8);
        t.on_return(1, Func::Malloc, 0, |_| None);
        assert_eq!(t.released().collect::<Vec<_>>(), vec![8]);
    }

    #[test]
    fn sampled_tracking_weights_and_untracked_frees() {
        let mut t = Tracker::new();
        t.set_sampler(sample::Sampler::new(1 << 18, 5));
        let mut stored = 0u64;
        for i in 0..20_000u64 {
            let ptr = 0x1000 + i * 0x1000;
            t.on_entry(1, Func::Malloc, 1000, args(1000, 0, 0, 0), i, || {
                stored += 1;
                i as u32
            });
            t.on_return(1, Func::Malloc, ptr, |_| None);
            if i % 2 == 0 {
                t.on_free(1, 1000, ptr);
            }
        }
        let released = t.released().count() as u64;
        let live: Vec<_> = t.outstanding(u64::MAX, 0).map(|(_, l)| *l).collect();
        assert_eq!(stored, t.sampler().unwrap().sampled);
        assert_eq!(released + live.len() as u64, stored);
        assert!(stored < 200, "{stored} of 20000 sampled");
        assert_eq!(t.counts.allocs, 20_000, "every call is still counted");
        assert_eq!(t.counts.frees + t.counts.untracked_frees, 10_000);
        let est: u64 = live.iter().map(|l| l.weight).sum();
        let truth = 10_000 * 1000;
        assert!(
            est.abs_diff(truth) < truth / 2,
            "estimate {est} vs {truth} from {} samples",
            live.len()
        );
    }
}
