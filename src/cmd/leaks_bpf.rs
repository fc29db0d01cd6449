//! The tracer behind `ljleak leaks`: the BPF one (default) or the perf
//! fallback, and how BPF records feed the same accounting as perf samples.

use std::time::Duration;

use crate::cli::TracerKind;
use crate::leaks::Args;
use crate::trace::ebpf::abi::{self, counter, LjRegs};
use crate::trace::ebpf::{BpfOpts, BpfSession, Event};
use crate::trace::pmu::UprobePmu;
use crate::trace::probes::ProbeSpec;
use crate::trace::record::Regs;
use crate::trace::session::{Session, SessionStats};

use super::Window;

/// What a fallback to perf loses, for the one-line warning.
const FALLBACK_LOSES: &str = "falling back to perf uprobes: one event per thread and probe \
     (slower hits, slow teardown on many threads, threads started during the window missed \
     until picked up), every call sampled in user space, no Lua call chain beyond the \
     innermost frame";

/// The tracer in use.
// One Tracer lives per run: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum Tracer {
    /// perf uprobe events per thread.
    Perf(Session),
    /// BPF programs on uprobe_multi session links.
    Bpf(Box<BpfSession>),
}

/// Which tracer was asked for: `--tracer`, else LJLEAK_TRACER, else BPF.
fn wanted(a: &crate::cli::LeaksArgs) -> TracerKind {
    a.tracer
        .unwrap_or_else(|| match std::env::var("LJLEAK_TRACER").as_deref() {
            Ok("perf") => TracerKind::Perf,
            _ => TracerKind::Bpf,
        })
}

impl Tracer {
    /// Attach the probe set: BPF when possible, else perf with a warning.
    pub(super) fn attach(
        a: &crate::cli::LeaksArgs,
        pmu: UprobePmu,
        specs: Vec<ProbeSpec>,
        lua: Option<abi::LjLuaCfg>,
    ) -> anyhow::Result<Tracer> {
        use anyhow::Context;
        let pid = a.target.pid;
        if wanted(a) == TracerKind::Bpf {
            let opts = BpfOpts {
                stack_bytes: a.stack_bytes,
                sample_bytes: a.sample_bytes,
                // One ring for the whole process: at least 64 MB, so a
                // busy target does not fill it between two 20 ms polls.
                ring_bytes: (a.ring_pages * 4096).max(64 << 20),
                lua,
                count_only: a.debug_count_only,
            };
            match BpfSession::attach(pid, specs.clone(), opts) {
                Ok(mut s) => {
                    s.note_threads(pid);
                    log::info!(
                        "BPF tracer: {} uprobe_multi session links attached in {} ms",
                        s.link_count(),
                        s.attach_time.as_millis()
                    );
                    return Ok(Tracer::Bpf(Box::new(s)));
                }
                Err(e) => {
                    let why = if e.is_permission() {
                        format!(
                            "no permission for BPF (bpf(2) refused: it needs CAP_BPF and \
                             CAP_PERFMON, and no seccomp filter or security module denying it): {e}"
                        )
                    } else {
                        e.to_string()
                    };
                    eprintln!("ljleak: warning: eBPF tracer unavailable ({why}); {FALLBACK_LOSES}");
                }
            }
        }
        let t0 = std::time::Instant::now();
        let s = Session::attach_bounded(pid, pmu, specs, a.ring_pages, a.max_events)
            .context("attaching uprobes")?;
        log::info!(
            "perf tracer: {} threads attached in {} ms",
            s.thread_count(),
            t0.elapsed().as_millis()
        );
        Ok(Tracer::Perf(s))
    }

    /// The probe set.
    pub(super) fn specs(&self) -> &[ProbeSpec] {
        match self {
            Tracer::Perf(s) => s.specs(),
            Tracer::Bpf(s) => s.specs(),
        }
    }

    /// Wait for the next poll. The BPF programs never wake ljleak (no
    /// per-event wakeups): it drains on this timer.
    pub(super) fn wait(&self, timeout: Duration) {
        match self {
            Tracer::Perf(s) => s.wait(timeout),
            Tracer::Bpf(_) => std::thread::sleep(timeout),
        }
    }

    /// New threads: perf must open events on them; BPF links cover the
    /// whole process already.
    pub(super) fn refresh_threads(&mut self, pid: i32) -> Result<(), crate::trace::TraceError> {
        match self {
            Tracer::Perf(s) => {
                s.refresh_threads()?;
            }
            Tracer::Bpf(s) => s.note_threads(pid),
        }
        Ok(())
    }

    /// Feed every pending record to `w` (or only count them, `discard`).
    pub(super) fn drain(&mut self, w: &mut Window, discard: bool) {
        match self {
            Tracer::Perf(s) => {
                let specs = s.specs().to_vec();
                if discard {
                    s.drain(|_, _| w.samples += 1);
                } else {
                    s.drain(|i, smp| w.on_sample(i, &specs[i], smp));
                }
            }
            Tracer::Bpf(s) => {
                let specs = s.specs().to_vec();
                // Records carry no time (a clock read per allocation costs
                // the target): they are stamped here, within one poll
                // interval (20 ms) of the call, which ages only need.
                let now = super::monotonic_ns();
                s.drain(|i, ev| {
                    if discard {
                        w.samples += 1;
                    } else if let Some(spec) = specs.get(i) {
                        w.on_bpf(i, spec, ev, now);
                    }
                });
                for (tid, a) in w.stacks.anchor_updates.drain(..) {
                    s.set_anchor(tid, &a);
                }
                // Allocations freed after the poll that read them: the
                // kernel reports no frees, its live set says. Checked
                // every half second, or sooner when the held set doubled.
                if !discard && s.sweep_due(w.tracker.live_count()) {
                    sweep(s, w);
                }
            }
        }
    }

