//! The router's message path: PUBLISH in, deliveries out, and flow control (acknowledgements
//! held back and publishers' readers held while a receiving session is congested).
//!
//! Owns: `route`, acknowledgements of received and sent messages, and releasing what congested
//! sessions hold. Must not: block on a client or copy a message per receiver.

use std::sync::Arc;

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
        match (message.publish.qos, packet_id) {
            (QoS::AtMostOnce, _) => {
                self.route(from.slot, message);
                if !self.congested.is_empty() {
                    self.hold_reader(from);
                }
            }
            (QoS::AtLeastOnce, Some(packet_id)) => {
                let matched = self.route(from.slot, message);
                let reason = ack_reason(v5, matched);
                self.acknowledge(from.slot, AckKind::PubAck, packet_id, reason);
            }
            (QoS::ExactlyOnce, Some(packet_id)) => {
                let first = !session.incoming_qos2.contains(&packet_id);
                if first && session.incoming_qos2.len() >= receive_maximum {
                    // [MQTT-3.3.4-8] More unacknowledged QoS 2 messages than we allowed.
                    warn!("client {}: receive maximum exceeded", session.client_id);
                    online.writer.close(Some(Disconnect {
                        reason: ReasonCode::ReceiveMaximumExceeded,
                        properties: DisconnectProperties::default(),
                    }));
                    return;
                }
                // [MQTT-4.3.3-2] Deliver once: a resent PUBLISH whose id awaits PUBREL is
                // only acknowledged again.
                let matched = if first {
                    session.incoming_qos2.insert(packet_id);
                    if let Some(journal) = &session.outbox.journal {
                        journal.inbound_qos2(packet_id, true);
                    }
                    self.route(from.slot, message)
                } else {
                    1
                };
                let reason = ack_reason(v5, matched);
                self.acknowledge(from.slot, AckKind::PubRec, packet_id, reason);
            }
            (_, None) => debug!("PUBLISH with QoS > 0 and no packet id cannot be decoded"),
        }
    }

    /// Delivers `publish` to every matching session and updates the retained store. Returns
    /// how many sessions it matched.
    pub(super) fn route(&mut self, publisher: u32, message: Arc<Message>) -> usize {
        if message.publish.retain {
            self.retained.update(&message);
            self.persist.retain(&message);
        }

        self.congested.clear();
        let mut matches = std::mem::take(&mut self.matches);
        matches.clear();
        let mut groups = Vec::new();
        self.subscriptions
            .for_each_match(
                &message.publish.topic,
                |target, subscription| match target {
                    Target::Session(slot) => {
                        let options = subscription.options;
                        // [MQTT-3.8.3-3] No Local: not back to the publisher.
                        if options.no_local && slot == publisher {
                            return;
                        }
                        matches.push(Match {
                            slot,
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
                    qos: subscription.options.qos,
                    retain_as_published: subscription.options.retain_as_published,
                    identifier: subscription.identifier,
                });
            }
        }
        // Overlapping subscriptions of one client get one copy, at the highest QoS, with every
        // matching subscription identifier [MQTT-3.3.4-2, MQTT-3.3.4-3].
        matches.sort_unstable_by_key(|m| m.slot);
        let mut matched = 0;
        let mut start = 0;
        while start < matches.len() {
            let slot = matches[start].slot;
            let end = start
                + matches[start..]
                    .iter()
                    .take_while(|m| m.slot == slot)
                    .count();
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
            matched += 1;
            let Some(session) = self.sessions[slot as usize].as_mut() else {
                continue;
            };
            // [MQTT-3.3.1-12] The retain flag is cleared on forwarding, unless Retain As
            // Published asks to keep it [MQTT-3.3.1-13].
            let delivery = Delivery::new(
                Arc::clone(&message),
                message.publish.qos.min(qos),
                message.publish.retain && retain_as_published,
                subscription_ids,
            );
            match session.deliver(delivery) {
                Enqueued::Accepted => self.mark_dirty(slot),
                Enqueued::Congested => {
                    self.congested.push(slot);
                    self.mark_dirty(slot);
                }
                Enqueued::Dropped => note_drop(session),
            }
        }
        self.matches = matches;
        matched
    }

    /// Acknowledges a QoS 1 or 2 PUBLISH just routed: at once, or, when it was queued for
    /// congested sessions (or earlier acknowledgements are held), once they have drained.
    pub(super) fn acknowledge(
        &mut self,
        publisher: u32,
        kind: AckKind,
        packet_id: PacketId,
        reason: ReasonCode,
    ) {
        let congested = std::mem::take(&mut self.congested);
        let seq = self.next_held_seq;
        if let Some(session) = self.sessions[publisher as usize].as_mut() {
            if congested.is_empty() && session.held_acks.is_empty() {
                if let Some(online) = &session.online {
                    ack_when_stored(&self.persist, &online.writer, kind, packet_id, reason);
                }
            } else {
                self.next_held_seq += 1;
                let waits = u32::try_from(congested.len()).unwrap_or(u32::MAX);
                session.held_acks.hold(seq, kind, packet_id, reason, waits);
                for &slot in &congested {
                    if let Some(receiver) = self.sessions[slot as usize].as_mut() {
                        receiver.holding.push((publisher, Held::Ack(seq)));
                    }
                }
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
        if session.holding.is_empty() || !(force || session.outbox.is_drained()) {
            return;
        }
        let holding = std::mem::take(&mut session.holding);
        for (publisher, held) in holding {
            let Some(publisher) = self.sessions[publisher as usize].as_mut() else {
                continue;
            };
            let Some(online) = &publisher.online else {
                continue;
            };
            match held {
                Held::Ack(seq) => {
                    for ack in publisher.held_acks.release(seq) {
                        let (kind, id, reason) = (ack.kind, ack.packet_id, ack.reason);
                        ack_when_stored(&self.persist, &online.writer, kind, id, reason);
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
                let known = session.incoming_qos2.remove(&packet_id);
                if let (true, Some(journal)) = (known, &session.outbox.journal) {
                    journal.inbound_qos2(packet_id, false);
                    // PUBCOMP frees the id for the client: not before the store forgot it, or
                    // a new message reusing it after a crash would be taken for a resend.
                    let writer = online.writer.clone();
                    self.persist.when_stored(move || {
                        let _ = writer.send(Outbound::Ack(AckKind::PubComp, packet_id));
                    });
                    continue;
                }
                let _ = if known || !online.version.is_v5() {
                    online
                        .writer
                        .send(Outbound::Ack(AckKind::PubComp, packet_id))
                } else {
                    online.writer.send_packet(Packet::PubComp(Ack {
                        packet_id,
                        reason: ReasonCode::PacketIdentifierNotFound,
                        properties: AckProperties::default(),
                    }))
                };
            }
            return;
        }
        for &packet_id in packet_ids {
            let outcome = session
                .outbox
                .acknowledge(kind, packet_id, Some(&online.writer));
            if outcome == AckOutcome::Unknown {
                debug!(
                    "client {}: {kind:?} for packet id {packet_id} matches nothing in flight",
                    session.client_id
                );
            }
        }
        session.pump();
        self.release_held(from.slot, false);
    }
}
