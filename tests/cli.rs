//! One consistent CLI: `-o FILE` writes the format its extension names in
//! every command (several `-o` from one run), `--format` mismatches are
//! refused, every size and duration option takes units and rejects bad
//! spellings with a one-line error (exit 2), and every command given an
//! nginx master reports each worker.

mod common;

use std::path::{Path, PathBuf};

use common::{luajit_script, run, Nginx};
use serde_json::Value;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ljleak-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// What the bytes of a file written as `ext` must look like.
fn check_format(ext: &str, bytes: &[u8], what: &str) {
    let text = String::from_utf8_lossy(bytes);
    match ext {
        "json" => {
            serde_json::from_slice::<Value>(bytes)
                .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text}"));
        }
        "svg" => assert!(
            text.starts_with("<?xml") || text.starts_with("<svg"),
            "{what}: not SVG: {}",
            &text[..text.len().min(200)]
        ),
        "pb.gz" => assert!(bytes.starts_with(&[0x1f, 0x8b]), "{what}: not gzip"),
        "folded" => {
            assert!(!text.is_empty(), "{what}: empty");
            for l in text.lines().filter(|l| !l.starts_with('#')) {
                let n = l.rsplit_once(' ').map(|x| x.1.parse::<u64>());
                assert!(matches!(n, Some(Ok(_))), "{what}: not folded: {l:?}");
            }
        }
        "md" => assert!(
            text.contains("| ") && text.contains("|--"),
            "{what}: not markdown: {text}"
        ),
        "txt" => {
            assert!(!text.is_empty(), "{what}: empty");
            assert!(
                serde_json::from_slice::<Value>(bytes).is_err() && !text.starts_with("<?xml"),
                "{what}: text expected: {text}"
            );
        }
        "csv" => assert!(
            text.starts_with("t,pid,gc_total"),
            "{what}: not CSV: {text}"
        ),
        "jsonl" => {
            for l in text.lines() {
                serde_json::from_str::<Value>(l)
                    .unwrap_or_else(|e| panic!("{what}: not JSON lines ({e}): {l}"));
            }
        }
        "stap" => assert!(text.contains(" : ") || text.is_empty(), "{what}: {text}"),
        _ => unreachable!("{ext}"),
    }
}

/// Run `args` once with one `-o` per extension and check every file.
fn all_extensions(dir: &Path, name: &str, args: &[&str], exts: &[&str]) {
    let files: Vec<(String, PathBuf)> = exts
        .iter()
        .map(|e| (e.to_string(), dir.join(format!("{name}.{e}"))))
        .collect();
    let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    for (_, f) in &files {
        v.push("-o".into());
        v.push(f.to_str().unwrap().into());
    }
    let argv: Vec<&str> = v.iter().map(String::as_str).collect();
    let o = run(&argv);
    assert!(o.status.success(), "{argv:?}: {}", stderr(&o));
    for (ext, f) in files {
        let bytes = std::fs::read(&f).unwrap_or_else(|e| panic!("{argv:?} wrote no {ext}: {e}"));
        check_format(&ext, &bytes, &format!("{name} -o .{ext}"));
    }
}

