//! A copy of a process's heap mappings, taken in bulk while the process is
//! paused and walked after it has been resumed.
//!
//! Buffers are allocated and pre-faulted before the pause so that the pause
//! is spent only in `process_vm_readv`. An image can also be saved to and
//! loaded from a file, so the walker can be tested on captured memory.

use std::cell::Cell;
use std::io::{Read, Write};
use std::path::Path;

use memmap2::{MmapMut, MmapOptions};

use super::maps::{Mapping, Maps};
use super::mem::{MemError, Memory, ProcessMemory};

/// One copied range.
pub struct Segment {
    /// AVMA of `data[0]`.
    pub start: u64,
    /// The copied bytes.
    pub data: MmapMut,
    /// False when the read failed part-way: the tail is zeros.
    pub complete: bool,
}

impl Segment {
    fn end(&self) -> u64 {
        self.start + self.data.len() as u64
    }
}

/// Copied memory, sorted by address.
#[derive(Default)]
pub struct HeapImage {
    segs: Vec<Segment>,
    last: Cell<usize>,
}

fn anon_buffer(len: usize, populate: bool) -> std::io::Result<MmapMut> {
    let mut m = MmapOptions::new().len(len.max(1)).map_anon()?;
    if populate {
        // Huge pages where the kernel allows them (THP "madvise" mode):
        // fewer page faults and TLB misses while the copy runs. Then touch
        // every page now, so none faults during the pause.
        let _ = m.advise(memmap2::Advice::HugePage);
        for i in (0..m.len()).step_by(4096) {
            m[i] = 0;
        }
    }
    Ok(m)
}

/// Buffers prepared for a capture, before the target is paused.
pub struct Prepared {
    bufs: Vec<(u64, u64, MmapMut)>,
}

impl HeapImage {
    /// Pick the ranges a LuaJIT heap can live in (see [`copy_plan`]) and
    /// allocate pre-faulted buffers for them. Call before pausing.
    pub fn prepare(pid: i32, maps: &Maps) -> std::io::Result<Prepared> {
        let mut bufs = Vec::new();
        for (s, e) in copy_plan(pid, maps, &[]) {
            bufs.push((s, e, anon_buffer((e - s) as usize, true)?));
        }
        Ok(Prepared { bufs })
    }

    /// Copy the ranges of [`copy_plan`] for the mappings listed in `now`
    /// (re-read while paused), thread stacks cut at `stack_pointers`, using
    /// the prepared buffers where a range is unchanged.
    pub fn capture(
        pid: i32,
        now: &Maps,
        stack_pointers: &[u64],
        mut prep: Prepared,
    ) -> Result<HeapImage, MemError> {
        let mem = ProcessMemory::new(pid);
        let mut segs: Vec<Segment> = Vec::new();
        for (start, end) in copy_plan(pid, now, stack_pointers) {
            let pos = prep
                .bufs
                .iter()
                .position(|(s, e, _)| *s == start && *e == end);
            let data = match pos {
                Some(i) => prep.bufs.swap_remove(i).2,
                None => anon_buffer((end - start) as usize, false).map_err(|e| MemError::Os {
                    addr: start,
                    errno: e.raw_os_error().unwrap_or(0),
                })?,
            };
            segs.push(Segment {
                start,
                data,
                complete: false,
            });
        }
        copy_parallel(&mem, &mut segs)?;
        Ok(HeapImage {
            segs,
            last: Cell::new(0),
        })
    }

    /// Build an image from explicit ranges (tests, fuzzing).
    pub fn from_parts(parts: Vec<(u64, Vec<u8>)>) -> HeapImage {
        let mut segs: Vec<Segment> = parts
            .into_iter()
            .map(|(start, bytes)| {
                let mut data = anon_buffer(bytes.len(), false).expect("anonymous mmap");
                data[..bytes.len()].copy_from_slice(&bytes);
                Segment {
                    start,
                    data,
                    complete: true,
                }
            })
            .collect();
        segs.sort_by_key(|s| s.start);
        HeapImage {
            segs,
            last: Cell::new(0),
        }
    }

