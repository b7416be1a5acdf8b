//! Opening the store at start: the database file, recovery of what it holds, expired state
//! dropped, compaction when mostly empty, and damaged files.
//!
//! Owns: `open` and the `Recovered` state handed to the router. Must not: panic on a bad file.
//! A file redb cannot open, or a record that does not decode, ends start-up with an error that
//! names the file and the way forward, or (with `reset_corrupt`) moves the file aside and
//! starts empty.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use log::{info, warn};
use redb::{Database, DatabaseError, ReadableTable};

use super::rows::Tables;
use super::schema::{
    decode_message, decode_subscription, inline_message, unix_now, BadRecord, QueueEntry,
    SessionRecord,
};
use super::window::WINDOW;
use super::StorageOptions;
use crate::mqtt::{PacketId, SubscriptionOptions};
use crate::queue::message::Message;

/// The database file inside the persistence directory.
pub const STORE_FILE: &str = "mqtt-broker.redb";

/// What the store held at start, minus what expired while the broker was down.
#[derive(Default)]
pub struct Recovered {
    pub sessions: Vec<RecoveredSession>,
    pub retained: Vec<Arc<Message>>,
    /// Records (with their will) of sessions that expired while the broker was down: their
    /// wills were due at the latest when the session ended, so are published at start.
    pub wills: Vec<SessionRecord>,
    /// The next message or delivery id to give out.
    pub next_id: u64,
}

pub struct RecoveredSession {
    pub record: SessionRecord,
    pub subscriptions: Vec<(String, SubscriptionOptions, Option<u32>)>,
    /// Queued and in-flight messages, oldest first.
    pub entries: Vec<RecoveredEntry>,
    /// QoS 2 messages answered with PUBREC and awaiting PUBREL; `None`: the message expired
    /// while the broker was down (its PUBREL is still answered, nothing is routed).
    pub inbound_qos2: Vec<(PacketId, Option<Arc<Message>>)>,
    /// Queued messages left on disk after `entries` (read back in windows).
    pub on_disk: u64,
    /// The delivery id of the last row read into `entries` (or skipped as expired).
    pub cursor: u64,
}

pub struct RecoveredEntry {
    pub id: u64,
    pub message: Arc<Message>,
    pub entry: QueueEntry,
}

/// Why recovery failed.
pub(super) enum Failure {
    Db(redb::Error),
    Bad(BadRecord),
}

impl From<redb::Error> for Failure {
    fn from(e: redb::Error) -> Self {
        Failure::Db(e)
    }
}

impl From<BadRecord> for Failure {
    fn from(e: BadRecord) -> Self {
        Failure::Bad(e)
    }
}

pub(super) fn open(options: &StorageOptions) -> Result<(Database, PathBuf, Recovered), String> {
    std::fs::create_dir_all(&options.dir).map_err(|e| {
        format!(
            "cannot create the persistence directory {}: {e}",
            options.dir.display()
        )
    })?;
    let path = options.dir.join(STORE_FILE);
    let started = Instant::now();
    match open_and_recover(&path) {
        Ok((db, recovered)) => {
            info!(
                "store {} opened in {:.3} s: {} sessions, {} queued messages, {} retained",
                path.display(),
                started.elapsed().as_secs_f64(),
                recovered.sessions.len(),
                recovered
                    .sessions
                    .iter()
                    .map(|s| s.entries.len())
                    .sum::<usize>(),
                recovered.retained.len()
            );
            Ok((db, path, recovered))
        }
        Err(OpenError::InUse) => Err(format!(
            "the store {} is in use by another process (another broker on the same \
             persistence directory?)",
            path.display()
        )),
        Err(OpenError::Damaged(reason)) if options.reset_corrupt => {
            let aside = path.with_extension(format!("redb.corrupt-{}", unix_now()));
            std::fs::rename(&path, &aside).map_err(|e| {
                format!(
                    "cannot move the damaged store {} aside: {e}",
                    path.display()
                )
            })?;
            warn!(
                "the store {} was damaged ({reason}); moved it to {} and started empty",
                path.display(),
                aside.display()
            );
            open_and_recover(&path)
                .map_err(|e| format!("cannot create a new store {}: {}", path.display(), e.text()))
                .map(|(db, recovered)| (db, path, recovered))
        }
        Err(OpenError::Damaged(reason)) => Err(format!(
            "the store {} is damaged and cannot be read: {reason}. To start anyway, restart \
             with --reset-corrupt-store (or RESET_CORRUPT_STORE=true): the file is moved \
             aside to {}.corrupt-<time> and the broker starts with an empty store",
            path.display(),
            path.display()
        )),
    }
}

enum OpenError {
    InUse,
    Damaged(String),
}

