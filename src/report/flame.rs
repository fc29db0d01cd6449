//! Flame graphs for every command, drawn the same way: frames coloured by
//! kind (Lua one hue family, C another, kernel and `[jit code]` their own,
//! ljleak's grouping frames grey), the total and its unit in the subtitle,
//! deterministic output (golden tests compare bytes), and optionally the
//! nginx event-loop prefix folded into one frame ([`trim_event_loop`]).
//!
//! Differential graphs ([`diff_svg`]) colour every frame, not only the
//! leaf: a frame's colour is the net change of all stacks through a frame
//! of that name (red grew, blue shrank), its width the larger of the two
//! sizes so vanished stacks stay visible.

use std::collections::{BTreeMap, HashMap};

use inferno::flamegraph::color::{Color, PaletteMap};

/// What a frame is, for its colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Lua code: `@file.lua:12`, `=stdin:3`, trace frames, `[lua]`, and
    /// Lua objects in retention graphs.
    Lua,
    /// Native code.
    C,
    /// Kernel frames (`_[k]` annotation or `[kernel...]`).
    Kernel,
    /// JIT-compiled code ljleak could not name.
    Jit,
    /// ljleak's own grouping frames: `pid N`, `worker N`, statuses,
    /// `[nginx event loop]`, `[N more …]`.
    Meta,
}

/// The frame that stands for the trimmed event-loop prefix.
pub const EVENT_LOOP: &str = "[nginx event loop]";

/// Classify a frame name.
pub fn kind_of(f: &str) -> Kind {
    let g = f.trim_start_matches('~');
    if g == "[jit code]" || g.starts_with("[trace ") {
        Kind::Jit
    } else if g.ends_with("_[k]") || g.starts_with("[kernel") {
        Kind::Kernel
    } else if g.starts_with('@')
        || g.starts_with('=')
        || g == "[lua]"
        || g.starts_with("[lua pc")
        || g.contains(".lua:")
        || g.contains("_by_lua")
        || g.starts_with("(as weak key)")
        || g.starts_with("upvalue ")
        || g.starts_with('.')
        || g.starts_with('[') && g.ends_with(']') && !g.contains(' ')
        || [
            "registry",
            "_G",
            "main thread",
            "metatable",
            "env",
            "prototype",
        ]
        .contains(&g)
    {
        Kind::Lua
    } else if g.starts_with("pid ")
        || g.starts_with("worker ")
        || g == EVENT_LOOP
        || g.starts_with("[+")
        || [
            "running",
            "suspended",
            "normal",
            "dead",
            "error",
            "idle",
            "total",
        ]
        .contains(&g)
    {
        Kind::Meta
    } else {
        Kind::C
    }
}

/// FNV-1a, for a stable per-name shade.
fn hash(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The colour of a frame: its kind's hue family, shaded by its name.
pub fn color_of(f: &str) -> Color {
    let v = (hash(f) % 1000) as f64 / 1000.0;
    let mix = |lo: (u8, u8, u8), hi: (u8, u8, u8)| Color {
        r: (lo.0 as f64 + (hi.0 as f64 - lo.0 as f64) * v) as u8,
        g: (lo.1 as f64 + (hi.1 as f64 - lo.1 as f64) * v) as u8,
        b: (lo.2 as f64 + (hi.2 as f64 - lo.2 as f64) * v) as u8,
    };
    match kind_of(f) {
        Kind::Lua => mix((70, 170, 70), (150, 220, 110)),
        Kind::C => mix((225, 110, 40), (245, 190, 70)),
        Kind::Kernel => mix((90, 140, 215), (140, 185, 240)),
        Kind::Jit => mix((160, 90, 200), (200, 140, 230)),
        Kind::Meta => mix((170, 170, 170), (205, 205, 205)),
    }
}

/// Fold the nginx event-loop prefix of a stack (root first, `;`-joined):
/// everything from the root to the last `ngx_http_lua_run_thread` (or, for
/// a stack without Lua, to the last of nginx's request entry points)
/// becomes one [`EVENT_LOOP`] frame. Stacks without it are returned as is.
pub fn trim_event_loop(stack: &str) -> std::borrow::Cow<'_, str> {
    const CUT: [&str; 3] = [
        "ngx_http_lua_run_thread",
        "ngx_process_events_and_timers",
        "ngx_worker_process_cycle",
    ];
    for c in CUT {
        let key = format!(";{c};");
        if let Some(i) = stack.rfind(&key) {
            let rest = &stack[i + key.len()..];
            return format!("{EVENT_LOOP};{rest}").into();
        }
    }
    stack.into()
}

/// Siblings of one frame grouped when more than this many differ only by
/// an index or an object key.
pub const GROUP_SIBLINGS: usize = 8;

