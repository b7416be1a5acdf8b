//! One listener's settings: where it listens, which protocol it speaks, and its TLS files.
//!
//! Owns: the shape shared by the config-file parser (which fills it), the acceptor (which binds
//! it) and the transports (TLS, WebSocket, QUIC, metrics) that serve it. Must not: open files,
//! sockets or threads; these are plain values.

use std::net::SocketAddr;
use std::path::PathBuf;

/// What a listener speaks once a connection is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// MQTT over TCP (or TLS when `tls` is set): `protocol mqtt`, the default.
    #[default]
    Mqtt,
    /// MQTT over WebSockets (or WSS when `tls` is set): `protocol websockets`.
    WebSockets,
    /// MQTT over QUIC (UDP, always TLS 1.3): `protocol quic`.
    Quic,
    /// Prometheus text exposition over HTTP: `protocol metrics`.
    Metrics,
}

/// TLS settings of a listener, in mosquitto.conf's vocabulary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// `certfile`: the server's certificate chain (PEM).
    pub certfile: PathBuf,
    /// `keyfile`: the server's private key (PEM).
    pub keyfile: PathBuf,
    /// `cafile`: CA certificates that client certificates are checked against (PEM).
    pub cafile: Option<PathBuf>,
    /// `capath`: a directory of CA certificates (PEM), as `cafile`.
    pub capath: Option<PathBuf>,
    /// `require_certificate`: a client must present a certificate the CA signed.
    pub require_certificate: bool,
    /// `use_identity_as_username`: the client certificate's CN becomes the username.
    pub use_identity_as_username: bool,
    /// `use_subject_as_username`: the client certificate's whole subject becomes the username.
    pub use_subject_as_username: bool,
    /// `tls_version`: the lowest version accepted (`tlsv1.2`, `tlsv1.3`); None: both.
    pub tls_version: Option<String>,
    /// `ciphers` / `ciphers_tls1.3`: cipher suite names, mapped onto what rustls offers.
    pub ciphers: Option<String>,
    /// `crlfile`: a certificate revocation list (PEM).
    pub crlfile: Option<PathBuf>,
}

/// One `listener PORT [ADDR]` block (or the default listener from `SOCKET_ADDR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// The address to bind; port 0 picks a free port (tests).
    pub addr: SocketAddr,
    /// `protocol`.
    pub protocol: Protocol,
    /// Set when the listener has `certfile`/`keyfile`.
    pub tls: Option<TlsSettings>,
    /// `max_connections` for this listener (None: only the broker-wide limit applies).
    pub max_connections: Option<usize>,
    /// `mount_point`: a prefix added to every topic of this listener's clients.
    pub mount_point: Option<String>,
    /// This listener's security options; used with `per_listener_settings true` only.
    pub security: super::Security,
}

impl Listener {
    /// A plain MQTT-over-TCP listener on `addr`.
    pub fn mqtt(addr: SocketAddr) -> Listener {
        Listener {
            addr,
            protocol: Protocol::Mqtt,
            tls: None,
            max_connections: None,
            mount_point: None,
            security: super::Security::default(),
        }
    }
}
