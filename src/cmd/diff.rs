//! `ljleak diff A B`: compare two snapshots (census JSON, leaks JSON or
//! folded stacks),
//! print the deltas, draw a differential flame graph, and apply CI gates.

use anyhow::Result;

use crate::cli::{DiffArgs, DiffFormat};
use crate::compare::gate::{Gate, GateResult, Metrics};
use crate::compare::snapshot::{self, Folded, Input};
use crate::compare::{census_diff, folded, leak_diff};
use crate::error::{Classified, ExitCode};
use crate::report::diff::{self as render, DiffJson, Style};

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
    let (fa, fb) = (a.a.display().to_string(), a.b.display().to_string());
    let ia = snapshot::load_limited(&a.a, a.max_input).map_err(bad_input)?;
    let ib = snapshot::load_limited(&a.b, a.max_input).map_err(bad_input)?;
    snapshot::check_comparable(&fa, &ia, &fb, &ib, a.allow_build_mismatch).map_err(bad_input)?;
    let style = if a.format == DiffFormat::Markdown {
        Style::Markdown
    } else {
        Style::Text
    };
    let svg = a
        .output
        .as_ref()
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("svg")));
    let (d, shapes): (Compared, (Folded, Folded)) = match (&ia, &ib) {
        (Input::Census(ra), Input::Census(rb)) => (
            Compared::Census(census_diff::diff(&fa, ra, &fb, rb)),
            (folded::census_folded(ra), folded::census_folded(rb)),
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
    let text = match (a.format, &d) {
        (DiffFormat::Json, _) => {
            let mut j = DiffJson {
                kind: "census",
                census: None,
                folded: None,
                leaks: None,
                gates: &results,
                tripped: results.iter().filter(|r| r.tripped).count(),
            };
            match &d {
                Compared::Census(x) => j.census = Some(x),
                Compared::Folded(x) => (j.kind, j.folded) = ("folded", Some(x)),
                Compared::Leaks(x) => (j.kind, j.leaks) = ("leaks", Some(x)),
            }
            json(j)?
        }
        (_, Compared::Census(x)) => render::census(x, style, a.top),
        (_, Compared::Folded(x)) => render::folded(x, style, a.top),
        (_, Compared::Leaks(x)) => render::leaks(x, style, a.top),
    };
    let tripped: Vec<&GateResult> = results.iter().filter(|r| r.tripped).collect();
    let mut out = text;
    if a.format != DiffFormat::Json {
        out.push_str(&render::gates(&results, style));
    }
    if let Some(path) = svg {
        let mut buf = Vec::new();
        let title = format!("ljleak diff: {fa} -> {fb}");
        folded::differential_svg(&shapes.0, &shapes.1, &title, &mut buf)
            .map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))?;
        super::write_output(Some(path), &String::from_utf8_lossy(&buf))?;
        super::write_output(None, &out)?;
    } else {
        super::write_output(a.output.as_deref(), &out)?;
    }
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

fn json(d: DiffJson<'_>) -> Result<String> {
    Ok(serde_json::to_string_pretty(&d)? + "\n")
}
