//! A bridge's settings: one `connection` block of mosquitto.conf, read option by option.
//!
//! Owns: `BridgeConfig` and its defaults (mosquitto 2.0's), the value syntax of every bridge
//! option, and the checks a finished block must pass. Must not: open files or sockets; the
//! config-file parser hands each line in and adds the file and line to the errors.

use std::path::PathBuf;
use std::time::Duration;

use super::topics::BridgeTopic;
use crate::mqtt::ProtocolVersion;

/// How the bridge starts and restarts (`start_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartType {
    /// Connect at start, reconnect after `restart_timeout` whenever the link fails.
    Automatic,
    /// Connect once `threshold` messages wait in the local session; disconnect after
    /// `idle_timeout` without a message to send.
    Lazy,
    /// Connect at start; never reconnect.
    Once,
}

/// The wait before a reconnect (`restart_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartTimeout {
    /// `restart_timeout N`: always N seconds.
    Constant(Duration),
    /// `restart_timeout BASE CAP`: decorrelated jitter between BASE and CAP.
    Backoff { base: Duration, cap: Duration },
}

/// TLS towards the remote broker (`bridge_cafile` and the rest): on once a CA is given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BridgeTls {
    pub cafile: Option<PathBuf>,
    pub capath: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub insecure: bool,
    pub alpn: Option<String>,
}

/// One `connection NAME` block.
#[derive(Debug, Clone, PartialEq)]
pub struct BridgeConfig {
    pub name: String,
    /// Where the block starts (file and 1-based line), for errors found when it is complete.
    pub defined_at: (PathBuf, usize),
    /// `address` / `addresses`: host and port, in order.
    pub addresses: Vec<(String, u16)>,
    pub round_robin: bool,
    pub topics: Vec<BridgeTopic>,
    pub protocol: ProtocolVersion,
    pub try_private: bool,
    pub cleansession: bool,
    /// `local_cleansession`; `None` follows `cleansession`.
    pub local_cleansession: Option<bool>,
    /// `remote_clientid` (default `HOSTNAME.NAME`).
    pub remote_clientid: Option<String>,
    pub remote_username: Option<String>,
    pub remote_password: Option<String>,
    /// `local_clientid` (default `local.REMOTE_CLIENTID`).
    pub local_clientid: Option<String>,
    pub keepalive: Duration,
    pub restart_timeout: RestartTimeout,
    pub start_type: StartType,
    pub threshold: u32,
    pub idle_timeout: Duration,
    pub notifications: bool,
    /// `notification_topic` (default `$SYS/broker/connection/REMOTE_CLIENTID/state`).
    pub notification_topic: Option<String>,
    pub notifications_local_only: bool,
    pub outgoing_retain: bool,
    /// `bridge_max_packet_size` (0: none).
    pub max_packet_size: u32,
    pub tls: BridgeTls,
}

impl BridgeConfig {
    /// A block with mosquitto's defaults.
    pub fn new(name: &str, file: PathBuf, line: usize) -> BridgeConfig {
        BridgeConfig {
            name: name.to_string(),
            defined_at: (file, line),
            addresses: Vec::new(),
            round_robin: false,
            topics: Vec::new(),
            protocol: ProtocolVersion::V3_1_1,
            try_private: true,
            cleansession: false,
            local_cleansession: None,
            remote_clientid: None,
            remote_username: None,
            remote_password: None,
            local_clientid: None,
            keepalive: Duration::from_secs(60),
            restart_timeout: RestartTimeout::Backoff {
                base: Duration::from_secs(5),
                cap: Duration::from_secs(30),
            },
            start_type: StartType::Automatic,
            threshold: 10,
            idle_timeout: Duration::from_secs(60),
            notifications: true,
            notification_topic: None,
            notifications_local_only: false,
            outgoing_retain: true,
            max_packet_size: 0,
            tls: BridgeTls::default(),
        }
    }

    /// Whether `option` is one of a bridge block's (besides `connection`).
    pub fn is_bridge_option(option: &str) -> bool {
        BRIDGE_OPTIONS.contains(&option) || option.starts_with("bridge_")
    }

