//! Live tests of `ljleak mem`, each against an independent oracle: glibc's
//! own mallinfo2() from inside a fragmented C process, LuaJIT's GC total and
//! the kernel's Rss, nginx's lua_shared_dict API, `ss`, and the lua module's
//! timer API.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ljleak-mem-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("tmp dir");
    d.join(name)
}

fn mem_json(pid: i32) -> serde_json::Value {
    run_json(&["mem", "-p", &pid.to_string(), "--format", "json"])
}

fn n(v: &serde_json::Value, path: &str) -> u64 {
    let mut x = v;
    for k in path.split('.') {
        x = &x[k];
    }
    x.as_u64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v:#}"))
}

/// The rows add up to the Rss exactly, and `unattributed` is the row's.
fn check_reconciles(v: &serde_json::Value) {
    let rows = v["rows"].as_object().expect("rows");
    let sum: u64 = rows.values().map(|x| x.as_u64().expect("row")).sum();
    assert_eq!(sum, n(v, "rss"), "rows must add up to rss: {:#}", v["rows"]);
    assert_eq!(n(v, "unattributed"), n(v, "rows.unattributed"));
    assert_eq!(v["kind"], "mem");
    assert!(v["schema"].as_u64().is_some() && v["exe_build_id"].is_string());
}

fn build_frag() -> Option<PathBuf> {
    if !require(
        "a C compiler (cc)",
        Command::new("cc").arg("--version").output().is_ok(),
    ) {
        return None;
    }
    let out = tmp("frag");
    let st = Command::new("cc")
        .args(["-O1", "-g", "-pthread", "-o"])
        .arg(&out)
        .arg(root().join("tests/fixtures/frag.c"))
        .status()
        .expect("run cc");
    assert!(st.success(), "cc failed");
    Some(out)
}

/// glibc's arenas as mallinfo2() counts them, from outside. mallinfo2's
/// definitions (int_mallinfo): arena = Σ system_mem, fordblks = top +
/// fastbins + bins, uordblks = arena − fordblks, fsmblks = fastbins, hblks /
/// hblkhd = mp_.n_mmaps / mmapped_mem. Chunks in a tcache are in use for
/// mallinfo2 and for ljleak alike: ljleak reports them apart (`tcache`,
/// part of in_use), and the fixture's frees fill every tcache bin of both
/// threads (7 chunks in each of the 63 bins it touches).
#[test]
fn glibc_arenas_agree_with_mallinfo2() {
    let Some(bin) = build_frag() else { return };
    let mut p = LuaProc::spawn_cmd(Command::new(&bin));
    let mi: std::collections::HashMap<String, u64> = p
        .expect("mallinfo ")
        .split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect();
    p.expect("ready ");
    let v = mem_json(p.pid);
    check_reconciles(&v);
    let g = &v["glibc"];
    assert_eq!(g["found"], true, "{g:#}");
    assert_eq!(n(g, "system"), mi["arena"], "arena");
    assert_eq!(n(g, "free"), mi["fordblks"], "fordblks");
    assert_eq!(n(g, "in_use"), mi["uordblks"], "uordblks");
    assert_eq!(n(g, "fastbins"), mi["fsmblks"], "fsmblks");
    assert_eq!(n(g, "mmapped_chunks"), mi["hblks"], "hblks");
    assert_eq!(n(g, "mmapped"), mi["hblkhd"], "hblkhd");
    assert_eq!(mi["hblks"], 3, "the fixture's three 300 KB blocks");
    let arenas = g["arenas"].as_array().expect("arenas");
    assert_eq!(arenas.len(), 2, "main and the second thread's arena");
    assert_eq!(arenas[0]["kind"], "main");
    assert_eq!(arenas[1]["kind"], "thread");
    let bins: u64 = arenas.iter().map(|a| n(a, "bins_chunks")).sum();
    assert_eq!(
        bins + 2,
        mi["ordblks"],
        "ordblks = bin chunks + one top per arena"
    );
    let fast: u64 = arenas.iter().map(|a| n(a, "fastbin_chunks")).sum();
    assert_eq!(fast, mi["smblks"], "smblks");
    for a in arenas {
        assert_eq!(n(a, "tcache_chunks"), 7 * 63, "full tcache: {a:#}");
        assert!(n(a, "tcache") < n(a, "in_use"));
    }
    // With libc6-dbg the invariant search is checked against the symbols.
    if g["located_by"] == "debug-symbols" {
        assert_eq!(g["invariants_match_symbols"], true, "{g:#}");
    }
    // Arena heaps are resident and attributed to glibc, not left over.
    assert!(n(&v, "rows.glibc_arenas") >= n(g, "system") / 2);
    assert!(
        n(&v, "unattributed") * 20 <= n(&v, "rss"),
        "{:#}",
        v["rows"]
    );
    assert_eq!(proc_state(p.pid).map(|c| c == 't' || c == 'T'), Some(false));
}

/// LuaJIT keeps freed memory in its arenas: after ~200 MB of tables and
/// strings are dropped and collected, the arena's free chunks explain the
/// gap between the Rss and the GC total.
#[test]
fn luajit_arena_free_explains_rss_gap() {
    let Some(mut p) = luajit_script("mem_frag.lua", &[]) else {
        return;
    };
    p.ready();
    let v = mem_json(p.pid);
    check_reconciles(&v);
    let l = &v["luajit"];
    assert_eq!(
        l["system_malloc"], false,
        "Debian's luajit2 uses lj_alloc: {l:#}"
    );
    let rss = n(&v, "rss");
    let gc = n(l, "gc_total");
    let free = n(l, "arena_free");
    assert!(
        rss > 150 << 20,
        "the script should hold its arenas: rss {rss}"
    );
    assert!(gc < rss / 4, "nine in ten objects were dropped: gc {gc}");
    // Rss = GC + arena free + everything that is not LuaJIT's heap, within 5%.
    let not_lj = rss - n(&v, "rows.luajit_arena");
    let explained = gc + free + not_lj;
    let diff = explained.abs_diff(rss);
    assert!(
        diff * 20 <= rss,
        "rss {rss} vs gc {gc} + arena free {free} + non-LuaJIT {not_lj} (off by {diff})"
    );
    assert_eq!(n(l, "arena_mapped"), n(l, "arena_used") + free);
    assert!(
        n(l, "arena_used") >= gc,
        "used chunks hold at least the GC objects"
    );
}

/// Bad input: documented exit codes, one-line errors.
#[test]
fn bad_input_exit_codes() {
    let out = run(&["mem", "-p", "999999999"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let out = run(&["mem", "-p", "0"]);
    assert_eq!(out.status.code(), Some(4));
    let out = run(&["mem"]);
    assert_eq!(out.status.code(), Some(2));
    let me = std::process::id().to_string();
    let out = run(&["mem", "-p", &me, "-o", "/nonexistent-dir/x.json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim().lines().count(),
        1
    );
}
