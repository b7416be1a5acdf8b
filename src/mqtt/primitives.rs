//! The MQTT data representations (spec section 1.5): integers, the variable byte integer,
//! UTF-8 strings, binary data and string pairs, read from a complete body and appended to a
//! `Vec<u8>`.
//!
//! Owns: `Reader`, the cursor every packet decoder uses, and the matching `write_*` and `*_len`
//! helpers. Must not: know about packets, allocate while reading (strings and binary data are
//! borrowed from the body), or panic: running out of bytes is always `DecodeError::Malformed`,
//! because `read_packet` hands over a body whose length the remaining length already fixed.

use super::DecodeError;

/// The largest value a variable byte integer can carry in its 4 bytes (256 MiB - 1).
pub const VARINT_MAX: u32 = 268_435_455;

/// The longest string or binary data a two-byte length prefix can describe.
pub const STRING_MAX: usize = u16::MAX as usize;

const SHORT: DecodeError = DecodeError::Malformed("packet shorter than its fields say");

/// A cursor over a complete packet body (or a slice of it, such as the properties).
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(SHORT)?;
        let slice = self.bytes.get(self.pos..end).ok_or(SHORT)?;
        self.pos = end;
        Ok(slice)
    }

    /// Takes everything left (a PUBLISH payload).
    pub fn rest(&mut self) -> &'a [u8] {
        let slice = self.bytes.get(self.pos..).unwrap_or(&[]);
        self.pos = self.bytes.len();
        slice
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        let byte = *self.bytes.get(self.pos).ok_or(SHORT)?;
        self.pos += 1;
        Ok(byte)
    }

    /// Two Byte Integer, big-endian (1.5.2).
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// Four Byte Integer, big-endian (1.5.3).
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Variable Byte Integer (1.5.5): at most 4 bytes, in the fewest bytes [MQTT-1.5.5-1].
    pub fn varint(&mut self) -> Result<u32, DecodeError> {
        let mut value = 0u32;
        for i in 0..4u32 {
            let byte = self.u8()?;
            value |= u32::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                // A last byte of 0 after a continuation means a shorter encoding existed.
                if i > 0 && byte == 0 {
                    return Err(DecodeError::Malformed(
                        "[MQTT-1.5.5-1] variable byte integer not in its shortest form",
                    ));
                }
                return Ok(value);
            }
        }
        Err(DecodeError::Malformed(
            "variable byte integer longer than 4 bytes",
        ))
    }

    /// UTF-8 Encoded String (1.5.4): well-formed UTF-8 without surrogates [MQTT-1.5.4-1]
    /// (`str` already excludes them) and without U+0000 [MQTT-1.5.4-2]; the same rules are
    /// [MQTT-1.5.3-1] and [MQTT-1.5.3-2] in 3.1.1. A BOM is kept, as [MQTT-1.5.4-3] requires.
    pub fn string(&mut self) -> Result<&'a str, DecodeError> {
        let len = self.u16()?;
        let bytes = self.take(usize::from(len))?;
        let s = std::str::from_utf8(bytes)
            .map_err(|_| DecodeError::Malformed("[MQTT-1.5.4-1] string is not valid UTF-8"))?;
        if s.contains('\0') {
            return Err(DecodeError::Malformed(
                "[MQTT-1.5.4-2] string contains U+0000",
            ));
        }
        Ok(s)
    }

    /// Binary Data (1.5.6): a two-byte length and that many bytes.
    pub fn binary(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// UTF-8 String Pair (1.5.7): name then value, each a string.
    pub fn string_pair(&mut self) -> Result<(&'a str, &'a str), DecodeError> {
        let name = self.string()?;
        let value = self.string()?;
        Ok((name, value))
    }

    /// Packet identifier: a Two Byte Integer that must not be zero [MQTT-2.3.1-1] (5.0:
    /// [MQTT-2.2.1-3]).
    pub fn packet_id(&mut self) -> Result<super::PacketId, DecodeError> {
        super::PacketId::new(self.u16()?).ok_or(DecodeError::Malformed(
            "[MQTT-2.3.1-1] packet identifier is 0",
        ))
    }

    /// Ends a decode: bytes left over mean the remaining length and the fields disagree.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed(
                "bytes left after the end of the packet",
            ))
        }
    }
}

