//! One client session as the router keeps it: who is connected, what it subscribed to, and
//! the outbound queue with its in-flight window.
//!
//! Owns: packet-id allocation, the QoS 1 and 2 outbound state machines, the bounded queue
//! behind the window (in messages and bytes) and its overflow policy, the progress clock (since
//! when queued messages have waited without the client taking any), retained messages still to
//! be fed in after a SUBSCRIBE, and the inbound QoS 2 ids awaiting PUBREL.
//! Must not: match topics or touch other sessions; it only ever uses the non-blocking
//! `ClientHandle` methods, so a slow client cannot stall the router.

use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Instant;

use log::debug;

use super::budget::QueueBudget;
use super::flow::{DropLog, HeldAcks};
use super::message::{Delivery, Message, SubscriptionIds};
use super::persist::Journal;
use crate::client::{AckKind, ClientHandle, Outbound};
use crate::mqtt::{PacketId, ProtocolVersion, PublishView, QoS, SubscriptionOptions, Will};

/// The bounds of one session's outbound queue.
#[derive(Debug, Clone)]
pub(super) struct QueueLimits {
    /// QoS 1/2 messages in flight (before the client's own Receive Maximum).
    pub max_inflight: usize,
    /// Queued messages beyond which an online session is congested and an offline one (or an
    /// online one whose congestion outlasted the hold limit) drops.
    pub max_queued: usize,
    /// The same in bytes (`Delivery::weight`); 0 for none.
    pub max_queued_bytes: usize,
    /// The most an online session queues while flow control holds its publishers: they stop
    /// within about twice the router's inbox, so this leaves room for that overshoot.
    pub hard_limit: usize,
    /// The broker-wide budget every session's queue draws on.
    pub budget: Arc<QueueBudget>,
    /// `queue_qos0_messages`: QoS 0 messages are queued offline too.
    pub queue_qos0_offline: bool,
    /// `upgrade_outgoing_qos`: retained messages go at the subscription's QoS.
    pub upgrade_outgoing_qos: bool,
}

impl QueueLimits {
    pub fn new(max_inflight: usize, max_queued: usize, router_queue_capacity: usize) -> Self {
        QueueLimits {
            max_inflight,
            max_queued,
            max_queued_bytes: 0,
            hard_limit: max_queued
                .saturating_mul(10)
                .max(max_queued.saturating_add(router_queue_capacity.saturating_mul(3))),
            budget: Arc::new(QueueBudget::new(0)),
            queue_qos0_offline: false,
            upgrade_outgoing_qos: false,
        }
    }
}

/// One subscription as the index stores it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Subscription {
    pub options: SubscriptionOptions,
    /// The Subscription Identifier given with it (MQTT 5), sent back with each delivery.
    pub identifier: Option<u32>,
}

/// The connection currently attached to a session.
pub(super) struct Online {
    pub connection_id: u64,
    pub writer: ClientHandle,
    pub version: ProtocolVersion,
    pub will: Option<Will>,
    /// The client's Maximum Packet Size (MQTT 5): larger messages are not sent to it.
    pub max_packet_size: Option<u32>,
    /// Whether reason strings and user properties may go on acknowledgements (MQTT 5
    /// Request Problem Information).
    pub problem_information: bool,
}

pub(super) struct Session {
    pub client_id: Arc<str>,
    /// Read access control of the client last attached (None: no ACL file).
    pub read_acl: Option<crate::auth::ReadAcl>,
    /// Seconds the session outlives its connection; 0 ends it with the connection.
    pub expiry: u32,
    pub online: Option<Online>,
    /// Filters this session holds in the subscription index, to remove them when it ends.
    pub filters: HashMap<String, Subscription>,
    /// QoS 2 packet ids received and acknowledged with PUBREC, awaiting PUBREL: a PUBLISH
    /// resent with one of these ids is not delivered again.
    pub incoming_qos2: HashSet<PacketId>,
    /// Those of `incoming_qos2` already resent once: a second resend before PUBREL closes the
    /// connection as a protocol error, as mosquitto 2.0 does.
    pub incoming_qos2_resent: HashSet<PacketId>,
    /// The messages of `incoming_qos2`, routed when their PUBREL arrives (mosquitto's order:
    /// a QoS 2 message reaches subscribers after the publisher released it). At most Receive
    /// Maximum of them.
    pub incoming_qos2_held: HashMap<PacketId, Arc<Message>>,
    pub outbox: Outbox,
    /// The id of the last connection attached; timers armed when it ended carry it, so a
    /// timer outlived by a reconnect is recognised and ignored.
    pub last_connection: u64,
    /// A will waiting out its Will Delay Interval after the connection ended (MQTT 5).
    pub delayed_will: Option<Will>,
    /// Messages were queued since the last pump (the router's list of sessions to pump).
    pub dirty: bool,
    /// This session as a publisher: its acknowledgements held back by congested receivers.
    pub held_acks: HeldAcks,
    /// This session as a congested receiver: what it holds back of which publisher (by slot)
    /// until its queue drains.
    pub holding: Vec<(u32, Held)>,
    /// In the router's list of sessions its sweep looks at.
    pub watched: bool,
    /// Retained messages matched by a SUBSCRIBE and not yet queued: fed into the queue a
    /// window at a time as the client takes them, so that a large retained set is streamed
    /// at the client's pace instead of overflowing its queue.
    pub retained_feeds: VecDeque<RetainedFeed>,
    /// Recovered from the store without the identity its ACL needs (a record written before
    /// identities were stored, or its listener is gone) while ACLs are configured, and not
    /// reconnected since: what is queued meanwhile is checked when the client returns, and
    /// its will is not published.
    pub acl_unchecked: bool,
}

/// Retained messages for one subscription, still to be queued.
pub(super) struct RetainedFeed {
    pub messages: std::vec::IntoIter<Arc<Message>>,
    /// The QoS granted to the subscription.
    pub granted: QoS,
    pub identifier: Option<u32>,
}

