//! Running a program per connection: `--exec 'PROG ARGS…'` and `--sh-exec 'CMD'`.
//!
//! The program gets the connection on its stdin and stdout, so anything that reads and writes
//! standard streams becomes a network service (or, with `sockit connect --exec`, a client).
//! Framing, services and quit words do not apply: the bytes go through untouched.
//!
//! - `--exec` splits its one argument into words the way a shell would (single and double
//!   quotes, backslash escapes) but runs no shell: no globbing, no variables, no pipes.
//!   `--sh-exec` hands its argument to `/bin/sh -c` for all of those.
//! - The child's environment carries the connection's addresses, under sockit's names and the
//!   ucspi-tcp names (`SOCKIT_PEER_ADDR`, `TCPREMOTEIP`, …; see [`ExecEnv`]).
//! - What the peer sends goes to the child's stdin; when the peer half-closes, the child's
//!   stdin is closed (it reads end of file). What the child writes to stdout goes to the peer;
//!   when the child closes its stdout (normally by exiting) the output is flushed and the
//!   connection closed.
//! - Each line the child writes to stderr is logged, prefixed with the connection id.
//! - The child runs in a process group of its own. When the connection ends first (the peer
//!   went away, the server shuts down) the whole group gets `SIGTERM`, then `SIGKILL` after
//!   [`KILL_GRACE`]; the child is always reaped and its exit status logged.
//! - Memory per connection is fixed: one buffer each way and one for stderr lines.

use std::ffi::OsString;
use std::fmt;
use std::future::Future;
use std::io;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::{Child, ChildStderr, Command};

use tracing::{debug, info, warn};

use crate::message::Message;
use crate::net::PeerAddr;
use crate::service::{Outbox, PeerInfo, Service, Session, StreamContext, StreamHandler};
use crate::transport::stream::BoxStream;
use crate::transport::tcp::{CloseReason, ConnReport};

/// Bytes copied per read in each direction.
const COPY_BUFFER: usize = 16 * 1024;
/// A stderr line longer than this is logged in pieces of this size.
const STDERR_LINE: usize = 2048;
/// How long a child has between `SIGTERM` and `SIGKILL`.
pub const KILL_GRACE: Duration = Duration::from_millis(500);
/// After the child closes its output, how long it has to exit by itself before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(1);
/// After the connection's output is closed, how long to keep reading (and discarding) what the
/// peer still sends, so that closing with unread input does not reset the connection and
/// destroy the last output before the peer reads it.
const LINGER: Duration = Duration::from_millis(500);
/// How long a stderr reader may run on after the child is reaped (a detached grandchild can
/// hold stderr open forever).
const STDERR_GRACE: Duration = Duration::from_millis(200);

/// An error in an `--exec` command line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecParseError {
    /// Nothing but blanks.
    #[error("--exec needs a program to run")]
    Empty,
    /// A quote opened and never closed.
    #[error("unterminated {0} quote in --exec command (use --sh-exec for shell syntax)")]
    Unterminated(&'static str),
    /// A backslash at the very end.
    #[error("--exec command ends in a lone backslash")]
    TrailingBackslash,
}

/// Splits a command line into words like a POSIX shell, without expanding anything:
/// blanks separate words; `'…'` is literal; inside `"…"` a backslash escapes only `"`, `\`,
/// `$`, `` ` `` and a newline; elsewhere a backslash makes the next character literal. `''`
/// is an empty word.
pub fn split_words(line: &str) -> Result<Vec<String>, ExecParseError> {
    let mut words = Vec::new();
    let mut word = String::new();
    // Whether a word has started (so `''` yields an empty word).
    let mut started = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' | '\r' => {
                if started {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            '\'' => {
                started = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(ExecParseError::Unterminated("single")),
                    }
                }
            }
            '"' => {
                started = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('\n') => {}
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(ExecParseError::Unterminated("double")),
                        },
                        Some(c) => word.push(c),
                        None => return Err(ExecParseError::Unterminated("double")),
                    }
                }
            }
            '\\' => match chars.next() {
                // A backslash-newline joins lines.
                Some('\n') => {}
                Some(c) => {
                    started = true;
                    word.push(c);
                }
                None => return Err(ExecParseError::TrailingBackslash),
            },
            c => {
                started = true;
                word.push(c);
            }
        }
    }
    if started {
        words.push(word);
    }
    Ok(words)
}

