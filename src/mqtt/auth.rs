//! AUTH (v5 only): extended authentication exchange.
//!
//! Owns: its codec and the reason codes it may carry. Must not: run an authentication method
//! (the broker does); before v5 the packet type does not exist and `frame` refuses it.

use super::disconnect::reason_and_properties_len;
use super::primitives::{write_u8, Reader};
use super::properties::{write_block, Properties};
use super::{Auth, AuthProperties, DecodeError, ProtocolVersion, ReasonCode};

/// Decodes an AUTH body: remaining length 0 means Success with no properties, 1 the reason
/// alone, more the reason and properties (5.0 3.15.2.1). The reason is 0x00, 0x18 or 0x19.
pub(crate) fn decode(body: &[u8]) -> Result<Auth, DecodeError> {
    let mut r = Reader::new(body);
    let mut auth = Auth::default();
    if !r.is_empty() {
        auth.reason = match r.u8()? {
            0x00 => ReasonCode::Success,
            0x18 => ReasonCode::ContinueAuthentication,
            0x19 => ReasonCode::ReAuthenticate,
            _ => return Err(DecodeError::Malformed("reason code not valid in AUTH")),
        };
        if !r.is_empty() {
            auth.properties = AuthProperties::decode(&mut r)?;
        }
    }
    r.finish()?;
    Ok(auth)
}

impl Auth {
    /// AUTH is always written in its v5 form: it exists in no other version, and the broker
    /// never sends it to a 3.1/3.1.1 client.
    pub(crate) fn body_len(&self, props_len: usize) -> usize {
        reason_and_properties_len(ProtocolVersion::V5, self.reason, props_len)
    }

    pub(crate) fn write_body(&self, props_len: usize, out: &mut Vec<u8>) {
        let len = self.body_len(props_len);
        if len > 0 {
            write_u8(out, self.reason as u8);
        }
        if len > 1 {
            write_block(out, &self.properties, props_len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{check, Want};
    use super::super::Packet;
    use super::*;

    use ProtocolVersion::{V3_1, V3_1_1, V5};

    fn auth(reason: ReasonCode) -> Packet {
        Packet::Auth(Auth {
            reason,
            properties: AuthProperties::default(),
        })
    }

    #[test]
    fn table() {
        use ReasonCode::*;
        let v5 = &[V5][..];
        let mut with_props = Auth {
            reason: ContinueAuthentication,
            properties: AuthProperties::default(),
        };
        with_props.properties.authentication_method = Some("SCRAM".into());
        with_props.properties.authentication_data = Some(vec![1, 2]);
        let cases: Vec<(&str, &[ProtocolVersion], &[u8], Want)> = vec![
            (
                "empty is success",
                v5,
                b"\xF0\x00",
                Want::Exact(auth(Success)),
            ),
            (
                "reason only",
                v5,
                b"\xF0\x01\x19",
                Want::Exact(auth(ReAuthenticate)),
            ),
            (
                "explicit success",
                v5,
                b"\xF0\x01\x00",
                Want::Decodes(auth(Success)),
            ),
            (
                "method and data",
                v5,
                b"\xF0\x0F\x18\x0D\x15\x00\x05SCRAM\x16\x00\x02\x01\x02",
                Want::Exact(Packet::Auth(with_props)),
            ),
            ("reason not for AUTH", v5, b"\xF0\x01\x87", Want::Malformed),
            ("flags", v5, b"\xF1\x00", Want::Malformed),
            (
                "property not allowed",
                v5,
                b"\xF0\x04\x18\x02\x01\x00",
                Want::Malformed,
            ),
            (
                "duplicate method",
                v5,
                b"\xF0\x08\x18\x06\x15\x00\x00\x15\x00\x00",
                Want::Protocol,
            ),
            ("trailing", v5, b"\xF0\x03\x18\x00\x00", Want::Malformed),
            ("before v5", &[V3_1, V3_1_1], b"\xF0\x00", Want::Protocol),
        ];
        for (name, versions, bytes, want) in cases {
            check(name, versions, bytes, &want);
        }
    }
}
