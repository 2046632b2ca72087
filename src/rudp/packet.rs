//! The rudp wire format: parsing and emitting datagrams (see docs/PROTOCOL.md, section 6).
//!
//! Every length, count and sequence field is checked against the bytes actually present before
//! it is used; a datagram that fails any check is rejected whole ([`ParseError`]), so a
//! receiver never acts on half of a malformed datagram. Integers are big-endian.

use std::fmt;

/// Protocol version carried in `INITIAL`.
pub const VERSION: u8 = 1;
/// Packet type: client hello (with or without a cookie).
pub const TYPE_INITIAL: u8 = 0x01;
/// Packet type: server's stateless cookie challenge.
pub const TYPE_RETRY: u8 = 0x02;
/// Packet type: server accepts, telling the client its connection id.
pub const TYPE_ACCEPT: u8 = 0x03;
/// Packet type: an established connection's frames.
pub const TYPE_DATA: u8 = 0x04;

/// Frame type inside `DATA`: acknowledgement (cumulative + selective).
pub const FRAME_ACK: u8 = 0x01;
/// Frame type inside `DATA`: a run of consecutive fragments.
pub const FRAME_FRAGS: u8 = 0x02;
/// Frame type inside `DATA`: ping (asks for an acknowledgement).
pub const FRAME_PING: u8 = 0x03;
/// Frame type inside `DATA`: abort the connection with an error code.
pub const FRAME_ABORT: u8 = 0x04;

/// Fragment flag: last fragment of a message.
pub const FLAG_END: u8 = 0x01;
/// Fragment flag: graceful close (a zero-length fragment after the last message).
pub const FLAG_CLOSE: u8 = 0x02;

/// Length of a cookie (truncated keyed BLAKE3).
pub const TOKEN_LEN: usize = 16;
/// An `INITIAL` is padded to at least this many bytes, so a server's answer (`RETRY`: 25
/// bytes, `ACCEPT`: 17) is never larger than the request: no amplification.
pub const MIN_INITIAL_LEN: usize = 64;
/// Length of `RETRY`.
pub const RETRY_LEN: usize = 1 + 8 + TOKEN_LEN;
/// Length of `ACCEPT`.
pub const ACCEPT_LEN: usize = 1 + 8 + 8;
/// Length of the `DATA` header: type, destination connection id, 16-bit millisecond timestamp.
pub const DATA_HEADER_LEN: usize = 1 + 8 + 2;
/// Length of an `ACK` frame without ranges.
pub const ACK_BASE_LEN: usize = 1 + 4 + 2 + 1 + 2 + 1;
/// Length of one selective-acknowledgement range.
pub const ACK_RANGE_LEN: usize = 8;
/// Most ranges an `ACK` frame may carry.
pub const MAX_ACK_RANGES: usize = 32;
/// Length of a `FRAGS` run header (type, first sequence number, count).
pub const FRAGS_HEADER_LEN: usize = 1 + 4 + 1;
/// Largest fragment payload the format allows (and the largest supported MTU).
pub const MAX_FRAGMENT: usize = 65000;
/// Largest encoded fragment header (LEB128 of `len << 2 | flags`, `len <= 65000`).
pub const MAX_VARINT_LEN: usize = 3;

/// Why a datagram was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Empty or shorter than its type's fixed part.
    Truncated,
    /// Unknown packet or frame type.
    UnknownType(u8),
    /// A length, count or flag field that contradicts the datagram.
    Invalid(&'static str),
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Truncated => f.write_str("truncated datagram"),
            ParseError::UnknownType(t) => write!(f, "unknown type 0x{t:02x}"),
            ParseError::Invalid(why) => write!(f, "invalid field: {why}"),
        }
    }
}

impl std::error::Error for ParseError {}

/// A parsed datagram. `Data` keeps its frames as bytes already validated by [`parse`];
/// iterate them with [`frames`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Client hello: the client's connection id and, on the second try, the server's cookie.
    Initial {
        /// Protocol version the client speaks.
        version: u8,
        /// The client's connection id (the server addresses the client with it).
        cid: u64,
        /// The cookie from `RETRY`, if any.
        token: Option<[u8; TOKEN_LEN]>,
    },
    /// Stateless challenge: echo this cookie in a new `INITIAL`.
    Retry {
        /// The client's connection id, echoed.
        cid: u64,
        /// The cookie.
        token: [u8; TOKEN_LEN],
    },
    /// The server created the connection.
    Accept {
        /// The client's connection id, echoed.
        client_cid: u64,
        /// The server's connection id: the client's `DATA` goes to it.
        server_cid: u64,
    },
    /// Frames of an established connection.
    Data {
        /// The receiver's connection id.
        dst: u64,
        /// The sender's clock in milliseconds, modulo 2^16 (echoed in ACK for RTT samples).
        ts: u16,
        /// The frames, validated.
        frames: &'a [u8],
    },
}

