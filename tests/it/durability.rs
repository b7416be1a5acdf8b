//! Persistence (`PERSISTENCE_DIR`): the real broker binary is killed with SIGKILL and started
//! again on the same directory; what it acknowledged must still be there.

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use mqtt_broker::mqtt::{
    read_packet, Ack, Connect, Packet, ProtocolVersion, Publish, QoS, ReasonCode, SubAck,
    Subscribe, SubscribeProperties, SubscriptionOptions,
};

use crate::child_broker::{free_port, start_expecting_failure, ChildBroker, TempDir};
use crate::support::{connect_packet, pid, publish_packet, will, RawClient};

/// Offline queues in these tests hold more than the default 1000 messages.
const BIG_QUEUES: &[(&str, &str)] = &[("MAX_QUEUED_MESSAGES", "1000000")];

/// A new store directory named after `name`, a free port, and the broker binary started on
/// them with the environment `env`.
fn start_fresh(name: &str, env: &[(&str, &str)]) -> (TempDir, u16, ChildBroker) {
    let dir = TempDir::new(name);
    let port = free_port();
    let broker = ChildBroker::start(dir.path(), port, env);
    (dir, port, broker)
}

/// Reads PUBLISH packets as a subscriber, acknowledging each (the whole QoS 2 flow), until
/// nothing arrives for `quiet` or `until` returns true.
fn receive_all(
    client: &mut RawClient,
    quiet: Duration,
    mut until: impl FnMut(&[Publish]) -> bool,
) -> Vec<Publish> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline && !until(&got) {
        match client.try_recv(quiet) {
            Ok(Packet::Publish(publish)) => {
                if let Some(id) = publish.packet_id {
                    match publish.qos {
                        QoS::AtLeastOnce => client.send(&Packet::PubAck(Ack::new(id))),
                        QoS::ExactlyOnce => client.send(&Packet::PubRec(Ack::new(id))),
                        QoS::AtMostOnce => {}
                    }
                }
                got.push(publish);
            }
            Ok(Packet::PubRel(ack)) => client.send(&Packet::PubComp(Ack::new(ack.packet_id))),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => break,
        }
    }
    got
}

