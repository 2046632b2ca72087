//! Command-line parsing: clap definitions, value parsers, and the checks that turn raw
//! arguments into validated settings. Every rejection names the argument at fault, says why,
//! shows the usage line of the subcommand, and exits with status 2.

use std::ffi::OsString;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{ArgAction, Args, CommandFactory, Parser, Subcommand};
use sockit::net::{Host, parse_host, parse_port};
use sockit::server::{DEFAULT_HOST, DEFAULT_MAX_CONNS, DEFAULT_PORT};
use sockit::{Framing, ServiceKind, Transport};

/// sockit: a socket toolkit for building, testing and debugging TCP and UDP programs.
#[derive(Debug, Parser)]
#[command(
    name = "sockit",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a server (echo or ack) over TCP or UDP.
    Serve(ServeArgs),
    /// Connect to a server: send messages or lines, print what comes back.
    Connect(ConnectArgs),
    /// Load-test an echo server with concurrent ping-pong clients.
    Bench(BenchArgs),
}

/// `sockit serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1]; a lone number is taken as the PORT
    #[arg(value_name = "HOST")]
    pub host: Option<String>,
    /// Port to listen on, 0 for any free port [default: 9000]
    #[arg(value_name = "PORT")]
    pub port: Option<String>,
    /// Serve UDP instead of TCP (every datagram is a message)
    #[arg(long)]
    pub udp: bool,
    /// What to answer: echo (the message back) or ack (a timestamped receipt)
    #[arg(long, default_value = "echo", value_parser = parse_service)]
    pub service: ServiceKind,
    /// How messages are delimited on TCP: raw, line, len8, len16[le], len32[le], len64[le],
    /// header[le] [default: line]
    #[arg(long, value_name = "FRAMING", value_parser = parse_framing)]
    pub framing: Option<Framing>,
    /// Largest length-prefixed or header frame body (suffixes K, M, G)
    #[arg(long, value_name = "BYTES", default_value = "8M", value_parser = parse_size)]
    pub max_frame: usize,
    /// Longest line with line framing, line ending excluded (suffixes K, M, G)
    #[arg(long, value_name = "BYTES", default_value = "64K", value_parser = parse_size)]
    pub max_line: usize,
    /// Most connections (UDP: peers) at once; more are refused with a one-line message
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNS, value_parser = parse_count)]
    pub max_conns: usize,
    /// Close connections that send nothing for this long; 0 = never
    #[arg(long, value_name = "SECS", default_value = "0", value_parser = parse_secs)]
    pub idle_timeout: Duration,
    /// Close connections whose unfinished frame stalls this long; 0 = never
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs)]
    pub frame_timeout: Duration,
    /// Log only warnings and errors
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Log more (-v every message, -vv everything)
    #[arg(short, long, action = ArgAction::Count)]
    pub verbose: u8,
}

/// The server that `connect` and `bench` talk to, and how.
#[derive(Debug, Args)]
pub struct Target {
    /// Server address or host name
    #[arg(value_parser = parse_host_arg)]
    pub host: Host,
    /// Server port
    #[arg(value_parser = parse_remote_port)]
    pub port: u16,
    /// Use UDP (every message is one datagram)
    #[arg(long)]
    pub udp: bool,
    /// How messages are delimited on TCP (see `sockit serve --help`) [default: line]
    #[arg(long, value_name = "FRAMING", value_parser = parse_framing)]
    pub framing: Option<Framing>,
}

impl Target {
    /// TCP or UDP.
    pub fn transport(&self) -> Transport {
        transport(self.udp)
    }

    /// The framing given, or the default for the transport.
    pub fn framing(&self) -> Framing {
        framing_or_default(self.framing, self.udp)
    }
}

/// `sockit connect`.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// Where to connect.
    #[command(flatten)]
    pub target: Target,
    /// Send this message and print the reply; repeat for more. Without -m, lines are read
    /// from standard input
    #[arg(short = 'm', long = "message", value_name = "MSG")]
    pub messages: Vec<OsString>,
    /// Seconds to wait for the connection and for each reply
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_positive_secs)]
    pub timeout: Duration,
    /// UDP: times to resend a message that got no reply
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub retries: u32,
    /// Largest frame accepted from the server (suffixes K, M, G)
    #[arg(long, value_name = "BYTES", default_value = "8M", value_parser = parse_size)]
    pub max_frame: usize,
}

