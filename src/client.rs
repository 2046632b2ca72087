//! The client behind `sockit connect`: send messages or lines, print what comes back.
//!
//! Everything the server sends is printed as it arrives, prompted or not (chat relies on
//! this), by a printer task that counts messages. The sender waits on that count when it needs
//! a reply before going on:
//!
//! - `-m` messages go one at a time, each after the previous reply (`--timeout` each).
//! - Piped lines stream out as fast as they come, like `nc`, except with `raw` framing, where
//!   back-to-back sends would merge into one "sticky" message, so each waits for its reply.
//! - Interactive lines never wait: a chat line may have no reply.
//! - UDP always waits, resending up to `--retries` times.
//!
//! When the input ends the client half-closes the connection and keeps printing until the
//! server closes or stays silent for `--timeout`.

use std::io::{self, BufRead, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, Stream, StreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::codec::{FrameCodec, Framing, Limits, RAW_CHUNK, RawCodec};
use crate::error::CodecError;
use crate::message::Message;
use crate::service::Transport;

/// How the client talks to the server.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// TCP or UDP.
    pub transport: Transport,
    /// Framing for TCP.
    pub framing: Framing,
    /// Limits for decoding the server's messages.
    pub limits: Limits,
    /// Connect timeout, and how long to wait for each reply.
    pub timeout: Duration,
    /// UDP: how many times to resend a message that got no reply.
    pub retries: u32,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            transport: Transport::Tcp,
            framing: Framing::Line,
            limits: Limits::default(),
            timeout: Duration::from_secs(2),
            retries: 2,
        }
    }
}

/// What to send.
pub enum Input {
    /// These messages, one at a time, each after the previous one's reply.
    Messages(Vec<Bytes>),
    /// The lines of a reader (without their line endings).
    Lines {
        /// Where the lines come from; read on a thread of its own.
        reader: Box<dyn BufRead + Send>,
        /// A person is typing: show a prompt, stop at an empty line, never wait for replies.
        interactive: bool,
    },
}

/// Totals of a client run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ClientSummary {
    /// Messages sent (UDP retries not counted).
    pub sent: u64,
    /// Messages received and printed.
    pub received: u64,
}

/// Why a client run failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting failed (refused, unreachable...).
    #[error("cannot connect to {addr}: {error}")]
    Connect {
        /// The address tried last.
        addr: SocketAddr,
        /// What the system said.
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
        addr: SocketAddr,
        /// Total time waited.
        secs: f64,
    },
    /// UDP: the server's host said nothing is listening on that port.
    #[error("no reply from {addr}: connection refused (is anything listening on that port?)")]
    Refused {
        /// The server.
        addr: SocketAddr,
    },
    /// The server's bytes did not follow the framing.
    #[error("bad data from server: {0}")]
    Codec(#[from] CodecError),
    /// Reading input or writing output failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

/// Connects to the first of `addrs` that answers and runs `input` against it, printing every
/// message from the server to `output`.
pub async fn run<W>(
    addrs: &[SocketAddr],
    config: &ClientConfig,
    input: Input,
    output: W,
) -> Result<ClientSummary, ClientError>
where
    W: AsyncWrite + Send + Unpin + 'static,
{
    let lines = InputSource::start(input);
    match config.transport {
        Transport::Tcp => run_tcp(addrs, config, lines, output).await,
        Transport::Udp => run_udp(addrs, config, lines, output).await,
    }
}

/// Input messages, delivered from a reader thread where needed.
struct InputSource {
    messages: std::vec::IntoIter<Bytes>,
    lines: Option<mpsc::Receiver<io::Result<Bytes>>>,
    interactive: bool,
    lockstep: bool,
}

impl InputSource {
    fn start(input: Input) -> Self {
        match input {
            Input::Messages(messages) => InputSource {
                messages: messages.into_iter(),
                lines: None,
                interactive: false,
                lockstep: true,
            },
            Input::Lines {
                reader,
                interactive,
            } => {
                let (tx, rx) = mpsc::channel(64);
                // A plain thread, not spawn_blocking: a read blocked on a terminal must not
                // keep the runtime from shutting down once the server has gone.
                std::thread::spawn(move || read_lines(reader, interactive, tx));
                InputSource {
                    messages: Vec::new().into_iter(),
                    lines: Some(rx),
                    interactive,
                    lockstep: false,
                }
            }
        }
    }

    /// The next message to send; `None` when the input is over.
    async fn next(&mut self) -> Result<Option<Bytes>, ClientError> {
        match &mut self.lines {
            None => Ok(self.messages.next()),
            Some(rx) => match rx.recv().await {
                None => Ok(None),
                Some(Ok(line)) if self.interactive && line.trim_ascii().is_empty() => Ok(None),
                Some(Ok(line)) => Ok(Some(line)),
                Some(Err(e)) => Err(e.into()),
            },
        }
    }
}

fn read_lines(
    mut reader: Box<dyn BufRead + Send>,
    interactive: bool,
    tx: mpsc::Sender<io::Result<Bytes>>,
) {
    loop {
        if interactive {
            let mut err = io::stderr().lock();
            let _ = err.write_all(b"> ");
            let _ = err.flush();
        }
        let mut line = Vec::new();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                }
                if tx.blocking_send(Ok(Bytes::from(line))).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
    }
}

