//! Several listeners in one broker (`Broker::add_listener`), each with its own settings:
//! `per_listener_settings` security, `max_connections`; and the client identifier options
//! (`allow_zero_length_clientid`, `auto_id_prefix`, `clientid_prefixes`) and
//! `message_size_limit`.

use std::net::{SocketAddr, TcpListener};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mqtt_broker::config::{Listener, Security};
use mqtt_broker::mqtt::{Packet, ProtocolVersion, QoS, ReasonCode};
use mqtt_broker::{Broker, Config, Stopper};

use crate::auth_support::TempDir;
use crate::support::{
    config_with, connect_packet, publish_packet, start_broker_with, RawClient, WAIT,
};

struct Running {
    addrs: Vec<SocketAddr>,
    stopper: Stopper,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stopper.stop();
        let thread = self.thread.take().unwrap();
        let started = Instant::now();
        while !thread.is_finished() {
            assert!(started.elapsed() < WAIT, "broker stops");
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Starts a broker with one listener per entry of `config.listeners`.
fn start(config: Config) -> Running {
    let settings = config.listeners.clone();
    let bind = || TcpListener::bind("127.0.0.1:0").unwrap();
    let mut broker = Broker::new(bind(), config).unwrap();
    for listener in settings.into_iter().skip(1) {
        broker.add_listener(bind(), listener).unwrap();
    }
    let addrs = broker.local_addrs().unwrap();
    let stopper = broker.stopper();
    let thread = Some(thread::spawn(move || broker.run()));
    Running {
        addrs,
        stopper,
        thread,
    }
}

fn any_addr() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[test]
fn per_listener_settings_give_each_listener_its_security() {
    let dir = TempDir::new("per-listener");
    let pw = dir.file(
        "pw",
        "alice:$7$101$5GfQ4BMbOEYbhwX3$dvEllCpB5AIMkOVJIdICRJmawt4xWnpogebIB4/kLiV4RdwaOIvHBBPQpXEOhY1ktx45dziVEmqZPYIov5w12Q==\n",
    );
    let mut open = Listener::mqtt(any_addr());
    open.security.allow_anonymous = Some(true);
    let mut closed = Listener::mqtt(any_addr());
    closed.security = Security {
        allow_anonymous: Some(false),
        password_file: Some(pw),
        ..Default::default()
    };
    let broker = start(config_with(|c| {
        c.per_listener_settings = true;
        c.listeners = vec![open, closed];
    }));
    let anon = |addr| {
        RawClient::connect_with(addr, connect_packet("anon", ProtocolVersion::V5, true))
            .1
            .reason
    };
    assert_eq!(anon(broker.addrs[0]), ReasonCode::Success);
    assert_eq!(anon(broker.addrs[1]), ReasonCode::NotAuthorized);
    let mut connect = connect_packet("alice", ProtocolVersion::V5, true);
    connect.username = Some("alice".into());
    connect.password = Some(b"secret".to_vec());
    let (mut alice, ack) = RawClient::connect_with(broker.addrs[1], connect);
    assert_eq!(ack.reason, ReasonCode::Success);
    // One router behind both: messages cross listeners.
    let (mut other, _) = RawClient::connect_with(
        broker.addrs[0],
        connect_packet("x", ProtocolVersion::V5, true),
    );
    other.subscribe(1, &[("cross/#", QoS::AtLeastOnce)]);
    alice.publish("cross/1", b"m", QoS::AtLeastOnce, false, 1);
    assert_eq!(other.recv_publish().topic, "cross/1");
}

#[test]
fn max_connections_is_per_listener() {
    let mut limited = Listener::mqtt(any_addr());
    limited.max_connections = Some(1);
    let broker = start(config_with(|c| {
        c.listeners = vec![Listener::mqtt(any_addr()), limited];
    }));
    let (_first, ack) = RawClient::connect(broker.addrs[1], "one", ProtocolVersion::V3_1_1, true);
    assert_eq!(ack.reason, ReasonCode::Success);
    // The second connection on the limited listener is closed at once, without CONNACK.
    let mut second = RawClient::tcp(broker.addrs[1]);
    second.send(&Packet::Connect(Box::new(connect_packet(
        "two",
        ProtocolVersion::V3_1_1,
        true,
    ))));
    assert!(second.expect_closed().is_empty());
    // The other listener is not limited.
    for n in 0..3 {
        let id = format!("free-{n}");
        let (_c, ack) = RawClient::connect(broker.addrs[0], &id, ProtocolVersion::V3_1_1, true);
        assert_eq!(ack.reason, ReasonCode::Success);
    }
}

#[test]
fn client_identifier_options() {
    let broker = start_broker_with(config_with(|c| {
        c.allow_zero_length_clientid = false;
    }));
    let (_, ack) =
        RawClient::connect_with(broker.addr, connect_packet("", ProtocolVersion::V5, true));
    assert_eq!(ack.reason, ReasonCode::ClientIdentifierNotValid);

    let broker = start_broker_with(config_with(|c| {
        c.auto_id_prefix = "gen-".into();
        c.clientid_prefixes = Some("gen-".into());
    }));
    let (_, ack) =
        RawClient::connect_with(broker.addr, connect_packet("", ProtocolVersion::V5, true));
    assert_eq!(ack.reason, ReasonCode::Success);
    let assigned = ack.properties.assigned_client_identifier.unwrap();
    assert!(assigned.starts_with("gen-"), "{assigned}");
    let (_, ack) = RawClient::connect_with(
        broker.addr,
        connect_packet("sensor", ProtocolVersion::V3_1_1, true),
    );
    assert_eq!(ack.reason, ReasonCode::NotAuthorized);
}

#[test]
fn message_size_limit_drops_larger_payloads() {
    let broker = start_broker_with(config_with(|c| c.message_size_limit = 10));
    let (mut sub, _) = RawClient::connect(broker.addr, "sub", ProtocolVersion::V3_1_1, true);
    sub.subscribe(1, &[("t", QoS::AtLeastOnce)]);
    let (mut v5, _) = RawClient::connect(broker.addr, "v5", ProtocolVersion::V5, true);
    v5.send(&publish_packet("t", &[0; 11], QoS::AtLeastOnce, false, 1));
    match v5.recv() {
        Packet::PubAck(ack) => assert_eq!(ack.reason, ReasonCode::ImplementationSpecificError),
        other => panic!("{other:?}"),
    }
    v5.publish("t", &[0; 10], QoS::AtLeastOnce, false, 2);
    assert_eq!(sub.recv_publish().payload.len(), 10);
    sub.expect_nothing(Duration::from_millis(200));
}
