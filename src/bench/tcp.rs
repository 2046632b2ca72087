//! The stream ping-pong client (TCP, unix, TLS): send one framed message, check the reply as
//! it streams in, and repeat until the run ends, the connection fails, or a reply does not
//! come in time.

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::reply::{FILL, ReplyChecker, ReplyError, Verdict};
use super::{Shared, Tally};
use crate::codec::Framing;
use crate::codec::length::put_uint;
use crate::transport::stream::BoxStream;

/// Read buffer size; one per worker thread, not per client.
const READ_BUF: usize = 64 * 1024;
/// Messages up to this size (framing included) are encoded once and sent with one write,
/// before the reply is read; larger ones are streamed from a fill buffer while the reply is
/// read, so neither side can block the other.
const WHOLE: usize = 64 * 1024;

thread_local! {
    /// Clients on one worker thread take turns with this buffer: none holds it across an
    /// `await`, so it is never borrowed twice.
    static READ: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_BUF].into_boxed_slice());
}

/// The message every TCP client sends: `size` bytes of `x`, framed.
pub(super) struct Request {
    /// The whole frame, if it is small.
    whole: Option<Bytes>,
    /// Length prefix or header.
    head: Bytes,
    size: usize,
    /// `\n` for line framing.
    tail: &'static [u8],
    /// A run of the fill byte to send large bodies from.
    fill: Bytes,
}

impl Request {
    /// The message for `framing` and `size` (already checked with `check_size`).
    pub(super) fn new(framing: Framing, size: usize) -> Request {
        let mut head = BytesMut::new();
        let mut tail: &'static [u8] = b"";
        match framing {
            Framing::Raw => {}
            Framing::Line => tail = b"\n",
            Framing::Length { prefix, order } => {
                put_uint(&mut head, size as u64, prefix.bytes(), order);
            }
            Framing::Header { order } => {
                let json = format!("{{\"len\":{size}}}");
                put_uint(&mut head, json.len() as u64, 4, order);
                head.extend_from_slice(json.as_bytes());
            }
        }
        let head = head.freeze();
        let total = head.len() + size + tail.len();
        let whole = (total <= WHOLE).then(|| {
            let mut frame = BytesMut::with_capacity(total);
            frame.extend_from_slice(&head);
            frame.resize(head.len() + size, FILL);
            frame.extend_from_slice(tail);
            frame.freeze()
        });
        Request {
            whole,
            head,
            size,
            tail,
            fill: Bytes::from(vec![FILL; size.min(WHOLE)]),
        }
    }

    async fn write<W: AsyncWrite + Unpin>(&self, out: &mut W) -> io::Result<()> {
        if let Some(whole) = &self.whole {
            out.write_all(whole).await?;
        } else {
            out.write_all(&self.head).await?;
            let mut left = self.size;
            while left > 0 {
                let n = left.min(self.fill.len());
                out.write_all(&self.fill[..n]).await?;
                left -= n;
            }
            out.write_all(self.tail).await?;
        }
        // The request must leave before its reply is awaited: TLS may still hold its last
        // records when the socket was full. (A no-op on TCP.)
        out.flush().await
    }
}

/// Why a TCP client stopped early.
#[derive(Debug)]
enum Stop {
    Closed,
    Timeout(Duration),
    Io(io::Error),
    Reply(ReplyError),
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::Closed => f.write_str("server closed the connection"),
            Stop::Timeout(t) => write!(f, "no reply within {:.1}s", t.as_secs_f64()),
            Stop::Io(e) => write!(f, "connection failed: {e}"),
            Stop::Reply(e) => {
                write!(f, "{e}")?;
                if let Some(source) = std::error::Error::source(e) {
                    write!(f, ": {source}")?;
                }
                Ok(())
            }
        }
    }
}

