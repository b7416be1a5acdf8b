//! `mqtt-broker -c FILE` run as the real binary: errors name file, line and option and exit
//! non-zero without listening; a mosquitto.conf with several listeners, a password file, an
//! ACL file and limits starts ours unchanged, and mosquitto_pub/mosquitto_sub see the same
//! decisions as against mosquitto with the same files; SIGHUP reloads.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::auth_support::{delivered, free_port, pub_status, run, ChildBroker, TempDir};

const OURS: &str = env!("CARGO_BIN_EXE_mqtt-broker");

#[test]
fn errors_name_file_line_and_option_and_nothing_starts() {
    let dir = TempDir::new("conf-errors");
    let port = free_port();
    let bad_include = dir.0.join("conf.d");
    std::fs::create_dir_all(&bad_include).unwrap();
    std::fs::write(bad_include.join("b.conf"), "\n\nmax_keepalive soon\n").unwrap();
    let missing = dir.0.join("missing.conf");
    // (file contents, what stderr must say)
    let cases: Vec<(String, String)> = vec![
        (
            format!("listener {port} 127.0.0.1\nno_such_option 1\n"),
            "c.conf:2: no_such_option: unknown option".into(),
        ),
        (
            format!("# comment\nlistener {port} 127.0.0.1\nmax_connections lots\n"),
            "c.conf:3: max_connections: \"lots\" is not a valid number".into(),
        ),
        (
            format!("listener {port} 127.0.0.1\nconnection to-cloud\naddress 10.0.0.1\n"),
            "c.conf:2: connection: bridge to-cloud: no topic".into(),
        ),
        (
            format!(
                "listener {port} 127.0.0.1\nconnection c\naddress 10.0.0.1\ntopic # sideways\n"
            ),
            "c.conf:4: topic: \"sideways\" is not out, in or both".into(),
        ),
        (
            format!(
                "listener {port} 127.0.0.1\ninclude_dir {}\n",
                bad_include.display()
            ),
            "b.conf:3: max_keepalive: \"soon\" is not a valid number".into(),
        ),
        (
            format!(
                "listener {port} 127.0.0.1\npassword_file {}\n",
                missing.display()
            ),
            "missing.conf".into(),
        ),
        (
            format!("listener {port} 127.0.0.1\ncertfile /no/c.pem\nkeyfile /no/k.pem\n"),
            "/no/c.pem".into(),
        ),
    ];
    for (text, expected) in cases {
        let conf = dir.file("c.conf", &text);
        let (code, stderr) = run(OURS, &["-c", conf.to_str().unwrap()]);
        assert_ne!(code, 0, "{text:?} must fail");
        assert!(stderr.contains(&expected), "{text:?}: stderr {stderr:?}");
        // Nothing half-started: the port was never listened on (the process has exited).
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err());
    }
    let (code, stderr) = run(OURS, &["-c", missing.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("cannot read the configuration file"),
        "{stderr}"
    );
}

/// The "done when": one mosquitto.conf, password file and ACL file, used unchanged by
/// mosquitto and by us; the same clients get the same answers.
#[test]
fn same_files_same_decisions_as_mosquitto() {
    let dir = TempDir::new("done-when");
    let pw = dir.0.join("pw");
    let (code, stderr) = run(
        "mosquitto_passwd",
        &["-c", "-b", pw.to_str().unwrap(), "alice", "alice-pw"],
    );
    assert_eq!(code, 0, "{stderr}");
    let (code, stderr) = run(
        OURS,
        &["passwd", "-b", pw.to_str().unwrap(), "bob", "bob-pw"],
    );
    assert_eq!(code, 0, "{stderr}");
    let acl = dir.file(
        "acl",
        "topic read public/#\n\
         \n\
         user alice\n\
         topic readwrite public/#\n\
         topic readwrite alice/#\n\
         \n\
         user bob\n\
         topic read alice/#\n\
         topic read public/#\n\
         topic deny public/secret\n\
         pattern write devices/%u/#\n",
    );
    let conf = |plain: u16, anon: u16| {
        format!(
            "# A typical mosquitto 2 setup\n\
             user root\n\
             per_listener_settings false\n\
             allow_anonymous true\n\
             password_file {pw}\n\
             acl_file {acl}\n\
             max_inflight_messages 20\n\
             max_queued_messages 1000\n\
             max_packet_size 65536\n\
             max_keepalive 300\n\
             persistent_client_expiration 2d\n\
             \n\
             listener {plain} 127.0.0.1\n\
             max_connections 100\n\
             \n\
             listener {anon} 127.0.0.1\n\
             max_connections -1\n",
            pw = pw.display(),
            acl = acl.display()
        )
    };
    let (ours_a, ours_b, theirs_a, theirs_b) = (free_port(), free_port(), free_port(), free_port());
    let ours_conf = dir.file("ours.conf", &conf(ours_a, ours_b));
    let theirs_conf = dir.file("theirs.conf", &conf(theirs_a, theirs_b));
    let _ours = ChildBroker::ours(&ours_conf, &[ours_a, ours_b]);
    let _theirs = ChildBroker::mosquitto(&theirs_conf, &[theirs_a, theirs_b]);

    let alice = Some(("alice", "alice-pw"));
    let bob = Some(("bob", "bob-pw"));
    let wrong = Some(("alice", "bob-pw"));
    // CONNECT decisions on both listeners, both protocol versions.
    for version in ["mqttv311", "mqttv5"] {
        for creds in [alice, bob, wrong, Some(("carol", "x")), None] {
            for (ours, theirs) in [(ours_a, theirs_a), (ours_b, theirs_b)] {
                assert_eq!(
                    pub_status(ours, version, creds, "public/x"),
                    pub_status(theirs, version, creds, "public/x"),
                    "CONNECT {version} {creds:?}"
                );
            }
        }
    }
    // Delivery decisions: (subscriber, publisher, topic).
    let cases = [
        (None, alice, "public/news"),
        (bob, alice, "public/news"),
        (bob, alice, "public/secret"),
        (bob, alice, "alice/diary"),
        (None, alice, "alice/diary"),
        (alice, bob, "devices/bob/t"),
        (alice, None, "public/news"),
    ];
    for (subscriber, publisher, topic) in cases {
        let (theirs, ours) = std::thread::scope(|s| {
            let theirs = s.spawn(|| delivered(theirs_a, subscriber, publisher, topic));
            let ours = delivered(ours_a, subscriber, publisher, topic);
            (theirs.join().expect("mosquitto side"), ours)
        });
        assert_eq!(ours, theirs, "{subscriber:?} <- {publisher:?} on {topic}");
    }
}

