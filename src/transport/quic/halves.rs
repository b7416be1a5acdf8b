//! The client threads' side of a QUIC connection: a read half that turns the stream bytes the
//! endpoint thread hands over into one sequence of whole MQTT packets, a write half that hands
//! the writer's bytes to the endpoint thread stream by stream, and a link that closes it.
//!
//! Owns: per-stream reassembly of inbound packets, resetting a data stream whose packet is
//! malformed (a malformed packet on the control stream is passed to the reader, which closes
//! the connection as it would on TCP), and the byte budget that makes the writer wait while
//! the endpoint holds more than `WRITE_BUDGET` of its bytes. Must not: touch the socket or a
//! quinn `Connection` (the endpoint thread owns both), or buffer without bound.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::{Condvar, Mutex};

use super::streams::{self, frame, Routes, StreamTag};
use crate::mqtt::{decode_packet, ProtocolVersion};
use crate::transport::{Link, ReadHalf, WriteHalf};

/// Bytes of one client's output the endpoint thread may hold beyond what quinn has taken
/// (a client whose flow control window is shut); past it the writer thread waits.
pub(super) const WRITE_BUDGET: usize = 256 * 1024;

/// What a client's streams carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StreamKind {
    /// The first bidirectional stream: CONNECT and everything not on a data stream.
    Control,
    /// A further bidirectional stream (multi-stream mode).
    Data,
    /// A unidirectional stream from the client: PUBLISH only.
    Uni,
}

/// From the endpoint thread to a client's read half.
pub(super) enum Inbound {
    Data {
        stream: StreamTag,
        kind: StreamKind,
        bytes: Bytes,
    },
    /// The client finished (or reset) a stream.
    Finished { stream: StreamTag, kind: StreamKind },
}

/// From the client threads to the endpoint thread.
pub(super) enum Command {
    /// Bytes for a stream of the client (`None`: its control stream).
    Write {
        client: u64,
        stream: Option<StreamTag>,
        data: Vec<u8>,
    },
    /// Reset a data stream that carried a malformed packet (and stop reading it).
    Reset { client: u64, stream: StreamTag },
    /// The read half has room again: read the streams left waiting.
    ReadMore { client: u64 },
    /// Close the connection: `graceful` once what was written has been delivered.
    Close { client: u64, graceful: bool },
}

/// Bytes of a client's output the endpoint thread holds, shared by both sides.
#[derive(Default)]
pub(super) struct Budget {
    pending: Mutex<usize>,
    drained: Condvar,
    closed: AtomicBool,
}

impl Budget {
    /// The endpoint thread has handed `n` bytes to quinn (or dropped them).
    pub(super) fn release(&self, n: usize) {
        let mut pending = self.pending.lock();
        *pending = pending.saturating_sub(n);
        if *pending < WRITE_BUDGET {
            self.drained.notify_all();
        }
    }

