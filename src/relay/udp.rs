//! The UDP side of the relay: one upstream socket per client address (so the target sees one
//! peer per client and its replies find their way back), an idle timeout per flow, and a
//! bounded flow table that evicts the least recently used flow.
//!
//! Without faults and taps a datagram is forwarded inline by the receiving task: one
//! recvmmsg(2) takes what is queued (see [`crate::relay::batch`]) and each datagram is sent on
//! at once; with them, each direction of a flow has an egress task that runs
//! the faults and sends at the scheduled times, behind a queue of at most [`QUEUE`] datagrams.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::sleep_until;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::net::resolve;
use crate::relay::batch;
use crate::relay::fault::{self, Dir, FaultKind, Rng};
use crate::relay::inspect::Tap;
use crate::relay::{Close, ConnRecord, RelayConfig, RelayReport, admitted};

/// Most datagrams waiting in one direction of one flow (delayed, rate-limited, held).
pub const QUEUE: usize = 1024;
/// Idle timeout of a flow when none is given.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(60);

struct Flow {
    id: u64,
    client: SocketAddr,
    upstream: Arc<UdpSocket>,
    start: Instant,
    /// Milliseconds since `start` of the last datagram either way.
    last: AtomicU64,
    up: AtomicU64,
    up_bytes: AtomicU64,
    down: AtomicU64,
    down_bytes: AtomicU64,
    /// The egress of the up direction, when faults or taps are on.
    up_tx: Option<mpsc::Sender<Vec<u8>>>,
    cancel: CancellationToken,
    evicted: std::sync::atomic::AtomicBool,
}

