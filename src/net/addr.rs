//! One address grammar for every command, and the address type a peer has.
//!
//! What people type: `HOST PORT` (two arguments), or one argument `HOST:PORT`, `[V6]:PORT`,
//! optionally behind a scheme — `tcp:`, `udp:`, `tls:` (`HOST:PORT` after it), or `unix:PATH`,
//! `unix:@NAME` (an abstract socket), `unixgram:PATH` (a unix datagram socket). A scheme means the same as its flag (`udp:` is `--udp`).
//! Everything parses into one [`Address`]; a connection's far end is a [`PeerAddr`], which can
//! also hold a unix-socket peer.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use crate::error::ConfigError;
use crate::net::{Host, parse_host, parse_port};

/// The transport an address names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// TCP (the default when no scheme is given).
    Tcp,
    /// UDP datagrams (`udp:`, `--udp`).
    Udp,
    /// TLS over TCP (`tls:`).
    Tls,
    /// A unix-domain stream socket (`unix:`).
    Unix,
    /// A unix-domain datagram socket (`unixgram:`), for the datagram services.
    Unixgram,
    /// Reliable UDP (`rudp:`, `--rudp`): sockit's own ARQ protocol over UDP.
    Rudp,
}

impl Scheme {
    /// Every scheme's prefix, without the colon.
    pub const NAMES: &'static [&'static str] = &["tcp", "udp", "rudp", "tls", "unix", "unixgram"];

    fn from_prefix(prefix: &str) -> Option<Scheme> {
        Some(match prefix.to_ascii_lowercase().as_str() {
            "tcp" => Scheme::Tcp,
            "udp" => Scheme::Udp,
            "tls" => Scheme::Tls,
            "unix" => Scheme::Unix,
            "unixgram" => Scheme::Unixgram,
            "rudp" => Scheme::Rudp,
            _ => return None,
        })
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scheme::Tcp => "tcp",
            Scheme::Udp => "udp",
            Scheme::Tls => "tls",
            Scheme::Unix => "unix",
            Scheme::Unixgram => "unixgram",
            Scheme::Rudp => "rudp",
        })
    }
}

/// A unix-domain socket name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum UnixName {
    /// A path in the file system.
    Path(PathBuf),
    /// A Linux abstract socket (`unix:@NAME`).
    Abstract(String),
}

impl fmt::Display for UnixName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnixName::Path(p) => write!(f, "{}", p.display()),
            UnixName::Abstract(name) => write!(f, "@{name}"),
        }
    }
}

/// Where an address points: a host and port, or a unix socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// An IP address or host name, and a port.
    Inet {
        /// The host.
        host: Host,
        /// The port.
        port: u16,
    },
    /// A unix-domain socket.
    Unix(UnixName),
}

/// A parsed address: a scheme and an endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    /// The transport.
    pub scheme: Scheme,
    /// Where.
    pub endpoint: Endpoint,
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.endpoint {
            Endpoint::Inet { host, port } => {
                // A host named like a scheme (`tcp:9000`) would read back as one.
                let named_like_a_scheme =
                    matches!(host, Host::Name(n) if Scheme::from_prefix(n).is_some());
                match self.scheme {
                    Scheme::Tcp if !named_like_a_scheme => write!(f, "{host}:{port}"),
                    scheme => write!(f, "{scheme}:{host}:{port}"),
                }
            }
            Endpoint::Unix(name) => match self.scheme {
                Scheme::Unixgram => write!(f, "unixgram:{name}"),
                _ => write!(f, "unix:{name}"),
            },
        }
    }
}

impl Address {
    /// Parses one argument: `HOST:PORT`, `[V6]:PORT`, `udp:HOST:PORT`, `unix:PATH`, …
    ///
    /// Without a port, `default_port` is used if given (a server has one), else it is an
    /// error. A bare IPv6 address (`::1`) is a host without a port.
    pub fn parse(s: &str, default_port: Option<u16>) -> Result<Address, ConfigError> {
        let (scheme, rest) = split_scheme(s);
        if matches!(scheme, Scheme::Unix | Scheme::Unixgram) {
            return Ok(Address {
                scheme,
                endpoint: Endpoint::Unix(parse_unix(s, rest)?),
            });
        }
        let (host, port) = split_host_port(s, rest)?;
        let port = match port {
            Some(p) => parse_port(p)?,
            None => default_port.ok_or_else(|| ConfigError::BadAddress {
                value: s.to_owned(),
                reason: "no port (give HOST PORT or HOST:PORT)",
            })?,
        };
        Ok(Address {
            scheme,
            endpoint: Endpoint::Inet {
                host: parse_host(host)?,
                port,
            },
        })
    }