    /// An image over segments made elsewhere (a core file's, mapped
    /// copy-on-write from the file).
    pub fn from_segments(mut segs: Vec<Segment>) -> HeapImage {
        segs.sort_by_key(|s| s.start);
        HeapImage {
            segs,
            last: Cell::new(0),
        }
    }

    /// The copied segments.
    pub fn segments(&self) -> &[Segment] {
        &self.segs
    }

    /// Mutable segments (fuzz tests flip bytes in them).
    pub fn segments_mut(&mut self) -> &mut [Segment] {
        &mut self.segs
    }

    /// Overwrite bytes of the copy (never the target): fault injection in
    /// tests. Returns the previous bytes, or None when the range is not in
    /// one segment.
    pub fn patch(&mut self, addr: u64, bytes: &[u8]) -> Option<Vec<u8>> {
        let i = self.segs.partition_point(|s| s.end() <= addr);
        let s = self.segs.get_mut(i)?;
        let off = addr.checked_sub(s.start)? as usize;
        let dst = s.data.get_mut(off..off.checked_add(bytes.len())?)?;
        let old = dst.to_vec();
        dst.copy_from_slice(bytes);
        Some(old)
    }

    /// Bytes copied.
    pub fn total_bytes(&self) -> u64 {
        self.segs.iter().map(|s| s.data.len() as u64).sum()
    }

    /// Whether `[addr, addr+len)` lies inside one copied segment.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        self.borrow(addr, len as usize).is_some()
    }

    /// Write the image to `path` (format: magic, count, then per segment
    /// start, length and bytes, all little-endian).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        // The heap holds secrets (keys, tokens, request bodies): owner-only,
        // and never through a link someone planted at the path.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        let mut f = std::io::BufWriter::new(file);
        f.write_all(b"LJLKIMG1")?;
        f.write_all(&(self.segs.len() as u64).to_le_bytes())?;
        for s in &self.segs {
            f.write_all(&s.start.to_le_bytes())?;
            f.write_all(&(s.data.len() as u64).to_le_bytes())?;
            f.write_all(&s.data)?;
        }
        f.flush()
    }

    /// Read an image written by [`HeapImage::save`].
    pub fn load(path: &Path) -> std::io::Result<HeapImage> {
        let bad =
            || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an ljleak heap image");
        let file = std::fs::File::open(path)?;
        // Segment lengths are checked against what the file still holds, so
        // a damaged or hostile header cannot make us allocate more than the
        // file's size.
        let mut left = file.metadata()?.len();
        let mut f = std::io::BufReader::new(file);
        let mut word = [0u8; 8];
        f.read_exact(&mut word)?;
        if &word != b"LJLKIMG1" {
            return Err(bad());
        }
        f.read_exact(&mut word)?;
        let n = u64::from_le_bytes(word);
        let mut segs = Vec::new();
        for _ in 0..n.min(1 << 20) {
            f.read_exact(&mut word)?;
            let start = u64::from_le_bytes(word);
            f.read_exact(&mut word)?;
            let len = u64::from_le_bytes(word);
            // This segment's header (start, length) came off the file too,
            // and the image's (magic, count) before the first one.
            left = left.saturating_sub(if segs.is_empty() { 32 } else { 16 });
            if len > 1 << 40 || len > left {
                return Err(bad());
            }
            left -= len;
            let mut data = anon_buffer(len as usize, false)?;
            f.read_exact(&mut data[..len as usize])?;
            segs.push(Segment {
                start,
                data,
                complete: true,
            });
        }
        segs.sort_by_key(|s| s.start);
        Ok(HeapImage {
            segs,
            last: Cell::new(0),
        })
    }

    #[inline]
    fn seg_for(&self, addr: u64) -> Option<&Segment> {
        let last = self.last.get();
        if let Some(s) = self.segs.get(last) {
            if addr >= s.start && addr < s.end() {
                return Some(s);
            }
        }
        let i = self.segs.partition_point(|s| s.end() <= addr);
        let s = self.segs.get(i)?;
        if addr >= s.start {
            self.last.set(i);
            Some(s)
        } else {
            None
        }
    }
}

