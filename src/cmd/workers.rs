//! nginx masters: finding their workers, and running `gc`/`objs` on each
//! worker in turn (one report per worker plus a total). Workers are paused
//! one at a time, never all at once, so the server keeps answering.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::report::census::{CensusReport, TypeStats};

/// Whether `pid` is an nginx master process (its title says so).
pub fn is_nginx_master(pid: i32) -> bool {
    // A worker keeps the master's title for a moment after fork, until
    // ngx_worker_process_init renames it: the master is the one whose parent
    // is not a master.
    has_master_title(pid) && !parent_of(pid).is_some_and(has_master_title)
}

fn has_master_title(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.starts_with(b"nginx: master process"))
        .unwrap_or(false)
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Child processes of `pid`, sorted.
pub fn children(pid: i32) -> Vec<i32> {
    let mut v = Vec::new();
    // /proc/PID/task/*/children lists children per thread (CONFIG_PROC_CHILDREN).
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                v.extend(s.split_whitespace().filter_map(|x| x.parse::<i32>().ok()));
            }
        }
    }
    if v.is_empty() && !std::path::Path::new(&format!("/proc/{pid}/task/{pid}/children")).exists() {
        // Kernels without CONFIG_PROC_CHILDREN: scan every process's parent.
        v = scan_children(pid);
    }
    v.sort_unstable();
    v.dedup();
    v
}

/// Children of `pid` by the parent field (4th) of every /proc/N/stat.
fn scan_children(pid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')?
                        .1
                        .split_whitespace()
                        .nth(1)?
                        .parse::<i32>()
                        .ok()
                })
                == Some(pid)
        })
        .collect()
}

/// The nginx workers of master `pid` (children titled `nginx: worker
/// process`), or None when `pid` is not an nginx master.
pub fn workers_of(pid: i32) -> Option<Vec<i32>> {
    if !is_nginx_master(pid) {
        return None;
    }
    let w: Vec<i32> = children(pid)
        .into_iter()
        .filter(|c| {
            // Workers, and children too young to have been renamed yet.
            std::fs::read(format!("/proc/{c}/cmdline"))
                .map(|t| {
                    t.starts_with(b"nginx: worker process")
                        || t.starts_with(b"nginx: master process")
                })
                .unwrap_or(false)
        })
        .collect();
    Some(w)
}

/// Reports of every worker of one master, and their sum.
#[derive(Debug, Serialize)]
pub struct WorkersReport {
    /// Snapshot schema version.
    pub schema: u32,
    /// Always `workers`.
    pub kind: String,
    /// The master.
    pub master: i32,
    /// One report per worker, in PID order.
    pub workers: Vec<CensusReport>,
    /// The sum over workers (a census or gc report with `pid` = master).
    pub total: CensusReport,
}

/// Sum per-worker reports into one report for the whole server.
pub fn sum_reports(master: i32, reports: &[CensusReport]) -> CensusReport {
    let mut t = reports.first().cloned().unwrap_or_default();
    t.pid = master;
    t.exe = reports.first().map(|r| r.exe.clone()).unwrap_or_default();
    for r in reports.iter().skip(1) {
        t.gc_total += r.gc_total;
        t.walker_total = t.walker_total.zip(r.walker_total).map(|(a, b)| a + b);
        t.gc_threshold += r.gc_threshold;
        t.pause_us = t.pause_us.max(r.pause_us);
        t.dead.count += r.dead.count;
        t.dead.sum += r.dead.sum;
        for (name, s) in &r.types {
            let e = t.types.entry(name.clone()).or_insert(TypeStats {
                count: 0,
                sum: 0,
                min: s.min,
                max: s.max,
                avg: 0,
            });
            e.min = if e.count == 0 {
                s.min
            } else {
                e.min.min(s.min)
            };
            e.max = e.max.max(s.max);
            e.count += s.count;
            e.sum += s.sum;
            e.avg = e.sum.checked_div(e.count).unwrap_or(0);
        }
        merge(
            &mut t.cdata_types,
            &r.cdata_types,
            |c| c.name.clone(),
            |c| (&mut c.count, &mut c.sum),
        );
        merge(
            &mut t.table_classes,
            &r.table_classes,
            |c| c.le,
            |c| (&mut c.count, &mut c.sum),
        );
        t.objects += r.objects;
        t.image_bytes += r.image_bytes;
        t.walk_us += r.walk_us;
        t.mcode_jit += r.mcode_jit;
        t.mcode_callbacks += r.mcode_callbacks;
        if r.consistency != "quiescent" && r.consistency != "none" {
            t.consistency = r.consistency.clone();
        }
        t.warnings
            .extend(r.warnings.iter().map(|w| format!("worker {}: {w}", r.pid)));
    }
    t.cdata_types
        .sort_by(|a, b| b.sum.cmp(&a.sum).then(a.name.cmp(&b.name)));
    t.table_classes.sort_by_key(|c| c.le);
    t.stopped_in = None;
    t.gc_state = "-".into();
    t
}

