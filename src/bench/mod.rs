//! The load generator behind `sockit bench`: N concurrent ping-pong clients against an echo
//! service, each sending one message and waiting for its reply before sending the next, and
//! checking that every reply is the message it sent (or, from `sockit serve --service ack`,
//! the receipt for it).
//!
//! Clients connect first (at most [`CONNECT_CONCURRENCY`] at a time, keeping only counts and
//! the first error for the ones that fail), then start together, so connection setup is not
//! measured. Memory stays bounded whatever `--conns` and `--size` say: one shared message
//! prefix and fill pattern, read buffers per worker thread rather than per client (replies are
//! checked as they stream in, see `reply.rs`), and one shared latency histogram that clients
//! feed in small batches.
//!
//! `tcp` and `udp` hold the two client loops; [`chat`] is the chat-room load (`--chat`).

pub mod chat;
pub mod pace;
pub mod rate;
mod reply;
mod tcp;
mod udp;

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::codec::{Framing, MAX_DATAGRAM};
use crate::service::Transport;

/// At most this many connects are in flight at once, so a large `--conns` neither overflows
/// the server's listen backlog nor holds a future per client.
pub const CONNECT_CONCURRENCY: usize = 256;
/// Largest message `bench` sends: 1 GiB.
pub const MAX_SIZE: usize = 1 << 30;
/// Highest latency the histogram can record: one minute, in nanoseconds.
const MAX_LATENCY_NS: u64 = 60_000_000_000;
/// Latency samples a client gathers before adding them to the shared histogram.
const SAMPLE_BATCH: usize = 128;

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// The server.
    pub addr: SocketAddr,
    /// TCP or UDP.
    pub transport: Transport,
    /// Number of concurrent clients.
    pub conns: usize,
    /// How long to send for (unless `count` is set).
    pub duration: Duration,
    /// Messages per client; when set, the run ends after them instead of after `duration`.
    pub count: Option<u64>,
    /// Message body size in bytes.
    pub size: usize,
    /// Framing (TCP only).
    pub framing: Framing,
    /// How long a client waits for one reply before counting a timeout.
    pub timeout: Duration,
    /// Open-loop load: messages per second per client, sent on a fixed schedule whatever the
    /// replies do (see [`rate`]); `None` is ping-pong.
    pub rate: Option<f64>,
    /// rudp: the connections' settings (MTU, windows, timers).
    pub rudp: crate::rudp::Config,
    /// Stream connections: a unix socket instead of TCP, layers (TLS). Plain by default.
    pub dial: crate::transport::stream::Dial,
    /// A new connection (and handshake) per message (`--reconnect`): measures connections, or
    /// TLS handshakes, per second. Streams only.
    pub reconnect: bool,
}

/// Latency percentiles, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest round trip.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// The result of a run; `--json` prints it as one object.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BenchReport {
    /// `tcp` or `udp`.
    pub transport: String,
    /// The framing used.
    pub framing: String,
    /// The server address.
    pub addr: String,
    /// Concurrent clients asked for.
    pub conns: usize,
    /// Message body size.
    pub size: usize,
    /// Measured wall time, seconds.
    pub duration_secs: f64,
    /// Whether every message had a connection of its own (`--reconnect`): then `messages`
    /// also counts connections (TLS handshakes).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub reconnect: bool,
    /// Round trips completed with the right reply.
    pub messages: u64,
    /// Round trips per second.
    pub messages_per_sec: f64,
    /// Messages sent.
    pub sent: u64,
    /// Replies that were not the message sent (error texts, mangled or unasked-for replies).
    pub mismatches: u64,
    /// Messages never answered: on TCP, the one a client was waiting for when it stopped on a
    /// timeout or a lost connection; on UDP, datagrams whose reply never came.
    pub lost: u64,
    /// UDP: replies that came after their client had given up on them.
    pub out_of_order: u64,
    /// Replies that did not arrive in time.
    pub timeouts: u64,
    /// Clients that failed (could not connect, connection lost, no reply in time on TCP,
    /// reply out of step).
    pub errors: u64,
    /// Round-trip latency of the right replies (open-loop: from each message's scheduled
    /// send time).
    pub latency_us: Latency,
    /// Open-loop load: messages per second per client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<f64>,
    /// The first failure, in words (not part of the JSON).
    #[serde(skip)]
    pub first_failure: Option<String>,
    /// Whether the run was cancelled before its end (not part of the JSON).
    #[serde(skip)]
    pub interrupted: bool,
}

