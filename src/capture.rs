//! One consistent copy of a live VM's heap: find the VM, pause the target
//! at a quiescent point, copy its heap mappings in bulk (or make it fork a
//! copy-on-write snapshot), resume it, and hand back the copy to be walked
//! at leisure.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::error::{Classified, ExitCode};
use crate::luajit::layout::validate;
use crate::luajit::locate::{find_vm, FoundVm, LocateError, LocateOpts};
use crate::target::fork::{ForkError, ForkLimits};
use crate::target::forker::ForkSnapshot;
use crate::target::paged::PagedMemory;
use crate::target::{self, HeapImage, HeapSource, Maps, Pause, Quiescence, TargetError};

/// How the heap is captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SnapshotMode {
    /// Make the paused target fork a copy-on-write snapshot, read in place.
    Fork,
    /// Copy the heap into ljleak's memory while the target is paused.
    Copy,
    /// Fork when the copy would pause the target longer than
    /// [`AUTO_FORK_PAUSE`], else copy.
    #[default]
    Auto,
}

/// `auto` forks when the estimated copy pause exceeds this.
pub const AUTO_FORK_PAUSE: Duration = Duration::from_millis(100);
/// Bulk copy speed used for that estimate: ~20 ms per 100 MB measured by
/// scripts/bench-objs.sh on this project's machines.
const COPY_BYTES_PER_SEC: u64 = 5_000_000_000;

/// How to take the copy.
#[derive(Debug, Clone)]
pub struct CaptureOpts {
    /// VM location options.
    pub locate: LocateOpts,
    /// Do not pause: copy while the target runs, tolerating inconsistency.
    pub nonblocking: bool,
    /// Pause attempts before settling for a best-effort copy.
    pub attempts: u32,
    /// Hidden test hook: stay paused this long before copying.
    pub hold_pause: Option<Duration>,
    /// Copy or fork.
    pub snapshot: SnapshotMode,
    /// Cache size for reading a fork snapshot (default: a sixteenth of the
    /// heap, 16 MiB to 256 MiB).
    pub cache_bytes: Option<usize>,
    /// Longest life of a fork snapshot.
    pub max_snapshot_life: Duration,
}

impl Default for CaptureOpts {
    fn default() -> Self {
        CaptureOpts {
            locate: LocateOpts::default(),
            nonblocking: false,
            attempts: 50,
            hold_pause: None,
            snapshot: SnapshotMode::default(),
            cache_bytes: None,
            max_snapshot_life: Duration::from_secs(900),
        }
    }
}

/// How consistent the copy is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Taken while the VM thread was blocked outside memory management.
    Quiescent,
    /// The VM never reached a quiescent point in the allowed attempts.
    BestEffort,
    /// Taken without pausing (`--nonblocking`).
    Nonblocking,
}

impl Consistency {
    /// Name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Consistency::Quiescent => "quiescent",
            Consistency::BestEffort => "best-effort",
            Consistency::Nonblocking => "nonblocking",
        }
    }
}

/// A copied heap and what is known about it.
#[derive(Debug)]
pub struct Capture {
    /// Target.
    pub pid: i32,
    /// Its executable.
    pub exe: String,
    /// The VM.
    pub vm: FoundVm,
    /// The copy.
    pub image: HeapSource,
    /// How long the target was held, in microseconds.
    pub pause_us: u64,
    /// Pause attempts made.
    pub attempts: u32,
    /// Consistency of the copy.
    pub consistency: Consistency,
    /// Where the VM thread was when copied.
    pub quiescence: Option<Quiescence>,
    /// Mappings at copy time.
    pub maps: Maps,
    /// The fork snapshot read through `image`, alive while this is.
    pub fork: Option<ForkSnapshot>,
}

impl Capture {
    /// The VM as seen in the copied heap.
    pub fn heap_vm(&self) -> crate::luajit::Vm<'_, HeapSource> {
        crate::luajit::Vm::new(
            &self.image,
            &self.vm.layout,
            self.vm.roots.g,
            self.vm.roots.main,
        )
    }

    /// Walk limits for the copy: no list can hold more objects than the
    /// copy has room for.
    pub fn walk_limits(&self) -> crate::luajit::walk::Limits {
        crate::luajit::walk::Limits {
            max_objects: self.image.total_bytes() / 16 + 16,
        }
    }

    /// `fork` or `copy`.
    pub fn method(&self) -> &'static str {
        if self.fork.is_some() {
            "fork"
        } else {
            "copy"
        }
    }

    /// Bytes the target copied on write while the snapshot lived (0 for a
    /// copy).
    pub fn cow_bytes(&self) -> u64 {
        self.fork.as_ref().map_or(0, |f| f.cow_bytes())
    }

    /// An error if the fork snapshot was killed before the walk ended
    /// (its reads failed then, and the walk is not to be trusted).
    pub fn check_alive(&self) -> Result<()> {
        match self.fork.as_ref().and_then(|f| f.killed()) {
            Some(why) => Err(Classified::new(
                ExitCode::Failure,
                format!("the fork snapshot was stopped early: {why}; try --snapshot copy"),
            )
            .into()),
            None => Ok(()),
        }
    }
}

