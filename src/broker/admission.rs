//! Who gets in: the listen backlog, the connection limit, the limit on connections still in
//! their handshake, and the deadline for a whole CONNECT.
//!
//! Owns: raising a listener's backlog to the system maximum, the accept-time decision for each
//! socket (`Admission::admit`: refuse at the connection limit, make room among pending
//! handshakes by closing the oldest), the handshake reaper (closes connections whose CONNECT
//! has not arrived within `connect_timeout`, however it trickles), and their log lines, one per
//! interval with counts. Must not: read or write MQTT, or block the accept loop for long (all
//! it does per socket is a map lookup under a short lock).

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, warn};

use super::{Registered, Registry};
use crate::config::Config;

/// Repeated conditions are logged at most once per this interval, with counts.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// A repeated condition has ended once it has not happened for this long: its summary is due.
const QUIET: Duration = Duration::from_secs(2);
/// How often the reaper looks for handshakes past their deadline.
const REAP_EVERY: Duration = Duration::from_millis(200);
/// The backlog asked for when the system's maximum cannot be read (the kernel caps it anyway).
const FALLBACK_BACKLOG: i32 = 4096;

/// Re-listens on `listener` with the largest backlog the system allows (std binds with 128):
/// a burst of connections then waits in the kernel instead of being dropped and retried a
/// second later by each client's SYN retransmit.
pub fn raise_backlog(listener: &TcpListener) {
    let backlog = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(FALLBACK_BACKLOG);
    if let Err(e) = socket2::SockRef::from(listener).listen(backlog) {
        warn!("could not raise the listen backlog to {backlog}: {e}");
    }
}

/// A condition that may repeat many times a second, logged when it starts, then once per
/// `LOG_EVERY` with the count since the last line, and once more when it has stopped.
#[derive(Debug, Default)]
pub struct IntervalLog {
    since_line: u64,
    total: u64,
    last_line: Option<Instant>,
    last_event: Option<Instant>,
}

impl IntervalLog {
    /// Counts one occurrence; returns `(since the last line, in all)` when a line is due.
    pub fn note(&mut self, now: Instant) -> Option<(u64, u64)> {
        self.since_line += 1;
        self.total += 1;
        self.last_event = Some(now);
        let due = self
            .last_line
            .is_none_or(|last| now.saturating_duration_since(last) >= LOG_EVERY);
        if !due {
            return None;
        }
        self.last_line = Some(now);
        Some((std::mem::take(&mut self.since_line), self.total))
    }

    /// The summary of an episode that has stopped (nothing for `QUIET`) with occurrences not
    /// yet told: `(since the last line, in all)`. The next occurrence starts a new episode.
    pub fn ended(&mut self, now: Instant) -> Option<(u64, u64)> {
        let quiet = self
            .last_event
            .is_some_and(|last| now.saturating_duration_since(last) >= QUIET);
        if self.since_line == 0 || !quiet {
            return None;
        }
        self.last_line = None;
        Some((std::mem::take(&mut self.since_line), self.total))
    }
}

/// The accept loop's log of refusals and evictions, shared with the reaper, which writes
/// their summaries once they stop.
#[derive(Debug, Default)]
pub struct AdmissionLog {
    refused: IntervalLog,
    evicted: IntervalLog,
}

/// The accept loop's decisions.
pub struct Admission {
    /// This listener's own `max_connections` (None: only the broker-wide limit).
    own_limit: Option<usize>,
    max_pending: usize,
}

impl Admission {
    pub fn new(config: &Config, own_limit: Option<usize>) -> Self {
        Admission {
            own_limit,
            max_pending: config.pending_handshake_limit(),
        }
    }

    /// Whether a socket just accepted from `peer` may start a client. At the connection limit
    /// it is refused (the caller drops it: closed without CONNACK, as mosquitto does at
    /// max_connections). At the handshake limit the oldest pending handshake is closed.
    ///
    /// `held` counts the connections of every listener, `max_connections` is the broker's
    /// limit; `registry` is this listener's.
    pub fn admit(
        &mut self,
        registry: &Registry,
        held: usize,
        max_connections: usize,
        peer: SocketAddr,
    ) -> bool {
        let over_own = self.own_limit.is_some_and(|own| registry.len() >= own);
        if held >= max_connections || over_own {
            let line = registry.admission_log.lock().refused.note(Instant::now());
            if let Some((recent, total)) = line {
                warn!(
                    "{peer}: refused, {held} connections held already (max_connections \
                     {max_connections}, this listener's {:?}); {recent} refused since the \
                     last line, {total} in all",
                    self.own_limit
                );
            }
            return false;
        }
        if registry.close_oldest_pending_over(self.max_pending) {
            let line = registry.admission_log.lock().evicted.note(Instant::now());
            if let Some((recent, total)) = line {
                warn!(
                    "{} connections are in their handshake (MAX_PENDING_HANDSHAKES): the \
                     oldest are closed to make room; {recent} closed since the last line, \
                     {total} in all",
                    self.max_pending
                );
            }
        }
        true
    }
}