impl BenchReport {
    /// Why this run counts as failed, in one line, or `None` if every reply was right.
    pub fn failure(&self) -> Option<String> {
        let first = self.first_failure.as_deref().unwrap_or("no details");
        if self.errors > 0 {
            let mut line = format!("{} of {} clients failed", self.errors, self.conns);
            if self.mismatches > 0 {
                line += &format!(" and {} replies were wrong", self.mismatches);
            }
            Some(format!("{line}; first: {first}"))
        } else if self.mismatches > 0 {
            Some(format!(
                "{} of {} replies were not the message sent; first: {first}",
                self.mismatches, self.sent
            ))
        } else if self.messages == 0 && !self.interrupted {
            Some(format!(
                "no replies from {}: is an echo service listening there?",
                self.addr
            ))
        } else {
            None
        }
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.latency_us;
        let pace = match (self.rate, self.reconnect) {
            (Some(r), _) => format!(", open loop at {r}/s each"),
            (None, true) => ", a new connection per message".to_owned(),
            (None, false) => String::new(),
        };
        writeln!(
            f,
            "{} {} clients x {}-byte messages ({} framing{pace}) against {} for {:.1}s{}",
            self.transport,
            self.conns,
            self.size,
            self.framing,
            self.addr,
            self.duration_secs,
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            }
        )?;
        writeln!(
            f,
            "messages: {} ({:.0}/s), sent: {}, mismatches: {}, lost: {}, out of order: {}, \
             timeouts: {}, errors: {}",
            self.messages,
            self.messages_per_sec,
            self.sent,
            self.mismatches,
            self.lost,
            self.out_of_order,
            self.timeouts,
            self.errors
        )?;
        write!(
            f,
            "latency (us): p50 {:.0}  p90 {:.0}  p99 {:.0}  max {:.0}  mean {:.0}",
            l.p50, l.p90, l.p99, l.max, l.mean
        )
    }
}

/// A message size the framing or transport cannot carry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Over [`MAX_SIZE`].
    #[error("{size} bytes is over the {MAX_SIZE}-byte (1G) limit")]
    TooBig {
        /// The size asked for.
        size: usize,
    },
    /// Over what one rudp message carries.
    #[error(
        "{size} bytes is over the largest rudp message ({} bytes)",
        crate::rudp::DEFAULT_MAX_MESSAGE
    )]
    TooBigForRudp {
        /// The size asked for.
        size: usize,
    },
    /// Too small to carry the open-loop stamp.
    #[error(
        "{size} bytes cannot carry the sequence number and send time of --rate (at least {min})"
    )]
    TooSmallForRate {
        /// The size asked for.
        size: usize,
        /// The least that works.
        min: usize,
    },
    /// Over what the length prefix can express.
    #[error("{size} bytes does not fit {framing} framing (at most {max} bytes)")]
    TooBigForFraming {
        /// The size asked for.
        size: usize,
        /// The framing.
        framing: Framing,
        /// Its largest body.
        max: u64,
    },
    /// Over the largest UDP payload.
    #[error("{size} bytes does not fit one UDP datagram (at most {MAX_DATAGRAM} bytes)")]
    TooBigForDatagram {
        /// The size asked for.
        size: usize,
    },
    /// Zero, where an empty message cannot be told from no message.
    #[error("{framing} framing needs messages of at least 1 byte")]
    Empty {
        /// The framing.
        framing: Framing,
    },
}

/// Checks that `size`-byte messages can be sent over `transport` with `framing` (ignored for
/// UDP, where a datagram is a message).
pub fn check_size(transport: Transport, framing: Framing, size: usize) -> Result<(), SizeError> {
    if size > MAX_SIZE {
        return Err(SizeError::TooBig { size });
    }
    match (transport, framing) {
        (Transport::Udp, _) if size > MAX_DATAGRAM => Err(SizeError::TooBigForDatagram { size }),
        (Transport::Udp, _) => Ok(()),
        (Transport::Rudp, _) if size > crate::rudp::DEFAULT_MAX_MESSAGE => {
            Err(SizeError::TooBigForRudp { size })
        }
        (Transport::Rudp, _) => Ok(()),
        (Transport::Tcp, Framing::Raw | Framing::Line) if size == 0 => {
            Err(SizeError::Empty { framing })
        }
        (Transport::Tcp, Framing::Length { prefix, .. }) if size as u64 > prefix.max_len() => {
            Err(SizeError::TooBigForFraming {
                size,
                framing,
                max: prefix.max_len(),
            })
        }
        (Transport::Tcp, _) => Ok(()),
    }
}

