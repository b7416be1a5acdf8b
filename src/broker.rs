//! The broker's entry point, shared by `main` and the tests: bind, accept, shut down.
//!
//! Owns: the accept loop, connection ids, the registry of open sockets, and the shutdown
//! order (stop accepting, close clients, let the router finish). Who is let in (backlog,
//! connection and handshake limits, the CONNECT deadline) is `admission`'s. Must not: read or
//! write MQTT; each accepted socket is handed to `client::spawn` at once.

mod admission;

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use parking_lot::Mutex;

use crate::client;
use crate::config::{Config, Listener};
use crate::queue::QueueHandle;
use crate::transport::{Acceptor, Link, Reloader};

/// A bound broker, ready to `run`.
pub struct Broker {
    listener: TcpListener,
    config: Arc<Config>,
    queue: QueueHandle,
    queue_thread: JoinHandle<()>,
    stopper: Stopper,
    registry: Arc<Registry>,
    /// Listeners beyond the first (`add_listener`), each with what it makes of its sockets.
    extra: Vec<(TcpListener, Arc<Acceptor>)>,
    reloader: Reloader,
}

/// Stops a running broker from any thread (a signal handler, a test). Cheap to clone.
#[derive(Clone)]
pub struct Stopper {
    stopping: Arc<AtomicBool>,
    addr: SocketAddr,
    /// The addresses of `add_listener`'s listeners, woken the same way.
    extra: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Stopper {
    /// Makes `run` stop accepting, close every client and return.
    pub fn stop(&self) {
        if self.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        // `accept` blocks; a connection of our own wakes it to see the flag.
        let extra = self.extra.lock().clone();
        for addr in std::iter::once(self.addr).chain(extra) {
            let wake = match addr.ip() {
                ip if ip.is_unspecified() && addr.is_ipv4() => {
                    SocketAddr::from(([127, 0, 0, 1], addr.port()))
                }
                ip if ip.is_unspecified() => {
                    SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
                }
                _ => addr,
            };
            let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        }
    }
}

impl Broker {
    /// Starts the router for a bound listener; call `run` to accept connections.
    pub fn new(listener: TcpListener, config: Config) -> io::Result<Broker> {
        let addr = listener.local_addr()?;
        admission::raise_backlog(&listener);
        let (queue, queue_thread) = QueueHandle::start(&config)?;
        Ok(Broker {
            listener,
            config: Arc::new(config),
            queue,
            queue_thread,
            stopper: Stopper {
                stopping: Arc::new(AtomicBool::new(false)),
                addr,
                extra: Arc::default(),
            },
            registry: Arc::new(Registry::default()),
            extra: Vec::new(),
            reloader: Reloader::default(),
        })
    }