#[test]
fn sighup_reloads_the_password_file() {
    let dir = TempDir::new("sighup");
    let pw = dir.0.join("pw");
    let pw_text = pw.to_str().unwrap();
    assert_eq!(
        run(OURS, &["passwd", "-c", "-b", pw_text, "old", "old-pw"]).0,
        0
    );
    let port = free_port();
    let conf = dir.file(
        "c.conf",
        &format!("listener {port} 127.0.0.1\npassword_file {pw_text}\n"),
    );
    let broker = ChildBroker::ours(&conf, &[port]);
    assert_eq!(
        pub_status(port, "mqttv311", Some(("old", "old-pw")), "t"),
        0
    );
    assert_eq!(
        pub_status(port, "mqttv311", Some(("new", "new-pw")), "t"),
        5
    );
    assert_eq!(run(OURS, &["passwd", "-b", pw_text, "new", "new-pw"]).0, 0);
    assert_eq!(run("kill", &["-HUP", &broker.pid().to_string()]).0, 0);
    let started = std::time::Instant::now();
    while pub_status(port, "mqttv311", Some(("new", "new-pw")), "t") != 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "reload took effect"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A broken file on reload keeps the old rules.
    std::fs::write(&pw, "garbage\n").unwrap();
    assert_eq!(run("kill", &["-HUP", &broker.pid().to_string()]).0, 0);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        pub_status(port, "mqttv311", Some(("new", "new-pw")), "t"),
        0
    );
    assert_eq!(pub_status(port, "mqttv311", None, "t"), 5);
}

#[test]
fn log_dest_file_and_log_type() {
    let dir = TempDir::new("log-dest");
    let log = dir.0.join("broker.log");
    let port = free_port();
    let conf = dir.file(
        "c.conf",
        &format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest file {}\nlog_type debug\n",
            log.display()
        ),
    );
    let broker = ChildBroker::ours(&conf, &[port]);
    assert_eq!(pub_status(port, "mqttv311", None, "t"), 0);
    drop(broker);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&format!("listening on 127.0.0.1:{port}")),
        "{text}"
    );
    // log_type debug: every packet is logged.
    assert!(text.contains("received PUBLISH"), "{text}");
}

/// `per_listener_settings true`: each listener's own security, compared with mosquitto.
#[test]
fn per_listener_settings_decide_as_mosquitto() {
    let dir = TempDir::new("per-listener-diff");
    let pw = dir.0.join("pw");
    let (code, stderr) = run(
        "mosquitto_passwd",
        &["-c", "-b", pw.to_str().unwrap(), "alice", "alice-pw"],
    );
    assert_eq!(code, 0, "{stderr}");
    let acl = dir.file(
        "acl",
        "topic write open/#\nuser alice\ntopic write closed/#\n",
    );
    let conf = |open: u16, closed: u16| {
        format!(
            "user root\n\
             per_listener_settings true\n\
             listener {open} 127.0.0.1\n\
             allow_anonymous true\n\
             acl_file {acl}\n\
             listener {closed} 127.0.0.1\n\
             password_file {pw}\n\
             acl_file {acl}\n",
            pw = pw.display(),
            acl = acl.display()
        )
    };
    let ports = [free_port(), free_port(), free_port(), free_port()];
    let ours_conf = dir.file("ours.conf", &conf(ports[0], ports[1]));
    let theirs_conf = dir.file("theirs.conf", &conf(ports[2], ports[3]));
    let _ours = ChildBroker::ours(&ours_conf, &ports[..2]);
    let _theirs = ChildBroker::mosquitto(&theirs_conf, &ports[2..]);
    for version in ["mqttv311", "mqttv5"] {
        for creds in [Some(("alice", "alice-pw")), Some(("alice", "x")), None] {
            for topic in ["open/t", "closed/t"] {
                for listener in 0..2 {
                    assert_eq!(
                        pub_status(ports[listener], version, creds, topic),
                        pub_status(ports[listener + 2], version, creds, topic),
                        "listener {listener} {version} {creds:?} {topic}"
                    );
                }
            }
        }
    }
}
