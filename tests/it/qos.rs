//! QoS 1 and 2 in both directions: acknowledgements, exactly-once inbound, the outbound flows
//! and the in-flight window.

use std::time::Duration;

use mqtt_broker::mqtt::{Ack, Packet, ProtocolVersion, QoS};

use crate::support::{
    config_with, pid, publish_packet, start_broker, start_broker_with, RawClient,
};

const QUIET: Duration = Duration::from_millis(300);

#[test]
fn inbound_qos1_and_qos2_are_acknowledged() {
    let broker = start_broker();
    let (mut c, _) = RawClient::connect(broker.addr, "acks", ProtocolVersion::V3_1_1, true);
    // The helper asserts PUBACK, and PUBREC then PUBCOMP after PUBREL, with matching ids.
    c.publish("acks/1", b"x", QoS::AtLeastOnce, false, 10);
    c.publish("acks/2", b"x", QoS::ExactlyOnce, false, 11);
    // Byte-exact PUBACK: 40 02 00 0C.
    c.send(&publish_packet("acks/1", b"y", QoS::AtLeastOnce, false, 12));
    let mut bytes = [0u8; 4];
    use std::io::Read;
    c.stream_for_tests().read_exact(&mut bytes).expect("PUBACK");
    assert_eq!(bytes, [0x40, 0x02, 0x00, 0x0C]);
}

#[test]
fn inbound_qos2_is_delivered_exactly_once() {
    // [MQTT-4.3.3-2] A PUBLISH resent with DUP before PUBREL is not delivered again.
    let broker = start_broker();
    let (mut sub, _) = RawClient::connect(broker.addr, "sub", ProtocolVersion::V3_1_1, true);
    sub.subscribe(1, &[("eo", QoS::AtMostOnce)]);
    let (mut publisher, _) = RawClient::connect(broker.addr, "pub", ProtocolVersion::V3_1_1, true);
    let first = publish_packet("eo", b"once", QoS::ExactlyOnce, false, 5);
    publisher.send(&first);
    assert!(matches!(publisher.recv(), Packet::PubRec(a) if a.packet_id == pid(5)));
    let Packet::Publish(mut again) = first else {
        unreachable!()
    };
    again.dup = true;
    publisher.send(&Packet::Publish(again));
    assert!(matches!(publisher.recv(), Packet::PubRec(a) if a.packet_id == pid(5)));
    publisher.send(&Packet::PubRel(Ack::new(pid(5))));
    assert!(matches!(publisher.recv(), Packet::PubComp(a) if a.packet_id == pid(5)));
    assert_eq!(&sub.recv_publish().payload[..], b"once");
    sub.expect_nothing(QUIET);
    // After PUBCOMP the id is free: the same id carries a new message.
    publisher.publish("eo", b"twice", QoS::ExactlyOnce, false, 5);
    assert_eq!(&sub.recv_publish().payload[..], b"twice");
}

#[test]
fn outbound_qos2_flow() {
    let broker = start_broker();
    let (mut sub, _) = RawClient::connect(broker.addr, "sub2", ProtocolVersion::V3_1_1, true);
    sub.subscribe(1, &[("flow", QoS::ExactlyOnce)]);
    let (mut publisher, _) = RawClient::connect(broker.addr, "pub", ProtocolVersion::V3_1_1, true);
    publisher.publish("flow", b"m", QoS::ExactlyOnce, false, 1);
    let message = sub.recv_publish();
    assert_eq!(message.qos, QoS::ExactlyOnce);
    let id = message.packet_id.expect("QoS 2 has a packet id");
    sub.send(&Packet::PubRec(Ack::new(id)));
    assert!(matches!(sub.recv(), Packet::PubRel(a) if a.packet_id == id));
    sub.send(&Packet::PubComp(Ack::new(id)));
    sub.ping();
}

#[test]
fn inflight_window_holds_the_rest_in_order() {
    let broker = start_broker_with(config_with(|c| c.max_inflight_messages = 2));
    let (mut sub, _) = RawClient::connect(broker.addr, "slow", ProtocolVersion::V3_1_1, true);
    sub.subscribe(1, &[("w", QoS::AtLeastOnce)]);
    let (mut publisher, _) = RawClient::connect(broker.addr, "pub", ProtocolVersion::V3_1_1, true);
    for (i, body) in ["1", "2", "3", "4", "5"].iter().enumerate() {
        publisher.publish("w", body.as_bytes(), QoS::AtLeastOnce, false, i as u16 + 1);
    }
    let a = sub.recv_publish();
    let b = sub.recv_publish();
    assert_eq!((&a.payload[..], &b.payload[..]), (&b"1"[..], &b"2"[..]));
    sub.expect_nothing(QUIET);
    sub.send(&Packet::PubAck(Ack::new(a.packet_id.expect("id"))));
    let c = sub.recv_publish();
    assert_eq!(&c.payload[..], b"3");
    sub.expect_nothing(QUIET);
    sub.send(&Packet::PubAck(Ack::new(b.packet_id.expect("id"))));
    sub.send(&Packet::PubAck(Ack::new(c.packet_id.expect("id"))));
    let rest: Vec<Vec<u8>> = (0..2)
        .map(|_| sub.recv_publish().payload.to_vec())
        .collect();
    assert_eq!(rest, vec![b"4".to_vec(), b"5".to_vec()]);
    // Packet ids are distinct while in flight.
    assert_ne!(a.packet_id, b.packet_id);
}

