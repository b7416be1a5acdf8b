//! WebSocket listeners (ws:// and wss://) driven by a tungstenite client: the subprotocol,
//! packets split across messages and several in one, ping and close, a bounded upgrade, and
//! TCP, TLS, WebSocket and WSS clients exchanging messages on one broker.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use mqtt_broker::config::Protocol;
use mqtt_broker::mqtt::{Packet, ProtocolVersion, QoS, ReasonCode};
use tungstenite::Message;

use crate::mosquitto::Sub;
use crate::support::{
    config_with, connect_packet, publish_packet, start_broker_with_listeners, RawClient, WAIT,
};
use crate::transports::{listener, tls_connect, ws_connect, Certs, Client};

fn encode(packet: &Packet) -> Vec<u8> {
    let mut bytes = Vec::new();
    packet.encode(ProtocolVersion::V3_1_1, &mut bytes);
    bytes
}

fn tcp(addr: std::net::SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(WAIT)).expect("timeout");
    stream
}

#[test]
fn a_websocket_client_connects_subscribes_and_publishes() {
    let ws = listener(Protocol::WebSockets, None);
    let (broker, addrs, _) = start_broker_with_listeners(Default::default(), vec![ws]);
    for subprotocol in ["mqtt", "mqttv3.1", "mqtt, mqttv3.1"] {
        let stream = ws_connect(tcp(addrs[0]), subprotocol).expect("upgrade");
        let mut client = Client::new(stream);
        assert_eq!(client.connect("ws").reason, ReasonCode::Success);
        client.subscribe("ws/t", QoS::AtLeastOnce);
        client.publish("ws/t", subprotocol.as_bytes());
        assert_eq!(&client.recv_publish().payload[..], subprotocol.as_bytes());
    }
    // A client that offers only other subprotocols is refused.
    assert!(ws_connect(tcp(addrs[0]), "chat").is_err());
    broker.stop();
}

