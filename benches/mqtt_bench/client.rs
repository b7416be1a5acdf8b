//! One benchmark connection before and after its traffic: TCP connect (and the TLS handshake
//! with `--tls-ca`), CONNECT and CONNACK, SUBSCRIBE and SUBACK, and the DISCONNECT that ends it.
//!
//! Owns: the handshakes, each bounded by the socket timeouts set here. Must not: start
//! threads or carry traffic (`reader` and `writer` do), or panic on what a broker sends.

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

use crate::stream::BenchStream;
use std::num::NonZeroU16;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use mqtt_broker::transport::{split_tls, Halves, ReadHalf, WriteHalf};

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

/// The TLS client settings, when the run speaks TLS (`--tls-ca`); set once by `main`.
static TLS: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();

/// Makes every traffic connection of this process speak TLS, trusting the CA in `ca_file`.
pub fn use_tls(ca_file: &str) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(ca_file)
        .map_err(|e| format!("{ca_file}: {e}"))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("{ca_file}: {e}"))?;
        roots.add(cert).map_err(|e| format!("{ca_file}: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let _ = TLS.set(Arc::new(config));
    Ok(())
}

/// Whether traffic connections speak TLS.
pub fn tls_enabled() -> bool {
    TLS.get().is_some()
}

/// Opens a TCP connection with Nagle off and both socket timeouts set to `timeout`, so that
/// no later read or write on it can block for longer; or, with `--quic`, a QUIC connection
/// and its first bidirectional stream.
pub fn open(addr: SocketAddr, timeout: Duration) -> Result<BenchStream, String> {
    if crate::stream::quic() {
        return crate::stream::connect_quic(addr, timeout);
    }
    let stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_nodelay(true)
        .and_then(|_| stream.set_read_timeout(Some(timeout)))
        .and_then(|_| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("socket options: {e}"))?;
    Ok(BenchStream::Tcp(stream))
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
        bridge: false,
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

/// A connected traffic client: the writer's half, the buffered reader the reader thread takes
/// over (it may already hold bytes that followed the handshake), and the socket itself for
/// timeouts and shutdown. Over plain TCP both halves are the socket; over TLS they share one
/// rustls session as the broker's own TLS transport does (`mqtt_broker::transport`).
pub struct Connection {
    pub stream: Box<dyn WriteHalf>,
    pub reader: BufReader<Box<dyn ReadHalf>>,
    pub socket: BenchStream,
    buf: Vec<u8>,
}

/// The two halves of `socket`, after a TLS handshake when the run speaks TLS; a QUIC stream
/// is its own two halves.
fn halves(socket: &BenchStream) -> Result<Halves, String> {
    let socket = match socket {
        BenchStream::Tcp(socket) => socket,
        BenchStream::Quic(_) => {
            let clone = || socket.try_clone().map_err(|e| format!("stream clone: {e}"));
            return Ok((Box::new(clone()?), Box::new(clone()?)));
        }
    };
    let shared = Arc::new(
        socket
            .try_clone()
            .map_err(|e| format!("socket clone: {e}"))?,
    );
    let Some(config) = TLS.get() else {
        return Ok(mqtt_broker::transport::split_tcp(shared));
    };
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a valid name");
    let mut conn =
        rustls::ClientConnection::new(Arc::clone(config), name).map_err(|e| format!("TLS: {e}"))?;
    let mut sock = &*shared;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)
            .map_err(|e| format!("TLS handshake: {e}"))?;
    }
    Ok(split_tls(conn, shared))
}

impl Connection {
    /// Connects and completes the MQTT handshake.
    pub fn establish(addr: SocketAddr, client_id: &str, timeout: Duration) -> Result<Self, String> {
        let socket = open(addr, timeout)?;
        let (read_half, mut stream) = halves(&socket)?;
        let mut out = Vec::new();
        encode_connect(&mut out, client_id, 60);
        stream
            .write_all(&out)
            .map_err(|e| format!("send CONNECT: {e}"))?;
        let mut connection = Connection {
            stream,
            reader: BufReader::with_capacity(READ_BUFFER, read_half),
            socket,
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
