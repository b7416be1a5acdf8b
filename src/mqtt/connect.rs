//! CONNECT: the one packet that declares its own protocol version.
//!
//! Owns: decoding and encoding CONNECT for 3.1 (`MQIsdp`, level 3), 3.1.1 (`MQTT`, 4) and 5.0
//! (`MQTT`, 5). Must not: judge the client id, credentials or will topic (the broker does), or
//! use the connection's version: a CONNECT is read and written as its own `protocol` says.

use std::sync::Arc;

use super::primitives::{
    binary_len, string_len, write_binary, write_string, write_u16, write_u8, Reader,
};
use super::properties::{block_size, write_block, Properties};
use super::{Connect, ConnectProperties, DecodeError, ProtocolVersion, QoS, Will, WillProperties};

const USERNAME: u8 = 0x80;
const PASSWORD: u8 = 0x40;
const WILL_RETAIN: u8 = 0x20;
const WILL_QOS_SHIFT: u8 = 3;
const WILL_FLAG: u8 = 0x04;
const CLEAN_START: u8 = 0x02;
const RESERVED: u8 = 0x01;

impl ProtocolVersion {
    /// The protocol name CONNECT carries for this version.
    pub fn protocol_name(self) -> &'static str {
        match self {
            ProtocolVersion::V3_1 => "MQIsdp",
            ProtocolVersion::V3_1_1 | ProtocolVersion::V5 => "MQTT",
        }
    }
}

