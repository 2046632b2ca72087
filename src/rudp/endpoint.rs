//! The server side: a stateless cookie handshake and demultiplexing by connection id.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::conn::Connection;
use super::packet::{self, Packet, TOKEN_LEN};
use super::rng::Rng;
use super::{Config, Event, SendError};

/// Server settings.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// Settings of every accepted connection.
    pub connection: Config,
    /// Most connections at once; a valid handshake beyond it is dropped (counted). 10000.
    pub max_connections: usize,
    /// Width of the cookie's time bucket; a cookie is valid for one to two of these. 10 s.
    pub token_period: Duration,
    /// Most handshake answers (`RETRY`) waiting to be sent; more are dropped. 1024.
    pub max_pending_answers: usize,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            connection: Config::default(),
            max_connections: 10_000,
            token_period: Duration::from_secs(10),
            max_pending_answers: 1024,
        }
    }
}

/// What the endpoint dropped or did, by kind. Nothing counted here changed any state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointStats {
    /// Datagrams handed in.
    pub datagrams: u64,
    /// Unparseable: garbage, truncated headers, bad lengths, unknown types.
    pub malformed: u64,
    /// `INITIAL` of another protocol version.
    pub bad_version: u64,
    /// `RETRY` sent (no state kept).
    pub retries_sent: u64,
    /// `RETRY` not sent because the answer queue was full.
    pub answers_dropped: u64,
    /// `INITIAL` with a cookie that does not match the address, id or time.
    pub invalid_tokens: u64,
    /// Connections created.
    pub accepted: u64,
    /// Valid handshakes refused because `max_connections` was reached.
    pub refused_full: u64,
    /// `DATA` for a connection id the endpoint does not have.
    pub unknown_connection: u64,
    /// `DATA` for a known id from another address.
    pub wrong_address: u64,
    /// Packet types a server never receives (`RETRY`, `ACCEPT`).
    pub unexpected: u64,
    /// Connections removed after closing.
    pub closed: u64,
}

/// Identifies a connection of an [`Endpoint`] (its local connection id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionHandle(pub u64);

/// A datagram `poll_transmit` wrote: send `size` bytes of the buffer to `destination`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub destination: SocketAddr,
    /// Its length.
    pub size: usize,
}

#[derive(Debug)]
struct Entry {
    conn: Connection,
    peer: SocketAddr,
    client_cid: u64,
    /// Queued in `dirty` (may have datagrams to send).
    in_tx: bool,
    /// Queued in `ev_ready` (may have events).
    in_ev: bool,
    /// The time of this connection's live entry in `timers`, if any.
    scheduled: Option<Instant>,
}

/// The server side of rudp over one socket: answers handshakes statelessly, creates
/// connections for clients that proved their address, routes `DATA` by connection id.
#[derive(Debug)]
pub struct Endpoint {
    cfg: EndpointConfig,
    key: [u8; 32],
    epoch: Instant,
    rng: Rng,
    conns: HashMap<u64, Entry>,
    by_client: HashMap<(SocketAddr, u64), u64>,
    dirty: VecDeque<u64>,
    ev_ready: VecDeque<u64>,
    /// Timer wheel in a heap: at most one live entry per connection, never later than the
    /// connection's own `poll_timeout` (an earlier one just wakes it early).
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    answers: VecDeque<(SocketAddr, [u8; packet::RETRY_LEN])>,
    stats: EndpointStats,
}

