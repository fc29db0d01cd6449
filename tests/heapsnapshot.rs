//! `refs -o FILE.heapsnapshot`: the object graph in V8's heap snapshot
//! format, loaded by a real consumer (Meta's memlab, installed by
//! scripts/install-memlab.sh), whose retained sizes and retainer paths must
//! agree with `ljleak refs`.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{run_json, LuaProc};
use serde_json::Value;

/// Wait until the script sits in read(2) at its checkpoint: `ready` is
/// printed (a write) before the script blocks, and the Lua stack changes
/// in between.
fn wait_in_read(pid: i32) {
    for _ in 0..2000 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        if s.split_whitespace().next() == Some("0") {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    panic!("process {pid} never blocked in read");
}

fn memlab_dir() -> PathBuf {
    PathBuf::from(
        std::env::var("LJLEAK_MEMLAB_DIR").unwrap_or_else(|_| "/var/cache/ljleak/memlab".into()),
    )
}

fn have_memlab() -> bool {
    common::require(
        "memlab under /var/cache/ljleak/memlab (scripts/install-memlab.sh) and node",
        memlab_dir()
            .join("node_modules/@memlab/heap-analysis")
            .exists()
            && Command::new("node").arg("--version").output().is_ok(),
    )
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ljleak-hs-{}-{name}", std::process::id()))
}

/// memlab's view of a snapshot, plus the retainer paths of `ids`.
fn memlab(file: &Path, ids: &[u64]) -> Value {
    let out = Command::new("node")
        .env("NODE_PATH", memlab_dir().join("node_modules"))
        .arg(common::root().join("scripts/memlab-check.js"))
        .arg(file)
        .args(ids.iter().map(|i| i.to_string()))
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "memlab could not load {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("memlab-check JSON")
}

/// Snapshot node id of each object (ids follow the graph's address order,
/// which `--dump-graph` lists).
fn ids_by_addr(graph: &Path) -> HashMap<u64, u64> {
    let g: Value = serde_json::from_slice(&std::fs::read(graph).unwrap()).unwrap();
    g["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, n)| (n[0].as_u64().unwrap(), 2 * i as u64 + 5))
        .collect()
}

fn hex(v: &Value) -> u64 {
    u64::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

/// Write the snapshot of `pid` (or a core), and check it against memlab:
/// node count, the root's retained size, the retained size of every table,
/// and the top suspect's retainer path. Returns (refs report, memlab view).
fn check(target: &[&str], name: &str) -> (Value, Value) {
    let hs = tmp(&format!("{name}.heapsnapshot"));
    let graph = tmp(&format!("{name}.graph.json"));
    let mut args = vec!["refs"];
    args.extend(target);
    args.extend([
        "--format",
        "json",
        "-o",
        hs.to_str().unwrap(),
        "--dump-graph",
        graph.to_str().unwrap(),
        "--type",
        "table",
        "--size",
        "0",
        "--limit",
        "1000000",
    ]);
    let r = run_json(&args);
    let ids = ids_by_addr(&graph);
    let top = &r["suspects"][0];
    let top_id = ids[&hex(&top["addr"])];
    let m = memlab(&hs, &[top_id]);
    assert_eq!(
        m["nodes"].as_u64(),
        Some(r["objects"].as_u64().unwrap() + 2),
        "every object plus the root and (GC roots)"
    );
    assert_eq!(
        m["root_retained"], r["reachable_bytes"],
        "memlab's root retains what refs finds reachable"
    );
    let mut compared = 0;
    for t in r["matches"].as_array().unwrap() {
        let id = ids[&hex(&t["addr"])].to_string();
        assert_eq!(m["names"][&id], "table");
        if t["reachable"] == true {
            assert_eq!(
                m["retained"][&id], t["retained"],
                "retained size of {} ({:?})",
                t["addr"], t["path"]
            );
            compared += 1;
        }
    }
    assert!(compared > 20, "compared {compared} tables");
    // memlab shows the upvalue object on the path (its edge `value`);
    // refs leaves that nameless hop out.
    let path: Vec<String> = strs(&m["paths"][&top_id.to_string()])
        .into_iter()
        .filter(|e| e != "value")
        .collect();
    assert_eq!(path, strs(&top["path"]), "retainer path of the top suspect");
    assert_eq!(m["retained"][&top_id.to_string()], top["retained"]);
    std::fs::remove_file(&graph).ok();
    (r, m)
}

#[test]
fn memlab_agrees_with_refs_on_the_known_graph_live_and_from_a_core() {
    let Some(lj) = common::luajit() else {
        common::require("/usr/bin/luajit", false);
        return;
    };
    if !have_memlab() {
        return;
    }
    let mut p = LuaProc::spawn(
        &lj,
        &common::testdata("lua/refs_known.lua"),
        &["2000", "100"],
    );
    p.ready();
    wait_in_read(p.pid);
    let pid = p.pid.to_string();
    let (r, _) = check(&["-p", &pid], "live");
    assert_eq!(
        strs(&r["suspects"][0]["path"]),
        ["registry", "._LOADED", ".mymod", ".get", "upvalue cache"]
    );
    let core = tmp("known.core");
    let o = common::run(&["dump", "-p", &pid, "-o", core.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    p.resume_total();
    p.kill();
    check(&["--core", core.to_str().unwrap()], "core");
    // The same heap gives the same snapshot, byte for byte.
    let live = std::fs::read_to_string(tmp("live.heapsnapshot")).unwrap();
    let from_core = std::fs::read_to_string(tmp("core.heapsnapshot")).unwrap();
    if let Some((a, b)) = live.lines().zip(from_core.lines()).find(|(a, b)| a != b) {
        panic!("snapshot from the core differs from the live one: {a} vs {b}");
    }
    assert_eq!(live.len(), from_core.len());
    for f in ["known.core", "live.heapsnapshot", "core.heapsnapshot"] {
        std::fs::remove_file(tmp(f)).ok();
    }
}

/// Weak tables: their weak side appears as `weak` edges, which memlab (as
/// DevTools and the Lua GC) leaves out of retained sizes.
#[test]
fn weak_tables_give_weak_edges_that_retain_nothing() {
    let Some(lj) = common::luajit() else {
        common::require("/usr/bin/luajit", false);
        return;
    };
    if !have_memlab()
        || !common::require(
            "lua-resty-lrucache",
            Path::new("/usr/share/lua/5.1/resty/lrucache.lua").exists(),
        )
    {
        return;
    }
    const CALLS: u64 = 200;
    let mut p = LuaProc::spawn(
        &lj,
        &common::testdata("lua/kong_mini.lua"),
        &[&CALLS.to_string()],
    );
    p.ready();
    wait_in_read(p.pid);
    let (r, m) = check(&["-p", &p.pid.to_string()], "weak");
    // ua_caches is keyed weakly by each of the CALLS conf tables.
    assert!(
        m["weak_edges"].as_u64().unwrap() >= CALLS,
        "weak edges: {}",
        m["weak_edges"]
    );
    // Each cache lives as long as its key, so the list holding the confs
    // (the plugin iterator's `configs`) retains them, not ua_caches.
    assert_eq!(
        strs(&r["suspects"][0]["path"]).last().map(String::as_str),
        Some(".configs")
    );
    p.resume_total();
    std::fs::remove_file(tmp("weak.heapsnapshot")).ok();
}

/// The same on a non-GC64 build (32-bit GC references, other layouts).
#[test]
fn memlab_agrees_with_refs_on_non_gc64() {
    let Some(lj) = common::variant("luajit2-nogc64", false) else {
        common::require(
            "luajit2-nogc64 variant (scripts/build-luajit-variants.sh)",
            false,
        );
        return;
    };
    if !have_memlab() {
        return;
    }
    let mut p = LuaProc::spawn(
        &lj,
        &common::testdata("lua/refs_known.lua"),
        &["1000", "50"],
    );
    p.ready();
    wait_in_read(p.pid);
    let (r, _) = check(&["-p", &p.pid.to_string()], "nogc64");
    assert_eq!(r["luajit"]["gc64"], false);
    assert_eq!(
        strs(&r["suspects"][0]["path"]),
        ["registry", "._LOADED", ".mymod", ".get", "upvalue cache"]
    );
    p.resume_total();
    std::fs::remove_file(tmp("nogc64.heapsnapshot")).ok();
}
