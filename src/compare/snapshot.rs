//! Reading comparison inputs: census snapshots (the JSON `objs`/`gc` write),
//! leak snapshots (the JSON `leaks -o X.json` writes) and folded-stack files (`a;b;c N` lines), with one-line errors that say
//! what is wrong with which file.

use std::collections::BTreeMap;
use std::path::Path;

use crate::model::census::CensusReport;
use crate::model::envelope::SCHEMA_VERSION;
use crate::model::leaks::LeakReport;

/// Why an input cannot be used. Every variant maps to exit code 9
/// ([`crate::error::ExitCode::BadInput`]).
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// Could not read the file.
    #[error("cannot read {file}: {err}")]
    Read {
        /// The file.
        file: String,
        /// Why.
        err: std::io::Error,
    },
    /// JSON that is not a snapshot.
    #[error(
        "{file} is not a ljleak snapshot: {why} (write one with `ljleak objs -p PID -o FILE`)"
    )]
    Malformed {
        /// The file.
        file: String,
        /// Parser message.
        why: String,
    },
    /// Neither JSON nor folded stacks.
    #[error("{file} is neither a ljleak snapshot (JSON) nor a folded-stack file: line {line}: expected `frame;frame;... COUNT`")]
    NotFolded {
        /// The file.
        file: String,
        /// 1-based line number of the first bad line.
        line: usize,
    },
    /// Written by a newer ljleak.
    #[error("{file} has snapshot schema {found}; this ljleak reads schema {SCHEMA_VERSION} and older: upgrade ljleak")]
    Schema {
        /// The file.
        file: String,
        /// Its schema.
        found: u32,
    },
    /// A kind `diff` does not know.
    #[error("{file} is a `{kind}` snapshot; ljleak diff compares `census`/`gc`, `leaks` and `refs` snapshots and folded-stack files")]
    UnknownKind {
        /// The file.
        file: String,
        /// Its kind.
        kind: String,
    },
    /// Larger than the limit (a comparison holds several times the file in
    /// memory).
    #[error("{file} is {size} bytes, over the input limit of {limit} bytes: pass --max-input {size} (or more) if it is really a snapshot")]
    TooLarge {
        /// The file.
        file: String,
        /// Its size.
        size: u64,
        /// The limit in force.
        limit: u64,
    },
    /// Counts whose sum does not fit: totals would wrap and gates pass.
    #[error("{file}: its {what} add up to more than {max} (a corrupted or hostile file)", max = i64::MAX)]
    Overflow {
        /// The file.
        file: String,
        /// Which numbers.
        what: &'static str,
    },
    /// The two inputs are of different kinds.
    #[error("cannot compare {a} ({ka}) with {b} ({kb}): give two inputs of the same kind")]
    KindMismatch {
        /// First file.
        a: String,
        /// Its kind.
        ka: String,
        /// Second file.
        b: String,
        /// Its kind.
        kb: String,
    },
    /// Different LuaJIT builds: object sizes differ, so deltas would mislead.
    #[error("{a} was taken on LuaJIT {la} and {b} on {lb}: object sizes differ between builds; compare snapshots of the same build (or pass --allow-build-mismatch)")]
    BuildMismatch {
        /// First file.
        a: String,
        /// Its layout.
        la: String,
        /// Second file.
        b: String,
        /// Its layout.
        lb: String,
    },
}

/// A folded-stack profile: stack (frames joined by `;`) to its count, with
/// repeated stacks summed.
pub type Folded = BTreeMap<String, u64>;

/// One comparison input.
#[derive(Debug, Clone)]
pub enum Input {
    /// A census (or gc) snapshot.
    Census(Box<CensusReport>),
    /// A leak snapshot.
    Leaks(Box<LeakReport>),
    /// Folded stacks.
    Folded(Folded),
}

impl Input {
    /// Kind name for messages.
    pub fn kind(&self) -> String {
        match self {
            Input::Census(r) => r.kind.clone(),
            Input::Leaks(_) => "leaks".into(),
            Input::Folded(_) => "folded stacks".into(),
        }
    }
}

/// What a snapshot covers: one process, or the sum over the workers of an
/// nginx master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// One process (or unknown: folded stacks).
    Process(Option<i32>),
    /// The total over these workers of a master.
    Master {
        /// The master.
        master: i32,
        /// Its workers.
        workers: Vec<i32>,
    },
}

