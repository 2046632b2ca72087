//! The stream side of the relay: accept, connect the target, move bytes both ways (splice or
//! copy), apply the faults, and report how each side closed.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{Semaphore, watch};
use tokio::time::{sleep, sleep_until, timeout, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::net::{Endpoint, resolve};
use crate::relay::fault::{self, Dir, FaultKind, Rng};
use crate::relay::inspect::Tap;
use crate::relay::proxy;
use crate::relay::sock::{End, Sock, splice_pump};
use crate::relay::{Close, ConnRecord, RelayConfig, RelayReport, admitted, unix_addr};

/// A stream listener.
pub(crate) enum Accept {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Accept {
    async fn accept(&self) -> io::Result<(Sock, String, Option<SocketAddr>)> {
        match self {
            Accept::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                Ok((Sock::Tcp(s), peer.to_string(), Some(peer)))
            }
            Accept::Unix(l) => {
                let (s, peer) = l.accept().await?;
                let name = match peer.as_pathname() {
                    Some(p) => format!("unix:{}", p.display()),
                    None => "unix:(unnamed)".to_owned(),
                };
                Ok((Sock::Unix(s), name, None))
            }
        }
    }

    fn proto(&self) -> &'static str {
        match self {
            Accept::Tcp(_) => "tcp",
            Accept::Unix(_) => "unix",
        }
    }
}

#[derive(Default)]
struct Counters {
    target_failed: AtomicU64,
}

/// Descriptors kept for the listener, the runtime, logs and the pipes of chunks in flight.
const RESERVED_FDS: u64 = 64;

/// `max_conns`, lowered (with one warning) to what the open-file limit can hold: each relayed
/// connection takes two descriptors. Past it, clients are refused at once with a log line
/// instead of failing later, at the target's connect.
fn fd_capped(max_conns: usize) -> usize {
    let Ok(limit) = crate::server::fd_limit() else {
        return max_conns;
    };
    let room = (limit.saturating_sub(RESERVED_FDS) / 2).max(1);
    if (max_conns as u64) <= room {
        return max_conns;
    }
    // The default --max-conns meets a common hard limit of 20,000 here: a note, not a warning.
    info!(
        "the open file limit ({limit}) holds {room} relayed connections, not --max-conns \
         {max_conns}: relaying at most {room} (raise it with `ulimit -n`)"
    );
    room as usize
}

/// The accept loop.
pub(crate) async fn run(
    listener: Accept,
    config: Arc<RelayConfig>,
    shutdown: CancellationToken,
) -> RelayReport {
    let max_conns = fd_capped(config.max_conns);
    let permits = Arc::new(Semaphore::new(max_conns.min(Semaphore::MAX_PERMITS)));
    let counters = Arc::new(Counters::default());
    let mut report = RelayReport::default();
    let mut next_id = 0u64;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => r,
        };
        let (sock, peer, peer_addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors, usually: wait rather than spin.
                warn!("accept failed: {e}");
                sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        next_id += 1;
        let id = next_id;
        // With --proxy-accept the client is known only after its header (checked there).
        if !config.proxy_accept && !admitted(&config, peer_addr.map(|a| a.ip())) {
            info!("conn {id} from {peer} refused: not allowed by --allow/--deny");
            report.refused += 1;
            continue;
        }
        let faults = config.faults.load();
        if faults
            .iter()
            .enumerate()
            .filter(|(_, f)| f.kind == FaultKind::Down)
            .any(|(i, f)| Rng::new(config.seed ^ 0xD0_D0, id ^ ((i as u64) << 48)).chance(f.p))
        {
            info!("conn {id} from {peer} closed at once: fault down");
            report.refused += 1;
            continue;
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            if max_conns == config.max_conns {
                info!("conn {id} from {peer} refused: --max-conns {max_conns} reached");
            } else {
                info!("conn {id} from {peer} refused: the open file limit allows {max_conns}");
            }
            report.refused += 1;
            continue;
        };
        report.relayed += 1;
        let (config, counters) = (config.clone(), counters.clone());
        let proto = match config.listen.scheme {
            crate::net::Scheme::Tls => "tls",
            _ => listener.proto(),
        };
        tokio::spawn(async move {
            let record = handle(id, proto, sock, peer, peer_addr, &config).await;
            if record.target_close == Close::Refused {
                counters.target_failed.fetch_add(1, Ordering::Relaxed);
            }
            (config.records)(&record);
            drop(permit);
        });
    }
    report.target_failed = counters.target_failed.load(Ordering::Relaxed);
    report
}

