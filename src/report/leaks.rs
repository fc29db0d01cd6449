//! `ljleak leaks` outputs: folded stacks (root first, `a;b;c BYTES`, for
//! inferno / flamegraph.pl), the stap text format (frames innermost first as
//! ` 0x… : sym+0x…/0x… [module]`, then a tab and the bytes, as
//! stackcollapse-stap.pl reads it), an SVG flame graph drawn with inferno,
//! and JSON with the summary and the top sites.
//!
//! The JSON is also the leak snapshot file (`leaks -o leaks.json`, read back
//! by `ljleak diff` and `ljleak convert`): the census envelope
//! ([`crate::report::envelope`]) at the top level with kind `leaks`, the
//! target's exe and LuaJIT build, the window and pause, then `summary` and
//! `sites` (frames innermost first; [`folded_map`] gives them root first).

use std::fmt::Write as _;

use crate::model::leaks::folded_name;
pub use crate::model::leaks::{
    folded_map, stack_key, LeakReport, LeakSite, LeakSummary, SiteFrame,
};

/// Folded lines, root first, identical stacks merged, sorted.
pub fn folded(r: &LeakReport) -> String {
    let mut out = String::new();
    for (k, (v, _)) in folded_map(r) {
        let _ = writeln!(out, "{k} {v}");
    }
    out
}

/// stap-style text: one block per site.
pub fn stap(r: &LeakReport) -> String {
    let mut out = String::new();
    for s in &r.sites {
        for f in &s.frames {
            let module = if f.module.is_empty() {
                "unknown"
            } else {
                &f.module
            };
            // A name that is already `module+0xOFF` (no symbol) carries its
            // offset: do not add `+0x0` to it.
            let name = folded_name(&f.name);
            if f.size == 0 && name.contains("+0x") {
                let _ = writeln!(out, " {:#x} : {name}/{:#x} [{}]", f.addr, f.size, module);
            } else {
                let _ = writeln!(
                    out,
                    " {:#x} : {name}+{:#x}/{:#x} [{}]",
                    f.addr, f.offset, f.size, module
                );
            }
        }
        let _ = writeln!(out, "\t{}\n", s.bytes);
    }
    out
}

/// JSON with the summary and the `top` largest sites.
pub fn json(r: &LeakReport, top: usize) -> String {
    let mut r2 = r.clone();
    r2.sites.truncate(top);
    serde_json::to_string_pretty(&r2).unwrap_or_default() + "\n"
}

/// An SVG flame graph of the folded stacks, coloured by frame kind, the
/// outstanding total in the subtitle; `trim` folds the nginx event loop.
pub fn svg(r: &LeakReport, title: Option<&str>, trim: bool) -> anyhow::Result<String> {
    let lines = folded(r);
    let what = if r.pid != 0 {
        format!(
            "pid {}, {:.1} s window: bytes still allocated at the end, by stack",
            r.pid, r.window_seconds
        )
    } else {
        "bytes still allocated at the end of the window, by stack".into()
    };
    super::flame::svg(
        &super::flame::Flame {
            title: title.unwrap_or("Memory Leak Flame Graph").to_string(),
            what,
            unit: "bytes".into(),
            trim,
        },
        lines.lines(),
    )
}

/// Whether stacks of `exe` should have the event loop trimmed by default
/// (nginx and OpenResty).
pub fn trim_by_default(exe: &str) -> bool {
    let name = exe.rsplit('/').next().unwrap_or(exe);
    name.starts_with("nginx") || name.starts_with("openresty")
}

/// The summary as text (stderr).
pub fn summary_text(s: &LeakSummary) -> String {
    let c = &s.counts;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "ljleak leaks: pid {}, traced {:.1} s{} on {} thread(s), source {}",
        s.pid,
        s.seconds,
        if s.interrupted { " (interrupted)" } else { "" },
        s.threads,
        s.source
    );
    let _ = writeln!(
        out,
        "  allocations {} ({} bytes), frees {}, frees of memory allocated before the window {} ({} bytes known)",
        c.allocs, c.alloc_bytes, c.frees, c.pre_window_frees, c.pre_window_free_bytes
    );
    let ci = s
        .sampling
        .as_ref()
        .map(|sm| {
            format!(
                " ± {} (95%: {} to {} bytes, estimated)",
                sm.outstanding_bytes_ci95,
                s.outstanding_bytes
                    .saturating_sub(sm.outstanding_bytes_ci95),
                s.outstanding_bytes + sm.outstanding_bytes_ci95
            )
        })
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "  outstanding {} allocations, {} bytes{ci} ({}){}",
        s.outstanding_count,
        s.outstanding_bytes,
        crate::units::bytes(s.outstanding_bytes),
        if s.min_age > 0.0 {
            format!(" (at least {} s old)", s.min_age)
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "  lost events {}, throttled {}, truncated stacks {}, nested calls {}, unmatched entries {}, failed calls {}",
        s.lost_events, s.throttled, s.truncated_stacks, c.nested, c.unmatched, c.failed
    );
    if let Some(sm) = &s.sampling {
        let _ = writeln!(
            out,
            "  sampled 1 per {} bytes: {} allocations sampled, outstanding figures are estimates from {} sampled allocations (interval above); frees of untracked pointers {}",
            sm.sample_bytes, sm.sampled, sm.outstanding_sampled, c.untracked_frees
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leaks::Origin;

    fn frame(name: &str, addr: u64) -> SiteFrame {
        SiteFrame {
            name: name.into(),
            addr,
            offset: 4,
            size: 32,
            module: "/lib/x.so".into(),
        }
    }

    fn report() -> LeakReport {
        LeakReport {
            sites: vec![
                LeakSite {
                    bytes: 300,
                    count: 3,
                    origin: Origin::Libc,
                    frames: vec![
                        frame("malloc", 0x10),
                        frame("leaf;x", 0x20),
                        frame("main", 0x30),
                    ],
                },
                LeakSite {
                    bytes: 5,
                    count: 1,
                    origin: Origin::Libc,
                    frames: vec![frame("malloc", 0x10), frame("main", 0x31)],
                },
                LeakSite {
                    bytes: 7,
                    count: 1,
                    origin: Origin::Libc,
                    frames: vec![frame("malloc", 0x11), frame("main", 0x32)],
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn folded_is_root_first_and_merged() {
        assert_eq!(
            folded(&report()),
            "main;leaf:x;malloc 300\nmain;malloc 12\n"
        );
    }

    #[test]
    fn stap_lines() {
        let s = stap(&report());
        assert!(
            s.starts_with(" 0x10 : malloc+0x4/0x20 [/lib/x.so]\n"),
            "{s}"
        );
        assert!(s.contains("\t300\n"));
        let mut r = report();
        r.sites[0].frames[1] = SiteFrame {
            name: "libluajit-5.1.so.2.1.0+0x1dd2f".into(),
            addr: 0x7f00_0001_dd2f,
            offset: 0,
            size: 0,
            module: "/usr/lib/libluajit-5.1.so.2.1.0".into(),
        };
        let s = stap(&r);
        assert!(
            s.contains(" : libluajit-5.1.so.2.1.0+0x1dd2f/0x0 ["),
            "offset once: {s}"
        );
    }

    #[test]
    fn svg_has_title_and_frames() {
        let s = svg(&report(), None, false).unwrap();
        assert!(s.contains("Memory Leak Flame Graph"));
        assert!(s.contains("leaf:x"));
        assert!(
            s.contains("total 312 B (312 bytes)"),
            "the total in the subtitle"
        );
        assert!(svg(&LeakReport::default(), None, true)
            .unwrap()
            .contains("<svg"));
    }
}
