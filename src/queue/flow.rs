//! Flow control for QoS 1 and 2 publishers: acknowledgements held back while a session that
//! receives their messages is congested, so that a publisher faster than a subscriber is slowed
//! to its pace instead of having acknowledged messages dropped; and how a session's drops are
//! reported in the log.
//!
//! Owns: one publisher's queue of held acknowledgements, released in the order the PUBLISH
//! packets arrived, and whether its reader is held because that queue is full (`gated`); one
//! session's drop episodes (`DropLog`). Must not: send or log anything (the router does, with
//! what these return) or know which sessions are congested (each congested session keeps the
//! `(publisher, seq)` pairs it holds back).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::client::AckKind;
use crate::mqtt::{PacketId, ReasonCode};

/// An acknowledgement waiting for `waits` congested sessions to drain, and for every earlier
/// acknowledgement of the same publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct HeldAck {
    pub seq: u64,
    pub kind: AckKind,
    pub packet_id: PacketId,
    pub reason: ReasonCode,
    waits: u32,
}

/// One publisher's held acknowledgements, oldest first. The front one always waits for at
/// least one session: ready ones are handed out as soon as they are.
#[derive(Debug, Default)]
pub(super) struct HeldAcks {
    queue: VecDeque<HeldAck>,
    /// The publisher's reader is held because as many acknowledgements are held as its window
    /// allows: it reads nothing more, so TCP pushes back on it alone.
    pub gated: bool,
    /// Since when the oldest acknowledgement has been held: the router releases them all once
    /// this passes the hold limit, whoever holds them.
    held_since: Option<Instant>,
    /// After such a release the publisher is not held again until then.
    pub free_until: Option<Instant>,
}

impl HeldAcks {
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Holds an acknowledgement until `waits` sessions have drained. With `waits` 0 it waits
    /// only for the acknowledgements held before it; call only when some are.
    pub fn hold(
        &mut self,
        seq: u64,
        kind: AckKind,
        packet_id: PacketId,
        reason: ReasonCode,
        waits: u32,
    ) {
        debug_assert!(waits > 0 || !self.queue.is_empty());
        if self.queue.is_empty() {
            self.held_since = Some(Instant::now());
        }
        self.queue.push_back(HeldAck {
            seq,
            kind,
            packet_id,
            reason,
            waits,
        });
    }

    /// One session that held `seq` back has drained. Returns the acknowledgements now ready,
    /// in order (none if `seq` is unknown: the publisher reconnected since).
    pub fn release(&mut self, seq: u64) -> Vec<HeldAck> {
        if let Ok(index) = self.queue.binary_search_by_key(&seq, |held| held.seq) {
            let held = &mut self.queue[index];
            held.waits = held.waits.saturating_sub(1);
        }
        let mut ready = Vec::new();
        while self.queue.front().is_some_and(|held| held.waits == 0) {
            ready.extend(self.queue.pop_front());
        }
        if self.queue.is_empty() {
            self.held_since = None;
        } else if !ready.is_empty() {
            // The oldest now is younger; when it was held is not kept per acknowledgement, so
            // count from now (a publisher whose acknowledgements keep flowing is not stuck).
            self.held_since = Some(Instant::now());
        }
        ready
    }

    /// Whether the oldest held acknowledgement (or the oldest since the last release) has
    /// waited `limit` or more.
    pub fn held_longer_than(&self, limit: Duration, now: Instant) -> bool {
        self.held_since
            .is_some_and(|since| now.saturating_duration_since(since) >= limit)
    }

    /// Hands out every held acknowledgement, in order, whatever it waits for (sessions that
    /// still hold one back later release an unknown sequence number: nothing).
    pub fn release_all(&mut self) -> Vec<HeldAck> {
        self.held_since = None;
        self.queue.drain(..).collect()
    }

    /// Forgets every held acknowledgement (the connection they were for has gone; the client
    /// will resend those PUBLISH packets).
    pub fn clear(&mut self) {
        self.queue.clear();
        self.gated = false;
        self.held_since = None;
    }
}

/// Longest a drop episode goes without a line in the log.
const REPORT_EVERY: Duration = Duration::from_secs(10);
/// A drop episode has ended once nothing was dropped for this long.
const QUIET: Duration = Duration::from_secs(1);

/// One session's drops as the log tells them: a line when an episode starts, a summary every
/// `REPORT_EVERY` while it lasts, and one when it ends; never a line per N messages.
#[derive(Debug, Default)]
pub(super) struct DropLog {
    since: Option<Instant>,
    last_drop: Option<Instant>,
    last_line: Option<Instant>,
    /// Dropped since the last line, and how many of those were QoS 0.
    count: u64,
    qos0: u64,
    /// An episode started and its first line is still to be written.
    start_unlogged: bool,
}