async fn connect(config: &RelayConfig) -> io::Result<(Sock, String)> {
    match &config.target.endpoint {
        Endpoint::Unix(name) => {
            let addr = unix_addr(name)?;
            let std = std::os::unix::net::UnixStream::connect_addr(&addr)?;
            std.set_nonblocking(true)?;
            Ok((
                Sock::Unix(UnixStream::from_std(std)?),
                format!("unix:{name}"),
            ))
        }
        Endpoint::Inet { host, port } => {
            let mut last = None;
            for addr in resolve(host, *port).await? {
                match timeout(config.connect_timeout, TcpStream::connect(addr)).await {
                    Ok(Ok(s)) => {
                        let _ = s.set_nodelay(true);
                        let tls = config
                            .target_tls
                            .as_ref()
                            .filter(|_| config.target.scheme == crate::net::Scheme::Tls);
                        let Some(tls) = tls else {
                            return Ok((Sock::Tcp(s), addr.to_string()));
                        };
                        let stream = tls
                            .connect(&host.to_string(), s)
                            .await
                            .map_err(|e| io::Error::other(format!("{addr}: {e}")))?;
                        let sock = Sock::Unix(crate::tls::bridge(stream)?);
                        return Ok((sock, format!("tls:{addr}")));
                    }
                    Ok(Err(e)) => last = Some(io::Error::new(e.kind(), format!("{addr}: {e}"))),
                    Err(_) => {
                        last = Some(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("{addr}: no answer in {:?}", config.connect_timeout),
                        ))
                    }
                }
            }
            Err(last.unwrap_or_else(|| io::Error::other("no address")))
        }
    }
}

/// Byte counts and the time of the last activity, shared by the two directions.
struct Stats {
    start: Instant,
    up: AtomicU64,
    down: AtomicU64,
    /// Milliseconds since `start`.
    last: AtomicU64,
}

impl Stats {
    fn add(&self, dir: Dir, n: usize) {
        let counter = match dir {
            Dir::Up => &self.up,
            Dir::Down => &self.down,
        };
        counter.fetch_add(n as u64, Ordering::Relaxed);
        self.touch();
    }

