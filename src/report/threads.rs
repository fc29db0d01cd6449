//! `ljleak threads` report: threads grouped by identical stack and status,
//! biggest group first, Go-goroutine-profile style text
//! (`1022 @ resty/http.lua:310 (resty.http.receive) ← app.lua:88`), a stable
//! JSON object, folded stacks, and a flame graph.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use serde::Serialize;

use super::refs::human;
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
    /// Bytes these threads alone hold (their own sizes, stacks and every
    /// object only they keep alive, each counted once), when computed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retained: Option<u64>,
    /// Up to 16 of the `lua_State *` addresses.
    pub threads: Vec<String>,
    /// Retained bytes of each thread listed in `threads`, same order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub thread_retained: Vec<u64>,
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
    /// Bytes all threads alone hold, each counted once, when computed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retained: Option<u64>,
    /// Groups, biggest first.
    pub groups: Vec<Group>,
    /// How long the target was paused, microseconds.
    pub pause_us: u64,
    /// Consistency of the copy.
    pub consistency: String,
    /// Problems met while walking.
    pub warnings: Vec<String>,
}

/// The threads of several processes (the workers of a master), summed.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadsTotal {
    /// The processes.
    pub pids: Vec<i32>,
    /// Threads found.
    pub total: u64,
    /// Threads by status.
    pub by_status: BTreeMap<String, u64>,
    /// Bytes of all thread objects and stacks.
    pub stack_bytes: u64,
    /// Bytes all threads alone hold, when computed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retained: Option<u64>,
}

/// Sum reports of several processes.
pub fn total_of(reps: &[ThreadsReport]) -> ThreadsTotal {
    let mut by_status = BTreeMap::new();
    for r in reps {
        for (k, v) in &r.by_status {
            *by_status.entry(k.clone()).or_insert(0) += v;
        }
    }
    ThreadsTotal {
        pids: reps.iter().map(|r| r.pid).collect(),
        total: reps.iter().map(|r| r.total).sum(),
        by_status,
        stack_bytes: reps.iter().map(|r| r.stack_bytes).sum(),
        retained: reps.iter().map(|r| r.retained).sum(),
    }
}

/// Text of a [`ThreadsTotal`].
pub fn total_text(t: &ThreadsTotal) -> String {
    let st: Vec<String> = t
        .by_status
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    format!(
        "{} Lua threads in {} processes: {}; {} of thread stacks{}\n",
        t.total,
        t.pids.len(),
        st.join(", "),
        human(t.stack_bytes),
        t.retained
            .map(|b| format!(", retaining {} in all", human(b)))
            .unwrap_or_default()
    )
}

/// Most addresses listed per group.
const MAX_ADDRS: usize = 16;

/// Group threads and build the report.
pub fn report(pid: i32, exe: &str, t: &Threads, pause_us: u64, consistency: &str) -> ThreadsReport {
    let mut groups: Vec<Group> = Vec::new();
    let mut at: HashMap<(Status, &[NamedFrame]), usize> = HashMap::new();
    let mut by_status = BTreeMap::new();
    let mut group_of: Vec<usize> = Vec::with_capacity(t.threads.len());
    for th in &t.threads {
        *by_status.entry(th.status.name().to_string()).or_insert(0) += 1;
        let i = *at.entry((th.status, &th.frames)).or_insert_with(|| {
            groups.push(new_group(th));
            groups.len() - 1
        });
        group_of.push(i);
        let g = &mut groups[i];
        g.count += 1;
        g.stack_bytes += th.stack_bytes;
        g.main |= th.main;
        if g.threads.len() < MAX_ADDRS {
            g.threads.push(format!("{:#x}", th.addr));
            if let Some(r) = th.retained {
                g.thread_retained.push(r);
            }
        }
    }
    let total_retained = add_retained(t, &group_of, &mut groups);
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
        retained: total_retained,
        by_status,
        groups,
        pause_us,
        consistency: consistency.into(),
        warnings: t.warnings.clone(),
    }
}

