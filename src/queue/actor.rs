//! The router: the singleton actor that owns every session, the subscription index, shared
//! subscription groups, retained messages and timers, and decides who receives each PUBLISH.
//!
//! Owns: session lifecycle (create, resume, take over, expire, end), routing with one shared
//! allocation per message, acknowledgements to publishers, CONNACK, SUBACK and UNSUBACK, wills
//! (delayed or not) and retained messages. Must not: block on a client (writers are only
//! reached through the non-blocking `ClientHandle` methods) or do socket I/O.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use log::{debug, info, warn};

use super::message::{Delivery, Message, SubscriptionIds};
use super::retained::RetainedStore;
use super::session::{AckOutcome, Enqueued, Held, Online, QueueLimits, Session, Subscription};
use super::shared::SharedGroups;
use super::subscriptions::SubscriptionTree;
use super::timers::{Timer, TimerKind, Timers};
use super::{ConnectRequest, ConnectionRef, Ending, Msg};
use crate::client::{AckKind, ClientHandle, Outbound};
use crate::config::Config;
use crate::mqtt::topic::{split_shared, validate_topic_filter};
use crate::mqtt::{
    Ack, AckProperties, ConnAck, ConnAckProperties, Disconnect, DisconnectProperties, Packet,
    PacketId, Publish, PublishProperties, QoS, ReasonCode, RetainHandling, SubAck, Subscribe,
    UnsubAck, Unsubscribe, Will,
};

/// Who a subscription in the index belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Target {
    Session(u32),
    /// A shared subscription group; one member gets each message.
    Group(u32),
}

/// One matching subscription while routing.
#[derive(Clone, Copy)]
struct Match {
    slot: u32,
    qos: QoS,
    retain_as_published: bool,
    identifier: Option<u32>,
}

pub struct QueueActor {
    rx: Receiver<Msg>,
    limits: QueueLimits,
    receive_maximum: u16,
    topic_alias_maximum: u16,
    max_packet_size: u32,
    /// Sessions by slot; a slot is reused after its session ends.
    sessions: Vec<Option<Session>>,
    free_slots: Vec<u32>,
    by_client_id: HashMap<Arc<str>, u32>,
    subscriptions: SubscriptionTree<Target, Subscription>,
    shared: SharedGroups,
    retained: RetainedStore,
    timers: Timers,
    /// Matches of the message being routed; kept between messages to avoid reallocating.
    matches: Vec<Match>,
    /// Congested sessions the message being routed was queued for.
    congested: Vec<u32>,
    /// Numbers held acknowledgements, so that a stale one is recognised.
    next_held_seq: u64,
}

impl QueueActor {
    pub(crate) fn new(rx: Receiver<Msg>, config: &Config) -> Self {
        QueueActor {
            rx,
            limits: QueueLimits::new(
                config.max_inflight_messages,
                config.max_queued_messages,
                config.router_queue_capacity,
            ),
            receive_maximum: config.receive_maximum,
            topic_alias_maximum: config.topic_alias_maximum,
            max_packet_size: u32::try_from(config.max_packet_size).unwrap_or(u32::MAX),
            sessions: Vec::new(),
            free_slots: Vec::new(),
            by_client_id: HashMap::new(),
            subscriptions: SubscriptionTree::new(),
            shared: SharedGroups::default(),
            retained: RetainedStore::default(),
            timers: Timers::default(),
            matches: Vec::new(),
            congested: Vec::new(),
            next_held_seq: 0,
        }
    }

    /// Handles messages and timers until every `QueueHandle` has been dropped.
    pub fn run(mut self) {
        loop {
            let next = match self.timers.next_deadline() {
                Some(deadline) => match self.rx.recv_deadline(deadline) {
                    Ok(msg) => Some(msg),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                None => match self.rx.recv() {
                    Ok(msg) => Some(msg),
                    Err(_) => break,
                },
            };
            if let Some(msg) = next {
                self.handle(msg);
            }
            if self.timers.next_deadline().is_some() {
                self.fire_timers(Instant::now());
            }
        }
        debug!("router stopped");
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Connect { request, reply } => {
                let from = self.handle_connect(*request);
                let _ = reply.send(from);
            }
            Msg::Publish {
                from,
                message,
                packet_id,
            } => self.handle_publish(from, message, packet_id),
            Msg::Ack {
                from,
                kind,
                packet_id,
            } => self.handle_acks(from, kind, &[packet_id]),
            Msg::PubAcks { from, packet_ids } => {
                self.handle_acks(from, AckKind::PubAck, &packet_ids)
            }
            Msg::Subscribe { from, subscribe } => self.handle_subscribe(from, subscribe),
            Msg::Unsubscribe { from, unsubscribe } => self.handle_unsubscribe(from, unsubscribe),
            Msg::Disconnect { from, ending } => self.handle_disconnect(from, ending),
            Msg::WriterDrained { from } => {
                if let Some(session) = attached(&mut self.sessions, from) {
                    session.pump();
                    self.release_held(from.slot, false);
                }
            }
            Msg::Shutdown { reply } => {
                self.handle_shutdown();
                let _ = reply.send(());
            }
        }
    }