#[test]
fn output_format_follows_the_extension_in_every_command() {
    let Some(mut p) = luajit_script("refs_known.lua", &["300", "100"]) else {
        return;
    };
    p.ready();
    let pid = p.pid.to_string();
    let d = tmpdir("ext");
    let table: &[(&str, &[&str], &[&str])] = &[
        ("gc", &["gc", "-p", &pid], &["json", "txt"]),
        (
            "objs",
            &["objs", "-p", &pid],
            &["json", "txt", "svg", "folded", "pb.gz"],
        ),
        (
            "refs",
            &["refs", "-p", &pid],
            &["json", "txt", "svg", "folded"],
        ),
        (
            "threads",
            &["threads", "-p", &pid],
            &["json", "txt", "svg", "folded"],
        ),
        (
            "watch",
            &["watch", "-p", &pid, "--interval", "20ms", "--count", "4"],
            &["json", "txt", "svg", "csv", "jsonl"],
        ),
        ("probes", &["probes", "-p", &pid], &["json", "txt"]),
        // The script is parked at its checkpoint: nothing is outstanding,
        // and every format still says so in its own shape.
        (
            "leaks",
            &["leaks", "-p", &pid, "--time", "500ms"],
            &["json", "svg", "pb.gz", "txt"],
        ),
    ];
    for (name, args, exts) in table {
        all_extensions(&d, name, args, exts);
    }
    // diff and convert read snapshots the runs above wrote.
    let snap = d.join("objs.json");
    let s = snap.to_str().unwrap();
    all_extensions(&d, "diff", &["diff", s, s], &["json", "txt", "md", "svg"]);
    all_extensions(&d, "convert", &["convert", s], &["pb.gz", "folded", "svg"]);
    let refs = d.join("refs.json");
    all_extensions(
        &d,
        "convert-refs",
        &["convert", refs.to_str().unwrap()],
        &["folded", "svg"],
    );
    p.resume_total();
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn format_mismatch_and_unsupported_extension_are_refused() {
    let Some(mut p) = luajit_script("refs_small.lua", &[]) else {
        return;
    };
    p.ready();
    let pid = p.pid.to_string();
    let d = tmpdir("mismatch");
    let svg = d.join("x.svg");
    let md = d.join("x.md");
    for args in [
        vec![
            "objs",
            "-p",
            &pid,
            "--format",
            "json",
            "-o",
            svg.to_str().unwrap(),
        ],
        vec![
            "refs",
            "-p",
            &pid,
            "--format",
            "text",
            "-o",
            svg.to_str().unwrap(),
        ],
        vec!["gc", "-p", &pid, "-o", svg.to_str().unwrap()],
        vec!["threads", "-p", &pid, "-o", md.to_str().unwrap()],
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert_eq!(e.lines().count(), 1, "{args:?}: one line: {e}");
        assert!(e.contains("x.svg") || e.contains("x.md"), "{e}");
        assert!(!svg.exists() && !md.exists(), "nothing written");
    }
    p.resume_total();
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn sizes_and_durations_take_units_and_bad_ones_are_one_line_errors() {
    // Accepted spellings: parsed without a usage error. The target does
    // not exist, so a well-formed command fails later with exit 4.
    let nopid = "999999999";
    let good: &[&[&str]] = &[
        &["leaks", "-p", nopid, "--time", "5s"],
        &["leaks", "-p", nopid, "--time", "500ms"],
        &["leaks", "-p", nopid, "--time", "2"],
        &["leaks", "-p", nopid, "--time", "1m"],
        &["leaks", "-p", nopid, "--min-age", "1s"],
        &["leaks", "-p", nopid, "--min-age", "250ms"],
        &["leaks", "-p", nopid, "--sample-bytes", "1MB"],
        &["leaks", "-p", nopid, "--sample-bytes", "512KiB"],
        &["leaks", "-p", nopid, "--sample-bytes", "65536"],
        &["leaks", "-p", nopid, "--stack-bytes", "4K"],
        &["leaks", "-p", nopid, "--stack-bytes", "4096"],
        &["refs", "-p", nopid, "--size", "10KiB"],
        &["refs", "-p", nopid, "--size", "1MB"],
        &["refs", "-p", nopid, "--size", "100"],
        &["refs", "-p", nopid, "--min-frame", "4K"],
        &["watch", "-p", nopid, "--interval", "500ms"],
        &["watch", "-p", nopid, "--interval", "5s"],
        &["watch", "-p", nopid, "--interval", "1m"],
    ];
    for args in good {
        let o = run(args);
        assert_eq!(o.status.code(), Some(4), "{args:?} parses: {}", stderr(&o));
    }
    let bad: &[&[&str]] = &[
        &["leaks", "-p", nopid, "--time", "5 parsecs"],
        &["leaks", "-p", nopid, "--time", "0s"],
        &["leaks", "-p", nopid, "--time", "-1s"],
        &["leaks", "-p", nopid, "--min-age", "soon"],
        &["leaks", "-p", nopid, "--sample-bytes", "0"],
        &["leaks", "-p", nopid, "--sample-bytes", "1XB"],
        &["leaks", "-p", nopid, "--stack-bytes", "1MB"],
        &["leaks", "-p", nopid, "--stack-bytes", "4.5"],
        &["refs", "-p", nopid, "--size", "ten"],
        &["refs", "-p", nopid, "--min-frame", "-4K"],
        &["watch", "-p", nopid, "--interval", "1ms"],
        &["watch", "-p", nopid, "--interval", "fast"],
    ];
    for args in bad {
        let o = run(args);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
        assert_eq!(e.lines().count(), 1, "{args:?}: one line: {e}");
        assert!(e.starts_with("ljleak: "), "{e}");
    }
}

/// `refs` and `threads` given an nginx master: a section per worker (the
/// master's own small VM is not analysed), and a total.
#[test]
fn refs_and_threads_on_a_master_report_each_worker() {
    let Some(ng) = Nginx::start("app.conf", 2) else {
        return;
    };
    let workers = ng.workers();
    assert_eq!(workers.len(), 2);
    // Leak in whichever worker takes the requests.
    for _ in 0..40 {
        assert_eq!(ng.get("/leak?n=2").0, 200);
    }
    let master = ng.master.to_string();
    let d = tmpdir("master");
    for cmd in ["refs", "threads"] {
        let j = d.join(format!("{cmd}.json"));
        let o = run(&[cmd, "-p", &master, "-o", j.to_str().unwrap()]);
        assert!(o.status.success(), "{cmd}: {}", stderr(&o));
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&j).unwrap()).unwrap();
        assert_eq!(v["kind"], "workers", "{cmd}: {v}");
        assert_eq!(v["of"], cmd);
        let pids: Vec<i64> = v["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["pid"].as_i64().unwrap())
            .collect();
        let want: Vec<i64> = workers.iter().map(|&w| w as i64).collect();
        assert_eq!(pids, want, "{cmd}: one report per worker");
        assert!(!pids.contains(&(ng.master as i64)), "{cmd}: not the master");
        let text = String::from_utf8_lossy(&run(&[cmd, "-p", &master]).stdout).into_owned();
        for w in &workers {
            assert!(text.contains(&format!("== worker {w} ==")), "{cmd}: {text}");
        }
        assert!(
            text.contains(&format!("== total over 2 workers of master {master} ==")),
            "{cmd}: {text}"
        );
    }
    // refs totals: reachable bytes are the workers' sum; the leak's holder
    // is summed by path.
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("refs.json")).unwrap()).unwrap();
    let sum: u64 = v["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["reachable_bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(v["total"]["reachable_bytes"].as_u64(), Some(sum));
    let t: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("threads.json")).unwrap()).unwrap();
    let n: u64 = t["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["total"].as_u64().unwrap())
        .sum();
    assert_eq!(t["total"]["total"].as_u64(), Some(n));

    // diff warns when a master's total meets one worker's snapshot.
    let (all, one) = (d.join("all.json"), d.join("one.json"));
    let w0 = workers[0].to_string();
    assert!(run(&["objs", "-p", &master, "-o", all.to_str().unwrap()])
        .status
        .success());
    assert!(run(&["objs", "-p", &w0, "-o", one.to_str().unwrap()])
        .status
        .success());
    let o = run(&["diff", all.to_str().unwrap(), one.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("WARNING:") && out.contains("total of 2 workers") && out.contains(&w0),
        "{out}"
    );
    // Refs of the master diff against refs of the master, no warning.
    let o = run(&[
        "diff",
        d.join("refs.json").to_str().unwrap(),
        d.join("refs.json").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!String::from_utf8_lossy(&o.stdout).contains("WARNING"));
    std::fs::remove_dir_all(&d).ok();
}

/// A per-request leak under load that drops to a trickle halfway: over
/// time the curve flattens (it looks like a cache filling up), over
/// requests it is a straight line. With --requests-url the verdict is
/// about bytes per request: growing.
#[test]
fn watch_per_request_leak_under_varying_load_is_growing() {
    let Some(ng) = Nginx::start("app.conf", 1) else {
        return;
    };
    let port = ng.port;
    let url = format!("http://127.0.0.1:{port}/status");
    let pid = ng.worker().to_string();
    // Warm up (module loaded, first allocations done).
    for _ in 0..20 {
        ng.get("/leak?n=1");
    }
    let client = std::thread::spawn(move || {
        let t0 = std::time::Instant::now();
        let mut n = 0;
        while t0.elapsed() < std::time::Duration::from_millis(3200) {
            let heavy = t0.elapsed() < std::time::Duration::from_millis(1400);
            common::http_get(port, "/leak?n=1");
            n += 1;
            if !heavy {
                std::thread::sleep(std::time::Duration::from_millis(120));
            }
        }
        n
    });
    let d = tmpdir("watchreq");
    let svg = d.join("watch.svg");
    let o = run(&[
        "watch",
        "-p",
        &pid,
        "--interval",
        "200ms",
        "--count",
        "15",
        "--requests-url",
        &url,
        "--format",
        "jsonl",
        "-o",
        svg.to_str().unwrap(),
    ]);
    let sent = client.join().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let sum: Value = out
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find_map(|v| v.get("summary").cloned())
        .expect("a summary");
    assert!(sent > 50, "load was driven: {sent} requests");
    assert_eq!(sum["verdict"], "growing", "{sum:#}");
    assert_eq!(sum["per_request"]["verdict"], "growing", "{sum:#}");
    let per = sum["gc_bytes_per_request"].as_f64().unwrap();
    // Each /leak?n=1 keeps one 4 KiB cdata buffer plus a key table.
    assert!(per > 2_000.0 && per < 32_000.0, "bytes per request {per}");
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.contains("/request"), "the plot shows the fit used");
    std::fs::remove_dir_all(&d).ok();
}
