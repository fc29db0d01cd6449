//! Which pages of a mapping hold data: `/proc/PID/pagemap`, one 64-bit
//! entry per virtual page (Documentation/admin-guide/mm/pagemap.rst: bit 63
//! "page present", bit 62 "page swapped").
//!
//! A process's virtual size says little about its heap: every pthread stack
//! reserves 8 MiB, allocators reserve address space they never touch. Only
//! present or swapped pages can hold data; the others read as zeros, and
//! reading them through `process_vm_readv` would even fault zero pages into
//! the target. So the copy takes the populated runs only.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Page size the entries describe (x86_64).
pub const PAGE: u64 = 4096;
const PRESENT: u64 = 1 << 63;
const SWAPPED: u64 = 1 << 62;
/// Entries read per `pread` (512 KiB of buffer): bounded memory whatever
/// the mapping's size.
const BATCH: usize = 64 * 1024;

/// An open pagemap of one process.
pub struct Pagemap {
    file: File,
}

impl Pagemap {
    /// Open `/proc/PID/pagemap` (needs the same access as reading the
    /// process's memory).
    pub fn open(pid: i32) -> std::io::Result<Pagemap> {
        Ok(Pagemap {
            file: File::open(format!("/proc/{pid}/pagemap"))?,
        })
    }

    /// The populated runs of `[start, end)` (page aligned), merged, in
    /// address order.
    pub fn populated(&self, start: u64, end: u64) -> std::io::Result<Vec<(u64, u64)>> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut buf = vec![0u8; BATCH * 8];
        let mut page = start / PAGE;
        let last = end.div_ceil(PAGE);
        while page < last {
            let n = ((last - page) as usize).min(BATCH);
            let want = &mut buf[..n * 8];
            let got = self.file.read_at(want, page * 8)?;
            if got < 8 {
                // Past the end of the address space the kernel knows.
                break;
            }
            for (i, e) in want[..got - got % 8].chunks_exact(8).enumerate() {
                let v = u64::from_le_bytes(e.try_into().expect("8 bytes"));
                if v & (PRESENT | SWAPPED) == 0 {
                    continue;
                }
                let a = (page + i as u64) * PAGE;
                match runs.last_mut() {
                    Some(r) if r.1 == a => r.1 = a + PAGE,
                    _ => runs.push((a, a + PAGE)),
                }
            }
            page += (got / 8) as u64;
        }
        Ok(runs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_touched_pages_only() {
        let len = 64 * PAGE as usize;
        let mut m = memmap2::MmapOptions::new().len(len).map_anon().unwrap();
        let base = m.as_ptr() as u64;
        // Touch pages 3, 4 and 40 only.
        m[3 * PAGE as usize] = 1;
        m[4 * PAGE as usize + 17] = 1;
        m[40 * PAGE as usize] = 1;
        let pm = Pagemap::open(std::process::id() as i32).unwrap();
        let runs = pm.populated(base, base + len as u64).unwrap();
        assert_eq!(
            runs,
            vec![
                (base + 3 * PAGE, base + 5 * PAGE),
                (base + 40 * PAGE, base + 41 * PAGE)
            ]
        );
    }
}
