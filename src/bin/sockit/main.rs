//! The `sockit` binary: parses arguments, sets up logging and the runtime, calls the library,
//! and owns exit codes — 0 success, 1 runtime failure (the whole error chain on one line),
//! 2 bad arguments (printed by clap with the usage line). A closed stdout is not an error.

mod cli;
mod extras;
mod password;
mod relay_cmd;
mod tls_args;
mod transfer;
mod unixexec;

use std::fs::File;
use std::io::{BufReader, IsTerminal, Write};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use sockit::bench::{self, BenchConfig};
use sockit::budget::MemoryBudget;
use sockit::client::{self, ClientConfig, Input, LineMode};
use sockit::cluster::{Cluster, ClusterConfig};
use sockit::logging::{LogSink, stderr_line};
use sockit::net::{Host, UnixName, resolve};
use sockit::server::raise_fd_limit;
use sockit::service::chat::DEFAULT_RETENTION;
use sockit::service::{Lang, Login, Users};
use sockit::users;
use sockit::{
    Ack, Chat, ChatConfig, Console, Echo, Framing, Hub, Knowledge, Lookup, Server, ServerConfig,
    Service, ServiceKind, Transport,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

use crate::cli::{
    BenchArgs, Command, ConnectArgs, PingArgs, PortArgs, ResolveArgs, ServeArgs, UserAction,
};
use crate::unixexec::Bind;

fn main() -> ExitCode {
    let cli = cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            stderr_line(&format!(
                "sockit: error: cannot start the async runtime: {e}"
            ));
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Connect(args) => connect(args).await,
            Command::Bench(args) => bench(args).await,
            Command::User(args) => user(args).await,
            Command::Ip(args) => ip(&args),
            Command::Port(args) => port(args),
            Command::Resolve(args) => resolve_names(args).await,
            Command::Ping(args) => ping(args).await,
            Command::Scan(args) => scan(args).await,
            Command::Send(args) => transfer::send(args).await,
            Command::Get(args) => transfer::get(args).await,
            Command::Ls(args) => transfer::ls(args).await,
            Command::Relay(args) => relay_cmd::relay(args).await,
            Command::Completions(args) => extras::completions(&args),
            Command::Man(args) => extras::man(&args),
        }
    });
    // Do not wait on a thread still blocked reading a terminal.
    runtime.shutdown_timeout(Duration::from_millis(100));
    if let Some(sink) = LOG.get() {
        // The last lines (the shutdown summary) are worth a short wait, never a long one.
        sink.flush(Duration::from_millis(500));
    }
    extras::flush_hex();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            stderr_line(&format!("sockit: error: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The log queue, kept to flush it before exiting.
static LOG: OnceLock<LogSink> = OnceLock::new();

/// Sends log lines to stderr through [`LogSink`], so that a closed or stuck stderr can never
/// stop, block or crash the process.
fn init_logging(quiet: bool, verbose: u8) {
    let level = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    // The NATS client (`--cluster`) reports every reconnect attempt: its warnings suffice
    // below -vv (sockit logs the link's state and, with -v, the bus traffic itself).
    let directives = if verbose >= 2 || quiet {
        level.to_owned()
    } else {
        format!("{level},async_nats=warn")
    };
    let filter =
        EnvFilter::try_from_env("SOCKIT_LOG").unwrap_or_else(|_| EnvFilter::new(directives));
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi);
    match LogSink::stderr() {
        Ok(sink) => {
            let _ = LOG.set(sink.clone());
            builder.with_writer(sink).init();
        }
        // No thread for the log: log nothing rather than risk blocking on stderr.
        Err(_) => builder.with_writer(std::io::sink).init(),
    }
}

/// Every address `host` resolves to (IPv4 first); the error already names the host.
pub(crate) async fn resolve_all(host: &Host, port: u16) -> Result<Vec<SocketAddr>> {
    Ok(resolve(host, port).await?)
}

/// Resolves a validated `connect`/`bench` target.
async fn resolve_target(target: &cli::Target) -> Result<Vec<SocketAddr>> {
    let address = target.address().map_err(anyhow::Error::msg)?;
    let (host, port) = address
        .inet()
        .ok_or_else(|| anyhow::anyhow!("{address}: not an internet address"))?;
    resolve_all(host, port).await
}

async fn serve(args: ServeArgs) -> Result<()> {
    init_logging(args.quiet, args.verbose);
    let listen = cli::listen_addr(&args).map_err(anyhow::Error::msg)?;
    match raise_fd_limit() {
        Ok(n) => tracing::debug!("open file limit: {n}"),
        Err(e) => warn!("cannot raise the open file limit: {e}"),
    }
    // `addr`, whatever it is, is where every service below listens.
    let addr = match &listen.unix {
        Some(name) if listen.udp => Bind::Unixgram(name.clone(), args.mode),
        Some(name) => Bind::Unix(name.clone(), args.mode),
        None => Bind::Inet(resolve_all(&listen.host, listen.port).await?[0]),
    };
    let transport = listen.transport();
    let tls = args.tls.build(listen.tls, &listen.host.to_string())?;
    if tls.is_some() && transport != Transport::Tcp {
        bail!("TLS runs over TCP: it cannot be used with --udp or --rudp");
    }
    let optional = |d: Duration| (!d.is_zero()).then_some(d);
    // One budget for the connections' buffers and the services' own memory (chat room logs).
    let budget = MemoryBudget::new(args.max_memory);
    let config = ServerConfig {
        transport,
        framing: cli::framing_or_default(args.framing, listen.udp || listen.rudp),
        limits: cli::limits(
            args.max_frame.unwrap_or(sockit::codec::DEFAULT_MAX_FRAME),
            args.max_line.unwrap_or(sockit::codec::DEFAULT_MAX_LINE),
        ),
        max_conns: args.max_conns,
        idle_timeout: optional(args.idle_timeout),
        frame_timeout: optional(args.frame_timeout),
        min_rate: (args.min_rate > 0).then_some(args.min_rate as u64),
        max_conns_per_ip: args.max_conns_per_ip,
        max_memory: args.max_memory,
        budget: Some(budget.clone()),
        udp_rate: args.udp_rate.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
        rudp: cli::rudp_config(args.mtu),
        handshake_timeout: tls
            .as_ref()
            .map_or(sockit::server::DEFAULT_HANDSHAKE_TIMEOUT, |t| {
                t.handshake_timeout()
            }),
        upgrades: match &tls {
            Some(t) => vec![std::sync::Arc::new(t.clone()) as _],
            None => Vec::new(),
        },
        ..ServerConfig::default()
    };
    if let Some(t) = &tls {
        TLS_BANNER.get_or_init(|| t.clone());
    }
    // --hex goes last, above any other layer (TLS), so that it shows plaintext.
    let mut config = config;
    config
        .upgrades
        .extend(extras::serve_hex(extras::hex_sink(args.hex)?));
    // Checked before binding: a malformed users file is an error naming its line, exit 1.
    let login = match &args.login {
        Some(path) => {
            let users = load_users(path).await?;
            if users.table().is_empty() {
                warn!(
                    "{} has no users: nobody can log in (add one with sockit user add)",
                    path.display()
                );
            } else {
                info!(
                    "login required: {} user(s) in {}",
                    users.table().len(),
                    path.display()
                );
            }
            Some((users, args.lang))
        }
        None => None,
    };
    let cluster = args.cluster.as_ref().map(|url| {
        Cluster::new(ClusterConfig {
            url: url.clone(),
            node: args
                .node
                .clone()
                .unwrap_or_else(sockit::cluster::default_node),
        })
    });
    let chat = || {
        Chat::new(ChatConfig {
            budget: Some(budget.clone()),
            lang: args.lang,
            retention: args.chat_retention.unwrap_or(DEFAULT_RETENTION),
            cluster: cluster.clone(),
            ..ChatConfig::default()
        })
    };
    if let Some(command) = unixexec::exec_command(args.exec.as_deref(), args.sh_exec.as_deref())? {
        let label = Label::Exec(command.to_string());
        let exec = sockit::exec::Exec::new(command, tls.is_some());
        return serve_with(addr, config, exec, label).await;
    }
    let kind = args.service;
    match kind {
        ServiceKind::Echo => serve_maybe_login(addr, config, Echo, kind, login).await,
        ServiceKind::Ack => serve_maybe_login(addr, config, Ack, kind, login).await,
        ServiceKind::Lookup => {
            let knowledge = load_knowledge(args.kb.clone()).await?;
            let lookup = Lookup::new(knowledge, args.lang);
            serve_maybe_login(addr, config, lookup, kind, login).await
        }
        ServiceKind::Chat => {
            let chat = chat();
            start_cluster(cluster.as_ref()).await?;
            let served = serve_maybe_login(addr, config, chat, kind, login).await;
            stop_cluster(cluster.as_ref()).await;
            served
        }
        ServiceKind::Console => {
            serve_maybe_login(addr, config, Console::new(args.lang), kind, login).await
        }
        ServiceKind::Files => {
            use sockit::files::{DEFAULT_MAX_FILE_SIZE, DEFAULT_PARTIAL_TTL};
            use sockit::service::files::{Files, FilesConfig};
            let dir = args.dir.clone().unwrap_or_else(|| ".".into());
            let files = Files::new(FilesConfig {
                dir: dir.clone(),
                read_only: args.read_only,
                overwrite: args.overwrite,
                max_file_size: args.max_file_size.unwrap_or(DEFAULT_MAX_FILE_SIZE),
                partial_ttl: args.partial_ttl.unwrap_or(DEFAULT_PARTIAL_TTL),
                progress: std::io::stderr().is_terminal(),
            })
            .with_context(|| format!("cannot serve {}", dir.display()))?;
            info!(
                "serving {}{}{}",
                dir.display(),
                if args.read_only { " read-only" } else { "" },
                if args.overwrite {
                    ", uploads may overwrite"
                } else {
                    ""
                }
            );
            let config = ServerConfig {
                framing: Framing::Header {
                    order: sockit::codec::ByteOrder::Big,
                },
                ..config
            };
            serve_with(addr, config, files, Label::Service(kind)).await
        }
        ServiceKind::Hub => {
            let knowledge = load_knowledge(args.kb.clone()).await?;
            // The `login` command checks the users of --login (sharing its failure counts) or
            // of --users.
            let users = match (&login, &args.users) {
                (Some((users, _)), _) => Some(users.clone()),
                (None, Some(path)) => {
                    let users = load_users(path).await?;
                    info!(
                        "login command enabled: {} user(s) in {}",
                        users.table().len(),
                        path.display()
                    );
                    Some(users)
                }
                (None, None) => None,
            };
            let hub = Hub::new(knowledge, chat(), users, args.lang);
            start_cluster(cluster.as_ref()).await?;
            let served = serve_maybe_login(addr, config, hub, kind, login).await;
            stop_cluster(cluster.as_ref()).await;
            served
        }
    }
}

/// The TLS server, whose certificate the serve banner describes.
static TLS_BANNER: OnceLock<sockit::tls::TlsServer> = OnceLock::new();

/// The serve banner's cluster line, once the cluster link has started.
static CLUSTER_BANNER: OnceLock<String> = OnceLock::new();

/// Starts the link to the chat cluster (`--cluster`), waiting a moment for the first
/// connection; without one the server still starts, and keeps trying in the background.
async fn start_cluster(cluster: Option<&Cluster>) -> Result<()> {
    let Some(cluster) = cluster else {
        return Ok(());
    };
    let up = cluster
        .start(Duration::from_secs(3))
        .await
        .map_err(anyhow::Error::msg)?;
    let status = cluster.status();
    let state = if up {
        "connected".to_owned()
    } else {
        warn!(
            "cluster: cannot reach NATS at {} yet: chat is local until it can",
            status.url
        );
        "not connected yet (retrying in the background)".to_owned()
    };
    let _ = CLUSTER_BANNER.set(format!(
        "cluster: node {} on {}: {state}",
        status.node, status.url
    ));
    Ok(())
}

/// After the server has stopped: tells the cluster its members have gone, rather than letting
/// the other servers find out from the missing heartbeats.
async fn stop_cluster(cluster: Option<&Cluster>) {
    if let Some(cluster) = cluster {
        cluster.flush(Duration::from_secs(2)).await;
    }
}

/// Loads a users file off the async threads (hash checks of the file's format are quick, but it
/// is disk I/O).
async fn load_users(path: &std::path::Path) -> Result<Users> {
    let file = path.to_path_buf();
    Ok(tokio::task::spawn_blocking(move || Users::load(file))
        .await
        .context("loading the users file failed")??)
}

/// The knowledge base for `--kb FILE`, or the built-in one; logs what was loaded and how long
/// it took. Indexing a large file is CPU work, so it runs off the async threads.
async fn load_knowledge(kb: Option<std::path::PathBuf>) -> Result<Knowledge> {
    let started = std::time::Instant::now();
    let knowledge = tokio::task::spawn_blocking(move || match kb {
        Some(path) => Knowledge::load(&path),
        None => Ok(Knowledge::builtin()),
    })
    .await
    .context("loading the knowledge base failed")??;
    let from = knowledge.source().map_or_else(
        || format!("the {}", sockit::service::lookup::BUILTIN_NAME),
        |p| p.display().to_string(),
    );
    info!(
        "loaded {} entries from {from} in {} ms",
        knowledge.len(),
        started.elapsed().as_millis()
    );
    Ok(knowledge)
}

/// Runs `service`, behind a login when `--login` gave a users file.
async fn serve_maybe_login<S: Service>(
    addr: Bind,
    config: ServerConfig,
    service: S,
    kind: ServiceKind,
    login: Option<(Users, Lang)>,
) -> Result<()> {
    match login {
        Some((users, lang)) => {
            let service = Login::new(users, service, lang);
            serve_with(addr, config, service, Label::Service(kind)).await
        }
        None => serve_with(addr, config, service, Label::Service(kind)).await,
    }
}

/// `sockit user add|del|list`: edits the users file. Reading a password from the terminal and
/// hashing it both block, so the whole command runs on a blocking thread.
async fn user(args: cli::UserArgs) -> Result<()> {
    let interrupted = restore_terminal_on_interrupt()?;
    let result = tokio::task::spawn_blocking(move || user_blocking(args))
        .await
        .context("sockit user failed")?;
    interrupted.abort();
    result
}

fn user_blocking(args: cli::UserArgs) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match args.action {
        UserAction::Add {
            name,
            file,
            password_stdin,
        } => {
            let password = if password_stdin {
                password::from_stdin()?
            } else {
                password::ask_twice()?
            };
            let added = users::add_user(&file, &name, &password)?;
            let what = match added {
                users::Added::New => "added user",
                users::Added::Replaced => "changed the password of",
            };
            writeln!(stdout, "{what} {name} in {}", file.display())?;
        }
        UserAction::Del { name, file } => {
            users::remove_user(&file, &name)?;
            writeln!(stdout, "removed user {name} from {}", file.display())?;
        }
        UserAction::List { file } => {
            for name in users::list_users(&file)? {
                writeln!(stdout, "{name}")?;
            }
        }
    }
    stdout.flush()?;
    Ok(())
}

