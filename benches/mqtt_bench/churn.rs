//! The `churn` scenario: 1,000 clients connected, each disconnecting and connecting again in
//! a loop, as a fleet does after a network blip or a broker restart.
//!
//! Owns: holding the clients from a few threads (one socket per client, no thread per client),
//! the reconnect loop (DISCONNECT, wait for the broker to close, TCP connect, CONNECT, CONNACK;
//! a batch at a time per thread), the cycle rate, and the broker's threads and RSS before and
//! after. Must not: wait on any socket without a timeout, or open more sockets than the
//! open-file limit allows.

use std::io::{Read, Write};
use std::net::SocketAddr;

use crate::stream::BenchStream;
use std::thread;
use std::time::{Duration, Instant};

use crate::client::{encode_connect, encode_disconnect, expect_connack, open};
use crate::options::Options;
use crate::procstat::{self, Status};
use crate::report::Line;

/// Clients held at once (fewer under `--clients` or the open-file limit).
const CLIENTS: usize = 1000;
/// Threads that drive them.
const THREADS: usize = 4;
/// Clients a thread reconnects at once: their DISCONNECTs, then their CONNECTs, then the
/// CONNACKs. THREADS × BATCH stays below mosquitto's listen backlog (100).
const BATCH: usize = 16;
/// Time for one TCP connect, CONNACK or close.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
const KEEP_ALIVE: u16 = 600;
const FD_RESERVE: u64 = 100;
/// Time for the broker to settle before its threads and RSS are read.
const SETTLE: Duration = Duration::from_secs(1);

/// What one thread ends with.
#[derive(Default)]
struct Churned {
    cycles: u64,
    failures: u64,
    first_error: Option<String>,
}

impl Churned {
    fn fail(&mut self, e: String) {
        self.failures += 1;
        self.first_error.get_or_insert(e);
    }
}

pub fn run(options: &Options, run_id: &str) -> Line {
    let mut line = Line::new("churn", &options.label);
    let limit = procstat::open_files_limit().unwrap_or(1024);
    let clients = CLIENTS
        .min(options.clients)
        .min(limit.saturating_sub(FD_RESERVE) as usize);
    let status = || options.pid.and_then(procstat::status);
    let before = status();
    let duration = options.duration;
    let per_thread = clients.div_ceil(THREADS);
    let started = Instant::now();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let ids: Vec<String> = (t * per_thread..((t + 1) * per_thread).min(clients))
                .map(|i| format!("mqb-{run_id}-churn-{i}"))
                .collect();
            let addr = options.addr;
            thread::Builder::new()
                .name(format!("churn-{t}"))
                .spawn(move || churn(addr, &ids, duration))
        })
        .collect();
    let mut total = Churned::default();
    for handle in handles {
        let part = handle
            .map_err(|e| e.to_string())
            .and_then(|h| h.join().map_err(|_| "a churn thread panicked".to_string()));
        match part {
            Ok(part) => {
                total.cycles += part.cycles;
                total.failures += part.failures;
                if total.first_error.is_none() {
                    total.first_error = part.first_error;
                }
            }
            Err(e) => total.fail(e),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    thread::sleep(SETTLE);
    let after = status();
    let rate = total.cycles as f64 / elapsed.max(f64::MIN_POSITIVE);

    line.int("clients", clients as u64);
    line.int("cycles", total.cycles);
    line.int("failed", total.failures);
    line.float("churn_s", elapsed);
    line.float("churn_rate", rate);
    put_status(&mut line, "before", before);
    put_status(&mut line, "closed", after);
    let mut summary = format!(
        "{clients} clients, {} reconnects in {elapsed:.1} s ({rate:.0} per s)",
        total.cycles
    );
    if let (Some(b), Some(a)) = (before, after) {
        summary.push_str(&format!(
            "  broker threads {} -> {}, RSS {} -> {}",
            b.threads,
            a.threads,
            crate::report::mib(b.rss_kb),
            crate::report::mib(a.rss_kb)
        ));
    }
    line.summary = summary;
    if total.failures > 0 {
        line.problems.push(format!(
            "{} connects or disconnects failed: {}",
            total.failures,
            total.first_error.unwrap_or_default()
        ));
    }
    if total.cycles == 0 {
        line.problems.push("no client reconnected".into());
    }
    line
}

fn put_status(line: &mut Line, when: &'static str, status: Option<Status>) {
    let Some(status) = status else { return };
    let (rss, threads) = match when {
        "before" => ("rss_before_kb", "threads_before"),
        _ => ("rss_closed_kb", "threads_closed"),
    };
    line.int(rss, status.rss_kb);
    line.int(threads, status.threads);
}

/// Connects every client of `ids`, then reconnects them a batch at a time until `duration`
/// has passed, then disconnects them all.
fn churn(addr: SocketAddr, ids: &[String], duration: Duration) -> Churned {
    let mut done = Churned::default();
    let mut slots: Vec<Option<BenchStream>> = Vec::with_capacity(ids.len());
    for batch in ids.chunks(BATCH) {
        slots.extend(connect_batch(addr, batch, &mut done));
    }
    let deadline = Instant::now() + duration;
    let mut at = 0;
    while Instant::now() < deadline && !ids.is_empty() {
        let end = (at + BATCH).min(ids.len());
        for slot in &mut slots[at..end] {
            if let Some(stream) = slot.take() {
                if let Err(e) = disconnect(stream) {
                    done.fail(e);
                }
            }
        }
        let fresh = connect_batch(addr, &ids[at..end], &mut done);
        for (slot, stream) in slots[at..end].iter_mut().zip(fresh) {
            if stream.is_some() {
                done.cycles += 1;
            }
            *slot = stream;
        }
        at = if end == ids.len() { 0 } else { end };
    }
    for stream in slots.into_iter().flatten() {
        let _ = disconnect(stream);
    }
    done
}

/// Opens a connection per id and sends its CONNECT, then reads the CONNACKs.
fn connect_batch(addr: SocketAddr, ids: &[String], done: &mut Churned) -> Vec<Option<BenchStream>> {
    let mut bytes = Vec::new();
    let pending: Vec<Option<BenchStream>> = ids
        .iter()
        .map(|id| {
            bytes.clear();
            encode_connect(&mut bytes, id, KEEP_ALIVE);
            let opened = open(addr, STEP_TIMEOUT).and_then(|mut s| {
                s.write_all(&bytes)
                    .map(|_| s)
                    .map_err(|e| format!("send CONNECT: {e}"))
            });
            opened.map_err(|e| done.fail(e)).ok()
        })
        .collect();
    let mut buf = Vec::new();
    pending
        .into_iter()
        .map(|stream| {
            let mut stream = stream?;
            match expect_connack(&mut stream, &mut buf) {
                Ok(()) => Some(stream),
                Err(e) => {
                    done.fail(e);
                    None
                }
            }
        })
        .collect()
}

/// Sends DISCONNECT and waits for the broker to close the connection, so that the broker,
/// not this client, holds the TIME_WAIT (this side would run out of ports).
fn disconnect(mut stream: BenchStream) -> Result<(), String> {
    let mut bytes = Vec::new();
    encode_disconnect(&mut bytes);
    stream
        .write_all(&bytes)
        .map_err(|e| format!("send DISCONNECT: {e}"))?;
    let mut sink = [0u8; 64];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
            Err(e) => return Err(format!("wait for the close after DISCONNECT: {e}")),
        }
    }
}