/// Decodes a CONNECT body.
pub(crate) fn decode(body: &[u8]) -> Result<Connect, DecodeError> {
    let mut r = Reader::new(body);
    let name = r.string()?;
    let level = r.u8()?;
    // Bit 7 of a 3.1 or 3.1.1 level marks a bridge (a mosquitto extension that mosquitto
    // accepts from anyone); the connection is then an ordinary one of that version.
    let protocol = match (name, level) {
        ("MQIsdp", 3 | 0x83) => ProtocolVersion::V3_1,
        ("MQTT", 4 | 0x84) => ProtocolVersion::V3_1_1,
        ("MQTT", 5) => ProtocolVersion::V5,
        // A name we know with a level we do not: the broker answers CONNACK 0x84 (3.1.1 return
        // code 1) and closes [MQTT-3.1.2-2]. Nothing after the level can be trusted to follow
        // our layout, so decoding stops here.
        ("MQIsdp" | "MQTT", level) => return Err(DecodeError::UnsupportedProtocol { level }),
        // Not MQTT at all: [MQTT-3.1.2-1] lets the server close the connection without a
        // CONNACK, and a packet that is not a CONNECT of this specification cannot be parsed
        // by it, so this is Malformed rather than a Protocol Error.
        _ => {
            return Err(DecodeError::Malformed(
                "[MQTT-3.1.2-1] protocol name is not MQTT or MQIsdp",
            ))
        }
    };

    let flags = r.u8()?;
    // 3.1 has none of the flag rules below; mosquitto accepts such a 3.1 CONNECT, and so do we.
    let v3_1 = protocol == ProtocolVersion::V3_1;
    if flags & RESERVED != 0 && !v3_1 {
        return Err(DecodeError::Malformed(
            "[MQTT-3.1.2-3] reserved CONNECT flag is set",
        ));
    }
    let has_will = flags & WILL_FLAG != 0;
    let will_qos_bits = (flags >> WILL_QOS_SHIFT) & 0x03;
    let will_retain = flags & WILL_RETAIN != 0;
    if !has_will && (will_qos_bits != 0 || will_retain) && !v3_1 {
        // 3.1.1 [MQTT-3.1.2-13] and [MQTT-3.1.2-15]; 5.0 [MQTT-3.1.2-11] and [MQTT-3.1.2-13].
        return Err(DecodeError::Malformed(
            "[MQTT-3.1.2-11] will QoS or will retain set without the will flag",
        ));
    }
    let will_qos = QoS::try_from(will_qos_bits).map_err(|_| {
        // 3.1.1 [MQTT-3.1.2-14]; 5.0 [MQTT-3.1.2-12].
        DecodeError::Malformed("[MQTT-3.1.2-12] will QoS is 3")
    })?;
    let has_username = flags & USERNAME != 0;
    let has_password = flags & PASSWORD != 0;
    if has_password && !has_username && !protocol.is_v5() {
        // 5.0 dropped this rule: a password alone may carry other credentials.
        return Err(DecodeError::Malformed(
            "[MQTT-3.1.2-22] password flag set without the user name flag",
        ));
    }
    let keep_alive = r.u16()?;
    let properties = if protocol.is_v5() {
        ConnectProperties::decode(&mut r)?
    } else {
        ConnectProperties::default()
    };

    // The payload, in the order [MQTT-3.1.3-1] fixes. An empty client id is the broker's
    // call ([MQTT-3.1.3-6] and after), so it is not refused here.
    let client_id = r.string()?.to_owned();
    let will = if has_will {
        let properties = if protocol.is_v5() {
            WillProperties::decode(&mut r)?
        } else {
            WillProperties::default()
        };
        let topic = r.string()?.to_owned();
        let payload: Arc<[u8]> = Arc::from(r.binary()?);
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    // In 3.1 a flag whose field is missing or unreadable is ignored, as mosquitto does.
    let username = if has_username {
        match r.string() {
            Ok(name) => Some(name.to_owned()),
            Err(_) if v3_1 => None,
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    let password = if has_password {
        match r.binary() {
            Ok(secret) => Some(secret.to_vec()),
            Err(_) if v3_1 => None,
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    r.finish()?;

    Ok(Connect {
        protocol,
        clean_start: flags & CLEAN_START != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
        bridge: level & 0x80 != 0,
    })
}

impl Connect {
    /// Bytes after the fixed header. Properties are counted (and written) only for 5.0.
    pub(crate) fn body_len(&self) -> usize {
        let v5 = self.protocol.is_v5();
        let mut len = string_len(self.protocol.protocol_name()) + 1 + 1 + 2;
        if v5 {
            len += block_size(self.properties.len());
        }
        len += string_len(&self.client_id);
        if let Some(will) = &self.will {
            if v5 {
                len += block_size(will.properties.len());
            }
            len += string_len(&will.topic) + binary_len(&will.payload);
        }
        if let Some(username) = &self.username {
            len += string_len(username);
        }
        if let Some(password) = &self.password {
            len += binary_len(password);
        }
        len
    }

    /// Writes the body. A 3.1/3.1.1 CONNECT with a password but no user name is written as
    /// given, although the decoder refuses it [MQTT-3.1.2-22]: the codec does not repair it.
    pub(crate) fn write_body(&self, out: &mut Vec<u8>) {
        let v5 = self.protocol.is_v5();
        write_string(out, self.protocol.protocol_name());
        // The bridge flag exists only for 3.1 and 3.1.1, whose levels leave bit 7 free.
        let bridge = if self.bridge && !v5 { 0x80 } else { 0 };
        write_u8(out, self.protocol.level() | bridge);
        let mut flags = 0;
        if self.username.is_some() {
            flags |= USERNAME;
        }
        if self.password.is_some() {
            flags |= PASSWORD;
        }
        if let Some(will) = &self.will {
            flags |= WILL_FLAG | ((will.qos as u8) << WILL_QOS_SHIFT);
            if will.retain {
                flags |= WILL_RETAIN;
            }
        }
        if self.clean_start {
            flags |= CLEAN_START;
        }
        write_u8(out, flags);
        write_u16(out, self.keep_alive);
        if v5 {
            write_block(out, &self.properties, self.properties.len());
        }
        write_string(out, &self.client_id);
        if let Some(will) = &self.will {
            if v5 {
                write_block(out, &will.properties, will.properties.len());
            }
            write_string(out, &will.topic);
            write_binary(out, &will.payload);
        }
        if let Some(username) = &self.username {
            write_string(out, username);
        }
        if let Some(password) = &self.password {
            write_binary(out, password);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{decode_packet, Packet};
    use super::*;

    /// What a case should decode to.
    enum Want {
        /// Decodes to this, and encodes back to the same bytes.
        Exact(Connect),
        /// Decodes to this; the encoding differs (a non-canonical input).
        Decodes(Connect),
        Malformed,
        Unsupported(u8),
    }

    fn basic(protocol: ProtocolVersion, client_id: &str) -> Connect {
        Connect {
            protocol,
            clean_start: true,
            keep_alive: 60,
            client_id: client_id.into(),
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
            bridge: false,
        }
    }

    /// Runs one named case through decode and, for `Exact`, encode: the whole packet,
    /// fixed header included, is the case's bytes.
    fn check(name: &str, bytes: &[u8], want: Want) {
        let (first, body) = split(bytes);
        // CONNECT ignores the connection's version; try with each to prove it.
        for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
            let got = decode_packet(first, body, version);
            match (&want, got) {
                (Want::Exact(c) | Want::Decodes(c), Ok(Packet::Connect(got))) => {
                    assert_eq!(&*got, c, "{name}");
                }
                (Want::Malformed, Err(DecodeError::Malformed(_))) => {}
                (Want::Unsupported(l), Err(DecodeError::UnsupportedProtocol { level })) => {
                    assert_eq!(*l, level, "{name}")
                }
                (_, got) => panic!("{name}: got {got:?}"),
            }
        }
        if let Want::Exact(c) = want {
            let mut out = Vec::new();
            Packet::Connect(Box::new(c)).encode(ProtocolVersion::V3_1, &mut out);
            assert_eq!(out, bytes, "{name}: encode");
        }
    }

    /// Splits a whole packet into its first byte and its body, checking the remaining length.
    fn split(bytes: &[u8]) -> (u8, &[u8]) {
        let mut r = Reader::new(bytes.get(1..).expect("test packet has a first byte"));
        let len = r.varint().expect("test packet has a remaining length") as usize;
        let body = r.rest();
        assert_eq!(body.len(), len, "test packet remaining length");
        (bytes[0], body)
    }

    /// CONNECTs captured from mosquitto_pub 2.0.11 (a TCP listener printing what arrived).
    #[test]
    fn mosquitto_pub_captures() {
        // mosquitto_pub -V mqttv311 -i pub1 -u user -P pass --will-topic w --will-payload gone
        //   --will-qos 1 --will-retain -t t -m m
        let bytes = b"\x10\x25\x00\x04MQTT\x04\xEE\x00\x3C\x00\x04pub1\x00\x01w\x00\x04gone\
\x00\x04user\x00\x04pass";
        let mut c = basic(ProtocolVersion::V3_1_1, "pub1");
        c.will = Some(Will {
            topic: "w".into(),
            payload: Arc::from(&b"gone"[..]),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: WillProperties::default(),
        });
        c.username = Some("user".into());
        c.password = Some(b"pass".to_vec());
        check("mosquitto_pub 3.1.1", bytes, Want::Exact(c));

        // mosquitto_pub -V 5 -i pub5 -D connect session-expiry-interval 120 -t t -m m
        let bytes = b"\x10\x19\x00\x04MQTT\x05\x02\x00\x3C\x08\x11\x00\x00\x00\x78\x21\x00\x14\
\x00\x04pub5";
        let mut c = basic(ProtocolVersion::V5, "pub5");
        c.properties.session_expiry_interval = Some(120);
        c.properties.receive_maximum = Some(20);
        check("mosquitto_pub 5.0", bytes, Want::Exact(c));

        // mosquitto_pub -V 5 -t t -m m (no client id: the broker assigns one)
        let bytes = b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3C\x03\x21\x00\x14\x00\x00";
        let mut c = basic(ProtocolVersion::V5, "");
        c.properties.receive_maximum = Some(20);
        check("mosquitto_pub 5.0 no id", bytes, Want::Exact(c));

        // mosquitto_pub -V mqttv31 -i pub31 -t t -m m
        let bytes = b"\x10\x13\x00\x06MQIsdp\x03\x02\x00\x3C\x00\x05pub31";
        check(
            "mosquitto_pub 3.1",
            bytes,
            Want::Exact(basic(ProtocolVersion::V3_1, "pub31")),
        );
    }

    #[test]
    fn table() {
        let v5_props = {
            let mut c = basic(ProtocolVersion::V5, "");
            c.clean_start = false;
            c.keep_alive = 0;
            c.properties.session_expiry_interval = Some(120);
            c.properties.receive_maximum = Some(10);
            c.password = Some(vec![0xFF]);
            c.will = Some(Will {
                topic: "t".into(),
                payload: Arc::from(&[][..]),
                qos: QoS::ExactlyOnce,
                retain: false,
                properties: WillProperties {
                    will_delay_interval: Some(30),
                    ..Default::default()
                },
            });
            c
        };
        let cases: Vec<(&str, &[u8], Want)> = vec![
            (
                "3.1 MQIsdp",
                b"\x10\x12\x00\x06MQIsdp\x03\x02\x00\x3C\x00\x04abcd",
                Want::Exact(basic(ProtocolVersion::V3_1, "abcd")),
            ),
            (
                "3.1.1 empty client id",
                b"\x10\x0C\x00\x04MQTT\x04\x02\x00\x3C\x00\x00",
                Want::Exact(basic(ProtocolVersion::V3_1_1, "")),
            ),
            (
                "5.0 minimal",
                b"\x10\x0E\x00\x04MQTT\x05\x02\x00\x3C\x00\x00\x01a",
                Want::Exact(basic(ProtocolVersion::V5, "a")),
            ),
            (
                // Password without user name is allowed in 5.0; will properties come
                // before the will topic.
                "5.0 properties, will properties, password only",
                b"\x10\x23\x00\x04MQTT\x05\x54\x00\x00\
\x08\x11\x00\x00\x00\x78\x21\x00\x0A\
\x00\x00\
\x05\x18\x00\x00\x00\x1E\x00\x01t\x00\x00\
\x00\x01\xFF",
                Want::Exact(v5_props),
            ),
            (
                "level 6",
                b"\x10\x0C\x00\x04MQTT\x06\x02\x00\x3C\x00\x00",
                Want::Unsupported(6),
            ),
            (
                "MQIsdp level 4",
                b"\x10\x0E\x00\x06MQIsdp\x04\x02\x00\x3C\x00\x00",
                Want::Unsupported(4),
            ),
            (
                "3.1.1 with the bridge bit (mosquitto's try_private)",
                b"\x10\x0C\x00\x04MQTT\x84\x02\x00\x3C\x00\x00",
                Want::Exact(Connect {
                    bridge: true,
                    ..basic(ProtocolVersion::V3_1_1, "")
                }),
            ),
            (
                "bridge bit level 0x85 is not a level we speak",
                b"\x10\x0C\x00\x04MQTT\x85\x02\x00\x3C\x00\x00",
                Want::Unsupported(0x85),
            ),
            (
                "MQTT level 3",
                b"\x10\x0C\x00\x04MQTT\x03\x02\x00\x3C\x00\x00",
                Want::Unsupported(3),
            ),
            (
                "unknown protocol name",
                b"\x10\x0C\x00\x04MQTX\x04\x02\x00\x3C\x00\x00",
                Want::Malformed,
            ),
            (
                "reserved flag",
                b"\x10\x0C\x00\x04MQTT\x04\x03\x00\x3C\x00\x00",
                Want::Malformed,
            ),
            (
                "will QoS without will flag",
                b"\x10\x0C\x00\x04MQTT\x04\x0A\x00\x3C\x00\x00",
                Want::Malformed,
            ),
            (
                "will retain without will flag",
                b"\x10\x0C\x00\x04MQTT\x04\x22\x00\x3C\x00\x00",
                Want::Malformed,
            ),
            (
                "will QoS 3",
                b"\x10\x11\x00\x04MQTT\x04\x1E\x00\x3C\x00\x00\x00\x01t\x00\x00",
                Want::Malformed,
            ),
            (
                "3.1.1 password without user name",
                b"\x10\x0F\x00\x04MQTT\x04\x42\x00\x3C\x00\x00\x00\x01p",
                Want::Malformed,
            ),
            (
                "client id with U+0000",
                b"\x10\x0D\x00\x04MQTT\x04\x02\x00\x3C\x00\x01\x00",
                Want::Malformed,
            ),
            (
                "client id invalid UTF-8",
                b"\x10\x0D\x00\x04MQTT\x04\x02\x00\x3C\x00\x01\xC0",
                Want::Malformed,
            ),
            (
                "truncated before keep alive",
                b"\x10\x08\x00\x04MQTT\x04\x02",
                Want::Malformed,
            ),
            (
                "user name flag but no user name",
                b"\x10\x0C\x00\x04MQTT\x04\x82\x00\x3C\x00\x00",
                Want::Malformed,
            ),
            (
                "trailing byte",
                b"\x10\x0D\x00\x04MQTT\x04\x02\x00\x3C\x00\x00\x00",
                Want::Malformed,
            ),
            (
                "5.0 property not allowed in CONNECT",
                b"\x10\x0F\x00\x04MQTT\x05\x02\x00\x3C\x02\x24\x01\x00\x00",
                Want::Malformed,
            ),
            (
                "5.0 will property not allowed",
                b"\x10\x18\x00\x04MQTT\x05\x06\x00\x3C\x00\x00\x00\x05\x11\x00\x00\x00\x01\x00\x01t\x00\x00",
                Want::Malformed,
            ),
            (
                "5.0 non-minimal property length",
                b"\x10\x0E\x00\x04MQTT\x05\x02\x00\x3C\x80\x00\x00\x00",
                Want::Malformed,
            ),
        ];
        for (name, bytes, want) in cases {
            check(name, bytes, want);
        }
    }

    #[test]
    fn properties_in_another_order_decode_to_the_same_packet() {
        let mut c = basic(ProtocolVersion::V5, "");
        c.properties.session_expiry_interval = Some(120);
        c.properties.receive_maximum = Some(20);
        let reordered = b"\x10\x15\x00\x04MQTT\x05\x02\x00\x3C\x08\x21\x00\x14\x11\x00\x00\x00\x78\
\x00\x00";
        check("reordered", reordered, Want::Decodes(c));
    }

    #[test]
    fn round_trips_in_every_version() {
        for protocol in [
            ProtocolVersion::V3_1,
            ProtocolVersion::V3_1_1,
            ProtocolVersion::V5,
        ] {
            let mut c = basic(protocol, "client-é");
            c.username = Some("u".into());
            c.password = Some(vec![0, 1, 2]);
            c.will = Some(Will {
                topic: "a/b".into(),
                payload: Arc::from(&b"bye"[..]),
                qos: QoS::AtMostOnce,
                retain: true,
                properties: if protocol.is_v5() {
                    WillProperties {
                        content_type: Some("text".into()),
                        user: vec![("k".into(), "v".into())],
                        ..Default::default()
                    }
                } else {
                    WillProperties::default()
                },
            });
            if protocol.is_v5() {
                c.properties.authentication_method = Some("m".into());
                c.properties.maximum_packet_size = Some(4096);
            }
            let packet = Packet::Connect(Box::new(c));
            let mut out = Vec::new();
            packet.encode(ProtocolVersion::V5, &mut out);
            let (first, body) = split(&out);
            assert_eq!(decode_packet(first, body, protocol).unwrap(), packet);
        }
    }
}
