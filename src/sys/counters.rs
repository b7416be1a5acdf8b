//! The broker's counters and gauges, shared by every thread that counts and the two that read
//! them (the router's `$SYS` publisher and the `/metrics` listener).
//!
//! Owns: `Stats`, one per broker. Counters bumped per packet live in shards, one cache line
//! each, and a thread always uses the same shard, so client threads on different cores do not
//! fight over a line; a reader sums the shards. Rare events (connects, refusals, drops) are
//! single atomics. Gauges (sessions, subscriptions, queues) are stored by the router when it
//! refreshes them. Must not: lock, allocate on the hot path, or know how values are published.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use crate::mqtt::{Packet, QoS, ReasonCode};

/// Shards of the per-packet counters; more than the cores of most machines, so that threads
/// rarely share one.
const SHARDS: usize = 32;

/// The per-packet counters of one shard, on a cache line of their own.
#[derive(Default)]
#[repr(align(128))]
struct Shard {
    packets_in: AtomicU64,
    packets_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    publish_in: [AtomicU64; 3],
    publish_out: [AtomicU64; 3],
    publish_bytes_in: [AtomicU64; 3],
    publish_bytes_out: [AtomicU64; 3],
}

/// Counters summed over every shard, as plain numbers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Traffic {
    /// MQTT packets received and sent, of every kind.
    pub packets_in: u64,
    pub packets_out: u64,
    /// Bytes of those packets.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// PUBLISH packets by QoS.
    pub publish_in: [u64; 3],
    pub publish_out: [u64; 3],
    /// Payload bytes of those PUBLISH packets, by QoS.
    pub publish_bytes_in: [u64; 3],
    pub publish_bytes_out: [u64; 3],
}

impl Traffic {
    pub fn publish_in_total(&self) -> u64 {
        self.publish_in.iter().sum()
    }
    pub fn publish_out_total(&self) -> u64 {
        self.publish_out.iter().sum()
    }
    pub fn publish_bytes_in_total(&self) -> u64 {
        self.publish_bytes_in.iter().sum()
    }
    pub fn publish_bytes_out_total(&self) -> u64 {
        self.publish_bytes_out.iter().sum()
    }
}

/// What a reader counts between two reads from its socket, in plain fields;
/// `Stats::add_received` adds it to the shared counters before the reader may block.
#[derive(Debug, Default)]
pub struct ReceivedTally {
    packets: u64,
    bytes: u64,
    publish: [u64; 3],
    publish_bytes: [u64; 3],
    connects: u64,
}

impl ReceivedTally {
    /// A packet read whose body was `body` bytes long.
    pub fn count(&mut self, packet: &Packet, body: usize) {
        self.packets += 1;
        self.bytes += packet_size(body);
        match packet {
            Packet::Publish(publish) => {
                let qos = publish.qos as usize;
                self.publish[qos] += 1;
                self.publish_bytes[qos] += publish.payload.len() as u64;
            }
            Packet::Connect(_) => self.connects += 1,
            _ => {}
        }
    }
}

/// What the writer counts between two writes, in plain fields; `Stats::sent` adds it to the
/// shared counters once per write.
#[derive(Debug, Default)]
pub struct SentTally {
    packets: u64,
    publish: [u64; 3],
    publish_bytes: [u64; 3],
}

impl SentTally {
    /// One packet other than PUBLISH.
    pub fn packet(&mut self) {
        self.packets += 1;
    }

    /// One PUBLISH with `payload` bytes at `qos`.
    pub fn publish(&mut self, qos: QoS, payload: usize) {
        self.packets += 1;
        self.publish[qos as usize] += 1;
        self.publish_bytes[qos as usize] += payload as u64;
    }
}

/// Why a message meant for a session was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// An offline session's queue was full (`max_queued_messages`).
    QueueFull,
    /// An online session's queue reached its hard limit (publishers ignoring flow control).
    HardLimit,
}

