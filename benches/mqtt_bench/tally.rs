//! What one subscriber received, checked message by message: which sequence numbers of each
//! publisher arrived, duplicates, order, latency; and `Bitmap`, the set of sequence numbers
//! that both sides keep.
//!
//! Owns: the per-delivery checks and the arithmetic of loss. Must not: do I/O, read clocks
//! (the reader passes the arrival time in) or decide what counts as a failure (the report does).

use crate::histogram::Histogram;
use crate::payload::Stamp;

/// Publisher ids above this are not ours (scenarios have at most a few dozen publishers);
/// such messages are counted as foreign rather than growing a table without bound.
const MAX_PUBLISHERS: u32 = 4096;
/// Sequence numbers at or above this are not ours either (publishers stop far below it); it
/// keeps a corrupted payload from sizing a bitmap.
const MAX_SEQ: u64 = 1 << 32;

/// A growable set of sequence numbers, one bit each.
#[derive(Debug, Clone, Default)]
pub struct Bitmap {
    words: Vec<u64>,
    len: u64,
}

impl Bitmap {
    /// Adds `seq`; returns whether it was already there.
    pub fn insert(&mut self, seq: u64) -> bool {
        let word = (seq / 64) as usize;
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let bit = 1u64 << (seq % 64);
        let had = self.words[word] & bit != 0;
        if !had {
            self.words[word] |= bit;
            self.len += 1;
        }
        had
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// How many members of `self` are missing from `other`.
    pub fn missing_from(&self, other: &Bitmap) -> u64 {
        self.words
            .iter()
            .enumerate()
            .map(|(i, &w)| (w & !other.words.get(i).copied().unwrap_or(0)).count_ones() as u64)
            .sum()
    }
}

/// What arrived from one publisher.
#[derive(Debug, Clone, Default)]
pub struct Track {
    pub seen: Bitmap,
    highest: Option<u64>,
}

/// One subscriber's record of a run.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    tracks: Vec<Track>,
    pub latency: Histogram,
    /// Every PUBLISH received, duplicates included.
    pub deliveries: u64,
    /// A sequence number that had already arrived from the same publisher.
    pub duplicates: u64,
    /// A new sequence number lower than one already received from the same publisher.
    pub out_of_order: u64,
    /// Payloads that carry no stamp of ours.
    pub foreign: u64,
}

impl Tally {
    /// Records one delivery that arrived at `now_ns`. Returns how far it moved this
    /// subscriber's progress: the sum over publishers of one past the highest sequence number
    /// seen. A message skipped on the way (dropped at QoS 0) counts as passed, so the run's
    /// backlog does not wait for copies that will never come.
    pub fn record(&mut self, stamp: Option<Stamp>, now_ns: u64) -> u64 {
        self.deliveries += 1;
        let Some(stamp) = stamp.filter(|s| s.publisher < MAX_PUBLISHERS && s.seq < MAX_SEQ) else {
            self.foreign += 1;
            return 0;
        };
        let index = stamp.publisher as usize;
        if index >= self.tracks.len() {
            self.tracks.resize_with(index + 1, Track::default);
        }
        let track = &mut self.tracks[index];
        if track.seen.insert(stamp.seq) {
            self.duplicates += 1;
            return 0;
        }
        self.latency.record(now_ns.saturating_sub(stamp.sent_ns));
        match track.highest {
            Some(highest) if stamp.seq < highest => {
                self.out_of_order += 1;
                0
            }
            highest => {
                track.highest = Some(stamp.seq);
                stamp.seq + 1 - highest.map_or(0, |h| h + 1)
            }
        }
    }

    /// What arrived from `publisher`, if anything did.
    pub fn track(&self, publisher: u32) -> Option<&Track> {
        self.tracks.get(publisher as usize)
    }

    /// Messages of `publisher` in `expected` that never arrived here.
    pub fn missing(&self, publisher: u32, expected: &Bitmap) -> u64 {
        match self.track(publisher) {
            Some(track) => expected.missing_from(&track.seen),
            None => expected.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(publisher: u32, seq: u64) -> Option<Stamp> {
        Some(Stamp {
            publisher,
            seq,
            sent_ns: 100,
        })
    }

    #[test]
    fn counts_duplicates_order_and_foreign() {
        let mut t = Tally::default();
        let progress: Vec<u64> = [0, 1, 3, 2, 3, 4]
            .into_iter()
            .map(|seq| t.record(stamp(0, seq), 150))
            .collect();
        assert_eq!(progress, [1, 1, 2, 0, 0, 1], "a skipped 2 counts as passed");
        t.record(stamp(1, 0), 150);
        t.record(None, 150);
        t.record(stamp(MAX_PUBLISHERS, 0), 150);
        t.record(stamp(0, MAX_SEQ), 150);
        assert_eq!(t.deliveries, 10);
        assert_eq!(t.duplicates, 1);
        assert_eq!(t.out_of_order, 1, "2 after 3");
        assert_eq!(t.foreign, 3);
        assert_eq!(t.latency.count(), 6);
        assert_eq!(t.latency.max(), 50);
    }

    #[test]
    fn missing_is_expected_minus_seen() {
        let mut t = Tally::default();
        let mut acked = Bitmap::default();
        for seq in 0..200 {
            acked.insert(seq);
            if seq % 10 != 0 {
                t.record(stamp(2, seq), 0);
            }
        }
        t.record(stamp(2, 500), 0);
        assert_eq!(t.missing(2, &acked), 20);
        assert_eq!(t.missing(3, &acked), 200);
        assert!(acked.insert(5));
        assert_eq!(acked.len(), 200);
    }
}
