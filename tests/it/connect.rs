//! CONNECT and CONNACK: versions, client identifiers, first and second CONNECT, takeover.

use mqtt_broker::mqtt::{Packet, ProtocolVersion, QoS, ReasonCode};

use crate::support::{connect_packet, start_broker, RawClient};

/// A 3.1.1 CONNECT with protocol level 6, keepalive 60, client id "x".
const CONNECT_LEVEL_6: &[u8] = &[
    0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 6, 0x02, 0, 60, 0, 1, b'x',
];

#[test]
fn accepts_each_protocol_version() {
    let broker = start_broker();
    for (id, version) in [
        ("v31", ProtocolVersion::V3_1),
        ("v311", ProtocolVersion::V3_1_1),
        ("v5", ProtocolVersion::V5),
    ] {
        let (mut client, connack) = RawClient::connect(broker.addr, id, version, true);
        assert_eq!(connack.reason, ReasonCode::Success, "{version:?}");
        assert!(!connack.session_present);
        client.ping();
    }
}

#[test]
fn unsupported_level_gets_return_code_1_and_close() {
    // [MQTT-3.1.2-2] CONNACK 0x01 (unacceptable protocol version), then close.
    let broker = start_broker();
    let mut client = RawClient::tcp(broker.addr);
    client.send_raw(CONNECT_LEVEL_6);
    let seen = client.expect_closed();
    assert_eq!(seen.len(), 1, "{seen:?}");
    match &seen[0] {
        Packet::ConnAck(connack) => {
            assert_eq!(connack.reason, ReasonCode::UnsupportedProtocolVersion)
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    // The same answer on the wire, byte for byte: 20 02 00 01.
    let mut raw = RawClient::tcp(broker.addr);
    raw.send_raw(CONNECT_LEVEL_6);
    let mut bytes = [0u8; 5];
    let n = read_some(&mut raw, &mut bytes);
    assert_eq!(&bytes[..n], &[0x20, 0x02, 0x00, 0x01]);
}

fn read_some(client: &mut RawClient, buf: &mut [u8]) -> usize {
    use std::io::Read;
    let mut total = 0;
    let stream = client.stream_for_tests();
    while total < buf.len() {
        match stream.read(&mut buf[total..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
    total
}

#[test]
fn empty_client_id_needs_clean_session() {
    let broker = start_broker();
    // [MQTT-3.1.3-8] Empty id with clean session 0: identifier rejected (return code 2).
    let (mut client, connack) = RawClient::connect(broker.addr, "", ProtocolVersion::V3_1_1, false);
    assert_eq!(connack.reason, ReasonCode::ClientIdentifierNotValid);
    client.expect_closed();
    // [MQTT-3.1.3-6] With clean session 1 the server assigns one.
    let (mut client, connack) = RawClient::connect(broker.addr, "", ProtocolVersion::V3_1_1, true);
    assert_eq!(connack.reason, ReasonCode::Success);
    client.ping();
    // MQTT 3.1 requires 1 to 23 characters.
    let (mut client, connack) = RawClient::connect(broker.addr, "", ProtocolVersion::V3_1, true);
    assert_eq!(connack.reason, ReasonCode::ClientIdentifierNotValid);
    client.expect_closed();
    // MQTT 5 reports the identifier it assigned.
    let (mut client, connack) = RawClient::connect(broker.addr, "", ProtocolVersion::V5, true);
    assert_eq!(connack.reason, ReasonCode::Success);
    assert!(connack
        .properties
        .assigned_client_identifier
        .is_some_and(|id| !id.is_empty()));
    client.ping();
}

#[test]
fn first_packet_must_be_connect() {
    // [MQTT-3.1.0-1]
    let broker = start_broker();
    let mut client = RawClient::tcp(broker.addr);
    client.send(&Packet::PingReq);
    assert!(client.expect_closed().is_empty());
}

#[test]
fn second_connect_is_a_protocol_violation() {
    // [MQTT-3.1.0-2]
    let broker = start_broker();
    let (mut client, _) = RawClient::connect(broker.addr, "twice", ProtocolVersion::V3_1_1, true);
    client.send(&Packet::Connect(Box::new(connect_packet(
        "twice",
        ProtocolVersion::V3_1_1,
        true,
    ))));
    client.expect_closed();
}

#[test]
fn reserved_connect_flag_closes_without_connack() {
    // [MQTT-3.1.2-3] Reserved flag bit set: malformed, closed without CONNACK.
    let broker = start_broker();
    let mut client = RawClient::tcp(broker.addr);
    client.send_raw(&[
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x03, 0, 60, 0, 1, b'x',
    ]);
    assert!(client.expect_closed().is_empty());
}

#[test]
fn same_client_id_takes_over_the_session() {
    // [MQTT-3.1.4-2] The existing connection is closed.
    let broker = start_broker();
    let (mut first, _) = RawClient::connect(broker.addr, "dup", ProtocolVersion::V3_1_1, false);
    first.subscribe(1, &[("takeover/t", QoS::AtLeastOnce)]);
    let (mut second, connack) =
        RawClient::connect(broker.addr, "dup", ProtocolVersion::V3_1_1, false);
    assert!(
        connack.session_present,
        "the persistent session carries over"
    );
    first.expect_closed();
    // The subscription made on the first connection now delivers to the second.
    let (mut publisher, _) = RawClient::connect(broker.addr, "pub", ProtocolVersion::V3_1_1, true);
    publisher.publish("takeover/t", b"hi", QoS::AtLeastOnce, false, 1);
    let message = second.recv_publish();
    assert_eq!(&message.payload[..], b"hi");
}

#[test]
fn v5_takeover_sends_disconnect_0x8e() {
    let broker = start_broker();
    let (mut first, _) = RawClient::connect(broker.addr, "five", ProtocolVersion::V5, true);
    let (_second, _) = RawClient::connect(broker.addr, "five", ProtocolVersion::V5, true);
    let seen = first.expect_closed();
    assert!(
        matches!(seen.as_slice(), [Packet::Disconnect(d)] if d.reason == ReasonCode::SessionTakenOver),
        "{seen:?}"
    );
}
