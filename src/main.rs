//! The `ljleak` binary: parse, run, print the error chain on one line, exit
//! with the documented code.

use clap::Parser;
use ljleak::error::{exit_code_of, ExitCode};

/// Runs before the Rust runtime reopens a closed stdout on /dev/null.
#[used]
#[link_section = ".init_array"]
static RECORD_STDOUT: extern "C" fn() = ljleak::safety::stdout::record_at_startup;

fn main() {
    let cli = match ljleak::cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // One line, as every other error: clap's first line without
            // its `error: ` prefix, then where to look.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("bad arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            eprintln!("ljleak: {first} (see ljleak --help)");
            std::process::exit(ExitCode::Usage as i32);
        }
    };
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format(|buf, rec| {
            // Warnings can quote the target (chunk names, paths): escaped.
            use std::io::Write;
            let msg = rec.args().to_string();
            writeln!(
                buf,
                "[{:<5}] {}",
                rec.level(),
                ljleak::safety::escape_text(&msg)
            )
        })
        .init();
    match ljleak::cmd::run(cli) {
        Ok(()) => {}
        Err(e) => {
            let code = exit_code_of(&e);
            // One line: the outermost message, with causes joined by ": ".
            let msg: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            let mut line = String::new();
            for m in msg {
                if !line.contains(&m) {
                    if !line.is_empty() {
                        line.push_str(": ");
                    }
                    line.push_str(&m);
                }
            }
            eprintln!(
                "ljleak: {}",
                ljleak::safety::escape_text(&line.replace('\n', " "))
            );
            std::process::exit(if code == ExitCode::Ok { 1 } else { code as i32 });
        }
    }
}
