//! The client behind `sockit connect`: a byte pipe like `nc -N`, or messages with replies.
//!
//! Four ways to talk to a server:
//!
//! - [`pipe`]: piped input with `raw` or `line` framing is a plain byte pipe. After a tokio
//!   connect (with its timeout) the socket becomes a blocking std socket and two threads run
//!   `std::io::copy` in each direction, which the standard library turns into `splice(2)` or
//!   `sendfile(2)` when one side is a pipe or a file. Nothing is added, removed or buffered
//!   beyond one chunk; at the end of the input the connection is half-closed and the client
//!   waits for the server to close (or `quit_after`).
//! - [`run`] with [`LineMode::Stream`]: piped lines with a length-prefixed or header framing;
//!   each line is one frame, replies are printed one per line as they arrive.
//! - [`run`] with [`Input::Messages`] or [`LineMode::WaitReply`]: one message at a time, each
//!   after the previous reply; a missing reply, or the server closing first, is an error.
//! - [`run`] with [`LineMode::Interactive`]: a person at a terminal; each line waits briefly
//!   for its reply so the next prompt comes after it, but no reply is not an error.
//!
//! UDP always goes one datagram at a time, resending up to `retries` times; replies that
//! arrive after a resend are reported as duplicates instead of being taken for the next
//! message's reply.

use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, FramedWrite};
use tracing::{debug, info};

use crate::codec::{FrameCodec, Framing, Limits};
use crate::error::CodecError;
use crate::message::Message;
use crate::service::Transport;
use crate::transport::stall::{Stalled, WriteStall};
use crate::transport::stream::{BoxStream, Dial, DialError};

/// How long to watch for the server closing after a reply that starts with `error:`: a
/// server's error notice is followed by a close, an echo of `error: x` is not.
const NOTICE_GRACE: Duration = Duration::from_millis(200);
/// Longest wait for a reply in a terminal session before the next prompt.
const PROMPT_WAIT: Duration = Duration::from_secs(1);
/// Least time a message-at-a-time client waits for a greeting before sending its first
/// message (more on a slow link: a few connect round trips).
const GREETING_WAIT: Duration = Duration::from_millis(100);
/// Read buffer of the byte pipe when the output is not a pipe (no `splice` possible).
const PIPE_CHUNK: usize = 64 * 1024;
/// Input lines queued between the reader thread and the sender.
const LINE_QUEUE: usize = 32;
/// Bytes of input lines that may wait to be sent, whatever their number (see `LINE_QUEUE`).
const LINE_QUEUE_BYTES: usize = 4 * 1024 * 1024;

/// How the client talks to the server.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// TCP or UDP.
    pub transport: Transport,
    /// Framing for TCP.
    pub framing: Framing,
    /// Limits for decoding the server's messages; `max_frame` also bounds input lines.
    pub limits: Limits,
    /// Connect timeout, and how long to wait for each reply.
    pub timeout: Duration,
    /// UDP: how many times to resend a message that got no reply.
    pub retries: u32,
    /// After the end of the input, wait at most this long for the server to close (`nc -q`);
    /// `None` waits until it does.
    pub quit_after: Option<Duration>,
    /// rudp: the connection's settings (MTU, windows, timers).
    pub rudp: crate::rudp::Config,
    /// Stream connections: a unix socket instead of TCP, a proxy, layers (TLS, a hex tap).
    pub dial: Dial,
    /// Stream connections: a write that makes no progress this long fails with
    /// [`ClientError::WriteStalled`] (the server stopped reading); `None` waits forever.
    pub write_timeout: Option<Duration>,
}

/// The default `--write-timeout`.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            transport: Transport::Tcp,
            framing: Framing::Line,
            limits: Limits::default(),
            timeout: Duration::from_secs(2),
            retries: 2,
            quit_after: None,
            rudp: crate::rudp::Config::default(),
            dial: Dial::default(),
            write_timeout: Some(DEFAULT_WRITE_TIMEOUT),
        }
    }
}

/// What to send with [`run`].
pub enum Input {
    /// These messages, one at a time, each after the previous one's reply.
    Messages(Vec<Bytes>),
    /// The lines of a reader, each one message (line endings removed).
    Lines {
        /// Where the lines come from; read on a thread of its own.
        reader: Box<dyn BufRead + Send>,
        /// How lines and replies pair up.
        mode: LineMode,
    },
}

/// How lines read from the input are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineMode {
    /// A person is typing: prompt on stderr, wait briefly for each reply, stop at an empty line.
    Interactive,
    /// Send a line, wait for its reply (an error if none comes), then the next line: for
    /// servers that answer each `recv(1024)`.
    WaitReply,
    /// Stream every line as one frame without waiting; print replies as they come.
    Stream,
}

/// Totals of a client run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ClientSummary {
    /// Messages sent (UDP resends not counted); bytes for [`pipe`].
    pub sent: u64,
    /// Messages received and printed; bytes for [`pipe`].
    pub received: u64,
}

