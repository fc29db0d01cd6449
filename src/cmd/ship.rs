//! Packaging helpers, hidden from `--help`: `ljleak man DIR` writes the
//! man pages (one per command, from the clap definitions, so they never
//! drift from `--help`) and `ljleak completions SHELL` prints a shell
//! completion script. `scripts/build-release.sh` uses both for the .deb.

use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;

/// Write `ljleak.1` and `ljleak-COMMAND.1` for every visible command.
pub fn man(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cmd = crate::cli::Cli::command();
    let mut pages = vec![("ljleak".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("ljleak-{}", sub.get_name());
        // clap names are &'static str; this command runs once and exits.
        let leaked: &'static str = Box::leak(name.clone().into_boxed_str());
        pages.push((name, sub.clone().name(leaked)));
    }
    for (name, c) in pages {
        let mut buf = Vec::new();
        clap_mangen::Man::new(c)
            .render(&mut buf)
            .with_context(|| format!("rendering {name}.1"))?;
        super::write_bytes(Some(&dir.join(format!("{name}.1"))), &buf)?;
    }
    Ok(())
}

/// Print the completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    let mut cmd = crate::cli::Cli::command();
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut cmd, "ljleak", &mut buf);
    super::write_bytes(None, &buf)
}