/// Why a benchmark could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// No client could connect.
    #[error("cannot connect to {addr}: {error}")]
    Connect {
        /// The server (an address, or `unix:PATH`).
        addr: String,
        /// The first client's error.
        error: io::Error,
    },
    /// `conns` is 0.
    #[error("at least one client is needed")]
    NoClients,
    /// The message size does not fit the framing or transport.
    #[error("invalid message size")]
    Size(#[from] SizeError),
    /// Open-loop load cannot run this way.
    #[error("{0}")]
    Rate(String),
}

/// Checks what `--rate` needs: message boundaries (not `raw` on TCP), room for the stamp, and
/// a rate that is positive and finite.
pub fn check_rate(
    transport: Transport,
    framing: Framing,
    size: usize,
    rate: f64,
) -> Result<(), BenchError> {
    if !(rate.is_finite() && rate > 0.0) {
        return Err(BenchError::Rate(format!(
            "the rate must be a positive number, not {rate}"
        )));
    }
    if transport == Transport::Tcp && framing == Framing::Raw {
        return Err(BenchError::Rate(
            "--rate matches replies to requests by content, which raw framing cannot delimit: use line or a length framing".into(),
        ));
    }
    let min = rate::min_size((transport == Transport::Tcp).then_some(framing));
    if size < min {
        return Err(SizeError::TooSmallForRate { size, min }.into());
    }
    Ok(())
}

/// What every client shares: settings, the end of the run, and the latency histogram.
struct Shared {
    size: usize,
    framing: Framing,
    timeout: Duration,
    count: Option<u64>,
    deadline: Instant,
    hist: Mutex<Histogram<u64>>,
}

impl Shared {
    /// Whether a client that has sent `sent` messages is done, `now`.
    fn done(&self, sent: u64, now: Instant) -> bool {
        match self.count {
            Some(n) => sent >= n,
            None => now >= self.deadline,
        }
    }
}

/// The counts a client keeps and the run adds up.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    sent: u64,
    messages: u64,
    mismatches: u64,
    lost: u64,
    out_of_order: u64,
    timeouts: u64,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.sent += other.sent;
        self.messages += other.messages;
        self.mismatches += other.mismatches;
        self.lost += other.lost;
        self.out_of_order += other.out_of_order;
        self.timeouts += other.timeouts;
    }
}

/// One client's results.
#[derive(Debug, Default)]
struct Tally {
    counts: Counts,
    /// Why the client stopped early, if it did.
    failure: Option<String>,
    /// The first wrong reply, described.
    first_mismatch: Option<String>,
    /// The last reply, described, if it was wrong: it explains a failure that follows.
    last_mismatch: Option<String>,
    /// Latencies not yet added to the shared histogram.
    samples: Vec<u64>,
}

impl Tally {
    /// Records a right reply to a message sent (or, open loop, scheduled) at `started`.
    fn record(&mut self, started: Instant, shared: &Shared) {
        self.counts.messages += 1;
        if self.last_mismatch.is_some() {
            self.last_mismatch = None;
        }
        let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        if self.samples.capacity() == 0 {
            self.samples.reserve_exact(SAMPLE_BATCH);
        }
        self.samples.push(ns.clamp(1, MAX_LATENCY_NS));
        if self.samples.len() >= SAMPLE_BATCH {
            self.flush(shared);
        }
    }

    /// Counts a wrong reply to a `size`-byte message.
    fn mismatch(&mut self, m: &reply::Mismatch, size: usize) {
        self.counts.mismatches += 1;
        let described = m.describe(size);
        if self.first_mismatch.is_none() {
            self.first_mismatch = Some(described.clone());
        }
        self.last_mismatch = Some(described);
    }

    /// Notes why the client stopped, after the wrong reply that came just before, if any
    /// (typically the server's error text, then its close).
    fn fail(&mut self, why: impl fmt::Display) {
        self.failure = Some(match &self.last_mismatch {
            Some(reply) => format!("{reply} ({why})"),
            None => why.to_string(),
        });
    }

