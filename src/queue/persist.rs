//! The router's side of persistence: what it tells the storage actor, in its own words.
//!
//! Owns: `Persistence` (the storage handle, if persistence is on, and the storage thread) and
//! `Journal` (one kept session's link to the store: the router's session changes become
//! storage messages through it). Only sessions that outlive their connection get a journal,
//! so clean sessions are never written. Must not: wait for the disk; everything here is a
//! message sent on the storage actor's bounded channel.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::message::{Delivery, Message};
use super::session::Subscription;
use super::Msg;
use crate::auth::Identity;
use crate::config::Config;
use crate::mqtt::{PacketId, ProtocolVersion, QoS, Will};
use crate::storage::{
    self, QueueEntry, Recovered, Refusal, SessionRecord, StorageHandle, StorageOptions, Window,
    WINDOW,
};
use crate::sys::Stats;

/// Where stored QoS 2 deliveries stand: every delivery id up to `upto` is committed, and the
/// sessions in `waiting` have one that is not yet (woken when it is). Set by the router only
/// (from `StoreEvent::Committed`, in the order of the storage thread's events).
#[derive(Default)]
struct Committed {
    upto: AtomicU64,
    waiting: parking_lot::Mutex<Vec<u32>>,
}

/// Persistence as the router holds it: off, or the storage actor's handle.
#[derive(Default)]
pub(super) struct Persistence {
    storage: Option<StorageHandle>,
    thread: Option<JoinHandle<()>>,
    /// Windows of stored queues read back for the router: unbounded, so that the storage
    /// thread never waits for the router (which may be waiting for it). At most one request
    /// per session is outstanding.
    replies: Option<(Sender<Msg>, Receiver<Msg>)>,
    committed: Arc<Committed>,
}

impl Persistence {
    /// Opens and recovers the store when `persistence_dir` is set. The error names the file
    /// and what to do.
    pub fn start(config: &Config, stats: Arc<Stats>) -> io::Result<(Persistence, Recovered)> {
        let Some(dir) = &config.persistence_dir else {
            return Ok((Persistence::default(), Recovered::default()));
        };
        let options = StorageOptions {
            dir: dir.clone(),
            sync: config.persistence_sync,
            reset_corrupt: config.reset_corrupt_store,
        };
        let (replies_tx, replies_rx) = crossbeam_channel::unbounded();
        let events = replies_tx.clone();
        let notify = Box::new(move |event| {
            let _ = events.send(Msg::Storage(event));
        });
        let (storage, thread, recovered) =
            storage::start(&options, notify, stats).map_err(io::Error::other)?;
        let committed = Committed::default();
        // Everything recovered is stored.
        committed
            .upto
            .store(recovered.next_id.saturating_sub(1), Ordering::Relaxed);
        let persistence = Persistence {
            storage: Some(storage),
            thread: Some(thread),
            replies: Some((replies_tx, replies_rx)),
            committed: Arc::new(committed),
        };
        Ok((persistence, recovered))
    }

    /// The storage thread has committed every delivery up to `upto`: returns the sessions
    /// that waited for it, to be pumped.
    pub fn committed(&self, upto: u64) -> Vec<u32> {
        self.committed.upto.fetch_max(upto, Ordering::Relaxed);
        std::mem::take(&mut *self.committed.waiting.lock())
    }

    /// Acknowledges an MQTT 5 PUBLISH whose changes were sent since `group_start`: `stored`
    /// runs once they are committed (at once with persistence off); if the commit fails,
    /// they are dropped from it and `refused` runs instead (the router hears of it as
    /// `StoreEvent::Refused`).
    pub fn ack_publish(
        &self,
        refusal: Refusal,
        stored: impl FnOnce() + Send + 'static,
        refused: impl FnOnce() + Send + 'static,
    ) {
        match &self.storage {
            Some(storage) => storage.ack_publish(refusal, Box::new(stored), Box::new(refused)),
            None => stored(),
        }
    }

