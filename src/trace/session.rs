//! A tracing session: every probe of the set opened on every thread of the
//! target (threads that appear later are picked up by [`Session::refresh_threads`]),
//! each thread's events writing to one ring buffer. Dropping the session
//! closes every fd, which removes every uprobe.

use std::collections::HashMap;
use std::time::Duration;

use super::perf::{ProbeFd, Ring};
use super::pmu::UprobePmu;
use super::probes::ProbeSpec;
use super::record::{self, Record, Sample};
use super::TraceError;

struct ThreadEvents {
    // Field order matters for Drop: unmap the ring, then close the fds.
    ring: Ring,
    fds: Vec<ProbeFd>,
}

/// Counters kept by the session.
#[derive(Debug, Clone, Copy, Default)]
pub struct SessionStats {
    /// Records the kernel reported lost (ring full).
    pub lost: u64,
    /// Throttle records.
    pub throttled: u64,
    /// Records that did not decode.
    pub undecodable: u64,
    /// Threads traced at some point.
    pub threads: u64,
    /// Threads left untraced because of the event limit.
    pub threads_skipped: u64,
}

/// Default bound on perf events (threads × probes) of one session: each
/// close waits for the kernel to unregister its uprobe (81 ms measured on
/// Linux 6.18, see `scripts/bench-threads-teardown.sh`), so this bounds the
/// teardown, with the probes live, to about 20 s (13 threads with all 19
/// probes).
pub const DEFAULT_MAX_EVENTS: usize = 256;

/// Open probes on a target.
pub struct Session {
    pid: i32,
    pmu: UprobePmu,
    specs: Vec<ProbeSpec>,
    ring_pages: usize,
    threads: HashMap<i32, ThreadEvents>,
    /// event id -> (probe index, sample_type, regs mask)
    ids: HashMap<u64, (usize, u64, u64)>,
    buf: Vec<u8>,
    max_events: usize,
    /// Counters.
    pub stats: SessionStats,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Session(pid {}, {} threads)",
            self.pid,
            self.threads.len()
        )
    }
}

impl Session {
    /// Open `specs` on every current thread of `pid`.
    pub fn attach(
        pid: i32,
        pmu: UprobePmu,
        specs: Vec<ProbeSpec>,
        ring_pages: usize,
    ) -> Result<Session, TraceError> {
        Self::attach_bounded(pid, pmu, specs, ring_pages, usize::MAX)
    }

    /// [`Session::attach`] refusing more than `max_events` events at the
    /// start ([`TraceError::TooManyEvents`]); threads that appear later past
    /// the bound are left untraced and counted in `stats.threads_skipped`.
    pub fn attach_bounded(
        pid: i32,
        pmu: UprobePmu,
        specs: Vec<ProbeSpec>,
        ring_pages: usize,
        max_events: usize,
    ) -> Result<Session, TraceError> {
        let n_threads = crate::target::threads(pid).map(|t| t.len()).unwrap_or(0);
        let wanted = n_threads.saturating_mul(specs.len());
        if wanted > max_events {
            return Err(TraceError::TooManyEvents {
                pid,
                threads: n_threads,
                probes: specs.len(),
                max: max_events,
            });
        }
        let mut s = Session {
            pid,
            pmu,
            specs,
            ring_pages: ring_pages.max(1).next_power_of_two(),
            threads: HashMap::new(),
            ids: HashMap::new(),
            buf: Vec::new(),
            max_events,
            stats: SessionStats::default(),
        };
        let n = s.refresh_threads()?;
        if n == 0 {
            return Err(TraceError::Exited(pid));
        }
        Ok(s)
    }

    /// The probe set.
    pub fn specs(&self) -> &[ProbeSpec] {
        &self.specs
    }

