//! The writer thread: the only code that writes a client's socket.
//!
//! Owns: encoding `Outbound` items in batches into one reusable buffer and writing them with a
//! single syscall per batch, and closing the socket when told to or when every handle is gone.
//! Must not: read the socket, decide what to send, or block on anything but its own channel and
//! its own socket (the one send it makes, a drain notice to the router, never waits on a writer).

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;
use log::{debug, trace};

use super::{AckKind, Outbound, WriterShared};
use crate::mqtt::{encode_publish, Ack, Packet, ProtocolVersion, PublishView};
use crate::queue::{ConnectionRef, QueueHandle};

/// A batch is written once it reaches this size, even if more items are waiting.
const BATCH_BYTES: usize = 64 * 1024;
/// After a burst the buffer shrinks back to this, so idle clients stay small.
const IDLE_BUFFER: usize = 4 * 1024;
/// A client whose socket accepts nothing for this long is taken for dead: the writer gives up,
/// which closes the connection (and the will is published).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

pub(super) fn run(
    stream: Arc<TcpStream>,
    rx: Receiver<Outbound>,
    version: ProtocolVersion,
    shared: Arc<WriterShared>,
    connection_id: u64,
    queue: QueueHandle,
) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let mut out = Vec::with_capacity(IDLE_BUFFER);
    // `recv` fails once every handle is dropped and the channel is empty.
    'connection: while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        let mut closing = false;
        while let Some(item) = next.take() {
            if encode(item, version, &mut out) {
                closing = true;
                break;
            }
            if out.len() >= BATCH_BYTES {
                break;
            }
            next = rx.try_recv().ok();
        }
        if !out.is_empty() {
            trace!("client {connection_id}: writing {} bytes", out.len());
            if let Err(e) = (&*stream).write_all(&out) {
                debug!("client {connection_id}: write failed: {e}");
                break 'connection;
            }
            out.clear();
        }
        if closing {
            break;
        }
        if rx.is_empty() {
            if out.capacity() > IDLE_BUFFER {
                out.shrink_to(IDLE_BUFFER);
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
    // Ends the reader's blocking read too, if it is still waiting.
    let _ = stream.shutdown(Shutdown::Both);
    debug!("client {connection_id}: writer stopped");
}

/// Appends `item` to `out`; true when the connection is to be closed after writing it.
fn encode(item: Outbound, version: ProtocolVersion, out: &mut Vec<u8>) -> bool {
    match item {
        Outbound::Publish {
            message,
            qos,
            retain,
            packet_id,
            dup,
        } => {
            let view = PublishView {
                dup,
                qos,
                retain,
                packet_id,
                topic: &message.topic,
                payload: &message.payload,
                properties: &message.properties,
                subscription_identifiers: &[],
                message_expiry_interval: None,
            };
            encode_publish(out, version, &view);
            false
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
            false
        }
        Outbound::Packet(packet) => {
            packet.encode(version, out);
            false
        }
        Outbound::Close(disconnect) => {
            if let Some(disconnect) = disconnect {
                if version.is_v5() {
                    Packet::Disconnect(*disconnect).encode(version, out);
                }
            }
            true
        }
    }
}
