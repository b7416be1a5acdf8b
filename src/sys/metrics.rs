//! The Prometheus `/metrics` listener: an HTTP server (tiny_http, on std threads) that answers
//! each scrape with the broker's counters and gauges in Prometheus' text format.
//!
//! Owns: the metric names, their HELP and TYPE lines, and the listener's thread. Must not: talk
//! to the router (the gauges it shows are the router's last refresh, at most a second old), or
//! hold anything the broker's shutdown waits for: dropping `MetricsServer` stops it.

use std::fmt::Write as _;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use log::{debug, info, warn};

use super::commits::{CommitSnapshot, COMMIT_BUCKETS};
use super::counters::{DropReason, Stats};
use crate::mqtt::ReasonCode;

/// A running metrics listener; dropping it stops it.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl MetricsServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Serves `GET /metrics` on `socket` until the returned server is dropped.
pub fn serve(socket: TcpListener, stats: Arc<Stats>) -> io::Result<MetricsServer> {
    let addr = socket.local_addr()?;
    let server = tiny_http::Server::from_listener(socket, None).map_err(io::Error::other)?;
    let server = Arc::new(server);
    stats.watch();
    let thread = {
        let server = Arc::clone(&server);
        thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                // Ends when `unblock` is called.
                for request in server.incoming_requests() {
                    answer(request, &stats);
                }
                debug!("metrics listener stopped");
            })?
    };
    info!("metrics on http://{addr}/metrics");
    Ok(MetricsServer {
        server,
        thread: Some(thread),
        addr,
    })
}

fn answer(request: tiny_http::Request, stats: &Stats) {
    let path = request.url().split('?').next().unwrap_or("");
    let response = if path == "/metrics" && *request.method() == tiny_http::Method::Get {
        let content_type = tiny_http::Header::from_bytes(
            &b"Content-Type"[..],
            &b"text/plain; version=0.0.4; charset=utf-8"[..],
        )
        .expect("a valid header");
        tiny_http::Response::from_string(render(stats)).with_header(content_type)
    } else {
        tiny_http::Response::from_string("not found: try /metrics\n").with_status_code(404)
    };
    if let Err(e) = request.respond(response) {
        warn!("metrics: cannot answer a scrape: {e}");
    }
}

/// Builds the text of one metric family.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.head(name, kind, help);
        let _ = writeln!(self.out, "{name} {value}");
    }

    fn labelled(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        label: &str,
        values: &[(&str, u64)],
    ) {
        self.head(name, kind, help);
        for (label_value, value) in values {
            let _ = writeln!(self.out, "{name}{{{label}=\"{label_value}\"}} {value}");
        }
    }
}

