//! Byte streams of any kind, and the seams where layers go on them.
//!
//! The server accepts from a [`Listener`] (TCP or a unix socket) and gets a [`Conn`]; before
//! a session sees it, each [`Upgrade`] in the server's configuration may wrap it (a TLS
//! handshake, a hex tap), turning it into a [`BoxStream`]. The client side is the mirror: a
//! [`Dial`] says where to connect (a TCP address, a unix socket, or through a proxy, a
//! [`Via`]) and which [`ClientUpgrade`] layers go on the connected stream.
//!
//! Plain TCP with no layers keeps its concrete type everywhere, so the fast paths (splice,
//! `TCP_NODELAY`, borrowed halves) stay available; everything else is a [`BoxStream`].

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::net::SocketAddr as StdUnixAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use crate::net::{PeerAddr, UnixName};
use crate::service::PeerInfo;
use crate::transport::Stream;

/// Any byte stream, boxed: what a layered connection is.
pub type BoxStream = Box<dyn Stream>;

/// A boxed, sendable future (the return type of the layer traits).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The std socket address of a unix-socket name (a path, or an abstract name on Linux).
pub fn unix_socket_addr(name: &UnixName) -> io::Result<StdUnixAddr> {
    match name {
        UnixName::Path(path) => StdUnixAddr::from_pathname(path),
        UnixName::Abstract(name) => {
            #[cfg(target_os = "linux")]
            {
                use std::os::linux::net::SocketAddrExt;
                StdUnixAddr::from_abstract_name(name.as_bytes())
            }
            #[cfg(not(target_os = "linux"))]
            {
                let _ = name;
                Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "abstract unix sockets exist only on Linux",
                ))
            }
        }
    }
}

/// Binds a unix stream listener on `name` (no stale-file handling: that is the caller's).
pub fn bind_unix_listener(name: &UnixName) -> io::Result<UnixListener> {
    let addr = unix_socket_addr(name)?;
    let std = std::os::unix::net::UnixListener::bind_addr(&addr)?;
    std.set_nonblocking(true)?;
    UnixListener::from_std(std)
}

/// Connects a unix stream socket to `name`.
pub async fn connect_unix(name: &UnixName) -> io::Result<UnixStream> {
    match name {
        UnixName::Path(path) => UnixStream::connect(path).await,
        UnixName::Abstract(_) => {
            // Connecting a local socket does not wait for the peer, so the blocking call returns
            // at once (refused, or connected into the backlog).
            let addr = unix_socket_addr(name)?;
            let std = std::os::unix::net::UnixStream::connect_addr(&addr)?;
            std.set_nonblocking(true)?;
            UnixStream::from_std(std)
        }
    }
}

fn unix_peer(addr: &tokio::net::unix::SocketAddr) -> PeerAddr {
    PeerAddr::Unix(addr.as_pathname().map(|p| p.to_path_buf()))
}

/// A listening stream socket: TCP or unix.
#[derive(Debug)]
pub enum Listener {
    /// A TCP listener.
    Tcp(TcpListener),
    /// A unix stream listener, and the name it was bound to.
    Unix(UnixListener, UnixName),
}

impl Listener {
    /// Accepts one connection.
    pub async fn accept(&self) -> io::Result<(Conn, PeerAddr)> {
        match self {
            Listener::Tcp(l) => {
                let (stream, addr) = l.accept().await?;
                Ok((Conn::Tcp(stream), PeerAddr::Inet(addr)))
            }
            Listener::Unix(l, _) => {
                let (stream, addr) = l.accept().await?;
                Ok((Conn::Unix(stream), unix_peer(&addr)))
            }
        }
    }

    /// The TCP address bound, for a TCP listener.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(..) => None,
        }
    }
}

/// An accepted or connected stream socket: TCP or unix.
#[derive(Debug)]
pub enum Conn {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A unix-socket connection.
    Unix(UnixStream),
}

impl Conn {
    /// Sends small writes at once (TCP only; a unix socket has no Nagle).
    pub fn set_nodelay(&self) {
        if let Conn::Tcp(s) = self {
            let _ = s.set_nodelay(true);
        }
    }

