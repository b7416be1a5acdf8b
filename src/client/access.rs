//! Access control on the reader thread: credentials re-checked after a reload, PUBLISH and
//! SUBSCRIBE checked against the ACL file and the HTTP service, and the answers to refusals.
//!
//! Owns: the reader's side of `auth` (the router checks read access per delivery itself).
//! Must not: touch session state; a refused PUBLISH is answered here and never reaches the router.

use log::{debug, info};

use super::ClientHandle;
use crate::auth::ClientAuth;
use crate::config::Config;
use crate::mqtt::{Ack, Packet, Publish, QoS, ReasonCode, Subscribe};

/// False when a reload made this client's credentials invalid: it is then disconnected.
pub(super) fn still_valid(auth: &mut Option<ClientAuth>) -> bool {
    auth.as_mut().is_none_or(ClientAuth::still_valid)
}

/// The indexes of the filters access control refuses.
pub(super) fn refused_filters(
    auth: &mut Option<ClientAuth>,
    client_id: &str,
    subscribe: &Subscribe,
) -> Vec<usize> {
    let Some(auth) = auth else {
        return Vec::new();
    };
    let refused: Vec<usize> = subscribe
        .filters
        .iter()
        .enumerate()
        .filter(|(_, (filter, _))| !auth.may_subscribe(filter))
        .map(|(index, _)| index)
        .collect();
    for &index in &refused {
        info!(
            "client {client_id}: SUBSCRIBE to {:?} denied",
            subscribe.filters[index].0
        );
    }
    refused
}

/// Why a PUBLISH is not routed (None: it may be): denied by access control, or larger than
/// `message_size_limit`.
pub(super) fn publish_refusal(
    auth: &mut Option<ClientAuth>,
    client_id: &str,
    publish: &Publish,
    config: &Config,
) -> Option<ReasonCode> {
    if config.message_size_limit > 0 && publish.payload.len() > config.message_size_limit {
        info!(
            "client {client_id}: PUBLISH to {:?} dropped: {} bytes exceed message_size_limit",
            publish.topic,
            publish.payload.len()
        );
        // mosquitto answers 0x83 (implementation specific) under MQTT 5.
        return Some(ReasonCode::ImplementationSpecificError);
    }
    let auth = auth.as_mut()?;
    if auth.may_publish(&publish.topic) {
        return None;
    }
    debug!("client {client_id}: PUBLISH to {:?} denied", publish.topic);
    Some(ReasonCode::NotAuthorized)
}

/// Answers a refused PUBLISH as mosquitto does: QoS 0 is dropped silently; QoS 1 and 2 are
/// acknowledged (PUBACK or PUBREC) with `reason`, which 3.1.1 cannot carry, so for 3.1.1
/// clients the message just disappears.
pub(super) fn answer_refused(writer: &ClientHandle, publish: &Publish, reason: ReasonCode) {
    let Some(packet_id) = publish.packet_id else {
        return;
    };
    let ack = Ack {
        reason,
        ..Ack::new(packet_id)
    };
    let packet = match publish.qos {
        QoS::AtMostOnce => return,
        QoS::AtLeastOnce => Packet::PubAck(ack),
        QoS::ExactlyOnce => Packet::PubRec(ack),
    };
    let _ = writer.send_packet(packet);
}
