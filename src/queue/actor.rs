//! The router: the singleton actor that owns every session, the subscription index, shared
//! subscription groups, retained messages and timers, and decides who receives each PUBLISH.
//!
//! Owns: the actor's state, its loop (messages and timers) and the dispatch of each `Msg`. The
//! handlers live beside it: `lifecycle` (CONNECT, DISCONNECT, takeover, expiry, wills,
//! shutdown), `routing` (PUBLISH, acknowledgements, flow control), `subscribing` (SUBSCRIBE,
//! UNSUBSCRIBE, retained messages on subscribe) and `sweep` (the periodic check of the flow
//! hold limit, the progress clock and drop reports); they share this file's imports and helpers.
//! Must not: block on a client (writers are only reached through the non-blocking
//! `ClientHandle` methods) or do socket I/O.

mod commits;
mod lifecycle;
mod recovery;
mod routing;
mod subscribing;
mod sweep;
mod sys;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use log::{debug, warn};

use super::budget::QueueBudget;
use super::message::{Delivery, Message, SubscriptionIds};
use super::persist::{receive_either, Persistence};
use super::retained::RetainedStore;
use super::session::{
    AckOutcome, Enqueued, Held, Online, QueueLimits, RetainedFeed, Session, Subscription,
};
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
    /// Position in the subscription tree's order, which a client's copies keep.
    seq: u32,
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
    /// The message being routed was refused somewhere because the broker's budget of queued
    /// bytes is spent (an MQTT 5 publisher is told 0x97).
    over_budget: bool,
    /// How long a congested session may hold publishers back (`Config::flow_hold_limit`).
    flow_hold_limit: Duration,
    /// How long a session may take nothing while messages wait (`Config::write_timeout`).
    write_timeout: Duration,
    /// A publisher with this many acknowledgements held has its reader held too
    /// (`Config::receive_maximum`).
    held_acks_limit: usize,
    /// When `sweep` runs next.
    next_sweep: Instant,
    /// The broker's counters (shared with every client thread) and `$SYS` reporting.
    stats: Arc<crate::sys::Stats>,
    sys: sys::SysClock,
    /// The store, when persistence is on.
    persist: Persistence,
    /// How long an MQTT 3.1/3.1.1 session that never expires is kept after all
    /// (`persistent_client_expiration`); MQTT 5 sessions asking for longer are capped to it
    /// when they go offline (`lifecycle::capped_session_expiry`).
    persistent_client_expiration: Option<u32>,
    /// `Config::maximum_qos` and `Config::retain_available`, announced in MQTT 5 CONNACKs.
    maximum_qos: QoS,
    retain_available: bool,
    /// `Config::upgrade_outgoing_qos`: deliver at the subscription's QoS.
    upgrade_outgoing_qos: bool,
    /// The sessions `sweep` looks at (`Session::needs_watching`); may hold stale or repeated
    /// slots, which the sweep sorts out.
    watched: Vec<u32>,
}

/// The fewest held acknowledgements that stop a publisher's reader (see `held_acks_limit`):
/// about 16 bytes each, so at most 16 KiB per publisher.
const HELD_ACKS_FLOOR: usize = 1024;

/// The most messages the router handles before it pumps the sessions they were queued for.
const FLUSH_EVERY: usize = 64;

impl QueueActor {
    pub(crate) fn new(rx: Receiver<Msg>, config: &Config) -> Self {
        let mut limits = QueueLimits::new(
            config.max_inflight_messages,
            config.max_queued_messages,
            config.router_queue_capacity,
        );
        limits.max_queued_bytes = config.max_queued_bytes;
        limits.queue_qos0_offline = config.queue_qos0_messages;
        limits.upgrade_outgoing_qos = config.upgrade_outgoing_qos;
        limits.budget = Arc::new(QueueBudget::new(config.max_queued_bytes_total));
        QueueActor {
            rx,
            limits,
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
            over_budget: false,
            flow_hold_limit: config.flow_hold_limit,
            write_timeout: config.write_timeout,
            // The window a publisher is granted: MQTT 5 clients are told it (Receive Maximum);
            // one that respects its own smaller window never reaches it, so a client that both
            // publishes and subscribes is never stopped from reading the acknowledgements it
            // owes (which would make two congested clients wait for each other).
            // At least HELD_ACKS_FLOOR: the default Receive Maximum is mosquitto's 20, and 3.1.1
            // clients are not told it, so so low a bound would stop their readers at once.
            held_acks_limit: usize::from(config.receive_maximum).max(HELD_ACKS_FLOOR),
            next_sweep: Instant::now() + sweep::SWEEP_EVERY,
            stats: Arc::default(),
            sys: sys::SysClock::new(config, Instant::now()),
            persist: Persistence::default(),
            persistent_client_expiration: config
                .persistent_client_expiration
                .map(|d| u32::try_from(d.as_secs().max(1)).unwrap_or(u32::MAX - 1)),
            watched: Vec::new(),
            maximum_qos: config.maximum_qos,
            retain_available: config.retain_available,
            upgrade_outgoing_qos: config.upgrade_outgoing_qos,
        }
    }

