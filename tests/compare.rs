//! Comparison workflow tests: `ljleak diff` on real and hand-written
//! snapshots, gates at their exact thresholds, input errors, differential
//! flame graphs, pprof output, `watch` verdicts and `--master`.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::{json, Value};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ljleak-compare-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `script` under luajit2, or None (a CI failure) when luajit2 is missing.
fn lua(script: &Path, args: &[&str]) -> Option<LuaProc> {
    let lj = luajit();
    require("luajit2 at /usr/bin/luajit", lj.is_some());
    Some(LuaProc::spawn(&lj?, script, args))
}

fn code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn diff(a: &Path, b: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["diff", a.to_str().unwrap(), b.to_str().unwrap()];
    args.extend_from_slice(extra);
    run(&args)
}

/// A minimal census snapshot as an older ljleak would have written it
/// (no envelope fields: they must default).
fn census_json(total: u64, tables: u64, table_bytes: u64, cdata_bytes: u64) -> Value {
    json!({
        "kind": "census", "pid": 1, "exe": "/usr/bin/luajit",
        "luajit": {"variant": "luajit2", "gc64": true, "layout": "luajit2-gc64", "layout_source": "table",
                   "method": "scan", "lua_state": "0x1", "global_state": "0x2"},
        "gc_total": total, "walker_total": total, "gc_state": "pause", "pause_us": 10,
        "consistency": "quiescent",
        "types": {
            "table": {"count": tables, "sum": table_bytes, "min": 64, "max": 64, "avg": 64},
            "cdata": {"count": cdata_bytes / 100, "sum": cdata_bytes, "min": 100, "max": 100, "avg": 100}
        },
        "cdata_types": [{"name": "uint8_t[92]", "count": cdata_bytes / 100, "sum": cdata_bytes}],
        "table_classes": [{"le": 64, "count": tables, "sum": table_bytes}]
    })
}

fn write(dir: &Path, name: &str, v: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, v).unwrap();
    p
}

