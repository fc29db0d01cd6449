//! Command implementations: parse-free functions taking the clap structs,
//! returning errors that `main` maps to exit codes.

pub mod census;
pub mod threads;
pub mod leaks;
pub mod probes;

use crate::cli::{Cli, Command};

/// Run a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Command::Gc(a) => census::gc(a),
        Command::Objs(a) => census::objs(a),
        Command::Threads(a) => threads::run(a),
        Command::Leaks(a) => leaks::leaks(a),
        Command::Probes(a) => probes::run(a),
    }
}

/// Write `text` to `path` atomically (temp file + rename) with mode 0600,
/// or to stdout when `path` is None.
pub fn write_output(path: Option<&std::path::Path>, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let Some(path) = path else {
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        return Ok(out.flush()?);
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let res = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        anyhow::bail!("cannot write {}: {e}", path.display());
    }
    Ok(())
}
