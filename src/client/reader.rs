//! The reader thread: the first packet, then one blocking read per packet.
//!
//! Owns: the connection's read side, keepalive (a read timeout of 1.5 times the interval),
//! inbound topic aliases, and the per-connection checks that need no session state (first
//! packet is CONNECT, valid topic names, packets a client may not send, a client that stops
//! reading). Must not: write the socket (it asks the writer), or keep session state: every
//! packet that touches a session goes to the router.

use std::collections::HashMap;
use std::io::{self, BufReader};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use super::handshake::{handshake, refuse, Accepted};
use super::{AckKind, Outbound};
use crate::broker::Registered;
use crate::config::Config;
use crate::mqtt::topic::{validate_topic_filter, validate_topic_name};
use crate::mqtt::{
    read_client_packet, DecodeError, Disconnect, DisconnectProperties, Packet, PacketId,
    ProtocolVersion, Publish, ReasonCode,
};
use crate::queue::{Ending, QueueHandle, RouterGone};
use crate::transport::{ReadHalf, Transport};

/// Bytes read from the socket at a time (dozens of small packets); small, because every idle
/// client holds one.
const READ_BUFFER: usize = 2 * 1024;
/// PUBACKs read in one go are passed to the router together, up to this many.
const PUBACK_BATCH: usize = 64;
/// Longest wait at the reader gate; after a wait this long the gate is ignored for as long
/// again, so that flow control never stops a publisher for more than this, nor for more than
/// half the time, however many congested subscribers take turns holding it.
const GATE_WAIT: Duration = Duration::from_secs(1);
/// A body buffer grown beyond this by a large packet is given back afterwards.
const BODY_BUFFER_KEEP: usize = 64 * 1024;

