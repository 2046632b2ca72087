//! `connect --proxy`, `--hex` on `connect` and `serve`, `sockit completions` and `sockit man`:
//! turning those arguments into the library's dial settings and server upgrades, and printing
//! the generated completion scripts and man pages.

use std::io::Write;
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result};
use clap::CommandFactory;
use sockit::logging::LogSink;
use sockit::net::Host;
use sockit::proxy::Proxy;
use sockit::transport::hex::{HexLayer, HexUpgrade};
use sockit::transport::stream::{Dial, Upgrade};

use crate::cli::{Cli, CompletionsArgs, ConnectArgs, ManArgs};

/// The `--hex` dump's writer, kept to flush it before exiting.
static HEX: OnceLock<LogSink> = OnceLock::new();

/// The `--hex` dump's own writer (apart from the log, so its lines are never filtered), when
/// `on`.
pub fn hex_sink(on: bool) -> Result<Option<LogSink>> {
    if !on {
        return Ok(None);
    }
    if let Some(sink) = HEX.get() {
        return Ok(Some(sink.clone()));
    }
    let sink = LogSink::stderr().context("cannot start the --hex writer")?;
    Ok(Some(HEX.get_or_init(|| sink).clone()))
}

/// Waits (briefly) for the last dump lines to reach stderr before the process exits.
pub fn flush_hex() {
    if let Some(sink) = HEX.get() {
        sink.flush(std::time::Duration::from_secs(2));
    }
}

/// `serve --hex`: the upgrade to push LAST onto `ServerConfig::upgrades` (after TLS, so the
/// dump shows plaintext).
pub fn serve_hex(sink: Option<LogSink>) -> Option<Arc<dyn Upgrade>> {
    sink.map(|sink| Arc::new(HexUpgrade::new(sink)) as Arc<dyn Upgrade>)
}

/// Whether `connect` goes through a proxy (then the server's name is not resolved here).
pub fn uses_proxy(args: &ConnectArgs) -> bool {
    args.proxy.is_some()
}

/// Adds `--proxy` and `--hex` to `dial`. The hex tap is pushed last, so it must be called
/// after any other layer (TLS) has been added. `host`/`port` are the server as typed.
pub fn connect_dial(
    args: &ConnectArgs,
    host: &Host,
    port: u16,
    hex: &Option<LogSink>,
    dial: &mut Dial,
) {
    if let Some(spec) = &args.proxy {
        dial.via = Some(Arc::new(Proxy {
            spec: spec.clone(),
            dns: args.proxy_dns,
        }));
    }
    if dial.target.is_none() {
        let name = match host {
            Host::Ip(ip) => ip.to_string(),
            Host::Name(name) => name.clone(),
        };
        dial.target = Some((name, port));
    }
    hex_layer(hex, dial);
}

/// Adds the `--hex` tap over every other layer (for a unix socket, the only thing to add).
pub fn hex_layer(hex: &Option<LogSink>, dial: &mut Dial) {
    if let Some(sink) = hex {
        dial.layers.push(Arc::new(HexLayer::new(sink.clone())));
    }
}

/// `sockit completions SHELL`.
pub fn completions(args: &CompletionsArgs) -> Result<()> {
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "sockit", &mut out);
    write_stdout(&out)
}

/// `sockit man [--out DIR]`.
pub fn man(args: &ManArgs) -> Result<()> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    match &args.out {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let mut written = 0;
            write_pages(&cmd, dir, &mut written)
                .with_context(|| format!("cannot write the man pages into {}", dir.display()))?;
            eprintln!("wrote {written} man pages into {}", dir.display());
            Ok(())
        }
        None => write_stdout(&render_page(cmd)?),
    }
}

/// One page, with its `.TH` title line first (clap_mangen puts a string definition before
/// it; a page is expected to begin with its title).
fn render_page(cmd: clap::Command) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut out)
        .context("cannot render the man page")?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let mut lines: Vec<&str> = text.lines().collect();
    if let Some(i) = lines.iter().position(|l| l.starts_with(".TH ")) {
        let title = lines.remove(i);
        lines.insert(0, title);
    }
    let mut page = lines.join("\n");
    page.push('\n');
    Ok(page.into_bytes())
}

/// Writes `cmd`'s page and, recursively, one per visible subcommand (`sockit-serve.1`, …).
fn write_pages(cmd: &clap::Command, dir: &std::path::Path, written: &mut usize) -> Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir, written)?;
    }
    let name = clap_mangen::Man::new(cmd.clone()).get_filename();
    std::fs::write(dir.join(&name), render_page(cmd.clone())?)
        .with_context(|| format!("cannot write {name}"))?;
    *written += 1;
    Ok(())
}

/// Writes all of `bytes` to stdout (a closed pipe, as in `| head`, is not an error).
fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write to stdout")
        }
        _ => Ok(()),
    }
}
