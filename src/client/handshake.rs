//! The CONNECT handshake: validate the first packet, start the writer, attach to a session.
//!
//! Owns: the checks CONNECT needs before a session exists (client identifier rules, keepalive
//! cap, authentication method, will topic), refusals with their CONNACK codes, and the
//! `ConnectRequest` handed to the router (which answers CONNACK itself, so that it precedes
//! any redelivery). Must not: read further packets or touch session state.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use log::{info, warn};

use super::{spawn_writer, ClientHandle, WriterSetup};
use crate::auth::ClientAuth;
use crate::config::Config;
use crate::mqtt::topic::validate_topic_name;
use crate::mqtt::{ConnAck, ConnAckProperties, Connect, Packet, ProtocolVersion, QoS, ReasonCode};
use crate::queue::{ConnectRequest, ConnectionRef, QueueHandle};
use crate::transport::Output;

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
    /// Credentials and access checks (None: no authentication configured).
    pub auth: Option<ClientAuth>,
    /// A 3.1/3.1.1 bridge (CONNECT's bridge flag): its subscriptions get No Local and Retain
    /// As Published, as mosquitto gives them.
    pub bridge: bool,
}

/// Validates CONNECT, starts the writer and registers with the router; `None` when refused.
pub(super) fn handshake(
    output: Output,
    peer: SocketAddr,
    connection_id: u64,
    connect: Connect,
    queue: QueueHandle,
    config: &Config,
) -> Option<Accepted> {
    let version = connect.protocol;
    let bridge = connect.bridge && !version.is_v5();
    let mut client_id = connect.client_id;
    let mut assigned = false;
    // As mosquitto: with a cap (65535 by default), an MQTT 5 client asking for more or for none
    // is given the cap; a 3.1 or 3.1.1 client asking for more is refused.
    let cap = config.max_keep_alive;
    let over_cap = cap != 0 && (connect.keep_alive == 0 || connect.keep_alive > cap);
    let refusal = if client_id.is_empty() {
        if version == ProtocolVersion::V3_1
            || (version == ProtocolVersion::V3_1_1 && !connect.clean_start)
            || !config.allow_zero_length_clientid
        {
            // [MQTT-3.1.3-8] An empty client id needs clean session 1; 3.1 needs one. (3.1's
            // limit of 23 characters is not enforced: mosquitto accepts longer ones.)
            Some(ReasonCode::ClientIdentifierNotValid)
        } else {
            // [MQTT-3.1.3-6] The server assigns a unique identifier.
            client_id = assigned_client_id(&config.auto_id_prefix);
            assigned = true;
            None
        }
    } else {
        None
    };
    let refusal = refusal.or(
        if cap != 0 && connect.keep_alive > cap && !version.is_v5() {
            // A 3.1.1 client cannot be told a shorter keepalive; mosquitto refuses it this way.
            Some(ReasonCode::ClientIdentifierNotValid)
        } else if connect.properties.authentication_method.is_some() {
            // [MQTT-4.12.0-1] No enhanced authentication method is supported.
            Some(ReasonCode::BadAuthenticationMethod)
        } else {
            None
        },
    );
    let refusal = refusal.or_else(|| {
        let prefix = config.clientid_prefixes.as_deref()?;
        (!client_id.starts_with(prefix)).then_some(ReasonCode::NotAuthorized)
    });
    if let Some(will) = &connect.will {
        if let Err(e) = validate_topic_name(&will.topic) {
            // As mosquitto: closed without a CONNACK, like a malformed CONNECT.
            warn!(
                "{peer}: refused client {client_id:?}: will topic {:?}: {e}",
                will.topic
            );
            return None;
        }
        // As mosquitto: a will above `maximum_qos`, or retained while `retain_available` is
        // false, gets CONNACK 0x9B / 0x9A (MQTT 5) or a close without CONNACK (3.1/3.1.1).
        let beyond = if will.qos > config.maximum_qos {
            Some(ReasonCode::QoSNotSupported)
        } else if will.retain && !config.retain_available {
            Some(ReasonCode::RetainNotSupported)
        } else {
            None
        };
        if let Some(reason) = beyond {
            warn!("{peer}: refused client {client_id:?}: will: {reason:?}");
            if version.is_v5() {
                refuse(output, connection_id, version, reason, queue, config);
            }
            return None;
        }
    }
    if let Some(reason) = refusal {
        warn!("{peer}: refused client {client_id:?}: {reason:?}");
        refuse(output, connection_id, version, reason, queue, config);
        return None;
    }
    let auth = match authenticate(
        &connect.username,
        &connect.password,
        &client_id,
        peer,
        config,
    ) {
        Ok(auth) => auth,
        Err(why) => {
            // mosquitto 2 answers every authentication failure "not authorised"; the client
            // gets no session and its will is dropped.
            warn!("{peer}: refused client {client_id:?}: {why}");
            let reason = ReasonCode::NotAuthorized;
            refuse(output, connection_id, version, reason, queue, config);
            return None;
        }
    };

    // [MQTT-3.2.2-21] A capped keepalive is announced as Server Keep Alive.
    let (keep_alive, server_keep_alive) = if over_cap && version.is_v5() {
        (cap, Some(cap))
    } else {
        (connect.keep_alive, None)
    };
    let properties = &connect.properties;
    let setup = WriterSetup {
        output,
        connection_id,
        version,
        // Outbound topic aliases are the sender's choice [MQTT-3.3.2-12]; mosquitto 2.0 never
        // uses them, so every PUBLISH carries its topic, whatever the client allows.
        topic_alias_maximum: 0,
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
        read_acl: auth.as_ref().and_then(ClientAuth::read_acl),
        identity: crate::auth::Identity::of(connect.username.as_deref(), config),
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
        auth,
        bridge,
    })
}

