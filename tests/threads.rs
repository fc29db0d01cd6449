//! `ljleak threads` on live processes: a luajit2 script with coroutines
//! parked at two known lines, one whose coroutines retain known bytes, and
//! an nginx worker with requests parked in `ngx.sleep`.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{luajit, require, run, run_json, testdata, LuaProc, Nginx};
use serde_json::Value;

/// `(kind, source file name, line, name)` of each frame of a group.
fn frames(g: &Value) -> Vec<(String, String, i64, String)> {
    g["stack"]
        .as_array()
        .expect("stack")
        .iter()
        .map(|f| {
            let src = f["source"].as_str().unwrap_or("");
            let base = src.rsplit('/').next().unwrap_or("").to_string();
            (
                f["kind"].as_str().unwrap_or("").to_string(),
                base,
                f["line"].as_i64().unwrap_or(-1),
                f["name"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn s(x: &str) -> String {
    x.to_string()
}

#[test]
fn threads_luajit_groups_by_line() {
    let Some(lj) = luajit() else {
        require("/usr/bin/luajit (luajit2)", false);
        return;
    };
    let (n, m) = (7usize, 4usize);
    let mut p = LuaProc::spawn(
        &lj,
        &testdata("lua/threads.lua"),
        &[&n.to_string(), &m.to_string()],
    );
    assert_eq!(p.ready(), "threads");
    let pid = p.pid.to_string();
    let r = run_json(&["threads", "-p", &pid, "--format", "json"]);
    assert_eq!(r["total"], (n + m + 1) as u64, "{r}");
    assert_eq!(r["by_status"]["suspended"], (n + m) as u64);
    assert_eq!(r["by_status"]["running"], 1);
    let groups = r["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 3, "{r}");
    // Biggest group first.
    assert_eq!(groups[0]["count"], n as u64);
    assert_eq!(groups[0]["status"], "suspended");
    let f = "threads.lua";
    assert_eq!(
        frames(&groups[0]),
        vec![
            (s("builtin"), s(""), -1, s("coroutine.yield")),
            (s("lua"), s(f), 12, s("")),
            (s("lua"), s(f), 17, s("")),
            (s("builtin"), s(""), -1, s("pcall")),
            (s("lua"), s(f), 21, s("")),
        ]
    );
    // Call-site names as debug.traceback prints them.
    assert_eq!(groups[0]["stack"][1]["called"], "inner");
    assert_eq!(groups[0]["stack"][2].get("called"), None);
    assert_eq!(groups[1]["stack"][1]["called"], "__index");
    assert_eq!(groups[1]["count"], m as u64);
    assert_eq!(
        frames(&groups[1]),
        vec![
            (s("builtin"), s(""), -1, s("coroutine.yield")),
            (s("lua"), s(f), 27, s("")),
            (s("lua"), s(f), 34, s("")),
        ]
    );
    assert_eq!(groups[2]["count"], 1);
    assert_eq!(groups[2]["main"], true);
    assert_eq!(groups[2]["status"], "running");
    assert_eq!(
        frames(&groups[2])[..2],
        [
            (s("builtin"), s(""), -1, s("io.read")),
            (s("lua"), s(f), 56, s(""))
        ]
    );

    // Text: Go-profile style, biggest group first.
    let out = run(&["threads", "-p", &pid]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text
        .lines()
        .find(|l| l.contains(" @ "))
        .expect("a group line");
    assert!(
        first.starts_with(&format!("{n} @ coroutine.yield ← ")),
        "{text}"
    );
    assert!(
        first.contains("threads.lua:12 (inner) ← ")
            && first.contains("threads.lua:21 (retained ")
            && first.ends_with(" KiB)"),
        "{first}"
    );

    // Folded, by count and by bytes (the groups' stack bytes).
    let folded =
        String::from_utf8_lossy(&run(&["threads", "-p", &pid, "--format", "folded"]).stdout)
            .into_owned();
    let line = folded
        .lines()
        .find(|l| l.ends_with("(inner);coroutine.yield 7"))
        .expect("group a folded");
    assert!(
        line.starts_with("suspended;") && line.contains("threads.lua:21;pcall;"),
        "{line}"
    );
    let by_bytes = String::from_utf8_lossy(
        &run(&[
            "threads", "-p", &pid, "--format", "folded", "--weight", "bytes",
        ])
        .stdout,
    )
    .into_owned();
    let bytes = folded_sum(&by_bytes);
    let retained: u64 = groups.iter().map(|g| g["retained"].as_u64().unwrap()).sum();
    assert_eq!(bytes, retained);
    assert!(
        bytes > r["stack_bytes"].as_u64().unwrap(),
        "the main thread retains the others: {bytes}"
    );
    assert!(
        r["stack_bytes"].as_u64().unwrap() > (n + m) as u64 * 8 * 40,
        "each stack is at least LJ_STACK_START slots"
    );

    // Flame graph.
    let svg = std::env::temp_dir().join(format!("ljleak-threads-{}.svg", p.pid));
    let out = run(&["threads", "-p", &pid, "-o", svg.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body = std::fs::read_to_string(&svg).expect("svg written");
    let _ = std::fs::remove_file(&svg);
    assert!(
        body.contains("<svg") && body.contains("coroutine.yield"),
        "not a flame graph"
    );
    drop(p);
}

/// Sum of the weights of folded lines.
fn folded_sum(folded: &str) -> u64 {
    folded
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[test]
fn threads_retained_bytes_are_exact() {
    let Some(lj) = luajit() else {
        require("/usr/bin/luajit (luajit2)", false);
        return;
    };
    // N holders of a table of K cdata of SIZE bytes each, M idle threads.
    let (n, m, k, size) = (6u64, 4u64, 100u64, 200u64);
    let args = [n, m, k, size].map(|x| x.to_string());
    let mut p = LuaProc::spawn(
        &lj,
        &testdata("lua/threads_retained.lua"),
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(p.ready(), "retained");
    let pid = p.pid.to_string();
    // The census measures the cdata independently: one type with N × K
    // objects, header + payload each.
    let census = common::census(p.pid);
    assert_eq!(
        census["luajit"]["gc64"], true,
        "luajit2 is a GC64 build: the table size below assumes it"
    );
    let cdata: Vec<&Value> = census["cdata_types"]
        .as_array()
        .expect("cdata_types")
        .iter()
        .filter(|t| t["count"] == n * k)
        .collect();
    assert_eq!(cdata.len(), 1, "{}", census["cdata_types"]);
    let cdata_size = cdata[0]["sum"].as_u64().unwrap() / (n * k);
    assert_eq!(cdata_size, 16 + size, "GCcdata header + payload");
    // table.new(K, 0): a GCtab (64 bytes) and an array part of K + 1 slots.
    let table = 64 + 8 * (k + 1);

    let r = run_json(&["threads", "-p", &pid, "--format", "json"]);
    let groups = r["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 3, "{r}");
    let (holders, idle) = (&groups[0], &groups[1]);
    assert_eq!(holders["count"], n);
    assert_eq!(frames(holders)[1].2, 19, "{holders}");
    assert_eq!(idle["count"], m);
    assert_eq!(frames(idle)[1].2, 24, "{idle}");
    // Same code, same stack size: each thread's own bytes are its share.
    let own = |g: &Value, c: u64| {
        let b = g["stack_bytes"].as_u64().unwrap();
        assert_eq!(b % c, 0, "equal stacks in {g}");
        b / c
    };
    let per_holder = own(holders, n) + table + k * cdata_size;
    assert_eq!(
        holders["thread_retained"],
        serde_json::json!(vec![per_holder; n as usize]),
        "own size + table + K cdata: {holders}"
    );
    assert_eq!(holders["retained"], n * per_holder, "{holders}");
    assert!(holders["retained"].as_u64().unwrap() >= n * k * cdata_size);
    let per_idle = own(idle, m);
    assert_eq!(
        idle["thread_retained"],
        serde_json::json!(vec![per_idle; m as usize])
    );
    assert_eq!(
        idle["retained"], idle["stack_bytes"],
        "idle threads hold nothing"
    );
    // The main thread holds the list of coroutines in a local, so it
    // retains them all; the report's total counts each byte once.
    let main = &groups[2];
    assert_eq!(main["main"], true);
    let main_ret = main["retained"].as_u64().unwrap();
    assert!(
        main_ret > n * per_holder + m * per_idle + own(main, 1),
        "{main}"
    );
    assert_eq!(r["retained"], main_ret, "{r}");

    // Folded by bytes: one line per group weighing its retained bytes.
    let folded = String::from_utf8_lossy(
        &run(&[
            "threads", "-p", &pid, "--format", "folded", "--weight", "bytes",
        ])
        .stdout,
    )
    .into_owned();
    let line = folded
        .lines()
        .find(|l| l.contains("threads_retained.lua:19;"))
        .unwrap_or_else(|| panic!("no holders line in {folded}"));
    assert!(line.ends_with(&format!(" {}", n * per_holder)), "{line}");
    let sum: u64 = groups.iter().map(|g| g["retained"].as_u64().unwrap()).sum();
    assert_eq!(folded_sum(&folded), sum, "{folded}");
    // Text: retained bytes on each group line.
    let out = run(&["threads", "-p", &pid]);
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().find(|l| l.contains(" @ ")).expect("group");
    let kib = n * per_holder / 1024;
    assert!(
        first.starts_with(&format!("{n} @ ")) && first.contains(&format!("(retained {kib}.")),
        "{text}"
    );
    // --no-retained leaves the field out.
    let r = run_json(&["threads", "-p", &pid, "--format", "json", "--no-retained"]);
    assert!(r["groups"][0].get("retained").is_none(), "{r}");
    drop(p);
}

/// GET `path` on a connection left open; the request stays parked.
fn hold(port: u16, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("send");
    s
}

#[test]
fn threads_nginx_requests_parked_in_sleep_and_receive() {
    let Some(ngx) = Nginx::start("threads.conf", 1) else {
        return;
    };
    // A peer that accepts and never sends: /recv requests stay in receive.
    let peer = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let peer_port = peer.local_addr().unwrap().port();
    let (k, k2) = (9, 4);
    let accepted = std::thread::spawn(move || {
        (0..k2)
            .map(|_| peer.accept().expect("accept").0)
            .collect::<Vec<_>>()
    });
    let mut held: Vec<TcpStream> = (0..k).map(|_| hold(ngx.port, "/hold")).collect();
    let recv_path = format!("/recv?port={peer_port}");
    held.extend((0..k2).map(|_| hold(ngx.port, &recv_path)));
    let _peers = accepted.join().expect("peer connections");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = ngx.get("/waiting");
        if body.trim() == (k + k2).to_string() {
            break;
        }
        assert!(Instant::now() < deadline, "requests did not park: {body}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = run_json(&[
        "threads",
        "-p",
        &ngx.worker().to_string(),
        "--format",
        "json",
    ]);
    assert_eq!(r["by_status"]["suspended"], k + k2, "{r}");
    let g = &r["groups"][0];
    assert_eq!(g["count"], k, "{r}");
    assert_eq!(g["status"], "suspended");
    let fr = frames(g);
    assert_eq!(fr.len(), 3, "{fr:?}");
    assert_eq!(fr[0], (s("c"), s(""), -1, s("ngx.sleep")));
    assert_eq!(fr[1], (s("lua"), s("sleeper.lua"), 8, s("sleeper.hold")));
    assert_eq!(fr[2].0, "lua");
    // The content_by_lua_block of /hold is on line 24 of the config.
    assert_eq!(g["stack"][2]["source"], "content_by_lua(nginx.conf:24)");
    assert_eq!(fr[2].2, 1, "line 1 of the block");
    // The receive group: whatever implements receive (C or resty.core Lua),
    // the frame of sleeper.recv is at line 18, under the /recv block.
    let g2 = &r["groups"][1];
    assert_eq!(g2["count"], k2, "{r}");
    let fr2 = frames(g2);
    let at = fr2
        .iter()
        .position(|f| f.1 == "sleeper.lua")
        .unwrap_or_else(|| panic!("no sleeper.lua frame in {fr2:?}"));
    assert_eq!(fr2[at], (s("lua"), s("sleeper.lua"), 18, s("sleeper.recv")));
    assert_eq!(
        g2["stack"][at + 1]["source"],
        "content_by_lua(nginx.conf:25)"
    );
    assert_eq!(g2["stack"][at - 1]["called"], "receive", "{g2}");
    // The worker's main thread is idle between requests.
    let groups = r["groups"].as_array().unwrap();
    assert!(
        groups
            .iter()
            .any(|g| g["main"] == true && g["status"] == "idle"),
        "{r}"
    );
    drop(held);
}

#[test]
fn threads_bad_targets_have_documented_exit_codes() {
    let out = run(&["threads", "-p", "999999"]);
    assert_eq!(out.status.code(), Some(4), "no such process");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no such process"), "{err}");
    // A process without LuaJIT: the test binary itself.
    let out = run(&["threads", "-p", &std::process::id().to_string()]);
    assert_eq!(out.status.code(), Some(6), "no VM");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no LuaJIT VM"));
}
