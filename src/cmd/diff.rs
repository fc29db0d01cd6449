//! `ljleak diff A B`: compare two snapshots (census JSON, leaks JSON or
//! folded stacks),
//! print the deltas, draw a differential flame graph, and apply CI gates.

use anyhow::Result;

use super::emit;
use crate::cli::{DiffArgs, DIFF_FORMATS};
use crate::compare::gate::{Gate, GateResult, Metrics};
use crate::compare::snapshot::{self, Folded, Input};
use crate::compare::{census_diff, folded, leak_diff};
use crate::error::{Classified, ExitCode};
use crate::report::diff::{self as render, DiffJson, Style};
use crate::report::output::{with_stdout_report, Format, Formats};

fn bad_input(e: impl std::fmt::Display) -> anyhow::Error {
    Classified::new(ExitCode::BadInput, e.to_string()).into()
}

/// Run `ljleak diff`.
pub fn diff(a: DiffArgs) -> Result<()> {
    // Gates first: a typo should not cost a comparison.
    let gates: Vec<Gate> = a
        .fail_if
        .iter()
        .map(|g| Gate::parse(g).map_err(|e| Classified::new(ExitCode::Usage, e.to_string())))
        .collect::<Result<_, _>>()?;
    // Two `ljleak mem` snapshots compare in their own module.
    if super::mem::diff(&a, &gates)? {
        return Ok(());
    }
    let outs = emit::outputs(
        &Formats {
            command: "diff",
            supported: DIFF_FORMATS,
            stdout: Format::Text,
            file: Format::Text,
        },
        &a.output,
        a.format,
    )?;
    let outs = if a.format.is_none() {
        with_stdout_report(outs, Format::Text)
    } else {
        outs
    };
    let (fa, fb) = (a.a.display().to_string(), a.b.display().to_string());
    let (ia, sa) = snapshot::load_scoped(&a.a, a.max_input).map_err(bad_input)?;
    let (ib, sb) = snapshot::load_scoped(&a.b, a.max_input).map_err(bad_input)?;
    snapshot::check_comparable(&fa, &ia, &fb, &ib, a.allow_build_mismatch).map_err(bad_input)?;
    let scope_warning = snapshot::scope_mismatch(&fa, &sa, &fb, &sb);
    if let Some(w) = &scope_warning {
        log::warn!("{w}");
    }
    let (d, shapes): (Compared, (Folded, Folded)) = match (&ia, &ib) {
        (Input::Census(ra), Input::Census(rb)) => (
            Compared::Census(census_diff::diff(&fa, ra, &fb, rb)),
            (
                crate::report::census::census_folded(ra),
                crate::report::census::census_folded(rb),
            ),
        ),
        (Input::Folded(xa), Input::Folded(xb)) => (
            Compared::Folded(folded::diff(&fa, xa, &fb, xb)),
            (xa.clone(), xb.clone()),
        ),
        (Input::Leaks(ra), Input::Leaks(rb)) => (
            Compared::Leaks(leak_diff::diff(&fa, ra, &fb, rb)),
            (leak_diff::bytes_folded(ra), leak_diff::bytes_folded(rb)),
        ),
        // check_comparable rejects mixed kinds; say so again rather than panic.
        _ => {
            return Err(bad_input(format!(
                "cannot compare {fa} ({}) with {fb} ({})",
                ia.kind(),
                ib.kind()
            )))
        }
    };
    let metrics: &dyn Metrics = match &d {
        Compared::Census(x) => x,
        Compared::Folded(x) => x,
        Compared::Leaks(x) => x,
    };
    let results = eval(&gates, metrics)?;
    let full = a.full;
    let report = |style: Style| {
        let mut out = match &d {
            Compared::Census(x) => render::census(x, style, a.top),
            Compared::Folded(x) => render::folded(x, style, a.top, full),
            Compared::Leaks(x) => render::leaks(x, style, a.top, full),
        };
        if let Some(w) = &scope_warning {
            out.push_str(&format!("\nWARNING: {w}\n"));
        }
        out.push_str(&render::gates(&results, style));
        out
    };
    emit::emit(&outs, |f| match f {
        Format::Json => {
            let mut j = DiffJson {
                kind: "census",
                census: None,
                folded: None,
                leaks: None,
                gates: &results,
                tripped: results.iter().filter(|r| r.tripped).count(),
                scope_warning: scope_warning.as_deref(),
            };
            match &d {
                Compared::Census(x) => j.census = Some(x),
                Compared::Folded(x) => (j.kind, j.folded) = ("folded", Some(x)),
                Compared::Leaks(x) => (j.kind, j.leaks) = ("leaks", Some(x)),
            }
            emit::json(&j)
        }
        Format::Svg => {
            let flame = crate::report::flame::Flame {
                title: format!("ljleak diff: {fa} -> {fb}"),
                what: String::new(),
                unit: "bytes".into(),
                trim: true,
            };
            emit::text(crate::report::flame::diff_svg(
                &flame, &shapes.0, &shapes.1,
            )?)
        }
        Format::Markdown => emit::text(report(Style::Markdown)),
        _ => emit::text(report(Style::Text)),
    })?;
    let tripped: Vec<&GateResult> = results.iter().filter(|r| r.tripped).collect();
    if !tripped.is_empty() {
        let list: Vec<String> = tripped
            .iter()
            .map(|r| format!("{} (observed {})", r.expr, r.observed))
            .collect();
        return Err(Classified::new(
            ExitCode::GateTripped,
            format!("{} gate(s) tripped: {}", tripped.len(), list.join(", ")),
        )
        .into());
    }
    Ok(())
}

/// The comparison of two inputs of one kind.
enum Compared {
    Census(census_diff::CensusDiff),
    Folded(folded::FoldedDiff),
    Leaks(leak_diff::LeakDiff),
}

fn eval(gates: &[Gate], m: &dyn Metrics) -> Result<Vec<GateResult>> {
    gates
        .iter()
        .map(|g| {
            g.eval(m)
                .map_err(|e| Classified::new(ExitCode::Usage, e.to_string()).into())
        })
        .collect()
}
