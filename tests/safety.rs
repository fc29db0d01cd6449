//! Live tests of running ljleak as root next to other users (issue 9):
//! planted symlinks, predictable names, orphaned children, hostile inputs,
//! misleading exit codes. The attacker steps run as a throwaway
//! unprivileged user created here (`runuser`).

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{ljleak, require, Nginx};

const ATTACKER: &str = "ljleak-attacker";

/// The unprivileged user of these tests, created when absent.
fn attacker() -> Option<String> {
    let have = |u: &str| {
        Command::new("id")
            .args(["-u", u])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have(ATTACKER) {
        let _ = Command::new("useradd")
            .args(["-M", "-r", "-s", "/usr/sbin/nologin", ATTACKER])
            .status();
    }
    let ok = have(ATTACKER)
        && Command::new("runuser")
            .args(["-u", ATTACKER, "--", "true"])
            .status()
            .is_ok_and(|s| s.success());
    require("root with useradd and runuser (a throwaway user)", ok).then(|| ATTACKER.into())
}

/// Run a command as the attacker; it must succeed.
fn as_attacker(user: &str, argv: &[&str]) {
    let out = Command::new("runuser")
        .args(["-u", user, "--"])
        .args(argv)
        .output()
        .expect("runuser");
    assert!(
        out.status.success(),
        "{argv:?} as {user}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("ljleak-safety-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        Scratch(d)
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A root-only secret (a 0600 file in a 0700 directory) and a
/// world-writable sticky directory the attacker plants links in.
fn victim_setup(s: &Scratch) -> (PathBuf, PathBuf) {
    let secret_dir = s.path("secret");
    std::fs::create_dir(&secret_dir).unwrap();
    std::fs::set_permissions(&secret_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let secret = secret_dir.join("shadow");
    std::fs::write(&secret, "root:only\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let public = s.path("public");
    std::fs::create_dir(&public).unwrap();
    std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o1777)).unwrap();
    (secret, public)
}

/// A luajit process with a small heap, blocked reading stdin.
fn luajit_idle() -> Option<Guard> {
    let lj = common::luajit();
    if !require("/usr/bin/luajit (Debian luajit2)", lj.is_some()) {
        return None;
    }
    let mut c = Command::new(lj.unwrap())
        .args([
            "-e",
            "T = {} for i = 1, 100 do T[i] = {i} end io.write('ready\\n') io.flush() io.read('*l')",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(c.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    Some(Guard(c))
}

fn run_args(args: &[&str]) -> Output {
    Command::new(ljleak())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ljleak")
}

fn err_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A process killed and reaped on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn output_symlink_planted_by_another_user_is_refused() {
    let Some(user) = attacker() else { return };
    let s = Scratch::new("symlink");
    let (secret, public) = victim_setup(&s);
    let link = public.join("report.json");
    as_attacker(
        &user,
        &["ln", "-s", secret.to_str().unwrap(), link.to_str().unwrap()],
    );
    let dangling = public.join("dangling.json");
    as_attacker(
        &user,
        &[
            "ln",
            "-s",
            secret.with_file_name("new").to_str().unwrap(),
            dangling.to_str().unwrap(),
        ],
    );
    let looping = public.join("loop.json");
    as_attacker(
        &user,
        &[
            "ln",
            "-s",
            looping.to_str().unwrap(),
            looping.to_str().unwrap(),
        ],
    );
    // An input that needs no live target, and one that does.
    let folded = s.path("in.folded");
    std::fs::write(&folded, "main;malloc 100\n").unwrap();
    let lj = luajit_idle();
    for (dest, word) in [
        (&link, "symbolic link"),
        (&dangling, "dangling"),
        (&looping, "loop"),
    ] {
        // `-o X.json` writes JSON (the format follows the extension).
        let o = run_args(&[
            "diff",
            folded.to_str().unwrap(),
            folded.to_str().unwrap(),
            "-o",
            dest.to_str().unwrap(),
        ]);
        let err = err_of(&o);
        assert_eq!(o.status.code(), Some(10), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(dest.to_str().unwrap()), "{err}");
        assert!(err.contains(word), "{err}");
        if let Some(p) = &lj {
            let pid = p.0.id().to_string();
            let o = run_args(&["objs", "-p", &pid, "-o", dest.to_str().unwrap()]);
            assert_eq!(o.status.code(), Some(10), "{}", err_of(&o));
            let o = run_args(&[
                "objs",
                "-p",
                &pid,
                "--format",
                "json",
                "-o",
                dest.to_str().unwrap(),
            ]);
            assert_eq!(o.status.code(), Some(10), "{}", err_of(&o));
        }
    }
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "root:only\n");
    assert!(!secret.with_file_name("new").exists());
    assert_eq!(
        std::fs::metadata(&secret).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    // The same directory with a plain name works, owner-only, and no
    // temporary file is left next to it.
    let plain = public.join("plain.pb.gz");
    let o = run_args(&[
        "convert",
        folded.to_str().unwrap(),
        "--format",
        "pprof",
        "-o",
        plain.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", err_of(&o));
    assert_eq!(
        std::fs::metadata(&plain).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let names: Vec<String> = std::fs::read_dir(&public)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains("tmp")), "{names:?}");
}

#[test]
fn output_fifo_without_reader_and_directory_fail_at_once() {
    let s = Scratch::new("fifo");
    let fifo = s.path("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let folded = s.path("in.folded");
    std::fs::write(&folded, "main;malloc 100\n").unwrap();
    for (dest, word) in [(fifo.as_path(), "no reader"), (s.0.as_path(), "directory")] {
        let t = Instant::now();
        let mut c = Command::new(ljleak())
            .args([
                "convert",
                folded.to_str().unwrap(),
                "--format",
                "pprof",
                "-o",
            ])
            .arg(dest)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Never blocks: a hang here is the bug.
        let st = loop {
            if let Some(st) = c.try_wait().unwrap() {
                break st;
            }
            if t.elapsed() > Duration::from_secs(10) {
                let _ = c.kill();
                let _ = c.wait();
                panic!("ljleak blocked on {}", dest.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        use std::io::Read;
        c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        assert_eq!(st.code(), Some(10), "{err}");
        assert!(
            err.contains(word) && err.contains(dest.to_str().unwrap()),
            "{err}"
        );
    }
}

#[test]
fn leaks_on_master_writes_no_guessable_file() {
    if !require(
        "uprobe PMU",
        Path::new("/sys/bus/event_source/devices/uprobe/type").exists(),
    ) {
        return;
    }
    let Some(user) = attacker() else { return };
    let s = Scratch::new("predictable");
    let (secret, _) = victim_setup(&s);
    let Some(n) = Nginx::start("leaks.conf", 2) else {
        return;
    };
    let workers = n.workers();
    assert_eq!(workers.len(), 2);
    // Links at every name the old scheme used, in a world-writable sticky
    // temp dir (TMPDIR, as the shared /tmp).
    let tmp = s.path("tmp");
    std::fs::create_dir(&tmp).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let planted: Vec<PathBuf> = workers
        .iter()
        .map(|w| tmp.join(format!("ljleak-leaks-{}-{w}.folded", n.master)))
        .collect();
    for p in &planted {
        let _ = std::fs::remove_file(p);
        as_attacker(
            &user,
            &["ln", "-s", secret.to_str().unwrap(), p.to_str().unwrap()],
        );
    }
    let o = Command::new(ljleak())
        .args([
            "leaks",
            "-p",
            &n.master.to_string(),
            "--time",
            "1",
            "--source",
            "malloc",
        ])
        .env("TMPDIR", &tmp)
        .output()
        .unwrap();
    let err = err_of(&o);
    let mut left: Vec<PathBuf> = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    left.sort();
    for p in &planted {
        let is_link = std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink());
        let _ = std::fs::remove_file(p);
        assert!(is_link, "{} was replaced", p.display());
    }
    assert!(o.status.success(), "{err}");
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "root:only\n");
    // The total came back through the private directory, which is gone.
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("# total of 2 workers"), "{out}");
    let mut want = planted.clone();
    want.sort();
    assert_eq!(left, want, "only the planted links remain in TMPDIR");
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    !matches!(common::proc_state(pid), None | Some('Z') | Some('X'))
}

#[test]
fn sigkill_of_leaks_on_master_leaves_no_child() {
    if !require(
        "uprobe PMU",
        Path::new("/sys/bus/event_source/devices/uprobe/type").exists(),
    ) {
        return;
    }
    let Some(n) = Nginx::start("leaks.conf", 2) else {
        return;
    };
    let workers = n.workers();
    // A SIGKILLed parent cannot remove its private directory: keep it here.
    let s = Scratch::new("orphans");
    let mut parent = Guard(
        Command::new(ljleak())
            .args(["leaks", "-p", &n.master.to_string(), "--time", "30"])
            .env("TMPDIR", &s.0)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Wait until both children have attached.
    let err = parent.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut started = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while started < 2 {
        let l = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("children did not start tracing");
        // The children's own lines (the master's says "tracing 2 workers").
        if l.starts_with("ljleak: tracing pid ") {
            started += 1;
        }
    }
    let kids = common::children(parent.0.id() as i32);
    assert_eq!(kids.len(), 2, "{kids:?}");
    for _ in 0..5 {
        assert_eq!(n.get("/hello").0, 200);
    }
    let t = Instant::now();
    parent.0.kill().unwrap();
    let _ = parent.0.wait();
    while kids.iter().any(|&k| alive(k)) && t.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let left: Vec<i32> = kids.iter().copied().filter(|&k| alive(k)).collect();
    for &k in &left {
        common::unsafe_kill(k, 9);
    }
    assert!(
        left.is_empty(),
        "children survived their parent by 1 s: {left:?}"
    );
    // The workers run and serve (their probes went with the children's fds).
    for w in &workers {
        assert!(
            matches!(common::proc_state(*w), Some('S') | Some('R')),
            "{w}: {:?}",
            common::proc_state(*w)
        );
    }
    for _ in 0..20 {
        assert_eq!(n.get("/hello").0, 200);
    }
}

fn diff_of(s: &Scratch, a: &str, b: &str, extra: &[&str]) -> Output {
    let (pa, pb) = (s.path("a.folded"), s.path("b.folded"));
    std::fs::write(&pa, a).unwrap();
    std::fs::write(&pb, b).unwrap();
    let mut args = vec!["diff", pa.to_str().unwrap(), pb.to_str().unwrap()];
    args.extend_from_slice(extra);
    run_args(&args)
}

#[test]
fn hostile_diff_and_convert_inputs_get_documented_codes() {
    let s = Scratch::new("hostile");
    // A 70,000-character stack: a table cell wider than core::fmt's u16.
    let long = "f".repeat(70_000);
    let o = diff_of(&s, &format!("{long} 1\n"), &format!("{long} 5\n"), &[]);
    assert_eq!(o.status.code(), Some(0), "{}", err_of(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&long));
    // Totals that wrap a u64 (the gate used to pass on a total of 0).
    let o = diff_of(
        &s,
        "c 1\n",
        "a;b 18446744073709551615\nc 1\n",
        &["--fail-if", "total>+1000"],
    );
    let err = err_of(&o);
    assert_eq!(o.status.code(), Some(9), "{err}");
    assert!(err.contains("add up to more than"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // Over the size limit, for diff and convert; the limit can be raised.
    let big = format!("{} 1\n", "g".repeat(3000));
    let o = diff_of(&s, &big, &big, &["--max-input", "1000"]);
    let err = err_of(&o);
    assert_eq!(o.status.code(), Some(9), "{err}");
    assert!(err.contains("over the input limit of 1000 bytes"), "{err}");
    let o = diff_of(&s, &big, &big, &["--max-input", "4000"]);
    assert_eq!(o.status.code(), Some(0), "{}", err_of(&o));
    let o = run_args(&[
        "convert",
        s.path("a.folded").to_str().unwrap(),
        "--max-input",
        "1000",
        "-o",
        s.path("a.pb.gz").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(9), "{}", err_of(&o));
    // Control characters in a stack reach the terminal escaped.
    let o = diff_of(
        &s,
        "main;\x1b]0;pwned\x07\u{9b}2J 1\n",
        "main;\x1b]0;pwned\x07\u{9b}2J 9\n",
        &[],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", err_of(&o));
    assert!(
        !out.contains('\x1b') && !out.contains('\x07') && !out.contains('\u{9b}'),
        "{out:?}"
    );
    assert!(out.contains("\\x1b]0;pwned\\x07\\u{9b}2J"), "{out}");
    // In an error message too (the path names the file).
    let evil = s.path("x\x1b[2Jy.folded");
    std::fs::write(&evil, "not folded\n").unwrap();
    let o = run_args(&[
        "convert",
        evil.to_str().unwrap(),
        "-o",
        s.path("o").to_str().unwrap(),
    ]);
    let err = err_of(&o);
    assert_eq!(o.status.code(), Some(9), "{err}");
    assert!(
        !err.contains('\x1b') && err.contains("x\\x1b[2Jy"),
        "{err:?}"
    );
}

#[test]
fn snapshot_exe_and_host_with_escapes_print_escaped() {
    let Some(lj) = luajit_idle() else { return };
    let s = Scratch::new("escapes");
    let snap = s.path("a.json");
    let o = run_args(&[
        "objs",
        "-p",
        &lj.0.id().to_string(),
        "-o",
        snap.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", err_of(&o));
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&snap).unwrap()).unwrap();
    v["exe"] = "/usr/bin/\x1b]2;owned\x07luajit".into();
    v["host"] = "h\x1b[31mred".into();
    let b = s.path("b.json");
    std::fs::write(&b, serde_json::to_string(&v).unwrap()).unwrap();
    for fmt in ["text", "markdown", "json"] {
        let o = run_args(&[
            "diff",
            snap.to_str().unwrap(),
            b.to_str().unwrap(),
            "--format",
            fmt,
        ]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{}", err_of(&o));
        assert!(
            !out.contains('\x1b') && !out.contains('\x07'),
            "{fmt}: {out:?}"
        );
        if fmt == "json" {
            serde_json::from_str::<serde_json::Value>(&out).expect("still JSON");
        } else {
            assert!(out.contains("h\\x1b[31mred"), "{fmt}: {out}");
        }
    }
}

/// A process holding `pid` with PTRACE_SEIZE (which does not stop it), as
/// strace would; killed on drop, which releases the target.
fn ptrace_holder(pid: u32) -> Option<Guard> {
    if !require(
        "python3",
        Command::new("python3").arg("-V").output().is_ok(),
    ) {
        return None;
    }
    let mut c = Command::new("python3")
        .args([
            "-c",
            "import ctypes,sys,time\n\
             libc=ctypes.CDLL(None,use_errno=True)\n\
             r=libc.ptrace(0x4206,int(sys.argv[1]),None,None)\n\
             print('held' if r==0 else 'err %d'%ctypes.get_errno(),flush=True)\n\
             time.sleep(60)",
            &pid.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(c.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "held");
    Some(Guard(c))
}

#[test]
fn target_traced_by_another_process_names_the_tracer() {
    let Some(lj) = luajit_idle() else { return };
    let Some(holder) = ptrace_holder(lj.0.id()) else {
        return;
    };
    let pid = lj.0.id().to_string();
    let o = run_args(&["objs", "-p", &pid]);
    let err = err_of(&o);
    assert_eq!(o.status.code(), Some(11), "{err}");
    assert!(
        err.contains(&format!("traced by process {} (python3)", holder.0.id())),
        "{err}"
    );
    drop(holder);
    // Released: works again.
    let o = run_args(&["objs", "-p", &pid]);
    assert!(o.status.success(), "{}", err_of(&o));
}

#[test]
fn zombie_and_kernel_thread_get_their_own_code() {
    // `sleep 0` exits and its parent (now `sleep 30`) never reaps it.
    let parent = Guard(
        Command::new("sh")
            .args(["-c", "sleep 0 & exec sleep 30"])
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let zombie = loop {
        if let Some(&z) = common::children(parent.0.id() as i32)
            .iter()
            .find(|&&c| common::proc_state(c) == Some('Z'))
        {
            break z;
        }
        assert!(Instant::now() < deadline, "no zombie appeared");
        std::thread::sleep(Duration::from_millis(20));
    };
    let z = zombie.to_string();
    for cmd in [
        vec!["gc", "-p", &z],
        vec!["objs", "-p", &z],
        vec!["threads", "-p", &z],
        vec!["refs", "-p", &z],
        vec!["probes", "-p", &z],
        vec!["leaks", "-p", &z, "--time", "1"],
    ] {
        let o = run_args(&cmd);
        let err = err_of(&o);
        assert_eq!(o.status.code(), Some(12), "{cmd:?}: {err}");
        assert!(err.contains("zombie"), "{cmd:?}: {err}");
        assert!(
            !err.contains("static binary") && !err.contains("/proc/PID/exe"),
            "{err}"
        );
    }
    // A kernel thread, when this PID namespace shows one.
    let kthread = std::fs::read_dir("/proc").unwrap().find_map(|e| {
        let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let flags: u64 = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(6)?
            .parse()
            .ok()?;
        (flags & 0x0020_0000 != 0).then_some(pid)
    });
    if let Some(k) = kthread {
        let o = run_args(&["objs", "-p", &k.to_string()]);
        let err = err_of(&o);
        assert_eq!(o.status.code(), Some(12), "{err}");
        assert!(err.contains("kernel thread"), "{err}");
    }
}

#[test]
fn damaged_global_state_is_an_inconsistent_heap_not_a_layout() {
    if !require("gdb", Command::new("gdb").arg("--version").output().is_ok()) {
        return;
    }
    let Some(lj) = luajit_idle() else { return };
    let pid = lj.0.id().to_string();
    let v: serde_json::Value =
        serde_json::from_slice(&run_args(&["objs", "-p", &pid, "--format", "json"]).stdout)
            .unwrap();
    assert_eq!(v["luajit"]["layout"], "luajit2-gc64", "{v}");
    let g = u64::from_str_radix(
        v["luajit"]["global_state"]
            .as_str()
            .unwrap()
            .trim_start_matches("0x"),
        16,
    )
    .unwrap();
    // g->gc.state (global_State.gc at 16, GCState.state at 17 in
    // layouts/luajit2-gc64.txt) set to an impossible 99.
    let o = Command::new("gdb")
        .args(["-p", &pid, "-batch", "-nx", "-ex"])
        .arg(format!("set *(unsigned char *){:#x} = 99", g + 33))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run_args(&["objs", "-p", &pid]);
    let err = err_of(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("inconsistent") && err.contains("gc.state 99"),
        "{err}"
    );
}

#[test]
fn lost_stdout_is_an_error() {
    let s = Scratch::new("stdout");
    let f = s.path("a.folded");
    std::fs::write(&f, "main;malloc 100\n").unwrap();
    // Closed descriptor 1.
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec {} diff {} {} >&-",
            ljleak().display(),
            f.display(),
            f.display()
        ))
        .output()
        .unwrap();
    let err = err_of(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("standard output is closed"), "{err}");
    // A pipe whose reader is gone (`| true` that already exited).
    let mut fds = [0i32; 2];
    // SAFETY: pipe(2) fills two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: our own descriptors.
    unsafe { libc::close(fds[0]) };
    use std::os::fd::FromRawFd;
    // SAFETY: fds[1] is ours and handed over once.
    let w = unsafe { std::fs::File::from_raw_fd(fds[1]) };
    let o = Command::new(ljleak())
        .args(["diff", f.to_str().unwrap(), f.to_str().unwrap()])
        .stdout(Stdio::from(w))
        .output()
        .unwrap();
    let err = err_of(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("closed by its reader"), "{err}");
}

#[test]
fn leaks_on_master_exits_with_the_failed_worker_code() {
    if !require(
        "uprobe PMU",
        Path::new("/sys/bus/event_source/devices/uprobe/type").exists(),
    ) {
        return;
    }
    let Some(n) = Nginx::start("leaks.conf", 2) else {
        return;
    };
    // Every worker's ljleak finds no uprobe PMU (exit 20): so must the
    // master's, not a generic 1.
    let o = run_args(&[
        "leaks",
        "-p",
        &n.master.to_string(),
        "--time",
        "1",
        "--uprobe-pmu-dir",
        "/nonexistent",
    ]);
    let err = err_of(&o);
    assert_eq!(o.status.code(), Some(20), "{err}");
    assert!(
        err.contains("tracing worker") && err.contains("exit code 20"),
        "{err}"
    );
}
