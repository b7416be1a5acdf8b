//! The router's side of persistence: what it tells the storage actor, in its own words.
//!
//! Owns: `Persistence` (the storage handle, if persistence is on, and the storage thread) and
//! `Journal` (one kept session's link to the store: the router's session changes become
//! storage messages through it). Only sessions that outlive their connection get a journal,
//! so clean sessions are never written. Must not: wait for the disk; everything here is a
//! message sent on the storage actor's bounded channel.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use super::message::{Delivery, Message};
use super::session::Subscription;
use crate::config::Config;
use crate::mqtt::{PacketId, ProtocolVersion, QoS, Will};
use crate::storage::{self, QueueEntry, Recovered, SessionRecord, StorageHandle, StorageOptions};

/// Persistence as the router holds it: off, or the storage actor's handle.
#[derive(Default)]
pub(super) struct Persistence {
    storage: Option<StorageHandle>,
    thread: Option<JoinHandle<()>>,
}

impl Persistence {
    /// Opens and recovers the store when `persistence_dir` is set. The error names the file
    /// and what to do.
    pub fn start(config: &Config) -> io::Result<(Persistence, Recovered)> {
        let Some(dir) = &config.persistence_dir else {
            return Ok((Persistence::default(), Recovered::default()));
        };
        let options = StorageOptions {
            dir: dir.clone(),
            sync: config.persistence_sync,
            reset_corrupt: config.reset_corrupt_store,
        };
        let (storage, thread, recovered) = storage::start(&options).map_err(io::Error::other)?;
        let persistence = Persistence {
            storage: Some(storage),
            thread: Some(thread),
        };
        Ok((persistence, recovered))
    }

    pub fn is_on(&self) -> bool {
        self.storage.is_some()
    }

    /// The journal for a session with `expiry` (none for a session that ends with its
    /// connection, or with persistence off).
    pub fn journal(
        &self,
        client_id: &Arc<str>,
        expiry: u32,
        version: ProtocolVersion,
    ) -> Option<Journal> {
        let storage = self.storage.as_ref()?;
        (expiry != 0).then(|| Journal {
            storage: storage.clone(),
            client_id: Arc::clone(client_id),
            version,
        })
    }

    /// The retained message of its topic changed (an empty payload clears it).
    pub fn retain(&self, message: &Arc<Message>) {
        if let Some(storage) = &self.storage {
            let publish = &message.publish;
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

    /// Lets the storage actor commit what is left and waits for it to stop. Every `Journal`
    /// (held by sessions) must be gone first.
    pub fn close(&mut self) {
        self.storage = None;
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
}

impl Journal {
    /// Writes the session record; `offline` when its connection has just ended.
    pub fn save(&self, expiry: u32, offline: bool, will: Option<&Will>) {
        self.storage.save_session(SessionRecord {
            client_id: Arc::clone(&self.client_id),
            version: self.version,
            expiry,
            offline_since: offline.then(storage::schema::unix_now),
            will: will.cloned(),
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

    /// A QoS 2 packet id the client sent us awaits PUBREL (`present`), or no longer does.
    pub fn inbound_qos2(&self, packet_id: PacketId, present: bool) {
        self.storage
            .inbound_qos2(Arc::clone(&self.client_id), packet_id, present);
    }
}
