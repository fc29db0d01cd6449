//! Reading an ELF core file (ljleak's own `dump`, gdb's `gcore`, or a kernel
//! core dump) as target memory: PT_LOAD segments become readable ranges,
//! NT_FILE rebuilds the mappings, NT_PRSTATUS gives each thread's registers,
//! NT_AUXV the auxiliary vector, and an `LJLEAK` note what ljleak knew when
//! it wrote the dump.
//!
//! Everything is parsed by hand from the mapped file with bounds checks: a
//! core is untrusted input (it may be truncated, of another architecture, or
//! not a core at all), and each such case is a [`CoreError`] with one line
//! saying what is wrong. Nothing here allocates in proportion to a count read
//! from the file without first checking that the file holds that many
//! entries.
//!
//! Not here: finding the VM in a core (`crate::offline`) and writing cores
//! (`crate::target::core_write`).

use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::maps::{Mapping, Maps};
use super::mem::{read_borrowed, MemError, Memory};

/// ELF constants (elf.h): types, machine, program header and note types.
pub mod elfc {
    /// `e_type` of a core file.
    pub const ET_CORE: u16 = 4;
    /// x86-64.
    pub const EM_X86_64: u16 = 62;
    /// Loadable segment.
    pub const PT_LOAD: u32 = 1;
    /// Notes.
    pub const PT_NOTE: u32 = 4;
    /// `e_phnum` overflow marker: the count is in section header 0's `sh_info`.
    pub const PN_XNUM: u16 = 0xffff;
    /// Segment permission bits.
    pub const PF_X: u32 = 1;
    /// Writable.
    pub const PF_W: u32 = 2;
    /// Readable.
    pub const PF_R: u32 = 4;
    /// `struct elf_prstatus`.
    pub const NT_PRSTATUS: u32 = 1;
    /// `struct elf_prpsinfo`.
    pub const NT_PRPSINFO: u32 = 3;
    /// Auxiliary vector.
    pub const NT_AUXV: u32 = 6;
    /// Mapped files.
    pub const NT_FILE: u32 = 0x4649_4c45;
    /// GNU build-id (in an ELF file's `.note.gnu.build-id`).
    pub const NT_GNU_BUILD_ID: u32 = 3;
    /// ljleak's own note (name `LJLEAK`): JSON describing the VM.
    pub const NT_LJLEAK: u32 = 0x4c4a_0001;
    /// `sizeof(struct elf_prstatus)` on x86-64 (linux/elfcore.h).
    pub const PRSTATUS_SIZE: usize = 336;
    /// Offset of `pr_pid` in it.
    pub const PRSTATUS_PID: usize = 32;
    /// Offset of `pr_cursig`.
    pub const PRSTATUS_CURSIG: usize = 12;
    /// Offset of `pr_reg` (`struct user_regs_struct`, 27 registers).
    pub const PRSTATUS_REG: usize = 112;
    /// Registers in `user_regs_struct`.
    pub const NREGS: usize = 27;
    /// Index of `orig_rax` in it (the syscall a thread is in, or -1).
    pub const REG_ORIG_RAX: usize = 15;
    /// Index of `rip`.
    pub const REG_RIP: usize = 16;
    /// Index of `rsp`.
    pub const REG_RSP: usize = 19;
    /// `AT_SYSINFO_EHDR`: the vDSO.
    pub const AT_SYSINFO_EHDR: u64 = 33;
    /// `sizeof(struct elf_prpsinfo)` on x86-64.
    pub const PRPSINFO_SIZE: usize = 136;
    /// Offset of `pr_pid` in it.
    pub const PRPSINFO_PID: usize = 24;
    /// Offset of `pr_fname[16]`.
    pub const PRPSINFO_FNAME: usize = 40;
    /// `AT_PHDR`: the executable's program headers.
    pub const AT_PHDR: u64 = 3;
}
use elfc::*;

/// Most PT_LOAD segments and NT_FILE entries accepted (a process has at most
/// `vm.max_map_count`, 65530 by default, mappings).
const MAX_SEGMENTS: usize = 1 << 20;
/// Most threads accepted.
const MAX_THREADS: usize = 1 << 16;

