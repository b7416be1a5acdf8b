//! The mosquitto.conf options that change what clients see: `maximum_qos`, `retain_available`,
//! `upgrade_outgoing_qos`, `queue_qos0_messages` (each run against our binary and against
//! mosquitto started with the same file, and compared), `persistent_client_expiration` (in
//! process, with a short limit), and `use_identity_as_username` deciding ACL checks on a TLS
//! listener.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use mqtt_broker::config::{Protocol, Security};
use mqtt_broker::mqtt::{
    DecodeError, Packet, ProtocolVersion, QoS, ReasonCode, Subscribe, SubscriptionOptions,
};

use crate::auth_support::{free_port, ChildBroker, TempDir};
use crate::support::{
    config_with, connect_packet, pid, publish_packet, start_broker_with,
    start_broker_with_listeners, will, RawClient,
};
use crate::transports::{listener, tls_connect, Certs, Client};

const V311: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// Our broker and mosquitto, each started with `options` after its own listener line.
struct Pair {
    _ours: ChildBroker,
    _theirs: ChildBroker,
    ours: SocketAddr,
    theirs: SocketAddr,
    _dir: TempDir,
}

fn pair(name: &str, options: &str) -> Pair {
    let dir = TempDir::new(name);
    let (ours, theirs) = (free_port(), free_port());
    let conf = |port: u16| format!("listener {port} 127.0.0.1\nallow_anonymous true\n{options}");
    let ours_conf = dir.file("ours.conf", &conf(ours));
    let theirs_conf = dir.file("theirs.conf", &conf(theirs));
    Pair {
        _ours: ChildBroker::ours(&ours_conf, &[ours]),
        _theirs: ChildBroker::mosquitto(&theirs_conf, &[theirs]),
        ours: SocketAddr::from(([127, 0, 0, 1], ours)),
        theirs: SocketAddr::from(([127, 0, 0, 1], theirs)),
        _dir: dir,
    }
}

/// What a broker answers a CONNECT: the CONNACK that accepts it, or what it sent before it
/// closed the connection.
fn connect_outcome(addr: SocketAddr, connect: mqtt_broker::mqtt::Connect) -> String {
    let mut client = RawClient::tcp(addr);
    client.version = connect.protocol;
    client.send(&Packet::Connect(Box::new(connect)));
    match client.try_recv(crate::support::WAIT) {
        Ok(Packet::ConnAck(ack)) if ack.reason == ReasonCode::Success => format!("{ack:?}"),
        Ok(packet) => {
            let mut seen = vec![packet];
            seen.extend(client.expect_closed());
            format!("closed after {seen:?}")
        }
        Err(DecodeError::Io(e))
            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
        {
            panic!("no answer to CONNECT and no close")
        }
        Err(_) => "closed after []".into(),
    }
}

/// Everything a client sees of `maximum_qos 1` and `retain_available false`, as text.
fn limits_seen(addr: SocketAddr) -> Vec<String> {
    let mut seen = Vec::new();
    for version in [V311, V5] {
        // CONNACK (v5: Retain Available 0 and Maximum QoS 1) and the capped grant.
        let (mut a, ack) = RawClient::connect(addr, "limits-a", version, true);
        seen.push(format!("{version:?} CONNACK {ack:?}"));
        seen.push(format!(
            "{version:?} grants {:?}",
            a.subscribe(1, &[("t/q", QoS::ExactlyOnce), ("t/r", QoS::AtLeastOnce)])
        ));
        // A QoS 1 message still flows, at QoS 1.
        a.send(&publish_packet("t/q", b"one", QoS::AtLeastOnce, false, 2));
        let mut answers: Vec<String> = (0..2).map(|_| format!("{:?}", a.recv())).collect();
        answers.sort();
        seen.push(format!("{version:?} QoS 1 {answers:?}"));
        // QoS 2 is above the limit: the connection ends.
        a.send(&publish_packet("t/q", b"two", QoS::ExactlyOnce, false, 3));
        seen.push(format!("{version:?} QoS 2 {:?}", a.expect_closed()));
        // So does a retained message, and nothing is retained.
        let (mut b, _) = RawClient::connect(addr, "limits-b", version, true);
        b.send(&publish_packet("t/r", b"kept?", QoS::AtMostOnce, true, 0));
        seen.push(format!("{version:?} retained {:?}", b.expect_closed()));
        let (mut c, _) = RawClient::connect(addr, "limits-c", version, true);
        c.subscribe(1, &[("t/r", QoS::AtLeastOnce)]);
        c.expect_nothing(Duration::from_millis(300));
        // A will above the limit, or retained: refused at CONNECT.
        for (qos, retain) in [(QoS::ExactlyOnce, false), (QoS::AtMostOnce, true)] {
            let mut connect = connect_packet("limits-w", version, true);
            connect.will = will("w/t", b"gone", qos, retain);
            seen.push(format!(
                "{version:?} will {qos:?} {retain} {}",
                connect_outcome(addr, connect)
            ));
        }
    }
    seen
}

