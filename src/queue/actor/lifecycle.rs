//! The router's session lifecycle: CONNECT (create, resume, take over), DISCONNECT, session
//! expiry and will-delay timers, wills, and shutdown.
//!
//! Owns: when a session begins and ends and what happens then. Must not: route messages other
//! than wills (it hands those to `route`) or block on a client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use super::*;
use crate::config::PROTOCOL_MAX_PACKET_SIZE;

impl QueueActor {
    pub(super) fn handle_connect(&mut self, request: ConnectRequest) -> ConnectionRef {
        let client_id: Arc<str> = Arc::from(request.client_id.as_str());
        let mut session_present = false;
        let resumed = match self.by_client_id.get(&client_id).copied() {
            Some(slot) => {
                let ends = request.clean_start
                    || self.sessions[slot as usize]
                        .as_ref()
                        .is_none_or(|s| s.expiry == 0);
                self.take_over(slot, ends);
                let session = self.sessions[slot as usize]
                    .as_mut()
                    .expect("the client id map points at live sessions");
                if request.clean_start || session.expiry == 0 {
                    // [MQTT-3.1.2-4] Clean start discards the session (a delayed will goes now).
                    self.end_session(slot);
                    None
                } else {
                    // [MQTT-3.1.3-9] A new connection before the will delay passed: no will.
                    session.delayed_will = None;
                    session_present = true;
                    Some(slot)
                }
            }
            None => None,
        };
        let slot = resumed.unwrap_or_else(|| {
            let session = Session::new(
                Arc::clone(&client_id),
                request.session_expiry,
                self.limits.clone(),
            );
            let slot = self.insert_session(session);
            self.by_client_id.insert(client_id, slot);
            slot
        });

        let version = request.version;
        let writer = request.writer;
        writer.bind_session(slot);
        let mut properties = ConnAckProperties::default();
        if version.is_v5() {
            if request.assigned_client_id {
                // [MQTT-3.2.2-16]
                properties.assigned_client_identifier = Some(request.client_id.clone());
            }
            // As mosquitto: Receive Maximum always; Maximum Packet Size only when one is
            // configured below the protocol's limit; no Response Information (a server may
            // leave Request Response Information unanswered, [MQTT-3.1.2-28] only says it may).
            properties.receive_maximum = Some(self.receive_maximum);
            if (self.max_packet_size as usize) < PROTOCOL_MAX_PACKET_SIZE {
                properties.maximum_packet_size = Some(self.max_packet_size);
            }
            if self.topic_alias_maximum > 0 {
                properties.topic_alias_maximum = Some(self.topic_alias_maximum);
            }
            properties.server_keep_alive = request.server_keep_alive;
            // Wildcard, subscription identifier and shared subscriptions are all available:
            // their defaults say so, no property needed. Retain and QoS 2 are announced only
            // when configured off, as mosquitto does (the encoder keeps its order).
            if !self.retain_available {
                properties.retain_available = Some(false);
            }
            if self.maximum_qos < QoS::ExactlyOnce {
                properties.maximum_qos = Some(self.maximum_qos);
            }
        }
        let _ = writer.send_packet(Packet::ConnAck(ConnAck {
            session_present,
            reason: ReasonCode::Success,
            properties,
        }));

        let session = self.sessions[slot as usize]
            .as_mut()
            .expect("slot was just filled or resumed");
        session.expiry = match self.persistent_client_expiration {
            // mosquitto's persistent_client_expiration: a 3.1/3.1.1 session that would never
            // expire is dropped after this long offline.
            Some(limit) if !version.is_v5() && request.session_expiry == u32::MAX => limit,
            _ => request.session_expiry,
        };
        session.last_connection = request.connection_id;
        session.read_acl = request.read_acl;
        if std::mem::take(&mut session.acl_unchecked) {
            // Queued while the client was away after a restart, before its ACL was known.
            if let Some(acl) = &session.read_acl {
                session
                    .outbox
                    .drop_queued_unless(|d| acl.may_read(&d.message.publish.topic));
            }
        }
        persist_connected(
            &self.persist,
            slot,
            session,
            version,
            request.will.as_ref(),
            request.identity,
        );
        // Acknowledgements held for the previous connection are gone with it: the client
        // resends those PUBLISH packets.
        session.held_acks.clear();
        session.outbox.set_receive_maximum(request.receive_maximum);
        // [MQTT-4.4.0-1] Resend unacknowledged messages before anything new.
        session.outbox.resend_inflight(&writer);
        session.online = Some(Online {
            connection_id: request.connection_id,
            writer,
            version,
            will: request.will,
            max_packet_size: request.max_packet_size,
            problem_information: request.problem_information,
        });
        session.pump();
        ConnectionRef {
            slot,
            connection: request.connection_id,
        }
    }

