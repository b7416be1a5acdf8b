//! The storage thread: group commit of whatever the router sent, then the acknowledgements
//! that waited for it.
//!
//! Owns: the database while the broker runs, the batch loop, the sync policy and what happens
//! when a commit fails. Must not: be waited for by the router (the router only sends), or run
//! an `after_commit` callback before the changes sent ahead of it are committed.
//!
//! One round: block for the first operation, take every other one waiting (up to `MAX_BATCH`),
//! apply them in one write transaction, commit once (one fsync with sync on), then run the
//! callbacks in order. Under load batches grow by themselves; no timer is involved. A delivery
//! queued and removed within one batch (sent and acknowledged while the previous commit was
//! syncing) cancels out in memory and never reaches the file; nor does its message if no other
//! session holds it. A group of operations (`Op::Group`) is never split across batches.
//!
//! A failed commit (a full disk) is retried every second, with what arrived meanwhile; each
//! failed attempt refuses the MQTT 5 PUBLISHes in it (`Op::AckPublish`): their rows are taken
//! out, the router is told to forget them and their publishers get an error code. Nothing
//! else is acknowledged until the disk takes it.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};
use log::{debug, error, info, warn};
use redb::{Database, Durability, ReadableTable};

use super::rows::{DbResult, Dequeued, Tables};
use super::schema::{
    encode_message, encode_subscription, QueueEntry, ENTRY_PACKET_ID, ENTRY_STAGE,
};
use super::window::{read_window, Window, WINDOW};
use super::{AfterCommit, Notify, Op, Refusal, StoreEvent};
use crate::mqtt::QoS;
use crate::queue::message::Message;
use crate::sys::Stats;

/// The most operations applied in one transaction.
const MAX_BATCH: usize = 16 * 1024;
/// With sync off, how long a commit may stay unsynced.
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// How long to wait before retrying a failed commit.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// What waits for the commit of a batch, in the order it was sent.
enum Later {
    /// With the publisher's slot when it is an acknowledgement.
    Callback(Option<u32>, AfterCommit),
    /// An MQTT 5 publisher's acknowledgement: refused when the commit fails.
    Ack {
        refusal: Refusal,
        stored: AfterCommit,
        refused: AfterCommit,
    },
    Window {
        client_id: Arc<str>,
        after: u64,
        reply: Box<dyn FnOnce(Window) + Send>,
    },
}

/// How an operation changes the number of open groups.
fn group_change(op: &Op) -> i32 {
    match op {
        Op::Group(true) => 1,
        Op::Group(false) => -1,
        _ => 0,
    }
}

/// Opens the database again after a failed commit.
pub(super) type Reopen = Box<dyn FnMut() -> Result<Database, redb::DatabaseError> + Send>;

/// Failed attempts after which a stopping broker gives up on a commit.
const GIVE_UP_AT_SHUTDOWN: u32 = 3;

/// The most message ids of refused PUBLISHes remembered (their later copies are dropped too).
const REFUSED_IDS_KEPT: usize = 64 * 1024;

pub(super) struct StorageActor {
    rx: Receiver<Op>,
    db: Option<Database>,
    path: PathBuf,
    sync: bool,
    /// With sync off, how long a commit may stay unsynced (`SYNC_EVERY`).
    sync_every: Duration,
    reopen: Reopen,
    /// Tells the router about commits (`StoreEvent`).
    notify: Option<Notify>,
    stats: Option<Arc<Stats>>,
    /// Message ids of PUBLISHes refused during a failed commit: a copy of one that reaches
    /// the storage thread afterwards (before the router has forgotten it) is not stored.
    refused_ids: HashSet<u64>,
}

impl StorageActor {
    pub fn new(rx: Receiver<Op>, db: Database, path: PathBuf, sync: bool, reopen: Reopen) -> Self {
        StorageActor {
            rx,
            db: Some(db),
            path,
            sync,
            sync_every: SYNC_EVERY,
            reopen,
            notify: None,
            stats: None,
            refused_ids: HashSet::new(),
        }
    }

    /// Where commits are reported (the router) and counted (`/metrics`).
    pub fn with_events(mut self, notify: Notify, stats: Arc<Stats>) -> Self {
        self.notify = Some(notify);
        self.stats = Some(stats);
        self
    }

