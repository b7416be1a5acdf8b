//! Persistent sessions (clean session 0): subscriptions and QoS 1/2 messages survive the
//! connection, unacknowledged messages are resent with DUP, and the offline queue is bounded.

use std::time::Duration;

use mqtt_broker::mqtt::{Ack, Packet, ProtocolVersion, QoS};

use crate::support::{config_with, start_broker, start_broker_with, RawClient};

const QUIET: Duration = Duration::from_millis(300);
const V311: ProtocolVersion = ProtocolVersion::V3_1_1;

#[test]
fn offline_messages_are_queued_and_delivered_on_reconnect() {
    let broker = start_broker();
    let (mut sub, connack) = RawClient::connect(broker.addr, "keeper", V311, false);
    assert!(!connack.session_present);
    sub.subscribe(1, &[("p/#", QoS::ExactlyOnce)]);
    sub.disconnect();

    let (mut publisher, _) = RawClient::connect(broker.addr, "pub", V311, true);
    publisher.publish("p/0", b"zero", QoS::AtMostOnce, false, 0);
    publisher.publish("p/1", b"one", QoS::AtLeastOnce, false, 1);
    publisher.publish("p/2", b"two", QoS::ExactlyOnce, false, 2);
    publisher.ping();

    // [MQTT-3.2.2-2] Session present is 1 when a session is resumed.
    let (mut sub, connack) = RawClient::connect(broker.addr, "keeper", V311, false);
    assert!(connack.session_present);
    let first = sub.recv_publish();
    assert_eq!(
        (&first.payload[..], first.qos),
        (&b"one"[..], QoS::AtLeastOnce)
    );
    let second = sub.recv_publish();
    assert_eq!(
        (&second.payload[..], second.qos),
        (&b"two"[..], QoS::ExactlyOnce)
    );
    // QoS 0 messages are not queued for offline clients.
    sub.expect_nothing(QUIET);
}

#[test]
fn unacknowledged_messages_are_resent_with_dup_then_pubrel() {
    // [MQTT-4.4.0-1] On reconnect: unacknowledged PUBLISH with DUP, then PUBREL, in order.
    let broker = start_broker();
    let (mut sub, _) = RawClient::connect(broker.addr, "resend", V311, false);
    sub.subscribe(1, &[("rs", QoS::ExactlyOnce)]);
    let (mut publisher, _) = RawClient::connect(broker.addr, "pub", V311, true);
    publisher.publish("rs", b"a", QoS::ExactlyOnce, false, 1);
    publisher.publish("rs", b"b", QoS::AtLeastOnce, false, 2);
    let a = sub.recv_publish();
    let b = sub.recv_publish();
    // Acknowledge only the first half of a's QoS 2 flow, and not b at all.
    let a_id = a.packet_id.expect("id");
    sub.send(&Packet::PubRec(Ack::new(a_id)));
    assert!(matches!(sub.recv(), Packet::PubRel(r) if r.packet_id == a_id));
    sub.drop_connection();

    let (mut sub, connack) = RawClient::connect(broker.addr, "resend", V311, false);
    assert!(connack.session_present);
    assert!(matches!(sub.recv(), Packet::PubRel(r) if r.packet_id == a_id));
    let again = sub.recv_publish();
    assert!(again.dup, "[MQTT-3.3.1-1] a resent PUBLISH has DUP set");
    assert_eq!(again.packet_id, b.packet_id);
    assert_eq!(&again.payload[..], b"b");
    sub.send(&Packet::PubComp(Ack::new(a_id)));
    sub.send(&Packet::PubAck(Ack::new(again.packet_id.expect("id"))));
    sub.expect_nothing(QUIET);
}

#[test]
fn clean_session_discards_the_old_session() {
    // [MQTT-3.1.2-6]
    let broker = start_broker();
    let (mut sub, _) = RawClient::connect(broker.addr, "cleaner", V311, false);
    sub.subscribe(1, &[("cl", QoS::AtLeastOnce)]);
    sub.disconnect();
    let (mut sub, connack) = RawClient::connect(broker.addr, "cleaner", V311, true);
    assert!(!connack.session_present, "[MQTT-3.2.2-1]");
    let (mut publisher, _) = RawClient::connect(broker.addr, "pub", V311, true);
    publisher.publish("cl", b"x", QoS::AtLeastOnce, false, 1);
    sub.expect_nothing(QUIET);
    // A clean session does not outlive its connection either.
    sub.disconnect();
    let (_, connack) = RawClient::connect(broker.addr, "cleaner", V311, false);
    assert!(!connack.session_present);
}

#[test]
fn offline_queue_is_bounded() {
    let broker = start_broker_with(config_with(|c| c.max_queued_messages = 5));
    let (mut sub, _) = RawClient::connect(broker.addr, "bounded", V311, false);
    sub.subscribe(1, &[("b", QoS::AtLeastOnce)]);
    sub.disconnect();
    let (mut publisher, _) = RawClient::connect(broker.addr, "pub", V311, true);
    for i in 1..=8u16 {
        publisher.publish("b", &i.to_be_bytes(), QoS::AtLeastOnce, false, i);
    }
    let (mut sub, _) = RawClient::connect(broker.addr, "bounded", V311, false);
    for i in 1..=5u16 {
        let message = sub.recv_publish();
        // The oldest are kept; what came after the queue was full was dropped.
        assert_eq!(&message.payload[..], &i.to_be_bytes());
        sub.send(&Packet::PubAck(Ack::new(message.packet_id.expect("id"))));
    }
    sub.expect_nothing(QUIET);
}