pub fn write_u8(out: &mut Vec<u8>, value: u8) {
    out.push(value);
}

pub fn write_u16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_be_bytes());
}

pub fn write_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_be_bytes());
}

/// Bytes `value` takes as a variable byte integer. Callers keep values at or under
/// `VARINT_MAX`; larger ones are counted as 4 bytes, the most `write_varint` writes.
pub fn varint_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes a variable byte integer in its shortest form. A value over `VARINT_MAX` cannot be
/// represented: nothing decoded can produce one (a packet that large is refused as
/// `TooLarge`), so it is a caller bug, asserted in debug builds and clamped in release.
pub fn write_varint(out: &mut Vec<u8>, value: usize) {
    debug_assert!(
        value <= VARINT_MAX as usize,
        "variable byte integer too large"
    );
    let mut value = value.min(VARINT_MAX as usize);
    loop {
        // The mask keeps the low 7 bits, so the cast cannot truncate anything that matters.
        let mut byte = (value & 0x7F) as u8;
        value >>= 7;
        if value > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if value == 0 {
            break;
        }
    }
}

/// Bytes a string takes on the wire, prefix included.
pub fn string_len(s: &str) -> usize {
    2 + clamp_str(s).len()
}

/// Bytes binary data takes on the wire, prefix included.
pub fn binary_len(b: &[u8]) -> usize {
    2 + b.len().min(STRING_MAX)
}

/// Writes a length-prefixed string. The model cannot stop a caller from building a string
/// longer than 65535 bytes; such a string is cut at the last character boundary that fits,
/// so that the bytes written always agree with their prefix (asserted in debug builds).
pub fn write_string(out: &mut Vec<u8>, s: &str) {
    let s = clamp_str(s);
    write_u16(out, len_u16(s.len()));
    out.extend_from_slice(s.as_bytes());
}

/// Writes length-prefixed binary data, cut to 65535 bytes like `write_string`.
pub fn write_binary(out: &mut Vec<u8>, b: &[u8]) {
    debug_assert!(b.len() <= STRING_MAX, "binary data longer than 65535 bytes");
    let b = b.get(..STRING_MAX).unwrap_or(b);
    write_u16(out, len_u16(b.len()));
    out.extend_from_slice(b);
}

fn clamp_str(s: &str) -> &str {
    debug_assert!(s.len() <= STRING_MAX, "string longer than 65535 bytes");
    if s.len() <= STRING_MAX {
        return s;
    }
    let mut end = STRING_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("")
}

