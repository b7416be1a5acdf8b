//! The router: the singleton actor that owns every session, the subscription index, shared
//! subscription groups, retained messages and timers, and decides who receives each PUBLISH.
//!
//! Owns: the actor's state, its loop (messages and timers) and the dispatch of each `Msg`. The
//! handlers live beside it: `lifecycle` (CONNECT, DISCONNECT, takeover, expiry, wills,
//! shutdown), `routing` (PUBLISH, acknowledgements, flow control) and `subscribing` (SUBSCRIBE,
//! UNSUBSCRIBE, retained messages on subscribe); they share this file's imports and helpers.
//! Must not: block on a client (writers are only reached through the non-blocking
//! `ClientHandle` methods) or do socket I/O.

mod lifecycle;
mod recovery;
mod routing;
mod subscribing;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use log::{debug, warn};

use super::message::{Delivery, Message, SubscriptionIds};
use super::persist::{receive_either, Persistence};
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
    /// Sessions queued for since the last flush: pumped once per batch of the inbox, so that
    /// each writer gets its messages in one `Outbound::Batch`.
    dirty: Vec<u32>,
    /// Messages handled since the last flush.
    unflushed: usize,
    /// The store, when persistence is on.
    persist: Persistence,
    /// How long an MQTT 3.1/3.1.1 session that never expires is kept after all
    /// (`persistent_client_expiration`).
    persistent_client_expiration: Option<u32>,
}

/// The most messages the router handles before it pumps the sessions they were queued for.
const FLUSH_EVERY: usize = 64;

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
            dirty: Vec::new(),
            unflushed: 0,
            persist: Persistence::default(),
            persistent_client_expiration: config
                .persistent_client_expiration
                .map(|d| u32::try_from(d.as_secs().max(1)).unwrap_or(u32::MAX - 1)),
        }
    }

    /// Handles messages and timers until every `QueueHandle` has been dropped.
    pub fn run(mut self) {
        loop {
            let next = match self.persist.replies() {
                // With persistence, windows of stored queues come back on a channel of their own.
                Some(replies) => {
                    match receive_either(&self.rx, replies, self.timers.next_deadline()) {
                        Ok(msg) => msg,
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                None => match self.timers.next_deadline() {
                    Some(deadline) => match self.rx.recv_deadline(deadline) {
                        Ok(msg) => Some(msg),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => break,
                    },
                    None => match self.rx.recv() {
                        Ok(msg) => Some(msg),
                        Err(_) => break,
                    },
                },
            };
            if let Some(msg) = next {
                self.handle(msg);
                self.unflushed += 1;
            }
            if self.timers.next_deadline().is_some() {
                self.fire_timers(Instant::now());
            }
            // Pump when the inbox is empty (no added latency) or after a batch.
            if self.unflushed >= FLUSH_EVERY || self.rx.is_empty() {
                self.flush();
            }
        }
        self.flush();
        // The sessions' journals hold storage handles: the storage actor stops once they and
        // ours are gone, after committing what it was sent.
        self.sessions.clear();
        self.persist.close();
        debug!("router stopped");
    }

    /// Marks a session as having messages to send.
    fn mark_dirty(&mut self, slot: u32) {
        if let Some(session) = self.sessions[slot as usize].as_mut() {
            if !session.dirty {
                session.dirty = true;
                self.dirty.push(slot);
            }
        }
    }

    /// Pumps every session queued for since the last flush.
    fn flush(&mut self) {
        self.unflushed = 0;
        let dirty = std::mem::take(&mut self.dirty);
        for &slot in &dirty {
            if let Some(session) = self.sessions[slot as usize].as_mut() {
                session.dirty = false;
                session.pump();
            }
            self.release_held(slot, false);
        }
        let mut dirty = dirty;
        dirty.clear();
        self.dirty = dirty;
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
            Msg::StoredWindow {
                slot,
                client_id,
                window,
            } => self.handle_stored_window(slot, &client_id, window),
        }
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

/// Sends PUBACK or PUBREC for a received PUBLISH once what routing it stored is committed.
fn ack_when_stored(
    persist: &Persistence,
    writer: &ClientHandle,
    kind: AckKind,
    packet_id: PacketId,
    reason: ReasonCode,
) {
    if persist.is_on() {
        let writer = writer.clone();
        persist.when_stored(move || send_ack(&writer, kind, packet_id, reason));
    } else {
        send_ack(writer, kind, packet_id, reason);
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

    fn subscribe(tx: &Sender<Msg>, from: ConnectionRef, filter: &str, qos: QoS) {
        let options = SubscriptionOptions {
            qos,
            ..Default::default()
        };
        tx.send(Msg::Subscribe {
            from,
            subscribe: Subscribe {
                packet_id: PacketId::new(1).expect("non-zero"),
                filters: vec![(filter.into(), options)],
                properties: SubscribeProperties::default(),
            },
        })
        .expect("queued");
    }

    fn names(rx: &Receiver<Outbound>) -> Vec<String> {
        rx.try_iter()
            .flat_map(|item| match item {
                Outbound::Batch(items) => items,
                single => vec![single],
            })
            .map(|item| match item {
                Outbound::Publish { delivery, .. } => {
                    format!("PUBLISH {}", delivery.message.publish.topic)
                }
                Outbound::Ack(kind, id) => format!("{kind:?} {id}"),
                Outbound::Packet(packet) => packet.name().to_string(),
                Outbound::Close(_) => "close".to_string(),
                Outbound::Batch(_) => unreachable!("flattened above"),
            })
            .collect()
    }

    #[test]
    fn routes_a_qos1_publish_and_acknowledges_it() {
        let (tx, rx) = crossbeam_channel::bounded(64);
        let actor = QueueActor::new(rx, &Config::default());
        let subscriber = connect(&tx, "sub", 1, 0);
        let publisher = connect(&tx, "pub", 2, 1);
        subscribe(&tx, subscriber.from, "a/+", QoS::AtLeastOnce);
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
        subscribe(&tx, old.from, "t", QoS::AtMostOnce);
        drop(tx);
        actor.run();
        // The old connection was closed by the takeover and its SUBSCRIBE went nowhere.
        assert_eq!(names(&old.rx), ["CONNACK", "close"]);
        assert_eq!(names(&new.rx), ["CONNACK"]);
    }
}