/// `sockit bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The echo server to load.
    #[command(flatten)]
    pub target: Target,
    /// Concurrent ping-pong clients
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = parse_count)]
    pub conns: usize,
    /// Seconds to run
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_positive_secs)]
    pub duration: Duration,
    /// Messages per client; the run ends after them instead of after --duration
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub count: Option<usize>,
    /// Message body size in bytes (suffixes K, M, G; at most 1G, 255 for len8, 65535 for
    /// len16, 65507 for UDP)
    #[arg(long, value_name = "BYTES", default_value = "64", value_parser = parse_size)]
    pub size: usize,
    /// Seconds a client waits for one reply before counting a timeout
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_positive_secs)]
    pub timeout: Duration,
    /// Print the result as one JSON object
    #[arg(long)]
    pub json: bool,
    /// Log more (-v each client's failure)
    #[arg(short, long, action = ArgAction::Count)]
    pub verbose: u8,
}

/// A validated `serve` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// Where to bind.
    pub host: Host,
    /// Port (0 = any).
    pub port: u16,
}

/// Parses the process arguments; on error prints it with the usage line and exits 2.
pub fn parse() -> Cli {
    parse_from(std::env::args_os())
}

/// Parses `args` (first item: program name) like [`parse`].
pub fn parse_from<I, T>(args: I) -> Cli
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(mut e) => {
            if e.get(ContextKind::Usage).is_none() {
                if let Some(usage) = subcommand_usage(&args) {
                    e.insert(ContextKind::Usage, ContextValue::StyledStr(usage));
                }
            }
            e.exit()
        }
    };
    if let Err((sub, e)) = validate(&cli) {
        usage_error(sub, &e).exit();
    }
    cli
}

/// Checks the combinations clap cannot express.
fn validate(cli: &Cli) -> Result<(), (&'static str, String)> {
    let (sub, udp, framing) = match &cli.command {
        Command::Serve(a) => {
            listen_addr(a).map_err(|e| ("serve", e))?;
            ("serve", a.udp, a.framing)
        }
        Command::Connect(a) => ("connect", a.target.udp, a.target.framing),
        Command::Bench(a) => {
            validate_bench(a).map_err(|e| ("bench", e))?;
            ("bench", a.target.udp, a.target.framing)
        }
    };
    if udp && framing.is_some_and(|f| f != Framing::Raw) {
        return Err((
            sub,
            "--framing applies to TCP only: with --udp every datagram is one message".into(),
        ));
    }
    Ok(())
}

/// Checks `bench` arguments that depend on each other: the message size against the framing
/// and transport.
pub fn validate_bench(args: &BenchArgs) -> Result<(), String> {
    let target = &args.target;
    sockit::bench::check_size(target.transport(), target.framing(), args.size)
        .map_err(|e| format!("invalid value '{}' for '--size <BYTES>': {e}", args.size))
}

/// Works out the `serve` address: `[HOST] [PORT]`, where a lone number is the port.
pub fn listen_addr(args: &ServeArgs) -> Result<Listen, String> {
    let host_err = |e: sockit::ConfigError| format!("invalid value for [HOST]: {e}");
    let port_err = |e: sockit::ConfigError| format!("invalid value for [PORT]: {e}");
    let default_host = || parse_host(DEFAULT_HOST).expect("the default host parses");
    match (&args.host, &args.port) {
        (None, _) => Ok(Listen {
            host: default_host(),
            port: DEFAULT_PORT,
        }),
        (Some(only), None) if only.bytes().all(|b| b.is_ascii_digit()) => Ok(Listen {
            host: default_host(),
            port: parse_port(only).map_err(port_err)?,
        }),
        (Some(host), port) => Ok(Listen {
            host: parse_host(host).map_err(host_err)?,
            port: match port {
                Some(p) => parse_port(p).map_err(port_err)?,
                None => DEFAULT_PORT,
            },
        }),
    }
}

fn built_command() -> clap::Command {
    let mut cmd = Cli::command();
    cmd.build();
    cmd
}

fn subcommand_usage(args: &[OsString]) -> Option<clap::builder::StyledStr> {
    let mut cmd = built_command();
    let name = args.get(1)?.to_str()?;
    Some(cmd.find_subcommand_mut(name)?.render_usage())
}

fn usage_error(sub: &str, msg: &str) -> clap::Error {
    let mut cmd = built_command();
    match cmd.find_subcommand_mut(sub) {
        Some(sub) => sub.error(ErrorKind::ValueValidation, msg),
        None => cmd.error(ErrorKind::ValueValidation, msg),
    }
}

