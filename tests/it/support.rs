//! Shared helpers: start and stop a broker, and a raw MQTT client that speaks packets through
//! the crate's own codec (with byte-level escapes for malformed input).

use std::io::{BufReader, ErrorKind, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mqtt_broker::broker::Reloader;
use mqtt_broker::config::Listener;
use mqtt_broker::mqtt::{
    read_packet, ConnAck, Connect, ConnectProperties, DecodeError, Packet, PacketId,
    ProtocolVersion, Publish, PublishProperties, QoS, ReasonCode, SubAck, Subscribe,
    SubscribeProperties, SubscriptionOptions, Will, WillProperties,
};
use mqtt_broker::{Broker, Config, Stopper};

/// How long a test waits for something it expects before failing.
pub const WAIT: Duration = Duration::from_secs(5);

/// A broker running on its own thread; stopped (and checked to stop) on drop.
pub struct TestBroker {
    pub addr: SocketAddr,
    stopper: Stopper,
    thread: Option<JoinHandle<()>>,
}

pub fn start_broker() -> TestBroker {
    start_broker_with(Config::default())
}

pub fn start_broker_with(config: Config) -> TestBroker {
    start_broker_with_listeners(config, Vec::new()).0
}

/// A broker with more listeners (`Broker::add_listener`, each on an ephemeral port), their
/// addresses in order, and the broker's TLS reloader.
pub fn start_broker_with_listeners(
    config: Config,
    listeners: Vec<Listener>,
) -> (TestBroker, Vec<SocketAddr>, Reloader) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    start_broker_on_with_listeners(listener, config, listeners)
}

/// A broker on a socket the test bound (to restart one on the same port).
pub fn start_broker_on(listener: TcpListener, config: Config) -> TestBroker {
    start_broker_on_with_listeners(listener, config, Vec::new()).0
}

fn start_broker_on_with_listeners(
    listener: TcpListener,
    config: Config,
    listeners: Vec<Listener>,
) -> (TestBroker, Vec<SocketAddr>, Reloader) {
    let _ = env_logger::builder().is_test(true).try_init();
    let mut broker = Broker::new(listener, config).expect("start the broker");
    let mut addrs = Vec::new();
    for settings in listeners {
        let socket = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        addrs.push(socket.local_addr().expect("local address"));
        broker
            .add_listener(socket, settings)
            .expect("add a listener");
    }
    let reloader = broker.reloader();
    let addr = broker.local_addr().expect("local address");
    let stopper = broker.stopper();
    let thread = thread::Builder::new()
        .name("test-acceptor".into())
        .spawn(move || broker.run())
        .expect("spawn the acceptor");
    let broker = TestBroker {
        addr,
        stopper,
        thread: Some(thread),
    };
    (broker, addrs, reloader)
}

/// A broker that also serves Prometheus `/metrics`; returns the metrics address too.
pub fn start_broker_with_metrics(config: Config) -> (TestBroker, SocketAddr) {
    // A `protocol metrics` listener, as the config file makes one.
    let mut metrics = Listener::mqtt(SocketAddr::from(([127, 0, 0, 1], 0)));
    metrics.protocol = mqtt_broker::config::Protocol::Metrics;
    let (broker, addrs, _) = start_broker_with_listeners(config, vec![metrics]);
    (broker, addrs[0])
}

impl TestBroker {
    /// Stops the broker and returns how long `run` took to return; fails after 5 seconds.
    pub fn stop(mut self) -> Duration {
        self.stop_inner()
            .expect("the broker stops within 5 seconds")
    }

    fn stop_inner(&mut self) -> Option<Duration> {
        let thread = self.thread.take()?;
        let started = Instant::now();
        self.stopper.stop();
        while !thread.is_finished() {
            if started.elapsed() > WAIT {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
        thread.join().expect("the acceptor thread did not panic");
        Some(started.elapsed())
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if self.thread.is_some() && self.stop_inner().is_none() && !thread::panicking() {
            panic!("the broker did not stop within 5 seconds");
        }
    }
}

/// A client that sends and receives whole packets.
pub struct RawClient {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    pub version: ProtocolVersion,
    body: Vec<u8>,
}

impl RawClient {
    pub fn tcp(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).expect("connect to the broker");
        stream.set_nodelay(true).expect("nodelay");
        stream.set_read_timeout(Some(WAIT)).expect("read timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone the socket"));
        RawClient {
            stream,
            reader,
            version: ProtocolVersion::V3_1_1,
            body: Vec::new(),
        }
    }

    /// Connects with `client_id` and returns the client and its CONNACK.
    pub fn connect(
        addr: SocketAddr,
        client_id: &str,
        version: ProtocolVersion,
        clean: bool,
    ) -> (RawClient, ConnAck) {
        Self::connect_with(addr, connect_packet(client_id, version, clean))
    }

