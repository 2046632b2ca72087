//! Runs a datagram service over one unix datagram socket (`unixgram:PATH`): every datagram is
//! a message, each sender gets a session of its own, and replies go to the sender's bound path.
//!
//! The same policy as UDP ([`crate::transport::udp`]): quit words, an idle limit per peer, and
//! a bounded peer table whose least recently active peer makes room for a newcomer. Sessions
//! with traffic of their own (a chat room) are polled for it ([`Session::poll_feed`]) whenever
//! they wake the driver, a bounded number of batches per turn. A client bound to an abstract
//! name (Linux) is answered at that name; it is kept as a path made of a NUL byte and the name,
//! which no file path can be, and shown as `@name`. A client socket that is not bound at all
//! (socat's `UNIX-SENDTO` without `bind=`) has no address a reply could go to: its datagrams
//! are dropped with a debug line, as they carry no way to answer.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use lru::LruCache;
use tokio::net::UnixDatagram;
use tokio::sync::mpsc;
use tokio_util::codec::Encoder;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::codec::RawCodec;
use crate::logging::RateLimited;
use crate::message::Message;
use crate::net::PeerAddr;
use crate::service::{Outbox, PeerInfo, Push, Service, Session, Transport};
use crate::transport::udp::{UdpReport, UdpSettings};

/// Capacity of the queue shared by every push handle of the socket.
const PUSH_QUEUE: usize = 8192;
/// Receive buffer: the largest datagram accepted (longer ones are truncated by the kernel).
const RECV_BUFFER: usize = 65_536;

/// Most feed batches (see [`Session::poll_feed`]) sent to one peer before others get a turn.
const FEED_TURN: usize = 16;

struct Peer<Se> {
    session: Se,
    codec: RawCodec,
    last_seen: Instant,
    datagrams: u64,
    feed: Arc<FeedWaker>,
}

/// Wakes the driver for one peer whose session has traffic of its own to send (a chat room's
/// lines). Queued at most once until the driver polls that peer, so the queue stays bounded.
struct FeedWaker {
    path: PathBuf,
    queued: AtomicBool,
    tx: mpsc::UnboundedSender<PathBuf>,
}

impl Wake for FeedWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            let _ = self.tx.send(self.path.clone());
        }
    }
}

struct Driver<Sv: Service> {
    socket: UnixDatagram,
    service: Arc<Sv>,
    settings: UdpSettings,
    /// Most recently active first.
    peers: LruCache<PathBuf, Peer<Sv::Session>>,
    out: Outbox,
    wbuf: BytesMut,
    next_id: u64,
    feed_tx: mpsc::UnboundedSender<PathBuf>,
    evictions: RateLimited,
    unbound: RateLimited,
    report: UdpReport,
}

/// Serves `service` on `socket` until `shutdown` is cancelled. `settings.reply_rate` does not
/// apply (a unix socket cannot be used to reflect traffic at a forged address).
pub async fn serve_unixgram<Sv: Service>(
    socket: UnixDatagram,
    service: Arc<Sv>,
    settings: UdpSettings,
    shutdown: CancellationToken,
) -> UdpReport {
    let (push_tx, mut push_rx) = mpsc::channel(PUSH_QUEUE);
    let (feed_tx, mut feed_rx) = mpsc::unbounded_channel();
    let mut driver = Driver {
        socket,
        service,
        peers: LruCache::unbounded(),
        settings,
        out: Outbox::for_unix_datagrams(push_tx),
        wbuf: BytesMut::new(),
        next_id: 0,
        feed_tx,
        evictions: RateLimited::new(Duration::from_secs(1)),
        unbound: RateLimited::new(Duration::from_secs(1)),
        report: UdpReport::default(),
    };
    let mut buf = vec![0u8; RECV_BUFFER];
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some((path, push)) = push_rx.recv() => driver.on_push(path, push).await,
            Some(path) = feed_rx.recv() => driver.feed(&path).await,
            received = driver.socket.recv_from(&mut buf) => match received {
                Ok((n, addr)) => match peer_key(&addr) {
                    Some(path) => {
                        let datagram = Bytes::copy_from_slice(&buf[..n]);
                        driver.on_datagram(path, datagram).await;
                    }
                    None => {
                        driver.report.datagrams_in += 1;
                        debug!(
                            "unixgram: {n}-byte datagram from a socket not bound to a path: \
                             no address to answer, dropped"
                        );
                        if let Some(count) = driver.unbound.hit() {
                            debug!("unixgram: {count} datagram(s) from unbound sockets dropped");
                        }
                    }
                },
                Err(e) => debug!("unixgram receive error: {e}"),
            },
            _ = sweep.tick() => driver.sweep(Instant::now()),
        }
    }
    while let Some((path, mut peer)) = driver.peers.pop_lru() {
        peer.session.on_close();
        debug!("peer {} closed: server shutting down", shown(&path));
    }
    driver.report
}

