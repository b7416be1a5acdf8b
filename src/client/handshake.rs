//! The CONNECT handshake: validate the first packet, start the writer, attach to a session.
//!
//! Owns: the checks CONNECT needs before a session exists (client identifier rules, keepalive
//! cap, authentication method, will topic), refusals with their CONNACK codes, and the
//! `ConnectRequest` handed to the router (which answers CONNACK itself, so that it precedes
//! any redelivery). Must not: read further packets or touch session state.

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use log::{info, warn};

use super::{spawn_writer, ClientHandle, WriterSetup};
use crate::config::Config;
use crate::mqtt::topic::validate_topic_name;
use crate::mqtt::{ConnAck, Connect, Packet, ProtocolVersion, ReasonCode};
use crate::queue::{ConnectRequest, ConnectionRef, QueueHandle};

/// Numbers server-assigned client identifiers.
static ASSIGNED_IDS: AtomicU64 = AtomicU64::new(1);

/// A connection attached to its session.
pub(super) struct Accepted {
    pub client_id: String,
    pub version: ProtocolVersion,
    /// The keepalive in force, after the server's cap.
    pub keep_alive: u16,
    /// The Session Expiry Interval of CONNECT (0 for a 3.1.1 clean session).
    pub session_expiry: u32,
    pub writer: ClientHandle,
    pub from: ConnectionRef,
}

/// Validates CONNECT, starts the writer and registers with the router; `None` when refused.
pub(super) fn handshake(
    stream: &Arc<TcpStream>,
    peer: SocketAddr,
    connection_id: u64,
    connect: Connect,
    queue: QueueHandle,
    config: &Config,
) -> Option<Accepted> {
    let version = connect.protocol;
    let mut client_id = connect.client_id;
    let mut assigned = false;
    let cap = config.max_keep_alive;
    let over_cap = cap < u16::MAX && (connect.keep_alive == 0 || connect.keep_alive > cap);
    let refusal = if client_id.is_empty() {
        if version == ProtocolVersion::V3_1
            || (version == ProtocolVersion::V3_1_1 && !connect.clean_start)
        {
            // [MQTT-3.1.3-8] An empty client id needs clean session 1; 3.1 needs 1 to 23
            // characters.
            Some(ReasonCode::ClientIdentifierNotValid)
        } else {
            // [MQTT-3.1.3-6] The server assigns a unique identifier.
            client_id = format!("auto-{}", ASSIGNED_IDS.fetch_add(1, Ordering::Relaxed));
            assigned = true;
            None
        }
    } else if version == ProtocolVersion::V3_1 && client_id.chars().count() > 23 {
        Some(ReasonCode::ClientIdentifierNotValid)
    } else {
        None
    };
    let refusal = refusal.or(if over_cap && !version.is_v5() {
        // A 3.1.1 client cannot be told a shorter keepalive; mosquitto refuses it this way.
        Some(ReasonCode::ClientIdentifierNotValid)
    } else if connect.properties.authentication_method.is_some() {
        // [MQTT-4.12.0-1] No enhanced authentication method is supported.
        Some(ReasonCode::BadAuthenticationMethod)
    } else if connect
        .will
        .as_ref()
        .is_some_and(|will| validate_topic_name(&will.topic).is_err())
    {
        Some(ReasonCode::TopicNameInvalid)
    } else {
        None
    });
    if let Some(reason) = refusal {
        warn!("{peer}: refused client {client_id:?}: {reason:?}");
        refuse(stream, connection_id, version, reason, queue, config);
        return None;
    }

    // [MQTT-3.2.2-21] A capped keepalive is announced as Server Keep Alive.
    let (keep_alive, server_keep_alive) = if over_cap {
        (cap, Some(cap))
    } else {
        (connect.keep_alive, None)
    };
    let properties = &connect.properties;
    let setup = WriterSetup {
        stream: Arc::clone(stream),
        connection_id,
        version,
        topic_alias_maximum: if version.is_v5() {
            properties.topic_alias_maximum.unwrap_or(0)
        } else {
            0
        },
        write_timeout: config.write_timeout,
    };
    let writer = match spawn_writer(setup, queue.clone(), config) {
        Ok(writer) => writer,
        Err(e) => {
            warn!("{peer}: cannot start writer thread: {e}");
            return None;
        }
    };
    let session_expiry = if version.is_v5() {
        properties.session_expiry_interval.unwrap_or(0)
    } else if connect.clean_start {
        0
    } else {
        u32::MAX
    };
    let request = ConnectRequest {
        connection_id,
        client_id: client_id.clone(),
        assigned_client_id: assigned,
        clean_start: connect.clean_start,
        session_expiry,
        version,
        will: connect.will,
        receive_maximum: properties.receive_maximum.unwrap_or(u16::MAX),
        max_packet_size: properties.maximum_packet_size,
        problem_information: properties.request_problem_information.unwrap_or(true),
        response_information: properties.request_response_information.unwrap_or(false),
        server_keep_alive,
        writer: writer.clone(),
    };
    let from = match queue.connect(request) {
        Ok(from) => {
            queue.stats().connect_answered(ReasonCode::Success);
            from
        }
        Err(_) => {
            writer.close(None);
            return None;
        }
    };
    info!(
        "client {client_id} connected from {peer} ({}, clean {}, keepalive {keep_alive}s)",
        version_name(version),
        connect.clean_start,
    );
    Some(Accepted {
        client_id,
        version,
        keep_alive,
        session_expiry,
        writer,
        from,
    })
}

/// Answers a refused CONNECT with a CONNACK carrying `reason` and closes.
pub(super) fn refuse(
    stream: &Arc<TcpStream>,
    connection_id: u64,
    version: ProtocolVersion,
    reason: ReasonCode,
    queue: QueueHandle,
    config: &Config,
) {
    let setup = WriterSetup {
        stream: Arc::clone(stream),
        connection_id,
        version,
        topic_alias_maximum: 0,
        write_timeout: config.write_timeout,
    };
    queue.stats().connect_answered(reason);
    if let Ok(writer) = spawn_writer(setup, queue, config) {
        let _ = writer.send_packet(Packet::ConnAck(ConnAck {
            session_present: false,
            reason,
            properties: Default::default(),
        }));
        writer.close(None);
    }
}

fn version_name(version: ProtocolVersion) -> &'static str {
    match version {
        ProtocolVersion::V3_1 => "MQTT 3.1",
        ProtocolVersion::V3_1_1 => "MQTT 3.1.1",
        ProtocolVersion::V5 => "MQTT 5.0",
    }
}
