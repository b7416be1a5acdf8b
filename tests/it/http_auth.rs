//! The HTTP authentication hook against a small HTTP server started by the test: CONNECT,
//! PUBLISH and SUBSCRIBE decisions, the per-client cache, a dead service (allow or deny), and a
//! slow service that must not hold up other clients.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use mqtt_broker::config::{HttpAuth, Security};
use mqtt_broker::mqtt::{Ack, Packet, ProtocolVersion, QoS, ReasonCode};
use parking_lot::Mutex;

use crate::auth_support::free_port;
use crate::support::{
    config_with, connect_packet, publish_packet, start_broker_with, RawClient, TestBroker,
};

/// What the service was asked: (path, body).
type Log = Arc<Mutex<Vec<(String, String)>>>;

/// An HTTP service answering each request on a thread of its own: 200 when the body does
/// not mention "deny" or "bad", 403 otherwise; a body mentioning "slow" waits 3 s first.
fn service() -> (String, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/auth", listener.local_addr().unwrap());
    let log: Log = Arc::default();
    let seen = Arc::clone(&log);
    thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            let seen = Arc::clone(&seen);
            thread::spawn(move || {
                let mut reader = BufReader::new(&stream);
                let mut request_line = String::new();
                let _ = reader.read_line(&mut request_line);
                let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let body = String::from_utf8_lossy(&body).into_owned();
                seen.lock().push((path, body.clone()));
                if body.contains("slow") {
                    thread::sleep(Duration::from_secs(3));
                }
                let status = if body.contains("deny") || body.contains("bad") {
                    "403 Forbidden"
                } else {
                    "200 OK"
                };
                let _ = (&stream).write_all(
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                );
            });
        }
    });
    (url, log)
}

fn broker(url: String, allow_on_error: bool, timeout: Duration) -> TestBroker {
    start_broker_with(config_with(|c| {
        c.security = Security {
            allow_anonymous: Some(false),
            http_auth: Some(HttpAuth {
                url,
                timeout,
                cache_ttl: Duration::from_secs(60),
                allow_on_error,
            }),
            ..Default::default()
        }
    }))
}

fn login(addr: SocketAddr, user: &str, version: ProtocolVersion) -> (RawClient, ReasonCode) {
    let mut connect = connect_packet(&format!("id-{user}"), version, true);
    connect.username = Some(user.into());
    connect.password = Some(b"pw\"x".to_vec());
    let (client, ack) = RawClient::connect_with(addr, connect);
    (client, ack.reason)
}

#[test]
fn connect_publish_and_subscribe_ask_the_service() {
    let (url, log) = service();
    let broker = broker(url, false, Duration::from_secs(2));
    let (_, reason) = login(broker.addr, "bad", ProtocolVersion::V3_1_1);
    assert_eq!(reason, ReasonCode::NotAuthorized);
    let (mut client, reason) = login(broker.addr, "good", ProtocolVersion::V5);
    assert_eq!(reason, ReasonCode::Success);
    {
        let log = log.lock();
        let (path, body) = log.iter().find(|(_, b)| b.contains("\"good\"")).unwrap();
        assert_eq!(path, "/auth/connect");
        assert!(body.contains(r#""clientid":"id-good""#), "{body}");
        assert!(body.contains(r#""password":"pw\"x""#), "{body}");
        assert!(body.contains(r#""address":"127.0.0.1:"#), "{body}");
    }
    // Anonymous clients are refused by allow_anonymous without asking.
    let before = log.lock().len();
    let (_, ack) = RawClient::connect_with(
        broker.addr,
        connect_packet("anon", ProtocolVersion::V5, true),
    );
    assert_eq!(ack.reason, ReasonCode::NotAuthorized);
    assert_eq!(log.lock().len(), before);

    assert_eq!(
        client.subscribe(
            1,
            &[("ok/#", QoS::AtLeastOnce), ("deny/x", QoS::AtLeastOnce)]
        ),
        [ReasonCode::GrantedQoS1, ReasonCode::NotAuthorized]
    );
    client.send(&publish_packet("deny/x", b"m", QoS::AtLeastOnce, false, 2));
    match client.recv() {
        Packet::PubAck(ack) => assert_eq!(ack.reason, ReasonCode::NotAuthorized),
        other => panic!("{other:?}"),
    }
    // Allowed twice: the second answer comes from the cache.
    for id in [3, 4] {
        client.send(&publish_packet("ok/x", b"m", QoS::AtLeastOnce, false, id));
        // Its own copy comes before its PUBACK, as mosquitto writes them.
        let copy = client.recv_publish();
        assert_eq!(copy.topic, "ok/x");
        match client.recv() {
            Packet::PubAck(ack) => assert_eq!(ack.reason, ReasonCode::Success),
            other => panic!("expected PUBACK, got {other:?}"),
        }
        if let Some(packet_id) = copy.packet_id {
            client.send(&Packet::PubAck(Ack::new(packet_id)));
        }
    }
    let asked: Vec<String> = log
        .lock()
        .iter()
        .filter(|(path, _)| path == "/auth/acl")
        .map(|(_, body)| body.clone())
        .collect();
    // Two filters, two topics: ok/x was asked once for its two PUBLISH packets.
    assert_eq!(asked.len(), 4, "{asked:?}");
    let ok_x = r#""topic":"ok/x","access":"publish""#;
    assert_eq!(asked.iter().filter(|b| b.contains(ok_x)).count(), 1);
    assert!(asked
        .iter()
        .any(|b| b.contains(r#""topic":"deny/x","access":"subscribe""#)));
}

#[test]
fn dead_service_allows_or_denies_as_configured() {
    let url = format!("http://127.0.0.1:{}/auth", free_port());
    for (allow, expected) in [
        (false, ReasonCode::NotAuthorized),
        (true, ReasonCode::Success),
    ] {
        let broker = broker(url.clone(), allow, Duration::from_millis(500));
        let (_, reason) = login(broker.addr, "someone", ProtocolVersion::V5);
        assert_eq!(reason, expected, "auth_http_on_error allow={allow}");
    }
}

#[test]
fn slow_service_does_not_hold_up_other_clients() {
    let (url, _log) = service();
    let broker = broker(url, false, Duration::from_secs(10));
    let addr = broker.addr;
    let slow = thread::spawn(move || {
        let started = Instant::now();
        let (_, reason) = login(addr, "slow", ProtocolVersion::V3_1_1);
        (reason, started.elapsed())
    });
    thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let (mut fast, reason) = login(addr, "fast", ProtocolVersion::V3_1_1);
    assert_eq!(reason, ReasonCode::Success);
    fast.publish("ok/t", b"m", QoS::AtLeastOnce, false, 1);
    let fast_took = started.elapsed();
    let (reason, slow_took) = slow.join().unwrap();
    assert_eq!(reason, ReasonCode::Success);
    assert!(slow_took >= Duration::from_secs(3));
    assert!(
        fast_took < Duration::from_millis(2500),
        "fast client took {fast_took:?}"
    );
}
