//! No client can hurt another: a stuck subscriber, a flooding QoS 1 publisher, trickling
//! handshakes and a retained flood, each beside a bystander whose own messages must stay on
//! time; and the broker's memory held to its budget of queued bytes while 1 GiB goes through.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mqtt_broker::mqtt::{
    Ack, ConnectProperties, Packet, ProtocolVersion, PublishProperties, QoS, ReasonCode,
};

use crate::support::{
    config_with, connect_packet, publish_packet, start_broker_with, will, RawClient,
};

/// Microseconds since the epoch: the bystander's payload, so its subscriber can tell the delay.
fn now_micros() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is past 1970");
    u64::try_from(since.as_micros()).expect("fits for a while yet")
}

/// A client pair beside each attack: a publisher sending 100 QoS 1 messages a second on a topic
/// of its own (waiting for each PUBACK, as a careful client does), and a subscriber reading
/// them. Both record the worst they saw.
struct Bystander {
    stop: Arc<AtomicBool>,
    publisher: JoinHandle<(u64, Duration)>,
    subscriber: JoinHandle<Vec<Duration>>,
}

/// What the bystander saw.
struct Seen {
    sent: u64,
    received: u64,
    /// How long messages took from publisher to subscriber: the 99th percentile and the worst.
    p99_delay: Duration,
    worst_delay: Duration,
    /// The longest the publisher waited for a PUBACK.
    worst_ack: Duration,
}

impl Bystander {
    fn start(addr: SocketAddr, name: &str) -> Bystander {
        let topic = format!("bystander/{name}");
        let (mut sub, _) =
            RawClient::connect(addr, &format!("{name}-sub"), ProtocolVersion::V3_1_1, true);
        sub.subscribe(1, &[(topic.as_str(), QoS::AtLeastOnce)]);
        let (mut publisher, _) =
            RawClient::connect(addr, &format!("{name}-pub"), ProtocolVersion::V3_1_1, true);
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let publisher = {
            let stop = Arc::clone(&stop);
            let sent = Arc::clone(&sent);
            thread::spawn(move || {
                let mut worst_ack = Duration::ZERO;
                let mut id = 0u16;
                while !stop.load(Ordering::Acquire) {
                    id = id % 60_000 + 1;
                    let started = Instant::now();
                    let stamp = now_micros().to_be_bytes();
                    publisher.publish(&topic, &stamp, QoS::AtLeastOnce, false, id);
                    worst_ack = worst_ack.max(started.elapsed());
                    sent.fetch_add(1, Ordering::AcqRel);
                    thread::sleep(Duration::from_millis(10));
                }
                (sent.load(Ordering::Acquire), worst_ack)
            })
        };
        let subscriber = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut delays = Vec::new();
                loop {
                    let received = delays.len() as u64;
                    match sub.try_recv(Duration::from_millis(200)) {
                        Ok(Packet::Publish(publish)) => {
                            let stamp = u64::from_be_bytes(
                                publish.payload[..8].try_into().expect("8 bytes"),
                            );
                            let delay = now_micros().saturating_sub(stamp);
                            delays.push(Duration::from_micros(delay));
                            sub.send(&Packet::PubAck(Ack::new(publish.packet_id.expect("QoS 1"))));
                        }
                        Ok(other) => panic!("bystander got {other:?}"),
                        // Quiet for a moment: done once told to stop and all have come.
                        Err(_)
                            if stop.load(Ordering::Acquire)
                                && received >= sent.load(Ordering::Acquire) =>
                        {
                            break
                        }
                        Err(_) if stop.load(Ordering::Acquire) => {
                            // Wait a little longer for the last ones.
                            match sub.try_recv(Duration::from_secs(2)) {
                                Ok(Packet::Publish(_)) => delays.push(Duration::from_secs(2)),
                                _ => break,
                            }
                        }
                        Err(_) => {}
                    }
                }
                delays
            })
        };
        Bystander {
            stop,
            publisher,
            subscriber,
        }
    }

    fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Release);
        let (sent, worst_ack) = self.publisher.join().expect("bystander publisher");
        let mut delays = self.subscriber.join().expect("bystander subscriber");
        delays.sort_unstable();
        let at = |q: f64| {
            let index = ((delays.len() as f64 * q) as usize).min(delays.len().saturating_sub(1));
            delays.get(index).copied().unwrap_or_default()
        };
        Seen {
            sent,
            received: delays.len() as u64,
            p99_delay: at(0.99),
            worst_delay: at(1.0),
            worst_ack,
        }
    }

    /// Asserts the bystander's messages all arrived, 99% of them within a second and every
    /// one within two (a margin for a loaded machine: here they take milliseconds), and that
    /// its publisher was never held for more than `ack_limit`.
    fn assert_on_time(self, ack_limit: Duration) {
        let seen = self.finish();
        eprintln!(
            "bystander: {} sent, {} received, delay p99 {:?}, worst {:?}, worst PUBACK wait {:?}",
            seen.sent, seen.received, seen.p99_delay, seen.worst_delay, seen.worst_ack
        );
        assert!(seen.sent >= 20, "the bystander published ({})", seen.sent);
        assert_eq!(seen.received, seen.sent, "every bystander message arrived");
        assert!(
            seen.p99_delay < Duration::from_secs(1),
            "1% of the bystander's messages took {:?} or more",
            seen.p99_delay
        );
        assert!(
            seen.worst_delay < Duration::from_secs(2),
            "a bystander message took {:?}",
            seen.worst_delay
        );
        assert!(
            seen.worst_ack < ack_limit,
            "the bystander publisher waited {:?} for a PUBACK",
            seen.worst_ack
        );
    }
}