/// Retained messages are fed into a session's queue while it holds fewer than this (or half
/// of `max_queued`, if smaller).
const RETAINED_WINDOW: usize = 256;
/// An online session with fewer messages than this queued still queues when the broker's
/// budget is spent: it keeps up, and the writer's channel bounds what it holds.
const BUDGET_EXEMPT_QUEUE: usize = 16;

/// What a congested session holds back of a publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Held {
    /// A QoS 1/2 acknowledgement, by its sequence number in the publisher's `HeldAcks`.
    Ack(u64),
    /// The reader of the publisher's connection (QoS 0), by connection id.
    Reader(u64),
}

/// What became of a message handed to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Enqueued {
    /// Sent or queued.
    Accepted,
    /// Queued, but the session is congested: slow the publisher down.
    Congested,
    /// Not queued because the session is offline and the message is QoS 0 (not a drop).
    Skipped,
    /// Dropped: the session's queue is at its limit.
    Dropped,
    /// Dropped: the broker-wide budget of queued bytes is spent.
    OverBudget,
}

impl Session {
    /// May this session's client's will go to `topic` (true without an ACL)? Never when the
    /// session was recovered without the identity its ACL needs: fail closed.
    pub fn may_send_will(&self, topic: &str) -> bool {
        will_permitted(
            &self.client_id,
            self.read_acl.as_ref(),
            self.acl_unchecked,
            topic,
        )
    }

    /// May this session receive a message published to `topic` (its ACL; true without one)?
    pub fn may_read(&self, topic: &str) -> bool {
        self.read_acl.as_ref().is_none_or(|acl| acl.may_read(topic))
    }

    pub fn new(client_id: Arc<str>, expiry: u32, limits: QueueLimits) -> Self {
        Session {
            client_id,
            expiry,
            online: None,
            filters: HashMap::new(),
            incoming_qos2: HashSet::new(),
            incoming_qos2_resent: HashSet::new(),
            incoming_qos2_held: HashMap::new(),
            outbox: Outbox::new(limits),
            last_connection: 0,
            delayed_will: None,
            dirty: false,
            held_acks: HeldAcks::default(),
            holding: Vec::new(),
            retained_feeds: VecDeque::new(),
            acl_unchecked: false,
            read_acl: None,
            watched: false,
        }
    }

    /// Whether the router's sweep has anything to look at here: messages waiting (the
    /// progress clock), congestion (the hold limit), held acknowledgements, drops to report.
    pub fn needs_watching(&self) -> bool {
        self.outbox.queued_len() > 0
            || !self.retained_feeds.is_empty()
            || self.outbox.drops.is_active()
            || self.outbox.congested_since.is_some()
            || self.outbox.overflowing
            || !self.held_acks.is_empty()
            || !self.holding.is_empty()
    }

    /// Queues a message for this session. It is sent by the next `pump`: the router pumps the
    /// sessions it queued for once per batch of its inbox, so that each writer gets one batch.
    pub fn deliver(&mut self, delivery: Delivery) -> Enqueued {
        let online = self.online.is_some();
        self.outbox.enqueue(delivery, online)
    }

    /// Sends queued messages while the window and the writer have room, feeding in retained
    /// messages still waiting as the queue empties.
    pub fn pump(&mut self) {
        if self.online.is_none() {
            return;
        }
        loop {
            self.feed_retained();
            if let Some(online) = &self.online {
                self.outbox.pump(online);
            }
            // Again only if everything went and more is to come (a feed that leaves the queue
            // empty has run out: what the budget refused it dropped).
            if self.retained_feeds.is_empty() || self.outbox.queued_len() > 0 {
                break;
            }
        }
    }

    /// Moves retained messages from the feeds into the queue while it is short.
    fn feed_retained(&mut self) {
        let window = RETAINED_WINDOW.min(self.outbox.max_queued / 2).max(1);
        while self.outbox.queued_len() < window {
            let Some(feed) = self.retained_feeds.front_mut() else {
                break;
            };
            let Some(message) = feed.messages.next() else {
                self.retained_feeds.pop_front();
                continue;
            };
            // [MQTT-3.3.1-8] Sent because of a new subscription: retain flag set.
            let qos = if self.outbox.upgrade_outgoing_qos {
                feed.granted
            } else {
                message.publish.qos.min(feed.granted)
            };
            let ids = feed
                .identifier
                .map_or(SubscriptionIds::None, SubscriptionIds::One);
            // Over the broker's budget it is dropped and counted, as any other message.
            self.outbox
                .push_retained(Delivery::new(message, qos, true, ids));
        }
    }
}

/// Where an outbound QoS 1 or 2 message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Sent; waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published,
    /// PUBREL sent; waiting for PUBCOMP.
    Released,
}

struct InFlight {
    packet_id: PacketId,
    /// Which id this was in the session's sequence of ids (see `Outbox::id_serial`).
    serial: u64,
    delivery: Delivery,
    stage: Stage,
}

/// What one session holds, as `Outbox::census` counts it.
pub(super) struct OutboxCensus {
    pub inflight: u64,
    pub inflight_bytes: u64,
    pub queued: u64,
    pub queued_bytes: u64,
}

/// Packet ids run 1..=65535 and then wrap.
const ID_RING: u64 = 65_535;

