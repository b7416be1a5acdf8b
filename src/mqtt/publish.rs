//! PUBLISH: decode, and encode from a borrowed view so that one shared message can be written
//! to many subscribers, each with its own packet id, QoS, flags and subscription identifiers,
//! without cloning it.
//!
//! Owns: PUBLISH decode, `encode_publish` and `PublishView`. Must not: validate the topic
//! beyond its being a UTF-8 string (wildcards and the like are `mqtt::topic`'s, called by the
//! broker), resolve topic aliases, or copy the payload more than once.

use std::sync::Arc;

use super::primitives::{string_len, write_string, write_u16, write_varint, Reader};
use super::properties::{block_size, Properties, TWICE_WHY};
use super::{DecodeError, PacketId, ProtocolVersion, Publish, PublishProperties, QoS};

const DUP: u8 = 0x08;
const RETAIN: u8 = 0x01;
const QOS_SHIFT: u8 = 1;

/// How one PUBLISH is written for one receiver.
#[derive(Debug, Clone, Copy)]
pub struct PublishView<'a> {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub packet_id: Option<PacketId>,
    pub topic: &'a str,
    pub payload: &'a [u8],
    /// Written in v5 only.
    pub properties: &'a PublishProperties,
    /// v5 only: subscription identifiers written in addition to `properties`' own.
    pub subscription_identifiers: &'a [u32],
    /// v5 only: replaces `properties.message_expiry_interval` when `Some`.
    pub message_expiry_interval: Option<u32>,
    /// v5 only: replaces `properties.topic_alias` when `Some` (the receiver's own outbound
    /// alias; `topic` may then be empty [MQTT-3.3.2-12]).
    pub topic_alias: Option<u16>,
}

impl<'a> PublishView<'a> {
    /// A view of a whole decoded PUBLISH, written as it is: no extra subscription
    /// identifiers, no expiry override.
    pub fn of(publish: &'a Publish) -> Self {
        PublishView {
            dup: publish.dup,
            qos: publish.qos,
            retain: publish.retain,
            packet_id: publish.packet_id,
            topic: &publish.topic,
            payload: &publish.payload,
            properties: &publish.properties,
            subscription_identifiers: &[],
            message_expiry_interval: None,
            topic_alias: None,
        }
    }

    /// The packet id written: only QoS 1 and 2 carry one [MQTT-2.2.1-2]. A QoS 1 or 2 view
    /// without an id is a broker bug; it is asserted in debug builds and written as QoS 0 in
    /// release, the only form that is valid on the wire without an id.
    fn id_and_qos(&self) -> (Option<PacketId>, QoS) {
        debug_assert!(
            self.qos == QoS::AtMostOnce || self.packet_id.is_some(),
            "QoS {:?} PUBLISH without a packet id",
            self.qos
        );
        match (self.qos, self.packet_id) {
            (QoS::AtMostOnce, _) | (_, None) => (None, QoS::AtMostOnce),
            (qos, Some(id)) => (Some(id), qos),
        }
    }

    fn props_len(&self) -> usize {
        self.properties.len_for(
            self.message_expiry_interval,
            self.topic_alias,
            self.subscription_identifiers,
        )
    }

    /// Bytes after the fixed header.
    fn body_len(&self, version: ProtocolVersion, props_len: usize) -> usize {
        let mut len = string_len(self.topic) + self.payload.len();
        if self.id_and_qos().0.is_some() {
            len += 2;
        }
        if version.is_v5() {
            len += block_size(props_len);
        }
        len
    }

    /// The whole packet's size on the wire, fixed header included: what a v5 receiver's
    /// Maximum Packet Size is compared with [MQTT-3.1.2-24].
    pub fn encoded_len(&self, version: ProtocolVersion) -> usize {
        let body = self.body_len(version, self.props_len());
        1 + super::primitives::varint_len(body) + body
    }
}