    fn handle_connect(&mut self, request: ConnectRequest) -> ConnectionRef {
        let client_id: Arc<str> = Arc::from(request.client_id.as_str());
        let mut session_present = false;
        let resumed = match self.by_client_id.get(&client_id).copied() {
            Some(slot) => {
                self.take_over(slot);
                let session = self.sessions[slot as usize]
                    .as_mut()
                    .expect("the client id map points at live sessions");
                if request.clean_start || session.expiry == 0 {
                    // [MQTT-3.1.2-4] Clean start discards the session (a delayed will goes now).
                    self.end_session(slot);
                    None
                } else {
                    // [MQTT-3.1.3-9] A new connection before the will delay passed: no will.
                    session.delayed_will = None;
                    session_present = true;
                    Some(slot)
                }
            }
            None => None,
        };
        let slot = resumed.unwrap_or_else(|| {
            let session = Session::new(Arc::clone(&client_id), request.session_expiry, self.limits);
            let slot = self.insert_session(session);
            self.by_client_id.insert(client_id, slot);
            slot
        });

        let version = request.version;
        let writer = request.writer;
        writer.bind_session(slot);
        let mut properties = ConnAckProperties::default();
        if version.is_v5() {
            if request.assigned_client_id {
                // [MQTT-3.2.2-16]
                properties.assigned_client_identifier = Some(request.client_id.clone());
            }
            if self.receive_maximum < u16::MAX {
                properties.receive_maximum = Some(self.receive_maximum);
            }
            properties.maximum_packet_size = Some(self.max_packet_size);
            if self.topic_alias_maximum > 0 {
                properties.topic_alias_maximum = Some(self.topic_alias_maximum);
            }
            properties.server_keep_alive = request.server_keep_alive;
            if request.response_information {
                properties.response_information = Some(format!("response/{}", request.client_id));
            }
            // Retain, wildcard, subscription identifier and shared subscriptions are all
            // available, and QoS 2 is supported: their defaults say so, no property needed.
        }
        let _ = writer.send_packet(Packet::ConnAck(ConnAck {
            session_present,
            reason: ReasonCode::Success,
            properties,
        }));

        let session = self.sessions[slot as usize]
            .as_mut()
            .expect("slot was just filled or resumed");
        session.expiry = request.session_expiry;
        session.last_connection = request.connection_id;
        // Acknowledgements held for the previous connection are gone with it: the client
        // resends those PUBLISH packets.
        session.held_acks.clear();
        session.outbox.set_receive_maximum(request.receive_maximum);
        // [MQTT-4.4.0-1] Resend unacknowledged messages before anything new.
        session.outbox.resend_inflight(&writer);
        session.online = Some(Online {
            connection_id: request.connection_id,
            writer,
            version,
            will: request.will,
            max_packet_size: request.max_packet_size,
            problem_information: request.problem_information,
        });
        session.pump();
        ConnectionRef {
            slot,
            connection: request.connection_id,
        }
    }

    /// Closes the connection currently attached to `slot`, if any, and handles its will as for
    /// a lost connection [MQTT-3.1.4-3].
    fn take_over(&mut self, slot: u32) {
        let Some(session) = self.sessions[slot as usize].as_mut() else {
            return;
        };
        let Some(old) = session.online.take() else {
            return;
        };
        info!(
            "client {} taken over by a new connection",
            session.client_id
        );
        old.writer.close(Some(Disconnect {
            reason: ReasonCode::SessionTakenOver,
            properties: DisconnectProperties::default(),
        }));
        self.release_held(slot, true);
        if let Some(will) = old.will {
            self.schedule_will(slot, will);
        }
    }