/// Outbound messages of one session: the in-flight window, oldest first, and the queue behind
/// it. Order is kept: nothing overtakes a queued message.
pub(super) struct Outbox {
    inflight: VecDeque<InFlight>,
    queued: VecDeque<Delivery>,
    next_packet_id: u16,
    /// How many ids have been taken from the ring: an in-flight id can come round again only
    /// after `ID_RING` more.
    id_serial: u64,
    /// The in-flight limit for the current connection.
    window: usize,
    max_inflight: usize,
    max_queued: usize,
    max_queued_bytes: usize,
    hard_limit: usize,
    /// The bytes bound while flow control holds publishers (ten times `max_queued_bytes`).
    hard_bytes: usize,
    /// What `queued` holds, in bytes as `queued_size` counts them, and how many are QoS 0.
    queued_bytes: usize,
    queued_qos0: usize,
    budget: Arc<QueueBudget>,
    queue_qos0_offline: bool,
    pub upgrade_outgoing_qos: bool,
    /// Since when this online session is congested (holding its publishers back), or since
    /// the sweep last found it taking its messages fast enough to go on holding them.
    pub congested_since: Option<Instant>,
    /// Deliveries the client has taken since the session began, and the count when
    /// `congested_since` was set: how fast a congested client drains.
    pub taken: u64,
    pub taken_at_congestion: u64,
    /// Congestion lasted longer than the hold limit: publishers were released and this
    /// session's own limits apply (overflow dropped) until its queue has drained to half.
    pub overflowing: bool,
    /// Since when messages have waited in the queue without the client taking any (the
    /// progress clock: a client that takes nothing for the write timeout is disconnected).
    pub stalled_since: Option<Instant>,
    /// The writer's byte count when the sweep last looked: bytes accepted since count as
    /// progress too (a slow reader is working through a large batch).
    pub bytes_seen: u64,
    /// Messages dropped because the queue or the budget was full, since the session began.
    pub dropped: u64,
    pub drops: DropLog,
    /// The store's copy of this queue, for a kept session with persistence on.
    pub journal: Option<Journal>,
}

/// What an acknowledgement from the client did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AckOutcome {
    /// It completed or advanced a flow.
    Matched,
    /// No message in flight was waiting for it.
    Unknown,
    /// A message in flight has this id but waits for another acknowledgement.
    WrongKind,
}

impl Outbox {
    pub fn new(limits: QueueLimits) -> Self {
        let QueueLimits {
            max_inflight,
            max_queued,
            max_queued_bytes,
            hard_limit,
            budget,
            queue_qos0_offline,
            upgrade_outgoing_qos,
        } = limits;
        Outbox {
            inflight: VecDeque::new(),
            queued: VecDeque::new(),
            next_packet_id: 1,
            id_serial: 0,
            window: max_inflight,
            max_inflight,
            max_queued,
            max_queued_bytes,
            hard_limit,
            hard_bytes: max_queued_bytes.saturating_mul(10),
            queued_bytes: 0,
            queued_qos0: 0,
            budget,
            queue_qos0_offline,
            upgrade_outgoing_qos,
            congested_since: None,
            taken: 0,
            taken_at_congestion: 0,
            overflowing: false,
            stalled_since: None,
            bytes_seen: 0,
            dropped: 0,
            drops: DropLog::default(),
            journal: None,
        }
    }

    /// Sets the window for a new connection: the configured limit, or less if the client's
    /// receive maximum is lower; restarts the progress clock.
    pub fn set_receive_maximum(&mut self, receive_maximum: u16) {
        self.window = self.max_inflight.min(usize::from(receive_maximum)).max(1);
        // The progress clock is the connection's: a new one starts afresh.
        self.stalled_since = None;
        self.bytes_seen = 0;
    }

    /// The queue policy. Offline: QoS 0 is not stored (as mosquitto does by default, unless
    /// `queue_qos0_offline`) and QoS
    /// 1/2 up to `max_queued` messages and `max_queued_bytes`. Online: beyond those too, while
    /// the router slows the publishers (holding QoS 1/2 acknowledgements, or the reader of a
    /// QoS 0 publisher), up to hard limits (`QueueLimits::hard_limit`, ten times the bytes)
    /// that only publishers ignoring flow control reach; once the congestion has outlasted the
    /// hold limit (`overflowing`), the session's own limits apply again. At a limit, a QoS 1/2
    /// message takes the place of the oldest queued QoS 0 one; otherwise the new message is
    /// dropped. Every queued byte is also taken from the broker's budget. A kept session with
    /// persistence on stores each QoS 1/2 message it queues, and a long queue of one lives on
    /// disk (counted in messages against the limits, not in bytes: it takes no memory).
    fn enqueue(&mut self, mut delivery: Delivery, online: bool) -> Enqueued {
        let qos0 = delivery.qos == QoS::AtMostOnce;
        if !online && qos0 && !self.queue_qos0_offline {
            return Enqueued::Skipped;
        }
        let size = queued_size(&delivery);
        let holding = online && !self.overflowing;
        let (max_len, max_bytes) = if holding {
            (self.hard_limit, self.hard_bytes)
        } else {
            (self.max_queued, self.max_queued_bytes)
        };
        let on_disk = self.journal.as_ref().map_or(0, Journal::on_disk);
        while self.queued.len() as u64 + on_disk >= max_len as u64
            || (max_bytes > 0 && self.queued_bytes + size > max_bytes)
        {
            if qos0 || !self.drop_oldest_qos0() {
                self.count_drop(qos0);
                return Enqueued::Dropped;
            }
        }
        if let Some(journal) = self.journal.as_mut() {
            if !qos0 && journal.spills(online, self.queued.len()) {
                // A long queue of a kept session lives on disk; windows come back as it drains.
                journal.spill(delivery);
                return Enqueued::Accepted;
            }
        }
        if !self.budget.take(size, qos0) {
            // A session that keeps up (its queue nearly empty) is not made to pay for the
            // sessions that hoard: the budget refuses only those with a backlog.
            if !online || self.queued.len() >= BUDGET_EXEMPT_QUEUE {
                self.count_drop(qos0);
                return Enqueued::OverBudget;
            }
            self.budget.take_anyway(size);
        }
        if let Some(journal) = &self.journal {
            journal.queued(&mut delivery);
        }
        self.push(delivery, size);
        if holding && self.is_congested() {
            if self.congested_since.is_none() {
                self.congested_since = Some(Instant::now());
                self.taken_at_congestion = self.taken;
            }
            Enqueued::Congested
        } else {
            Enqueued::Accepted
        }
    }

