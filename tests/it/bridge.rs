//! Bridges (`connection` blocks): ours to ours, ours to mosquitto and mosquitto to ours, with
//! prefixes, notifications, loops, a remote that is not up yet, and a remote stopped in the
//! middle of a stream of QoS 1 and 2 messages.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use mqtt_broker::config::mosquitto_conf::Parsed;
use mqtt_broker::mqtt::{Ack, DecodeError, Packet, ProtocolVersion, Publish, QoS};
use mqtt_broker::Config;

use crate::auth_support::{free_port, ChildBroker, TempDir};
use crate::support::{connect_packet, start_broker, start_broker_with, RawClient, TestBroker};

/// Long enough for a bridge to (re)connect on a loaded machine.
const LINK_WAIT: Duration = Duration::from_secs(20);

/// A broker configuration made of mosquitto.conf lines (the bridge blocks among them).
fn conf(text: &str) -> Config {
    let mut parsed = Parsed::new(Config::default());
    let mut no_dirs = |_: &Path| Err("no include_dir in tests".to_string());
    parsed
        .apply(Path::new("bridge-test.conf"), text, &mut no_dirs)
        .expect("valid configuration");
    parsed.check_last_bridge().expect("complete bridge block");
    parsed.finish().config
}

/// Our broker on a given port (to be restarted on the same one).
fn start_on(port: u16, config: Config) -> TestBroker {
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the remote's port");
    crate::support::start_broker_on(listener, config)
}

fn v311(addr: SocketAddr, id: &str, clean: bool) -> RawClient {
    RawClient::connect_with(addr, connect_packet(id, ProtocolVersion::V3_1_1, clean)).0
}

fn subscriber(addr: SocketAddr, id: &str, filters: &[(&str, QoS)]) -> RawClient {
    let mut client = v311(addr, id, true);
    client.subscribe(1, filters);
    client
}

/// Waits for a PUBLISH (acknowledging QoS 1/2 as a subscriber does) and returns it.
fn next_publish(client: &mut RawClient, within: Duration) -> Option<Publish> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        match client.try_recv(left) {
            Ok(Packet::Publish(publish)) => {
                acknowledge(client, &publish);
                return Some(publish);
            }
            Ok(Packet::PubRel(ack)) => client.send(&Packet::PubComp(Ack::new(ack.packet_id))),
            Ok(_) => {}
            Err(DecodeError::Io(_)) => return None,
            Err(e) => panic!("bad packet: {e}"),
        }
    }
}

fn acknowledge(client: &mut RawClient, publish: &Publish) {
    match (publish.qos, publish.packet_id) {
        (QoS::AtLeastOnce, Some(id)) => client.send(&Packet::PubAck(Ack::new(id))),
        (QoS::ExactlyOnce, Some(id)) => client.send(&Packet::PubRec(Ack::new(id))),
        _ => {}
    }
}

/// Waits until `topic` carries `payload` on the broker at `addr` (a retained state topic).
fn wait_for_state(addr: SocketAddr, topic: &str, payload: &[u8]) {
    let deadline = Instant::now() + LINK_WAIT;
    let mut client = subscriber(addr, "state-watcher", &[(topic, QoS::AtMostOnce)]);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let publish = next_publish(&mut client, left).unwrap_or_else(|| {
            panic!(
                "{topic} never showed {:?}",
                String::from_utf8_lossy(payload)
            )
        });
        if publish.topic == topic && &publish.payload[..] == payload {
            return;
        }
    }
}

fn expect_publish(client: &mut RawClient, topic: &str, payload: &[u8]) -> Publish {
    let publish =
        next_publish(client, LINK_WAIT).unwrap_or_else(|| panic!("nothing arrived on {topic}"));
    assert_eq!(
        (publish.topic.as_str(), &publish.payload[..]),
        (topic, payload)
    );
    publish
}

fn expect_silence(client: &mut RawClient, quiet: Duration) {
    if let Some(publish) = next_publish(client, quiet) {
        panic!(
            "unexpected message on {}: {:?}",
            publish.topic, publish.payload
        );
    }
}

/// A subscriber and a publisher on each side of a bridge: `here` on the local broker, `there`
/// on the remote one.
struct Sides {
    here: RawClient,
    there: RawClient,
    p_here: RawClient,
    p_there: RawClient,
}

