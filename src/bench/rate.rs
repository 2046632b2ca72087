//! Open-loop load (`sockit bench --rate N`): every client sends N messages a second on a fixed
//! schedule, whatever the replies do, and a reply's latency is measured from the time its
//! message was *scheduled*, not sent. A server that stalls therefore shows its stall in the
//! latencies of every message that should have gone out meanwhile (no coordinated omission, as
//! wrk2 measures it), where a ping-pong client would only have waited once.
//!
//! Each message starts with a stamp — a 32-bit sequence number and the 32-bit microsecond
//! offset of its scheduled time from the start of the run — so a reply is matched to its
//! request by content: 8 bytes, big-endian, or 16 hex digits with line framing (a binary stamp
//! could hold a newline). The rest of the message is filler.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use super::{Shared, Tally};
use crate::codec::{FrameCodec, Framing, Limits};
use crate::message::Message;

/// Bytes of a binary stamp.
pub const STAMP_BYTES: usize = 8;
/// Bytes of a text stamp (line framing).
pub const TEXT_STAMP_BYTES: usize = 16;
const FILLER: u8 = b'.';

/// The smallest `--size` open-loop load can use with this framing (`None`: UDP or rudp).
pub fn min_size(framing: Option<Framing>) -> usize {
    match framing {
        Some(Framing::Line) => TEXT_STAMP_BYTES,
        _ => STAMP_BYTES,
    }
}

/// Writes message `seq`, scheduled `t_us` microseconds into the run, padded to `size`.
pub fn stamp(seq: u32, t_us: u32, size: usize, text: bool, out: &mut BytesMut) {
    out.clear();
    if text {
        out.extend_from_slice(format!("{seq:08x}{t_us:08x}").as_bytes());
    } else {
        out.extend_from_slice(&seq.to_be_bytes());
        out.extend_from_slice(&t_us.to_be_bytes());
    }
    out.resize(size.max(out.len()), FILLER);
}

/// Reads the stamp back: `(seq, t_us)`, or `None` for a message that is not one of ours.
pub fn read_stamp(msg: &[u8], size: usize, text: bool) -> Option<(u32, u32)> {
    if msg.len() != size {
        return None;
    }
    let (seq, t) = if text {
        let s = std::str::from_utf8(msg.get(..TEXT_STAMP_BYTES)?).ok()?;
        (
            u32::from_str_radix(&s[..8], 16).ok()?,
            u32::from_str_radix(&s[8..], 16).ok()?,
        )
    } else {
        (
            u32::from_be_bytes(msg.get(..4)?.try_into().ok()?),
            u32::from_be_bytes(msg.get(4..8)?.try_into().ok()?),
        )
    };
    let head = if text { TEXT_STAMP_BYTES } else { STAMP_BYTES };
    msg[head..].iter().all(|&b| b == FILLER).then_some((seq, t))
}

/// Which replies have come back, for transports that may reorder or duplicate (UDP).
#[derive(Debug, Default)]
struct Seen {
    bits: Vec<u64>,
}

impl Seen {
    /// Marks `seq`; false if it was already marked.
    fn mark(&mut self, seq: u32) -> bool {
        let (word, bit) = (seq as usize / 64, seq % 64);
        if self.bits.len() <= word {
            self.bits.resize(word + 1, 0);
        }
        let fresh = self.bits[word] & (1 << bit) == 0;
        self.bits[word] |= 1 << bit;
        fresh
    }
}

/// The schedule of one client: message `i` is due at `start + phase + i / rate`.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// The start of the run (stamps count from here).
    pub start: Instant,
    /// This client's offset into the first interval, spreading clients evenly.
    pub phase: Duration,
    /// Time between two messages of one client.
    pub interval: Duration,
}

impl Schedule {
    /// When message `i` is due.
    pub fn due(&self, i: u64) -> Instant {
        self.start + self.phase + self.interval.mul_f64(i as f64)
    }

    /// The stamp time of message `i`: microseconds from the start, wrapping at 32 bits.
    pub fn stamp_us(&self, i: u64) -> u32 {
        (self.due(i) - self.start).as_micros() as u32
    }

    /// When a reply stamped `t_us` was due, `now` (the stamp wraps every 71 minutes).
    pub fn due_of(&self, t_us: u32, now: Instant) -> Instant {
        let now_us = (now - self.start).as_micros() as u64;
        let back = (now_us as u32).wrapping_sub(t_us) as u64;
        self.start + Duration::from_micros(now_us.saturating_sub(back))
    }
}

/// What a receiver does with one reply.
struct Receiver<'a> {
    shared: &'a Shared,
    schedule: Schedule,
    text: bool,
    seen: Seen,
    next: u32,
    ordered: bool,
}