/// Why a client run failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting failed (refused, unreachable...).
    #[error("cannot connect to {addr}")]
    Connect {
        /// The address tried last.
        addr: SocketAddr,
        /// What the system said.
        #[source]
        error: io::Error,
    },
    /// Connecting took longer than the timeout.
    #[error("cannot connect to {addr}: timed out after {secs}s")]
    ConnectTimeout {
        /// The address tried last.
        addr: SocketAddr,
        /// The timeout.
        secs: f64,
    },
    /// A message got no reply in time (after every retry, for UDP).
    #[error("no reply from {addr} within {secs}s")]
    NoReply {
        /// The server.
        addr: String,
        /// Total time waited.
        secs: f64,
    },
    /// The server closed the connection while a message still waited for its reply.
    #[error("server closed the connection before replying to message {message} of {total}")]
    ClosedBeforeReply {
        /// The message without a reply (1-based).
        message: u64,
        /// Messages sent or to send; for streamed input, those sent so far.
        total: u64,
    },
    /// The server sent an `error: …` notice and closed the connection.
    #[error("server closed the connection after: {notice}")]
    ServerError {
        /// The notice, as received.
        notice: String,
    },
    /// UDP: the server's host said nothing is listening on that port.
    #[error("no reply from {addr}: connection refused (is anything listening on that port?)")]
    Refused {
        /// The server.
        addr: SocketAddr,
    },
    /// The server reset the connection.
    #[error("connection reset by server")]
    Reset,
    /// A write made no progress for the write timeout: the server stopped reading.
    #[error("server stopped reading: nothing could be written for {secs} s (--write-timeout)")]
    WriteStalled {
        /// The write timeout.
        secs: f64,
    },
    /// An input line does not fit in one frame.
    #[error("input line {line} is too long for {framing} framing (at most {max} bytes)")]
    LineTooLong {
        /// The line number (1-based).
        line: u64,
        /// The framing in use.
        framing: Framing,
        /// The longest line accepted.
        max: u64,
    },
    /// The server's bytes did not follow the framing.
    #[error("bad data from server")]
    Codec(#[source] CodecError),
    /// Reading the input failed.
    #[error("cannot read the input")]
    Input(#[source] io::Error),
    /// Writing the output failed (other than it being closed, which ends the run quietly).
    #[error("cannot write the output")]
    Output(#[source] io::Error),
    /// Connecting over a unix socket, a proxy or a layer (TLS) failed.
    #[error(transparent)]
    Dial(#[from] DialError),
    /// A socket operation failed.
    #[error("network i/o failed")]
    Io(#[from] io::Error),
}

impl From<CodecError> for ClientError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::Io(e) => network_error(e),
            e => ClientError::Codec(e),
        }
    }
}

/// A failed socket operation: resets get their own error.
fn network_error(e: io::Error) -> ClientError {
    if let Some(stalled) = Stalled::find(&e) {
        ClientError::WriteStalled {
            secs: stalled.limit.as_secs_f64(),
        }
    } else if is_reset(&e) {
        ClientError::Reset
    } else {
        ClientError::Io(e)
    }
}

/// A write that failed because the server stopped reading (see [`ClientConfig::write_timeout`]).
fn is_stalled(e: &CodecError) -> bool {
    matches!(e, CodecError::Io(io) if Stalled::find(io).is_some())
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
    )
}

/// Errors a write gets once the peer has closed: not ours to report.
fn is_peer_gone(e: &io::Error) -> bool {
    is_reset(e) || e.kind() == io::ErrorKind::BrokenPipe
}

/// Writes to stderr, ignoring failures: a closed stderr must not stop the client.
fn note(text: &str) {
    let mut err = io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    let _ = err.flush();
}

async fn connect_tcp(
    addrs: &[SocketAddr],
    limit: Duration,
) -> Result<(TcpStream, SocketAddr), ClientError> {
    let mut last = None;
    for &addr in addrs {
        debug!("connecting to {addr}");
        match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                match stream.local_addr() {
                    Ok(local) => info!("connected to {addr} from {local}"),
                    Err(_) => info!("connected to {addr}"),
                }
                return Ok((stream, addr));
            }
            Ok(Err(error)) => {
                debug!("cannot connect to {addr}: {error}");
                last = Some(ClientError::Connect { addr, error });
            }
            Err(_) => {
                debug!("connecting to {addr} timed out");
                last = Some(ClientError::ConnectTimeout {
                    addr,
                    secs: limit.as_secs_f64(),
                })
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to").into()
    }))
}

// ---------------------------------------------------------------------------------------------
// The byte pipe.

/// Connects over TCP to the first of `addrs` that answers and copies `input` to the server and
/// the server's bytes to `output`, unchanged, until the server closes.
///
/// At the end of the input the connection is half-closed (shutdown write), then the client
/// waits for the server to close, at most `config.quit_after` if set. Success means the
/// server closed cleanly (even if it stopped reading first, as after `bye`), or the output
/// was closed (`| head -1`), or `quit_after` ran out. A reset while reading, or an input or
/// output failure, is an error. The copies run on two plain threads; memory stays at one
/// chunk per direction.
pub async fn pipe<R, W>(
    addrs: &[SocketAddr],
    config: &ClientConfig,
    input: R,
    output: W,
) -> Result<ClientSummary, ClientError>
where
    R: Read + Send + 'static,
    W: Write + AsFd + Send + 'static,
{
    let quit_after = config.quit_after;
    let write_timeout = config.write_timeout;
    if !config.dial.is_plain() {
        let (stream, _) = config.dial.connect(addrs, config.timeout).await?;
        let target = config.dial.describe(addrs);
        info!("connected to {target}");
        let rx = pipe_async(stream, target, input, output, write_timeout)?;
        return tokio::task::spawn_blocking(move || wait_copies(&rx, quit_after, write_timeout))
            .await
            .map_err(io::Error::other)?;
    }
    let (stream, addr) = connect_tcp(addrs, config.timeout).await?;
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    // SO_SNDTIMEO: a send that moves nothing for this long fails with EAGAIN.
    stream.set_write_timeout(write_timeout)?;
    tokio::task::spawn_blocking(move || {
        pipe_blocking(stream, addr, input, output, quit_after, write_timeout)
    })
    .await
    .map_err(io::Error::other)?
}

