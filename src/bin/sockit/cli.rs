//! Command-line parsing: clap definitions, value parsers, and the checks that turn raw
//! arguments into validated settings. Every rejection names the argument at fault, says why,
//! shows the usage line of the subcommand, and exits with status 2.

use std::ffi::OsString;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{ArgAction, Args, CommandFactory, Parser, Subcommand};
use sockit::net::{Address, Endpoint, Host, Scheme, UnixName, parse_host, parse_port};
use sockit::scan::PortList;
use sockit::server::{DEFAULT_HOST, DEFAULT_MAX_CONNS, DEFAULT_PORT};
use sockit::{Framing, Lang, ServiceKind, Transport};

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
// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run a server over TCP or UDP: the hub (line commands reaching every service), or one
    /// service: echo, ack, lookup, chat, console.
    Serve(ServeArgs),
    /// Connect to a server: send messages or lines, print what comes back.
    Connect(ConnectArgs),
    /// Load-test an echo server with concurrent ping-pong clients, or a chat server (--chat).
    Bench(BenchArgs),
    /// Manage the users file that `sockit serve --login` checks passwords against.
    User(UserArgs),
    /// Upload files (or trees, with -r) to a `sockit serve --service files` server.
    ///
    /// Each upload is verified with BLAKE3 by the server before it appears there; an upload
    /// that was interrupted resumes where it stopped when sent again.
    #[command(override_usage = "sockit send [OPTIONS] <ADDR> [PORT] <PATH>...")]
    Send(SendArgs),
    /// Download a file from a `sockit serve --service files` server, verified with BLAKE3.
    #[command(override_usage = "sockit get [OPTIONS] <ADDR> [PORT] <NAME>")]
    Get(GetArgs),
    /// List the files a `sockit serve --service files` server holds: size, time, name.
    Ls(LsArgs),
    /// Describe IP addresses and prefixes: kinds, class, forms, network and host range.
    ///
    /// For each ADDR: version, canonical form (IPv6 also expanded), historic class (IPv4),
    /// every special-purpose kind that applies, and the IPv4 address inside IPv4-mapped,
    /// NAT64, 6to4 and Teredo addresses; with a /PREFIX also the network, netmask, wildcard,
    /// broadcast (IPv4), first and last host, host count, and whether ADDR is the network
    /// address or a host. If any ADDR is invalid, every invalid one is reported and nothing
    /// else is printed (exit status 2).
    Ip(IpArgs),
    /// Look up well-known ports: the services on a port, or the port of a service.
    ///
    /// Also shows the port's IANA range and whether it is in this machine's ephemeral range.
    Port(PortArgs),
    /// Resolve names with the system resolver, addresses to names (-r), or --fqdn.
    Resolve(ResolveArgs),
    /// Connect-time ping: time TCP or unix connects, TLS handshakes, or UDP round trips to a
    /// sockit echo/ack service.
    Ping(PingArgs),
    /// Scan a host's ports: which are open, closed or filtered (TCP connect scan, or --udp).
    Scan(ScanArgs),
    /// Forward a port (TCP, UDP, unix, TLS), show what passes (--hex, --trace) and inject faults.
    ///
    /// LISTEN and TARGET are addresses: HOST:PORT (TCP), udp:HOST:PORT, unix:PATH,
    /// tls:HOST:PORT. TCP, TLS and unix relay to each other in any pairing; UDP only to UDP. One
    /// log line per connection.
    Relay(RelayArgs),
    /// Print a shell completion script: bash, zsh, fish, powershell or elvish.
    ///
    /// bash: `sockit completions bash > ~/.local/share/bash-completion/completions/sockit`;
    /// zsh: into a directory on $fpath as `_sockit`; fish: `~/.config/fish/completions/sockit.fish`.
    Completions(CompletionsArgs),
    /// Print the man page, sockit(1), to stdout; with --out DIR write one page per subcommand.
    ///
    /// Read it with `sockit man | man -l -`.
    Man(ManArgs),
}

/// `sockit completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell
    #[arg(value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

/// `sockit man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write sockit.1 and sockit-SUBCOMMAND.1 pages into this directory instead
    #[arg(long, value_name = "DIR")]
    pub out: Option<std::path::PathBuf>,
}

/// `sockit relay`.
#[derive(Debug, Args)]
pub struct RelayArgs {
    /// Where to listen: HOST:PORT, udp:HOST:PORT or unix:PATH (port 0: any free port)
    #[arg(value_name = "LISTEN", required_unless_present = "api")]
    pub listen: Option<String>,
    /// Where to forward: HOST:PORT, udp:HOST:PORT or unix:PATH
    #[arg(value_name = "TARGET", required_unless_present = "api")]
    pub target: Option<String>,
    /// Serve a toxiproxy-compatible HTTP API on HOST:PORT (proxies and toxics at run time);
    /// LISTEN TARGET, if given, become its proxy "default"
    #[arg(long, value_name = "HOST:PORT")]
    pub api: Option<String>,
    /// Most connections relayed at once; more are closed on accept
    #[arg(long, value_name = "N", default_value_t = 10_000, value_parser = parse_count)]
    pub max_conns: usize,
    /// Only clients in these prefixes (ADDR[/PREFIX], comma-separated or repeated)
    #[arg(long, value_name = "CIDR", value_delimiter = ',', value_parser = parse_cidr)]
    pub allow: Vec<sockit::relay::Cidr>,
    /// Refuse clients in these prefixes (checked before --allow)
    #[arg(long, value_name = "CIDR", value_delimiter = ',', value_parser = parse_cidr)]
    pub deny: Vec<sockit::relay::Cidr>,
    /// Close a connection idle this long both ways; UDP flows end after it (default 60 s)
    #[arg(long, value_name = "SECS", value_parser = parse_positive_secs)]
    pub idle_timeout: Option<Duration>,
    /// How long to wait for the target to accept a connection
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_positive_secs)]
    pub connect_timeout: Duration,
    /// Most UDP flows (client addresses) at once; the least recently used one is evicted
    #[arg(long, value_name = "N", default_value_t = 4096, value_parser = parse_count)]
    pub udp_flows: usize,
    /// Connection records as JSON lines on stdout (the banner too)
    #[arg(long)]
    pub json: bool,
    /// Dump every chunk to stderr: time, direction (> up, < down), connection, offset, hex, text
    #[arg(long)]
    pub hex: bool,
    /// With --hex, also mark where messages of this framing end (line, len32, header, …)
    #[arg(long, value_name = "F", value_parser = parse_framing, requires = "hex")]
    pub framing: Option<Framing>,
    /// Write every chunk or datagram as a JSON line (time, conn, dir, len, base64 data)
    #[arg(long, value_name = "FILE")]
    pub trace: Option<std::path::PathBuf>,
    /// A fault: [up:|down:]NAME[=VALUE][,PARAM=VALUE...][,p=PROB]; repeatable, applied in order
    #[arg(long, value_name = "FAULT", value_parser = parse_fault, conflicts_with = "api")]
    pub fault: Vec<sockit::relay::Fault>,
    /// Seed of the faults' random choices (default: from the clock, and logged)
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Never use splice(2): copy through user space (for comparisons)
    #[arg(long)]
    pub no_splice: bool,
    /// Send a PROXY protocol header (v1 or v2) to the target before the client's bytes
    #[arg(long, value_name = "VERSION", value_parser = parse_proxy_version)]
    pub proxy_send: Option<sockit::relay::ProxyVersion>,
    /// Expect a PROXY protocol header (v1 or v2) from every client; its source is the client
    #[arg(long)]
    pub proxy_accept: bool,
    /// TLS: a tls:HOST:PORT LISTEN terminates TLS, a tls:HOST:PORT TARGET originates it
    #[command(flatten)]
    pub tls: crate::tls_args::RelayTls,
    /// Only warnings and errors (no per-connection lines)
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,
    /// More log detail (-v, -vv)
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

fn parse_cidr(s: &str) -> Result<sockit::relay::Cidr, String> {
    sockit::relay::Cidr::parse(s)
}

