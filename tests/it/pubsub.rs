//! Subscribing, matching and delivery: wildcards, `$` topics, QoS downgrade, overlapping
//! subscriptions, several filters in one SUBSCRIBE, UNSUBSCRIBE and PINGREQ.

use std::time::Duration;

use mqtt_broker::mqtt::{Packet, ProtocolVersion, QoS, ReasonCode, Unsubscribe};

use crate::support::{pid, start_broker, RawClient};

const QUIET: Duration = Duration::from_millis(300);

fn client(broker: &crate::support::TestBroker, id: &str) -> RawClient {
    RawClient::connect(broker.addr, id, ProtocolVersion::V3_1_1, true).0
}

#[test]
fn wildcards_match_levels() {
    let broker = start_broker();
    let mut sub = client(&broker, "sub");
    let granted = sub.subscribe(1, &[("a/+/c", QoS::AtMostOnce), ("x/#", QoS::AtMostOnce)]);
    assert_eq!(granted, vec![ReasonCode::Success, ReasonCode::Success]);
    let mut publisher = client(&broker, "pub");
    for topic in ["a/b/c", "a/b/d", "a/b/c/d", "x", "x/y/z", "y"] {
        publisher.publish(topic, topic.as_bytes(), QoS::AtMostOnce, false, 0);
    }
    publisher.ping();
    let got: Vec<String> = (0..3).map(|_| sub.recv_publish().topic).collect();
    // [MQTT-4.7.1-2] `x/#` matches its parent `x` too.
    assert_eq!(got, vec!["a/b/c", "x", "x/y/z"]);
    sub.expect_nothing(QUIET);
}

#[test]
fn wildcard_filters_do_not_match_dollar_topics() {
    // [MQTT-4.7.2-1] (With the broker's own $SYS topics off, so that only this one arrives.)
    let broker = crate::support::start_broker_with(crate::support::config_with(|c| {
        c.sys_interval = Duration::ZERO
    }));
    let mut all = client(&broker, "all");
    all.subscribe(1, &[("#", QoS::AtMostOnce), ("+/info", QoS::AtMostOnce)]);
    let mut sys = client(&broker, "sys");
    sys.subscribe(1, &[("$SYS/#", QoS::AtMostOnce)]);
    let mut publisher = client(&broker, "pub");
    // A client may not publish to `$SYS` (mosquitto's rule); any other `$` topic shows it.
    sys.subscribe(2, &[("$app/#", QoS::AtMostOnce)]);
    publisher.publish("$app/info", b"s", QoS::AtMostOnce, false, 0);
    publisher.publish("plain", b"p", QoS::AtMostOnce, false, 0);
    assert_eq!(sys.recv_publish().topic, "$app/info");
    assert_eq!(all.recv_publish().topic, "plain");
    all.expect_nothing(QUIET);
}

#[test]
fn delivery_uses_the_lower_of_published_and_granted_qos() {
    // [MQTT-3.8.4-6] / section 3.8.4: the effective QoS is the minimum of the two.
    let broker = start_broker();
    let mut sub1 = client(&broker, "q1");
    sub1.subscribe(1, &[("q/t", QoS::AtLeastOnce)]);
    let mut sub2 = client(&broker, "q2");
    sub2.subscribe(1, &[("q/t", QoS::ExactlyOnce)]);
    let mut publisher = client(&broker, "pub");
    publisher.publish("q/t", b"two", QoS::ExactlyOnce, false, 7);
    let m1 = sub1.recv_publish();
    assert_eq!(m1.qos, QoS::AtLeastOnce);
    let m2 = sub2.recv_publish();
    assert_eq!(m2.qos, QoS::ExactlyOnce);
    publisher.publish("q/t", b"zero", QoS::AtMostOnce, false, 0);
    // sub1 has not acknowledged; QoS 0 is not held back by the window of 100.
    assert_eq!(sub1.recv_publish().qos, QoS::AtMostOnce);
    assert_eq!(sub2.recv_publish().qos, QoS::AtMostOnce);
}

