//! Which processes `ljleak serve` watches, re-resolved at every scrape: the
//! PIDs given (an nginx master stands for its current workers), plus with
//! `--discover nginx` every nginx master on the box with the lua module.
//! New workers after a reload or a crash are picked up, vanished ones are
//! reported once, and each process's VM is located once (no pause) and
//! remembered for the cheap per-scrape `g->gc.total` read.
//!
//! A process is known by its PID and its start time (field 22 of
//! /proc/PID/stat), so a PID reused by another process is a new target.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::luajit::locate::{FoundVm, LocateOpts};
use crate::target::{elf::ElfFile, Maps, ProcessMemory, ReadExt};

/// One process whose VM is watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Its PID.
    pub pid: i32,
    /// The nginx master it belongs to, if any.
    pub master: Option<i32>,
    /// nginx's worker slot (`ngx_worker`), stable across a worker's
    /// replacement, if it is an nginx worker.
    pub worker: Option<u64>,
}

impl Target {
    /// `master`, `pid` and `worker` label values (empty when not known).
    pub fn labels(&self) -> [(&'static str, String); 3] {
        [
            (
                "master",
                self.master.map(|m| m.to_string()).unwrap_or_default(),
            ),
            ("pid", self.pid.to_string()),
            (
                "worker",
                self.worker.map(|w| w.to_string()).unwrap_or_default(),
            ),
        ]
    }
}

/// What changed since the previous resolution (for log lines and metrics).
#[derive(Debug, Default)]
pub struct Changes {
    /// Targets seen for the first time.
    pub new: Vec<Target>,
    /// Targets that went away.
    pub gone: Vec<Target>,
    /// Given PIDs (or masters) that no longer exist, first noticed now.
    pub given_gone: Vec<i32>,
}

#[derive(Debug)]
struct Known {
    start: u64,
    target: Target,
    vm: Option<Arc<FoundVm>>,
}

/// The watched set.
#[derive(Debug)]
pub struct Targets {
    pids: Vec<i32>,
    discover: bool,
    known: HashMap<i32, Known>,
    given_gone: HashSet<i32>,
    lua_master: HashMap<(i32, u64), bool>,
}

/// Start time of `pid` in clock ticks since boot (field 22 of stat).
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Whether an nginx master has the lua module: the module's shared object
/// (Debian's libnginx-mod-http-lua) or LuaJIT (OpenResty links it) is
/// mapped, or the executable exports `ngx_http_lua_module` (built in).
fn has_lua_module(pid: i32) -> bool {
    let Ok(maps) = Maps::read(pid) else {
        return false;
    };
    let files = maps.files();
    if files
        .iter()
        .any(|f| f.contains("ngx_http_lua_module") || f.contains("luajit"))
    {
        return true;
    }
    crate::target::exe_path(pid)
        .ok()
        .and_then(|exe| ElfFile::open(pid, &exe).ok())
        .is_some_and(|e| e.symbol("ngx_http_lua_module", false).is_some())
}

/// Every nginx master on the box (by its title), sorted.
pub fn nginx_masters() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut v: Vec<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| crate::cmd::workers::is_nginx_master(p))
        .collect();
    v.sort_unstable();
    v
}

fn is_worker_titled(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.starts_with(b"nginx: worker process"))
        .unwrap_or(false)
}

/// nginx's `ngx_worker` (the worker's slot number, 0-based) read from a
/// worker's memory through `.dynsym` (nginx exports its globals for
/// dynamic modules), without a pause: it is written once, at fork.
fn nginx_worker_slot(pid: i32) -> Option<u64> {
    let maps = Maps::read(pid).ok()?;
    let exe = crate::target::exe_path(pid).ok()?;
    let exe = exe.strip_suffix(" (deleted)").unwrap_or(&exe).to_string();
    let elf = ElfFile::open(pid, &exe).ok()?;
    let (svma, _) = elf.symbol("ngx_worker", false)?;
    let avma = svma.wrapping_add(elf.bias(&maps)?);
    let slot = ProcessMemory::new(pid).u64(avma).ok()?;
    // NGX_MAX_PROCESSES is 1024; anything above is not a worker slot.
    (slot < 1024).then_some(slot)
}

impl Targets {
    /// Watch `pids` (masters or single processes), and every nginx master
    /// with the lua module when `discover`.
    pub fn new(pids: Vec<i32>, discover: bool) -> Targets {
        Targets {
            pids,
            discover,
            known: HashMap::new(),
            given_gone: HashSet::new(),
            lua_master: HashMap::new(),
        }
    }

