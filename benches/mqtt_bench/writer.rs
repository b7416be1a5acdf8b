//! The writer thread of one traffic connection: the only code that writes its socket.
//!
//! Owns: publishing (sequence numbers, timestamps, the window of unacknowledged QoS 1 and 2
//! messages, a fixed rate when asked), batching everything waiting into one `write_all`, the
//! record of which sequence numbers the broker acknowledged, and the final DISCONNECT. Must
//! not: read the socket (the reader does and sends acknowledgements here), block without a
//! bound (every wait has a timeout, every write the socket's write timeout), or panic.

use std::io::Write;
use std::net::Shutdown;

use mqtt_broker::transport::WriteHalf;

use crate::stream::BenchStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use mqtt_broker::mqtt::{encode_publish, PacketId, PublishProperties, PublishView, QoS};

use crate::client::{encode_disconnect, VERSION};
use crate::payload::{self, Stamp};
use crate::tally::Bitmap;
use crate::traffic::{Backlog, Counters};

/// At most this many PUBLISH go into one write: large enough to make syscalls rare, small
/// enough that the send timestamps of a batch are close to when it leaves.
const BATCH: u64 = 128;
/// How long an idle writer sleeps before it looks at its flags again.
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// How long a paused writer sleeps before it looks again.
const PAUSE_WAIT: Duration = Duration::from_millis(1);
/// A packet-id slot holding no message.
const FREE: u64 = u64::MAX;

/// What the writer is told.
pub enum ToWriter {
    /// Acknowledgements the reader encoded, and this client's packet ids the broker completed
    /// (PUBACK for QoS 1, PUBCOMP for QoS 2).
    FromReader {
        bytes: Vec<u8>,
        completed: Vec<PacketId>,
    },
    /// Send DISCONNECT, close the sending half and end.
    Disconnect,
}

/// What a publishing client sends.
#[derive(Debug, Clone)]
pub struct Publishing {
    pub publisher: u32,
    pub topic: String,
    pub qos: QoS,
    /// Unacknowledged QoS 1 or 2 messages allowed; ignored at QoS 0.
    pub window: usize,
    /// Stop after this many messages.
    pub max_count: u64,
    /// Messages per second, or `None` for as fast as the socket takes them.
    pub rate: Option<u64>,
    pub payload_len: usize,
}

/// How a writer ended.
pub struct WriterEnd {
    pub sent: u64,
    /// Sequence numbers the broker acknowledged: each must reach every subscriber.
    pub acked: Bitmap,
    /// The window stayed full for the stall time: the broker stopped acknowledging.
    pub stalled: bool,
    pub error: Option<String>,
}

pub struct Writer {
    pub stream: Box<dyn WriteHalf>,
    /// The socket, to end the connection with a half close after DISCONNECT.
    pub socket: BenchStream,
    pub inbox: Receiver<ToWriter>,
    pub publishing: Option<Publishing>,
    pub counters: Arc<Counters>,
    /// Set by the run when publishing must stop (its duration is over).
    pub stop: Arc<AtomicBool>,
    /// Publishing waits while more copies are owed to subscribers than the run allows.
    pub backlog: Arc<Backlog>,
    /// A full window with no acknowledgement for this long ends publishing.
    pub stall_after: Duration,
    /// The writer ends by this time whatever it is told.
    pub deadline: Instant,
}

/// The publishing side's state.
struct Flow {
    spec: Publishing,
    payload: Vec<u8>,
    properties: PublishProperties,
    /// Sequence number by packet id, `FREE` when the id is not in flight.
    in_flight: Vec<u64>,
    in_flight_len: usize,
    next_id: u16,
    sent: u64,
    acked: Bitmap,
    started: Instant,
    last_ack: Instant,
    active: bool,
    stalled: bool,
}

impl Flow {
    fn new(spec: Publishing) -> Self {
        let now = Instant::now();
        Flow {
            payload: payload::template(spec.payload_len),
            properties: PublishProperties::default(),
            in_flight: vec![FREE; usize::from(u16::MAX) + 1],
            in_flight_len: 0,
            next_id: 1,
            sent: 0,
            acked: Bitmap::default(),
            started: now,
            last_ack: now,
            active: true,
            stalled: false,
            spec,
        }
    }

    fn window_full(&self) -> bool {
        self.spec.qos != QoS::AtMostOnce && self.in_flight_len >= self.spec.window
    }

    /// Messages that may go out now.
    fn budget(&self) -> u64 {
        let mut budget = BATCH.min(self.spec.max_count - self.sent);
        if self.spec.qos != QoS::AtMostOnce {
            budget = budget.min(self.spec.window.saturating_sub(self.in_flight_len) as u64);
        }
        if let Some(rate) = self.spec.rate {
            let due = (self.started.elapsed().as_secs_f64() * rate as f64) as u64 + 1;
            budget = budget.min(due.saturating_sub(self.sent));
        }
        budget
    }

