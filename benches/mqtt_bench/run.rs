//! One traffic scenario against one broker, from the first connection to the result line.
//!
//! Owns: the order of a run (connect and subscribe every client, confirmed by SUBACK before
//! anyone publishes; start the clients; let `watch` run the publish and drain phases;
//! disconnect), gathering what every client saw, and the checks: loss at QoS 1 and 2 against
//! what the broker acknowledged, duplicates at QoS 2, per-publisher order. Must not: touch
//! sockets itself (`client`, `traffic`) or format output (`report`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mqtt_broker::mqtt::QoS;

use crate::client::Connection;
use crate::histogram::Histogram;
use crate::options::Options;
use crate::payload;
use crate::procstat;
use crate::report::{self, Line};
use crate::scenario::{Plan, Stop, Topology};
use crate::tally::{Bitmap, Tally};
use crate::traffic::{Backlog, Setup, TrafficClient};
use crate::watch::{watch, Phases};
use crate::writer::Publishing;
/// Handshake and socket timeout of every traffic connection during setup.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Flood publishers stop at this count whatever the duration: it bounds the bitmaps.
const FLOOD_CAP: u64 = 50_000_000;

/// What one traffic scenario is.
pub struct Traffic<'a> {
    pub name: &'a str,
    pub topology: Topology,
    pub qos: QoS,
    pub stop: Stop,
    pub rate: Option<u64>,
}

/// Everything gathered from the clients once they have ended.
#[derive(Default)]
struct Gathered {
    sent: u64,
    acked: u64,
    delivered: u64,
    duplicates: u64,
    out_of_order: u64,
    foreign: u64,
    lost: u64,
    latency: Histogram,
    writer_stalled: bool,
    errors: Vec<String>,
    /// From the start of publishing to the last delivery or acknowledgement.
    elapsed_s: f64,
    /// The broker's VmHWM at the end.
    hwm_kb: Option<u64>,
}

pub fn run(options: &Options, scenario: &Traffic<'_>, run_id: &str) -> Line {
    let mut line = Line::new(scenario.name, &options.label);
    let hard = options.timeout.unwrap_or(match scenario.stop {
        Stop::Duration => options.duration + Duration::from_secs(60),
        Stop::Count(_) => Duration::from_secs(300),
    });
    let deadline = Instant::now() + hard;
    let plan = scenario.topology.plan(&format!("mqb/{run_id}"));

    let connections = match connect_all(options, &plan, scenario.qos, run_id) {
        Ok(connections) => connections,
        Err(e) => {
            line.problems.push(e);
            line.summary = "setup failed".into();
            return line;
        }
    };

    let setup = Setup {
        stop: Arc::new(AtomicBool::new(false)),
        backlog: Arc::new(Backlog::new(u64::from(plan.subscribers), options.backlog)),
        stall_after: options.stall,
        deadline,
    };
    let start_ns = payload::now_ns();
    let clients: Vec<TrafficClient> = connections
        .into_iter()
        .zip(&plan.clients)
        .enumerate()
        .map(|(i, (connection, client))| {
            let publishing = client
                .publish
                .as_ref()
                .map(|(publisher, topic)| Publishing {
                    publisher: *publisher,
                    topic: topic.clone(),
                    qos: scenario.qos,
                    window: options.window,
                    max_count: match scenario.stop {
                        Stop::Count(n) => n,
                        Stop::Duration => FLOOD_CAP,
                    },
                    rate: scenario.rate,
                    payload_len: options.payload,
                });
            TrafficClient::spawn(&format!("c{i}"), connection, publishing, &setup)
        })
        .collect();

    let phases = watch(options, scenario, &plan, &clients, &setup, deadline);
    let publishers: Vec<Option<u32>> = plan
        .clients
        .iter()
        .map(|c| c.publish.as_ref().map(|p| p.0))
        .collect();
    let subscribes: Vec<bool> = plan.clients.iter().map(|c| c.subscribe.is_some()).collect();
    let last_event_ns = clients
        .iter()
        .map(|c| {
            let delivery = c.counters.last_delivery_ns.load(Ordering::Relaxed);
            let ack = c.counters.last_ack_ns.load(Ordering::Relaxed);
            delivery.max(ack)
        })
        .max()
        .unwrap_or(start_ns);
    for client in &clients {
        client.close();
    }
    let ends: Vec<_> = clients.into_iter().map(TrafficClient::finish).collect();
    let mut gathered = Gathered {
        elapsed_s: last_event_ns.saturating_sub(start_ns) as f64 / 1e9,
        hwm_kb: options.pid.and_then(procstat::status).map(|s| s.hwm_kb),
        ..Gathered::default()
    };
    let mut acked_by_publisher: Vec<(u32, u64, Bitmap)> = Vec::new();
    let mut tallies: Vec<Tally> = Vec::new();
    for (i, (reader, writer)) in ends.into_iter().enumerate() {
        gathered
            .errors
            .extend(reader.error.map(|e| format!("client {i}: {e}")));
        gathered
            .errors
            .extend(writer.error.map(|e| format!("client {i}: {e}")));
        if let Some(publisher) = publishers[i] {
            gathered.sent += writer.sent;
            gathered.acked += writer.acked.len();
            gathered.writer_stalled |= writer.stalled;
            acked_by_publisher.push((publisher, writer.sent, writer.acked));
        }
        if subscribes[i] {
            tallies.push(reader.tally);
        }
    }
    for tally in &tallies {
        gathered.delivered += tally.deliveries;
        gathered.duplicates += tally.duplicates;
        gathered.out_of_order += tally.out_of_order;
        gathered.foreign += tally.foreign;
        gathered.latency.merge(&tally.latency);
        for (publisher, sent, acked) in &acked_by_publisher {
            gathered.lost += if scenario.qos == QoS::AtMostOnce {
                sent.saturating_sub(tally.track(*publisher).map_or(0, |t| t.seen.len()))
            } else {
                tally.missing(*publisher, acked)
            };
        }
    }

    describe(
        &mut line,
        scenario,
        &plan,
        &phases,
        &gathered,
        options.stall,
    );
    line
}

