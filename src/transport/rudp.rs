//! Tokio driver for [`rudp`](crate::rudp): runs the sans-IO core on a real UDP socket.
//!
//! - [`RudpServer`]: one socket serving many connections through an [`Endpoint`] (stateless
//!   cookie handshake, demultiplexing by connection id); [`RudpServer::accept`] yields each new
//!   connection.
//! - [`connect`]: a client connection on a socket of its own.
//! - [`RudpConnection`]: whole messages in and out (`send`, `recv`, `close`).
//!
//! Memory is bounded per connection: `send` waits while more than `2 × max_message` bytes wait
//! for the core's send buffer (itself bounded), and messages are taken from the core only while
//! fewer than [`INBOX_LIMIT`] bytes wait for `recv`, so a slow reader closes the rudp receive
//! window instead of growing a queue.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::rudp::{
    CloseReason, Config, Connection, ConnectionHandle, Endpoint, EndpointConfig, EndpointStats,
    Event, SendError,
};

/// Bytes of received messages waiting for `recv` before the driver stops taking more from
/// the connection (its receive window then closes and the peer waits).
pub const INBOX_LIMIT: usize = 2 << 20;
/// Datagrams handled per wake-up before timers and sends get a turn.
const RECV_BATCH: usize = 64;
/// New connections waiting for `accept`; beyond it they are closed.
const ACCEPT_BACKLOG: usize = 4096;
/// How long a shutting-down server lets its connections close gracefully.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

enum Cmd {
    Send(u64, Bytes, OwnedSemaphorePermit),
    Close(u64),
    Resume(u64),
}

/// State shared by a connection's handle and the driver.
struct Shared {
    inbox_bytes: AtomicUsize,
    closed: Mutex<Option<CloseReason>>,
    send_room: Arc<Semaphore>,
    send_cap: usize,
}

impl Shared {
    fn new(max_message: usize) -> Arc<Self> {
        let cap = (2 * max_message).min(Semaphore::MAX_PERMITS);
        Arc::new(Shared {
            inbox_bytes: AtomicUsize::new(0),
            closed: Mutex::new(None),
            send_room: Arc::new(Semaphore::new(cap)),
            send_cap: cap,
        })
    }

    fn set_closed(&self, r: CloseReason) {
        if let Ok(mut g) = self.closed.lock() {
            g.get_or_insert(r);
        }
        self.send_room.close();
    }
}

/// One rudp connection: reliable, ordered whole messages.
pub struct RudpConnection {
    id: u64,
    peer: SocketAddr,
    max_message: usize,
    inbox: mpsc::UnboundedReceiver<Bytes>,
    cmds: mpsc::UnboundedSender<Cmd>,
    shared: Arc<Shared>,
    /// The client's driver task (servers share one task, owned by `RudpServer`).
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RudpConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RudpConnection")
            .field("peer", &self.peer)
            .field("closed", &self.close_reason())
            .finish()
    }
}

impl RudpConnection {
    /// The peer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Queues a message, waiting while the connection's send buffer is full.
    pub async fn send(&self, msg: Bytes) -> Result<(), SendError> {
        if msg.len() > self.max_message {
            return Err(SendError::TooLarge(msg.len()));
        }
        let n = msg.len().clamp(1, self.shared.send_cap) as u32;
        let permit = self
            .shared
            .send_room
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(|_| SendError::Closed)?;
        self.cmds
            .send(Cmd::Send(self.id, msg, permit))
            .map_err(|_| SendError::Closed)
    }

    /// The next message, or `None` once the connection ended (see
    /// [`close_reason`](Self::close_reason)).
    pub async fn recv(&mut self) -> Option<Bytes> {
        let m = self.inbox.recv().await?;
        let before = self.shared.inbox_bytes.fetch_sub(m.len(), Ordering::AcqRel);
        if before >= INBOX_LIMIT && before - m.len() < INBOX_LIMIT {
            let _ = self.cmds.send(Cmd::Resume(self.id));
        }
        Some(m)
    }

    /// Closes gracefully: messages already sent are delivered first. `recv` returns `None`
    /// once the close completed.
    pub fn close(&self) {
        let _ = self.cmds.send(Cmd::Close(self.id));
    }

