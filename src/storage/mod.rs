//! Durable state: the storage actor that keeps sessions, subscriptions, queued and in-flight
//! messages, inbound QoS 2 state and retained messages in a redb database, so that they
//! survive a crash.
//!
//! Owns: `StorageHandle` (the actor's mailbox, one method per change) and starting the actor
//! after recovery. The router sends every change as a message and never waits for the disk:
//! what must wait for a commit (a PUBACK or PUBREC) is sent along as an `after_commit`
//! callback, which the storage thread runs once the batch holding the earlier changes is
//! committed. Must not: know about sockets or routing; the router decides what is stored.
//!
//! Layout: `schema` (tables and record encodings), `rows` (changes to the tables inside one
//! write transaction), `actor` (the batch loop: group commit, sync policy, failed commits),
//! `open` (opening, recovery, damaged files), `window` (stored queues read back a window at a
//! time), `power_cut_tests` (power loss and full disk, on a simulated disk), `test_disk` and
//! `fault_tests` (the whole broker on a store file with faults switched on by the test).

mod actor;
#[cfg(test)]
mod fault_tests;
mod open;
#[cfg(test)]
mod power_cut_tests;
mod rows;
pub mod schema;
#[cfg(test)]
pub(crate) mod test_disk;
mod window;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crossbeam_channel::Sender;

pub use open::{Recovered, RecoveredEntry, RecoveredSession, STORE_FILE};
pub use schema::{QueueEntry, SessionRecord};
pub use window::{Window, WINDOW};

use crate::mqtt::{PacketId, SubscriptionOptions};
use crate::queue::message::Message;

/// How the store is opened.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    pub dir: PathBuf,
    /// fsync every commit before its acknowledgements go (the default). Off: commits reach the
    /// disk at most a second later, and a crash or power cut loses up to that second.
    pub sync: bool,
    /// A store that cannot be opened or read is moved aside and an empty one started.
    pub reset_corrupt: bool,
}

/// Operations waiting in the storage channel; the bound makes a slow disk push back on the
/// router (and through its full inbox on the publishers).
pub const STORAGE_QUEUE_CAPACITY: usize = 8192;

/// Something to do once the changes sent before it are committed.
pub type AfterCommit = Box<dyn FnOnce() + Send>;

/// What the storage thread tells the router (on a channel the router reads beside its
/// inbox, in the order it happened).
pub enum StoreEvent {
    /// Every delivery with an id up to this one is committed (sent after a commit that
    /// stored a QoS 2 delivery: those go out only once stored).
    Committed(u64),
    /// A commit failed: these MQTT 5 PUBLISHes were answered with an error instead of being
    /// stored, and nothing of them will be stored; the router forgets them too.
    Refused(Vec<Refusal>),
}

/// Told to the router about a PUBLISH that could not be stored.
pub type Notify = Box<dyn Fn(StoreEvent) + Send>;

/// An MQTT 5 PUBLISH whose acknowledgement may say that it was not stored.
pub struct Refusal {
    pub message: Arc<Message>,
    /// The router's session slot of the publisher, and the PUBLISH's packet id.
    pub slot: u32,
    pub packet_id: PacketId,
}

pub(crate) enum Op {
    SaveSession(Box<SessionRecord>),
    DeleteSession(Arc<str>),
    SaveSubscription {
        client_id: Arc<str>,
        filter: String,
        options: SubscriptionOptions,
        identifier: Option<u32>,
    },
    DeleteSubscription {
        client_id: Arc<str>,
        filter: String,
    },
    Enqueue {
        client_id: Arc<str>,
        id: u64,
        entry: QueueEntry,
        /// The message `entry.message_id` names: written with the first row that holds it.
        message: Arc<Message>,
        /// No row held this message before (it has just been given its id).
        new_message: bool,
    },
    /// A queued message went out with `packet_id`, or (`released`) its PUBREL did.
    SetInflight {
        client_id: Arc<str>,
        id: u64,
        packet_id: PacketId,
        released: bool,
    },
    Dequeue {
        client_id: Arc<str>,
        id: u64,
    },
    Retain {
        topic: String,
        message: Option<Arc<Message>>,
    },
    /// A QoS 2 message received and answered with PUBREC, held until its PUBREL (`Some`), or
    /// released (`None`).
    InboundQos2 {
        client_id: Arc<str>,
        packet_id: PacketId,
        message: Option<Arc<Message>>,
    },
    /// The acknowledgement of an MQTT 5 PUBLISH, whose changes were sent before it in the same
    /// group: `stored` runs after the commit that holds them; if that commit fails, they are
    /// taken out of it, `refused` runs instead (an error code to the publisher) and the
    /// router is told (`StoreEvent::Refused`).
    AckPublish {
        refusal: Refusal,
        stored: AfterCommit,
        refused: AfterCommit,
    },
    /// The operations between `Group(true)` and `Group(false)` go into one transaction
    /// whatever the batch size (a QoS 2 message released: its routing and its removal).
    Group(bool),
    /// `Some(slot)`: an acknowledgement to the publisher in that router slot.
    AfterCommit(Option<u32>, AfterCommit),
    /// Reads queue rows of a session after delivery id `after` once everything sent before is
    /// committed, and hands them to `reply`.
    ReadWindow {
        client_id: Arc<str>,
        after: u64,
        reply: Box<dyn FnOnce(Window) + Send>,
    },
}