fn parse_proxy_version(s: &str) -> Result<sockit::relay::ProxyVersion, String> {
    s.parse()
}

fn parse_fault(s: &str) -> Result<sockit::relay::Fault, String> {
    s.parse()
}

impl RelayArgs {
    /// The two addresses.
    pub fn addresses(&self) -> Result<Option<(Address, Address)>, String> {
        if let Some(api) = &self.api {
            Address::parse(api, None).map_err(|e| format!("--api: {e}"))?;
        }
        match (&self.listen, &self.target) {
            (Some(l), Some(t)) => {
                let listen = Address::parse(l, None).map_err(|e| e.to_string())?;
                let target = Address::parse(t, None).map_err(|e| e.to_string())?;
                Ok(Some((listen, target)))
            }
            (None, None) => Ok(None),
            _ => Err("give both LISTEN and TARGET (or neither, with --api)".into()),
        }
    }
}

/// `sockit send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// Server address: HOST PORT, HOST:PORT, [V6]:PORT, tls:HOST:PORT or unix:PATH
    #[arg(value_name = "ADDR")]
    pub addr: String,
    /// The server's PORT (unless ADDR has it), then the files to upload
    #[arg(value_name = "PATH", required = true, num_args = 1..)]
    pub rest: Vec<std::path::PathBuf>,
    /// Upload directories as trees: DIR/sub/file keeps its path under DIR's name
    #[arg(short, long)]
    pub recursive: bool,
    /// Seconds to wait for the connection and for each answer
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_positive_secs)]
    pub timeout: Duration,
    #[command(flatten)]
    pub tls: crate::tls_args::ClientTls,
}

/// `sockit get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// Server address: HOST PORT, HOST:PORT, [V6]:PORT, tls:HOST:PORT or unix:PATH
    #[arg(value_name = "ADDR")]
    pub addr: String,
    /// The server's PORT (unless ADDR has it), then the NAME to download
    #[arg(value_name = "NAME", required = true, num_args = 1..=2)]
    pub rest: Vec<String>,
    /// Where to write: a file, a directory to write NAME's last component in, or - for
    /// standard output [default: NAME's last component in the current directory]
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<std::path::PathBuf>,
    /// Seconds to wait for the connection and for each answer
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_positive_secs)]
    pub timeout: Duration,
    #[command(flatten)]
    pub tls: crate::tls_args::ClientTls,
}

/// `sockit ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// Server address: HOST PORT, HOST:PORT, [V6]:PORT, tls:HOST:PORT or unix:PATH
    #[arg(value_name = "ADDR")]
    pub addr: String,
    /// Server port, when ADDR is a host alone
    #[arg(value_name = "PORT")]
    pub port: Option<String>,
    /// One JSON object per line: name, size, mtime (seconds since the epoch)
    #[arg(long)]
    pub json: bool,
    /// Seconds to wait for the connection and for each answer
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_positive_secs)]
    pub timeout: Duration,
    #[command(flatten)]
    pub tls: crate::tls_args::ClientTls,
}

/// Splits `ADDR [PORT] REST...`: when ADDR carries no port, the first of the rest is the port.
/// Returns the address and how many of the rest it used.
pub fn file_server_address(addr: &str, first: Option<&str>) -> Result<(Address, usize), String> {
    let (address, used) = match Address::parse(addr, None) {
        Ok(address) => (address, 0),
        Err(e) => match first {
            Some(port) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
                (parse_address(addr, Some(port), None)?, 1)
            }
            _ => {
                return Err(format!(
                    "invalid value for <ADDR>: {e} (give HOST PORT or HOST:PORT)"
                ));
            }
        },
    };
    match address.scheme {
        Scheme::Tcp | Scheme::Tls | Scheme::Unix => {}
        other => {
            return Err(format!(
                "'{addr}': file transfer runs over a stream (TCP, TLS or a unix socket), not {other:?}"
            ));
        }
    }
    if address.inet().is_some_and(|(_, port)| port == 0) {
        return Err("port 0 cannot be connected to (ports are 1-65535)".into());
    }
    Ok((address, used))
}

impl SendArgs {
    /// The server's address and the paths to upload.
    pub fn split(&self) -> Result<(Address, &[std::path::PathBuf]), String> {
        let first = self.rest.first().and_then(|p| p.to_str());
        let (address, used) = file_server_address(&self.addr, first)?;
        let paths = &self.rest[used..];
        if paths.is_empty() {
            return Err("no files to send: give at least one PATH".into());
        }
        Ok((address, paths))
    }
}

impl GetArgs {
    /// The server's address and the name to download.
    pub fn split(&self) -> Result<(Address, &str), String> {
        let first = (self.rest.len() == 2).then(|| self.rest[0].as_str());
        let (address, used) = file_server_address(&self.addr, first)?;
        match &self.rest[used..] {
            [name] => Ok((address, name.as_str())),
            [] => Err("no NAME to download".into()),
            _ => Err(
                "give one NAME to download (and the PORT before it, unless ADDR has one)".into(),
            ),
        }
    }
}

impl LsArgs {
    /// The server's address.
    pub fn address(&self) -> Result<Address, String> {
        file_server_address(&self.addr, self.port.as_deref()).and_then(|(a, used)| {
            if used == 0 && self.port.is_some() {
                Err("ADDR already has a port: leave PORT out".into())
            } else {
                Ok(a)
            }
        })
    }
}

/// `sockit scan`.
#[derive(Debug, Args)]
pub struct ScanArgs {
    /// The host to scan: an IPv4 or IPv6 address, or a name
    #[arg(value_parser = parse_host)]
    pub host: Host,
    /// Ports: 1-1024,8080,9000-9100, or - / all for 1-65535 (or use --top N)
    #[arg(value_parser = PortList::parse, allow_hyphen_values = true)]
    pub ports: Option<PortList>,
    /// Scan UDP instead of TCP
    #[arg(long)]
    pub udp: bool,
    /// How long to wait for an answer from each port
    #[arg(long, value_name = "DURATION", default_value = "1", value_parser = parse_positive_secs)]
    pub timeout: Duration,
    /// Ports probed at once (capped below the open-file limit) [default: 4096]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub concurrency: Option<u32>,
    /// Scan the N most commonly open ports of a built-in list instead of PORTS
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..), conflicts_with = "ports")]
    pub top: Option<u32>,
    /// Print one JSON object instead of the table
    #[arg(long)]
    pub json: bool,
}

/// `sockit port`.
#[derive(Debug, Args)]
pub struct PortArgs {
    /// Port numbers (0-65535) or service names (case-insensitive, aliases such as dns or www
    /// accepted)
    #[arg(value_name = "N|NAME", required = true, value_parser = parse_port_query)]
    pub queries: Vec<(String, sockit::net::services::PortQuery)>,
    /// One JSON object per port: port, range, ephemeral, services
    #[arg(long)]
    pub json: bool,
}

/// `sockit resolve`.
#[derive(Debug, Args)]
pub struct ResolveArgs {
    /// Host names to resolve (with -r: IP addresses to look up)
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
    /// Reverse lookup: the name registered for each address
    #[arg(short = 'r', long)]
    pub reverse: bool,
    /// Print this machine's fully qualified host name
    #[arg(long, conflicts_with_all = ["reverse", "names"])]
    pub fqdn: bool,
    /// One JSON object per name or address
    #[arg(long)]
    pub json: bool,
}