/// Appends one PUBLISH. 3.1 and 3.1.1 never carry properties; in v5 the view's subscription
/// identifiers follow the properties' own, and its expiry and topic alias replace theirs.
pub fn encode_publish(out: &mut Vec<u8>, version: ProtocolVersion, view: &PublishView<'_>) {
    let (packet_id, qos) = view.id_and_qos();
    // DUP is written as given: the broker sets it only when redelivering a QoS 1 or 2 message
    // [MQTT-3.3.1-1], and a 3.1.1 packet decoded with DUP on QoS 0 must re-encode unchanged.
    let mut first = 0x30 | ((qos as u8) << QOS_SHIFT);
    if view.dup {
        first |= DUP;
    }
    if view.retain {
        first |= RETAIN;
    }
    let props_len = if version.is_v5() { view.props_len() } else { 0 };
    let body_len = view.body_len(version, props_len);
    out.reserve(1 + 4 + body_len);
    out.push(first);
    write_varint(out, body_len);
    write_string(out, view.topic);
    if let Some(id) = packet_id {
        write_u16(out, id.get());
    }
    if version.is_v5() {
        let start = out.len();
        write_varint(out, props_len);
        view.properties.visit_for(
            out,
            view.message_expiry_interval,
            view.topic_alias,
            view.subscription_identifiers,
        );
        debug_assert_eq!(out.len() - start, block_size(props_len));
    }
    out.extend_from_slice(view.payload);
}

