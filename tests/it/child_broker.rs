//! The real broker binary as a child process, so that a test can SIGKILL it and start it
//! again on the same persistence directory.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// The broker binary cargo built for these tests, or `MQTT_BROKER_BIN` (a release build, say).
fn broker_binary() -> String {
    std::env::var("MQTT_BROKER_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_mqtt-broker").into())
}

/// A running broker process; killed (SIGKILL) on drop.
pub struct ChildBroker {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

/// A fresh directory under the system's temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "mqtt-it-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port that was free a moment ago, so that restarts can listen on the same one.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("an ephemeral port")
        .port()
}

fn command(dir: &Path, port: u16, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut command = Command::new(broker_binary());
    command
        .args(args)
        .env("SOCKET_ADDR", format!("127.0.0.1:{port}"))
        .env("PERSISTENCE_DIR", dir)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    command
}

impl ChildBroker {
    /// Starts the broker on `port` with its store in `dir` and waits until it listens.
    pub fn start(dir: &Path, port: u16, env: &[(&str, &str)]) -> ChildBroker {
        Self::start_with_args(dir, port, env, &[])
    }

    pub fn start_with_args(
        dir: &Path,
        port: u16,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> ChildBroker {
        let mut child = command(dir, port, env, args)
            .spawn()
            .expect("start the broker binary");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let lines = Arc::clone(&log);
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = ready_tx.send(());
                }
                lines.lock().expect("log lock").push(line);
            }
        });
        // Recovery of a large store takes a while on a loaded machine.
        if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the broker did not start listening: {:?}",
                log.lock().expect("log lock")
            );
        }
        ChildBroker {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
        }
    }

    /// SIGKILL: no chance to write anything more.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the broker did not stop on SIGTERM"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
    }
}

impl Drop for ChildBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the broker expecting it to refuse to start; returns its exit status and its log.
pub fn start_expecting_failure(
    dir: &Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> (ExitStatus, String) {
    let mut child = command(dir, free_port(), env, args)
        .spawn()
        .expect("start the broker binary");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut log = String::new();
            if let Some(stderr) = child.stderr.take() {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
            return (status, log);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the broker kept running on a damaged store");
        }
        thread::sleep(Duration::from_millis(20));
    }
}
