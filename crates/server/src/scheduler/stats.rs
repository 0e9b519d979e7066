//! Counters and a compact latency histogram the scheduler keeps about itself.

use serde::Serialize;

/// Sub-buckets per power of two: about 3% relative precision.
const SUB: u32 = 32;

/// A log-linear histogram of microsecond values in fixed memory (2 KiB buckets).
#[derive(Debug, Clone)]
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { buckets: vec![0; 64 * SUB as usize], count: 0, max: 0 }
    }
}

impl Histogram {
    fn index(v: u64) -> usize {
        if v < u64::from(SUB) {
            return v as usize;
        }
        let exp = 63 - v.leading_zeros(); // >= 5
        let shift = exp - SUB.trailing_zeros();
        let mantissa = (v >> shift) as u32 - SUB; // 0..SUB
        ((exp - SUB.trailing_zeros() + 1) * SUB + mantissa) as usize
    }

    fn lower_bound(i: usize) -> u64 {
        let i = i as u32;
        if i < SUB {
            return u64::from(i);
        }
        let group = i / SUB - 1;
        let mantissa = i % SUB;
        u64::from(SUB + mantissa) << group
    }

    /// Records one value.
    pub fn record(&mut self, v: u64) {
        let i = Self::index(v).min(self.buckets.len() - 1);
        self.buckets[i] += 1;
        self.count += 1;
        self.max = self.max.max(v);
    }

    /// Number of values recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The largest value recorded.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0..=1), within the bucket precision; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Self::lower_bound(i).min(self.max);
            }
        }
        self.max
    }
}

/// What the scheduler reports about itself.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    /// Jobs loaded.
    pub jobs: usize,
    /// Jobs with a pending timer.
    pub scheduled: usize,
    /// Runs created by a schedule (on time or backfilled).
    pub fires: u64,
    /// Fires that missed their window (run late, skipped or only counted).
    pub misfires: u64,
    /// Fires skipped by the concurrency policy.
    pub concurrency_skips: u64,
    /// Launches sent to agents.
    pub dispatched: u64,
    /// Retries scheduled.
    pub retries: u64,
    /// Runs finished, by final state.
    pub finished: std::collections::BTreeMap<String, u64>,
    /// Runs active now.
    pub active_runs: usize,
    /// Scheduled → dispatched, in microseconds: p50.
    pub lateness_p50_us: u64,
    /// p99.
    pub lateness_p99_us: u64,
    /// max.
    pub lateness_max_us: u64,
    /// Store transactions that committed fires.
    pub fire_commits: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_within_precision() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v);
        }
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 - 5000.0).abs() / 5000.0 < 0.04, "{p50}");
        let p99 = h.quantile(0.99) as f64;
        assert!((p99 - 9900.0).abs() / 9900.0 < 0.04, "{p99}");
        assert_eq!(h.max(), 10_000);
        assert_eq!(h.quantile(1.0), 10_000.min(h.quantile(1.0)));
        let mut small = Histogram::default();
        small.record(3);
        assert_eq!(small.quantile(0.5), 3);
    }
}
