//! `sockit resolve`: forward and reverse lookups through the system resolver (`getaddrinfo`,
//! `getnameinfo`, so `/etc/hosts`, DNS and whatever else `nsswitch.conf` names), and the local
//! host's fully qualified name. Errors carry the resolver's own reason (`gai_strerror`).
//!
//! The calls block; async callers run them with `tokio::task::spawn_blocking`.

use std::ffi::{CStr, CString};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

/// A failed lookup: what was looked up and the resolver's reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} '{input}': {reason}")]
pub struct LookupError {
    /// What failed, e.g. `cannot resolve`.
    pub what: &'static str,
    /// The name or address looked up.
    pub input: String,
    /// The resolver's reason, e.g. `Name or service not known`.
    pub reason: String,
}

/// The result of a forward lookup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Forward {
    /// The name as given.
    pub input: String,
    /// The canonical name the resolver reported, when it reported one.
    pub canonical: Option<String>,
    /// Every address, deduplicated, IPv4 first (otherwise in the resolver's order).
    pub addresses: Vec<IpAddr>,
}

/// `gai_strerror` of a `getaddrinfo`/`getnameinfo` return code (with `errno` for EAI_SYSTEM).
fn gai_reason(code: libc::c_int) -> String {
    if code == libc::EAI_SYSTEM {
        return std::io::Error::last_os_error().to_string();
    }
    // SAFETY: gai_strerror returns a pointer to a static, NUL-terminated string.
    let text = unsafe { CStr::from_ptr(libc::gai_strerror(code)) };
    text.to_string_lossy().into_owned()
}

/// Owns a `getaddrinfo` result list.
struct AddrInfo(*mut libc::addrinfo);

impl Drop for AddrInfo {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the list came from a successful getaddrinfo and is freed once.
            unsafe { libc::freeaddrinfo(self.0) };
        }
    }
}

/// Calls `getaddrinfo(name, NULL)` for stream sockets of any family with `flags`.
fn getaddrinfo(
    name: &str,
    flags: libc::c_int,
    what: &'static str,
) -> Result<AddrInfo, LookupError> {
    let fail = |reason: String| LookupError {
        what,
        input: name.to_owned(),
        reason,
    };
    let c_name = CString::new(name).map_err(|_| fail("contains a NUL byte".into()))?;
    // SAFETY: an all-zero addrinfo is a valid "no hints" value; the fields set are plain ints.
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_family = libc::AF_UNSPEC;
    hints.ai_socktype = libc::SOCK_STREAM;
    hints.ai_flags = flags;
    let mut list: *mut libc::addrinfo = std::ptr::null_mut();
    // SAFETY: valid C strings and hints; `list` receives an allocation freed by AddrInfo.
    let rc = unsafe { libc::getaddrinfo(c_name.as_ptr(), std::ptr::null(), &hints, &mut list) };
    let list = AddrInfo(list);
    if rc != 0 {
        return Err(fail(gai_reason(rc)));
    }
    Ok(list)
}

/// The socket address of one `addrinfo` entry, when it is IPv4 or IPv6.
///
/// # Safety
/// `ai` must point to a valid entry of a live `getaddrinfo` list.
unsafe fn entry_addr(ai: &libc::addrinfo) -> Option<IpAddr> {
    if ai.ai_addr.is_null() {
        return None;
    }
    // SAFETY (caller): ai_addr points to a sockaddr of the family it declares, of ai_addrlen.
    unsafe {
        match ai.ai_family {
            libc::AF_INET => {
                let sin = &*(ai.ai_addr as *const libc::sockaddr_in);
                Some(IpAddr::from(
                    u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                ))
            }
            libc::AF_INET6 => {
                let sin6 = &*(ai.ai_addr as *const libc::sockaddr_in6);
                Some(IpAddr::from(sin6.sin6_addr.s6_addr))
            }
            _ => None,
        }
    }
}

/// Every address `name` resolves to, IPv4 first, without duplicates, with the canonical name.
pub fn forward(name: &str) -> Result<Forward, LookupError> {
    let list = getaddrinfo(name, libc::AI_CANONNAME, "cannot resolve")?;
    let mut canonical = None;
    let mut addresses: Vec<IpAddr> = Vec::new();
    let mut next = list.0;
    while !next.is_null() {
        // SAFETY: `next` walks the live list owned by `list`.
        let ai = unsafe { &*next };
        if canonical.is_none() && !ai.ai_canonname.is_null() {
            // SAFETY: ai_canonname is a NUL-terminated string inside the list.
            let name = unsafe { CStr::from_ptr(ai.ai_canonname) };
            canonical = Some(name.to_string_lossy().into_owned());
        }
        // SAFETY: as above.
        if let Some(ip) = unsafe { entry_addr(ai) } {
            if !addresses.contains(&ip) {
                addresses.push(ip);
            }
        }
        next = ai.ai_next;
    }
    addresses.sort_by_key(IpAddr::is_ipv6);
    if addresses.is_empty() {
        return Err(LookupError {
            what: "cannot resolve",
            input: name.to_owned(),
            reason: "no IPv4 or IPv6 addresses".into(),
        });
    }
    Ok(Forward {
        input: name.to_owned(),
        canonical,
        addresses,
    })
}

