//! One bridge's threads: the supervisor, which (re)connects and then writes to the remote, and
//! the reader (`link::read_remote`) for as long as a link lasts.
//!
//! Owns: the reconnect loop (addresses, `round_robin`, `restart_timeout`, `start_type`), the
//! bridge's local session in our router (connected when the link is up, detached while it is
//! down so that the router queues its QoS 1/2 messages, resumed with every unacknowledged
//! message and PUBREL resent), the subscriptions on both sides, notifications, and the writer
//! loop (what the router sends to the bridge, remapped and written to the remote; PINGREQ).
//! Must not: keep messages of its own: the router's session is the only queue, so nothing is
//! lost with a link, and nothing is held twice.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};
use log::{debug, info, warn};

use super::backoff::Backoff;
use super::config::{BridgeConfig, StartType};
use super::link::{self, Halves, Remote, DOWN, UP};
use super::topics::remap_out;
use crate::client::{AckKind, ClientHandle, Outbound};
use crate::config::Config;
use crate::mqtt::{
    encode_publish, Ack, Disconnect, Packet, PacketId, ProtocolVersion, Publish, PublishProperties,
    PublishView, QoS, RetainHandling, Subscribe, SubscribeProperties, SubscriptionOptions,
};
use crate::queue::{ConnectRequest, ConnectionRef, Ending, QueueHandle};
use crate::transport::{Link, WriteHalf};

/// Connection ids for bridges' local sessions, far from the acceptors' (which count from 1).
static NEXT_CONNECTION: AtomicU64 = AtomicU64::new(1 << 62);

/// Bytes encoded before they are written, as the client writer batches.
const BATCH_BYTES: usize = 64 * 1024;

/// Why a link ended.
enum LinkEnd {
    /// The remote connection failed or closed.
    Lost,
    /// The broker is stopping.
    Stopped,
    /// The router closed the bridge's local session (shutdown, or a client took its id).
    LocalClosed,
    /// A lazy bridge had nothing to send for `idle_timeout`.
    Idle,
}

/// Everything one bridge's supervisor thread works with.
pub struct Supervisor {
    pub bridge: Arc<BridgeConfig>,
    pub queue: QueueHandle,
    pub config: Arc<Config>,
    /// Disconnected (or sent to) when the broker stops.
    pub stop: Receiver<()>,
    /// The remote socket of the current link, so that `stop` can end a blocked read or write.
    pub current: Arc<parking_lot::Mutex<Option<Arc<dyn Link>>>>,
}

impl Supervisor {
    pub fn run(self) {
        let bridge = Arc::clone(&self.bridge);
        let name = &bridge.name;
        let lazy = bridge.start_type == StartType::Lazy;
        if lazy && bridge.local_clean_start() {
            warn!("bridge {name}: start_type lazy with local_cleansession true never queues enough to start");
        }
        let mut backoff = Backoff::new(bridge.restart_timeout);
        let mut index = 0;
        loop {
            if self.stopping() || lazy && !self.wait_for_threshold() {
                break;
            }
            let receive_maximum = self.config.receive_maximum;
            let lost = match link::dial(&bridge, index, receive_maximum) {
                Ok((remote, halves)) => {
                    backoff.reset();
                    *self.current.lock() = Some(Arc::clone(&remote.link));
                    let end = self.run_link(&remote, halves, index);
                    *self.current.lock() = None;
                    match end {
                        LinkEnd::Stopped => break,
                        LinkEnd::Idle => {
                            info!(
                                "bridge {name}: idle for {:?}: stopped until {} messages wait",
                                bridge.idle_timeout, bridge.threshold
                            );
                            continue;
                        }
                        LinkEnd::Lost | LinkEnd::LocalClosed => {
                            info!("bridge {name}: link to {} down", remote.address);
                            true
                        }
                    }
                }
                Err(e) => {
                    let (host, port) = &bridge.addresses[index];
                    warn!("bridge {name}: cannot connect to {host}:{port}: {e}");
                    false
                }
            };
            if bridge.start_type == StartType::Once {
                info!("bridge {name}: start_type once: not reconnecting");
                break;
            }
            // A failed attempt moves on to the next address; a lost link goes back to the
            // first (main) one unless the addresses are equals (`round_robin`).
            index = if lost && !bridge.round_robin {
                0
            } else {
                (index + 1) % bridge.addresses.len()
            };
            let delay = backoff.next_delay();
            debug!("bridge {name}: next attempt in {delay:?}");
            if self.stop.recv_timeout(delay).is_ok() || self.stopping() {
                break;
            }
        }
        debug!("bridge {name}: stopped");
    }

