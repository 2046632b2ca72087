//! The unit of exchange between transports and services: a body of bytes, an optional JSON
//! header (only the `header` framing carries one on the wire), and a flag saying whether the
//! body is a line of text the server wrote (which lets the `raw` framing end it the way the
//! peer ends its own messages).

use std::borrow::Cow;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::error::CodecError;

/// One message: what a decoder yields, what a service receives and sends, what an encoder
/// writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    body: Bytes,
    /// Boxed: most messages have none, and a small `Message` keeps every task small.
    header: Option<Box<Header>>,
    text: bool,
}

impl Message {
    /// A message carrying `body` as opaque bytes (sent back exactly as given).
    pub fn new(body: impl Into<Bytes>) -> Self {
        Message {
            body: body.into(),
            header: None,
            text: false,
        }
    }

    /// A line of text written by the server itself (a receipt, `bye`, an error).
    ///
    /// Over `raw` framing such a message gets a trailing newline when the peer ends its own
    /// messages with one, so `nc` users see lines while `recv(1024)` clients see the bare text.
    pub fn text(text: impl Into<String>) -> Self {
        Message {
            body: Bytes::from(text.into()),
            header: None,
            text: true,
        }
    }

    /// Attaches a JSON header (used by the `header` framing; ignored by the others).
    pub fn with_header(mut self, header: Header) -> Self {
        self.header = Some(Box::new(header));
        self
    }

    /// The body bytes.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Consumes the message, returning its body.
    pub fn into_body(self) -> Bytes {
        self.body
    }

    /// The JSON header, if the message arrived with (or was given) one.
    pub fn header(&self) -> Option<&Header> {
        self.header.as_deref()
    }

    /// Whether this is server-written text rather than opaque bytes.
    pub fn is_text(&self) -> bool {
        self.text
    }

    /// Body length in bytes.
    pub fn len(&self) -> usize {
        self.body.len()
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.body.is_empty()
    }

    /// Whether the body, trimmed of surrounding whitespace, is `bye` or `quit` in any case.
    pub fn is_quit_word(&self) -> bool {
        let word = self.body.trim_ascii();
        word.eq_ignore_ascii_case(b"bye") || word.eq_ignore_ascii_case(b"quit")
    }
}

/// A validated `header` framing header: a JSON object with an unsigned integer `"len"`.
///
/// The original bytes are kept so that a header echoed back is byte-for-byte the one received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    raw: Bytes,
    body_len: u64,
}

impl Header {
    /// Validates `raw` as a JSON object whose `"len"` is a non-negative integer.
    pub fn parse(raw: Bytes) -> Result<Header, CodecError> {
        let fields: Map<String, Value> =
            serde_json::from_slice(&raw).map_err(|e| CodecError::HeaderNotJson {
                reason: e.to_string(),
            })?;
        let body_len = match fields.get("len") {
            None => return Err(CodecError::HeaderMissingLen),
            Some(v) => v.as_u64().ok_or(CodecError::HeaderBadLen)?,
        };
        Ok(Header { raw, body_len })
    }

    /// Builds a header from `fields`, setting `"len"` to `body_len`.
    pub fn from_fields(mut fields: Map<String, Value>, body_len: usize) -> Header {
        fields.insert("len".to_owned(), Value::from(body_len as u64));
        // Serializing a map of JSON values cannot fail.
        let raw = serde_json::to_vec(&fields).unwrap_or_else(|_| b"{}".to_vec());
        Header {
            raw: Bytes::from(raw),
            body_len: body_len as u64,
        }
    }

    /// The header's JSON text, exactly as received or built.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// The body length the header announces.
    pub fn body_len(&self) -> u64 {
        self.body_len
    }

    /// The header's fields, `"len"` included.
    pub fn fields(&self) -> Map<String, Value> {
        // The raw text was validated as a JSON object when this header was made.
        serde_json::from_slice(&self.raw).unwrap_or_default()
    }

    /// This header if it already announces `len`, else a copy whose `"len"` says `len`.
    pub(crate) fn for_body(&self, len: usize) -> Cow<'_, Header> {
        if self.body_len == len as u64 {
            Cow::Borrowed(self)
        } else {
            Cow::Owned(Header::from_fields(self.fields(), len))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quit_words_ignore_case_and_surrounding_whitespace() {
        for word in ["bye", "BYE", " quit\r\n", "Quit", "\tbye "] {
            assert!(Message::new(word).is_quit_word(), "{word:?}");
        }
        for word in ["byebye", "quit now", "", "b ye"] {
            assert!(!Message::new(word).is_quit_word(), "{word:?}");
        }
    }

    #[test]
    fn header_parse_requires_object_with_unsigned_len() {
        assert_eq!(
            Header::parse(Bytes::from_static(br#"{"len":5,"name":"a"}"#))
                .unwrap()
                .body_len(),
            5
        );
        assert!(matches!(
            Header::parse(Bytes::from_static(b"not json")),
            Err(CodecError::HeaderNotJson { .. })
        ));
        assert!(matches!(
            Header::parse(Bytes::from_static(b"[1,2]")),
            Err(CodecError::HeaderNotJson { .. })
        ));
        assert!(matches!(
            Header::parse(Bytes::from_static(br#"{"name":"a"}"#)),
            Err(CodecError::HeaderMissingLen)
        ));
        for bad in [r#"{"len":-1}"#, r#"{"len":1.5}"#, r#"{"len":"5"}"#] {
            assert!(matches!(
                Header::parse(Bytes::from(bad)),
                Err(CodecError::HeaderBadLen)
            ));
        }
    }

    #[test]
    fn header_for_body_keeps_bytes_when_len_matches_and_rewrites_otherwise() {
        let h = Header::parse(Bytes::from_static(br#"{"name":"x", "len":3}"#)).unwrap();
        assert_eq!(h.for_body(3).raw(), h.raw());
        let rewritten = h.for_body(7);
        assert_eq!(rewritten.body_len(), 7);
        assert_eq!(rewritten.fields()["name"], "x");
        assert_eq!(rewritten.fields()["len"], 7);
    }
}