fn sides(
    local: SocketAddr,
    here: &[(&str, QoS)],
    remote: SocketAddr,
    there: &[(&str, QoS)],
) -> Sides {
    Sides {
        here: subscriber(local, "here", here),
        there: subscriber(remote, "there", there),
        p_here: v311(local, "p-here", true),
        p_there: v311(remote, "p-there", true),
    }
}

impl Sides {
    /// Publishes (not retained) on the local broker and expects the message on the remote one,
    /// then on the local one too when `here_too`.
    fn send_here(&mut self, (topic, payload): (&str, &[u8]), qos: QoS, id: u16, here_too: bool) {
        self.p_here.publish(topic, payload, qos, false, id);
        expect_publish(&mut self.there, topic, payload);
        if here_too {
            expect_publish(&mut self.here, topic, payload);
        }
    }

    /// The same from the remote broker: expected on the local one, then on the remote one too
    /// when `there_too`.
    fn send_there(&mut self, (topic, payload): (&str, &[u8]), qos: QoS, id: u16, there_too: bool) {
        self.p_there.publish(topic, payload, qos, false, id);
        expect_publish(&mut self.here, topic, payload);
        if there_too {
            expect_publish(&mut self.there, topic, payload);
        }
    }
}

const STATE: &str = "$SYS/broker/connection/site-a/state";

#[test]
fn two_of_ours_bridged_both_ways_with_prefixes() {
    let remote = start_broker();
    let local = start_broker_with(conf(&format!(
        "connection cloud\n\
         address {}\n\
         remote_clientid site-a\n\
         restart_timeout 1\n\
         topic sensors/# out 1 site-a/ cloud/site-a/\n\
         topic cmd/# in 2 site-a/ cloud/site-a/\n\
         topic \"\" both 1 local/alarm cloud/alarms/site-a\n",
        remote.addr
    )));
    wait_for_state(local.addr, STATE, b"1");
    wait_for_state(remote.addr, STATE, b"1");

    // Out: the local prefix comes off, the remote prefix goes on.
    let filters = [
        ("cloud/site-a/sensors/#", QoS::ExactlyOnce),
        ("cloud/alarms/#", QoS::ExactlyOnce),
        ("cloud/site-a/other", QoS::ExactlyOnce),
        ("site-a/#", QoS::ExactlyOnce),
    ];
    let mut cloud = subscriber(remote.addr, "cloud-sub", &filters);
    let mut site = subscriber(
        local.addr,
        "site-sub",
        &[("site-a/cmd/#", QoS::ExactlyOnce)],
    );
    let mut publisher = v311(local.addr, "site-pub", true);
    publisher.publish("site-a/sensors/t1", b"21.5", QoS::AtLeastOnce, false, 1);
    let got = expect_publish(&mut cloud, "cloud/site-a/sensors/t1", b"21.5");
    assert_eq!(got.qos, QoS::AtLeastOnce);
    // In: the reverse, at the QoS of the topic line.
    let mut operator = v311(remote.addr, "operator", true);
    operator.publish(
        "cloud/site-a/cmd/reboot",
        b"now",
        QoS::ExactlyOnce,
        false,
        2,
    );
    let got = expect_publish(&mut site, "site-a/cmd/reboot", b"now");
    assert_eq!(got.qos, QoS::ExactlyOnce);
    // A topic outside every line stays home.
    publisher.publish("site-a/other", b"x", QoS::AtLeastOnce, false, 3);
    // The `""` pattern maps one topic onto another, both ways.
    publisher.publish("local/alarm", b"fire", QoS::AtLeastOnce, false, 4);
    expect_publish(&mut cloud, "cloud/alarms/site-a", b"fire");
    let mut alarms = subscriber(
        local.addr,
        "alarm-sub",
        &[("local/alarm", QoS::AtLeastOnce)],
    );
    operator.publish("cloud/alarms/site-a", b"drill", QoS::AtLeastOnce, false, 5);
    expect_publish(&mut cloud, "cloud/alarms/site-a", b"drill");
    expect_publish(&mut alarms, "local/alarm", b"drill");
    // Neither the unmatched topic nor the incoming alarm went (back) out.
    expect_silence(&mut cloud, Duration::from_millis(300));
}

