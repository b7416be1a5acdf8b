//! The reader thread: the CONNECT handshake, then one blocking read per packet.
//!
//! Owns: the connection's read half, keepalive (a read timeout of 1.5 times the interval),
//! per-connection checks that need no session state (first packet is CONNECT, valid topic names,
//! packets a client may not send), and starting the writer. Must not: write the socket (it asks
//! the writer), or keep session state: every packet that touches a session goes to the router.

use std::io::{self, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use log::{debug, info, warn};

use super::{spawn_writer, AckKind, ClientHandle, Outbound};
use crate::config::Config;
use crate::mqtt::topic::validate_topic_name;
use crate::mqtt::{
    read_packet, ConnAck, Connect, DecodeError, Disconnect, Packet, ProtocolVersion, ReasonCode,
};
use crate::queue::{ConnectRequest, ConnectionRef, Ending, QueueHandle};

/// Bytes read from the socket at a time; small, because every idle client holds one.
const READ_BUFFER: usize = 4 * 1024;
/// A body buffer grown beyond this by a large packet is given back afterwards.
const BODY_BUFFER_KEEP: usize = 64 * 1024;

/// Numbers server-assigned client identifiers.
static ASSIGNED_IDS: AtomicU64 = AtomicU64::new(1);

pub(super) fn run(
    stream: Arc<TcpStream>,
    peer: SocketAddr,
    connection_id: u64,
    queue: QueueHandle,
    config: &Config,
) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(config.connect_timeout));
    let mut reader = BufReader::with_capacity(READ_BUFFER, &*stream);
    let mut body = Vec::new();
    let packet = read_packet(
        &mut reader,
        ProtocolVersion::V3_1_1,
        config.max_packet_size,
        &mut body,
    );
    let connect = match packet {
        Ok(Packet::Connect(connect)) => connect,
        Ok(other) => {
            // [MQTT-3.1.0-1] The first packet from a client must be CONNECT.
            warn!(
                "{peer}: first packet was not CONNECT but {}",
                packet_name(&other)
            );
            return;
        }
        Err(DecodeError::UnsupportedProtocol { level }) => {
            warn!("{peer}: refused CONNECT with unsupported protocol level {level}");
            refuse(
                &stream,
                connection_id,
                ProtocolVersion::V3_1_1,
                ReasonCode::UnsupportedProtocolVersion,
                queue,
                config,
            );
            return;
        }
        Err(DecodeError::Io(e)) => {
            debug!("{peer}: closed before CONNECT: {e}");
            return;
        }
        Err(e) => {
            // [MQTT-3.1.4-1] A malformed CONNECT closes the connection without CONNACK.
            warn!("{peer}: bad CONNECT: {e}");
            return;
        }
    };
    let Some(session) = handshake(&stream, peer, connection_id, *connect, queue, config) else {
        return;
    };
    session.read_loop(reader, body, config);
}

/// Answers a refused CONNECT with a CONNACK carrying `reason` and closes.
fn refuse(
    stream: &Arc<TcpStream>,
    connection_id: u64,
    version: ProtocolVersion,
    reason: ReasonCode,
    queue: QueueHandle,
    config: &Config,
) {
    if let Ok(writer) = spawn_writer(Arc::clone(stream), connection_id, version, queue, config) {
        let _ = writer.send_packet(Packet::ConnAck(ConnAck {
            session_present: false,
            reason,
            properties: Default::default(),
        }));
        writer.close(None);
    }
}

/// A connected client as its reader sees it.
struct Session {
    peer: SocketAddr,
    client_id: String,
    version: ProtocolVersion,
    keep_alive: u16,
    writer: ClientHandle,
    queue: QueueHandle,
    from: ConnectionRef,
}