/// [`load`], and what the file covers.
pub fn load_scoped(path: &Path, limit: u64) -> Result<(Input, Scope), InputError> {
    let (input, text) = load_text(path, limit)?;
    Ok((input, scope_of(&text)))
}

/// The scope of a snapshot's text (a `workers` file is a master's total).
pub fn scope_of(text: &str) -> Scope {
    let t = text.trim_start();
    if !t.starts_with('{') {
        return Scope::Process(None);
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(t) else {
        return Scope::Process(None);
    };
    if v.get("kind").and_then(|k| k.as_str()) == Some("workers") {
        let workers = v["workers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|w| w["pid"].as_i64().map(|p| p as i32))
                    .collect()
            })
            .unwrap_or_default();
        return Scope::Master {
            master: v["master"].as_i64().unwrap_or(0) as i32,
            workers,
        };
    }
    Scope::Process(v["pid"].as_i64().map(|p| p as i32))
}

/// A warning when one snapshot is a master's total and the other one
/// process: the delta then mixes N workers with one.
pub fn scope_mismatch(fa: &str, a: &Scope, fb: &str, b: &Scope) -> Option<String> {
    let what = |f: &str, s: &Scope| match s {
        Scope::Master { master, workers } => format!(
            "{f} is the total of {} workers of nginx master {master}",
            workers.len()
        ),
        Scope::Process(Some(p)) => format!("{f} is one process (pid {p})"),
        Scope::Process(None) => format!("{f} is one profile"),
    };
    let master = |s: &Scope| matches!(s, Scope::Master { .. });
    if master(a) == master(b) {
        return None;
    }
    Some(format!(
        "{} but {}: the change mixes a whole server with one worker; snapshot both the same way (`-p MASTER` twice, or `-p WORKER` twice)",
        what(fa, a),
        what(fb, b)
    ))
}

/// Default limit on an input file's size (`--max-input`): a comparison
/// holds a parsed file at several times its size.
pub const DEFAULT_MAX_INPUT: u64 = 256 << 20;

/// Read and validate `path`, refusing files over [`DEFAULT_MAX_INPUT`].
pub fn load(path: &Path) -> Result<Input, InputError> {
    load_limited(path, DEFAULT_MAX_INPUT)
}

/// Read and validate `path`, refusing more than `limit` bytes (also when
/// the file grows while read, or is a pipe).
pub fn load_limited(path: &Path, limit: u64) -> Result<Input, InputError> {
    load_text(path, limit).map(|(input, _)| input)
}

/// [`load_limited`], with the file's text.
fn load_text(path: &Path, limit: u64) -> Result<(Input, String), InputError> {
    use std::io::Read;
    let file = crate::safety::escape_text(&path.display().to_string()).into_owned();
    let read_err = |err| InputError::Read {
        file: file.clone(),
        err,
    };
    let f = std::fs::File::open(path).map_err(read_err)?;
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    if size > limit {
        return Err(InputError::TooLarge { file, size, limit });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    f.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > limit {
        return Err(InputError::TooLarge {
            file,
            size: bytes.len() as u64,
            limit,
        });
    }
    let text = String::from_utf8(bytes).map_err(|_| {
        read_err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        ))
    })?;
    let input = parse(&file, &text)?;
    check_totals(&file, &input)?;
    Ok((input, text))
}

/// Every sum the comparisons compute must fit in an i64 (deltas are
/// signed): checked here once, in 128 bits, so the rest can add freely.
pub fn check_totals(file: &str, input: &Input) -> Result<(), InputError> {
    const MAX: u128 = i64::MAX as u128;
    let over = |what| InputError::Overflow {
        file: file.into(),
        what,
    };
    let fits = |it: &mut dyn Iterator<Item = u64>| it.map(u128::from).sum::<u128>() <= MAX;
    match input {
        Input::Folded(f) => {
            if !fits(&mut f.values().copied()) {
                return Err(over("stack counts"));
            }
        }
        Input::Leaks(r) => {
            if !fits(&mut r.sites.iter().map(|s| s.bytes))
                || !fits(&mut r.sites.iter().map(|s| s.count))
            {
                return Err(over("site bytes or counts"));
            }
        }
        Input::Census(r) => {
            let ok = fits(&mut r.types.values().map(|t| t.sum))
                && fits(&mut r.types.values().map(|t| t.count))
                && fits(&mut r.cdata_types.iter().map(|c| c.sum))
                && fits(&mut r.cdata_types.iter().map(|c| c.count))
                && fits(&mut r.table_classes.iter().map(|c| c.sum))
                && fits(&mut r.table_classes.iter().map(|c| c.count))
                && fits(&mut [r.gc_total, r.walker_total.unwrap_or(0), r.dead.sum].into_iter());
            if !ok {
                return Err(over("object counts or sizes"));
            }
        }
    }
    Ok(())
}

