//! The `$SYS/broker/...` topics: which are published, their text, and when (mosquitto's names
//! and formats, so that dashboards built on mosquitto keep working).
//!
//! Owns: `SysTree`, the last values published and the load averages, and `update`, which turns
//! the current counters and gauges into the retained messages to publish now. Must not: route
//! anything (the router does, see `queue::actor::sys`) or read the clock itself, so that it can
//! be tested with made-up times.

use std::time::Instant;

use super::counters::{DropReason, Gauges, Stats, Traffic};

/// The value each plain `$SYS` topic reports, from one snapshot of the counters.
struct Snapshot {
    traffic: Traffic,
    gauges: Gauges,
    sockets: u64,
    connects: u64,
    expired: u64,
    dropped: u64,
}

impl Snapshot {
    fn take(stats: &Stats) -> Self {
        Snapshot {
            traffic: stats.traffic(),
            gauges: stats.gauges(),
            sockets: stats.sockets(),
            connects: stats.connects(),
            expired: stats.sessions_expired(),
            dropped: stats.dropped_total(DropReason::QueueFull)
                + stats.dropped_total(DropReason::HardLimit),
        }
    }
}

/// A topic published when its value changes. `also` is the older name mosquitto still
/// publishes beside it.
struct Metric {
    topic: &'static str,
    also: Option<&'static str>,
    value: fn(&Snapshot) -> u64,
    /// Only published when it grows (a maximum).
    is_max: bool,
}

const fn metric(topic: &'static str, value: fn(&Snapshot) -> u64) -> Metric {
    Metric {
        topic,
        also: None,
        value,
        is_max: false,
    }
}

/// In the order mosquitto 2.0 publishes them.
const METRICS: &[Metric] = &[
    metric("$SYS/broker/clients/total", |s| s.gauges.sessions),
    Metric {
        topic: "$SYS/broker/clients/maximum",
        also: None,
        value: |s| s.gauges.sessions_maximum,
        is_max: true,
    },
    Metric {
        topic: "$SYS/broker/clients/inactive",
        also: Some("$SYS/broker/clients/disconnected"),
        value: |s| s.gauges.sessions - s.gauges.clients_connected.min(s.gauges.sessions),
        is_max: false,
    },
    Metric {
        topic: "$SYS/broker/clients/active",
        also: Some("$SYS/broker/clients/connected"),
        value: |s| s.gauges.clients_connected,
        is_max: false,
    },
    metric("$SYS/broker/clients/expired", |s| s.expired),
    Metric {
        topic: "$SYS/broker/messages/stored",
        also: Some("$SYS/broker/store/messages/count"),
        value: |s| s.gauges.stored_messages,
        is_max: false,
    },
    metric("$SYS/broker/store/messages/bytes", |s| {
        s.gauges.stored_bytes
    }),
    metric("$SYS/broker/subscriptions/count", |s| {
        s.gauges.subscriptions
    }),
    metric("$SYS/broker/shared_subscriptions/count", |s| {
        s.gauges.shared_subscriptions
    }),
    metric("$SYS/broker/retained messages/count", |s| s.gauges.retained),
    metric("$SYS/broker/messages/received", |s| s.traffic.packets_in),
    metric("$SYS/broker/messages/sent", |s| s.traffic.packets_out),
    metric("$SYS/broker/publish/messages/dropped", |s| s.dropped),
    metric("$SYS/broker/publish/messages/received", |s| {
        s.traffic.publish_in_total()
    }),
    metric("$SYS/broker/publish/messages/sent", |s| {
        s.traffic.publish_out_total()
    }),
    metric("$SYS/broker/publish/bytes/received", |s| {
        s.traffic.publish_bytes_in_total()
    }),
    metric("$SYS/broker/publish/bytes/sent", |s| {
        s.traffic.publish_bytes_out_total()
    }),
    metric("$SYS/broker/bytes/received", |s| s.traffic.bytes_in),
    metric("$SYS/broker/bytes/sent", |s| s.traffic.bytes_out),
];

/// A load average: the rate of one counter per minute, smoothed over 1, 5 or 15 minutes.
struct Load {
    /// The counter's name below `$SYS/broker/load/`.
    name: &'static str,
    value: fn(&Snapshot) -> u64,
}