/// `sockit ping`.
#[derive(Debug, Args)]
pub struct PingArgs {
    /// The host: a name or an address; or HOST:PORT, [V6]:PORT, udp:HOST:PORT, tls:HOST:PORT,
    /// unix:PATH
    #[arg(value_name = "HOST")]
    pub host: String,
    /// The port (1-65535)
    #[arg(value_name = "PORT")]
    pub port: Option<String>,
    /// Probes to send
    #[arg(short = 'c', long, value_name = "N", default_value_t = sockit::ping::DEFAULT_COUNT,
          value_parser = parse_probe_count)]
    pub count: u64,
    /// Probe until Ctrl-C (which prints the summary)
    #[arg(short = 't', long, conflicts_with = "count")]
    pub forever: bool,
    /// Seconds between probes (durations: 0.2, 500ms, 2s)
    #[arg(short = 'i', long, value_name = "SECS", default_value = "1", value_parser = parse_secs)]
    pub interval: Duration,
    /// Seconds to wait for each connect or reply
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_positive_secs)]
    pub timeout: Duration,
    /// Send a datagram to a sockit UDP echo or ack service and time the reply
    #[arg(long)]
    pub udp: bool,
    /// One JSON object per probe, then one for the summary
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub tls: crate::tls_args::ClientTls,
}

impl PingArgs {
    /// The validated target: `HOST PORT` (any scheme but unixgram and rudp) or `unix:PATH`.
    pub fn target(&self) -> Result<Address, String> {
        let address = if self.port.is_none() && self.host.to_ascii_lowercase().starts_with("unix") {
            Address::parse(&self.host, None).map_err(|e| e.to_string())?
        } else {
            parse_address(&self.host, self.port.as_deref(), None)?
        };
        check_scheme_or_tls(&address, &self.host, self.udp, false)?;
        match (&address.scheme, &address.endpoint) {
            (Scheme::Unixgram | Scheme::Rudp, _) => Err(format!(
                "'{}': ping probes TCP, TLS, UDP or a unix stream socket",
                self.host
            )),
            (_, Endpoint::Inet { port: 0, .. }) => {
                Err("port 0 cannot be pinged (ports are 1-65535)".into())
            }
            _ => Ok(address),
        }
    }

    /// UDP, by flag or by a `udp:` address.
    pub fn is_udp(&self) -> bool {
        self.udp || self.host.to_ascii_lowercase().starts_with("udp:")
    }
}

fn parse_port_query(s: &str) -> Result<(String, sockit::net::services::PortQuery), String> {
    sockit::net::services::parse_query(s).map(|q| (s.to_owned(), q))
}

fn parse_probe_count(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("must be at least 1 (use -t to probe until Ctrl-C)".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{s}' is not a whole number")),
    }
}

/// Checks `resolve` arguments: names must be host names, `-r` arguments IP addresses.
pub fn validate_resolve(args: &ResolveArgs) -> Result<(), String> {
    if !args.fqdn && args.names.is_empty() {
        return Err("give at least one NAME (or -r ADDR, or --fqdn)".into());
    }
    for name in &args.names {
        if args.reverse {
            let bare = name
                .strip_prefix('[')
                .and_then(|n| n.strip_suffix(']'))
                .unwrap_or(name);
            if bare.parse::<std::net::IpAddr>().is_err() {
                return Err(format!(
                    "invalid value '{name}' for -r: not an IPv4 or IPv6 address"
                ));
            }
        } else {
            parse_host(name).map_err(|e| format!("invalid value for <NAME>: {e}"))?;
        }
    }
    Ok(())
}

/// `sockit ip`.
#[derive(Debug, Args)]
pub struct IpArgs {
    /// Addresses, IPv4 or IPv6, each optionally with a prefix length: 192.0.2.1,
    /// 10.1.2.3/8, 2001:db8::1/64; answered in order
    #[arg(value_name = "ADDR[/PREFIX]", required = true)]
    pub addrs: Vec<String>,
    /// One JSON object per address, one per line
    #[arg(long)]
    pub json: bool,
}

impl IpArgs {
    /// Every input parsed; if any is invalid, the messages of all invalid ones, one per line.
    pub fn inputs(&self) -> Result<Vec<sockit::net::ip::IpInput>, String> {
        let (ok, bad): (Vec<_>, Vec<_>) = self
            .addrs
            .iter()
            .map(|a| sockit::net::ip::parse_input(a))
            .partition(Result::is_ok);
        if bad.is_empty() {
            Ok(ok.into_iter().flatten().collect())
        } else {
            let messages: Vec<String> = bad
                .into_iter()
                .filter_map(Result::err)
                .map(|e| e.to_string())
                .collect();
            // clap prefixes the first line with "error: "; the others get the same prefix.
            Err(messages.join("\nerror: "))
        }
    }
}

/// `sockit user`.
#[derive(Debug, Args)]
pub struct UserArgs {
    /// What to do with the users file.
    #[command(subcommand)]
    pub action: UserAction,
}