/// Turn a locate error into a classified one.
pub fn classify_locate(e: LocateError) -> anyhow::Error {
    match e {
        // A damaged heap is not an unsupported build (exit 1, not 7).
        LocateError::Layout(crate::luajit::layout::LayoutError::Inconsistent { .. }) => {
            Classified::new(ExitCode::Failure, e.to_string()).into()
        }
        LocateError::NotFound { .. } => Classified::new(ExitCode::NoVm, e.to_string()).into(),
        LocateError::Layout(l) => {
            Classified::new(ExitCode::UnsupportedLayout, l.to_string()).into()
        }
    }
}

/// Find the VM of `pid` (no pause).
pub fn locate(pid: i32, opts: &LocateOpts) -> Result<(String, Maps, FoundVm)> {
    target::check_process(pid)?;
    let exe = target::exe_path(pid)?;
    let maps = Maps::read(pid)?;
    let vm = find_vm(pid, &maps, opts).map_err(|e| {
        // Memory reads fail once the target is gone: that is exit 8, not
        // "no VM".
        if !target::process_alive(pid) {
            return anyhow::Error::from(target::TargetError::Exited(pid));
        }
        classify_locate(e)
    })?;
    Ok((exe, maps, vm))
}

/// Take a capture of `pid`.
pub fn capture(pid: i32, opts: &CaptureOpts) -> Result<Capture> {
    let (exe, maps0, vm) = locate(pid, &opts.locate)?;
    if opts.nonblocking && opts.snapshot == SnapshotMode::Fork {
        return Err(Classified::new(
            ExitCode::Usage,
            "--snapshot fork needs a pause: drop --nonblocking",
        )
        .into());
    }
    let plan: u64 = target::image::copy_plan(pid, &maps0, &[])
        .iter()
        .map(|(s, e)| e - s)
        .sum();
    let fork = match opts.snapshot {
        _ if opts.nonblocking => false,
        SnapshotMode::Fork => true,
        SnapshotMode::Copy => false,
        SnapshotMode::Auto => {
            let est = Duration::from_micros(plan * 1_000_000 / COPY_BYTES_PER_SEC);
            log::info!("a copy of {} MB would pause about {est:?}", plan >> 20);
            est > AUTO_FORK_PAUSE
        }
    };
    if fork {
        match target::fork::preflight(pid, &maps0) {
            Ok(pre) => match capture_fork(pid, opts, exe.clone(), vm.clone(), &pre) {
                Ok(c) => return Ok(c),
                Err(FallBack(why)) => {
                    eprintln!("ljleak: fork snapshot not possible ({why}); copying instead")
                }
            },
            Err(ForkError::NoRoom(m)) if opts.snapshot == SnapshotMode::Fork => {
                return Err(Classified::new(ExitCode::Failure, m).into())
            }
            Err(e) => eprintln!("ljleak: fork snapshot not possible ({e}); copying instead"),
        }
    }
    // The copy lives in our memory: refuse up front when it cannot.
    let room = target::fork::memory_room(std::process::id() as i32);
    if plan > room {
        return Err(Classified::new(
            ExitCode::Failure,
            format!(
                "copying the heap needs {} MB and only {} MB are available here; \
                 use --snapshot fork (reads the heap in place) or free memory",
                plan >> 20,
                room >> 20
            ),
        )
        .into());
    }
    let mut prep =
        Some(HeapImage::prepare(pid, &maps0).context("allocating buffers for the heap copy")?);
    if opts.nonblocking {
        let t = Instant::now();
        let maps = Maps::read(pid)?;
        let image = HeapImage::capture(pid, &maps, &[], prep.take().expect("prepared"))
            .map_err(|e| anyhow::anyhow!("copying the heap: {e}"))?;
        log::info!(
            "nonblocking copy of {} bytes in {:?}",
            image.total_bytes(),
            t.elapsed()
        );
        return finish(
            pid,
            exe,
            vm,
            HeapSource::Copy(image),
            0,
            0,
            Consistency::Nonblocking,
            None,
            maps,
            None,
        );
    }
    let attempts = opts.attempts.max(1);
    for attempt in 1..=attempts {
        let pause = Pause::new(pid, Duration::from_secs(2)).map_err(|e| exited_or(pid, e))?;
        let q = pause.quiescence(pid).map_err(|e| exited_or(pid, e))?;
        let last = attempt == attempts;
        if !q.is_quiescent() && !last {
            drop(pause);
            log::debug!("attempt {attempt}: VM thread {}; retrying", q.describe());
            // Let the target run on a little, with jitter so we do not keep
            // landing in the same phase of a periodic loop.
            std::thread::sleep(Duration::from_micros(500 + 997 * (attempt as u64 % 7)));
            continue;
        }
        if let Some(h) = opts.hold_pause {
            std::thread::sleep(h);
        }
        let t_maps = pause.elapsed();
        let maps = Maps::read(pid)?;
        let stacks = pause.stack_pointers();
        let t_copy = pause.elapsed();
        let image = HeapImage::capture(pid, &maps, &stacks, prep.take().expect("prepared once"));
        let t_done = pause.elapsed();
        let held = pause.resume();
        log::debug!(
            "pause: stopped after {t_maps:?}, maps read after {t_copy:?}, copied after {t_done:?}, resumed after {held:?}"
        );
        let image = match image {
            Ok(i) => i,
            Err(_) if !target::process_alive(pid) => return Err(TargetError::Exited(pid).into()),
            Err(crate::target::MemError::Os { errno, .. })
                if errno == libc::EPERM || errno == libc::EACCES =>
            {
                return Err(TargetError::Permission {
                    pid,
                    what: "process_vm_readv".into(),
                }
                .into())
            }
            Err(e) => anyhow::bail!("copying the heap: {e}; try again, or use --nonblocking"),
        };
        let consistency = if q.is_quiescent() {
            Consistency::Quiescent
        } else {
            Consistency::BestEffort
        };
        return finish(
            pid,
            exe,
            vm,
            HeapSource::Copy(image),
            held.as_micros() as u64,
            attempt,
            consistency,
            Some(q),
            maps,
            None,
        );
    }
    unreachable!("the last attempt always copies")
}

