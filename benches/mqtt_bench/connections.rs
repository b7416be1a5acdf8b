//! The `connections` scenario: many idle clients, held open at once.
//!
//! Owns: opening N connections from a few threads (one socket per client, no thread per
//! client: each thread connects a batch, sends every CONNECT of the batch, then reads the
//! CONNACKs), the connect rate, the broker's RSS and thread count before, while holding and
//! after closing, a PINGREQ check on a sample, and the clean DISCONNECT of every client.
//! Must not: open more sockets than this process's open-file limit allows, or wait on any
//! socket without a timeout.

use crate::stream::BenchStream;
use std::io::Write;
use std::thread;
use std::time::{Duration, Instant};

use mqtt_broker::mqtt::Packet;

use crate::client::{encode_connect, encode_disconnect, expect_connack, open, read_one, VERSION};
use crate::options::Options;
use crate::procstat::{self, Status};
use crate::report::{self, Line};

/// Threads that open connections.
const THREADS: usize = 4;
/// Connections a thread opens before it reads their CONNACKs. THREADS × BATCH stays below the
/// smallest listen backlog of the brokers compared (mosquitto: 100), so that no SYN is dropped
/// and retried a second later, which would measure the retry timer instead of the broker.
const BATCH: usize = 16;
/// Descriptors kept free for everything else this process opens.
const FD_RESERVE: u64 = 100;
/// Time for one TCP connect or one CONNACK.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// The whole connect phase; threads stop opening new batches after it.
const CONNECT_PHASE: Duration = Duration::from_secs(120);
/// Time for the broker to finish starting threads and settle before it is measured.
const SETTLE: Duration = Duration::from_secs(1);
/// Every PING_EVERY-th client is pinged while all are held.
const PING_EVERY: usize = 100;
/// Idle clients ask for a keepalive long enough to outlast the scenario.
const KEEP_ALIVE: u16 = 600;

/// What one connecting thread ends with.
#[derive(Default)]
struct Opened {
    streams: Vec<BenchStream>,
    failures: u64,
    first_error: Option<String>,
}