    /// Serves one more listener: `socket` is bound already, `settings` say what it speaks (MQTT
    /// or WebSockets, with or without TLS). Fails if its TLS files cannot be loaded.
    pub fn add_listener(&mut self, socket: TcpListener, settings: Listener) -> io::Result<()> {
        let acceptor = Acceptor::new(&settings, self.config.max_packet_size)?;
        let acceptor = Arc::new(acceptor);
        admission::raise_backlog(&socket);
        self.stopper.extra.lock().push(socket.local_addr()?);
        self.reloader.add(Arc::clone(&acceptor));
        self.extra.push((socket, acceptor));
        Ok(())
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Reloads the TLS certificates and keys of every listener (for the SIGHUP handler).
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// Accepts connections on the calling thread until stopped, then closes every client and
    /// returns once they and the router have finished (or after a bounded wait).
    pub fn run(self) {
        let next_id = Arc::new(AtomicU64::new(1));
        info!("listening on {}", self.stopper.addr);
        if let Some((clients, limit)) = crate::limits::client_capacity() {
            info!("this machine's limits allow about {clients} clients ({limit} is the tightest)");
        }
        self.start_handshake_reaper();
        let accept_loop = AcceptLoop {
            stopping: Arc::clone(&self.stopper.stopping),
            queue: self.queue.clone(),
            config: Arc::clone(&self.config),
            registry: Arc::clone(&self.registry),
            next_id: Arc::clone(&next_id),
        };
        let extra_threads: Vec<JoinHandle<()>> = self
            .extra
            .into_iter()
            .filter_map(|(socket, acceptor)| {
                let accept = accept_loop.clone();
                std::thread::Builder::new()
                    .name("acceptor".into())
                    .spawn(move || accept.run(socket, acceptor))
                    .map_err(|e| error!("cannot start an acceptor thread: {e}"))
                    .ok()
            })
            .collect();
        let listener = self.listener;
        accept_loop.run(listener, Arc::new(Acceptor::plain()));
        for thread in extra_threads {
            let _ = thread.join();
        }
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

impl Broker {
    /// Starts the thread that closes connections whose CONNECT is late.
    fn start_handshake_reaper(&self) {
        let registry = Arc::clone(&self.registry);
        let timeout = self.config.connect_timeout;
        let stopping = Arc::clone(&self.stopper.stopping);
        let started = std::thread::Builder::new()
            .name("handshake-reaper".into())
            .spawn(move || admission::reap_handshakes(registry, timeout, stopping));
        if let Err(e) = started {
            error!("cannot start the handshake reaper: {e}");
        }
    }
}

/// Every open connection, so that shutdown can close those not yet attached to a session,
/// and which of them are still in their handshake.
#[derive(Default)]
pub struct Registry {
    sockets: Mutex<HashMap<u64, Arc<dyn Link>>>,
    pending: Mutex<admission::Pending>,
    admission_log: Mutex<admission::AdmissionLog>,
}

/// Removes its connection from the registry when the reader thread ends.
pub struct Registered<'a> {
    registry: &'a Registry,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.registry.sockets.lock().remove(&self.id);
        self.registry.pending.lock().remove(self.id);
    }
}

impl Registry {
    pub fn register<'a>(&'a self, id: u64, link: &Arc<dyn Link>) -> Registered<'a> {
        self.sockets.lock().insert(id, Arc::clone(link));
        self.pending.lock().insert(id);
        Registered { registry: self, id }
    }

    fn len(&self) -> usize {
        self.sockets.lock().len()
    }

    fn close_all(&self) {
        let links: Vec<Arc<dyn Link>> = self.sockets.lock().values().cloned().collect();
        for link in links {
            link.shutdown();
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

/// One listener's accept loop: the first listener's on the main thread, each further one's on
/// an `acceptor` thread. The connection limit, the handshake limit and the ids are shared.
#[derive(Clone)]
struct AcceptLoop {
    stopping: Arc<AtomicBool>,
    queue: QueueHandle,
    config: Arc<Config>,
    registry: Arc<Registry>,
    next_id: Arc<AtomicU64>,
}

impl AcceptLoop {
    fn run(self, listener: TcpListener, acceptor: Arc<Acceptor>) {
        let mut admission = admission::Admission::new(&self.config);
        loop {
            let accepted = listener.accept();
            if self.stopping.load(Ordering::Acquire) {
                break;
            }
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    warn!("accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            if !admission.admit(&self.registry, peer) {
                // Closed at once, without CONNACK: the connections already held carry on.
                continue;
            }
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = client::spawn(
                stream,
                peer,
                id,
                self.queue.clone(),
                Arc::clone(&self.config),
                Arc::clone(&self.registry),
                Arc::clone(&acceptor),
            ) {
                let hint = crate::limits::client_capacity()
                    .map(|(clients, limit)| {
                        format!(" (about {clients} clients fit; raise {limit} for more)")
                    })
                    .unwrap_or_default();
                error!("{peer}: cannot start client thread: {e}{hint}");
            }
        }
    }
}
