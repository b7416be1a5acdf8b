//! Power-loss and full-disk tests: the storage actor runs on a simulated disk that loses every write not yet
//! synced when the power is cut, and every acknowledged message must be found after restart.
//! A group of operations (a released QoS 2 message) is found after a cut either whole or not
//! at all.
//!
//! Why a simulated disk: the machines that run the tests (containers, CI) cannot set up
//! dm-flakey or loop devices, and dropping the real page cache needs root on the host. redb
//! lets the database live on any `StorageBackend`, so the fault is injected right under it:
//! `PowerCutDisk` keeps what a real disk would have after a cut (the image as of the last
//! `sync_data`) apart from what the page cache shows (every write).

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use redb::{Database, StorageBackend};

use super::actor::StorageActor;
use super::open::recover;
use super::window::{read_window, WINDOW};
use super::{QueueEntry, SessionRecord, StorageHandle, STORAGE_QUEUE_CAPACITY};
use crate::mqtt::{ProtocolVersion, Publish, PublishProperties, QoS};
use crate::queue::message::Message;

#[derive(Debug, Default, Clone)]
struct Platters {
    /// What survives a power cut: the image as of the last sync.
    durable: Vec<u8>,
    /// What reads see: every write, synced or not.
    cached: Vec<u8>,
}

#[derive(Debug, Clone, Default)]
struct PowerCutDisk(Arc<Mutex<Platters>>, Arc<AtomicBool>);

impl PowerCutDisk {
    /// From now on (`true`) every write and sync fails, as on a full disk.
    fn fail(&self, failing: bool) {
        self.1.store(failing, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), io::Error> {
        if self.1.load(Ordering::SeqCst) {
            return Err(io::Error::other("no space left on device (simulated)"));
        }
        Ok(())
    }

    fn reopener(&self) -> super::actor::Reopen {
        let disk = self.clone();
        Box::new(move || Database::builder().create_with_backend(disk.clone()))
    }

    /// The disk as it comes back after the power was cut now.
    fn after_power_cut(&self) -> PowerCutDisk {
        let durable = self.0.lock().expect("disk lock").durable.clone();
        PowerCutDisk(
            Arc::new(Mutex::new(Platters {
                cached: durable.clone(),
                durable,
            })),
            Arc::default(),
        )
    }
}

impl StorageBackend for PowerCutDisk {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.0.lock().expect("disk lock").cached.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let disk = self.0.lock().expect("disk lock");
        let start = offset as usize;
        let bytes = disk
            .cached
            .get(start..start + out.len())
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        out.copy_from_slice(bytes);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.check()?;
        self.0
            .lock()
            .expect("disk lock")
            .cached
            .resize(len as usize, 0);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.check()?;
        let mut disk = self.0.lock().expect("disk lock");
        disk.durable = disk.cached.clone();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.check()?;
        let mut disk = self.0.lock().expect("disk lock");
        let start = offset as usize;
        if disk.cached.len() < start + data.len() {
            disk.cached.resize(start + data.len(), 0);
        }
        disk.cached[start..start + data.len()].copy_from_slice(data);
        Ok(())
    }
}

fn message(n: u64) -> Arc<Message> {
    Arc::new(Message::new(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "power/cut".into(),
        packet_id: None,
        properties: PublishProperties::default(),
        payload: Arc::from(n.to_be_bytes().as_slice()),
    }))
}

/// The number a `message(n)` carries.
fn number(message: &Message) -> u64 {
    let bytes: [u8; 8] = message.publish.payload[..8].try_into().expect("8 bytes");
    u64::from_be_bytes(bytes)
}

/// A storage actor running on a new, empty store on a `PowerCutDisk`.
struct Rig {
    handle: StorageHandle,
    thread: thread::JoinHandle<()>,
}

impl Rig {
    /// Syncing every commit, as the broker does by default.
    fn start(disk: &PowerCutDisk, name: &str) -> Rig {
        Rig::start_with(disk, name, true, |actor| actor)
    }

