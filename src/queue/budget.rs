//! The broker-wide budget for queued messages, in bytes: what every session queue holds behind
//! its in-flight window, added up.
//!
//! Owns: the running total and the limit, and the rule of who gets refused first (QoS 0 past
//! three quarters of the budget, QoS 1 and 2 past all of it). Must not: drop or log anything
//! itself (each session queue asks before it queues and gives back what it lets go).

use std::sync::atomic::{AtomicUsize, Ordering};

/// The queued bytes of the whole broker. Only the router thread changes it (atomics so that the
/// router stays `Send` and readers such as metrics may look).
#[derive(Debug)]
pub(super) struct QueueBudget {
    used: AtomicUsize,
    limit: usize,
}

impl QueueBudget {
    /// A budget of `limit` bytes; 0 means no limit.
    pub fn new(limit: usize) -> Self {
        QueueBudget {
            used: AtomicUsize::new(0),
            limit: if limit == 0 { usize::MAX } else { limit },
        }
    }

    /// Takes `size` bytes for a queued delivery, or refuses: a QoS 0 one once three quarters
    /// of the budget are used (it is the first to go), a QoS 1/2 one once all of it is.
    pub fn take(&self, size: usize, qos0: bool) -> bool {
        let used = self.used.load(Ordering::Relaxed);
        let ceiling = if qos0 { self.limit / 4 * 3 } else { self.limit };
        if used.saturating_add(size) > ceiling {
            return false;
        }
        self.used.store(used + size, Ordering::Relaxed);
        true
    }

    /// Takes `size` bytes whatever the limit: a session that keeps up (see `Outbox::enqueue`),
    /// or messages read back from the store (acknowledged already, never dropped).
    pub fn take_anyway(&self, size: usize) {
        let used = self.used.load(Ordering::Relaxed);
        self.used
            .store(used.saturating_add(size), Ordering::Relaxed);
    }

    pub fn give_back(&self, size: usize) {
        let used = self.used.load(Ordering::Relaxed);
        self.used
            .store(used.saturating_sub(size), Ordering::Relaxed);
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qos0_is_refused_first_then_everything() {
        let budget = QueueBudget::new(1000);
        assert!(budget.take(700, false));
        assert!(!budget.take(100, true), "QoS 0 stops at three quarters");
        assert!(budget.take(300, false), "QoS 1/2 may use all of it");
        assert!(!budget.take(1, false));
        budget.give_back(500);
        assert_eq!(budget.used(), 500);
        assert!(budget.take(100, true));
    }

    #[test]
    fn zero_means_no_limit() {
        let budget = QueueBudget::new(0);
        assert!(budget.take(usize::MAX / 2, true));
    }
}
