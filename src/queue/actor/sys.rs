//! The router's part in monitoring: it refreshes the gauges only it can count (sessions,
//! subscriptions, queues, retained messages) and publishes the `$SYS/broker/...` topics as
//! retained messages of its own.
//!
//! Owns: `SysClock` (when the next refresh and the next `$SYS` report are due) and the census
//! of the router's state. Must not: run per message (it runs when due, checked at most once per
//! batch of the inbox) or block; the topics' names and texts are `sys::tree`'s.

use std::time::Duration;

use super::*;
use crate::sys::counters::{DropReason, Gauges};
use crate::sys::tree::SysTree;

/// How often the gauges are refreshed for `/metrics` while a metrics listener is open.
const GAUGE_PERIOD: Duration = Duration::from_secs(1);

/// When the router next counts its state and publishes `$SYS`.
pub(crate) struct SysClock {
    /// `sys_interval`; zero: no `$SYS` topics.
    interval: Duration,
    next_report: Option<Instant>,
    next_gauges: Instant,
    tree: SysTree,
    sessions_maximum: u64,
    /// Flushes since the clock was last read: under load it is read once every
    /// `CLOCK_EVERY` flushes, not per flush.
    unchecked: u32,
}

/// Flushes between two reads of the clock while messages keep the router busy. When they do
/// not, the wait for the next message ends at the due time and the clock is read then.
const CLOCK_EVERY: u32 = 64;

impl SysClock {
    pub(crate) fn new(config: &Config, started: Instant) -> Self {
        let interval = config.sys_interval;
        SysClock {
            interval,
            // mosquitto publishes the whole tree as soon as it starts.
            next_report: (!interval.is_zero()).then_some(started),
            next_gauges: started,
            tree: SysTree::new(started),
            sessions_maximum: 0,
            unchecked: 0,
        }
    }

    /// The next time the router has monitoring work, if any.
    pub(crate) fn due(&self, metrics_watched: bool) -> Option<Instant> {
        let gauges = metrics_watched.then_some(self.next_gauges);
        match (self.next_report, gauges) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The earlier of two optional deadlines.
pub(super) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl QueueActor {
    /// When monitoring work is due next (for the loop's wait).
    pub(super) fn sys_due(&self) -> Option<Instant> {
        self.sys.due(self.stats.metrics_watched())
    }

    /// Refreshes the gauges and publishes `$SYS` when due. `woke_by_deadline`: the router's
    /// wait ended at a deadline rather than with a message.
    pub(super) fn sys_tick(&mut self, woke_by_deadline: bool) {
        let Some(due) = self.sys_due() else {
            return;
        };
        if !woke_by_deadline {
            self.sys.unchecked += 1;
            if self.sys.unchecked < CLOCK_EVERY {
                return;
            }
        }
        self.sys.unchecked = 0;
        let now = Instant::now();
        if now < due {
            return;
        }
        self.refresh_gauges();
        self.sys.next_gauges = now + GAUGE_PERIOD;
        if self.sys.next_report.is_some_and(|at| at <= now) {
            // Keep to the rhythm, but never fire twice for one late wake-up.
            self.sys.next_report = Some(now + self.sys.interval);
            let topics = self.sys.tree.update(now, &self.stats);
            for (topic, text) in topics {
                let publish = Publish {
                    dup: false,
                    // As mosquitto: QoS 2, retained.
                    qos: QoS::ExactlyOnce,
                    retain: true,
                    topic: topic.to_string(),
                    packet_id: None,
                    properties: PublishProperties::default(),
                    payload: Arc::from(text.into_bytes()),
                };
                self.route(u32::MAX, Arc::new(Message::new(publish)));
            }
            // No publisher to slow down.
            self.congested.clear();
        }
    }

    /// Counts sessions, subscriptions and what they hold into the shared gauges.
    fn refresh_gauges(&mut self) {
        let mut g = Gauges::default();
        for session in self.sessions.iter().flatten() {
            g.sessions += 1;
            if session.online.is_some() {
                g.clients_connected += 1;
            }
            g.subscriptions += session.filters.len() as u64;
            g.shared_subscriptions += session
                .filters
                .keys()
                .filter(|f| f.starts_with("$share/"))
                .count() as u64;
            let census = session.outbox.census();
            g.inflight += census.inflight;
            g.queued += census.queued;
            g.queued_bytes += census.queued_bytes;
            g.stored_messages += census.inflight + census.queued;
            g.stored_bytes += census.inflight_bytes + census.queued_bytes;
        }
        let (retained, retained_bytes) = self.retained.census();
        g.retained = retained;
        g.stored_messages += retained;
        g.stored_bytes += retained_bytes;
        self.sys.sessions_maximum = self.sys.sessions_maximum.max(g.sessions);
        g.sessions_maximum = self.sys.sessions_maximum;
        self.stats.set_gauges(g);
    }
}

/// Counts a message a session's queue refused: offline sessions drop at their queue limit,
/// online ones only at the hard limit.
pub(super) fn count_drop(stats: &crate::sys::Stats, session: &Session) {
    stats.dropped(if session.online.is_some() {
        DropReason::HardLimit
    } else {
        DropReason::QueueFull
    });
}
