//! Live tests of `ljleak gc` / `ljleak objs` (issue: heap census): real
//! luajit2, non-GC64 and upstream builds, and nginx workers. Every census is
//! checked against the VM's own figure (exact) and the walker against
//! gc.total (exact); population phases against their exact per-type deltas.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use serde_json::Value;

/// Object sizes of a build, from LuaJIT's allocation formulas.
struct Sizes {
    tab: i64,
    str_hdr: i64,
    cdata: i64,
    funcl: i64,
    gcref: i64,
    upval: i64,
}

fn sizes(gc64: bool) -> Sizes {
    if gc64 {
        Sizes {
            tab: 64,
            str_hdr: 24,
            cdata: 16,
            funcl: 40,
            gcref: 8,
            upval: 48,
        }
    } else {
        Sizes {
            tab: 32,
            str_hdr: 20,
            cdata: 8,
            funcl: 20,
            gcref: 4,
            upval: 24,
        }
    }
}

/// Run the populations script under `interp` and check every phase.
fn populations(interp: &Path, want_layout: &str, want_source: &str, want_method: &str) {
    let mut p = spawn_script(interp, "census_populations.lua", &[]);
    let mut phases: Vec<(String, Value)> = Vec::new();
    loop {
        let line = p.expect("");
        if line == "done" {
            break;
        }
        let Some(name) = line.strip_prefix("ready ") else {
            continue;
        };
        let c = census_at_checkpoint(&mut p);
        assert_eq!(c["consistency"], "quiescent", "{name}");
        assert!(
            c["warnings"].as_array().unwrap().is_empty(),
            "{name}: {:?}",
            c["warnings"]
        );
        assert_eq!(c["luajit"]["layout"], want_layout, "{name}");
        assert_eq!(c["luajit"]["layout_source"], want_source, "{name}");
        assert_eq!(c["luajit"]["method"], want_method, "{name}");
        phases.push((name.to_string(), c));
    }
    let gc64 = phases[0].1["luajit"]["gc64"].as_bool().unwrap();
    let s = sizes(gc64);
    let names: Vec<&str> = phases.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "base",
            "empty_tables",
            "sized_tables",
            "array_tables",
            "strings",
            "fixed_cdata",
            "vla_cdata",
            "closures",
            "coroutines",
            "buffers",
            "traces"
        ]
    );
    // Deltas per phase: (type, count, Some(bytes) when exactly known).
    type Delta<'a> = (&'a str, i64, Option<i64>);
    let vla_bytes: i64 = (1..=20).map(|i| 1000 + i + 8 + s.cdata).sum();
    let expect: BTreeMap<&str, Vec<Delta>> = BTreeMap::from([
        ("empty_tables", vec![("table", 1000, Some(1000 * s.tab))]),
        (
            "sized_tables",
            vec![("table", 100, Some(100 * (s.tab + 8 * 8 + 24 * 4)))],
        ),
        (
            "array_tables",
            vec![("table", 50, Some(50 * (s.tab + 8 * 101)))],
        ),
        (
            "strings",
            vec![("string", 500, Some(500 * (s.str_hdr + 44)))],
        ),
        (
            "fixed_cdata",
            vec![("cdata", 100, Some(100 * (s.cdata + 16)))],
        ),
        ("vla_cdata", vec![("cdata", 20, Some(vla_bytes))]),
        (
            "closures",
            vec![
                ("function", 100, Some(100 * (s.funcl + 2 * s.gcref))),
                ("upvalue", 200, Some(200 * s.upval)),
            ],
        ),
        (
            "coroutines",
            vec![
                ("thread", 10, None),
                ("function", 10, Some(10 * (s.funcl + s.gcref))),
                ("upvalue", 10, Some(10 * s.upval)),
            ],
        ),
        ("buffers", vec![("userdata", 10, None)]),
    ]);
    for w in phases.windows(2) {
        let (name, after) = (&w[1].0, &w[1].1);
        let before = &w[0].1;
        let Some(rows) = expect.get(name.as_str()) else {
            continue;
        };
        for &(t, count, bytes) in rows {
            let dc = ty(after, t, "count") - ty(before, t, "count");
            assert_eq!(dc, count, "{name}: {t} count delta");
            if let Some(b) = bytes {
                let db = ty(after, t, "sum") - ty(before, t, "sum");
                assert_eq!(db, b, "{name}: {t} bytes delta");
            }
        }
        // Types the phase did not touch must not move (traces aside).
        for t in [
            "table", "string", "cdata", "function", "upvalue", "thread", "userdata", "proto",
        ] {
            if rows.iter().any(|r| r.0 == t) {
                continue;
            }
            assert_eq!(
                ty(after, t, "count"),
                ty(before, t, "count"),
                "{name}: {t} count changed although the phase made none"
            );
        }
    }
    // string.buffer payloads: each buffer owns at least the 1000 bytes put.
    let (b, a) = (&phases[8].1, &phases[9].1);
    assert!(ty(a, "userdata", "sum") - ty(b, "userdata", "sum") >= 10 * 1000);
    assert!(
        ty(&phases[10].1, "trace", "count") > ty(&phases[9].1, "trace", "count"),
        "hot loop made traces"
    );
    // cdata by C type names the VLA and the fixed array.
    let cd: Vec<&str> = phases[10].1["cdata_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(cd.contains(&"char[?]"), "{cd:?}");
    assert!(cd.contains(&"int[4]"), "{cd:?}");
}