/// Reads until one reply is complete. Replies beyond it in the same read were not asked for:
/// they are returned as a count of extra (wrong) replies.
///
/// Reads go through `poll_read`, not `try_read`: tokio's `poll_read` knows that a short read
/// drained the socket and skips the `recv` that would only say `EAGAIN` next time.
async fn read_reply<R: AsyncRead + Unpin>(
    input: &mut R,
    checker: &mut ReplyChecker,
) -> Result<(Verdict, u64), Stop> {
    let mut extra = 0;
    std::future::poll_fn(|cx| {
        READ.with_borrow_mut(|buf| {
            loop {
                let mut read = ReadBuf::new(buf);
                match Pin::new(&mut *input).poll_read(cx, &mut read) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Stop::Io(e))),
                    Poll::Ready(Ok(())) => {}
                }
                let mut data = read.filled();
                if data.is_empty() {
                    return Poll::Ready(Err(Stop::Closed));
                }
                let mut first = None;
                while !data.is_empty() {
                    let (used, verdict) = match checker.feed(data) {
                        Ok(step) => step,
                        Err(e) => return Poll::Ready(Err(Stop::Reply(e))),
                    };
                    data = &data[used..];
                    if let Some(v) = verdict {
                        if first.is_none() {
                            first = Some(v);
                        } else {
                            extra += 1;
                        }
                    }
                }
                if let Some(verdict) = first {
                    return Poll::Ready(Ok((verdict, extra)));
                }
            }
        })
    })
    .await
}

/// One TCP client: runs until the run ends, `cancel` fires, or the connection fails.
pub(super) async fn client(
    mut stream: TcpStream,
    shared: Arc<Shared>,
    request: Arc<Request>,
    cancel: CancellationToken,
) -> Tally {
    // Borrowed halves: no lock between the two directions.
    let (input, output) = stream.split();
    run(input, output, shared, request, cancel).await
}

/// One client over any other stream (unix, TLS).
pub(super) async fn stream_client(
    stream: BoxStream,
    shared: Arc<Shared>,
    request: Arc<Request>,
    cancel: CancellationToken,
) -> Tally {
    let (input, output) = tokio::io::split(stream);
    run(input, output, shared, request, cancel).await
}

/// Where a `--reconnect` client connects, and how.
pub(super) struct Redial {
    /// The server.
    pub addr: std::net::SocketAddr,
    /// Layers (TLS) and the name typed; plain TCP when it has none.
    pub dial: crate::transport::stream::Dial,
}

impl Redial {
    async fn connect(&self, timeout: Duration) -> Result<BoxStream, Stop> {
        if self.dial.is_plain() {
            let stream = TcpStream::connect(self.addr).await.map_err(Stop::Io)?;
            stream.set_nodelay(true).map_err(Stop::Io)?;
            Ok(Box::new(stream))
        } else {
            let (stream, _) = self
                .dial
                .connect(&[self.addr], timeout)
                .await
                .map_err(|e| Stop::Io(io::Error::other(e.to_string())))?;
            Ok(stream)
        }
    }
}

/// One `--reconnect` client: a new connection (and handshake) for every message, closed after
/// its reply; the latency covers connect, handshake and round trip.
pub(super) async fn reconnect_client(
    redial: Arc<Redial>,
    shared: Arc<Shared>,
    request: Arc<Request>,
    cancel: CancellationToken,
) -> Tally {
    let mut tally = Tally::default();
    let mut cancelled = pin!(cancel.cancelled());
    loop {
        let t0 = Instant::now();
        if shared.done(tally.counts.sent, t0) {
            break;
        }
        tally.counts.sent += 1;
        let mut checker = ReplyChecker::new(shared.framing, shared.size);
        let round = async {
            let stream = redial.connect(shared.timeout).await?;
            let (mut input, mut output) = tokio::io::split(stream);
            let (written, reply) = tokio::join!(
                request.write(&mut output),
                read_reply(&mut input, &mut checker)
            );
            let (verdict, extra) = reply?;
            written.map_err(Stop::Io)?;
            // A clean close (TLS close_notify, then FIN); the server's answer is not awaited.
            let _ = output.shutdown().await;
            Ok::<_, Stop>((verdict, extra))
        };
        let outcome = tokio::select! {
            biased;
            outcome = tokio::time::timeout(shared.timeout, round) => outcome,
            () = &mut cancelled => break,
        };
        match outcome {
            Ok(Ok((verdict, extra))) => {
                match verdict {
                    Verdict::Match => tally.record(t0, &shared),
                    Verdict::Mismatch(m) => tally.mismatch(&m, shared.size),
                }
                tally.counts.mismatches += extra;
            }
            Ok(Err(stop)) => {
                tally.counts.lost += 1;
                tally.fail(stop);
                break;
            }
            Err(_) => {
                tally.counts.timeouts += 1;
                tally.counts.lost += 1;
                tally.fail(Stop::Timeout(shared.timeout));
                break;
            }
        }
    }
    tally.flush(&shared);
    tally
}

