//! The writer thread: the only code that writes a client's socket.
//!
//! Owns: encoding `Outbound` items in batches into one reusable buffer and writing them with a
//! single syscall per batch, outbound topic aliases (MQTT 5), the remaining message expiry at
//! the moment of writing, counting the bytes the socket accepts (progress, for the router's
//! progress clock), and closing the socket when told to or when every handle is gone.
//! Must not: read the socket, decide what to send, or block on anything but its own channel and
//! its own socket (the one send it makes, a drain notice to the router, never waits on a writer).

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam_channel::Receiver;
use log::{debug, trace};

use super::{AckKind, Outbound, WriterSetup, WriterShared};
use crate::mqtt::{encode_publish, Ack, Packet, ProtocolVersion, PublishView};
use crate::queue::message::Delivery;
use crate::queue::{ConnectionRef, QueueHandle};
use crate::sys::counters::SentTally;
use crate::transport::Output;

/// A batch is written once it reaches this size, even if more items are waiting.
const BATCH_BYTES: usize = 64 * 1024;
/// A buffer grown beyond this by a burst is given back once the burst is written, so that idle
/// clients stay small; below it the buffer is kept, so that busy ones do not reallocate.
const KEEP_BUFFER: usize = 4 * BATCH_BYTES;

pub(super) fn run(
    setup: WriterSetup,
    rx: Receiver<Outbound>,
    shared: Arc<WriterShared>,
    queue: QueueHandle,
) {
    let WriterSetup {
        output,
        connection_id,
        version,
        topic_alias_maximum,
        write_timeout,
    } = setup;
    // Past it the writer gives up on a client that reads nothing (`Config::write_timeout`).
    let Output { mut write, link } = output;
    let mut failed = false;
    let _ = write.set_write_timeout(Some(write_timeout));
    let mut encoder = Encoder {
        version,
        aliases: TopicAliases::new(topic_alias_maximum),
        delivered: 0,
        delivered_bytes: 0,
        flush: false,
        tally: SentTally::default(),
    };
    let mut out = Vec::new();
    // `recv` fails once every handle is dropped and the channel is empty.
    'connection: while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        let mut closing = false;
        while let Some(item) = next.take() {
            if encoder.encode(item, &mut out) {
                closing = true;
                break;
            }
            if out.len() >= BATCH_BYTES {
                break;
            }
            next = rx.try_recv().ok();
        }
        // Deliveries encoded leave the counts the router's `room` is measured against.
        let delivered = std::mem::take(&mut encoder.delivered);
        if delivered > 0 {
            shared
                .waiting_deliveries
                .fetch_sub(delivered, Ordering::AcqRel);
            let bytes = std::mem::take(&mut encoder.delivered_bytes);
            shared.waiting_bytes.fetch_sub(bytes, Ordering::AcqRel);
        }
        if !out.is_empty() {
            trace!("client {connection_id}: writing {} bytes", out.len());
            if let Err(e) = write_counting(&mut *write, &out, &shared.bytes_written) {
                debug!("client {connection_id}: write failed: {e}");
                failed = true;
                break 'connection;
            }
            queue.stats().sent(out.len(), &mut encoder.tally);
            out.clear();
        }
        if std::mem::take(&mut encoder.flush) {
            // Cleared first: output the reader makes from now on gets a flush of its own.
            shared.flush_requested.store(false, Ordering::Release);
            if let Err(e) = write.flush() {
                debug!("client {connection_id}: flush failed: {e}");
                failed = true;
                break 'connection;
            }
        }
        if closing {
            break;
        }
        if rx.is_empty() {
            if out.capacity() > KEEP_BUFFER {
                out = Vec::new();
            }
            if shared.drain_requested.swap(false, Ordering::AcqRel) {
                let slot = shared.session_slot.load(Ordering::Acquire);
                let from = ConnectionRef {
                    slot,
                    connection: connection_id,
                };
                if queue.writer_drained(from).is_err() {
                    break;
                }
            }
        }
    }
    // Ends the reader's blocking read too, if it is still waiting. After a failed write there is
    // no point in a goodbye (TLS close_notify, WebSocket close) that would wait again.
    if failed {
        link.shutdown();
    } else {
        write.close();
    }
    debug!("client {connection_id}: writer stopped");
}

