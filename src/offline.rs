//! Offline analysis: a [`Capture`] built from an ELF core file instead of a
//! live process, so `objs`, `refs` and `threads` run unchanged on it.
//!
//! The core gives the memory and the mappings; the executable and libraries
//! are needed only to find the VM (symbols such as `ngx_cycle`, `globalL`)
//! and its layout (DWARF). They are found by the build-id the core holds for
//! each (the first page of every ELF mapping is in the core: kernel cores
//! and ljleak dumps keep it), at the path the process used (under
//! `--sysroot` if given) or under `/usr/lib/debug/.build-id`. A file that is
//! not found, or whose build-id differs, is reported by name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::capture::{self, Capture, CaptureOpts, Consistency};
use crate::error::{Classified, ExitCode};
use crate::luajit::layout::validate;
use crate::luajit::locate::{find_vm_in, Host, LocateError};
use crate::target::core::{build_id_at, hex, CoreError, CoreFile};
use crate::target::elf::ElfFile;
use crate::target::image::Segment;
use crate::target::{HeapImage, Maps, Quiescence};

/// What ljleak records about the VM in its own dumps (the `LJLEAK` note),
/// so that the dump can be read where the binaries are not.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct LjleakNote {
    /// Note format version.
    pub version: u32,
    /// ljleak's version.
    pub ljleak: String,
    /// Target PID.
    pub pid: i32,
    /// Its executable.
    pub exe: String,
    /// The main `lua_State`.
    pub lua_state: u64,
    /// `global_State`.
    pub g: u64,
    /// Layout name (a built-in table's name, or `dwarf-…`).
    pub layout: String,
    /// Where the layout came from.
    pub layout_source: String,
    /// The object holding LuaJIT.
    pub luajit_object: Option<String>,
    /// How consistent the copy is (`quiescent`, `best-effort`).
    pub consistency: String,
    /// Where the VM thread was.
    pub stopped_in: Option<String>,
    /// How long the target was paused, in microseconds.
    pub pause_us: u64,
    /// Build-id (hex) of every mapped ELF file, by path.
    pub build_ids: BTreeMap<String, String>,
}

/// A mapped file of the core and where it was found.
#[derive(Debug, Clone)]
pub struct CoreObject {
    /// Path in the core (NT_FILE).
    pub path: String,
    /// Build-id from the core, if it holds the file's first page.
    pub build_id: Option<String>,
    /// The file used, when found.
    pub found: Option<PathBuf>,
    /// Why not, when not found.
    pub problem: Option<String>,
}

/// Options for reading a core.
#[derive(Debug, Clone, Default)]
pub struct CoreOpts {
    /// Prefix for the paths the core names (like gdb's `set sysroot`).
    pub sysroot: Option<PathBuf>,
}

fn core_error(e: CoreError) -> anyhow::Error {
    let code = match e {
        CoreError::Io { .. } => ExitCode::Failure,
        _ => ExitCode::BadInput,
    };
    Classified::new(code, e.to_string()).into()
}

/// Open a core file, with errors classified for the exit code.
pub fn open_core(path: &Path) -> Result<CoreFile> {
    CoreFile::open(path).map_err(core_error)
}

/// The `LJLEAK` note of a core, if it has a readable one.
pub fn note_of(core: &CoreFile) -> Option<LjleakNote> {
    serde_json::from_slice(core.ljleak_note.as_deref()?).ok()
}

/// Build-ids of the ELF files mapped in `mem` (first mapping at offset 0 of
/// each file), by path.
pub fn build_ids<M: crate::target::Memory + ?Sized>(
    mem: &M,
    maps: &Maps,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for m in &maps.list {
        let Some(p) = m.file_path() else { continue };
        if m.offset != 0 || out.contains_key(p) {
            continue;
        }
        if let Some(id) = build_id_at(mem, m.start) {
            out.insert(p.to_string(), hex(&id));
        }
    }
    out
}

