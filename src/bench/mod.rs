//! The load generator behind `sockit bench`: N concurrent ping-pong clients against an echo
//! service, each sending one message and waiting for its reply before sending the next.
//!
//! All clients connect first and start together, so connection setup is not measured. Each
//! client keeps its own latency histogram (no shared state on the hot path); they are merged at
//! the end.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{Barrier, Semaphore};
use tokio_util::codec::{Decoder, Encoder};

use crate::codec::{FrameCodec, Framing, Limits};
use crate::error::CodecError;
use crate::message::Message;
use crate::service::Transport;

/// At most this many connects are in flight at once, so a large `--conns` does not overflow
/// the server's listen backlog.
const CONNECT_CONCURRENCY: usize = 256;
/// Highest latency the histograms can record: one minute, in nanoseconds.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// The server.
    pub addr: SocketAddr,
    /// TCP or UDP.
    pub transport: Transport,
    /// Number of concurrent clients.
    pub conns: usize,
    /// How long to send for.
    pub duration: Duration,
    /// Message body size in bytes.
    pub size: usize,
    /// Framing (TCP only).
    pub framing: Framing,
    /// How long a client waits for one reply before counting a timeout.
    pub timeout: Duration,
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
    /// Concurrent clients.
    pub conns: usize,
    /// Message body size.
    pub size: usize,
    /// Measured wall time, seconds.
    pub duration_secs: f64,
    /// Round trips completed.
    pub messages: u64,
    /// Round trips per second.
    pub messages_per_sec: f64,
    /// Replies that did not arrive in time.
    pub timeouts: u64,
    /// Clients that failed (could not connect, connection lost, bad reply).
    pub errors: u64,
    /// Round-trip latency.
    pub latency_us: Latency,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.latency_us;
        writeln!(
            f,
            "{} {} clients x {}-byte messages ({} framing) against {} for {:.1}s",
            self.transport, self.conns, self.size, self.framing, self.addr, self.duration_secs
        )?;
        writeln!(
            f,
            "messages: {} ({:.0}/s), timeouts: {}, errors: {}",
            self.messages, self.messages_per_sec, self.timeouts, self.errors
        )?;
        write!(
            f,
            "latency (us): p50 {:.0}  p90 {:.0}  p99 {:.0}  max {:.0}  mean {:.0}",
            l.p50, l.p90, l.p99, l.max, l.mean
        )
    }
}

/// Why a benchmark could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// No client could connect.
    #[error("cannot connect to {addr}: {error}")]
    Connect {
        /// The server.
        addr: SocketAddr,
        /// The first client's error.
        error: io::Error,
    },
    /// The configuration cannot work.
    #[error("{0}")]
    Config(String),
}

/// One client's results.
struct Tally {
    hist: Histogram<u64>,
    timeouts: u64,
    error: Option<io::Error>,
}

impl Tally {
    fn new() -> Self {
        Tally {
            // Three significant figures between 1 ns and one minute.
            hist: Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)
                .expect("static histogram bounds are valid"),
            timeouts: 0,
            error: None,
        }
    }

    fn record(&mut self, started: Instant) {
        let ns = (started.elapsed().as_nanos() as u64).clamp(1, MAX_LATENCY_NS);
        self.hist.saturating_record(ns);
    }
}

/// Runs the benchmark described by `config`.
pub async fn run(config: &BenchConfig) -> Result<BenchReport, BenchError> {
    if config.conns == 0 {
        return Err(BenchError::Config("--conns must be at least 1".into()));
    }
    if config.framing == Framing::Line && config.size == 0 {
        return Err(BenchError::Config(
            "--size must be at least 1 with line framing".into(),
        ));
    }
    let payload = Message::new(vec![b'x'; config.size]);
    let mut frame = BytesMut::new();
    if config.transport == Transport::Tcp {
        FrameCodec::new(config.framing, Limits::default())
            .encode(&payload, &mut frame)
            .map_err(|e| BenchError::Config(e.to_string()))?;
    } else {
        frame.extend_from_slice(payload.body());
    }
    let frame = frame.freeze();

    let barrier = Arc::new(Barrier::new(config.conns + 1));
    let connects = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let mut clients = Vec::with_capacity(config.conns);
    for _ in 0..config.conns {
        let (config, frame) = (config.clone(), frame.clone());
        let (barrier, connects) = (barrier.clone(), connects.clone());
        clients.push(tokio::spawn(async move {
            match config.transport {
                Transport::Tcp => tcp_client(&config, &frame, &barrier, &connects).await,
                Transport::Udp => udp_client(&config, &frame, &barrier, &connects).await,
            }
        }));
    }
    barrier.wait().await;
    let started = Instant::now();

    let mut total = Tally::new();
    let mut errors = 0u64;
    let mut connected = 0usize;
    let mut first_error = None;
    for client in clients {
        let tally = match client.await {
            Ok(t) => t,
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(io::Error::other(e));
                continue;
            }
        };
        if !tally.hist.is_empty() || tally.timeouts > 0 {
            connected += 1;
        }
        if let Some(e) = tally.error {
            errors += 1;
            first_error.get_or_insert(e);
        }
        total.timeouts += tally.timeouts;
        let _ = total.hist.add(&tally.hist);
    }
    let elapsed = started.elapsed();
    if connected == 0 {
        if let Some(error) = first_error {
            return Err(BenchError::Connect {
                addr: config.addr,
                error,
            });
        }
    }

    let h = &total.hist;
    let us = |ns: u64| ns as f64 / 1000.0;
    let messages = h.len();
    Ok(BenchReport {
        transport: config.transport.to_string(),
        framing: if config.transport == Transport::Tcp {
            config.framing.to_string()
        } else {
            "datagram".into()
        },
        addr: config.addr.to_string(),
        conns: config.conns,
        size: config.size,
        duration_secs: elapsed.as_secs_f64(),
        messages,
        messages_per_sec: messages as f64 / elapsed.as_secs_f64(),
        timeouts: total.timeouts,
        errors,
        latency_us: if messages == 0 {
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
    })
}

