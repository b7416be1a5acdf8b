//! The `quic-endpoint` thread: the one owner of a QUIC listener's UDP socket (for sending),
//! its quinn `Endpoint` and every `Connection`; and the `quic-udp` thread that receives
//! datagrams for it.
//!
//! Owns: accepting connections (a Retry round trip for unvalidated addresses once many
//! handshakes are in progress; refusal past `max_connections`), timers, moving each client's
//! stream bytes to its read half (a bounded channel; a full channel leaves the bytes in quinn,
//! whose flow control then stops the client) and writing what its write half sends, stream by
//! stream, holding what a shut flow-control window does not take. Must not: block on a
//! client thread (every send to one is `try_send`), know MQTT, or key anything by the peer's
//! address (connections are found by connection id, so a client may change address).
//!
//! The loop waits with `crossbeam_channel::select!` on received datagrams, on commands from
//! the client threads, and on the earliest connection timer (a binary heap of deadlines,
//! checked lazily), waking at least every `TICK` to see whether the broker is stopping.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use log::{debug, info, warn};
use quinn_proto::{
    Connection, ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig, Event, ReadError,
    StreamEvent, StreamId, VarInt, WriteError,
};

use super::halves::{Command, Inbound, QuicLink, QuicRead, QuicWrite, Shared, StreamKind};
use super::{QuicListener, QuicSettings, Spawner};
use crate::transport::{Output, Transport};

/// Kernel receive and send buffer asked for the UDP socket.
const UDP_BUFFER: usize = 4 * 1024 * 1024;
/// The longest the loop sleeps, so that it notices the broker stopping.
const TICK: Duration = Duration::from_millis(100);
/// Datagrams received and not yet handled; past it the UDP thread drops them, as a full
/// socket buffer would (QUIC retransmits).
const DATAGRAM_QUEUE: usize = 4096;
/// Chunks of stream data waiting for one client's reader thread (each at most `CHUNK`).
const READER_QUEUE: usize = 16;
/// The largest chunk handed over at a time.
const CHUNK: usize = 64 * 1024;
/// How long a graceful close waits for the client to acknowledge what was written.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long the endpoint keeps serving its connections once the broker stops, so that
/// the router's DISCONNECTs go out.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// The application error code of a stream reset for a malformed packet, and of a connection
/// closed by the broker (0: no error).
const MALFORMED: u32 = 0x81;

pub(super) fn start(
    socket: UdpSocket,
    settings: QuicSettings,
    spawn: Spawner,
    stopping: Arc<AtomicBool>,
) -> io::Result<QuicListener> {
    let local = socket.local_addr()?;
    // Bursts from many clients arrive while the endpoint thread is busy: a larger kernel
    // buffer keeps them from being dropped (a drop costs a retransmit and a smaller
    // congestion window). Best effort: the kernel caps it at net.core.rmem_max.
    let sock = socket2::SockRef::from(&socket);
    let _ = sock.set_recv_buffer_size(UDP_BUFFER);
    let _ = sock.set_send_buffer_size(UDP_BUFFER);
    let receiver = socket.try_clone()?;
    receiver.set_read_timeout(Some(TICK))?;
    let (datagrams_tx, datagrams) = crossbeam_channel::bounded(DATAGRAM_QUEUE);
    let (commands_tx, commands) = crossbeam_channel::unbounded();
    // The UDP thread runs until the endpoint has finished (it serves closing connections
    // after the broker stops), not merely until the stop flag.
    let done = Arc::new(AtomicBool::new(false));
    let udp_done = Arc::clone(&done);
    let udp = std::thread::Builder::new()
        .name("quic-udp".into())
        .spawn(move || receive(receiver, datagrams_tx, udp_done))?;
    let endpoint = Endpoint::new(
        Arc::new(EndpointConfig::default()),
        Some(Arc::clone(&settings.server)),
        true,
        None,
    );
    let state = State {
        socket,
        endpoint,
        settings,
        spawn,
        commands_tx,
        clients: HashMap::new(),
        by_handle: HashMap::new(),
        timers: BinaryHeap::new(),
        next_client: 1,
        buf: Vec::new(),
    };
    let endpoint = std::thread::Builder::new()
        .name("quic-endpoint".into())
        .spawn(move || {
            info!("listening on {local} (QUIC)");
            state.run(datagrams, commands, stopping);
            done.store(true, Ordering::Release);
        })?;
    Ok(QuicListener {
        threads: vec![endpoint, udp],
    })
}

