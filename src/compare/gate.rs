//! CI gates for `ljleak diff --fail-if EXPR`.
//!
//! Grammar (spaces are ignored):
//!
//! ```text
//! gate   := METRIC OP VALUE
//! OP     := '>' | '>=' | '<' | '<='
//! VALUE  := ['+' | '-'] NUMBER [UNIT]      NUMBER := digits ['.' digits]
//! UNIT   := '%' | 'B' | 'KB' | 'MB' | 'GB' | 'KiB' | 'MiB' | 'GiB'
//! ```
//!
//! - A signed value (`+10MB`, `-1000`) compares the change B − A.
//! - A `%` value compares the change relative to A: `total>+5%` trips when
//!   B − A > 5% of A (the sign is optional for `%`). When A is 0 any growth
//!   counts as more than any percentage.
//! - An unsigned value without `%` compares B itself: `total>100MB` trips
//!   when B's total exceeds 100 MB.
//! - Units are SI powers of 1000 (`KB`, `MB`, `GB`, as `ls --si` and most CI
//!   dashboards print them) or binary powers of 1024 (`KiB`, `MiB`, `GiB`).
//!   Count metrics take no unit other than `%`.
//! - Comparisons are exact (integer arithmetic): `table.count>+1000` does
//!   not trip at +1000 and trips at +1001; `>=` trips at +1000.
//!
//! Metrics are named by the input kind: for a census `total` (gc.total
//! bytes), `walker_total`, `objects`, `TYPE.count` and `TYPE.bytes` (TYPE is
//! `string`, `table`, `cdata`... as lj-gc-objs names them; `TYPE` alone is
//! bytes) and `dead.count`/`dead.bytes`; for folded stacks `total` (sum of
//! all stack values) and `stacks` (number of distinct stacks).

use serde::Serialize;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
}

/// What a gate compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// B's value.
    Absolute,
    /// B − A.
    Change,
    /// (B − A) / A, in percent.
    Percent,
}

/// A parsed `--fail-if` expression. The threshold is the exact rational
/// `num / den` (in bytes, objects or percent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gate {
    /// The expression as given.
    pub expr: String,
    /// Metric name.
    pub metric: String,
    /// Operator.
    pub op: Op,
    /// What is compared.
    pub mode: Mode,
    /// Threshold numerator.
    pub num: i128,
    /// Threshold denominator (> 0).
    pub den: i128,
    /// A byte unit was given.
    pub has_byte_unit: bool,
}

/// A metric's value in both inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    /// In A.
    pub a: u64,
    /// In B.
    pub b: u64,
    /// Measured in bytes (units allowed) rather than a count.
    pub bytes: bool,
}

/// Something gates can be evaluated on.
pub trait Metrics {
    /// The metric called `name`, if it exists.
    fn metric(&self, name: &str) -> Option<Metric>;
    /// Names to suggest when a metric is unknown.
    fn metric_help(&self) -> &'static str;
}

/// Outcome of one gate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GateResult {
    /// The expression.
    pub expr: String,
    /// Metric in A.
    pub a: u64,
    /// Metric in B.
    pub b: u64,
    /// What was compared, e.g. `+6.25%` or `+1001`.
    pub observed: String,
    /// The condition held: the gate failed the build.
    pub tripped: bool,
}

/// A gate expression that does not parse or names an unknown metric.
#[derive(Debug, thiserror::Error)]
#[error("bad --fail-if `{expr}`: {why} (form: METRIC OP VALUE, e.g. `total>+5%`, `cdata.bytes>+10MB`, `table.count>=+1000`)")]
pub struct GateError {
    /// The expression.
    pub expr: String,
    /// What is wrong.
    pub why: String,
}

