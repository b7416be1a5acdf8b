//! The router: the singleton actor that owns every session, the subscription index and the
//! retained messages, and decides who receives each PUBLISH.
//!
//! Owns: session lifecycle (create, resume, take over, end), routing with one shared
//! allocation per message, acknowledgements to publishers, SUBACK and UNSUBACK, wills and
//! retained messages. Must not: block on a client (writers are only reached through the
//! non-blocking `ClientHandle` methods) or do socket I/O.

use std::collections::HashMap;
use std::sync::Arc;

use crossbeam_channel::Receiver;
use log::{debug, info, warn};

use super::retained::RetainedStore;
use super::session::{AckOutcome, Online, Session, Subscription};
use super::subscriptions::SubscriptionTree;
use super::{ConnectRequest, ConnectionRef, Ending, Msg};
use crate::client::{AckKind, Outbound};
use crate::config::Config;
use crate::mqtt::topic::{split_shared, validate_topic_filter};
use crate::mqtt::{
    Ack, ConnAck, ConnAckProperties, Disconnect, Packet, PacketId, Publish, PublishProperties, QoS,
    ReasonCode, RetainHandling, SubAck, Subscribe, UnsubAck, Unsubscribe, Will,
};

pub struct QueueActor {
    rx: Receiver<Msg>,
    max_inflight: usize,
    max_queued: usize,
    /// Sessions by slot; a slot is reused after its session ends.
    sessions: Vec<Option<Session>>,
    free_slots: Vec<u32>,
    by_client_id: HashMap<Arc<str>, u32>,
    subscriptions: SubscriptionTree<u32, Subscription>,
    retained: RetainedStore,
    /// Receivers of the message being routed; kept between messages to avoid reallocating.
    receivers: Vec<Receiver_>,
}

/// One matching subscription while routing.
#[derive(Clone, Copy)]
struct Receiver_ {
    slot: u32,
    qos: QoS,
    retain_as_published: bool,
}

impl QueueActor {
    pub(crate) fn new(rx: Receiver<Msg>, config: &Config) -> Self {
        QueueActor {
            rx,
            max_inflight: config.max_inflight_messages,
            max_queued: config.max_queued_messages,
            sessions: Vec::new(),
            free_slots: Vec::new(),
            by_client_id: HashMap::new(),
            subscriptions: SubscriptionTree::new(),
            retained: RetainedStore::default(),
            receivers: Vec::new(),
        }
    }

