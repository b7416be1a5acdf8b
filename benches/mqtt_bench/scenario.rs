//! The named scenarios and what each one connects: who publishes where, who subscribes to what.
//!
//! Owns: the catalogue (names, topologies, QoS, how a run stops) and turning a topology into a
//! `Plan` of clients. Must not: open connections or measure anything. In every plan each
//! subscriber receives every publisher's messages, which is what `run` counts loss against.

use mqtt_broker::mqtt::QoS;

use crate::options::Options;

/// Clients on each side of the many-client topologies.
pub const WIDTH: u32 = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// 1 publisher, 1 subscriber on the same topic.
    OneToOne,
    /// `WIDTH` publishers on topics of their own, 1 subscriber on a `+` wildcard.
    FanIn,
    /// 1 publisher, `WIDTH` subscribers on its topic.
    FanOut,
    /// `WIDTH` clients, each publishing to and subscribing to one shared topic.
    Mesh,
    /// 1 publisher, 1 subscriber on a `#` wildcard above it.
    Wildcard,
}

/// How a traffic run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Publish for the run's duration.
    Duration,
    /// Publish this many messages per publisher, then wait for all of them.
    Count(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Traffic {
        topology: Topology,
        qos: QoS,
        stop: Stop,
        /// Messages per second per publisher; `None` floods.
        rate: Option<u64>,
    },
    /// Idle connections: connect rate and the broker's memory and threads per connection.
    Connections,
    /// 1,000 clients disconnecting and connecting again in a loop: reconnects per second.
    Churn,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    pub name: String,
    pub kind: Kind,
}

/// One client of a traffic plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPlan {
    pub subscribe: Option<String>,
    /// Publisher id and topic.
    pub publish: Option<(u32, String)>,
}

/// Every client of a traffic run; publishers are numbered from 0 in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub clients: Vec<ClientPlan>,
    pub publishers: u32,
    pub subscribers: u32,
}

fn qos_suffix(qos: QoS) -> u8 {
    qos as u8
}

/// Every scenario, in the order `all` runs them.
pub fn catalogue(options: &Options) -> Vec<Scenario> {
    let mut all = Vec::new();
    let topologies = [
        ("one2one", Topology::OneToOne),
        ("fanin", Topology::FanIn),
        ("fanout", Topology::FanOut),
        ("mesh", Topology::Mesh),
    ];
    for (name, topology) in topologies {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            all.push(Scenario {
                name: format!("{name}-q{}", qos_suffix(qos)),
                kind: Kind::Traffic {
                    topology,
                    qos,
                    stop: Stop::Duration,
                    rate: None,
                },
            });
        }
    }
    all.push(Scenario {
        name: "qos1-1m".into(),
        kind: Kind::Traffic {
            topology: Topology::Wildcard,
            qos: QoS::AtLeastOnce,
            stop: Stop::Count(options.messages),
            rate: None,
        },
    });
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        all.push(Scenario {
            name: format!("latency-q{}", qos_suffix(qos)),
            kind: Kind::Traffic {
                topology: Topology::OneToOne,
                qos,
                stop: Stop::Duration,
                rate: Some(options.rate),
            },
        });
    }
    all.push(Scenario {
        name: "connections".into(),
        kind: Kind::Connections,
    });
    all.push(Scenario {
        name: "churn".into(),
        kind: Kind::Churn,
    });
    all
}