/// A frame inside `DATA`. A `FRAGS` run is yielded one fragment at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// Acknowledgement.
    Ack(AckFrame<'a>),
    /// One fragment of a message (or the close marker).
    Frag {
        /// Sequence number modulo 2^32.
        seq: u32,
        /// [`FLAG_END`] and/or [`FLAG_CLOSE`].
        flags: u8,
        /// Payload.
        data: &'a [u8],
    },
    /// Ping: the receiver acknowledges at once.
    Ping,
    /// The sender aborted the connection.
    Abort {
        /// Error code (see [`AbortCode`](super::AbortCode)).
        code: u8,
    },
}

/// An `ACK` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckFrame<'a> {
    /// Every sequence number below this (mod 2^32) was received.
    pub cumulative: u32,
    /// The `ts` of the most recent `DATA` the acknowledger received.
    pub echo_ts: u16,
    /// Milliseconds between receiving that `DATA` and sending this ACK (255: unknown/too long).
    pub delay_ms: u8,
    /// Fragments the receiver will still accept beyond `cumulative`.
    pub window: u16,
    ranges: &'a [u8],
}

impl<'a> AckFrame<'a> {
    /// The selective-acknowledgement ranges: `(start, end)` half-open, mod 2^32.
    pub fn ranges(&self) -> impl Iterator<Item = (u32, u32)> + 'a {
        self.ranges
            .chunks_exact(ACK_RANGE_LEN)
            .map(|c| (be32(&c[0..4]), be32(&c[4..8])))
    }

    /// How many ranges the frame carries.
    pub fn range_count(&self) -> usize {
        self.ranges.len() / ACK_RANGE_LEN
    }
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Reads the destination connection id of a `DATA` datagram without validating its frames
/// (the endpoint's demultiplexer), or `None` if it is not a `DATA` datagram long enough to
/// have one.
pub fn data_destination(buf: &[u8]) -> Option<u64> {
    if buf.len() >= DATA_HEADER_LEN && buf[0] == TYPE_DATA {
        Some(be64(&buf[1..9]))
    } else {
        None
    }
}

/// Parses and fully validates a datagram.
pub fn parse(buf: &[u8]) -> Result<Packet<'_>, ParseError> {
    let Some(&ty) = buf.first() else {
        return Err(ParseError::Truncated);
    };
    match ty {
        TYPE_INITIAL => {
            if buf.len() < MIN_INITIAL_LEN {
                return Err(ParseError::Truncated);
            }
            let version = buf[1];
            let cid = be64(&buf[2..10]);
            let token = match buf[10] {
                0 => None,
                n if n as usize == TOKEN_LEN => {
                    let mut t = [0u8; TOKEN_LEN];
                    t.copy_from_slice(&buf[11..11 + TOKEN_LEN]);
                    Some(t)
                }
                _ => return Err(ParseError::Invalid("token length")),
            };
            if cid == 0 {
                return Err(ParseError::Invalid("zero connection id"));
            }
            Ok(Packet::Initial {
                version,
                cid,
                token,
            })
        }
        TYPE_RETRY => {
            if buf.len() != RETRY_LEN {
                return Err(ParseError::Truncated);
            }
            let mut token = [0u8; TOKEN_LEN];
            token.copy_from_slice(&buf[9..9 + TOKEN_LEN]);
            Ok(Packet::Retry {
                cid: be64(&buf[1..9]),
                token,
            })
        }
        TYPE_ACCEPT => {
            if buf.len() != ACCEPT_LEN {
                return Err(ParseError::Truncated);
            }
            let server_cid = be64(&buf[9..17]);
            if server_cid == 0 {
                return Err(ParseError::Invalid("zero connection id"));
            }
            Ok(Packet::Accept {
                client_cid: be64(&buf[1..9]),
                server_cid,
            })
        }
        TYPE_DATA => {
            if buf.len() < DATA_HEADER_LEN {
                return Err(ParseError::Truncated);
            }
            let frames = &buf[DATA_HEADER_LEN..];
            let mut it = Frames::new(frames);
            for f in &mut it {
                f?;
            }
            Ok(Packet::Data {
                dst: be64(&buf[1..9]),
                ts: be16(&buf[9..11]),
                frames,
            })
        }
        other => Err(ParseError::UnknownType(other)),
    }
}