impl Flow {
    fn touch(&self) {
        self.last
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

type Table = Arc<Mutex<LruCache<SocketAddr, Arc<Flow>>>>;

/// Receives from clients and forwards, until `shutdown`.
pub(crate) async fn run(
    sock: Arc<UdpSocket>,
    config: Arc<RelayConfig>,
    shutdown: CancellationToken,
) -> RelayReport {
    let cap = NonZeroUsize::new(config.udp_flows.max(1)).unwrap_or(NonZeroUsize::MIN);
    let table: Table = Arc::new(Mutex::new(LruCache::new(cap)));
    let mut report = RelayReport::default();
    let mut next_id = 0u64;
    // Datagrams the batch could not send at once: from clients without a flow yet (opening
    // one awaits), or met with a full send buffer (and everything after them, to keep order).
    let mut fresh: Vec<(Vec<u8>, SocketAddr)> = Vec::new();
    let mut later: Vec<(Arc<Flow>, Vec<u8>)> = Vec::new();
    loop {
        let got = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = batch::recv_each(&sock, |data, from| {
                let Some(client) = from else { return };
                let flow = if fresh.is_empty() && later.is_empty() {
                    table.lock().ok().and_then(|mut t| t.get(&client).cloned())
                } else {
                    None
                };
                let Some(flow) = flow else {
                    fresh.push((data.to_vec(), client));
                    return;
                };
                if !forward_up(&flow, data) {
                    later.push((flow, data.to_vec()));
                }
            }) => r,
        };
        if let Err(e) = got {
            // ICMP errors from earlier sends surface here on some systems.
            debug!("udp receive: {e}");
        }
        for (flow, data) in later.drain(..) {
            if let Err(e) = flow.upstream.send(&data).await {
                debug!("udp flow {}: send to target: {e}", flow.id);
            }
        }
        for (data, client) in std::mem::take(&mut fresh) {
            let existing = table.lock().ok().and_then(|mut t| t.get(&client).cloned());
            let flow = match existing {
                Some(f) => f,
                None => {
                    if !admitted(&config, Some(client.ip())) {
                        report.refused += 1;
                        debug!("udp datagram from {client} dropped: not allowed by --allow/--deny");
                        continue;
                    }
                    next_id += 1;
                    // Live faults (the API) may come later: such flows keep the fault stage.
                    let inline = !config.inspect.is_on()
                        && !config.faults.is_live()
                        && !config.faults.load().iter().any(|f| f.kind.for_udp());
                    match new_flow(next_id, client, &sock, &config, &table, inline).await {
                        Ok(f) => {
                            report.relayed += 1;
                            f
                        }
                        Err(e) => {
                            report.target_failed += 1;
                            warn!("udp flow from {client}: cannot open an upstream socket: {e}");
                            continue;
                        }
                    }
                }
            };
            if !forward_up(&flow, &data) {
                if let Err(e) = flow.upstream.send(&data).await {
                    debug!("udp flow {}: send to target: {e}", flow.id);
                }
            }
        }
    }
    if let Ok(mut t) = table.lock() {
        for (_, flow) in t.iter() {
            flow.cancel.cancel();
        }
        t.clear();
    }
    report
}

/// Counts a client's datagram and sends it on without waiting: to the target, or to the
/// flow's fault stage. False when the upstream socket's buffer is full (the caller sends it
/// once there is room).
fn forward_up(flow: &Flow, data: &[u8]) -> bool {
    flow.touch();
    flow.up.fetch_add(1, Ordering::Relaxed);
    flow.up_bytes
        .fetch_add(data.len() as u64, Ordering::Relaxed);
    match &flow.up_tx {
        None => match flow.upstream.try_send(data) {
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(e) => {
                debug!("udp flow {}: send to target: {e}", flow.id);
                true
            }
        },
        Some(tx) => {
            // A full queue drops, as a congested link would.
            let _ = tx.try_send(data.to_vec());
            true
        }
    }
}

async fn new_flow(
    id: u64,
    client: SocketAddr,
    listen: &Arc<UdpSocket>,
    config: &Arc<RelayConfig>,
    table: &Table,
    inline: bool,
) -> std::io::Result<Arc<Flow>> {
    let (host, port) = config
        .target
        .inet()
        .ok_or_else(|| std::io::Error::other("the UDP target is not an internet address"))?;
    let target = resolve(host, port).await?[0];
    let bind: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let upstream = Arc::new(UdpSocket::bind(bind).await?);
    upstream.connect(target).await?;
    let cancel = CancellationToken::new();
    let egress = |dir: Dir, out: Out| -> mpsc::Sender<Vec<u8>> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let changes = config.faults.subscribe();
        let faults = udp_faults(config, dir, id);
        let tap = config
            .inspect
            .is_on()
            .then(|| Tap::new(config.inspect.clone(), id, dir));
        let rng = Rng::new(config.seed, id ^ ((dir as u64 + 1) << 40));
        tokio::spawn(
            Egress {
                faults,
                changes,
                config: config.clone(),
                dir,
                id,
                tap,
                rng,
                out,
                count: 0,
                bad: false,
                heap: BinaryHeap::new(),
                held: VecDeque::new(),
                seq: 0,
                next_slot: tokio::time::Instant::now(),
            }
            .run(rx, cancel.clone()),
        );
        tx
    };
    let (up_tx, down_tx) = if inline {
        (None, None)
    } else {
        (
            Some(egress(Dir::Up, Out::Connected(upstream.clone()))),
            Some(egress(Dir::Down, Out::To(listen.clone(), client))),
        )
    };
    let flow = Arc::new(Flow {
        id,
        client,
        upstream,
        start: Instant::now(),
        last: AtomicU64::new(0),
        up: AtomicU64::new(0),
        up_bytes: AtomicU64::new(0),
        down: AtomicU64::new(0),
        down_bytes: AtomicU64::new(0),
        up_tx,
        cancel,
        evicted: Default::default(),
    });
    if let Ok(mut t) = table.lock() {
        if let Some((_, old)) = t.push(client, flow.clone()) {
            if old.client != client {
                old.evicted.store(true, Ordering::Relaxed);
                old.cancel.cancel();
            }
        }
    }
    tokio::spawn(downstream(
        flow.clone(),
        listen.clone(),
        down_tx,
        config.clone(),
        table.clone(),
    ));
    Ok(flow)
}

