//! MQTT over QUIC with clients we did not write: an aioquic client driven by hand
//! (tests/it/quic_client.py: single stream, several bidirectional streams, a stalled stream, a
//! malformed packet on a data stream and on the control stream, a change of UDP port) and the
//! `mqttv5` command line client (mqttv5-cli, each of its stream strategies), each exchanging
//! messages with a TCP client on the same broker. `./build.sh test` installs both under
//! `.test-cache/`.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mqtt_broker::config::Protocol;
use mqtt_broker::mqtt::{ProtocolVersion, QoS};
use mqtt_broker::{Broker, Config, Stopper};

use crate::support::RawClient;
use crate::transports::{listener, Certs};

/// How long a test waits for one line from a client before failing.
const LINE_WAIT: Duration = Duration::from_secs(20);

/// A broker with a TCP listener and a QUIC listener, stopped on drop.
struct QuicBroker {
    tcp: SocketAddr,
    quic: SocketAddr,
    reloader: mqtt_broker::broker::Reloader,
    stopper: Stopper,
    thread: Option<JoinHandle<()>>,
    certs: Certs,
}

impl QuicBroker {
    fn start() -> QuicBroker {
        QuicBroker::start_with(Config::default())
    }

    fn start_with(config: Config) -> QuicBroker {
        let _ = env_logger::builder().is_test(true).try_init();
        let certs = Certs::new();
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind TCP");
        let mut broker = Broker::new(tcp, config).expect("start the broker");
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
        broker
            .add_quic_listener(udp, listener(Protocol::Quic, Some(certs.settings(false))))
            .expect("add the QUIC listener");
        let tcp = broker.local_addr().expect("TCP address");
        let quic = broker.quic_addrs().expect("QUIC address")[0];
        let stopper = broker.stopper();
        let reloader = broker.reloader();
        let thread = thread::spawn(move || broker.run());
        QuicBroker {
            tcp,
            quic,
            reloader,
            stopper,
            thread: Some(thread),
            certs,
        }
    }
}

impl Drop for QuicBroker {
    fn drop(&mut self) {
        self.stopper.stop();
        if let Some(thread) = self.thread.take() {
            let started = Instant::now();
            while !thread.is_finished() && started.elapsed() < Duration::from_secs(10) {
                thread::sleep(Duration::from_millis(10));
            }
            if !thread.is_finished() && !thread::panicking() {
                panic!("the broker did not stop within 10 seconds");
            }
        }
    }
}

/// The repository's test cache (`./build.sh test` fills it).
fn cache() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".test-cache")
}

/// A child process whose stdout lines arrive on a channel; killed on drop.
struct Lines {
    child: Child,
    lines: mpsc::Receiver<String>,
    name: String,
}

impl Lines {
    fn spawn(mut command: Command, name: &str) -> Lines {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("run {name} (./build.sh test installs it): {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            child,
            lines,
            name: name.into(),
        }
    }

