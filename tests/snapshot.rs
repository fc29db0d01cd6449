//! Live tests of what a heap capture costs and how it is taken: copy only
//! what can hold the heap (issue 9 item 6), and the copy-on-write fork
//! snapshot (`--snapshot fork`).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{require, run_json, testdata, LuaProc};

/// Build the many-threads LuaJIT host (tests/fixtures/lua_threads_host.c).
fn threads_host(tag: &str) -> Option<PathBuf> {
    let ok = Command::new("cc").arg("--version").output().is_ok()
        && std::path::Path::new("/usr/include/luajit-2.1/lua.h").exists();
    if !require("cc and libluajit2-5.1-dev", ok) {
        return None;
    }
    let out = std::env::temp_dir().join(format!("ljleak-lth-{tag}-{}", std::process::id()));
    let st = Command::new("cc")
        .args(["-O1", "-pthread", "-I/usr/include/luajit-2.1", "-o"])
        .arg(&out)
        .arg(common::root().join("tests/fixtures/lua_threads_host.c"))
        .arg("-lluajit-5.1")
        .status()
        .expect("run cc");
    assert!(st.success(), "cc failed");
    Some(out)
}

/// `threads` idle pthreads (each once 64 KiB deep) plus a Lua heap of
/// about `n` live objects, at its first checkpoint.
fn host_with_threads(bin: &PathBuf, threads: usize, n: usize) -> LuaProc {
    let mut cmd = Command::new(bin);
    cmd.arg(threads.to_string())
        .arg(testdata("lua/census_big.lua"))
        .arg(testdata(""))
        .arg(n.to_string());
    let mut p = LuaProc::spawn_cmd(cmd);
    assert_eq!(p.ready(), "big");
    p
}

/// Issue 9 item 6: 200 idle threads reserve 1.6 GB of stacks; the copy
/// must follow the heap, not the virtual size.
#[test]
fn many_threads_copy_follows_the_heap() {
    let Some(bin) = threads_host("threads") else {
        return;
    };
    let mut copied = Vec::new();
    for threads in [1usize, 200] {
        let mut p = host_with_threads(&bin, threads, 100_000);
        let tasks = std::fs::read_dir(format!("/proc/{}/task", p.pid))
            .unwrap()
            .count();
        assert_eq!(tasks, threads + 1);
        let c = run_json(&["objs", "-p", &p.pid.to_string(), "--format", "json"]);
        let total = p.resume_total();
        assert_eq!(c["gc_total"].as_u64().unwrap(), total);
        assert_eq!(c["walker_total"], c["gc_total"], "{c:#}");
        copied.push(c["image_bytes"].as_u64().unwrap());
    }
    let _ = std::fs::remove_file(&bin);
    let (one, many) = (copied[0], copied[1]);
    // Each thread's stack in use is a few pages: 200 of them add well under
    // the heap itself (the virtual size grows by 1.6 GB).
    assert!(
        many < 2 * one,
        "200 threads made the copy {many} bytes vs {one} with one thread"
    );
    assert!(
        many - one.min(many) < 200 * 32 * 1024,
        "stacks beyond their use were copied: {many} vs {one}"
    );
}

/// The census fields that must agree between two captures of one moment.
fn same_census(a: &serde_json::Value, b: &serde_json::Value, what: &str) {
    for k in [
        "gc_total",
        "walker_total",
        "objects",
        "types",
        "dead",
        "cdata_types",
        "table_classes",
        "overheads",
    ] {
        assert_eq!(a[k], b[k], "{what}: {k} differs");
    }
}

/// Snapshot helpers of ljleak still running for `target`.
fn helpers(target: i32) -> Vec<i32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        if args.get(1) == Some(&&b"snapshot-helper"[..])
            && args.get(2) == Some(&target.to_string().as_bytes())
            && common::proc_state(p) != Some('Z')
        {
            v.push(p);
        }
    }
    v
}

/// Processes whose parent is `pid`, with their state letter.
fn children_states(pid: i32) -> Vec<(i32, char)> {
    common::children(pid)
        .into_iter()
        .filter_map(|c| Some((c, common::proc_state(c)?)))
        .collect()
}

fn objs(pid: i32, how: &str) -> serde_json::Value {
    run_json(&[
        "objs",
        "-p",
        &pid.to_string(),
        "--format",
        "json",
        "--snapshot",
        how,
    ])
}

