//! The layout of the store: redb's tables and the byte encoding of each record.
//!
//! Owns: table definitions, `SessionRecord`, `QueueEntry`, and turning messages and wills into
//! bytes and back (through the crate's own MQTT 5 codec, so that every property survives).
//! Must not: open the database or decide what is written when; `actor` does.
//!
//! Tables (keys → values):
//! - `sessions`: client id → `SessionRecord` (version, expiry, when it went offline, the
//!   client's identity, will)
//! - `subscriptions`: (client id, filter) → options byte + subscription identifier
//! - `queue`: (client id, delivery id) → `QueueEntry` (message id, QoS, flags, packet id, stage)
//! - `messages`: message id → expiry (wall clock) + the PUBLISH; stored once, however many
//!   sessions it is queued for
//! - `message_refs`: message id → how many `queue` rows point at it (the row goes at zero)
//! - `retained`: topic → expiry + the PUBLISH
//! - `inbound_qos2_held`: (client id, packet id) → the message as in `messages`: a QoS 2
//!   PUBLISH answered with PUBREC and held until its PUBREL routes it (mosquitto's order)

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::TableDefinition;

use crate::auth::Identity;
use crate::mqtt::{
    read_packet, Connect, ConnectProperties, Packet, PacketId, ProtocolVersion, Publish, QoS,
    RetainHandling, SubscriptionOptions, Will,
};
use crate::queue::message::Message;

pub const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
pub const SUBSCRIPTIONS: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("subscriptions");
pub const QUEUE: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("queue");
pub const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
pub const MESSAGE_REFS: TableDefinition<u64, u32> = TableDefinition::new("message_refs");
pub const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");
pub const INBOUND_QOS2: TableDefinition<(&str, u16), &[u8]> =
    TableDefinition::new("inbound_qos2_held");

/// A record that does not decode: the store was written by something else or is damaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord(pub String);

/// A session as stored. Subscriptions, queue and held inbound QoS 2 messages live in their own
/// tables.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    pub client_id: Arc<str>,
    pub version: ProtocolVersion,
    /// Seconds the session outlives its connection (`u32::MAX`: never expires).
    pub expiry: u32,
    /// Unix seconds when the connection ended; `None` while online (or online at a crash).
    pub offline_since: Option<u64>,
    /// The will of the connection attached when it was written.
    pub will: Option<Will>,
    /// Username and listener of that connection, to check its will and deliveries against
    /// the same ACL after a restart. `None` in records written before identities were stored.
    pub identity: Option<Identity>,
}

/// Marks an identity after the fixed part of a session record. Records written before
/// identities were stored have nothing there or their will's CONNECT, which starts with 0x10.
const IDENTITY_TAG: u8 = 0x01;
const HAS_USERNAME: u8 = 1;
const HAS_LISTENER: u8 = 2;

fn put_text(out: &mut Vec<u8>, text: &str) {
    // Usernames are MQTT strings (65,535 bytes at most); addresses are short.
    let len = u16::try_from(text.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&text.as_bytes()[..usize::from(len)]);
}

fn take_text<'a>(bytes: &mut &'a [u8]) -> Option<&'a str> {
    let len = usize::from(u16::from_le_bytes([*bytes.first()?, *bytes.get(1)?]));
    let text = bytes.get(2..2 + len)?;
    *bytes = &bytes[2 + len..];
    std::str::from_utf8(text).ok()
}

fn encode_identity(identity: &Identity, out: &mut Vec<u8>) {
    out.push(IDENTITY_TAG);
    let flags = if identity.username.is_some() {
        HAS_USERNAME
    } else {
        0
    } | if identity.listener.is_some() {
        HAS_LISTENER
    } else {
        0
    };
    out.push(flags);
    if let Some(username) = &identity.username {
        put_text(out, username);
    }
    if let Some(listener) = identity.listener {
        put_text(out, &listener.to_string());
    }
}

