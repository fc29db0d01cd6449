//! Live tests of what a heap capture costs and how it is taken: copy only
//! what can hold the heap (issue 9 item 6), and the copy-on-write fork
//! snapshot (`--snapshot fork`).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{require, run_json, testdata, LuaProc};

/// Build the many-threads LuaJIT host (tests/fixtures/lua_threads_host.c).
fn threads_host() -> Option<PathBuf> {
    let ok = Command::new("cc").arg("--version").output().is_ok()
        && std::path::Path::new("/usr/include/luajit-2.1/lua.h").exists();
    if !require("cc and libluajit2-5.1-dev", ok) {
        return None;
    }
    let out = std::env::temp_dir().join(format!("ljleak-lth-{}", std::process::id()));
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
    let Some(bin) = threads_host() else { return };
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
