//! The reader gate: how the router slows a QoS 0 publisher whose messages fill a congested
//! subscriber's queue. While the gate is held the reader reads nothing more, so TCP pushes back
//! on the publisher, as held acknowledgements do for QoS 1 and 2.
//!
//! Owns: a count of holds and the wait for it to reach zero. Must not: block the router (hold
//! and release never wait) or block a reader for long (each wait is bounded, so that a client
//! which stops reading because we stopped reading it cannot lock both sides up).

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

#[derive(Default)]
pub struct ReaderGate {
    holds: AtomicU32,
    lock: Mutex<()>,
    released: Condvar,
}

impl ReaderGate {
    pub fn hold(&self) {
        self.holds.fetch_add(1, Ordering::AcqRel);
    }

    pub fn release(&self) {
        let before = self.holds.fetch_sub(1, Ordering::AcqRel);
        if before == 1 {
            // Taking the lock orders this notice after a waiter's check of `holds`.
            let _guard = self.lock.lock();
            self.released.notify_all();
        } else if before == 0 {
            // More releases than holds would be a router bug; stay at zero.
            self.holds.store(0, Ordering::Release);
        }
    }

    /// Waits while the gate is held, at most `limit`; true if it was open by then.
    pub fn wait(&self, limit: Duration) -> bool {
        if self.holds.load(Ordering::Acquire) == 0 {
            return true;
        }
        let mut guard = self.lock.lock();
        let _ = self.released.wait_while_for(
            &mut guard,
            |_| self.holds.load(Ordering::Acquire) > 0,
            limit,
        );
        self.holds.load(Ordering::Acquire) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    #[test]
    fn an_open_gate_does_not_wait() {
        let gate = ReaderGate::default();
        assert!(gate.wait(Duration::from_secs(60)));
    }

    #[test]
    fn a_held_gate_waits_until_released_or_the_limit() {
        let gate = Arc::new(ReaderGate::default());
        gate.hold();
        gate.hold();
        assert!(
            !gate.wait(Duration::from_millis(20)),
            "held: the wait runs out"
        );
        let releaser = {
            let gate = Arc::clone(&gate);
            thread::spawn(move || {
                gate.release();
                gate.release();
            })
        };
        assert!(gate.wait(Duration::from_secs(60)));
        releaser.join().expect("released");
    }
}