/// Ctrl-C while the terminal's echo is off for a password prompt: turn echo back on before
/// exiting, or the shell is left typing blind.
fn restore_terminal_on_interrupt() -> Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt =
        signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    Ok(tokio::spawn(async move {
        if interrupt.recv().await.is_some() {
            password::restore_echo();
            stderr_line("");
            std::process::exit(130);
        }
    }))
}

/// What a server runs, for its banner and log.
#[derive(Debug, Clone)]
enum Label {
    /// A service.
    Service(ServiceKind),
    /// `--exec`/`--sh-exec`: the command.
    Exec(String),
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Label::Service(kind) => write!(f, "{kind} service"),
            Label::Exec(cmd) => write!(f, "exec `{cmd}`"),
        }
    }
}

async fn serve_with<S: Service>(
    addr: Bind,
    config: ServerConfig,
    service: S,
    kind: Label,
) -> Result<()> {
    let (transport, framing) = (config.transport, config.framing);
    // The socket file of a unix server, removed again when the server stops cleanly.
    let (server, socket_file) = match &addr {
        Bind::Inet(inet) => {
            let server = Server::bind(*inet, config, service)
                .await
                .with_context(|| format!("cannot listen on {transport} {inet}"))?;
            (server, None)
        }
        Bind::Unix(name, mode) => unixexec::bind_unix(name, *mode, config, service)?,
        Bind::Unixgram(name, mode) => unixexec::bind_unixgram(name, *mode, config, service)?,
    };
    let local = server.local_addr();
    let unix = server.unix_name().cloned();
    // Handlers first: a signal sent as soon as the banner appears must already be caught.
    let shutdown = CancellationToken::new();
    let signals = Signals::install().context("cannot install signal handlers")?;
    tokio::spawn(signals.watch(shutdown.clone()));
    reload_on_hangup(server.service()).context("cannot install the SIGHUP handler")?;
    // The banner is a convenience: a closed stdout must not stop the server.
    if let Err(e) = print_banner(local, unix.as_ref(), transport, framing, &kind) {
        warn!("cannot print the banner: {e}");
    }
    let place = match &unix {
        Some(name) if transport == Transport::Udp => format!("unixgram:{name}"),
        Some(name) if TLS_BANNER.get().is_some() => format!("unix:{name} (tls)"),
        Some(name) => format!("unix:{name}"),
        None if TLS_BANNER.get().is_some() => format!("tls {local}"),
        None => format!("{transport} {local}"),
    };
    match &kind {
        Label::Exec(_) => info!("listening on {place}: {kind} per connection"),
        Label::Service(_) => info!("listening on {place}: {kind}, {framing} framing"),
    }
    // On a worker thread, not in `block_on` on the main thread: the worker that polls the
    // socket then runs the loop itself, with no cross-thread wake-up per datagram.
    let report = tokio::spawn(server.run(shutdown))
        .await
        .context("server task failed")?;
    match report.udp {
        Some(udp) => info!(
            "stopped: {} datagrams in, {} out, {} peers ({} evicted), {} replies rate-limited",
            udp.datagrams_in, udp.datagrams_out, udp.peers, udp.evicted, udp.rate_limited
        ),
        None => info!(
            "stopped: {} connections served, {} refused",
            report.connections, report.refused
        ),
    }
    drop(socket_file);
    if let Some(dropped) = LOG.get().map(LogSink::dropped).filter(|&n| n > 0) {
        warn!("{dropped} log line(s) could not be written to stderr");
    }
    Ok(())
}

