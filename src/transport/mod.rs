//! Transports: the tokio drivers that move messages between sockets and sessions.
//!
//! - [`framed`]: a byte stream plus a codec, with buffers that exist only while there is data.
//! - [`tcp`]: runs one session over one framed stream (replies, pushes, timeouts, shutdown).
//! - [`udp`]: runs one session per peer address over a single UDP socket.
//!
//! Adding a stream transport (TLS, say): implement [`Stream`] for its stream type and hand it to
//! [`tcp::serve_connection`]; the session code and the codecs are reused unchanged.

use std::io;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite};

pub mod framed;
pub mod tcp;
pub mod udp;

pub use framed::FramedStream;

/// A byte stream a connection can run over.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Resolves when a read would return data or EOF, so a caller can wait for input without
    /// holding a read buffer. Streams that cannot tell report "ready" at once.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let _ = cx;
        Poll::Ready(Ok(()))
    }
}

impl Stream for tokio::net::TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::TcpStream::poll_read_ready(self, cx)
    }
}

impl Stream for tokio::io::DuplexStream {}

#[cfg(unix)]
impl Stream for tokio::net::UnixStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::net::UnixStream::poll_read_ready(self, cx)
    }
}
