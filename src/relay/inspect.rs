//! Looking at what passes: the `--hex` dump, the `--framing` boundary marks and the
//! `--trace` JSON lines. Output goes through [`LogSink`] queues, so a slow terminal or disk
//! can never stall the relay (lines are dropped and counted instead).

use std::fmt::Write as _;
use std::sync::Arc;

use base64::Engine as _;
use bytes::BytesMut;
use tokio_util::codec::Decoder;

use crate::codec::{FrameCodec, Framing, Limits};
use crate::logging::LogSink;
use crate::relay::fault::Dir;

/// Where inspection output goes; shared by every connection.
#[derive(Clone, Debug, Default)]
pub struct Inspect {
    /// The `--hex` dump (stderr).
    pub hex: Option<LogSink>,
    /// Framing whose message boundaries the dump marks.
    pub framing: Option<Framing>,
    /// The `--trace` file.
    pub trace: Option<LogSink>,
}

impl Inspect {
    /// Whether any byte needs to be looked at (else the splice fast path may be used).
    pub fn is_on(&self) -> bool {
        self.hex.is_some() || self.trace.is_some()
    }
}

/// One direction of one connection (or UDP flow) being inspected.
#[derive(Debug)]
pub struct Tap {
    inspect: Arc<Inspect>,
    conn: u64,
    dir: Dir,
    offset: u64,
    frames: Option<Frames>,
}

#[derive(Debug)]
struct Frames {
    framing: Framing,
    codec: FrameCodec,
    buf: BytesMut,
    count: u64,
    /// Stream offset of `buf[0]`.
    start: u64,
    failed: bool,
}

impl Tap {
    /// A tap for connection `conn`, direction `dir`.
    pub fn new(inspect: Arc<Inspect>, conn: u64, dir: Dir) -> Tap {
        let frames = match (inspect.hex.is_some(), inspect.framing) {
            (true, Some(framing)) => Some(Frames {
                framing,
                codec: FrameCodec::new(framing, Limits::default()),
                buf: BytesMut::new(),
                count: 0,
                start: 0,
                failed: false,
            }),
            _ => None,
        };
        Tap {
            inspect,
            conn,
            dir,
            offset: 0,
            frames,
        }
    }

    /// Records one chunk (TCP) or datagram (UDP).
    pub fn chunk(&mut self, data: &[u8]) {
        let now = chrono::Utc::now();
        if let Some(trace) = &self.inspect.trace {
            let line = serde_json::json!({
                "time": now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "conn": self.conn,
                "dir": self.dir.name(),
                "offset": self.offset,
                "len": data.len(),
                "data": base64::engine::general_purpose::STANDARD.encode(data),
            });
            trace.log(format!("{line}\n").as_bytes());
        }
        if let Some(hex) = &self.inspect.hex {
            let mut out = format!(
                "{} {} conn {} {} {} bytes at offset {}\n",
                now.format("%H:%M:%S%.6f"),
                self.dir.arrow(),
                self.conn,
                self.dir.name(),
                data.len(),
                self.offset
            );
            dump(&mut out, data, self.offset);
            if let Some(frames) = &mut self.frames {
                frames.mark(&mut out, data);
            }
            hex.log(out.as_bytes());
        }
        self.offset += data.len() as u64;
    }
}

/// Appends `data` as 16-byte rows: offset, hex, printable text.
fn dump(out: &mut String, data: &[u8], base: u64) {
    for (i, row) in data.chunks(16).enumerate() {
        let _ = write!(out, "  {:08x} ", base + (i * 16) as u64);
        for j in 0..16 {
            match row.get(j) {
                Some(b) => {
                    let _ = write!(out, " {b:02x}");
                }
                None => out.push_str("   "),
            }
            if j == 7 {
                out.push(' ');
            }
        }
        out.push_str("  |");
        out.extend(row.iter().map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        }));
        out.push_str("|\n");
    }
}

impl Frames {
    fn mark(&mut self, out: &mut String, data: &[u8]) {
        if self.failed {
            return;
        }
        self.buf.extend_from_slice(data);
        loop {
            let before = self.buf.len();
            match self.codec.decode(&mut self.buf) {
                Ok(Some(message)) => {
                    let used = (before - self.buf.len()) as u64;
                    self.count += 1;
                    let _ = writeln!(
                        out,
                        "  -- {} message {} ends at offset {} ({} bytes, body {})",
                        self.framing,
                        self.count,
                        self.start + used,
                        used,
                        message.body().len()
                    );
                    self.start += used;
                }
                Ok(None) => {
                    // Bytes the decoder skipped (none for these framings) still move the start.
                    let used = (before - self.buf.len()) as u64;
                    self.start += used;
                    if !self.buf.is_empty() {
                        let _ = writeln!(
                            out,
                            "  .. {} bytes wait for the rest of message {}",
                            self.buf.len(),
                            self.count + 1
                        );
                    }
                    return;
                }
                Err(e) => {
                    let _ = writeln!(
                        out,
                        "  !! {} decoder stops at offset {}: {e}",
                        self.framing, self.start
                    );
                    self.failed = true;
                    self.buf = BytesMut::new();
                    return;
                }
            }
        }
    }
}
