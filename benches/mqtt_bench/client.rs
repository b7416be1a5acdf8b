//! One benchmark connection before and after its traffic: TCP connect, CONNECT and CONNACK,
//! SUBSCRIBE and SUBACK, and the DISCONNECT that ends it.
//!
//! Owns: the handshakes, each bounded by the socket timeouts set here. Must not: start
//! threads or carry traffic (`reader` and `writer` do), or panic on what a broker sends.

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::num::NonZeroU16;
use std::time::Duration;

use mqtt_broker::mqtt::{
    read_packet, ConnectProperties, DecodeError, Disconnect, Packet, ProtocolVersion, QoS,
    ReasonCode, Subscribe, SubscribeProperties, SubscriptionOptions,
};

/// Every benchmark client speaks 3.1.1: all three brokers serve it on their main port.
pub const VERSION: ProtocolVersion = ProtocolVersion::V3_1_1;
/// The largest packet a benchmark client accepts.
pub const MAX_PACKET: usize = 1 << 20;
/// Read buffer of a traffic connection: many small PUBLISH per `read` call.
pub const READ_BUFFER: usize = 64 * 1024;

/// Opens a TCP connection with Nagle off and both socket timeouts set to `timeout`, so that
/// no later read or write on it can block for longer.
pub fn open(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, String> {
    let stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_nodelay(true)
        .and_then(|_| stream.set_read_timeout(Some(timeout)))
        .and_then(|_| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("socket options: {e}"))?;
    Ok(stream)
}

/// Set once at start by `--persistent`: clients ask for a persistent session.
pub static PERSISTENT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Appends a CONNECT for `client_id`: clean session, unless `--persistent`.
pub fn encode_connect(out: &mut Vec<u8>, client_id: &str, keep_alive: u16) {
    let connect = mqtt_broker::mqtt::Connect {
        protocol: VERSION,
        clean_start: !PERSISTENT.load(std::sync::atomic::Ordering::Relaxed),
        keep_alive,
        client_id: client_id.to_owned(),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
    };
    Packet::Connect(Box::new(connect)).encode(VERSION, out);
}

/// Appends a DISCONNECT.
pub fn encode_disconnect(out: &mut Vec<u8>) {
    Packet::Disconnect(Disconnect::default()).encode(VERSION, out);
}

/// Reads one packet, naming EOF and timeouts in the error.
pub fn read_one<R: Read>(reader: &mut R, buf: &mut Vec<u8>) -> Result<Packet, String> {
    read_packet(reader, VERSION, MAX_PACKET, buf).map_err(|e| describe(&e))
}

/// An error from the codec or the socket, as a report line says it.
pub fn describe(error: &DecodeError) -> String {
    match error {
        DecodeError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the broker closed the connection".into()
        }
        DecodeError::Io(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            "no answer from the broker within the timeout".into()
        }
        other => format!("{other}"),
    }
}

/// Waits for CONNACK and checks that it accepts the connection.
pub fn expect_connack<R: Read>(reader: &mut R, buf: &mut Vec<u8>) -> Result<(), String> {
    match read_one(reader, buf)? {
        Packet::ConnAck(ack) if ack.reason == ReasonCode::Success => Ok(()),
        Packet::ConnAck(ack) => Err(format!("CONNACK refused: {:?}", ack.reason)),
        other => Err(format!("expected CONNACK, got {}", other.name())),
    }
}

/// A connected traffic client: the socket, and the buffered reader the reader thread takes
/// over (it may already hold bytes that followed the handshake).
pub struct Connection {
    pub stream: TcpStream,
    pub reader: BufReader<TcpStream>,
    buf: Vec<u8>,
}

impl Connection {
    /// Connects and completes the MQTT handshake.
    pub fn establish(addr: SocketAddr, client_id: &str, timeout: Duration) -> Result<Self, String> {
        let mut stream = open(addr, timeout)?;
        let read_half = stream
            .try_clone()
            .map_err(|e| format!("socket clone: {e}"))?;
        let mut out = Vec::new();
        encode_connect(&mut out, client_id, 60);
        stream
            .write_all(&out)
            .map_err(|e| format!("send CONNECT: {e}"))?;
        let mut connection = Connection {
            stream,
            reader: BufReader::with_capacity(READ_BUFFER, read_half),
            buf: Vec::new(),
        };
        expect_connack(&mut connection.reader, &mut connection.buf)
            .map_err(|e| format!("{client_id}: {e}"))?;
        Ok(connection)
    }

    /// Subscribes to one filter and waits for its SUBACK, which must grant `qos` exactly:
    /// a lower grant would change what the scenario measures.
    pub fn subscribe(&mut self, filter: &str, qos: QoS) -> Result<(), String> {
        let packet_id = NonZeroU16::MIN;
        let subscribe = Subscribe {
            packet_id,
            filters: vec![(
                filter.to_owned(),
                SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            )],
            properties: SubscribeProperties::default(),
        };
        let mut out = Vec::new();
        Packet::Subscribe(subscribe).encode(VERSION, &mut out);
        self.stream
            .write_all(&out)
            .map_err(|e| format!("send SUBSCRIBE: {e}"))?;
        match read_one(&mut self.reader, &mut self.buf)? {
            Packet::SubAck(ack) if ack.packet_id == packet_id => match ack.reasons.as_slice() {
                [granted] if *granted == ReasonCode::granted(qos) => Ok(()),
                other => Err(format!(
                    "SUBACK for {filter} at QoS {}: {other:?}",
                    qos as u8
                )),
            },
            other => Err(format!("expected SUBACK, got {}", other.name())),
        }
    }
}
