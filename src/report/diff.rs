//! `ljleak diff` output: aligned text, markdown (for a CI comment) and JSON.
//! Gates come last, tripped ones after passed ones, so the end of a CI log
//! says why the build failed.

use std::fmt::Write as _;

use serde::Serialize;

use crate::compare::census_diff::{CensusDiff, Delta, Row};
use crate::compare::folded::{Change, FoldedDiff};
use crate::compare::gate::GateResult;
use crate::compare::leak_diff::LeakDiff;

/// Output flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Aligned columns.
    Text,
    /// GitHub-flavoured markdown tables.
    Markdown,
}

/// What `--format json` prints.
#[derive(Debug, Serialize)]
pub struct DiffJson<'a> {
    /// `census`, `leaks` or `folded`.
    pub kind: &'static str,
    /// Census comparison.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub census: Option<&'a CensusDiff>,
    /// Folded comparison.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub folded: Option<&'a FoldedDiff>,
    /// Leak snapshot comparison.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leaks: Option<&'a LeakDiff>,
    /// Every gate, in the order given.
    pub gates: &'a [GateResult],
    /// How many tripped.
    pub tripped: usize,
    /// Set when one input is a master's total and the other one process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope_warning: Option<&'a str>,
}

/// A table as aligned text or markdown; the first column is left-aligned,
/// the others right-aligned.
pub fn table(style: Style, head: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = String::new();
    if style == Style::Markdown {
        let _ = writeln!(s, "| {} |", head.join(" | "));
        let aligns: Vec<&str> = (0..head.len())
            .map(|i| if i == 0 { ":--" } else { "--:" })
            .collect();
        let _ = writeln!(s, "|{}|", aligns.join("|"));
        for r in rows {
            let cells: Vec<String> = r.iter().map(|c| c.replace('|', "\\|")).collect();
            let _ = writeln!(s, "| {} |", cells.join(" | "));
        }
        return s;
    }
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    // Padding by hand: `{:<width$}` panics for widths of 65,536 and more
    // (core::fmt keeps widths in a u16), and a cell is as long as a stack
    // from an input file.
    let pad = |l: &mut String, c: &str, width: usize| {
        l.extend(std::iter::repeat_n(
            ' ',
            width.saturating_sub(c.chars().count()),
        ));
    };
    let line = |cells: Vec<&str>| {
        let mut l = String::from(" ");
        for (i, c) in cells.iter().enumerate() {
            if i == 0 {
                l.push(' ');
                l.push_str(c);
                pad(&mut l, c, w[0]);
            } else {
                l.push_str("  ");
                pad(&mut l, c, w[i]);
                l.push_str(c);
            }
        }
        l.trim_end().to_string() + "\n"
    };
    s.push_str(&line(head.to_vec()));
    for r in rows {
        s.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    s
}

/// `+12.50%`, or `new` when A was 0.
pub fn pct(d: &Delta) -> String {
    match d.pct {
        Some(p) => format!("{p:+.2}%"),
        None if d.b > 0 => "new".into(),
        None => "-".into(),
    }
}

fn row_cells(r: &Row) -> Vec<String> {
    vec![
        r.name.clone(),
        r.count.a.to_string(),
        r.count.b.to_string(),
        format!("{:+}", r.count.delta),
        bytes(r.bytes.a),
        bytes(r.bytes.b),
        signed(r.bytes.delta),
        pct(&r.bytes),
    ]
}

/// Bytes in text tables (exact figures are in the JSON).
fn bytes(b: u64) -> String {
    crate::units::bytes(b)
}

fn signed(d: i64) -> String {
    crate::units::signed_bytes(d)
}

/// `A -> B bytes (+D, P%)` with human units and exact bytes.
fn change_line(what: &str, d: &Delta) -> String {
    format!(
        "{what}: {} -> {} ({}, {}; exact {} -> {} bytes)\n",
        bytes(d.a),
        bytes(d.b),
        signed(d.delta),
        pct(d),
        d.a,
        d.b
    )
}

/// Frames (`;`-separated) all `stacks` share, leaving each at least its
/// last frame.
pub fn common_prefix(stacks: &[&str]) -> usize {
    let mut it = stacks.iter().map(|s| s.split(';').collect::<Vec<_>>());
    let Some(first) = it.next() else { return 0 };
    let mut n = first.len().saturating_sub(1);
    for f in it {
        n = n.min(f.len().saturating_sub(1));
        n = first
            .iter()
            .zip(&f)
            .take(n)
            .take_while(|(a, b)| a == b)
            .count();
    }
    n
}

/// `stack` without its first `n` frames, marked `…;` when cut.
pub fn strip_prefix(stack: &str, n: usize) -> String {
    if n == 0 {
        return stack.to_string();
    }
    match stack.match_indices(';').nth(n - 1) {
        Some((i, _)) => format!("…;{}", &stack[i + 1..]),
        None => stack.to_string(),
    }
}

const ROW_HEAD: [&str; 8] = [
    "",
    "count A",
    "count B",
    "Δcount",
    "bytes A",
    "bytes B",
    "Δbytes",
    "Δbytes %",
];

fn heading(style: Style, s: &mut String, title: &str) {
    match style {
        Style::Text => {
            let _ = writeln!(s, "\n{title}:");
        }
        Style::Markdown => {
            let _ = writeln!(s, "\n#### {title}\n");
        }
    }
}

fn section(style: Style, s: &mut String, title: &str, first: &str, rows: &[Row], top: usize) {
    if rows.is_empty() {
        return;
    }
    heading(style, s, title);
    let mut head = ROW_HEAD;
    head[0] = first;
    let cells: Vec<Vec<String>> = rows.iter().take(top).map(row_cells).collect();
    s.push_str(&table(style, &head, &cells));
    if rows.len() > top {
        let _ = writeln!(s, "  ... {} more (--top)", rows.len() - top);
    }
}

/// A census comparison.
pub fn census(d: &CensusDiff, style: Style, top: usize) -> String {
    let mut s = String::new();
    if style == Style::Markdown {
        let _ = writeln!(s, "### ljleak diff\n");
    }
    for (tag, src) in [("A", &d.a), ("B", &d.b)] {
        s.push_str(&source_line(
            style,
            tag,
            &src.file,
            src.pid,
            &src.host,
            &src.created,
            &src.layout,
        ));
    }
    s.push('\n');
    s.push_str(&change_line("GC total", &d.total));
    if let Some(w) = &d.walker_total {
        s.push_str(&change_line("Walker total", w));
    }
    let _ = writeln!(
        s,
        "Objects: {} -> {} ({:+}, {})",
        d.objects.a,
        d.objects.b,
        d.objects.delta,
        pct(&d.objects)
    );
    section(
        style,
        &mut s,
        "Per type, by byte growth",
        "type",
        &d.types,
        usize::MAX,
    );
    section(
        style,
        &mut s,
        "cdata by C type, by byte growth",
        "C type",
        &d.cdata_types,
        top,
    );
    section(
        style,
        &mut s,
        "Tables by size class (bytes)",
        "class",
        &d.table_classes,
        usize::MAX,
    );
    for w in &d.warnings {
        let _ = writeln!(s, "\nWARNING: {w}");
    }
    s
}

/// A folded-stack comparison; unless `full`, the prefix all changed
/// stacks share is printed once.
pub fn folded(d: &FoldedDiff, style: Style, top: usize, full: bool) -> String {
    let mut s = String::new();
    if style == Style::Markdown {
        let _ = writeln!(s, "### ljleak diff\n");
    }
    let _ = writeln!(
        s,
        "A: {} ({} stacks, total {})",
        d.a_file, d.stacks_a, d.total_a
    );
    let _ = writeln!(
        s,
        "B: {} ({} stacks, total {})",
        d.b_file, d.stacks_b, d.total_b
    );
    let total = Delta::new(d.total_a, d.total_b);
    let _ = writeln!(
        s,
        "\nTotal: {} -> {} ({:+}, {})",
        d.total_a,
        d.total_b,
        total.delta,
        pct(&total)
    );
    let cut = prefix_line(
        &mut s,
        style,
        full,
        &d.stacks
            .iter()
            .map(|x| x.stack.as_str())
            .collect::<Vec<_>>(),
    );
    let sections = Sections {
        style,
        top,
        head: &["stack", "A", "B", "Δ"],
    };
    sections.write(
        &mut s,
        &d.stacks,
        |x| (x.change, x.delta),
        |x| {
            vec![
                strip_prefix(&x.stack, cut),
                x.a.to_string(),
                x.b.to_string(),
                format!("{:+}", x.delta),
            ]
        },
    );
    s
}

/// One table per kind of change (new, grown, shrunk, vanished): growth
/// largest first, shrinkage largest first, at most `top` rows each.
struct Sections<'a> {
    style: Style,
    top: usize,
    head: &'a [&'a str],
}

