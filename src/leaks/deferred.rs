//! Deferred unwinding. Most allocations made in a window are freed before
//! it ends, so unwinding every allocation stack as it arrives is mostly
//! wasted work. Instead each tracked allocation keeps its raw sample (the
//! registers and the user-stack copy taken synchronously with the event),
//! dropped again when the allocation is freed; only the stacks of
//! allocations still outstanding at the end are unwound, Lua frames
//! spliced, and interned.
//!
//! Raw stacks are bounded: past [`DEFAULT_CAP_BYTES`] of them, new stacks
//! are unwound at once and kept as interned ids (four bytes each), as
//! before deferral.
//!
//! Anchors (BPF tracer): the outer frames of a thread's stacks (nginx's
//! event loop, `main`, `_start`) repeat on every event. From the first
//! stacks of each thread, unwound as they arrive, the store learns the
//! innermost frame they all pass through and publishes its return-address
//! slot to the kernel ([`DeferredStacks::anchor_updates`]); later copies
//! stop there, and the bytes above are glued back from the stack the anchor
//! was learned from. A glued stack that does not pass through its anchor
//! when unwound ends at the anchor (counted as truncated), never with
//! another stack's outer frames.

use std::collections::HashMap;

use crate::trace::ebpf::abi::{LjAnchor, LjLuaSnap};
use crate::trace::record::Regs;
use crate::unwind::lua::LuaFrames;
use crate::unwind::lua_chain;
use crate::unwind::{End, Unwinder};

use super::stacks::StackTable;
use super::NO_STACK;

/// Raw stack bytes kept before falling back to unwinding at once.
pub const DEFAULT_CAP_BYTES: usize = 256 << 20;

/// Stacks of a thread unwound at arrival to learn its anchor.
const LEARN_MAX: u32 = 64;
/// Stacks a thread's anchor is learned from before it is published.
const LEARN_MIN: u32 = 3;
/// Bytes of outer stacks kept for gluing.
const OUTER_CAP_BYTES: usize = 32 << 20;

/// The Lua state a BPF record carried.
#[derive(Debug, Clone)]
pub struct LuaCopy {
    /// The validated state and C frames.
    pub snap: LjLuaSnap,
    /// Lua stack bytes from `snap.lstack_from`.
    pub lstack: Box<[u8]>,
}

/// What a BPF entry record says about its stack copy.
#[derive(Debug, Clone, Copy)]
pub struct BpfCopy<'a> {
    /// The thread.
    pub tid: u32,
    /// The allocation function's entry, put in front of the frames
    /// unwound from the return address (`regs` are those at the return).
    pub leaf: u64,
    /// The anchor slot the copy ends at (`slot + 8`), 0 for none.
    pub anchor: u64,
    /// The word the kernel found there.
    pub anchor_word: u64,
    /// The Lua state (None without a located VM).
    pub lua: Option<(&'a LjLuaSnap, &'a [u8])>,
}

#[derive(Debug)]
enum Slot {
    Vacant,
    Raw {
        regs: Regs,
        stack: Box<[u8]>,
        lua: Option<Box<LuaCopy>>,
        /// Index into `outers` of the bytes to glue above the copy.
        outer: Option<u32>,
        /// See [`BpfCopy::leaf`]; 0: `regs` are at the event itself.
        leaf: u64,
    },
    Unwound(u32),
}

/// The bytes above an anchor slot (from `slot + 8` on).
#[derive(Debug)]
struct Outer {
    slot: u64,
    word: u64,
    bytes: Box<[u8]>,
}

/// What a thread's stacks taught so far.
#[derive(Debug, Default)]
struct Learn {
    /// (return-address slot, word) of the frames every stack seen passed
    /// through, outermost first.
    common: Vec<(u64, u64)>,
    seen: u32,
    top: u64,
    published: Option<LjAnchor>,
}

/// Counters of the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeferStats {
    /// Stacks kept raw.
    pub deferred: u64,
    /// Stacks unwound (at the end, or at once past the cap).
    pub unwound: u64,
    /// Raw stacks dropped unwound (their allocation was freed).
    pub dropped: u64,
    /// Most raw bytes held at once.
    pub peak_bytes: usize,
}

