//! The router's timers: session expiry and will delay (MQTT 5).
//!
//! Owns: a min-heap of deadlines. Must not: act on a timer: the router checks, when one is
//! due, that it still applies (the `token` names the connection whose end armed it; a later
//! connection makes it stale).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum TimerKind {
    /// The session of `slot` ends unless a connection has attached since.
    SessionExpiry,
    /// The delayed will of `slot` is published unless a connection has attached since.
    WillDelay,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Timer {
    pub kind: TimerKind,
    pub slot: u32,
    pub token: u64,
}

#[derive(Default)]
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, Timer)>>,
}

impl Timers {
    pub fn arm(&mut self, after: Duration, timer: Timer) {
        // Intervals of years would overflow `Instant` on some platforms: clamp to a century.
        let after = after.min(Duration::from_secs(100 * 365 * 24 * 3600));
        self.heap.push(Reverse((Instant::now() + after, timer)));
    }

    /// The earliest deadline, if any timer is armed.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((deadline, _))| *deadline)
    }

    /// Removes and returns a timer that is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        match self.heap.peek() {
            Some(Reverse((deadline, _))) if *deadline <= now => {
                self.heap.pop().map(|Reverse((_, timer))| timer)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_come_due_in_deadline_order() {
        let mut timers = Timers::default();
        let timer = |slot| Timer {
            kind: TimerKind::WillDelay,
            slot,
            token: 0,
        };
        timers.arm(Duration::from_secs(20), timer(2));
        timers.arm(Duration::from_secs(10), timer(1));
        timers.arm(Duration::from_secs(3600), timer(3));
        let later = Instant::now() + Duration::from_secs(30);
        assert!(timers.next_deadline().is_some_and(|d| d < later));
        assert_eq!(timers.pop_due(later).map(|t| t.slot), Some(1));
        assert_eq!(timers.pop_due(later).map(|t| t.slot), Some(2));
        assert_eq!(timers.pop_due(later), None);
        assert_eq!(timers.pop_due(Instant::now()), None);
    }
}
