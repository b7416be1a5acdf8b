//! The command line of `mqtt-bench`.
//!
//! Owns: the options, their defaults, `--quick`, and the usage text. Must not: run anything,
//! or accept a broker address outside the loopback range (this tool floods what it points at,
//! so it only ever points at this machine).

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

pub const USAGE: &str = "\
mqtt-bench: load generator for MQTT brokers, checking every delivery

usage: mqtt-bench [options] [SCENARIO...]

SCENARIO is a name, a group (one2one, fanin, fanout, mesh, latency, qos1, connections,
churn) or all (the default); --list shows the names.

options:
  --addr HOST:PORT   broker address, loopback only       (127.0.0.1:1883)
  --quic             connect over QUIC (UDP port of --addr, ALPN mqtt, one
                     stream per connection; the certificate is not checked)
  --pid PID          the broker's process: its RSS and threads are sampled from /proc
  --duration SECS    publishing time of each flood or rate scenario, and of churn  (5)
  --messages N       messages of qos1-1m                             (1000000)
  --clients N        idle clients of connections, capped by the fd limit  (10000);
                     churn holds at most 1000
  --rate N           messages per second of the latency scenarios      (20000)
  --window N         unacknowledged QoS 1/2 messages per publisher       (100)
  --payload BYTES    payload size, at least 24                             (64)
  --backlog N        publishers pause while more than N messages are owed to
                     subscribers; 0 never pauses                       (50000)
  --stall SECS       no progress for this long ends a run as stalled       (5)
  --timeout SECS     hard limit of one scenario   (duration + 60, or 300 for counts)
  --quick            short runs for a smoke test: 1 s, 100000 messages, 500 clients
  --tls-ca FILE      speak TLS (rustls), trusting the CA in FILE (PEM); the broker's
                     certificate must name localhost. Not for the connections scenario
  --label NAME       broker name written into each result line
  --persistent       connect every client with clean session 0 (a persistent session)
  --json             one JSON object per result line
  --kv               one key=value line per result (for scripts)
  --list             list the scenarios selected (all by default) and exit
  -h, --help         this text

Exit status: 0 when every check passed, 1 when a check failed or a run stalled or failed,
2 on a usage error.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    Kv,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub addr: SocketAddr,
    pub pid: Option<u32>,
    /// Connect over QUIC instead of TCP.
    pub quic: bool,
    pub duration: Duration,
    pub messages: u64,
    pub clients: usize,
    pub rate: u64,
    pub window: usize,
    /// Messages owed to subscribers beyond which publishers pause; 0 for no limit.
    pub backlog: u64,
    pub payload: usize,
    pub stall: Duration,
    /// `None`: derived from the scenario.
    pub timeout: Option<Duration>,
    pub label: String,
    /// `--tls-ca`: speak TLS, trusting this CA file.
    pub tls_ca: Option<String>,
    /// Clients connect with clean session 0, so their sessions are kept (and stored).
    pub persistent: bool,
    pub format: Format,
    pub list: bool,
    pub help: bool,
    pub scenarios: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            addr: SocketAddr::from(([127, 0, 0, 1], 1883)),
            pid: None,
            quic: false,
            duration: Duration::from_secs(5),
            messages: 1_000_000,
            clients: 10_000,
            rate: 20_000,
            window: 100,
            backlog: 50_000,
            payload: 64,
            stall: Duration::from_secs(5),
            timeout: None,
            label: String::new(),
            tls_ca: None,
            persistent: false,
            format: Format::Text,
            list: false,
            help: false,
            scenarios: Vec::new(),
        }
    }
}

