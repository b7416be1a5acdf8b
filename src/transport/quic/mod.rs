//! MQTT over QUIC (quinn-proto, sans-I/O) on the broker's own threads.
//!
//! Owns: a QUIC listener's settings (rustls with ALPN "mqtt", TLS 1.3 only, no 0-RTT, no
//! datagrams, capped streams and windows), starting its `quic-endpoint` and `quic-udp` threads,
//! and the read and write halves through which each QUIC client's ordinary reader and writer
//! threads speak MQTT. Must not: run an async runtime, hold session state, or let `client/`
//! know it is speaking QUIC: the client threads see `ReadHalf`, `WriteHalf` and `Link` only.
//!
//! Layout:
//! - `endpoint`: the thread that owns the UDP socket, the quinn `Endpoint` and every
//!   `Connection`, and moves stream bytes between them and the client threads.
//! - `halves`: `QuicRead`, `QuicWrite`, `QuicLink`, the client threads' side.
//! - `streams`: which QUIC stream each outbound MQTT packet goes on (multi-stream mode), and
//!   the framing of inbound stream bytes into whole MQTT packets.
//!
//! Single-stream and multi-stream need no setting: the client's first bidirectional stream is
//! the control stream and carries everything until the client opens more streams.

mod endpoint;
mod halves;
mod streams;

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use quinn_proto::crypto::rustls::QuicServerConfig;
use quinn_proto::{IdleTimeout, ServerConfig, TransportConfig, VarInt};

use super::Transport;
use crate::config::Listener;

/// ALPN protocol id of MQTT over QUIC (EMQX, NanoMQ, the mqtt5 crate).
pub const ALPN: &[u8] = b"mqtt";

/// Bidirectional streams a client may have open at once (the control stream and data streams).
const MAX_BIDI_STREAMS: u32 = 16;
/// Unidirectional streams (PUBLISH only) a client may have open at once.
const MAX_UNI_STREAMS: u32 = 16;
/// Bytes a client may have in flight on one stream before it waits for the reader thread.
const STREAM_WINDOW: u32 = 256 * 1024;
/// Bytes a client may have in flight on all its streams together.
const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Bytes of a client's outbound data that quinn holds unacknowledged, all streams together.
const SEND_WINDOW: u64 = 1024 * 1024;
/// QUIC PINGs from the broker keep a connection open across a client's short idle timeout
/// while its MQTT keepalive is longer.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Starts a client's threads on a transport: the broker's `client::spawn_transport`, given
/// the peer's address. Returns an error only if the threads cannot start.
pub type Spawner = Arc<dyn Fn(Transport, SocketAddr) -> io::Result<()> + Send + Sync>;

/// The settings of one QUIC listener, loaded (its TLS files read).
pub struct QuicSettings {
    server: Arc<ServerConfig>,
    max_packet_size: usize,
    max_connections: Option<usize>,
    /// How long a connection may go without opening its control stream (the broker's
    /// CONNECT deadline): a client that only handshakes is closed after it.
    pub control_deadline: Duration,
    /// Handshakes in progress beyond which a client that has not proven its address gets a
    /// Retry first (a stateless round trip: a flood of spoofed Initials then costs no state).
    pub retry_above: usize,
    /// A new server configuration from `QuicReloader::reload`, taken by the endpoint thread.
    reloaded: Arc<parking_lot::Mutex<Option<Arc<ServerConfig>>>>,
}

/// Loads a QUIC listener's certificate and key again (SIGHUP): new connections get the new
/// files, open ones carry on; if they do not load, the old ones stay. Cheap to clone.
#[derive(Clone)]
pub struct QuicReloader {
    listener: Listener,
    max_packet_size: usize,
    max_keep_alive: u16,
    reloaded: Arc<parking_lot::Mutex<Option<Arc<ServerConfig>>>>,
}

