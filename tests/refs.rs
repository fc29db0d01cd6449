//! `ljleak refs` against live luajit processes with known object graphs.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::{run, run_json, LuaProc};
use serde_json::Value;

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ljleak-refs-{}-{name}", std::process::id()))
}

/// `addr NAME 0x…` lines printed before `ready`.
fn addrs(p: &mut LuaProc, names: &[&str]) -> HashMap<String, String> {
    let mut m = HashMap::new();
    for _ in names {
        let l = p.expect("addr ");
        let (k, v) = l.split_once(' ').expect("addr NAME 0x…");
        m.insert(k.to_string(), v.to_string());
    }
    for n in names {
        assert!(m.contains_key(*n), "script printed no address for {n}");
    }
    m
}

/// `ljleak refs -p PID -o TMP.json ARGS...`: the JSON report (written to a
/// file, so ARGS may add `-o x.svg` for the same capture).
fn refs_json(pid: &str, args: &[&str]) -> Value {
    let json = tmp(&format!("report-{pid}-{}.json", args.len()));
    let mut v = vec!["refs", "-p", pid, "-o", json.to_str().unwrap()];
    v.extend_from_slice(args);
    let out = run(&v);
    assert!(
        out.status.success(),
        "ljleak {v:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&json).expect("refs wrote its JSON report");
    std::fs::remove_file(&json).ok();
    serde_json::from_str(&text).expect("refs JSON")
}

/// Debian's luajit2, or a skip (a failure in CI).
fn luajit2() -> Option<PathBuf> {
    let lj = common::luajit();
    common::require("/usr/bin/luajit (luajit2)", lj.is_some());
    lj
}

fn path(o: &Value) -> Vec<String> {
    o["path"]
        .as_array()
        .expect("path")
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn find<'a>(list: &'a Value, addr: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|o| o["addr"] == addr)
        .unwrap_or_else(|| panic!("{addr} not in {list}"))
}

/// Bytes of the `N` cdata the known script made: the census line of their
/// C type (the only cdata type with exactly N objects).
fn cdata_bytes(census: &Value, n: u64) -> u64 {
    let t: Vec<&Value> = census["cdata_types"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["count"] == n)
        .collect();
    assert_eq!(
        t.len(),
        1,
        "one cdata type with {n} objects: {}",
        census["cdata_types"]
    );
    t[0]["sum"].as_u64().unwrap()
}

fn known_graph(interp: &Path, gc64: bool) {
    const N: u64 = 2000;
    const SIZE: u64 = 100;
    let mut p = LuaProc::spawn(
        interp,
        &common::testdata("lua/refs_known.lua"),
        &[&N.to_string(), &SIZE.to_string()],
    );
    let cache = addrs(&mut p, &["cache"])["cache"].clone();
    p.ready();
    let pid = p.pid.to_string();
    let census = common::census(p.pid);
    let cdata = cdata_bytes(&census, N);
    assert_eq!(
        cdata,
        N * ((if gc64 { 16 } else { 8 }) + SIZE),
        "fixed-size cdata: header + payload"
    );
    let folded = tmp(&format!("known-{gc64}.folded"));
    let svg = tmp(&format!("known-{gc64}.svg"));
    let r = refs_json(
        &pid,
        &[
            "--top",
            "3",
            "--min-frame",
            "1000",
            "--folded",
            folded.to_str().unwrap(),
            "-o",
            svg.to_str().unwrap(),
        ],
    );
    assert_eq!(r["kind"], "refs");
    assert_eq!(r["pid"].as_i64(), Some(p.pid as i64));
    // After two full collections nothing is garbage: every object the walk
    // found must be reachable through the edges we model.
    assert_eq!(
        r["reachable_objects"], r["objects"],
        "objects not reached: missing edges?"
    );
    assert_eq!(r["gc_total"], census["gc_total"]);
    let top = &r["suspects"][0];
    assert_eq!(
        top["addr"],
        cache.as_str(),
        "the cache is the top suspect: {}",
        r["suspects"]
    );
    let own = top["size"].as_u64().unwrap();
    if gc64 {
        // 1..N in the array part: asize is the next power of two plus slot 0.
        assert_eq!(own, 64 + 8 * (N.next_power_of_two() + 1));
    }
    assert_eq!(top["retained"].as_u64().unwrap(), own + cdata);
    assert_eq!(top["retained_objects"].as_u64(), Some(N + 1));
    assert_eq!(
        path(top),
        ["registry", "._LOADED", ".mymod", ".get", "upvalue cache"]
    );

    // Flame graph: the cache's frame carries its whole retained size (its
    // cdata are below --min-frame), and all widths add up to the heap.
    let text = std::fs::read_to_string(&folded).unwrap();
    let line = format!("registry._LOADED;.mymod;.get;upvalue cache {}", own + cdata);
    assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    let sum: u64 = text
        .lines()
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
        .sum();
    assert_eq!(sum, r["reachable_bytes"].as_u64().unwrap());
    let svg_text = std::fs::read_to_string(&svg).unwrap();
    assert!(svg_text.starts_with("<?xml") && svg_text.contains("upvalue cache"));
    std::fs::remove_file(&folded).ok();
    std::fs::remove_file(&svg).ok();

    // Text output reads the path the Lua way.
    let out = run(&["refs", "-p", &pid, "--top", "1"]);
    assert!(out.status.success());
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(
        t.contains("held by: registry._LOADED.mymod.get → upvalue cache"),
        "{t}"
    );

    // lgcpath mode: every cdata of at least the payload size, no 16 cap.
    let r = refs_json(
        &pid,
        &[
            "--size",
            &SIZE.to_string(),
            "--type",
            "cdata",
            "--limit",
            "5000",
        ],
    );
    let m = r["matches"].as_array().unwrap();
    assert_eq!(m.len() as u64, N);
    assert_eq!(r["matches_omitted"], 0);
    for o in m {
        assert_eq!(o["type"], "cdata");
        let pth = path(o);
        assert_eq!(
            pth[..5],
            ["registry", "._LOADED", ".mymod", ".get", "upvalue cache"]
        );
        assert!(pth[5].starts_with('[') && pth.len() == 6, "{pth:?}");
    }
    let r = refs_json(&pid, &["--size", "1", "--type", "cdata", "--limit", "7"]);
    assert_eq!(r["matches"].as_array().unwrap().len(), 7);
    assert_eq!(r["matches_omitted"].as_u64(), Some(N - 7));
    assert_eq!(p.resume_total(), census["gc_total"].as_u64().unwrap());
}

