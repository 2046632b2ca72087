//! PROXY protocol (HAProxy's v1 text and v2 binary headers, through the `ppp` crate):
//! `--proxy-send v1|v2` tells the target who the client is; `--proxy-accept` reads the header a
//! load balancer in front of the relay sends, and treats its source as the client.

use std::fmt;
use std::net::{SocketAddr, SocketAddrV6};
use std::str::FromStr;
use std::time::{Duration, Instant};

use ppp::v2::{Builder, Command, Protocol, Version};
use ppp::{HeaderResult, PartialResult};
use tokio::io::Interest;

use crate::relay::sock::Sock;

/// The longest header accepted: a v1 header is at most 107 bytes; a v2 header with TLVs can be
/// longer, but more than this is refused rather than buffered.
pub const MAX_HEADER: usize = 4096;
/// How long a client has to send its whole header.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// A PROXY protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyVersion {
    /// `PROXY TCP4 src dst sport dport\r\n`.
    V1,
    /// The binary header.
    V2,
}

impl FromStr for ProxyVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "v1" | "1" => Ok(ProxyVersion::V1),
            "v2" | "2" => Ok(ProxyVersion::V2),
            _ => Err(format!("'{s}' is not a PROXY protocol version (v1 or v2)")),
        }
    }
}

impl fmt::Display for ProxyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProxyVersion::V1 => "v1",
            ProxyVersion::V2 => "v2",
        })
    }
}

/// Both addresses in one family (an IPv4 one mapped into IPv6 if they differ).
fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |s: SocketAddr| match s {
        SocketAddr::V4(v4) => {
            SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        v6 => v6,
    };
    if a.is_ipv4() == b.is_ipv4() {
        (a, b)
    } else {
        (v6(a), v6(b))
    }
}

/// The header announcing a connection from `source` to `dest`; without both (a unix client),
/// v1's `UNKNOWN` or v2's `LOCAL` command.
pub fn header(version: ProxyVersion, addrs: Option<(SocketAddr, SocketAddr)>) -> Vec<u8> {
    match version {
        ProxyVersion::V1 => {
            let addresses = match addrs {
                Some((s, d)) => ppp::v1::Addresses::from(same_family(s, d)),
                None => ppp::v1::Addresses::Unknown,
            };
            addresses.to_string().into_bytes()
        }
        ProxyVersion::V2 => {
            let built = match addrs {
                Some((s, d)) => Builder::with_addresses(
                    Version::Two | Command::Proxy,
                    Protocol::Stream,
                    same_family(s, d),
                )
                .build(),
                None => Builder::with_addresses(
                    Version::Two | Command::Local,
                    Protocol::Unspecified,
                    ppp::v2::Addresses::Unspecified,
                )
                .build(),
            };
            // Building from valid addresses cannot fail; fall back to the fixed LOCAL header.
            built.unwrap_or_else(|_| {
                let mut h = ppp::v2::PROTOCOL_PREFIX.to_vec();
                h.extend([0x20, 0x00, 0x00, 0x00]);
                h
            })
        }
    }
}

/// Reads a v1 or v2 header from `sock` without consuming a byte past it. `Ok(Some(addr))` is
/// the client it names; `Ok(None)` a header without one (`UNKNOWN`, `LOCAL`).
pub(crate) async fn read_header(sock: &Sock) -> Result<Option<SocketAddr>, String> {
    let start = Instant::now();
    let mut buf = vec![0u8; MAX_HEADER];
    let fd = sock.fd();
    let mut last = 0;
    loop {
        let left = HEADER_TIMEOUT.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(format!(
                "no complete PROXY header within {HEADER_TIMEOUT:?}"
            ));
        }
        let peek = sock.io(Interest::READABLE, || {
            // SAFETY: `buf` is valid for its length; MSG_PEEK leaves the bytes queued.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_PEEK) };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        let n = match tokio::time::timeout(left, peek).await {
            Ok(Ok(0)) => return Err("the client closed before its PROXY header".into()),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(format!("reading the PROXY header: {e}")),
            Err(_) => {
                return Err(format!(
                    "no complete PROXY header within {HEADER_TIMEOUT:?}"
                ));
            }
        };
        let parsed = HeaderResult::parse(&buf[..n]);
        if parsed.is_incomplete() {
            if n >= MAX_HEADER {
                return Err(format!("PROXY header longer than {MAX_HEADER} bytes"));
            }
            if n == last {
                // Peeking does not clear readiness: wait a little for the rest.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            last = n;
            continue;
        }
        let (len, source) = match parsed {
            HeaderResult::V1(Ok(h)) => {
                let source = match h.addresses {
                    ppp::v1::Addresses::Tcp4(a) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    ppp::v1::Addresses::Tcp6(a) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    ppp::v1::Addresses::Unknown => None,
                };
                (h.header.len(), source)
            }
            HeaderResult::V2(Ok(h)) => {
                let source = match (h.command, h.addresses) {
                    (Command::Proxy, ppp::v2::Addresses::IPv4(a)) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    (Command::Proxy, ppp::v2::Addresses::IPv6(a)) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    _ => None,
                };
                (h.len(), source)
            }
            HeaderResult::V1(Err(e)) => return Err(format!("malformed PROXY v1 header: {e}")),
            HeaderResult::V2(Err(e)) => return Err(format!("malformed PROXY header: {e}")),
        };
        // Consume exactly the header; the rest is the client's data.
        let mut rest = &mut buf[..len];
        while !rest.is_empty() {
            let got = sock
                .read(rest)
                .await
                .map_err(|e| format!("reading the PROXY header: {e}"))?;
            if got == 0 {
                return Err("the client closed inside its PROXY header".into());
            }
            rest = &mut rest[got..];
        }
        return Ok(source);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_through_the_parser() {
        let (s, d): (SocketAddr, SocketAddr) = (
            "192.0.2.7:5000".parse().unwrap(),
            "127.0.0.1:80".parse().unwrap(),
        );
        let v1 = header(ProxyVersion::V1, Some((s, d)));
        assert_eq!(v1, b"PROXY TCP4 192.0.2.7 127.0.0.1 5000 80\r\n");
        let v2 = header(ProxyVersion::V2, Some((s, d)));
        match HeaderResult::parse(&v2) {
            HeaderResult::V2(Ok(h)) => assert_eq!(h.len(), v2.len()),
            other => panic!("{other:?}"),
        }
        assert_eq!(header(ProxyVersion::V1, None), b"PROXY UNKNOWN\r\n");
        let mixed = header(ProxyVersion::V1, Some((s, "[::1]:80".parse().unwrap())));
        assert!(mixed.starts_with(b"PROXY TCP6 ::ffff:192.0.2.7 ::1 5000 80"));
    }
}