#[test]
fn both_without_prefixes_never_echoes() {
    let remote = start_broker();
    let local = start_broker_with(conf(&format!(
        "connection loop\naddress {}\nremote_clientid site-a\nrestart_timeout 1\ntopic # both 2\n",
        remote.addr
    )));
    wait_for_state(local.addr, STATE, b"1");
    let everything = [("t/#", QoS::ExactlyOnce)];
    let mut s = sides(local.addr, &everything, remote.addr, &everything);
    s.send_here(("t/from-local", b"1"), QoS::ExactlyOnce, 1, true);
    s.send_there(("t/from-remote", b"2"), QoS::AtLeastOnce, 1, true);
    // Had either message gone round, it would show up a second time.
    expect_silence(&mut s.here, Duration::from_millis(700));
    expect_silence(&mut s.there, Duration::from_millis(100));
}

#[test]
fn notifications_show_1_then_0() {
    let port = free_port();
    let remote = start_on(port, Config::default());
    let local = start_broker_with(conf(&format!(
        "connection n\naddress 127.0.0.1:{port}\nremote_clientid site-a\nrestart_timeout 1\n\
         topic x/# out 1\n"
    )));
    wait_for_state(local.addr, STATE, b"1");
    wait_for_state(remote.addr, STATE, b"1");
    remote.stop();
    wait_for_state(local.addr, STATE, b"0");
    // Back again: 1 on both sides.
    let remote = start_on(port, Config::default());
    wait_for_state(local.addr, STATE, b"1");
    wait_for_state(remote.addr, STATE, b"1");
    // Our side stopping says 0 on the remote.
    local.stop();
    wait_for_state(remote.addr, STATE, b"0");
}

#[test]
fn notification_topic_and_local_only() {
    let remote = start_broker();
    let local = start_broker_with(conf(&format!(
        "connection n\naddress {}\nrestart_timeout 1\ntopic x/# out 1\n\
         notification_topic bridges/n/up\nnotifications_local_only true\n",
        remote.addr
    )));
    wait_for_state(local.addr, "bridges/n/up", b"1");
    let mut watcher = subscriber(remote.addr, "w", &[("bridges/#", QoS::AtLeastOnce)]);
    expect_silence(&mut watcher, Duration::from_millis(500));
}

#[test]
fn first_connection_to_a_remote_not_up_yet() {
    let port = free_port();
    let local = start_broker_with(conf(&format!(
        "connection late\naddress 127.0.0.1:{port}\nremote_clientid site-a\n\
         restart_timeout 1\ntopic q/# out 1\n"
    )));
    // Published while the remote does not exist yet: queued in the bridge's local session.
    let mut publisher = v311(local.addr, "early", true);
    for n in 1..=5u16 {
        let topic = format!("q/{n}");
        publisher.publish(&topic, b"early", QoS::AtLeastOnce, true, n);
    }
    std::thread::sleep(Duration::from_millis(1500));
    let remote = start_on(port, Config::default());
    wait_for_state(local.addr, STATE, b"1");
    // Retained, so the subscriber needs no race with the link to see that they all came.
    let mut sub = subscriber(remote.addr, "late-sub", &[("q/#", QoS::AtLeastOnce)]);
    let mut seen = HashSet::new();
    while seen.len() < 5 {
        let publish = next_publish(&mut sub, LINK_WAIT).expect("all five arrive");
        seen.insert(publish.topic.clone());
    }
}

// ---- with mosquitto ----

/// A mosquitto.conf for a child mosquitto on `port`, plus `extra` lines.
fn mosquitto_conf(dir: &TempDir, port: u16, extra: &str) -> std::path::PathBuf {
    dir.file(
        "mosquitto.conf",
        &format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 10000\n{extra}"
        ),
    )
}

#[test]
fn ours_bridged_to_mosquitto_both_directions() {
    for version in ["mqttv311", "mqttv50"] {
        let dir = TempDir::new("bridge-to-mosquitto");
        let port = free_port();
        let _mosquitto = ChildBroker::mosquitto(&mosquitto_conf(&dir, port, ""), &[port]);
        let remote = SocketAddr::from(([127, 0, 0, 1], port));
        let local = start_broker_with(conf(&format!(
            "connection m\naddress 127.0.0.1:{port}\nremote_clientid site-a\n\
             bridge_protocol_version {version}\nrestart_timeout 1\n\
             topic up/# out 1\ntopic down/# in 1\ntopic both/# both 2\n"
        )));
        wait_for_state(local.addr, STATE, b"1");
        wait_for_state(remote, STATE, b"1");
        let mut s = sides(
            local.addr,
            &[("down/#", QoS::AtLeastOnce), ("both/#", QoS::ExactlyOnce)],
            remote,
            &[("up/#", QoS::AtLeastOnce), ("both/#", QoS::ExactlyOnce)],
        );
        let (q1, q2) = (QoS::AtLeastOnce, QoS::ExactlyOnce);
        s.send_here(("up/a", b"1"), q1, 1, false);
        s.send_there(("down/b", b"2"), q1, 1, false);
        s.send_here(("both/c", b"3"), q2, 2, true);
        s.send_there(("both/d", b"4"), q2, 2, true);
        expect_silence(&mut s.here, Duration::from_millis(500));
        expect_silence(&mut s.there, Duration::from_millis(100));
    }
}