    fn next(&self) -> String {
        match self.lines.recv_timeout(LINE_WAIT) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("{}: no output line within {LINE_WAIT:?}", self.name)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("{}: ended before the expected output", self.name)
            }
        }
    }

    /// Reads lines until one equals `line`; returns those before it.
    fn until(&self, line: &str) -> Vec<String> {
        let mut before = Vec::new();
        loop {
            let next = self.next();
            if next == line {
                return before;
            }
            before.push(next);
        }
    }

    /// Reads lines up to "DONE", checks that a "CLOSED" line came among them and returns them.
    fn until_closed(&self) -> Vec<String> {
        let lines = self.until("DONE");
        assert!(lines.iter().any(|l| l.starts_with("CLOSED")), "{lines:?}");
        lines
    }

    /// The next line is "DONE" and the process then succeeds.
    fn ends_done(self) {
        assert_eq!(self.next(), "DONE");
        assert!(self.success());
    }

    /// Waits for the process to end; true if it succeeded.
    fn success(mut self) -> bool {
        let deadline = Instant::now() + LINE_WAIT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The aioquic client running `scenario` against `port`.
fn aioquic(port: u16, scenario: &str, count: usize) -> Lines {
    let python = cache().join("python");
    assert!(
        python.join("aioquic").exists(),
        "aioquic is not installed in {}: run ./build.sh test",
        python.display()
    );
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/it/quic_client.py");
    let mut command = Command::new("python3");
    command
        .arg(script)
        .arg(port.to_string())
        .arg(scenario)
        .arg(count.to_string())
        .env("PYTHONPATH", python);
    Lines::spawn(command, &format!("aioquic {scenario}"))
}

fn publisher(broker: &QuicBroker, id: &str) -> RawClient {
    RawClient::connect(broker.tcp, id, ProtocolVersion::V3_1_1, true).0
}

/// A broker, a TCP client subscribed to quic/out, and the aioquic client running `scenario`
/// on its control stream alone, ready (subscribed) for messages.
fn control_stream_exchange(scenario: &str, count: usize) -> (QuicBroker, RawClient, Lines) {
    let broker = QuicBroker::start();
    let mut tcp = publisher(&broker, "tcp-peer");
    tcp.subscribe(1, &[("quic/out", QoS::AtLeastOnce)]);
    let client = aioquic(broker.quic.port(), scenario, count);
    assert_eq!(client.until("READY"), ["SUBACK control"]);
    (broker, tcp, client)
}

#[test]
fn single_stream_client_and_tcp_client_exchange_messages() {
    let (_broker, mut tcp, client) = control_stream_exchange("single", 3);
    for n in 0..3u16 {
        tcp.publish(
            "quic/in",
            format!("m{n}").as_bytes(),
            QoS::AtLeastOnce,
            false,
            10 + n,
        );
    }
    for n in 0..3 {
        assert_eq!(client.next(), format!("MSG control quic/in m{n}"));
    }
    assert_eq!(client.next(), "PUBACK control");
    let publish = tcp.recv_publish();
    assert_eq!(publish.topic, "quic/out");
    assert_eq!(&publish.payload[..], b"from-aioquic");
    client.ends_done();
}

#[test]
fn multi_stream_deliveries_and_acks_follow_their_stream() {
    let broker = QuicBroker::start();
    let mut tcp = publisher(&broker, "tcp-peer");
    tcp.subscribe(1, &[("multi/echo", QoS::AtLeastOnce)]);
    let client = aioquic(broker.quic.port(), "multi", 4);
    let mut before = client.until("READY");
    before.sort();
    // SUBACKs on the stream of their SUBSCRIBE; the PUBACK of a PUBLISH on data stream B on
    // B, that of a PUBLISH on a unidirectional stream on the control stream.
    assert_eq!(
        before,
        ["PUBACK B", "PUBACK control", "SUBACK A", "SUBACK B"]
    );
    let echoed: Vec<_> = (0..2)
        .map(|_| String::from_utf8(tcp.recv_publish().payload.to_vec()).unwrap())
        .collect();
    assert_eq!(echoed, ["on-b", "on-uni"]);
    tcp.publish("multi/a", b"a1", QoS::AtLeastOnce, false, 20);
    tcp.publish("multi/b", b"b1", QoS::AtLeastOnce, false, 21);
    tcp.publish("multi/a", b"a2", QoS::AtMostOnce, false, 0);
    tcp.publish("multi/b", b"b2", QoS::AtMostOnce, false, 0);
    let mut got: Vec<String> = (0..4).map(|_| client.next()).collect();
    got.sort();
    assert_eq!(
        got,
        [
            "MSG A multi/a a1",
            "MSG A multi/a a2",
            "MSG B multi/b b1",
            "MSG B multi/b b2"
        ]
    );
    client.ends_done();
}

#[test]
fn a_stalled_data_stream_does_not_block_the_others() {
    let broker = QuicBroker::start();
    let mut tcp = publisher(&broker, "tcp-peer");
    // The client never raises stream A's 32 KiB receive window: A stalls after a few messages.
    let client = aioquic(broker.quic.port(), "stall", 1_000);
    let mut before = client.until("READY");
    before.sort();
    assert_eq!(before, ["SUBACK A", "SUBACK B"]);
    let big = vec![b'x'; 8 * 1024];
    for _ in 0..24 {
        tcp.publish("multi/a", &big, QoS::AtMostOnce, false, 0);
    }
    for n in 0..5u16 {
        tcp.publish(
            "multi/b",
            format!("b{n}").as_bytes(),
            QoS::AtLeastOnce,
            false,
            30 + n,
        );
    }
    let mut on_a = 0;
    let mut on_b = Vec::new();
    while on_b.len() < 5 {
        let line = client.next();
        if line.starts_with("MSG A ") {
            on_a += 1;
        } else {
            on_b.push(line);
        }
    }
    assert_eq!(
        on_b,
        (0..5)
            .map(|n| format!("MSG B multi/b b{n}"))
            .collect::<Vec<_>>()
    );
    // 24 × 8 KiB were published to A: the 32 KiB window lets a few through at most.
    assert!(on_a < 8, "{on_a} messages came through the stalled stream");
}

#[test]
fn malformed_packet_resets_a_data_stream_and_closes_on_the_control_stream() {
    let broker = QuicBroker::start();
    let mut tcp = publisher(&broker, "tcp-peer");
    let client = aioquic(broker.quic.port(), "malformed", 1);
    let before = client.until("READY");
    assert_eq!(before, ["SUBACK B", "RESET A"]);
    // The connection and stream B go on after A's reset.
    tcp.publish("bad/b", b"still-here", QoS::AtLeastOnce, false, 40);
    assert_eq!(client.next(), "MSG B bad/b still-here");
    // Then garbage on the control stream: DISCONNECT (malformed) and the connection closes.
    client.until_closed();
    assert!(client.success());
}

#[test]
fn a_client_that_changes_its_udp_port_keeps_receiving() {
    let (_broker, mut tcp, client) = control_stream_exchange("migrate", 2);
    tcp.publish("quic/in", b"before", QoS::AtLeastOnce, false, 50);
    assert_eq!(client.next(), "MSG control quic/in before");
    let migrated = client.next();
    assert!(migrated.starts_with("MIGRATED "), "{migrated}");
    assert_eq!(client.next(), "READY");
    tcp.publish("quic/in", b"after1", QoS::AtLeastOnce, false, 51);
    tcp.publish("quic/in", b"after2", QoS::AtLeastOnce, false, 52);
    assert_eq!(client.next(), "MSG control quic/in after1");
    assert_eq!(client.next(), "MSG control quic/in after2");
    assert_eq!(client.next(), "PUBACK control");
    assert_eq!(
        &tcp.recv_publish().payload[..],
        b"from-aioquic",
        "the client's PUBLISH from its new port arrives"
    );
    client.ends_done();
}

/// The `mqttv5` binary of mqttv5-cli.
fn mqttv5() -> PathBuf {
    let bin = cache().join("cargo/bin/mqttv5");
    assert!(
        bin.exists(),
        "mqttv5-cli is not installed in {}: run ./build.sh test",
        bin.display()
    );
    bin
}

const STRATEGIES: [&str; 3] = ["control-only", "per-topic", "per-publish"];

/// `mqttv5 pub` and `mqttv5 sub` over QUIC with each stream strategy, exchanging messages
/// with a TCP client.
#[test]
fn mqttv5_cli_publishes_and_subscribes_over_quic_with_each_stream_strategy() {
    let broker = QuicBroker::start();
    let url = format!("quic://127.0.0.1:{}", broker.quic.port());
    let mut tcp = publisher(&broker, "tcp-peer");
    tcp.subscribe(1, &[("cli/back/#", QoS::AtLeastOnce)]);
    for (n, strategy) in STRATEGIES.into_iter().enumerate() {
        let n = u16::try_from(n).expect("three strategies");
        // A retained message is there when the subscriber arrives: no race with its SUBSCRIBE.
        let topic = format!("cli/{strategy}");
        let retained = format!("retained-{strategy}");
        tcp.publish(&topic, retained.as_bytes(), QoS::AtLeastOnce, true, 60 + n);
        let mut sub = Command::new(mqttv5());
        sub.args(["sub", "--url", &url, "--insecure", "--non-interactive"])
            .args([
                "--quic-stream-strategy",
                strategy,
                "-t",
                &topic,
                "-q",
                "1",
                "-n",
                "1",
            ]);
        let sub = Lines::spawn(sub, &format!("mqttv5 sub {strategy}"));
        let lines = sub.until(&retained);
        assert!(lines.len() < 10, "{lines:?}");
        assert!(sub.success(), "mqttv5 sub {strategy} failed");

        let message = format!("hello-{strategy}");
        let mut publish = Command::new(mqttv5());
        publish
            .args(["pub", "--url", &url, "--insecure", "--non-interactive"])
            .args(["--quic-stream-strategy", strategy])
            .args([
                "-t",
                &format!("cli/back/{strategy}"),
                "-m",
                &message,
                "-q",
                "1",
            ]);
        let publish = Lines::spawn(publish, &format!("mqttv5 pub {strategy}"));
        let received = tcp.recv_publish();
        assert_eq!(received.topic, format!("cli/back/{strategy}"));
        assert_eq!(&received.payload[..], message.as_bytes());
        assert!(publish.success(), "mqttv5 pub {strategy} failed");
    }
}

#[test]
fn a_quic_client_that_reads_nothing_is_held_by_flow_control_then_closed() {
    let config = crate::support::config_with(|c| c.write_timeout = Duration::from_secs(2));
    let broker = QuicBroker::start_with(config);
    let mut tcp = publisher(&broker, "tcp-flooder");
    // The client never raises its control stream's 32 KiB window.
    let client = aioquic(broker.quic.port(), "stall-control", 0);
    assert_eq!(client.until("READY"), ["SUBACK control"]);
    // 8 MiB for a client that takes 32 KiB: QUIC flow control stops the broker's sending, the
    // writer waits on its byte budget, and after the write timeout the broker closes it.
    let payload = vec![b'f'; 16 * 1024];
    for _ in 0..512 {
        tcp.publish("flood/x", &payload, QoS::AtMostOnce, false, 0);
    }
    let started = Instant::now();
    client.until_closed();
    assert!(started.elapsed() < Duration::from_secs(40));
    // The publisher was never held up for good: it is still served.
    tcp.ping();
    assert!(client.success());
}

#[test]
fn a_connection_that_opens_no_stream_is_closed_at_the_connect_deadline() {
    let config = crate::support::config_with(|c| c.connect_timeout = Duration::from_secs(1));
    let broker = QuicBroker::start_with(config);
    let started = Instant::now();
    let client = aioquic(broker.quic.port(), "no-stream", 0);
    client.until_closed();
    // Closed by the broker's deadline, not by an idle timeout (the broker's is minutes).
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(client.success());
}

/// With the Retry threshold at 0 every new client must prove its address first; aioquic
/// (which follows Retry) still connects, and the connection is served.
#[test]
fn retry_makes_a_client_prove_its_address_before_the_handshake() {
    use mqtt_broker::transport::quic::{start, QuicSettings, Spawner};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let certs = Certs::new();
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
    let port = socket.local_addr().expect("address").port();
    let mut settings = QuicSettings::new(
        &listener(Protocol::Quic, Some(certs.settings(false))),
        1 << 20,
        60,
    )
    .expect("QUIC settings");
    settings.retry_above = 0;
    settings.control_deadline = Duration::from_secs(1);
    let spawned = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&spawned);
    let spawn: Spawner = Arc::new(move |_transport, _peer| {
        counted.fetch_add(1, Ordering::Relaxed);
        Ok(())
    });
    let stopping = Arc::new(AtomicBool::new(false));
    let listener = start(socket, settings, spawn, Arc::clone(&stopping)).expect("start");
    let client = aioquic(port, "no-stream", 0);
    let lines = client.until_closed();
    assert!(lines.contains(&"RETRIED".to_string()), "{lines:?}");
    assert!(client.success());
    // It opened no stream: no client threads were asked for.
    assert_eq!(spawned.load(Ordering::Relaxed), 0);
    stopping.store(true, Ordering::Release);
    for thread in listener.threads {
        thread.join().expect("QUIC threads end");
    }
}

#[test]
fn the_certificate_is_reloaded_for_new_connections() {
    let config = crate::support::config_with(|c| c.connect_timeout = Duration::from_secs(1));
    let broker = QuicBroker::start_with(config);
    let serial = || {
        let client = aioquic(broker.quic.port(), "no-stream", 0);
        let lines = client.until("DONE");
        lines
            .iter()
            .find_map(|l| l.strip_prefix("SERIAL ").map(str::to_owned))
            .unwrap_or_else(|| panic!("no certificate seen: {lines:?}"))
    };
    // Certs::new signs the server certificate with serial 2.
    assert_eq!(serial(), "2");
    let other = crate::transports::Authority::new("renewed CA");
    broker.certs.write_pair(
        "server",
        other.sign("localhost", &["localhost", "127.0.0.1"], 77),
    );
    broker.reloader.reload().expect("the new files load");
    // The endpoint takes the new configuration within its 100 ms tick.
    thread::sleep(Duration::from_millis(300));
    assert_eq!(serial(), "77");
}