/// `sockit user add|del|list`.
#[derive(Debug, Subcommand)]
pub enum UserAction {
    /// Add a user, or set a new password for an existing one.
    Add {
        /// The user name (1-32 printable characters, no spaces or colons)
        #[arg(value_parser = parse_user_name)]
        name: String,
        /// The users file (created with mode 0600 if missing)
        #[arg(long, value_name = "FILE")]
        file: std::path::PathBuf,
        /// Read the password from the first line of standard input instead of asking twice
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a user.
    Del {
        /// The user name
        #[arg(value_parser = parse_user_name)]
        name: String,
        /// The users file
        #[arg(long, value_name = "FILE")]
        file: std::path::PathBuf,
    },
    /// List the user names.
    List {
        /// The users file
        #[arg(long, value_name = "FILE")]
        file: std::path::PathBuf,
    },
}

/// `sockit serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where to listen: HOST, HOST:PORT, [V6]:PORT or udp:HOST:PORT [default: 127.0.0.1:9000];
    /// a lone number is the PORT
    #[arg(value_name = "ADDR")]
    pub host: Option<String>,
    /// Port to listen on, 0 for any free port [default: 9000]
    #[arg(value_name = "PORT")]
    pub port: Option<String>,
    /// Serve UDP instead of TCP (every datagram is a message)
    #[arg(long)]
    pub udp: bool,
    /// Serve reliable UDP (sockit's rudp: whole messages, in order, over one UDP socket); the
    /// same as a rudp: address
    #[arg(long, conflicts_with = "udp")]
    pub rudp: bool,
    /// rudp: the largest datagram sent, 128-65000 bytes (loopback allows 65000) [default: 1200]
    #[arg(long, value_name = "BYTES", value_parser = parse_mtu)]
    pub mtu: Option<usize>,
    /// What to run: hub (line commands reaching all the others), echo (the message back),
    /// ack (a timestamped receipt), lookup (keyword lookup), chat (chat rooms), console
    /// (chat with the operator's terminal), files (uploads and downloads of --dir, for
    /// `sockit send`, `get` and `ls`, and the tutorials' upload client)
    #[arg(long, default_value = "hub", value_parser = parse_service)]
    pub service: ServiceKind,
    /// files: the directory served (it must exist)
    #[arg(long, value_name = "DIR")]
    pub dir: Option<std::path::PathBuf>,
    /// files: serve downloads and listings only
    #[arg(long)]
    pub read_only: bool,
    /// files: let an upload replace an existing file (atomically, once complete)
    #[arg(long)]
    pub overwrite: bool,
    /// files: largest upload accepted (suffixes K, M, G, T) [default: 16G]
    #[arg(long, value_name = "BYTES", value_parser = parse_file_size)]
    pub max_file_size: Option<u64>,
    /// files: remove interrupted uploads nobody resumed for this long [default: 24h]
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_secs)]
    pub partial_ttl: Option<Duration>,
    /// lookup and hub: the knowledge base, one `keyword<TAB>answer` per line (re-read on
    /// SIGHUP) [default: built-in networking terms]
    #[arg(long, value_name = "FILE")]
    pub kb: Option<std::path::PathBuf>,
    /// Language of prompts and notices: en, or zh for the tutorials' own texts
    #[arg(long, value_name = "LANG", default_value = "en", value_parser = parse_lang)]
    pub lang: Lang,
    /// TCP: ask for a user name and password (checked against FILE, see `sockit user`)
    /// before the service starts; re-read on SIGHUP
    #[arg(long, value_name = "FILE")]
    pub login: Option<std::path::PathBuf>,
    /// chat and hub: bytes of traffic each chat room keeps for members that read slowly; a
    /// member further behind is told so and disconnected (suffixes K, M, G; at least 256K)
    /// [default: 4M]
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub chat_retention: Option<usize>,
    /// chat and hub: share the chat rooms with every server connected to this NATS server
    /// (nats://HOST:PORT, with JetStream: nats-server -js)
    #[arg(long, value_name = "URL", value_parser = parse_cluster_url)]
    pub cluster: Option<String>,
    /// With --cluster: this server's name in the cluster, unique (letters, digits, - and _, at
    /// most 32) [default: HOSTNAME-PID]
    #[arg(long, value_name = "NAME", requires = "cluster", value_parser = parse_node)]
    pub node: Option<String>,
    /// hub: the users file behind its `login` command, when login is not required up front
    #[arg(long, value_name = "FILE", conflicts_with = "login")]
    pub users: Option<std::path::PathBuf>,
    /// How messages are delimited on TCP: raw, line, len8, len16[le], len32[le], len64[le],
    /// header[le] [default: line]
    #[arg(long, value_name = "FRAMING", value_parser = parse_framing)]
    pub framing: Option<Framing>,
    /// TCP: largest length-prefixed or header frame body (suffixes K, M, G) [default: 8M]
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub max_frame: Option<usize>,
    /// TCP: longest line with line framing, line ending excluded (suffixes K, M, G)
    /// [default: 64K]
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub max_line: Option<usize>,
    /// Most connections (UDP: peers) at once; more TCP clients are refused with a one-line
    /// message, and a new UDP peer replaces the least recently active one
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNS, value_parser = parse_count)]
    pub max_conns: usize,
    /// TCP: most connections one IP address may hold at once [default: no limit]
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub max_conns_per_ip: Option<usize>,
    /// TCP: memory for buffered frames and replies, all connections together; a connection
    /// that would exceed it stops being read until there is room (suffixes K, M, G)
    #[arg(long, value_name = "BYTES", default_value = "256M", value_parser = parse_size)]
    pub max_memory: usize,
    /// Close connections without a complete message for this long (UDP: forget peers silent
    /// this long, default 2m); 0 = never. Durations: 30, 500ms, 2s, 1m
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = parse_secs)]
    pub idle_timeout: Duration,
    /// Close connections whose unfinished frame takes this long, unless it keeps arriving at
    /// --min-rate; 0 = never
    #[arg(long, value_name = "DURATION", default_value = "30", value_parser = parse_secs)]
    pub frame_timeout: Duration,
    /// Bytes per second an unfinished frame must average to outlive --frame-timeout; 0 = any
    /// rate, as long as it never stalls for --frame-timeout (suffixes K, M)
    #[arg(long, value_name = "BYTES", default_value = "1K", value_parser = parse_size)]
    pub min_rate: usize,
    /// UDP: most replies per second to one source IP address (a token bucket); set it on a
    /// server that faces the internet, or it can be used to reflect traffic [default: no limit]
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub udp_rate: Option<usize>,
    /// Run PROG for each connection, the connection on its stdin and stdout (one argument,
    /// split into words without a shell: 'PROG ARG…'); no framing, service or quit words
    #[arg(long, value_name = "'PROG ARGS'", conflicts_with_all = ["sh_exec", "service", "framing", "udp", "rudp", "login", "users"])]
    pub exec: Option<String>,
    /// Like --exec, but CMD runs through /bin/sh -c (pipes, redirections, variables)
    #[arg(long, value_name = "CMD", conflicts_with_all = ["service", "framing", "udp", "rudp", "login", "users"])]
    pub sh_exec: Option<String>,
    /// unix:PATH: the socket file's permissions, in octal (0660: owner and group only)
    #[arg(long, value_name = "OCTAL", value_parser = sockit::transport::unix::parse_mode)]
    pub mode: Option<u32>,
    /// Dump every chunk received and sent on each connection to stderr, as `sockit relay
    /// --hex` does: time, direction (> from the client, < to it), connection, offset, hex, text
    #[arg(long)]
    pub hex: bool,
    /// Log only warnings and errors
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Log more (-v every message, -vv everything)
    #[arg(short, long, action = ArgAction::Count)]
    pub verbose: u8,
    /// TLS (--tls and its settings).
    #[command(flatten)]
    pub tls: crate::tls_args::ServeTls,
}

/// The server that `connect` and `bench` talk to, and how.
#[derive(Debug, Args)]
pub struct Target {
    /// Server address: HOST PORT, or one argument HOST:PORT, [V6]:PORT, udp:HOST:PORT,
    /// unix:PATH, unix:@NAME (abstract)
    #[arg(value_name = "ADDR")]
    pub addr: String,
    /// Server port, when ADDR is a host alone
    #[arg(value_name = "PORT")]
    pub port: Option<String>,
    /// Use UDP (every message is one datagram); the same as a udp: address
    #[arg(long)]
    pub udp: bool,
    /// Use reliable UDP (sockit's rudp: whole messages, in order); the same as a rudp: address
    #[arg(long, conflicts_with = "udp")]
    pub rudp: bool,
    /// rudp: the largest datagram sent, 128-65000 bytes [default: 1200]
    #[arg(long, value_name = "BYTES", value_parser = parse_mtu)]
    pub mtu: Option<usize>,
    /// How messages are delimited on TCP (see `sockit serve --help`) [default: line]
    #[arg(long, value_name = "FRAMING", value_parser = parse_framing)]
    pub framing: Option<Framing>,
}

impl Target {
    /// The address, validated: an internet address with a non-zero port, whose scheme agrees
    /// with `--udp`.
    pub fn address(&self) -> Result<Address, String> {
        let mut address = parse_address(&self.addr, self.port.as_deref(), None)?;
        check_scheme_or_tls(&address, &self.addr, self.udp, self.rudp)?;
        check_rudp(&address, &self.addr, self.rudp)?;
        if self.udp {
            address.scheme = Scheme::Udp;
        }
        if self.rudp {
            address.scheme = Scheme::Rudp;
        }
        if address.inet().is_some_and(|(_, port)| port == 0) {
            return Err("port 0 cannot be connected to (ports are 1-65535)".into());
        }
        if self.rudp && address.inet().is_none() {
            return Err(format!(
                "'{}' is a unix socket but --rudp says rudp",
                self.addr
            ));
        }
        Ok(address)
    }

    /// The unix stream socket, for a `unix:` address.
    pub fn unix(&self) -> Option<UnixName> {
        let address = self.address().ok()?;
        match address.endpoint {
            Endpoint::Unix(name) if address.scheme == Scheme::Unix => Some(name),
            _ => None,
        }
    }

    /// The unix datagram socket, for a `unixgram:` address.
    pub fn unixgram(&self) -> Option<UnixName> {
        let address = self.address().ok()?;
        match address.endpoint {
            Endpoint::Unix(name) if address.scheme == Scheme::Unixgram => Some(name),
            _ => None,
        }
    }

    /// Whether UDP was asked for, by flag or by scheme.
    pub fn is_udp(&self) -> bool {
        self.udp || self.address().is_ok_and(|a| a.scheme == Scheme::Udp)
    }

    /// rudp, by flag or by scheme.
    pub fn is_rudp(&self) -> bool {
        self.rudp || self.address().is_ok_and(|a| a.scheme == Scheme::Rudp)
    }

    /// Whether the address says `tls:`.
    pub fn is_tls(&self) -> bool {
        self.address().is_ok_and(|a| a.scheme == Scheme::Tls)
    }

    /// TCP, UDP or rudp.
    pub fn transport(&self) -> Transport {
        if self.is_rudp() {
            Transport::Rudp
        } else {
            transport(self.is_udp())
        }
    }

    /// The framing given, or the default for the transport (`raw` where the transport keeps
    /// message boundaries itself).
    pub fn framing(&self) -> Framing {
        framing_or_default(self.framing, self.is_udp() || self.is_rudp())
    }

    /// The rudp connection settings.
    pub fn rudp_config(&self) -> sockit::rudp::Config {
        rudp_config(self.mtu)
    }
}

