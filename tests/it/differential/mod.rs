//! The differential harness: every exchange in `tests/data/differential/*.txt` is played against
//! a live mosquitto and against our broker, and what each answers is compared byte for byte:
//! which packets come, in what order, and whether the connection is closed after each step.
//!
//! A difference fails the test unless the case is listed in the machine-readable section of
//! `docs/compatibility.md` (between `<!-- differential-allow:begin -->` and `...:end -->`), with
//! its reason. A listed case that no longer differs fails too, so the list stays true.
//!
//! Owns: the script language, one mosquitto process per run, and the comparison. Must not:
//! know what the answers should be: mosquitto's own answers are the expectation.
//!
//! The script language, one step a line (`#` starts a comment):
//! ```text
//! case NAME                 a new exchange; NAME is what docs/compatibility.md lists
//! A send BYTES              client A (any word) sends; it connects on its first send
//! A expect                  read what A is sent until it has been quiet for a while (or closed)
//! A close                   A drops its TCP connection without DISCONNECT
//! wait MS                   sleep
//! ```
//! BYTES is hex digits (spaces allowed) mixed with `"text"` (raw bytes), `'text'` (an MQTT string:
//! a two-byte length, then the text) and `[ ... ]` (what is inside, preceded by its length as a
//! variable byte integer), so a packet reads `30[ 'top@@@@' "payload" ]`. `x*N` repeats the
//! string x N times inside quotes (`"a"*70000`). Every `@@@@` sent is replaced by a tag unique to
//! the case, so cases share one broker without sharing client ids or topics.
//!
//! `DIFFERENTIAL_CASE=part-of-a-name` plays only the matching cases; `DIFFERENTIAL_SHOW=1`
//! also prints what mosquitto answers to each (a copy played with its own tag).

use std::collections::BTreeMap;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use crate::support::start_broker;

mod script;

use script::{load_cases, Case, Step};

/// Silence that ends an `expect` step.
const QUIET: Duration = Duration::from_millis(250);
/// The same, when a case that differed is played again to rule out a slow machine.
const QUIET_RETRY: Duration = Duration::from_millis(1200);
/// Longest an `expect` step reads, whatever keeps arriving.
const STEP_LIMIT: Duration = Duration::from_secs(8);
/// Cases played at once.
const WORKERS: usize = 32;
/// The placeholder replaced by each case's tag.
const PLACEHOLDER: &[u8] = b"@@@@";

/// What one `expect` step saw: each packet's bytes, and whether the connection had closed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    client: String,
    packets: Vec<Vec<u8>>,
    closed: bool,
}

/// The differences mosquitto's answers may show, as listed in docs/compatibility.md.
fn allowed_differences() -> BTreeMap<String, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/compatibility.md");
    let text = fs::read_to_string(path).expect("docs/compatibility.md exists");
    let begin = text
        .find("<!-- differential-allow:begin -->")
        .expect("docs/compatibility.md has the differential-allow section");
    let end = text
        .find("<!-- differential-allow:end -->")
        .expect("the differential-allow section ends");
    let mut allowed = BTreeMap::new();
    for line in text[begin..end].lines() {
        // | `case-name` | why |
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() >= 3 && cells[1].starts_with('`') {
            let name = cells[1].trim_matches('`').to_string();
            assert!(
                !cells[2].is_empty(),
                "docs/compatibility.md: {name} has no reason"
            );
            allowed.insert(name, cells[2].to_string());
        }
    }
    allowed
}

/// mosquitto on an ephemeral port, killed on drop.
struct Mosquitto {
    child: Child,
    addr: SocketAddr,
    _config: ConfigFile,
}

/// mosquitto's configuration file, removed on drop.
struct ConfigFile(std::path::PathBuf);

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

