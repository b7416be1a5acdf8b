//! One client connection: a reader thread that owns the socket's read half and a writer thread
//! that is the only one to write it, joined by a channel of `Outbound` items.
//!
//! Owns: starting the two threads, the `Outbound` vocabulary and `ClientHandle`, through which
//! the router and the reader reach the writer. Must not: hold session state (the router owns
//! it) or block the router: the router only ever uses the non-blocking methods here.

mod access;
mod futex_table;
mod gate;
mod handshake;
mod os_thread;
mod pool;
mod reader;
mod writer;

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::broker::Registry;
use crate::config::Config;
use crate::mqtt::{Disconnect, Packet, PacketId, ProtocolVersion};
use crate::queue::message::Delivery;
use crate::queue::QueueHandle;
use crate::transport::{Acceptor, Link, Output};

/// The bytes of deliveries (`Delivery::weight`) a writer's channel holds before the router
/// keeps further ones in the session queue: with large messages the count alone
/// (`writer_queue_capacity`) would let a stuck client's channel hold a great deal.
const WRITER_BYTES: usize = 1024 * 1024;

/// Something for the writer to put on the wire.
#[derive(Debug)]
pub enum Outbound {
    /// A message delivered to this client; its `Message` is shared with every other receiver.
    Publish {
        delivery: Delivery,
        packet_id: Option<PacketId>,
        dup: bool,
    },
    /// PUBACK, PUBREC, PUBREL or PUBCOMP with a success code.
    Ack(AckKind, PacketId),
    /// Any other packet (CONNACK, SUBACK, UNSUBACK, PINGRESP, or an ack with a reason).
    Packet(Box<Packet>),
    /// Write the DISCONNECT if there is one (v5 only), then close the connection.
    Close(Option<Box<Disconnect>>),
    /// Several deliveries at once: one channel operation and at most one wake-up for all.
    Batch(Vec<Outbound>),
    /// Write what the transport produced while reading (a WebSocket pong, a TLS alert).
    Flush,
}

/// The four acknowledgements of the QoS 1 and 2 flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    PubAck,
    PubRec,
    PubRel,
    PubComp,
}

/// The writer's mailbox. Cheap to clone; the writer stops once every handle is dropped and
/// what was queued has been written.
#[derive(Clone)]
pub struct ClientHandle {
    tx: Sender<Outbound>,
    shared: Arc<WriterShared>,
}

/// State the writer shares with whoever holds its handle.
struct WriterShared {
    /// Beyond this many deliveries waiting `room` says none.
    capacity: usize,
    /// Deliveries handed to the writer and not yet encoded, and their weight in bytes
    /// (`Delivery::weight`): the channel is bounded in both.
    waiting_deliveries: AtomicUsize,
    waiting_bytes: AtomicUsize,
    /// Set by the router when it kept messages back because the channel was full: the writer
    /// then tells the router when it has caught up.
    drain_requested: AtomicBool,
    /// The router's slot for this connection's session, for the writer's drain notice.
    session_slot: AtomicU32,
    /// Held by the router while this client's QoS 0 messages fill congested queues.
    gate: gate::ReaderGate,
    /// Bytes the socket has accepted so far: progress, for the router's progress clock.
    bytes_written: AtomicU64,
    /// An `Outbound::Flush` is queued and not yet handled: another would add nothing.
    flush_requested: AtomicBool,
    /// The connection, for `abort` (none in tests of the router).
    link: Option<Arc<dyn Link>>,
}

/// The writer has stopped; nothing sent to it will be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterGone;

impl ClientHandle {
    fn new(tx: Sender<Outbound>, capacity: usize, link: Option<Arc<dyn Link>>) -> Self {
        ClientHandle {
            tx,
            shared: Arc::new(WriterShared {
                capacity,
                waiting_deliveries: AtomicUsize::new(0),
                waiting_bytes: AtomicUsize::new(0),
                drain_requested: AtomicBool::new(false),
                session_slot: AtomicU32::new(u32::MAX),
                gate: gate::ReaderGate::default(),
                bytes_written: AtomicU64::new(0),
                flush_requested: AtomicBool::new(false),
                link,
            }),
        }
    }

    /// A handle whose "writer" is the returned receiver, for a client that lives inside the
    /// broker (a bridge's local side): it takes what the router sends from the receiver and
    /// reports with `taken`. `link` is what `abort` shuts down (the bridge's remote socket).
    pub(crate) fn in_process(
        capacity: usize,
        link: Arc<dyn Link>,
    ) -> (ClientHandle, Receiver<Outbound>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (ClientHandle::new(tx, capacity, Some(link)), rx)
    }