    /// Why the connection ended, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.closed.lock().ok().and_then(|g| *g)
    }

    /// Waits for the client's driver task to finish (after the connection closed).
    pub async fn finished(mut self) {
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for RudpConnection {
    fn drop(&mut self) {
        if self.close_reason().is_none() {
            let _ = self.cmds.send(Cmd::Close(self.id));
        }
    }
}

/// The driver's side of one connection.
struct Side {
    inbox: mpsc::UnboundedSender<Bytes>,
    shared: Arc<Shared>,
    pending: VecDeque<(Bytes, OwnedSemaphorePermit)>,
    /// A close asked for while messages still waited here: it follows them.
    close_when_flushed: bool,
}

impl Side {
    fn new(shared: Arc<Shared>) -> (Side, mpsc::UnboundedReceiver<Bytes>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Side {
                inbox: tx,
                shared,
                pending: VecDeque::new(),
                close_when_flushed: false,
            },
            rx,
        )
    }

    fn ready(&self) -> bool {
        self.shared.inbox_bytes.load(Ordering::Acquire) < INBOX_LIMIT
    }

    /// Handles one event; returns true when the connection is over.
    fn deliver(&mut self, ev: Event) -> bool {
        match ev {
            Event::Connected => false,
            Event::Message(m) => {
                self.shared.inbox_bytes.fetch_add(m.len(), Ordering::AcqRel);
                let _ = self.inbox.send(m);
                false
            }
            Event::Closed(r) => {
                self.shared.set_closed(r);
                self.pending.clear();
                true
            }
        }
    }

    /// Moves waiting messages into the core while it has room; true if some still wait.
    fn flush_pending(&mut self, conn: &mut Connection) -> bool {
        while let Some((m, _)) = self.pending.front() {
            match conn.send(m.clone()) {
                Ok(()) => {
                    self.pending.pop_front();
                }
                Err(SendError::Blocked) => return true,
                Err(_) => {
                    self.pending.clear();
                    return false;
                }
            }
        }
        if std::mem::take(&mut self.close_when_flushed) {
            conn.close();
        }
        false
    }

    /// Closes after the messages still waiting here (a close must not overtake them).
    fn close(&mut self, conn: &mut Connection) {
        self.close_when_flushed = true;
        self.flush_pending(conn);
    }
}

fn random_seed() -> [u8; 32] {
    let mut s = [0u8; 32];
    if getrandom::fill(&mut s).is_err() {
        // No OS randomness: fall back to the clock and the address of a stack value, which
        // still varies per process (connection ids only need to be unpredictable to an
        // off-path attacker; the cookie key is then weaker, not absent).
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let v = &s as *const _ as usize;
        let k = blake3::hash(format!("{t}:{v}:{}", std::process::id()).as_bytes());
        s.copy_from_slice(k.as_bytes());
    }
    s
}

/// Asks for larger kernel socket buffers (best effort; the kernel caps them at its
/// `rmem_max`/`wmem_max`): a burst of handshakes or a window of datagrams then waits in the
/// buffer instead of being dropped.
fn grow_buffers(socket: &UdpSocket, bytes: usize) {
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        let v: libc::c_int = bytes.min(libc::c_int::MAX as usize) as libc::c_int;
        for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
            // SAFETY: a valid socket descriptor, a pointer to a c_int and its exact size.
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&v as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (socket, bytes);
}

/// Kernel buffer requested for a server socket.
const SERVER_SOCKET_BUFFER: usize = 4 << 20;
/// Kernel buffer requested for a client socket.
const CLIENT_SOCKET_BUFFER: usize = 1 << 20;

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}

/// A rudp server on one UDP socket.
pub struct RudpServer {
    local_addr: SocketAddr,
    incoming: mpsc::Receiver<RudpConnection>,
    task: JoinHandle<EndpointStats>,
}

impl RudpServer {
    /// Binds `addr` and starts serving; `shutdown` closes every connection gracefully (for up
    /// to 2 s) and stops the server.
    pub async fn bind(
        addr: SocketAddr,
        cfg: EndpointConfig,
        shutdown: CancellationToken,
    ) -> io::Result<RudpServer> {
        let socket = UdpSocket::bind(addr).await?;
        Self::from_socket(socket, cfg, shutdown)
    }