/// The byte pipe over any stream (unix, TLS, a proxy): the input and the output are read and
/// written on threads of their own, the stream by two tasks; chunks wait in small bounded
/// queues. Reports the same events as the TCP threads.
fn pipe_async<R, W>(
    stream: BoxStream,
    target: String,
    mut input: R,
    mut output: W,
    write_timeout: Option<Duration>,
) -> io::Result<std::sync::mpsc::Receiver<Copied>>
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    use tokio::io::AsyncReadExt;
    let (tx, rx) = std::sync::mpsc::channel();
    let (mut rd, wr) = tokio::io::split(stream);
    let mut wr = WriteStall::new(wr, write_timeout);
    let (in_tx, mut in_rx) = mpsc::channel::<io::Result<Vec<u8>>>(4);
    std::thread::Builder::new()
        .name("sockit-in".into())
        .spawn(move || {
            loop {
                let mut buf = vec![0u8; PIPE_CHUNK];
                let sent = match input.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        buf.truncate(n);
                        in_tx.blocking_send(Ok(buf))
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => in_tx.blocking_send(Err(e)),
                };
                if sent.is_err() {
                    break;
                }
            }
        })?;
    let up_tx = tx.clone();
    tokio::spawn(async move {
        let mut total = 0u64;
        let result = loop {
            match in_rx.recv().await {
                None => break Ok(total),
                Some(Err(e)) => break Err(e),
                Some(Ok(chunk)) => {
                    if let Err(e) = wr.write_all(&chunk).await {
                        break Err(e);
                    }
                    total += chunk.len() as u64;
                    // Nothing more to send now: push out what a layer (TLS) still holds, or
                    // a line typed at a terminal could wait for the next one.
                    if in_rx.is_empty() {
                        if let Err(e) = wr.flush().await {
                            break Err(e);
                        }
                    }
                }
            }
        };
        // Logged first: the server's close, once it sees the shutdown, can end the run.
        if let Ok(n) = &result {
            info!("input ended after {n} bytes: half-closed the connection to {target}");
        }
        // Like `nc -N`: our input is over, keep reading the replies.
        let _ = wr.shutdown().await;
        let _ = up_tx.send(Copied::Up(result));
    });
    let (out_tx, out_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    let (out_err_tx, mut out_err_rx) = mpsc::channel::<io::Error>(1);
    std::thread::Builder::new()
        .name("sockit-out".into())
        .spawn(move || {
            for chunk in out_rx {
                if let Err(e) = output.write_all(&chunk).and_then(|()| output.flush()) {
                    let _ = out_err_tx.blocking_send(e);
                    return;
                }
            }
        })?;
    tokio::spawn(async move {
        let mut total = 0u64;
        let result = loop {
            let mut buf = vec![0u8; PIPE_CHUNK];
            let n = tokio::select! {
                e = out_err_rx.recv() => match e {
                    Some(e) => break Err((e, Side::Output)),
                    None => break Ok(total),
                },
                n = rd.read(&mut buf) => n,
            };
            match n {
                Ok(0) => break Ok(total),
                Ok(n) => {
                    buf.truncate(n);
                    total += n as u64;
                    // The output thread is slow only when the output is: wait for it there.
                    let out = out_tx.clone();
                    let queued = tokio::task::spawn_blocking(move || out.send(buf)).await;
                    if !matches!(queued, Ok(Ok(()))) {
                        match out_err_rx.recv().await {
                            Some(e) => break Err((e, Side::Output)),
                            None => break Ok(total),
                        }
                    }
                }
                Err(e) => break Err((e, Side::Network)),
            }
        };
        // Everything read is written before the end is reported.
        drop(out_tx);
        let result = match result {
            Ok(n) => match out_err_rx.recv().await {
                Some(e) => Err((e, Side::Output)),
                None => Ok(n),
            },
            other => other,
        };
        let _ = tx.send(Copied::Down(result));
    });
    Ok(rx)
}

/// How one copy thread ended.
enum Copied {
    /// Input → server: the byte count or the error.
    Up(io::Result<u64>),
    /// Server → output: the byte count, or the error and whether it was the output's.
    Down(Result<u64, (io::Error, Side)>),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Network,
    Output,
}

fn pipe_blocking<R, W>(
    stream: std::net::TcpStream,
    addr: SocketAddr,
    mut input: R,
    mut output: W,
    quit_after: Option<Duration>,
    write_timeout: Option<Duration>,
) -> Result<ClientSummary, ClientError>
where
    R: Read + Send + 'static,
    W: Write + AsFd + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    let mut up = stream.try_clone()?;
    let mut down = stream;
    let up_tx = tx.clone();
    std::thread::Builder::new()
        .name("sockit-up".into())
        .spawn(move || {
            let result = io::copy(&mut input, &mut up);
            // Logged before the shutdown: once the server sees it, its close can end the run
            // (and the process) before this thread gets to log anything.
            if let Ok(n) = &result {
                info!("input ended after {n} bytes: half-closed the connection to {addr}");
            }
            // Like `nc -N`: tell the server our input is over, keep reading its replies.
            let _ = up.shutdown(Shutdown::Write);
            let _ = up_tx.send(Copied::Up(result));
        })?;
    std::thread::Builder::new()
        .name("sockit-down".into())
        .spawn(move || {
            let result = copy_down(&mut down, &mut output);
            let _ = tx.send(Copied::Down(result));
        })?;

    wait_copies(&rx, quit_after, write_timeout)
}

