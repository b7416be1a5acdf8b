//! Storage commit statistics for `/metrics`: how long each commit (one write transaction and
//! its fsync) took, as a Prometheus histogram, and how many failed.
//!
//! Owns: `CommitStats`, written by the storage thread once per commit (a few relaxed atomic
//! additions) and read by the metrics listener. Must not: know about the store itself; it is
//! only told durations and failures.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the histogram's buckets, in seconds (`+Inf` is implied).
pub const COMMIT_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Default)]
pub struct CommitStats {
    /// Persistence is on: the metrics are exported.
    enabled: AtomicBool,
    /// Commits per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; COMMIT_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
    failed: AtomicU64,
}

/// A snapshot for the exposition.
pub struct CommitSnapshot {
    /// Cumulative counts per bucket of `COMMIT_BUCKETS`, then `+Inf` (= `count`).
    pub cumulative: [u64; COMMIT_BUCKETS.len() + 1],
    pub sum_seconds: f64,
    pub count: u64,
    pub failed: u64,
}

impl CommitStats {
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// A commit that succeeded after `took`.
    pub fn committed(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = COMMIT_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(COMMIT_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// A commit attempt that failed (a full disk, an I/O error).
    pub fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> CommitSnapshot {
        let mut cumulative = [0; COMMIT_BUCKETS.len() + 1];
        let mut running = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            running += bucket.load(Ordering::Relaxed);
            cumulative[i] = running;
        }
        CommitSnapshot {
            cumulative,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            // The buckets' total, so that `+Inf` and `_count` agree whatever a scrape races.
            count: running,
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_land_in_cumulative_buckets() {
        let stats = CommitStats::default();
        stats.committed(Duration::from_micros(300));
        stats.committed(Duration::from_millis(3));
        stats.committed(Duration::from_secs(5));
        stats.failed();
        let s = stats.snapshot();
        assert_eq!(s.cumulative[0], 1, "≤ 0.5 ms");
        assert_eq!(s.cumulative[2], 1, "≤ 2.5 ms");
        assert_eq!(s.cumulative[3], 2, "≤ 5 ms");
        assert_eq!(s.cumulative[COMMIT_BUCKETS.len() - 1], 2, "≤ 2.5 s");
        assert_eq!(s.cumulative[COMMIT_BUCKETS.len()], 3, "+Inf");
        assert_eq!(s.count, 3);
        assert_eq!(s.failed, 1);
        assert!((s.sum_seconds - 5.0033).abs() < 1e-6);
    }
}