    /// What a writer does once it has taken `count` deliveries weighing `bytes` and put
    /// `written` bytes on its wire. True when the router asked to be told that the channel
    /// has emptied and it now has: the caller sends `QueueHandle::writer_drained`.
    pub(crate) fn taken(&self, count: usize, bytes: usize, written: usize, empty: bool) -> bool {
        let shared = &self.shared;
        shared.waiting_deliveries.fetch_sub(count, Ordering::AcqRel);
        shared.waiting_bytes.fetch_sub(bytes, Ordering::AcqRel);
        shared
            .bytes_written
            .fetch_add(written as u64, Ordering::Relaxed);
        empty && shared.drain_requested.swap(false, Ordering::AcqRel)
    }

    /// A handle whose "writer" is the returned receiver, for tests of the router.
    #[cfg(test)]
    pub(crate) fn for_tests(capacity: usize) -> (ClientHandle, Receiver<Outbound>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (ClientHandle::new(tx, capacity, None), rx)
    }

    /// What the writer does once it has encoded `count` deliveries, for tests of the router.
    #[cfg(test)]
    pub(crate) fn written_for_tests(&self, count: usize) {
        self.shared
            .waiting_deliveries
            .fetch_sub(count, Ordering::AcqRel);
        self.shared.waiting_bytes.store(0, Ordering::Release);
    }

    /// Queues a control packet. These are not counted against the capacity: the protocol
    /// bounds them (one per packet the client sent, or per in-flight message).
    pub fn send(&self, item: Outbound) -> Result<(), WriterGone> {
        self.tx.send(item).map_err(|_| WriterGone)
    }

    pub fn send_packet(&self, packet: Packet) -> Result<(), WriterGone> {
        self.send(Outbound::Packet(Box::new(packet)))
    }

    /// How many more deliveries may be handed over now (0 once `capacity` are waiting, in
    /// which case the writer will send a drain notice when it has caught up).
    pub fn room(&self) -> usize {
        let room = |waiting: usize| self.shared.capacity.saturating_sub(waiting);
        let free = room(self.shared.waiting_deliveries.load(Ordering::Acquire));
        if free > 0 {
            return free;
        }
        self.shared.drain_requested.store(true, Ordering::Release);
        // The writer may have caught up between the two checks.
        room(self.shared.waiting_deliveries.load(Ordering::Acquire))
    }

    /// How many more bytes of deliveries may be handed over now: while fewer than
    /// `WRITER_BYTES` wait, at least one more delivery may go, whatever its size.
    pub fn byte_room(&self) -> usize {
        let waiting = self.shared.waiting_bytes.load(Ordering::Acquire);
        WRITER_BYTES.saturating_sub(waiting)
    }

    /// Asks the writer to tell the router when it has caught up.
    pub fn request_drain_notice(&self) {
        self.shared.drain_requested.store(true, Ordering::Release);
    }

    /// Hands deliveries (`Outbound::Publish` items) to the writer in one go. Never blocks.
    pub fn deliver(&self, mut items: Vec<Outbound>) -> Result<(), WriterGone> {
        let count = items.len();
        let bytes: usize = items
            .iter()
            .map(|item| match item {
                Outbound::Publish { delivery, .. } => delivery.weight(),
                _ => 0,
            })
            .sum();
        self.shared.waiting_bytes.fetch_add(bytes, Ordering::AcqRel);
        let item = match count {
            0 => return Ok(()),
            1 => items.pop().expect("one item"),
            _ => Outbound::Batch(items),
        };
        self.shared
            .waiting_deliveries
            .fetch_add(count, Ordering::AcqRel);
        self.send(item)
    }

    /// Asks the writer to send `disconnect` (if any) and close the connection.
    pub fn close(&self, disconnect: Option<Disconnect>) {
        let _ = self.send(Outbound::Close(disconnect.map(Box::new)));
    }

    /// Items waiting to be written.
    pub fn backlog(&self) -> usize {
        self.tx.len()
    }

    /// Stops this client's reader before its next packet until `release_reader` (QoS 0 flow
    /// control). Never blocks.
    pub fn hold_reader(&self) {
        self.shared.gate.hold();
    }

    pub fn release_reader(&self) {
        self.shared.gate.release();
    }