/// The identity at the start of `bytes`, if there is one; `bytes` is moved past it.
fn decode_identity(bytes: &mut &[u8]) -> Result<Option<Identity>, ()> {
    if bytes.first() != Some(&IDENTITY_TAG) {
        return Ok(None);
    }
    let flags = *bytes.get(1).ok_or(())?;
    *bytes = &bytes[2..];
    let username = match flags & HAS_USERNAME {
        0 => None,
        _ => Some(Arc::from(take_text(bytes).ok_or(())?)),
    };
    let listener = match flags & HAS_LISTENER {
        0 => None,
        _ => Some(take_text(bytes).ok_or(())?.parse().map_err(|_| ())?),
    };
    Ok(Some(Identity { username, listener }))
}

impl SessionRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        out.push(self.version.level());
        out.extend_from_slice(&self.expiry.to_le_bytes());
        out.extend_from_slice(&self.offline_since.unwrap_or(0).to_le_bytes());
        if let Some(identity) = &self.identity {
            encode_identity(identity, &mut out);
        }
        if let Some(will) = &self.will {
            // A CONNECT carries a will with every one of its properties: reuse the codec.
            let connect = Connect {
                protocol: ProtocolVersion::V5,
                clean_start: false,
                keep_alive: 0,
                client_id: String::new(),
                will: Some(will.clone()),
                username: None,
                password: None,
                properties: ConnectProperties::default(),
                bridge: false,
            };
            Packet::Connect(Box::new(connect)).encode(ProtocolVersion::V5, &mut out);
        }
        out
    }

    pub fn decode(client_id: &str, bytes: &[u8]) -> Result<SessionRecord, BadRecord> {
        let bad = || BadRecord(format!("session record of client {client_id:?}"));
        if bytes.len() < 13 {
            return Err(bad());
        }
        let version = match bytes[0] {
            3 => ProtocolVersion::V3_1,
            4 => ProtocolVersion::V3_1_1,
            5 => ProtocolVersion::V5,
            _ => return Err(bad()),
        };
        let expiry = u32::from_le_bytes(bytes[1..5].try_into().map_err(|_| bad())?);
        let offline = u64::from_le_bytes(bytes[5..13].try_into().map_err(|_| bad())?);
        let mut rest = &bytes[13..];
        let identity = decode_identity(&mut rest).map_err(|_| bad())?;
        let will = if !rest.is_empty() {
            match decode_packet(rest).map_err(|_| bad())? {
                Packet::Connect(connect) => connect.will,
                _ => return Err(bad()),
            }
        } else {
            None
        };
        Ok(SessionRecord {
            client_id: Arc::from(client_id),
            version,
            expiry,
            offline_since: (offline != 0).then_some(offline),
            will,
            identity,
        })
    }
}

/// A subscription's options and identifier, as stored.
pub fn encode_subscription(options: SubscriptionOptions, identifier: Option<u32>) -> [u8; 5] {
    let byte = options.qos as u8
        | u8::from(options.no_local) << 2
        | u8::from(options.retain_as_published) << 3
        | (options.retain_handling as u8) << 4;
    let id = identifier.unwrap_or(0).to_le_bytes();
    [byte, id[0], id[1], id[2], id[3]]
}

pub fn decode_subscription(bytes: &[u8]) -> Result<(SubscriptionOptions, Option<u32>), BadRecord> {
    let bad = || BadRecord("subscription record".into());
    let [byte, a, b, c, d] = <[u8; 5]>::try_from(bytes).map_err(|_| bad())?;
    let options = SubscriptionOptions {
        qos: QoS::try_from(byte & 3).map_err(|_| bad())?,
        no_local: byte & 4 != 0,
        retain_as_published: byte & 8 != 0,
        retain_handling: match (byte >> 4) & 3 {
            0 => RetainHandling::SendOnSubscribe,
            1 => RetainHandling::SendIfNewSubscription,
            2 => RetainHandling::DoNotSend,
            _ => return Err(bad()),
        },
    };
    let id = u32::from_le_bytes([a, b, c, d]);
    Ok((options, (id != 0).then_some(id)))
}

