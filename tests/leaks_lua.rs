//! Live tests of the Lua call chains of `ljleak leaks` (BPF tracer): a
//! fixture allocates at known depths and records `debug.traceback()` taken
//! on the allocating line; ljleak's Lua frames of that allocation must be
//! the traceback's Lua frames, file and line, in order. On Debian's luajit2
//! (GC64), the non-GC64 builds of scripts/build-luajit-variants.sh, and
//! nginx (timer callbacks, cosocket handlers). The perf fallback (forced,
//! or because bpf(2) is refused) knows only the innermost Lua frame: its
//! tests check that one.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{LuaProc, Nginx, Tracer};

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

/// `ljleak leaks` on `pid` for `secs` (folded stacks to `folded`), with
/// `cmd` adjusting the command, returned once its probes are attached,
/// with the stderr lines before that.
fn spawn_tracer(
    pid: i32,
    secs: u32,
    folded: &Path,
    cmd: impl FnOnce(&mut Command),
) -> (Tracer, Vec<String>) {
    let mut c = Command::new(common::ljleak());
    c.args(["leaks", "-p", &pid.to_string(), "--time", &secs.to_string()])
        .arg("--folded")
        .arg(folded)
        .args(["-o", "/dev/null"]);
    cmd(&mut c);
    Tracer::spawn(c)
}

