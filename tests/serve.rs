//! `ljleak serve` against the real clients: a Prometheus server scraping
//! it (queried through its HTTP API), `go tool pprof` reading its pprof
//! endpoints, signals in the middle of a pause, and bad input.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A private directory (mode 0700, created new: never an existing path).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        use std::os::unix::fs::DirBuilderExt;
        for i in 0..100u32 {
            let p = std::env::temp_dir().join(format!(
                "ljleak-{tag}-{}-{i}-{}",
                std::process::id(),
                free_port()
            ));
            if std::fs::DirBuilder::new().mode(0o700).create(&p).is_ok() {
                return TempDir(p);
            }
        }
        panic!("no temp dir");
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `ljleak serve`, killed on drop.
struct Serve {
    child: Child,
    port: u16,
}

impl Serve {
    fn start(args: &[&str]) -> Serve {
        for _ in 0..3 {
            let port = free_port();
            let listen = format!("127.0.0.1:{port}");
            let mut child = Command::new(ljleak())
                .args(["serve", "--listen", &listen])
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn ljleak serve");
            let mut err = BufReader::new(child.stderr.take().unwrap());
            // Warnings (a discovered process exiting) may come first.
            let mut line = String::new();
            loop {
                line.clear();
                if err.read_line(&mut line).unwrap_or(0) == 0 || !line.starts_with('[') {
                    break;
                }
                eprint!("serve: {line}");
            }
            if line.contains("listening on") {
                // Keep draining stderr so the server never blocks on it.
                std::thread::spawn(move || {
                    let mut l = String::new();
                    while err.read_line(&mut l).map(|n| n > 0).unwrap_or(false) {
                        eprint!("serve: {l}");
                        l.clear();
                    }
                });
                return Serve { child, port };
            }
            let _ = child.wait();
            assert!(line.contains("cannot listen"), "serve failed: {line}");
        }
        panic!("no free port for ljleak serve");
    }

    fn get(&self, path: &str) -> (u16, Vec<u8>) {
        http_get_bytes(self.port, path)
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET returning the raw body.
fn http_get_bytes(port: u16, path: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).ok();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("send");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head");
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, buf[end + 4..].to_vec())
}

/// A Prometheus server with its own config, data dir and port, scraping
/// `target` every second. Killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Prometheus {
    fn start(target: u16) -> Option<Prometheus> {
        if !require(
            "prometheus (Debian package)",
            Path::new("/usr/bin/prometheus").exists(),
        ) {
            return None;
        }
        let dir = TempDir::new("prom");
        let conf = dir.0.join("prometheus.yml");
        std::fs::write(
            &conf,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: ljleak\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("/usr/bin/prometheus")
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.0.join("prometheus.log")).unwrap(),
            ))
            .spawn()
            .expect("spawn prometheus");
        let p = Prometheus {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err()
            || http_get(port, "/-/ready").0 != 200
        {
            assert!(Instant::now() < deadline, "prometheus did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(p)
    }

    /// Instant query: (labels, value) of each series.
    fn query(&self, expr: &str) -> Vec<(serde_json::Value, f64)> {
        let enc: String = expr
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, body) = http_get(self.port, &format!("/api/v1/query?query={enc}"));
        assert_eq!(status, 200, "query {expr}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("query JSON");
        v["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|r| {
                let val = r["value"][1]
                    .as_str()
                    .unwrap_or("NaN")
                    .parse()
                    .unwrap_or(f64::NAN);
                (r["metric"].clone(), val)
            })
            .collect()
    }

    /// Wait until `expr` has a series for which `ok` holds; return its value.
    fn wait_for(&self, expr: &str, secs: u64, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let r = self.query(expr);
            if let Some((_, v)) = r.iter().find(|(_, v)| ok(*v)) {
                return *v;
            }
            assert!(
                Instant::now() < deadline,
                "{expr}: no acceptable value within {secs} s: {r:?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Keep a worker busy with requests to `path` until the guard drops.
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    h: Option<std::thread::JoinHandle<u64>>,
}

impl Load {
    fn start(port: u16, path: &'static str) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let h = std::thread::spawn(move || {
            let mut n = 0;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    let _ = http_get(port, path);
                    n += 1;
                }
            }
            n
        });
        Load { stop, h: Some(h) }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(h) = self.h.take() {
            let _ = h.join();
        }
    }
}