/// Prints one message on its own line.
async fn print_message<W: AsyncWrite + Unpin>(out: &mut W, msg: &Message) -> io::Result<()> {
    let body = msg.body();
    if body.last() == Some(&b'\n') {
        out.write_all(body).await?;
    } else {
        let mut line = Vec::with_capacity(body.len() + 1);
        line.extend_from_slice(body);
        line.push(b'\n');
        out.write_all(&line).await?;
    }
    out.flush().await
}

/// A printer task's handle: how many messages it has printed, and how it ended.
struct Printer {
    seen: watch::Receiver<u64>,
    task: JoinHandle<Result<(), ClientError>>,
}

/// Why waiting for a reply stopped.
enum Wait {
    Replied,
    TimedOut,
    /// The server closed the connection (or the printer stopped).
    Closed,
}

impl Printer {
    fn spawn<W, S>(mut output: W, mut messages: S) -> Printer
    where
        W: AsyncWrite + Send + Unpin + 'static,
        S: Stream<Item = Result<Message, ClientError>> + Send + Unpin + 'static,
    {
        let (seen_tx, seen) = watch::channel(0u64);
        let task = tokio::spawn(async move {
            while let Some(msg) = messages.next().await {
                let msg = msg?;
                match print_message(&mut output, &msg).await {
                    Ok(()) => {}
                    // Output closed (`| head`): stop printing quietly.
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
                seen_tx.send_modify(|n| *n += 1);
            }
            Ok(())
        });
        Printer { seen, task }
    }

    fn count(&self) -> u64 {
        *self.seen.borrow()
    }

    /// Waits until more than `before` messages have been printed.
    async fn wait_past(&mut self, before: u64, limit: Duration) -> Wait {
        match tokio::time::timeout(limit, self.seen.wait_for(|n| *n > before)).await {
            Ok(Ok(_)) => Wait::Replied,
            Ok(Err(_)) => Wait::Closed,
            Err(_) => Wait::TimedOut,
        }
    }

    /// Resolves when the printer has stopped (the server closed the connection).
    async fn closed(seen: &mut watch::Receiver<u64>) {
        while seen.changed().await.is_ok() {}
    }

    /// Keeps printing until the server closes or stays silent for `quiet`; returns the count
    /// and the printer's own error, if it failed.
    async fn finish(mut self, quiet: Duration) -> Result<u64, ClientError> {
        while let Ok(Ok(())) = tokio::time::timeout(quiet, self.seen.changed()).await {}
        let count = self.count();
        if self.task.is_finished() {
            match self.task.await {
                Ok(result) => result?,
                Err(e) => return Err(io::Error::other(e).into()),
            }
        } else {
            self.task.abort();
        }
        Ok(count)
    }
}

async fn connect_tcp(
    addrs: &[SocketAddr],
    limit: Duration,
) -> Result<(TcpStream, SocketAddr), ClientError> {
    let mut last = None;
    for &addr in addrs {
        match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok((stream, addr)),
            Ok(Err(error)) => last = Some(ClientError::Connect { addr, error }),
            Err(_) => {
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

async fn run_tcp<W>(
    addrs: &[SocketAddr],
    config: &ClientConfig,
    mut input: InputSource,
    output: W,
) -> Result<ClientSummary, ClientError>
where
    W: AsyncWrite + Send + Unpin + 'static,
{
    let (stream, addr) = connect_tcp(addrs, config.timeout).await?;
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let mut writer = FramedWrite::new(wr, FrameCodec::new(config.framing, config.limits));
    let reader = FramedRead::new(rd, FrameCodec::new(config.framing, config.limits));
    let mut printer = Printer::spawn(output, reader.map(|r| r.map_err(ClientError::from)));
    let lockstep = input.lockstep || (config.framing == Framing::Raw && !input.interactive);
    let mut closed_watch = printer.seen.clone();
    let mut summary = ClientSummary::default();

    loop {
        let next = tokio::select! {
            next = input.next() => next?,
            () = Printer::closed(&mut closed_watch) => break,
        };
        let Some(body) = next else { break };
        let msg = Message::new(body);
        let quit = msg.is_quit_word();
        let before = printer.count();
        if writer.send(&msg).await.is_err() {
            // The server has closed; what it said is printed below.
            break;
        }
        summary.sent += 1;
        if lockstep || quit {
            match printer.wait_past(before, config.timeout).await {
                Wait::Replied => {}
                Wait::Closed => break,
                Wait::TimedOut => {
                    return Err(ClientError::NoReply {
                        addr,
                        secs: config.timeout.as_secs_f64(),
                    });
                }
            }
        }
        if quit {
            break;
        }
    }
    let _ = writer.close().await;
    summary.received = printer.finish(config.timeout).await?;
    Ok(summary)
}

async fn run_udp<W>(
    addrs: &[SocketAddr],
    config: &ClientConfig,
    mut input: InputSource,
    output: W,
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
    let socket = Arc::new(socket);
    let datagrams = futures_util::stream::unfold(
        (socket.clone(), vec![0u8; 65_536]),
        move |(receiver, mut buf)| async move {
            let item = match receiver.recv(&mut buf).await {
                Ok(n) => Ok(Message::new(Bytes::copy_from_slice(&buf[..n]))),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    Err(ClientError::Refused { addr })
                }
                Err(e) => Err(e.into()),
            };
            Some((item, (receiver, buf)))
        },
    );
    let mut printer = Printer::spawn(output, Box::pin(datagrams));
    let mut codec = RawCodec::new(RAW_CHUNK);
    let mut summary = ClientSummary::default();
    let mut wbuf = bytes::BytesMut::new();

    while let Some(body) = input.next().await? {
        let msg = Message::new(body);
        wbuf.clear();
        tokio_util::codec::Encoder::encode(&mut codec, &msg, &mut wbuf)?;
        let before = printer.count();
        let mut replied = false;
        for _ in 0..=config.retries {
            match socket.send(&wbuf).await {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    return Err(ClientError::Refused { addr });
                }
                Err(e) => return Err(e.into()),
            }
            match printer.wait_past(before, config.timeout).await {
                Wait::Replied => {
                    replied = true;
                    break;
                }
                Wait::TimedOut => continue,
                Wait::Closed => break,
            }
        }
        summary.sent += 1;
        if !replied {
            // A refusal or output error ended the printer: report that rather than silence.
            if printer.task.is_finished() {
                printer.finish(Duration::ZERO).await?;
            }
            return Err(ClientError::NoReply {
                addr,
                secs: config.timeout.as_secs_f64() * f64::from(config.retries + 1),
            });
        }
        if msg.is_quit_word() {
            break;
        }
    }
    summary.received = printer.count();
    printer.task.abort();
    Ok(summary)
}
