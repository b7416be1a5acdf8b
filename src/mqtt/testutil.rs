//! Test support shared by the codec modules: one table-driven `check` over whole packets.
//!
//! Owns: nothing the codec uses. Must not: be compiled outside tests.

use super::primitives::Reader;
use super::{decode_packet, DecodeError, Packet, ProtocolVersion};

/// What a named raw-byte case should do.
pub(crate) enum Want {
    /// Decodes to this packet, which encodes back to exactly the same bytes.
    Exact(Packet),
    /// Decodes to this packet; its encoding is another (canonical) form.
    Decodes(Packet),
    Malformed,
    Protocol,
}

/// Splits a whole packet into its first byte and body, checking the remaining length.
pub(crate) fn split(bytes: &[u8]) -> (u8, &[u8]) {
    let (&first, rest) = bytes.split_first().expect("test packet has a first byte");
    let mut r = Reader::new(rest);
    let len = r.varint().expect("test packet has a remaining length") as usize;
    let body = r.rest();
    assert_eq!(body.len(), len, "test packet's remaining length");
    (first, body)
}

/// Decodes `bytes` (a whole packet) in each version and, for `Exact`, re-encodes it.
pub(crate) fn check(name: &str, versions: &[ProtocolVersion], bytes: &[u8], want: &Want) {
    let (first, body) = split(bytes);
    for &version in versions {
        let got = decode_packet(first, body, version);
        match (want, got) {
            (Want::Exact(p), Ok(got)) => {
                assert_eq!(&got, p, "{name} {version:?}");
                let mut out = Vec::new();
                got.encode(version, &mut out);
                assert_eq!(out, bytes, "{name} {version:?}: encode");
                assert_eq!(got.encoded_len(version), out.len(), "{name}: encoded_len");
                mutilate(first, body, version);
            }
            (Want::Decodes(p), Ok(got)) => {
                assert_eq!(&got, p, "{name} {version:?}");
                round_trip(&got, version);
            }
            (Want::Malformed, Err(DecodeError::Malformed(_))) => {}
            (Want::Protocol, Err(DecodeError::Protocol(_))) => {}
            (_, got) => panic!("{name} {version:?}: got {got:?}"),
        }
    }
}

/// Every truncation of a valid body, and the body with a byte appended, must decode or fail
/// cleanly; whatever still decodes (a shorter v5 ack, a shorter payload) must round-trip.
fn mutilate(first: u8, body: &[u8], version: ProtocolVersion) {
    let mut longer = body.to_vec();
    longer.push(0);
    let cuts = (0..body.len()).map(|n| &body[..n]);
    for variant in cuts.chain(std::iter::once(&longer[..])) {
        if let Ok(p) = decode_packet(first, variant, version) {
            round_trip(&p, version);
        }
    }
}

/// Encodes `packet` for `version` and decodes it back, which must give the same packet.
pub(crate) fn round_trip(packet: &Packet, version: ProtocolVersion) {
    let mut out = Vec::new();
    packet.encode(version, &mut out);
    let (first, body) = split(&out);
    assert_eq!(
        &decode_packet(first, body, version).expect("an encoding decodes"),
        packet,
        "{version:?} round trip of {out:02x?}"
    );
}
