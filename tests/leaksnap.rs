//! Leak snapshots end to end: real `ljleak leaks` runs against an nginx
//! worker leaking a known number of bytes per request through ffi.C.malloc,
//! written as snapshots (`-o X.json`), compared with `ljleak diff` (deltas,
//! gates, SVG, markdown, mismatch errors) and converted to pprof.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::channel;
use std::time::Duration;

use common::Nginx;
use serde_json::Value;

/// Bytes `/cleak` leaks per request in these tests.
const SIZE: u64 = 12345;
/// Leaking requests in the first window (the second has 3N).
const N: u64 = 8;

fn tmpdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("ljleak-leaksnap-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Line of testdata/lua/leaks.lua holding `text`.
fn lua_line(text: &str) -> i64 {
    let src = std::fs::read_to_string(common::testdata("lua/leaks.lua")).unwrap();
    src.lines().position(|l| l.contains(text)).expect("line") as i64 + 1
}

/// Run `ljleak leaks ARGS`; once its probes are attached, send `n` leaking
/// and `n` non-leaking requests from another thread. Returns stderr.
fn trace(ng: &Nginx, args: &[&str], n: u64) -> String {
    let mut child = Command::new(common::ljleak())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ljleak");
    let err = child.stderr.take().unwrap();
    let (tx, rx) = channel();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if line.starts_with("ljleak: tracing") {
                let _ = tx.send(());
            }
            all.push(line);
        }
        all.join("\n")
    });
    let started = rx.recv_timeout(Duration::from_secs(30)).is_ok();
    if started {
        let port = ng.port;
        let load = std::thread::spawn(move || {
            for _ in 0..n {
                assert_eq!(
                    common::http_get(port, &format!("/cleak?size={SIZE}")).0,
                    200
                );
                assert_eq!(common::http_get(port, "/cok?size=777").0, 200);
            }
        });
        load.join().expect("requests");
    }
    let st = child.wait().unwrap();
    let err = reader.join().unwrap();
    assert!(started && st.success(), "ljleak {args:?} failed: {err}");
    err
}

