//! MQTT 5 properties: one struct per packet kind, each field `Option` (or a `Vec` for the
//! properties that may repeat), so a property given twice is caught when decoded.
//!
//! Owns: property identifiers, the per-packet structs and their encode/decode.
//! Must not: interpret property values (the broker does), or write anything for 3.1.1.
//!
//! Decoding rejects, per 5.0 section 2.2.2.2 and the text of each property: an identifier that
//! is unknown or not valid for the packet (a Malformed Packet), a property that may appear once
//! given twice (each property's "It is a Protocol Error to include ... more than once"), and a
//! value out of its range (a Protocol Error). Encoding writes each field once, in identifier
//! order; user properties keep their order [MQTT-3.3.2-18].

use super::primitives::{binary_len, string_len, varint_len, write_varint, Reader, VARINT_MAX};
use super::{DecodeError, QoS};

/// User properties, kept in the order received [MQTT-3.3.2-18].
pub type UserProperties = Vec<(String, String)>;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConnectProperties {
    pub session_expiry_interval: Option<u32>,
    pub receive_maximum: Option<u16>,
    pub maximum_packet_size: Option<u32>,
    pub topic_alias_maximum: Option<u16>,
    pub request_response_information: Option<bool>,
    pub request_problem_information: Option<bool>,
    pub user: UserProperties,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct WillProperties {
    pub will_delay_interval: Option<u32>,
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Vec<u8>>,
    pub user: UserProperties,
    /// The order the message's own properties came in, passed on with the will.
    pub order: PropertyOrder,
}

/// The order in which a message's own properties (payload format, content type, response
/// topic, correlation data, user properties) arrived, so that they are forwarded in it, as
/// mosquitto forwards them. Empty for a message built here: then a fixed order is used.
/// Ignored by `==`: two messages with the same properties are equal in any order.
#[derive(Debug, Clone, Default)]
pub struct PropertyOrder(Vec<u8>);

impl PartialEq for PropertyOrder {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for PropertyOrder {}

impl PropertyOrder {
    /// Notes a property as it is decoded; only the message's own properties count.
    fn note(&mut self, id: u8) {
        if matches!(
            id,
            id::PAYLOAD_FORMAT_INDICATOR
                | id::CONTENT_TYPE
                | id::RESPONSE_TOPIC
                | id::CORRELATION_DATA
                | id::USER_PROPERTY
        ) {
            self.0.push(id);
        }
    }
}

/// Feeds a message's own properties to `s`: in the order they arrived (`order`), then any not
/// covered by it in a fixed order.
fn own_properties<S: Sink>(
    s: &mut S,
    order: &PropertyOrder,
    payload_format: Option<u8>,
    content_type: &Option<String>,
    response_topic: &Option<String>,
    correlation_data: &Option<Vec<u8>>,
    user: &UserProperties,
) {
    let mut done = [false; 4];
    let mut users = user.iter();
    for &id in &order.0 {
        match id {
            id::PAYLOAD_FORMAT_INDICATOR if !done[0] => {
                opt_byte(s, id, payload_format);
                done[0] = true;
            }
            id::CONTENT_TYPE if !done[1] => {
                opt_string(s, id, content_type);
                done[1] = true;
            }
            id::RESPONSE_TOPIC if !done[2] => {
                opt_string(s, id, response_topic);
                done[2] = true;
            }
            id::CORRELATION_DATA if !done[3] => {
                opt_binary(s, id, correlation_data);
                done[3] = true;
            }
            id::USER_PROPERTY => {
                if let Some((name, value)) = users.next() {
                    s.pair(id, name, value);
                }
            }
            _ => {}
        }
    }
    if !done[0] {
        opt_byte(s, id::PAYLOAD_FORMAT_INDICATOR, payload_format);
    }
    if !done[1] {
        opt_string(s, id::CONTENT_TYPE, content_type);
    }
    if !done[2] {
        opt_string(s, id::RESPONSE_TOPIC, response_topic);
    }
    if !done[3] {
        opt_binary(s, id::CORRELATION_DATA, correlation_data);
    }
    for (name, value) in users {
        s.pair(id::USER_PROPERTY, name, value);
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConnAckProperties {
    pub session_expiry_interval: Option<u32>,
    pub receive_maximum: Option<u16>,
    pub maximum_qos: Option<QoS>,
    pub retain_available: Option<bool>,
    pub maximum_packet_size: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub topic_alias_maximum: Option<u16>,
    pub reason_string: Option<String>,
    pub user: UserProperties,
    pub wildcard_subscription_available: Option<bool>,
    pub subscription_identifiers_available: Option<bool>,
    pub shared_subscription_available: Option<bool>,
    pub server_keep_alive: Option<u16>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct PublishProperties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub topic_alias: Option<u16>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Vec<u8>>,
    pub user: UserProperties,
    /// May repeat on delivery to a client; never sent by a client (a protocol error).
    pub subscription_identifiers: Vec<u32>,
    pub content_type: Option<String>,
    /// The order the message's own properties came in, kept for forwarding.
    pub order: PropertyOrder,
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK carry only these.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AckProperties {
    pub reason_string: Option<String>,
    pub user: UserProperties,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct SubscribeProperties {
    pub subscription_identifier: Option<u32>,
    pub user: UserProperties,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct UnsubscribeProperties {
    pub user: UserProperties,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct DisconnectProperties {
    pub session_expiry_interval: Option<u32>,
    pub reason_string: Option<String>,
    pub user: UserProperties,
    pub server_reference: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct AuthProperties {
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Vec<u8>>,
    pub reason_string: Option<String>,
    pub user: UserProperties,
}

/// Property identifiers (5.0 section 2.2.2.2, Table 2-4).
pub mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// One property as read, its value already checked against the range the spec gives it in
/// every packet it may appear in. Strings and binary data borrow the packet body.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Property<'a> {
    PayloadFormatIndicator(u8),
    MessageExpiryInterval(u32),
    ContentType(&'a str),
    ResponseTopic(&'a str),
    CorrelationData(&'a [u8]),
    SubscriptionIdentifier(u32),
    SessionExpiryInterval(u32),
    AssignedClientIdentifier(&'a str),
    ServerKeepAlive(u16),
    AuthenticationMethod(&'a str),
    AuthenticationData(&'a [u8]),
    RequestProblemInformation(bool),
    WillDelayInterval(u32),
    RequestResponseInformation(bool),
    ResponseInformation(&'a str),
    ServerReference(&'a str),
    ReasonString(&'a str),
    ReceiveMaximum(u16),
    TopicAliasMaximum(u16),
    TopicAlias(u16),
    MaximumQoS(QoS),
    RetainAvailable(bool),
    User(&'a str, &'a str),
    MaximumPacketSize(u32),
    WildcardSubscriptionAvailable(bool),
    SubscriptionIdentifierAvailable(bool),
    SharedSubscriptionAvailable(bool),
}

/// A Byte property whose only values are 0 and 1.
fn flag(r: &mut Reader<'_>, why: &'static str) -> Result<bool, DecodeError> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError::Protocol(why)),
    }
}

fn read_property<'a>(r: &mut Reader<'a>) -> Result<Property<'a>, DecodeError> {
    use Property::*;
    // The identifier is a Variable Byte Integer, although every defined one fits in a byte.
    let identifier = r.varint()?;
    let Ok(identifier) = u8::try_from(identifier) else {
        return Err(DecodeError::Malformed("unknown property identifier"));
    };
    Ok(match identifier {
        // Values other than 0 and 1 are passed on as they came, as mosquitto does: the
        // specification defines two values but no error for the others.
        id::PAYLOAD_FORMAT_INDICATOR => PayloadFormatIndicator(r.u8()?),
        id::MESSAGE_EXPIRY_INTERVAL => MessageExpiryInterval(r.u32()?),
        id::CONTENT_TYPE => ContentType(r.string()?),
        id::RESPONSE_TOPIC => ResponseTopic(r.string()?),
        id::CORRELATION_DATA => CorrelationData(r.binary()?),
        id::SUBSCRIPTION_IDENTIFIER => match r.varint()? {
            // mosquitto answers it as Malformed Packet.
            0 => {
                return Err(DecodeError::Malformed(
                    "subscription identifier 0 (5.0 3.3.2.3.8 and 3.8.2.1.2)",
                ))
            }
            v => SubscriptionIdentifier(v),
        },
        id::SESSION_EXPIRY_INTERVAL => SessionExpiryInterval(r.u32()?),
        id::ASSIGNED_CLIENT_IDENTIFIER => AssignedClientIdentifier(r.string()?),
        id::SERVER_KEEP_ALIVE => ServerKeepAlive(r.u16()?),
        id::AUTHENTICATION_METHOD => AuthenticationMethod(r.string()?),
        id::AUTHENTICATION_DATA => AuthenticationData(r.binary()?),
        id::REQUEST_PROBLEM_INFORMATION => {
            RequestProblemInformation(flag(r, "request problem information is not 0 or 1")?)
        }
        id::WILL_DELAY_INTERVAL => WillDelayInterval(r.u32()?),
        id::REQUEST_RESPONSE_INFORMATION => {
            RequestResponseInformation(flag(r, "request response information is not 0 or 1")?)
        }
        id::RESPONSE_INFORMATION => ResponseInformation(r.string()?),
        id::SERVER_REFERENCE => ServerReference(r.string()?),
        id::REASON_STRING => ReasonString(r.string()?),
        id::RECEIVE_MAXIMUM => match r.u16()? {
            0 => return Err(DecodeError::Protocol("receive maximum is 0")),
            v => ReceiveMaximum(v),
        },
        id::TOPIC_ALIAS_MAXIMUM => TopicAliasMaximum(r.u16()?),
        id::TOPIC_ALIAS => match r.u16()? {
            0 => {
                return Err(DecodeError::TopicAliasInvalid(
                    "[MQTT-3.3.2-8] topic alias is 0",
                ))
            }
            v => TopicAlias(v),
        },
        id::MAXIMUM_QOS => match r.u8()? {
            0 => MaximumQoS(QoS::AtMostOnce),
            1 => MaximumQoS(QoS::AtLeastOnce),
            _ => return Err(DecodeError::Protocol("maximum QoS is not 0 or 1")),
        },
        id::RETAIN_AVAILABLE => RetainAvailable(flag(r, "retain available is not 0 or 1")?),
        id::USER_PROPERTY => {
            let (name, value) = r.string_pair()?;
            User(name, value)
        }
        id::MAXIMUM_PACKET_SIZE => match r.u32()? {
            0 => return Err(DecodeError::Protocol("maximum packet size is 0")),
            v => MaximumPacketSize(v),
        },
        id::WILDCARD_SUBSCRIPTION_AVAILABLE => {
            WildcardSubscriptionAvailable(flag(r, "wildcard subscription available is not 0 or 1")?)
        }
        id::SUBSCRIPTION_IDENTIFIER_AVAILABLE => SubscriptionIdentifierAvailable(flag(
            r,
            "subscription identifier available is not 0 or 1",
        )?),
        id::SHARED_SUBSCRIPTION_AVAILABLE => {
            SharedSubscriptionAvailable(flag(r, "shared subscription available is not 0 or 1")?)
        }
        _ => return Err(DecodeError::Malformed("unknown property identifier")),
    })
}

/// Reads the Property Length and hands each property in it to `f`. The properties must end
/// exactly where the length says: one that runs past it is short, hence malformed.
fn read_properties<'a>(
    r: &mut Reader<'a>,
    mut f: impl FnMut(Property<'a>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let len = r.varint()?;
    let mut props = Reader::new(r.take(len as usize)?);
    while !props.is_empty() {
        f(read_property(&mut props)?)?;
    }
    Ok(())
}

/// Why a repeated property is refused; mosquitto answers it as a Protocol Error wherever it
/// appears, so packets that turn other property errors into Malformed Packet keep this one.
pub(crate) const TWICE_WHY: &str = "a property that may appear once appears twice (5.0 2.2.2.2)";
const TWICE: DecodeError = DecodeError::Protocol(TWICE_WHY);

/// Stores a property that may appear only once.
fn once<T>(slot: &mut Option<T>, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(TWICE);
    }
    *slot = Some(value);
    Ok(())
}

fn user(list: &mut UserProperties, name: &str, value: &str) -> Result<(), DecodeError> {
    list.push((name.to_owned(), value.to_owned()));
    Ok(())
}

fn not_allowed(why: &'static str) -> Result<(), DecodeError> {
    Err(DecodeError::Malformed(why))
}

/// Where encoded properties go: a byte counter when sizing a packet, the output when writing.
/// One `visit` per struct drives both, so the length written always matches the bytes.
pub(crate) trait Sink {
    fn byte(&mut self, id: u8, value: u8);
    fn two(&mut self, id: u8, value: u16);
    fn four(&mut self, id: u8, value: u32);
    fn varint(&mut self, id: u8, value: u32);
    fn string(&mut self, id: u8, value: &str);
    fn binary(&mut self, id: u8, value: &[u8]);
    fn pair(&mut self, id: u8, name: &str, value: &str);
}

/// Counts the bytes properties take.
struct Counter(usize);

impl Sink for Counter {
    fn byte(&mut self, _: u8, _: u8) {
        self.0 += 2;
    }
    fn two(&mut self, _: u8, _: u16) {
        self.0 += 3;
    }
    fn four(&mut self, _: u8, _: u32) {
        self.0 += 5;
    }
    fn varint(&mut self, _: u8, value: u32) {
        self.0 += 1 + varint_len(value as usize);
    }
    fn string(&mut self, _: u8, value: &str) {
        self.0 += 1 + string_len(value);
    }
    fn binary(&mut self, _: u8, value: &[u8]) {
        self.0 += 1 + binary_len(value);
    }
    fn pair(&mut self, _: u8, name: &str, value: &str) {
        self.0 += 1 + string_len(name) + string_len(value);
    }
}

impl Sink for Vec<u8> {
    fn byte(&mut self, id: u8, value: u8) {
        self.push(id);
        self.push(value);
    }
    fn two(&mut self, id: u8, value: u16) {
        self.push(id);
        super::primitives::write_u16(self, value);
    }
    fn four(&mut self, id: u8, value: u32) {
        self.push(id);
        super::primitives::write_u32(self, value);
    }
    fn varint(&mut self, id: u8, value: u32) {
        self.push(id);
        write_varint(self, value as usize);
    }
    fn string(&mut self, id: u8, value: &str) {
        self.push(id);
        super::primitives::write_string(self, value);
    }
    fn binary(&mut self, id: u8, value: &[u8]) {
        self.push(id);
        super::primitives::write_binary(self, value);
    }
    fn pair(&mut self, id: u8, name: &str, value: &str) {
        self.push(id);
        super::primitives::write_string(self, name);
        super::primitives::write_string(self, value);
    }
}

fn opt_byte<S: Sink>(s: &mut S, id: u8, value: Option<u8>) {
    if let Some(v) = value {
        s.byte(id, v);
    }
}
fn opt_flag<S: Sink>(s: &mut S, id: u8, value: Option<bool>) {
    if let Some(v) = value {
        s.byte(id, u8::from(v));
    }
}
fn opt_two<S: Sink>(s: &mut S, id: u8, value: Option<u16>) {
    if let Some(v) = value {
        s.two(id, v);
    }
}
fn opt_four<S: Sink>(s: &mut S, id: u8, value: Option<u32>) {
    if let Some(v) = value {
        s.four(id, v);
    }
}
fn opt_string<S: Sink>(s: &mut S, id: u8, value: &Option<String>) {
    if let Some(v) = value {
        s.string(id, v);
    }
}
fn opt_binary<S: Sink>(s: &mut S, id: u8, value: &Option<Vec<u8>>) {
    if let Some(v) = value {
        s.binary(id, v);
    }
}
fn users<S: Sink>(s: &mut S, list: &UserProperties) {
    for (name, value) in list {
        s.pair(id::USER_PROPERTY, name, value);
    }
}
/// A subscription identifier of 0 does not exist (it is a Protocol Error on the wire), so a 0
/// in the model means "none" and is not written. Values over the varint range are a caller bug.
fn subscription_identifier<S: Sink>(s: &mut S, value: u32) {
    debug_assert!(value <= VARINT_MAX, "subscription identifier out of range");
    if value != 0 {
        s.varint(id::SUBSCRIPTION_IDENTIFIER, value.min(VARINT_MAX));
    }
}

/// The codec side of a per-packet property struct.
pub(crate) trait Properties: Sized {
    /// Reads the Property Length and the properties it covers.
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError>;
    /// Feeds every property to `s`, in identifier order.
    fn visit<S: Sink>(&self, s: &mut S);

    /// Bytes of the properties, without the Property Length.
    fn len(&self) -> usize {
        let mut c = Counter(0);
        self.visit(&mut c);
        c.0
    }
}

/// Bytes a block of properties of content length `len` takes, its Property Length included.
pub(crate) fn block_size(len: usize) -> usize {
    varint_len(len) + len
}

/// Writes the Property Length `len` (from `Properties::len`) and the properties.
pub(crate) fn write_block<P: Properties>(out: &mut Vec<u8>, props: &P, len: usize) {
    write_varint(out, len);
    let start = out.len();
    props.visit(out);
    debug_assert_eq!(
        out.len() - start,
        len,
        "property length disagrees with the bytes"
    );
}

impl Properties for ConnectProperties {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        use Property::*;
        let mut p = Self::default();
        read_properties(r, |prop| match prop {
            SessionExpiryInterval(v) => once(&mut p.session_expiry_interval, v),
            ReceiveMaximum(v) => once(&mut p.receive_maximum, v),
            MaximumPacketSize(v) => once(&mut p.maximum_packet_size, v),
            TopicAliasMaximum(v) => once(&mut p.topic_alias_maximum, v),
            RequestResponseInformation(v) => once(&mut p.request_response_information, v),
            RequestProblemInformation(v) => once(&mut p.request_problem_information, v),
            User(k, v) => user(&mut p.user, k, v),
            AuthenticationMethod(v) => once(&mut p.authentication_method, v.to_owned()),
            AuthenticationData(v) => once(&mut p.authentication_data, v.to_vec()),
            _ => not_allowed("property not valid in CONNECT (5.0 2.2.2.2)"),
        })?;
        // Authentication data without a method is a Protocol Error by 5.0 3.1.2.11.10, but
        // mosquitto ignores it; so do we, dropping the data (nothing could read it).
        if p.authentication_method.is_none() {
            p.authentication_data = None;
        }
        Ok(p)
    }

    fn visit<S: Sink>(&self, s: &mut S) {
        opt_four(s, id::SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        opt_string(s, id::AUTHENTICATION_METHOD, &self.authentication_method);
        opt_binary(s, id::AUTHENTICATION_DATA, &self.authentication_data);
        opt_flag(
            s,
            id::REQUEST_PROBLEM_INFORMATION,
            self.request_problem_information,
        );
        opt_flag(
            s,
            id::REQUEST_RESPONSE_INFORMATION,
            self.request_response_information,
        );
        opt_two(s, id::RECEIVE_MAXIMUM, self.receive_maximum);
        opt_two(s, id::TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        users(s, &self.user);
        opt_four(s, id::MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
    }
}

impl Properties for WillProperties {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        use Property::*;
        let mut p = Self::default();
        read_properties(r, |prop| match prop {
            WillDelayInterval(v) => once(&mut p.will_delay_interval, v),
            PayloadFormatIndicator(v) => {
                p.order.note(id::PAYLOAD_FORMAT_INDICATOR);
                once(&mut p.payload_format_indicator, v)
            }
            ContentType(v) => {
                p.order.note(id::CONTENT_TYPE);
                once(&mut p.content_type, v.to_owned())
            }
            ResponseTopic(v) => {
                p.order.note(id::RESPONSE_TOPIC);
                once(&mut p.response_topic, v.to_owned())
            }
            CorrelationData(v) => {
                p.order.note(id::CORRELATION_DATA);
                once(&mut p.correlation_data, v.to_vec())
            }
            User(k, v) => {
                p.order.note(id::USER_PROPERTY);
                user(&mut p.user, k, v)
            }
            MessageExpiryInterval(v) => once(&mut p.message_expiry_interval, v),
            _ => not_allowed("property not valid in will properties (5.0 3.1.3.2)"),
        })?;
        Ok(p)
    }

    fn visit<S: Sink>(&self, s: &mut S) {
        opt_byte(
            s,
            id::PAYLOAD_FORMAT_INDICATOR,
            self.payload_format_indicator,
        );
        opt_four(s, id::MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        opt_string(s, id::CONTENT_TYPE, &self.content_type);
        opt_string(s, id::RESPONSE_TOPIC, &self.response_topic);
        opt_binary(s, id::CORRELATION_DATA, &self.correlation_data);
        opt_four(s, id::WILL_DELAY_INTERVAL, self.will_delay_interval);
        users(s, &self.user);
    }
}

impl Properties for ConnAckProperties {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        use Property::*;
        let mut p = Self::default();
        read_properties(r, |prop| match prop {
            SessionExpiryInterval(v) => once(&mut p.session_expiry_interval, v),
            ReceiveMaximum(v) => once(&mut p.receive_maximum, v),
            MaximumQoS(v) => once(&mut p.maximum_qos, v),
            RetainAvailable(v) => once(&mut p.retain_available, v),
            MaximumPacketSize(v) => once(&mut p.maximum_packet_size, v),
            AssignedClientIdentifier(v) => once(&mut p.assigned_client_identifier, v.to_owned()),
            TopicAliasMaximum(v) => once(&mut p.topic_alias_maximum, v),
            ReasonString(v) => once(&mut p.reason_string, v.to_owned()),
            User(k, v) => user(&mut p.user, k, v),
            WildcardSubscriptionAvailable(v) => once(&mut p.wildcard_subscription_available, v),
            SubscriptionIdentifierAvailable(v) => {
                once(&mut p.subscription_identifiers_available, v)
            }
            SharedSubscriptionAvailable(v) => once(&mut p.shared_subscription_available, v),
            ServerKeepAlive(v) => once(&mut p.server_keep_alive, v),
            ResponseInformation(v) => once(&mut p.response_information, v.to_owned()),
            ServerReference(v) => once(&mut p.server_reference, v.to_owned()),
            AuthenticationMethod(v) => once(&mut p.authentication_method, v.to_owned()),
            AuthenticationData(v) => once(&mut p.authentication_data, v.to_vec()),
            _ => not_allowed("property not valid in CONNACK (5.0 2.2.2.2)"),
        })?;
        Ok(p)
    }

    /// In mosquitto's order, so that a CONNACK matches its bytes: what the connection
    /// negotiated first, then the server's limits; properties mosquitto never sends last.
    fn visit<S: Sink>(&self, s: &mut S) {
        opt_two(s, id::TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        opt_two(s, id::SERVER_KEEP_ALIVE, self.server_keep_alive);
        opt_string(
            s,
            id::ASSIGNED_CLIENT_IDENTIFIER,
            &self.assigned_client_identifier,
        );
        opt_string(s, id::AUTHENTICATION_METHOD, &self.authentication_method);
        opt_binary(s, id::AUTHENTICATION_DATA, &self.authentication_data);
        opt_flag(s, id::RETAIN_AVAILABLE, self.retain_available);
        opt_four(s, id::MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        opt_two(s, id::RECEIVE_MAXIMUM, self.receive_maximum);
        // Maximum QoS may only be 0 or 1 on the wire; absent already means 2, so a model
        // holding 2 is written as absent rather than as a Protocol Error.
        match self.maximum_qos {
            Some(QoS::AtMostOnce) => s.byte(id::MAXIMUM_QOS, 0),
            Some(QoS::AtLeastOnce) => s.byte(id::MAXIMUM_QOS, 1),
            Some(QoS::ExactlyOnce) | None => {}
        }
        opt_four(s, id::SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        opt_string(s, id::RESPONSE_INFORMATION, &self.response_information);
        opt_string(s, id::SERVER_REFERENCE, &self.server_reference);
        opt_string(s, id::REASON_STRING, &self.reason_string);
        users(s, &self.user);
        opt_flag(
            s,
            id::WILDCARD_SUBSCRIPTION_AVAILABLE,
            self.wildcard_subscription_available,
        );
        opt_flag(
            s,
            id::SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            self.subscription_identifiers_available,
        );
        opt_flag(
            s,
            id::SHARED_SUBSCRIPTION_AVAILABLE,
            self.shared_subscription_available,
        );
    }
}

impl PublishProperties {
    /// Visits the properties as written for one receiver: `expiry` and `alias` replace the
    /// message expiry interval and topic alias when `Some`, and `extra_ids` follow the struct's
    /// own subscription identifiers.
    pub(crate) fn visit_for<S: Sink>(
        &self,
        s: &mut S,
        expiry: Option<u32>,
        alias: Option<u16>,
        extra_ids: &[u32],
    ) {
        // mosquitto's order: what belongs to this delivery (subscription identifiers), then
        // the message's own properties, then the remaining expiry interval.
        for &v in self.subscription_identifiers.iter().chain(extra_ids) {
            subscription_identifier(s, v);
        }
        opt_two(s, id::TOPIC_ALIAS, alias.or(self.topic_alias));
        own_properties(
            s,
            &self.order,
            self.payload_format_indicator,
            &self.content_type,
            &self.response_topic,
            &self.correlation_data,
            &self.user,
        );
        opt_four(
            s,
            id::MESSAGE_EXPIRY_INTERVAL,
            expiry.or(self.message_expiry_interval),
        );
    }

    /// `Properties::len` for `visit_for`.
    pub(crate) fn len_for(
        &self,
        expiry: Option<u32>,
        alias: Option<u16>,
        extra_ids: &[u32],
    ) -> usize {
        let mut c = Counter(0);
        self.visit_for(&mut c, expiry, alias, extra_ids);
        c.0
    }
}

impl Properties for PublishProperties {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        use Property::*;
        let mut p = Self::default();
        read_properties(r, |prop| match prop {
            PayloadFormatIndicator(v) => {
                p.order.note(id::PAYLOAD_FORMAT_INDICATOR);
                once(&mut p.payload_format_indicator, v)
            }
            MessageExpiryInterval(v) => once(&mut p.message_expiry_interval, v),
            TopicAlias(v) => once(&mut p.topic_alias, v),
            ResponseTopic(v) => {
                p.order.note(id::RESPONSE_TOPIC);
                once(&mut p.response_topic, v.to_owned())
            }
            CorrelationData(v) => {
                p.order.note(id::CORRELATION_DATA);
                once(&mut p.correlation_data, v.to_vec())
            }
            User(k, v) => {
                p.order.note(id::USER_PROPERTY);
                user(&mut p.user, k, v)
            }
            // May repeat (one per matching subscription, server to client). A client sending
            // one is a Protocol Error [MQTT-3.3.4-6] that the broker checks: it knows the
            // direction, the codec does not.
            SubscriptionIdentifier(v) => {
                p.subscription_identifiers.push(v);
                Ok(())
            }
            ContentType(v) => {
                p.order.note(id::CONTENT_TYPE);
                once(&mut p.content_type, v.to_owned())
            }
            _ => not_allowed("property not valid in PUBLISH (5.0 2.2.2.2)"),
        })?;
        Ok(p)
    }

    fn visit<S: Sink>(&self, s: &mut S) {
        self.visit_for(s, None, None, &[]);
    }
}

impl Properties for AckProperties {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        use Property::*;
        let mut p = Self::default();
        read_properties(r, |prop| match prop {
            ReasonString(v) => once(&mut p.reason_string, v.to_owned()),
            User(k, v) => user(&mut p.user, k, v),
            _ => not_allowed("property not valid in an acknowledgement (5.0 2.2.2.2)"),
        })?;
        Ok(p)
    }

    fn visit<S: Sink>(&self, s: &mut S) {
        opt_string(s, id::REASON_STRING, &self.reason_string);
        users(s, &self.user);
    }
}

impl Properties for SubscribeProperties {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        use Property::*;
        let mut p = Self::default();
        read_properties(r, |prop| match prop {
            SubscriptionIdentifier(v) => once(&mut p.subscription_identifier, v),
            User(k, v) => user(&mut p.user, k, v),
            _ => not_allowed("property not valid in SUBSCRIBE (5.0 2.2.2.2)"),
        })?;
        Ok(p)
    }

    fn visit<S: Sink>(&self, s: &mut S) {
        if let Some(v) = self.subscription_identifier {
            subscription_identifier(s, v);
        }
        users(s, &self.user);
    }
}

impl Properties for UnsubscribeProperties {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        use Property::*;
        let mut p = Self::default();
        read_properties(r, |prop| match prop {
            User(k, v) => user(&mut p.user, k, v),
            _ => not_allowed("property not valid in UNSUBSCRIBE (5.0 2.2.2.2)"),
        })?;
        Ok(p)
    }

    fn visit<S: Sink>(&self, s: &mut S) {
        users(s, &self.user);
    }
}

impl Properties for DisconnectProperties {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        use Property::*;
        let mut p = Self::default();
        read_properties(r, |prop| match prop {
            SessionExpiryInterval(v) => once(&mut p.session_expiry_interval, v),
            ReasonString(v) => once(&mut p.reason_string, v.to_owned()),
            User(k, v) => user(&mut p.user, k, v),
            ServerReference(v) => once(&mut p.server_reference, v.to_owned()),
            _ => not_allowed("property not valid in DISCONNECT (5.0 2.2.2.2)"),
        })?;
        Ok(p)
    }

    fn visit<S: Sink>(&self, s: &mut S) {
        opt_four(s, id::SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        opt_string(s, id::SERVER_REFERENCE, &self.server_reference);
        opt_string(s, id::REASON_STRING, &self.reason_string);
        users(s, &self.user);
    }
}

impl Properties for AuthProperties {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        use Property::*;
        let mut p = Self::default();
        read_properties(r, |prop| match prop {
            AuthenticationMethod(v) => once(&mut p.authentication_method, v.to_owned()),
            AuthenticationData(v) => once(&mut p.authentication_data, v.to_vec()),
            ReasonString(v) => once(&mut p.reason_string, v.to_owned()),
            User(k, v) => user(&mut p.user, k, v),
            _ => not_allowed("property not valid in AUTH (5.0 2.2.2.2)"),
        })?;
        Ok(p)
    }

    fn visit<S: Sink>(&self, s: &mut S) {
        opt_string(s, id::AUTHENTICATION_METHOD, &self.authentication_method);
        opt_binary(s, id::AUTHENTICATION_DATA, &self.authentication_data);
        opt_string(s, id::REASON_STRING, &self.reason_string);
        users(s, &self.user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode<P: Properties>(p: &P) -> Vec<u8> {
        let mut out = Vec::new();
        let len = p.len();
        write_block(&mut out, p, len);
        assert_eq!(out.len(), block_size(len));
        out
    }

    fn decode<P: Properties>(bytes: &[u8]) -> Result<P, DecodeError> {
        let mut r = Reader::new(bytes);
        let p = P::decode(&mut r)?;
        r.finish()?;
        Ok(p)
    }

    fn round_trip<P: Properties + PartialEq + std::fmt::Debug>(p: &P) {
        let bytes = encode(p);
        assert_eq!(&decode::<P>(&bytes).unwrap(), p, "bytes {bytes:02x?}");
    }

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Want {
        Ok,
        Malformed,
        Protocol,
    }

    fn outcome<T>(r: Result<T, DecodeError>) -> Want {
        match r {
            Ok(_) => Want::Ok,
            Err(DecodeError::Malformed(_)) => Want::Malformed,
            Err(DecodeError::Protocol(_) | DecodeError::TopicAliasInvalid(_)) => Want::Protocol,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }

    #[test]
    fn byte_exact_connect_properties() {
        let p = ConnectProperties {
            session_expiry_interval: Some(10),
            receive_maximum: Some(20),
            user: vec![("a".into(), "b".into()), ("a".into(), "c".into())],
            ..Default::default()
        };
        let bytes = [
            0x16, // length 22
            0x11, 0, 0, 0, 10, // session expiry
            0x21, 0, 20, // receive maximum
            0x26, 0, 1, b'a', 0, 1, b'b', // user (order kept)
            0x26, 0, 1, b'a', 0, 1, b'c',
        ];
        assert_eq!(encode(&p), bytes);
        assert_eq!(decode::<ConnectProperties>(&bytes).unwrap(), p);
        assert_eq!(encode(&ConnectProperties::default()), [0]);
    }

    #[test]
    fn round_trips_with_every_field() {
        round_trip(&ConnectProperties {
            session_expiry_interval: Some(u32::MAX),
            receive_maximum: Some(1),
            maximum_packet_size: Some(1024),
            topic_alias_maximum: Some(0),
            request_response_information: Some(true),
            request_problem_information: Some(false),
            user: vec![("k".into(), "v".into())],
            authentication_method: Some("SCRAM".into()),
            authentication_data: Some(vec![1, 2, 3]),
        });
        round_trip(&WillProperties {
            will_delay_interval: Some(5),
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(6),
            content_type: Some("text/plain".into()),
            response_topic: Some("r".into()),
            correlation_data: Some(vec![]),
            user: vec![("x".into(), "".into())],
            order: Default::default(),
        });
        round_trip(&ConnAckProperties {
            session_expiry_interval: Some(1),
            receive_maximum: Some(2),
            maximum_qos: Some(QoS::AtLeastOnce),
            retain_available: Some(false),
            maximum_packet_size: Some(3),
            assigned_client_identifier: Some("auto-1".into()),
            topic_alias_maximum: Some(4),
            reason_string: Some("why".into()),
            user: vec![("u".into(), "v".into())],
            wildcard_subscription_available: Some(true),
            subscription_identifiers_available: Some(false),
            shared_subscription_available: Some(true),
            server_keep_alive: Some(60),
            response_information: Some("resp".into()),
            server_reference: Some("other:1883".into()),
            authentication_method: Some("m".into()),
            authentication_data: Some(vec![9]),
        });
        round_trip(&PublishProperties {
            payload_format_indicator: Some(0),
            message_expiry_interval: Some(7),
            topic_alias: Some(3),
            response_topic: Some("resp".into()),
            correlation_data: Some(vec![0, 0]),
            user: vec![("a".into(), "1".into()), ("b".into(), "2".into())],
            subscription_identifiers: vec![1, 268_435_455, 1],
            content_type: Some("json".into()),
            order: Default::default(),
        });
        round_trip(&AckProperties {
            reason_string: Some("r".into()),
            user: vec![("a".into(), "b".into())],
        });
        round_trip(&SubscribeProperties {
            subscription_identifier: Some(128),
            user: vec![],
        });
        round_trip(&UnsubscribeProperties {
            user: vec![("a".into(), "b".into())],
        });
        round_trip(&DisconnectProperties {
            session_expiry_interval: Some(0),
            reason_string: Some("bye".into()),
            user: vec![],
            server_reference: Some("s".into()),
        });
        round_trip(&AuthProperties {
            authentication_method: Some("m".into()),
            authentication_data: Some(vec![1]),
            reason_string: Some("r".into()),
            user: vec![],
        });
    }

    #[test]
    fn maximum_qos_two_is_written_as_absent() {
        let p = ConnAckProperties {
            maximum_qos: Some(QoS::ExactlyOnce),
            ..Default::default()
        };
        assert_eq!(encode(&p), [0]);
    }

    /// (name, property block, expected outcome) decoded as CONNECT properties.
    const CONNECT_CASES: &[(&str, &[u8], Want)] = &[
        ("empty", &[0x00], Want::Ok),
        ("receive maximum 0", &[0x03, 0x21, 0, 0], Want::Protocol),
        (
            "maximum packet size 0",
            &[0x05, 0x27, 0, 0, 0, 0],
            Want::Protocol,
        ),
        ("request response 2", &[0x02, 0x19, 2], Want::Protocol),
        ("request problem 2", &[0x02, 0x17, 2], Want::Protocol),
        ("request problem 1", &[0x02, 0x17, 1], Want::Ok),
        (
            "duplicate session expiry",
            &[0x0A, 0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2],
            Want::Protocol,
        ),
        (
            "duplicate receive maximum",
            &[0x06, 0x21, 0, 1, 0x21, 0, 1],
            Want::Protocol,
        ),
        (
            "topic alias not allowed",
            &[0x03, 0x23, 0, 1],
            Want::Malformed,
        ),
        ("maximum qos not allowed", &[0x02, 0x24, 0], Want::Malformed),
        (
            "will delay not allowed",
            &[0x05, 0x18, 0, 0, 0, 1],
            Want::Malformed,
        ),
        ("unknown identifier", &[0x02, 0x7F, 0], Want::Malformed),
        (
            "two byte unknown identifier",
            &[0x03, 0x80, 0x01, 0],
            Want::Malformed,
        ),
        (
            "value runs past the length",
            &[0x03, 0x11, 0, 0, 0, 1],
            Want::Malformed,
        ),
        ("length past the body", &[0x05, 0x21, 0, 1], Want::Malformed),
        ("no length", &[], Want::Malformed),
        (
            "auth data without method (ignored, as by mosquitto)",
            &[0x04, 0x16, 0, 1, 7],
            Want::Ok,
        ),
        (
            "auth data with method",
            &[0x08, 0x16, 0, 1, 7, 0x15, 0, 1, b'm'],
            Want::Ok,
        ),
        (
            "user name with U+0000",
            &[0x07, 0x26, 0, 1, 0, 0, 1, b'v'],
            Want::Malformed,
        ),
        (
            "user value invalid UTF-8",
            &[0x07, 0x26, 0, 1, b'k', 0, 1, 0xFF],
            Want::Malformed,
        ),
    ];

    #[test]
    fn connect_property_table() {
        for &(name, bytes, want) in CONNECT_CASES {
            assert_eq!(outcome(decode::<ConnectProperties>(bytes)), want, "{name}");
        }
    }

    #[test]
    fn other_packet_kinds_reject_what_they_do_not_allow() {
        // (name, outcome for each kind: will, connack, publish, ack, subscribe, unsubscribe,
        // disconnect, auth)
        type Row = (&'static str, &'static [u8], [Want; 8]);
        use Want::{Malformed as M, Ok as O, Protocol as P};
        let rows: &[Row] = &[
            (
                "payload format 1",
                &[0x02, 0x01, 1],
                [O, M, O, M, M, M, M, M],
            ),
            (
                "payload format 2 (passed on, as by mosquitto)",
                &[0x02, 0x01, 2],
                [O, M, O, M, M, M, M, M],
            ),
            (
                "reason string",
                &[0x03, 0x1F, 0, 0],
                [M, O, M, O, M, M, O, O],
            ),
            ("sub id 5", &[0x02, 0x0B, 5], [M, M, O, M, O, M, M, M]),
            ("sub id 0", &[0x02, 0x0B, 0], [M, M, M, M, M, M, M, M]),
            (
                "sub id twice",
                &[0x04, 0x0B, 5, 0x0B, 6],
                [M, M, O, M, P, M, M, M],
            ),
            (
                "topic alias 0",
                &[0x03, 0x23, 0, 0],
                [P, P, P, P, P, P, P, P],
            ),
            ("maximum qos 1", &[0x02, 0x24, 1], [M, O, M, M, M, M, M, M]),
            ("maximum qos 2", &[0x02, 0x24, 2], [P, P, P, P, P, P, P, P]),
            (
                "retain available 2",
                &[0x02, 0x25, 2],
                [P, P, P, P, P, P, P, P],
            ),
            (
                "wildcard available 3",
                &[0x02, 0x28, 3],
                [P, P, P, P, P, P, P, P],
            ),
            (
                "sub ids available 9",
                &[0x02, 0x29, 9],
                [P, P, P, P, P, P, P, P],
            ),
            (
                "shared available 2",
                &[0x02, 0x2A, 2],
                [P, P, P, P, P, P, P, P],
            ),
            (
                "user property",
                &[0x05, 0x26, 0, 0, 0, 0],
                [O, O, O, O, O, O, O, O],
            ),
            (
                "session expiry",
                &[0x05, 0x11, 0, 0, 0, 0],
                [M, O, M, M, M, M, O, M],
            ),
            (
                "server reference",
                &[0x03, 0x1C, 0, 0],
                [M, O, M, M, M, M, O, M],
            ),
            ("auth method", &[0x03, 0x15, 0, 0], [M, O, M, M, M, M, M, O]),
            (
                "reason string twice",
                &[0x06, 0x1F, 0, 0, 0x1F, 0, 0],
                [M, P, M, P, M, M, P, P],
            ),
            (
                "content type twice",
                &[0x06, 0x03, 0, 0, 0x03, 0, 0],
                [P, M, P, M, M, M, M, M],
            ),
        ];
        for (name, bytes, want) in rows {
            let got = [
                outcome(decode::<WillProperties>(bytes)),
                outcome(decode::<ConnAckProperties>(bytes)),
                outcome(decode::<PublishProperties>(bytes)),
                outcome(decode::<AckProperties>(bytes)),
                outcome(decode::<SubscribeProperties>(bytes)),
                outcome(decode::<UnsubscribeProperties>(bytes)),
                outcome(decode::<DisconnectProperties>(bytes)),
                outcome(decode::<AuthProperties>(bytes)),
            ];
            assert_eq!(&got, want, "{name}");
        }
    }

    #[test]
    fn a_messages_own_properties_keep_the_order_they_came_in() {
        // user, content type, payload format, user: forwarded in that order (as mosquitto
        // forwards them); expiry, which is recomputed, goes last.
        let block: &[u8] = &[
            26, 0x26, 0, 1, b'k', 0, 1, b'v', 0x03, 0, 2, b'c', b't', 0x02, 0, 0, 0, 9, 0x01, 1,
            0x26, 0, 1, b'a', 0, 1, b'b',
        ];
        let p = PublishProperties::decode(&mut Reader::new(block)).expect("valid");
        let mut out = Vec::new();
        p.visit_for(&mut out, None, None, &[]);
        let mut want = block[1..].to_vec();
        // Expiry (0x02, 5 bytes) moves to the end.
        let expiry: Vec<u8> = want.drain(12..17).collect();
        want.extend(expiry);
        assert_eq!(out, want);
        // Built here, with no order recorded: the fixed order.
        let built = PublishProperties {
            user: vec![("k".into(), "v".into())],
            content_type: Some("ct".into()),
            ..Default::default()
        };
        assert_eq!(
            built,
            PublishProperties {
                order: p.order.clone(),
                ..built.clone()
            }
        );
        let mut out = Vec::new();
        built.visit_for(&mut out, None, None, &[]);
        assert_eq!(out, [0x03, 0, 2, b'c', b't', 0x26, 0, 1, b'k', 0, 1, b'v']);
    }

    #[test]
    fn publish_view_overrides() {
        let p = PublishProperties {
            message_expiry_interval: Some(100),
            subscription_identifiers: vec![1],
            ..Default::default()
        };
        let mut out = Vec::new();
        p.visit_for(&mut out, Some(40), Some(7), &[2, 0, 300]);
        assert_eq!(
            out,
            [0x0B, 1, 0x0B, 2, 0x0B, 0xAC, 0x02, 0x23, 0, 7, 0x02, 0, 0, 0, 40]
        );
        assert_eq!(p.len_for(Some(40), Some(7), &[2, 0, 300]), out.len());
    }
}
