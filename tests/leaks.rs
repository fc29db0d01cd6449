//! Live tests of `ljleak leaks`: real nginx workers and a small C fixture
//! traced with uprobes, checked against what the workload is known to leak.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{summary_num, Guard, LuaProc, Nginx, Tracer};

/// `/lua/leaks.lua:LINE` for the first line of testdata/lua/leaks.lua
/// containing `text` (the end of the Lua frame's name `@…/lua/leaks.lua:LINE`).
fn lua_line(text: &str) -> String {
    let path = common::testdata("lua/leaks.lua");
    let src = std::fs::read_to_string(&path).expect("leaks.lua");
    let n = src
        .lines()
        .position(|l| l.contains(text))
        .expect("line in leaks.lua")
        + 1;
    format!("/lua/leaks.lua:{n}")
}

fn have_uprobes() -> bool {
    common::require(
        "the uprobe PMU (/sys/bus/event_source/devices/uprobe)",
        Path::new("/sys/bus/event_source/devices/uprobe/type").exists(),
    )
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ljleak-leaks-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("tmp dir");
    d.join(name)
}

/// Parse folded lines into stack -> bytes.
fn parse_folded(text: &str) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for l in text.lines().filter(|l| !l.is_empty()) {
        let (stack, n) = l.rsplit_once(' ').expect("folded line has a count");
        *m.entry(stack.to_string()).or_default() += n.parse::<u64>().expect("count");
    }
    m
}

/// An independent collapse of the stap format (what stackcollapse-stap.pl
/// does): frames innermost first, `sym+0xOFF/0xSIZE`, then a tab and a count.
fn collapse_stap(text: &str) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    let mut frames: Vec<String> = Vec::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix('\t') {
            frames.reverse();
            *m.entry(frames.join(";")).or_default() += rest.trim().parse::<u64>().expect("count");
            frames.clear();
        } else if let Some((_, sym)) = l.split_once(" : ") {
            let sym = sym.rsplit_once(" [").map(|x| x.0).unwrap_or(sym);
            let name = sym.rsplit_once('+').map(|x| x.0).expect("sym+off/size");
            frames.push(name.to_string());
        }
    }
    m
}

/// The leaks app on one worker with `paths` requested once (loads the
/// module and warms the paths before the window); None when a prerequisite
/// is missing outside CI.
fn leaks_nginx(paths: &[&str]) -> Option<Nginx> {
    if !have_uprobes() {
        return None;
    }
    let ng = Nginx::start("leaks.conf", 1)?;
    for p in paths {
        assert_eq!(ng.get(p).0, 200, "{p}");
    }
    Some(ng)
}

/// The Lua frame of a folded stack where the Lua part meets C: the one
/// after the `[lua]` marker (perf tracer: only that frame is known), else
/// the innermost frame of the whole Lua chain (BPF tracer), without the
/// function name its caller used (`… (name)`).
fn lua_frame(stack: &str) -> Option<&str> {
    if let Some(f) = stack.split(';').skip_while(|f| *f != "[lua]").nth(1) {
        return Some(f);
    }
    let f = stack
        .split(';')
        .rev()
        .find(|f| f.starts_with('@') || f.starts_with('='))?;
    Some(match f.rfind(" (") {
        Some(i) if !f[i..].starts_with(" (trace ") => &f[..i],
        _ => f,
    })
}

/// Bytes of the malloc stacks whose innermost Lua frame is a file chunk at
/// `line` (`…:N`).
fn malloc_bytes_at(f: &BTreeMap<String, u64>, line: &str) -> u64 {
    f.iter()
        .filter(|(s, _)| {
            s.ends_with(";malloc")
                && lua_frame(s).is_some_and(|fr| fr.starts_with('@') && fr.ends_with(line))
        })
        .map(|(_, b)| *b)
        .sum()
}

