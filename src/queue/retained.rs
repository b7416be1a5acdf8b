//! Retained messages: the last retained PUBLISH per topic.
//!
//! Owns: storing, replacing and clearing retained messages, dropping expired ones, and finding
//! those a new subscription matches. Must not: deliver anything (the router does) or copy
//! payloads.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::message::Message;

/// A tree of topic levels, children in the order they were first published to, so that a
/// wildcard subscription gets its retained messages in mosquitto's order.
#[derive(Default)]
pub(super) struct RetainedStore {
    root: Node,
    count: usize,
}

#[derive(Default)]
struct Node {
    message: Option<Arc<Message>>,
    /// Children in order of creation; `index` finds one by name.
    children: Vec<(Box<str>, Node)>,
    index: HashMap<Box<str>, usize>,
}

impl Node {
    fn child(&self, name: &str) -> Option<&Node> {
        self.index.get(name).map(|&i| &self.children[i].1)
    }

    fn child_or_insert(&mut self, name: &str) -> &mut Node {
        let i = match self.index.get(name) {
            Some(&i) => i,
            None => {
                self.children.push((name.into(), Node::default()));
                self.index.insert(name.into(), self.children.len() - 1);
                self.children.len() - 1
            }
        };
        &mut self.children[i].1
    }

    fn is_empty(&self) -> bool {
        self.message.is_none() && self.children.is_empty()
    }

    /// Removes the message at `levels` below this node and prunes nodes left empty; true if
    /// there was one.
    fn remove(&mut self, levels: &[&str]) -> bool {
        let Some((first, rest)) = levels.split_first() else {
            return self.message.take().is_some();
        };
        let Some(&i) = self.index.get(*first) else {
            return false;
        };
        let removed = self.children[i].1.remove(rest);
        if self.children[i].1.is_empty() {
            let (name, _) = self.children.remove(i);
            self.index.remove(&name);
            for (_, slot) in self.index.iter_mut() {
                if *slot > i {
                    *slot -= 1;
                }
            }
        }
        removed
    }

    /// Appends the messages `filter` matches below this node, in mosquitto's order: for
    /// `#`, each child then its own children; a node that a trailing `/#` also matches comes
    /// after its children. Returns whether `#` matched anything here.
    fn search<'a>(&'a self, filter: &[&str], top: bool, out: &mut Vec<&'a Arc<Message>>) -> bool {
        // Wildcards in the first level do not reach `$` topics [MQTT-4.7.2-1].
        let visible = |name: &str| !(top && name.starts_with('$'));
        match filter {
            ["#"] => {
                let mut found = false;
                for (name, child) in &self.children {
                    if !visible(name) {
                        continue;
                    }
                    found = true;
                    out.extend(child.message.iter());
                    child.search(filter, false, out);
                }
                found
            }
            [level, rest @ ..] => {
                let mut visit = |child: &'a Node| {
                    // The child itself when the filter ends here, or when a trailing `#`
                    // also matches it (after what lies below it).
                    if rest.is_empty() || child.search(rest, false, out) || rest == ["#"] {
                        out.extend(child.message.iter());
                    }
                };
                if *level == "+" {
                    for (name, child) in &self.children {
                        if visible(name) {
                            visit(child);
                        }
                    }
                } else if let Some(child) = self.child(level) {
                    visit(child);
                }
                false
            }
            [] => false,
        }
    }
}

impl RetainedStore {
    /// Stores `message` as its topic's retained message, or clears the topic when the payload
    /// is empty [MQTT-3.3.1-10, MQTT-3.3.1-11].
    pub fn update(&mut self, message: &Arc<Message>) {
        let topic = &message.publish.topic;
        let levels: Vec<&str> = topic.split('/').collect();
        if message.publish.payload.is_empty() {
            if self.root.remove(&levels) {
                self.count -= 1;
            }
            return;
        }
        let mut node = &mut self.root;
        for level in levels {
            node = node.child_or_insert(level);
        }
        if node.message.replace(Arc::clone(message)).is_none() {
            self.count += 1;
        }
    }

    /// Clears `topic` if `message` is still its retained message (one a failed commit
    /// refused); returns whether it was.
    pub fn remove_if(&mut self, message: &Arc<Message>) -> bool {
        let levels: Vec<&str> = message.publish.topic.split('/').collect();
        let mut node = &self.root;
        for level in &levels {
            match node.child(level) {
                Some(child) => node = child,
                None => return false,
            }
        }
        if !node
            .message
            .as_ref()
            .is_some_and(|m| Arc::ptr_eq(m, message))
        {
            return false;
        }
        if self.root.remove(&levels) {
            self.count -= 1;
        }
        true
    }