/// Whether a frame names one of many alike slots: an array index `[12]`,
/// a hash node `[node 7]`, an object key `[table: 0x…]`, optionally after
/// a field (`.recent[12]` style paths are split into frames already).
fn groupable(f: &str) -> bool {
    let Some(inner) = f.strip_prefix('[').and_then(|x| x.strip_suffix(']')) else {
        return false;
    };
    inner.bytes().all(|b| b.is_ascii_digit())
        || inner
            .strip_prefix("node ")
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        || inner.contains(": 0x")
}

/// Group sibling frames that differ only by an index or object key (the
/// thousands of `recent[i]` entries of a list) into one `[*] ×N` frame,
/// when a frame has more than `min` of them; weights of merged stacks add
/// up, so widths stay exact.
pub fn group_siblings(lines: &[String], min: usize) -> Vec<String> {
    let parsed: Vec<(Vec<&str>, u64)> = lines
        .iter()
        .filter_map(|l| {
            let (s, n) = l.rsplit_once(' ')?;
            Some((s.split(';').collect(), n.parse().ok()?))
        })
        .collect();
    // Distinct groupable children of each (parent prefix) in the input.
    let mut kids: HashMap<(Vec<&str>, usize), std::collections::HashSet<&str>> = HashMap::new();
    for (frames, _) in &parsed {
        for (d, f) in frames.iter().enumerate() {
            if groupable(f) {
                kids.entry((frames[..d].to_vec(), d)).or_default().insert(f);
            }
        }
    }
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    for (frames, n) in &parsed {
        let mut renamed: Vec<String> = Vec::with_capacity(frames.len());
        for (d, f) in frames.iter().enumerate() {
            let k = kids.get(&(frames[..d].to_vec(), d)).map_or(0, |s| s.len());
            if groupable(f) && k > min {
                renamed.push(format!("[*] ×{k}"));
            } else {
                renamed.push(f.to_string());
            }
        }
        *out.entry(renamed.join(";")).or_default() += n;
    }
    out.into_iter().map(|(s, n)| format!("{s} {n}")).collect()
}

/// What to draw.
#[derive(Debug, Clone)]
pub struct Flame {
    /// Title.
    pub title: String,
    /// First part of the subtitle (the total and unit follow).
    pub what: String,
    /// Unit of the counts (`bytes`, `threads`, `objects`).
    pub unit: String,
    /// Fold the nginx event-loop prefix ([`trim_event_loop`]).
    pub trim: bool,
}

/// `12.3 MiB (12934567 bytes)` or `57 threads`.
pub fn total_text(total: u64, unit: &str) -> String {
    if unit == "bytes" {
        format!("{} ({total} bytes)", crate::units::bytes(total))
    } else {
        format!("{total} {unit}")
    }
}

fn options<'a>(f: &Flame, total: u64, map: &'a mut PaletteMap) -> inferno::flamegraph::Options<'a> {
    let mut o = inferno::flamegraph::Options::default();
    o.title = f.title.clone();
    let t = format!("total {}", total_text(total, &f.unit));
    o.subtitle = Some(if f.what.is_empty() {
        t
    } else {
        format!("{}; {t}", f.what)
    });
    o.count_name = f.unit.clone();
    o.deterministic = true;
    o.palette_map = Some(map);
    o
}