const LOADS: &[Load] = &[
    Load {
        name: "messages/received",
        value: |s| s.traffic.packets_in,
    },
    Load {
        name: "messages/sent",
        value: |s| s.traffic.packets_out,
    },
    Load {
        name: "publish/dropped",
        value: |s| s.dropped,
    },
    Load {
        name: "publish/received",
        value: |s| s.traffic.publish_in_total(),
    },
    Load {
        name: "publish/sent",
        value: |s| s.traffic.publish_out_total(),
    },
    Load {
        name: "bytes/received",
        value: |s| s.traffic.bytes_in,
    },
    Load {
        name: "bytes/sent",
        value: |s| s.traffic.bytes_out,
    },
    Load {
        name: "sockets",
        value: |s| s.sockets,
    },
    Load {
        name: "connections",
        value: |s| s.connects,
    },
];

/// The smoothing windows of the load averages, in seconds, with their topic suffix.
const WINDOWS: [(f64, &str); 3] = [(60.0, "1min"), (300.0, "5min"), (900.0, "15min")];

/// What has been published so far.
pub struct SysTree {
    version: String,
    started: Instant,
    last_update: Option<Instant>,
    /// Last published value per `METRICS` entry (None: never published).
    published: Vec<Option<u64>>,
    /// Each load's counter value at the last update.
    load_counters: Vec<u64>,
    /// Current average per `LOADS` entry and window.
    averages: Vec<[f64; 3]>,
}

impl SysTree {
    pub fn new(started: Instant) -> Self {
        SysTree {
            version: format!("mqtt-broker version {}", env!("CARGO_PKG_VERSION")),
            started,
            last_update: None,
            published: vec![None; METRICS.len()],
            load_counters: vec![0; LOADS.len()],
            averages: vec![[0.0; 3]; LOADS.len()],
        }
    }

    /// The topics and texts to publish (retained) at `now`: everything the first time, then
    /// the uptime, each load average that moved by 0.01 or more, and each value that changed.
    pub fn update(&mut self, now: Instant, stats: &Stats) -> Vec<(&'static str, String)> {
        let snapshot = Snapshot::take(stats);
        let mut out = Vec::new();
        let first = self.last_update.is_none();
        if first {
            out.push(("$SYS/broker/version", self.version.clone()));
        }
        let uptime = now.saturating_duration_since(self.started).as_secs();
        out.push(("$SYS/broker/uptime", format!("{uptime} seconds")));

        // Published one window at a time, as mosquitto orders them.
        let elapsed = self
            .last_update
            .map(|last| now.saturating_duration_since(last).as_secs_f64());
        let mut loads = vec![Vec::new(); WINDOWS.len()];
        for (i, load) in LOADS.iter().enumerate() {
            let counter = (load.value)(&snapshot);
            let delta = counter.saturating_sub(self.load_counters[i]) as f64;
            self.load_counters[i] = counter;
            for (w, &(window, suffix)) in WINDOWS.iter().enumerate() {
                let old = self.averages[i][w];
                let new = match elapsed {
                    // The first report is 0, as the counters only just started.
                    None => 0.0,
                    Some(secs) if secs > 0.0 => {
                        let per_minute = delta * 60.0 / secs;
                        per_minute + (-secs / window).exp() * (old - per_minute)
                    }
                    Some(_) => old,
                };
                if first || (new - old).abs() >= 0.01 {
                    let topic = load_topic(load.name, suffix);
                    loads[w].push((topic, format!("{new:.2}")));
                }
                self.averages[i][w] = new;
            }
        }
        // In mosquitto's order: the client counts, then the load averages, then the rest.
        let mut values = Vec::new();
        for (i, metric) in METRICS.iter().enumerate() {
            let value = (metric.value)(&snapshot);
            let last = self.published[i];
            // A maximum of zero is not news: mosquitto's first maximum is 1.
            let changed = match (last, metric.is_max) {
                (last, true) => value > last.unwrap_or(0),
                (None, false) => true,
                (Some(last), false) => value != last,
            };
            if changed {
                self.published[i] = Some(value);
                values.push((metric.topic, value.to_string()));
                if let Some(also) = metric.also {
                    values.push((also, value.to_string()));
                }
            }
        }
        let (clients, rest): (Vec<_>, Vec<_>) = values
            .into_iter()
            .partition(|(topic, _)| topic.starts_with("$SYS/broker/clients/"));
        out.extend(clients);
        out.extend(loads.into_iter().flatten());
        out.extend(rest);
        self.last_update = Some(now);
        out
    }
}

