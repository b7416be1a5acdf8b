//! The transports: what turns an accepted socket into bytes the client threads read and write.
//!
//! Owns: the interface between a connection's bytes and the client threads (`Transport`, a
//! read half for the reader thread, a write half for the writer thread, a `Link` that anyone may
//! use to shut the connection down), and `Acceptor`, which makes a `Transport` of an accepted
//! socket as its listener says (plain TCP, TLS, WebSocket, WebSocket over TLS). Must not: know
//! MQTT, or let `client/` know which transport it speaks; the client threads see only the
//! traits below.
//!
//! Output that a transport produces while reading (a TLS alert or key update, a WebSocket pong
//! or close reply) is never written by the reader thread: it waits inside the transport, and
//! the read half calls its `Waker` so that the writer thread flushes it.

mod certificate;
pub mod quic;
mod tcp;
mod tls;
mod websocket;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Listener, Protocol};

pub use tls::TlsAcceptor;

/// The client side of a TLS connection we dialled (a bridge): the handshake, then the halves.
pub use tls::connect as tls_client;

/// The client side of a plain TCP connection we dialled (a bridge).
pub fn tcp_client(socket: Arc<TcpStream>) -> Transport {
    tcp::transport(socket)
}

/// Asks the writer thread to flush output the read half produced. Never blocks.
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// The reader thread's side of a connection.
pub trait ReadHalf: Read + Send {
    /// Bounds each blocking read (the connect timeout, then 1.5 keepalive intervals); a read
    /// that times out fails with `WouldBlock` or `TimedOut`.
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    /// Called once the writer exists; transports that produce output while reading call it.
    fn set_waker(&mut self, _waker: Waker) {}
}

/// The writer thread's side of a connection: the only code that writes its socket.
pub trait WriteHalf: Write + Send {
    /// Bounds each blocking write (a client that stops reading).
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    /// Ends the connection in order (TLS close_notify, WebSocket close frame), then shuts the
    /// socket down, which also ends the reader's blocking read.
    fn close(&mut self);
}

/// Shuts a connection down from any thread (shutdown, a writer stuck on a client that does
/// not read). Both halves then fail and their threads end.
pub trait Link: Send + Sync {
    fn shutdown(&self);
}

impl Link for TcpStream {
    fn shutdown(&self) {
        let _ = TcpStream::shutdown(self, Shutdown::Both);
    }
}

/// The writer's side of a connection and the way to close it.
pub struct Output {
    pub write: Box<dyn WriteHalf>,
    pub link: Arc<dyn Link>,
}

/// An accepted connection, ready for MQTT.
pub struct Transport {
    pub input: Box<dyn ReadHalf>,
    pub output: Output,
    /// The username a verified client certificate gives (`use_identity_as_username`,
    /// `use_subject_as_username`); it replaces the one in CONNECT.
    pub certificate_username: Option<String>,
}

/// How long a goodbye (TLS close_notify, WebSocket close frame) may wait for a socket that
/// accepts nothing, before the connection is closed without it.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);

/// Bytes of an HTTP upgrade request beyond which the connection is refused.
const MAX_UPGRADE_REQUEST: usize = 16 * 1024;

/// What one listener makes of the sockets it accepts. Built once per listener (it loads the
/// TLS files); `accept` runs on the new connection's own thread, since it may block.
pub struct Acceptor {
    tls: Option<TlsAcceptor>,
    websocket: bool,
    /// The largest WebSocket message accepted: one MQTT packet of the broker's maximum size.
    max_message: usize,
}

impl Acceptor {
    /// Plain MQTT over TCP.
    pub fn plain() -> Acceptor {
        Acceptor {
            tls: None,
            websocket: false,
            max_message: usize::MAX,
        }
    }