fn subscribe_v5(client: &mut RawClient, filter: &str, identifier: u32) {
    client.send(&Packet::Subscribe(Subscribe {
        packet_id: pid(1),
        filters: vec![(
            filter.into(),
            SubscriptionOptions {
                qos: QoS::ExactlyOnce,
                retain_as_published: true,
                ..Default::default()
            },
        )],
        properties: SubscribeProperties {
            subscription_identifier: Some(identifier),
            ..Default::default()
        },
    }));
    match client.recv() {
        Packet::SubAck(SubAck { reasons, .. }) => assert_eq!(reasons.len(), 1),
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

#[test]
fn sessions_queues_and_retained_messages_survive_sigkill() {
    let (dir, port, broker) = start_fresh("survive", &[]);

    // A v5 session with an identifier and Retain As Published, and a 3.1.1 one.
    let mut connect = connect_packet("v5-sub", ProtocolVersion::V5, true);
    connect.properties.session_expiry_interval = Some(3600);
    let (mut v5, _) = RawClient::connect_with(broker.addr, connect.clone());
    subscribe_v5(&mut v5, "t/#", 7);
    v5.disconnect();
    let (mut v3, _) = RawClient::connect(broker.addr, "v3-sub", ProtocolVersion::V3_1_1, false);
    v3.subscribe(1, &[("t/#", QoS::AtLeastOnce)]);
    v3.disconnect();

    let (mut publisher, _) = RawClient::connect(broker.addr, "pub", ProtocolVersion::V3_1_1, true);
    publisher.publish("t/1", b"one", QoS::AtLeastOnce, false, 1);
    publisher.publish("t/2", b"two", QoS::ExactlyOnce, true, 2);
    publisher.publish("t/3", b"three", QoS::AtLeastOnce, false, 3);
    broker.kill();

    let broker = ChildBroker::start(dir.path(), port, &[]);
    connect.clean_start = false;
    let (mut v5, connack) = RawClient::connect_with(broker.addr, connect);
    assert!(connack.session_present, "the v5 session came back");
    let got = receive_all(&mut v5, Duration::from_secs(3), |got| got.len() == 3);
    let summary: Vec<_> = got
        .iter()
        .map(|p| {
            (
                p.topic.as_str(),
                p.qos,
                p.retain,
                p.properties.subscription_identifiers.clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("t/1", QoS::AtLeastOnce, false, vec![7]),
            ("t/2", QoS::ExactlyOnce, true, vec![7]),
            ("t/3", QoS::AtLeastOnce, false, vec![7]),
        ]
    );
    let (mut v3, connack) =
        RawClient::connect(broker.addr, "v3-sub", ProtocolVersion::V3_1_1, false);
    assert!(connack.session_present, "the 3.1.1 session came back");
    let got = receive_all(&mut v3, Duration::from_secs(3), |got| got.len() == 3);
    let payloads: Vec<_> = got.iter().map(|p| &p.payload[..]).collect();
    assert_eq!(payloads, [&b"one"[..], b"two", b"three"]);
    assert!(got.iter().all(|p| p.qos == QoS::AtLeastOnce));

    // Subscriptions are live again: a new message reaches the 3.1.1 session.
    let (mut publisher, _) = RawClient::connect(broker.addr, "pub", ProtocolVersion::V3_1_1, true);
    publisher.publish("t/4", b"four", QoS::AtLeastOnce, false, 1);
    assert_eq!(v3.recv_publish().payload[..], b"four"[..]);

    // The retained message is there for a new subscriber.
    let (mut fresh, _) = RawClient::connect(broker.addr, "fresh", ProtocolVersion::V3_1_1, true);
    fresh.subscribe(1, &[("t/#", QoS::AtLeastOnce)]);
    let retained = fresh.recv_publish();
    assert_eq!((retained.topic.as_str(), retained.retain), ("t/2", true));
    fresh.expect_nothing(Duration::from_millis(300));
}

#[test]
fn in_flight_messages_are_resent_after_a_restart_pubrel_first() {
    let (dir, port, broker) = start_fresh("inflight", &[]);
    let (mut sub, _) = RawClient::connect(broker.addr, "sub", ProtocolVersion::V3_1_1, false);
    sub.subscribe(1, &[("f/#", QoS::ExactlyOnce)]);
    let (mut publisher, _) = RawClient::connect(broker.addr, "pub", ProtocolVersion::V3_1_1, true);
    publisher.publish("f/2", b"two", QoS::ExactlyOnce, false, 1);
    publisher.publish("f/1", b"one", QoS::AtLeastOnce, false, 2);
    let first = sub.recv_publish();
    let second = sub.recv_publish();
    assert_eq!(first.payload[..], b"two"[..]);
    let (two_id, one_id) = (
        first.packet_id.expect("QoS 2"),
        second.packet_id.expect("QoS 1"),
    );
    // PUBREC for the QoS 2 message; the QoS 1 one stays unacknowledged.
    sub.send(&Packet::PubRec(Ack::new(two_id)));
    match sub.recv() {
        Packet::PubRel(ack) => assert_eq!(ack.packet_id, two_id),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    // One more acknowledged PUBLISH: its PUBACK follows the commit of everything before it.
    publisher.publish("other", b"x", QoS::AtLeastOnce, false, 3);
    broker.kill();

    let broker = ChildBroker::start(dir.path(), port, &[]);
    let (mut sub, connack) = RawClient::connect(broker.addr, "sub", ProtocolVersion::V3_1_1, false);
    assert!(connack.session_present);
    match sub.recv() {
        Packet::PubRel(ack) => assert_eq!(ack.packet_id, two_id, "PUBREL comes first"),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    let again = sub.recv_publish();
    assert!(again.dup, "resent with DUP");
    assert_eq!(again.packet_id, Some(one_id), "with the same packet id");
    assert_eq!(again.payload[..], b"one"[..]);
    sub.send(&Packet::PubComp(Ack::new(two_id)));
    sub.send(&Packet::PubAck(Ack::new(one_id)));
    sub.expect_nothing(Duration::from_millis(300));
}

/// Sends PUBREL for packet id `id` as a publisher and expects its PUBCOMP.
fn release(publisher: &mut RawClient, id: u16) {
    publisher.send(&Packet::PubRel(Ack::new(pid(id))));
    match publisher.recv() {
        Packet::PubComp(ack) => assert_eq!(ack.packet_id, pid(id)),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
}

/// A held QoS 2 message (PUBREC sent, PUBREL awaited) is stored before its PUBREC: after
/// SIGKILL the publisher's PUBREL routes it, exactly once, to the persistent subscriber; its
/// routing is stored before PUBCOMP, so a PUBREL repeated after another SIGKILL routes nothing.
#[test]
fn a_held_qos2_message_is_routed_once_by_its_pubrel_after_sigkill() {
    let (dir, port, broker) = start_fresh("held-qos2", &[]);
    let (mut sub, _) = RawClient::connect(broker.addr, "q2-sub", ProtocolVersion::V3_1_1, false);
    sub.subscribe(1, &[("q2/#", QoS::ExactlyOnce)]);
    sub.disconnect();
    let (mut publisher, _) =
        RawClient::connect(broker.addr, "q2-pub", ProtocolVersion::V3_1_1, false);
    publisher.send(&publish_packet("q2/x", b"held", QoS::ExactlyOnce, false, 7));
    match publisher.recv() {
        Packet::PubRec(ack) => assert_eq!(ack.packet_id, pid(7)),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    broker.kill();

    let broker = ChildBroker::start(dir.path(), port, &[]);
    let (mut publisher, connack) =
        RawClient::connect(broker.addr, "q2-pub", ProtocolVersion::V3_1_1, false);
    assert!(connack.session_present, "the publisher's session came back");
    // A resent PUBLISH of the held id is only acknowledged again: not a second message.
    let mut resent = publish_packet("q2/x", b"held", QoS::ExactlyOnce, false, 7);
    if let Packet::Publish(publish) = &mut resent {
        publish.dup = true;
    }
    publisher.send(&resent);
    match publisher.recv() {
        Packet::PubRec(ack) => assert_eq!(ack.packet_id, pid(7)),
        other => panic!("expected PUBREC again, got {other:?}"),
    }
    release(&mut publisher, 7);
    broker.kill();

    // PUBCOMP came after the commit: the message is queued and no longer held.
    let broker = ChildBroker::start(dir.path(), port, &[]);
    let (mut publisher, _) =
        RawClient::connect(broker.addr, "q2-pub", ProtocolVersion::V3_1_1, false);
    release(&mut publisher, 7);
    publisher.ping();
    let (mut sub, connack) =
        RawClient::connect(broker.addr, "q2-sub", ProtocolVersion::V3_1_1, false);
    assert!(connack.session_present);
    let got = receive_all(&mut sub, Duration::from_secs(2), |_| false);
    let summary: Vec<_> = got
        .iter()
        .map(|p| (p.topic.as_str(), &p.payload[..], p.qos))
        .collect();
    assert_eq!(
        summary,
        [("q2/x", &b"held"[..], QoS::ExactlyOnce)],
        "exactly once"
    );
}

/// A publisher that survives broker restarts: it sends `total` messages numbered from 0 (even:
/// QoS 1, odd: QoS 2), 20 at a time, and records each one acknowledged (PUBACK or PUBREC).
/// Messages not acknowledged when the connection breaks are not sent again. Its session is
/// kept, and a QoS 2 message answered with PUBREC is released (PUBREL) again after each
/// reconnect until PUBCOMP comes, as a client must: the broker routes QoS 2 on PUBREL.
fn crash_publisher(
    addr: SocketAddr,
    total: u32,
    acked: Arc<Mutex<Vec<u32>>>,
    progress: Arc<AtomicUsize>,
    done: Arc<AtomicBool>,
) {
    let mut next = 0u32;
    // QoS 2 ids answered with PUBREC and not yet with PUBCOMP, oldest first.
    let mut unreleased: Vec<u16> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(50);
    while (next < total || !unreleased.is_empty()) && Instant::now() < deadline {
        let Ok(stream) = TcpStream::connect(addr) else {
            thread::sleep(Duration::from_millis(20));
            continue;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let Ok(reader) = stream.try_clone() else {
            continue;
        };
        let mut reader = BufReader::new(reader);
        let mut writer = stream;
        let mut body = Vec::new();
        let send = |writer: &mut TcpStream, packet: &Packet| {
            let mut bytes = Vec::new();
            packet.encode(ProtocolVersion::V3_1_1, &mut bytes);
            writer.write_all(&bytes).is_ok()
        };
        let connect = connect_packet("crash-pub", ProtocolVersion::V3_1_1, false);
        if !send(&mut writer, &Packet::Connect(Box::new(connect))) {
            continue;
        }
        match read_packet(&mut reader, ProtocolVersion::V3_1_1, 1 << 20, &mut body) {
            Ok(Packet::ConnAck(_)) => {}
            _ => continue,
        }
        // Released again before anything new, in order.
        let mut pubcomps = unreleased.len();
        for &id in &unreleased {
            if let Some(id) = mqtt_broker::mqtt::PacketId::new(id) {
                if !send(&mut writer, &Packet::PubRel(Ack::new(id))) {
                    break;
                }
            }
        }
        'chunks: while next < total || pubcomps > 0 {
            let end = (next + 20).min(total);
            let mut waiting: HashMap<u16, u32> = HashMap::new();
            for n in next..end {
                let qos = if n % 2 == 0 {
                    QoS::AtLeastOnce
                } else {
                    QoS::ExactlyOnce
                };
                let id = (n % 60_000) as u16 + 1;
                waiting.insert(id, n);
                let packet = publish_packet("crash/seq", &n.to_be_bytes(), qos, false, id);
                if !send(&mut writer, &packet) {
                    next = end;
                    break 'chunks;
                }
            }
            next = end;
            while !waiting.is_empty() || pubcomps > 0 {
                let packet =
                    match read_packet(&mut reader, ProtocolVersion::V3_1_1, 1 << 20, &mut body) {
                        Ok(packet) => packet,
                        Err(_) => break 'chunks,
                    };
                match packet {
                    Packet::PubAck(ack) => {
                        if let Some(n) = waiting.remove(&ack.packet_id.get()) {
                            acked.lock().expect("lock").push(n);
                        }
                    }
                    Packet::PubRec(ack) => {
                        if let Some(n) = waiting.remove(&ack.packet_id.get()) {
                            acked.lock().expect("lock").push(n);
                            pubcomps += 1;
                            unreleased.push(ack.packet_id.get());
                            if !send(&mut writer, &Packet::PubRel(Ack::new(ack.packet_id))) {
                                break 'chunks;
                            }
                        }
                    }
                    Packet::PubComp(ack) => {
                        if let Some(at) =
                            unreleased.iter().position(|&id| id == ack.packet_id.get())
                        {
                            unreleased.remove(at);
                            pubcomps -= 1;
                        }
                    }
                    _ => {}
                }
                progress.store(acked.lock().expect("lock").len(), Ordering::Relaxed);
            }
        }
    }
    done.store(true, Ordering::Release);
}

#[test]
fn every_acknowledged_message_survives_repeated_sigkill() {
    const TOTAL: u32 = 4000;
    const KILLS: usize = 4;
    let (dir, port, mut broker) = start_fresh("crash", BIG_QUEUES);

    let (mut sub, _) = RawClient::connect(broker.addr, "crash-sub", ProtocolVersion::V3_1_1, false);
    sub.subscribe(1, &[("crash/#", QoS::ExactlyOnce)]);
    sub.disconnect();
    let (mut keeper, _) = RawClient::connect(broker.addr, "keeper", ProtocolVersion::V3_1_1, true);
    keeper.publish("keep/me", b"retained", QoS::AtLeastOnce, true, 1);
    drop(keeper);

    let acked = Arc::new(Mutex::new(Vec::new()));
    let progress = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (acked, progress, done) = (acked.clone(), progress.clone(), done.clone());
        let addr = broker.addr;
        thread::spawn(move || crash_publisher(addr, TOTAL, acked, progress, done))
    };
    // Kill points spread over the run, at pseudo-random message counts.
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.subsec_nanos() as usize | 1);
    let mut points: Vec<usize> = (0..KILLS)
        .map(|k| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let span = TOTAL as usize / (KILLS + 1);
            span * k + span / 2 + (seed >> 33) % span
        })
        .collect();
    points.sort_unstable();
    let mut kills = 0;
    for point in points {
        while progress.load(Ordering::Relaxed) < point && !done.load(Ordering::Acquire) {
            thread::sleep(Duration::from_millis(2));
        }
        if done.load(Ordering::Acquire) {
            break;
        }
        broker.kill();
        kills += 1;
        thread::sleep(Duration::from_millis(50));
        broker = ChildBroker::start(dir.path(), port, BIG_QUEUES);
    }
    publisher.join().expect("publisher thread");
    assert!(
        kills >= 2,
        "the broker was killed mid-stream ({kills} times)"
    );
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() > TOTAL as usize / 2,
        "most messages were acknowledged ({})",
        acked.len()
    );

    // One more kill after the last acknowledgement, then the subscriber returns.
    broker.kill();
    let broker = ChildBroker::start(dir.path(), port, BIG_QUEUES);
    let (mut sub, connack) =
        RawClient::connect(broker.addr, "crash-sub", ProtocolVersion::V3_1_1, false);
    assert!(connack.session_present, "the subscription survived");
    let wanted = acked.len();
    let got = receive_all(&mut sub, Duration::from_secs(3), |got| {
        got.len() >= TOTAL as usize
    });
    let seqs: Vec<u32> = got
        .iter()
        .map(|p| u32::from_be_bytes(p.payload[..4].try_into().expect("4-byte payload")))
        .collect();
    // In order, and nothing twice (this publisher never resends a PUBLISH, so QoS 1 has no
    // duplicate either); QoS 2 ones arrive as QoS 2. QoS 2 messages are routed on PUBREL (as
    // mosquitto routes them), so order holds among the QoS 1 ones and among the QoS 2 ones.
    for parity in [0, 1] {
        let same: Vec<u32> = seqs.iter().copied().filter(|s| s % 2 == parity).collect();
        assert!(
            same.windows(2).all(|w| w[0] < w[1]),
            "QoS {} messages in publish order, none twice",
            parity + 1
        );
    }
    for (publish, seq) in got.iter().zip(&seqs) {
        let qos = if seq % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        assert_eq!(publish.qos, qos, "message {seq}");
    }
    eprintln!(
        "crash test: {kills} kills, {wanted} of {TOTAL} acknowledged, {} received",
        seqs.len()
    );
    let received: std::collections::HashSet<u32> = seqs.iter().copied().collect();
    let lost: Vec<u32> = acked
        .iter()
        .copied()
        .filter(|n| !received.contains(n))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {wanted} acknowledged messages lost after {kills} kills, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );

    // The retained message is intact.
    let (mut fresh, _) = RawClient::connect(broker.addr, "fresh", ProtocolVersion::V3_1_1, true);
    fresh.subscribe(1, &[("keep/#", QoS::AtLeastOnce)]);
    assert_eq!(fresh.recv_publish().payload[..], b"retained"[..]);
}

#[test]
fn a_damaged_store_is_refused_with_a_clear_error_and_can_be_reset() {
    let (dir, port, broker) = start_fresh("corrupt", &[]);
    let (mut sub, _) = RawClient::connect(broker.addr, "sub", ProtocolVersion::V3_1_1, false);
    sub.subscribe(1, &[("c/#", QoS::AtLeastOnce)]);
    sub.disconnect();
    let (mut publisher, _) = RawClient::connect(broker.addr, "pub", ProtocolVersion::V3_1_1, true);
    for n in 0..50u16 {
        publisher.publish("c/x", &[7; 100], QoS::AtLeastOnce, true, n + 1);
    }
    assert_eq!(broker.terminate().code(), Some(0), "clean stop on SIGTERM");

    let file = dir.path().join("mqtt-broker.redb");
    for damage in ["garbage", "truncated"] {
        let bytes = std::fs::read(&file).expect("the store file");
        let damaged = match damage {
            // Every byte after the first page overwritten: headers intact, trees not.
            "garbage" => {
                let mut bytes = bytes;
                for (i, b) in bytes.iter_mut().enumerate().skip(4096) {
                    *b = (i as u8).wrapping_mul(31) ^ 0x5A;
                }
                bytes
            }
            _ => bytes[..bytes.len() / 3].to_vec(),
        };
        std::fs::write(&file, &damaged).expect("damage the store");
        let (status, log) = start_expecting_failure(dir.path(), &[], &[]);
        assert!(!status.success(), "{damage}: refused to start");
        assert!(!log.contains("panicked"), "{damage}: no panic: {log}");
        assert!(
            log.contains("mqtt-broker.redb"),
            "{damage}: names the file: {log}"
        );
        assert!(
            log.contains("--reset-corrupt-store"),
            "{damage}: says what to do: {log}"
        );

        let broker =
            ChildBroker::start_with_args(dir.path(), free_port(), &[], &["--reset-corrupt-store"]);
        let (mut sub, connack) =
            RawClient::connect(broker.addr, "sub", ProtocolVersion::V3_1_1, false);
        assert!(!connack.session_present, "{damage}: started empty");
        sub.ping();
        assert!(broker.log().iter().any(|l| l.contains("moved it to")));
        assert_eq!(broker.terminate().code(), Some(0));
        let aside = std::fs::read_dir(dir.path())
            .expect("list")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
            .count();
        assert!(aside >= 1, "{damage}: the damaged file was kept aside");
        // Leave a valid store with data for the next kind of damage.
        let broker = ChildBroker::start(dir.path(), port, &[]);
        let (mut publisher, _) =
            RawClient::connect(broker.addr, "pub", ProtocolVersion::V3_1_1, true);
        for n in 0..50u16 {
            publisher.publish("c/y", &[9; 100], QoS::AtLeastOnce, true, n + 1);
        }
        let _ = broker.terminate();
    }
}

#[test]
fn persistent_client_expiration_removes_abandoned_3_1_1_sessions() {
    use crate::support::{config_with, start_broker_with};
    let broker = start_broker_with(config_with(|c| {
        c.persistent_client_expiration = Some(Duration::from_secs(1));
    }));
    let (mut old, _) = RawClient::connect(broker.addr, "abandoned", ProtocolVersion::V3_1_1, false);
    old.subscribe(1, &[("a/#", QoS::AtLeastOnce)]);
    old.disconnect();
    // An MQTT 5 session that asked never to expire is capped too: mosquitto 2.0 keeps every
    // offline session at most persistent_client_expiration (the shorter of the two).
    let mut connect = connect_packet("v5-forever", ProtocolVersion::V5, true);
    connect.properties.session_expiry_interval = Some(u32::MAX);
    let (v5, _) = RawClient::connect_with(broker.addr, connect.clone());
    v5.disconnect();
    thread::sleep(Duration::from_millis(2500));
    let (_, connack) = RawClient::connect(broker.addr, "abandoned", ProtocolVersion::V3_1_1, false);
    assert!(!connack.session_present, "the 3.1.1 session expired");
    connect.clean_start = false;
    let (_, connack) = RawClient::connect_with(broker.addr, connect);
    assert!(!connack.session_present, "the v5 session expired too");
}

/// The broker's resident memory, from /proc.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

/// A million QoS 1 messages (50,000 in a debug build, whose broker is several times
/// slower: run `cargo test --release --test it big_offline_queue`, or set MQTT_BROKER_BIN to a
/// release build and BIG_QUEUE_MESSAGES=1000000, for the full million) wait for
/// one offline session; the broker is killed and restarted on them; its memory stays under
/// 100 MB while they pile up and while they are delivered, in order, when the subscriber
/// returns.
#[test]
fn a_big_offline_queue_lives_on_disk_and_arrives_in_order() {
    let total: u32 = std::env::var("BIG_QUEUE_MESSAGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) {
            50_000
        } else {
            1_000_000
        });
    const LIMIT_KIB: u64 = 100 * 1024;
    let (dir, port, broker) = start_fresh("bigqueue", &[("MAX_QUEUED_MESSAGES", "2000000")]);
    let pid = broker.pid();
    let (mut sub, _) = RawClient::connect(broker.addr, "big-sub", ProtocolVersion::V3_1_1, false);
    sub.subscribe(1, &[("big/#", QoS::AtLeastOnce)]);
    sub.disconnect();

    let started = Instant::now();
    let mut peak = 0u64;
    let (mut publisher, _) =
        RawClient::connect(broker.addr, "big-pub", ProtocolVersion::V3_1_1, true);
    let mut sent = 0u32;
    let mut acked = 0u32;
    let mut bytes = Vec::new();
    while acked < total {
        // Up to 1000 unacknowledged, written in batches of 200.
        bytes.clear();
        while sent < total && sent - acked < 1000 && bytes.len() < 200 * 40 {
            let id = (sent % 65_000) as u16 + 1;
            publish_packet("big/q", &sent.to_be_bytes(), QoS::AtLeastOnce, false, id)
                .encode(ProtocolVersion::V3_1_1, &mut bytes);
            sent += 1;
        }
        if !bytes.is_empty() {
            publisher.send_raw(&bytes);
        }
        match publisher.recv() {
            Packet::PubAck(_) => acked += 1,
            other => panic!("expected PUBACK, got {other:?}"),
        }
        if acked.is_multiple_of(10_000) {
            peak = peak.max(rss_kib(pid));
        }
    }
    let queued_in = started.elapsed();
    peak = peak.max(rss_kib(pid));
    // Killed with the queue on disk: start-up recovers it (the figure goes in BENCHMARKS.md).
    broker.kill();
    let restarting = Instant::now();
    let broker = ChildBroker::start(dir.path(), port, &[("MAX_QUEUED_MESSAGES", "2000000")]);
    let start_up = restarting.elapsed();
    let pid = broker.pid();

    let started = Instant::now();
    let (mut sub, connack) =
        RawClient::connect(broker.addr, "big-sub", ProtocolVersion::V3_1_1, false);
    assert!(connack.session_present);
    let mut next = 0u32;
    while next < total {
        let publish = match sub.recv() {
            Packet::Publish(publish) => publish,
            other => panic!("expected PUBLISH, got {other:?}"),
        };
        let n = u32::from_be_bytes(publish.payload[..4].try_into().expect("4 bytes"));
        assert_eq!(n, next, "in order, none lost or repeated");
        next += 1;
        sub.send(&Packet::PubAck(Ack::new(publish.packet_id.expect("QoS 1"))));
        if next.is_multiple_of(10_000) {
            peak = peak.max(rss_kib(pid));
        }
    }
    let delivered_in = started.elapsed();
    // Everything delivered: the file is mostly free pages, and is compacted at the next start
    // when that is worth it (more than 16 MiB).
    sub.ping();
    assert_eq!(broker.terminate().code(), Some(0));
    let file = dir.path().join("mqtt-broker.redb");
    let before = std::fs::metadata(&file).map_or(0, |m| m.len());
    let broker = ChildBroker::start(dir.path(), port, &[]);
    let after = std::fs::metadata(&file).map_or(0, |m| m.len());
    eprintln!(
        "big queue: {total} messages queued in {:.1} s, start-up after SIGKILL {:.2} s, \
         delivered in {:.1} s, peak RSS {} KiB, store {before} bytes then {after} after the \
         next start",
        queued_in.as_secs_f64(),
        start_up.as_secs_f64(),
        delivered_in.as_secs_f64(),
        peak
    );
    assert!(peak < LIMIT_KIB, "peak RSS {peak} KiB");
    if before > 16 * 1024 * 1024 {
        assert!(
            after < before / 2,
            "compacted at start: {before} -> {after}"
        );
    }
    drop(broker);
}

#[test]
fn expiry_goes_on_while_the_broker_is_down_and_clean_sessions_are_not_kept() {
    use mqtt_broker::mqtt::PublishProperties;
    let (dir, port, broker) = start_fresh("expiry", &[]);
    // A v5 session that expires 2 s after it ends, one that lasts an hour, and a clean one.
    let mut short = connect_packet("short", ProtocolVersion::V5, true);
    short.properties.session_expiry_interval = Some(2);
    let (client, _) = RawClient::connect_with(broker.addr, short.clone());
    client.disconnect();
    let mut long = connect_packet("long", ProtocolVersion::V5, true);
    long.properties.session_expiry_interval = Some(3600);
    let (mut client, _) = RawClient::connect_with(broker.addr, long.clone());
    subscribe_v5(&mut client, "e/#", 1);
    client.disconnect();
    let (mut clean, _) = RawClient::connect(broker.addr, "clean", ProtocolVersion::V3_1_1, true);
    clean.subscribe(1, &[("e/#", QoS::AtLeastOnce)]);
    // Two queued messages for "long": one expires in 1 s, one never.
    let (mut publisher, _) = RawClient::connect(broker.addr, "pub", ProtocolVersion::V5, true);
    let mut expiring = publish_packet("e/1", b"expires", QoS::AtLeastOnce, false, 1);
    if let Packet::Publish(p) = &mut expiring {
        p.properties = PublishProperties {
            message_expiry_interval: Some(1),
            ..Default::default()
        };
    }
    publisher.send(&expiring);
    assert!(matches!(publisher.recv(), Packet::PubAck(_)));
    publisher.publish("e/2", b"stays", QoS::AtLeastOnce, false, 2);
    broker.kill();

    // Down for longer than both the short session and the message have to live.
    thread::sleep(Duration::from_millis(3000));
    let broker = ChildBroker::start(dir.path(), port, &[]);
    short.clean_start = false;
    let (_, connack) = RawClient::connect_with(broker.addr, short);
    assert!(
        !connack.session_present,
        "expired while the broker was down"
    );
    let (_, connack) = RawClient::connect(broker.addr, "clean", ProtocolVersion::V3_1_1, false);
    assert!(!connack.session_present, "a clean session is not kept");
    long.clean_start = false;
    let (mut client, connack) = RawClient::connect_with(broker.addr, long);
    assert!(connack.session_present);
    let got = receive_all(&mut client, Duration::from_secs(1), |got| !got.is_empty());
    let payloads: Vec<_> = got.iter().map(|p| &p.payload[..]).collect();
    assert_eq!(payloads, [&b"stays"[..]], "the expired message was dropped");
    client.expect_nothing(Duration::from_millis(300));
}

/// Messages routed to a recovered session before its client reconnects are checked against
/// the client's read ACL (rebuilt from the identity stored with the session).
#[test]
fn messages_queued_before_the_client_returns_after_a_restart_are_checked_against_its_acl() {
    let dir = TempDir::new("acl-restart");
    let port = free_port();
    let conf = acl_config(
        dir.path(),
        "topic readwrite allowed/#\ntopic write denied/#\n",
    );
    let args = ["-c", conf.as_str()];
    let broker = ChildBroker::start_with_args(dir.path(), port, &[], &args);
    let (mut sub, _) = RawClient::connect(broker.addr, "acl-sub", ProtocolVersion::V3_1_1, false);
    sub.subscribe(1, &[("#", QoS::AtLeastOnce)]);
    // PINGRESP waits for the commit of what came before it: the subscription is stored.
    sub.ping();
    sub.disconnect();
    broker.kill();

    let broker = ChildBroker::start_with_args(dir.path(), port, &[], &args);
    let (mut publisher, _) =
        RawClient::connect(broker.addr, "acl-pub", ProtocolVersion::V3_1_1, true);
    publisher.publish("denied/x", b"secret", QoS::AtLeastOnce, false, 1);
    publisher.publish("allowed/x", b"fine", QoS::AtLeastOnce, false, 2);
    let (mut sub, connack) =
        RawClient::connect(broker.addr, "acl-sub", ProtocolVersion::V3_1_1, false);
    assert!(connack.session_present, "{:?}", broker.log());
    let got = receive_all(&mut sub, Duration::from_secs(2), |_| false);
    let topics: Vec<_> = got.iter().map(|p| p.topic.as_str()).collect();
    assert_eq!(topics, ["allowed/x"], "{:?}", broker.log());
}

/// The broker's own retained `$SYS` topics are not stored: after a restart with `$SYS` off,
/// none of the old ones is delivered.
#[test]
fn sys_topics_are_not_stored() {
    let (dir, port, broker) = start_fresh("sys", &[("SYS_INTERVAL", "1")]);
    let (mut watcher, _) =
        RawClient::connect(broker.addr, "watcher", ProtocolVersion::V3_1_1, true);
    watcher.subscribe(1, &[("$SYS/broker/uptime", QoS::AtMostOnce)]);
    let uptime = watcher.recv_publish();
    assert_eq!(uptime.topic, "$SYS/broker/uptime");
    // PINGRESP waits for the commit of everything sent to the store before it.
    watcher.ping();
    broker.kill();

    let broker = ChildBroker::start(dir.path(), port, &[("SYS_INTERVAL", "0")]);
    let (mut watcher, _) =
        RawClient::connect(broker.addr, "watcher", ProtocolVersion::V3_1_1, true);
    watcher.subscribe(1, &[("$SYS/#", QoS::AtMostOnce)]);
    watcher.expect_nothing(Duration::from_millis(500));
}

/// An MQTT 5 session that went away with a delayed will: the will is stored with the session,
/// due `will_delay_interval` after the disconnection on the wall clock (or when the session
/// ends, if sooner). A broker killed meanwhile publishes at start what fell due while it was
/// down, waits out the rest of the others' delays, and publishes none twice.
#[test]
fn delayed_wills_survive_sigkill_and_fall_due_on_the_wall_clock() {
    let (dir, port, broker) = start_fresh("wills", &[]);
    let watcher = watch_wills(broker.addr, "watcher");
    // (name, will delay, session expiry): "soon" falls due while the broker is down, "ends"
    // with its session (which expires while the broker is down), "later" after the restart.
    let leavers = [("soon", 2, 3600), ("ends", 3600, 1), ("later", 15, 3600)];
    for (name, delay, expiry) in leavers {
        let connect = leaving_with_will(name, None, &format!("will/{name}"), delay, expiry);
        let (client, _) = RawClient::connect_with(broker.addr, connect);
        client.drop_connection();
    }
    kill_once_stored(broker);
    let killed = Instant::now();

    thread::sleep(Duration::from_millis(2500));
    let broker = ChildBroker::start(dir.path(), port, &[]);
    let (mut client, _) = RawClient::connect_with(broker.addr, watcher.clone());
    let topics = |got: &[Publish]| -> Vec<String> {
        let mut topics: Vec<String> = got.iter().map(|p| p.topic.clone()).collect();
        topics.sort();
        topics
    };
    let got = receive_all(&mut client, Duration::from_millis(1000), |got| {
        got.len() >= 2
    });
    assert_eq!(topics(&got), ["will/ends", "will/soon"], "due at start");
    if killed.elapsed() < Duration::from_secs(12) {
        let early = receive_all(&mut client, Duration::from_millis(500), |_| false);
        assert!(early.is_empty(), "published before its delay: {early:?}");
    }
    // "later" is published when its delay, counted from its disconnection, has passed.
    let got = receive_all(&mut client, Duration::from_secs(30), |got| !got.is_empty());
    assert_eq!(topics(&got), ["will/later"]);
    assert!(
        killed.elapsed() >= Duration::from_secs(10),
        "not before its delay"
    );
    client.disconnect();

    // Published wills are not stored any more: a second crash publishes none again.
    thread::sleep(Duration::from_millis(300));
    broker.kill();
    let broker = ChildBroker::start(dir.path(), port, &[]);
    let (mut client, _) = RawClient::connect_with(broker.addr, watcher);
    let again = receive_all(&mut client, Duration::from_millis(1500), |_| false);
    assert!(again.is_empty(), "published again: {again:?}");
    drop(broker);
}

/// Connects an MQTT 5 client `id` with a one-hour session, subscribes it to `will/#` and
/// leaves; returns its CONNECT for coming back (clean start off).
fn watch_wills(addr: SocketAddr, id: &str) -> Connect {
    let mut watcher = connect_packet(id, ProtocolVersion::V5, true);
    watcher.properties.session_expiry_interval = Some(3600);
    let (mut client, _) = RawClient::connect_with(addr, watcher.clone());
    client.subscribe(1, &[("will/#", QoS::AtLeastOnce)]);
    client.disconnect();
    watcher.clean_start = false;
    watcher
}

/// The CONNECT of an MQTT 5 client `id` (of `username`, if any) whose session lasts `expiry`
/// seconds and whose QoS 1 will on `topic`, with its id as payload, is delayed `delay` seconds.
fn leaving_with_will(
    id: &str,
    username: Option<&str>,
    topic: &str,
    delay: u32,
    expiry: u32,
) -> Connect {
    let mut connect = connect_packet(id, ProtocolVersion::V5, true);
    connect.username = username.map(Into::into);
    connect.properties.session_expiry_interval = Some(expiry);
    connect.will = will(topic, id.as_bytes(), QoS::AtLeastOnce, false);
    if let Some(will) = connect.will.as_mut() {
        will.properties.will_delay_interval = Some(delay);
    }
    connect
}

/// SIGKILL once what the broker was sent is stored: the disconnections are handled (given a
/// moment), and a PUBACK follows the commit of everything before it.
fn kill_once_stored(broker: ChildBroker) {
    thread::sleep(Duration::from_millis(300));
    let (mut publisher, _) = RawClient::connect(broker.addr, "pub", ProtocolVersion::V5, true);
    publisher.publish("other", b"x", QoS::AtLeastOnce, false, 1);
    broker.kill();
}

/// Writes the ACL file `rules` in `dir`; returns its path.
fn write_acl(dir: &Path, rules: &str) -> PathBuf {
    let acl = dir.join("acl");
    std::fs::write(&acl, rules).expect("acl file");
    acl
}

/// Writes an ACL file and a config file naming it (anonymous clients allowed) in `dir`; returns
/// the config file's path, for `-c`.
fn acl_config(dir: &Path, rules: &str) -> String {
    let acl = write_acl(dir, rules);
    let conf = dir.join("broker.conf");
    std::fs::write(
        &conf,
        format!("allow_anonymous true\nacl_file {}\n", acl.display()),
    )
    .expect("config file");
    conf.to_str().expect("utf-8 path").into()
}

/// A delayed will is checked against its client's ACL when it is sent, as mosquitto 2.0 does,
/// also when the broker was killed meanwhile: the session's stored identity (username and
/// listener) gives it back its ACL after the restart. A client denied write on a topic cannot
/// get a message onto it by leaving a delayed will and waiting for a restart; its wills to
/// topics it may write are published, whether they fell due while the broker was down or after.
#[test]
fn a_recovered_delayed_will_is_checked_against_its_clients_acl() {
    let dir = TempDir::new("will-acl");
    let port = free_port();
    // Anonymous clients read everything under will/; alice writes will/<her name>/ only.
    let rules = "topic read will/#\nuser alice\npattern write will/%u/#\n";
    let conf = acl_config(dir.path(), rules);
    let args = ["-c", conf.as_str()];
    let broker = ChildBroker::start_with_args(dir.path(), port, &[], &args);
    let watcher = watch_wills(broker.addr, "will-watcher");
    // (client id, will topic, will delay, session expiry): "soon" falls due while the broker
    // is down, "later" after the restart, "ends" with its session, which expires while the
    // broker is down (gone from the store at start).
    let leavers = [
        ("alice-1", "will/alice/soon", 1, 3600),
        ("alice-2", "will/secret/soon", 1, 3600),
        ("alice-3", "will/alice/later", 4, 3600),
        ("alice-4", "will/secret/later", 4, 3600),
        ("alice-5", "will/alice/ends", 3600, 1),
        ("alice-6", "will/secret/ends", 3600, 1),
    ];
    for (id, topic, delay, expiry) in leavers {
        let connect = leaving_with_will(id, Some("alice"), topic, delay, expiry);
        let (client, connack) = RawClient::connect_with(broker.addr, connect);
        assert_eq!(connack.reason, ReasonCode::Success);
        client.drop_connection();
    }
    kill_once_stored(broker);
    thread::sleep(Duration::from_millis(1500));

    let broker = ChildBroker::start_with_args(dir.path(), port, &[], &args);
    let (mut client, connack) = RawClient::connect_with(broker.addr, watcher);
    assert!(connack.session_present, "{:?}", broker.log());
    let mut got = receive_all(&mut client, Duration::from_secs(10), |got| got.len() >= 3);
    // Anything denied would be due with the allowed ones: give it time to show up.
    got.extend(receive_all(
        &mut client,
        Duration::from_millis(1500),
        |_| false,
    ));
    let mut topics: Vec<&str> = got.iter().map(|p| p.topic.as_str()).collect();
    topics.sort_unstable();
    assert_eq!(
        topics,
        ["will/alice/ends", "will/alice/later", "will/alice/soon"],
        "{:?}",
        broker.log()
    );
}

/// While a recovered session's client is away, what is routed to it is checked against its
/// rebuilt read ACL at once: messages it may not read take no room in its queue, so a message
/// it may read is not dropped for a full queue and arrives when it returns.
#[test]
fn a_recovered_session_reads_through_its_acl_before_its_client_returns() {
    let dir = TempDir::new("read-acl-restart");
    let port = free_port();
    let rules = "topic read public/#\ntopic write #\nuser alice\ntopic read alice/#\n";
    let conf = acl_config(dir.path(), rules);
    let args = ["-c", conf.as_str()];
    let env = [("MAX_QUEUED_MESSAGES", "3")];
    let broker = ChildBroker::start_with_args(dir.path(), port, &env, &args);
    let mut sub = connect_packet("alice-sub", ProtocolVersion::V3_1_1, false);
    sub.username = Some("alice".into());
    let (mut client, _) = RawClient::connect_with(broker.addr, sub.clone());
    client.subscribe(1, &[("#", QoS::AtLeastOnce)]);
    // PINGRESP waits for the commit of what came before it: the subscription is stored.
    client.ping();
    client.disconnect();
    thread::sleep(Duration::from_millis(300));
    broker.kill();

    let broker = ChildBroker::start_with_args(dir.path(), port, &env, &args);
    let (mut publisher, _) =
        RawClient::connect(broker.addr, "publisher", ProtocolVersion::V3_1_1, true);
    for (n, topic) in ["public/1", "public/2", "public/3"].into_iter().enumerate() {
        publisher.publish(
            topic,
            b"not for alice",
            QoS::AtLeastOnce,
            false,
            n as u16 + 1,
        );
    }
    publisher.publish("alice/1", b"for alice", QoS::AtLeastOnce, false, 9);
    let (mut client, connack) = RawClient::connect_with(broker.addr, sub);
    assert!(connack.session_present, "{:?}", broker.log());
    let got = receive_all(&mut client, Duration::from_secs(2), |_| false);
    let topics: Vec<&str> = got.iter().map(|p| p.topic.as_str()).collect();
    assert_eq!(topics, ["alice/1"], "{:?}", broker.log());
}

/// With `per_listener_settings`, a recovered session answers to the ACL of the listener it
/// connected through, found by its address. When that listener is gone after the restart, its
/// identity cannot be rebuilt: its will is not published (fail closed, logged with the client
/// and the topic), while the will of a session of a listener still there is.
#[test]
fn a_will_whose_listener_is_gone_after_a_restart_is_not_published() {
    let dir = TempDir::new("will-listener-gone");
    let (kept, gone) = (free_port(), free_port());
    let acl = write_acl(
        dir.path(),
        "topic read will/#\nuser alice\npattern write will/%u/#\n",
    );
    let conf = dir.path().join("broker.conf");
    let write_conf = |ports: &[u16]| {
        let mut text = String::from("per_listener_settings true\n");
        for port in ports {
            text.push_str(&format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nacl_file {}\n",
                acl.display()
            ));
        }
        std::fs::write(&conf, text).expect("config file");
    };
    let args = ["-c", conf.to_str().expect("utf-8 path")];
    write_conf(&[kept, gone]);
    let broker = ChildBroker::start_with_args(dir.path(), kept, &[], &args);
    let watcher = watch_wills(broker.addr, "watcher");
    for (id, port) in [("alice-kept", kept), ("alice-gone", gone)] {
        let topic = format!("will/alice/{id}");
        let connect = leaving_with_will(id, Some("alice"), &topic, 1, 3600);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let (client, connack) = RawClient::connect_with(addr, connect);
        assert_eq!(connack.reason, ReasonCode::Success);
        client.drop_connection();
    }
    kill_once_stored(broker);

    write_conf(&[kept]);
    let broker = ChildBroker::start_with_args(dir.path(), kept, &[], &args);
    let (mut client, connack) = RawClient::connect_with(broker.addr, watcher);
    assert!(connack.session_present, "{:?}", broker.log());
    let mut got = receive_all(&mut client, Duration::from_secs(5), |got| !got.is_empty());
    got.extend(receive_all(
        &mut client,
        Duration::from_millis(1500),
        |_| false,
    ));
    let topics: Vec<&str> = got.iter().map(|p| p.topic.as_str()).collect();
    assert_eq!(topics, ["will/alice/alice-kept"], "{:?}", broker.log());
    let log = broker.log();
    assert!(
        log.iter().any(|line| line.contains("alice-gone")
            && line.contains("will/alice/alice-gone")
            && line.contains("not published")),
        "{log:?}"
    );
}