    /// Applies one line of the block; the error is the message (the caller adds where).
    pub fn apply(&mut self, option: &str, value: &str) -> Result<(), String> {
        match option {
            "address" | "addresses" => {
                for word in value.split_whitespace() {
                    self.addresses.push(address(word)?);
                }
                if self.addresses.is_empty() {
                    return Err("expected HOST[:PORT] ...".into());
                }
            }
            "round_robin" => self.round_robin = boolean(value)?,
            "topic" => self.topics.push(BridgeTopic::parse(value)?),
            "bridge_protocol_version" => {
                self.protocol = match value {
                    "mqttv311" => ProtocolVersion::V3_1_1,
                    "mqttv50" => ProtocolVersion::V5,
                    "mqttv31" => ProtocolVersion::V3_1,
                    _ => return Err(format!("{value:?} is not mqttv31, mqttv311 or mqttv50")),
                }
            }
            "try_private" => self.try_private = boolean(value)?,
            "cleansession" => self.cleansession = boolean(value)?,
            "local_cleansession" => self.local_cleansession = Some(boolean(value)?),
            "remote_clientid" | "clientid" => self.remote_clientid = Some(word(value)?),
            "remote_username" | "username" => self.remote_username = Some(word(value)?),
            "remote_password" | "password" => self.remote_password = Some(word(value)?),
            "local_clientid" => self.local_clientid = Some(word(value)?),
            "local_username" | "local_password" => {
                return Err(
                    "not supported yet: the bridge's local side is not authenticated".into(),
                )
            }
            "keepalive_interval" => {
                let secs = number(value)?;
                if secs < 5 {
                    return Err("at least 5 seconds".into());
                }
                self.keepalive = Duration::from_secs(secs);
            }
            "restart_timeout" => {
                let numbers: Vec<&str> = value.split_whitespace().collect();
                self.restart_timeout = match numbers[..] {
                    [constant] => RestartTimeout::Constant(seconds(constant)?),
                    [base, cap] => {
                        let (base, cap) = (seconds(base)?, seconds(cap)?);
                        if cap < base {
                            return Err("the cap is below the base".into());
                        }
                        RestartTimeout::Backoff { base, cap }
                    }
                    _ => return Err("expected CONSTANT or BASE CAP (seconds)".into()),
                };
            }
            "start_type" => {
                self.start_type = match value {
                    "automatic" => StartType::Automatic,
                    "lazy" => StartType::Lazy,
                    "once" => StartType::Once,
                    _ => return Err(format!("{value:?} is not automatic, lazy or once")),
                }
            }
            "threshold" => {
                self.threshold = u32::try_from(number(value)?).map_err(|_| "too large")?;
                if self.threshold == 0 {
                    return Err("at least 1".into());
                }
            }
            "idle_timeout" => self.idle_timeout = seconds(value)?,
            "notifications" => self.notifications = boolean(value)?,
            "notification_topic" => {
                let topic = word(value)?;
                crate::mqtt::topic::validate_topic_name(&topic)
                    .map_err(|e| format!("notification topic {topic:?}: {e}"))?;
                self.notification_topic = Some(topic);
            }
            "notifications_local_only" => self.notifications_local_only = boolean(value)?,
            "bridge_outgoing_retain" => self.outgoing_retain = boolean(value)?,
            "bridge_max_packet_size" => {
                self.max_packet_size = u32::try_from(number(value)?).map_err(|_| "too large")?
            }
            "bridge_cafile" => self.tls.cafile = Some(PathBuf::from(word(value)?)),
            "bridge_capath" => self.tls.capath = Some(PathBuf::from(word(value)?)),
            "bridge_certfile" => self.tls.certfile = Some(PathBuf::from(word(value)?)),
            "bridge_keyfile" => self.tls.keyfile = Some(PathBuf::from(word(value)?)),
            "bridge_insecure" => self.tls.insecure = boolean(value)?,
            "bridge_alpn" => self.tls.alpn = Some(word(value)?),
            "bridge_attempt_unsubscribe" => {
                boolean(value)?;
            }
            _ => return Err(format!("not supported yet: {option}")),
        }
        Ok(())
    }

    /// Checks a complete block: an address and a topic, credentials that make sense, nothing
    /// this build cannot do.
    pub fn check(&self) -> Result<(), String> {
        if self.addresses.is_empty() {
            return Err("no address".into());
        }
        if self.topics.is_empty() {
            return Err("no topic".into());
        }
        if self.remote_password.is_some() && self.remote_username.is_none() {
            return Err("remote_password needs remote_username".into());
        }
        let tls = &self.tls;
        if tls.cafile.is_none() && tls.capath.is_none() && *tls != BridgeTls::default() {
            return Err("TLS needs bridge_cafile or bridge_capath".into());
        }
        if tls.certfile.is_some() != tls.keyfile.is_some() {
            return Err("bridge_certfile and bridge_keyfile go together".into());
        }
        if self.remote_clientid() == self.local_clientid() {
            return Err("local_clientid and remote_clientid must differ".into());
        }
        Ok(())
    }