/// Parses `ADDR [PORT]`, naming the argument at fault; `default_port` applies when neither
/// carries a port.
fn parse_address(
    addr: &str,
    port: Option<&str>,
    default_port: Option<u16>,
) -> Result<Address, String> {
    let bad_addr = |e: sockit::ConfigError| format!("invalid value for <ADDR>: {e}");
    match port {
        None => Address::parse(addr, default_port).map_err(bad_addr),
        Some(p) => {
            parse_port(p).map_err(|e| format!("invalid value for [PORT]: {e}"))?;
            Address::from_host_port(addr, p).map_err(bad_addr)
        }
    }
}

/// The rudp settings for `--mtu`.
pub fn rudp_config(mtu: Option<usize>) -> sockit::rudp::Config {
    let mut config = sockit::rudp::Config::default();
    if let Some(mtu) = mtu {
        config.mtu = mtu;
    }
    config
}

/// Refuses a scheme that contradicts `--rudp`.
fn check_rudp(address: &Address, raw: &str, rudp: bool) -> Result<(), String> {
    let lower = raw.to_ascii_lowercase();
    if rudp && (address.scheme == Scheme::Udp || lower.starts_with("tcp:")) {
        return Err(format!(
            "'{raw}' says {} but --rudp says rudp",
            address.scheme
        ));
    }
    Ok(())
}

fn parse_mtu(s: &str) -> Result<usize, String> {
    let n = parse_size(s)?;
    if (sockit::rudp::MIN_MTU..=sockit::rudp::MAX_MTU).contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "the MTU must be between {} and {} bytes",
            sockit::rudp::MIN_MTU,
            sockit::rudp::MAX_MTU
        ))
    }
}

/// Like [`check_scheme`], but lets `tls:` through (TLS runs over TCP: not with --udp/--rudp).
fn check_scheme_or_tls(address: &Address, raw: &str, udp: bool, rudp: bool) -> Result<(), String> {
    if address.scheme != Scheme::Tls {
        return check_scheme(address, raw, udp);
    }
    if udp || rudp {
        return Err(format!(
            "'{raw}' says tls: (over TCP) but --{} says otherwise",
            if udp { "udp" } else { "rudp" }
        ));
    }
    Ok(())
}

/// Refuses what the address grammar can say but this version cannot do yet, and a scheme that
/// contradicts `--udp`.
fn check_scheme(address: &Address, raw: &str, udp: bool) -> Result<(), String> {
    match address.scheme {
        Scheme::Unix if udp => Err(format!(
            "'{address}' is a unix stream socket but --udp says UDP (use unixgram:PATH)"
        )),
        Scheme::Tls => Err(format!(
            "'{address}': TLS is not supported yet (use HOST:PORT)"
        )),
        Scheme::Tcp if udp && raw.to_ascii_lowercase().starts_with("tcp:") => {
            Err(format!("'{raw}' says tcp: but --udp says UDP"))
        }
        Scheme::Rudp if udp => Err(format!("'{raw}' says rudp: but --udp says UDP")),
        _ => Ok(()),
    }
}

/// `sockit connect`.
#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// Where to connect.
    #[command(flatten)]
    pub target: Target,
    /// Send this message and print the reply; repeat for more. Without -m, standard input is
    /// sent: piped with raw or line framing as bytes, unchanged (like `nc -N`); otherwise one
    /// message per line
    #[arg(short = 'm', long = "message", value_name = "MSG")]
    pub messages: Vec<OsString>,
    /// Seconds to wait for the connection and for each reply
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_positive_secs)]
    pub timeout: Duration,
    /// UDP only: times to resend a message that got no reply [default: 2]
    #[arg(long, value_name = "N")]
    pub retries: Option<u32>,
    /// Largest frame accepted from the server, and longest input line sent as one frame
    /// (suffixes K, M, G)
    #[arg(long, value_name = "BYTES", default_value = "8M", value_parser = parse_size)]
    pub max_frame: usize,
    /// Piped input: send one line at a time (line ending removed) and wait for its reply
    /// before the next, for servers that answer each `recv(1024)`
    #[arg(long)]
    pub wait_reply: bool,
    /// After the end of piped input, wait at most this long for the server to close, then
    /// exit 0 (like `nc -q`); without it, wait until the server closes
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub quit_after: Option<Duration>,
    /// Connect PROG's stdin and stdout to the server instead of the terminal ('PROG ARGS…',
    /// split into words without a shell); sockit exits with its exit status
    #[arg(long, value_name = "'PROG ARGS'", conflicts_with_all = ["sh_exec", "messages", "wait_reply", "udp", "rudp", "framing"])]
    pub exec: Option<String>,
    /// Like --exec, but CMD runs through /bin/sh -c
    #[arg(long, value_name = "CMD", conflicts_with_all = ["messages", "wait_reply", "udp", "rudp", "framing"])]
    pub sh_exec: Option<String>,
    /// Reach the server through a proxy: socks5://[USER:PASS@]HOST[:PORT] (port 1080 by
    /// default), socks5h://… (the same) or http://[USER:PASS@]HOST:PORT (HTTP CONNECT). The
    /// server's name is resolved by the proxy (see --proxy-dns); as an SSH ProxyCommand:
    /// `sockit connect --proxy URL %h %p`
    #[arg(long, value_name = "URL", value_parser = parse_proxy)]
    pub proxy: Option<sockit::proxy::ProxySpec>,
    /// Who resolves the server's name with --proxy: remote (the proxy) or local (here, and
    /// the proxy is given an address)
    #[arg(long, value_name = "WHERE", default_value = "remote", value_parser = parse_proxy_dns, requires = "proxy")]
    pub proxy_dns: sockit::proxy::ProxyDns,
    /// Dump every chunk sent and received to stderr, as `sockit relay --hex` does: time,
    /// direction (> sent, < received), connection, offset, hex and text
    #[arg(long)]
    pub hex: bool,
    /// Fail (exit 1) when a write to the server makes no progress for this long: the server
    /// stopped reading; 0 = wait forever
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs)]
    pub write_timeout: Duration,
    /// Log connection events to stderr (-v events and the TLS session, -vv details)
    #[arg(short, long, action = ArgAction::Count)]
    pub verbose: u8,
    /// TLS (--tls and its settings).
    #[command(flatten)]
    pub tls: crate::tls_args::ClientTls,
}

/// Default number of UDP resends for `connect`.
pub const DEFAULT_RETRIES: u32 = 2;

