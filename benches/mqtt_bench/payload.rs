//! The benchmark payload: which publisher sent a message, its sequence number and when.
//!
//! Owns: the payload layout and the process clock that timestamps are read from. Must not: do
//! I/O or keep state beyond the clock's epoch. Publishers and subscribers live in one process,
//! so one monotonic clock serves both ends and a latency is a plain subtraction.
//!
//! ```text
//!  0..4   magic "MQB1"      (anything else is not ours and is counted as foreign)
//!  4..8   publisher id      u32, little endian
//!  8..16  sequence number   u64, from 0, one per message of that publisher
//! 16..24  send time         u64, nanoseconds since the process epoch
//! 24..    filler up to the payload size
//! ```

use std::sync::OnceLock;
use std::time::Instant;

/// The smallest payload that holds a stamp.
pub const STAMP_LEN: usize = 24;

const MAGIC: [u8; 4] = *b"MQB1";
const FILLER: u8 = b'.';

/// What a payload says about its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub publisher: u32,
    pub seq: u64,
    pub sent_ns: u64,
}

/// Nanoseconds since the process epoch, which is fixed by the first call.
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    // u64 nanoseconds last 584 years: the cast cannot truncate within a run.
    epoch.elapsed().as_nanos() as u64
}

/// A payload of `len` bytes (at least `STAMP_LEN`), filler included, ready for `write`.
pub fn template(len: usize) -> Vec<u8> {
    let mut payload = vec![FILLER; len.max(STAMP_LEN)];
    payload[..4].copy_from_slice(&MAGIC);
    payload
}

/// Writes a stamp into a payload made by `template`.
pub fn write(payload: &mut [u8], stamp: Stamp) {
    payload[4..8].copy_from_slice(&stamp.publisher.to_le_bytes());
    payload[8..16].copy_from_slice(&stamp.seq.to_le_bytes());
    payload[16..24].copy_from_slice(&stamp.sent_ns.to_le_bytes());
}

/// Reads the stamp of a payload, or `None` when it is not one of ours.
pub fn read(payload: &[u8]) -> Option<Stamp> {
    if payload.len() < STAMP_LEN || payload[..4] != MAGIC {
        return None;
    }
    // The length was checked above, so every field is there.
    let field = |at: usize| -> [u8; 8] {
        let mut bytes = [0u8; 8];
        let end = (at + 8).min(STAMP_LEN);
        bytes[..end - at].copy_from_slice(&payload[at..end]);
        bytes
    };
    let publisher = field(4);
    Some(Stamp {
        publisher: u32::from_le_bytes([publisher[0], publisher[1], publisher[2], publisher[3]]),
        seq: u64::from_le_bytes(field(8)),
        sent_ns: u64::from_le_bytes(field(16)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut payload = template(64);
        assert_eq!(payload.len(), 64);
        let stamp = Stamp {
            publisher: 7,
            seq: 1 << 40,
            sent_ns: 123_456_789,
        };
        write(&mut payload, stamp);
        assert_eq!(read(&payload), Some(stamp));
        assert!(payload[STAMP_LEN..].iter().all(|&b| b == FILLER));
    }

    #[test]
    fn foreign_payloads_are_refused() {
        assert_eq!(read(b""), None);
        assert_eq!(read(&[0u8; 64]), None);
        assert_eq!(read(&template(64)[..STAMP_LEN - 1]), None);
    }

    #[test]
    fn short_sizes_are_raised_to_a_stamp() {
        assert_eq!(template(3).len(), STAMP_LEN);
    }

    #[test]
    fn clock_moves_forward() {
        let a = now_ns();
        let b = now_ns();
        assert!(b >= a);
    }
}
