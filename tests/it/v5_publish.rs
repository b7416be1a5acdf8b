//! MQTT 5 PUBLISH: topic aliases both ways, message expiry, properties passed on unchanged,
//! acknowledgement reason codes, and 3.1.1/5 clients sharing topics.

use std::sync::Arc;
use std::time::Duration;

use mqtt_broker::mqtt::{
    Packet, ProtocolVersion, Publish, PublishProperties, QoS, ReasonCode, Unsubscribe,
};

use crate::support::{connect_packet, pid, start_broker, RawClient};

const V5: ProtocolVersion = ProtocolVersion::V5;
const QUIET: Duration = Duration::from_millis(300);

fn publish_with(
    topic: &str,
    payload: &[u8],
    qos: QoS,
    id: u16,
    properties: PublishProperties,
) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id: (qos != QoS::AtMostOnce).then(|| pid(id)),
        properties,
        payload: Arc::from(payload),
    })
}

fn alias(n: u16) -> PublishProperties {
    PublishProperties {
        topic_alias: Some(n),
        ..Default::default()
    }
}

fn v5(addr: std::net::SocketAddr, id: &str) -> RawClient {
    RawClient::connect(addr, id, V5, true).0
}

#[test]
fn inbound_topic_alias_is_resolved() {
    // [MQTT-3.3.2-12] Alias set with a topic, then used with an empty topic.
    let broker = start_broker();
    let mut sub = v5(broker.addr, "sub");
    sub.subscribe(1, &[("alias/#", QoS::AtMostOnce)]);
    let mut publisher = v5(broker.addr, "pub");
    publisher.send(&publish_with(
        "alias/long/topic",
        b"1",
        QoS::AtMostOnce,
        0,
        alias(3),
    ));
    publisher.send(&publish_with("", b"2", QoS::AtMostOnce, 0, alias(3)));
    for payload in [b"1", b"2"] {
        let m = sub.recv_publish();
        assert_eq!(
            (m.topic.as_str(), &m.payload[..]),
            ("alias/long/topic", &payload[..])
        );
        assert_eq!(
            m.properties.topic_alias, None,
            "the subscriber allowed no aliases"
        );
    }
}

#[test]
fn invalid_topic_aliases_close_with_mosquittos_codes() {
    // [MQTT-3.3.2-8] Above the maximum (10 by default): 0x94 Topic Alias invalid. 0 is a
    // Malformed Packet (0x81) and an alias never set a Protocol Error (0x82), as mosquitto
    // answers them.
    let broker = start_broker();
    for (topic, n, reason) in [
        ("t", 0u16, ReasonCode::MalformedPacket),
        ("t", 11, ReasonCode::TopicAliasInvalid),
        ("", 4, ReasonCode::ProtocolError),
    ] {
        let mut c = v5(broker.addr, "aliaser");
        c.send(&publish_with(topic, b"x", QoS::AtMostOnce, 0, alias(n)));
        let seen = c.expect_closed();
        assert!(
            matches!(seen.as_slice(), [Packet::Disconnect(d)] if d.reason == reason),
            "alias {n}: {seen:?}"
        );
    }
}

#[test]
fn no_outbound_topic_aliases_even_when_the_client_allows_them() {
    // Aliases are the sender's choice [MQTT-3.3.2-12]; mosquitto uses none, nor do we.
    let broker = start_broker();
    let mut connect = connect_packet("aliased-sub", V5, true);
    connect.properties.topic_alias_maximum = Some(5);
    let (mut sub, _) = RawClient::connect_with(broker.addr, connect);
    sub.subscribe(1, &[("out/#", QoS::AtMostOnce)]);
    let mut publisher = v5(broker.addr, "pub");
    publisher.publish("out/a", b"1", QoS::AtMostOnce, false, 0);
    publisher.publish("out/a", b"2", QoS::AtMostOnce, false, 0);
    for _ in 0..2 {
        let message = sub.recv_publish();
        assert_eq!(message.topic, "out/a");
        assert_eq!(message.properties.topic_alias, None);
    }
}

#[test]
fn properties_are_passed_on_unchanged() {
    // [MQTT-3.3.2-4, -15, -16, -17, -18, -20] Payload format, response topic, correlation
    // data, user properties (in order) and content type reach the subscriber as sent.
    let broker = start_broker();
    let mut sub = v5(broker.addr, "sub");
    sub.subscribe(1, &[("props", QoS::AtLeastOnce)]);
    let mut publisher = v5(broker.addr, "pub");
    let properties = PublishProperties {
        payload_format_indicator: Some(1),
        response_topic: Some("reply/here".into()),
        correlation_data: Some(vec![1, 2, 3]),
        user: vec![
            ("b".into(), "2".into()),
            ("a".into(), "1".into()),
            ("b".into(), "3".into()),
        ],
        content_type: Some("text/plain".into()),
        ..Default::default()
    };
    publisher.send(&publish_with(
        "props",
        b"hello",
        QoS::AtLeastOnce,
        1,
        properties.clone(),
    ));
    assert!(matches!(publisher.recv(), Packet::PubAck(_)));
    let got = sub.recv_publish();
    assert_eq!(got.properties, properties);
    // A 3.1.1 subscriber gets the same message without properties.
    let (mut old, _) = RawClient::connect(broker.addr, "old", ProtocolVersion::V3_1_1, true);
    old.subscribe(1, &[("props", QoS::AtLeastOnce)]);
    publisher.send(&publish_with(
        "props",
        b"again",
        QoS::AtLeastOnce,
        2,
        properties,
    ));
    assert_eq!(&old.recv_publish().payload[..], b"again");
}

