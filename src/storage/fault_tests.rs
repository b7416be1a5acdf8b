//! The whole broker on a faulty store (`test_disk`), driven over TCP with raw MQTT packets:
//! a failed commit answers MQTT 5 publishers with 0x80 and forgets their messages, holds MQTT
//! 3.1.1 publishers until the disk works again; a stored QoS 2 delivery waits for its commit.

use std::io::{BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::test_disk::{self, Faults};
use crate::broker::{Broker, Stopper};
use crate::config::Config;
use crate::mqtt::{
    read_packet, Ack, Connect, ConnectProperties, DecodeError, Disconnect, DisconnectProperties,
    Packet, PacketId, ProtocolVersion, Publish, PublishProperties, QoS, ReasonCode, Subscribe,
    SubscribeProperties, SubscriptionOptions,
};

/// Generous: the machine may be busy.
const WAIT: Duration = Duration::from_secs(15);

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path =
            std::env::temp_dir().join(format!("mqtt-fault-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create the test directory");
        Dir(path)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Running {
    addr: SocketAddr,
    stopper: Stopper,
    thread: Option<JoinHandle<()>>,
    faults: Arc<Faults>,
}

impl Running {
    fn start(dir: &Dir, faults: &Arc<Faults>) -> Running {
        let _ = env_logger::builder().is_test(true).try_init();
        let config = Config {
            persistence_dir: Some(dir.0.clone()),
            ..Config::default()
        };
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let broker = Broker::new(listener, config).expect("start the broker");
        let addr = broker.local_addr().expect("address");
        let stopper = broker.stopper();
        let thread = thread::spawn(move || broker.run());
        Running {
            addr,
            stopper,
            thread: Some(thread),
            faults: Arc::clone(faults),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A test that failed midway must not leave the store failing or blocked.
        self.faults.fail(false);
        self.faults.hold_syncs(false);
        self.stopper.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Client {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    version: ProtocolVersion,
    body: Vec<u8>,
}

fn pid(n: u16) -> PacketId {
    PacketId::new(n).expect("non-zero")
}

impl Client {
    /// Connects; `expiry` > 0 keeps the session (MQTT 5: Session Expiry Interval; 3.1.1:
    /// clean session off).
    fn connect(addr: SocketAddr, id: &str, version: ProtocolVersion, expiry: u32) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut client = Client {
            stream,
            reader,
            version,
            body: Vec::new(),
        };
        let v5 = version.is_v5();
        client.send(&Packet::Connect(Box::new(Connect {
            protocol: version,
            clean_start: if v5 { false } else { expiry == 0 },
            keep_alive: 60,
            client_id: id.into(),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties {
                session_expiry_interval: (v5 && expiry > 0).then_some(expiry),
                ..ConnectProperties::default()
            },
            bridge: false,
        })));
        match client.recv() {
            Packet::ConnAck(_) => client,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    fn send(&mut self, packet: &Packet) {
        let mut bytes = Vec::new();
        packet.encode(self.version, &mut bytes);
        self.stream.write_all(&bytes).expect("write");
    }

    fn try_recv(&mut self, timeout: Duration) -> Option<Packet> {
        self.stream
            .set_read_timeout(Some(timeout))
            .expect("timeout");
        match read_packet(&mut self.reader, self.version, 1 << 20, &mut self.body) {
            Ok(packet) => Some(packet),
            Err(DecodeError::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                None
            }
            Err(e) => panic!("connection failed: {e}"),
        }
    }

    fn recv(&mut self) -> Packet {
        self.try_recv(WAIT)
            .unwrap_or_else(|| panic!("no packet within {WAIT:?}"))
    }

    fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: pid(100),
            filters: vec![(
                filter.to_owned(),
                SubscriptionOptions {
                    qos,
                    ..SubscriptionOptions::default()
                },
            )],
            properties: SubscribeProperties::default(),
        }));
        assert!(matches!(self.recv(), Packet::SubAck(_)));
    }

    fn publish(&mut self, topic: &str, payload: &str, qos: QoS, id: u16) {
        self.send(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.into(),
            packet_id: Some(pid(id)),
            properties: PublishProperties::default(),
            payload: Arc::from(payload.as_bytes()),
        }));
    }

    fn disconnect(mut self) {
        self.send(&Packet::Disconnect(Disconnect {
            reason: ReasonCode::Success,
            properties: DisconnectProperties::default(),
        }));
    }
}

/// The acknowledgement `packet`, as (packet id, reason).
fn ack_of(packet: Packet) -> (u16, ReasonCode) {
    match packet {
        Packet::PubAck(ack) | Packet::PubRec(ack) | Packet::PubComp(ack) => {
            (ack.packet_id.get(), ack.reason)
        }
        other => panic!("expected an acknowledgement, got {other:?}"),
    }
}

/// Payloads received until `quiet` passes with nothing, acknowledging QoS 1.
fn payloads(client: &mut Client, quiet: Duration) -> Vec<String> {
    let mut got = Vec::new();
    while let Some(packet) = client.try_recv(quiet) {
        if let Packet::Publish(publish) = packet {
            got.push(String::from_utf8_lossy(&publish.payload).into_owned());
            if let (QoS::AtLeastOnce, Some(id)) = (publish.qos, publish.packet_id) {
                client.send(&Packet::PubAck(Ack::new(id)));
            }
        }
    }
    got
}

