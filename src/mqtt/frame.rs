//! Framing: the fixed header, the remaining length, and dispatch to the per-packet codecs.
//!
//! Owns: `read_packet`, `decode_packet` and `Packet::encode`. Must not: allocate a body before
//! its length has been checked against the maximum packet size, nor beyond what has arrived.
//!
//! ```text
//!   byte 1          bytes 2..=5                   then
//! +--------+-------+--------------------------+------------------------------------+
//! | type 4 | flags | remaining length (varint) | body: variable header + payload   |
//! +--------+-------+--------------------------+------------------------------------+
//! ```
//! The whole packet's size, which `max_packet_size` bounds, is 1 + the varint's bytes + the
//! remaining length (5.0 3.1.2.11.4 counts it the same way).

use std::io::{self, Read};

use super::ack::{self, AckKind};
use super::primitives::{varint_len, write_varint};
use super::properties::Properties;
use super::publish::{self, encode_publish, PublishView};
use super::{auth, connack, connect, disconnect, subscribe, unsubscribe};
use super::{DecodeError, Packet, ProtocolVersion};

/// Body bytes reserved before any arrive; a larger body grows the buffer as it is read.
const BODY_RESERVE: usize = 64 * 1024;

/// Control packet types, the high four bits of the first byte (shared with the QUIC streams).
pub(crate) const CONNECT: u8 = 1;
pub(crate) const CONNACK: u8 = 2;
pub(crate) const PUBLISH: u8 = 3;
pub(crate) const PUBACK: u8 = 4;
pub(crate) const PUBREC: u8 = 5;
pub(crate) const PUBREL: u8 = 6;
pub(crate) const PUBCOMP: u8 = 7;
pub(crate) const SUBSCRIBE: u8 = 8;
pub(crate) const SUBACK: u8 = 9;
pub(crate) const UNSUBSCRIBE: u8 = 10;
pub(crate) const UNSUBACK: u8 = 11;
pub(crate) const PINGREQ: u8 = 12;
pub(crate) const PINGRESP: u8 = 13;
pub(crate) const DISCONNECT: u8 = 14;
const AUTH: u8 = 15;

/// Reads one whole packet from a blocking reader. `version` is the connection's protocol (any
/// value before CONNECT: a CONNECT decodes its own). `max_packet_size` bounds the whole packet,
/// fixed header included. `buf` is reused between calls for the body.
pub fn read_packet<R: Read>(
    reader: &mut R,
    version: ProtocolVersion,
    max_packet_size: usize,
    buf: &mut Vec<u8>,
) -> Result<Packet, DecodeError> {
    read_frame(reader, version, max_packet_size, buf, false)
}

/// `read_packet` for a server: a packet type that only a server sends (CONNACK, SUBACK,
/// UNSUBACK, PINGRESP) or the reserved type 0 is a Protocol Error whatever its body, as
/// mosquitto answers it, rather than whatever decoding that body would find wrong.
pub fn read_client_packet<R: Read>(
    reader: &mut R,
    version: ProtocolVersion,
    max_packet_size: usize,
    buf: &mut Vec<u8>,
) -> Result<Packet, DecodeError> {
    read_frame(reader, version, max_packet_size, buf, true)
}

