//! The message-queue actor's API: `QueueHandle` and the messages it sends.
//!
//! Owns: the vocabulary between client threads and the router. Must not: hold state; every
//! method only builds a `Msg` and sends it (and, for requests, waits for the one reply).

mod actor;
mod budget;
mod flow;
pub mod message;
mod persist;
mod retained;
mod session;
mod shared;
pub mod subscriptions;
mod timers;

use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crossbeam_channel::{Receiver, Sender};

pub use actor::QueueActor;
use message::Message;

use crate::client::{AckKind, ClientHandle};
use crate::config::Config;
use crate::mqtt::{Disconnect, PacketId, ProtocolVersion, Publish, Subscribe, Unsubscribe, Will};

/// The router has stopped (the broker is shutting down); the caller should end its loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouterGone;

/// Names one connection of one session: the session's slot in the router and the connection's
/// broker-wide unique id. Messages from a connection that no longer owns the session (after a
/// takeover) are recognised by the id and ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionRef {
    pub slot: u32,
    pub connection: u64,
}

/// What the router needs to attach a connection to a session.
pub struct ConnectRequest {
    pub connection_id: u64,
    pub client_id: String,
    /// The id was assigned by the server (v5 reports it in CONNACK).
    pub assigned_client_id: bool,
    pub clean_start: bool,
    /// Seconds the session outlives the connection: 0 ends it with the connection,
    /// `u32::MAX` never expires (3.1.1 clean session 0).
    pub session_expiry: u32,
    pub version: ProtocolVersion,
    pub will: Option<Will>,
    /// Most QoS 1 and 2 messages the client accepts unacknowledged (v5; 65535 otherwise).
    pub receive_maximum: u16,
    /// The client's Maximum Packet Size (v5).
    pub max_packet_size: Option<u32>,
    /// Request Problem Information (v5; true otherwise).
    pub problem_information: bool,
    /// Request Response Information (v5).
    pub response_information: bool,
    /// The keepalive the server imposes, when it capped the client's (v5).
    pub server_keep_alive: Option<u16>,
    pub writer: ClientHandle,
    /// The client's identity for read checks per delivery (None: no ACL file).
    pub read_acl: Option<crate::auth::ReadAcl>,
    /// Its username and listener, stored with a persistent session to rebuild `read_acl`
    /// after a restart.
    pub identity: crate::auth::Identity,
}

/// How a connection ended.
pub enum Ending {
    /// The client sent DISCONNECT (with reason 0x04 the will is still published).
    Disconnect(Box<Disconnect>),
    /// Lost, timed out or closed for a protocol violation: the will is published.
    Abnormal,
}

pub(crate) enum Msg {
    Connect {
        request: Box<ConnectRequest>,
        reply: Sender<ConnectionRef>,
    },
    Publish {
        from: ConnectionRef,
        message: Arc<Message>,
        /// The PUBLISH's packet id (QoS 1 and 2), for its acknowledgement.
        packet_id: Option<PacketId>,
    },
    Ack {
        from: ConnectionRef,
        kind: AckKind,
        packet_id: PacketId,
    },
    /// PINGREQ: answered by the router, so that PINGRESP follows the answers to the packets
    /// read before it, as mosquitto orders them.
    Ping {
        from: ConnectionRef,
    },
    /// Several PUBACKs read in one go.
    PubAcks {
        from: ConnectionRef,
        packet_ids: Vec<PacketId>,
    },
    Subscribe {
        from: ConnectionRef,
        subscribe: Subscribe,
    },
    /// SUBSCRIBE with the filters at `refused` denied by access control (SUBACK 0x80/0x87).
    SubscribeRefusing {
        from: ConnectionRef,
        subscribe: Subscribe,
        refused: Vec<usize>,
    },
    Unsubscribe {
        from: ConnectionRef,
        unsubscribe: Unsubscribe,
    },
    Disconnect {
        from: ConnectionRef,
        ending: Ending,
    },
    WriterDrained {
        from: ConnectionRef,
    },
    Shutdown {
        reply: Sender<()>,
    },
    /// Queued messages of a session read back from the store (from the storage thread).
    StoredWindow {
        slot: u32,
        client_id: Arc<str>,
        window: crate::storage::Window,
    },
    /// A commit done or failed (from the storage thread).
    Storage(crate::storage::StoreEvent),
    /// Messages waiting in a session's queue (a lazy bridge asks about its own).
    Queued {
        client_id: String,
        reply: Sender<usize>,
    },
}

/// The router's mailbox. Cheap to clone; the router stops when every handle has been dropped.
#[derive(Clone)]
pub struct QueueHandle {
    tx: Sender<Msg>,
    stats: Arc<crate::sys::Stats>,
}