#[test]
fn prometheus_scrapes_gc_growth_census_and_replaced_worker() {
    let Some(ngx) = Nginx::start("serve.conf", 1) else {
        return;
    };
    let w = ngx.worker();
    assert_eq!(ngx.get("/fill?n=100").0, 200);
    let serve = Serve::start(&[
        "-p",
        &ngx.master.to_string(),
        "--census-interval",
        "1s",
        "--mem-interval",
        "500ms",
    ]);
    let Some(prom) = Prometheus::start(serve.port) else {
        return;
    };
    let _load = Load::start(ngx.port, "/hello");
    let sel = format!(
        "ljleak_luajit_gc_bytes{{pid=\"{w}\",master=\"{}\",worker=\"0\"}}",
        ngx.master
    );
    let before = prom.wait_for(&sel, 20, |v| v > 0.0);
    // The shared dict as Lua itself reports it: capacity() and free_space().
    let (cap, free) = dictstat(&ngx);
    let zone = |m: &str| format!("{m}{{zone=\"serve_cache\",master=\"{}\"}}", ngx.master);
    prom.wait_for(&zone("ljleak_shm_size_bytes"), 10, |v| v == cap);
    prom.wait_for(&zone("ljleak_shm_used_bytes"), 10, |v| v == cap - free);
    // 300 leaked entries of 10 x 4 KiB cdata: 12 MB that stay reachable.
    for _ in 0..300 {
        assert_eq!(ngx.get("/leak?n=10").0, 200);
    }
    let after = prom.wait_for(&sel, 10, |v| v > before + 12e6);
    assert!(after > before + 12e6, "{before} -> {after}");
    // The census loop's figures for the same worker: the leak is cdata.
    let cdata = format!("ljleak_object_bytes{{pid=\"{w}\",type=\"cdata\"}}");
    prom.wait_for(&cdata, 10, |v| v > 12e6);
    prom.wait_for("ljleak_pause_seconds_count", 10, |v| v >= 1.0);
    // Kill the worker: nginx starts another, and its PID shows up.
    unsafe_kill(w, 9);
    let deadline = Instant::now() + Duration::from_secs(10);
    let new = loop {
        let ws = ngx.workers();
        if let Some(&n) = ws.iter().find(|&&p| p != w) {
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "nginx did not replace the worker"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    prom.wait_for(
        &format!("ljleak_luajit_gc_bytes{{pid=\"{new}\",worker=\"0\"}}"),
        15,
        |v| v > 0.0,
    );
    prom.wait_for("ljleak_targets_gone_total", 10, |v| v >= 1.0);
    prom.wait_for("up{job=\"ljleak\"}", 5, |v| v == 1.0);
    assert!(
        proc_state(serve.pid()).is_some_and(|s| s != 'Z'),
        "serve died"
    );
}

/// (capacity, free space) of the `serve_cache` dict, from Lua.
fn dictstat(ngx: &Nginx) -> (f64, f64) {
    let (status, body) = ngx.get("/dictstat");
    assert_eq!(status, 200, "{body}");
    let v: Vec<f64> = body
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    (v[0], v[1])
}

/// Value of the one sample of `/metrics` text whose line starts with
/// `prefix` (name and leading labels).
fn sample(text: &str, prefix: &str) -> f64 {
    let l: Vec<&str> = text.lines().filter(|l| l.starts_with(prefix)).collect();
    assert_eq!(l.len(), 1, "{prefix}:\n{text}");
    l[0].rsplit_once(' ').unwrap().1.parse().unwrap()
}

#[test]
fn mem_metrics_match_lua_and_proc() {
    let Some(ngx) = Nginx::start("serve.conf", 1) else {
        return;
    };
    let w = ngx.worker();
    assert_eq!(ngx.get("/fill?n=300").0, 200);
    let (cap, free) = dictstat(&ngx);
    let serve = Serve::start(&["-p", &ngx.master.to_string()]);
    let text = String::from_utf8(serve.get("/metrics").1).unwrap();
    let m = ngx.master;
    let zl = format!("{{master=\"{m}\",zone=\"serve_cache\",kind=\"lua_shared_dict\"}}");
    assert_eq!(sample(&text, &format!("ljleak_shm_size_bytes{zl}")), cap);
    assert_eq!(
        sample(&text, &format!("ljleak_shm_used_bytes{zl}")),
        cap - free
    );
    assert!(
        cap - free > 300.0 * 1024.0,
        "300 values of 1 KiB: {cap} {free}"
    );
    // Components add up to the worker's resident size.
    let mine = format!("{{master=\"{m}\",pid=\"{w}\",component=");
    let rss: f64 = text
        .lines()
        .filter(|l| l.starts_with(&format!("ljleak_memory_bytes{mine}")))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum();
    let status = std::fs::read_to_string(format!("/proc/{w}/status")).unwrap();
    let vmrss: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse::<f64>()
        .unwrap()
        * 1024.0;
    assert!(
        (rss - vmrss).abs() < vmrss * 0.1,
        "components {rss} vs VmRSS {vmrss}"
    );
    assert!(
        sample(
            &text,
            &format!("ljleak_memory_bytes{mine}\"luajit_arena\"}}")
        ) > 0.0
    );
    // fds by kind add up to /proc/PID/fd; the listening socket is there.
    let fds: f64 = text
        .lines()
        .filter(|l| l.starts_with(&format!("ljleak_fds{{master=\"{m}\",pid=\"{w}\"")))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum();
    let open = std::fs::read_dir(format!("/proc/{w}/fd")).unwrap().count() as f64;
    assert_eq!(fds, open, "{text}");
    assert!(
        sample(
            &text,
            &format!("ljleak_tcp_sockets{{master=\"{m}\",pid=\"{w}\",state=\"LISTEN\"}}")
        ) >= 1.0
    );
    // serve.conf's init_worker_by_lua starts one timer pending for an hour.
    let tl = |st: &str| format!("ljleak_timers{{master=\"{m}\",pid=\"{w}\",state=\"{st}\"}}");
    assert_eq!(sample(&text, &tl("pending")), 1.0, "{text}");
    assert_eq!(sample(&text, &tl("running")), 0.0, "{text}");
}

/// Sums of each sample type in `go tool pprof -raw SOURCE`, and the raw text.
fn pprof_raw(source: &str, tmp: &Path) -> (Vec<i64>, String) {
    let out = Command::new("go")
        .args(["tool", "pprof", "-raw", source])
        .env("HOME", tmp)
        .env("PPROF_TMPDIR", tmp)
        .env("GOCACHE", tmp.join("gocache"))
        .output()
        .expect("run go tool pprof");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "go tool pprof -raw {source}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut sums: Vec<i64> = Vec::new();
    let mut in_samples = false;
    for line in text.lines() {
        if line.starts_with("Samples:") {
            in_samples = true;
            continue;
        }
        if line.starts_with("Locations") {
            break;
        }
        let Some((vals, _)) = line.split_once(':') else {
            continue;
        };
        if !in_samples {
            continue;
        }
        let v: Vec<i64> = vals
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if v.is_empty() {
            continue;
        }
        sums.resize(v.len().max(sums.len()), 0);
        for (s, x) in sums.iter_mut().zip(v) {
            *s += x;
        }
    }
    (sums, text)
}

fn have_go() -> bool {
    require(
        "go tool pprof (golang-go)",
        Command::new("go")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success()),
    )
}

#[test]
fn go_pprof_reads_heap_and_goroutine_matching_objs_and_threads() {
    if !have_go() {
        return;
    }
    let tmp = TempDir::new("pprof");
    let Some(ngx) = Nginx::start("app.conf", 1) else {
        return;
    };
    let w = ngx.worker();
    for _ in 0..20 {
        ngx.get("/leak?n=2");
    }
    // Always a fresh census: the served profile and objs see the same
    // quiescent heap.
    let serve = Serve::start(&[
        "-p",
        &ngx.master.to_string(),
        "--min-census-interval",
        "10ms",
    ]);
    let file = tmp.0.join("objs.pb.gz");
    let out = run(&[
        "objs",
        "-p",
        &w.to_string(),
        "--format",
        "pprof",
        "-o",
        file.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (want, _) = pprof_raw(file.to_str().unwrap(), &tmp.0);
    let url = format!(
        "http://127.0.0.1:{}/debug/pprof/heap?pid={w}&seconds=30",
        serve.port
    );
    let (got, raw) = pprof_raw(&url, &tmp.0);
    assert_eq!(
        got, want,
        "served heap profile vs objs --format pprof\n{raw}"
    );
    let c = census(w);
    let objects: i64 = [
        "string", "table", "cdata", "function", "proto", "upvalue", "thread", "trace", "userdata",
    ]
    .iter()
    .map(|t| ty(&c, t, "count"))
    .sum();
    let bytes: i64 = [
        "string", "table", "cdata", "function", "proto", "upvalue", "thread", "trace", "userdata",
    ]
    .iter()
    .map(|t| ty(&c, t, "sum"))
    .sum();
    assert_eq!(got, vec![objects, bytes], "profile totals vs objs JSON");
    assert!(raw.contains("char[?]"), "cdata by C type: {raw}");
    // Without pid, the one worker alone, the same totals; /allocs too.
    let (all, _) = pprof_raw(
        &format!("http://127.0.0.1:{}/debug/pprof/allocs", serve.port),
        &tmp.0,
    );
    assert_eq!(all, want);
    drop(serve);
    drop(ngx);

    // Goroutines: parked requests against `ljleak threads`.
    let Some(ngx) = Nginx::start("threads.conf", 1) else {
        return;
    };
    let w = ngx.worker();
    let k = 6;
    let _held: Vec<TcpStream> = (0..k)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", ngx.port)).unwrap();
            write!(s, "GET /hold HTTP/1.0\r\n\r\n").unwrap();
            s
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while ngx.get("/waiting").1.trim() != k.to_string() {
        assert!(Instant::now() < deadline, "requests did not park");
        std::thread::sleep(Duration::from_millis(20));
    }
    let serve = Serve::start(&["-p", &w.to_string(), "--min-census-interval", "10ms"]);
    let t = run_json(&[
        "threads",
        "-p",
        &w.to_string(),
        "--format",
        "json",
        "--no-retained",
    ]);
    let url = format!(
        "http://127.0.0.1:{}/debug/pprof/goroutine?pid={w}",
        serve.port
    );
    let (got, raw) = pprof_raw(&url, &tmp.0);
    assert_eq!(got, vec![t["total"].as_i64().unwrap()], "{raw}");
    assert_eq!(t["by_status"]["suspended"], k, "{t}");
    assert!(
        raw.contains("sleeper.hold") && raw.contains("suspended"),
        "{raw}"
    );
    // An unknown pid is a 404 with a message, not a pause of anything.
    let (status, body) = serve.get("/debug/pprof/heap?pid=1");
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
}

#[test]
fn killed_or_stopped_mid_census_leaves_no_target_stopped() {
    let Some(ngx) = Nginx::start("app.conf", 1) else {
        return;
    };
    let w = ngx.worker();
    for sig in [9, 15] {
        let serve = Serve::start(&[
            "-p",
            &w.to_string(),
            "--min-census-interval",
            "10ms",
            "--debug-hold-pause-ms",
            "3000",
        ]);
        let port = serve.port;
        let req = std::thread::spawn(move || {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let _ = write!(s, "GET /debug/pprof/heap HTTP/1.0\r\n\r\n");
            let mut b = Vec::new();
            let _ = s.read_to_end(&mut b);
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !matches!(proc_state(w), Some('t') | Some('T')) {
            assert!(Instant::now() < deadline, "serve never paused the worker");
            std::thread::sleep(Duration::from_millis(5));
        }
        let t0 = Instant::now();
        let mut serve = serve;
        unsafe_kill(serve.pid(), sig);
        let status = serve.child.wait().unwrap();
        if sig == 15 {
            assert_eq!(status.code(), Some(0), "SIGTERM is a clean stop");
        }
        let _ = req.join();
        let deadline = Instant::now() + Duration::from_secs(3);
        while matches!(proc_state(w), Some('t') | Some('T')) {
            assert!(
                Instant::now() < deadline,
                "worker left stopped after signal {sig}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert_eq!(ngx.get("/hello"), (200, "hello\n".into()), "signal {sig}");
    }
}

/// Run serve expecting failure: (exit code, stderr).
fn serve_fails(pre: &[&str], args: &[&str]) -> (i32, String) {
    let mut cmd = if pre.is_empty() {
        Command::new(ljleak())
    } else {
        let mut c = Command::new(pre[0]);
        c.args(&pre[1..]).arg(ljleak());
        c
    };
    let out = cmd
        .arg("serve")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run serve");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("ljleak: "), "{err}");
    (out.status.code().unwrap_or(-1), err)
}

#[test]
fn bad_input_one_line_and_documented_codes() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = format!("127.0.0.1:{}", busy.local_addr().unwrap().port());
    let me = std::process::id().to_string();
    let (code, err) = serve_fails(&[], &["--listen", &taken, "-p", &me]);
    assert_eq!(code, 30, "{err}");
    assert!(
        err.contains("cannot listen") && err.contains("--listen"),
        "{err}"
    );
    let (code, err) = serve_fails(&[], &["--listen", "0.0.0.0:0", "-p", &me]);
    assert_eq!(code, 30, "{err}");
    assert!(err.contains("--allow-remote"), "{err}");
    // A PID that no longer exists.
    let mut c = Command::new("true").spawn().unwrap();
    let gone = c.id().to_string();
    c.wait().unwrap();
    let free = format!("127.0.0.1:{}", free_port());
    let (code, err) = serve_fails(&[], &["--listen", &free, "-p", &gone]);
    assert_eq!(code, 4, "{err}");
    // A live process without LuaJIT (this test binary).
    let (code, err) = serve_fails(&[], &["--listen", &free, "-p", &me]);
    assert_eq!(code, 6, "{err}");
    // --discover on a box without nginx: a fresh PID namespace shows none.
    if require(
        "unshare (util-linux)",
        Path::new("/usr/bin/unshare").exists(),
    ) {
        let (code, err) = serve_fails(
            &["/usr/bin/unshare", "--pid", "--fork", "--mount-proc"],
            &["--listen", &free, "--discover", "nginx"],
        );
        assert_eq!(code, 31, "{err}");
        assert!(err.contains("--discover"), "{err}");
    }
    // --allow-remote listens on every address, with a warning first.
    let mut c = Command::new(ljleak())
        .args([
            "serve",
            "--listen",
            &format!("0.0.0.0:{}", free_port()),
            "--allow-remote",
            "-p",
            &me,
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(c.stderr.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let _ = c.kill();
    let _ = c.wait();
    assert!(first.contains("sensitive"), "{first}");
    // --help shows the scrape configs.
    let out = run(&["serve", "--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("scrape_configs:") && help.contains("pyroscope.scrape"),
        "{help}"
    );
}

#[test]
fn discover_finds_nginx_masters_and_metrics_are_well_formed() {
    let Some(ngx) = Nginx::start("app.conf", 2) else {
        return;
    };
    let serve = Serve::start(&["--discover", "nginx"]);
    let (status, body) = serve.get("/metrics");
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    for w in ngx.workers() {
        let line = text
            .lines()
            .find(|l| {
                l.starts_with("ljleak_luajit_gc_bytes{")
                    && l.contains(&format!("master=\"{}\",pid=\"{w}\"", ngx.master))
            })
            .unwrap_or_else(|| panic!("worker {w} missing:\n{text}"));
        let v: u64 = line.rsplit_once(' ').unwrap().1.parse().unwrap();
        let (_, count) = ngx.get("/count");
        // The VM's own figure moves by what serving /count allocates.
        let lua: u64 = count.trim().parse().unwrap();
        assert!(v > 100_000 && v < lua * 2, "{line} vs {lua}");
    }
    // Both worker slots are labelled, 0 and 1.
    for slot in ["0", "1"] {
        assert!(
            text.contains(&format!("worker=\"{slot}\"}} ")),
            "slot {slot}:\n{text}"
        );
    }
    // Every sample belongs to a family announced by HELP and TYPE.
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let name = l.split(['{', ' ']).next().unwrap();
        let fam = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| text.contains(&format!("# TYPE {f} histogram")))
            })
            .unwrap_or(name);
        assert!(text.contains(&format!("# HELP {fam} ")), "{l}");
        assert!(text.contains(&format!("# TYPE {fam} ")), "{l}");
    }
    // Scrapes alone never pause a worker.
    for _ in 0..20 {
        assert_eq!(serve.get("/metrics").0, 200);
    }
    let text = String::from_utf8(serve.get("/metrics").1).unwrap();
    assert!(text.contains("\nljleak_pause_seconds_count 0\n"), "{text}");
    assert!(text.contains("\nljleak_censuses_total 0\n"), "{text}");
    let (status, index) = serve.get("/");
    assert_eq!(status, 200);
    let index = String::from_utf8(index).unwrap();
    assert!(
        index.contains("/metrics") && index.contains("/debug/pprof/heap"),
        "{index}"
    );
    assert_eq!(serve.get("/nope").0, 404);
}
