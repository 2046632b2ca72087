//! The file-transfer wire format: `header` framing (a 4-byte header length, a JSON header that
//! always carries `len`, then `len` body bytes) with an `op` field saying what the frame is.
//! docs/PROTOCOL.md describes the conversation; this module reads and writes single frames.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::codec::ByteOrder;

/// Largest JSON header accepted.
pub const MAX_HEADER: usize = 64 * 1024;
/// Largest body of one `data` frame.
pub const CHUNK: usize = 1024 * 1024;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Client: upload `name` of `size` bytes.
    Put,
    /// Client: continue an upload from `offset` (0 starts over).
    Resume,
    /// Client: download `name`.
    Get,
    /// Client: list the served files.
    List,
    /// A piece of a file (or of a listing).
    Data,
    /// The last frame of a body: `blake3` of the whole file (or `count` of a listing).
    End,
    /// Success.
    Ok,
    /// Failure: `message` says why; the connection closes after it.
    Error,
}

/// A frame header. Unknown fields are ignored; absent optional fields are left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Head {
    /// What the frame is.
    pub op: Op,
    /// File name, relative to the served directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// File size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Where the body starts within the file (resume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// BLAKE3 of the whole file, lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// BLAKE3 of the first `offset` bytes the server already holds (resume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_blake3: Option<String>,
    /// Modification time, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<f64>,
    /// Entries in a listing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Error text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Body length.
    #[serde(default)]
    pub len: u64,
}

impl Head {
    /// A header with only `op` set.
    pub fn new(op: Op) -> Head {
        Head {
            op,
            name: None,
            size: None,
            offset: None,
            blake3: None,
            prefix_blake3: None,
            mtime: None,
            count: None,
            message: None,
            len: 0,
        }
    }

    /// An `error` header.
    pub fn error(message: impl Into<String>) -> Head {
        Head {
            message: Some(message.into()),
            ..Head::new(Op::Error)
        }
    }
}

/// Why a frame could not be read.
#[derive(Debug, Error)]
pub enum WireError {
    /// The connection failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The peer closed in the middle of a frame.
    #[error("the connection closed in the middle of a frame")]
    Truncated,
    /// The header length is over [`MAX_HEADER`] in either byte order.
    #[error(
        "header length {0} is over the limit of {MAX_HEADER} bytes: not a file-transfer header"
    )]
    HeaderTooLarge(u64),
    /// The header is not a JSON object of the expected shape.
    #[error("malformed header: {0}")]
    Malformed(String),
    /// A body longer than the frame type allows.
    #[error("a {op:?} frame of {len} bytes is over the limit of {max}")]
    BodyTooLarge {
        /// The frame type.
        op: Op,
        /// Its announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// Nothing arrived for the frame timeout.
    #[error("no data for {0:?}")]
    Timeout(Duration),
}

/// The first frame of a connection, before the protocol is known.
#[derive(Debug)]
pub enum FirstFrame {
    /// A sockit frame in this byte order.
    Sockit(ByteOrder, Head),
    /// The tutorials' upload header (little-endian length, `file_name`/`file_size` keys).
    Tutorial(Map<String, Value>),
}