    /// Serves on an already bound socket.
    pub fn from_socket(
        socket: UdpSocket,
        cfg: EndpointConfig,
        shutdown: CancellationToken,
    ) -> io::Result<RudpServer> {
        let local_addr = socket.local_addr()?;
        grow_buffers(&socket, SERVER_SOCKET_BUFFER);
        let (accept_tx, incoming) = mpsc::channel(ACCEPT_BACKLOG);
        let endpoint = Endpoint::new(cfg.clone(), random_seed(), Instant::now());
        let task = tokio::spawn(run_server(socket, endpoint, cfg, accept_tx, shutdown));
        Ok(RudpServer {
            local_addr,
            incoming,
            task,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The next new connection (`None` once the server stopped).
    pub async fn accept(&mut self) -> Option<RudpConnection> {
        self.incoming.recv().await
    }

    /// Waits for the server to stop (cancel its shutdown token first) and returns its
    /// endpoint's counters.
    pub async fn finish(self) -> EndpointStats {
        drop(self.incoming);
        self.task.await.unwrap_or_default()
    }
}

async fn run_server(
    socket: UdpSocket,
    mut ep: Endpoint,
    cfg: EndpointConfig,
    accept_tx: mpsc::Sender<RudpConnection>,
    shutdown: CancellationToken,
) -> EndpointStats {
    let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel::<Cmd>();
    let mut sides: HashMap<u64, Side> = HashMap::new();
    let mut blocked: HashSet<u64> = HashSet::new();
    let io = &mut DatagramIo::new(socket, false);
    let mut rbuf = vec![0u8; RECV_BUFFER];
    let mut tbuf = Vec::with_capacity(65_536);
    let mut stop_at: Option<Instant> = None;
    let max_message = cfg.connection.clone().normalized().max_message;
    loop {
        let now = Instant::now();
        // Messages waiting for room in their connection's send buffer.
        blocked.retain(|&id| {
            let (Some(side), Some(conn)) =
                (sides.get_mut(&id), ep.connection_mut(ConnectionHandle(id)))
            else {
                return false;
            };
            side.flush_pending(conn)
        });
        // Events, for readers that keep up.
        while let Some((h, ev)) = ep.poll_event_where(|h| sides.get(&h.0).is_none_or(Side::ready)) {
            if let Some(side) = sides.get_mut(&h.0) {
                if side.deliver(ev) {
                    sides.remove(&h.0);
                    blocked.remove(&h.0);
                }
            }
        }
        while let Some(t) = ep.poll_transmit(now, &mut tbuf) {
            io.send(&tbuf[..t.size], t.destination).await;
        }
        io.flush().await;
        if let Some(deadline) = stop_at {
            if ep.is_empty() || now >= deadline {
                for side in sides.values() {
                    side.shared.set_closed(CloseReason::Local);
                }
                return ep.stats().clone();
            }
        }
        let wake = match (ep.poll_timeout(), stop_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            _ = shutdown.cancelled(), if stop_at.is_none() => {
                stop_at = Some(Instant::now() + SHUTDOWN_GRACE);
                for h in ep.handles() {
                    ep.close(h);
                }
            }
            r = io.recv(&mut rbuf) => {
                let now = Instant::now();
                let mut r = r;
                for _ in 0..RECV_BATCH {
                    let Ok((n, peer, seg)) = r else { break };
                    for d in rbuf[..n].chunks(seg.max(1)) {
                        accept_new(&mut ep, now, peer, d, &mut sides, &cmd_tx, &accept_tx, max_message);
                    }
                    r = io.try_recv(&mut rbuf);
                }
            }
            Some(cmd) = cmd_rx.recv() => {
                let mut next = Some(cmd);
                while let Some(cmd) = next {
                    match cmd {
                        Cmd::Send(id, msg, permit) => {
                            if let Some(side) = sides.get_mut(&id) {
                                side.pending.push_back((msg, permit));
                                blocked.insert(id);
                            }
                        }
                        Cmd::Close(id) => {
                            match (sides.get_mut(&id), ep.connection_mut(ConnectionHandle(id))) {
                                (Some(side), Some(conn)) => {
                                    side.close(conn);
                                    if !side.pending.is_empty() {
                                        blocked.insert(id);
                                    }
                                }
                                _ => ep.close(ConnectionHandle(id)),
                            }
                        }
                        Cmd::Resume(id) => {
                            ep.connection_mut(ConnectionHandle(id));
                        }
                    }
                    next = cmd_rx.try_recv().ok();
                }
            }
            _ = sleep_until(wake) => {
                ep.handle_timeout(Instant::now());
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn accept_new(
    ep: &mut Endpoint,
    now: Instant,
    peer: SocketAddr,
    datagram: &[u8],
    sides: &mut HashMap<u64, Side>,
    cmds: &mpsc::UnboundedSender<Cmd>,
    accept_tx: &mpsc::Sender<RudpConnection>,
    max_message: usize,
) {
    let Some(h) = ep.handle_datagram(now, peer, datagram) else {
        return;
    };
    let shared = Shared::new(max_message);
    let (side, inbox) = Side::new(shared.clone());
    let conn = RudpConnection {
        id: h.0,
        peer,
        max_message,
        inbox,
        cmds: cmds.clone(),
        shared,
        task: None,
    };
    match accept_tx.try_send(conn) {
        Ok(()) => {
            sides.insert(h.0, side);
        }
        Err(_) => {
            // Nobody is accepting (or the backlog is full): refuse by closing at once.
            ep.close(h);
        }
    }
}

/// Connects to a rudp server, waiting up to the idle timeout (30 s by default) for the
/// handshake.
pub async fn connect(server: SocketAddr, cfg: Config) -> io::Result<RudpConnection> {
    let bind: SocketAddr = if server.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind).await?;
    socket.connect(server).await?;
    grow_buffers(&socket, CLIENT_SOCKET_BUFFER);
    let cfg = cfg.normalized();
    let max_message = cfg.max_message;
    let seed = u64::from_le_bytes(random_seed()[..8].try_into().unwrap_or([7; 8]));
    let conn = Connection::connect(cfg, Instant::now(), seed);
    let shared = Shared::new(max_message);
    let (side, inbox) = Side::new(shared.clone());
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = oneshot::channel();
    let task = tokio::spawn(run_client(
        DatagramIo::new(socket, true),
        server,
        conn,
        side,
        cmd_rx,
        ready_tx,
    ));
    match ready_rx.await {
        Ok(Ok(())) => Ok(RudpConnection {
            id: 0,
            peer: server,
            max_message,
            inbox,
            cmds: cmd_tx,
            shared,
            task: Some(task),
        }),
        Ok(Err(reason)) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("rudp handshake with {server}: {reason}"),
        )),
        Err(_) => Err(io::Error::other("rudp driver stopped")),
    }
}

async fn run_client(
    mut io: DatagramIo,
    server: SocketAddr,
    mut conn: Connection,
    mut side: Side,
    mut cmd_rx: mpsc::UnboundedReceiver<Cmd>,
    ready: oneshot::Sender<Result<(), CloseReason>>,
) {
    let mut ready = Some(ready);
    let mut rbuf = vec![0u8; RECV_BUFFER];
    let mut tbuf = Vec::with_capacity(65_536);
    let mut cmds_open = true;
    loop {
        let now = Instant::now();
        side.flush_pending(&mut conn);
        while side.ready() {
            let Some(ev) = conn.poll_event() else { break };
            match ev {
                Event::Connected => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(Ok(()));
                    }
                }
                Event::Closed(r) => {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(Err(r));
                    }
                    side.deliver(Event::Closed(r));
                }
                ev => {
                    side.deliver(ev);
                }
            }
        }
        while let Some(n) = conn.poll_transmit(now, &mut tbuf) {
            io.send(&tbuf[..n], server).await;
        }
        io.flush().await;
        if conn.is_drained() && (!conn.has_events() || side.inbox.is_closed()) {
            if let Some(r) = side.shared.closed.lock().ok().and_then(|g| *g) {
                side.shared.set_closed(r);
            }
            return;
        }
        tokio::select! {
            r = io.recv(&mut rbuf) => {
                let now = Instant::now();
                let mut r = r;
                for _ in 0..RECV_BATCH {
                    let Ok((n, _, seg)) = r else { break };
                    for d in rbuf[..n].chunks(seg.max(1)) {
                        conn.handle_datagram(now, d);
                    }
                    r = io.try_recv(&mut rbuf);
                }
            }
            cmd = cmd_rx.recv(), if cmds_open => {
                match cmd {
                    Some(Cmd::Send(_, msg, permit)) => side.pending.push_back((msg, permit)),
                    Some(Cmd::Close(_)) => side.close(&mut conn),
                    Some(Cmd::Resume(_)) => {}
                    None => {
                        cmds_open = false;
                        side.close(&mut conn);
                    }
                }
            }
            _ = sleep_until(conn.poll_timeout()) => {
                conn.handle_timeout(Instant::now());
            }
        }
    }
}

/// Datagram I/O with Linux's segmentation offloads: runs of equal-size datagrams to one
/// destination leave in one `sendmsg` (UDP GSO, `UDP_SEGMENT`), and the kernel may hand over
/// many received datagrams of one sender in one `recvmsg` (UDP GRO). Where the offloads are
/// missing (other systems, old kernels), one datagram per call as before.
struct DatagramIo {
    socket: UdpSocket,
    /// The socket is connected: datagrams go to its peer without an address.
    connected: bool,
    gso: bool,
    gro: bool,
    /// Datagrams queued for one segmented send: `count` of `seg` bytes each (the last may
    /// be shorter, which ends the batch).
    batch: Vec<u8>,
    seg: usize,
    count: usize,
    dest: Option<SocketAddr>,
    sealed: bool,
}

/// Most datagrams in one segmented send (the kernel's limit is 64 on older versions).
const GSO_MAX_SEGMENTS: usize = 64;
/// Most bytes in one segmented send (the UDP length field's limit, with room to spare).
const GSO_MAX_BYTES: usize = 65_000;
/// Receive buffer: the largest datagram, or the largest GRO batch, fits.
const RECV_BUFFER: usize = 1 << 17;

impl DatagramIo {
    fn new(socket: UdpSocket, connected: bool) -> Self {
        #[cfg(target_os = "linux")]
        let (gso, gro) = (true, sys::enable_gro(&socket));
        #[cfg(not(target_os = "linux"))]
        let (gso, gro) = (false, false);
        DatagramIo {
            socket,
            connected,
            gso,
            gro,
            batch: Vec::with_capacity(GSO_MAX_BYTES),
            seg: 0,
            count: 0,
            dest: None,
            sealed: false,
        }
    }

