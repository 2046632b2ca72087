//! A stream with a codec and two buffers that are allocated only while they hold data.
//!
//! Like mini-redis's `Connection`, it reads into a buffer and decodes frames out of it; unlike
//! it, the read buffer is created when the socket becomes readable and dropped again when it is
//! empty, and the write buffer is dropped once flushed. An idle connection therefore costs no
//! buffer memory at all, which is what lets one process hold tens of thousands of them.

use std::cell::RefCell;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::time::Sleep;
use tokio_util::codec::{Decoder, Encoder};

use crate::budget::{Charge, MemoryBudget};
use crate::codec::{FrameCodec, RAW_CHUNK};
use crate::error::CodecError;
use crate::message::Message;
use crate::transport::Stream;

/// Size of a read buffer allocated to finish a frame that spans several reads.
pub const INITIAL_READ: usize = 8 * 1024;
/// Room for framing overhead (prefix, line ending, short header) when sizing a write buffer.
const WRITE_SLACK: usize = 32;
/// Per-thread scratch buffer for reads between frames.
const SCRATCH_LEN: usize = 64 * 1024;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH_LEN]);
}
/// Below this much free space the read buffer grows (by doubling) before the next read.
const MIN_SPARE: usize = 1024;

/// A [`Stream`] that reads and writes [`Message`]s through a [`FrameCodec`].
#[derive(Debug)]
pub struct FramedStream<S> {
    io: S,
    codec: FrameCodec,
    rbuf: BytesMut,
    wbuf: BytesMut,
    eof: bool,
    bytes_in: u64,
    bytes_out: u64,
    /// The server-wide memory budget the buffers are charged to, if any.
    charge: Option<Charge>,
    /// What the last read refused for lack of budget needed: bytes, and whether as a large
    /// frame (see [`MemoryBudget::released`]).
    need: (usize, bool),
}

impl<S: Stream> FramedStream<S> {
    /// Wraps `io`; no buffer is allocated yet.
    pub fn new(io: S, codec: FrameCodec) -> Self {
        FramedStream {
            io,
            codec,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            eof: false,
            bytes_in: 0,
            bytes_out: 0,
            charge: None,
            need: (0, false),
        }
    }

    /// The underlying stream.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// The underlying stream, mutably. Reading from it directly bypasses the buffer.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    /// The codec.
    pub fn codec(&self) -> &FrameCodec {
        &self.codec
    }

    /// Decodes one message from bytes already received; after end of stream, the codec's
    /// end-of-stream rules apply (a partial frame is then an error).
    pub fn decode(&mut self) -> Result<Option<Message>, CodecError> {
        if self.eof {
            self.codec.decode_eof(&mut self.rbuf)
        } else {
            self.codec.decode(&mut self.rbuf)
        }
    }