    /// A lazy bridge waits until `threshold` messages wait in its local session; false when
    /// the broker stops first.
    fn wait_for_threshold(&self) -> bool {
        let client_id = self.bridge.local_clientid();
        let threshold = self.bridge.threshold as usize;
        loop {
            match self.queue.queued(&client_id) {
                Ok(queued) if queued >= threshold => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
            if self.stop.recv_timeout(LAZY_POLL).is_ok() || self.stopping() {
                return false;
            }
        }
    }

    fn stopping(&self) -> bool {
        matches!(
            self.stop.try_recv(),
            Ok(()) | Err(crossbeam_channel::TryRecvError::Disconnected)
        )
    }

    /// Creates the bridge's local session with its subscriptions before the first link (and
    /// before the broker accepts anyone), so that what is published while the remote is not
    /// up yet waits for it too. Not with `local_cleansession true`: every link starts afresh.
    pub fn prepare_local_session(&self) -> Result<(), crate::queue::RouterGone> {
        let (writer, _local_rx) = ClientHandle::in_process(1, Arc::new(NoLink));
        let from = self
            .queue
            .connect(self.local_request(writer, u16::MAX, None))?;
        if let Some(subscribe) = local_subscribe(&self.bridge) {
            self.queue.subscribe(from, subscribe)?;
        }
        self.queue
            .disconnect(from, Ending::Disconnect(Box::default()))
    }

    /// The bridge's CONNECT to our router. With `local_cleansession true` every link starts a
    /// fresh local session (mosquitto drops what was queued while the link was down);
    /// otherwise the session, with the messages queued meanwhile, is resumed.
    fn local_request(
        &self,
        writer: ClientHandle,
        receive_maximum: u16,
        max_packet_size: Option<u32>,
    ) -> ConnectRequest {
        let clean = self.bridge.local_clean_start();
        ConnectRequest {
            connection_id: NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed),
            client_id: self.bridge.local_clientid(),
            assigned_client_id: false,
            clean_start: clean,
            session_expiry: if clean { 0 } else { u32::MAX },
            version: ProtocolVersion::V5,
            will: None,
            receive_maximum,
            max_packet_size,
            problem_information: true,
            response_information: false,
            server_keep_alive: None,
            writer,
            read_acl: None,
            identity: Default::default(),
        }
    }

    /// One link's life: the local session attached, both sides subscribed, the reader
    /// started, then the writer loop until something ends it.
    fn run_link(&self, remote: &Remote, halves: Halves, address_index: usize) -> LinkEnd {
        let bridge = &self.bridge;
        let name = &bridge.name;
        let (writer, local_rx) =
            ClientHandle::in_process(self.config.writer_queue_capacity, Arc::clone(&remote.link));
        let Halves { input, output } = halves;
        let request = self.local_request(
            writer.clone(),
            remote.receive_maximum,
            remote.max_packet_size,
        );
        let Ok(from) = self.queue.connect(request) else {
            return LinkEnd::Stopped;
        };
        let mut out = Writer {
            bridge,
            remote,
            output,
            writer,
            from,
            queue: &self.queue,
            buf: Vec::new(),
            dropped_qos2: Vec::new(),
            last_write: Instant::now(),
            address_index,
        };
        if out.start().is_err() {
            out.end_local();
            remote.link.shutdown();
            return LinkEnd::Lost;
        }
        let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(1);
        let reader = {
            let bridge = Arc::clone(bridge);
            let queue = self.queue.clone();
            let link = Arc::clone(&remote.link);
            let version = remote.version;
            thread::Builder::new()
                .name(format!("bridge-{name}-rx"))
                .spawn(move || {
                    if let Err(e) = link::read_remote(&bridge, version, input, &queue, from) {
                        info!("bridge {}: {e}", bridge.name);
                    }
                    link.shutdown();
                    drop(done_tx);
                })
        };
        let end = match reader {
            Ok(reader) => {
                let end = out.run(&local_rx, &done_rx, &self.stop);
                if matches!(end, LinkEnd::Stopped | LinkEnd::Idle) {
                    out.goodbye();
                }
                remote.link.shutdown();
                let _ = reader.join();
                end
            }
            Err(e) => {
                warn!("bridge {name}: cannot start its reader thread: {e}");
                LinkEnd::Lost
            }
        };
        out.end_local();
        remote.link.shutdown();
        end
    }
}