    /// Receives one datagram or one GRO batch: its length, the sender and the segment size
    /// (the datagrams are `buf[..n].chunks(seg)`).
    async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, usize)> {
        #[cfg(target_os = "linux")]
        if self.gro {
            use std::os::fd::AsRawFd;
            let fd = self.socket.as_raw_fd();
            return self
                .socket
                .async_io(tokio::io::Interest::READABLE, || sys::recv(fd, buf))
                .await;
        }
        let (n, peer) = self.socket.recv_from(buf).await?;
        Ok((n, peer, n))
    }

    /// [`recv`](Self::recv) without waiting.
    fn try_recv(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, usize)> {
        #[cfg(target_os = "linux")]
        if self.gro {
            use std::os::fd::AsRawFd;
            let fd = self.socket.as_raw_fd();
            return self
                .socket
                .try_io(tokio::io::Interest::READABLE, || sys::recv(fd, buf));
        }
        let (n, peer) = self.socket.try_recv_from(buf)?;
        Ok((n, peer, n))
    }

    /// Queues one datagram, sending the batch first when this one cannot join it. Call
    /// [`flush`](Self::flush) after the last.
    async fn send(&mut self, datagram: &[u8], dest: SocketAddr) {
        let len = datagram.len();
        if self.count > 0
            && (!self.gso
                || self.sealed
                || self.dest != Some(dest)
                || len > self.seg
                || self.count >= GSO_MAX_SEGMENTS
                || self.batch.len() + len > GSO_MAX_BYTES)
        {
            self.flush().await;
        }
        if self.count == 0 {
            self.seg = len;
            self.dest = Some(dest);
        }
        self.batch.extend_from_slice(datagram);
        self.count += 1;
        self.sealed = len < self.seg;
    }