#[test]
fn populations_debian_luajit2() {
    let Some(lj) = luajit() else {
        require("/usr/bin/luajit (luajit2)", false);
        return;
    };
    // Stripped Debian build: no symbols, so the VM is found by scanning and
    // the layout by validating the tables.
    populations(&lj, "luajit2-gc64", "table", "scan");
}

fn variant_case(name: &str, layout: &str) {
    let (Some(dbg), Some(stripped)) = (variant(name, false), variant(name, true)) else {
        require(
            &format!("LuaJIT variant {name} (scripts/build-luajit-variants.sh)"),
            false,
        );
        return;
    };
    // With DWARF and symbols: layout from DWARF (equal to the table), VM via globalL.
    populations(&dbg, layout, "dwarf", "globall");
    // Stripped: tables and scan.
    populations(&stripped, layout, "table", "scan");
}

#[test]
fn populations_luajit2_nogc64() {
    variant_case("luajit2-nogc64", "luajit2-nogc64");
}

#[test]
fn populations_upstream_gc64() {
    variant_case("upstream-gc64", "upstream-gc64");
}

#[test]
fn populations_upstream_nogc64() {
    variant_case("upstream-nogc64", "upstream-nogc64");
}

#[test]
fn finalize_state_with_pending_finalizers() {
    let Some(mut p) = luajit_script("census_finalize.lua", &[]) else {
        return;
    };
    assert_eq!(p.ready(), "finalizing");
    let c = census_at_checkpoint(&mut p);
    assert_eq!(c["gc_state"], "finalize");
    // 49 of the 50 finalizable objects still wait on mmudata (one is running).
    assert!(ty(&c, "userdata", "count") >= 24, "{c:#}");
    assert!(ty(&c, "cdata", "count") >= 25, "{c:#}");
    assert_eq!(p.expect(""), "done");
}

#[test]
fn every_gc_state_is_exact() {
    let Some(mut p) = luajit_script("census_churn.lua", &["40"]) else {
        return;
    };
    let mut states = std::collections::BTreeSet::new();
    let mut dead_seen = false;
    for _ in 0..40 {
        let name = p.ready();
        let c = census(p.pid);
        let total = p.resume_total();
        assert_eq!(c["gc_total"].as_u64().unwrap(), total, "{name}");
        assert_eq!(c["walker_total"], c["gc_total"], "{name}: {c:#}");
        let st = c["gc_state"].as_str().unwrap().to_string();
        let dead = c["dead"]["count"].as_u64().unwrap();
        if st != "sweep" && st != "sweep-string" {
            assert_eq!(
                dead, 0,
                "{name}: dead objects reported outside a sweep ({st})"
            );
        } else if dead > 0 {
            dead_seen = true;
            assert!(c["dead"]["sum"].as_u64().unwrap() < total);
        }
        states.insert(st);
    }
    assert!(
        states.len() >= 3,
        "checkpoints should land in several GC states: {states:?}"
    );
    assert!(states.contains("propagate"), "{states:?}");
    assert!(
        states.contains("sweep") || states.contains("sweep-string"),
        "{states:?}"
    );
    assert!(dead_seen, "a sweep phase should show dead, unswept objects");
}