/// A link for the handle of the session made before the first connection: nothing to close.
struct NoLink;

impl Link for NoLink {
    fn shutdown(&self) {}
}

/// The local side's SUBSCRIBE: every outgoing topic's local filter, with No Local (what the
/// bridge brings in never goes back out) and Retain As Published. Retained messages go out
/// when the subscription is new, not again at every reconnect of a kept session.
fn local_subscribe(bridge: &BridgeConfig) -> Option<Subscribe> {
    let filters: Vec<(String, SubscriptionOptions)> = bridge
        .topics
        .iter()
        .filter(|t| t.direction.goes_out())
        .map(|t| {
            let options = SubscriptionOptions {
                qos: t.qos,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::SendIfNewSubscription,
            };
            (t.local_topic.clone(), options)
        })
        .collect();
    (!filters.is_empty()).then(|| Subscribe {
        packet_id: PacketId::new(1).expect("1 is not 0"),
        filters,
        properties: SubscribeProperties::default(),
    })
}

/// The writer side of one link.
struct Writer<'a> {
    bridge: &'a BridgeConfig,
    remote: &'a Remote,
    output: Box<dyn WriteHalf>,
    writer: ClientHandle,
    from: ConnectionRef,
    queue: &'a QueueHandle,
    buf: Vec<u8>,
    /// QoS 2 messages too large for the remote, completed with the router alone: their PUBREL
    /// is answered here instead of going out.
    dropped_qos2: Vec<PacketId>,
    last_write: Instant,
    /// Which of the bridge's addresses this link goes to.
    address_index: usize,
}

