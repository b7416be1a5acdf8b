//! TLS listeners: the mosquitto clients with a CA file, with client certificates (mutual TLS),
//! refusals (a certificate from another CA, a revoked one, none when one is required),
//! handshakes that stall or fail, and certificates reloaded without a restart.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;

use rustls::pki_types::pem::PemObject;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mqtt_broker::broker::Reloader;
use mqtt_broker::config::{Protocol, TlsSettings};
use mqtt_broker::mqtt::{QoS, ReasonCode};
use mqtt_broker::Config;

use crate::mosquitto::Sub;
use crate::support::{config_with, start_broker_with_listeners, TestBroker, WAIT};
use crate::transports::{listener, tls_connect, tls_connect_with, Authority, Certs, Client};

/// Runs mosquitto_pub with `args` against `port` and returns whether it succeeded.
fn mosquitto_pub(port: u16, args: &[&str]) -> bool {
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "localhost", "-p", &port.to_string()])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run mosquitto_pub (./build.sh test installs mosquitto-clients)");
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mosquitto_pub {args:?} did not finish within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Our broker with `config` and a TLS listener of `settings`; returns it, that listener's address
/// and the broker's reloader.
fn tls_broker(config: Config, settings: TlsSettings) -> (TestBroker, SocketAddr, Reloader) {
    let tls = listener(Protocol::Mqtt, Some(settings));
    let (broker, addrs, reloader) = start_broker_with_listeners(config, vec![tls]);
    (broker, addrs[0], reloader)
}

/// A client connected over TLS to `addr` (trusting `ca`, no client certificate) as `client_id`,
/// its CONNACK checked.
fn tls_client(addr: SocketAddr, ca: &Path, client_id: &str) -> Client {
    let stream = tls_connect(addr, ca, None).expect("TLS handshake");
    let mut client = Client::new(stream);
    assert_eq!(client.connect(client_id).reason, ReasonCode::Success);
    client
}

#[test]
fn mosquitto_clients_speak_tls_with_a_ca_file() {
    let certs = Certs::new();
    let (broker, addr, _) = tls_broker(Config::default(), certs.settings(false));
    let port = addr.port();
    let ca = certs.path("ca.pem");
    let mut sub = Sub::start(
        port,
        &[
            "-h",
            "localhost",
            "--cafile",
            &ca,
            "-t",
            "tls/#",
            "-C",
            "2",
            "-q",
            "1",
        ],
    );
    assert!(mosquitto_pub(
        port,
        &["--cafile", &ca, "-t", "tls/a", "-m", "secret", "-q", "1"]
    ));
    // A payload of many TLS records.
    let big = "x".repeat(100_000);
    assert!(mosquitto_pub(
        port,
        &["--cafile", &ca, "-t", "tls/b", "-m", &big, "-q", "0"]
    ));
    let lines = sub.messages(2);
    assert_eq!(lines[0], "secret");
    assert_eq!(lines[1].len(), big.len());
    assert_eq!(sub.wait(), Some(0));
    // Plain MQTT on the TLS port is not understood: a client expecting a CONNACK gets none.
    assert!(!mosquitto_pub(
        port,
        &["-t", "tls/a", "-m", "clear", "-q", "1"]
    ));
    broker.stop();
}

