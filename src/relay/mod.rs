//! `sockit relay LISTEN TARGET`: a port forwarder that can also show and break what passes.
//!
//! TCP and unix streams are relayed in both directions at once; when no byte has to be looked
//! at (no `--hex`, `--trace` or fault), bytes move socket → pipe → socket with splice(2) and
//! never reach user space. Otherwise each direction copies through a 64 KiB buffer, runs the
//! inspection taps and the faults. A FIN is relayed as a FIN (the other direction keeps
//! flowing) and a RST as a RST (the other side is closed with `SO_LINGER` 0). UDP is relayed
//! with one upstream socket per client address ([`udp`]). Every connection or flow ends with
//! one [`ConnRecord`].

pub mod api;
mod batch;
pub mod fault;
pub mod inspect;
pub mod proxy;
mod sock;
mod tcp;
pub mod udp;

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::net::{TcpListener, TcpSocket, UdpSocket, UnixListener};
use tokio_util::sync::CancellationToken;

use crate::net::ip::parse_input;
use crate::net::{Address, Endpoint, Scheme, UnixName, resolve};
pub use fault::{Dir, Fault, FaultKind};
pub use inspect::Inspect;
pub use proxy::ProxyVersion;

/// An IP prefix for `--allow`/`--deny`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR` or `ADDR/PREFIX`.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let input = parse_input(s.trim()).map_err(|e| e.to_string())?;
        let max = if input.addr.is_ipv4() { 32 } else { 128 };
        Ok(Cidr {
            addr: input.addr,
            prefix: input.prefix.unwrap_or(max),
        })
    }

    /// Whether `ip` is inside the prefix (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let shift = 32 - u32::from(self.prefix);
                shift == 32 || (u32::from(net) >> shift) == (u32::from(ip) >> shift)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let shift = 128 - u32::from(self.prefix);
                shift == 128 || (u128::from(net) >> shift) == (u128::from(ip) >> shift)
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Everything `sockit relay` is told.
#[derive(Clone)]
pub struct RelayConfig {
    /// Where to listen (`HOST:PORT`, `udp:HOST:PORT`, `unix:PATH`).
    pub listen: Address,
    /// Where to forward.
    pub target: Address,
    /// Most connections relayed at once; more are closed on accept.
    pub max_conns: usize,
    /// Clients allowed (empty: all).
    pub allow: Vec<Cidr>,
    /// Clients refused (checked before `allow`).
    pub deny: Vec<Cidr>,
    /// Close a TCP connection idle this long in both directions; end an idle UDP flow.
    pub idle_timeout: Option<Duration>,
    /// How long to wait for the target to accept.
    pub connect_timeout: Duration,
    /// Most UDP flows (client addresses) at once; the least recently used is evicted.
    pub udp_flows: usize,
    /// Never use splice(2) (for comparisons; inspection and faults imply it).
    pub no_splice: bool,
    /// The taps.
    pub inspect: Arc<Inspect>,
    /// The faults, in order; they can change while the relay runs (the API does), and
    /// existing connections and flows follow.
    pub faults: Arc<fault::FaultSet>,
    /// Seed of every random choice the faults make.
    pub seed: u64,
    /// Send a PROXY protocol header of this version to the target first (TCP/unix).
    pub proxy_send: Option<ProxyVersion>,
    /// Read a PROXY protocol header (v1 or v2) from each client first; its source is the
    /// client (for the log and `--allow`/`--deny`).
    pub proxy_accept: bool,
    /// Where connection records go.
    pub records: Arc<dyn Fn(&ConnRecord) + Send + Sync>,
    /// TLS on the listening side (a `tls:` LISTEN): each client's handshake, then the relay
    /// sees the plaintext.
    pub listen_tls: Option<Arc<crate::tls::TlsServer>>,
    /// TLS to the target (a `tls:` TARGET), checked against the target's host name.
    pub target_tls: Option<Arc<crate::tls::TlsClient>>,
}

