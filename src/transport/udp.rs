//! Runs a service over one UDP socket: every datagram is a message, each sender address gets a
//! session of its own, and replies go back to the address the datagram came from.
//!
//! UDP has no close, so a peer's session ends when it sends a quit word, when its session
//! closes, or when it has been silent for the idle limit. The peer table is bounded: when it is
//! full, the least recently active peer makes room for the newcomer, so a flood of spoofed or
//! one-off source ports cannot lock real clients out.
//!
//! A UDP reply goes wherever the source address says, and that address can be forged: an
//! internet-facing echo or ack service is a reflector (a 0-byte datagram earns a 41-byte `ack`).
//! `reply_rate` caps the replies per second to each source IP with a token bucket.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use lru::LruCache;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::codec::Encoder;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::codec::RawCodec;
use crate::logging::RateLimited;
use crate::message::Message;
use crate::net::PeerAddr;
use crate::service::{Outbox, PeerInfo, Push, Service, Session, Transport};
use crate::shutdown::ShutdownSignal;

/// How long a silent UDP peer keeps its session when no idle timeout is configured.
pub const DEFAULT_PEER_IDLE: Duration = Duration::from_secs(120);
/// Capacity of the queue shared by every push handle of one UDP socket.
const PUSH_QUEUE: usize = 8192;
/// Most datagrams handled per wake-up of the receive loop.
const RECV_BATCH: usize = 64;
/// Receive buffer: large enough for any UDP payload, so nothing is ever truncated.
const RECV_BUFFER: usize = 65_536;
/// Source addresses whose reply rate is tracked; the least recent are forgotten beyond this.
const RATE_TABLE: usize = 65_536;

/// Policy for a UDP server.
#[derive(Clone, Debug)]
pub struct UdpSettings {
    /// Answer `bye`/`quit` with `bye` and forget the peer.
    pub quit_words: bool,
    /// How long a silent peer keeps its session.
    pub peer_idle: Duration,
    /// How many peers may have sessions at once.
    pub max_peers: usize,
    /// Most replies per second to one source IP address; `None` is unlimited.
    pub reply_rate: Option<u32>,
}

/// Totals for a UDP server run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UdpReport {
    /// Datagrams received.
    pub datagrams_in: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
    /// Distinct peers that got a session.
    pub peers: u64,
    /// Peers dropped, least recently active first, to make room in a full peer table.
    pub evicted: u64,
    /// Replies not sent because their destination was over its reply rate.
    pub rate_limited: u64,
}

/// A token bucket per source IP: `rate` replies a second, in bursts of up to `rate`.
struct ReplyLimiter {
    rate: f64,
    buckets: LruCache<IpAddr, (f64, Instant)>,
}

impl ReplyLimiter {
    fn new(rate: u32) -> Self {
        ReplyLimiter {
            rate: f64::from(rate.max(1)),
            buckets: LruCache::new(NonZeroUsize::new(RATE_TABLE).unwrap_or(NonZeroUsize::MIN)),
        }
    }

    /// Takes one token for `ip`; false if it has none left.
    fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        let rate = self.rate;
        let (tokens, last) = self.buckets.get_or_insert_mut(ip, || (rate, now));
        let refill = now.saturating_duration_since(*last).as_secs_f64() * rate;
        *tokens = (*tokens + refill).min(rate);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Peer<Se> {
    session: Se,
    codec: RawCodec,
    last_seen: Instant,
    datagrams: u64,
}

struct Driver<Sv: Service> {
    socket: Arc<UdpSocket>,
    service: Arc<Sv>,
    settings: UdpSettings,
    /// Most recently active first.
    peers: LruCache<SocketAddr, Peer<Sv::Session>>,
    out: Outbox,
    wbuf: BytesMut,
    next_id: u64,
    evictions: RateLimited,
    limiter: Option<ReplyLimiter>,
    limited: RateLimited,
    report: UdpReport,
}

/// Serves `service` on `socket` until `shutdown` is cancelled.
pub async fn serve_udp<Sv: Service>(
    socket: UdpSocket,
    service: Arc<Sv>,
    settings: UdpSettings,
    shutdown: CancellationToken,
) -> UdpReport {
    let (push_tx, mut push_rx) = mpsc::channel(PUSH_QUEUE);
    let placeholder = socket
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let limiter = settings.reply_rate.map(ReplyLimiter::new);
    let socket = Arc::new(socket);
    let mut driver = Driver {
        socket: socket.clone(),
        service,
        settings,
        peers: LruCache::unbounded(),
        out: Outbox::for_datagrams(push_tx, socket, placeholder),
        wbuf: BytesMut::new(),
        next_id: 0,
        evictions: RateLimited::new(Duration::from_secs(1)),
        limiter,
        limited: RateLimited::new(Duration::from_secs(1)),
        report: UdpReport::default(),
    };
    // Checked once per wake-up: the cheap signal, fed by the caller's token.
    let closing = ShutdownSignal::new();
    let mut shutdown_listener = closing.listen();
    let relay = tokio::spawn(async move {
        shutdown.cancelled().await;
        closing.trigger();
    });
    let mut buf = vec![0u8; RECV_BUFFER];
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            biased;
            () = &mut shutdown_listener => break,
            Some((addr, push)) = push_rx.recv() => driver.on_push(addr, push).await,
            received = driver.socket.recv_from(&mut buf) => {
                let mut received = received;
                let mut handled = 0;
                // Handle every datagram already queued before going back to `select!`: under
                // load one wake-up serves a batch. Bounded so pushes and shutdown still run;
                // a datagram is only read when there is room in the batch to handle it.
                loop {
                    match received {
                        Ok((n, addr)) => {
                            let datagram = Bytes::copy_from_slice(&buf[..n]);
                            driver.on_datagram(addr, datagram).await;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        // Linux reports ICMP errors for earlier sends on a later receive; they
                        // concern one peer and must not stop the server.
                        Err(e) => debug!("udp receive error: {e}"),
                    }
                    handled += 1;
                    if handled == RECV_BATCH {
                        break;
                    }
                    received = driver.socket.try_recv_from(&mut buf);
                }
            }
            _ = sweep.tick() => driver.sweep(Instant::now()),
        }
    }
    relay.abort();
    while let Some((addr, mut peer)) = driver.peers.pop_lru() {
        peer.session.on_close();
        debug!("peer {addr} closed: server shutting down");
    }
    driver.report
}

