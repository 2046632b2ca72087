//! `sockit bench --chat`: N members join a chat room, wait until every join has been seen (a
//! barrier), then each sends M lines as fast as the server takes them while reading, and checks
//! that it received every other member's M lines, in order per sender.
//!
//! Member `i` sends `m<i>:<seq>` for seq 0..M. A member counts joins from the announcements it
//! reads: sockit's `* NICK joined`, or ncat `--chat`'s `<announce> ... is connected as
//! <userN>.`, so the same run can load `ncat --chat` for comparison. Each member sees the joins
//! of those who came after it (ncat also announces a member to itself: the first of its
//! announcements a member reads is not counted), so the barrier is reached when the members
//! together have seen N(N-1)/2. Members connect a few at a time, each waiting for the server's
//! first line, so that a server with a small listen backlog is not overrun. Chat lines are `<nick> m<i>:<seq>`; a bare `m<i>:<seq>` (ncat's coalesced lines
//! lose their prefix) still counts as delivered, and is reported as unprefixed.
//!
//! Memory: two bytes per (member, sender) pair for the next sequence number expected (hence
//! at most [`MAX_COUNT`] lines each and [`MAX_MEMBERS`] members), one read buffer per worker
//! thread, and a partial line per member.

use std::cell::RefCell;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::BenchError;

/// Most lines one member may send (sequence numbers are kept in two bytes).
pub const MAX_COUNT: u64 = u16::MAX as u64;
/// Most members (each keeps two bytes per other member).
pub const MAX_MEMBERS: usize = 10_000;
/// Lines each member sends when `--count` is not given.
pub const DEFAULT_COUNT: u64 = 10;
/// Members connected but not yet greeted by the server at once; below ncat's listen backlog.
const CONNECT_AHEAD: usize = 8;
/// Read buffer, one per worker thread.
const READ_BUF: usize = 64 * 1024;
/// Payload bytes written at once.
const WRITE_CHUNK: usize = 64 * 1024;
/// Reads one member makes in a row before letting the others run.
const READS_PER_TURN: usize = 8;
/// How long closing the members' connections may take.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// How often the run checks for progress.
const TICK: Duration = Duration::from_millis(5);
/// With several servers: how long without a new join announcement, every member welcomed,
/// before the members start talking.
const SETTLE: Duration = Duration::from_millis(500);

thread_local! {
    static READ: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_BUF].into_boxed_slice());
}

/// What to run.
#[derive(Clone, Debug)]
pub struct ChatBenchConfig {
    /// The chat servers: member `i` joins `addrs[i % addrs.len()]`. With several (servers of
    /// one cluster), the barrier is every member welcomed and the join announcements settled,
    /// since members on different servers may see each other's joins in either order.
    pub addrs: Vec<SocketAddr>,
    /// Members.
    pub conns: usize,
    /// Lines each member sends.
    pub count: u64,
    /// How long the run may go without any progress (a line read) before it stops.
    pub timeout: Duration,
}

/// The result of a chat run; `--json` prints it as one object.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChatReport {
    /// Always `chat`.
    pub mode: String,
    /// Always `tcp`.
    pub transport: String,
    /// Always `line`.
    pub framing: String,
    /// The server addresses, comma-separated.
    pub addr: String,
    /// Members asked for.
    pub conns: usize,
    /// Members that connected.
    pub members: usize,
    /// Lines each member sends.
    pub count: u64,
    /// Seconds from connecting the first member to the barrier.
    pub join_secs: f64,
    /// Seconds from the barrier to the last member receiving its last line.
    pub duration_secs: f64,
    /// Chat lines received from other members.
    pub deliveries: u64,
    /// Deliveries per second over `duration_secs`.
    pub deliveries_per_sec: f64,
    /// Deliveries a lossless run makes: members × (members − 1) × count.
    pub expected: u64,
    /// Lines sent.
    pub sent: u64,
    /// Expected deliveries that never arrived.
    pub lost: u64,
    /// Lines that arrived before one sent earlier by the same member (or twice).
    pub out_of_order: u64,
    /// Deliveries without their `<nick> ` prefix.
    pub unprefixed: u64,
    /// Chat lines whose text was not a member's line.
    pub mismatches: u64,
    /// Members that failed (could not connect, connection lost).
    pub errors: u64,
    /// Whether every join was seen before the timeout.
    pub barrier: bool,
    /// The first failure, in words (not part of the JSON).
    #[serde(skip)]
    pub first_failure: Option<String>,
    /// Whether the run was cancelled before its end (not part of the JSON).
    #[serde(skip)]
    pub interrupted: bool,
}