    fn touch(&self) {
        self.last
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// What ended a connection early.
enum Fire {
    Idle,
    Timeout,
    Reset,
}

async fn watchdog(
    stats: &Stats,
    idle: Option<Duration>,
    close_at: Option<Duration>,
    reset_at: Option<Duration>,
) -> Fire {
    loop {
        let last = Duration::from_millis(stats.last.load(Ordering::Relaxed));
        let idle_at = idle.map(|i| last + i);
        let Some(next) = [idle_at, close_at, reset_at].into_iter().flatten().min() else {
            return std::future::pending().await;
        };
        sleep_until((stats.start + next).into()).await;
        let now = stats.start.elapsed();
        if reset_at.is_some_and(|t| t <= now) {
            return Fire::Reset;
        }
        if close_at.is_some_and(|t| t <= now) {
            return Fire::Timeout;
        }
        let last = Duration::from_millis(stats.last.load(Ordering::Relaxed));
        if idle.is_some_and(|i| last + i <= now) {
            return Fire::Idle;
        }
    }
}

async fn handle(
    id: u64,
    proto: &'static str,
    client: Sock,
    peer: String,
    mut peer_addr: Option<SocketAddr>,
    config: &RelayConfig,
) -> ConnRecord {
    let start = Instant::now();
    let mut record = ConnRecord {
        conn: id,
        proto,
        client: peer,
        target: config.target.to_string(),
        bytes_up: 0,
        bytes_down: 0,
        datagrams_up: None,
        datagrams_down: None,
        duration_secs: 0.0,
        client_close: Close::Relay,
        target_close: Close::Refused,
        path: "copy",
        error: None,
    };
    let local = match &client {
        Sock::Tcp(s) => {
            let _ = s.set_nodelay(true);
            s.local_addr().ok()
        }
        Sock::Unix(_) => None,
    };
    // A tls: LISTEN: the handshake, then the plaintext through a socket pair.
    let client = match (client, &config.listen_tls) {
        (Sock::Tcp(s), Some(tls)) if config.listen.scheme == crate::net::Scheme::Tls => {
            match tls.accept(s).await {
                Ok(stream) => match crate::tls::bridge(stream) {
                    Ok(u) => Sock::Unix(u),
                    Err(e) => {
                        record.error = Some(format!("cannot bridge TLS: {e}"));
                        record.target_close = Close::Relay;
                        record.duration_secs = start.elapsed().as_secs_f64();
                        return record;
                    }
                },
                Err(e) => {
                    record.error = Some(e.to_string());
                    record.target_close = Close::Relay;
                    record.duration_secs = start.elapsed().as_secs_f64();
                    return record;
                }
            }
        }
        (client, _) => client,
    };
    if config.proxy_accept {
        match proxy::read_header(&client).await {
            Ok(Some(source)) => {
                record.client = format!("{source} (via {})", record.client);
                peer_addr = Some(source);
            }
            Ok(None) => {}
            Err(e) => {
                record.error = Some(e);
                record.target_close = Close::Relay;
                record.duration_secs = start.elapsed().as_secs_f64();
                return record;
            }
        }
        if !admitted(config, peer_addr.map(|a| a.ip())) {
            record.error = Some("refused: not allowed by --allow/--deny".into());
            record.target_close = Close::Relay;
            record.duration_secs = start.elapsed().as_secs_f64();
            return record;
        }
    }
    let target = match connect(config).await {
        Ok((sock, name)) => {
            record.target = name;
            if let Some(version) = config.proxy_send {
                let addrs = peer_addr.zip(local);
                if let Err(e) = sock.write_all(&proxy::header(version, addrs)).await {
                    record.error = Some(format!("sending the PROXY header: {e}"));
                    record.target_close = Close::Rst;
                    record.duration_secs = start.elapsed().as_secs_f64();
                    return record;
                }
            }
            sock
        }
        Err(e) => {
            record.error = Some(format!("cannot connect to the target: {e}"));
            record.duration_secs = start.elapsed().as_secs_f64();
            return record;
        }
    };
    // Subscribe before loading: a change in between is seen (as one needless rebuild).
    let changes = config.faults.subscribe();
    let mut plan = Plan::new(config, id, start.elapsed());
    record.path = if plan.splice(Dir::Up) && plan.splice(Dir::Down) {
        "splice"
    } else {
        "copy"
    };
    let stats = Stats {
        start,
        up: AtomicU64::new(0),
        down: AtomicU64::new(0),
        last: AtomicU64::new(0),
    };
    let (client, target, stats) = (&client, &target, &stats);
    // One direction's pump, with the faults of the plan; it returns `End::Reconfigure` at a
    // chunk boundary when the faults change, and is then built again.
    let pump = |dir: Dir, plan: &Plan, rx: watch::Receiver<u64>| -> PumpFuture<'_> {
        let (src, dst) = match dir {
            Dir::Up => (client, target),
            Dir::Down => (target, client),
        };
        let changed = move || rx.has_changed().unwrap_or(false);
        if plan.splice(dir) {
            return Box::pin(splice_pump(src, dst, move |n| stats.add(dir, n), changed));
        }
        let faults = plan.faults(dir).clone();
        Box::pin(async move {
            Pump {
                dir,
                tap: (config.inspect.is_on()).then(|| Tap::new(config.inspect.clone(), id, dir)),
                rng: Rng::new(config.seed, id ^ ((dir as u64 + 1) << 40)),
                stats,
            }
            .run(src, dst, &faults, &changed)
            .await
        })
    };
    let mut up = pump(Dir::Up, &plan, changes.clone());
    let mut down = pump(Dir::Down, &plan, changes.clone());
    let mut changes = changes;
    let mut watching = true;
    let dog = watchdog(stats, config.idle_timeout, plan.close_at, plan.reset_at);
    tokio::pin!(dog);
    let (mut up_end, mut down_end): (Option<()>, Option<()>) = (None, None);
    loop {
        tokio::select! {
            end = &mut up, if up_end.is_none() => {
                if matches!(end, End::Reconfigure) {
                    let rx = config.faults.subscribe();
                    plan = plan.refreshed(config, id, start.elapsed());
                    if !plan.splice(Dir::Up) {
                        record.path = "copy";
                    }
                    up = pump(Dir::Up, &plan, rx);
                    continue;
                }
                up_end = Some(());
                if side_ended(end, client, target, &mut record.client_close, &mut record.target_close, &mut record.error) {
                    break;
                }
            }
            end = &mut down, if down_end.is_none() => {
                if matches!(end, End::Reconfigure) {
                    let rx = config.faults.subscribe();
                    plan = plan.refreshed(config, id, start.elapsed());
                    if !plan.splice(Dir::Down) {
                        record.path = "copy";
                    }
                    down = pump(Dir::Down, &plan, rx);
                    continue;
                }
                down_end = Some(());
                if side_ended(end, target, client, &mut record.target_close, &mut record.client_close, &mut record.error) {
                    break;
                }
            }
            changed = changes.changed(), if watching => {
                if changed.is_err() {
                    // The fault set is gone: nothing more will change.
                    watching = false;
                    continue;
                }
                changes.borrow_and_update();
                // The timers start now; each direction takes the new faults at its next chunk.
                plan = plan.refreshed(config, id, start.elapsed());
                dog.set(watchdog(stats, config.idle_timeout, plan.close_at, plan.reset_at));
            }
            fire = &mut dog => {
                match fire {
                    Fire::Idle | Fire::Timeout => {
                        record.client_close = Close::Timeout;
                        record.target_close = Close::Timeout;
                        record.error = Some(match fire {
                            Fire::Idle => "idle timeout".into(),
                            _ => "timeout fault".into(),
                        });
                    }
                    Fire::Reset => {
                        client.set_linger_zero();
                        target.set_linger_zero();
                        record.client_close = Close::Relay;
                        record.target_close = Close::Relay;
                        record.error = Some("reset_peer fault: both sides reset".into());
                    }
                }
                break;
            }
        }
        if up_end.is_some() && down_end.is_some() {
            break;
        }
    }
    drop((up, down));
    record.bytes_up = stats.up.load(Ordering::Relaxed);
    record.bytes_down = stats.down.load(Ordering::Relaxed);
    record.duration_secs = start.elapsed().as_secs_f64();
    record
}

/// The faults a connection applies now, per direction, and the connection-wide timers they
/// set (measured from the connection's start).
struct Plan {
    up: Arc<Vec<FaultKind>>,
    down: Arc<Vec<FaultKind>>,
    splice_ok: bool,
    close_at: Option<Duration>,
    reset_at: Option<Duration>,
    /// The fault texts the timers came from, so that a change elsewhere does not restart them.
    timer_source: Vec<FaultKind>,
}

impl Plan {
    /// The plan for the relay's faults now; timers count from `now` (since the start).
    fn new(config: &RelayConfig, id: u64, now: Duration) -> Plan {
        let faults = config.faults.load();
        let tcp_only = |dir: Dir| {
            fault::active(&faults, dir, config.seed, id)
                .into_iter()
                .filter(|f| f.for_tcp())
                .collect::<Vec<_>>()
        };
        let (up, down) = (tcp_only(Dir::Up), tcp_only(Dir::Down));
        let timers: Vec<FaultKind> = up
            .iter()
            .chain(down.iter())
            .filter(|f| matches!(f, FaultKind::Timeout { .. } | FaultKind::ResetPeer { .. }))
            .cloned()
            .collect();
        let close_at = timers
            .iter()
            .filter_map(|f| match f {
                FaultKind::Timeout { after } if !after.is_zero() => Some(now + *after),
                _ => None,
            })
            .min();
        let reset_at = timers
            .iter()
            .filter_map(|f| match f {
                FaultKind::ResetPeer { after } => Some(now + *after),
                _ => None,
            })
            .min();
        Plan {
            up: Arc::new(up),
            down: Arc::new(down),
            // Pipes come from a shared pool while a chunk is in flight, so an idle connection
            // holds none (two descriptors per connection, not six).
            splice_ok: !config.no_splice && !config.inspect.is_on(),
            close_at,
            reset_at,
            timer_source: timers,
        }
    }

