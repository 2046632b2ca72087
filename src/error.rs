//! Library error types: one enum per concern, short lowercase messages.
//!
//! `anyhow` is reserved for the binary; everything a caller of the library can meet is a typed
//! variant here so that tests and the CLI can match on it.

use std::io;

/// Why a byte stream could not be turned into messages (or a message into bytes).
///
/// Every variant except [`CodecError::Io`] means the stream is dead: the connection that produced
/// it is closed, and only that connection.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// A length prefix or header announced a body larger than the configured maximum.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes{hint}")]
    FrameTooLarge {
        /// The announced body length.
        len: u64,
        /// The configured maximum.
        max: usize,
        /// Empty, or a suggestion when the prefix read in the other byte order would fit
        /// (` — a little-endian prefix? try --framing len32le`).
        hint: String,
    },
    /// A line grew past the maximum without a newline.
    #[error("line exceeds the limit of {max} bytes")]
    LineTooLong {
        /// The configured maximum line length (without the newline).
        max: usize,
    },
    /// A `header` frame announced a JSON header larger than the maximum.
    #[error("header of {len} bytes exceeds the limit of {max} bytes{hint}")]
    HeaderTooLarge {
        /// The announced header length.
        len: u64,
        /// The configured maximum.
        max: usize,
        /// Empty, or a suggestion when the length read in the other byte order would fit.
        hint: String,
    },
    /// A `header` frame's header did not parse as a JSON object.
    #[error("header is not a JSON object: {reason}")]
    HeaderNotJson {
        /// What the JSON parser said.
        reason: String,
    },
    /// A `header` frame's header is a JSON object without a `"len"` field.
    #[error("header lacks \"len\"")]
    HeaderMissingLen,
    /// A `header` frame's `"len"` is not a non-negative integer.
    #[error("header \"len\" is not a non-negative integer")]
    HeaderBadLen,
    /// An outgoing message is too long for the length prefix of the chosen framing.
    #[error("message of {len} bytes does not fit a {bits}-bit length prefix")]
    PrefixOverflow {
        /// The message length.
        len: usize,
        /// The width of the prefix in bits.
        bits: u32,
    },
    /// The peer closed the stream in the middle of a frame.
    #[error("connection closed in the middle of a frame ({buffered} bytes of it received)")]
    Truncated {
        /// How many bytes of the unfinished frame had arrived.
        buffered: usize,
    },
    /// The underlying stream failed (its message is the system's, not repeated here).
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A command-line or configuration value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The framing name is not one we know.
    #[error("unknown framing '{0}' (expected one of: {list})", list = crate::codec::Framing::NAMES.join(", "))]
    UnknownFraming(String),
    /// The port is not a number in 0..=65535.
    #[error("'{value}' is not a valid port: {reason}")]
    BadPort {
        /// What was given.
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The host is neither an IP address nor a valid host name.
    #[error("'{value}' is not a valid address: {reason}")]
    BadAddress {
        /// What was given.
        value: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A numeric limit is out of its allowed range.
    #[error("{name} must be {expected}, got {value}")]
    OutOfRange {
        /// The flag or field at fault.
        name: &'static str,
        /// The allowed range, in words.
        expected: &'static str,
        /// What was given.
        value: String,
    },
}
