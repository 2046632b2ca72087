//! Framing: how a byte stream is cut into messages, the cure for TCP's "sticky packets".
//!
//! Each framing is a tokio-util [`Decoder`]/[`Encoder`] pair with a hard limit checked before
//! memory is reserved. [`FrameCodec`] picks one at run time from a [`Framing`]. The decoders
//! follow the tokio-util contract: `Ok(None)` means "need more bytes", `Err` means the stream is
//! dead. Wire formats are specified byte by byte in `docs/PROTOCOL.md`.

use std::fmt;
use std::str::FromStr;

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use crate::error::{CodecError, ConfigError};
use crate::message::Message;

pub mod header;
pub mod length;
pub mod line;
pub mod raw;

pub use header::HeaderCodec;
pub use length::LengthCodec;
pub use line::LineCodec;
pub use raw::RawCodec;

/// Default maximum body of a length-prefixed or header frame: 8 MiB.
pub const DEFAULT_MAX_FRAME: usize = 8 * 1024 * 1024;
/// Default maximum line length, newline excluded: 64 KiB.
pub const DEFAULT_MAX_LINE: usize = 64 * 1024;
/// Maximum JSON header of the `header` framing: 64 KiB.
pub const DEFAULT_MAX_HEADER: usize = 64 * 1024;
/// Largest UDP payload over IPv4 (65535 − 8 byte UDP header − 20 byte IP header).
pub const MAX_DATAGRAM: usize = 65_507;
/// Largest `raw` message: the server reads at most this much at once with `raw` framing, so
/// one `recv` is one message, as with a `recv(8192)` loop.
pub const RAW_CHUNK: usize = 8 * 1024;

/// Size limits that every decoder enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest body of a length-prefixed or header frame.
    pub max_frame: usize,
    /// Largest line, newline excluded.
    pub max_line: usize,
    /// Largest JSON header of the `header` framing.
    pub max_header: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame: DEFAULT_MAX_FRAME,
            max_line: DEFAULT_MAX_LINE,
            max_header: DEFAULT_MAX_HEADER,
        }
    }
}

/// Byte order of a length prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ByteOrder {
    /// Most significant byte first ("network order").
    Big,
    /// Least significant byte first (what `struct.pack('i', n)` gives on x86).
    Little,
}

/// Width of a length prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Prefix {
    /// One byte, bodies up to 255 bytes.
    U8,
    /// Two bytes, bodies up to 65535 bytes.
    U16,
    /// Four bytes.
    U32,
    /// Eight bytes.
    U64,
}

impl Prefix {
    /// Size of the prefix in bytes.
    pub fn bytes(self) -> usize {
        match self {
            Prefix::U8 => 1,
            Prefix::U16 => 2,
            Prefix::U32 => 4,
            Prefix::U64 => 8,
        }
    }

    /// Largest length the prefix can express.
    pub fn max_len(self) -> u64 {
        match self {
            Prefix::U8 => u8::MAX.into(),
            Prefix::U16 => u16::MAX.into(),
            Prefix::U32 => u32::MAX.into(),
            Prefix::U64 => u64::MAX,
        }
    }
}

/// How messages are delimited on a stream; chosen with `--framing`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Framing {
    /// One read is one message, as a `recv(1024)` server sees it.
    Raw,
    /// Newline-terminated lines; `\r\n` tolerated.
    Line,
    /// An unsigned length prefix, then the body.
    Length {
        /// Prefix width.
        prefix: Prefix,
        /// Prefix byte order.
        order: ByteOrder,
    },
    /// A u32 header length, a JSON object header with `"len"`, then the body.
    Header {
        /// Byte order of the header length.
        order: ByteOrder,
    },
}

impl Framing {
    /// Every accepted `--framing` name.
    pub const NAMES: &'static [&'static str] = &[
        "raw", "line", "len8", "len16", "len16le", "len32", "len32le", "len64", "len64le",
        "header", "headerle",
    ];

    /// Whether the framing needs some bytes of a message before it can tell where it ends
    /// (every framing but `raw`, whose messages are whatever one read returns).
    pub fn is_delimited(self) -> bool {
        !matches!(self, Framing::Raw)
    }
}

impl fmt::Display for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let le = |o: &ByteOrder| if *o == ByteOrder::Little { "le" } else { "" };
        match self {
            Framing::Raw => f.write_str("raw"),
            Framing::Line => f.write_str("line"),
            Framing::Length { prefix, order } => {
                write!(f, "len{}{}", prefix.bytes() * 8, le(order))
            }
            Framing::Header { order } => write!(f, "header{}", le(order)),
        }
    }
}