/// Checks the `connect` arguments clap cannot: every `-m` must fit one message of the framing
/// (or one datagram), and `--retries` needs `--udp`.
pub fn validate_connect(args: &ConnectArgs) -> Result<(), String> {
    let unixgram = args.target.unixgram().is_some();
    let udp = args.target.is_udp() || unixgram;
    if unixgram && args.target.framing.is_some() {
        return Err(
            "--framing applies to streams only: over unixgram every datagram is one message".into(),
        );
    }
    if args.proxy.is_some() && args.target.address().is_ok_and(|a| a.inet().is_none()) {
        return Err(
            "--proxy reaches HOST PORT servers; a unix: address is reached directly".into(),
        );
    }
    if udp || args.target.is_rudp() {
        if args.proxy.is_some() {
            return Err(
                "--proxy works over TCP only (SOCKS5 and HTTP CONNECT carry streams)".into(),
            );
        }
        if args.hex {
            return Err("--hex applies to stream connections (TCP, unix), not UDP or rudp".into());
        }
    }
    if args.retries.is_some() && !udp {
        return Err(
            "--retries applies to UDP only (--udp): TCP delivers or fails on its own".into(),
        );
    }
    let framing = framing_or_default(args.target.framing, udp);
    for (i, msg) in args.messages.iter().enumerate() {
        let n = i + 1;
        let bytes = msg.as_encoded_bytes();
        let len = bytes.len();
        if udp {
            if len > sockit::codec::MAX_DATAGRAM {
                return Err(format!(
                    "message {n} is {len} bytes: a UDP datagram holds at most {} bytes",
                    sockit::codec::MAX_DATAGRAM
                ));
            }
            continue;
        }
        match framing {
            Framing::Raw if bytes.is_empty() => {
                return Err(format!(
                    "message {n} is empty: with raw framing nothing would be sent"
                ));
            }
            Framing::Line if bytes.contains(&b'\n') => {
                return Err(format!(
                    "message {n} contains a newline: line framing would split it in two"
                ));
            }
            Framing::Length { prefix, .. } if len as u64 > prefix.max_len() => {
                return Err(format!(
                    "message {n} is {len} bytes: {framing} framing holds at most {} bytes",
                    prefix.max_len()
                ));
            }
            _ => {}
        }
    }
    Ok(())
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
    /// Open-loop load: each client sends N messages a second on a fixed schedule whatever
    /// the replies do, and latency counts from each message's scheduled time (no coordinated
    /// omission); messages carry a sequence number and send time, so --size is at least 8
    /// (16 with line framing), and raw framing cannot be used
    #[arg(long, value_name = "N", value_parser = parse_rate, conflicts_with = "chat")]
    pub rate: Option<f64>,
    /// Print the result as one JSON object
    #[arg(long)]
    pub json: bool,
    /// Chat load instead of ping-pong: --conns members join a chat room, then each sends
    /// --count lines (default 10) while reading; checks every member got every other
    /// member's lines, in order
    #[arg(long)]
    pub chat: bool,
    /// Log more (-v each client's failure)
    #[arg(short, long, action = ArgAction::Count)]
    pub verbose: u8,
    /// --chat: more servers (of one cluster), HOST:PORT each; members are spread over all the
    /// addresses round-robin
    #[arg(value_name = "MORE")]
    pub more: Vec<String>,
    /// A new connection (and with TLS a new handshake) for every message: measures
    /// connections (handshakes) per second
    #[arg(long, conflicts_with_all = ["chat", "rate"])]
    pub reconnect: bool,
    /// TLS (--tls and its settings).
    #[command(flatten)]
    pub tls: crate::tls_args::ClientTls,
}

/// The servers `bench --chat` loads: ADDR [PORT], then every further address (a second
/// argument that is not a port number is an address too).
pub fn chat_targets(args: &BenchArgs) -> Result<Vec<Address>, String> {
    let target = &args.target;
    let port_is_address = target
        .port
        .as_deref()
        .is_some_and(|p| !p.bytes().all(|b| b.is_ascii_digit()));
    let mut addresses = Vec::new();
    let first_port = if port_is_address {
        None
    } else {
        target.port.as_deref()
    };
    addresses.push(parse_address(&target.addr, first_port, None)?);
    let rest = target
        .port
        .iter()
        .filter(|_| port_is_address)
        .chain(args.more.iter());
    for more in rest {
        let address = Address::parse(more, None)
            .map_err(|e| format!("invalid value '{more}' for [MORE]: {e}"))?;
        addresses.push(address);
    }
    for address in &addresses {
        if address.scheme == Scheme::Udp {
            return Err("--chat loads a TCP chat service: it cannot be used with UDP".into());
        }
        match address.inet() {
            Some((_, 0)) => {
                return Err("port 0 cannot be connected to (ports are 1-65535)".into());
            }
            Some(_) => {}
            None => return Err(format!("{address}: not an internet address")),
        }
    }
    Ok(addresses)
}

/// A validated `serve` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// Where to bind.
    pub host: Host,
    /// Port (0 = any).
    pub port: u16,
    /// UDP, by `--udp` or by a `udp:` address.
    pub udp: bool,
    /// rudp, by `--rudp` or by a `rudp:` address.
    pub rudp: bool,
    /// A unix socket to listen on instead of `host` and `port` (`unix:PATH`, `unix:@NAME`).
    pub unix: Option<UnixName>,
    /// TLS by a `tls:` address (`--tls` is in the TLS flags).
    pub tls: bool,
}

impl Listen {
    /// TCP, UDP or rudp.
    pub fn transport(&self) -> Transport {
        if self.rudp {
            Transport::Rudp
        } else {
            transport(self.udp)
        }
    }
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
            // Always the subcommand's whole usage line: clap's own, for a conflict or a missing
            // argument, lists only the arguments given (`sockit serve --quiet [HOST] [PORT]`).
            if let Some(usage) = subcommand_usage(&args) {
                e.insert(ContextKind::Usage, ContextValue::StyledStr(usage));
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
            let listen = listen_addr(a).map_err(|e| ("serve", e))?;
            validate_serve(a, &listen).map_err(|e| ("serve", e))?;
            if listen.rudp {
                check_rudp_framing(a.framing).map_err(|e| ("serve", e))?;
            } else if a.mtu.is_some() {
                return Err(("serve", "--mtu applies to rudp only (--rudp)".into()));
            }
            ("serve", listen.udp, a.framing)
        }
        Command::Connect(a) => {
            a.target.address().map_err(|e| ("connect", e))?;
            validate_connect(a).map_err(|e| ("connect", e))?;
            if a.target.unixgram().is_some() && (a.exec.is_some() || a.sh_exec.is_some()) {
                return Err((
                    "connect",
                    "--exec and --sh-exec need a stream: not unixgram".into(),
                ));
            }
            if let Some(line) = &a.exec {
                sockit::exec::ExecCommand::words(line).map_err(|e| ("connect", e.to_string()))?;
            }
            if let Some(cmd) = &a.sh_exec {
                sockit::exec::ExecCommand::shell(cmd).map_err(|e| ("connect", e.to_string()))?;
            }
            check_target_rudp(&a.target).map_err(|e| ("connect", e))?;
            ("connect", a.target.is_udp(), a.target.framing)
        }
        Command::Bench(a) => {
            if a.chat {
                chat_targets(a).map_err(|e| ("bench", e))?;
            } else if !a.more.is_empty() {
                return Err((
                    "bench",
                    "several addresses apply to --chat only (one server per ping-pong run)".into(),
                ));
            } else {
                a.target.address().map_err(|e| ("bench", e))?;
            }
            if a.target.unixgram().is_some() {
                return Err((
                    "bench",
                    "bench runs over TCP, unix, UDP or rudp: not unixgram".into(),
                ));
            }
            validate_bench(a).map_err(|e| ("bench", e))?;
            check_target_rudp(&a.target).map_err(|e| ("bench", e))?;
            ("bench", a.target.is_udp(), a.target.framing)
        }
        Command::User(_) | Command::Port(_) | Command::Completions(_) | Command::Man(_) => {
            return Ok(());
        }
        Command::Send(a) => return a.split().map(drop).map_err(|e| ("send", e)),
        Command::Get(a) => return a.split().map(drop).map_err(|e| ("get", e)),
        Command::Ls(a) => return a.address().map(drop).map_err(|e| ("ls", e)),
        Command::Resolve(a) => return validate_resolve(a).map_err(|e| ("resolve", e)),
        Command::Ping(a) => return a.target().map(drop).map_err(|e| ("ping", e)),
        Command::Scan(a) => {
            scan_ports(a).map_err(|e| ("scan", e))?;
            return Ok(());
        }
        Command::Ip(a) => return a.inputs().map(drop).map_err(|e| ("ip", e)),
        Command::Relay(a) => return a.addresses().map(drop).map_err(|e| ("relay", e)),
    };
    if udp && framing.is_some_and(|f| f != Framing::Raw) {
        return Err((
            sub,
            "--framing applies to TCP only: with --udp every datagram is one message".into(),
        ));
    }
    Ok(())
}

/// rudp carries whole messages: there is nothing for a framing to delimit.
fn check_rudp_framing(framing: Option<Framing>) -> Result<(), String> {
    match framing {
        Some(_) => Err("--framing applies to TCP only: rudp carries whole messages".into()),
        None => Ok(()),
    }
}

