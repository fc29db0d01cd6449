//! Where a captured heap is read from: a copy in ljleak's memory, or a
//! bounded window onto a fork snapshot. One [`Memory`] for the walker
//! either way; other sources (core files) add a variant.

use super::image::HeapImage;
use super::mem::{MemError, Memory};
use super::paged::PagedMemory;

/// A captured heap.
#[derive(Debug)]
pub enum HeapSource {
    /// Copied in bulk while the target was paused.
    Copy(HeapImage),
    /// Read from a copy-on-write snapshot process through a bounded cache.
    Paged(PagedMemory),
}

impl HeapSource {
    /// Bytes the heap mappings hold (copied, or readable in the snapshot).
    pub fn total_bytes(&self) -> u64 {
        match self {
            HeapSource::Copy(i) => i.total_bytes(),
            HeapSource::Paged(p) => p.total_bytes(),
        }
    }

    /// The in-memory copy, if that is what this is.
    pub fn image(&self) -> Option<&HeapImage> {
        match self {
            HeapSource::Copy(i) => Some(i),
            HeapSource::Paged(_) => None,
        }
    }

    /// The in-memory copy, mutable (fault injection in tests).
    pub fn image_mut(&mut self) -> Option<&mut HeapImage> {
        match self {
            HeapSource::Copy(i) => Some(i),
            HeapSource::Paged(_) => None,
        }
    }
}

impl Memory for HeapSource {
    #[inline]
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        match self {
            HeapSource::Copy(i) => i.read(addr, buf),
            HeapSource::Paged(p) => p.read(addr, buf),
        }
    }

    #[inline]
    fn borrow(&self, addr: u64, len: usize) -> Option<&[u8]> {
        match self {
            HeapSource::Copy(i) => i.borrow(addr, len),
            HeapSource::Paged(_) => None,
        }
    }

    #[inline]
    fn prefetch(&self, addr: u64) {
        if let HeapSource::Copy(i) = self {
            i.prefetch(addr)
        }
    }
}