/// Waits for the copies' events and decides how the pipe ends.
fn wait_copies(
    rx: &std::sync::mpsc::Receiver<Copied>,
    quit_after: Option<Duration>,
    write_timeout: Option<Duration>,
) -> Result<ClientSummary, ClientError> {
    let mut summary = ClientSummary::default();
    let mut deadline: Option<Instant> = None;
    loop {
        let event = match deadline {
            None => rx
                .recv()
                .map_err(|_| io::Error::other("copy thread vanished"))?,
            Some(at) => match rx.recv_timeout(at.saturating_duration_since(Instant::now())) {
                Ok(event) => event,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    info!("server still open after --quit-after: leaving");
                    return Ok(summary);
                }
                Err(_) => return Err(io::Error::other("copy thread vanished").into()),
            },
        };
        match event {
            Copied::Up(Ok(n)) => {
                summary.sent = n;
                deadline = quit_after.map(|d| Instant::now() + d);
            }
            Copied::Up(Err(e)) if is_peer_gone(&e) => {
                // The server stopped reading (`bye`); its close decides how this ends.
                info!("server stopped reading our input: {e}");
                deadline = quit_after.map(|d| Instant::now() + d);
            }
            Copied::Up(Err(e)) if Stalled::find(&e).is_some() => return Err(network_error(e)),
            // SO_SNDTIMEO ran out (the blocking TCP pipe).
            Copied::Up(Err(e))
                if e.kind() == io::ErrorKind::WouldBlock && write_timeout.is_some() =>
            {
                return Err(ClientError::WriteStalled {
                    secs: write_timeout.unwrap_or_default().as_secs_f64(),
                });
            }
            Copied::Up(Err(e)) => return Err(ClientError::Input(e)),
            Copied::Down(Ok(n)) => {
                summary.received = n;
                info!("server closed the connection after sending {n} bytes");
                return Ok(summary);
            }
            Copied::Down(Err((e, Side::Output))) if e.kind() == io::ErrorKind::BrokenPipe => {
                debug!("output closed: stopping");
                return Ok(summary);
            }
            Copied::Down(Err((e, Side::Output))) => return Err(ClientError::Output(e)),
            Copied::Down(Err((e, Side::Network))) => return Err(network_error(e)),
        }
    }
}

/// Copies the server's bytes to `output` as they arrive; tells which side failed.
fn copy_down<W: Write + AsFd>(
    src: &mut std::net::TcpStream,
    output: &mut W,
) -> Result<u64, (io::Error, Side)> {
    if is_fifo(output) {
        // splice(2): no copy through user space. Which side failed is told by the error:
        // reading a socket never gives EPIPE, writing a pipe never gives ECONNRESET.
        return io::copy(src, output).map_err(|e| {
            let side = if is_reset(&e) || e.kind() == io::ErrorKind::TimedOut {
                Side::Network
            } else {
                Side::Output
            };
            (e, side)
        });
    }
    // No splice into a file or terminal: our own loop with a larger buffer than io::copy's,
    // writing each chunk as soon as it arrives.
    let mut buf = vec![0u8; PIPE_CHUNK];
    let mut total = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err((e, Side::Network)),
        };
        output
            .write_all(&buf[..n])
            .and_then(|()| output.flush())
            .map_err(|e| (e, Side::Output))?;
        total += n as u64;
    }
}

fn is_fifo<F: AsFd>(f: &F) -> bool {
    use std::os::unix::fs::FileTypeExt;
    f.as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|file| file.metadata())
        .is_ok_and(|m| m.file_type().is_fifo())
}

// ---------------------------------------------------------------------------------------------
// Messages and lines.

/// Connects to the first of `addrs` that answers and runs `input` against it, printing every
/// message from the server to `output`, one per line.
pub async fn run<W>(
    addrs: &[SocketAddr],
    config: &ClientConfig,
    input: Input,
    output: W,
) -> Result<ClientSummary, ClientError>
where
    W: AsyncWrite + Send + Unpin + 'static,
{
    let input = InputSource::start(input, config.limits.max_frame, config.framing);
    match config.transport {
        Transport::Tcp | Transport::Rudp if input.mode == LineMode::Stream => {
            run_stream(addrs, config, input, output).await
        }
        Transport::Tcp | Transport::Rudp => run_lockstep(addrs, config, input, output).await,
        Transport::Udp => run_udp(addrs, config, input, output).await,
    }
}

/// A line from the reader thread, holding its share of the queue's byte allowance.
type QueuedLine = (Bytes, OwnedSemaphorePermit);

/// Input messages, delivered from a reader thread where needed.
struct InputSource {
    messages: std::vec::IntoIter<Bytes>,
    lines: Option<mpsc::Receiver<Result<QueuedLine, ClientError>>>,
    /// Messages for `-m`, else the line mode.
    mode: LineMode,
    /// How many messages in all, when known.
    total: Option<u64>,
    /// Raw framing: an empty line would send nothing, so it is skipped.
    skip_empty: bool,
}

impl InputSource {
    fn start(input: Input, max: usize, framing: Framing) -> Self {
        match input {
            Input::Messages(messages) => InputSource {
                total: Some(messages.len() as u64),
                messages: messages.into_iter(),
                lines: None,
                mode: LineMode::WaitReply,
                skip_empty: false,
            },
            Input::Lines { reader, mode } => {
                let max = max_line_for(framing, max);
                let (tx, rx) = mpsc::channel(LINE_QUEUE);
                // At most LINE_QUEUE lines and LINE_QUEUE_BYTES of them wait (one line alone
                // when it is larger), so megabyte lines do not multiply memory.
                let room = Arc::new(Semaphore::new(LINE_QUEUE_BYTES));
                let runtime = tokio::runtime::Handle::current();
                // A plain thread, not spawn_blocking: a read blocked on a terminal must not
                // keep the runtime from shutting down once the server has gone.
                std::thread::spawn(move || read_lines(reader, max, framing, tx, room, runtime));
                InputSource {
                    messages: Vec::new().into_iter(),
                    lines: Some(rx),
                    mode,
                    total: None,
                    skip_empty: !framing.is_delimited(),
                }
            }
        }
    }

    /// The next message to send; `None` when the input is over.
    async fn next(&mut self) -> Result<Option<Bytes>, ClientError> {
        match &mut self.lines {
            None => Ok(self.messages.next()),
            Some(rx) => loop {
                let next = rx.recv().await.map(|r| r.map(|(line, _room)| line));
                match next {
                    None => return Ok(None),
                    Some(Ok(line)) if self.mode == LineMode::Interactive => {
                        return Ok((!line.trim_ascii().is_empty()).then_some(line));
                    }
                    // Raw framing cannot send an empty message: nothing would go out.
                    Some(Ok(line)) if line.is_empty() && self.skip_empty => continue,
                    Some(Ok(line)) => return Ok(Some(line)),
                    Some(Err(e)) => return Err(e),
                }
            },
        }
    }
}