/// Tells the user, on stdout, where the server is and how to reach it.
fn print_banner(
    local: SocketAddr,
    unix: Option<&UnixName>,
    transport: Transport,
    framing: Framing,
    kind: &Label,
) -> Result<()> {
    let exec = matches!(kind, Label::Exec(_));
    if let Some(name) = unix {
        let mut out = std::io::stdout().lock();
        if transport == Transport::Udp {
            writeln!(
                out,
                "sockit: {kind} listening on unixgram {name} (datagrams)"
            )?;
            writeln!(out, "{}", unixexec::unixgram_hint(name))?;
            out.flush()?;
            return Ok(());
        }
        let (how, framing_flag) = match (exec, framing) {
            (true, _) => ("raw bytes".to_owned(), String::new()),
            (false, Framing::Line) => ("line framing".to_owned(), String::new()),
            (false, f) => (format!("{f} framing"), format!(" --framing {f}")),
        };
        if matches!(kind, Label::Service(ServiceKind::Files)) {
            let tls = TLS_BANNER.get();
            writeln!(
                out,
                "sockit: {kind} listening on unix {name} ({}header framing)",
                if tls.is_some() { "tls, " } else { "" }
            )?;
            if let Some(tls) = tls {
                for line in tls.banner_at(&format!("unix:{name}"), " --framing header") {
                    writeln!(out, "{line}")?;
                }
            }
            writeln!(out, "{}", files_hint(&format!("unix:{name}"), tls))?;
        } else if let Some(tls) = TLS_BANNER.get() {
            writeln!(out, "sockit: {kind} listening on unix {name} (tls, {how})")?;
            for line in tls.banner_at(&format!("unix:{name}"), &framing_flag) {
                writeln!(out, "{line}")?;
            }
        } else {
            writeln!(out, "sockit: {kind} listening on unix {name} ({how})")?;
            writeln!(out, "{}", unixexec::unix_hint(name, &framing_flag))?;
        }
        out.flush()?;
        return Ok(());
    }
    if exec && TLS_BANNER.get().is_none() {
        let mut out = std::io::stdout().lock();
        let reach = match local.ip() {
            ip if ip.is_unspecified() && local.is_ipv4() => "127.0.0.1".to_owned(),
            ip if ip.is_unspecified() => "::1".to_owned(),
            ip => ip.to_string(),
        };
        let port = local.port();
        writeln!(
            out,
            "sockit: {kind} listening on {transport} {local} (raw bytes)"
        )?;
        writeln!(
            out,
            "connect with: sockit connect {reach} {port}  or:  nc {reach} {port}"
        )?;
        out.flush()?;
        return Ok(());
    }
    let files = matches!(kind, Label::Service(ServiceKind::Files));
    let reach = match local.ip() {
        ip if ip.is_unspecified() && local.is_ipv4() => "127.0.0.1".to_owned(),
        ip if ip.is_unspecified() => "::1".to_owned(),
        ip => ip.to_string(),
    };
    let port = local.port();
    let (udp_flag, nc_flag) = match transport {
        Transport::Udp => (" --udp", " -u"),
        Transport::Rudp => (" --rudp", ""),
        Transport::Tcp => ("", ""),
    };
    let framing_flag = match (transport, framing) {
        _ if exec => String::new(),
        (Transport::Tcp, Framing::Line) | (Transport::Udp | Transport::Rudp, _) => String::new(),
        (Transport::Tcp, f) => format!(" --framing {f}"),
    };
    let tls = TLS_BANNER.get();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "sockit: {kind} listening on {} {local} ({})",
        if tls.is_some() {
            "tls".to_owned()
        } else {
            transport.to_string()
        },
        if transport == Transport::Udp {
            "datagrams".to_owned()
        } else if transport == Transport::Rudp {
            "whole messages".to_owned()
        } else if exec {
            "raw bytes".to_owned()
        } else {
            format!("{framing} framing")
        }
    )?;
    if let Some(tls) = tls {
        for line in tls.banner(&reach, port, &framing_flag) {
            writeln!(out, "{line}")?;
        }
        writeln!(
            out,
            "or: openssl s_client -connect {}:{port}  |  ncat --ssl {reach} {port}",
            if reach.contains(':') {
                format!("[{reach}]")
            } else {
                reach.clone()
            }
        )?;
    }
    if files {
        let place = match tls {
            Some(_) if reach.contains(':') => format!("tls:[{reach}]:{port}"),
            Some(_) => format!("tls:{reach}:{port}"),
            None => format!("{reach} {port}"),
        };
        writeln!(out, "{}", files_hint(&place, tls))?;
        out.flush()?;
        return Ok(());
    }
    let nc = if transport == Transport::Rudp {
        String::new()
    } else if matches!(framing, Framing::Line | Framing::Raw) || transport == Transport::Udp {
        format!("  or:  nc{nc_flag} {reach} {port}")
    } else {
        String::new()
    };
    if tls.is_none() {
        writeln!(
            out,
            "connect with: sockit connect{udp_flag}{framing_flag} {reach} {port}{nc}"
        )?;
    }
    if let Some(line) = CLUSTER_BANNER.get() {
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(())
}