impl FromStr for Framing {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim().to_ascii_lowercase();
        let length = |prefix, order| Framing::Length { prefix, order };
        Ok(match name.as_str() {
            "raw" => Framing::Raw,
            "line" => Framing::Line,
            "len8" => length(Prefix::U8, ByteOrder::Big),
            "len16" => length(Prefix::U16, ByteOrder::Big),
            "len16le" => length(Prefix::U16, ByteOrder::Little),
            "len32" => length(Prefix::U32, ByteOrder::Big),
            "len32le" => length(Prefix::U32, ByteOrder::Little),
            "len64" => length(Prefix::U64, ByteOrder::Big),
            "len64le" => length(Prefix::U64, ByteOrder::Little),
            "header" => Framing::Header {
                order: ByteOrder::Big,
            },
            "headerle" => Framing::Header {
                order: ByteOrder::Little,
            },
            _ => return Err(ConfigError::UnknownFraming(s.to_owned())),
        })
    }
}

/// A codec for any [`Framing`], chosen at run time.
#[derive(Debug)]
pub enum FrameCodec {
    /// See [`RawCodec`].
    Raw(RawCodec),
    /// See [`LineCodec`].
    Line(LineCodec),
    /// See [`LengthCodec`].
    Length(LengthCodec),
    /// See [`HeaderCodec`].
    Header(HeaderCodec),
}

impl FrameCodec {
    /// A codec for `framing` enforcing `limits`.
    pub fn new(framing: Framing, limits: Limits) -> Self {
        match framing {
            Framing::Raw => FrameCodec::Raw(RawCodec::new(RAW_CHUNK)),
            Framing::Line => FrameCodec::Line(LineCodec::new(limits.max_line)),
            Framing::Length { prefix, order } => {
                FrameCodec::Length(LengthCodec::new(prefix, order, limits.max_frame))
            }
            Framing::Header { order } => {
                FrameCodec::Header(HeaderCodec::new(order, limits.max_header, limits.max_frame))
            }
        }
    }

    /// How many bytes the frame at the front of `src` takes in all, once its prefix or header
    /// says so (`None` for `raw` and `line`, whose ends are not announced). Lets a reader size
    /// its buffer once instead of growing it by doubling.
    pub fn frame_len(&self, src: &[u8]) -> Option<usize> {
        match self {
            FrameCodec::Raw(_) | FrameCodec::Line(_) => None,
            FrameCodec::Length(c) => c.frame_len(src),
            FrameCodec::Header(c) => c.frame_len(src),
        }
    }

    /// The framing this codec implements.
    pub fn framing(&self) -> Framing {
        match self {
            FrameCodec::Raw(_) => Framing::Raw,
            FrameCodec::Line(_) => Framing::Line,
            FrameCodec::Length(c) => Framing::Length {
                prefix: c.prefix(),
                order: c.order(),
            },
            FrameCodec::Header(c) => Framing::Header { order: c.order() },
        }
    }
}

impl Decoder for FrameCodec {
    type Item = Message;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, CodecError> {
        match self {
            FrameCodec::Raw(c) => c.decode(src),
            FrameCodec::Line(c) => c.decode(src),
            FrameCodec::Length(c) => c.decode(src),
            FrameCodec::Header(c) => c.decode(src),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Message>, CodecError> {
        match self {
            FrameCodec::Raw(c) => c.decode_eof(src),
            FrameCodec::Line(c) => c.decode_eof(src),
            FrameCodec::Length(c) => c.decode_eof(src),
            FrameCodec::Header(c) => c.decode_eof(src),
        }
    }
}

impl Encoder<&Message> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, msg: &Message, dst: &mut BytesMut) -> Result<(), CodecError> {
        match self {
            FrameCodec::Raw(c) => c.encode(msg, dst),
            FrameCodec::Line(c) => c.encode(msg, dst),
            FrameCodec::Length(c) => c.encode(msg, dst),
            FrameCodec::Header(c) => c.encode(msg, dst),
        }
    }
}

/// Fails with [`CodecError::Truncated`] if `src` still holds part of a frame at end of stream.
fn eof_leftover(src: &BytesMut) -> Result<Option<Message>, CodecError> {
    if src.is_empty() {
        Ok(None)
    } else {
        Err(CodecError::Truncated {
            buffered: src.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_name_parses_and_displays_as_itself() {
        for name in Framing::NAMES {
            let f: Framing = name.parse().unwrap();
            assert_eq!(f.to_string(), *name);
        }
    }

    /// tokio-util's `FramedRead` reads into the decoder's buffer's spare capacity: a decoder
    /// that took the whole buffer would leave it none, and the next read would get 8 bytes.
    #[test]
    fn decoding_a_whole_buffer_leaves_its_capacity_for_the_next_read() {
        for name in Framing::NAMES {
            let framing: Framing = name.parse().unwrap();
            let mut codec = FrameCodec::new(framing, Limits::default());
            let mut buf = BytesMut::with_capacity(4096);
            codec.encode(&Message::new("hello"), &mut buf).unwrap();
            assert!(codec.decode(&mut buf).unwrap().is_some(), "{name}");
            assert!(buf.capacity() >= 4000, "{name}: {} left", buf.capacity());
        }
    }

    #[test]
    fn unknown_framing_is_rejected_with_the_list_of_names() {
        let err = "len24".parse::<Framing>().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("unknown framing 'len24'"), "{msg}");
        assert!(msg.contains("len32le"), "{msg}");
        assert!("len8le".parse::<Framing>().is_err());
    }
}
