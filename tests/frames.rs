//! Lua frames on live luajit2 processes (GC64 and non-GC64): PC → line
//! lookups agree with each prototype's first line, and the backtrace of
//! every suspended coroutine is exactly what `debug.traceback(co)` printed.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{luajit, require, testdata, variant, LuaProc};
use ljleak::capture::{capture, CaptureOpts};
use ljleak::luajit::frames::{lua_backtrace, FuncKind, LuaFrame, ProtoIndex};
use ljleak::luajit::vm::gct;
use ljleak::luajit::walk::walk;
use ljleak::luajit::Vm;

/// `debug.traceback` flattened by the script (`|` for newlines) → the
/// location of each level (`file.lua:12` or `[C]`) and, when it printed
/// `in function 'name'`, the name.
fn traceback_locs(flat: &str) -> Vec<String> {
    flat.split('|')
        .filter(|l| !l.is_empty() && *l != "stack traceback:")
        .map(|l| {
            let loc = l.split_once(": ").map(|x| x.0).unwrap_or(l);
            match l.split_once("in function '") {
                Some((_, rest)) => format!("{loc} '{}'", rest.trim_end_matches('\'')),
                None => loc.to_string(),
            }
        })
        .collect()
}

/// A frame the way `traceback_locs` reads a traceback line.
fn frame_key(f: &LuaFrame) -> String {
    match &f.called {
        Some(c) => format!("{} '{}'", f.traceback_loc(), c.name),
        None => f.traceback_loc(),
    }
}

fn check(interp: &Path, n: usize, m: usize) {
    let script = testdata("lua/threads.lua");
    let mut p = LuaProc::spawn(interp, &script, &[&n.to_string(), &m.to_string()]);
    let tb_a = traceback_locs(&p.expect("tb a "));
    let tb_b = traceback_locs(&p.expect("tb b "));
    let tb_main = traceback_locs(&p.expect("tb main "));
    assert_eq!(p.ready(), "threads");
    let cap = capture(p.pid, &CaptureOpts::default()).expect("capture");
    let vm = cap.heap_vm();
    let lim = cap.walk_limits();
    let index = ProtoIndex::build(&vm, lim);
    assert!(index.skipped.is_empty(), "{:?}", index.skipped);

    // Every proto: the first instruction after the header maps to firstline,
    // and the script's functions are there with their known first lines.
    let chunk = format!("@{}", script.display());
    let mut firstlines = Vec::new();
    for pr in index.protos() {
        let loc = index.lookup(pr.bc + 4).expect("pc in proto");
        let want = if pr.has_lineinfo() { pr.firstline } else { 0 };
        assert_eq!(loc.line, want, "proto {:#x} {}", pr.addr, pr.chunk);
        assert_eq!(loc.proto, pr.addr);
        if *pr.chunk == *chunk {
            firstlines.push(pr.firstline);
        }
    }
    firstlines.sort_unstable();
    // main chunk 0, inner 11, mid 16, outer_a 20, __index 26, outer_b 32, flat 38.
    assert_eq!(
        firstlines,
        vec![0, 11, 16, 20, 26, 32, 38],
        "protos of {chunk}"
    );

    // Every thread's backtrace, grouped.
    let mut threads = Vec::new();
    walk(&vm, lim, |o| {
        if o.gct == gct::THREAD && !o.dead {
            threads.push(o.addr);
        }
    });
    let mut groups: BTreeMap<Vec<String>, usize> = BTreeMap::new();
    let mut main_locs = None;
    for &t in &threads {
        let bt = lua_backtrace(&vm, &index, t, 100);
        let locs: Vec<String> = bt.iter().map(frame_key).collect();
        if t == vm.main {
            // Innermost is io.read (a fast function), then what traceback
            // printed from the same line.
            assert!(matches!(bt[0].what, FuncKind::Fast { .. }), "{:?}", bt[0]);
            main_locs = Some(locs[1..].to_vec());
        } else {
            *groups.entry(locs).or_default() += 1;
        }
    }
    assert_eq!(main_locs.as_ref(), Some(&tb_main), "main thread");
    let rel = |v: &[String]| {
        v.iter()
            .map(|s| s.replace(&script.display().to_string(), "F"))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        rel(&tb_a),
        ["[C] 'yield'", "F:12 'inner'", "F:17", "[C] 'pcall'", "F:21"]
    );
    assert_eq!(rel(&tb_b), ["[C] 'yield'", "F:27 '__index'", "F:34"]);
    assert_eq!(groups.get(&tb_a), Some(&n), "group a in {groups:?}");
    assert_eq!(groups.get(&tb_b), Some(&m), "group b in {groups:?}");
    assert_eq!(
        groups.values().sum::<usize>(),
        n + m,
        "no other threads: {groups:?}"
    );
    drop(p);
}

#[test]
fn frames_luajit2_gc64() {
    let Some(lj) = luajit() else {
        require("/usr/bin/luajit (luajit2)", false);
        return;
    };
    check(&lj, 5, 3);
}

#[test]
fn frames_luajit2_nogc64() {
    let Some(lj) = variant("luajit2-nogc64", false) else {
        require(
            "luajit2-nogc64 variant (scripts/build-luajit-variants.sh)",
            false,
        );
        return;
    };
    check(&lj, 4, 2);
}