/// The banner line of a files server reached as `place`, pinning its certificate under TLS.
fn files_hint(place: &str, tls: Option<&sockit::tls::TlsServer>) -> String {
    // A tls: address says TLS by itself; a unix: one needs --tls.
    let flag = if place.starts_with("unix:") {
        " --tls"
    } else {
        ""
    };
    let pin = tls
        .map(|t| format!("{flag} --tls-pin {}", t.pin()))
        .unwrap_or_default();
    format!(
        "use: sockit send {place} FILE...{pin}  |  sockit get {place} NAME{pin}  |  sockit ls {place}{pin}"
    )
}

/// Re-reads the service's files (knowledge base, users) on every SIGHUP, off the async threads:
/// a large file takes a moment to index, and connections keep being served meanwhile.
fn reload_on_hangup<S: Service>(service: std::sync::Arc<S>) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            info!("SIGHUP received: reloading");
            let service = service.clone();
            let _ = tokio::task::spawn_blocking(move || service.reload()).await;
        }
    });
    Ok(())
}

/// SIGINT and SIGTERM, registered with the OS as soon as this is created.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }

    /// First signal: graceful shutdown. A second one: exit at once.
    async fn watch(mut self, shutdown: CancellationToken) {
        let name = self.next().await;
        info!("{name} received: shutting down (send it again to exit at once)");
        shutdown.cancel();
        let name = self.next().await;
        warn!("second signal ({name}): exiting now");
        std::process::exit(1);
    }
}

