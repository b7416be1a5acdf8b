//! Prometheus `/metrics`: parsed by a real Prometheus parser (Python's prometheus_client,
//! installed by `./build.sh test` into `.test-cache/python`), and its counters follow traffic.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use mqtt_broker::mqtt::{ProtocolVersion, QoS, ReasonCode};
use mqtt_broker::Config;

use crate::support::{start_broker_with_metrics, RawClient};

/// Turns the exposition into "name{label="v",...} value" lines with prometheus_client's
/// parser, and checks every family has a type and HELP.
const PARSE: &str = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    assert family.type in ("counter", "gauge", "histogram"), (family.name, family.type)
    assert family.documentation, family.name
    for s in family.samples:
        labels = ",".join('%s="%s"' % kv for kv in sorted(s.labels.items()))
        print("%s %s{%s} %r" % (family.type, s.name, labels, s.value))
"#;

/// An HTTP/1.0 GET; returns the status line and the body.
fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).expect("connect to the metrics listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("a header and a body");
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// Scrapes and parses: sample ("name{labels}") -> value, with the family type checked.
fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    let (status, body) = get(addr, "/metrics");
    assert!(status.contains("200"), "{status}");
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join(".test-cache/python");
    let mut child = Command::new("python3")
        .args(["-c", PARSE])
        .env("PYTHONPATH", &cache)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("feed the parser");
    let output = child.wait_with_output().expect("parser output");
    assert!(
        output.status.success(),
        "prometheus_client rejected the exposition (./build.sh test installs it): {}\n{body}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut samples = BTreeMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let mut parts = line.split(' ');
        let (kind, sample, value) = (parts.next(), parts.next(), parts.next());
        let (Some(kind), Some(sample), Some(value)) = (kind, sample, value) else {
            panic!("unexpected parser line {line:?}");
        };
        if kind == "counter" {
            assert!(
                sample.contains("_total{"),
                "counter sample {sample} ends in _total"
            );
        }
        samples.insert(sample.to_string(), value.parse().expect("a number"));
    }
    samples
}

fn value(samples: &BTreeMap<String, f64>, sample: &str) -> f64 {
    *samples
        .get(sample)
        .unwrap_or_else(|| panic!("no sample {sample} in {samples:#?}"))
}