pub(super) fn run(
    transport: Transport,
    peer: SocketAddr,
    connection_id: u64,
    queue: QueueHandle,
    config: &Config,
    registered: &Registered,
) {
    let Transport {
        input,
        output,
        certificate_username,
    } = transport;
    let _ = input.set_read_timeout(Some(config.connect_timeout));
    let mut reader = BufReader::with_capacity(READ_BUFFER, input);
    let mut body = Vec::new();
    let packet = read_client_packet(
        &mut reader,
        ProtocolVersion::V3_1_1,
        config.max_packet_size,
        &mut body,
    );
    if let Ok(packet) = &packet {
        queue.stats().received(packet, body.len());
    }
    // The whole CONNECT is in (however it trickled): no longer a pending handshake, which the
    // acceptor limits and the reaper closes after `connect_timeout`.
    registered.connect_received();
    let mut connect = match packet {
        Ok(Packet::Connect(connect)) => connect,
        Ok(other) => {
            // [MQTT-3.1.0-1] The first packet from a client must be CONNECT.
            warn!("{peer}: first packet was not CONNECT but {}", other.name());
            return;
        }
        Err(DecodeError::UnsupportedProtocol { level }) => {
            warn!("{peer}: refused CONNECT with unsupported protocol level {level}");
            // [MQTT-3.1.2-2] Answered in 3.1.1 form: return code 1.
            let version = ProtocolVersion::V3_1_1;
            let reason = ReasonCode::UnsupportedProtocolVersion;
            refuse(output, connection_id, version, reason, queue, config);
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
    if certificate_username.is_some() {
        // `use_identity_as_username`: the certificate, not CONNECT, names the user.
        connect.username = certificate_username;
    }
    let Some(accepted) = handshake(output, peer, connection_id, *connect, queue.clone(), config)
    else {
        return;
    };
    // [MQTT-3.1.2-24] Allow one and a half keepalive intervals between packets.
    let timeout = match accepted.keep_alive {
        0 => None,
        secs => Some(Duration::from_millis(u64::from(secs) * 1500)),
    };
    let _ = reader.get_ref().set_read_timeout(timeout);
    // Output the transport makes while reading (pongs, TLS alerts) is written by the writer.
    let writer = accepted.writer.clone();
    reader
        .get_mut()
        .set_waker(Arc::new(move || writer.request_flush()));
    let connection = Connection {
        peer,
        accepted,
        queue,
        aliases: HashMap::new(),
        alias_maximum: config.topic_alias_maximum,
        pub_acks: Vec::new(),
    };
    connection.read_loop(reader, body, config);
}

/// A connected client as its reader sees it.
struct Connection {
    peer: SocketAddr,
    accepted: Accepted,
    queue: QueueHandle,
    /// Inbound topic aliases (MQTT 5), valid for this connection only [MQTT-3.3.2-7].
    aliases: HashMap<u16, String>,
    alias_maximum: u16,
    /// PUBACKs read but not yet passed on: passed on before the reader would block, before any
    /// other packet, and when `PUBACK_BATCH` have gathered.
    pub_acks: Vec<PacketId>,
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
    /// The client broke the protocol where mosquitto closes without a DISCONNECT (a second
    /// CONNECT); the reason goes to the log only.
    Dropped(String),
    /// The router has gone (broker shutting down).
    RouterGone,
}

fn violation(reason: ReasonCode, why: impl Into<String>) -> Option<Closed> {
    Some(Closed::Violation(reason, why.into()))
}

impl Connection {
    fn read_loop(
        mut self,
        mut reader: BufReader<Box<dyn ReadHalf>>,
        mut body: Vec<u8>,
        config: &Config,
    ) {
        let version = self.accepted.version;
        let stats = Arc::clone(self.queue.stats());
        let mut tally = crate::sys::counters::ReceivedTally::default();
        // Set after a wait at the gate ran out: until then the gate is not waited at.
        let mut gate_free_until: Option<Instant> = None;
        let closed = loop {
            // Nothing more is buffered, so the next read may block: pass on what was read.
            if reader.buffer().is_empty() {
                stats.add_received(&mut tally);
                if self.flush_pub_acks().is_err() {
                    break Closed::RouterGone;
                }
            }
            // Held while this client's QoS 0 messages fill a congested subscriber's queue (or
            // its QoS 1/2 acknowledgements are held as many as its window): TCP then slows the
            // publisher. Bounded, so that a client that stopped reading because we stopped
            // reading it still gets through.
            if gate_free_until.is_some_and(|until| Instant::now() >= until) {
                gate_free_until = None;
            }
            if gate_free_until.is_none() && !self.accepted.writer.wait_for_reader_gate(GATE_WAIT) {
                gate_free_until = Some(Instant::now() + GATE_WAIT);
            }
            let packet =
                match read_client_packet(&mut reader, version, config.max_packet_size, &mut body) {
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
            tally.count(&packet, body.len());
            if body.capacity() > BODY_BUFFER_KEEP {
                body = Vec::new();
            }
            // Each packet may queue an answer; a client that never reads would make the queue
            // grow without end. One that reads slowly is not read until its answers drain
            // (TCP then pushes back on it alone); one that still has not caught up after the
            // write timeout is disconnected.
            if self.accepted.writer.backlog() > config.writer_backlog_limit / 2 {
                if self.flush_pub_acks().is_err() {
                    break Closed::RouterGone;
                }
                self.wait_for_writer(config);
            }
            let backlog = self.accepted.writer.backlog();
            if backlog > config.writer_backlog_limit {
                break Closed::Violation(
                    ReasonCode::QuotaExceeded,
                    format!("client does not read: {backlog} packets wait to be written"),
                );
            }
            match self.handle(packet, config) {
                Ok(None) => {}
                Ok(Some(closed)) => break closed,
                Err(RouterGone) => break Closed::RouterGone,
            }
        };
        stats.add_received(&mut tally);
        self.finish(closed);
    }

    /// Waits, at most `write_timeout`, until this client's writer has written down to a
    /// quarter of the backlog limit.
    fn wait_for_writer(&self, config: &Config) {
        let deadline = Instant::now() + config.write_timeout;
        while self.accepted.writer.backlog() > config.writer_backlog_limit / 4
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Acts on one packet; `Some` when the connection is to end.
    fn handle(&mut self, packet: Packet, config: &Config) -> Result<Option<Closed>, RouterGone> {
        let from = self.accepted.from;
        debug!(
            "client {}: received {}",
            self.accepted.client_id,
            packet.name()
        );
        if let Packet::PubAck(ack) = packet {
            self.pub_acks.push(ack.packet_id);
            if self.pub_acks.len() >= PUBACK_BATCH {
                self.flush_pub_acks()?;
            }
            return Ok(None);
        }
        // Effects keep the order of the packets.
        self.flush_pub_acks()?;
        // A client leaving with DISCONNECT leaves normally, revoked or not.
        let leaving = matches!(packet, Packet::Disconnect(_));
        if !leaving && !super::access::still_valid(&mut self.accepted.auth) {
            let why = "credentials no longer accepted after a reload of the password file";
            return Ok(violation(ReasonCode::NotAuthorized, why));
        }
        match packet {
            Packet::Publish(publish) => return self.handle_publish(publish, config),
            Packet::PubRec(ack) => self.queue.ack(from, AckKind::PubRec, ack.packet_id)?,
            Packet::PubRel(ack) => self.queue.ack(from, AckKind::PubRel, ack.packet_id)?,
            Packet::PubComp(ack) => self.queue.ack(from, AckKind::PubComp, ack.packet_id)?,
            Packet::Subscribe(mut subscribe) => {
                if let Some(closed) = invalid_filter(subscribe.filters.iter().map(|f| &f.0)) {
                    return Ok(Some(closed));
                }
                // `maximum_qos`: grants are capped, as mosquitto caps them.
                for (_, options) in &mut subscribe.filters {
                    options.qos = options.qos.min(config.maximum_qos);
                }
                if self.accepted.bridge {
                    // mosquitto: a 3.x bridge never gets its own messages back, and sees the
                    // retain flag as published.
                    for (_, options) in &mut subscribe.filters {
                        options.no_local = true;
                        options.retain_as_published = true;
                    }
                }
                let accepted = &mut self.accepted;
                let refused = super::access::refused_filters(
                    &mut accepted.auth,
                    &accepted.client_id,
                    &subscribe,
                );
                self.queue.subscribe_refusing(from, subscribe, refused)?
            }
            Packet::Unsubscribe(unsubscribe) => {
                if let Some(closed) = invalid_filter(unsubscribe.filters.iter()) {
                    return Ok(Some(closed));
                }
                self.queue.unsubscribe(from, unsubscribe)?
            }
            Packet::PingReq => self.queue.ping(from)?,
            Packet::Disconnect(disconnect) => {
                let asks_expiry = disconnect
                    .properties
                    .session_expiry_interval
                    .is_some_and(|secs| secs != 0);
                if self.accepted.session_expiry == 0 && asks_expiry {
                    return Ok(violation(
                        ReasonCode::ProtocolError,
                        "[MQTT-3.14.2-2] DISCONNECT sets a session expiry after CONNECT set 0",
                    ));
                }
                return Ok(Some(Closed::ByClient(Box::new(disconnect))));
            }
            Packet::Connect(_) => {
                // Closed without DISCONNECT, as mosquitto closes it.
                return Ok(Some(Closed::Dropped(
                    "[MQTT-3.1.0-2] a second CONNECT".into(),
                )));
            }
            Packet::Auth(_) => {
                return Ok(violation(
                    ReasonCode::ProtocolError,
                    "[MQTT-4.12.0-6] AUTH outside an authentication exchange",
                ))
            }
            other => {
                return Ok(violation(
                    ReasonCode::ProtocolError,
                    format!("a client may not send {}", other.name()),
                ))
            }
        }
        Ok(None)
    }

    fn flush_pub_acks(&mut self) -> Result<(), RouterGone> {
        match self.pub_acks.len() {
            0 => Ok(()),
            1 => {
                let packet_id = self.pub_acks.pop().expect("one is there");
                self.queue
                    .ack(self.accepted.from, AckKind::PubAck, packet_id)
            }
            _ => {
                let batch = std::mem::take(&mut self.pub_acks);
                self.queue.pub_acks(self.accepted.from, batch)
            }
        }
    }

    /// Resolves the topic (alias), checks it, and hands the message to the router.
    fn handle_publish(
        &mut self,
        mut publish: Publish,
        config: &Config,
    ) -> Result<Option<Closed>, RouterGone> {
        if let Some(closed) = beyond_server_limits(&publish, config) {
            return Ok(Some(closed));
        }
        if let Some(alias) = publish.properties.topic_alias.take() {
            if alias == 0 || alias > self.alias_maximum {
                return Ok(violation(
                    ReasonCode::TopicAliasInvalid,
                    format!(
                        "[MQTT-3.3.2-8] topic alias {alias} outside 1..={}",
                        self.alias_maximum
                    ),
                ));
            }
            if publish.topic.is_empty() {
                match self.aliases.get(&alias) {
                    Some(topic) => publish.topic.clone_from(topic),
                    // A Protocol Error (5.0 3.3.2.3.4), as mosquitto answers it.
                    None => {
                        return Ok(violation(
                            ReasonCode::ProtocolError,
                            format!("topic alias {alias} was never set on this connection"),
                        ))
                    }
                }
            } else {
                self.aliases.insert(alias, publish.topic.clone());
            }
        } else if publish.topic.is_empty() {
            return Ok(violation(
                ReasonCode::ProtocolError,
                "[MQTT-3.3.2-1] PUBLISH with neither a topic nor a topic alias",
            ));
        }
        if let Err(e) = validate_topic_name(&publish.topic) {
            // 0x90 would be allowed too; mosquitto answers a Protocol Error.
            return Ok(violation(
                ReasonCode::ProtocolError,
                format!("PUBLISH to invalid topic {:?}: {e}", publish.topic),
            ));
        }
        if !publish.properties.subscription_identifiers.is_empty() {
            return Ok(violation(
                ReasonCode::ProtocolError,
                "[MQTT-3.3.4-6] PUBLISH from a client carries a subscription identifier",
            ));
        }
        let accepted = &mut self.accepted;
        let refusal = super::access::publish_refusal(
            &mut accepted.auth,
            &accepted.client_id,
            &publish,
            config,
        );
        if let Some(reason) = refusal {
            super::access::answer_refused(&accepted.writer, &publish, reason);
            return Ok(None);
        }
        self.queue.publish(self.accepted.from, publish)?;
        Ok(None)
    }

    /// Logs the end, tells the router (which publishes the will when due) and closes.
    fn finish(mut self, closed: Closed) {
        // PUBACKs that arrived before the end still count: their messages are not resent.
        let _ = self.flush_pub_acks();
        let id = &self.accepted.client_id;
        let peer = self.peer;
        // The socket is closed only after the router has this connection's end in its queue:
        // a client that reconnects as soon as it sees the close finds its session already
        // updated (a DISCONNECT's new expiry, the will), not a takeover of a live one.
        let mut close_after = false;
        let ending = match closed {
            Closed::ByClient(disconnect) => {
                info!("client {id} disconnected from {peer}");
                close_after = true;
                Ending::Disconnect(disconnect)
            }
            Closed::Lost(e) => {
                info!("client {id} connection from {peer} lost: {e}");
                Ending::Abnormal
            }
            Closed::KeepAlive => {
                // Closed without DISCONNECT 0x8D, which is optional, as mosquitto closes it.
                info!(
                    "client {id} from {peer} timed out: no packet within 1.5 x {}s keepalive",
                    self.accepted.keep_alive
                );
                close_after = true;
                Ending::Abnormal
            }
            Closed::Dropped(why) => {
                warn!("client {id} from {peer} disconnected: {why}");
                close_after = true;
                Ending::Abnormal
            }
            Closed::Violation(reason, why) => {
                warn!("client {id} from {peer} disconnected: {why}");
                self.close_with(reason, why);
                Ending::Abnormal
            }
            Closed::RouterGone => {
                self.close_with(
                    ReasonCode::ServerShuttingDown,
                    "server shutting down".into(),
                );
                return;
            }
        };
        let _ = self.queue.disconnect(self.accepted.from, ending);
        if close_after {
            self.accepted.writer.close(None);
        }
    }

    /// Closes the connection, sending an MQTT 5 client DISCONNECT with `reason` [MQTT-4.13.2-1].
    /// As from mosquitto, the DISCONNECT carries the code alone: `why` has gone to the log.
    fn close_with(&self, reason: ReasonCode, _why: String) {
        let _ = self
            .accepted
            .writer
            .send(Outbound::Close(Some(Box::new(Disconnect {
                reason,
                properties: DisconnectProperties::default(),
            }))));
    }
}

/// A PUBLISH above `maximum_qos`, or retained while `retain_available` is false, ends the
/// connection as mosquitto ends it: DISCONNECT 0x9B / 0x9A for MQTT 5, a bare close for
/// 3.1/3.1.1 (the writer sends no DISCONNECT to those).
fn beyond_server_limits(publish: &Publish, config: &Config) -> Option<Closed> {
    if publish.qos > config.maximum_qos {
        return violation(
            ReasonCode::QoSNotSupported,
            format!(
                "PUBLISH at QoS {} above maximum_qos {}",
                publish.qos as u8, config.maximum_qos as u8
            ),
        );
    }
    if publish.retain && !config.retain_available {
        return violation(
            ReasonCode::RetainNotSupported,
            "retained PUBLISH while retain_available is false",
        );
    }
    None
}

/// The first filter of a SUBSCRIBE or UNSUBSCRIBE that breaks the topic filter rules ends the
/// connection as a malformed packet (v5: DISCONNECT 0x81), as mosquitto answers it; SUBACK
/// 0x80/0x8F would be allowed too, but clients written against mosquitto never see it.
fn invalid_filter<'a>(mut filters: impl Iterator<Item = &'a String>) -> Option<Closed> {
    filters.find_map(|filter| {
        validate_topic_filter(filter).err().map(|e| {
            Closed::Violation(
                ReasonCode::MalformedPacket,
                format!("invalid topic filter {filter:?}: {e}"),
            )
        })
    })
}