#[test]
fn mosquitto_bridged_to_ours() {
    let ours = start_broker();
    let dir = TempDir::new("mosquitto-to-ours");
    let port = free_port();
    let extra = format!(
        "connection to-ours\naddress {}\nremote_clientid site-m\nrestart_timeout 1\n\
         topic m/# both 1\ntopic out/# out 1 \"\" from-m/\n",
        ours.addr
    );
    let _mosquitto = ChildBroker::mosquitto(&mosquitto_conf(&dir, port, &extra), &[port]);
    let theirs = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for_state(ours.addr, "$SYS/broker/connection/site-m/state", b"1");
    let mut s = sides(
        ours.addr,
        &[("m/#", QoS::AtLeastOnce), ("from-m/#", QoS::AtLeastOnce)],
        theirs,
        &[("m/#", QoS::AtLeastOnce)],
    );
    s.send_there(("m/1", b"a"), QoS::AtLeastOnce, 1, true);
    s.send_here(("m/2", b"b"), QoS::AtLeastOnce, 1, true);
    s.p_there.publish("out/3", b"c", QoS::AtLeastOnce, false, 2);
    expect_publish(&mut s.here, "from-m/out/3", b"c");
    // mosquitto's bridge connects with the bridge flag: we never send its messages back.
    expect_silence(&mut s.here, Duration::from_millis(500));
    expect_silence(&mut s.there, Duration::from_millis(300));
}

/// Asks a child process to stop as `kill` does by default (SIGTERM): mosquitto saves its
/// persistence file on the way out.
fn terminate(broker: &mut ChildBroker) {
    let status = Command::new("kill")
        .args(["-TERM", &broker.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while broker.child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "mosquitto did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Receives QoS 1 and 2 messages as an exactly-once receiver does (a QoS 2 message counts at
/// its PUBREL; a repeated PUBLISH of one not yet released is the same message).
struct Collector {
    client: RawClient,
    /// How many messages of each QoS the test sent ("1-0".., "2-0"..), for the diagnostics.
    each: usize,
    pending: HashMap<u16, String>,
    qos1: HashMap<String, usize>,
    qos2: HashMap<String, usize>,
}

impl Collector {
    fn new(client: RawClient, each: usize) -> Collector {
        Collector {
            client,
            each,
            pending: HashMap::new(),
            qos1: HashMap::new(),
            qos2: HashMap::new(),
        }
    }

    fn receive_until(&mut self, done: impl Fn(&Collector) -> bool, within: Duration) {
        let deadline = Instant::now() + within;
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out: {} QoS 1 and {} QoS 2",
                self.qos1.len(),
                self.qos2.len()
            );
            match self.client.try_recv(left) {
                Ok(Packet::Publish(publish)) => {
                    let id = publish.packet_id.expect("QoS 1 or 2");
                    let payload = String::from_utf8_lossy(&publish.payload).into_owned();
                    if publish.qos == QoS::AtLeastOnce {
                        *self.qos1.entry(payload).or_default() += 1;
                        self.client.send(&Packet::PubAck(Ack::new(id)));
                    } else {
                        self.pending.insert(id.get(), payload);
                        self.client.send(&Packet::PubRec(Ack::new(id)));
                    }
                }
                Ok(Packet::PubRel(ack)) => {
                    if let Some(payload) = self.pending.remove(&ack.packet_id.get()) {
                        *self.qos2.entry(payload).or_default() += 1;
                    }
                    self.client.send(&Packet::PubComp(Ack::new(ack.packet_id)));
                }
                Ok(_) => {}
                Err(e) => {
                    let missing = |seen: &HashMap<String, usize>, qos: u8| {
                        (0..self.each)
                            .map(|n| format!("{qos}-{n}"))
                            .filter(|p| !seen.contains_key(p))
                            .collect::<Vec<_>>()
                    };
                    panic!(
                        "collector: {e}; missing QoS 1 {:?}, QoS 2 {:?}",
                        missing(&self.qos1, 1),
                        missing(&self.qos2, 2)
                    )
                }
            }
        }
    }

    /// Once everything has arrived: no QoS 2 message arrived twice, and no straggler follows
    /// (one would be a duplicate; it is given a moment to show).
    fn assert_qos2_once(&mut self) {
        let quiet = Instant::now() + Duration::from_millis(500);
        while Instant::now() < quiet {
            match self.client.try_recv(Duration::from_millis(100)) {
                Ok(Packet::Publish(publish)) if publish.qos == QoS::ExactlyOnce => {
                    let payload = String::from_utf8_lossy(&publish.payload).into_owned();
                    panic!("QoS 2 {payload} again");
                }
                _ => {}
            }
        }
        let twice: Vec<_> = self.qos2.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "QoS 2 delivered more than once: {twice:?}"
        );
    }
}

