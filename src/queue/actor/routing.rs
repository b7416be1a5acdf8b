//! The router's message path: PUBLISH in, deliveries out, and flow control (acknowledgements
//! held back and publishers' readers held while a receiving session is congested).
//!
//! Owns: `route`, acknowledgements of received and sent messages, and releasing what congested
//! sessions hold. Must not: block on a client or copy a message per receiver.

use std::sync::Arc;
use std::time::Instant;

use log::{debug, warn};

use super::*;

impl QueueActor {
    pub(super) fn handle_publish(
        &mut self,
        from: ConnectionRef,
        message: Arc<Message>,
        packet_id: Option<PacketId>,
    ) {
        let receive_maximum = usize::from(self.receive_maximum);
        let Some(session) = attached(&mut self.sessions, from) else {
            return;
        };
        let Some(online) = &session.online else {
            return;
        };
        let v5 = online.version.is_v5();
        if let (Some(packet_id), true) = (packet_id, publish_denied(&message.publish.topic)) {
            // As mosquitto's default access rules: a client may not publish to `$SYS/...`
            // (but for a bridge's connection state) nor to `$share/...`: 0x87, not routed.
            debug!(
                "client {}: PUBLISH to {:?} not authorized",
                session.client_id, message.publish.topic
            );
            let kind = match message.publish.qos {
                QoS::ExactlyOnce => AckKind::PubRec,
                _ => AckKind::PubAck,
            };
            let reason = if v5 {
                ReasonCode::NotAuthorized
            } else {
                ReasonCode::Success
            };
            self.acknowledge(from.slot, kind, packet_id, reason, None);
            return;
        }
        if publish_denied(&message.publish.topic) {
            return;
        }
        match (message.publish.qos, packet_id) {
            (QoS::AtMostOnce, _) => {
                self.route(from.slot, message);
                if !self.congested.is_empty() {
                    self.hold_reader(from);
                }
            }
            (QoS::AtLeastOnce, Some(packet_id)) => {
                // With persistence, an MQTT 5 publisher can be told that its message was not
                // stored: its changes form a group with the acknowledgement, so that a failed
                // commit holds all of them or none (`storage::Op::AckPublish`).
                let refusable = (v5 && self.persist.is_on()).then(|| Arc::clone(&message));
                if refusable.is_some() {
                    self.persist.group_start();
                }
                let grouped = refusable.is_some();
                let matched = self.route(from.slot, message);
                let reason = self.publish_reason(v5, matched);
                self.acknowledge(from.slot, AckKind::PubAck, packet_id, reason, refusable);
                if grouped {
                    self.persist.group_end();
                }
            }
            (QoS::ExactlyOnce, Some(packet_id)) => {
                let first = !session.incoming_qos2.contains(&packet_id);
                // [MQTT-3.3.4-8] More unacknowledged QoS 2 messages than we allowed. Only an
                // MQTT 5 client was told the limit; an older one is bounded by its packet ids
                // alone (as from mosquitto, which answers it all the same).
                if first && v5 && session.incoming_qos2.len() >= receive_maximum {
                    warn!("client {}: receive maximum exceeded", session.client_id);
                    online.writer.close(Some(Disconnect {
                        reason: ReasonCode::ReceiveMaximumExceeded,
                        properties: DisconnectProperties::default(),
                    }));
                    return;
                }
                // [MQTT-4.3.3-2] Deliver once: the message waits for its PUBREL and is routed
                // then (method B of 4.3.3, as mosquitto delivers it). A resent PUBLISH whose
                // id awaits PUBREL is only acknowledged again; resent a second time, it ends the
                // connection as mosquitto 2.0 ends it (a client that never sends PUBREL).
                let refusable = (first && v5 && self.persist.is_on()).then(|| Arc::clone(&message));
                if refusable.is_some() {
                    self.persist.group_start();
                }
                if first {
                    session.incoming_qos2.insert(packet_id);
                    // With persistence, the held message itself is stored before PUBREC
                    // goes (the acknowledgement waits for the commit), so that a PUBREL after
                    // a crash still routes it, once.
                    if let Some(journal) = &session.outbox.journal {
                        journal.inbound_qos2(packet_id, Some(&message));
                    }
                    session.incoming_qos2_held.insert(packet_id, message);
                } else if !session.incoming_qos2_resent.insert(packet_id) {
                    warn!(
                        "client {}: QoS 2 PUBLISH {packet_id} resent again before PUBREL",
                        session.client_id
                    );
                    online.writer.close(Some(Disconnect {
                        reason: ReasonCode::ProtocolError,
                        properties: DisconnectProperties::default(),
                    }));
                    return;
                }
                // PUBREC says success whether or not anyone subscribed, as from mosquitto.
                self.congested.clear();
                let grouped = refusable.is_some();
                self.acknowledge(
                    from.slot,
                    AckKind::PubRec,
                    packet_id,
                    ReasonCode::Success,
                    refusable,
                );
                if grouped {
                    self.persist.group_end();
                }
            }
            (_, None) => debug!("PUBLISH with QoS > 0 and no packet id cannot be decoded"),
        }
    }

