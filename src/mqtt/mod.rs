//! The MQTT packet model and its codec, one model for MQTT 3.1, 3.1.1 and 5.0.
//!
//! Owns: the packet types, framing (`frame`), the byte-level primitives, v5 properties,
//! reason codes, topic validation and decode errors. Must not: do socket I/O beyond the
//! `Read`/`Write` it is handed, know about sessions or routing, or panic on any input.
//!
//! Versions differ only in what the codec reads and writes: a 3.1.1 packet never carries
//! properties, and a v5 reason code is mapped to the nearest 3.1.1 return code on the way out.

mod ack;
mod auth;
mod connack;
mod connect;
mod disconnect;
pub mod error;
pub mod frame;
pub mod primitives;
pub mod properties;
mod publish;
pub mod reason;
mod subscribe;
pub mod topic;
mod unsubscribe;

#[cfg(test)]
mod testutil;

use std::num::NonZeroU16;
use std::sync::Arc;

pub use connack::v3_return_code;
pub use error::DecodeError;
pub use frame::{decode_packet, read_client_packet, read_packet};
pub use properties::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
    PropertyOrder, PublishProperties, SubscribeProperties, UnsubscribeProperties, UserProperties,
    WillProperties,
};
pub use publish::{encode_publish, PublishView};
pub use reason::ReasonCode;

/// A PUBLISH payload, shared by every subscriber a message goes to: fan-out copies a refcount.
pub type Payload = Arc<[u8]>;

/// A packet identifier; zero is not a valid identifier, so it cannot be represented.
pub type PacketId = NonZeroU16;

/// Which protocol a connection speaks, fixed by its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProtocolVersion {
    /// MQTT 3.1: protocol name `MQIsdp`, level 3.
    V3_1,
    /// MQTT 3.1.1: protocol name `MQTT`, level 4.
    V3_1_1,
    /// MQTT 5.0: protocol name `MQTT`, level 5.
    V5,
}

impl ProtocolVersion {
    /// The protocol level byte of CONNECT.
    pub fn level(self) -> u8 {
        match self {
            ProtocolVersion::V3_1 => 3,
            ProtocolVersion::V3_1_1 => 4,
            ProtocolVersion::V5 => 5,
        }
    }

    pub fn is_v5(self) -> bool {
        self == ProtocolVersion::V5
    }
}

/// Quality of service; ordered so that `min` gives the delivery QoS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(u8)]
pub enum QoS {
    #[default]
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl TryFrom<u8> for QoS {
    type Error = DecodeError;
    fn try_from(value: u8) -> Result<Self, DecodeError> {
        match value {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            2 => Ok(QoS::ExactlyOnce),
            _ => Err(DecodeError::Malformed(
                "[MQTT-3.3.1-4] QoS 3 is not a valid QoS",
            )),
        }
    }
}

/// Every control packet, as decoded from or encoded to the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

/// CONNECT. `protocol` is what the client asked for; decoding fails with
/// `DecodeError::UnsupportedProtocol` for a level we do not speak.
#[derive(Debug, Clone, PartialEq)]
pub struct Connect {
    pub protocol: ProtocolVersion,
    /// Clean Session (3.1, 3.1.1) or Clean Start (5.0).
    pub clean_start: bool,
    /// Seconds; 0 turns keepalive off.
    pub keep_alive: u16,
    pub client_id: String,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
    pub properties: ConnectProperties,
    /// mosquitto's bridge flag: bit 7 of a 3.1 or 3.1.1 protocol level (`try_private`). A
    /// bridge's subscriptions get No Local and Retain As Published, so nothing loops back.
    pub bridge: bool,
}

/// The will message carried by CONNECT.
#[derive(Debug, Clone, PartialEq)]
pub struct Will {
    pub topic: String,
    pub payload: Payload,
    pub qos: QoS,
    pub retain: bool,
    pub properties: WillProperties,
}

/// CONNACK. `reason` uses the v5 code space; for 3.1/3.1.1 the encoder writes the matching
/// return code (0x84 -> 1, 0x85 -> 2, 0x88 -> 3, 0x86 -> 4, 0x87 -> 5, other failures -> 3).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConnAck {
    pub session_present: bool,
    pub reason: ReasonCode,
    pub properties: ConnAckProperties,
}

/// PUBLISH. `packet_id` is `Some` exactly when `qos` is 1 or 2.
#[derive(Debug, Clone, PartialEq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// May be empty only in v5, when a topic alias stands for it.
    pub topic: String,
    pub packet_id: Option<PacketId>,
    pub properties: PublishProperties,
    pub payload: Payload,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one shape. In v5 the reason code and properties are
/// omitted on the wire when the code is Success and there are no properties.
#[derive(Debug, Clone, PartialEq)]
pub struct Ack {
    pub packet_id: PacketId,
    pub reason: ReasonCode,
    pub properties: AckProperties,
}

impl Ack {
    /// A successful acknowledgement with no properties.
    pub fn new(packet_id: PacketId) -> Self {
        Ack {
            packet_id,
            reason: ReasonCode::Success,
            properties: AckProperties::default(),
        }
    }
}

/// Retain Handling subscription option (v5); always `SendOnSubscribe` for 3.1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum RetainHandling {
    #[default]
    SendOnSubscribe = 0,
    SendIfNewSubscription = 1,
    DoNotSend = 2,
}

/// The options byte of one SUBSCRIBE entry. Only `qos` exists before v5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

/// SUBSCRIBE: at least one (filter, options) entry. Filters are not validated by the codec
/// beyond being UTF-8 strings; the broker validates each and answers per filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscribe {
    pub packet_id: PacketId,
    pub filters: Vec<(String, SubscriptionOptions)>,
    pub properties: SubscribeProperties,
}

/// SUBACK: one reason code per filter (GrantedQoS0/1/2 or a failure; 3.1.1 writes 0x80 for any
/// failure).
#[derive(Debug, Clone, PartialEq)]
pub struct SubAck {
    pub packet_id: PacketId,
    pub reasons: Vec<ReasonCode>,
    pub properties: AckProperties,
}

/// UNSUBSCRIBE: at least one filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Unsubscribe {
    pub packet_id: PacketId,
    pub filters: Vec<String>,
    pub properties: UnsubscribeProperties,
}

/// UNSUBACK: `reasons` has one code per filter in v5 and is empty (not written) before v5.
#[derive(Debug, Clone, PartialEq)]
pub struct UnsubAck {
    pub packet_id: PacketId,
    pub reasons: Vec<ReasonCode>,
    pub properties: AckProperties,
}

/// DISCONNECT. Before v5 it has no body; the decoder yields `NormalDisconnection`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Disconnect {
    pub reason: ReasonCode,
    pub properties: DisconnectProperties,
}

/// AUTH (v5 only; a protocol error before v5).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Auth {
    pub reason: ReasonCode,
    pub properties: AuthProperties,
}