/// Stacks of tracked allocations, raw until resolved.
pub struct DeferredStacks {
    slots: Vec<Slot>,
    vacant: Vec<u32>,
    raw_bytes: usize,
    cap: usize,
    unwinder: Unwinder,
    frames: Vec<u64>,
    sps: Vec<u64>,
    /// Lua frame splicing (None when the target's VM was not indexed).
    pub lua: Option<LuaFrames>,
    outers: Vec<Outer>,
    outer_ids: HashMap<(u64, u64), u32>,
    outer_bytes: usize,
    learn: HashMap<u32, Learn>,
    /// Anchors to publish to the kernel (taken by the tracer).
    pub anchor_updates: Vec<(u32, LjAnchor)>,
    /// Glued stacks that did not pass through their anchor.
    pub anchor_misses: u64,
    /// Unwound stacks.
    pub table: StackTable,
    /// Unwound stacks that stopped short of their root.
    pub truncated: u64,
    /// Counters.
    pub stats: DeferStats,
}

impl std::fmt::Debug for DeferredStacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeferredStacks({:?})", self.stats)
    }
}

impl DeferredStacks {
    /// A store holding at most `cap` raw bytes.
    pub fn new(unwinder: Unwinder, lua: Option<LuaFrames>, cap: usize) -> DeferredStacks {
        DeferredStacks {
            slots: Vec::new(),
            vacant: Vec::new(),
            raw_bytes: 0,
            cap,
            unwinder,
            frames: Vec::with_capacity(64),
            sps: Vec::with_capacity(64),
            lua,
            outers: Vec::new(),
            outer_ids: HashMap::new(),
            outer_bytes: 0,
            learn: HashMap::new(),
            anchor_updates: Vec::new(),
            anchor_misses: 0,
            table: StackTable::new(),
            truncated: 0,
            stats: DeferStats::default(),
        }
    }