    /// The plan after a change: timers that did not change keep their time.
    fn refreshed(&self, config: &RelayConfig, id: u64, now: Duration) -> Plan {
        let mut next = Plan::new(config, id, now);
        if next.timer_source == self.timer_source {
            next.close_at = self.close_at;
            next.reset_at = self.reset_at;
        }
        next
    }

    fn faults(&self, dir: Dir) -> &Arc<Vec<FaultKind>> {
        match dir {
            Dir::Up => &self.up,
            Dir::Down => &self.down,
        }
    }

    /// Whether `dir` can move bytes with splice (nothing to look at or change in it).
    fn splice(&self, dir: Dir) -> bool {
        self.splice_ok && self.faults(dir).is_empty()
    }
}

/// One direction's transfer, splice or copy.
type PumpFuture<'a> = std::pin::Pin<Box<dyn Future<Output = End> + Send + 'a>>;

/// Handles the end of the direction `src` → `dst`; true if the whole connection is over.
fn side_ended(
    end: End,
    src: &Sock,
    dst: &Sock,
    src_close: &mut Close,
    dst_close: &mut Close,
    error: &mut Option<String>,
) -> bool {
    match end {
        End::Eof => {
            *src_close = Close::Fin;
            if *dst_close == Close::Refused {
                *dst_close = Close::Relay;
            }
            false
        }
        End::Read(e) => {
            // The source reset (or failed): reset the destination too.
            *src_close = Close::Rst;
            *dst_close = Close::Relay;
            dst.set_linger_zero();
            if e.kind() != io::ErrorKind::ConnectionReset {
                *error = Some(format!("read: {e}"));
            }
            true
        }
        End::Write(e) => {
            *dst_close = Close::Rst;
            *src_close = Close::Relay;
            src.set_linger_zero();
            if !matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            ) {
                *error = Some(format!("write: {e}"));
            }
            true
        }
        End::Limit => {
            *src_close = Close::Relay;
            *dst_close = Close::Relay;
            *error = Some("limit_data fault: connection closed".into());
            true
        }
        // Handled by the caller (the direction is rebuilt); never an end.
        End::Reconfigure => false,
    }
}