/// What the log should say about a session's drops now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DropReport {
    /// Still dropping: `count` dropped (`qos0` of them QoS 0) in the last `secs` seconds.
    Ongoing { count: u64, qos0: u64, secs: u64 },
    /// Stopped dropping: `count` since the last line, over an episode of `secs` seconds.
    Ended { count: u64, qos0: u64, secs: u64 },
}

impl DropLog {
    /// Counts one dropped message.
    pub fn record(&mut self, qos0: bool, now: Instant) {
        if self.since.is_none() {
            self.since = Some(now);
            self.last_line = Some(now);
            self.start_unlogged = true;
        }
        self.last_drop = Some(now);
        self.count += 1;
        self.qos0 += u64::from(qos0);
    }

    /// True once when an episode has started: the caller writes its first line.
    pub fn take_start(&mut self) -> bool {
        std::mem::take(&mut self.start_unlogged)
    }

    pub fn is_active(&self) -> bool {
        self.since.is_some()
    }

    /// The line due at `now`, if any: a summary of a long episode, or its end.
    pub fn report(&mut self, now: Instant) -> Option<DropReport> {
        let since = self.since?;
        let secs = |from: Instant| now.saturating_duration_since(from).as_secs();
        if self
            .last_drop
            .is_some_and(|last| now.saturating_duration_since(last) >= QUIET)
        {
            let report = DropReport::Ended {
                count: self.count,
                qos0: self.qos0,
                secs: secs(since),
            };
            *self = DropLog::default();
            return Some(report);
        }
        let last_line = self.last_line.unwrap_or(since);
        if now.saturating_duration_since(last_line) >= REPORT_EVERY && self.count > 0 {
            let report = DropReport::Ongoing {
                count: self.count,
                qos0: self.qos0,
                secs: secs(last_line),
            };
            self.last_line = Some(now);
            self.count = 0;
            self.qos0 = 0;
            return Some(report);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u16) -> PacketId {
        PacketId::new(n).expect("non-zero")
    }

    fn ids(acks: Vec<HeldAck>) -> Vec<u16> {
        acks.into_iter().map(|a| a.packet_id.get()).collect()
    }

    #[test]
    fn acks_are_released_in_order_once_every_session_drained() {
        let mut held = HeldAcks::default();
        held.hold(1, AckKind::PubAck, id(1), ReasonCode::Success, 2);
        held.hold(2, AckKind::PubAck, id(2), ReasonCode::Success, 1);
        held.hold(3, AckKind::PubAck, id(3), ReasonCode::Success, 0);
        // The second one's session drains first: nothing may overtake the first.
        assert!(held.release(2).is_empty());
        assert!(held.release(1).is_empty());
        assert_eq!(ids(held.release(1)), vec![1, 2, 3]);
        assert!(held.is_empty());
    }

    #[test]
    fn release_all_hands_out_everything_in_order_and_forgets_the_waits() {
        let mut held = HeldAcks::default();
        let start = Instant::now();
        held.hold(1, AckKind::PubAck, id(1), ReasonCode::Success, 2);
        held.hold(2, AckKind::PubAck, id(2), ReasonCode::Success, 1);
        let later = Instant::now() + Duration::from_secs(1);
        assert!(held.held_longer_than(later - start - Duration::from_millis(1), later));
        assert_eq!(ids(held.release_all()), vec![1, 2]);
        assert!(!held.held_longer_than(Duration::ZERO, later));
        assert!(held.release(1).is_empty(), "stale releases find nothing");
    }

    #[test]
    fn unknown_sequence_numbers_release_nothing() {
        let mut held = HeldAcks::default();
        held.hold(5, AckKind::PubRec, id(9), ReasonCode::Success, 1);
        assert!(held.release(4).is_empty());
        held.clear();
        assert!(held.release(5).is_empty());
    }

    #[test]
    fn drops_give_a_start_line_interval_summaries_and_an_end() {
        let t0 = Instant::now();
        let mut log = DropLog::default();
        assert_eq!(log.report(t0), None);
        for n in 0..5000u64 {
            log.record(n % 2 == 0, t0 + Duration::from_millis(n * 3));
        }
        assert!(log.take_start());
        assert!(!log.take_start(), "the start is told once");
        // Still dropping 9 s in: nothing to say yet.
        assert_eq!(log.report(t0 + Duration::from_secs(9)), None);
        let at = t0 + Duration::from_millis(14_999);
        assert_eq!(
            log.report(at),
            Some(DropReport::Ongoing {
                count: 5000,
                qos0: 2500,
                secs: 14
            })
        );
        assert_eq!(log.report(at), None, "one line per interval");
        log.record(true, t0 + Duration::from_secs(16));
        assert_eq!(
            log.report(t0 + Duration::from_secs(18)),
            Some(DropReport::Ended {
                count: 1,
                qos0: 1,
                secs: 18
            })
        );
        assert!(!log.is_active());
    }
}
