//! A bounded fuzzer run by the normal test suite (issue 9): random and
//! mutated heap images, saved image files, DWARF-carrying ELF files,
//! snapshots and folded stacks fed to the walker and the parsers. Each
//! input must be handled without a panic (caught with catch_unwind), in
//! bounded time, and the whole run in bounded memory. A deterministic
//! xorshift PRNG makes every failure reproducible from the printed seed
//! and iteration; `LJLEAK_FUZZ_SECS` (default 4 per target) lengthens a
//! run, `LJLEAK_FUZZ_SEED` changes the seed.
//!
//! Another parser joins by one call to [`fuzz_bytes`] with a seed corpus
//! and a function taking `&[u8]` (a core-file reader, for instance).

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::Command;
use std::time::{Duration, Instant};

use ljleak::luajit::walk::{walk, Limits};
use ljleak::luajit::{Layout, Vm};
use ljleak::target::HeapImage;

/// Longest any single input may take.
const PER_INPUT: Duration = Duration::from_secs(2);

struct Rng(u64);

impl Rng {
    fn new(salt: u64) -> Rng {
        let seed = std::env::var("LJLEAK_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x9e37_79b9_7f4a_7c15u64);
        Rng((seed ^ salt.wrapping_mul(0x2545_f491_4f6c_dd1d)) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn budget() -> Duration {
    Duration::from_secs_f64(
        std::env::var("LJLEAK_FUZZ_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(4.0),
    )
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Run `f` on one input: no panic, bounded time.
fn check_one(what: &str, iter: usize, f: impl FnOnce()) {
    let t = Instant::now();
    let r = catch_unwind(AssertUnwindSafe(f));
    assert!(r.is_ok(), "{what}: panic at iteration {iter}");
    assert!(
        t.elapsed() < PER_INPUT,
        "{what}: iteration {iter} took {:?}",
        t.elapsed()
    );
}

/// One mutation of `data` in place: byte flips, 8-byte words (small,
/// huge, or pointing back into the buffer), copied or zeroed runs,
/// truncation and extension.
fn mutate(r: &mut Rng, data: &mut Vec<u8>, base: u64) {
    if data.is_empty() {
        data.push(r.next() as u8);
        return;
    }
    let at = r.below(data.len());
    match r.below(7) {
        0 => data[at] ^= 1 << r.below(8),
        1 => data[at] = r.next() as u8,
        2 | 3 => {
            let v = match r.below(4) {
                0 => r.next(),
                1 => base + r.below(data.len()) as u64,
                2 => 0xffff_fff0,
                _ => 0,
            };
            let end = (at + 8).min(data.len());
            data[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
        }
        4 => {
            let len = r.below(64).min(data.len() - at);
            let from = r.below(data.len() - len + 1);
            let run: Vec<u8> = data[from..from + len].to_vec();
            data[at..at + len].copy_from_slice(&run);
        }
        5 => {
            let len = r.below(256).min(data.len() - at);
            data[at..at + len].fill(0);
        }
        _ => {
            if r.below(2) == 0 {
                data.truncate(at);
            } else {
                let n = r.below(64);
                for _ in 0..n {
                    data.push(r.next() as u8);
                }
            }
        }
    }
}

/// Feed mutations of `seeds` to `f` for the budget.
pub fn fuzz_bytes(what: &str, salt: u64, seeds: &[Vec<u8>], mut f: impl FnMut(&[u8])) -> usize {
    let mut r = Rng::new(salt);
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < budget() && !seeds.is_empty() {
        let mut input = seeds[r.below(seeds.len())].clone();
        for _ in 0..1 + r.below(8) {
            mutate(&mut r, &mut input, 0);
        }
        check_one(what, n, || f(&input));
        n += 1;
    }
    n
}

/// A real heap copy of luajit2 with every object type, and its VM roots.
fn real_image() -> Option<(std::path::PathBuf, Layout, u64)> {
    let mut p = common::luajit_script("census_populations.lua", &[])?;
    for _ in 0..9 {
        p.ready();
        p.resume_total();
    }
    assert_eq!(p.ready(), "buffers");
    let img = std::env::temp_dir().join(format!("ljleak-fuzzimg-{}.img", std::process::id()));
    let _ = std::fs::remove_file(&img);
    let c = common::run_json(&[
        "objs",
        "-p",
        &p.pid.to_string(),
        "--format",
        "json",
        "--save-image",
        img.to_str().unwrap(),
    ]);
    let lay = Layout::builtins()
        .into_iter()
        .find(|l| l.name == c["luajit"]["layout"])
        .unwrap();
    let g = u64::from_str_radix(
        c["luajit"]["global_state"]
            .as_str()
            .unwrap()
            .trim_start_matches("0x"),
        16,
    )
    .unwrap();
    Some((img, lay, g))
}

#[test]
fn fuzz_heap_images_and_image_files() {
    let Some((path, lay, g)) = real_image() else {
        return;
    };
    let file = std::fs::read(&path).unwrap();
    let pristine = HeapImage::load(&path).unwrap();
    std::fs::remove_file(&path).ok();
    let main = g - lay.f.gg_g.off;
    let parts: Vec<(u64, Vec<u8>)> = pristine
        .segments()
        .iter()
        .map(|s| (s.start, s.data.to_vec()))
        .collect();
    let rss0 = rss_kb();
    let mut r = Rng::new(1);
    let start = Instant::now();
    let mut n = 0;
    // Mutated copies of the real heap: the walker, the object graph (refs),
    // the thread backtraces, and the layout check that locates a VM.
    while start.elapsed() < budget() {
        let mut img = HeapImage::from_parts(parts.clone());
        for _ in 0..1 + r.below(64) {
            let (si, s) = {
                let i = r.below(parts.len());
                (i, &parts[i])
            };
            let mut window = vec![0u8; 64];
            let off = r.below(s.1.len().saturating_sub(64).max(1));
            // Around g half of the time: the global state is where a
            // damaged pointer hurts most.
            let addr = if r.below(2) == 0 {
                g + r.below(1024) as u64 - 512
            } else {
                parts[si].0 + off as u64
            };
            let base = parts[r.below(parts.len())].0;
            mutate(&mut r, &mut window, base);
            window.resize(64, 0);
            if img.patch(addr, &window[..8 + r.below(56)]).is_none() {
                continue;
            }
        }
        let lim = Limits {
            max_objects: img.total_bytes() / 16 + 16,
        };
        check_one("heap image", n, || {
            let _ = ljleak::luajit::layout::choose_builtin(&img, main);
            let vm = Vm::new(&img, &lay, g, main);
            let rep = walk(&vm, lim, |_| {});
            assert!(rep.objects <= 4 * lim.max_objects);
            if n % 4 == 0 {
                std::hint::black_box(ljleak::analysis::graph::Graph::build(&vm, lim));
                std::hint::black_box(ljleak::luajit::threads::threads(&vm, lim, 64));
            }
        });
        n += 1;
    }
    // Wholly random images around a made-up g.
    for i in 0..200 {
        let base = 0x7f00_0000_0000u64 + (r.below(1 << 20) as u64) * 4096;
        let mut data = vec![0u8; 1 << 14];
        for w in data.chunks_mut(8) {
            let v = if r.below(3) == 0 {
                base + r.below(1 << 14) as u64
            } else {
                r.next()
            };
            w.copy_from_slice(&v.to_le_bytes());
        }
        let img = HeapImage::from_parts(vec![(base, data)]);
        let l = base + (r.below(1 << 10) as u64) * 8;
        check_one("random image", i, || {
            let _ = ljleak::luajit::layout::choose_builtin(&img, l);
            let vm = Vm::new(&img, &lay, l + lay.f.gg_g.off, l);
            walk(
                &vm,
                Limits {
                    max_objects: 1 << 12,
                },
                |_| {},
            );
        });
    }
    // Saved image files: damaged headers and lengths must not allocate
    // past the file's size.
    let dir = std::env::temp_dir().join(format!("ljleak-fuzzfiles-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let head: Vec<u8> = file[..file.len().min(1 << 16)].to_vec();
    let f = dir.join("x.img");
    let files = fuzz_bytes("image file", 2, &[head], |b| {
        let _ = std::fs::remove_file(&f);
        std::fs::write(&f, b).unwrap();
        let _ = HeapImage::load(&f);
    });
    std::fs::remove_dir_all(&dir).ok();
    let grew = rss_kb().saturating_sub(rss0);
    eprintln!("fuzz: {n} mutated heaps, 200 random heaps, {files} image files; RSS +{grew} KB");
    assert!(n > 20, "too few iterations: {n}");
    // Bounded memory: the inputs are ~the heap's size; allow a generous
    // multiple, never the gigabytes a runaway would take.
    assert!(grew < 512 * 1024, "RSS grew by {grew} KB");
}

#[test]
fn fuzz_dwarf_and_elf() {
    if !common::require("cc", Command::new("cc").arg("--version").output().is_ok()) {
        return;
    }
    // A small object with DWARF types named as LuaJIT's, so the field-map
    // reader goes deep, plus the fixture for .eh_frame and symbols.
    let dir = std::env::temp_dir().join(format!("ljleak-fuzzdwarf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("t.c");
    std::fs::write(
        &src,
        "typedef unsigned long long uint64_t;\n\
         typedef struct GCRef { uint64_t gcptr64; } GCRef;\n\
         typedef struct GCState { uint64_t total; uint64_t threshold; unsigned char currentwhite, state; GCRef root; } GCState;\n\
         typedef struct global_State { GCState gc; GCRef strempty; unsigned int strmask; } global_State;\n\
         typedef struct lua_State { GCRef nextgc; unsigned char marked, gct; GCRef glref; } lua_State;\n\
         global_State g; lua_State L; int main(void) { return (int)g.gc.total + L.gct; }\n",
    )
    .unwrap();
    let obj = dir.join("t");
    assert!(Command::new("cc")
        .args(["-g", "-O0", "-o"])
        .arg(&obj)
        .arg(&src)
        .status()
        .unwrap()
        .success());
    let seed = std::fs::read(&obj).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let rss0 = rss_kb();
    let n = fuzz_bytes("dwarf/elf", 3, &[seed], |b| {
        let _ = ljleak::luajit::dwarf::field_map(b);
        if let Ok(o) = object::File::parse(b) {
            use object::{Object, ObjectSymbol};
            for s in o.symbols().take(1000) {
                std::hint::black_box(s.name().ok());
            }
        }
    });
    let grew = rss_kb().saturating_sub(rss0);
    eprintln!("fuzz: {n} ELF/DWARF inputs; RSS +{grew} KB");
    assert!(n > 20);
    assert!(grew < 256 * 1024, "RSS grew by {grew} KB");
}

#[test]
fn fuzz_snapshots_and_folded_stacks() {
    use ljleak::compare::snapshot::{check_totals, parse, Input};
    let lj = common::luajit();
    let mut seeds: Vec<Vec<u8>> = vec![
        b"main;lua_pcall;[lua];@app.lua:3;malloc 4096\nmain;free 1\n# comment\n".to_vec(),
        b"a;b 18446744073709551615\nc 1\n".to_vec(),
    ];
    // A real census snapshot, when luajit is here.
    if let Some(lj) = lj {
        let mut c = Command::new(lj)
            .args(["-e", "T={} for i=1,50 do T[i]={i} end io.read('*l')"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let o = common::run(&["objs", "-p", &c.id().to_string(), "--format", "json"]);
        let _ = c.kill();
        let _ = c.wait();
        if o.status.success() {
            seeds.push(o.stdout);
        }
    }
    let seeds2 = seeds.clone();
    let mut r = Rng::new(4);
    let n = fuzz_bytes("snapshot/folded", 5, &seeds, |b| {
        let text = String::from_utf8_lossy(b);
        let Ok(a) = parse("a", &text) else { return };
        if check_totals("a", &a).is_err() {
            return;
        }
        // Compare with a pristine seed of the same kind, both ways.
        let other = String::from_utf8_lossy(&seeds2[r.below(seeds2.len())]).into_owned();
        let Ok(b) = parse("b", &other) else { return };
        match (&a, &b) {
            (Input::Folded(x), Input::Folded(y)) => {
                std::hint::black_box(ljleak::compare::folded::diff("a", x, "b", y));
                std::hint::black_box(ljleak::compare::folded::diff("b", y, "a", x));
            }
            (Input::Census(x), Input::Census(y)) => {
                std::hint::black_box(ljleak::compare::census_diff::diff("a", x, "b", y));
            }
            _ => {}
        }
    });
    eprintln!("fuzz: {n} snapshot/folded inputs");
    assert!(n > 20);
}
