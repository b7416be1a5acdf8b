//! CONNACK: session present, a reason (v5) or return code (3.1/3.1.1), and v5 properties.
//!
//! Owns: the mapping between v5 reason codes and 3.1.1 return codes. Must not: choose the
//! reason (the broker does); a v5 code with no 3.1.1 equivalent is written as the nearest one.

use super::primitives::{write_u8, Reader};
use super::properties::{block_size, write_block, Properties};
use super::{ConnAck, ConnAckProperties, DecodeError, ProtocolVersion, ReasonCode};

const SESSION_PRESENT: u8 = 0x01;

/// The 3.1/3.1.1 return code for a reason (3.1.1 section 3.2.2.3). Failures without an
/// equivalent become 3, Server unavailable; so does a non-failure code that CONNACK cannot
/// carry, since reporting success for it would accept a connection the broker did not.
pub fn v3_return_code(reason: ReasonCode) -> u8 {
    match reason {
        ReasonCode::Success => 0,
        ReasonCode::UnsupportedProtocolVersion => 1,
        ReasonCode::ClientIdentifierNotValid => 2,
        ReasonCode::ServerUnavailable => 3,
        ReasonCode::BadUserNameOrPassword => 4,
        ReasonCode::NotAuthorized => 5,
        _ => 3,
    }
}

/// The reason a 3.1/3.1.1 return code stands for; 6 to 255 are reserved.
fn from_v3_return_code(code: u8) -> Result<ReasonCode, DecodeError> {
    Ok(match code {
        0 => ReasonCode::Success,
        1 => ReasonCode::UnsupportedProtocolVersion,
        2 => ReasonCode::ClientIdentifierNotValid,
        3 => ReasonCode::ServerUnavailable,
        4 => ReasonCode::BadUserNameOrPassword,
        5 => ReasonCode::NotAuthorized,
        _ => return Err(DecodeError::Malformed("reserved CONNACK return code")),
    })
}

/// Whether a v5 CONNACK may carry `reason` (5.0 section 3.2.2.2).
fn allowed_v5(reason: ReasonCode) -> bool {
    use ReasonCode::*;
    matches!(
        reason,
        Success
            | UnspecifiedError
            | MalformedPacket
            | ProtocolError
            | ImplementationSpecificError
            | UnsupportedProtocolVersion
            | ClientIdentifierNotValid
            | BadUserNameOrPassword
            | NotAuthorized
            | ServerUnavailable
            | ServerBusy
            | Banned
            | BadAuthenticationMethod
            | TopicNameInvalid
            | PacketTooLarge
            | QuotaExceeded
            | PayloadFormatInvalid
            | RetainNotSupported
            | QoSNotSupported
            | UseAnotherServer
            | ServerMoved
            | ConnectionRateExceeded
    )
}

pub(crate) fn decode(body: &[u8], version: ProtocolVersion) -> Result<ConnAck, DecodeError> {
    let mut r = Reader::new(body);
    let flags = r.u8()?;
    // 3.1 has no session present: its first byte is unused. 3.1.1 and 5.0 reserve bits 7-1
    // of the Connect Acknowledge Flags, which must be 0 (section 3.2.2.1 of both).
    let session_present = match version {
        ProtocolVersion::V3_1 => false,
        _ if flags & !SESSION_PRESENT != 0 => {
            return Err(DecodeError::Malformed("reserved CONNACK flag bits are set"))
        }
        _ => flags & SESSION_PRESENT != 0,
    };
    let code = r.u8()?;
    let (reason, properties) = if version.is_v5() {
        let reason = ReasonCode::try_from(code)
            .ok()
            .filter(|&c| allowed_v5(c))
            .ok_or(DecodeError::Malformed("reason code not valid in CONNACK"))?;
        (reason, ConnAckProperties::decode(&mut r)?)
    } else {
        (from_v3_return_code(code)?, ConnAckProperties::default())
    };
    r.finish()?;
    Ok(ConnAck {
        session_present,
        reason,
        properties,
    })
}