/// Reads and discards until the peer closes; true if it did within `limit`.
fn closes_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).expect("read timeout");
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn a_stuck_subscriber_delays_nobody_and_is_disconnected_after_the_write_timeout() {
    let write_timeout = Duration::from_secs(2);
    let broker = start_broker_with(config_with(|c| c.write_timeout = write_timeout));
    let addr = broker.addr;
    let (mut watcher, _) = RawClient::connect(addr, "watcher", ProtocolVersion::V3_1_1, true);
    watcher.subscribe(1, &[("stuck/gone", QoS::AtMostOnce)]);
    let bystander = Bystander::start(addr, "b1");

    // Subscribes to everything at QoS 1, then never reads again.
    let mut connect = connect_packet("stuck", ProtocolVersion::V3_1_1, true);
    connect.will = will("stuck/gone", b"bye", QoS::AtMostOnce, false);
    let (mut stuck, _) = RawClient::connect_with(addr, connect);
    stuck.subscribe(1, &[("#", QoS::AtLeastOnce)]);
    let stuck_since = Instant::now();

    // A QoS 0 publisher at 2,000 messages a second for 5 s: never held for long.
    let flood = thread::spawn(move || {
        let (mut publisher, _) = RawClient::connect(addr, "flood", ProtocolVersion::V3_1_1, true);
        let payload = vec![b'f'; 1024];
        let packet = publish_packet("flood/0", &payload, QoS::AtMostOnce, false, 0);
        let mut bytes = Vec::new();
        packet.encode(ProtocolVersion::V3_1_1, &mut bytes);
        let batch = bytes.repeat(20);
        let started = Instant::now();
        let mut worst_gap = Duration::ZERO;
        let mut sent = 0u64;
        while started.elapsed() < Duration::from_secs(5) {
            let before = Instant::now();
            publisher.send_raw(&batch);
            worst_gap = worst_gap.max(before.elapsed());
            sent += 20;
            thread::sleep(Duration::from_millis(10));
        }
        publisher.ping();
        (sent, worst_gap)
    });

    // The stuck client's will tells when it was disconnected: after the write timeout, and
    // not long after.
    let gone = match watcher.try_recv(Duration::from_secs(20)) {
        Ok(Packet::Publish(publish)) => {
            assert_eq!(publish.topic, "stuck/gone");
            stuck_since.elapsed()
        }
        other => panic!("the stuck client was not disconnected: {other:?}"),
    };
    eprintln!("stuck subscriber disconnected after {gone:?}");
    assert!(
        gone >= write_timeout - Duration::from_millis(200),
        "disconnected before the write timeout: {gone:?}"
    );
    // The clock starts once the socket buffers are full (about a second of the flood here).
    assert!(
        gone < write_timeout + Duration::from_secs(8),
        "disconnected late: {gone:?}"
    );
    assert!(
        closes_within(stuck.stream_for_tests(), Duration::from_secs(5)),
        "its socket was closed"
    );

    let (sent, worst_gap) = flood.join().expect("the flooding publisher finished");
    eprintln!("flood: {sent} messages, longest write {worst_gap:?}");
    assert!(
        worst_gap < Duration::from_millis(1500),
        "the QoS 0 publisher was held for {worst_gap:?}"
    );
    assert!(sent >= 2000, "the QoS 0 publisher kept going ({sent})");
    bystander.assert_on_time(Duration::from_millis(1500));
}