/// Checks credentials when the listener has an authorizer. The will's topic is checked when
/// the will is sent: mosquitto 2.0 accepts the CONNECT either way.
fn authenticate(
    username: &Option<String>,
    password: &Option<Vec<u8>>,
    client_id: &str,
    peer: SocketAddr,
    config: &Config,
) -> Result<Option<ClientAuth>, String> {
    let Some(authorizer) = &config.authorizer else {
        return Ok(None);
    };
    let username = username.as_deref();
    let auth = ClientAuth::connect(authorizer, client_id, username, password.as_deref(), peer)
        .map_err(|refusal| format!("{refusal:?} (user {username:?})"))?;
    Ok(Some(auth))
}

/// Answers a refused CONNECT with a CONNACK carrying `reason` and closes.
pub(super) fn refuse(
    output: Output,
    connection_id: u64,
    version: ProtocolVersion,
    reason: ReasonCode,
    queue: QueueHandle,
    config: &Config,
) {
    let setup = WriterSetup {
        output,
        connection_id,
        version,
        topic_alias_maximum: 0,
        write_timeout: config.write_timeout,
    };
    queue.stats().connect_answered(reason);
    if let Ok(writer) = spawn_writer(setup, queue, config) {
        // mosquitto announces a Maximum QoS below 2 in refusals too.
        let properties = ConnAckProperties {
            maximum_qos: (version.is_v5() && config.maximum_qos < QoS::ExactlyOnce)
                .then_some(config.maximum_qos),
            ..Default::default()
        };
        let _ = writer.send_packet(Packet::ConnAck(ConnAck {
            session_present: false,
            reason,
            properties,
        }));
        writer.close(None);
    }
}

/// A unique client identifier in mosquitto's shape (`auto-` and 36 characters laid out like a
/// UUID), so that a client that checks its length or form sees what mosquitto gives it.
fn assigned_client_id(prefix: &str) -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::BuildHasher;
    let n = ASSIGNED_IDS.fetch_add(1, Ordering::Relaxed);
    // Unpredictable across runs (a fresh random key) and unique within one (the counter).
    let random = RandomState::new().hash_one(n);
    let hex = format!("{random:016X}{n:016X}");
    format!(
        "{prefix}{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

fn version_name(version: ProtocolVersion) -> &'static str {
    match version {
        ProtocolVersion::V3_1 => "MQTT 3.1",
        ProtocolVersion::V3_1_1 => "MQTT 3.1.1",
        ProtocolVersion::V5 => "MQTT 5.0",
    }
}
