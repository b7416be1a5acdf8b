//! Helpers for the authentication tests: temporary directories, free ports, the real
//! mosquitto broker and our binary run as child processes (killed on drop), and
//! mosquitto_pub/mosquitto_sub runs reduced to their exit status.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::WAIT;

/// A directory under the system's temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mqtt-it-{name}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }

    /// Writes `text` to `name` in this directory and returns its path.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        fs::write(&path, text).expect("write a test file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A port that was free a moment ago (for child processes that bind it themselves).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// A broker run as a child process; killed on drop.
pub struct ChildBroker {
    pub child: Child,
}

impl ChildBroker {
    /// Starts `program -c conf` and waits until every port in `ports` accepts connections.
    pub fn start(program: &str, conf: &Path, ports: &[u16]) -> ChildBroker {
        let child = Command::new(program)
            .arg("-c")
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("run {program}: {e}"));
        let mut broker = ChildBroker { child };
        for &port in ports {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let started = Instant::now();
            while TcpStream::connect(addr).is_err() {
                if let Ok(Some(status)) = broker.child.try_wait() {
                    panic!("{program} exited early: {status}");
                }
                assert!(
                    started.elapsed() < WAIT,
                    "{program} does not listen on {port}"
                );
                thread::sleep(Duration::from_millis(20));
            }
        }
        broker
    }

    pub fn ours(conf: &Path, ports: &[u16]) -> ChildBroker {
        ChildBroker::start(env!("CARGO_BIN_EXE_mqtt-broker"), conf, ports)
    }

    pub fn mosquitto(conf: &Path, ports: &[u16]) -> ChildBroker {
        ChildBroker::start("mosquitto", conf, ports)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command to completion (killed after `WAIT`) and returns its exit code and stderr.
pub fn run(program: &str, args: &[&str]) -> (i32, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            let output = child.wait_with_output().expect("collect output");
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            return (status.code().unwrap_or(-1), stderr);
        }
        if started.elapsed() > WAIT * 2 {
            let _ = child.kill();
            panic!("{program} {args:?} did not finish in time");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// mosquitto_pub's exit code for one message (0: sent; 5 / 135: refused at CONNECT).
pub fn pub_status(port: u16, version: &str, creds: Option<(&str, &str)>, topic: &str) -> i32 {
    let port = port.to_string();
    let mut args = vec!["-h", "127.0.0.1", "-p", &port, "-V", version, "-t", topic];
    args.extend(["-m", "m", "-q", "1"]);
    if let Some((user, password)) = creds {
        args.extend(["-u", user, "-P", password]);
    }
    run("mosquitto_pub", &args).0
}

/// Whether a message published by `publisher` reaches `subscriber` on `topic` (both
/// `(user, password)`), judged by mosquitto_sub waiting two seconds for one message.
pub fn delivered(
    port: u16,
    subscriber: Option<(&str, &str)>,
    publisher: Option<(&str, &str)>,
    topic: &str,
) -> bool {
    let port_text = port.to_string();
    // A wildcard filter: mosquitto 2.0 grants every subscription and checks each message;
    // we refuse a plain filter the ACL denies, so compare what is delivered.
    let filter = format!("{}/#", topic.split('/').next().unwrap_or(""));
    let mut args = vec![
        "-h",
        "127.0.0.1",
        "-p",
        &port_text,
        "-t",
        &filter,
        "-C",
        "1",
    ];
    args.extend(["-W", "3", "-q", "1"]);
    if let Some((user, password)) = subscriber {
        args.extend(["-u", user, "-P", password]);
    }
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let sub = thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run("mosquitto_sub", &args).0
    });
    // Give the subscription time to be made before publishing.
    thread::sleep(Duration::from_millis(700));
    pub_status(port, "mqttv311", publisher, topic);
    sub.join().expect("mosquitto_sub thread") == 0
}
