//! Retained messages: the last retained PUBLISH per topic.
//!
//! Owns: storing, replacing and clearing retained messages, dropping expired ones, and finding
//! those a new subscription matches. Must not: deliver anything (the router does) or copy
//! payloads.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::message::Message;
use crate::mqtt::topic::matches;

#[derive(Default)]
pub(super) struct RetainedStore {
    by_topic: HashMap<String, Arc<Message>>,
}

impl RetainedStore {
    /// Stores `message` as its topic's retained message, or clears the topic when the payload
    /// is empty [MQTT-3.3.1-10, MQTT-3.3.1-11].
    pub fn update(&mut self, message: &Arc<Message>) {
        let topic = &message.publish.topic;
        if message.publish.payload.is_empty() {
            self.by_topic.remove(topic.as_str());
        } else {
            self.by_topic.insert(topic.clone(), Arc::clone(message));
        }
    }

    /// Every live retained message whose topic `filter` matches; expired ones are removed
    /// on the way [MQTT-3.3.2-5].
    pub fn matching(&mut self, filter: &str, now: Instant) -> Vec<Arc<Message>> {
        self.by_topic
            .retain(|_, message| !message.is_expired_at(now));
        self.by_topic
            .iter()
            .filter(|(topic, _)| matches(filter, topic))
            .map(|(_, message)| Arc::clone(message))
            .collect()
    }

    /// For `$SYS` and metrics: how many retained messages, and their payload bytes.
    pub fn census(&self) -> (u64, u64) {
        let bytes = self
            .by_topic
            .values()
            .map(|m| m.publish.payload.len() as u64);
        (self.by_topic.len() as u64, bytes.sum())
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_topic.len()
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
