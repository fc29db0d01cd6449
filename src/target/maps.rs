//! `/proc/PID/maps`: which address ranges exist, with what permissions and
//! backing file.

use super::TargetError;

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// First AVMA.
    pub start: u64,
    /// One past the last AVMA.
    pub end: u64,
    /// Readable.
    pub read: bool,
    /// Writable.
    pub write: bool,
    /// Executable.
    pub exec: bool,
    /// Private (copy-on-write) rather than shared.
    pub private: bool,
    /// File offset of `start`.
    pub offset: u64,
    /// Inode of the backing file, 0 for anonymous memory.
    pub inode: u64,
    /// Path or pseudo-name (`[heap]`, `[stack]`), empty for anonymous memory.
    pub path: String,
}

impl Mapping {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// True for a zero-length mapping (never produced by the kernel).
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// True when `addr` is inside.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.start && addr < self.end
    }

    /// Private writable memory not backed by a file: where an allocator's
    /// heap lives (mmap'd arenas, `[heap]`). LuaJIT's own allocator takes its
    /// segments from anonymous mmaps, system malloc from `[heap]` and mmaps.
    pub fn is_anon_heap(&self) -> bool {
        self.read
            && self.write
            && self.private
            && self.inode == 0
            && (self.path.is_empty() || self.path == "[heap]" || self.path.starts_with("[anon"))
    }

    /// The backing file's path, without a ` (deleted)` suffix, if the
    /// mapping has a file.
    pub fn file_path(&self) -> Option<&str> {
        if self.inode == 0 || !self.path.starts_with('/') {
            return None;
        }
        Some(self.path.strip_suffix(" (deleted)").unwrap_or(&self.path))
    }
}

/// All mappings of a process, sorted by address.
#[derive(Debug, Clone, Default)]
pub struct Maps {
    /// Sorted, non-overlapping.
    pub list: Vec<Mapping>,
}

impl Maps {
    /// Read `/proc/PID/maps`.
    pub fn read(pid: i32) -> Result<Maps, TargetError> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))
            .map_err(|e| TargetError::from_io(pid, "reading /proc/PID/maps", e))?;
        Ok(Maps::parse(&text))
    }

    /// Parse the text of a maps file; malformed lines are skipped.
    pub fn parse(text: &str) -> Maps {
        let mut list: Vec<Mapping> = text.lines().filter_map(parse_line).collect();
        list.sort_by_key(|m| m.start);
        Maps { list }
    }

    /// The mapping containing `addr`.
    pub fn find(&self, addr: u64) -> Option<&Mapping> {
        let i = self.list.partition_point(|m| m.end <= addr);
        self.list.get(i).filter(|m| m.contains(addr))
    }

    /// Mappings of the file at `path`.
    pub fn of_file<'a>(&'a self, path: &'a str) -> impl Iterator<Item = &'a Mapping> + 'a {
        self.list
            .iter()
            .filter(move |m| m.file_path() == Some(path))
    }

    /// Distinct backing files, in address order.
    pub fn files(&self) -> Vec<&str> {
        // A set beside the list: a core file can name a million mappings.
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for m in &self.list {
            if let Some(p) = m.file_path() {
                if seen.insert(p) {
                    out.push(p);
                }
            }
        }
        out
    }
}

