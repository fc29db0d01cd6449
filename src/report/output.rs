//! Which format each output gets: one rule for every command.
//!
//! - `-o FILE` picks the format from FILE's extension ([`Format::from_path`]:
//!   `.json`, `.svg`, `.txt`, `.folded`, `.pb.gz`, `.md`, `.stap`, `.csv`,
//!   `.jsonl`);
//! - `--format F` sets the format of stdout and of files whose extension
//!   says nothing; a file whose extension names another format is refused
//!   (`--format json -o x.svg`);
//! - `-o` may be given several times: one capture, several files;
//! - each command lists the formats it can write; others are refused with
//!   the list.
//!
//! A command declares its formats with [`formats`] (a clap value parser
//! that shows only those in `--help`) and resolves its outputs with
//! [`plan`]; it then renders each [`Output`] and writes it (the writing
//! itself is the command layer's `write_output`).

use std::path::{Path, PathBuf};

/// Every output format ljleak writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Human-readable text.
    Text,
    /// One JSON object (a snapshot `ljleak diff` reads back).
    Json,
    /// SVG: a flame graph, or a plot (`watch`).
    Svg,
    /// Folded stacks, root first: `a;b;c N`.
    Folded,
    /// Gzipped pprof profile.proto.
    Pprof,
    /// Markdown tables (for a CI comment).
    Markdown,
    /// SystemTap-style backtraces (stackcollapse-stap.pl input).
    Stap,
    /// CSV rows.
    Csv,
    /// One JSON object per line.
    Jsonl,
}

/// Every format, in the order `--help` lists them.
pub const ALL: [Format; 9] = [
    Format::Text,
    Format::Json,
    Format::Svg,
    Format::Folded,
    Format::Pprof,
    Format::Markdown,
    Format::Stap,
    Format::Csv,
    Format::Jsonl,
];

impl Format {
    /// The name `--format` takes.
    pub fn name(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Json => "json",
            Format::Svg => "svg",
            Format::Folded => "folded",
            Format::Pprof => "pprof",
            Format::Markdown => "markdown",
            Format::Stap => "stap",
            Format::Csv => "csv",
            Format::Jsonl => "jsonl",
        }
    }

    /// One line for `--help`.
    pub fn help(self) -> &'static str {
        match self {
            Format::Text => "human-readable text (.txt)",
            Format::Json => "one JSON object, a snapshot for `ljleak diff` (.json)",
            Format::Svg => "SVG flame graph or plot (.svg)",
            Format::Folded => "folded stacks `a;b;c N` (.folded)",
            Format::Pprof => "gzipped pprof profile (.pb.gz)",
            Format::Markdown => "markdown tables (.md)",
            Format::Stap => "SystemTap-style backtraces (.stap)",
            Format::Csv => "CSV rows (.csv)",
            Format::Jsonl => "one JSON object per line (.jsonl)",
        }
    }

    /// The format a file name's extension names, if any.
    pub fn from_path(p: &Path) -> Option<Format> {
        let name = p.file_name()?.to_str()?.to_ascii_lowercase();
        // Longest suffixes first (`.pb.gz` before `.gz`).
        const EXT: [(&str, Format); 17] = [
            (".pb.gz", Format::Pprof),
            (".pprof", Format::Pprof),
            (".pb", Format::Pprof),
            (".json", Format::Json),
            (".jsonl", Format::Jsonl),
            (".ndjson", Format::Jsonl),
            (".svg", Format::Svg),
            (".txt", Format::Text),
            (".text", Format::Text),
            (".log", Format::Text),
            (".folded", Format::Folded),
            (".collapsed", Format::Folded),
            (".md", Format::Markdown),
            (".markdown", Format::Markdown),
            (".stap", Format::Stap),
            (".bt", Format::Stap),
            (".csv", Format::Csv),
        ];
        EXT.iter().find(|(e, _)| name.ends_with(e)).map(|x| x.1)
    }

    /// Binary output (never to a terminal).
    pub fn is_binary(self) -> bool {
        self == Format::Pprof
    }

    /// A report a person or script reads (as opposed to a graphic or a
    /// profile): commands print one on stdout when every file is another
    /// kind.
    pub fn is_report(self) -> bool {
        matches!(
            self,
            Format::Text | Format::Json | Format::Markdown | Format::Csv | Format::Jsonl
        )
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A clap value parser accepting only `list` (shown in `--help` with
/// their descriptions).
pub fn formats(list: &'static [Format]) -> impl clap::builder::TypedValueParser<Value = Format> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new(
        list.iter()
            .map(|f| PossibleValue::new(f.name()).help(f.help())),
    )
    .map(|s| {
        ALL.into_iter()
            .find(|f| f.name() == s)
            .unwrap_or(Format::Text)
    })
}

/// One output: a file (None: stdout) and its format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Where; None for stdout.
    pub path: Option<PathBuf>,
    /// What.
    pub format: Format,
}

