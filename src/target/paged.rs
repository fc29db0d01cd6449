//! Another process's memory read through a bounded cache of fixed-size
//! blocks: the heap is never copied whole into ljleak's RAM, however big.
//! Used on a fork snapshot (which does not change while it is read).
//!
//! Reads go through `/proc/PID/mem`, not `process_vm_readv`: the latter
//! pins pages (FOLL_PIN), and pinning a page shared after fork makes the
//! kernel unshare it first (mm/gup.c gup_must_unshare), so every page read
//! would be copied: the whole heap, twice over, in the system's memory.
//! `/proc/PID/mem` takes plain references (FOLL_GET) and copies nothing.
//!
//! Reads are limited to a list of ranges (the heap mappings), as a
//! [`HeapImage`](super::HeapImage) would be, so a walk sees the same
//! memory either way. The cache is a hash of block numbers over a fixed
//! array of slots, evicted by the CLOCK rule (a second chance for blocks
//! used since the hand last passed).

use std::cell::{Cell, RefCell};

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::mem::{MemError, Memory};
use crate::inthash::IntMap;

/// Block size: one `process_vm_readv` per miss; big enough that a linear
/// scan costs few syscalls, small enough that a random one wastes little.
pub const BLOCK: usize = 4096;
const SHIFT: u32 = BLOCK.trailing_zeros();

struct Cache {
    index: IntMap<u64, u32>,
    /// Block number held by each slot (u64::MAX: free).
    block: Vec<u64>,
    used: Vec<bool>,
    data: Vec<u8>,
    hand: usize,
}

/// Counters for `--verbose` and benchmarks.
#[derive(Debug, Default, Clone, Copy)]
pub struct PagedStats {
    /// Reads served.
    pub reads: u64,
    /// Blocks fetched.
    pub misses: u64,
}

/// Bounded, read-only view of a process's memory.
pub struct PagedMemory {
    pid: i32,
    mem: File,
    ranges: Vec<(u64, u64)>,
    cache: RefCell<Cache>,
    /// (block, slot) of the last hit: most reads fall in the same block.
    last: Cell<(u64, u32)>,
    stats: Cell<PagedStats>,
}

impl std::fmt::Debug for PagedMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PagedMemory")
            .field("pid", &self.pid)
            .field("ranges", &self.ranges.len())
            .field("cache_bytes", &self.cache_bytes())
            .finish()
    }
}

impl PagedMemory {
    /// Read `pid` within `ranges` (sorted, disjoint) through a cache of at
    /// most `cache_bytes` (rounded to whole blocks, at least 16 of them).
    pub fn new(
        pid: i32,
        mut ranges: Vec<(u64, u64)>,
        cache_bytes: usize,
    ) -> std::io::Result<PagedMemory> {
        ranges.sort_unstable();
        let slots = (cache_bytes / BLOCK).max(16);
        Ok(PagedMemory {
            pid,
            mem: File::open(format!("/proc/{pid}/mem"))?,
            ranges,
            cache: RefCell::new(Cache {
                index: IntMap::with_capacity_and_hasher(slots, Default::default()),
                block: vec![u64::MAX; slots],
                used: vec![false; slots],
                data: vec![0u8; slots * BLOCK],
                hand: 0,
            }),
            last: Cell::new((u64::MAX, 0)),
            stats: Cell::new(PagedStats::default()),
        })
    }