impl Options {
    /// Parses the arguments after the program name. `--quick` sets its values first, so any
    /// explicit option overrides them wherever it stands.
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Options, String> {
        let args: Vec<String> = args.into_iter().collect();
        let mut options = Options::default();
        if args.iter().any(|a| a == "--quick") {
            options.duration = Duration::from_secs(1);
            options.messages = 100_000;
            options.clients = 500;
        }
        let mut rest = args.into_iter();
        while let Some(arg) = rest.next() {
            let mut value = |name: &str| rest.next().ok_or_else(|| format!("{name} needs a value"));
            match arg.as_str() {
                "--quick" => {}
                "--quic" => options.quic = true,
                "--addr" => options.addr = loopback(&value("--addr")?)?,
                "--pid" => options.pid = Some(number(&value("--pid")?, "--pid")?),
                "--duration" => options.duration = seconds(&value("--duration")?, "--duration")?,
                "--messages" => options.messages = number(&value("--messages")?, "--messages")?,
                "--clients" => options.clients = number(&value("--clients")?, "--clients")?,
                "--rate" => options.rate = number(&value("--rate")?, "--rate")?,
                "--window" => options.window = number(&value("--window")?, "--window")?,
                "--backlog" => options.backlog = number(&value("--backlog")?, "--backlog")?,
                "--payload" => options.payload = number(&value("--payload")?, "--payload")?,
                "--stall" => options.stall = seconds(&value("--stall")?, "--stall")?,
                "--timeout" => options.timeout = Some(seconds(&value("--timeout")?, "--timeout")?),
                "--label" => options.label = value("--label")?,
                "--tls-ca" => options.tls_ca = Some(value("--tls-ca")?),
                "--persistent" => options.persistent = true,
                "--json" => options.format = Format::Json,
                "--kv" => options.format = Format::Kv,
                "--list" => options.list = true,
                "-h" | "--help" => options.help = true,
                flag if flag.starts_with('-') => return Err(format!("unknown option {flag}")),
                name => options.scenarios.push(name.to_owned()),
            }
        }
        if !(1..=65_535).contains(&options.window) {
            return Err("--window must be between 1 and 65535".into());
        }
        if options.messages > 1_000_000_000 {
            return Err("--messages must be at most 1000000000".into());
        }
        if options.messages == 0 || options.rate == 0 || options.clients == 0 {
            return Err("--messages, --rate and --clients must be positive".into());
        }
        if options.duration.is_zero() || options.stall.is_zero() {
            return Err("--duration and --stall must be positive".into());
        }
        if options.scenarios.is_empty() {
            options.scenarios.push("all".into());
        }
        Ok(options)
    }
}

fn number<T: std::str::FromStr>(text: &str, name: &str) -> Result<T, String> {
    text.trim()
        .replace('_', "")
        .parse()
        .map_err(|_| format!("{name}: {text:?} is not a valid number"))
}

fn seconds(text: &str, name: &str) -> Result<Duration, String> {
    let secs: f64 = number(text, name)?;
    if !(0.0..=86_400.0).contains(&secs) {
        return Err(format!("{name}: {text} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Resolves an address and insists on loopback.
fn loopback(text: &str) -> Result<SocketAddr, String> {
    let addr = text
        .to_socket_addrs()
        .map_err(|e| format!("--addr {text}: {e}"))?
        .next()
        .ok_or_else(|| format!("--addr {text}: no address"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "--addr {text}: only loopback addresses are allowed"
        ));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, String> {
        Options::parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn defaults_quick_and_overrides() {
        let o = parse(&[]).unwrap();
        assert_eq!(o.scenarios, ["all"]);
        assert_eq!(o.messages, 1_000_000);
        let o = parse(&["--messages", "5", "--quick", "fanout"]).unwrap();
        assert_eq!(o.messages, 5, "explicit beats --quick");
        assert_eq!(o.duration, Duration::from_secs(1));
        assert_eq!(o.scenarios, ["fanout"]);
        let o = parse(&["--addr", "127.0.0.1:2000", "--kv", "--duration", "0.5"]).unwrap();
        assert_eq!(o.addr.port(), 2000);
        assert_eq!(o.format, Format::Kv);
        assert_eq!(o.duration, Duration::from_millis(500));
    }

    #[test]
    fn refusals() {
        assert!(parse(&["--addr", "10.0.0.1:1883"]).is_err());
        assert!(parse(&["--window", "0"]).is_err());
        assert!(parse(&["--rate"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
        assert!(parse(&["--duration", "-1"]).is_err());
    }
}