/// Why the outputs asked for cannot be written (a usage error, exit 2).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OutputError {
    /// `--format F` with a file whose extension names another format.
    #[error("--format {asked} does not match {path} (a .{ext} file is {from_ext}): drop --format or rename the file")]
    Mismatch {
        /// The file.
        path: String,
        /// Its extension.
        ext: String,
        /// The format its extension names.
        from_ext: Format,
        /// The format asked for.
        asked: Format,
    },
    /// A format this command does not write.
    #[error("{command} cannot write {format}{what}: it writes {supported}")]
    Unsupported {
        /// The command.
        command: String,
        /// The format.
        format: Format,
        /// ` (FILE)` when it came from a file name.
        what: String,
        /// The formats it writes.
        supported: String,
    },
}

/// What a command can write and what it writes by default.
#[derive(Debug, Clone, Copy)]
pub struct Formats {
    /// Command name for messages.
    pub command: &'static str,
    /// Formats it writes.
    pub supported: &'static [Format],
    /// On stdout without --format.
    pub stdout: Format,
    /// For a file whose extension names no format, without --format.
    pub file: Format,
}

/// Resolve `-o` files and `--format` into outputs (see the module docs).
/// No file: one output on stdout.
pub fn plan(
    spec: &Formats,
    files: &[PathBuf],
    format: Option<Format>,
) -> Result<Vec<Output>, OutputError> {
    let check = |f: Format, p: Option<&Path>| {
        if spec.supported.contains(&f) {
            Ok(f)
        } else {
            Err(OutputError::Unsupported {
                command: spec.command.into(),
                format: f,
                what: p.map(|p| format!(" ({})", p.display())).unwrap_or_default(),
                supported: spec
                    .supported
                    .iter()
                    .map(|f| f.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
    };
    if files.is_empty() {
        let f = check(format.unwrap_or(spec.stdout), None)?;
        return Ok(vec![Output {
            path: None,
            format: f,
        }]);
    }
    files
        .iter()
        .map(|p| {
            let f = match (Format::from_path(p), format) {
                (Some(e), Some(asked)) if e != asked => {
                    return Err(OutputError::Mismatch {
                        path: p.display().to_string(),
                        ext: p
                            .extension()
                            .map(|e| e.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                        from_ext: e,
                        asked,
                    })
                }
                (Some(e), _) => e,
                (None, Some(asked)) => asked,
                (None, None) => spec.file,
            };
            Ok(Output {
                path: Some(p.clone()),
                format: check(f, Some(p))?,
            })
        })
        .collect()
}

/// `outputs` plus a text report on stdout when no output is a report
/// (`refs -o refs.svg` still prints its suspects).
pub fn with_stdout_report(mut outputs: Vec<Output>, text: Format) -> Vec<Output> {
    if outputs.iter().all(|o| !o.format.is_report()) {
        outputs.push(Output {
            path: None,
            format: text,
        });
    }
    outputs
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: Formats = Formats {
        command: "objs",
        supported: &[Format::Text, Format::Json, Format::Pprof, Format::Svg],
        stdout: Format::Text,
        file: Format::Json,
    };

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn extension_decides_and_format_overrides_only_the_silent_ones() {
        for (name, f) in [
            ("a.json", Some(Format::Json)),
            ("dir/x.SVG", Some(Format::Svg)),
            ("heap.pb.gz", Some(Format::Pprof)),
            ("r.md", Some(Format::Markdown)),
            ("s.folded", Some(Format::Folded)),
            ("t.txt", Some(Format::Text)),
            ("noext", None),
            ("x.gz", None),
        ] {
            assert_eq!(Format::from_path(&p(name)), f, "{name}");
        }
        let o = plan(&SPEC, &[p("a.svg"), p("b.json"), p("c")], None).unwrap();
        let got: Vec<Format> = o.iter().map(|o| o.format).collect();
        assert_eq!(got, [Format::Svg, Format::Json, Format::Json]);
        let o = plan(&SPEC, &[p("c")], Some(Format::Pprof)).unwrap();
        assert_eq!(o[0].format, Format::Pprof);
        assert_eq!(plan(&SPEC, &[], None).unwrap()[0].path, None);
        assert_eq!(
            plan(&SPEC, &[], Some(Format::Json)).unwrap()[0].format,
            Format::Json
        );
    }

    #[test]
    fn mismatches_and_unsupported_are_refused() {
        let e = plan(&SPEC, &[p("x.svg")], Some(Format::Json)).unwrap_err();
        assert!(matches!(e, OutputError::Mismatch { .. }), "{e}");
        assert!(e.to_string().contains("x.svg"), "{e}");
        let e = plan(&SPEC, &[p("x.md")], None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "objs cannot write markdown (x.md): it writes text, json, pprof, svg"
        );
        assert!(plan(&SPEC, &[], Some(Format::Csv)).is_err());
    }

    #[test]
    fn stdout_report_added_only_when_needed() {
        let svg = plan(&SPEC, &[p("a.svg")], None).unwrap();
        assert_eq!(with_stdout_report(svg, Format::Text).len(), 2);
        let json = plan(&SPEC, &[p("a.svg"), p("a.json")], None).unwrap();
        assert_eq!(with_stdout_report(json, Format::Text).len(), 2);
    }
}
