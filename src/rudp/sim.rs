//! A deterministic in-memory network for tests and benchmarks: a two-way [`Link`] with loss,
//! one-way delay ranges, FIFO or reordering delivery, duplication, bandwidth and an MTU per
//! direction, all driven by a virtual clock and a seeded RNG; and a [`Pair`] running a client
//! [`Connection`] against a server [`Endpoint`] over it.
//!
//! Virtual time is an `Instant` base plus offsets, so the core cannot tell it from a real
//! clock; a whole 30-second idle timeout takes microseconds to simulate.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::rng::Rng;
use super::{Config, Connection, ConnectionHandle, Endpoint, EndpointConfig, Event};

/// One direction of a link.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Probability that a datagram is lost, `0.0..=1.0`.
    pub loss: f64,
    /// Shortest one-way delay.
    pub delay_min: Duration,
    /// Longest one-way delay (uniform in between, at microsecond resolution).
    pub delay_max: Duration,
    /// `false`: FIFO (a datagram never overtakes an earlier one); `true`: each datagram has its
    /// own delay, so they reorder.
    pub reorder: bool,
    /// Probability that a datagram is delivered twice (the copy has its own delay).
    pub duplicate: f64,
    /// Bytes per second, 0 for unlimited.
    pub bandwidth: u64,
    /// Longest queue (in bytes waiting for the bandwidth) before tail drop; 0 for unlimited.
    pub queue_limit: usize,
    /// Datagrams larger than this are dropped.
    pub mtu: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            loss: 0.0,
            delay_min: Duration::from_millis(10),
            delay_max: Duration::from_millis(10),
            reorder: false,
            duplicate: 0.0,
            bandwidth: 0,
            queue_limit: 0,
            mtu: 65535,
        }
    }
}

impl LinkConfig {
    /// KCP's test link: `loss`, one-way delay uniform in 30–61 ms, FIFO.
    pub fn kcp_scenario(loss: f64) -> Self {
        LinkConfig {
            loss,
            delay_min: Duration::from_millis(30),
            delay_max: Duration::from_millis(61),
            ..LinkConfig::default()
        }
    }
}

/// Direction on a [`Link`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Client to server.
    Up = 0,
    /// Server to client.
    Down = 1,
}

/// Counters of one direction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirStats {
    /// Datagrams handed to the link.
    pub datagrams: u64,
    /// Their bytes (the "wire bytes": UDP payload, lost ones included).
    pub bytes: u64,
    /// Lost at random.
    pub lost: u64,
    /// Dropped for exceeding the MTU.
    pub too_big: u64,
    /// Dropped because the bandwidth queue was full.
    pub queue_drops: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
    /// Datagrams delivered (copies included).
    pub delivered: u64,
}

type Queue = BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>>;

/// A two-way lossy link in virtual time.
#[derive(Debug)]
pub struct Link {
    cfg: [LinkConfig; 2],
    rng: Rng,
    queues: [Queue; 2],
    order: u64,
    last_arrival: [Option<Instant>; 2],
    busy_until: [Option<Instant>; 2],
    stats: [DirStats; 2],
}

impl Link {
    /// A link with `up` (client→server) and `down` settings; `seed` fixes every random choice.
    pub fn new(up: LinkConfig, down: LinkConfig, seed: u64) -> Self {
        Link {
            cfg: [up, down],
            rng: Rng::new(seed),
            queues: [BinaryHeap::new(), BinaryHeap::new()],
            order: 0,
            last_arrival: [None, None],
            busy_until: [None, None],
            stats: [DirStats::default(), DirStats::default()],
        }
    }

    /// Changes one direction's settings from now on (datagrams in flight are unaffected).
    pub fn set_config(&mut self, dir: Dir, cfg: LinkConfig) {
        self.cfg[dir as usize] = cfg;
    }

    /// One direction's settings.
    pub fn config(&self, dir: Dir) -> &LinkConfig {
        &self.cfg[dir as usize]
    }

    /// Counters of one direction.
    pub fn stats(&self, dir: Dir) -> &DirStats {
        &self.stats[dir as usize]
    }

    fn delay(&mut self, d: usize) -> Duration {
        let c = &self.cfg[d];
        let lo = c.delay_min.as_micros() as u64;
        let hi = c.delay_max.as_micros() as u64;
        Duration::from_micros(self.rng.range_u64(lo, hi))
    }