async fn tcp_client(
    config: &BenchConfig,
    frame: &[u8],
    barrier: &Barrier,
    connects: &Semaphore,
) -> Tally {
    let mut tally = Tally::new();
    let connected = {
        let _permit = connects.acquire().await;
        tokio::time::timeout(config.timeout, TcpStream::connect(config.addr)).await
    };
    barrier.wait().await;
    let mut stream = match connected {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tally.error = Some(e);
            return tally;
        }
        Err(_) => {
            tally.error = Some(io::ErrorKind::TimedOut.into());
            return tally;
        }
    };
    let _ = stream.set_nodelay(true);
    let mut codec = FrameCodec::new(config.framing, Limits::default());
    let mut rbuf = BytesMut::with_capacity((2 * frame.len()).max(8192));
    let deadline = Instant::now() + config.duration;
    while Instant::now() < deadline {
        let t0 = Instant::now();
        let round = async {
            stream.write_all(frame).await?;
            read_reply(&mut stream, &mut codec, &mut rbuf, config.size).await
        };
        match tokio::time::timeout(config.timeout, round).await {
            Ok(Ok(())) => tally.record(t0),
            Ok(Err(e)) => {
                tally.error = Some(e);
                break;
            }
            Err(_) => {
                // The connection's state is unknown after a lost reply: stop this client.
                tally.timeouts += 1;
                break;
            }
        }
    }
    tally
}

/// Reads one reply: one decoded message, or with `raw` framing, `size` bytes.
async fn read_reply(
    stream: &mut TcpStream,
    codec: &mut FrameCodec,
    rbuf: &mut BytesMut,
    size: usize,
) -> io::Result<()> {
    loop {
        if matches!(codec, FrameCodec::Raw(_)) {
            if rbuf.len() >= size {
                rbuf.advance(size);
                return Ok(());
            }
        } else if codec.decode(rbuf).map_err(codec_to_io)?.is_some() {
            return Ok(());
        }
        if rbuf.capacity() - rbuf.len() < 1024 {
            rbuf.reserve(8192);
        }
        if stream.read_buf(rbuf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            ));
        }
    }
}

fn codec_to_io(e: CodecError) -> io::Error {
    match e {
        CodecError::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

async fn udp_client(
    config: &BenchConfig,
    payload: &[u8],
    barrier: &Barrier,
    connects: &Semaphore,
) -> Tally {
    let mut tally = Tally::new();
    let setup = async {
        let _permit = connects.acquire().await;
        let local: SocketAddr = if config.addr.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(local).await?;
        socket.connect(config.addr).await?;
        io::Result::Ok(socket)
    };
    let socket = setup.await;
    barrier.wait().await;
    let socket = match socket {
        Ok(s) => s,
        Err(e) => {
            tally.error = Some(e);
            return tally;
        }
    };
    let mut buf = vec![0u8; 65_536];
    let deadline = Instant::now() + config.duration;
    while Instant::now() < deadline {
        let t0 = Instant::now();
        if let Err(e) = socket.send(payload).await {
            tally.error = Some(e);
            break;
        }
        match tokio::time::timeout(config.timeout, socket.recv(&mut buf)).await {
            Ok(Ok(_)) => tally.record(t0),
            Ok(Err(e)) => {
                tally.error = Some(e);
                break;
            }
            // A lost datagram: count it and go on, as UDP clients must.
            Err(_) => tally.timeouts += 1,
        }
    }
    tally
}