/// Writes all of `out`, adding what each write call took to `written`, so that a client
/// reading slowly shows progress to the router even while one batch is being written.
fn write_counting(
    stream: &mut dyn Write,
    mut out: &[u8],
    written: &std::sync::atomic::AtomicU64,
) -> std::io::Result<()> {
    while !out.is_empty() {
        match stream.write(out) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                written.fetch_add(n as u64, Ordering::Relaxed);
                out = &out[n..];
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Turns `Outbound` items into bytes for one connection.
struct Encoder {
    version: ProtocolVersion,
    aliases: TopicAliases,
    /// Deliveries encoded since the count was last settled, and their weight.
    delivered: usize,
    delivered_bytes: usize,
    /// The transport has output of its own to write (`Outbound::Flush`).
    flush: bool,
    /// Packets encoded since the last write, for the broker's counters.
    tally: SentTally,
}

impl Encoder {
    /// Appends `item` to `out`; true when the connection is to be closed after writing it.
    fn encode(&mut self, item: Outbound, out: &mut Vec<u8>) -> bool {
        let version = self.version;
        match item {
            Outbound::Publish {
                delivery,
                packet_id,
                dup,
            } => {
                self.encode_publish(&delivery, packet_id, dup, out);
                self.delivered += 1;
                self.delivered_bytes += delivery.weight();
                let payload = delivery.message.publish.payload.len();
                self.tally.publish(delivery.qos, payload);
                false
            }
            Outbound::Batch(items) => {
                let mut closing = false;
                for item in items {
                    closing |= self.encode(item, out);
                }
                closing
            }
            Outbound::Ack(kind, packet_id) => {
                let ack = Ack::new(packet_id);
                let packet = match kind {
                    AckKind::PubAck => Packet::PubAck(ack),
                    AckKind::PubRec => Packet::PubRec(ack),
                    AckKind::PubRel => Packet::PubRel(ack),
                    AckKind::PubComp => Packet::PubComp(ack),
                };
                packet.encode(version, out);
                self.tally.packet();
                false
            }
            Outbound::Packet(packet) => {
                packet.encode(version, out);
                self.tally.packet();
                false
            }
            Outbound::Flush => {
                self.flush = true;
                false
            }
            Outbound::Close(disconnect) => {
                if let Some(disconnect) = disconnect {
                    if version.is_v5() {
                        Packet::Disconnect(*disconnect).encode(version, out);
                        self.tally.packet();
                    }
                }
                true
            }
        }
    }

    fn encode_publish(
        &mut self,
        delivery: &Delivery,
        packet_id: Option<crate::mqtt::PacketId>,
        dup: bool,
        out: &mut Vec<u8>,
    ) {
        let message = &delivery.message;
        let publish = &message.publish;
        let (topic, topic_alias) = if self.version.is_v5() {
            self.aliases.apply(&publish.topic)
        } else {
            (publish.topic.as_str(), None)
        };
        let view = PublishView {
            dup,
            qos: delivery.qos,
            retain: delivery.retain,
            packet_id,
            topic,
            payload: &publish.payload,
            properties: &publish.properties,
            subscription_identifiers: delivery.subscription_ids.as_slice(),
            // [MQTT-3.3.2-6] What is left of the expiry interval, not what was published.
            message_expiry_interval: message.remaining_expiry(),
            topic_alias,
        };
        encode_publish(out, self.version, &view);
    }
}

/// Outbound topic aliases of one connection (MQTT 5): the first topics sent get an alias each,
/// up to the client's Topic Alias Maximum; later messages to those topics carry only the alias.
struct TopicAliases {
    maximum: u16,
    by_topic: HashMap<String, u16>,
}

impl TopicAliases {
    fn new(maximum: u16) -> Self {
        TopicAliases {
            maximum,
            by_topic: HashMap::new(),
        }
    }

    /// The topic and alias to write for `topic`: the full topic with a new alias the first
    /// time, an empty topic with the alias after that [MQTT-3.3.2-12], or the full topic with
    /// no alias once every alias is taken.
    fn apply<'a>(&mut self, topic: &'a str) -> (&'a str, Option<u16>) {
        if let Some(&alias) = self.by_topic.get(topic) {
            return ("", Some(alias));
        }
        let used = self.by_topic.len();
        if used < usize::from(self.maximum) {
            let alias = u16::try_from(used + 1).expect("at most the u16 maximum");
            self.by_topic.insert(topic.to_owned(), alias);
            return (topic, Some(alias));
        }
        (topic, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_are_assigned_until_the_maximum_then_topics_go_in_full() {
        let mut aliases = TopicAliases::new(2);
        assert_eq!(aliases.apply("a"), ("a", Some(1)));
        assert_eq!(aliases.apply("a"), ("", Some(1)));
        assert_eq!(aliases.apply("b"), ("b", Some(2)));
        assert_eq!(aliases.apply("c"), ("c", None));
        assert_eq!(aliases.apply("b"), ("", Some(2)));
        let mut none = TopicAliases::new(0);
        assert_eq!(none.apply("a"), ("a", None));
    }
}
