//! `ljleak dump`: write a live process's memory as a standard ELF core file
//! (readable by gdb, and by `objs`/`refs`/`threads --core` on any machine).
//!
//! Like every capture, the memory is copied during one brief pause at a
//! quiescent point (the VM thread blocked in a syscall that does not manage
//! memory), into buffers allocated and pre-faulted before the pause; the
//! target is resumed before anything is written to disk.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use memmap2::{MmapMut, MmapOptions};
use nix::sys::ptrace;
use nix::unistd::Pid;

use crate::cli::DumpArgs;
use crate::error::{Classified, ExitCode};
use crate::offline::{build_ids, LjleakNote};
use crate::target::core::elfc::{NREGS, PF_R, PF_W, PF_X};
use crate::target::core::FileMapping;
use crate::target::core_write::{write_core, OutProcess, OutSegment, OutThread};
use crate::target::{self, Mapping, Maps, Pause, ProcessMemory, Quiescence, TargetError};

/// How much of a mapping goes into the dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Take {
    Whole,
    /// The first page of an ELF file (its headers and build-id note), as
    /// the kernel keeps by default (coredump_filter bit 4).
    Head,
    Nothing,
}

/// Starts of the file-backed mappings that hold anonymous (copied-on-write)
/// pages, from /proc/PID/smaps: relocated data and RELRO (where `.dynamic`
/// and the GOT live, which gdb needs to find the shared libraries). The
/// kernel dumps such mappings whole (fs/coredump.c vma_dump_size, anon_vma).
fn written_file_mappings(pid: i32) -> Vec<u64> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut cur = None;
    for line in text.lines() {
        if let Some(kb) = line.strip_prefix("Anonymous:") {
            let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            if let (Some(start), true) = (cur, kb > 0) {
                out.push(start);
            }
        } else if let Some((range, _)) = line.split_once(' ') {
            if let Some((a, _)) = range.split_once('-') {
                if let Ok(start) = u64::from_str_radix(a, 16) {
                    cur = Some(start);
                }
            }
        }
    }
    out
}

fn take(m: &Mapping, all: bool, written: &[u64]) -> Take {
    // The vDSO data pages and vsyscall cannot be read with
    // process_vm_readv; the kernel leaves them out of its cores too.
    if !m.read || m.path.starts_with("[vvar") || m.path == "[vsyscall]" {
        return Take::Nothing;
    }
    if all
        || m.is_anon_heap()
        || m.path == "[stack]"
        || m.path == "[vdso]"
        || (m.inode == 0 && !m.path.starts_with('['))
        || (m.file_path().is_some() && m.private && (m.write || written.contains(&m.start)))
    {
        return Take::Whole;
    }
    if m.file_path().is_some() && m.offset == 0 {
        return Take::Head;
    }
    Take::Nothing
}

fn want_len(m: &Mapping, t: Take) -> u64 {
    match t {
        Take::Whole => m.len(),
        Take::Head => m.len().min(4096),
        Take::Nothing => 0,
    }
}

fn buffer(len: u64) -> std::io::Result<MmapMut> {
    let mut b = MmapOptions::new().len(len.max(1) as usize).map_anon()?;
    // Touch every page now so the copy during the pause takes no faults.
    for i in (0..b.len()).step_by(4096) {
        b[i] = 0;
    }
    Ok(b)
}

/// Copy `buf.len()` bytes at `addr` in 1 MiB pieces; a piece that fails is
/// retried page by page and unreadable pages stay zero (as in a kernel core,
/// which writes holes for pages it cannot read).
fn copy(mem: &ProcessMemory, addr: u64, buf: &mut [u8]) -> Result<(), crate::target::MemError> {
    const PIECE: usize = 1 << 20;
    let mut pieces: Vec<(u64, &mut [u8])> = buf
        .chunks_mut(PIECE)
        .enumerate()
        .map(|(k, c)| (addr + (k * PIECE) as u64, c))
        .collect();
    let mut i = 0;
    while i < pieces.len() {
        i += mem.read_many(&mut pieces[i..])?;
        if i < pieces.len() {
            let (a, ref mut b) = pieces[i];
            for (k, page) in b.chunks_mut(4096).enumerate() {
                if crate::target::Memory::read(mem, a + (k * 4096) as u64, page).is_err() {
                    page.fill(0);
                }
            }
            i += 1;
        }
    }
    Ok(())
}

