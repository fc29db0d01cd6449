//! The shipped binary (scripts/build-release.sh): static, stripped, and
//! working from an empty root that holds nothing but itself and a mounted
//! /proc, against a luajit process outside that root.

mod common;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn dist_binary() -> PathBuf {
    common::root().join("target/x86_64-unknown-linux-gnu/dist/ljleak")
}

/// Unmounts and removes the root on drop, whatever the test did.
struct Root(PathBuf);

impl Drop for Root {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.join("proc")).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn static_binary_runs_gc_and_objs_from_an_empty_chroot() {
    let bin = dist_binary();
    if !common::require("the static binary (scripts/build-release.sh)", bin.exists()) {
        return;
    }
    // Static and stripped: no interpreter, no imports, no symbols.
    let elf = std::fs::read(&bin).unwrap();
    let file = object::File::parse(&*elf).unwrap();
    use object::Object;
    assert!(
        file.section_by_name(".interp").is_none(),
        "no dynamic loader"
    );
    // static-pie keeps a .dynamic section for its own relocation, but
    // imports nothing from a shared library.
    let imports = file.imports().unwrap();
    assert!(
        imports.is_empty(),
        "no shared libraries: {} imports",
        imports.len()
    );
    assert!(file.section_by_name(".symtab").is_none(), "stripped");

    let Some(mut p) = common::luajit_script("refs_small.lua", &[]) else {
        return;
    };
    p.ready();
    let root = Root(std::env::temp_dir().join(format!("ljleak-chroot-{}", std::process::id())));
    std::fs::create_dir_all(root.0.join("proc")).unwrap();
    std::fs::copy(&bin, root.0.join("ljleak")).unwrap();
    assert!(Command::new("mount")
        .args(["-t", "proc", "proc"])
        .arg(root.0.join("proc"))
        .status()
        .unwrap()
        .success());
    // Nothing else in the root.
    let entries: Vec<String> = std::fs::read_dir(&root.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries.len(), 2, "{entries:?}");
    let pid = p.pid.to_string();
    let run = |args: &[&str]| {
        let o = Command::new("chroot")
            .arg(&root.0)
            .arg("/ljleak")
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?} in the chroot: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice::<Value>(&o.stdout).unwrap()
    };
    let gc = run(&["gc", "-p", &pid, "--format", "json"]);
    let objs = run(&["objs", "-p", &pid, "--format", "json"]);
    let total = p.resume_total();
    assert_eq!(gc["gc_total"].as_u64(), Some(total), "{gc}");
    assert_eq!(objs["gc_total"].as_u64(), Some(total));
    assert_eq!(objs["walker_total"], objs["gc_total"], "exact walk: {objs}");
}