/// Publishes message `n` once at QoS 1 and once at QoS 2 (on r/1 and r/2, payloads "1-n" and
/// "2-n"); each call returns once acknowledged (PUBACK, or PUBREC then PUBCOMP). `id` is the
/// last packet id used.
fn publish_both_qos(publisher: &mut RawClient, n: usize, id: &mut u16) {
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        *id = *id % 60_000 + 1;
        let payload = format!("{}-{n}", qos as u8);
        publisher.publish(
            &format!("r/{}", qos as u8),
            payload.as_bytes(),
            qos,
            false,
            *id,
        );
    }
}

/// Takes back the collector's session at `addr` and receives until all `each` messages of each
/// QoS came, then checks that no QoS 2 message came twice.
fn collect_all(addr: SocketAddr, each: usize, within: Duration) {
    let mut collector = Collector::new(v311(addr, "collector", false), each);
    collector.receive_until(|c| c.qos1.len() == each && c.qos2.len() == each, within);
    collector.assert_qos2_once();
}

const EACH: usize = 150;

#[test]
fn remote_stopped_mid_stream_loses_nothing() {
    let dir = TempDir::new("bridge-link-failure");
    let port = free_port();
    let persistence = format!(
        "persistence true\npersistence_location {}/\n",
        dir.0.display()
    );
    // mosquitto started as root writes its file as the `mosquitto` user.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o777))
        .expect("open the directory to mosquitto");
    let conf_path = mosquitto_conf(&dir, port, &persistence);
    let mut mosquitto = ChildBroker::mosquitto(&conf_path, &[port]);
    let remote = SocketAddr::from(([127, 0, 0, 1], port));
    // The collector's session waits on the remote for everything while it is away.
    let mut collector = v311(remote, "collector", false);
    collector.subscribe(1, &[("r/#", QoS::ExactlyOnce)]);
    collector.disconnect();

    let local = start_broker_with(conf(&format!(
        "connection r\naddress 127.0.0.1:{port}\nremote_clientid site-a\nrestart_timeout 1\n\
         topic r/# out 2\n"
    )));
    wait_for_state(local.addr, STATE, b"1");
    let mut publisher = v311(local.addr, "stream", true);
    let mut id = 0u16;
    for n in 0..EACH {
        if n == EACH / 3 {
            // Mid-stream: the remote goes away, and stays away for a while; what follows is
            // published while the link is down.
            terminate(&mut mosquitto);
            wait_for_state(local.addr, STATE, b"0");
        }
        if n == 2 * EACH / 3 {
            mosquitto = ChildBroker::mosquitto(&conf_path, &[port]);
        }
        publish_both_qos(&mut publisher, n, &mut id);
    }
    collect_all(remote, EACH, Duration::from_secs(40));
    drop(local);
}

/// Messages of each QoS in the restart test.
const KEPT: usize = 40;

