//! The publish and drain phases of a traffic run: polling the clients' counters, sampling the
//! broker, and deciding when each phase is over.
//!
//! Owns: the phase ends (duration or count reached, every owed copy arrived, no progress for the
//! stall time, the hard deadline), writing off QoS 0 copies that will not come, and the broker's
//! peak RSS and threads. Must not: touch sockets, start or end clients, or judge the result.

use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use mqtt_broker::mqtt::QoS;

use crate::options::Options;
use crate::procstat::Peak;
use crate::run::Traffic;
use crate::scenario::{Plan, Stop};
use crate::traffic::{Setup, TrafficClient};

/// How often the run looks at its counters.
const POLL: Duration = Duration::from_millis(20);
/// How often the broker's RSS is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// At QoS 0 a broker may drop: this long without a delivery ends the drain, and while
/// publishing it writes off what is still counted as owed (the last messages dropped leave no
/// gap behind them for a subscriber to see).
const QOS0_GIVE_UP: Duration = Duration::from_secs(1);

/// What the publish and drain phases saw.
#[derive(Default)]
pub struct Phases {
    pub stalled: bool,
    pub timed_out: bool,
    pub publish_secs: f64,
    pub peak: Peak,
}

fn totals(clients: &[TrafficClient]) -> (u64, u64, u64) {
    clients.iter().fold((0, 0, 0), |(s, a, d), c| {
        (
            s + c.counters.sent.load(Ordering::Relaxed),
            a + c.counters.acked.load(Ordering::Relaxed),
            d + c.counters.delivered.load(Ordering::Relaxed),
        )
    })
}

/// Watches the counters of a running scenario.
struct Watcher<'a> {
    options: &'a Options,
    clients: &'a [TrafficClient],
    setup: &'a Setup,
    subscribers: u64,
    qos: QoS,
    phases: Phases,
    last_sample: Instant,
    last_totals: (u64, u64, u64),
    last_progress: Instant,
    last_delivery: Instant,
}

impl Watcher<'_> {
    /// Sleeps one poll interval, samples the broker, notes progress and writes off QoS 0
    /// copies that will not come. Returns the totals (sent, acked, delivered).
    fn poll(&mut self) -> (u64, u64, u64) {
        thread::sleep(POLL);
        let now = Instant::now();
        if now.duration_since(self.last_sample) >= SAMPLE_EVERY {
            self.phases.peak.sample(self.options.pid);
            self.last_sample = now;
        }
        let current = totals(self.clients);
        if current != self.last_totals {
            if current.2 != self.last_totals.2 {
                self.last_delivery = now;
            }
            self.last_totals = current;
            self.last_progress = now;
        }
        if self.qos == QoS::AtMostOnce
            && self.setup.backlog.owed() > 0
            && now.duration_since(self.last_delivery) >= QOS0_GIVE_UP
        {
            // Nothing arrives although copies are owed: the broker dropped them, which it may
            // at QoS 0. Without this, publishers paused on them would never resume.
            self.setup.backlog.write_off();
        }
        current
    }

    fn any_failed(&self) -> bool {
        self.clients.iter().any(TrafficClient::failed_early)
    }
}

/// Runs the publish phase, then the drain, polling the counters. Returns once every message
/// owed has arrived, or progress stopped, or the deadline passed.
pub fn watch(
    options: &Options,
    scenario: &Traffic<'_>,
    plan: &Plan,
    clients: &[TrafficClient],
    setup: &Setup,
    deadline: Instant,
) -> Phases {
    let started = Instant::now();
    let mut w = Watcher {
        options,
        clients,
        setup,
        subscribers: u64::from(plan.subscribers),
        qos: scenario.qos,
        phases: Phases::default(),
        last_sample: started,
        last_totals: (0, 0, 0),
        last_progress: started,
        last_delivery: started,
    };
    w.phases.peak.sample(options.pid);
    let publishers: Vec<&TrafficClient> = plan
        .clients
        .iter()
        .zip(clients)
        .filter(|(plan, _)| plan.publish.is_some())
        .map(|(_, c)| c)
        .collect();

    // Publish.
    loop {
        w.poll();
        let now = Instant::now();
        let done = match scenario.stop {
            Stop::Duration => now.duration_since(started) >= options.duration,
            Stop::Count(n) => publishers
                .iter()
                .all(|c| c.counters.sent.load(Ordering::Relaxed) >= n),
        };
        if done || w.any_failed() {
            break;
        }
        if now >= deadline {
            w.phases.timed_out = true;
            break;
        }
        if now.duration_since(w.last_progress) >= options.stall {
            w.phases.stalled = true;
            break;
        }
    }
    setup.stop.store(true, Ordering::Relaxed);
    w.phases.publish_secs = started.elapsed().as_secs_f64();

    // Drain: wait for everything owed, as long as something still moves.
    let quiet = if scenario.qos == QoS::AtMostOnce {
        QOS0_GIVE_UP
    } else {
        options.stall
    };
    while !w.phases.stalled && !w.phases.timed_out {
        let (sent, acked, delivered) = w.last_totals;
        let all_acked = scenario.qos == QoS::AtMostOnce || acked >= sent;
        if (all_acked && delivered >= sent * w.subscribers) || w.any_failed() {
            break;
        }
        let (sent, acked, _) = w.poll();
        let now = Instant::now();
        if now >= deadline {
            w.phases.timed_out = true;
        } else if now.duration_since(w.last_progress) >= quiet {
            // Nothing moves any more. Messages the broker acknowledged and did not deliver
            // count as lost; a publisher still waiting for acknowledgements is stalled.
            w.phases.stalled = scenario.qos != QoS::AtMostOnce && acked < sent;
            break;
        }
    }
    w.phases.peak.sample(options.pid);
    w.phases
}
