//! SUBSCRIBE and SUBACK.
//!
//! Owns: the (filter, options) list, the options byte and the SUBACK codes per version.
//! Must not: validate filters beyond their being UTF-8 strings, or decide what is granted
//! (the broker validates each filter with `mqtt::topic` and answers per filter).

use super::primitives::{string_len, write_string, write_u16, write_u8, Reader};
use super::properties::{block_size, write_block, Properties};
use super::{
    AckProperties, DecodeError, ProtocolVersion, QoS, ReasonCode, RetainHandling, SubAck,
    Subscribe, SubscribeProperties, SubscriptionOptions,
};

const NO_LOCAL: u8 = 0x04;
const RETAIN_AS_PUBLISHED: u8 = 0x08;
const RETAIN_HANDLING_SHIFT: u8 = 4;

impl SubscriptionOptions {
    /// Reads the options byte. 3.1/3.1.1 have only the QoS: bits 2-7 are reserved and a
    /// SUBSCRIBE with any set, or with QoS 3, is malformed [MQTT-3-8.3-4]. 5.0 reserves bits
    /// 6-7 [MQTT-3.8.3-5] and makes QoS 3 and Retain Handling 3 Protocol Errors (3.8.3.1).
    fn decode(byte: u8, version: ProtocolVersion) -> Result<Self, DecodeError> {
        let qos_bits = byte & 0x03;
        if !version.is_v5() {
            if byte & !0x03 != 0 {
                return Err(DecodeError::Malformed(
                    "[MQTT-3-8.3-4] reserved subscription option bits are set",
                ));
            }
            let qos = QoS::try_from(qos_bits)
                .map_err(|_| DecodeError::Malformed("[MQTT-3-8.3-4] requested QoS is 3"))?;
            return Ok(SubscriptionOptions {
                qos,
                ..Default::default()
            });
        }
        if byte & 0xC0 != 0 {
            return Err(DecodeError::Malformed(
                "[MQTT-3.8.3-5] reserved subscription option bits are set",
            ));
        }
        // Both are Protocol Errors by 5.0 3.8.3.1; mosquitto answers them as Malformed Packet,
        // which the specification allows for a packet it cannot parse as intended.
        let qos = QoS::try_from(qos_bits)
            .map_err(|_| DecodeError::Malformed("maximum QoS 3 in subscription options"))?;
        let retain_handling = match (byte >> RETAIN_HANDLING_SHIFT) & 0x03 {
            0 => RetainHandling::SendOnSubscribe,
            1 => RetainHandling::SendIfNewSubscription,
            2 => RetainHandling::DoNotSend,
            _ => return Err(DecodeError::Malformed("retain handling 3 (5.0 3.8.3.1)")),
        };
        Ok(SubscriptionOptions {
            qos,
            no_local: byte & NO_LOCAL != 0,
            retain_as_published: byte & RETAIN_AS_PUBLISHED != 0,
            retain_handling,
        })
    }

    /// The options byte; only the QoS exists before v5.
    fn encode(self, version: ProtocolVersion) -> u8 {
        let mut byte = self.qos as u8;
        if version.is_v5() {
            if self.no_local {
                byte |= NO_LOCAL;
            }
            if self.retain_as_published {
                byte |= RETAIN_AS_PUBLISHED;
            }
            byte |= (self.retain_handling as u8) << RETAIN_HANDLING_SHIFT;
        }
        byte
    }
}

pub(crate) fn decode_subscribe(
    body: &[u8],
    version: ProtocolVersion,
) -> Result<Subscribe, DecodeError> {
    let mut r = Reader::new(body);
    let packet_id = r.packet_id()?;
    let properties = if version.is_v5() {
        SubscribeProperties::decode(&mut r)?
    } else {
        SubscribeProperties::default()
    };
    let mut filters = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?.to_owned();
        let options = SubscriptionOptions::decode(r.u8()?, version)?;
        filters.push((filter, options));
    }
    // 3.1.1 calls it a protocol violation, 5.0 a Protocol Error (mosquitto answers Malformed
    // Packet); 3.1 does not forbid it, and mosquitto answers it with an empty SUBACK.
    if filters.is_empty() && version != ProtocolVersion::V3_1 {
        return Err(DecodeError::Malformed(
            "[MQTT-3.8.3-3] SUBSCRIBE without any topic filter",
        ));
    }
    Ok(Subscribe {
        packet_id,
        filters,
        properties,
    })
}

