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

use crate::trace::ebpf::abi::LjLuaSnap;
use crate::trace::record::Regs;
use crate::unwind::lua::LuaFrames;
use crate::unwind::lua_chain;
use crate::unwind::{End, Unwinder};

use super::stacks::StackTable;
use super::NO_STACK;

/// Raw stack bytes kept before falling back to unwinding at once.
pub const DEFAULT_CAP_BYTES: usize = 256 << 20;

#[derive(Debug)]
enum Slot {
    Vacant,
    Raw {
        regs: Regs,
        stack: Box<[u8]>,
        lua: Option<Box<LjLuaSnap>>,
    },
    Unwound(u32),
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
        self.keep_with_lua(regs, stack, None)
    }

    /// [`Self::keep`] with the Lua state the BPF tracer copied.
    pub fn keep_with_lua(&mut self, regs: &Regs, stack: &[u8], lua: Option<&LjLuaSnap>) -> u32 {
        if self.raw_bytes + stack.len() > self.cap {
            let id = self.unwind(regs, stack, lua);
            return self.put(Slot::Unwound(id));
        }
        self.raw_bytes += stack.len();
        self.stats.deferred += 1;
        self.stats.peak_bytes = self.stats.peak_bytes.max(self.raw_bytes);
        self.put(Slot::Raw {
            regs: *regs,
            stack: stack.into(),
            lua: lua.map(|l| Box::new(*l)),
        })
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
            Slot::Raw { regs, stack, lua } => {
                self.raw_bytes -= stack.len();
                let id = self.unwind(&regs, &stack, lua.as_deref());
                self.slots[h as usize] = Slot::Unwound(id);
                id
            }
        }
    }

    /// Unwind, splice Lua frames, intern.
    fn unwind(&mut self, regs: &Regs, stack: &[u8], snap: Option<&LjLuaSnap>) -> u32 {
        self.stats.unwound += 1;
        if self
            .unwinder
            .unwind(regs, stack, &mut self.frames, &mut self.sps)
            == End::Truncated
        {
            self.truncated += 1;
        }
        if let Some(l) = &mut self.lua {
            l.splice(&mut self.frames, &self.sps, stack, regs.sp);
            // The whole chain replaces the innermost-frame splice where the
            // kernel copied the Lua state.
            if let (Some(snap), Some(vm)) = (snap, &l.chain_vm) {
                if let Some(segs) =
                    lua_chain::segments(vm, &l.index, &mut l.chain_names, snap, stack, regs.sp)
                {
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
