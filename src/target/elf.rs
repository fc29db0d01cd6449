//! ELF files of the target: symbols, load bias, build-id and separate debug
//! files. Files are opened through `/proc/PID/root` so a target inside a
//! container is read from its own filesystem.

use std::path::{Path, PathBuf};

use memmap2::Mmap;
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};

use super::maps::Maps;

/// A mapped ELF file.
pub struct ElfFile {
    /// Path as the target sees it.
    pub target_path: String,
    /// Path this process opened.
    pub host_path: PathBuf,
    map: Mmap,
}

impl std::fmt::Debug for ElfFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ElfFile({})", self.target_path)
    }
}

/// Where a symbol was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SymTable {
    /// `.dynsym`.
    Dynamic,
    /// `.symtab`.
    Static,
}

impl ElfFile {
    /// Open `target_path` of process `pid`: the inode it maps, through its
    /// root or its `map_files` (see [`super::maps::resolve_mapped_file`]).
    pub fn open(pid: i32, target_path: &str) -> std::io::Result<ElfFile> {
        let host_path = super::maps::resolve_mapped_file(pid, target_path)?;
        Self::open_host(target_path, &host_path)
    }

    /// Open a file by its path in this process's view.
    pub fn open_host(target_path: &str, host_path: &Path) -> std::io::Result<ElfFile> {
        let file = std::fs::File::open(host_path)?;
        // SAFETY: the file is mapped read-only; if another process truncates
        // it while we read, we may fault, as every symbolizer may. Binaries
        // of a running process are not rewritten in place by package managers
        // (they replace them by rename).
        let map = unsafe { Mmap::map(&file)? };
        object::File::parse(&*map)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
        Ok(ElfFile {
            target_path: target_path.to_string(),
            host_path: host_path.to_path_buf(),
            map,
        })
    }

    /// The raw bytes.
    pub fn data(&self) -> &[u8] {
        &self.map
    }

    /// Parsed object (cheap: headers only).
    pub fn object(&self) -> object::File<'_> {
        object::File::parse(&*self.map).expect("validated in open")
    }

    /// SVMA of a symbol, searching `.dynsym` then (if `static_too`) `.symtab`.
    pub fn symbol(&self, name: &str, static_too: bool) -> Option<(u64, SymTable)> {
        let obj = self.object();
        for s in obj.dynamic_symbols() {
            if s.name() == Ok(name) && s.address() != 0 {
                return Some((s.address(), SymTable::Dynamic));
            }
        }
        if static_too {
            for s in obj.symbols() {
                if s.name() == Ok(name) && s.address() != 0 {
                    return Some((s.address(), SymTable::Static));
                }
            }
        }
        None
    }

    /// Whether the file has `.debug_info`.
    pub fn has_dwarf(&self) -> bool {
        self.object()
            .section_by_name(".debug_info")
            .map(|s| s.size() > 0)
            .unwrap_or(false)
    }

    /// The GNU build-id, if any.
    pub fn build_id(&self) -> Option<Vec<u8>> {
        self.object().build_id().ok().flatten().map(|b| b.to_vec())
    }

    /// Lowest PT_LOAD SVMA, page aligned.
    pub fn min_load_svma(&self) -> u64 {
        self.object()
            .segments()
            .map(|s| s.address())
            .min()
            .unwrap_or(0)
            & !0xfff
    }

    /// Load bias in process `maps`: add it to an SVMA to get the AVMA.
    pub fn bias(&self, maps: &Maps) -> Option<u64> {
        let first = maps.of_file(&self.target_path).find(|m| m.offset == 0)?;
        Some(first.start.wrapping_sub(self.min_load_svma()))
    }

    /// A separate debug file for this binary: by build-id under
    /// `/usr/lib/debug/.build-id`, then by `.gnu_debuglink` next to the
    /// binary, in its `.debug/` folder, and under `/usr/lib/debug`.
    /// `root` is the filesystem root to search (the target's).
    pub fn debug_file(&self, root: &Path) -> Option<PathBuf> {
        let under = |p: &str| root.join(p.trim_start_matches('/'));
        if let Some(id) = self.build_id() {
            if id.len() > 1 {
                let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
                let p = under(&format!(
                    "/usr/lib/debug/.build-id/{}/{}.debug",
                    &hex[..2],
                    &hex[2..]
                ));
                if p.exists() {
                    return Some(p);
                }
            }
        }
        let obj = self.object();
        if let Ok(Some((name, _crc))) = obj.gnu_debuglink() {
            let name = String::from_utf8_lossy(name).into_owned();
            let dir = Path::new(&self.target_path)
                .parent()
                .map(|d| d.to_string_lossy().into_owned())
                .unwrap_or_default();
            for cand in [
                format!("{dir}/{name}"),
                format!("{dir}/.debug/{name}"),
                format!("/usr/lib/debug{dir}/{name}"),
            ] {
                let p = under(&cand);
                if p.exists() && p != self.host_path {
                    return Some(p);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_executable_symbols_and_bias() {
        let pid = std::process::id() as i32;
        let exe = crate::target::exe_path(pid).unwrap();
        let elf = ElfFile::open(pid, &exe).unwrap();
        let maps = Maps::read(pid).unwrap();
        let bias = elf.bias(&maps).expect("the executable is mapped");
        // Rust test binaries keep a .symtab: `main` must resolve into a
        // mapped executable range.
        let (svma, _) = elf.symbol("main", true).expect("main symbol");
        let m = maps.find(svma.wrapping_add(bias)).expect("main is mapped");
        assert!(m.exec);
    }
}