/// Values only the router knows, stored by it when it refreshes them (every second while the
/// broker runs, see `queue::actor::sys`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Gauges {
    /// Sessions with a connection.
    pub clients_connected: u64,
    /// Sessions, connected or kept for a client that is away.
    pub sessions: u64,
    /// The most sessions seen at once.
    pub sessions_maximum: u64,
    /// Subscriptions, shared ones included.
    pub subscriptions: u64,
    /// Shared subscriptions (`$share/...`).
    pub shared_subscriptions: u64,
    pub retained: u64,
    /// Messages held for sessions: waiting in a queue or in flight, plus retained ones.
    pub stored_messages: u64,
    /// Payload bytes of those messages.
    pub stored_bytes: u64,
    /// Messages sent and not yet acknowledged, over every session.
    pub inflight: u64,
    /// Messages waiting behind the in-flight windows, over every session.
    pub queued: u64,
    /// Payload bytes of those.
    pub queued_bytes: u64,
}

const GAUGES: usize = 11;

impl Gauges {
    fn to_array(self) -> [u64; GAUGES] {
        [
            self.clients_connected,
            self.sessions,
            self.sessions_maximum,
            self.subscriptions,
            self.shared_subscriptions,
            self.retained,
            self.stored_messages,
            self.stored_bytes,
            self.inflight,
            self.queued,
            self.queued_bytes,
        ]
    }

    fn from_array(a: [u64; GAUGES]) -> Self {
        Gauges {
            clients_connected: a[0],
            sessions: a[1],
            sessions_maximum: a[2],
            subscriptions: a[3],
            shared_subscriptions: a[4],
            retained: a[5],
            stored_messages: a[6],
            stored_bytes: a[7],
            inflight: a[8],
            queued: a[9],
            queued_bytes: a[10],
        }
    }
}

/// Every counter and gauge of one broker.
pub struct Stats {
    started: Instant,
    shards: Box<[Shard]>,
    /// TCP connections accepted.
    sockets: AtomicU64,
    /// CONNECT packets received.
    connects: AtomicU64,
    /// Connections attached to a session (CONNACK success).
    connections: AtomicU64,
    /// Connections closed at once because `max_connections` were held.
    refused_connection_limit: AtomicU64,
    /// CONNECTs refused, by CONNACK reason code.
    refused: [AtomicU64; 256],
    dropped_queue_full: AtomicU64,
    dropped_hard_limit: AtomicU64,
    sessions_expired: AtomicU64,
    gauges: [AtomicU64; GAUGES],
    /// A metrics listener is open: the router refreshes the gauges every second.
    watched: AtomicBool,
    /// Storage commit times and failures (persistence on).
    pub commits: super::commits::CommitStats,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: Instant::now(),
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            sockets: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            refused_connection_limit: AtomicU64::new(0),
            refused: std::array::from_fn(|_| AtomicU64::new(0)),
            dropped_queue_full: AtomicU64::new(0),
            dropped_hard_limit: AtomicU64::new(0),
            sessions_expired: AtomicU64::new(0),
            gauges: std::array::from_fn(|_| AtomicU64::new(0)),
            watched: AtomicBool::new(false),
            commits: Default::default(),
        }
    }
}

/// The shard of the calling thread: given out round robin on first use, then kept.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    SHARD.with(|shard| {
        let mut index = shard.get();
        if index == usize::MAX {
            index = NEXT.fetch_add(1, Relaxed) % SHARDS;
            shard.set(index);
        }
        index
    })
}