/// The `quic-udp` thread: blocking receives, handed to the endpoint thread.
fn receive(socket: UdpSocket, to_endpoint: Sender<(BytesMut, SocketAddr)>, done: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 65536];
    while !done.load(Ordering::Acquire) {
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => match to_endpoint.try_send((BytesMut::from(&buf[..n]), from)) {
                Ok(()) | Err(TrySendError::Full(_)) => {}
                Err(TrySendError::Disconnected(_)) => break,
            },
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                // ICMP errors surface here on some systems; they concern one peer only.
                debug!("QUIC receive: {e}");
            }
        }
    }
}

struct State {
    socket: UdpSocket,
    endpoint: Endpoint,
    settings: QuicSettings,
    spawn: Spawner,
    commands_tx: Sender<Command>,
    /// Every connection by our own id (never reused: a late command for a closed connection
    /// cannot reach a new one).
    clients: HashMap<u64, Client>,
    by_handle: HashMap<ConnectionHandle, u64>,
    /// Connection deadlines, earliest first; an entry whose client's timer has since changed
    /// is skipped.
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    next_client: u64,
    buf: Vec<u8>,
}

/// One connection and what the endpoint holds for it.
struct Client {
    handle: ConnectionHandle,
    conn: Connection,
    /// Set once the first bidirectional stream opened and the client threads were started.
    shared: Option<Arc<Shared>>,
    to_reader: Option<Sender<Inbound>>,
    control: Option<StreamId>,
    /// Each stream's kind, for the read half.
    kinds: HashMap<StreamId, StreamKind>,
    /// Streams with data left unread because the reader's channel was full.
    unread: HashSet<StreamId>,
    /// Bytes per stream that quinn did not take yet (flow control).
    pending: HashMap<StreamId, VecDeque<Bytes>>,
    timer: Option<Instant>,
    /// A graceful close waits until then for the client to acknowledge what was written.
    closing: Option<Instant>,
    handshaking: bool,
    /// Closed unless its control stream opens by then.
    control_by: Instant,
}

impl State {
    fn run(
        mut self,
        datagrams: Receiver<(BytesMut, SocketAddr)>,
        commands: Receiver<Command>,
        stopping: Arc<AtomicBool>,
    ) {
        let mut stop_at: Option<Instant> = None;
        loop {
            if let Some(server) = self.settings.take_reloaded() {
                self.endpoint.set_server_config(Some(server));
            }
            let now = Instant::now();
            if stop_at.is_none() && stopping.load(Ordering::Acquire) {
                stop_at = Some(now + STOP_GRACE);
            }
            if let Some(at) = stop_at {
                if self.clients.is_empty() || now >= at {
                    break;
                }
            }
            let wait = self
                .next_timer()
                .map_or(TICK, |at| at.saturating_duration_since(now).min(TICK));
            crossbeam_channel::select! {
                recv(datagrams) -> datagram => {
                    let Ok((data, from)) = datagram else { break };
                    self.datagram(data, from);
                    // Handle a burst before looking at timers and commands again.
                    for _ in 0..64 {
                        let Ok((data, from)) = datagrams.try_recv() else { break };
                        self.datagram(data, from);
                    }
                }
                recv(commands) -> command => {
                    if let Ok(command) = command {
                        self.command(command);
                        for _ in 0..256 {
                            let Ok(command) = commands.try_recv() else { break };
                            self.command(command);
                        }
                    }
                }
                default(wait) => {}
            }
            self.expire_timers();
        }
        for client in self.clients.values_mut() {
            client
                .conn
                .close(Instant::now(), VarInt::from_u32(0), Bytes::new());
        }
        let ids: Vec<u64> = self.clients.keys().copied().collect();
        for id in ids {
            self.drive(id);
        }
        debug!("QUIC endpoint stopped");
    }

