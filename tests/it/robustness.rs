//! Bad input ends only the offending connection: garbage, oversized packets, invalid UTF-8,
//! wildcard topic names, packets a client may not send.

use mqtt_broker::mqtt::{ProtocolVersion, QoS};

use crate::support::{config_with, start_broker, start_broker_with, RawClient};

/// Checks that a healthy client still gets messages after `attack` ran on another connection.
fn survives(broker: &crate::support::TestBroker, attack: impl FnOnce(&mut RawClient)) {
    let (mut healthy, _) =
        RawClient::connect(broker.addr, "healthy", ProtocolVersion::V3_1_1, true);
    healthy.subscribe(1, &[("ok", QoS::AtLeastOnce)]);
    let (mut bad, _) = RawClient::connect(broker.addr, "bad", ProtocolVersion::V3_1_1, true);
    attack(&mut bad);
    bad.expect_closed();
    let (mut publisher, _) = RawClient::connect(broker.addr, "pub", ProtocolVersion::V3_1_1, true);
    publisher.publish("ok", b"still here", QoS::AtLeastOnce, false, 1);
    assert_eq!(&healthy.recv_publish().payload[..], b"still here");
}

#[test]
fn garbage_closes_only_that_connection() {
    let broker = start_broker();
    survives(&broker, |bad| {
        bad.send_raw(&[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01])
    });
}

#[test]
fn invalid_utf8_topic_closes_the_connection() {
    // [MQTT-1.5.3-1] PUBLISH to a topic with bytes C3 28 (not UTF-8).
    let broker = start_broker();
    survives(&broker, |bad| {
        bad.send_raw(&[0x30, 0x06, 0x00, 0x02, 0xC3, 0x28, b'h', b'i'])
    });
}

#[test]
fn null_character_in_topic_closes_the_connection() {
    // [MQTT-1.5.3-2]
    let broker = start_broker();
    survives(&broker, |bad| {
        bad.send_raw(&[0x30, 0x05, 0x00, 0x03, b'a', 0x00, b'b'])
    });
}

#[test]
fn wildcard_in_topic_name_closes_the_connection() {
    // [MQTT-3.3.2-2]
    let broker = start_broker();
    survives(&broker, |bad| {
        bad.publish("a/+/b", b"x", QoS::AtMostOnce, false, 0)
    });
}

#[test]
fn oversized_packet_is_refused_before_it_is_read() {
    let broker = start_broker_with(config_with(|c| c.max_packet_size = 1024));
    // Announce a 200 MB PUBLISH and send only its header: refused from the length alone.
    survives(&broker, |bad| bad.send_raw(&[0x30, 0x80, 0x80, 0x80, 0x60]));
}

#[test]
fn server_packets_from_a_client_are_violations() {
    let broker = start_broker();
    // SUBACK sent by a client.
    survives(&broker, |bad| bad.send_raw(&[0x90, 0x03, 0x00, 0x01, 0x00]));
}

#[test]
fn truncated_packet_then_close_is_handled() {
    let broker = start_broker();
    survives(&broker, |bad| {
        bad.send_raw(&[0x30, 0x0A, 0x00, 0x01]);
        bad.stream_for_tests()
            .shutdown(std::net::Shutdown::Write)
            .expect("half close");
    });
}

#[test]
fn a_subscriber_that_stops_reading_is_disconnected_and_others_carry_on() {
    use std::time::{Duration, Instant};

    let broker = start_broker_with(config_with(|c| {
        c.write_timeout = Duration::from_secs(1);
        c.max_queued_messages = 50;
    }));
    let (mut watcher, _) =
        RawClient::connect(broker.addr, "watcher", ProtocolVersion::V3_1_1, true);
    watcher.subscribe(1, &[("will/stuck", QoS::AtMostOnce)]);
    let mut connect = crate::support::connect_packet("stuck", ProtocolVersion::V3_1_1, true);
    connect.will = crate::support::will("will/stuck", b"gone", QoS::AtMostOnce, false);
    let (mut stuck, _) = RawClient::connect_with(broker.addr, connect);
    stuck.subscribe(1, &[("flood", QoS::AtMostOnce)]);
    let (mut healthy, _) =
        RawClient::connect(broker.addr, "healthy", ProtocolVersion::V3_1_1, true);
    healthy.subscribe(1, &[("flood", QoS::AtMostOnce)]);
    // A publisher, on a thread of its own since flow control may make it wait: 40 MB, far
    // more than the socket buffers of the subscriber that never reads.
    let addr = broker.addr;
    let total = 10_000;
    let publisher = std::thread::spawn(move || {
        let (mut publisher, _) = RawClient::connect(addr, "pub", ProtocolVersion::V3_1_1, true);
        let payload = vec![b'x'; 4096];
        for _ in 0..total {
            let packet =
                crate::support::publish_packet("flood", &payload, QoS::AtMostOnce, false, 0);
            publisher.send(&packet);
        }
        publisher.ping();
    });
    // The healthy subscriber gets every message: the publisher was slowed while the stuck one
    // held it up, and the stuck one was disconnected once its socket took nothing for a second.
    let started = Instant::now();
    for i in 0..total {
        let message = healthy.recv_publish();
        assert_eq!(message.payload.len(), 4096, "message {i}");
    }
    publisher.join().expect("the publisher finished");
    assert_eq!(
        watcher.recv_publish().topic,
        "will/stuck",
        "its will was published"
    );
    stuck.expect_closed();
    healthy.ping();
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn connections_beyond_the_limit_are_refused_and_the_others_carry_on() {
    let broker = start_broker_with(config_with(|c| c.max_connections = 2));
    let (mut first, _) = RawClient::connect(broker.addr, "one", ProtocolVersion::V3_1_1, true);
    let (mut second, _) = RawClient::connect(broker.addr, "two", ProtocolVersion::V3_1_1, true);
    let mut third = RawClient::tcp(broker.addr);
    assert!(third.expect_closed().is_empty(), "closed without a word");
    first.ping();
    second.ping();
    // A place frees up when a client leaves.
    second.disconnect();
    let deadline = std::time::Instant::now() + crate::support::WAIT;
    loop {
        let mut next = RawClient::tcp(broker.addr);
        next.send(&mqtt_broker::mqtt::Packet::Connect(Box::new(
            crate::support::connect_packet("three", ProtocolVersion::V3_1_1, true),
        )));
        if let Ok(mqtt_broker::mqtt::Packet::ConnAck(_)) =
            next.try_recv(std::time::Duration::from_secs(1))
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no place freed up");
    }
    first.ping();
}