/// The longest line that fits one message of `framing`, bounded by `max`.
fn max_line_for(framing: Framing, max: usize) -> u64 {
    let max = max as u64;
    match framing {
        Framing::Length { prefix, .. } => max.min(prefix.max_len()),
        _ => max,
    }
}

fn read_lines(
    mut reader: Box<dyn BufRead + Send>,
    max: u64,
    framing: Framing,
    tx: mpsc::Sender<Result<QueuedLine, ClientError>>,
    room: Arc<Semaphore>,
    runtime: tokio::runtime::Handle,
) {
    let mut number = 0u64;
    loop {
        number += 1;
        let mut line = Vec::new();
        // Bounded: a line without end must not grow without end. Room for `\r\n` past `max`.
        let read = (&mut reader)
            .take(max.saturating_add(2))
            .read_until(b'\n', &mut line);
        match read {
            Ok(0) => return,
            Ok(_) => {
                let ended = line.last() == Some(&b'\n');
                if ended {
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                }
                let item = if line.len() as u64 > max {
                    Err(ClientError::LineTooLong {
                        line: number,
                        framing,
                        max,
                    })
                } else {
                    let share = line.len().clamp(1, LINE_QUEUE_BYTES) as u32;
                    let Ok(permit) = runtime.block_on(room.clone().acquire_many_owned(share))
                    else {
                        return;
                    };
                    Ok((Bytes::from(line), permit))
                };
                let stop = item.is_err();
                if tx.blocking_send(item).is_err() || stop {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(ClientError::Input(e)));
                return;
            }
        }
    }
}

/// Writes one message on its own line (a newline added unless it ends with one).
async fn print_message<W: AsyncWrite + Unpin>(out: &mut W, msg: &Message) -> io::Result<()> {
    let body = msg.body();
    out.write_all(body).await?;
    if body.last() != Some(&b'\n') {
        out.write_all(b"\n").await?;
    }
    Ok(())
}

/// What the printer task has done so far.
#[derive(Clone, Debug, Default)]
struct Seen {
    printed: u64,
    /// The last message printed, if it looked like a server's `error: …` notice.
    notice: Option<Bytes>,
    /// The server's side is over (closed, reset or bad data).
    ended: bool,
    /// The output was closed: nobody is reading any more.
    output_closed: bool,
}

/// Why a printer task stopped early.
enum Stop {
    Output(io::Error),
    Server(ClientError),
}

/// A printer task's handle: what it has printed, and how it ended.
struct Printer {
    seen: watch::Receiver<Seen>,
    task: Option<JoinHandle<Result<(), ClientError>>>,
}

/// Why waiting for a reply stopped.
enum Wait {
    Replied,
    TimedOut,
    /// The server's side ended (or the printer stopped).
    Ended,
    OutputClosed,
}

impl Printer {
    /// `flush_each`: a message counts as printed only once flushed, so that whoever waits
    /// for it (a prompt, the next `-m`) comes after it on the screen; otherwise output is
    /// flushed when no more messages are ready.
    fn spawn<W, S>(output: W, mut messages: S, flush_each: bool) -> Printer
    where
        W: AsyncWrite + Send + Unpin + 'static,
        S: Stream<Item = Result<Message, ClientError>> + Send + Unpin + 'static,
    {
        let (seen_tx, seen) = watch::channel(Seen::default());
        // Buffered: tokio's stdout hands every write to a blocking thread, and two writes a
        // message (body, newline) made 100,000 replies take seconds.
        let mut output = tokio::io::BufWriter::with_capacity(PIPE_CHUNK, output);
        let task = tokio::spawn(async move {
            // With `flush_each`, the messages that arrived together (the lines of one
            // multi-line reply) are published as one: whoever waits for a reply wakes once the
            // whole of it is on the screen, and the rest is not taken for the next reply.
            let mut unpublished: u64 = 0;
            let mut notice: Option<Bytes> = None;
            let publish = |unpublished: &mut u64, notice: &mut Option<Bytes>| {
                if *unpublished > 0 {
                    let n = std::mem::take(unpublished);
                    let last_notice = notice.take();
                    seen_tx.send_modify(|s| {
                        s.printed += n;
                        s.notice = last_notice;
                    });
                }
            };
            let result = async {
                loop {
                    // Flush only when nothing more is ready: one write per burst of replies.
                    let next = match messages.next().now_or_never() {
                        Some(next) => next,
                        None => {
                            output.flush().await.map_err(Stop::Output)?;
                            publish(&mut unpublished, &mut notice);
                            messages.next().await
                        }
                    };
                    let msg = match next {
                        None => return Ok(()),
                        Some(Ok(msg)) => msg,
                        Some(Err(e)) => return Err(Stop::Server(e)),
                    };
                    print_message(&mut output, &msg)
                        .await
                        .map_err(Stop::Output)?;
                    unpublished += 1;
                    notice = msg
                        .body()
                        .starts_with(b"error:")
                        .then(|| msg.body().clone());
                    if !flush_each {
                        publish(&mut unpublished, &mut notice);
                    }
                }
            }
            .await;
            let flushed = output.flush().await;
            if flushed.is_ok() {
                publish(&mut unpublished, &mut notice);
            }
            let result = match result {
                Ok(()) => Ok(()),
                Err(Stop::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => {
                    seen_tx.send_modify(|s| s.output_closed = true);
                    Ok(())
                }
                Err(Stop::Output(e)) => Err(ClientError::Output(e)),
                Err(Stop::Server(e)) => Err(e),
            };
            seen_tx.send_modify(|s| s.ended = true);
            result
        });
        Printer {
            seen,
            task: Some(task),
        }
    }

    fn printed(&self) -> u64 {
        self.seen.borrow().printed
    }

    /// Waits until more than `before` messages have been printed, or the end.
    async fn wait_past(&mut self, before: u64, limit: Duration) -> Wait {
        let waited = tokio::time::timeout(
            limit,
            self.seen
                .wait_for(|s| s.printed > before || s.ended || s.output_closed),
        )
        .await;
        match waited {
            Ok(Ok(s)) if s.output_closed => Wait::OutputClosed,
            Ok(Ok(s)) if s.printed > before => Wait::Replied,
            Ok(_) => Wait::Ended,
            Err(_) => Wait::TimedOut,
        }
    }

    /// Waits at most `limit` for the server's side to end; true if it did.
    async fn wait_end(&mut self, limit: Option<Duration>) -> bool {
        let ended = self.seen.wait_for(|s| s.ended);
        match limit {
            Some(limit) => tokio::time::timeout(limit, ended).await.is_ok(),
            None => {
                let _ = ended.await;
                true
            }
        }
    }

    /// The printer's own error, once it has ended; `Ok` if it has not.
    async fn outcome(&mut self) -> Result<(), ClientError> {
        let Some(task) = self.task.take_if(|t| t.is_finished()) else {
            return Ok(());
        };
        match task.await {
            Ok(result) => result,
            Err(e) => Err(io::Error::other(e).into()),
        }
    }

    /// Why the server's side ended before a reply: its own error, an error notice, or a close.
    async fn ended_error(&mut self, message: u64, total: u64) -> ClientError {
        if let Err(e) = self.outcome().await {
            return e;
        }
        if let Some(notice) = self.seen.borrow().notice.clone() {
            return notice_error(&notice);
        }
        ClientError::ClosedBeforeReply { message, total }
    }

    fn output_closed(&self) -> bool {
        self.seen.borrow().output_closed
    }
}

impl Drop for Printer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

fn notice_error(notice: &[u8]) -> ClientError {
    ClientError::ServerError {
        notice: String::from_utf8_lossy(notice).trim_end().to_owned(),
    }
}

/// The reading half of a stream connection (TCP, unix, layered).
type BoxRead = Box<dyn tokio::io::AsyncRead + Send + Unpin>;
/// The writing half of a stream connection.
type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// Where a connection's messages go: a TCP stream through the framing, or a rudp connection
/// (its own task) one message per message.
enum Writer {
    Tcp(FramedWrite<BoxWrite, FrameCodec>),
    Rudp(tokio_util::sync::PollSender<Bytes>),
}

impl<'a> futures_util::Sink<&'a Message> for Writer {
    type Error = CodecError;