/// Relays the target's replies to the client until the flow is idle, evicted or shut down.
async fn downstream(
    flow: Arc<Flow>,
    listen: Arc<UdpSocket>,
    down_tx: Option<mpsc::Sender<Vec<u8>>>,
    config: Arc<RelayConfig>,
    table: Table,
) {
    let idle = config.idle_timeout.unwrap_or(DEFAULT_IDLE);
    let mut error = None;
    // Replies the listening socket could not take at once, in order.
    let mut later: Vec<Vec<u8>> = Vec::new();
    // One timer for the idle timeout, moved on only when it fires (not per datagram).
    let idle_timer = sleep_until(tokio::time::Instant::from_std(flow.start + idle));
    tokio::pin!(idle_timer);
    let close = loop {
        tokio::select! {
            _ = flow.cancel.cancelled() => {
                break if flow.evicted.load(Ordering::Relaxed) { Close::Relay } else { Close::Shutdown };
            }
            () = &mut idle_timer => {
                let last = Duration::from_millis(flow.last.load(Ordering::Relaxed));
                if flow.start.elapsed() >= last + idle {
                    break Close::Timeout;
                }
                idle_timer.as_mut().reset(tokio::time::Instant::from_std(flow.start + last + idle));
            }
            r = batch::recv_each(&flow.upstream, |data, _| {
                flow.touch();
                flow.down.fetch_add(1, Ordering::Relaxed);
                flow.down_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                match &down_tx {
                    None if later.is_empty() => match listen.try_send_to(data, flow.client) {
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => later.push(data.to_vec()),
                        Err(e) => debug!("udp flow {}: send to client: {e}", flow.id),
                    },
                    None => later.push(data.to_vec()),
                    Some(tx) => {
                        let _ = tx.try_send(data.to_vec());
                    }
                }
            }) => {
                for data in later.drain(..) {
                    if let Err(e) = listen.send_to(&data, flow.client).await {
                        debug!("udp flow {}: send to client: {e}", flow.id);
                    }
                }
                // Usually an ICMP "port unreachable": the target is not there (now).
                if let Err(e) = r {
                    if error.is_none() {
                        info!("udp flow {} ({}): target: {e}", flow.id, flow.client);
                    }
                    error = Some(format!("target: {e}"));
                }
            },
        }
    };
    flow.cancel.cancel();
    if let Ok(mut t) = table.lock() {
        if t.peek(&flow.client).is_some_and(|f| Arc::ptr_eq(f, &flow)) {
            t.pop(&flow.client);
        }
    }
    let record = ConnRecord {
        conn: flow.id,
        proto: "udp",
        client: flow.client.to_string(),
        target: flow
            .upstream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| config.target.to_string()),
        bytes_up: flow.up_bytes.load(Ordering::Relaxed),
        bytes_down: flow.down_bytes.load(Ordering::Relaxed),
        datagrams_up: Some(flow.up.load(Ordering::Relaxed)),
        datagrams_down: Some(flow.down.load(Ordering::Relaxed)),
        duration_secs: flow.start.elapsed().as_secs_f64(),
        client_close: close,
        target_close: close,
        path: "udp",
        error: error.or_else(|| (close == Close::Relay).then(|| "evicted: flow table full".into())),
    };
    (config.records)(&record);
}

/// Where an egress sends.
enum Out {
    /// The flow's upstream socket (connected to the target).
    Connected(Arc<UdpSocket>),
    /// The listening socket, to the client.
    To(Arc<UdpSocket>, SocketAddr),
}

impl Out {
    async fn send(&self, data: &[u8]) {
        let r = match self {
            Out::Connected(s) => s.send(data).await,
            Out::To(s, to) => s.send_to(data, *to).await,
        };
        if let Err(e) = r {
            debug!("udp send: {e}");
        }
    }
}

struct Scheduled {
    due: tokio::time::Instant,
    seq: u64,
    data: Vec<u8>,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// A held (reordered) datagram: sent after `left` more have gone, or at `deadline`.
struct Held {
    left: u32,
    deadline: tokio::time::Instant,
    data: Vec<u8>,
}

/// How long a reordered datagram waits at most for the ones that overtake it.
const REORDER_MAX_WAIT: Duration = Duration::from_millis(200);

/// One direction of one flow with faults or taps.
/// The UDP faults of flow `id` in `dir`, as the relay's faults are now.
fn udp_faults(config: &RelayConfig, dir: Dir, id: u64) -> Vec<FaultKind> {
    fault::active(&config.faults.load(), dir, config.seed, id)
        .into_iter()
        .filter(|f| f.for_udp())
        .collect()
}

struct Egress {
    faults: Vec<FaultKind>,
    /// Tells of fault changes: the next datagram takes the new faults.
    changes: tokio::sync::watch::Receiver<u64>,
    config: Arc<RelayConfig>,
    dir: Dir,
    id: u64,
    tap: Option<Tap>,
    rng: Rng,
    out: Out,
    /// Datagrams seen (for `drop=N`).
    count: u64,
    /// Gilbert–Elliott state: in a loss burst.
    bad: bool,
    heap: BinaryHeap<Reverse<Scheduled>>,
    held: VecDeque<Held>,
    seq: u64,
    next_slot: tokio::time::Instant,
}

impl Egress {
    async fn run(mut self, mut rx: mpsc::Receiver<Vec<u8>>, cancel: CancellationToken) {
        loop {
            let next = [
                self.heap.peek().map(|Reverse(s)| s.due),
                self.held.iter().map(|h| h.deadline).min(),
            ]
            .into_iter()
            .flatten()
            .min();
            tokio::select! {
                _ = cancel.cancelled() => return,
                m = rx.recv() => match m {
                    Some(data) => self.process(data).await,
                    None => return,
                },
                _ = sleep_until(next.unwrap_or_else(tokio::time::Instant::now)), if next.is_some() => {
                    self.release().await;
                }
            }
        }
    }