    /// Clears a retained message in the store (one refused by a failed commit).
    pub fn clear_retained(&self, topic: &str) {
        if let Some(storage) = &self.storage {
            storage.retain(topic.to_owned(), None);
        }
    }

    pub fn is_on(&self) -> bool {
        self.storage.is_some()
    }

    /// The journal for a session with `expiry` (none for a session that ends with its
    /// connection, or with persistence off).
    pub fn journal(
        &self,
        slot: u32,
        client_id: &Arc<str>,
        expiry: u32,
        version: ProtocolVersion,
    ) -> Option<Journal> {
        let storage = self.storage.as_ref()?;
        let (replies, _) = self.replies.as_ref()?;
        (expiry != 0).then(|| Journal {
            storage: storage.clone(),
            client_id: Arc::clone(client_id),
            version,
            slot,
            replies: replies.clone(),
            on_disk: 0,
            cursor: 0,
            window_requested: false,
            committed: Arc::clone(&self.committed),
            waiting: false,
            offline_since: None,
            identity: None,
        })
    }

    /// Where the storage thread's answers arrive (windows of stored queues).
    pub fn replies(&self) -> Option<&Receiver<Msg>> {
        self.replies.as_ref().map(|(_, rx)| rx)
    }

    /// The retained message of its topic changed (an empty payload clears it). The broker's
    /// own `$SYS` topics are not stored: they are published afresh after a start.
    pub fn retain(&self, message: &Arc<Message>) {
        if let Some(storage) = &self.storage {
            let publish = &message.publish;
            if publish.topic.starts_with("$SYS/") {
                return;
            }
            let kept = (!publish.payload.is_empty()).then(|| Arc::clone(message));
            storage.retain(publish.topic.clone(), kept);
        }
    }

    /// Runs `f` once everything sent to the store so far is committed (at once when
    /// persistence is off). PUBACK and PUBREC go this way, so that no message is acknowledged
    /// before it is stored, and acknowledgements keep their order.
    pub fn when_stored(&self, f: impl FnOnce() + Send + 'static) {
        match &self.storage {
            Some(storage) => storage.after_commit(Box::new(f)),
            None => f(),
        }
    }

    /// As `when_stored`, for an acknowledgement to the publisher in session `slot`: an MQTT 5
    /// PUBLISH of the same publisher acknowledged after it is not refused ahead of it when a
    /// commit fails (acknowledgements keep their order [MQTT-4.6.0-2]).
    pub fn when_stored_for(&self, slot: u32, f: impl FnOnce() + Send + 'static) {
        match &self.storage {
            Some(storage) => storage.after_commit_for(slot, Box::new(f)),
            None => f(),
        }
    }

    /// Starts a group of changes that are committed together or not at all (ended by
    /// `group_end`; the storage thread waits for the end before it commits).
    pub fn group_start(&self) {
        if let Some(storage) = &self.storage {
            storage.group(true);
        }
    }

    pub fn group_end(&self) {
        if let Some(storage) = &self.storage {
            storage.group(false);
        }
    }