/// How one side of a relayed connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Close {
    /// It sent a FIN.
    Fin,
    /// It sent a RST (or its socket failed).
    Rst,
    /// The idle timeout (or a `timeout` fault) closed it.
    Timeout,
    /// The relay closed it because the other side ended or a fault fired.
    Relay,
    /// Never connected (target refused or unreachable).
    Refused,
    /// The relay shut down while it was open.
    Shutdown,
}

impl fmt::Display for Close {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Close::Fin => "FIN",
            Close::Rst => "RST",
            Close::Timeout => "timeout",
            Close::Relay => "closed by relay",
            Close::Refused => "refused",
            Close::Shutdown => "shutdown",
        })
    }
}

/// One relayed connection or UDP flow, reported when it ends.
#[derive(Clone, Debug, Serialize)]
pub struct ConnRecord {
    /// Connection number, from 1.
    pub conn: u64,
    /// `tcp`, `tls`, `unix` or `udp` (of the listening side).
    pub proto: &'static str,
    /// The client's address.
    pub client: String,
    /// The target's address (as connected), or the target as given if the connect failed.
    pub target: String,
    /// Bytes client → target.
    pub bytes_up: u64,
    /// Bytes target → client.
    pub bytes_down: u64,
    /// Datagrams client → target (UDP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datagrams_up: Option<u64>,
    /// Datagrams target → client (UDP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datagrams_down: Option<u64>,
    /// Seconds from accept to the end.
    pub duration_secs: f64,
    /// How the client side ended.
    pub client_close: Close,
    /// How the target side ended.
    pub target_close: Close,
    /// `splice`, `copy` or `udp`.
    pub path: &'static str,
    /// What went wrong, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl fmt::Display for ConnRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "conn {} {} {} -> {}: {} B up, {} B down",
            self.conn, self.proto, self.client, self.target, self.bytes_up, self.bytes_down
        )?;
        if let (Some(up), Some(down)) = (self.datagrams_up, self.datagrams_down) {
            write!(f, " ({up} datagrams up, {down} down)")?;
        }
        write!(
            f,
            ", {:.3} s, client {}, target {} [{}]",
            self.duration_secs, self.client_close, self.target_close, self.path
        )?;
        if let Some(e) = &self.error {
            write!(f, ": {e}")?;
        }
        Ok(())
    }
}

/// What a finished relay did.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct RelayReport {
    /// Connections (or UDP flows) relayed.
    pub relayed: u64,
    /// Connections refused by `--max-conns`, `--allow`/`--deny` or a `down` fault.
    pub refused: u64,
    /// Connections whose target could not be reached.
    pub target_failed: u64,
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, Option<std::path::PathBuf>),
    Udp(Arc<UdpSocket>),
}

/// A bound relay, ready to run.
pub struct Relay {
    listener: Listener,
    config: Arc<RelayConfig>,
    local: String,
}

/// Turns an address into a unix socket address (path or abstract name).
fn unix_addr(name: &UnixName) -> io::Result<std::os::unix::net::SocketAddr> {
    match name {
        UnixName::Path(p) => std::os::unix::net::SocketAddr::from_pathname(p),
        UnixName::Abstract(n) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(n.as_bytes())
        }
    }
}

async fn first_addr(address: &Address) -> io::Result<SocketAddr> {
    match &address.endpoint {
        Endpoint::Inet { host, port } => Ok(resolve(host, *port).await?[0]),
        Endpoint::Unix(_) => Err(io::Error::other("not an internet address")),
    }
}