    /// The reason code for a PUBLISH just routed: 0x97 (quota exceeded) to an MQTT 5 client
    /// when the broker's budget of queued bytes refused it somewhere.
    fn publish_reason(&self, v5: bool, matched: usize) -> ReasonCode {
        if v5 && self.over_budget {
            ReasonCode::QuotaExceeded
        } else {
            ack_reason(v5, matched)
        }
    }

    /// Delivers `publish` to every matching session and updates the retained store. Returns
    /// how many sessions it matched.
    pub(super) fn route(&mut self, publisher: u32, message: Arc<Message>) -> usize {
        if message.publish.retain {
            self.retained.update(&message);
            self.persist.retain(&message);
        }

        self.over_budget = false;
        self.congested.clear();
        let mut matches = std::mem::take(&mut self.matches);
        matches.clear();
        let mut groups = Vec::new();
        let mut skipped_no_local = 0;
        self.subscriptions
            .for_each_match(
                &message.publish.topic,
                |target, subscription| match target {
                    Target::Session(slot) => {
                        let options = subscription.options;
                        // [MQTT-3.8.3-3] No Local: not back to the publisher, though it counts
                        // as a match (PUBACK says success, as from mosquitto).
                        if options.no_local && slot == publisher {
                            skipped_no_local += 1;
                            return;
                        }
                        matches.push(Match {
                            slot,
                            seq: matches.len() as u32,
                            qos: options.qos,
                            retain_as_published: options.retain_as_published,
                            identifier: subscription.identifier,
                        });
                    }
                    Target::Group(group) => groups.push(group),
                },
            );
        for group in groups {
            let sessions = &self.sessions;
            let picked = self.shared.pick(
                group,
                |slot| is_online(sessions, slot),
                |slot| {
                    sessions[slot as usize]
                        .as_ref()
                        .is_some_and(|s| s.expiry != 0)
                },
            );
            if let Some((slot, subscription)) = picked {
                matches.push(Match {
                    slot,
                    seq: matches.len() as u32,
                    qos: subscription.options.qos,
                    retain_as_published: subscription.options.retain_as_published,
                    identifier: subscription.identifier,
                });
            }
        }
        // Overlapping subscriptions of a 3.1/3.1.1 client get one copy, at the highest QoS
        // [MQTT-3.3.5-1]. An MQTT 5 client gets one copy per matching subscription, each with
        // its own QoS and identifier, in the order of the subscription tree: 5.0 3.3.4 allows
        // it [MQTT-3.3.4-5], and it is what mosquitto sends. (`seq` keeps that order without
        // a stable sort's buffer.)
        matches.sort_unstable_by_key(|m| (m.slot, m.seq));
        let mut matched = 0;
        let mut start = 0;
        while start < matches.len() {
            let slot = matches[start].slot;
            let v5 = self.sessions[slot as usize]
                .as_ref()
                .and_then(|s| s.online.as_ref())
                .is_some_and(|o| o.version.is_v5());
            let end = if v5 {
                start + 1
            } else {
                start
                    + matches[start..]
                        .iter()
                        .take_while(|m| m.slot == slot)
                        .count()
            };
            let first_of_slot = start == 0 || matches[start - 1].slot != slot;
            let mut qos = QoS::AtMostOnce;
            let mut retain_as_published = false;
            let mut subscription_ids = SubscriptionIds::None;
            for m in &matches[start..end] {
                qos = qos.max(m.qos);
                retain_as_published |= m.retain_as_published;
                if let Some(id) = m.identifier {
                    subscription_ids.add(id);
                }
            }
            start = end;
            if first_of_slot {
                matched += 1;
            }
            let Some(session) = self.sessions[slot as usize].as_mut() else {
                continue;
            };
            // mosquitto checks read access per message and receiver.
            if !session.may_read(&message.publish.topic) {
                continue;
            }
            // [MQTT-3.3.1-12] The retain flag is cleared on forwarding, unless Retain As
            // Published asks to keep it [MQTT-3.3.1-13].
            let delivery = Delivery::new(
                Arc::clone(&message),
                if self.upgrade_outgoing_qos {
                    qos
                } else {
                    message.publish.qos.min(qos)
                },
                message.publish.retain && retain_as_published,
                subscription_ids,
            );
            match session.deliver(delivery) {
                Enqueued::Accepted => self.mark_dirty(slot),
                Enqueued::Congested => {
                    self.congested.push(slot);
                    self.mark_dirty(slot);
                    self.watch(slot);
                }
                Enqueued::Skipped => {}
                Enqueued::Dropped => {
                    note_drop(session, false, &self.stats);
                    self.watch(slot);
                }
                Enqueued::OverBudget => {
                    self.over_budget = true;
                    note_drop(session, true, &self.stats);
                    self.watch(slot);
                }
            }
        }
        self.matches = matches;
        matched + skipped_no_local
    }

