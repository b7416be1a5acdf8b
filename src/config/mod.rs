//! Broker settings and their defaults, read from the environment (and, through
//! `mosquitto_conf` and `file`, from a mosquitto.conf).
//!
//! Owns: every tunable limit in one place. Must not: open sockets or start threads.

use std::env;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub mod file;
pub mod listener;
pub mod mosquitto_conf;
pub mod security;

pub use listener::{Listener, Protocol, TlsSettings};
pub use security::{HttpAuth, LogDest, Security};

/// The largest packet the protocol can describe: a remaining length of 268,435,455 bytes plus
/// a 5-byte fixed header.
pub const PROTOCOL_MAX_PACKET_SIZE: usize = 268_435_460;

/// Limits and sizes; `Config::default()` is what `cargo run` uses without environment variables.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen (`SOCKET_ADDR`, default 127.0.0.1:1883).
    pub socket_addr: SocketAddr,
    /// Largest packet accepted, fixed header included (`MAX_PACKET_SIZE`; default
    /// `PROTOCOL_MAX_PACKET_SIZE`, no limit beyond the protocol's, as mosquitto). Larger packets
    /// are refused before their body is read and the client is disconnected. Announced to MQTT 5
    /// clients only when set below the protocol's limit. A body is read only as far as the
    /// client has sent it, so the limit bounds memory by what clients actually send.
    pub max_packet_size: usize,
    /// QoS 1 and 2 messages sent to one client and not yet acknowledged
    /// (`MAX_INFLIGHT_MESSAGES`, default 20 as mosquitto); the rest wait in the session queue,
    /// in order.
    pub max_inflight_messages: usize,
    /// Messages waiting in one session's queue, online or offline, behind its in-flight window
    /// (`MAX_QUEUED_MESSAGES`, default 1000). Offline, or online once congestion has outlasted
    /// `flow_hold_limit`, new messages beyond it are dropped for that session alone (QoS 0
    /// first) and counted, as mosquitto does; within the hold limit publishers are slowed.
    pub max_queued_messages: usize,
    /// The same bound in bytes (`MAX_QUEUED_BYTES`, default 0: none, as mosquitto). Payload,
    /// topic and a small fixed overhead count per queued message.
    pub max_queued_bytes: usize,
    /// Bytes queued in the whole broker, every session together (`MAX_QUEUED_BYTES_TOTAL`;
    /// default a quarter of the machine's memory, at most 1 GiB; 0: none). Past three quarters
    /// of it QoS 0 messages are no longer queued, past all of it nothing is, and an MQTT 5
    /// publisher whose QoS 1/2 message was refused somewhere gets 0x97 (quota exceeded).
    pub max_queued_bytes_total: usize,
    /// How long a congested subscriber may hold its publishers back before the router looks
    /// again (`FLOW_HOLD_MS`, default 400 ms). Then, unless at its pace it would drain to half
    /// within as long again, they are released and that subscriber's own limits apply: what
    /// does not fit its queue is dropped for it alone. A publisher's acknowledgements are
    /// never held for more than twice this.
    pub flow_hold_limit: Duration,
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
    /// QoS 2 messages an MQTT 5 client may have sent us and not yet released with PUBREL;
    /// announced as Receive Maximum (`RECEIVE_MAXIMUM`, default 20: mosquitto announces its
    /// max_inflight_messages, 20), and a client that exceeds it is disconnected with 0x93.
    /// 3.1/3.1.1 clients are not told, so only their packet ids bound them. QoS 1 messages are
    /// acknowledged at once.
    pub receive_maximum: u16,
    /// Topic aliases an MQTT 5 client may set on its connection (`TOPIC_ALIAS_MAXIMUM`,
    /// default 10, as mosquitto); 0 turns inbound aliases off.
    pub topic_alias_maximum: u16,
    /// Longest keepalive accepted, in seconds (`MAX_KEEPALIVE`, default 65535 as mosquitto;
    /// 0: no cap). MQTT 5 clients asking for more, or for none, are told the cap as Server Keep
    /// Alive (so an MQTT 5 client asking for no keepalive gets 65535 by default, as from
    /// mosquitto); 3.1 and 3.1.1 clients asking for more are refused with "identifier
    /// rejected".
    pub max_keep_alive: u16,
    /// Connections held at once (`MAX_CONNECTIONS`; default: what this machine's thread, memory
    /// map and file limits allow, see `limits`). Further connections are closed at once.
    pub max_connections: usize,
    /// A client that takes nothing for this long while messages wait for it (its socket
    /// accepts no bytes, or it acknowledges nothing while its window is full) is disconnected
    /// (its will is published) (`WRITE_TIMEOUT` in seconds, default 10).
    pub write_timeout: Duration,
    /// How long a new connection may take to send its whole CONNECT, however it trickles
    /// (`CONNECT_TIMEOUT` in seconds, default 10).
    pub connect_timeout: Duration,
    /// Connections still in their handshake held at once (`MAX_PENDING_HANDSHAKES`, default a
    /// quarter of `max_connections`, at least 64). At the limit the oldest one is closed to
    /// make room, so that slow handshakes never lock out a real client.
    pub max_pending_handshakes: usize,
    /// Stack size of each client thread; two per client, so keep it small.
    pub client_stack_size: usize,
    /// Listeners from the config file (default empty: then the one listener is `socket_addr`).
    /// When not empty, the first describes the socket handed to `Broker::new`.
    pub listeners: Vec<Listener>,
    /// How often $SYS topics are published (default 10 s; zero turns $SYS off).
    pub sys_interval: Duration,
    /// Where the store lives (None = persistence off, the default): sessions, queued and
    /// retained messages (`PERSISTENCE_DIR`).
    pub persistence_dir: Option<PathBuf>,
    /// Bridges to other brokers, one per `connection` block (default none).
    pub bridges: Vec<crate::bridge::BridgeConfig>,
    /// Security options for every listener (`per_listener_settings false`, the default).
    pub security: Security,
    /// `per_listener_settings`: each listener has its own `Listener::security`.
    pub per_listener_settings: bool,
    /// `allow_zero_length_clientid` (default true): 3.1.1 and 5 clients may leave the client
    /// identifier empty and get one assigned.
    pub allow_zero_length_clientid: bool,
    /// `auto_id_prefix` (default "auto-"): the start of assigned client identifiers.
    pub auto_id_prefix: String,
    /// `clientid_prefixes`: when set, client identifiers must start with it (else CONNACK
    /// "not authorised").
    pub clientid_prefixes: Option<String>,
    /// `message_size_limit` (0 = none, the default): larger PUBLISH payloads are dropped.
    pub message_size_limit: usize,
    /// `log_dest` (default stderr).
    pub log_dest: LogDest,
    /// `maximum_qos` (default 2): the highest QoS clients may use. MQTT 5 clients are told it
    /// in CONNACK when below 2; subscriptions are granted at most this; a PUBLISH (or will)
    /// above it closes the connection (v5: DISCONNECT / CONNACK 0x9B), as mosquitto does.
    pub maximum_qos: crate::mqtt::QoS,
    /// `retain_available` (default true). When false, MQTT 5 clients are told so in CONNACK,
    /// and a retained PUBLISH (or will) closes the connection (v5: 0x9A), as mosquitto does,
    /// so no retained message is stored.
    pub retain_available: bool,
    /// `upgrade_outgoing_qos` (default false): deliver at the subscription's QoS rather than
    /// the lower of the message's and the subscription's.
    pub upgrade_outgoing_qos: bool,
    /// `queue_qos0_messages` (default false): QoS 0 messages are queued for offline
    /// persistent sessions too, within the same queue limits.
    pub queue_qos0_messages: bool,
    /// Not a setting: the authorizer of the listener this copy of the config was made for,
    /// set by `Broker` (None: everyone may connect and do anything).
    pub authorizer: Option<std::sync::Arc<crate::auth::Authorizer>>,
    /// Not a setting: the address of the listener this copy of the config was made for, set
    /// by `Broker`; stored with persistent sessions to find their authorizer after a restart.
    pub listener_addr: Option<std::net::SocketAddr>,
    /// fsync each commit before the acknowledgements that wait for it
    /// (`PERSISTENCE_SYNC`, default true). Off: a commit reaches the disk up to a second later,
    /// and a crash or power cut loses what was acknowledged in that second.
    pub persistence_sync: bool,
    /// A store that cannot be read at start is moved aside and the broker starts empty
    /// (`--reset-corrupt-store` or `RESET_CORRUPT_STORE=true`; default false: refuse to start).
    pub reset_corrupt_store: bool,
    /// Offline sessions are removed after this long at most: MQTT 3.1/3.1.1 sessions that would
    /// never expire, and MQTT 5 ones that asked for longer, as mosquitto 2.0 does
    /// (`PERSISTENT_CLIENT_EXPIRATION`, in seconds; `persistent_client_expiration` in the file;
    /// default: never, as mosquitto).
    pub persistent_client_expiration: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket_addr: SocketAddr::from(([127, 0, 0, 1], 1883)),
            max_packet_size: PROTOCOL_MAX_PACKET_SIZE,
            max_inflight_messages: 20,
            max_queued_messages: 1000,
            max_queued_bytes: 0,
            max_queued_bytes_total: crate::limits::default_queued_bytes_total(),
            flow_hold_limit: Duration::from_millis(400),
            writer_queue_capacity: 1024,
            writer_backlog_limit: 16 * 1024,
            router_queue_capacity: 512,
            receive_maximum: 20,
            topic_alias_maximum: 10,
            max_keep_alive: u16::MAX,
            max_connections: crate::limits::default_max_connections(),
            write_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_pending_handshakes: 0,
            client_stack_size: 128 * 1024,
            listeners: Vec::new(),
            sys_interval: Duration::from_secs(10),
            persistence_dir: None,
            bridges: Vec::new(),
            security: Security::default(),
            per_listener_settings: false,
            allow_zero_length_clientid: true,
            auto_id_prefix: "auto-".into(),
            clientid_prefixes: None,
            message_size_limit: 0,
            log_dest: LogDest::Stderr,
            maximum_qos: crate::mqtt::QoS::ExactlyOnce,
            retain_available: true,
            upgrade_outgoing_qos: false,
            queue_qos0_messages: false,
            authorizer: None,
            listener_addr: None,
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
            config.max_packet_size = size.clamp(2, PROTOCOL_MAX_PACKET_SIZE);
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
            config.max_keep_alive = n;
        }
        if let Some(n) = var("MAX_QUEUED_BYTES")? {
            config.max_queued_bytes = n;
        }
        if let Some(n) = var("MAX_QUEUED_BYTES_TOTAL")? {
            config.max_queued_bytes_total = n;
        }
        if let Some(ms) = var::<u64>("FLOW_HOLD_MS")? {
            config.flow_hold_limit = Duration::from_millis(ms);
        }
        if let Some(secs) = var::<f64>("WRITE_TIMEOUT")? {
            config.write_timeout = seconds(secs, "WRITE_TIMEOUT")?;
        }
        if let Some(secs) = var::<f64>("CONNECT_TIMEOUT")? {
            config.connect_timeout = seconds(secs, "CONNECT_TIMEOUT")?;
        }
        if let Some(n) = var("MAX_PENDING_HANDSHAKES")? {
            config.max_pending_handshakes = n;
        }
        if let Some(secs) = var("SYS_INTERVAL")? {
            config.sys_interval = Duration::from_secs(secs);
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

fn seconds(secs: f64, name: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{name}={secs} is not a positive number of seconds"))
}

impl Config {
    /// Handshakes held at once: `max_pending_handshakes`, or by default a quarter of
    /// `max_connections` (at least 64).
    pub fn pending_handshake_limit(&self) -> usize {
        match self.max_pending_handshakes {
            0 => (self.max_connections / 4).max(64),
            n => n,
        }
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