    /// Queues a retained message fed in after a SUBSCRIBE (the feed keeps the queue short, so
    /// only the broker's budget can refuse it, and then it is dropped). A kept session stores
    /// it as any other message, unless part of its queue is on disk: that part comes first and
    /// is read back after what memory holds, so this one stays in memory only.
    fn push_retained(&mut self, mut delivery: Delivery) {
        let size = queued_size(&delivery);
        if !self.budget.take(size, delivery.qos == QoS::AtMostOnce) {
            self.count_drop(delivery.qos == QoS::AtMostOnce);
            return;
        }
        if let Some(journal) = self.journal.as_ref().filter(|j| j.on_disk() == 0) {
            journal.queued(&mut delivery);
        }
        self.push(delivery, size);
    }

    fn push(&mut self, delivery: Delivery, size: usize) {
        self.queued_bytes += size;
        self.queued_qos0 += usize::from(delivery.qos == QoS::AtMostOnce);
        self.queued.push_back(delivery);
    }

    /// Takes the front of the queue, giving its bytes back.
    fn pop(&mut self) -> Option<Delivery> {
        let delivery = self.queued.pop_front()?;
        self.forget(&delivery);
        Some(delivery)
    }

    fn forget(&mut self, delivery: &Delivery) {
        let size = queued_size(delivery);
        self.queued_bytes -= size;
        self.queued_qos0 -= usize::from(delivery.qos == QoS::AtMostOnce);
        self.budget.give_back(size);
    }

    /// Drops the oldest queued QoS 0 message to make room; false if there is none.
    fn drop_oldest_qos0(&mut self) -> bool {
        if self.queued_qos0 == 0 {
            return false;
        }
        let Some(index) = self.queued.iter().position(|d| d.qos == QoS::AtMostOnce) else {
            return false;
        };
        let dropped = self.queued.remove(index).expect("position() found it");
        self.forget(&dropped);
        self.count_drop(true);
        true
    }

    fn count_drop(&mut self, qos0: bool) {
        self.dropped += 1;
        self.drops.record(qos0, Instant::now());
    }

    /// More is queued than `max_queued` (or `max_queued_bytes`): publishers to this session
    /// are to be slowed down.
    pub fn is_congested(&self) -> bool {
        self.queued.len() > self.max_queued
            || (self.max_queued_bytes > 0 && self.queued_bytes > self.max_queued_bytes)
    }

    /// Whether a congested client, at the pace it took messages since the congestion began
    /// (or was last checked), would drain its queue to half within as long again: it keeps up
    /// well enough for flow control to go on, losslessly.
    pub fn keeps_up(&self) -> bool {
        let taken = self.taken - self.taken_at_congestion;
        let to_drain = self.queued.len().saturating_sub(self.max_queued / 2) as u64;
        taken > 0 && taken >= to_drain
    }

    /// The queue is back to half of its limits: held acknowledgements may go, and a
    /// congestion episode is over.
    pub fn is_drained(&self) -> bool {
        self.queued.len() <= self.max_queued / 2
            && (self.max_queued_bytes == 0 || self.queued_bytes <= self.max_queued_bytes / 2)
    }

    /// Bytes queued behind the window, as the limits count them.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Bytes queued in the whole broker.
    pub fn budget_used(&self) -> usize {
        self.budget.used()
    }

    fn pump(&mut self, online: &Online) {
        let writer = &online.writer;
        let mut room = writer.room();
        let mut byte_room = writer.byte_room();
        let mut batch = Vec::new();
        let mut taken = false;
        let mut awaits_commit = false;
        while let Some(next) = self.queued.front() {
            if next.qos != QoS::AtMostOnce && self.inflight.len() >= self.window {
                break;
            }
            // A stored QoS 2 delivery goes out once its commit is done (`Journal::may_send`).
            if let Some(journal) = self.journal.as_mut() {
                if !journal.may_send(next) {
                    awaits_commit = true;
                    break;
                }
            }
            if room == 0 || byte_room == 0 {
                break;
            }
            byte_room = byte_room.saturating_sub(next.weight());
            let delivery = self.pop().expect("front() was Some");
            taken = true;
            self.taken += 1;
            // A QoS 1/2 message skipped here still uses up a packet id, as with mosquitto
            // (which numbers messages when it queues them), so the ids a client sees match.
            if delivery.may_expire && delivery.message.is_expired() {
                if delivery.qos != QoS::AtMostOnce {
                    self.allocate_packet_id();
                }
                self.finished(&delivery);
                continue;
            }
            if let Some(max) = online.max_packet_size {
                // [MQTT-3.1.2-25] Too large for this client: discarded as if sent.
                let size = delivery_size(&delivery, online.version);
                if size > max as usize {
                    debug!("message of {size} bytes exceeds the client's maximum of {max}");
                    if delivery.qos != QoS::AtMostOnce {
                        self.allocate_packet_id();
                    }
                    self.finished(&delivery);
                    continue;
                }
            }
            let packet_id = if delivery.qos == QoS::AtMostOnce {
                None
            } else {
                let packet_id = self.allocate_packet_id();
                self.inflight.push_back(InFlight {
                    packet_id,
                    serial: self.id_serial - 1,
                    delivery: delivery.clone(),
                    stage: Stage::Published,
                });
                if let Some(journal) = &self.journal {
                    journal.sent(&delivery, packet_id);
                }
                Some(packet_id)
            };
            batch.push(Outbound::Publish {
                delivery,
                packet_id,
                dup: false,
            });
            room -= 1;
        }
        if room == 0 || byte_room == 0 {
            writer.request_drain_notice();
        }
        // The progress clock: it runs while messages wait and the client takes none.
        self.stalled_since = match (self.queued.is_empty() || awaits_commit, taken) {
            (true, _) => None,
            (false, true) => Some(Instant::now()),
            (false, false) => self.stalled_since.or_else(|| Some(Instant::now())),
        };
        if let Some(journal) = self.journal.as_mut() {
            journal.refill(self.queued.len());
        }
        // If the connection is going, in-flight messages stay for the next one.
        let _ = writer.deliver(batch);
    }