    /// The process read.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Fill `buf` from `addr` whole, or fail.
    fn fetch(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let mut done = 0;
        while done < buf.len() {
            match self.mem.read_at(&mut buf[done..], addr + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(match e.raw_os_error() {
                        Some(libc::EIO) | Some(libc::EFAULT) | None => MemError::Unmapped {
                            addr,
                            len: buf.len(),
                        },
                        Some(errno) => MemError::Os { addr, errno },
                    })
                }
            }
        }
        if done < buf.len() {
            return Err(MemError::Unmapped {
                addr,
                len: buf.len(),
            });
        }
        Ok(())
    }

    /// Bytes the ranges cover (what a copy would take).
    pub fn total_bytes(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s).sum()
    }

    /// Size of the cache.
    pub fn cache_bytes(&self) -> usize {
        self.cache.borrow().data.len()
    }

    /// Counters so far.
    pub fn stats(&self) -> PagedStats {
        self.stats.get()
    }

    /// The range holding `[addr, addr+len)` whole, if any.
    fn range_of(&self, addr: u64, len: usize) -> Option<(u64, u64)> {
        let end = addr.checked_add(len as u64)?;
        let i = self.ranges.partition_point(|r| r.1 <= addr);
        let r = *self.ranges.get(i)?;
        (addr >= r.0 && end <= r.1).then_some(r)
    }

    /// Slot holding block `b` (of range `r`), fetching it on a miss.
    fn slot(&self, b: u64, r: (u64, u64)) -> Result<u32, MemError> {
        let (lb, ls) = self.last.get();
        if lb == b {
            return Ok(ls);
        }
        let mut c = self.cache.borrow_mut();
        if let Some(&s) = c.index.get(&b) {
            c.used[s as usize] = true;
            self.last.set((b, s));
            return Ok(s);
        }
        // CLOCK: skip slots used since the hand last passed, clearing them.
        let n = c.block.len();
        let s = loop {
            let h = c.hand;
            c.hand = (h + 1) % n;
            if c.used[h] {
                c.used[h] = false;
            } else {
                break h;
            }
        };
        let old = c.block[s];
        if old != u64::MAX {
            c.index.remove(&old);
        }
        c.block[s] = u64::MAX;
        // Only the parts of the block inside ranges are read (page runs
        // may share a block); only a failure of the part asked for counts.
        let (b0, b1) = (b << SHIFT, (b + 1) << SHIFT);
        let first = self.ranges.partition_point(|x| x.1 <= b0);
        for &(lo, hi) in self.ranges[first..].iter().take_while(|x| x.0 < b1) {
            let (lo, hi) = (lo.max(b0), hi.min(b1));
            let off = s * BLOCK + (lo - b0) as usize;
            let res = self.fetch(lo, &mut c.data[off..off + (hi - lo) as usize]);
            if res.is_err() && lo < r.1 && hi > r.0 {
                return res.map(|_| 0);
            }
        }
        c.block[s] = b;
        c.used[s] = true;
        c.index.insert(b, s as u32);
        let mut st = self.stats.get();
        st.misses += 1;
        self.stats.set(st);
        self.last.set((b, s as u32));
        Ok(s as u32)
    }
}

impl Memory for PagedMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        let len = buf.len();
        let unmapped = MemError::Unmapped { addr, len };
        let r = self.range_of(addr, len).ok_or(unmapped)?;
        let mut st = self.stats.get();
        st.reads += 1;
        self.stats.set(st);
        let mut done = 0usize;
        while done < len {
            let a = addr + done as u64;
            let b = a >> SHIFT;
            let s = self.slot(b, r)? as usize;
            let off = (a - (b << SHIFT)) as usize;
            let n = (BLOCK - off).min(len - done);
            let c = self.cache.borrow();
            buf[done..done + n].copy_from_slice(&c.data[s * BLOCK + off..s * BLOCK + off + n]);
            done += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::ReadExt;

    #[test]
    fn reads_own_memory_through_a_small_cache() {
        // 40 blocks of distinct words, read through a 16-block cache in
        // two passes and across block ends.
        let words = 40 * BLOCK / 8;
        let v: Vec<u64> = (0..words as u64).map(|i| i * 7 + 1).collect();
        let base = v.as_ptr() as u64;
        let end = base + (words * 8) as u64;
        let m = PagedMemory::new(std::process::id() as i32, vec![(base, end)], 0).unwrap();
        assert_eq!(m.cache_bytes(), 16 * BLOCK);
        for _ in 0..2 {
            for i in (0..words).step_by(97) {
                assert_eq!(m.u64(base + 8 * i as u64).unwrap(), v[i]);
            }
        }
        // A read straddling a block boundary.
        let first = (base | (BLOCK as u64 - 1)) + 1 - 4;
        let mut b = [0u8; 8];
        m.read(first, &mut b).unwrap();
        let i = ((first - base) / 8) as usize;
        let mut want = v[i].to_le_bytes()[4..].to_vec();
        want.extend_from_slice(&v[i + 1].to_le_bytes()[..4]);
        assert_eq!(&b[..], &want[..]);
        // Outside the ranges: refused, as a copy would.
        assert!(m.u64(end).is_err());
        assert!(m.u64(end - 4).is_err());
        assert!(m.u8(base - 1).is_err());
        assert!(m.stats().misses > 40);
    }

    #[test]
    fn ranges_sharing_a_block_are_both_read() {
        // Two page runs inside one block, with a gap between them.
        let v: Vec<u8> = (0..4 * BLOCK).map(|i| (i / 4096) as u8 + 1).collect();
        let b0 = (v.as_ptr() as u64 + BLOCK as u64) & !(BLOCK as u64 - 1);
        let ranges = vec![(b0 + 256, b0 + 512), (b0 + 1024, b0 + 2048)];
        let m = PagedMemory::new(std::process::id() as i32, ranges, 0).unwrap();
        let at = |a: u64| v[(a - v.as_ptr() as u64) as usize];
        assert_eq!(m.u8(b0 + 300).unwrap(), at(b0 + 300));
        // Same block, the other range: served from the cached block.
        assert_eq!(m.u8(b0 + 2000).unwrap(), at(b0 + 2000));
        assert_eq!(m.stats().misses, 1);
        // The gap and the ends are outside both ranges.
        assert!(m.u8(b0 + 600).is_err());
        assert!(m.u8(b0 + 2048).is_err());
        assert!(m.u16(b0 + 511).is_err());
    }
}