impl OpenError {
    fn text(&self) -> String {
        match self {
            OpenError::InUse => "in use by another process".into(),
            OpenError::Damaged(reason) => reason.clone(),
        }
    }
}

fn open_and_recover(path: &Path) -> Result<(Database, Recovered), OpenError> {
    // Belt and braces: whatever a damaged file makes the database code do, start-up ends with
    // the error that names the file, not a panic.
    // This runs at start-up, before any other thread of ours: the default hook, which would
    // print a backtrace as if the broker had crashed, is silenced meanwhile.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(|| open_and_recover_inner(path));
    std::panic::set_hook(hook);
    result.unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("unknown failure");
        Err(OpenError::Damaged(format!("reading it failed: {what}")))
    })
}

fn open_and_recover_inner(path: &Path) -> Result<(Database, Recovered), OpenError> {
    // redb checks its own structures (checksums, a torn last commit) and repairs what a crash
    // left; it reports what it cannot repair as an error, which we turn into the message above.
    let mut db = match create_database(path) {
        Ok(db) => db,
        Err(DatabaseError::DatabaseAlreadyOpen) => return Err(OpenError::InUse),
        Err(e) => return Err(OpenError::Damaged(e.to_string())),
    };
    let recovered = match recover(&db) {
        Ok(recovered) => recovered,
        Err(Failure::Db(e)) => return Err(OpenError::Damaged(e.to_string())),
        Err(Failure::Bad(BadRecord(what))) => {
            return Err(OpenError::Damaged(format!("a {what} does not decode")))
        }
    };
    compact_if_mostly_empty(&mut db, path);
    Ok((db, recovered))
}

/// redb's page cache: its default (1 GiB) would let memory grow with the store; queues are
/// read in windows, so a small cache keeps the broker's memory bounded.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

pub(super) fn create_database(path: &Path) -> Result<Database, DatabaseError> {
    #[cfg(test)]
    if let Some(file) = super::test_disk::open(path)? {
        return Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create_with_backend(file);
    }
    Database::builder().set_cache_size(CACHE_BYTES).create(path)
}

/// Reads everything back, removing in the same transaction what expired while the broker was
/// down: sessions past their expiry, messages past theirs, and the rows that pointed at them.
pub(super) fn recover(db: &Database) -> Result<Recovered, Failure> {
    let txn = db.begin_write().map_err(redb::Error::from)?;
    let recovered = {
        let mut tables = Tables::open(&txn)?;
        recover_tables(&mut tables)?
    };
    txn.commit().map_err(redb::Error::from)?;
    Ok(recovered)
}

