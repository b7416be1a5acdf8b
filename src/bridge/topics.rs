//! A bridge's `topic` lines and mosquitto's remapping rules, pure.
//!
//! Owns: parsing `topic PATTERN [[[out|in|both] QOS] LOCAL_PREFIX REMOTE_PREFIX]` (with `""`
//! for an empty pattern or prefix), the filters each side subscribes to, and the rewriting of a
//! topic on its way out (local prefix off, remote prefix on) and in (the reverse). Must not:
//! know about connections.

use crate::mqtt::topic::{matches, validate_topic_filter, validate_topic_name};
use crate::mqtt::QoS;

/// Which way messages on a topic travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Local messages go to the remote broker (the default).
    Out,
    /// Remote messages come to us.
    In,
    Both,
}

impl Direction {
    pub fn goes_out(self) -> bool {
        matches!(self, Direction::Out | Direction::Both)
    }

    pub fn comes_in(self) -> bool {
        matches!(self, Direction::In | Direction::Both)
    }
}

/// One `topic` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeTopic {
    pub direction: Direction,
    pub qos: QoS,
    /// `None` for the pattern `""` (then both prefixes are the whole topics).
    pub pattern: Option<String>,
    pub local_prefix: Option<String>,
    pub remote_prefix: Option<String>,
    /// The filter on our side: local prefix + pattern.
    pub local_topic: String,
    /// The filter on the remote side: remote prefix + pattern.
    pub remote_topic: String,
}

/// `""` stands for nothing, in the pattern's place or a prefix's.
fn or_empty(word: &str) -> Option<String> {
    (word != "\"\"").then(|| word.to_string())
}

impl BridgeTopic {
    /// Reads the value of a `topic` line.
    pub fn parse(value: &str) -> Result<BridgeTopic, String> {
        let words: Vec<&str> = value.split_whitespace().collect();
        let (pattern, rest) = words
            .split_first()
            .ok_or("expected PATTERN [[[out|in|both] QOS] LOCAL_PREFIX REMOTE_PREFIX]")?;
        let direction = match rest.first().copied() {
            None | Some("out") => Direction::Out,
            Some("in") => Direction::In,
            Some("both") => Direction::Both,
            Some(other) => return Err(format!("{other:?} is not out, in or both")),
        };
        let qos = match rest.get(1).copied() {
            None | Some("0") => QoS::AtMostOnce,
            Some("1") => QoS::AtLeastOnce,
            Some("2") => QoS::ExactlyOnce,
            Some(other) => return Err(format!("QoS {other:?} is not 0, 1 or 2")),
        };
        let (local_prefix, remote_prefix) = match rest.get(2..).unwrap_or(&[]) {
            [] => (None, None),
            [local, remote] => (or_empty(local), or_empty(remote)),
            [_] => return Err("a local prefix needs a remote prefix after it".into()),
            _ => return Err("too many values".into()),
        };
        let pattern = or_empty(pattern);
        if pattern.is_none() && (local_prefix.is_none() || remote_prefix.is_none()) {
            return Err("the pattern \"\" needs both prefixes (invalid bridge remapping)".into());
        }
        for (side, prefix) in [("local", &local_prefix), ("remote", &remote_prefix)] {
            if let Some(prefix) = prefix {
                validate_topic_name(prefix)
                    .map_err(|e| format!("{side} prefix {prefix:?}: {e}"))?;
            }
        }
        let join = |prefix: &Option<String>| {
            format!(
                "{}{}",
                prefix.as_deref().unwrap_or(""),
                pattern.as_deref().unwrap_or("")
            )
        };
        let (local_topic, remote_topic) = (join(&local_prefix), join(&remote_prefix));
        for (side, filter) in [("local", &local_topic), ("remote", &remote_topic)] {
            validate_topic_filter(filter)
                .map_err(|e| format!("{side} prefix and pattern {filter:?}: {e}"))?;
        }
        Ok(BridgeTopic {
            direction,
            qos,
            pattern,
            local_prefix,
            remote_prefix,
            local_topic,
            remote_topic,
        })
    }

    fn remaps(&self) -> bool {
        self.local_prefix.is_some() || self.remote_prefix.is_some()
    }
}

/// The topic a local message gets on the remote broker: the first outgoing topic line with a
/// prefix whose local filter it matches takes off its local prefix and puts on its remote one;
/// with none, the topic is unchanged (mosquitto's order and rule).
pub fn remap_out(topics: &[BridgeTopic], topic: &str) -> String {
    remap(topics, topic, Direction::goes_out, |t| {
        (&t.local_topic, &t.local_prefix, &t.remote_prefix)
    })
}