    fn put(&mut self, slot: Slot) -> u32 {
        match self.vacant.pop() {
            Some(h) => {
                self.slots[h as usize] = slot;
                h
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        }
    }

    /// Keep the stack of an event (registers and the stack copy from
    /// `regs.sp` up); returns its handle.
    pub fn keep(&mut self, regs: &Regs, stack: &[u8]) -> u32 {
        self.keep_raw(regs, stack, None, None, 0)
    }

    /// [`Self::keep`] for a BPF record: its Lua state, and its copy that
    /// may end at the thread's anchor. Copies that do not are learned from.
    pub fn keep_bpf(&mut self, regs: &Regs, stack: &[u8], b: BpfCopy<'_>) -> u32 {
        // A state that did not validate has no chain to splice: keep none.
        let lua = b
            .lua
            .filter(|(snap, _)| snap.flags & crate::trace::ebpf::abi::lua_flags::OK != 0)
            .map(|(snap, lstack)| {
                Box::new(LuaCopy {
                    snap: *snap,
                    lstack: lstack.into(),
                })
            });
        let outer = if b.anchor != 0 {
            self.outer_ids.get(&(b.anchor, b.anchor_word)).copied()
        } else {
            self.learn_from(b.tid, regs, stack, b.leaf != 0);
            None
        };
        self.keep_raw(regs, stack, lua, outer, b.leaf)
    }

    fn keep_raw(
        &mut self,
        regs: &Regs,
        stack: &[u8],
        lua: Option<Box<LuaCopy>>,
        outer: Option<u32>,
        leaf: u64,
    ) -> u32 {
        if self.raw_bytes + stack.len() > self.cap {
            let id = self.unwind(regs, stack, lua.as_deref(), outer, leaf);
            return self.put(Slot::Unwound(id));
        }
        self.raw_bytes += stack.len();
        self.stats.deferred += 1;
        self.stats.peak_bytes = self.stats.peak_bytes.max(self.raw_bytes);
        self.put(Slot::Raw {
            regs: *regs,
            stack: stack.into(),
            lua,
            outer,
            leaf,
        })
    }

    /// Unwind a whole copy of thread `tid` now and narrow its anchor to
    /// the frames all its stacks so far pass through.
    fn learn_from(&mut self, tid: u32, regs: &Regs, stack: &[u8], at_return: bool) {
        let l = self.learn.entry(tid).or_default();
        if l.seen >= LEARN_MAX || stack.is_empty() {
            return;
        }
        if self
            .unwinder
            .unwind_from(regs, stack, at_return, &mut self.frames, &mut self.sps)
            == End::Truncated
        {
            return;
        }
        let sp = regs.sp;
        // Return-address slots of frames 1.. (each caller's sp - 8), outermost first.
        let mut chain: Vec<(u64, u64)> = self
            .sps
            .iter()
            .skip(1)
            .filter_map(|&s| {
                let slot = s.checked_sub(8)?;
                Some((slot, crate::unwind::stack_word(stack, sp, slot)?))
            })
            .collect();
        chain.reverse();
        log::debug!(
            "anchor learning, thread {tid}: {} frames, outermost {:x?}, innermost {:x?}",
            chain.len(),
            chain.first(),
            chain.last()
        );
        l.seen += 1;
        if l.seen == 1 {
            l.common = chain;
        } else {
            let n = l
                .common
                .iter()
                .zip(&chain)
                .take_while(|(a, b)| a == b)
                .count();
            l.common.truncate(n);
        }
        if let Some(&last) = self.sps.last() {
            let end = sp + stack.len() as u64;
            l.top = l.top.max(last.saturating_add(64).min(end));
        }
        let mut a = LjAnchor {
            top: l.top,
            ..Default::default()
        };
        if l.seen >= LEARN_MIN && l.common.len() >= 2 {
            let (s1, w1) = l.common[l.common.len() - 1];
            let (s2, w2) = l.common[l.common.len() - 2];
            a = LjAnchor {
                slot: s1,
                word: w1,
                slot2: s2,
                word2: w2,
                top: l.top,
                ..Default::default()
            };
        }
        if l.published == Some(a) {
            return;
        }
        if a.slot != 0 && !self.outer_ids.contains_key(&(a.slot, a.word)) {
            let from = (a.slot + 8 - sp) as usize;
            let Some(bytes) = stack.get(from..) else {
                return;
            };
            if self.outer_bytes + bytes.len() > OUTER_CAP_BYTES {
                return;
            }
            self.outer_bytes += bytes.len();
            self.outer_ids
                .insert((a.slot, a.word), self.outers.len() as u32);
            self.outers.push(Outer {
                slot: a.slot,
                word: a.word,
                bytes: bytes.into(),
            });
        }
        l.published = Some(a);
        self.anchor_updates.push((tid, a));
    }

    /// Forget the stack of `h` (its allocation was freed).
    pub fn release(&mut self, h: u32) {
        let Some(slot) = self.slots.get_mut(h as usize) else {
            return;
        };
        match std::mem::replace(slot, Slot::Vacant) {
            Slot::Vacant => return,
            Slot::Raw { stack, .. } => {
                self.raw_bytes -= stack.len();
                self.stats.dropped += 1;
            }
            Slot::Unwound(_) => {}
        }
        self.vacant.push(h);
    }

    /// The interned stack id of `h`, unwinding it now if still raw.
    pub fn resolve(&mut self, h: u32) -> u32 {
        if h == NO_STACK {
            return self.table.intern(&[]);
        }
        let Some(slot) = self.slots.get_mut(h as usize) else {
            return self.table.intern(&[]);
        };
        match std::mem::replace(slot, Slot::Vacant) {
            Slot::Vacant => self.table.intern(&[]),
            Slot::Unwound(id) => {
                self.slots[h as usize] = Slot::Unwound(id);
                id
            }
            Slot::Raw {
                regs,
                stack,
                lua,
                outer,
                leaf,
            } => {
                self.raw_bytes -= stack.len();
                let id = self.unwind(&regs, &stack, lua.as_deref(), outer, leaf);
                self.slots[h as usize] = Slot::Unwound(id);
                id
            }
        }
    }

    /// Unwind (gluing the outer bytes of an anchored copy), splice Lua
    /// frames, intern.
    fn unwind(
        &mut self,
        regs: &Regs,
        stack: &[u8],
        lua: Option<&LuaCopy>,
        outer: Option<u32>,
        leaf: u64,
    ) -> u32 {
        self.stats.unwound += 1;
        let glued;
        let mut anchor = None;
        let stack = match outer.and_then(|i| self.outers.get(i as usize)) {
            Some(o) if o.slot.checked_add(8) == regs.sp.checked_add(stack.len() as u64) => {
                anchor = Some((o.slot, o.word));
                glued = [stack, &o.bytes].concat();
                &glued[..]
            }
            _ => stack,
        };
        if self
            .unwinder
            .unwind_from(regs, stack, leaf != 0, &mut self.frames, &mut self.sps)
            == End::Truncated
        {
            self.truncated += 1;
        }
        if leaf != 0 {
            // The allocation function itself, entered one word below.
            self.frames.insert(0, leaf);
            self.sps.insert(0, regs.sp.wrapping_sub(8));
        }
        if let Some((slot, word)) = anchor {
            // The frame returning through the anchor slot must be there;
            // else keep only the frames below it.
            let through =
                (1..self.frames.len()).any(|i| self.sps[i] == slot + 8 && self.frames[i] == word);
            if !through {
                let keep = self.sps.iter().take_while(|&&s| s <= slot).count();
                self.frames.truncate(keep);
                self.sps.truncate(keep);
                self.anchor_misses += 1;
                self.truncated += 1;
            }
        }
        if let Some(l) = &mut self.lua {
            l.splice(&mut self.frames, &self.sps, stack, regs.sp);
            // The whole chain replaces the innermost-frame splice where the
            // kernel copied the Lua state.
            if let (Some(c), Some(vm)) = (lua, &l.chain_vm) {
                if let Some(segs) = lua_chain::segments(
                    vm,
                    &l.index,
                    &mut l.chain_names,
                    &c.snap,
                    &c.lstack,
                    stack,
                    regs.sp,
                ) {
                    lua_chain::splice(&mut self.frames, &mut self.sps, &segs);
                }
            }
        }
        self.table.intern(&self.frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::Maps;

    fn store(cap: usize) -> DeferredStacks {
        let pid = std::process::id() as i32;
        let maps = Maps::read(pid).expect("own maps");
        DeferredStacks::new(Unwinder::new(pid, &maps), None, cap)
    }

    #[test]
    fn raw_until_resolved_and_released_on_free() {
        let mut s = store(1 << 20);
        let regs = Regs {
            ip: 0x10,
            sp: 0x7000,
            ..Default::default()
        };
        let a = s.keep(&regs, &[0u8; 4096]);
        let b = s.keep(&regs, &[0u8; 4096]);
        assert_eq!(s.stats.peak_bytes, 8192);
        s.release(a);
        assert_eq!(s.stats.dropped, 1);
        assert_eq!(s.stats.unwound, 0, "nothing unwound before the end");
        // The freed slot is reused.
        assert_eq!(s.keep(&regs, &[0u8; 16]), a);
        let id = s.resolve(b);
        assert_eq!(s.stats.unwound, 1);
        assert_eq!(s.table.get(id).first(), Some(&0x10));
        // Resolving twice does not unwind again.
        assert_eq!(s.resolve(b), id);
        assert_eq!(s.stats.unwound, 1);
    }

    #[test]
    fn past_the_cap_stacks_are_unwound_at_once() {
        let mut s = store(5000);
        let regs = Regs {
            ip: 0x20,
            sp: 0x7000,
            ..Default::default()
        };
        s.keep(&regs, &[0u8; 4096]);
        let h = s.keep(&regs, &[0u8; 4096]);
        assert_eq!((s.stats.deferred, s.stats.unwound), (1, 1));
        let id = s.resolve(h);
        assert_eq!(s.table.get(id).first(), Some(&0x20));
    }
}