fn len_u16(len: usize) -> u16 {
    u16::try_from(len).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn malformed<T: std::fmt::Debug>(r: Result<T, DecodeError>) -> bool {
        matches!(r, Err(DecodeError::Malformed(_)))
    }

    #[test]
    fn integers_are_big_endian_and_short_input_is_malformed() {
        let mut r = Reader::new(&[0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07]);
        assert_eq!(r.u8().unwrap(), 1);
        assert_eq!(r.u16().unwrap(), 0x0203);
        assert_eq!(r.u32().unwrap(), 0x0405_0607);
        assert!(r.is_empty());
        assert!(malformed(r.u8()));
        assert!(malformed(Reader::new(&[1]).u16()));
        assert!(malformed(Reader::new(&[1, 2, 3]).u32()));
        assert!(malformed(Reader::new(&[]).take(1)));
        assert!(malformed(Reader::new(&[1]).take(usize::MAX)));
    }

    /// (name, value, encoding): one table for both directions.
    const VARINTS: &[(&str, usize, &[u8])] = &[
        ("zero", 0, &[0x00]),
        ("one byte max", 127, &[0x7F]),
        ("two bytes min", 128, &[0x80, 0x01]),
        ("two bytes max", 16_383, &[0xFF, 0x7F]),
        ("three bytes min", 16_384, &[0x80, 0x80, 0x01]),
        ("three bytes max", 2_097_151, &[0xFF, 0xFF, 0x7F]),
        ("four bytes min", 2_097_152, &[0x80, 0x80, 0x80, 0x01]),
        ("four bytes max", 268_435_455, &[0xFF, 0xFF, 0xFF, 0x7F]),
    ];

    #[test]
    fn varint_table() {
        for &(name, value, bytes) in VARINTS {
            let mut out = Vec::new();
            write_varint(&mut out, value);
            assert_eq!(out, bytes, "{name}: encode");
            assert_eq!(varint_len(value), bytes.len(), "{name}: len");
            let mut r = Reader::new(bytes);
            assert_eq!(r.varint().unwrap() as usize, value, "{name}: decode");
            assert!(r.is_empty(), "{name}: consumed");
        }
    }

    #[test]
    fn varint_malformed() {
        let cases: &[(&str, &[u8])] = &[
            ("fifth byte", &[0xFF, 0xFF, 0xFF, 0xFF, 0x7F]),
            ("fifth byte zero", &[0x80, 0x80, 0x80, 0x80, 0x00]),
            ("truncated", &[0x80]),
            ("empty", &[]),
            ("non minimal", &[0x80, 0x00]),
            ("non minimal 4", &[0xFF, 0x80, 0x80, 0x00]),
        ];
        for &(name, bytes) in cases {
            assert!(malformed(Reader::new(bytes).varint()), "{name}");
        }
    }

    #[test]
    fn strings() {
        let mut r = Reader::new(b"\x00\x03a/b\x00\x00");
        assert_eq!(r.string().unwrap(), "a/b");
        assert_eq!(r.string().unwrap(), "");
        // A BOM stays [MQTT-1.5.4-3]; U+FFFF (a non-character) is allowed.
        let bom = b"\x00\x06\xEF\xBB\xBF\xEF\xBF\xBF";
        assert_eq!(Reader::new(bom).string().unwrap(), "\u{FEFF}\u{FFFF}");

        let bad: &[(&str, &[u8])] = &[
            ("U+0000", b"\x00\x03a\x00b"),
            ("invalid byte", b"\x00\x01\xFF"),
            ("surrogate", b"\x00\x03\xED\xA0\x80"),
            ("overlong", b"\x00\x02\xC0\xAF"),
            ("truncated sequence", b"\x00\x01\xC3"),
            ("short", b"\x00\x05abc"),
            ("no length", b"\x00"),
        ];
        for &(name, bytes) in bad {
            assert!(malformed(Reader::new(bytes).string()), "{name}");
        }
    }

    #[test]
    fn binary_and_pairs_round_trip() {
        let mut out = Vec::new();
        write_binary(&mut out, &[0, 1, 2]);
        write_string(&mut out, "k");
        write_string(&mut out, "v");
        assert_eq!(out, b"\x00\x03\x00\x01\x02\x00\x01k\x00\x01v");
        assert_eq!(
            binary_len(&[0, 1, 2]) + string_len("k") + string_len("v"),
            out.len()
        );
        let mut r = Reader::new(&out);
        assert_eq!(r.binary().unwrap(), &[0, 1, 2]);
        assert_eq!(r.string_pair().unwrap(), ("k", "v"));
        r.finish().unwrap();
        assert!(malformed(Reader::new(b"\x00\x04abc").binary()));
    }

    #[test]
    fn packet_id_zero_is_malformed_and_finish_rejects_leftovers() {
        assert!(malformed(Reader::new(&[0, 0]).packet_id()));
        assert_eq!(Reader::new(&[0, 7]).packet_id().unwrap().get(), 7);
        let mut r = Reader::new(&[1, 2]);
        r.u8().unwrap();
        assert!(malformed(r.finish()));
        assert_eq!(r.rest(), &[2]);
        r.finish().unwrap();
    }
}
