//! Authentication: password files in each mosquitto_passwd format, CONNACK codes as
//! mosquitto answers them, no will and no session after a refusal, the `passwd` subcommand
//! checked against the real mosquitto, and credentials re-checked after a reload.

use std::time::Duration;

use mqtt_broker::auth::password_file::{Hash, PasswordFile};
use mqtt_broker::config::Security;
use mqtt_broker::mqtt::{Packet, ProtocolVersion, QoS, ReasonCode};
use mqtt_broker::Broker;

use crate::auth_support::{free_port, pub_status, run, ChildBroker, TempDir};
use crate::support::{config_with, connect_packet, start_broker_with, will, RawClient, WAIT};

/// A password file with one user per format: written by the real mosquitto_passwd (`$7$`,
/// 12-byte salt), `$7$` with a 64-byte salt and 1000 iterations (mosquitto 2.1), `$6$`, and
/// `$argon2id$`.
fn password_file(dir: &TempDir) -> std::path::PathBuf {
    let path = dir.file("pw", "");
    let (code, stderr) = run(
        "mosquitto_passwd",
        &["-b", path.to_str().unwrap(), "mosq", "mosq-pw"],
    );
    assert_eq!(code, 0, "mosquitto_passwd: {stderr}");
    let mut text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("mosq:$7$101$"), "{text}");
    let mut extra = PasswordFile::default();
    let mut derived = vec![0u8; 64];
    let salt = [5u8; 64];
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(b"long-pw", &salt, 1000, &mut derived);
    extra.set(
        "long",
        Hash::Pbkdf2 {
            iterations: 1000,
            salt: salt.to_vec(),
            hash: derived,
        },
    );
    {
        use sha2::Digest;
        let salt = b"salt-for-six".to_vec();
        let mut digest = sha2::Sha512::new();
        digest.update(b"six-pw");
        digest.update(&salt);
        extra.set(
            "six",
            Hash::Sha512 {
                salt,
                hash: digest.finalize().to_vec(),
            },
        );
    }
    {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt = SaltString::encode_b64(b"argon-salt-bytes").unwrap();
        let phc = argon2::Argon2::default()
            .hash_password(b"argon-pw", &salt)
            .unwrap()
            .to_string();
        extra.set("argon", Hash::parse(&phc).unwrap());
    }
    text.push_str(&extra.to_text());
    std::fs::write(&path, text).unwrap();
    path
}

fn secured(dir: &TempDir) -> mqtt_broker::Config {
    let path = password_file(dir);
    config_with(|c| {
        c.security = Security {
            allow_anonymous: Some(false),
            password_file: Some(path),
            ..Default::default()
        }
    })
}

fn connack(
    addr: std::net::SocketAddr,
    version: ProtocolVersion,
    user: Option<&str>,
    password: Option<&str>,
) -> ReasonCode {
    let mut connect = connect_packet("c", version, true);
    connect.username = user.map(Into::into);
    connect.password = password.map(|p| p.as_bytes().to_vec());
    RawClient::connect_with(addr, connect).1.reason
}

#[test]
fn every_password_format_and_the_refusal_codes() {
    let dir = TempDir::new("formats");
    let broker = start_broker_with(secured(&dir));
    use ReasonCode::{NotAuthorized, Success};
    let cases: &[(Option<&str>, Option<&str>, ReasonCode)] = &[
        (Some("mosq"), Some("mosq-pw"), Success),
        (Some("long"), Some("long-pw"), Success),
        (Some("six"), Some("six-pw"), Success),
        (Some("argon"), Some("argon-pw"), Success),
        // mosquitto 2.0 answers each failure "not authorised": 5 (3.1.1) / 0x87 (5).
        (Some("mosq"), Some("wrong"), NotAuthorized),
        (Some("mosq"), None, NotAuthorized),
        (Some("nobody"), Some("x"), NotAuthorized),
        (None, None, NotAuthorized),
    ];
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        for &(user, password, expected) in cases {
            assert_eq!(
                connack(broker.addr, version, user, password),
                expected,
                "{version:?} {user:?} {password:?}"
            );
        }
    }
}