    /// The client id on the remote broker: `remote_clientid`, or `HOSTNAME.NAME` as mosquitto.
    pub fn remote_clientid(&self) -> String {
        match &self.remote_clientid {
            Some(id) => id.clone(),
            None => format!("{}.{}", hostname(), self.name),
        }
    }

    /// The client id of the bridge's session in our own router.
    pub fn local_clientid(&self) -> String {
        match &self.local_clientid {
            Some(id) => id.clone(),
            None => format!("local.{}", self.remote_clientid()),
        }
    }

    /// Where the link's state (1 up, 0 down) is published.
    pub fn notification_topic(&self) -> String {
        match &self.notification_topic {
            Some(topic) => topic.clone(),
            None => format!("$SYS/broker/connection/{}/state", self.remote_clientid()),
        }
    }

    pub fn local_clean_start(&self) -> bool {
        self.local_cleansession.unwrap_or(self.cleansession)
    }
}

/// Options of a `connection` block other than the `bridge_*` ones.
const BRIDGE_OPTIONS: &[&str] = &[
    "address",
    "addresses",
    "round_robin",
    "topic",
    "try_private",
    "cleansession",
    "local_cleansession",
    "remote_clientid",
    "clientid",
    "remote_username",
    "username",
    "remote_password",
    "password",
    "local_clientid",
    "local_username",
    "local_password",
    "keepalive_interval",
    "restart_timeout",
    "start_type",
    "threshold",
    "idle_timeout",
    "notifications",
    "notification_topic",
    "notifications_local_only",
];

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// `HOST[:PORT]`; the port defaults to 1883. An IPv6 address needs `[...]:PORT`.
fn address(word: &str) -> Result<(String, u16), String> {
    if let Some(rest) = word.strip_prefix('[') {
        let (host, port) = rest
            .split_once("]:")
            .ok_or_else(|| format!("{word:?}: an IPv6 address needs [ADDRESS]:PORT"))?;
        return Ok((host.to_string(), port_number(port)?));
    }
    match word.split_once(':') {
        Some((host, port)) if !host.is_empty() && !port.contains(':') => {
            Ok((host.to_string(), port_number(port)?))
        }
        Some(_) => Err(format!("{word:?}: an IPv6 address needs [ADDRESS]:PORT")),
        None => Ok((word.to_string(), 1883)),
    }
}

fn port_number(port: &str) -> Result<u16, String> {
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{port:?} is not a port")),
        Ok(port) => Ok(port),
    }
}

fn boolean(value: &str) -> Result<bool, String> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("{value:?} is not true or false")),
    }
}

fn number(value: &str) -> Result<u64, String> {
    value
        .parse()
        .map_err(|_| format!("{value:?} is not a whole number"))
}

fn seconds(value: &str) -> Result<Duration, String> {
    Ok(Duration::from_secs(number(value)?))
}

/// A single-word value (a `connection` name, a client id).
pub fn word_value(value: &str) -> Result<String, String> {
    word(value)
}

