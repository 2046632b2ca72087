//! `lenN` / `lenNle` framing: an unsigned length prefix (1, 2, 4 or 8 bytes, big- or
//! little-endian), then exactly that many body bytes. `len32le` is what Python's
//! `struct.pack('i', n)` produces on x86.
//!
//! The announced length is checked against the limit as soon as the prefix is complete, before
//! any memory is reserved for the body. The prefix stays in the buffer until the whole frame
//! has arrived, so "buffer not empty" always means "a frame is in progress".

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::codec::{ByteOrder, Prefix, eof_leftover};
use crate::error::CodecError;
use crate::message::Message;

/// Codec for the length-prefixed framings.
#[derive(Debug, Clone)]
pub struct LengthCodec {
    prefix: Prefix,
    order: ByteOrder,
    max: usize,
}

impl LengthCodec {
    /// A codec with the given prefix, accepting bodies of at most `max` bytes.
    pub fn new(prefix: Prefix, order: ByteOrder, max: usize) -> Self {
        LengthCodec { prefix, order, max }
    }

    /// The whole frame's size (prefix included) once the prefix is complete and within the
    /// limit.
    pub fn frame_len(&self, src: &[u8]) -> Option<usize> {
        let width = self.prefix.bytes();
        let len = read_uint(src.get(..width)?, self.order);
        (len <= self.max as u64).then(|| width + len as usize)
    }

    /// The prefix width.
    pub fn prefix(&self) -> Prefix {
        self.prefix
    }

    /// The prefix byte order.
    pub fn order(&self) -> ByteOrder {
        self.order
    }
}

/// Reads an unsigned integer of `bytes.len()` bytes (1, 2, 4 or 8) in `order`.
pub(crate) fn read_uint(mut bytes: &[u8], order: ByteOrder) -> u64 {
    let n = bytes.len();
    match order {
        ByteOrder::Big => bytes.get_uint(n),
        ByteOrder::Little => bytes.get_uint_le(n),
    }
}

/// When a length read in `order` is over `max` but the same bytes read in the other order are
/// not, the peer most likely uses the other byte order: a hint naming the framing to try.
pub(crate) fn order_hint(
    prefix: &[u8],
    order: ByteOrder,
    max: usize,
    framing: impl Fn(ByteOrder) -> crate::codec::Framing,
) -> String {
    let other = match order {
        ByteOrder::Big => ByteOrder::Little,
        ByteOrder::Little => ByteOrder::Big,
    };
    if prefix.len() < 2 || read_uint(prefix, other) > max as u64 {
        return String::new();
    }
    let name = match other {
        ByteOrder::Little => "little-endian",
        ByteOrder::Big => "big-endian",
    };
    format!(" — a {name} prefix? try --framing {}", framing(other))
}

/// Writes `value` as an unsigned integer of `width` bytes in `order`.
pub(crate) fn put_uint(dst: &mut BytesMut, value: u64, width: usize, order: ByteOrder) {
    match order {
        ByteOrder::Big => dst.put_uint(value, width),
        ByteOrder::Little => dst.put_uint_le(value, width),
    }
}

impl Decoder for LengthCodec {
    type Item = Message;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, CodecError> {
        let width = self.prefix.bytes();
        if src.len() < width {
            return Ok(None);
        }
        let len = read_uint(&src[..width], self.order);
        if len > self.max as u64 {
            let hint = order_hint(&src[..width], self.order, self.max, |order| {
                crate::codec::Framing::Length {
                    prefix: self.prefix,
                    order,
                }
            });
            return Err(CodecError::FrameTooLarge {
                len,
                max: self.max,
                hint,
            });
        }
        // `len <= max`, and `max` is a usize, so neither conversion nor sum can overflow.
        let total = width + len as usize;
        if src.len() < total {
            return Ok(None);
        }
        src.advance(width);
        Ok(Some(Message::new(src.split_to(len as usize).freeze())))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Message>, CodecError> {
        match self.decode(src)? {
            Some(msg) => Ok(Some(msg)),
            None => eof_leftover(src),
        }
    }
}

impl Encoder<&Message> for LengthCodec {
    type Error = CodecError;