    pub fn connect_with(addr: SocketAddr, connect: Connect) -> (RawClient, ConnAck) {
        let mut client = RawClient::tcp(addr);
        client.version = connect.protocol;
        client.send(&Packet::Connect(Box::new(connect)));
        match client.recv() {
            Packet::ConnAck(connack) => (client, connack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub fn send(&mut self, packet: &Packet) {
        let mut bytes = Vec::new();
        packet.encode(self.version, &mut bytes);
        self.send_raw(&bytes);
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the broker");
    }

    /// The next packet; fails the test after `WAIT`.
    pub fn recv(&mut self) -> Packet {
        match self.try_recv(WAIT) {
            Ok(packet) => packet,
            Err(e) => panic!("expected a packet within {WAIT:?}: {e}"),
        }
    }

    pub fn try_recv(&mut self, timeout: Duration) -> Result<Packet, DecodeError> {
        self.stream
            .set_read_timeout(Some(timeout))
            .expect("read timeout");
        read_packet(&mut self.reader, self.version, 1 << 28, &mut self.body)
    }

    /// The next packet, which must be a PUBLISH.
    pub fn recv_publish(&mut self) -> Publish {
        match self.recv() {
            Packet::Publish(publish) => publish,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Asserts nothing arrives for `quiet`.
    pub fn expect_nothing(&mut self, quiet: Duration) {
        match self.try_recv(quiet) {
            Err(DecodeError::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            other => panic!("expected silence, got {other:?}"),
        }
    }

    /// Reads until the broker closes the connection (within `WAIT`), returning the packets it
    /// sent first (a v5 DISCONNECT, say).
    pub fn expect_closed(&mut self) -> Vec<Packet> {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "connection still open after {WAIT:?}");
            match self.try_recv(left) {
                Ok(packet) => seen.push(packet),
                Err(DecodeError::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    panic!("connection still open after {WAIT:?} (saw {seen:?})")
                }
                Err(_) => return seen,
            }
        }
    }

    /// The socket itself, for byte-level reads.
    pub fn stream_for_tests(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Drops the TCP connection without DISCONNECT.
    pub fn drop_connection(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    pub fn disconnect(mut self) {
        self.send(&Packet::Disconnect(Default::default()));
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Subscribes and returns the SUBACK's reason codes.
    pub fn subscribe(&mut self, packet_id: u16, filters: &[(&str, QoS)]) -> Vec<ReasonCode> {
        let filters = filters
            .iter()
            .map(|(filter, qos)| {
                let options = SubscriptionOptions {
                    qos: *qos,
                    ..Default::default()
                };
                (filter.to_string(), options)
            })
            .collect();
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: pid(packet_id),
            filters,
            properties: SubscribeProperties::default(),
        }));
        match self.recv() {
            Packet::SubAck(SubAck {
                packet_id: got,
                reasons,
                ..
            }) => {
                assert_eq!(got, pid(packet_id), "SUBACK packet id");
                reasons
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Publishes and completes the QoS 1 or 2 handshake from the publisher's side.
    pub fn publish(&mut self, topic: &str, payload: &[u8], qos: QoS, retain: bool, id: u16) {
        self.send(&publish_packet(topic, payload, qos, retain, id));
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => match self.recv() {
                Packet::PubAck(ack) => assert_eq!(ack.packet_id, pid(id)),
                other => panic!("expected PUBACK, got {other:?}"),
            },
            QoS::ExactlyOnce => {
                match self.recv() {
                    Packet::PubRec(ack) => assert_eq!(ack.packet_id, pid(id)),
                    other => panic!("expected PUBREC, got {other:?}"),
                }
                self.send(&Packet::PubRel(mqtt_broker::mqtt::Ack::new(pid(id))));
                match self.recv() {
                    Packet::PubComp(ack) => assert_eq!(ack.packet_id, pid(id)),
                    other => panic!("expected PUBCOMP, got {other:?}"),
                }
            }
        }
    }

    /// Sends PINGREQ and waits for PINGRESP, proving every earlier packet was handled.
    pub fn ping(&mut self) {
        self.send(&Packet::PingReq);
        match self.recv() {
            Packet::PingResp => {}
            other => panic!("expected PINGRESP, got {other:?}"),
        }
    }
}

pub fn pid(n: u16) -> PacketId {
    PacketId::new(n).expect("test packet ids are non-zero")
}

pub fn connect_packet(client_id: &str, version: ProtocolVersion, clean: bool) -> Connect {
    Connect {
        protocol: version,
        clean_start: clean,
        keep_alive: 60,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        properties: ConnectProperties::default(),
        bridge: false,
    }
}

pub fn will(topic: &str, payload: &[u8], qos: QoS, retain: bool) -> Option<Will> {
    Some(Will {
        topic: topic.into(),
        payload: Arc::from(payload),
        qos,
        retain,
        properties: WillProperties::default(),
    })
}

pub fn publish_packet(topic: &str, payload: &[u8], qos: QoS, retain: bool, id: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: topic.into(),
        packet_id: (qos != QoS::AtMostOnce).then(|| pid(id)),
        properties: PublishProperties::default(),
        payload: Arc::from(payload),
    })
}

/// A broker configuration with smaller limits for tests of the limits.
pub fn config_with(adjust: impl FnOnce(&mut Config)) -> Config {
    let mut config = Config::default();
    adjust(&mut config);
    config
}