/// Sum the threads' retained bytes into their groups, leaving out a
/// thread whose bytes another thread of the same group already counts (a
/// coroutine only a coroutine of its group holds), and return the total
/// over all threads counted the same way. None when not computed.
fn add_retained(t: &Threads, group_of: &[usize], groups: &mut [Group]) -> Option<u64> {
    if t.threads.iter().all(|th| th.retained.is_none()) {
        return None;
    }
    let index: HashMap<u64, usize> = t
        .threads
        .iter()
        .enumerate()
        .map(|(i, th)| (th.addr, i))
        .collect();
    for g in groups.iter_mut() {
        g.retained = Some(0);
    }
    let mut total = 0;
    for (i, th) in t.threads.iter().enumerate() {
        let Some(r) = th.retained else { continue };
        if th.held_by.is_none() {
            total += r;
        }
        // Walk up the chain of holding threads (bounded: it cannot be
        // longer than the thread list).
        let mut up = th.held_by;
        let mut nested = false;
        for _ in 0..t.threads.len() {
            let Some(j) = up.and_then(|a| index.get(&a).copied()) else {
                break;
            };
            if group_of[j] == group_of[i] {
                nested = true;
                break;
            }
            up = t.threads[j].held_by;
        }
        if !nested {
            if let Some(x) = groups[group_of[i]].retained.as_mut() {
                *x += r;
            }
        }
    }
    Some(total)
}