impl Relay {
    /// Binds the listening socket; checks the pairing of the two addresses.
    pub async fn bind(config: RelayConfig) -> io::Result<Relay> {
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
        let (ls, ts) = (config.listen.scheme, config.target.scheme);
        if ls == Scheme::Tls && config.listen_tls.is_none() {
            return Err(bad(
                "a tls: LISTEN address needs the TLS server settings".into()
            ));
        }
        if ts == Scheme::Tls && config.target_tls.is_none() {
            return Err(bad(
                "a tls: TARGET address needs the TLS client settings".into()
            ));
        }
        if ls == Scheme::Tls && config.proxy_accept {
            return Err(bad(
                "--proxy-accept with a tls: LISTEN address is not supported".into(),
            ));
        }
        if ls == Scheme::Unixgram || ts == Scheme::Unixgram {
            return Err(bad(
                "unixgram: addresses are for the datagram services of sockit serve, not the relay"
                    .into(),
            ));
        }
        if ls == Scheme::Rudp || ts == Scheme::Rudp {
            return Err(bad(
                "rudp: runs over UDP: relay it with udp: addresses (faults included)".into(),
            ));
        }
        if (ls == Scheme::Udp) != (ts == Scheme::Udp) {
            return Err(bad(format!(
                "cannot relay {ls} to {ts}: UDP relays only to UDP, streams only to streams"
            )));
        }
        let (listener, local) = match &config.listen.endpoint {
            Endpoint::Unix(name) => {
                // A stale socket file is replaced, a live one refused (not stolen).
                crate::transport::unix::prepare_bind(name, false)?;
                let addr = unix_addr(name)?;
                let std = std::os::unix::net::UnixListener::bind_addr(&addr)?;
                std.set_nonblocking(true)?;
                let path = match name {
                    UnixName::Path(p) => Some(p.clone()),
                    UnixName::Abstract(_) => None,
                };
                (
                    Listener::Unix(UnixListener::from_std(std)?, path),
                    format!("unix:{name}"),
                )
            }
            Endpoint::Inet { .. } => {
                let addr = first_addr(&config.listen).await?;
                if ls == Scheme::Udp {
                    let sock = UdpSocket::bind(addr).await?;
                    let local = sock.local_addr()?;
                    (Listener::Udp(Arc::new(sock)), format!("udp {local}"))
                } else {
                    // A deep backlog: a burst of clients waits in it instead of having its
                    // SYNs dropped (a second's retransmit each) while the loop catches up.
                    let socket = if addr.is_ipv4() {
                        TcpSocket::new_v4()?
                    } else {
                        TcpSocket::new_v6()?
                    };
                    socket.set_reuseaddr(true)?;
                    socket.bind(addr)?;
                    let sock = socket.listen(4096)?;
                    let local = sock.local_addr()?;
                    (Listener::Tcp(sock), format!("tcp {local}"))
                }
            }
        };
        Ok(Relay {
            listener,
            config: Arc::new(config),
            local,
        })
    }

    /// Where it listens: `tcp 127.0.0.1:4000`, `udp …`, `unix:/path`.
    pub fn local(&self) -> &str {
        &self.local
    }

    /// Relays until `shutdown`; open connections are left to end with the process.
    pub async fn run(self, shutdown: CancellationToken) -> RelayReport {
        match self.listener {
            Listener::Udp(sock) => udp::run(sock, self.config, shutdown).await,
            Listener::Tcp(l) => tcp::run(tcp::Accept::Tcp(l), self.config, shutdown).await,
            Listener::Unix(l, path) => {
                let report = tcp::run(tcp::Accept::Unix(l), self.config, shutdown).await;
                if let Some(path) = path {
                    let _ = std::fs::remove_file(path);
                }
                report
            }
        }
    }
}

/// Whether `--allow`/`--deny` let `ip` in.
fn admitted(config: &RelayConfig, ip: Option<IpAddr>) -> bool {
    let Some(ip) = ip else { return true };
    if config.deny.iter().any(|c| c.contains(ip)) {
        return false;
    }
    config.allow.is_empty() || config.allow.iter().any(|c| c.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_matching() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(
            !Cidr::parse("::1")
                .unwrap()
                .contains("127.0.0.1".parse().unwrap())
        );
        assert!(Cidr::parse("10.0.0.0/33").is_err());
    }
}
