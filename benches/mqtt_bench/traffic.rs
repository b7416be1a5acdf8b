//! One traffic client while it runs: its reader and writer threads, the counters the run
//! watches, and how the two threads are ended.
//!
//! Owns: spawning the pair, the live `Counters`, and a bounded `finish` (DISCONNECT, wait,
//! then shut the socket down so that no thread can outlive the run). Must not: decide when a
//! run ends or judge what was received (`run` and `tally` do).

use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::client::Connection;
use crate::reader::{Reader, ReaderEnd};
use crate::stream::BenchStream;
use crate::tally::Tally;
use crate::writer::{Publishing, ToWriter, Writer, WriterEnd};

/// Progress of one client, written by its threads and read by the run while it polls.
#[derive(Debug, Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub delivered: AtomicU64,
    pub last_delivery_ns: AtomicU64,
    pub last_ack_ns: AtomicU64,
    /// Set before the run asks for DISCONNECT: from then on EOF is the expected end.
    pub closing: AtomicBool,
    pub reader_done: AtomicBool,
    pub writer_done: AtomicBool,
}

/// Messages in transit across a whole run: what its publishers have written and how far its
/// subscribers have got, so that publishers can pause while too many copies are owed.
///
/// A QoS 0 publisher is never slowed by its broker's pace alone: what it writes lands in
/// kernel buffers and broker queues that can hold millions of messages, and the run would
/// measure how much they hold rather than what the broker delivers. Bounding what is owed
/// keeps the latency and memory figures about the broker, and the drain short.
#[derive(Debug, Default)]
pub struct Backlog {
    sent: AtomicU64,
    /// Copies received or passed over (see `Tally::record`), over all subscribers.
    progressed: AtomicU64,
    /// Copies presumed dropped by the broker (QoS 0 only): no longer owed.
    written_off: AtomicU64,
    /// Copies owed per message: the number of subscribers.
    fan_out: u64,
    /// 0: never pause.
    limit: u64,
}

impl Backlog {
    pub fn new(fan_out: u64, limit: u64) -> Self {
        Backlog {
            fan_out,
            limit,
            ..Backlog::default()
        }
    }

    pub fn add_sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_progress(&self, n: u64) {
        self.progressed.fetch_add(n, Ordering::Relaxed);
    }

    /// Copies written and neither received, passed over nor written off.
    pub fn owed(&self) -> u64 {
        let sent = self.sent.load(Ordering::Relaxed) * self.fan_out;
        let done =
            self.progressed.load(Ordering::Relaxed) + self.written_off.load(Ordering::Relaxed);
        sent.saturating_sub(done)
    }

    /// Stops counting what is owed now as owed.
    pub fn write_off(&self) {
        self.written_off.fetch_add(self.owed(), Ordering::Relaxed);
    }

    pub fn over_limit(&self) -> bool {
        self.limit > 0 && self.owed() > self.limit
    }
}

/// How long a client may take to end after DISCONNECT before its socket is shut down.
const GRACE: Duration = Duration::from_secs(2);
const STACK: usize = 256 * 1024;

/// Shared settings of every client of a run.
pub struct Setup {
    pub stop: Arc<AtomicBool>,
    pub backlog: Arc<Backlog>,
    pub stall_after: Duration,
    pub deadline: Instant,
}

pub struct TrafficClient {
    pub counters: Arc<Counters>,
    to_writer: Sender<ToWriter>,
    socket: BenchStream,
    reader: Option<JoinHandle<ReaderEnd>>,
    writer: Option<JoinHandle<WriterEnd>>,
    spawn_error: Option<String>,
}