/// The broker binary, run as a child process so that its own memory can be read.
struct ChildBroker {
    child: Child,
    addr: SocketAddr,
}

impl ChildBroker {
    fn start(env: &[(&str, &str)]) -> ChildBroker {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let child = Command::new(env!("CARGO_BIN_EXE_mqtt-broker"))
            .env("SOCKET_ADDR", addr.to_string())
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the broker binary");
        let broker = ChildBroker { child, addr };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "the broker did not start");
            thread::sleep(Duration::from_millis(50));
        }
        broker
    }

    /// Resident memory in MiB, from /proc.
    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the broker is running");
        let kib: f64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .expect("VmRSS in /proc/PID/status");
        kib / 1024.0
    }

    /// Samples RSS every 100 ms until `done`; returns the peak.
    fn watch_rss(&self, done: &AtomicBool) -> f64 {
        let mut peak: f64 = 0.0;
        while !done.load(Ordering::Acquire) {
            peak = peak.max(self.rss_mib());
            thread::sleep(Duration::from_millis(100));
        }
        peak.max(self.rss_mib())
    }
}

impl Drop for ChildBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bound on the broker's RSS while a QoS 1 publisher floods a congested subscriber.
const FLOOD_RSS_BOUND_MIB: f64 = 64.0;

#[test]
fn a_flooding_qos1_publisher_keeps_memory_bounded_and_others_on_time() {
    let broker = ChildBroker::start(&[]);
    let addr = broker.addr;
    let baseline = broker.rss_mib();
    let bystander = Bystander::start(addr, "b2");

    // A congested subscriber: reads ten messages a second.
    let (mut slow, _) = RawClient::connect(addr, "slow", ProtocolVersion::V3_1_1, true);
    slow.subscribe(1, &[("flood/#", QoS::AtLeastOnce)]);
    let done = Arc::new(AtomicBool::new(false));
    let slow_reader = {
        let done = Arc::clone(&done);
        thread::spawn(move || {
            let mut got = 0u64;
            while !done.load(Ordering::Acquire) {
                if let Ok(Packet::Publish(p)) = slow.try_recv(Duration::from_millis(100)) {
                    slow.send(&Packet::PubAck(Ack::new(p.packet_id.expect("QoS 1"))));
                    got += 1;
                }
                thread::sleep(Duration::from_millis(100));
            }
            got
        })
    };

    // A QoS 1 publisher that never waits for its PUBACKs, for 10 s; another thread counts them.
    let (mut publisher, _) = RawClient::connect(addr, "flooder", ProtocolVersion::V3_1_1, true);
    let mut acks_in = publisher
        .stream_for_tests()
        .try_clone()
        .expect("clone the socket");
    let acks = Arc::new(AtomicU64::new(0));
    let ack_counter = {
        let acks = Arc::clone(&acks);
        let done = Arc::clone(&done);
        thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            acks_in
                .set_read_timeout(Some(Duration::from_millis(200)))
                .expect("timeout");
            while !done.load(Ordering::Acquire) {
                // PUBACKs are 4 bytes each.
                if let Ok(n) = acks_in.read(&mut buf) {
                    acks.fetch_add(n as u64 / 4, Ordering::AcqRel);
                }
            }
        })
    };
    let flooder = {
        let done = Arc::clone(&done);
        let mut publisher = publisher;
        thread::spawn(move || {
            let payload = vec![b'q'; 1024];
            let mut sent = 0u64;
            let mut worst_gap = Duration::ZERO;
            let started = Instant::now();
            let mut id = 0u16;
            let mut cut_off = None;
            while started.elapsed() < Duration::from_secs(10) {
                let mut bytes = Vec::new();
                for _ in 0..50 {
                    id = id % 65_000 + 1;
                    publish_packet("flood/1", &payload, QoS::AtLeastOnce, false, id)
                        .encode(ProtocolVersion::V3_1_1, &mut bytes);
                }
                let before = Instant::now();
                if let Err(e) = publisher.stream_for_tests().write_all(&bytes) {
                    cut_off = Some(e);
                    break;
                }
                worst_gap = worst_gap.max(before.elapsed());
                sent += 50;
            }
            done.store(true, Ordering::Release);
            (sent, worst_gap, cut_off)
        })
    };
    let peak = broker.watch_rss(&done);
    let (sent, worst_gap, cut_off) = flooder.join().expect("flooder");
    ack_counter.join().expect("ack counter");
    let slow_got = slow_reader.join().expect("slow reader");
    eprintln!(
        "flood: {sent} QoS 1 messages sent, {} PUBACKs, longest write {worst_gap:?}; slow \
         subscriber read {slow_got}; RSS {baseline:.1} MiB at start, peak {peak:.1} MiB",
        acks.load(Ordering::Acquire)
    );
    // It reads its acknowledgements: flooding alone is no reason to disconnect it.
    assert!(
        cut_off.is_none(),
        "the publisher was disconnected: {cut_off:?}"
    );
    assert!(
        peak < FLOOD_RSS_BOUND_MIB,
        "RSS reached {peak:.1} MiB (bound {FLOOD_RSS_BOUND_MIB} MiB)"
    );
    assert!(
        worst_gap < Duration::from_millis(1500),
        "the publisher was stopped for {worst_gap:?}"
    );
    assert!(
        acks.load(Ordering::Acquire) > 10_000,
        "the publisher was acknowledged as it went"
    );
    bystander.assert_on_time(Duration::from_millis(1500));
}

