//! Reaching a target through a proxy: a SOCKS5 client (RFC 1928, with RFC 1929
//! username/password) and an HTTP `CONNECT` client, behind `sockit connect --proxy URL`.
//!
//! The proxy URL is `socks5://[USER:PASS@]HOST[:PORT]` (port 1080 by default), `socks5h://…`
//! (the same; the `h` only says explicitly that the proxy resolves the target's name) or
//! `http://[USER:PASS@]HOST:PORT`. By default the target's *name* is sent to the proxy, which
//! resolves it ([`ProxyDns::Remote`]); [`ProxyDns::Local`] resolves it here and sends an
//! address instead. Both handshakes read exactly what they need, with a deadline, and map
//! every failure to a [`ProxyError`] whose message says what the proxy answered.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::net::{Host, parse_host, parse_port};

/// The port of a `socks5://` URL without one (the IANA `socks` port).
pub const SOCKS_DEFAULT_PORT: u16 = 1080;
/// The most header bytes an HTTP proxy may send before its blank line.
pub const MAX_HTTP_HEADER: usize = 16 * 1024;

/// The proxy protocols.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyKind {
    /// SOCKS version 5 (`socks5://`, `socks5h://`).
    Socks5,
    /// HTTP `CONNECT` (`http://`).
    HttpConnect,
}

impl fmt::Display for ProxyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProxyKind::Socks5 => "socks5",
            ProxyKind::HttpConnect => "http",
        })
    }
}

/// Who resolves the target's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ProxyDns {
    /// The proxy (the name is sent as typed; the default).
    #[default]
    Remote,
    /// This machine (the first resolved address is sent).
    Local,
}

impl FromStr for ProxyDns {
    type Err = String;

    fn from_str(s: &str) -> Result<ProxyDns, String> {
        match s.to_ascii_lowercase().as_str() {
            "remote" => Ok(ProxyDns::Remote),
            "local" => Ok(ProxyDns::Local),
            _ => Err(format!("{s:?} is not remote or local")),
        }
    }
}

/// A user name and password for the proxy.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub user: String,
    /// The password.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"…")
            .finish()
    }
}

/// A parsed `--proxy` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxySpec {
    /// The protocol.
    pub kind: ProxyKind,
    /// The proxy's host.
    pub host: Host,
    /// The proxy's port.
    pub port: u16,
    /// Credentials from the URL's `USER:PASS@` part.
    pub auth: Option<Credentials>,
}

impl fmt::Display for ProxySpec {
    /// The URL without the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.kind)?;
        if let Some(auth) = &self.auth {
            write!(f, "{}@", auth.user)?;
        }
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl FromStr for ProxySpec {
    type Err = String;

    /// Parses `socks5://[USER:PASS@]HOST[:PORT]`, `socks5h://…` or `http://[USER:PASS@]HOST:PORT`.
    /// The user and password may be percent-encoded (`%40` for `@`).
    fn from_str(url: &str) -> Result<ProxySpec, String> {
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            format!(
                "{url:?} is not a proxy URL: expected socks5://HOST:PORT, socks5h://HOST:PORT or http://HOST:PORT"
            )
        })?;
        let kind = match scheme.to_ascii_lowercase().as_str() {
            "socks5" | "socks5h" => ProxyKind::Socks5,
            "http" => ProxyKind::HttpConnect,
            other => {
                return Err(format!(
                    "proxy scheme {other:?} is not supported: use socks5://, socks5h:// or http://"
                ));
            }
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('?') || rest.contains('#') {
            return Err(format!(
                "{url:?}: a proxy URL has no path, only [USER:PASS@]HOST:PORT"
            ));
        }
        let (auth, hostport) = match rest.rsplit_once('@') {
            Some((userinfo, hostport)) => {
                let (user, password) = userinfo
                    .split_once(':')
                    .ok_or_else(|| format!("{url:?}: the part before @ must be USER:PASSWORD"))?;
                let user = percent_decode(user)
                    .ok_or_else(|| format!("{url:?}: bad percent-encoding in the user name"))?;
                let password = percent_decode(password)
                    .ok_or_else(|| format!("{url:?}: bad percent-encoding in the password"))?;
                if kind == ProxyKind::Socks5 {
                    // RFC 1929: each is 1 to 255 bytes.
                    if user.is_empty() || user.len() > 255 {
                        return Err(format!(
                            "{url:?}: a SOCKS5 user name must be 1 to 255 bytes"
                        ));
                    }
                    if password.is_empty() || password.len() > 255 {
                        return Err(format!("{url:?}: a SOCKS5 password must be 1 to 255 bytes"));
                    }
                }
                (Some(Credentials { user, password }), hostport)
            }
            None => (None, rest),
        };
        let (host, port) =
            split_host_port(hostport).map_err(|reason| format!("{url:?}: {reason}"))?;
        let port = match (port, kind) {
            (Some(p), _) => parse_port(p).map_err(|e| format!("{url:?}: {e}"))?,
            (None, ProxyKind::Socks5) => SOCKS_DEFAULT_PORT,
            (None, ProxyKind::HttpConnect) => {
                return Err(format!(
                    "{url:?}: an http proxy URL needs a port (HOST:PORT)"
                ));
            }
        };
        if port == 0 {
            return Err(format!("{url:?}: the proxy port cannot be 0"));
        }
        let host = parse_host(host).map_err(|e| format!("{url:?}: {e}"))?;
        Ok(ProxySpec {
            kind,
            host,
            port,
            auth,
        })
    }
}

