//! A small MQTT 3.1, 3.1.1 and 5.0 broker on std threads: per client one reader thread and one
//! writer thread, and one routing actor, talking over crossbeam channels.
//!
//! # Layout
//! - [`broker`]: bind, the accept loop, admission (backlog, connection and handshake limits,
//!   the CONNECT deadline), shutdown. `main` and the tests share `Broker`.
//! - [`config`]: limits and defaults, from the environment.
//! - [`broker`]: bind, the accept loop, shutdown. `main` and the tests share `Broker`.
//! - [`config`]: limits and defaults, from the environment or a mosquitto.conf.
//! - [`auth`]: password files, ACL files, the HTTP hook, behind one `Authorizer`.
//! - [`limits`]: how many clients the machine's thread, map and file limits allow.
//! - [`client`]: one connection: `reader` (handshake, keepalive, packets in) and `writer`
//!   (the only code writing the socket), joined by `ClientHandle`.
//! - [`transport`]: what the client threads read and write through: plain TCP, TLS (rustls),
//!   WebSocket (tungstenite), made from an accepted socket by a listener's `Acceptor`; and
//!   QUIC (`transport::quic`, quinn-proto on its own endpoint thread, single and multi-stream).
//! - [`queue`]: the router actor (`QueueHandle` / `QueueActor`): sessions, subscriptions,
//!   retained messages, in-flight windows, session queues bounded in messages and bytes, and
//!   the flow control that keeps one slow client from holding up the others.
//!   retained messages, in-flight windows and offline queues.
//! - [`sys`]: counters, the `$SYS` topics and the Prometheus `/metrics` listener.
//! - [`mqtt`]: the packet model and codec for all three protocol versions, and topics.
//! - [`storage`]: the storage actor (redb): sessions, queues and retained messages that
//!   survive a crash, when `persistence_dir` is set.
//!
//! See ARCHITECTURE.md for the threads, channels and invariants.

pub mod auth;
pub mod bridge;
pub mod broker;
pub mod client;
pub mod config;
pub mod limits;
pub mod mqtt;
pub mod queue;
pub mod storage;
pub mod sys;
pub mod transport;

pub use broker::{Broker, Stopper};
pub use config::Config;
