//! The real mosquitto_pub and mosquitto_sub against our broker, for MQTT 3.1, 3.1.1 and 5:
//! QoS 0, 1 and 2, retained messages, and persistent sessions with offline queueing.

use crate::mosquitto::{publish, Sub};
use crate::support::start_broker;

const VERSIONS: [&str; 3] = ["31", "311", "5"];

#[test]
fn readme_example_works_for_every_version() {
    let broker = start_broker();
    let port = broker.addr.port();
    for version in VERSIONS {
        let mut sub = Sub::start(port, &["-V", version, "-t", "a/#", "-v"]);
        publish(port, &["-V", version, "-t", "a/b", "-m", "hello"]);
        assert_eq!(sub.messages(1), vec!["a/b hello"], "-V {version}");
    }
}

#[test]
fn every_qos_for_every_version() {
    let broker = start_broker();
    let port = broker.addr.port();
    for version in VERSIONS {
        let mut sub = Sub::start(port, &["-V", version, "-q", "2", "-t", "q/#", "-v"]);
        for qos in ["0", "1", "2"] {
            let topic = format!("q/{qos}");
            publish(port, &["-V", version, "-q", qos, "-t", &topic, "-m", "m"]);
            assert_eq!(
                sub.messages(1),
                vec![format!("{topic} m")],
                "-V {version} -q {qos}"
            );
        }
    }
}

#[test]
fn retained_message_reaches_a_later_subscriber() {
    let broker = start_broker();
    let port = broker.addr.port();
    for version in VERSIONS {
        let topic = format!("ret/{version}");
        publish(
            port,
            &["-V", version, "-r", "-q", "1", "-t", &topic, "-m", "kept"],
        );
        let mut sub = Sub::start(port, &["-V", version, "-t", &topic, "-v", "-C", "1"]);
        assert_eq!(sub.messages(1), vec![format!("{topic} kept")]);
        assert_eq!(sub.wait(), Some(0));
    }
}

#[test]
fn persistent_session_queues_while_offline() {
    let broker = start_broker();
    let port = broker.addr.port();
    for version in VERSIONS {
        let id = format!("persist-{version}");
        let topic = format!("pq/{version}");
        // -c: clean session 0 (for v5 mosquitto_sub asks for a session that never expires);
        // -E: exit once subscribed.
        let sub = Sub::start(
            port,
            &[
                "-V", version, "-c", "-i", &id, "-q", "1", "-t", &topic, "-E",
            ],
        );
        assert_eq!(sub.wait(), Some(0));
        for body in ["one", "two", "three"] {
            publish(port, &["-V", version, "-q", "1", "-t", &topic, "-m", body]);
        }
        let mut sub = Sub::spawn(
            port,
            &[
                "-V", version, "-c", "-i", &id, "-q", "1", "-t", &topic, "-C", "3",
            ],
        );
        assert_eq!(sub.messages(3), vec!["one", "two", "three"], "-V {version}");
    }
}

#[test]
fn mqtt5_properties_end_to_end() {
    // mosquitto_pub -D publish ... and mosquitto_sub -F show every PUBLISH property arriving
    // unchanged, plus the subscription identifier of the subscription that matched.
    let broker = start_broker();
    let port = broker.addr.port();
    let format = "%t|%p|%P|%C|%R|%D|%E|%F|%S";
    let mut sub = Sub::start(
        port,
        &[
            "-V",
            "5",
            "-t",
            "props/#",
            "-F",
            format,
            "-D",
            "subscribe",
            "subscription-identifier",
            "42",
        ],
    );
    publish(
        port,
        &[
            "-V",
            "5",
            "-t",
            "props/x",
            "-m",
            "hello",
            "-D",
            "publish",
            "user-property",
            "k1",
            "v1",
            "-D",
            "publish",
            "user-property",
            "k2",
            "v2",
            "-D",
            "publish",
            "content-type",
            "text/plain",
            "-D",
            "publish",
            "response-topic",
            "reply/to",
            "-D",
            "publish",
            "correlation-data",
            "abc",
            "-D",
            "publish",
            "message-expiry-interval",
            "60",
            "-D",
            "publish",
            "payload-format-indicator",
            "1",
        ],
    );
    assert_eq!(
        sub.messages(1),
        vec!["props/x|hello|k1:v1 k2:v2|text/plain|reply/to|abc|60|1|42"]
    );
}

#[test]
fn mqtt5_and_mqtt311_clients_share_a_topic() {
    let broker = start_broker();
    let port = broker.addr.port();
    let mut old = Sub::start(port, &["-V", "311", "-t", "mix", "-v"]);
    let mut new = Sub::start(port, &["-V", "5", "-t", "mix", "-F", "%t %p %P"]);
    publish(
        port,
        &[
            "-V",
            "5",
            "-t",
            "mix",
            "-m",
            "m",
            "-D",
            "publish",
            "user-property",
            "a",
            "b",
        ],
    );
    publish(port, &["-V", "311", "-t", "mix", "-m", "n"]);
    assert_eq!(old.messages(2), vec!["mix m", "mix n"]);
    assert_eq!(new.messages(2), vec!["mix m a:b", "mix n "]);
}