/// Iterates the frames of a validated `DATA` packet (from [`Packet::Data`]); malformed frames
/// cannot occur there, so this yields frames only.
pub fn frames(validated: &[u8]) -> impl Iterator<Item = Frame<'_>> {
    Frames::new(validated).map_while(Result::ok)
}

/// Frame iterator over raw bytes, yielding an error (then stopping) at the first bad frame.
struct Frames<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Remaining fragments of the current `FRAGS` run and the next sequence number.
    run_left: u8,
    run_seq: u32,
    failed: bool,
}

impl<'a> Frames<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Frames {
            buf,
            pos: 0,
            run_left: 0,
            run_seq: 0,
            failed: false,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        let end = self.pos.checked_add(n).ok_or(ParseError::Truncated)?;
        if end > self.buf.len() {
            return Err(ParseError::Truncated);
        }
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn varint(&mut self) -> Result<u32, ParseError> {
        let mut v: u32 = 0;
        for i in 0..MAX_VARINT_LEN {
            let b = self.take(1)?[0];
            v |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ParseError::Invalid("varint too long"))
    }

    fn next_frame(&mut self) -> Result<Frame<'a>, ParseError> {
        if self.run_left > 0 {
            self.run_left -= 1;
            let h = self.varint()?;
            let flags = (h & 0x3) as u8;
            let len = (h >> 2) as usize;
            if len > MAX_FRAGMENT {
                return Err(ParseError::Invalid("fragment length"));
            }
            if flags & FLAG_CLOSE != 0 && len != 0 {
                return Err(ParseError::Invalid("close fragment with data"));
            }
            let data = self.take(len)?;
            let seq = self.run_seq;
            self.run_seq = self.run_seq.wrapping_add(1);
            return Ok(Frame::Frag { seq, flags, data });
        }
        let ty = self.take(1)?[0];
        match ty {
            FRAME_ACK => {
                let b = self.take(ACK_BASE_LEN - 1)?;
                let n = b[9] as usize;
                if n > MAX_ACK_RANGES {
                    return Err(ParseError::Invalid("too many ack ranges"));
                }
                let ranges = self.take(n * ACK_RANGE_LEN)?;
                Ok(Frame::Ack(AckFrame {
                    cumulative: be32(&b[0..4]),
                    echo_ts: be16(&b[4..6]),
                    delay_ms: b[6],
                    window: be16(&b[7..9]),
                    ranges,
                }))
            }
            FRAME_FRAGS => {
                let b = self.take(FRAGS_HEADER_LEN - 1)?;
                let count = b[4];
                if count == 0 {
                    return Err(ParseError::Invalid("empty fragment run"));
                }
                self.run_seq = be32(&b[0..4]);
                self.run_left = count;
                self.next_frame()
            }
            FRAME_PING => Ok(Frame::Ping),
            FRAME_ABORT => Ok(Frame::Abort {
                code: self.take(1)?[0],
            }),
            other => Err(ParseError::UnknownType(other)),
        }
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || (self.run_left == 0 && self.pos >= self.buf.len()) {
            return None;
        }
        let r = self.next_frame();
        if r.is_err() {
            self.failed = true;
        }
        Some(r)
    }
}

/// Appends an `INITIAL`, padded to [`MIN_INITIAL_LEN`].
pub fn write_initial(buf: &mut Vec<u8>, cid: u64, token: Option<&[u8; TOKEN_LEN]>) {
    let start = buf.len();
    buf.push(TYPE_INITIAL);
    buf.push(VERSION);
    buf.extend_from_slice(&cid.to_be_bytes());
    match token {
        Some(t) => {
            buf.push(TOKEN_LEN as u8);
            buf.extend_from_slice(t);
        }
        None => buf.push(0),
    }
    buf.resize(start + MIN_INITIAL_LEN.max(buf.len() - start), 0);
}

/// Appends a `RETRY`.
pub fn write_retry(buf: &mut Vec<u8>, cid: u64, token: &[u8; TOKEN_LEN]) {
    buf.push(TYPE_RETRY);
    buf.extend_from_slice(&cid.to_be_bytes());
    buf.extend_from_slice(token);
}

/// Appends an `ACCEPT`.
pub fn write_accept(buf: &mut Vec<u8>, client_cid: u64, server_cid: u64) {
    buf.push(TYPE_ACCEPT);
    buf.extend_from_slice(&client_cid.to_be_bytes());
    buf.extend_from_slice(&server_cid.to_be_bytes());
}

