//! The `ljleak mem` part of `/metrics`: memory by owner, fds by kind, TCP
//! sockets by state, nginx shared memory zones and lua timers, from
//! [`crate::mem::breakdown`] (no pause: it reads smaps, /proc and validated
//! memory). Zones are shared by every worker of a master, so they are
//! exported once per master (from its first worker read).

use std::collections::BTreeSet;

use super::metrics::Writer;
use super::targets::Target;
use crate::mem::MemReport;

/// Resident bytes by owner: the rows of the reconciliation (they add up
/// to the process's RSS).
fn components(r: &MemReport) -> [(&'static str, u64); 9] {
    let w = &r.rows;
    [
        ("luajit_arena", w.luajit_arena),
        ("luajit_mcode", w.luajit_mcode),
        ("glibc_arenas", w.glibc_arenas),
        ("glibc_mmapped", w.glibc_mmapped),
        ("shm", w.shm),
        ("stacks", w.stacks),
        ("files", w.files),
        ("other_anon", w.other_anon),
        ("unattributed", w.unattributed),
    ]
}

fn mp(t: &Target) -> [(&'static str, String); 2] {
    let [m, p, _] = t.labels();
    [m, p]
}

fn with(t: &Target, k: &'static str, v: &str) -> Vec<(&'static str, String)> {
    let mut l = mp(t).to_vec();
    l.push((k, v.to_string()));
    l
}

/// Write the mem-based families for every target read.
pub fn mem(w: &mut Writer, rs: &[(Target, &MemReport)]) {
    if rs.is_empty() {
        return;
    }
    w.family(
        "ljleak_memory_bytes",
        "gauge",
        "Resident memory by owner (ljleak mem's reconciliation; the components add up to the RSS).",
    );
    for (t, r) in rs {
        for (c, v) in components(r) {
            w.sample("ljleak_memory_bytes", &with(t, "component", c), v as f64);
        }
    }
    w.family("ljleak_fds", "gauge", "Open file descriptors by kind.");
    for (t, r) in rs {
        for (k, n) in &r.fds.by_kind {
            w.sample("ljleak_fds", &with(t, "kind", k), *n as f64);
        }
    }
    w.family("ljleak_tcp_sockets", "gauge", "TCP sockets by state.");
    for (t, r) in rs {
        for (s, n) in &r.fds.tcp_states {
            w.sample("ljleak_tcp_sockets", &with(t, "state", s), *n as f64);
        }
    }
    // One series per (master, zone): every worker maps the same zone.
    let mut zones = Vec::new();
    let mut seen = BTreeSet::new();
    for (t, r) in rs {
        let owner = t.master.unwrap_or(t.pid).to_string();
        for z in r.shm.iter().filter(|z| z.kind != "mapping") {
            if seen.insert((owner.clone(), z.name.clone())) {
                zones.push((owner.clone(), z));
            }
        }
    }
    if !zones.is_empty() {
        w.family(
            "ljleak_shm_used_bytes",
            "gauge",
            "nginx shared memory zone bytes in use (capacity - free_space for a lua_shared_dict).",
        );
        for (m, z) in &zones {
            w.sample(
                "ljleak_shm_used_bytes",
                &[
                    ("master", m.as_str()),
                    ("zone", z.name.as_str()),
                    ("kind", z.kind.as_str()),
                ],
                z.used as f64,
            );
        }
        w.family(
            "ljleak_shm_size_bytes",
            "gauge",
            "nginx shared memory zone size (a lua_shared_dict's capacity()).",
        );
        for (m, z) in &zones {
            w.sample(
                "ljleak_shm_size_bytes",
                &[
                    ("master", m.as_str()),
                    ("zone", z.name.as_str()),
                    ("kind", z.kind.as_str()),
                ],
                z.size as f64,
            );
        }
    }
    let timers: Vec<_> = rs.iter().filter(|(_, r)| r.timers.found).collect();
    if !timers.is_empty() {
        w.family(
            "ljleak_timers",
            "gauge",
            "ngx.timer timers of the lua module by state (pending, running).",
        );
        for (t, r) in timers {
            w.sample(
                "ljleak_timers",
                &with(t, "state", "pending"),
                r.timers.pending as f64,
            );
            w.sample(
                "ljleak_timers",
                &with(t, "state", "running"),
                r.timers.running as f64,
            );
        }
    }
}