/// Decodes a PUBLISH from the fixed header's flags and the body.
pub(crate) fn decode(
    flags: u8,
    body: &[u8],
    version: ProtocolVersion,
) -> Result<Publish, DecodeError> {
    let dup = flags & DUP != 0;
    let retain = flags & RETAIN != 0;
    let qos = QoS::try_from((flags >> QOS_SHIFT) & 0x03)?;
    // The sender MUST NOT set DUP on QoS 0 [MQTT-3.3.1-2]. 5.0 makes every such violation a
    // Malformed Packet or Protocol Error (mosquitto 2.0.11 lets it through, later versions
    // refuse it too); 3.1.1 clients that get this wrong are tolerated, as by mosquitto 2.0.11
    // (the flag is kept, so the packet still re-encodes to the same bytes).
    if dup && qos == QoS::AtMostOnce && version.is_v5() {
        return Err(DecodeError::Malformed(
            "[MQTT-3.3.1-2] DUP set on a QoS 0 PUBLISH",
        ));
    }
    let mut r = Reader::new(body);
    let topic = r.string()?;
    let packet_id = if qos == QoS::AtMostOnce {
        None
    } else {
        // A packet identifier of 0 is a Protocol Error here, as mosquitto answers it.
        Some(PacketId::new(r.u16()?).ok_or(DecodeError::Protocol(
            "[MQTT-2.3.1-1] packet identifier is 0",
        ))?)
    };
    let properties = if version.is_v5() {
        // As mosquitto: a property that breaks its own rules (a value out of range, one not
        // allowed in PUBLISH) makes the PUBLISH malformed; a repeated one is a Protocol Error.
        PublishProperties::decode(&mut r).map_err(|e| match e {
            DecodeError::Protocol(why) if why != TWICE_WHY => DecodeError::Malformed(why),
            DecodeError::TopicAliasInvalid(why) => DecodeError::Malformed(why),
            other => other,
        })?
    } else {
        PublishProperties::default()
    };
    if topic.is_empty() {
        if !version.is_v5() {
            // Topic names are at least one character long [MQTT-4.7.3-1].
            return Err(DecodeError::Malformed("[MQTT-4.7.3-1] empty topic name"));
        }
        if properties.topic_alias.is_none() {
            // 5.0 3.3.2.1: a zero-length topic name stands for the one a topic alias maps to.
            return Err(DecodeError::Protocol(
                "empty topic name without a topic alias (5.0 3.3.2.1)",
            ));
        }
    }
    // Everything left is the payload, possibly empty: copied once, then shared.
    let payload: Arc<[u8]> = Arc::from(r.rest());
    Ok(Publish {
        dup,
        qos,
        retain,
        topic: topic.to_owned(),
        packet_id,
        properties,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{check, Want};
    use super::super::{decode_packet, Packet};
    use super::*;

    use ProtocolVersion::{V3_1, V3_1_1, V5};

    fn publish(qos: QoS, packet_id: u16, topic: &str, payload: &[u8]) -> Publish {
        Publish {
            dup: false,
            qos,
            retain: false,
            topic: topic.into(),
            packet_id: PacketId::new(packet_id),
            properties: PublishProperties::default(),
            payload: Arc::from(payload),
        }
    }

    #[test]
    fn table() {
        use QoS::*;
        let v3 = &[V3_1, V3_1_1][..];
        let v5 = &[V5][..];
        let mut retained_dup = publish(ExactlyOnce, 0x1234, "a/b", b"xyz");
        retained_dup.retain = true;
        retained_dup.dup = true;
        let mut aliased = publish(AtLeastOnce, 1, "", b"p");
        aliased.properties.topic_alias = Some(2);
        let mut dup0 = publish(AtMostOnce, 0, "t", b"");
        dup0.dup = true;
        let cases: Vec<(&str, &[ProtocolVersion], &[u8], Want)> = vec![
            // mosquitto_pub -V mqttv311 -i p1 -t a/b -m xyz -q 1, as captured.
            (
                "mosquitto_pub qos 1",
                v3,
                b"\x32\x0A\x00\x03a/b\x00\x01xyz",
                Want::Exact(Packet::Publish(publish(AtLeastOnce, 1, "a/b", b"xyz"))),
            ),
            // mosquitto_pub -V mqttv311 -t t -m m, as captured.
            (
                "mosquitto_pub qos 0",
                v3,
                b"\x30\x04\x00\x01tm",
                Want::Exact(Packet::Publish(publish(AtMostOnce, 0, "t", b"m"))),
            ),
            (
                "mosquitto_pub 5.0 qos 0",
                v5,
                b"\x30\x05\x00\x01t\x00m",
                Want::Exact(Packet::Publish(publish(AtMostOnce, 0, "t", b"m"))),
            ),
            (
                "qos 1 empty payload",
                v3,
                b"\x32\x05\x00\x01t\x00\x07",
                Want::Exact(Packet::Publish(publish(AtLeastOnce, 7, "t", b""))),
            ),
            (
                "qos 2 dup retain",
                v3,
                b"\x3D\x0A\x00\x03a/b\x12\x34xyz",
                Want::Exact(Packet::Publish(retained_dup.clone())),
            ),
            (
                "5.0 qos 2 dup retain",
                v5,
                b"\x3D\x0B\x00\x03a/b\x12\x34\x00xyz",
                Want::Exact(Packet::Publish(retained_dup)),
            ),
            (
                "5.0 empty topic with alias",
                v5,
                b"\x32\x09\x00\x00\x00\x01\x03\x23\x00\x02p",
                Want::Exact(Packet::Publish(aliased)),
            ),
            (
                "3.1.1 dup on qos 0 is tolerated",
                v3,
                b"\x38\x03\x00\x01t",
                Want::Exact(Packet::Publish(dup0)),
            ),
            (
                "5.0 dup on qos 0",
                v5,
                b"\x38\x04\x00\x01t\x00",
                Want::Malformed,
            ),
            ("qos 3", v3, b"\x36\x05\x00\x01t\x00\x01", Want::Malformed),
            (
                "5.0 qos 3",
                v5,
                b"\x36\x06\x00\x01t\x00\x01\x00",
                Want::Malformed,
            ),
            (
                "packet id 0",
                v3,
                b"\x32\x05\x00\x01t\x00\x00",
                Want::Protocol,
            ),
            (
                "5.0 packet id 0",
                v5,
                b"\x32\x06\x00\x01t\x00\x00\x00",
                Want::Protocol,
            ),
            (
                "3.1.1 empty topic",
                v3,
                b"\x30\x02\x00\x00",
                Want::Malformed,
            ),
            (
                "5.0 empty topic without alias",
                v5,
                b"\x30\x03\x00\x00\x00",
                Want::Protocol,
            ),
            (
                "topic with U+0000",
                v3,
                b"\x30\x04\x00\x02a\x00",
                Want::Malformed,
            ),
            (
                "topic invalid UTF-8",
                v3,
                b"\x30\x04\x00\x02a\xFF",
                Want::Malformed,
            ),
            (
                "topic longer than the body",
                v3,
                b"\x30\x03\x00\x05a",
                Want::Malformed,
            ),
            (
                "qos 1 missing packet id",
                v3,
                b"\x32\x04\x00\x01t\x00",
                Want::Malformed,
            ),
            (
                "5.0 missing property length",
                v5,
                b"\x30\x03\x00\x01t",
                Want::Malformed,
            ),
            (
                "5.0 property not allowed",
                v5,
                b"\x30\x08\x00\x01t\x03\x21\x00\x01x",
                Want::Malformed,
            ),
            (
                "5.0 duplicate topic alias",
                v5,
                b"\x30\x0A\x00\x01t\x06\x23\x00\x01\x23\x00\x01",
                Want::Protocol,
            ),
            (
                "5.0 subscription id 0",
                v5,
                b"\x30\x06\x00\x01t\x02\x0B\x00",
                Want::Malformed,
            ),
            (
                "5.0 payload format 2 is passed on, as by mosquitto",
                v5,
                b"\x30\x06\x00\x01t\x02\x01\x02",
                Want::Exact(Packet::Publish(Publish {
                    properties: PublishProperties {
                        payload_format_indicator: Some(2),
                        ..Default::default()
                    },
                    ..publish(QoS::AtMostOnce, 0, "t", b"")
                })),
            ),
        ];
        for (name, versions, bytes, want) in cases {
            check(name, versions, bytes, &want);
        }
    }

    #[test]
    fn view_adds_subscription_ids_and_overrides_expiry_only_in_v5() {
        let mut p = publish(QoS::AtLeastOnce, 5, "t", b"hi");
        p.properties.message_expiry_interval = Some(100);
        p.properties.user = vec![("k".into(), "v".into())];
        let view = PublishView {
            qos: QoS::AtLeastOnce,
            packet_id: PacketId::new(9),
            subscription_identifiers: &[3, 200],
            message_expiry_interval: Some(42),
            ..PublishView::of(&p)
        };
        let mut out = Vec::new();
        encode_publish(&mut out, V5, &view);
        let expected: &[u8] = b"\x32\x19\x00\x01t\x00\x09\x11\
\x0B\x03\x0B\xC8\x01\x26\x00\x01k\x00\x01v\x02\x00\x00\x00\x2Ahi";
        assert_eq!(out, expected);
        assert_eq!(view.encoded_len(V5), out.len());
        let Packet::Publish(got) = decode_packet(out[0], &out[2..], V5).unwrap() else {
            panic!("not a PUBLISH");
        };
        assert_eq!(got.properties.subscription_identifiers, [3, 200]);
        assert_eq!(got.properties.message_expiry_interval, Some(42));
        assert_eq!(got.packet_id, PacketId::new(9));

        // 3.1.1: no properties at all, whatever the view carries.
        for version in [V3_1, V3_1_1] {
            let mut out = Vec::new();
            encode_publish(&mut out, version, &view);
            assert_eq!(out, b"\x32\x07\x00\x01t\x00\x09hi");
            assert_eq!(view.encoded_len(version), out.len());
        }
    }

    #[test]
    fn view_topic_alias_replaces_the_properties_one_in_v5_only() {
        let mut p = publish(QoS::AtMostOnce, 0, "a/b", b"x");
        p.properties.topic_alias = Some(9);
        let view = PublishView {
            topic: "",
            topic_alias: Some(4),
            ..PublishView::of(&p)
        };
        let mut out = Vec::new();
        encode_publish(&mut out, V5, &view);
        assert_eq!(out, b"\x30\x07\x00\x00\x03\x23\x00\x04x");
        assert_eq!(view.encoded_len(V5), out.len());
        let mut expected = publish(QoS::AtMostOnce, 0, "", b"x");
        expected.properties.topic_alias = Some(4);
        assert_eq!(
            decode_packet(out[0], &out[2..], V5).unwrap(),
            Packet::Publish(expected)
        );
        // Without an override the properties' own alias is written.
        let mut out = Vec::new();
        encode_publish(&mut out, V5, &PublishView::of(&p));
        assert_eq!(out, b"\x30\x0A\x00\x03a/b\x03\x23\x00\x09x");
        // 3.1.1 has no aliases at all.
        let view = PublishView {
            topic_alias: Some(4),
            ..PublishView::of(&p)
        };
        let mut out = Vec::new();
        encode_publish(&mut out, V3_1_1, &view);
        assert_eq!(out, b"\x30\x06\x00\x03a/bx");
    }

    #[test]
    fn view_writes_qos_0_without_packet_id() {
        let p = publish(QoS::AtMostOnce, 0, "t", b"");
        let view = PublishView {
            retain: true,
            packet_id: PacketId::new(3),
            ..PublishView::of(&p)
        };
        let mut out = vec![0xAA];
        encode_publish(&mut out, V3_1_1, &view);
        assert_eq!(
            out, b"\xAA\x31\x03\x00\x01t",
            "appends, retain, no packet id"
        );
    }

    #[test]
    fn remaining_length_edges() {
        // Payload sizes that put the remaining length on each varint boundary (3.1.1, QoS 0,
        // topic "t": body = 3 + payload).
        for (remaining, header) in [
            (127usize, &[0x7F][..]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
            (2_097_152, &[0x80, 0x80, 0x80, 0x01]),
        ] {
            let p = publish(QoS::AtMostOnce, 0, "t", &vec![7; remaining - 3]);
            let mut out = Vec::new();
            Packet::Publish(p.clone()).encode(V3_1_1, &mut out);
            assert_eq!(&out[1..1 + header.len()], header, "{remaining}");
            assert_eq!(out.len(), 1 + header.len() + remaining);
            let body = &out[1 + header.len()..];
            assert_eq!(
                decode_packet(out[0], body, V3_1_1).unwrap(),
                Packet::Publish(p)
            );
        }
    }
}