impl ChatReport {
    /// Why this run counts as failed, in one line, or `None` if every line arrived in order.
    pub fn failure(&self) -> Option<String> {
        let first = self.first_failure.as_deref().unwrap_or("no details");
        if !self.barrier && !self.interrupted {
            return Some(format!(
                "the members never all saw each other join: {first} \
                 (is a chat service listening at {}?)",
                self.addr
            ));
        }
        let mut problems = Vec::new();
        if self.errors > 0 {
            problems.push(format!("{} of {} members failed", self.errors, self.conns));
        }
        if self.lost > 0 {
            problems.push(format!(
                "{} of {} deliveries lost",
                self.lost, self.expected
            ));
        }
        if self.out_of_order > 0 {
            problems.push(format!("{} out of order", self.out_of_order));
        }
        if self.mismatches > 0 {
            problems.push(format!("{} lines not sent by a member", self.mismatches));
        }
        if problems.is_empty() {
            None
        } else {
            Some(format!("{}; first: {first}", problems.join(", ")))
        }
    }
}

impl fmt::Display for ChatReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "chat {} members x {} lines ({} framing) against {}: joined in {:.1}s, \
             delivered in {:.2}s{}",
            self.members,
            self.count,
            self.framing,
            self.addr,
            self.join_secs,
            self.duration_secs,
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            }
        )?;
        write!(
            f,
            "deliveries: {} of {} ({:.0}/s), sent: {}, lost: {}, out of order: {}, \
             unprefixed: {}, mismatches: {}, errors: {}",
            self.deliveries,
            self.expected,
            self.deliveries_per_sec,
            self.sent,
            self.lost,
            self.out_of_order,
            self.unprefixed,
            self.mismatches,
            self.errors
        )
    }
}

/// What every member shares.
struct Shared {
    /// Members connected; 0 until every connect has been tried.
    members: AtomicUsize,
    count: u64,
    /// Join announcements seen, all members together.
    joins: AtomicU64,
    /// Reads that returned data, all members together: the watchdog's sign of life.
    progress: AtomicU64,
    /// Members that have received everything.
    done: AtomicUsize,
    /// Members that have read their first line from the server.
    greeted: AtomicUsize,
}

/// One member's results.
#[derive(Debug, Default)]
struct Tally {
    /// Lines read, of any kind.
    lines: u64,
    /// Whether ncat's announcement of this member's own arrival has been seen.
    own_announce: bool,
    sent: u64,
    deliveries: u64,
    out_of_order: u64,
    unprefixed: u64,
    mismatches: u64,
    /// Next sequence number expected from each sender, by member number.
    next: Vec<u16>,
    /// Gaps skipped in a sender's sequence, less the late lines that filled them.
    gaps: u64,
    failure: Option<String>,
    first_mismatch: Option<String>,
    finished: Option<Instant>,
    /// The start of a line whose end has not arrived.
    partial: Vec<u8>,
}

impl Tally {
    fn expected(&self, members: usize, count: u64) -> u64 {
        members.saturating_sub(1) as u64 * count
    }

