//! Transports: the tokio drivers that move messages between sockets and sessions.
//!
//! - [`framed`]: a byte stream plus a codec, with buffers that exist only while there is data.
//! - [`tcp`]: runs one session over one framed stream (replies, pushes, timeouts, shutdown).
//! - [`udp`]: runs one session per peer address over a single UDP socket.
//! - [`unixgram`]: the same over a unix datagram socket, one session per sender path.
//! - [`unix`]: unix socket files: stale ones replaced safely, `--mode`, removal on shutdown.
//! - [`stream`]: any byte stream (TCP, unix, layered by TLS or a hex tap), the listener that
//!   accepts them, the layers' traits, and the client's [`stream::Dial`].
//! - [`hex`]: the `--hex` tap on `serve` and `connect` connections (the relay's dump format).
//! - [`stall`]: a write deadline, so a peer that stops reading cannot block a writer forever.
//! - [`messages`]: runs one session over a connection that carries whole messages (rudp).
//! - [`rudp`](mod@rudp): reliable UDP connections (the [`crate::rudp`] core) on a UDP socket:
//!   a server serving many connections on one socket, and a client.
//!
//! Adding a stream layer (TLS, say): implement [`stream::Upgrade`] (server) and
//! [`stream::ClientUpgrade`] (client); the session code and the codecs are reused unchanged.

use tokio::io::{AsyncRead, AsyncWrite};

pub mod framed;
pub mod hex;
pub mod messages;
pub mod rudp;
pub mod stall;
pub mod stream;
pub mod tcp;
pub mod udp;
pub mod unix;
pub mod unixgram;

pub use framed::FramedStream;

/// A byte stream a connection can run over: anything tokio can read and write.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}