/// Reads frames from one connection.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    order: ByteOrder,
    timeout: Option<Duration>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Reads frames in `order`, each read step bounded by `timeout`.
    pub fn new(inner: R, order: ByteOrder, timeout: Option<Duration>) -> Self {
        FrameReader {
            inner,
            order,
            timeout,
        }
    }

    /// The byte order of header lengths.
    pub fn order(&self) -> ByteOrder {
        self.order
    }

    /// The underlying reader.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Sets the timeout of each read step.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    async fn exact(&mut self, buf: &mut [u8]) -> Result<(), WireError> {
        let read = self.inner.read_exact(buf);
        let result = match self.timeout {
            Some(t) => tokio::time::timeout(t, read)
                .await
                .map_err(|_| WireError::Timeout(t))?,
            None => read.await,
        };
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(WireError::Truncated),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads the 4-byte length; `None` on a clean close before it.
    async fn length(&mut self) -> Result<Option<[u8; 4]>, WireError> {
        let mut len = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            let read = self.inner.read(&mut len[got..]);
            let n = match self.timeout {
                Some(t) if got > 0 => tokio::time::timeout(t, read)
                    .await
                    .map_err(|_| WireError::Timeout(t))??,
                _ => read.await?,
            };
            if n == 0 {
                return if got == 0 {
                    Ok(None)
                } else {
                    Err(WireError::Truncated)
                };
            }
            got += n;
        }
        Ok(Some(len))
    }

    async fn json(&mut self, len: u64) -> Result<Map<String, Value>, WireError> {
        let mut raw = vec![0u8; len as usize];
        self.exact(&mut raw).await?;
        match serde_json::from_slice::<Value>(&raw) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(WireError::Malformed("not a JSON object".into())),
            Err(e) => Err(WireError::Malformed(e.to_string())),
        }
    }

    /// Reads the first frame of a server connection and works out its dialect: a header
    /// length that fits the limit big-endian is sockit's `header` framing; one that fits only
    /// little-endian is `headerle`, or the tutorials' upload when the header has their keys.
    /// `None` on a clean close.
    pub async fn first(&mut self) -> Result<Option<FirstFrame>, WireError> {
        let Some(raw) = self.length().await? else {
            return Ok(None);
        };
        let be = u32::from_be_bytes(raw) as u64;
        let le = u32::from_le_bytes(raw) as u64;
        let (order, len) = if be <= MAX_HEADER as u64 {
            (ByteOrder::Big, be)
        } else if le <= MAX_HEADER as u64 {
            (ByteOrder::Little, le)
        } else {
            return Err(WireError::HeaderTooLarge(be));
        };
        self.order = order;
        let map = self.json(len).await?;
        if order == ByteOrder::Little && !map.contains_key("op") {
            return Ok(Some(FirstFrame::Tutorial(map)));
        }
        Ok(Some(FirstFrame::Sockit(order, to_head(map)?)))
    }

    /// Reads the next header as a plain JSON object (the tutorials' scheme has no `op`);
    /// `None` on a clean close between frames.
    pub async fn head_map(&mut self) -> Result<Option<Map<String, Value>>, WireError> {
        let Some(raw) = self.length().await? else {
            return Ok(None);
        };
        let len = match self.order {
            ByteOrder::Big => u32::from_be_bytes(raw),
            ByteOrder::Little => u32::from_le_bytes(raw),
        } as u64;
        if len > MAX_HEADER as u64 {
            return Err(WireError::HeaderTooLarge(len));
        }
        self.json(len).await.map(Some)
    }

    /// Reads the next header; `None` on a clean close between frames.
    pub async fn head(&mut self) -> Result<Option<Head>, WireError> {
        match self.head_map().await? {
            Some(map) => to_head(map).map(Some),
            None => Ok(None),
        }
    }

    /// Reads a body of `len` bytes into `buf` (replacing its contents).
    pub async fn body(&mut self, len: usize, buf: &mut Vec<u8>) -> Result<(), WireError> {
        buf.clear();
        buf.resize(len, 0);
        self.exact(buf).await
    }

    /// Reads and drops `len` bytes.
    pub async fn skip(&mut self, len: u64) -> Result<(), WireError> {
        let mut left = len;
        let mut sink = [0u8; 8192];
        while left > 0 {
            let n = left.min(sink.len() as u64) as usize;
            self.exact(&mut sink[..n]).await?;
            left -= n as u64;
        }
        Ok(())
    }

    /// Reads exactly `buf.len()` raw bytes (the tutorials' unframed body).
    pub async fn raw(&mut self, buf: &mut [u8]) -> Result<(), WireError> {
        self.exact(buf).await
    }
}

fn to_head(map: Map<String, Value>) -> Result<Head, WireError> {
    serde_json::from_value(Value::Object(map)).map_err(|e| WireError::Malformed(e.to_string()))
}

