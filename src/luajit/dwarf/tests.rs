//! Tests of DWARF struct extraction: real LuaJIT builds, a C fixture
//! compiled with gcc, and corrupted input.
use super::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const VARIANTS: &str = "/var/cache/ljleak/luajit-variants";

fn table(name: &str) -> BTreeMap<String, (u64, u64)> {
    let b = super::super::fields::BUILTINS
        .iter()
        .find(|b| b.name == name)
        .unwrap_or_else(|| panic!("no builtin table {name}"));
    let mut out = BTreeMap::new();
    for line in b.text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut it = line.split_whitespace();
        if let (Some(k), Some(o), Some(s)) = (it.next(), it.next(), it.next()) {
            if let (Ok(o), Ok(s)) = (o.parse(), s.parse()) {
                out.entry(k.to_string()).or_insert((o, s));
            }
        }
    }
    out
}

fn variant(name: &str) -> Option<Vec<u8>> {
    let path = Path::new(VARIANTS).join(name).join("luajit");
    match std::fs::read(&path) {
        Ok(data) => Some(data),
        Err(e) => {
            eprintln!("skipping: {}: {e}", path.display());
            None
        }
    }
}

/// Compare DWARF against a built-in table; returns the list of
/// differences for keys of the table (missing or different values).
fn diff(dwarf: &BTreeMap<String, (u64, u64)>, table: &BTreeMap<String, (u64, u64)>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in table {
        match dwarf.get(k) {
            None => out.push(format!("{k}: table {v:?}, missing in DWARF")),
            Some(d) if d != v => out.push(format!("{k}: table {v:?}, DWARF {d:?}")),
            _ => {}
        }
    }
    out
}

fn check_variant(name: &str, table_name: &str, exact: bool) {
    let Some(data) = variant(name) else { return };
    let t0 = Instant::now();
    let map = extract(&data).expect("field_map").expect("has structs");
    eprintln!("{name}: {} entries in {:?}", map.len(), t0.elapsed());
    let t = table(table_name);
    let diffs = diff(&map, &t);
    let extra: Vec<_> = map.keys().filter(|k| !t.contains_key(*k)).collect();
    if !extra.is_empty() {
        eprintln!("{name}: keys in DWARF but not in {table_name}: {extra:?}");
    }
    for d in &diffs {
        eprintln!("{name} vs {table_name}: {d}");
    }
    if exact {
        assert!(diffs.is_empty(), "{name}: {} differences", diffs.len());
    }
    // The public API agrees with the internal map.
    let fm = field_map(&data).unwrap().unwrap();
    assert_eq!(fm.len(), map.len());
    for (k, v) in &map {
        assert_eq!(fm.get(k), Some(*v), "{k}");
    }
}

#[test]
fn luajit2_gc64_matches_table() {
    check_variant("luajit2-gc64", "luajit2-gc64", true);
}

#[test]
fn luajit2_nogc64_matches_table() {
    check_variant("luajit2-nogc64", "luajit2-nogc64", true);
}

#[test]
fn upstream_gc64_vs_table() {
    // Debian's 2022 upstream snapshot; the table is from another commit,
    // so differences are reported, not fatal.
    check_variant("upstream-gc64", "upstream-gc64", false);
}

#[test]
fn upstream_nogc64_has_all_structs() {
    let Some(data) = variant("upstream-nogc64") else {
        return;
    };
    let map = extract(&data).unwrap().unwrap();
    for s in STRUCTS {
        assert!(map.contains_key(&format!("{s}.SIZEOF")), "{s}");
    }
    assert_eq!(map["GCtab.metatable"].1, 4);
    assert!(!map.contains_key("lua_State.exdata"));
}

#[test]
fn all_structs_found_in_variants() {
    for name in ["luajit2-gc64", "luajit2-nogc64", "upstream-gc64"] {
        let Some(data) = variant(name) else { continue };
        let map = extract(&data).unwrap().unwrap();
        for s in STRUCTS {
            assert!(map.contains_key(&format!("{s}.SIZEOF")), "{name}: {s}");
        }
        // Anonymous members are not flattened.
        assert!(!map.contains_key("GCupval.tv"), "{name}");
        assert!(!map.contains_key("GCupval.prev"), "{name}");
    }
}

#[test]
fn stripped_binary_is_none() {
    let mut paths = vec![PathBuf::from("/usr/bin/luajit")];
    paths.push(Path::new(VARIANTS).join("luajit2-gc64/luajit.stripped"));
    let mut tested = 0;
    for p in paths {
        let Ok(data) = std::fs::read(&p) else {
            eprintln!("skipping: {} absent", p.display());
            continue;
        };
        assert!(field_map(&data).unwrap().is_none(), "{}", p.display());
        tested += 1;
    }
    eprintln!("stripped binaries tested: {tested}");
}

#[test]
fn rust_binary_has_none_of_the_structs() {
    // Our own test binary: DWARF (maybe) but no LuaJIT structs.
    let exe = std::env::current_exe().unwrap();
    let data = std::fs::read(exe).unwrap();
    let t0 = Instant::now();
    assert!(field_map(&data).unwrap().is_none());
    eprintln!(
        "full scan of a {} byte Rust binary: {:?}",
        data.len(),
        t0.elapsed()
    );
}

#[test]
fn garbage_is_an_error() {
    assert!(field_map(&[]).is_err());
    assert!(field_map(b"\x7fELF garbage garbage garbage").is_err());
    assert!(field_map(&[0u8; 4096]).is_err());
}