impl Subscribe {
    pub(crate) fn body_len(&self, version: ProtocolVersion, props_len: usize) -> usize {
        let mut len = 2;
        if version.is_v5() {
            len += block_size(props_len);
        }
        for (filter, _) in &self.filters {
            len += string_len(filter) + 1;
        }
        len
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, props_len: usize, out: &mut Vec<u8>) {
        write_u16(out, self.packet_id.get());
        if version.is_v5() {
            write_block(out, &self.properties, props_len);
        }
        for (filter, options) in &self.filters {
            write_string(out, filter);
            write_u8(out, options.encode(version));
        }
    }
}

/// Whether a v5 SUBACK may carry `reason` (5.0 section 3.9.3).
fn suback_allows(reason: ReasonCode) -> bool {
    use ReasonCode::*;
    matches!(
        reason,
        Success
            | GrantedQoS1
            | GrantedQoS2
            | UnspecifiedError
            | ImplementationSpecificError
            | NotAuthorized
            | TopicFilterInvalid
            | PacketIdentifierInUse
            | QuotaExceeded
            | SharedSubscriptionsNotSupported
            | SubscriptionIdentifiersNotSupported
            | WildcardSubscriptionsNotSupported
    )
}

/// The 3.1.1 SUBACK return code: the granted QoS, or 0x80 for any failure. A code that is
/// neither (nothing a broker should send) is reported as a failure, the safe reading.
fn v3_suback_code(reason: ReasonCode) -> u8 {
    match reason {
        ReasonCode::Success => 0x00,
        ReasonCode::GrantedQoS1 => 0x01,
        ReasonCode::GrantedQoS2 => 0x02,
        _ => 0x80,
    }
}

pub(crate) fn decode_suback(body: &[u8], version: ProtocolVersion) -> Result<SubAck, DecodeError> {
    let mut r = Reader::new(body);
    let packet_id = r.packet_id()?;
    let properties = if version.is_v5() {
        AckProperties::decode(&mut r)?
    } else {
        AckProperties::default()
    };
    let mut reasons = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        let byte = r.u8()?;
        let reason = if version.is_v5() {
            ReasonCode::try_from(byte)
                .ok()
                .filter(|&c| suback_allows(c))
                .ok_or(DecodeError::Malformed("reason code not valid in SUBACK"))?
        } else {
            // [MQTT-3.9.3-2]: 0x00, 0x01, 0x02 and 0x80 are the only return codes.
            match byte {
                0x00 => ReasonCode::Success,
                0x01 => ReasonCode::GrantedQoS1,
                0x02 => ReasonCode::GrantedQoS2,
                0x80 => ReasonCode::UnspecifiedError,
                _ => {
                    return Err(DecodeError::Malformed(
                        "[MQTT-3.9.3-2] reserved SUBACK return code",
                    ))
                }
            }
        };
        reasons.push(reason);
    }
    Ok(SubAck {
        packet_id,
        reasons,
        properties,
    })
}

impl SubAck {
    pub(crate) fn body_len(&self, version: ProtocolVersion, props_len: usize) -> usize {
        let mut len = 2 + self.reasons.len();
        if version.is_v5() {
            len += block_size(props_len);
        }
        len
    }