fn read_frame<R: Read>(
    reader: &mut R,
    version: ProtocolVersion,
    max_packet_size: usize,
    buf: &mut Vec<u8>,
    from_client: bool,
) -> Result<Packet, DecodeError> {
    // EOF here is the peer closing between packets: `read_exact` reports it as
    // `ErrorKind::UnexpectedEof`, which the caller tells apart from other I/O errors.
    let first = read_byte(reader)?;

    // The remaining length, one byte at a time so that nothing past the header is consumed.
    let mut remaining = 0usize;
    let mut length_bytes = 0;
    loop {
        if length_bytes == 4 {
            return Err(DecodeError::Malformed(
                "remaining length longer than 4 bytes",
            ));
        }
        let byte = read_byte(reader).map_err(inside_packet)?;
        remaining |= usize::from(byte & 0x7F) << (7 * length_bytes);
        length_bytes += 1;
        if byte & 0x80 == 0 {
            // A length in more bytes than it needs breaks [MQTT-1.5.5-1] on the sender's side;
            // mosquitto reads it all the same, and so do we.
            break;
        }
    }

    let size = 1 + length_bytes + remaining;
    if size > max_packet_size {
        // Refused before a single body byte is read or allocated: a sender must not exceed
        // the receiver's Maximum Packet Size, and a v5 server answers one that does with 0x95
        // (5.0 3.1.2.11.4 and 3.2.2.3.6).
        return Err(DecodeError::TooLarge {
            size,
            max: max_packet_size,
        });
    }
    // The body is read as it arrives, not allocated at its declared length: a client that
    // declares 256 MiB and sends 10 bytes costs 10 bytes (plus the first reservation, at most
    // `BODY_RESERVE`), so memory follows what clients actually send.
    buf.clear();
    buf.reserve(remaining.min(BODY_RESERVE));
    let got = reader
        .by_ref()
        .take(remaining as u64)
        .read_to_end(buf)
        .map_err(inside_packet)?;
    if got < remaining {
        return Err(DecodeError::Io(inside_packet(
            io::ErrorKind::UnexpectedEof.into(),
        )));
    }
    if from_client {
        match first >> 4 {
            0 => return Err(DecodeError::Protocol("reserved packet type 0")),
            CONNACK => return Err(DecodeError::Protocol("a client may not send CONNACK")),
            SUBACK => return Err(DecodeError::Protocol("a client may not send SUBACK")),
            UNSUBACK => return Err(DecodeError::Protocol("a client may not send UNSUBACK")),
            PINGRESP => return Err(DecodeError::Protocol("a client may not send PINGRESP")),
            _ => {}
        }
    }
    decode_packet(first, buf, version)
}

fn read_byte<R: Read>(reader: &mut R) -> io::Result<u8> {
    let mut byte = [0u8; 1];
    reader.read_exact(&mut byte)?;
    Ok(byte[0])
}

/// EOF inside a packet keeps its kind but says where it happened.
fn inside_packet(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed inside a packet",
        )
    } else {
        e
    }
}

/// Decodes a packet from its first byte and its complete body (everything after the remaining
/// length). A body shorter or longer than the packet needs is malformed.
pub fn decode_packet(
    first_byte: u8,
    body: &[u8],
    version: ProtocolVersion,
) -> Result<Packet, DecodeError> {
    let kind = first_byte >> 4;
    let flags = first_byte & 0x0F;
    match kind {
        0 => return Err(DecodeError::Malformed("reserved packet type 0")),
        // 3.1.1 lists type 15 as reserved and forbidden; receiving it violates the protocol.
        AUTH if !version.is_v5() => {
            return Err(DecodeError::Protocol("AUTH before MQTT 5"));
        }
        _ => {}
    }
    // Reserved flag bits must hold the value Table 2-2 lists (0b0010 for PUBREL, SUBSCRIBE and
    // UNSUBSCRIBE, 0 for the rest but PUBLISH) [MQTT-2.2.2-1]; anything else is malformed
    // [MQTT-2.2.2-2] (5.0 [MQTT-2.1.3-1]).
    // 3.1 has no such rule (its flags are DUP, QoS and RETAIN on every packet) and mosquitto
    // reads 3.1 packets whatever their flags.
    let required = match kind {
        _ if version == ProtocolVersion::V3_1 => flags,
        PUBLISH => flags,
        PUBREL | SUBSCRIBE | UNSUBSCRIBE => 0b0010,
        _ => 0,
    };
    if flags != required {
        return Err(DecodeError::Malformed(
            "[MQTT-2.2.2-1] invalid fixed header flags",
        ));
    }
    Ok(match kind {
        CONNECT => Packet::Connect(Box::new(connect::decode(body)?)),
        CONNACK => Packet::ConnAck(connack::decode(body, version)?),
        PUBLISH => Packet::Publish(publish::decode(flags, body, version)?),
        PUBACK => Packet::PubAck(ack::decode(AckKind::PubAck, body, version)?),
        PUBREC => Packet::PubRec(ack::decode(AckKind::PubRec, body, version)?),
        PUBREL => Packet::PubRel(ack::decode(AckKind::PubRel, body, version)?),
        PUBCOMP => Packet::PubComp(ack::decode(AckKind::PubComp, body, version)?),
        SUBSCRIBE => Packet::Subscribe(subscribe::decode_subscribe(body, version)?),
        SUBACK => Packet::SubAck(subscribe::decode_suback(body, version)?),
        UNSUBSCRIBE => Packet::Unsubscribe(unsubscribe::decode_unsubscribe(body, version)?),
        UNSUBACK => Packet::UnsubAck(unsubscribe::decode_unsuback(body, version)?),
        PINGREQ | PINGRESP => {
            if !body.is_empty() {
                return Err(DecodeError::Malformed("PINGREQ or PINGRESP with a body"));
            }
            if kind == PINGREQ {
                Packet::PingReq
            } else {
                Packet::PingResp
            }
        }
        DISCONNECT => Packet::Disconnect(disconnect::decode(body, version)?),
        _ => Packet::Auth(auth::decode(body)?),
    })
}