/// One message queued (or in flight) for one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEntry {
    pub message_id: u64,
    pub qos: QoS,
    pub retain: bool,
    /// Set once sent: the packet id it went out with.
    pub packet_id: Option<PacketId>,
    /// PUBREC received and PUBREL sent (QoS 2).
    pub released: bool,
    pub subscription_ids: Vec<u32>,
}

/// Where `QueueEntry::encode` puts the packet id and the stage, so that they can be updated in
/// place. The stage byte holds `released` (bit 0) and `INLINE` (bit 1).
pub const ENTRY_PACKET_ID: usize = 10;
pub const ENTRY_STAGE: usize = 12;
/// The row carries its message after the entry (a message held by this row only): no
/// `messages` row, no reference count.
const INLINE: u8 = 2;

/// The message stored in a queue row itself, if it has one.
pub fn inline_message(row: &[u8]) -> Option<&[u8]> {
    if row.len() < 14 || row[ENTRY_STAGE] & INLINE == 0 {
        return None;
    }
    row.get(14 + 4 * usize::from(row[13])..)
}

impl QueueEntry {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(14 + 4 * self.subscription_ids.len());
        out.extend_from_slice(&self.message_id.to_le_bytes());
        out.push(self.qos as u8);
        out.push(u8::from(self.retain));
        out.extend_from_slice(&self.packet_id.map_or(0, |p| p.get()).to_le_bytes());
        out.push(u8::from(self.released));
        let n = self.subscription_ids.len().min(255);
        out.push(n as u8);
        for id in &self.subscription_ids[..n] {
            out.extend_from_slice(&id.to_le_bytes());
        }
        out
    }

    /// The entry with its message inside the row (see `inline_message`).
    pub fn encode_inline(&self, message: &Message) -> Vec<u8> {
        let mut out = self.encode();
        out[ENTRY_STAGE] |= INLINE;
        out.extend_from_slice(&encode_message(message));
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<QueueEntry, BadRecord> {
        let bad = || BadRecord("queue entry".into());
        if bytes.len() < 14 {
            return Err(bad());
        }
        let n = usize::from(bytes[13]);
        let inline = bytes[ENTRY_STAGE] & INLINE != 0;
        if bytes.len() < 14 + 4 * n || (!inline && bytes.len() != 14 + 4 * n) {
            return Err(bad());
        }
        let subscription_ids = bytes[14..14 + 4 * n]
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(QueueEntry {
            message_id: u64::from_le_bytes(bytes[0..8].try_into().map_err(|_| bad())?),
            qos: QoS::try_from(bytes[8]).map_err(|_| bad())?,
            retain: bytes[9] != 0,
            packet_id: PacketId::new(u16::from_le_bytes([bytes[10], bytes[11]])),
            released: bytes[ENTRY_STAGE] & 1 != 0,
            subscription_ids,
        })
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A message as stored: its expiry on the wall clock (so that time spent down counts) and the
/// PUBLISH in MQTT 5 form.
pub fn encode_message(message: &Message) -> Vec<u8> {
    let expiry = message.expires_at.map_or(0, |deadline| {
        let left = deadline.saturating_duration_since(Instant::now());
        unix_now() + left.as_secs() + u64::from(left.subsec_nanos() > 0)
    });
    let mut out = Vec::with_capacity(message.publish.payload.len() + 64);
    out.extend_from_slice(&expiry.to_le_bytes());
    let mut publish = message.publish.clone();
    // A QoS 1/2 PUBLISH needs an id to be encoded; it is not kept.
    if publish.qos != QoS::AtMostOnce {
        publish.packet_id = Some(PacketId::MIN);
    }
    Packet::Publish(publish).encode(ProtocolVersion::V5, &mut out);
    out
}

/// A stored message, with its expiry interval counted down to now; `None` when it has expired.
pub fn decode_message(bytes: &[u8], now_unix: u64) -> Result<Option<Message>, BadRecord> {
    let bad = || BadRecord("message record".into());
    if bytes.len() < 8 {
        return Err(bad());
    }
    let expiry = u64::from_le_bytes(bytes[0..8].try_into().map_err(|_| bad())?);
    let mut publish: Publish = match decode_packet(&bytes[8..]).map_err(|_| bad())? {
        Packet::Publish(publish) => publish,
        _ => return Err(bad()),
    };
    publish.packet_id = None;
    if expiry != 0 {
        if expiry <= now_unix {
            return Ok(None);
        }
        let left = u32::try_from(expiry - now_unix).unwrap_or(u32::MAX);
        publish.properties.message_expiry_interval = Some(left);
    }
    let message = Message::received_at(publish, Instant::now());
    Ok(Some(message))
}

/// How long ago `since` (unix seconds) was.
pub fn elapsed_since(since: u64) -> Duration {
    Duration::from_secs(unix_now().saturating_sub(since))
}

fn decode_packet(mut bytes: &[u8]) -> Result<Packet, crate::mqtt::DecodeError> {
    let mut buf = Vec::new();
    let packet = read_packet(&mut bytes, ProtocolVersion::V5, usize::MAX, &mut buf)?;
    if !bytes.is_empty() {
        return Err(crate::mqtt::DecodeError::Malformed("trailing bytes"));
    }
    Ok(packet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::{PublishProperties, WillProperties};

    #[test]
    fn session_records_round_trip_with_their_will() {
        let record = SessionRecord {
            client_id: "c".into(),
            version: ProtocolVersion::V5,
            expiry: 300,
            offline_since: Some(1_700_000_000),
            will: Some(Will {
                topic: "w".into(),
                payload: Arc::from(&b"bye"[..]),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: WillProperties {
                    will_delay_interval: Some(5),
                    content_type: Some("text".into()),
                    ..Default::default()
                },
            }),
            identity: None,
        };
        assert_eq!(SessionRecord::decode("c", &record.encode()), Ok(record));
        let plain = SessionRecord {
            client_id: "d".into(),
            version: ProtocolVersion::V3_1_1,
            expiry: u32::MAX,
            offline_since: None,
            will: None,
            identity: None,
        };
        assert_eq!(SessionRecord::decode("d", &plain.encode()), Ok(plain));
        assert!(SessionRecord::decode("e", &[9; 13]).is_err());
    }

    fn will_record(identity: Option<Identity>) -> SessionRecord {
        SessionRecord {
            client_id: "c".into(),
            version: ProtocolVersion::V5,
            expiry: 60,
            offline_since: Some(1_700_000_000),
            will: Some(Will {
                topic: "w/x".into(),
                payload: Arc::from(&b"gone"[..]),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: WillProperties {
                    will_delay_interval: Some(3),
                    ..Default::default()
                },
            }),
            identity,
        }
    }

    #[test]
    fn session_records_keep_the_identity_of_their_client() {
        let full = Identity {
            username: Some("alice".into()),
            listener: Some("127.0.0.1:1883".parse().expect("addr")),
        };
        let v6 = Identity {
            username: None,
            listener: Some("[::1]:8883".parse().expect("addr")),
        };
        let empty = Identity::default();
        for identity in [Some(full.clone()), Some(v6), Some(empty), None] {
            let with_will = will_record(identity.clone());
            assert_eq!(
                SessionRecord::decode("c", &with_will.encode()),
                Ok(with_will)
            );
            let without = SessionRecord {
                will: None,
                ..will_record(identity)
            };
            assert_eq!(SessionRecord::decode("c", &without.encode()), Ok(without));
        }
        // A record without an identity is byte for byte what was written before identities
        // were stored.
        let old = will_record(None).encode();
        assert_eq!(old[13], 0x10, "the will's CONNECT follows the fixed part");
        // Cut short inside the identity: refused, not misread.
        let bytes = will_record(Some(full)).encode();
        assert!(SessionRecord::decode("c", &bytes[..17]).is_err());
        assert!(SessionRecord::decode("c", &bytes[..14]).is_err());
    }

    /// A record as the previous format wrote it (fixed part, then the will's CONNECT), built
    /// by hand: it decodes, with no identity.
    #[test]
    fn records_of_the_previous_format_decode_without_an_identity() {
        let mut bytes = vec![5u8];
        bytes.extend_from_slice(&60u32.to_le_bytes());
        bytes.extend_from_slice(&1_700_000_000u64.to_le_bytes());
        let connect = Connect {
            protocol: ProtocolVersion::V5,
            clean_start: false,
            keep_alive: 0,
            client_id: String::new(),
            will: will_record(None).will,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
            bridge: false,
        };
        Packet::Connect(Box::new(connect)).encode(ProtocolVersion::V5, &mut bytes);
        assert_eq!(SessionRecord::decode("c", &bytes), Ok(will_record(None)));
        // And one without a will: the fixed part alone.
        let record = SessionRecord::decode("c", &bytes[..13]).expect("decodes");
        assert_eq!((record.will, record.identity), (None, None));
    }

    #[test]
    fn subscriptions_and_queue_entries_round_trip() {
        let options = SubscriptionOptions {
            qos: QoS::ExactlyOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::DoNotSend,
        };
        let bytes = encode_subscription(options, Some(42));
        assert_eq!(decode_subscription(&bytes), Ok((options, Some(42))));
        let entry = QueueEntry {
            message_id: 7,
            qos: QoS::ExactlyOnce,
            retain: true,
            packet_id: PacketId::new(513),
            released: true,
            subscription_ids: vec![1, 99],
        };
        let bytes = entry.encode();
        assert_eq!(u16::from_le_bytes([bytes[10], bytes[11]]), 513);
        assert_eq!(QueueEntry::decode(&bytes), Ok(entry.clone()));
        assert!(QueueEntry::decode(&bytes[..15]).is_err());
        assert_eq!(inline_message(&bytes), None);
        // With the message inside the row.
        let publish = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "in/line".into(),
            packet_id: None,
            properties: PublishProperties::default(),
            payload: Arc::from(&b"body"[..]),
        };
        let row = entry.encode_inline(&Message::new(publish));
        assert_eq!(QueueEntry::decode(&row), Ok(entry));
        let message = inline_message(&row).expect("inline");
        let back = decode_message(message, unix_now())
            .expect("decodes")
            .expect("live");
        assert_eq!(
            (back.publish.topic.as_str(), &back.publish.payload[..]),
            ("in/line", &b"body"[..])
        );
    }

    #[test]
    fn messages_keep_their_properties_and_count_expiry_on_the_wall_clock() {
        let publish = Publish {
            dup: false,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: "a/b".into(),
            packet_id: None,
            properties: PublishProperties {
                message_expiry_interval: Some(100),
                user: vec![("k".into(), "v".into())],
                ..Default::default()
            },
            payload: Arc::from(&b"payload"[..]),
        };
        let bytes = encode_message(&Message::new(publish.clone()));
        let now = unix_now();
        let back = decode_message(&bytes, now).expect("decodes").expect("live");
        assert_eq!(back.publish.payload, publish.payload);
        assert_eq!(back.publish.properties.user, publish.properties.user);
        let left = back
            .publish
            .properties
            .message_expiry_interval
            .expect("kept");
        assert!((99..=101).contains(&left), "{left}");
        // 200 seconds later it has expired.
        assert!(matches!(decode_message(&bytes, now + 200), Ok(None)));
        assert!(decode_message(&bytes[..20], now).is_err());
    }
}
