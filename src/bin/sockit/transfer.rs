//! `sockit send`, `get` and `ls`: the file-transfer client commands. A progress bar on stderr
//! when it is a terminal; a one-line summary per file in any case.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use sockit::files::client::{Client, Listed, Output, TransferError, format_mtime};
use sockit::files::{FileName, progress_bar, summary};
use sockit::logging::stderr_line;
use sockit::net::{Address, Endpoint, Scheme};
use sockit::transport::stream::Dial;

use crate::cli::{GetArgs, LsArgs, SendArgs};
use crate::tls_args::ClientTls;
use crate::{fail_after, print_line, resolve_all};

/// How to reach a stream address (`HOST PORT` or `unix:PATH`), with `tls` as a layer when
/// given: the dial and the resolved addresses (none for a unix socket). Over a unix socket a
/// certificate is checked for `localhost`, the name sockit's own certificates carry.
pub async fn stream_dial(
    address: &Address,
    tls: Option<std::sync::Arc<sockit::tls::TlsClient>>,
) -> Result<(Dial, Vec<std::net::SocketAddr>)> {
    let mut dial = Dial::default();
    let (addrs, host) = match (&address.endpoint, address.inet()) {
        (Endpoint::Unix(name), _) => {
            dial.unix = Some(name.clone());
            (Vec::new(), ("localhost".to_owned(), 0))
        }
        (_, Some((host, port))) => (resolve_all(host, port).await?, (host.to_string(), port)),
        (_, None) => bail!("'{address}' is not a HOST and PORT nor a unix:PATH"),
    };
    if let Some(client) = tls {
        dial.target = Some(host);
        dial.layers.push(client);
    }
    Ok((dial, addrs))
}

/// Where the file server is and how to reach it: a plain TCP address, or a dial that goes
/// over a unix socket and/or TLS (by `--tls` or a `tls:` address).
enum Server {
    Tcp(std::net::SocketAddr),
    Dial(Dial, Vec<std::net::SocketAddr>),
}

impl Server {
    async fn resolve(address: &Address, tls: &ClientTls) -> Result<Server> {
        let tls = tls.build(address.scheme == Scheme::Tls, false)?;
        let plain = tls.is_none() && address.inet().is_some();
        let (dial, addrs) = stream_dial(address, tls).await?;
        Ok(if plain {
            Server::Tcp(addrs[0])
        } else {
            Server::Dial(dial, addrs)
        })
    }

    async fn connect(&self, timeout: std::time::Duration) -> Result<Client, TransferError> {
        match self {
            Server::Tcp(addr) => Client::connect(*addr, timeout).await,
            Server::Dial(dial, addrs) => Client::connect_dial(dial, addrs, timeout).await,
        }
    }
}

/// `sockit send`: every PATH in order over one connection (a new one after a failure that
/// closed it); exit 1 if any file failed, after trying the rest.
pub async fn send(args: SendArgs) -> Result<()> {
    let (address, paths) = args.split().map_err(anyhow::Error::msg)?;
    let mut failures = Vec::new();
    let mut plan = Vec::new();
    for path in paths {
        if let Err(e) = collect(path, args.recursive, &mut plan) {
            failures.push(e);
        }
    }
    if plan.is_empty() && failures.is_empty() {
        bail!("nothing to send: the directories given hold no files");
    }
    let server = Server::resolve(&address, &args.tls).await?;
    let visible = std::io::stderr().is_terminal();
    let mut client: Option<Client> = None;
    for (path, name) in plan {
        let conn = match &mut client {
            Some(c) => c,
            None => match server.connect(args.timeout).await {
                Ok(c) => client.insert(c),
                Err(e) => {
                    failures.push(e.to_string());
                    return fail_after(failures);
                }
            },
        };
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let bar = progress_bar(size, name.as_str(), visible);
        match conn.send_file(&path, &name, &bar).await {
            Ok(done) => {
                bar.finish_and_clear();
                stderr_line(&summary(
                    "sent",
                    &done.name,
                    done.bytes,
                    done.elapsed,
                    &done.blake3,
                    done.resumed_at,
                ));
            }
            Err(e) => {
                bar.abandon();
                failures.push(about(&path.display().to_string(), name.as_str(), &e));
                if e.is_fatal() {
                    client = None;
                }
            }
        }
    }
    if let Some(c) = client {
        c.close().await;
    }
    fail_after(failures)
}

