//! A routed message and its deliveries.
//!
//! Owns: `Message` (a PUBLISH as the router keeps it, with its expiry deadline), `Delivery`
//! (that message on its way to one session, with the QoS, retain flag and subscription
//! identifiers that session gets) and `SubscriptionIds`. Must not: copy the PUBLISH: every
//! delivery of one message shares one `Arc<Message>`.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::mqtt::{Publish, QoS};

/// A PUBLISH accepted by the router: DUP and packet id cleared, topic alias resolved.
#[derive(Debug)]
pub struct Message {
    pub publish: Publish,
    /// When the Message Expiry Interval runs out; `None` never expires.
    pub expires_at: Option<Instant>,
    /// Its id in the store once a persistent session has queued it (0: not stored). Only the
    /// router sets it.
    pub stored: AtomicU64,
}

impl Message {
    /// A message received now. The clock is read only for a message that can expire: reading
    /// it costs more than routing a small message.
    pub fn new(publish: Publish) -> Message {
        match publish.properties.message_expiry_interval {
            Some(_) => Message::received_at(publish, Instant::now()),
            None => Message {
                publish,
                expires_at: None,
                stored: AtomicU64::new(0),
            },
        }
    }

    pub fn received_at(publish: Publish, now: Instant) -> Message {
        let expires_at = publish
            .properties
            .message_expiry_interval
            .map(|secs| now + Duration::from_secs(u64::from(secs)));
        Message {
            publish,
            expires_at,
            stored: AtomicU64::new(0),
        }
    }

    /// [MQTT-3.3.2-5] An expired message is not delivered to anyone any more.
    pub fn is_expired(&self) -> bool {
        self.expires_at.is_some() && self.is_expired_at(Instant::now())
    }

    pub fn is_expired_at(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|deadline| deadline <= now)
    }

    /// The Message Expiry Interval to send now, if the message has one.
    pub fn remaining_expiry(&self) -> Option<u32> {
        self.expires_at?;
        self.remaining_expiry_at(Instant::now())
    }

    /// The Message Expiry Interval to send at `now`: the time left, in whole seconds rounded up
    /// so that a live message never goes out as 0 [MQTT-3.3.2-6].
    pub fn remaining_expiry_at(&self, now: Instant) -> Option<u32> {
        let left = self.expires_at?.saturating_duration_since(now);
        let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        Some(u32::try_from(secs.max(1)).unwrap_or(u32::MAX))
    }
}

/// The subscription identifiers of the subscriptions a delivery matched (MQTT 5).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SubscriptionIds {
    #[default]
    None,
    One(u32),
    Many(Box<[u32]>),
}

impl SubscriptionIds {
    pub fn as_slice(&self) -> &[u32] {
        match self {
            SubscriptionIds::None => &[],
            SubscriptionIds::One(id) => std::slice::from_ref(id),
            SubscriptionIds::Many(ids) => ids,
        }
    }

    /// Adds `id`, keeping each identifier once.
    pub fn add(&mut self, id: u32) {
        *self = match std::mem::take(self) {
            SubscriptionIds::None => SubscriptionIds::One(id),
            SubscriptionIds::One(first) if first == id => SubscriptionIds::One(first),
            SubscriptionIds::One(first) => SubscriptionIds::Many(Box::new([first, id])),
            SubscriptionIds::Many(ids) if ids.contains(&id) => SubscriptionIds::Many(ids),
            SubscriptionIds::Many(ids) => {
                let mut ids = ids.into_vec();
                ids.push(id);
                SubscriptionIds::Many(ids.into_boxed_slice())
            }
        };
    }
}

/// Bytes counted for a delivery beyond its topic and payload: its queue entry and a share of
/// the message's header. A message held for several sessions counts once for each, so sums of
/// weights are an upper bound of the memory they stand for.
pub const DELIVERY_OVERHEAD: usize = 96;

/// One message for one session.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: SubscriptionIds,
    /// The message has an expiry: a copy of that one bit spares the router a read of the
    /// shared message, which other threads keep pulling into their caches, per delivery.
    pub may_expire: bool,
    /// Its delivery id in the store (0: not stored: QoS 0, or a session that is not kept).
    pub stored: u64,
}

impl Delivery {
    pub fn new(
        message: Arc<Message>,
        qos: QoS,
        retain: bool,
        subscription_ids: SubscriptionIds,
    ) -> Self {
        let may_expire = message.expires_at.is_some();
        Delivery {
            message,
            qos,
            retain,
            subscription_ids,
            may_expire,
            stored: 0,
        }
    }

    /// What this delivery counts against byte limits (session queues, the broker's budget,
    /// a writer's channel).
    pub fn weight(&self) -> usize {
        let publish = &self.message.publish;
        publish.payload.len() + publish.topic.len() + DELIVERY_OVERHEAD
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::PublishProperties;

    fn message(expiry: Option<u32>, now: Instant) -> Message {
        Message::received_at(
            Publish {
                dup: false,
                qos: QoS::AtMostOnce,
                retain: false,
                topic: "t".into(),
                packet_id: None,
                properties: PublishProperties {
                    message_expiry_interval: expiry,
                    ..Default::default()
                },
                payload: Arc::from(&b""[..]),
            },
            now,
        )
    }

    #[test]
    fn expiry_counts_down_and_rounds_up() {
        let now = Instant::now();
        let m = message(Some(10), now);
        assert_eq!(m.remaining_expiry_at(now), Some(10));
        assert_eq!(
            m.remaining_expiry_at(now + Duration::from_millis(2500)),
            Some(8)
        );
        assert!(!m.is_expired_at(now + Duration::from_millis(9999)));
        assert!(m.is_expired_at(now + Duration::from_secs(10)));
        let forever = message(None, now);
        assert_eq!(forever.remaining_expiry_at(now), None);
        assert!(!forever.is_expired_at(now + Duration::from_secs(1 << 30)));
    }

    #[test]
    fn subscription_ids_are_kept_once_each() {
        let mut ids = SubscriptionIds::default();
        assert!(ids.as_slice().is_empty());
        ids.add(3);
        ids.add(3);
        assert_eq!(ids.as_slice(), &[3]);
        ids.add(7);
        ids.add(3);
        ids.add(9);
        assert_eq!(ids.as_slice(), &[3, 7, 9]);
    }
}