/// The program to run for each connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecCommand {
    program: String,
    args: Vec<String>,
    /// What the user typed, for logs and the banner.
    display: String,
    /// The child writes to sockit's own stderr instead of the log.
    inherit_stderr: bool,
}

impl ExecCommand {
    /// `--exec LINE`: the first word is the program (looked up in `PATH`), the rest are its
    /// arguments; see [`split_words`].
    pub fn words(line: &str) -> Result<ExecCommand, ExecParseError> {
        let mut words = split_words(line)?.into_iter();
        let program = words.next().ok_or(ExecParseError::Empty)?;
        if program.is_empty() {
            return Err(ExecParseError::Empty);
        }
        Ok(ExecCommand {
            program,
            args: words.collect(),
            display: line.trim().to_owned(),
            inherit_stderr: false,
        })
    }

    /// `--sh-exec CMD`: `/bin/sh -c CMD`.
    pub fn shell(cmd: &str) -> Result<ExecCommand, ExecParseError> {
        if cmd.trim().is_empty() {
            return Err(ExecParseError::Empty);
        }
        Ok(ExecCommand {
            program: "/bin/sh".to_owned(),
            args: vec!["-c".to_owned(), cmd.to_owned()],
            display: cmd.trim().to_owned(),
            inherit_stderr: false,
        })
    }

    /// Lets the child write to sockit's own stderr instead of logging its lines (for
    /// `sockit connect --exec`, where the user is watching).
    pub fn inherit_stderr(mut self) -> ExecCommand {
        self.inherit_stderr = true;
        self
    }

    /// The program run.
    pub fn program(&self) -> &str {
        &self.program
    }

    /// Its arguments.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Spawns the program with piped stdin, stdout and stderr, in a process group of its own,
    /// with `env` set.
    pub fn spawn(&self, env: &ExecEnv) -> io::Result<Child> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(if self.inherit_stderr {
                Stdio::inherit()
            } else {
                Stdio::piped()
            })
            .kill_on_drop(true)
            .process_group(0);
        for (key, value) in env.vars() {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        cmd.spawn()
    }
}

impl fmt::Display for ExecCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display)
    }
}

/// The transport a child's connection runs over, as `SOCKIT_PROTO` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecProto {
    /// TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
    /// A unix stream socket.
    Unix,
}

impl ExecProto {
    /// `tcp`, `tls` or `unix`.
    pub fn name(self) -> &'static str {
        match self {
            ExecProto::Tcp => "tcp",
            ExecProto::Tls => "tls",
            ExecProto::Unix => "unix",
        }
    }
}

/// Who a child is talking to, put into its environment.
///
/// | variable | TCP / TLS | unix |
/// |---|---|---|
/// | `SOCKIT_PROTO` | `tcp` / `tls` | `unix` |
/// | `SOCKIT_PEER_ADDR`, `SOCKIT_PEER_PORT` | peer IP, port | peer path (if bound), unset |
/// | `SOCKIT_LOCAL_ADDR`, `SOCKIT_LOCAL_PORT` | local IP, port | socket path, unset |
/// | `SOCKIT_CONN_ID` | connection number | connection number |
/// | `PROTO` | `TCP` | `UNIX` |
/// | `TCPREMOTEIP`, `TCPREMOTEPORT`, `TCPLOCALIP`, `TCPLOCALPORT` | as above | unset |
///
/// A variable that does not apply is removed, so a value inherited from whatever started
/// sockit never reaches the child.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecEnv {
    /// The transport.
    pub proto: ExecProto,
    /// The far end.
    pub peer: Option<PeerAddr>,
    /// This end (for a unix server, its socket path).
    pub local: Option<PeerAddr>,
    /// The connection's number, as the log shows it.
    pub id: u64,
}