/// `$SYS/broker/load/{name}/{window}`, from a fixed set of names (kept as static strings).
fn load_topic(name: &str, window: &str) -> &'static str {
    macro_rules! topics {
        ($($name:literal),*) => {
            match (name, window) {
                $(
                    ($name, "1min") => concat!("$SYS/broker/load/", $name, "/1min"),
                    ($name, "5min") => concat!("$SYS/broker/load/", $name, "/5min"),
                    ($name, "15min") => concat!("$SYS/broker/load/", $name, "/15min"),
                )*
                _ => "$SYS/broker/load/unknown",
            }
        };
    }
    topics!(
        "messages/received",
        "messages/sent",
        "publish/dropped",
        "publish/received",
        "publish/sent",
        "bytes/received",
        "bytes/sent",
        "sockets",
        "connections"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::Packet;
    use std::time::Duration;

    fn topics(list: &[(&'static str, String)]) -> Vec<&'static str> {
        list.iter().map(|(t, _)| *t).collect()
    }

    fn value<'a>(list: &'a [(&'static str, String)], topic: &str) -> Option<&'a str> {
        list.iter()
            .find(|(t, _)| *t == topic)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn the_first_update_publishes_everything_then_only_changes() {
        let stats = Stats::default();
        let start = stats.started();
        let mut tree = SysTree::new(start);
        let first = tree.update(start, &stats);
        assert_eq!(
            value(&first, "$SYS/broker/version"),
            Some(format!("mqtt-broker version {}", env!("CARGO_PKG_VERSION")).as_str())
        );
        assert_eq!(value(&first, "$SYS/broker/uptime"), Some("0 seconds"));
        assert_eq!(
            value(&first, "$SYS/broker/load/bytes/sent/15min"),
            Some("0.00")
        );
        assert_eq!(value(&first, "$SYS/broker/clients/connected"), Some("0"));
        assert_eq!(value(&first, "$SYS/broker/clients/active"), Some("0"));
        // A maximum of zero is not news (mosquitto publishes it first once it is 1).
        assert_eq!(value(&first, "$SYS/broker/clients/maximum"), None);
        assert_eq!(first.len(), 2 + 9 * 3 + METRICS.len() + 3 - 1);

        // Nothing happened: only the uptime.
        let second = tree.update(start + Duration::from_secs(10), &stats);
        assert_eq!(topics(&second), ["$SYS/broker/uptime"]);
        assert_eq!(value(&second, "$SYS/broker/uptime"), Some("10 seconds"));

        // Traffic: the counters and their loads move.
        for _ in 0..60 {
            stats.received(&Packet::PingReq, 0);
        }
        let third = tree.update(start + Duration::from_secs(20), &stats);
        assert_eq!(value(&third, "$SYS/broker/messages/received"), Some("60"));
        assert_eq!(value(&third, "$SYS/broker/bytes/received"), Some("120"));
        // 60 packets in 10 s is 360 a minute; after 10 s the 1-minute average has moved
        // 1 - e^(-1/6) of the way there.
        let expected = 360.0 * (1.0 - (-10.0f64 / 60.0).exp());
        assert_eq!(
            value(&third, "$SYS/broker/load/messages/received/1min"),
            Some(format!("{expected:.2}").as_str())
        );
        assert!(value(&third, "$SYS/broker/messages/sent").is_none());
    }

    #[test]
    fn a_maximum_is_published_only_when_it_grows() {
        let stats = Stats::default();
        let start = stats.started();
        let mut tree = SysTree::new(start);
        let gauges = |n| Gauges {
            sessions: n,
            sessions_maximum: n,
            ..Gauges::default()
        };
        tree.update(start, &stats);
        stats.set_gauges(gauges(5));
        let grown = tree.update(start + Duration::from_secs(1), &stats);
        assert_eq!(value(&grown, "$SYS/broker/clients/maximum"), Some("5"));
        assert_eq!(value(&grown, "$SYS/broker/clients/total"), Some("5"));
        stats.set_gauges(Gauges {
            sessions: 2,
            sessions_maximum: 5,
            ..Gauges::default()
        });
        let shrunk = tree.update(start + Duration::from_secs(2), &stats);
        assert_eq!(value(&shrunk, "$SYS/broker/clients/maximum"), None);
        assert_eq!(value(&shrunk, "$SYS/broker/clients/total"), Some("2"));
    }
}