    fn poll_ready(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), CodecError>> {
        match self.get_mut() {
            Writer::Tcp(w) => std::pin::Pin::new(w).poll_ready(cx),
            Writer::Rudp(tx) => tx.poll_reserve(cx).map_err(|_| closed_error()),
        }
    }

    fn start_send(self: std::pin::Pin<&mut Self>, msg: &'a Message) -> Result<(), CodecError> {
        match self.get_mut() {
            Writer::Tcp(w) => std::pin::Pin::new(w).start_send(msg),
            Writer::Rudp(tx) => tx.send_item(msg.body().clone()).map_err(|_| closed_error()),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), CodecError>> {
        match self.get_mut() {
            Writer::Tcp(w) => std::pin::Pin::new(w).poll_flush(cx),
            Writer::Rudp(_) => std::task::Poll::Ready(Ok(())),
        }
    }

    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), CodecError>> {
        match self.get_mut() {
            Writer::Tcp(w) => std::pin::Pin::new(w).poll_close(cx),
            Writer::Rudp(tx) => {
                tx.close();
                std::task::Poll::Ready(Ok(()))
            }
        }
    }
}

fn closed_error() -> CodecError {
    CodecError::Io(io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the connection closed",
    ))
}

/// Connects over rudp; a task owns the connection, taking messages to send from the returned
/// writer and handing what arrives to the printer. Closing the writer closes the connection
/// gracefully; the printer's stream ends when the server has closed too.
async fn connect_rudp<W>(
    addrs: &[SocketAddr],
    config: &ClientConfig,
    output: W,
    flush_each: bool,
) -> Result<(Writer, Printer, String), ClientError>
where
    W: AsyncWrite + Send + Unpin + 'static,
{
    let addr = addrs.first().copied().ok_or_else(|| {
        ClientError::Io(io::Error::new(io::ErrorKind::InvalidInput, "no address"))
    })?;
    debug!("connecting to rudp {addr}");
    let connecting = crate::transport::rudp::connect(addr, config.rudp.clone());
    let mut conn = match tokio::time::timeout(config.timeout, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(error)) => return Err(ClientError::Connect { addr, error }),
        Err(_) => {
            return Err(ClientError::ConnectTimeout {
                addr,
                secs: config.timeout.as_secs_f64(),
            });
        }
    };
    info!("connected to rudp {addr}");
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(LINE_QUEUE);
    let (in_tx, in_rx) = mpsc::channel::<Result<Message, ClientError>>(LINE_QUEUE);
    tokio::spawn(async move {
        let mut sending = true;
        loop {
            tokio::select! {
                next = out_rx.recv(), if sending => match next {
                    Some(msg) => {
                        if conn.send(msg).await.is_err() {
                            break;
                        }
                    }
                    None => {
                        conn.close();
                        sending = false;
                    }
                },
                got = conn.recv() => match got {
                    Some(body) => {
                        if in_tx.send(Ok(Message::new(body))).await.is_err() {
                            break;
                        }
                    }
                    None => {
                        use crate::rudp::CloseReason;
                        match conn.close_reason() {
                            Some(CloseReason::Local | CloseReason::Peer) | None => {}
                            Some(other) => {
                                let e = io::Error::other(format!("rudp connection {other}"));
                                let _ = in_tx.send(Err(ClientError::Io(e))).await;
                            }
                        }
                        break;
                    }
                },
            }
        }
    });
    let messages =
        futures_util::stream::unfold(
            in_rx,
            |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
        );
    let printer = Printer::spawn(output, Box::pin(messages), flush_each);
    Ok((
        Writer::Rudp(tokio_util::sync::PollSender::new(out_tx)),
        printer,
        addr.to_string(),
    ))
}