impl ConnAck {
    /// Bytes after the fixed header; `props_len` is `self.properties.len()`, used in v5 only.
    pub(crate) fn body_len(&self, version: ProtocolVersion, props_len: usize) -> usize {
        if version.is_v5() {
            2 + block_size(props_len)
        } else {
            2
        }
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, props_len: usize, out: &mut Vec<u8>) {
        let flags = if self.session_present && version != ProtocolVersion::V3_1 {
            SESSION_PRESENT
        } else {
            0
        };
        write_u8(out, flags);
        if version.is_v5() {
            write_u8(out, self.reason as u8);
            write_block(out, &self.properties, props_len);
        } else {
            write_u8(out, v3_return_code(self.reason));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{check, Want};
    use super::super::{decode_packet, Packet};
    use super::*;

    use ProtocolVersion::{V3_1, V3_1_1, V5};

    fn ack(session_present: bool, reason: ReasonCode) -> ConnAck {
        ConnAck {
            session_present,
            reason,
            properties: ConnAckProperties::default(),
        }
    }

    #[test]
    fn table() {
        use ReasonCode::*;
        let mut with_props = ack(true, Success);
        with_props.properties.assigned_client_identifier = Some("auto".into());
        with_props.properties.maximum_qos = Some(crate::mqtt::QoS::AtLeastOnce);
        let cases: Vec<(&str, ProtocolVersion, &[u8], Want)> = vec![
            (
                "3.1.1 accepted",
                V3_1_1,
                b"\x20\x02\x00\x00",
                Want::Exact(Packet::ConnAck(ack(false, Success))),
            ),
            (
                "3.1.1 session present",
                V3_1_1,
                b"\x20\x02\x01\x00",
                Want::Exact(Packet::ConnAck(ack(true, Success))),
            ),
            (
                "3.1.1 rc 1",
                V3_1_1,
                b"\x20\x02\x00\x01",
                Want::Exact(Packet::ConnAck(ack(false, UnsupportedProtocolVersion))),
            ),
            (
                "3.1.1 rc 2",
                V3_1_1,
                b"\x20\x02\x00\x02",
                Want::Exact(Packet::ConnAck(ack(false, ClientIdentifierNotValid))),
            ),
            (
                "3.1.1 rc 3",
                V3_1_1,
                b"\x20\x02\x00\x03",
                Want::Exact(Packet::ConnAck(ack(false, ServerUnavailable))),
            ),
            (
                "3.1.1 rc 4",
                V3_1_1,
                b"\x20\x02\x00\x04",
                Want::Exact(Packet::ConnAck(ack(false, BadUserNameOrPassword))),
            ),
            (
                "3.1.1 rc 5",
                V3_1_1,
                b"\x20\x02\x00\x05",
                Want::Exact(Packet::ConnAck(ack(false, NotAuthorized))),
            ),
            (
                "3.1.1 rc 6 reserved",
                V3_1_1,
                b"\x20\x02\x00\x06",
                Want::Malformed,
            ),
            (
                "3.1.1 reserved flag",
                V3_1_1,
                b"\x20\x02\x02\x00",
                Want::Malformed,
            ),
            ("3.1.1 truncated", V3_1_1, b"\x20\x01\x00", Want::Malformed),
            (
                "3.1.1 trailing",
                V3_1_1,
                b"\x20\x03\x00\x00\x00",
                Want::Malformed,
            ),
            (
                "3.1.1 flags in header",
                V3_1_1,
                b"\x21\x02\x00\x00",
                Want::Malformed,
            ),
            (
                "3.1 accepted",
                V3_1,
                b"\x20\x02\x00\x00",
                Want::Exact(Packet::ConnAck(ack(false, Success))),
            ),
            (
                "5.0 accepted",
                V5,
                b"\x20\x03\x00\x00\x00",
                Want::Exact(Packet::ConnAck(ack(false, Success))),
            ),
            (
                "5.0 banned",
                V5,
                b"\x20\x03\x00\x8A\x00",
                Want::Exact(Packet::ConnAck(ack(false, Banned))),
            ),
            (
                "5.0 properties",
                V5,
                b"\x20\x0C\x01\x00\x09\x12\x00\x04auto\x24\x01",
                Want::Exact(Packet::ConnAck(with_props)),
            ),
            (
                "5.0 no property length",
                V5,
                b"\x20\x02\x00\x00",
                Want::Malformed,
            ),
            (
                "5.0 reason not for CONNACK",
                V5,
                b"\x20\x03\x00\x01\x00",
                Want::Malformed,
            ),
            (
                "5.0 undefined reason",
                V5,
                b"\x20\x03\x00\x03\x00",
                Want::Malformed,
            ),
            (
                "5.0 property not allowed",
                V5,
                b"\x20\x05\x00\x00\x02\x01\x00",
                Want::Malformed,
            ),
        ];
        for (name, version, bytes, want) in cases {
            check(name, &[version], bytes, &want);
        }
    }

    #[test]
    fn v3_return_codes_for_v5_reasons() {
        use ReasonCode::*;
        let cases = [
            (Success, 0),
            (UnsupportedProtocolVersion, 1),
            (ClientIdentifierNotValid, 2),
            (ServerUnavailable, 3),
            (BadUserNameOrPassword, 4),
            (NotAuthorized, 5),
            (Banned, 3),
            (ServerBusy, 3),
            (MalformedPacket, 3),
            (GrantedQoS1, 3),
        ];
        for (reason, code) in cases {
            let mut out = Vec::new();
            Packet::ConnAck(ack(true, reason)).encode(V3_1_1, &mut out);
            assert_eq!(out, [0x20, 2, 1, code], "{reason:?}");
        }
        // 3.1 has no session present flag.
        let mut out = Vec::new();
        Packet::ConnAck(ack(true, Success)).encode(V3_1, &mut out);
        assert_eq!(out, [0x20, 2, 0, 0]);
        // And 3.1 ignores that byte when reading.
        let got = decode_packet(0x20, &[0xFF, 0], V3_1).unwrap();
        assert_eq!(got, Packet::ConnAck(ack(false, Success)));
    }
}
