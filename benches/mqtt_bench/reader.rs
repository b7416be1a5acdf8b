//! The reader thread of one traffic connection: every packet the broker sends.
//!
//! Owns: checking each delivery into the connection's `Tally`, answering deliveries (PUBACK;
//! PUBREC, then PUBCOMP for PUBREL) and this client's own publishes (PUBREL for PUBREC), and
//! telling the writer which of its packet ids are complete. Must not: write the socket (only
//! the writer does, so packets never interleave) or panic on what a broker sends: anything
//! unexpected ends the thread with an error in its `ReaderEnd`.

use std::io::BufReader;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crossbeam_channel::Sender;
use mqtt_broker::mqtt::{read_packet, Ack, DecodeError, Packet, PacketId, QoS};

use crate::client::{describe, MAX_PACKET, VERSION};
use crate::payload;
use crate::stream::BenchStream;
use crate::tally::Tally;
use crate::traffic::{Backlog, Counters};
use crate::writer::ToWriter;

/// How a reader ended.
pub struct ReaderEnd {
    pub tally: Tally,
    /// `None` when the broker closed the connection after our DISCONNECT (or we shut it down).
    pub error: Option<String>,
}

pub struct Reader {
    pub input: BufReader<BenchStream>,
    pub to_writer: Sender<ToWriter>,
    pub counters: Arc<Counters>,
    pub backlog: Arc<Backlog>,
}

/// Answers gathered while the read buffer still holds packets, sent to the writer in one
/// message once it runs dry: one channel hop and one write for many acknowledgements.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    completed: Vec<PacketId>,
    /// Deliveries not yet added to the counters.
    deliveries: u64,
    /// Progress not yet added to the run's backlog.
    progress: u64,
    /// When the last of them arrived (the clock only moves forward on one thread).
    last_delivery_ns: u64,
    /// When the last PUBACK or PUBCOMP arrived, 0 if none since the last flush.
    last_ack_ns: u64,
    /// Packets handled since the last flush.
    items: usize,
}

/// Packets handled before answers are flushed even though more are buffered.
const FLUSH_AFTER: usize = 64;

impl Reader {
    pub fn run(mut self) -> ReaderEnd {
        let mut tally = Tally::default();
        let mut buf = Vec::with_capacity(256);
        let mut pending = Pending::default();
        let error = loop {
            let packet = match read_packet(&mut self.input, VERSION, MAX_PACKET, &mut buf) {
                Ok(packet) => packet,
                Err(e) => break self.ended(&e),
            };
            if let Err(e) = self.handle(packet, &mut tally, &mut pending) {
                break Some(e);
            }
            // A read buffer that never runs dry (a steady stream cut mid-packet) must not hold
            // acknowledgements back, so a full batch goes out as well.
            let flush_now = self.input.buffer().is_empty() || pending.items >= FLUSH_AFTER;
            if flush_now && !self.flush(&mut pending) {
                break None;
            }
        };
        self.flush(&mut pending);
        self.counters.reader_done.store(true, Ordering::Release);
        ReaderEnd { tally, error }
    }

    /// Hands the gathered answers to the writer and the deliveries to the run's backlog.
    /// Returns false when the writer has gone: the connection is closing.
    fn flush(&self, pending: &mut Pending) -> bool {
        // Counters move once per flush, not once per packet: locked instructions per message
        // would make the generator, which shares the machine with the broker, slower.
        self.backlog
            .add_progress(std::mem::take(&mut pending.progress));
        let deliveries = std::mem::take(&mut pending.deliveries);
        if deliveries > 0 {
            self.counters
                .delivered
                .fetch_add(deliveries, Ordering::Relaxed);
            self.counters
                .last_delivery_ns
                .store(pending.last_delivery_ns, Ordering::Relaxed);
        }
        if pending.last_ack_ns > 0 {
            self.counters
                .last_ack_ns
                .store(std::mem::take(&mut pending.last_ack_ns), Ordering::Relaxed);
        }
        pending.items = 0;
        if pending.bytes.is_empty() && pending.completed.is_empty() {
            return true;
        }
        let message = ToWriter::FromReader {
            bytes: std::mem::take(&mut pending.bytes),
            completed: std::mem::take(&mut pending.completed),
        };
        self.to_writer.send(message).is_ok()
    }

    fn handle(
        &self,
        packet: Packet,
        tally: &mut Tally,
        pending: &mut Pending,
    ) -> Result<(), String> {
        pending.items += 1;
        match packet {
            Packet::Publish(publish) => {
                let now = payload::now_ns();
                pending.progress += tally.record(payload::read(&publish.payload), now);
                pending.deliveries += 1;
                pending.last_delivery_ns = now;
                match (publish.qos, publish.packet_id) {
                    (QoS::AtMostOnce, _) => {}
                    (QoS::AtLeastOnce, Some(id)) => {
                        Packet::PubAck(Ack::new(id)).encode(VERSION, &mut pending.bytes)
                    }
                    (QoS::ExactlyOnce, Some(id)) => {
                        Packet::PubRec(Ack::new(id)).encode(VERSION, &mut pending.bytes)
                    }
                    (_, None) => return Err("QoS 1 or 2 PUBLISH without a packet id".into()),
                }
            }
            Packet::PubRel(ack) => {
                Packet::PubComp(Ack::new(ack.packet_id)).encode(VERSION, &mut pending.bytes)
            }
            Packet::PubAck(ack) | Packet::PubComp(ack) => {
                pending.last_ack_ns = payload::now_ns();
                pending.completed.push(ack.packet_id);
            }
            Packet::PubRec(ack) => {
                if ack.reason.is_error() {
                    // The flow ends here [MQTT-4.3.3]: no PUBREL follows a failed PUBREC.
                    return Err(format!("PUBREC refused the message: {:?}", ack.reason));
                }
                Packet::PubRel(Ack::new(ack.packet_id)).encode(VERSION, &mut pending.bytes);
            }
            Packet::PingResp => {}
            other => return Err(format!("unexpected {} from the broker", other.name())),
        }
        Ok(())
    }

    /// A read error: expected once the run is closing the connection, a failure before.
    fn ended(&self, error: &DecodeError) -> Option<String> {
        let closing = self.counters.closing.load(Ordering::Acquire);
        match error {
            DecodeError::Io(_) if closing => None,
            other => Some(describe(other)),
        }
    }
}
