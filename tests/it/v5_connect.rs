//! MQTT 5 CONNECT and CONNACK properties: session expiry, receive maximum, maximum packet
//! size, server keep alive, availability flags, response and problem information, AUTH.

use std::time::Duration;

use mqtt_broker::mqtt::{
    Ack, Disconnect, DisconnectProperties, Packet, ProtocolVersion, QoS, ReasonCode,
};

use crate::support::{
    config_with, connect_packet, publish_packet, start_broker, start_broker_with, RawClient,
};

const V5: ProtocolVersion = ProtocolVersion::V5;
const QUIET: Duration = Duration::from_millis(300);

fn connect_expiry(addr: std::net::SocketAddr, id: &str, expiry: Option<u32>) -> (RawClient, bool) {
    let mut connect = connect_packet(id, V5, false);
    connect.properties.session_expiry_interval = expiry;
    let (client, connack) = RawClient::connect_with(addr, connect);
    (client, connack.session_present)
}

#[test]
fn session_expiry_zero_ends_the_session_with_the_connection() {
    // [MQTT-3.1.2-23] No Session Expiry Interval (0): the session ends when the connection does.
    let broker = start_broker();
    let (mut c, _) = connect_expiry(broker.addr, "exp0", None);
    c.subscribe(1, &[("x", QoS::AtLeastOnce)]);
    c.disconnect();
    let (_, present) = connect_expiry(broker.addr, "exp0", None);
    assert!(!present);
}

#[test]
fn session_expiry_keeps_the_session_until_it_runs_out() {
    let broker = start_broker();
    let (c, present) = connect_expiry(broker.addr, "exp1", Some(1));
    assert!(!present);
    c.disconnect();
    let (c, present) = connect_expiry(broker.addr, "exp1", Some(1));
    assert!(present, "reconnected within the interval");
    c.drop_connection();
    std::thread::sleep(Duration::from_millis(1600));
    let (_, present) = connect_expiry(broker.addr, "exp1", Some(1));
    assert!(!present, "the interval ran out while the client was away");
}

#[test]
fn session_expiry_max_never_expires_and_queues() {
    let broker = start_broker();
    let (mut c, _) = connect_expiry(broker.addr, "forever", Some(u32::MAX));
    c.subscribe(1, &[("f", QoS::AtLeastOnce)]);
    c.disconnect();
    let (mut publisher, _) = RawClient::connect(broker.addr, "pub", V5, true);
    publisher.publish("f", b"kept", QoS::AtLeastOnce, false, 1);
    let (mut c, present) = connect_expiry(broker.addr, "forever", Some(u32::MAX));
    assert!(present);
    assert_eq!(&c.recv_publish().payload[..], b"kept");
}

#[test]
fn disconnect_may_shorten_the_session_expiry() {
    // [MQTT-3.14.2-2] DISCONNECT can change a non-zero interval, here to 0.
    let broker = start_broker();
    let (mut c, _) = connect_expiry(broker.addr, "shorten", Some(600));
    c.send(&Packet::Disconnect(Disconnect {
        reason: ReasonCode::Success,
        properties: DisconnectProperties {
            session_expiry_interval: Some(0),
            ..Default::default()
        },
    }));
    c.expect_closed();
    let (_, present) = connect_expiry(broker.addr, "shorten", Some(600));
    assert!(!present);
}

#[test]
fn disconnect_may_not_set_an_expiry_after_zero() {
    // [MQTT-3.14.2-2] 0 in CONNECT, non-zero in DISCONNECT: protocol error, DISCONNECT 0x82.
    let broker = start_broker();
    let (mut c, _) = connect_expiry(broker.addr, "zero", None);
    c.send(&Packet::Disconnect(Disconnect {
        reason: ReasonCode::Success,
        properties: DisconnectProperties {
            session_expiry_interval: Some(60),
            ..Default::default()
        },
    }));
    let seen = c.expect_closed();
    assert!(
        matches!(seen.as_slice(), [Packet::Disconnect(d)] if d.reason == ReasonCode::ProtocolError),
        "{seen:?}"
    );
    let (_, present) = connect_expiry(broker.addr, "zero", None);
    assert!(!present);
}