fn parse_host_arg(s: &str) -> Result<Host, String> {
    parse_host(s).map_err(|e| e.to_string())
}

fn parse_remote_port(s: &str) -> Result<u16, String> {
    match parse_port(s) {
        Ok(0) => Err("port 0 cannot be connected to (ports are 1-65535)".into()),
        Ok(p) => Ok(p),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_framing(s: &str) -> Result<Framing, String> {
    s.parse().map_err(|e: sockit::ConfigError| e.to_string())
}

fn parse_service(s: &str) -> Result<ServiceKind, String> {
    s.parse()
}

fn parse_count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{s}' is not a whole number")),
    }
}

/// Seconds, fractions allowed; 0 is allowed (it means "off" where the flag says so).
fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("'{s}' is not a number of seconds from 0 to 1e9"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_positive_secs(s: &str) -> Result<Duration, String> {
    match parse_secs(s)? {
        d if d.is_zero() => Err("must be more than 0 seconds".into()),
        d => Ok(d),
    }
}

/// A byte count with an optional binary suffix: `65536`, `64K`, `8M`, `1G` (also `KiB` etc.).
fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    let unit: u64 = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "'{s}' is not a size (a number, optionally K, M or G)"
            ));
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| format!("'{s}' is not a size (a number, optionally K, M or G)"))
}

/// `--udp` as a transport.
pub fn transport(udp: bool) -> Transport {
    if udp { Transport::Udp } else { Transport::Tcp }
}

/// The framing to use: the one given, else `raw` for UDP and `line` for TCP.
pub fn framing_or_default(framing: Option<Framing>, udp: bool) -> Framing {
    framing.unwrap_or(if udp { Framing::Raw } else { Framing::Line })
}

/// Default limits adjusted by the flags.
pub fn limits(max_frame: usize, max_line: usize) -> sockit::Limits {
    sockit::Limits {
        max_frame,
        max_line,
        ..sockit::Limits::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> Result<Listen, String> {
        let mut all = vec!["sockit", "serve"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all).map_err(|e| e.to_string())?.command {
            Command::Serve(a) => listen_addr(&a),
            _ => unreachable!(),
        }
    }

    #[test]
    fn serve_address_defaults_and_lone_port() {
        let local = parse_host("127.0.0.1").unwrap();
        assert_eq!(
            serve(&[]).unwrap(),
            Listen {
                host: local.clone(),
                port: 9000
            }
        );
        assert_eq!(
            serve(&["9001"]).unwrap(),
            Listen {
                host: local,
                port: 9001
            }
        );
        assert_eq!(serve(&["0.0.0.0"]).unwrap().port, 9000);
        assert_eq!(serve(&["::1", "0"]).unwrap().port, 0);
    }

    #[test]
    fn serve_address_errors_name_the_argument() {
        assert!(serve(&["70000"]).unwrap_err().contains("[PORT]"));
        assert!(
            serve(&["127.0.0.1", "http"])
                .unwrap_err()
                .contains("[PORT]")
        );
        assert!(serve(&["256.1.1.1"]).unwrap_err().contains("[HOST]"));
    }

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("8M").unwrap(), 8 << 20);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert!(parse_size("12x").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }

    fn bench(args: &[&str]) -> Result<(), String> {
        let mut all = vec!["sockit", "bench", "127.0.0.1", "9000"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all).map_err(|e| e.to_string())?.command {
            Command::Bench(a) => validate_bench(&a),
            _ => unreachable!(),
        }
    }

    #[test]
    fn bench_sizes_must_fit_the_framing() {
        assert!(bench(&["--framing", "len8", "--size", "255"]).is_ok());
        let e = bench(&["--framing", "len8", "--size", "256"]).unwrap_err();
        assert!(e.contains("--size") && e.contains("len8"), "{e}");
        assert!(bench(&["--framing", "len16", "--size", "64K"]).is_err());
        assert!(bench(&["--udp", "--size", "65508"]).is_err());
        assert!(bench(&["--size", "0"]).is_err());
        assert!(bench(&["--framing", "len32", "--size", "1G"]).is_ok());
        assert!(bench(&["--framing", "len32", "--size", "2G"]).is_err());
    }

    #[test]
    fn seconds_accept_fractions_and_reject_nonsense() {
        assert_eq!(parse_secs("0.25").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_secs("0").unwrap(), Duration::ZERO);
        assert!(parse_positive_secs("0").is_err());
        for bad in ["-1", "NaN", "inf", "soon"] {
            assert!(parse_secs(bad).is_err(), "{bad}");
        }
    }
}
