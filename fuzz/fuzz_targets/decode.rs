//! Fuzz target for the MQTT codec: arbitrary bytes, read as a stream of packets in each
//! protocol version, must never panic; every packet that decodes must encode to bytes that
//! decode to an equal packet, and `encoded_len` must match what `encode` wrote.
//!
//! No normalisation is needed: the codec's only lossy directions (properties and failure
//! reasons before v5, maximum QoS 2, subscription identifier 0, over-long strings) are values
//! the decoder never produces, and a CONNECT carries its own version both ways.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use mqtt_broker::mqtt::{read_packet, ProtocolVersion};

const MAX: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    for version in [
        ProtocolVersion::V3_1,
        ProtocolVersion::V3_1_1,
        ProtocolVersion::V5,
    ] {
        let mut reader = Cursor::new(data);
        let mut buf = Vec::new();
        let mut again = Vec::new();
        // Several packets may follow each other; stop at the first error (EOF included).
        while let Ok(packet) = read_packet(&mut reader, version, MAX, &mut buf) {
            let mut out = Vec::new();
            packet.encode(version, &mut out);
            assert_eq!(packet.encoded_len(version), out.len(), "{packet:?}");
            // A canonical encoding is never longer than what was read, so it fits too.
            let decoded = read_packet(&mut Cursor::new(&out), version, MAX, &mut again)
                .unwrap_or_else(|e| panic!("{packet:?} encoded as {out:02x?}: {e}"));
            assert_eq!(decoded, packet, "encoded as {out:02x?}");
        }
    }
});