    /// Another interval for the periodic sync when sync is off (tests).
    #[cfg(test)]
    pub fn with_sync_every(mut self, interval: Duration) -> Self {
        self.sync_every = interval;
        self
    }

    pub fn run(mut self) {
        let mut unsynced_since: Option<Instant> = None;
        let mut ops = Vec::new();
        loop {
            let first = match unsynced_since {
                Some(since) => match self.rx.recv_deadline(since + self.sync_every) {
                    Ok(op) => op,
                    Err(RecvTimeoutError::Timeout) => {
                        self.sync_now();
                        unsynced_since = None;
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                None => match self.rx.recv() {
                    Ok(op) => op,
                    Err(_) => break,
                },
            };
            let open_groups = group_change(&first);
            ops.push(first);
            // A group left open by a stopping router is committed as it is.
            let _ = self.gather(&mut ops, open_groups, MAX_BATCH);
            let wrote = self.commit(&mut ops);
            if wrote && !self.sync && unsynced_since.is_none() {
                unsynced_since = Some(Instant::now());
            }
            if let Some(since) = unsynced_since {
                if since.elapsed() >= self.sync_every {
                    self.sync_now();
                    unsynced_since = None;
                }
            }
        }
        if unsynced_since.is_some() {
            self.sync_now();
        }
        debug!("storage stopped");
    }

    /// Takes what is waiting, up to `limit` operations, but never stops inside a group
    /// (`open_groups` are open already): the router sends a group's operations at once, so
    /// the rest is on its way.
    /// Returns false once every handle is gone and nothing is left (the broker stops).
    fn gather(&self, ops: &mut Vec<Op>, mut open_groups: i32, limit: usize) -> bool {
        while ops.len() < limit || open_groups > 0 {
            let next = if open_groups > 0 {
                self.rx.recv().map_err(|_| TryRecvError::Disconnected)
            } else {
                self.rx.try_recv()
            };
            match next {
                Ok(op) => {
                    open_groups += group_change(&op);
                    ops.push(op);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
        true
    }

    /// Sorts operations into changes and what waits for their commit.
    fn split(&self, ops: &mut Vec<Op>, writes: &mut Vec<Op>, callbacks: &mut Vec<Later>) {
        for op in ops.drain(..) {
            match op {
                Op::AfterCommit(slot, f) => callbacks.push(Later::Callback(slot, f)),
                Op::AckPublish {
                    refusal,
                    stored,
                    refused,
                } => callbacks.push(Later::Ack {
                    refusal,
                    stored,
                    refused,
                }),
                Op::ReadWindow {
                    client_id,
                    after,
                    reply,
                } => callbacks.push(Later::Window {
                    client_id,
                    after,
                    reply,
                }),
                Op::Group(_) => {}
                Op::Enqueue { ref entry, .. }
                    if !self.refused_ids.is_empty()
                        && self.refused_ids.contains(&entry.message_id) => {}
                write => writes.push(write),
            }
        }
    }

    /// Commits the changes in `ops`, then runs the callbacks. A failed commit is retried every
    /// second with whatever arrived meanwhile; each failure refuses the MQTT 5 PUBLISHes in it
    /// (their changes are taken out, their publishers answered with an error), while the
    /// rest (older clients' messages, session changes) waits for the disk. Returns whether
    /// anything was written.
    fn commit(&mut self, ops: &mut Vec<Op>) -> bool {
        let mut callbacks: Vec<Later> = Vec::new();
        let mut writes = Vec::with_capacity(ops.len());
        self.split(ops, &mut writes, &mut callbacks);
        let mut failures = 0u32;
        let mut refused = 0usize;
        while !writes.is_empty() {
            let started = Instant::now();
            match self.apply(&writes) {
                Ok(committed) => {
                    if let (true, Some(stats)) = (committed, &self.stats) {
                        stats.commits.committed(started.elapsed());
                    }
                    break;
                }
                Err(e) => {
                    failures += 1;
                    if let Some(stats) = &self.stats {
                        stats.commits.failed();
                    }
                    // Loud once per episode (and a reminder every minute), never per message.
                    if failures == 1 || failures.is_multiple_of(60) {
                        error!(
                            "STORAGE COMMIT FAILED for {} ({e}): nothing more is acknowledged \
                             until it is stored. MQTT 5 publishers get PUBACK/PUBREC 0x80 \
                             (unspecified error) for messages that could not be stored; MQTT \
                             3.1/3.1.1 publishers' acknowledgements are held. Retrying every \
                             second (attempt {failures}); free space on the disk to recover",
                            self.path.display()
                        );
                    }
                    refused += self.refuse(&mut writes, &mut callbacks);
                    std::thread::sleep(RETRY_EVERY);
                    self.reopen_after_failure();
                    // What arrived meanwhile joins the next attempt: new MQTT 5 PUBLISHes are
                    // refused when it fails instead of waiting behind it.
                    let room = MAX_BATCH.saturating_sub(writes.len() + callbacks.len());
                    let mut more = Vec::new();
                    let running = self.gather(&mut more, 0, room);
                    self.split(&mut more, &mut writes, &mut callbacks);
                    if !running && failures >= GIVE_UP_AT_SHUTDOWN {
                        // The broker is stopping and every client is gone: nothing of this
                        // was acknowledged, so nothing acknowledged is lost.
                        error!(
                            "storage: the broker stops with {} changes not stored in {} (the \
                             disk still fails); none of them was acknowledged",
                            writes.len(),
                            self.path.display()
                        );
                        return false;
                    }
                }
            }
        }
        if failures > 0 {
            info!(
                "storage commit to {} succeeded again after {failures} failed attempts; {refused} \
                 MQTT 5 PUBLISHes were refused meanwhile",
                self.path.display()
            );
        }
        // Stored QoS 2 deliveries go out only once committed: tell the router how far.
        let mut last_delivery = 0;
        let mut exactly_once = false;
        for op in &writes {
            if let Op::Enqueue { id, entry, .. } = op {
                last_delivery = last_delivery.max(*id);
                exactly_once |= entry.qos == QoS::ExactlyOnce;
            }
        }
        if let (true, Some(notify)) = (exactly_once, &self.notify) {
            notify(StoreEvent::Committed(last_delivery));
        }
        for later in callbacks {
            match later {
                Later::Callback(_, f) => f(),
                Later::Ack { stored, .. } => stored(),
                Later::Window {
                    client_id,
                    after,
                    reply,
                } => {
                    let window = match &self.db {
                        Some(db) => read_window(db, &client_id, after, WINDOW),
                        None => Err(redb::Error::Corrupted("the store is not open".into())),
                    };
                    match window {
                        Ok(window) => reply(window),
                        Err(e) => {
                            error!(
                                "cannot read the queue of client {client_id} from {}: {e}",
                                self.path.display()
                            );
                            reply(Window::default());
                        }
                    }
                }
            }
        }
        !writes.is_empty()
    }

    /// After a failed commit: takes the MQTT 5 PUBLISHes waiting for it out of it (their
    /// queue rows, retained and held QoS 2 copies), tells the router, then answers their
    /// publishers with an error. Returns how many were refused.
    fn refuse(&mut self, writes: &mut Vec<Op>, callbacks: &mut Vec<Later>) -> usize {
        let mut refusals = Vec::new();
        let mut answers = Vec::new();
        let mut kept = Vec::with_capacity(callbacks.len());
        // Publishers with an acknowledgement that waits for the disk: their later PUBLISHes
        // wait too, so that their acknowledgements keep their order [MQTT-4.6.0-2].
        let mut waiting: HashSet<u32> = HashSet::new();
        for later in callbacks.drain(..) {
            match later {
                Later::Ack {
                    refusal, refused, ..
                } if !waiting.contains(&refusal.slot) => {
                    refusals.push(refusal);
                    answers.push(refused);
                }
                Later::Ack {
                    refusal,
                    stored,
                    refused,
                } => kept.push(Later::Ack {
                    refusal,
                    stored,
                    refused,
                }),
                Later::Callback(Some(slot), f) => {
                    waiting.insert(slot);
                    kept.push(Later::Callback(Some(slot), f));
                }
                other => kept.push(other),
            }
        }
        *callbacks = kept;
        if refusals.is_empty() {
            return 0;
        }
        if self.refused_ids.len() > REFUSED_IDS_KEPT {
            self.refused_ids.clear();
        }
        let messages: HashSet<*const Message> =
            refusals.iter().map(|r| Arc::as_ptr(&r.message)).collect();
        for refusal in &refusals {
            let id = refusal.message.stored.load(Ordering::Relaxed);
            if id != 0 {
                self.refused_ids.insert(id);
            }
        }
        let refused_ids = &self.refused_ids;
        let of_refused = |m: &Arc<Message>| messages.contains(&Arc::as_ptr(m));
        writes.retain(|op| match op {
            Op::Enqueue { message, entry, .. } => {
                !(of_refused(message) || refused_ids.contains(&entry.message_id))
            }
            Op::Retain {
                message: Some(message),
                ..
            }
            | Op::InboundQos2 {
                message: Some(message),
                ..
            } => !of_refused(message),
            _ => true,
        });
        let count = refusals.len();
        // The router first: a publisher that reacts to its answer finds it already forgotten.
        if let Some(notify) = &self.notify {
            notify(StoreEvent::Refused(refusals));
        }
        for answer in answers {
            answer();
        }
        count
    }

    /// After a failed commit redb may refuse further transactions until reopened.
    fn reopen_after_failure(&mut self) {
        self.db = None;
        match (self.reopen)() {
            Ok(db) => self.db = Some(db),
            Err(e) => warn!("cannot reopen the store {}: {e}", self.path.display()),
        }
    }

    fn sync_now(&mut self) {
        let Some(db) = &self.db else {
            return;
        };
        let result = db
            .begin_write()
            .map_err(redb::Error::from)
            .and_then(|mut txn| {
                txn.set_durability(Durability::Immediate)
                    .map_err(|e| redb::Error::Corrupted(e.to_string()))?;
                txn.commit().map_err(redb::Error::from)
            });
        if let Err(e) = result {
            error!("storage sync of {} failed: {e}", self.path.display());
        }
    }

    /// Writes `writes` in one transaction; returns whether it was committed (false: they
    /// cancelled out and nothing was written).
    fn apply(&mut self, writes: &[Op]) -> DbResult<bool> {
        let Some(db) = &self.db else {
            return Err(redb::Error::Corrupted("the store is not open".into()));
        };
        let mut txn = db.begin_write()?;
        let durability = if self.sync {
            Durability::Immediate
        } else {
            Durability::None
        };
        txn.set_durability(durability)
            .map_err(|e| redb::Error::Corrupted(e.to_string()))?;
        let wrote = {
            let mut tables = Tables::open(&txn)?;
            let mut batch = Batch::default();
            for op in writes {
                batch.apply(&mut tables, op)?;
            }
            batch.finish(&mut tables)?
        };
        if wrote {
            txn.commit()?;
        } else {
            // Everything cancelled out (queued and acknowledged within the batch): no commit,
            // no fsync.
            txn.abort()?;
        }
        Ok(wrote)
    }
}

/// One transaction's queue rows and reference changes, kept in memory until the end of the
/// batch so that a row added and removed within it never reaches the file (nor its message,
/// when no other row holds it).
#[derive(Default)]
struct Batch {
    /// Reference changes per message, with the message when a row added in this batch holds
    /// it (to be written if the file does not have it yet).
    refs: HashMap<u64, Counted>,
    /// Rows added in this batch, by delivery id (unique across sessions).
    entries: HashMap<u64, (Arc<str>, QueueEntry)>,
    /// Reference changes counted by `Tables::delete_session`.
    deltas: HashMap<u64, i64>,
    /// Something was written to a table: the transaction must be committed.
    wrote: bool,
}

/// One message's reference changes within a batch.
#[derive(Default)]
struct Counted {
    delta: i64,
    /// Its content, when a row added in this batch holds it.
    message: Option<Arc<Message>>,
    /// Never stored before this batch.
    new: bool,
}

impl Batch {
    fn unref(&mut self, message: u64) {
        self.refs.entry(message).or_default().delta -= 1;
    }

    fn apply(&mut self, t: &mut Tables<'_>, op: &Op) -> DbResult<()> {
        match op {
            Op::Enqueue { .. } | Op::SetInflight { .. } | Op::Dequeue { .. } => {}
            Op::AfterCommit(..) | Op::AckPublish { .. } | Op::ReadWindow { .. } | Op::Group(_) => {}
            _ => self.wrote = true,
        }
        match op {
            Op::SaveSession(record) => {
                t.sessions
                    .insert(&*record.client_id, record.encode().as_slice())?;
            }
            Op::DeleteSession(client_id) => {
                let gone: Vec<u64> = self
                    .entries
                    .iter()
                    .filter(|(_, (c, _))| c == client_id)
                    .map(|(id, _)| *id)
                    .collect();
                for id in gone {
                    if let Some((_, entry)) = self.entries.remove(&id) {
                        self.unref(entry.message_id);
                    }
                }
                t.delete_session(client_id, &mut self.deltas)?;
            }
            Op::SaveSubscription {
                client_id,
                filter,
                options,
                identifier,
            } => {
                let value = encode_subscription(*options, *identifier);
                t.subscriptions
                    .insert((&**client_id, filter.as_str()), value.as_slice())?;
            }
            Op::DeleteSubscription { client_id, filter } => {
                t.subscriptions.remove((&**client_id, filter.as_str()))?;
            }
            Op::Enqueue {
                client_id,
                id,
                entry,
                message,
                new_message,
            } => {
                let counted = self.refs.entry(entry.message_id).or_default();
                counted.message = Some(Arc::clone(message));
                counted.new |= *new_message;
                counted.delta += 1;
                self.entries
                    .insert(*id, (Arc::clone(client_id), entry.clone()));
            }
            Op::SetInflight {
                client_id,
                id,
                packet_id,
                released,
            } => {
                if let Some((_, entry)) = self.entries.get_mut(id) {
                    entry.packet_id = Some(*packet_id);
                    entry.released = *released;
                } else {
                    let row = t
                        .queue
                        .get((&**client_id, *id))?
                        .map(|v| v.value().to_vec());
                    if let Some(mut bytes) = row {
                        if bytes.len() > ENTRY_STAGE {
                            bytes[ENTRY_PACKET_ID..ENTRY_PACKET_ID + 2]
                                .copy_from_slice(&packet_id.get().to_le_bytes());
                            bytes[ENTRY_STAGE] = (bytes[ENTRY_STAGE] & !1) | u8::from(*released);
                            t.queue.insert((&**client_id, *id), bytes.as_slice())?;
                            self.wrote = true;
                        }
                    }
                }
            }
            Op::Dequeue { client_id, id } => {
                if let Some((_, entry)) = self.entries.remove(id) {
                    self.unref(entry.message_id);
                } else if let Dequeued::Removed(message) = t.dequeue(client_id, *id)? {
                    // A row removed must be committed even when its message was inside it
                    // (nothing else to change): a batch of such removals alone is a write.
                    if let Some(message) = message {
                        self.unref(message);
                    }
                    self.wrote = true;
                }
            }
            Op::Retain { topic, message } => match message {
                Some(message) => {
                    t.retained
                        .insert(topic.as_str(), encode_message(message).as_slice())?;
                }
                None => {
                    t.retained.remove(topic.as_str())?;
                }
            },
            Op::InboundQos2 {
                client_id,
                packet_id,
                message,
            } => {
                let key = (&**client_id, packet_id.get());
                match message {
                    Some(message) => {
                        t.inbound_qos2
                            .insert(key, encode_message(message).as_slice())?;
                    }
                    None => {
                        t.inbound_qos2.remove(key)?;
                    }
                }
            }
            Op::AfterCommit(..) | Op::AckPublish { .. } | Op::ReadWindow { .. } | Op::Group(_) => {}
        }
        Ok(())
    }

    /// Writes the rows still live at the end of the batch, and the messages and reference
    /// counts they change.
    /// Returns whether anything was written at all.
    fn finish(mut self, t: &mut Tables<'_>) -> DbResult<bool> {
        let mut wrote = self.wrote || !self.entries.is_empty();
        for (id, (client_id, entry)) in &self.entries {
            // A new message that only this row holds goes inside the row: two fewer tree
            // operations than a `messages` row (the one2one and fan-in case).
            let sole = self
                .refs
                .get(&entry.message_id)
                .filter(|counted| counted.new && counted.delta == 1)
                .and_then(|counted| counted.message.clone());
            let row = match sole {
                Some(message) => {
                    self.refs.remove(&entry.message_id);
                    entry.encode_inline(&message)
                }
                None => entry.encode(),
            };
            t.queue.insert((&**client_id, *id), row.as_slice())?;
        }
        for (message, delta) in std::mem::take(&mut self.deltas) {
            self.refs.entry(message).or_default().delta += delta;
        }
        for (id, counted) in self.refs {
            if counted.delta == 0 {
                continue;
            }
            wrote = true;
            t.change_refs(id, counted.delta, counted.message.as_deref(), counted.new)?;
        }
        Ok(wrote)
    }
}