async fn run<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut input: R,
    mut output: W,
    shared: Arc<Shared>,
    request: Arc<Request>,
    cancel: CancellationToken,
) -> Tally {
    let mut tally = Tally::default();
    let mut checker = ReplyChecker::new(shared.framing, shared.size);
    let mut cancelled = pin!(cancel.cancelled());
    loop {
        let t0 = Instant::now();
        if shared.done(tally.counts.sent, t0) {
            break;
        }
        tally.counts.sent += 1;
        let round = async {
            if request.whole.is_some() {
                request.write(&mut output).await.map_err(Stop::Io)?;
                let (verdict, extra) = read_reply(&mut input, &mut checker).await?;
                Ok::<_, Stop>((verdict, extra, None))
            } else {
                // Both to the end: when a server refuses a large message it typically sends
                // an error and closes while the write is still going, and the error it sent
                // says more than the broken pipe.
                let (written, reply) = tokio::join!(
                    request.write(&mut output),
                    read_reply(&mut input, &mut checker)
                );
                let (verdict, extra) = reply?;
                Ok((verdict, extra, written.err().map(Stop::Io)))
            }
        };
        let outcome = tokio::select! {
            biased;
            outcome = tokio::time::timeout(shared.timeout, round) => outcome,
            // A reply still on its way when the run is stopped is neither right nor lost.
            () = &mut cancelled => break,
        };
        match outcome {
            Ok(Ok((verdict, extra, write_failed))) => {
                match verdict {
                    Verdict::Match => tally.record(t0, &shared),
                    Verdict::Mismatch(m) => tally.mismatch(&m, shared.size),
                }
                tally.counts.mismatches += extra;
                if let Some(stop) = write_failed {
                    tally.fail(stop);
                    break;
                }
            }
            Ok(Err(stop)) => {
                tally.counts.lost += 1;
                if let Some(m) = checker.partial_mismatch() {
                    let m = m.clone();
                    tally.mismatch(&m, shared.size);
                }
                tally.fail(stop);
                break;
            }
            Err(_) => {
                // The connection's state is unknown after a missing reply: stop this client.
                tally.counts.timeouts += 1;
                tally.counts.lost += 1;
                tally.fail(Stop::Timeout(shared.timeout));
                break;
            }
        }
    }
    tally.flush(&shared);
    tally
}

#[cfg(test)]
mod tests {
    use tokio_util::codec::Encoder;

    use super::*;
    use crate::codec::{FrameCodec, Limits};
    use crate::message::Message;
    use crate::service::Transport;

    #[test]
    fn requests_are_framed_as_the_codecs_frame_them() {
        for name in Framing::NAMES {
            let framing: Framing = name.parse().unwrap();
            for size in [0, 1, 64, 70_000] {
                if super::super::check_size(Transport::Tcp, framing, size).is_err() {
                    continue;
                }
                let request = Request::new(framing, size);
                let mut expected = BytesMut::new();
                FrameCodec::new(framing, Limits::default())
                    .encode(&Message::new(vec![FILL; size]), &mut expected)
                    .unwrap();
                let mut got = request.head.to_vec();
                got.resize(got.len() + size, FILL);
                got.extend_from_slice(request.tail);
                assert_eq!(got, expected, "{name} {size}");
                if let Some(whole) = &request.whole {
                    assert_eq!(whole[..], expected[..], "{name} {size}");
                } else {
                    assert!(size > WHOLE - 20, "{name} {size}");
                }
            }
        }
    }
}
