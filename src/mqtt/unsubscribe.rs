//! UNSUBSCRIBE and UNSUBACK.
//!
//! Owns: their codecs. Must not: validate filters beyond their being UTF-8 strings (the
//! broker does), or invent per-filter codes for 3.1/3.1.1, whose UNSUBACK has none.

use super::primitives::{string_len, write_string, write_u16, Reader};
use super::properties::{block_size, write_block, Properties};
use super::{
    AckProperties, DecodeError, ProtocolVersion, ReasonCode, UnsubAck, Unsubscribe,
    UnsubscribeProperties,
};

pub(crate) fn decode_unsubscribe(
    body: &[u8],
    version: ProtocolVersion,
) -> Result<Unsubscribe, DecodeError> {
    let mut r = Reader::new(body);
    let packet_id = r.packet_id()?;
    let properties = if version.is_v5() {
        UnsubscribeProperties::decode(&mut r)?
    } else {
        UnsubscribeProperties::default()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        filters.push(r.string()?.to_owned());
    }
    // As SUBSCRIBE: Malformed Packet as from mosquitto, and allowed in 3.1.
    if filters.is_empty() && version != ProtocolVersion::V3_1 {
        return Err(DecodeError::Malformed(
            "[MQTT-3.10.3-2] UNSUBSCRIBE without any topic filter",
        ));
    }
    Ok(Unsubscribe {
        packet_id,
        filters,
        properties,
    })
}

impl Unsubscribe {
    pub(crate) fn body_len(&self, version: ProtocolVersion, props_len: usize) -> usize {
        let mut len = 2 + self.filters.iter().map(|f| string_len(f)).sum::<usize>();
        if version.is_v5() {
            len += block_size(props_len);
        }
        len
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, props_len: usize, out: &mut Vec<u8>) {
        write_u16(out, self.packet_id.get());
        if version.is_v5() {
            write_block(out, &self.properties, props_len);
        }
        for filter in &self.filters {
            write_string(out, filter);
        }
    }
}

/// Whether a v5 UNSUBACK may carry `reason` (5.0 section 3.11.3).
fn unsuback_allows(reason: ReasonCode) -> bool {
    use ReasonCode::*;
    matches!(
        reason,
        Success
            | NoSubscriptionExisted
            | UnspecifiedError
            | ImplementationSpecificError
            | NotAuthorized
            | TopicFilterInvalid
            | PacketIdentifierInUse
    )
}

pub(crate) fn decode_unsuback(
    body: &[u8],
    version: ProtocolVersion,
) -> Result<UnsubAck, DecodeError> {
    let mut r = Reader::new(body);
    let packet_id = r.packet_id()?;
    let mut ack = UnsubAck {
        packet_id,
        reasons: Vec::new(),
        properties: AckProperties::default(),
    };
    if version.is_v5() {
        ack.properties = AckProperties::decode(&mut r)?;
        ack.reasons.reserve(r.remaining());
        while !r.is_empty() {
            let reason = ReasonCode::try_from(r.u8()?)
                .ok()
                .filter(|&c| unsuback_allows(c))
                .ok_or(DecodeError::Malformed("reason code not valid in UNSUBACK"))?;
            ack.reasons.push(reason);
        }
    }
    // 3.1/3.1.1: the packet id is the whole body.
    r.finish()?;
    Ok(ack)
}