impl Mosquitto {
    fn start() -> Mosquitto {
        // mosquitto 2 without a config listens on localhost:1883 only: a listener line gives it
        // a free port, and anonymous clients must then be allowed explicitly.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let path = std::env::temp_dir().join(format!(
            "differential-mosquitto-{}-{port}.conf",
            std::process::id()
        ));
        fs::write(
            &path,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
        )
        .expect("write mosquitto's config");
        let config = ConfigFile(path.clone());
        let log = std::env::var_os("DIFFERENTIAL_MOSQUITTO_LOG")
            .and_then(|p| fs::File::create(p).ok())
            .map_or_else(Stdio::null, Stdio::from);
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&path)
            .arg("-v")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("run mosquitto (./build.sh test installs it)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let started = Instant::now();
        while TcpStream::connect(addr).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "mosquitto did not start listening on {addr}"
            );
            thread::sleep(Duration::from_millis(20));
        }
        Mosquitto {
            child,
            addr,
            _config: config,
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One client of a case: its socket and what it has read but not yet split into packets.
struct Conn {
    stream: TcpStream,
    pending: Vec<u8>,
    closed: bool,
}

/// Plays `case` against the broker at `addr`; returns what each `expect` saw.
fn play(case: &Case, addr: SocketAddr, tag: &[u8], quiet: Duration) -> Vec<Seen> {
    let mut conns: BTreeMap<String, Conn> = BTreeMap::new();
    let mut seen = Vec::new();
    for step in &case.steps {
        match step {
            Step::Send(client, bytes) => {
                let conn = conns.entry(client.clone()).or_insert_with(|| {
                    let stream = TcpStream::connect(addr).expect("connect");
                    stream.set_nodelay(true).expect("nodelay");
                    Conn {
                        stream,
                        pending: Vec::new(),
                        closed: false,
                    }
                });
                let bytes = replace(bytes, PLACEHOLDER, tag);
                // A broker that has closed may refuse the bytes; what it sent first still counts.
                let _ = conn.stream.write_all(&bytes);
            }
            Step::Expect(client) => {
                let conn = conns
                    .get_mut(client)
                    .unwrap_or_else(|| panic!("{}: {client} expects before sending", case.origin));
                let packets = read_until_quiet(conn, quiet)
                    .into_iter()
                    .map(|p| normalize(replace(&p, tag, PLACEHOLDER)))
                    .collect();
                seen.push(Seen {
                    client: client.clone(),
                    packets,
                    closed: conn.closed,
                });
            }
            Step::Close(client) => {
                if let Some(conn) = conns.remove(client) {
                    let _ = conn.stream.shutdown(Shutdown::Both);
                }
            }
            Step::Wait(d) => thread::sleep(*d),
        }
    }
    seen
}

/// Reads until nothing arrives for `quiet` or the connection ends; returns whole packets.
fn read_until_quiet(conn: &mut Conn, quiet: Duration) -> Vec<Vec<u8>> {
    let started = Instant::now();
    let mut buf = [0u8; 16 * 1024];
    while !conn.closed && started.elapsed() < STEP_LIMIT {
        conn.stream
            .set_read_timeout(Some(quiet))
            .expect("read timeout");
        match conn.stream.read(&mut buf) {
            Ok(0) => conn.closed = true,
            Ok(n) => conn.pending.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                // Quiet: done, unless a packet is still arriving (within the step limit).
                if all_whole(&conn.pending) || started.elapsed() > STEP_LIMIT / 2 {
                    break;
                }
            }
            Err(_) => conn.closed = true,
        }
    }
    let mut packets = Vec::new();
    while let Some(len) = split_packet(&conn.pending) {
        if len == 0 {
            break;
        }
        packets.push(conn.pending.drain(..len).collect());
    }
    if conn.closed && !conn.pending.is_empty() {
        // A torn packet at the end: shown as it is.
        packets.push(std::mem::take(&mut conn.pending));
    }
    packets
}

/// Whether `bytes` is a run of whole packets.
fn all_whole(mut bytes: &[u8]) -> bool {
    loop {
        match split_packet(bytes) {
            Some(0) => return true,
            Some(len) => bytes = &bytes[len..],
            None => return false,
        }
    }
}

/// The length of the first packet in `bytes`: `Some(0)` when `bytes` is empty, `None` while
/// the packet is still arriving, all of `bytes` for a length field that never ends.
fn split_packet(bytes: &[u8]) -> Option<usize> {
    if bytes.is_empty() {
        return Some(0);
    }
    let mut remaining = 0usize;
    for i in 0..4 {
        let &b = bytes.get(1 + i)?;
        remaining |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            let len = 2 + i + remaining;
            return (bytes.len() >= len).then_some(len);
        }
    }
    Some(bytes.len())
}

fn replace(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut out = bytes.to_vec();
    let mut i = 0;
    while i + from.len() <= out.len() {
        if &out[i..i + from.len()] == from {
            out[i..i + from.len()].copy_from_slice(to);
            i += from.len();
        } else {
            i += 1;
        }
    }
    out
}

