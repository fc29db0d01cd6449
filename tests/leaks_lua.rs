//! Live tests of the Lua call chains of `ljleak leaks` (BPF tracer): a
//! fixture allocates at known depths and prints `debug.traceback()` taken on
//! the allocating line; ljleak's Lua frames of that allocation must be the
//! traceback's Lua frames, file and line, in order. On Debian's luajit2
//! (GC64) and the non-GC64 builds of scripts/build-luajit-variants.sh.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::LuaProc;

fn have_bpf() -> bool {
    common::require(
        "the uprobe PMU (/sys/bus/event_source/devices/uprobe)",
        Path::new("/sys/bus/event_source/devices/uprobe/type").exists(),
    )
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ljleak-leaks-lua-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("tmp dir");
    d.join(name)
}

/// `ljleak leaks` started on `pid`, returned once its probes are attached.
fn start_tracer(pid: i32, secs: u32, folded: &Path) -> Child {
    let mut child = Command::new(common::ljleak())
        .args(["leaks", "-p", &pid.to_string(), "--time", &secs.to_string()])
        .arg("--folded")
        .arg(folded)
        .args(["-o", "/dev/null"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ljleak");
    let err = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(err).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match lines.next() {
            Some(Ok(l)) if l.starts_with("ljleak: tracing") => break,
            Some(Ok(l)) => assert!(!l.contains("warning: eBPF"), "BPF tracer not used: {l}"),
            _ => panic!("ljleak did not start tracing"),
        }
        assert!(Instant::now() < deadline, "ljleak did not start in time");
    }
    std::thread::spawn(move || for _ in lines {});
    child
}

fn parse_folded(text: &str) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for l in text.lines() {
        if let Some((s, n)) = l.rsplit_once(' ') {
            *m.entry(s.to_string()).or_default() += n.parse::<u64>().unwrap_or(0);
        }
    }
    m
}

/// (file name, line) of a frame `…/x.lua:12` / `…/x.lua:12 (name)` /
/// `x.lua:12: in function …`.
fn file_line(frame: &str) -> Option<(String, u32)> {
    let frame = frame.trim();
    let loc = frame.split(" (").next()?.split(": in ").next()?;
    let loc = loc.strip_suffix(':').unwrap_or(loc);
    let (file, line) = loc.rsplit_once(':')?;
    let base = file.rsplit('/').next()?.to_string();
    Some((base, line.parse().ok()?))
}

/// Lua frames of a traceback (innermost first), C frames left out.
fn traceback_frames(tb: &str) -> Vec<(String, u32)> {
    tb.split('|')
        .skip(1)
        .filter(|l| !l.trim_start().starts_with("[C]"))
        .filter_map(file_line)
        .collect()
}

/// Lua chain frames of a folded stack (innermost first): the frames after
/// the last C frame above the allocation's own C frames.
fn chain_frames(stack: &str) -> Vec<(String, u32)> {
    let frames: Vec<&str> = stack.split(';').collect();
    let mut out = Vec::new();
    for f in frames.iter().rev() {
        if f.starts_with('@') || f.starts_with('=') {
            out.push(file_line(f).unwrap_or_default());
        } else if !out.is_empty() {
            break;
        }
    }
    out
}

/// Run the oracle fixture under `interp` and compare every case.
fn oracle_cases(interp: &Path) {
    let script = common::testdata("lua/oracle.lua");
    let mut p = LuaProc::spawn(interp, &script, &[]);
    p.expect("ready");
    let folded = tmp(&format!(
        "oracle-{}.folded",
        interp.to_string_lossy().replace('/', "_")
    ));
    let mut t = start_tracer(p.pid, 3, &folded);
    p.send("\n");
    let mut oracle = Vec::new();
    loop {
        let l = p.expect("");
        if l == "done" {
            break;
        }
        if let Some(rest) = l.strip_prefix("oracle ") {
            let (size, tb) = rest.split_once('\t').expect("oracle line");
            oracle.push((size.parse::<u64>().unwrap(), traceback_frames(tb)));
        }
    }
    assert_eq!(oracle.len(), 8, "{oracle:?}");
    let st = t.wait().expect("wait ljleak");
    assert!(st.success(), "ljleak failed");
    p.close_stdin();
    let f = parse_folded(&std::fs::read_to_string(&folded).expect("folded"));
    for (size, want) in &oracle {
        // ffi.new's block is the cdata header plus the array.
        let found: Vec<_> = f
            .iter()
            .filter(|(_, b)| **b >= *size && **b < size + 64)
            .map(|(s, _)| s)
            .collect();
        assert_eq!(found.len(), 1, "case {size}: stacks {found:#?}\n{f:#?}");
        let got = chain_frames(found[0]);
        assert!(
            got.len() >= want.len() && got[..want.len()] == want[..],
            "case {size} under {}: ljleak {got:?} vs traceback {want:?}\n{}",
            interp.display(),
            found[0]
        );
    }
}

#[test]
fn lua_chains_equal_the_traceback_on_luajit2_gc64() {
    if !have_bpf() {
        return;
    }
    let Some(lj) = common::luajit() else {
        common::require("luajit2 (/usr/bin/luajit)", false);
        return;
    };
    oracle_cases(&lj);
}

#[test]
fn lua_chains_equal_the_traceback_on_non_gc64_builds() {
    if !have_bpf() {
        return;
    }
    for v in ["luajit2-nogc64", "upstream-nogc64"] {
        let Some(lj) = common::variant(v, false) else {
            common::require(&format!("LuaJIT variant {v}"), false);
            continue;
        };
        oracle_cases(&lj);
    }
}

