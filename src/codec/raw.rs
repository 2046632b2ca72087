//! `raw` framing: whatever one read returns is one message — the behaviour of a server that
//! calls `recv(1024)` and treats the result as a request. There is no delimiter, so this is the
//! framing that undelimited clients (the classic Python tutorials, plain `nc`) need.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use crate::error::CodecError;
use crate::message::Message;

/// Codec for the `raw` framing.
///
/// Outgoing text messages (receipts, `bye`, errors) get a trailing `\n` only when the peer's
/// own last message ended with one: line-oriented peers such as `nc` see lines, while clients
/// that send bare `send(b"hello")` messages get bare text back.
#[derive(Debug, Clone)]
pub struct RawCodec {
    chunk: usize,
    peer_newlines: bool,
}

impl RawCodec {
    /// A codec that yields at most `chunk` bytes per message.
    pub fn new(chunk: usize) -> Self {
        RawCodec {
            chunk: chunk.max(1),
            peer_newlines: false,
        }
    }

    /// Takes a whole datagram as one message (datagrams are never split or merged).
    pub fn decode_datagram(&mut self, datagram: bytes::Bytes) -> Message {
        self.peer_newlines = datagram.last() == Some(&b'\n');
        Message::new(datagram)
    }

    /// Whether the last message decoded ended with a newline.
    pub fn peer_uses_newlines(&self) -> bool {
        self.peer_newlines
    }
}

impl Decoder for RawCodec {
    type Item = Message;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, CodecError> {
        if src.is_empty() {
            return Ok(None);
        }
        let n = src.len().min(self.chunk);
        let body = src.split_to(n).freeze();
        self.peer_newlines = body.last() == Some(&b'\n');
        Ok(Some(Message::new(body)))
    }
}

impl Encoder<&Message> for RawCodec {
    type Error = CodecError;

    fn encode(&mut self, msg: &Message, dst: &mut BytesMut) -> Result<(), CodecError> {
        let body = msg.body();
        let newline = msg.is_text() && self.peer_newlines && body.last() != Some(&b'\n');
        dst.reserve(body.len() + usize::from(newline));
        dst.extend_from_slice(body);
        if newline {
            dst.extend_from_slice(b"\n");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_buffered_is_one_message() {
        let mut c = RawCodec::new(1024);
        let mut buf = BytesMut::from(&b"hello world"[..]);
        assert_eq!(c.decode(&mut buf).unwrap().unwrap().body(), "hello world");
        assert!(buf.is_empty());
        assert!(c.decode(&mut buf).unwrap().is_none());
    }

    #[test]
    fn messages_are_capped_at_the_chunk_size() {
        let mut c = RawCodec::new(4);
        let mut buf = BytesMut::from(&b"abcdefghij"[..]);
        let parts: Vec<_> = std::iter::from_fn(|| c.decode(&mut buf).unwrap())
            .map(|m| m.into_body())
            .collect();
        assert_eq!(parts, ["abcd", "efgh", "ij"]);
    }

    #[test]
    fn echoed_bytes_are_written_verbatim() {
        let mut c = RawCodec::new(1024);
        let mut buf = BytesMut::from(&b"line\n"[..]);
        let msg = c.decode(&mut buf).unwrap().unwrap();
        let mut out = BytesMut::new();
        c.encode(&msg, &mut out).unwrap();
        c.encode(&Message::new("no newline added"), &mut out)
            .unwrap();
        assert_eq!(&out[..], b"line\nno newline added");
    }

    #[test]
    fn text_replies_follow_the_peers_newline_habit() {
        let mut c = RawCodec::new(1024);
        let mut out = BytesMut::new();

        let mut buf = BytesMut::from(&b"hello"[..]);
        c.decode(&mut buf).unwrap();
        c.encode(&Message::text("bare"), &mut out).unwrap();
        assert_eq!(&out[..], b"bare");

        out.clear();
        let mut buf = BytesMut::from(&b"hello\n"[..]);
        c.decode(&mut buf).unwrap();
        c.encode(&Message::text("terminated"), &mut out).unwrap();
        c.encode(&Message::text("already\n"), &mut out).unwrap();
        assert_eq!(&out[..], b"terminated\nalready\n");
    }
}