    /// `tune` sets the actor up before its thread starts.
    fn start_with(
        disk: &PowerCutDisk,
        name: &str,
        sync: bool,
        tune: impl FnOnce(StorageActor) -> StorageActor,
    ) -> Rig {
        let db = Database::builder()
            .create_with_backend(disk.clone())
            .expect("create the store");
        let _ = recover(&db).ok().expect("an empty store recovers");
        let (tx, rx) = crossbeam_channel::bounded(STORAGE_QUEUE_CAPACITY);
        let actor = tune(StorageActor::new(
            rx,
            db,
            name.into(),
            sync,
            disk.reopener(),
        ));
        let thread = thread::spawn(move || actor.run());
        let handle = StorageHandle {
            tx,
            ids: Arc::new(AtomicU64::new(1)),
        };
        Rig { handle, thread }
    }

    /// Drops the handle and waits for the storage thread to end.
    fn stop(self) {
        drop(self.handle);
        self.thread.join().expect("storage thread");
    }
}

/// An offline MQTT 3.1.1 session that never expires.
fn session_v3(client: &Arc<str>) -> SessionRecord {
    SessionRecord {
        client_id: Arc::clone(client),
        version: ProtocolVersion::V3_1_1,
        expiry: u32::MAX,
        offline_since: Some(1),
        will: None,
        identity: None,
    }
}

/// An MQTT 5 session that went offline now and expires in ten minutes.
fn session_v5(client: &Arc<str>) -> SessionRecord {
    SessionRecord {
        client_id: Arc::clone(client),
        version: ProtocolVersion::V5,
        expiry: 600,
        offline_since: Some(super::schema::unix_now()),
        will: None,
        identity: None,
    }
}

/// Queues `message` for `client` with new message and delivery ids; returns the delivery id.
fn enqueue(handle: &StorageHandle, client: &Arc<str>, qos: QoS, message: Arc<Message>) -> u64 {
    let entry = QueueEntry {
        message_id: handle.next_id(),
        qos,
        retain: false,
        packet_id: None,
        released: false,
        subscription_ids: Vec::new(),
    };
    let delivery = handle.next_id();
    handle.enqueue(Arc::clone(client), delivery, entry, message, true);
    delivery
}

/// The values that `after_commit` callbacks made by `answer` report, in the order they ran.
struct Answers<T> {
    tx: crossbeam_channel::Sender<T>,
    rx: crossbeam_channel::Receiver<T>,
}

impl<T: Send + 'static> Answers<T> {
    fn new() -> Answers<T> {
        let (tx, rx) = crossbeam_channel::unbounded();
        Answers { tx, rx }
    }

    /// A callback that reports `value` when it runs.
    fn answer(&self, value: T) -> super::AfterCommit {
        let tx = self.tx.clone();
        Box::new(move || {
            let _ = tx.send(value);
        })
    }
}

/// Opens and recovers the store on `disk` as it came back after a power cut.
fn reopen(disk: PowerCutDisk) -> (Database, super::Recovered) {
    let db = Database::builder()
        .create_with_backend(disk)
        .expect("the store opens after a power cut");
    let recovered = recover(&db)
        .ok()
        .expect("the store recovers after a power cut");
    (db, recovered)
}

