//! Writing a standard x86-64 ELF core file, laid out as the kernel lays out
//! its own (linux fs/binfmt_elf.c): one PT_NOTE, then one PT_LOAD per
//! mapping (with no file bytes for the mappings left out), notes
//! NT_PRSTATUS for the first thread, NT_PRPSINFO, NT_AUXV, NT_FILE, the
//! other threads' NT_PRSTATUS, and an `LJLEAK` note. Segment data starts on
//! page boundaries so a reader can map it.
//!
//! Pure encoding: what to copy and when is `cmd::dump`'s business.

use std::io::{self, Write};

use super::core::elfc::*;
use super::core::FileMapping;

/// One mapping of the dump.
#[derive(Debug, Clone)]
pub struct OutSegment<'a> {
    /// First AVMA.
    pub start: u64,
    /// One past the last.
    pub end: u64,
    /// `PF_*` bits.
    pub flags: u32,
    /// Bytes from `start` (may be shorter than the mapping, or empty).
    pub data: &'a [u8],
}

/// One thread.
#[derive(Debug, Clone)]
pub struct OutThread {
    /// Thread ID.
    pub tid: i32,
    /// `user_regs_struct` in kernel order.
    pub regs: [u64; NREGS],
}

/// The process-wide facts of the dump.
#[derive(Debug, Clone, Default)]
pub struct OutProcess {
    /// Process ID.
    pub pid: i32,
    /// Parent.
    pub ppid: i32,
    /// Real user and group.
    pub uid: u32,
    /// Real group.
    pub gid: u32,
    /// `comm`, at most 15 bytes are kept.
    pub fname: String,
    /// Command line, at most 79 bytes are kept.
    pub psargs: String,
    /// Threads, the main one first.
    pub threads: Vec<OutThread>,
    /// Raw `/proc/PID/auxv`.
    pub auxv: Vec<u8>,
    /// File mappings.
    pub files: Vec<FileMapping>,
    /// The `LJLEAK` note's bytes.
    pub ljleak: Option<Vec<u8>>,
}

const PAGE: u64 = 4096;

fn note(out: &mut Vec<u8>, name: &[u8], ty: u32, desc: &[u8]) {
    out.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
    out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(name);
    out.push(0);
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out.extend_from_slice(desc);
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

fn put(buf: &mut [u8], off: usize, bytes: &[u8]) {
    buf[off..off + bytes.len()].copy_from_slice(bytes);
}

fn prstatus(pid: i32, t: &OutThread) -> Vec<u8> {
    let mut d = vec![0u8; PRSTATUS_SIZE];
    put(&mut d, PRSTATUS_PID, &(t.tid as u32).to_le_bytes());
    // pr_ppid, pr_pgrp, pr_sid follow pr_pid; gdb shows only the LWP.
    put(&mut d, PRSTATUS_PID + 8, &(pid as u32).to_le_bytes());
    for (k, r) in t.regs.iter().enumerate() {
        put(&mut d, PRSTATUS_REG + 8 * k, &r.to_le_bytes());
    }
    d
}

fn prpsinfo(p: &OutProcess) -> Vec<u8> {
    let mut d = vec![0u8; PRPSINFO_SIZE];
    d[1] = b'S'; // pr_sname: sleeping (it was paused)
    put(&mut d, 16, &p.uid.to_le_bytes());
    put(&mut d, 20, &p.gid.to_le_bytes());
    put(&mut d, PRPSINFO_PID, &(p.pid as u32).to_le_bytes());
    put(&mut d, PRPSINFO_PID + 4, &(p.ppid as u32).to_le_bytes());
    let f = p.fname.as_bytes();
    put(&mut d, PRPSINFO_FNAME, &f[..f.len().min(15)]);
    let a = p.psargs.as_bytes();
    put(&mut d, PRPSINFO_FNAME + 16, &a[..a.len().min(79)]);
    d
}

fn nt_file(files: &[FileMapping]) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&(files.len() as u64).to_le_bytes());
    d.extend_from_slice(&PAGE.to_le_bytes());
    for f in files {
        for x in [f.start, f.end, f.offset / PAGE] {
            d.extend_from_slice(&x.to_le_bytes());
        }
    }
    for f in files {
        d.extend_from_slice(f.path.as_bytes());
        d.push(0);
    }
    d
}