    /// The acceptor for `listener`; fails if its TLS files cannot be loaded or its protocol is
    /// not a stream of MQTT bytes (QUIC, metrics).
    pub fn new(listener: &Listener, max_packet_size: usize) -> io::Result<Acceptor> {
        let websocket = match listener.protocol {
            Protocol::Mqtt => false,
            Protocol::WebSockets => true,
            other => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("protocol {other:?} is not served by the TCP transports"),
                ))
            }
        };
        let tls = match &listener.tls {
            Some(settings) => Some(TlsAcceptor::new(settings)?),
            None => None,
        };
        Ok(Acceptor {
            tls,
            websocket,
            // A packet's fixed header and length come on top of the size the limit counts.
            max_message: max_packet_size.saturating_add(8),
        })
    }

    /// Loads the certificate, key, CA and CRL files again (SIGHUP). Connections already open
    /// keep their session; new ones get the new files. On error the old files stay in use.
    pub fn reload(&self) -> io::Result<()> {
        match &self.tls {
            Some(tls) => tls.reload(),
            None => Ok(()),
        }
    }

    /// Whether this listener speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Makes a transport of an accepted socket: the TLS handshake and the WebSocket upgrade,
    /// each bounded by `timeout` in all (a peer that trickles bytes included). Blocks; call it
    /// on the connection's own thread.
    pub fn accept(
        &self,
        socket: Arc<TcpStream>,
        peer: SocketAddr,
        timeout: Duration,
    ) -> io::Result<Transport> {
        let _ = socket.set_nodelay(true);
        let deadline = std::time::Instant::now() + timeout;
        let mut transport = match &self.tls {
            None => tcp::transport(socket),
            Some(tls) => tls
                .accept(socket, deadline)
                .map_err(|e| annotate(e, "TLS handshake"))?,
        };
        if self.websocket {
            transport = websocket::upgrade(transport, deadline, self.max_message)
                .map_err(|e| annotate(e, "WebSocket upgrade"))?;
        }
        log::debug!("{peer}: transport ready");
        Ok(transport)
    }
}

/// Reloads the TLS files of every listener it was given (SIGHUP). Cheap to clone.
#[derive(Clone, Default)]
pub struct Reloader {
    acceptors: Arc<parking_lot::Mutex<Vec<Arc<Acceptor>>>>,
    quic: Arc<parking_lot::Mutex<Vec<quic::QuicReloader>>>,
}

impl Reloader {
    pub fn add(&self, acceptor: Arc<Acceptor>) {
        if acceptor.is_tls() {
            self.acceptors.lock().push(acceptor);
        }
    }

    pub fn add_quic(&self, reloader: quic::QuicReloader) {
        self.quic.lock().push(reloader);
    }

    /// Reloads every TLS listener; a listener whose files fail to load keeps its old ones,
    /// and the first such error is returned once all have been tried.
    pub fn reload(&self) -> io::Result<()> {
        let acceptors = self.acceptors.lock().clone();
        let mut first_error = None;
        for acceptor in acceptors {
            if let Err(e) = acceptor.reload() {
                log::error!("TLS reload failed, the old certificate stays in use: {e}");
                first_error.get_or_insert(e);
            }
        }
        let quic = self.quic.lock().clone();
        for listener in quic {
            if let Err(e) = listener.reload() {
                log::error!("QUIC reload failed, the old certificate stays in use: {e}");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// A connection's read half and write half, for clients of our own.
pub type Halves = (Box<dyn ReadHalf>, Box<dyn WriteHalf>);

/// The two halves of a plain TCP connection (for clients of our own, such as the benchmark).
pub fn split_tcp(socket: Arc<TcpStream>) -> Halves {
    let transport = tcp::transport(socket);
    (transport.input, transport.output.write)
}

/// Splits a TLS connection (server or client side) whose handshake is done into the two halves
/// the reader and writer threads use: the broker's TLS transport, and the benchmark's client.
pub fn split_tls(conn: impl Into<rustls::Connection>, socket: Arc<TcpStream>) -> Halves {
    tls::split(conn.into(), socket)
}

fn annotate(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what} failed: {e}"))
}