/// Splits `HOST[:PORT]` or `[V6][:PORT]`.
fn split_host_port(s: &str) -> Result<(&str, Option<&str>), &'static str> {
    if s.is_empty() {
        return Err("no proxy host");
    }
    if let Some(inner) = s.strip_prefix('[') {
        let (host, after) = inner
            .split_once(']')
            .ok_or("an IPv6 address needs its closing ]")?;
        return match after {
            "" => Ok((host, None)),
            _ => after
                .strip_prefix(':')
                .map(|p| (host, Some(p)))
                .ok_or("expected :PORT after ]"),
        };
    }
    match s.rsplit_once(':') {
        Some((host, _)) if host.contains(':') => {
            Err("write an IPv6 proxy address in brackets: [ADDR]:PORT")
        }
        Some((host, port)) => Ok((host, Some(port))),
        None => Ok((s, None)),
    }
}

/// Decodes `%XX` escapes; `None` for a broken escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// What went wrong reaching the target through a proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The proxy itself could not be reached.
    #[error("cannot connect to the {kind} proxy {proxy}: {source}")]
    Connect {
        /// The protocol.
        kind: ProxyKind,
        /// The proxy as `HOST:PORT`.
        proxy: String,
        /// Why.
        source: io::Error,
    },
    /// Reading from or writing to the proxy failed (it closed the connection, say).
    #[error("{kind} proxy handshake failed: {source}")]
    Io {
        /// The protocol.
        kind: ProxyKind,
        /// Why.
        source: io::Error,
    },
    /// The proxy took longer than the deadline to connect and answer.
    #[error("{kind} proxy {proxy} did not complete the handshake within {secs:.1} s")]
    Timeout {
        /// The protocol.
        kind: ProxyKind,
        /// The proxy as `HOST:PORT`.
        proxy: String,
        /// The deadline.
        secs: f64,
    },
    /// The peer does not speak the protocol (a wrong version byte, a garbled status line).
    #[error("{kind} proxy answered something that is not {kind}: {what}")]
    Protocol {
        /// The protocol.
        kind: ProxyKind,
        /// What was wrong.
        what: String,
    },
    /// The SOCKS5 proxy accepts none of the authentication methods offered.
    #[error("socks5 proxy accepts none of the offered authentication methods ({offered})")]
    NoAcceptableAuth {
        /// The methods offered, in words.
        offered: &'static str,
    },
    /// The SOCKS5 proxy wants a user name and password, and the URL has none.
    #[error("socks5 proxy requires a user name and password: use socks5://USER:PASS@HOST:PORT")]
    AuthRequired,
    /// The proxy refused the user name or password.
    #[error("{kind} proxy refused the user name or password{detail}")]
    AuthFailed {
        /// The protocol.
        kind: ProxyKind,
        /// Empty, or `: ` and what the proxy said.
        detail: String,
    },
    /// The SOCKS5 proxy answered the CONNECT request with a failure code.
    #[error("socks5 proxy could not connect to {target}: {} (reply {code})", socks5_reply_text(*.code))]
    Socks5Reply {
        /// The target as sent.
        target: String,
        /// The REP field (1-255).
        code: u8,
    },
    /// The HTTP proxy answered CONNECT with a non-2xx status.
    #[error("http proxy could not connect to {target}: {status}")]
    HttpStatus {
        /// The target as sent.
        target: String,
        /// The status code and text, as the proxy wrote them (`502 Bad Gateway`).
        status: String,
    },
    /// The HTTP proxy's answer header grew past [`MAX_HTTP_HEADER`] bytes.
    #[error("http proxy answer header exceeds {MAX_HTTP_HEADER} bytes")]
    HeaderTooLarge,
    /// The target cannot be expressed in the protocol (a name longer than 255 bytes).
    #[error("target {target} cannot be sent to a socks5 proxy: {why}")]
    BadTarget {
        /// The target.
        target: String,
        /// Why.
        why: &'static str,
    },
    /// `--proxy-dns local` could not resolve the target.
    #[error("{0}")]
    Resolve(io::Error),
}