/// `ClientIdentifierNotValid` -> `client_identifier_not_valid`.
fn snake_case(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The whole exposition, in Prometheus' text format 0.0.4.
pub fn render(stats: &Stats) -> String {
    let t = stats.traffic();
    let g = stats.gauges();
    let mut out = String::with_capacity(4096);
    let mut f = Family { out: &mut out };
    let qos = |values: [u64; 3]| [("0", values[0]), ("1", values[1]), ("2", values[2])];

    f.one(
        "mqtt_uptime_seconds",
        "gauge",
        "Seconds since the broker started.",
        stats.started().elapsed().as_secs(),
    );
    f.one(
        "mqtt_clients_connected",
        "gauge",
        "Clients connected now (sessions with a connection).",
        g.clients_connected,
    );
    f.labelled(
        "mqtt_sessions",
        "gauge",
        "Sessions: online (connected) and offline (kept for a client that is away).",
        "state",
        &[
            ("online", g.clients_connected),
            ("offline", g.sessions.saturating_sub(g.clients_connected)),
        ],
    );
    f.one(
        "mqtt_sockets_accepted_total",
        "counter",
        "TCP connections accepted.",
        stats.sockets(),
    );
    f.one(
        "mqtt_connects_received_total",
        "counter",
        "CONNECT packets received.",
        stats.connects(),
    );
    f.one(
        "mqtt_connections_total",
        "counter",
        "Connections accepted with a successful CONNACK.",
        stats.connections(),
    );
    let refused: Vec<(String, u64)> = std::iter::once((
        "connection_limit".to_string(),
        stats.refused_connection_limit_total(),
    ))
    .chain(stats.refused().into_iter().map(|(code, n)| {
        let name = ReasonCode::try_from(code)
            .map(|reason| snake_case(&format!("{reason:?}")))
            .unwrap_or_else(|code| format!("code_{code:#04x}"));
        (name, n)
    }))
    .collect();
    let refused: Vec<(&str, u64)> = refused.iter().map(|(r, n)| (r.as_str(), *n)).collect();
    f.labelled(
        "mqtt_connections_refused_total",
        "counter",
        "Connections refused: closed at the connection limit, or CONNACK with this reason.",
        "reason",
        &refused,
    );
    f.one(
        "mqtt_sessions_expired_total",
        "counter",
        "Sessions ended by their expiry interval.",
        stats.sessions_expired(),
    );
    f.one(
        "mqtt_packets_received_total",
        "counter",
        "MQTT packets received, of every kind.",
        t.packets_in,
    );
    f.one(
        "mqtt_packets_sent_total",
        "counter",
        "MQTT packets sent, of every kind.",
        t.packets_out,
    );
    f.one(
        "mqtt_bytes_received_total",
        "counter",
        "Bytes of MQTT packets received.",
        t.bytes_in,
    );
    f.one(
        "mqtt_bytes_sent_total",
        "counter",
        "Bytes of MQTT packets sent.",
        t.bytes_out,
    );
    f.labelled(
        "mqtt_messages_received_total",
        "counter",
        "PUBLISH packets received, by QoS.",
        "qos",
        &qos(t.publish_in),
    );
    f.labelled(
        "mqtt_messages_sent_total",
        "counter",
        "PUBLISH packets sent, by QoS.",
        "qos",
        &qos(t.publish_out),
    );
    f.labelled(
        "mqtt_message_bytes_received_total",
        "counter",
        "Payload bytes of PUBLISH packets received, by QoS.",
        "qos",
        &qos(t.publish_bytes_in),
    );
    f.labelled(
        "mqtt_message_bytes_sent_total",
        "counter",
        "Payload bytes of PUBLISH packets sent, by QoS.",
        "qos",
        &qos(t.publish_bytes_out),
    );
    f.labelled(
        "mqtt_messages_dropped_total",
        "counter",
        "Messages not queued for a session: queue_full (offline, max_queued_messages) or \
         hard_limit (online, publishers ignoring flow control).",
        "reason",
        &[
            ("queue_full", stats.dropped_total(DropReason::QueueFull)),
            ("hard_limit", stats.dropped_total(DropReason::HardLimit)),
        ],
    );
    f.one(
        "mqtt_queued_messages",
        "gauge",
        "Messages waiting in session queues behind the in-flight windows.",
        g.queued,
    );
    f.one(
        "mqtt_queued_bytes",
        "gauge",
        "Payload bytes of the messages waiting in session queues.",
        g.queued_bytes,
    );
    f.one(
        "mqtt_inflight_messages",
        "gauge",
        "QoS 1 and 2 messages sent and not yet acknowledged.",
        g.inflight,
    );
    f.one(
        "mqtt_retained_messages",
        "gauge",
        "Retained messages.",
        g.retained,
    );
    f.one(
        "mqtt_subscriptions",
        "gauge",
        "Subscriptions, shared ones included.",
        g.subscriptions,
    );
    f.one(
        "mqtt_shared_subscriptions",
        "gauge",
        "Shared subscriptions ($share/...).",
        g.shared_subscriptions,
    );
    f.one(
        "mqtt_stored_messages",
        "gauge",
        "Messages held: queued, in flight and retained.",
        g.stored_messages,
    );
    f.one(
        "mqtt_stored_bytes",
        "gauge",
        "Payload bytes of the messages held.",
        g.stored_bytes,
    );
    if stats.commits.enabled() {
        storage_commits(&mut f, &stats.commits.snapshot());
    }
    out
}

/// With persistence on: the storage commit histogram and the failed commits.
fn storage_commits(f: &mut Family<'_>, c: &CommitSnapshot) {
    let name = "mqtt_storage_commit_seconds";
    f.head(
        name,
        "histogram",
        "Time to write and sync one storage commit (a batch of changes, one fsync).",
    );
    for (bound, count) in COMMIT_BUCKETS.iter().zip(c.cumulative) {
        let _ = writeln!(f.out, "{name}_bucket{{le=\"{bound}\"}} {count}");
    }
    let _ = writeln!(f.out, "{name}_bucket{{le=\"+Inf\"}} {}", c.count);
    let _ = writeln!(f.out, "{name}_sum {}", c.sum_seconds);
    let _ = writeln!(f.out, "{name}_count {}", c.count);
    f.one(
        "mqtt_storage_commits_total",
        "counter",
        "Storage commits that succeeded.",
        c.count,
    );
    f.one(
        "mqtt_storage_commits_failed_total",
        "counter",
        "Storage commit attempts that failed (a full disk, an I/O error); each is retried.",
        c.failed,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::Packet;

    #[test]
    fn every_family_has_help_and_type_and_counters_end_in_total() {
        let stats = Stats::default();
        stats.received(&Packet::PingReq, 0);
        stats.connect_answered(ReasonCode::BadUserNameOrPassword);
        let text = render(&stats);
        let mut kind = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, k) = rest.split_once(' ').expect("name and type");
                assert_eq!(k == "counter", name.ends_with("_total"), "{line}");
                kind = Some(name.to_string());
            } else if !line.starts_with('#') {
                let name = kind.as_deref().expect("a sample after its TYPE");
                assert!(line.starts_with(name), "{line} under {name}");
            }
        }
        assert!(text.contains("mqtt_packets_received_total 1\n"));
        assert!(text
            .contains("mqtt_connections_refused_total{reason=\"bad_user_name_or_password\"} 1\n"));
        assert!(text.contains("mqtt_connections_refused_total{reason=\"connection_limit\"} 0\n"));
        assert!(
            !text.contains("mqtt_storage"),
            "persistence off: no storage metrics"
        );
    }

    #[test]
    fn storage_commits_are_a_histogram_with_persistence_on() {
        let stats = Stats::default();
        stats.commits.enable();
        stats.commits.committed(std::time::Duration::from_millis(2));
        stats.commits.failed();
        let text = render(&stats);
        assert!(text.contains("# TYPE mqtt_storage_commit_seconds histogram\n"));
        assert!(text.contains("mqtt_storage_commit_seconds_bucket{le=\"0.001\"} 0\n"));
        assert!(text.contains("mqtt_storage_commit_seconds_bucket{le=\"0.0025\"} 1\n"));
        assert!(text.contains("mqtt_storage_commit_seconds_bucket{le=\"+Inf\"} 1\n"));
        assert!(text.contains("mqtt_storage_commit_seconds_sum 0.002\n"));
        assert!(text.contains("mqtt_storage_commit_seconds_count 1\n"));
        assert!(text.contains("mqtt_storage_commits_total 1\n"));
        assert!(text.contains("mqtt_storage_commits_failed_total 1\n"));
    }

    #[test]
    fn the_grafana_dashboard_names_only_exported_metrics() {
        let dashboard = include_str!("../../docs/grafana-dashboard.json");
        let text = render(&Stats::default());
        let mut checked = 0;
        for (at, _) in dashboard.match_indices("mqtt_") {
            let name: String = dashboard[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
            checked += 1;
        }
        assert!(checked > 10);
    }
}