#[test]
fn known_graph_cache_is_the_top_suspect() {
    let Some(lj) = luajit2() else { return };
    known_graph(&lj, true);
}

#[test]
fn known_graph_on_non_gc64_build() {
    let Some(lj) = common::variant("luajit2-nogc64", true) else {
        common::require(
            "luajit2-nogc64 variant (scripts/build-luajit-variants.sh)",
            false,
        );
        return;
    };
    known_graph(&lj, false);
}

#[test]
fn kong_pattern_credits_the_caches_to_the_list_holding_their_keys() {
    let Some(lj) = luajit2() else { return };
    if !common::require(
        "lua-resty-lrucache",
        Path::new("/usr/share/lua/5.1/resty/lrucache.lua").exists(),
    ) {
        return;
    }
    const CALLS: u64 = 200;
    let mut p = LuaProc::spawn(
        &lj,
        &common::testdata("lua/kong_mini.lua"),
        &[&CALLS.to_string()],
    );
    let conf = addrs(&mut p, &["conf"])["conf"].clone();
    p.ready();
    let r = refs_json(&p.pid.to_string(), &["--top", "5", "--addr", &conf]);
    // ua_caches is weak-keyed: each cache lives exactly as long as its conf
    // key, and the plugin iterator's list holds every conf. The retained
    // bytes belong to that list, not to the handler's weak table.
    let top = &r["suspects"][0];
    assert_eq!(
        path(top),
        [
            "registry",
            "._LOADED",
            "[\"kong.runloop.plugins_iterator\"]",
            ".configs"
        ],
        "{top}"
    );
    // Each lrucache holds 10 cdata of 16 + 64 bytes, plus its own tables.
    assert!(top["retained"].as_u64().unwrap() > CALLS * 10 * 80, "{top}");
    assert!(
        top["retained_objects"].as_u64().unwrap() > CALLS * 11,
        "{top}"
    );
    for s in r["suspects"].as_array().unwrap() {
        if path(s).last().map(String::as_str) == Some("upvalue ua_caches") {
            assert!(
                s["retained"].as_u64().unwrap() < CALLS * 80,
                "the weak-keyed table retains the caches: {s}"
            );
        }
    }
    // A conf retains its own cache (the key keeps its entry's value).
    let c = &r["matches"][0];
    assert_eq!(c["addr"], conf.as_str());
    assert_eq!(
        path(c),
        [
            "registry",
            "._LOADED",
            "[\"kong.runloop.plugins_iterator\"]",
            ".configs",
            "[1]"
        ]
    );
    assert!(c["retained"].as_u64().unwrap() > 10 * 80, "{c}");
    for s in r["suspects"].as_array().unwrap() {
        assert!(
            !path(s).iter().any(|e| e.starts_with("(key)")),
            "a weak key retains: {s}"
        );
    }
    p.resume_total();
}

/// The strong graph dumped by `--dump-graph`.
struct Dump {
    addr: Vec<u64>,
    size: Vec<u64>,
    adj: Vec<Vec<usize>>,
    roots: Vec<usize>,
}