pub fn run(options: &Options, run_id: &str) -> Line {
    let mut line = Line::new("connections", &options.label);
    if crate::client::tls_enabled() {
        line.problems
            .push("the connections scenario speaks plain TCP only (no --tls-ca)".into());
        return line;
    }
    let limit = procstat::open_files_limit().unwrap_or(1024);
    let wanted = options.clients as u64;
    let clients = wanted.min(limit.saturating_sub(FD_RESERVE)) as usize;
    let status = || options.pid.and_then(procstat::status);

    let before = status();
    let started = Instant::now();
    let deadline = started + CONNECT_PHASE;
    let per_thread = clients.div_ceil(THREADS);
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let first = t * per_thread;
            let count = per_thread.min(clients.saturating_sub(first));
            let addr = options.addr;
            let run_id = run_id.to_owned();
            thread::Builder::new()
                .name(format!("connect-{t}"))
                .spawn(move || open_many(addr, &run_id, first, count, deadline))
        })
        .collect();
    let mut opened = Opened::default();
    for handle in handles {
        match handle.map_err(|e| e.to_string()).and_then(|h| {
            h.join()
                .map_err(|_| "a connecting thread panicked".to_string())
        }) {
            Ok(part) => {
                opened.streams.extend(part.streams);
                opened.failures += part.failures;
                if opened.first_error.is_none() {
                    opened.first_error = part.first_error;
                }
            }
            Err(e) => {
                opened.first_error.get_or_insert(e);
            }
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let connected = opened.streams.len() as u64;
    let rate = if connect_secs > 0.0 {
        connected as f64 / connect_secs
    } else {
        0.0
    };

    thread::sleep(SETTLE);
    let holding = status();
    let (pinged, ping_failures) = ping_sample(&mut opened.streams);

    let mut bytes = Vec::new();
    encode_disconnect(&mut bytes);
    for stream in &mut opened.streams {
        let _ = stream.write_all(&bytes);
    }
    drop(opened.streams);
    thread::sleep(SETTLE);
    let after = status();

    line.int("clients", wanted);
    line.int("connected", connected);
    line.int("failed", opened.failures);
    line.float("connect_s", connect_secs);
    line.float("connect_rate", rate);
    line.int("pinged", pinged);
    put_status(&mut line, "before", before);
    put_status(&mut line, "holding", holding);
    put_status(&mut line, "closed", after);
    let per_client = match (before, holding) {
        (Some(b), Some(h)) if connected > 0 => {
            Some(h.rss_kb.saturating_sub(b.rss_kb) as f64 * 1024.0 / connected as f64)
        }
        _ => None,
    };
    if let Some(bytes) = per_client {
        line.float("bytes_per_client", bytes);
    }

    let mut summary =
        format!("{connected}/{wanted} connected in {connect_secs:.2} s ({rate:.0} conn/s)");
    if let (Some(b), Some(h), Some(a)) = (before, holding, after) {
        summary.push_str(&format!(
            "  broker RSS {} -> {} -> {} closed, threads {} -> {} -> {}",
            report::mib(b.rss_kb),
            report::mib(h.rss_kb),
            report::mib(a.rss_kb),
            b.threads,
            h.threads,
            a.threads
        ));
    }
    if let Some(bytes) = per_client {
        summary.push_str(&format!(", {:.1} KiB per connection", bytes / 1024.0));
    }
    line.summary = summary;

    if clients < options.clients {
        line.problems.push(format!(
            "only {clients} clients fit under the open-file limit of {limit}"
        ));
    }
    if opened.failures > 0 || connected < clients as u64 {
        let why = opened
            .first_error
            .unwrap_or_else(|| "connect phase timed out".into());
        line.problems.push(format!(
            "{} of {clients} clients did not connect: {why}",
            clients as u64 - connected
        ));
    }
    if ping_failures > 0 {
        line.problems.push(format!(
            "{ping_failures} of {pinged} held clients did not answer PINGREQ"
        ));
    }
    line
}

fn put_status(line: &mut Line, when: &'static str, status: Option<Status>) {
    let Some(status) = status else { return };
    let (rss, threads) = match when {
        "before" => ("rss_before_kb", "threads_before"),
        "holding" => ("rss_holding_kb", "threads_holding"),
        _ => ("rss_closed_kb", "threads_closed"),
    };
    line.int(rss, status.rss_kb);
    line.int(threads, status.threads);
}

/// Opens `count` clients in batches: connect and send CONNECT for a whole batch, then read
/// the batch's CONNACKs, so that the broker's accept and handshake overlap with ours.
fn open_many(
    addr: std::net::SocketAddr,
    run_id: &str,
    first: usize,
    count: usize,
    deadline: Instant,
) -> Opened {
    let mut opened = Opened::default();
    let fail = |opened: &mut Opened, e: String| {
        opened.failures += 1;
        opened.first_error.get_or_insert(e);
    };
    let mut buf = Vec::new();
    let mut bytes = Vec::new();
    let mut index = first;
    let end = first + count;
    while index < end && Instant::now() < deadline {
        let batch_end = (index + BATCH).min(end);
        let mut pending = Vec::with_capacity(BATCH);
        for i in index..batch_end {
            bytes.clear();
            encode_connect(&mut bytes, &format!("mqb-{run_id}-idle-{i}"), KEEP_ALIVE);
            match open(addr, STEP_TIMEOUT).and_then(|mut s| {
                s.write_all(&bytes)
                    .map(|_| s)
                    .map_err(|e| format!("send CONNECT: {e}"))
            }) {
                Ok(stream) => pending.push(stream),
                Err(e) => fail(&mut opened, e),
            }
        }
        for mut stream in pending {
            match expect_connack(&mut stream, &mut buf) {
                Ok(()) => opened.streams.push(stream),
                Err(e) => fail(&mut opened, e),
            }
        }
        index = batch_end;
    }
    opened
}

/// Sends PINGREQ to every `PING_EVERY`-th held client and reads the PINGRESP: a broker that
/// holds sockets but no longer serves them would fail here. Returns (pinged, failures).
fn ping_sample(streams: &mut [BenchStream]) -> (u64, u64) {
    let mut ping = Vec::new();
    Packet::PingReq.encode(VERSION, &mut ping);
    let mut buf = Vec::new();
    let (mut pinged, mut failures) = (0, 0);
    for stream in streams.iter_mut().step_by(PING_EVERY) {
        pinged += 1;
        let answered = stream
            .write_all(&ping)
            .map_err(|e| e.to_string())
            .and_then(|_| read_one(stream, &mut buf));
        match answered {
            Ok(Packet::PingResp) => {}
            Ok(_) | Err(_) => failures += 1,
        }
    }
    (pinged, failures)
}