impl Receiver<'_> {
    fn reply(&mut self, msg: &[u8], sent: u64, tally: &mut Tally) {
        let now = Instant::now();
        match read_stamp(msg, self.shared.size, self.text) {
            Some((seq, t_us)) if u64::from(seq) < sent && self.seen.mark(seq) => {
                if self.ordered && seq != self.next {
                    tally.counts.out_of_order += 1;
                }
                self.next = seq.wrapping_add(1);
                let due = self.schedule.due_of(t_us, now);
                tally.record(due, self.shared);
            }
            Some(_) => {
                // A duplicate, or a number never sent.
                tally.counts.mismatches += 1;
                tally.first_mismatch.get_or_insert_with(|| {
                    "a reply repeated an earlier one or answered nothing sent".to_owned()
                });
            }
            None => {
                tally.counts.mismatches += 1;
                tally.first_mismatch.get_or_insert_with(|| {
                    let preview = String::from_utf8_lossy(&msg[..msg.len().min(80)]).into_owned();
                    format!("a reply that is not the message sent: {preview:?}")
                });
            }
        }
    }
}

/// The number of messages one client sends, if bounded by `count`.
fn is_done(shared: &Shared, schedule: &Schedule, i: u64) -> bool {
    match shared.count {
        Some(n) => i >= n,
        None => schedule.due(i) >= shared.deadline,
    }
}

/// How long a client keeps waiting for replies after its last message.
fn drain_time(shared: &Shared) -> Duration {
    shared.timeout
}

/// What an open-loop client needs from its transport.
trait Pipe {
    /// Whether replies come back in the order sent (TCP, rudp), so disorder is worth counting.
    const ORDERED: bool;
    /// The next reply; `Ok(None)` when the server closed.
    async fn recv(&mut self) -> Result<Option<Bytes>, String>;
    /// Queues one message (a stream may hold it until [`Pipe::flush`]).
    async fn send(&mut self, msg: Bytes) -> Result<(), String>;
    /// Sends what was queued; called whenever the schedule has nothing more due now.
    async fn flush(&mut self) -> Result<(), String> {
        Ok(())
    }
    /// Ends the connection, if there is one.
    fn close(&mut self) {}
}

/// A framed stream: TCP's owned halves, or any stream's split halves.
struct TcpPipe<R, W> {
    reader: FramedRead<R, FrameCodec>,
    writer: FramedWrite<W, FrameCodec>,
}

impl<R, W> Pipe for TcpPipe<R, W>
where
    R: tokio::io::AsyncRead + Unpin + Send,
    W: tokio::io::AsyncWrite + Unpin + Send,
{
    const ORDERED: bool = true;

    async fn recv(&mut self) -> Result<Option<Bytes>, String> {
        match self.reader.next().await {
            Some(Ok(msg)) => Ok(Some(msg.into_body())),
            Some(Err(e)) => Err(format!("reading replies: {e}")),
            None => Ok(None),
        }
    }

    async fn send(&mut self, msg: Bytes) -> Result<(), String> {
        // Feeding without flushing lets messages that fell behind schedule leave in one write.
        self.writer
            .feed(&Message::new(msg))
            .await
            .map_err(|e| format!("sending: {e}"))
    }

    async fn flush(&mut self) -> Result<(), String> {
        self.writer
            .flush()
            .await
            .map_err(|e| format!("sending: {e}"))
    }
}

struct UdpPipe {
    socket: UdpSocket,
    buf: Vec<u8>,
}

impl Pipe for UdpPipe {
    const ORDERED: bool = false;

    async fn recv(&mut self) -> Result<Option<Bytes>, String> {
        loop {
            match self.socket.recv(&mut self.buf).await {
                Ok(n) => return Ok(Some(Bytes::copy_from_slice(&self.buf[..n]))),
                // ICMP port unreachable from an earlier datagram: its reply is simply lost.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(format!("receiving: {e}")),
            }
        }
    }

    async fn send(&mut self, msg: Bytes) -> Result<(), String> {
        match self.socket.send(&msg).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            Err(e) => Err(format!("sending: {e}")),
        }
    }
}

impl Pipe for crate::transport::rudp::RudpConnection {
    const ORDERED: bool = true;

    async fn recv(&mut self) -> Result<Option<Bytes>, String> {
        Ok(crate::transport::rudp::RudpConnection::recv(self).await)
    }

    async fn send(&mut self, msg: Bytes) -> Result<(), String> {
        crate::transport::rudp::RudpConnection::send(self, msg)
            .await
            .map_err(|e| format!("sending: {e}"))
    }

    fn close(&mut self) {
        crate::transport::rudp::RudpConnection::close(self);
    }
}