    fn insert_session(&mut self, session: Session) -> u32 {
        match self.free_slots.pop() {
            Some(slot) => {
                self.sessions[slot as usize] = Some(session);
                slot
            }
            None => {
                self.sessions.push(Some(session));
                u32::try_from(self.sessions.len() - 1).expect("fewer than 4 billion sessions")
            }
        }
    }

    /// Removes a session and its subscriptions; a will still waiting out its delay is
    /// published now [MQTT-3.1.2-8].
    fn end_session(&mut self, slot: u32) {
        self.release_held(slot, true);
        let Some(mut session) = self.sessions[slot as usize].take() else {
            return;
        };
        for filter in session.filters.keys() {
            self.remove_subscription(filter, slot);
        }
        if session.outbox.dropped > 0 {
            warn!(
                "client {}: {} messages were dropped because its queue was full",
                session.client_id, session.outbox.dropped
            );
        }
        self.by_client_id.remove(&session.client_id);
        self.free_slots.push(slot);
        debug!("session of client {} ended", session.client_id);
        if let Some(will) = session.delayed_will.take() {
            self.publish_will(slot, will);
        }
    }

    fn handle_publish(
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
                    self.route(from.slot, message)
                } else {
                    self.congested.clear();
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
    fn route(&mut self, publisher: u32, message: Arc<Message>) -> usize {
        if message.publish.retain {
            self.retained.update(&message);
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
                Enqueued::Accepted => {}
                Enqueued::Congested => self.congested.push(slot),
                Enqueued::Dropped => note_drop(session),
            }
        }
        self.matches = matches;
        matched
    }