    fn enqueue(&mut self, d: usize, at: Instant, data: Vec<u8>) {
        let at = if self.cfg[d].reorder {
            at
        } else {
            let a = self.last_arrival[d].map_or(at, |l| l.max(at));
            self.last_arrival[d] = Some(a);
            a
        };
        self.order += 1;
        self.queues[d].push(Reverse((at, self.order, data)));
    }

    /// Puts a datagram on the link at `now`.
    pub fn send(&mut self, now: Instant, dir: Dir, data: &[u8]) {
        let d = dir as usize;
        self.stats[d].datagrams += 1;
        self.stats[d].bytes += data.len() as u64;
        let cfg = self.cfg[d].clone();
        if data.len() > cfg.mtu {
            self.stats[d].too_big += 1;
            return;
        }
        let mut depart = now;
        if cfg.bandwidth > 0 {
            let start = self.busy_until[d].map_or(now, |b| b.max(now));
            let backlog = start.saturating_duration_since(now).as_secs_f64() * cfg.bandwidth as f64;
            if cfg.queue_limit > 0 && backlog > cfg.queue_limit as f64 {
                self.stats[d].queue_drops += 1;
                return;
            }
            let tx = Duration::from_secs_f64(data.len() as f64 / cfg.bandwidth as f64);
            depart = start + tx;
            self.busy_until[d] = Some(depart);
        }
        if self.rng.chance(cfg.loss) {
            self.stats[d].lost += 1;
            return;
        }
        let at = depart + self.delay(d);
        self.enqueue(d, at, data.to_vec());
        if self.rng.chance(cfg.duplicate) {
            self.stats[d].duplicated += 1;
            let at = depart + self.delay(d);
            self.enqueue(d, at, data.to_vec());
        }
    }

    /// When the next datagram arrives in `dir`.
    pub fn next_arrival(&self, dir: Dir) -> Option<Instant> {
        self.queues[dir as usize]
            .peek()
            .map(|Reverse((t, _, _))| *t)
    }