/// The open-loop client: sends on the schedule, takes replies as they come, and after the
/// last message waits up to the timeout for the replies still missing.
async fn run<P: Pipe>(
    mut pipe: P,
    shared: Arc<Shared>,
    schedule: Schedule,
    text: bool,
    cancel: CancellationToken,
) -> Tally {
    let mut tally = Tally::default();
    let mut rx = Receiver {
        shared: &shared,
        schedule,
        text,
        seen: Seen::default(),
        next: 0,
        ordered: P::ORDERED,
    };
    let mut buf = BytesMut::new();
    let mut sent = 0u64;
    let mut sending = true;
    let mut last_send = Instant::now();
    // One sleep for as long as its deadline holds: replies in between do not queue more
    // deadlines on the pacer.
    let mut sleep = Box::pin(super::pace::sleep_until(schedule.due(0)));
    loop {
        let answered = tally.counts.messages + tally.counts.mismatches;
        if !sending && answered >= sent {
            break;
        }
        let wait_until = if sending {
            schedule.due(sent)
        } else {
            last_send + drain_time(&shared)
        };
        if sleep.deadline() != wait_until {
            sleep = Box::pin(super::pace::sleep_until(wait_until));
        }
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            got = pipe.recv() => match got {
                Ok(Some(msg)) => rx.reply(&msg, sent, &mut tally),
                Ok(None) => { tally.fail("the server closed the connection"); break; }
                Err(e) => { tally.fail(e); break; }
            },
            () = sleep.as_mut() => {
                if !sending {
                    break;
                }
                stamp(sent as u32, schedule.stamp_us(sent), shared.size, text, &mut buf);
                if let Err(e) = pipe.send(buf.split().freeze()).await {
                    tally.fail(e);
                    break;
                }
                sent += 1;
                last_send = Instant::now();
                if is_done(&shared, &schedule, sent) {
                    sending = false;
                }
                if schedule.due(sent) > Instant::now() || !sending {
                    if let Err(e) = pipe.flush().await {
                        tally.fail(e);
                        break;
                    }
                }
            }
        }
    }
    pipe.close();
    tally.counts.sent = sent;
    let unanswered = sent.saturating_sub(tally.counts.messages);
    tally.counts.lost = unanswered;
    tally.counts.timeouts += sent.saturating_sub(tally.counts.messages + tally.counts.mismatches);
    tally.flush(&shared);
    tally
}

/// An open-loop client over TCP with the given framing.
pub(super) async fn tcp_client(
    stream: TcpStream,
    shared: Arc<Shared>,
    schedule: Schedule,
    cancel: CancellationToken,
) -> Tally {
    let framing = shared.framing;
    let limits = Limits::default();
    let (rd, wr) = stream.into_split();
    let pipe = TcpPipe {
        reader: FramedRead::new(rd, FrameCodec::new(framing, limits)),
        writer: FramedWrite::new(wr, FrameCodec::new(framing, limits)),
    };
    run(pipe, shared, schedule, framing == Framing::Line, cancel).await
}

/// An open-loop client over any other stream (unix, TLS) with the given framing.
pub(super) async fn stream_client(
    stream: crate::transport::stream::BoxStream,
    shared: Arc<Shared>,
    schedule: Schedule,
    cancel: CancellationToken,
) -> Tally {
    let framing = shared.framing;
    let limits = Limits::default();
    let (rd, wr) = tokio::io::split(stream);
    let pipe = TcpPipe {
        reader: FramedRead::new(rd, FrameCodec::new(framing, limits)),
        writer: FramedWrite::new(wr, FrameCodec::new(framing, limits)),
    };
    run(pipe, shared, schedule, framing == Framing::Line, cancel).await
}

/// An open-loop client over UDP: one datagram per message.
pub(super) async fn udp_client(
    socket: UdpSocket,
    shared: Arc<Shared>,
    schedule: Schedule,
    cancel: CancellationToken,
) -> Tally {
    let pipe = UdpPipe {
        socket,
        buf: vec![0u8; 64 * 1024],
    };
    run(pipe, shared, schedule, false, cancel).await
}

/// An open-loop client over rudp: one message per message, in order.
pub(super) async fn rudp_client(
    conn: crate::transport::rudp::RudpConnection,
    shared: Arc<Shared>,
    schedule: Schedule,
    cancel: CancellationToken,
) -> Tally {
    run(conn, shared, schedule, false, cancel).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_in_both_forms() {
        let mut b = BytesMut::new();
        for text in [false, true] {
            let size = min_size(text.then_some(Framing::Line)) + 5;
            stamp(0xdead_beef, 123_456_789, size, text, &mut b);
            assert_eq!(b.len(), size);
            assert!(!text || !b.contains(&b'\n'));
            assert_eq!(read_stamp(&b, size, text), Some((0xdead_beef, 123_456_789)));
            let mut bad = b.to_vec();
            *bad.last_mut().unwrap() = b'x';
            assert_eq!(read_stamp(&bad, size, text), None);
            assert_eq!(read_stamp(&b[..size - 1], size, text), None);
        }
    }

    #[test]
    fn the_schedule_spaces_messages_and_recovers_due_times() {
        let start = Instant::now();
        let s = Schedule {
            start,
            phase: Duration::from_millis(3),
            interval: Duration::from_millis(20),
        };
        assert_eq!(s.due(0), start + Duration::from_millis(3));
        assert_eq!(s.due(5), start + Duration::from_millis(103));
        let now = start + Duration::from_millis(150);
        let due = s.due_of(s.stamp_us(5), now);
        assert!(due.duration_since(s.due(5)) < Duration::from_micros(2));
    }

    #[test]
    fn each_reply_is_counted_once() {
        let mut seen = Seen::default();
        assert!(seen.mark(3));
        assert!(!seen.mark(3));
        assert!(seen.mark(200));
    }
}