impl ExecEnv {
    /// Every variable sockit sets or removes, with its value (`None`: removed).
    pub fn vars(&self) -> Vec<(&'static str, Option<OsString>)> {
        let (peer_addr, peer_port) = split(self.peer.as_ref());
        let (local_addr, local_port) = split(self.local.as_ref());
        let inet = self.proto != ExecProto::Unix;
        let only_inet = |v: &Option<OsString>| if inet { v.clone() } else { None };
        vec![
            ("SOCKIT_PROTO", Some(self.proto.name().into())),
            ("SOCKIT_CONN_ID", Some(self.id.to_string().into())),
            ("SOCKIT_PEER_ADDR", peer_addr.clone()),
            ("SOCKIT_PEER_PORT", peer_port.clone()),
            ("SOCKIT_LOCAL_ADDR", local_addr.clone()),
            ("SOCKIT_LOCAL_PORT", local_port.clone()),
            ("PROTO", Some(if inet { "TCP" } else { "UNIX" }.into())),
            ("TCPREMOTEIP", only_inet(&peer_addr)),
            ("TCPREMOTEPORT", only_inet(&peer_port)),
            ("TCPLOCALIP", only_inet(&local_addr)),
            ("TCPLOCALPORT", only_inet(&local_port)),
        ]
    }
}

/// An address as (address, port) variable values.
fn split(addr: Option<&PeerAddr>) -> (Option<OsString>, Option<OsString>) {
    match addr {
        Some(PeerAddr::Inet(a)) => (
            Some(a.ip().to_canonical().to_string().into()),
            Some(a.port().to_string().into()),
        ),
        Some(PeerAddr::Unix(Some(path))) => (Some(path.clone().into_os_string()), None),
        Some(PeerAddr::Unix(None)) | None => (None, None),
    }
}

/// Why a connection with a child ended.
#[derive(Debug)]
pub enum ExecEnd {
    /// The child closed its output (normally by exiting); everything it wrote was delivered.
    ChildDone,
    /// The peer closed the connection, or it failed, before the child finished.
    PeerGone(Option<io::Error>),
    /// The server is shutting down (or, for `connect`, the user interrupted).
    Shutdown,
    /// Nothing went either way for this long (`--idle-timeout`).
    Idle(Duration),
}

impl fmt::Display for ExecEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecEnd::ChildDone => f.write_str("program finished"),
            ExecEnd::PeerGone(None) => f.write_str("peer closed before the program finished"),
            ExecEnd::PeerGone(Some(e)) => write!(f, "connection failed: {e}"),
            ExecEnd::Shutdown => f.write_str("shutting down"),
            ExecEnd::Idle(d) => write!(f, "idle for {}s", d.as_secs_f64()),
        }
    }
}

/// What happened on one connection with a child.
#[derive(Debug)]
pub struct ExecReport {
    /// Why it ended.
    pub end: ExecEnd,
    /// The child's exit status; `None` if it could not be reaped.
    pub status: Option<ExitStatus>,
    /// Whether sockit had to signal the child.
    pub killed: bool,
    /// Bytes from the peer to the child.
    pub bytes_in: u64,
    /// Bytes from the child to the peer.
    pub bytes_out: u64,
    /// How long the connection lasted.
    pub duration: Duration,
}

impl ExecReport {
    /// The exit status as a short phrase: `exit 0`, `exit 3`, `killed by signal 9`.
    pub fn status_text(&self) -> String {
        status_text(self.status)
    }

    /// The exit code `sockit connect --exec` passes on: the child's, or 128 + its signal.
    pub fn exit_code(&self) -> u8 {
        use std::os::unix::process::ExitStatusExt;
        match self.status {
            Some(s) => match (s.code(), s.signal()) {
                (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(1),
                (None, Some(sig)) => u8::try_from((128 + sig) & 0xff).unwrap_or(1),
                _ => 1,
            },
            None => 1,
        }
    }
}

impl fmt::Display for ExecReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}, {}{} ({} bytes in, {} out; {:.1}s)",
            self.end,
            self.status_text(),
            if self.killed {
                " after sockit signalled it"
            } else {
                ""
            },
            self.bytes_in,
            self.bytes_out,
            self.duration.as_secs_f64()
        )
    }
}

fn status_text(status: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        None => "exit status unknown".to_owned(),
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exit {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => format!("{s}"),
        },
    }
}

