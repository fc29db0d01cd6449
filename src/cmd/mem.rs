//! `ljleak mem`: the whole-process memory breakdown of a worker, or of a
//! master, its workers and their total.

use anyhow::Result;

use crate::cli::{MemArgs, TextOrJson};
use crate::mem::{self, MemOpts, MemReport};
use crate::report::mem as render;

/// Run `ljleak mem`.
pub fn run(a: MemArgs) -> Result<()> {
    let opts = MemOpts {
        locate: super::locate_opts(&a.target),
        no_fds: a.no_fds,
    };
    let svg = a
        .output
        .as_ref()
        .is_some_and(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("svg")));
    let format = a.format.unwrap_or(if a.output.is_some() && !svg {
        TextOrJson::Json
    } else {
        TextOrJson::Text
    });
    let pid = a.target.pid;
    crate::target::check_process(pid)?;
    let one = |p: i32| -> Result<MemReport> { Ok(mem::breakdown(p, &opts)?) };
    let doc = match super::workers::workers_of(pid) {
        Some(w) => {
            let master = one(pid)?;
            let mut workers = Vec::new();
            for p in w {
                match one(p) {
                    Ok(r) => workers.push(r),
                    // A worker that exits meanwhile (reload) is skipped.
                    Err(e) if !crate::target::process_alive(p) => {
                        log::warn!("worker {p} exited: {e}")
                    }
                    Err(e) => return Err(e),
                }
            }
            render::Doc::Master(Box::new(render::master_doc(master, workers)))
        }
        None => render::Doc::One(Box::new(one(pid)?)),
    };
    if svg {
        let path = a.output.as_deref().expect("svg has a path");
        super::write_output(Some(path), &render::svg(&doc)?)?;
        if a.format.is_none() {
            return super::write_output(None, &render::text(&doc));
        }
    }
    let text = match format {
        TextOrJson::Text => render::text(&doc),
        TextOrJson::Json => serde_json::to_string_pretty(&doc)? + "\n",
    };
    super::write_output(if svg { None } else { a.output.as_deref() }, &text)
}
