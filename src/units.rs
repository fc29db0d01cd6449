//! Sizes and durations: one parser for every command-line option that takes
//! them, and one way to print them for people.
//!
//! Parsing (use as clap `value_parser`s):
//! - [`parse_size`]: `4096`, `4K`, `4KiB`, `10KB`, `1.5MiB`, `1MB`, `2G`.
//!   `KB`/`MB`/`GB` are powers of 1000 (as in `--fail-if`), `K`/`M`/`G`
//!   and `KiB`/`MiB`/`GiB` powers of 1024 (as `dd`, `ls -h` and
//!   `ulimit` read them); a plain number is bytes. Units are not
//!   case-sensitive except that `b` alone is bytes.
//! - [`parse_duration`]: `5s`, `500ms`, `1m`, `1.5s`, `2h`, `250us`; a
//!   plain number is seconds (what `--time 10` always meant).
//!
//! Printing (text output only; JSON keeps exact integers):
//! [`bytes`] (`827.3 KiB`), [`signed_bytes`] (`+1.2 MiB`), [`rate`]
//! (`+9.0 MiB/min`), [`duration`] (`250 ms`, `5.0 s`).
//!
//! Not here: `--fail-if` values, which carry a sign and `%`
//! ([`crate::compare::gate`]).

use std::time::Duration;

/// `(suffix, multiplier)`, longest suffixes first so `KiB` wins over `B`.
const SIZE_UNITS: [(&str, f64); 13] = [
    ("kib", 1024.0),
    ("mib", 1048576.0),
    ("gib", 1073741824.0),
    ("tib", 1099511627776.0),
    ("kb", 1e3),
    ("mb", 1e6),
    ("gb", 1e9),
    ("tb", 1e12),
    ("k", 1024.0),
    ("m", 1048576.0),
    ("g", 1073741824.0),
    ("t", 1099511627776.0),
    ("b", 1.0),
];

/// Parse a size in bytes (see the module docs for the spellings).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || {
        format!("`{s}` is not a size: use bytes or a unit, e.g. 4096, 4K, 4KiB, 10KB, 1MB, 1.5MiB")
    };
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let mult = if unit.is_empty() {
        1.0
    } else {
        SIZE_UNITS
            .iter()
            .find(|(u, _)| *u == unit)
            .map(|x| x.1)
            .ok_or_else(bad)?
    };
    let v: f64 = num.parse().map_err(|_| bad())?;
    let b = v * mult;
    if !b.is_finite() || b < 0.0 {
        return Err(bad());
    }
    if b >= u64::MAX as f64 {
        return Err(format!(
            "`{s}` is too large: sizes go up to 16 EiB (2^64 - 1 bytes)"
        ));
    }
    if unit.is_empty() && num.contains('.') {
        return Err(format!("`{s}` is not a whole number of bytes"));
    }
    Ok(b.round() as u64)
}

/// Parse a duration (see the module docs for the spellings).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("`{s}` is not a duration: use e.g. 5s, 500ms, 1m, 1.5s or 2h");
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    let v: f64 = num.parse().map_err(|_| bad())?;
    let secs = v * mult;
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// [`parse_duration`] that refuses zero (windows, intervals).
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("`{s}` must be longer than zero"));
    }
    Ok(d)
}

/// A sampling interval: [`parse_duration`], at least 10 ms (a shorter one
/// would measure ljleak itself).
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(10) {
        return Err(format!(
            "`{s}` is too short: the interval must be at least 10ms"
        ));
    }
    Ok(d)
}

/// [`parse_size`] that refuses zero.
pub fn parse_positive_size(s: &str) -> Result<u64, String> {
    let b = parse_size(s)?;
    if b == 0 {
        return Err(format!("`{s}` must be at least 1 byte"));
    }
    Ok(b)
}

/// Bytes with a binary unit: `512 B`, `2.0 KiB`, `827.3 KiB`, `1.4 GiB`.
pub fn bytes(b: u64) -> String {
    scaled(b as f64, "B")
}

/// Like [`bytes`] for a float (estimates, per-request figures).
pub fn bytes_f(b: f64) -> String {
    if b.abs() < 1024.0 {
        return format!("{b:.1} B");
    }
    scaled(b, "B")
}