/// Queues messages for one session through the storage actor on a `PowerCutDisk`, each
/// followed by an "acknowledgement" callback; cuts the power once `cut_after` are
/// acknowledged; returns (acknowledged before the cut, message numbers found after restart).
fn run_until_power_cut(sync: bool, cut_after: usize) -> (Vec<u64>, Vec<u64>) {
    let disk = PowerCutDisk::default();
    // With sync off, no periodic sync during the test: the cut must find the commits unsynced
    // however slowly a loaded machine runs it.
    let rig = Rig::start_with(&disk, "power-cut-disk", sync, |actor| {
        actor.with_sync_every(Duration::from_secs(3600))
    });
    let handle = &rig.handle;
    let client: Arc<str> = Arc::from("sub");
    handle.save_session(session_v3(&client));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0u64;
    let before_cut = loop {
        // Publishers keep sending while the disk works: batches form by themselves.
        for _ in 0..50 {
            n += 1;
            enqueue(handle, &client, QoS::AtLeastOnce, message(n));
            let acked = Arc::clone(&acked);
            handle.after_commit(Box::new(move || acked.lock().expect("lock").push(n)));
        }
        let count = acked.lock().expect("lock").len();
        if count >= cut_after || Instant::now() > deadline {
            // The acknowledgements first, then the disk: whatever was acknowledged by now
            // was synced before.
            let before = acked.lock().expect("lock").clone();
            let survivor = disk.after_power_cut();
            break (before, survivor);
        }
        thread::sleep(Duration::from_micros(200));
    };
    let (before, survivor) = before_cut;
    rig.stop();

    let (db, recovered) = reopen(survivor);
    let entry_number = |e: &super::RecoveredEntry| number(&e.message);
    let mut found = Vec::new();
    for session in &recovered.sessions {
        found.extend(session.entries.iter().map(entry_number));
        // The rest of a long queue stays on disk until read in windows.
        let mut cursor = session.cursor;
        loop {
            let window =
                read_window(&db, &session.record.client_id, cursor, WINDOW).expect("read a window");
            found.extend(window.entries.iter().map(entry_number));
            match window.last {
                Some(last) => cursor = last,
                None => break,
            }
        }
    }
    (before, found)
}

#[test]
fn with_sync_every_acknowledged_message_survives_a_power_cut() {
    for cut_after in [1, 300, 2000] {
        let (acked, found) = run_until_power_cut(true, cut_after);
        assert!(acked.len() >= cut_after.min(1));
        assert!(
            found.windows(2).all(|w| w[0] < w[1]),
            "recovered in queue order"
        );
        let missing: Vec<_> = acked.iter().filter(|n| !found.contains(n)).collect();
        assert!(
            missing.is_empty(),
            "cut after {cut_after}: {} of {} acknowledged messages lost",
            missing.len(),
            acked.len()
        );
    }
}

#[test]
fn without_sync_a_power_cut_loses_acknowledged_messages() {
    // The test's own check: the simulated disk really drops what was not synced. With sync
    // off, a commit reaches the disk only at the next periodic sync, so a cut before it loses
    // what was acknowledged.
    let (acked, found) = run_until_power_cut(false, 100);
    assert!(!acked.is_empty());
    let lost = acked.iter().filter(|n| !found.contains(n)).count();
    assert!(lost > 0, "nothing lost: the power cut was not simulated");
}

#[test]
fn a_failed_commit_holds_acknowledgements_until_the_disk_works_again() {
    let disk = PowerCutDisk::default();
    let rig = Rig::start(&disk, "full-disk");
    let handle = &rig.handle;
    let client: Arc<str> = Arc::from("sub");
    handle.save_session(session_v5(&client));
    let acked = Answers::new();
    handle.after_commit(acked.answer(0));
    assert_eq!(acked.rx.recv_timeout(Duration::from_secs(10)), Ok(0));

    disk.fail(true);
    enqueue(handle, &client, QoS::AtLeastOnce, message(1));
    handle.after_commit(acked.answer(1));
    // The disk is full: the message is not acknowledged, however long we wait.
    assert!(acked.rx.recv_timeout(Duration::from_millis(1500)).is_err());
    disk.fail(false);
    // Space is back: the retried commit goes through and the acknowledgement follows.
    assert_eq!(acked.rx.recv_timeout(Duration::from_secs(10)), Ok(1));

    rig.stop();
    let (_, recovered) = reopen(disk.after_power_cut());
    assert_eq!(recovered.sessions.len(), 1);
    assert_eq!(
        recovered.sessions[0].entries.len(),
        1,
        "the message was stored"
    );
}