    /// When the next datagram arrives in either direction.
    pub fn next_any(&self) -> Option<Instant> {
        match (self.next_arrival(Dir::Up), self.next_arrival(Dir::Down)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A datagram that has arrived by `now` in `dir`, oldest first.
    pub fn recv(&mut self, now: Instant, dir: Dir) -> Option<Vec<u8>> {
        let q = &mut self.queues[dir as usize];
        if q.peek().is_some_and(|Reverse((t, _, _))| *t <= now) {
            self.stats[dir as usize].delivered += 1;
            q.pop().map(|Reverse((_, _, d))| d)
        } else {
            None
        }
    }
}

/// A client connection and a server endpoint joined by a [`Link`], in virtual time.
///
/// Drive it with [`Pair::step`] / [`Pair::run_until`]; between steps, act on the collected
/// events (`client_events`, `server_events`) and call `client.send`, `server.send`, etc.
pub struct Pair {
    /// The virtual clock.
    pub now: Instant,
    /// When the pair was created.
    pub start: Instant,
    /// The link (its counters are the wire bytes).
    pub link: Link,
    /// The client.
    pub client: Connection,
    /// The server.
    pub server: Endpoint,
    /// The client's address as the server sees it.
    pub client_addr: SocketAddr,
    /// The server's address.
    pub server_addr: SocketAddr,
    /// Events the client reported, in order.
    pub client_events: VecDeque<Event>,
    /// Events the server reported, in order.
    pub server_events: VecDeque<(ConnectionHandle, Event)>,
    /// The connection the server created for the client, once it exists.
    pub server_conn: Option<ConnectionHandle>,
    /// Server datagrams addressed elsewhere than the client (dropped).
    pub misaddressed: u64,
    /// Called for every datagram before it enters the link; returning `true` drops it (to
    /// lose chosen packets, e.g. the first `ACCEPT`). Dropped datagrams are not wire bytes.
    pub filter: Option<Filter>,
    buf: Vec<u8>,
}

/// A datagram filter for [`Pair::filter`]: `true` drops the datagram.
pub type Filter = Box<dyn FnMut(Dir, &[u8]) -> bool>;

impl std::fmt::Debug for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pair")
            .field("elapsed", &self.elapsed())
            .field("link", &self.link)
            .field("client", &self.client)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Pair {
    /// A new pair; `seed` derives the link's, the client's and the server's randomness.
    pub fn new(
        client: Config,
        server: EndpointConfig,
        up: LinkConfig,
        down: LinkConfig,
        seed: u64,
    ) -> Self {
        let start = Instant::now();
        let mut r = Rng::new(seed);
        let mut key = [0u8; 32];
        for c in key.chunks_mut(8) {
            c.copy_from_slice(&r.next_u64().to_le_bytes());
        }
        Pair {
            now: start,
            start,
            link: Link::new(up, down, r.next_u64()),
            client: Connection::connect(client, start, r.next_u64()),
            server: Endpoint::new(server, key, start),
            client_addr: "10.0.0.1:40000".parse().expect("literal address"),
            server_addr: "10.0.0.2:9000".parse().expect("literal address"),
            client_events: VecDeque::new(),
            server_events: VecDeque::new(),
            server_conn: None,
            misaddressed: 0,
            filter: None,
            buf: Vec::new(),
        }
    }

    /// Time since the pair was created.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Sends everything both sides have to send now and collects their events.
    pub fn flush(&mut self) {
        let now = self.now;
        while let Some(n) = self.client.poll_transmit(now, &mut self.buf) {
            if !self
                .filter
                .as_mut()
                .is_some_and(|f| f(Dir::Up, &self.buf[..n]))
            {
                self.link.send(now, Dir::Up, &self.buf[..n]);
            }
        }
        while let Some(t) = self.server.poll_transmit(now, &mut self.buf) {
            if t.destination == self.client_addr {
                if !self
                    .filter
                    .as_mut()
                    .is_some_and(|f| f(Dir::Down, &self.buf[..t.size]))
                {
                    self.link.send(now, Dir::Down, &self.buf[..t.size]);
                }
            } else {
                self.misaddressed += 1;
            }
        }
        while let Some(ev) = self.client.poll_event() {
            self.client_events.push_back(ev);
        }
        while let Some((h, ev)) = self.server.poll_event() {
            if ev == Event::Connected {
                self.server_conn = Some(h);
            }
            self.server_events.push_back((h, ev));
        }
    }

    /// The next instant anything happens (a delivery or a timer), if any.
    pub fn next_event(&self) -> Option<Instant> {
        [
            self.link.next_any(),
            self.client.poll_timeout(),
            self.server.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Advances to the next event or to `limit`, whichever is first, handles it, and flushes.
    /// Returns `false` when it stopped at `limit`.
    pub fn step(&mut self, limit: Instant) -> bool {
        self.flush();
        let (t, reached) = match self.next_event() {
            Some(t) if t <= limit => (t.max(self.now), true),
            _ => (limit.max(self.now), false),
        };
        self.now = t;
        while let Some(d) = self.link.recv(t, Dir::Up) {
            let addr = self.client_addr;
            self.server.handle_datagram(t, addr, &d);
        }
        while let Some(d) = self.link.recv(t, Dir::Down) {
            self.client.handle_datagram(t, &d);
        }
        if self.client.poll_timeout().is_some_and(|x| x <= t) {
            self.client.handle_timeout(t);
        }
        self.server.handle_timeout(t);
        self.flush();
        reached
    }

    /// Runs until virtual time `t`.
    ///
    /// # Panics
    /// If the connections keep asking to run at one instant without making progress (a bug
    /// the simulator is there to catch).
    pub fn run_until(&mut self, t: Instant) {
        let mut same = 0u32;
        while self.now < t {
            let before = self.now;
            if !self.step(t) {
                break;
            }
            if self.now == before {
                same += 1;
                assert!(same < 100_000, "simulation stuck at {:?}", self.elapsed());
            } else {
                same = 0;
            }
        }
        self.flush();
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let t = self.now + d;
        self.run_until(t);
    }

    /// Runs event by event until `done` returns true or `max` of virtual time passed; returns
    /// whether `done` became true.
    pub fn run_until_cond(
        &mut self,
        max: Duration,
        mut done: impl FnMut(&mut Pair) -> bool,
    ) -> bool {
        let end = self.now + max;
        let mut same = 0u32;
        loop {
            if done(self) {
                return true;
            }
            if self.now >= end {
                return false;
            }
            let before = self.now;
            self.step(end);
            if self.now == before {
                same += 1;
                assert!(same < 100_000, "simulation stuck at {:?}", self.elapsed());
            } else {
                same = 0;
            }
        }
    }

    /// Runs until both sides report `Connected` (or `max` passes).
    pub fn connect(&mut self, max: Duration) -> bool {
        self.run_until_cond(max, |p| {
            p.server_conn.is_some() && p.client_events.contains(&Event::Connected)
        })
    }

    /// Wire bytes sent in both directions.
    pub fn wire_bytes(&self) -> u64 {
        self.link.stats(Dir::Up).bytes + self.link.stats(Dir::Down).bytes
    }
}
