//! DWARF from a separate debug file found by build-id under
//! /usr/lib/debug/.build-id. The target runs in its own mount namespace
//! with a private /usr/lib/debug holding the file, so nothing system-wide
//! changes; ljleak finds it through /proc/PID/root, as it would for a
//! process in a container.

mod common;

use common::*;

fn build_id(path: &std::path::Path) -> String {
    use object::Object;
    let data = std::fs::read(path).unwrap();
    let obj = object::File::parse(&*data).unwrap();
    obj.build_id()
        .unwrap()
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn layout_from_debug_file_by_build_id() {
    let (Some(dbg), Some(stripped)) = (
        variant("luajit2-nogc64", false),
        variant("luajit2-nogc64", true),
    ) else {
        require(
            "LuaJIT variant luajit2-nogc64 (scripts/build-luajit-variants.sh)",
            false,
        );
        return;
    };
    if !require(
        "unshare (util-linux)",
        std::path::Path::new("/usr/bin/unshare").exists(),
    ) {
        return;
    }
    let id = build_id(&stripped);
    assert_eq!(id, build_id(&dbg), "strip keeps the build-id");
    let tmp = std::env::temp_dir().join(format!("ljleak-debugroot-{}", std::process::id()));
    let dir = tmp.join(".build-id").join(&id[..2]);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&dbg, dir.join(format!("{}.debug", &id[2..]))).unwrap();
    std::fs::create_dir_all("/usr/lib/debug").unwrap();

    let td = testdata("");
    let mut cmd = std::process::Command::new("/usr/bin/unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount --bind '{}' /usr/lib/debug && exec '{}' '{}' '{}'",
            tmp.display(),
            stripped.display(),
            testdata("lua/census_populations.lua").display(),
            td.display()
        ));
    let mut p = LuaProc::spawn_cmd(cmd);
    p.ready();
    let c = census_at_checkpoint(&mut p);
    drop(p);
    std::fs::remove_dir_all(&tmp).ok();
    // No symbols in the binary: found by scan; layout from the debug file.
    assert_eq!(c["luajit"]["method"], "scan");
    assert_eq!(c["luajit"]["layout_source"], "dwarf");
    assert_eq!(c["luajit"]["layout"], "luajit2-nogc64");
    // Outside the namespace nothing was installed.
    assert!(!std::path::Path::new("/usr/lib/debug/.build-id")
        .join(&id[..2])
        .join(format!("{}.debug", &id[2..]))
        .exists());
}
