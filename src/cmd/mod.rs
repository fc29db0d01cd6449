//! Command implementations: parse-free functions taking the clap structs,
//! returning errors that `main` maps to exit codes.

pub mod census;
pub mod convert;
pub mod diff;
pub mod emit;
pub mod leaks;
pub mod probes;
pub mod refs;
pub mod ship;
pub mod threads;
pub mod watch;
pub mod workers;

use crate::cli::{Cli, Command};

/// Run a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
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
    }
}

/// Write `text` to `path` atomically (temp file + rename) with mode 0600,
/// or to stdout when `path` is None.
pub fn write_output(path: Option<&std::path::Path>, text: &str) -> anyhow::Result<()> {
    write_bytes(path, text.as_bytes())
}

/// [`write_output`] for binary data (pprof).
pub fn write_bytes(path: Option<&std::path::Path>, text: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let Some(path) = path else {
        let mut out = std::io::stdout().lock();
        out.write_all(text)?;
        return Ok(out.flush()?);
    };
    // A device, FIFO or socket (`-o /dev/null`, `-o /dev/stdout`) is
    // written in place: renaming over it would replace it with a regular
    // file (as root, /dev/null itself). A symlink is written through, at
    // its target.
    if let Ok(md) = std::fs::metadata(path) {
        if !md.is_file() {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            f.write_all(text)?;
            return Ok(());
        }
    }
    let resolved;
    let path = if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        resolved = std::fs::canonicalize(path)?;
        resolved.as_path()
    } else {
        path
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
        // create_new: never follow a link planted at the temp name.
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        anyhow::bail!("cannot write {}: {e}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    #[test]
    fn special_files_are_written_in_place_and_links_through() {
        let dir = std::env::temp_dir().join(format!("ljleak-out-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A FIFO stands for /dev/null and friends: it must stay a FIFO.
        let fifo = dir.join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || std::fs::read(fifo).unwrap())
        };
        write_bytes(Some(&fifo), b"abc").unwrap();
        assert_eq!(reader.join().unwrap(), b"abc");
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
        // A symlink keeps pointing at its target, which gets the bytes.
        let target = dir.join("target.txt");
        std::fs::write(&target, "old").unwrap();
        let link = dir.join("link.txt");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_output(Some(&link), "new").unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
        // A plain file is replaced atomically, owner-only.
        let plain = dir.join("plain.json");
        write_output(Some(&plain), "{}").unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&plain).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