/// The scenarios a list of names selects: exact names, groups (the part of a name before its
/// first `-`: `fanout`, `latency`) or `all`. Order follows the catalogue; unknown names are an
/// error listing them.
pub fn select(options: &Options, names: &[String]) -> Result<Vec<Scenario>, String> {
    let all = catalogue(options);
    let mut unknown = Vec::new();
    let mut chosen = vec![false; all.len()];
    for name in names {
        let mut matched = false;
        for (i, scenario) in all.iter().enumerate() {
            let group = scenario.name.split('-').next().unwrap_or(&scenario.name);
            if name == "all" || *name == scenario.name || name == group {
                chosen[i] = true;
                matched = true;
            }
        }
        if !matched {
            unknown.push(name.clone());
        }
    }
    if !unknown.is_empty() {
        return Err(format!(
            "unknown scenario {} (try --list)",
            unknown.join(", ")
        ));
    }
    Ok(all
        .into_iter()
        .zip(chosen)
        .filter(|(_, c)| *c)
        .map(|(s, _)| s)
        .collect())
}

impl Topology {
    /// The clients of this topology, topics under `prefix` (unique per run, so nothing left
    /// over from an earlier run can match).
    pub fn plan(self, prefix: &str) -> Plan {
        let shared = format!("{prefix}/t");
        let subscriber = |filter: &str| ClientPlan {
            subscribe: Some(filter.to_owned()),
            publish: None,
        };
        let publisher = |id: u32, topic: String| ClientPlan {
            subscribe: None,
            publish: Some((id, topic)),
        };
        let clients: Vec<ClientPlan> = match self {
            Topology::OneToOne => vec![subscriber(&shared), publisher(0, shared.clone())],
            Topology::FanIn => std::iter::once(subscriber(&format!("{prefix}/+")))
                .chain((0..WIDTH).map(|i| publisher(i, format!("{prefix}/{i}"))))
                .collect(),
            Topology::FanOut => (0..WIDTH)
                .map(|_| subscriber(&shared))
                .chain(std::iter::once(publisher(0, shared.clone())))
                .collect(),
            Topology::Mesh => (0..WIDTH)
                .map(|i| ClientPlan {
                    subscribe: Some(shared.clone()),
                    publish: Some((i, shared.clone())),
                })
                .collect(),
            Topology::Wildcard => vec![
                subscriber(&format!("{prefix}/#")),
                publisher(0, format!("{prefix}/a/b")),
            ],
        };
        let publishers = clients.iter().filter(|c| c.publish.is_some()).count() as u32;
        let subscribers = clients.iter().filter(|c| c.subscribe.is_some()).count() as u32;
        Plan {
            clients,
            publishers,
            subscribers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_have_the_advertised_shape() {
        for (topology, publishers, subscribers, clients) in [
            (Topology::OneToOne, 1, 1, 2),
            (Topology::FanIn, WIDTH, 1, WIDTH as usize + 1),
            (Topology::FanOut, 1, WIDTH, WIDTH as usize + 1),
            (Topology::Mesh, WIDTH, WIDTH, WIDTH as usize),
            (Topology::Wildcard, 1, 1, 2),
        ] {
            let plan = topology.plan("p");
            assert_eq!(plan.publishers, publishers, "{topology:?}");
            assert_eq!(plan.subscribers, subscribers, "{topology:?}");
            assert_eq!(plan.clients.len(), clients, "{topology:?}");
            // Publisher ids are 0..publishers, each once.
            let mut ids: Vec<u32> = plan
                .clients
                .iter()
                .filter_map(|c| c.publish.as_ref().map(|p| p.0))
                .collect();
            ids.sort_unstable();
            assert_eq!(ids, (0..publishers).collect::<Vec<_>>());
        }
    }

    #[test]
    fn selection_by_name_group_and_all() {
        let options = Options::default();
        let names = |list: &[&str]| -> Vec<String> {
            let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
            select(&options, &list)
                .unwrap()
                .into_iter()
                .map(|s| s.name)
                .collect()
        };
        assert_eq!(names(&["fanout"]), ["fanout-q0", "fanout-q1", "fanout-q2"]);
        assert_eq!(
            names(&["latency-q1", "one2one-q0"]),
            ["one2one-q0", "latency-q1"]
        );
        assert_eq!(names(&["all"]).len(), 17);
        assert!(select(&options, &["nope".into()]).is_err());
    }
}
