//! The router's side of commits: stored QoS 2 deliveries released once their commit is done,
//! and PUBLISHes a failed commit refused forgotten, so that memory agrees with the store.
//!
//! Owns: handling `storage::StoreEvent`. Must not: touch the disk or answer publishers (the
//! storage thread has answered them before the router hears of it).

use std::collections::HashSet;
use std::sync::Arc;

use log::debug;

use super::*;
use crate::storage::{Refusal, StoreEvent};

impl QueueActor {
    pub(super) fn handle_store_event(&mut self, event: StoreEvent) {
        match event {
            StoreEvent::Committed(upto) => {
                for slot in self.persist.committed(upto) {
                    let Some(session) = self
                        .sessions
                        .get_mut(slot as usize)
                        .and_then(Option::as_mut)
                    else {
                        continue;
                    };
                    if let Some(journal) = session.outbox.journal.as_mut() {
                        journal.woken();
                    }
                    self.mark_dirty(slot);
                }
            }
            StoreEvent::Refused(refusals) => self.forget_refused(&refusals),
        }
    }

    /// PUBLISHes whose commit failed were answered with an error and taken out of the store's
    /// batch: they leave the kept sessions' queues and the retained store too, and a refused
    /// QoS 2 PUBLISH no longer awaits its PUBREL (one that comes is answered as for an unknown
    /// packet id). Copies already handed to online subscribers stay delivered, as they do for
    /// sessions that are not kept. Copies that went to disk only (a long queue's spill) were
    /// never written; the session's count of them is then too high until its next window
    /// read finds fewer rows and corrects it.
    fn forget_refused(&mut self, refusals: &[Refusal]) {
        let refused: HashSet<*const Message> =
            refusals.iter().map(|r| Arc::as_ptr(&r.message)).collect();
        for refusal in refusals {
            if let Some(session) = self
                .sessions
                .get_mut(refusal.slot as usize)
                .and_then(Option::as_mut)
            {
                let id = refusal.packet_id;
                let held = session
                    .incoming_qos2_held
                    .get(&id)
                    .is_some_and(|m| Arc::ptr_eq(m, &refusal.message));
                if held {
                    session.incoming_qos2_held.remove(&id);
                    session.incoming_qos2.remove(&id);
                    session.incoming_qos2_resent.remove(&id);
                }
            }
            if refusal.message.publish.retain && self.retained.remove_if(&refusal.message) {
                // The store kept the topic's previous message (if any): clear it there too,
                // so that a restart does not bring back what memory no longer has.
                self.persist.clear_retained(&refusal.message.publish.topic);
            }
        }
        let mut dropped = 0usize;
        for session in self.sessions.iter_mut().flatten() {
            if session.outbox.journal.is_none() {
                continue;
            }
            let before = session.outbox.queued_len();
            session
                .outbox
                .drop_queued_unless(|d| !refused.contains(&Arc::as_ptr(&d.message)));
            dropped += before - session.outbox.queued_len();
        }
        // The storage thread logs the failure episode loudly, once; this is the detail.
        debug!(
            "{} MQTT 5 PUBLISHes refused (0x80) because the store could not commit them; {dropped} \
             queued copies of them removed",
            refusals.len()
        );
    }
}
