//! Decode errors, each mapped to the reason code a v5 server answers with.
//!
//! Owns: `DecodeError` and its `reason_code`. Must not: decide what the broker does about an
//! error (log, CONNACK, DISCONNECT or close): the client reader does.

use std::fmt;
use std::io;

use super::ReasonCode;

/// Why a packet could not be read. Messages start with the spec rule they enforce.
#[derive(Debug)]
pub enum DecodeError {
    /// The socket failed or closed (EOF gives `ErrorKind::UnexpectedEof`), or a read timed out.
    Io(io::Error),
    /// The bytes do not form a valid packet: v5 reason 0x81.
    Malformed(&'static str),
    /// A valid packet where the protocol forbids it: v5 reason 0x82.
    Protocol(&'static str),
    /// A topic alias of 0 [MQTT-3.3.2-8]: v5 reason 0x94. (Aliases above the maximum or never
    /// set are the broker's to find: only it knows the connection's aliases.)
    TopicAliasInvalid(&'static str),
    /// Remaining length over the limit, refused before the body was read: v5 reason 0x95.
    TooLarge { size: usize, max: usize },
    /// CONNECT with a protocol name or level we do not speak; `level` is what it asked for.
    /// Answered with CONNACK 0x84 (3.1.1 return code 1) when the name is known.
    UnsupportedProtocol { level: u8 },
}

impl DecodeError {
    /// The v5 reason code for this error.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::Io(_) => ReasonCode::UnspecifiedError,
            DecodeError::Malformed(_) => ReasonCode::MalformedPacket,
            DecodeError::Protocol(_) => ReasonCode::ProtocolError,
            DecodeError::TopicAliasInvalid(_) => ReasonCode::TopicAliasInvalid,
            DecodeError::TooLarge { .. } => ReasonCode::PacketTooLarge,
            DecodeError::UnsupportedProtocol { .. } => ReasonCode::UnsupportedProtocolVersion,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Io(e) => write!(f, "i/o: {e}"),
            DecodeError::Malformed(why) => write!(f, "malformed packet: {why}"),
            DecodeError::Protocol(why) => write!(f, "protocol error: {why}"),
            DecodeError::TopicAliasInvalid(why) => write!(f, "topic alias invalid: {why}"),
            DecodeError::TooLarge { size, max } => {
                write!(f, "packet of {size} bytes exceeds the maximum of {max}")
            }
            DecodeError::UnsupportedProtocol { level } => {
                write!(f, "unsupported protocol level {level}")
            }
        }
    }
}

impl std::error::Error for DecodeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DecodeError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for DecodeError {
    fn from(e: io::Error) -> Self {
        DecodeError::Io(e)
    }
}