    /// Resends everything in flight, in order, for a resumed session: PUBLISH with DUP set for
    /// unacknowledged messages, PUBREL for released ones [MQTT-4.4.0-1].
    pub fn resend_inflight(&mut self, writer: &ClientHandle) {
        for flight in &self.inflight {
            let sent = match flight.stage {
                Stage::Published => writer.deliver(vec![Outbound::Publish {
                    delivery: flight.delivery.clone(),
                    packet_id: Some(flight.packet_id),
                    dup: true,
                }]),
                Stage::Released => writer.send(Outbound::Ack(AckKind::PubRel, flight.packet_id)),
            };
            if sent.is_err() {
                return;
            }
        }
    }

    /// Applies PUBACK, PUBREC or PUBCOMP from the client. PUBREC answers with PUBREL.
    pub fn acknowledge(
        &mut self,
        kind: AckKind,
        packet_id: PacketId,
        writer: Option<&ClientHandle>,
    ) -> AckOutcome {
        let Some(index) = self.inflight.iter().position(|f| f.packet_id == packet_id) else {
            return AckOutcome::Unknown;
        };
        let flight = &mut self.inflight[index];
        match (kind, flight.delivery.qos, flight.stage) {
            (AckKind::PubAck, QoS::AtLeastOnce, Stage::Published)
            | (AckKind::PubComp, QoS::ExactlyOnce, Stage::Released) => {
                if let Some(done) = self.inflight.remove(index) {
                    self.finished(&done.delivery);
                }
            }
            (AckKind::PubRec, QoS::ExactlyOnce, Stage::Published) => {
                flight.stage = Stage::Released;
                if let Some(journal) = &self.journal {
                    journal.released(&flight.delivery, packet_id);
                }
                if let Some(writer) = writer {
                    let _ = writer.send(Outbound::Ack(AckKind::PubRel, packet_id));
                }
            }
            (AckKind::PubRec, QoS::ExactlyOnce, Stage::Released) => {
                // A repeated PUBREC: answer again, the PUBREL may have been lost.
                if let Some(writer) = writer {
                    let _ = writer.send(Outbound::Ack(AckKind::PubRel, packet_id));
                }
            }
            _ => return AckOutcome::WrongKind,
        }
        AckOutcome::Matched
    }

    /// Drops the queued messages `keep` refuses, with their stored copies.
    pub fn drop_queued_unless(&mut self, keep: impl Fn(&Delivery) -> bool) {
        for delivery in std::mem::take(&mut self.queued) {
            if keep(&delivery) {
                self.queued.push_back(delivery);
            } else {
                self.forget(&delivery);
                self.finished(&delivery);
            }
        }
    }

    /// A message leaves the session for good: its stored copy goes too.
    fn finished(&self, delivery: &Delivery) {
        if let Some(journal) = &self.journal {
            journal.done(delivery);
        }
    }

    /// Puts back a message recovered from the store: in flight with the packet id it went out
    /// with (`released`: its PUBREL too), or queued. Call in the order they were queued.
    pub fn restore(&mut self, delivery: Delivery, packet_id: Option<PacketId>, released: bool) {
        match packet_id {
            Some(packet_id) => {
                self.inflight.push_back(InFlight {
                    packet_id,
                    serial: self.id_serial,
                    delivery,
                    stage: if released {
                        Stage::Released
                    } else {
                        Stage::Published
                    },
                });
                self.id_serial += 1;
                self.next_packet_id = packet_id.get().checked_add(1).unwrap_or(1);
            }
            None => {
                let size = queued_size(&delivery);
                self.budget.take_anyway(size);
                self.push(delivery, size);
            }
        }
    }

    #[cfg(test)]
    pub fn inflight_len(&self) -> usize {
        self.inflight.len()
    }

    pub fn queued_len(&self) -> usize {
        self.queued.len()
    }

    /// For `$SYS` and metrics: messages in flight, messages queued, and the payload bytes of
    /// each. Walks the queue: called once a second, not per message.
    pub fn census(&self) -> OutboxCensus {
        let bytes = |d: &Delivery| d.message.publish.payload.len() as u64;
        OutboxCensus {
            inflight: self.inflight.len() as u64,
            inflight_bytes: self.inflight.iter().map(|f| bytes(&f.delivery)).sum(),
            queued: self.queued.len() as u64,
            queued_bytes: self.queued.iter().map(bytes).sum(),
        }
    }

