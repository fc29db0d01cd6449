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