/// What a power cut now would leave: (held inbound QoS 2 ids, queued message numbers).
fn held_and_queued(disk: &PowerCutDisk) -> (Vec<u16>, Vec<u64>) {
    let (_, recovered) = reopen(disk.after_power_cut());
    let mut held = Vec::new();
    let mut queued = Vec::new();
    for session in &recovered.sessions {
        for (id, message) in &session.inbound_qos2 {
            assert!(message.is_some(), "the held message itself is stored");
            held.push(id.get());
        }
        queued.extend(session.entries.iter().map(|e| number(&e.message)));
    }
    (held, queued)
}

/// A released QoS 2 message: its routing (queue rows) and its removal from the held ones are
/// one group, committed whole even when the group's end reaches the storage thread late; a
/// crash finds the message either still held or queued, never both nor neither.
#[test]
fn a_group_is_never_split_across_commits() {
    let disk = PowerCutDisk::default();
    let rig = Rig::start(&disk, "group-disk");
    let handle = &rig.handle;
    let client: Arc<str> = Arc::from("pub-and-sub");
    let packet_id = crate::mqtt::PacketId::new(7).expect("non-zero");
    handle.save_session(session_v3(&client));
    handle.inbound_qos2(Arc::clone(&client), packet_id, Some(message(1)));
    let done = Answers::new();
    handle.after_commit(done.answer("held"));
    assert_eq!(done.rx.recv_timeout(Duration::from_secs(20)), Ok("held"));
    assert_eq!(held_and_queued(&disk), (vec![7], vec![]));

    // PUBREL: the group starts, the message is queued; its removal and the end come late.
    handle.group(true);
    enqueue(handle, &client, QoS::ExactlyOnce, message(1));
    handle.after_commit(done.answer("inside the group"));
    thread::sleep(Duration::from_millis(300));
    assert!(
        done.rx.try_recv().is_err(),
        "nothing of an open group is committed"
    );
    assert_eq!(held_and_queued(&disk), (vec![7], vec![]), "still held only");
    handle.inbound_qos2(Arc::clone(&client), packet_id, None);
    handle.group(false);
    handle.after_commit(done.answer("released"));
    assert_eq!(
        done.rx.recv_timeout(Duration::from_secs(20)),
        Ok("inside the group")
    );
    assert_eq!(
        done.rx.recv_timeout(Duration::from_secs(20)),
        Ok("released")
    );
    assert_eq!(held_and_queued(&disk), (vec![], vec![1]), "queued only");
    rig.stop();
}

/// A batch that only removes queue rows whose message is inside them (an acknowledged
/// one2one message) is a write like any other: committed, not dropped.
#[test]
fn removing_a_row_alone_in_its_batch_is_committed() {
    let disk = PowerCutDisk::default();
    let rig = Rig::start(&disk, "dequeue-disk");
    let handle = &rig.handle;
    let client: Arc<str> = Arc::from("sub");
    handle.save_session(session_v5(&client));
    let delivery = enqueue(handle, &client, QoS::AtLeastOnce, message(1));
    let done = Answers::new();
    handle.after_commit(done.answer(()));
    assert!(done.rx.recv_timeout(Duration::from_secs(20)).is_ok());
    assert_eq!(held_and_queued(&disk).1, vec![1], "queued");
    handle.dequeue(Arc::clone(&client), delivery);
    handle.after_commit(done.answer(()));
    assert!(done.rx.recv_timeout(Duration::from_secs(20)).is_ok());
    assert_eq!(
        held_and_queued(&disk).1,
        Vec::<u64>::new(),
        "removed for good"
    );
    rig.stop();
}