/// Closes, every `REAP_EVERY` until `stopping`, connections whose CONNECT has not arrived
/// within `timeout` of their accept. Runs on a thread of its own.
pub fn reap_handshakes(
    registries: Vec<Arc<Registry>>,
    timeout: Duration,
    stopping: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut reaped = IntervalLog::default();
    while !stopping.load(Ordering::Acquire) {
        std::thread::sleep(REAP_EVERY);
        let now = Instant::now();
        let closed: usize = registries
            .iter()
            .map(|registry| registry.close_pending_older_than(timeout, now))
            .sum();
        for _ in 0..closed {
            if let Some((recent, total)) = reaped.note(now) {
                warn!(
                    "closed connections that sent no complete CONNECT within {timeout:?}: \
                     {recent} since the last line, {total} in all"
                );
            }
        }
        if let Some((recent, total)) = reaped.ended(now) {
            warn!(
                "stopped closing late handshakes: {recent} more since the last line, {total} \
                 in all"
            );
        }
        for registry in &registries {
            let (refused, evicted) = {
                let mut log = registry.admission_log.lock();
                (log.refused.ended(now), log.evicted.ended(now))
            };
            if let Some((recent, total)) = refused {
                warn!(
                    "stopped refusing connections: {recent} more since the last line, {total} \
                     in all"
                );
            }
            if let Some((recent, total)) = evicted {
                warn!(
                    "stopped closing the oldest handshakes for room: {recent} more since the \
                     last line, {total} in all"
                );
            }
        }
    }
    debug!("handshake reaper stopped");
}

/// Connections accepted whose CONNECT has not been read yet, oldest (lowest id) first.
#[derive(Default)]
pub struct Pending {
    since: BTreeMap<u64, Instant>,
}

impl Pending {
    pub fn insert(&mut self, id: u64) {
        self.since.insert(id, Instant::now());
    }

    pub fn remove(&mut self, id: u64) {
        self.since.remove(&id);
    }
}

impl Registry {
    /// If `limit` or more connections are in their handshake, closes the oldest; true if it
    /// did.
    fn close_oldest_pending_over(&self, limit: usize) -> bool {
        let oldest = {
            let mut pending = self.pending.lock();
            if pending.since.len() < limit {
                return false;
            }
            pending.since.pop_first().map(|(id, _)| id)
        };
        let socket = oldest.and_then(|id| self.sockets.lock().get(&id).cloned());
        if let Some(socket) = socket {
            socket.shutdown();
        }
        true
    }

    /// Closes the handshakes older than `timeout`; how many.
    fn close_pending_older_than(&self, timeout: Duration, now: Instant) -> usize {
        let mut overdue = Vec::new();
        {
            let mut pending = self.pending.lock();
            while let Some((&id, &since)) = pending.since.first_key_value() {
                if now.saturating_duration_since(since) < timeout {
                    break;
                }
                pending.since.pop_first();
                overdue.push(id);
            }
        }
        let sockets = self.sockets.lock();
        let sockets: Vec<_> = overdue
            .iter()
            .filter_map(|id| sockets.get(id).cloned())
            .collect();
        for socket in &sockets {
            socket.shutdown();
        }
        overdue.len()
    }
}

impl Registered<'_> {
    /// The CONNECT has been read: this connection no longer counts as a pending handshake.
    pub fn connect_received(&self) {
        self.registry.pending.lock().remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_log_tells_the_start_then_once_per_interval() {
        let t0 = Instant::now();
        let mut log = IntervalLog::default();
        assert_eq!(log.note(t0), Some((1, 1)));
        for n in 1..1000 {
            assert_eq!(log.note(t0 + Duration::from_millis(n)), None);
        }
        assert_eq!(log.note(t0 + LOG_EVERY), Some((1000, 1001)));
        assert_eq!(log.ended(t0 + LOG_EVERY + Duration::from_millis(10)), None);
        for n in 1..=5 {
            assert_eq!(log.note(t0 + LOG_EVERY + Duration::from_millis(n)), None);
        }
        assert_eq!(log.ended(t0 + LOG_EVERY + QUIET * 2), Some((5, 1006)));
        assert_eq!(log.ended(t0 + LOG_EVERY + QUIET * 3), None, "told once");
        assert_eq!(
            log.note(t0 + LOG_EVERY * 2),
            Some((1, 1007)),
            "a new episode starts with a line"
        );
    }
}