impl<Sv: Service> Driver<Sv> {
    async fn on_datagram(&mut self, addr: SocketAddr, datagram: Bytes) {
        self.report.datagrams_in += 1;
        let now = Instant::now();
        if !self.peers.contains(&addr) {
            self.admit(addr, now).await;
        }
        // `get_mut` also marks the peer most recently active.
        let Some(peer) = self.peers.get_mut(&addr) else {
            return;
        };
        peer.last_seen = now;
        peer.datagrams += 1;
        debug!("datagram from {addr}: {} bytes", datagram.len());
        let msg = peer.codec.decode_datagram(datagram);
        self.out.set_peer(addr);
        let quit =
            self.settings.quit_words && peer.session.ends_on_quit_word() && msg.is_quit_word();
        if quit {
            self.out.send(Message::text("bye"));
        } else {
            peer.session.on_message(msg, &mut self.out).await;
        }
        self.flush(addr).await;
        if quit || self.out.is_closing() {
            self.forget(
                addr,
                if quit {
                    "said bye"
                } else {
                    "closed by service"
                },
            );
        }
    }

    /// Opens a session for a new peer, making room if the table is full: expired peers go
    /// first, then the least recently active one.
    async fn admit(&mut self, addr: SocketAddr, now: Instant) {
        if self.peers.len() >= self.settings.max_peers {
            self.sweep(now);
        }
        if self.peers.len() >= self.settings.max_peers {
            if let Some((old, mut peer)) = self.peers.pop_lru() {
                peer.session.on_close();
                self.report.evicted += 1;
                debug!("udp peer {old} evicted to make room for {addr}");
                if let Some(n) = self.evictions.hit() {
                    warn!(
                        "peer table full ({} peers): evicted {n} least recently active peer(s) \
                         (latest for {addr})",
                        self.settings.max_peers
                    );
                }
            }
        }
        self.next_id += 1;
        self.report.peers += 1;
        info!("new udp peer {addr}");
        let info = PeerInfo {
            id: self.next_id,
            addr: PeerAddr::Inet(addr),
            transport: Transport::Udp,
            user: None,
        };
        let mut peer = Peer {
            session: self.service.open(&info),
            codec: RawCodec::new(RECV_BUFFER),
            last_seen: now,
            datagrams: 0,
        };
        self.out.set_peer(addr);
        peer.session.on_open(&mut self.out).await;
        self.peers.put(addr, peer);
        self.flush(addr).await;
    }

    async fn on_push(&mut self, addr: SocketAddr, push: Push) {
        if !self.peers.contains(&addr) {
            return;
        }
        match push {
            Push::Message(msg) => {
                self.out.set_peer(addr);
                self.out.send(msg);
                self.flush(addr).await;
            }
            Push::Close => self.forget(addr, "closed by service"),
        }
    }

    /// Sends everything in the outbox to `addr`, one datagram per message.
    async fn flush(&mut self, addr: SocketAddr) {
        let Driver {
            socket,
            peers,
            out,
            wbuf,
            report,
            limiter,
            limited,
            ..
        } = self;
        let Some(peer) = peers.peek_mut(&addr) else {
            out.clear();
            return;
        };
        for msg in out.drain() {
            if let Some(limiter) = limiter.as_mut() {
                if !limiter.allow(addr.ip(), Instant::now()) {
                    report.rate_limited += 1;
                    if let Some(n) = limited.hit() {
                        warn!("udp reply rate limit: dropped {n} repl(ies) (latest to {addr})");
                    }
                    continue;
                }
            }
            send_datagram(socket, wbuf, report, addr, &msg, &mut peer.codec).await;
        }
    }

    fn forget(&mut self, addr: SocketAddr, why: &str) {
        if let Some(mut peer) = self.peers.pop(&addr) {
            peer.session.on_close();
            info!("udp peer {addr} {why} ({} datagrams)", peer.datagrams);
        }
    }

    /// Forgets peers silent for the idle limit, oldest first; stops at the first active one.
    fn sweep(&mut self, now: Instant) {
        let idle = self.settings.peer_idle;
        while let Some((_, peer)) = self.peers.peek_lru() {
            if now.saturating_duration_since(peer.last_seen) < idle {
                break;
            }
            if let Some((addr, mut peer)) = self.peers.pop_lru() {
                peer.session.on_close();
                info!(
                    "udp peer {addr} expired after {}s of silence ({} datagrams)",
                    idle.as_secs_f64(),
                    peer.datagrams
                );
            }
        }
    }
}

/// Encodes `msg` as one datagram and sends it to `addr`; failures are logged, not fatal.
async fn send_datagram(
    socket: &UdpSocket,
    wbuf: &mut BytesMut,
    report: &mut UdpReport,
    addr: SocketAddr,
    msg: &Message,
    codec: &mut RawCodec,
) {
    wbuf.clear();
    if codec.encode(msg, wbuf).is_err() {
        return;
    }
    match socket.send_to(wbuf, addr).await {
        Ok(_) => report.datagrams_out += 1,
        Err(e) => warn!("cannot send {} bytes to {addr}: {e}", wbuf.len()),
    }
}