impl Sections<'_> {
    fn write<T>(
        &self,
        s: &mut String,
        all: &[T],
        key: impl Fn(&T) -> (Change, i64),
        cells: impl Fn(&T) -> Vec<String>,
    ) {
        for (c, title) in [
            (Change::New, "New stacks"),
            (Change::Grown, "Grown stacks"),
            (Change::Shrunk, "Shrunk stacks"),
            (Change::Vanished, "Vanished stacks"),
        ] {
            let mut v: Vec<&T> = all.iter().filter(|x| key(x).0 == c).collect();
            if v.is_empty() {
                continue;
            }
            if matches!(c, Change::Shrunk | Change::Vanished) {
                v.sort_by_key(|x| key(x).1);
            }
            heading(self.style, s, &format!("{title} ({})", v.len()));
            let rows: Vec<Vec<String>> = v.iter().take(self.top).map(|x| cells(x)).collect();
            s.push_str(&table(self.style, self.head, &rows));
            if v.len() > self.top {
                let _ = writeln!(s, "  ... {} more (--top)", v.len() - self.top);
            }
        }
    }
}

/// The `A:`/`B:` line naming a snapshot; `what` follows host and time.
fn source_line(
    style: Style,
    tag: &str,
    file: &str,
    pid: i32,
    host: &str,
    created: &str,
    what: &str,
) -> String {
    format!(
        "{tag}: {file} (pid {pid} on {}, {}, {what}){}\n",
        if host.is_empty() { "?" } else { host },
        if created.is_empty() {
            "time unknown"
        } else {
            created
        },
        if style == Style::Markdown { "  " } else { "" }
    )
}

