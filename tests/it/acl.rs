//! ACL files: each rule form over the wire, denied PUBLISH and SUBSCRIBE answered as mosquitto
//! answers them, read access checked per delivery (retained messages and wills too), and a
//! reload that changes the rules for connected clients.

use std::net::SocketAddr;
use std::time::Duration;

use mqtt_broker::config::Security;
use mqtt_broker::mqtt::{Ack, Packet, ProtocolVersion, QoS, ReasonCode};
use mqtt_broker::Broker;

use crate::auth_support::TempDir;
use crate::support::{
    config_with, connect_packet, pid, publish_packet, start_broker_with, will, RawClient,
    TestBroker,
};

const ACL: &str = "\
# anonymous clients
topic read public/#
topic readwrite test/#
topic deny test/nosubscribe
topic write wills/#

user alice
topic readwrite alice/#
topic read public/#

pattern readwrite devices/%c/#
pattern readwrite inbox/%u
";

const PASSWORDS: &str = "alice:$7$101$5GfQ4BMbOEYbhwX3$dvEllCpB5AIMkOVJIdICRJmawt4xWnpogebIB4/kLiV4RdwaOIvHBBPQpXEOhY1ktx45dziVEmqZPYIov5w12Q==\n";

fn broker(dir: &TempDir) -> TestBroker {
    let acl = dir.file("acl", ACL);
    let pw = dir.file("pw", PASSWORDS);
    start_broker_with(config_with(|c| {
        c.security = Security {
            allow_anonymous: Some(true),
            password_file: Some(pw),
            acl_file: Some(acl),
            ..Default::default()
        }
    }))
}

fn client(addr: SocketAddr, id: &str, version: ProtocolVersion, alice: bool) -> RawClient {
    let mut connect = connect_packet(id, version, true);
    if alice {
        connect.username = Some("alice".into());
        connect.password = Some(b"secret".to_vec());
    }
    let (client, ack) = RawClient::connect_with(addr, connect);
    assert_eq!(ack.reason, ReasonCode::Success, "{id}");
    client
}

/// Does a QoS 1 message from `publisher` to `topic` reach a subscriber to `filter`?
fn reaches(sub: &mut RawClient, publisher: &mut RawClient, topic: &str) -> bool {
    publisher.send(&publish_packet(topic, b"m", QoS::AtLeastOnce, false, 9));
    let _ack = publisher.recv();
    match sub.try_recv(Duration::from_millis(300)) {
        Ok(Packet::Publish(p)) => {
            assert_eq!(p.topic, topic);
            if let Some(id) = p.packet_id {
                sub.send(&Packet::PubAck(Ack::new(id)));
            }
            true
        }
        Ok(other) => panic!("unexpected {other:?}"),
        Err(_) => false,
    }
}

