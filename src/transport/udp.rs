//! Runs a service over one UDP socket: every datagram is a message, each sender address gets a
//! session of its own, and replies go back to the address the datagram came from.
//!
//! UDP has no close, so a peer's session ends when it sends a quit word, when its session
//! closes, or when it has been silent for the idle limit. The peer table is bounded: when it is
//! full, expired peers are swept out, and if none are, the newcomer is told the server is busy.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::codec::Encoder;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::codec::RawCodec;
use crate::message::Message;
use crate::server::RateLimited;
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

/// Policy for a UDP server.
#[derive(Clone, Debug)]
pub struct UdpSettings {
    /// Answer `bye`/`quit` with `bye` and forget the peer.
    pub quit_words: bool,
    /// How long a silent peer keeps its session.
    pub peer_idle: Duration,
    /// How many peers may have sessions at once.
    pub max_peers: usize,
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
    /// Datagrams answered with "server busy" because the peer table was full.
    pub refused: u64,
}

struct Peer<Se> {
    session: Se,
    codec: RawCodec,
    last_seen: Instant,
    datagrams: u64,
}

struct Driver<Sv: Service> {
    socket: UdpSocket,
    service: Arc<Sv>,
    settings: UdpSettings,
    peers: HashMap<SocketAddr, Peer<Sv::Session>>,
    out: Outbox,
    wbuf: BytesMut,
    next_id: u64,
    last_sweep: Instant,
    refusals: RateLimited,
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
    let mut driver = Driver {
        socket,
        service,
        settings,
        peers: HashMap::new(),
        out: Outbox::for_datagrams(push_tx, placeholder),
        wbuf: BytesMut::new(),
        next_id: 0,
        last_sweep: Instant::now(),
        refusals: RateLimited::new(Duration::from_secs(1)),
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
    for (addr, mut peer) in driver.peers.drain() {
        peer.session.on_close();
        debug!("peer {addr} closed: server shutting down");
    }
    driver.report
}

impl<Sv: Service> Driver<Sv> {
    async fn on_datagram(&mut self, addr: SocketAddr, datagram: Bytes) {
        self.report.datagrams_in += 1;
        let now = Instant::now();
        if !self.peers.contains_key(&addr) && !self.admit(addr, &datagram, now).await {
            return;
        }
        let Some(peer) = self.peers.get_mut(&addr) else {
            return;
        };
        peer.last_seen = now;
        peer.datagrams += 1;
        debug!("datagram from {addr}: {} bytes", datagram.len());
        let msg = peer.codec.decode_datagram(datagram);
        self.out.set_peer(addr);
        let quit = self.settings.quit_words && msg.is_quit_word();
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

    /// Opens a session for a new peer, making room if the table is full.
    async fn admit(&mut self, addr: SocketAddr, first: &Bytes, now: Instant) -> bool {
        if self.peers.len() >= self.settings.max_peers {
            // Sweeping is O(peers): at most once a second, however hard the flood.
            if now.duration_since(self.last_sweep) >= Duration::from_secs(1) {
                self.sweep(now);
            }
            if self.peers.len() >= self.settings.max_peers {
                self.report.refused += 1;
                if let Some(n) = self.refusals.hit() {
                    warn!(
                        "refused {n} udp peer(s) (latest {addr}): limit of {} peers reached",
                        self.settings.max_peers
                    );
                }
                let busy = Message::text(format!(
                    "error: server busy ({} peers), try again later",
                    self.settings.max_peers
                ));
                // Answer in the newcomer's own style: a line if it sent a line.
                let mut codec = RawCodec::new(RECV_BUFFER);
                codec.decode_datagram(first.clone());
                send_datagram(
                    &self.socket,
                    &mut self.wbuf,
                    &mut self.report,
                    addr,
                    &busy,
                    &mut codec,
                )
                .await;
                return false;
            }
        }
        self.next_id += 1;
        self.report.peers += 1;
        info!("new udp peer {addr}");
        let info = PeerInfo {
            id: self.next_id,
            addr,
            transport: Transport::Udp,
        };
        let mut peer = Peer {
            session: self.service.open(&info),
            codec: RawCodec::new(RECV_BUFFER),
            last_seen: now,
            datagrams: 0,
        };
        self.out.set_peer(addr);
        peer.session.on_open(&mut self.out).await;
        self.peers.insert(addr, peer);
        self.flush(addr).await;
        true
    }

    async fn on_push(&mut self, addr: SocketAddr, push: Push) {
        if !self.peers.contains_key(&addr) {
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
            ..
        } = self;
        let Some(peer) = peers.get_mut(&addr) else {
            out.clear();
            return;
        };
        for msg in out.drain() {
            send_datagram(socket, wbuf, report, addr, &msg, &mut peer.codec).await;
        }
    }

    fn forget(&mut self, addr: SocketAddr, why: &str) {
        if let Entry::Occupied(e) = self.peers.entry(addr) {
            let mut peer = e.remove();
            peer.session.on_close();
            info!("udp peer {addr} {why} ({} datagrams)", peer.datagrams);
        }
    }

    fn sweep(&mut self, now: Instant) {
        self.last_sweep = now;
        let idle = self.settings.peer_idle;
        self.peers.retain(|addr, peer| {
            let keep = now.duration_since(peer.last_seen) < idle;
            if !keep {
                peer.session.on_close();
                info!(
                    "udp peer {addr} expired after {}s of silence ({} datagrams)",
                    idle.as_secs_f64(),
                    peer.datagrams
                );
            }
            keep
        });
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