/// Scrapes until `check` holds (gauges are refreshed once a second); fails after 5 s.
fn scrape_until(
    addr: SocketAddr,
    check: impl Fn(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let samples = scrape(addr);
        if check(&samples) {
            return samples;
        }
        assert!(Instant::now() < deadline, "never true: {samples:#?}");
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn metrics_parse_and_counters_follow_traffic() {
    let (broker, metrics) = start_broker_with_metrics(Config::default());
    let before = scrape(metrics);
    assert_eq!(
        value(&before, "mqtt_messages_received_total{qos=\"1\"}"),
        0.0
    );
    assert_eq!(value(&before, "mqtt_clients_connected{}"), 0.0);

    let (mut sub, _) = RawClient::connect(broker.addr, "sub", ProtocolVersion::V5, true);
    sub.subscribe(1, &[("m/#", QoS::AtLeastOnce)]);
    let (mut publisher, _) = RawClient::connect(broker.addr, "pub", ProtocolVersion::V3_1_1, true);
    for id in 1..=5 {
        publisher.publish("m/x", b"12345678", QoS::AtLeastOnce, false, id);
    }
    publisher.publish("m/r", b"kept", QoS::AtMostOnce, true, 0);
    for _ in 0..6 {
        sub.recv_publish();
    }
    // A refusal: an empty client id needs clean session 1.
    let (_refused, connack) = RawClient::connect(broker.addr, "", ProtocolVersion::V3_1_1, false);
    assert_eq!(connack.reason, ReasonCode::ClientIdentifierNotValid);

    let after = scrape_until(metrics, |s| {
        s.get("mqtt_clients_connected{}") == Some(&2.0)
            && s.get("mqtt_retained_messages{}") >= Some(&1.0)
    });
    assert_eq!(
        value(&after, "mqtt_messages_received_total{qos=\"1\"}"),
        5.0
    );
    assert_eq!(
        value(&after, "mqtt_messages_received_total{qos=\"0\"}"),
        1.0
    );
    assert!(value(&after, "mqtt_messages_sent_total{qos=\"1\"}") >= 5.0);
    assert!(value(&after, "mqtt_message_bytes_received_total{qos=\"1\"}") >= 40.0);
    assert!(value(&after, "mqtt_packets_received_total{}") >= 9.0);
    assert!(value(&after, "mqtt_bytes_sent_total{}") > value(&before, "mqtt_bytes_sent_total{}"));
    assert_eq!(value(&after, "mqtt_connections_total{}"), 2.0);
    assert_eq!(
        value(
            &after,
            "mqtt_connections_refused_total{reason=\"client_identifier_not_valid\"}"
        ),
        1.0
    );
    assert_eq!(value(&after, "mqtt_sessions{state=\"online\"}"), 2.0);
    assert_eq!(value(&after, "mqtt_subscriptions{}"), 1.0);

    // A client going away is seen too.
    publisher.disconnect();
    scrape_until(metrics, |s| s.get("mqtt_clients_connected{}") == Some(&1.0));
    broker.stop();
}

#[test]
fn other_paths_are_not_found() {
    let (broker, metrics) = start_broker_with_metrics(Config::default());
    let (status, _) = get(metrics, "/");
    assert!(status.contains("404"), "{status}");
    broker.stop();
}

#[test]
fn connections_over_the_limit_are_counted_as_refused() {
    let config = crate::support::config_with(|c| c.max_connections = 1);
    let (broker, metrics) = start_broker_with_metrics(config);
    let (_held, _) = RawClient::connect(broker.addr, "held", ProtocolVersion::V3_1_1, true);
    // The second connection is closed at once, before any CONNACK.
    let mut refused = RawClient::tcp(broker.addr);
    refused.expect_closed();
    let samples = scrape_until(metrics, |s| {
        s.get("mqtt_connections_refused_total{reason=\"connection_limit\"}") == Some(&1.0)
    });
    assert_eq!(value(&samples, "mqtt_sockets_accepted_total{}"), 2.0);
    assert_eq!(value(&samples, "mqtt_connections_total{}"), 1.0);
    broker.stop();
}

/// With persistence on, every commit is timed: `mqtt_storage_commit_seconds` is a histogram
/// (cumulative buckets ending in `+Inf`, `_sum`, `_count`) that moves with stored traffic,
/// beside the commit counters. With persistence off, none of it is exported.
#[test]
fn storage_commit_latency_is_a_histogram_with_persistence_on() {
    let (plain, plain_metrics) = start_broker_with_metrics(Config::default());
    let samples = scrape(plain_metrics);
    assert!(
        !samples.keys().any(|k| k.starts_with("mqtt_storage")),
        "persistence off: no storage metrics"
    );
    plain.stop();

    let dir = crate::child_broker::TempDir::new("metrics-store");
    let config = Config {
        persistence_dir: Some(dir.path().to_path_buf()),
        ..Config::default()
    };
    let (broker, metrics) = start_broker_with_metrics(config);
    let before = scrape(metrics);
    let count = |s: &BTreeMap<String, f64>| value(s, "mqtt_storage_commit_seconds_count{}");
    // A kept session that is offline: every QoS 1 message to it is committed before PUBACK.
    let (mut sub, _) = RawClient::connect(broker.addr, "kept", ProtocolVersion::V3_1_1, false);
    sub.subscribe(1, &[("s/#", QoS::AtLeastOnce)]);
    sub.disconnect();
    let (mut publisher, _) = RawClient::connect(broker.addr, "pub", ProtocolVersion::V3_1_1, true);
    for id in 1..=5 {
        publisher.publish("s/x", b"stored", QoS::AtLeastOnce, false, id);
    }
    let after = scrape(metrics);
    assert!(
        count(&after) >= count(&before) + 5.0,
        "one commit per acknowledged message at least (they were sent one at a time): {} -> {}",
        count(&before),
        count(&after)
    );
    assert_eq!(value(&after, "mqtt_storage_commits_total{}"), count(&after));
    assert_eq!(value(&after, "mqtt_storage_commits_failed_total{}"), 0.0);
    assert_eq!(
        value(&after, "mqtt_storage_commit_seconds_bucket{le=\"+Inf\"}"),
        count(&after)
    );
    let sum = value(&after, "mqtt_storage_commit_seconds_sum{}");
    assert!(sum > 0.0 && sum < 60.0, "{sum} s in all");
    // Buckets are cumulative.
    let mut buckets: Vec<(f64, f64)> = after
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix("mqtt_storage_commit_seconds_bucket{le=\"")?;
            let le = le.strip_suffix("\"}")?;
            Some((le.parse::<f64>().ok()?, *v))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() >= 10, "{buckets:?}");
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    broker.stop();
}