#[test]
fn a_failed_commit_refuses_mqtt5_publishes_and_holds_mqtt3_ones_until_the_disk_works() {
    let dir = Dir::new("refuse");
    let faults: Arc<Faults> = test_disk::register(&dir.0);
    let broker = Running::start(&dir, &faults);
    let v5 = ProtocolVersion::V5;
    let mut sub = Client::connect(broker.addr, "kept", v5, 600);
    sub.subscribe("t", QoS::AtLeastOnce);
    sub.disconnect();

    let mut p5 = Client::connect(broker.addr, "p5", v5, 0);
    let mut p3 = Client::connect(broker.addr, "p3", ProtocolVersion::V3_1_1, 0);
    p5.publish("t", "before", QoS::AtLeastOnce, 1);
    assert_eq!(ack_of(p5.recv()), (1, ReasonCode::Success));

    faults.fail(true);
    // MQTT 5: told the message was not stored, with 0x80, after the failed attempt.
    p5.publish("t", "refused-1", QoS::AtLeastOnce, 2);
    assert_eq!(ack_of(p5.recv()), (2, ReasonCode::UnspecifiedError));
    // A new one while the store still fails: refused too.
    p5.publish("t", "refused-2", QoS::ExactlyOnce, 3);
    assert_eq!(ack_of(p5.recv()), (3, ReasonCode::UnspecifiedError));
    // MQTT 3.1.1 cannot be told: its acknowledgement waits for the disk.
    p3.publish("t", "held", QoS::AtLeastOnce, 1);
    assert!(
        p3.try_recv(Duration::from_millis(2500)).is_none(),
        "an MQTT 3.1.1 PUBLISH is not acknowledged while the store fails"
    );
    // The refused QoS 2 PUBLISH awaits no PUBREL: a PUBREL is answered as for an unknown id
    // (once the store answers again: PUBCOMP keeps its place behind the held PUBACKs).
    p5.send(&Packet::PubRel(Ack::new(pid(3))));

    faults.fail(false);
    assert_eq!(ack_of(p3.recv()), (1, ReasonCode::Success), "held PUBACK");
    assert_eq!(ack_of(p5.recv()).0, 3, "PUBCOMP for the unknown id");
    p5.publish("t", "after", QoS::AtLeastOnce, 4);
    assert_eq!(ack_of(p5.recv()), (4, ReasonCode::Success));

    // What was refused is gone from memory and from the store alike: the kept session gets
    // the stored messages only, before and after a restart.
    let mut sub = Client::connect(broker.addr, "kept", v5, 600);
    let first: Vec<String> = {
        // Unacknowledged, so that the restart finds them in the store.
        let mut got = Vec::new();
        while let Some(packet) = sub.try_recv(Duration::from_secs(3)) {
            if let Packet::Publish(publish) = packet {
                got.push(String::from_utf8_lossy(&publish.payload).into_owned());
            }
        }
        got
    };
    assert_eq!(first, ["before", "held", "after"]);
    drop((sub, p3, p5));
    drop(broker);

    let broker = Running::start(&dir, &faults);
    let mut sub = Client::connect(broker.addr, "kept", v5, 600);
    assert_eq!(
        payloads(&mut sub, Duration::from_secs(3)),
        ["before", "held", "after"],
        "the store agrees"
    );
    assert!(faults.syncs_held.load(Ordering::SeqCst) == 0);
}

#[test]
fn a_qos2_delivery_to_a_kept_session_waits_for_its_commit() {
    let dir = Dir::new("qos2-commit");
    let faults = test_disk::register(&dir.0);
    let broker = Running::start(&dir, &faults);
    let v5 = ProtocolVersion::V5;
    let mut kept = Client::connect(broker.addr, "kept", v5, 600);
    kept.subscribe("q", QoS::ExactlyOnce);
    let mut clean = Client::connect(broker.addr, "clean", v5, 0);
    clean.subscribe("q", QoS::ExactlyOnce);
    let mut publisher = Client::connect(broker.addr, "pub", v5, 0);
    publisher.publish("q", "once", QoS::ExactlyOnce, 1);
    assert_eq!(ack_of(publisher.recv()), (1, ReasonCode::Success));

    // The commit of the PUBREL's routing is slow: the kept session must not get the message
    // before it is stored (a crash now would have the publisher resend PUBREL after the
    // restart, and the message would be routed, and delivered, again).
    faults.hold_syncs(true);
    publisher.send(&Packet::PubRel(Ack::new(pid(1))));
    let deadline = Instant::now() + WAIT;
    while faults.syncs_held.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the commit never started");
        thread::sleep(Duration::from_millis(10));
    }
    // A session that is not kept is not slowed down by the disk.
    match clean.recv() {
        Packet::Publish(publish) => assert_eq!(&*publish.payload, b"once"),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    let early = kept.try_recv(Duration::from_millis(1500));
    faults.hold_syncs(false);
    assert!(
        early.is_none(),
        "delivered to a kept session before its commit: {early:?}"
    );
    match kept.recv() {
        Packet::Publish(publish) => {
            assert_eq!(&*publish.payload, b"once");
            assert_eq!(publish.qos, QoS::ExactlyOnce);
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    assert_eq!(
        ack_of(publisher.recv()),
        (1, ReasonCode::Success),
        "PUBCOMP"
    );
}