impl Gate {
    /// Parse one expression.
    pub fn parse(expr: &str) -> Result<Gate, GateError> {
        let err = |why: &str| GateError {
            expr: expr.into(),
            why: why.into(),
        };
        let s: String = expr.chars().filter(|c| !c.is_whitespace()).collect();
        let pos = s
            .find(['<', '>'])
            .ok_or_else(|| err("no operator (> >= < <=)"))?;
        let metric = s[..pos].to_string();
        if metric.is_empty() {
            return Err(err("no metric before the operator"));
        }
        let rest = &s[pos..];
        let (op, rest) = if let Some(r) = rest.strip_prefix(">=") {
            (Op::Ge, r)
        } else if let Some(r) = rest.strip_prefix("<=") {
            (Op::Le, r)
        } else if let Some(r) = rest.strip_prefix('>') {
            (Op::Gt, r)
        } else {
            (Op::Lt, &rest[1..])
        };
        let (sign, rest) = match rest.as_bytes().first() {
            Some(b'+') => (Some(1i128), &rest[1..]),
            Some(b'-') => (Some(-1i128), &rest[1..]),
            _ => (None, rest),
        };
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, unit) = rest.split_at(split);
        let (mut num, den) = decimal(number).ok_or_else(|| err("the value is not a number"))?;
        let (mult, mode, has_byte_unit) = match unit {
            "%" => (1, Mode::Percent, false),
            "" | "B" => (
                1,
                if sign.is_some() {
                    Mode::Change
                } else {
                    Mode::Absolute
                },
                unit == "B",
            ),
            u => {
                let m = match u {
                    "KB" | "kB" => 1_000,
                    "MB" => 1_000_000,
                    "GB" => 1_000_000_000,
                    "KiB" => 1 << 10,
                    "MiB" => 1 << 20,
                    "GiB" => 1 << 30,
                    _ => {
                        return Err(err(&format!(
                            "unknown unit `{u}` (use %, B, KB, MB, GB, KiB, MiB or GiB)"
                        )))
                    }
                };
                (
                    m,
                    if sign.is_some() {
                        Mode::Change
                    } else {
                        Mode::Absolute
                    },
                    true,
                )
            }
        };
        num = num * mult * sign.unwrap_or(1);
        Ok(Gate {
            expr: expr.trim().into(),
            metric,
            op,
            mode,
            num,
            den,
            has_byte_unit,
        })
    }

    /// Evaluate on `m`.
    pub fn eval(&self, m: &dyn Metrics) -> Result<GateResult, GateError> {
        let v = m.metric(&self.metric).ok_or_else(|| GateError {
            expr: self.expr.clone(),
            why: format!(
                "unknown metric `{}` (known: {})",
                self.metric,
                m.metric_help()
            ),
        })?;
        if self.has_byte_unit && !v.bytes {
            return Err(GateError {
                expr: self.expr.clone(),
                why: format!(
                    "`{}` is a count: give a plain number or a percentage",
                    self.metric
                ),
            });
        }
        let (a, b) = (v.a as i128, v.b as i128);
        let change = b - a;
        // Compare lhs/1 with num/den exactly: lhs * den OP num (* A for %).
        let (lhs, rhs, observed) = match self.mode {
            Mode::Absolute => (b * self.den, self.num, format!("{b}")),
            Mode::Change => (change * self.den, self.num, format!("{change:+}")),
            Mode::Percent => (
                change * 100 * self.den,
                self.num * a,
                if a == 0 {
                    format!("{change:+} from 0")
                } else {
                    format!("{:+.2}%", change as f64 * 100.0 / a as f64)
                },
            ),
        };
        let tripped = match self.op {
            Op::Gt => lhs > rhs,
            Op::Ge => lhs >= rhs,
            Op::Lt => lhs < rhs,
            Op::Le => lhs <= rhs,
        };
        Ok(GateResult {
            expr: self.expr.clone(),
            a: v.a,
            b: v.b,
            observed,
            tripped,
        })
    }
}

/// `"12.5"` as (125, 10).
fn decimal(s: &str) -> Option<(i128, i128)> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() && frac.is_empty() || frac.len() > 9 || int.len() > 20 || frac.contains('.') {
        return None;
    }
    let digits = |d: &str| -> Option<i128> {
        if d.is_empty() {
            Some(0)
        } else if d.bytes().all(|c| c.is_ascii_digit()) {
            d.parse().ok()
        } else {
            None
        }
    };
    let den = 10i128.pow(frac.len() as u32);
    Some((digits(int)? * den + digits(frac)?, den))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct M(u64, u64);
    impl Metrics for M {
        fn metric(&self, name: &str) -> Option<Metric> {
            match name {
                "total" => Some(Metric {
                    a: self.0,
                    b: self.1,
                    bytes: true,
                }),
                "n" => Some(Metric {
                    a: self.0,
                    b: self.1,
                    bytes: false,
                }),
                _ => None,
            }
        }
        fn metric_help(&self) -> &'static str {
            "total, n"
        }
    }

    fn trips(expr: &str, a: u64, b: u64) -> bool {
        Gate::parse(expr).unwrap().eval(&M(a, b)).unwrap().tripped
    }

    #[test]
    fn thresholds_are_exact_on_both_sides() {
        assert!(!trips("total>+5%", 1000, 1050));
        assert!(trips("total>+5%", 1000, 1051));
        assert!(trips("total>=+5%", 1000, 1050));
        assert!(!trips("total>+10MB", 0, 10_000_000));
        assert!(trips("total>+10MB", 0, 10_000_001));
        assert!(trips("total>+1MiB", 0, 1_048_577));
        assert!(!trips("total>+1.5KB", 0, 1500));
        assert!(trips("total>+1.5KB", 0, 1501));
        assert!(trips("n<-10", 100, 89));
        assert!(!trips("n<-10", 100, 90));
        assert!(trips("total > 2KB", 5000, 2001));
        assert!(!trips("total > 2KB", 5000, 2000));
        assert!(trips("total<=-50%", 1000, 500));
        assert!(!trips("total<-50%", 1000, 500));
        assert!(trips("total>+1%", 0, 1));
    }

    #[test]
    fn bad_expressions_say_why() {
        for e in ["total", ">5", "total>abc", "total>+5XB", "total>1..2"] {
            assert!(Gate::parse(e).is_err(), "{e}");
        }
        let g = Gate::parse("n>+1MB").unwrap();
        assert!(g.eval(&M(0, 0)).unwrap_err().why.contains("count"));
        let g = Gate::parse("nope>1").unwrap();
        assert!(g.eval(&M(0, 0)).unwrap_err().why.contains("unknown metric"));
    }
}