#[test]
fn c_leak_through_ffi_malloc_is_requests_times_size() {
    let Some(ng) = leaks_nginx(&["/cleak?size=1", "/cok?size=1"]) else {
        return;
    };
    let w = ng.worker().to_string();
    let svg = tmp("cleak.svg");
    let folded = tmp("cleak.folded");
    let mut t = Tracer::start(&format!(
        "leaks -p {} --time 4 --source malloc -o {} --folded {}",
        w,
        svg.to_str().unwrap(),
        folded.to_str().unwrap()
    ));
    const N: u64 = 25;
    for _ in 0..N {
        assert_eq!(ng.get("/cleak?size=12345").0, 200);
        assert_eq!(ng.get("/cok?size=23456").0, 200);
    }
    let (err, _) = t.finish_ok();
    let f = parse_folded(&std::fs::read_to_string(&folded).expect("folded file"));
    let lua_malloc = |size: u64| -> u64 {
        f.iter()
            .filter(|(s, b)| {
                s.ends_with(";malloc")
                    && s.contains("ngx_http_lua_content_by_chunk")
                    && *b % size == 0
            })
            .map(|(_, b)| *b)
            .sum()
    };
    assert_eq!(lua_malloc(12345), N * 12345, "folded:\n{f:#?}\n{err}");
    // The Lua frame names the file and line of the ffi.C.malloc call.
    let line = lua_line("ffi.C.malloc(size)");
    let named = malloc_bytes_at(&f, &line);
    assert_eq!(named, N * 12345, "no {line} frame: {f:#?}");
    assert_eq!(
        lua_malloc(23456),
        0,
        "the freeing endpoint leaves nothing: {f:#?}"
    );
    assert!(summary_num(&err, "outstanding") >= N, "{err}");
    assert_eq!(summary_num(&err, "lost events"), 0, "{err}");
    // The flame graph: valid XML, titled, with the nginx and libc frames.
    let text = std::fs::read_to_string(&svg).expect("svg file");
    let mut r = quick_xml::Reader::from_str(&text);
    loop {
        match r.read_event() {
            Ok(quick_xml::events::Event::Eof) => break,
            Ok(_) => {}
            Err(e) => panic!("SVG is not valid XML at {}: {e}", r.buffer_position()),
        }
    }
    // nginx stacks are trimmed by default: the event loop up to
    // ngx_http_lua_run_thread is one frame, the total in the subtitle.
    for want in [
        "Memory Leak Flame Graph",
        "[nginx event loop]",
        "malloc",
        "bytes",
        "total ",
    ] {
        assert!(text.contains(want), "SVG lacks {want}");
    }
    assert!(!text.contains("ngx_http_lua_content_by_chunk"), "trimmed");
    // The target was not disturbed.
    assert_eq!(ng.get("/hello"), (200, "hello\n".to_string()));
}

#[test]
fn allocations_freed_polls_later_are_not_reported() {
    // The BPF tracer reports no frees: ljleak checks what it holds against
    // the kernel's live set. Frees 300 ms after the malloc come many polls
    // after its record.
    let Some(ng) = leaks_nginx(&["/cleak?size=1", "/cdelay?size=1&ms=1"]) else {
        return;
    };
    let folded = tmp("cdelay.folded");
    let mut t = Tracer::start(&format!(
        "leaks -p {} --time 4 --source malloc --format folded -o {}",
        ng.worker(),
        folded.to_str().unwrap()
    ));
    const N: u64 = 5;
    for _ in 0..N {
        assert_eq!(ng.get("/cleak?size=12345").0, 200);
    }
    // All at once, so each has its own block, and last: no later
    // allocation of the window reuses a freed block's address (which
    // would replace its record).
    std::thread::scope(|s| {
        for _ in 0..N {
            s.spawn(|| assert_eq!(ng.get("/cdelay?size=34567&ms=300").0, 200));
        }
    });
    let (err, _) = t.finish_ok();
    let f = parse_folded(&std::fs::read_to_string(&folded).expect("folded file"));
    let bytes = |size: u64| -> u64 {
        f.iter()
            .filter(|(s, b)| s.ends_with(";malloc") && *b % size == 0)
            .map(|(_, b)| *b)
            .sum()
    };
    assert_eq!(bytes(12345), N * 12345, "{f:#?}\n{err}");
    assert_eq!(bytes(34567), 0, "freed 300 ms later: {f:#?}\n{err}");
    assert!(summary_num(&err, "frees") >= N, "{err}");
}