async fn connect(args: ConnectArgs) -> Result<()> {
    // Quiet unless asked: the output is the server's, the log only connection events.
    init_logging(args.verbose == 0, args.verbose.saturating_sub(1));
    let target = &args.target;
    if let Some(name) = target.unixgram() {
        let messages = args
            .messages
            .into_iter()
            .map(|m| Bytes::from(m.into_encoded_bytes()))
            .collect();
        let retries = args.retries.unwrap_or(cli::DEFAULT_RETRIES);
        return unixexec::connect_unixgram(&name, messages, args.timeout, retries).await;
    }
    let address = target.address().map_err(anyhow::Error::msg)?;
    let unix = target.unix();
    // Through a proxy, the name goes to the proxy unresolved (unless --proxy-dns local).
    let addrs = if unix.is_some() || extras::uses_proxy(&args) {
        Vec::new()
    } else {
        resolve_target(target).await?
    };
    let hex = extras::hex_sink(args.hex)?;
    // TLS first, then the proxy under it and the hex tap over it.
    let mut dial = client_dial(target, &args.tls, args.verbose > 0, true)?;
    dial.unix = unix;
    match address.inet() {
        Some((host, port)) => extras::connect_dial(&args, host, port, &hex, &mut dial),
        None => extras::hex_layer(&hex, &mut dial),
    }
    if let Some(command) = unixexec::exec_command(args.exec.as_deref(), args.sh_exec.as_deref())? {
        let code = unixexec::connect_exec(&addrs, &dial, args.timeout, command, interrupt_token()?)
            .await?;
        if code != 0 {
            if let Some(sink) = LOG.get() {
                sink.flush(Duration::from_millis(500));
            }
            std::process::exit(i32::from(code));
        }
        return Ok(());
    }
    let config = ClientConfig {
        transport: target.transport(),
        framing: target.framing(),
        limits: cli::limits(args.max_frame, sockit::codec::DEFAULT_MAX_LINE),
        timeout: args.timeout,
        retries: args.retries.unwrap_or(cli::DEFAULT_RETRIES),
        quit_after: args.quit_after,
        rudp: target.rudp_config(),
        dial,
        write_timeout: (!args.write_timeout.is_zero()).then_some(args.write_timeout),
    };
    let stdin = std::io::stdin();
    let input = if !args.messages.is_empty() {
        Input::Messages(
            args.messages
                .into_iter()
                .map(|m| Bytes::from(m.into_encoded_bytes()))
                .collect(),
        )
    } else if stdin.is_terminal() {
        Input::Lines {
            reader: Box::new(BufReader::new(stdin)),
            mode: LineMode::Interactive,
        }
    } else if config.transport == Transport::Rudp && !args.wait_reply {
        // rudp keeps message boundaries: every line is one message, replies as they come.
        Input::Lines {
            reader: Box::new(BufReader::with_capacity(64 * 1024, stdin)),
            mode: LineMode::Stream,
        }
    } else if args.wait_reply || config.transport == Transport::Udp {
        Input::Lines {
            reader: Box::new(BufReader::new(stdin)),
            mode: LineMode::WaitReply,
        }
    } else if matches!(config.framing, Framing::Raw | Framing::Line) {
        // The byte pipe: plain files on the standard descriptors, so that std's copy can
        // splice(2) or sendfile(2) them.
        let input = File::from(
            stdin
                .as_fd()
                .try_clone_to_owned()
                .context("standard input")?,
        );
        let output = File::from(
            std::io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .context("standard output")?,
        );
        client::pipe(&addrs, &config, input, output).await?;
        return Ok(());
    } else {
        Input::Lines {
            reader: Box::new(BufReader::with_capacity(64 * 1024, stdin)),
            mode: LineMode::Stream,
        }
    };
    client::run(&addrs, &config, input, tokio::io::stdout()).await?;
    Ok(())
}

