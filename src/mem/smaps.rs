//! The kernel's own count: `/proc/PID/smaps` (per mapping Rss, Pss,
//! anonymous, swap), `/proc/PID/smaps_rollup` (the totals), and
//! `/proc/PID/pagemap` for residency below the granularity of a mapping
//! (the kernel merges adjacent anonymous mmaps into one VMA, so one VMA may
//! hold LuaJIT segments, glibc mmapped chunks and a thread stack side by side).

use std::io::{Read, Seek, SeekFrom};

use crate::target::{Mapping, Maps, TargetError};

/// One mapping with its smaps counters (bytes).
#[derive(Debug, Clone)]
pub struct SmapsEntry {
    /// The mapping (as in /proc/PID/maps).
    pub map: Mapping,
    /// Resident bytes.
    pub rss: u64,
    /// Proportional set size.
    pub pss: u64,
    /// Anonymous resident bytes (private, including COW of file pages).
    pub anon: u64,
    /// Swapped-out bytes.
    pub swap: u64,
    /// Shared resident bytes (clean + dirty).
    pub shared: u64,
}

/// Totals from `smaps_rollup` (bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Rollup {
    /// Rss.
    pub rss: u64,
    /// Pss.
    pub pss: u64,
    /// Pss_Anon + Pss_File + Pss_Shmem are finer; Anonymous is what we keep.
    pub anon: u64,
    /// RssFile as `/proc/PID/status` names it (Rss − anonymous − shmem).
    pub file: u64,
    /// Shared memory (tmpfs, shared anonymous) resident.
    pub shmem: u64,
    /// Swap.
    pub swap: u64,
}

fn kb(line: &str) -> Option<u64> {
    let v = line.split_whitespace().nth(1)?;
    v.parse::<u64>().ok().map(|k| k * 1024)
}

/// Read `/proc/PID/smaps`.
pub fn read_smaps(pid: i32) -> Result<Vec<SmapsEntry>, TargetError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .map_err(|e| TargetError::from_io(pid, "reading /proc/PID/smaps", e))?;
    Ok(parse_smaps(&text))
}

/// Parse smaps text: a maps line opens each entry, `Key: N kB` lines follow.
pub fn parse_smaps(text: &str) -> Vec<SmapsEntry> {
    let mut out: Vec<SmapsEntry> = Vec::new();
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            if let Some(m) = Maps::parse(line).list.pop() {
                out.push(SmapsEntry {
                    map: m,
                    rss: 0,
                    pss: 0,
                    anon: 0,
                    swap: 0,
                    shared: 0,
                });
            }
            continue;
        }
        let Some(e) = out.last_mut() else { continue };
        match first {
            "Rss:" => e.rss = kb(line).unwrap_or(0),
            "Pss:" => e.pss = kb(line).unwrap_or(0),
            "Anonymous:" => e.anon = kb(line).unwrap_or(0),
            "Swap:" => e.swap = kb(line).unwrap_or(0),
            "Shared_Clean:" | "Shared_Dirty:" => e.shared += kb(line).unwrap_or(0),
            _ => {}
        }
    }
    out
}

/// Read `/proc/PID/smaps_rollup` (Linux 4.14+); None when absent.
pub fn read_rollup(pid: i32) -> Result<Option<Rollup>, TargetError> {
    match std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
        Ok(t) => Ok(Some(parse_rollup(&t))),
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound && crate::target::process_exists(pid) =>
        {
            Ok(None)
        }
        Err(e) => Err(TargetError::from_io(
            pid,
            "reading /proc/PID/smaps_rollup",
            e,
        )),
    }
}

/// Parse smaps_rollup text.
pub fn parse_rollup(text: &str) -> Rollup {
    let mut r = Rollup::default();
    let mut pss_shmem = None;
    for line in text.lines() {
        match line.split_whitespace().next().unwrap_or("") {
            "Rss:" => r.rss = kb(line).unwrap_or(0),
            "Pss:" => r.pss = kb(line).unwrap_or(0),
            "Anonymous:" => r.anon = kb(line).unwrap_or(0),
            "Swap:" => r.swap = kb(line).unwrap_or(0),
            "Pss_Shmem:" => pss_shmem = kb(line),
            _ => {}
        }
    }
    let _ = pss_shmem;
    r.file = r.rss.saturating_sub(r.anon);
    r
}

/// Residency of address ranges from `/proc/PID/pagemap` (bit 63: present).
pub struct Pagemap {
    f: Option<std::fs::File>,
    page: u64,
}

impl Pagemap {
    /// Open the target's pagemap; without it (no permission) every range
    /// counts as fully resident up to its mapping's Rss.
    pub fn open(pid: i32) -> Pagemap {
        Pagemap {
            f: std::fs::File::open(format!("/proc/{pid}/pagemap")).ok(),
            page: page_size(),
        }
    }

    /// True when per-page residency is known.
    pub fn available(&self) -> bool {
        self.f.is_some()
    }

    /// Page size.
    pub fn page(&self) -> u64 {
        self.page
    }

    /// Present bit of every page in `[start, end)` (page-aligned outward),
    /// or None when pagemap is unreadable.
    pub fn present(&mut self, start: u64, end: u64) -> Option<Vec<bool>> {
        let f = self.f.as_mut()?;
        let first = start / self.page;
        let last = end.div_ceil(self.page);
        let n = last.saturating_sub(first) as usize;
        let mut out = Vec::with_capacity(n);
        let mut buf = vec![0u8; 8 * 4096];
        let mut at = first;
        while at < last {
            let k = ((last - at) as usize).min(4096);
            f.seek(SeekFrom::Start(at * 8)).ok()?;
            f.read_exact(&mut buf[..k * 8]).ok()?;
            out.extend(
                buf[..k * 8]
                    .chunks_exact(8)
                    .map(|e| u64::from_le_bytes(e.try_into().expect("8 bytes")) >> 63 == 1),
            );
            at += k as u64;
        }
        Some(out)
    }
}

/// The system page size.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries_and_rollup() {
        let t = "\
55d0c1d8b000-55d0c1e2e000 rw-p 00000000 00:00 0      [heap]
Size:                652 kB
Rss:                 600 kB
Pss:                 500 kB
Shared_Clean:          4 kB
Shared_Dirty:          8 kB
Anonymous:           600 kB
Swap:                  0 kB
VmFlags: rd wr mr mw me ac
7f1e00200000-7f1e00300000 rw-s 00000000 00:01 99     /dev/zero (deleted)
Rss:                1024 kB
Pss:                 512 kB
";
        let e = parse_smaps(t);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].map.path, "[heap]");
        assert_eq!(e[0].rss, 600 * 1024);
        assert_eq!(e[0].pss, 500 * 1024);
        assert_eq!(e[0].shared, 12 * 1024);
        assert_eq!(e[1].pss, 512 * 1024);
        let r = parse_rollup(
            "00400000-7fff rw-p 0 0 0 [rollup]\nRss: 2000 kB\nPss: 1500 kB\nAnonymous: 1200 kB\n",
        );
        assert_eq!(r.rss, 2000 * 1024);
        assert_eq!(r.file, 800 * 1024);
    }

    #[test]
    fn pagemap_of_own_touched_buffer() {
        let mut v = vec![1u8; 1 << 20];
        v[0] = 2;
        let mut pm = Pagemap::open(std::process::id() as i32);
        if let Some(p) = pm.present(v.as_ptr() as u64, v.as_ptr() as u64 + v.len() as u64) {
            assert!(p.iter().filter(|x| **x).count() >= 200);
        }
    }
}
