//! The connection to the remote broker: dialling, CONNECT/CONNACK, and the reader thread.
//!
//! Owns: trying the configured addresses, the bridge's CONNECT (clean session, will for the
//! notification topic, credentials, mosquitto's bridge flag with `try_private`), what the
//! remote's CONNACK allows (receive maximum, packet size), and `read_remote`, the loop that
//! turns what the remote sends into messages for our router. Must not: write to the socket
//! after the handshake (the bridge's writer does) or hold session state (the router does).

use std::io::{self, BufReader, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use super::config::BridgeConfig;
use super::tls;
use super::topics::remap_in;
use crate::client::AckKind;
use crate::config::PROTOCOL_MAX_PACKET_SIZE;
use crate::mqtt::{
    read_packet, ConnectProperties, DecodeError, Packet, Payload, ProtocolVersion, QoS, Will,
    WillProperties,
};
use crate::queue::{ConnectionRef, QueueHandle};
use crate::transport::{self, Link, Output, ReadHalf, Transport, WriteHalf};

/// How long one address may take to accept the TCP connection, and the remote its CONNACK.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest a write to the remote may make no progress.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// An established connection to the remote broker.
pub struct Remote {
    /// Shuts the connection down from any thread.
    pub link: Arc<dyn Link>,
    pub version: ProtocolVersion,
    /// The most QoS 1/2 messages the remote takes unacknowledged (its v5 Receive Maximum).
    pub receive_maximum: u16,
    /// The largest packet the remote takes (its v5 Maximum Packet Size, and
    /// `bridge_max_packet_size`).
    pub max_packet_size: Option<u32>,
    pub address: String,
}

/// The two directions of a link: the reader thread takes `input` (with whatever it buffered
/// after CONNACK), the writer keeps `output`.
pub struct Halves {
    pub input: BufReader<Box<dyn ReadHalf>>,
    pub output: Box<dyn WriteHalf>,
}

/// The payloads of the notification topic.
pub const UP: &[u8] = b"1";
pub const DOWN: &[u8] = b"0";

/// Connects to `bridge.addresses[index]` (with TLS when the bridge has a CA) and completes the
/// MQTT handshake.
pub fn dial(
    bridge: &BridgeConfig,
    index: usize,
    receive_maximum: u16,
) -> io::Result<(Remote, Halves)> {
    let (host, port) = &bridge.addresses[index];
    let address = format!("{host}:{port}");
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address found");
    let mut stream = None;
    for addr in (host.as_str(), *port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, DIAL_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let stream = stream.ok_or(last)?;
    let _ = stream.set_nodelay(true);
    let socket = Arc::new(stream);
    let transport = if tls::enabled(&bridge.tls) {
        let config = tls::client_config(&bridge.tls)?;
        let conn = rustls::ClientConnection::new(config, tls::server_name(host)?)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let deadline = Instant::now() + DIAL_TIMEOUT;
        transport::tls_client(Arc::clone(&socket), conn, deadline)
            .map_err(|e| refused(format!("TLS handshake failed: {e}")))?
    } else {
        transport::tcp_client(Arc::clone(&socket))
    };
    let Transport {
        input,
        output: Output {
            write: mut output,
            link,
        },
        ..
    } = transport;
    // A remote that stops reading ends the link rather than blocking the writer forever.
    output.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let version = bridge.protocol;
    let connect = connect_packet(bridge, receive_maximum);
    let mut out = Vec::new();
    Packet::Connect(Box::new(connect)).encode(version, &mut out);
    output.write_all(&out)?;
    output.flush()?;
    input.set_read_timeout(Some(DIAL_TIMEOUT))?;
    let mut input = BufReader::new(input);
    let mut buf = Vec::new();
    let connack = match read_packet(&mut input, version, PROTOCOL_MAX_PACKET_SIZE, &mut buf) {
        Ok(Packet::ConnAck(connack)) => connack,
        Ok(other) => return Err(refused(format!("answered CONNECT with {}", other.name()))),
        Err(e) => return Err(refused(format!("no CONNACK: {e}"))),
    };
    if connack.reason.is_error() {
        return Err(refused(format!(
            "refused the connection: {:?}",
            connack.reason
        )));
    }
    input
        .get_ref()
        .set_read_timeout(Some(bridge.keepalive * 3 / 2 + Duration::from_secs(1)))?;
    let remote_max = connack.properties.maximum_packet_size;
    let own_max = (bridge.max_packet_size > 0).then_some(bridge.max_packet_size);
    let max_packet_size = match (remote_max, own_max) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    info!(
        "bridge {}: connected to {address}{} (session present: {})",
        bridge.name,
        if tls::enabled(&bridge.tls) {
            " over TLS"
        } else {
            ""
        },
        connack.session_present
    );
    let remote = Remote {
        link,
        version,
        receive_maximum: connack.properties.receive_maximum.unwrap_or(u16::MAX),
        max_packet_size,
        address,
    };
    Ok((remote, Halves { input, output }))
}

fn refused(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionRefused, why)
}

/// The bridge's CONNECT: the remote keeps its session unless `cleansession`, publishes our
/// notification "0" if we vanish, and knows us as a bridge with `try_private`.
fn connect_packet(bridge: &BridgeConfig, receive_maximum: u16) -> crate::mqtt::Connect {
    let v5 = bridge.protocol.is_v5();
    let will = (bridge.notifications && !bridge.notifications_local_only).then(|| Will {
        topic: bridge.notification_topic(),
        payload: Payload::from(DOWN),
        qos: QoS::AtLeastOnce,
        retain: true,
        properties: WillProperties::default(),
    });
    let mut properties = ConnectProperties::default();
    if v5 {
        // A session that outlives the link, as a 3.1.1 clean session 0 does.
        if !bridge.cleansession {
            properties.session_expiry_interval = Some(u32::MAX);
        }
        properties.receive_maximum = Some(receive_maximum);
    }
    crate::mqtt::Connect {
        protocol: bridge.protocol,
        clean_start: bridge.cleansession,
        keep_alive: u16::try_from(bridge.keepalive.as_secs()).unwrap_or(u16::MAX),
        client_id: bridge.remote_clientid(),
        will,
        username: bridge.remote_username.clone(),
        password: bridge.remote_password.clone().map(String::into_bytes),
        properties,
        // The flag belongs to 3.1 and 3.1.1; v5 says No Local and Retain As Published itself.
        bridge: bridge.try_private && !v5,
    }
}

/// The reader thread: hands what the remote sends to our router as the bridge's local
/// session, until the link fails. The acknowledgements the router answers with reach the
/// remote through the bridge's writer, under the same packet ids: the remote's ids for its
/// messages, the router's ids for ours.
pub fn read_remote(
    bridge: &BridgeConfig,
    version: ProtocolVersion,
    mut reader: BufReader<Box<dyn ReadHalf>>,
    queue: &QueueHandle,
    from: ConnectionRef,
) -> io::Result<()> {
    let name = &bridge.name;
    let mut buf = Vec::new();
    loop {
        let packet = match read_packet(&mut reader, version, PROTOCOL_MAX_PACKET_SIZE, &mut buf) {
            Ok(packet) => packet,
            Err(DecodeError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(io::Error::new(
                    e.kind(),
                    "link lost: the remote closed the connection",
                ))
            }
            Err(DecodeError::Io(e)) => {
                return Err(io::Error::new(e.kind(), format!("link lost: {e}")))
            }
            Err(e) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("remote sent a bad packet: {e}"),
                ))
            }
        };
        let routed = match packet {
            Packet::Publish(mut publish) => {
                publish.topic = remap_in(&bridge.topics, &publish.topic);
                queue.publish(from, publish)
            }
            Packet::PubAck(ack) => queue.ack(from, AckKind::PubAck, ack.packet_id),
            Packet::PubRec(ack) => queue.ack(from, AckKind::PubRec, ack.packet_id),
            Packet::PubRel(ack) => queue.ack(from, AckKind::PubRel, ack.packet_id),
            Packet::PubComp(ack) => queue.ack(from, AckKind::PubComp, ack.packet_id),
            Packet::SubAck(suback) => {
                for reason in suback.reasons.iter().filter(|r| r.is_error()) {
                    warn!("bridge {name}: the remote refused a subscription: {reason:?}");
                }
                Ok(())
            }
            Packet::PingResp | Packet::UnsubAck(_) => Ok(()),
            Packet::Disconnect(disconnect) => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    format!("the remote disconnected: {:?}", disconnect.reason),
                ))
            }
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("remote sent {}", other.name()),
                ))
            }
        };
        if routed.is_err() {
            debug!("bridge {name}: router gone");
            return Ok(());
        }
    }
}