/// Runs `command` for one connection: spawns it with `env`, wires `stream` to its stdin and
/// stdout, logs its stderr, and returns once both the connection and the child are finished
/// (the child killed if it outlived the connection). `closing` ends the connection early, and
/// so does `idle`: no byte either way for that long.
///
/// Fails only if the program cannot be started.
pub async fn run<St, F>(
    stream: St,
    command: &ExecCommand,
    env: &ExecEnv,
    idle: Option<Duration>,
    closing: F,
) -> io::Result<ExecReport>
where
    St: AsyncRead + AsyncWrite + Unpin,
    F: Future<Output = ()>,
{
    let started = Instant::now();
    let id = env.id;
    let mut child = command.spawn(env)?;
    let pid = child.id();
    debug!("#{id}: started `{command}` (pid {})", pid.unwrap_or(0));
    let (Some(stdin), Some(mut stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(io::Error::other(
            "the program's standard streams were not piped",
        ));
    };
    let stderr_task = child
        .stderr
        .take()
        .map(|stderr| tokio::spawn(log_stderr(stderr, id)));

    let (mut rd, mut wr) = tokio::io::split(stream);
    let bytes_in = AtomicU64::new(0);
    let bytes_out = AtomicU64::new(0);
    let mut killed = false;
    let mut watchdog = Watchdog::new(idle);
    let (end, status, peer_done) = {
        // Peer → child. Finishing drops `stdin`, which closes the child's input.
        let up = copy_in(&mut rd, stdin, &bytes_in);
        // Child → peer, then half-close.
        let down = async {
            let r = copy_out(&mut stdout, &mut wr, &bytes_out).await;
            let shut = wr.shutdown().await;
            r.and(shut)
        };
        let mut up = std::pin::pin!(up);
        let mut down = std::pin::pin!(down);
        let mut closing = std::pin::pin!(closing);
        let mut up_done = false;
        // Both directions run until the child closes its output (or the connection ends).
        let end = loop {
            tokio::select! {
                r = &mut down => break match r {
                    Ok(()) => ExecEnd::ChildDone,
                    Err(e) => ExecEnd::PeerGone(Some(e)),
                },
                r = &mut up, if !up_done => {
                    up_done = true;
                    match r {
                        // The peer half-closed (the child reads end of file and carries on),
                        // or the child stopped reading (its output still goes to the peer).
                        Ok(UpEnd::PeerEof | UpEnd::ChildClosedInput) => {}
                        Err(e) => break ExecEnd::PeerGone(Some(e)),
                    }
                }
                () = &mut closing => break ExecEnd::Shutdown,
                d = watchdog.expired(&bytes_in, &bytes_out) => break ExecEnd::Idle(d),
            }
        };
        let status = match end {
            ExecEnd::ChildDone => {
                // The child closed its output: normally it has exited. One that still reads
                // (it half-closed) keeps getting the peer's bytes until it exits; once the
                // peer is done too, it has a moment to exit before it is stopped.
                let mut grace = std::pin::pin!(tokio::time::sleep(EXIT_GRACE));
                loop {
                    tokio::select! {
                        status = child.wait() => break status.ok(),
                        r = &mut up, if !up_done => {
                            up_done = true;
                            if r.is_err() {
                                killed = true;
                                break terminate(&mut child, pid).await;
                            }
                            grace
                                .as_mut()
                                .reset(tokio::time::Instant::now() + EXIT_GRACE);
                        }
                        () = &mut grace, if up_done => {
                            killed = true;
                            break terminate(&mut child, pid).await;
                        }
                        () = &mut closing => {
                            killed = true;
                            break terminate(&mut child, pid).await;
                        }
                        _ = watchdog.expired(&bytes_in, &bytes_out) => {
                            killed = true;
                            break terminate(&mut child, pid).await;
                        }
                    }
                }
            }
            // The connection is over: the child may already have exited (then this only reaps
            // it), else it is stopped.
            ExecEnd::PeerGone(_) | ExecEnd::Shutdown | ExecEnd::Idle(_) => match child.try_wait() {
                Ok(Some(status)) => Some(status),
                _ => {
                    killed = true;
                    terminate(&mut child, pid).await
                }
            },
        };
        (end, status, up_done)
    };
    // Closing with unread input would reset the connection and could destroy the child's last
    // output before the peer reads it: read (and drop) what the peer still sends, briefly.
    if matches!(end, ExecEnd::ChildDone) && !peer_done {
        let _ = tokio::time::timeout(LINGER, drain(&mut rd)).await;
    }
    if let Some(mut stderr_task) = stderr_task {
        if tokio::time::timeout(STDERR_GRACE, &mut stderr_task)
            .await
            .is_err()
        {
            stderr_task.abort();
            debug!("#{id}: stderr still open after the program exited; no longer logged");
        }
    }
    Ok(ExecReport {
        end,
        status,
        killed,
        bytes_in: bytes_in.into_inner(),
        bytes_out: bytes_out.into_inner(),
        duration: started.elapsed(),
    })
}

/// `--idle-timeout` for a connection with a child: fires once no byte has moved either way for
/// the limit (checked a few times per limit, so it fires within a quarter of it late).
struct Watchdog {
    idle: Option<Duration>,
    seen: u64,
    since: tokio::time::Instant,
}

impl Watchdog {
    fn new(idle: Option<Duration>) -> Watchdog {
        Watchdog {
            idle,
            seen: 0,
            since: tokio::time::Instant::now(),
        }
    }

    /// Resolves with the limit once it has passed without traffic; never without a limit.
    async fn expired(&mut self, a: &AtomicU64, b: &AtomicU64) -> Duration {
        let Some(idle) = self.idle else {
            return std::future::pending().await;
        };
        let step = (idle / 4).max(Duration::from_millis(10));
        loop {
            tokio::time::sleep(step).await;
            let now = tokio::time::Instant::now();
            let total = a.load(Ordering::Relaxed) + b.load(Ordering::Relaxed);
            if total != self.seen {
                self.seen = total;
                self.since = now;
            } else if now.duration_since(self.since) >= idle {
                return idle;
            }
        }
    }
}

/// How copying the peer's bytes to the child ended without an error.
enum UpEnd {
    PeerEof,
    ChildClosedInput,
}

async fn copy_in<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    rd: &mut R,
    mut stdin: W,
    count: &AtomicU64,
) -> io::Result<UpEnd> {
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let n = rd.read(&mut buf).await?;
        if n == 0 {
            return Ok(UpEnd::PeerEof);
        }
        match stdin.write_all(&buf[..n]).await {
            Ok(()) => {
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
            // The child closed its stdin (or exited): stop reading from the peer, which
            // leaves what it sends in the socket buffers (back-pressure, not memory).
            Err(_) => return Ok(UpEnd::ChildClosedInput),
        }
    }
}

