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

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use log::{debug, error, info, warn};
use redb::{Database, Durability, ReadableTable};

use super::rows::{DbResult, Tables};
use super::schema::{
    encode_message, encode_subscription, QueueEntry, ENTRY_PACKET_ID, ENTRY_STAGE,
};
use super::window::{read_window, Window, WINDOW};
use super::{AfterCommit, Op};
use crate::queue::message::Message;

/// The most operations applied in one transaction.
const MAX_BATCH: usize = 16 * 1024;
/// With sync off, how long a commit may stay unsynced.
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// How long to wait before retrying a failed commit.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// What waits for the commit of a batch, in the order it was sent.
enum Later {
    Callback(AfterCommit),
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

pub(super) struct StorageActor {
    rx: Receiver<Op>,
    db: Option<Database>,
    path: PathBuf,
    sync: bool,
    /// With sync off, how long a commit may stay unsynced (`SYNC_EVERY`).
    sync_every: Duration,
    reopen: Reopen,
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
        }
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
            // Groups open in this batch: it is not cut before they end (the router sends a
            // group's operations at once, so the rest is on its way).
            let mut open_groups = group_change(&first);
            ops.push(first);
            while ops.len() < MAX_BATCH || open_groups > 0 {
                let next = if open_groups > 0 {
                    self.rx.recv().ok()
                } else {
                    self.rx.try_recv().ok()
                };
                let Some(op) = next else {
                    break;
                };
                open_groups += group_change(&op);
                ops.push(op);
            }
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

    /// Commits the changes in `ops`, retrying until the disk takes them, then runs the
    /// callbacks. Returns whether anything was written.
    fn commit(&mut self, ops: &mut Vec<Op>) -> bool {
        let mut callbacks: Vec<Later> = Vec::new();
        let mut writes = Vec::with_capacity(ops.len());
        for op in ops.drain(..) {
            match op {
                Op::AfterCommit(f) => callbacks.push(Later::Callback(f)),
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
                write => writes.push(write),
            }
        }
        let wrote = !writes.is_empty();
        if wrote {
            let mut failures = 0u32;
            loop {
                match self.apply(&writes) {
                    Ok(()) => break,
                    Err(e) => {
                        failures += 1;
                        // Nothing in this batch is acknowledged until it is stored: the
                        // publishers wait, the channel fills, and the router (then the
                        // readers) push back.
                        if failures == 1 || failures.is_multiple_of(60) {
                            error!(
                                "STORAGE COMMIT FAILED for {} ({e}): acknowledgements are held \
                                 until it succeeds; retrying every second (failure {failures})",
                                self.path.display()
                            );
                        }
                        std::thread::sleep(RETRY_EVERY);
                        self.reopen_after_failure();
                    }
                }
            }
            if failures > 0 {
                info!(
                    "storage commit to {} succeeded again after {failures} failures",
                    self.path.display()
                );
            }
        }
        for later in callbacks {
            match later {
                Later::Callback(f) => f(),
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
        wrote
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

    fn apply(&mut self, writes: &[Op]) -> DbResult<()> {
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
        Ok(())
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
            Op::AfterCommit(_) | Op::ReadWindow { .. } | Op::Group(_) => {}
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
                } else if let Some(message) = t.dequeue(client_id, *id)? {
                    self.unref(message);
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
            Op::AfterCommit(_) | Op::ReadWindow { .. } | Op::Group(_) => {}
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