/// The copy path of one direction.
struct Pump<'a> {
    dir: Dir,
    tap: Option<Tap>,
    rng: Rng,
    stats: &'a Stats,
}

/// Copy buffer size.
const BUF: usize = 64 * 1024;
/// Chunks in flight through a `latency` fault's delay line (at most 64 × 64 KiB).
const DELAY_LINE: usize = 64;

/// What the reading half hands the writing half when a `latency` fault delays chunks.
enum Item {
    /// Bytes to write at the given time.
    Data(tokio::time::Instant, Vec<u8>),
    /// The source sent a FIN.
    Eof,
    /// `limit_data` used up.
    Limit,
    /// The faults changed (nothing more was read).
    Reconfigure,
}

/// Writes chunks with the shaping faults (slicer, bandwidth; latency when not pipelined).
struct Shaper<'a> {
    dir: Dir,
    rng: Rng,
    stats: &'a Stats,
}

impl Pump<'_> {
    async fn run(
        self,
        src: &Sock,
        dst: &Sock,
        faults: &[FaultKind],
        changed: &impl Fn() -> bool,
    ) -> End {
        let latency = faults.iter().find_map(|f| match f {
            FaultKind::Latency { delay, jitter } => Some((*delay, *jitter)),
            _ => None,
        });
        let slow_close = faults.iter().find_map(|f| match f {
            FaultKind::SlowClose { delay } => Some(*delay),
            _ => None,
        });
        let Pump {
            dir,
            tap,
            rng,
            stats,
        } = self;
        let mut shaper = Shaper { dir, rng, stats };
        let Some((delay, jitter)) = latency else {
            // No delay line: read, then write, one chunk at a time.
            let mut reader = Reader::new(tap, stats, faults);
            loop {
                match reader.next(src, changed).await {
                    Ok(Some(data)) => {
                        let n = data.len();
                        let limit_hit = reader.take(n);
                        if let Err(e) = shaper.write(dst, &reader.buf[..n], faults, true).await {
                            return End::Write(e);
                        }
                        if limit_hit {
                            return End::Limit;
                        }
                    }
                    Ok(None) => {
                        if reader.changed {
                            return End::Reconfigure;
                        }
                        if reader.limit_hit {
                            return End::Limit;
                        }
                        return finish(dst, slow_close).await;
                    }
                    Err(e) => return End::Read(e),
                }
            }
        };
        // A delay line: each chunk is written `delay` ± `jitter` after it was read, while the
        // next ones are already being read (latency without a throughput cap).
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Item>(DELAY_LINE);
        let mut delay_rng = Rng::new(shaper.rng.next_u64(), 1);
        let reading = async {
            let mut reader = Reader::new(tap, stats, faults);
            let mut last_due = tokio::time::Instant::now();
            loop {
                match reader.next(src, changed).await {
                    Ok(Some(data)) => {
                        let n = data.len();
                        let limit_hit = reader.take(n);
                        let due = (tokio::time::Instant::now() + delay_rng.around(delay, jitter))
                            .max(last_due);
                        last_due = due;
                        if tx
                            .send(Item::Data(due, reader.buf[..n].to_vec()))
                            .await
                            .is_err()
                        {
                            return None;
                        }
                        if limit_hit {
                            let _ = tx.send(Item::Limit).await;
                            return None;
                        }
                    }
                    Ok(None) => {
                        let item = if reader.changed {
                            Item::Reconfigure
                        } else if reader.limit_hit {
                            Item::Limit
                        } else {
                            Item::Eof
                        };
                        let _ = tx.send(item).await;
                        return None;
                    }
                    Err(e) => return Some(End::Read(e)),
                }
            }
        };
        let writing = async {
            while let Some(item) = rx.recv().await {
                match item {
                    Item::Data(due, data) => {
                        sleep_until(due).await;
                        if let Err(e) = shaper.write(dst, &data, faults, false).await {
                            return End::Write(e);
                        }
                    }
                    Item::Eof => return finish(dst, slow_close).await,
                    Item::Limit => return End::Limit,
                    // Everything read before the change is written: rebuild.
                    Item::Reconfigure => return End::Reconfigure,
                }
            }
            End::Eof
        };
        tokio::pin!(reading, writing);
        tokio::select! {
            r = &mut reading => match r {
                Some(end) => end,
                // Everything read is queued: the writer finishes it.
                None => writing.await,
            },
            end = &mut writing => end,
        }
    }
}

