//! `ljleak threads` on live processes: a luajit2 script with coroutines
//! parked at two known lines, and an nginx worker with requests parked in
//! `ngx.sleep`.

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
        first.contains("threads.lua:12 (inner) ← ") && first.ends_with("threads.lua:21"),
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
    let bytes: u64 = by_bytes
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(bytes, r["stack_bytes"].as_u64().unwrap());
    assert!(
        bytes > (n + m) as u64 * 8 * 40,
        "each stack is at least LJ_STACK_START slots: {bytes}"
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

/// GET `path` on a connection left open; the request stays parked.
fn hold(port: u16, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("send");
    s
}

#[test]
fn threads_nginx_requests_parked_in_sleep() {
    let Some(ngx) = Nginx::start("threads.conf", 1) else {
        return;
    };
    let k = 9;
    let held: Vec<TcpStream> = (0..k).map(|_| hold(ngx.port, "/hold")).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = ngx.get("/waiting");
        if body.trim() == k.to_string() {
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
    let g = &r["groups"][0];
    assert_eq!(g["count"], k, "{r}");
    assert_eq!(g["status"], "suspended");
    let fr = frames(g);
    assert_eq!(fr.len(), 3, "{fr:?}");
    assert_eq!(fr[0], (s("c"), s(""), -1, s("ngx.sleep")));
    assert_eq!(fr[1], (s("lua"), s("sleeper.lua"), 6, s("sleeper.hold")));
    assert_eq!(fr[2].0, "lua");
    // The content_by_lua_block of /hold is on line 23 of the config.
    assert_eq!(g["stack"][2]["source"], "content_by_lua(nginx.conf:23)");
    assert_eq!(fr[2].2, 1, "line 1 of the block");
    // The worker's main thread is idle between requests.
    assert!(
        r["groups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["main"] == true && g["status"] == "idle"),
        "{r}"
    );
    drop(held);
}