/// Find each mapped ELF file of the core on this machine.
pub fn resolve_objects(core: &CoreFile, maps: &Maps, opts: &CoreOpts) -> Vec<CoreObject> {
    let mut ids = build_ids(core, maps);
    if let Some(n) = note_of(core) {
        for (p, id) in n.build_ids {
            ids.entry(p).or_insert(id);
        }
    }
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let paths = maps
        .list
        .iter()
        .filter_map(|m| m.file_path())
        .filter(|p| seen.insert(*p));
    for path in paths {
        if path.starts_with("/dev/") || path.starts_with("/memfd:") || path.starts_with("/SYSV") {
            continue;
        }
        // Only ELF files matter: those whose first page shows a build-id,
        // or that ljleak's note lists; others (locale archives, data
        // files) are not looked for.
        let want = ids.get(path).cloned();
        let at = |p: &str| match &opts.sysroot {
            Some(r) => r.join(p.trim_start_matches('/')),
            None => PathBuf::from(p),
        };
        let mut cands = vec![at(path)];
        if let Some(id) = want.as_deref().filter(|id| id.len() > 2) {
            for suffix in ["", ".debug"] {
                cands.push(at(&format!(
                    "/usr/lib/debug/.build-id/{}/{}{suffix}",
                    &id[..2],
                    &id[2..]
                )));
            }
        }
        let mut found = None;
        let mut problem = None;
        for c in &cands {
            let Ok(elf) = ElfFile::open_host(path, c) else {
                continue;
            };
            let got = elf.build_id().map(|b| hex(&b));
            match (&want, got) {
                (Some(w), Some(g)) if *w != g => {
                    problem.get_or_insert(format!(
                        "{} has build-id {g}, the core wants {w}",
                        c.display()
                    ));
                }
                _ => {
                    found = Some(c.clone());
                    break;
                }
            }
        }
        if found.is_none() && want.is_none() && !looks_elf_mapping(core, maps, path) {
            continue;
        }
        if found.is_none() && problem.is_none() {
            problem = Some(format!(
                "not found at {}{}",
                cands[0].display(),
                if want.is_some() {
                    " nor under /usr/lib/debug/.build-id"
                } else {
                    ""
                }
            ));
        }
        out.push(CoreObject {
            path: path.to_string(),
            build_id: want,
            found: found.clone(),
            problem: if found.is_some() { None } else { problem },
        });
    }
    out
}

/// Whether the file at `path` is mapped executable (then it is code the VM
/// search may need, even when the core lacks its first page).
fn looks_elf_mapping(_core: &CoreFile, maps: &Maps, path: &str) -> bool {
    maps.of_file(path).any(|m| m.exec)
}

/// Where the VM thread stood in the core, from its `orig_rax`: the same
/// reading as `Pause::quiescence` (target/pause.rs) makes live.
pub fn quiescence_of(core: &CoreFile) -> Option<Quiescence> {
    // mmap, mprotect, munmap, brk, mremap, madvise (as in target/pause.rs).
    const MM: [u64; 6] = [9, 10, 11, 12, 25, 28];
    let t = core.thread(core.pid).or(core.threads.first())?;
    let nr = t.regs[crate::target::core::elfc::REG_ORIG_RAX];
    Some(if (nr as i64) < 0 {
        Quiescence::UserCode
    } else if MM.contains(&nr) {
        Quiescence::MmSyscall(nr)
    } else {
        Quiescence::Syscall(nr)
    })
}

/// The heap mappings of the core as a heap image, each segment mapped
/// copy-on-write from the file (nothing is copied up front).
pub fn heap_image(core: &CoreFile, maps: &Maps) -> Result<HeapImage> {
    let mut segs = Vec::new();
    for m in maps.list.iter().filter(|m| m.is_anon_heap()) {
        let Some(s) = core.segment(m.start).filter(|s| s.filesz > 0) else {
            continue;
        };
        let data = core
            .map_segment(s)
            .map_err(|e| anyhow::anyhow!("mapping {} bytes of the core: {e}", s.filesz))?;
        segs.push(Segment {
            start: s.vaddr,
            data,
            complete: s.filesz == s.memsz,
        });
    }
    Ok(HeapImage::from_segments(segs))
}

/// A core file with its VM found: what `objs`/`refs`/`threads` and `mem`
/// read a core through.
pub struct CoreVm {
    /// The core (it is the [`crate::target::Memory`] to read).
    pub core: CoreFile,
    /// Its mappings.
    pub maps: Maps,
    /// The VM.
    pub vm: crate::luajit::FoundVm,
    /// The executable's path in the core.
    pub exe: String,
    /// ljleak's note, when the core is an ljleak dump.
    pub note: Option<LjleakNote>,
    /// The files of the core found on this machine: path in the core → here.
    pub found: BTreeMap<String, PathBuf>,
    /// The root debug files are looked for under (`--sysroot` or `/`).
    pub root: PathBuf,
}

impl CoreVm {
    /// Open a mapped file of the core, by its path in the core.
    pub fn open(&self, p: &str) -> Option<ElfFile> {
        ElfFile::open_host(p, self.found.get(p)?).ok()
    }
}