/// The storage actor's mailbox. Cheap to clone; the actor commits what is left and stops when
/// every handle has been dropped.
#[derive(Clone)]
pub struct StorageHandle {
    tx: Sender<Op>,
    /// Message and delivery ids: one increasing sequence, so that a session's queue read back
    /// in key order is in the order it was queued.
    ids: Arc<AtomicU64>,
}

/// Opens (and recovers) the store in `options.dir` and starts the storage thread. The error
/// names the file and what to do about it.
/// `notify` tells the router what it must know of commits (`StoreEvent`); `stats` counts
/// commit times and failures.
pub fn start(
    options: &StorageOptions,
    notify: Notify,
    stats: Arc<crate::sys::Stats>,
) -> Result<(StorageHandle, JoinHandle<()>, Recovered), String> {
    let (db, path, recovered) = open::open(options)?;
    let (tx, rx) = crossbeam_channel::bounded(STORAGE_QUEUE_CAPACITY);
    let file = path.clone();
    let reopen = Box::new(move || open::create_database(&file));
    stats.commits.enable();
    let actor =
        actor::StorageActor::new(rx, db, path, options.sync, reopen).with_events(notify, stats);
    let thread = thread::Builder::new()
        .name("storage".into())
        .spawn(move || actor.run())
        .map_err(|e| format!("cannot start the storage thread: {e}"))?;
    let handle = StorageHandle {
        tx,
        ids: Arc::new(AtomicU64::new(recovered.next_id)),
    };
    Ok((handle, thread, recovered))
}

impl StorageHandle {
    /// A new message or delivery id.
    pub fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    fn send(&self, op: Op) {
        // The actor only stops once every handle is gone, so this cannot fail while we exist.
        let _ = self.tx.send(op);
    }

    pub fn save_session(&self, record: SessionRecord) {
        self.send(Op::SaveSession(Box::new(record)));
    }

    /// Removes a session with its subscriptions, queue and held inbound QoS 2 messages.
    pub fn delete_session(&self, client_id: Arc<str>) {
        self.send(Op::DeleteSession(client_id));
    }

    pub fn save_subscription(
        &self,
        client_id: Arc<str>,
        filter: String,
        options: SubscriptionOptions,
        identifier: Option<u32>,
    ) {
        self.send(Op::SaveSubscription {
            client_id,
            filter,
            options,
            identifier,
        });
    }

    pub fn delete_subscription(&self, client_id: Arc<str>, filter: String) {
        self.send(Op::DeleteSubscription { client_id, filter });
    }

    /// Queues message `entry.message_id` for a session as delivery `id`. The message is
    /// stored once, however many sessions hold it, and removed with the last of them.
    pub fn enqueue(
        &self,
        client_id: Arc<str>,
        id: u64,
        entry: QueueEntry,
        message: Arc<Message>,
        new_message: bool,
    ) {
        self.send(Op::Enqueue {
            client_id,
            id,
            entry,
            message,
            new_message,
        });
    }

    pub fn set_inflight(&self, client_id: Arc<str>, id: u64, packet_id: PacketId, released: bool) {
        self.send(Op::SetInflight {
            client_id,
            id,
            packet_id,
            released,
        });
    }

    pub fn dequeue(&self, client_id: Arc<str>, id: u64) {
        self.send(Op::Dequeue { client_id, id });
    }

    /// Sets (or with `None` clears) the retained message of `topic`.
    pub fn retain(&self, topic: String, message: Option<Arc<Message>>) {
        self.send(Op::Retain { topic, message });
    }

    /// Holds (`Some`) or forgets (`None`) the QoS 2 message `packet_id` of a client, received
    /// and awaiting PUBREL.
    pub fn inbound_qos2(
        &self,
        client_id: Arc<str>,
        packet_id: PacketId,
        message: Option<Arc<Message>>,
    ) {
        self.send(Op::InboundQos2 {
            client_id,
            packet_id,
            message,
        });
    }

    /// Starts (`true`) or ends a group of operations committed in one transaction: none of
    /// them is stored without the others.
    pub fn group(&self, start: bool) {
        self.send(Op::Group(start));
    }

    /// Reads the next `WINDOW` rows of a session's queue after delivery id `after`, once
    /// every change sent before is committed, and passes them to `reply` (on the storage
    /// thread: it must only send them on).
    pub fn read_window(
        &self,
        client_id: Arc<str>,
        after: u64,
        reply: Box<dyn FnOnce(Window) + Send>,
    ) {
        self.send(Op::ReadWindow {
            client_id,
            after,
            reply,
        });
    }

    /// Runs `f` on the storage thread once every change sent before it is committed (synced,
    /// unless sync is off).
    pub fn after_commit(&self, f: AfterCommit) {
        self.send(Op::AfterCommit(None, f));
    }

    /// As `after_commit`, for an acknowledgement to the publisher in router slot `slot`: an
    /// MQTT 5 PUBLISH of the same publisher behind it is not refused before it runs.
    pub fn after_commit_for(&self, slot: u32, f: AfterCommit) {
        self.send(Op::AfterCommit(Some(slot), f));
    }

    /// Runs `stored` once the changes of `refusal.message` (sent before, in the same open
    /// group) are committed; or, if that commit fails, drops them from it and runs `refused`.
    pub fn ack_publish(&self, refusal: Refusal, stored: AfterCommit, refused: AfterCommit) {
        self.send(Op::AckPublish {
            refusal,
            stored,
            refused,
        });
    }
}
