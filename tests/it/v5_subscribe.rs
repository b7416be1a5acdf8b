//! MQTT 5 SUBSCRIBE options and identifiers, shared subscriptions, and wills (delay,
//! properties, DISCONNECT 0x04).

use std::time::Duration;

use mqtt_broker::mqtt::{
    Disconnect, Packet, ProtocolVersion, QoS, ReasonCode, RetainHandling, Subscribe,
    SubscribeProperties, SubscriptionOptions, WillProperties,
};

use crate::support::{connect_packet, pid, start_broker, will, RawClient};

const V5: ProtocolVersion = ProtocolVersion::V5;
const QUIET: Duration = Duration::from_millis(300);

fn v5(addr: std::net::SocketAddr, id: &str) -> RawClient {
    RawClient::connect(addr, id, V5, true).0
}

fn subscribe_with(
    c: &mut RawClient,
    id: u16,
    filter: &str,
    options: SubscriptionOptions,
    identifier: Option<u32>,
) -> Vec<ReasonCode> {
    c.send(&Packet::Subscribe(Subscribe {
        packet_id: pid(id),
        filters: vec![(filter.into(), options)],
        properties: SubscribeProperties {
            subscription_identifier: identifier,
            user: Vec::new(),
        },
    }));
    match c.recv() {
        Packet::SubAck(ack) => ack.reasons,
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

fn qos1() -> SubscriptionOptions {
    SubscriptionOptions {
        qos: QoS::AtLeastOnce,
        ..Default::default()
    }
}

#[test]
fn subscription_identifiers_come_back_with_each_delivery() {
    // [MQTT-3.3.4-5] One copy per matching subscription, each with its identifier, in the
    // order mosquitto sends them: the exact level's subscriptions before the parent's `#`.
    let broker = start_broker();
    let mut sub = v5(broker.addr, "ids");
    subscribe_with(&mut sub, 1, "a/#", qos1(), Some(7));
    subscribe_with(&mut sub, 2, "a/b", qos1(), Some(9));
    subscribe_with(&mut sub, 3, "a/c", qos1(), None);
    let mut publisher = v5(broker.addr, "pub");
    publisher.publish("a/b", b"both", QoS::AtLeastOnce, false, 1);
    for want in [vec![9], vec![7]] {
        assert_eq!(sub.recv_publish().properties.subscription_identifiers, want);
    }
    publisher.publish("a/c", b"one", QoS::AtLeastOnce, false, 2);
    for want in [vec![], vec![7]] {
        assert_eq!(sub.recv_publish().properties.subscription_identifiers, want);
    }
}

#[test]
fn no_local_keeps_a_clients_own_messages_away() {
    // [MQTT-3.8.3-3]
    let broker = start_broker();
    let mut c = v5(broker.addr, "self");
    let options = SubscriptionOptions {
        no_local: true,
        ..Default::default()
    };
    subscribe_with(&mut c, 1, "nl", options, None);
    c.publish("nl", b"mine", QoS::AtMostOnce, false, 0);
    c.expect_nothing(QUIET);
    let mut other = v5(broker.addr, "other");
    other.publish("nl", b"theirs", QoS::AtMostOnce, false, 0);
    assert_eq!(&c.recv_publish().payload[..], b"theirs");
}

#[test]
fn retain_as_published_keeps_the_flag() {
    // [MQTT-3.3.1-12, MQTT-3.3.1-13]
    let broker = start_broker();
    let mut keep = v5(broker.addr, "keep");
    let options = SubscriptionOptions {
        retain_as_published: true,
        ..Default::default()
    };
    subscribe_with(&mut keep, 1, "rap", options, None);
    let mut clear = v5(broker.addr, "clear");
    clear.subscribe(1, &[("rap", QoS::AtMostOnce)]);
    let mut publisher = v5(broker.addr, "pub");
    publisher.publish("rap", b"r", QoS::AtMostOnce, true, 0);
    assert!(keep.recv_publish().retain);
    assert!(!clear.recv_publish().retain);
}

#[test]
fn retain_handling_options() {
    // [MQTT-3.3.1-9, -10, -11]: 0 always, 1 only for a new subscription, 2 never.
    let broker = start_broker();
    let mut publisher = v5(broker.addr, "pub");
    publisher.publish("rh", b"r", QoS::AtMostOnce, true, 0);
    publisher.ping();
    let mut c = v5(broker.addr, "rh");
    let if_new = SubscriptionOptions {
        retain_handling: RetainHandling::SendIfNewSubscription,
        ..Default::default()
    };
    subscribe_with(&mut c, 1, "rh", if_new, None);
    assert!(c.recv_publish().retain);
    subscribe_with(&mut c, 2, "rh", if_new, None);
    c.expect_nothing(QUIET);
    let never = SubscriptionOptions {
        retain_handling: RetainHandling::DoNotSend,
        ..Default::default()
    };
    let mut d = v5(broker.addr, "rh2");
    subscribe_with(&mut d, 1, "rh", never, None);
    d.expect_nothing(QUIET);
}

#[test]
fn shared_subscription_gives_each_message_to_one_member_in_turn() {
    // 5.0 section 4.8.2: each message to one member of the group (here round-robin).
    let broker = start_broker();
    let mut a = v5(broker.addr, "a");
    let mut b = v5(broker.addr, "b");
    let mut plain = v5(broker.addr, "plain");
    assert_eq!(
        subscribe_with(&mut a, 1, "$share/g/jobs/#", qos1(), None),
        vec![ReasonCode::GrantedQoS1]
    );
    subscribe_with(&mut b, 1, "$share/g/jobs/#", qos1(), None);
    plain.subscribe(1, &[("jobs/#", QoS::AtLeastOnce)]);
    let mut publisher = v5(broker.addr, "pub");
    for i in 0..4u8 {
        publisher.publish("jobs/x", &[i], QoS::AtLeastOnce, false, u16::from(i) + 1);
    }
    let got_a: Vec<u8> = (0..2).map(|_| a.recv_publish().payload[0]).collect();
    let got_b: Vec<u8> = (0..2).map(|_| b.recv_publish().payload[0]).collect();
    let mut all = [got_a.clone(), got_b.clone()].concat();
    all.sort();
    assert_eq!(all, vec![0, 1, 2, 3], "a got {got_a:?}, b got {got_b:?}");
    a.expect_nothing(QUIET);
    b.expect_nothing(QUIET);
    // An ordinary subscription to the same filter still gets every message.
    for i in 0..4u8 {
        assert_eq!(plain.recv_publish().payload[0], i);
    }
}

#[test]
fn shared_subscription_gets_no_retained_messages_on_subscribe() {
    let broker = start_broker();
    let mut publisher = v5(broker.addr, "pub");
    publisher.publish("sr", b"r", QoS::AtMostOnce, true, 0);
    publisher.ping();
    let mut member = v5(broker.addr, "member");
    subscribe_with(&mut member, 1, "$share/g/sr", qos1(), None);
    member.expect_nothing(QUIET);
}

#[test]
fn shared_group_with_every_member_offline_queues_to_a_persistent_member() {
    let broker = start_broker();
    let mut connect = connect_packet("worker", V5, false);
    connect.properties.session_expiry_interval = Some(600);
    let (mut worker, _) = RawClient::connect_with(broker.addr, connect.clone());
    subscribe_with(&mut worker, 1, "$share/g/work", qos1(), None);
    worker.disconnect();
    let mut publisher = v5(broker.addr, "pub");
    publisher.publish("work", b"queued", QoS::AtLeastOnce, false, 1);
    let (mut worker, connack) = RawClient::connect_with(broker.addr, connect);
    assert!(connack.session_present);
    assert_eq!(&worker.recv_publish().payload[..], b"queued");
}

#[test]
fn no_local_on_a_shared_subscription_is_a_protocol_error() {
    // [MQTT-3.8.3-4]
    let broker = start_broker();
    let mut c = v5(broker.addr, "nl-shared");
    let options = SubscriptionOptions {
        no_local: true,
        ..Default::default()
    };
    c.send(&Packet::Subscribe(Subscribe {
        packet_id: pid(1),
        filters: vec![("$share/g/t".into(), options)],
        properties: Default::default(),
    }));
    let seen = c.expect_closed();
    assert!(
        matches!(seen.as_slice(), [Packet::Disconnect(d)] if d.reason == ReasonCode::ProtocolError),
        "{seen:?}"
    );
}

fn watcher(addr: std::net::SocketAddr) -> RawClient {
    let mut c = v5(addr, "watcher");
    c.subscribe(1, &[("will/#", QoS::AtLeastOnce)]);
    c
}

fn with_delayed_will(
    addr: std::net::SocketAddr,
    id: &str,
    delay: u32,
    session_expiry: u32,
) -> (RawClient, mqtt_broker::mqtt::Connect) {
    let mut connect = connect_packet(id, V5, false);
    connect.properties.session_expiry_interval = Some(session_expiry);
    let mut w = will(&format!("will/{id}"), b"gone", QoS::AtLeastOnce, false).expect("will");
    w.properties = WillProperties {
        will_delay_interval: Some(delay),
        content_type: Some("text/plain".into()),
        user: vec![("why".into(), "test".into())],
        ..Default::default()
    };
    connect.will = Some(w);
    (RawClient::connect_with(addr, connect.clone()).0, connect)
}

#[test]
fn delayed_will_waits_and_carries_its_properties() {
    // [MQTT-3.1.3-9] The will waits for its delay; [MQTT-3.1.3-10] its properties go with it.
    let broker = start_broker();
    let mut watcher = watcher(broker.addr);
    let (c, _) = with_delayed_will(broker.addr, "late", 1, 60);
    c.drop_connection();
    watcher.expect_nothing(Duration::from_millis(500));
    let m = watcher.recv_publish();
    assert_eq!(m.topic, "will/late");
    assert_eq!(m.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(
        m.properties.user,
        vec![("why".to_string(), "test".to_string())]
    );
}

#[test]
fn reconnecting_within_the_will_delay_cancels_the_will() {
    let broker = start_broker();
    let mut watcher = watcher(broker.addr);
    let (c, connect) = with_delayed_will(broker.addr, "back", 1, 60);
    c.drop_connection();
    let (back, connack) = RawClient::connect_with(broker.addr, connect);
    assert!(connack.session_present);
    watcher.expect_nothing(Duration::from_millis(1600));
    back.disconnect();
}

#[test]
fn session_end_sends_a_delayed_will_at_once() {
    // The session (expiry 1 s) ends before the will delay (60 s): the will goes then.
    let broker = start_broker();
    let mut watcher = watcher(broker.addr);
    let (c, _) = with_delayed_will(broker.addr, "ending", 60, 1);
    c.drop_connection();
    assert_eq!(watcher.recv_publish().topic, "will/ending");
}

#[test]
fn disconnect_with_will_message_publishes_the_will() {
    // [MQTT-3.14.4-3] Reason 0x04 keeps the will.
    let broker = start_broker();
    let mut watcher = watcher(broker.addr);
    let (mut c, _) = with_delayed_will(broker.addr, "asked", 0, 0);
    c.send(&Packet::Disconnect(Disconnect {
        reason: ReasonCode::DisconnectWithWillMessage,
        properties: Default::default(),
    }));
    assert_eq!(watcher.recv_publish().topic, "will/asked");
}