/// Add `from`'s (count, bytes) into `into`, matching entries by `key`.
fn merge<T: Clone, K: PartialEq>(
    into: &mut Vec<T>,
    from: &[T],
    key: impl Fn(&T) -> K,
    counts: impl Fn(&mut T) -> (&mut u64, &mut u64),
) {
    for c in from {
        match into.iter_mut().find(|x| key(x) == key(c)) {
            Some(x) => {
                let mut c = c.clone();
                let (n, b) = counts(&mut c);
                let (xn, xb) = counts(x);
                *xn += *n;
                *xb += *b;
            }
            None => into.push(c.clone()),
        }
    }
}

/// Run `one` on each worker in turn: each call pauses (at most) that worker
/// alone, so the others keep serving.
pub fn collect(
    workers: &[i32],
    mut one: impl FnMut(i32) -> Result<CensusReport>,
) -> Result<Vec<CensusReport>> {
    workers.iter().map(|&w| one(w)).collect()
}

/// Run `one` on each worker of `master` in turn (one paused at a time),
/// any report type; an error when the master has no workers. This is how
/// every command expands a master.
pub fn collect_each<R>(
    master: i32,
    workers: &[i32],
    mut one: impl FnMut(i32) -> Result<R>,
) -> Result<Vec<R>> {
    if workers.is_empty() {
        anyhow::bail!("nginx master {master} has no worker processes");
    }
    workers
        .iter()
        .map(|&w| {
            one(w).map_err(|e| {
                if crate::target::process_exists(w) {
                    e.context(format!("worker {w} of nginx master {master}"))
                } else {
                    e
                }
            })
        })
        .collect()
}

/// The JSON of a command run on every worker of a master: `kind`
/// `workers`, `of` the command's report kind, one report per worker and,
/// where a sum means something, the total.
#[derive(Debug, Serialize)]
pub struct PerWorker<'a, R: Serialize, T: Serialize> {
    /// Snapshot schema version.
    pub schema: u32,
    /// Always `workers`.
    pub kind: &'static str,
    /// The report kind of each worker (`refs`, `threads`...).
    pub of: &'static str,
    /// The master.
    pub master: i32,
    /// One report per worker, in PID order.
    pub workers: &'a [R],
    /// The total over workers, when it means something.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<T>,
}

/// Text of a command run on every worker: a `== worker PID ==` section
/// per worker, then `total` under a `== total ... ==` heading.
pub fn sections<R>(
    master: i32,
    reps: &[R],
    pid: impl Fn(&R) -> i32,
    text: impl Fn(&R) -> String,
    total: &str,
) -> String {
    let mut s = String::new();
    for r in reps {
        s.push_str(&format!("== worker {} ==\n", pid(r)));
        s.push_str(&text(r));
        s.push('\n');
    }
    s.push_str(&format!(
        "== total over {} workers of master {} ==\n",
        reps.len(),
        master
    ));
    s.push_str(total);
    s
}