    /// Acknowledges a QoS 1 or 2 PUBLISH just routed: at once, or, when it was queued for
    /// congested sessions (or earlier acknowledgements are held), once they have drained.
    fn acknowledge(
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
                    send_ack(&online.writer, kind, packet_id, reason);
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
    fn hold_reader(&mut self, from: ConnectionRef) {
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
    fn release_held(&mut self, slot: u32, force: bool) {
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
                        send_ack(&online.writer, ack.kind, ack.packet_id, ack.reason);
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

    fn handle_acks(&mut self, from: ConnectionRef, kind: AckKind, packet_ids: &[PacketId]) {
        let Some(session) = attached(&mut self.sessions, from) else {
            return;
        };
        let Some(online) = &session.online else {
            return;
        };
        if kind == AckKind::PubRel {
            for &packet_id in packet_ids {
                let known = session.incoming_qos2.remove(&packet_id);
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

    fn handle_subscribe(&mut self, from: ConnectionRef, subscribe: Subscribe) {
        let Some(session) = attached(&mut self.sessions, from) else {
            return;
        };
        let Some(online) = &session.online else {
            return;
        };
        let writer = online.writer.clone();
        let problem_information = online.problem_information;
        let v5 = online.version.is_v5();
        let identifier = subscribe.properties.subscription_identifier;
        let mut reasons = Vec::with_capacity(subscribe.filters.len());
        let mut problems = Vec::new();
        let mut retained_for: Vec<(String, QoS)> = Vec::new();
        for (filter, options) in subscribe.filters {
            if let Err(e) = validate_topic_filter(&filter) {
                debug!(
                    "client {}: invalid filter {filter:?}: {e}",
                    session.client_id
                );
                problems.push(format!("{filter:?}: {e}"));
                reasons.push(ReasonCode::TopicFilterInvalid);
                continue;
            }
            let shared = split_shared(&filter).map(|(_, inner)| inner.to_owned());
            if shared.is_some() && options.no_local {
                // [MQTT-3.8.3-4] No Local on a shared subscription is a protocol error.
                writer.close(Some(Disconnect {
                    reason: ReasonCode::ProtocolError,
                    properties: DisconnectProperties {
                        reason_string: Some("No Local set on a shared subscription".into()),
                        ..Default::default()
                    },
                }));
                return;
            }
            let subscription = Subscription {
                options,
                identifier,
            };
            let existed = session
                .filters
                .insert(filter.clone(), subscription)
                .is_some();
            reasons.push(ReasonCode::granted(options.qos));
            if let Some(inner) = shared {
                let joined = self.shared.join(&filter, &inner, from.slot, subscription);
                if joined.new_group {
                    self.subscriptions
                        .insert(&inner, Target::Group(joined.group), subscription);
                }
                // 5.0 section 4.8.2: no retained messages for a shared subscription.
            } else {
                self.subscriptions
                    .insert(&filter, Target::Session(from.slot), subscription);
                // [MQTT-3.3.1-9..11] Retained messages on subscribe, as Retain Handling says.
                let send_retained = match options.retain_handling {
                    RetainHandling::SendOnSubscribe => true,
                    RetainHandling::SendIfNewSubscription => !existed,
                    RetainHandling::DoNotSend => false,
                };
                if send_retained {
                    retained_for.push((filter, options.qos));
                }
            }
        }
        let mut properties = AckProperties::default();
        if v5 && problem_information && !problems.is_empty() {
            // [MQTT-3.1.2-29] Only when the client did not ask us to leave it out.
            properties.reason_string =
                Some(format!("invalid topic filter {}", problems.join("; ")));
        }
        // [MQTT-3.8.4-1] SUBACK before the retained messages it lets through.
        let _ = writer.send_packet(Packet::SubAck(SubAck {
            packet_id: subscribe.packet_id,
            reasons,
            properties,
        }));
        let now = Instant::now();
        for (filter, granted) in retained_for {
            let messages = self.retained.matching(&filter, now);
            let Some(session) = self.sessions[from.slot as usize].as_mut() else {
                return;
            };
            for message in messages {
                // [MQTT-3.3.1-8] Sent because of a new subscription: retain flag set.
                let qos = message.publish.qos.min(granted);
                let ids = identifier.map_or(SubscriptionIds::None, SubscriptionIds::One);
                let delivery = Delivery::new(message, qos, true, ids);
                if session.deliver(delivery) == Enqueued::Dropped {
                    note_drop(session);
                }
            }
        }
    }

    /// Removes `slot`'s subscription to `filter` (plain or `$share/...`) from the index;
    /// true if there was one.
    fn remove_subscription(&mut self, filter: &str, slot: u32) -> bool {
        match split_shared(filter) {
            Some(_) => {
                let (removed, emptied) = self.shared.leave(filter, slot);
                if let Some((group, inner)) = emptied {
                    self.subscriptions.remove(&inner, Target::Group(group));
                }
                removed
            }
            None => self
                .subscriptions
                .remove(filter, Target::Session(slot))
                .is_some(),
        }
    }

    fn handle_unsubscribe(&mut self, from: ConnectionRef, unsubscribe: Unsubscribe) {
        let Some(session) = attached(&mut self.sessions, from) else {
            return;
        };
        let Some(online) = &session.online else {
            return;
        };
        let writer = online.writer.clone();
        let v5 = online.version.is_v5();
        let mut reasons = Vec::new();
        let mut existed_all = Vec::with_capacity(unsubscribe.filters.len());
        for filter in &unsubscribe.filters {
            existed_all.push(session.filters.remove(filter.as_str()).is_some());
        }
        for (filter, existed) in unsubscribe.filters.iter().zip(existed_all) {
            if existed {
                self.remove_subscription(filter, from.slot);
            }
            if v5 {
                // [MQTT-3.11.3-2] 0x11 where there was no such subscription.
                reasons.push(if existed {
                    ReasonCode::Success
                } else {
                    ReasonCode::NoSubscriptionExisted
                });
            }
        }
        // [MQTT-3.10.4-4] UNSUBACK even when nothing matched.
        let _ = writer.send_packet(Packet::UnsubAck(UnsubAck {
            packet_id: unsubscribe.packet_id,
            reasons,
            properties: AckProperties::default(),
        }));
    }

    fn handle_disconnect(&mut self, from: ConnectionRef, ending: Ending) {
        let Some(session) = attached(&mut self.sessions, from) else {
            // A connection that was taken over: its session belongs to the new one.
            return;
        };
        let Some(online) = session.online.take() else {
            return;
        };
        let publish_will = match ending {
            Ending::Abnormal => true,
            Ending::Disconnect(disconnect) => {
                // [MQTT-3.14.2-2] The reader refused a change from 0 to non-zero.
                if let Some(expiry) = disconnect.properties.session_expiry_interval {
                    session.expiry = expiry;
                }
                // [MQTT-3.14.4-3] A normal DISCONNECT discards the will; 0x04 keeps it.
                disconnect.reason == ReasonCode::DisconnectWithWillMessage
            }
        };
        drop(online.writer);
        session.held_acks.clear();
        self.release_held(from.slot, true);
        if let (true, Some(will)) = (publish_will, online.will) {
            self.schedule_will(from.slot, will);
        }
        self.schedule_session_end(from.slot);
    }

    /// Ends the session of `slot` now if its expiry is 0, or arms its expiry timer.
    fn schedule_session_end(&mut self, slot: u32) {
        let Some(session) = self.sessions[slot as usize].as_ref() else {
            return;
        };
        match session.expiry {
            0 => self.end_session(slot),
            u32::MAX => {}
            secs => self.timers.arm(
                Duration::from_secs(u64::from(secs)),
                Timer {
                    kind: TimerKind::SessionExpiry,
                    slot,
                    token: session.last_connection,
                },
            ),
        }
    }

    /// Publishes a will now, or keeps it for its Will Delay Interval [MQTT-3.1.3-9]. A session
    /// that ends sooner publishes it then.
    fn schedule_will(&mut self, slot: u32, will: Will) {
        let delay = will.properties.will_delay_interval.unwrap_or(0);
        let Some(session) = self.sessions[slot as usize].as_mut() else {
            return;
        };
        if delay == 0 || session.expiry == 0 {
            self.publish_will(slot, will);
            return;
        }
        session.delayed_will = Some(will);
        let token = session.last_connection;
        self.timers.arm(
            Duration::from_secs(u64::from(delay)),
            Timer {
                kind: TimerKind::WillDelay,
                slot,
                token,
            },
        );
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(timer) = self.timers.pop_due(now) {
            let Some(session) = self.sessions[timer.slot as usize].as_mut() else {
                continue;
            };
            // A connection attached since the timer was armed makes it stale.
            if session.online.is_some() || session.last_connection != timer.token {
                continue;
            }
            match timer.kind {
                TimerKind::WillDelay => {
                    if let Some(will) = session.delayed_will.take() {
                        self.publish_will(timer.slot, will);
                    }
                }
                TimerKind::SessionExpiry => {
                    debug!("session of client {} expired", session.client_id);
                    self.end_session(timer.slot);
                }
            }
        }
    }

    fn publish_will(&mut self, slot: u32, will: Will) {
        let Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        } = will;
        debug!("publishing will to {topic}");
        // [MQTT-3.1.3-10] The will's properties go with it.
        let publish = Publish {
            dup: false,
            qos,
            retain,
            topic,
            packet_id: None,
            properties: PublishProperties {
                payload_format_indicator: properties.payload_format_indicator,
                message_expiry_interval: properties.message_expiry_interval,
                topic_alias: None,
                response_topic: properties.response_topic,
                correlation_data: properties.correlation_data,
                user: properties.user,
                subscription_identifiers: Vec::new(),
                content_type: properties.content_type,
            },
            payload,
        };
        self.route(slot, Arc::new(Message::new(publish)));
    }

    fn handle_shutdown(&mut self) {
        for session in self.sessions.iter_mut().flatten() {
            if let Some(online) = session.online.take() {
                online.writer.close(Some(Disconnect {
                    reason: ReasonCode::ServerShuttingDown,
                    properties: DisconnectProperties::default(),
                }));
            }
        }
        info!("router closed every connection");
    }
}

/// The session `from` is attached to, if that connection still owns it.
fn attached(sessions: &mut [Option<Session>], from: ConnectionRef) -> Option<&mut Session> {
    let session = sessions.get_mut(from.slot as usize)?.as_mut()?;
    match &session.online {
        Some(online) if online.connection_id == from.connection => Some(session),
        _ => None,
    }
}

fn is_online(sessions: &[Option<Session>], slot: u32) -> bool {
    sessions
        .get(slot as usize)
        .and_then(Option::as_ref)
        .is_some_and(|s| s.online.is_some())
}

/// The reason code acknowledging a PUBLISH that matched `matched` sessions: v5 says 0x10 when
/// nobody was subscribed.
fn ack_reason(v5: bool, matched: usize) -> ReasonCode {
    if v5 && matched == 0 {
        ReasonCode::NoMatchingSubscribers
    } else {
        ReasonCode::Success
    }
}

/// Sends PUBACK or PUBREC for a received PUBLISH.
fn send_ack(writer: &ClientHandle, kind: AckKind, packet_id: PacketId, reason: ReasonCode) {
    if reason == ReasonCode::Success {
        let _ = writer.send(Outbound::Ack(kind, packet_id));
        return;
    }
    let ack = Ack {
        packet_id,
        reason,
        properties: AckProperties::default(),
    };
    let packet = match kind {
        AckKind::PubRec => Packet::PubRec(ack),
        _ => Packet::PubAck(ack),
    };
    let _ = writer.send_packet(packet);
}

/// Logs the first drop for a session and every thousandth after it.
fn note_drop(session: &Session) {
    let dropped = session.outbox.dropped;
    if dropped > 0 && (dropped == 1 || dropped.is_multiple_of(1000)) {
        warn!(
            "client {}: queue full ({} queued), {dropped} messages dropped so far",
            session.client_id,
            session.outbox.queued_len()
        );
    }
}

#[cfg(test)]
mod tests {
    //! The router driven without threads: messages are queued, every handle dropped, and the
    //! actor run to completion on the test thread; then what each writer got is checked.

    use super::*;
    use crate::mqtt::{ProtocolVersion, SubscribeProperties, SubscriptionOptions};
    use crossbeam_channel::Sender;

    struct Client {
        from: ConnectionRef,
        rx: Receiver<Outbound>,
    }

    fn connect(tx: &Sender<Msg>, id: &str, connection_id: u64, slot: u32) -> Client {
        let (writer, rx) = ClientHandle::for_tests(100);
        let (reply, _) = crossbeam_channel::bounded(1);
        let request = ConnectRequest {
            connection_id,
            client_id: id.into(),
            assigned_client_id: false,
            clean_start: true,
            session_expiry: 0,
            version: ProtocolVersion::V3_1_1,
            will: None,
            receive_maximum: u16::MAX,
            max_packet_size: None,
            problem_information: true,
            response_information: false,
            server_keep_alive: None,
            writer,
        };
        tx.send(Msg::Connect {
            request: Box::new(request),
            reply,
        })
        .expect("queued");
        Client {
            // Slots are given out in connection order from 0.
            from: ConnectionRef {
                slot,
                connection: connection_id,
            },
            rx,
        }
    }

    fn names(rx: &Receiver<Outbound>) -> Vec<String> {
        rx.try_iter()
            .map(|item| match item {
                Outbound::Publish { delivery, .. } => {
                    format!("PUBLISH {}", delivery.message.publish.topic)
                }
                Outbound::Ack(kind, id) => format!("{kind:?} {id}"),
                Outbound::Packet(packet) => packet.name().to_string(),
                Outbound::Close(_) => "close".to_string(),
            })
            .collect()
    }

    #[test]
    fn routes_a_qos1_publish_and_acknowledges_it() {
        let (tx, rx) = crossbeam_channel::bounded(64);
        let actor = QueueActor::new(rx, &Config::default());
        let subscriber = connect(&tx, "sub", 1, 0);
        let publisher = connect(&tx, "pub", 2, 1);
        let options = SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            ..Default::default()
        };
        tx.send(Msg::Subscribe {
            from: subscriber.from,
            subscribe: Subscribe {
                packet_id: PacketId::new(1).expect("non-zero"),
                filters: vec![("a/+".into(), options)],
                properties: SubscribeProperties::default(),
            },
        })
        .expect("queued");
        let publish = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "a/b".into(),
            packet_id: None,
            properties: PublishProperties::default(),
            payload: Arc::from(&b"x"[..]),
        };
        tx.send(Msg::Publish {
            from: publisher.from,
            message: Arc::new(Message::new(publish)),
            packet_id: PacketId::new(7),
        })
        .expect("queued");
        drop(tx);
        actor.run();
        assert_eq!(names(&subscriber.rx), ["CONNACK", "SUBACK", "PUBLISH a/b"]);
        assert_eq!(names(&publisher.rx), ["CONNACK", "PubAck 7"]);
    }

    #[test]
    fn messages_from_a_taken_over_connection_are_ignored() {
        let (tx, rx) = crossbeam_channel::bounded(64);
        let actor = QueueActor::new(rx, &Config::default());
        let old = connect(&tx, "same", 1, 0);
        let new = connect(&tx, "same", 2, 0);
        tx.send(Msg::Subscribe {
            from: old.from,
            subscribe: Subscribe {
                packet_id: PacketId::new(1).expect("non-zero"),
                filters: vec![("t".into(), SubscriptionOptions::default())],
                properties: SubscribeProperties::default(),
            },
        })
        .expect("queued");
        drop(tx);
        actor.run();
        // The old connection was closed by the takeover and its SUBSCRIBE went nowhere.
        assert_eq!(names(&old.rx), ["CONNACK", "close"]);
        assert_eq!(names(&new.rx), ["CONNACK"]);
    }
}