    async fn process(&mut self, data: Vec<u8>) {
        if self.changes.has_changed().unwrap_or(false) {
            self.changes.borrow_and_update();
            self.faults = udp_faults(&self.config, self.dir, self.id);
        }
        self.count += 1;
        if let Some(tap) = &mut self.tap {
            tap.chunk(&data);
        }
        let now = tokio::time::Instant::now();
        let mut copies = vec![(data, Duration::ZERO)];
        let mut hold = None;
        let mut rate_limited = false;
        for f in &self.faults {
            match f {
                FaultKind::Blackhole | FaultKind::Down => copies.clear(),
                FaultKind::DropNth { n } if *n == self.count => copies.clear(),
                FaultKind::Loss { prob, burst } => {
                    let lost = if *burst <= 1.0 {
                        self.rng.chance(*prob)
                    } else {
                        // Two states: good (no loss) and bad (all lost); r = 1/burst leaves
                        // bad, p enters it, so the long-run loss is p / (p + r) = prob.
                        let r = 1.0 / burst;
                        let p = if *prob >= 1.0 {
                            1.0
                        } else {
                            prob * r / (1.0 - prob)
                        };
                        self.bad = if self.bad {
                            !self.rng.chance(r)
                        } else {
                            self.rng.chance(p.min(1.0))
                        };
                        self.bad
                    };
                    if lost {
                        copies.clear();
                    }
                }
                FaultKind::Duplicate { prob } => {
                    if let Some(first) = copies.first().cloned() {
                        if self.rng.chance(*prob) {
                            copies.push(first);
                        }
                    }
                }
                FaultKind::Corrupt { prob } => {
                    for (d, _) in &mut copies {
                        if !d.is_empty() && self.rng.chance(*prob) {
                            let bit = self.rng.next_u64() as usize % (d.len() * 8);
                            d[bit / 8] ^= 1 << (bit % 8);
                        }
                    }
                }
                FaultKind::Truncate { len } => {
                    for (d, _) in &mut copies {
                        d.truncate(*len);
                    }
                }
                FaultKind::Latency { delay, jitter } => {
                    for (_, extra) in &mut copies {
                        *extra += self.rng.around(*delay, *jitter);
                    }
                }
                FaultKind::Rate { per_sec } => {
                    rate_limited = true;
                    let gap = Duration::from_secs_f64(1.0 / per_sec);
                    for (_, extra) in &mut copies {
                        let at = (now + *extra).max(self.next_slot);
                        *extra = at - now;
                        self.next_slot = at + gap;
                    }
                }
                FaultKind::Reorder { window, prob }
                    if !copies.is_empty() && *window > 0 && self.rng.chance(*prob) =>
                {
                    hold = Some(*window);
                }
                _ => {}
            }
        }
        for (data, extra) in copies {
            if self.heap.len() + self.held.len() >= QUEUE {
                continue; // Bounded: drop like a full router queue.
            }
            if let Some(left) = hold {
                self.held.push_back(Held {
                    left,
                    deadline: now + extra + REORDER_MAX_WAIT,
                    data,
                });
            } else if extra.is_zero() && !rate_limited && self.heap.is_empty() {
                self.send(&data).await;
            } else {
                self.seq += 1;
                self.heap.push(Reverse(Scheduled {
                    due: now + extra,
                    seq: self.seq,
                    data,
                }));
            }
        }
    }

    /// Sends one datagram, then any held ones that it was the last to overtake.
    async fn send(&mut self, data: &[u8]) {
        self.out.send(data).await;
        let mut ready = Vec::new();
        for h in &mut self.held {
            h.left = h.left.saturating_sub(1);
        }
        while let Some(pos) = self.held.iter().position(|h| h.left == 0) {
            if let Some(h) = self.held.remove(pos) {
                ready.push(h.data);
            }
        }
        for d in ready {
            self.out.send(&d).await;
        }
    }

    async fn release(&mut self) {
        let now = tokio::time::Instant::now();
        while self.heap.peek().is_some_and(|Reverse(s)| s.due <= now) {
            if let Some(Reverse(s)) = self.heap.pop() {
                self.send(&s.data).await;
            }
        }
        while let Some(pos) = self.held.iter().position(|h| h.deadline <= now) {
            if let Some(h) = self.held.remove(pos) {
                self.out.send(&h.data).await;
            }
        }
    }
}