/// The topic a remote message gets here: remote prefix off, local prefix on.
pub fn remap_in(topics: &[BridgeTopic], topic: &str) -> String {
    remap(topics, topic, Direction::comes_in, |t| {
        (&t.remote_topic, &t.remote_prefix, &t.local_prefix)
    })
}

type Sides<'a> = (&'a String, &'a Option<String>, &'a Option<String>);

fn remap<'a>(
    topics: &'a [BridgeTopic],
    topic: &str,
    way: fn(Direction) -> bool,
    sides: impl Fn(&'a BridgeTopic) -> Sides<'a>,
) -> String {
    for t in topics.iter().filter(|t| way(t.direction) && t.remaps()) {
        let (filter, from_prefix, to_prefix) = sides(t);
        if !matches(filter, topic) {
            continue;
        }
        let bare = match from_prefix {
            Some(prefix) => topic.strip_prefix(prefix.as_str()).unwrap_or(topic),
            None => topic,
        };
        return format!("{}{bare}", to_prefix.as_deref().unwrap_or(""));
    }
    topic.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(value: &str) -> BridgeTopic {
        BridgeTopic::parse(value).unwrap_or_else(|e| panic!("{value}: {e}"))
    }

    /// mosquitto.conf(5)'s table of pattern and prefix combinations.
    #[test]
    fn the_prefix_table() {
        let valid = [
            ("pattern both 0 L/ R/", "L/pattern", "R/pattern"),
            ("pattern both 0 L/ \"\"", "L/pattern", "pattern"),
            ("pattern both 0 \"\" R/", "pattern", "R/pattern"),
            ("pattern both 0 \"\" \"\"", "pattern", "pattern"),
            ("\"\" both 0 local remote", "local", "remote"),
            ("a/#", "a/#", "a/#"),
            ("a/+ in", "a/+", "a/+"),
        ];
        for (line, local, remote) in valid {
            let t = topic(line);
            assert_eq!(
                (t.local_topic.as_str(), t.remote_topic.as_str()),
                (local, remote)
            );
        }
        let invalid = [
            ("\"\" both 0 local \"\"", "needs both prefixes"),
            ("\"\" both 0 \"\" remote", "needs both prefixes"),
            ("\"\" both 0 \"\" \"\"", "needs both prefixes"),
            ("\"\"", "needs both prefixes"),
            ("# both 0 a/+/ b/", "local prefix"),
            ("# both 0 a/ b/#", "remote prefix"),
            ("a/#/b", "pattern"),
            ("# out 3", "QoS"),
            ("# up", "out, in or both"),
            ("# out 1 L/", "remote prefix after"),
            ("# out 1 L/ R/ x", "too many"),
            ("", "expected PATTERN"),
        ];
        for (line, want) in invalid {
            let got = BridgeTopic::parse(line).expect_err(line);
            assert!(got.contains(want), "{line:?}: {got:?} lacks {want:?}");
        }
    }

    #[test]
    fn defaults_are_out_at_qos_0() {
        let t = topic("#");
        assert_eq!((t.direction, t.qos), (Direction::Out, QoS::AtMostOnce));
        assert_eq!(topic("# in 2").qos, QoS::ExactlyOnce);
    }

    #[test]
    fn remapping_both_ways() {
        let topics = vec![
            topic("sensors/# out 1 site-a/ cloud/site-a/"),
            topic("cmd/# in 1 site-a/ cloud/site-a/"),
            topic("\"\" both 0 local/one remote/one"),
            topic("plain/# both 0"),
            topic("up/# both 0 \"\" up-r/"),
        ];
        let out = |t: &str| remap_out(&topics, t);
        let inn = |t: &str| remap_in(&topics, t);
        assert_eq!(out("site-a/sensors/t1"), "cloud/site-a/sensors/t1");
        assert_eq!(inn("cloud/site-a/cmd/reboot"), "site-a/cmd/reboot");
        // `in` lines do not remap outgoing messages, nor `out` lines incoming ones.
        assert_eq!(out("site-a/cmd/reboot"), "site-a/cmd/reboot");
        assert_eq!(inn("cloud/site-a/sensors/t1"), "cloud/site-a/sensors/t1");
        assert_eq!(out("local/one"), "remote/one");
        assert_eq!(inn("remote/one"), "local/one");
        assert_eq!(out("plain/x"), "plain/x");
        assert_eq!(out("up/x"), "up-r/up/x");
        assert_eq!(inn("up-r/up/x"), "up/x");
    }
}