    /// Lets the storage actor commit what is left and waits for it to stop. Every `Journal`
    /// (held by sessions) must be gone first.
    pub fn close(&mut self) {
        self.storage = None;
        self.replies = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A kept session's link to the store.
pub(super) struct Journal {
    storage: StorageHandle,
    client_id: Arc<str>,
    version: ProtocolVersion,
    slot: u32,
    replies: Sender<Msg>,
    /// Queued messages kept on disk only (not in memory), all after delivery id `cursor`.
    on_disk: u64,
    cursor: u64,
    /// A window of them has been asked for and not arrived yet.
    window_requested: bool,
    committed: Arc<Committed>,
    /// This session is on the list of those waiting for a commit.
    waiting: bool,
    /// When its connection ended, as last written (kept when the record is written again).
    offline_since: Option<u64>,
    /// Who its client is (username, listener), written with the record.
    identity: Option<Identity>,
}

impl Journal {
    /// Whether a queued delivery may go out now. A stored QoS 2 delivery waits for the commit
    /// that stored it: sent before and lost to a crash, its PUBLISH would be routed again
    /// after the restart (its PUBREL resent by the publisher) and arrive twice. The session is
    /// woken when that commit is done (`Persistence::committed`).
    pub fn may_send(&mut self, delivery: &Delivery) -> bool {
        if delivery.qos != QoS::ExactlyOnce
            || delivery.stored == 0
            || delivery.stored <= self.committed.upto.load(Ordering::Relaxed)
        {
            return true;
        }
        if !self.waiting {
            self.waiting = true;
            self.committed.waiting.lock().push(self.slot);
        }
        false
    }

    /// Woken by a commit: the next wait registers again.
    pub fn woken(&mut self) {
        self.waiting = false;
    }

    pub fn set_version(&mut self, version: ProtocolVersion) {
        self.version = version;
    }

    /// The client attached (or recovered) is `identity`: written with every record from now.
    pub fn set_identity(&mut self, identity: Option<Identity>) {
        self.identity = identity;
    }

    /// Recovery left `on_disk` queued messages on disk, after delivery id `cursor`.
    pub fn set_on_disk(&mut self, on_disk: u64, cursor: u64) {
        self.on_disk = on_disk;
        self.cursor = cursor;
    }

    pub fn on_disk(&self) -> u64 {
        self.on_disk
    }

    /// Whether a new QoS 1/2 message goes to disk only: always once some are there (so that
    /// order is kept), and for an offline session that already holds a window in memory.
    pub fn spills(&self, online: bool, in_memory: usize) -> bool {
        self.on_disk > 0 || (!online && in_memory >= WINDOW)
    }

    /// Stores a message for this session without keeping it in memory.
    pub fn spill(&mut self, mut delivery: Delivery) {
        self.queued(&mut delivery);
        if self.on_disk == 0 {
            // Everything in memory came before it; everything after it goes to disk too.
            self.cursor = delivery.stored - 1;
        }
        self.on_disk += 1;
    }

    /// Asks for the next window of the queue on disk when memory holds half a window or less.
    pub fn refill(&mut self, in_memory: usize) {
        if self.on_disk == 0 || self.window_requested || in_memory > WINDOW / 2 {
            return;
        }
        self.window_requested = true;
        let replies = self.replies.clone();
        let slot = self.slot;
        let client_id = Arc::clone(&self.client_id);
        self.storage.read_window(
            Arc::clone(&self.client_id),
            self.cursor,
            Box::new(move |window| {
                let _ = replies.send(Msg::StoredWindow {
                    slot,
                    client_id,
                    window,
                });
            }),
        );
    }

    /// A window asked for has arrived: counts it off and removes its expired rows. False if
    /// it was not asked for by this journal (the session was replaced since).
    pub fn window_arrived(&mut self, window: &Window) -> bool {
        if !self.window_requested {
            return false;
        }
        self.window_requested = false;
        let read = (window.entries.len() + window.expired.len()) as u64;
        match window.last {
            Some(last) => {
                self.cursor = last;
                self.on_disk = self.on_disk.saturating_sub(read);
            }
            // Nothing more there (rows removed meanwhile): the count was stale.
            None => self.on_disk = 0,
        }
        for &id in &window.expired {
            self.storage.dequeue(Arc::clone(&self.client_id), id);
        }
        true
    }

    /// Writes the session record; `offline` when its connection has just ended. The will of
    /// an offline session is one waiting out its delay: due `will_delay_interval` after the
    /// connection ended, on the wall clock (recovery publishes it, or waits for the rest).
    pub fn save(&mut self, expiry: u32, offline: bool, will: Option<&Will>) {
        self.offline_since = offline.then(storage::schema::unix_now);
        self.write_record(expiry, will);
    }

    /// A recovered record went offline at `since`.
    pub fn set_offline_since(&mut self, since: Option<u64>) {
        self.offline_since = since;
    }

    /// The delayed will has been published: the record is written again without it (and
    /// with the time the connection ended, on which its expiry depends).
    pub fn will_published(&self, expiry: u32) {
        self.write_record(expiry, None);
    }

    fn write_record(&self, expiry: u32, will: Option<&Will>) {
        self.storage.save_session(SessionRecord {
            client_id: Arc::clone(&self.client_id),
            version: self.version,
            expiry,
            offline_since: self.offline_since,
            will: will.cloned(),
            identity: self.identity.clone(),
        });
    }

    /// The session has ended: everything it stored goes.
    pub fn delete(&self) {
        self.storage.delete_session(Arc::clone(&self.client_id));
    }

    pub fn subscribed(&self, filter: &str, subscription: &Subscription) {
        self.storage.save_subscription(
            Arc::clone(&self.client_id),
            filter.to_owned(),
            subscription.options,
            subscription.identifier,
        );
    }

    pub fn unsubscribed(&self, filter: &str) {
        self.storage
            .delete_subscription(Arc::clone(&self.client_id), filter.to_owned());
    }

    /// A QoS 1/2 message joins the session's queue: it gets a delivery id, and its message an
    /// id the first time any session stores it.
    pub fn queued(&self, delivery: &mut Delivery) {
        if delivery.qos == QoS::AtMostOnce {
            return;
        }
        let message = &delivery.message;
        let mut message_id = message.stored.load(Ordering::Relaxed);
        let new_message = message_id == 0;
        if new_message {
            message_id = self.storage.next_id();
            message.stored.store(message_id, Ordering::Relaxed);
        }
        delivery.stored = self.storage.next_id();
        let entry = QueueEntry {
            message_id,
            qos: delivery.qos,
            retain: delivery.retain,
            packet_id: None,
            released: false,
            subscription_ids: delivery.subscription_ids.as_slice().to_vec(),
        };
        self.storage.enqueue(
            Arc::clone(&self.client_id),
            delivery.stored,
            entry,
            Arc::clone(message),
            new_message,
        );
    }

    /// A stored message went out with `packet_id`.
    pub fn sent(&self, delivery: &Delivery, packet_id: PacketId) {
        if delivery.stored != 0 {
            let client_id = Arc::clone(&self.client_id);
            self.storage
                .set_inflight(client_id, delivery.stored, packet_id, false);
        }
    }

    /// PUBREC arrived and PUBREL went out for a stored QoS 2 message.
    pub fn released(&self, delivery: &Delivery, packet_id: PacketId) {
        if delivery.stored != 0 {
            let client_id = Arc::clone(&self.client_id);
            self.storage
                .set_inflight(client_id, delivery.stored, packet_id, true);
        }
    }

    /// A stored message is finished with: acknowledged, expired or skipped.
    pub fn done(&self, delivery: &Delivery) {
        if delivery.stored != 0 {
            self.storage
                .dequeue(Arc::clone(&self.client_id), delivery.stored);
        }
    }

    /// A QoS 2 message the client sent us with `packet_id` is held until its PUBREL
    /// (`Some`), or no longer is (`None`: released).
    pub fn inbound_qos2(&self, packet_id: PacketId, message: Option<&Arc<Message>>) {
        self.storage
            .inbound_qos2(Arc::clone(&self.client_id), packet_id, message.cloned());
    }
}

/// The next message from the inbox or from `replies`, waiting until `deadline` at most.
/// Disconnected only when the inbox is: the router's life follows its handles alone.
pub(super) fn receive_either(
    inbox: &Receiver<Msg>,
    replies: &Receiver<Msg>,
    deadline: Option<Instant>,
) -> Result<Option<Msg>, RecvTimeoutError> {
    if let Ok(msg) = replies.try_recv() {
        return Ok(Some(msg));
    }
    let mut select = crossbeam_channel::Select::new();
    let from_inbox = select.recv(inbox);
    select.recv(replies);
    let ready = match deadline {
        Some(deadline) => select
            .select_deadline(deadline)
            .map_err(|_| RecvTimeoutError::Timeout)?,
        None => select.select(),
    };
    if ready.index() == from_inbox {
        ready
            .recv(inbox)
            .map(Some)
            .map_err(|_| RecvTimeoutError::Disconnected)
    } else {
        Ok(ready.recv(replies).ok())
    }
}