/// Connects every client and subscribes the subscribers, each confirmed by its SUBACK.
fn connect_all(
    options: &Options,
    plan: &Plan,
    qos: QoS,
    run_id: &str,
) -> Result<Vec<Connection>, String> {
    let mut connections = Vec::with_capacity(plan.clients.len());
    for (i, client) in plan.clients.iter().enumerate() {
        let client_id = format!("mqb-{run_id}-{i}");
        let mut connection = Connection::establish(options.addr, &client_id, SETUP_TIMEOUT)?;
        if let Some(filter) = &client.subscribe {
            connection
                .subscribe(filter, qos)
                .map_err(|e| format!("{client_id}: {e}"))?;
        }
        connections.push(connection);
    }
    // Traffic phases are bounded by the run's own deadline; this only keeps a silent socket
    // (a QoS 0 publisher hears nothing) from timing out, and any read from hanging forever.
    for connection in &connections {
        let _ = connection
            .socket
            .set_read_timeout(Some(Duration::from_secs(600)));
    }
    Ok(connections)
}

/// Fills the line: fields for scripts, the summary for people, problems for the verdict.
fn describe(
    line: &mut Line,
    scenario: &Traffic<'_>,
    plan: &Plan,
    phases: &Phases,
    g: &Gathered,
    stall: Duration,
) {
    let elapsed_s = g.elapsed_s;
    let rate = if elapsed_s > 0.0 {
        g.delivered as f64 / elapsed_s
    } else {
        0.0
    };
    let (p50, p99, p999, max) = (
        g.latency.quantile(0.5),
        g.latency.quantile(0.99),
        g.latency.quantile(0.999),
        g.latency.max(),
    );
    line.int("qos", scenario.qos as u64);
    line.int("publishers", u64::from(plan.publishers));
    line.int("subscribers", u64::from(plan.subscribers));
    line.int("sent", g.sent);
    line.int("acked", g.acked);
    line.int("delivered", g.delivered);
    line.int("expected", g.sent * u64::from(plan.subscribers));
    line.float("elapsed_s", elapsed_s);
    line.float("rate", rate);
    line.float("p50_ms", p50 as f64 / 1e6);
    line.float("p99_ms", p99 as f64 / 1e6);
    line.float("p999_ms", p999 as f64 / 1e6);
    line.float("max_ms", max as f64 / 1e6);
    line.int("latency_samples", g.latency.count());
    line.int("lost", g.lost);
    line.int("duplicates", g.duplicates);
    line.int("out_of_order", g.out_of_order);
    line.int("stalled", u64::from(phases.stalled || g.writer_stalled));
    if phases.peak.samples > 0 {
        line.int("peak_rss_kb", phases.peak.rss_kb);
        line.int("peak_threads", phases.peak.threads);
    }
    line.float("publish_s", phases.publish_secs);
    if let Some(hwm) = g.hwm_kb {
        line.int("hwm_kb", hwm);
    }

    let mut summary = format!(
        "{rate:>10.0} msg/s  p50 {} p99 {} p99.9 {} max {} ms  lost {} dup {} order {}  ({} sent, {} delivered in {elapsed_s:.2} s)",
        report::millis(p50),
        report::millis(p99),
        report::millis(p999),
        report::millis(max),
        g.lost,
        g.duplicates,
        g.out_of_order,
        g.sent,
        g.delivered,
    );
    if phases.peak.samples > 0 {
        summary.push_str(&format!(
            "  broker peak RSS {}",
            report::mib(phases.peak.rss_kb)
        ));
    }
    line.summary = summary;

    let qos = scenario.qos;
    if qos != QoS::AtMostOnce && g.lost > 0 {
        line.problems.push(format!(
            "{} acknowledged messages lost at QoS {}",
            g.lost, qos as u8
        ));
    }
    if qos == QoS::ExactlyOnce && g.duplicates > 0 {
        line.problems
            .push(format!("{} duplicates at QoS 2", g.duplicates));
    }
    if g.out_of_order > 0 {
        line.problems.push(format!(
            "{} deliveries out of publisher order",
            g.out_of_order
        ));
    }
    if g.foreign > 0 {
        line.problems
            .push(format!("{} payloads not sent by this run", g.foreign));
    }
    if phases.stalled || g.writer_stalled {
        line.problems.push(format!(
            "stalled: no progress for {:.0} s",
            stall.as_secs_f64()
        ));
    }
    if phases.timed_out {
        line.problems.push("hard timeout".into());
    }
    if g.sent == 0 {
        line.problems.push("nothing was published".into());
    }
    line.problems.extend(g.errors.iter().take(3).cloned());
    if g.errors.len() > 3 {
        line.problems
            .push(format!("and {} more errors", g.errors.len() - 3));
    }
}