/// Connects and splits the stream into a frame writer and a printer of frames.
async fn connect_framed<W>(
    addrs: &[SocketAddr],
    config: &ClientConfig,
    output: W,
    flush_each: bool,
) -> Result<(Writer, Printer, String), ClientError>
where
    W: AsyncWrite + Send + Unpin + 'static,
{
    if config.transport == Transport::Rudp {
        return connect_rudp(addrs, config, output, flush_each).await;
    }
    let limit = config.write_timeout;
    let (rd, wr, addr): (BoxRead, BoxWrite, String) = if config.dial.is_plain() {
        let (stream, addr) = connect_tcp(addrs, config.timeout).await?;
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        (
            Box::new(rd),
            Box::new(WriteStall::new(wr, limit)),
            addr.to_string(),
        )
    } else {
        let (stream, _) = config.dial.connect(addrs, config.timeout).await?;
        let target = config.dial.describe(addrs);
        info!("connected to {target}");
        let (rd, wr) = tokio::io::split(stream);
        (Box::new(rd), Box::new(WriteStall::new(wr, limit)), target)
    };
    let writer = FramedWrite::new(wr, FrameCodec::new(config.framing, config.limits));
    let reader = FramedRead::new(rd, FrameCodec::new(config.framing, config.limits));
    let printer = Printer::spawn(
        output,
        reader.map(|r| r.map_err(ClientError::from)),
        flush_each,
    );
    Ok((Writer::Tcp(writer), printer, addr))
}

/// One message at a time: `-m`, `--wait-reply` and terminal sessions.
async fn run_lockstep<W>(
    addrs: &[SocketAddr],
    config: &ClientConfig,
    mut input: InputSource,
    output: W,
) -> Result<ClientSummary, ClientError>
where
    W: AsyncWrite + Send + Unpin + 'static,
{
    let interactive = input.mode == LineMode::Interactive;
    let connecting = std::time::Instant::now();
    let (mut writer, mut printer, addr) = connect_framed(addrs, config, output, true).await?;
    let mut summary = ClientSummary::default();
    let mut ended = false;
    // A server that greets (the hub, a login prompt) speaks first: print its greeting before
    // sending anything, so it is not taken for the reply to the first message.
    let window = (connecting.elapsed() * 4).clamp(GREETING_WAIT, config.timeout.max(GREETING_WAIT));
    if let Wait::Replied = printer.wait_past(0, window).await {
        debug!("greeted by the server");
    }

    loop {
        if interactive {
            note("> ");
        }
        // Input first: a message that is ready is sent (and its missing reply reported) even
        // if the server has just closed; only waiting on input ends with the server.
        let next = tokio::select! {
            biased;
            next = input.next() => next?,
            _ = printer.seen.wait_for(|s| s.ended || s.output_closed) => {
                ended = true;
                break;
            }
        };
        let Some(body) = next else { break };
        let msg = Message::new(body);
        let quit = msg.is_quit_word();
        let number = summary.sent + 1;
        let total = input.total.unwrap_or(number);
        let before = printer.printed();
        if let Err(e) = writer.send(&msg).await {
            debug!("sending message {number} failed: {e}");
            if is_stalled(&e) {
                return Err(e.into());
            }
            // The server has closed; what it said last decides the outcome.
            printer.wait_end(Some(config.timeout)).await;
            if interactive {
                ended = true;
                break;
            }
            return Err(printer.ended_error(number, total).await);
        }
        summary.sent += 1;
        let limit = if interactive && !quit {
            config.timeout.min(PROMPT_WAIT)
        } else {
            config.timeout
        };
        match printer.wait_past(before, limit).await {
            Wait::Replied => {
                if printer.seen.borrow().notice.is_some()
                    && printer.wait_end(Some(NOTICE_GRACE)).await
                {
                    // An `error: …` followed by a close is the server giving up on us.
                    return Err(printer.ended_error(number, total).await);
                }
            }
            Wait::OutputClosed => return Ok(summary),
            Wait::Ended if interactive => {
                ended = true;
                break;
            }
            Wait::Ended => return Err(printer.ended_error(number, total).await),
            Wait::TimedOut if interactive => {}
            Wait::TimedOut => {
                return Err(ClientError::NoReply {
                    addr,
                    secs: config.timeout.as_secs_f64(),
                });
            }
        }
        if quit {
            break;
        }
    }
    if printer.output_closed() {
        return Ok(summary);
    }
    if !ended {
        if let Err(e) = writer.close().await
            && is_stalled(&e)
        {
            return Err(e.into());
        }
        debug!("input over: half-closed, waiting for the server to finish");
        // Keep printing until the server closes or stays quiet for the timeout.
        loop {
            let before = printer.printed();
            match printer
                .wait_past(before, config.quit_after.unwrap_or(config.timeout))
                .await
            {
                Wait::Replied => continue,
                _ => break,
            }
        }
    }
    if printer.seen.borrow().ended {
        let notice = printer.seen.borrow().notice.clone();
        match printer.outcome().await {
            Err(e @ ClientError::Output(_)) => return Err(e),
            Err(e) if interactive => return Err(e),
            Err(e) => debug!("after the last reply: {e}"),
            Ok(()) => {}
        }
        if let (true, Some(notice)) = (interactive, notice) {
            return Err(notice_error(&notice));
        }
    }
    summary.received = printer.printed();
    Ok(summary)
}