    /// One non-blocking write (for a refusal that must not wait).
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.try_write(buf),
            Conn::Unix(s) => s.try_write(buf),
        }
    }

    /// The local address, as a peer address (for the environment of a child, say).
    pub fn local_addr(&self) -> Option<PeerAddr> {
        match self {
            Conn::Tcp(s) => s.local_addr().ok().map(PeerAddr::Inet),
            Conn::Unix(s) => s.local_addr().ok().map(|a| unix_peer(&a)),
        }
    }

    /// Boxes the stream.
    pub fn boxed(self) -> BoxStream {
        match self {
            Conn::Tcp(s) => Box::new(s),
            Conn::Unix(s) => Box::new(s),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            Conn::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A server-side layer over each accepted connection, run inside the connection's own task
/// (under the server's handshake timeout) before the session starts: a TLS handshake, a hex
/// tap. An error closes that connection only, with one log line carrying the error's text.
pub trait Upgrade: Send + Sync + 'static {
    /// A short name for logs (`tls`, `hex`).
    fn name(&self) -> &str;

    /// Wraps `stream`, the connection of `peer`.
    fn upgrade(
        &self,
        stream: BoxStream,
        peer: &PeerInfo,
    ) -> BoxFuture<'static, io::Result<BoxStream>>;
}

impl fmt::Debug for dyn Upgrade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Runs `upgrades` in order over `stream`.
pub async fn upgrade_all(
    upgrades: &[Arc<dyn Upgrade>],
    mut stream: BoxStream,
    peer: &PeerInfo,
) -> io::Result<BoxStream> {
    for upgrade in upgrades {
        stream = upgrade
            .upgrade(stream, peer)
            .await
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", upgrade.name())))?;
    }
    Ok(stream)
}

/// A client-side layer over a connected stream (TLS, a hex tap).
pub trait ClientUpgrade: Send + Sync + 'static {
    /// A short name for errors and logs (`tls`, `hex`).
    fn name(&self) -> &str;

    /// Wraps `stream`, connected to `target` (the name the user typed: a host name for TLS
    /// verification and SNI, or a unix path).
    fn upgrade(&self, stream: BoxStream, target: &str)
    -> BoxFuture<'static, io::Result<BoxStream>>;
}

impl fmt::Debug for dyn ClientUpgrade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A way to reach a TCP target through something else (a SOCKS5 or HTTP CONNECT proxy).
pub trait Via: Send + Sync + 'static {
    /// Describes it for messages (`socks5 proxy 127.0.0.1:1080`).
    fn describe(&self) -> String;

    /// Connects to `host:port` through it; `host` is passed as typed (the proxy may resolve it).
    /// Also returns the local address of the connection to the proxy, if it has one.
    fn connect(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> BoxFuture<'static, io::Result<(BoxStream, Option<SocketAddr>)>>;
}

impl fmt::Debug for dyn Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Where and how a client connects, beyond the resolved TCP addresses it is given.
#[derive(Clone, Debug, Default)]
pub struct Dial {
    /// Connect to this unix socket instead of a TCP address.
    pub unix: Option<UnixName>,
    /// The host name (or address) and port as the user typed them: for TLS (SNI and
    /// verification) and for a proxy, which resolves the name itself.
    pub target: Option<(String, u16)>,
    /// Reach the TCP target through this.
    pub via: Option<Arc<dyn Via>>,
    /// Layers over the connected stream, in order (TLS first, then a hex tap).
    pub layers: Vec<Arc<dyn ClientUpgrade>>,
}

/// Why a [`Dial`] failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// Connecting failed.
    #[error("cannot connect to {target}: {error}")]
    Connect {
        /// What was being connected to.
        target: String,
        /// Why.
        error: io::Error,
    },
    /// Connecting took longer than the timeout.
    #[error("connecting to {target} timed out after {secs}s")]
    Timeout {
        /// What was being connected to.
        target: String,
        /// The timeout.
        secs: f64,
    },
    /// A layer (a TLS handshake) failed or timed out.
    #[error("{layer} with {target} failed: {error}")]
    Layer {
        /// The layer's name.
        layer: String,
        /// What was being connected to.
        target: String,
        /// Why.
        error: io::Error,
    },
}

impl Dial {
    /// Plain TCP: no unix socket, no proxy, no layers (the fast paths apply).
    pub fn is_plain(&self) -> bool {
        self.unix.is_none() && self.via.is_none() && self.layers.is_empty()
    }

    /// What a connection goes to, for messages.
    pub fn describe(&self, addrs: &[SocketAddr]) -> String {
        if let Some(name) = &self.unix {
            return format!("unix:{name}");
        }
        if let Some((host, port)) = &self.target {
            return format!("{host}:{port}");
        }
        match addrs.first() {
            Some(a) => a.to_string(),
            None => "nothing".to_owned(),
        }
    }