/// The same password file and decisions against the real mosquitto, through mosquitto_pub.
#[test]
fn mosquitto_decides_the_same_with_the_same_password_file() {
    let dir = TempDir::new("same-pw");
    let pw = password_file(&dir);
    // Argon2 and 64-byte salts are mosquitto 2.1's; Debian's 2.0 cannot read them.
    let text = std::fs::read_to_string(&pw).unwrap();
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("argon:") && !l.starts_with("long:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&pw, text).unwrap();
    let (ours_port, theirs_port) = (free_port(), free_port());
    let conf = |port: u16| {
        format!(
            "user root\nlistener {port} 127.0.0.1\npassword_file {}\n",
            pw.display()
        )
    };
    let ours_conf = dir.file("ours.conf", &conf(ours_port));
    let theirs_conf = dir.file("theirs.conf", &conf(theirs_port));
    let _ours = ChildBroker::ours(&ours_conf, &[ours_port]);
    let _theirs = ChildBroker::mosquitto(&theirs_conf, &[theirs_port]);
    let cases: &[Option<(&str, &str)>] = &[
        Some(("mosq", "mosq-pw")),
        Some(("six", "six-pw")),
        Some(("mosq", "wrong")),
        Some(("six", "wrong")),
        Some(("nobody", "x")),
        None,
    ];
    for version in ["mqttv311", "mqttv5"] {
        for &creds in cases {
            let theirs = pub_status(theirs_port, version, creds, "t");
            let ours = pub_status(ours_port, version, creds, "t");
            assert_eq!(ours, theirs, "{version} {creds:?}");
        }
    }
}

#[test]
fn refused_client_gets_no_will_and_no_session() {
    let dir = TempDir::new("no-will");
    let broker = start_broker_with(secured(&dir));
    let mut watcher = {
        let mut connect = connect_packet("watcher", ProtocolVersion::V3_1_1, true);
        connect.username = Some("mosq".into());
        connect.password = Some(b"mosq-pw".to_vec());
        RawClient::connect_with(broker.addr, connect).0
    };
    watcher.subscribe(1, &[("wills/#", QoS::AtLeastOnce)]);
    let mut connect = connect_packet("victim", ProtocolVersion::V3_1_1, false);
    connect.username = Some("mosq".into());
    connect.password = Some(b"wrong".to_vec());
    connect.will = will("wills/victim", b"gone", QoS::AtLeastOnce, false);
    let (client, ack) = RawClient::connect_with(broker.addr, connect.clone());
    assert_eq!(ack.reason, ReasonCode::NotAuthorized);
    drop(client);
    watcher.expect_nothing(Duration::from_millis(500));
    // No session was made: the right password later finds none.
    connect.password = Some(b"mosq-pw".to_vec());
    connect.will = None;
    let (_client, ack) = RawClient::connect_with(broker.addr, connect);
    assert_eq!(ack.reason, ReasonCode::Success);
    assert!(!ack.session_present);
}

/// `mqtt-broker passwd` writes what mosquitto accepts, and edits files in place.
#[test]
fn passwd_subcommand_writes_what_mosquitto_accepts() {
    let dir = TempDir::new("passwd");
    let pw = dir.0.join("pw");
    let ours = env!("CARGO_BIN_EXE_mqtt-broker");
    let path = pw.to_str().unwrap();
    for args in [
        vec!["passwd", "-c", "-b", path, "ann", "ann-pw"],
        vec!["passwd", "-b", path, "ben", "ben-pw"],
        vec!["passwd", "-b", path, "cid", "cid-pw"],
        vec!["passwd", "-D", path, "cid"],
    ] {
        let (code, stderr) = run(ours, &args);
        assert_eq!(code, 0, "{args:?}: {stderr}");
    }
    let (code, stderr) = run(ours, &["passwd", "-D", path, "cid"]);
    assert_ne!(code, 0, "deleting a missing user fails");
    assert!(stderr.contains("not found"), "{stderr}");
    let text = std::fs::read_to_string(&pw).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    let port = free_port();
    let conf = dir.file(
        "m.conf",
        &format!("user root\nlistener {port} 127.0.0.1\npassword_file {path}\n"),
    );
    let _mosquitto = ChildBroker::mosquitto(&conf, &[port]);
    assert_eq!(
        pub_status(port, "mqttv311", Some(("ann", "ann-pw")), "t"),
        0
    );
    assert_eq!(
        pub_status(port, "mqttv311", Some(("ben", "ben-pw")), "t"),
        0
    );
    assert_eq!(
        pub_status(port, "mqttv311", Some(("ben", "ann-pw")), "t"),
        5
    );
    assert_eq!(
        pub_status(port, "mqttv311", Some(("cid", "cid-pw")), "t"),
        5
    );
}

/// After a reload, a connected client whose password no longer passes is disconnected at
/// its next packet; a broken file keeps the old rules.
#[test]
fn reload_rechecks_connected_clients() {
    let dir = TempDir::new("reload");
    let config = secured(&dir);
    let pw = config.security.password_file.clone().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let broker = Broker::new(listener, config).unwrap();
    let addr = broker.local_addr().unwrap();
    let reloader = broker.reloader();
    let stopper = broker.stopper();
    let thread = std::thread::spawn(move || broker.run());

    let login = |user: &str, password: &str, version| {
        let mut connect = connect_packet(user, version, true);
        connect.username = Some(user.into());
        connect.password = Some(password.as_bytes().to_vec());
        RawClient::connect_with(addr, connect)
    };
    let (mut six, ack) = login("six", "six-pw", ProtocolVersion::V5);
    assert_eq!(ack.reason, ReasonCode::Success);
    let (mut mosq, _) = login("mosq", "mosq-pw", ProtocolVersion::V3_1_1);

    // A broken file: the old rules stay.
    let good = std::fs::read_to_string(&pw).unwrap();
    std::fs::write(&pw, "this line is not user:hash\n").unwrap();
    reloader.reload().expect("no TLS listener to fail");
    six.ping();
    assert_eq!(
        login("long", "long-pw", ProtocolVersion::V3_1_1).1.reason,
        ReasonCode::Success
    );

    // `six` removed: its next packet ends the connection (DISCONNECT 0x87 under MQTT 5).
    let without_six: String = good
        .lines()
        .filter(|l| !l.starts_with("six:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&pw, without_six).unwrap();
    reloader.reload().expect("no TLS listener to fail");
    six.send(&Packet::PingReq);
    let packets = six.expect_closed();
    assert!(
        packets
            .iter()
            .any(|p| matches!(p, Packet::Disconnect(d) if d.reason == ReasonCode::NotAuthorized)),
        "{packets:?}"
    );
    mosq.ping();
    assert_eq!(
        login("six", "six-pw", ProtocolVersion::V3_1_1).1.reason,
        ReasonCode::NotAuthorized
    );

    stopper.stop();
    let started = std::time::Instant::now();
    while !thread.is_finished() {
        assert!(started.elapsed() < WAIT, "broker stops");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Password hashing runs on each client's reader thread: a burst of slow-to-verify CONNECTs
/// does not hold up routing between clients already connected.
#[test]
fn hashing_does_not_stall_routing() {
    let dir = TempDir::new("burst");
    let mut file = PasswordFile::default();
    let salt = [3u8; 12];
    let iterations = 20_000;
    let mut derived = vec![0u8; 64];
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(b"slow-pw", &salt, iterations, &mut derived);
    file.set(
        "slow",
        Hash::Pbkdf2 {
            iterations,
            salt: salt.to_vec(),
            hash: derived,
        },
    );
    let pw = dir.file("pw", &file.to_text());
    let broker = start_broker_with(config_with(|c| {
        c.security = Security {
            allow_anonymous: Some(true),
            password_file: Some(pw),
            ..Default::default()
        }
    }));
    let (mut sub, _) = RawClient::connect(broker.addr, "sub", ProtocolVersion::V3_1_1, true);
    sub.subscribe(1, &[("t", QoS::AtLeastOnce)]);
    let (mut publisher, _) = RawClient::connect(broker.addr, "pub", ProtocolVersion::V3_1_1, true);
    let addr = broker.addr;
    let started = std::time::Instant::now();
    let burst: Vec<_> = (0..4)
        .map(|n| {
            std::thread::spawn(move || {
                let mut connect =
                    connect_packet(&format!("slow-{n}"), ProtocolVersion::V3_1_1, true);
                connect.username = Some("slow".into());
                connect.password = Some(b"slow-pw".to_vec());
                let (_c, ack) = RawClient::connect_with(addr, connect);
                assert_eq!(ack.reason, ReasonCode::Success);
                started.elapsed()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    let sent = std::time::Instant::now();
    publisher.publish("t", b"m", QoS::AtLeastOnce, false, 1);
    assert_eq!(sub.recv_publish().topic, "t");
    let round_trip = sent.elapsed();
    let slowest = burst.into_iter().map(|t| t.join().unwrap()).max().unwrap();
    // Generous: what matters is that routing did not wait for the hashes.
    assert!(
        round_trip * 2 < slowest,
        "round trip {round_trip:?} while the CONNECT burst took {slowest:?}"
    );
}