    /// Every live retained message whose topic `filter` matches, in mosquitto's order;
    /// expired ones are removed on the way [MQTT-3.3.2-5].
    pub fn matching(&mut self, filter: &str, now: Instant) -> Vec<Arc<Message>> {
        let levels: Vec<&str> = filter.split('/').collect();
        let mut found = Vec::new();
        self.root.search(&levels, true, &mut found);
        let (live, expired): (Vec<_>, Vec<_>) = found
            .into_iter()
            .map(Arc::clone)
            .partition(|m| !m.is_expired_at(now));
        for message in expired {
            let levels: Vec<&str> = message.publish.topic.split('/').collect();
            if self.root.remove(&levels) {
                self.count -= 1;
            }
        }
        live
    }

    /// For `$SYS` and metrics: how many retained messages, and their payload bytes.
    /// Walks the whole tree: called once per report, not per message.
    pub fn census(&self) -> (u64, u64) {
        fn bytes(node: &Node) -> u64 {
            let own = node
                .message
                .as_ref()
                .map_or(0, |m| m.publish.payload.len() as u64);
            own + node.children.iter().map(|(_, c)| bytes(c)).sum::<u64>()
        }
        (self.count as u64, bytes(&self.root))
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::{Publish, PublishProperties, QoS};
    use std::time::Duration;

    fn message_at(topic: &str, payload: &[u8], expiry: Option<u32>, now: Instant) -> Arc<Message> {
        let publish = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: topic.into(),
            packet_id: None,
            properties: PublishProperties {
                message_expiry_interval: expiry,
                ..Default::default()
            },
            payload: payload.into(),
        };
        Arc::new(Message::received_at(publish, now))
    }

    fn message(topic: &str, payload: &[u8]) -> Arc<Message> {
        message_at(topic, payload, None, Instant::now())
    }

    fn topics(store: &mut RetainedStore, filter: &str) -> Vec<String> {
        let mut found: Vec<String> = store
            .matching(filter, Instant::now())
            .iter()
            .map(|m| m.publish.topic.clone())
            .collect();
        found.sort();
        found
    }

    #[test]
    fn set_replace_and_clear() {
        let mut store = RetainedStore::default();
        store.update(&message("a/b", b"one"));
        store.update(&message("a/c", b"two"));
        store.update(&message("a/b", b"three"));
        assert_eq!(store.len(), 2);
        let latest: Vec<_> = store
            .matching("a/b", Instant::now())
            .iter()
            .map(|m| m.publish.payload.to_vec())
            .collect();
        assert_eq!(latest, vec![b"three".to_vec()]);
        store.update(&message("a/b", b""));
        assert_eq!(topics(&mut store, "#"), vec!["a/c"]);
    }

    #[test]
    fn wildcards_do_not_reach_dollar_topics() {
        let mut store = RetainedStore::default();
        store.update(&message("$SYS/uptime", b"1"));
        store.update(&message("x", b"2"));
        assert_eq!(topics(&mut store, "#"), vec!["x"]);
        assert_eq!(topics(&mut store, "$SYS/#"), vec!["$SYS/uptime"]);
    }

    /// mosquitto's order: children in order of creation, depth first, and the parent a
    /// trailing `/#` also matches after its children.
    fn in_order(store: &mut RetainedStore, filter: &str) -> Vec<String> {
        store
            .matching(filter, Instant::now())
            .iter()
            .map(|m| m.publish.topic.clone())
            .collect()
    }

    #[test]
    fn order_follows_creation_depth_first() {
        let mut store = RetainedStore::default();
        for topic in ["t/a", "t/a/b", "t/c/b", "t/a/b/c"] {
            store.update(&message(topic, b"x"));
        }
        assert_eq!(in_order(&mut store, "t/+/b"), vec!["t/a/b", "t/c/b"]);
        assert_eq!(
            in_order(&mut store, "t/a/#"),
            vec!["t/a/b", "t/a/b/c", "t/a"]
        );
        assert_eq!(
            in_order(&mut store, "#"),
            vec!["t/a", "t/a/b", "t/a/b/c", "t/c/b"]
        );
        assert_eq!(in_order(&mut store, "t/a"), vec!["t/a"]);
        assert_eq!(in_order(&mut store, "t/+"), vec!["t/a"]);
    }

    #[test]
    fn clearing_deep_topics_leaves_none_behind() {
        let mut store = RetainedStore::default();
        let topics: Vec<String> = (0..5).map(|i| format!("d/{i}/e/f")).collect();
        for topic in &topics {
            store.update(&message(topic, b"v"));
        }
        for topic in &topics {
            store.update(&message(topic, b""));
        }
        assert_eq!(store.len(), 0);
        assert!(in_order(&mut store, "#").is_empty());
        assert!(store.root.is_empty(), "emptied levels are pruned");
    }

    #[test]
    fn expired_messages_leave_the_store() {
        let mut store = RetainedStore::default();
        let past = Instant::now() - Duration::from_secs(5);
        store.update(&message_at("old", b"x", Some(2), past));
        store.update(&message_at("fresh", b"y", Some(60), past));
        assert_eq!(topics(&mut store, "#"), vec!["fresh"]);
        assert_eq!(store.len(), 1);
    }
}