/// Relays a FIN (after a `slow_close` fault's wait).
async fn finish(dst: &Sock, slow_close: Option<Duration>) -> End {
    if let Some(d) = slow_close {
        sleep(d).await;
    }
    dst.shutdown_write();
    End::Eof
}

/// The reading half: reads chunks, coalesces, taps, and applies `timeout` and `limit_data`.
struct Reader<'a, 'f> {
    buf: Vec<u8>,
    tap: Option<Tap>,
    stats: &'a Stats,
    blocked: bool,
    limit: Option<u64>,
    coalesce: Option<Duration>,
    passed: u64,
    limit_hit: bool,
    eof: bool,
    /// The last `next` stopped because the faults changed.
    changed: bool,
    _faults: &'f [FaultKind],
}

impl<'a, 'f> Reader<'a, 'f> {
    fn new(tap: Option<Tap>, stats: &'a Stats, faults: &'f [FaultKind]) -> Self {
        Reader {
            buf: vec![0u8; BUF],
            tap,
            stats,
            blocked: faults
                .iter()
                .any(|f| matches!(f, FaultKind::Timeout { .. })),
            limit: faults
                .iter()
                .filter_map(|f| match f {
                    FaultKind::LimitData { bytes } => Some(*bytes),
                    _ => None,
                })
                .min(),
            coalesce: faults.iter().find_map(|f| match f {
                FaultKind::Coalesce { window } => Some(*window),
                _ => None,
            }),
            passed: 0,
            limit_hit: false,
            eof: false,
            changed: false,
            _faults: faults,
        }
    }