#[test]
fn overlapping_subscriptions_deliver_once_at_the_highest_qos() {
    // [MQTT-3.3.5-1]
    let broker = start_broker();
    let mut sub = client(&broker, "overlap");
    sub.subscribe(
        1,
        &[
            ("o/#", QoS::AtMostOnce),
            ("o/+", QoS::ExactlyOnce),
            ("o/t", QoS::AtLeastOnce),
        ],
    );
    let mut publisher = client(&broker, "pub");
    publisher.publish("o/t", b"once", QoS::ExactlyOnce, false, 1);
    let message = sub.recv_publish();
    assert_eq!(message.qos, QoS::ExactlyOnce);
    sub.expect_nothing(QUIET);
}

#[test]
fn subscribe_answers_each_filter() {
    // [MQTT-3.8.4-5] One return code per filter, in order.
    let broker = start_broker();
    let mut sub = client(&broker, "multi");
    let granted = sub.subscribe(
        9,
        &[
            ("m/0", QoS::AtMostOnce),
            ("m/1", QoS::AtLeastOnce),
            ("m/2", QoS::ExactlyOnce),
        ],
    );
    assert_eq!(
        granted,
        vec![
            ReasonCode::Success,
            ReasonCode::GrantedQoS1,
            ReasonCode::GrantedQoS2
        ]
    );
}

#[test]
fn an_invalid_filter_closes_the_connection() {
    // As mosquitto answers it (SUBACK 0x80 would be allowed too): 3.1.1 closes at once, MQTT 5
    // first says DISCONNECT 0x81.
    let broker = start_broker();
    let mut c = client(&broker, "bytes");
    c.send_raw(&[
        0x82, 0x0C, 0x00, 0x01, 0x00, 0x02, b'#', b'x', 0x01, 0x00, 0x02, b'o', b'k', 0x01,
    ]);
    assert!(c.expect_closed().is_empty());
    let (mut five, _) = RawClient::connect(broker.addr, "five", ProtocolVersion::V5, true);
    five.send_raw(&[
        0x82, 0x0D, 0x00, 0x01, 0x00, 0x00, 0x02, b'o', b'k', 0x01, 0x00, 0x02, b'#', b'x', 0x01,
    ]);
    let seen = five.expect_closed();
    assert!(
        matches!(seen.as_slice(), [Packet::Disconnect(d)] if d.reason == ReasonCode::MalformedPacket),
        "{seen:?}"
    );
}

#[test]
fn unsubscribe_stops_delivery() {
    let broker = start_broker();
    let mut sub = client(&broker, "unsub");
    sub.subscribe(1, &[("u/a", QoS::AtMostOnce), ("u/b", QoS::AtMostOnce)]);
    sub.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: pid(2),
        filters: vec!["u/a".into(), "never/subscribed".into()],
        properties: Default::default(),
    }));
    match sub.recv() {
        // [MQTT-3.10.4-4] UNSUBACK even for a filter that matched nothing.
        Packet::UnsubAck(ack) => assert_eq!(ack.packet_id, pid(2)),
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
    let mut publisher = client(&broker, "pub");
    publisher.publish("u/a", b"gone", QoS::AtMostOnce, false, 0);
    publisher.publish("u/b", b"kept", QoS::AtMostOnce, false, 0);
    assert_eq!(&sub.recv_publish().payload[..], b"kept");
    sub.expect_nothing(QUIET);
}

#[test]
fn pingreq_gets_pingresp() {
    let broker = start_broker();
    let mut c = client(&broker, "ping");
    c.send_raw(&[0xC0, 0x00]);
    let mut bytes = [0u8; 2];
    use std::io::Read;
    c.stream_for_tests()
        .read_exact(&mut bytes)
        .expect("PINGRESP bytes");
    assert_eq!(bytes, [0xD0, 0x00]);
}

#[test]
fn v311_and_v5_clients_share_topics() {
    let broker = start_broker();
    let (mut v5, _) = RawClient::connect(broker.addr, "five", ProtocolVersion::V5, true);
    v5.subscribe(1, &[("mix/#", QoS::AtLeastOnce)]);
    let (mut v3, _) = RawClient::connect(broker.addr, "three", ProtocolVersion::V3_1, true);
    v3.subscribe(1, &[("mix/#", QoS::AtLeastOnce)]);
    let mut publisher = client(&broker, "pub");
    publisher.publish("mix/a", b"m", QoS::AtLeastOnce, false, 3);
    assert_eq!(&v5.recv_publish().payload[..], b"m");
    assert_eq!(&v3.recv_publish().payload[..], b"m");
}