impl Writer<'_> {
    /// Subscribes on both sides and says the link is up.
    fn start(&mut self) -> io::Result<()> {
        let bridge = self.bridge;
        let v5 = self.remote.version.is_v5();
        let id = PacketId::new(1).expect("1 is not 0");
        let remote_filters: Vec<(String, SubscriptionOptions)> = bridge
            .topics
            .iter()
            .filter(|t| t.direction.comes_in())
            .map(|t| {
                let options = SubscriptionOptions {
                    qos: t.qos,
                    // v5 says it itself; a 3.x bridge gets it from the bridge flag.
                    no_local: v5,
                    retain_as_published: v5,
                    retain_handling: RetainHandling::SendOnSubscribe,
                };
                (t.remote_topic.clone(), options)
            })
            .collect();
        if !remote_filters.is_empty() {
            let subscribe = Subscribe {
                packet_id: id,
                filters: remote_filters,
                properties: SubscribeProperties::default(),
            };
            Packet::Subscribe(subscribe).encode(self.remote.version, &mut self.buf);
        }
        if let Some(subscribe) = local_subscribe(bridge) {
            let _ = self.queue.subscribe(self.from, subscribe);
        }
        if bridge.notifications {
            self.notify_local(UP);
            if !bridge.notifications_local_only {
                self.notification(UP)
                    .encode(self.remote.version, &mut self.buf);
            }
        }
        self.flush()
    }

    fn notification(&self, state: &[u8]) -> Packet {
        Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: true,
            topic: self.bridge.notification_topic(),
            packet_id: None,
            properties: PublishProperties::default(),
            payload: state.into(),
        })
    }

    /// The state, retained, in our broker (QoS 0: an in-process hand-over loses nothing).
    fn notify_local(&self, state: &[u8]) {
        if let Packet::Publish(publish) = self.notification(state) {
            let _ = self.queue.publish(self.from, publish);
        }
    }

    /// On a stop: "0" to the remote (our will covers only a lost link) and DISCONNECT.
    fn goodbye(&mut self) {
        if self.bridge.notifications && !self.bridge.notifications_local_only {
            self.notification(DOWN)
                .encode(self.remote.version, &mut self.buf);
        }
        Packet::Disconnect(Disconnect::default()).encode(self.remote.version, &mut self.buf);
        let _ = self.flush();
    }

    /// Detaches the local session: the router keeps it and queues for it until the next link.
    fn end_local(&mut self) {
        if self.bridge.notifications {
            self.notify_local(DOWN);
        }
        let ending = Ending::Disconnect(Box::default());
        let _ = self.queue.disconnect(self.from, ending);
    }

    fn run(
        &mut self,
        local: &Receiver<Outbound>,
        reader_done: &Receiver<()>,
        stop: &Receiver<()>,
    ) -> LinkEnd {
        let keepalive = self.bridge.keepalive;
        // On a secondary address without `round_robin`, the main one is tried now and then;
        // once it answers, this link gives way to it (as mosquitto does).
        let bridge = self.bridge;
        let main = (!bridge.round_robin && self.address_index != 0).then(|| &bridge.addresses[0]);
        let mut next_probe = Instant::now() + MAIN_RETRY;
        let idle_timeout = (bridge.start_type == StartType::Lazy).then_some(bridge.idle_timeout);
        let mut last_delivery = Instant::now();
        loop {
            let mut wait = keepalive.saturating_sub(self.last_write.elapsed());
            if main.is_some() {
                wait = wait.min(next_probe.saturating_duration_since(Instant::now()));
            }
            if let Some(idle) = idle_timeout {
                let idle_left = idle.saturating_sub(last_delivery.elapsed());
                if idle_left.is_zero() {
                    return LinkEnd::Idle;
                }
                wait = wait.min(idle_left);
            }
            let item = select! {
                recv(local) -> item => match item {
                    Ok(item) => item,
                    Err(_) => return LinkEnd::LocalClosed,
                },
                recv(reader_done) -> _ => return LinkEnd::Lost,
                recv(stop) -> _ => return LinkEnd::Stopped,
                default(wait) => {
                    if idle_timeout.is_some_and(|idle| last_delivery.elapsed() >= idle) {
                        continue;
                    }
                    if let Some((host, port)) = main.filter(|_| Instant::now() >= next_probe) {
                        next_probe = Instant::now() + MAIN_RETRY;
                        if answers(host, *port) {
                            info!("bridge {}: the main address {host}:{port} is back", bridge.name);
                            return LinkEnd::Lost;
                        }
                        continue;
                    }
                    Packet::PingReq.encode(self.remote.version, &mut self.buf);
                    if self.flush().is_err() {
                        return LinkEnd::Lost;
                    }
                    continue;
                }
            };
            let mut next = Some(item);
            let (mut count, mut bytes) = (0, 0);
            let mut closed = false;
            while let Some(item) = next.take() {
                if !self.encode(item, &mut count, &mut bytes) {
                    closed = true;
                    break;
                }
                if self.buf.len() >= BATCH_BYTES {
                    break;
                }
                next = local.try_recv().ok();
            }
            if count > 0 {
                last_delivery = Instant::now();
            }
            let written = self.buf.len();
            let failed = self.flush().is_err();
            if self.writer.taken(count, bytes, written, local.is_empty())
                && self.queue.writer_drained(self.from).is_err()
            {
                return LinkEnd::Stopped;
            }
            if failed {
                return LinkEnd::Lost;
            }
            if closed {
                return LinkEnd::LocalClosed;
            }
        }
    }

    /// Encodes one item from the router for the remote; false when the router closed the
    /// local session.
    fn encode(&mut self, item: Outbound, count: &mut usize, bytes: &mut usize) -> bool {
        let version = self.remote.version;
        match item {
            Outbound::Publish {
                delivery,
                packet_id,
                dup,
            } => {
                *count += 1;
                *bytes += delivery.weight();
                let message = &delivery.message;
                let topic = remap_out(&self.bridge.topics, &message.publish.topic);
                let view = PublishView {
                    dup,
                    qos: delivery.qos,
                    retain: delivery.retain && self.bridge.outgoing_retain,
                    packet_id,
                    topic: &topic,
                    payload: &message.publish.payload,
                    properties: &message.publish.properties,
                    subscription_identifiers: &[],
                    message_expiry_interval: message.remaining_expiry(),
                    topic_alias: None,
                };
                if let Some(max) = self.remote.max_packet_size {
                    if view.encoded_len(version) > max as usize {
                        self.too_large(&topic, delivery.qos, packet_id);
                        return true;
                    }
                }
                encode_publish(&mut self.buf, version, &view);
            }
            Outbound::Ack(kind, id) => {
                if kind == AckKind::PubRel && self.dropped_qos2.contains(&id) {
                    self.dropped_qos2.retain(|d| *d != id);
                    let _ = self.queue.ack(self.from, AckKind::PubComp, id);
                    return true;
                }
                let ack = Ack::new(id);
                let packet = match kind {
                    AckKind::PubAck => Packet::PubAck(ack),
                    AckKind::PubRec => Packet::PubRec(ack),
                    AckKind::PubRel => Packet::PubRel(ack),
                    AckKind::PubComp => Packet::PubComp(ack),
                };
                packet.encode(version, &mut self.buf);
            }
            Outbound::Packet(packet) => match *packet {
                // Acknowledgements with a reason, for the remote's messages.
                p @ (Packet::PubAck(_)
                | Packet::PubRec(_)
                | Packet::PubRel(_)
                | Packet::PubComp(_)) => p.encode(version, &mut self.buf),
                Packet::ConnAck(connack) if connack.reason.is_error() => {
                    warn!(
                        "bridge {}: our router refused the local session: {:?}",
                        self.bridge.name, connack.reason
                    );
                    return false;
                }
                Packet::SubAck(suback) => {
                    for reason in suback.reasons.iter().filter(|r| r.is_error()) {
                        warn!(
                            "bridge {}: local subscription refused: {reason:?}",
                            self.bridge.name
                        );
                    }
                }
                _ => {}
            },
            Outbound::Close(_) => return false,
            Outbound::Batch(items) => {
                for item in items {
                    if !self.encode(item, count, bytes) {
                        return false;
                    }
                }
            }
            Outbound::Flush => {}
        }
        true
    }

    /// A message larger than the remote takes is dropped, as mosquitto drops it, and completed
    /// with the router so that it does not wait in the session forever.
    fn too_large(&mut self, topic: &str, qos: QoS, packet_id: Option<PacketId>) {
        warn!(
            "bridge {}: dropped a message on {topic:?} larger than the remote's maximum packet size",
            self.bridge.name
        );
        match (qos, packet_id) {
            (QoS::AtLeastOnce, Some(id)) => {
                let _ = self.queue.ack(self.from, AckKind::PubAck, id);
            }
            (QoS::ExactlyOnce, Some(id)) => {
                self.dropped_qos2.push(id);
                let _ = self.queue.ack(self.from, AckKind::PubRec, id);
            }
            _ => {}
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let result = self
            .output
            .write_all(&self.buf)
            .and_then(|()| self.output.flush());
        self.buf.clear();
        if self.buf.capacity() > 4 * BATCH_BYTES {
            self.buf = Vec::new();
        }
        self.last_write = Instant::now();
        result
    }
}

/// How often a lazy bridge asks the router how many messages wait for it.
const LAZY_POLL: Duration = Duration::from_millis(500);

/// How often a bridge on a secondary address tries the main one (`round_robin false`).
const MAIN_RETRY: Duration = Duration::from_secs(5);

/// Whether something accepts TCP connections at `host:port` (the probe is closed at once).
fn answers(host: &str, port: u16) -> bool {
    use std::net::ToSocketAddrs;
    let Ok(addrs) = (host, port).to_socket_addrs() else {
        return false;
    };
    addrs
        .into_iter()
        .any(|addr| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok())
}

/// How long `stop` waits for a bridge thread before leaving it (it may be dialling).
pub const STOP_WAIT: Duration = Duration::from_secs(2);
