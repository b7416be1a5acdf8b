//! The mosquitto.conf parser: text in, settings (or an error naming file, line and option) out.
//!
//! Owns: the option table (which options exist, their value syntax, whether they belong to a
//! listener), mosquitto 2's scoping rules (options before any `listener` line belong to the
//! default listener or to all; `per_listener_settings` moves the security options into each
//! listener) and the list of mosquitto options we do not have yet. Must not: open files,
//! sockets or threads. `include_dir` is read through the `ReadDir` the caller hands in, so the
//! parser stays testable without a file system (`config::file` is the real one).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::listener::{Listener, Protocol, TlsSettings};
use super::{Config, HttpAuth, LogDest, Security};
use crate::bridge::BridgeConfig;
use crate::mqtt::QoS;

/// A line the parser refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfError {
    pub file: PathBuf,
    /// 1-based; 0 when the error is not about one line (a file that cannot be read).
    pub line: usize,
    pub option: String,
    pub message: String,
}

impl fmt::Display for ConfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}: {}: {}",
                self.file.display(),
                self.line,
                self.option,
                self.message
            )
        }
    }
}

impl std::error::Error for ConfError {}

/// Lists the `*.conf` files of a directory, sorted by name, with their text.
pub type ReadDir<'a> = dyn FnMut(&Path) -> Result<Vec<(PathBuf, String)>, String> + 'a;

/// What a configuration file says, on top of the `Config` it started from.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub config: Config,
    /// Options accepted but not acted on yet; the caller logs them.
    pub warnings: Vec<String>,
    /// The `log_type` levels named (empty: the default).
    pub log_types: Vec<String>,
    /// `pid_file`.
    pub pid_file: Option<PathBuf>,
    /// `persistence true` seen (mapped onto `config.persistence_dir` at `finish`).
    persistence: bool,
    persistence_location: Option<PathBuf>,
    /// The listener that listener-scoped options apply to: None before any `listener` line
    /// (then they apply to the default listener, made by `port`).
    current: Option<usize>,
    /// `port` / `bind_address`: mosquitto's default listener (deprecated there, still common).
    default_port: Option<u16>,
    default_bind: Option<IpAddr>,
    default_listener: Listener,
}

impl Parsed {
    pub fn new(config: Config) -> Parsed {
        let default_listener = Listener::mqtt(config.socket_addr);
        Parsed {
            config,
            warnings: Vec::new(),
            log_types: Vec::new(),
            pid_file: None,
            persistence: false,
            persistence_location: None,
            current: None,
            default_port: None,
            default_bind: None,
            default_listener,
        }
    }