/// Why a core file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// Could not open or map it.
    #[error("cannot read core file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not ELF, or not a core.
    #[error("{path} is not an ELF core file ({why}); pass a file written by `ljleak dump`, gdb's `gcore` or the kernel")]
    NotCore {
        /// The file.
        path: String,
        /// What was found instead.
        why: String,
    },
    /// A core of another machine type.
    #[error("{path} is a core of another architecture ({why}); ljleak reads x86-64 cores only")]
    WrongArch {
        /// The file.
        path: String,
        /// What it is.
        why: String,
    },
    /// Cut short or internally inconsistent.
    #[error("core file {path} is truncated or damaged: {why} (was it cut short by a full disk or `ulimit -c`?)")]
    Malformed {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
}

/// One PT_LOAD segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSeg {
    /// AVMA of the segment.
    pub vaddr: u64,
    /// Size in memory.
    pub memsz: u64,
    /// File offset of its bytes.
    pub offset: u64,
    /// Bytes present in the file (0 when the dumper left the mapping out).
    pub filesz: u64,
    /// `PF_*` bits.
    pub flags: u32,
}

/// One NT_FILE entry: a file mapped at `[start, end)` from file offset `offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMapping {
    /// First AVMA.
    pub start: u64,
    /// One past the last.
    pub end: u64,
    /// File offset of `start`, in bytes.
    pub offset: u64,
    /// Path as the process saw it.
    pub path: String,
}

/// One thread's NT_PRSTATUS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadState {
    /// Thread ID.
    pub tid: i32,
    /// Signal that stopped it (`pr_cursig`).
    pub signal: u16,
    /// `user_regs_struct`, in kernel order.
    pub regs: [u64; NREGS],
}

/// What the notes say, while parsing.
#[derive(Default)]
struct Parsed {
    files: Vec<FileMapping>,
    threads: Vec<ThreadState>,
    auxv: Vec<(u64, u64)>,
    fname: String,
    ljleak_note: Option<Vec<u8>>,
}

/// An ELF core file, mapped read-only.
pub struct CoreFile {
    /// Path given.
    pub path: PathBuf,
    map: Mmap,
    /// PT_LOAD segments, sorted by address.
    pub segments: Vec<LoadSeg>,
    /// NT_FILE entries.
    pub files: Vec<FileMapping>,
    /// NT_PRSTATUS per thread, in note order (the first is the thread that
    /// dumped or was signalled).
    pub threads: Vec<ThreadState>,
    /// NT_AUXV pairs.
    pub auxv: Vec<(u64, u64)>,
    /// Process ID (NT_PRPSINFO `pr_pid`, else the first thread's).
    pub pid: i32,
    /// Command name (`pr_fname`), if recorded.
    pub fname: String,
    /// The `LJLEAK` note's JSON, when ljleak wrote the core.
    pub ljleak_note: Option<Vec<u8>>,
}

impl std::fmt::Debug for CoreFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreFile")
            .field("path", &self.path)
            .field("segments", &self.segments.len())
            .field("files", &self.files.len())
            .field("threads", &self.threads.len())
            .finish()
    }
}

/// Bounds-checked little-endian reads from a byte slice.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn get(&self, off: u64, len: usize) -> Option<&[u8]> {
        let off = usize::try_from(off).ok()?;
        self.0.get(off..off.checked_add(len)?)
    }
    fn u16(&self, off: u64) -> Option<u16> {
        Some(u16::from_le_bytes(self.get(off, 2)?.try_into().ok()?))
    }
    fn u32(&self, off: u64) -> Option<u32> {
        Some(u32::from_le_bytes(self.get(off, 4)?.try_into().ok()?))
    }
    fn u64(&self, off: u64) -> Option<u64> {
        Some(u64::from_le_bytes(self.get(off, 8)?.try_into().ok()?))
    }
}

/// One note: (name without NUL, type, descriptor).
pub type Note<'a> = (&'a [u8], u32, &'a [u8]);