/// Combine per-worker census (or gc) reports: text under a `== worker
/// PID ==` heading each plus the total, or one JSON [`WorkersReport`].
pub fn render_workers(
    master: i32,
    reports: &[CensusReport],
    json: bool,
    text: impl Fn(&CensusReport) -> String,
) -> Result<String> {
    let mut total = sum_reports(master, reports);
    if let Some(first) = reports.first() {
        total.created = first.created.clone();
        total.created_unix_ms = first.created_unix_ms;
    }
    total.workers = Some(reports.iter().map(|r| r.pid).collect());
    if json {
        let r = WorkersReport {
            schema: crate::report::envelope::SCHEMA_VERSION,
            kind: "workers".into(),
            master,
            workers: reports.to_vec(),
            total,
        };
        return Ok(serde_json::to_string_pretty(&r)? + "\n");
    }
    // The total is no single process: drop the per-process `Start tracing` line.
    let t = text(&total);
    let t = t
        .strip_prefix("Start tracing")
        .map_or(t.as_str(), |r| r.split_once('\n').map_or("", |x| x.1));
    Ok(sections(master, reports, |r| r.pid, text, t))
}

/// Run `one` on every worker of `master` in turn and combine with
/// [`render_workers`].
pub fn for_each_worker(
    master: i32,
    workers: &[i32],
    json: bool,
    one: impl FnMut(i32) -> Result<CensusReport>,
    text: impl Fn(&CensusReport) -> String,
) -> Result<String> {
    let reports = collect_each(master, workers, one)?;
    render_workers(master, &reports, json, text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::luajit::census::{CdataType, CountSum, SizeClass};

    fn rep(
        pid: i32,
        total: u64,
        tables: (u64, u64),
        cdata: &[(&str, u64, u64)],
        classes: &[(u64, u64, u64)],
    ) -> CensusReport {
        let mut r = CensusReport {
            kind: "census".into(),
            pid,
            gc_total: total,
            walker_total: Some(total),
            ..Default::default()
        };
        r.types.insert(
            "table".into(),
            TypeStats {
                count: tables.0,
                sum: tables.1,
                min: 32,
                max: 64,
                avg: 0,
            },
        );
        r.cdata_types = cdata
            .iter()
            .map(|(n, c, s)| CdataType {
                name: n.to_string(),
                count: *c,
                sum: *s,
            })
            .collect();
        r.table_classes = classes
            .iter()
            .map(|&(le, count, sum)| SizeClass { le, count, sum })
            .collect();
        r.dead = CountSum { count: 1, sum: 10 };
        r
    }

    #[test]
    fn sums_workers_exactly() {
        let a = rep(
            10,
            1000,
            (3, 150),
            &[("char[?]", 2, 200), ("int", 1, 12)],
            &[(64, 3, 150)],
        );
        let b = rep(
            11,
            500,
            (1, 64),
            &[("char[?]", 1, 100)],
            &[(64, 1, 64), (128, 0, 0)],
        );
        let t = sum_reports(1, &[a, b]);
        assert_eq!((t.pid, t.gc_total, t.walker_total), (1, 1500, Some(1500)));
        assert_eq!(
            t.types["table"],
            TypeStats {
                count: 4,
                sum: 214,
                min: 32,
                max: 64,
                avg: 53
            }
        );
        assert_eq!(
            t.cdata_types[0],
            CdataType {
                name: "char[?]".into(),
                count: 3,
                sum: 300
            }
        );
        assert_eq!(
            t.table_classes[0],
            SizeClass {
                le: 64,
                count: 4,
                sum: 214
            }
        );
        assert_eq!(t.dead, CountSum { count: 2, sum: 20 });
    }
}

/// `ljleak leaks` on an nginx master: one ljleak per worker, all traced over
/// the same window (child processes of this one, so each has its own probes,
/// rings and Ctrl-C handling, and all stop with it), each worker's files
/// named with its PID (`leaks.svg` → `leaks-1234.svg`), and a total — the
/// sum of their folded stacks — in the files the user named (folded or SVG).
pub fn leaks_on_workers(
    master: i32,
    workers: &[i32],
    time: std::time::Duration,
    outs: &[crate::report::output::Output],
) -> Result<()> {
    use crate::error::{Classified, ExitCode};
    use crate::report::output::Format;
    if workers.is_empty() {
        return Err(Classified::new(
            ExitCode::NoProcess,
            format!("nginx master {master} has no worker processes"),
        )
        .into());
    }
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.into_string())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| anyhow::anyhow!("arguments are not UTF-8: give the worker PIDs one by one"))?;
    // Ctrl-C reaches every child (one process group): each stops early and
    // reports; this process waits for them and sums.
    let _ = ctrlc::set_handler(|| {});
    eprintln!(
        "ljleak: tracing {} workers of nginx master {master} for {} (Ctrl-C to stop early)",
        workers.len(),
        crate::units::duration(time)
    );
    let folded = outs
        .iter()
        .find(|o| o.format == Format::Folded)
        .and_then(|o| o.path.as_deref());
    // The children's folded files go to a private directory (mkdtemp,
    // 0700), never to a guessable name in /tmp where another user could
    // plant a link; it is removed with everything in it when we return.
    let tmp_dir = crate::safety::PrivateDir::new(None)
        .map_err(|e| anyhow::anyhow!("creating a private temporary directory: {e}"))?;
    let mut children = Vec::new();
    for &w in workers {
        let own_folded = match folded {
            Some(f) => std::path::PathBuf::from(with_pid(f, w)),
            None => tmp_dir.path().join(format!("worker-{w}.folded")),
        };
        let mut args = worker_argv(&argv[1..], w, |p| with_pid(Path::new(p), w));
        if folded.is_none() {
            args.push("--folded".into());
            args.push(own_folded.to_string_lossy().into_owned());
        }
        let mut cmd = std::process::Command::new(std::env::current_exe()?);
        cmd.args(&args).stdout(std::process::Stdio::piped());
        let child = crate::safety::child::die_with_parent(&mut cmd).spawn()?;
        children.push((w, own_folded, child));
    }
    let mut total: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    let mut failed = None;
    let mut stdout = String::new();
    let to_stdout = outs.iter().any(|o| o.path.is_none());
    for (w, own_folded, child) in children {
        let out = child.wait_with_output()?;
        if !out.status.success() {
            failed.get_or_insert((w, out.status.code().unwrap_or(1)));
            continue;
        }
        if to_stdout {
            stdout.push_str(&format!("# worker {w} (nginx master {master})\n"));
            stdout.push_str(&String::from_utf8_lossy(&out.stdout));
        }
        let text = std::fs::read_to_string(&own_folded).unwrap_or_default();
        if folded.is_none() {
            let _ = std::fs::remove_file(&own_folded);
        }
        for line in text.lines() {
            if let Some((stack, n)) = line.rsplit_once(' ') {
                if let Ok(n) = n.parse::<u64>() {
                    *total.entry(stack.to_string()).or_default() += n;
                }
            }
        }
    }
    if let Some((w, code)) = failed {
        // The worker's own code (5 permission, 8 exited, ...) is the answer
        // a script wants, not a generic 1.
        let code = exit_code_from_i32(code);
        return Err(Classified::new(
            code,
            format!(
                "tracing worker {w} failed (its error is above; exit code {})",
                code as i32
            ),
        )
        .into());
    }
    let bytes: u64 = total.values().sum();
    eprintln!(
        "ljleak leaks: total over {} workers of nginx master {master}: {} outstanding ({bytes} bytes) in {} stacks",
        workers.len(),
        crate::units::bytes(bytes),
        total.len()
    );
    let total_folded: String = total.iter().map(|(s, n)| format!("{s} {n}\n")).collect();
    for o in outs {
        match (o.format, o.path.as_deref()) {
            (_, None) => {}
            (Format::Folded, Some(p)) => super::write_output(Some(p), &total_folded)?,
            (Format::Svg, Some(p)) => {
                let svg = crate::report::flame::svg(
                    &crate::report::flame::Flame {
                        title: "Memory Leak Flame Graph".into(),
                        what: format!("nginx master {master}, {} workers", workers.len()),
                        unit: "bytes".into(),
                        trim: true,
                    },
                    total_folded.lines(),
                )?;
                super::write_output(Some(p), &svg)?;
            }
            (_, Some(p)) => eprintln!(
                "ljleak: per-worker reports written next to {} (-PID); the total is written for .svg and .folded outputs",
                p.display()
            ),
        }
    }
    if to_stdout {
        stdout.push_str(&format!(
            "# total of {} workers (nginx master {master})\n",
            workers.len()
        ));
        stdout.push_str(&total_folded);
        super::write_output(None, &stdout)?;
    }
    Ok(())
}

