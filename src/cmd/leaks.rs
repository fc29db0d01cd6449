//! `ljleak leaks`: open the probes, trace for the window, account live
//! allocations, unwind and symbolize the outstanding ones, write the report.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::emit;
use crate::cli::{LeakSource, LeaksArgs, LEAKS_FORMATS};
use crate::error::{Classified, ExitCode};
use crate::leaks::deferred::{self, DeferredStacks};
use crate::leaks::sample::{Sampler, SamplingSummary};
use crate::leaks::{Args, Origin, Tracker};
use crate::report::leaks::{self as out, LeakReport, LeakSite, LeakSummary, SiteFrame};
use crate::report::output::{Format, Formats, Output};
use crate::target::{self, Maps, ProcessMemory, ReadExt};
use crate::trace::pmu::UprobePmu;
use crate::trace::probes::{self, Func, ProbeOpts, ProbeSpec};
use crate::trace::record::Sample;
use crate::unwind::lua::{self, LuaFrames};
use crate::unwind::lua_chain;
use crate::unwind::symbols::Symbolizer;
use crate::unwind::Unwinder;

#[path = "leaks_bpf.rs"]
mod tracer;
use tracer::Tracer;

fn usage(msg: impl Into<String>) -> anyhow::Error {
    Classified::new(ExitCode::Usage, msg).into()
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Probes for `--alloc-usdt` / `--free-usdt`.
fn usdt_probes(a: &LeaksArgs, maps: &Maps, opts: ProbeOpts) -> Result<Vec<ProbeSpec>> {
    let wanted = [
        (Func::UsdtAlloc, &a.alloc_usdt),
        (Func::UsdtFree, &a.free_usdt),
    ];
    if wanted.iter().all(|(_, w)| w.is_none()) {
        return Ok(Vec::new());
    }
    if a.alloc_usdt.is_none() {
        return Err(usage("--free-usdt needs --alloc-usdt too"));
    }
    let pid = a.target.pid;
    let all = super::probes::all_probes(pid, maps);
    let mut specs = Vec::new();
    for (func, w) in wanted {
        let Some(w) = w else { continue };
        let (prov, name) = w
            .split_once(':')
            .ok_or_else(|| usage(format!("`{w}` is not PROVIDER:NAME")))?;
        let found: Vec<_> = all
            .iter()
            .filter(|p| p.provider == prov && p.name == name)
            .collect();
        if found.is_empty() {
            return Err(Classified::new(
                ExitCode::NothingToTrace,
                format!(
                    "process {pid} has no USDT probe {w}; list them with `ljleak probes -p {pid}`"
                ),
            )
            .into());
        }
        for p in found {
            let elf = crate::target::elf::ElfFile::open(pid, &p.object)
                .with_context(|| format!("opening {}", p.object))?;
            let spec = probes::usdt_probe(func, p, &elf, opts).ok_or_else(|| {
                usage(format!(
                    "cannot use USDT probe {w}: arguments [{}] not understood",
                    p.args
                ))
            })?;
            let need = if func == Func::UsdtAlloc { 2 } else { 1 };
            if spec.usdt_args.len() < need {
                return Err(usage(format!(
                    "USDT probe {w} has {} arguments, needs {need}",
                    spec.usdt_args.len()
                )));
            }
            specs.push(spec);
        }
    }
    Ok(specs)
}

/// The probe set for `--source`.
fn probe_set(a: &LeaksArgs, maps: &Maps) -> Result<Vec<ProbeSpec>> {
    let pid = a.target.pid;
    let opts = ProbeOpts {
        stack_bytes: a.stack_bytes,
    };
    let mut specs = usdt_probes(a, maps, opts)?;
    if a.source == LeakSource::Usdt && specs.is_empty() {
        return Err(usage("--source usdt needs --alloc-usdt PROVIDER:NAME"));
    }
    if matches!(a.source, LeakSource::Malloc | LeakSource::All) {
        specs.extend(probes::libc_probes(pid, maps, opts)?);
    }
    if matches!(a.source, LeakSource::Luajit | LeakSource::All) {
        let found = crate::capture::locate(pid, &super::locate_opts(&a.target));
        match found {
            Ok((_, maps, vm)) => {
                let mem = ProcessMemory::new(pid);
                let allocf = vm
                    .layout
                    .f
                    .g_allocf
                    .get(&mem, vm.roots.g)
                    .map_err(|e| anyhow::anyhow!("reading g->allocf: {e}"))?;
                specs.extend(probes::luajit_probes(pid, &maps, allocf, opts)?);
            }
            Err(e) if a.source == LeakSource::All => {
                log::warn!("not tracing LuaJIT's allocator: {e:#}");
            }
            Err(e) => return Err(e),
        }
    }
    for s in &specs {
        log::info!(
            "probe {}{} at {}+{:#x} (entry {:#x}: {}; probed {}{})",
            s.func.name(),
            if s.retprobe() { " return" } else { "" },
            s.target_path,
            s.attr.offset,
            s.entry_offset,
            s.site.entry_insn,
            s.site.probed_insn,
            if s.site.emulated {
                ", emulated"
            } else {
                ", single-stepped"
            }
        );
    }
    Ok(specs)
}

/// What the Lua-frames capture learned about the target, for the snapshot.
#[derive(Debug, Clone, Default)]
struct Seen {
    /// Executable (the target's view).
    exe: String,
    /// LuaJIT build.
    luajit: Option<crate::report::census::LuajitInfo>,
    /// Total pause for the captures, microseconds.
    pause_us: Option<u64>,
}

/// Index the target's Lua prototypes (one short pause) for Lua frames;
/// record the exe, LuaJIT build and pause in `seen`.
fn lua_frames(a: &LeaksArgs, seen: &mut Seen) -> Option<LuaFrames> {
    let opts = crate::capture::CaptureOpts {
        locate: super::locate_opts(&a.target),
        ..Default::default()
    };
    let cap = match crate::capture::capture(a.target.pid, &opts) {
        Ok(c) => c,
        Err(e) => {
            log::info!("no Lua frames: {e:#}");
            return None;
        }
    };
    seen.exe.clone_from(&cap.exe);
    seen.luajit = Some(crate::report::census::luajit_info(&cap.vm));
    seen.pause_us = Some(seen.pause_us.unwrap_or(0) + cap.pause_us);
    let index = crate::luajit::frames::ProtoIndex::build(&cap.heap_vm(), cap.walk_limits());
    log::info!(
        "{} Lua prototypes indexed (target paused {} us)",
        index.len(),
        cap.pause_us
    );
    let object = cap.vm.luajit_object.as_deref()?;
    let mut lf = LuaFrames::new(cap.pid, &cap.maps, object, &cap.vm.layout, index);
    if let Some(l) = lf.as_mut() {
        l.traces = Some(crate::unwind::jit::TraceMap::from_capture(&cap));
        l.chain_vm = Some(crate::unwind::lua_chain::ChainVm {
            pid: cap.pid,
            layout: cap.vm.layout.clone(),
            g: cap.vm.roots.g,
            main: cap.vm.roots.main,
        });
    }
    if lf.is_none() {
        log::info!("no Lua frames: {object} exports no lua_pcall/lua_resume");
    }
    lf
}

/// Event processing state for the window.
struct Window {
    pid: i32,
    tracker: Tracker,
    /// Stacks of tracked allocations (unwound at the end).
    stacks: DeferredStacks,
    /// What was learnt about the target (for the snapshot envelope).
    seen: Seen,
    samples: u64,
    /// Samples per probe of the set (for -v: which probes cost most).
    hits: Vec<u64>,
    mem: ProcessMemory,
    /// Latest mappings (kept so a target that exits can still be symbolized).
    maps: Maps,
    /// With the BPF tracer sampling: the weights of its samples.
    bpf_sampler: Option<Sampler>,
    /// With the BPF tracer sampling: allocations it sampled.
    bpf_sampled: Option<u64>,
    /// With the BPF tracer: program runs (probe hits).
    bpf_hits: u64,
}

impl Window {
    fn on_sample(&mut self, i: usize, spec: &ProbeSpec, s: &Sample<'_>) {
        if let Some(h) = self.hits.get_mut(i) {
            *h += 1;
        }
        self.event(spec, s);
        for h in self.tracker.released() {
            self.stacks.release(h);
        }
    }

    /// Unwind the stacks of the allocations still live (the others were
    /// dropped unwound when freed).
    fn resolve_outstanding(&mut self) {
        let stacks = &mut self.stacks;
        self.tracker.map_stacks(|h| stacks.resolve(h));
        log::info!(
            "stacks: {} kept raw (peak {} KB), {} dropped on free, {} unwound",
            stacks.stats.deferred,
            stacks.stats.peak_bytes / 1024,
            stacks.stats.dropped,
            stacks.stats.unwound
        );
        if stacks.anchor_misses > 0 {
            log::info!(
                "stacks: {} glued at their anchor did not pass through it (cut there)",
                stacks.anchor_misses
            );
        }
    }

    fn event(&mut self, spec: &ProbeSpec, s: &Sample<'_>) {
        self.samples += 1;
        let r = &s.regs;
        if spec.retprobe() {
            let (sp, stack, mem) = (r.sp, s.stack, &self.mem);
            self.tracker.on_return(s.tid, spec.func, r.ax, |memptr| {
                // From the stack copy taken with the return (synchronous),
                // else from live memory.
                let off = memptr.checked_sub(sp)? as usize;
                match stack.get(off..off + 8) {
                    Some(b) => Some(u64::from_le_bytes(b.try_into().ok()?)),
                    None => mem.u64(memptr).ok(),
                }
            });
            return;
        }
        if spec.func == Func::Free {
            self.tracker.on_free(s.tid, r.sp, r.di);
            return;
        }
        let arg = |i: usize| {
            let (size, loc) = spec.usdt_args.get(i)?;
            crate::trace::usdt::eval_arg(*size, loc, r, s.stack)
        };
        if spec.func == Func::UsdtFree {
            if let Some(ptr) = arg(0) {
                self.tracker.on_free(s.tid, r.sp, ptr);
            }
            return;
        }
        if spec.func == Func::UsdtAlloc {
            let (Some(ptr), Some(size)) = (arg(0), arg(1)) else {
                return;
            };
            let stacks = &mut self.stacks;
            self.tracker
                .on_usdt_alloc(ptr, size, s.time, || stacks.keep(r, s.stack));
            return;
        }
        let args = Args {
            a0: r.di,
            a1: r.si,
            a2: r.dx,
            a3: r.cx,
        };
        let stacks = &mut self.stacks;
        self.tracker
            .on_entry(s.tid, spec.func, r.sp, args, s.time, || {
                stacks.keep(r, s.stack)
            });
    }
}

/// `ljleak leaks`.
pub fn leaks(a: LeaksArgs) -> Result<()> {
    let outs = outputs(&a)?;
    let pid = a.target.pid;
    target::check_process(pid)?;
    if let Some(ws) = super::workers::workers_of(pid) {
        return super::workers::leaks_on_workers(pid, &ws, a.time, &outs);
    }
    let pmu_dir = a
        .uprobe_pmu_dir
        .clone()
        .unwrap_or_else(UprobePmu::default_dir);
    // Both tracers need the kernel's uprobes (CONFIG_UPROBE_EVENTS).
    let pmu = UprobePmu::read(&pmu_dir)?;
    let maps = Maps::read(pid)?;
    let specs = probe_set(&a, &maps)?;
    let mut unwinder = Unwinder::new(pid, &maps);
    let mut seen = Seen {
        exe: target::exe_path(pid).unwrap_or_default(),
        ..Default::default()
    };
    let mut lua = lua_frames(&a, &mut seen);
    unwinder.jit = lua.as_mut().and_then(|l| l.traces.take());
    let maps_at_start = maps.clone();

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // Only fails when a handler is already set (a second run in one process).
        let _ = ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst));
    }

    let lua_cfg = tracer::lua_cfg(lua.as_ref());
    let mut session = Tracer::attach(&a, pmu, specs, lua_cfg)?;
    let bpf = matches!(session, Tracer::Bpf(_));
    let started = Instant::now();
    let window = a.time;
    let bar = progress_bar(a.time.as_secs_f64());
    let mut tracker = Tracker::new();
    let mut bpf_sampler = None;
    if let Some(n) = a.sample_bytes {
        let s = Sampler::new(n, monotonic_ns() ^ ((pid as u64) << 32));
        if bpf {
            // The kernel decides; ljleak only weighs.
            bpf_sampler = Some(s);
        } else {
            tracker.set_sampler(s);
        }
    }
    let mut w = Window {
        pid,
        tracker,
        stacks: DeferredStacks::new(unwinder, lua, deferred::DEFAULT_CAP_BYTES),
        seen,
        samples: 0,
        hits: vec![0; session.specs().len()],
        mem: ProcessMemory::new(pid),
        maps: maps_at_start,
        bpf_sampler,
        bpf_sampled: None,
        bpf_hits: 0,
    };
    // One write: `--master` runs its workers' tracers on one stderr, and
    // eprintln! writes a line in pieces that could interleave.
    let start_line = format!(
        "ljleak: tracing pid {pid} for {} with {} probes{}\n",
        crate::units::duration(a.time),
        session.specs().len(),
        if bar.is_hidden() {
            ""
        } else {
            " (Ctrl-C to stop early)"
        }
    );
    {
        use std::io::Write;
        let _ = std::io::stderr().write_all(start_line.as_bytes());
    }
    let specs_copy = session.specs().to_vec();
    let mut last_threads = Instant::now();
    let mut exited = false;
    while started.elapsed() < window && !stop.load(Ordering::SeqCst) {
        session.wait(Duration::from_millis(20));
        session.drain(&mut w, a.debug_discard);
        if last_threads.elapsed() > Duration::from_millis(50) {
            last_threads = Instant::now();
            if !target::process_exists(pid) {
                exited = true;
                break;
            }
            session.refresh_threads(pid)?;
            // A zombie's maps are empty: keep the last real ones.
            if let Ok(m) = Maps::read(pid) {
                if !m.list.is_empty() {
                    w.maps = m;
                }
            }
        }
        bar.set_position(
            started
                .elapsed()
                .as_secs()
                .min(a.time.as_secs_f64().ceil() as u64),
        );
    }
    session.drain(&mut w, a.debug_discard);
    let end = monotonic_ns();
    let elapsed = started.elapsed();
    let stats = session.finish(&mut w);
    // Closing the fds removes every probe before the slow part.
    let t_detach = Instant::now();
    drop(session);
    log::info!("probes detached in {} ms", t_detach.elapsed().as_millis());
    bar.finish_and_clear();
    if exited {
        log::warn!("process {pid} exited during the window; reporting what was seen");
    }

    for (spec, n) in specs_copy.iter().zip(&w.hits).filter(|x| *x.1 > 0) {
        log::info!(
            "{n} hits on {}{}",
            spec.func.name(),
            if spec.retprobe() { " return" } else { "" }
        );
    }
    w.resolve_outstanding();
    refresh_lua_index(&a, &mut w);
    let report = build_report(&a, &w, end, elapsed, stop.load(Ordering::SeqCst), stats)?;
    eprint!("{}", out::summary_text(&report.summary));
    write_outputs(&a, &report)?;
    if stats.threads_skipped > 0 {
        log::warn!(
            "{} thread(s) of process {pid} were not traced (over --max-events {})",
            stats.threads_skipped,
            a.max_events
        );
    }
    if stats.lost > a.max_lost {
        return Err(crate::error::Classified::new(
            crate::error::ExitCode::LostEvents,
            format!(
                "the kernel lost {} events (over --max-lost {}): the report above undercounts; trace fewer probes (--source), sample (--sample-bytes), or raise --ring-pages",
                stats.lost, a.max_lost
            ),
        )
        .into());
    }
    Ok(())
}