    /// Applies every line of `text` (the contents of `file`).
    pub fn apply(
        &mut self,
        file: &Path,
        text: &str,
        read_dir: &mut ReadDir<'_>,
    ) -> Result<(), ConfError> {
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            // mosquitto: comments start a line; there are no trailing comments.
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (option, value) = match line.split_once(char::is_whitespace) {
                Some((option, value)) => (option, value.trim()),
                None => (line, ""),
            };
            let error = |message: String| ConfError {
                file: file.to_path_buf(),
                line: index + 1,
                option: option.to_string(),
                message,
            };
            if option == "include_dir" {
                let dir = path_value(value).map_err(error)?;
                let files = read_dir(&dir).map_err(error)?;
                for (path, text) in files {
                    self.apply(&path, &text, read_dir)?;
                }
                continue;
            }
            if option == "connection" {
                // A new block; the one before it must be complete.
                self.check_last_bridge()?;
                let name = crate::bridge::config::word_value(value).map_err(error)?;
                let bridge = BridgeConfig::new(&name, file.to_path_buf(), index + 1);
                self.config.bridges.push(bridge);
                continue;
            }
            if BridgeConfig::is_bridge_option(option) {
                let bridge = self.config.bridges.last_mut().ok_or_else(|| {
                    error("belongs to a bridge: a `connection` line must come first".into())
                })?;
                bridge.apply(option, value).map_err(error)?;
                continue;
            }
            self.option(option, value).map_err(error)?;
        }
        Ok(())
    }

    /// The last `connection` block, checked once complete: its errors name its first line.
    pub fn check_last_bridge(&self) -> Result<(), ConfError> {
        let Some(bridge) = self.config.bridges.last() else {
            return Ok(());
        };
        bridge.check().map_err(|message| ConfError {
            file: bridge.defined_at.0.clone(),
            line: bridge.defined_at.1,
            option: "connection".into(),
            message: format!("bridge {}: {message}", bridge.name),
        })
    }

    /// The settings once every file has been applied: listeners in order, the default
    /// listener first when `port` made one, persistence mapped, anonymous access resolved.
    pub fn finish(mut self) -> Parsed {
        if let Some(port) = self.default_port {
            let ip = self
                .default_bind
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
            let mut listener = self.default_listener.clone();
            listener.addr = SocketAddr::new(ip, port);
            self.config.listeners.insert(0, listener);
        }
        // mosquitto 2: with no listener configured it listens on loopback only and lets
        // anonymous clients in; once a listener is configured, anonymous clients are refused
        // unless allowed.
        let default_anonymous = self.config.listeners.is_empty();
        self.config
            .security
            .allow_anonymous
            .get_or_insert(default_anonymous);
        for listener in &mut self.config.listeners {
            listener
                .security
                .allow_anonymous
                .get_or_insert(default_anonymous);
        }
        if self.config.listeners.is_empty() {
            // The one listener (SOCKET_ADDR) takes the listener-scoped options set without a
            // `listener` line.
            let mut listener = self.default_listener.clone();
            listener.addr = self.config.socket_addr;
            if self.config.per_listener_settings {
                listener
                    .security
                    .allow_anonymous
                    .get_or_insert(default_anonymous);
                self.config.listeners.push(listener);
            } else if listener != Listener::mqtt(self.config.socket_addr) {
                self.config.listeners.push(listener);
            }
        }
        if self.persistence {
            // mosquitto writes its file in the working directory unless told where.
            let dir = self
                .persistence_location
                .clone()
                .unwrap_or_else(|| PathBuf::from("."));
            self.config.persistence_dir = Some(dir);
        }
        self
    }

    fn listener(&mut self) -> &mut Listener {
        match self.current {
            Some(index) => &mut self.config.listeners[index],
            None => &mut self.default_listener,
        }
    }

    /// The security options in force where the line is: the current listener's with
    /// `per_listener_settings true`, the global ones otherwise.
    fn security(&mut self) -> &mut Security {
        if self.config.per_listener_settings {
            &mut self.listener().security
        } else {
            &mut self.config.security
        }
    }

    fn tls(&mut self) -> &mut TlsSettings {
        self.listener().tls.get_or_insert_with(TlsSettings::default)
    }

    fn warn(&mut self, option: &str, why: &str) {
        self.warnings.push(format!("{option}: {why}"));
    }

    /// Applies one option; the error is the message (the caller adds file, line, option).
    fn option(&mut self, option: &str, value: &str) -> Result<(), String> {
        let config = &mut self.config;
        match option {
            // Listeners.
            "listener" => {
                let mut words = value.split_whitespace();
                let port: u16 = number(words.next().unwrap_or(""))?;
                let ip = match words.next() {
                    Some(host) => ip_value(host)?,
                    None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                };
                if words.next().is_some() {
                    return Err("expected PORT [BIND_ADDRESS]".into());
                }
                config
                    .listeners
                    .push(Listener::mqtt(SocketAddr::new(ip, port)));
                self.current = Some(config.listeners.len() - 1);
            }
            "port" => self.default_port = Some(number(value)?),
            "bind_address" => self.default_bind = Some(ip_value(value)?),
            "protocol" => {
                self.listener().protocol = match value {
                    "mqtt" => Protocol::Mqtt,
                    "websockets" => Protocol::WebSockets,
                    "metrics" => Protocol::Metrics,
                    "quic" => Protocol::Quic,
                    _ => return Err(format!("unknown protocol {value:?} (mqtt or websockets)")),
                }
            }
            "max_connections" => {
                let n: i64 = number(value)?;
                self.listener().max_connections = (n >= 0).then_some(n as usize);
            }
            "mount_point" => return Err("not supported yet: mount_point".into()),
            "socket_domain" => match value {
                "ipv4" => {}
                "ipv6" => return Err("not supported yet: socket_domain ipv6".into()),
                _ => return Err(format!("{value:?} is not ipv4 or ipv6")),
            },
            // TLS, consumed by the TLS transport.
            "cafile" => self.tls().cafile = Some(path_value(value)?),
            "capath" => self.tls().capath = Some(path_value(value)?),
            "certfile" => self.tls().certfile = path_value(value)?,
            "keyfile" => self.tls().keyfile = path_value(value)?,
            "crlfile" => self.tls().crlfile = Some(path_value(value)?),
            "require_certificate" => self.tls().require_certificate = boolean(value)?,
            "use_identity_as_username" => self.tls().use_identity_as_username = boolean(value)?,
            "use_subject_as_username" => self.tls().use_subject_as_username = boolean(value)?,
            "tls_version" => match value {
                "tlsv1.2" | "tlsv1.3" => self.tls().tls_version = Some(value.to_string()),
                _ => return Err(format!("{value:?}: supported are tlsv1.2 and tlsv1.3")),
            },
            "ciphers" | "ciphers_tls1.3" => self.tls().ciphers = Some(non_empty(value)?),
            // Security: global, or per listener with per_listener_settings.
            "per_listener_settings" => config.per_listener_settings = boolean(value)?,
            "allow_anonymous" => self.security().allow_anonymous = Some(boolean(value)?),
            "password_file" => {
                let path = path_value(value)?;
                let security = self.security();
                if security.password_file.is_some() {
                    return Err("duplicate password_file".into());
                }
                security.password_file = Some(path);
            }
            "acl_file" => {
                let path = path_value(value)?;
                let security = self.security();
                if security.acl_file.is_some() {
                    return Err("duplicate acl_file".into());
                }
                security.acl_file = Some(path);
            }
            "auth_http_url" => {
                let url = non_empty(value)?;
                if !url.starts_with("http://") {
                    return Err(format!("{url:?}: only http:// URLs are supported"));
                }
                self.security()
                    .http_auth
                    .get_or_insert_with(HttpAuth::default)
                    .url = url;
            }
            "auth_http_timeout" => {
                let timeout = seconds(value)?;
                self.http_auth_option()?.timeout = timeout;
            }
            "auth_http_cache_ttl" => {
                let ttl = seconds(value)?;
                self.http_auth_option()?.cache_ttl = ttl;
            }
            "auth_http_on_error" => {
                let allow = match value {
                    "allow" => true,
                    "deny" => false,
                    _ => return Err(format!("{value:?} is not allow or deny")),
                };
                self.http_auth_option()?.allow_on_error = allow;
            }
            // Client identifiers.
            "allow_zero_length_clientid" => config.allow_zero_length_clientid = boolean(value)?,
            "auto_id_prefix" => config.auto_id_prefix = value.to_string(),
            "clientid_prefixes" => config.clientid_prefixes = Some(non_empty(value)?),
            // Limits.
            "max_inflight_messages" => {
                // 0 means no limit in mosquitto; the protocol allows 65535 at most.
                let n: usize = number(value)?;
                config.max_inflight_messages = if n == 0 { 65_535 } else { n.min(65_535) };
                // mosquitto announces the same number as Receive Maximum (MQTT 5 CONNACK).
                config.receive_maximum = config.max_inflight_messages as u16;
            }
            "max_queued_messages" => {
                let n: usize = number(value)?;
                config.max_queued_messages = if n == 0 { usize::MAX / 16 } else { n };
            }
            "max_queued_bytes" => config.max_queued_bytes = number(value)?,
            "max_packet_size" => {
                let n: usize = number(value)?;
                config.max_packet_size = if n == 0 {
                    268_435_460
                } else if n < 20 {
                    return Err("must be at least 20 (or 0: no limit)".into());
                } else {
                    n.min(268_435_460)
                };
            }
            "message_size_limit" => config.message_size_limit = number(value)?,
            "max_keepalive" => {
                let n: u16 = number(value)?;
                config.max_keep_alive = if n == 0 { u16::MAX } else { n };
            }
            "max_topic_alias" => config.topic_alias_maximum = number(value)?,
            "maximum_qos" => {
                let n: u8 = number(value)?;
                config.maximum_qos = match n {
                    0 => QoS::AtMostOnce,
                    1 => QoS::AtLeastOnce,
                    2 => QoS::ExactlyOnce,
                    _ => return Err("must be 0, 1 or 2".into()),
                };
            }
            "retain_available" => config.retain_available = boolean(value)?,
            "upgrade_outgoing_qos" => config.upgrade_outgoing_qos = boolean(value)?,
            "queue_qos0_messages" => config.queue_qos0_messages = boolean(value)?,
            "persistent_client_expiration" => {
                config.persistent_client_expiration =
                    Some(expiration(value)?).filter(|d| !d.is_zero());
            }
            // We always set TCP_NODELAY: small MQTT packets must not wait for Nagle.
            "set_tcp_nodelay" => {
                boolean(value)?;
            }
            "sys_interval" => config.sys_interval = Duration::from_secs(number(value)?),
            // Persistence.
            "persistence" => self.persistence = boolean(value)?,
            "persistence_location" => self.persistence_location = Some(path_value(value)?),
            "persistence_file" | "autosave_interval" | "autosave_on_changes" => {
                non_empty(value)?;
                self.warn(option, "accepted; our store decides when it writes");
            }
            // Logging.
            "log_dest" => {
                let mut words = value.split_whitespace();
                config.log_dest = match words.next().unwrap_or("") {
                    "stderr" => LogDest::Stderr,
                    "stdout" => LogDest::Stdout,
                    "none" => LogDest::None,
                    "file" => LogDest::File(path_value(value["file".len()..].trim())?),
                    dest @ ("syslog" | "topic" | "dlt") => {
                        return Err(format!("not supported yet: log_dest {dest}"))
                    }
                    other => return Err(format!("unknown log destination {other:?}")),
                };
            }
            "log_type" => match value {
                "error" | "warning" | "notice" | "information" | "debug" | "subscribe"
                | "unsubscribe" | "websockets" | "none" | "all" => {
                    self.log_types.push(value.to_string())
                }
                _ => return Err(format!("unknown log type {value:?}")),
            },
            "log_timestamp" | "connection_messages" => {
                boolean(value)?;
            }
            "log_timestamp_format" => {
                non_empty(value)?;
            }
            "pid_file" => self.pid_file = Some(path_value(value)?),
            "user" => {
                non_empty(value)?;
                self.warn(
                    option,
                    "ignored: this broker does not change user; run it as one",
                );
            }
            _ if UNSUPPORTED.contains(&option) => {
                return Err(format!("not supported yet: {option}"));
            }
            _ => return Err("unknown option".into()),
        }
        Ok(())
    }

    fn http_auth_option(&mut self) -> Result<&mut HttpAuth, String> {
        self.security()
            .http_auth
            .as_mut()
            .ok_or_else(|| "auth_http_url must come first".to_string())
    }
}