#[test]
fn luajit_allocator_leak_matches_heap_growth() {
    if !have_uprobes() {
        return;
    }
    let Some(ng) = Nginx::start("leaks.conf", 1) else {
        return;
    };
    let w = ng.worker();
    assert_eq!(ng.get("/lualeak").0, 200);
    assert_eq!(ng.get("/collect").0, 200);
    let before = common::census(w)["gc_total"].as_i64().expect("gc_total");
    let json = tmp("lualeak.json");
    let ws = w.to_string();
    let mut t = Tracer::start(&format!(
        "leaks -p {} --time 4 --source luajit -o {}",
        ws,
        json.to_str().unwrap()
    ));
    const N: u64 = 40;
    for _ in 0..N {
        assert_eq!(ng.get("/lualeak").0, 200);
    }
    // Collect the window's garbage inside the window, so what stays
    // outstanding is what the heap keeps.
    assert_eq!(ng.get("/collect").0, 200);
    let (err, _) = t.finish_ok();
    let after = common::census(w)["gc_total"].as_i64().expect("gc_total");
    let growth = (after - before) as f64;
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).expect("json");
    let out = r["summary"]["outstanding_bytes"]
        .as_u64()
        .expect("outstanding_bytes") as f64;
    assert!(
        out >= (N * 4096) as f64,
        "outstanding {out} < {N} x 4096: {err}"
    );
    let ratio = out / growth;
    assert!(
        (0.9..=1.1).contains(&ratio),
        "outstanding {out} vs heap growth {growth} (ratio {ratio:.3}): {err}"
    );
    // LuaJIT's allocator called from the Lua handler's line. The JIT may
    // compile the handler mid-window, which splits the line into an
    // interpreted site and a "(trace N)" one: sum every site of that line.
    let mut line_bytes = 0;
    for site in r["sites"].as_array().expect("sites") {
        let names: Vec<&str> = site["frames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        if !names.iter().any(|n| n.contains("/lua/leaks.lua:28")) {
            continue;
        }
        assert_eq!(site["origin"], "luajit", "{site}");
        assert_eq!(names[0], "lj_alloc_f", "{names:?}");
        assert!(
            names.contains(&"ngx_http_lua_content_by_chunk"),
            "{names:?}"
        );
        line_bytes += site["bytes"].as_u64().unwrap();
    }
    assert!(line_bytes >= N * 4096, "{line_bytes} < {N} x 4096: {err}");
}

/// Build the C fixture (static or not) into a temp dir.
fn fixture(static_: bool) -> Option<PathBuf> {
    if !common::require(
        "a C compiler (cc)",
        Command::new("cc").arg("--version").output().is_ok(),
    ) {
        return None;
    }
    let out = tmp(if static_ { "alloc-static" } else { "alloc" });
    let mut c = Command::new("cc");
    c.args(["-O1", "-g", "-pthread", "-o"])
        .arg(&out)
        .arg(common::root().join("tests/fixtures/alloc.c"));
    if static_ {
        c.arg("-static");
    }
    let st = c.status().expect("run cc");
    assert!(st.success(), "cc failed");
    Some(out)
}

/// The C fixture (dynamically linked), started and at its `ready` line; it
/// speaks the checkpoint protocol's first half: `ready`, then steps on
/// stdin. None (a skip, a failure in CI) without uprobes or a compiler.
fn running_fixture() -> Option<LuaProc> {
    if !have_uprobes() {
        return None;
    }
    let bin = fixture(false)?;
    let mut p = LuaProc::spawn(&bin, Path::new("-"), &[]);
    p.expect("ready");
    Some(p)
}