    /// Counters for the summary; with BPF the kernel's counts replace the
    /// tracker's (it sees every call, ljleak only the tracked ones).
    pub(super) fn finish(&mut self, w: &mut Window) -> SessionStats {
        match self {
            Tracer::Perf(s) => s.stats,
            Tracer::Bpf(s) => {
                sweep(s, w);
                let c = s.counters();
                let k = &mut w.tracker.counts;
                k.allocs = c[counter::ALLOCS];
                k.alloc_bytes = c[counter::ALLOC_BYTES];
                k.frees = c[counter::FREES];
                k.pre_window_frees = c[counter::PRE_FREES];
                k.pre_window_free_bytes = c[counter::PRE_FREE_BYTES];
                k.nested = c[counter::NESTED];
                k.unmatched += c[counter::UNMATCHED];
                k.failed = c[counter::FAILED];
                k.untracked_frees = c[counter::UNTRACKED_FREES];
                if s.sampling() {
                    w.bpf_sampled = Some(c[counter::SAMPLED]);
                }
                w.bpf_hits = c[counter::HITS];
                log::info!(
                    "BPF: {} program runs, {} Lua walks ({} stopped at a marker), live map full {} times",
                    c[counter::HITS],
                    c[counter::LUA_WALKS],
                    c[counter::LUA_BAD],
                    c[counter::LIVE_FULL]
                );
                log::info!(
                    "BPF stack copies: {} bytes; copies ended at their thread's anchor: {}",
                    c[counter::STACK_BYTES],
                    c[counter::ANCHORED],
                );
                SessionStats {
                    lost: c[counter::LOST],
                    throttled: 0,
                    undecodable: 0,
                    threads: s.thread_count() as u64,
                    // One link per probe covers every thread.
                    threads_skipped: 0,
                }
            }
        }
    }
}

/// Forget the held allocations the kernel's live set no longer has.
fn sweep(s: &mut BpfSession, w: &mut Window) {
    w.tracker.retain_live(|p| s.is_live(p));
    for h in w.tracker.released() {
        w.stacks.release(h);
    }
    s.swept(w.tracker.live_count());
}

fn regs_of(r: &LjRegs) -> Regs {
    Regs {
        ip: r.ip,
        sp: r.sp,
        bp: r.bp,
        ..Default::default()
    }
}

impl Window {
    /// One BPF record (from probe `i`, `spec`), drained at `now`.
    pub(super) fn on_bpf(&mut self, i: usize, spec: &ProbeSpec, ev: Event<'_>, now: u64) {
        if let Some(h) = self.hits.get_mut(i) {
            *h += 1;
        }
        self.samples += 1;
        let e = ev.rec;
        // The registers are those at the return: sp is one word above the
        // call's (the return address popped).
        let regs = regs_of(&e.regs);
        let args = Args {
            a0: e.a[0],
            a1: e.a[1],
            a2: e.a[2],
            a3: e.a[3],
        };
        let size = crate::leaks::requested(spec.func, &args).unwrap_or(0);
        let weight = match (&self.bpf_sampler, e.sampled) {
            (Some(sm), 1) => sm.weight(size).round() as u64,
            _ => size,
        };
        let stacks = &mut self.stacks;
        let (lstack, stack, freed) = (ev.lstack, ev.stack, ev.freed);
        self.tracker.on_entry_tracked(
            e.tid,
            spec.func,
            regs.sp.wrapping_sub(8),
            args,
            now,
            weight,
            || {
                // Freed before this poll: its stack will never be
                // reported. (Copies that did not end at an anchor are
                // kept: they teach it.)
                if freed && e.anchor != 0 {
                    return crate::leaks::NO_STACK;
                }
                stacks.keep_bpf(
                    &regs,
                    stack,
                    crate::leaks::deferred::BpfCopy {
                        tid: e.tid,
                        leaf: e.entry_ip,
                        anchor: e.anchor,
                        anchor_word: e.anchor_word,
                        lua: Some((&e.lua, lstack)),
                    },
                )
            },
        );
        let ret = if e.flags & abi::RET_UNTRACKED != 0 {
            0
        } else {
            e.ret
        };
        let deref = e.deref;
        self.tracker
            .on_return(e.tid, spec.func, ret, |_| Some(deref));
        if freed {
            self.tracker.forget(ev.ptr);
        }
        for h in self.tracker.released() {
            self.stacks.release(h);
        }
    }
}

/// The Lua walk's configuration from the layout ljleak already has (None
/// without a located VM: records then carry no Lua state).
pub(super) fn lua_cfg(lf: Option<&crate::unwind::lua::LuaFrames>) -> Option<abi::LjLuaCfg> {
    let vm = lf?.chain_vm.as_ref()?;
    let f = &vm.layout.f;
    let off = |x: &crate::luajit::layout::F| u32::try_from(x.off).ok();
    let cf = crate::luajit::frames::CFrameOffsets::for_layout(&vm.layout);
    Some(abi::LjLuaCfg {
        g: vm.g,
        gc64: vm.layout.gc64 as u32,
        g_cur_l: off(&f.g_cur_l)?,
        g_jit_base: off(&f.g_jit_base)?,
        l_base: off(&f.l_base)?,
        l_stack: off(&f.l_stack)?,
        l_cframe: off(&f.l_cframe)?,
        cf_save_l: cf.l as u32,
        cf_prev: cf.prev as u32,
    })
}