/// When outstanding stacks hold Lua PCs the index does not know (code
/// loaded during the window), index the heap once more.
fn refresh_lua_index(a: &LeaksArgs, w: &mut Window) {
    let Some(l) = &w.stacks.lua else { return };
    let unknown = w
        .tracker
        .outstanding(u64::MAX, 0)
        .flat_map(|(_, live)| w.stacks.table.get(live.stack).iter().copied())
        .any(|f| lua::is_lua_pc(f) && !lua_chain::is_chain(f) && l.locate(f).is_none());
    if unknown && target::process_exists(w.pid) {
        if let Some(mut fresh) = lua_frames(a, &mut w.seen) {
            // Chain frames already resolved keep their names.
            if let Some(old) = w.stacks.lua.as_mut() {
                fresh.chain_names = std::mem::take(&mut old.chain_names);
            }
            w.stacks.lua = Some(fresh);
        }
    }
}

fn progress_bar(secs: f64) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(secs.ceil() as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "tracing {bar:40} {pos}/{len} s (Ctrl-C to stop early)",
    ) {
        bar.set_style(style);
    }
    bar
}

fn build_report(
    a: &LeaksArgs,
    w: &Window,
    end: u64,
    elapsed: Duration,
    interrupted: bool,
    stats: crate::trace::session::SessionStats,
) -> Result<LeakReport> {
    // Group outstanding allocations by stack.
    let min_age = a.min_age.as_nanos() as u64;
    // Sampled allocations stand for `weight / size` allocations each.
    let mut by_stack: std::collections::HashMap<(u32, Origin), (u64, f64)> = Default::default();
    let (mut n, mut bytes, mut sampled, mut var) = (0f64, 0u64, 0u64, 0f64);
    for (_, l) in w.tracker.outstanding(end, min_age) {
        let count = if l.size > 0 {
            l.weight as f64 / l.size as f64
        } else {
            1.0
        };
        let e = by_stack.entry((l.stack, l.origin)).or_default();
        e.0 += l.weight;
        e.1 += count;
        n += count;
        bytes += l.weight;
        sampled += 1;
        var += crate::leaks::sample::variance_term(l.size, l.weight);
    }
    let maps = match Maps::read(w.pid) {
        Ok(m) if !m.list.is_empty() => m,
        _ => w.maps.clone(),
    };
    let mut sym = Symbolizer::new(w.pid);
    let mut sites: Vec<LeakSite> = by_stack
        .into_iter()
        .map(|((stack, origin), (b, c))| {
            let mut frames: Vec<SiteFrame> = Vec::new();
            let entries = w.stacks.table.get(stack);
            for (i, &addr) in entries.iter().enumerate() {
                if lua::is_lua_pc(addr) {
                    let (pc, mut name) = lua::frame_name(w.stacks.lua.as_ref(), addr);
                    // A whole chain needs no marker: nothing was left out
                    // (a trace frame followed by its chain neither).
                    let chained = lua_chain::is_chain(addr)
                        || entries.get(i + 1).is_some_and(|&n| lua_chain::is_chain(n));
                    if !chained
                        && lua::saved_pc_may_be_stale(
                            addr,
                            frames.last().map(|f: &SiteFrame| f.name.as_str()),
                        )
                    {
                        name.insert(0, lua::STALE_MARK);
                    }
                    let marker = (!chained).then(|| lua::LUA_MARKER.to_string());
                    for name in std::iter::once(name).chain(marker) {
                        frames.push(SiteFrame {
                            name,
                            addr: pc,
                            offset: 0,
                            size: 0,
                            module: "lua".into(),
                        });
                    }
                    continue;
                }
                for f in sym.frames(&maps, addr, i > 0) {
                    frames.push(SiteFrame {
                        name: f.name,
                        addr: f.addr,
                        offset: f.offset,
                        size: f.size,
                        module: f.module,
                    });
                }
            }
            if origin == Origin::Luajit {
                if let Some(f) = frames.first_mut() {
                    // Stripped builds have no symbol for LuaJIT's allocator.
                    if f.size == 0 {
                        f.name = "lj_alloc_f".into();
                    }
                }
            }
            LeakSite {
                bytes: b,
                count: c.round() as u64,
                origin,
                frames,
            }
        })
        .collect();
    sites.sort_by(|x, y| {
        y.bytes
            .cmp(&x.bytes)
            .then_with(|| x.frames.len().cmp(&y.frames.len()))
    });
    let summary = LeakSummary {
        pid: w.pid,
        seconds: elapsed.as_secs_f64(),
        interrupted,
        threads: stats.threads,
        source: format!("{:?}", a.source).to_lowercase(),
        counts: w.tracker.counts,
        outstanding_count: n.round() as u64,
        outstanding_bytes: bytes,
        lost_events: stats.lost,
        throttled: stats.throttled,
        truncated_stacks: w.stacks.truncated,
        // The BPF tracer writes records only for tracked calls: count its
        // probe hits instead (what the target paid for).
        samples: w.samples.max(w.bpf_hits),
        min_age: a.min_age.as_secs_f64(),
        sampling: w
            .tracker
            .sampler()
            .map(|s| s.sampled)
            .or(w.bpf_sampled)
            .map(|n| SamplingSummary {
                sample_bytes: a.sample_bytes.unwrap_or(0),
                sampled: n,
                outstanding_sampled: sampled,
                outstanding_bytes_ci95: crate::leaks::sample::ci95(var),
            }),
    };
    let exe = w.seen.exe.clone();
    let mut r = LeakReport {
        pid: w.pid,
        window_seconds: summary.seconds,
        pause_us: w.seen.pause_us,
        luajit: w.seen.luajit.clone(),
        sites_total: sites.len() as u64,
        summary,
        sites,
        ..Default::default()
    };
    r.stamp(crate::report::envelope::Stamp::now(w.pid, &exe));
    r.exe = exe;
    Ok(r)
}

