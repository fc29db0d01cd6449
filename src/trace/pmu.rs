//! The kernel's `uprobe` PMU as sysfs describes it: its perf type number and
//! which `config` bit asks for a return probe.

use std::path::{Path, PathBuf};

use super::TraceError;

/// Where the kernel lists dynamic PMUs.
pub const DEFAULT_PMU_DIR: &str = "/sys/bus/event_source/devices/uprobe";

/// What `perf_event_open` needs to create uprobes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UprobePmu {
    /// `perf_event_attr.type`.
    pub pmu_type: u32,
    /// Bit of `config` that makes a return probe.
    pub retprobe_bit: u32,
}

impl UprobePmu {
    /// Read the PMU description under `dir` (normally [`DEFAULT_PMU_DIR`]).
    pub fn read(dir: &Path) -> Result<UprobePmu, TraceError> {
        let missing = || TraceError::NoUprobePmu(dir.to_path_buf());
        let ty = std::fs::read_to_string(dir.join("type")).map_err(|_| missing())?;
        let pmu_type = ty.trim().parse().map_err(|_| missing())?;
        let fmt = std::fs::read_to_string(dir.join("format/retprobe")).map_err(|_| missing())?;
        let retprobe_bit = parse_format_bit(&fmt).ok_or_else(missing)?;
        Ok(UprobePmu {
            pmu_type,
            retprobe_bit,
        })
    }

    /// The default location.
    pub fn default_dir() -> PathBuf {
        PathBuf::from(DEFAULT_PMU_DIR)
    }
}

/// Parse a one-bit sysfs format spec like `config:0`.
fn parse_format_bit(s: &str) -> Option<u32> {
    let bits = s.trim().strip_prefix("config:")?;
    if bits.contains('-') {
        return None;
    }
    bits.parse().ok().filter(|b| *b < 64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_bits() {
        assert_eq!(parse_format_bit("config:0\n"), Some(0));
        assert_eq!(parse_format_bit("config:32-63"), None);
        assert_eq!(parse_format_bit("config1:0"), None);
    }

    #[test]
    fn missing_dir_is_a_clear_error() {
        let e = UprobePmu::read(Path::new("/nonexistent/uprobe")).unwrap_err();
        assert!(e.to_string().contains("uprobe PMU"), "{e}");
    }
}
