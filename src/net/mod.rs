//! Network basics: parsing hosts, ports and addresses the way users type them, and resolving
//! names.
//!
//! A string made only of digits and dots is taken as an IPv4 address and must be one (so
//! `256.1.1.1` is an error, not a host name to look up); one with a colon must be an IPv6
//! address (brackets allowed); anything else must be a syntactically valid host name.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::error::ConfigError;

pub mod addr;
pub mod ip;
pub mod lookup;
pub mod services;

pub use addr::{Address, Endpoint, PeerAddr, Scheme, UnixName};

/// A host as given by the user: an address, or a name to resolve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// A literal IPv4 or IPv6 address.
    Ip(IpAddr),
    /// A DNS name (or `localhost`).
    Name(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

/// Parses a host: an IPv4 address, an IPv6 address (optionally in brackets), or a host name.
pub fn parse_host(s: &str) -> Result<Host, ConfigError> {
    let bad = |reason| ConfigError::BadAddress {
        value: s.to_owned(),
        reason,
    };
    if s.is_empty() {
        return Err(bad("empty"));
    }
    if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return s
            .parse::<Ipv4Addr>()
            .map(|ip| Host::Ip(ip.into()))
            .map_err(|_| bad("not an IPv4 address (four numbers 0-255 separated by dots)"));
    }
    if s.contains(':') {
        let inner = s
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(s);
        return inner
            .parse::<Ipv6Addr>()
            .map(|ip| Host::Ip(ip.into()))
            .map_err(|_| bad("not an IPv6 address"));
    }
    if is_host_name(s) {
        Ok(Host::Name(s.to_owned()))
    } else {
        Err(bad(
            "not an IP address or host name (letters, digits, '-' and '.')",
        ))
    }
}

/// RFC 1123 host name syntax (underscores tolerated, as resolvers do).
fn is_host_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Parses a port number, 0 to 65535 (0 asks the system for a free port when binding).
pub fn parse_port(s: &str) -> Result<u16, ConfigError> {
    let bad = |reason| ConfigError::BadPort {
        value: s.to_owned(),
        reason,
    };
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("not a number (ports are 0-65535)"));
    }
    s.parse::<u16>()
        .map_err(|_| bad("out of range (ports are 0-65535)"))
}

/// Resolves `host` to socket addresses, IPv4 first.
pub async fn resolve(host: &Host, port: u16) -> io::Result<Vec<SocketAddr>> {
    match host {
        Host::Ip(ip) => Ok(vec![SocketAddr::new(*ip, port)]),
        Host::Name(name) => {
            let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), port))
                .await
                .map_err(|e| io::Error::new(e.kind(), format!("cannot resolve {name}: {e}")))?
                .collect();
            addrs.sort_by_key(|a| a.is_ipv6());
            addrs.dedup();
            if addrs.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{name} has no addresses"),
                ));
            }
            Ok(addrs)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotted_numbers_must_be_a_valid_ipv4_address() {
        assert_eq!(
            parse_host("127.0.0.1").unwrap(),
            Host::Ip([127, 0, 0, 1].into())
        );
        for bad in ["256.1.1.1", "1.2.3", "1.2.3.4.5", "01.2.3.4"] {
            let err = parse_host(bad);
            assert!(err.is_err(), "{bad}");
        }
        let msg = parse_host("256.1.1.1").unwrap_err().to_string();
        assert!(msg.contains("'256.1.1.1'") && msg.contains("IPv4"), "{msg}");
    }

    #[test]
    fn ipv6_with_or_without_brackets() {
        let v6 = Host::Ip(Ipv6Addr::LOCALHOST.into());
        assert_eq!(parse_host("::1").unwrap(), v6);
        assert_eq!(parse_host("[::1]").unwrap(), v6);
        assert!(parse_host("[::g]").is_err());
    }

    #[test]
    fn host_names_follow_rfc1123() {
        assert_eq!(
            parse_host("localhost").unwrap(),
            Host::Name("localhost".into())
        );
        assert!(parse_host("my-host.example.org").is_ok());
        for bad in [
            "-bad.example",
            "a..b",
            "sp ace",
            "x".repeat(64).as_str(),
            "",
        ] {
            assert!(parse_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ports_are_numbers_up_to_65535() {
        assert_eq!(parse_port("0").unwrap(), 0);
        assert_eq!(parse_port("65535").unwrap(), 65535);
        let msg = parse_port("70000").unwrap_err().to_string();
        assert!(
            msg.contains("'70000'") && msg.contains("out of range"),
            "{msg}"
        );
        let msg = parse_port("http").unwrap_err().to_string();
        assert!(
            msg.contains("'http'") && msg.contains("not a number"),
            "{msg}"
        );
        assert!(parse_port("-1").is_err());
        assert!(parse_port("").is_err());
    }

    #[tokio::test]
    async fn localhost_resolves_with_ipv4_first() {
        let addrs = resolve(&Host::Name("localhost".into()), 80).await.unwrap();
        assert!(addrs[0].ip().is_loopback());
        assert!(addrs[0].is_ipv4() || addrs.iter().all(|a| a.is_ipv6()));
    }
}