    /// Adds the gathered latencies to the shared histogram.
    fn flush(&mut self, shared: &Shared) {
        if self.samples.is_empty() {
            return;
        }
        let mut hist = shared.hist.lock().unwrap_or_else(PoisonError::into_inner);
        for &ns in &self.samples {
            hist.saturating_record(ns);
        }
        drop(hist);
        self.samples.clear();
    }
}

/// The whole run's counts.
#[derive(Debug, Default)]
struct Totals {
    counts: Counts,
    errors: u64,
    first_failure: Option<String>,
    first_mismatch: Option<String>,
}

impl Totals {
    fn add(&mut self, t: Tally) {
        self.counts.add(t.counts);
        if let Some(why) = t.failure {
            self.fail(why);
        }
        if self.first_mismatch.is_none() {
            self.first_mismatch = t.first_mismatch;
        }
    }

    fn fail(&mut self, why: String) {
        self.errors += 1;
        debug!("client failed: {why}");
        self.first_failure.get_or_insert(why);
    }
}

/// A connected client socket.
enum Socket {
    Tcp(TcpStream),
    /// Any other stream: unix, TLS.
    Stream(crate::transport::stream::BoxStream),
    Udp(UdpSocket),
    Rudp(crate::transport::rudp::RudpConnection),
}

async fn connect(config: &BenchConfig) -> io::Result<Socket> {
    let attempt = async {
        match config.transport {
            Transport::Tcp if !config.dial.is_plain() => {
                let (stream, _) = config
                    .dial
                    .connect(&[config.addr], config.timeout)
                    .await
                    .map_err(|e| io::Error::other(e.to_string()))?;
                Ok(Socket::Stream(stream))
            }
            Transport::Tcp => {
                let stream = TcpStream::connect(config.addr).await?;
                // Ping-pong: a small message must leave now, not after the delayed ACK.
                stream.set_nodelay(true)?;
                Ok(Socket::Tcp(stream))
            }
            Transport::Udp => {
                let local: SocketAddr = if config.addr.is_ipv4() {
                    (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
                } else {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let socket = UdpSocket::bind(local).await?;
                socket.connect(config.addr).await?;
                Ok(Socket::Udp(socket))
            }
            Transport::Rudp => {
                let conn =
                    crate::transport::rudp::connect(config.addr, config.rudp.clone()).await?;
                Ok(Socket::Rudp(conn))
            }
        }
    };
    match tokio::time::timeout(config.timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "connection timed out",
        )),
    }
}

/// The rudp ping-pong client: one message, its reply (whole, as the transport keeps message
/// boundaries), the next.
async fn rudp_client(
    mut conn: crate::transport::rudp::RudpConnection,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) -> Tally {
    let payload = bytes::Bytes::from(vec![reply::FILL; shared.size]);
    let mut tally = Tally::default();
    loop {
        let t0 = Instant::now();
        if shared.done(tally.counts.sent, t0) {
            break;
        }
        tally.counts.sent += 1;
        if conn.send(payload.clone()).await.is_err() {
            tally.counts.lost += 1;
            tally.fail("the rudp connection closed");
            break;
        }
        let got = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            got = tokio::time::timeout(shared.timeout, conn.recv()) => got,
        };
        match got {
            Ok(Some(reply)) if reply == payload => tally.record(t0, &shared),
            Ok(Some(reply)) => {
                tally.counts.mismatches += 1;
                let preview = String::from_utf8_lossy(&reply[..reply.len().min(80)]).into_owned();
                let what = format!("server replied {preview:?} ({} bytes)", reply.len());
                tally.first_mismatch.get_or_insert_with(|| what.clone());
                tally.last_mismatch = Some(what);
            }
            Ok(None) => {
                tally.counts.lost += 1;
                let why = match conn.close_reason() {
                    Some(r) => format!("the rudp connection ended: {r}"),
                    None => "the rudp connection ended".to_owned(),
                };
                tally.fail(why);
                break;
            }
            Err(_) => {
                tally.counts.timeouts += 1;
                tally.counts.lost += 1;
                tally.fail(format!("no reply within {:?}", shared.timeout));
                break;
            }
        }
    }
    conn.close();
    tally.flush(&shared);
    tally
}