#[test]
fn queued_messages_survive_a_sigkill_while_the_remote_is_down() {
    use crate::child_broker::{ChildBroker as Process, TempDir as Store};
    // The remote (our binary, persistent) first holds a session for the collector, then goes
    // away until the end.
    let remote_store = Store::new("bridge-durable-remote");
    let remote_port = free_port();
    let remote = Process::start(remote_store.path(), remote_port, &[]);
    let mut collector = v311(remote.addr, "collector", false);
    collector.subscribe(1, &[("r/#", QoS::ExactlyOnce)]);
    collector.disconnect();
    assert!(remote.terminate().success());

    // The local broker, persistent, bridged to the remote that is down.
    let local_store = Store::new("bridge-durable-local");
    let dir = TempDir::new("bridge-durable-conf");
    let conf_path = dir.file(
        "bridge.conf",
        &format!(
            "connection r\naddress 127.0.0.1:{remote_port}\nremote_clientid site-a\n\
             restart_timeout 1\ntopic r/# out 2\n"
        ),
    );
    let args = ["-c", conf_path.to_str().expect("a UTF-8 path")];
    let local_port = free_port();
    let local = Process::start_with_args(local_store.path(), local_port, &[], &args);
    let mut publisher = v311(local.addr, "publisher", true);
    let mut id = 0u16;
    for n in 0..KEPT {
        publish_both_qos(&mut publisher, n, &mut id);
    }
    // Acknowledged, so stored: SIGKILL, then the same store again.
    local.kill();
    let local = Process::start_with_args(local_store.path(), local_port, &[], &args);
    let remote = Process::start(remote_store.path(), remote_port, &[]);
    collect_all(remote.addr, KEPT, Duration::from_secs(25));
    drop((local, remote));
}

/// The remote side of a bridge played by the test, packet by packet.
struct FakeRemote {
    stream: std::net::TcpStream,
    body: Vec<u8>,
}

impl FakeRemote {
    /// Accepts the bridge's next connection and answers its CONNECT.
    fn accept(
        listener: &TcpListener,
        session_present: bool,
    ) -> (FakeRemote, Box<mqtt_broker::mqtt::Connect>) {
        listener.set_nonblocking(false).expect("blocking accept");
        let (stream, _) = listener.accept().expect("the bridge connects");
        stream
            .set_read_timeout(Some(LINK_WAIT))
            .expect("read timeout");
        let mut remote = FakeRemote {
            stream,
            body: Vec::new(),
        };
        let connect = match remote.recv() {
            Packet::Connect(connect) => connect,
            other => panic!("expected CONNECT, got {other:?}"),
        };
        remote.send(&Packet::ConnAck(mqtt_broker::mqtt::ConnAck {
            session_present,
            ..Default::default()
        }));
        (remote, connect)
    }

    fn recv(&mut self) -> Packet {
        mqtt_broker::mqtt::read_packet(
            &mut self.stream,
            ProtocolVersion::V3_1_1,
            1 << 20,
            &mut self.body,
        )
        .expect("a packet from the bridge")
    }

    fn send(&mut self, packet: &Packet) {
        use std::io::Write;
        let mut out = Vec::new();
        packet.encode(ProtocolVersion::V3_1_1, &mut out);
        self.stream.write_all(&out).expect("write to the bridge");
    }
}