impl ProxyError {
    /// The closest `io::ErrorKind`, for callers that speak `io::Error`.
    pub fn io_kind(&self) -> io::ErrorKind {
        match self {
            ProxyError::Connect { source, .. } | ProxyError::Io { source, .. } => source.kind(),
            ProxyError::Resolve(e) => e.kind(),
            ProxyError::Timeout { .. } => io::ErrorKind::TimedOut,
            ProxyError::AuthRequired
            | ProxyError::AuthFailed { .. }
            | ProxyError::NoAcceptableAuth { .. } => io::ErrorKind::PermissionDenied,
            ProxyError::Socks5Reply { code: 5, .. } => io::ErrorKind::ConnectionRefused,
            ProxyError::Socks5Reply { code: 6, .. } => io::ErrorKind::TimedOut,
            ProxyError::BadTarget { .. } => io::ErrorKind::InvalidInput,
            _ => io::ErrorKind::Other,
        }
    }
}

impl From<ProxyError> for io::Error {
    fn from(e: ProxyError) -> io::Error {
        io::Error::new(e.io_kind(), e.to_string())
    }
}

/// The words for a SOCKS5 reply code (RFC 1928 section 6).
pub fn socks5_reply_text(code: u8) -> &'static str {
    match code {
        0 => "succeeded",
        1 => "general SOCKS server failure",
        2 => "connection not allowed by the proxy's rules",
        3 => "network unreachable",
        4 => "host unreachable",
        5 => "connection refused",
        6 => "TTL expired (the target did not answer in time)",
        7 => "command not supported",
        8 => "address type not supported",
        _ => "unassigned failure code",
    }
}

/// Where the proxy should connect: a name (resolved by the proxy) or an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The target host, as typed.
    pub host: Host,
    /// The target port.
    pub port: u16,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// A stream that first yields bytes already read from the proxy past its answer, then the
/// connection itself (an HTTP proxy may send the target's first bytes with its header).
#[derive(Debug)]
pub struct ProxyStream<S = TcpStream> {
    early: BytesMut,
    inner: S,
}

