//! PUBACK, PUBREC, PUBREL and PUBCOMP: a packet id, then in v5 an optional reason code and
//! optional properties.
//!
//! Owns: the shared `Ack` codec and which reason codes each of the four may carry. Must not:
//! track the QoS flows the packet ids belong to (the client session does).

use super::primitives::{write_u16, write_u8, Reader};
use super::properties::{block_size, write_block, Properties};
use super::{Ack, AckProperties, DecodeError, PacketId, ProtocolVersion, ReasonCode};

/// Which of the four acknowledgements an `Ack` is.
// The variants are the packets' own names, shared prefix and all.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckKind {
    PubAck,
    PubRec,
    PubRel,
    PubComp,
}

impl AckKind {
    /// Whether a v5 packet of this kind may carry `reason` (5.0 sections 3.4.2.1, 3.5.2.1,
    /// 3.6.2.1 and 3.7.2.1).
    fn allows(self, reason: ReasonCode) -> bool {
        use ReasonCode::*;
        match self {
            AckKind::PubAck | AckKind::PubRec => matches!(
                reason,
                Success
                    | NoMatchingSubscribers
                    | UnspecifiedError
                    | ImplementationSpecificError
                    | NotAuthorized
                    | TopicNameInvalid
                    | PacketIdentifierInUse
                    | QuotaExceeded
                    | PayloadFormatInvalid
            ),
            AckKind::PubRel | AckKind::PubComp => {
                matches!(reason, Success | PacketIdentifierNotFound)
            }
        }
    }
}

/// Decodes the body of one of the four. In v5 the remaining length tells which form it is:
/// 2 is the packet id alone (Success, no properties), 3 adds the reason code, and more adds
/// the properties (5.0 3.4.2.1 and 3.4.2.2.1).
pub(crate) fn decode(
    kind: AckKind,
    body: &[u8],
    version: ProtocolVersion,
) -> Result<Ack, DecodeError> {
    let mut r = Reader::new(body);
    // A packet id of 0 is a Protocol Error in an acknowledgement, as mosquitto answers it.
    let packet_id = PacketId::new(r.u16()?).ok_or(DecodeError::Protocol(
        "[MQTT-2.3.1-1] packet identifier is 0",
    ))?;
    let mut ack = Ack::new(packet_id);
    if version.is_v5() && !r.is_empty() {
        // mosquitto answers a PUBREL reason it does not know with a Protocol Error.
        let invalid = match kind {
            AckKind::PubRel => DecodeError::Protocol("reason code not valid in PUBREL"),
            _ => DecodeError::Malformed("reason code not valid for this acknowledgement"),
        };
        let reason = ReasonCode::try_from(r.u8()?)
            .ok()
            .filter(|&c| kind.allows(c))
            .ok_or(invalid)?;
        ack.reason = reason;
        if !r.is_empty() {
            ack.properties = AckProperties::decode(&mut r)?;
        }
    }
    // 3.1/3.1.1: exactly the packet id; anything more is malformed.
    r.finish()?;
    Ok(ack)
}

impl Ack {
    /// Bytes after the fixed header: the shortest form that says everything
    /// (`props_len` is `self.properties.len()`, used in v5 only).
    pub(crate) fn body_len(&self, version: ProtocolVersion, props_len: usize) -> usize {
        if !version.is_v5() {
            2
        } else if props_len > 0 {
            3 + block_size(props_len)
        } else if self.reason != ReasonCode::Success {
            3
        } else {
            2
        }
    }