    /// Parses the two-argument form `HOST PORT` (the host may carry a scheme: `udp:HOST`).
    pub fn from_host_port(host: &str, port: &str) -> Result<Address, ConfigError> {
        let (scheme, rest) = split_scheme(host);
        if matches!(scheme, Scheme::Unix | Scheme::Unixgram) {
            return Err(ConfigError::BadAddress {
                value: host.to_owned(),
                reason: "a unix socket takes no port",
            });
        }
        let (bare, embedded) = split_host_port(host, rest)?;
        if embedded.is_some() {
            return Err(ConfigError::BadAddress {
                value: host.to_owned(),
                reason: "the port is given twice (as HOST:PORT and as PORT)",
            });
        }
        Ok(Address {
            scheme,
            endpoint: Endpoint::Inet {
                host: parse_host(bare)?,
                port: parse_port(port)?,
            },
        })
    }

    /// The host and port, for an internet address.
    pub fn inet(&self) -> Option<(&Host, u16)> {
        match &self.endpoint {
            Endpoint::Inet { host, port } => Some((host, *port)),
            Endpoint::Unix(_) => None,
        }
    }
}

/// Splits a known scheme prefix off `s`; no prefix means TCP.
fn split_scheme(s: &str) -> (Scheme, &str) {
    if let Some((prefix, rest)) = s.split_once(':') {
        if let Some(scheme) = Scheme::from_prefix(prefix) {
            return (scheme, rest);
        }
    }
    (Scheme::Tcp, s)
}

fn parse_unix(whole: &str, rest: &str) -> Result<UnixName, ConfigError> {
    let bad = |reason| ConfigError::BadAddress {
        value: whole.to_owned(),
        reason,
    };
    if let Some(name) = rest.strip_prefix('@') {
        if name.is_empty() {
            return Err(bad("an abstract socket needs a name after '@'"));
        }
        return Ok(UnixName::Abstract(name.to_owned()));
    }
    if rest.is_empty() {
        return Err(bad("no socket path after 'unix:'"));
    }
    // sun_path holds 108 bytes including the terminating NUL.
    if rest.len() > 107 {
        return Err(bad("a unix socket path is at most 107 bytes"));
    }
    Ok(UnixName::Path(PathBuf::from(rest)))
}

/// Splits `HOST:PORT` or `[V6]:PORT`; a string that is a host alone (a name, an IPv4 address,
/// a bare or bracketed IPv6 address) has no port.
fn split_host_port<'a>(whole: &str, s: &'a str) -> Result<(&'a str, Option<&'a str>), ConfigError> {
    let bad = |reason| ConfigError::BadAddress {
        value: whole.to_owned(),
        reason,
    };
    if let Some(inner) = s.strip_prefix('[') {
        return match inner.split_once(']') {
            Some((v6, "")) => Ok((v6, None)),
            Some((v6, tail)) => match tail.strip_prefix(':') {
                Some(port) => Ok((v6, Some(port))),
                None => Err(bad("expected ':PORT' after ']'")),
            },
            None => Err(bad("'[' without a closing ']'")),
        };
    }
    match s.matches(':').count() {
        0 => Ok((s, None)),
        1 => {
            let (host, port) = s.split_once(':').unwrap_or((s, ""));
            if host.is_empty() {
                return Err(bad("no host before ':PORT'"));
            }
            Ok((host, Some(port)))
        }
        // Two or more colons: an IPv6 address, which needs brackets to carry a port.
        _ if s.parse::<std::net::Ipv6Addr>().is_ok() => Ok((s, None)),
        _ => Err(bad(
            "an IPv6 address with a port needs brackets, as in [::1]:9000",
        )),
    }
}

/// The far end of a connection: an IP socket address or a unix-socket peer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PeerAddr {
    /// A TCP or UDP peer.
    Inet(SocketAddr),
    /// A unix-socket peer; clients of a unix socket are usually unnamed.
    Unix(Option<PathBuf>),
}

impl PeerAddr {
    /// The IP address, for an internet peer.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            PeerAddr::Inet(a) => Some(a.ip()),
            PeerAddr::Unix(_) => None,
        }
    }

    /// The socket address, for an internet peer.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self {
            PeerAddr::Inet(a) => Some(*a),
            PeerAddr::Unix(_) => None,
        }
    }
}

