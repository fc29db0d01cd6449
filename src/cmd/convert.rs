//! `ljleak convert`: census and leak snapshots and folded-stack files to pprof.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::Result;

use crate::cli::{ConvertArgs, FoldedUnit};
use crate::compare::snapshot::{self, Input};
use crate::error::{Classified, ExitCode};
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
    let input = snapshot::load_limited(&a.input, a.max_input)
        .map_err(|e| Classified::new(ExitCode::BadInput, e.to_string()))?;
    let profile = match input {
        Input::Census(r) => pprof::from_census(&r),
        Input::Leaks(r) => pprof::from_leaks(&r),
        Input::Folded(f) => pprof::from_folded(
            &f,
            match a.unit {
                FoldedUnit::Bytes => ("inuse_space", "bytes"),
                FoldedUnit::Objects => ("inuse_objects", "count"),
            },
        ),
    };
    write_pprof(a.output.as_deref(), &profile)
}