async fn bench(args: BenchArgs) -> Result<()> {
    // Warnings only by default: the report is the output.
    init_logging(args.verbose == 0, args.verbose);
    match raise_fd_limit() {
        // Each client holds one descriptor; a few more are the runtime's and stdio.
        Ok(limit) if args.conns as u64 + 16 > limit => warn!(
            "--conns {} is more than the open file limit ({limit}) allows: \
             some clients will fail to connect (raise it with ulimit -n)",
            args.conns
        ),
        Ok(_) => {}
        Err(e) => warn!("cannot raise the open file limit: {e}"),
    }
    let target = &args.target;
    if args.chat && (args.tls.tls || args.tls.any_setting() || target.is_tls()) {
        bail!("bench --chat does not speak TLS yet: load a plain TCP chat server");
    }
    if args.chat {
        let mut addrs = Vec::new();
        for address in cli::chat_targets(&args).map_err(anyhow::Error::msg)? {
            let (host, port) = address
                .inet()
                .ok_or_else(|| anyhow::anyhow!("{address}: not an internet address"))?;
            addrs.push(resolve_all(host, port).await?[0]);
        }
        return bench_chat(&args, addrs).await;
    }
    let unix = target.unix();
    let addr = match unix {
        // The unix socket is in `dial`; the address is unused.
        Some(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        None => resolve_target(target).await?[0],
    };
    // --reconnect measures handshakes: full ones, not resumed sessions.
    let mut dial = client_dial(target, &args.tls, false, !args.reconnect)?;
    dial.unix = unix;
    let config = BenchConfig {
        addr,
        transport: target.transport(),
        conns: args.conns,
        duration: args.duration,
        count: args.count.map(|n| n as u64),
        size: args.size,
        framing: target.framing(),
        timeout: args.timeout,
        rate: args.rate,
        rudp: target.rudp_config(),
        dial,
        reconnect: args.reconnect,
    };
    let report = bench::run(&config, interrupt_token()?).await?;
    finish_bench(
        args.json,
        serde_json::to_string(&report)?,
        report.to_string(),
        report.interrupted,
        report.failure(),
    )
}

/// How `connect` and `bench` reach `target`: with TLS (by --tls or a tls: address) a TLS
/// layer verifying the host as typed (`verbose`: describing the session on stderr; `resume`:
/// resuming earlier sessions).
fn client_dial(
    target: &cli::Target,
    tls: &tls_args::ClientTls,
    verbose: bool,
    resume: bool,
) -> Result<sockit::transport::stream::Dial> {
    let Some(client) = tls.build(target.is_tls(), resume)? else {
        return Ok(Default::default());
    };
    if target.transport() != Transport::Tcp {
        bail!("TLS runs over TCP: it cannot be used with --udp or --rudp");
    }
    let address = target.address().map_err(anyhow::Error::msg)?;
    // Over a unix socket there is no host: the server's certificate is checked for
    // `localhost` (which sockit's own certificates name), unless --tls-sni names another.
    let (host, port) = match address.inet() {
        Some((host, port)) => (host.to_string(), port),
        None => ("localhost".to_owned(), 0),
    };
    let client = std::sync::Arc::unwrap_or_clone(client).verbose(verbose);
    Ok(sockit::transport::stream::Dial {
        target: Some((host, port)),
        layers: vec![std::sync::Arc::new(client)],
        ..Default::default()
    })
}

/// Ctrl-C stops the work (bench clients, ping probes) and still prints what was done; a second
/// one exits at once.
fn interrupt_token() -> Result<CancellationToken> {
    let cancel = CancellationToken::new();
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot install the SIGINT handler")?;
    let on_interrupt = cancel.clone();
    tokio::spawn(async move {
        interrupt.recv().await;
        on_interrupt.cancel();
        interrupt.recv().await;
        std::process::exit(130);
    });
    Ok(cancel)
}

/// `sockit bench --chat`.
async fn bench_chat(args: &BenchArgs, addrs: Vec<SocketAddr>) -> Result<()> {
    let config = bench::chat::ChatBenchConfig {
        addrs,
        conns: args.conns,
        count: args.count.map_or(bench::chat::DEFAULT_COUNT, |n| n as u64),
        timeout: args.timeout,
    };
    let report = bench::chat::run(&config, interrupt_token()?).await?;
    finish_bench(
        args.json,
        serde_json::to_string(&report)?,
        report.to_string(),
        report.interrupted,
        report.failure(),
    )
}

/// Prints a bench report (JSON or text) and turns its verdict into the exit status.
fn finish_bench(
    json: bool,
    json_text: String,
    plain: String,
    interrupted: bool,
    failure: Option<String>,
) -> Result<()> {
    let text = if json { json_text } else { plain };
    let written = {
        let mut out = std::io::stdout().lock();
        out.write_all(format!("{text}\n").as_bytes())
            .and_then(|()| out.flush())
    };
    // A closed stdout loses the report, not the verdict.
    if let Err(e) = written {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e).context("cannot write the report");
        }
    }
    if interrupted {
        if let Some(why) = &failure {
            let _ = writeln!(std::io::stderr(), "sockit: error: {why}");
        }
        std::process::exit(130);
    }
    match failure {
        Some(why) => bail!(why),
        None => Ok(()),
    }
}