    /// The masters found by discovery now.
    pub fn discovered_masters(&mut self) -> Vec<i32> {
        let mut out = Vec::new();
        for m in nginx_masters() {
            let Some(st) = start_time(m) else { continue };
            let lua = *self
                .lua_master
                .entry((m, st))
                .or_insert_with(|| has_lua_module(m));
            if lua {
                out.push(m);
            }
        }
        // Forget masters that are gone, so the memo stays bounded.
        self.lua_master
            .retain(|&(p, st), _| start_time(p) == Some(st));
        out
    }

    /// Resolve the current targets (sorted by PID) and what changed.
    pub fn resolve(&mut self) -> (Vec<Target>, Changes) {
        let mut ch = Changes::default();
        let mut now: Vec<(i32, Option<i32>)> = Vec::new();
        let mut roots = self.pids.clone();
        if self.discover {
            for m in self.discovered_masters() {
                if !roots.contains(&m) {
                    roots.push(m);
                }
            }
        }
        for p in roots {
            if let Some(ws) = crate::cmd::workers::workers_of(p) {
                // A child still titled `master process` has not set
                // `ngx_worker` yet (ngx_worker_process_cycle sets it just
                // before the title): it joins at the next scrape.
                now.extend(
                    ws.into_iter()
                        .filter(|&w| is_worker_titled(w))
                        .map(|w| (w, Some(p))),
                );
            } else if crate::target::process_alive(p) {
                now.push((p, None));
            } else if self.pids.contains(&p) && self.given_gone.insert(p) {
                ch.given_gone.push(p);
            }
        }
        now.sort_unstable();
        now.dedup_by_key(|x| x.0);
        let mut out = Vec::with_capacity(now.len());
        let mut seen = HashSet::new();
        for (pid, master) in now {
            let Some(start) = start_time(pid) else {
                continue;
            };
            seen.insert(pid);
            let fresh = match self.known.get(&pid) {
                Some(k) if k.start == start => false,
                Some(_) => {
                    // Same PID, another process: the old one is gone.
                    if let Some(k) = self.known.remove(&pid) {
                        ch.gone.push(k.target);
                    }
                    true
                }
                None => true,
            };
            if fresh {
                let worker = master.and_then(|_| nginx_worker_slot(pid));
                let t = Target {
                    pid,
                    master,
                    worker,
                };
                ch.new.push(t.clone());
                self.known.insert(
                    pid,
                    Known {
                        start,
                        target: t,
                        vm: None,
                    },
                );
            }
            if let Some(k) = self.known.get(&pid) {
                out.push(k.target.clone());
            }
        }
        let gone: Vec<i32> = self
            .known
            .keys()
            .copied()
            .filter(|p| !seen.contains(p))
            .collect();
        for p in gone {
            if let Some(k) = self.known.remove(&p) {
                ch.gone.push(k.target);
            }
        }
        (out, ch)
    }

    /// The VM of a current target, located on first use (no pause) and
    /// remembered while the process lives.
    pub fn vm(&mut self, pid: i32) -> anyhow::Result<Arc<FoundVm>> {
        let k = self
            .known
            .get_mut(&pid)
            .ok_or_else(|| anyhow::anyhow!("process {pid} is not a watched target"))?;
        if let Some(v) = &k.vm {
            return Ok(Arc::clone(v));
        }
        let (_, _, vm) = crate::capture::locate(pid, &LocateOpts::default())?;
        let vm = Arc::new(vm);
        k.vm = Some(Arc::clone(&vm));
        Ok(vm)
    }

    /// Forget the located VM of `pid` (after a failed read: it is
    /// located again next time).
    pub fn forget_vm(&mut self, pid: i32) {
        if let Some(k) = self.known.get_mut(&pid) {
            k.vm = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_a_target_with_a_start_time() {
        let me = std::process::id() as i32;
        assert!(start_time(me).is_some());
        let mut t = Targets::new(vec![me], false);
        let (now, ch) = t.resolve();
        assert_eq!(
            now,
            vec![Target {
                pid: me,
                master: None,
                worker: None
            }]
        );
        assert_eq!(ch.new.len(), 1);
        // Second resolution: nothing new.
        let (_, ch) = t.resolve();
        assert!(ch.new.is_empty() && ch.gone.is_empty());
    }

    #[test]
    fn a_vanished_pid_is_reported_once() {
        // A child that has exited and been reaped: its PID is free.
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id() as i32;
        c.wait().unwrap();
        let mut t = Targets::new(vec![pid], false);
        let (now, ch) = t.resolve();
        assert!(now.is_empty());
        assert_eq!(ch.given_gone, vec![pid]);
        let (_, ch) = t.resolve();
        assert!(ch.given_gone.is_empty());
    }
}