impl QueueHandle {
    /// Starts the router on its own thread.
    /// `authorizers` are the listeners' (for the ACLs of sessions recovered from the store).
    pub fn start(
        config: &Config,
        authorizers: &crate::auth::Authorizers,
    ) -> std::io::Result<(QueueHandle, JoinHandle<()>)> {
        let (tx, rx): (Sender<Msg>, Receiver<Msg>) =
            crossbeam_channel::bounded(config.router_queue_capacity);
        let mut actor = QueueActor::new(rx, config);
        let stats = actor.stats();
        let (persistence, recovered) = persist::Persistence::start(config, Arc::clone(&stats))?;
        actor.restore(persistence, recovered, authorizers);
        let thread = thread::Builder::new()
            .name("queue".into())
            .spawn(move || actor.run())?;
        Ok((QueueHandle { tx, stats }, thread))
    }

    /// The broker's counters, for the client threads to count what they read and write.
    pub fn stats(&self) -> &Arc<crate::sys::Stats> {
        &self.stats
    }

    fn send(&self, msg: Msg) -> Result<(), RouterGone> {
        self.tx.send(msg).map_err(|_| RouterGone)
    }

    /// Attaches a connection to its session; the router sends CONNACK and any redeliveries.
    pub fn connect(&self, request: ConnectRequest) -> Result<ConnectionRef, RouterGone> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.send(Msg::Connect {
            request: Box::new(request),
            reply,
        })?;
        rx.recv().map_err(|_| RouterGone)
    }

    /// Routes a PUBLISH received from a client; the router acknowledges it. The shared
    /// `Message` is built here, on the client's thread, to keep allocation off the router's.
    pub fn publish(&self, from: ConnectionRef, mut publish: Publish) -> Result<(), RouterGone> {
        let packet_id = publish.packet_id.take();
        publish.dup = false;
        publish.properties.topic_alias = None;
        self.send(Msg::Publish {
            from,
            message: Arc::new(Message::new(publish)),
            packet_id,
        })
    }

    /// PINGREQ, to be answered in order with the packets before it.
    pub fn ping(&self, from: ConnectionRef) -> Result<(), RouterGone> {
        self.send(Msg::Ping { from })
    }

    /// PUBACK, PUBREC or PUBCOMP for a message we sent, or PUBREL for one we received.
    pub fn ack(
        &self,
        from: ConnectionRef,
        kind: AckKind,
        packet_id: PacketId,
    ) -> Result<(), RouterGone> {
        self.send(Msg::Ack {
            from,
            kind,
            packet_id,
        })
    }

    /// PUBACKs for messages we sent, as many as the reader had at hand: one message to the
    /// router instead of one per PUBACK.
    pub fn pub_acks(
        &self,
        from: ConnectionRef,
        packet_ids: Vec<PacketId>,
    ) -> Result<(), RouterGone> {
        self.send(Msg::PubAcks { from, packet_ids })
    }

    pub fn subscribe(&self, from: ConnectionRef, subscribe: Subscribe) -> Result<(), RouterGone> {
        self.send(Msg::Subscribe { from, subscribe })
    }

    /// SUBSCRIBE of which the filters at the indexes `refused` were denied by access control.
    pub fn subscribe_refusing(
        &self,
        from: ConnectionRef,
        subscribe: Subscribe,
        refused: Vec<usize>,
    ) -> Result<(), RouterGone> {
        if refused.is_empty() {
            return self.subscribe(from, subscribe);
        }
        self.send(Msg::SubscribeRefusing {
            from,
            subscribe,
            refused,
        })
    }

    pub fn unsubscribe(
        &self,
        from: ConnectionRef,
        unsubscribe: Unsubscribe,
    ) -> Result<(), RouterGone> {
        self.send(Msg::Unsubscribe { from, unsubscribe })
    }

    /// The connection has ended; the router publishes the will when due and keeps or ends the
    /// session.
    pub fn disconnect(&self, from: ConnectionRef, ending: Ending) -> Result<(), RouterGone> {
        self.send(Msg::Disconnect { from, ending })
    }

    /// The writer has emptied a channel the router found full.
    pub fn writer_drained(&self, from: ConnectionRef) -> Result<(), RouterGone> {
        self.send(Msg::WriterDrained { from })
    }

    /// How many messages wait in the queue of the session `client_id` (0 without one).
    pub fn queued(&self, client_id: &str) -> Result<usize, RouterGone> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.send(Msg::Queued {
            client_id: client_id.to_string(),
            reply,
        })?;
        rx.recv().map_err(|_| RouterGone)
    }

    /// Closes every client connection (v5 clients get DISCONNECT 0x8B) and waits until the
    /// router has done so.
    pub fn shutdown(&self) -> Result<(), RouterGone> {
        let (reply, rx) = crossbeam_channel::bounded(1);
        self.send(Msg::Shutdown { reply })?;
        rx.recv().map_err(|_| RouterGone)
    }
}