impl<Sv: Service> Driver<Sv> {
    async fn on_datagram(&mut self, path: PathBuf, datagram: Bytes) {
        self.report.datagrams_in += 1;
        let now = Instant::now();
        if !self.peers.contains(&path) {
            self.admit(&path, now).await;
        }
        let Some(peer) = self.peers.get_mut(&path) else {
            return;
        };
        peer.last_seen = now;
        peer.datagrams += 1;
        debug!(
            "datagram from unixgram:{}: {} bytes",
            shown(&path),
            datagram.len()
        );
        let msg = peer.codec.decode_datagram(datagram);
        self.out.set_peer_path(&path);
        let quit =
            self.settings.quit_words && peer.session.ends_on_quit_word() && msg.is_quit_word();
        if quit {
            self.out.send(Message::text("bye"));
        } else {
            peer.session.on_message(msg, &mut self.out).await;
        }
        self.flush(&path).await;
        if quit || self.out.is_closing() {
            self.forget(
                &path,
                if quit {
                    "said bye"
                } else {
                    "closed by service"
                },
            );
            return;
        }
        self.feed(&path).await;
    }

    /// Sends the peer's own traffic (a chat room's lines) that its session has ready, a
    /// bounded number of batches per turn; the session's waker brings the driver back.
    async fn feed(&mut self, path: &Path) {
        for _ in 0..FEED_TURN {
            let Some(peer) = self.peers.peek_mut(path) else {
                return;
            };
            // Cleared before polling: a wake-up during the poll queues the peer again.
            peer.feed.queued.store(false, Ordering::Release);
            self.out.set_peer_path(path);
            let ready = {
                let waker = Waker::from(peer.feed.clone());
                let mut cx = Context::from_waker(&waker);
                peer.session.poll_feed(&mut cx, &mut self.out).is_ready()
            };
            self.flush(path).await;
            if self.out.is_closing() {
                self.forget(path, "closed by service");
                return;
            }
            if !ready {
                return;
            }
        }
        // More is ready: come back after the other peers had a turn.
        if let Some(peer) = self.peers.peek(path) {
            peer.feed.wake_by_ref();
        }
    }

    async fn admit(&mut self, path: &Path, now: Instant) {
        if self.peers.len() >= self.settings.max_peers {
            self.sweep(now);
        }
        if self.peers.len() >= self.settings.max_peers {
            if let Some((old, mut peer)) = self.peers.pop_lru() {
                peer.session.on_close();
                self.report.evicted += 1;
                if let Some(n) = self.evictions.hit() {
                    warn!(
                        "peer table full ({} peers): evicted {n} least recently active peer(s) \
                         (latest {})",
                        self.settings.max_peers,
                        shown(&old)
                    );
                }
            }
        }
        self.next_id += 1;
        self.report.peers += 1;
        info!("new unixgram peer {}", shown(path));
        let info = PeerInfo {
            id: self.next_id,
            addr: PeerAddr::Unix(Some(path.to_path_buf())),
            transport: Transport::Udp,
            user: None,
        };
        let mut peer = Peer {
            session: self.service.open(&info),
            codec: RawCodec::new(RECV_BUFFER),
            last_seen: now,
            datagrams: 0,
            feed: Arc::new(FeedWaker {
                path: path.to_path_buf(),
                queued: AtomicBool::new(false),
                tx: self.feed_tx.clone(),
            }),
        };
        self.out.set_peer_path(path);
        peer.session.on_open(&mut self.out).await;
        self.peers.put(path.to_path_buf(), peer);
        self.flush(path).await;
    }

    async fn on_push(&mut self, path: PathBuf, push: Push) {
        if !self.peers.contains(&path) {
            return;
        }
        match push {
            Push::Message(msg) => {
                self.out.set_peer_path(&path);
                self.out.send(msg);
                self.flush(&path).await;
                if self.out.is_closing() {
                    self.forget(&path, "closed by service");
                }
            }
            Push::Close => self.forget(&path, "closed by service"),
        }
    }

    /// Sends everything in the outbox to `path`, one datagram per message.
    async fn flush(&mut self, path: &Path) {
        let Driver {
            socket,
            peers,
            out,
            wbuf,
            report,
            ..
        } = self;
        let Some(peer) = peers.peek_mut(path) else {
            out.clear();
            return;
        };
        for msg in out.drain() {
            wbuf.clear();
            if peer.codec.encode(&msg, wbuf).is_err() {
                continue;
            }
            match send_to_peer(socket, wbuf, path).await {
                Ok(_) => report.datagrams_out += 1,
                Err(e) => debug!(
                    "cannot send {} bytes to unixgram:{}: {e}",
                    wbuf.len(),
                    shown(path)
                ),
            }
        }
    }

    fn forget(&mut self, path: &Path, why: &str) {
        if let Some(mut peer) = self.peers.pop(path) {
            peer.session.on_close();
            info!(
                "unixgram peer {} {why} ({} datagrams)",
                shown(path),
                peer.datagrams
            );
        }
    }