    /// Sends what is queued.
    async fn flush(&mut self) {
        if self.count == 0 {
            return;
        }
        let Some(dest) = self.dest else { return };
        #[cfg(target_os = "linux")]
        if self.count > 1 {
            use std::os::fd::AsRawFd;
            let fd = self.socket.as_raw_fd();
            let to = (!self.connected).then_some(dest);
            let (batch, seg) = (&self.batch[..], self.seg);
            let r = self
                .socket
                .async_io(tokio::io::Interest::WRITABLE, || {
                    sys::send_segments(fd, batch, seg, to.as_ref())
                })
                .await;
            match r {
                Ok(_) => {
                    self.clear();
                    return;
                }
                Err(e) => {
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EIO | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
                    ) {
                        // No segmentation offload here: one datagram per call from now on.
                        self.gso = false;
                    } else if e.raw_os_error() != Some(libc::EINVAL) {
                        // Dropped, as a lost datagram would be (the protocol recovers).
                        self.clear();
                        return;
                    }
                }
            }
        }
        for d in self.batch.chunks(self.seg.max(1)) {
            let _ = if self.connected {
                self.socket.send(d).await
            } else {
                self.socket.send_to(d, dest).await
            };
        }
        self.clear();
    }

    fn clear(&mut self) {
        self.batch.clear();
        self.count = 0;
        self.sealed = false;
    }
}