    /// How long until the next message is due at a fixed rate.
    fn until_due(&self) -> Duration {
        match self.spec.rate {
            Some(rate) if rate > 0 => {
                let due_at = Duration::from_secs_f64(self.sent as f64 / rate as f64);
                due_at.saturating_sub(self.started.elapsed())
            }
            _ => IDLE_WAIT,
        }
    }

    /// A free packet id; the window (at most 65,535) guarantees one exists.
    fn allocate(&mut self) -> Option<PacketId> {
        for _ in 0..u16::MAX {
            let candidate = PacketId::new(self.next_id).unwrap_or(PacketId::MIN);
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            if self.in_flight[usize::from(candidate.get())] == FREE {
                return Some(candidate);
            }
        }
        None
    }

    /// Appends up to `budget()` PUBLISH packets.
    fn produce(&mut self, out: &mut Vec<u8>) {
        for _ in 0..self.budget() {
            let seq = self.sent;
            let packet_id = if self.spec.qos == QoS::AtMostOnce {
                None
            } else {
                let Some(id) = self.allocate() else { return };
                self.in_flight[usize::from(id.get())] = seq;
                self.in_flight_len += 1;
                Some(id)
            };
            let stamp = Stamp {
                publisher: self.spec.publisher,
                seq,
                sent_ns: payload::now_ns(),
            };
            payload::write(&mut self.payload, stamp);
            let view = PublishView {
                dup: false,
                qos: self.spec.qos,
                retain: false,
                packet_id,
                topic: &self.spec.topic,
                payload: &self.payload,
                properties: &self.properties,
                subscription_identifiers: &[],
                message_expiry_interval: None,
                topic_alias: None,
            };
            encode_publish(out, VERSION, &view);
            self.sent += 1;
        }
    }

    /// Marks completed ids; returns how many were ours.
    fn complete(&mut self, ids: &[PacketId]) -> u64 {
        let mut matched = 0;
        for id in ids {
            let slot = &mut self.in_flight[usize::from(id.get())];
            if *slot != FREE {
                self.acked.insert(*slot);
                *slot = FREE;
                self.in_flight_len -= 1;
                matched += 1;
            }
        }
        if matched > 0 {
            self.last_ack = Instant::now();
        }
        matched
    }
}

impl Writer {
    pub fn run(mut self) -> WriterEnd {
        let mut flow = self.publishing.take().map(Flow::new);
        let mut out = Vec::with_capacity(64 * 1024);
        let mut disconnect = false;
        let error = loop {
            // Everything the reader and the run have sent so far.
            loop {
                match self.inbox.try_recv() {
                    Ok(message) => self.apply(message, flow.as_mut(), &mut out, &mut disconnect),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        disconnect = true;
                        break;
                    }
                }
            }
            if let Some(flow) = flow.as_mut().filter(|f| f.active) {
                if disconnect
                    || self.stop.load(Ordering::Relaxed)
                    || flow.sent >= flow.spec.max_count
                {
                    flow.active = false;
                } else if flow.window_full() && flow.last_ack.elapsed() > self.stall_after {
                    flow.active = false;
                    flow.stalled = true;
                } else if !self.backlog.over_limit() {
                    let before = flow.sent;
                    flow.produce(&mut out);
                    self.backlog.add_sent(flow.sent - before);
                    self.counters.sent.store(flow.sent, Ordering::Relaxed);
                }
            }
            if !out.is_empty() {
                if let Err(e) = self.stream.write_all(&out) {
                    break Some(format!("write: {e}"));
                }
                out.clear();
                continue;
            }
            if disconnect {
                encode_disconnect(&mut out);
                // The broker may already be gone; the run is ending either way.
                let _ = self.stream.write_all(&out);
                let _ = self.socket.shutdown(Shutdown::Write);
                break None;
            }
            if Instant::now() >= self.deadline {
                break Some("writer deadline passed".into());
            }
            let wait = match flow.as_ref() {
                Some(f) if f.active && self.backlog.over_limit() => PAUSE_WAIT,
                Some(f) if f.active && !f.window_full() => f.until_due().min(IDLE_WAIT),
                _ => IDLE_WAIT,
            };
            match self.inbox.recv_timeout(wait) {
                Ok(message) => self.apply(message, flow.as_mut(), &mut out, &mut disconnect),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => disconnect = true,
            }
        };
        self.counters.writer_done.store(true, Ordering::Release);
        match flow {
            Some(flow) => WriterEnd {
                sent: flow.sent,
                acked: flow.acked,
                stalled: flow.stalled,
                error,
            },
            None => WriterEnd {
                sent: 0,
                acked: Bitmap::default(),
                stalled: false,
                error,
            },
        }
    }

    fn apply(
        &self,
        message: ToWriter,
        flow: Option<&mut Flow>,
        out: &mut Vec<u8>,
        disconnect: &mut bool,
    ) {
        match message {
            ToWriter::FromReader { bytes, completed } => {
                out.extend_from_slice(&bytes);
                if let Some(flow) = flow {
                    let matched = flow.complete(&completed);
                    self.counters.acked.fetch_add(matched, Ordering::Relaxed);
                }
            }
            ToWriter::Disconnect => *disconnect = true,
        }
    }
}
