//! Will messages: published when a connection ends abnormally, not after DISCONNECT.

use std::time::Duration;

use mqtt_broker::mqtt::{Packet, ProtocolVersion, QoS};

use crate::support::{connect_packet, start_broker, will, RawClient};

const QUIET: Duration = Duration::from_millis(400);

fn watcher(addr: std::net::SocketAddr) -> RawClient {
    let (mut c, _) = RawClient::connect(addr, "watcher", ProtocolVersion::V3_1_1, true);
    c.subscribe(1, &[("will/#", QoS::AtLeastOnce)]);
    c
}

fn with_will(addr: std::net::SocketAddr, id: &str, keep_alive: u16) -> RawClient {
    let mut connect = connect_packet(id, ProtocolVersion::V3_1_1, true);
    connect.keep_alive = keep_alive;
    connect.will = will(&format!("will/{id}"), b"gone", QoS::AtLeastOnce, false);
    RawClient::connect_with(addr, connect).0
}

#[test]
fn will_is_published_when_the_connection_drops() {
    let broker = start_broker();
    let mut watcher = watcher(broker.addr);
    with_will(broker.addr, "dropper", 60).drop_connection();
    let message = watcher.recv_publish();
    assert_eq!(message.topic, "will/dropper");
    assert_eq!(&message.payload[..], b"gone");
    assert_eq!(message.qos, QoS::AtLeastOnce);
}

#[test]
fn will_is_not_published_after_disconnect() {
    // [MQTT-3.14.4-3]
    let broker = start_broker();
    let mut watcher = watcher(broker.addr);
    with_will(broker.addr, "polite", 60).disconnect();
    watcher.expect_nothing(QUIET);
}

#[test]
fn will_is_published_on_keepalive_timeout() {
    let broker = start_broker();
    let mut watcher = watcher(broker.addr);
    let silent = with_will(broker.addr, "silent", 1);
    // Keepalive 1 s: the broker gives up after 1.5 s without a packet.
    let message = watcher.recv_publish();
    assert_eq!(message.topic, "will/silent");
    drop(silent);
}

#[test]
fn will_is_published_after_a_protocol_violation() {
    let broker = start_broker();
    let mut watcher = watcher(broker.addr);
    let mut bad = with_will(broker.addr, "bad", 60);
    // A second CONNECT [MQTT-3.1.0-2].
    bad.send(&Packet::Connect(Box::new(connect_packet(
        "bad",
        ProtocolVersion::V3_1_1,
        true,
    ))));
    bad.expect_closed();
    assert_eq!(watcher.recv_publish().topic, "will/bad");
}

#[test]
fn retained_will_is_kept() {
    let broker = start_broker();
    let mut connect = connect_packet("rw", ProtocolVersion::V3_1_1, true);
    connect.will = will("will/retained", b"last", QoS::AtMostOnce, true);
    RawClient::connect_with(broker.addr, connect)
        .0
        .drop_connection();
    // The will is routed by the router before any later SUBSCRIBE is handled, so wait for it
    // with a subscriber that retries until the retained will is there.
    let deadline = std::time::Instant::now() + crate::support::WAIT;
    loop {
        let (mut late, _) = RawClient::connect(broker.addr, "late", ProtocolVersion::V3_1_1, true);
        late.subscribe(1, &[("will/retained", QoS::AtMostOnce)]);
        if let Ok(Packet::Publish(m)) = late.try_recv(Duration::from_millis(200)) {
            assert_eq!(&m.payload[..], b"last");
            // A subscriber that came just before the will gets it live (retain flag cleared);
            // the next one must get the kept copy.
            if m.retain {
                return;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no retained will");
    }
}