/// Appends a `DATA` header.
pub fn write_data_header(buf: &mut Vec<u8>, dst: u64, ts: u16) {
    buf.push(TYPE_DATA);
    buf.extend_from_slice(&dst.to_be_bytes());
    buf.extend_from_slice(&ts.to_be_bytes());
}

/// Appends an `ACK` frame (at most [`MAX_ACK_RANGES`] of `ranges` are written).
pub fn write_ack(
    buf: &mut Vec<u8>,
    cumulative: u32,
    echo_ts: u16,
    delay_ms: u8,
    window: u16,
    ranges: &[(u32, u32)],
) {
    let ranges = &ranges[..ranges.len().min(MAX_ACK_RANGES)];
    buf.push(FRAME_ACK);
    buf.extend_from_slice(&cumulative.to_be_bytes());
    buf.extend_from_slice(&echo_ts.to_be_bytes());
    buf.push(delay_ms);
    buf.extend_from_slice(&window.to_be_bytes());
    buf.push(ranges.len() as u8);
    for &(s, e) in ranges {
        buf.extend_from_slice(&s.to_be_bytes());
        buf.extend_from_slice(&e.to_be_bytes());
    }
}

/// Appends a `PING` frame.
pub fn write_ping(buf: &mut Vec<u8>) {
    buf.push(FRAME_PING);
}

/// Appends an `ABORT` frame.
pub fn write_abort(buf: &mut Vec<u8>, code: u8) {
    buf.push(FRAME_ABORT);
    buf.push(code);
}

/// Encoded size of a fragment's header (LEB128 of `len << 2 | flags`).
pub fn frag_header_len(len: usize) -> usize {
    match (len as u32) << 2 {
        0..=0x7f => 1,
        0x80..=0x3fff => 2,
        _ => 3,
    }
}

/// Writes fragments into a `DATA` packet, packing consecutive sequence numbers into one
/// `FRAGS` run (a run costs [`FRAGS_HEADER_LEN`] bytes, then each fragment its header + data).
#[derive(Debug, Default)]
pub struct RunWriter {
    /// Offset of the open run's count byte and the sequence number it expects next.
    open: Option<(usize, u32)>,
}

impl RunWriter {
    /// Bytes that appending fragment `seq` with `len` bytes would add.
    pub fn cost(&self, buf: &[u8], seq: u32, len: usize) -> usize {
        let run = match self.open {
            Some((at, next)) if next == seq && buf[at] < u8::MAX => 0,
            _ => FRAGS_HEADER_LEN,
        };
        run + frag_header_len(len) + len
    }

    /// Appends one fragment (`data.len() <= MAX_FRAGMENT`).
    pub fn push(&mut self, buf: &mut Vec<u8>, seq: u32, flags: u8, data: &[u8]) {
        debug_assert!(data.len() <= MAX_FRAGMENT);
        match self.open {
            Some((at, next)) if next == seq && buf[at] < u8::MAX => {
                buf[at] += 1;
                self.open = Some((at, seq.wrapping_add(1)));
            }
            _ => {
                buf.push(FRAME_FRAGS);
                buf.extend_from_slice(&seq.to_be_bytes());
                self.open = Some((buf.len(), seq.wrapping_add(1)));
                buf.push(1);
            }
        }
        let mut h = ((data.len() as u32) << 2) | u32::from(flags & 0x3);
        loop {
            let b = (h & 0x7f) as u8;
            h >>= 7;
            if h == 0 {
                buf.push(b);
                break;
            }
            buf.push(b | 0x80);
        }
        buf.extend_from_slice(data);
    }