    /// The connection has gone: the writer stops waiting.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let _guard = self.pending.lock();
        self.drained.notify_all();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Waits until there is room (or `timeout`), then counts `n` more bytes as held.
    fn take(&self, n: usize, timeout: Option<Duration>) -> io::Result<()> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut pending = self.pending.lock();
        while *pending >= WRITE_BUDGET {
            if self.is_closed() {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            match deadline {
                Some(deadline) => {
                    if self.drained.wait_until(&mut pending, deadline).timed_out() {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                }
                None => self.drained.wait(&mut pending),
            }
        }
        if self.is_closed() {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        *pending += n;
        Ok(())
    }
}

/// What the read and write halves and the link of one client share with the endpoint.
pub(super) struct Shared {
    pub(super) client: u64,
    pub(super) commands: Sender<Command>,
    pub(super) budget: Budget,
    pub(super) routes: Routes,
    /// Set by the endpoint when it left stream data unread because the read half's channel
    /// was full; the read half then asks for more once it has caught up.
    pub(super) paused: AtomicBool,
    /// The client speaks MQTT 5 (learnt from CONNECT), for the write half's parsing.
    pub(super) v5: AtomicBool,
}

/// Closes the connection from any thread (shutdown, a writer stuck on a client that does not
/// read), at once.
pub(super) struct QuicLink(pub(super) Arc<Shared>);

impl Link for QuicLink {
    fn shutdown(&self) {
        let shared = &self.0;
        shared.budget.close();
        let _ = shared.commands.send(Command::Close {
            client: shared.client,
            graceful: false,
        });
    }
}

/// The reader thread's side.
pub(super) struct QuicRead {
    shared: Arc<Shared>,
    rx: Receiver<Inbound>,
    timeout: Mutex<Option<Duration>>,
    max_packet_size: usize,
    /// Whole packets ready for `read`, and how much of them has been read.
    ready: Vec<u8>,
    taken: usize,
    /// Bytes of each stream that do not yet make a whole packet.
    partial: HashMap<StreamTag, Vec<u8>>,
    /// The version once CONNECT has been seen (data-stream packets are checked against it).
    version: Option<ProtocolVersion>,
    /// The control stream's bytes could not be framed: they go to the reader unframed, which
    /// then meets the same error and closes the connection with the right reason.
    control_raw: bool,
    /// The control stream ended or the endpoint dropped the channel.
    ended: bool,
}

impl QuicRead {
    pub(super) fn new(shared: Arc<Shared>, rx: Receiver<Inbound>, max_packet_size: usize) -> Self {
        QuicRead {
            shared,
            rx,
            timeout: Mutex::new(None),
            max_packet_size,
            ready: Vec::new(),
            taken: 0,
            partial: HashMap::new(),
            version: None,
            control_raw: false,
            ended: false,
        }
    }

    /// Waits for stream bytes and frames them, until some whole packet is ready.
    fn fill(&mut self) -> io::Result<()> {
        if self.taken == self.ready.len() {
            self.ready.clear();
            self.taken = 0;
        }
        let timeout = *self.timeout.lock();
        let deadline = timeout.map(|t| Instant::now() + t);
        while self.taken == self.ready.len() && !self.ended {
            let item = match deadline {
                Some(deadline) => match self.rx.recv_deadline(deadline) {
                    Ok(item) => item,
                    Err(RecvTimeoutError::Timeout) => return Err(io::ErrorKind::TimedOut.into()),
                    Err(RecvTimeoutError::Disconnected) => {
                        self.ended = true;
                        break;
                    }
                },
                None => match self.rx.recv() {
                    Ok(item) => item,
                    Err(_) => {
                        self.ended = true;
                        break;
                    }
                },
            };
            self.take(item);
            // Drain what else is waiting in one go.
            while let Ok(item) = self.rx.try_recv() {
                self.take(item);
            }
            if self.shared.paused.swap(false, Ordering::AcqRel) {
                let _ = self.shared.commands.send(Command::ReadMore {
                    client: self.shared.client,
                });
            }
        }
        Ok(())
    }

    fn take(&mut self, item: Inbound) {
        match item {
            Inbound::Data {
                stream,
                kind,
                bytes,
            } => {
                if kind == StreamKind::Control && self.control_raw {
                    self.ready.extend_from_slice(&bytes);
                    return;
                }
                let mut buf = self.partial.remove(&stream).unwrap_or_default();
                buf.extend_from_slice(&bytes);
                let used = self.cut(stream, kind, &buf);
                match used {
                    Some(used) if used < buf.len() => {
                        buf.drain(..used);
                        self.partial.insert(stream, buf);
                    }
                    Some(_) => {}
                    None => {} // the stream was reset; its bytes are dropped
                }
            }
            Inbound::Finished { stream, kind } => {
                self.partial.remove(&stream);
                if kind == StreamKind::Control {
                    self.ended = true;
                } else {
                    self.shared.routes.forget_stream(stream);
                }
            }
        }
    }

    /// Moves the whole packets at the start of `buf` to `ready`; the bytes used, or None if
    /// the stream was reset for a malformed packet.
    fn cut(&mut self, stream: StreamTag, kind: StreamKind, buf: &[u8]) -> Option<usize> {
        let mut at = 0;
        loop {
            let found = frame(&buf[at..], self.max_packet_size);
            let frame = match found {
                Ok(Some(frame)) if at + frame.len() <= buf.len() => frame,
                Ok(_) => return Some(at),
                Err(e) if kind == StreamKind::Control => {
                    log::debug!(
                        "client connection {}: control stream: {e:?}",
                        self.shared.client
                    );
                    self.control_raw = true;
                    self.ready.extend_from_slice(&buf[at..]);
                    return Some(buf.len());
                }
                Err(e) => {
                    self.reset(stream, &format!("{e:?}"));
                    return None;
                }
            };
            let packet = &buf[at..at + frame.len()];
            let v5 = self.version.is_some_and(|v| v.is_v5());
            if kind == StreamKind::Control {
                if self.version.is_none() {
                    self.learn_version(packet, frame);
                }
            } else if let Err(why) = self.check_data_packet(packet, frame) {
                self.reset(stream, &why);
                return None;
            }
            self.shared
                .routes
                .record_inbound(stream, kind == StreamKind::Data, packet, frame, v5);
            self.ready.extend_from_slice(packet);
            at += frame.len();
        }
    }

    /// A packet on a data or unidirectional stream must decode on its own: a malformed one
    /// resets that stream only (the connection and its other streams go on).
    /// Unidirectional streams carry the same packets as data streams (mqttv5's per-topic
    /// strategy sends SUBSCRIBE on them too); their answers go on the control stream.
    fn check_data_packet(&self, packet: &[u8], frame: streams::Frame) -> Result<(), String> {
        let Some(version) = self.version else {
            return Err("a data stream before CONNECT".into());
        };
        let packet_type = frame.first >> 4;
        // As EMQX's multi-stream design: a data stream carries PUBLISH, its acknowledgements,
        // SUBSCRIBE and UNSUBSCRIBE; CONNECT, PINGREQ, DISCONNECT and AUTH belong on the
        // control stream.
        if !matches!(packet_type, 3..=8 | 10) {
            return Err(format!(
                "packet type {packet_type} belongs on the control stream"
            ));
        }
        decode_packet(frame.first, &packet[frame.header..], version)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn learn_version(&mut self, packet: &[u8], frame: streams::Frame) {
        if frame.first >> 4 != 1 {
            return;
        }
        let body = &packet[frame.header..];
        let Some(name_len) = body
            .get(..2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        else {
            return;
        };
        let level = body.get(2 + name_len).copied();
        let version = match level {
            Some(5) => ProtocolVersion::V5,
            Some(3) => ProtocolVersion::V3_1,
            _ => ProtocolVersion::V3_1_1,
        };
        self.shared.v5.store(version.is_v5(), Ordering::Release);
        self.version = Some(version);
    }

    fn reset(&mut self, stream: StreamTag, why: &str) {
        log::warn!(
            "QUIC connection {}: data stream {stream} reset: {why}",
            self.shared.client
        );
        self.partial.remove(&stream);
        self.shared.routes.forget_stream(stream);
        let _ = self.shared.commands.send(Command::Reset {
            client: self.shared.client,
            stream,
        });
    }
}

impl Read for QuicRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.taken == self.ready.len() {
            self.fill()?;
        }
        let available = &self.ready[self.taken..];
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.taken += n;
        Ok(n)
    }
}

impl ReadHalf for QuicRead {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        *self.timeout.lock() = timeout;
        Ok(())
    }
}

/// The writer thread's side.
pub(super) struct QuicWrite {
    shared: Arc<Shared>,
    timeout: Mutex<Option<Duration>>,
    outbound: streams::Outbound,
    /// The end of a packet whose start came in an earlier `write` (multi-stream only).
    carry: Vec<u8>,
}

impl QuicWrite {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        QuicWrite {
            shared,
            timeout: Mutex::new(None),
            outbound: streams::Outbound::default(),
            carry: Vec::new(),
        }
    }