async fn copy_out<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    stdout: &mut R,
    wr: &mut W,
    count: &AtomicU64,
) -> io::Result<()> {
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        let n = match stdout.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            // A read error on a pipe means the same as its end.
            Err(_) => break,
        };
        wr.write_all(&buf[..n]).await?;
        wr.flush().await?;
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
    wr.flush().await
}

async fn drain<R: AsyncRead + Unpin>(rd: &mut R) {
    let mut sink = [0u8; 4096];
    while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
}

/// Stops the child's process group: `SIGTERM`, then `SIGKILL` after [`KILL_GRACE`]; reaps it.
async fn terminate(child: &mut Child, pid: Option<u32>) -> Option<ExitStatus> {
    // The child is not reaped yet (only `wait` reaps it), so its pid, which is also its
    // process group id, cannot have been reused.
    let group = pid.and_then(|p| i32::try_from(p).ok()).filter(|&p| p > 0);
    if let Some(group) = group {
        signal_group(group, libc::SIGTERM);
    }
    match tokio::time::timeout(KILL_GRACE, child.wait()).await {
        Ok(status) => {
            if let Some(group) = group {
                // The leader is gone; anything it left behind in its group goes too. Its
                // group id stays reserved while members remain, so this hits no stranger.
                signal_group(group, libc::SIGKILL);
            }
            status.ok()
        }
        Err(_) => {
            if let Some(group) = group {
                signal_group(group, libc::SIGKILL);
            } else {
                let _ = child.start_kill();
            }
            child.wait().await.ok()
        }
    }
}

fn signal_group(group: i32, signal: i32) {
    // SAFETY: kill only sends a signal; a negative pid names a process group.
    unsafe {
        libc::kill(-group, signal);
    }
}

