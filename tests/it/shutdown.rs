//! Graceful shutdown: the broker stops accepting, closes every client and returns promptly.

use std::time::Duration;

use mqtt_broker::mqtt::{Packet, ProtocolVersion, ReasonCode};

use crate::support::{start_broker, RawClient};

#[test]
fn stop_closes_clients_and_returns_promptly() {
    let broker = start_broker();
    let addr = broker.addr;
    let (mut v3, _) = RawClient::connect(addr, "three", ProtocolVersion::V3_1_1, true);
    let (mut v5, _) = RawClient::connect(addr, "five", ProtocolVersion::V5, true);
    // A connection that never sends CONNECT is closed too.
    let mut idle = RawClient::tcp(addr);
    let took = broker.stop();
    assert!(took < Duration::from_secs(3), "shutdown took {took:?}");
    assert!(v3.expect_closed().is_empty());
    let seen = v5.expect_closed();
    assert!(
        matches!(seen.as_slice(), [Packet::Disconnect(d)] if d.reason == ReasonCode::ServerShuttingDown),
        "{seen:?}"
    );
    idle.expect_closed();
    assert!(std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err());
}