impl QuicReloader {
    pub fn reload(&self) -> io::Result<()> {
        let fresh = QuicSettings::new(&self.listener, self.max_packet_size, self.max_keep_alive)?;
        *self.reloaded.lock() = Some(fresh.server);
        log::info!("QUIC listener {}: certificate reloaded", self.listener.addr);
        Ok(())
    }
}

impl QuicSettings {
    /// Loads the listener's certificate and key; `max_keep_alive` is the broker's cap on the
    /// MQTT keepalive, which the idle timeout must outlast (1.5 intervals and a margin).
    pub fn new(
        listener: &Listener,
        max_packet_size: usize,
        max_keep_alive: u16,
    ) -> io::Result<QuicSettings> {
        let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidInput, e);
        let tls = listener.tls.as_ref().ok_or_else(|| {
            invalid(format!(
                "listener {}: protocol quic needs certfile and keyfile",
                listener.addr
            ))
        })?;
        let mut crypto = super::tls::server_config(tls)?;
        crypto.alpn_protocols = vec![ALPN.to_vec()];
        // 0-RTT data can be replayed: never accepted.
        crypto.max_early_data_size = 0;
        let crypto = QuicServerConfig::try_from(crypto)
            .map_err(|e| invalid(format!("listener {}: {e}", listener.addr)))?;
        let mut server = ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(Arc::new(transport_config(max_keep_alive)));
        server.migration(true);
        server.max_incoming(1024);
        Ok(QuicSettings {
            server: Arc::new(server),
            max_packet_size,
            max_connections: listener.max_connections,
            control_deadline: Duration::from_secs(10),
            retry_above: 64,
            reloaded: Arc::default(),
        })
    }
}

impl QuicSettings {
    /// The handle that reloads this listener's files (`listener` as given to `new`).
    pub fn reloader(&self, listener: &Listener, max_keep_alive: u16) -> QuicReloader {
        QuicReloader {
            listener: listener.clone(),
            max_packet_size: self.max_packet_size,
            max_keep_alive,
            reloaded: Arc::clone(&self.reloaded),
        }
    }

    /// A configuration reloaded since the last call, if any.
    fn take_reloaded(&self) -> Option<Arc<ServerConfig>> {
        self.reloaded.lock().take()
    }
}

/// The QUIC transport parameters every connection of the listener gets.
fn transport_config(max_keep_alive: u16) -> TransportConfig {
    let mut transport = TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_BIDI_STREAMS))
        .max_concurrent_uni_streams(VarInt::from_u32(MAX_UNI_STREAMS))
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_WINDOW))
        .send_window(SEND_WINDOW)
        .max_idle_timeout(Some(IdleTimeout::from(
            VarInt::from_u64(idle_timeout_ms(max_keep_alive))
                .expect("at most 98 million ms fits a VarInt"),
        )))
        .keep_alive_interval(Some(KEEP_ALIVE))
        .datagram_receive_buffer_size(None);
    transport
}

/// Above 1.5 × the longest keepalive a client may get, so that QUIC never closes a
/// connection the MQTT keepalive still allows; the reader's own keepalive timer ends a
/// silent client first.
fn idle_timeout_ms(max_keep_alive: u16) -> u64 {
    let keep_alive = if max_keep_alive == 0 {
        u64::from(u16::MAX)
    } else {
        u64::from(max_keep_alive)
    };
    keep_alive * 1500 + 5_000
}

/// A running QUIC listener: its threads, which end once `stopping` is set.
pub struct QuicListener {
    pub threads: Vec<JoinHandle<()>>,
}

/// Starts the endpoint and UDP threads of a bound socket. `spawn` starts each client's
/// threads; the listener stops (closing its connections) once `stopping` is set.
pub fn start(
    socket: UdpSocket,
    settings: QuicSettings,
    spawn: Spawner,
    stopping: Arc<AtomicBool>,
) -> io::Result<QuicListener> {
    endpoint::start(socket, settings, spawn, stopping)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_timeout_outlasts_one_and_a_half_keepalives() {
        assert!(idle_timeout_ms(60) > 90_000);
        assert!(idle_timeout_ms(0) > 65_535 * 1_500);
    }
}