#[test]
fn gates_trip_exactly_at_their_thresholds() {
    let d = tmpdir("gates");
    let a = write(
        &d,
        "a.json",
        &census_json(1_000_000, 1000, 64_000, 1_000_000).to_string(),
    );
    // +5% total exactly, +1000 tables exactly, +10 MB cdata exactly.
    let b = write(
        &d,
        "b.json",
        &census_json(1_050_000, 2000, 128_000, 11_000_000).to_string(),
    );
    let b1 = write(
        &d,
        "b1.json",
        &census_json(1_050_001, 2001, 128_064, 11_000_001).to_string(),
    );
    for (expr, at, above) in [
        ("total>+5%", 0, 3),
        ("table.count>+1000", 0, 3),
        ("cdata.bytes>+10MB", 0, 3),
        ("total>=+5%", 3, 3),
        ("table.count>=+1000", 3, 3),
        ("total>1050000", 0, 3),
        ("total>1.05MB", 0, 3),
    ] {
        let o = diff(&a, &b, &["--fail-if", expr]);
        assert_eq!(code(&o), at, "{expr} at the threshold: {}", stderr(&o));
        let o = diff(&a, &b1, &["--fail-if", expr]);
        assert_eq!(code(&o), above, "{expr} one above: {}", stderr(&o));
        if above == 3 {
            assert!(
                stderr(&o).contains(expr),
                "the tripped gate is named: {}",
                stderr(&o)
            );
        }
    }
    // Shrinking: B -> A is -1000 tables; `<-1000` does not trip at -1000, `<=-1000` does.
    assert_eq!(code(&diff(&b, &a, &["--fail-if", "table.count<-1000"])), 0);
    assert_eq!(code(&diff(&b, &a, &["--fail-if", "table.count<=-1000"])), 3);
    assert_eq!(code(&diff(&b1, &a, &["--fail-if", "table.count<-1000"])), 3);
    // Several gates: tripped ones printed last.
    let o = diff(
        &a,
        &b1,
        &["--fail-if", "total>+5%", "--fail-if", "string.count>+1"],
    );
    assert_eq!(code(&o), 3);
    let out = stdout(&o);
    let pass = out
        .find("pass  string.count>+1")
        .expect("passed gate listed");
    let trip = out.find("TRIPPED  total>+5%").expect("tripped gate listed");
    assert!(pass < trip, "tripped gates come last:\n{out}");
    // JSON: exact deltas and gate results.
    let o = diff(&a, &b1, &["--format", "json", "--fail-if", "total>+5%"]);
    assert_eq!(code(&o), 3);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["census"]["total"]["delta"], 50_001);
    assert_eq!(v["tripped"], 1);
    let types = v["census"]["types"].as_array().unwrap();
    assert_eq!(types[0]["name"], "cdata", "sorted by byte growth");
    assert_eq!(types[0]["bytes"]["delta"], 10_000_001);
    assert_eq!(types[1]["count"]["delta"], 1001);
    assert_eq!(v["census"]["table_classes"][0]["bytes"]["delta"], 64_064);
    // Markdown renders tables.
    let o = diff(&a, &b, &["--format", "markdown"]);
    assert_eq!(code(&o), 0);
    assert!(
        stdout(&o).contains("| table | 1000 | 2000 | +1000 |"),
        "{}",
        stdout(&o)
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bad_inputs_give_clear_errors_and_exit_codes() {
    let d = tmpdir("bad");
    let good = write(&d, "good.json", &census_json(1000, 1, 64, 0).to_string());
    let cases: Vec<(PathBuf, &str)> = vec![
        (
            write(&d, "garbage.json", "{ \"kind\": \"census\", "),
            "is not a ljleak snapshot",
        ),
        (
            write(&d, "garbage.txt", "hello world\n"),
            "neither a ljleak snapshot",
        ),
        (
            write(
                &d,
                "missing.json",
                r#"{"schema": 1, "kind": "census", "pid": 1}"#,
            ),
            "missing field",
        ),
        (
            write(&d, "new.json", r#"{"schema": 2, "kind": "census"}"#),
            "schema 2",
        ),
        (
            write(&d, "leaks.json", r#"{"schema": 1, "kind": "nonsense"}"#),
            "`nonsense` snapshot",
        ),
        (write(&d, "stacks.folded", "main;f 10\n"), "cannot compare"),
        (d.join("does-not-exist.json"), "cannot read"),
    ];
    for (file, msg) in &cases {
        let o = diff(&good, file, &[]);
        assert_eq!(code(&o), 9, "{}: {}", file.display(), stderr(&o));
        let e = stderr(&o);
        assert!(
            e.contains(msg) && e.contains(file.file_name().unwrap().to_str().unwrap()),
            "{}: {e}",
            file.display()
        );
        assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
    }
    let mut gc = census_json(1000, 1, 64, 0);
    gc["kind"] = "gc".into();
    let gc = write(&d, "gc.json", &gc.to_string());
    assert!(stderr(&diff(&good, &gc, &[])).contains("cannot compare"));
    let mut other = census_json(1000, 1, 64, 0);
    other["luajit"]["variant"] = "upstream".into();
    let other = write(&d, "upstream.json", &other.to_string());
    let o = diff(&good, &other, &[]);
    assert_eq!(code(&o), 9);
    assert!(
        stderr(&o).contains("luajit2 GC64") && stderr(&o).contains("upstream GC64"),
        "{}",
        stderr(&o)
    );
    assert_eq!(code(&diff(&good, &other, &["--allow-build-mismatch"])), 0);
    // Bad gates are usage errors.
    for g in [
        "total>>5",
        "total>+5XB",
        "nosuch.count>1",
        "table.count>+1MB",
    ] {
        let o = diff(&good, &good, &["--fail-if", g]);
        assert_eq!(code(&o), 2, "{g}: {}", stderr(&o));
        assert!(stderr(&o).contains(g), "{}", stderr(&o));
    }
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn diff_of_two_live_censuses_has_exact_deltas() {
    let Some(mut p) = lua(&testdata("lua/compare_pop.lua"), &[]) else {
        return;
    };
    let d = tmpdir("live");
    let pid = p.pid.to_string();
    let (a, b) = (d.join("a.json"), d.join("b.json"));
    assert_eq!(p.ready(), "before");
    let o = run(&["objs", "-p", &pid, "-o", a.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    p.resume_total();
    assert_eq!(p.ready(), "after");
    let o = run(&["objs", "-p", &pid, "-o", b.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The snapshot is private and self-describing.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&b).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let snap: Value = serde_json::from_str(&std::fs::read_to_string(&b).unwrap()).unwrap();
    assert_eq!(snap["schema"], 1);
    assert_eq!(snap["kind"], "census");
    assert_eq!(snap["pid"], p.pid);
    assert!(
        snap["exe_build_id"].as_str().is_some_and(|s| s.len() >= 16),
        "{}",
        snap["exe_build_id"]
    );
    assert!(snap["command_line"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a == "objs"));
    assert!(snap["created"].as_str().unwrap().ends_with('Z'));
    let classes: u64 = snap["table_classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["count"].as_u64().unwrap())
        .sum();
    assert_eq!(
        classes as i64,
        ty(&snap, "table", "count"),
        "size classes cover every table"
    );

    let o = diff(&a, &b, &["--format", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let row = |list: &str, name: &str| -> Value {
        v["census"][list]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {list}"))
    };
    assert_eq!(row("types", "table")["count"]["delta"], 2000);
    assert_eq!(row("types", "cdata")["count"]["delta"], 300);
    let c = row("cdata_types", "unsigned char[100]");
    assert_eq!(c["count"]["delta"], 300);
    assert_eq!(c["bytes"]["delta"], row("types", "cdata")["bytes"]["delta"]);
    // Empty tables are the smallest class: all 2000 land in one class.
    let small = v["census"]["table_classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["count"]["delta"].as_i64().unwrap())
        .max();
    assert_eq!(small, Some(2000));
    // Census snapshots draw as type -> C type / size class.
    let svg = d.join("census.svg");
    let o = diff(&a, &b, &["-o", svg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.contains("unsigned char[100]") && text.contains("table"),
        "census frames in the SVG"
    );
    // Gate at the live threshold.
    assert_eq!(code(&diff(&a, &b, &["--fail-if", "table.count>+2000"])), 0);
    assert_eq!(code(&diff(&a, &b, &["--fail-if", "table.count>+1999"])), 3);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn folded_diff_and_svg_keep_vanished_stacks() {
    let d = tmpdir("folded");
    let a = write(
        &d,
        "a.folded",
        "main;handler;only_in_a_frame 500\nmain;handler;kept 100\nmain;shrinks 300\n",
    );
    let b = write(
        &d,
        "b.folded",
        "main;handler;kept 400\nmain;shrinks 100\nmain;brand_new 50\n",
    );
    let svg = d.join("diff.svg");
    let o = diff(
        &a,
        &b,
        &[
            "-o",
            svg.to_str().unwrap(),
            "--fail-if",
            "total>+10%",
            "--full",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = stdout(&o);
    for (section, stack) in [
        ("New stacks (1)", "main;brand_new"),
        ("Grown stacks (1)", "main;handler;kept"),
        ("Shrunk stacks (1)", "main;shrinks"),
        ("Vanished stacks (1)", "main;handler;only_in_a_frame"),
    ] {
        let at = out
            .find(section)
            .unwrap_or_else(|| panic!("{section} in\n{out}"));
        assert!(out[at..].contains(stack), "{stack} under {section}");
    }
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.contains("only_in_a_frame"),
        "a frame only in A is drawn"
    );
    assert!(text.contains("brand_new"), "a frame only in B is drawn");
    // Plain inferno differential would give only_in_a_frame zero width; ours
    // keeps its full A size: 500 of the union's 1350.
    assert!(
        text.contains("only_in_a_frame (500 bytes"),
        "vanished stack keeps its A width"
    );
    // total 900 -> 550: shrink gate trips.
    let o = diff(&a, &b, &["--fail-if", "total<-30%"]);
    assert_eq!(code(&o), 3);
    let _ = std::fs::remove_dir_all(&d);
}

/// `watch` on a script of the given shape: (sample lines, summary).
fn watch_script(mode: &str, extra: &[&str]) -> Option<(Vec<Value>, Value)> {
    use std::io::BufRead;
    let mut p = lua(&testdata("lua/watch_trend.lua"), &[mode, "1.2"])?;
    assert_eq!(p.ready(), mode);
    let pid = p.pid.to_string();
    let mut args = vec![
        "watch",
        "-p",
        &pid,
        "--interval",
        "200ms",
        "--count",
        "16",
        "--format",
        "jsonl",
    ];
    args.extend_from_slice(extra);
    let mut child = std::process::Command::new(ljleak())
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // Start the script's clock at watch's first sample, however long
    // locating the VM took on a busy machine.
    let first = lines.next().expect("a first sample").unwrap();
    p.send("\n");
    let lines: Vec<Value> = std::iter::once(first)
        .chain(lines.map(|l| l.unwrap()))
        .map(|l| serde_json::from_str(&l).unwrap())
        .collect();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "watch {mode}: {}", stderr(&o));
    let (samples, summary): (Vec<Value>, Vec<Value>) =
        lines.into_iter().partition(|v| v.get("summary").is_none());
    assert_eq!(samples.len(), 16, "one line per sample");
    assert_eq!(summary.len(), 1);
    Some((samples, summary[0]["summary"].clone()))
}

#[test]
fn watch_says_growing_for_linear_growth() {
    let d = tmpdir("watch");
    let svg = d.join("watch.svg");
    let Some((samples, s)) = watch_script("grow", &["-o", svg.to_str().unwrap()]) else {
        return;
    };
    assert_eq!(s["gc"]["verdict"], "growing", "{s}");
    // ~2 MB/s kept: the slope must be in that range (bytes/min), within 2x.
    let slope = s["gc"]["fit"]["slope"].as_f64().unwrap();
    assert!(slope > 60e6 && slope < 240e6, "slope {slope} bytes/min");
    let first = samples[0]["gc_total"].as_u64().unwrap();
    let last = samples[15]["gc_total"].as_u64().unwrap();
    assert!(last > first + 4_000_000, "gc_total grew: {first} -> {last}");
    assert!(samples
        .iter()
        .all(|x| x["rss"].as_u64().unwrap() > 0 && x["anon"].as_u64().unwrap() > 0));
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(
        plot.starts_with("<svg") && plot.contains("polyline"),
        "an SVG plot"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn watch_says_saturating_when_growth_stops() {
    let Some((_, s)) = watch_script("saturate", &[]) else {
        return;
    };
    assert_eq!(s["gc"]["verdict"], "saturating", "{s}");
    assert!(
        s["gc"]["first_half"].as_f64().unwrap() > 3.0 * s["gc"]["second_half"].as_f64().unwrap()
    );
}

#[test]
fn watch_says_stable_when_flat_and_counts_objects_with_census() {
    let Some((samples, s)) = watch_script("flat", &["--census"]) else {
        return;
    };
    assert_eq!(s["gc"]["verdict"], "stable", "{s}");
    // The first sample is taken before the script starts its loop (reading
    // the start line and the clock leave a few objects); from then on the
    // population is constant.
    let objs: Vec<u64> = samples[1..]
        .iter()
        .map(|x| x["objects"].as_u64().expect("objects with --census"))
        .collect();
    assert!(
        objs[0] > 100 && objs.iter().all(|&o| o == objs[0]),
        "a flat script keeps its object count: {objs:?}"
    );
    let tables: Vec<u64> = samples[1..]
        .iter()
        .map(|x| {
            x["types"]["table"]["count"]
                .as_u64()
                .expect("per-type counts")
        })
        .collect();
    assert!(
        tables[0] > 0 && tables.iter().all(|&t| t == tables[0]),
        "{tables:?}"
    );
}

#[test]
fn master_runs_every_worker_while_they_keep_serving() {
    let Some(ng) = Nginx::start("app.conf", 2) else {
        return;
    };
    let workers = ng.workers();
    assert_eq!(workers.len(), 2);
    let master = ng.master.to_string();
    // Keep a client busy for the whole test; every request must succeed.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let port = ng.port;
    let client = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut ok, mut bad) = (0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match http_get(port, "/leak?n=4") {
                    (200, _) => ok += 1,
                    _ => bad += 1,
                }
            }
            (ok, bad)
        })
    };
    // Requests nginx has served (stub_status: third number of the third line).
    let served = || -> u64 {
        let body = http_get(port, "/status").1;
        body.lines()
            .nth(2)
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|n| n.parse().ok())
            .expect("stub_status")
    };
    let before = served();

    let v = run_json(&["objs", "--master", &master, "--format", "json"]);
    assert_eq!(v["kind"], "workers");
    let reps = v["workers"].as_array().unwrap();
    let pids: Vec<i32> = reps
        .iter()
        .map(|r| r["pid"].as_i64().unwrap() as i32)
        .collect();
    assert_eq!(pids, workers, "one report per worker");
    let sum: u64 = reps
        .iter()
        .map(|r| r["types"]["cdata"]["count"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        v["total"]["types"]["cdata"]["count"].as_u64().unwrap_or(0),
        sum,
        "total is the sum"
    );
    assert!(reps
        .iter()
        .all(|r| r["kind"] == "census" && r["consistency"] == "quiescent"));

    // A workers snapshot diffs by its total.
    let d = tmpdir("master");
    let (sa, sb) = (d.join("a.json"), d.join("b.json"));
    for s in [&sa, &sb] {
        // At least 20 leaking requests between the two: lua-resty-core's
        // FFI temporaries come and go with the GC, the 16 KiB each request
        // keeps do not.
        let target = served() + 20;
        let t = std::time::Instant::now();
        while served() < target && t.elapsed() < std::time::Duration::from_secs(20) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let o = run(&["objs", "--master", &master, "-o", s.to_str().unwrap()]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let o = diff(
        &sa,
        &sb,
        &["--format", "json", "--fail-if", "cdata.bytes<+0"],
    );
    assert_eq!(code(&o), 0, "leaking workers do not shrink: {}", stderr(&o));
    let j: Value = serde_json::from_slice(&o.stdout).unwrap();
    let snap_a: Value = serde_json::from_str(&std::fs::read_to_string(&sa).unwrap()).unwrap();
    assert_eq!(j["census"]["total"]["a"], snap_a["total"]["gc_total"]);
    let _ = std::fs::remove_dir_all(&d);
    let g = run_json(&["gc", "-p", &master, "--format", "json"]);
    let sum: u64 = g["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["gc_total"].as_u64().unwrap())
        .sum();
    assert_eq!(g["workers"].as_array().unwrap().len(), 2);
    assert_eq!(g["total"]["gc_total"].as_u64().unwrap(), sum);

    let url = format!("http://127.0.0.1:{port}/status");
    let o = run(&[
        "watch",
        "--master",
        &master,
        "--interval",
        "200ms",
        "--count",
        "10",
        "--format",
        "jsonl",
        "--requests-url",
        &url,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let totals = lines.iter().filter(|l| l["pid"] == "total").count();
    assert_eq!(totals, 10, "a total row per sample");
    for w in &workers {
        assert_eq!(
            lines.iter().filter(|l| l["pid"] == *w).count(),
            10,
            "rows of worker {w}"
        );
    }
    let sums: Vec<&Value> = lines.iter().filter_map(|l| l.get("summary")).collect();
    assert_eq!(sums.len(), 3, "a summary per worker and one for the total");
    let total = sums[2];
    assert_eq!(total["gc"]["verdict"], "growing", "{total}");
    assert!(total["requests"].as_u64().unwrap() > 10, "{total}");
    // Each /leak?n=4 keeps four 4 KiB cdata buffers (plus a key table).
    let per = total["gc_bytes_per_request"].as_f64().unwrap();
    assert!(per > 8_000.0 && per < 64_000.0, "bytes per request {per}");

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, bad) = client.join().unwrap();
    assert_eq!(bad, 0, "no request failed while workers were inspected");
    assert!(ok > 20, "workers kept serving: {ok} requests");
    assert!(served() > before + 20);
}

#[test]
fn pprof_decodes_back_to_the_census_totals() {
    let Some(mut p) = lua(&testdata("lua/compare_pop.lua"), &[]) else {
        return;
    };
    let d = tmpdir("pprof");
    p.ready();
    p.resume_total();
    assert_eq!(p.ready(), "after");
    let pid = p.pid.to_string();
    let (pb, snap) = (d.join("heap.pb.gz"), d.join("snap.json"));
    let o = run(&[
        "objs",
        "-p",
        &pid,
        "--format",
        "pprof",
        "-o",
        pb.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["objs", "-p", &pid, "-o", snap.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let c: Value = serde_json::from_str(&std::fs::read_to_string(&snap).unwrap()).unwrap();
    let (mut count, mut bytes) = (0i64, 0i64);
    for t in c["types"].as_object().unwrap().values() {
        count += t["count"].as_i64().unwrap();
        bytes += t["sum"].as_i64().unwrap();
    }
    let raw = std::fs::read(&pb).unwrap();
    assert_eq!(&raw[..2], &[0x1f, 0x8b], "gzipped");
    let prof = ljleak::report::pprof::decode(&raw).unwrap();
    let st: Vec<(&str, &str)> = prof
        .sample_type
        .iter()
        .map(|v| {
            (
                prof.string_table[v.r#type as usize].as_str(),
                prof.string_table[v.unit as usize].as_str(),
            )
        })
        .collect();
    assert_eq!(st, [("inuse_objects", "count"), ("inuse_space", "bytes")]);
    // The blocked script did not change between the two captures.
    assert_eq!(ljleak::report::pprof::totals(&prof), [count, bytes]);
    // cdata by C type is a child frame of `cdata`.
    let name = |loc: u64| {
        let l = &prof.location[loc as usize - 1];
        let f = &prof.function[l.line[0].function_id as usize - 1];
        prof.string_table[f.name as usize].clone()
    };
    let s = prof
        .sample
        .iter()
        .find(|s| s.location_id.len() == 2 && name(s.location_id[0]) == "unsigned char[100]")
        .expect("cdata;unsigned char[100]");
    assert_eq!(name(s.location_id[1]), "cdata");
    assert_eq!(s.value[0], 300);

    // Folded input converts too, to the same total.
    let folded = d.join("x.folded");
    std::fs::write(
        &folded,
        "main;a@app.lua:3 100\nmain;b 250\nmain;a@app.lua:3 50\n",
    )
    .unwrap();
    let out = d.join("x.pb.gz");
    let o = run(&[
        "convert",
        folded.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let prof = ljleak::report::pprof::decode(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(ljleak::report::pprof::totals(&prof), [400]);
    assert!(
        prof.string_table.iter().any(|s| s == "app.lua"),
        "file of a Lua frame"
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn watch_csv_ctrl_c_and_bad_status_url() {
    let Some(mut p) = lua(&testdata("lua/watch_trend.lua"), &["flat"]) else {
        return;
    };
    p.ready();
    let pid = p.pid.to_string();
    let o = run(&[
        "watch",
        "-p",
        &pid,
        "--interval",
        "50ms",
        "--count",
        "4",
        "--format",
        "csv",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "t,pid,gc_total,rss,anon,objects,requests");
    assert_eq!(lines.len(), 5, "header and 4 rows:\n{out}");
    for l in &lines[1..] {
        let f: Vec<&str> = l.split(',').collect();
        assert_eq!(f[1], pid);
        assert!(f[2].parse::<u64>().unwrap() > 10_000, "gc_total in {l}");
    }
    assert!(
        stderr(&o).contains("verdict: "),
        "summary on stderr: {}",
        stderr(&o)
    );

    // Without --count, Ctrl-C ends the run with a summary and exit 0: sent
    // once 5 samples are out (a fixed sleep gave too few under load).
    let is_row = |l: &str| l.split_whitespace().nth(1) == Some(pid.as_str());
    let mut child = std::process::Command::new(ljleak())
        .args(["watch", "-p", &pid, "--interval", "100ms"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(child.stdout.take().unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut out = String::new();
    let mut rows = 0;
    while rows < 5 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok(l) = lines.recv_timeout(left) else {
            break;
        };
        rows += usize::from(is_row(&l));
        out += &l;
        out.push('\n');
    }
    if rows < 5 {
        let _ = child.kill();
    }
    assert_eq!(rows, 5, "samples before Ctrl-C:\n{out}");
    unsafe_kill(child.id() as i32, 2);
    let o = child.wait_with_output().unwrap();
    // The reader ends at EOF, once watch has exited.
    out.extend(lines.iter().map(|l| l + "\n"));
    assert!(
        o.status.success(),
        "exit after SIGINT: {:?} {}",
        o.status,
        stderr(&o)
    );
    assert!(out.contains("verdict: stable"), "{out}");

    let o = run(&[
        "watch",
        "-p",
        &pid,
        "--count",
        "2",
        "--interval",
        "50ms",
        "--requests-url",
        "https://127.0.0.1:1/status",
    ]);
    assert_eq!(code(&o), 1);
    assert!(stderr(&o).contains("only http://"), "{}", stderr(&o));
    let o = run(&["watch", "-p", "999999999", "--count", "2"]);
    assert_eq!(code(&o), 4, "no such process: {}", stderr(&o));
}

/// `leaks --master`: every worker traced over the same window, one folded
/// file per worker, and a total that is exactly their sum.
#[test]
fn leaks_on_every_worker_of_a_master() {
    if !require(
        "uprobe PMU",
        std::path::Path::new("/sys/bus/event_source/devices/uprobe/type").exists(),
    ) {
        return;
    }
    let Some(n) = Nginx::start("app.conf", 2) else {
        return;
    };
    let workers = n.workers();
    assert_eq!(workers.len(), 2);
    let dir = std::env::temp_dir().join(format!("ljleak-leaks-master-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let total = dir.join("all.folded");
    let mut c = std::process::Command::new(ljleak());
    c.args([
        "leaks",
        "--master",
        &n.master.to_string(),
        "--time",
        "60",
        "--source",
        "luajit",
        "--folded",
    ])
    .arg(&total);
    // The master's start line, then each worker's own once it is attached
    // (a fixed sleep here let requests go untraced under load).
    let (mut t, _) = Tracer::spawn(c);
    for w in &workers {
        t.wait_for(&format!("ljleak: tracing pid {w} "));
    }
    for _ in 0..60 {
        assert_eq!(n.get("/leak?n=1").0, 200);
    }
    // Each worker's window ends with Ctrl-C (a fixed window could end
    // before the requests did, if one worker attached late).
    for c in common::children(t.pid()) {
        unsafe_kill(c, 2);
    }
    let (err, _) = t.finish_ok();
    let sum = |p: &std::path::Path| -> u64 {
        std::fs::read_to_string(p)
            .unwrap_or_else(|e| panic!("{}: {e}\n{err}", p.display()))
            .lines()
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
            .sum()
    };
    let per: Vec<u64> = workers
        .iter()
        .map(|w| sum(&dir.join(format!("all-{w}.folded"))))
        .collect();
    assert_eq!(
        sum(&total),
        per.iter().sum::<u64>(),
        "total is the sum of the workers"
    );
    // 60 requests, each keeping a 4096-byte cdata, spread over the workers.
    assert!(per.iter().sum::<u64>() >= 60 * 4096, "{per:?}\n{err}");
    for w in &workers {
        assert!(
            err.contains(&format!("pid {w}")),
            "worker {w} traced: {err}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(n.get("/hello").0, 200);
}
