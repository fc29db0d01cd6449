//! The capability matrix (issue 9 item 9): a copy of ljleak with file
//! capabilities, run by an unprivileged user created here, against that
//! user's own luajit (allowed where the capabilities suffice) and root's
//! (refused, as the kernel would refuse that user, unless
//! --allow-other-users).

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::require;

const USER: &str = "ljleak-capuser";

fn ensure_user() -> bool {
    let have = || {
        Command::new("id")
            .args(["-u", USER])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have() {
        let _ = Command::new("useradd")
            .args(["-M", "-r", "-s", "/usr/sbin/nologin", USER])
            .status();
    }
    have()
}

struct Guard(Child, Option<PathBuf>);

impl Drop for Guard {
    fn drop(&mut self) {
        // runuser's child is the luajit: kill it by PID, then runuser.
        for c in common::children(self.0.id() as i32) {
            common::unsafe_kill(c, 9);
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        if let Some(d) = &self.1 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// A luajit blocked on stdin, as root or as USER; returns (guard, pid).
fn luajit_as(user: Option<&str>) -> (Guard, i32) {
    let lua =
        "T = {} for i = 1, 100 do T[i] = {i} end io.write('ready\\n') io.flush() io.read('*l')";
    let mut cmd = match user {
        Some(u) => {
            let mut c = Command::new("runuser");
            c.args(["-u", u, "--", "/usr/bin/luajit", "-e", lua]);
            c
        }
        None => {
            let mut c = Command::new("/usr/bin/luajit");
            c.args(["-e", lua]);
            c
        }
    };
    let mut c = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(c.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    let pid = if user.is_some() {
        common::children(c.id() as i32)[0]
    } else {
        c.id() as i32
    };
    (Guard(c, None), pid)
}

/// What a row expects.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    Ok,
    Code(i32),
}

#[test]
fn capability_matrix() {
    let tools = ["setcap", "runuser", "useradd"].iter().all(|t| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !require(
        "setcap, runuser, useradd (libcap2-bin, util-linux, passwd)",
        tools,
    ) || !require("a throwaway user", ensure_user())
        || !require("/usr/bin/luajit", Path::new("/usr/bin/luajit").exists())
    {
        return;
    }
    let dir = std::env::temp_dir().join(format!("ljleak-caps-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _cleanup = Guard(Command::new("true").spawn().unwrap(), Some(dir.clone()));
    let (_own_g, own) = luajit_as(Some(USER));
    let (_root_g, root) = luajit_as(None);

    const READ: &str = "cap_sys_ptrace,cap_perfmon";
    // The uprobe PMU wants CAP_SYS_ADMIN (measured: perf_event_open gives
    // EACCES with cap_sys_ptrace,cap_perfmon,cap_ipc_lock or
    // cap_dac_read_search; works with cap_sys_admin).
    const TRACE: &str = "cap_sys_ptrace,cap_sys_admin";
    let uprobes = Path::new("/sys/bus/event_source/devices/uprobe/type").exists();
    // (caps, command, own target, root's target)
    let rows: &[(&str, &[&str], Want, Want)] = &[
        (READ, &["gc"], Want::Ok, Want::Code(5)),
        (READ, &["objs"], Want::Ok, Want::Code(5)),
        (READ, &["threads"], Want::Ok, Want::Code(5)),
        (READ, &["refs"], Want::Ok, Want::Code(5)),
        (READ, &["probes"], Want::Ok, Want::Code(5)),
        (
            READ,
            &["leaks", "--time", "1", "--source", "luajit"],
            Want::Code(5),
            Want::Code(5),
        ),
        (
            TRACE,
            &["leaks", "--time", "1", "--source", "luajit"],
            Want::Ok,
            Want::Code(5),
        ),
        (TRACE, &["objs"], Want::Ok, Want::Code(5)),
        // The explicit override restores the old reach.
        (READ, &["--allow-other-users", "objs"], Want::Ok, Want::Ok),
    ];
    for (caps, cmd, want_own, want_root) in rows {
        if cmd[0] == "leaks" && !uprobes {
            continue;
        }
        let bin = dir.join(format!("ljleak-{}", caps.replace(',', "-")));
        if !bin.exists() {
            std::fs::copy(common::ljleak(), &bin).unwrap();
            std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
            let st = Command::new("setcap")
                .arg(format!("{caps}+ep"))
                .arg(&bin)
                .status()
                .unwrap();
            assert!(st.success(), "setcap {caps}");
        }
        for (target, want) in [(own, want_own), (root, want_root)] {
            let mut args: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
            let at = args.iter().position(|a| !a.starts_with("--allow")).unwrap() + 1;
            args.insert(at, "-p".into());
            args.insert(at + 1, target.to_string());
            let o = Command::new("runuser")
                .args(["-u", USER, "--"])
                .arg(&bin)
                .args(&args)
                .current_dir(&dir)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            let who = if target == own { "own" } else { "root's" };
            match want {
                Want::Ok => assert!(o.status.success(), "{caps} {args:?} on {who} target: {err}"),
                Want::Code(c) => {
                    assert_eq!(
                        o.status.code(),
                        Some(*c),
                        "{caps} {args:?} on {who} target: {err}"
                    );
                    if target == root {
                        assert!(
                            err.contains("--allow-other-users") && err.contains("uid [0, 0, 0, 0]"),
                            "{err}"
                        );
                    }
                }
            }
        }
    }
}