/// Split an ELF note area into notes; stops at the first malformed one and
/// reports it.
pub fn parse_notes(mut data: &[u8]) -> Result<Vec<Note<'_>>, String> {
    let mut out = Vec::new();
    let align4 = |n: usize| n.checked_add(3).map(|x| x & !3);
    while data.len() >= 12 {
        let b = Bytes(data);
        let namesz = b.u32(0).unwrap_or(0) as usize;
        let descsz = b.u32(4).unwrap_or(0) as usize;
        let ty = b.u32(8).unwrap_or(0);
        let name_end = align4(namesz)
            .and_then(|n| n.checked_add(12))
            .ok_or("note name size overflows")?;
        let desc_end = align4(descsz)
            .and_then(|d| d.checked_add(name_end))
            .ok_or("note size overflows")?;
        let name = data
            .get(12..12 + namesz)
            .ok_or_else(|| format!("note of type {ty:#x} runs past its segment"))?;
        let name = name.strip_suffix(&[0]).unwrap_or(name);
        let desc = data
            .get(name_end..name_end + descsz)
            .ok_or_else(|| format!("note of type {ty:#x} runs past its segment"))?;
        out.push((name, ty, desc));
        if out.len() > MAX_SEGMENTS {
            return Err("more than a million notes".into());
        }
        data = data.get(desc_end.min(data.len())..).unwrap_or(&[]);
    }
    Ok(out)
}

