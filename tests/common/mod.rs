//! Shared helpers for the live integration tests: spawn real luajit / nginx
//! processes behind kill-on-drop guards, drive them, run the ljleak binary.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

/// The ljleak binary built for these tests.
pub fn ljleak() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ljleak"))
}

/// Repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A file under testdata/.
pub fn testdata(rel: &str) -> PathBuf {
    root().join("testdata").join(rel)
}

/// Run ljleak with arguments.
pub fn run(args: &[&str]) -> Output {
    Command::new(ljleak())
        .args(args)
        .output()
        .expect("run ljleak")
}

/// Run ljleak, require success, parse stdout as JSON.
pub fn run_json(args: &[&str]) -> serde_json::Value {
    let out = run(args);
    assert!(
        out.status.success(),
        "ljleak {:?} failed: {}\n{}",
        args,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "bad JSON from {:?}: {e}\n{}",
            args,
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `ljleak objs -p PID --format json`.
pub fn census(pid: i32) -> serde_json::Value {
    run_json(&["objs", "-p", &pid.to_string(), "--format", "json"])
}

/// In CI (CI=true) a missing prerequisite is a failure, never a silent skip.
pub fn require(what: &str, ok: bool) -> bool {
    if !ok {
        if std::env::var("CI")
            .map(|v| v == "true" || v == "1")
            .unwrap_or(false)
        {
            panic!("prerequisite missing in CI: {what} (scripts/test.sh installs it)");
        }
        eprintln!("SKIP: prerequisite missing: {what}");
    }
    ok
}

/// Debian's luajit2 interpreter.
pub fn luajit() -> Option<PathBuf> {
    let p = PathBuf::from("/usr/bin/luajit");
    p.exists().then_some(p)
}

/// A LuaJIT variant built by scripts/build-luajit-variants.sh.
pub fn variant(name: &str, stripped: bool) -> Option<PathBuf> {
    let dir = std::env::var("LJLEAK_VARIANTS_DIR")
        .unwrap_or_else(|_| "/var/cache/ljleak/luajit-variants".into());
    let p = Path::new(&dir).join(name).join(if stripped {
        "luajit.stripped"
    } else {
        "luajit"
    });
    p.exists().then_some(p)
}

/// A Lua script running under an interpreter, talking the checkpoint
/// protocol of testdata/lua/*.lua: the script prints `ready NAME` and blocks
/// in `io.read(0)` (which allocates nothing); the test inspects it, then
/// sends a newline; the script prints `total BYTES` measured right after
/// waking (so it equals gc.total while it was blocked) and goes on.
pub struct LuaProc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Process ID.
    pub pid: i32,
}

impl LuaProc {
    /// Start `interp script args...`.
    pub fn spawn(interp: &Path, script: &Path, args: &[&str]) -> LuaProc {
        let mut cmd = Command::new(interp);
        cmd.arg(script).args(args);
        Self::spawn_cmd(cmd)
    }

    /// Start a prepared command (which must end up exec'ing the script with
    /// the same PID, e.g. through `sh -c 'exec ...'`).
    pub fn spawn_cmd(mut cmd: Command) -> LuaProc {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let rx = lines_of(child.stdout.take().expect("stdout"));
        LuaProc {
            pid: child.id() as i32,
            stdin: child.stdin.take(),
            child,
            lines: rx,
        }
    }

    /// Next output line starting with `prefix` (others are skipped), within 60 s.
    pub fn expect(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l[prefix.len()..].trim().to_string(),
                Ok(_) => continue,
                Err(_) => panic!("script did not print `{prefix}` in time"),
            }
        }
    }

    /// Wait for `ready NAME`; returns NAME.
    pub fn ready(&mut self) -> String {
        self.expect("ready ")
    }

    /// Wake the script from its checkpoint and read the `total` it measured.
    pub fn resume_total(&mut self) -> u64 {
        self.send("\n");
        self.expect("total ").parse().expect("total is a number")
    }

    /// Write to the script's stdin.
    pub fn send(&mut self, s: &str) {
        let w = self.stdin.as_mut().expect("stdin open");
        w.write_all(s.as_bytes()).expect("write to script");
        w.flush().expect("flush");
    }

    /// Close stdin (the script sees EOF).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Kill now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LuaProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Start `testdata/lua/SCRIPT` under `interp`, passing the testdata folder