/// Print the shared prefix of `stacks` once (unless `full`); returns how
/// many frames each row leaves out.
fn prefix_line(s: &mut String, style: Style, full: bool, stacks: &[&str]) -> usize {
    let n = if full || stacks.len() < 2 {
        0
    } else {
        common_prefix(stacks)
    };
    if n > 0 {
        let prefix: Vec<&str> = stacks[0].split(';').take(n).collect();
        let _ = writeln!(
            s,
            "\nEvery stack below starts with (--full prints whole stacks):\n{}{}",
            if style == Style::Markdown {
                "    "
            } else {
                "  "
            },
            prefix.join(";")
        );
    }
    n
}

/// A leak snapshot comparison; unless `full`, the prefix all changed
/// stacks share is printed once.
pub fn leaks(d: &LeakDiff, style: Style, top: usize, full: bool) -> String {
    let mut s = String::new();
    if style == Style::Markdown {
        let _ = writeln!(s, "### ljleak diff (leaks)\n");
    }
    for (tag, src) in [("A", &d.a), ("B", &d.b)] {
        let what = format!(
            "{:.1} s window, source {}, LuaJIT {}",
            src.window_seconds, src.source, src.build
        );
        s.push_str(&source_line(
            style,
            tag,
            &src.file,
            src.pid,
            &src.host,
            &src.created,
            &what,
        ));
    }
    s.push('\n');
    s.push_str(&change_line("Outstanding bytes", &d.total));
    for (what, x) in [("Outstanding allocations", &d.count), ("Stacks", &d.stacks)] {
        let _ = writeln!(s, "{what}: {} -> {} ({:+}, {})", x.a, x.b, x.delta, pct(x));
    }
    let cut = prefix_line(
        &mut s,
        style,
        full,
        &d.changed
            .iter()
            .map(|x| x.stack.as_str())
            .collect::<Vec<_>>(),
    );
    let sections = Sections {
        style,
        top,
        head: &["stack", "bytes A", "bytes B", "Δbytes", "Δcount"],
    };
    sections.write(
        &mut s,
        &d.changed,
        |x| (x.change, x.bytes.delta),
        |x| {
            vec![
                strip_prefix(&x.stack, cut),
                bytes(x.bytes.a),
                bytes(x.bytes.b),
                signed(x.bytes.delta),
                format!("{:+}", x.count.delta),
            ]
        },
    );
    for w in &d.warnings {
        let _ = writeln!(s, "\nWARNING: {w}");
    }
    s
}

/// The gates, passed ones first and tripped ones last.
pub fn gates(g: &[GateResult], style: Style) -> String {
    if g.is_empty() {
        return String::new();
    }
    let mut s = String::new();
    heading(style, &mut s, "Gates");
    let mut sorted: Vec<&GateResult> = g.iter().collect();
    sorted.sort_by_key(|r| r.tripped);
    for r in sorted {
        let verdict = if r.tripped { "TRIPPED" } else { "pass" };
        let line = format!(
            "{verdict}  {}  (A {}, B {}, observed {})",
            r.expr, r.a, r.b, r.observed
        );
        match style {
            Style::Text => {
                let _ = writeln!(s, "  {line}");
            }
            Style::Markdown => {
                let _ = writeln!(
                    s,
                    "- {}",
                    if r.tripped {
                        format!("**{line}**")
                    } else {
                        line
                    }
                );
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::folded::diff;

    #[test]
    fn shared_prefix_printed_once() {
        let p = "_start;main;ngx_worker_process_cycle;ngx_http_lua_run_thread;lj_vm_resume";
        let a: crate::compare::snapshot::Folded = [(format!("{p};@a.lua:3;malloc"), 100u64)]
            .into_iter()
            .collect();
        let b: crate::compare::snapshot::Folded = [
            (format!("{p};@a.lua:3;malloc"), 900u64),
            (format!("{p};@b.lua:7;lj_alloc_f"), 2048),
        ]
        .into_iter()
        .collect();
        let d = diff("a", &a, "b", &b);
        let t = folded(&d, Style::Text, 10, false);
        assert_eq!(t.matches("ngx_http_lua_run_thread").count(), 1, "{t}");
        assert!(
            t.contains(&format!(
                "Every stack below starts with (--full prints whole stacks):\n  {p}\n"
            )),
            "{t}"
        );
        assert!(t.contains("…;@a.lua:3;malloc"), "{t}");
        assert!(t.contains("…;@b.lua:7;lj_alloc_f"), "{t}");
        let full = folded(&d, Style::Text, 10, true);
        assert_eq!(full.matches("ngx_http_lua_run_thread").count(), 2, "{full}");
        assert_eq!(
            common_prefix(&["a;b", "a;b"]),
            1,
            "a row keeps its last frame"
        );
        assert_eq!(strip_prefix("a;b;c", 2), "…;c");
    }
}