    /// The next chunk to forward (`buf[..len]`), or `None` at the end of the stream, when
    /// the byte limit is spent, or when `changed` says the faults changed (`self.changed`).
    async fn next(&mut self, src: &Sock, changed: &impl Fn() -> bool) -> io::Result<Option<&[u8]>> {
        loop {
            if self.eof || self.limit_hit || self.limit == Some(0) {
                self.limit_hit |= self.limit == Some(0);
                return Ok(None);
            }
            let Some(mut n) = src.read_unless(&mut self.buf, changed).await? else {
                self.changed = true;
                return Ok(None);
            };
            if n == 0 {
                return Ok(None);
            }
            if let Some(window) = self.coalesce {
                let deadline = tokio::time::Instant::now() + window;
                while n < self.buf.len() {
                    match timeout_at(deadline, src.read(&mut self.buf[n..])).await {
                        Ok(Ok(0)) => {
                            self.eof = true;
                            break;
                        }
                        Ok(Ok(m)) => n += m,
                        Ok(Err(e)) => return Err(e),
                        Err(_) => break,
                    }
                }
            }
            self.stats.touch();
            if let Some(tap) = &mut self.tap {
                tap.chunk(&self.buf[..n]);
            }
            if self.blocked {
                // A `timeout` fault: nothing gets through.
                continue;
            }
            if let Some(limit) = self.limit {
                let room = limit.saturating_sub(self.passed);
                if n as u64 >= room {
                    n = room as usize;
                }
            }
            return Ok(Some(&self.buf[..n]));
        }
    }

    /// Counts `n` bytes as passed; true if that spent the `limit_data` budget.
    fn take(&mut self, n: usize) -> bool {
        self.passed += n as u64;
        self.limit_hit = self.limit.is_some_and(|l| self.passed >= l);
        self.limit_hit
    }
}

impl Shaper<'_> {
    /// Writes one chunk through the shaping faults, in the order given.
    async fn write(
        &mut self,
        dst: &Sock,
        data: &[u8],
        faults: &[FaultKind],
        with_latency: bool,
    ) -> io::Result<()> {
        // Pieces to write and the pause before each.
        let mut pieces: Vec<(usize, usize, Duration)> = vec![(0, data.len(), Duration::ZERO)];
        for f in faults {
            match f {
                FaultKind::Latency { delay, jitter } if with_latency => {
                    let d = self.rng.around(*delay, *jitter);
                    if let Some(first) = pieces.first_mut() {
                        first.2 += d;
                    }
                }
                FaultKind::Slicer {
                    avg,
                    variation,
                    delay,
                } => {
                    let mut sliced = Vec::new();
                    for (start, end, pause) in pieces {
                        let mut at = start;
                        let mut first = true;
                        while at < end {
                            let size = self.rng.around_usize(*avg, *variation).min(end - at);
                            let wait = if first { pause } else { *delay };
                            sliced.push((at, at + size, wait));
                            at += size;
                            first = false;
                        }
                    }
                    pieces = sliced;
                }
                FaultKind::Bandwidth { bytes_per_sec } => {
                    // Pieces of at most a tenth of a second's worth, each paced.
                    let step = (*bytes_per_sec / 10).max(1) as usize;
                    let mut paced = Vec::new();
                    for (start, end, pause) in pieces {
                        let mut at = start;
                        let mut extra = pause;
                        while at < end {
                            let size = step.min(end - at);
                            let secs = size as f64 / *bytes_per_sec as f64;
                            paced.push((at, at + size, extra + Duration::from_secs_f64(secs)));
                            extra = Duration::ZERO;
                            at += size;
                        }
                    }
                    pieces = paced;
                }
                _ => {}
            }
        }
        for (start, end, pause) in pieces {
            if !pause.is_zero() {
                sleep(pause).await;
            }
            dst.write_all(&data[start..end]).await?;
            self.stats.add(self.dir, end - start);
        }
        Ok(())
    }
}