/// The documented code a child exited with (1 for anything unknown).
fn exit_code_from_i32(code: i32) -> crate::error::ExitCode {
    use crate::error::ExitCode as E;
    [
        E::Usage,
        E::GateTripped,
        E::NoProcess,
        E::Permission,
        E::NoVm,
        E::UnsupportedLayout,
        E::TargetExited,
        E::BadInput,
        E::OutputRefused,
        E::AlreadyTraced,
        E::NotUserProcess,
        E::NoTracing,
        E::NothingToTrace,
        E::TooManyEvents,
        E::LostEvents,
    ]
    .into_iter()
    .find(|c| *c as i32 == code)
    .unwrap_or(E::Failure)
}

/// `dir/name.ext` → `dir/name-PID.ext`.
fn with_pid(p: &Path, pid: i32) -> String {
    let stem = p
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match p.extension() {
        Some(e) => format!("{stem}-{pid}.{}", e.to_string_lossy()),
        None => format!("{stem}-{pid}"),
    };
    p.with_file_name(name).to_string_lossy().into_owned()
}

/// The command line for one worker: the PID swapped, output files renamed.
fn worker_argv(args: &[String], worker: i32, rename: impl Fn(&str) -> String) -> Vec<String> {
    const PID: &[&str] = &["-p", "-x", "--pid", "--master"];
    const FILES: &[&str] = &["-o", "--output", "--folded"];
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if PID.contains(&a.as_str()) {
            out.push(a.clone());
            it.next();
            out.push(worker.to_string());
        } else if FILES.contains(&a.as_str()) {
            out.push(a.clone());
            if let Some(v) = it.next() {
                out.push(rename(v));
            }
        } else if let Some((k, v)) = a.split_once('=') {
            if PID.contains(&k) {
                out.push(format!("{k}={worker}"));
            } else if FILES.contains(&k) {
                out.push(format!("{k}={}", rename(v)));
            } else {
                out.push(a.clone());
            }
        } else if (a.starts_with("-p") || a.starts_with("-x"))
            && a.len() > 2
            && a[2..].parse::<i32>().is_ok()
        {
            out.push(format!("{}{worker}", &a[..2]));
        } else if a.starts_with("-o") && a.len() > 2 {
            out.push(format!("-o{}", rename(&a[2..])));
        } else {
            out.push(a.clone());
        }
    }
    out
}

#[cfg(test)]
mod worker_argv_tests {
    use super::*;

    #[test]
    fn pid_and_files_are_rewritten_in_every_spelling() {
        let args: Vec<String> = [
            "-v",
            "leaks",
            "-p",
            "10",
            "--time",
            "3",
            "-o",
            "/t/l.svg",
            "--folded=/t/l.folded",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let r = worker_argv(&args, 42, |p| with_pid(Path::new(p), 42));
        assert_eq!(
            r,
            [
                "-v",
                "leaks",
                "-p",
                "42",
                "--time",
                "3",
                "-o",
                "/t/l-42.svg",
                "--folded=/t/l-42.folded"
            ]
        );
        let args: Vec<String> = ["leaks", "--master=10", "-x10", "-oout.json"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let r = worker_argv(&args, 7, |p| with_pid(Path::new(p), 7));
        assert_eq!(r, ["leaks", "--master=7", "-x7", "-oout-7.json"]);
    }
}