/// Why a fork capture gave way to a copy.
struct FallBack(String);

impl<E: std::fmt::Display> From<E> for FallBack {
    fn from(e: E) -> Self {
        FallBack(e.to_string())
    }
}

/// Pause at a quiescent point (as for a copy), make the target fork, resume
/// it, and read the snapshot through a bounded cache.
fn capture_fork(
    pid: i32,
    opts: &CaptureOpts,
    exe: String,
    vm: FoundVm,
    pre: &target::fork::Preflight,
) -> Result<Capture, FallBack> {
    let lim = ForkLimits {
        max_life: opts.max_snapshot_life,
        max_cow: pre.room,
    };
    let snap = target::forker::snapshot(pid, opts.attempts, opts.hold_pause, pre, lim)?;
    let g = snap.pid();
    let maps = Maps::read(g)?;
    let ranges = target::image::copy_plan(g, &maps, &[]);
    let total: u64 = ranges.iter().map(|(s, e)| e - s).sum();
    let cache = opts
        .cache_bytes
        .unwrap_or((total / 16).clamp(16 << 20, 256 << 20) as usize);
    log::info!(
        "fork snapshot {g}: paused {} us; {} MB of heap read through a {} MB cache; \
         the worst case of copy-on-write is {} MB",
        snap.pause_us,
        total >> 20,
        cache >> 20,
        pre.worst_cow >> 20
    );
    let image = HeapSource::Paged(PagedMemory::new(g, ranges, cache)?);
    let q = snap.quiescence;
    let consistency = if q.is_quiescent() {
        Consistency::Quiescent
    } else {
        Consistency::BestEffort
    };
    let (pause_us, attempts) = (snap.pause_us, snap.attempts);
    finish(
        pid,
        exe,
        vm,
        image,
        pause_us,
        attempts,
        consistency,
        Some(q),
        maps,
        Some(snap),
    )
    .map_err(|e| FallBack(format!("{e:#}")))
}

/// A failure on a process that has meanwhile died is reported as its exit.
fn exited_or(pid: i32, e: TargetError) -> TargetError {
    if target::process_alive(pid) {
        e
    } else {
        TargetError::Exited(pid)
    }
}

#[allow(clippy::too_many_arguments)]
fn finish(
    pid: i32,
    exe: String,
    vm: FoundVm,
    image: HeapSource,
    pause_us: u64,
    attempts: u32,
    consistency: Consistency,
    quiescence: Option<Quiescence>,
    maps: Maps,
    fork: Option<ForkSnapshot>,
) -> Result<Capture> {
    if !target::process_alive(pid) {
        return Err(TargetError::Exited(pid).into());
    }
    // The VM must still look like itself in the copy.
    if let Err(why) = validate(&image, &vm.layout, vm.roots.l) {
        return Err(Classified::new(
            ExitCode::Failure,
            format!(
                "the VM at {:#x} is not intact in the heap copy ({why}); try again",
                vm.roots.l
            ),
        )
        .into());
    }
    Ok(Capture {
        pid,
        exe,
        vm,
        image,
        pause_us,
        attempts,
        consistency,
        quiescence,
        maps,
        fork,
    })
}