impl From<SocketAddr> for PeerAddr {
    fn from(addr: SocketAddr) -> Self {
        PeerAddr::Inet(addr)
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Inet(a) => write!(f, "{a}"),
            PeerAddr::Unix(Some(path)) => write!(f, "unix:{}", path.display()),
            PeerAddr::Unix(None) => f.write_str("unix:(unnamed)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inet(scheme: Scheme, host: &str, port: u16) -> Address {
        Address {
            scheme,
            endpoint: Endpoint::Inet {
                host: parse_host(host).unwrap(),
                port,
            },
        }
    }

    #[test]
    fn host_port_as_one_argument_in_every_form() {
        let cases = [
            ("127.0.0.1:9000", inet(Scheme::Tcp, "127.0.0.1", 9000)),
            ("[::1]:9000", inet(Scheme::Tcp, "::1", 9000)),
            ("localhost:80", inet(Scheme::Tcp, "localhost", 80)),
            ("udp:127.0.0.1:53", inet(Scheme::Udp, "127.0.0.1", 53)),
            ("UDP:[::1]:53", inet(Scheme::Udp, "::1", 53)),
            ("tcp:example.org:7", inet(Scheme::Tcp, "example.org", 7)),
            ("tls:example.org:443", inet(Scheme::Tls, "example.org", 443)),
        ];
        for (text, want) in cases {
            assert_eq!(Address::parse(text, None).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn a_missing_port_takes_the_default_or_is_an_error() {
        assert_eq!(
            Address::parse("0.0.0.0", Some(9000)).unwrap(),
            inet(Scheme::Tcp, "0.0.0.0", 9000)
        );
        assert_eq!(
            Address::parse("::1", Some(7)).unwrap(),
            inet(Scheme::Tcp, "::1", 7)
        );
        assert_eq!(
            Address::parse("[::1]", Some(7)).unwrap(),
            inet(Scheme::Tcp, "::1", 7)
        );
        let e = Address::parse("127.0.0.1", None).unwrap_err().to_string();
        assert!(e.contains("no port"), "{e}");
    }

    #[test]
    fn unix_paths_and_abstract_names() {
        assert_eq!(
            Address::parse("unix:/tmp/s.sock", None).unwrap().endpoint,
            Endpoint::Unix(UnixName::Path("/tmp/s.sock".into()))
        );
        assert_eq!(
            Address::parse("unix:@sockit", None).unwrap().endpoint,
            Endpoint::Unix(UnixName::Abstract("sockit".into()))
        );
        let gram = Address::parse("unixgram:/tmp/g.sock", None).unwrap();
        assert_eq!(gram.scheme, Scheme::Unixgram);
        assert_eq!(
            gram.endpoint,
            Endpoint::Unix(UnixName::Path("/tmp/g.sock".into()))
        );
        for bad in ["unix:", "unix:@", &format!("unix:/{}", "x".repeat(200))] {
            assert!(Address::parse(bad, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn malformed_addresses_say_what_is_wrong() {
        for (text, why) in [
            ("fe80::zz:9000", "brackets"),
            ("[::1]9000", "':PORT'"),
            ("[::1:9000", "closing"),
            (":9000", "no host"),
            ("127.0.0.1:70000", "out of range"),
            ("127.0.0.1:http", "not a number"),
            ("256.1.1.1:80", "IPv4"),
        ] {
            let e = Address::parse(text, None).unwrap_err().to_string();
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn two_arguments_take_a_bare_host_and_a_port() {
        assert_eq!(
            Address::from_host_port("::1", "9000").unwrap(),
            inet(Scheme::Tcp, "::1", 9000)
        );
        assert_eq!(
            Address::from_host_port("udp:localhost", "53").unwrap(),
            inet(Scheme::Udp, "localhost", 53)
        );
        let e = Address::from_host_port("127.0.0.1:80", "81")
            .unwrap_err()
            .to_string();
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn addresses_display_in_the_grammar_they_parse_from() {
        for text in [
            "127.0.0.1:9000",
            "udp:[::1]:53",
            "unix:@x",
            "unix:/tmp/a",
            "unixgram:/tmp/g",
        ] {
            assert_eq!(Address::parse(text, None).unwrap().to_string(), text);
        }
        // A host named like a scheme keeps its scheme, or it would read back as one.
        let odd = Address::parse("tcp", Some(9000)).unwrap();
        assert_eq!(odd.to_string(), "tcp:tcp:9000");
        assert_eq!(Address::parse(&odd.to_string(), None).unwrap(), odd);
        let peer = PeerAddr::from("127.0.0.1:5".parse::<SocketAddr>().unwrap());
        assert_eq!(peer.to_string(), "127.0.0.1:5");
        assert_eq!(PeerAddr::Unix(None).to_string(), "unix:(unnamed)");
    }
}
