//! `serve` on unix sockets (stale files, `--mode`, removal on exit), the `--exec` banner, and
//! `connect --exec`.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use sockit::exec::{self, ExecCommand, ExecEnv, ExecProto};
use sockit::net::{PeerAddr, UnixName};
use sockit::transport::stream::{Dial, connect_tcp_any};
use sockit::transport::unix::{SocketFile, prepare_bind, set_mode};
use sockit::{Server, ServerConfig, Service};

/// Where `serve` listens.
#[derive(Debug, Clone)]
pub enum Bind {
    /// An IP address and port (TCP, UDP or rudp, as the configuration says).
    Inet(SocketAddr),
    /// A unix stream socket, and `--mode` for its file.
    Unix(UnixName, Option<u32>),
    /// A unix datagram socket, and `--mode` for its file.
    Unixgram(UnixName, Option<u32>),
}

impl std::fmt::Display for Bind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bind::Inet(a) => write!(f, "{a}"),
            Bind::Unix(name, _) => write!(f, "unix:{name}"),
            Bind::Unixgram(name, _) => write!(f, "unixgram:{name}"),
        }
    }
}

/// Binds a server on a unix socket: a stale socket file is replaced, a live one refused;
/// `mode` is applied to the new file. The returned guard removes the file when dropped.
pub fn bind_unix<S: Service>(
    name: &UnixName,
    mode: Option<u32>,
    config: ServerConfig,
    service: S,
) -> Result<(Server<S>, Option<SocketFile>)> {
    let context = || format!("cannot listen on unix:{name}");
    prepare_bind(name, false).with_context(context)?;
    let server = Server::bind_unix(name, config, service).with_context(context)?;
    let file = SocketFile::bound(name);
    if let Some(mode) = mode {
        set_mode(name, mode).with_context(|| format!("cannot set mode {mode:04o} on {name}"))?;
    }
    Ok((server, file))
}

/// The `--exec`/`--sh-exec` command given, if any.
pub fn exec_command(exec: Option<&str>, sh_exec: Option<&str>) -> Result<Option<ExecCommand>> {
    Ok(match (exec, sh_exec) {
        (Some(line), _) => Some(ExecCommand::words(line)?),
        (None, Some(cmd)) => Some(ExecCommand::shell(cmd)?),
        (None, None) => None,
    })
}

/// How to reach a unix server, for the banner: sockit's own line and socat's.
pub fn unix_hint(name: &UnixName, framing_flag: &str) -> String {
    let socat = match name {
        UnixName::Path(p) => format!("socat - UNIX-CONNECT:{}", p.display()),
        UnixName::Abstract(n) => format!("socat - ABSTRACT-CONNECT:{n}"),
    };
    format!("connect with: sockit connect{framing_flag} unix:{name}  or:  {socat}")
}

/// `sockit connect --exec`: connects, runs `command` with the connection on its stdin and
/// stdout, and returns the exit code to leave with (the program's).
pub async fn connect_exec(
    addrs: &[SocketAddr],
    dial: &Dial,
    timeout: std::time::Duration,
    command: ExecCommand,
    interrupted: tokio_util::sync::CancellationToken,
) -> Result<u8> {
    let command = command.inherit_stderr();
    let (stream, peer, local): (sockit::transport::stream::BoxStream, PeerAddr, _) =
        if dial.is_plain() {
            let (stream, addr) = connect_tcp_any(addrs, timeout).await?;
            let local = stream.local_addr().ok().map(PeerAddr::Inet);
            (Box::new(stream), PeerAddr::Inet(addr), local)
        } else {
            let (stream, peer, local) = dial.connect_local(addrs, timeout).await?;
            let peer = match (&dial.unix, peer) {
                (Some(UnixName::Path(path)), _) => PeerAddr::Unix(Some(path.clone())),
                (_, peer) => peer,
            };
            (stream, peer, local)
        };
    tracing::info!("connected to {}: running `{command}`", dial.describe(addrs));
    let env = ExecEnv {
        proto: match (&dial.unix, dial.layers.is_empty()) {
            (Some(_), _) => ExecProto::Unix,
            (None, true) => ExecProto::Tcp,
            (None, false) => ExecProto::Tls,
        },
        peer: Some(peer),
        local,
        id: 1,
    };
    let report = exec::run(stream, &command, &env, None, interrupted.cancelled_owned())
        .await
        .with_context(|| format!("cannot run `{command}`"))?;
    exec::log_report(1, &command, &report);
    tracing::info!("connection closed: {report}");
    Ok(report.exit_code())
}