/// Piped lines with a delimiting framing: every line one frame, replies streamed.
async fn run_stream<W>(
    addrs: &[SocketAddr],
    config: &ClientConfig,
    mut input: InputSource,
    output: W,
) -> Result<ClientSummary, ClientError>
where
    W: AsyncWrite + Send + Unpin + 'static,
{
    let (mut writer, mut printer, _addr) = connect_framed(addrs, config, output, false).await?;
    let mut summary = ClientSummary::default();
    let mut server_gone = false;
    loop {
        // Flush only when the input has nothing more ready.
        let next = match input.next().now_or_never() {
            Some(next) => next?,
            None => {
                if let Err(e) = writer.flush().await {
                    if is_stalled(&e) {
                        return Err(e.into());
                    }
                    server_gone = true;
                    break;
                }
                tokio::select! {
                    biased;
                    next = input.next() => next?,
                    _ = printer.seen.wait_for(|s| s.ended || s.output_closed) => break,
                }
            }
        };
        let Some(body) = next else { break };
        let msg = Message::new(body);
        if let Err(e) = writer.feed(&msg).await {
            if is_stalled(&e) {
                return Err(e.into());
            }
            server_gone = true;
            break;
        }
        summary.sent += 1;
        if msg.is_quit_word() {
            break;
        }
    }
    if !server_gone && config.transport == Transport::Rudp {
        // rudp has no half-close: closing ends both directions, so the replies still on
        // their way are waited for first: each within the timeout while fewer messages than
        // were sent have come back, then until the server is quiet for a moment (a greeting
        // counts among the messages printed).
        let _ = writer.flush().await;
        loop {
            let before = printer.printed();
            let limit = if before < summary.sent {
                config.timeout
            } else {
                NOTICE_GRACE
            };
            match printer.wait_past(before, limit).await {
                Wait::Replied => continue,
                _ => break,
            }
        }
    }
    if !server_gone {
        if let Err(e) = writer.close().await
            && is_stalled(&e)
        {
            return Err(e.into());
        }
        info!("input ended after {} messages: half-closed", summary.sent);
    }
    let closed = printer.wait_end(config.quit_after).await;
    summary.received = printer.printed();
    if printer.output_closed() || !closed {
        return Ok(summary);
    }
    printer.outcome().await?;
    if summary.received < summary.sent {
        if let Some(notice) = printer.seen.borrow().notice.clone() {
            return Err(notice_error(&notice));
        }
        return Err(ClientError::ClosedBeforeReply {
            message: summary.received + 1,
            total: summary.sent,
        });
    }
    Ok(summary)
}

// ---------------------------------------------------------------------------------------------
// UDP.

async fn run_udp<W>(
    addrs: &[SocketAddr],
    config: &ClientConfig,
    mut input: InputSource,
    mut output: W,
) -> Result<ClientSummary, ClientError>
where
    W: AsyncWrite + Send + Unpin + 'static,
{
    let addr = *addrs
        .first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address to send to"))?;
    let local: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    // Connected: only the server's datagrams are accepted, and ICMP "port unreachable"
    // surfaces as an error instead of silence.
    socket.connect(addr).await?;
    info!("sending datagrams to {addr} from {}", socket.local_addr()?);
    let socket = Arc::new(socket);
    let interactive = input.mode == LineMode::Interactive;
    let mut buf = vec![0u8; 65_536];
    let mut summary = ClientSummary::default();

    loop {
        if interactive {
            note("> ");
        }
        let Some(body) = input.next().await? else {
            break;
        };
        let quit = Message::new(body.clone()).is_quit_word();
        let number = summary.sent + 1;
        summary.sent += 1;
        let first_send = tokio::time::Instant::now();
        let mut last_send = first_send;
        let mut sends = 0u32;
        let reply = loop {
            if sends > config.retries {
                break None;
            }
            if sends > 0 {
                debug!(
                    "no reply to message {number}: resending ({sends} of {})",
                    config.retries
                );
            }
            match socket.send(&body).await {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    return Err(ClientError::Refused { addr });
                }
                Err(e) => return Err(e.into()),
            }
            last_send = tokio::time::Instant::now();
            sends += 1;
            match tokio::time::timeout_at(last_send + config.timeout, socket.recv(&mut buf)).await {
                Ok(Ok(n)) => break Some(Bytes::copy_from_slice(&buf[..n])),
                Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    return Err(ClientError::Refused { addr });
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => continue,
            }
        };
        let Some(reply) = reply else {
            let secs = (config.timeout * (config.retries + 1)).as_secs_f64();
            if interactive {
                note(&format!("sockit: no reply within {secs}s\n"));
                continue;
            }
            return Err(ClientError::NoReply {
                addr: addr.to_string(),
                secs,
            });
        };
        let msg = Message::new(reply);
        let printed = async {
            print_message(&mut output, &msg).await?;
            output.flush().await
        }
        .await;
        match printed {
            Ok(()) => summary.received += 1,
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(summary),
            Err(e) => return Err(ClientError::Output(e)),
        }
        if sends > 1 {
            // The reply may answer any of the sends; the others' replies may still come. The
            // round trip is at most the time since the first send, so a reply to the last
            // resend comes by `last_send + rtt` (plus some slack for jitter).
            let rtt = first_send.elapsed();
            let grace_end = last_send + rtt + rtt / 2 + Duration::from_millis(100);
            debug!("message {number} was resent: watching for duplicate replies");
            while let Ok(Ok(n)) = tokio::time::timeout_at(grace_end, socket.recv(&mut buf)).await {
                let text = String::from_utf8_lossy(&buf[..n]);
                note(&format!(
                    "sockit: duplicate reply to message {number} (from a resend): {}\n",
                    text.trim_end()
                ));
            }
        }
        if quit {
            break;
        }
    }
    Ok(summary)
}
