//! Keepalive: a client silent for 1.5 intervals is disconnected; one that pings is not.

use std::time::{Duration, Instant};

use mqtt_broker::mqtt::ProtocolVersion;

use crate::support::{connect_packet, start_broker, RawClient};

#[test]
fn silent_client_is_disconnected_after_one_and_a_half_intervals() {
    // [MQTT-3.1.2-24]
    let broker = start_broker();
    let mut connect = connect_packet("quiet", ProtocolVersion::V3_1_1, true);
    connect.keep_alive = 1;
    let (mut client, _) = RawClient::connect_with(broker.addr, connect);
    let started = Instant::now();
    client.expect_closed();
    // Not before the interval itself has passed (a lower bound only: upper bounds are timing).
    assert!(started.elapsed() >= Duration::from_millis(1000));
}

#[test]
fn pinging_client_stays_connected() {
    let broker = start_broker();
    let mut connect = connect_packet("chatty", ProtocolVersion::V3_1_1, true);
    connect.keep_alive = 1;
    let (mut client, _) = RawClient::connect_with(broker.addr, connect);
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(600));
        client.ping();
    }
}

#[test]
fn v5_keepalive_timeout_closes_without_disconnect() {
    // DISCONNECT 0x8D is optional; mosquitto closes without it, and so do we.
    let broker = start_broker();
    let mut connect = connect_packet("quiet5", ProtocolVersion::V5, true);
    connect.keep_alive = 1;
    let (mut client, _) = RawClient::connect_with(broker.addr, connect);
    let seen = client.expect_closed();
    assert!(seen.is_empty(), "{seen:?}");
}
