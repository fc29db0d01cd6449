//! DWARF from a separate debug file found by build-id under
//! /usr/lib/debug/.build-id. Its own test binary, because it installs a
//! debug file system-wide for the duration of the test and the census tests
//! (another binary; cargo runs test binaries one at a time) expect stripped
//! variants to have none.

mod common;

use common::*;

struct Installed(std::path::PathBuf);

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

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
    let id = build_id(&stripped);
    assert_eq!(id, build_id(&dbg), "strip keeps the build-id");
    let dir = std::path::Path::new("/usr/lib/debug/.build-id").join(&id[..2]);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{}.debug", &id[2..]));
    std::fs::copy(&dbg, &file).unwrap();
    let _guard = Installed(file);

    let td = testdata("");
    let mut p = LuaProc::spawn(
        &stripped,
        &testdata("lua/census_populations.lua"),
        &[td.to_str().unwrap()],
    );
    p.ready();
    let c = census(p.pid);
    let total = p.resume_total();
    assert_eq!(c["gc_total"].as_u64().unwrap(), total);
    assert_eq!(c["walker_total"], c["gc_total"]);
    // No symbols in the binary: found by scan; layout from the debug file.
    assert_eq!(c["luajit"]["method"], "scan");
    assert_eq!(c["luajit"]["layout_source"], "dwarf");
    assert_eq!(c["luajit"]["layout"], "luajit2-nogc64");
}