    /// Acknowledges a QoS 1 or 2 PUBLISH just routed: at once, or, when it was queued for
    /// congested sessions (or earlier acknowledgements are held), once they have drained.
    /// With persistence, after the commit of what it stored; `refusable` (an MQTT 5
    /// PUBLISH, inside its group): answered 0x80 instead if that commit fails. A held
    /// acknowledgement is not refusable: it waits for the disk like an MQTT 3.1.1 one.
    pub(super) fn acknowledge(
        &mut self,
        publisher: u32,
        kind: AckKind,
        packet_id: PacketId,
        reason: ReasonCode,
        refusable: Option<Arc<Message>>,
    ) {
        let congested = std::mem::take(&mut self.congested);
        let seq = self.next_held_seq;
        let held_acks_limit = self.held_acks_limit;
        if let Some(session) = self.sessions[publisher as usize].as_mut() {
            // Released for having been held too long: not held again for a while.
            let free = !congested.is_empty()
                && session.held_acks.is_empty()
                && session
                    .held_acks
                    .free_until
                    .is_some_and(|until| Instant::now() < until);
            if free || (congested.is_empty() && session.held_acks.is_empty()) {
                // A copy the publisher gets of its own message goes before its
                // acknowledgement, as mosquitto writes them.
                if session.dirty {
                    session.pump();
                }
                match (&session.online, refusable) {
                    (Some(online), Some(message)) => {
                        let writer = online.writer.clone();
                        let refused_writer = online.writer.clone();
                        let refusal = crate::storage::Refusal {
                            message,
                            slot: publisher,
                            packet_id,
                        };
                        self.persist.ack_publish(
                            refusal,
                            move || send_ack(&writer, kind, packet_id, reason),
                            // [MQTT-3.4.2.1] / 3.5.2.1: a reason code of 0x80 or more says
                            // the message was not accepted; the publisher may send it again.
                            move || {
                                send_ack(
                                    &refused_writer,
                                    kind,
                                    packet_id,
                                    ReasonCode::UnspecifiedError,
                                )
                            },
                        );
                    }
                    (Some(online), None) => {
                        let writer = &online.writer;
                        ack_when_stored(&self.persist, publisher, writer, kind, packet_id, reason);
                    }
                    (None, _) => {}
                }
            } else {
                self.next_held_seq += 1;
                let waits = u32::try_from(congested.len()).unwrap_or(u32::MAX);
                session.held_acks.hold(seq, kind, packet_id, reason, waits);
                // As many held as its window: its reader stops too, so a publisher that does
                // not wait for its acknowledgements cannot make them pile up.
                if session.held_acks.len() >= held_acks_limit && !session.held_acks.gated {
                    if let Some(online) = &session.online {
                        online.writer.hold_reader();
                        session.held_acks.gated = true;
                    }
                }
                for &slot in &congested {
                    if let Some(receiver) = self.sessions[slot as usize].as_mut() {
                        receiver.holding.push((publisher, Held::Ack(seq)));
                    }
                }
                self.watch(publisher);
            }
        }
        let mut congested = congested;
        congested.clear();
        self.congested = congested;
    }

    /// After routing a QoS 0 PUBLISH that went into congested queues: holds the publisher's
    /// reader until they have drained (a client is never held by its own queue).
    pub(super) fn hold_reader(&mut self, from: ConnectionRef) {
        let mut congested = std::mem::take(&mut self.congested);
        for &slot in &congested {
            if slot == from.slot {
                continue;
            }
            let Some(publisher) = attached(&mut self.sessions, from) else {
                break;
            };
            if let Some(online) = &publisher.online {
                online.writer.hold_reader();
            }
            if let Some(receiver) = self.sessions[slot as usize].as_mut() {
                receiver
                    .holding
                    .push((from.slot, Held::Reader(from.connection)));
            }
        }
        congested.clear();
        self.congested = congested;
    }

