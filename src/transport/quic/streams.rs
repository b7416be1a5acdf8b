//! Multi-stream MQTT over QUIC: framing inbound stream bytes into whole packets, and choosing
//! the stream of each outbound packet.
//!
//! Owns: `Framer` (one stream's bytes cut at MQTT packet boundaries, the length checked
//! against the maximum packet size before anything is buffered), `Routes` (what the read half
//! learnt of each data stream: the filters subscribed on it and the packet ids whose answers
//! belong on it) and `route_outbound` (the write half's choice per packet). Must not: decode
//! more of a packet than its type, packet id, topic and filters, or touch sockets; the MQTT
//! meaning of a packet is the client threads' business.
//!
//! Rules (after EMQX's multi-stream mode): deliveries for a subscription go on the stream that
//! carried its SUBSCRIBE; an answer (PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK) goes
//! on the stream its packet came on; everything else, and the answers to PUBLISH received on
//! unidirectional streams, goes on the control stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use crate::mqtt::frame::{
    PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL, SUBACK, SUBSCRIBE, UNSUBACK, UNSUBSCRIBE,
};
use crate::mqtt::topic::{matches, split_shared};

/// The id of a QUIC stream (quinn's `StreamId` as an integer), as the halves see it.
pub type StreamTag = u64;

/// Answers remembered per connection at most; past it the oldest are forgotten (their answer
/// then goes on the control stream). The protocol bounds them far below this.
const MAX_ANSWERS: usize = 4096;

/// One MQTT packet's frame: its first byte and where its body lies in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub first: u8,
    /// Bytes of the fixed header (first byte and remaining length).
    pub header: usize,
    pub body: usize,
}

impl Frame {
    pub fn len(&self) -> usize {
        self.header + self.body
    }
}

/// Why a stream's bytes cannot be cut into packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// A remaining length of more than four bytes.
    BadLength,
    /// A packet larger than the broker accepts.
    TooLarge(usize),
}

/// The frame at the start of `bytes`: `Ok(None)` while the fixed header is incomplete.
pub fn frame(bytes: &[u8], max_packet_size: usize) -> Result<Option<Frame>, FrameError> {
    let Some(&first) = bytes.first() else {
        return Ok(None);
    };
    let mut body = 0usize;
    for i in 0..4 {
        let Some(&byte) = bytes.get(1 + i) else {
            return Ok(None);
        };
        body |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            let frame = Frame {
                first,
                header: 2 + i,
                body,
            };
            if frame.len() > max_packet_size.saturating_add(5) {
                return Err(FrameError::TooLarge(frame.len()));
            }
            return Ok(Some(frame));
        }
    }
    Err(FrameError::BadLength)
}

/// What the read half learnt of the data streams, for the write half. Idle (and not locked)
/// until the client opens a second stream.
#[derive(Default)]
pub struct Routes {
    active: AtomicBool,
    inner: Mutex<RoutesInner>,
}

#[derive(Default)]
struct RoutesInner {
    /// Filters subscribed on a data stream, newest last; a filter subscribed again on the
    /// control stream is removed.
    filters: Vec<(String, StreamTag)>,
    /// (packet type of the answer, packet id) → the stream the answer goes on.
    answers: HashMap<(u8, u16), StreamTag>,
    /// Answers in the order they were recorded, to forget the oldest past `MAX_ANSWERS`.
    order: std::collections::VecDeque<(u8, u16)>,
}

impl Routes {
    /// Whether any packet has come on a data stream: until then everything goes on the
    /// control stream and nothing is parsed on the way out.
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Records what a packet read on `stream` means for later answers and deliveries.
    /// `v5` tells whether SUBSCRIBE carries properties; `data` whether `stream` is a
    /// bidirectional data stream (not the control stream or a unidirectional one).
    pub fn record_inbound(
        &self,
        stream: StreamTag,
        data: bool,
        packet: &[u8],
        frame: Frame,
        v5: bool,
    ) {
        let body = &packet[frame.header..frame.len()];
        let kind = frame.first >> 4;
        if !data {
            // Answers default to the control stream; a filter subscribed again here moves
            // its deliveries back to it.
            if kind == SUBSCRIBE && self.active() {
                let filters = filters(body, v5, true);
                self.inner
                    .lock()
                    .filters
                    .retain(|(f, _)| !filters.iter().any(|g| g == f));
            }
            return;
        }
        self.active.store(true, Ordering::Release);
        let mut inner = self.inner.lock();
        match kind {
            PUBLISH => {
                let qos = (frame.first >> 1) & 3;
                if let Some(id) = publish_packet_id(body, qos) {
                    let answer = if qos == 1 { PUBACK } else { PUBREC };
                    inner.remember(answer, id, stream);
                }
            }
            PUBREC => {
                if let Some(id) = packet_id(body) {
                    inner.remember(PUBREL, id, stream);
                }
            }
            PUBREL => {
                if let Some(id) = packet_id(body) {
                    inner.remember(PUBCOMP, id, stream);
                }
            }
            SUBSCRIBE => {
                if let Some(id) = packet_id(body) {
                    inner.remember(SUBACK, id, stream);
                }
                for filter in filters(body, v5, true) {
                    inner.filters.retain(|(f, _)| *f != filter);
                    inner.filters.push((filter, stream));
                }
            }
            UNSUBSCRIBE => {
                if let Some(id) = packet_id(body) {
                    inner.remember(UNSUBACK, id, stream);
                }
                let gone = filters(body, v5, false);
                inner.filters.retain(|(f, _)| !gone.contains(f));
            }
            _ => {}
        }
    }

