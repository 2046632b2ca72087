//! `sockit relay`: builds a [`RelayConfig`] from the arguments, prints the banner, runs until
//! Ctrl-C or SIGTERM.

use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, Result};
use sockit::logging::LogSink;
use sockit::net::{Address, Scheme};
use sockit::relay::api::Api;
use sockit::relay::{ConnRecord, Inspect, Relay, RelayConfig};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cli::RelayArgs;

/// Runs `sockit relay`.
pub async fn relay(args: RelayArgs) -> Result<()> {
    crate::init_logging(args.quiet, args.verbose);
    let addresses = args.addresses().map_err(anyhow::Error::msg)?;
    if let Err(e) = sockit::server::raise_fd_limit() {
        warn!("cannot raise the open file limit: {e}");
    }
    let hex = if args.hex {
        Some(LogSink::stderr().context("cannot start the --hex writer")?)
    } else {
        None
    };
    let trace = match &args.trace {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("cannot create the trace file {}", path.display()))?;
            Some(
                LogSink::spawn(std::io::BufWriter::new(file))
                    .context("cannot start the trace writer")?,
            )
        }
        None => None,
    };
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    let json = args.json;
    let records: Arc<dyn Fn(&ConnRecord) + Send + Sync> = if json {
        Arc::new(|r: &ConnRecord| {
            if let Ok(line) = serde_json::to_string(r) {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        })
    } else {
        Arc::new(|r: &ConnRecord| info!("{r}"))
    };
    let inspect = Arc::new(Inspect {
        hex: hex.clone(),
        framing: args.framing,
        trace: trace.clone(),
    });
    let faults = args.fault.clone();
    let placeholder = || Address::parse("127.0.0.1:0", None).expect("literal address");
    let (listen, target) = addresses
        .clone()
        .unwrap_or_else(|| (placeholder(), placeholder()));
    let tls_host = match &listen.endpoint {
        sockit::net::Endpoint::Inet { host, .. } => host.to_string(),
        sockit::net::Endpoint::Unix(_) => String::new(),
    };
    let (listen_tls, target_tls) = args.tls.build(
        listen.scheme == Scheme::Tls,
        target.scheme == Scheme::Tls,
        &tls_host,
    )?;
    let config = RelayConfig {
        listen: listen.clone(),
        target: target.clone(),
        max_conns: args.max_conns,
        allow: args.allow.clone(),
        deny: args.deny.clone(),
        idle_timeout: args.idle_timeout,
        connect_timeout: args.connect_timeout,
        udp_flows: args.udp_flows,
        no_splice: args.no_splice,
        proxy_send: args.proxy_send,
        proxy_accept: args.proxy_accept,
        inspect,
        faults: sockit::relay::fault::FaultSet::fixed(faults),
        seed,
        records,
        listen_tls: listen_tls.clone(),
        target_tls,
    };
    let shutdown = CancellationToken::new();
    let signals = crate::Signals::install().context("cannot install signal handlers")?;
    tokio::spawn(signals.watch(shutdown.clone()));
    if !args.fault.is_empty() {
        let list: Vec<String> = args.fault.iter().map(ToString::to_string).collect();
        info!("faults (seed {seed}): {}", list.join(" | "));
    }
    if let Some(api_addr) = &args.api {
        return serve_api(api_addr, config, addresses.is_some(), json, shutdown).await;
    }
    let relay = Relay::bind(config)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let banner = if json {
        serde_json::json!({"event": "listening", "listen": relay.local(), "target": target.to_string()})
            .to_string()
    } else {
        format!("sockit: relay listening on {} -> {target}", relay.local())
    };
    print_line(&banner);
    if let (Some(tls), false) = (&listen_tls, json) {
        let port = relay
            .local()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let host = if tls_host.is_empty() || tls_host == "0.0.0.0" {
            "127.0.0.1".to_owned()
        } else if tls_host == "::" {
            "::1".to_owned()
        } else {
            tls_host.clone()
        };
        for line in tls.banner(&host, port, "") {
            print_line(&line);
        }
    }
    let report = tokio::spawn(relay.run(shutdown))
        .await
        .context("relay task failed")?;
    info!(
        "stopped: {} relayed, {} refused, {} could not reach the target",
        report.relayed, report.refused, report.target_failed
    );
    for (what, sink) in [("--hex", &hex), ("--trace", &trace)] {
        if let Some(sink) = sink {
            sink.flush(std::time::Duration::from_secs(2));
            if sink.dropped() > 0 {
                warn!(
                    "{what}: {} record(s) dropped (writer too slow)",
                    sink.dropped()
                );
            }
        }
    }
    Ok(())
}

fn print_line(line: &str) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        warn!("cannot print the banner");
    }
}

/// `--api`: the HTTP API, with the command line's proxy (if any) as "default".
async fn serve_api(
    addr: &str,
    config: RelayConfig,
    with_default: bool,
    json: bool,
    shutdown: CancellationToken,
) -> Result<()> {
    let address = Address::parse(addr, None).map_err(anyhow::Error::msg)?;
    let (host, port) = address
        .inet()
        .ok_or_else(|| anyhow::anyhow!("--api {addr}: not an internet address"))?;
    let bind = crate::resolve_all(host, port).await?[0];
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen on {bind} for the API"))?;
    let local = listener.local_addr()?;
    let (listen, target) = (config.listen.to_string(), config.target.to_string());
    let api = Api::new(config);
    let default = if with_default {
        Some(
            api.create("default", &listen, &target, true)
                .await
                .map_err(anyhow::Error::msg)?,
        )
    } else {
        None
    };
    let banner = if json {
        serde_json::json!({"event": "api", "api": format!("http://{local}"), "default": default})
            .to_string()
    } else {
        match &default {
            Some(d) => format!(
                "sockit: relay API listening on http://{local} (proxy default: {} -> {target})",
                d["listen"].as_str().unwrap_or_default()
            ),
            None => format!("sockit: relay API listening on http://{local} (no proxies yet)"),
        }
    };
    print_line(&banner);
    api.serve(listener, shutdown).await;
    info!("stopped");
    Ok(())
}
