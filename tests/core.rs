//! Core files: `ljleak dump` writes them, `objs/refs/threads --core` read
//! them (ljleak's own, gdb's `gcore`, the kernel's), and bad cores give the
//! documented exit codes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{run, run_json, LuaProc};
use serde_json::Value;

/// Wait until the script sits in read(2) at its checkpoint: `ready` is
/// printed (a write) before the script blocks, and the Lua stack changes
/// in between.
fn wait_in_read(pid: i32) {
    for _ in 0..2000 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        if s.split_whitespace().next() == Some("0") {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    panic!("process {pid} never blocked in read");
}

/// core_pattern is one system-wide setting: the tests that may change it
/// take turns.
static CORE_PATTERN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ljleak-core-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn have_gcore() -> bool {
    common::require(
        "gdb's gcore (scripts/install-deps.sh installs gdb)",
        Command::new("gcore").arg("--version").output().is_ok(),
    )
}

fn gcore(pid: i32, dir: &Path) -> PathBuf {
    let prefix = dir.join("gcore");
    let out = Command::new("gcore")
        .arg("-o")
        .arg(&prefix)
        .arg(pid.to_string())
        .output()
        .expect("run gcore");
    let p = PathBuf::from(format!("{}.{pid}", prefix.display()));
    assert!(
        p.exists(),
        "gcore wrote no core: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    p
}

fn dump(pid: i32, out: &Path, extra: &[&str]) {
    let pid = pid.to_string();
    let mut args = vec!["dump", "-p", &pid, "-o", out.to_str().unwrap()];
    args.extend(extra);
    let o = run(&args);
    assert!(
        o.status.success(),
        "dump failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn core_census(core: &Path) -> Value {
    run_json(&["objs", "--core", core.to_str().unwrap(), "--format", "json"])
}

/// Fields of a census that describe the heap (not the run that took it).
fn assert_same_census(live: &Value, core: &Value, what: &str) {
    const RUN_FIELDS: &[&str] = &[
        "pause_us",
        "image_bytes",
        "walk_us",
        "walk_cpu_us",
        "created",
        "created_unix_ms",
        "command_line",
        // A kernel core is written when the signal lands: the worker may be
        // in another syscall (close, writev) than at the live pause.
        "stopped_in",
    ];
    let (l, c) = (live.as_object().unwrap(), core.as_object().unwrap());
    for (k, v) in l {
        if RUN_FIELDS.contains(&k.as_str()) {
            continue;
        }
        assert_eq!(
            Some(v),
            c.get(k),
            "{what}: census field `{k}` differs from the live census"
        );
    }
    assert!(live["objects"].as_u64().unwrap() > 1000, "a real heap");
}

/// At a quiescent checkpoint: the live census, then an ljleak dump and a
/// gcore of the same paused moment; the census of each core equals the
/// live one in every heap field.
fn census_of_cores_equals_live(interp: &Path, name: &str) {
    let dir = tmpdir(name);
    let mut p = LuaProc::spawn(
        interp,
        &common::testdata("lua/refs_known.lua"),
        &["2000", "100"],
    );
    p.ready();
    wait_in_read(p.pid);
    let live = common::census(p.pid);
    let ours = dir.join("worker.core");
    dump(p.pid, &ours, &[]);
    let theirs = gcore(p.pid, &dir);
    let total = p.resume_total();
    assert_eq!(live["gc_total"].as_u64(), Some(total));
    p.kill();
    // Read after the process is gone: a core needs no live process.
    let c1 = core_census(&ours);
    assert_same_census(&live, &c1, "ljleak dump");
    let c2 = core_census(&theirs);
    assert_same_census(&live, &c2, "gcore");
    // Owner-only, as every output holding the target's secrets.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&ours).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // refs and threads read the same core.
    let r = run_json(&[
        "refs",
        "--core",
        ours.to_str().unwrap(),
        "--format",
        "json",
        "--top",
        "1",
    ]);
    assert_eq!(r["gc_total"].as_u64(), Some(total));
    assert_eq!(
        r["suspects"][0]["path"],
        serde_json::json!(["registry", "._LOADED", ".mymod", ".get", "upvalue cache"]),
        "{}",
        r["suspects"]
    );
    let t = run_json(&[
        "threads",
        "--core",
        theirs.to_str().unwrap(),
        "--format",
        "json",
    ]);
    let top = &t["groups"][0]["stack"][1];
    assert_eq!(
        (top["name"].as_str(), top["line"].as_u64()),
        (Some("checkpoint.checkpoint"), Some(11)),
        "the main thread is at the checkpoint: {t}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// The interpreter of a build ("gc64": Debian's luajit2; "nogc64": the
/// variant) with gcore at hand; None (a CI failure) when either is missing.
fn interp_with_gcore(build: &str) -> Option<PathBuf> {
    let lj = if build == "gc64" {
        common::luajit()
    } else {
        common::variant("luajit2-nogc64", false)
    };
    if lj.is_none() {
        common::require(
            &format!("the {build} LuaJIT (apt luajit2, scripts/build-luajit-variants.sh)"),
            false,
        );
    }
    lj.filter(|_| have_gcore())
}

#[test]
fn core_census_equals_live_gc64() {
    if let Some(lj) = interp_with_gcore("gc64") {
        census_of_cores_equals_live(&lj, "gc64");
    }
}

#[test]
fn core_census_equals_live_nogc64() {
    if let Some(lj) = interp_with_gcore("nogc64") {
        census_of_cores_equals_live(&lj, "nogc64");
    }
}

/// gdb reads an ljleak dump: registers, and a backtrace through the
/// libraries (found from the dumped RELRO `.dynamic` and link map).
#[test]
fn gdb_loads_an_ljleak_dump() {
    let Some(mut p) = common::luajit_script("refs_known.lua", &["10", "10"]) else {
        return;
    };
    if !have_gcore() {
        return;
    }
    p.ready();
    wait_in_read(p.pid);
    let dir = tmpdir("gdb");
    let core = dir.join("w.core");
    // A link planted at the output path is refused (exit 10, the output
    // rule of every command), never written through.
    let victim = dir.join("victim");
    std::fs::write(&victim, "keep").unwrap();
    std::os::unix::fs::symlink(&victim, &core).unwrap();
    let pid = p.pid.to_string();
    let o = run(&["dump", "-p", &pid, "-o", core.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(10),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    assert!(std::fs::symlink_metadata(&core)
        .unwrap()
        .file_type()
        .is_symlink());
    std::fs::remove_file(&core).unwrap();
    dump(p.pid, &core, &[]);
    assert!(std::fs::symlink_metadata(&core).unwrap().is_file());
    p.resume_total();
    let out = Command::new("gdb")
        .args([
            "-batch",
            "-nx",
            "-ex",
            "info registers rip rsp",
            "-ex",
            "bt",
        ])
        .arg("/usr/bin/luajit")
        .arg(&core)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("rip ") && text.contains("rsp "),
        "gdb shows registers: {text}"
    );
    // Stopped in read(2) at the checkpoint, called from the interpreter.
    assert!(text.contains("read"), "libc symbols resolved: {text}");
    assert!(
        text.contains("lua_pcall") || text.contains("main"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// The kernel's own core dump of a luajit process (SIGQUIT at a
/// checkpoint). core_pattern is system-wide: when it is not already a plain
/// file name, the test sets one under its own folder and restores the old
/// value on the way out.
#[test]
fn kernel_core_dump_census_equals_live() {
    let Some(lj) = common::luajit() else {
        common::require("/usr/bin/luajit", false);
        return;
    };
    let dir = tmpdir("kernel");
    let _turn = CORE_PATTERN.lock().unwrap_or_else(|e| e.into_inner());
    struct Restore(String);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = std::fs::write("/proc/sys/kernel/core_pattern", &self.0);
        }
    }
    let old = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    let old = old.trim_end().to_string();
    let plain = !old.is_empty() && !old.starts_with('|') && !old.contains('/');
    let _restore = if plain {
        None
    } else {
        let pat = format!("{}/core", dir.display());
        if !common::require(
            "a plain or writable /proc/sys/kernel/core_pattern (kernel core dumps)",
            std::fs::write("/proc/sys/kernel/core_pattern", &pat).is_ok(),
        ) {
            return;
        }
        Some(Restore(old.clone()))
    };
    let mut cmd = Command::new("sh");
    cmd.current_dir(&dir).arg("-c").arg(format!(
        "ulimit -c unlimited && exec {} {} 2000 100",
        lj.display(),
        common::testdata("lua/refs_known.lua").display(),
    ));
    let mut p = LuaProc::spawn_cmd(cmd);
    p.ready();
    wait_in_read(p.pid);
    let live = common::census(p.pid);
    let live_mem = mem_json(&["-p", &p.pid.to_string()]);
    common::unsafe_kill(p.pid, libc::SIGQUIT);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let core = loop {
        let found = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("core"))
            });
        // The kernel writes the core before the process is reaped.
        if let Some(c) = found {
            if common::proc_state(p.pid).is_none_or(|s| s == 'Z') {
                break c;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no kernel core in {}",
            dir.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    drop(_restore);
    p.kill();
    let c = core_census(&core);
    assert_same_census(&live, &c, "kernel core");
    // mem reads the kernel's core too (libc's written .data is in it).
    let m = mem_json(&["--core", core.to_str().unwrap()]);
    assert_same_mem(&live_mem, &m, "kernel core");
    std::fs::remove_dir_all(&dir).ok();
}

fn code(args: &[&str]) -> (Option<i32>, String) {
    let o = run(args);
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn bad_cores_give_documented_exit_codes() {
    if !have_gcore() {
        return;
    }
    let dir = tmpdir("bad");
    let objs = |p: &Path| code(&["objs", "--core", p.to_str().unwrap()]);
    // Not ELF.
    let text = dir.join("notes.txt");
    std::fs::write(
        &text,
        "just some text, certainly not an ELF core file at all\n",
    )
    .unwrap();
    let (c, e) = objs(&text);
    assert_eq!(c, Some(9), "{e}");
    assert!(e.contains("not an ELF core"), "{e}");
    // An executable, not a core.
    let (c, e) = objs(Path::new("/bin/sh"));
    assert_eq!(c, Some(9), "{e}");
    // A core of a process without LuaJIT.
    let mut sleeper = Command::new("sleep").arg("60").spawn().unwrap();
    let sleep_exe = std::fs::read_link(format!("/proc/{}/exe", sleeper.id())).unwrap();
    let core = gcore(sleeper.id() as i32, &dir);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let (c, e) = objs(&core);
    assert_eq!(c, Some(6), "{e}");
    assert!(e.contains("no LuaJIT VM found in core"), "{e}");
    // The same core where its files are missing: named, with exit 10.
    let empty = dir.join("empty-root");
    std::fs::create_dir_all(&empty).unwrap();
    let (c, e) = code(&[
        "objs",
        "--core",
        core.to_str().unwrap(),
        "--sysroot",
        empty.to_str().unwrap(),
    ]);
    assert_eq!(c, Some(13), "{e}");
    assert!(
        e.contains("/sleep (build-id "),
        "names the missing file: {e}"
    );
    // Another binary at that path: its build-id is not the core's.
    let fake = empty.join(sleep_exe.to_str().unwrap().trim_start_matches('/'));
    std::fs::create_dir_all(fake.parent().unwrap()).unwrap();
    std::fs::copy("/bin/true", &fake).unwrap();
    let (c, e) = code(&[
        "objs",
        "--core",
        core.to_str().unwrap(),
        "--sysroot",
        empty.to_str().unwrap(),
    ]);
    assert_eq!(c, Some(13), "{e}");
    assert!(e.contains("has build-id"), "says the build-id differs: {e}");
    // Truncated.
    let bytes = std::fs::read(&core).unwrap();
    let cut = dir.join("cut.core");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let (c, e) = objs(&cut);
    assert_eq!(c, Some(9), "{e}");
    assert!(e.contains("truncated"), "{e}");
    // Another architecture (e_machine = AArch64).
    let mut arm = bytes.clone();
    arm[18..20].copy_from_slice(&183u16.to_le_bytes());
    let armp = dir.join("arm.core");
    std::fs::write(&armp, &arm).unwrap();
    let (c, e) = objs(&armp);
    assert_eq!(c, Some(9), "{e}");
    assert!(e.contains("another architecture"), "{e}");
    // mem --core on a core without LuaJIT: the same error as objs.
    let (c, e) = code(&["mem", "--core", core.to_str().unwrap()]);
    assert_eq!(c, Some(6), "{e}");
    assert!(e.contains("no LuaJIT VM found in core"), "{e}");
    // Commands that need a live process say so.
    let (c, e) = code(&["gc", "--core", core.to_str().unwrap()]);
    assert_eq!(c, Some(2), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

fn mem_json(args: &[&str]) -> Value {
    let mut a = vec!["mem", "--format", "json"];
    a.extend(args);
    run_json(&a)
}

/// A core's `mem` report: the parts that are memory walks present, the
/// kernel's parts absent (not zeros), each with its reason.
fn assert_core_mem_shape(c: &Value, what: &str) {
    let absent = c["core"]["absent"].as_object().expect("core.absent");
    for k in [
        "rss",
        "pss",
        "swap",
        "kernel",
        "rows",
        "fds",
        "unattributed",
        "stacks",
    ] {
        assert!(
            c.get(k).is_none(),
            "{what}: `{k}` is in a core's report: {c}"
        );
        assert!(
            absent
                .get(k)
                .and_then(|v| v.as_str())
                .is_some_and(|w| !w.is_empty()),
            "{what}: `{k}` not listed as absent with a reason"
        );
    }
    for f in c["files"].as_array().unwrap() {
        assert!(
            f.get("rss").is_none(),
            "{what}: a file's rss in a core: {f}"
        );
        assert!(f["size"].as_u64().unwrap() > 0);
    }
    let m = &c["core"]["mapped"];
    assert!(m["luajit_arena"].as_u64().unwrap() >= c["luajit"]["segments_bytes"].as_u64().unwrap());
    assert!(
        m["glibc_arenas"].as_u64().unwrap() > 0,
        "{what}: the brk heap is named: {m}"
    );
    let sum: u64 = m
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(
        Some(sum),
        c["core"]["mapped_total"].as_u64(),
        "{what}: mapped adds up"
    );
}

/// The memory walks of `mem` (LuaJIT's allocator, glibc's arenas, nginx's
/// zones and timers) read from a core equal the live ones at that moment.
fn assert_same_mem(live: &Value, core: &Value, what: &str) {
    for k in ["luajit", "glibc", "timers", "threads", "pid"] {
        assert_eq!(
            live[k], core[k],
            "{what}: mem `{k}` differs from the live one"
        );
    }
    let strip = |v: &Value| -> Vec<Value> {
        v["shm"]
            .as_array()
            .unwrap()
            .iter()
            .map(|z| {
                let mut z = z.clone();
                let o = z.as_object_mut().unwrap();
                o.remove("rss");
                o.remove("pss");
                z
            })
            .collect()
    };
    assert_eq!(strip(live), strip(core), "{what}: shm zones differ");
    assert_eq!(live["luajit"]["found"], true);
    assert_eq!(live["glibc"]["found"], true);
    assert_core_mem_shape(core, what);
}

/// `mem --core` on an ljleak dump and a gcore of a luajit process paused
/// at its checkpoint: the allocator figures equal `mem -p` at that moment.
fn mem_of_cores_equals_live(interp: &Path, name: &str) {
    let dir = tmpdir(&format!("mem-{name}"));
    // Big enough for a table array the allocator maps directly (found by
    // its header, in the core as live).
    let mut p = LuaProc::spawn(
        interp,
        &common::testdata("lua/refs_known.lua"),
        &["20000", "100"],
    );
    p.ready();
    wait_in_read(p.pid);
    let live = mem_json(&["-p", &p.pid.to_string()]);
    let ours = dir.join("worker.core");
    dump(p.pid, &ours, &[]);
    let theirs = gcore(p.pid, &dir);
    let again = mem_json(&["-p", &p.pid.to_string()]);
    assert_eq!(
        live["luajit"], again["luajit"],
        "the target changed meanwhile"
    );
    p.kill();
    for (core, what) in [(&ours, "ljleak dump"), (&theirs, "gcore")] {
        let c = mem_json(&["--core", core.to_str().unwrap()]);
        assert_same_mem(&live, &c, &format!("{name} {what}"));
        let o = run(&["mem", "--core", core.to_str().unwrap()]);
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success());
        assert!(text.contains("absent from a core: Rss"), "{text}");
        assert!(!text.contains("kernel: Rss"), "{text}");
    }
    eprintln!(
        "{name}: LuaJIT gc_total {} arena_mapped {} mcode {}; glibc system {} in_use {}",
        live["luajit"]["gc_total"],
        live["luajit"]["arena_mapped"],
        live["luajit"]["mcode"],
        live["glibc"]["system"],
        live["glibc"]["in_use"]
    );
    // What a core cannot do is refused, not faked.
    let (c, e) = code(&["mem", "--core", ours.to_str().unwrap(), "--count", "2"]);
    assert_eq!(c, Some(2), "{e}");
    // Two core reports compare; a core report and a live one do not (the
    // kernel's figures would all read as changes).
    let (lj, cj) = (dir.join("live.json"), dir.join("core.json"));
    std::fs::write(&lj, live.to_string()).unwrap();
    let o = run(&["mem", "--core", ours.to_str().unwrap(), "--format", "json"]);
    std::fs::write(&cj, &o.stdout).unwrap();
    let (c, e) = code(&["diff", cj.to_str().unwrap(), cj.to_str().unwrap()]);
    assert_eq!(c, Some(0), "{e}");
    for (a, b) in [(&lj, &cj), (&cj, &lj)] {
        let (c, e) = code(&["diff", a.to_str().unwrap(), b.to_str().unwrap()]);
        assert_eq!(c, Some(9), "{e}");
        assert_eq!(e.trim().lines().count(), 1, "{e}");
        assert!(e.contains("read from a core file"), "{e}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn mem_core_equals_live_gc64() {
    if let Some(lj) = interp_with_gcore("gc64") {
        mem_of_cores_equals_live(&lj, "gc64");
    }
}

#[test]
fn mem_core_equals_live_nogc64() {
    if let Some(lj) = interp_with_gcore("nogc64") {
        mem_of_cores_equals_live(&lj, "nogc64");
    }
}

/// `mem --core` of an idle nginx worker: allocators, shared dict zones and
/// timers as `mem -p` shows them.
#[test]
fn nginx_worker_mem_core_equals_live() {
    if !have_gcore() {
        return;
    }
    let Some(n) = common::Nginx::start("app.conf", 1) else {
        return;
    };
    let w = n.worker();
    assert_eq!(n.get("/tables?n=3000").0, 200);
    assert_eq!(n.get("/collect").0, 200);
    let dir = tmpdir("mem-nginx");
    let ours = dir.join("worker.core");
    let wp = w.to_string();
    let mut agreed = None;
    for _ in 0..3 {
        let before = mem_json(&["-p", &wp]);
        dump(w, &ours, &[]);
        let theirs = gcore(w, &dir);
        let after = mem_json(&["-p", &wp]);
        if before["luajit"] == after["luajit"] && before["glibc"] == after["glibc"] {
            agreed = Some((before, theirs));
            break;
        }
    }
    let (live, theirs) = agreed.expect("the idle worker's memory kept changing");
    assert!(
        !live["shm"].as_array().unwrap().is_empty(),
        "app.conf has zones"
    );
    for (core, what) in [(&ours, "ljleak dump of nginx"), (&theirs, "gcore of nginx")] {
        let c = mem_json(&["--core", core.to_str().unwrap()]);
        assert_same_mem(&live, &c, what);
        assert!(c["core"]["mapped"]["shm"].as_u64().unwrap() > 0, "{what}");
    }
    assert_eq!(n.get("/hello"), (200, "hello\n".to_string()));
    std::fs::remove_dir_all(&dir).ok();
}

/// An nginx worker: the VM is found in the core through nginx's own
/// structures (ngx_cycle, symbols from the binary and the lua module found
/// by build-id), and the census equals the live one for an ljleak dump and
/// a gcore taken while the worker sat idle in epoll_wait.
#[test]
fn nginx_worker_core_census_equals_live() {
    if !have_gcore() {
        return;
    }
    let Some(n) = common::Nginx::start("app.conf", 1) else {
        return;
    };
    let w = n.worker();
    assert_eq!(n.get("/tables?n=3000").0, 200);
    assert_eq!(n.get("/collect").0, 200);
    let dir = tmpdir("nginx");
    let ours = dir.join("worker.core");
    // An idle worker runs no Lua; a timer or a stray request would show
    // as a difference between the censuses before and after the dumps.
    let mut agreed = None;
    for _ in 0..3 {
        let before = common::census(w);
        dump(w, &ours, &[]);
        let theirs = gcore(w, &dir);
        let after = common::census(w);
        if before["gc_total"] == after["gc_total"] && before["types"] == after["types"] {
            agreed = Some((before, theirs));
            break;
        }
    }
    let (live, theirs) = agreed.expect("the idle worker's heap kept changing");
    assert_eq!(live["luajit"]["method"], "nginx");
    let c1 = core_census(&ours);
    assert_eq!(c1["luajit"]["method"], "nginx", "found through ngx_cycle");
    assert_same_census(&live, &c1, "ljleak dump of nginx");
    let c2 = core_census(&theirs);
    assert_same_census(&live, &c2, "gcore of nginx");
    // The worker kept serving.
    assert_eq!(n.get("/hello"), (200, "hello\n".to_string()));
    std::fs::remove_dir_all(&dir).ok();
}

/// The kernel's core dump of an nginx worker (SIGABRT while idle): the VM
/// is found through ngx_cycle and the census equals the live one.
#[test]
fn kernel_core_of_nginx_worker_census_equals_live() {
    let Some(n) = common::Nginx::start("core.conf", 1) else {
        return;
    };
    let _turn = CORE_PATTERN.lock().unwrap_or_else(|e| e.into_inner());
    let old = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    let old = old.trim_end().to_string();
    let cores = n.prefix.join("logs");
    struct Restore(String);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = std::fs::write("/proc/sys/kernel/core_pattern", &self.0);
        }
    }
    let plain = !old.is_empty() && !old.starts_with('|') && !old.contains('/');
    let restore = if plain {
        None
    } else {
        let pat = format!("{}/core", cores.display());
        if !common::require(
            "a plain or writable /proc/sys/kernel/core_pattern (kernel core dumps)",
            std::fs::write("/proc/sys/kernel/core_pattern", &pat).is_ok(),
        ) {
            return;
        }
        Some(Restore(old.clone()))
    };
    let w = n.worker();
    assert_eq!(n.get("/tables?n=2000").0, 200);
    assert_eq!(n.get("/collect").0, 200);
    let live = common::census(w);
    let again = common::census(w);
    assert_eq!(live["types"], again["types"], "the idle worker is quiet");
    common::unsafe_kill(w, libc::SIGABRT);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let core = loop {
        let found = std::fs::read_dir(&cores)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("core"))
            });
        // Complete once the worker is gone (the master reaps it).
        if let Some(c) = found {
            if common::proc_state(w).is_none_or(|s| s == 'Z') {
                break c;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no kernel core of the worker in {}",
            cores.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    drop(restore);
    let c = core_census(&core);
    assert_eq!(c["luajit"]["method"], "nginx", "found through ngx_cycle");
    assert_same_census(&live, &c, "kernel core of nginx");
    std::fs::remove_file(&core).ok();
}

/// Damaged cores (bytes flipped in the headers, the notes and the heap)
/// give an error or a report, never a panic or a hang.
#[test]
fn mangled_cores_never_panic() {
    let Some(mut p) = common::luajit_script("refs_known.lua", &[]) else {
        return;
    };
    p.ready();
    wait_in_read(p.pid);
    let dir = tmpdir("mangled");
    let core = dir.join("ok.core");
    dump(p.pid, &core, &[]);
    p.resume_total();
    p.kill();
    let good = std::fs::read(&core).unwrap();
    let bad = dir.join("bad.core");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for round in 0..40 {
        let mut b = good.clone();
        // Half the rounds hit the headers and notes, half anywhere.
        let span = if round % 2 == 0 {
            16384.min(b.len())
        } else {
            b.len()
        };
        for _ in 0..1 + next() % 16 {
            let i = (next() % span as u64) as usize;
            b[i] = next() as u8;
        }
        std::fs::write(&bad, &b).unwrap();
        let o = common::run(&["objs", "--core", bad.to_str().unwrap(), "--format", "json"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !err.contains("panicked") && matches!(o.status.code(), Some(0 | 1 | 6 | 7 | 9 | 10)),
            "round {round}: {:?} {err}",
            o.status.code()
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
