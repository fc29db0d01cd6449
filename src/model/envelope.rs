//! The self-describing part of a snapshot file: schema version, when and
//! where it was taken, which binary (with its GNU build-id) and which ljleak
//! and command line produced it. `ljleak diff` reads these back to refuse
//! comparing things that are not comparable and to label its output.
//!
//! A snapshot is the same document whether printed with `--format json` or
//! written with `-o FILE`: the envelope fields sit at the top level of the
//! report, each with a serde default so files written before they existed
//! still parse (as schema 1).

use std::time::{SystemTime, UNIX_EPOCH};

/// Schema version written into new snapshots. Bump it when a field changes
/// meaning or is removed (adding fields with defaults does not need a bump).
pub const SCHEMA_VERSION: u32 = 1;

/// Serde default for files written before the schema field existed.
pub fn schema_v1() -> u32 {
    1
}

/// Envelope values for a snapshot taken now of `pid` running `exe`.
/// Reports other than the census embed it with `#[serde(flatten)]`, so the
/// fields sit at the top level of the file as in a census snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Stamp {
    /// UTC time, RFC 3339 with milliseconds.
    pub created: String,
    /// Milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// This machine's host name.
    pub host: String,
    /// GNU build-id of the target's executable, hex.
    pub exe_build_id: Option<String>,
    /// `CARGO_PKG_VERSION` of this ljleak.
    pub ljleak_version: String,
    /// This process's argv.
    pub command_line: Vec<String>,
}

impl Stamp {
    /// Stamp for a snapshot of `pid` whose executable is `exe` (a path in
    /// the target's view).
    pub fn now(pid: i32, exe: &str) -> Stamp {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Stamp {
            created: rfc3339_utc(ms),
            created_unix_ms: ms,
            host: hostname(),
            exe_build_id: build_id_hex(pid, exe),
            ljleak_version: env!("CARGO_PKG_VERSION").to_string(),
            command_line: std::env::args().collect(),
        }
    }
}

/// The GNU build-id of `exe` as seen by `pid`, as lowercase hex.
pub fn build_id_hex(pid: i32, exe: &str) -> Option<String> {
    let f = crate::target::elf::ElfFile::open(pid, exe).ok()?;
    let id = f.build_id()?;
    Some(id.iter().map(|b| format!("{b:02x}")).collect())
}

/// This machine's host name (from the kernel, no libc call needed).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Format milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339_utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let sod = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60,
        ms % 1000
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29T12:34:56.789Z (a leap day in a century leap year).
        assert_eq!(rfc3339_utc(951_827_696_789), "2000-02-29T12:34:56.789Z");
        assert_eq!(rfc3339_utc(1_798_761_599_000), "2026-12-31T23:59:59.000Z");
    }
}
