//! Command implementations: parse-free functions taking the clap structs,
//! returning errors that `main` maps to exit codes.

pub mod census;
pub mod convert;
pub mod diff;
pub mod dump;
pub mod emit;
pub mod leaks;
pub mod mem;
pub mod probes;
pub mod refs;
pub mod ship;
pub mod threads;
pub mod watch;
pub mod workers;

use crate::cli::{Cli, Command};

/// Run a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let live_only = match &cli.cmd {
        Command::Gc(a) => Some(("gc", &a.target)),
        Command::Watch(a) => Some(("watch", &a.target)),
        Command::Leaks(a) => Some(("leaks", &a.target)),
        _ => None,
    };
    if let Some((name, t)) = live_only {
        if t.core.is_some() || t.sysroot.is_some() {
            return Err(crate::error::Classified::new(
                crate::error::ExitCode::Usage,
                format!("`{name}` needs a live process (-p PID); --core works with objs, refs, threads and mem"),
            )
            .into());
        }
    }
    crate::safety::access::allow_other_users(cli.allow_other_users);
    match cli.cmd {
        Command::Gc(a) => census::gc(a),
        Command::Objs(a) => census::objs(a),
        Command::Threads(a) => threads::run(a),
        Command::Refs(a) => refs::refs(a),
        Command::Diff(a) => diff::diff(a),
        Command::Watch(a) => watch::watch(a),
        Command::Convert(a) => convert::convert(a),
        Command::Leaks(a) => leaks::leaks(a),
        Command::Probes(a) => probes::run(a),
        Command::Dump(a) => dump::dump(a),
        Command::Serve(a) => crate::serve::run(a),
        Command::Mem(a) => mem::run(a),
        Command::SnapshotHelper(a) => {
            let h = crate::target::forker::HelperArgs::parse(&a.args)
                .ok_or_else(|| anyhow::anyhow!("snapshot-helper: bad arguments"))?;
            std::process::exit(crate::target::forker::helper_main(&h))
        }
        Command::Man { dir } => ship::man(&dir),
        Command::Completions { shell } => ship::completions(shell),
    }
}

/// VM location options from the command line.
pub(crate) fn locate_opts(t: &crate::cli::TargetArgs) -> crate::luajit::LocateOpts {
    crate::luajit::LocateOpts {
        lua_state: t.lua_state,
        layout: t.layout.clone(),
    }
}

/// Capture options from the command line.
pub(crate) fn capture_opts(
    t: &crate::cli::TargetArgs,
    c: &crate::cli::CaptureArgs,
    hold_pause: Option<std::time::Duration>,
) -> crate::capture::CaptureOpts {
    crate::capture::CaptureOpts {
        locate: locate_opts(t),
        nonblocking: c.nonblocking,
        attempts: c.attempts,
        hold_pause,
        snapshot: match c.snapshot {
            crate::cli::SnapshotArg::Fork => crate::capture::SnapshotMode::Fork,
            crate::cli::SnapshotArg::Copy => crate::capture::SnapshotMode::Copy,
            crate::cli::SnapshotArg::Auto => crate::capture::SnapshotMode::Auto,
        },
        cache_bytes: c.snapshot_cache.map(|m| m << 20),
        ..Default::default()
    }
}

/// Write `text` to `path` atomically (temp file + rename) with mode 0600,
/// or to stdout when `path` is None. Control characters that came from the
/// target or an input file are escaped (see [`crate::safety::escape`]).
pub fn write_output(path: Option<&std::path::Path>, text: &str) -> anyhow::Result<()> {
    let text = escape_output(text);
    write_bytes(path, text.as_bytes())
}

/// Escape control characters in a whole report: in JSON as `\u00XX` (serde
/// already escapes C0 controls; DEL and C1 controls are still raw inside
/// strings, the only place they can be), elsewhere as `\xHH`.
fn escape_output(text: &str) -> std::borrow::Cow<'_, str> {
    let t = text.trim_start();
    if t.starts_with('{') || t.starts_with('[') {
        if !text
            .chars()
            .any(|c| c.is_control() && !c.is_ascii_whitespace())
        {
            return text.into();
        }
        text.chars()
            .map(|c| {
                if c.is_control() && !c.is_ascii_whitespace() {
                    format!("\\u{:04x}", c as u32)
                } else {
                    c.to_string()
                }
            })
            .collect::<String>()
            .into()
    } else {
        crate::safety::escape_text(text)
    }
}

/// [`write_output`] for binary data (pprof): written as is. Files follow
/// the rules of [`crate::safety::outfile`] (never through a link).
pub fn write_bytes(path: Option<&std::path::Path>, text: &[u8]) -> anyhow::Result<()> {
    match path {
        Some(path) => Ok(crate::safety::write_file(path, text)?),
        None => write_stdout(text),
    }
}

/// Stdout that reports a lost write: Rust's stdout treats a closed fd 1
/// (EBADF, `>&-`) as success, and a reader that went away gives EPIPE
/// (SIGPIPE is ignored by the Rust runtime), so both become errors here.
fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    if crate::safety::stdout::stdout_closed() {
        anyhow::bail!("standard output is closed: the report was not written (use -o FILE)");
    }
    let mut out = std::io::stdout().lock();
    out.write_all(bytes).and_then(|_| out.flush()).map_err(|e| {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            anyhow::anyhow!("standard output was closed by its reader: the report was cut short")
        } else {
            anyhow::anyhow!("writing standard output: {e}")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_text_escapes_stay_valid() {
        let j =
            serde_json::to_string(&serde_json::json!({"exe": "a\u{1b}[2J\u{7f}\u{9b}"})).unwrap();
        let e = escape_output(&j);
        assert!(!e.chars().any(|c| c.is_control()), "{e}");
        let back: serde_json::Value = serde_json::from_str(&e).unwrap();
        assert_eq!(back["exe"], "a\u{1b}[2J\u{7f}\u{9b}");
        assert_eq!(
            escape_output("exe \u{1b}]0;x\u{7}\n"),
            "exe \\x1b]0;x\\x07\n"
        );
    }
}
