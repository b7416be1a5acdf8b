//! `$SYS/broker/...`: the same topics and value formats as mosquitto (checked side by side
//! with the real mosquitto), published every `sys_interval` only when changed, and off at 0.

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use mqtt_broker::mqtt::{Packet, ProtocolVersion, QoS};

use crate::support::{config_with, start_broker_with, RawClient};

/// Topics mosquitto publishes that we knowingly do not: its allocator's heap figures (Debian
/// builds it with memory tracking; README "Monitoring" lists the differences).
const ONLY_MOSQUITTO: &[&str] = &["$SYS/broker/heap/current", "$SYS/broker/heap/maximum"];

/// The real mosquitto broker on a free port, killed on drop.
struct Mosquitto {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Mosquitto {
    fn start() -> Mosquitto {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("sys-topics-{}-{port}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let conf = dir.join("mosquitto.conf");
        fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\nsys_interval 1\n"),
        )
        .expect("write mosquitto.conf");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run mosquitto (./build.sh test installs it)");
        // Ready once it accepts connections.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start");
            thread::sleep(Duration::from_millis(20));
        }
        Mosquitto { child, port, dir }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    let socket = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    socket.local_addr().expect("local address").port()
}

/// Every `$SYS` topic `mosquitto_sub` sees on `port` within `secs`, with its values.
fn sys_topics(port: u16, secs: u32) -> BTreeMap<String, Vec<String>> {
    let output = Command::new("timeout")
        .args(["20", "mosquitto_sub", "-h", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .args(["-t", "$SYS/#", "-F", "%t => %p", "-W"])
        .arg(secs.to_string())
        .output()
        .expect("run mosquitto_sub");
    let mut topics: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        if let Some((topic, value)) = line.split_once(" => ") {
            topics
                .entry(topic.to_string())
                .or_default()
                .push(value.to_string());
        }
    }
    topics
}

/// The shape of a `$SYS` value: "12", "0.25", "5 seconds", "name version x.y".
fn format_of(value: &str) -> &'static str {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if digits(value) {
        "integer"
    } else if value
        .split_once('.')
        .is_some_and(|(whole, cents)| digits(whole) && cents.len() == 2 && digits(cents))
    {
        "two decimals"
    } else if value.strip_suffix(" seconds").is_some_and(digits) {
        "N seconds"
    } else if value.split(' ').nth(1) == Some("version") {
        "NAME version X"
    } else {
        "other"
    }
}

#[test]
fn the_same_topics_and_formats_as_mosquitto() {
    let mosquitto = Mosquitto::start();
    let ours = start_broker_with(config_with(|c| c.sys_interval = Duration::from_secs(1)));
    let ours_port = ours.addr.port();
    // Both subscribed at once, for three seconds: the retained tree and a few updates.
    let theirs = thread::spawn({
        let port = mosquitto.port;
        move || sys_topics(port, 3)
    });
    let ours_topics = sys_topics(ours_port, 3);
    let mut theirs = theirs.join().expect("subscriber thread");
    for topic in ONLY_MOSQUITTO {
        theirs.remove(*topic);
    }
    let names = |m: &BTreeMap<String, Vec<String>>| m.keys().cloned().collect::<Vec<_>>();
    assert!(
        theirs.len() > 40,
        "mosquitto published {:?}",
        names(&theirs)
    );
    assert_eq!(names(&ours_topics), names(&theirs));
    for (topic, values) in &theirs {
        let expected = format_of(&values[0]);
        assert_ne!(expected, "other", "{topic}: {values:?}");
        for value in &ours_topics[topic] {
            assert_eq!(format_of(value), expected, "{topic}: ours {value:?}");
        }
    }
    // The uptime is reported every interval.
    assert!(ours_topics["$SYS/broker/uptime"].len() >= 2);
    drop(mosquitto);
    ours.stop();
}

/// Receives PUBLISH packets for `within`, as (topic, text) pairs.
fn collect(client: &mut RawClient, within: Duration) -> Vec<(String, String)> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match client.try_recv(left.max(Duration::from_millis(1))) {
            Ok(Packet::Publish(p)) => {
                got.push((p.topic, String::from_utf8_lossy(&p.payload).into_owned()))
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    got
}

#[test]
fn values_are_retained_sent_when_changed_and_follow_traffic() {
    let broker = start_broker_with(config_with(|c| c.sys_interval = Duration::from_secs(1)));
    let (mut watcher, _) = RawClient::connect(broker.addr, "watcher", ProtocolVersion::V5, true);
    watcher.subscribe(
        1,
        &[
            ("$SYS/broker/uptime", QoS::AtMostOnce),
            ("$SYS/broker/clients/expired", QoS::AtMostOnce),
            ("$SYS/broker/publish/messages/received", QoS::AtMostOnce),
        ],
    );
    let (mut publisher, _) = RawClient::connect(broker.addr, "pub", ProtocolVersion::V3_1_1, true);
    for id in 1..=3 {
        publisher.publish("a/b", b"hello", QoS::AtLeastOnce, false, id);
    }
    let got = collect(&mut watcher, Duration::from_millis(3500));
    let values = |topic: &str| -> Vec<&str> {
        got.iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    // Retained on subscribe, then every second.
    assert!(values("$SYS/broker/uptime").len() >= 3, "{got:?}");
    // Never changes: only the retained copy.
    assert_eq!(values("$SYS/broker/clients/expired"), ["0"], "{got:?}");
    // The three PUBLISH packets are counted.
    let received = values("$SYS/broker/publish/messages/received");
    assert_eq!(received.last(), Some(&"3"), "{got:?}");
    broker.stop();
}

#[test]
fn sys_interval_zero_publishes_nothing() {
    let broker = start_broker_with(config_with(|c| c.sys_interval = Duration::ZERO));
    let (mut watcher, _) = RawClient::connect(broker.addr, "w", ProtocolVersion::V3_1_1, true);
    watcher.subscribe(1, &[("$SYS/#", QoS::AtMostOnce)]);
    watcher.expect_nothing(Duration::from_millis(1500));
    broker.stop();
}