fn regs_of(tid: i32) -> Option<[u64; NREGS]> {
    let r = ptrace::getregs(Pid::from_raw(tid)).ok()?;
    // struct user_regs_struct, in the kernel's order (asm/user_64.h).
    Some([
        r.r15, r.r14, r.r13, r.r12, r.rbp, r.rbx, r.r11, r.r10, r.r9, r.r8, r.rax, r.rcx, r.rdx,
        r.rsi, r.rdi, r.orig_rax, r.rip, r.cs, r.eflags, r.rsp, r.ss, r.fs_base, r.gs_base, r.ds,
        r.es, r.fs, r.gs,
    ])
}

/// What the pause produced.
struct Copied {
    maps: Maps,
    bufs: Vec<(Mapping, Option<MmapMut>, u64)>,
    threads: Vec<OutThread>,
    quiescence: Quiescence,
    pause_us: u64,
}

fn pause_and_copy(pid: i32, a: &DumpArgs, maps0: &Maps) -> Result<Copied> {
    let mem = ProcessMemory::new(pid);
    let written = &written_file_mappings(pid)[..];
    let mut prepared: Vec<(u64, u64, MmapMut)> = Vec::new();
    for m in &maps0.list {
        let n = want_len(m, take(m, a.all, written));
        if n > 0 {
            prepared.push((
                m.start,
                n,
                buffer(n).context("allocating the copy buffers")?,
            ));
        }
    }
    let attempts = a.capture.attempts.max(1);
    for attempt in 1..=attempts {
        let pause = Pause::new(pid, Duration::from_secs(2))?;
        let q = pause.quiescence(pid)?;
        if !q.is_quiescent() && attempt < attempts {
            drop(pause);
            std::thread::sleep(Duration::from_micros(500 + 997 * (attempt as u64 % 7)));
            continue;
        }
        let maps = Maps::read(pid)?;
        let mut threads = Vec::new();
        let mut tids = pause.tids().to_vec();
        // The main thread first: gdb and ljleak take the first NT_PRSTATUS
        // as the process's own.
        tids.sort_by_key(|&t| (t != pid, t));
        for tid in tids {
            if let Some(regs) = regs_of(tid) {
                threads.push(OutThread { tid, regs });
            }
        }
        let mut bufs = Vec::new();
        for m in &maps.list {
            let n = want_len(m, take(m, a.all, written));
            if n == 0 {
                bufs.push((m.clone(), None, 0));
                continue;
            }
            let mut b = match prepared
                .iter()
                .position(|(s, len, _)| *s == m.start && *len == n)
            {
                Some(i) => prepared.swap_remove(i).2,
                None => buffer(n)?,
            };
            copy(&mem, m.start, &mut b[..n as usize])?;
            bufs.push((m.clone(), Some(b), n));
        }
        let held = pause.resume();
        return Ok(Copied {
            maps,
            bufs,
            threads,
            quiescence: q,
            pause_us: held.as_micros() as u64,
        });
    }
    unreachable!("the last attempt always copies")
}