#[test]
fn frames_upstream_gc64_and_nogc64() {
    for name in ["upstream-gc64", "upstream-nogc64"] {
        let Some(lj) = variant(name, false) else {
            require(
                &format!("{name} variant (scripts/build-luajit-variants.sh)"),
                false,
            );
            continue;
        };
        check(&lj, 3, 2);
    }
}

#[test]
fn frames_stripped_luajit2_nogc64() {
    // No DWARF: layout from the built-in tables.
    let Some(lj) = variant("luajit2-nogc64", true) else {
        require("luajit2-nogc64 stripped variant", false);
        return;
    };
    check(&lj, 2, 5);
}

/// Overwrite one byte of a copied heap.
fn poke(img: &mut ljleak::target::HeapImage, addr: u64, val: u8) {
    for s in img.segments_mut() {
        if addr >= s.start && addr < s.start + s.data.len() as u64 {
            s.data[(addr - s.start) as usize] = val;
        }
    }
}

#[test]
fn frames_survive_corrupt_stacks() {
    let Some(lj) = luajit() else {
        require("/usr/bin/luajit (luajit2)", false);
        return;
    };
    let mut p = LuaProc::spawn(&lj, &testdata("lua/threads.lua"), &["3", "3"]);
    assert_eq!(p.ready(), "threads");
    let mut cap = capture(p.pid, &CaptureOpts::default()).expect("capture");
    drop(p);
    let lay = cap.vm.layout.clone();
    let (g, main) = (cap.vm.roots.g, cap.vm.roots.main);
    let lim = cap.walk_limits();
    // Each thread's stack range and its lua_State header.
    let mut targets = Vec::new();
    {
        let vm = Vm::new(&cap.image, &lay, g, main);
        let mut threads = Vec::new();
        walk(&vm, lim, |o| {
            if o.gct == gct::THREAD {
                threads.push(o.addr);
            }
        });
        for t in threads {
            let stack = vm.gcref(t + lay.f.l_stack.off).unwrap();
            let n = lay.f.l_stacksize.get(&cap.image, t).unwrap();
            targets.push((t, stack, n * 8));
        }
    }
    assert_eq!(targets.len(), 7);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut frames_seen = 0;
    for round in 0..400 {
        let (t, stack, len) = targets[round % targets.len()];
        // Mostly the live part of the stack, sometimes the lua_State header.
        for _ in 0..4 {
            let addr = if rnd() % 4 == 0 {
                t + rnd() % lay.f.l_size.off
            } else {
                stack + rnd() % len.min(64 * 8)
            };
            poke(
                cap.image.image_mut().expect("a copied heap"),
                addr,
                rnd() as u8,
            );
        }
        let vm = Vm::new(&cap.image, &lay, g, main);
        let index = ProtoIndex::build(&vm, lim);
        for &(t, _, _) in &targets {
            let bt = lua_backtrace(&vm, &index, t, 50);
            assert!(bt.len() <= 50);
            frames_seen += bt.len();
        }
    }
    // Corruption cuts stacks short but does not wipe them all at once.
    assert!(frames_seen > 0);
}

/// A count hook blocked in io.read: the interrupted function's line comes
/// from the interpreter's C frame (SAVE_PC, the cframe chain), which lives
/// on the native stack, so the walk reads the live (blocked) process.
fn check_hook(interp: &Path) {
    let script = testdata("lua/hook.lua");
    let mut p = LuaProc::spawn(interp, &script, &[]);
    let tb = traceback_locs(&p.expect("tb hook "));
    assert_eq!(p.ready(), "hook");
    let rel: Vec<String> = tb
        .iter()
        .map(|s| s.replace(&script.display().to_string(), "F"))
        .collect();
    assert_eq!(
        rel[..3],
        [s("F:21 '__mod'"), s("F:14 'busy'"), s("F:23")],
        "{tb:?}"
    );
    let cap = capture(p.pid, &CaptureOpts::default()).expect("capture");
    let index = ProtoIndex::build(&cap.heap_vm(), cap.walk_limits());
    let live = ljleak::target::ProcessMemory::new(p.pid);
    let vm = Vm::new(&live, &cap.vm.layout, cap.vm.roots.g, cap.vm.roots.main);
    let bt = lua_backtrace(&vm, &index, vm.main, 50);
    assert!(
        matches!(bt[0].what, FuncKind::Fast { .. }),
        "io.read on top: {:?}",
        bt[0]
    );
    let got: Vec<String> = bt[1..].iter().map(frame_key).collect();
    assert_eq!(got, tb, "backtrace through the C frame of the hook");
    drop(p);
}

fn s(x: &str) -> String {
    x.to_string()
}

#[test]
fn frames_hook_gc64() {
    let Some(lj) = luajit() else {
        require("/usr/bin/luajit (luajit2)", false);
        return;
    };
    check_hook(&lj);
}

#[test]
fn frames_hook_nogc64() {
    let Some(lj) = variant("luajit2-nogc64", false) else {
        require("luajit2-nogc64 variant", false);
        return;
    };
    check_hook(&lj);
}

#[test]
fn frames_hook_upstream() {
    for name in ["upstream-gc64", "upstream-nogc64"] {
        let Some(lj) = variant(name, false) else {
            require(&format!("{name} variant"), false);
            continue;
        };
        check_hook(&lj);
    }
}
