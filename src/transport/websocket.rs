//! MQTT over WebSockets (RFC 6455), over plain TCP or TLS, with tungstenite.
//!
//! Owns: the HTTP upgrade (bounded in bytes and time; subprotocol `mqtt` or `mqttv3.1`), the
//! read half that turns binary messages into a byte stream (so MQTT packets may span messages
//! and one message may hold several packets), and the write half that frames each batch the
//! writer writes as one binary message.
//!
//! Must not: write the socket from the reader thread. tungstenite answers pings and close frames
//! while reading; those frames go to a buffer shared with the write half, and the read half wakes
//! the writer, which writes them before its next frame. `http_dir` (serving files over HTTP) is
//! not supported.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tungstenite::http::{HeaderValue, StatusCode};
use tungstenite::protocol::WebSocketConfig;
use tungstenite::{Bytes, Message, WebSocket};

use super::{Output, ReadHalf, Transport, Waker, WriteHalf};

/// Control frames (pongs, the close reply) waiting for the writer beyond which the connection
/// is closed: a peer that pings faster than it reads.
const MAX_PENDING: usize = 64 * 1024;

/// The subprotocols MQTT over WebSockets is offered under, in order of preference.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Upgrades `inner` (TCP or TLS) to a WebSocket, by `deadline`.
pub(super) fn upgrade(
    inner: Transport,
    deadline: Instant,
    max_message: usize,
) -> io::Result<Transport> {
    let Transport {
        input,
        output: Output { write, link },
        certificate_username,
    } = inner;
    let shared = Arc::new(Shared::default());
    let io = WsIo {
        input,
        handshake: Some(Budget {
            bytes_left: super::MAX_UPGRADE_REQUEST,
            deadline,
        }),
        output: Some(write),
        shared: Arc::clone(&shared),
        waker: None,
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
        .accept_unmasked_frames(false);
    let mut ws = tungstenite::accept_hdr_with_config(io, choose_subprotocol, Some(config))
        .map_err(|e| match e {
            tungstenite::HandshakeError::Interrupted(_) => {
                io::Error::new(io::ErrorKind::TimedOut, "HTTP upgrade took too long")
            }
            tungstenite::HandshakeError::Failure(e) => to_io(e),
        })?;
    let io = ws.get_mut();
    io.handshake = None;
    let write = io.output.take().expect("the write half is there until now");
    Ok(Transport {
        input: Box::new(WsRead {
            ws,
            message: Bytes::new(),
            offset: 0,
        }),
        output: Output {
            write: Box::new(WsWrite {
                inner: write,
                shared,
                frame: Vec::new(),
            }),
            link,
        },
        certificate_username,
    })
}

/// Answers the upgrade with the first MQTT subprotocol the client offers; a client that offers
/// only others is refused, one that offers none is accepted without one.
#[allow(clippy::result_large_err)]
fn choose_subprotocol(
    request: &Request,
    mut response: Response,
) -> Result<Response, ErrorResponse> {
    let offered: Vec<String> = request
        .headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .collect();
    if offered.is_empty() {
        return Ok(response);
    }
    for wanted in SUBPROTOCOLS {
        if offered.iter().any(|p| p.eq_ignore_ascii_case(wanted)) {
            response
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(wanted));
            return Ok(response);
        }
    }
    let mut refusal = ErrorResponse::new(Some("subprotocol mqtt required".into()));
    *refusal.status_mut() = StatusCode::BAD_REQUEST;
    Err(refusal)
}

fn to_io(e: tungstenite::Error) -> io::Error {
    match e {
        tungstenite::Error::Io(e) => e,
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            io::ErrorKind::UnexpectedEof.into()
        }
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

/// State both halves see.
#[derive(Default)]
struct Shared {
    /// Frames tungstenite produced while reading (pongs, the close reply), whole, waiting for
    /// the writer.
    pending: Mutex<Vec<u8>>,
    /// A close frame has been sent (in `pending`): the write half must not send another.
    close_sent: AtomicBool,
}

/// What limits the upgrade request.
struct Budget {
    bytes_left: usize,
    deadline: Instant,
}

/// The stream tungstenite sees on the reader's side: reads come from the inner read half;
/// writes go straight to the socket during the upgrade (no writer exists yet) and to `pending`
/// after it.
struct WsIo {
    input: Box<dyn ReadHalf>,
    handshake: Option<Budget>,
    output: Option<Box<dyn WriteHalf>>,
    shared: Arc<Shared>,
    waker: Option<Waker>,
}

impl Read for WsIo {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(budget) = &mut self.handshake else {
            return self.input.read(buf);
        };
        let left = budget.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "took too long"));
        }
        if budget.bytes_left == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("request longer than {} bytes", super::MAX_UPGRADE_REQUEST),
            ));
        }
        self.input.set_read_timeout(Some(left))?;
        let limit = buf.len().min(budget.bytes_left);
        let n = self.input.read(&mut buf[..limit])?;
        budget.bytes_left -= n;
        Ok(n)
    }
}

