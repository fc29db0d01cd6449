//! Consumer side of a `BPF_MAP_TYPE_RINGBUF`, mapped directly: the BPF
//! programs submit with `BPF_RB_NO_WAKEUP` and ljleak drains on a timer, so
//! no epoll and no callback plumbing is needed. Layout (kernel/bpf/ringbuf.c):
//! one read-write page holding the consumer position, then a read-only page
//! holding the producer position followed by the data area mapped twice in a
//! row (a record never needs reassembly). Each record starts with an 8-byte
//! header: length (bit 31 busy, bit 30 discarded) and a page offset.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};

const BUSY: u32 = 1 << 31;
const DISCARD: u32 = 1 << 30;
const HDR: u64 = 8;

/// A mapped BPF ring buffer. Dropping it unmaps both parts.
pub struct BpfRing {
    cons: MmapRaw,
    prod: MmapRaw,
    mask: u64,
    page: usize,
    _fd: OwnedFd,
}

impl std::fmt::Debug for BpfRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BpfRing({} bytes)", self.mask + 1)
    }
}

impl BpfRing {
    /// Map the ring buffer map `fd` of `size` data bytes (a power of two).
    pub fn map(fd: OwnedFd, size: usize) -> std::io::Result<BpfRing> {
        let page = 4096usize;
        let cons = MmapOptions::new().len(page).map_raw(fd.as_raw_fd())?;
        let prod = MmapOptions::new()
            .offset(page as u64)
            .len(page + 2 * size)
            .map_raw_read_only(fd.as_raw_fd())?;
        Ok(BpfRing {
            cons,
            prod,
            mask: size as u64 - 1,
            page,
            _fd: fd,
        })
    }

    fn pos(map: &MmapRaw) -> &AtomicU64 {
        // SAFETY: offset 0 of each mapping is the kernel's naturally
        // aligned u64 position, valid as long as the mapping (`self`); the
        // other side updates it concurrently, hence atomic access.
        unsafe { &*(map.as_ptr() as *const AtomicU64) }
    }

    /// Hand every submitted record to `f` (in place), then release the
    /// space. Stops at the first record still being written.
    pub fn drain(&self, f: impl FnMut(&[u8])) -> usize {
        let (n, cons) = self.visit(f);
        Self::pos(&self.cons).store(cons, Ordering::Release);
        n
    }

    /// Hand the submitted records to `f` without releasing them: a later
    /// [`Self::drain`] sees them again, in the same order, first.
    pub fn scan(&self, f: impl FnMut(&[u8])) -> usize {
        self.visit(f).0
    }

    /// Visit the submitted records: (how many, the position after them).
    fn visit(&self, mut f: impl FnMut(&[u8])) -> (usize, u64) {
        let cons_pos = Self::pos(&self.cons);
        let prod = Self::pos(&self.prod).load(Ordering::Acquire);
        let mut cons = cons_pos.load(Ordering::Acquire);
        let mut n = 0;
        while cons < prod {
            let off = self.page + (cons & self.mask) as usize;
            // SAFETY: `off` + 8 lies inside the producer mapping (data is
            // mapped twice, so even the last bytes of the area are followed
            // by a copy); the length word is written atomically by the kernel.
            let len_word = unsafe { &*(self.prod.as_ptr().add(off) as *const AtomicU64) }
                .load(Ordering::Acquire) as u32;
            if len_word & BUSY != 0 {
                break;
            }
            let len = (len_word & !(BUSY | DISCARD)) as usize;
            if len_word & DISCARD == 0 && len <= self.mask as usize {
                // SAFETY: the record's data follows its header and is at
                // most the area's size long, within the double mapping; the
                // kernel does not reuse it before we advance cons_pos.
                let rec = unsafe {
                    std::slice::from_raw_parts(self.prod.as_ptr().add(off + HDR as usize), len)
                };
                f(rec);
                n += 1;
            }
            cons += (len as u64 + HDR + 7) & !7;
        }
        (n, cons)
    }
}
