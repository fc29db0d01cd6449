//! Trends of a memory series over time (`ljleak watch`): a least-squares
//! growth slope with a 95% confidence band, and a verdict with its evidence.
//!
//! Verdicts:
//! - **stable**: the fitted change over the window is within noise — the
//!   band includes zero, or the fitted growth is under 1% of the mean level
//!   (the GC's sawtooth is larger than that on any busy VM).
//! - **growing**: the slope is positive and does not decay: the second half
//!   of the window grows at least a third as fast as the first half.
//! - **saturating**: positive overall, but the second half grows at less
//!   than a third of the first half's rate (a cache filling up).
//! - **shrinking**: the slope is negative beyond noise.

use serde::Serialize;

/// A least-squares line `y = intercept + slope * x`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Fit {
    /// Units of y per unit of x.
    pub slope: f64,
    /// y at x = 0.
    pub intercept: f64,
    /// Half width of the 95% confidence interval of the slope.
    pub slope_ci95: f64,
    /// Points used.
    pub n: usize,
}

/// Two-sided 95% Student t quantiles for 1..=30 degrees of freedom.
const T95: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
    2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
    2.052, 2.048, 2.045, 2.042,
];

fn t95(df: usize) -> f64 {
    T95.get(df.wrapping_sub(1)).copied().unwrap_or(1.96)
}

/// Fit a line through `pts` (x, y); None with fewer than 2 distinct x.
pub fn fit(pts: &[(f64, f64)]) -> Option<Fit> {
    let n = pts.len();
    if n < 2 {
        return None;
    }
    let nf = n as f64;
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / nf;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / nf;
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let slope = sxy / sxx;
    let intercept = my - slope * mx;
    let slope_ci95 = if n > 2 {
        let sse: f64 = pts
            .iter()
            .map(|p| (p.1 - intercept - slope * p.0).powi(2))
            .sum();
        t95(n - 2) * (sse / (nf - 2.0) / sxx).sqrt()
    } else {
        f64::INFINITY
    };
    Some(Fit {
        slope,
        intercept,
        slope_ci95,
        n,
    })
}

/// What the series does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Leak-like: steady growth.
    Growing,
    /// Growth that slows down (a cache filling up).
    Saturating,
    /// No growth beyond noise.
    Stable,
    /// Going down.
    Shrinking,
    /// Too few samples to say.
    Unknown,
}

/// A verdict and the numbers behind it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trend {
    /// The verdict.
    pub verdict: Verdict,
    /// Fit over the whole window (x in minutes, y in bytes).
    pub fit: Option<Fit>,
    /// Slope of the first half, bytes/min.
    pub first_half: Option<f64>,
    /// Slope of the second half, bytes/min.
    pub second_half: Option<f64>,
    /// Fitted change over the window, bytes.
    pub fitted_change: f64,
    /// Mean level, bytes.
    pub mean: f64,
    /// One sentence of evidence.
    pub evidence: String,
}

/// Classify series `pts` of (minutes, bytes).
pub fn analyze(pts: &[(f64, f64)]) -> Trend {
    analyze_per(pts, "min")
}

/// Classify series `pts` of (x, bytes) where x counts `per` (`min`,
/// `request`): the slope is bytes per `per`.
pub fn analyze_per(pts: &[(f64, f64)], per: &str) -> Trend {
    let rate = |v: f64| crate::units::rate(v, per);
    let mean = if pts.is_empty() {
        0.0
    } else {
        pts.iter().map(|p| p.1).sum::<f64>() / pts.len() as f64
    };
    let unknown = |why: &str| Trend {
        verdict: Verdict::Unknown,
        fit: None,
        first_half: None,
        second_half: None,
        fitted_change: 0.0,
        mean,
        evidence: why.into(),
    };
    if pts.len() < 4 {
        return unknown("fewer than 4 samples: take more (--count)");
    }
    let Some(f) = fit(pts) else {
        return unknown("all samples at the same time");
    };
    let span = pts[pts.len() - 1].0 - pts[0].0;
    let change = f.slope * span;
    let half = pts.len() / 2;
    // The halves share the middle sample so both have a slope with 4 points.
    let h1 = fit(&pts[..=half]).map(|f| f.slope);
    let h2 = fit(&pts[half..]).map(|f| f.slope);
    let band_has_zero = f.slope.abs() <= f.slope_ci95;
    let small = change.abs() < 0.01 * mean.max(1.0);
    let span_text = if per == "min" {
        format!("{span:.1} min")
    } else {
        format!("{span:.0} {per}s")
    };
    let (verdict, evidence) = if band_has_zero || small {
        (
            Verdict::Stable,
            format!(
                "fitted change {} over {span_text} ({:+.2}% of the mean {}); 95% band of the slope {}",
                crate::units::signed_bytes(change as i64),
                change * 100.0 / mean.max(1.0),
                crate::units::bytes(mean as u64),
                if band_has_zero { "includes 0" } else { "excludes 0 but the change is under 1%" }
            ),
        )
    } else if f.slope < 0.0 {
        (
            Verdict::Shrinking,
            format!(
                "slope {} ± {}",
                rate(f.slope),
                crate::units::bytes_f(f.slope_ci95)
            ),
        )
    } else {
        let (a, b) = (h1.unwrap_or(f.slope), h2.unwrap_or(f.slope));
        if a > 0.0 && b < a / 3.0 {
            (
                Verdict::Saturating,
                format!(
                    "growth slows: {} in the first half, {} in the second (< 1/3)",
                    rate(a),
                    rate(b)
                ),
            )
        } else {
            (
                Verdict::Growing,
                format!(
                    "steady growth: {} ± {} overall; halves {} and {}",
                    rate(f.slope),
                    crate::units::bytes_f(f.slope_ci95),
                    rate(a),
                    rate(b)
                ),
            )
        }
    };
    Trend {
        verdict,
        fit: Some(f),
        first_half: h1,
        second_half: h2,
        fitted_change: change,
        mean,
        evidence,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(f: impl Fn(f64) -> f64) -> Vec<(f64, f64)> {
        (0..20)
            .map(|i| (i as f64 / 10.0, f(i as f64 / 10.0)))
            .collect()
    }

    #[test]
    fn exact_line() {
        let f = fit(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]).unwrap();
        assert!((f.slope - 2.0).abs() < 1e-12 && (f.intercept - 1.0).abs() < 1e-12);
        assert!(f.slope_ci95.abs() < 1e-9);
    }

    #[test]
    fn verdicts() {
        let wobble = |x: f64| {
            if (x * 10.0) as i64 % 2 == 0 {
                1000.0
            } else {
                -1000.0
            }
        };
        assert_eq!(
            analyze(&series(|x| 1e6 + 1e5 * x + wobble(x))).verdict,
            Verdict::Growing
        );
        assert_eq!(
            analyze(&series(|x| 1e6 + 2e5 * x.min(0.7) + wobble(x))).verdict,
            Verdict::Saturating
        );
        assert_eq!(
            analyze(&series(|x| 1e6 + wobble(x))).verdict,
            Verdict::Stable
        );
        assert_eq!(
            analyze(&series(|x| 1e6 - 1e5 * x)).verdict,
            Verdict::Shrinking
        );
        assert_eq!(analyze(&series(|_| 1.0)[..3]).verdict, Verdict::Unknown);
    }
}