impl Endpoint {
    /// A new endpoint. `seed` keys the cookies and seeds the connection ids (pass 32 bytes of
    /// OS randomness in production; a fixed value makes a simulation reproducible). `now`
    /// starts the cookie clock.
    pub fn new(cfg: EndpointConfig, seed: [u8; 32], now: Instant) -> Self {
        let key = blake3::derive_key("sockit rudp 2026 cookie key", &seed);
        let rng_seed = blake3::derive_key("sockit rudp 2026 connection ids", &seed);
        let mut s = [0u8; 8];
        s.copy_from_slice(&rng_seed[..8]);
        Endpoint {
            cfg,
            key,
            epoch: now,
            rng: Rng::new(u64::from_le_bytes(s)),
            conns: HashMap::new(),
            by_client: HashMap::new(),
            dirty: VecDeque::new(),
            ev_ready: VecDeque::new(),
            timers: BinaryHeap::new(),
            answers: VecDeque::new(),
            stats: EndpointStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> &EndpointStats {
        &self.stats
    }

    /// Number of live connections.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// No live connections.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// The handles of all live connections.
    pub fn handles(&self) -> Vec<ConnectionHandle> {
        self.conns.keys().map(|&k| ConnectionHandle(k)).collect()
    }

    /// A connection, to inspect.
    pub fn connection(&self, h: ConnectionHandle) -> Option<&Connection> {
        self.conns.get(&h.0).map(|e| &e.conn)
    }

    /// A connection, to act on (marked for `poll_transmit`/`poll_event`).
    pub fn connection_mut(&mut self, h: ConnectionHandle) -> Option<&mut Connection> {
        self.mark(h.0);
        self.conns.get_mut(&h.0).map(|e| &mut e.conn)
    }

    /// The peer address of a connection.
    pub fn peer(&self, h: ConnectionHandle) -> Option<SocketAddr> {
        self.conns.get(&h.0).map(|e| e.peer)
    }

    /// Queues a message on a connection.
    pub fn send(&mut self, h: ConnectionHandle, msg: Bytes) -> Result<(), SendError> {
        self.connection_mut(h).ok_or(SendError::Closed)?.send(msg)
    }

    /// Closes a connection gracefully.
    pub fn close(&mut self, h: ConnectionHandle) {
        if let Some(c) = self.connection_mut(h) {
            c.close();
        }
    }

    fn bucket(&self, now: Instant) -> u64 {
        let p = self.cfg.token_period.as_millis().max(1);
        (now.saturating_duration_since(self.epoch).as_millis() / p) as u64
    }

    fn token(&self, peer: SocketAddr, cid: u64, bucket: u64) -> [u8; TOKEN_LEN] {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(&[packet::VERSION]);
        match peer.ip() {
            IpAddr::V4(ip) => h.update(&[4]).update(&ip.octets()),
            IpAddr::V6(ip) => h.update(&[6]).update(&ip.octets()),
        };
        h.update(&peer.port().to_be_bytes());
        h.update(&cid.to_be_bytes());
        h.update(&bucket.to_be_bytes());
        let mut t = [0u8; TOKEN_LEN];
        t.copy_from_slice(&h.finalize().as_bytes()[..TOKEN_LEN]);
        t
    }

    fn token_valid(&self, now: Instant, peer: SocketAddr, cid: u64, t: &[u8; TOKEN_LEN]) -> bool {
        let b = self.bucket(now);
        let eq = |x: &[u8; TOKEN_LEN]| x.iter().zip(t).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        eq(&self.token(peer, cid, b)) || (b > 0 && eq(&self.token(peer, cid, b - 1)))
    }

    fn mark(&mut self, cid: u64) {
        if let Some(e) = self.conns.get_mut(&cid) {
            if !e.in_tx {
                e.in_tx = true;
                self.dirty.push_back(cid);
            }
            if !e.in_ev {
                e.in_ev = true;
                self.ev_ready.push_back(cid);
            }
        }
    }

    /// Handles one datagram from `peer`. Returns the handle of a connection this datagram
    /// created (its `Connected` event is waiting in `poll_event`).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        buf: &[u8],
    ) -> Option<ConnectionHandle> {
        self.stats.datagrams += 1;
        if let Some(dst) = packet::data_destination(buf) {
            let Some(e) = self.conns.get_mut(&dst) else {
                self.stats.unknown_connection += 1;
                return None;
            };
            if e.peer != peer {
                self.stats.wrong_address += 1;
                return None;
            }
            e.conn.handle_datagram(now, buf);
            self.mark(dst);
            self.schedule(dst);
            return None;
        }
        match packet::parse(buf) {
            Err(_) => {
                self.stats.malformed += 1;
                None
            }
            Ok(Packet::Initial { version, .. }) if version != packet::VERSION => {
                self.stats.bad_version += 1;
                None
            }
            Ok(Packet::Initial {
                cid, token: None, ..
            }) => {
                if self.answers.len() >= self.cfg.max_pending_answers {
                    self.stats.answers_dropped += 1;
                    return None;
                }
                let t = self.token(peer, cid, self.bucket(now));
                let mut b = [0u8; packet::RETRY_LEN];
                let mut v = Vec::with_capacity(packet::RETRY_LEN);
                packet::write_retry(&mut v, cid, &t);
                b.copy_from_slice(&v);
                self.answers.push_back((peer, b));
                self.stats.retries_sent += 1;
                None
            }
            Ok(Packet::Initial {
                cid,
                token: Some(t),
                ..
            }) => {
                if !self.token_valid(now, peer, cid, &t) {
                    self.stats.invalid_tokens += 1;
                    return None;
                }
                if let Some(&local) = self.by_client.get(&(peer, cid)) {
                    if let Some(e) = self.conns.get_mut(&local) {
                        e.conn.resend_accept(now);
                    }
                    self.mark(local);
                    return None;
                }
                if self.conns.len() >= self.cfg.max_connections {
                    self.stats.refused_full += 1;
                    return None;
                }
                let local = loop {
                    let c = self.rng.nonzero_u64();
                    if !self.conns.contains_key(&c) {
                        break c;
                    }
                };
                let conn = Connection::accept(self.cfg.connection.clone(), now, local, cid);
                self.conns.insert(
                    local,
                    Entry {
                        conn,
                        peer,
                        client_cid: cid,
                        in_tx: false,
                        in_ev: false,
                        scheduled: None,
                    },
                );
                self.by_client.insert((peer, cid), local);
                self.mark(local);
                self.schedule(local);
                self.stats.accepted += 1;
                Some(ConnectionHandle(local))
            }
            Ok(_) => {
                self.stats.unexpected += 1;
                None
            }
        }
    }

    /// Writes the next datagram to send into `buf`; call until `None` after every input.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> Option<Transmit> {
        if let Some((dest, b)) = self.answers.pop_front() {
            buf.clear();
            buf.extend_from_slice(&b);
            return Some(Transmit {
                destination: dest,
                size: b.len(),
            });
        }
        while let Some(&cid) = self.dirty.front() {
            let Some(e) = self.conns.get_mut(&cid) else {
                self.dirty.pop_front();
                continue;
            };
            if let Some(size) = e.conn.poll_transmit(now, buf) {
                return Some(Transmit {
                    destination: e.peer,
                    size,
                });
            }
            self.dirty.pop_front();
            e.in_tx = false;
            if e.conn.is_drained() && !e.conn.has_events() {
                self.remove(cid);
            } else {
                self.schedule(cid);
            }
        }
        None
    }