    /// Forgets a stream the client reset or that was reset for a malformed packet.
    pub fn forget_stream(&self, stream: StreamTag) {
        let mut inner = self.inner.lock();
        inner.filters.retain(|(_, s)| *s != stream);
        inner.answers.retain(|_, s| *s != stream);
    }

    /// The stream an outbound packet goes on (`None`: the control stream). `topic` is the
    /// PUBLISH topic, with any topic alias already resolved.
    fn outbound(&self, kind: u8, packet_id: Option<u16>, topic: Option<&str>) -> Option<StreamTag> {
        let mut inner = self.inner.lock();
        match kind {
            PUBLISH => {
                let topic = topic?;
                inner
                    .filters
                    .iter()
                    .rev()
                    .find(|(filter, _)| {
                        let filter = split_shared(filter).map_or(filter.as_str(), |(_, f)| f);
                        matches(filter, topic)
                    })
                    .map(|(_, stream)| *stream)
            }
            PUBACK | PUBREC | PUBREL | PUBCOMP | SUBACK | UNSUBACK => {
                inner.answers.remove(&(kind, packet_id?))
            }
            _ => None,
        }
    }
}

impl RoutesInner {
    fn remember(&mut self, answer: u8, id: u16, stream: StreamTag) {
        if self.answers.insert((answer, id), stream).is_none() {
            self.order.push_back((answer, id));
        }
        while self.order.len() > MAX_ANSWERS {
            if let Some(old) = self.order.pop_front() {
                self.answers.remove(&old);
            }
        }
        if self.order.len() > 2 * self.answers.len() + 64 {
            let answers = &self.answers;
            self.order.retain(|key| answers.contains_key(key));
        }
    }
}

/// The write half's state for routing: outbound topic aliases (MQTT 5), which it must resolve
/// to find the subscription a delivery belongs to.
#[derive(Default)]
pub struct Outbound {
    aliases: HashMap<u16, String>,
}

impl Outbound {
    /// The stream of the packet at the start of `packet` (one whole packet of ours).
    pub fn route(
        &mut self,
        routes: &Routes,
        packet: &[u8],
        frame: Frame,
        v5: bool,
    ) -> Option<StreamTag> {
        let body = &packet[frame.header..frame.len()];
        let kind = frame.first >> 4;
        if kind == PUBLISH {
            let qos = (frame.first >> 1) & 3;
            let topic = self.publish_topic(body, qos, v5)?;
            return routes.outbound(kind, None, Some(&topic));
        }
        routes.outbound(kind, packet_id(body), None)
    }

    /// The topic of an outbound PUBLISH, resolving and learning topic aliases.
    fn publish_topic(&mut self, body: &[u8], qos: u8, v5: bool) -> Option<String> {
        let len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
        let topic = std::str::from_utf8(body.get(2..2 + len)?).ok()?;
        if !v5 {
            return Some(topic.to_owned());
        }
        let mut at = 2 + len + if qos > 0 { 2 } else { 0 };
        let (props_len, used) = varint(body.get(at..)?)?;
        at += used;
        let alias = topic_alias(body.get(at..at + props_len)?);
        match alias {
            Some(alias) if topic.is_empty() => self.aliases.get(&alias).cloned(),
            Some(alias) => {
                self.aliases.insert(alias, topic.to_owned());
                Some(topic.to_owned())
            }
            None => Some(topic.to_owned()),
        }
    }
}

fn packet_id(body: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*body.first()?, *body.get(1)?]))
}

fn publish_packet_id(body: &[u8], qos: u8) -> Option<u16> {
    if qos == 0 {
        return None;
    }
    let len = usize::from(packet_id(body)?);
    packet_id(body.get(2 + len..)?)
}

