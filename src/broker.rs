//! The broker's entry point, shared by `main` and the tests: listeners, accept, shut down.
//!
//! Owns: the listeners (the first accepted on the caller's thread, each further one on an
//! `acceptor-N` thread), each listener's settings and authorizer, connection ids, the
//! registries of open sockets, and the shutdown order (stop accepting, close clients, let the
//! router finish). Who is let in (backlog, connection and handshake limits, the CONNECT
//! deadline) is `admission`'s; what an accepted socket becomes (TCP, TLS, WebSocket) is the
//! listener's `transport::Acceptor`'s. Must not: read or write MQTT; each accepted socket is
//! handed to `client::spawn` at once.

mod admission;

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{error, info, warn};
use parking_lot::Mutex;

use crate::auth::{self, Authorizer};
use crate::client;
use crate::config::{Config, Listener, Protocol};
use crate::queue::QueueHandle;
use crate::transport::{self, Link};

/// A bound broker, ready to `run`.
pub struct Broker {
    /// The first listener (accepted on the thread that calls `run`), then the others (one
    /// `acceptor-N` thread each).
    listeners: Vec<Bound>,
    /// The settings as given, before per-listener copies are made.
    base: Config,
    queue: QueueHandle,
    queue_thread: JoinHandle<()>,
    stopper: Stopper,
    reloader: Reloader,
    /// The authorizer every listener shares unless `per_listener_settings` (loaded once).
    shared_authorizer: Option<Option<Arc<Authorizer>>>,
    /// With `per_listener_settings`: the authorizers loaded for the configured listeners
    /// before the router started (by address), used when each is added.
    preloaded: Vec<(SocketAddr, Option<Arc<Authorizer>>)>,
    /// Prometheus listeners (`protocol metrics`); they stop when `run` returns.
    metrics: Vec<crate::sys::metrics::MetricsServer>,
    /// The `connection` blocks' bridges, started with the router, stopped before it.
    bridges: crate::bridge::Bridges,
    /// QUIC listeners (UDP): each gets its endpoint thread when `run` starts.
    quic: Vec<QuicBound>,
}

/// One bound QUIC listener, not yet started.
struct QuicBound {
    socket: UdpSocket,
    settings: transport::quic::QuicSettings,
    config: Arc<Config>,
    registry: Arc<Registry>,
}

/// One bound listener: its socket, its settings, its copy of the config (with its
/// authorizer), and the connections it holds.
struct Bound {
    socket: TcpListener,
    settings: Listener,
    config: Arc<Config>,
    registry: Arc<Registry>,
    /// What its accepted sockets become: plain TCP, TLS, WebSocket.
    transport: Arc<transport::Acceptor>,
}

/// Reloads what SIGHUP reloads: every password and ACL file, and every TLS listener's
/// certificate and key. Cheap to clone.
#[derive(Clone, Default)]
pub struct Reloader {
    auth: auth::Reloader,
    tls: transport::Reloader,
}

impl Reloader {
    /// Reloads everything; a file that fails to load keeps its old contents in use (logged).
    /// The error is the first TLS listener's that failed.
    pub fn reload(&self) -> io::Result<()> {
        self.auth.reload();
        self.tls.reload()
    }
}

