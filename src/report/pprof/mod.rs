//! pprof output: gzipped `profile.proto` that `go tool pprof`, speedscope,
//! Pyroscope and Parca read as is.
//!
//! Input is a list of stacks (root first) with values. A census becomes
//! stacks `TYPE` / `cdata;C TYPE` / `table;<=N bytes` with sample types
//! `inuse_objects/count` and `inuse_space/bytes`; a folded-stack file
//! becomes one sample type chosen by the caller. A frame written
//! `NAME@FILE:LINE` or `FILE:LINE` gets its file and line in the Function
//! and Line records; anything else is a bare function name. A leak report
//! keeps its frames' structure: Lua frames get their chunk file and line, C
//! frames their module as the file.

pub mod proto;

use std::collections::HashMap;
use std::io::Write;

use prost::Message;

use proto::{Function, Line, Location, Profile, Sample, ValueType};

/// Builds a [`Profile`], interning strings, functions and locations.
#[derive(Debug, Default)]
pub struct Builder {
    p: Profile,
    strings: HashMap<String, i64>,
    locations: HashMap<String, u64>,
}

impl Builder {
    /// A profile whose samples carry one value per `(type, unit)`.
    pub fn new(sample_types: &[(&str, &str)]) -> Builder {
        let mut b = Builder::default();
        b.intern("");
        for (t, u) in sample_types {
            let vt = ValueType {
                r#type: b.intern(t),
                unit: b.intern(u),
            };
            b.p.sample_type.push(vt);
        }
        b
    }

    fn intern(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.p.string_table.len() as i64;
        self.p.string_table.push(s.to_string());
        self.strings.insert(s.to_string(), i);
        i
    }

    fn location(&mut self, frame: &str) -> u64 {
        if let Some(&id) = self.locations.get(frame) {
            return id;
        }
        let (name, file, line) = split_frame(frame);
        self.new_location(frame.to_string(), name, file, line)
    }

    /// A location (and its function) for `name` in `file` at `line`,
    /// remembered under `key`.
    fn new_location(&mut self, key: String, name: &str, file: &str, line: i64) -> u64 {
        let id = self.p.location.len() as u64 + 1;
        let f = Function {
            id,
            name: self.intern(name),
            system_name: self.intern(name),
            filename: self.intern(file),
            start_line: 0,
        };
        self.p.function.push(f);
        self.p.location.push(Location {
            id,
            mapping_id: 0,
            address: 0,
            line: vec![Line {
                function_id: id,
                line,
            }],
            is_folded: false,
        });
        self.locations.insert(key, id);
        id
    }

    /// Add a stack of (name, file, line) frames, root first, with one
    /// value per sample type.
    pub fn add_frames(&mut self, stack: &[(&str, &str, i64)], values: &[i64]) {
        let location_id = stack
            .iter()
            .rev()
            .map(|&(name, file, line)| {
                let key = format!("{name}\0{file}\0{line}");
                match self.locations.get(&key) {
                    Some(&id) => id,
                    None => self.new_location(key, name, file, line),
                }
            })
            .collect();
        self.p.sample.push(Sample {
            location_id,
            value: values.to_vec(),
            label: Vec::new(),
        });
    }

    /// Add a stack (root first) with one value per sample type.
    pub fn add(&mut self, stack: &[String], values: &[i64]) {
        let location_id = stack.iter().rev().map(|f| self.location(f)).collect();
        self.p.sample.push(Sample {
            location_id,
            value: values.to_vec(),
            label: Vec::new(),
        });
    }

    /// Set the collection time (ms since the epoch) and a comment.
    pub fn meta(&mut self, unix_ms: u64, comment: &str) {
        self.p.time_nanos = (unix_ms as i64).saturating_mul(1_000_000);
        let c = self.intern(comment);
        self.p.comment.push(c);
    }

    /// The finished profile.
    pub fn finish(mut self) -> Profile {
        // The last sample type (bytes) is the one viewers show first.
        self.p.default_sample_type = self.p.sample_type.last().map(|v| v.r#type).unwrap_or(0);
        self.p
    }
}

/// `NAME@FILE:LINE` → (NAME, FILE, LINE); `FILE:LINE` → (FILE:LINE, FILE, LINE).
fn split_frame(frame: &str) -> (&str, &str, i64) {
    let (name, loc) = match frame.rsplit_once('@') {
        Some((n, l)) if !n.is_empty() => (n, l),
        _ => (frame, frame),
    };
    match loc.rsplit_once(':') {
        Some((file, line)) if !file.is_empty() => match line.parse::<i64>() {
            Ok(l) => (name, file, l),
            Err(_) => (frame, "", 0),
        },
        _ => (frame, "", 0),
    }
}

/// Serialize and gzip.
pub fn encode(p: &Profile) -> std::io::Result<Vec<u8>> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&p.encode_to_vec())?;
    gz.finish()
}

