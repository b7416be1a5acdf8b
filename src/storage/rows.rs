//! Changes to the tables inside one write transaction: the every-table view of a batch.
//!
//! Owns: `Tables` (every table opened in one transaction), removing a session's rows, and the
//! reference counts that free a message when its last queue row goes. Must not: commit, or
//! decide what is written (the actor's batch does).

use std::collections::HashMap;

use redb::{ReadableTable, StorageError, Table, WriteTransaction};

use crate::queue::message::Message;

use super::schema::{
    encode_message, inline_message, QueueEntry, INBOUND_QOS2, MESSAGES, MESSAGE_REFS, QUEUE,
    RETAINED, SESSIONS, SUBSCRIPTIONS,
};

pub type DbResult<T> = Result<T, redb::Error>;

pub struct Tables<'t> {
    pub sessions: Table<'t, &'static str, &'static [u8]>,
    pub subscriptions: Table<'t, (&'static str, &'static str), &'static [u8]>,
    pub queue: Table<'t, (&'static str, u64), &'static [u8]>,
    pub messages: Table<'t, u64, &'static [u8]>,
    pub refs: Table<'t, u64, u32>,
    pub retained: Table<'t, &'static str, &'static [u8]>,
    pub inbound_qos2: Table<'t, (&'static str, u16), &'static [u8]>,
}

impl<'t> Tables<'t> {
    pub fn open(txn: &'t WriteTransaction) -> DbResult<Tables<'t>> {
        Ok(Tables {
            sessions: txn.open_table(SESSIONS)?,
            subscriptions: txn.open_table(SUBSCRIPTIONS)?,
            queue: txn.open_table(QUEUE)?,
            messages: txn.open_table(MESSAGES)?,
            refs: txn.open_table(MESSAGE_REFS)?,
            retained: txn.open_table(RETAINED)?,
            inbound_qos2: txn.open_table(INBOUND_QOS2)?,
        })
    }

    /// Removes a session and everything it owns; the messages its queue pointed at lose a
    /// reference each (counted in `deltas`, applied by `apply_ref_deltas`).
    pub fn delete_session(
        &mut self,
        client_id: &str,
        deltas: &mut HashMap<u64, i64>,
    ) -> DbResult<()> {
        self.sessions.remove(client_id)?;
        let mut filters = Vec::new();
        for row in self.subscriptions.range((client_id, "")..)? {
            let (key, _) = row?;
            let (owner, filter) = key.value();
            if owner != client_id {
                break;
            }
            filters.push(filter.to_owned());
        }
        for filter in filters {
            self.subscriptions.remove((client_id, filter.as_str()))?;
        }
        let entries: Vec<(u64, u64)> = self
            .queue
            .range((client_id, 0)..=(client_id, u64::MAX))?
            .map(|row| {
                row.map(|(k, v)| {
                    (
                        k.value().1,
                        // A row holding its message inline counts no reference.
                        QueueEntry::decode(v.value()).map(|e| match inline_message(v.value()) {
                            Some(_) => 0,
                            None => e.message_id,
                        }),
                    )
                })
            })
            // A row that does not decode is removed without touching any count.
            .map(|row| row.map(|(id, message)| (id, message.unwrap_or(0))))
            .collect::<Result<_, StorageError>>()?;
        for (id, message) in entries {
            self.queue.remove((client_id, id))?;
            if message != 0 {
                *deltas.entry(message).or_default() -= 1;
            }
        }
        let ids: Vec<u16> = self
            .inbound_qos2
            .range((client_id, 0)..=(client_id, u16::MAX))?
            .map(|row| row.map(|(k, _)| k.value().1))
            .collect::<Result<_, StorageError>>()?;
        for id in ids {
            self.inbound_qos2.remove((client_id, id))?;
        }
        Ok(())
    }

    /// Removes one queue row; says whether there was one and the message it pointed at.
    pub fn dequeue(&mut self, client_id: &str, id: u64) -> DbResult<Dequeued> {
        let removed = self.queue.remove((client_id, id))?;
        Ok(match removed {
            None => Dequeued::Absent,
            Some(row) => {
                let row = row.value();
                match inline_message(row) {
                    Some(_) => Dequeued::Removed(None),
                    None => Dequeued::Removed(QueueEntry::decode(row).ok().map(|e| e.message_id)),
                }
            }
        })
    }

    /// Adds the counted reference changes; a message left with none is deleted.
    pub fn apply_ref_deltas(&mut self, deltas: HashMap<u64, i64>) -> DbResult<()> {
        for (message, delta) in deltas {
            self.change_refs(message, delta, None, false)?;
        }
        Ok(())
    }

    /// Adds `delta` references to message `id`, writing the message when it gains its first
    /// and deleting it when it loses its last. A message held by one queue row (the common
    /// case) has no `message_refs` row, so it costs no extra write; counts start at two.
    /// `new`: the message has never been stored (no need to look). `message`: its content,
    /// for when it is not in the file yet.
    pub fn change_refs(
        &mut self,
        id: u64,
        delta: i64,
        message: Option<&Message>,
        new: bool,
    ) -> DbResult<()> {
        if delta == 0 {
            return Ok(());
        }
        let counted = if new {
            None
        } else {
            self.refs.get(id)?.map(|v| i64::from(v.value()))
        };
        let in_file = match counted {
            Some(n) => n,
            None if new => 0,
            // Rows pointed at it, and it has no count: it is there with one reference.
            None if delta < 0 => 1,
            None => i64::from(self.messages.get(id)?.is_some()),
        };
        let now = in_file + delta;
        if now <= 0 {
            if counted.is_some() {
                self.refs.remove(id)?;
            }
            if in_file > 0 {
                self.messages.remove(id)?;
            }
            return Ok(());
        }
        if in_file == 0 {
            let Some(message) = message else {
                return Ok(());
            };
            self.messages
                .insert(id, encode_message(message).as_slice())?;
        }
        if now > 1 {
            self.refs
                .insert(id, u32::try_from(now).unwrap_or(u32::MAX))?;
        } else if counted.is_some() {
            self.refs.remove(id)?;
        }
        Ok(())
    }
}

/// What removing a queue row did.
pub enum Dequeued {
    /// There was no such row.
    Absent,
    /// The row was removed; with the id of the message it referred to, unless the message
    /// was inside the row.
    Removed(Option<u64>),
}