    /// Ends the open run (the next fragment starts a new one).
    pub fn close_run(&mut self) {
        self.open = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_packets_round_trip() {
        let mut b = Vec::new();
        write_initial(&mut b, 42, None);
        assert_eq!(b.len(), MIN_INITIAL_LEN);
        assert_eq!(
            parse(&b).unwrap(),
            Packet::Initial {
                version: VERSION,
                cid: 42,
                token: None
            }
        );
        b.clear();
        write_initial(&mut b, 42, Some(&[7; TOKEN_LEN]));
        assert_eq!(
            parse(&b).unwrap(),
            Packet::Initial {
                version: VERSION,
                cid: 42,
                token: Some([7; TOKEN_LEN])
            }
        );
        assert_eq!(parse(&b[..MIN_INITIAL_LEN - 1]), Err(ParseError::Truncated));
        b.clear();
        write_retry(&mut b, 9, &[1; TOKEN_LEN]);
        assert_eq!(b.len(), RETRY_LEN);
        assert!(matches!(parse(&b), Ok(Packet::Retry { cid: 9, .. })));
        b.clear();
        write_accept(&mut b, 9, 10);
        assert_eq!(
            parse(&b).unwrap(),
            Packet::Accept {
                client_cid: 9,
                server_cid: 10
            }
        );
        assert!(parse(&b[..ACCEPT_LEN - 1]).is_err());
        assert!(parse(&[]).is_err());
        assert_eq!(parse(&[0x77]), Err(ParseError::UnknownType(0x77)));
    }

    #[test]
    fn data_frames_round_trip() {
        let mut b = Vec::new();
        write_data_header(&mut b, 5, 300);
        write_ack(&mut b, 100, 7, 3, 64, &[(102, 104), (110, 111)]);
        let mut bounds = vec![DATA_HEADER_LEN, b.len()];
        let mut w = RunWriter::default();
        let big = vec![0xab; 300];
        assert_eq!(w.cost(&b, 100, 8), FRAGS_HEADER_LEN + 1 + 8);
        w.push(&mut b, 100, 0, b"12345678");
        assert_eq!(w.cost(&b, 101, 300), 2 + 300);
        w.push(&mut b, 101, FLAG_END, &big);
        bounds.push(b.len());
        w.push(&mut b, 200, FLAG_CLOSE, b"");
        bounds.push(b.len());
        write_ping(&mut b);
        bounds.push(b.len());
        write_abort(&mut b, 3);
        let Packet::Data { dst, ts, frames: f } = parse(&b).unwrap() else {
            panic!("not data")
        };
        assert_eq!((dst, ts), (5, 300));
        assert_eq!(data_destination(&b), Some(5));
        let all: Vec<Frame> = frames(f).collect();
        assert_eq!(all.len(), 6);
        let Frame::Ack(a) = all[0] else { panic!() };
        assert_eq!(
            (a.cumulative, a.echo_ts, a.delay_ms, a.window),
            (100, 7, 3, 64)
        );
        assert_eq!(a.ranges().collect::<Vec<_>>(), vec![(102, 104), (110, 111)]);
        assert_eq!(
            all[1],
            Frame::Frag {
                seq: 100,
                flags: 0,
                data: b"12345678"
            }
        );
        assert_eq!(
            all[2],
            Frame::Frag {
                seq: 101,
                flags: FLAG_END,
                data: &big
            }
        );
        assert_eq!(
            all[3],
            Frame::Frag {
                seq: 200,
                flags: FLAG_CLOSE,
                data: b""
            }
        );
        assert_eq!(all[4], Frame::Ping);
        assert_eq!(all[5], Frame::Abort { code: 3 });
        // A cut inside a frame is rejected (never a partial parse); at a frame boundary the
        // shorter datagram is simply valid.
        for cut in DATA_HEADER_LEN..b.len() {
            assert_eq!(
                parse(&b[..cut]).is_ok(),
                bounds.contains(&cut),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn absurd_fields_are_rejected() {
        let mut b = Vec::new();
        write_data_header(&mut b, 5, 0);
        let base = b.len();
        // 33 ranges.
        b.extend_from_slice(&[FRAME_ACK, 0, 0, 0, 0, 0, 0, 0, 0, 0, 33]);
        assert!(parse(&b).is_err());
        b.truncate(base);
        // Run claiming 200 fragments with none present.
        b.extend_from_slice(&[FRAME_FRAGS, 0, 0, 0, 1, 200]);
        assert!(parse(&b).is_err());
        b.truncate(base);
        // Empty run.
        b.extend_from_slice(&[FRAME_FRAGS, 0, 0, 0, 1, 0]);
        assert!(parse(&b).is_err());
        b.truncate(base);
        // Fragment length far beyond the limit (varint of 0x3fffff).
        b.extend_from_slice(&[FRAME_FRAGS, 0, 0, 0, 1, 1, 0xff, 0xff, 0x7f]);
        assert!(parse(&b).is_err());
        b.truncate(base);
        // Over-long varint.
        b.extend_from_slice(&[FRAME_FRAGS, 0, 0, 0, 1, 1, 0x80, 0x80, 0x80, 0x01]);
        assert!(parse(&b).is_err());
        b.truncate(base);
        // Close fragment carrying data.
        b.extend_from_slice(&[FRAME_FRAGS, 0, 0, 0, 1, 1, (1 << 2) | FLAG_CLOSE, b'x']);
        assert!(parse(&b).is_err());
        // Bad token length, zero cid.
        let mut i = Vec::new();
        write_initial(&mut i, 1, None);
        i[10] = 3;
        assert!(parse(&i).is_err());
        i.clear();
        write_initial(&mut i, 0, None);
        assert!(parse(&i).is_err());
    }
}