#[test]
fn client_receive_maximum_limits_messages_in_flight() {
    // [MQTT-3.3.4-9] Never more unacknowledged QoS 1/2 PUBLISH than the client's Receive Maximum.
    let broker = start_broker();
    let mut connect = connect_packet("rm", V5, true);
    connect.properties.receive_maximum = Some(2);
    let (mut sub, _) = RawClient::connect_with(broker.addr, connect);
    sub.subscribe(1, &[("rm", QoS::AtLeastOnce)]);
    let (mut publisher, _) = RawClient::connect(broker.addr, "pub", V5, true);
    for i in 1..=3u16 {
        publisher.publish("rm", &[i as u8], QoS::AtLeastOnce, false, i);
    }
    let first = sub.recv_publish();
    let _second = sub.recv_publish();
    sub.expect_nothing(QUIET);
    sub.send(&Packet::PubAck(Ack::new(first.packet_id.expect("id"))));
    assert_eq!(&sub.recv_publish().payload[..], &[3]);
}

#[test]
fn server_receive_maximum_is_announced_and_enforced() {
    // 5.0 section 3.2.2.3.3: Receive Maximum in CONNACK; exceeding it: DISCONNECT 0x93 [MQTT-3.3.4-8].
    let broker = start_broker_with(config_with(|c| c.receive_maximum = 2));
    let (mut c, connack) = RawClient::connect(broker.addr, "greedy", V5, true);
    assert_eq!(connack.properties.receive_maximum, Some(2));
    for id in 1..=3u16 {
        c.send(&publish_packet("rmx", b"x", QoS::ExactlyOnce, false, id));
    }
    let seen = c.expect_closed();
    assert!(
        seen.iter().any(
            |p| matches!(p, Packet::Disconnect(d) if d.reason == ReasonCode::ReceiveMaximumExceeded)
        ),
        "{seen:?}"
    );
}

#[test]
fn client_maximum_packet_size_skips_larger_messages() {
    // [MQTT-3.1.2-24, MQTT-3.1.2-25] A message too large for the client is not sent to it.
    let broker = start_broker();
    let mut connect = connect_packet("small", V5, true);
    connect.properties.maximum_packet_size = Some(100);
    let (mut sub, _) = RawClient::connect_with(broker.addr, connect);
    sub.subscribe(1, &[("size", QoS::AtLeastOnce)]);
    let (mut publisher, _) = RawClient::connect(broker.addr, "pub", V5, true);
    publisher.publish("size", &[b'x'; 200], QoS::AtLeastOnce, false, 1);
    publisher.publish("size", b"fits", QoS::AtLeastOnce, false, 2);
    assert_eq!(&sub.recv_publish().payload[..], b"fits");
    sub.expect_nothing(QUIET);
}

#[test]
fn server_maximum_packet_size_is_announced_and_enforced() {
    // 5.0 section 3.2.2.3.6: Maximum Packet Size in CONNACK; larger packets: DISCONNECT 0x95.
    let broker = start_broker_with(config_with(|c| c.max_packet_size = 512));
    let (mut c, connack) = RawClient::connect(broker.addr, "big", V5, true);
    assert_eq!(connack.properties.maximum_packet_size, Some(512));
    c.send(&publish_packet(
        "big",
        &[0u8; 1024],
        QoS::AtMostOnce,
        false,
        0,
    ));
    let seen = c.expect_closed();
    assert!(
        matches!(seen.as_slice(), [Packet::Disconnect(d)] if d.reason == ReasonCode::PacketTooLarge),
        "{seen:?}"
    );
}