#[test]
fn unacknowledged_publishes_and_pubrels_are_resent_on_reconnect() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let local = start_broker_with(conf(&format!(
        "connection fake\naddress 127.0.0.1:{port}\nremote_clientid site-a\n\
         restart_timeout 1\nnotifications false\ntopic f/# out 2\n"
    )));
    let (mut remote, connect) = FakeRemote::accept(&listener, false);
    assert!(connect.bridge, "try_private sets the bridge flag");
    assert!(!connect.clean_start, "cleansession false by default");
    let mut publisher = v311(local.addr, "pub", true);
    publisher.publish("f/a", b"qos1", QoS::AtLeastOnce, false, 1);
    publisher.publish("f/b", b"qos2", QoS::ExactlyOnce, false, 2);
    // The QoS 1 message is never acknowledged; the QoS 2 one gets as far as PUBREL.
    let mut qos1_id = None;
    let mut qos2_id = None;
    while qos1_id.is_none() || qos2_id.is_none() {
        match remote.recv() {
            Packet::Publish(p) if p.qos == QoS::AtLeastOnce => qos1_id = p.packet_id,
            Packet::Publish(p) if p.qos == QoS::ExactlyOnce => {
                remote.send(&Packet::PubRec(Ack::new(p.packet_id.expect("id"))));
            }
            Packet::PubRel(ack) => qos2_id = Some(ack.packet_id),
            other => panic!("unexpected {other:?}"),
        }
    }
    drop(remote);
    // Published while the link is down.
    publisher.publish("f/c", b"while down", QoS::AtLeastOnce, false, 3);

    let (mut remote, _) = FakeRemote::accept(&listener, true);
    let (mut resent_publish, mut resent_pubrel, mut queued) = (false, false, false);
    while !(resent_publish && resent_pubrel && queued) {
        match remote.recv() {
            Packet::Publish(p) if p.topic == "f/a" => {
                assert_eq!(p.packet_id, qos1_id, "resent under its packet id");
                assert!(p.dup, "resent with DUP");
                remote.send(&Packet::PubAck(Ack::new(p.packet_id.expect("id"))));
                resent_publish = true;
            }
            Packet::PubRel(ack) => {
                assert_eq!(Some(ack.packet_id), qos2_id);
                remote.send(&Packet::PubComp(Ack::new(ack.packet_id)));
                resent_pubrel = true;
            }
            Packet::Publish(p) if p.topic == "f/c" => {
                assert_eq!(&p.payload[..], b"while down");
                remote.send(&Packet::PubAck(Ack::new(p.packet_id.expect("id"))));
                queued = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // Everything acknowledged: nothing more comes, not even the completed QoS 2 message.
    remote
        .stream
        .set_read_timeout(Some(Duration::from_millis(700)))
        .expect("read timeout");
    match mqtt_broker::mqtt::read_packet(
        &mut remote.stream,
        ProtocolVersion::V3_1_1,
        1 << 20,
        &mut remote.body,
    ) {
        Err(DecodeError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("expected silence, got {other:?}"),
    }
}

#[test]
fn a_failed_address_gives_way_to_the_next() {
    let remote = start_broker();
    let dead = free_port();
    let local = start_broker_with(conf(&format!(
        "connection two\naddresses 127.0.0.1:{dead} {}\nremote_clientid site-a\n\
         restart_timeout 1\ntopic x/# out 1\n",
        remote.addr
    )));
    wait_for_state(remote.addr, STATE, b"1");
    let mut there = subscriber(remote.addr, "there", &[("x/#", QoS::AtLeastOnce)]);
    v311(local.addr, "p", true).publish("x/1", b"via the second", QoS::AtLeastOnce, false, 1);
    expect_publish(&mut there, "x/1", b"via the second");
}

#[test]
fn start_type_once_does_not_reconnect() {
    let port = free_port();
    let remote = start_on(port, Config::default());
    let local = start_broker_with(conf(&format!(
        "connection once\naddress 127.0.0.1:{port}\nremote_clientid site-a\n\
         restart_timeout 1\nstart_type once\ntopic x/# out 1\n"
    )));
    wait_for_state(remote.addr, STATE, b"1");
    remote.stop();
    wait_for_state(local.addr, STATE, b"0");
    let remote = start_on(port, Config::default());
    // Three restart timeouts later, still no bridge (no retained state on the new remote).
    let mut watcher = subscriber(remote.addr, "w", &[(STATE, QoS::AtMostOnce)]);
    expect_silence(&mut watcher, Duration::from_secs(3));
}

#[test]
fn outgoing_retain_off_and_max_packet_size() {
    let remote = start_broker();
    let local = start_broker_with(conf(&format!(
        "connection small\naddress {}\nremote_clientid site-a\nrestart_timeout 1\n\
         bridge_outgoing_retain false\nbridge_max_packet_size 100\ntopic x/# out 1\n",
        remote.addr
    )));
    wait_for_state(local.addr, STATE, b"1");
    let mut there = subscriber(remote.addr, "there", &[("x/#", QoS::AtLeastOnce)]);
    let mut publisher = v311(local.addr, "p", true);
    publisher.publish("x/big", &[b'b'; 200], QoS::AtLeastOnce, false, 1);
    publisher.publish("x/kept", b"retained here", QoS::AtLeastOnce, true, 2);
    // The big one was dropped (acknowledged locally, never sent); the small one went.
    expect_publish(&mut there, "x/kept", b"retained here");
    expect_silence(&mut there, Duration::from_millis(300));
    // It went without its retain flag: the remote kept nothing.
    let mut late = subscriber(remote.addr, "late", &[("x/#", QoS::AtLeastOnce)]);
    expect_silence(&mut late, Duration::from_millis(500));
    // Here it is retained as usual.
    let mut here = subscriber(local.addr, "here", &[("x/#", QoS::AtLeastOnce)]);
    expect_publish(&mut here, "x/kept", b"retained here");
}

/// Our broker with a TLS listener of `settings` besides its plain one; returns it and the TLS
/// listener's port.
fn tls_remote(settings: mqtt_broker::config::TlsSettings) -> (TestBroker, u16) {
    use crate::transports::listener;
    use mqtt_broker::config::Protocol;
    let tls = listener(Protocol::Mqtt, Some(settings));
    let (remote, addrs, _) =
        crate::support::start_broker_with_listeners(Config::default(), vec![tls]);
    (remote, addrs[0].port())
}

#[test]
fn tls_bridge_with_a_client_certificate() {
    let certs = crate::transports::Certs::new();
    // The remote asks for a client certificate its CA signed.
    let (remote, port) = tls_remote(certs.settings(true));
    let local = start_broker_with(conf(&format!(
        "connection secure\naddress localhost:{port}\nremote_clientid site-a\nrestart_timeout 1\n\
         bridge_cafile {}\nbridge_certfile {}\nbridge_keyfile {}\ntopic x/# both 1\n",
        certs.path("ca.pem"),
        certs.path("client.pem"),
        certs.path("client.key"),
    )));
    wait_for_state(local.addr, STATE, b"1");
    // Checked through the remote's plain listener: the same router.
    let x = [("x/#", QoS::AtLeastOnce)];
    let mut s = sides(local.addr, &x, remote.addr, &x);
    s.send_here(("x/1", b"out"), QoS::AtLeastOnce, 1, true);
    s.send_there(("x/2", b"in"), QoS::AtLeastOnce, 1, true);
    expect_silence(&mut s.here, Duration::from_millis(300));
}

#[test]
fn tls_bridge_without_the_right_ca_does_not_connect() {
    use crate::transports::Certs;
    let certs = Certs::new();
    let other = Certs::new();
    let (remote, port) = tls_remote(certs.settings(false));
    let _local = start_broker_with(conf(&format!(
        "connection wrong-ca\naddress localhost:{port}\nremote_clientid site-a\nrestart_timeout 1\n\
         bridge_cafile {}\ntopic x/# out 1\n",
        other.path("ca.pem"),
    )));
    let mut watcher = subscriber(remote.addr, "w", &[(STATE, QoS::AtMostOnce)]);
    expect_silence(&mut watcher, Duration::from_secs(2));
}

#[test]
fn on_a_secondary_address_the_main_one_is_taken_back() {
    let main_port = free_port();
    let secondary = start_broker();
    let _local = start_broker_with(conf(&format!(
        "connection main\naddresses 127.0.0.1:{main_port} {}\nremote_clientid site-a\n\
         restart_timeout 1\ntopic x/# out 1\n",
        secondary.addr
    )));
    wait_for_state(secondary.addr, STATE, b"1");
    // The main address comes up: within a probe interval (5 s) and a restart the bridge is
    // there, and the secondary hears that it left.
    let main = start_on(main_port, Config::default());
    wait_for_state(main.addr, STATE, b"1");
    wait_for_state(secondary.addr, STATE, b"0");
}

#[test]
fn lazy_starts_at_the_threshold_and_stops_when_idle() {
    let remote = start_broker();
    let local = start_broker_with(conf(&format!(
        "connection lazy\naddress {}\nremote_clientid site-a\nrestart_timeout 1\n\
         start_type lazy\nthreshold 3\nidle_timeout 2\ntopic x/# out 1\n",
        remote.addr
    )));
    let mut watcher = subscriber(remote.addr, "w", &[(STATE, QoS::AtMostOnce)]);
    let mut there = subscriber(remote.addr, "there", &[("x/#", QoS::AtLeastOnce)]);
    let mut publisher = v311(local.addr, "p", true);
    publisher.publish("x/1", b"1", QoS::AtLeastOnce, false, 1);
    publisher.publish("x/2", b"2", QoS::AtLeastOnce, false, 2);
    // Two waiting, three needed: no link yet.
    expect_silence(&mut watcher, Duration::from_millis(1500));
    publisher.publish("x/3", b"3", QoS::AtLeastOnce, false, 3);
    let up = next_publish(&mut watcher, LINK_WAIT).expect("the link comes up");
    assert_eq!(&up.payload[..], b"1");
    for n in ["1", "2", "3"] {
        expect_publish(&mut there, &format!("x/{n}"), n.as_bytes());
    }
    // Nothing more to send: after idle_timeout the bridge stops and says so.
    let down = next_publish(&mut watcher, LINK_WAIT).expect("the link goes down when idle");
    assert_eq!(&down.payload[..], b"0");
}
