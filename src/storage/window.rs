//! Reading a session's stored queue back in windows, so that a long offline queue lives on
//! disk and only a window of it in memory.
//!
//! Owns: `Window` and `read_window`. Must not: write (expired rows are reported for the router
//! to remove, like any finished message) or read more than `max` rows at once.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use redb::{Database, ReadableDatabase};

use super::open::RecoveredEntry;
use super::schema::{decode_message, inline_message, unix_now, QueueEntry, MESSAGES, QUEUE};
use crate::queue::message::Message;

/// The most queued messages read back at once, and the most an offline session keeps in
/// memory before the rest of its queue stays on disk only.
pub const WINDOW: usize = 1000;

/// Queue rows of one session after a given delivery id, oldest first.
#[derive(Default)]
pub struct Window {
    pub entries: Vec<RecoveredEntry>,
    /// Rows whose message has expired (or is missing): to be removed.
    pub expired: Vec<u64>,
    /// The last delivery id read; the next window starts after it.
    pub last: Option<u64>,
}

/// Reads up to `max` rows of `client_id`'s queue with a delivery id above `after`.
pub fn read_window(
    db: &Database,
    client_id: &str,
    after: u64,
    max: usize,
) -> Result<Window, redb::Error> {
    let txn = db.begin_read()?;
    let queue = txn.open_table(QUEUE)?;
    let messages = txn.open_table(MESSAGES)?;
    let now = unix_now();
    let mut window = Window::default();
    let mut loaded: HashMap<u64, Option<Arc<Message>>> = HashMap::new();
    let start = after.saturating_add(1);
    for row in queue
        .range((client_id, start)..=(client_id, u64::MAX))?
        .take(max)
    {
        let (key, value) = row?;
        let id = key.value().1;
        window.last = Some(id);
        let Ok(entry) = QueueEntry::decode(value.value()) else {
            window.expired.push(id);
            continue;
        };
        let inline = inline_message(value.value());
        let message = match (inline, loaded.get(&entry.message_id)) {
            (Some(bytes), _) => decode_message(bytes, now).ok().flatten().map(|m| {
                m.stored.store(entry.message_id, Ordering::Relaxed);
                Arc::new(m)
            }),
            (None, Some(message)) => message.clone(),
            (None, None) => {
                let message = match messages.get(entry.message_id)? {
                    Some(bytes) => decode_message(bytes.value(), now).ok().flatten().map(|m| {
                        m.stored.store(entry.message_id, Ordering::Relaxed);
                        Arc::new(m)
                    }),
                    None => None,
                };
                loaded.insert(entry.message_id, message.clone());
                message
            }
        };
        match message {
            Some(message) => window.entries.push(RecoveredEntry { id, message, entry }),
            None => window.expired.push(id),
        }
    }
    Ok(window)
}
