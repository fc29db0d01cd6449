//! `ljleak convert`: census and leak snapshots and folded-stack files to pprof.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::Result;

use super::emit;
use crate::cli::{ConvertArgs, FoldedUnit, CONVERT_FORMATS};
use crate::compare::snapshot::{self, Folded, Input};
use crate::error::{Classified, ExitCode};
use crate::report::output::{Format, Formats};
use crate::report::pprof;

/// Write a gzipped profile to `path`, or to stdout unless it is a terminal.
pub fn write_pprof(path: Option<&Path>, p: &pprof::proto::Profile) -> Result<()> {
    if path.is_none() && std::io::stdout().is_terminal() {
        return Err(Classified::new(
            ExitCode::Usage,
            "pprof output is binary: give -o FILE (e.g. -o heap.pb.gz) or redirect stdout",
        )
        .into());
    }
    let bytes = pprof::encode(p)?;
    super::write_bytes(path, &bytes)
}

/// Run `ljleak convert`.
pub fn convert(a: ConvertArgs) -> Result<()> {
    let outs = emit::outputs(
        &Formats {
            command: "convert",
            supported: CONVERT_FORMATS,
            stdout: Format::Pprof,
            file: Format::Pprof,
        },
        &a.output,
        a.format,
    )?;
    let input = snapshot::load_limited(&a.input, a.max_input)
        .map_err(|e| Classified::new(ExitCode::BadInput, e.to_string()))?;
    let unit = match a.unit {
        FoldedUnit::Bytes => ("inuse_space", "bytes"),
        FoldedUnit::Objects => ("inuse_objects", "count"),
    };
    // Folded stacks of the input (bytes for snapshots).
    let folded: Folded = match &input {
        Input::Census(r) => crate::report::census::census_folded(r),
        Input::Leaks(r) => crate::compare::leak_diff::bytes_folded(r),
        Input::Folded(f) => f.clone(),
    };
    emit::emit(&outs, |f| match f {
        Format::Folded => emit::text(folded.iter().map(|(s, n)| format!("{s} {n}\n")).collect()),
        Format::Svg => emit::text(crate::report::flame::svg(
            &crate::report::flame::Flame {
                title: format!("ljleak convert {}", a.input.display()),
                what: String::new(),
                unit: match (&input, a.unit) {
                    (Input::Folded(_), FoldedUnit::Objects) => "objects".into(),
                    _ => "bytes".into(),
                },
                trim: true,
            },
            folded
                .iter()
                .map(|(s, n)| format!("{s} {n}"))
                .collect::<Vec<_>>()
                .iter()
                .map(String::as_str),
        )?),
        _ => Ok(pprof::encode(&match &input {
            Input::Census(r) => pprof::from_census(r),
            Input::Leaks(r) => pprof::from_leaks(r),
            Input::Folded(f) => pprof::from_folded(f, unit),
        })?),
    })
}