/// Masks what legitimately varies between runs: assigned client identifiers (`auto-` and 36
/// characters).
fn normalize(mut packet: Vec<u8>) -> Vec<u8> {
    let mut i = 0;
    while i + 5 <= packet.len() {
        if &packet[i..i + 5] == b"auto-" {
            let end = (i + 5 + 36).min(packet.len());
            for b in &mut packet[i + 5..end] {
                *b = b'X';
            }
            i = end;
        } else {
            i += 1;
        }
    }
    packet
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn describe(seen: &[Seen]) -> String {
    let mut out = String::new();
    for s in seen {
        let packets: Vec<String> = s.packets.iter().map(|p| hex(p)).collect();
        out.push_str(&format!(
            "      {} got [{}]{}\n",
            s.client,
            packets.join(", "),
            if s.closed { " then closed" } else { "" }
        ));
    }
    out
}

/// A four-byte tag for case number `n`, unlike any other case's in this run.
fn tag(n: usize, run: u32) -> Vec<u8> {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut v = n + 62 * 62 * (run as usize % 62);
    let mut out = vec![0u8; 4];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[v % 62];
        v /= 62;
    }
    out
}

/// How long a case sleeps in all.
fn waits(case: &Case) -> Duration {
    case.steps
        .iter()
        .map(|step| match step {
            Step::Wait(d) => *d,
            _ => Duration::ZERO,
        })
        .sum()
}

#[test]
fn answers_match_mosquitto() {
    let cases = load_cases();
    assert!(cases.len() >= 300, "only {} exchanges", cases.len());
    let only = std::env::var("DIFFERENTIAL_CASE").ok();
    let allowed = allowed_differences();
    for name in allowed.keys() {
        assert!(
            cases.iter().any(|c| &c.name == name),
            "docs/compatibility.md allows a difference for {name}, which is no case"
        );
    }
    // The slowest cases (those that wait) first, so that they do not finish last.
    let mut order: Vec<usize> = (0..cases.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(waits(&cases[i])));
    let mosquitto = Mosquitto::start();
    let ours = start_broker();
    let run = std::process::id() ^ (Instant::now().elapsed().subsec_nanos());
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, Option<String>)>> = Mutex::new(Vec::new());
    let started = Instant::now();
    thread::scope(|scope| {
        for _ in 0..WORKERS {
            scope.spawn(|| loop {
                let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) else {
                    return;
                };
                let case = &cases[i];
                if only
                    .as_ref()
                    .is_some_and(|o| !case.name.contains(o.as_str()))
                {
                    continue;
                }
                if std::env::var_os("DIFFERENTIAL_SHOW").is_some() {
                    let seen = play(case, mosquitto.addr, &tag(i, run), QUIET);
                    eprintln!("{} (mosquitto):\n{}", case.name, describe(&seen));
                }
                let mut outcome = None;
                // An unexpected outcome (a difference not allowed, or an allowed one that did
                // not show) is played again with a longer silence, to rule out a slow machine.
                let expect_difference = allowed.contains_key(&case.name);
                for (attempt, quiet) in [QUIET, QUIET_RETRY].into_iter().enumerate() {
                    let t = tag(i * 2 + attempt, run);
                    let theirs = play(case, mosquitto.addr, &t, quiet);
                    let t = tag(i * 2 + attempt + cases.len() * 2, run);
                    let mine = play(case, ours.addr, &t, quiet);
                    outcome = (theirs != mine).then(|| {
                        format!(
                            "    mosquitto:\n{}    ours:\n{}",
                            describe(&theirs),
                            describe(&mine)
                        )
                    });
                    if outcome.is_some() == expect_difference {
                        break;
                    }
                }
                results.lock().unwrap().push((i, outcome));
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|r| r.0);
    let mut failures = Vec::new();
    let mut differing = 0;
    for (i, outcome) in &results {
        let case = &cases[*i];
        match (outcome, allowed.contains_key(&case.name)) {
            (Some(diff), false) => {
                differing += 1;
                failures.push(format!("{} ({}) differs:\n{diff}", case.name, case.origin));
            }
            (Some(_), true) => differing += 1,
            (None, true) => failures.push(format!(
                "{} ({}) is listed in docs/compatibility.md but answers as mosquitto does",
                case.name, case.origin
            )),
            (None, false) => {}
        }
    }
    eprintln!(
        "differential: {} exchanges played in {:.1?}, {differing} differ ({} allowed)",
        results.len(),
        started.elapsed(),
        allowed.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} exchanges disagree with mosquitto:\n{}",
        failures.len(),
        results.len(),
        failures.join("\n")
    );
}
