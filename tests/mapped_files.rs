//! Live tests of reaching the files a target maps when their paths lie
//! (issue 9 items 4 and 5): a library replaced on disk after the target
//! loaded it (a package upgrade), and a container whose root is a tmpfs in
//! a private mount namespace.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use common::{ljleak, require, Tracer};

fn have_uprobes() -> bool {
    require(
        "the uprobe PMU (/sys/bus/event_source/devices/uprobe)",
        Path::new("/sys/bus/event_source/devices/uprobe/type").exists(),
    )
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("ljleak-mapped-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child with piped stdin/stdout, killed on drop with its descendants.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Proc {
            child,
            stdin,
            lines: rx,
        }
    }
    fn expect(&self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let l = self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("no `{prefix}` line"));
            if l.starts_with(prefix) {
                return l;
            }
        }
    }
    fn send(&mut self, s: &str) {
        let w = self.stdin.as_mut().unwrap();
        w.write_all(s.as_bytes()).unwrap();
        w.flush().unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        for c in common::children(self.child.id() as i32) {
            for g in common::children(c) {
                common::unsafe_kill(g, 9);
            }
            common::unsafe_kill(c, 9);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ljleak leaks ARGS` (split at spaces) in the background, returned once
/// its probes are attached (its `ljleak: tracing` line); (exit code,
/// stdout, stderr) on join.
fn leaks_bg(args: &str) -> std::thread::JoinHandle<(i32, String, String)> {
    let mut c = Command::new(ljleak());
    c.args(args.split(' '));
    let (mut t, mut err) = Tracer::spawn(c);
    std::thread::spawn(move || {
        let (code, after, out) = t.finish();
        err.extend(after);
        (code.unwrap_or(-1), out, err.join("\n"))
    })
}

#[test]
fn library_replaced_on_disk_is_probed_through_the_mapped_inode() {
    if !have_uprobes() || !require("cc", Command::new("cc").arg("--version").output().is_ok()) {
        return;
    }
    let s = Scratch::new("replaced");
    let exe = s.0.join("alloc");
    assert!(Command::new("cc")
        .args(["-O1", "-g", "-pthread", "-o"])
        .arg(&exe)
        .arg(common::root().join("tests/fixtures/alloc.c"))
        .status()
        .unwrap()
        .success());
    let libc = Path::new("/lib/x86_64-linux-gnu/libc.so.6");
    if !require("glibc at /lib/x86_64-linux-gnu/libc.so.6", libc.exists()) {
        return;
    }
    let lib = s.0.join("lib");
    std::fs::create_dir(&lib).unwrap();
    std::fs::copy(libc, lib.join("libc.so.6")).unwrap();
    let mut cmd = Command::new(&exe);
    cmd.env("LD_LIBRARY_PATH", &lib);
    let mut p = Proc::spawn(cmd);
    p.expect("ready");
    let pid = p.child.id();
    // The upgrade: a new file renamed over the old path (the running
    // process keeps the old inode, `(deleted)` in its maps).
    std::fs::copy(libc, lib.join("libc.so.6.new")).unwrap();
    std::fs::rename(lib.join("libc.so.6.new"), lib.join("libc.so.6")).unwrap();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert!(maps.contains("libc.so.6 (deleted)"), "{maps}");
    let t = leaks_bg(&format!("-v leaks -p {pid} --time 3 --source malloc"));
    p.send("go\n");
    p.expect("done");
    let (code, out, err) = t.join().unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("/map_files/"), "read through map_files: {err}");
    assert!(err.contains("allocations 5 (5670 bytes)"), "{err}");
    assert!(
        out.lines()
            .any(|l| l.ends_with("main;grow_chain;realloc 300")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.ends_with("main;aligned_block;posix_memalign 5000")),
        "{out}"
    );
}

/// Copy `bin` and the libraries `ldd` lists into `root`, at the same paths.
fn copy_with_libs(bin: &Path, root: &Path) {
    let out = Command::new("ldd").arg(bin).output().unwrap();
    let mut files = vec![bin.to_path_buf()];
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(p) = l.split_whitespace().find(|w| w.starts_with('/')) {
            files.push(PathBuf::from(p));
        }
    }
    for f in files {
        let dest = root.join(f.strip_prefix("/").unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&f, &dest).unwrap();
    }
}

#[test]
fn container_on_private_tmpfs_is_traced_from_outside() {
    if !have_uprobes()
        || !require(
            "unshare and chroot (util-linux, coreutils)",
            Path::new("/usr/bin/unshare").exists() && Path::new("/usr/sbin/chroot").exists(),
        )
    {
        return;
    }
    let Some(lj) = common::luajit() else {
        require("/usr/bin/luajit", false);
        return;
    };
    let s = Scratch::new("container");
    let staging = s.0.join("staging");
    copy_with_libs(&lj, &staging);
    let root = s.0.join("root");
    std::fs::create_dir(&root).unwrap();
    // Inside a new mount and PID namespace: a tmpfs over `root`, the files
    // copied onto it, chroot. Outside, `root` stays an empty directory, so
    // the maps' paths resolve nowhere on the host.
    let script = format!(
        "mount --make-rprivate / && mount -t tmpfs tmpfs {r} && cp -a {st}/. {r}/ && exec chroot {r} /usr/bin/luajit -e \"{lua}\"",
        r = root.display(),
        st = staging.display(),
        lua = "local keep = {} io.write('ready\\\\n') io.flush() \
               for l in io.lines() do for i = 1, 2000 do keep[#keep + 1] = {i, tostring(i)} end \
               io.write('grew\\\\n') io.flush() end"
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--pid", "--fork", "sh", "-c", &script]);
    let mut p = Proc::spawn(cmd);
    p.expect("ready");
    // The luajit: unshare's child (PID 1 inside).
    let inner = common::children(p.child.id() as i32);
    assert_eq!(inner.len(), 1, "{inner:?}");
    let pid = inner[0];
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    // Its paths as the kernel prints them to us do not exist here.
    assert!(exe.ends_with("usr/bin/luajit"), "{}", exe.display());
    assert!(!exe.exists(), "{}", exe.display());
    assert_eq!(
        std::fs::read_dir(&root).unwrap().count(),
        0,
        "root is empty outside"
    );
    // The census works, and so do both leak sources.
    let o = common::run(&["objs", "-p", &pid.to_string(), "--format", "json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for source in ["malloc", "luajit"] {
        let t = leaks_bg(&format!("leaks -p {pid} --time 3 --source {source}"));
        p.send("x\n");
        p.expect("grew");
        let (code, out, err) = t.join().unwrap();
        assert_eq!(code, 0, "--source {source}: {err}");
        let bytes: u64 = out
            .lines()
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
            .sum();
        if source == "luajit" {
            // 2000 tables and strings kept per line.
            assert!(bytes > 2000 * 16, "{bytes} bytes\n{out}\n{err}");
            assert!(out.contains("lj_alloc_f"), "{out}");
        } else {
            // LuaJIT allocates from its own arenas: libc sees the JIT's
            // small mallocs, found and symbolized through map_files.
            assert!(bytes > 0, "{out}\n{err}");
            assert!(
                out.contains(";lua_pcall;") && out.contains(";malloc "),
                "{out}"
            );
        }
    }
}