/// Logs the child's stderr a line at a time, long lines in pieces.
async fn log_stderr(mut stderr: ChildStderr, id: u64) {
    let mut buf = vec![0u8; STDERR_LINE];
    let mut len = 0;
    loop {
        let n = match stderr.read(&mut buf[len..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        len += n;
        let mut start = 0;
        while let Some(nl) = memchr::memchr(b'\n', &buf[start..len]) {
            log_line(id, &buf[start..start + nl]);
            start += nl + 1;
        }
        buf.copy_within(start..len, 0);
        len -= start;
        if len == buf.len() {
            log_line(id, &buf[..len]);
            len = 0;
        }
    }
    if len > 0 {
        log_line(id, &buf[..len]);
    }
}

fn log_line(id: u64, line: &[u8]) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    warn!("#{id} stderr: {}", String::from_utf8_lossy(line));
}

/// Logs how a connection's program ended: its exit status, and whether sockit stopped it.
/// A program that failed by itself is a warning.
pub fn log_report(id: u64, command: &ExecCommand, report: &ExecReport) {
    let killed = if report.killed {
        " (stopped by sockit: the connection ended first)"
    } else {
        ""
    };
    let status = report.status_text();
    if !report.killed && report.status.is_some_and(|s| !s.success()) {
        warn!("#{id} program `{command}`: {status}{killed}");
    } else {
        info!("#{id} program `{command}`: {status}{killed}");
    }
}

/// `sockit serve --exec`/`--sh-exec` as a [`Service`]: every stream connection (TCP, unix,
/// TLS) is handed whole to a new child; the server's connection limit, shutdown and upgrade
/// layers still apply. Datagram peers are told it needs a stream.
#[derive(Debug, Clone)]
pub struct Exec {
    handler: Arc<ExecHandler>,
}

#[derive(Debug)]
struct ExecHandler {
    command: ExecCommand,
    tls: bool,
}

impl Exec {
    /// Runs `command` per connection; `tls`: the server's connections are TLS (for
    /// `SOCKIT_PROTO`).
    pub fn new(command: ExecCommand, tls: bool) -> Exec {
        Exec {
            handler: Arc::new(ExecHandler { command, tls }),
        }
    }

    /// The command run.
    pub fn command(&self) -> &ExecCommand {
        &self.handler.command
    }
}

impl Service for Exec {
    type Session = NeedsStream;

    fn open(&self, _peer: &PeerInfo) -> NeedsStream {
        NeedsStream
    }

    fn quit_words(&self) -> bool {
        false
    }

    fn stream_handler(&self) -> Option<Arc<dyn StreamHandler>> {
        Some(self.handler.clone())
    }
}

/// The session a datagram peer would get: a program needs a stream, so it says so.
#[derive(Debug)]
pub struct NeedsStream;

impl Session for NeedsStream {
    async fn on_message(&mut self, _msg: Message, out: &mut Outbox) {
        out.send(Message::text(
            "error: --exec works over stream sockets only",
        ));
        out.close();
    }
}

impl StreamHandler for ExecHandler {
    fn serve(
        self: Arc<Self>,
        stream: BoxStream,
        ctx: StreamContext,
    ) -> Pin<Box<dyn Future<Output = ConnReport> + Send>> {
        Box::pin(async move {
            let started = Instant::now();
            let proto = match (&ctx.peer.addr, self.tls) {
                (PeerAddr::Unix(_), _) => ExecProto::Unix,
                (_, true) => ExecProto::Tls,
                (_, false) => ExecProto::Tcp,
            };
            let env = ExecEnv {
                proto,
                peer: Some(ctx.peer.addr.clone()),
                local: ctx.local.clone(),
                id: ctx.peer.id,
            };
            let run = run(stream, &self.command, &env, ctx.idle_timeout, ctx.closing);
            let reason = match run.await {
                Ok(report) => {
                    let reason = match &report.end {
                        ExecEnd::ChildDone => CloseReason::ServiceClosed,
                        ExecEnd::PeerGone(None) => CloseReason::PeerClosed,
                        ExecEnd::PeerGone(Some(e)) => {
                            CloseReason::Io(io::Error::new(e.kind(), e.to_string()))
                        }
                        ExecEnd::Shutdown => CloseReason::Shutdown,
                        ExecEnd::Idle(d) => CloseReason::IdleTimeout(*d),
                    };
                    log_report(env.id, &self.command, &report);
                    return ConnReport {
                        reason,
                        messages_in: 0,
                        messages_out: 0,
                        bytes_in: report.bytes_in,
                        bytes_out: report.bytes_out,
                        duration: report.duration,
                    };
                }
                Err(e) => CloseReason::Failed(format!("cannot run `{}`: {e}", self.command)),
            };
            ConnReport {
                reason,
                messages_in: 0,
                messages_out: 0,
                bytes_in: 0,
                bytes_out: 0,
                duration: started.elapsed(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        split_words(s).unwrap()
    }

    #[test]
    fn words_split_on_blanks_and_respect_quotes() {
        assert_eq!(words("tr a-z  A-Z"), ["tr", "a-z", "A-Z"]);
        assert_eq!(words("  echo 'a b'  \"c d\" "), ["echo", "a b", "c d"]);
        assert_eq!(
            words(r#"x 'it''s' "say \"hi\"" a\ b"#),
            ["x", "its", r#"say "hi""#, "a b"]
        );
        assert_eq!(words(r#"x "\n\$\\""#), ["x", r"\n$\"]);
        assert_eq!(words("x '' \"\""), ["x", "", ""]);
        assert_eq!(words("a'b'\"c\"d"), ["abcd"]);
        assert_eq!(
            words("no $HOME *.rs | expansion"),
            ["no", "$HOME", "*.rs", "|", "expansion"]
        );
        assert!(words("  ").is_empty());
    }

    #[test]
    fn bad_command_lines_are_errors_not_panics() {
        assert_eq!(
            split_words("echo 'open"),
            Err(ExecParseError::Unterminated("single"))
        );
        assert_eq!(
            split_words("echo \"open"),
            Err(ExecParseError::Unterminated("double"))
        );
        assert_eq!(
            split_words("echo \\"),
            Err(ExecParseError::TrailingBackslash)
        );
        assert_eq!(ExecCommand::words(" "), Err(ExecParseError::Empty));
        assert_eq!(ExecCommand::words("''"), Err(ExecParseError::Empty));
        assert_eq!(ExecCommand::shell(""), Err(ExecParseError::Empty));
        let cmd = ExecCommand::words("cat -u").unwrap();
        assert_eq!((cmd.program(), cmd.args()), ("cat", &["-u".to_owned()][..]));
        let sh = ExecCommand::shell("tr a-z A-Z").unwrap();
        assert_eq!(sh.args(), ["-c", "tr a-z A-Z"]);
    }

    #[test]
    fn environment_names_both_ends_and_removes_what_does_not_apply() {
        let env = ExecEnv {
            proto: ExecProto::Tcp,
            peer: Some(PeerAddr::Inet("[::ffff:10.0.0.1]:5000".parse().unwrap())),
            local: Some(PeerAddr::Inet("127.0.0.1:9000".parse().unwrap())),
            id: 7,
        };
        let vars: std::collections::HashMap<_, _> = env.vars().into_iter().collect();
        let get = |k: &str| vars[k].clone().map(|v| v.into_string().unwrap());
        assert_eq!(get("SOCKIT_PEER_ADDR").as_deref(), Some("10.0.0.1"));
        assert_eq!(get("TCPREMOTEPORT").as_deref(), Some("5000"));
        assert_eq!(get("TCPLOCALIP").as_deref(), Some("127.0.0.1"));
        assert_eq!(get("SOCKIT_LOCAL_PORT").as_deref(), Some("9000"));
        assert_eq!(get("PROTO").as_deref(), Some("TCP"));
        assert_eq!(get("SOCKIT_CONN_ID").as_deref(), Some("7"));

        let unix = ExecEnv {
            proto: ExecProto::Unix,
            peer: Some(PeerAddr::Unix(None)),
            local: Some(PeerAddr::Unix(Some("/tmp/s".into()))),
            id: 1,
        };
        let vars: std::collections::HashMap<_, _> = unix.vars().into_iter().collect();
        assert_eq!(vars["SOCKIT_LOCAL_ADDR"], Some("/tmp/s".into()));
        assert_eq!(vars["SOCKIT_PEER_ADDR"], None);
        assert_eq!(vars["TCPLOCALIP"], None);
        assert_eq!(vars["PROTO"], Some("UNIX".into()));
    }

    fn env() -> ExecEnv {
        ExecEnv {
            proto: ExecProto::Tcp,
            peer: Some(PeerAddr::Inet("127.0.0.1:1".parse().unwrap())),
            local: None,
            id: 1,
        }
    }

    #[tokio::test]
    async fn a_child_sees_the_peer_eof_and_its_output_reaches_the_peer() {
        let (mine, theirs) = tokio::io::duplex(1024);
        let cmd = ExecCommand::shell("tr a-z A-Z; echo \"$SOCKIT_PEER_PORT\"").unwrap();
        let env = env();
        let server = tokio::spawn(async move {
            run(theirs, &cmd, &env, None, std::future::pending())
                .await
                .unwrap()
        });
        let (mut rd, mut wr) = tokio::io::split(mine);
        wr.write_all(b"hello\n").await.unwrap();
        wr.shutdown().await.unwrap();
        let mut got = String::new();
        rd.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "HELLO\n1\n");
        let report = server.await.unwrap();
        assert!(matches!(report.end, ExecEnd::ChildDone), "{report}");
        assert_eq!(report.exit_code(), 0);
        assert!(!report.killed);
        assert_eq!((report.bytes_in, report.bytes_out), (6, 8));
    }

    #[tokio::test]
    async fn a_child_outliving_its_connection_is_killed_and_reaped() {
        let (mine, theirs) = tokio::io::duplex(1024);
        // Ignores SIGTERM and never exits by itself; has a grandchild too. Its output shows
        // that the peer is gone.
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let cmd = ExecCommand::shell(&format!(
            "sleep 60 & echo $! > {}; trap '' TERM; while :; do echo tick; sleep 0.05; done",
            pidfile.display()
        ))
        .unwrap();
        let env = env();
        let started = Instant::now();
        let server = tokio::spawn(async move {
            run(theirs, &cmd, &env, None, std::future::pending())
                .await
                .unwrap()
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(mine);
        let report = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the child was not stopped")
            .unwrap();
        assert!(report.killed, "{report}");
        assert_eq!(report.status_text(), "killed by signal 9");
        assert!(started.elapsed() < Duration::from_secs(10));
        let grandchild: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The grandchild was killed with its group; once reaped by init it is gone.
        let mut gone = false;
        for _ in 0..100 {
            // SAFETY: signal 0 only checks that the process exists.
            if unsafe { libc::kill(grandchild, 0) } != 0 {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(gone, "grandchild {grandchild} survived");
    }

    #[tokio::test]
    async fn shutdown_stops_the_child_and_a_crash_is_reported() {
        let (_mine, theirs) = tokio::io::duplex(1024);
        let cmd = ExecCommand::words("sleep 30").unwrap();
        let report = run(
            theirs,
            &cmd,
            &env(),
            None,
            tokio::time::sleep(Duration::from_millis(50)),
        )
        .await
        .unwrap();
        assert!(matches!(report.end, ExecEnd::Shutdown));
        assert_eq!(report.status_text(), "killed by signal 15");

        let (_mine, theirs) = tokio::io::duplex(1024);
        let cmd = ExecCommand::shell("echo oops >&2; exit 3").unwrap();
        let report = run(theirs, &cmd, &env(), None, std::future::pending())
            .await
            .unwrap();
        assert_eq!(report.exit_code(), 3);
        assert!(matches!(report.end, ExecEnd::ChildDone));
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_and_its_child_stopped() {
        let (mut mine, theirs) = tokio::io::duplex(1024);
        // Echoes for a while, then goes quiet without exiting.
        let cmd = ExecCommand::shell("head -n 1; sleep 30").unwrap();
        let server = tokio::spawn(async move {
            let idle = Some(Duration::from_millis(200));
            run(theirs, &cmd, &env(), idle, std::future::pending())
                .await
                .unwrap()
        });
        // Traffic keeps it open past the limit.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            mine.write_all(b"x").await.unwrap();
        }
        mine.write_all(b"\n").await.unwrap();
        let report = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("idle limit not applied")
            .unwrap();
        assert!(matches!(report.end, ExecEnd::Idle(_)), "{report}");
        assert!(report.killed);
        assert_eq!(report.bytes_out, 4, "the line came back first");
        assert!(report.duration >= Duration::from_millis(450), "{report}");
    }

    #[tokio::test]
    async fn a_missing_program_is_an_error() {
        let (_mine, theirs) = tokio::io::duplex(64);
        let cmd = ExecCommand::words("/nonexistent/program").unwrap();
        let e = run(theirs, &cmd, &env(), None, std::future::pending())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