/// Adds `path` to the plan: a file under its own name, or with `recursive` every file of a
/// tree under `DIRNAME/relative/path`. Symlinks inside a tree are skipped with a warning.
fn collect(
    path: &Path,
    recursive: bool,
    plan: &mut Vec<(PathBuf, FileName)>,
) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let base = base_name(path)?;
    if meta.is_file() {
        let name = FileName::parse(&base, false).map_err(|e| format!("{}: {e}", path.display()))?;
        plan.push((path.to_owned(), name));
        return Ok(());
    }
    if !meta.is_dir() {
        return Err(format!("{}: not a regular file", path.display()));
    }
    if !recursive {
        return Err(format!(
            "{}: is a directory (use -r to send a tree)",
            path.display()
        ));
    }
    let mut stack = vec![(path.to_owned(), base)];
    let mut found = Vec::new();
    while let Some((dir, prefix)) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut entries: Vec<_> = entries.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let p = entry.path();
            let Some(part) = entry.file_name().to_str().map(str::to_owned) else {
                return Err(format!("{}: the name is not UTF-8", p.display()));
            };
            let rel = format!("{prefix}/{part}");
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push((p, rel)),
                Ok(t) if t.is_file() => {
                    let name =
                        FileName::parse(&rel, true).map_err(|e| format!("{}: {e}", p.display()))?;
                    found.push((p, name));
                }
                Ok(t) if t.is_symlink() => {
                    stderr_line(&format!(
                        "sockit: warning: {}: symbolic link skipped",
                        p.display()
                    ));
                }
                _ => stderr_line(&format!(
                    "sockit: warning: {}: not a regular file, skipped",
                    p.display()
                )),
            }
        }
    }
    found.sort_by(|a, b| a.1.as_str().cmp(b.1.as_str()));
    plan.extend(found);
    Ok(())
}

/// The last component of `path` (of its absolute form for `.` and `..`).
fn base_name(path: &Path) -> Result<String, String> {
    let named = match path.file_name() {
        Some(n) => n.to_owned(),
        None => std::fs::canonicalize(path)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_owned()))
            .ok_or_else(|| format!("{}: has no name to send it under", path.display()))?,
    };
    named
        .to_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("{}: the name is not UTF-8", path.display()))
}

/// The error line for a transfer of `name` (`what` locally): prefixed with `what`, unless the
/// server's own message already starts with the name.
fn about(what: &str, name: &str, e: &TransferError) -> String {
    let msg = e.to_string();
    if msg.starts_with(name) {
        msg
    } else {
        format!("{what}: {msg}")
    }
}

/// `sockit get`.
pub async fn get(args: GetArgs) -> Result<()> {
    let (address, name) = args.split().map_err(anyhow::Error::msg)?;
    let checked = FileName::parse(name, true).map_err(|e| anyhow::anyhow!("bad NAME: {e}"))?;
    let (_, last) = checked.split_last();
    let output = match &args.output {
        Some(p) if p.as_os_str() == "-" => Output::Stdout,
        Some(p) if p.is_dir() => Output::File(p.join(last)),
        Some(p) => Output::File(p.clone()),
        None => Output::File(PathBuf::from(last)),
    };
    let server = Server::resolve(&address, &args.tls).await?;
    let mut client = server.connect(args.timeout).await?;
    let bar = progress_bar(0, name, std::io::stderr().is_terminal());
    match client.get_file(name, &output, &bar).await {
        Ok(done) => {
            bar.finish_and_clear();
            client.close().await;
            stderr_line(&summary(
                "received",
                &done.name,
                done.bytes,
                done.elapsed,
                &done.blake3,
                0,
            ));
            Ok(())
        }
        Err(TransferError::OutputClosed) => {
            bar.abandon();
            Ok(())
        }
        Err(e) => {
            bar.abandon();
            bail!(about(name, name, &e))
        }
    }
}

/// `sockit ls`.
pub async fn ls(args: LsArgs) -> Result<()> {
    let address = args.address().map_err(anyhow::Error::msg)?;
    let server = Server::resolve(&address, &args.tls).await?;
    let mut client = server.connect(args.timeout).await?;
    let mut failed = None;
    let json = args.json;
    client
        .list(|entry: Listed| {
            if failed.is_some() {
                return;
            }
            let line = if json {
                serde_json::to_string(&entry).unwrap_or_default()
            } else {
                format!(
                    "{:>14}  {}  {}",
                    entry.size,
                    format_mtime(entry.mtime),
                    entry.name
                )
            };
            if let Err(e) = print_line(&line) {
                failed = Some(e);
            }
        })
        .await?;
    client.close().await;
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}
