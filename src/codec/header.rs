//! `header` / `headerle` framing: a u32 header length, a JSON object header that must hold
//! `"len"` (the body size; other fields are free), then the body. This is the tutorials'
//! "send the dict's length, the dict, then the data" scheme, and what file transfer builds on.
//!
//! The header is parsed once, as soon as it is complete; the body limit is checked then, before
//! the body is buffered. Like the other decoders this one consumes nothing until the whole frame
//! is there.

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::codec::length::{order_hint, put_uint, read_uint};
use crate::codec::{ByteOrder, eof_leftover};
use crate::error::CodecError;
use crate::message::{Header, Message};

const LEN_BYTES: usize = 4;

/// Codec for the `header` framings.
#[derive(Debug, Clone)]
pub struct HeaderCodec {
    order: ByteOrder,
    max_header: usize,
    max_body: usize,
    /// The header of the frame in progress, once parsed, and where its body starts.
    parsed: Option<(usize, Header)>,
}

impl HeaderCodec {
    /// A codec whose header length is in `order`, with the given header and body limits.
    pub fn new(order: ByteOrder, max_header: usize, max_body: usize) -> Self {
        HeaderCodec {
            order,
            max_header,
            max_body,
            parsed: None,
        }
    }

    /// How far the frame in progress is known to extend: the whole frame once its header is
    /// parsed, else the end of the header once its length is read.
    pub fn frame_len(&self, src: &[u8]) -> Option<usize> {
        if let Some((body_start, header)) = &self.parsed {
            return Some(body_start + header.body_len() as usize);
        }
        let len = read_uint(src.get(..LEN_BYTES)?, self.order);
        (len <= self.max_header as u64).then(|| LEN_BYTES + len as usize)
    }

    /// Byte order of the header length.
    pub fn order(&self) -> ByteOrder {
        self.order
    }

    /// Parses the header at the front of `src` if it is complete.
    fn parse_head(&self, src: &BytesMut) -> Result<Option<(usize, Header)>, CodecError> {
        if src.len() < LEN_BYTES {
            return Ok(None);
        }
        let len = read_uint(&src[..LEN_BYTES], self.order);
        if len > self.max_header as u64 {
            let hint = order_hint(&src[..LEN_BYTES], self.order, self.max_header, |order| {
                crate::codec::Framing::Header { order }
            });
            return Err(CodecError::HeaderTooLarge {
                len,
                max: self.max_header,
                hint,
            });
        }
        let body_start = LEN_BYTES + len as usize;
        if src.len() < body_start {
            return Ok(None);
        }
        let header = Header::parse(Bytes::copy_from_slice(&src[LEN_BYTES..body_start]))?;
        if header.body_len() > self.max_body as u64 {
            return Err(CodecError::FrameTooLarge {
                len: header.body_len(),
                max: self.max_body,
                hint: String::new(),
            });
        }
        Ok(Some((body_start, header)))
    }
}

impl Decoder for HeaderCodec {
    type Item = Message;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, CodecError> {
        if self.parsed.is_none() {
            self.parsed = self.parse_head(src)?;
        }
        let Some((body_start, header)) = &self.parsed else {
            return Ok(None);
        };
        // The body length was checked against `max_body`, a usize.
        let body_len = header.body_len() as usize;
        if src.len() < body_start + body_len {
            return Ok(None);
        }
        let body_start = *body_start;
        let header = self.parsed.take().map(|(_, h)| h);
        src.advance(body_start);
        let msg = Message::new(src.split_to(body_len).freeze());
        Ok(Some(match header {
            Some(h) => msg.with_header(h),
            None => msg,
        }))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Message>, CodecError> {
        match self.decode(src)? {
            Some(msg) => Ok(Some(msg)),
            None => eof_leftover(src),
        }
    }
}

impl Encoder<&Message> for HeaderCodec {
    type Error = CodecError;