/// Parse the text of an input named `file`.
pub fn parse(file: &str, text: &str) -> Result<Input, InputError> {
    let t = text.trim_start();
    if t.starts_with('{') {
        return parse_json(file, t);
    }
    parse_folded(text)
        .map(Input::Folded)
        .map_err(|line| InputError::NotFolded {
            file: file.into(),
            line,
        })
}

fn parse_json(file: &str, text: &str) -> Result<Input, InputError> {
    let malformed = |why: String| InputError::Malformed {
        file: file.into(),
        why,
    };
    // Look at schema and kind before the full parse, so a newer or foreign
    // file gets that message rather than a missing-field one.
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| malformed(e.to_string()))?;
    let schema = match v.get("schema") {
        None => 1,
        Some(s) => s
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| malformed("`schema` is not a number".into()))?,
    };
    if schema > SCHEMA_VERSION || schema == 0 {
        return Err(InputError::Schema {
            file: file.into(),
            found: schema,
        });
    }
    let kind = v
        .get("kind")
        .and_then(|k| k.as_str())
        .ok_or_else(|| malformed("no `kind` field".into()))?;
    // `objs --master -o` writes every worker plus their sum: compare the sums.
    let v = match kind {
        "census" | "gc" => v,
        // A refs report compares as folded stacks: each suspect's named path
        // from a root is its stack, its retained bytes the weight. Names
        // (not addresses) are stable across runs, so "which holder grew
        // between A and B" is one `ljleak diff`.
        "refs" => {
            return serde_json::from_value::<crate::model::refs::RefsReport>(v)
                .map(|r| Input::Folded(refs_folded(&r)))
                .map_err(|e| malformed(e.to_string()))
        }
        "leaks" => {
            return serde_json::from_value(v)
                .map(|r| Input::Leaks(Box::new(r)))
                .map_err(|e| malformed(e.to_string()))
        }
        // `refs -p MASTER`: every worker's suspects by path, summed.
        "workers" if v.get("of").and_then(|o| o.as_str()) == Some("refs") => {
            let mut f = Folded::new();
            for w in v["workers"].as_array().into_iter().flatten() {
                let r: crate::model::refs::RefsReport =
                    serde_json::from_value(w.clone()).map_err(|e| malformed(e.to_string()))?;
                for (k, n) in refs_folded(&r) {
                    *f.entry(k).or_default() += n;
                }
            }
            return Ok(Input::Folded(f));
        }
        "workers" if v.get("of").is_some_and(|o| o != "census" && o != "gc") => {
            return Err(InputError::UnknownKind {
                file: file.into(),
                kind: format!("workers of {}", v["of"]),
            })
        }
        "workers" => v
            .get("total")
            .cloned()
            .ok_or_else(|| malformed("a `workers` snapshot without `total`".into()))?,
        _ => {
            return Err(InputError::UnknownKind {
                file: file.into(),
                kind: kind.into(),
            })
        }
    };
    serde_json::from_value(v)
        .map(|r| Input::Census(Box::new(r)))
        .map_err(|e| malformed(e.to_string()))
}

/// Suspects of a refs report as folded stacks: path frames root first,
/// then the holder's type; weight = retained bytes. Unreachable suspects
/// (no path) are left out.
pub fn refs_folded(r: &crate::model::refs::RefsReport) -> Folded {
    let mut f = Folded::new();
    for h in r.suspects.iter().filter(|h| !h.path.is_empty()) {
        let mut frames: Vec<String> = h.path.iter().map(|p| p.replace(';', ",")).collect();
        frames.push(h.ty.clone());
        *f.entry(frames.join(";")).or_default() += h.retained;
    }
    f
}

/// Parse folded stacks; on error the 1-based number of the first bad line.
/// Blank lines and `#` comments are skipped; an empty file is an error.
pub fn parse_folded(text: &str) -> Result<Folded, usize> {
    let mut out = Folded::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let (stack, n) = l.rsplit_once(' ').ok_or(i + 1)?;
        let n: u64 = n.parse().map_err(|_| i + 1)?;
        let stack = stack.trim_end();
        if stack.is_empty() {
            return Err(i + 1);
        }
        let e = out.entry(stack.to_string()).or_insert(0);
        *e = e.saturating_add(n);
    }
    if out.is_empty() {
        return Err(1);
    }
    Ok(out)
}