/// Writes one frame: header (with `len` set to the body's length) and body.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    order: ByteOrder,
    head: &Head,
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = head.clone();
    head.len = body.len() as u64;
    let json = serde_json::to_vec(&head).map_err(std::io::Error::other)?;
    let len = json.len() as u32;
    let prefix = match order {
        ByteOrder::Big => len.to_be_bytes(),
        ByteOrder::Little => len.to_le_bytes(),
    };
    let mut first = Vec::with_capacity(4 + json.len() + body.len().min(16 * 1024));
    first.extend_from_slice(&prefix);
    first.extend_from_slice(&json);
    // Small bodies go in the same write as their header; large ones follow it directly.
    if body.len() <= 16 * 1024 {
        first.extend_from_slice(body);
        w.write_all(&first).await?;
    } else {
        w.write_all(&first).await?;
        w.write_all(body).await?;
    }
    // A layer such as TLS may still hold the frame's last records when the socket was full:
    // a frame must leave before its writer goes on to wait for an answer. (A no-op on TCP.)
    w.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_frame_leaves_a_buffering_writer_before_write_frame_returns() {
        // TLS holds records the socket could not take; a BufWriter stands in for it. The peer
        // must get the whole frame with nothing written after it.
        let (a, b) = tokio::io::duplex(1 << 20);
        let mut w = tokio::io::BufWriter::new(a);
        write_frame(&mut w, ByteOrder::Big, &Head::new(Op::Ok), b"done")
            .await
            .unwrap();
        let mut r = FrameReader::new(b, ByteOrder::Big, Some(Duration::from_secs(5)));
        let h = tokio::time::timeout(Duration::from_secs(5), r.head())
            .await
            .expect("the frame arrived without a later write")
            .unwrap()
            .unwrap();
        assert_eq!((h.op, h.len), (Op::Ok, 4));
        drop(w);
    }

    #[tokio::test]
    async fn a_frame_round_trips_in_both_orders() {
        for order in [ByteOrder::Big, ByteOrder::Little] {
            let mut buf = Vec::new();
            let mut head = Head::new(Op::Put);
            head.name = Some("a.txt".into());
            head.size = Some(3);
            write_frame(&mut buf, order, &head, b"").await.unwrap();
            write_frame(&mut buf, order, &Head::new(Op::Data), b"abc")
                .await
                .unwrap();
            let mut r = FrameReader::new(&buf[..], ByteOrder::Big, None);
            match r.first().await.unwrap().unwrap() {
                FirstFrame::Sockit(o, h) => {
                    assert_eq!(o, order);
                    assert_eq!(h, head);
                }
                other => panic!("{other:?}"),
            }
            let h = r.head().await.unwrap().unwrap();
            assert_eq!((h.op, h.len), (Op::Data, 3));
            let mut body = vec![];
            r.body(3, &mut body).await.unwrap();
            assert_eq!(body, b"abc");
            assert!(r.head().await.unwrap().is_none());
        }
    }

    #[tokio::test]
    async fn the_tutorial_header_is_recognised() {
        let json = br#"{"file_name": "a.txt", "file_size": 3}"#;
        let mut buf = (json.len() as u32).to_le_bytes().to_vec();
        buf.extend_from_slice(json);
        buf.extend_from_slice(b"abc");
        let mut r = FrameReader::new(&buf[..], ByteOrder::Big, None);
        match r.first().await.unwrap().unwrap() {
            FirstFrame::Tutorial(map) => assert_eq!(map["file_size"], 3),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn garbage_is_an_error_not_a_panic() {
        let cases: [&[u8]; 5] = [
            b"\xff\xff\xff\xff",
            b"\x00\x00\x00\x05[1,2]",
            b"\x00\x00\x00\x02{}",
            b"\x00\x00\x00\x0c{\"op\":\"zap\"}",
            b"\x00\x00\x00\x10{\"op\":",
        ];
        for case in cases {
            let mut r = FrameReader::new(case, ByteOrder::Big, None);
            assert!(r.first().await.is_err(), "{case:?}");
        }
    }
}
