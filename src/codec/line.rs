//! `line` framing: newline-terminated messages, `\r\n` tolerated, the default for TCP.
//!
//! Lines are bytes, not strings: invalid UTF-8 passes through untouched. A line longer than the
//! limit kills the stream as soon as the limit is passed, without buffering the rest of it.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use crate::error::CodecError;
use crate::message::Message;

/// Codec for the `line` framing.
///
/// Replies end with `\r\n` when the peer's last line did (telnet), otherwise with `\n`.
#[derive(Debug, Clone)]
pub struct LineCodec {
    max: usize,
    /// Where to resume the newline search, so a line arriving in many reads is scanned once.
    next_index: usize,
    crlf: bool,
}

impl LineCodec {
    /// A codec accepting lines of at most `max` bytes, line ending excluded.
    pub fn new(max: usize) -> Self {
        LineCodec {
            max,
            next_index: 0,
            crlf: false,
        }
    }

    fn take_line(&mut self, src: &mut BytesMut, end: usize, consumed: usize) -> Message {
        let cr = end > 0 && src[end - 1] == b'\r';
        let mut line = src.split_to(consumed);
        line.truncate(if cr { end - 1 } else { end });
        self.crlf = cr;
        self.next_index = 0;
        Message::new(line.freeze())
    }

    /// Length of `src[..end]` once a trailing `\r` is set aside.
    fn content_len(src: &[u8], end: usize) -> usize {
        if end > 0 && src[end - 1] == b'\r' {
            end - 1
        } else {
            end
        }
    }
}

impl Decoder for LineCodec {
    type Item = Message;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, CodecError> {
        let start = self.next_index.min(src.len());
        match memchr::memchr(b'\n', &src[start..]) {
            Some(offset) => {
                let nl = start + offset;
                if Self::content_len(src, nl) > self.max {
                    return Err(CodecError::LineTooLong { max: self.max });
                }
                Ok(Some(self.take_line(src, nl, nl + 1)))
            }
            None => {
                if Self::content_len(src, src.len()) > self.max {
                    return Err(CodecError::LineTooLong { max: self.max });
                }
                self.next_index = src.len();
                Ok(None)
            }
        }
    }

    /// At end of stream an unterminated last line is still a line (`printf hi | nc` sends one).
    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Message>, CodecError> {
        if let Some(msg) = self.decode(src)? {
            return Ok(Some(msg));
        }
        if src.is_empty() {
            return Ok(None);
        }
        let end = src.len();
        Ok(Some(self.take_line(src, end, end)))
    }
}

impl Encoder<&Message> for LineCodec {
    type Error = CodecError;

    fn encode(&mut self, msg: &Message, dst: &mut BytesMut) -> Result<(), CodecError> {
        let ending: &[u8] = if self.crlf { b"\r\n" } else { b"\n" };
        dst.reserve(msg.len() + ending.len());
        dst.extend_from_slice(msg.body());
        dst.extend_from_slice(ending);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(c: &mut LineCodec, buf: &mut BytesMut) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| c.decode(buf).unwrap())
            .map(|m| m.into_body().to_vec())
            .collect()
    }

    #[test]
    fn coalesced_lines_come_out_one_by_one_with_crlf_stripped() {
        let mut c = LineCodec::new(100);
        let mut buf = BytesMut::from(&b"one\ntwo\r\n\nthree"[..]);
        assert_eq!(
            drain(&mut c, &mut buf),
            [b"one".to_vec(), b"two".to_vec(), b"".to_vec()]
        );
        assert_eq!(&buf[..], b"three");
    }

    #[test]
    fn a_line_split_across_reads_is_reassembled() {
        let mut c = LineCodec::new(100);
        let mut buf = BytesMut::new();
        for b in b"split line\r" {
            buf.extend_from_slice(&[*b]);
            assert!(c.decode(&mut buf).unwrap().is_none());
        }
        buf.extend_from_slice(b"\n");
        assert_eq!(c.decode(&mut buf).unwrap().unwrap().body(), "split line");
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_accepted_even_with_crlf() {
        let mut c = LineCodec::new(4);
        let mut buf = BytesMut::from(&b"abcd\r\nabcd\n"[..]);
        assert_eq!(
            drain(&mut c, &mut buf),
            [b"abcd".to_vec(), b"abcd".to_vec()]
        );
        // A pending `\r` could still be the start of `\r\n`, so it does not count yet.
        let mut buf = BytesMut::from(&b"abcd\r"[..]);
        assert!(c.decode(&mut buf).unwrap().is_none());
    }

    #[test]
    fn a_line_over_the_limit_fails_before_its_newline_arrives() {
        let mut c = LineCodec::new(4);
        let mut buf = BytesMut::from(&b"abcde"[..]);
        assert!(matches!(
            c.decode(&mut buf),
            Err(CodecError::LineTooLong { max: 4 })
        ));
        let mut buf = BytesMut::from(&b"abcdef\n"[..]);
        assert!(matches!(
            LineCodec::new(4).decode(&mut buf),
            Err(CodecError::LineTooLong { .. })
        ));
    }

    #[test]
    fn invalid_utf8_passes_through_as_bytes() {
        let mut c = LineCodec::new(100);
        let mut buf = BytesMut::from(&b"\xff\xfe\x00ok\n"[..]);
        assert_eq!(drain(&mut c, &mut buf), [b"\xff\xfe\x00ok".to_vec()]);
    }

    #[test]
    fn an_unterminated_last_line_is_delivered_at_eof() {
        let mut c = LineCodec::new(100);
        let mut buf = BytesMut::from(&b"last\r"[..]);
        assert!(c.decode(&mut buf).unwrap().is_none());
        assert_eq!(c.decode_eof(&mut buf).unwrap().unwrap().body(), "last");
        assert!(c.decode_eof(&mut buf).unwrap().is_none());
    }

    #[test]
    fn replies_use_the_peers_line_ending() {
        let mut c = LineCodec::new(100);
        let mut out = BytesMut::new();
        c.encode(&Message::text("a"), &mut out).unwrap();
        let mut buf = BytesMut::from(&b"telnet\r\n"[..]);
        c.decode(&mut buf).unwrap();
        c.encode(&Message::text("b"), &mut out).unwrap();
        assert_eq!(&out[..], b"a\nb\r\n");
    }
}