    /// Closes the connection currently attached to `slot`, if any [MQTT-3.1.4-3]. Its will is
    /// published only when the session ends with it (`ends_session`: the new connection starts
    /// clean, or the session expires with its connection); a session that carries on under
    /// the new connection keeps quiet, as with mosquitto (a will is for a client that is gone,
    /// and [MQTT-3.1.3-9] withholds a delayed one from a client that came back).
    pub(super) fn take_over(&mut self, slot: u32, ends_session: bool) {
        let Some(session) = self.sessions[slot as usize].as_mut() else {
            return;
        };
        let Some(old) = session.online.take() else {
            return;
        };
        info!(
            "client {} taken over by a new connection",
            session.client_id
        );
        old.writer.close(Some(Disconnect {
            reason: ReasonCode::SessionTakenOver,
            properties: DisconnectProperties::default(),
        }));
        self.release_held(slot, true);
        if let Some(will) = old.will {
            if ends_session {
                self.schedule_will(slot, will);
            } else {
                debug!("will of a taken-over session that carries on: not published");
            }
        }
    }

    pub(super) fn insert_session(&mut self, session: Session) -> u32 {
        match self.free_slots.pop() {
            Some(slot) => {
                self.sessions[slot as usize] = Some(session);
                slot
            }
            None => {
                self.sessions.push(Some(session));
                u32::try_from(self.sessions.len() - 1).expect("fewer than 4 billion sessions")
            }
        }
    }

    /// Removes a session and its subscriptions; a will still waiting out its delay is
    /// published now [MQTT-3.1.2-8].
    pub(super) fn end_session(&mut self, slot: u32) {
        self.release_held(slot, true);
        let Some(mut session) = self.sessions[slot as usize].take() else {
            return;
        };
        for filter in session.filters.keys() {
            self.remove_subscription(filter, slot);
        }
        if session.outbox.dropped > 0 {
            warn!(
                "client {}: {} messages were dropped because its queue was full",
                session.client_id, session.outbox.dropped
            );
        }
        if let Some(journal) = session.outbox.journal.take() {
            journal.delete();
        }
        self.by_client_id.remove(&session.client_id);
        self.free_slots.push(slot);
        debug!("session of client {} ended", session.client_id);
        // The session is out of its slot: its will is checked here.
        if let Some(will) = session.delayed_will.take() {
            if session.may_send_will(&will.topic) {
                self.send_will(slot, will);
            }
        }
    }

    pub(super) fn handle_disconnect(&mut self, from: ConnectionRef, ending: Ending) {
        let Some(session) = attached(&mut self.sessions, from) else {
            // A connection that was taken over: its session belongs to the new one.
            return;
        };
        let Some(online) = session.online.take() else {
            return;
        };
        let publish_will = match ending {
            Ending::Abnormal => true,
            Ending::Disconnect(disconnect) => {
                // [MQTT-3.14.2-2] The reader refused a change from 0 to non-zero.
                if let Some(expiry) = disconnect.properties.session_expiry_interval {
                    session.expiry = expiry;
                }
                // [MQTT-3.14.4-3] A normal DISCONNECT discards the will; 0x04 keeps it.
                disconnect.reason == ReasonCode::DisconnectWithWillMessage
            }
        };
        drop(online.writer);
        session.held_acks.clear();
        self.release_held(from.slot, true);
        if let (true, Some(will)) = (publish_will, online.will) {
            self.schedule_will(from.slot, will);
        }
        // Stored with the will still waiting out its delay, so that it survives a crash.
        self.save_offline(from.slot);
        self.schedule_session_end(from.slot);
    }

    /// Ends the session of `slot` now if its expiry is 0, or arms its expiry timer.
    pub(super) fn schedule_session_end(&mut self, slot: u32) {
        let Some(session) = self.sessions[slot as usize].as_ref() else {
            return;
        };
        match capped_session_expiry(session.expiry, self.persistent_client_expiration) {
            0 => self.end_session(slot),
            u32::MAX => {}
            secs => self.timers.arm(
                Duration::from_secs(u64::from(secs)),
                Timer {
                    kind: TimerKind::SessionExpiry,
                    slot,
                    token: session.last_connection,
                },
            ),
        }
    }