/// A fork snapshot of a quiescent target gives the census a copy gives, to
/// the byte, and leaves no child, zombie or stopped process behind.
#[test]
fn fork_census_equals_copy_and_leaves_nothing() {
    let Some(mut p) = common::luajit_script("census_populations.lua", &[]) else {
        return;
    };
    for round in 0..3 {
        let name = p.ready();
        let copy = objs(p.pid, "copy");
        let fork = objs(p.pid, "fork");
        assert_eq!(copy["snapshot"], "copy");
        assert_eq!(fork["snapshot"], "fork", "{fork:#}");
        same_census(&copy, &fork, &format!("round {round} ({name})"));
        assert_eq!(fork["walker_total"], fork["gc_total"]);
        // Nothing left: no child (not even a zombie), target not stopped.
        assert_eq!(children_states(p.pid), vec![], "round {round}");
        assert_ne!(common::proc_state(p.pid), Some('t'));
        // And the target runs on: it measures the same total.
        assert_eq!(p.resume_total(), fork["gc_total"].as_u64().unwrap());
    }
}

/// xorshift: deterministic, no extra crate.
fn rng(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

/// SIGKILL of ljleak at random moments of a fork capture of a worker under
/// load: the worker keeps serving, no child, zombie or stopped process
/// stays behind, and the error log gets nothing above info.
#[test]
fn sigkill_during_fork_capture_under_load() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;
    let Some(n) = common::Nginx::start("app.conf", 1) else {
        return;
    };
    let w = n.worker();
    // Some heap, so the capture lasts long enough to be hit everywhere.
    assert_eq!(n.get("/tables?n=20000").0, 200);
    let log_path = n.prefix.join("logs/error.log");
    let log_start = std::fs::read_to_string(&log_path).unwrap_or_default().len();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let port = n.port;
    let load = {
        let (stop, ok, bad) = (stop.clone(), ok.clone(), bad.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match common::http_get(port, "/hello") {
                    (200, _) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => bad.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    // Kill times spread over one whole capture, however fast this machine
    // runs it.
    let t = std::time::Instant::now();
    let _ = objs(w, "fork");
    let span_us = (t.elapsed().as_micros() as u64).clamp(20_000, 2_000_000);
    let mut rnd = rng(0x2545_f491_4f6c_dd1d);
    let mut hit = 0;
    let err = std::env::temp_dir().join(format!("ljleak-forkkill-{}.err", std::process::id()));
    // At least 30 kills, and more (up to 90) until 3 of them have hit a
    // live snapshot.
    let mut round = 0;
    while round < 30 || (hit < 3 && round < 90) {
        round += 1;
        let mut child = Command::new(common::ljleak())
            .args(["-v", "objs", "-p", &w.to_string(), "--snapshot", "fork"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(rnd() % span_us));
        if !children_states(w).is_empty() {
            hit += 1;
        }
        common::unsafe_kill(child.id() as i32, 9);
        child.wait().unwrap();
        // The worker runs on; the helper kills the snapshot and reaps it.
        let t = std::time::Instant::now();
        loop {
            let left = children_states(w);
            let stopped = common::proc_state(w) == Some('t');
            let helping = helpers(w);
            if left.is_empty() && !stopped && helping.is_empty() {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "round {round}: left behind {left:?}, worker stopped: {stopped}, helpers {helping:?}\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(n.workers(), vec![w], "round {round}: the worker changed");
        assert_eq!(n.get("/hello").0, 200, "round {round}");
    }
    std::fs::remove_file(&err).ok();
    // The kills must have hit snapshots alive, not only the start-up.
    assert!(hit >= 3, "only {hit} of {round} kills hit a live snapshot");
    let c = objs(w, "fork");
    assert_eq!(c["snapshot"], "fork");
    assert_eq!(children_states(w), vec![]);
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert!(ok.load(Ordering::Relaxed) > 30);
    assert_eq!(bad.load(Ordering::Relaxed), 0, "requests failed under load");
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let new = &log[log_start.min(log.len())..];
    for level in [
        "[notice]", "[warn]", "[error]", "[crit]", "[alert]", "[emerg]",
    ] {
        assert!(!new.contains(level), "error log got {level}:\n{new}");
    }
}

/// A cgroup of `ctrl` (v1 hierarchy) holding `pid`, removed on drop.
struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    fn new(ctrl: &str, pid: i32) -> Option<Cgroup> {
        let base = PathBuf::from(format!("/sys/fs/cgroup/{ctrl}"));
        if !require(&format!("cgroup v1 {ctrl} controller"), base.is_dir()) {
            return None;
        }
        let dir = base.join(format!("ljleak-test-{}-{pid}", std::process::id()));
        std::fs::create_dir(&dir).expect("mkdir cgroup");
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).expect("join cgroup");
        Some(Cgroup { dir })
    }
    fn set(&self, file: &str, v: &str) {
        std::fs::write(self.dir.join(file), v).unwrap_or_else(|e| panic!("{file}={v}: {e}"));
    }
    fn get(&self, file: &str) -> u64 {
        std::fs::read_to_string(self.dir.join(file))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Members must be gone first: the tests kill their target before.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// No room for the worst case of copy-on-write: `--snapshot fork` refuses
/// with a message saying what the worst case is; a pids limit makes the
/// clone fail and the capture falls back to a copy with one line.
#[test]
fn fork_refusals_memory_and_pids() {
    let Some(mut p) = common::luajit_script("census_big.lua", &["200000"]) else {
        return;
    };
    assert_eq!(p.ready(), "big");
    let pid = p.pid.to_string();
    {
        let Some(cg) = Cgroup::new("memory", p.pid) else {
            return;
        };
        // The target's heap (~20 MB) is its worst case; leave 4 MB of room.
        let usage = cg.get("memory.usage_in_bytes");
        cg.set("memory.limit_in_bytes", &(usage + (4 << 20)).to_string());
        let out = common::run(&["objs", "-p", &pid, "--snapshot", "fork"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("private anonymous memory"), "{err}");
        assert!(err.contains("--snapshot copy"), "{err}");
        // The copy lives in ljleak's memory, not the target's cgroup.
        let c = objs(p.pid, "copy");
        assert_eq!(c["walker_total"], c["gc_total"]);
        p.kill();
    }
    let Some(mut p) = common::luajit_script("census_big.lua", &["200000"]) else {
        return;
    };
    assert_eq!(p.ready(), "big");
    let Some(cg) = Cgroup::new("pids", p.pid) else {
        return;
    };
    cg.set("pids.max", "1");
    let out = common::run(&[
        "objs",
        "-p",
        &p.pid.to_string(),
        "--snapshot",
        "fork",
        "--format",
        "json",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("copying instead"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c["snapshot"], "copy");
    assert_eq!(c["walker_total"], c["gc_total"]);
    assert_eq!(p.resume_total(), c["gc_total"].as_u64().unwrap());
    p.kill();
}

/// A seccomp filter might kill the target on clone: never fork it.
#[test]
fn fork_refused_under_seccomp() {
    let Some(bin) = threads_host("seccomp") else {
        return;
    };
    let mut cmd = Command::new(&bin);
    cmd.env("LTH_SECCOMP", "1")
        .arg("1")
        .arg(testdata("lua/census_big.lua"))
        .arg(testdata(""))
        .arg("10000");
    let mut p = LuaProc::spawn_cmd(cmd);
    assert_eq!(p.ready(), "big");
    let out = common::run(&[
        "objs",
        "-p",
        &p.pid.to_string(),
        "--snapshot",
        "fork",
        "--format",
        "json",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("seccomp"), "{err}");
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c["snapshot"], "copy");
    assert_eq!(p.resume_total(), c["gc_total"].as_u64().unwrap());
    let _ = std::fs::remove_file(&bin);
}

/// Field `n` (1-based, as proc(5) numbers them) of /proc/PID/stat.
fn stat_field(pid: i32, n: usize) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(')')?.1;
    rest.split_whitespace().nth(n - 3).map(str::to_string)
}

/// The snapshot never runs and sends no signal: it is a ptrace-stopped
/// child with exit signal 0. If even the helper is killed, the kernel
/// kills the snapshot (PTRACE_O_EXITKILL) and the next fork capture reaps
/// the zombie, so nothing stays.
#[test]
fn snapshot_is_held_silent_and_dies_with_its_helper() {
    let Some(mut p) = common::luajit_script("census_big.lua", &["600000"]) else {
        return;
    };
    assert_eq!(p.ready(), "big");
    let mut lj = Command::new(common::ljleak())
        .args(["objs", "-p", &p.pid.to_string(), "--snapshot", "fork"])
        .args(["--snapshot-cache", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the snapshot (a child of the target) while ljleak walks it.
    let t = std::time::Instant::now();
    // (Once the target runs again: the helper is then done with its
    // registers, and only the snapshot is at stake.)
    let child = loop {
        if let Some(&(c, 't')) = children_states(p.pid).first() {
            if common::proc_state(p.pid) != Some('t') {
                break c;
            }
        }
        assert!(t.elapsed().as_secs() < 20, "no snapshot appeared");
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    assert_eq!(
        common::proc_state(child),
        Some('t'),
        "held in a ptrace stop"
    );
    assert_eq!(stat_field(child, 38).as_deref(), Some("0"), "exit signal");
    let helper = helpers(p.pid);
    assert_eq!(helper.len(), 1, "one helper: {helper:?}");
    common::unsafe_kill(helper[0], 9);
    let t = std::time::Instant::now();
    while common::proc_state(child) != Some('Z') {
        assert!(t.elapsed().as_secs() < 5, "snapshot survived its helper");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    let _ = lj.wait();
    // The next fork capture reaps it.
    let c = objs(p.pid, "fork");
    assert_eq!(c["walker_total"], c["gc_total"]);
    assert_eq!(children_states(p.pid), vec![]);
    assert_eq!(p.resume_total(), c["gc_total"].as_u64().unwrap());
}
