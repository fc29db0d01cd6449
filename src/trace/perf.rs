//! The two unsafe pieces of tracing: `perf_event_open` for one uprobe on one
//! thread, and the memory-mapped ring buffer its samples land in. Both are
//! RAII types: dropping a [`ProbeFd`] closes the fd, which removes the
//! uprobe from the target (the kernel keeps a uprobe only while an event
//! references it); dropping a [`Ring`] unmaps the buffer.
//!
//! Not here: what to probe ([`super::probes`]) and what a record means
//! ([`super::record`]).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};
use perf_event_open_sys::bindings::{perf_event_attr, perf_event_mmap_page};

use super::pmu::UprobePmu;
use super::TraceError;

/// perf_event sample_type bits (include/uapi/linux/perf_event.h).
pub mod sample {
    /// PERF_SAMPLE_IP.
    pub const IP: u64 = 1 << 0;
    /// PERF_SAMPLE_TID.
    pub const TID: u64 = 1 << 1;
    /// PERF_SAMPLE_TIME.
    pub const TIME: u64 = 1 << 2;
    /// PERF_SAMPLE_REGS_USER.
    pub const REGS_USER: u64 = 1 << 12;
    /// PERF_SAMPLE_STACK_USER.
    pub const STACK_USER: u64 = 1 << 13;
    /// PERF_SAMPLE_IDENTIFIER.
    pub const IDENTIFIER: u64 = 1 << 16;
}

/// What one uprobe event samples.
#[derive(Debug, Clone)]
pub struct ProbeAttr {
    /// Path of the object file in this process's view.
    pub path: String,
    /// File offset of the probed instruction.
    pub offset: u64,
    /// A return probe (fires when the function returns).
    pub retprobe: bool,
    /// `PERF_SAMPLE_*` bits.
    pub sample_type: u64,
    /// `sample_regs_user` mask (x86 perf register numbers).
    pub regs_mask: u64,
    /// Bytes of user stack to copy (0: none).
    pub stack_bytes: u32,
    /// File offset of a USDT semaphore the kernel should raise while the
    /// probe exists (0: none). The uprobe PMU takes it in `config:32-63`.
    pub ref_ctr_offset: u64,
}

/// One open uprobe event on one thread. Closing it removes the probe.
#[derive(Debug)]
pub struct ProbeFd {
    fd: OwnedFd,
}

