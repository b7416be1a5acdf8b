//! The broker's entry point, shared by `main` and the tests: bind, accept, shut down.
//!
//! Owns: the accept loop, connection ids, the registry of open sockets, and the shutdown
//! order (stop accepting, close clients, let the router finish). Must not: read or write MQTT;
//! each accepted socket is handed to `client::spawn` at once.

use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use parking_lot::Mutex;

use crate::client;
use crate::config::Config;
use crate::queue::QueueHandle;

/// A bound broker, ready to `run`.
pub struct Broker {
    listener: TcpListener,
    config: Arc<Config>,
    queue: QueueHandle,
    queue_thread: JoinHandle<()>,
    stopper: Stopper,
    registry: Arc<Registry>,
    /// Prometheus listeners (`protocol metrics`); stopped when the broker is dropped.
    metrics: Vec<crate::sys::metrics::MetricsServer>,
}

/// Stops a running broker from any thread (a signal handler, a test). Cheap to clone.
#[derive(Clone)]
pub struct Stopper {
    stopping: Arc<AtomicBool>,
    addr: SocketAddr,
}

impl Stopper {
    /// Makes `run` stop accepting, close every client and return.
    pub fn stop(&self) {
        if self.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        // `accept` blocks; a connection of our own wakes it to see the flag.
        let wake = match self.addr.ip() {
            ip if ip.is_unspecified() && self.addr.is_ipv4() => {
                SocketAddr::from(([127, 0, 0, 1], self.addr.port()))
            }
            ip if ip.is_unspecified() => {
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, self.addr.port()))
            }
            _ => self.addr,
        };
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
    }
}

impl Broker {
    /// Starts the router for a bound listener; call `run` to accept connections.
    pub fn new(listener: TcpListener, config: Config) -> io::Result<Broker> {
        let addr = listener.local_addr()?;
        let (queue, queue_thread) = QueueHandle::start(&config)?;
        Ok(Broker {
            listener,
            config: Arc::new(config),
            queue,
            queue_thread,
            stopper: Stopper {
                stopping: Arc::new(AtomicBool::new(false)),
                addr,
            },
            registry: Arc::new(Registry::default()),
            metrics: Vec::new(),
        })
    }

    /// Serves Prometheus `/metrics` on `socket` (a `protocol metrics` listener) until the
    /// broker stops; returns the address it serves.
    pub fn serve_metrics(&mut self, socket: TcpListener) -> io::Result<SocketAddr> {
        let stats = Arc::clone(self.queue.stats());
        let server = crate::sys::metrics::serve(socket, stats)?;
        let addr = server.local_addr();
        self.metrics.push(server);
        Ok(addr)
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Accepts connections on the calling thread until stopped, then closes every client and
    /// returns once they and the router have finished (or after a bounded wait).
    pub fn run(self) {
        let next_id = AtomicU64::new(1);
        info!("listening on {}", self.stopper.addr);
        if let Some((clients, limit)) = crate::limits::client_capacity() {
            info!("this machine's limits allow about {clients} clients ({limit} is the tightest)");
        }
        let max_connections = self.config.max_connections;
        let mut refused_since_log = 0u64;
        let listener = self.listener;
        for stream in listener.incoming() {
            if self.stopper.stopping.load(Ordering::Acquire) {
                break;
            }
            let stream = match stream {
                Ok(stream) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    warn!("accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            let peer = match stream.peer_addr() {
                Ok(peer) => peer,
                Err(_) => continue,
            };
            self.queue.stats().socket_accepted();
            if self.registry.len() >= max_connections {
                self.queue.stats().refused_connection_limit();
                // Closed at once: the connections already held carry on.
                refused_since_log += 1;
                if refused_since_log == 1 || refused_since_log.is_multiple_of(1000) {
                    warn!(
                        "{peer}: refused, {max_connections} connections held already \
                         (MAX_CONNECTIONS; {refused_since_log} refused so far)"
                    );
                }
                continue;
            }
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = client::spawn(
                stream,
                peer,
                id,
                self.queue.clone(),
                Arc::clone(&self.config),
                Arc::clone(&self.registry),
            ) {
                let hint = crate::limits::client_capacity()
                    .map(|(clients, limit)| {
                        format!(" (about {clients} clients fit; raise {limit} for more)")
                    })
                    .unwrap_or_default();
                error!("{peer}: cannot start client thread: {e}{hint}");
            }
        }
        drop(listener);
        info!("shutting down");
        // The router closes every session's connection (DISCONNECT 0x8B for v5 clients) ...
        let _ = self.queue.shutdown();
        drop(self.queue);
        // ... then connections still in their handshake are closed too.
        self.registry.wait_until_empty(Duration::from_millis(500));
        self.registry.close_all();
        if !self.registry.wait_until_empty(Duration::from_millis(1500)) {
            warn!("{} connections did not close in time", self.registry.len());
            return;
        }
        // Every client thread has dropped its router handle, so the router ends.
        let _ = self.queue_thread.join();
        info!("stopped");
    }
}

/// Every open client socket, so that shutdown can close those not yet attached to a session.
#[derive(Default)]
pub struct Registry {
    sockets: Mutex<HashMap<u64, Arc<TcpStream>>>,
}

/// Removes its connection from the registry when the reader thread ends.
pub struct Registered<'a> {
    registry: &'a Registry,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.registry.sockets.lock().remove(&self.id);
    }
}

impl Registry {
    pub fn register<'a>(&'a self, id: u64, stream: &Arc<TcpStream>) -> Registered<'a> {
        self.sockets.lock().insert(id, Arc::clone(stream));
        Registered { registry: self, id }
    }

    fn len(&self) -> usize {
        self.sockets.lock().len()
    }

    fn close_all(&self) {
        let sockets: Vec<Arc<TcpStream>> = self.sockets.lock().values().cloned().collect();
        for socket in sockets {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    /// Waits up to `limit` for every reader thread to end; true if they did.
    fn wait_until_empty(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.len() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }
}
