//! The router's start from a store: sessions, subscriptions, queues, in-flight state, held
//! inbound QoS 2 messages and retained messages put back as they were.
//!
//! Owns: turning `storage::Recovered` into router state before the first message is handled.
//! Must not: touch the disk (the storage actor read it) or send anything (no client is
//! connected yet; resends happen when each client reconnects).

use std::sync::Arc;
use std::time::Duration;

use log::info;

use super::*;
use crate::auth::{Authorizers, RecoveredAcl};
use crate::queue::session::will_permitted;
use crate::storage::schema::unix_now;
use crate::storage::{Recovered, RecoveredEntry, Window};

/// A stored queue row as the delivery it was.
fn stored_delivery(recovered: &RecoveredEntry) -> Delivery {
    let entry = &recovered.entry;
    let ids = match entry.subscription_ids.as_slice() {
        [] => SubscriptionIds::None,
        [one] => SubscriptionIds::One(*one),
        many => SubscriptionIds::Many(many.into()),
    };
    let mut delivery = Delivery::new(Arc::clone(&recovered.message), entry.qos, entry.retain, ids);
    delivery.stored = recovered.id;
    delivery
}

impl QueueActor {
    /// Takes over the store and the state recovered from it.
    /// Each session's ACL is rebuilt from the identity stored with it and the authorizer
    /// `authorizers` give its listener now.
    pub(in crate::queue) fn restore(
        &mut self,
        persist: Persistence,
        recovered: Recovered,
        authorizers: &Authorizers,
    ) {
        self.persist = persist;
        let Recovered {
            sessions,
            retained,
            wills,
            ..
        } = recovered;
        // Wills that fell due while the broker was down: published once everything is back,
        // so that every subscriber that should receive them does.
        let mut due_wills: Vec<(u32, Will)> = Vec::new();
        for message in retained {
            self.retained.update(&message);
        }
        let count = sessions.len();
        let now = unix_now();
        for saved in sessions {
            let record = saved.record;
            let client_id = Arc::clone(&record.client_id);
            let mut session =
                Session::new(Arc::clone(&client_id), record.expiry, self.limits.clone());
            match authorizers.recover(&client_id, record.identity.as_ref()) {
                RecoveredAcl::Open => {}
                RecoveredAcl::Known(acl) => session.read_acl = Some(acl),
                RecoveredAcl::Unknown => session.acl_unchecked = true,
            }
            // Held inbound QoS 2 messages wait for their PUBREL again, which routes them.
            for (packet_id, message) in saved.inbound_qos2 {
                session.incoming_qos2.insert(packet_id);
                if let Some(message) = message {
                    session.incoming_qos2_held.insert(packet_id, message);
                }
            }
            for recovered in saved.entries {
                session.outbox.restore(
                    stored_delivery(&recovered),
                    recovered.entry.packet_id,
                    recovered.entry.released,
                );
            }
            let slot = self.insert_session(session);
            self.by_client_id.insert(Arc::clone(&client_id), slot);
            let mut journal = self
                .persist
                .journal(slot, &client_id, record.expiry, record.version);
            if let Some(journal) = journal.as_mut() {
                journal.set_on_disk(saved.on_disk, saved.cursor);
                journal.set_offline_since(record.offline_since);
                journal.set_identity(record.identity.clone());
            }
            if let Some(session) = self.sessions[slot as usize].as_mut() {
                session.outbox.journal = journal;
            }
            for (filter, options, identifier) in saved.subscriptions {
                self.restore_subscription(slot, filter, options, identifier);
            }
            match record.offline_since {
                // Expiry goes on from when the connection ended, on the wall clock.
                Some(since) => {
                    let gone = now.saturating_sub(since);
                    if record.expiry != u32::MAX {
                        let left = u64::from(record.expiry).saturating_sub(gone).max(1);
                        self.arm_session_expiry(slot, Duration::from_secs(left));
                    }
                    // A will waiting out its delay when the broker stopped: due at the end
                    // of the delay counted from the disconnection (or at the session's end,
                    // whichever comes first: the session's expiry timer publishes it then).
                    if let Some(will) = record.will {
                        let delay = u64::from(will.properties.will_delay_interval.unwrap_or(0));
                        if gone >= delay {
                            due_wills.push((slot, will));
                        } else if let Some(session) = self.sessions[slot as usize].as_mut() {
                            session.delayed_will = Some(will);
                            let token = session.last_connection;
                            self.timers.arm(
                                Duration::from_secs(delay - gone),
                                Timer {
                                    kind: TimerKind::WillDelay,
                                    slot,
                                    token,
                                },
                            );
                        }
                    }
                }
                // Connected when the broker stopped: the connection was lost, as far as the
                // client can tell, so its will goes out and its expiry starts now.
                None => {
                    if let Some(will) = record.will {
                        self.schedule_will(slot, will);
                    }
                    self.save_offline(slot);
                    self.schedule_session_end(slot);
                }
            }
        }
        for (slot, will) in due_wills {
            if let Some(session) = self.sessions[slot as usize].as_ref() {
                if let Some(journal) = &session.outbox.journal {
                    journal.will_published(session.expiry);
                }
            }
            self.publish_will(slot, will);
        }
        // Sessions that expired while the broker was down (gone from the store already):
        // their wills were due at the latest when they ended.
        for record in wills {
            let Some(will) = record.will else { continue };
            let (acl, unknown) =
                match authorizers.recover(&record.client_id, record.identity.as_ref()) {
                    RecoveredAcl::Open => (None, false),
                    RecoveredAcl::Known(acl) => (Some(acl), false),
                    RecoveredAcl::Unknown => (None, true),
                };
            if will_permitted(&record.client_id, acl.as_ref(), unknown, &will.topic) {
                self.send_will(u32::MAX, will);
            }
        }
        if self.persist.is_on() {
            info!("recovered {count} sessions from the store");
        }
    }

