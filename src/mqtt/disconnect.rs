//! DISCONNECT: an empty body before v5; in v5 an optional reason code and properties.
//!
//! Owns: its codec and the reason codes it may carry. Must not: act on the reason (the client
//! reader decides whether the will is sent).

use super::primitives::{write_u8, Reader};
use super::properties::{block_size, write_block, Properties};
use super::{DecodeError, Disconnect, DisconnectProperties, ProtocolVersion, ReasonCode};

/// Whether a DISCONNECT may carry `reason` (5.0 section 3.14.2.1).
fn allowed(reason: ReasonCode) -> bool {
    use ReasonCode::*;
    matches!(
        reason,
        Success
            | DisconnectWithWillMessage
            | UnspecifiedError
            | MalformedPacket
            | ProtocolError
            | ImplementationSpecificError
            | NotAuthorized
            | ServerBusy
            | ServerShuttingDown
            | KeepAliveTimeout
            | SessionTakenOver
            | TopicFilterInvalid
            | TopicNameInvalid
            | ReceiveMaximumExceeded
            | TopicAliasInvalid
            | PacketTooLarge
            | MessageRateTooHigh
            | QuotaExceeded
            | AdministrativeAction
            | PayloadFormatInvalid
            | RetainNotSupported
            | QoSNotSupported
            | UseAnotherServer
            | ServerMoved
            | SharedSubscriptionsNotSupported
            | ConnectionRateExceeded
            | MaximumConnectTime
            | SubscriptionIdentifiersNotSupported
            | WildcardSubscriptionsNotSupported
    )
}

/// Decodes a DISCONNECT body. v5: remaining length 0 is Normal disconnection, 1 is the reason
/// alone, more adds the properties (5.0 3.14.2.1 and 3.14.2.2.1).
pub(crate) fn decode(body: &[u8], version: ProtocolVersion) -> Result<Disconnect, DecodeError> {
    let mut r = Reader::new(body);
    let mut disconnect = Disconnect::default();
    if version.is_v5() && !r.is_empty() {
        disconnect.reason = ReasonCode::try_from(r.u8()?)
            .ok()
            .filter(|&c| allowed(c))
            .ok_or(DecodeError::Malformed(
                "reason code not valid in DISCONNECT",
            ))?;
        if !r.is_empty() {
            // A property DISCONNECT may not carry is a Protocol Error, as mosquitto answers it.
            disconnect.properties = DisconnectProperties::decode(&mut r).map_err(|e| match e {
                DecodeError::Malformed(why) if why.starts_with("property not valid") => {
                    DecodeError::Protocol(why)
                }
                other => other,
            })?;
        }
    }
    // Before v5 the body is empty (3.1.1 3.14.2 and 3.14.3).
    r.finish()?;
    Ok(disconnect)
}

impl Disconnect {
    /// Bytes after the fixed header: the shortest form that says everything.
    pub(crate) fn body_len(&self, version: ProtocolVersion, props_len: usize) -> usize {
        reason_and_properties_len(version, self.reason, props_len)
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, props_len: usize, out: &mut Vec<u8>) {
        let len = self.body_len(version, props_len);
        if len > 0 {
            write_u8(out, self.reason as u8);
        }
        if len > 1 {
            write_block(out, &self.properties, props_len);
        }
    }
}

/// The body length of a DISCONNECT or AUTH: nothing when Success without properties (or
/// before v5), the reason alone without properties, else the reason and the properties.
pub(crate) fn reason_and_properties_len(
    version: ProtocolVersion,
    reason: ReasonCode,
    props_len: usize,
) -> usize {
    if !version.is_v5() {
        0
    } else if props_len > 0 {
        1 + block_size(props_len)
    } else if reason != ReasonCode::Success {
        1
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{check, Want};
    use super::super::Packet;
    use super::*;

    use ProtocolVersion::{V3_1, V3_1_1, V5};

    fn disconnect(reason: ReasonCode) -> Packet {
        Packet::Disconnect(Disconnect {
            reason,
            properties: DisconnectProperties::default(),
        })
    }

    #[test]
    fn table() {
        use ReasonCode::*;
        let v3 = &[V3_1, V3_1_1][..];
        let all = &[V3_1, V3_1_1, V5][..];
        let v5 = &[V5][..];
        let mut with_props = Disconnect {
            reason: ServerShuttingDown,
            properties: DisconnectProperties::default(),
        };
        with_props.properties.session_expiry_interval = Some(0);
        with_props.properties.server_reference = Some("b".into());
        let cases: Vec<(&str, &[ProtocolVersion], &[u8], Want)> = vec![
            // What mosquitto_pub sends, in every version.
            ("empty", all, b"\xE0\x00", Want::Exact(disconnect(Success))),
            ("3.1.1 non-empty", v3, b"\xE0\x01\x00", Want::Malformed),
            ("flags", &[V3_1_1, V5], b"\xE1\x00", Want::Malformed),
            (
                "5.0 reason only",
                v5,
                b"\xE0\x01\x04",
                Want::Exact(disconnect(DisconnectWithWillMessage)),
            ),
            (
                "5.0 explicit success",
                v5,
                b"\xE0\x01\x00",
                Want::Decodes(disconnect(Success)),
            ),
            (
                "5.0 success, empty properties",
                v5,
                b"\xE0\x02\x00\x00",
                Want::Decodes(disconnect(Success)),
            ),
            (
                "5.0 reason and properties",
                v5,
                b"\xE0\x0B\x8B\x09\x11\x00\x00\x00\x00\x1C\x00\x01b",
                Want::Exact(Packet::Disconnect(with_props)),
            ),
            (
                "5.0 reason not for DISCONNECT",
                v5,
                b"\xE0\x01\x01",
                Want::Malformed,
            ),
            ("5.0 undefined reason", v5, b"\xE0\x01\x05", Want::Malformed),
            (
                "5.0 property not allowed",
                v5,
                b"\xE0\x04\x00\x02\x01\x00",
                Want::Protocol,
            ),
            (
                "5.0 duplicate reason string",
                v5,
                b"\xE0\x08\x00\x06\x1F\x00\x00\x1F\x00\x00",
                Want::Protocol,
            ),
            (
                "5.0 property length past end",
                v5,
                b"\xE0\x03\x00\x05\x11",
                Want::Malformed,
            ),
            ("5.0 trailing", v5, b"\xE0\x03\x00\x00\x00", Want::Malformed),
        ];
        for (name, versions, bytes, want) in cases {
            check(name, versions, bytes, &want);
        }
        // 3.1.1 writes an empty body whatever the reason.
        let mut out = Vec::new();
        disconnect(ServerShuttingDown).encode(V3_1_1, &mut out);
        assert_eq!(out, b"\xE0\x00");
    }
}