/// Gunzip (if gzipped) and parse.
pub fn decode(bytes: &[u8]) -> std::io::Result<Profile> {
    let raw = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes), &mut out)?;
        out
    } else {
        bytes.to_vec()
    };
    Profile::decode(raw.as_slice())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// A census as a pprof profile (`inuse_objects/count`, `inuse_space/bytes`).
pub fn from_census(r: &crate::report::census::CensusReport) -> Profile {
    from_censuses(std::slice::from_ref(r), false)
}

/// Several censuses (the workers of one nginx master) in one profile; with
/// `per_process`, each stack starts with a `pid N` frame.
pub fn from_censuses(rs: &[crate::report::census::CensusReport], per_process: bool) -> Profile {
    let mut b = Builder::new(&[("inuse_objects", "count"), ("inuse_space", "bytes")]);
    for r in rs {
        for (mut stack, count, bytes) in crate::report::census::census_stacks(r) {
            if per_process {
                stack.insert(0, format!("pid {}", r.pid));
            }
            b.add(&stack, &[count as i64, bytes as i64]);
        }
    }
    if let Some(r) = rs.first() {
        let pids: Vec<String> = rs.iter().map(|r| r.pid.to_string()).collect();
        b.meta(
            r.created_unix_ms,
            &format!(
                "ljleak census of pid {} ({}) on {}",
                pids.join(", "),
                r.exe,
                r.host
            ),
        );
    }
    b.finish()
}

/// A leak frame as (function name, file, line): a Lua frame `@/path/x.lua:42`
/// is in file `/path/x.lua` (chunk name without its `@`/`=`) at line 42; a C
/// frame is its symbol in its module.
fn leak_frame(f: &crate::report::leaks::SiteFrame) -> (&str, &str, i64) {
    if f.module == "lua" {
        // `~` marks a line that may be stale; a JIT trace frame ends with
        // ` (trace N)` and a whole-chain frame with its function's name
        // (`x.lua:42 (f)`): all name the same file and line.
        let loc = f.name.trim_start_matches('~');
        let loc = match loc.rsplit_once(" (") {
            Some((l, n)) if n.ends_with(')') => l,
            _ => loc,
        };
        if let Some((chunk, line)) = loc.rsplit_once(':') {
            if let Ok(line) = line.parse::<i64>() {
                let file = chunk
                    .strip_prefix('@')
                    .or_else(|| chunk.strip_prefix('='))
                    .unwrap_or(chunk);
                return (&f.name, file, line);
            }
        }
    }
    (&f.name, &f.module, 0)
}

/// A leak report as a profile (`inuse_objects/count`, `inuse_space/bytes`
/// of the allocations outstanding at the end of the window).
pub fn from_leaks(r: &crate::report::leaks::LeakReport) -> Profile {
    let mut b = Builder::new(&[("inuse_objects", "count"), ("inuse_space", "bytes")]);
    for s in &r.sites {
        let frames: Vec<(&str, &str, i64)> = s.frames.iter().rev().map(leak_frame).collect();
        b.add_frames(&frames, &[s.count as i64, s.bytes as i64]);
    }
    b.meta(
        r.stamp.created_unix_ms,
        &format!(
            "ljleak leaks of pid {} ({}) on {}: outstanding after a {:.1} s window",
            r.pid, r.exe, r.stamp.host, r.window_seconds
        ),
    );
    let mut p = b.finish();
    p.duration_nanos = (r.window_seconds * 1e9) as i64;
    p
}

/// Folded stacks as a profile with one sample type.
pub fn from_folded(f: &crate::compare::snapshot::Folded, sample_type: (&str, &str)) -> Profile {
    let mut b = Builder::new(&[sample_type]);
    for (stack, n) in f {
        let frames: Vec<String> = stack.split(';').map(str::to_string).collect();
        b.add(&frames, &[*n as i64]);
    }
    b.finish()
}

