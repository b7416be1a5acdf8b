//! Retained messages: the last retained PUBLISH per topic.
//!
//! Owns: storing, replacing and clearing retained messages, and finding those a new
//! subscription matches. Must not: deliver anything (the router does) or copy payloads.

use std::collections::HashMap;
use std::sync::Arc;

use crate::mqtt::topic::matches;
use crate::mqtt::Publish;

#[derive(Default)]
pub(super) struct RetainedStore {
    by_topic: HashMap<String, Arc<Publish>>,
}

impl RetainedStore {
    /// Stores `message` as its topic's retained message, or clears the topic when the payload
    /// is empty [MQTT-3.3.1-10, MQTT-3.3.1-11].
    pub fn update(&mut self, message: &Arc<Publish>) {
        if message.payload.is_empty() {
            self.by_topic.remove(message.topic.as_str());
        } else {
            self.by_topic
                .insert(message.topic.clone(), Arc::clone(message));
        }
    }

    /// Every retained message whose topic `filter` matches.
    pub fn matching<'a>(&'a self, filter: &'a str) -> impl Iterator<Item = &'a Arc<Publish>> + 'a {
        self.by_topic
            .iter()
            .filter(move |(topic, _)| matches(filter, topic))
            .map(|(_, message)| message)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_topic.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::{PublishProperties, QoS};

    fn message(topic: &str, payload: &[u8]) -> Arc<Publish> {
        Arc::new(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: topic.into(),
            packet_id: None,
            properties: PublishProperties::default(),
            payload: payload.into(),
        })
    }

    fn topics(store: &RetainedStore, filter: &str) -> Vec<String> {
        let mut found: Vec<String> = store.matching(filter).map(|m| m.topic.clone()).collect();
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
        let latest: Vec<_> = store.matching("a/b").map(|m| m.payload.to_vec()).collect();
        assert_eq!(latest, vec![b"three".to_vec()]);
        store.update(&message("a/b", b""));
        assert_eq!(topics(&store, "#"), vec!["a/c"]);
    }

    #[test]
    fn wildcards_do_not_reach_dollar_topics() {
        let mut store = RetainedStore::default();
        store.update(&message("$SYS/uptime", b"1"));
        store.update(&message("x", b"2"));
        assert_eq!(topics(&store, "#"), vec!["x"]);
        assert_eq!(topics(&store, "$SYS/#"), vec!["$SYS/uptime"]);
    }
}