    /// Writes the record of a session whose connection has just ended, with its will if it
    /// waits out a delay.
    pub(in crate::queue) fn save_offline(&mut self, slot: u32) {
        if let Some(session) = self.sessions[slot as usize].as_mut() {
            let will = session.delayed_will.as_ref();
            if let Some(journal) = session.outbox.journal.as_mut() {
                journal.save(session.expiry, true, will);
            }
        }
    }

    /// The next window of a session's stored queue has been read: it joins the queue in memory.
    pub(in crate::queue) fn handle_stored_window(
        &mut self,
        slot: u32,
        client_id: &str,
        window: Window,
    ) {
        let Some(session) = self
            .sessions
            .get_mut(slot as usize)
            .and_then(Option::as_mut)
        else {
            return;
        };
        if &*session.client_id != client_id {
            return;
        }
        let Some(journal) = session.outbox.journal.as_mut() else {
            return;
        };
        if !journal.window_arrived(&window) {
            return;
        }
        for recovered in &window.entries {
            // Read back from disk: checked against the client's read ACL now (it may have been
            // queued before the client's ACL was known, after a restart).
            let delivery = stored_delivery(recovered);
            if recovered.entry.packet_id.is_none()
                && !session.may_read(&delivery.message.publish.topic)
            {
                if let Some(journal) = &session.outbox.journal {
                    journal.done(&delivery);
                }
                continue;
            }
            session.outbox.restore(
                delivery,
                recovered.entry.packet_id,
                recovered.entry.released,
            );
        }
        self.mark_dirty(slot);
    }

    fn restore_subscription(
        &mut self,
        slot: u32,
        filter: String,
        options: crate::mqtt::SubscriptionOptions,
        identifier: Option<u32>,
    ) {
        let subscription = Subscription {
            options,
            identifier,
        };
        if let Some(session) = self.sessions[slot as usize].as_mut() {
            session.filters.insert(filter.clone(), subscription);
        }
        match split_shared(&filter).map(|(_, inner)| inner.to_owned()) {
            Some(inner) => {
                let joined = self.shared.join(&filter, &inner, slot, subscription);
                if joined.new_group {
                    self.subscriptions
                        .insert(&inner, Target::Group(joined.group), subscription);
                }
            }
            None => {
                self.subscriptions
                    .insert(&filter, Target::Session(slot), subscription);
            }
        }
    }

    fn arm_session_expiry(&mut self, slot: u32, after: Duration) {
        let token = self.sessions[slot as usize]
            .as_ref()
            .map_or(0, |s| s.last_connection);
        self.timers.arm(
            after,
            Timer {
                kind: TimerKind::SessionExpiry,
                slot,
                token,
            },
        );
    }
}
