//! The PostgreSQL wire protocol (3.0) as pure functions over bytes: framing with length
//! limits, the startup packets, the messages the pooler writes and reads, and the server
//! side of SCRAM-SHA-256. No I/O here: parsers take bytes and return `Ok(None)` when they
//! need more.

pub mod frame;
pub mod messages;
pub mod scram;
pub mod sqlstate;
pub mod tracker;

/// A message that breaks the protocol. Each closes the offending connection with an
/// ErrorResponse; none is a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("invalid message length {0}")]
    BadLength(i32),
    #[error("message {tag:?} of {len} bytes exceeds the limit of {limit} bytes")]
    TooLong { tag: char, len: usize, limit: usize },
    #[error("unsupported frontend protocol {major}.{minor}: only 3.0 is supported")]
    Version { major: i32, minor: i32 },
    #[error("invalid startup packet: {0}")]
    Startup(&'static str),
    #[error("malformed message: {0}")]
    Malformed(&'static str),
}
