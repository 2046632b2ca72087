//! Checks echoed TCP replies as their bytes arrive, against the message that was sent, without
//! ever buffering a whole reply: only a length prefix or `header` JSON (at most 64 KiB) and a
//! short preview of a reply that differs are kept.
//!
//! Sans-IO: [`ReplyChecker::feed`] takes whatever bytes a read returned and says when a reply
//! is complete and whether it matched. The message bench sends over TCP is `size` bytes of
//! `x`, framed; an echo service must send exactly that back.

use bytes::Bytes;

use crate::codec::length::read_uint;
use crate::codec::{ByteOrder, DEFAULT_MAX_HEADER, Framing};
use crate::error::CodecError;
use crate::message::Header;

/// The byte every TCP message body is made of.
pub(crate) const FILL: u8 = b'x';
/// A run of [`FILL`] to compare received bytes against with one `memcmp`.
static FILLED: [u8; 4096] = [FILL; 4096];
/// Bytes of a differing reply kept to show the user.
const PREVIEW: usize = 200;
/// Matching bytes kept before the first differing one.
const CONTEXT: u64 = 16;
/// How far past the message size a reply may run before the checker gives up on the stream
/// (room for a server's error text in reply to a tiny message).
const SLACK: u64 = 64 * 1024;

/// A reply that is not the message that was sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Mismatch {
    /// Body length of the reply (as far as it got, if it never finished).
    pub len: u64,
    /// Offset of the first body byte that differs (the message size if only the length does).
    pub at: u64,
    /// Body bytes left out before the preview (some context before `at` is kept).
    pub skipped: u64,
    /// Reply body bytes from `skipped` on.
    pub preview: Vec<u8>,
    /// Whether the body ran on past the preview.
    pub truncated: bool,
}

impl Mismatch {
    /// Whether the reply is a server's error text (`error: …`) rather than mangled data.
    pub fn is_error_text(&self) -> bool {
        self.skipped == 0 && self.preview.starts_with(b"error")
    }

    /// The preview as printable text.
    pub fn preview_text(&self) -> String {
        let text = String::from_utf8_lossy(&self.preview);
        let mut shown = String::new();
        if self.skipped > 0 {
            shown.push('…');
        }
        shown.extend(text.trim_end().escape_debug());
        if self.truncated {
            shown.push('…');
        }
        shown
    }

    /// One line for the user: what came back instead of the `size`-byte message.
    pub fn describe(&self, size: usize) -> String {
        let text = self.preview_text();
        if self.is_error_text() {
            format!("server replied \"{text}\"")
        } else if self.len != size as u64 {
            format!(
                "a {}-byte reply to a {size}-byte message: \"{text}\"",
                self.len
            )
        } else {
            format!(
                "reply differs from the message at byte {}: \"{text}\"",
                self.at
            )
        }
    }
}

/// What a complete reply was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Exactly the message that was sent.
    Match,
    /// Anything else.
    Mismatch(Mismatch),
}