/// Binds a datagram server on a unix socket, like [`bind_unix`].
pub fn bind_unixgram<S: Service>(
    name: &UnixName,
    mode: Option<u32>,
    config: ServerConfig,
    service: S,
) -> Result<(Server<S>, Option<SocketFile>)> {
    let context = || format!("cannot listen on unixgram:{name}");
    prepare_bind(name, true).with_context(context)?;
    let server = Server::bind_unixgram(name, config, service).with_context(context)?;
    let file = SocketFile::bound(name);
    if let Some(mode) = mode {
        set_mode(name, mode).with_context(|| format!("cannot set mode {mode:04o} on {name}"))?;
    }
    Ok((server, file))
}

/// How to reach a unixgram server, for the banner. A client must bind a path of its own:
/// that is where the replies go.
pub fn unixgram_hint(name: &UnixName) -> String {
    match name {
        UnixName::Path(p) => format!(
            "connect with: sockit connect unixgram:{name}  or:  socat - UNIX-SENDTO:{},bind=/tmp/client.sock",
            p.display()
        ),
        UnixName::Abstract(_) => format!("connect with: sockit connect unixgram:{name}"),
    }
}

/// `sockit connect unixgram:NAME`: binds a socket of its own in a private temporary directory
/// (replies need an address), then sends each `-m` message, or each line of standard input
/// (its line ending removed), as one datagram and prints the reply, resending up to `retries`
/// times when none comes within `timeout`.
pub async fn connect_unixgram(
    name: &UnixName,
    messages: Vec<bytes::Bytes>,
    timeout: std::time::Duration,
    retries: u32,
) -> Result<()> {
    use std::io::Write;
    use tokio::io::AsyncBufReadExt;

    let dir = tempfile::Builder::new()
        .prefix("sockit-")
        .tempdir()
        .context("cannot make a directory for the client socket")?;
    let socket = tokio::net::UnixDatagram::bind(dir.path().join("client.sock"))
        .context("cannot bind the client socket")?;
    let server = sockit::transport::stream::unix_socket_addr(name)?;
    {
        // Connected: only the server's datagrams are received.
        let std = socket.into_std()?;
        std.connect_addr(&server)
            .with_context(|| format!("cannot connect to unixgram:{name}"))?;
        let socket = tokio::net::UnixDatagram::from_std(std)?;
        let mut buf = vec![0u8; 65_536];
        let mut exchange = async |msg: &[u8]| -> Result<()> {
            for attempt in 0..=retries {
                socket
                    .send(msg)
                    .await
                    .with_context(|| format!("cannot send to unixgram:{name}"))?;
                match tokio::time::timeout(timeout, socket.recv(&mut buf)).await {
                    Ok(Ok(n)) => {
                        let mut out = std::io::stdout().lock();
                        out.write_all(&buf[..n])?;
                        if !buf[..n].ends_with(b"\n") {
                            out.write_all(b"\n")?;
                        }
                        out.flush()?;
                        return Ok(());
                    }
                    Ok(Err(e)) => {
                        return Err(e).with_context(|| format!("unixgram:{name}"));
                    }
                    Err(_) if attempt < retries => {
                        tracing::info!("no reply within {timeout:?}: resending");
                    }
                    Err(_) => {}
                }
            }
            anyhow::bail!(
                "no reply from unixgram:{name} within {}s",
                timeout.as_secs_f64() * f64::from(retries + 1)
            )
        };
        if messages.is_empty() {
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            while let Some(line) = lines.next_line().await.context("standard input")? {
                let line = line.strip_suffix('\r').unwrap_or(&line);
                exchange(line.as_bytes()).await?;
            }
        } else {
            for msg in &messages {
                exchange(msg).await?;
            }
        }
    }
    drop(dir);
    Ok(())
}