impl UnsubAck {
    pub(crate) fn body_len(&self, version: ProtocolVersion, props_len: usize) -> usize {
        if version.is_v5() {
            2 + block_size(props_len) + self.reasons.len()
        } else {
            2
        }
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, props_len: usize, out: &mut Vec<u8>) {
        write_u16(out, self.packet_id.get());
        if version.is_v5() {
            write_block(out, &self.properties, props_len);
            out.extend(self.reasons.iter().map(|&r| r as u8));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{check, Want};
    use super::super::{Packet, PacketId};
    use super::*;

    use ProtocolVersion::{V3_1, V3_1_1, V5};

    fn pid(id: u16) -> PacketId {
        PacketId::new(id).expect("test ids are nonzero")
    }

    fn unsub(filters: &[&str]) -> Packet {
        Packet::Unsubscribe(Unsubscribe {
            packet_id: pid(2),
            filters: filters.iter().map(|f| f.to_string()).collect(),
            properties: UnsubscribeProperties::default(),
        })
    }

    fn unsuback(reasons: &[ReasonCode]) -> Packet {
        Packet::UnsubAck(UnsubAck {
            packet_id: pid(2),
            reasons: reasons.to_vec(),
            properties: AckProperties::default(),
        })
    }

    #[test]
    fn unsubscribe_table() {
        let v3 = &[V3_1, V3_1_1][..];
        let v5 = &[V5][..];
        let mut with_user = Unsubscribe {
            packet_id: pid(2),
            filters: vec!["a".into()],
            properties: UnsubscribeProperties::default(),
        };
        with_user.properties.user = vec![("k".into(), "v".into())];
        let cases: Vec<(&str, &[ProtocolVersion], &[u8], Want)> = vec![
            (
                "two filters",
                v3,
                b"\xA2\x0A\x00\x02\x00\x03a/#\x00\x01b",
                Want::Exact(unsub(&["a/#", "b"])),
            ),
            (
                "5.0 one filter",
                v5,
                b"\xA2\x06\x00\x02\x00\x00\x01a",
                Want::Exact(unsub(&["a"])),
            ),
            (
                "5.0 user property",
                v5,
                b"\xA2\x0D\x00\x02\x07\x26\x00\x01k\x00\x01v\x00\x01a",
                Want::Exact(Packet::Unsubscribe(with_user)),
            ),
            ("no filter", &[V3_1_1], b"\xA2\x02\x00\x02", Want::Malformed),
            (
                "5.0 no filter",
                v5,
                b"\xA2\x03\x00\x02\x00",
                Want::Malformed,
            ),
            (
                "flags 0",
                &[V3_1_1],
                b"\xA0\x05\x00\x02\x00\x01a",
                Want::Malformed,
            ),
            (
                "packet id 0",
                v3,
                b"\xA2\x05\x00\x00\x00\x01a",
                Want::Malformed,
            ),
            (
                "truncated filter",
                v3,
                b"\xA2\x05\x00\x02\x00\x03a",
                Want::Malformed,
            ),
            (
                "filter with U+0000",
                v3,
                b"\xA2\x05\x00\x02\x00\x01\x00",
                Want::Malformed,
            ),
            (
                "5.0 property not allowed",
                v5,
                b"\xA2\x08\x00\x02\x02\x0B\x01\x00\x01a",
                Want::Malformed,
            ),
        ];
        for (name, versions, bytes, want) in cases {
            check(name, versions, bytes, &want);
        }
    }

    #[test]
    fn unsuback_table() {
        use ReasonCode::*;
        let v3 = &[V3_1, V3_1_1][..];
        let v5 = &[V5][..];
        let cases: Vec<(&str, &[ProtocolVersion], &[u8], Want)> = vec![
            (
                "3.1.1 packet id only",
                v3,
                b"\xB0\x02\x00\x02",
                Want::Exact(unsuback(&[])),
            ),
            (
                "3.1.1 trailing byte",
                v3,
                b"\xB0\x03\x00\x02\x00",
                Want::Malformed,
            ),
            (
                "5.0 codes",
                v5,
                b"\xB0\x05\x00\x02\x00\x00\x11",
                Want::Exact(unsuback(&[Success, NoSubscriptionExisted])),
            ),
            (
                "5.0 code not for UNSUBACK",
                v5,
                b"\xB0\x04\x00\x02\x00\x01",
                Want::Malformed,
            ),
            (
                "5.0 missing properties",
                v5,
                b"\xB0\x02\x00\x02",
                Want::Malformed,
            ),
            ("packet id 0", v3, b"\xB0\x02\x00\x00", Want::Malformed),
            ("flags 1", &[V3_1_1], b"\xB1\x02\x00\x02", Want::Malformed),
        ];
        for (name, versions, bytes, want) in cases {
            check(name, versions, bytes, &want);
        }
        // 3.1.1 has no codes to write.
        let mut out = Vec::new();
        unsuback(&[NotAuthorized]).encode(V3_1_1, &mut out);
        assert_eq!(out, b"\xB0\x02\x00\x02");
    }
}