    /// Handles the bytes of one read.
    fn feed(&mut self, mut bytes: &[u8], me: usize, shared: &Shared) {
        if !self.partial.is_empty() {
            match memchr::memchr(b'\n', bytes) {
                Some(nl) => {
                    let mut line = std::mem::take(&mut self.partial);
                    line.extend_from_slice(&bytes[..nl]);
                    self.line(&line, me, shared);
                    bytes = &bytes[nl + 1..];
                }
                None => {
                    self.partial.extend_from_slice(bytes);
                    return;
                }
            }
        }
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', bytes) {
            self.line(&bytes[start..nl], me, shared);
            start = nl + 1;
        }
        self.partial.extend_from_slice(&bytes[start..]);
    }

    fn line(&mut self, line: &[u8], me: usize, shared: &Shared) {
        self.lines += 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match line.first() {
            Some(b'<') => {
                let Some(gt) = memchr::memchr(b'>', line) else {
                    return;
                };
                if &line[1..gt] == b"announce" {
                    // ncat announces a newcomer to everyone, the newcomer included: one of
                    // these is the member's own.
                    if memchr::memmem::find(line, b" is connected as ").is_some() {
                        if self.own_announce {
                            shared.joins.fetch_add(1, Ordering::Relaxed);
                        } else {
                            self.own_announce = true;
                        }
                    }
                    return;
                }
                let text = &line[gt + 1..];
                self.payload(text.strip_prefix(b" ").unwrap_or(text), true, me, shared);
            }
            Some(b'*')
                if line.ends_with(b" joined") || line.ends_with(" 进入了聊天室".as_bytes()) =>
            {
                shared.joins.fetch_add(1, Ordering::Relaxed);
            }
            Some(b'm') => self.payload(line, false, me, shared),
            _ => {}
        }
    }

    /// A chat line's text: `m<member>:<seq>`.
    fn payload(&mut self, text: &[u8], prefixed: bool, me: usize, shared: &Shared) {
        let members = shared.members.load(Ordering::Relaxed);
        let parsed = parse_payload(text).filter(|&(i, s)| i < members && s < shared.count);
        let Some((from, seq)) = parsed else {
            if prefixed {
                self.mismatches += 1;
                if self.first_mismatch.is_none() {
                    self.first_mismatch = Some(format!(
                        "unexpected chat line {:?}",
                        String::from_utf8_lossy(&text[..text.len().min(80)])
                    ));
                }
            }
            return;
        };
        if from == me {
            return;
        }
        if self.next.len() < members {
            self.next.resize(members, 0);
        }
        if !prefixed {
            self.unprefixed += 1;
        }
        self.deliveries += 1;
        let seq = seq as u16;
        let next = &mut self.next[from];
        if seq == *next {
            *next += 1;
        } else if seq > *next {
            self.out_of_order += 1;
            self.gaps += u64::from(seq - *next);
            *next = seq + 1;
        } else {
            self.out_of_order += 1;
            self.gaps = self.gaps.saturating_sub(1);
        }
        if self.finished.is_none() && self.deliveries >= self.expected(members, shared.count) {
            self.finished = Some(Instant::now());
            shared.done.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Deliveries that never came: the gaps left, and what is missing at each sender's end.
    fn lost(&self, me: usize, members: usize, count: u64) -> u64 {
        let missing: u64 = (0..members)
            .filter(|&i| i != me)
            .map(|i| count - u64::from(self.next.get(i).copied().unwrap_or(0)).min(count))
            .sum();
        missing + self.gaps
    }
}

/// `m<member>:<seq>` → (member, seq).
fn parse_payload(text: &[u8]) -> Option<(usize, u64)> {
    let rest = text.strip_prefix(b"m")?;
    let colon = memchr::memchr(b':', rest)?;
    Some((
        number(&rest[..colon])? as usize,
        number(&rest[colon + 1..])?,
    ))
}

fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 12 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

/// Member `me`'s lines from `from` on, as many as fit in one write chunk.
fn payload_chunk(me: usize, from: u64, count: u64, out: &mut Vec<u8>) -> u64 {
    out.clear();
    let mut seq = from;
    let mut num = itoa::Buffer::new();
    let member = num.format(me).to_owned();
    while seq < count && out.len() < WRITE_CHUNK {
        out.push(b'm');
        out.extend_from_slice(member.as_bytes());
        out.push(b':');
        out.extend_from_slice(num.format(seq).as_bytes());
        out.push(b'\n');
        seq += 1;
    }
    seq
}

/// Why a member stopped.
enum Stop {
    Done,
    Cancelled,
    Failed(String),
}

/// One member: reads everything, counting joins and checking chat lines; once `go` says so,
/// writes its lines while it keeps reading. Returns its tally and the still-open stream, so
/// that nobody leaves the room before the run is over.
async fn member(
    stream: TcpStream,
    me: usize,
    shared: Arc<Shared>,
    mut go: watch::Receiver<bool>,
    stop: CancellationToken,
    greeting: OwnedSemaphorePermit,
) -> (Tally, TcpStream) {
    // Held until the server's first line arrives; see `run`.
    let mut greeting = Some(greeting);
    let mut tally = Tally::default();
    let mut started = false;
    let mut wbuf: Vec<u8> = Vec::new();
    let mut written = 0usize;
    let mut next_seq = 0u64;
    let count = shared.count;
    let outcome = loop {
        let members = shared.members.load(Ordering::Relaxed);
        let all_sent = started && next_seq >= count && written == wbuf.len();
        if all_sent && tally.finished.is_some() {
            break Stop::Done;
        }
        if started && written == wbuf.len() && next_seq < count {
            next_seq = payload_chunk(me, next_seq, count, &mut wbuf);
            written = 0;
        }
        if started && tally.finished.is_none() && tally.expected(members, count) == 0 {
            // A lone member expects nothing.
            tally.finished = Some(Instant::now());
            shared.done.fetch_add(1, Ordering::Relaxed);
        }
        let want_write = started && written < wbuf.len();
        let reading = tally.finished.is_none() || members == 0;
        tokio::select! {
            biased;
            () = stop.cancelled() => break Stop::Cancelled,
            ready = stream.readable(), if reading => {
                if let Err(e) = ready {
                    break Stop::Failed(format!("connection failed: {e}"));
                }
                match read_some(&stream, &mut tally, me, &shared) {
                    Ok(true) => {
                        if tally.lines > 0 && greeting.take().is_some() {
                            shared.greeted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(false) => break Stop::Failed("server closed the connection".into()),
                    Err(e) => break Stop::Failed(format!("connection failed: {e}")),
                }
            }
            ready = stream.writable(), if want_write => {
                if let Err(e) = ready {
                    break Stop::Failed(format!("connection failed: {e}"));
                }
                match stream.try_write(&wbuf[written..]) {
                    Ok(n) => {
                        let lines = memchr::memchr_iter(b'\n', &wbuf[written..written + n]).count();
                        tally.sent += lines as u64;
                        written += n;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => break Stop::Failed(format!("connection failed: {e}")),
                }
            }
            changed = go.wait_for(|&go| go), if !started => {
                if changed.is_err() {
                    break Stop::Cancelled;
                }
                started = true;
            }
        }
    };
    match outcome {
        Stop::Done => {
            // Stay connected (without reading) until everyone is done.
            stop.cancelled().await;
        }
        Stop::Cancelled => {}
        Stop::Failed(why) => tally.failure = Some(why),
    }
    (tally, stream)
}

/// Reads what is there (a few reads at most); false at end of stream.
fn read_some(
    stream: &TcpStream,
    tally: &mut Tally,
    me: usize,
    shared: &Shared,
) -> io::Result<bool> {
    READ.with_borrow_mut(|buf| {
        for _ in 0..READS_PER_TURN {
            match stream.try_read(buf) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    shared.progress.fetch_add(1, Ordering::Relaxed);
                    tally.feed(&buf[..n], me, shared);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    })
}

/// Stops the run when nothing has been read for `timeout`.
struct Watchdog {
    timeout: Duration,
    seen: u64,
    since: Instant,
}

impl Watchdog {
    fn new(timeout: Duration) -> Self {
        Watchdog {
            timeout,
            seen: 0,
            since: Instant::now(),
        }
    }

    /// Whether the run has gone `timeout` without progress.
    fn expired(&mut self, shared: &Shared) -> bool {
        let now = shared.progress.load(Ordering::Relaxed);
        if now != self.seen {
            self.seen = now;
            self.since = Instant::now();
            return false;
        }
        self.since.elapsed() >= self.timeout
    }
}

/// Closes every member's connection the polite way: our side first, then what the server
/// still sends (the others' departures) is read away until it closes too, so no connection
/// ends in a reset. Bounded by [`CLOSE_WAIT`].
async fn close_all(streams: Vec<TcpStream>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let closing =
        futures_util::future::join_all(streams.into_iter().map(|mut stream| async move {
            if stream.shutdown().await.is_err() {
                return;
            }
            let mut sink = [0u8; 4096];
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        }));
    let _ = tokio::time::timeout(CLOSE_WAIT, closing).await;
}

async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            stream.set_nodelay(true)?;
            Ok(stream)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "connection timed out",
        )),
    }
}

/// Runs the chat benchmark until every member has every line, the run goes `timeout`
/// without progress, or `cancel` is cancelled.
pub async fn run(
    config: &ChatBenchConfig,
    cancel: CancellationToken,
) -> Result<ChatReport, BenchError> {
    if config.conns == 0 || config.addrs.is_empty() {
        return Err(BenchError::NoClients);
    }
    let addr_list = config
        .addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let shared = Arc::new(Shared {
        members: AtomicUsize::new(0),
        count: config.count,
        joins: AtomicU64::new(0),
        progress: AtomicU64::new(0),
        done: AtomicUsize::new(0),
        greeted: AtomicUsize::new(0),
    });
    let stop = cancel.child_token();
    let (go_tx, go_rx) = watch::channel(false);
    let joining = Instant::now();
    let mut first_failure: Option<String> = None;
    let mut errors = 0u64;
    let mut first_connect_error = None;
    let mut tasks = Vec::new();
    // Members join a few at a time: each waits for its first line from the server (which
    // has then accepted it) before the next beyond CONNECT_AHEAD connects. A burst of connects
    // overflows a small listen backlog (ncat's is 10), and a connection the server dropped
    // from its accept queue looks established to a client that sends nothing.
    let ahead = Arc::new(Semaphore::new(CONNECT_AHEAD));
    for _ in 0..config.conns {
        let permit = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            permit = tokio::time::timeout(config.timeout, ahead.clone().acquire_owned()) => permit,
        };
        let Ok(Ok(permit)) = permit else {
            first_failure.get_or_insert_with(|| {
                format!(
                    "{CONNECT_AHEAD} new members heard nothing from the server for {:.1}s",
                    config.timeout.as_secs_f64()
                )
            });
            break;
        };
        let connected = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            connected = connect(config.addrs[tasks.len() % config.addrs.len()], config.timeout) => connected,
        };
        match connected {
            Ok(stream) => {
                let me = tasks.len();
                tasks.push(tokio::spawn(member(
                    stream,
                    me,
                    shared.clone(),
                    go_rx.clone(),
                    stop.clone(),
                    permit,
                )));
            }
            Err(e) => {
                errors += 1;
                let why = format!(
                    "cannot connect to {}: {e}",
                    config.addrs[tasks.len() % config.addrs.len()]
                );
                debug!("{why}");
                first_failure.get_or_insert(why);
                first_connect_error.get_or_insert(e);
            }
        }
    }
    if tasks.is_empty() && !cancel.is_cancelled() {
        if let Some(error) = first_connect_error {
            return Err(BenchError::Connect {
                addr: config.addrs[0].to_string(),
                error,
            });
        }
    }
    let members = tasks.len();
    shared.members.store(members, Ordering::Relaxed);
    let target = (members as u64) * (members.saturating_sub(1) as u64) / 2;

    // The barrier: every member has seen every later member join.
    let mut watchdog = Watchdog::new(config.timeout);
    let mut barrier = false;
    let several = config.addrs.len() > 1;
    let (mut joins_seen, mut joins_since) = (0, Instant::now());
    while !cancel.is_cancelled() && !tasks.is_empty() {
        let joins = shared.joins.load(Ordering::Relaxed);
        if joins != joins_seen {
            (joins_seen, joins_since) = (joins, Instant::now());
        }
        let greeted = shared.greeted.load(Ordering::Relaxed) >= members;
        let settled = several && greeted && joins_since.elapsed() >= SETTLE;
        if (joins >= target && (greeted || !several)) || settled {
            barrier = true;
            break;
        }
        if watchdog.expired(&shared) {
            first_failure.get_or_insert_with(|| {
                format!(
                    "saw {} of {target} join announcements, then nothing for {:.1}s",
                    shared.joins.load(Ordering::Relaxed),
                    config.timeout.as_secs_f64()
                )
            });
            break;
        }
        tokio::time::sleep(TICK).await;
    }
    let join_secs = joining.elapsed().as_secs_f64();

    let started = Instant::now();
    if barrier {
        let _ = go_tx.send(true);
        let mut watchdog = Watchdog::new(config.timeout);
        while !cancel.is_cancelled() && shared.done.load(Ordering::Relaxed) < members {
            if tasks.iter().all(|t| t.is_finished()) {
                break;
            }
            if watchdog.expired(&shared) {
                first_failure.get_or_insert_with(|| {
                    format!(
                        "{} of {members} members still missing lines after {:.1}s without \
                         progress",
                        members - shared.done.load(Ordering::Relaxed),
                        config.timeout.as_secs_f64()
                    )
                });
                break;
            }
            tokio::time::sleep(TICK).await;
        }
    }
    let stopped = Instant::now();
    stop.cancel();

    let mut totals = Tally::default();
    let mut lost = 0u64;
    let mut last_finish: Option<Instant> = None;
    let mut first_mismatch = None;
    let mut streams = Vec::with_capacity(tasks.len());
    for (me, task) in tasks.into_iter().enumerate() {
        match task.await {
            Ok((tally, stream)) => {
                streams.push(stream);
                totals.sent += tally.sent;
                totals.deliveries += tally.deliveries;
                totals.out_of_order += tally.out_of_order;
                totals.unprefixed += tally.unprefixed;
                totals.mismatches += tally.mismatches;
                if barrier {
                    lost += tally.lost(me, members, config.count);
                }
                if let Some(at) = tally.finished {
                    last_finish = Some(last_finish.map_or(at, |l| l.max(at)));
                }
                if first_mismatch.is_none() {
                    first_mismatch = tally.first_mismatch;
                }
                if let Some(why) = tally.failure {
                    errors += 1;
                    debug!("member {me} failed: {why}");
                    first_failure.get_or_insert(why);
                }
            }
            Err(e) => {
                errors += 1;
                first_failure.get_or_insert(format!("member task failed: {e}"));
            }
        }
    }
    close_all(streams).await;
    let end = match last_finish {
        Some(at) if barrier && shared.done.load(Ordering::Relaxed) == members => at,
        _ => stopped,
    };
    let secs = if barrier {
        end.saturating_duration_since(started).as_secs_f64()
    } else {
        0.0
    };
    let expected = members as u64 * members.saturating_sub(1) as u64 * config.count;
    Ok(ChatReport {
        mode: "chat".into(),
        transport: "tcp".into(),
        framing: "line".into(),
        addr: addr_list,
        conns: config.conns,
        members,
        count: config.count,
        join_secs,
        duration_secs: secs,
        deliveries: totals.deliveries,
        deliveries_per_sec: if secs > 0.0 {
            totals.deliveries as f64 / secs
        } else {
            0.0
        },
        expected,
        sent: totals.sent,
        lost: if barrier { lost } else { expected },
        out_of_order: totals.out_of_order,
        unprefixed: totals.unprefixed,
        mismatches: totals.mismatches,
        errors,
        barrier,
        first_failure: first_failure.or(first_mismatch),
        interrupted: cancel.is_cancelled(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(members: usize, count: u64) -> Shared {
        Shared {
            members: AtomicUsize::new(members),
            count,
            joins: AtomicU64::new(0),
            progress: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            greeted: AtomicUsize::new(0),
        }
    }

    #[test]
    fn lines_split_across_reads_are_put_back_together() {
        let s = shared(3, 2);
        let mut t = Tally::default();
        t.feed(b"* guest2 joined\n<guest2> m1:", 0, &s);
        t.feed(
            b"0\n<announce> 127.0.0.1 is connected as <user3>.\r\n",
            0,
            &s,
        );
        t.feed(b"<announce> 127.0.0.1 is connected as <user4>.\n", 0, &s);
        t.feed(b"m2:0\nm2:1\n<guest2> m1:1\n[history] <x> m1:0\n", 0, &s);
        assert_eq!(s.joins.load(Ordering::Relaxed), 2);
        assert_eq!((t.deliveries, t.unprefixed, t.out_of_order), (4, 2, 0));
        assert_eq!(t.lost(0, 3, 2), 0);
        assert!(t.finished.is_some());
    }

    #[test]
    fn gaps_and_late_lines_are_counted() {
        let s = shared(2, 4);
        let mut t = Tally::default();
        t.feed(b"<a> m1:0\n<a> m1:2\n<a> m1:1\n", 0, &s);
        assert_eq!(t.out_of_order, 2);
        // 3 never came; 1 came late.
        assert_eq!(t.lost(0, 2, 4), 1);
        t.feed(b"<a> hello\n<a> m9:0\n<a> m0:0\n", 0, &s);
        assert_eq!(
            t.mismatches, 2,
            "not a member's line, and an unknown member"
        );
        assert_eq!(t.deliveries, 3, "own lines are not deliveries");
    }

    #[test]
    fn payload_chunks_cover_every_line_once() {
        let mut out = Vec::new();
        let mut from = 0;
        let mut lines = 0;
        while from < 20_000 {
            from = payload_chunk(7, from, 20_000, &mut out);
            lines += memchr::memchr_iter(b'\n', &out).count();
            assert!(out.len() <= WRITE_CHUNK + 32);
        }
        assert_eq!(lines, 20_000);
        payload_chunk(7, 0, 2, &mut out);
        assert_eq!(out, b"m7:0\nm7:1\n");
    }

    #[test]
    fn a_report_fails_on_loss_disorder_or_no_barrier() {
        let mut r = ChatReport {
            mode: "chat".into(),
            transport: "tcp".into(),
            framing: "line".into(),
            addr: "127.0.0.1:9".into(),
            conns: 3,
            members: 3,
            count: 2,
            join_secs: 0.1,
            duration_secs: 0.1,
            deliveries: 12,
            deliveries_per_sec: 120.0,
            expected: 12,
            sent: 6,
            lost: 0,
            out_of_order: 0,
            unprefixed: 0,
            mismatches: 0,
            errors: 0,
            barrier: true,
            first_failure: None,
            interrupted: false,
        };
        assert_eq!(r.failure(), None);
        r.lost = 2;
        assert!(r.failure().unwrap().starts_with("2 of 12 deliveries lost"));
        r.lost = 0;
        r.out_of_order = 1;
        assert!(r.failure().unwrap().starts_with("1 out of order"));
        r.out_of_order = 0;
        r.barrier = false;
        assert!(
            r.failure()
                .unwrap()
                .contains("never all saw each other join")
        );
    }
}