/// mosquitto options we know and do not have yet: named as such rather than "unknown".
const UNSUPPORTED: &[&str] = &[
    "plugin",
    "plugin_opt",
    "auth_plugin",
    "auth_plugin_deny_special_chars",
    "global_plugin",
    "psk_file",
    "psk_hint",
    "http_dir",
    "websockets_log_level",
    "websockets_headers_size",
    "memory_limit",
    "max_inflight_bytes",
    "use_username_as_clientid",
    "check_retain_source",
    "allow_duplicate_messages",
    "retry_interval",
    "store_clean_interval",
    "dhparamfile",
    "certfile_sni",
    "tls_engine",
    "tls_engine_kpass_sha1",
    "tls_keyform",
    "use_identity_as_clientid",
    "enable_control_api",
    "accept_protocol_versions",
];

fn non_empty(value: &str) -> Result<String, String> {
    if value.is_empty() {
        Err("empty value".into())
    } else {
        Ok(value.to_string())
    }
}

fn path_value(value: &str) -> Result<PathBuf, String> {
    non_empty(value).map(PathBuf::from)
}

fn number<T: std::str::FromStr>(value: &str) -> Result<T, String> {
    if value.is_empty() {
        return Err("empty value".into());
    }
    value
        .parse()
        .map_err(|_| format!("{value:?} is not a valid number here"))
}