/// A path through which this process can open the file that `pid` maps
/// at `target_path` (the path as the target sees it, without
/// ` (deleted)`): the one function symbols, ELF reading and uprobe paths
/// all use.
///
/// `/proc/PID/root/PATH` when it resolves to the mapped inode (same device
/// and inode as the maps line); otherwise — the file was replaced or
/// deleted after a package upgrade, or the container's mount namespace
/// does not show it through /proc/PID/root (a chroot on a private tmpfs) —
/// `/proc/PID/map_files/START-END`, which opens the very inode mapped
/// (proc(5); readable with ptrace read access), and which the uprobe PMU
/// accepts as its path too (it looks the path up following links, and
/// this link leads to the mapped inode). An error says why neither works.
pub fn resolve_mapped_file(pid: i32, target_path: &str) -> std::io::Result<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let via_root = std::path::PathBuf::from(format!("/proc/{pid}/root{target_path}"));
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    // (start, end, dev, inode) of the first mapping of this file.
    let mapped = text.lines().find_map(|l| {
        let mut it = l.splitn(6, char::is_whitespace);
        let range = it.next()?;
        let _perms = it.next()?;
        let _off = it.next()?;
        let dev = it.next()?;
        let inode: u64 = it.next()?.parse().ok()?;
        let path = it.next()?.trim_start();
        let path = path.strip_suffix(" (deleted)").unwrap_or(path);
        (inode != 0 && path == target_path).then(|| {
            let (maj, min) = dev.split_once(':')?;
            let maj = u64::from_str_radix(maj, 16).ok()?;
            let min = u64::from_str_radix(min, 16).ok()?;
            Some((range.to_string(), maj, min, inode))
        })?
    });
    let Some((range, maj, min, inode)) = mapped else {
        // Not mapped (a debug file, or the caller's own guess): the
        // target's view, then ours.
        return Ok(if via_root.exists() {
            via_root
        } else {
            std::path::PathBuf::from(target_path)
        });
    };
    if let Ok(md) = std::fs::metadata(&via_root) {
        let (dmaj, dmin) = (libc::major(md.dev()) as u64, libc::minor(md.dev()) as u64);
        if md.ino() == inode && dmaj == maj && dmin == min {
            return Ok(via_root);
        }
    }
    let by_map = std::path::PathBuf::from(format!("/proc/{pid}/map_files/{range}"));
    match std::fs::File::open(&by_map) {
        Ok(_) => {
            log::info!(
                "{target_path} of process {pid} is not the mapped file at that path (replaced, deleted or in another mount namespace): reading it through {}",
                by_map.display()
            );
            Ok(by_map)
        }
        Err(e) => Err(std::io::Error::new(
            e.kind(),
            format!(
                "{target_path} mapped by process {pid} is not reachable: /proc/{pid}/root{target_path} is another file or missing, and {} cannot be opened ({e})",
                by_map.display()
            ),
        )),
    }
}

fn parse_line(line: &str) -> Option<Mapping> {
    let mut it = line.splitn(6, char::is_whitespace);
    let range = it.next()?;
    let perms = it.next()?.as_bytes();
    let offset = u64::from_str_radix(it.next()?, 16).ok()?;
    let _dev = it.next()?;
    let inode: u64 = it.next()?.parse().ok()?;
    let path = it.next().unwrap_or("").trim_start().to_string();
    let (s, e) = range.split_once('-')?;
    if perms.len() < 4 {
        return None;
    }
    Some(Mapping {
        start: u64::from_str_radix(s, 16).ok()?,
        end: u64::from_str_radix(e, 16).ok()?,
        read: perms[0] == b'r',
        write: perms[1] == b'w',
        exec: perms[2] == b'x',
        private: perms[3] == b'p',
        offset,
        inode,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
55d0c0a00000-55d0c0a2c000 r--p 00000000 fe:01 1234   /usr/sbin/nginx
55d0c0b3f000-55d0c0b49000 rw-p 0013e000 fe:01 1234   /usr/sbin/nginx
55d0c1d8b000-55d0c1e2e000 rw-p 00000000 00:00 0      [heap]
7f1e00000000-7f1e00100000 rw-p 00000000 00:00 0 
7f1e00200000-7f1e00300000 rw-s 00000000 00:01 99     /dev/zero (deleted)
7ffd7a5f0000-7ffd7a611000 rw-p 00000000 00:00 0      [stack]
";

    #[test]
    fn parses_and_classifies() {
        let m = Maps::parse(SAMPLE);
        assert_eq!(m.list.len(), 6);
        let heap: Vec<_> = m.list.iter().filter(|m| m.is_anon_heap()).collect();
        assert_eq!(heap.len(), 2, "[heap] and the anonymous mapping");
        assert_eq!(m.find(0x7f1e00000010).unwrap().start, 0x7f1e00000000);
        assert!(m.find(0x7f1e00100000).is_none());
        assert_eq!(m.files(), vec!["/usr/sbin/nginx", "/dev/zero"]);
        assert_eq!(m.list[1].offset, 0x13e000);
    }
}