#[test]
fn mutual_tls_accepts_a_certificate_the_ca_signed_and_refuses_others() {
    let certs = Certs::new();
    let (broker, addr, _) = tls_broker(Config::default(), certs.settings(true));
    let port = addr.port();
    let (ca, cert, key) = (
        certs.path("ca.pem"),
        certs.path("client.pem"),
        certs.path("client.key"),
    );
    let mut sub = Sub::start(
        port,
        &[
            "-h",
            "localhost",
            "--cafile",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
            "-t",
            "m/#",
            "-C",
            "1",
        ],
    );
    let with_cert = ["--cafile", &ca, "--cert", &cert, "--key", &key];
    assert!(mosquitto_pub(
        port,
        &[&with_cert[..], &["-t", "m/a", "-m", "hello", "-q", "2"]].concat()
    ));
    assert_eq!(sub.messages(1), ["hello"]);
    assert_eq!(sub.wait(), Some(0));

    // Another CA's certificate, and no certificate at all, are refused in the handshake.
    let (rogue_cert, rogue_key) = (certs.path("rogue.pem"), certs.path("rogue.key"));
    let rogue = ["--cafile", &ca, "--cert", &rogue_cert, "--key", &rogue_key];
    assert!(!mosquitto_pub(
        port,
        &[&rogue[..], &["-t", "m/a", "-m", "x"]].concat()
    ));
    assert!(!mosquitto_pub(
        port,
        &["--cafile", &ca, "-t", "m/a", "-m", "x"]
    ));
    let dir = &certs.dir;
    let refused = tls_connect(
        addr,
        &dir.join("ca.pem"),
        Some((&dir.join("rogue.pem"), &dir.join("rogue.key"))),
    )
    .and_then(|stream| {
        // TLS 1.3: the client finishes first; the refusal arrives as an alert on first read.
        let mut client = Client::new(stream);
        client.stream.write_all(&[0xc0, 0])?;
        client.stream.read(&mut [0; 1])
    });
    assert!(
        refused.is_err(),
        "a rogue certificate must be refused: {refused:?}"
    );
    // The broker carries on for good clients.
    let stream = tls_connect(
        addr,
        &dir.join("ca.pem"),
        Some((&dir.join("client.pem"), &dir.join("client.key"))),
    )
    .expect("a good certificate is accepted");
    let mut client = Client::new(stream);
    assert_eq!(client.connect("good").reason, ReasonCode::Success);
    broker.stop();
}

#[test]
fn a_revoked_client_certificate_is_refused() {
    let certs = Certs::new();
    let ca = Authority::new("crl CA");
    certs.write("ca.pem", &ca.pem());
    certs.write_pair("server", ca.sign("localhost", &["localhost"], 1));
    certs.write_pair("client", ca.sign("kept", &[], 20));
    certs.write_pair("revoked", ca.sign("revoked", &[], 21));
    certs.write("crl.pem", &ca.crl(&[21]));
    let mut settings = certs.settings(true);
    settings.crlfile = Some(certs.dir.join("crl.pem"));
    let (broker, addr, _) = tls_broker(Config::default(), settings);
    let port = addr.port();
    let ca = certs.path("ca.pem");
    let pair = |name: &str| {
        (
            certs.path(&format!("{name}.pem")),
            certs.path(&format!("{name}.key")),
        )
    };
    let (cert, key) = pair("client");
    assert!(mosquitto_pub(
        port,
        &["--cafile", &ca, "--cert", &cert, "--key", &key, "-t", "c", "-m", "1"]
    ));
    let (cert, key) = pair("revoked");
    assert!(!mosquitto_pub(
        port,
        &["--cafile", &ca, "--cert", &cert, "--key", &key, "-t", "c", "-m", "1"]
    ));
    broker.stop();
}

#[test]
fn a_stalled_or_garbled_handshake_is_closed_and_costs_nobody_else() {
    let certs = Certs::new();
    let config = config_with(|c| c.connect_timeout = Duration::from_secs(1));
    let (broker, addr, _) = tls_broker(config, certs.settings(false));
    // One connection says nothing; another sends bytes that are not TLS.
    let mut silent = TcpStream::connect(addr).expect("connect");
    let mut garbled = TcpStream::connect(addr).expect("connect");
    garbled.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("write");
    // Meanwhile a good client connects and is served.
    let mut client = tls_client(addr, &certs.dir.join("ca.pem"), "meanwhile");
    client.subscribe("t", QoS::AtMostOnce);
    for (name, stream) in [("silent", &mut silent), ("garbled", &mut garbled)] {
        stream.set_read_timeout(Some(WAIT)).expect("timeout");
        let started = Instant::now();
        let mut buf = [0; 256];
        // An alert may come first; then the end of the connection.
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        assert!(
            started.elapsed() < WAIT,
            "{name} connection still open after {WAIT:?}"
        );
    }
    client.publish("t", b"still here");
    assert_eq!(&client.recv_publish().payload[..], b"still here");
    broker.stop();
}