    /// The reader's side of `hold_reader`: waits while held, at most `limit`; false if the
    /// gate was still held then.
    pub fn wait_for_reader_gate(&self, limit: std::time::Duration) -> bool {
        self.shared.gate.wait(limit)
    }

    /// Closes the socket at once, without waiting for the writer: it may be blocked writing to
    /// a client that does not read. Both threads then see the socket fail and end.
    pub fn abort(&self) {
        if let Some(link) = &self.shared.link {
            link.shutdown();
        }
    }

    /// Bytes the socket has accepted so far (the writer counts each write, even a partial one).
    pub fn bytes_written(&self) -> u64 {
        self.shared.bytes_written.load(Ordering::Relaxed)
    }

    /// Asks the writer to write what the transport produced while reading (a WebSocket pong,
    /// a TLS alert). At most one request waits at a time, however often the reader asks.
    pub fn request_flush(&self) {
        if !self.shared.flush_requested.swap(true, Ordering::AcqRel) {
            let _ = self.send(Outbound::Flush);
        }
    }

    /// Records which session slot this connection belongs to, for drain notices.
    pub fn bind_session(&self, slot: u32) {
        self.shared.session_slot.store(slot, Ordering::Release);
    }
}

/// Starts the reader thread for a freshly accepted connection; the thread makes a transport of
/// it (`acceptor`: TLS handshake, WebSocket upgrade), and the reader starts the writer once it
/// knows the protocol version. Returns an error only if the thread cannot start.
pub fn spawn(
    stream: TcpStream,
    peer: SocketAddr,
    connection_id: u64,
    queue: QueueHandle,
    config: Arc<Config>,
    registry: Arc<Registry>,
    acceptor: Arc<Acceptor>,
) -> io::Result<()> {
    let stack_size = config.client_stack_size;
    // A thread parked by an earlier connection if there is one (see `pool`).
    pool::pool().spawn(
        stack_size,
        Box::new(move || {
            // One socket, shared: the reader reads it, the writer writes it, the registry can
            // shut it down (a stalled handshake included). It closes when the last lets go.
            let stream = Arc::new(stream);
            let link: Arc<dyn Link> = Arc::clone(&stream) as Arc<dyn Link>;
            let registered = registry.register(connection_id, &link);
            let transport = match acceptor.accept(stream, peer, handshake_timeout(&config)) {
                Ok(transport) => transport,
                Err(e) => {
                    log::warn!("{peer}: {e}");
                    return;
                }
            };
            reader::run(transport, peer, connection_id, queue, &config, &registered);
        }),
    )
}

/// Starts the reader thread of a connection whose transport is already made (QUIC: the
/// endpoint thread made it). Returns an error only if the thread cannot start.
pub fn spawn_transport(
    transport: crate::transport::Transport,
    peer: SocketAddr,
    connection_id: u64,
    queue: QueueHandle,
    config: Arc<Config>,
    registry: Arc<Registry>,
) -> io::Result<()> {
    let stack_size = config.client_stack_size;
    pool::pool().spawn(
        stack_size,
        Box::new(move || {
            let link = Arc::clone(&transport.output.link);
            let registered = registry.register(connection_id, &link);
            reader::run(transport, peer, connection_id, queue, &config, &registered);
        }),
    )
}

/// The TLS handshake and WebSocket upgrade get as long as a client gets to send CONNECT.
fn handshake_timeout(config: &Config) -> Duration {
    config.connect_timeout
}

/// What the writer needs to know about the connection it writes.
struct WriterSetup {
    output: Output,
    connection_id: u64,
    version: ProtocolVersion,
    /// The client's Topic Alias Maximum (MQTT 5): how many outbound aliases it accepts.
    topic_alias_maximum: u16,
    write_timeout: std::time::Duration,
}

/// Starts the writer thread and returns its handle.
fn spawn_writer(
    setup: WriterSetup,
    queue: QueueHandle,
    config: &Config,
) -> io::Result<ClientHandle> {
    let (tx, rx): (Sender<Outbound>, Receiver<Outbound>) = crossbeam_channel::unbounded();
    let handle = ClientHandle::new(
        tx,
        config.writer_queue_capacity,
        Some(Arc::clone(&setup.output.link)),
    );
    let shared = handle.shared.clone();
    pool::pool().spawn(
        config.client_stack_size,
        Box::new(move || writer::run(setup, rx, shared, queue)),
    )?;
    Ok(handle)
}