/// Folded lines (`a;b;c N`) as an SVG flame graph. An empty input draws
/// one `(nothing)` frame rather than failing.
pub fn svg<'l>(f: &Flame, lines: impl IntoIterator<Item = &'l str>) -> anyhow::Result<String> {
    let mut merged: BTreeMap<String, u64> = BTreeMap::new();
    for l in lines {
        let Some((stack, n)) = l.trim_end().rsplit_once(' ') else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        let stack = if f.trim {
            trim_event_loop(stack)
        } else {
            stack.into()
        };
        *merged.entry(stack.into_owned()).or_default() += n;
    }
    merged.retain(|_, n| *n > 0);
    let total: u64 = merged.values().sum();
    if merged.is_empty() {
        merged.insert("(nothing)".into(), 1);
    }
    let mut map = PaletteMap::default();
    for s in merged.keys() {
        for fr in s.split(';') {
            if map.get(fr).is_none() {
                map.insert(fr, color_of(fr));
            }
        }
    }
    let lines: Vec<String> = merged.iter().map(|(s, n)| format!("{s} {n}")).collect();
    let mut opts = options(f, total, &mut map);
    let mut out = Vec::new();
    inferno::flamegraph::from_lines(&mut opts, lines.iter().map(String::as_str), &mut out)
        .map_err(|e| anyhow::anyhow!("drawing the flame graph: {e}"))?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// A differential flame graph of `a` → `b` (stack → count): widths are
/// max(A, B) per stack, every frame is coloured by the net change of the
/// stacks through frames of its name.
pub fn diff_svg(
    f: &Flame,
    a: &BTreeMap<String, u64>,
    b: &BTreeMap<String, u64>,
) -> anyhow::Result<String> {
    let trim = |s: &str| -> String {
        if f.trim {
            trim_event_loop(s).into_owned()
        } else {
            s.to_string()
        }
    };
    let mut both: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (s, &n) in a {
        both.entry(trim(s)).or_default().0 += n;
    }
    for (s, &n) in b {
        both.entry(trim(s)).or_default().1 += n;
    }
    let mut delta: HashMap<&str, i128> = HashMap::new();
    for (s, &(x, y)) in &both {
        let mut seen = std::collections::HashSet::new();
        for fr in s.split(';') {
            if seen.insert(fr) {
                *delta.entry(fr).or_default() += i128::from(y) - i128::from(x);
            }
        }
    }
    let max = delta
        .values()
        .map(|d| d.unsigned_abs())
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut map = PaletteMap::default();
    for (fr, d) in &delta {
        // White for no change, saturating to red (grew) or blue (shrank),
        // as flamegraph.pl's differential colours.
        let k = (190.0 * d.unsigned_abs() as f64 / max) as u8;
        let c = if *d > 0 {
            Color {
                r: 255,
                g: 255 - k,
                b: 255 - k,
            }
        } else if *d < 0 {
            Color {
                r: 255 - k,
                g: 255 - k,
                b: 255,
            }
        } else {
            Color {
                r: 245,
                g: 245,
                b: 245,
            }
        };
        map.insert(*fr, c);
    }
    let (ta, tb): (u64, u64) = (a.values().sum(), b.values().sum());
    let lines: Vec<String> = both
        .iter()
        .filter(|(_, (x, y))| x.max(y) > &0)
        .map(|(s, (x, y))| format!("{s} {}", x.max(y)))
        .collect();
    let mut opts = options(f, tb, &mut map);
    opts.subtitle = Some(format!(
        "{}red: grew, blue: shrank or vanished (whole stacks); width: the larger of A and B; total {} -> {} ({})",
        if f.what.is_empty() { String::new() } else { format!("{}; ", f.what) },
        total_text(ta, &f.unit),
        total_text(tb, &f.unit),
        if f.unit == "bytes" {
            crate::units::signed_bytes(tb as i64 - ta as i64)
        } else {
            format!("{:+}", tb as i64 - ta as i64)
        }
    ));
    let mut out = Vec::new();
    let input: Vec<&str> = if lines.is_empty() {
        vec!["(nothing) 1"]
    } else {
        lines.iter().map(String::as_str).collect()
    };
    inferno::flamegraph::from_lines(&mut opts, input, &mut out)
        .map_err(|e| anyhow::anyhow!("drawing the differential flame graph: {e}"))?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(kind_of("@/srv/app.lua:12"), Kind::Lua);
        assert_eq!(kind_of("~@app.lua:3"), Kind::Lua);
        assert_eq!(kind_of("@app.lua:19 (trace 10)"), Kind::Lua);
        assert_eq!(kind_of("[lua]"), Kind::Lua);
        assert_eq!(kind_of("malloc"), Kind::C);
        assert_eq!(kind_of("ngx_http_lua_run_thread"), Kind::C);
        assert_eq!(kind_of("[jit code]"), Kind::Jit);
        assert_eq!(kind_of("do_syscall_64_[k]"), Kind::Kernel);
        assert_eq!(kind_of("pid 42"), Kind::Meta);
        assert_eq!(kind_of(EVENT_LOOP), Kind::Meta);
    }

    #[test]
    fn many_alike_siblings_become_one_frame() {
        let mut lines: Vec<String> = (1..=20)
            .map(|i| format!("registry;._LOADED;[\"app\"];upvalue recent;[{i}];table 100"))
            .collect();
        lines.push("registry;._LOADED;[\"app\"];upvalue recent;.n 8".into());
        lines.push("registry;._LOADED;[\"app\"];upvalue few;[1] 5".into());
        let g = group_siblings(&lines, GROUP_SIBLINGS);
        assert_eq!(
            g,
            [
                "registry;._LOADED;[\"app\"];upvalue few;[1] 5",
                "registry;._LOADED;[\"app\"];upvalue recent;.n 8",
                "registry;._LOADED;[\"app\"];upvalue recent;[*] ×20;table 2000",
            ]
        );
    }

    #[test]
    fn trims_the_event_loop() {
        let s = "_start;main;ngx_master_process_cycle;ngx_worker_process_cycle;ngx_process_events_and_timers;ngx_http_lua_run_thread;lj_vm_resume;[lua];@a.lua:3;malloc";
        assert_eq!(
            trim_event_loop(s),
            format!("{EVENT_LOOP};lj_vm_resume;[lua];@a.lua:3;malloc")
        );
        assert_eq!(trim_event_loop("main;malloc"), "main;malloc");
    }
}