/// The name registered for `ip` (`getnameinfo` with `NI_NAMEREQD`: an address without a name
/// is an error, not its own text).
pub fn reverse(ip: IpAddr) -> Result<String, LookupError> {
    let addr = raw_sockaddr(SocketAddr::new(ip, 0));
    let mut host = [0 as libc::c_char; 1025];
    // SAFETY: `addr` is a valid sockaddr of the given length; `host` is a writable buffer of
    // the given length; no service buffer is asked for.
    let rc = unsafe {
        libc::getnameinfo(
            addr.as_ptr(),
            addr.len(),
            host.as_mut_ptr(),
            host.len() as libc::socklen_t,
            std::ptr::null_mut(),
            0,
            libc::NI_NAMEREQD,
        )
    };
    if rc != 0 {
        return Err(LookupError {
            what: "no name for",
            input: ip.to_string(),
            reason: gai_reason(rc),
        });
    }
    // SAFETY: on success getnameinfo wrote a NUL-terminated string into `host`.
    let name = unsafe { CStr::from_ptr(host.as_ptr()) };
    Ok(name.to_string_lossy().into_owned())
}

/// A `sockaddr_in` or `sockaddr_in6` for an address, held in storage large enough for both.
struct RawSockAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl RawSockAddr {
    fn as_ptr(&self) -> *const libc::sockaddr {
        (&self.storage as *const libc::sockaddr_storage).cast()
    }

    fn len(&self) -> libc::socklen_t {
        self.len
    }
}

/// Builds the C socket address of `addr`.
fn raw_sockaddr(addr: SocketAddr) -> RawSockAddr {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            sin6.sin6_scope_id = v6.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    RawSockAddr {
        storage,
        len: len as libc::socklen_t,
    }
}

/// The local host's names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LocalName {
    /// What `gethostname` returns.
    pub hostname: String,
    /// The fully qualified name: the canonical name the resolver gives for the host name.
    pub fqdn: String,
}

impl fmt::Display for LocalName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fqdn)
    }
}

/// This machine's host name and fully qualified name (`hostname -f`): `gethostname`, then
/// `getaddrinfo` with `AI_CANONNAME`; the host name itself when the resolver does not know it.
pub fn local_fqdn() -> Result<LocalName, LookupError> {
    let mut buf = [0 as libc::c_char; 256];
    // SAFETY: `buf` is writable for its length; one byte is kept for the terminator.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr(), buf.len() - 1) };
    if rc != 0 {
        return Err(LookupError {
            what: "cannot read",
            input: "the host name".into(),
            reason: std::io::Error::last_os_error().to_string(),
        });
    }
    // SAFETY: gethostname wrote a string, and the last byte is still 0.
    let hostname = unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    // A host name the resolver does not know (a container without it in /etc/hosts) is its
    // own fully qualified name, as Python's `socket.getfqdn()` has it.
    let Ok(list) = getaddrinfo(
        &hostname,
        libc::AI_CANONNAME,
        "cannot resolve the host name",
    ) else {
        return Ok(LocalName {
            fqdn: hostname.clone(),
            hostname,
        });
    };
    // SAFETY: a successful getaddrinfo returned at least one entry.
    let first = unsafe { &*list.0 };
    let fqdn = if first.ai_canonname.is_null() {
        hostname.clone()
    } else {
        // SAFETY: ai_canonname is a NUL-terminated string inside the list.
        unsafe { CStr::from_ptr(first.ai_canonname) }
            .to_string_lossy()
            .into_owned()
    };
    Ok(LocalName { hostname, fqdn })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn localhost_forward_ipv4_first() {
        let found = forward("localhost").unwrap();
        assert_eq!(found.addresses[0], IpAddr::V4(Ipv4Addr::LOCALHOST));
        let mut seen = found.addresses.clone();
        seen.dedup();
        assert_eq!(seen.len(), found.addresses.len());
    }

    #[test]
    fn literals_resolve_to_themselves() {
        assert_eq!(
            forward("::1").unwrap().addresses,
            [IpAddr::V6(Ipv6Addr::LOCALHOST)]
        );
    }

    #[test]
    fn invalid_names_fail_with_the_resolvers_reason() {
        let e = forward("no-such-host.invalid").unwrap_err();
        assert_eq!(e.input, "no-such-host.invalid");
        assert!(!e.reason.is_empty());
        assert!(
            e.to_string()
                .starts_with("cannot resolve 'no-such-host.invalid': ")
        );
        assert!(forward("a\0b").is_err());
    }

    #[test]
    fn loopback_reverse() {
        assert_eq!(reverse(Ipv4Addr::LOCALHOST.into()).unwrap(), "localhost");
    }

    #[test]
    fn fqdn_is_not_empty() {
        let name = local_fqdn().unwrap();
        assert!(!name.hostname.is_empty() && !name.fqdn.is_empty());
    }
}