#[test]
fn qos1_messages_keep_publisher_order() {
    let broker = start_broker();
    let (mut sub, _) = RawClient::connect(broker.addr, "order", ProtocolVersion::V3_1_1, true);
    sub.subscribe(1, &[("ord", QoS::AtLeastOnce)]);
    let (mut publisher, _) = RawClient::connect(broker.addr, "pub", ProtocolVersion::V3_1_1, true);
    for i in 1..=300u16 {
        publisher.send(&publish_packet(
            "ord",
            &i.to_be_bytes(),
            QoS::AtLeastOnce,
            false,
            i,
        ));
    }
    for i in 1..=300u16 {
        let message = sub.recv_publish();
        assert_eq!(&message.payload[..], &i.to_be_bytes());
        sub.send(&Packet::PubAck(Ack::new(message.packet_id.expect("id"))));
    }
}

#[test]
fn slow_subscriber_slows_a_qos1_publisher_instead_of_losing_messages() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    // Small queues, and messages large enough to fill the loopback socket buffers.
    let broker = start_broker_with(config_with(|c| {
        c.max_queued_messages = 10;
        c.writer_queue_capacity = 4;
        // Within the hold limit flow control is lossless; this subscriber pauses for longer.
        c.flow_hold_limit = Duration::from_secs(30);
    }));
    let (mut sub, _) = RawClient::connect(broker.addr, "slow", ProtocolVersion::V3_1_1, true);
    sub.subscribe(1, &[("big", QoS::AtLeastOnce)]);
    let (mut publisher, _) = RawClient::connect(broker.addr, "fast", ProtocolVersion::V3_1_1, true);
    let total: u16 = 300;
    let window = 50;
    let acked = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&acked);
    let sender = std::thread::spawn(move || {
        let payload = vec![7u8; 64 * 1024];
        let mut sent = 0u16;
        let mut outstanding = 0;
        while counter.load(Ordering::Acquire) < usize::from(total) {
            if sent < total && outstanding < window {
                sent += 1;
                let mut packet = publish_packet("big", &payload, QoS::AtLeastOnce, false, sent);
                if let Packet::Publish(p) = &mut packet {
                    p.payload = Arc::from(&[&sent.to_be_bytes()[..], &payload[..]].concat()[..]);
                }
                publisher.send(&packet);
                outstanding += 1;
                continue;
            }
            match publisher.recv() {
                Packet::PubAck(_) => {
                    outstanding -= 1;
                    counter.fetch_add(1, Ordering::Release);
                }
                other => panic!("expected PUBACK, got {other:?}"),
            }
        }
    });
    // While the subscriber reads nothing, the publisher cannot get everything acknowledged.
    std::thread::sleep(Duration::from_millis(500));
    let acked_while_stuck = acked.load(Ordering::Acquire);
    assert!(
        acked_while_stuck < usize::from(total),
        "all {total} acknowledged while the subscriber read nothing"
    );
    // Then every message arrives, in order, and every one is acknowledged.
    for i in 1..=total {
        let message = sub.recv_publish();
        assert_eq!(&message.payload[..2], &i.to_be_bytes(), "message {i}");
        sub.send(&Packet::PubAck(Ack::new(message.packet_id.expect("id"))));
    }
    sender.join().expect("the publisher got every PUBACK");
    assert_eq!(acked.load(Ordering::Acquire), usize::from(total));
}

#[test]
fn slow_subscriber_slows_a_qos0_publisher_instead_of_dropping() {
    // QoS 0 flow control: the publisher's reader waits while the subscriber's queue is full.
    let broker = start_broker_with(config_with(|c| {
        c.max_queued_messages = 10;
        c.writer_queue_capacity = 4;
        // Within the hold limit flow control is lossless; this subscriber pauses for longer.
        c.flow_hold_limit = Duration::from_secs(30);
    }));
    let (mut sub, _) = RawClient::connect(broker.addr, "slow0", ProtocolVersion::V3_1_1, true);
    sub.subscribe(1, &[("big0", QoS::AtMostOnce)]);
    let addr = broker.addr;
    let total: u16 = 300;
    let publisher = std::thread::spawn(move || {
        let (mut publisher, _) = RawClient::connect(addr, "fast0", ProtocolVersion::V3_1_1, true);
        let payload = vec![0u8; 64 * 1024];
        for i in 1..=total {
            let body = [&i.to_be_bytes()[..], &payload[..]].concat();
            publisher.send(&publish_packet("big0", &body, QoS::AtMostOnce, false, 0));
        }
        publisher.ping();
    });
    std::thread::sleep(Duration::from_millis(300));
    for i in 1..=total {
        let message = sub.recv_publish();
        assert_eq!(
            &message.payload[..2],
            &i.to_be_bytes(),
            "message {i} of {total}"
        );
    }
    publisher.join().expect("the publisher finished");
}
