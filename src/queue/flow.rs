//! Flow control for QoS 1 and 2 publishers: acknowledgements held back while a session that
//! receives their messages is congested, so that a publisher faster than a subscriber is slowed
//! to its pace instead of having acknowledged messages dropped.
//!
//! Owns: one publisher's queue of held acknowledgements, released in the order the PUBLISH
//! packets arrived. Must not: send anything (the router sends what `release` returns) or know
//! which sessions are congested (each congested session keeps the `(publisher, seq)` pairs it
//! holds back).

use std::collections::VecDeque;

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
}

impl HeldAcks {
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
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
        ready
    }

    /// Forgets every held acknowledgement (the connection they were for has gone; the client
    /// will resend those PUBLISH packets).
    pub fn clear(&mut self) {
        self.queue.clear();
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
    fn unknown_sequence_numbers_release_nothing() {
        let mut held = HeldAcks::default();
        held.hold(5, AckKind::PubRec, id(9), ReasonCode::Success, 1);
        assert!(held.release(4).is_empty());
        held.clear();
        assert!(held.release(5).is_empty());
    }
}