/// A failed commit refuses the MQTT 5 PUBLISHes waiting for it, except those behind an
/// acknowledgement of the same publisher that waits for the disk: acknowledgements keep their
/// order [MQTT-4.6.0-2]. The refused message's row is not stored; the others are.
#[test]
fn a_failed_commit_refuses_in_order_per_publisher() {
    let disk = PowerCutDisk::default();
    let (events_tx, events) = crossbeam_channel::unbounded();
    let notify: super::Notify = Box::new(move |event| {
        if let super::StoreEvent::Refused(refusals) = event {
            let slots: Vec<u32> = refusals.iter().map(|r| r.slot).collect();
            let _ = events_tx.send(slots);
        }
    });
    let rig = Rig::start_with(&disk, "refusing-disk", true, |actor| {
        actor.with_events(notify, Arc::default())
    });
    let handle = &rig.handle;
    let client: Arc<str> = Arc::from("sub");
    handle.save_session(session_v5(&client));
    let answers = Answers::new();
    let answer = |what: &'static str| answers.answer(what);
    handle.after_commit(answer("ready"));
    assert_eq!(
        answers.rx.recv_timeout(Duration::from_secs(20)),
        Ok("ready")
    );

    disk.fail(true);
    let publish = |n: u64, slot: u32, stored: &'static str, refused: &'static str| {
        let message = message(n);
        handle.group(true);
        enqueue(handle, &client, QoS::AtLeastOnce, Arc::clone(&message));
        let refusal = super::Refusal {
            message,
            slot,
            packet_id: crate::mqtt::PacketId::new(1).expect("non-zero"),
        };
        handle.ack_publish(refusal, answer(stored), answer(refused));
        handle.group(false);
    };
    // Publisher 5: an acknowledgement released earlier (by flow control) still waits for the
    // disk, then a new PUBLISH. Publisher 6: a new PUBLISH only.
    // One group, so that the storage thread takes it in one batch: the earlier
    // acknowledgement taken alone would have no change to wait for and run at once.
    handle.group(true);
    handle.after_commit_for(5, answer("5: earlier ack"));
    publish(1, 5, "5: stored", "5: refused");
    publish(2, 6, "6: stored", "6: refused");
    handle.group(false);
    assert_eq!(
        answers.rx.recv_timeout(Duration::from_secs(20)),
        Ok("6: refused")
    );
    assert_eq!(events.recv_timeout(Duration::from_secs(20)), Ok(vec![6]));
    assert!(
        answers
            .rx
            .recv_timeout(Duration::from_millis(1500))
            .is_err(),
        "publisher 5 waits for the disk, in order"
    );
    disk.fail(false);
    assert_eq!(
        answers.rx.recv_timeout(Duration::from_secs(20)),
        Ok("5: earlier ack")
    );
    assert_eq!(
        answers.rx.recv_timeout(Duration::from_secs(20)),
        Ok("5: stored")
    );
    assert_eq!(
        held_and_queued(&disk).1,
        vec![1],
        "the refused message was not stored, the other was"
    );
    rig.stop();
}

/// A broker that stops while its disk still fails does not hang on the commit: once every
/// handle is gone and the commit has failed a few times, the storage thread gives up on what
/// nobody was told was stored.
#[test]
fn a_stopping_broker_gives_up_on_a_commit_that_keeps_failing() {
    let disk = PowerCutDisk::default();
    let Rig { handle, thread } = Rig::start(&disk, "stopping-disk");
    disk.fail(true);
    handle.save_session(session_v3(&Arc::from("sub")));
    let acked = Answers::new();
    handle.after_commit(acked.answer(()));
    drop(handle);
    let (joined_tx, joined) = crossbeam_channel::bounded(1);
    thread::spawn(move || {
        let _ = joined_tx.send(thread.join().is_ok());
    });
    assert_eq!(
        joined.recv_timeout(Duration::from_secs(30)),
        Ok(true),
        "the storage thread ends"
    );
    assert!(
        acked.rx.try_recv().is_err(),
        "nothing unstored was acknowledged"
    );
}