fn proc_status(pid: i32, key: &str) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// `ljleak dump`.
pub fn dump(a: DumpArgs) -> Result<()> {
    if a.target.core.is_some() {
        return Err(Classified::new(ExitCode::Usage, "dump reads a live process (-p PID)").into());
    }
    if a.capture.nonblocking {
        return Err(Classified::new(
            ExitCode::Usage,
            "dump always pauses the target (registers need a stopped thread); drop --nonblocking",
        )
        .into());
    }
    let pid = a.target.pid;
    target::check_process(pid)?;
    let locate = super::locate_opts(&a.target);
    let (exe, maps0, vm) = match crate::capture::locate(pid, &locate) {
        Ok((exe, maps, vm)) => (exe, maps, Some(vm)),
        Err(e) if a.all && crate::error::exit_code_of(&e) == ExitCode::NoVm => {
            log::warn!("{e:#}; dumping without VM details (--all)");
            (target::exe_path(pid)?, Maps::read(pid)?, None)
        }
        Err(e) => return Err(e),
    };
    check_output(&a.output)?;
    let c = pause_and_copy(pid, &a, &maps0).map_err(|e| {
        if !target::process_alive(pid) {
            TargetError::Exited(pid).into()
        } else {
            e
        }
    })?;
    log::info!(
        "paused {} us ({}); copied {} bytes of {} mappings",
        c.pause_us,
        c.quiescence.describe(),
        c.bufs.iter().map(|b| b.2).sum::<u64>(),
        c.bufs.iter().filter(|b| b.2 > 0).count()
    );
    let mem = ProcessMemory::new(pid);
    let note = LjleakNote {
        version: 1,
        ljleak: env!("CARGO_PKG_VERSION").into(),
        pid,
        exe: exe.clone(),
        lua_state: vm.as_ref().map_or(0, |v| v.roots.l),
        g: vm.as_ref().map_or(0, |v| v.roots.g),
        layout: vm.as_ref().map_or(String::new(), |v| v.layout.name.clone()),
        layout_source: vm
            .as_ref()
            .map_or(String::new(), |v| v.layout.source.kind().to_string()),
        luajit_object: vm.as_ref().and_then(|v| v.luajit_object.clone()),
        consistency: if c.quiescence.is_quiescent() {
            "quiescent".into()
        } else {
            "best-effort".into()
        },
        stopped_in: Some(c.quiescence.describe()),
        pause_us: c.pause_us,
        build_ids: build_ids(&mem, &c.maps),
    };
    let files: Vec<FileMapping> = c
        .maps
        .list
        .iter()
        .filter_map(|m| {
            Some(FileMapping {
                start: m.start,
                end: m.end,
                offset: m.offset,
                path: m.file_path()?.to_string(),
            })
        })
        .collect();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let proc = OutProcess {
        pid,
        ppid: proc_status(pid, "PPid:") as i32,
        uid: proc_status(pid, "Uid:"),
        gid: proc_status(pid, "Gid:"),
        fname: comm.trim_end().to_string(),
        psargs: String::from_utf8_lossy(&cmdline)
            .replace('\0', " ")
            .trim_end()
            .to_string(),
        threads: c.threads,
        auxv: std::fs::read(format!("/proc/{pid}/auxv")).unwrap_or_default(),
        files,
        ljleak: Some(serde_json::to_vec(&note)?),
    };
    let segs: Vec<OutSegment<'_>> = c
        .bufs
        .iter()
        .map(|(m, b, n)| OutSegment {
            start: m.start,
            end: m.end,
            flags: (if m.read { PF_R } else { 0 })
                | (if m.write { PF_W } else { 0 })
                | (if m.exec { PF_X } else { 0 }),
            data: b.as_ref().map_or(&[][..], |b| &b[..*n as usize]),
        })
        .collect();
    let bytes = write_new_file(&a.output, |mut w| write_core(&mut w, &segs, &proc))?;
    eprintln!(
        "wrote {} ({} bytes, {} mappings, {} threads; target paused {} us, {})",
        a.output.display(),
        bytes,
        segs.len(),
        proc.threads.len(),
        c.pause_us,
        note.consistency
    );
    Ok(())
}

/// Refuse an output that is a directory or a special file before pausing
/// anything.
fn check_output(p: &Path) -> Result<()> {
    if let Ok(md) = std::fs::symlink_metadata(p) {
        if md.is_dir() || !(md.is_file() || md.file_type().is_symlink()) {
            return Err(Classified::new(
                ExitCode::Usage,
                format!(
                    "{} is not a regular file: give a new file name",
                    p.display()
                ),
            )
            .into());
        }
    }
    let dir = parent_dir(p);
    if !dir.is_dir() {
        return Err(Classified::new(
            ExitCode::Usage,
            format!("no folder {} for the dump", dir.display()),
        )
        .into());
    }
    Ok(())
}

fn parent_dir(p: &Path) -> PathBuf {
    p.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// Stream a large output to `dest` by the project's output rules
/// ([`crate::safety::outfile`]: a fresh 0600 temporary file renamed over a
/// regular file or nothing; a symlink is refused, never followed or
/// replaced). Returns what `f` says it wrote.
pub fn write_new_file(
    dest: &Path,
    f: impl FnOnce(&mut dyn std::io::Write) -> std::io::Result<u64>,
) -> Result<u64> {
    let mut n = 0;
    crate::safety::outfile::write_file_with(dest, |w| {
        n = f(w)?;
        Ok(())
    })?;
    Ok(n)
}