#[test]
fn capped_keepalive_is_announced_as_server_keep_alive() {
    // [MQTT-3.2.2-21] The client must use the Server Keep Alive.
    let broker = start_broker_with(config_with(|c| c.max_keep_alive = 10));
    let (_, connack) = RawClient::connect(broker.addr, "ka5", V5, true);
    assert_eq!(connack.properties.server_keep_alive, Some(10));
    // A 3.1.1 client cannot be told: refused as mosquitto does (return code 2).
    let (_, connack) = RawClient::connect(broker.addr, "ka3", ProtocolVersion::V3_1_1, true);
    assert_eq!(connack.reason, ReasonCode::ClientIdentifierNotValid);
    // Within the cap nothing is said.
    let mut connect = connect_packet("ka-ok", V5, true);
    connect.keep_alive = 5;
    let (_, connack) = RawClient::connect_with(broker.addr, connect);
    assert_eq!(connack.properties.server_keep_alive, None);
}

#[test]
fn features_are_announced_as_available() {
    // Absent properties mean available (5.0 sections 3.2.2.3.4, .5, .11, .12, .13): retain, wildcards, subscription
    // identifiers, shared subscriptions, QoS 2.
    let broker = start_broker();
    let (_, connack) = RawClient::connect(broker.addr, "features", V5, true);
    let p = connack.properties;
    assert_eq!(p.retain_available, None);
    assert_eq!(p.maximum_qos, None);
    assert_eq!(p.wildcard_subscription_available, None);
    assert_eq!(p.subscription_identifiers_available, None);
    assert_eq!(p.shared_subscription_available, None);
    assert_eq!(p.topic_alias_maximum, Some(10));
    assert_eq!(p.response_information, None, "not asked for");
}

#[test]
fn response_information_is_not_sent_even_when_requested() {
    // [MQTT-3.1.2-28] allows a server to leave it out; mosquitto does, and so do we.
    let broker = start_broker();
    let mut connect = connect_packet("asker", V5, true);
    connect.properties.request_response_information = Some(true);
    let (_, connack) = RawClient::connect_with(broker.addr, connect);
    assert_eq!(connack.properties.response_information, None);
}

#[test]
fn disconnect_carries_the_reason_code_alone() {
    // As from mosquitto: no reason string, whatever Request Problem Information says; the
    // reason goes to the log.
    let broker = start_broker();
    for (wanted, id) in [(None, "default"), (Some(true), "asks")] {
        let mut connect = connect_packet(id, V5, true);
        connect.properties.request_problem_information = wanted;
        let (mut c, _) = RawClient::connect_with(broker.addr, connect);
        c.send_raw(&[0x20, 0x02, 0x00, 0x00]); // CONNACK from a client: a protocol error
        let seen = c.expect_closed();
        assert!(
            matches!(seen.as_slice(), [Packet::Disconnect(d)]
                if d.reason == ReasonCode::ProtocolError && d.properties == Default::default()),
            "{id}: {seen:?}"
        );
    }
}

#[test]
fn unsupported_authentication_method_is_refused() {
    // [MQTT-4.12.0-1] CONNACK 0x8C, then close.
    let broker = start_broker();
    let mut connect = connect_packet("auth", V5, true);
    connect.properties.authentication_method = Some("SCRAM-SHA-1".into());
    let (mut c, connack) = RawClient::connect_with(broker.addr, connect);
    assert_eq!(connack.reason, ReasonCode::BadAuthenticationMethod);
    c.expect_closed();
}

#[test]
fn auth_outside_an_exchange_is_a_protocol_error() {
    let broker = start_broker();
    let (mut c, _) = RawClient::connect(broker.addr, "auth2", V5, true);
    c.send(&Packet::Auth(Default::default()));
    let seen = c.expect_closed();
    assert!(
        matches!(seen.as_slice(), [Packet::Disconnect(d)] if d.reason == ReasonCode::ProtocolError),
        "{seen:?}"
    );
}