impl TrafficClient {
    /// Starts the reader and writer of an established connection.
    pub fn spawn(
        name: &str,
        connection: Connection,
        publishing: Option<Publishing>,
        setup: &Setup,
    ) -> Self {
        let counters = Arc::new(Counters::default());
        let (to_writer, inbox) = crossbeam_channel::unbounded();
        let Connection {
            stream,
            reader,
            socket: writer_socket,
            ..
        } = connection;
        let mut spawn_error = None;
        let socket = match writer_socket.try_clone() {
            Ok(socket) => socket,
            Err(e) => {
                spawn_error = Some(format!("socket clone: {e}"));
                // Without a spare handle the client cannot be force-closed: do not start it.
                return TrafficClient {
                    counters,
                    to_writer,
                    socket: writer_socket,
                    reader: None,
                    writer: None,
                    spawn_error,
                };
            }
        };
        let reader = Reader {
            input: reader,
            to_writer: to_writer.clone(),
            counters: Arc::clone(&counters),
            backlog: Arc::clone(&setup.backlog),
        };
        let writer = Writer {
            stream,
            socket: writer_socket,
            inbox,
            publishing,
            counters: Arc::clone(&counters),
            stop: Arc::clone(&setup.stop),
            backlog: Arc::clone(&setup.backlog),
            stall_after: setup.stall_after,
            deadline: setup.deadline + GRACE,
        };
        let spawned_reader = thread::Builder::new()
            .name(format!("{name}-rx"))
            .stack_size(STACK)
            .spawn(move || reader.run());
        let spawned_writer = thread::Builder::new()
            .name(format!("{name}-tx"))
            .stack_size(STACK)
            .spawn(move || writer.run());
        let reader = spawned_reader
            .map_err(|e| spawn_error = Some(format!("spawn: {e}")))
            .ok();
        let writer = spawned_writer
            .map_err(|e| spawn_error = Some(format!("spawn: {e}")))
            .ok();
        if spawn_error.is_some() {
            let _ = socket.shutdown(Shutdown::Both);
        }
        TrafficClient {
            counters,
            to_writer,
            socket,
            reader,
            writer,
            spawn_error,
        }
    }

    /// Whether a thread has ended before the run asked it to: the connection failed.
    pub fn failed_early(&self) -> bool {
        self.spawn_error.is_some()
            || (!self.counters.closing.load(Ordering::Acquire)
                && (self.counters.reader_done.load(Ordering::Acquire)
                    || self.counters.writer_done.load(Ordering::Acquire)))
    }

    /// Asks for DISCONNECT; `finish` then collects the result.
    pub fn close(&self) {
        self.counters.closing.store(true, Ordering::Release);
        let _ = self.to_writer.send(ToWriter::Disconnect);
    }

    /// Waits up to the grace time for both threads after `close`, then shuts the socket down,
    /// which ends any blocked read or write at once, and joins them. Closes first if `close`
    /// was not called.
    pub fn finish(mut self) -> (ReaderEnd, WriterEnd) {
        if !self.counters.closing.load(Ordering::Acquire) {
            self.close();
        }
        let started = Instant::now();
        while started.elapsed() < GRACE && !self.both_done() {
            thread::sleep(Duration::from_millis(5));
        }
        // A broker that has not closed the connection by now is not waited for: what it
        // delivered has been counted.
        let _ = self.socket.shutdown(Shutdown::Both);
        let mut reader = join(self.reader.take(), "reader").unwrap_or_else(|e| ReaderEnd {
            tally: Tally::default(),
            error: Some(e),
        });
        let writer = join(self.writer.take(), "writer").unwrap_or_else(|e| WriterEnd {
            sent: 0,
            acked: Default::default(),
            stalled: false,
            error: Some(e),
        });
        if let Some(e) = self.spawn_error.take() {
            reader.error.get_or_insert(e);
        }
        (reader, writer)
    }

    fn both_done(&self) -> bool {
        let reader = self.reader.is_none() || self.counters.reader_done.load(Ordering::Acquire);
        let writer = self.writer.is_none() || self.counters.writer_done.load(Ordering::Acquire);
        reader && writer
    }
}

fn join<T>(handle: Option<JoinHandle<T>>, what: &str) -> Result<T, String> {
    match handle {
        Some(handle) => handle
            .join()
            .map_err(|_| format!("the {what} thread panicked")),
        None => Err(format!("the {what} thread did not start")),
    }
}