    /// Publishes a will now, or keeps it for its Will Delay Interval [MQTT-3.1.3-9]. A session
    /// that ends sooner publishes it then.
    pub(super) fn schedule_will(&mut self, slot: u32, will: Will) {
        let delay = will.properties.will_delay_interval.unwrap_or(0);
        let Some(session) = self.sessions[slot as usize].as_mut() else {
            return;
        };
        if delay == 0 || session.expiry == 0 {
            self.publish_will(slot, will);
            return;
        }
        session.delayed_will = Some(will);
        let token = session.last_connection;
        self.timers.arm(
            Duration::from_secs(u64::from(delay)),
            Timer {
                kind: TimerKind::WillDelay,
                slot,
                token,
            },
        );
    }

    pub(super) fn fire_timers(&mut self, now: Instant) {
        while let Some(timer) = self.timers.pop_due(now) {
            let Some(session) = self.sessions[timer.slot as usize].as_mut() else {
                continue;
            };
            // A connection attached since the timer was armed makes it stale.
            if session.online.is_some() || session.last_connection != timer.token {
                continue;
            }
            match timer.kind {
                TimerKind::WillDelay => {
                    if let Some(will) = session.delayed_will.take() {
                        if let Some(journal) = &session.outbox.journal {
                            journal.will_published(session.expiry);
                        }
                        self.publish_will(timer.slot, will);
                    }
                }
                TimerKind::SessionExpiry => {
                    debug!("session of client {} expired", session.client_id);
                    self.stats.session_expired();
                    self.end_session(timer.slot);
                }
            }
        }
    }

    pub(super) fn publish_will(&mut self, slot: u32, will: Will) {
        // As mosquitto 2.0: a will is checked against the ACL when it is sent, not at CONNECT.
        let session = self.sessions.get(slot as usize).and_then(Option::as_ref);
        if session.is_some_and(|s| !s.may_send_will(&will.topic)) {
            return;
        }
        self.send_will(slot, will);
    }

    /// Publishes a will already checked against its client's ACL.
    pub(super) fn send_will(&mut self, slot: u32, will: Will) {
        let Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        } = will;
        debug!("publishing will to {topic}");
        // [MQTT-3.1.3-10] The will's properties go with it.
        let publish = Publish {
            dup: false,
            qos,
            retain,
            topic,
            packet_id: None,
            properties: PublishProperties {
                payload_format_indicator: properties.payload_format_indicator,
                message_expiry_interval: properties.message_expiry_interval,
                topic_alias: None,
                response_topic: properties.response_topic,
                correlation_data: properties.correlation_data,
                user: properties.user,
                subscription_identifiers: Vec::new(),
                content_type: properties.content_type,
                order: properties.order,
            },
            payload,
        };
        self.route(slot, Arc::new(Message::new(publish)));
        // A will has no publisher left to slow down: congestion it met is nobody's to act on.
        self.congested.clear();
    }

    pub(super) fn handle_shutdown(&mut self) {
        for session in self.sessions.iter_mut().flatten() {
            if let Some(online) = session.online.take() {
                online.writer.close(Some(Disconnect {
                    reason: ReasonCode::ServerShuttingDown,
                    properties: DisconnectProperties::default(),
                }));
            }
        }
        info!("router closed every connection");
    }
}

/// Gives a session that outlives its connection a journal and writes its record; a session
/// that no longer does (resumed with expiry 0) is removed from the store.
fn persist_connected(
    persist: &Persistence,
    slot: u32,
    session: &mut Session,
    version: crate::mqtt::ProtocolVersion,
    will: Option<&Will>,
    identity: crate::auth::Identity,
) {
    if session.expiry == 0 {
        if let Some(old) = session.outbox.journal.take() {
            old.delete();
        }
        return;
    }
    if session.outbox.journal.is_none() {
        session.outbox.journal = persist.journal(slot, &session.client_id, session.expiry, version);
    }
    if let Some(journal) = session.outbox.journal.as_mut() {
        journal.set_version(version);
        journal.set_identity(Some(identity));
        journal.save(session.expiry, false, will);
    }
}

/// How long an offline session is kept: what the client asked for, but at most
/// `persistent_client_expiration` when that is set. mosquitto 2.0 takes the shorter of the two
/// for every session: `handle_connect` already gives a 3.1/3.1.1 session that never expires
/// the limit; this caps an MQTT 5 session that asked for longer (or changed it on DISCONNECT).
fn capped_session_expiry(requested: u32, limit: Option<u32>) -> u32 {
    match limit {
        Some(limit) => requested.min(limit),
        None => requested,
    }
}