#[test]
fn maximum_qos_and_retain_available_answer_as_mosquitto() {
    let pair = pair("qos-retain", "maximum_qos 1\nretain_available false\n");
    let ours = limits_seen(pair.ours);
    let theirs = limits_seen(pair.theirs);
    assert_eq!(ours, theirs);
    // And what that is, so that two brokers broken alike would fail too.
    let (_, ack) = RawClient::connect(pair.ours, "v5", V5, true);
    assert_eq!(ack.properties.maximum_qos, Some(QoS::AtLeastOnce));
    assert_eq!(ack.properties.retain_available, Some(false));
    let joined = ours.join("\n");
    assert!(
        joined.contains("grants [GrantedQoS1, GrantedQoS1]"),
        "{joined}"
    );
    assert!(joined.contains("V3_1_1 QoS 2 []"), "{joined}");
    assert!(joined.contains("QoSNotSupported"), "{joined}");
    assert!(joined.contains("RetainNotSupported"), "{joined}");
}

/// The QoS a subscriber at `sub_qos` gets a QoS 0 message in, live and retained.
fn delivered_qos(addr: SocketAddr, sub_qos: QoS) -> (QoS, QoS) {
    let (mut publisher, _) = RawClient::connect(addr, "up-pub", V311, true);
    publisher.publish("up/kept", b"r", QoS::AtMostOnce, true, 0);
    publisher.ping();
    let (mut sub, _) = RawClient::connect(addr, "up-sub", V311, true);
    sub.subscribe(1, &[("up/#", sub_qos)]);
    let retained = sub.recv_publish();
    assert!(retained.retain);
    publisher.publish("up/live", b"l", QoS::AtMostOnce, false, 0);
    let live = sub.recv_publish();
    (live.qos, retained.qos)
}

#[test]
fn upgrade_outgoing_qos_delivers_at_the_subscription_qos_as_mosquitto() {
    let pair = pair("upgrade", "upgrade_outgoing_qos true\n");
    let ours = delivered_qos(pair.ours, QoS::AtLeastOnce);
    assert_eq!(ours, delivered_qos(pair.theirs, QoS::AtLeastOnce));
    assert_eq!(ours, (QoS::AtLeastOnce, QoS::AtLeastOnce));
    // Without the option, the lower of the two.
    let plain = start_broker_with(Default::default());
    assert_eq!(
        delivered_qos(plain.addr, QoS::AtLeastOnce),
        (QoS::AtMostOnce, QoS::AtMostOnce)
    );
}

/// Payloads an offline persistent subscriber gets when it comes back, after `n` QoS 0
/// messages were published while it was away.
fn offline_qos0(addr: SocketAddr, n: usize) -> Vec<String> {
    let (mut sub, _) = RawClient::connect(addr, "q0-sub", V311, false);
    sub.subscribe(1, &[("q0/t", QoS::AtLeastOnce)]);
    sub.disconnect();
    std::thread::sleep(Duration::from_millis(200));
    let (mut publisher, _) = RawClient::connect(addr, "q0-pub", V311, true);
    for n in 0..n {
        publisher.publish("q0/t", n.to_string().as_bytes(), QoS::AtMostOnce, false, 0);
    }
    publisher.ping();
    let (mut sub, ack) = RawClient::connect(addr, "q0-sub", V311, false);
    assert!(ack.session_present);
    let mut got = Vec::new();
    while let Ok(Packet::Publish(p)) = sub.try_recv(Duration::from_millis(500)) {
        assert_eq!(p.qos, QoS::AtMostOnce);
        got.push(String::from_utf8_lossy(&p.payload).into_owned());
    }
    got
}