/// Lua threads as a Go goroutine profile (`goroutine/count`): one sample
/// per group of threads with the same status and stack, the status as the
/// root frame (as `threads --format folded` does), Lua frames with their
/// chunk and line. With several reports each stack starts with `pid N`.
pub fn from_threads(rs: &[crate::report::threads::ThreadsReport]) -> Profile {
    let mut b = Builder::new(&[("goroutine", "count")]);
    let per_process = rs.len() > 1;
    for r in rs {
        let pid_frame = format!("pid {}", r.pid);
        for g in &r.groups {
            let labels: Vec<String> = g.stack.iter().rev().map(|f| f.label()).collect();
            let mut frames: Vec<(&str, &str, i64)> = Vec::with_capacity(labels.len() + 2);
            if per_process {
                frames.push((&pid_frame, "", 0));
            }
            frames.push((g.status.name(), "", 0));
            for (f, l) in g.stack.iter().rev().zip(&labels) {
                let file = f.source.as_deref().unwrap_or("");
                frames.push((l, file, f.line.map(i64::from).unwrap_or(0)));
            }
            b.add_frames(&frames, &[g.count as i64]);
        }
    }
    if let Some(r) = rs.first() {
        let pids: Vec<String> = rs.iter().map(|r| r.pid.to_string()).collect();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        b.meta(
            now,
            &format!("ljleak Lua threads of pid {} ({})", pids.join(", "), r.exe),
        );
    }
    b.finish()
}

/// Sum of each sample type over all samples.
pub fn totals(p: &Profile) -> Vec<i64> {
    let mut t = vec![0i64; p.sample_type.len()];
    for s in &p.sample {
        for (i, v) in s.value.iter().enumerate() {
            if let Some(x) = t.get_mut(i) {
                *x += v;
            }
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_round_trip() {
        assert_eq!(
            split_frame("handler@app.lua:27"),
            ("handler", "app.lua", 27)
        );
        assert_eq!(split_frame("app.lua:27"), ("app.lua:27", "app.lua", 27));
        assert_eq!(split_frame("cdata"), ("cdata", "", 0));
        let f: crate::compare::snapshot::Folded =
            [("a;b@x.lua:3".to_string(), 5u64), ("a;c".to_string(), 7)]
                .into_iter()
                .collect();
        let p = decode(&encode(&from_folded(&f, ("inuse_space", "bytes"))).unwrap()).unwrap();
        assert_eq!(totals(&p), [12]);
        assert_eq!(p.location.len(), 3, "frame `a` is shared");
        assert_eq!(p.string_table[0], "");
    }

    /// A JIT trace frame keeps its file and line through encode/decode.
    #[test]
    fn jit_frame_round_trip_keeps_file_and_line() {
        use crate::report::leaks::{LeakReport, LeakSite, SiteFrame};
        let fr = |name: &str, module: &str| SiteFrame {
            name: name.into(),
            addr: 0,
            offset: 0,
            size: 0,
            module: module.into(),
        };
        let r = LeakReport {
            sites: vec![LeakSite {
                bytes: 640,
                count: 10,
                origin: crate::leaks::Origin::Libc,
                frames: vec![
                    fr("malloc", "/lib/libc.so.6"),
                    fr("@app.lua:19 (trace 10)", "lua"),
                    fr("main", "/usr/bin/luajit"),
                ],
            }],
            ..Default::default()
        };
        let p = decode(&encode(&from_leaks(&r)).unwrap()).unwrap();
        let s = |i: i64| p.string_table[i as usize].as_str();
        let jit = p
            .function
            .iter()
            .find(|f| s(f.name) == "@app.lua:19 (trace 10)")
            .expect("the trace frame's function");
        assert_eq!(s(jit.filename), "app.lua");
        let loc = p
            .location
            .iter()
            .find(|l| l.line[0].function_id == jit.id)
            .unwrap();
        assert_eq!(loc.line[0].line, 19);
        assert_eq!(totals(&p), [10, 640]);
    }

    #[test]
    fn leak_frames_get_file_and_line() {
        use crate::report::leaks::SiteFrame;
        let fr = |name: &str, module: &str| SiteFrame {
            name: name.into(),
            addr: 0,
            offset: 0,
            size: 0,
            module: module.into(),
        };
        assert_eq!(
            leak_frame(&fr("@/a/x.lua:42", "lua")),
            ("@/a/x.lua:42", "/a/x.lua", 42)
        );
        assert_eq!(leak_frame(&fr("=stdin:3", "lua")), ("=stdin:3", "stdin", 3));
        assert_eq!(
            leak_frame(&fr("@app.lua:19 (trace 10)", "lua")),
            ("@app.lua:19 (trace 10)", "app.lua", 19)
        );
        assert_eq!(
            leak_frame(&fr("~@/a/x.lua:7", "lua")),
            ("~@/a/x.lua:7", "/a/x.lua", 7)
        );
        assert_eq!(
            leak_frame(&fr("@/a/x.lua:42 (new)", "lua")),
            ("@/a/x.lua:42 (new)", "/a/x.lua", 42)
        );
        assert_eq!(leak_frame(&fr("[lua]", "lua")), ("[lua]", "lua", 0));
        assert_eq!(
            leak_frame(&fr("malloc", "/lib/libc.so.6")),
            ("malloc", "/lib/libc.so.6", 0)
        );
    }
}
