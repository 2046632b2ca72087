//! `--hex` on `connect` and `serve`: a stream wrapper that dumps every chunk read and written
//! to stderr in exactly the format of `sockit relay --hex` (it is the relay's own
//! [`Tap`]): time, direction (`>` client to server, `<` server to
//! client), connection id, length, stream offset, then hex and text rows.
//!
//! The dump goes through a [`LogSink`] queue, so a slow terminal never slows the connection
//! (lines are dropped and counted instead).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::logging::LogSink;
use crate::relay::fault::Dir;
use crate::relay::inspect::{Inspect, Tap};
use crate::service::PeerInfo;
use crate::transport::stream::{BoxFuture, BoxStream, ClientUpgrade, Upgrade};

/// `serve --hex`: taps every accepted connection, numbered by the server's connection id.
/// Put it last among the server's upgrades, so that it sees the plaintext above TLS.
#[derive(Debug, Clone)]
pub struct HexUpgrade {
    sink: LogSink,
}

impl HexUpgrade {
    /// Dumps to `sink` (usually [`LogSink::stderr`]).
    pub fn new(sink: LogSink) -> HexUpgrade {
        HexUpgrade { sink }
    }
}

impl Upgrade for HexUpgrade {
    fn name(&self) -> &str {
        "hex"
    }

    fn upgrade(
        &self,
        stream: BoxStream,
        peer: &PeerInfo,
    ) -> BoxFuture<'static, io::Result<BoxStream>> {
        let tapped: BoxStream = Box::new(HexTap::new(
            stream,
            self.sink.clone(),
            peer.id,
            Side::Server,
        ));
        Box::pin(async move { Ok(tapped) })
    }
}

/// `connect --hex`: taps the connected stream; connections are numbered from 1. Put it last
/// among the dial's layers, so that it sees the plaintext above TLS.
#[derive(Debug)]
pub struct HexLayer {
    sink: LogSink,
    next: AtomicU64,
}

impl HexLayer {
    /// Dumps to `sink` (usually [`LogSink::stderr`]).
    pub fn new(sink: LogSink) -> HexLayer {
        HexLayer {
            sink,
            next: AtomicU64::new(1),
        }
    }
}

impl ClientUpgrade for HexLayer {
    fn name(&self) -> &str {
        "hex"
    }

    fn upgrade(
        &self,
        stream: BoxStream,
        _target: &str,
    ) -> BoxFuture<'static, io::Result<BoxStream>> {
        let conn = self.next.fetch_add(1, Ordering::Relaxed);
        let tapped: BoxStream =
            Box::new(HexTap::new(stream, self.sink.clone(), conn, Side::Client));
        Box::pin(async move { Ok(tapped) })
    }
}

/// Which end of the connection the tapped stream is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The client (`connect`): what it writes goes up (`>`), what it reads comes down (`<`).
    Client,
    /// The server (`serve`): what it reads goes up (`>`), what it writes goes down (`<`).
    Server,
}

/// A stream whose every chunk read and written is dumped as hex.
#[derive(Debug)]
pub struct HexTap<S> {
    inner: S,
    read: Tap,
    write: Tap,
}

impl<S> HexTap<S> {
    /// Taps `inner`, connection number `conn`, writing the dump to `sink`.
    pub fn new(inner: S, sink: LogSink, conn: u64, side: Side) -> HexTap<S> {
        let inspect = Arc::new(Inspect {
            hex: Some(sink),
            framing: None,
            trace: None,
        });
        let (read, write) = match side {
            Side::Client => (Dir::Down, Dir::Up),
            Side::Server => (Dir::Up, Dir::Down),
        };
        HexTap {
            inner,
            read: Tap::new(inspect.clone(), conn, read),
            write: Tap::new(inspect, conn, write),
        }
    }

    /// The tapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HexTap<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            let new = &buf.filled()[before..];
            if !new.is_empty() {
                this.read.chunk(new);
            }
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HexTap<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = result
            && n > 0
        {
            this.write.chunk(&buf[..n.min(buf.len())]);
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn both_directions_are_dumped_with_offsets() {
        let out = Shared::default();
        let sink = LogSink::spawn(out.clone()).unwrap();
        let (a, mut b) = duplex(1024);
        let mut tap = HexTap::new(a, sink.clone(), 7, Side::Client);
        tap.write_all(b"hello\n").await.unwrap();
        let mut got = [0u8; 6];
        b.read_exact(&mut got).await.unwrap();
        b.write_all(b"0123456789abcdefXY").await.unwrap();
        let mut back = [0u8; 18];
        tap.read_exact(&mut back).await.unwrap();
        tap.write_all(b"!").await.unwrap();
        sink.flush(std::time::Duration::from_secs(5));
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].ends_with(" > conn 7 up 6 bytes at offset 0"),
            "{text}"
        );
        assert_eq!(
            lines[1],
            "  00000000  68 65 6c 6c 6f 0a                                 |hello.|"
        );
        assert!(lines[2].contains(" < conn 7 down "), "{text}");
        assert!(text.contains("|0123456789abcdef|"), "{text}");
        assert!(text.contains("  00000010  58 59"), "{text}");
        assert!(
            lines.last().is_some_and(|l| l.contains("|!|"))
                && text.contains("> conn 7 up 1 bytes at offset 6"),
            "{text}"
        );
    }
}