fn word(value: &str) -> Result<String, String> {
    match value.split_whitespace().collect::<Vec<_>>()[..] {
        [one] => Ok(one.to_string()),
        [] => Err("empty value".into()),
        _ => Err("one value expected".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::topics::Direction;
    use crate::mqtt::QoS;

    fn block(lines: &str) -> Result<BridgeConfig, String> {
        let mut bridge = BridgeConfig::new("b", PathBuf::from("t.conf"), 1);
        for line in lines.lines() {
            let (option, value) = line.split_once(' ').unwrap_or((line, ""));
            bridge.apply(option, value.trim())?;
        }
        bridge.check().map(|()| bridge)
    }

    #[test]
    fn defaults_are_mosquittos() {
        let b = block("address 10.0.0.1\ntopic #").expect("valid");
        assert_eq!(b.addresses, vec![("10.0.0.1".to_string(), 1883)]);
        assert_eq!(b.protocol, ProtocolVersion::V3_1_1);
        assert!(b.try_private && b.notifications && b.outgoing_retain);
        assert!(!b.cleansession && !b.local_clean_start() && !b.round_robin);
        assert_eq!(b.keepalive, Duration::from_secs(60));
        assert_eq!(b.start_type, StartType::Automatic);
        assert_eq!(
            b.restart_timeout,
            RestartTimeout::Backoff {
                base: Duration::from_secs(5),
                cap: Duration::from_secs(30)
            }
        );
        assert!(b.remote_clientid().ends_with(".b"));
        assert_eq!(b.local_clientid(), format!("local.{}", b.remote_clientid()));
        assert_eq!(
            b.notification_topic(),
            format!("$SYS/broker/connection/{}/state", b.remote_clientid())
        );
    }

    #[test]
    fn every_option_is_read() {
        let b = block(
            "addresses h1:1884 [::1]:1885 h3\nround_robin true\ntopic a/# both 2 L/ R/\n\
             bridge_protocol_version mqttv50\ncleansession true\nlocal_cleansession false\n\
             remote_clientid r\nremote_username u\nremote_password p\nlocal_clientid l\n\
             keepalive_interval 5\nrestart_timeout 7\nstart_type once\nthreshold 3\n\
             idle_timeout 9\ntry_private false\nnotifications false\n\
             notification_topic n/state\nnotifications_local_only true\n\
             bridge_outgoing_retain false\nbridge_max_packet_size 1000",
        )
        .expect("valid");
        assert_eq!(
            b.addresses,
            vec![
                ("h1".to_string(), 1884),
                ("::1".to_string(), 1885),
                ("h3".to_string(), 1883)
            ]
        );
        assert!(b.round_robin && b.cleansession && !b.local_clean_start());
        assert_eq!(b.topics.len(), 1);
        assert_eq!(b.topics[0].direction, Direction::Both);
        assert_eq!(b.topics[0].qos, QoS::ExactlyOnce);
        assert_eq!(b.protocol, ProtocolVersion::V5);
        assert_eq!(
            (b.remote_clientid(), b.local_clientid()),
            ("r".into(), "l".into())
        );
        assert_eq!(b.remote_username.as_deref(), Some("u"));
        assert_eq!(b.remote_password.as_deref(), Some("p"));
        assert_eq!(b.keepalive, Duration::from_secs(5));
        assert_eq!(
            b.restart_timeout,
            RestartTimeout::Constant(Duration::from_secs(7))
        );
        assert_eq!(b.start_type, StartType::Once);
        assert_eq!((b.threshold, b.idle_timeout), (3, Duration::from_secs(9)));
        assert!(!b.try_private && !b.notifications && b.notifications_local_only);
        assert_eq!(b.notification_topic(), "n/state");
        assert!(!b.outgoing_retain);
        assert_eq!(b.max_packet_size, 1000);
    }

    #[test]
    fn bad_blocks_are_refused_with_a_reason() {
        let cases = [
            ("topic #", "no address"),
            ("address h", "no topic"),
            ("address h:0\ntopic #", "not a port"),
            ("address ::1\ntopic #", "IPv6"),
            ("address h\ntopic #\nkeepalive_interval 4", "at least 5"),
            ("address h\ntopic #\nrestart_timeout 10 5", "below the base"),
            ("address h\ntopic #\nrestart_timeout 1 2 3", "BASE CAP"),
            (
                "address h\ntopic #\nstart_type manual",
                "automatic, lazy or once",
            ),
            ("address h\ntopic #\nbridge_protocol_version 5", "mqttv50"),
            (
                "address h\ntopic #\nremote_password p",
                "needs remote_username",
            ),
            (
                "address h\ntopic #\nbridge_insecure true",
                "needs bridge_cafile",
            ),
            (
                "address h\ntopic #\nbridge_cafile c\nbridge_keyfile k",
                "go together",
            ),
            ("address h\ntopic #\nnotification_topic a/#", "notification"),
            ("address h\ntopic # sideways", "out, in or both"),
            (
                "address h\ntopic #\nremote_clientid x\nlocal_clientid x",
                "must differ",
            ),
        ];
        for (lines, want) in cases {
            let got = block(lines).expect_err(lines);
            assert!(got.contains(want), "{lines:?}: {got:?} lacks {want:?}");
        }
    }
}
