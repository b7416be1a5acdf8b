//! Broker settings and their defaults, read from the environment.
//!
//! Owns: every tunable limit in one place. Must not: open sockets or start threads.

use std::env;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub mod listener;

pub use listener::{Listener, Protocol, TlsSettings};

/// Limits and sizes; `Config::default()` is what `cargo run` uses without environment variables.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen (`SOCKET_ADDR`, default 127.0.0.1:1883).
    pub socket_addr: SocketAddr,
    /// Largest packet accepted, fixed header included (`MAX_PACKET_SIZE`, default 1 MiB).
    /// Larger packets are refused before their body is read and the client is disconnected.
    pub max_packet_size: usize,
    /// QoS 1 and 2 messages sent to one client and not yet acknowledged
    /// (`MAX_INFLIGHT_MESSAGES`, default 100); the rest wait in the session queue, in order.
    pub max_inflight_messages: usize,
    /// Messages waiting in one session's queue, online or offline, behind its in-flight window
    /// (`MAX_QUEUED_MESSAGES`, default 1000). When full, new messages for that session are
    /// dropped and counted, as mosquitto does; other sessions are unaffected.
    pub max_queued_messages: usize,
    /// Packets waiting in one client's writer channel before the router treats it as full
    /// and keeps further messages in the session queue instead.
    pub writer_queue_capacity: usize,
    /// Items waiting for one writer, deliveries and control packets together, beyond which the
    /// client is taken to have stopped reading and is disconnected.
    pub writer_backlog_limit: usize,
    /// Messages waiting for the routing actor; readers block when it is full, which pushes
    /// back on publishers through TCP. Small, because flow control takes effect only once the
    /// router reaches a publisher's message: what waits here is the overshoot it allows.
    pub router_queue_capacity: usize,
    /// QoS 2 messages a client may have sent us and not yet released with PUBREL; announced
    /// to MQTT 5 clients as Receive Maximum (`RECEIVE_MAXIMUM`, default 65535), and a client
    /// that exceeds it is disconnected with 0x93. QoS 1 messages are acknowledged at once.
    pub receive_maximum: u16,
    /// Topic aliases an MQTT 5 client may set on its connection (`TOPIC_ALIAS_MAXIMUM`,
    /// default 10, as mosquitto); 0 turns inbound aliases off.
    pub topic_alias_maximum: u16,
    /// Longest keepalive accepted, in seconds (`MAX_KEEPALIVE`, default 65535: no cap). MQTT 5
    /// clients asking for more (or for none) are told the cap as Server Keep Alive; 3.1 and
    /// 3.1.1 clients are refused with "identifier rejected", as mosquitto does.
    pub max_keep_alive: u16,
    /// Connections held at once (`MAX_CONNECTIONS`; default: what this machine's thread, memory
    /// map and file limits allow, see `limits`). Further connections are closed at once.
    pub max_connections: usize,
    /// A client whose socket accepts nothing for this long is disconnected (its will is
    /// published). Flow control makes publishers wait for a congested subscriber, so this also
    /// bounds how long one that stopped reading can hold them up.
    pub write_timeout: Duration,
    /// How long a new connection may take to send CONNECT.
    pub connect_timeout: Duration,
    /// Stack size of each client thread; two per client, so keep it small.
    pub client_stack_size: usize,
    /// Where sessions, queued messages and retained messages are stored (`PERSISTENCE_DIR`);
    /// `None`, the default, keeps everything in memory only, as mosquitto does by default.
    pub persistence_dir: Option<PathBuf>,
    /// fsync each commit before the acknowledgements that wait for it
    /// (`PERSISTENCE_SYNC`, default true). Off: a commit reaches the disk up to a second later,
    /// and a crash or power cut loses what was acknowledged in that second.
    pub persistence_sync: bool,
    /// A store that cannot be read at start is moved aside and the broker starts empty
    /// (`--reset-corrupt-store` or `RESET_CORRUPT_STORE=true`; default false: refuse to start).
    pub reset_corrupt_store: bool,
    /// MQTT 3.1/3.1.1 sessions that would never expire are removed after this long offline
    /// (`PERSISTENT_CLIENT_EXPIRATION`, in seconds; default: never, as mosquitto).
    pub persistent_client_expiration: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket_addr: SocketAddr::from(([127, 0, 0, 1], 1883)),
            max_packet_size: 1024 * 1024,
            max_inflight_messages: 100,
            max_queued_messages: 1000,
            writer_queue_capacity: 1024,
            writer_backlog_limit: 16 * 1024,
            router_queue_capacity: 512,
            receive_maximum: u16::MAX,
            topic_alias_maximum: 10,
            max_keep_alive: u16::MAX,
            max_connections: crate::limits::default_max_connections(),
            write_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            client_stack_size: 128 * 1024,
            persistence_dir: None,
            persistence_sync: true,
            reset_corrupt_store: false,
            persistent_client_expiration: None,
        }
    }
}

impl Config {
    /// Defaults overridden by the environment variables named on each field. A value that does
    /// not parse is an error naming the variable.
    pub fn from_env() -> Result<Config, String> {
        let mut config = Config::default();
        if let Some(addr) = var("SOCKET_ADDR")? {
            config.socket_addr = addr;
        }
        if let Some(size) = var::<usize>("MAX_PACKET_SIZE")? {
            // The remaining length can describe at most 268,435,455 bytes plus a 5-byte header.
            config.max_packet_size = size.clamp(2, 268_435_460);
        }
        if let Some(n) = var::<usize>("MAX_INFLIGHT_MESSAGES")? {
            config.max_inflight_messages = n.clamp(1, 65_535);
        }
        if let Some(n) = var("MAX_QUEUED_MESSAGES")? {
            config.max_queued_messages = n;
        }
        if let Some(n) = var::<u16>("RECEIVE_MAXIMUM")? {
            config.receive_maximum = n.max(1);
        }
        if let Some(n) = var("TOPIC_ALIAS_MAXIMUM")? {
            config.topic_alias_maximum = n;
        }
        if let Some(n) = var::<usize>("MAX_CONNECTIONS")? {
            // More than the machine allows would end in an abort, not a refusal.
            config.max_connections = n.min(crate::limits::default_max_connections());
        }
        if let Some(n) = var::<u16>("MAX_KEEPALIVE")? {
            config.max_keep_alive = n.max(1);
        }
        if let Some(dir) = var::<PathBuf>("PERSISTENCE_DIR")? {
            config.persistence_dir = Some(dir).filter(|d| !d.as_os_str().is_empty());
        }
        if let Some(sync) = var("PERSISTENCE_SYNC")? {
            config.persistence_sync = sync;
        }
        if let Some(reset) = var("RESET_CORRUPT_STORE")? {
            config.reset_corrupt_store = reset;
        }
        if let Some(secs) = var::<u64>("PERSISTENT_CLIENT_EXPIRATION")? {
            config.persistent_client_expiration =
                Some(Duration::from_secs(secs)).filter(|d| !d.is_zero());
        }
        Ok(config)
    }
}

fn var<T: std::str::FromStr>(name: &str) -> Result<Option<T>, String> {
    match env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("{name}={text:?} is not a valid value")),
        Err(_) => Ok(None),
    }
}
