//! Live tests of the per-thread perf tracer on a many-threaded target
//! (issue 9 item 2): the event bound, and SIGKILL during teardown. Timing
//! figures come from scripts/bench-threads-teardown.sh, not from here.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ljleak, require, Nginx, Tracer};

fn have_uprobes() -> bool {
    require(
        "the uprobe PMU (/sys/bus/event_source/devices/uprobe)",
        Path::new("/sys/bus/event_source/devices/uprobe/type").exists(),
    )
}

fn threads_of(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

/// The worker of thread_pool.conf once its pool is up (the worker starts
/// its 4 pool threads during its init, which may still be running when
/// nginx answers): (pid, threads).
fn pool_worker(n: &Nginx) -> (i32, usize) {
    let w = n.worker();
    let deadline = Instant::now() + Duration::from_secs(20);
    while threads_of(w) < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    (w, threads_of(w))
}

#[test]
fn too_many_events_are_refused_before_any_probe() {
    if !have_uprobes() {
        return;
    }
    let Some(n) = Nginx::start("thread_pool.conf", 1) else {
        return;
    };
    let (w, nt) = pool_worker(&n);
    assert!(nt >= 5, "the thread pool's threads: {nt}");
    let t = Instant::now();
    let o = common::run(&[
        "leaks",
        "--tracer",
        "perf",
        "-p",
        &w.to_string(),
        "--time",
        "1",
        "--max-events",
        "40",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(22), "{err}");
    assert!(
        err.contains("--max-events 40") && err.contains(&format!("{nt} threads")),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // Refused up front: nothing was opened, so nothing to tear down.
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // Two probes (--source luajit) fit the same bound.
    let o = common::run(&[
        "leaks",
        "--tracer",
        "perf",
        "-p",
        &w.to_string(),
        "--time",
        "1",
        "--max-events",
        "40",
        "--source",
        "luajit",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(n.get("/hello").0, 200);
}

#[test]
fn sigkill_during_teardown_leaves_target_running_and_nothing_behind() {
    if !have_uprobes() {
        return;
    }
    let Some(n) = Nginx::start("thread_pool.conf", 1) else {
        return;
    };
    let (w, _) = pool_worker(&n);
    let mut c = Command::new(ljleak())
        .args([
            "leaks",
            "--tracer",
            "perf",
            "-p",
            &w.to_string(),
            "--time",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = c.stderr.take().unwrap();
    let mut lines = BufReader::new(err).lines();
    let started = loop {
        let l = lines.next().expect("ljleak stderr").unwrap();
        if l.starts_with("ljleak: tracing") {
            break Instant::now();
        }
    };
    // The window ends after 1 s; then every event is disabled and closed
    // (~80 ms each, ~100 events here): kill in the middle of that.
    std::thread::sleep(Duration::from_millis(1600).saturating_sub(started.elapsed()));
    let t = Instant::now();
    c.kill().unwrap();
    // The kernel finishes closing the fds as the process exits; the target
    // runs all along (never stopped) and serves.
    let mut states = Vec::new();
    while c.try_wait().unwrap().is_none() {
        states.push(common::proc_state(w));
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "ljleak not gone after 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        states.iter().all(|s| matches!(s, Some('S') | Some('R'))),
        "{states:?}"
    );
    for _ in 0..20 {
        assert_eq!(n.get("/hello").0, 200);
    }
    assert!(common::children(c.id() as i32).is_empty());
    // A new session attaches at once: nothing left claims the worker.
    let o = common::run(&[
        "leaks",
        "--tracer",
        "perf",
        "-p",
        &w.to_string(),
        "--time",
        "1",
        "--source",
        "luajit",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn lost_events_over_the_bound_fail_after_the_report() {
    if !have_uprobes() {
        return;
    }
    let Some(n) = Nginx::start("leaks.conf", 1) else {
        return;
    };
    let w = n.worker().to_string();
    // A one-page ring cannot hold an 8 KB stack sample: every allocation
    // record is lost.
    let mut c = Command::new(ljleak());
    c.args([
        "leaks",
        "--tracer",
        "perf",
        "-p",
        &w,
        "--time",
        "2",
        "--ring-pages",
        "1",
        "--max-lost",
        "0",
    ]);
    // Requests once the probes are attached (a fixed 1 s sleep could be
    // too short on a loaded machine).
    let (mut t, _) = Tracer::spawn(c);
    for _ in 0..20 {
        assert_eq!(n.get("/cleak?size=100").0, 200);
    }
    let (code, err, _) = t.finish();
    let err = err.join("\n");
    assert_eq!(code, Some(23), "{err}");
    assert!(
        err.contains("lost events") && err.contains("over --max-lost 0"),
        "{err}"
    );
}
