//! The router's periodic sweep (every `SWEEP_EVERY`): the bounds that make flow control
//! isolate, and the drop reports.
//!
//! Owns: ending a congested session's hold on its publishers once it has lasted
//! `flow_hold_limit` (from then on the session's own limits apply and its overflow is dropped),
//! and a publisher's held acknowledgements once they have been held that long in all (however
//! many receivers took turns),
//! disconnecting a client that has taken nothing for `write_timeout` while messages wait (the
//! progress clock, whether or not its writer is blocked), and the periodic and final lines of
//! each session's drop episodes. Must not: block on a client (a stuck one is cut off by
//! shutting its socket down, which never waits).

use log::{info, warn};

use super::super::flow::DropReport;
use super::*;

/// How often the sweep runs; the hold limit is enforced within this much.
pub(super) const SWEEP_EVERY: Duration = Duration::from_millis(100);

impl QueueActor {
    pub(super) fn sweep(&mut self, now: Instant) {
        let mut watched = std::mem::take(&mut self.watched);
        watched.sort_unstable();
        watched.dedup();
        for &slot in &watched {
            let Some(session) = self.sessions[slot as usize].as_mut() else {
                continue;
            };
            if session.outbox.drops.is_active() {
                // Drops of retained messages fed in after a SUBSCRIBE start an episode too.
                log_drop_start(session, false);
                report_drops(session, now);
            }
            let Some(online) = &session.online else {
                continue;
            };
            // As a publisher: held too long (two hold periods and nothing released), by one
            // receiver or several in turn.
            if session
                .held_acks
                .held_longer_than(self.flow_hold_limit * 2, now)
            {
                debug!(
                    "client {}: acknowledgements held for {:?}; released",
                    session.client_id,
                    self.flow_hold_limit * 2
                );
                send_released(
                    &self.persist,
                    slot,
                    &online.writer,
                    session.held_acks.release_all(),
                );
                if std::mem::take(&mut session.held_acks.gated) {
                    online.writer.release_reader();
                }
                session.held_acks.free_until = Some(now + self.flow_hold_limit);
            }
            if session.outbox.stalled_since.is_some() {
                // Bytes accepted by its socket are progress too.
                let written = online.writer.bytes_written();
                if written != session.outbox.bytes_seen {
                    session.outbox.bytes_seen = written;
                    session.outbox.stalled_since = Some(now);
                }
            }
            let stalled = session
                .outbox
                .stalled_since
                .is_some_and(|since| now.saturating_duration_since(since) >= self.write_timeout);
            if stalled {
                warn!(
                    "client {}: took nothing for {:?} while {} messages ({} bytes) waited; \
                     disconnecting it",
                    session.client_id,
                    self.write_timeout,
                    session.outbox.queued_len(),
                    session.outbox.queued_bytes(),
                );
                // Its writer may be blocked in a write: shutting the socket down ends that,
                // and its reader, without waiting for either.
                online.writer.abort();
                let from = ConnectionRef {
                    slot,
                    connection: online.connection_id,
                };
                session.outbox.stalled_since = None;
                self.handle_disconnect(from, Ending::Abnormal);
                continue;
            }
            let held_too_long = !session.outbox.overflowing
                && session.outbox.congested_since.is_some_and(|since| {
                    now.saturating_duration_since(since) >= self.flow_hold_limit
                });
            if held_too_long && session.outbox.keeps_up() {
                // Slow, but at its pace it drains to half within another period: flow control
                // goes on, losslessly (its publishers' oldest held acknowledgements are
                // released by the rule above if it does not).
                session.outbox.congested_since = Some(now);
                session.outbox.taken_at_congestion = session.outbox.taken;
            } else if held_too_long {
                debug!(
                    "client {}: congested for {:?}; publishers released, its own limits apply",
                    session.client_id, self.flow_hold_limit
                );
                session.outbox.overflowing = true;
                self.release_held(slot, true);
            }
        }
        // Sessions with nothing left to look at leave the list (a slot reused since is
        // looked at afresh).
        let sessions = &mut self.sessions;
        watched.retain(|&slot| match sessions[slot as usize].as_mut() {
            Some(session) => {
                session.watched = session.needs_watching();
                session.watched
            }
            None => false,
        });
        // Those put on the list meanwhile join them (a repeat is removed next time).
        watched.append(&mut self.watched);
        self.watched = watched;
    }
}

/// Writes the drop line due for `session`, if one is.
fn report_drops(session: &mut Session, now: Instant) {
    let id = &session.client_id;
    let queued = session.outbox.queued_len();
    match session.outbox.drops.report(now) {
        Some(DropReport::Ongoing { count, qos0, secs }) => warn!(
            "client {id}: still dropping: {count} messages ({qos0} of them QoS 0) in the last \
             {secs} s; {queued} queued; {} dropped since the session began",
            session.outbox.dropped
        ),
        Some(DropReport::Ended { count, qos0, secs }) => info!(
            "client {id}: stopped dropping after {secs} s: {count} messages ({qos0} of them \
             QoS 0) since the last line; {} dropped since the session began",
            session.outbox.dropped
        ),
        None => {}
    }
}