/// Stops a running broker from any thread (a signal handler, a test). Cheap to clone.
#[derive(Clone)]
pub struct Stopper {
    stopping: Arc<AtomicBool>,
    addrs: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Stopper {
    /// Makes `run` stop accepting, close every client and return.
    pub fn stop(&self) {
        if self.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        // `accept` blocks; a connection of our own wakes each listener to see the flag.
        let addrs = self.addrs.lock().clone();
        for addr in addrs {
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

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }
}

/// The authorizers loaded before the router starts.
struct Preloaded {
    /// Without `per_listener_settings`: the one every listener shares.
    shared: Option<Option<Arc<Authorizer>>>,
    /// With it: each configured listener's, by address.
    listeners: Vec<(SocketAddr, Option<Arc<Authorizer>>)>,
    /// The same, for the router to rebuild the ACLs of recovered sessions.
    authorizers: auth::Authorizers,
}

/// Loads the shared authorizer, or with `per_listener_settings` those of the first listener
/// (`first`, bound) and of each further configured one with a fixed port (a listener on port
/// 0 gets a new port each start, so no stored session names it).
fn preload_authorizers(config: &Config, first: &Listener) -> io::Result<Preloaded> {
    let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
    if !config.per_listener_settings {
        let shared = Authorizer::load(&config.security).map_err(invalid)?;
        return Ok(Preloaded {
            shared: Some(shared.clone()),
            listeners: Vec::new(),
            authorizers: auth::Authorizers::shared(shared),
        });
    }
    let mut listeners = Vec::new();
    let others = config.listeners.iter().skip(1);
    for listener in std::iter::once(first).chain(others) {
        if listener.addr.port() == 0 || listener.protocol == Protocol::Metrics {
            continue;
        }
        if listeners.iter().any(|(addr, _)| *addr == listener.addr) {
            continue;
        }
        let authorizer = Authorizer::load(&listener.security).map_err(invalid)?;
        listeners.push((listener.addr, authorizer));
    }
    Ok(Preloaded {
        shared: None,
        authorizers: auth::Authorizers::per_listener(listeners.clone()),
        listeners,
    })
}

/// Refuses what a TCP listener cannot serve: a QUIC listener needs a UDP socket
/// (`add_quic_listener`).
fn check_transport(settings: &Listener) -> io::Result<()> {
    if settings.protocol == Protocol::Quic {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "listener {}: protocol quic needs a UDP socket (add_quic_listener)",
                settings.addr
            ),
        ));
    }
    Ok(())
}

impl Broker {
    /// Starts the router for a bound listener; call `run` to accept connections. When
    /// `config.listeners` is not empty, its first entry holds this listener's settings.
    pub fn new(listener: TcpListener, config: Config) -> io::Result<Broker> {
        let addr = listener.local_addr()?;
        let mut settings = config
            .listeners
            .first()
            .cloned()
            .unwrap_or_else(|| Listener::mqtt(addr));
        settings.addr = addr;
        // Loaded before the router starts: sessions recovered from the store answer to the
        // authorizer of the listener they connected through.
        let preloaded = preload_authorizers(&config, &settings)?;
        let (queue, queue_thread) = QueueHandle::start(&config, &preloaded.authorizers)?;
        let bridges = crate::bridge::Bridges::start(&config, &queue)?;
        let mut broker = Broker {
            listeners: Vec::new(),
            base: config,
            queue,
            queue_thread,
            stopper: Stopper {
                stopping: Arc::new(AtomicBool::new(false)),
                addrs: Arc::new(Mutex::new(Vec::new())),
            },
            reloader: Reloader::default(),
            shared_authorizer: preloaded.shared,
            preloaded: preloaded.listeners,
            metrics: Vec::new(),
            bridges,
            quic: Vec::new(),
        };
        broker.add_listener(listener, settings)?;
        Ok(broker)
    }

    /// Adds a further listener with its own settings (its protocol, connection limit and,
    /// with `per_listener_settings`, its own password file, ACL file and anonymous access).
    /// Fails if the listener needs what this build cannot serve or its files do not load.
    pub fn add_listener(&mut self, socket: TcpListener, mut settings: Listener) -> io::Result<()> {
        check_transport(&settings)?;
        settings.addr = socket.local_addr()?;
        if settings.protocol == Protocol::Metrics {
            self.serve_metrics(socket)?;
            return Ok(());
        }
        let transport = Arc::new(transport::Acceptor::new(
            &settings,
            self.base.max_packet_size,
        )?);
        self.reloader.tls.add(Arc::clone(&transport));
        admission::raise_backlog(&socket);
        let authorizer = self.authorizer_for(&settings)?;
        let mut config = self.base.clone();
        config.authorizer = authorizer;
        config.listener_addr = Some(settings.addr);
        self.stopper.addrs.lock().push(settings.addr);
        self.listeners.push(Bound {
            socket,
            settings,
            config: Arc::new(config),
            registry: Arc::new(Registry::default()),
            transport,
        });
        Ok(())
    }

    /// Serves Prometheus `/metrics` on `socket` (a `protocol metrics` listener) until `run`
    /// returns; returns the address it serves.
    pub fn serve_metrics(&mut self, socket: TcpListener) -> io::Result<SocketAddr> {
        let stats = Arc::clone(self.queue.stats());
        let server = crate::sys::metrics::serve(socket, stats)?;
        let addr = server.local_addr();
        self.metrics.push(server);
        Ok(addr)
    }