/// `--rudp` refuses `--framing`; `--mtu` needs `--rudp`.
fn check_target_rudp(target: &Target) -> Result<(), String> {
    if target.is_rudp() {
        check_rudp_framing(target.framing)
    } else if target.mtu.is_some() {
        Err("--mtu applies to rudp only (--rudp)".into())
    } else {
        Ok(())
    }
}

/// The ports `scan` probes: PORTS, or the `--top N` list; exactly one of them.
pub fn scan_ports(args: &ScanArgs) -> Result<PortList, String> {
    match (&args.ports, args.top) {
        (Some(ports), None) => Ok(ports.clone()),
        (None, Some(n)) => PortList::top(n as usize)
            .map_err(|e| format!("invalid value '{n}' for '--top <N>': {e}")),
        (None, None) => Err("no ports to scan: give PORTS (e.g. 1-1024 or all) or --top N".into()),
        (Some(_), Some(_)) => Err("give PORTS or --top N, not both".into()),
    }
}

/// Checks `bench` arguments that depend on each other: the message size against the framing
/// and transport.
pub fn validate_bench(args: &BenchArgs) -> Result<(), String> {
    let target = &args.target;
    if args.chat {
        use sockit::bench::chat::{MAX_COUNT, MAX_MEMBERS};
        if target.is_udp() || target.is_rudp() {
            return Err(
                "--chat loads a TCP chat service: it cannot be used with UDP or rudp".into(),
            );
        }
        if target.framing() != Framing::Line {
            return Err("--chat members use line framing: leave --framing out".into());
        }
        if args.count.is_some_and(|n| n as u64 > MAX_COUNT) {
            return Err(format!(
                "invalid value for '--count <N>': --chat sends at most {MAX_COUNT} lines per member"
            ));
        }
        if args.conns > MAX_MEMBERS {
            return Err(format!(
                "invalid value for '--conns <N>': --chat runs at most {MAX_MEMBERS} members"
            ));
        }
        return Ok(());
    }
    sockit::bench::check_size(target.transport(), target.framing(), args.size)
        .map_err(|e| format!("invalid value '{}' for '--size <BYTES>': {e}", args.size))?;
    if let Some(rate) = args.rate {
        use sockit::bench::BenchError;
        sockit::bench::check_rate(target.transport(), target.framing(), args.size, rate).map_err(
            |e| match e {
                BenchError::Size(e) => {
                    format!("invalid value '{}' for '--size <BYTES>': {e}", args.size)
                }
                other => other.to_string(),
            },
        )?;
    }
    Ok(())
}

/// Works out the `serve` address: `[ADDR] [PORT]`, where a lone number is the port.
pub fn listen_addr(args: &ServeArgs) -> Result<Listen, String> {
    let port_err = |e: sockit::ConfigError| format!("invalid value for [PORT]: {e}");
    let default_host = || parse_host(DEFAULT_HOST).expect("the default host parses");
    let (host, port, scheme) = match (&args.host, &args.port) {
        (None, _) => (default_host(), DEFAULT_PORT, Scheme::Tcp),
        (Some(only), None) if only.bytes().all(|b| b.is_ascii_digit()) => (
            default_host(),
            parse_port(only).map_err(port_err)?,
            Scheme::Tcp,
        ),
        (Some(addr), port) => {
            let address = parse_address(addr, port.as_deref(), Some(DEFAULT_PORT))?;
            check_scheme_or_tls(&address, addr, args.udp, args.rudp)?;
            check_rudp(&address, addr, args.rudp)?;
            match address.endpoint {
                Endpoint::Inet { host, port } => (host, port, address.scheme),
                Endpoint::Unix(name) => {
                    if args.rudp {
                        return Err(format!("'{addr}' is a unix socket but --rudp says rudp"));
                    }
                    return Ok(Listen {
                        host: default_host(),
                        port: 0,
                        udp: address.scheme == Scheme::Unixgram,
                        rudp: false,
                        unix: Some(name),
                        tls: false,
                    });
                }
            }
        }
    };
    Ok(Listen {
        host,
        port,
        udp: args.udp || scheme == Scheme::Udp,
        rudp: args.rudp || scheme == Scheme::Rudp,
        unix: None,
        tls: scheme == Scheme::Tls,
    })
}

/// `--cluster`: a `nats://HOST:PORT` URL (the scheme may be left out).
fn parse_cluster_url(s: &str) -> Result<String, String> {
    let rest = s.strip_prefix("nats://").unwrap_or(s);
    let valid = !rest.is_empty()
        && !rest.contains('/')
        && rest
            .rsplit_once(':')
            .is_none_or(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if valid {
        Ok(format!("nats://{rest}"))
    } else {
        Err(format!(
            "'{s}' is not a NATS address (expected nats://HOST:PORT)"
        ))
    }
}

/// `--node`: a name other servers can tell apart.
fn parse_node(s: &str) -> Result<String, String> {
    if sockit::cluster::wire::valid_node(s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "'{s}' is not a node name (1 to 32 letters, digits, - and _)"
        ))
    }
}

/// `--exec`/`--sh-exec` need a stream socket and replace the service; `--mode` needs a unix
/// socket file.
fn check_exec_serve(args: &ServeArgs, listen: &Listen) -> Result<(), String> {
    let exec = args.exec.is_some() || args.sh_exec.is_some();
    if exec && (listen.udp || listen.rudp) {
        return Err(
            "--exec and --sh-exec need a stream (TCP, TLS or unix): not UDP or rudp".into(),
        );
    }
    if exec {
        let flag = if args.exec.is_some() {
            "--exec"
        } else {
            "--sh-exec"
        };
        let services_only = [
            ("--kb", args.kb.is_some()),
            ("--cluster", args.cluster.is_some()),
            ("--chat-retention", args.chat_retention.is_some()),
            ("--dir", args.dir.is_some()),
        ];
        if let Some((other, _)) = services_only.iter().find(|(_, given)| *given) {
            return Err(format!(
                "{other} configures a service: it cannot be combined with {flag}, which runs a program instead"
            ));
        }
    }
    if let Some(line) = &args.exec {
        sockit::exec::ExecCommand::words(line).map_err(|e| e.to_string())?;
    }
    if let Some(cmd) = &args.sh_exec {
        sockit::exec::ExecCommand::shell(cmd).map_err(|e| e.to_string())?;
    }
    if listen.unix.is_some() && listen.udp && args.udp_rate.is_some() {
        return Err("--udp-rate applies to UDP only: a unix socket cannot reflect traffic".into());
    }
    if args.mode.is_some() && !matches!(listen.unix, Some(UnixName::Path(_))) {
        return Err(
            "--mode sets a unix socket file's permissions: it needs a unix:PATH address".into(),
        );
    }
    Ok(())
}