/// Open the core file `path` and find its LuaJIT VM, with the documented
/// errors (not a core: exit 9; no VM: 6; a needed file missing: 13).
pub fn open_vm(
    path: &Path,
    locate: &crate::luajit::LocateOpts,
    copts: &CoreOpts,
) -> Result<CoreVm> {
    let core = open_core(path)?;
    let maps = core.maps();
    if maps.list.is_empty() {
        return Err(Classified::new(
            ExitCode::BadInput,
            format!("core file {} holds no memory segments", path.display()),
        )
        .into());
    }
    let objects = resolve_objects(&core, &maps, copts);
    let found: BTreeMap<String, PathBuf> = objects
        .iter()
        .filter_map(|o| Some((o.path.clone(), o.found.clone()?)))
        .collect();
    let missing: Vec<String> = objects
        .iter()
        .filter_map(|o| {
            Some(format!(
                "{} (build-id {}): {}",
                o.path,
                o.build_id.as_deref().unwrap_or("unknown"),
                o.problem.as_deref()?
            ))
        })
        .collect();
    for m in &missing {
        log::warn!("core needs {m}");
    }
    let open = |p: &str| ElfFile::open_host(p, found.get(p)?).ok();
    let note = note_of(&core);
    let exe = core
        .exe()
        .or_else(|| note.as_ref().map(|n| n.exe.clone()))
        .unwrap_or_else(|| core.fname.clone());
    let root = copts.sysroot.clone().unwrap_or_else(|| PathBuf::from("/"));
    let host = Host {
        mem: &core,
        maps: &maps,
        exe: Some(exe.clone()),
        open: &open,
        debug_root: root.clone(),
        what: format!("core {}", path.display()),
    };
    let mut res = find_vm_in(&host, locate);
    if let (Err(LocateError::NotFound { .. }), Some(n), None) = (&res, &note, locate.lua_state) {
        // The dump's own record of where the VM was: enough when the
        // binaries are not on this machine and the layout is a built-in one.
        let mut lo = locate.clone();
        lo.lua_state = Some(n.lua_state);
        if let Ok(vm) = find_vm_in(&host, &lo) {
            res = Ok(vm);
        }
    }
    let vm = match res {
        Ok(vm) => vm,
        Err(e @ LocateError::NotFound { .. }) if !missing.is_empty() => {
            return Err(Classified::new(
                ExitCode::MissingFile,
                format!(
                    "{e}; the core names files not found here: {}; copy them to those paths, under /usr/lib/debug/.build-id/, or pass --sysroot DIR",
                    missing.join("; ")
                ),
            )
            .into())
        }
        Err(e) => return Err(capture::classify_locate(e)),
    };
    Ok(CoreVm {
        core,
        maps,
        vm,
        exe,
        note,
        found,
        root,
    })
}

/// The error for a VM that the core does not hold whole.
pub fn not_intact(vm: &crate::luajit::FoundVm, why: &str) -> anyhow::Error {
    Classified::new(
        ExitCode::BadInput,
        format!(
            "the VM at {:#x} is not intact in the core's heap segments ({why}); the core may be incomplete (coredump_filter?)",
            vm.roots.l
        ),
    )
    .into()
}

/// A capture read from the core file `path`.
pub fn capture_core(path: &Path, opts: &CaptureOpts, copts: &CoreOpts) -> Result<Capture> {
    let CoreVm {
        core,
        maps,
        vm,
        exe,
        note,
        ..
    } = open_vm(path, &opts.locate, copts)?;
    let image = heap_image(&core, &maps)?;
    if let Err(why) = validate(&image, &vm.layout, vm.roots.l) {
        return Err(not_intact(&vm, &why));
    }
    let quiescence = quiescence_of(&core);
    let consistency = match note.as_ref().map(|n| n.consistency.as_str()) {
        Some("quiescent") => Consistency::Quiescent,
        Some(_) => Consistency::BestEffort,
        None if quiescence.is_some_and(|q| q.is_quiescent()) => Consistency::Quiescent,
        None => Consistency::BestEffort,
    };
    Ok(Capture {
        pid: core.pid,
        exe,
        vm,
        image: crate::target::source::HeapSource::Copy(image),
        pause_us: note.as_ref().map_or(0, |n| n.pause_us),
        attempts: 0,
        consistency,
        quiescence,
        maps,
        fork: None,
    })
}

/// The build-id (hex) of the executable of the core at `path`, from the
/// core itself (the envelope of live reports reads it from the file, which
/// on the analysing machine may be another build or another process's).
pub fn core_exe_build_id(path: &Path) -> Option<String> {
    let core = CoreFile::open(path).ok()?;
    let maps = core.maps();
    let exe = core.exe()?;
    build_ids(&core, &maps).remove(&exe)
}

/// Capture the target named on the command line: a live process (`-p`) or
/// a core file (`--core`).
pub fn capture_target(t: &crate::cli::TargetArgs, opts: &CaptureOpts) -> Result<Capture> {
    if t.sysroot.is_some() && t.core.is_none() {
        return Err(Classified::new(ExitCode::Usage, "--sysroot goes with --core FILE").into());
    }
    match &t.core {
        Some(path) => capture_core(
            path,
            opts,
            &CoreOpts {
                sysroot: t.sysroot.clone(),
            },
        ),
        None => capture::capture(t.pid, opts),
    }
}