fn argv(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn diff(args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["diff"];
    all.extend_from_slice(args);
    let o = common::run(&all);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A folded stack key (root first) is the malloc leak: its Lua frame is the
/// `ffi.C.malloc` line of leaks.lua (with the BPF tracer followed by the
/// function's name, ` (cleak)`) and its leaf is malloc.
fn is_leak_stack(stack: &str, line: i64) -> bool {
    stack.ends_with(";malloc")
        && stack.split(';').any(|f| {
            let loc = f.split(" (").next().unwrap_or(f);
            f.starts_with('@') && loc.ends_with(&format!("/lua/leaks.lua:{line}"))
        })
}

/// (bytes, count) of the leak's sites in a snapshot.
fn leak_sites(snap: &Value, line: i64) -> (u64, u64) {
    let mut t = (0, 0);
    for site in snap["sites"].as_array().unwrap() {
        let names: Vec<&str> = site["frames"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        if is_leak_stack(&names.join(";"), line) {
            t.0 += site["bytes"].as_u64().unwrap();
            t.1 += site["count"].as_u64().unwrap();
        }
    }
    t
}

/// The pprof checks: sample types, totals, and the Lua frame as a Function
/// in leaks.lua with a Line at the malloc call. Returns bytes of samples
/// through that Lua line.
fn check_pprof(p: &Path, line: i64) -> (ljleak::report::pprof::proto::Profile, i64) {
    let raw = std::fs::read(p).unwrap();
    assert_eq!(&raw[..2], &[0x1f, 0x8b], "gzipped");
    let prof = ljleak::report::pprof::decode(&raw).unwrap();
    let st = |i: i64| prof.string_table[i as usize].as_str();
    let types: Vec<(&str, &str)> = prof
        .sample_type
        .iter()
        .map(|v| (st(v.r#type), st(v.unit)))
        .collect();
    assert_eq!(
        types,
        [("inuse_objects", "count"), ("inuse_space", "bytes")]
    );
    let lua_fn = prof
        .function
        .iter()
        .find(|f| st(f.filename).ends_with("/lua/leaks.lua"))
        .expect("a Function in leaks.lua");
    assert!(
        st(lua_fn.filename).starts_with('/'),
        "chunk name without `@`: {}",
        st(lua_fn.filename)
    );
    let locs: Vec<u64> = prof
        .location
        .iter()
        .filter(|l| {
            l.line.iter().any(|ln| {
                ln.line == line
                    && st(prof.function[ln.function_id as usize - 1].filename)
                        == st(lua_fn.filename)
            })
        })
        .map(|l| l.id)
        .collect();
    assert!(!locs.is_empty(), "no Line {line} in leaks.lua");
    // C frames: named by symbol, the module as the file.
    assert!(
        prof.function
            .iter()
            .any(|f| st(f.name) == "malloc" && st(f.filename).contains("libc")),
        "malloc in libc"
    );
    let through: i64 = prof
        .sample
        .iter()
        .filter(|s| s.location_id.iter().any(|l| locs.contains(l)))
        .map(|s| s.value[1])
        .sum();
    (prof, through)
}

#[test]
fn leak_snapshots_diff_gate_and_convert_to_pprof() {
    if !common::require(
        "the uprobe PMU",
        Path::new("/sys/bus/event_source/devices/uprobe/type").exists(),
    ) {
        return;
    }
    let Some(ng) = Nginx::start("leaks.conf", 1) else {
        return;
    };
    let w = ng.worker().to_string();
    let d = tmpdir();
    let line = lua_line("ffi.C.malloc(size)");
    // Load the module and warm the paths before any window.
    assert_eq!(ng.get("/cleak?size=1").0, 200);
    assert_eq!(ng.get("/cok?size=1").0, 200);
    let (a, b, c) = (d.join("a.json"), d.join("b.json"), d.join("c.pb.gz"));
    let leaks = |out: &Path, extra: &[&str]| {
        let mut v = vec!["leaks", "-p", &w, "--time", "2.5", "--source", "malloc"];
        v.extend_from_slice(extra);
        v.extend_from_slice(&["-o", s(out)]);
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let la = leaks(&a, &[]);
    trace(&ng, &argv(&la), N);
    let lb = leaks(&b, &[]);
    trace(&ng, &argv(&lb), 3 * N);
    let lc = leaks(&c, &["--format", "pprof"]);
    trace(&ng, &argv(&lc), N);

    // The snapshot: private, self-describing, with the leak.
    use std::os::unix::fs::PermissionsExt;
    for p in [&a, &b, &c] {
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", p.display());
    }
    let census = d.join("census.json");
    let o = common::run(&["objs", "-p", &w, "-o", s(&census)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cj = json(&census);
    let ja = json(&a);
    assert_eq!(ja["schema"], 1);
    assert_eq!(ja["kind"], "leaks");
    assert_eq!(ja["pid"].as_i64().unwrap().to_string(), w);
    let exe = std::fs::read_link(format!("/proc/{w}/exe")).unwrap();
    assert_eq!(ja["exe"].as_str().unwrap(), exe.to_str().unwrap());
    let bid = ja["exe_build_id"].as_str().expect("build-id");
    assert!(bid.len() >= 16 && bid.bytes().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(ja["exe_build_id"], cj["exe_build_id"]);
    assert_eq!(ja["luajit"]["variant"], cj["luajit"]["variant"]);
    assert_eq!(ja["luajit"]["gc64"], cj["luajit"]["gc64"]);
    assert_eq!(ja["host"], cj["host"]);
    assert!(!ja["host"].as_str().unwrap().is_empty());
    let created = ja["created"].as_str().unwrap();
    assert!(created.len() == 24 && created.ends_with('Z'), "{created}");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let ms = ja["created_unix_ms"].as_u64().unwrap();
    assert!(ms <= now_ms && now_ms - ms < 300_000, "{ms} vs {now_ms}");
    assert_eq!(ja["ljleak_version"], env!("CARGO_PKG_VERSION"));
    let cmd: Vec<&str> = ja["command_line"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(&cmd[1..], argv(&la).as_slice());
    let win = ja["window_seconds"].as_f64().unwrap();
    assert!((2.4..4.0).contains(&win), "window {win}");
    assert!(ja["pause_us"].as_u64().unwrap() > 0);
    assert_eq!(ja["summary"]["source"], "malloc");
    // Root-first frame lists come innermost first in `sites`, with the Lua frame.
    assert_eq!(leak_sites(&ja, line), (N * SIZE, N), "{ja:#}");
    let jb = json(&b);
    assert_eq!(leak_sites(&jb, line), (3 * N * SIZE, 3 * N));

    // diff: the leak stack grew by exactly 2N x SIZE, largest growth first.
    let (code, out, err) = diff(&[s(&a), s(&b), "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let dj: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(dj["kind"], "leaks");
    let changed = dj["leaks"]["changed"].as_array().unwrap();
    let (mut grown, mut counted) = (0i64, 0i64);
    for st in changed {
        if is_leak_stack(st["stack"].as_str().unwrap(), line) {
            grown += st["bytes"]["delta"].as_i64().unwrap();
            counted += st["count"]["delta"].as_i64().unwrap();
        }
    }
    assert_eq!(grown, (2 * N * SIZE) as i64, "{dj:#}");
    assert_eq!(counted, (2 * N) as i64);
    let first = &changed[0];
    assert!(
        is_leak_stack(first["stack"].as_str().unwrap(), line),
        "{first:#}"
    );
    assert_eq!(first["change"], "grown");
    let total = &dj["leaks"]["total"];
    assert_eq!(
        total["a"].as_u64().unwrap(),
        ja["summary"]["outstanding_bytes"].as_u64().unwrap()
    );
    // The total moves with the leak, give or take the other stacks
    // outstanding at each window's end (requests in flight: noise that
    // may shrink between the two windows).
    let others_shrank: i64 = changed
        .iter()
        .filter(|st| !is_leak_stack(st["stack"].as_str().unwrap(), line))
        .map(|st| st["bytes"]["delta"].as_i64().unwrap().min(0))
        .sum();
    let x = total["delta"].as_i64().unwrap();
    assert!(
        x >= (2 * N * SIZE) as i64 + others_shrank,
        "total grew {x}, others shrank {others_shrank}: {dj:#}"
    );

    // Gates trip exactly at their thresholds.
    let (code, out, _) = diff(&[s(&a), s(&b), "--fail-if", &format!("total>+{x}")]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("pass"), "{out}");
    let (code, out, err) = diff(&[s(&a), s(&b), "--fail-if", &format!("total>+{}", x - 1)]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        out.contains("TRIPPED") && err.contains("gate(s) tripped"),
        "{err}"
    );
    let (code, _, err) = diff(&[s(&a), s(&b), "--fail-if", "nope>1"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("total (outstanding bytes)"), "{err}");

    // Markdown and the differential flame graph.
    let (code, md, err) = diff(&[s(&a), s(&b), "--format", "markdown"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        md.contains("| stack |") && md.contains("#### Grown stacks"),
        "{md}"
    );
    let svg = d.join("d.svg");
    let (code, _, err) = diff(&[s(&a), s(&b), "-o", s(&svg)]);
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("<svg") && text.contains(&format!("leaks.lua:{line}")));

    // Mismatched kinds and builds: exit 9 with a one-line reason.
    let (code, _, err) = diff(&[s(&a), s(&census)]);
    assert_eq!(code, 9, "{err}");
    assert!(
        err.contains("cannot compare") && err.contains("(leaks)"),
        "{err}"
    );
    let mut other = jb.clone();
    other["luajit"]["variant"] = Value::from("upstream");
    let ob = d.join("other.json");
    std::fs::write(&ob, other.to_string()).unwrap();
    let (code, _, err) = diff(&[s(&a), s(&ob)]);
    assert_eq!(code, 9, "{err}");
    assert!(err.contains("upstream") && err.contains("differ"), "{err}");

    // pprof: converted snapshot keeps its totals; direct output has the leak.
    let pa = d.join("a.pb.gz");
    let o = common::run(&["convert", s(&a), "-o", s(&pa)]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (prof, through) = check_pprof(&pa, line);
    let sites = ja["sites"].as_array().unwrap();
    let sum = |k: &str| sites.iter().map(|x| x[k].as_i64().unwrap()).sum::<i64>();
    assert_eq!(
        ljleak::report::pprof::totals(&prof),
        [sum("count"), sum("bytes")]
    );
    if ja["sites_total"].as_u64() == Some(sites.len() as u64) {
        assert_eq!(
            sum("bytes"),
            ja["summary"]["outstanding_bytes"].as_i64().unwrap()
        );
    }
    assert_eq!(through, (N * SIZE) as i64);
    let (_, through) = check_pprof(&c, line);
    assert_eq!(through, (N * SIZE) as i64);

    // The worker served throughout.
    assert_eq!(ng.get("/hello"), (200, "hello\n".to_string()));
    let _ = std::fs::remove_dir_all(&d);
}