/// Refuses `serve` options that do not apply to the transport.
fn validate_serve(args: &ServeArgs, listen: &Listen) -> Result<(), String> {
    let udp = listen.udp;
    check_exec_serve(args, listen)?;
    if args.hex && (udp || listen.rudp) {
        return Err("--hex applies to stream connections (TCP, unix), not UDP or rudp".into());
    }
    let files = args.service == ServiceKind::Files;
    if files {
        if udp || listen.rudp {
            return Err("the files service runs over TCP only".into());
        }
        if args.login.is_some() {
            return Err("--login does not apply to the files service".into());
        }
        if args
            .framing
            .is_some_and(|f| !matches!(f, Framing::Header { .. }))
        {
            return Err(
                "the files service speaks header framing (and detects headerle): leave --framing out"
                    .into(),
            );
        }
    } else {
        let files_only = [
            ("--dir", args.dir.is_some()),
            ("--read-only", args.read_only),
            ("--overwrite", args.overwrite),
            ("--max-file-size", args.max_file_size.is_some()),
            ("--partial-ttl", args.partial_ttl.is_some()),
        ];
        if let Some((flag, _)) = files_only.iter().find(|(_, given)| *given) {
            return Err(format!(
                "{flag} applies to the files service (--service files)"
            ));
        }
    }
    if listen.rudp && args.udp_rate.is_some() {
        return Err("--udp-rate applies to plain UDP only (--udp)".into());
    }
    if udp && args.login.is_some() {
        return Err("--login needs a connection: it applies to TCP only".into());
    }
    if args.kb.is_some() && !matches!(args.service, ServiceKind::Lookup | ServiceKind::Hub) {
        return Err(format!(
            "--kb applies to the lookup and hub services, not {}",
            args.service
        ));
    }
    if args.cluster.is_some() && !matches!(args.service, ServiceKind::Chat | ServiceKind::Hub) {
        return Err(format!(
            "--cluster applies to the chat and hub services, not {}",
            args.service
        ));
    }
    if let Some(bytes) = args.chat_retention {
        if !matches!(args.service, ServiceKind::Chat | ServiceKind::Hub) {
            return Err(format!(
                "--chat-retention applies to the chat and hub services, not {}",
                args.service
            ));
        }
        if bytes < sockit::service::chat::MIN_RETENTION {
            return Err(format!(
                "invalid value '{bytes}' for '--chat-retention <BYTES>': it must be at least 256K (a few of the largest messages)"
            ));
        }
    }
    if args.users.is_some() && args.service != ServiceKind::Hub {
        return Err("--users applies to the hub (for other services use --login)".into());
    }
    if udp || listen.rudp {
        let tcp_only = [
            ("--max-line", args.max_line.is_some()),
            ("--max-frame", args.max_frame.is_some()),
            ("--max-conns-per-ip", args.max_conns_per_ip.is_some()),
        ];
        if let Some((flag, _)) = tcp_only.iter().find(|(_, given)| *given) {
            return Err(if listen.rudp {
                format!("{flag} applies to TCP only: rudp carries whole messages of up to 1 MiB")
            } else {
                format!(
                    "{flag} applies to TCP only: with --udp every datagram is one message of at \
                     most 65507 bytes"
                )
            });
        }
    } else if args.udp_rate.is_some() {
        return Err("--udp-rate applies to UDP only (--udp)".into());
    } else {
        // Frames spanning several reads may use half of the budget: the largest must fit.
        let frame = args.max_frame.unwrap_or(sockit::codec::DEFAULT_MAX_FRAME);
        let line = args.max_line.unwrap_or(sockit::codec::DEFAULT_MAX_LINE);
        let needed = frame
            .max(2 * line)
            .saturating_add(sockit::codec::DEFAULT_MAX_HEADER)
            .saturating_mul(2);
        if args.max_memory < needed {
            return Err(format!(
                "--max-memory {} cannot hold one largest frame: it must be at least {needed} \
                 bytes (twice --max-frame plus 64K), or lower --max-frame",
                args.max_memory
            ));
        }
    }
    Ok(())
}

fn built_command() -> clap::Command {
    let mut cmd = Cli::command();
    cmd.build();
    cmd
}

fn subcommand_usage(args: &[OsString]) -> Option<clap::builder::StyledStr> {
    let mut cmd = built_command();
    let name = args.get(1)?.to_str()?;
    let sub = cmd.find_subcommand_mut(name)?;
    // `sockit user add …`: the nested subcommand's own usage line.
    let nested = args.get(2).and_then(|a| a.to_str());
    match nested.filter(|n| sub.get_subcommands().any(|c| c.get_name() == *n)) {
        Some(nested) => Some(sub.find_subcommand_mut(nested)?.render_usage()),
        None => Some(sub.render_usage()),
    }
}

fn usage_error(sub: &str, msg: &str) -> clap::Error {
    let mut cmd = built_command();
    match cmd.find_subcommand_mut(sub) {
        Some(sub) => sub.error(ErrorKind::ValueValidation, msg),
        None => cmd.error(ErrorKind::ValueValidation, msg),
    }
}

fn parse_framing(s: &str) -> Result<Framing, String> {
    s.parse().map_err(|e: sockit::ConfigError| e.to_string())
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= 1e7 => Ok(r),
        _ => Err(format!(
            "'{s}' is not a rate (messages per second per client, more than 0, at most 10000000)"
        )),
    }
}

fn parse_file_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    for suffix in ["tib", "tb", "t"] {
        if let Some(n) = t.strip_suffix(suffix) {
            return n
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(1 << 40))
                .ok_or_else(|| format!("'{s}' is not a size (a number, optionally K, M, G or T)"));
        }
    }
    parse_size(s).map(|n| n as u64)
}

fn parse_service(s: &str) -> Result<ServiceKind, String> {
    s.parse()
}

fn parse_user_name(s: &str) -> Result<String, String> {
    sockit::users::validate_name(s)
        .map(|()| s.to_owned())
        .map_err(|why| format!("'{s}' is not a user name: {why}"))
}

fn parse_lang(s: &str) -> Result<Lang, String> {
    s.parse()
}

fn parse_count(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("'{s}' is not a whole number")),
    }
}

/// A duration: seconds, fractions allowed, with an optional unit — `1.5`, `500ms`, `2s`, `1m`,
/// `1h`. 0 is allowed (it means "off" where the flag says so).
fn parse_secs(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let scale = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => f64::NAN,
    };
    let secs = number.parse::<f64>().map(|n| n * scale);
    match secs {
        Ok(secs) if secs.is_finite() && (0.0..=1e9).contains(&secs) => {
            Ok(Duration::from_secs_f64(secs))
        }
        _ => Err(format!(
            "'{s}' is not a duration (seconds, or a number with ms, s, m or h, up to 1e9 s)"
        )),
    }
}

pub(crate) fn parse_positive_secs(s: &str) -> Result<Duration, String> {
    match parse_secs(s)? {
        d if d.is_zero() => Err("must be more than 0 seconds".into()),
        d => Ok(d),
    }
}

/// A `--proxy` URL.
fn parse_proxy(s: &str) -> Result<sockit::proxy::ProxySpec, String> {
    s.parse()
}

/// `remote` or `local`.
fn parse_proxy_dns(s: &str) -> Result<sockit::proxy::ProxyDns, String> {
    s.parse()
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
        let listen = |port, udp| Listen {
            host: local.clone(),
            port,
            udp,
            rudp: false,
            unix: None,
            tls: false,
        };
        assert!(serve(&["tls:127.0.0.1:0"]).unwrap().tls);
        assert!(serve(&["--udp", "tls:127.0.0.1:0"]).is_err());
        assert_eq!(serve(&[]).unwrap(), listen(9000, false));
        assert_eq!(serve(&["9001"]).unwrap(), listen(9001, false));
        assert_eq!(serve(&["127.0.0.1:9002"]).unwrap(), listen(9002, false));
        assert_eq!(serve(&["udp:127.0.0.1:53"]).unwrap(), listen(53, true));
        assert_eq!(serve(&["--udp", "127.0.0.1"]).unwrap(), listen(9000, true));
        assert_eq!(serve(&["0.0.0.0"]).unwrap().port, 9000);
        assert_eq!(serve(&["::1", "0"]).unwrap().port, 0);
        assert_eq!(serve(&["[::1]:0"]).unwrap().port, 0);
    }

    #[test]
    fn serve_address_errors_name_the_argument() {
        assert!(serve(&["70000"]).unwrap_err().contains("[PORT]"));
        assert!(
            serve(&["127.0.0.1", "http"])
                .unwrap_err()
                .contains("[PORT]")
        );
        assert!(serve(&["256.1.1.1"]).unwrap_err().contains("<ADDR>"));
        assert!(
            serve(&["--udp", "unix:/tmp/x"])
                .unwrap_err()
                .contains("unix stream socket")
        );
        assert!(
            serve(&["--udp", "tcp:127.0.0.1:1"])
                .unwrap_err()
                .contains("--udp")
        );
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
        assert_eq!(parse_secs("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_secs("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_secs("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_secs("1.5h").unwrap(), Duration::from_secs(5400));
        for bad in ["-1", "NaN", "inf", "soon", "5x", "ms", "1e99", "2 weeks"] {
            assert!(parse_secs(bad).is_err(), "{bad}");
        }
    }
}
