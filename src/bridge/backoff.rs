//! The wait between a bridge's connection attempts (`restart_timeout`), pure.
//!
//! Owns: the constant delay and mosquitto's "decorrelated jitter" backoff (each wait drawn
//! between the base and three times the previous one, never above the cap). Must not: sleep;
//! the bridge waits on its stop channel for the duration this returns.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::config::RestartTimeout;

pub struct Backoff {
    timeout: RestartTimeout,
    previous: Duration,
    /// xorshift state: jitter needs no more than that.
    seed: u64,
}

impl Backoff {
    pub fn new(timeout: RestartTimeout) -> Backoff {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Backoff::with_seed(timeout, u64::from(nanos) | 1)
    }

    fn with_seed(timeout: RestartTimeout, seed: u64) -> Backoff {
        let mut backoff = Backoff {
            timeout,
            previous: Duration::ZERO,
            seed,
        };
        backoff.reset();
        backoff
    }

    /// After a connection that worked: the next wait starts from the base again.
    pub fn reset(&mut self) {
        self.previous = match self.timeout {
            RestartTimeout::Constant(delay) => delay,
            RestartTimeout::Backoff { base, .. } => base,
        };
    }

    /// How long to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let (base, cap) = match self.timeout {
            RestartTimeout::Constant(delay) => return delay,
            RestartTimeout::Backoff { base, cap } => (base, cap),
        };
        let high = (self.previous * 3).max(base);
        let span = (high - base).as_millis() as u64;
        let jitter = if span == 0 {
            0
        } else {
            self.random() % (span + 1)
        };
        let delay = (base + Duration::from_millis(jitter)).min(cap);
        self.previous = delay;
        delay
    }

    fn random(&mut self) -> u64 {
        let mut x = self.seed;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.seed = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn constant_is_constant() {
        let mut b = Backoff::new(RestartTimeout::Constant(S(7)));
        assert!((0..10).all(|_| b.next_delay() == S(7)));
    }

    #[test]
    fn jitter_stays_between_base_and_cap_and_grows() {
        for seed in [1, 42, 0xdead_beef] {
            let mut b = Backoff::with_seed(
                RestartTimeout::Backoff {
                    base: S(5),
                    cap: S(30),
                },
                seed,
            );
            let delays: Vec<Duration> = (0..50).map(|_| b.next_delay()).collect();
            assert!(
                delays.iter().all(|d| *d >= S(5) && *d <= S(30)),
                "{delays:?}"
            );
            assert!(delays.iter().any(|d| *d > S(10)), "never grew: {delays:?}");
            b.reset();
            assert!(b.next_delay() <= S(15));
        }
    }
}