    /// The name layers verify against: the typed host, else the first address, else the path.
    fn layer_target(&self, peer: &PeerAddr) -> String {
        if let Some((host, _)) = &self.target {
            return host.clone();
        }
        if let Some(name) = &self.unix {
            return name.to_string();
        }
        match peer {
            PeerAddr::Inet(a) => a.ip().to_string(),
            PeerAddr::Unix(_) => String::new(),
        }
    }

    /// Connects: to the unix socket, or through the proxy, or to the first of `addrs` that
    /// answers; then runs the layers. Each step is bounded by `timeout`.
    pub async fn connect(
        &self,
        addrs: &[SocketAddr],
        timeout: Duration,
    ) -> Result<(BoxStream, PeerAddr), DialError> {
        let (stream, peer, _) = self.connect_local(addrs, timeout).await?;
        Ok((stream, peer))
    }

    /// [`Dial::connect`], also returning the local address of the socket under the layers
    /// (for a proxy: of the connection to it; none for an unbound unix socket).
    pub async fn connect_local(
        &self,
        addrs: &[SocketAddr],
        timeout: Duration,
    ) -> Result<(BoxStream, PeerAddr, Option<PeerAddr>), DialError> {
        let secs = timeout.as_secs_f64();
        let (mut stream, peer, local): (BoxStream, PeerAddr, Option<PeerAddr>) =
            if let Some(name) = &self.unix {
                let target = format!("unix:{name}");
                match tokio::time::timeout(timeout, connect_unix(name)).await {
                    Ok(Ok(s)) => (Box::new(s), PeerAddr::Unix(None), None),
                    Ok(Err(error)) => return Err(DialError::Connect { target, error }),
                    Err(_) => return Err(DialError::Timeout { target, secs }),
                }
            } else if let Some(via) = &self.via {
                let (host, port) = match &self.target {
                    Some((host, port)) => (host.clone(), *port),
                    None => match addrs.first() {
                        Some(a) => (a.ip().to_string(), a.port()),
                        None => {
                            return Err(DialError::Connect {
                                target: via.describe(),
                                error: io::Error::new(io::ErrorKind::InvalidInput, "no target"),
                            });
                        }
                    },
                };
                let target = format!("{host}:{port} via {}", via.describe());
                // The proxy's own connect and handshake are bounded inside; this bounds the whole.
                match tokio::time::timeout(timeout * 2, via.connect(&host, port, timeout)).await {
                    Ok(Ok((s, local))) => (s, PeerAddr::Unix(None), local.map(PeerAddr::Inet)),
                    Ok(Err(error)) => return Err(DialError::Connect { target, error }),
                    Err(_) => return Err(DialError::Timeout { target, secs }),
                }
            } else {
                let (s, addr) = connect_tcp_any(addrs, timeout).await?;
                let local = s.local_addr().ok().map(PeerAddr::Inet);
                (Box::new(s), PeerAddr::Inet(addr), local)
            };
        if !self.layers.is_empty() {
            let target = self.layer_target(&peer);
            for layer in &self.layers {
                stream = match tokio::time::timeout(timeout, layer.upgrade(stream, &target)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(error)) => {
                        return Err(DialError::Layer {
                            layer: layer.name().to_owned(),
                            target,
                            error,
                        });
                    }
                    Err(_) => {
                        return Err(DialError::Layer {
                            layer: layer.name().to_owned(),
                            target,
                            error: io::Error::new(
                                io::ErrorKind::TimedOut,
                                format!(
                                    "no answer within {secs}s (does the server speak {}?)",
                                    layer.name()
                                ),
                            ),
                        });
                    }
                };
            }
        }
        Ok((stream, peer, local))
    }
}