impl CoreFile {
    /// Open and parse `path`.
    pub fn open(path: &Path) -> Result<CoreFile, CoreError> {
        let p = path.display().to_string();
        let io = |source| CoreError::Io {
            path: p.clone(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let md = file.metadata().map_err(io)?;
        if !md.is_file() {
            return Err(CoreError::NotCore {
                path: p,
                why: "not a regular file".into(),
            });
        }
        if md.len() < 64 {
            return Err(CoreError::NotCore {
                path: p,
                why: format!("only {} bytes", md.len()),
            });
        }
        // SAFETY: mapped read-only and never written through. A core that is
        // truncated by someone else while we read it could fault, as with
        // any mmap'd input; ljleak does not create cores it reads.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(path, map)
    }

    fn parse(path: &Path, map: Mmap) -> Result<CoreFile, CoreError> {
        let p = path.display().to_string();
        let not_core = |why: String| CoreError::NotCore {
            path: p.clone(),
            why,
        };
        let bad = |why: String| CoreError::Malformed {
            path: p.clone(),
            why,
        };
        let b = Bytes(&map);
        if b.get(0, 4) != Some(b"\x7fELF") {
            return Err(not_core("no ELF magic".into()));
        }
        let class = map[4];
        let machine = b.u16(18).unwrap_or(0);
        if class != 2 || map[5] != 1 || machine != EM_X86_64 {
            return Err(CoreError::WrongArch {
                path: p,
                why: format!(
                    "ELF class {}, {}, machine {machine}",
                    if class == 2 { "64-bit" } else { "32-bit" },
                    if map[5] == 1 {
                        "little-endian"
                    } else {
                        "big-endian"
                    }
                ),
            });
        }
        let etype = b.u16(16).unwrap_or(0);
        if etype != ET_CORE {
            return Err(not_core(format!(
                "ELF type {etype}, an executable or library, not a core"
            )));
        }
        let phoff = b.u64(32).unwrap_or(0);
        let shoff = b.u64(40).unwrap_or(0);
        let phentsize = b.u16(54).unwrap_or(0);
        let mut phnum = b.u16(56).unwrap_or(0) as u64;
        if phnum == PN_XNUM as u64 {
            // More than 65534 segments: the real count is in section 0.
            phnum = b
                .u32(shoff + 44)
                .ok_or_else(|| bad("PN_XNUM without a section header".into()))?
                as u64;
        }
        if phentsize != 56 {
            return Err(bad(format!("program header size {phentsize}, not 56")));
        }
        if phnum as usize > MAX_SEGMENTS {
            return Err(bad(format!("{phnum} program headers")));
        }
        let ph_end = phnum
            .checked_mul(56)
            .and_then(|n| n.checked_add(phoff))
            .ok_or_else(|| bad("program header table overflows".into()))?;
        if ph_end > map.len() as u64 {
            return Err(bad(format!(
                "program headers end at byte {ph_end}, the file has {}",
                map.len()
            )));
        }
        let mut segments = Vec::new();
        let mut notes = Vec::new();
        for i in 0..phnum {
            let h = phoff + i * 56;
            let ty = b.u32(h).unwrap_or(0);
            let seg = LoadSeg {
                flags: b.u32(h + 4).unwrap_or(0),
                offset: b.u64(h + 8).unwrap_or(0),
                vaddr: b.u64(h + 16).unwrap_or(0),
                filesz: b.u64(h + 32).unwrap_or(0),
                memsz: b.u64(h + 40).unwrap_or(0),
            };
            let in_file = seg
                .offset
                .checked_add(seg.filesz)
                .is_some_and(|e| e <= map.len() as u64);
            match ty {
                PT_LOAD => {
                    if !in_file {
                        return Err(bad(format!(
                            "segment {i} at {:#x} needs bytes {}..{} of the file, which has {}",
                            seg.vaddr,
                            seg.offset,
                            seg.offset.saturating_add(seg.filesz),
                            map.len()
                        )));
                    }
                    if seg.filesz > seg.memsz || seg.vaddr.checked_add(seg.memsz).is_none() {
                        return Err(bad(format!("segment {i} has impossible sizes")));
                    }
                    segments.push(seg);
                }
                PT_NOTE => {
                    if !in_file {
                        return Err(bad(format!("note segment {i} runs past the end")));
                    }
                    notes.push(seg);
                }
                _ => {}
            }
        }
        segments.sort_by_key(|s| s.vaddr);
        if segments
            .windows(2)
            .any(|w| w[0].vaddr + w[0].memsz > w[1].vaddr)
        {
            return Err(bad("overlapping segments".into()));
        }
        let mut core = Parsed::default();
        let mut prpsinfo_pid = None;
        for n in &notes {
            let data = &map[n.offset as usize..(n.offset + n.filesz) as usize];
            for (name, ty, desc) in parse_notes(data).map_err(bad)? {
                match (name, ty) {
                    (b"CORE", NT_PRSTATUS) => {
                        if desc.len() < PRSTATUS_SIZE {
                            return Err(bad(format!("NT_PRSTATUS of {} bytes", desc.len())));
                        }
                        if core.threads.len() >= MAX_THREADS {
                            return Err(bad("more than 65536 threads".into()));
                        }
                        let d = Bytes(desc);
                        let mut regs = [0u64; NREGS];
                        for (k, r) in regs.iter_mut().enumerate() {
                            *r = d.u64((PRSTATUS_REG + 8 * k) as u64).unwrap_or(0);
                        }
                        core.threads.push(ThreadState {
                            tid: d.u32(PRSTATUS_PID as u64).unwrap_or(0) as i32,
                            signal: d.u16(PRSTATUS_CURSIG as u64).unwrap_or(0),
                            regs,
                        });
                    }
                    (b"CORE", NT_PRPSINFO) if desc.len() >= PRPSINFO_SIZE => {
                        let d = Bytes(desc);
                        prpsinfo_pid = d.u32(PRPSINFO_PID as u64).map(|x| x as i32);
                        let f = &desc[PRPSINFO_FNAME..PRPSINFO_FNAME + 16];
                        let f = &f[..f.iter().position(|&c| c == 0).unwrap_or(16)];
                        core.fname = String::from_utf8_lossy(f).into_owned();
                    }
                    (b"CORE", NT_AUXV) => {
                        core.auxv = desc
                            .chunks_exact(16)
                            .map(|c| {
                                let d = Bytes(c);
                                (d.u64(0).unwrap_or(0), d.u64(8).unwrap_or(0))
                            })
                            .take_while(|&(k, _)| k != 0)
                            .collect();
                    }
                    (b"CORE", NT_FILE) => core.files = parse_nt_file(desc).map_err(bad)?,
                    (b"LJLEAK", NT_LJLEAK) => core.ljleak_note = Some(desc.to_vec()),
                    _ => {}
                }
            }
        }
        Ok(CoreFile {
            path: path.to_path_buf(),
            segments,
            pid: prpsinfo_pid
                .or(core.threads.first().map(|t| t.tid))
                .unwrap_or(0),
            files: core.files,
            threads: core.threads,
            auxv: core.auxv,
            fname: core.fname,
            ljleak_note: core.ljleak_note,
            map,
        })
    }

    /// The raw file bytes.
    pub fn data(&self) -> &[u8] {
        &self.map
    }

    /// The mappings as `/proc/PID/maps` showed them, as far as the core
    /// tells: every PT_LOAD segment, named from NT_FILE, plus NT_FILE
    /// mappings the dumper left out. Cores record no inode: a file-backed
    /// mapping gets inode 1 so that [`Mapping::file_path`] and
    /// [`Mapping::is_anon_heap`] classify it as a file.
    pub fn maps(&self) -> Maps {
        let by_start: std::collections::HashMap<u64, &FileMapping> =
            self.files.iter().map(|f| (f.start, f)).collect();
        let mut list: Vec<Mapping> = Vec::with_capacity(self.segments.len());
        for s in &self.segments {
            let file = by_start.get(&s.vaddr);
            list.push(Mapping {
                start: s.vaddr,
                end: s.vaddr + s.memsz,
                read: s.flags & PF_R != 0,
                write: s.flags & PF_W != 0,
                exec: s.flags & PF_X != 0,
                private: true,
                offset: file.map_or(0, |f| f.offset),
                inode: u64::from(file.is_some()),
                path: file.map(|f| f.path.clone()).unwrap_or_default(),
            });
        }
        let loaded: std::collections::HashSet<u64> =
            self.segments.iter().map(|s| s.vaddr).collect();
        for f in self.files.iter().filter(|f| !loaded.contains(&f.start)) {
            list.push(Mapping {
                start: f.start,
                end: f.end,
                read: true,
                write: false,
                exec: false,
                private: true,
                offset: f.offset,
                inode: 1,
                path: f.path.clone(),
            });
        }
        list.sort_by_key(|m| m.start);
        Maps { list }
    }

    /// The executable's path: the NT_FILE mapping holding `AT_PHDR`.
    pub fn exe(&self) -> Option<String> {
        let phdr = self.auxv.iter().find(|(k, _)| *k == AT_PHDR)?.1;
        self.files
            .iter()
            .find(|f| phdr >= f.start && phdr < f.end)
            .map(|f| f.path.clone())
    }

    /// The NT_PRSTATUS of `tid`.
    pub fn thread(&self, tid: i32) -> Option<&ThreadState> {
        self.threads.iter().find(|t| t.tid == tid)
    }

    /// The segment holding `addr`.
    pub fn segment(&self, addr: u64) -> Option<&LoadSeg> {
        let i = self.segments.partition_point(|s| s.vaddr + s.memsz <= addr);
        self.segments.get(i).filter(|s| addr >= s.vaddr)
    }

    /// Map the bytes of `seg` privately (copy-on-write, the file is never
    /// written), for a heap image that costs no copy.
    pub fn map_segment(&self, seg: &LoadSeg) -> std::io::Result<memmap2::MmapMut> {
        let file = std::fs::File::open(&self.path)?;
        // SAFETY: a private mapping of a regular file: our writes (fault
        // injection in tests) stay in our pages; the range was checked
        // against the file size when the core was parsed.
        unsafe {
            memmap2::MmapOptions::new()
                .offset(seg.offset)
                .len(seg.filesz as usize)
                .map_copy(&file)
        }
    }
}

/// NT_FILE: count, page size, count × (start, end, page offset), then count
/// NUL-terminated paths (linux fs/binfmt_elf.c fill_files_note).
fn parse_nt_file(desc: &[u8]) -> Result<Vec<FileMapping>, String> {
    let d = Bytes(desc);
    let count = d.u64(0).ok_or("NT_FILE too short")?;
    let page = d.u64(8).ok_or("NT_FILE too short")?;
    let table = count
        .checked_mul(24)
        .and_then(|t| t.checked_add(16))
        .filter(|&t| t <= desc.len() as u64)
        .ok_or_else(|| format!("NT_FILE claims {count} files in {} bytes", desc.len()))?;
    let mut names = desc[table as usize..].split(|&c| c == 0);
    let mut out = Vec::with_capacity(count as usize);
    for i in 0..count {
        let e = 16 + i * 24;
        let (start, end, pgoff) = (
            d.u64(e).unwrap_or(0),
            d.u64(e + 8).unwrap_or(0),
            d.u64(e + 16).unwrap_or(0),
        );
        let name = names
            .next()
            .ok_or_else(|| format!("NT_FILE has fewer names than its {count} entries"))?;
        if end < start {
            return Err(format!("NT_FILE entry {i} ends before it starts"));
        }
        out.push(FileMapping {
            start,
            end,
            offset: pgoff.saturating_mul(page),
            path: String::from_utf8_lossy(name).into_owned(),
        });
    }
    Ok(out)
}

impl Memory for CoreFile {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
        read_borrowed(self, addr, buf)
    }

    fn borrow(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let s = self.segment(addr)?;
        let off = addr - s.vaddr;
        if off.checked_add(len as u64)? > s.filesz {
            return None;
        }
        let at = (s.offset + off) as usize;
        self.map.get(at..at.checked_add(len)?)
    }
}

/// The GNU build-id of the ELF file mapped at `base` (its first page),
/// read from `mem`: the ELF header, its program headers, and the
/// `NT_GNU_BUILD_ID` note of a PT_NOTE segment. None when the first page is
/// not in `mem` or holds no build-id.
pub fn build_id_at<M: Memory + ?Sized>(mem: &M, base: u64) -> Option<Vec<u8>> {
    use super::mem::ReadExt;
    if mem.bytes::<4>(base).ok()? != *b"\x7fELF" || mem.u8(base + 4).ok()? != 2 {
        return None;
    }
    let phoff = mem.u64(base + 32).ok()?;
    let phnum = mem.u16(base + 56).ok()?.min(64) as u64;
    for i in 0..phnum {
        let h = base.checked_add(phoff)?.checked_add(i * 56)?;
        if mem.u32(h).ok()? != PT_NOTE {
            continue;
        }
        let off = mem.u64(h + 8).ok()?;
        let size = mem.u64(h + 32).ok()?.min(4096) as usize;
        let Ok(data) = mem.vec(base.checked_add(off)?, size) else {
            continue;
        };
        for (name, ty, desc) in parse_notes(&data).unwrap_or_default() {
            if name == b"GNU" && ty == NT_GNU_BUILD_ID && !desc.is_empty() {
                return Some(desc.to_vec());
            }
        }
    }
    None
}

/// Lower-case hex of a build-id.
pub fn hex(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], ty: u32, desc: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
        v.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        v.extend_from_slice(&ty.to_le_bytes());
        v.extend_from_slice(name);
        v.push(0);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v.extend_from_slice(desc);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    fn notes_split_and_reject_overruns() {
        let mut a = note(b"CORE", 1, &[1, 2, 3]);
        a.extend(note(b"GNU", 3, &[9; 20]));
        let n = parse_notes(&a).unwrap();
        assert_eq!(n.len(), 2);
        assert_eq!(n[0], (&b"CORE"[..], 1, &[1u8, 2, 3][..]));
        assert_eq!(n[1].2.len(), 20);
        let mut bad = note(b"CORE", 1, &[0; 8]);
        bad[4] = 200; // descsz past the end
        assert!(parse_notes(&bad).is_err());
        bad[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_notes(&bad).is_err());
    }

    #[test]
    fn nt_file_bounds() {
        let mut d = Vec::new();
        d.extend_from_slice(&1u64.to_le_bytes());
        d.extend_from_slice(&4096u64.to_le_bytes());
        for x in [0x1000u64, 0x3000, 2] {
            d.extend_from_slice(&x.to_le_bytes());
        }
        d.extend_from_slice(b"/usr/bin/luajit\0");
        let f = parse_nt_file(&d).unwrap();
        assert_eq!(f[0].offset, 8192);
        assert_eq!(f[0].path, "/usr/bin/luajit");
        let mut huge = d.clone();
        huge[0..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse_nt_file(&huge).unwrap_err().contains("claims"));
    }
}