/// Appends the fixed header.
fn write_header(out: &mut Vec<u8>, first_byte: u8, body_len: usize) {
    out.reserve(1 + varint_len(body_len) + body_len);
    out.push(first_byte);
    write_varint(out, body_len);
}

/// Properties length as `version` writes it: none before v5.
fn props_len<P: Properties>(version: ProtocolVersion, props: &P) -> usize {
    if version.is_v5() {
        props.len()
    } else {
        0
    }
}

impl Packet {
    /// Appends the packet's bytes, as `version` spells it, to `out`.
    ///
    /// CONNECT is written as its own `protocol` says, whatever `version` is (it is what
    /// declares the version). AUTH exists only in v5 and is written in that form.
    pub fn encode(&self, version: ProtocolVersion, out: &mut Vec<u8>) {
        match self {
            Packet::Publish(p) => encode_publish(out, version, &PublishView::of(p)),
            Packet::Connect(c) => {
                write_header(out, CONNECT << 4, c.body_len());
                c.write_body(out);
            }
            Packet::ConnAck(c) => {
                let pl = props_len(version, &c.properties);
                write_header(out, CONNACK << 4, c.body_len(version, pl));
                c.write_body(version, pl, out);
            }
            Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
                let pl = props_len(version, &a.properties);
                write_header(out, self.first_byte(), a.body_len(version, pl));
                a.write_body(version, pl, out);
            }
            Packet::Subscribe(s) => {
                let pl = props_len(version, &s.properties);
                write_header(out, self.first_byte(), s.body_len(version, pl));
                s.write_body(version, pl, out);
            }
            Packet::SubAck(s) => {
                let pl = props_len(version, &s.properties);
                write_header(out, SUBACK << 4, s.body_len(version, pl));
                s.write_body(version, pl, out);
            }
            Packet::Unsubscribe(u) => {
                let pl = props_len(version, &u.properties);
                write_header(out, self.first_byte(), u.body_len(version, pl));
                u.write_body(version, pl, out);
            }
            Packet::UnsubAck(u) => {
                let pl = props_len(version, &u.properties);
                write_header(out, UNSUBACK << 4, u.body_len(version, pl));
                u.write_body(version, pl, out);
            }
            Packet::PingReq => write_header(out, PINGREQ << 4, 0),
            Packet::PingResp => write_header(out, PINGRESP << 4, 0),
            Packet::Disconnect(d) => {
                let pl = props_len(version, &d.properties);
                write_header(out, DISCONNECT << 4, d.body_len(version, pl));
                d.write_body(version, pl, out);
            }
            Packet::Auth(a) => {
                let pl = a.properties.len();
                write_header(out, AUTH << 4, a.body_len(pl));
                a.write_body(pl, out);
            }
        }
    }

    /// The whole packet's size on the wire as `version` writes it, fixed header included:
    /// what a v5 client's Maximum Packet Size is compared with [MQTT-3.1.2-24].
    pub fn encoded_len(&self, version: ProtocolVersion) -> usize {
        let body = match self {
            Packet::Publish(p) => return PublishView::of(p).encoded_len(version),
            Packet::Connect(c) => c.body_len(),
            Packet::ConnAck(c) => c.body_len(version, props_len(version, &c.properties)),
            Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
                a.body_len(version, props_len(version, &a.properties))
            }
            Packet::Subscribe(s) => s.body_len(version, props_len(version, &s.properties)),
            Packet::SubAck(s) => s.body_len(version, props_len(version, &s.properties)),
            Packet::Unsubscribe(u) => u.body_len(version, props_len(version, &u.properties)),
            Packet::UnsubAck(u) => u.body_len(version, props_len(version, &u.properties)),
            Packet::PingReq | Packet::PingResp => 0,
            Packet::Disconnect(d) => d.body_len(version, props_len(version, &d.properties)),
            Packet::Auth(a) => a.body_len(a.properties.len()),
        };
        1 + varint_len(body) + body
    }

    /// The packet type's name as the specification spells it, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }

    /// The first byte of the fixed header for every packet but PUBLISH, whose flags vary.
    fn first_byte(&self) -> u8 {
        match self {
            Packet::Connect(_) => CONNECT << 4,
            Packet::ConnAck(_) => CONNACK << 4,
            Packet::Publish(_) => PUBLISH << 4,
            Packet::PubAck(_) => PUBACK << 4,
            Packet::PubRec(_) => PUBREC << 4,
            Packet::PubRel(_) => (PUBREL << 4) | 0b0010,
            Packet::PubComp(_) => PUBCOMP << 4,
            Packet::Subscribe(_) => (SUBSCRIBE << 4) | 0b0010,
            Packet::SubAck(_) => SUBACK << 4,
            Packet::Unsubscribe(_) => (UNSUBSCRIBE << 4) | 0b0010,
            Packet::UnsubAck(_) => UNSUBACK << 4,
            Packet::PingReq => PINGREQ << 4,
            Packet::PingResp => PINGRESP << 4,
            Packet::Disconnect(_) => DISCONNECT << 4,
            Packet::Auth(_) => AUTH << 4,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;
    use std::sync::Arc;

    use super::super::testutil::{check, round_trip, Want};
    use super::super::*;
    use super::*;

    use ProtocolVersion::{V3_1, V3_1_1, V5};

    const ALL: [ProtocolVersion; 3] = [V3_1, V3_1_1, V5];

    /// A reader that serves `bytes` and panics if asked for more than `limit` of them, to
    /// prove the framing reads no further than it should.
    struct Guarded<'a> {
        bytes: &'a [u8],
        pos: usize,
        limit: usize,
    }

    impl Read for Guarded<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.bytes.len() - self.pos);
            assert!(
                self.pos + n <= self.limit || n == 0,
                "read past byte {} of the stream",
                self.limit
            );
            buf[..n].copy_from_slice(&self.bytes[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    fn read(bytes: &[u8], version: ProtocolVersion, max: usize) -> Result<Packet, DecodeError> {
        read_packet(&mut Cursor::new(bytes), version, max, &mut Vec::new())
    }

    #[test]
    fn too_large_is_refused_after_the_header_only() {
        // Remaining length 268435455 (the largest): only the 5 header bytes may be read.
        let mut stream = vec![0x30, 0xFF, 0xFF, 0xFF, 0x7F];
        stream.extend_from_slice(&[0xAB; 64]);
        let mut reader = Guarded {
            bytes: &stream,
            pos: 0,
            limit: 5,
        };
        let mut buf = Vec::new();
        match read_packet(&mut reader, V5, 1 << 20, &mut buf) {
            Err(DecodeError::TooLarge { size, max }) => {
                assert_eq!(size, 1 + 4 + 268_435_455);
                assert_eq!(max, 1 << 20);
            }
            other => panic!("got {other:?}"),
        }
        assert_eq!(reader.pos, 5);
        assert_eq!(buf.capacity(), 0, "nothing allocated for the body");
        assert_eq!(
            DecodeError::TooLarge { size: 0, max: 0 }.reason_code(),
            ReasonCode::PacketTooLarge
        );

        // The limit counts the whole packet: 2 + 3 fits in 5, not in 4.
        let ping = b"\x30\x03\x00\x01t";
        assert!(read(ping, V3_1_1, 5).is_ok());
        assert!(matches!(
            read(ping, V3_1_1, 4),
            Err(DecodeError::TooLarge { size: 5, max: 4 })
        ));
    }

    #[test]
    fn body_memory_follows_what_arrived() {
        // 256 MiB declared, 10 bytes sent, then EOF: the buffer stays small.
        let mut stream = vec![0x30, 0xFF, 0xFF, 0xFF, 0x7F];
        stream.extend_from_slice(b"\x00\x01tpayload");
        let mut buf = Vec::new();
        let got = read_packet(&mut Cursor::new(&stream[..]), V5, usize::MAX, &mut buf);
        assert!(
            matches!(got, Err(DecodeError::Io(ref e)) if e.kind() == io::ErrorKind::UnexpectedEof),
            "{got:?}"
        );
        assert!(buf.capacity() <= 2 * BODY_RESERVE, "{}", buf.capacity());
    }

    #[test]
    fn remaining_length_edges_through_the_reader() {
        // (remaining length, its encoding): the body is a PUBLISH to "t" padded with payload.
        for (remaining, header) in [
            (3usize, &[0x03][..]),
            (127, &[0x7F]),
            (128, &[0x80, 0x01]),
            (16_383, &[0xFF, 0x7F]),
            (16_384, &[0x80, 0x80, 0x01]),
            (2_097_151, &[0xFF, 0xFF, 0x7F]),
        ] {
            let mut stream = vec![0x30];
            stream.extend_from_slice(header);
            stream.extend_from_slice(b"\x00\x01t");
            stream.resize(1 + header.len() + remaining, 0x55);
            // A second packet follows: the first read must stop at its own boundary.
            stream.extend_from_slice(b"\xC0\x00");
            let mut cursor = Cursor::new(&stream[..]);
            let mut buf = Vec::new();
            let size = 1 + header.len() + remaining;
            let Packet::Publish(p) = read_packet(&mut cursor, V3_1_1, size, &mut buf).unwrap()
            else {
                panic!("not a PUBLISH");
            };
            assert_eq!(p.payload.len(), remaining - 3);
            assert_eq!(
                read_packet(&mut cursor, V3_1_1, size, &mut buf).unwrap(),
                Packet::PingReq
            );
        }
        // Remaining length 0.
        assert_eq!(read(b"\xD0\x00", V5, 2).unwrap(), Packet::PingResp);
    }

    #[test]
    fn malformed_remaining_lengths() {
        let cases: &[(&str, &[u8])] = &[
            ("five bytes", b"\x30\xFF\xFF\xFF\xFF\x7F"),
            ("five bytes, last zero", b"\x30\x80\x80\x80\x80\x00"),
        ];
        for &(name, bytes) in cases {
            let got = read(bytes, V5, usize::MAX);
            assert!(
                matches!(got, Err(DecodeError::Malformed(_))),
                "{name}: {got:?}"
            );
        }
    }

    #[test]
    fn eof_and_io_errors() {
        let eof = |r: Result<Packet, DecodeError>| matches!(r, Err(DecodeError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof);
        assert!(eof(read(b"", V5, 100)), "before the first byte");
        assert!(eof(read(b"\x30", V5, 100)), "before the remaining length");
        assert!(
            eof(read(b"\x30\x80", V5, 100)),
            "inside the remaining length"
        );
        assert!(eof(read(b"\x30\x05\x00\x01", V5, 100)), "truncated body");

        struct TimedOut;
        impl Read for TimedOut {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::ErrorKind::TimedOut.into())
            }
        }
        let got = read_packet(&mut TimedOut, V5, 100, &mut Vec::new());
        assert!(matches!(got, Err(DecodeError::Io(e)) if e.kind() == io::ErrorKind::TimedOut));
    }

    #[test]
    fn buffer_is_reused() {
        let mut stream = Vec::new();
        let big = Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: "t".into(),
            packet_id: None,
            properties: PublishProperties::default(),
            payload: Arc::from(vec![1u8; 1000]),
        });
        big.encode(V3_1_1, &mut stream);
        Packet::PingReq.encode(V3_1_1, &mut stream);
        big.encode(V3_1_1, &mut stream);
        let mut cursor = Cursor::new(&stream[..]);
        let mut buf = Vec::new();
        assert_eq!(
            read_packet(&mut cursor, V3_1_1, 2000, &mut buf).unwrap(),
            big
        );
        let ptr = buf.as_ptr();
        assert_eq!(
            read_packet(&mut cursor, V3_1_1, 2000, &mut buf).unwrap(),
            Packet::PingReq
        );
        assert_eq!(
            read_packet(&mut cursor, V3_1_1, 2000, &mut buf).unwrap(),
            big
        );
        assert_eq!(buf.as_ptr(), ptr, "same allocation");
    }

    #[test]
    fn errors_map_to_reason_codes() {
        let cases = [
            (DecodeError::Malformed("x"), 0x81),
            (DecodeError::Protocol("x"), 0x82),
            (DecodeError::UnsupportedProtocol { level: 9 }, 0x84),
            (DecodeError::TooLarge { size: 2, max: 1 }, 0x95),
            (DecodeError::Io(io::ErrorKind::UnexpectedEof.into()), 0x80),
        ];
        for (error, code) in cases {
            assert_eq!(error.reason_code() as u8, code, "{error}");
        }
    }

    #[test]
    fn fixed_header_table() {
        let v3 = &[V3_1, V3_1_1][..];
        let cases: Vec<(&str, &[ProtocolVersion], &[u8], Want)> = vec![
            ("pingreq", &ALL, b"\xC0\x00", Want::Exact(Packet::PingReq)),
            ("pingresp", &ALL, b"\xD0\x00", Want::Exact(Packet::PingResp)),
            ("pingreq with body", &ALL, b"\xC0\x01\x00", Want::Malformed),
            ("pingreq flags", &[V3_1_1, V5], b"\xC8\x00", Want::Malformed),
            ("type 0", &ALL, b"\x00\x00", Want::Malformed),
            ("type 15 before v5", v3, b"\xF0\x00", Want::Protocol),
            (
                "connect flags",
                &[V3_1_1, V5],
                b"\x11\x0C\x00\x04MQTT\x04\x02\x00\x3C\x00\x00",
                Want::Malformed,
            ),
            ("connack truncated", &ALL, b"\x20\x00", Want::Malformed),
        ];
        for (name, versions, bytes, want) in cases {
            check(name, versions, bytes, &want);
        }
    }

    /// Every first byte with an empty body and a short body: errors, never a panic.
    #[test]
    fn every_first_byte_decodes_or_errs() {
        for first in 0..=255u8 {
            for body in [
                &[][..],
                &[0][..],
                &[0, 1][..],
                &[0, 1, 0][..],
                &[0xFF; 7][..],
            ] {
                for version in ALL {
                    if let Ok(p) = decode_packet(first, body, version) {
                        round_trip(&p, version);
                    }
                }
            }
        }
    }

    #[test]
    fn encoded_len_matches_encode() {
        let mut connect = Connect {
            protocol: V5,
            clean_start: true,
            keep_alive: 10,
            client_id: "c".into(),
            will: None,
            username: Some("u".into()),
            password: None,
            properties: ConnectProperties::default(),
            bridge: false,
        };
        connect.properties.receive_maximum = Some(5);
        let id = PacketId::new(1).expect("nonzero");
        let mut ack = Ack::new(id);
        ack.properties.reason_string = Some("r".into());
        let packets = [
            Packet::Connect(Box::new(connect)),
            Packet::ConnAck(ConnAck::default()),
            Packet::PubAck(ack.clone()),
            Packet::PubRel(Ack::new(id)),
            Packet::Subscribe(Subscribe {
                packet_id: id,
                filters: vec![("a".into(), SubscriptionOptions::default())],
                properties: SubscribeProperties::default(),
            }),
            Packet::SubAck(SubAck {
                packet_id: id,
                reasons: vec![ReasonCode::GrantedQoS1],
                properties: ack.properties.clone(),
            }),
            Packet::Unsubscribe(Unsubscribe {
                packet_id: id,
                filters: vec!["a".into()],
                properties: UnsubscribeProperties::default(),
            }),
            Packet::UnsubAck(UnsubAck {
                packet_id: id,
                reasons: vec![ReasonCode::Success],
                properties: AckProperties::default(),
            }),
            Packet::PingReq,
            Packet::PingResp,
            Packet::Disconnect(Disconnect::default()),
            Packet::Auth(Auth {
                reason: ReasonCode::ContinueAuthentication,
                properties: AuthProperties::default(),
            }),
        ];
        for packet in &packets {
            assert!(!packet.name().is_empty());
            for version in ALL {
                let mut out = Vec::new();
                packet.encode(version, &mut out);
                assert_eq!(
                    packet.encoded_len(version),
                    out.len(),
                    "{packet:?} {version:?}"
                );
                // Before v5 properties and failure reasons are not written, so only v5 (and
                // CONNECT, which carries its own version) must come back unchanged.
                if version.is_v5() || matches!(packet, Packet::Connect(_)) {
                    round_trip(packet, version);
                }
            }
        }
    }
}