    /// Adds a QUIC listener on a bound UDP socket (`protocol quic`, with `certfile` and
    /// `keyfile`). Fails if its TLS files do not load.
    pub fn add_quic_listener(
        &mut self,
        socket: UdpSocket,
        mut settings: Listener,
    ) -> io::Result<()> {
        settings.addr = socket.local_addr()?;
        let mut quic = transport::quic::QuicSettings::new(
            &settings,
            self.base.max_packet_size,
            self.base.max_keep_alive,
        )?;
        quic.control_deadline = self.base.connect_timeout;
        self.reloader
            .tls
            .add_quic(quic.reloader(&settings, self.base.max_keep_alive));
        let authorizer = self.authorizer_for(&settings)?;
        let mut config = self.base.clone();
        config.authorizer = authorizer;
        config.listener_addr = Some(settings.addr);
        self.quic.push(QuicBound {
            socket,
            settings: quic,
            config: Arc::new(config),
            registry: Arc::new(Registry::default()),
        });
        Ok(())
    }

    /// Every QUIC listener's address, in the order they were added.
    pub fn quic_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        self.quic.iter().map(|l| l.socket.local_addr()).collect()
    }

    fn authorizer_for(&mut self, settings: &Listener) -> io::Result<Option<Arc<Authorizer>>> {
        let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
        let preloaded = self
            .preloaded
            .iter()
            .find(|(addr, _)| *addr == settings.addr);
        let authorizer = if let Some((_, authorizer)) = preloaded {
            authorizer.clone()
        } else if self.base.per_listener_settings {
            Authorizer::load(&settings.security).map_err(invalid)?
        } else {
            match &self.shared_authorizer {
                Some(shared) => shared.clone(),
                None => {
                    let loaded = Authorizer::load(&self.base.security).map_err(invalid)?;
                    self.shared_authorizer = Some(loaded.clone());
                    loaded
                }
            }
        };
        if let Some(authorizer) = &authorizer {
            self.reloader.auth.add(authorizer);
        }
        Ok(authorizer)
    }

    /// The first listener's address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listeners[0].socket.local_addr()
    }

    /// Every listener's address, in the order they were added.
    pub fn local_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        self.listeners
            .iter()
            .map(|l| l.socket.local_addr())
            .collect()
    }

    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Reloads the password and ACL files and the TLS certificates (what SIGHUP does).
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// Accepts connections until stopped (the first listener on the calling thread, each
    /// other one on an `acceptor-N` thread), then closes every client and returns once they
    /// and the router have finished (or after a bounded wait).
    pub fn run(self) {
        if let Some((clients, limit)) = crate::limits::client_capacity() {
            info!("this machine's limits allow about {clients} clients ({limit} is the tightest)");
        }
        let Broker {
            listeners,
            base,
            queue,
            queue_thread,
            stopper,
            metrics,
            bridges,
            quic,
            ..
        } = self;
        let mut registries: Vec<Arc<Registry>> =
            listeners.iter().map(|l| Arc::clone(&l.registry)).collect();
        registries.extend(quic.iter().map(|l| Arc::clone(&l.registry)));
        start_handshake_reaper(&registries, base.connect_timeout, &stopper);
        let next_id = Arc::new(AtomicU64::new(1));
        let quic_threads = start_quic(quic, &queue, &next_id, &stopper);
        let mut listeners = listeners.into_iter();
        let first = listeners
            .next()
            .expect("Broker::new adds the first listener");
        let mut acceptors = Vec::new();
        for (n, bound) in listeners.enumerate() {
            let acceptor = AcceptLoop {
                queue: queue.clone(),
                stopper: stopper.clone(),
                next_id: Arc::clone(&next_id),
                all: registries.clone(),
                max_connections: base.max_connections,
            };
            let spawned = std::thread::Builder::new()
                .name(format!("acceptor-{}", n + 1))
                .spawn(move || acceptor.run(bound));
            match spawned {
                Ok(thread) => acceptors.push(thread),
                Err(e) => error!("cannot start an acceptor thread: {e}"),
            }
        }
        let acceptor = AcceptLoop {
            queue: queue.clone(),
            stopper: stopper.clone(),
            next_id,
            all: registries.clone(),
            max_connections: base.max_connections,
        };
        acceptor.run(first);
        for thread in acceptors {
            let _ = thread.join();
        }
        info!("shutting down");
        // Bridges first: each detaches its local session while the router still runs.
        bridges.stop();
        // The router closes every session's connection (DISCONNECT 0x8B for v5 clients) ...
        let _ = queue.shutdown();
        drop(queue);
        // ... then connections still in their handshake are closed too.
        let deadline = Instant::now() + Duration::from_millis(500);
        for registry in &registries {
            registry.wait_until_empty(deadline.saturating_duration_since(Instant::now()));
        }
        for registry in &registries {
            registry.close_all();
        }
        let deadline = Instant::now() + Duration::from_millis(1500);
        for registry in &registries {
            if !registry.wait_until_empty(deadline.saturating_duration_since(Instant::now())) {
                let open: usize = registries.iter().map(|r| r.len()).sum();
                warn!("{open} connections did not close in time");
                return;
            }
        }
        drop(metrics);
        // The QUIC endpoints end once their connections have closed (or after a grace).
        for thread in quic_threads {
            let _ = thread.join();
        }
        // Every client thread has dropped its router handle, so the router ends.
        let _ = queue_thread.join();
        info!("stopped");
    }
}