/// `sockit ip`: one report per address, in order (arguments were validated by `cli::parse`).
fn ip(args: &cli::IpArgs) -> Result<()> {
    let inputs = args.inputs().map_err(anyhow::Error::msg)?;
    let mut out = std::io::stdout().lock();
    for (i, input) in inputs.iter().enumerate() {
        let report = sockit::net::ip::report(input);
        if args.json {
            writeln!(out, "{}", serde_json::to_string(&report)?)?;
        } else {
            if i > 0 {
                writeln!(out)?;
            }
            writeln!(out, "{report}")?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Writes one line to stdout (flushed, so `ping` lines appear as they happen).
pub(crate) fn print_line(line: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()
}

/// Ends a command that printed its results but failed for some inputs: every failure but the
/// last is printed here, the last becomes the error main prints (exit 1).
pub(crate) fn fail_after(mut failures: Vec<String>) -> Result<()> {
    match failures.pop() {
        None => Ok(()),
        Some(last) => {
            for f in failures {
                stderr_line(&format!("sockit: error: {f}"));
            }
            bail!(last)
        }
    }
}

/// `sockit port`: answers every query in order; an unknown name is an error (exit 1) after the
/// others are answered.
fn port(args: PortArgs) -> Result<()> {
    use sockit::net::services;
    let ephemeral = services::ephemeral_range();
    let mut failures = Vec::new();
    for (input, query) in &args.queries {
        match services::lookup(query, input, ephemeral) {
            Ok(infos) => {
                for info in infos {
                    let line = if args.json {
                        serde_json::to_string(&info)?
                    } else {
                        info.to_string()
                    };
                    print_line(&line)?;
                }
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    fail_after(failures)
}

/// `sockit resolve`: forward (`NAME`), reverse (`-r ADDR`) or `--fqdn` lookups through the
/// system resolver; a failed lookup is reported after the others (exit 1).
async fn resolve_names(args: ResolveArgs) -> Result<()> {
    use serde_json::json;
    use sockit::net::lookup;
    let blocking = |f: Box<dyn FnOnce() -> serde_json::Value + Send>| async move {
        tokio::task::spawn_blocking(f)
            .await
            .context("the resolver thread failed")
    };
    let mut failures = Vec::new();
    let mut report = |value: serde_json::Value, text: String, error: Option<String>| {
        let line = if args.json { value.to_string() } else { text };
        if let Some(e) = error {
            failures.push(e);
            // Without --json a failure is only the error line on stderr.
            if !args.json {
                return Ok(());
            }
        }
        print_line(&line)
    };
    if args.fqdn {
        let value = blocking(Box::new(|| match lookup::local_fqdn() {
            Ok(name) => json!({"type": "fqdn", "hostname": name.hostname, "fqdn": name.fqdn}),
            Err(e) => json!({"type": "fqdn", "error": e.to_string()}),
        }))
        .await?;
        let error = value["error"].as_str().map(str::to_owned);
        let text = value["fqdn"].as_str().unwrap_or_default().to_owned();
        report(value, text, error)?;
        return fail_after(failures);
    }
    for input in &args.names {
        let name = input.clone();
        let value = if args.reverse {
            let bare = name
                .strip_prefix('[')
                .and_then(|n| n.strip_suffix(']'))
                .unwrap_or(&name)
                .to_owned();
            blocking(Box::new(move || {
                let result = bare
                    .parse()
                    .map_err(|_| format!("'{name}' is not an IP address"))
                    .and_then(|ip| lookup::reverse(ip).map_err(|e| e.to_string()));
                match result {
                    Ok(host) => json!({"type": "reverse", "input": name, "name": host}),
                    Err(e) => json!({"type": "reverse", "input": name, "error": e}),
                }
            }))
            .await?
        } else {
            blocking(Box::new(move || match lookup::forward(&name) {
                Ok(found) => json!({
                    "type": "forward",
                    "input": name,
                    "canonical": found.canonical,
                    "addresses": found.addresses,
                }),
                Err(e) => json!({"type": "forward", "input": name, "error": e.to_string()}),
            }))
            .await?
        };
        let error = value["error"].as_str().map(str::to_owned);
        let text = if args.reverse {
            format!("{input} {}", value["name"].as_str().unwrap_or_default())
        } else {
            let addrs: Vec<&str> = value["addresses"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            addrs
                .iter()
                .map(|a| format!("{input} {a}"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        report(value, text, error)?;
    }
    fail_after(failures)
}

/// `sockit ping`: one line per probe, then the summary; exit 1 when no probe got an answer.
async fn ping(args: PingArgs) -> Result<()> {
    use sockit::net::{Endpoint, Scheme};
    use sockit::ping::{self, PingConfig, Probing};
    let address = args.target().map_err(anyhow::Error::msg)?;
    let udp = args.is_udp();
    let tls = args.tls.build(address.scheme == Scheme::Tls, false)?;
    if tls.is_some() && udp {
        bail!("TLS runs over TCP: it cannot be used with --udp");
    }
    let protocol = match (&address.endpoint, tls.is_some()) {
        (_, true) => "tls",
        (Endpoint::Unix(_), false) => "unix",
        _ if udp => "udp",
        _ => "tcp",
    };
    let (dial, addrs) = transfer::stream_dial(&address, tls).await?;
    let (name, shown) = match (&address.endpoint, addrs.first()) {
        (Endpoint::Inet { host, .. }, Some(addr)) => (addr.to_string(), format!("{host} ({addr})")),
        _ => (address.to_string(), address.to_string()),
    };
    let probing = match (protocol, addrs.first()) {
        ("udp", Some(addr)) => Probing::Udp(*addr),
        ("tcp", Some(addr)) => Probing::Tcp(*addr),
        _ => Probing::Dial {
            dial,
            addrs,
            protocol,
        },
    };
    let config = PingConfig {
        name: name.clone(),
        probing,
        count: (!args.forever).then_some(args.count),
        interval: args.interval,
        timeout: args.timeout,
    };
    if !args.json {
        let via = match config.probing.protocol() {
            "udp" => "udp round trip",
            "tls" => "tls connect and handshake",
            "unix" => "unix connect",
            _ => "tcp connect",
        };
        print_line(&format!("PING {shown} {via}"))?;
    }
    let json = args.json;
    let cancel = interrupt_token()?;
    let summary = ping::run(&config, cancel, |probe| {
        let line = if json {
            serde_json::to_string(probe).map_err(std::io::Error::other)?
        } else {
            probe.to_string()
        };
        print_line(&line)
    })
    .await?;
    let text = if json {
        serde_json::to_string(&summary)?
    } else {
        format!("\n{summary}")
    };
    print_line(&text)?;
    if summary.received == 0 && summary.sent > 0 {
        bail!(
            "no answer from {name} ({} of {} probes lost)",
            summary.sent,
            summary.sent
        );
    }
    Ok(())
}

/// `sockit scan`: resolves the host, scans, prints the open ports and a summary (or one JSON
/// object). Exit 0 whenever the scan completed, whatever it found.
async fn scan(args: cli::ScanArgs) -> Result<()> {
    use sockit::scan::{self, Protocol, ScanConfig};
    let ports = cli::scan_ports(&args).map_err(anyhow::Error::msg)?;
    let ip = resolve(&args.host, 0)
        .await
        .with_context(|| format!("cannot scan {}", args.host))?[0]
        .ip();
    let protocol = if args.udp {
        Protocol::Udp
    } else {
        Protocol::Tcp
    };
    let config = ScanConfig {
        ip,
        ports,
        protocol,
        timeout: args.timeout,
        concurrency: args
            .concurrency
            .map_or(scan::DEFAULT_CONCURRENCY, |n| n as usize),
    };
    let report = scan::scan(&config)
        .await
        .with_context(|| format!("scan of {ip} failed"))?;
    // The host as given, without the brackets an IPv6 address gets in `host:port` forms.
    let host = match &args.host {
        Host::Ip(ip) => ip.to_string(),
        Host::Name(name) => name.clone(),
    };
    let text = if args.json {
        let value = serde_json::json!({
            "host": host,
            "address": ip.to_string(),
            "ports": report.open,
            "summary": report.summary,
        });
        format!("{value}\n")
    } else {
        let mut text = String::new();
        if !report.open.is_empty() {
            text.push_str("PORT         STATE  SERVICE\n");
            for p in &report.open {
                let port = format!("{}/{}", p.port, p.protocol);
                text.push_str(&format!(
                    "{port:<12} {:<6} {}\n",
                    p.state.to_string(),
                    p.service.unwrap_or("unknown")
                ));
            }
        }
        let s = &report.summary;
        let silent = if args.udp {
            "open|filtered"
        } else {
            "filtered"
        };
        let target = if host == ip.to_string() {
            host
        } else {
            format!("{host} ({ip})")
        };
        text.push_str(&format!(
            "scanned {} {protocol} port{} of {target}: {} open, {} closed, {} {silent} in {:.2} s\n",
            s.scanned,
            if s.scanned == 1 { "" } else { "s" },
            s.open,
            s.closed,
            s.filtered,
            s.seconds
        ));
        text
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write the scan report")
}