fn boolean(value: &str) -> Result<bool, String> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("{value:?} is not true or false")),
    }
}

/// Seconds, with an optional fraction (`auth_http_timeout 0.5`).
fn seconds(value: &str) -> Result<Duration, String> {
    let secs: f64 = number(value)?;
    if !(0.0..=86_400.0).contains(&secs) {
        return Err("out of range (0 to 86400 seconds)".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

fn ip_value(host: &str) -> Result<IpAddr, String> {
    if host == "localhost" {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    host.parse().map_err(|_| {
        format!(
            "{host:?} is not an IP address (host names other than localhost are not supported yet)"
        )
    })
}

/// `persistent_client_expiration`: a number followed by h, d, w, m or y.
fn expiration(value: &str) -> Result<Duration, String> {
    let unit = value.chars().last().ok_or("empty value")?;
    let count: u64 = number(&value[..value.len() - unit.len_utf8()])?;
    let secs = match unit {
        'h' => 3600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        'm' => 30 * 86_400,
        'y' => 365 * 86_400,
        _ => return Err(format!("{value:?}: expected a number and h, d, w, m or y")),
    };
    Ok(Duration::from_secs(count.saturating_mul(secs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_with(text: &str, dirs: &[(&str, &[(&str, &str)])]) -> Result<Parsed, ConfError> {
        let mut parsed = Parsed::new(Config::default());
        let mut read_dir = |dir: &Path| -> Result<Vec<(PathBuf, String)>, String> {
            dirs.iter()
                .find(|(name, _)| Path::new(name) == dir)
                .map(|(_, files)| {
                    files
                        .iter()
                        .map(|(file, text)| (PathBuf::from(file), text.to_string()))
                        .collect()
                })
                .ok_or_else(|| format!("cannot read directory {}", dir.display()))
        };
        parsed.apply(Path::new("test.conf"), text, &mut read_dir)?;
        Ok(parsed.finish())
    }

    fn parse(text: &str) -> Result<Parsed, ConfError> {
        parse_with(text, &[])
    }

    #[test]
    fn refused_lines_name_file_line_and_option() {
        let cases: &[(&str, usize, &str, &str)] = &[
            ("no_such_option 1", 1, "no_such_option", "unknown option"),
            (
                "\n# c\n\nmax_keepalive abc",
                4,
                "max_keepalive",
                "not a valid number",
            ),
            (
                "allow_anonymous yes",
                1,
                "allow_anonymous",
                "not true or false",
            ),
            ("listener", 1, "listener", "empty value"),
            (
                "listener 1883 nowhere.example",
                1,
                "listener",
                "not an IP address",
            ),
            (
                "listener 1883 127.0.0.1 extra",
                1,
                "listener",
                "PORT [BIND_ADDRESS]",
            ),
            (
                "bridge_protocol_version mqttv311",
                1,
                "bridge_protocol_version",
                "a `connection` line must come first",
            ),
            (
                "connection b\naddress 127.0.0.1\ntopic # sideways",
                3,
                "topic",
                "out, in or both",
            ),
            (
                "connection b\naddress 127.0.0.1\nconnection c",
                1,
                "connection",
                "bridge b: no topic",
            ),
            (
                "plugin /usr/lib/x.so",
                1,
                "plugin",
                "not supported yet: plugin",
            ),
            (
                "listener 1883\nmount_point a/",
                2,
                "mount_point",
                "not supported yet",
            ),
            ("protocol carrier-pigeon", 1, "protocol", "unknown protocol"),
            (
                "password_file a\npassword_file b",
                2,
                "password_file",
                "duplicate",
            ),
            ("password_file", 1, "password_file", "empty value"),
            ("max_packet_size 10", 1, "max_packet_size", "at least 20"),
            ("maximum_qos 3", 1, "maximum_qos", "0, 1 or 2"),
            ("log_dest syslog", 1, "log_dest", "not supported yet"),
            ("log_type chatty", 1, "log_type", "unknown log type"),
            (
                "auth_http_timeout 2",
                1,
                "auth_http_timeout",
                "auth_http_url must come first",
            ),
            (
                "auth_http_url https://x",
                1,
                "auth_http_url",
                "only http://",
            ),
            (
                "persistent_client_expiration 3q",
                1,
                "persistent_client_expiration",
                "expected",
            ),
            (
                "include_dir /nowhere",
                1,
                "include_dir",
                "cannot read directory",
            ),
        ];
        for &(text, line, option, message) in cases {
            let error = parse(text).expect_err(text);
            assert_eq!(
                (error.line, error.option.as_str()),
                (line, option),
                "{text:?}: {error}"
            );
            assert!(error.message.contains(message), "{text:?}: {error}");
            assert!(error
                .to_string()
                .starts_with(&format!("test.conf:{line}: {option}: ")));
        }
    }

    #[test]
    fn limits_map_onto_config() {
        let parsed = parse(
            "  # indented comment\n\
             max_inflight_messages 20\n\
             max_queued_messages 200\n\
             max_queued_bytes 100000\n\
             max_packet_size 4096\n\
             message_size_limit 1000\n\
             max_keepalive 60\n\
             max_topic_alias 5\n\
             sys_interval 0\n\
             allow_zero_length_clientid false\n\
             auto_id_prefix gen-\n\
             clientid_prefixes sensor-\n\
             set_tcp_nodelay true\n",
        )
        .unwrap();
        let c = &parsed.config;
        assert_eq!(c.max_inflight_messages, 20);
        assert_eq!(c.receive_maximum, 20);
        assert_eq!(c.max_queued_messages, 200);
        assert_eq!(c.max_queued_bytes, 100_000);
        assert_eq!(c.max_packet_size, 4096);
        assert_eq!(c.message_size_limit, 1000);
        assert_eq!(c.max_keep_alive, 60);
        assert_eq!(c.topic_alias_maximum, 5);
        assert_eq!(c.sys_interval, Duration::ZERO);
        assert!(!c.allow_zero_length_clientid);
        assert_eq!(c.auto_id_prefix, "gen-");
        assert_eq!(c.clientid_prefixes.as_deref(), Some("sensor-"));
        assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    }

    #[test]
    fn zero_means_no_limit_as_in_mosquitto() {
        let c = parse("max_inflight_messages 0\nmax_packet_size 0\nmax_keepalive 0")
            .unwrap()
            .config;
        assert_eq!(c.max_inflight_messages, 65_535);
        assert_eq!(c.receive_maximum, 65_535);
        assert_eq!(c.max_packet_size, 268_435_460);
        assert_eq!(c.max_keep_alive, u16::MAX);
    }

    #[test]
    fn listeners_take_the_options_after_them() {
        let parsed = parse(
            "allow_anonymous true\n\
             password_file /etc/pw\n\
             listener 1883\n\
             max_connections 10\n\
             listener 8883 127.0.0.1\n\
             certfile /c.pem\n\
             keyfile /k.pem\n\
             require_certificate true\n\
             tls_version tlsv1.3\n\
             listener 9001 ::1\n\
             protocol websockets\n\
             max_connections -1\n",
        )
        .unwrap();
        let l = &parsed.config.listeners;
        assert_eq!(l.len(), 3);
        assert_eq!(l[0].addr, "0.0.0.0:1883".parse().unwrap());
        assert_eq!(l[0].max_connections, Some(10));
        assert_eq!(l[0].tls, None);
        assert_eq!(l[1].addr, "127.0.0.1:8883".parse().unwrap());
        let tls = l[1].tls.as_ref().unwrap();
        assert_eq!(tls.certfile, PathBuf::from("/c.pem"));
        assert_eq!(tls.keyfile, PathBuf::from("/k.pem"));
        assert!(tls.require_certificate);
        assert_eq!(tls.tls_version.as_deref(), Some("tlsv1.3"));
        assert_eq!(l[2].addr, "[::1]:9001".parse().unwrap());
        assert_eq!(l[2].protocol, Protocol::WebSockets);
        assert_eq!(l[2].max_connections, None);
        // Without per_listener_settings the security options are global.
        let security = &parsed.config.security;
        assert_eq!(security.password_file, Some(PathBuf::from("/etc/pw")));
        assert_eq!(security.allow_anonymous, Some(true));
    }

    #[test]
    fn anonymous_default_follows_mosquitto_2() {
        // No listener: loopback only, anonymous allowed.
        let parsed = parse("max_keepalive 60").unwrap();
        assert_eq!(parsed.config.security.allow_anonymous, Some(true));
        assert!(parsed.config.listeners.is_empty());
        // A listener: anonymous refused unless allowed.
        let parsed = parse("listener 1883").unwrap();
        assert_eq!(parsed.config.security.allow_anonymous, Some(false));
        let parsed = parse("port 1884\nbind_address 127.0.0.1").unwrap();
        assert_eq!(parsed.config.security.allow_anonymous, Some(false));
        assert_eq!(
            parsed.config.listeners[0].addr,
            "127.0.0.1:1884".parse().unwrap()
        );
    }

    #[test]
    fn per_listener_settings_scope_security_to_the_listener() {
        let parsed = parse(
            "per_listener_settings true\n\
             listener 1883 127.0.0.1\n\
             allow_anonymous true\n\
             listener 1884 127.0.0.1\n\
             password_file /pw\n\
             acl_file /acl\n\
             auth_http_url http://127.0.0.1:8080/auth\n\
             auth_http_timeout 0.5\n\
             auth_http_cache_ttl 30\n\
             auth_http_on_error allow\n",
        )
        .unwrap();
        let l = &parsed.config.listeners;
        assert_eq!(l[0].security.allow_anonymous, Some(true));
        assert_eq!(l[0].security.password_file, None);
        assert_eq!(l[1].security.allow_anonymous, Some(false));
        assert_eq!(l[1].security.password_file, Some(PathBuf::from("/pw")));
        assert_eq!(l[1].security.acl_file, Some(PathBuf::from("/acl")));
        let http = l[1].security.http_auth.as_ref().unwrap();
        assert_eq!(http.url, "http://127.0.0.1:8080/auth");
        assert_eq!(http.timeout, Duration::from_millis(500));
        assert_eq!(http.cache_ttl, Duration::from_secs(30));
        assert!(http.allow_on_error);
    }

    #[test]
    fn include_dir_applies_files_in_place() {
        let parsed = parse_with(
            "listener 1883\ninclude_dir /conf.d\nmax_keepalive 30\n",
            &[(
                "/conf.d",
                &[
                    ("/conf.d/a.conf", "max_connections 5\nmax_keepalive 10"),
                    ("/conf.d/b.conf", "listener 1884"),
                ],
            )],
        )
        .unwrap();
        // a.conf's max_connections went to the listener open at the include.
        assert_eq!(parsed.config.listeners[0].max_connections, Some(5));
        assert_eq!(parsed.config.listeners.len(), 2);
        assert_eq!(parsed.config.max_keep_alive, 30);
        let error = parse_with(
            "include_dir /conf.d",
            &[("/conf.d", &[("/conf.d/bad.conf", "\nbogus 1")])],
        )
        .unwrap_err();
        assert_eq!(error.file, PathBuf::from("/conf.d/bad.conf"));
        assert_eq!(error.line, 2);
    }

    #[test]
    fn persistence_maps_onto_persistence_dir() {
        let c = parse("persistence true\npersistence_location /var/lib/m/")
            .unwrap()
            .config;
        assert_eq!(c.persistence_dir, Some(PathBuf::from("/var/lib/m/")));
        let c = parse("persistence true").unwrap().config;
        assert_eq!(c.persistence_dir, Some(PathBuf::from(".")));
        let c = parse("persistence_location /x").unwrap().config;
        assert_eq!(c.persistence_dir, None);
        let c = parse("persistent_client_expiration 2d").unwrap().config;
        assert_eq!(
            c.persistent_client_expiration,
            Some(Duration::from_secs(2 * 86_400))
        );
    }

    #[test]
    fn logging_options() {
        let parsed = parse("log_dest file /var/log/m.log\nlog_type error\nlog_type debug").unwrap();
        assert_eq!(
            parsed.config.log_dest,
            LogDest::File(PathBuf::from("/var/log/m.log"))
        );
        assert_eq!(parsed.log_types, ["error", "debug"]);
        assert_eq!(
            parse("log_dest stdout").unwrap().config.log_dest,
            LogDest::Stdout
        );
    }

    #[test]
    fn qos_retain_queue_and_expiration_options_set_the_config() {
        let parsed = parse(
            "maximum_qos 1\nretain_available false\nupgrade_outgoing_qos true\n\
             queue_qos0_messages true\npersistent_client_expiration 2d\nuser mosquitto",
        )
        .unwrap();
        let c = &parsed.config;
        assert_eq!(c.maximum_qos, QoS::AtLeastOnce);
        assert!(!c.retain_available);
        assert!(c.upgrade_outgoing_qos && c.queue_qos0_messages);
        assert_eq!(
            c.persistent_client_expiration,
            Some(Duration::from_secs(2 * 86_400))
        );
        // Only `user` (we never change user) is still a warning.
        assert_eq!(parsed.warnings.len(), 1, "{:?}", parsed.warnings);
        let defaults = parse("").unwrap().config;
        assert_eq!(defaults.maximum_qos, QoS::ExactlyOnce);
        assert!(defaults.retain_available && !defaults.upgrade_outgoing_qos);
        assert_eq!(defaults.persistent_client_expiration, None);
    }
}
