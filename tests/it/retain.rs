//! Retained messages: set, replace, clear, sent on subscribe with the flag, flag cleared on
//! normal forwarding, re-sent on a repeated subscribe.

use std::time::Duration;

use mqtt_broker::mqtt::{ProtocolVersion, QoS};

use crate::support::{start_broker, RawClient};

const QUIET: Duration = Duration::from_millis(300);

fn client(addr: std::net::SocketAddr, id: &str) -> RawClient {
    RawClient::connect(addr, id, ProtocolVersion::V3_1_1, true).0
}

#[test]
fn retained_message_is_sent_on_subscribe_with_the_flag() {
    // [MQTT-3.3.1-6], [MQTT-3.3.1-8]
    let broker = start_broker();
    let mut publisher = client(broker.addr, "pub");
    publisher.publish("r/a", b"first", QoS::AtLeastOnce, true, 1);
    publisher.publish("r/a", b"second", QoS::AtLeastOnce, true, 2);
    publisher.publish("r/b", b"other", QoS::AtMostOnce, true, 0);
    publisher.ping();
    let mut sub = client(broker.addr, "sub");
    sub.subscribe(1, &[("r/a", QoS::AtLeastOnce)]);
    let message = sub.recv_publish();
    // [MQTT-3.3.1-5] Only the latest retained message per topic.
    assert_eq!(&message.payload[..], b"second");
    assert!(message.retain);
    assert_eq!(message.qos, QoS::AtLeastOnce);
    sub.expect_nothing(QUIET);
}

#[test]
fn retain_flag_is_cleared_on_normal_forwarding() {
    // [MQTT-3.3.1-9]
    let broker = start_broker();
    let mut sub = client(broker.addr, "sub");
    sub.subscribe(1, &[("live", QoS::AtMostOnce)]);
    let mut publisher = client(broker.addr, "pub");
    publisher.publish("live", b"now", QoS::AtMostOnce, true, 0);
    let message = sub.recv_publish();
    assert!(!message.retain);
}

#[test]
fn empty_retained_payload_clears_the_topic() {
    // [MQTT-3.3.1-10], [MQTT-3.3.1-11]
    let broker = start_broker();
    let mut publisher = client(broker.addr, "pub");
    publisher.publish("c/t", b"keep", QoS::AtMostOnce, true, 0);
    publisher.publish("c/t", b"", QoS::AtMostOnce, true, 0);
    publisher.ping();
    let mut sub = client(broker.addr, "sub");
    sub.subscribe(1, &[("c/#", QoS::AtMostOnce)]);
    sub.expect_nothing(QUIET);
}

#[test]
fn retained_delivery_respects_granted_qos_and_wildcards() {
    let broker = start_broker();
    let mut publisher = client(broker.addr, "pub");
    publisher.publish("w/1", b"a", QoS::ExactlyOnce, true, 1);
    publisher.publish("w/2", b"b", QoS::AtLeastOnce, true, 2);
    let mut sub = client(broker.addr, "sub");
    sub.subscribe(1, &[("w/+", QoS::AtLeastOnce)]);
    let mut got: Vec<(String, QoS)> = (0..2)
        .map(|_| {
            let m = sub.recv_publish();
            (m.topic, m.qos)
        })
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![
            ("w/1".into(), QoS::AtLeastOnce),
            ("w/2".into(), QoS::AtLeastOnce)
        ]
    );
}

#[test]
fn repeated_subscribe_resends_retained() {
    // [MQTT-3.8.4-3] A subscription replaced by an identical filter re-sends retained messages.
    let broker = start_broker();
    let mut publisher = client(broker.addr, "pub");
    publisher.publish("again", b"r", QoS::AtMostOnce, true, 0);
    publisher.ping();
    let mut sub = client(broker.addr, "sub");
    sub.subscribe(1, &[("again", QoS::AtMostOnce)]);
    assert!(sub.recv_publish().retain);
    sub.subscribe(2, &[("again", QoS::AtMostOnce)]);
    assert!(sub.recv_publish().retain);
}