/// Size of the pieces the copy is cut into: large enough that syscall cost
/// vanishes, small enough to share the work between threads and to limit
/// what one unreadable page costs.
const PIECE: usize = 1 << 20;
/// Below this, one thread copies everything (thread start-up would dominate).
const PARALLEL_MIN: usize = 8 << 20;

/// Copy every segment, in pieces shared between up to as many threads as
/// there are CPUs (at most 4): the pause lasts as long as this takes.
fn copy_parallel(mem: &ProcessMemory, segs: &mut [Segment]) -> Result<(), MemError> {
    let total: usize = segs.iter().map(|s| s.data.len()).sum();
    let threads = if total < PARALLEL_MIN {
        1
    } else {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 4)
    };
    // (segment index, AVMA, buffer) for every piece.
    let mut pieces: Vec<(usize, u64, &mut [u8])> = Vec::new();
    for (i, s) in segs.iter_mut().enumerate() {
        let start = s.start;
        for (k, c) in s.data.chunks_mut(PIECE).enumerate() {
            pieces.push((i, start + (k * PIECE) as u64, c));
        }
    }
    let share = total.div_ceil(threads).max(1);
    let mut groups: Vec<Vec<(usize, u64, &mut [u8])>> = Vec::new();
    let mut acc = share;
    for p in pieces {
        if acc >= share {
            groups.push(Vec::new());
            acc = 0;
        }
        acc += p.2.len();
        groups.last_mut().expect("pushed").push(p);
    }
    let results: Vec<Result<Vec<usize>, MemError>> = if groups.len() <= 1 {
        groups.into_iter().map(|g| copy_group(mem, g)).collect()
    } else {
        std::thread::scope(|sc| {
            let hs: Vec<_> = groups
                .into_iter()
                .map(|g| sc.spawn(move || copy_group(mem, g)))
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or(Err(MemError::Os { addr: 0, errno: 0 })))
                .collect()
        })
    };
    for s in segs.iter_mut() {
        s.complete = true;
    }
    for r in results {
        for bad in r? {
            segs[bad].complete = false;
        }
    }
    Ok(())
}

/// Copy a group of pieces with batched `process_vm_readv`; a piece that
/// fails is retried page by page (unreadable pages stay zero). Returns the
/// segment indexes that could not be read whole.
fn copy_group(
    mem: &ProcessMemory,
    mut g: Vec<(usize, u64, &mut [u8])>,
) -> Result<Vec<usize>, MemError> {
    let mut incomplete = Vec::new();
    let mut i = 0;
    while i < g.len() {
        let n = {
            let mut parts: Vec<(u64, &mut [u8])> =
                g[i..].iter_mut().map(|(_, a, b)| (*a, &mut **b)).collect();
            mem.read_many(&mut parts)?
        };
        i += n;
        if i < g.len() {
            let (seg, addr, ref mut buf) = g[i];
            if !salvage_pages(mem, addr, buf) {
                incomplete.push(seg);
            }
            i += 1;
        }
    }
    Ok(incomplete)
}

fn salvage_pages(mem: &ProcessMemory, addr: u64, buf: &mut [u8]) -> bool {
    let mut ok = true;
    for (k, page) in buf.chunks_mut(4096).enumerate() {
        if mem.read(addr + (k * 4096) as u64, page).is_err() {
            page.fill(0);
            ok = false;
        }
    }
    ok
}