/// A signed change: `+1.2 MiB`, `-512 B`, `+0 B`.
pub fn signed_bytes(d: i64) -> String {
    let sign = if d < 0 { "-" } else { "+" };
    format!("{sign}{}", bytes(d.unsigned_abs()))
}

/// A signed rate per `per` (`min`, `request`): `+9.0 MiB/min`.
pub fn rate(v: f64, per: &str) -> String {
    let sign = if v < 0.0 { "-" } else { "+" };
    format!("{sign}{}/{per}", bytes_f(v.abs()))
}

fn scaled(v: f64, unit: &str) -> String {
    const P: [&str; 5] = ["", "Ki", "Mi", "Gi", "Ti"];
    let mut x = v.abs();
    let mut i = 0;
    while x >= 1024.0 && i + 1 < P.len() {
        x /= 1024.0;
        i += 1;
    }
    let sign = if v < 0.0 { "-" } else { "" };
    if i == 0 {
        format!("{sign}{} {unit}", x.round() as u64)
    } else {
        format!("{sign}{x:.1} {}{unit}", P[i])
    }
}

/// A duration for people: `850 us`, `250 ms`, `5.0 s`, `2.5 min`.
pub fn duration(d: Duration) -> String {
    let us = d.as_micros();
    if us < 1000 {
        format!("{us} us")
    } else if us < 1_000_000 {
        format!("{} ms", us / 1000)
    } else if d.as_secs() < 120 {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{:.1} min", d.as_secs_f64() / 60.0)
    }
}

/// [`duration`] of a number of microseconds.
pub fn micros(us: u64) -> String {
    duration(Duration::from_micros(us))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_every_spelling() {
        for (s, want) in [
            ("4096", 4096),
            ("4K", 4096),
            ("4k", 4096),
            ("4KiB", 4096),
            ("10KB", 10_000),
            ("10kB", 10_000),
            ("1MB", 1_000_000),
            ("1M", 1 << 20),
            ("1.5MiB", 3 << 19),
            ("2G", 2 << 30),
            ("2GB", 2_000_000_000),
            ("7B", 7),
            (" 8 KiB ", 8192),
        ] {
            assert_eq!(parse_size(s), Ok(want), "{s}");
        }
        for s in ["", "K", "1.5", "-1K", "1XB", "1 parsec", "1e3"] {
            assert!(parse_size(s).is_err(), "{s}");
        }
        assert!(parse_positive_size("0").is_err());
        assert_eq!(parse_size("18446744073709549568"), Ok(18446744073709549568));
        for s in [
            "18446744073709551616",
            "20000000000T",
            "99999999999999999999999",
        ] {
            assert!(parse_size(s).unwrap_err().contains("too large"), "{s}");
        }
    }

    #[test]
    fn durations_in_every_spelling() {
        for (s, ms) in [
            ("5s", 5000),
            ("5", 5000),
            ("500ms", 500),
            ("1m", 60_000),
            ("1.5s", 1500),
            ("2h", 7_200_000),
            ("0", 0),
        ] {
            assert_eq!(parse_duration(s), Ok(Duration::from_millis(ms)), "{s}");
        }
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        for s in ["", "s", "-1s", "5 parsecs", "1d", "nan"] {
            assert!(parse_duration(s).is_err(), "{s}");
        }
        assert!(parse_positive_duration("0s").is_err());
        assert_eq!(parse_interval("200ms"), Ok(Duration::from_millis(200)));
        assert!(parse_interval("1ms").is_err() && parse_interval("x").is_err());
    }

    #[test]
    fn human_forms() {
        assert_eq!(bytes(10), "10 B");
        assert_eq!(bytes(2048), "2.0 KiB");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(signed_bytes(-1536), "-1.5 KiB");
        assert_eq!(signed_bytes(0), "+0 B");
        assert_eq!(rate(9442150278.0, "min"), "+8.8 GiB/min");
        assert_eq!(rate(-12.5, "request"), "-12.5 B/request");
        assert_eq!(duration(Duration::from_micros(850)), "850 us");
        assert_eq!(duration(Duration::from_millis(250)), "250 ms");
        assert_eq!(duration(Duration::from_millis(5000)), "5.0 s");
    }
}
