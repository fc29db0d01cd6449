//! Golden files for the flame graphs every command draws: a trimmed,
//! kind-coloured leak graph and a differential graph that colours whole
//! stacks. The SVGs are deterministic, so any change in drawing shows up
//! here; regenerate with `LJLEAK_UPDATE_GOLDEN=1 cargo test --test golden`
//! and review the diff.

use std::collections::BTreeMap;
use std::path::PathBuf;

use ljleak::report::flame::{self, Flame};

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/golden")
        .join(name)
}

fn folded(name: &str) -> BTreeMap<String, u64> {
    std::fs::read_to_string(golden(name))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (s, n) = l.rsplit_once(' ')?;
            Some((s.to_string(), n.parse().ok()?))
        })
        .collect()
}

fn check(name: &str, svg: &str) {
    let path = golden(name);
    if std::env::var_os("LJLEAK_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, svg).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (LJLEAK_UPDATE_GOLDEN=1 writes it)", path.display()));
    assert!(
        want == svg,
        "{name} differs from the golden file (LJLEAK_UPDATE_GOLDEN=1 to review)"
    );
}

/// rgb(...) fill of the first rect drawn for the frame titled `frame`.
fn fill_of(svg: &str, frame: &str) -> String {
    let at = svg
        .find(&format!("<title>{frame} ("))
        .unwrap_or_else(|| panic!("no frame {frame}"));
    let rest = &svg[at..];
    let f = rest.find("fill=\"").unwrap() + 6;
    rest[f..f + rest[f..].find('"').unwrap()].to_string()
}

#[test]
fn trimmed_and_coloured_leak_graph() {
    let f = folded("nginx-leaks.folded");
    let lines: Vec<String> = f.iter().map(|(s, n)| format!("{s} {n}")).collect();
    let opts = Flame {
        title: "Memory Leak Flame Graph".into(),
        what: "pid 1234, 10.0 s window".into(),
        unit: "bytes".into(),
        trim: true,
    };
    let svg = flame::svg(&opts, lines.iter().map(String::as_str)).unwrap();
    check("nginx-leaks.svg", &svg);
    // The event loop is one frame; nothing of it is left.
    assert!(svg.contains(flame::EVENT_LOOP));
    assert!(!svg.contains("ngx_epoll_process_events (") || svg.contains("ngx_event_accept"));
    assert!(!svg.contains(">_start<"), "the prefix is trimmed");
    // Total and unit in the subtitle.
    assert!(svg.contains("total 596.0 KiB (610304 bytes)"), "subtitle");
    // Lua green, C orange, JIT purple: different hue families.
    let lua = fill_of(&svg, "@/srv/app/leaks.lua:15");
    let c = fill_of(&svg, "malloc");
    let jit = fill_of(&svg, "[jit code]");
    assert!(lua != c && c != jit && lua != jit, "{lua} {c} {jit}");
    let rgb = |s: &str| -> Vec<u32> {
        s.trim_start_matches("rgb(")
            .trim_end_matches(')')
            .split(',')
            .map(|x| x.trim().parse().unwrap())
            .collect()
    };
    let (l, m) = (rgb(&lua), rgb(&c));
    assert!(l[1] > l[0], "Lua frames are green: {lua}");
    assert!(m[0] > m[2] && m[0] > 200, "C frames are orange: {c}");
    // Same input, same bytes.
    assert_eq!(
        svg,
        flame::svg(&opts, lines.iter().map(String::as_str)).unwrap()
    );
}

#[test]
fn differential_graph_colours_whole_stacks() {
    let a = folded("nginx-leaks-before.folded");
    let b = folded("nginx-leaks.folded");
    let opts = Flame {
        title: "ljleak diff: a.json -> b.json".into(),
        what: String::new(),
        unit: "bytes".into(),
        trim: true,
    };
    let svg = flame::diff_svg(&opts, &a, &b).unwrap();
    check("nginx-leaks-diff.svg", &svg);
    // Grown stack: red all the way up, not only its leaf.
    for f in ["@/srv/app/leaks.lua:15", "lj_ccall_func", "malloc"] {
        let c = fill_of(&svg, f);
        assert!(c.starts_with("rgb(255,"), "{f} grew: {c}");
    }
    // A vanished stack is drawn, blue.
    let c = fill_of(&svg, "@/srv/app/old.lua:7");
    assert!(c.ends_with(",255)"), "old.lua vanished: {c}");
}
