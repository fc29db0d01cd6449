//! Writing a command's outputs: resolve `-o`/`--format` with
//! [`crate::report::output::plan`], render each output, write it (files
//! atomically through [`super::write_bytes`]).

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Result;

use crate::error::{Classified, ExitCode};
use crate::report::output::{plan, Format, Formats, Output};

/// The outputs of a command, or a usage error (exit 2).
pub fn outputs(spec: &Formats, files: &[PathBuf], format: Option<Format>) -> Result<Vec<Output>> {
    plan(spec, files, format).map_err(|e| Classified::new(ExitCode::Usage, e.to_string()).into())
}

/// Render and write every output in turn. Binary output is refused on a
/// terminal before anything is rendered.
pub fn emit(outputs: &[Output], mut render: impl FnMut(Format) -> Result<Vec<u8>>) -> Result<()> {
    for o in outputs {
        if o.path.is_none() && o.format.is_binary() && std::io::stdout().is_terminal() {
            return Err(Classified::new(
                ExitCode::Usage,
                format!(
                    "{} output is binary: give -o FILE (e.g. -o heap.pb.gz) or redirect stdout",
                    o.format
                ),
            )
            .into());
        }
    }
    for o in outputs {
        let bytes = render(o.format)?;
        if o.format.is_binary() {
            super::write_bytes(o.path.as_deref(), &bytes)?;
        } else {
            // Text from the target or an input file: control characters
            // escaped (write_output).
            super::write_output(o.path.as_deref(), &String::from_utf8_lossy(&bytes))?;
        }
    }
    Ok(())
}

/// `text` as bytes, for [`emit`] closures.
pub fn text(s: String) -> Result<Vec<u8>> {
    Ok(s.into_bytes())
}

/// Pretty JSON of `v` plus a newline.
pub fn json<T: serde::Serialize + ?Sized>(v: &T) -> Result<Vec<u8>> {
    let mut b = serde_json::to_vec_pretty(v)?;
    b.push(b'\n');
    Ok(b)
}