/// A reply the checker cannot find the end of: the stream is out of step for good.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReplyError {
    /// A `header` framing reply announced a header over the limit.
    #[error("reply header of {len} bytes is over the {max}-byte limit")]
    HeaderTooLarge {
        /// Announced header length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A `header` framing reply header that does not parse.
    #[error("bad reply header")]
    BadHeader(#[source] CodecError),
    /// A reply far longer than the message.
    #[error("a reply of {len} bytes or more to a {size}-byte message")]
    TooLong {
        /// Body length announced or seen so far.
        len: u64,
        /// The message size.
        size: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Collecting a length prefix (length framings) or a header length (`header`).
    Len { need: usize },
    /// Collecting the `header` JSON.
    Json { need: usize },
    /// Comparing body bytes; `len` is `None` for a line (it ends at `\n`).
    Body { len: Option<u64> },
}

/// Follows the replies on one connection.
#[derive(Debug)]
pub(crate) struct ReplyChecker {
    framing: Framing,
    size: usize,
    phase: Phase,
    /// Prefix or header bytes of the reply in progress.
    head: Vec<u8>,
    /// Body bytes of the reply in progress seen so far.
    seen: u64,
    /// The reply in progress, once a byte of it differs.
    bad: Option<Mismatch>,
}

impl ReplyChecker {
    /// A checker for replies to `size`-byte messages sent with `framing`.
    pub fn new(framing: Framing, size: usize) -> Self {
        let mut checker = ReplyChecker {
            framing,
            size,
            phase: Phase::Body { len: None },
            head: Vec::new(),
            seen: 0,
            bad: None,
        };
        checker.phase = checker.first_phase();
        checker
    }

    fn first_phase(&self) -> Phase {
        match self.framing {
            Framing::Raw => Phase::Body {
                len: Some(self.size as u64),
            },
            Framing::Line => Phase::Body { len: None },
            Framing::Length { prefix, .. } => Phase::Len {
                need: prefix.bytes(),
            },
            Framing::Header { .. } => Phase::Len { need: 4 },
        }
    }

    fn order(&self) -> ByteOrder {
        match self.framing {
            Framing::Length { order, .. } | Framing::Header { order } => order,
            Framing::Raw | Framing::Line => ByteOrder::Big,
        }
    }

    /// Consumes bytes from the front of `data`, up to the end of the reply in progress.
    /// Returns how many were used and, if that completed a reply, its verdict. Call again
    /// with the rest: bytes past one reply belong to the next.
    pub fn feed(&mut self, data: &[u8]) -> Result<(usize, Option<Verdict>), ReplyError> {
        match self.phase {
            Phase::Len { need } => {
                let used = self.collect(data, need);
                if self.head.len() < need {
                    return Ok((used, None));
                }
                let n = read_uint(&self.head, self.order());
                self.head.clear();
                if matches!(self.framing, Framing::Header { .. }) {
                    if n == 0 || n > DEFAULT_MAX_HEADER as u64 {
                        return Err(ReplyError::HeaderTooLarge {
                            len: n,
                            max: DEFAULT_MAX_HEADER,
                        });
                    }
                    // Checked against DEFAULT_MAX_HEADER, a usize.
                    self.phase = Phase::Json { need: n as usize };
                    return Ok((used, None));
                }
                Ok((used, self.start_body(n)?))
            }
            Phase::Json { need } => {
                let used = self.collect(data, need);
                if self.head.len() < need {
                    return Ok((used, None));
                }
                let header = Header::parse(Bytes::from(std::mem::take(&mut self.head)))
                    .map_err(ReplyError::BadHeader)?;
                Ok((used, self.start_body(header.body_len())?))
            }
            Phase::Body { len: Some(len) } => {
                let take = usize::try_from(len - self.seen)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.compare(&data[..take]);
                Ok((take, (self.seen == len).then(|| self.finish())))
            }
            Phase::Body { len: None } => match memchr::memchr(b'\n', data) {
                Some(end) => {
                    self.compare(&data[..end]);
                    Ok((end + 1, Some(self.finish())))
                }
                None => {
                    self.compare(data);
                    if self.seen > self.size as u64 + SLACK {
                        return Err(ReplyError::TooLong {
                            len: self.seen,
                            size: self.size,
                        });
                    }
                    Ok((data.len(), None))
                }
            },
        }
    }

    /// The reply in progress, if a byte of it already differs (for a connection that ends
    /// in the middle of a reply, typically after an error text).
    pub fn partial_mismatch(&self) -> Option<&Mismatch> {
        self.bad.as_ref()
    }

    /// Appends to `head` up to `need` bytes in all; returns how many were taken.
    fn collect(&mut self, data: &[u8], need: usize) -> usize {
        let take = (need - self.head.len()).min(data.len());
        self.head.extend_from_slice(&data[..take]);
        take
    }

    fn start_body(&mut self, len: u64) -> Result<Option<Verdict>, ReplyError> {
        if len > self.size as u64 + SLACK {
            return Err(ReplyError::TooLong {
                len,
                size: self.size,
            });
        }
        self.phase = Phase::Body { len: Some(len) };
        Ok((len == 0).then(|| self.finish()))
    }

    /// Checks the next body bytes against the message.
    fn compare(&mut self, chunk: &[u8]) {
        if self.bad.is_none() {
            let expected = (self.size as u64).saturating_sub(self.seen);
            let within = usize::try_from(expected)
                .unwrap_or(usize::MAX)
                .min(chunk.len());
            let differs = first_difference(&chunk[..within]).or(if within < chunk.len() {
                Some(within)
            } else {
                None
            });
            if let Some(i) = differs {
                let at = self.seen + i as u64;
                let context = at.min(CONTEXT);
                // At most CONTEXT bytes, which all matched, so they were FILL.
                let mut preview = vec![FILL; context as usize];
                let room = PREVIEW - preview.len();
                preview.extend_from_slice(&chunk[i..chunk.len().min(i + room)]);
                self.bad = Some(Mismatch {
                    len: 0,
                    at,
                    skipped: at - context,
                    truncated: chunk.len() - i > room,
                    preview,
                });
            }
        } else if let Some(bad) = &mut self.bad {
            let room = PREVIEW - bad.preview.len();
            bad.preview
                .extend_from_slice(&chunk[..room.min(chunk.len())]);
            bad.truncated |= chunk.len() > room;
        }
        self.seen += chunk.len() as u64;
        if let Some(bad) = &mut self.bad {
            bad.len = self.seen;
        }
    }

    /// Ends the reply in progress and gets ready for the next.
    fn finish(&mut self) -> Verdict {
        let seen = std::mem::take(&mut self.seen);
        self.phase = self.first_phase();
        match self.bad.take() {
            Some(bad)
                if bad.skipped == 0 && !bad.truncated && is_receipt(&bad.preview, self.size) =>
            {
                Verdict::Match
            }
            Some(bad) => Verdict::Mismatch(bad),
            None if seen == self.size as u64 => Verdict::Match,
            None => Verdict::Mismatch(Mismatch {
                len: seen,
                at: seen.min(self.size as u64),
                skipped: 0,
                preview: vec![FILL; usize::try_from(seen).unwrap_or(PREVIEW).min(PREVIEW)],
                truncated: seen > PREVIEW as u64,
            }),
        }
    }
}

/// Whether `reply` is what `sockit serve --service ack` answers to a `size`-byte message,
/// `ack <RFC 3339 time> <size> bytes` (a line ending allowed): the right reply from that
/// service, so that bench can load it too.
pub(crate) fn is_receipt(reply: &[u8], size: usize) -> bool {
    let Ok(text) = std::str::from_utf8(reply) else {
        return false;
    };
    let text = text.strip_suffix('\n').unwrap_or(text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    let mut words = text.split(' ');
    match (words.next(), words.next(), words.next(), words.next()) {
        (Some("ack"), Some(time), Some(len), Some("bytes")) => {
            words.next().is_none()
                && len.parse::<usize>() == Ok(size)
                && chrono::DateTime::parse_from_rfc3339(time).is_ok()
        }
        _ => false,
    }
}

/// Offset of the first byte of `chunk` that is not [`FILL`].
pub(crate) fn first_difference(chunk: &[u8]) -> Option<usize> {
    let mut offset = 0;
    for piece in chunk.chunks(FILLED.len()) {
        if piece != &FILLED[..piece.len()] {
            return piece.iter().position(|&b| b != FILL).map(|i| offset + i);
        }
        offset += piece.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use tokio_util::codec::Encoder;

    use super::*;
    use crate::codec::{FrameCodec, Limits};
    use crate::message::Message;
    use crate::service::Transport;

    fn framed(framing: Framing, body: &[u8]) -> Vec<u8> {
        let mut buf = BytesMut::new();
        FrameCodec::new(framing, Limits::default())
            .encode(&Message::new(body.to_vec()), &mut buf)
            .unwrap();
        buf.to_vec()
    }

    /// Feeds `data` in pieces of `step` bytes; returns every verdict.
    fn feed_all(checker: &mut ReplyChecker, data: &[u8], step: usize) -> Vec<Verdict> {
        let mut verdicts = Vec::new();
        for mut piece in data.chunks(step) {
            while !piece.is_empty() {
                let (used, verdict) = checker.feed(piece).unwrap();
                piece = &piece[used..];
                verdicts.extend(verdict);
            }
        }
        verdicts
    }

    #[test]
    fn an_exact_echo_matches_in_every_framing_and_any_split() {
        for name in Framing::NAMES {
            let framing: Framing = name.parse().unwrap();
            for size in [1, 64, 5000] {
                if crate::bench::check_size(Transport::Tcp, framing, size).is_err() {
                    continue;
                }
                let body = vec![FILL; size];
                let mut wire = framed(framing, &body);
                wire.extend(framed(framing, &body));
                for step in [1, 7, 4096, wire.len()] {
                    let mut checker = ReplyChecker::new(framing, size);
                    let verdicts = feed_all(&mut checker, &wire, step);
                    assert_eq!(
                        verdicts,
                        [Verdict::Match, Verdict::Match],
                        "{name} {size} {step}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_changed_byte_is_a_mismatch_that_keeps_the_stream_in_step() {
        for name in ["line", "len32", "header", "len8"] {
            let framing: Framing = name.parse().unwrap();
            let mut body = vec![FILL; 64];
            body[10] = b'y';
            let mut wire = framed(framing, &body);
            wire.extend(framed(framing, &[FILL; 64]));
            let mut checker = ReplyChecker::new(framing, 64);
            let verdicts = feed_all(&mut checker, &wire, 5);
            let Verdict::Mismatch(m) = &verdicts[0] else {
                panic!("{name}: {verdicts:?}")
            };
            assert_eq!((m.at, m.len), (10, 64), "{name}");
            assert!(m.describe(64).contains("at byte 10"), "{}", m.describe(64));
            assert_eq!(verdicts[1], Verdict::Match, "{name}");
        }
    }

    #[test]
    fn a_shorter_or_longer_reply_is_a_mismatch() {
        let mut checker = ReplyChecker::new("len16".parse().unwrap(), 64);
        let mut wire = framed("len16".parse().unwrap(), &[FILL; 63]);
        wire.extend(framed("len16".parse().unwrap(), &[FILL; 65]));
        let verdicts = feed_all(&mut checker, &wire, 100);
        assert_eq!(verdicts.len(), 2);
        for (v, len) in verdicts.iter().zip([63, 65]) {
            let Verdict::Mismatch(m) = v else { panic!() };
            assert_eq!(m.len, len);
            assert!(m.describe(64).contains(&format!("a {len}-byte reply")));
        }
    }

    #[test]
    fn an_error_text_is_shown_as_the_server_wrote_it() {
        let mut checker = ReplyChecker::new(Framing::Line, 64);
        let verdicts = feed_all(&mut checker, b"error: line too long\n", 3);
        let Verdict::Mismatch(m) = &verdicts[0] else {
            panic!()
        };
        assert!(m.is_error_text());
        assert_eq!(m.describe(64), "server replied \"error: line too long\"");
    }

    #[test]
    fn a_raw_error_cut_short_by_a_close_is_still_visible() {
        let mut checker = ReplyChecker::new(Framing::Raw, 64);
        assert!(feed_all(&mut checker, b"error: bye\n", 100).is_empty());
        let m = checker.partial_mismatch().unwrap();
        assert_eq!(m.describe(64), "server replied \"error: bye\"");
    }

    #[test]
    fn a_huge_announced_length_stops_the_checker() {
        let mut checker = ReplyChecker::new("len32".parse().unwrap(), 64);
        assert!(matches!(
            checker.feed(&u32::MAX.to_be_bytes()),
            Err(ReplyError::TooLong { .. })
        ));
        let mut checker = ReplyChecker::new(Framing::Line, 10);
        let junk = vec![b'z'; 70 * 1024];
        let mut data = &junk[..];
        let err = loop {
            match checker.feed(data) {
                Ok((used, _)) => data = &data[used..],
                Err(e) => break e,
            }
        };
        assert!(matches!(err, ReplyError::TooLong { .. }));
    }

    #[test]
    fn a_bad_header_stops_the_checker() {
        let mut checker = ReplyChecker::new("header".parse().unwrap(), 4);
        let mut wire = 4u32.to_be_bytes().to_vec();
        wire.extend_from_slice(b"nope");
        let mut data = &wire[..];
        let err = loop {
            match checker.feed(data) {
                Ok((used, _)) => data = &data[used..],
                Err(e) => break e,
            }
        };
        assert!(matches!(err, ReplyError::BadHeader(_)), "{err}");
    }

    #[test]
    fn previews_are_bounded() {
        let mut checker = ReplyChecker::new(Framing::Raw, 100_000);
        let junk = vec![b'z'; 100_000];
        let verdicts = feed_all(&mut checker, &junk, 4096);
        let Verdict::Mismatch(m) = &verdicts[0] else {
            panic!()
        };
        assert_eq!(m.preview.len(), PREVIEW);
        assert!(m.truncated);
    }

    #[test]
    fn an_ack_receipt_for_the_right_size_is_a_right_reply() {
        let receipt = crate::service::ack::receipt(64);
        assert!(is_receipt(receipt.as_bytes(), 64));
        assert!(is_receipt(format!("{receipt}\n").as_bytes(), 64));
        assert!(!is_receipt(receipt.as_bytes(), 65));
        assert!(!is_receipt(b"ack yesterday 64 bytes", 64));
        assert!(!is_receipt(format!("{receipt} extra").as_bytes(), 64));
        let mut checker = ReplyChecker::new(Framing::Line, 64);
        let verdicts = feed_all(&mut checker, format!("{receipt}\n").as_bytes(), 10);
        assert_eq!(verdicts, [Verdict::Match]);
    }

    #[test]
    fn first_difference_finds_the_offset_across_pieces() {
        let mut v = vec![FILL; 10_000];
        assert_eq!(first_difference(&v), None);
        v[9000] = 0;
        assert_eq!(first_difference(&v), Some(9000));
    }
}