/// Bytes of a packet whose body was `body` bytes: the first byte, the remaining length, the
/// body.
fn packet_size(body: usize) -> u64 {
    let length_bytes = match body {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    (1 + length_bytes + body) as u64
}

impl Stats {
    fn shard(&self) -> &Shard {
        &self.shards[shard_index()]
    }

    /// When the broker started (for `$SYS/broker/uptime`).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// A packet read from a client whose body was `body` bytes long (for one-off packets;
    /// the read loop counts in a `ReceivedTally`).
    pub fn received(&self, packet: &Packet, body: usize) {
        let mut tally = ReceivedTally::default();
        tally.count(packet, body);
        self.add_received(&mut tally);
    }

    /// Adds what a reader counted; empties the tally.
    pub fn add_received(&self, tally: &mut ReceivedTally) {
        if tally.packets == 0 {
            return;
        }
        let shard = self.shard();
        shard.packets_in.fetch_add(tally.packets, Relaxed);
        shard.bytes_in.fetch_add(tally.bytes, Relaxed);
        for qos in 0..3 {
            if tally.publish[qos] > 0 {
                shard.publish_in[qos].fetch_add(tally.publish[qos], Relaxed);
                shard.publish_bytes_in[qos].fetch_add(tally.publish_bytes[qos], Relaxed);
            }
        }
        if tally.connects > 0 {
            self.connects.fetch_add(tally.connects, Relaxed);
        }
        *tally = ReceivedTally::default();
    }

    /// `bytes` written to a client, holding what `tally` counted; empties the tally.
    pub fn sent(&self, bytes: usize, tally: &mut SentTally) {
        let shard = self.shard();
        shard.bytes_out.fetch_add(bytes as u64, Relaxed);
        shard.packets_out.fetch_add(tally.packets, Relaxed);
        for qos in 0..3 {
            if tally.publish[qos] > 0 {
                shard.publish_out[qos].fetch_add(tally.publish[qos], Relaxed);
                shard.publish_bytes_out[qos].fetch_add(tally.publish_bytes[qos], Relaxed);
            }
        }
        *tally = SentTally::default();
    }

    /// A TCP connection accepted.
    pub fn socket_accepted(&self) {
        self.sockets.fetch_add(1, Relaxed);
    }

    /// A connection closed at once because the connection limit was reached.
    pub fn refused_connection_limit(&self) {
        self.refused_connection_limit.fetch_add(1, Relaxed);
    }

    /// A CONNECT answered with a CONNACK: success or the refusal's reason.
    pub fn connect_answered(&self, reason: ReasonCode) {
        if reason.is_error() {
            self.refused[reason as usize].fetch_add(1, Relaxed);
        } else {
            self.connections.fetch_add(1, Relaxed);
        }
    }

    pub fn dropped(&self, reason: DropReason) {
        let counter = match reason {
            DropReason::QueueFull => &self.dropped_queue_full,
            DropReason::HardLimit => &self.dropped_hard_limit,
        };
        counter.fetch_add(1, Relaxed);
    }

    pub fn session_expired(&self) {
        self.sessions_expired.fetch_add(1, Relaxed);
    }

    /// Asks the router to keep the gauges fresh (a metrics listener reads them).
    pub fn watch(&self) {
        self.watched.store(true, Relaxed);
    }

    pub fn metrics_watched(&self) -> bool {
        self.watched.load(Relaxed)
    }

    /// The router's latest figures.
    pub fn set_gauges(&self, gauges: Gauges) {
        for (slot, value) in self.gauges.iter().zip(gauges.to_array()) {
            slot.store(value, Relaxed);
        }
    }

    pub fn gauges(&self) -> Gauges {
        Gauges::from_array(std::array::from_fn(|i| self.gauges[i].load(Relaxed)))
    }

    /// The per-packet counters, summed over the shards.
    pub fn traffic(&self) -> Traffic {
        let mut t = Traffic::default();
        for shard in self.shards.iter() {
            t.packets_in += shard.packets_in.load(Relaxed);
            t.packets_out += shard.packets_out.load(Relaxed);
            t.bytes_in += shard.bytes_in.load(Relaxed);
            t.bytes_out += shard.bytes_out.load(Relaxed);
            for qos in 0..3 {
                t.publish_in[qos] += shard.publish_in[qos].load(Relaxed);
                t.publish_out[qos] += shard.publish_out[qos].load(Relaxed);
                t.publish_bytes_in[qos] += shard.publish_bytes_in[qos].load(Relaxed);
                t.publish_bytes_out[qos] += shard.publish_bytes_out[qos].load(Relaxed);
            }
        }
        t
    }

    pub fn sockets(&self) -> u64 {
        self.sockets.load(Relaxed)
    }
    pub fn connects(&self) -> u64 {
        self.connects.load(Relaxed)
    }
    pub fn connections(&self) -> u64 {
        self.connections.load(Relaxed)
    }
    pub fn refused_connection_limit_total(&self) -> u64 {
        self.refused_connection_limit.load(Relaxed)
    }
    /// CONNECT refusals so far, by reason code (codes never used are left out).
    pub fn refused(&self) -> Vec<(u8, u64)> {
        (0..=255u8)
            .map(|code| (code, self.refused[usize::from(code)].load(Relaxed)))
            .filter(|&(_, n)| n > 0)
            .collect()
    }
    pub fn dropped_total(&self, reason: DropReason) -> u64 {
        match reason {
            DropReason::QueueFull => self.dropped_queue_full.load(Relaxed),
            DropReason::HardLimit => self.dropped_hard_limit.load(Relaxed),
        }
    }
    pub fn sessions_expired(&self) -> u64 {
        self.sessions_expired.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::{Publish, PublishProperties};
    use std::sync::Arc;

    fn publish(qos: QoS, payload: &[u8]) -> Packet {
        Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: "t".into(),
            packet_id: None,
            properties: PublishProperties::default(),
            payload: Arc::from(payload),
        })
    }

    #[test]
    fn counts_from_many_threads_add_up() {
        let stats = Arc::new(Stats::default());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let stats = Arc::clone(&stats);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        stats.received(&publish(QoS::AtLeastOnce, b"abc"), 10);
                        stats.received(&Packet::PingReq, 0);
                    }
                    let mut tally = SentTally::default();
                    tally.publish(QoS::ExactlyOnce, 5);
                    tally.packet();
                    stats.sent(100, &mut tally);
                    stats.sent(0, &mut tally); // emptied: adds nothing more
                })
            })
            .collect();
        for t in threads {
            t.join().expect("counting thread");
        }
        let t = stats.traffic();
        assert_eq!(t.packets_in, 16_000);
        assert_eq!(t.bytes_in, 8000 * 12 + 8000 * 2);
        assert_eq!(t.publish_in, [0, 8000, 0]);
        assert_eq!(t.publish_bytes_in, [0, 24_000, 0]);
        assert_eq!(t.packets_out, 16);
        assert_eq!(t.bytes_out, 800);
        assert_eq!(t.publish_out, [0, 0, 8]);
        assert_eq!(t.publish_bytes_out_total(), 40);
    }

    #[test]
    fn packet_sizes_count_the_remaining_length_bytes() {
        assert_eq!(packet_size(0), 2);
        assert_eq!(packet_size(127), 129);
        assert_eq!(packet_size(128), 131);
        assert_eq!(packet_size(16_384), 16_388);
    }

    #[test]
    fn refusals_are_kept_by_reason_and_successes_apart() {
        let stats = Stats::default();
        stats.connect_answered(ReasonCode::Success);
        stats.connect_answered(ReasonCode::NotAuthorized);
        stats.connect_answered(ReasonCode::NotAuthorized);
        assert_eq!(stats.connections(), 1);
        assert_eq!(stats.refused(), [(0x87, 2)]);
    }

    #[test]
    fn gauges_round_trip() {
        let stats = Stats::default();
        let g = Gauges {
            clients_connected: 1,
            sessions: 2,
            sessions_maximum: 3,
            subscriptions: 4,
            shared_subscriptions: 5,
            retained: 6,
            stored_messages: 7,
            stored_bytes: 8,
            inflight: 9,
            queued: 10,
            queued_bytes: 11,
        };
        stats.set_gauges(g);
        assert_eq!(stats.gauges(), g);
    }
}
