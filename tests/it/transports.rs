//! Helpers for the TLS and WebSocket tests: certificates made at run time (rcgen) in a fresh
//! directory, and an MQTT client over any stream (TLS with rustls, WebSocket with tungstenite).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mqtt_broker::config::{Listener, Protocol, TlsSettings};
use mqtt_broker::mqtt::{
    read_packet, ConnAck, DecodeError, Packet, ProtocolVersion, Publish, QoS, ReasonCode,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

use crate::support::{connect_packet, publish_packet, WAIT};

/// A directory of PEM files made for one test, removed on drop.
pub struct Certs {
    pub dir: PathBuf,
}

/// One certificate authority, able to sign more certificates.
pub struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Authority {
    pub fn new(name: &str) -> Authority {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params);
        let key = KeyPair::generate().expect("CA key");
        Authority {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `names` (DNS names or IP addresses) with common name `cn` and serial
    /// `serial`: (certificate PEM, key PEM).
    pub fn sign(&self, cn: &str, names: &[&str], serial: u64) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.serial_number = Some(SerialNumber::from(serial));
        set_validity(&mut params);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        (cert.pem(), key.serialize_pem())
    }

    /// A CRL revoking `serials`, in PEM.
    pub fn crl(&self, serials: &[u64]) -> String {
        let params = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2999, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|&serial| rcgen::RevokedCertParams {
                    serial_number: SerialNumber::from(serial),
                    revocation_time: rcgen::date_time_ymd(2024, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.issuer)
            .expect("CRL")
            .pem()
            .expect("CRL PEM")
    }
}

/// Valid from last year to the year after next, counted from today: never expired, and short
/// enough for browsers, which refuse certificates valid for centuries.
fn set_validity(params: &mut CertificateParams) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs();
    let year = 1970 + (now / 31_556_952) as i32;
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 2, 1, 1);
}

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

impl Certs {
    /// A CA, a server certificate for localhost and 127.0.0.1, a client certificate the CA
    /// signed (CN "client-a", serial 10) and one from another CA ("rogue").
    pub fn new() -> Certs {
        let dir = std::env::temp_dir().join(format!(
            "mqtt-broker-tls-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("make the certificate directory");
        let certs = Certs { dir };
        let ca = Authority::new("test CA");
        certs.write("ca.pem", &ca.pem());
        certs.write_pair(
            "server",
            ca.sign("localhost", &["localhost", "127.0.0.1"], 2),
        );
        certs.write_pair("client", ca.sign("client-a", &[], 10));
        let rogue = Authority::new("rogue CA");
        certs.write_pair("rogue", rogue.sign("client-a", &[], 10));
        certs
    }

    pub fn write(&self, name: &str, text: &str) {
        std::fs::write(self.dir.join(name), text).expect("write a PEM file");
    }

    pub fn write_pair(&self, name: &str, (cert, key): (String, String)) {
        self.write(&format!("{name}.pem"), &cert);
        self.write(&format!("{name}.key"), &key);
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// Server-side settings: the server certificate, and the CA for client certificates.
    pub fn settings(&self, require_certificate: bool) -> TlsSettings {
        TlsSettings {
            certfile: self.dir.join("server.pem"),
            keyfile: self.dir.join("server.key"),
            cafile: Some(self.dir.join("ca.pem")),
            require_certificate,
            ..TlsSettings::default()
        }
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A listener on an ephemeral port of 127.0.0.1 (the address is picked by the helper).
pub fn listener(protocol: Protocol, tls: Option<TlsSettings>) -> Listener {
    let mut listener = Listener::mqtt(SocketAddr::from(([127, 0, 0, 1], 0)));
    listener.protocol = protocol;
    listener.tls = tls;
    listener
}

/// A byte stream to the broker, whatever carries it.
pub trait Duplex: Read + Write + Send {
    fn set_timeout(&mut self, timeout: Duration);
}

impl Duplex for TcpStream {
    fn set_timeout(&mut self, timeout: Duration) {
        self.set_read_timeout(Some(timeout)).expect("read timeout");
    }
}

pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

impl Duplex for TlsStream {
    fn set_timeout(&mut self, timeout: Duration) {
        self.sock
            .set_read_timeout(Some(timeout))
            .expect("read timeout");
    }
}

/// A TLS connection trusting the CA in `ca` (PEM file), with a client certificate if given.
pub fn tls_connect(
    addr: SocketAddr,
    ca: &Path,
    client: Option<(&Path, &Path)>,
) -> io::Result<TlsStream> {
    tls_connect_with(addr, ca, client, rustls::DEFAULT_VERSIONS)
}

/// `tls_connect` offering only `versions`.
pub fn tls_connect_with(
    addr: SocketAddr,
    ca: &Path,
    client: Option<(&Path, &Path)>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> io::Result<TlsStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .expect("client certificate")
                .collect::<Result<Vec<_>, _>>()
                .expect("client certificate PEM");
            let key = PrivateKeyDer::from_pem_file(key).expect("client key");
            builder
                .with_client_auth_cert(certs, key)
                .expect("client certificate and key")
        }
    };
    let name = ServerName::try_from("localhost").expect("a server name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(io::Error::other)?;
    let sock = TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(WAIT))?;
    let mut stream = rustls::StreamOwned::new(conn, sock);
    // Drive the handshake now, so that a refusal shows here.
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// A WebSocket client stream: each write is one binary message, reads see a byte stream.
pub struct WsStream<S: Read + Write> {
    pub ws: WebSocket<S>,
    message: Vec<u8>,
    offset: usize,
    /// Control messages seen while reading (pongs, close).
    pub control: Vec<Message>,
}

/// Opens a WebSocket to `addr` over `stream` (TCP or TLS), offering `subprotocols`.
pub fn ws_connect<S: Read + Write>(
    stream: S,
    subprotocols: &str,
) -> Result<WsStream<S>, tungstenite::Error> {
    let mut request = "ws://localhost/mqtt"
        .into_client_request()
        .expect("a request");
    if !subprotocols.is_empty() {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            subprotocols.parse().expect("a header value"),
        );
    }
    let (ws, _response) = tungstenite::client(request, stream).map_err(|e| match e {
        tungstenite::HandshakeError::Failure(e) => e,
        tungstenite::HandshakeError::Interrupted(_) => {
            tungstenite::Error::Io(io::ErrorKind::WouldBlock.into())
        }
    })?;
    Ok(WsStream {
        ws,
        message: Vec::new(),
        offset: 0,
        control: Vec::new(),
    })
}

impl<S: Read + Write> Read for WsStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.offset >= self.message.len() {
            match self.ws.read() {
                Ok(Message::Binary(data)) => {
                    self.message = data.to_vec();
                    self.offset = 0;
                }
                Ok(other) => self.control.push(other),
                Err(tungstenite::Error::Io(e)) => return Err(e),
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Ok(0)
                }
                Err(e) => return Err(io::Error::other(e)),
            }
        }
        let n = buf.len().min(self.message.len() - self.offset);
        buf[..n].copy_from_slice(&self.message[self.offset..self.offset + n]);
        self.offset += n;
        Ok(n)
    }
}