/// A variable byte integer and the bytes it took.
fn varint(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for (i, &byte) in bytes.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// The Topic Alias property (0x23) among PUBLISH properties, skipping the others by their
/// known shapes; None if absent or unreadable.
fn topic_alias(mut props: &[u8]) -> Option<u16> {
    while let Some((&id, rest)) = props.split_first() {
        let skip = match id {
            0x01 => 1,                                        // payload format indicator
            0x02 => 4,                                        // message expiry interval
            0x23 => return packet_id(rest),                   // topic alias
            0x03 | 0x08 => 2 + usize::from(packet_id(rest)?), // content type, response topic
            0x09 => 2 + usize::from(packet_id(rest)?),        // correlation data
            0x26 => {
                // user property: two strings
                let first = 2 + usize::from(packet_id(rest)?);
                first + 2 + usize::from(packet_id(rest.get(first..)?)?)
            }
            0x0B => varint(rest)?.1, // subscription identifier
            _ => return None,
        };
        props = rest.get(skip..)?;
    }
    None
}

/// The filters of a SUBSCRIBE (`options`: each is followed by an options byte) or an
/// UNSUBSCRIBE body; whatever cannot be read is left out.
fn filters(body: &[u8], v5: bool, options: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut at = 2;
    if v5 {
        let Some((len, used)) = body.get(at..).and_then(varint) else {
            return out;
        };
        at += used + len;
    }
    while let Some(len) = body.get(at..).and_then(packet_id) {
        let end = at + 2 + usize::from(len);
        let Some(filter) = body
            .get(at + 2..end)
            .and_then(|b| std::str::from_utf8(b).ok())
        else {
            break;
        };
        out.push(filter.to_owned());
        at = end + usize::from(options);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(bytes: &[u8]) -> Frame {
        frame(bytes, 1 << 20).unwrap().unwrap()
    }

    #[test]
    fn frames_stop_at_the_packet_boundary_and_check_the_size() {
        assert_eq!(frame(&[], 100), Ok(None));
        assert_eq!(frame(&[0x30], 100), Ok(None));
        assert_eq!(frame(&[0x30, 0x80], 100), Ok(None));
        let f = framed(&[0x30, 0x03, 0, 1, b'a', 0xC0]);
        assert_eq!((f.header, f.body, f.len()), (2, 3, 5));
        assert_eq!(
            frame(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], 100),
            Err(FrameError::BadLength)
        );
        assert_eq!(
            frame(&[0x30, 0x80, 0x01], 100),
            Err(FrameError::TooLarge(131))
        );
    }

    #[test]
    fn answers_and_deliveries_follow_the_stream_of_their_packet() {
        let routes = Routes::default();
        assert!(!routes.active());
        // SUBSCRIBE id 7, v5, no properties, filter "a/+" QoS 1, on data stream 4.
        let subscribe = [0x82, 0x09, 0, 7, 0, 0, 3, b'a', b'/', b'+', 1];
        routes.record_inbound(4, true, &subscribe, framed(&subscribe), true);
        assert!(routes.active());
        // QoS 1 PUBLISH id 9 to "x" on data stream 8.
        let publish = [0x32, 0x06, 0, 1, b'x', 0, 9, 0];
        routes.record_inbound(8, true, &publish, framed(&publish), true);
        let mut out = Outbound::default();
        let suback = [0x90, 0x04, 0, 7, 0, 1];
        assert_eq!(out.route(&routes, &suback, framed(&suback), true), Some(4));
        // The answer is used once.
        assert_eq!(out.route(&routes, &suback, framed(&suback), true), None);
        let puback = [0x40, 0x02, 0, 9];
        assert_eq!(out.route(&routes, &puback, framed(&puback), true), Some(8));
        // A delivery to a/b with topic alias 1; then one by alias alone.
        let delivery = [0x30, 0x0A, 0, 3, b'a', b'/', b'b', 3, 0x23, 0, 1, b'p'];
        assert_eq!(
            out.route(&routes, &delivery, framed(&delivery), true),
            Some(4)
        );
        let by_alias = [0x30, 0x07, 0, 0, 3, 0x23, 0, 1, b'p'];
        assert_eq!(
            out.route(&routes, &by_alias, framed(&by_alias), true),
            Some(4)
        );
        let other = [0x30, 0x05, 0, 1, b'z', 0, b'p'];
        assert_eq!(out.route(&routes, &other, framed(&other), true), None);
        let pingresp = [0xD0, 0x00];
        assert_eq!(out.route(&routes, &pingresp, framed(&pingresp), true), None);
        // Subscribed again on the control stream: deliveries go back there.
        routes.record_inbound(0, false, &subscribe, framed(&subscribe), true);
        assert_eq!(out.route(&routes, &delivery, framed(&delivery), true), None);
    }

    #[test]
    fn v311_filters_and_unsubscribe() {
        let routes = Routes::default();
        let subscribe = [0x82, 0x06, 0, 1, 0, 1, b'#', 0];
        routes.record_inbound(4, true, &subscribe, framed(&subscribe), false);
        let mut out = Outbound::default();
        let delivery = [0x30, 0x04, 0, 1, b'q', b'p'];
        assert_eq!(
            out.route(&routes, &delivery, framed(&delivery), false),
            Some(4)
        );
        let unsubscribe = [0xA2, 0x05, 0, 2, 0, 1, b'#'];
        routes.record_inbound(4, true, &unsubscribe, framed(&unsubscribe), false);
        assert_eq!(
            out.route(&routes, &delivery, framed(&delivery), false),
            None
        );
        let unsuback = [0xB0, 0x02, 0, 2];
        assert_eq!(
            out.route(&routes, &unsuback, framed(&unsuback), false),
            Some(4)
        );
    }
}
