//! The server: binds, accepts, caps the number of connections, spawns one task per connection,
//! and shuts down gracefully.
//!
//! The accept loop never waits on a client: a connection over the limit is refused with one
//! non-blocking write and closed; an accept error such as running out of file descriptors is
//! logged and retried with backoff instead of spinning or exiting. On shutdown the listener is
//! closed first, then every connection finishes the replies it owes and closes, within a grace
//! period.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::FutureExt;
use tokio::net::{TcpSocket, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::codec::Encoder;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::budget::{Charge, DEFAULT_MAX_MEMORY, MemoryBudget};
use crate::codec::{FrameCodec, Framing, Limits};
use crate::logging::RateLimited;
use crate::message::Message;
use crate::net::{PeerAddr, UnixName};
use crate::rudp::EndpointConfig;
use crate::service::{PeerInfo, Service, StreamContext, Transport};
use crate::shutdown::ShutdownSignal;
use crate::transport::messages::serve_messages;
use crate::transport::rudp::RudpServer;
use crate::transport::stream::{self, Conn, Upgrade, upgrade_all};
use crate::transport::tcp::{ConnReport, ConnSettings, DEFAULT_MIN_RATE, serve_connection};
use crate::transport::udp::{DEFAULT_PEER_IDLE, UdpReport, UdpSettings, serve_udp};
use crate::transport::{FramedStream, Stream};

/// Address `sockit serve` binds when none is given.
pub const DEFAULT_HOST: &str = "127.0.0.1";
/// Port `sockit serve` binds when none is given.
pub const DEFAULT_PORT: u16 = 9000;
/// Default cap on concurrent connections (TCP) or peers (UDP).
pub const DEFAULT_MAX_CONNS: usize = 10_000;
/// Default frame (and write) stall timeout.
pub const DEFAULT_FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for [`ServerConfig::handshake_timeout`].
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Listen backlog requested from the kernel (which caps it at `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 4096;
const MIN_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Everything that shapes a server except the address and the service.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// TCP or UDP.
    pub transport: Transport,
    /// Framing of TCP streams (UDP datagrams are always whole messages).
    pub framing: Framing,
    /// Size limits for the codecs.
    pub limits: Limits,
    /// Maximum concurrent TCP connections, or UDP peers with a session.
    pub max_conns: usize,
    /// Close connections (forget UDP peers) silent for this long.
    pub idle_timeout: Option<Duration>,
    /// Close connections whose unfinished frame takes this long (longer only while it keeps
    /// arriving at `min_rate`).
    pub frame_timeout: Option<Duration>,
    /// Bytes per second an unfinished frame must average to outlive `frame_timeout`.
    pub min_rate: Option<u64>,
    /// Most TCP connections one IP address may hold at once (off by default: load tests open
    /// thousands from 127.0.0.1).
    pub max_conns_per_ip: Option<usize>,
    /// Server-wide budget for buffered frame and reply bytes.
    pub max_memory: usize,
    /// The budget itself, when services share it (a chat room charges its history to it);
    /// `None` makes one of `max_memory` bytes.
    pub budget: Option<Arc<MemoryBudget>>,
    /// UDP: most replies per second to one source IP address (a token bucket); `None` is
    /// unlimited.
    pub udp_rate: Option<u32>,
    /// How long connections get to finish after shutdown starts.
    pub shutdown_grace: Duration,
    /// rudp: the settings of every connection (MTU, windows, timers).
    pub rudp: crate::rudp::Config,
    /// Layers run over every accepted stream before its session starts (TLS, a hex tap), in
    /// order, inside the connection's task.
    pub upgrades: Vec<Arc<dyn Upgrade>>,
    /// How long the layers may take (a TLS handshake); past it the connection is closed.
    pub handshake_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            transport: Transport::Tcp,
            framing: Framing::Line,
            limits: Limits::default(),
            max_conns: DEFAULT_MAX_CONNS,
            idle_timeout: None,
            frame_timeout: Some(DEFAULT_FRAME_TIMEOUT),
            min_rate: Some(DEFAULT_MIN_RATE),
            max_conns_per_ip: None,
            max_memory: DEFAULT_MAX_MEMORY,
            budget: None,
            udp_rate: None,
            shutdown_grace: Duration::from_secs(4),
            rudp: crate::rudp::Config::default(),
            upgrades: Vec::new(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        }
    }
}

/// Totals of a finished server run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ServerReport {
    /// TCP connections accepted and served.
    pub connections: u64,
    /// TCP connections refused because of the connection limit or the per-address limit.
    pub refused: u64,
    /// Connections still open when the grace period ran out.
    pub abandoned: u64,
    /// UDP totals, for a UDP server.
    pub udp: Option<UdpReport>,
}

#[derive(Debug)]
enum Listener {
    /// TCP or a unix stream socket.
    Stream(stream::Listener),
    Udp(UdpSocket),
    /// The rudp server and the token that stops its socket task.
    Rudp(RudpServer, CancellationToken),
}

/// A bound server, ready to [`Server::run`].
#[derive(Debug)]
pub struct Server<S> {
    listener: Listener,
    local: SocketAddr,
    config: ServerConfig,
    service: Arc<S>,
}

impl<S: Service> Server<S> {
    /// Binds `addr` (port 0 picks a free port; see [`Server::local_addr`]).
    pub async fn bind(addr: SocketAddr, config: ServerConfig, service: S) -> io::Result<Self> {
        let listener = match config.transport {
            Transport::Tcp => {
                let socket = if addr.is_ipv4() {
                    TcpSocket::new_v4()?
                } else {
                    TcpSocket::new_v6()?
                };
                socket.set_reuseaddr(true)?;
                socket.bind(addr)?;
                Listener::Stream(stream::Listener::Tcp(socket.listen(LISTEN_BACKLOG)?))
            }
            Transport::Udp => Listener::Udp(UdpSocket::bind(addr).await?),
            Transport::Rudp => {
                let stop = CancellationToken::new();
                let endpoint = EndpointConfig {
                    connection: config.rudp.clone(),
                    max_connections: config.max_conns,
                    ..EndpointConfig::default()
                };
                Listener::Rudp(RudpServer::bind(addr, endpoint, stop.clone()).await?, stop)
            }
        };
        let local = match &listener {
            Listener::Stream(l) => l.tcp_addr().ok_or_else(|| io::Error::other("no address"))?,
            Listener::Udp(s) => s.local_addr()?,
            Listener::Rudp(s, _) => s.local_addr(),
        };
        Ok(Server {
            listener,
            local,
            config,
            service: Arc::new(service),
        })
    }

    /// Binds a unix stream socket at `name` (TCP-like services over a local socket). The
    /// caller deals with a stale socket file and permissions first.
    pub fn bind_unix(name: &UnixName, config: ServerConfig, service: S) -> io::Result<Self> {
        let listener = stream::bind_unix_listener(name)?;
        Ok(Server {
            listener: Listener::Stream(stream::Listener::Unix(listener, name.clone())),
            local: SocketAddr::from(([0, 0, 0, 0], 0)),
            config,
            service: Arc::new(service),
        })
    }

    /// The address actually bound (`0.0.0.0:0` for a unix socket: see [`Server::unix_name`]).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The unix socket bound, for a unix server.
    pub fn unix_name(&self) -> Option<&UnixName> {
        match &self.listener {
            Listener::Stream(stream::Listener::Unix(_, name)) => Some(name),
            _ => None,
        }
    }

    /// The service, shared with every connection (e.g. to call [`Service::reload`]).
    pub fn service(&self) -> Arc<S> {
        self.service.clone()
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Serves until `shutdown` is cancelled, then closes gracefully. Calls [`Service::start`]
    /// first.
    pub async fn run(self, shutdown: CancellationToken) -> ServerReport {
        self.service.start();
        match self.listener {
            Listener::Stream(listener) => {
                run_stream(listener, self.service, self.config, shutdown).await
            }
            Listener::Rudp(server, stop) => {
                run_rudp(server, stop, self.service, self.config, shutdown).await
            }
            Listener::Udp(socket) => {
                let settings = UdpSettings {
                    quit_words: self.service.quit_words(),
                    peer_idle: self.config.idle_timeout.unwrap_or(DEFAULT_PEER_IDLE),
                    max_peers: self.config.max_conns,
                    reply_rate: self.config.udp_rate,
                };
                let udp = serve_udp(socket, self.service, settings, shutdown).await;
                ServerReport {
                    udp: Some(udp),
                    ..ServerReport::default()
                }
            }
        }
    }
}

/// Errors from `accept` that concern only the connection being accepted.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::PermissionDenied
    ) || e.raw_os_error() == Some(libc::EPROTO)
}

/// What every connection task of a stream server shares.
struct Shared<S> {
    service: Arc<S>,
    handler: Option<Arc<dyn crate::service::StreamHandler>>,
    settings: Arc<ConnSettings>,
    budget: Arc<MemoryBudget>,
    framing: Framing,
    limits: Limits,
    idle_timeout: Option<Duration>,
    frame_timeout: Option<Duration>,
    upgrades: Vec<Arc<dyn Upgrade>>,
    handshake_timeout: Duration,
}

async fn run_stream<S: Service>(
    listener: stream::Listener,
    service: Arc<S>,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> ServerReport {
    let max_conns = fd_capped(config.max_conns);
    let limit = Arc::new(Semaphore::new(max_conns));
    let per_ip = config.max_conns_per_ip.map(PerIpLimit::new);
    let budget = config
        .budget
        .clone()
        .unwrap_or_else(|| MemoryBudget::new(config.max_memory));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let tracker = TaskTracker::new();
    let shared = Arc::new(Shared {
        settings: Arc::new(ConnSettings {
            quit_words: service.quit_words(),
            idle_timeout: config.idle_timeout,
            frame_timeout: config.frame_timeout,
            min_rate: config.min_rate,
            ..ConnSettings::default()
        }),
        handler: service.stream_handler(),
        service,
        budget,
        framing: config.framing,
        limits: config.limits,
        idle_timeout: config.idle_timeout,
        frame_timeout: config.frame_timeout,
        upgrades: config.upgrades.clone(),
        handshake_timeout: config.handshake_timeout,
    });
    // A refusal line in the clear means nothing to a TLS client: under layers, just close.
    let refusal_framing = if config.upgrades.is_empty() {
        Some(config.framing)
    } else {
        None
    };
    let mut report = ServerReport::default();
    let mut refusals = RateLimited::new(Duration::from_secs(1));
    let mut ip_refusals = RateLimited::new(Duration::from_secs(1));
    // Connections watch this rather than the token: see `crate::shutdown`.
    let closing = ShutdownSignal::new();
    let mut backoff = MIN_BACKOFF;

    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((conn, addr)) => {
                backoff = MIN_BACKOFF;
                let ip_slot = match (&per_ip, addr.ip()) {
                    (Some(per_ip), Some(ip)) => match per_ip.try_acquire(ip) {
                        Some(slot) => Some(slot),
                        None => {
                            report.refused += 1;
                            let text = format!(
                                "error: too many connections from your address ({} open), \
                                 try again later",
                                per_ip.max
                            );
                            refuse(conn, refusal_framing, &config, text, &refusing, &tracker);
                            if let Some(n) = ip_refusals.hit() {
                                warn!(
                                    "refused {n} connection(s) (latest from {addr}): \
                                     {} connections from that address already",
                                    per_ip.max
                                );
                            }
                            continue;
                        }
                    },
                    _ => None,
                };
                match limit.clone().try_acquire_owned() {
                    Ok(permit) => {
                        report.connections += 1;
                        let id = report.connections;
                        info!("connect from {addr} (#{id})");
                        // Replies are small and interactive: do not hold them back.
                        conn.set_nodelay();
                        let peer = PeerInfo {
                            id,
                            addr,
                            transport: Transport::Tcp,
                            user: None,
                        };
                        let task = serve_accepted(conn, peer, shared.clone(), closing.listen())
                            .map(move |()| {
                                drop(permit);
                                drop(ip_slot);
                            });
                        tracker.spawn(task);
                    }
                    Err(_) => {
                        report.refused += 1;
                        let text = format!(
                            "error: server busy ({max_conns} connections open), try again later"
                        );
                        refuse(conn, refusal_framing, &config, text, &refusing, &tracker);
                        if let Some(n) = refusals.hit() {
                            warn!(
                                "refused {n} connection(s) (latest from {addr}): limit of {max_conns} reached"
                            );
                        }
                    }
                }
            }
            Err(e) if is_per_connection(&e) => debug!("accept: {e}"),
            Err(e) => {
                warn!("accept failed: {e}; retrying in {backoff:?}");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    drop(listener);
    closing.trigger();
    tracker.close();
    if !tracker.is_empty() {
        info!("shutting down: closing {} connection(s)", tracker.len());
    }
    if tokio::time::timeout(config.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        report.abandoned = tracker.len() as u64;
        warn!(
            "{} connection(s) did not close within {:?}; abandoning them",
            report.abandoned, config.shutdown_grace
        );
    }
    report
}

/// Serves one accepted connection to its end: the layers, then the service's stream handler
/// or a session over the framing; logs how it ended.
async fn serve_accepted<S: Service>(
    conn: Conn,
    peer: PeerInfo,
    shared: Arc<Shared<S>>,
    closing: crate::shutdown::ShutdownListener,
) {
    let id = peer.id;
    let addr = peer.addr.clone();
    let local = conn.local_addr();
    let report = if shared.upgrades.is_empty() {
        match &shared.handler {
            Some(handler) => {
                let ctx = stream_context(&shared, peer, local, closing);
                handler.clone().serve(conn.boxed(), ctx).await
            }
            None => serve_framed(conn, peer, &shared, closing).await,
        }
    } else {
        let layered = tokio::time::timeout(
            shared.handshake_timeout,
            upgrade_all(&shared.upgrades, conn.boxed(), &peer),
        )
        .await;
        let stream = match layered {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                warn!("disconnect {addr} (#{id}): {e}");
                return;
            }
            Err(_) => {
                warn!(
                    "disconnect {addr} (#{id}): handshake not finished within {:?}",
                    shared.handshake_timeout
                );
                return;
            }
        };
        match &shared.handler {
            Some(handler) => {
                let ctx = stream_context(&shared, peer, local, closing);
                handler.clone().serve(stream, ctx).await
            }
            None => serve_framed(stream, peer, &shared, closing).await,
        }
    };
    log_disconnect(&addr, id, &report);
}

fn stream_context<S>(
    shared: &Shared<S>,
    peer: PeerInfo,
    local: Option<PeerAddr>,
    closing: crate::shutdown::ShutdownListener,
) -> StreamContext {
    StreamContext {
        peer,
        budget: shared.budget.clone(),
        idle_timeout: shared.idle_timeout,
        frame_timeout: shared.frame_timeout,
        closing,
        local,
    }
}

/// A session over the server's framing.
async fn serve_framed<S: Service, St: Stream>(
    stream: St,
    peer: PeerInfo,
    shared: &Shared<S>,
    closing: crate::shutdown::ShutdownListener,
) -> ConnReport {
    let session = shared.service.open(&peer);
    let mut conn = FramedStream::new(stream, FrameCodec::new(shared.framing, shared.limits));
    conn.set_budget(Charge::new(shared.budget.clone()));
    serve_connection(conn, session, peer.addr, shared.settings.clone(), closing).await
}

/// Serves rudp connections: each accepted connection runs one session, over the message
/// driver (the transport keeps message boundaries, so there is no framing).
async fn run_rudp<S: Service>(
    mut server: RudpServer,
    stop: CancellationToken,
    service: Arc<S>,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> ServerReport {
    let settings = Arc::new(ConnSettings {
        quit_words: service.quit_words(),
        idle_timeout: config.idle_timeout,
        ..ConnSettings::default()
    });
    let tracker = TaskTracker::new();
    let closing = ShutdownSignal::new();
    let mut report = ServerReport::default();
    loop {
        let conn = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            conn = server.accept() => match conn {
                Some(conn) => conn,
                None => break,
            },
        };
        report.connections += 1;
        let id = report.connections;
        let addr = conn.peer_addr();
        info!("connect from rudp {addr} (#{id})");
        let peer = PeerInfo {
            id,
            addr: PeerAddr::Inet(addr),
            transport: Transport::Rudp,
            user: None,
        };
        let session = service.open(&peer);
        let task = serve_messages(conn, session, peer.addr, settings.clone(), closing.listen())
            .map(move |report| log_disconnect(&PeerAddr::Inet(addr), id, &report));
        tracker.spawn(task);
    }
    closing.trigger();
    tracker.close();
    if tokio::time::timeout(config.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        report.abandoned = tracker.len() as u64;
    }
    stop.cancel();
    let stats = server.finish().await;
    debug!("rudp endpoint: {stats:?}");
    report
}

fn log_disconnect(addr: &PeerAddr, id: u64, report: &ConnReport) {
    if report.reason.is_error() {
        warn!("disconnect {addr} (#{id}): {report}");
    } else {
        info!("disconnect {addr} (#{id}): {report}");
    }
}

/// Refused connections being told why at once; past this many, a refusal is one
/// non-blocking write. Each holds a descriptor for at most [`REFUSAL_TIME`], within the
/// descriptors [`fd_capped`] keeps free.
const MAX_REFUSING: usize = 16;
/// How long a refused client gets to read its refusal line.
const REFUSAL_TIME: Duration = Duration::from_secs(1);

/// Tells a connection over a limit why it is being closed, without the accept loop ever
/// waiting on it. The line is written by a small task that then half-closes and reads away
/// whatever the client had already sent: closing a socket with unread input makes the kernel
/// send a reset, which destroys the refusal before the client reads it.
fn refuse(
    stream: Conn,
    framing: Option<Framing>,
    config: &ServerConfig,
    mut text: String,
    refusing: &Arc<Semaphore>,
    tracker: &TaskTracker,
) {
    let Some(framing) = framing else {
        return;
    };
    if framing == Framing::Raw {
        text.push('\n');
    }
    let mut buf = BytesMut::new();
    let mut codec = FrameCodec::new(framing, config.limits);
    if codec.encode(&Message::text(text), &mut buf).is_err() {
        return;
    }
    let Ok(permit) = refusing.clone().try_acquire_owned() else {
        let _ = stream.try_write(&buf);
        return;
    };
    tracker.spawn(async move {
        let _ = tokio::time::timeout(REFUSAL_TIME, tell_and_drain(stream, &buf)).await;
        drop(permit);
    });
}

async fn tell_and_drain(mut stream: Conn, line: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if stream.write_all(line).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
}

/// Descriptors kept free of connections: stdio, the listener, the runtime's epoll and wake-up
/// descriptors, the log thread, signal handling, and one to accept and refuse a client with.
const RESERVED_FDS: u64 = 32;

/// `max_conns`, lowered (with one warning) when the open-file limit cannot hold that many
/// connections: past it, clients would hang in the backlog with no answer. Within it, the
/// excess gets the usual "server busy" line.
fn fd_capped(max_conns: usize) -> usize {
    let Ok(limit) = fd_limit() else {
        return max_conns;
    };
    let room = limit.saturating_sub(RESERVED_FDS).max(1);
    if (max_conns as u64) <= room {
        return max_conns;
    }
    let capped = room as usize;
    warn!(
        "the open file limit ({limit}) cannot hold --max-conns {max_conns}: \
         serving at most {capped} connections (raise it with `ulimit -n`)"
    );
    capped
}

/// This process's soft limit on open files.
pub fn fd_limit() -> io::Result<u64> {
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every platform
    Ok(nofile_limit()?.rlim_cur as u64)
}

fn nofile_limit() -> io::Result<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lim)
}

/// Counts open connections per IP address for `--max-conns-per-ip`.
#[derive(Debug)]
struct PerIpLimit {
    max: usize,
    open: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection's place in its address's count; freed when dropped.
struct IpSlot {
    ip: IpAddr,
    open: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
}

impl PerIpLimit {
    fn new(max: usize) -> Self {
        PerIpLimit {
            max,
            open: Arc::default(),
        }
    }

    fn try_acquire(&self, ip: IpAddr) -> Option<IpSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            ip,
            open: self.open.clone(),
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Raises this process's soft limit on open files to its hard limit, so a server can hold as
/// many connections as the system allows. Returns the new soft limit.
pub fn raise_fd_limit() -> io::Result<u64> {
    let lim = nofile_limit()?;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    fd_limit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_slots_are_counted_per_address_and_freed_on_drop() {
        let limit = PerIpLimit::new(2);
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let first = limit.try_acquire(a).unwrap();
        let _second = limit.try_acquire(a).unwrap();
        assert!(limit.try_acquire(a).is_none());
        assert!(
            limit.try_acquire(b).is_some(),
            "other addresses are not affected"
        );
        drop(first);
        assert!(limit.try_acquire(a).is_some());
    }
}