    /// Reads more bytes, waiting until some arrive. Returns how many (0 means end of stream),
    /// or `None` when reading would take the connection over its memory budget: the read is
    /// not made, and the caller waits for [`MemoryBudget::released`] before trying again.
    ///
    /// Between frames the read goes into a per-thread scratch buffer and only the bytes that
    /// arrived are kept, in a buffer of exactly their size: a connection waiting for its next
    /// message holds no read buffer, and a 64-byte message costs a 64-byte allocation rather
    /// than a fresh 8 KiB one. Inside a frame, the buffer is sized once to the whole frame when
    /// the framing announces its length, and grows by doubling otherwise.
    pub fn fill(&mut self) -> impl Future<Output = io::Result<Option<usize>>> + '_ {
        // One poll function rather than an `async` body: every connection waiting for input
        // holds this future, and a closure over `&mut self` is the smallest it can be.
        poll_fn(move |cx| self.poll_fill(cx))
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<usize>>> {
        let n = if self.rbuf.is_empty() {
            let limit = match self.codec {
                // One read is one raw message: read no more than one message's worth.
                FrameCodec::Raw(_) => RAW_CHUNK,
                _ => SCRATCH_LEN,
            };
            // Charged at the moment of reading, never while waiting: idle connections hold
            // nothing, and no two connections can both spend the same free bytes.
            if let Some(charge) = self.charge.as_mut() {
                if !charge.try_grow(limit) {
                    self.need = (limit, false);
                    return Poll::Ready(Ok(None));
                }
            }
            let (io, rbuf) = (&mut self.io, &mut self.rbuf);
            let read = SCRATCH.with_borrow_mut(|scratch| {
                let mut buf = ReadBuf::new(&mut scratch[..limit]);
                match Pin::new(io).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(())) => {
                        // A buffer of exactly the bytes read (`rbuf` is empty here).
                        *rbuf = BytesMut::from(buf.filled());
                        Poll::Ready(Ok(buf.filled().len()))
                    }
                    other => other.map_ok(|()| 0),
                }
            });
            self.settle();
            match read {
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        } else {
            let (len, cap) = (self.rbuf.len(), self.rbuf.capacity());
            let want = match self.codec.frame_len(&self.rbuf) {
                Some(total) if total > len => total,
                _ if cap - len < MIN_SPARE => len + len.max(INITIAL_READ),
                _ => cap,
            };
            if want > cap {
                // A growing buffer may double rather than take exactly what was asked.
                let extra = want.max(2 * cap) - cap;
                if let Some(charge) = self.charge.as_mut() {
                    if !charge.try_grow_large(extra) {
                        self.need = (extra, true);
                        return Poll::Ready(Ok(None));
                    }
                }
                self.rbuf.reserve(want - len);
                self.settle();
            }
            let spare = self.rbuf.spare_capacity_mut();
            let mut buf = ReadBuf::uninit(spare);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
            let n = buf.filled().len();
            // SAFETY: `poll_read` initialized the first `n` bytes of the spare capacity.
            unsafe { self.rbuf.set_len(len + n) };
            n
        };
        if n == 0 {
            self.eof = true;
        }
        self.bytes_in += n as u64;
        Poll::Ready(Ok(Some(n)))
    }

    /// Makes the budget charge match the buffers' actual sizes; call once the messages decoded
    /// from the read buffer have been handled and dropped (see [`FramedStream::queue`]).
    pub fn recount(&mut self) {
        // An emptied read buffer may still share the allocation of the frame split off it:
        // let it go now, not only when the connection next waits (a reply may stall first).
        if self.rbuf.is_empty() && self.rbuf.capacity() == 0 {
            self.rbuf = BytesMut::new();
        }
        self.settle();
    }

    /// Makes the budget charge match the buffers' actual sizes.
    fn settle(&mut self) {
        if let Some(charge) = self.charge.as_mut() {
            charge.settle(self.rbuf.capacity() + self.wbuf.capacity());
        }
    }

    /// Charges this connection's buffers to `charge`'s budget from now on.
    pub fn set_budget(&mut self, charge: Charge) {
        self.charge = Some(charge);
        self.settle();
    }

    /// The memory budget this connection is charged to, if any.
    pub fn budget(&self) -> Option<&Arc<MemoryBudget>> {
        self.charge.as_ref().map(Charge::budget)
    }

    /// Waits until the read that [`FramedStream::fill`] refused may fit the budget.
    pub fn budget_released(&self) -> impl Future<Output = ()> + Send + 'static {
        let budget = self.budget().cloned();
        let (need, large) = self.need;
        async move {
            if let Some(budget) = budget {
                budget.released(need, large).await;
            }
        }
    }

    /// Bytes of the frame in progress received so far.
    pub fn partial_len(&self) -> usize {
        self.rbuf.len()
    }

    /// Reads the next message. `Ok(None)` is a clean end of stream; end of stream inside a
    /// frame is [`CodecError::Truncated`].
    pub async fn read_message(&mut self) -> Result<Option<Message>, CodecError> {
        loop {
            if let Some(msg) = self.decode()? {
                return Ok(Some(msg));
            }
            if self.eof {
                return Ok(None);
            }
            if self.fill().await?.is_none() {
                self.budget_released().await;
            }
        }
    }

    /// Whether the peer has closed its side.
    pub fn is_eof(&self) -> bool {
        self.eof
    }

    /// Whether part of a frame is buffered (every codec consumes nothing until a frame is
    /// complete, so any buffered byte belongs to an unfinished frame).
    pub fn has_partial_frame(&self) -> bool {
        !self.rbuf.is_empty()
    }

    /// Encodes `msg` into the write buffer; nothing is sent until [`FramedStream::flush`].
    pub fn queue(&mut self, msg: &Message) -> Result<(), CodecError> {
        let before = self.wbuf.capacity();
        if before == 0 {
            // Sized up front: growing an empty buffer takes a slower path in `bytes`.
            self.wbuf = BytesMut::with_capacity(msg.len() + WRITE_SLACK);
        }
        let encoded = self.codec.encode(msg, &mut self.wbuf);
        // Added, not settled: a message just decoded may still share the read buffer's memory,
        // which `rbuf.capacity()` no longer shows. The charge comes down once the connection
        // is idle.
        if let Some(charge) = self.charge.as_mut() {
            charge.add(self.wbuf.capacity().saturating_sub(before));
        }
        encoded
    }

    /// Bytes encoded but not yet written.
    pub fn pending_write(&self) -> usize {
        self.wbuf.len()
    }

    /// Writes everything queued. With `stall`, a write that makes no progress for that long
    /// fails with [`io::ErrorKind::TimedOut`] (a peer that stopped reading). The stall timer is
    /// created only when the socket is actually full, so the usual write costs no timer.
    pub async fn flush(&mut self, stall: Option<Duration>) -> io::Result<()> {
        let mut timer: Option<Pin<Box<Sleep>>> = None;
        while !self.wbuf.is_empty() {
            let (io, wbuf) = (&mut self.io, &self.wbuf);
            let n = poll_fn(|cx| match Pin::new(&mut *io).poll_write(cx, wbuf) {
                Poll::Ready(result) => Poll::Ready(result),
                Poll::Pending => {
                    let Some(limit) = stall else {
                        return Poll::Pending;
                    };
                    let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                    match timer.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "peer stopped reading",
                        ))),
                        Poll::Pending => Poll::Pending,
                    }
                }
            })
            .await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            // Progress: the stall clock starts again at the next blocked write.
            timer = None;
            self.wbuf.advance(n);
            self.bytes_out += n as u64;
        }
        self.io.flush().await
    }

    /// Queues and flushes one message.
    pub async fn send(&mut self, msg: &Message) -> Result<(), CodecError> {
        self.queue(msg)?;
        self.flush(None).await?;
        Ok(())
    }

    /// Frees both buffers if they are empty; call before waiting for the peer.
    ///
    /// Emptiness, not capacity, decides: a buffer that was advanced or split to its end reports
    /// no capacity yet still owns its whole allocation (a large frame's, possibly).
    pub fn release_idle(&mut self) {
        if self.rbuf.is_empty() {
            self.rbuf = BytesMut::new();
        }
        if self.wbuf.is_empty() {
            self.wbuf = BytesMut::new();
        }
        self.settle();
    }

    /// Bytes read so far.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in
    }

    /// Bytes written so far.
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out
    }

    /// Closes the write side, then reads and discards what the peer still sends for up to
    /// `linger` (at most 1 MiB), so that closing does not reset the connection and destroy the
    /// last reply before the peer has read it.
    pub async fn close_gracefully(&mut self, linger: Duration) {
        let _ = self.io.shutdown().await;
        if self.eof {
            return;
        }
        self.rbuf.clear();
        let drain = async {
            let mut discarded = 0usize;
            while discarded < 1024 * 1024 {
                self.rbuf.clear();
                if self.rbuf.capacity() < INITIAL_READ {
                    self.rbuf.reserve(INITIAL_READ);
                }
                match self.io.read_buf(&mut self.rbuf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => discarded += n,
                }
            }
        };
        let _ = tokio::time::timeout(linger, drain).await;
        self.rbuf = BytesMut::new();
        self.settle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Framing, Limits};

    fn line_codec() -> FrameCodec {
        FrameCodec::new(Framing::Line, Limits::default())
    }

    #[tokio::test]
    async fn buffers_are_released_once_empty() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut framed = FramedStream::new(a, line_codec());
        b.write_all(b"hi\n").await.unwrap();
        let msg = framed.read_message().await.unwrap().unwrap();
        framed.queue(&msg).unwrap();
        framed.flush(None).await.unwrap();
        framed.release_idle();
        assert_eq!((framed.rbuf.capacity(), framed.wbuf.capacity()), (0, 0));
        let mut got = [0u8; 3];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hi\n");
    }

    #[tokio::test]
    async fn a_frame_larger_than_the_initial_buffer_is_read_whole() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let codec = FrameCodec::new("len32".parse().unwrap(), Limits::default());
        let mut framed = FramedStream::new(a, codec);
        let body = vec![7u8; 100_000];
        tokio::spawn(async move {
            b.write_all(&(body.len() as u32).to_be_bytes())
                .await
                .unwrap();
            b.write_all(&body).await.unwrap();
        });
        let msg = framed.read_message().await.unwrap().unwrap();
        assert_eq!(msg.len(), 100_000);
        assert!(framed.read_message().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn eof_inside_a_frame_is_reported_as_truncated() {
        let (a, mut b) = tokio::io::duplex(64);
        let codec = FrameCodec::new("len16".parse().unwrap(), Limits::default());
        let mut framed = FramedStream::new(a, codec);
        b.write_all(b"\x00\x05ab").await.unwrap();
        drop(b);
        assert!(matches!(
            framed.read_message().await,
            Err(CodecError::Truncated { buffered: 4 })
        ));
    }

    #[tokio::test]
    async fn a_write_to_a_peer_that_never_reads_times_out() {
        let (a, _b) = tokio::io::duplex(16);
        let mut framed = FramedStream::new(a, line_codec());
        framed.queue(&Message::new(vec![b'x'; 1000])).unwrap();
        let err = framed
            .flush(Some(Duration::from_millis(50)))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