/// Runs the benchmark described by `config` until its duration or count is reached, or until
/// `cancel` is cancelled; then every client stops and the report covers what was done.
pub async fn run(
    config: &BenchConfig,
    cancel: CancellationToken,
) -> Result<BenchReport, BenchError> {
    if config.conns == 0 {
        return Err(BenchError::NoClients);
    }
    check_size(config.transport, config.framing, config.size)?;
    if let Some(rate) = config.rate {
        check_rate(config.transport, config.framing, config.size, rate)?;
    }

    if config.reconnect {
        if config.transport != Transport::Tcp {
            return Err(BenchError::Rate(
                "--reconnect opens a connection per message: it needs a stream (TCP, TLS, unix)"
                    .into(),
            ));
        }
        // One connection first, so that an unreachable server is one clear error.
        if let Err(error) = connect(config).await {
            return Err(BenchError::Connect {
                addr: config.dial.describe(&[config.addr]),
                error,
            });
        }
    }
    // Connect everyone first, a bounded number at a time; failures leave only a count.
    let mut totals = Totals::default();
    let mut first_connect_error = None;
    let mut sockets = Vec::new();
    if !config.reconnect {
        let mut attempts = futures_util::stream::iter(0..config.conns)
            .map(|_| connect(config))
            .buffer_unordered(CONNECT_CONCURRENCY);
        loop {
            let next = tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                next = attempts.next() => next,
            };
            match next {
                None => break,
                Some(Ok(socket)) => sockets.push(socket),
                Some(Err(e)) => {
                    totals.fail(format!(
                        "cannot connect to {}: {e}",
                        config.dial.describe(&[config.addr])
                    ));
                    first_connect_error.get_or_insert(e);
                }
            }
        }
    }
    if sockets.is_empty() && !cancel.is_cancelled() {
        if let Some(error) = first_connect_error {
            return Err(BenchError::Connect {
                addr: config.dial.describe(&[config.addr]),
                error,
            });
        }
    }

    let started = Instant::now();
    let shared = Arc::new(Shared {
        size: config.size,
        framing: config.framing,
        timeout: config.timeout,
        count: config.count,
        deadline: started + config.duration,
        // Three significant figures between 1 ns and one minute.
        hist: Mutex::new(
            Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)
                .expect("static histogram bounds are valid"),
        ),
    });
    let request = Arc::new(tcp::Request::new(config.framing, config.size));
    if cancel.is_cancelled() {
        // Stopped while connecting: nothing was sent, and nothing will be.
        sockets.clear();
    }
    let count = sockets.len().max(1);
    let mut clients: Vec<_> = Vec::new();
    if config.reconnect && !cancel.is_cancelled() {
        let redial = Arc::new(tcp::Redial {
            addr: config.addr,
            dial: config.dial.clone(),
        });
        for _ in 0..config.conns {
            clients.push(tokio::spawn(tcp::reconnect_client(
                redial.clone(),
                shared.clone(),
                request.clone(),
                cancel.child_token(),
            )));
        }
    }
    clients.extend(sockets.into_iter().enumerate().map(|(k, socket)| {
        let (shared, cancel) = (shared.clone(), cancel.child_token());
        if let Some(rate) = config.rate {
            let interval = Duration::from_secs_f64(1.0 / rate);
            // Clients spread evenly over one interval, so their sends do not come in bursts.
            let schedule = rate::Schedule {
                start: started,
                phase: interval.mul_f64(k as f64 / count as f64),
                interval,
            };
            return match socket {
                Socket::Tcp(s) => tokio::spawn(rate::tcp_client(s, shared, schedule, cancel)),
                Socket::Stream(s) => tokio::spawn(rate::stream_client(s, shared, schedule, cancel)),
                Socket::Udp(s) => tokio::spawn(rate::udp_client(s, shared, schedule, cancel)),
                Socket::Rudp(c) => tokio::spawn(rate::rudp_client(c, shared, schedule, cancel)),
            };
        }
        match socket {
            Socket::Tcp(s) => tokio::spawn(tcp::client(s, shared, request.clone(), cancel)),
            Socket::Stream(s) => {
                tokio::spawn(tcp::stream_client(s, shared, request.clone(), cancel))
            }
            Socket::Udp(s) => tokio::spawn(udp::client(s, shared, cancel)),
            Socket::Rudp(c) => tokio::spawn(rudp_client(c, shared, cancel)),
        }
    }));
    for client in clients {
        match client.await {
            Ok(tally) => totals.add(tally),
            Err(e) => totals.fail(format!("client task failed: {e}")),
        }
    }
    let elapsed = started.elapsed();

    let h = shared.hist.lock().unwrap_or_else(PoisonError::into_inner);
    let us = |ns: u64| ns as f64 / 1000.0;
    // Open loop: the rate is measured over the schedule, not the wait for stragglers after it.
    let secs = match config.rate {
        Some(rate) if !cancel.is_cancelled() => {
            let planned = config
                .count
                .map(|n| n as f64 / rate)
                .unwrap_or(config.duration.as_secs_f64());
            planned.min(elapsed.as_secs_f64())
        }
        _ => elapsed.as_secs_f64(),
    };
    Ok(BenchReport {
        transport: if config.dial.unix.is_some() {
            "unix".to_owned()
        } else {
            config.transport.to_string()
        },
        framing: if config.transport == Transport::Tcp {
            config.framing.to_string()
        } else {
            "datagram".into()
        },
        addr: config.dial.describe(&[config.addr]),
        conns: config.conns,
        size: config.size,
        duration_secs: secs,
        reconnect: config.reconnect,
        messages: totals.counts.messages,
        messages_per_sec: if secs > 0.0 {
            totals.counts.messages as f64 / secs
        } else {
            0.0
        },
        sent: totals.counts.sent,
        mismatches: totals.counts.mismatches,
        lost: totals.counts.lost,
        out_of_order: totals.counts.out_of_order,
        timeouts: totals.counts.timeouts,
        errors: totals.errors,
        latency_us: if h.is_empty() {
            Latency::default()
        } else {
            Latency {
                p50: us(h.value_at_quantile(0.50)),
                p90: us(h.value_at_quantile(0.90)),
                p99: us(h.value_at_quantile(0.99)),
                max: us(h.max()),
                mean: h.mean() / 1000.0,
            }
        },
        rate: config.rate,
        first_failure: totals.first_failure.or(totals.first_mismatch),
        interrupted: cancel.is_cancelled(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_checked_against_framing_and_transport() {
        let f = |s: &str| s.parse::<Framing>().unwrap();
        assert!(check_size(Transport::Tcp, f("len8"), 255).is_ok());
        assert!(matches!(
            check_size(Transport::Tcp, f("len8"), 256),
            Err(SizeError::TooBigForFraming { max: 255, .. })
        ));
        assert!(check_size(Transport::Tcp, f("len16le"), 65_536).is_err());
        assert!(check_size(Transport::Tcp, f("len32"), MAX_SIZE).is_ok());
        assert!(check_size(Transport::Tcp, f("len64"), MAX_SIZE + 1).is_err());
        assert!(check_size(Transport::Tcp, f("line"), 0).is_err());
        assert!(check_size(Transport::Tcp, f("raw"), 0).is_err());
        assert!(check_size(Transport::Tcp, f("len32"), 0).is_ok());
        assert!(check_size(Transport::Udp, f("raw"), MAX_DATAGRAM).is_ok());
        assert!(check_size(Transport::Udp, f("raw"), MAX_DATAGRAM + 1).is_err());
        let e = check_size(Transport::Tcp, f("len8"), 300).unwrap_err();
        assert_eq!(
            e.to_string(),
            "300 bytes does not fit len8 framing (at most 255 bytes)"
        );
    }

    #[test]
    fn a_report_fails_on_errors_mismatches_or_silence() {
        let mut r = BenchReport {
            transport: "tcp".into(),
            framing: "line".into(),
            addr: "127.0.0.1:9".into(),
            conns: 2,
            size: 8,
            duration_secs: 1.0,
            reconnect: false,
            messages: 10,
            messages_per_sec: 10.0,
            sent: 10,
            mismatches: 0,
            lost: 0,
            out_of_order: 0,
            timeouts: 0,
            errors: 0,
            latency_us: Latency::default(),
            rate: None,
            first_failure: None,
            interrupted: false,
        };
        assert_eq!(r.failure(), None);
        r.mismatches = 1;
        r.first_failure = Some("server replied \"error: x\"".into());
        assert_eq!(
            r.failure().unwrap(),
            "1 of 10 replies were not the message sent; first: server replied \"error: x\""
        );
        r.errors = 2;
        assert!(
            r.failure()
                .unwrap()
                .starts_with("2 of 2 clients failed and 1 replies")
        );
        r.errors = 0;
        r.mismatches = 0;
        r.messages = 0;
        assert!(r.failure().unwrap().contains("no replies"));
        r.interrupted = true;
        assert_eq!(r.failure(), None);
    }
}