#[test]
fn packets_may_span_messages_and_one_message_may_hold_several() {
    let ws = listener(Protocol::WebSockets, None);
    let (broker, addrs, _) = start_broker_with_listeners(Default::default(), vec![ws]);
    let mut stream = ws_connect(tcp(addrs[0]), "mqtt").expect("upgrade");
    // CONNECT in three messages, cut inside the fixed header and inside the body.
    let connect = encode(&Packet::Connect(Box::new(connect_packet(
        "split",
        ProtocolVersion::V3_1_1,
        true,
    ))));
    for part in [&connect[..1], &connect[1..5], &connect[5..]] {
        stream
            .ws
            .send(Message::Binary(part.to_vec().into()))
            .expect("send");
    }
    let mut client = Client::new(stream);
    match client.recv() {
        Packet::ConnAck(connack) => assert_eq!(connack.reason, ReasonCode::Success),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    client.subscribe("s/#", QoS::AtMostOnce);
    // Three PUBLISHes in one message, the last also split into the next message.
    let mut batch = Vec::new();
    for n in 0..3 {
        batch.extend(encode(&publish_packet(
            "s/x",
            format!("p{n}").as_bytes(),
            QoS::AtMostOnce,
            false,
            0,
        )));
    }
    let last = encode(&publish_packet(
        "s/x",
        &[7; 70_000],
        QoS::AtMostOnce,
        false,
        0,
    ));
    batch.extend_from_slice(&last[..100]);
    client.stream.write_all(&batch).expect("send");
    client.stream.write_all(&last[100..]).expect("send");
    for n in 0..3 {
        assert_eq!(
            client.recv_publish().payload[..],
            *format!("p{n}").as_bytes()
        );
    }
    assert_eq!(client.recv_publish().payload.len(), 70_000);
    broker.stop();
}

#[test]
fn pings_are_answered_and_a_close_is_returned() {
    let ws = listener(Protocol::WebSockets, None);
    let (broker, addrs, _) = start_broker_with_listeners(Default::default(), vec![ws]);
    let mut stream = ws_connect(tcp(addrs[0]), "mqtt").expect("upgrade");
    stream
        .ws
        .send(Message::Ping(b"before".to_vec().into()))
        .expect("ping");
    let mut client = Client::new(stream);
    assert_eq!(client.connect("pinger").reason, ReasonCode::Success);
    // Once connected, a ping is answered by the writer without any MQTT traffic.
    let mut stream = ws_connect(tcp(addrs[0]), "mqtt").expect("upgrade");
    let mut bytes = Vec::new();
    Packet::Connect(Box::new(connect_packet(
        "ponger",
        ProtocolVersion::V3_1_1,
        true,
    )))
    .encode(ProtocolVersion::V3_1_1, &mut bytes);
    stream
        .ws
        .send(Message::Binary(bytes.into()))
        .expect("connect");
    let mut first = [0; 4];
    stream.read_exact(&mut first).expect("CONNACK");
    stream
        .ws
        .send(Message::Ping(b"are you there".to_vec().into()))
        .expect("ping");
    // The read times out after WAIT (the socket's read timeout) if no pong comes.
    match stream.ws.read().expect("a pong within the read timeout") {
        Message::Pong(data) => assert_eq!(&data[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }
    let deadline = Instant::now() + WAIT;
    // A close is answered with a close, and the connection ends.
    stream.ws.close(None).expect("close");
    let mut closed = false;
    while Instant::now() < deadline {
        match stream.ws.read() {
            Ok(Message::Close(_)) => {}
            Ok(other) => panic!("expected a close, got {other:?}"),
            Err(tungstenite::Error::ConnectionClosed) => {
                closed = true;
                break;
            }
            Err(e) => panic!("expected a clean close, got {e}"),
        }
    }
    assert!(closed, "the broker returned the close");
    broker.stop();
}

#[test]
fn the_broker_ends_a_websocket_with_a_close_frame() {
    let ws = listener(Protocol::WebSockets, None);
    let (broker, addrs, _) = start_broker_with_listeners(Default::default(), vec![ws]);
    let mut bytes = Vec::new();
    Packet::Disconnect(Default::default()).encode(ProtocolVersion::V3_1_1, &mut bytes);
    let mut stream = ws_connect(tcp(addrs[0]), "mqtt").expect("upgrade");
    let connect = encode(&Packet::Connect(Box::new(connect_packet(
        "bye",
        ProtocolVersion::V3_1_1,
        true,
    ))));
    stream.write_all(&connect).expect("CONNECT");
    let mut connack = [0; 4];
    stream.read_exact(&mut connack).expect("CONNACK");
    stream.write_all(&bytes).expect("DISCONNECT");
    // The broker answers DISCONNECT by closing: a close frame, then the end.
    let mut buf = [0; 16];
    assert_eq!(stream.read(&mut buf).expect("a clean close"), 0);
    assert!(
        matches!(stream.control.as_slice(), [Message::Close(_)]),
        "expected one close frame, got {:?}",
        stream.control
    );
    broker.stop();
}

#[test]
fn the_upgrade_and_messages_are_bounded_and_text_frames_are_refused() {
    let ws = listener(Protocol::WebSockets, None);
    let config = config_with(|c| {
        c.connect_timeout = Duration::from_secs(1);
        c.max_packet_size = 16 * 1024;
    });
    let (broker, addrs, _) = start_broker_with_listeners(config, vec![ws]);
    let ends_within = |stream: &mut TcpStream, limit: Duration| {
        let started = Instant::now();
        let mut buf = [0; 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        started.elapsed() < limit
    };
    // Headers without end: cut off after 16 KiB, without waiting for the timeout.
    let mut endless = tcp(addrs[0]);
    endless
        .write_all(b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\n")
        .expect("write");
    let line = format!("X-Filler: {}\r\n", "a".repeat(1000));
    let mut written = 0;
    while written < 64 * 1024 {
        if endless.write_all(line.as_bytes()).is_err() {
            break;
        }
        written += line.len();
    }
    assert!(
        ends_within(&mut endless, WAIT),
        "oversized upgrade still open"
    );
    // A request that never completes: closed after the connect timeout.
    let mut slow = tcp(addrs[0]);
    slow.write_all(b"GET /mqtt HTTP/1.1\r\n").expect("write");
    assert!(ends_within(&mut slow, WAIT), "stalled upgrade still open");
    // A message larger than the largest packet (16 KiB here) is refused as a whole, before
    // any of it reaches MQTT: 32,768 PINGREQs in one message get no PINGRESP.
    let mut stream = ws_connect(tcp(addrs[0]), "mqtt").expect("upgrade");
    let connect = encode(&Packet::Connect(Box::new(connect_packet(
        "big",
        ProtocolVersion::V3_1_1,
        true,
    ))));
    stream.write_all(&connect).expect("CONNECT");
    let mut connack = [0; 4];
    stream.read_exact(&mut connack).expect("CONNACK");
    let pings: Vec<u8> = [0xc0, 0x00].repeat(32 * 1024);
    let _ = stream.ws.send(Message::Binary(pings.into()));
    let mut buf = [0; 16];
    assert!(
        matches!(stream.read(&mut buf), Ok(0) | Err(_)),
        "closed without a PINGRESP"
    );
    // [MQTT-6.0.0-1] A text frame closes the connection.
    let mut stream = ws_connect(tcp(addrs[0]), "mqtt").expect("upgrade");
    stream.ws.send(Message::Text("hello".into())).expect("text");
    let mut buf = [0; 16];
    assert!(matches!(stream.read(&mut buf), Ok(0) | Err(_)));
    broker.stop();
}

#[test]
fn tcp_tls_websocket_and_wss_clients_exchange_messages_on_one_broker() {
    let certs = Certs::new();
    let listeners = vec![
        listener(Protocol::Mqtt, Some(certs.settings(false))),
        listener(Protocol::WebSockets, None),
        listener(Protocol::WebSockets, Some(certs.settings(false))),
    ];
    let (broker, addrs, _) = start_broker_with_listeners(Default::default(), listeners);
    let ca = certs.dir.join("ca.pem");
    let mut clients: Vec<(&str, Client)> = Vec::new();
    let (tcp_client, _) = RawClient::connect(broker.addr, "tcp", ProtocolVersion::V3_1_1, true);
    let tls_stream = tls_connect(addrs[0], &ca, None).expect("TLS");
    clients.push(("tls", Client::new(tls_stream)));
    let ws_stream = ws_connect(tcp(addrs[1]), "mqtt").expect("ws upgrade");
    clients.push(("ws", Client::new(ws_stream)));
    let wss_stream =
        ws_connect(tls_connect(addrs[2], &ca, None).expect("TLS"), "mqtt").expect("wss upgrade");
    clients.push(("wss", Client::new(wss_stream)));
    for (name, client) in &mut clients {
        assert_eq!(client.connect(name).reason, ReasonCode::Success);
        client.subscribe("mix/#", QoS::AtLeastOnce);
    }
    let mut tcp_client = tcp_client;
    tcp_client.subscribe(1, &[("mix/#", QoS::AtLeastOnce)]);
    // And the real mosquitto_sub over TLS.
    let ca_path = certs.path("ca.pem");
    let port = addrs[0].port();
    let mut sub = Sub::start(
        port,
        &[
            "-h",
            "localhost",
            "--cafile",
            &ca_path,
            "-t",
            "mix/#",
            "-C",
            "4",
        ],
    );
    tcp_client.publish("mix/tcp", b"from tcp", QoS::AtMostOnce, false, 0);
    for (name, client) in &mut clients {
        client.publish(&format!("mix/{name}"), format!("from {name}").as_bytes());
    }
    let expected = ["from tcp", "from tls", "from ws", "from wss"];
    for (name, client) in &mut clients {
        let mut seen: Vec<String> = (0..4)
            .map(|_| String::from_utf8_lossy(&client.recv_publish().payload).into_owned())
            .collect();
        seen.sort();
        assert_eq!(seen, expected, "{name} saw every client's message");
    }
    let mut seen: Vec<String> = (0..4)
        .map(|_| String::from_utf8_lossy(&tcp_client.recv_publish().payload).into_owned())
        .collect();
    seen.sort();
    assert_eq!(seen, expected, "the TCP client saw every client's message");
    let mut lines = sub.messages(4);
    lines.sort();
    assert_eq!(lines, expected);
    broker.stop();
}