#[test]
fn realloc_chain_posix_memalign_and_prewindow_frees() {
    let Some(mut p) = running_fixture() else {
        return;
    };
    let stap = tmp("fixture.stap");
    let folded = tmp("fixture.folded");
    let pid = p.pid.to_string();
    let mut t = Tracer::start(&format!(
        "leaks -p {} --time 2 --format stap -o {} --folded {}",
        pid,
        stap.to_str().unwrap(),
        folded.to_str().unwrap()
    ));
    p.send("go\n");
    p.expect("done");
    let (err, _) = t.finish_ok();
    assert_eq!(
        summary_num(&err, "allocations"),
        5,
        "malloc, 2 reallocs, posix_memalign, calloc: {err}"
    );
    assert_eq!(
        summary_num(&err, "frees"),
        3,
        "2 by realloc, the calloc: {err}"
    );
    assert_eq!(summary_num(&err, "before the window"), 3, "{err}");
    assert_eq!(summary_num(&err, "outstanding"), 2, "{err}");
    assert!(err.contains("allocations, 5300 bytes"), "{err}");
    let f = parse_folded(&std::fs::read_to_string(&folded).unwrap());
    let site = |leaf: &str, caller: &str| {
        f.iter()
            .find(|(s, _)| s.ends_with(&format!("main;{caller};{leaf}")))
            .map(|(_, b)| *b)
    };
    assert_eq!(site("realloc", "grow_chain"), Some(300), "{f:#?}");
    assert_eq!(
        site("posix_memalign", "aligned_block"),
        Some(5000),
        "{f:#?}"
    );
    // The stap text collapses to exactly the folded lines.
    // A frame without a symbol is `object+0xOFF` in folded stacks; stap
    // text gives its offset once (`object+0xOFF/0x0`), so the collapse
    // keeps the object name, as stackcollapse-stap.pl does.
    let s = collapse_stap(&std::fs::read_to_string(&stap).unwrap());
    let no_offsets: BTreeMap<String, u64> = f
        .iter()
        .map(|(k, v)| {
            let k: Vec<&str> = k
                .split(';')
                .map(|fr| fr.split_once("+0x").map_or(fr, |x| x.0))
                .collect();
            (k.join(";"), *v)
        })
        .collect();
    assert_eq!(s, no_offsets);
}

#[test]
fn sigkill_mid_window_leaves_no_probe() {
    if !have_uprobes() {
        return;
    }
    let Some(ng) = Nginx::start("leaks.conf", 1) else {
        return;
    };
    let w = ng.worker();
    let events = Path::new("/sys/kernel/tracing/uprobe_events");
    let before = std::fs::read_to_string(events).ok();
    let ws = w.to_string();
    let t = Tracer::start(&format!("leaks -p {} --time 30", ws));
    for _ in 0..20 {
        assert_eq!(ng.get("/cleak?size=100").0, 200);
    }
    common::unsafe_kill(t.pid(), 9);
    drop(t);
    // perf-created uprobes never appear in tracefs, before or after.
    if let Some(b) = before {
        assert_eq!(
            std::fs::read_to_string(events).unwrap(),
            b,
            "uprobe_events changed"
        );
        assert!(b.trim().is_empty(), "uprobe_events not empty: {b}");
    }
    // The worker is running, not stopped, and serves.
    assert!(
        matches!(common::proc_state(w), Some('S') | Some('R')),
        "{:?}",
        common::proc_state(w)
    );
    for _ in 0..50 {
        assert_eq!(ng.get("/hello"), (200, "hello\n".to_string()));
    }
    assert_eq!(ng.worker(), w, "the worker did not crash");
    // A new session attaches to the same worker at once (nothing is left
    // claiming it) and sees the requests made during its window.
    let mut t = Tracer::start(&format!("leaks -p {} --time 1 --source malloc", ws));
    for _ in 0..5 {
        assert_eq!(ng.get("/cleak?size=777").0, 200);
    }
    let (_, out) = t.finish_ok();
    assert!(out.lines().any(|l| l.ends_with(" 3885")), "{out}");
}

