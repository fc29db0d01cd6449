//! `ljleak threads` report: threads grouped by identical stack and status,
//! biggest group first, Go-goroutine-profile style text
//! (`1022 @ resty/http.lua:310 (resty.http.receive) ← app.lua:88`), a stable
//! JSON object, folded stacks, and a flame graph.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use serde::Serialize;

use crate::luajit::threads::{NamedFrame, Status, ThreadInfo, Threads};

/// Threads with the same stack and status.
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    /// Number of threads.
    pub count: u64,
    /// Their status.
    pub status: Status,
    /// The stack, innermost first.
    pub stack: Vec<NamedFrame>,
    /// Bytes of their thread objects, stacks and open upvalues.
    pub stack_bytes: u64,
    /// Whether the VM's main thread is among them.
    pub main: bool,
    /// Up to 16 of the `lua_State *` addresses.
    pub threads: Vec<String>,
}

impl Group {
    /// `app.lua:12 ← app.lua:30`, or `(no Lua frames)`.
    pub fn label(&self) -> String {
        if self.stack.is_empty() {
            return "(no Lua frames)".into();
        }
        self.stack
            .iter()
            .map(NamedFrame::label)
            .collect::<Vec<_>>()
            .join(" ← ")
    }
}

/// The whole report (the JSON form).
#[derive(Debug, Clone, Serialize)]
pub struct ThreadsReport {
    /// Always `threads`.
    pub kind: String,
    /// Target.
    pub pid: i32,
    /// Its executable.
    pub exe: String,
    /// Threads found.
    pub total: u64,
    /// Threads by status.
    pub by_status: BTreeMap<String, u64>,
    /// Bytes of all thread objects and stacks.
    pub stack_bytes: u64,
    /// Groups, biggest first.
    pub groups: Vec<Group>,
    /// How long the target was paused, microseconds.
    pub pause_us: u64,
    /// Consistency of the copy.
    pub consistency: String,
    /// Problems met while walking.
    pub warnings: Vec<String>,
}

/// Most addresses listed per group.
const MAX_ADDRS: usize = 16;

/// Group threads and build the report.
pub fn report(pid: i32, exe: &str, t: &Threads, pause_us: u64, consistency: &str) -> ThreadsReport {
    let mut groups: Vec<Group> = Vec::new();
    let mut at: HashMap<(Status, &[NamedFrame]), usize> = HashMap::new();
    let mut by_status = BTreeMap::new();
    for th in &t.threads {
        *by_status.entry(th.status.name().to_string()).or_insert(0) += 1;
        let i = *at.entry((th.status, &th.frames)).or_insert_with(|| {
            groups.push(new_group(th));
            groups.len() - 1
        });
        let g = &mut groups[i];
        g.count += 1;
        g.stack_bytes += th.stack_bytes;
        g.main |= th.main;
        if g.threads.len() < MAX_ADDRS {
            g.threads.push(format!("{:#x}", th.addr));
        }
    }
    groups.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.label().cmp(&b.label()))
    });
    ThreadsReport {
        kind: "threads".into(),
        pid,
        exe: exe.into(),
        total: t.threads.len() as u64,
        stack_bytes: t.threads.iter().map(|x| x.stack_bytes).sum(),
        by_status,
        groups,
        pause_us,
        consistency: consistency.into(),
        warnings: t.warnings.clone(),
    }
}

fn new_group(th: &ThreadInfo) -> Group {
    Group {
        count: 0,
        status: th.status,
        stack: th.frames.clone(),
        stack_bytes: 0,
        main: false,
        threads: Vec::new(),
    }
}

/// Text: a summary line, then one line per group.
pub fn text(r: &ThreadsReport) -> String {
    let mut s = String::new();
    let st: Vec<String> = r
        .by_status
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    let _ = writeln!(
        s,
        "{} Lua threads in process {} ({}): {}; {} bytes of thread stacks",
        r.total,
        r.pid,
        r.exe,
        st.join(", "),
        r.stack_bytes
    );
    let _ = writeln!(s, "paused {} us ({})", r.pause_us, r.consistency);
    let w = r
        .groups
        .first()
        .map(|g| g.count.to_string().len())
        .unwrap_or(1);
    for g in &r.groups {
        let main = if g.main { ", main thread" } else { "" };
        let _ = writeln!(
            s,
            "\n{:>w$} @ {}\n{:>w$}   [{}{main}, {} bytes]",
            g.count,
            g.label(),
            "",
            g.status.name(),
            g.stack_bytes
        );
    }
    for warn in &r.warnings {
        let _ = writeln!(s, "warning: {warn}");
    }
    s
}

/// How to weigh each stack in folded output and flame graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weight {
    /// Number of threads.
    Count,
    /// Bytes of their thread objects, stacks and open upvalues.
    StackBytes,
}

/// Folded stacks (`outermost;...;innermost weight`), the flame graph input.
/// The status is the root frame, so running and suspended threads with
/// the same stack stay apart.
pub fn folded(r: &ThreadsReport, w: Weight) -> String {
    let mut s = String::new();
    for g in &r.groups {
        let weight = match w {
            Weight::Count => g.count,
            Weight::StackBytes => g.stack_bytes,
        };
        if weight == 0 {
            continue;
        }
        let mut frames = vec![g.status.name().to_string()];
        frames.extend(g.stack.iter().rev().map(|f| f.label().replace(';', ":")));
        let _ = writeln!(s, "{} {weight}", frames.join(";"));
    }
    s
}

/// A flame graph SVG of the folded stacks.
pub fn svg(r: &ThreadsReport, w: Weight) -> anyhow::Result<String> {
    let folded = folded(r, w);
    let mut opt = inferno::flamegraph::Options::default();
    opt.title = format!("Lua threads of process {}", r.pid);
    opt.count_name = match w {
        Weight::Count => "threads".into(),
        Weight::StackBytes => "bytes".into(),
    };
    let mut out = Vec::new();
    inferno::flamegraph::from_lines(&mut opt, folded.lines(), &mut out)
        .map_err(|e| anyhow::anyhow!("drawing the flame graph: {e}"))?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}