impl Write for WsIo {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.output {
            Some(direct) => direct.write(buf),
            None => {
                let mut pending = self.shared.pending.lock();
                if pending.len() + buf.len() > MAX_PENDING {
                    return Err(io::Error::other(
                        "the peer sends pings faster than it reads the pongs",
                    ));
                }
                pending.extend_from_slice(buf);
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.output {
            Some(direct) => direct.flush(),
            None => {
                if !self.shared.pending.lock().is_empty() {
                    if let Some(wake) = &self.waker {
                        wake();
                    }
                }
                Ok(())
            }
        }
    }
}

/// The reader thread's half: binary messages in, a byte stream out.
struct WsRead {
    ws: WebSocket<WsIo>,
    /// The binary message being read, from `offset` on.
    message: Bytes,
    offset: usize,
}

impl Read for WsRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.offset < self.message.len() {
                let n = buf.len().min(self.message.len() - self.offset);
                buf[..n].copy_from_slice(&self.message[self.offset..self.offset + n]);
                self.offset += n;
                return Ok(n);
            }
            match self.ws.read() {
                Ok(Message::Binary(data)) => {
                    self.message = data;
                    self.offset = 0;
                }
                Ok(Message::Text(_)) => {
                    // [MQTT-6.0.0-1] MQTT travels in binary data frames only.
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "[MQTT-6.0.0-1] a text frame on an MQTT WebSocket",
                    ));
                }
                Ok(Message::Close(_)) => {
                    // tungstenite has queued the close reply; the next read sends it on and
                    // reports the end.
                    self.ws
                        .get_ref()
                        .shared
                        .close_sent
                        .store(true, Ordering::Release);
                }
                // Pings are answered by tungstenite (through `WsIo::write`); pongs need nothing.
                Ok(_) => {}
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Ok(0)
                }
                Err(e) => return Err(to_io(e)),
            }
        }
    }
}

impl ReadHalf for WsRead {
    fn set_read_timeout(&self, timeout: Option<std::time::Duration>) -> io::Result<()> {
        self.ws.get_ref().input.set_read_timeout(timeout)
    }

    fn set_waker(&mut self, waker: Waker) {
        let io = self.ws.get_mut();
        io.input.set_waker(Arc::clone(&waker));
        io.waker = Some(waker);
    }
}

/// The writer thread's half: each write is one binary frame (server frames are not masked).
struct WsWrite {
    inner: Box<dyn WriteHalf>,
    shared: Arc<Shared>,
    /// Pending control frames, then the frame header and payload, written with one call.
    frame: Vec<u8>,
}

impl WsWrite {
    /// Moves the frames the reader produced to the front of `frame`.
    fn take_pending(&mut self) {
        let mut pending = self.shared.pending.lock();
        if !pending.is_empty() {
            self.frame.extend_from_slice(&pending);
            pending.clear();
        }
    }

    fn send(&mut self) -> io::Result<()> {
        let result = self.inner.write_all(&self.frame);
        self.frame.clear();
        if self.frame.capacity() > 4 * 64 * 1024 {
            self.frame = Vec::new();
        }
        result
    }
}

/// Appends an unmasked frame header for a final frame of `opcode` with `len` payload bytes.
fn frame_header(opcode: u8, len: usize, out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

impl Write for WsWrite {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.take_pending();
        frame_header(0x2, buf.len(), &mut self.frame);
        self.frame.extend_from_slice(buf);
        self.send()?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.take_pending();
        if !self.frame.is_empty() {
            self.send()?;
        }
        self.inner.flush()
    }
}

impl WriteHalf for WsWrite {
    fn set_write_timeout(&self, timeout: Option<std::time::Duration>) -> io::Result<()> {
        self.inner.set_write_timeout(timeout)
    }

    fn close(&mut self) {
        let _ = self.inner.set_write_timeout(Some(super::GOODBYE_TIMEOUT));
        self.take_pending();
        if !self.shared.close_sent.swap(true, Ordering::AcqRel) {
            // Close frame, status 1000 (normal closure).
            frame_header(0x8, 2, &mut self.frame);
            self.frame.extend_from_slice(&1000u16.to_be_bytes());
        }
        let _ = self.send();
        self.inner.close();
    }
}

#[cfg(test)]
mod tests {
    use super::frame_header;

    #[test]
    fn frame_headers_use_the_shortest_length_form() {
        let header = |len| {
            let mut out = Vec::new();
            frame_header(0x2, len, &mut out);
            out
        };
        assert_eq!(header(0), [0x82, 0]);
        assert_eq!(header(125), [0x82, 125]);
        assert_eq!(header(126), [0x82, 126, 0, 126]);
        assert_eq!(header(65535), [0x82, 126, 0xff, 0xff]);
        assert_eq!(header(65536), [0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }
}