#[test]
fn certificates_are_reloaded_without_a_restart() {
    let certs = Certs::new();
    let (broker, addr, reloader) = tls_broker(Config::default(), certs.settings(false));
    let old_ca = certs.dir.join("old-ca.pem");
    std::fs::copy(certs.dir.join("ca.pem"), &old_ca).expect("keep the old CA");
    let mut before = tls_client(addr, &old_ca, "before");

    // Renewal: a certificate from a new CA replaces the files, as certbot would.
    let renewed = Authority::new("renewed CA");
    certs.write("new-ca.pem", &renewed.pem());
    certs.write_pair("server", renewed.sign("localhost", &["localhost"], 3));
    reloader.reload().expect("reload");
    let new_ca = certs.dir.join("new-ca.pem");
    let mut after = tls_client(addr, &new_ca, "after");
    assert!(
        tls_connect(addr, &old_ca, None).is_err(),
        "the old certificate is gone"
    );
    // The connection made before the reload carries on.
    after.subscribe("r", QoS::AtLeastOnce);
    before.publish("r", b"across");
    assert_eq!(&after.recv_publish().payload[..], b"across");

    // Broken files: the reload fails and the current certificate stays.
    certs.write("server.key", "not a key");
    assert!(reloader.reload().is_err());
    assert!(tls_connect(addr, &new_ca, None).is_ok());
    broker.stop();
}

#[test]
fn a_tls12_client_is_served_unless_tls_version_says_tlsv1_3() {
    let certs = Certs::new();
    let (broker, addr, _) = tls_broker(Config::default(), certs.settings(false));
    let tls12 = [&rustls::version::TLS12];
    let stream = tls_connect_with(addr, &certs.dir.join("ca.pem"), None, &tls12);
    let mut client = Client::new(stream.expect("TLS 1.2 handshake"));
    assert_eq!(client.connect("v12").reason, ReasonCode::Success);
    client.subscribe("v12", QoS::AtMostOnce);
    client.publish("v12", b"over 1.2");
    assert_eq!(&client.recv_publish().payload[..], b"over 1.2");
    broker.stop();
}

#[test]
fn tls_version_13_only_refuses_a_tls12_client() {
    let certs = Certs::new();
    let mut settings = certs.settings(false);
    settings.tls_version = Some("tlsv1.3".into());
    let (broker, addr, _) = tls_broker(Config::default(), settings);
    let port = addr.port();
    let ca = certs.path("ca.pem");
    assert!(mosquitto_pub(
        port,
        &[
            "--cafile",
            &ca,
            "--tls-version",
            "tlsv1.3",
            "-t",
            "v",
            "-m",
            "1"
        ]
    ));
    let ca = certs.dir.join("ca.pem");
    let tls12 = [&rustls::version::TLS12];
    assert!(tls_connect_with(addr, &ca, None, &tls12).is_err());
    let tls13 = [&rustls::version::TLS13];
    assert!(tls_connect_with(addr, &ca, None, &tls13).is_ok());
    broker.stop();
}

#[test]
fn capath_and_ciphers_are_honoured() {
    let certs = Certs::new();
    // capath: the CA is one file among others in a directory.
    let capath = certs.dir.join("capath");
    std::fs::create_dir_all(&capath).expect("make capath");
    std::fs::copy(certs.dir.join("ca.pem"), capath.join("a1b2c3d4.0")).expect("copy the CA");
    std::fs::write(capath.join("README"), "not a certificate").expect("write");
    let mut settings = certs.settings(true);
    settings.cafile = None;
    settings.capath = Some(capath);
    // ciphers: one TLS 1.2 suite; TLS 1.3 keeps its own.
    settings.ciphers = Some("ECDHE-ECDSA-AES256-GCM-SHA384".into());
    let (broker, addr, _) = tls_broker(Config::default(), settings);
    let dir = &certs.dir;
    let client = Some((dir.join("client.pem"), dir.join("client.key")));
    let client = client.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
    let stream = tls_connect(addr, &dir.join("ca.pem"), client).expect("capath CA");
    let mut mqtt = Client::new(stream);
    assert_eq!(mqtt.connect("capath").reason, ReasonCode::Success);
    let tls12 = [&rustls::version::TLS12];
    let stream = tls_connect_with(addr, &dir.join("ca.pem"), client, &tls12)
        .expect("TLS 1.2 with the one suite allowed");
    assert_eq!(
        format!(
            "{:?}",
            stream.conn.negotiated_cipher_suite().map(|s| s.suite())
        ),
        "Some(TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384)"
    );
    // A TLS 1.2 client without that suite finds no common one.
    let suite = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256;
    let other = rustls::crypto::ring::cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256;
    for (suites, versions, accepted) in [
        (vec![other], &[&rustls::version::TLS12], false),
        (vec![suite], &[&rustls::version::TLS13], true),
    ] {
        let mut roots = rustls::RootCertStore::empty();
        let ca = std::fs::read(dir.join("ca.pem")).expect("CA");
        for cert in rustls_pemfile_certs(&ca) {
            roots.add(cert).expect("CA certificate");
        }
        let provider = rustls::crypto::CryptoProvider {
            cipher_suites: suites,
            ..rustls::crypto::ring::default_provider()
        };
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let mut conn =
            rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("client");
        let mut sock = TcpStream::connect(addr).expect("connect");
        sock.set_read_timeout(Some(WAIT)).expect("timeout");
        let mut result = Ok((0, 0));
        while conn.is_handshaking() && result.is_ok() {
            result = conn.complete_io(&mut sock);
        }
        // Without a client certificate the handshake itself may still complete in TLS 1.3
        // (the server refuses after it); what matters here is whether a suite was agreed.
        let agreed = conn.negotiated_cipher_suite().is_some();
        assert_eq!(agreed, accepted, "suites {versions:?}: {result:?}");
    }
    broker.stop();
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .expect("PEM certificates")
}