impl ProbeFd {
    /// Open a disabled uprobe event for thread `tid`; poll() on its ring
    /// wakes once `wakeup_bytes` are waiting.
    pub fn open(
        pmu: &UprobePmu,
        a: &ProbeAttr,
        tid: i32,
        wakeup_bytes: u32,
    ) -> Result<ProbeFd, TraceError> {
        let path = CString::new(a.path.as_str()).map_err(|_| TraceError::Open {
            what: format!("uprobe on {}", a.path),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
        // Zeroed is the documented default for every field we do not set.
        let mut attr = perf_event_attr {
            type_: pmu.pmu_type,
            size: std::mem::size_of::<perf_event_attr>() as u32,
            config: (if a.retprobe {
                1u64 << pmu.retprobe_bit
            } else {
                0
            }) | (a.ref_ctr_offset << 32),
            sample_type: a.sample_type,
            sample_regs_user: a.regs_mask,
            sample_stack_user: a.stack_bytes,
            ..Default::default()
        };
        attr.__bindgen_anon_1.sample_period = 1;
        attr.__bindgen_anon_3.uprobe_path = path.as_ptr() as u64;
        attr.__bindgen_anon_4.probe_offset = a.offset;
        attr.__bindgen_anon_2.wakeup_watermark = wakeup_bytes;
        attr.set_watermark(1);
        attr.set_disabled(1);
        // Timestamps on CLOCK_MONOTONIC, so the window's end can be compared
        // with sample times (--min-age).
        attr.set_use_clockid(1);
        attr.clockid = libc::CLOCK_MONOTONIC;
        attr.set_exclude_callchain_kernel(1);
        // SAFETY: attr is a fully initialised perf_event_attr whose size
        // field matches this struct; `path` outlives the call (the kernel
        // copies the string during the syscall).
        let fd = unsafe {
            perf_event_open_sys::perf_event_open(
                &mut attr,
                tid,
                -1,
                -1,
                perf_event_open_sys::bindings::PERF_FLAG_FD_CLOEXEC as _,
            )
        };
        if fd < 0 {
            return Err(TraceError::Open {
                what: format!(
                    "{} at {}+{:#x} on thread {tid}",
                    if a.retprobe { "uretprobe" } else { "uprobe" },
                    a.path,
                    a.offset
                ),
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: fd is a fresh descriptor we own.
        Ok(ProbeFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Send this event's samples to `ring`'s buffer (same thread only).
    pub fn set_output(&self, ring: &ProbeFd) -> std::io::Result<()> {
        // SAFETY: both are perf event fds we own; the ioctl takes an fd.
        let r = unsafe {
            perf_event_open_sys::ioctls::SET_OUTPUT(self.fd.as_raw_fd(), ring.fd.as_raw_fd())
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Start counting.
    pub fn enable(&self) -> std::io::Result<()> {
        // SAFETY: a perf event fd we own; ENABLE takes no pointer.
        let r = unsafe { perf_event_open_sys::ioctls::ENABLE(self.fd.as_raw_fd(), 0) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Stop counting (quick; the uprobe goes on close).
    pub fn disable(&self) -> std::io::Result<()> {
        // SAFETY: a perf event fd we own; DISABLE takes no pointer.
        let r = unsafe { perf_event_open_sys::ioctls::DISABLE(self.fd.as_raw_fd(), 0) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// The kernel's id of this event (what PERF_SAMPLE_IDENTIFIER reports).
    pub fn id(&self) -> std::io::Result<u64> {
        let mut id = 0u64;
        // SAFETY: ID writes one u64 through the pointer, which is valid.
        let r = unsafe { perf_event_open_sys::ioctls::ID(self.fd.as_raw_fd(), &mut id) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(id)
    }

    /// The raw descriptor (for poll).
    pub fn raw(&self) -> i32 {
        self.fd.as_raw_fd()
    }
}

/// A perf ring buffer: one metadata page then `2^n` data pages.
pub struct Ring {
    map: MmapRaw,
    data_off: usize,
    data_size: u64,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ring({} bytes)", self.data_size)
    }
}

impl Ring {
    /// Map `pages` (a power of two) data pages for `ev`.
    pub fn map(ev: &ProbeFd, pages: usize) -> Result<Ring, TraceError> {
        let page = 4096usize;
        let len = page * (pages + 1);
        let err = |source| TraceError::Open {
            what: format!("mapping a {len}-byte perf ring buffer (try a smaller --ring-pages)"),
            source,
        };
        let map = MmapOptions::new().len(len).map_raw(ev.raw()).map_err(err)?;
        Ok(Ring {
            map,
            data_off: page,
            data_size: (page * pages) as u64,
        })
    }

    fn meta(&self, off: usize) -> &AtomicU64 {
        // SAFETY: `off` is the offset of a naturally aligned u64 field of the
        // perf_event_mmap_page at the start of the mapping, which lives as
        // long as `self`; the kernel updates it concurrently, hence atomic.
        unsafe { &*(self.map.as_ptr().add(off) as *const AtomicU64) }
    }

    /// Hand every complete record now in the buffer to `f` (its bytes,
    /// header included: in place, or copied into `buf` when it wraps
    /// around the end), then release the space to the kernel.
    pub fn drain(&self, buf: &mut Vec<u8>, mut f: impl FnMut(&[u8])) -> usize {
        let head = self
            .meta(std::mem::offset_of!(perf_event_mmap_page, data_head))
            .load(Ordering::Acquire);
        let tail_cell = self.meta(std::mem::offset_of!(perf_event_mmap_page, data_tail));
        let mut tail = tail_cell.load(Ordering::Relaxed);
        let mut n = 0;
        while tail + 8 <= head {
            let mut hdr = [0u8; 8];
            self.copy(tail, &mut hdr);
            let size = u16::from_le_bytes([hdr[6], hdr[7]]) as u64;
            if size < 8 || tail + size > head {
                break;
            }
            let start = (tail % self.data_size) as usize;
            if start + size as usize <= self.data_size as usize {
                // Most records do not wrap: hand them out in place, so
                // stack bytes nobody keeps are never copied (8 KB a record).
                // SAFETY: [start, start + size) lies inside the data area
                // of the mapping, which lives as long as `self`; the kernel
                // writes only at or past data_head and does not reuse space
                // below data_tail, which is advanced after `f` returns.
                let rec = unsafe {
                    std::slice::from_raw_parts(
                        self.map.as_ptr().add(self.data_off + start),
                        size as usize,
                    )
                };
                f(rec);
            } else {
                buf.clear();
                buf.resize(size as usize, 0);
                self.copy(tail, buf);
                f(buf);
            }
            tail += size;
            n += 1;
        }
        tail_cell.store(tail, Ordering::Release);
        n
    }

    fn copy(&self, pos: u64, out: &mut [u8]) {
        let start = (pos % self.data_size) as usize;
        let first = out.len().min(self.data_size as usize - start);
        // SAFETY: the data area is [data_off, data_off + data_size) of the
        // mapping; `start + first <= data_size` and the wrapped remainder
        // starts at 0 and is shorter than data_size. The kernel does not
        // write below data_tail, which we have not yet advanced.
        unsafe {
            let base = self.map.as_ptr().add(self.data_off);
            std::ptr::copy_nonoverlapping(base.add(start), out.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(base, out.as_mut_ptr().add(first), out.len() - first);
        }
    }
}