/// Validates CONNECT, starts the writer and registers with the router, which answers CONNACK.
fn handshake(
    stream: &Arc<TcpStream>,
    peer: SocketAddr,
    connection_id: u64,
    connect: Connect,
    queue: QueueHandle,
    config: &Config,
) -> Option<Session> {
    let version = connect.protocol;
    let mut client_id = connect.client_id;
    let mut assigned = false;
    let refusal = if client_id.is_empty() {
        if version == ProtocolVersion::V3_1
            || (version == ProtocolVersion::V3_1_1 && !connect.clean_start)
        {
            // [MQTT-3.1.3-8] An empty client id needs clean session 1; 3.1 requires 1 to 23 characters.
            Some(ReasonCode::ClientIdentifierNotValid)
        } else {
            // [MQTT-3.1.3-6] The server assigns a unique identifier.
            client_id = format!("auto-{}", ASSIGNED_IDS.fetch_add(1, Ordering::Relaxed));
            assigned = true;
            None
        }
    } else if version == ProtocolVersion::V3_1 && client_id.chars().count() > 23 {
        Some(ReasonCode::ClientIdentifierNotValid)
    } else if connect.properties.authentication_method.is_some() {
        // No enhanced authentication method is supported yet.
        Some(ReasonCode::BadAuthenticationMethod)
    } else if connect
        .will
        .as_ref()
        .is_some_and(|will| validate_topic_name(&will.topic).is_err())
    {
        Some(ReasonCode::TopicNameInvalid)
    } else {
        None
    };
    if let Some(reason) = refusal {
        warn!("{peer}: refused client {client_id:?}: {reason:?}");
        refuse(stream, connection_id, version, reason, queue, config);
        return None;
    }

    let writer = match spawn_writer(
        Arc::clone(stream),
        connection_id,
        version,
        queue.clone(),
        config,
    ) {
        Ok(writer) => writer,
        Err(e) => {
            warn!("{peer}: cannot start writer thread: {e}");
            return None;
        }
    };
    let session_expiry = if version.is_v5() {
        connect.properties.session_expiry_interval.unwrap_or(0)
    } else if connect.clean_start {
        0
    } else {
        u32::MAX
    };
    let request = ConnectRequest {
        connection_id,
        client_id: client_id.clone(),
        assigned_client_id: assigned,
        clean_start: connect.clean_start,
        session_expiry,
        version,
        will: connect.will,
        receive_maximum: connect.properties.receive_maximum.unwrap_or(u16::MAX),
        writer: writer.clone(),
    };
    let from = match queue.connect(request) {
        Ok(from) => from,
        Err(_) => {
            writer.close(None);
            return None;
        }
    };
    info!(
        "client {client_id} connected from {peer} ({}, clean {}, keepalive {}s)",
        version_name(version),
        connect.clean_start,
        connect.keep_alive
    );
    // [MQTT-3.1.2-24] Allow one and a half keepalive intervals between packets.
    let timeout = match connect.keep_alive {
        0 => None,
        secs => Some(Duration::from_millis(u64::from(secs) * 1500)),
    };
    let _ = stream.set_read_timeout(timeout);
    Some(Session {
        peer,
        client_id,
        version,
        keep_alive: connect.keep_alive,
        writer,
        queue,
        from,
    })
}

/// How a connection ended, as far as the reader can tell.
enum Closed {
    /// The client sent DISCONNECT.
    ByClient(Box<Disconnect>),
    /// The socket failed or closed without DISCONNECT.
    Lost(io::Error),
    /// No packet within 1.5 keepalive intervals.
    KeepAlive,
    /// The client broke the protocol; the reason code says how.
    Violation(ReasonCode, String),
    /// The router has gone (broker shutting down).
    RouterGone,
}