/// The line of kong_lru.lua containing `text`.
fn kong_line(text: &str) -> u32 {
    let src = std::fs::read_to_string(common::testdata("lua/kong_lru.lua")).unwrap();
    src.lines().position(|l| l.contains(text)).expect("line") as u32 + 1
}

#[test]
fn kong_pattern_bytes_sit_under_the_apps_lrucache_new_line_and_its_caller() {
    if !have_bpf() {
        return;
    }
    let Some(lj) = common::luajit() else {
        common::require("luajit2 (/usr/bin/luajit)", false);
        return;
    };
    if !common::require(
        "lua-resty-lrucache",
        Path::new("/usr/share/lua/5.1/resty/lrucache/pureffi.lua").exists(),
    ) {
        return;
    }
    let mut p = LuaProc::spawn(&lj, &common::testdata("lua/kong_lru.lua"), &["300"]);
    p.expect("ready");
    let folded = tmp("kong.folded");
    let mut t = start_tracer(p.pid, 3, &folded);
    p.send("\n");
    p.expect("done");
    assert!(t.wait().expect("wait").success());
    p.close_stdin();
    let f = parse_folded(&std::fs::read_to_string(&folded).expect("folded"));
    let (new_line, caller_line) = (kong_line("APP NEW LINE"), kong_line("APP CALLER LINE"));
    let pureffi: u64 = f
        .iter()
        .filter(|(s, _)| s.contains("pureffi.lua:"))
        .map(|(_, b)| b)
        .sum();
    let under_app: u64 = f
        .iter()
        .filter(|(s, _)| {
            let fr = chain_frames(s);
            let at = |line| {
                fr.iter()
                    .any(|(file, l)| file == "kong_lru.lua" && *l == line)
            };
            s.contains("pureffi.lua:") && at(new_line) && at(caller_line)
        })
        .map(|(_, b)| b)
        .sum();
    // 300 caches of 64 slots each: well over 300 KB from pureffi.lua.
    assert!(pureffi > 300_000, "pureffi bytes {pureffi}: {f:#?}");
    assert!(
        under_app * 10 >= pureffi * 9,
        "{under_app} of {pureffi} bytes under kong_lru.lua:{new_line} and :{caller_line}: {f:#?}"
    );
}

/// uprobe_multi links now in the system (bpftool; Debian's bpftool 7.1
/// prints the type by number: BPF_LINK_TYPE_UPROBE_MULTI is 12), or None
/// without bpftool.
fn uprobe_multi_links() -> Option<Vec<u64>> {
    let out = Command::new("bpftool")
        .args(["link", "show"])
        .output()
        .ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("uprobe_multi") || l.contains(": type 12 "))
            .filter_map(|l| l.split(':').next()?.trim().parse().ok())
            .collect()
    })
}

/// The BPF link ids process `pid` holds (its fdinfo says `link_id:`).
/// bpftool here names no owner, and other tests of this binary trace at
/// the same time, so a process's own links are found through its fds.
fn links_of(pid: u32) -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("link_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect()
}

/// SIGKILL of ljleak while it attaches, mid-window, and while it tears down
/// leaves no BPF link (they are fds: they go with the process) and no
/// stopped target.
#[test]
fn sigkill_at_any_point_leaves_no_link_and_no_stopped_target() {
    if !have_bpf() {
        return;
    }
    let Some(lj) = common::luajit() else {
        common::require("luajit2 (/usr/bin/luajit)", false);
        return;
    };
    if uprobe_multi_links().is_none() {
        common::require("bpftool", false);
        return;
    }
    let mut p = LuaProc::spawn(&lj, &common::testdata("lua/oracle.lua"), &[]);
    p.expect("ready");
    // Attach (killed after 0.2 s, inside locate/attach), mid-window (after
    // 2 s of a 30 s window), teardown (a 1 s window killed at ~1.1 s).
    for (window, kill_after) in [("30", 200u64), ("30", 2000), ("1", 1100)] {
        let mut child = Command::new(common::ljleak())
            .args(["leaks", "-p", &p.pid.to_string(), "--time", window])
            .args(["-o", "/dev/null"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ljleak");
        std::thread::sleep(Duration::from_millis(kill_after));
        if kill_after == 2000 {
            // Mid-window: the links exist (one per probed object file).
            // A loaded machine may still be attaching: wait for them.
            let t = std::time::Instant::now();
            while links_of(child.id()).is_empty() && t.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(
                !links_of(child.id()).is_empty(),
                "no BPF link while tracing"
            );
        }
        let held = links_of(child.id());
        let _ = child.kill();
        let _ = child.wait();
        std::thread::sleep(Duration::from_millis(200));
        let now = uprobe_multi_links().unwrap_or_default();
        assert!(
            held.iter().all(|id| !now.contains(id)),
            "links {held:?} left after a kill at {kill_after} ms (present: {now:?})"
        );
        assert!(
            matches!(common::proc_state(p.pid), Some('S') | Some('R')),
            "target state {:?} after a kill at {kill_after} ms",
            common::proc_state(p.pid)
        );
    }
    // The target still runs its cases.
    p.send("\n");
    p.expect("done");
    p.close_stdin();
}

/// `--sample-bytes 0` is a one-line usage error (exit 2) before anything
/// touches the target.
#[test]
fn sample_bytes_zero_is_a_one_line_usage_error() {
    let out = common::run(&["leaks", "-p", "1", "--sample-bytes", "0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("--sample-bytes") && err.contains("at least 1"),
        "{err}"
    );
}
