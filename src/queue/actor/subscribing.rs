//! The router's SUBSCRIBE and UNSUBSCRIBE: filter checks, the subscription index and shared
//! groups, SUBACK and UNSUBACK, and retained messages on subscribe.
//!
//! Owns: a session's subscriptions. Must not: deliver anything but retained messages, and
//! those only through the session's retained feed (streamed at the client's pace).

use std::time::Instant;

use log::debug;

use super::*;

impl QueueActor {
    pub(super) fn handle_subscribe(&mut self, from: ConnectionRef, subscribe: Subscribe) {
        self.subscribe_refusing(from, subscribe, &[]);
    }

    /// SUBSCRIBE; the filters at the indexes in `refused` were denied by access control.
    pub(super) fn subscribe_refusing(
        &mut self,
        from: ConnectionRef,
        subscribe: Subscribe,
        refused: &[usize],
    ) {
        let Some(session) = attached(&mut self.sessions, from) else {
            return;
        };
        let Some(online) = &session.online else {
            return;
        };
        let writer = online.writer.clone();
        let problem_information = online.problem_information;
        let v5 = online.version.is_v5();
        let identifier = subscribe.properties.subscription_identifier;
        let mut reasons = Vec::with_capacity(subscribe.filters.len());
        let mut problems = Vec::new();
        let mut retained_for: Vec<(String, QoS)> = Vec::new();
        for (index, (filter, options)) in subscribe.filters.into_iter().enumerate() {
            if refused.contains(&index) {
                // SUBACK 0x87 (0x80 before v5).
                reasons.push(ReasonCode::NotAuthorized);
                continue;
            }
            if let Err(e) = validate_topic_filter(&filter) {
                debug!(
                    "client {}: invalid filter {filter:?}: {e}",
                    session.client_id
                );
                problems.push(format!("{filter:?}: {e}"));
                reasons.push(ReasonCode::TopicFilterInvalid);
                continue;
            }
            let shared = split_shared(&filter).map(|(_, inner)| inner.to_owned());
            if shared.is_some() && options.no_local {
                // [MQTT-3.8.3-4] No Local on a shared subscription is a protocol error.
                debug!(
                    "client {}: No Local set on shared subscription {filter:?}",
                    session.client_id
                );
                writer.close(Some(Disconnect {
                    reason: ReasonCode::ProtocolError,
                    properties: DisconnectProperties::default(),
                }));
                return;
            }
            let subscription = Subscription {
                options,
                identifier,
            };
            let existed = session
                .filters
                .insert(filter.clone(), subscription)
                .is_some();
            if let Some(journal) = &session.outbox.journal {
                journal.subscribed(&filter, &subscription);
            }
            reasons.push(ReasonCode::granted(options.qos));
            if let Some(inner) = shared {
                let joined = self.shared.join(&filter, &inner, from.slot, subscription);
                if joined.new_group {
                    self.subscriptions
                        .insert(&inner, Target::Group(joined.group), subscription);
                }
                // 5.0 section 4.8.2: no retained messages for a shared subscription.
            } else {
                self.subscriptions
                    .insert(&filter, Target::Session(from.slot), subscription);
                // [MQTT-3.3.1-9..11] Retained messages on subscribe, as Retain Handling says.
                let send_retained = match options.retain_handling {
                    RetainHandling::SendOnSubscribe => true,
                    RetainHandling::SendIfNewSubscription => !existed,
                    RetainHandling::DoNotSend => false,
                };
                if send_retained {
                    retained_for.push((filter, options.qos));
                }
            }
        }
        let mut properties = AckProperties::default();
        if v5 && problem_information && !problems.is_empty() {
            // [MQTT-3.1.2-29] Only when the client did not ask us to leave it out.
            properties.reason_string =
                Some(format!("invalid topic filter {}", problems.join("; ")));
        }
        // [MQTT-3.8.4-1] SUBACK before the retained messages it lets through.
        let _ = writer.send_packet(Packet::SubAck(SubAck {
            packet_id: subscribe.packet_id,
            reasons,
            properties,
        }));
        // The retained messages are not queued all at once: the session feeds them into its
        // queue a window at a time as the client takes them (`Session::pump`).
        let now = Instant::now();
        for (filter, granted) in retained_for {
            let messages = self.retained.matching(&filter, now);
            if messages.is_empty() {
                continue;
            }
            let Some(session) = self.sessions[from.slot as usize].as_mut() else {
                return;
            };
            // Retained messages are checked against the ACL like any delivery.
            let mut messages = messages;
            messages.retain(|message| session.may_read(&message.publish.topic));
            session.retained_feeds.push_back(RetainedFeed {
                messages: messages.into_iter(),
                granted,
                identifier,
            });
            self.mark_dirty(from.slot);
        }
    }

    /// Removes `slot`'s subscription to `filter` (plain or `$share/...`) from the index;
    /// true if there was one.
    pub(super) fn remove_subscription(&mut self, filter: &str, slot: u32) -> bool {
        match split_shared(filter) {
            Some(_) => {
                let (removed, emptied) = self.shared.leave(filter, slot);
                if let Some((group, inner)) = emptied {
                    self.subscriptions.remove(&inner, Target::Group(group));
                }
                removed
            }
            None => self
                .subscriptions
                .remove(filter, Target::Session(slot))
                .is_some(),
        }
    }

    pub(super) fn handle_unsubscribe(&mut self, from: ConnectionRef, unsubscribe: Unsubscribe) {
        let Some(session) = attached(&mut self.sessions, from) else {
            return;
        };
        let Some(online) = &session.online else {
            return;
        };
        let writer = online.writer.clone();
        let v5 = online.version.is_v5();
        let mut reasons = Vec::new();
        let mut existed_all = Vec::with_capacity(unsubscribe.filters.len());
        for filter in &unsubscribe.filters {
            let existed = session.filters.remove(filter.as_str()).is_some();
            if let (true, Some(journal)) = (existed, &session.outbox.journal) {
                journal.unsubscribed(filter);
            }
            existed_all.push(existed);
        }
        for (filter, existed) in unsubscribe.filters.iter().zip(existed_all) {
            if existed {
                self.remove_subscription(filter, from.slot);
            }
            if v5 {
                // [MQTT-3.11.3-2] 0x11 where there was no such subscription.
                reasons.push(if existed {
                    ReasonCode::Success
                } else {
                    ReasonCode::NoSubscriptionExisted
                });
            }
        }
        // [MQTT-3.10.4-4] UNSUBACK even when nothing matched.
        let _ = writer.send_packet(Packet::UnsubAck(UnsubAck {
            packet_id: unsubscribe.packet_id,
            reasons,
            properties: AckProperties::default(),
        }));
    }
}