#[test]
fn gc_command_matches_vm_count() {
    let Some(mut p) = luajit_script("census_populations.lua", &[]) else {
        return;
    };
    assert_eq!(p.ready(), "base");
    let pid = p.pid.to_string();
    let j = run_json(&["gc", "-x", &pid, "--format", "json"]);
    let out = run(&["gc", "-p", &pid]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let total = p.resume_total();
    assert_eq!(j["gc_total"].as_u64().unwrap(), total);
    assert_eq!(j["kind"], "gc");
    assert!(
        text.starts_with(&format!("Start tracing {pid} (/usr/bin/luajit)\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("Total GC count: {total} bytes")),
        "{text}"
    );
}

#[test]
fn objs_text_is_lj_gc_objs_shaped() {
    let Some(mut p) = luajit_script("census_populations.lua", &[]) else {
        return;
    };
    p.ready();
    let out = run(&["objs", "-p", &p.pid.to_string()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let total = p.resume_total();
    assert!(
        text.contains(&format!("GC total size: {total} bytes")),
        "{text}"
    );
    assert!(
        text.contains(&format!("My GC walker detected for total {total} bytes.")),
        "{text}"
    );
    assert!(text.contains("GC state: pause"), "{text}");
    // One line per type, sorted by count, in stap's shape.
    let counts: Vec<u64> = text
        .lines()
        .filter(|l| l.contains(" objects: max="))
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert!(counts.len() >= 6, "{text}");
    assert!(
        counts.windows(2).all(|w| w[0] >= w[1]),
        "sorted by count: {counts:?}"
    );
    assert!(
        text.contains("microseconds elapsed in the probe handler."),
        "{text}"
    );
}

#[test]
fn nginx_worker_census() {
    let Some(n) = Nginx::start("app.conf", 1) else {
        return;
    };
    let w = n.worker();
    // Full collections before each census, so garbage swept in between
    // cannot blur the delta.
    assert_eq!(n.get("/collect").0, 200);
    let c1 = census(w);
    assert_eq!(c1["walker_total"], c1["gc_total"], "{c1:#}");
    assert_eq!(c1["luajit"]["method"], "nginx");
    assert_eq!(c1["luajit"]["layout"], "luajit2-gc64");
    assert_eq!(c1["consistency"], "quiescent");
    assert!(
        c1["stopped_in"].as_str().unwrap().contains("epoll"),
        "{}",
        c1["stopped_in"]
    );
    let (st, body) = n.get("/tables?n=5000");
    assert_eq!((st, body.trim()), (200, "5000"));
    assert_eq!(n.get("/collect").0, 200);
    let c2 = census(w);
    assert_eq!(c2["walker_total"], c2["gc_total"]);
    let dt = ty(&c2, "table", "count") - ty(&c1, "table", "count");
    // The 5000 kept tables plus whatever one request left as garbage.
    assert!((5000..5000 + 50).contains(&dt), "table delta {dt}");
    for _ in 0..20 {
        assert_eq!(n.get("/leak?n=4").0, 200);
    }
    let c3 = census(w);
    assert_eq!(c3["walker_total"], c3["gc_total"]);
    let vla = c3["cdata_types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "char[?]")
        .expect("char[?] cdata");
    assert!(vla["sum"].as_u64().unwrap() >= 20 * 4 * 4096, "{vla}");
    // The worker kept serving throughout.
    assert_eq!(n.get("/hello"), (200, "hello\n".to_string()));
}

#[test]
fn sigkill_while_paused_leaves_worker_running() {
    let Some(n) = Nginx::start("app.conf", 1) else {
        return;
    };
    let w = n.worker();
    // SIGKILL is the hard case (no handler runs); SIGTERM and SIGINT end the
    // process by their default action and must leave the worker running too.
    for (round, sig) in [9, 9, 9, 9, 15, 15, 2, 2].into_iter().enumerate() {
        let err =
            std::env::temp_dir().join(format!("ljleak-sigkill-{}-{round}.err", std::process::id()));
        let mut child = std::process::Command::new(ljleak())
            .args([
                "-v",
                "objs",
                "-p",
                &w.to_string(),
                "--debug-hold-pause-ms",
                "10000",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        // Wait until the worker is held in a ptrace stop.
        let t = std::time::Instant::now();
        while proc_state(w) != Some('t') {
            if let Some(st) = child.try_wait().unwrap() {
                panic!(
                    "round {round}: ljleak ended ({st}) before pausing: {}",
                    std::fs::read_to_string(&err).unwrap_or_default()
                );
            }
            assert!(
                t.elapsed().as_secs() < 30,
                "round {round}: worker never paused"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        std::fs::remove_file(&err).ok();
        unsafe_kill(child.id() as i32, sig);
        child.wait().unwrap();
        let t = std::time::Instant::now();
        while proc_state(w) == Some('t') {
            assert!(
                t.elapsed().as_secs() < 5,
                "round {round}: worker left stopped"
            );
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let status = std::fs::read_to_string(format!("/proc/{w}/status")).unwrap();
        assert!(
            status.contains("TracerPid:\t0"),
            "round {round}: still traced"
        );
        assert_eq!(
            n.get("/hello"),
            (200, "hello\n".to_string()),
            "round {round}"
        );
    }
    let log = std::fs::read_to_string(n.prefix.join("logs/error.log")).unwrap_or_default();
    for bad in ["[alert]", "[emerg]", "[crit]"] {
        assert!(!log.contains(bad), "error log has {bad}:\n{log}");
    }
}

fn one_line_error(out: &std::process::Output, code: i32, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err}"
    );
    assert!(err.starts_with("ljleak: "), "{err}");
    assert!(err.contains(needle), "{err} should mention {needle}");
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_input_gives_one_line_errors_and_exit_codes() {
    // No such process.
    one_line_error(&run(&["objs", "-p", "999999999"]), 4, "no such process");
    one_line_error(&run(&["gc", "-p", "999999999"]), 4, "no such process");
    // A process without LuaJIT.
    let mut sleep = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let out = run(&["objs", "-p", &sleep.id().to_string()]);
    sleep.kill().ok();
    sleep.wait().ok();
    one_line_error(&out, 6, "no LuaJIT VM found");
    // Usage errors are clap's code 2.
    assert_eq!(run(&["objs", "-p", "abc"]).status.code(), Some(2));
    let Some(mut p) = luajit_script("census_populations.lua", &[]) else {
        return;
    };
    p.ready();
    let pid = p.pid.to_string();
    // Garbage --lua-state.
    one_line_error(
        &run(&["objs", "-p", &pid, "--lua-state", "0xdeadbeef"]),
        6,
        "--lua-state",
    );
    let usage = run(&["objs", "-p", &pid, "--lua-state", "zz"]);
    assert_eq!(usage.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&usage.stderr).contains("is not a hex address"));
    // A layout that does not fit.
    one_line_error(
        &run(&["objs", "-p", &pid, "--layout", "upstream-nogc64"]),
        7,
        "upstream-nogc64",
    );
    // The target dies while held paused.
    let child = std::process::Command::new(ljleak())
        .args(["objs", "-p", &pid, "--debug-hold-pause-ms", "1500"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while proc_state(p.pid) != Some('t') {
        assert!(t.elapsed().as_secs() < 10);
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    unsafe_kill(p.pid, 9);
    let out = child.wait_with_output().unwrap();
    one_line_error(&out, 8, "exited");
}

/// Mutate a real heap copy thousands of times and walk it each time: the
/// walk must end, without panicking, whatever the damage.
#[test]
fn walker_survives_corrupted_heaps() {
    use ljleak::luajit::walk::{walk, Limits};
    use ljleak::luajit::{Layout, Vm};
    use ljleak::target::HeapImage;

    let Some(mut p) = luajit_script("census_populations.lua", &[]) else {
        return;
    };
    for _ in 0..9 {
        p.ready();
        p.resume_total();
    }
    // After the buffers phase: tables, strings, cdata, closures, suspended
    // coroutines with open upvalues, string.buffers.
    assert_eq!(p.ready(), "buffers");
    let img_path = std::env::temp_dir().join(format!("ljleak-fuzz-{}.img", std::process::id()));
    let c = run_json(&[
        "objs",
        "-p",
        &p.pid.to_string(),
        "--format",
        "json",
        "--save-image",
        img_path.to_str().unwrap(),
    ]);
    drop(p);
    let mut img = HeapImage::load(&img_path).unwrap();
    std::fs::remove_file(&img_path).ok();
    let lay = Layout::builtins()
        .into_iter()
        .find(|l| l.name == c["luajit"]["layout"])
        .unwrap();
    let hex =
        |v: &Value| u64::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap();
    let g = hex(&c["luajit"]["global_state"]);
    let main = g - lay.f.gg_g.off;
    let lim = Limits {
        max_objects: img.total_bytes() / 16 + 16,
    };
    // Baseline: the saved copy walks to the same total as the live census.
    let mut objs = Vec::new();
    let base = {
        let vm = Vm::new(&img, &lay, g, main);
        walk(&vm, lim, |o| objs.push(o.addr))
    };
    assert_eq!(base.total(), c["walker_total"].as_u64().unwrap());
    assert!(base.warnings.is_empty(), "{:?}", base.warnings);
    // xorshift: deterministic, no extra crate.
    let mut seed = 0x9e3779b97f4a7c15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut damaged = 0;
    for i in 0..3000 {
        let victim = objs[(rnd() % objs.len() as u64) as usize];
        let (addr, bytes): (u64, Vec<u8>) = match i % 4 {
            // Flip a byte in the header or body.
            0 => (victim + rnd() % 64, vec![(rnd() & 0xff) as u8]),
            // Point nextgc at itself (a cycle) or at another object.
            1 => {
                let target = if rnd() % 2 == 0 {
                    victim
                } else {
                    objs[(rnd() % objs.len() as u64) as usize]
                };
                (victim, target.to_le_bytes().to_vec())
            }
            // Garbage into a random field (thread stacksize and top lie
            // past 64 bytes): a pointer, or a huge count.
            2 => {
                let v = if rnd() % 2 == 0 { rnd() } else { 0xffff_fff0 };
                (victim + 8 * (rnd() % 16), v.to_le_bytes().to_vec())
            }
            // Break the string table or global state.
            _ => (g + 8 * (rnd() % 40), rnd().to_le_bytes().to_vec()),
        };
        let Some(old) = img.patch(addr, &bytes) else {
            continue;
        };
        let rep = {
            let vm = Vm::new(&img, &lay, g, main);
            // The analyses built on the walk must survive the damage too:
            // the object graph of refs and the thread backtraces.
            if i % 5 == 0 {
                let graph = ljleak::analysis::graph::Graph::build(&vm, lim);
                std::hint::black_box(&graph);
                let th = ljleak::luajit::threads::threads(&vm, lim, 64);
                std::hint::black_box(&th);
            }
            walk(&vm, lim, |_| {})
        };
        if rep.total() != base.total() || !rep.warnings.is_empty() {
            damaged += 1;
        }
        assert!(rep.objects <= 4 * lim.max_objects, "walk bounded");
        img.patch(addr, &old).unwrap();
    }
    assert!(damaged > 100, "mutations should be noticed ({damaged})");
}

#[test]
fn busy_target_gets_best_effort_or_nonblocking_walks() {
    let Some(mut p) = luajit_script("busy.lua", &[]) else {
        return;
    };
    p.ready();
    let pid = p.pid.to_string();
    // It never blocks in a syscall: after the attempts, a best-effort walk
    // that says so.
    let out = run(&["objs", "-p", &pid, "--attempts", "3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("WARNING: best-effort walk"), "{text}");
    let j = run_json(&["objs", "-p", &pid, "--attempts", "2", "--format", "json"]);
    assert_eq!(j["consistency"], "best-effort");
    assert!(
        !j["stopped_in"].as_str().unwrap().starts_with("blocked"),
        "{}",
        j["stopped_in"]
    );
    let j = run_json(&["objs", "-p", &pid, "--nonblocking", "--format", "json"]);
    assert_eq!(j["consistency"], "nonblocking");
    assert_eq!(j["pause_us"], 0);
    // Racing the mutator, totals may be off (that is what the flag says), but
    // the walk still ends and finds the VM's own long-lived objects.
    assert!(j["objects"].as_u64().unwrap() > 100, "{j:#}");
    assert!(ty(&j, "thread", "count") >= 1, "{j:#}");
    assert!(ty(&j, "proto", "count") >= 1, "{j:#}");
    // And the target still runs.
    assert_eq!(proc_state(p.pid), Some('R'));
}

#[test]
fn permission_denied_has_its_exit_code() {
    if !require(
        "setpriv (util-linux)",
        Path::new("/usr/bin/setpriv").exists(),
    ) {
        return;
    }
    let Some(mut p) = luajit_script("busy.lua", &[]) else {
        return;
    };
    p.ready();
    // A copy in /tmp, so that uid nobody can execute it wherever the
    // checkout lives.
    let exe = std::env::temp_dir().join(format!("ljleak-nobody-{}", std::process::id()));
    std::fs::copy(ljleak(), &exe).unwrap();
    let out = std::process::Command::new("/usr/bin/setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&exe)
        .args(["objs", "-p", &p.pid.to_string()])
        .output()
        .unwrap();
    std::fs::remove_file(&exe).ok();
    one_line_error(&out, 5, "permission denied");
    assert!(String::from_utf8_lossy(&out.stderr).contains("run as root"));
}
