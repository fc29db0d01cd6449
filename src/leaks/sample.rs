//! Allocation sampling for `--sample-bytes N`, as tcmalloc and jemalloc
//! profile heaps: sample points fall on the stream of allocated bytes as a
//! Poisson process with mean distance `N` (the distance to the next point
//! is drawn from an exponential distribution), and an allocation is sampled
//! when at least one point falls inside it. An allocation of `s` bytes is
//! then sampled with probability `p = 1 - exp(-s/N)`, and weighting it by
//! `s / p` bytes (and `1 / p` allocations) makes every sum over sampled
//! allocations an unbiased estimate of the sum over all of them.
//!
//! What sampling does not save: the uprobe still fires on every call (the
//! kernel cannot skip it), so it only saves ljleak's own work per
//! unsampled allocation (keeping its stack, tracking its pointer).

/// Figures for the summary when sampling.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SamplingSummary {
    /// Mean bytes between samples (`--sample-bytes`).
    pub sample_bytes: u64,
    /// Allocations sampled (tracked with a stack).
    pub sampled: u64,
    /// Sampled allocations still outstanding at the end.
    pub outstanding_sampled: u64,
    /// Half-width of the 95% confidence interval of the outstanding bytes:
    /// 1.96 standard deviations of the Horvitz-Thompson estimate, whose
    /// variance is the sum over sampled allocations of `w (w - s)` (size
    /// `s`, weight `w = s / p`).
    #[serde(default)]
    pub ci95_bytes: u64,
}

/// The sampler: a byte countdown to the next sample point.
#[derive(Debug, Clone)]
pub struct Sampler {
    mean: f64,
    rng: u64,
    until: f64,
    /// Allocations sampled so far.
    pub sampled: u64,
}

impl Sampler {
    /// A sampler with mean distance `mean_bytes` (> 0) between sample
    /// points; `seed` fixes the random sequence.
    pub fn new(mean_bytes: u64, seed: u64) -> Sampler {
        let mut s = Sampler {
            mean: mean_bytes.max(1) as f64,
            rng: seed,
            until: 0.0,
            sampled: 0,
        };
        s.until = s.draw();
        s
    }

    /// splitmix64: small, fast, and good enough for sample spacing.
    fn next_u64(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// An exponential variate with the sampler's mean.
    fn draw(&mut self) -> f64 {
        // Uniform in (0, 1]: 53 random bits, never 0 (ln 0 is -inf).
        let u = ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
        -u.ln() * self.mean
    }

    /// The bytes an allocation of `size` stands for when it is sampled.
    pub fn weight(&self, size: u64) -> f64 {
        let p = -(-(size as f64) / self.mean).exp_m1();
        if p > 0.0 {
            size as f64 / p
        } else {
            0.0
        }
    }

    /// Whether an allocation of `size` bytes is sampled; if so, the bytes it
    /// stands for. Zero-byte allocations are never sampled (they hold no
    /// memory).
    pub fn sample(&mut self, size: u64) -> Option<f64> {
        if size == 0 {
            return None;
        }
        self.until -= size as f64;
        if self.until > 0.0 {
            return None;
        }
        // The process is memoryless: restarting the countdown at the end of
        // the sampled allocation keeps the points Poisson.
        self.until = self.draw();
        self.sampled += 1;
        Some(self.weight(size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes spread over five orders of magnitude, from a fixed sequence.
    fn sizes(n: usize) -> Vec<u64> {
        let mut r = Sampler::new(1, 7);
        (0..n)
            .map(|_| {
                let v = r.next_u64();
                // Mostly small, some large, as real heaps.
                match v % 10 {
                    0 => 16 + v % 200_000,
                    1..=3 => 16 + v % 4096,
                    _ => 8 + v % 128,
                }
            })
            .collect()
    }

    #[test]
    fn weights_sum_to_true_bytes() {
        let all = sizes(400_000);
        let truth: u64 = all.iter().sum();
        for mean in [4096u64, 65536, 1 << 20] {
            let mut s = Sampler::new(mean, 42);
            let est: f64 = all.iter().filter_map(|&z| s.sample(z)).sum();
            let err = (est - truth as f64).abs() / truth as f64;
            assert!(
                err < 0.03,
                "mean {mean}: estimate {est:.0} vs {truth} ({:.1}%), {} sampled",
                err * 100.0,
                s.sampled
            );
            // Sampling must actually drop most small allocations.
            assert!(s.sampled < all.len() as u64 / 2, "{} sampled", s.sampled);
        }
    }

    #[test]
    fn subsets_are_unbiased_too() {
        // A leak is a subset of the allocations (every 7th here): its
        // estimate must be right on its own, not only the grand total.
        let all = sizes(400_000);
        let mut s = Sampler::new(65536, 3);
        let (mut truth, mut est) = (0u64, 0f64);
        for (i, &z) in all.iter().enumerate() {
            let w = s.sample(z);
            if i % 7 == 0 {
                truth += z;
                est += w.unwrap_or(0.0);
            }
        }
        let err = (est - truth as f64).abs() / truth as f64;
        assert!(err < 0.05, "estimate {est:.0} vs {truth}");
    }

    #[test]
    fn large_allocations_always_sampled_at_their_size() {
        let mut s = Sampler::new(1024, 1);
        let w = s.sample(1 << 30).expect("a 1 GiB allocation is sampled");
        assert!((w - (1u64 << 30) as f64).abs() < 1.0, "{w}");
        assert_eq!(s.sample(0), None);
        // A small one stands for about the mean.
        assert!((s.weight(1) - 1024.0).abs() < 1.0);
    }
}