/// Connects to the first of `addrs` that answers within `timeout` each, with `TCP_NODELAY`.
pub async fn connect_tcp_any(
    addrs: &[SocketAddr],
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), DialError> {
    let mut last = None;
    for &addr in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok((stream, addr));
            }
            Ok(Err(error)) => {
                last = Some(DialError::Connect {
                    target: addr.to_string(),
                    error,
                })
            }
            Err(_) => {
                last = Some(DialError::Timeout {
                    target: addr.to_string(),
                    secs: timeout.as_secs_f64(),
                })
            }
        }
    }
    Err(last.unwrap_or_else(|| DialError::Connect {
        target: "nothing".to_owned(),
        error: io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to"),
    }))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn abstract_unix_listener_and_dial_talk() {
        let name = UnixName::Abstract(format!("sockit-test-{}", std::process::id()));
        let listener = Listener::Unix(bind_unix_listener(&name).unwrap(), name.clone());
        let dial = Dial {
            unix: Some(name),
            ..Dial::default()
        };
        let client = tokio::spawn(async move {
            let (mut s, _) = dial.connect(&[], Duration::from_secs(2)).await.unwrap();
            s.write_all(b"ping").await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            buf
        });
        let (mut conn, peer) = listener.accept().await.unwrap();
        assert_eq!(peer, PeerAddr::Unix(None));
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).await.unwrap();
        conn.write_all(b"pong").await.unwrap();
        assert_eq!(&client.await.unwrap(), b"pong");
    }

    /// Fails the first connection's layer, passes every later one through.
    struct FailFirst;

    impl Upgrade for FailFirst {
        fn name(&self) -> &str {
            "failfirst"
        }

        fn upgrade(
            &self,
            stream: BoxStream,
            peer: &PeerInfo,
        ) -> BoxFuture<'static, io::Result<BoxStream>> {
            let first = peer.id == 1;
            Box::pin(async move {
                if first {
                    Err(io::Error::other("refused by the test"))
                } else {
                    Ok(stream)
                }
            })
        }
    }

    #[tokio::test]
    async fn a_unix_server_with_a_layer_closes_only_the_connection_whose_layer_failed() {
        use crate::server::{Server, ServerConfig};
        let dir = tempfile::tempdir().unwrap();
        let name = UnixName::Path(dir.path().join("echo.sock"));
        let config = ServerConfig {
            upgrades: vec![Arc::new(FailFirst)],
            ..ServerConfig::default()
        };
        let server = Server::bind_unix(&name, config, crate::service::echo::Echo).unwrap();
        assert_eq!(server.unix_name(), Some(&name));
        let stop = tokio_util::sync::CancellationToken::new();
        let running = tokio::spawn(server.run(stop.clone()));
        let dial = Dial {
            unix: Some(name),
            ..Dial::default()
        };
        let (mut first, _) = dial.connect(&[], Duration::from_secs(2)).await.unwrap();
        let mut buf = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(2), first.read_to_end(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "the failed connection is closed without a word");
        let (mut second, _) = dial.connect(&[], Duration::from_secs(2)).await.unwrap();
        second.write_all(b"hello\n").await.unwrap();
        let mut line = [0u8; 6];
        tokio::time::timeout(Duration::from_secs(2), second.read_exact(&mut line))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&line, b"hello\n");
        drop(second);
        stop.cancel();
        let report = running.await.unwrap();
        assert_eq!(report.connections, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_client_byte_pipe_and_framed_client_work_over_a_unix_socket() {
        use crate::client::{self, ClientConfig, Input};
        use crate::server::{Server, ServerConfig};
        use std::io::{Read, Seek};
        let dir = tempfile::tempdir().unwrap();
        let name = UnixName::Path(dir.path().join("echo.sock"));
        let server =
            Server::bind_unix(&name, ServerConfig::default(), crate::service::echo::Echo).unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let running = tokio::spawn(server.run(stop.clone()));
        let config = ClientConfig {
            dial: Dial {
                unix: Some(name),
                ..Dial::default()
            },
            ..ClientConfig::default()
        };
        let input = std::io::Cursor::new(b"one\ntwo\n".to_vec());
        let mut output = tempfile::tempfile().unwrap();
        let summary = client::pipe(&[], &config, input, output.try_clone().unwrap())
            .await
            .unwrap();
        assert_eq!((summary.sent, summary.received), (8, 8));
        output.rewind().unwrap();
        let mut text = String::new();
        output.read_to_string(&mut text).unwrap();
        assert_eq!(text, "one\ntwo\n");

        let input = Input::Messages(vec![bytes::Bytes::from_static(b"three")]);
        let summary = client::run(&[], &config, input, tokio::io::sink())
            .await
            .unwrap();
        assert_eq!(summary.received, 1);
        stop.cancel();
        running.await.unwrap();
    }

    #[tokio::test]
    async fn dial_reports_the_unix_path_it_could_not_reach() {
        let dir = tempfile::tempdir().unwrap();
        let dial = Dial {
            unix: Some(UnixName::Path(dir.path().join("nobody"))),
            ..Dial::default()
        };
        let err = dial
            .connect(&[], Duration::from_secs(1))
            .await
            .err()
            .unwrap();
        let text = err.to_string();
        assert!(text.contains("nobody"), "{text}");
    }
}