/// Corrupt the debug sections of a real binary in many ways; must
/// return Ok or Err, never panic or hang.
#[test]
fn corrupted_dwarf_does_not_panic() {
    let Some(data) = variant("luajit2-nogc64") else {
        return;
    };
    let file = object::File::parse(&*data).unwrap();
    let ranges: Vec<(u64, u64)> = [".debug_info", ".debug_abbrev", ".debug_str"]
        .iter()
        .filter_map(|n| file.section_by_name(n)?.file_range())
        .collect();
    drop(file);
    assert!(!ranges.is_empty());
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let (mut ok, mut err) = (0, 0);
    let t0 = Instant::now();
    for round in 0..150 {
        let mut d = data.clone();
        let (start, len) = ranges[round % ranges.len()];
        // Corrupt near the front so the damage is reached before all
        // structs are found (the scan stops early).
        let span = len.min(if round % 2 == 0 { 4096 } else { len });
        let flips = 1 + next() % 16;
        for _ in 0..flips {
            let pos = (start + next() % span) as usize;
            d[pos] = next() as u8;
        }
        if round % 10 == 9 {
            // Truncate the section's content by zeroing its tail.
            let cut = (start + next() % len) as usize;
            for b in &mut d[cut..(start + len) as usize] {
                *b = 0xff;
            }
        }
        match field_map(&d) {
            Ok(_) => ok += 1,
            Err(_) => err += 1,
        }
    }
    eprintln!("corruption rounds: {ok} ok, {err} err, {:?}", t0.elapsed());
}

const C_SRC: &str = r#"
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
typedef uint32_t GCRef32;
typedef struct Node { int64_t val; int64_t key; GCRef32 next; } Node;
typedef struct GCtab {
  void *nextgc; uint8_t marked; uint8_t gct; const volatile uint8_t nomm; int8_t colo;
  int64_t *array; Node *node; uint32_t asize, hmask;
  double grid[3][5];
  void (*fn)(int);
  union { int64_t tv; struct { uint32_t prev, next; }; };
  struct { int a; char b[7]; } named_anon;
  unsigned bits:3, more:9;
  char flex[];
} GCtab;
typedef struct { int a; long b; } SBuf;  /* typedef of an anonymous struct */
typedef struct SBuf_shadow { int x; } GCstr; /* typedef of another name */
struct lua_State { GCtab *t; SBuf buf[2]; };
typedef struct lua_State lua_State;
union GCupval { double d; char c[12]; };
typedef union GCupval GCupval;
GCtab gt; SBuf sb; GCstr gs; lua_State ls; GCupval uv;
#define P(S, f) printf(#S "." #f " %zu %zu\n", offsetof(S, f), sizeof(((S *)0)->f))
#define Z(S) printf(#S ".SIZEOF 0 %zu\n", sizeof(S))
int main(void) {
  P(Node, val); P(Node, key); P(Node, next); Z(Node);
  P(GCtab, nextgc); P(GCtab, marked); P(GCtab, gct); P(GCtab, nomm); P(GCtab, colo);
  P(GCtab, array); P(GCtab, node); P(GCtab, asize); P(GCtab, hmask); P(GCtab, grid);
  P(GCtab, fn); P(GCtab, named_anon); printf("GCtab.flex %zu 0\n", offsetof(GCtab, flex));
  Z(GCtab);
  P(SBuf, a); P(SBuf, b); Z(SBuf); P(GCstr, x); Z(GCstr);
  P(lua_State, t); P(lua_State, buf); Z(lua_State);
  P(GCupval, d); P(GCupval, c); Z(GCupval);
  return 0;
}
"#;

/// Build the C program above with gcc in several DWARF flavours, run it
/// to get the true offsets, and compare.
#[test]
fn gcc_built_structs() {
    if Command::new("gcc").arg("--version").output().is_err() {
        eprintln!("skipping: no gcc");
        return;
    }
    let dir = std::env::temp_dir().join(format!("ljleak-dwarf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("t.c");
    std::fs::write(&src, C_SRC).unwrap();
    let flavours: &[&[&str]] = &[
        &["-gdwarf-5"],
        &["-gdwarf-4"],
        &["-gdwarf-2", "-gstrict-dwarf"],
        &["-gdwarf-5", "-gz=zlib"],
        &["-gdwarf-4", "-gz=zlib-gnu"],
        &["-gdwarf-4", "-fdebug-types-section"],
        &["-gdwarf-5", "-fdebug-types-section"],
        &["-gdwarf-4", "-gstrict-dwarf", "-m32"],
    ];
    for (i, flags) in flavours.iter().enumerate() {
        let exe = dir.join(format!("t{i}"));
        let out = Command::new("gcc")
            .args(*flags)
            .arg("-O0")
            .arg("-o")
            .arg(&exe)
            .arg(&src)
            .output()
            .unwrap();
        if !out.status.success() {
            eprintln!(
                "skipping flavour {flags:?}: gcc failed: {}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .next()
                    .unwrap_or("")
            );
            continue;
        }
        let run = Command::new(&exe).output().unwrap();
        assert!(run.status.success());
        let mut expect = BTreeMap::new();
        for line in String::from_utf8(run.stdout).unwrap().lines() {
            let v: Vec<&str> = line.split_whitespace().collect();
            expect.insert(
                v[0].to_string(),
                (v[1].parse().unwrap(), v[2].parse().unwrap()),
            );
        }
        let data = std::fs::read(&exe).unwrap();
        let got = extract(&data).unwrap().expect("structs");
        let mut diffs = diff(&got, &expect);
        for k in got.keys() {
            if !expect.contains_key(k)
                && !k.starts_with("GCtab.bits")
                && !k.starts_with("GCtab.more")
            {
                diffs.push(format!("{k}: unexpected {:?}", got[k]));
            }
        }
        assert!(diffs.is_empty(), "{flags:?}: {diffs:#?}");
        // Bitfields: byte offset of the first bit, size of the type.
        assert_eq!(got["GCtab.bits"].1, 4, "{flags:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