    /// Attach to threads not yet traced; returns how many are traced now.
    pub fn refresh_threads(&mut self) -> Result<usize, TraceError> {
        let tids = match crate::target::threads(self.pid) {
            Ok(t) => t,
            Err(_) if !self.threads.is_empty() => return Ok(self.threads.len()),
            Err(_) => return Err(TraceError::Exited(self.pid)),
        };
        let initial = self.threads.is_empty();
        for tid in tids {
            if self.threads.contains_key(&tid) {
                continue;
            }
            if (self.threads.len() + 1).saturating_mul(self.specs.len()) > self.max_events {
                if self.stats.threads_skipped == 0 {
                    log::warn!(
                        "process {}: new threads past --max-events {} are not traced",
                        self.pid,
                        self.max_events
                    );
                }
                self.stats.threads_skipped += 1;
                continue;
            }
            match self.attach_thread(tid) {
                Ok(t) => {
                    if initial {
                        log::debug!("tracing thread {tid}");
                    } else {
                        log::info!("thread {tid} started during the window: traced from now on");
                    }
                    self.threads.insert(tid, t);
                    self.stats.threads += 1;
                }
                // The thread exited between listing and opening.
                Err(TraceError::Open { source, .. })
                    if source.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.threads.len())
    }

    fn attach_thread(&mut self, tid: i32) -> Result<ThreadEvents, TraceError> {
        let mut fds = Vec::with_capacity(self.specs.len());
        for spec in &self.specs {
            // Wake the reader at an eighth full: room for bursts while it
            // drains, few wakeups.
            let wakeup = (self.ring_pages * 4096 / 8) as u32;
            fds.push(ProbeFd::open(&self.pmu, &spec.attr, tid, wakeup)?);
        }
        let ring = Ring::map(&fds[0], self.ring_pages)?;
        let io = |what: &str, source| TraceError::Open {
            what: format!("{what} on thread {tid}"),
            source,
        };
        for (i, fd) in fds.iter().enumerate() {
            if i > 0 {
                fd.set_output(&fds[0])
                    .map_err(|e| io("redirecting a probe to the ring", e))?;
            }
            let id = fd.id().map_err(|e| io("reading an event id", e))?;
            let a = &self.specs[i].attr;
            self.ids.insert(id, (i, a.sample_type, a.regs_mask));
        }
        for fd in &fds {
            fd.enable().map_err(|e| io("enabling a probe", e))?;
        }
        Ok(ThreadEvents { ring, fds })
    }

    /// Wait up to `timeout` for data in any ring.
    pub fn wait(&self, timeout: Duration) {
        let mut pfds: Vec<libc::pollfd> = self
            .threads
            .values()
            .map(|t| libc::pollfd {
                fd: t.fds[0].raw(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        if pfds.is_empty() {
            std::thread::sleep(timeout);
            return;
        }
        // SAFETY: pfds is a valid array of pollfd of the given length.
        unsafe {
            libc::poll(
                pfds.as_mut_ptr(),
                pfds.len() as libc::nfds_t,
                timeout.as_millis() as i32,
            );
        }
    }

    /// Decode every record now in the rings; `f` gets each sample with the
    /// index of the probe that produced it. Returns the number of records.
    pub fn drain(&mut self, mut f: impl FnMut(usize, &Sample<'_>)) -> usize {
        let mut n = 0;
        let ids = &self.ids;
        let stats = &mut self.stats;
        let buf = &mut self.buf;
        for (tid, t) in self.threads.iter() {
            let before = n;
            n += t.ring.drain(buf, |rec| {
                let lookup = |id| ids.get(&id).map(|&(_, st, m)| (st, m));
                match record::decode(rec, lookup) {
                    Ok(Record::Sample(s)) => {
                        if let Some(&(i, _, _)) = ids.get(&s.id) {
                            f(i, &s);
                        }
                    }
                    Ok(Record::Lost(k)) => stats.lost += k,
                    Ok(Record::Throttle) => stats.throttled += 1,
                    Ok(Record::Other(_)) => {}
                    Err(_) => stats.undecodable += 1,
                }
            });
            if n > before {
                log::trace!("thread {tid}: {} records", n - before);
            }
        }
        n
    }

    /// Threads currently traced.
    pub fn thread_count(&self) -> usize {
        self.threads.len()
    }
}

impl Drop for Session {
    /// Disable every event first (a quick ioctl each: the target stops
    /// writing samples at once), then close them. Each close of a uprobe
    /// event waits in the kernel for the probe's unregistration, serialized
    /// across events: 81 ms an event measured on Linux 6.18 (3,819 events,
    /// 310 s, also when closed from 64 threads at once, so they are not),
    /// which is why the number of events is bounded (`--max-events`).
    fn drop(&mut self) {
        for t in self.threads.values() {
            for fd in &t.fds {
                let _ = fd.disable();
            }
        }
        for (_, t) in self.threads.drain() {
            // Unmap the ring before closing the fd it belongs to.
            drop(t.ring);
            drop(t.fds);
        }
    }
}