    /// Forgets peers silent for the idle limit, oldest first.
    fn sweep(&mut self, now: Instant) {
        let idle = self.settings.peer_idle;
        while let Some((_, peer)) = self.peers.peek_lru() {
            if now.saturating_duration_since(peer.last_seen) < idle {
                break;
            }
            if let Some((path, mut peer)) = self.peers.pop_lru() {
                peer.session.on_close();
                info!(
                    "unixgram peer {} expired after {}s of silence ({} datagrams)",
                    shown(&path),
                    idle.as_secs_f64(),
                    peer.datagrams
                );
            }
        }
    }
}

/// The key of a sender: its bound path, or for an abstract name a NUL byte and the name
/// (no file path holds a NUL); `None` for an unbound socket.
fn peer_key(addr: &tokio::net::unix::SocketAddr) -> Option<PathBuf> {
    if let Some(path) = addr.as_pathname() {
        return Some(path.to_path_buf());
    }
    let std: std::os::unix::net::SocketAddr = addr.clone().into();
    use std::os::linux::net::SocketAddrExt;
    let name = std.as_abstract_name()?;
    let mut key = Vec::with_capacity(name.len() + 1);
    key.push(0);
    key.extend_from_slice(name);
    Some(PathBuf::from(OsStr::from_bytes(&key)))
}

/// The abstract name in a peer key, if it is one.
fn abstract_name(path: &Path) -> Option<&[u8]> {
    path.as_os_str().as_bytes().strip_prefix(b"\0")
}

/// A peer key as people write it: the path, or `@name` for an abstract name.
fn shown(path: &Path) -> Cow<'_, str> {
    match abstract_name(path) {
        Some(name) => Cow::Owned(format!("@{}", String::from_utf8_lossy(name))),
        None => path.to_string_lossy(),
    }
}

/// Sends one datagram to a peer key: a path, or an abstract name.
async fn send_to_peer(socket: &UnixDatagram, buf: &[u8], path: &Path) -> std::io::Result<usize> {
    let Some(name) = abstract_name(path) else {
        return socket.send_to(buf, path).await;
    };
    use std::os::fd::AsRawFd;
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    let fd = socket.as_raw_fd();
    socket
        .async_io(tokio::io::Interest::WRITABLE, || {
            // SAFETY: `fd` is the socket's, open while `socket` is borrowed; ManuallyDrop keeps
            // this temporary std view from closing it.
            let view = std::mem::ManuallyDrop::new(unsafe {
                <std::os::unix::net::UnixDatagram as std::os::fd::FromRawFd>::from_raw_fd(fd)
            });
            view.send_to_addr(buf, &addr)
        })
        .await
}

/// Binds a unix datagram socket at `name` (no stale-file handling: see
/// [`crate::transport::unix::prepare_bind`]).
pub fn bind_unixgram(name: &crate::net::UnixName) -> std::io::Result<UnixDatagram> {
    let addr = crate::transport::stream::unix_socket_addr(name)?;
    let std = std::os::unix::net::UnixDatagram::bind_addr(&addr)?;
    std.set_nonblocking(true)?;
    UnixDatagram::from_std(std)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bound_and_abstract_peers_get_replies_and_unbound_ones_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let server_path = dir.path().join("srv.sock");
        let socket = UnixDatagram::bind(&server_path).unwrap();
        let stop = CancellationToken::new();
        let settings = UdpSettings {
            quit_words: true,
            peer_idle: Duration::from_secs(60),
            max_peers: 2,
            reply_rate: None,
        };
        let running = tokio::spawn(serve_unixgram(
            socket,
            Arc::new(crate::service::echo::Echo),
            settings,
            stop.clone(),
        ));
        let client = UnixDatagram::bind(dir.path().join("c.sock")).unwrap();
        client.send_to(b"hello", &server_path).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], b"hello");

        let unbound = UnixDatagram::unbound().unwrap();
        unbound.send_to(b"anyone?", &server_path).await.unwrap();
        // Three more peers through a table of two: the oldest are evicted, all are answered.
        for i in 0..3 {
            let c = UnixDatagram::bind(dir.path().join(format!("p{i}.sock"))).unwrap();
            c.send_to(b"x\n", &server_path).await.unwrap();
            let n = tokio::time::timeout(Duration::from_secs(5), c.recv(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&buf[..n], b"x\n");
        }
        client.send_to(b"bye", &server_path).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], b"bye");
        // A client bound to an abstract name is answered there.
        let name = format!("sockit-test-{}", std::process::id());
        let abs = {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
            let s = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
            s.set_nonblocking(true).unwrap();
            UnixDatagram::from_std(s).unwrap()
        };
        abs.send_to(b"abstract", &server_path).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), abs.recv(&mut buf))
            .await
            .expect("a reply to the abstract name")
            .unwrap();
        assert_eq!(&buf[..n], b"abstract");
        stop.cancel();
        let report = running.await.unwrap();
        assert_eq!(report.datagrams_in, 7);
        assert_eq!(report.datagrams_out, 6);
        // The first client was evicted by the later ones, and came back for its `bye` (which
        // freed its place for the abstract client).
        assert_eq!((report.peers, report.evicted), (6, 3), "{report:?}");
    }
}