/// `ljleak leaks` on `pid` with the BPF tracer (a fallback fails the test).
fn start_tracer(pid: i32, secs: u32, folded: &Path) -> Tracer {
    let (t, before) = spawn_tracer(pid, secs, folded, |c| {
        c.env_remove("LJLEAK_TRACER");
    });
    for l in before {
        assert!(!l.contains("warning: eBPF"), "BPF tracer not used: {l}");
    }
    t
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
/// `x.lua:12: in function …`. A chunk name's `@` or `=` is dropped:
/// tracebacks print `=content_by_lua(nginx.conf:25)` as
/// `content_by_lua(nginx.conf:25)` (lj_debug_shortname).
fn file_line(frame: &str) -> Option<(String, u32)> {
    let frame = frame.trim();
    let frame = frame
        .strip_prefix('=')
        .or_else(|| frame.strip_prefix('@'))
        .unwrap_or(frame);
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

/// The `oracle SIZE\tTRACEBACK` lines a Lua fixture prints up to `done`:
/// each allocation's size and the traceback's frames.
fn read_oracle(p: &mut LuaProc) -> Vec<(u64, Vec<(String, u32)>)> {
    let mut oracle = Vec::new();
    loop {
        let l = p.expect("");
        if l == "done" {
            return oracle;
        }
        if let Some(rest) = l.strip_prefix("oracle ") {
            let (size, tb) = rest.split_once('\t').expect("oracle line");
            oracle.push((size.parse::<u64>().unwrap(), traceback_frames(tb)));
        }
    }
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
    let oracle = read_oracle(&mut p);
    assert_eq!(oracle.len(), 8, "{oracle:?}");
    let _ = t.finish_ok();
    p.close_stdin();
    let f = parse_folded(&std::fs::read_to_string(&folded).expect("folded"));
    assert_chains(&f, &oracle, &interp.display().to_string());
}

/// The one stack holding the block of `size` (ffi.new's block is the cdata
/// header plus the array, so up to 64 bytes more).
fn stack_of(f: &BTreeMap<String, u64>, size: u64) -> &str {
    let found: Vec<_> = f
        .iter()
        .filter(|(_, b)| **b >= size && **b < size + 64)
        .map(|(s, _)| s)
        .collect();
    assert_eq!(found.len(), 1, "case {size}: stacks {found:#?}\n{f:#?}");
    found[0]
}

/// For each (size, traceback frames): the Lua chain of the stack holding
/// that block is the traceback's Lua frames, in order.
fn assert_chains(f: &BTreeMap<String, u64>, oracle: &[(u64, Vec<(String, u32)>)], what: &str) {
    for (size, want) in oracle {
        let stack = stack_of(f, *size);
        let got = chain_frames(stack);
        assert!(
            got == *want,
            "case {size} under {what}: ljleak {got:?} vs traceback {want:?}\n{stack}"
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
    let _ = t.finish_ok();
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

/// A 200-thread target (python3 threads allocating 200 KB blocks in a
/// loop) is traced through one link per object file and released in under
/// 2 s, attach plus detach as ljleak logs them (one perf event per thread
/// and probe took minutes to close), with every thread still running.
#[test]
fn two_hundred_threads_are_attached_and_released_in_under_two_seconds() {
    if !have_bpf() {
        return;
    }
    if !common::require(
        "python3",
        Command::new("python3").arg("-V").output().is_ok(),
    ) {
        return;
    }
    const SCRIPT: &str = "import threading, time
def f():
    while True:
        b = bytearray(200000)
        time.sleep(0.02)
for _ in range(200):
    threading.Thread(target=f, daemon=True).start()
print('ready', flush=True)
time.sleep(600)
";
    let mut py = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    let out = py.stdout.take().expect("stdout");
    let py = common::Guard(py);
    let pid = py.0.id() as i32;
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).expect("ready");
    assert_eq!(line.trim(), "ready");
    let tasks = || std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
    assert!(tasks() > 200, "{} threads", tasks());
    let out = common::run(&[
        "leaks",
        "-p",
        &pid.to_string(),
        "--time",
        "1",
        "--source",
        "malloc",
        "-v",
        "-o",
        "/dev/null",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let attach = common::summary_num(&err, "links attached in ");
    let detach = common::summary_num(&err, "probes detached in ");
    assert!(
        attach + detach < 2000,
        "attach {attach} ms + detach {detach} ms\n{err}"
    );
    // The threads were traced: their blocks were allocated and freed.
    let allocs = common::summary_num(&err, "\n  allocations ");
    assert!(allocs >= 200, "{allocs} allocations seen\n{err}");
    // Every thread still runs (none left stopped).
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let tid: i32 = t
            .expect("task")
            .file_name()
            .to_string_lossy()
            .parse()
            .expect("tid");
        assert!(
            matches!(common::proc_state(tid), Some('S') | Some('R') | None),
            "thread {tid} state {:?}",
            common::proc_state(tid)
        );
    }
    drop(py);
}

/// `--sample-bytes 0` and other bad values are one-line usage errors
/// (exit 2) before anything touches the target, each saying what is wrong.
#[test]
fn bad_sample_bytes_values_are_one_line_usage_errors() {
    for (value, says) in [
        ("0", "at least 1"),
        ("0K", "at least 1"),
        // Rounds to 0 bytes.
        ("0.0001K", "at least 1"),
        ("-1", "not a size"),
        ("-4096", "not a size"),
        ("abc", "not a size"),
        ("", "not a size"),
        ("1e3", "not a size"),
        ("1.5", "not a whole number"),
        ("18446744073709551616", "too large"),
        ("99999999999999999999999", "too large"),
        ("20000000000T", "too large"),
    ] {
        for args in [
            vec!["leaks", "-p", "1", "--sample-bytes", value],
            vec!["leaks", "-p", "1", &format!("--sample-bytes={value}")],
        ] {
            let out = common::run(&args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
            assert!(
                err.contains("--sample-bytes") && err.contains(says),
                "{args:?}: `{says}` not in {err}"
            );
        }
    }
}

/// GET `path` on `ng` until its body is not empty (a timer runs after the
/// request that started it), within 10 s.
fn poll_body(ng: &Nginx, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = ng.get(path);
        assert_eq!(status, 200, "{path}: {body}");
        if !body.trim().is_empty() {
            return body.trim().to_string();
        }
        assert!(Instant::now() < deadline, "{path}: still empty");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Oracle cases and their tracebacks' Lua frames.
type Oracle = Vec<(u64, Vec<(String, u32)>)>;

/// The nginx cases of the oracle (testdata/lua/ngx_oracle.lua), traced on
/// the BPF tracer or the perf fallback: an `ngx.timer.at` callback two
/// calls above its allocation, and a request handler allocating after the
/// yield and resume of a cosocket read, in the frame that read and one
/// below. Returns the folded stacks and the oracle.
fn ngx_oracle(perf: bool) -> Option<(BTreeMap<String, u64>, Oracle)> {
    if !have_bpf() {
        return None;
    }
    let ng = Nginx::start("oracle.conf", 1)?;
    // Load the module's paths before the window.
    assert_eq!(ng.get("/hello").0, 200);
    assert_eq!(ng.get("/data").0, 200);
    let folded = tmp(&format!("ngx-oracle-{perf}.folded"));
    let mut t = if perf {
        spawn_tracer(ng.worker(), 4, &folded, |c| {
            c.env("LJLEAK_TRACER", "perf");
        })
        .0
    } else {
        start_tracer(ng.worker(), 4, &folded)
    };
    let (timer, cosock) = (200_003u64, 200_107u64);
    let (status, body) = ng.get(&format!("/timer?size={timer}"));
    assert_eq!((status, body.trim()), (200, "started"), "{body}");
    let (status, body) = ng.get(&format!("/cosock?size={cosock}"));
    // The reply read through the cosocket: headers and 1000 bytes.
    let read: usize = body.trim().parse().unwrap_or(0);
    assert!(status == 200 && read > 1000, "{status} {body}");
    let mut oracle = Vec::new();
    for size in [timer, cosock + 500, cosock] {
        let tb = poll_body(&ng, &format!("/oracle?size={size}"));
        oracle.push((size, traceback_frames(&tb)));
    }
    // The known depths: callback, helper and leaf; content_by_lua chunk,
    // handler, reader (and leaf).
    let depths: Vec<usize> = oracle.iter().map(|(_, w)| w.len()).collect();
    assert_eq!(depths, [3, 3, 4], "{oracle:#?}");
    let _ = t.finish_ok();
    let f = parse_folded(&std::fs::read_to_string(&folded).expect("folded"));
    Some((f, oracle))
}

#[test]
fn lua_chains_equal_the_traceback_in_nginx_timers_and_cosockets() {
    if let Some((f, oracle)) = ngx_oracle(false) {
        assert_chains(&f, &oracle, "nginx");
    }
}

/// The perf fallback knows only the innermost Lua frame (its warning says
/// so): that frame, after the `[lua]` marker, is the traceback's first.
#[test]
fn perf_fallback_gives_the_innermost_lua_frame_in_nginx_timers_and_cosockets() {
    if let Some((f, oracle)) = ngx_oracle(true) {
        assert_innermost(&f, &oracle, "nginx (perf)");
    }
}

/// For each (size, traceback frames): the stack holding that block has
/// the `[lua]` marker of the perf tracer, then the traceback's innermost
/// frame.
fn assert_innermost(f: &BTreeMap<String, u64>, oracle: &[(u64, Vec<(String, u32)>)], what: &str) {
    for (size, want) in oracle {
        let stack = stack_of(f, *size);
        let lua: Vec<&str> = stack.split(';').skip_while(|f| *f != "[lua]").collect();
        assert!(
            lua.len() >= 2,
            "case {size} under {what}: no [lua] frame: {stack}"
        );
        assert_eq!(
            file_line(lua[1]).as_ref(),
            want.first(),
            "case {size} under {what}: {stack}"
        );
    }
}

/// Run `cmd` with a seccomp filter that makes bpf(2) fail with EPERM, as
/// for a user without CAP_BPF (x86_64 numbers).
#[cfg(target_arch = "x86_64")]
fn deny_bpf(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // linux/audit.h, linux/filter.h, linux/seccomp.h, asm/unistd_64.h.
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const NR_BPF: u32 = 321;
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const OFF_NR: u32 = 0; // struct seccomp_data { int nr; __u32 arch; ... }
    const OFF_ARCH: u32 = 4;
    const RET_ALLOW: u32 = 0x7fff_0000;
    const RET_ERRNO: u32 = 0x0005_0000;
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let filter = [
        op(LD_W_ABS, 0, 0, OFF_ARCH),
        // Another ABI's numbers mean other calls: leave them alone.
        op(JEQ_K, 0, 3, AUDIT_ARCH_X86_64),
        op(LD_W_ABS, 0, 0, OFF_NR),
        op(JEQ_K, 0, 1, NR_BPF),
        op(RET_K, 0, 0, RET_ERRNO | libc::EPERM as u32),
        op(RET_K, 0, 0, RET_ALLOW),
    ];
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls prctl(2), which is async-signal-safe; `prog` points into
    // `filter`, which the closure owns (moved in) for the calls.
    unsafe {
        cmd.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// No permission for BPF (bpf(2) fails with EPERM): one warning line that
/// says so and what the perf fallback loses, then the perf tracer finds
/// the oracle fixture's allocations under their innermost Lua frames, exit 0.
#[cfg(target_arch = "x86_64")]
#[test]
fn no_permission_for_bpf_falls_back_to_perf_with_one_warning() {
    if !have_bpf() {
        return;
    }
    let Some(lj) = common::luajit() else {
        common::require("luajit2 (/usr/bin/luajit)", false);
        return;
    };
    let mut p = LuaProc::spawn(&lj, &common::testdata("lua/oracle.lua"), &[]);
    p.expect("ready");
    let folded = tmp("no-bpf.folded");
    let (mut t, before) = spawn_tracer(p.pid, 3, &folded, |c| {
        c.env_remove("LJLEAK_TRACER");
        deny_bpf(c);
    });
    p.send("\n");
    let oracle = read_oracle(&mut p);
    let (code, after, _) = t.finish();
    p.close_stdin();
    let err: Vec<&String> = before.iter().chain(&after).collect();
    assert_eq!(code, Some(0), "{err:#?}");
    let warnings: Vec<_> = err.iter().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{err:#?}");
    let w = warnings[0];
    for what in [
        "eBPF tracer unavailable",
        "no permission for BPF",
        "falling back to perf",
        "no Lua call chain",
    ] {
        assert!(w.contains(what), "`{what}` not in the warning: {w}");
    }
    // The perf tracer: every case's block, under its innermost Lua frame,
    // except two it cannot know: ffi.new called straight from the
    // interpreter shows the stale saved PC (the table constructor's line
    // before it), and the coroutine's frame is not spliced (its resume
    // from Lua is a nested VM activation called from lj_cf_*, so the
    // resuming line stands in for it).
    let f = parse_folded(&std::fs::read_to_string(&folded).expect("folded"));
    assert_eq!(oracle.len(), 8, "{oracle:?}");
    for (size, _) in &oracle {
        let stack = stack_of(&f, *size);
        assert!(stack.contains(";[lua];@"), "case {size}: {stack}");
    }
    let exact: Vec<_> = oracle
        .into_iter()
        .filter(|(size, _)| ![100_311, 100_733].contains(size))
        .collect();
    assert_innermost(&f, &exact, "luajit (no BPF)");
}