#[test]
fn bad_input_gives_one_line_errors() {
    // --time 0.
    let out = common::run(&["leaks", "-p", "1", "--time", "0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("--time") && err.contains("longer than zero"),
        "{err}"
    );

    let sleeper = Guard(Command::new("sleep").arg("60").spawn().expect("sleep"));
    let pid = sleeper.0.id().to_string();
    // No uprobe PMU (simulated).
    let out = common::run(&[
        "leaks",
        "-p",
        &pid,
        "--uprobe-pmu-dir",
        "/nonexistent/uprobe",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(20), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no uprobe PMU"), "{err}");

    // A static binary: no libc to probe.
    if !have_uprobes() {
        return;
    }
    let Some(bin) = fixture(true) else { return };
    let mut p = LuaProc::spawn(&bin, Path::new("-"), &[]);
    p.expect("ready");
    let out = common::run(&[
        "leaks",
        "-p",
        &p.pid.to_string(),
        "--source",
        "malloc",
        "--time",
        "1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(21), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no libc mapped"), "{err}");
}

/// The USDT fixture (examples/usdt_alloc.rs), built if `cargo test` was
/// filtered to this file and did not build examples.
fn usdt_fixture() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let bin = profile_dir.join("examples/usdt_alloc");
    if !bin.exists() {
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let mut c = Command::new(env!("CARGO"));
        c.args(["build", "--example", "usdt_alloc"])
            .current_dir(common::root());
        if release {
            c.arg("--release");
        }
        assert!(
            c.status().expect("cargo build").success(),
            "building the USDT fixture"
        );
    }
    bin
}

#[test]
fn usdt_probes_listed_and_traced_with_kernel_managed_semaphore() {
    if !have_uprobes() {
        return;
    }
    let bin = usdt_fixture();
    let mut p = LuaProc::spawn(&bin, Path::new("-"), &[]);
    p.expect("ready");
    let pid = p.pid.to_string();
    // Listing.
    let list = common::run_json(&["probes", "-p", &pid, "--format", "json"]);
    let probes = list.as_array().expect("array");
    let alloc: Vec<_> = probes
        .iter()
        .filter(|x| x["provider"] == "ljfix" && x["name"] == "alloc")
        .collect();
    assert!(!alloc.is_empty(), "{list}");
    assert!(alloc.iter().all(|x| x["semaphore"].as_u64().unwrap() != 0
        && x["args"].as_str().unwrap().split(' ').count() == 2));
    assert!(probes
        .iter()
        .any(|x| x["provider"] == "ljfix" && x["name"] == "free"));
    // Tracing: 5 blocks of 3000 bytes, 2 freed.
    let mut t = Tracer::start(&format!(
        "leaks -p {} --time 2 --source usdt --alloc-usdt ljfix:alloc --free-usdt ljfix:free",
        pid
    ));
    p.send("go\n");
    assert_eq!(
        p.expect("done"),
        "enabled=true",
        "the kernel raised the semaphore"
    );
    let (err, out) = t.finish_ok();
    assert_eq!(summary_num(&err, "allocations"), 5, "{err}");
    assert_eq!(summary_num(&err, "frees"), 2, "{err}");
    assert!(
        err.contains("outstanding 3 allocations, 9000 bytes"),
        "{err}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains("usdt_alloc::main") && l.ends_with(" 9000")),
        "{out}"
    );
    // ljleak gone: the semaphore is back to zero.
    p.send("go\n");
    assert_eq!(p.expect("done"), "enabled=false");
    p.send("quit\n");
}

#[test]
fn ctrl_c_stops_early_and_still_reports() {
    let Some(mut p) = running_fixture() else {
        return;
    };
    let started = Instant::now();
    let mut t = Tracer::start(&format!("leaks -p {} --time 60 --source malloc", p.pid));
    p.send("go\n");
    p.expect("done");
    common::unsafe_kill(t.pid(), 2);
    let (err, out) = t.finish_ok();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "did not stop early"
    );
    assert!(err.contains("(interrupted)"), "{err}");
    assert!(
        err.contains("outstanding 2 allocations, 5300 bytes"),
        "{err}"
    );
    assert!(
        out.lines()
            .any(|l| l.ends_with("aligned_block;posix_memalign 5000")),
        "{out}"
    );
}

/// A fixture thread just started (its `started TID` line): wait until the
/// tracer says it has it (the perf fallback picks threads up by polling,
/// and under load that took longer than the half second the fixture once
/// slept), then let the thread go on. The tests' windows are long, and
/// end with Ctrl-C once the thread is done.
fn started_and_traced(p: &mut LuaProc, t: &mut Tracer) {
    let tid = p.expect("started ");
    t.wait_for(&format!("thread {tid} started during the window"));
    p.send("release\n");
}

/// A thread started mid-window (the tracer picks it up while it waits) is
/// traced: its malloc shows with the thread's own stack.
#[test]
fn threads_created_during_the_window_are_traced() {
    let Some(mut p) = running_fixture() else {
        return;
    };
    let mut t = Tracer::start(&format!("-v leaks -p {} --time 30 --source malloc", p.pid));
    p.send("thread\n");
    started_and_traced(&mut p, &mut t);
    p.expect("thread done");
    common::unsafe_kill(t.pid(), 2);
    let (err, out) = t.finish_ok();
    assert!(err.contains("on 2 thread(s)"), "{err}");
    assert!(
        out.lines()
            .any(|l| l.contains("in_thread;malloc") && l.ends_with(" 7777")),
        "{out}\n{err}"
    );
}

/// A stack near the end of its mapping: the first copy of a thread's
/// stack (its top not learned yet) faults there, and must still reach the
/// thread's outer frames, not stop pages short of them.
#[test]
fn stack_copy_ending_at_its_mapping_still_reaches_the_outer_frames() {
    let Some(mut p) = running_fixture() else {
        return;
    };
    let mut t = Tracer::start(&format!(
        "-v leaks -p {} --time 30 --source malloc --stack-bytes 16K",
        p.pid
    ));
    p.send("edge\n");
    started_and_traced(&mut p, &mut t);
    p.expect("edge done");
    common::unsafe_kill(t.pid(), 2);
    let (err, out) = t.finish_ok();
    let stack = out
        .lines()
        .find(|l| l.contains("edge_alloc;malloc") && l.ends_with(" 4321"))
        .unwrap_or_else(|| panic!("no edge_alloc stack: {out}\n{err}"));
    // Above the thread's function: glibc's start_thread and clone3 (by
    // name or as libc offsets, with Debian's libc stripped).
    let outer: Vec<&str> = stack
        .split(';')
        .take_while(|f| *f != "edge_thread")
        .collect();
    assert!(
        outer.len() >= 2
            && outer
                .iter()
                .all(|f| f.contains("libc") || f.contains("clone") || f.contains("start_thread")),
        "{stack}\n{err}"
    );
    assert_eq!(summary_num(&err, "truncated stacks"), 0, "{err}");
}

/// Lines `first..=last` of testdata/lua/app.lua, from the first line
/// containing `from` to the first one after it containing `to`.
fn app_lines(from: &str, to: &str) -> std::ops::RangeInclusive<u32> {
    let src = std::fs::read_to_string(common::testdata("lua/app.lua")).expect("app.lua");
    let lines: Vec<&str> = src.lines().collect();
    let a = lines.iter().position(|l| l.contains(from)).expect(from);
    let b = a + lines[a..].iter().position(|l| l.contains(to)).expect(to);
    (a as u32 + 1)..=(b as u32 + 1)
}

#[test]
fn jit_compiled_leak_is_unwound_through_the_trace() {
    if !have_uprobes() {
        return;
    }
    let Some(ng) = Nginx::start("app.conf", 1) else {
        return;
    };
    let w = ng.worker().to_string();
    // `work`'s loop is JIT-compiled inside the window (a root trace forms
    // after some 56 iterations of one call: a hot loop, deterministic,
    // where calls of 2 iterations left it to the hot counters and the
    // JIT's random back-off, and sometimes never compiled it). The trace
    // is then found by re-reading the trace list; later calls enter it at
    // their loop's first back-edge.
    // A larger ring for the perf fallback (the BPF tracer's is 64 MB):
    // with a CPU hog beside it, 8 MB lost events before ljleak drained it.
    let mut t = Tracer::start(&format!(
        "leaks -p {w} --time 5 --source luajit --ring-pages 8192"
    ));
    const WARM: u64 = 3;
    for _ in 0..WARM {
        assert_eq!(ng.get("/leak?n=100").0, 200);
    }
    const N: u64 = 300;
    for _ in 0..N {
        assert_eq!(ng.get("/leak?n=4").0, 200);
    }
    let (err, out) = t.finish_ok();
    let f = parse_folded(&out);
    let total: u64 = f.values().sum();
    let leaked = (WARM * 100 + N * 4) * 4096;
    assert!(total >= leaked, "outstanding {total}: {err}");
    // (a) Stacks that end at trace code (no unwind info) are rare now.
    let truncated: u64 = f
        .iter()
        .filter(|(s, _)| s.starts_with("[jit code]"))
        .map(|(_, b)| *b)
        .sum();
    assert!(
        truncated * 10 < total,
        "{truncated} of {total} bytes under [jit code]: {f:#?}"
    );
    // (b) Most of the leak went through a trace of the leaking code, named
    // by the allocating line (`ffi.new`, through the trace's snapshots), and
    // on into nginx below it. The JIT may make more than one trace of it
    // (a root trace and side traces, or a retrace): each is its own stack.
    let leaky = app_lines("ffi.new(\"char[?]\", 4096)", "ffi.new(");
    let trace_frame = |fr: &str| {
        let Some(rest) = fr.strip_prefix('@') else {
            return false;
        };
        let Some((loc, no)) = rest.split_once(" (trace ") else {
            return false;
        };
        let line = loc
            .rsplit_once("/lua/app.lua:")
            .and_then(|(_, l)| l.parse::<u32>().ok());
        no.trim_end_matches(')').parse::<u32>().is_ok() && line.is_some_and(|l| leaky.contains(&l))
    };
    let mut traced = 0;
    for (stack, bytes) in &f {
        let frames: Vec<&str> = stack.split(';').collect();
        let Some(at) = frames.iter().position(|fr| trace_frame(fr)) else {
            continue;
        };
        assert!(
            frames[..at].contains(&"ngx_http_lua_run_thread"),
            "the trace frame's callers are not nginx's: {stack}"
        );
        assert!(
            !frames[at + 1..].iter().any(|f| f.starts_with("[lua pc")),
            "a helper called by the trace was taken for an interpreter frame: {stack}"
        );
        assert_eq!(frames.last(), Some(&"lj_alloc_f"), "{stack}");
        traced += bytes;
    }
    assert!(
        traced * 2 >= leaked,
        "{traced} bytes through an app.lua:{leaky:?} (trace N) frame: {f:#?}"
    );
}

/// `--sample-bytes`: only sampled allocations are tracked, each weighted by
/// the bytes it stands for; the leak's estimate lands near the truth, with
/// its Lua frame, and the freeing endpoint still leaves nothing.
#[test]
fn sampled_c_leak_estimate_is_close_to_the_truth() {
    let Some(ng) = leaks_nginx(&["/cleak_interp?size=1", "/cok?size=1"]) else {
        return;
    };
    let w = ng.worker().to_string();
    let folded = tmp("sampled.folded");
    // Mean 64 KiB between samples: a 12345-byte allocation is sampled with
    // p = 1 - exp(-12345/65536) = 0.17, so N requests give ~0.17 N samples
    // (about 70 here: a relative error of ~12% per standard deviation).
    let mut t = Tracer::start(&format!(
        "leaks -p {w} --time 8 --source malloc --sample-bytes 65536 -o {}",
        folded.to_str().unwrap()
    ));
    const N: u64 = 400;
    const SIZE: u64 = 12345;
    for _ in 0..N {
        assert_eq!(ng.get(&format!("/cleak_interp?size={SIZE}")).0, 200);
        assert_eq!(ng.get("/cok?size=23456").0, 200);
    }
    let (err, _) = t.finish_ok();
    let f = parse_folded(&std::fs::read_to_string(&folded).expect("folded file"));
    let line = lua_line("malloc(size) -- interpreted");
    let est = malloc_bytes_at(&f, &line);
    let truth = N * SIZE;
    assert!(
        est.abs_diff(truth) * 100 <= truth * 35,
        "estimate {est} vs true {truth} outstanding bytes at {line}:\n{f:#?}\n{err}"
    );
    // The freeing endpoint's malloc (a later line of leaks.lua) is absent.
    let cok_line = {
        let src = std::fs::read_to_string(common::testdata("lua/leaks.lua")).expect("leaks.lua");
        let n = src
            .lines()
            .position(|l| l.contains("function M.cok"))
            .expect("cok")
            + 2;
        format!("/lua/leaks.lua:{n}")
    };
    assert!(
        !f.keys()
            .any(|s| lua_frame(s).is_some_and(|f| f.ends_with(&cok_line))),
        "freed allocations are not outstanding: {f:#?}"
    );
    // Sampling is said, and it really sampled: far fewer tracked than made.
    assert!(err.contains("outstanding figures are estimates"), "{err}");
    let made = summary_num(&err, "allocations");
    let tracked = summary_num(&err, "bytes: ");
    assert!(
        tracked * 3 < made,
        "sampled {tracked} of {made} allocations:\n{err}"
    );
    assert_eq!(summary_num(&err, "lost events"), 0, "{err}");
}

/// BPF tracer: after a few whole copies a thread's stack copies stop at
/// its learned anchor (nginx's event loop), and the frames above come back
/// from the glued bytes: every leak stack still reaches nginx's `main`.
#[test]
fn anchored_stack_copies_still_reach_main() {
    if std::env::var("LJLEAK_TRACER").as_deref() == Ok("perf") {
        eprintln!("anchors are the BPF tracer's: nothing to check on the perf run");
        return;
    }
    let Some(ng) = leaks_nginx(&["/cleak_interp?size=1"]) else {
        return;
    };
    let w = ng.worker().to_string();
    let folded = tmp("anchor.folded");
    let mut t = Tracer::start(&format!(
        "leaks -p {w} --time 3 --source malloc --trim=false -v -o {}",
        folded.to_str().unwrap()
    ));
    const N: u64 = 40;
    for _ in 0..N {
        assert_eq!(ng.get("/cleak_interp?size=7777").0, 200);
        // Anchors reach the kernel at ljleak's next poll (20 ms).
        std::thread::sleep(Duration::from_millis(10));
    }
    let (err, _) = t.finish_ok();
    let f = parse_folded(&std::fs::read_to_string(&folded).expect("folded file"));
    let leak: Vec<(&String, &u64)> = f
        .iter()
        .filter(|(s, b)| s.ends_with(";malloc") && s.contains("ngx_http_lua") && *b % 7777 == 0)
        .collect();
    assert_eq!(
        leak.iter().map(|(_, b)| **b).sum::<u64>(),
        N * 7777,
        "{f:#?}\n{err}"
    );
    for (s, _) in &leak {
        assert!(
            s.split(';').any(|fr| fr == "main") && s.contains("ngx_process_events_and_timers"),
            "a leak stack lost its outer frames: {s}\n{err}"
        );
    }
    let anchored = summary_num(&err, "copies ended at their thread's anchor:");
    assert!(
        anchored >= N,
        "copies ended at an anchor: {anchored}\n{err}"
    );
}