#[test]
fn message_expiry_counts_down_while_the_message_waits() {
    // [MQTT-3.3.2-6] The interval sent is what is left of it.
    let broker = start_broker();
    let mut connect = connect_packet("waiter", V5, false);
    connect.properties.session_expiry_interval = Some(60);
    let (mut sub, _) = RawClient::connect_with(broker.addr, connect.clone());
    sub.subscribe(1, &[("exp/#", QoS::AtLeastOnce)]);
    sub.disconnect();
    let mut publisher = v5(broker.addr, "pub");
    let expiring = |secs| PublishProperties {
        message_expiry_interval: Some(secs),
        ..Default::default()
    };
    publisher.send(&publish_with(
        "exp/short",
        b"gone",
        QoS::AtLeastOnce,
        1,
        expiring(1),
    ));
    publisher.send(&publish_with(
        "exp/long",
        b"kept",
        QoS::AtLeastOnce,
        2,
        expiring(30),
    ));
    for _ in 0..2 {
        assert!(matches!(publisher.recv(), Packet::PubAck(_)));
    }
    std::thread::sleep(Duration::from_millis(2100));
    let (mut sub, _) = RawClient::connect_with(broker.addr, connect);
    // [MQTT-3.3.2-5] The expired message is not delivered.
    let got = sub.recv_publish();
    assert_eq!(&got.payload[..], b"kept");
    let left = got
        .properties
        .message_expiry_interval
        .expect("expiry is passed on");
    assert!((1..=28).contains(&left), "{left}");
    sub.expect_nothing(QUIET);
}

#[test]
fn expired_retained_messages_leave_the_store() {
    let broker = start_broker();
    let mut publisher = v5(broker.addr, "pub");
    let mut packet = publish_with(
        "ret/exp",
        b"brief",
        QoS::AtMostOnce,
        0,
        PublishProperties {
            message_expiry_interval: Some(1),
            ..Default::default()
        },
    );
    if let Packet::Publish(p) = &mut packet {
        p.retain = true;
    }
    publisher.send(&packet);
    publisher.ping();
    let mut early = v5(broker.addr, "early");
    early.subscribe(1, &[("ret/exp", QoS::AtMostOnce)]);
    assert_eq!(&early.recv_publish().payload[..], b"brief");
    std::thread::sleep(Duration::from_millis(1500));
    let mut late = v5(broker.addr, "late");
    late.subscribe(1, &[("ret/exp", QoS::AtMostOnce)]);
    late.expect_nothing(QUIET);
}

#[test]
fn acks_say_when_nobody_is_subscribed() {
    // PUBACK and PUBREC 0x10 No matching subscribers.
    let broker = start_broker();
    let mut c = v5(broker.addr, "lonely");
    c.send(&publish_with(
        "nobody",
        b"x",
        QoS::AtLeastOnce,
        1,
        Default::default(),
    ));
    assert!(matches!(c.recv(), Packet::PubAck(a) if a.reason == ReasonCode::NoMatchingSubscribers));
    c.send(&publish_with(
        "nobody",
        b"x",
        QoS::ExactlyOnce,
        2,
        Default::default(),
    ));
    // PUBREC says success all the same, as from mosquitto.
    assert!(matches!(c.recv(), Packet::PubRec(a) if a.reason == ReasonCode::Success));
}

#[test]
fn unsuback_says_when_no_subscription_existed() {
    // [MQTT-3.11.3-1] One reason code per filter; 0x11 where nothing was subscribed.
    let broker = start_broker();
    let mut c = v5(broker.addr, "unsub");
    c.subscribe(1, &[("here", QoS::AtMostOnce)]);
    c.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: pid(2),
        filters: vec!["here".into(), "not/here".into()],
        properties: Default::default(),
    }));
    match c.recv() {
        Packet::UnsubAck(ack) => assert_eq!(
            ack.reasons,
            vec![ReasonCode::Success, ReasonCode::NoSubscriptionExisted]
        ),
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
}

#[test]
fn protocol_errors_get_disconnect_with_their_reason() {
    let broker = start_broker();
    // 0x81: a PUBLISH with QoS 3.
    let mut c = v5(broker.addr, "malformed");
    c.send_raw(&[0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01]);
    let seen = c.expect_closed();
    assert!(
        matches!(seen.as_slice(), [Packet::Disconnect(d)] if d.reason == ReasonCode::MalformedPacket),
        "{seen:?}"
    );
    // 0x82: a PUBLISH to a topic with a wildcard; the DISCONNECT carries no reason string.
    let mut c = v5(broker.addr, "wild");
    c.send(&publish_with(
        "a/+",
        b"x",
        QoS::AtMostOnce,
        0,
        Default::default(),
    ));
    let seen = c.expect_closed();
    assert!(
        matches!(seen.as_slice(), [Packet::Disconnect(d)]
            if d.reason == ReasonCode::ProtocolError && d.properties == Default::default()),
        "{seen:?}"
    );
    // A second CONNECT closes without a DISCONNECT, as mosquitto closes it.
    let mut c = v5(broker.addr, "twice");
    c.send(&Packet::Connect(Box::new(connect_packet(
        "twice", V5, true,
    ))));
    assert!(c.expect_closed().is_empty());
}