fn recover_tables(t: &mut Tables<'_>) -> Result<Recovered, Failure> {
    let now = unix_now();
    let mut deltas: HashMap<u64, i64> = HashMap::new();
    let mut next_id = 1u64;
    if let Some(last) = t.messages.last().map_err(redb::Error::from)? {
        next_id = next_id.max(last.0.value() + 1);
    }

    let mut records = Vec::new();
    for row in t.sessions.iter().map_err(redb::Error::from)? {
        let (key, value) = row.map_err(redb::Error::from)?;
        records.push(SessionRecord::decode(key.value(), value.value())?);
    }

    let mut messages: HashMap<u64, Option<Arc<Message>>> = HashMap::new();
    let mut sessions = Vec::with_capacity(records.len());
    let mut wills = Vec::new();
    for record in records {
        let client_id = Arc::clone(&record.client_id);
        let expired = match record.offline_since {
            Some(since) if record.expiry != u32::MAX => {
                since.saturating_add(u64::from(record.expiry)) <= now
            }
            _ => false,
        };
        if expired {
            t.delete_session(&client_id, &mut deltas)?;
            if record.will.is_some() {
                wills.push(record);
            }
            continue;
        }
        let mut subscriptions = Vec::new();
        for row in t
            .subscriptions
            .range((&*client_id, "")..)
            .map_err(redb::Error::from)?
        {
            let (key, value) = row.map_err(redb::Error::from)?;
            let (owner, filter) = key.value();
            if owner != &*client_id {
                break;
            }
            let (options, identifier) = decode_subscription(value.value())?;
            subscriptions.push((filter.to_owned(), options, identifier));
        }
        // The first window of the queue is read into memory; the rest is only counted and
        // read when the client is back (see `window`).
        let mut rows = Vec::new();
        let mut on_disk = 0u64;
        let mut cursor = 0u64;
        for row in t
            .queue
            .range((&*client_id, 0)..=(&*client_id, u64::MAX))
            .map_err(redb::Error::from)?
        {
            let (key, value) = row.map_err(redb::Error::from)?;
            let id = key.value().1;
            next_id = next_id.max(id + 1);
            if rows.len() < WINDOW {
                cursor = id;
                let row = value.value();
                let inline = inline_message(row).map(<[u8]>::to_vec);
                rows.push((id, QueueEntry::decode(row)?, inline));
            } else {
                on_disk += 1;
            }
        }
        let mut entries = Vec::with_capacity(rows.len());
        for (id, entry, inline) in rows {
            next_id = next_id.max(id + 1);
            let message = match (&inline, messages.get(&entry.message_id)) {
                (Some(bytes), _) => decode_message(bytes, now)?.map(|m| {
                    m.stored.store(entry.message_id, Ordering::Relaxed);
                    Arc::new(m)
                }),
                (None, Some(known)) => known.clone(),
                (None, None) => {
                    let loaded = match t
                        .messages
                        .get(entry.message_id)
                        .map_err(redb::Error::from)?
                    {
                        Some(bytes) => decode_message(bytes.value(), now)?.map(|m| {
                            m.stored.store(entry.message_id, Ordering::Relaxed);
                            Arc::new(m)
                        }),
                        // A row pointing at nothing: dropped below like an expired one.
                        None => None,
                    };
                    messages.insert(entry.message_id, loaded.clone());
                    loaded
                }
            };
            match message {
                Some(message) => entries.push(RecoveredEntry { id, message, entry }),
                None => {
                    t.queue
                        .remove((&*client_id, id))
                        .map_err(redb::Error::from)?;
                    if inline.is_none() {
                        *deltas.entry(entry.message_id).or_default() -= 1;
                    }
                }
            }
        }
        let mut inbound_qos2 = Vec::new();
        for row in t
            .inbound_qos2
            .range((&*client_id, 0)..=(&*client_id, u16::MAX))
            .map_err(redb::Error::from)?
        {
            let (key, value) = row.map_err(redb::Error::from)?;
            let Some(packet_id) = PacketId::new(key.value().1) else {
                continue;
            };
            let message = decode_message(value.value(), now)?.map(Arc::new);
            inbound_qos2.push((packet_id, message));
        }
        sessions.push(RecoveredSession {
            record,
            subscriptions,
            entries,
            inbound_qos2,
            on_disk,
            cursor,
        });
    }
    t.apply_ref_deltas(deltas)?;

    let mut retained = Vec::new();
    let mut expired_topics = Vec::new();
    for row in t.retained.iter().map_err(redb::Error::from)? {
        let (key, value) = row.map_err(redb::Error::from)?;
        match decode_message(value.value(), now)? {
            Some(message) => retained.push(Arc::new(message)),
            None => expired_topics.push(key.value().to_owned()),
        }
    }
    for topic in expired_topics {
        t.retained
            .remove(topic.as_str())
            .map_err(redb::Error::from)?;
    }
    Ok(Recovered {
        sessions,
        retained,
        wills,
        next_id,
    })
}

/// Rewrites the file when most of it is free space (after a large backlog was delivered), so
/// that disk use follows what is stored. Only at start: compaction needs the database to itself.
fn compact_if_mostly_empty(db: &mut Database, path: &Path) {
    const WORTH_IT: u64 = 16 * 1024 * 1024;
    let Ok(file_len) = std::fs::metadata(path).map(|m| m.len()) else {
        return;
    };
    if file_len < WORTH_IT {
        return;
    }
    let stored = match db.begin_write().map(|txn| {
        let stats = txn.stats();
        let _ = txn.abort();
        stats
    }) {
        Ok(Ok(stats)) => stats.stored_bytes() + stats.metadata_bytes(),
        _ => return,
    };
    if stored.saturating_mul(4) > file_len {
        return;
    }
    let started = Instant::now();
    match db.compact() {
        Ok(_) => {
            let after = std::fs::metadata(path).map_or(0, |m| m.len());
            info!(
                "store {} compacted from {file_len} to {after} bytes in {:.1} s",
                path.display(),
                started.elapsed().as_secs_f64()
            );
        }
        Err(e) => warn!("store {}: compaction failed: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_a_store_is_reported_and_can_be_reset() {
        let dir = std::env::temp_dir().join(format!("mqtt-store-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join(STORE_FILE), vec![0xA5; 10_000]).expect("garbage file");
        let mut options = StorageOptions {
            dir: dir.clone(),
            sync: true,
            reset_corrupt: false,
        };
        let err = open(&options).err().expect("a damaged store is refused");
        assert!(err.contains(STORE_FILE), "{err}");
        assert!(err.contains("--reset-corrupt-store"), "{err}");
        options.reset_corrupt = true;
        let (_db, _, recovered) = open(&options).expect("reset starts empty");
        assert!(recovered.sessions.is_empty());
        let moved = std::fs::read_dir(&dir)
            .expect("list")
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().contains("corrupt-"));
        assert!(moved, "the damaged file was kept aside");
        drop(_db);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
