//! Drives the real mosquitto_sub and mosquitto_pub against a test broker. Every child is
//! bounded in time and killed on drop.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::support::WAIT;

/// A running mosquitto_sub whose stdout is read line by line.
pub struct Sub {
    child: Child,
    lines: Receiver<String>,
    /// Message lines seen while waiting for the SUBACK (a resumed session's queue).
    early: VecDeque<String>,
}

impl Sub {
    /// Starts `mosquitto_sub -d ARGS` and waits until the broker has acknowledged the
    /// subscription (the SUBACK debug line), so a publish after this is seen.
    pub fn start(port: u16, args: &[&str]) -> Sub {
        let mut sub = Sub::spawn(port, args);
        loop {
            let line = sub.next_line();
            if line.contains("SUBACK") {
                return sub;
            }
            if !is_debug(&line) {
                sub.early.push_back(line);
            }
        }
    }

    /// Starts `mosquitto_sub -d ARGS` without waiting for its SUBACK: a resumed session may
    /// receive its queued messages, and exit after `-C`, before the SUBACK arrives.
    pub fn spawn(port: u16, args: &[&str]) -> Sub {
        // stdbuf: mosquitto_sub block-buffers a piped stdout; lines must arrive as printed.
        let mut child = Command::new("stdbuf")
            .args([
                "-oL",
                "mosquitto_sub",
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-d",
            ])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run mosquitto_sub (./build.sh test installs mosquitto-clients)");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = crossbeam_channel::unbounded();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Sub {
            child,
            lines,
            early: VecDeque::new(),
        }
    }

    fn next_line(&mut self) -> String {
        match self.lines.recv_timeout(WAIT) {
            Ok(line) => line,
            Err(_) => panic!("mosquitto_sub printed nothing more within {WAIT:?}"),
        }
    }

    /// The next `n` message lines (debug lines skipped).
    pub fn messages(&mut self, n: usize) -> Vec<String> {
        let mut found = Vec::with_capacity(n);
        while found.len() < n {
            if let Some(line) = self.early.pop_front() {
                found.push(line);
                continue;
            }
            let line = self.next_line();
            if !is_debug(&line) {
                found.push(line);
            }
        }
        found
    }

    /// Waits for mosquitto_sub to exit by itself (after -C or -E) and returns its status code.
    pub fn wait(mut self) -> Option<i32> {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            thread::sleep(Duration::from_millis(10));
        }
        panic!("mosquitto_sub did not exit within {WAIT:?}");
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_debug(line: &str) -> bool {
    line.starts_with("Client ") || line.starts_with("Subscribed (mid")
}

/// Runs `mosquitto_pub ARGS` to completion and asserts it succeeded.
pub fn publish(port: u16, args: &[&str]) {
    let mut child = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run mosquitto_pub (./build.sh test installs mosquitto-clients)");
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            assert!(status.success(), "mosquitto_pub {args:?} failed: {status}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("mosquitto_pub {args:?} did not finish within {WAIT:?}");
        }
        thread::sleep(Duration::from_millis(5));
    }
}
