//! A write deadline: [`WriteStall`] fails a write (or flush, or shutdown) that makes no
//! progress for a given time, so a client whose server stopped reading ends with a clear
//! error instead of blocking forever. Progress restarts the clock; idle time between writes
//! does not count.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The error inside the `io::Error` (kind `TimedOut`) a stalled write fails with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stalled {
    /// The deadline that ran out.
    pub limit: Duration,
}

impl fmt::Display for Stalled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "server stopped reading: nothing could be written for {} s (--write-timeout)",
            self.limit.as_secs_f64()
        )
    }
}

impl std::error::Error for Stalled {}

impl Stalled {
    /// The `io::Error` for a write stalled for `limit`.
    pub fn error(limit: Duration) -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, Stalled { limit })
    }

    /// The [`Stalled`] inside `e`, if `e` is one.
    pub fn find(e: &io::Error) -> Option<Stalled> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<Stalled>())
            .copied()
    }
}

/// A writer (or stream) whose writes fail with [`Stalled`] after `limit` without progress.
pub struct WriteStall<W> {
    inner: W,
    limit: Option<Duration>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<W: fmt::Debug> fmt::Debug for WriteStall<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteStall")
            .field("inner", &self.inner)
            .field("limit", &self.limit)
            .finish()
    }
}

impl<W> WriteStall<W> {
    /// Wraps `inner`; `None` never times out.
    pub fn new(inner: W, limit: Option<Duration>) -> WriteStall<W> {
        WriteStall {
            inner,
            limit,
            timer: None,
        }
    }

    /// Turns a pending write into an error once the deadline has passed; a ready one resets it.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(result) => {
                self.timer = None;
                Poll::Ready(result)
            }
            Poll::Pending => {
                let Some(limit) = self.limit else {
                    return Poll::Pending;
                };
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if timer.as_mut().poll(cx).is_ready() {
                    self.timer = None;
                    return Poll::Ready(Err(Stalled::error(limit)));
                }
                Poll::Pending
            }
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for WriteStall<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(cx, poll)
    }
}

impl<W: AsyncRead + Unpin> AsyncRead for WriteStall<W> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_stops_fails_the_writer_after_the_limit() {
        let (a, mut b) = duplex(16);
        let limit = Duration::from_secs(3);
        let mut w = WriteStall::new(a, Some(limit));
        // Slow progress never trips it: each chunk is read within the limit.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_secs(2)).await;
                b.read_exact(&mut buf).await.unwrap();
            }
            b
        });
        w.write_all(&[7u8; 64]).await.unwrap();
        let _b = reader.await.unwrap();
        // Now nobody reads: the write fails once the limit has passed.
        let started = tokio::time::Instant::now();
        let err = w.write_all(&[7u8; 64]).await.unwrap_err();
        assert_eq!(Stalled::find(&err), Some(Stalled { limit }));
        assert!(err.to_string().contains("server stopped reading"), "{err}");
        assert_eq!(started.elapsed(), limit);
    }

    #[tokio::test(start_paused = true)]
    async fn no_limit_waits() {
        let (a, _b) = duplex(4);
        let mut w = WriteStall::new(a, None);
        let r = tokio::time::timeout(Duration::from_secs(3600), w.write_all(&[0u8; 8])).await;
        assert!(r.is_err(), "still waiting after an hour");
    }
}