impl Dump {
    fn load(p: &Path) -> Dump {
        let v: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        let nodes = v["nodes"].as_array().unwrap();
        let mut adj = vec![Vec::new(); nodes.len()];
        for e in v["edges"].as_array().unwrap() {
            adj[e[0].as_u64().unwrap() as usize].push(e[1].as_u64().unwrap() as usize);
        }
        Dump {
            addr: nodes.iter().map(|n| n[0].as_u64().unwrap()).collect(),
            size: nodes.iter().map(|n| n[2].as_u64().unwrap()).collect(),
            adj,
            roots: v["roots"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_u64().unwrap() as usize)
                .collect(),
        }
    }

    /// Bytes reachable from the roots when object `skip` is removed.
    fn reachable_without(&self, skip: usize) -> u64 {
        let mut seen = vec![false; self.addr.len()];
        let mut st: Vec<usize> = Vec::new();
        let mut total = 0;
        for &r in &self.roots {
            if r != skip && !seen[r] {
                seen[r] = true;
                st.push(r);
            }
        }
        while let Some(v) = st.pop() {
            total += self.size[v];
            for &w in &self.adj[v] {
                if w != skip && !seen[w] {
                    seen[w] = true;
                    st.push(w);
                }
            }
        }
        total
    }
}

#[test]
fn retained_sizes_match_brute_force_on_small_graphs() {
    let Some(lj) = luajit2() else { return };
    let names = [
        "weakv", "lonely", "shared", "weakk", "key1", "val1", "deadval", "loopval", "weakkv",
        "cycle_a", "cycle_b", "selfref", "thread",
    ];
    let mut p = LuaProc::spawn(&lj, &common::testdata("lua/refs_small.lua"), &[]);
    let a = addrs(&mut p, &names);
    p.ready();
    let dump = tmp("small.graph.json");
    let r = refs_json(
        &p.pid.to_string(),
        &[
            "--size",
            "0",
            "--limit",
            "1000000",
            "--dump-graph",
            dump.to_str().unwrap(),
        ],
    );
    let g = Dump::load(&dump);
    std::fs::remove_file(&dump).ok();
    let all = g.reachable_without(usize::MAX);
    assert_eq!(all, r["reachable_bytes"].as_u64().unwrap());
    let m = &r["matches"];
    assert_eq!(
        m.as_array().unwrap().len(),
        g.addr.len(),
        "every object listed"
    );
    // Brute force, for every object: what becomes unreachable without it.
    for (i, &ad) in g.addr.iter().enumerate() {
        let o = find(m, &format!("{ad:#x}"));
        let want = if o["reachable"] == true {
            all - g.reachable_without(i)
        } else {
            0
        };
        assert_eq!(
            o["retained"].as_u64().unwrap(),
            want,
            "retained size of {o}"
        );
    }
    let get = |n: &str| find(m, &a[n]).clone();
    let size = |n: &str| get(n)["size"].as_u64().unwrap();
    // Held only by a weak value: unreachable, and the weak table does not
    // count it.
    assert_eq!(get("lonely")["reachable"], false);
    assert!(!get("weakv")["path"].as_array().unwrap().is_empty());
    assert_eq!(path(&get("shared")), ["_G", ".SHARED"]);
    // Weak keys: the keys are held by KEYS, and each value lives as long
    // as its key (LuaJIT clears the entry once the key dies), so the key
    // retains it, not the weak table.
    assert_eq!(path(&get("key1")), ["_G", ".KEYS", "[1]"]);
    assert_eq!(
        path(&get("val1")),
        ["_G", ".KEYS", "[1]", "(as weak key) value"]
    );
    assert!(
        get("key1")["retained"].as_u64().unwrap()
            >= size("key1") + get("val1")["retained"].as_u64().unwrap(),
        "{}",
        get("key1")
    );
    // Itself and its metatable (with `__mode`), at most a few objects.
    assert!(
        get("weakk")["retained_objects"].as_u64().unwrap() <= 4,
        "{}",
        get("weakk")
    );
    // A key held by nothing else: the next cycle clears the entry.
    assert_eq!(get("deadval")["reachable"], false, "{}", get("deadval"));
    // A value referring to its own key: LuaJIT (no ephemerons) keeps both
    // for good, through the table.
    assert_eq!(path(&get("loopval"))[..2], ["_G", ".WEAKLOOP"]);
    // Both weak: only its metatable (and its `__mode` value) is its own.
    assert!(get("weakkv")["retained_objects"].as_u64().unwrap() <= 3);
    // A two-table cycle is retained whole by the global's holder.
    assert_eq!(
        get("cycle_a")["retained"].as_u64().unwrap(),
        size("cycle_a") + size("cycle_b")
    );
    assert_eq!(path(&get("cycle_b")), ["_G", ".CYCLE", ".next"]);
    // Self reference: retained once, with its payload.
    assert!(get("selfref")["retained"].as_u64().unwrap() > size("selfref"));
    // A thread whose own stack refers to it.
    assert_eq!(path(&get("thread")), ["_G", ".CO"]);
    assert!(get("thread")["retained"].as_u64().unwrap() > size("thread"));
    p.resume_total();
}