    fn encode(&mut self, msg: &Message, dst: &mut BytesMut) -> Result<(), CodecError> {
        let generated;
        let header_raw: &[u8] = match msg.header() {
            Some(h) => {
                generated = h.for_body(msg.len()).raw().clone();
                &generated
            }
            None => {
                generated = Bytes::from(format!("{{\"len\":{}}}", msg.len()));
                &generated
            }
        };
        if header_raw.len() as u64 > u64::from(u32::MAX) {
            return Err(CodecError::PrefixOverflow {
                len: header_raw.len(),
                bits: 32,
            });
        }
        dst.reserve(LEN_BYTES + header_raw.len() + msg.len());
        put_uint(dst, header_raw.len() as u64, LEN_BYTES, self.order);
        dst.extend_from_slice(header_raw);
        dst.extend_from_slice(msg.body());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(header: &str, body: &[u8]) -> Vec<u8> {
        let mut v = (header.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend_from_slice(body);
        v
    }

    fn codec() -> HeaderCodec {
        HeaderCodec::new(ByteOrder::Big, 1024, 1024)
    }

    #[test]
    fn decodes_header_fields_and_body() {
        let mut buf = BytesMut::from(&frame(r#"{"name":"a.txt","len":5}"#, b"hello")[..]);
        let msg = codec().decode(&mut buf).unwrap().unwrap();
        assert_eq!(msg.body(), "hello");
        assert_eq!(msg.header().unwrap().fields()["name"], "a.txt");
        assert!(buf.is_empty());
    }

    #[test]
    fn a_frame_arriving_byte_by_byte_is_reassembled() {
        let bytes = frame(r#"{"len":3}"#, b"abc");
        let mut c = codec();
        let mut buf = BytesMut::new();
        for (i, b) in bytes.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let got = c.decode(&mut buf).unwrap();
            assert_eq!(got.is_some(), i == bytes.len() - 1);
        }
    }

    #[test]
    fn echoing_a_decoded_message_reproduces_the_frame_exactly() {
        let bytes = frame(r#"{ "len": 3, "z": [1, 2] }"#, b"abc");
        let mut c = codec();
        let msg = c.decode(&mut BytesMut::from(&bytes[..])).unwrap().unwrap();
        let mut out = BytesMut::new();
        c.encode(&msg, &mut out).unwrap();
        assert_eq!(&out[..], &bytes[..]);
    }

    #[test]
    fn a_message_without_header_gets_a_minimal_one() {
        let mut out = BytesMut::new();
        codec().encode(&Message::text("ack"), &mut out).unwrap();
        assert_eq!(&out[..], &frame(r#"{"len":3}"#, b"ack")[..]);
    }

    #[test]
    fn malformed_headers_are_errors() {
        for (header, want) in [
            ("not json", "not a JSON object"),
            ("", "not a JSON object"),
            (r#"{"name":"x"}"#, "lacks \"len\""),
            (r#"{"len":-3}"#, "non-negative integer"),
        ] {
            let mut buf = BytesMut::from(&frame(header, b"")[..]);
            let err = codec().decode(&mut buf).unwrap_err().to_string();
            assert!(err.contains(want), "{header:?}: {err}");
        }
    }

    #[test]
    fn limits_apply_to_header_and_body_before_buffering() {
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        assert!(matches!(
            codec().decode(&mut buf),
            Err(CodecError::HeaderTooLarge { .. })
        ));
        let mut buf = BytesMut::from(&frame(r#"{"len":1025}"#, b"")[..]);
        assert!(matches!(
            codec().decode(&mut buf),
            Err(CodecError::FrameTooLarge { len: 1025, .. })
        ));
    }

    #[test]
    fn the_tutorials_little_endian_header_sent_to_header_suggests_headerle() {
        let header = br#"{"file_name":"a.txt","len":10}"#;
        let mut bytes = (header.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        let err = codec()
            .decode(&mut BytesMut::from(&bytes[..]))
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("— a little-endian prefix? try --framing headerle"),
            "{err}"
        );
    }

    #[test]
    fn little_endian_header_length_matches_struct_pack_i() {
        let header = br#"{"len":2}"#;
        let mut bytes = (header.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(b"hi");
        let mut c = HeaderCodec::new(ByteOrder::Little, 1024, 1024);
        let msg = c.decode(&mut BytesMut::from(&bytes[..])).unwrap().unwrap();
        assert_eq!(msg.body(), "hi");
    }
}