impl<S> ProxyStream<S> {
    /// The underlying connection to the proxy.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// How many early bytes are still waiting to be read.
    pub fn early_len(&self) -> usize {
        self.early.len()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ProxyStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.early.is_empty() {
            let n = self.early.len().min(buf.remaining());
            buf.put_slice(&self.early[..n]);
            self.early.advance(n);
            if self.early.is_empty() {
                self.early = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ProxyStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A proxy to dial through: the URL plus who resolves target names.
#[derive(Clone, Debug)]
pub struct Proxy {
    /// The parsed URL.
    pub spec: ProxySpec,
    /// Who resolves the target's name.
    pub dns: ProxyDns,
}

impl Proxy {
    /// A proxy from its parsed URL, resolving target names remotely.
    pub fn new(spec: ProxySpec) -> Proxy {
        Proxy {
            spec,
            dns: ProxyDns::Remote,
        }
    }

    /// Connects to the proxy and asks it for `target`; the whole of it (resolving the proxy's
    /// name, connecting, the handshake) within `timeout`.
    pub async fn connect(
        &self,
        target: &Target,
        timeout: Duration,
    ) -> Result<ProxyStream<TcpStream>, ProxyError> {
        let proxy = format!("{}:{}", self.spec.host, self.spec.port);
        let kind = self.spec.kind;
        match tokio::time::timeout(timeout, self.connect_inner(target, &proxy)).await {
            Ok(result) => result,
            Err(_) => Err(ProxyError::Timeout {
                kind,
                proxy,
                secs: timeout.as_secs_f64(),
            }),
        }
    }

    async fn connect_inner(
        &self,
        target: &Target,
        proxy: &str,
    ) -> Result<ProxyStream<TcpStream>, ProxyError> {
        let kind = self.spec.kind;
        let target = match (self.dns, &target.host) {
            (ProxyDns::Local, Host::Name(_)) => {
                let addrs = crate::net::resolve(&target.host, target.port)
                    .await
                    .map_err(ProxyError::Resolve)?;
                Target {
                    host: Host::Ip(addrs[0].ip()),
                    port: target.port,
                }
            }
            _ => target.clone(),
        };
        let connect_err = |source| ProxyError::Connect {
            kind,
            proxy: proxy.to_owned(),
            source,
        };
        let addrs = crate::net::resolve(&self.spec.host, self.spec.port)
            .await
            .map_err(connect_err)?;
        let mut last = None;
        let mut stream = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let mut stream = match stream {
            Some(s) => s,
            None => {
                return Err(connect_err(last.unwrap_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, "no address")
                })));
            }
        };
        let _ = stream.set_nodelay(true);
        match kind {
            ProxyKind::Socks5 => {
                socks5_handshake(&mut stream, &target, self.spec.auth.as_ref()).await?;
                Ok(ProxyStream {
                    early: BytesMut::new(),
                    inner: stream,
                })
            }
            ProxyKind::HttpConnect => http_connect(stream, &target, self.spec.auth.as_ref()).await,
        }
    }
}

impl crate::transport::stream::Via for Proxy {
    fn describe(&self) -> String {
        format!(
            "{} proxy {}:{}",
            self.spec.kind, self.spec.host, self.spec.port
        )
    }