#[test]
fn bad_input_gives_documented_exit_codes() {
    let out = run(&["refs", "-p", "999999999"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let me = std::process::id().to_string();
    let out = run(&["refs", "-p", &me, "--type", "bogus"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown --type"));
    // A process without LuaJIT.
    let out = run(&["refs", "-p", &me]);
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn nginx_worker_leak_cache_is_the_top_suspect() {
    let Some(ng) = common::Nginx::start("app.conf", 1) else {
        return;
    };
    const REQS: u64 = 50;
    for _ in 0..REQS {
        assert_eq!(ng.get("/leak?n=4").0, 200);
    }
    let w = ng.worker().to_string();
    let r = refs_json(&w, &["--top", "3"]);
    let top = &r["suspects"][0];
    let p = path(top);
    assert_eq!(p[..3], ["registry", "._LOADED", ".app"], "{top}");
    assert_eq!(p.last().map(String::as_str), Some("upvalue cache"), "{top}");
    // REQS entries, each a table of 4 cdata of 4096 bytes, keyed by a
    // fresh table.
    assert!(top["retained"].as_u64().unwrap() > REQS * 4 * 4096, "{top}");
    assert!(
        top["retained_objects"].as_u64().unwrap() > REQS * 6,
        "{top}"
    );
    assert!(
        r["warnings"].as_array().unwrap().is_empty(),
        "{}",
        r["warnings"]
    );
    // Which holder grew between two refs snapshots is one `ljleak diff`.
    for _ in 0..REQS {
        assert_eq!(ng.get("/leak?n=4").0, 200);
    }
    let r2 = refs_json(&w, &["--top", "3"]);
    let (a, b) = (tmp("a.json"), tmp("b.json"));
    std::fs::write(&a, r.to_string()).unwrap();
    std::fs::write(&b, r2.to_string()).unwrap();
    let d = run_json(&[
        "diff",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--format",
        "json",
    ]);
    let grew = r2["suspects"][0]["retained"].as_i64().unwrap() - top["retained"].as_i64().unwrap();
    assert!(
        grew > (REQS * 4 * 4096) as i64,
        "the cache kept growing: {grew}"
    );
    let stacks = d["folded"]["stacks"].as_array().expect("stack list");
    let first = &stacks[0];
    let stack = first["stack"].as_str().unwrap();
    assert!(stack.starts_with("registry;._LOADED;.app;"), "{first}");
    assert!(stack.contains("upvalue cache"), "{first}");
    assert_eq!(first["delta"].as_i64().unwrap(), grew, "{first}");
    // And a gate on it trips.
    let out = std::process::Command::new(common::ljleak())
        .args([
            "diff",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--fail-if",
            "total>+100KB",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_file(a).ok();
    std::fs::remove_file(b).ok();
    // The worker keeps serving.
    assert_eq!(ng.get("/hello").0, 200);
}

#[test]
fn known_graph_on_upstream_builds() {
    for (name, gc64) in [("upstream-gc64", true), ("upstream-nogc64", false)] {
        let Some(lj) = common::variant(name, true) else {
            common::require(
                &format!("{name} variant (scripts/build-luajit-variants.sh)"),
                false,
            );
            continue;
        };
        known_graph(&lj, gc64);
    }
}

/// A stack slot is named by the local variable it holds (the prototype's
/// varinfo), with the line it was declared on, not `stack[N]`.
#[test]
fn stack_slot_is_named_by_its_local() {
    let Some(lj) = luajit2() else { return };
    let mut p = LuaProc::spawn(&lj, &common::testdata("lua/refs_local.lua"), &["3000"]);
    let sessions = addrs(&mut p, &["sessions"])["sessions"].clone();
    p.ready();
    let pid = p.pid.to_string();
    let r = refs_json(&pid, &["--top", "1"]);
    let top = &r["suspects"][0];
    assert_eq!(top["addr"], sessions.as_str(), "{}", r["suspects"]);
    // The chunk name is shortened the way debug.traceback does it
    // (lj_debug_shortname keeps a path that fits).
    let pth = path(top);
    assert_eq!(pth.len(), 2, "{pth:?}");
    assert_eq!(pth[0], "main thread");
    assert!(
        pth[1].starts_with("local sessions (") && pth[1].ends_with("/refs_local.lua:7)"),
        "{pth:?}"
    );
    let out = run(&["refs", "-p", &pid, "--top", "1"]);
    assert!(out.status.success());
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(t.contains("main thread → local sessions ("), "{t}");
    p.kill();
}