    /// Writes the body. Before v5 only the packet id exists: a failure reason cannot be sent.
    pub(crate) fn write_body(&self, version: ProtocolVersion, props_len: usize, out: &mut Vec<u8>) {
        write_u16(out, self.packet_id.get());
        let len = self.body_len(version, props_len);
        if len > 2 {
            write_u8(out, self.reason as u8);
        }
        if len > 3 {
            write_block(out, &self.properties, props_len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{check, Want};
    use super::super::{Packet, PacketId};
    use super::*;

    use ProtocolVersion::{V3_1, V3_1_1, V5};

    fn ack(id: u16, reason: ReasonCode) -> Ack {
        Ack {
            packet_id: PacketId::new(id).expect("test ids are nonzero"),
            reason,
            properties: AckProperties::default(),
        }
    }

    #[test]
    fn table() {
        use ReasonCode::*;
        let all = &[V3_1, V3_1_1, V5][..];
        let v3 = &[V3_1, V3_1_1][..];
        let v5 = &[V5][..];
        let mut with_reason_string = ack(1, UnspecifiedError);
        with_reason_string.properties.reason_string = Some("no".into());
        let mut success_with_user = ack(1, Success);
        success_with_user.properties.user = vec![("a".into(), "b".into())];
        let cases: Vec<(&str, &[ProtocolVersion], &[u8], Want)> = vec![
            (
                "puback",
                all,
                b"\x40\x02\x00\x01",
                Want::Exact(Packet::PubAck(ack(1, Success))),
            ),
            (
                "pubrec",
                all,
                b"\x50\x02\xFF\xFF",
                Want::Exact(Packet::PubRec(ack(0xFFFF, Success))),
            ),
            (
                "pubrel",
                all,
                b"\x62\x02\x01\x00",
                Want::Exact(Packet::PubRel(ack(0x100, Success))),
            ),
            (
                "pubcomp",
                all,
                b"\x70\x02\x00\x02",
                Want::Exact(Packet::PubComp(ack(2, Success))),
            ),
            ("packet id 0", all, b"\x40\x02\x00\x00", Want::Protocol),
            ("truncated", all, b"\x40\x01\x00", Want::Malformed),
            ("empty", all, b"\x40\x00", Want::Malformed),
            (
                "3.1.1 trailing byte",
                v3,
                b"\x40\x03\x00\x01\x00",
                Want::Malformed,
            ),
            (
                "pubrel flags 0",
                &[V3_1_1, V5],
                b"\x60\x02\x00\x01",
                Want::Malformed,
            ),
            (
                "puback flags 2",
                &[V3_1_1, V5],
                b"\x42\x02\x00\x01",
                Want::Malformed,
            ),
            (
                "5.0 reason only",
                v5,
                b"\x40\x03\x00\x01\x10",
                Want::Exact(Packet::PubAck(ack(1, NoMatchingSubscribers))),
            ),
            (
                "5.0 reason and properties",
                v5,
                b"\x50\x09\x00\x01\x80\x05\x1F\x00\x02no",
                Want::Exact(Packet::PubRec(with_reason_string)),
            ),
            (
                "5.0 success with properties",
                v5,
                b"\x40\x0B\x00\x01\x00\x07\x26\x00\x01a\x00\x01b",
                Want::Exact(Packet::PubAck(success_with_user)),
            ),
            (
                "5.0 explicit success",
                v5,
                b"\x40\x03\x00\x01\x00",
                Want::Decodes(Packet::PubAck(ack(1, Success))),
            ),
            (
                "5.0 empty properties",
                v5,
                b"\x40\x04\x00\x01\x91\x00",
                Want::Decodes(Packet::PubAck(ack(1, PacketIdentifierInUse))),
            ),
            (
                "5.0 pubrel not found",
                v5,
                b"\x62\x03\x00\x01\x92",
                Want::Exact(Packet::PubRel(ack(1, PacketIdentifierNotFound))),
            ),
            (
                "5.0 pubcomp not found",
                v5,
                b"\x70\x03\x00\x01\x92",
                Want::Exact(Packet::PubComp(ack(1, PacketIdentifierNotFound))),
            ),
            (
                "5.0 pubrel with 0x80",
                v5,
                b"\x62\x03\x00\x01\x80",
                Want::Protocol,
            ),
            (
                "5.0 pubcomp with 0x10",
                v5,
                b"\x70\x03\x00\x01\x10",
                Want::Malformed,
            ),
            (
                "5.0 puback with 0x92",
                v5,
                b"\x40\x03\x00\x01\x92",
                Want::Malformed,
            ),
            (
                "5.0 undefined reason",
                v5,
                b"\x40\x03\x00\x01\x03",
                Want::Malformed,
            ),
            (
                "5.0 property not allowed",
                v5,
                b"\x40\x06\x00\x01\x00\x02\x01\x01",
                Want::Malformed,
            ),
            (
                "5.0 property length past end",
                v5,
                b"\x40\x05\x00\x01\x00\x05\x1F",
                Want::Malformed,
            ),
            (
                "5.0 trailing after properties",
                v5,
                b"\x40\x05\x00\x01\x00\x00\x00",
                Want::Malformed,
            ),
            (
                "5.0 duplicate reason string",
                v5,
                b"\x40\x0A\x00\x01\x00\x06\x1F\x00\x00\x1F\x00\x00",
                Want::Protocol,
            ),
        ];
        for (name, versions, bytes, want) in cases {
            check(name, versions, bytes, &want);
        }
    }

    #[test]
    fn v3_drops_reason_and_properties() {
        let mut a = ack(3, ReasonCode::NotAuthorized);
        a.properties.reason_string = Some("x".into());
        for version in [V3_1, V3_1_1] {
            let mut out = Vec::new();
            Packet::PubAck(a.clone()).encode(version, &mut out);
            assert_eq!(out, [0x40, 2, 0, 3]);
        }
    }
}