/// Check that `a` and `b` can be compared.
pub fn check_comparable(
    fa: &str,
    a: &Input,
    fb: &str,
    b: &Input,
    allow_build_mismatch: bool,
) -> Result<(), InputError> {
    match (a, b) {
        (Input::Census(x), Input::Census(y)) => {
            if x.kind != y.kind {
                return Err(mismatch(fa, a, fb, b));
            }
            if !allow_build_mismatch
                && (x.luajit.variant != y.luajit.variant || x.luajit.gc64 != y.luajit.gc64)
            {
                return Err(InputError::BuildMismatch {
                    a: fa.into(),
                    la: build_name(x),
                    b: fb.into(),
                    lb: build_name(y),
                });
            }
            Ok(())
        }
        (Input::Leaks(x), Input::Leaks(y)) => {
            // Allocation stacks of different builds are not comparable
            // either; an unknown build (no LuaJIT found) matches anything.
            let differ = match (&x.luajit, &y.luajit) {
                (Some(p), Some(q)) => p.variant != q.variant || p.gc64 != q.gc64,
                _ => false,
            };
            if differ && !allow_build_mismatch {
                return Err(InputError::BuildMismatch {
                    a: fa.into(),
                    la: x.build_name(),
                    b: fb.into(),
                    lb: y.build_name(),
                });
            }
            Ok(())
        }
        (Input::Folded(_), Input::Folded(_)) => Ok(()),
        _ => Err(mismatch(fa, a, fb, b)),
    }
}

fn build_name(r: &CensusReport) -> String {
    format!(
        "{} {}",
        r.luajit.variant,
        if r.luajit.gc64 { "GC64" } else { "non-GC64" }
    )
}

fn mismatch(fa: &str, a: &Input, fb: &str, b: &Input) -> InputError {
    InputError::KindMismatch {
        a: fa.into(),
        ka: a.kind(),
        b: fb.into(),
        kb: b.kind(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_total_against_one_worker_is_flagged() {
        let m =
            scope_of(r#"{"kind": "workers", "master": 7, "workers": [{"pid": 8}, {"pid": 9}]}"#);
        assert_eq!(
            m,
            Scope::Master {
                master: 7,
                workers: vec![8, 9]
            }
        );
        let w = scope_of(r#"{"kind": "census", "pid": 8}"#);
        assert_eq!(w, Scope::Process(Some(8)));
        let msg = scope_mismatch("a.json", &m, "b.json", &w).unwrap();
        assert!(
            msg.contains("total of 2 workers of nginx master 7") && msg.contains("pid 8"),
            "{msg}"
        );
        assert_eq!(scope_mismatch("a", &w, "b", &w), None);
        assert_eq!(scope_mismatch("a", &m, "b", &m), None);
    }

    #[test]
    fn folded_sums_repeats_and_rejects_garbage() {
        let f = parse_folded("a;b 3\n# c\n\na;b 4\nx 1\n").unwrap();
        assert_eq!(f["a;b"], 7);
        assert_eq!(f["x"], 1);
        assert_eq!(parse_folded("a;b 3\nnot a number\n"), Err(2));
        assert_eq!(parse_folded(""), Err(1));
    }

    #[test]
    fn schema_and_kind_are_checked_first() {
        let e = parse("f", r#"{"schema": 99, "kind": "census"}"#).unwrap_err();
        assert!(matches!(e, InputError::Schema { found: 99, .. }), "{e}");
        let e = parse("f", r#"{"schema": 1, "kind": "threads"}"#).unwrap_err();
        assert!(matches!(e, InputError::UnknownKind { .. }), "{e}");
        // A leak snapshot written before the envelope: summary and sites only.
        let i = parse("f", r#"{"kind": "leaks", "summary": {}, "sites": []}"#).unwrap();
        assert!(matches!(i, Input::Leaks(_)));
        let e = parse("f", r#"{"schema": 1, "kind": "workers", "of": "threads"}"#).unwrap_err();
        assert!(matches!(e, InputError::UnknownKind { .. }), "{e}");
        let e = parse("f", r#"{"schema": 1, "kind": "census""#).unwrap_err();
        assert!(matches!(e, InputError::Malformed { .. }), "{e}");
    }
}
