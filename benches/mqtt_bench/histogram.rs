//! A latency histogram with log-linear buckets: 32 buckets per power of two, so a percentile is
//! within about 3% of the true value, in a fixed 1,920-slot table whatever the range.
//!
//! Owns: recording, merging and percentiles. Must not: read clocks or know what it measures
//! (values are plain nanoseconds to it).

/// Buckets per power of two, as a bit count: 2^5 = 32.
const SUB_BITS: u32 = 5;
const SUB: u64 = 1 << SUB_BITS;
const SLOTS: usize = ((64 - SUB_BITS + 1) as usize) * SUB as usize;

#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; SLOTS],
            total: 0,
            max: 0,
        }
    }
}

/// Values below 32 have a slot each; above, the top 5 bits under the leading one pick the slot.
fn slot(value: u64) -> usize {
    if value < SUB {
        return value as usize;
    }
    let exponent = 63 - value.leading_zeros();
    let shift = exponent - SUB_BITS;
    let mantissa = ((value >> shift) & (SUB - 1)) as usize;
    (shift as usize + 1) * SUB as usize + mantissa
}

/// The smallest value that lands in `slot`.
fn lower_bound(slot: usize) -> u64 {
    let sub = SUB as usize;
    if slot < sub {
        return slot as u64;
    }
    let shift = (slot / sub - 1) as u32;
    (SUB + (slot % sub) as u64) << shift
}

/// The middle of a slot: what a percentile reports.
fn midpoint(slot: usize) -> u64 {
    let low = lower_bound(slot);
    let high = if slot + 1 < SLOTS {
        lower_bound(slot + 1)
    } else {
        u64::MAX
    };
    low + (high - low) / 2
}

impl Histogram {
    pub fn record(&mut self, value: u64) {
        self.counts[slot(value)] += 1;
        self.total += 1;
        self.max = self.max.max(value);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0.5 for the median), or 0 when empty. Never above `max`.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        if rank >= self.total {
            return self.max;
        }
        let mut seen = 0;
        for (slot, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return midpoint(slot).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_ordered_and_bounds_round_trip() {
        let mut last = 0;
        for value in
            (0..20).chain((5..62).flat_map(|e| [1u64 << e, (1u64 << e) + 7, (3u64 << e) / 2]))
        {
            let s = slot(value);
            assert!(s >= last || value < 20, "slot order at {value}");
            assert!(lower_bound(s) <= value, "{value} below its slot");
            if s + 1 < SLOTS {
                assert!(lower_bound(s + 1) > value, "{value} above its slot");
            }
            last = s;
        }
        assert_eq!(slot(u64::MAX), SLOTS - 1);
    }

    #[test]
    fn quantiles_are_within_the_bucket_error() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v * 1_000);
        }
        for (q, want) in [
            (0.5, 50_000_000.0),
            (0.99, 99_000_000.0),
            (0.999, 99_900_000.0),
        ] {
            let got = h.quantile(q) as f64;
            assert!((got - want).abs() / want < 0.04, "q{q}: {got} vs {want}");
        }
        assert_eq!(h.max(), 100_000_000);
        assert_eq!(h.quantile(1.0), 100_000_000);
    }

    #[test]
    fn merge_adds_counts() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        a.record(10);
        b.record(1_000_000);
        a.merge(&b);
        assert_eq!(a.count(), 2);
        assert_eq!(a.max(), 1_000_000);
        assert_eq!(a.quantile(0.5), 10);
        assert_eq!(Histogram::default().quantile(0.99), 0);
    }
}