    /// Handles messages until every `QueueHandle` has been dropped.
    pub fn run(mut self) {
        while let Ok(msg) = self.rx.recv() {
            self.handle(msg);
        }
        debug!("router stopped");
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Connect { request, reply } => {
                let from = self.handle_connect(*request);
                let _ = reply.send(from);
            }
            Msg::Publish { from, publish } => self.handle_publish(from, *publish),
            Msg::Ack {
                from,
                kind,
                packet_id,
            } => self.handle_ack(from, kind, packet_id),
            Msg::Subscribe { from, subscribe } => self.handle_subscribe(from, subscribe),
            Msg::Unsubscribe { from, unsubscribe } => self.handle_unsubscribe(from, unsubscribe),
            Msg::Disconnect { from, ending } => self.handle_disconnect(from, ending),
            Msg::WriterDrained { from } => {
                if let Some(session) = self.session_of(from) {
                    session.pump();
                }
            }
            Msg::Shutdown { reply } => {
                self.handle_shutdown();
                let _ = reply.send(());
            }
        }
    }

    fn session_of(&mut self, from: ConnectionRef) -> Option<&mut Session> {
        attached(&mut self.sessions, from)
    }

    fn handle_connect(&mut self, request: ConnectRequest) -> ConnectionRef {
        let client_id: Arc<str> = Arc::from(request.client_id.as_str());
        let mut session_present = false;
        let slot = match self.by_client_id.get(&client_id).copied() {
            Some(slot) => {
                self.take_over(slot);
                let ended = self.sessions[slot as usize]
                    .as_ref()
                    .is_some_and(|s| s.expiry == 0);
                if request.clean_start || ended {
                    self.end_session(slot);
                    None
                } else {
                    session_present = true;
                    Some(slot)
                }
            }
            None => None,
        };
        let slot = slot.unwrap_or_else(|| {
            let session = Session::new(
                Arc::clone(&client_id),
                request.session_expiry,
                self.max_inflight,
                self.max_queued,
            );
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
                properties.assigned_client_identifier = Some(request.client_id.clone());
            }
            // Until shared subscriptions and subscription identifiers are implemented, a v5
            // client is told they are unavailable [MQTT-3.2.2-?]: see docs of the MQTT 5 issue.
            properties.shared_subscription_available = Some(false);
            properties.subscription_identifiers_available = Some(false);
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
        session.outbox.set_receive_maximum(request.receive_maximum);
        // [MQTT-4.4.0-1] Resend unacknowledged messages before anything new.
        session.outbox.resend_inflight(&writer);
        session.online = Some(Online {
            connection_id: request.connection_id,
            writer,
            version,
            will: request.will,
        });
        session.pump();
        ConnectionRef {
            slot,
            connection: request.connection_id,
        }
    }

    /// Closes the connection currently attached to `slot`, if any, publishing its will
    /// [MQTT-3.1.4-2].
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
            properties: Default::default(),
        }));
        if let Some(will) = old.will {
            self.publish_will(slot, will);
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

    /// Removes a session and its subscriptions.
    fn end_session(&mut self, slot: u32) {
        let Some(session) = self.sessions[slot as usize].take() else {
            return;
        };
        for filter in session.filters.keys() {
            self.subscriptions.remove(filter, slot);
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
    }

    fn handle_publish(&mut self, from: ConnectionRef, publish: Publish) {
        let Some(session) = self.session_of(from) else {
            return;
        };
        let Some(online) = &session.online else {
            return;
        };
        let writer = online.writer.clone();
        let v5 = online.version.is_v5();
        match (publish.qos, publish.packet_id) {
            (QoS::AtMostOnce, _) => {
                self.route(from.slot, publish);
            }
            (QoS::AtLeastOnce, Some(packet_id)) => {
                let matched = self.route(from.slot, publish);
                send_ack(&writer, AckKind::PubAck, packet_id, v5 && matched == 0);
            }
            (QoS::ExactlyOnce, Some(packet_id)) => {
                // [MQTT-4.3.3-2] Deliver once: a resent PUBLISH whose id awaits PUBREL is
                // only acknowledged again.
                let first = session.incoming_qos2.insert(packet_id);
                let matched = if first {
                    self.route(from.slot, publish)
                } else {
                    1
                };
                send_ack(&writer, AckKind::PubRec, packet_id, v5 && matched == 0);
            }
            (_, None) => debug!("PUBLISH with QoS > 0 and no packet id cannot be decoded"),
        }
    }

    /// Delivers `publish` to every matching session and updates the retained store. Returns
    /// how many sessions it matched.
    fn route(&mut self, publisher: u32, mut publish: Publish) -> usize {
        publish.dup = false;
        publish.packet_id = None;
        publish.properties.topic_alias = None;
        let message = Arc::new(publish);
        if message.retain {
            self.retained.update(&message);
        }

        let mut receivers = std::mem::take(&mut self.receivers);
        receivers.clear();
        self.subscriptions
            .for_each_match(&message.topic, |slot, subscription| {
                let options = subscription.options;
                // [MQTT-3.8.3-3] No Local: not back to the publisher.
                if options.no_local && slot == publisher {
                    return;
                }
                receivers.push(Receiver_ {
                    slot,
                    qos: options.qos,
                    retain_as_published: options.retain_as_published,
                });
            });
        // Overlapping subscriptions of one client get one copy at the highest QoS.
        receivers.sort_unstable_by_key(|r| r.slot);
        receivers.dedup_by(|later, kept| {
            if later.slot != kept.slot {
                return false;
            }
            kept.qos = kept.qos.max(later.qos);
            kept.retain_as_published |= later.retain_as_published;
            true
        });
        let matched = receivers.len();
        for receiver in &receivers {
            let Some(session) = self.sessions[receiver.slot as usize].as_mut() else {
                continue;
            };
            // [MQTT-3.3.1-9] The retain flag is cleared on forwarding, unless Retain As
            // Published asks to keep it.
            let retain = message.retain && receiver.retain_as_published;
            let qos = message.qos.min(receiver.qos);
            if !session.deliver(Arc::clone(&message), qos, retain) {
                note_drop(session);
            }
        }
        self.receivers = receivers;
        matched
    }

    fn handle_ack(&mut self, from: ConnectionRef, kind: AckKind, packet_id: PacketId) {
        let Some(session) = self.session_of(from) else {
            return;
        };
        let Some(online) = &session.online else {
            return;
        };
        let writer = online.writer.clone();
        if kind == AckKind::PubRel {
            let known = session.incoming_qos2.remove(&packet_id);
            let v5 = online.version.is_v5();
            if known || !v5 {
                let _ = writer.send(Outbound::Ack(AckKind::PubComp, packet_id));
            } else {
                let _ = writer.send_packet(Packet::PubComp(Ack {
                    packet_id,
                    reason: ReasonCode::PacketIdentifierNotFound,
                    properties: Default::default(),
                }));
            }
            return;
        }
        if session.outbox.acknowledge(kind, packet_id, Some(&writer)) == AckOutcome::Unknown {
            debug!(
                "client {}: {kind:?} for packet id {packet_id} matches nothing in flight",
                session.client_id
            );
        }
        session.pump();
    }

    fn handle_subscribe(&mut self, from: ConnectionRef, subscribe: Subscribe) {
        let Some(session) = attached(&mut self.sessions, from) else {
            return;
        };
        let Some(online) = &session.online else {
            return;
        };
        let writer = online.writer.clone();
        let mut reasons = Vec::with_capacity(subscribe.filters.len());
        let mut retained_for: Vec<(String, QoS)> = Vec::new();
        for (filter, options) in subscribe.filters {
            if let Err(e) = validate_topic_filter(&filter) {
                debug!(
                    "client {}: invalid filter {filter:?}: {e}",
                    session.client_id
                );
                reasons.push(ReasonCode::TopicFilterInvalid);
                continue;
            }
            if split_shared(&filter).is_some() {
                reasons.push(ReasonCode::SharedSubscriptionsNotSupported);
                continue;
            }
            let subscription = Subscription { options };
            let existed = session
                .filters
                .insert(filter.clone(), subscription)
                .is_some();
            self.subscriptions.insert(&filter, from.slot, subscription);
            reasons.push(ReasonCode::granted(options.qos));
            // [MQTT-3.3.1-6] Matching retained messages are sent on (re)subscribe.
            let send_retained = match options.retain_handling {
                RetainHandling::SendOnSubscribe => true,
                RetainHandling::SendIfNewSubscription => !existed,
                RetainHandling::DoNotSend => false,
            };
            if send_retained {
                retained_for.push((filter, options.qos));
            }
        }
        // [MQTT-3.8.4-1] SUBACK before the retained messages it lets through.
        let _ = writer.send_packet(Packet::SubAck(SubAck {
            packet_id: subscribe.packet_id,
            reasons,
            properties: Default::default(),
        }));
        for (filter, granted) in retained_for {
            let messages: Vec<Arc<Publish>> = self.retained.matching(&filter).cloned().collect();
            let Some(session) = self.sessions[from.slot as usize].as_mut() else {
                return;
            };
            for message in messages {
                let qos = message.qos.min(granted);
                // [MQTT-3.3.1-8] Sent because of a new subscription: retain flag set.
                if !session.deliver(message, qos, true) {
                    note_drop(session);
                }
            }
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
        for filter in &unsubscribe.filters {
            let existed = session.filters.remove(filter.as_str()).is_some();
            if existed {
                self.subscriptions.remove(filter, from.slot);
            }
            if v5 {
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
            properties: Default::default(),
        }));
    }

    fn handle_disconnect(&mut self, from: ConnectionRef, ending: Ending) {
        let Some(session) = self.session_of(from) else {
            // A connection that was taken over: its session belongs to the new one.
            return;
        };
        let Some(online) = session.online.take() else {
            return;
        };
        let publish_will = match ending {
            Ending::Abnormal => true,
            Ending::Disconnect(disconnect) => {
                if let Some(expiry) = disconnect.properties.session_expiry_interval {
                    // [MQTT-3.14.2-2] Changing 0 to non-zero is a protocol error; ignore it.
                    if session.expiry != 0 {
                        session.expiry = expiry;
                    }
                }
                // [MQTT-3.14.4-3] A normal DISCONNECT discards the will; 0x04 keeps it.
                disconnect.reason == ReasonCode::DisconnectWithWillMessage
            }
        };
        let ends = session.expiry == 0;
        drop(online.writer);
        if let (true, Some(will)) = (publish_will, online.will) {
            self.publish_will(from.slot, will);
        }
        if ends {
            self.end_session(from.slot);
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
        self.route(slot, publish);
    }

    fn handle_shutdown(&mut self) {
        for session in self.sessions.iter_mut().flatten() {
            if let Some(online) = session.online.take() {
                online.writer.close(Some(Disconnect {
                    reason: ReasonCode::ServerShuttingDown,
                    properties: Default::default(),
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

/// Acknowledges a QoS 1 or 2 PUBLISH; v5 says 0x10 when nobody was subscribed.
fn send_ack(
    writer: &crate::client::ClientHandle,
    kind: AckKind,
    packet_id: PacketId,
    no_subscribers: bool,
) {
    if !no_subscribers {
        let _ = writer.send(Outbound::Ack(kind, packet_id));
        return;
    }
    let ack = Ack {
        packet_id,
        reason: ReasonCode::NoMatchingSubscribers,
        properties: Default::default(),
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