/// as its first argument (the scripts find checkpoint.lua through it).
pub fn spawn_script(interp: &Path, script: &str, args: &[&str]) -> LuaProc {
    let td = testdata("");
    let mut all = vec![td.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    LuaProc::spawn(interp, &testdata(&format!("lua/{script}")), &all)
}

/// Same, under Debian's luajit2; None (a skip, or a failure in CI) when it
/// is not installed.
pub fn luajit_script(script: &str, args: &[&str]) -> Option<LuaProc> {
    let Some(lj) = luajit() else {
        require("/usr/bin/luajit (Debian luajit2)", false);
        return None;
    };
    Some(spawn_script(&lj, script, args))
}

/// At a checkpoint: take a census, wake the script, and check that ljleak's
/// gc.total is the VM's own figure and that the walker agrees to the byte.
pub fn census_at_checkpoint(p: &mut LuaProc) -> serde_json::Value {
    let c = census(p.pid);
    let total = p.resume_total();
    assert_eq!(
        c["gc_total"].as_u64().expect("gc_total"),
        total,
        "gc.total read by ljleak vs the VM's own count"
    );
    assert_eq!(
        c["walker_total"], c["gc_total"],
        "walker total must equal gc.total: {c:#}"
    );
    c
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// An nginx master with its workers, started from a config template under
/// testdata/nginx (`@PORT@`, `@PREFIX@`, `@TESTDATA@`, `@WORKERS@` are
/// substituted). Stopped (and every worker killed) on drop.
pub struct Nginx {
    /// Master PID.
    pub master: i32,
    /// Listening port.
    pub port: u16,
    /// Prefix directory (logs, pid file).
    pub prefix: PathBuf,
}

impl Nginx {
    /// Start nginx with `conf` (a file name under testdata/nginx). A port
    /// taken between `free_port` and nginx's bind is retried with another.
    pub fn start(conf: &str, workers: u32) -> Option<Nginx> {
        if !require(
            "nginx with the lua module",
            Path::new("/usr/sbin/nginx").exists(),
        ) {
            return None;
        }
        for attempt in 0..3 {
            match Self::try_start(conf, workers) {
                Ok(n) => return Some(n),
                Err(log) if log.contains("Address already in use") && attempt < 2 => continue,
                Err(log) => panic!("nginx failed to start:\n{log}"),
            }
        }
        unreachable!()
    }

    fn try_start(conf: &str, workers: u32) -> Result<Nginx, String> {
        let port = free_port();
        let prefix =
            std::env::temp_dir().join(format!("ljleak-nginx-{}-{port}", std::process::id()));
        std::fs::create_dir_all(prefix.join("logs")).expect("prefix");
        let text = std::fs::read_to_string(testdata(&format!("nginx/{conf}")))
            .expect("config template")
            .replace("@PORT@", &port.to_string())
            .replace("@PREFIX@", &prefix.to_string_lossy())
            .replace("@TESTDATA@", &testdata("").to_string_lossy())
            .replace("@WORKERS@", &workers.to_string());
        let conf_path = prefix.join("nginx.conf");
        std::fs::write(&conf_path, text).expect("write config");
        // The guard exists before nginx does, so every failure below stops
        // whatever was started (Drop reads the pid file).
        let mut n = Nginx {
            master: 0,
            port,
            prefix: prefix.clone(),
        };
        let st = Command::new("/usr/sbin/nginx")
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf_path)
            .stderr(Stdio::piped())
            .output()
            .expect("run nginx");
        let log = || {
            std::fs::read_to_string(prefix.join("logs/error.log")).unwrap_or_default()
                + &String::from_utf8_lossy(&st.stderr)
        };
        if !st.status.success() {
            return Err(log());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        n.master = loop {
            if let Some(p) = n.pid_from_file() {
                break p;
            }
            if Instant::now() > deadline {
                return Err(format!("nginx wrote no pid file\n{}", log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // Wait until it answers.
        while n.workers().len() < workers as usize
            || TcpStream::connect(("127.0.0.1", port)).is_err()
        {
            if Instant::now() > deadline {
                return Err(format!("nginx did not come up\n{}", log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(n)
    }

    fn pid_from_file(&self) -> Option<i32> {
        std::fs::read_to_string(self.prefix.join("logs/nginx.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Worker PIDs (children of the master).
    pub fn workers(&self) -> Vec<i32> {
        children(self.master)
    }

    /// The single worker (panics if not exactly one).
    pub fn worker(&self) -> i32 {
        let w = self.workers();
        assert_eq!(w.len(), 1, "expected one worker, got {w:?}");
        w[0]
    }

    /// GET `path`, return (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.port, path)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if self.master == 0 {
            match self.pid_from_file() {
                Some(p) => self.master = p,
                None => {
                    let _ = std::fs::remove_dir_all(&self.prefix);
                    return;
                }
            }
        }
        let workers = self.workers();
        unsafe_kill(self.master, 9);
        for w in workers {
            unsafe_kill(w, 9);
        }
        std::thread::sleep(Duration::from_millis(50));
        let _ = std::fs::remove_dir_all(&self.prefix);
    }
}

/// Send a signal with the kill(1) command (no unsafe in tests).
pub fn unsafe_kill(pid: i32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// Child PIDs of `pid`.
pub fn children(pid: i32) -> Vec<i32> {
    let mut v = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
                // Fields after the command name in parentheses.
                if let Some(rest) = stat.rsplit_once(')').map(|x| x.1) {
                    let f: Vec<&str> = rest.split_whitespace().collect();
                    if f.get(1).and_then(|s| s.parse::<i32>().ok()) == Some(pid) {
                        v.push(p);
                    }
                }
            }
        }
    }
    v.sort_unstable();
    v
}

/// One-letter process state from /proc/PID/stat (`S`, `R`, `t`...).
pub fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// Minimal HTTP/1.0 GET on 127.0.0.1.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::Read;
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("send");
    let mut buf = String::new();
    s.read_to_string(&mut buf).expect("read response");
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Per-type field of a census JSON (`types.<name>.<field>`), 0 when absent.
pub fn ty(c: &serde_json::Value, name: &str, field: &str) -> i64 {
    c["types"][name][field].as_i64().unwrap_or(0)
}

/// The lines of `r`, read by a thread until EOF (or until the receiver is
/// gone).
pub fn lines_of(r: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A running `ljleak leaks`, killed on drop; a thread collects its stderr
/// lines.
pub struct Tracer {
    child: Child,
    stderr: Receiver<String>,
    /// Lines [`Tracer::wait_for`] read, kept for [`Tracer::finish`].
    seen: Vec<String>,
}

impl Tracer {
    /// Spawn `c` (stdout and stderr piped here) and wait until its probes
    /// are attached (its `ljleak: tracing` line): the tracer, and the
    /// stderr lines before that one.
    pub fn spawn(mut c: Command) -> (Tracer, Vec<String>) {
        // The tests' `-v` decides the log level (RUST_LOG would override it).
        let mut child = c
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ljleak");
        let rx = lines_of(child.stderr.take().expect("stderr"));
        let mut t = Tracer {
            child,
            stderr: rx,
            seen: Vec::new(),
        };
        let mut before = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match t.stderr.recv_timeout(left) {
                Ok(l) if l.starts_with("ljleak: tracing") => break,
                Ok(l) => before.push(l),
                Err(_) => {
                    let (code, err, _) = t.finish();
                    panic!(
                        "ljleak did not start tracing in time (exit {code:?}): {}\n{}",
                        before.join("\n"),
                        err.join("\n")
                    );
                }
            }
        }
        (t, before)
    }

    /// Wait (60 s at most) for a stderr line containing `needle`.
    pub fn wait_for(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.seen.iter().any(|l| l.contains(needle)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => panic!("ljleak did not print `{needle}`:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// ljleak's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// ljleak with `args` (split at spaces), started as [`Tracer::spawn`].
    pub fn start(args: &str) -> Tracer {
        let mut c = Command::new(ljleak());
        c.args(args.split(' '));
        Tracer::spawn(c).0
    }

    /// Wait for exit: (exit code, stderr lines after the start line,
    /// stdout).
    pub fn finish(&mut self) -> (Option<i32>, Vec<String>, String) {
        use std::io::Read;
        let mut out = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            o.read_to_string(&mut out).expect("stdout");
        }
        let st = self.child.wait().expect("wait ljleak");
        // The reader thread ends at EOF, once ljleak has exited.
        let mut err = std::mem::take(&mut self.seen);
        err.extend(self.stderr.iter());
        (st.code(), err, out)
    }

    /// Wait for a successful exit: (stderr after the start line, stdout).
    pub fn finish_ok(&mut self) -> (String, String) {
        let (code, err, out) = self.finish();
        let err = err.join("\n");
        assert_eq!(code, Some(0), "ljleak failed: {err}");
        (err, out)
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A summary figure from the stderr summary, e.g. `outstanding N allocations`.
pub fn summary_num(err: &str, before: &str) -> u64 {
    let i = err
        .find(before)
        .unwrap_or_else(|| panic!("no `{before}` in summary:\n{err}"));
    err[i + before.len()..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no number after `{before}`"))
}

/// A process killed on drop.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