    /// Lets go of the acknowledgements `slot` holds back, when its queue has drained or
    /// (`force`) when its connection has gone.
    pub(super) fn release_held(&mut self, slot: u32, force: bool) {
        let Some(session) = self.sessions[slot as usize].as_mut() else {
            return;
        };
        let drained = session.outbox.is_drained();
        if drained {
            // The congestion episode is over: the next one may hold publishers again.
            session.outbox.congested_since = None;
            session.outbox.overflowing = false;
        }
        if session.holding.is_empty() || !(force || drained) {
            return;
        }
        let holding = std::mem::take(&mut session.holding);
        let held_acks_limit = self.held_acks_limit;
        for (publisher_slot, held) in holding {
            let Some(publisher) = self.sessions[publisher_slot as usize].as_mut() else {
                continue;
            };
            let Some(online) = &publisher.online else {
                continue;
            };
            match held {
                Held::Ack(seq) => {
                    send_released(
                        &self.persist,
                        publisher_slot,
                        &online.writer,
                        publisher.held_acks.release(seq),
                    );
                    if publisher.held_acks.gated && publisher.held_acks.len() < held_acks_limit / 2
                    {
                        publisher.held_acks.gated = false;
                        online.writer.release_reader();
                    }
                }
                // A reader held for an earlier connection has gone with it.
                Held::Reader(connection) if connection == online.connection_id => {
                    online.writer.release_reader();
                }
                Held::Reader(_) => {}
            }
        }
    }

    pub(super) fn handle_acks(
        &mut self,
        from: ConnectionRef,
        kind: AckKind,
        packet_ids: &[PacketId],
    ) {
        let Some(session) = attached(&mut self.sessions, from) else {
            return;
        };
        let Some(online) = &session.online else {
            return;
        };
        if kind == AckKind::PubRel {
            for &packet_id in packet_ids {
                let Some(session) = attached(&mut self.sessions, from) else {
                    return;
                };
                let known = session.incoming_qos2.remove(&packet_id);
                session.incoming_qos2_resent.remove(&packet_id);
                let held = session.incoming_qos2_held.remove(&packet_id);
                // With persistence, routing the released message and forgetting it are one
                // commit, and PUBCOMP waits for it (`acknowledge` sends it after the commit):
                // a crash before leaves the message held for the PUBREL the client resends, a
                // crash after leaves it queued for the subscribers, never both nor neither.
                // PUBCOMP also frees the id for the client: not before the store forgot it,
                // or a new message reusing it after a crash would be taken for a resend.
                let journaled = match (known, &session.outbox.journal) {
                    (true, Some(journal)) => {
                        self.persist.group_start();
                        journal.inbound_qos2(packet_id, None);
                        true
                    }
                    _ => false,
                };
                // The released message goes out now, then PUBCOMP (held while it fills
                // congested queues, as PUBACK is). An unknown id is answered with a plain
                // PUBCOMP too, as mosquitto answers it (0x92 would be allowed).
                match held {
                    Some(message) => {
                        self.route(from.slot, message);
                    }
                    None => self.congested.clear(),
                }
                if journaled {
                    self.persist.group_end();
                }
                self.acknowledge(
                    from.slot,
                    AckKind::PubComp,
                    packet_id,
                    ReasonCode::Success,
                    None,
                );
            }
            return;
        }
        for &packet_id in packet_ids {
            let outcome = session
                .outbox
                .acknowledge(kind, packet_id, Some(&online.writer));
            match outcome {
                AckOutcome::Matched => {}
                AckOutcome::Unknown => {
                    debug!(
                        "client {}: {kind:?} for packet id {packet_id} matches nothing in flight",
                        session.client_id
                    );
                    // As mosquitto: a PUBREC nobody waits for is still answered with PUBREL.
                    if kind == AckKind::PubRec {
                        let _ = online
                            .writer
                            .send(Outbound::Ack(AckKind::PubRel, packet_id));
                    }
                }
                AckOutcome::WrongKind => {
                    // A PUBREC for a QoS 1 delivery, a PUBACK for a QoS 2 one, a PUBCOMP
                    // before PUBREC: a protocol error, the connection ends (as mosquitto).
                    warn!(
                        "client {}: {kind:?} for packet id {packet_id} does not fit its flow",
                        session.client_id
                    );
                    online.writer.close(Some(Disconnect {
                        reason: ReasonCode::ProtocolError,
                        properties: DisconnectProperties::default(),
                    }));
                    return;
                }
            }
        }
        session.pump();
        self.release_held(from.slot, false);
    }
}

/// Topics a client may not publish to under mosquitto's default access rules: `$SYS` (but
/// for a bridge's `$SYS/broker/connection/{name}/state`) and `$share`.
pub(super) fn publish_denied(topic: &str) -> bool {
    if topic.starts_with("$share/") || topic == "$share" {
        return true;
    }
    let Some(rest) = topic
        .strip_prefix("$SYS/")
        .or(if topic == "$SYS" { Some("") } else { None })
    else {
        return false;
    };
    let bridge_state = rest
        .strip_prefix("broker/connection/")
        .and_then(|r| r.strip_suffix("/state"))
        .is_some_and(|name| !name.is_empty() && !name.contains('/'));
    !bridge_state
}