impl Session {
    fn read_loop(self, mut reader: BufReader<&TcpStream>, mut body: Vec<u8>, config: &Config) {
        let closed = loop {
            let packet =
                match read_packet(&mut reader, self.version, config.max_packet_size, &mut body) {
                    Ok(packet) => packet,
                    Err(DecodeError::Io(e))
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        break Closed::KeepAlive
                    }
                    Err(DecodeError::Io(e)) => break Closed::Lost(e),
                    Err(e) => break Closed::Violation(e.reason_code(), e.to_string()),
                };
            if body.capacity() > BODY_BUFFER_KEEP {
                body = Vec::new();
            }
            // Each packet may queue an answer; a client that never reads would make the queue
            // grow without end.
            let backlog = self.writer.backlog();
            if backlog > config.writer_backlog_limit {
                break Closed::Violation(
                    ReasonCode::QuotaExceeded,
                    format!("client does not read: {backlog} packets wait to be written"),
                );
            }
            match self.handle(packet) {
                Ok(None) => {}
                Ok(Some(closed)) => break closed,
                Err(_) => break Closed::RouterGone,
            }
        };
        self.finish(closed);
    }

    /// Acts on one packet; `Some` when the connection is to end.
    fn handle(&self, packet: Packet) -> Result<Option<Closed>, crate::queue::RouterGone> {
        debug!(
            "client {}: received {}",
            self.client_id,
            packet_name(&packet)
        );
        match packet {
            Packet::Publish(publish) => {
                if let Err(e) = validate_topic_name(&publish.topic) {
                    return Ok(Some(Closed::Violation(
                        ReasonCode::TopicNameInvalid,
                        format!("PUBLISH to invalid topic {:?}: {e}", publish.topic),
                    )));
                }
                if publish.properties.topic_alias.is_some() {
                    // We announce a topic alias maximum of 0 [MQTT-3.3.2-8].
                    return Ok(Some(Closed::Violation(
                        ReasonCode::TopicAliasInvalid,
                        "topic alias sent, but the topic alias maximum is 0".into(),
                    )));
                }
                if !publish.properties.subscription_identifiers.is_empty() {
                    return Ok(Some(Closed::Violation(
                        ReasonCode::ProtocolError,
                        "[MQTT-3.3.4-6] PUBLISH from a client carries a subscription identifier"
                            .into(),
                    )));
                }
                self.queue.publish(self.from, publish)?;
            }
            Packet::PubAck(ack) => self.queue.ack(self.from, AckKind::PubAck, ack.packet_id)?,
            Packet::PubRec(ack) => self.queue.ack(self.from, AckKind::PubRec, ack.packet_id)?,
            Packet::PubRel(ack) => self.queue.ack(self.from, AckKind::PubRel, ack.packet_id)?,
            Packet::PubComp(ack) => self.queue.ack(self.from, AckKind::PubComp, ack.packet_id)?,
            Packet::Subscribe(subscribe) => self.queue.subscribe(self.from, subscribe)?,
            Packet::Unsubscribe(unsubscribe) => self.queue.unsubscribe(self.from, unsubscribe)?,
            Packet::PingReq => {
                let _ = self.writer.send_packet(Packet::PingResp);
            }
            Packet::Disconnect(disconnect) => {
                return Ok(Some(Closed::ByClient(Box::new(disconnect))));
            }
            Packet::Connect(_) => {
                return Ok(Some(Closed::Violation(
                    ReasonCode::ProtocolError,
                    "[MQTT-3.1.0-2] a second CONNECT".into(),
                )))
            }
            other => {
                return Ok(Some(Closed::Violation(
                    ReasonCode::ProtocolError,
                    format!("a client may not send {}", packet_name(&other)),
                )))
            }
        }
        Ok(None)
    }

    /// Logs the end, tells the router (which publishes the will when due) and closes.
    fn finish(self, closed: Closed) {
        let id = &self.client_id;
        let peer = self.peer;
        let ending = match closed {
            Closed::ByClient(disconnect) => {
                info!("client {id} disconnected from {peer}");
                self.writer.close(None);
                Ending::Disconnect(disconnect)
            }
            Closed::Lost(e) => {
                info!("client {id} connection from {peer} lost: {e}");
                Ending::Abnormal
            }
            Closed::KeepAlive => {
                info!(
                    "client {id} from {peer} timed out: no packet within 1.5 x {}s keepalive",
                    self.keep_alive
                );
                self.close_with(ReasonCode::KeepAliveTimeout);
                Ending::Abnormal
            }
            Closed::Violation(reason, why) => {
                warn!("client {id} from {peer} disconnected: {why}");
                self.close_with(reason);
                Ending::Abnormal
            }
            Closed::RouterGone => {
                self.close_with(ReasonCode::ServerShuttingDown);
                return;
            }
        };
        let _ = self.queue.disconnect(self.from, ending);
    }

    /// Closes the connection, sending DISCONNECT with `reason` first to a v5 client.
    fn close_with(&self, reason: ReasonCode) {
        let _ = self.writer.send(Outbound::Close(Some(Box::new(Disconnect {
            reason,
            properties: Default::default(),
        }))));
    }
}

fn version_name(version: ProtocolVersion) -> &'static str {
    match version {
        ProtocolVersion::V3_1 => "MQTT 3.1",
        ProtocolVersion::V3_1_1 => "MQTT 3.1.1",
        ProtocolVersion::V5 => "MQTT 5.0",
    }
}

fn packet_name(packet: &Packet) -> &'static str {
    match packet {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect(_) => "DISCONNECT",
        Packet::Auth(_) => "AUTH",
    }
}