    fn send(&self, stream: Option<StreamTag>, data: Vec<u8>) -> io::Result<()> {
        self.shared
            .commands
            .send(Command::Write {
                client: self.shared.client,
                stream,
                data,
            })
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }

    /// Multi-stream: cuts the bytes into packets and sends each run of packets for the same
    /// stream as one write.
    fn route(&mut self, buf: &[u8]) -> io::Result<()> {
        self.carry.extend_from_slice(buf);
        let bytes = std::mem::take(&mut self.carry);
        let v5 = self.shared.v5.load(Ordering::Acquire);
        let mut at = 0;
        let mut run: Option<(Option<StreamTag>, usize)> = None;
        while let Ok(Some(frame)) = frame(&bytes[at..], usize::MAX - 8) {
            if at + frame.len() > bytes.len() {
                break;
            }
            let packet = &bytes[at..at + frame.len()];
            let stream = self.outbound.route(&self.shared.routes, packet, frame, v5);
            match run {
                Some((current, start)) if current != stream => {
                    self.send(current, bytes[start..at].to_vec())?;
                    run = Some((stream, at));
                }
                Some(_) => {}
                None => run = Some((stream, at)),
            }
            at += frame.len();
        }
        if let Some((stream, start)) = run {
            self.send(stream, bytes[start..at].to_vec())?;
        }
        self.carry = bytes[at..].to_vec();
        Ok(())
    }
}

impl Write for QuicWrite {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let timeout = *self.timeout.lock();
        self.shared.budget.take(buf.len(), timeout)?;
        if self.carry.is_empty() && !self.shared.routes.active() {
            self.send(None, buf.to_vec())?;
        } else {
            self.route(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl WriteHalf for QuicWrite {
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        *self.timeout.lock() = timeout;
        Ok(())
    }

    fn close(&mut self) {
        let _ = self.shared.commands.send(Command::Close {
            client: self.shared.client,
            graceful: true,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_waits_once_the_endpoint_holds_its_budget_and_resumes_when_released() {
        let budget = Arc::new(Budget::default());
        budget.take(WRITE_BUDGET, None).expect("room at first");
        // Full: a write waits, and gives up at its timeout rather than buffer more.
        let waited = budget.take(1, Some(Duration::from_millis(50)));
        assert_eq!(waited.unwrap_err().kind(), io::ErrorKind::TimedOut);
        // Released from another thread (the endpoint handing bytes to quinn): it goes on.
        let releaser = Arc::clone(&budget);
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            releaser.release(WRITE_BUDGET);
        });
        budget
            .take(10, Some(Duration::from_secs(10)))
            .expect("room after the release");
        thread.join().expect("releaser");
        // A closed connection fails the writer at once.
        budget.take(WRITE_BUDGET, None).expect("room");
        budget.close();
        let closed = budget.take(1, Some(Duration::from_secs(10)));
        assert_eq!(closed.unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }
}