/// The outputs of `leaks`: `-o` files, `--folded FILE`, else stdout.
fn outputs(a: &LeaksArgs) -> Result<Vec<Output>> {
    let mut files = a.output.clone();
    let spec = Formats {
        command: "leaks",
        supported: LEAKS_FORMATS,
        stdout: Format::Folded,
        file: Format::Folded,
    };
    let mut outs = if files.is_empty() && a.folded.is_some() {
        Vec::new()
    } else {
        emit::outputs(&spec, &files, a.format)?
    };
    if let Some(f) = &a.folded {
        files = vec![f.clone()];
        outs.extend(
            emit::outputs(&spec, &files, Some(Format::Folded)).or_else(|_| {
                // `--folded x.txt`: the flag names the format, not the extension.
                Ok::<_, anyhow::Error>(vec![Output {
                    path: Some(f.clone()),
                    format: Format::Folded,
                }])
            })?,
        );
    }
    Ok(outs)
}

fn write_outputs(a: &LeaksArgs, r: &LeakReport) -> Result<()> {
    let outs = outputs(a)?;
    emit::emit(&outs, |f| match f {
        Format::Stap => emit::text(out::stap(r)),
        Format::Json => emit::text(out::json(r, a.top)),
        Format::Text => emit::text(out::summary_text(&r.summary)),
        Format::Pprof => Ok(crate::report::pprof::encode(
            &crate::report::pprof::from_leaks(r),
        )?),
        Format::Svg => emit::text(out::svg(
            r,
            None,
            a.trim.unwrap_or_else(|| out::trim_by_default(&r.exe)),
        )?),
        _ => emit::text(out::folded(r)),
    })
}