impl Memory for HeapImage {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        super::mem::read_borrowed(self, addr, buf)
    }

    #[inline]
    fn prefetch(&self, addr: u64) {
        if let Some(b) = self.borrow(addr, 1) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: PREFETCHT0 is a hint: it never faults and changes no
            // state visible to the program; the pointer is into our own copy.
            unsafe {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                _mm_prefetch::<_MM_HINT_T0>(b.as_ptr().cast());
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = b;
        }
    }

    #[inline]
    fn borrow(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let s = self.seg_for(addr)?;
        let off = (addr - s.start) as usize;
        s.data.get(off..off.checked_add(len)?)
    }
}

impl std::fmt::Debug for HeapImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeapImage")
            .field("segments", &self.segs.len())
            .field("bytes", &self.total_bytes())
            .finish()
    }
}

/// The mappings an image would copy (for `--verbose`).
pub fn heap_mappings(maps: &Maps) -> impl Iterator<Item = &Mapping> {
    maps.list.iter().filter(|m| m.is_anon_heap())
}

/// Below a thread's stack pointer, the x86-64 ABI lets a leaf function use
/// 128 bytes (the red zone) without moving it.
const RED_ZONE: u64 = 128;

/// The address ranges a copy of `pid` takes: the populated pages of the
/// mappings a LuaJIT heap can live in ([`Mapping::is_anon_heap`]), and of a
/// mapping holding a thread's stack pointer only the part in use (from the
/// red zone below the pointer up). Without pagemap access the mappings are
/// taken whole. Cost then follows the memory in use, not the virtual size:
/// 200 pthread stacks reserve 1.6 GB but use a few pages each.
pub fn copy_plan(pid: i32, maps: &Maps, stack_pointers: &[u64]) -> Vec<(u64, u64)> {
    let pagemap = super::pagemap::Pagemap::open(pid).ok();
    let mut plan = Vec::new();
    for m in heap_mappings(maps) {
        let lo = stack_pointers
            .iter()
            .filter(|&&sp| m.contains(sp))
            .map(|&sp| (sp.saturating_sub(RED_ZONE) & !(super::pagemap::PAGE - 1)).max(m.start))
            .min()
            .unwrap_or(m.start);
        match pagemap.as_ref().map(|p| p.populated(lo, m.end)) {
            Some(Ok(runs)) => plan.extend(runs),
            _ => plan.push((lo, m.end)),
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::ReadExt;

    #[test]
    fn lookup_across_segments() {
        let img =
            HeapImage::from_parts(vec![(0x2000, vec![2u8; 0x100]), (0x1000, vec![1u8; 0x100])]);
        assert_eq!(img.u8(0x1000).unwrap(), 1);
        assert_eq!(img.u8(0x20ff).unwrap(), 2);
        assert_eq!(img.u8(0x10ff).unwrap(), 1);
        assert!(img.u8(0x1100).is_err());
        assert!(
            img.u64(0x10fc).is_err(),
            "a read may not straddle a segment end"
        );
        assert!(img.u8(0).is_err());
    }

    #[test]
    fn save_load_roundtrip() {
        let img = HeapImage::from_parts(vec![(0x1000, (0..=255u8).collect())]);
        let p = std::env::temp_dir().join(format!("ljleak-img-{}", std::process::id()));
        img.save(&p).unwrap();
        let back = HeapImage::load(&p).unwrap();
        std::fs::remove_file(&p).ok();
        assert_eq!(back.u8(0x10ff).unwrap(), 255);
        assert_eq!(back.total_bytes(), 256);
    }

    #[test]
    fn captures_own_heap() {
        let v = vec![0xabu8; 1 << 20];
        let pid = std::process::id() as i32;
        let maps = Maps::read(pid).unwrap();
        let prep = HeapImage::prepare(pid, &maps).unwrap();
        let img = HeapImage::capture(pid, &Maps::read(pid).unwrap(), &[], prep).unwrap();
        assert_eq!(img.u8(v.as_ptr() as u64 + 12345).unwrap(), 0xab);
    }
}