/// The note segment's bytes.
pub fn notes(p: &OutProcess) -> Vec<u8> {
    let mut n = Vec::new();
    let mut threads = p.threads.iter();
    if let Some(first) = threads.next() {
        note(&mut n, b"CORE", NT_PRSTATUS, &prstatus(p.pid, first));
    }
    note(&mut n, b"CORE", NT_PRPSINFO, &prpsinfo(p));
    note(&mut n, b"CORE", NT_AUXV, &p.auxv);
    note(&mut n, b"CORE", NT_FILE, &nt_file(&p.files));
    for t in threads {
        note(&mut n, b"CORE", NT_PRSTATUS, &prstatus(p.pid, t));
    }
    if let Some(j) = &p.ljleak {
        note(&mut n, b"LJLEAK", NT_LJLEAK, j);
    }
    n
}

/// Write the core to `w`; returns the bytes written.
pub fn write_core(w: &mut impl Write, segs: &[OutSegment<'_>], p: &OutProcess) -> io::Result<u64> {
    let notes = notes(p);
    let phnum = segs.len() as u64 + 1;
    // Past 65534 segments e_phnum is PN_XNUM and the count goes into the
    // one section header's sh_info (elf(5)).
    let xnum = phnum >= PN_XNUM as u64;
    let shoff = 64u64;
    let phoff = if xnum { shoff + 64 } else { 64 };
    let notes_off = phoff + 56 * phnum;
    let mut data_off = (notes_off + notes.len() as u64).div_ceil(PAGE) * PAGE;

    let mut head = Vec::with_capacity(notes_off as usize);
    head.extend_from_slice(b"\x7fELF\x02\x01\x01");
    head.resize(16, 0);
    head.extend_from_slice(&ET_CORE.to_le_bytes());
    head.extend_from_slice(&EM_X86_64.to_le_bytes());
    head.extend_from_slice(&1u32.to_le_bytes()); // e_version
    head.extend_from_slice(&0u64.to_le_bytes()); // e_entry
    head.extend_from_slice(&phoff.to_le_bytes());
    head.extend_from_slice(&(if xnum { shoff } else { 0 }).to_le_bytes());
    head.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    head.extend_from_slice(&64u16.to_le_bytes()); // e_ehsize
    head.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    head.extend_from_slice(&(if xnum { PN_XNUM } else { phnum as u16 }).to_le_bytes());
    head.extend_from_slice(&(if xnum { 64u16 } else { 0 }).to_le_bytes()); // e_shentsize
    head.extend_from_slice(&(u16::from(xnum)).to_le_bytes()); // e_shnum
    head.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    if xnum {
        let mut sh = [0u8; 64];
        put(&mut sh, 44, &(phnum as u32).to_le_bytes()); // sh_info
        head.extend_from_slice(&sh);
    }
    let ph = |head: &mut Vec<u8>,
              ty: u32,
              flags: u32,
              off: u64,
              va: u64,
              fsz: u64,
              msz: u64,
              al: u64| {
        head.extend_from_slice(&ty.to_le_bytes());
        head.extend_from_slice(&flags.to_le_bytes());
        for x in [off, va, 0, fsz, msz, al] {
            head.extend_from_slice(&x.to_le_bytes());
        }
    };
    ph(
        &mut head,
        PT_NOTE,
        0,
        notes_off,
        0,
        notes.len() as u64,
        0,
        4,
    );
    for s in segs {
        let fsz = s.data.len() as u64;
        ph(
            &mut head,
            PT_LOAD,
            s.flags,
            if fsz > 0 { data_off } else { 0 },
            s.start,
            fsz,
            s.end - s.start,
            PAGE,
        );
        data_off += fsz.div_ceil(PAGE) * PAGE;
    }
    head.extend_from_slice(&notes);
    let mut written = head.len() as u64;
    w.write_all(&head)?;
    let zeros = [0u8; PAGE as usize];
    let pad = |w: &mut dyn Write, written: &mut u64| -> io::Result<()> {
        let n = (written.div_ceil(PAGE) * PAGE - *written) as usize;
        w.write_all(&zeros[..n])?;
        *written += n as u64;
        Ok(())
    };
    pad(w, &mut written)?;
    for s in segs.iter().filter(|s| !s.data.is_empty()) {
        w.write_all(s.data)?;
        written += s.data.len() as u64;
        pad(w, &mut written)?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::core::CoreFile;
    use crate::target::ReadExt;

    #[test]
    fn written_core_reads_back() {
        let heap: Vec<u8> = (0..8192u32).map(|i| i as u8).collect();
        let head = b"\x7fELF".to_vec();
        let segs = [
            OutSegment {
                start: 0x10000,
                end: 0x12000,
                flags: PF_R | PF_W,
                data: &heap,
            },
            OutSegment {
                start: 0x400000,
                end: 0x401000,
                flags: PF_R | PF_X,
                data: &head,
            },
            OutSegment {
                start: 0x500000,
                end: 0x600000,
                flags: PF_R,
                data: &[],
            },
        ];
        let mut regs = [0u64; NREGS];
        regs[REG_RIP] = 0x400123;
        regs[REG_ORIG_RAX] = 7;
        let p = OutProcess {
            pid: 42,
            fname: "luajit".into(),
            threads: vec![
                OutThread { tid: 42, regs },
                OutThread {
                    tid: 43,
                    regs: [1; NREGS],
                },
            ],
            auxv: [
                AT_PHDR.to_le_bytes(),
                0x400040u64.to_le_bytes(),
                [0; 8],
                [0; 8],
            ]
            .concat(),
            files: vec![FileMapping {
                start: 0x400000,
                end: 0x401000,
                offset: 0,
                path: "/usr/bin/luajit".into(),
            }],
            ljleak: Some(b"{}".to_vec()),
            ..Default::default()
        };
        let path = std::env::temp_dir().join(format!("ljleak-core-{}", std::process::id()));
        let mut f = std::fs::File::create(&path).unwrap();
        let n = write_core(&mut f, &segs, &p).unwrap();
        drop(f);
        assert_eq!(n % PAGE, 0);
        let c = CoreFile::open(&path).unwrap();
        std::fs::remove_file(&path).ok();
        assert_eq!(c.pid, 42);
        assert_eq!(c.fname, "luajit");
        assert_eq!(c.threads.len(), 2);
        assert_eq!(c.threads[0].regs[REG_RIP], 0x400123);
        assert_eq!(c.threads[1].tid, 43);
        assert_eq!(c.u32(0x10000 + 4).unwrap(), 0x07060504);
        assert_eq!(c.u8(0x11fff).unwrap(), 0xff);
        assert!(c.u8(0x12000).is_err());
        assert!(c.u8(0x500000).is_err(), "no bytes for a left-out mapping");
        assert_eq!(c.exe().as_deref(), Some("/usr/bin/luajit"));
        assert_eq!(c.ljleak_note.as_deref(), Some(&b"{}"[..]));
        let m = c.maps();
        assert_eq!(m.list.len(), 3);
        assert!(m.list[0].is_anon_heap());
        assert_eq!(m.list[1].file_path(), Some("/usr/bin/luajit"));
    }

    #[test]
    fn damaged_cores_are_refused() {
        let heap = vec![1u8; 4096];
        let segs = [OutSegment {
            start: 0x10000,
            end: 0x11000,
            flags: PF_R | PF_W,
            data: &heap,
        }];
        let mut v = Vec::new();
        write_core(&mut v, &segs, &OutProcess::default()).unwrap();
        let path = std::env::temp_dir().join(format!("ljleak-bad-{}", std::process::id()));
        let check = |bytes: &[u8], want: &str| {
            std::fs::write(&path, bytes).unwrap();
            let e = CoreFile::open(&path).unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        };
        check(&v[..v.len() - 100], "truncated");
        let mut arm = v.clone();
        arm[18] = 183; // EM_AARCH64
        check(&arm, "another architecture");
        let mut exe = v.clone();
        exe[16] = 2; // ET_EXEC
        check(&exe, "not a core");
        let mut many = v.clone();
        many[56..58].copy_from_slice(&0xfffeu16.to_le_bytes());
        check(&many, "truncated");
        check(
            b"hello world, this is not an ELF file at all, not even close, really, no.",
            "no ELF magic",
        );
        std::fs::remove_file(&path).ok();
    }
}