#[test]
fn trickling_handshakes_do_not_lock_out_a_real_client() {
    let connect_timeout = Duration::from_secs(2);
    let broker = start_broker_with(config_with(|c| {
        c.connect_timeout = connect_timeout;
        // As many as there are tricklers: without a separate handshake limit they would
        // take every place.
        c.max_connections = 2000;
    }));
    let addr = broker.addr;
    // 2,000 sockets that each send the first byte of a CONNECT, then one more byte every
    // 500 ms: each read restarts a per-read timeout, so only a deadline stops them.
    let started = Instant::now();
    let mut tricklers: Vec<TcpStream> = (0..2000)
        .map(|_| {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.write_all(&[0x10, 0x7f]).expect("first bytes");
            s
        })
        .collect();
    eprintln!("2,000 trickling sockets opened in {:?}", started.elapsed());
    let stop = Arc::new(AtomicBool::new(false));
    let trickle = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut open = tricklers.len();
            while !stop.load(Ordering::Acquire) && open > 0 {
                open = 0;
                for s in &mut tricklers {
                    if s.write_all(&[0]).is_ok() {
                        open += 1;
                    }
                }
                thread::sleep(Duration::from_millis(500));
            }
            tricklers
        })
    };
    // Real clients keep getting in, each within the connect timeout.
    let mut worst = Duration::ZERO;
    for n in 0..6 {
        let before = Instant::now();
        let (mut client, connack) =
            RawClient::connect(addr, &format!("real-{n}"), ProtocolVersion::V3_1_1, true);
        assert_eq!(connack.reason, ReasonCode::Success);
        client.ping();
        worst = worst.max(before.elapsed());
        thread::sleep(Duration::from_millis(500));
    }
    eprintln!("real clients connected in at most {worst:?}");
    assert!(worst < connect_timeout, "a real client waited {worst:?}");
    // Every trickler is closed once its deadline has passed, trickling or not.
    thread::sleep(connect_timeout);
    stop.store(true, Ordering::Release);
    let mut tricklers = trickle.join().expect("trickler");
    let still_open = tricklers
        .iter_mut()
        .map(|s| closes_within(s, Duration::from_secs(3)))
        .filter(|closed| !closed)
        .count();
    assert_eq!(
        still_open, 0,
        "trickling handshakes still open past the deadline"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn a_hundred_thousand_retained_messages_reach_a_wildcard_subscriber_complete() {
    const COUNT: u32 = 100_000;
    let broker = start_broker_with(config_with(|_| {}));
    let addr = broker.addr;
    let (mut publisher, _) = RawClient::connect(addr, "retainer", ProtocolVersion::V3_1_1, true);
    let mut bytes = Vec::new();
    for i in 0..COUNT {
        publish_packet(
            &format!("r/{i}"),
            &i.to_be_bytes(),
            QoS::AtMostOnce,
            true,
            0,
        )
        .encode(ProtocolVersion::V3_1_1, &mut bytes);
        if bytes.len() > 64 * 1024 {
            publisher.send_raw(&bytes);
            bytes.clear();
        }
    }
    publisher.send_raw(&bytes);
    // A QoS 1 PUBLISH after them: its PUBACK comes once the router has stored them all.
    publisher.publish("done", b"", QoS::AtLeastOnce, false, 1);

    let bystander = Bystander::start(addr, "b4");
    let (mut sub, _) = RawClient::connect(addr, "everything", ProtocolVersion::V3_1_1, true);
    let started = Instant::now();
    sub.subscribe(1, &[("r/#", QoS::AtMostOnce)]);
    let mut seen = vec![false; COUNT as usize];
    let mut distinct = 0;
    while distinct < COUNT {
        let message = match sub.try_recv(Duration::from_secs(5)) {
            Ok(Packet::Publish(p)) => p,
            other => panic!("after {distinct} retained messages: {other:?}"),
        };
        assert!(
            message.retain,
            "sent because of the subscription: retain set"
        );
        let i = u32::from_be_bytes(message.payload[..4].try_into().expect("4 bytes"));
        if !std::mem::replace(&mut seen[i as usize], true) {
            distinct += 1;
        }
    }
    eprintln!(
        "{COUNT} retained messages received in {:?}",
        started.elapsed()
    );
    sub.expect_nothing(Duration::from_millis(300));
    bystander.assert_on_time(Duration::from_millis(1500));
}

/// The broker's budget of queued bytes in the memory test.
const BUDGET_MIB: usize = 64;

#[test]
fn a_gigabyte_through_offline_and_slow_sessions_stays_under_the_byte_budget() {
    let budget = (BUDGET_MIB << 20).to_string();
    let broker = ChildBroker::start(&[
        ("MAX_QUEUED_BYTES_TOTAL", budget.as_str()),
        ("MAX_QUEUED_MESSAGES", "1000000"),
    ]);
    let addr = broker.addr;
    let baseline = broker.rss_mib();
    // A client that keeps up is not made to pay when the budget is spent by others.
    let bystander = Bystander::start(addr, "b5");
    // Three sessions that subscribed and went away: everything for them is queued.
    for n in 0..3 {
        let (mut c, _) = RawClient::connect(
            addr,
            &format!("offline-{n}"),
            ProtocolVersion::V3_1_1,
            false,
        );
        c.subscribe(1, &[("bulk/#", QoS::AtLeastOnce)]);
        c.disconnect();
    }
    // One that stays and reads five messages a second.
    let (mut slow, _) = RawClient::connect(addr, "slow-bulk", ProtocolVersion::V3_1_1, true);
    slow.subscribe(1, &[("bulk/#", QoS::AtLeastOnce)]);
    let done = Arc::new(AtomicBool::new(false));
    let slow_reader = {
        let done = Arc::clone(&done);
        thread::spawn(move || {
            while !done.load(Ordering::Acquire) {
                if let Ok(Packet::Publish(p)) = slow.try_recv(Duration::from_millis(200)) {
                    slow.send(&Packet::PubAck(Ack::new(p.packet_id.expect("QoS 1"))));
                }
                thread::sleep(Duration::from_millis(200));
            }
        })
    };
    // An MQTT 5 publisher sends 1 GiB in 64 KiB messages, 32 in flight; it is told 0x97 for
    // those the budget refused.
    let publisher = {
        let done = Arc::clone(&done);
        thread::spawn(move || {
            let mut connect = connect_packet("bulk-pub", ProtocolVersion::V5, true);
            connect.properties = ConnectProperties::default();
            let (mut publisher, _) = RawClient::connect_with(addr, connect);
            let payload: Arc<[u8]> = Arc::from(vec![b'g'; 64 * 1024]);
            let total = 16 * 1024u32;
            let (mut sent, mut acked, mut quota) = (0u32, 0u32, 0u32);
            let started = Instant::now();
            while acked < total {
                if sent < total && sent - acked < 32 {
                    sent += 1;
                    let id = u16::try_from(sent % 60_000 + 1).expect("fits");
                    let mut packet = publish_packet("bulk/x", b"", QoS::AtLeastOnce, false, id);
                    if let Packet::Publish(p) = &mut packet {
                        p.payload = Arc::clone(&payload);
                        p.properties = PublishProperties::default();
                    }
                    publisher.send(&packet);
                    continue;
                }
                match publisher.recv() {
                    Packet::PubAck(ack) => {
                        acked += 1;
                        if ack.reason == ReasonCode::QuotaExceeded {
                            quota += 1;
                        } else {
                            assert!(!ack.reason.is_error(), "PUBACK {:?}", ack.reason);
                        }
                    }
                    other => panic!("expected PUBACK, got {other:?}"),
                }
            }
            done.store(true, Ordering::Release);
            (sent, quota, started.elapsed())
        })
    };
    let peak = broker.watch_rss(&done);
    let (sent, quota, took) = publisher.join().expect("publisher");
    slow_reader.join().expect("slow reader");
    eprintln!(
        "{} MiB in {took:?}: {quota} of {sent} PUBACKs said quota exceeded; RSS {baseline:.1} \
         MiB at start, peak {peak:.1} MiB against a budget of {BUDGET_MIB} MiB",
        u64::from(sent) * 64 / 1024
    );
    assert!(quota > 0, "the budget was reached and the publisher told");
    assert!(
        peak < BUDGET_MIB as f64,
        "RSS peaked at {peak:.1} MiB, over the budget of {BUDGET_MIB} MiB"
    );
    // The offline sessions got what fitted, in order.
    let (mut back, connack) = RawClient::connect(addr, "offline-0", ProtocolVersion::V3_1_1, false);
    assert!(connack.session_present);
    let first = back.recv_publish();
    assert_eq!(first.topic, "bulk/x");
    bystander.assert_on_time(Duration::from_millis(1500));
}

#[test]
fn retained_messages_at_qos1_are_paced_by_acknowledgements() {
    const COUNT: u32 = 20_000;
    let broker = start_broker_with(config_with(|_| {}));
    let addr = broker.addr;
    let (mut publisher, _) = RawClient::connect(addr, "retainer1", ProtocolVersion::V3_1_1, true);
    let mut bytes = Vec::new();
    for i in 0..COUNT {
        let id = u16::try_from(i % 60_000 + 1).expect("fits");
        publish_packet(
            &format!("q/{i}"),
            &i.to_be_bytes(),
            QoS::AtLeastOnce,
            true,
            id,
        )
        .encode(ProtocolVersion::V3_1_1, &mut bytes);
    }
    publisher.send_raw(&bytes);
    for _ in 0..COUNT {
        match publisher.recv() {
            Packet::PubAck(_) => {}
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    // The subscriber acknowledges each one; the broker keeps at most its window in flight and
    // feeds the rest in as acknowledgements come.
    let (mut sub, _) = RawClient::connect(addr, "acker", ProtocolVersion::V3_1_1, true);
    sub.subscribe(1, &[("q/#", QoS::AtLeastOnce)]);
    let mut seen = vec![false; COUNT as usize];
    for n in 0..COUNT {
        let message = match sub.try_recv(Duration::from_secs(5)) {
            Ok(Packet::Publish(p)) => p,
            other => panic!("after {n} retained messages: {other:?}"),
        };
        let i = u32::from_be_bytes(message.payload[..4].try_into().expect("4 bytes"));
        assert!(!std::mem::replace(&mut seen[i as usize], true), "{i} twice");
        sub.send(&Packet::PubAck(Ack::new(message.packet_id.expect("QoS 1"))));
    }
    sub.expect_nothing(Duration::from_millis(300));
}