    /// The counters this router and its clients share.
    pub(crate) fn stats(&self) -> Arc<crate::sys::Stats> {
        Arc::clone(&self.stats)
    }

    /// Handles messages and timers until every `QueueHandle` has been dropped.
    pub fn run(mut self) {
        loop {
            let deadline = sys::earliest(self.timers.next_deadline(), self.sys_due())
                .map_or(self.next_sweep, |due| due.min(self.next_sweep));
            let received = match self.persist.replies() {
                // With persistence, windows of stored queues come back on a channel of their own.
                Some(replies) => receive_either(&self.rx, replies, Some(deadline)),
                None => self.rx.recv_deadline(deadline).map(Some),
            };
            let next = match received {
                Ok(msg) => msg,
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let woke_by_deadline = next.is_none();
            if let Some(msg) = next {
                self.handle(msg);
                self.unflushed += 1;
            }
            if self.timers.next_deadline().is_some() {
                self.fire_timers(Instant::now());
            }
            // Pump when the inbox is empty (no added latency) or after a batch.
            if self.unflushed >= FLUSH_EVERY || self.rx.is_empty() {
                self.sys_tick(woke_by_deadline);
                self.flush();
                let now = Instant::now();
                if now >= self.next_sweep {
                    self.sweep(now);
                    self.next_sweep = now + sweep::SWEEP_EVERY;
                }
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

    /// Puts a session on the sweep's list.
    fn watch(&mut self, slot: u32) {
        if let Some(session) = self.sessions[slot as usize].as_mut() {
            if !session.watched {
                session.watched = true;
                self.watched.push(slot);
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
                if session.outbox.queued_len() > 0 && !session.watched {
                    session.watched = true;
                    self.watched.push(slot);
                }
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
                // A resumed session may have messages waiting.
                self.watch(from.slot);
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
            Msg::Ping { from } => {
                if let Some(online) =
                    attached(&mut self.sessions, from).and_then(|s| s.online.as_ref())
                {
                    // Behind the acknowledgements still waiting for a commit, as it is behind
                    // those already sent (mosquitto's order).
                    let writer = online.writer.clone();
                    self.persist.when_stored(move || {
                        let _ = writer.send_packet(Packet::PingResp);
                    });
                }
            }
            Msg::PubAcks { from, packet_ids } => {
                self.handle_acks(from, AckKind::PubAck, &packet_ids)
            }
            Msg::Subscribe { from, subscribe } => self.handle_subscribe(from, subscribe),
            Msg::SubscribeRefusing {
                from,
                subscribe,
                refused,
            } => self.subscribe_refusing(from, subscribe, &refused),
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
            Msg::Storage(event) => self.handle_store_event(event),
            Msg::Queued { client_id, reply } => {
                // With persistence, a long queue is partly on disk: it counts too.
                let queued = self
                    .by_client_id
                    .get(client_id.as_str())
                    .and_then(|slot| self.sessions[*slot as usize].as_ref())
                    .map_or(0, |session| {
                        let on_disk = session.outbox.journal.as_ref().map_or(0, |j| j.on_disk());
                        session.outbox.queued_len() + usize::try_from(on_disk).unwrap_or(usize::MAX)
                    });
                let _ = reply.send(queued);
            }
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
    publisher: u32,
    writer: &ClientHandle,
    kind: AckKind,
    packet_id: PacketId,
    reason: ReasonCode,
) {
    if persist.is_on() {
        let writer = writer.clone();
        persist.when_stored_for(publisher, move || {
            send_ack(&writer, kind, packet_id, reason)
        });
    } else {
        send_ack(writer, kind, packet_id, reason);
    }
}

/// Sends PUBACK or PUBREC for a received PUBLISH.
fn send_ack(writer: &ClientHandle, kind: AckKind, packet_id: PacketId, reason: ReasonCode) {
    let _ = writer.send(ack_item(kind, packet_id, reason));
}

/// PUBACK or PUBREC as the writer takes it.
fn ack_item(kind: AckKind, packet_id: PacketId, reason: ReasonCode) -> Outbound {
    if reason == ReasonCode::Success {
        return Outbound::Ack(kind, packet_id);
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
    Outbound::Packet(Box::new(packet))
}

/// Sends held acknowledgements released together as one item: however many there are, they
/// count once against the writer's backlog (`Config::writer_backlog_limit`).
fn send_released(
    persist: &Persistence,
    publisher: u32,
    writer: &ClientHandle,
    acks: Vec<super::flow::HeldAck>,
) {
    let mut items: Vec<Outbound> = acks
        .into_iter()
        .map(|ack| ack_item(ack.kind, ack.packet_id, ack.reason))
        .collect();
    let item = match items.len() {
        0 => return,
        1 => items.pop().expect("one item"),
        _ => Outbound::Batch(items),
    };
    if persist.is_on() {
        // Behind the commit of what their PUBLISH (or PUBREL) stored, as any acknowledgement.
        let writer = writer.clone();
        persist.when_stored_for(publisher, move || {
            let _ = writer.send(item);
        });
    } else {
        let _ = writer.send(item);
    }
}

/// Counts one message dropped for a session, and logs the start of its drop episode.
fn note_drop(session: &mut Session, over_budget: bool, stats: &crate::sys::Stats) {
    sys::count_drop(stats, session);
    log_drop_start(session, over_budget);
}

/// Logs the start of a drop episode for a session (`sweep` reports how it goes on and ends).
fn log_drop_start(session: &mut Session, over_budget: bool) {
    if session.outbox.drops.take_start() {
        let state = if over_budget {
            "the broker's budget of queued bytes is spent"
        } else if session.online.is_none() {
            "offline, its queue is full"
        } else if session.outbox.overflowing {
            "not keeping up, its queue is full"
        } else {
            "its queue is at the hard limit"
        };
        warn!(
            "client {}: dropping messages ({state}, {} queued, {} bytes; budget {} bytes used)",
            session.client_id,
            session.outbox.queued_len(),
            session.outbox.queued_bytes(),
            session.outbox.budget_used(),
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
        connect_with_writer(tx, id, connection_id, slot, 100)
    }

    /// A client whose writer takes at most `capacity` deliveries.
    fn connect_with_writer(
        tx: &Sender<Msg>,
        id: &str,
        connection_id: u64,
        slot: u32,
        capacity: usize,
    ) -> Client {
        let (writer, rx) = ClientHandle::for_tests(capacity);
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
            read_acl: None,
            identity: Default::default(),
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
                Outbound::Flush => "flush".to_string(),
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

    fn publish_qos1(tx: &Sender<Msg>, from: ConnectionRef, topic: &str, id: u16) {
        tx.send(publish_msg(from, topic, QoS::AtLeastOnce, id))
            .expect("queued");
    }

    fn publish_msg(from: ConnectionRef, topic: &str, qos: QoS, id: u16) -> Msg {
        let publish = Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.into(),
            packet_id: None,
            properties: PublishProperties::default(),
            payload: Arc::from(&b"x"[..]),
        };
        Msg::Publish {
            from,
            message: Arc::new(Message::new(publish)),
            packet_id: PacketId::new(id),
        }
    }

    #[test]
    fn a_qos2_message_is_routed_when_released() {
        // mosquitto's order: PUBREC at once, the delivery on PUBREL, then PUBCOMP; a resend
        // before PUBREL is acknowledged again, a second resend ends the connection.
        let (tx, rx) = crossbeam_channel::bounded(64);
        let actor = QueueActor::new(rx, &Config::default());
        let subscriber = connect(&tx, "sub", 1, 0);
        let publisher = connect(&tx, "pub", 2, 1);
        subscribe(&tx, subscriber.from, "q", QoS::ExactlyOnce);
        tx.send(publish_msg(publisher.from, "q", QoS::ExactlyOnce, 3))
            .expect("queued");
        tx.send(publish_msg(publisher.from, "q", QoS::ExactlyOnce, 3))
            .expect("queued");
        let pubrel = |id| Msg::Ack {
            from: publisher.from,
            kind: AckKind::PubRel,
            packet_id: PacketId::new(id).expect("non-zero"),
        };
        tx.send(pubrel(3)).expect("queued");
        // Unknown: still a plain PUBCOMP.
        tx.send(pubrel(9)).expect("queued");
        for _ in 0..3 {
            tx.send(publish_msg(publisher.from, "q", QoS::ExactlyOnce, 4))
                .expect("queued");
        }
        drop(tx);
        actor.run();
        assert_eq!(names(&subscriber.rx), ["CONNACK", "SUBACK", "PUBLISH q"]);
        assert_eq!(
            names(&publisher.rx),
            [
                "CONNACK",
                "PubRec 3",
                "PubRec 3",
                "PubComp 3",
                "PubComp 9",
                "PubRec 4",
                "PubRec 4",
                "close"
            ]
        );
    }

    #[test]
    fn publishing_to_sys_or_share_is_not_authorized() {
        let (tx, rx) = crossbeam_channel::bounded(64);
        let actor = QueueActor::new(rx, &Config::default());
        let subscriber = connect(&tx, "sub", 1, 0);
        let publisher = connect(&tx, "pub", 2, 1);
        subscribe(&tx, subscriber.from, "$SYS/#", QoS::AtLeastOnce);
        tx.send(publish_msg(publisher.from, "$SYS/x", QoS::AtLeastOnce, 1))
            .expect("queued");
        tx.send(publish_msg(
            publisher.from,
            "$share/g/x",
            QoS::AtLeastOnce,
            2,
        ))
        .expect("queued");
        // A bridge's connection state is the one `$SYS` topic a client may publish.
        let state = "$SYS/broker/connection/b1/state";
        tx.send(publish_msg(publisher.from, state, QoS::AtLeastOnce, 3))
            .expect("queued");
        drop(tx);
        actor.run();
        // A 3.1.1 client hears a plain PUBACK; the message goes nowhere.
        assert_eq!(
            names(&publisher.rx),
            ["CONNACK", "PubAck 1", "PubAck 2", "PubAck 3"]
        );
        assert_eq!(
            names(&subscriber.rx),
            ["CONNACK", "SUBACK", &format!("PUBLISH {state}")]
        );
        assert!(routing::publish_denied("$SYS"));
        assert!(!routing::publish_denied("$SYSx/a"));
        assert!(routing::publish_denied("$SYS/broker/connection/a/b/state"));
    }

    #[test]
    fn a_publishers_own_copy_goes_before_its_puback() {
        let (tx, rx) = crossbeam_channel::bounded(64);
        let actor = QueueActor::new(rx, &Config::default());
        let client = connect(&tx, "self", 1, 0);
        subscribe(&tx, client.from, "me", QoS::AtLeastOnce);
        tx.send(publish_msg(client.from, "me", QoS::AtLeastOnce, 5))
            .expect("queued");
        drop(tx);
        actor.run();
        assert_eq!(
            names(&client.rx),
            ["CONNACK", "SUBACK", "PUBLISH me", "PubAck 5"]
        );
    }

    /// Handles what is in the inbox and pumps, as one round of `run` does.
    fn handle_all(actor: &mut QueueActor) {
        while let Ok(msg) = actor.rx.try_recv() {
            actor.handle(msg);
        }
        actor.flush();
    }

    #[test]
    fn a_congested_session_holds_publishers_only_until_the_hold_limit() {
        let (tx, rx) = crossbeam_channel::bounded(64);
        let config = Config {
            max_queued_messages: 2,
            ..Config::default()
        };
        let mut actor = QueueActor::new(rx, &config);
        // A subscriber whose writer takes nothing.
        let subscriber = connect_with_writer(&tx, "stuck", 1, 0, 0);
        let publisher = connect(&tx, "pub", 2, 1);
        subscribe(&tx, subscriber.from, "t", QoS::AtLeastOnce);
        for id in 1..=5 {
            publish_qos1(&tx, publisher.from, "t", id);
        }
        handle_all(&mut actor);
        // Past two queued the subscriber is congested: the later PUBACKs are held.
        assert_eq!(names(&publisher.rx), ["CONNACK", "PubAck 1", "PubAck 2"]);
        let start = Instant::now();
        actor.sweep(start + Duration::from_millis(100));
        assert!(names(&publisher.rx).is_empty(), "within the hold limit");
        // Past the hold limit the publisher is released ...
        actor.sweep(start + config.flow_hold_limit + Duration::from_millis(100));
        assert_eq!(names(&publisher.rx), ["PubAck 3", "PubAck 4", "PubAck 5"]);
        // ... and no longer held: what does not fit the subscriber's queue is dropped for it.
        publish_qos1(&tx, publisher.from, "t", 6);
        handle_all(&mut actor);
        assert_eq!(names(&publisher.rx), ["PubAck 6"]);
        let stuck = actor.sessions[0]
            .as_ref()
            .expect("the subscriber's session");
        assert_eq!((stuck.outbox.queued_len(), stuck.outbox.dropped), (5, 1));
        // Having taken nothing for the write timeout, the subscriber is disconnected.
        assert!(is_online(&actor.sessions, 0));
        actor.sweep(start + config.write_timeout + Duration::from_secs(1));
        assert!(
            !actor.by_client_id.contains_key("stuck"),
            "its session ended"
        );
        assert!(is_online(&actor.sessions, 1), "the publisher carries on");
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