    /// The next packet id not in flight; ids count up from 1 and wrap, skipping 0.
    fn allocate_packet_id(&mut self) -> PacketId {
        loop {
            let candidate = NonZeroU16::new(self.next_packet_id).unwrap_or(NonZeroU16::MIN);
            let serial = self.id_serial;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            self.id_serial += 1;
            // The in-flight list is in the order ids were taken, so unless its oldest entry
            // took its id a whole ring ago, no entry can hold this one: no need to look.
            let lapped = self
                .inflight
                .front()
                .is_some_and(|oldest| serial - oldest.serial >= ID_RING);
            // The window is far below 65535 ids, so a free one is always found.
            if !lapped || !self.inflight.iter().any(|f| f.packet_id == candidate) {
                return candidate;
            }
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.budget.give_back(self.queued_bytes);
    }
}

/// What a queued delivery counts against `max_queued_bytes` and the broker's budget.
fn queued_size(delivery: &Delivery) -> usize {
    delivery.weight()
}

/// The size of `delivery` on the wire for a client speaking `version`, as the writer will
/// write it (an outbound topic alias can only make it smaller).
fn delivery_size(delivery: &Delivery, version: ProtocolVersion) -> usize {
    let publish = &delivery.message.publish;
    PublishView {
        dup: false,
        qos: delivery.qos,
        retain: delivery.retain,
        packet_id: (delivery.qos != QoS::AtMostOnce).then_some(NonZeroU16::MIN),
        topic: &publish.topic,
        payload: &publish.payload,
        properties: &publish.properties,
        subscription_identifiers: delivery.subscription_ids.as_slice(),
        message_expiry_interval: delivery.message.expires_at.map(|_| u32::MAX),
        topic_alias: None,
    }
    .encoded_len(version)
}

/// May the will of `client_id` (with `acl`, or none) go to `topic`? `unknown`: its identity was
/// lost while ACLs are configured, so it may not (logged).
pub(super) fn will_permitted(
    client_id: &str,
    acl: Option<&crate::auth::ReadAcl>,
    unknown: bool,
    topic: &str,
) -> bool {
    if unknown {
        log::warn!(
            "client {client_id}: will to {topic} not published: the session was recovered \
             without the client's identity, so the ACL cannot be checked"
        );
        return false;
    }
    if acl.is_some_and(|acl| !acl.may_write(topic)) {
        log::debug!("client {client_id}: will to {topic} denied by the ACL");
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::{Publish, PublishProperties};
    use crate::queue::message::{Message, SubscriptionIds};
    use crossbeam_channel::Receiver;

    fn delivery_with(payload: &str, qos: QoS, properties: PublishProperties) -> Delivery {
        let publish = Publish {
            dup: false,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: "t".into(),
            packet_id: None,
            properties,
            payload: payload.as_bytes().into(),
        };
        Delivery::new(
            Arc::new(Message::new(publish)),
            qos,
            false,
            SubscriptionIds::None,
        )
    }

    fn message(payload: &str, qos: QoS) -> Delivery {
        delivery_with(payload, qos, PublishProperties::default())
    }

    fn id(n: u16) -> PacketId {
        PacketId::new(n).expect("test ids are non-zero")
    }

    /// What the writer received, as (kind, packet id, payload or "", dup) tuples.
    fn drain(rx: &Receiver<Outbound>) -> Vec<(&'static str, u16, String, bool)> {
        rx.try_iter()
            .flat_map(|item| match item {
                Outbound::Batch(items) => items,
                single => vec![single],
            })
            .map(|item| match item {
                Outbound::Publish {
                    delivery,
                    packet_id,
                    dup,
                } => (
                    "publish",
                    packet_id.map_or(0, |p| p.get()),
                    String::from_utf8_lossy(&delivery.message.publish.payload).into_owned(),
                    dup,
                ),
                Outbound::Ack(kind, packet_id) => {
                    let name = match kind {
                        AckKind::PubRel => "pubrel",
                        _ => "other-ack",
                    };
                    (name, packet_id.get(), String::new(), false)
                }
                _ => ("other", 0, String::new(), false),
            })
            .collect()
    }

    /// Queues a delivery and pumps, as the router does at the end of a batch.
    fn deliver(session: &mut Session, delivery: Delivery) -> Enqueued {
        let outcome = session.deliver(delivery);
        session.pump();
        outcome
    }

    /// Delivers one message per (payload, QoS), checking each outcome in turn.
    fn deliver_expecting(session: &mut Session, expected: &[(&str, QoS, Enqueued)]) {
        for &(payload, qos, want) in expected {
            assert_eq!(
                deliver(session, message(payload, qos)),
                want,
                "message {payload:?}"
            );
        }
    }

    /// Acknowledges QoS 1 message `n` and pumps, as the router does on a PUBACK.
    fn puback_and_pump(session: &mut Session, n: u16) -> AckOutcome {
        let outcome = session.outbox.acknowledge(AckKind::PubAck, id(n), None);
        session.pump();
        outcome
    }

    /// The writer of an online session has written `n` more deliveries.
    fn writer_took(session: &Session, n: usize) {
        if let Some(online) = &session.online {
            online.writer.written_for_tests(n);
        }
    }

    /// Limits with a hard limit of ten times `max_queued` (no router overshoot to allow for).
    fn limits(max_inflight: usize, max_queued: usize) -> QueueLimits {
        QueueLimits::new(max_inflight, max_queued, 0)
    }

    fn session(max_inflight: usize, max_queued: usize) -> (Session, Receiver<Outbound>) {
        session_with_writer(1000, max_inflight, max_queued)
    }

    /// An online session whose writer takes at most `capacity` deliveries.
    fn session_with_writer(
        capacity: usize,
        max_inflight: usize,
        max_queued: usize,
    ) -> (Session, Receiver<Outbound>) {
        let (writer, rx) = ClientHandle::for_tests(capacity);
        let mut session = Session::new("c".into(), u32::MAX, limits(max_inflight, max_queued));
        session.online = Some(Online {
            connection_id: 1,
            writer,
            version: ProtocolVersion::V3_1_1,
            will: None,
            max_packet_size: None,
            problem_information: true,
        });
        (session, rx)
    }

    #[test]
    fn window_holds_back_qos1_and_acks_release_in_order() {
        let (mut s, rx) = session(2, 10);
        deliver_expecting(
            &mut s,
            &[
                ("a", QoS::AtLeastOnce, Enqueued::Accepted),
                ("b", QoS::AtLeastOnce, Enqueued::Accepted),
                ("c", QoS::AtLeastOnce, Enqueued::Accepted),
            ],
        );
        assert_eq!(
            drain(&rx),
            vec![
                ("publish", 1, "a".into(), false),
                ("publish", 2, "b".into(), false)
            ]
        );
        assert_eq!(puback_and_pump(&mut s, 1), AckOutcome::Matched);
        assert_eq!(drain(&rx), vec![("publish", 3, "c".into(), false)]);
        assert_eq!(
            s.outbox.acknowledge(AckKind::PubAck, id(1), None),
            AckOutcome::Unknown
        );
    }

    #[test]
    fn qos0_waits_behind_a_full_window_to_keep_order() {
        let (mut s, rx) = session(1, 10);
        deliver(&mut s, message("a", QoS::AtLeastOnce));
        deliver(&mut s, message("b", QoS::AtLeastOnce));
        deliver(&mut s, message("c", QoS::AtMostOnce));
        assert_eq!(drain(&rx).len(), 1);
        puback_and_pump(&mut s, 1);
        assert_eq!(
            drain(&rx),
            vec![
                ("publish", 2, "b".into(), false),
                ("publish", 0, "c".into(), false)
            ]
        );
    }

    #[test]
    fn qos2_flow_and_resend_after_reconnect() {
        let (mut s, rx) = session(10, 10);
        deliver(&mut s, message("a", QoS::ExactlyOnce));
        deliver(&mut s, message("b", QoS::ExactlyOnce));
        drain(&rx);
        let writer = s.online.as_ref().map(|o| o.writer.clone());
        s.outbox
            .acknowledge(AckKind::PubRec, id(1), writer.as_ref());
        assert_eq!(drain(&rx), vec![("pubrel", 1, String::new(), false)]);
        // Reconnect: the released message gets PUBREL again, the other PUBLISH with DUP.
        s.outbox.resend_inflight(writer.as_ref().expect("online"));
        assert_eq!(
            drain(&rx),
            vec![
                ("pubrel", 1, String::new(), false),
                ("publish", 2, "b".into(), true)
            ]
        );
        // PUBACK is the wrong acknowledgement for QoS 2 (the router then closes).
        assert_eq!(
            s.outbox.acknowledge(AckKind::PubAck, id(2), None),
            AckOutcome::WrongKind
        );
        assert_eq!(
            s.outbox.acknowledge(AckKind::PubAck, id(9), None),
            AckOutcome::Unknown
        );
        assert_eq!(
            s.outbox.acknowledge(AckKind::PubComp, id(1), None),
            AckOutcome::Matched
        );
        assert_eq!(s.outbox.inflight_len(), 1);
    }

    #[test]
    fn offline_queue_is_bounded_and_skips_qos0() {
        let mut s = Session::new("c".into(), u32::MAX, limits(10, 2));
        deliver_expecting(
            &mut s,
            &[
                ("q0", QoS::AtMostOnce, Enqueued::Skipped),
                ("a", QoS::AtLeastOnce, Enqueued::Accepted),
                ("b", QoS::AtLeastOnce, Enqueued::Accepted),
                ("c", QoS::AtLeastOnce, Enqueued::Dropped),
            ],
        );
        assert_eq!(s.outbox.queued_len(), 2);
        assert_eq!(s.outbox.dropped, 1);
    }

    #[test]
    fn full_writer_keeps_messages_queued() {
        let (mut s, rx) = session_with_writer(2, 100, 100);
        for p in ["a", "b", "c", "d"] {
            deliver(&mut s, message(p, QoS::AtMostOnce));
        }
        assert_eq!(drain(&rx).len(), 2);
        assert_eq!(s.outbox.queued_len(), 2);
        // The writer has caught up.
        writer_took(&s, 2);
        s.pump();
        assert_eq!(drain(&rx).len(), 2);
    }

    #[test]
    fn expired_and_too_large_messages_are_skipped_when_sent() {
        let (mut s, rx) = session(10, 10);
        if let Some(online) = s.online.as_mut() {
            online.max_packet_size = Some(64);
        }
        let expired = delivery_with(
            "old",
            QoS::AtLeastOnce,
            PublishProperties {
                message_expiry_interval: Some(0),
                ..Default::default()
            },
        );
        deliver(&mut s, expired);
        deliver(&mut s, message(&"x".repeat(100), QoS::AtLeastOnce));
        deliver(&mut s, message("fits", QoS::AtLeastOnce));
        // The two skipped messages used up ids 1 and 2, as with mosquitto.
        assert_eq!(drain(&rx), vec![("publish", 3, "fits".into(), false)]);
        assert_eq!(s.outbox.inflight_len(), 1);
    }

    #[test]
    fn online_congestion_is_reported_up_to_the_hard_limit() {
        use Enqueued::{Accepted, Congested, Dropped};
        use QoS::{AtLeastOnce as Q1, AtMostOnce as Q0};
        // A writer with room for nothing: everything stays queued.
        let (mut s, _rx) = session_with_writer(0, 10, 2);
        // Up to max_queued (2) accepted; past it kept, QoS 0 and 1 alike, but congested; past
        // the hard limit (ten times max_queued) dropped.
        let mut expected = vec![
            (Q1, Accepted),
            (Q1, Accepted),
            (Q1, Congested),
            (Q0, Congested),
        ];
        expected.extend((4..20).map(|_| (Q1, Congested)));
        expected.push((Q0, Dropped));
        for (n, (qos, want)) in expected.into_iter().enumerate() {
            assert_eq!(deliver(&mut s, message("m", qos)), want, "message {n}");
        }
        assert!(s.outbox.is_congested() && !s.outbox.is_drained());
        assert_eq!(s.outbox.queued_len(), 20);
    }

    #[test]
    fn past_the_hold_limit_own_limits_apply_and_qos0_goes_first() {
        use Enqueued::{Accepted, Dropped};
        use QoS::{AtLeastOnce as Q1, AtMostOnce as Q0};
        let (mut s, _rx) = session_with_writer(0, 10, 3);
        s.outbox.overflowing = true;
        for (qos, want) in [
            (Q1, Accepted),
            (Q0, Accepted),
            (Q0, Accepted),
            (Q0, Dropped),
        ] {
            assert_eq!(deliver(&mut s, message("m", qos)), want);
        }
        // A QoS 1 message takes the place of the oldest QoS 0 one.
        assert_eq!(deliver(&mut s, message("n", Q1)), Accepted);
        assert_eq!(deliver(&mut s, message("o", Q1)), Accepted);
        assert_eq!(deliver(&mut s, message("p", Q1)), Dropped);
        let kept: Vec<_> = s.outbox.queued.iter().map(|d| d.qos).collect();
        assert_eq!(kept, [Q1, Q1, Q1]);
        assert_eq!(s.outbox.dropped, 4);
        assert!(s.outbox.drops.take_start());
    }

    #[test]
    fn a_congested_client_keeps_up_if_at_its_pace_it_drains_to_half_in_time() {
        let (mut s, _rx) = session_with_writer(8, 10, 4);
        for _ in 0..20 {
            deliver(&mut s, message("m", QoS::AtMostOnce));
        }
        // The writer took 8; 12 wait, 10 more than half the limit of 4.
        assert!(s.outbox.congested_since.is_some());
        assert!(
            !s.outbox.keeps_up(),
            "nothing taken since the congestion began"
        );
        writer_took(&s, 8);
        s.pump();
        assert_eq!(s.outbox.queued_len(), 4);
        assert!(
            s.outbox.keeps_up(),
            "took 8, which would drain the rest in time"
        );
    }

    #[test]
    fn bytes_bound_the_queue_and_the_budget_is_given_back() {
        let budget = Arc::new(QueueBudget::new(0));
        let mut limits = limits(10, 1000);
        limits.max_queued_bytes = 3 * (100 + 1 + crate::queue::message::DELIVERY_OVERHEAD);
        limits.budget = Arc::clone(&budget);
        let mut s = Session::new("c".into(), u32::MAX, limits);
        let big = "x".repeat(100);
        let big_q1 = |want| (big.as_str(), QoS::AtLeastOnce, want);
        let (accepted, dropped) = (Enqueued::Accepted, Enqueued::Dropped);
        deliver_expecting(
            &mut s,
            &[
                big_q1(accepted),
                big_q1(accepted),
                big_q1(accepted),
                big_q1(dropped),
            ],
        );
        assert_eq!(budget.used(), s.outbox.queued_bytes());
        drop(s);
        assert_eq!(budget.used(), 0, "an ended session gives its bytes back");
    }

    #[test]
    fn the_broker_budget_refuses_past_its_limit() {
        let mut limits = limits(10, 1000);
        limits.budget = Arc::new(QueueBudget::new(
            2 * (1 + 1 + crate::queue::message::DELIVERY_OVERHEAD),
        ));
        let mut s = Session::new("c".into(), u32::MAX, limits);
        deliver_expecting(
            &mut s,
            &[
                ("a", QoS::AtLeastOnce, Enqueued::Accepted),
                ("b", QoS::AtLeastOnce, Enqueued::Accepted),
                ("c", QoS::AtLeastOnce, Enqueued::OverBudget),
            ],
        );
        // Online, a session with a short queue still gets its messages; one with a backlog
        // does not.
        let (mut online, _rx) = session_with_writer(0, 10, 1000);
        online.outbox.budget = Arc::clone(&s.outbox.budget);
        for n in 0..BUDGET_EXEMPT_QUEUE {
            assert_eq!(
                deliver(&mut online, message("d", QoS::AtLeastOnce)),
                Enqueued::Accepted,
                "message {n}"
            );
        }
        assert_eq!(
            deliver(&mut online, message("e", QoS::AtLeastOnce)),
            Enqueued::OverBudget
        );
    }

    #[test]
    fn the_progress_clock_runs_only_while_nothing_is_taken() {
        let (mut s, _rx) = session(1, 10);
        deliver(&mut s, message("a", QoS::AtLeastOnce));
        assert!(s.outbox.stalled_since.is_none(), "all taken");
        deliver(&mut s, message("b", QoS::AtLeastOnce));
        let since = s
            .outbox
            .stalled_since
            .expect("b waits behind a full window");
        deliver(&mut s, message("c", QoS::AtLeastOnce));
        assert_eq!(s.outbox.stalled_since, Some(since), "still nothing taken");
        puback_and_pump(&mut s, 1);
        assert!(
            s.outbox.stalled_since.is_some_and(|t| t >= since),
            "b taken: restarted"
        );
        puback_and_pump(&mut s, 2);
        assert!(s.outbox.stalled_since.is_none(), "queue empty");
        deliver(&mut s, message("d", QoS::AtLeastOnce));
        deliver(&mut s, message("e", QoS::AtLeastOnce));
        assert!(s.outbox.stalled_since.is_some());
        s.outbox.set_receive_maximum(u16::MAX);
        assert!(
            s.outbox.stalled_since.is_none(),
            "a new connection starts its own clock"
        );
    }

    #[test]
    fn retained_messages_are_fed_a_window_at_a_time() {
        let (mut s, rx) = session_with_writer(50, 100, 1000);
        let messages: Vec<_> = (0..1000)
            .map(|n| message(&n.to_string(), QoS::AtMostOnce).message)
            .collect();
        s.retained_feeds.push_back(RetainedFeed {
            messages: messages.into_iter(),
            granted: QoS::AtMostOnce,
            identifier: None,
        });
        s.pump();
        assert_eq!(drain(&rx).len(), 50, "as many as the writer takes");
        assert!(s.outbox.queued_len() <= RETAINED_WINDOW);
        let mut received = 50;
        while received < 1000 {
            writer_took(&s, 50);
            s.pump();
            let got = drain(&rx);
            assert!(!got.is_empty(), "the feed goes on after {received}");
            received += got.len();
        }
        assert_eq!(received, 1000);
        assert!(s.retained_feeds.is_empty() && s.outbox.dropped == 0);
    }

    #[test]
    fn packet_ids_skip_zero_and_ids_in_flight() {
        let mut outbox = Outbox::new(limits(10, 10));
        outbox.next_packet_id = u16::MAX;
        assert_eq!(outbox.allocate_packet_id().get(), u16::MAX);
        assert_eq!(outbox.allocate_packet_id().get(), 1);
        // Id 2 goes out and is never acknowledged, while the next 65,534 are.
        let stuck = outbox.allocate_packet_id();
        assert_eq!(stuck.get(), 2);
        outbox.inflight.push_back(InFlight {
            packet_id: stuck,
            serial: outbox.id_serial - 1,
            delivery: message("x", QoS::AtLeastOnce),
            stage: Stage::Published,
        });
        for _ in 0..65_534 {
            assert_ne!(outbox.allocate_packet_id(), stuck);
        }
        // The ring has come round to 2, which is still in flight: it is skipped.
        assert_eq!(outbox.allocate_packet_id().get(), 3);
    }
}