/// One listener's accept loop.
struct AcceptLoop {
    queue: QueueHandle,
    stopper: Stopper,
    next_id: Arc<AtomicU64>,
    /// Every listener's registry: the broker-wide connection limit counts them all.
    all: Vec<Arc<Registry>>,
    max_connections: usize,
}

impl AcceptLoop {
    fn run(self, bound: Bound) {
        let Bound {
            socket,
            settings,
            config,
            registry,
            transport,
        } = bound;
        info!("listening on {}", settings.addr);
        let mut admission = admission::Admission::new(&config, settings.max_connections);
        loop {
            let accepted = socket.accept();
            if self.stopper.is_stopping() {
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
            self.queue.stats().socket_accepted();
            let held: usize = self.all.iter().map(|r| r.len()).sum();
            if !admission.admit(&registry, held, self.max_connections, peer) {
                self.queue.stats().refused_connection_limit();
                // Closed at once, without CONNACK: the connections already held carry on.
                continue;
            }
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = client::spawn(
                stream,
                peer,
                id,
                self.queue.clone(),
                Arc::clone(&config),
                Arc::clone(&registry),
                Arc::clone(&transport),
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

/// Starts each QUIC listener's threads; their clients get connection ids from `next_id`.
fn start_quic(
    listeners: Vec<QuicBound>,
    queue: &QueueHandle,
    next_id: &Arc<AtomicU64>,
    stopper: &Stopper,
) -> Vec<JoinHandle<()>> {
    let mut threads = Vec::new();
    for bound in listeners {
        let QuicBound {
            socket,
            settings,
            config,
            registry,
        } = bound;
        let queue = queue.clone();
        let next_id = Arc::clone(next_id);
        let spawn: transport::quic::Spawner = Arc::new(move |transport, peer| {
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            client::spawn_transport(
                transport,
                peer,
                id,
                queue.clone(),
                Arc::clone(&config),
                Arc::clone(&registry),
            )
        });
        match transport::quic::start(socket, settings, spawn, Arc::clone(&stopper.stopping)) {
            Ok(listener) => threads.extend(listener.threads),
            Err(e) => error!("cannot start a QUIC listener: {e}"),
        }
    }
    threads
}

/// Starts the thread that closes connections whose CONNECT is late, on every listener.
fn start_handshake_reaper(registries: &[Arc<Registry>], timeout: Duration, stopper: &Stopper) {
    let registries = registries.to_vec();
    let stopping = Arc::clone(&stopper.stopping);
    let started = std::thread::Builder::new()
        .name("handshake-reaper".into())
        .spawn(move || admission::reap_handshakes(registries, timeout, stopping));
    if let Err(e) = started {
        error!("cannot start the handshake reaper: {e}");
    }
}

/// One listener's open connections, so that shutdown can close those not yet attached to a
/// session, and which of them are still in their handshake.
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