    fn next_timer(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            match self.clients.get(&id) {
                Some(client) if client.timer == Some(at) => return Some(at),
                _ => {
                    self.timers.pop();
                }
            }
        }
        None
    }

    fn expire_timers(&mut self) {
        let now = Instant::now();
        while let Some(at) = self.next_timer() {
            if at > now {
                break;
            }
            let Some(Reverse((_, id))) = self.timers.pop() else {
                break;
            };
            if let Some(client) = self.clients.get_mut(&id) {
                client.timer = None;
                client.conn.handle_timeout(now);
            }
            self.drive(id);
        }
    }

    fn datagram(&mut self, data: BytesMut, from: SocketAddr) {
        let now = Instant::now();
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let event = self.endpoint.handle(now, from, None, None, data, &mut buf);
        match event {
            Some(DatagramEvent::ConnectionEvent(handle, event)) => {
                if let Some(&id) = self.by_handle.get(&handle) {
                    if let Some(client) = self.clients.get_mut(&id) {
                        client.conn.handle_event(event);
                    }
                    self.drive(id);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => self.incoming(incoming, now, &mut buf),
            Some(DatagramEvent::Response(transmit)) => self.send(
                &buf[..transmit.size],
                transmit.destination,
                transmit.segment_size,
            ),
            None => {}
        }
        self.buf = buf;
    }

    fn incoming(&mut self, incoming: quinn_proto::Incoming, now: Instant, buf: &mut Vec<u8>) {
        let held = self.clients.len();
        if self.settings.max_connections.is_some_and(|max| held >= max) {
            warn!(
                "QUIC: {} refused: max_connections reached",
                incoming.remote_address()
            );
            let transmit = self.endpoint.refuse(incoming, buf);
            self.send(
                &buf[..transmit.size],
                transmit.destination,
                transmit.segment_size,
            );
            return;
        }
        let handshaking = self.clients.values().filter(|c| c.handshaking).count();
        if !incoming.remote_address_validated()
            && handshaking >= self.settings.retry_above
            && incoming.may_retry()
        {
            match self.endpoint.retry(incoming, buf) {
                Ok(transmit) => self.send(
                    &buf[..transmit.size],
                    transmit.destination,
                    transmit.segment_size,
                ),
                Err(e) => self.endpoint.ignore(e.into_incoming()),
            }
            return;
        }
        match self.endpoint.accept(incoming, now, buf, None) {
            Ok((handle, conn)) => {
                let id = self.next_client;
                self.next_client += 1;
                debug!("QUIC connection {id} from {}", conn.remote_address());
                self.by_handle.insert(handle, id);
                self.clients.insert(
                    id,
                    Client {
                        handle,
                        conn,
                        shared: None,
                        to_reader: None,
                        control: None,
                        kinds: HashMap::new(),
                        unread: HashSet::new(),
                        pending: HashMap::new(),
                        timer: None,
                        closing: None,
                        handshaking: true,
                        control_by: now + self.settings.control_deadline,
                    },
                );
                self.drive(id);
            }
            Err(e) => {
                debug!("QUIC handshake refused: {}", e.cause);
                if let Some(transmit) = e.response {
                    self.send(
                        &buf[..transmit.size],
                        transmit.destination,
                        transmit.segment_size,
                    );
                }
            }
        }
    }

    fn command(&mut self, command: Command) {
        let id = match &command {
            Command::Write { client, .. }
            | Command::Reset { client, .. }
            | Command::ReadMore { client }
            | Command::Close { client, .. } => *client,
        };
        let Some(client) = self.clients.get_mut(&id) else {
            // The connection has gone: release what the writer counted, so that it stops.
            return;
        };
        match command {
            Command::Write { stream, data, .. } => {
                let stream = match stream {
                    Some(tag) => StreamId::from(VarInt::from_u64(tag).unwrap_or(VarInt::MAX)),
                    None => match client.control {
                        Some(control) => control,
                        None => return,
                    },
                };
                client
                    .pending
                    .entry(stream)
                    .or_default()
                    .push_back(Bytes::from(data));
                client.flush(stream);
            }
            Command::Reset { stream, .. } => {
                let stream = StreamId::from(VarInt::from_u64(stream).unwrap_or(VarInt::MAX));
                let code = VarInt::from_u32(MALFORMED);
                let _ = client.conn.recv_stream(stream).stop(code);
                if stream.dir() == Dir::Bi {
                    let _ = client.conn.send_stream(stream).reset(code);
                }
                client.drop_pending(stream);
                client.unread.remove(&stream);
            }
            Command::ReadMore { .. } => {
                let streams: Vec<StreamId> = client.unread.drain().collect();
                for stream in streams {
                    client.read(stream);
                }
            }
            Command::Close { graceful, .. } => {
                if graceful && client.closing.is_none() {
                    let streams: Vec<StreamId> = client.kinds.keys().copied().collect();
                    for stream in streams {
                        if stream.dir() == Dir::Bi {
                            let _ = client.conn.send_stream(stream).finish();
                        }
                    }
                    client.closing = Some(Instant::now() + CLOSE_GRACE);
                } else if !graceful {
                    client
                        .conn
                        .close(Instant::now(), VarInt::from_u32(0), Bytes::new());
                }
            }
        }
        self.drive(id);
    }

    /// Runs a connection after anything happened to it: its events, its output, its timer.
    fn drive(&mut self, id: u64) {
        let now = Instant::now();
        let Some(client) = self.clients.get_mut(&id) else {
            return;
        };
        let mut spawn = false;
        loop {
            while let Some(event) = client.conn.poll_endpoint_events() {
                if let Some(event) = self.endpoint.handle_event(client.handle, event) {
                    client.conn.handle_event(event);
                }
            }
            let Some(event) = client.conn.poll() else {
                break;
            };
            match event {
                Event::Connected => client.handshaking = false,
                Event::ConnectionLost { reason } => {
                    debug!("QUIC connection {id} lost: {reason}");
                    client.lost();
                }
                Event::Stream(StreamEvent::Opened { dir }) => {
                    while let Some(stream) = client.conn.streams().accept(dir) {
                        let kind = match (dir, client.control) {
                            (Dir::Bi, None) => {
                                client.control = Some(stream);
                                spawn = true;
                                StreamKind::Control
                            }
                            (Dir::Bi, Some(_)) => StreamKind::Data,
                            (Dir::Uni, _) => StreamKind::Uni,
                        };
                        client.kinds.insert(stream, kind);
                        if spawn && client.shared.is_none() {
                            // Start the client threads before reading, so that the reader
                            // channel exists.
                            break;
                        }
                        client.read(stream);
                    }
                    if spawn && client.shared.is_none() {
                        spawn = false;
                        if let Some(control) = client.control {
                            self_spawn(client, id, &self.settings, &self.spawn, &self.commands_tx);
                            client.read(control);
                            // Streams accepted after the control stream in the same burst.
                            while let Some(stream) = client.conn.streams().accept(dir) {
                                client.kinds.insert(stream, StreamKind::Data);
                            }
                            // And unidirectional ones opened before it: read them all now.
                            let others: Vec<StreamId> = client
                                .kinds
                                .keys()
                                .copied()
                                .filter(|s| Some(*s) != client.control)
                                .collect();
                            for stream in others {
                                client.read(stream);
                            }
                        }
                    }
                }
                Event::Stream(StreamEvent::Readable { id: stream }) => client.read(stream),
                Event::Stream(StreamEvent::Writable { id: stream }) => client.flush(stream),
                Event::Stream(StreamEvent::Stopped { id: stream, .. }) => {
                    client.drop_pending(stream)
                }
                Event::Stream(_) | Event::HandshakeDataReady => {}
                Event::DatagramReceived | Event::DatagramsUnblocked => {}
            }
        }
        if client.shared.is_none() && now >= client.control_by && !client.conn.is_closed() {
            debug!("QUIC connection {id}: no control stream in time, closed");
            client.conn.close(now, VarInt::from_u32(0), Bytes::new());
        }
        if let Some(closing) = client.closing {
            let delivered = client.pending.values().all(|q| q.is_empty())
                && client.conn.streams().send_streams() == 0;
            if delivered || now >= closing {
                client.closing = None;
                client.conn.close(now, VarInt::from_u32(0), Bytes::new());
            }
        }
        let mut buf = std::mem::take(&mut self.buf);
        loop {
            buf.clear();
            let Some(transmit) = client.conn.poll_transmit(now, 1, &mut buf) else {
                break;
            };
            send_to(
                &self.socket,
                &buf[..transmit.size],
                transmit.destination,
                transmit.segment_size,
            );
        }
        self.buf = buf;
        if client.conn.is_drained() {
            let stats = client.conn.stats();
            debug!(
                "QUIC connection {id} drained: {} packets lost of {} sent, rtt {:?}",
                stats.path.lost_packets, stats.path.sent_packets, stats.path.rtt
            );
            client.lost();
            self.by_handle.remove(&client.handle);
            self.clients.remove(&id);
            return;
        }
        let mut timer = client.conn.poll_timeout();
        if client.shared.is_none() && !client.conn.is_closed() {
            timer = Some(timer.map_or(client.control_by, |t| t.min(client.control_by)));
        }
        if timer != client.timer {
            client.timer = timer;
            if let Some(at) = timer {
                self.timers.push(Reverse((at, id)));
            }
        }
    }

    fn send(&self, data: &[u8], to: SocketAddr, segment: Option<usize>) {
        send_to(&self.socket, data, to, segment);
    }
}

/// Starts the client threads of a connection whose control stream has opened.
fn self_spawn(
    client: &mut Client,
    id: u64,
    settings: &QuicSettings,
    spawn: &Spawner,
    commands: &Sender<Command>,
) {
    let shared = Arc::new(Shared {
        client: id,
        commands: commands.clone(),
        budget: Default::default(),
        routes: Default::default(),
        paused: AtomicBool::new(false),
        v5: AtomicBool::new(false),
    });
    let (to_reader, from_endpoint) = crossbeam_channel::bounded(READER_QUEUE);
    let transport = Transport {
        input: Box::new(QuicRead::new(
            Arc::clone(&shared),
            from_endpoint,
            settings.max_packet_size,
        )),
        output: Output {
            write: Box::new(QuicWrite::new(Arc::clone(&shared))),
            link: Arc::new(QuicLink(Arc::clone(&shared))),
        },
        certificate_username: None,
    };
    let peer = client.conn.remote_address();
    if let Err(e) = spawn(transport, peer) {
        warn!("{peer}: cannot start QUIC client threads: {e}");
        client
            .conn
            .close(Instant::now(), VarInt::from_u32(0), Bytes::new());
        return;
    }
    client.shared = Some(shared);
    client.to_reader = Some(to_reader);
}

impl Client {
    /// Hands a stream's data to the reader thread while its channel has room; what is left
    /// stays in quinn (its flow control window then closes on the client).
    fn read(&mut self, stream: StreamId) {
        let Some(to_reader) = self.to_reader.clone() else {
            return;
        };
        let kind = self.kinds.get(&stream).copied().unwrap_or(StreamKind::Data);
        let tag = u64::from(stream);
        let mut recv = self.conn.recv_stream(stream);
        let Ok(mut chunks) = recv.read(true) else {
            return;
        };
        let mut finished = false;
        loop {
            if to_reader.is_full() {
                self.unread.insert(stream);
                if let Some(shared) = &self.shared {
                    shared.paused.store(true, Ordering::Release);
                }
                // The reader may have emptied the channel meanwhile and missed the flag.
                if !to_reader.is_full() {
                    continue;
                }
                break;
            }
            match chunks.next(CHUNK) {
                Ok(Some(chunk)) => {
                    let _ = to_reader.try_send(Inbound::Data {
                        stream: tag,
                        kind,
                        bytes: chunk.bytes,
                    });
                }
                Ok(None) => {
                    finished = true;
                    break;
                }
                Err(ReadError::Blocked) => break,
                Err(ReadError::Reset(_)) => {
                    finished = true;
                    break;
                }
            }
        }
        let _ = chunks.finalize();
        if finished {
            self.unread.remove(&stream);
            // The one message that must not be lost: sent even past the bound (one per stream).
            let _ = to_reader.send_timeout(
                Inbound::Finished { stream: tag, kind },
                Duration::from_millis(0),
            );
            if kind == StreamKind::Control {
                // Without a control stream the session cannot go on.
                self.to_reader = None;
            }
        }
    }

    /// Writes what is pending on `stream` while quinn takes it.
    fn flush(&mut self, stream: StreamId) {
        let Some(queue) = self.pending.get_mut(&stream) else {
            return;
        };
        let mut released = 0;
        let mut failed = false;
        while let Some(front) = queue.front_mut() {
            match self.conn.send_stream(stream).write(front) {
                Ok(n) => {
                    released += n;
                    if n == front.len() {
                        queue.pop_front();
                    } else {
                        let _ = front.split_to(n);
                        break;
                    }
                }
                Err(WriteError::Blocked) => break,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        if let Some(shared) = &self.shared {
            shared.budget.release(released);
        }
        if failed {
            self.drop_pending(stream);
        }
    }

    /// Drops what waits for a stream that the client stopped or that was reset.
    fn drop_pending(&mut self, stream: StreamId) {
        if let Some(queue) = self.pending.remove(&stream) {
            let bytes: usize = queue.iter().map(Bytes::len).sum();
            if let Some(shared) = &self.shared {
                shared.budget.release(bytes);
                shared.routes.forget_stream(u64::from(stream));
            }
        }
    }

    /// The connection has ended: the reader sees the end of its input, the writer stops.
    fn lost(&mut self) {
        self.to_reader = None;
        if let Some(shared) = &self.shared {
            shared.budget.close();
        }
    }
}

fn send_to(socket: &UdpSocket, data: &[u8], to: SocketAddr, segment: Option<usize>) {
    let size = segment.unwrap_or(data.len()).max(1);
    for datagram in data.chunks(size) {
        if let Err(e) = socket.send_to(datagram, to) {
            debug!("QUIC send to {to}: {e}");
        }
    }
}