/// The raw socket calls behind [`DatagramIo`].
#[cfg(target_os = "linux")]
mod sys {
    use std::io;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    use std::os::fd::{AsRawFd, RawFd};

    use tokio::net::UdpSocket;

    const UDP_SEGMENT: libc::c_int = 103;
    const UDP_GRO: libc::c_int = 104;

    /// Control buffer for one small cmsg, aligned as `cmsghdr` needs.
    #[repr(C, align(8))]
    struct Control([u8; 64]);

    /// Asks the kernel to coalesce received datagrams; false where it cannot.
    pub(super) fn enable_gro(socket: &UdpSocket) -> bool {
        let on: libc::c_int = 1;
        // SAFETY: a valid descriptor, a pointer to a c_int and its exact size.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_UDP,
                UDP_GRO,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) == 0
        }
    }

    fn to_raw(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
        // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
        let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = match addr {
            SocketAddr::V4(a) => {
                // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
                let sin = unsafe {
                    &mut *(&mut st as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
                };
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = a.port().to_be();
                sin.sin_addr = libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                };
                std::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
                let sin6 = unsafe {
                    &mut *(&mut st as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
                };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_flowinfo = a.flowinfo();
                sin6.sin6_addr = libc::in6_addr {
                    s6_addr: a.ip().octets(),
                };
                sin6.sin6_scope_id = a.scope_id();
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        (st, len as libc::socklen_t)
    }

    fn from_raw(st: &libc::sockaddr_storage) -> Option<SocketAddr> {
        match libc::c_int::from(st.ss_family) {
            libc::AF_INET => {
                // SAFETY: the kernel wrote a sockaddr_in (family AF_INET).
                let sin =
                    unsafe { &*(st as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
                let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
                Some(SocketAddrV4::new(ip, u16::from_be(sin.sin_port)).into())
            }
            libc::AF_INET6 => {
                // SAFETY: the kernel wrote a sockaddr_in6 (family AF_INET6).
                let sin6 =
                    unsafe { &*(st as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
                let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                Some(
                    SocketAddrV6::new(
                        ip,
                        u16::from_be(sin6.sin6_port),
                        sin6.sin6_flowinfo,
                        sin6.sin6_scope_id,
                    )
                    .into(),
                )
            }
            _ => None,
        }
    }

    /// Sends `batch` as datagrams of `seg` bytes (the last may be shorter) in one call.
    pub(super) fn send_segments(
        fd: RawFd,
        batch: &[u8],
        seg: usize,
        to: Option<&SocketAddr>,
    ) -> io::Result<usize> {
        let mut iov = libc::iovec {
            iov_base: batch.as_ptr() as *mut libc::c_void,
            iov_len: batch.len(),
        };
        let mut control = Control([0; 64]);
        let name = to.map(to_raw);
        // SAFETY: msghdr is plain data; all-zero is a valid value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        if let Some((st, len)) = &name {
            msg.msg_name = (st as *const libc::sockaddr_storage).cast_mut().cast();
            msg.msg_namelen = *len;
        }
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.0.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE only computes a size.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) } as _;
        // SAFETY: msg_control points at a buffer of at least msg_controllen bytes, aligned for
        // cmsghdr, so the first header and its 2 data bytes lie inside it; every pointer in
        // msg is valid for the duration of the call.
        let n = unsafe {
            let cm = libc::CMSG_FIRSTHDR(&msg);
            (*cm).cmsg_level = libc::SOL_UDP;
            (*cm).cmsg_type = UDP_SEGMENT;
            (*cm).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cm).cast::<u16>(), seg as u16);
            libc::sendmsg(fd, &msg, 0)
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Receives one datagram or GRO batch: (bytes, sender, segment size).
    pub(super) fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, usize)> {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut control = Control([0; 64]);
        // SAFETY: plain data; all-zero is a valid value.
        let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        // SAFETY: plain data; all-zero is a valid value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.0.as_mut_ptr().cast();
        msg.msg_controllen = control.0.len() as _;
        // SAFETY: every pointer in msg is valid and sized as declared for the call.
        let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        let mut seg = n;
        // SAFETY: the kernel filled msg_control with msg_controllen bytes of cmsgs; the CMSG
        // macros stay inside them, and a UDP_GRO cmsg carries one c_int.
        unsafe {
            let mut cm = libc::CMSG_FIRSTHDR(&msg);
            while !cm.is_null() {
                if (*cm).cmsg_level == libc::SOL_UDP && (*cm).cmsg_type == UDP_GRO {
                    let s = std::ptr::read_unaligned(libc::CMSG_DATA(cm).cast::<libc::c_int>());
                    if s > 0 {
                        seg = s as usize;
                    }
                }
                cm = libc::CMSG_NXTHDR(&msg, cm);
            }
        }
        if msg.msg_flags & libc::MSG_TRUNC != 0 {
            // Larger than any datagram rudp sends: drop it.
            return Ok((0, from_raw(&name).unwrap_or(([0, 0, 0, 0], 0).into()), 1));
        }
        let peer = from_raw(&name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unknown address family"))?;
        Ok((n, peer, seg))
    }
}

impl crate::transport::messages::MessageConn for RudpConnection {
    async fn recv(&mut self) -> Option<Bytes> {
        RudpConnection::recv(self).await
    }

    async fn send(&mut self, msg: Bytes) -> io::Result<()> {
        RudpConnection::send(self, msg).await.map_err(|e| match e {
            SendError::Closed => io::Error::new(io::ErrorKind::BrokenPipe, "the connection closed"),
            other => io::Error::other(other.to_string()),
        })
    }

    fn close(&mut self) {
        RudpConnection::close(self);
    }

    fn failure(&self) -> Option<String> {
        match self.close_reason()? {
            CloseReason::Local | CloseReason::Peer => None,
            other => Some(format!("rudp connection {other}")),
        }
    }
}

impl std::fmt::Debug for RudpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RudpServer")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch of equal-size datagrams and a shorter last one arrives as separate datagrams,
    /// intact and in order, at a socket that reads one datagram per call.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_batch_arrives_as_separate_datagrams() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = rx.local_addr().unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut io = DatagramIo::new(tx, false);
        let sent: Vec<Vec<u8>> = (0..10u8)
            .map(|i| vec![i; if i == 9 { 300 } else { 1200 }])
            .collect();
        for d in &sent {
            io.send(d, to).await;
        }
        // The shorter datagram ended the batch: the next one starts a new batch.
        assert_eq!(io.count, 10);
        io.send(&[42; 1200], to).await;
        assert_eq!(io.count, 1);
        io.flush().await;
        let mut buf = vec![0u8; 2000];
        for d in sent.iter().chain(std::iter::once(&vec![42; 1200])) {
            let (n, from) = tokio::time::timeout(Duration::from_secs(5), rx.recv_from(&mut buf))
                .await
                .expect("datagram")
                .unwrap();
            assert_eq!(from, io.socket.local_addr().unwrap());
            assert_eq!(&buf[..n], &d[..]);
        }
    }

    /// Bulk data through the real driver (batched sends and coalesced receives) arrives
    /// complete and in order.
    #[tokio::test]
    async fn bulk_messages_arrive_intact_through_the_driver() {
        let stop = CancellationToken::new();
        let mut server = RudpServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            EndpointConfig::default(),
            stop.clone(),
        )
        .await
        .unwrap();
        let client = connect(server.local_addr(), Config::default())
            .await
            .unwrap();
        let mut conn = server.accept().await.unwrap();
        let msgs: Vec<Bytes> = (0..24u32)
            .map(|i| {
                let len = 1 + (i as usize * 97_531) % (1 << 20);
                Bytes::from((0..len).map(|j| (j as u32 ^ i) as u8).collect::<Vec<u8>>())
            })
            .collect();
        let sender = {
            let msgs = msgs.clone();
            tokio::spawn(async move {
                for m in msgs {
                    client.send(m).await.unwrap();
                }
                client
            })
        };
        for want in &msgs {
            let got = tokio::time::timeout(Duration::from_secs(30), conn.recv())
                .await
                .expect("message in time")
                .expect("message");
            assert_eq!(got.len(), want.len());
            assert!(got == *want);
        }
        let client = sender.await.unwrap();
        client.close();
        stop.cancel();
        server.finish().await;
    }
}