    fn encode(&mut self, msg: &Message, dst: &mut BytesMut) -> Result<(), CodecError> {
        let len = msg.len();
        if len as u64 > self.prefix.max_len() {
            return Err(CodecError::PrefixOverflow {
                len,
                bits: (self.prefix.bytes() * 8) as u32,
            });
        }
        dst.reserve(self.prefix.bytes() + len);
        put_uint(dst, len as u64, self.prefix.bytes(), self.order);
        dst.extend_from_slice(msg.body());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(prefix: Prefix, order: ByteOrder) -> LengthCodec {
        LengthCodec::new(prefix, order, 1024)
    }

    #[test]
    fn len32le_matches_python_struct_pack_i() {
        // struct.pack('i', 5) + b"hello" on x86
        let mut buf = BytesMut::from(&b"\x05\x00\x00\x00hello"[..]);
        let mut c = codec(Prefix::U32, ByteOrder::Little);
        assert_eq!(c.decode(&mut buf).unwrap().unwrap().body(), "hello");
        let mut out = BytesMut::new();
        c.encode(&Message::new("hello"), &mut out).unwrap();
        assert_eq!(&out[..], b"\x05\x00\x00\x00hello");
    }

    #[test]
    fn every_width_and_order_round_trips() {
        for prefix in [Prefix::U8, Prefix::U16, Prefix::U32, Prefix::U64] {
            for order in [ByteOrder::Big, ByteOrder::Little] {
                let mut c = codec(prefix, order);
                let mut buf = BytesMut::new();
                for body in ["", "a", "hello world"] {
                    c.encode(&Message::new(body), &mut buf).unwrap();
                }
                assert_eq!(buf.len(), 3 * prefix.bytes() + 12);
                for body in ["", "a", "hello world"] {
                    assert_eq!(c.decode(&mut buf).unwrap().unwrap().body(), body);
                }
                assert!(buf.is_empty());
            }
        }
    }

    #[test]
    fn the_prefix_stays_buffered_until_the_body_is_complete() {
        let mut c = codec(Prefix::U16, ByteOrder::Big);
        let mut buf = BytesMut::from(&b"\x00\x03ab"[..]);
        assert!(c.decode(&mut buf).unwrap().is_none());
        assert_eq!(buf.len(), 4);
        buf.extend_from_slice(b"c");
        assert_eq!(c.decode(&mut buf).unwrap().unwrap().body(), "abc");
    }

    #[test]
    fn an_oversized_length_is_rejected_before_the_body_arrives() {
        let mut c = LengthCodec::new(Prefix::U64, ByteOrder::Big, 8);
        let mut buf = BytesMut::from(&u64::MAX.to_be_bytes()[..]);
        match c.decode(&mut buf) {
            Err(CodecError::FrameTooLarge { len, max, hint }) => {
                assert_eq!((len, max, hint.as_str()), (u64::MAX, 8, ""));
            }
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
        assert!(buf.capacity() < 1024, "no memory reserved for the body");
    }

    #[test]
    fn an_oversized_prefix_that_fits_in_the_other_byte_order_suggests_it() {
        // struct.pack('i', 5) sent to a big-endian len32 reader.
        let mut c = codec(Prefix::U32, ByteOrder::Big);
        let err = c
            .decode(&mut BytesMut::from(&b"\x05\x00\x00\x00hello"[..]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "frame of 83886080 bytes exceeds the limit of 1024 bytes \
             — a little-endian prefix? try --framing len32le"
        );
        let mut c = codec(Prefix::U16, ByteOrder::Little);
        let err = c.decode(&mut BytesMut::from(&b"\x00\x05"[..])).unwrap_err();
        assert!(err.to_string().ends_with("try --framing len16"), "{err}");
    }

    #[test]
    fn eof_inside_a_frame_is_an_error_and_clean_eof_is_not() {
        let mut c = codec(Prefix::U32, ByteOrder::Big);
        let mut buf = BytesMut::from(&b"\x00\x00\x00\x09abc"[..]);
        assert!(matches!(
            c.decode_eof(&mut buf),
            Err(CodecError::Truncated { buffered: 7 })
        ));
        let mut buf = BytesMut::from(&b"\x00\x00"[..]);
        assert!(matches!(
            c.decode_eof(&mut buf),
            Err(CodecError::Truncated { buffered: 2 })
        ));
        assert!(c.decode_eof(&mut BytesMut::new()).unwrap().is_none());
    }

    #[test]
    fn a_reply_too_long_for_the_prefix_is_refused() {
        let mut c = codec(Prefix::U8, ByteOrder::Big);
        let mut out = BytesMut::new();
        assert!(matches!(
            c.encode(&Message::new(vec![0u8; 256]), &mut out),
            Err(CodecError::PrefixOverflow { len: 256, bits: 8 })
        ));
        c.encode(&Message::new(vec![0u8; 255]), &mut out).unwrap();
        assert_eq!(out[0], 255);
    }
}