/// Publishes one QoS 1 message and reports which subscribers got it.
fn deliveries(subs: &mut [&mut RawClient], publisher: &mut RawClient, topic: &str) -> Vec<bool> {
    publisher.send(&publish_packet(topic, b"m", QoS::AtLeastOnce, false, 9));
    let _ack = publisher.recv();
    subs.iter_mut()
        .map(|sub| match sub.try_recv(Duration::from_millis(300)) {
            Ok(Packet::Publish(p)) => {
                assert_eq!(p.topic, topic);
                sub_ack(sub, p.packet_id);
                true
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => false,
        })
        .collect()
}

#[test]
fn each_rule_form_decides_delivery() {
    let dir = TempDir::new("acl-forms");
    let broker = broker(&dir);
    let v3 = ProtocolVersion::V3_1_1;
    let anon_pub = client(broker.addr, "anon-pub", v3, false);
    let alice_pub = client(broker.addr, "alice-pub", v3, true);
    let dev7_pub = client(broker.addr, "dev7", v3, false);

    let mut anon = client(broker.addr, "anon", v3, false);
    assert_eq!(
        anon.subscribe(1, &[("#", QoS::AtLeastOnce)]),
        [ReasonCode::GrantedQoS1]
    );
    let mut alice = client(broker.addr, "alice-sub", v3, true);
    alice.subscribe(1, &[("#", QoS::AtLeastOnce)]);
    let mut dev8 = client(broker.addr, "dev8", v3, false);
    dev8.subscribe(1, &[("devices/#", QoS::AtLeastOnce)]);
    let mut subs = [&mut anon, &mut alice, &mut dev8];

    let (anon_w, alice_w, dev7_w) = (0, 1, 2);
    // (publisher, topic, [anon, alice, dev8] receive)
    let cases = [
        // topic read/readwrite before any user line: anonymous clients only.
        (anon_w, "test/a", [true, false, false]),
        // deny wins over the readwrite before it.
        (anon_w, "test/nosubscribe", [false, false, false]),
        // user alice: readwrite alice/#.
        (alice_w, "alice/x", [false, true, false]),
        // Anonymous clients may not write alice/#.
        (anon_w, "alice/y", [false, false, false]),
        // pattern %c: dev7 may write devices/dev7/... (nobody else reads it); nobody but dev8
        // writes devices/dev8/...
        (dev7_w, "devices/dev7/t", [false, false, false]),
        (dev7_w, "devices/dev8/t", [false, false, false]),
        (alice_w, "devices/dev8/t", [false, false, false]),
    ];
    let mut pubs = [anon_pub, alice_pub, dev7_pub];
    for (publisher, topic, expected) in cases {
        assert_eq!(
            deliveries(&mut subs, &mut pubs[publisher], topic),
            expected,
            "{topic}"
        );
    }
    let [mut anon_pub, mut alice_pub, _] = pubs;
    // dev8 may write and read its own tree.
    let mut dev8_pub = client(broker.addr, "dev8-pub", v3, false);
    assert_eq!(
        deliveries(&mut subs, &mut dev8_pub, "devices/dev8-pub/t"),
        [false, false, false]
    );
    dev8.send(&publish_packet(
        "devices/dev8/t",
        b"m",
        QoS::AtLeastOnce,
        false,
        4,
    ));
    let mut got = false;
    for _ in 0..2 {
        if let Packet::Publish(p) = dev8.recv() {
            assert_eq!(p.topic, "devices/dev8/t");
            got = true;
        }
    }
    assert!(got, "dev8 reads what it writes to devices/dev8/#");
    // pattern %u applies only to clients with a username: inbox/alice is alice's to read.
    let mut alice_inbox = client(broker.addr, "alice-inbox", v3, true);
    alice_inbox.subscribe(1, &[("inbox/#", QoS::AtLeastOnce)]);
    let mut anon_inbox = client(broker.addr, "anon-inbox", v3, false);
    anon_inbox.subscribe(1, &[("inbox/#", QoS::AtLeastOnce)]);
    let mut subs = [&mut alice_inbox, &mut anon_inbox];
    assert_eq!(
        deliveries(&mut subs, &mut alice_pub, "inbox/alice"),
        [true, false]
    );
    // An anonymous client's %u is not "": the rule is skipped, so inbox/ stays closed.
    assert_eq!(
        deliveries(&mut subs, &mut anon_pub, "inbox/"),
        [false, false]
    );
}

fn sub_ack(client: &mut RawClient, id: Option<mqtt_broker::mqtt::PacketId>) {
    if let Some(id) = id {
        client.send(&Packet::PubAck(Ack::new(id)));
    }
}

#[test]
fn denied_publish_is_dropped_or_refused_with_0x87() {
    let dir = TempDir::new("acl-publish");
    let broker = broker(&dir);
    let mut watcher = client(broker.addr, "watcher", ProtocolVersion::V3_1_1, true);
    watcher.subscribe(1, &[("alice/#", QoS::AtLeastOnce)]);
    // 3.1.1: PUBACK as usual, the message goes nowhere.
    let mut v3 = client(broker.addr, "v3", ProtocolVersion::V3_1_1, false);
    v3.send(&publish_packet("alice/x", b"m", QoS::AtLeastOnce, false, 1));
    match v3.recv() {
        Packet::PubAck(ack) => assert_eq!(ack.packet_id, pid(1)),
        other => panic!("{other:?}"),
    }
    v3.send(&publish_packet("alice/x", b"m", QoS::AtMostOnce, false, 0));
    v3.ping();
    // 3.1.1 QoS 2: the whole flow completes, the message goes nowhere.
    v3.publish("alice/x", b"m", QoS::ExactlyOnce, false, 7);
    // 5: PUBACK / PUBREC with 0x87.
    let mut v5 = client(broker.addr, "v5", ProtocolVersion::V5, false);
    v5.send(&publish_packet("alice/x", b"m", QoS::AtLeastOnce, false, 2));
    match v5.recv() {
        Packet::PubAck(ack) => assert_eq!(ack.reason, ReasonCode::NotAuthorized),
        other => panic!("{other:?}"),
    }
    v5.send(&publish_packet("alice/x", b"m", QoS::ExactlyOnce, false, 3));
    match v5.recv() {
        Packet::PubRec(ack) => assert_eq!(ack.reason, ReasonCode::NotAuthorized),
        other => panic!("{other:?}"),
    }
    watcher.expect_nothing(Duration::from_millis(300));
    // Allowed topics still flow.
    v5.publish("test/ok", b"m", QoS::AtLeastOnce, false, 4);
}

#[test]
fn denied_subscribe_gets_0x80_or_0x87() {
    let dir = TempDir::new("acl-subscribe");
    let broker = broker(&dir);
    let mut v3 = client(broker.addr, "v3", ProtocolVersion::V3_1_1, false);
    // The two-line rule the interoperability suites expect.
    let reasons = v3.subscribe(
        1,
        &[
            ("test/nosubscribe", QoS::AtLeastOnce),
            ("test/ok", QoS::AtLeastOnce),
            ("test/#", QoS::AtLeastOnce),
        ],
    );
    // 3.1.1's 0x80 (failure) decodes as UnspecifiedError.
    assert_eq!(
        reasons,
        [
            ReasonCode::UnspecifiedError,
            ReasonCode::GrantedQoS1,
            ReasonCode::GrantedQoS1
        ]
    );
    let mut v5 = client(broker.addr, "v5", ProtocolVersion::V5, false);
    let reasons = v5.subscribe(1, &[("test/nosubscribe", QoS::AtMostOnce)]);
    assert_eq!(reasons, [ReasonCode::NotAuthorized]);
}

#[test]
fn retained_messages_and_wills_are_checked() {
    let dir = TempDir::new("acl-retained");
    let broker = broker(&dir);
    let mut alice = client(broker.addr, "alice", ProtocolVersion::V3_1_1, true);
    alice.publish("alice/kept", b"r", QoS::AtLeastOnce, true, 1);
    let mut anon = client(broker.addr, "anon", ProtocolVersion::V3_1_1, false);
    anon.publish("test/kept", b"r", QoS::AtLeastOnce, true, 1);
    // An anonymous subscriber to everything gets only what it may read.
    anon.subscribe(2, &[("#", QoS::AtLeastOnce)]);
    let first = anon.recv_publish();
    assert_eq!(first.topic, "test/kept");
    anon.expect_nothing(Duration::from_millis(300));

    // A will to a topic its client may write is sent; to one it may not, it is not.
    let mut watcher = client(broker.addr, "watcher", ProtocolVersion::V3_1_1, false);
    watcher.subscribe(
        1,
        &[
            ("test/will", QoS::AtLeastOnce),
            ("test/alice-will", QoS::AtLeastOnce),
        ],
    );
    let mut alice_watcher = client(broker.addr, "alice-watcher", ProtocolVersion::V3_1_1, true);
    alice_watcher.subscribe(1, &[("alice/#", QoS::AtLeastOnce)]);
    assert_eq!(alice_watcher.recv_publish().topic, "alice/kept");
    // Anonymous clients may write test/# but not alice/#.
    for (id, topic, sent) in [("w1", "alice/will", false), ("w2", "test/will", true)] {
        let mut connect = connect_packet(id, ProtocolVersion::V3_1_1, true);
        connect.will = will(topic, b"bye", QoS::AtLeastOnce, false);
        let (c, ack) = RawClient::connect_with(broker.addr, connect);
        assert_eq!(
            ack.reason,
            ReasonCode::Success,
            "CONNECT is accepted either way"
        );
        c.drop_connection();
        if sent {
            assert_eq!(watcher.recv_publish().topic, topic);
        }
    }
    // The will of a client whose ACL denies the topic (alice may not write test/#).
    let mut connect = connect_packet("alice-will", ProtocolVersion::V3_1_1, true);
    connect.username = Some("alice".into());
    connect.password = Some(b"secret".to_vec());
    connect.will = will("test/alice-will", b"bye", QoS::AtLeastOnce, false);
    let (c, _) = RawClient::connect_with(broker.addr, connect);
    c.drop_connection();
    watcher.expect_nothing(Duration::from_millis(500));
    alice_watcher.expect_nothing(Duration::from_millis(100));
}

#[test]
fn reload_changes_the_rules_for_connected_clients() {
    let dir = TempDir::new("acl-reload");
    let acl = dir.file("acl", "topic readwrite a/#\n");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = config_with(|c| {
        c.security = Security {
            allow_anonymous: Some(true),
            acl_file: Some(acl.clone()),
            ..Default::default()
        }
    });
    let broker = Broker::new(listener, config).unwrap();
    let addr = broker.local_addr().unwrap();
    let reloader = broker.reloader();
    let stopper = broker.stopper();
    let thread = std::thread::spawn(move || broker.run());

    let mut sub = client(addr, "sub", ProtocolVersion::V3_1_1, false);
    sub.subscribe(1, &[("a/#", QoS::AtLeastOnce)]);
    let mut publisher = client(addr, "pub", ProtocolVersion::V5, false);
    assert!(reaches(&mut sub, &mut publisher, "a/1"));
    // A broken file keeps the old rules.
    std::fs::write(&acl, "topic read a/#\nsubject x\n").unwrap();
    reloader.reload().expect("no TLS listener to fail");
    assert!(reaches(&mut sub, &mut publisher, "a/2"));
    // A new file applies to the next operation of connected clients.
    std::fs::write(&acl, "topic read a/#\n").unwrap();
    reloader.reload().expect("no TLS listener to fail");
    publisher.send(&publish_packet("a/3", b"m", QoS::AtLeastOnce, false, 5));
    match publisher.recv() {
        Packet::PubAck(ack) => assert_eq!(ack.reason, ReasonCode::NotAuthorized),
        other => panic!("{other:?}"),
    }
    sub.expect_nothing(Duration::from_millis(300));

    stopper.stop();
    let started = std::time::Instant::now();
    while !thread.is_finished() {
        assert!(started.elapsed() < crate::support::WAIT, "broker stops");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A delayed will that outlasts its session is published when the session ends, checked
/// against its client's ACL like any will: alice's will to a topic she may not write is not
/// sent, her will to one she may write is.
#[test]
fn a_will_published_when_its_session_ends_is_checked() {
    let dir = TempDir::new("acl-will-session-end");
    let broker = broker(&dir);
    let mut anon_watcher = client(broker.addr, "anon-watcher", ProtocolVersion::V5, false);
    anon_watcher.subscribe(1, &[("test/#", QoS::AtLeastOnce)]);
    let mut alice_watcher = client(broker.addr, "alice-watcher", ProtocolVersion::V5, true);
    alice_watcher.subscribe(1, &[("alice/#", QoS::AtLeastOnce)]);
    for (id, topic) in [("alice-1", "test/late"), ("alice-2", "alice/late")] {
        let mut connect = connect_packet(id, ProtocolVersion::V5, true);
        connect.username = Some("alice".into());
        connect.password = Some(b"secret".to_vec());
        connect.properties.session_expiry_interval = Some(1);
        connect.will = will(topic, b"bye", QoS::AtLeastOnce, false);
        if let Some(will) = connect.will.as_mut() {
            will.properties.will_delay_interval = Some(3600);
        }
        let (c, ack) = RawClient::connect_with(broker.addr, connect);
        assert_eq!(ack.reason, ReasonCode::Success);
        c.drop_connection();
    }
    assert_eq!(alice_watcher.recv_publish().topic, "alice/late");
    anon_watcher.expect_nothing(Duration::from_millis(1500));
}