    pub(crate) fn write_body(&self, version: ProtocolVersion, props_len: usize, out: &mut Vec<u8>) {
        write_u16(out, self.packet_id.get());
        if version.is_v5() {
            write_block(out, &self.properties, props_len);
            out.extend(self.reasons.iter().map(|&r| r as u8));
        } else {
            out.extend(self.reasons.iter().map(|&r| v3_suback_code(r)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{check, round_trip, Want};
    use super::super::{Packet, PacketId};
    use super::*;

    use ProtocolVersion::{V3_1, V3_1_1, V5};

    fn pid(id: u16) -> PacketId {
        PacketId::new(id).expect("test ids are nonzero")
    }

    fn sub(filters: &[(&str, SubscriptionOptions)]) -> Packet {
        Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            filters: filters.iter().map(|(f, o)| (f.to_string(), *o)).collect(),
            properties: SubscribeProperties::default(),
        })
    }

    fn qos(qos: QoS) -> SubscriptionOptions {
        SubscriptionOptions {
            qos,
            ..Default::default()
        }
    }

    fn suback(reasons: &[ReasonCode]) -> Packet {
        Packet::SubAck(SubAck {
            packet_id: pid(1),
            reasons: reasons.to_vec(),
            properties: AckProperties::default(),
        })
    }

    #[test]
    fn subscribe_table() {
        let v3 = &[V3_1, V3_1_1][..];
        let v5 = &[V5][..];
        let all_options = SubscriptionOptions {
            qos: QoS::ExactlyOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::DoNotSend,
        };
        let with_id = Packet::Subscribe(Subscribe {
            packet_id: pid(1),
            filters: vec![("a/+".into(), qos(QoS::AtLeastOnce))],
            properties: SubscribeProperties {
                subscription_identifier: Some(200),
                user: vec![],
            },
        });
        let cases: Vec<(&str, &[ProtocolVersion], &[u8], Want)> = vec![
            // mosquitto_sub -V mqttv311 -t a/# -t b -q 1, as captured.
            (
                "mosquitto_sub 3.1.1",
                v3,
                b"\x82\x0C\x00\x01\x00\x03a/#\x01\x00\x01b\x01",
                Want::Exact(sub(&[
                    ("a/#", qos(QoS::AtLeastOnce)),
                    ("b", qos(QoS::AtLeastOnce)),
                ])),
            ),
            (
                "5.0 one filter",
                v5,
                b"\x82\x07\x00\x01\x00\x00\x01t\x00",
                Want::Exact(sub(&[("t", qos(QoS::AtMostOnce))])),
            ),
            (
                "5.0 all options",
                v5,
                b"\x82\x07\x00\x01\x00\x00\x01t\x2E",
                Want::Exact(sub(&[("t", all_options)])),
            ),
            (
                "5.0 subscription id",
                v5,
                b"\x82\x0C\x00\x01\x03\x0B\xC8\x01\x00\x03a/+\x01",
                Want::Exact(with_id),
            ),
            ("no filter", &[V3_1_1], b"\x82\x02\x00\x01", Want::Malformed),
            (
                "5.0 no filter",
                v5,
                b"\x82\x03\x00\x01\x00",
                Want::Malformed,
            ),
            (
                "flags 0",
                &[V3_1_1],
                b"\x80\x06\x00\x01\x00\x01t\x00",
                Want::Malformed,
            ),
            (
                "flags 3",
                &[V3_1_1],
                b"\x83\x06\x00\x01\x00\x01t\x00",
                Want::Malformed,
            ),
            (
                "packet id 0",
                v3,
                b"\x82\x06\x00\x00\x00\x01t\x00",
                Want::Malformed,
            ),
            (
                "3.1.1 qos 3",
                v3,
                b"\x82\x06\x00\x01\x00\x01t\x03",
                Want::Malformed,
            ),
            (
                "3.1.1 reserved bit 2",
                v3,
                b"\x82\x06\x00\x01\x00\x01t\x04",
                Want::Malformed,
            ),
            (
                "3.1.1 reserved bit 7",
                v3,
                b"\x82\x06\x00\x01\x00\x01t\x80",
                Want::Malformed,
            ),
            (
                "5.0 reserved bit 6",
                v5,
                b"\x82\x07\x00\x01\x00\x00\x01t\x40",
                Want::Malformed,
            ),
            (
                "5.0 retain handling 3",
                v5,
                b"\x82\x07\x00\x01\x00\x00\x01t\x30",
                Want::Malformed,
            ),
            (
                "5.0 qos 3",
                v5,
                b"\x82\x07\x00\x01\x00\x00\x01t\x03",
                Want::Malformed,
            ),
            (
                "missing options byte",
                v3,
                b"\x82\x05\x00\x01\x00\x01t",
                Want::Malformed,
            ),
            (
                "filter invalid UTF-8",
                v3,
                b"\x82\x06\x00\x01\x00\x01\xFE\x00",
                Want::Malformed,
            ),
            (
                "filter with U+0000",
                v3,
                b"\x82\x06\x00\x01\x00\x01\x00\x00",
                Want::Malformed,
            ),
            (
                "5.0 subscription id 0",
                v5,
                b"\x82\x09\x00\x01\x02\x0B\x00\x00\x01t\x00",
                Want::Malformed,
            ),
            (
                "5.0 subscription id twice",
                v5,
                b"\x82\x0B\x00\x01\x04\x0B\x01\x0B\x02\x00\x01t\x00",
                Want::Protocol,
            ),
            (
                "5.0 property not allowed",
                v5,
                b"\x82\x0A\x00\x01\x03\x21\x00\x01\x00\x01t\x00",
                Want::Malformed,
            ),
        ];
        for (name, versions, bytes, want) in cases {
            check(name, versions, bytes, &want);
        }
    }

    #[test]
    fn v3_writes_only_the_qos_bits() {
        let all_options = SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::SendIfNewSubscription,
        };
        let mut out = Vec::new();
        sub(&[("t", all_options)]).encode(V3_1_1, &mut out);
        assert_eq!(out, b"\x82\x06\x00\x01\x00\x01t\x01");
        round_trip(&sub(&[("t", all_options)]), V5);
    }

    #[test]
    fn suback_table() {
        use ReasonCode::*;
        let v3 = &[V3_1, V3_1_1][..];
        let v5 = &[V5][..];
        let mut with_props = SubAck {
            packet_id: pid(1),
            reasons: vec![NotAuthorized],
            properties: AckProperties::default(),
        };
        with_props.properties.reason_string = Some("no".into());
        let cases: Vec<(&str, &[ProtocolVersion], &[u8], Want)> = vec![
            (
                "3.1.1 granted and failed",
                v3,
                b"\x90\x06\x00\x01\x00\x01\x02\x80",
                Want::Exact(suback(&[
                    Success,
                    GrantedQoS1,
                    GrantedQoS2,
                    UnspecifiedError,
                ])),
            ),
            (
                "3.1.1 reserved code",
                v3,
                b"\x90\x03\x00\x01\x03",
                Want::Malformed,
            ),
            (
                "3.1.1 5.0-only code",
                v3,
                b"\x90\x03\x00\x01\x87",
                Want::Malformed,
            ),
            (
                "5.0 codes",
                v5,
                b"\x90\x06\x00\x01\x00\x01\x87\xA2",
                Want::Exact(suback(&[
                    GrantedQoS1,
                    NotAuthorized,
                    WildcardSubscriptionsNotSupported,
                ])),
            ),
            (
                "5.0 reason string",
                v5,
                b"\x90\x09\x00\x01\x05\x1F\x00\x02no\x87",
                Want::Exact(Packet::SubAck(with_props)),
            ),
            (
                "5.0 code not for SUBACK",
                v5,
                b"\x90\x04\x00\x01\x00\x92",
                Want::Malformed,
            ),
            (
                "5.0 missing properties",
                v5,
                b"\x90\x02\x00\x01",
                Want::Malformed,
            ),
            ("packet id 0", v3, b"\x90\x03\x00\x00\x00", Want::Malformed),
            (
                "flags 2",
                &[V3_1_1],
                b"\x92\x03\x00\x01\x00",
                Want::Malformed,
            ),
        ];
        for (name, versions, bytes, want) in cases {
            check(name, versions, bytes, &want);
        }
    }

    #[test]
    fn v3_suback_maps_every_failure_to_0x80() {
        use ReasonCode::*;
        let mut out = Vec::new();
        suback(&[
            NotAuthorized,
            TopicFilterInvalid,
            QuotaExceeded,
            GrantedQoS2,
        ])
        .encode(V3_1_1, &mut out);
        assert_eq!(out, b"\x90\x06\x00\x01\x80\x80\x80\x02");
    }
}