#[test]
fn queue_qos0_messages_queues_offline_as_mosquitto_within_the_queue_limit() {
    let pair = pair("qos0", "queue_qos0_messages true\nmax_queued_messages 10\n");
    let ours = offline_qos0(pair.ours, 5);
    assert_eq!(ours, offline_qos0(pair.theirs, 5));
    assert_eq!(ours, ["0", "1", "2", "3", "4"]);
    // They count against max_queued_messages (mosquitto 2.0.11 does not bound them: see
    // docs/compatibility.md): the oldest are kept, the rest dropped.
    let bounded = start_broker_with(config_with(|c| {
        c.queue_qos0_messages = true;
        c.max_queued_messages = 3;
    }));
    assert_eq!(offline_qos0(bounded.addr, 5), ["0", "1", "2"]);
    // Without the option nothing is queued for it.
    let plain = start_broker_with(Default::default());
    assert!(offline_qos0(plain.addr, 5).is_empty());
}

#[test]
fn persistent_client_expiration_ends_sessions_that_never_expire() {
    let broker = start_broker_with(config_with(|c| {
        c.persistent_client_expiration = Some(Duration::from_secs(4));
    }));
    // A 3.1.1 session with clean session 0, and a v5 one asking for an hour: both capped.
    for (id, version) in [("exp-311", V311), ("exp-5", V5)] {
        let mut connect = connect_packet(id, version, false);
        if version == V5 {
            connect.properties.session_expiry_interval = Some(3600);
        }
        let (client, _) = RawClient::connect_with(broker.addr, connect.clone());
        client.disconnect();
        // Well within the limit: still there.
        let (client, ack) = RawClient::connect_with(broker.addr, connect.clone());
        assert!(ack.session_present, "{id} kept for a while");
        client.disconnect();
        // Well past it: gone.
        std::thread::sleep(Duration::from_secs(6));
        let (client, ack) = RawClient::connect_with(broker.addr, connect);
        assert!(!ack.session_present, "{id} expired");
        client.disconnect();
    }
    // Without the option a 3.1.1 persistent session stays.
    let plain = start_broker_with(Default::default());
    let connect = connect_packet("keep", V311, false);
    RawClient::connect_with(plain.addr, connect.clone())
        .0
        .disconnect();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        RawClient::connect_with(plain.addr, connect)
            .1
            .session_present
    );
}

#[test]
fn use_identity_as_username_makes_the_certificate_cn_the_acl_user() {
    let dir = TempDir::new("identity-acl");
    // The client certificate's CN is "client-a"; anonymous clients get nothing.
    let acl = dir.file("acl", "user client-a\ntopic readwrite granted/#\n");
    let certs = Certs::new();
    let mut tls = certs.settings(true);
    tls.use_identity_as_username = true;
    let config = config_with(|c| {
        c.security = Security {
            allow_anonymous: Some(true),
            acl_file: Some(acl),
            ..Default::default()
        }
    });
    let (broker, addrs, _) =
        start_broker_with_listeners(config, vec![listener(Protocol::Mqtt, Some(tls))]);
    let grants = |client: &mut Client| -> Vec<ReasonCode> {
        let filters = ["granted/x", "other/x"]
            .iter()
            .map(|f| {
                let options = SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    ..Default::default()
                };
                (f.to_string(), options)
            })
            .collect();
        client.send(&Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            filters,
            properties: Default::default(),
        }));
        match client.recv() {
            Packet::SubAck(ack) => ack.reasons,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    };
    let stream = tls_connect(
        addrs[0],
        &certs.dir.join("ca.pem"),
        Some((&certs.dir.join("client.pem"), &certs.dir.join("client.key"))),
    )
    .expect("the CA's client certificate is accepted");
    let mut tls_client = Client::new(stream);
    // The CONNECT names someone else: the certificate decides.
    let mut connect = connect_packet("cert-client", V311, true);
    connect.username = Some("intruder".into());
    tls_client.send(&Packet::Connect(Box::new(connect)));
    match tls_client.recv() {
        Packet::ConnAck(ack) => assert_eq!(ack.reason, ReasonCode::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    assert_eq!(
        grants(&mut tls_client),
        [ReasonCode::GrantedQoS1, ReasonCode::UnspecifiedError]
    );
    // The same subscription from an anonymous client on the plain listener is refused.
    let (mut plain, _) = RawClient::connect(broker.addr, "anon", V311, true);
    assert_eq!(
        plain.subscribe(1, &[("granted/x", QoS::AtLeastOnce)]),
        [ReasonCode::UnspecifiedError]
    );
    // And the certificate's user both writes and reads there.
    tls_client.send(&publish_packet(
        "granted/x",
        b"hi",
        QoS::AtMostOnce,
        false,
        0,
    ));
    assert_eq!(&*tls_client.recv_publish().payload, b"hi");
    broker.stop();
}
