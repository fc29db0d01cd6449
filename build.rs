//! Compiles the eBPF programs under src/trace/bpf/ with clang and leaves
//! the object in OUT_DIR, where src/trace/ebpf embeds it (include_bytes!):
//! the binary needs no compiler, headers or BTF on the target machine.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let dir = PathBuf::from("src/trace/bpf");
    for f in ["ljleak.bpf.c", "ljleak.h", "lua_walk.h"] {
        println!("cargo:rerun-if-changed={}", dir.join(f).display());
    }
    println!("cargo:rerun-if-env-changed=CLANG");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("ljleak.bpf.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    // The asm/ uapi headers (struct pt_regs) live under the multiarch dir.
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = format!("/usr/include/{arch}-linux-gnu");
    let status = Command::new(&clang)
        .args([
            "-target", "bpf", "-mcpu=v3", "-O2", "-g", "-Wall", "-Werror",
        ])
        .arg(format!("-I{multiarch}"))
        .arg("-c")
        .arg(dir.join("ljleak.bpf.c"))
        .arg("-o")
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!(
            "{clang} failed ({s}) compiling src/trace/bpf/ljleak.bpf.c; \
             the BPF headers come from libbpf-dev: run scripts/install-deps.sh"
        ),
        Err(e) => panic!(
            "cannot run `{clang}` ({e}): ljleak's eBPF programs are compiled at build time \
             with clang and libbpf-dev's headers; run scripts/install-deps.sh (or set CLANG)"
        ),
    }
}