#[test]
fn the_broker_ends_a_tls_connection_with_close_notify() {
    let certs = Certs::new();
    let (broker, addr, _) = tls_broker(Config::default(), certs.settings(false));
    let mut client = tls_client(addr, &certs.dir.join("ca.pem"), "bye");
    client.send(&mqtt_broker::mqtt::Packet::Disconnect(Default::default()));
    // rustls reads a clean close (close_notify, then EOF) as 0; a bare TCP close would be
    // UnexpectedEof.
    let mut buf = [0; 16];
    let n = client.stream.read(&mut buf).expect("a clean TLS close");
    assert_eq!(n, 0);
    broker.stop();
}

#[test]
fn many_small_records_in_one_read_all_arrive() {
    let certs = Certs::new();
    let (broker, addr, _) = tls_broker(Config::default(), certs.settings(false));
    let ca = certs.dir.join("ca.pem");
    let mut subscriber = tls_client(addr, &ca, "small-sub");
    subscriber.subscribe("small", QoS::AtMostOnce);
    let mut publisher = tls_connect(addr, &ca, None).expect("handshake");
    let mut bytes = Vec::new();
    mqtt_broker::mqtt::Packet::Connect(Box::new(crate::support::connect_packet(
        "small-pub",
        mqtt_broker::mqtt::ProtocolVersion::V3_1_1,
        true,
    )))
    .encode(mqtt_broker::mqtt::ProtocolVersion::V3_1_1, &mut bytes);
    publisher.write_all(&bytes).expect("CONNECT");
    // Records of 16 KiB (a large PUBLISH each) then 400 PUBLISHes of 100 bytes, each its own
    // record, all sent with one write: plaintext arrives faster than the broker reads it, and
    // some reads hold the end of a large record and small ones after it.
    publisher.conn.set_buffer_limit(None);
    let large = vec![b'L'; 16_000];
    for _ in 0..3 {
        let packet = crate::support::publish_packet("small", &large, QoS::AtMostOnce, false, 0);
        let mut one = Vec::new();
        packet.encode(mqtt_broker::mqtt::ProtocolVersion::V3_1_1, &mut one);
        publisher.conn.writer().write_all(&one).expect("records");
    }
    for n in 0..400u32 {
        let payload = format!("{n:0100}");
        let packet =
            crate::support::publish_packet("small", payload.as_bytes(), QoS::AtMostOnce, false, 0);
        let mut one = Vec::new();
        packet.encode(mqtt_broker::mqtt::ProtocolVersion::V3_1_1, &mut one);
        publisher.conn.writer().write_all(&one).expect("a record");
    }
    while publisher.conn.wants_write() {
        publisher
            .conn
            .write_tls(&mut publisher.sock)
            .expect("send the records");
    }
    for _ in 0..3 {
        assert_eq!(subscriber.recv_publish().payload[..], large[..]);
    }
    for n in 0..400u32 {
        let publish = subscriber.recv_publish();
        assert_eq!(publish.payload[..], *format!("{n:0100}").as_bytes());
    }
    broker.stop();
}