fn new_group(th: &ThreadInfo) -> Group {
    Group {
        count: 0,
        status: th.status,
        stack: th.frames.clone(),
        stack_bytes: 0,
        main: false,
        retained: None,
        threads: Vec::new(),
        thread_retained: Vec::new(),
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
    let retained = r
        .retained
        .map(|b| format!(", retaining {} in all", human(b)))
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "{} Lua threads in process {} ({}): {}; {} of thread stacks{retained}",
        r.total,
        r.pid,
        r.exe,
        st.join(", "),
        human(r.stack_bytes)
    );
    let _ = writeln!(
        s,
        "paused {} ({})",
        crate::units::micros(r.pause_us),
        r.consistency
    );
    let w = r
        .groups
        .first()
        .map(|g| g.count.to_string().len())
        .unwrap_or(1);
    for g in &r.groups {
        let main = if g.main { ", main thread" } else { "" };
        let retained = g
            .retained
            .map(|b| format!(" (retained {})", human(b)))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "\n{:>w$} @ {}{retained}\n{:>w$}   [{}{main}, {} of stacks]",
            g.count,
            g.label(),
            "",
            g.status.name(),
            human(g.stack_bytes)
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
    /// Bytes the threads retain (their stack bytes when retained sizes
    /// were not computed).
    Retained,
}

/// Folded stacks (`outermost;...;innermost weight`), the flame graph input.
/// The status is the root frame, so running and suspended threads with
/// the same stack stay apart.
pub fn folded(r: &ThreadsReport, w: Weight) -> String {
    let mut s = String::new();
    for g in &r.groups {
        let weight = match w {
            Weight::Count => g.count,
            Weight::Retained => g.retained.unwrap_or(g.stack_bytes),
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
        Weight::Retained => "bytes".into(),
    };
    let mut out = Vec::new();
    inferno::flamegraph::from_lines(&mut opt, folded.lines(), &mut out)
        .map_err(|e| anyhow::anyhow!("drawing the flame graph: {e}"))?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lua(src: &str, line: i32, called: Option<&str>) -> NamedFrame {
        NamedFrame {
            kind: "lua",
            source: Some(src.into()),
            line: Some(line),
            name: None,
            defined: Some(1),
            called: called.map(str::to_string),
            approx: false,
        }
    }

    fn c(name: &str) -> NamedFrame {
        NamedFrame {
            kind: "c",
            source: None,
            line: None,
            name: Some(name.into()),
            defined: None,
            called: None,
            approx: false,
        }
    }

    fn th(addr: u64, status: Status, frames: Vec<NamedFrame>) -> ThreadInfo {
        ThreadInfo {
            addr,
            status,
            main: addr == 1,
            stack_bytes: 100,
            frames,
            retained: Some(500),
            held_by: None,
        }
    }

    fn sample() -> ThreadsReport {
        let stuck = vec![
            c("ngx.socket.tcp.receive"),
            lua("resty/http.lua", 310, Some("receive")),
            lua("content_by_lua(nginx.conf:40)", 3, None),
        ];
        let mut threads = vec![th(1, Status::Idle, vec![])];
        threads.extend((0..3).map(|i| th(10 + i, Status::Suspended, stuck.clone())));
        threads.push(th(
            20,
            Status::Suspended,
            vec![c("ngx.sleep"), lua("a;b.lua", 7, None)],
        ));
        // 12 is held only by 11 (same group), 20 only by 10 (another).
        threads[3].held_by = Some(11);
        threads[4].held_by = Some(10);
        let t = Threads {
            threads,
            warnings: vec![],
        };
        report(7, "/usr/sbin/nginx", &t, 1200, "quiescent")
    }

    #[test]
    fn groups_biggest_first_go_style() {
        let r = sample();
        assert_eq!(r.total, 5);
        assert_eq!(r.by_status["suspended"], 4);
        let counts: Vec<u64> = r.groups.iter().map(|g| g.count).collect();
        assert_eq!(counts, [3, 1, 1]);
        assert_eq!(
            r.groups[0].label(),
            "ngx.socket.tcp.receive ← resty/http.lua:310 (receive) ← content_by_lua(nginx.conf:40):3"
        );
        assert_eq!(r.groups[0].stack_bytes, 300);
        assert_eq!(r.groups[0].retained, Some(1000), "12 is inside 11");
        assert_eq!(r.groups[0].thread_retained, [500, 500, 500]);
        assert_eq!(r.groups[1].retained, Some(500));
        assert_eq!(r.retained, Some(1500), "12 and 20 are counted by holders");
        let text = text(&r);
        assert!(
            text.contains("\n3 @ ngx.socket.tcp.receive ← resty/http.lua:310 (receive) ← "),
            "{text}"
        );
        assert!(
            text.contains("content_by_lua(nginx.conf:40):3 (retained 1000 B)\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "1 @ (no Lua frames) (retained 500 B)\n    [idle, main thread, 100 B of stacks]"
            ),
            "{text}"
        );
    }

    #[test]
    fn possibly_stale_top_frame_is_marked() {
        let mut f = lua("app.lua", 12, None);
        f.approx = true;
        assert_eq!(f.label(), "~app.lua:12");
        let g = Group {
            stack: vec![f, lua("main.lua", 3, None)],
            ..new_group(&th(1, Status::Running, vec![]))
        };
        assert_eq!(g.label(), "~app.lua:12 ← main.lua:3");
    }

    #[test]
    fn folded_is_root_first_and_escapes_semicolons() {
        let r = sample();
        let f = folded(&r, Weight::Count);
        let lines: Vec<&str> = f.lines().collect();
        assert_eq!(
            lines[0],
            "suspended;content_by_lua(nginx.conf:40):3;resty/http.lua:310 (receive);ngx.socket.tcp.receive 3"
        );
        assert!(lines.contains(&"suspended;a:b.lua:7;ngx.sleep 1"), "{f}");
        assert!(lines.contains(&"idle 1"), "{f}");
        let b = folded(&r, Weight::Retained);
        assert!(b.lines().next().unwrap().ends_with(" 1000"), "{b}");
        let svg = svg(&r, Weight::Count).unwrap();
        assert!(svg.starts_with("<?xml") && svg.contains("ngx.sleep"));
    }
}