    /// Makes sure the timer heap wakes `cid` no later than its `poll_timeout`.
    fn schedule(&mut self, cid: u64) {
        let Some(e) = self.conns.get_mut(&cid) else {
            return;
        };
        if let Some(t) = e.conn.poll_timeout() {
            if e.scheduled.is_none_or(|s| t < s) {
                e.scheduled = Some(t);
                self.timers.push(Reverse((t, cid)));
            }
        }
    }

    /// The next event of any connection. A connection whose `Closed` event was returned and
    /// that has nothing left to send is removed.
    pub fn poll_event(&mut self) -> Option<(ConnectionHandle, Event)> {
        self.poll_event_where(|_| true)
    }

    /// The next event of a connection for which `ready` says yes; the others keep their events
    /// (a driver uses this to stop taking messages for a reader that is behind, so the
    /// connection's receive window closes). Call [`Endpoint::connection_mut`] on a connection
    /// to have it looked at again.
    pub fn poll_event_where(
        &mut self,
        mut ready: impl FnMut(ConnectionHandle) -> bool,
    ) -> Option<(ConnectionHandle, Event)> {
        let mut i = 0;
        while i < self.ev_ready.len() {
            let cid = self.ev_ready[i];
            let Some(e) = self.conns.get_mut(&cid) else {
                self.ev_ready.remove(i);
                continue;
            };
            if !ready(ConnectionHandle(cid)) {
                i += 1;
                continue;
            }
            match e.conn.poll_event() {
                Some(ev) => {
                    if matches!(ev, Event::Closed(_)) && e.conn.is_drained() {
                        self.ev_ready.remove(i);
                        self.remove(cid);
                    } else {
                        // Taking a message can reopen the window (an ACK due now).
                        self.schedule(cid);
                    }
                    return Some((ConnectionHandle(cid), ev));
                }
                None => {
                    e.in_ev = false;
                    self.ev_ready.remove(i);
                }
            }
        }
        None
    }

    fn remove(&mut self, cid: u64) {
        if let Some(e) = self.conns.remove(&cid) {
            self.by_client.remove(&(e.peer, e.client_cid));
            self.stats.closed += 1;
        }
    }

    /// Runs the due timers of the connections (and drops drained connections whose events
    /// were all taken).
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut due = Vec::new();
        while let Some(&Reverse((t, cid))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            if let Some(e) = self.conns.get_mut(&cid) {
                if e.scheduled == Some(t) {
                    e.scheduled = None;
                    due.push(cid);
                }
            }
        }
        for cid in due {
            let Some(e) = self.conns.get_mut(&cid) else {
                continue;
            };
            if e.conn.poll_timeout().is_some_and(|t| t <= now) {
                e.conn.handle_timeout(now);
            }
            if e.conn.is_drained() && !e.conn.has_events() {
                self.remove(cid);
                continue;
            }
            self.mark(cid);
            self.schedule(cid);
        }
    }

    /// The earliest timer of any connection (or `None` with nothing pending).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }
}