impl<S: Read + Write> Write for WsStream<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.ws
            .send(Message::Binary(buf.to_vec().into()))
            .map_err(io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<S: Duplex> Duplex for WsStream<S> {
    fn set_timeout(&mut self, timeout: Duration) {
        self.ws.get_mut().set_timeout(timeout);
    }
}

/// An MQTT client over any `Duplex`, speaking through the crate's codec.
pub struct Client {
    pub stream: Box<dyn Duplex>,
    version: ProtocolVersion,
    body: Vec<u8>,
}

impl Client {
    pub fn new(stream: impl Duplex + 'static) -> Client {
        Client {
            stream: Box::new(stream),
            version: ProtocolVersion::V3_1_1,
            body: Vec::new(),
        }
    }

    /// Sends CONNECT as `client_id` (3.1.1, clean) and returns the CONNACK.
    pub fn connect(&mut self, client_id: &str) -> ConnAck {
        self.send(&Packet::Connect(Box::new(connect_packet(
            client_id,
            self.version,
            true,
        ))));
        match self.recv() {
            Packet::ConnAck(connack) => connack,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub fn send(&mut self, packet: &Packet) {
        let mut bytes = Vec::new();
        packet.encode(self.version, &mut bytes);
        self.stream.write_all(&bytes).expect("write to the broker");
        self.stream.flush().expect("flush");
    }

    pub fn try_recv(&mut self, timeout: Duration) -> Result<Packet, DecodeError> {
        self.stream.set_timeout(timeout);
        read_packet(&mut self.stream, self.version, 1 << 28, &mut self.body)
    }

    pub fn recv(&mut self) -> Packet {
        match self.try_recv(WAIT) {
            Ok(packet) => packet,
            Err(e) => panic!("expected a packet within {WAIT:?}: {e}"),
        }
    }

    pub fn subscribe(&mut self, filter: &str, qos: QoS) {
        let packet = mqtt_broker::mqtt::Subscribe {
            packet_id: crate::support::pid(1),
            filters: vec![(
                filter.into(),
                mqtt_broker::mqtt::SubscriptionOptions {
                    qos,
                    ..Default::default()
                },
            )],
            properties: Default::default(),
        };
        self.send(&Packet::Subscribe(packet));
        match self.recv() {
            Packet::SubAck(suback) => {
                assert_eq!(suback.reasons, [ReasonCode::granted(qos)])
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Publishes at QoS 0.
    pub fn publish(&mut self, topic: &str, payload: &[u8]) {
        self.send(&publish_packet(topic, payload, QoS::AtMostOnce, false, 0));
    }

    pub fn recv_publish(&mut self) -> Publish {
        match self.recv() {
            Packet::Publish(publish) => publish,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
}