    fn connect(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> crate::transport::stream::BoxFuture<
        'static,
        io::Result<(
            crate::transport::stream::BoxStream,
            Option<std::net::SocketAddr>,
        )>,
    > {
        let host = parse_host(host).unwrap_or_else(|_| Host::Name(host.to_owned()));
        let target = Target { host, port };
        let proxy = self.clone();
        Box::pin(async move {
            let stream = Proxy::connect(&proxy, &target, timeout).await?;
            let local = stream.get_ref().local_addr().ok();
            let stream: crate::transport::stream::BoxStream = Box::new(stream);
            Ok((stream, local))
        })
    }
}

/// Runs the SOCKS5 greeting, optional RFC 1929 login and CONNECT on `stream`. It reads exactly
/// the proxy's answers, so the stream carries the target's bytes when it returns `Ok`.
pub async fn socks5_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    target: &Target,
    auth: Option<&Credentials>,
) -> Result<(), ProxyError> {
    const KIND: ProxyKind = ProxyKind::Socks5;
    let io = |source| ProxyError::Io { kind: KIND, source };
    let protocol = |what: String| ProxyError::Protocol { kind: KIND, what };
    let request = socks5_request(target)?;

    // Greeting: version 5 and the methods offered (0 = none, 2 = username/password).
    let (greeting, offered): (&[u8], _) = match auth {
        Some(_) => (&[5, 2, 0, 2], "no authentication, username/password"),
        None => (&[5, 1, 0], "no authentication"),
    };
    stream.write_all(greeting).await.map_err(io)?;
    let mut choice = [0u8; 2];
    stream.read_exact(&mut choice).await.map_err(io)?;
    if choice[0] != 5 {
        return Err(protocol(format!(
            "version byte {} in the method choice (a SOCKS5 proxy answers 5)",
            choice[0]
        )));
    }
    match (choice[1], auth) {
        (0, _) => {}
        (2, Some(creds)) => {
            let mut login = Vec::with_capacity(3 + creds.user.len() + creds.password.len());
            login.push(1);
            login.push(creds.user.len() as u8);
            login.extend_from_slice(creds.user.as_bytes());
            login.push(creds.password.len() as u8);
            login.extend_from_slice(creds.password.as_bytes());
            stream.write_all(&login).await.map_err(io)?;
            let mut status = [0u8; 2];
            stream.read_exact(&mut status).await.map_err(io)?;
            if status[1] != 0 {
                return Err(ProxyError::AuthFailed {
                    kind: KIND,
                    detail: String::new(),
                });
            }
        }
        (2, None) => return Err(ProxyError::AuthRequired),
        (0xff, None) => {
            return Err(ProxyError::NoAcceptableAuth {
                offered: "no authentication; if it needs a password, use socks5://USER:PASS@HOST:PORT",
            });
        }
        (0xff, Some(_)) => return Err(ProxyError::NoAcceptableAuth { offered }),
        (other, _) => {
            return Err(protocol(format!(
                "it chose authentication method {other}, which was not offered"
            )));
        }
    }

    stream.write_all(&request).await.map_err(io)?;
    let mut head = [0u8; 4];
    stream.read_exact(&mut head).await.map_err(io)?;
    if head[0] != 5 {
        return Err(protocol(format!(
            "version byte {} in the CONNECT reply",
            head[0]
        )));
    }
    if head[1] != 0 {
        return Err(ProxyError::Socks5Reply {
            target: target.to_string(),
            code: head[1],
        });
    }
    // The bound address, which the client has no use for but must consume.
    let len = match head[3] {
        1 => 4,
        4 => 16,
        3 => {
            let mut n = [0u8; 1];
            stream.read_exact(&mut n).await.map_err(io)?;
            n[0] as usize
        }
        other => {
            return Err(protocol(format!(
                "address type {other} in the CONNECT reply"
            )));
        }
    };
    let mut bound = [0u8; 255 + 2];
    stream.read_exact(&mut bound[..len + 2]).await.map_err(io)?;
    Ok(())
}

/// The SOCKS5 CONNECT request for `target`: ATYP 3 (a name) or 1/4 (an address).
fn socks5_request(target: &Target) -> Result<Vec<u8>, ProxyError> {
    let mut req = vec![5, 1, 0];
    match &target.host {
        Host::Ip(IpAddr::V4(ip)) => {
            req.push(1);
            req.extend_from_slice(&ip.octets());
        }
        Host::Ip(IpAddr::V6(ip)) => {
            req.push(4);
            req.extend_from_slice(&ip.octets());
        }
        Host::Name(name) => {
            if name.is_empty() || name.len() > 255 {
                return Err(ProxyError::BadTarget {
                    target: target.to_string(),
                    why: "a name must be 1 to 255 bytes",
                });
            }
            req.push(3);
            req.push(name.len() as u8);
            req.extend_from_slice(name.as_bytes());
        }
    }
    req.extend_from_slice(&target.port.to_be_bytes());
    Ok(req)
}

/// Sends `CONNECT target HTTP/1.1` on `stream` and reads the answer header (at most
/// [`MAX_HTTP_HEADER`] bytes). On a 2xx status, returns the stream with any bytes that came
/// after the header kept in front of it.
pub async fn http_connect<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    target: &Target,
    auth: Option<&Credentials>,
) -> Result<ProxyStream<S>, ProxyError> {
    const KIND: ProxyKind = ProxyKind::HttpConnect;
    let io = |source| ProxyError::Io { kind: KIND, source };
    let authority = target.to_string();
    let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(creds) = auth {
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", creds.user, creds.password));
        request.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.map_err(io)?;

    let mut buf = BytesMut::with_capacity(1024);
    let end = loop {
        if let Some(end) = header_end(&buf) {
            break end;
        }
        if buf.len() >= MAX_HTTP_HEADER {
            return Err(ProxyError::HeaderTooLarge);
        }
        let room = MAX_HTTP_HEADER + 4 - buf.len();
        let mut chunk = [0u8; 4096];
        let take = room.min(chunk.len());
        let n = stream.read(&mut chunk[..take]).await.map_err(io)?;
        if n == 0 {
            return Err(io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                if buf.is_empty() {
                    "the proxy closed the connection without answering".to_owned()
                } else {
                    "the proxy closed the connection in the middle of its answer".to_owned()
                },
            )));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if end > MAX_HTTP_HEADER {
        return Err(ProxyError::HeaderTooLarge);
    }
    let header = buf.split_to(end);
    let status =
        parse_status_line(&header).map_err(|what| ProxyError::Protocol { kind: KIND, what })?;
    match status.0 {
        200..=299 => Ok(ProxyStream {
            early: buf,
            inner: stream,
        }),
        407 => Err(ProxyError::AuthFailed {
            kind: KIND,
            detail: format!(
                ": {}{}",
                status.1,
                if auth.is_none() {
                    " (the URL has no USER:PASS@)"
                } else {
                    ""
                }
            ),
        }),
        _ => Err(ProxyError::HttpStatus {
            target: authority,
            status: status.1,
        }),
    }
}

/// Where the header ends (just after its blank line), accepting bare `\n` line ends too.
fn header_end(buf: &[u8]) -> Option<usize> {
    let crlf = memchr::memmem::find(buf, b"\r\n\r\n").map(|i| i + 4);
    let lf = memchr::memmem::find(buf, b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Parses `HTTP/1.x NNN reason` into the code and `NNN reason` (control characters removed).
fn parse_status_line(header: &[u8]) -> Result<(u16, String), String> {
    let line_end = memchr::memchr(b'\n', header).unwrap_or(header.len());
    let line = &header[..line_end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line: String = String::from_utf8_lossy(line)
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(200)
        .collect();
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("status line {line:?} (expected HTTP/1.x NNN …)"));
    }
    let code_text = parts.next().unwrap_or_default();
    let code = match code_text.parse::<u16>() {
        Ok(c) if code_text.len() == 3 && (100..=999).contains(&c) => c,
        _ => return Err(format!("status line {line:?} has no 3-digit status code")),
    };
    let reason = parts.next().unwrap_or("").trim();
    let status = if reason.is_empty() {
        code.to_string()
    } else {
        format!("{code} {reason}")
    };
    Ok((code, status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    fn name(host: &str, port: u16) -> Target {
        Target {
            host: Host::Name(host.into()),
            port,
        }
    }

    #[test]
    fn urls_parse() {
        let p: ProxySpec = "socks5://127.0.0.1:1080".parse().unwrap();
        assert_eq!(p.kind, ProxyKind::Socks5);
        assert_eq!(p.port, 1080);
        assert!(p.auth.is_none());
        let p: ProxySpec = "socks5h://u%40x:p%3Aw@proxy.example".parse().unwrap();
        assert_eq!(p.port, SOCKS_DEFAULT_PORT);
        assert_eq!(
            p.auth,
            Some(Credentials {
                user: "u@x".into(),
                password: "p:w".into()
            })
        );
        assert_eq!(p.to_string(), "socks5://u@x@proxy.example:1080");
        let p: ProxySpec = "HTTP://[::1]:3128/".parse().unwrap();
        assert_eq!(p.kind, ProxyKind::HttpConnect);
        assert_eq!(p.host, Host::Ip("::1".parse().unwrap()));
        assert_eq!(p.port, 3128);
        for bad in [
            "127.0.0.1:1080",
            "socks4://h:1",
            "https://h:1",
            "http://h",
            "socks5://h:0",
            "socks5://h:99999",
            "socks5://:1080",
            "socks5://user@h:1",
            "socks5://:pw@h:1",
            "socks5://u:%zz@h:1",
            "socks5://::1:1080",
            "http://h:1/path",
        ] {
            assert!(bad.parse::<ProxySpec>().is_err(), "{bad} should be refused");
        }
    }

    /// A fake proxy: for each step, reads exactly what the client should send, then answers.
    async fn fake(
        mut server: tokio::io::DuplexStream,
        steps: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> tokio::io::DuplexStream {
        for (expect, answer) in steps {
            let mut got = vec![0u8; expect.len()];
            server.read_exact(&mut got).await.unwrap();
            assert_eq!(got, expect);
            server.write_all(&answer).await.unwrap();
        }
        server
    }

    #[tokio::test]
    async fn socks5_sends_the_name_and_reads_exactly_the_reply() {
        let (mut client, server) = duplex(1024);
        let mut request = vec![5, 1, 0, 3, 9];
        request.extend_from_slice(b"localhost");
        request.extend_from_slice(&80u16.to_be_bytes());
        // A reply with a domain-name BND.ADDR, then the target's first bytes.
        let mut reply = vec![5, 0, 0, 3, 4];
        reply.extend_from_slice(b"host\x00\x50hello");
        let steps = vec![(vec![5, 1, 0], vec![5, 0]), (request, reply)];
        let task = tokio::spawn(fake(server, steps));
        socks5_handshake(&mut client, &name("localhost", 80), None)
            .await
            .unwrap();
        let mut rest = [0u8; 5];
        client.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"hello");
        drop(task.await.unwrap());
    }

    #[tokio::test]
    async fn socks5_reply_codes_become_clear_errors() {
        for code in 1..=9u8 {
            let (mut client, server) = duplex(1024);
            let mut request = vec![5, 1, 0, 1, 127, 0, 0, 1];
            request.extend_from_slice(&9u16.to_be_bytes());
            let reply = vec![5, code, 0, 1, 0, 0, 0, 0, 0, 0];
            let steps = vec![(vec![5, 1, 0], vec![5, 0]), (request, reply)];
            let task = tokio::spawn(fake(server, steps));
            let target = Target {
                host: Host::Ip("127.0.0.1".parse().unwrap()),
                port: 9,
            };
            let err = socks5_handshake(&mut client, &target, None)
                .await
                .unwrap_err();
            let text = err.to_string();
            assert!(text.contains(socks5_reply_text(code)), "{text}");
            assert!(text.contains("127.0.0.1:9"), "{text}");
            assert!(text.contains(&format!("reply {code}")), "{text}");
            drop(task.await.unwrap());
        }
    }

    #[tokio::test]
    async fn socks5_malformed_answers_are_refused() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"HTTP/1.1 400 Bad\r\n".to_vec(), "not socks5"),
            (vec![5, 0xff], "accepts none of the offered"),
            (vec![5, 2], "requires a user name"),
            (vec![5, 7], "not offered"),
            (vec![5, 0, 4, 0, 0, 1], "version byte 4"),
            (vec![5, 0, 5, 0, 0, 9, 0, 0], "address type 9"),
            (vec![5, 0, 5, 0, 0, 1, 1, 2], "handshake failed"),
            (vec![5], "handshake failed"),
        ];
        for (answer, want) in cases {
            let (mut client, server) = duplex(4096);
            answer_then_eof(server, answer.clone());
            let err = socks5_handshake(&mut client, &name("a.example", 1), None)
                .await
                .unwrap_err();
            assert!(err.to_string().contains(want), "{answer:?}: {err}");
        }
    }

    /// Writes `answer`, ends the fake's writing side (the client reads EOF after it), and keeps
    /// reading what the client sends so its writes never fail.
    fn answer_then_eof(mut server: tokio::io::DuplexStream, answer: Vec<u8>) {
        tokio::spawn(async move {
            server.write_all(&answer).await.unwrap();
            server.shutdown().await.unwrap();
            let mut sink = [0u8; 4096];
            while let Ok(n) = server.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        });
    }

    #[tokio::test]
    async fn socks5_login_is_rfc1929_and_a_refusal_is_clear() {
        let creds = Credentials {
            user: "al".into(),
            password: "pw".into(),
        };
        let (mut client, server) = duplex(1024);
        let steps = vec![
            (vec![5, 2, 0, 2], vec![5, 2]),
            (vec![1, 2, b'a', b'l', 2, b'p', b'w'], vec![1, 1]),
        ];
        let task = tokio::spawn(fake(server, steps));
        let err = socks5_handshake(&mut client, &name("x", 1), Some(&creds))
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::AuthFailed { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("refused the user name or password")
        );
        drop(task.await.unwrap());
    }

    #[tokio::test]
    async fn socks5_names_longer_than_255_bytes_are_refused_before_sending() {
        let (mut client, _server) = duplex(64);
        let long = "a".repeat(256);
        let err = socks5_handshake(&mut client, &name(&long, 1), None)
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::BadTarget { .. }), "{err}");
    }

    #[tokio::test]
    async fn http_connect_keeps_bytes_after_the_header() {
        let (client, server) = duplex(4096);
        let creds = Credentials {
            user: "u".into(),
            password: "p".into(),
        };
        let task = tokio::spawn(async move {
            let mut server = server;
            let mut got = Vec::new();
            let mut buf = [0u8; 256];
            while header_end(&got).is_none() {
                let n = server.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            server
                .write_all(b"HTTP/1.1 200 Connection established\r\nX: y\r\n\r\nearly")
                .await
                .unwrap();
            (server, got)
        });
        let mut stream = http_connect(client, &name("localhost", 7), Some(&creds))
            .await
            .unwrap();
        let mut early = [0u8; 5];
        stream.read_exact(&mut early).await.unwrap();
        assert_eq!(&early, b"early");
        let (_server, got) = task.await.unwrap();
        assert_eq!(
            String::from_utf8(got).unwrap(),
            "CONNECT localhost:7 HTTP/1.1\r\nHost: localhost:7\r\n\
             Proxy-Authorization: Basic dTpw\r\n\r\n"
        );
    }

    async fn http_answer(answer: &[u8]) -> ProxyError {
        let (client, server) = duplex(64 * 1024);
        answer_then_eof(server, answer.to_vec());
        http_connect(client, &name("t.example", 80), None)
            .await
            .unwrap_err()
    }

    #[tokio::test]
    async fn http_connect_failures_are_clear() {
        let err = http_answer(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
        assert_eq!(
            err.to_string(),
            "http proxy could not connect to t.example:80: 502 Bad Gateway"
        );
        let err = http_answer(b"HTTP/1.0 407 Proxy Authentication Required\r\n\r\n").await;
        assert!(matches!(err, ProxyError::AuthFailed { .. }), "{err}");
        assert!(err.to_string().contains("407"), "{err}");
        let err = http_answer(b"SSH-2.0-OpenSSH\r\n\r\n").await;
        assert!(matches!(err, ProxyError::Protocol { .. }), "{err}");
        let err = http_answer(b"HTTP/1.1 2000 OK\r\n\r\n").await;
        assert!(matches!(err, ProxyError::Protocol { .. }), "{err}");
        let err = http_answer(b"HTTP/1.1 200 OK\r\n").await;
        assert!(matches!(err, ProxyError::Io { .. }), "{err}");
        let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
        while huge.len() < MAX_HTTP_HEADER + 100 {
            huge.extend_from_slice(b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        huge.extend_from_slice(b"\r\n");
        let err = http_answer(&huge).await;
        assert!(matches!(err, ProxyError::HeaderTooLarge), "{err}");
    }

    #[tokio::test]
    async fn a_silent_proxy_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(s);
        });
        let proxy = Proxy::new(format!("socks5://{addr}").parse().unwrap());
        let err = proxy
            .connect(&name("x", 1), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::Timeout { .. }), "{err}");
        assert_eq!(io::Error::from(err).kind(), io::ErrorKind::TimedOut);
        hold.abort();
    }
}
