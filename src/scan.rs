//! `sockit scan`: which ports of a host answer.
//!
//! A TCP connect scan (no privileges needed): every port gets a non-blocking `connect`; a
//! completed handshake is *open*, a refusal (RST) *closed*, silence until the timeout
//! *filtered*. A connection whose local and peer addresses are equal is a loopback
//! self-connect (the kernel picked the target port as the source port), not an open port.
//! A UDP scan sends an empty datagram from a connected socket: a reply is *open*, an ICMP port
//! unreachable (seen as `ECONNREFUSED`) *closed*, silence *open|filtered*.
//!
//! A fixed pool of worker tasks pulls ports from a shared counter, so the number of sockets in
//! flight never exceeds the concurrency, which is capped below the open-file limit (raised to
//! the hard limit first). Nothing is allocated per port.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::net::UdpSocket;

/// Concurrency when none is given: thousands of connects in flight keep a loopback or LAN
/// scan fast; it is lowered to fit the open-file limit.
pub const DEFAULT_CONCURRENCY: usize = 4096;

/// File descriptors kept free for everything else (stdio, the runtime, logging).
const FD_RESERVE: u64 = 64;

/// How long to keep retrying a socket that cannot be created for lack of resources (too many
/// open files, no ephemeral port) before giving up on the scan.
const RESOURCE_PATIENCE: Duration = Duration::from_secs(5);

/// A set of ports to scan, ascending and without duplicates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortList(pub Vec<u16>);

impl PortList {
    /// Parses `1-1024,8080,9000-9100`, or `-` / `all` for 1–65535.
    pub fn parse(spec: &str) -> Result<PortList, String> {
        let spec = spec.trim();
        if spec == "-" || spec.eq_ignore_ascii_case("all") {
            return Ok(PortList((1..=65535).collect()));
        }
        if spec.is_empty() {
            return Err("empty port list (give e.g. 1-1024,8080 or all)".into());
        }
        let mut seen = vec![false; 65536];
        for item in spec.split(',') {
            let item = item.trim();
            if item.is_empty() {
                return Err(format!("'{spec}' has an empty item between commas"));
            }
            let (lo, hi) = match item.split_once('-') {
                Some((a, b)) => (one_port(a, item)?, one_port(b, item)?),
                None => {
                    let p = one_port(item, item)?;
                    (p, p)
                }
            };
            if lo > hi {
                return Err(format!("range '{item}' runs backwards (write {hi}-{lo})"));
            }
            for p in lo..=hi {
                seen[p as usize] = true;
            }
        }
        Ok(PortList(
            (1..=65535u16).filter(|&p| seen[p as usize]).collect(),
        ))
    }

    /// The `n` most commonly open TCP ports from [`TOP_PORTS`], ascending.
    pub fn top(n: usize) -> Result<PortList, String> {
        if n == 0 {
            return Err("--top needs at least 1 port".into());
        }
        if n > TOP_PORTS.len() {
            return Err(format!(
                "the built-in list of common ports has {} ports, not {n}",
                TOP_PORTS.len()
            ));
        }
        let mut ports = TOP_PORTS[..n].to_vec();
        ports.sort_unstable();
        Ok(PortList(ports))
    }
}

fn one_port(s: &str, item: &str) -> Result<u16, String> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "'{item}' is not a port or range (ports are numbers 1-65535)"
        ));
    }
    match s.parse::<u32>() {
        Ok(0) => Err(format!(
            "'{item}': port 0 cannot be scanned (ports are 1-65535)"
        )),
        Ok(p) if p <= 65535 => Ok(p as u16),
        _ => Err(format!("'{item}': {s} is out of range (ports are 1-65535)")),
    }
}

/// The transport a scan probes (TCP connect scan, or UDP datagrams).
pub use crate::net::services::Protocol;

/// What a probe found out about one port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum State {
    /// A handshake completed (TCP) or a datagram came back (UDP).
    #[serde(rename = "open")]
    Open,
    /// Refused: a TCP reset, or an ICMP port unreachable for UDP.
    #[serde(rename = "closed")]
    Closed,
    /// No answer before the timeout (TCP).
    #[serde(rename = "filtered")]
    Filtered,
    /// No answer before the timeout (UDP: an open port may simply not reply).
    #[serde(rename = "open|filtered")]
    OpenFiltered,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Open => "open",
            State::Closed => "closed",
            State::Filtered => "filtered",
            State::OpenFiltered => "open|filtered",
        })
    }
}

/// What to scan and how.
#[derive(Clone, Debug)]
pub struct ScanConfig {
    /// The address scanned.
    pub ip: IpAddr,
    /// The ports scanned.
    pub ports: PortList,
    /// TCP or UDP.
    pub protocol: Protocol,
    /// How long to wait for an answer from one port.
    pub timeout: Duration,
    /// Sockets in flight at most (before the open-file cap of [`effective_concurrency`]).
    pub concurrency: usize,
}

/// One open port (or, with UDP, a port that answered).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PortResult {
    /// The port number.
    pub port: u16,
    /// `tcp` or `udp`.
    pub protocol: Protocol,
    /// Always `open` in a report's list.
    pub state: State,
    /// The service usually found on this port, if it is a well-known one.
    pub service: Option<&'static str>,
}

/// Counts of a finished scan.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Ports probed.
    pub scanned: usize,
    /// Ports that answered.
    pub open: usize,
    /// Ports that refused.
    pub closed: usize,
    /// Ports that stayed silent (filtered, or open|filtered with UDP).
    pub filtered: usize,
    /// Wall time of the scan.
    pub seconds: f64,
}

/// The outcome of a scan.
#[derive(Clone, Debug)]
pub struct ScanReport {
    /// Every open port, ascending.
    pub open: Vec<PortResult>,
    /// The counts.
    pub summary: Summary,
    /// The concurrency actually used.
    pub concurrency: usize,
}

/// Raises the soft open-file limit to the hard one and returns `requested` capped below it
/// (at least 1).
pub fn effective_concurrency(requested: usize) -> usize {
    let limit = crate::server::raise_fd_limit().unwrap_or(1024);
    let room = limit.saturating_sub(FD_RESERVE).max(1);
    requested.clamp(1, usize::try_from(room).unwrap_or(usize::MAX))
}

/// Per-worker tallies, merged at the end.
#[derive(Default)]
struct Tally {
    open: Vec<u16>,
    closed: usize,
    silent: usize,
}

/// Scans `config.ports` of `config.ip`. Fails only when sockets cannot be created at all.
pub async fn scan(config: &ScanConfig) -> io::Result<ScanReport> {
    let started = Instant::now();
    let ports: Arc<[u16]> = config.ports.0.clone().into();
    let concurrency = effective_concurrency(config.concurrency).min(ports.len().max(1));
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let ports = Arc::clone(&ports);
        let next = Arc::clone(&next);
        let (ip, protocol, timeout) = (config.ip, config.protocol, config.timeout);
        workers.spawn(async move {
            let mut tally = Tally::default();
            let mut buf = [0u8; 512];
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&port) = ports.get(i) else {
                    return Ok::<Tally, io::Error>(tally);
                };
                let addr = SocketAddr::new(ip, port);
                let state = probe(addr, protocol, timeout, &mut buf).await?;
                match state {
                    State::Open => tally.open.push(port),
                    State::Closed => tally.closed += 1,
                    State::Filtered | State::OpenFiltered => tally.silent += 1,
                }
            }
        });
    }
    let mut open = Vec::new();
    let mut summary = Summary {
        scanned: ports.len(),
        ..Summary::default()
    };
    let mut failure = None;
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(Ok(t)) => {
                open.extend(t.open);
                summary.closed += t.closed;
                summary.filtered += t.silent;
            }
            Ok(Err(e)) => {
                failure.get_or_insert(e);
                workers.abort_all();
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => {
                failure.get_or_insert(io::Error::other(format!("a scan worker failed: {e}")));
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    open.sort_unstable();
    summary.open = open.len();
    summary.seconds = started.elapsed().as_secs_f64();
    let open = open
        .into_iter()
        .map(|port| PortResult {
            port,
            protocol: config.protocol,
            state: State::Open,
            service: service_name(port, config.protocol),
        })
        .collect();
    Ok(ScanReport {
        open,
        summary,
        concurrency,
    })
}

/// Whether an error means "out of sockets or ports for now", worth waiting out.
fn is_resource_shortage(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::EADDRNOTAVAIL
                | libc::EAGAIN
        )
    )
}

/// Probes one port, retrying while the system is short of sockets or ephemeral ports, so that
/// a shortage never turns into a wrong answer.
async fn probe(
    addr: SocketAddr,
    protocol: Protocol,
    timeout: Duration,
    buf: &mut [u8],
) -> io::Result<State> {
    let deadline = Instant::now() + RESOURCE_PATIENCE;
    let mut pause = Duration::from_millis(1);
    loop {
        let result = match protocol {
            Protocol::Tcp => probe_tcp(addr, timeout).await,
            Protocol::Udp => probe_udp(addr, timeout, buf).await,
        };
        match result {
            Err(e) if is_resource_shortage(&e) && Instant::now() < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot probe {addr}/{protocol}: {e}"),
                ));
            }
            ok => return ok,
        }
    }
}

/// One TCP connect probe. Errors are returned only for local resource problems.
///
/// The socket is made and connected with plain system calls first: on loopback and fast
/// networks a refusal is often known right after `connect` returns, so most closed ports cost
/// no trip through the reactor. Only a connect still in progress is handed to tokio to wait on.
async fn probe_tcp(addr: SocketAddr, timeout: Duration) -> io::Result<State> {
    let fd = match start_connect(&addr)? {
        Started::Done(state) => return Ok(state),
        Started::Pending(fd) => fd,
    };
    let stream = tokio::net::TcpStream::from_std(std::net::TcpStream::from(fd))?;
    match tokio::time::timeout(timeout, stream.writable()).await {
        Err(_) => return Ok(State::Filtered),
        Ok(ready) => ready?,
    }
    if let Some(e) = stream.take_error()? {
        return classify_error(e, State::Filtered);
    }
    let peer = match stream.peer_addr() {
        Ok(peer) => peer,
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => return Ok(State::Closed),
        Err(e) => return classify_error(e, State::Filtered),
    };
    // Reset rather than close: no TIME_WAIT left behind for each open port.
    let _ = stream.set_zero_linger();
    Ok(connected_state(stream.local_addr()?, peer))
}

/// The state of a port a TCP connect reached. Equal local and peer addresses mean the kernel
/// chose the target port as the source port and the socket connected to itself (a loopback
/// self-connect): nothing listens there.
fn connected_state(local: SocketAddr, peer: SocketAddr) -> State {
    if local == peer {
        State::Closed
    } else {
        State::Open
    }
}

/// How a non-blocking connect began.
enum Started {
    /// Already decided (refused at once).
    Done(State),
    /// Still connecting (or connected): wait for writability.
    Pending(OwnedFd),
}

/// Creates a non-blocking TCP socket and starts connecting it to `addr`.
fn start_connect(addr: &SocketAddr) -> io::Result<Started> {
    let (family, storage, len) = sockaddr(addr);
    // SAFETY: plain socket creation; the descriptor is owned right below.
    let raw = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: `storage` holds a valid socket address of `len` bytes.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&raw const storage).cast::<libc::sockaddr>(),
            len,
        )
    };
    if rc == 0 {
        return Ok(Started::Pending(fd));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EINPROGRESS) {
        return classify_error(e, State::Filtered).map(Started::Done);
    }
    // Loopback answers within the connect call: a refusal is already recorded.
    let mut err: libc::c_int = 0;
    let mut err_len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `err_len` bytes into `err`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&raw mut err).cast::<libc::c_void>(),
            &mut err_len,
        )
    };
    if rc == 0 && err != 0 {
        return classify_error(io::Error::from_raw_os_error(err), State::Filtered)
            .map(Started::Done);
    }
    Ok(Started::Pending(fd))
}

/// `addr` as a C socket address: family, storage and length.
fn sockaddr(addr: &SocketAddr) -> (libc::c_int, libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero bytes are a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&raw mut storage).cast::<libc::sockaddr_in>(), sin) };
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            (libc::AF_INET, storage, len)
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&raw mut storage).cast::<libc::sockaddr_in6>(), sin6) };
            let len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            (libc::AF_INET6, storage, len)
        }
    }
}

/// One UDP probe: an empty datagram from a connected socket.
async fn probe_udp(addr: SocketAddr, timeout: Duration, buf: &mut [u8]) -> io::Result<State> {
    let local: SocketAddr = if addr.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(addr).await?;
    if let Err(e) = socket.send(&[]).await {
        return classify_error(e, State::OpenFiltered);
    }
    match tokio::time::timeout(timeout, socket.recv(buf)).await {
        Err(_) => Ok(State::OpenFiltered),
        Ok(Ok(_)) => {
            let self_reply = socket.local_addr().ok() == Some(addr);
            Ok(if self_reply {
                State::Closed
            } else {
                State::Open
            })
        }
        Ok(Err(e)) => classify_error(e, State::OpenFiltered),
    }
}

/// Maps a probe's error to a state; resource errors are passed up to be retried.
fn classify_error(e: io::Error, silent: State) -> io::Result<State> {
    if e.kind() == io::ErrorKind::ConnectionRefused {
        return Ok(State::Closed);
    }
    if is_resource_shortage(&e) {
        return Err(e);
    }
    // Unreachable host or network, administratively prohibited, timed out in the kernel:
    // something in the way, as nmap reports it.
    match e.raw_os_error() {
        Some(
            libc::EHOSTUNREACH
            | libc::ENETUNREACH
            | libc::ETIMEDOUT
            | libc::EACCES
            | libc::EPERM
            | libc::ECONNRESET
            | libc::EHOSTDOWN
            | libc::ENETDOWN,
        ) => Ok(silent),
        _ => Err(e),
    }
}

/// The most commonly open TCP ports, most common first: curated for sockit from general
/// experience of what servers, routers, printers and developer machines expose (web, remote
/// access, mail, file sharing, directories, databases, message queues, developer servers).
pub const TOP_PORTS: &[u16] = &[
    // Web and remote access, everywhere.
    80, 443, 22, 8080, 21, 23, 3389, 25, 53, 8443, 445, 139, 135, 110, 143, 993, 995, 587, 465,
    3306, 5432, 5900, 8000, 8888, 8081, 111, 2049, 1723, 631, 5060, 3000, 5000, 9000, 9090, 6379,
    27017, 1433, 1521, 389, 636, 88, 464, 179, 161, 162, 69, 123, 514, 515, 548, 554, 1080, 3128,
    8008, 8082, 8181, 8880, 8090, 8088, 9443, 10000, 5985, 5986, 5353, 1900,
    // Mail, news, directory and naming extras.
    26, 106, 113, 119, 563, 2525, 3268, 3269, 4190, 79, 7, 9, 13, 17, 19, 37, 43, 70, 81, 82, 83,
    84, 85, 444, 591, 593, 666, 873, 990, 992, 994, 1025, 1026, 1027, 1028, 1029,
    // Databases, caches, queues, search.
    3307, 5433, 6380, 11211, 9200, 9300, 5672, 15672, 1883, 8883, 61616, 61613, 9092, 2181, 7000,
    7001, 9042, 8086, 5984, 6984, 7474, 7687, 8529, 28015, 26257, 4222, 6222, 8222, 50000, 1434,
    1830, 3050, 5001, 5555, 5601, 8983, 9160, 11214, 27018, 27019,
    // Developer servers and frameworks.
    3001, 4000, 4200, 4443, 5173, 5500, 8001, 8002, 8003, 8005, 8009, 8010, 8042, 8069, 8083, 8084,
    8085, 8089, 8100, 8118, 8123, 8180, 8200, 8300, 8333, 8400, 8444, 8500, 8530, 8531, 8600, 8686,
    8800, 8834, 8843, 8887, 8899, 9001, 9002, 9003, 9009, 9080, 9081, 9091, 9093, 9100, 9191, 9418,
    9999, 10001, 10250, 10255, 10443, 12345, // Containers, orchestration, monitoring.
    2375, 2376, 2377, 2379, 2380, 4243, 6443, 7946, 9115, 9187, 9323, 9633, 3100, 4317, 4318, 9411,
    16686, 14268, 8125, 2003, 2004, 4040, 7077, 18080, 50070, 50075, 8020, 8032, 19999, 5044, 5140,
    24224, // Windows, file and print sharing, remote management.
    137, 138, 1688, 3260, 5357, 5358, 47001, 49152, 49153, 49154, 49155, 49156, 49157, 2103, 2105,
    2107, 2869, 3587, 5722, 9389, 6000, 6001, 6002, 5800, 5801, 5901, 5902, 5903, 5631, 5632, 4899,
    6129, 3283, 5938, 7070, 1494, 2598, // Network gear, VPN, VoIP, IoT.
    500, 4500, 1194, 1701, 1812, 1813, 1645, 1646, 5061, 2000, 2001, 4569, 5004, 5005, 1720, 1935,
    8554, 37777, 34567, 502, 102, 20000, 44818, 47808, 1911, 4911, 2404, 5683, 8291, 8728, 8729,
    2222, 2200, 830, 6514, 49, 65535, 32768, 32769, 32770, 32771, // Games, chat, media.
    6667, 6697, 5222, 5223, 5269, 25565, 27015, 27016, 7777, 3478, 3479, 5349, 8448, 32400, 8096,
    8920, 51413, 6881, 6882, 6889, 4070, 3689, 7100, 9295,
    // Miscellaneous services seen on servers.
    1099, 1098, 4848, 7002, 7003, 8140, 8161, 8649, 8651, 8652, 9990, 9993, 11111, 20, 177, 199,
    427, 497, 512, 513, 543, 544, 1110, 2121, 2717, 3030, 3031, 3052, 3372, 3690, 3986, 4001, 4002,
    4045, 4444, 4662, 5009, 5190, 5666, 5667, 6346, 6543, 6646, 7200, 7443, 7938, 8031, 8194, 8254,
    8701, 9102, 9103, 9207, 9500, 9595, 9876, 10010, 10080, 10082, 11371, 12000, 13720, 13782,
    15000, 16080, 17988, 18000, 20005, 22222, 30000, 31337, 33060, 40000, 44443, 49158, 49159,
    49160, 55555, 60000, 62078,
];

/// Service names for common ports (a small table; `None` when unknown).
pub fn service_name(port: u16, protocol: Protocol) -> Option<&'static str> {
    let udp = protocol == Protocol::Udp;
    Some(match port {
        7 => "echo",
        9 => "discard",
        13 => "daytime",
        20 => "ftp-data",
        21 => "ftp",
        22 => "ssh",
        23 => "telnet",
        25 => "smtp",
        53 => "domain",
        67 if udp => "dhcps",
        68 if udp => "dhcpc",
        69 if udp => "tftp",
        79 => "finger",
        80 => "http",
        88 => "kerberos",
        110 => "pop3",
        111 => "rpcbind",
        119 => "nntp",
        123 => "ntp",
        135 => "msrpc",
        137 => "netbios-ns",
        138 => "netbios-dgm",
        139 => "netbios-ssn",
        143 => "imap",
        161 => "snmp",
        162 => "snmptrap",
        179 => "bgp",
        389 => "ldap",
        443 => "https",
        445 => "microsoft-ds",
        464 => "kpasswd",
        465 => "smtps",
        500 if udp => "isakmp",
        514 if udp => "syslog",
        514 => "shell",
        515 => "printer",
        548 => "afp",
        554 => "rtsp",
        587 => "submission",
        631 => "ipp",
        636 => "ldaps",
        873 => "rsync",
        993 => "imaps",
        995 => "pop3s",
        1080 => "socks",
        1194 => "openvpn",
        1433 => "ms-sql-s",
        1521 => "oracle",
        1723 => "pptp",
        1883 => "mqtt",
        1900 if udp => "ssdp",
        2049 => "nfs",
        2375 => "docker",
        2376 => "docker-tls",
        2379 => "etcd-client",
        3128 => "squid-http",
        3306 => "mysql",
        3389 => "ms-wbt-server",
        3478 => "stun",
        4500 if udp => "ipsec-nat-t",
        5060 => "sip",
        5061 => "sips",
        5222 => "xmpp-client",
        5353 if udp => "mdns",
        5432 => "postgresql",
        5672 => "amqp",
        5900 => "vnc",
        5985 => "wsman",
        5986 => "wsmans",
        6379 => "redis",
        6443 => "kubernetes-api",
        6667 => "irc",
        8000 => "http-alt",
        8080 => "http-proxy",
        8443 => "https-alt",
        8883 => "secure-mqtt",
        9000 => "cslistener",
        9042 => "cassandra",
        9092 => "kafka",
        9100 => "jetdirect",
        9200 => "elasticsearch",
        9418 => "git",
        11211 => "memcache",
        25565 => "minecraft",
        27017 => "mongodb",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_lists_parse_ranges_and_singles() {
        let cases: &[(&str, &[u16])] = &[
            ("80", &[80]),
            ("1-3", &[1, 2, 3]),
            ("8080,22,22,1-2", &[1, 2, 22, 8080]),
            (" 5 , 6-7 ", &[5, 6, 7]),
            ("65535", &[65535]),
            ("9-9", &[9]),
        ];
        for (spec, want) in cases {
            assert_eq!(PortList::parse(spec).unwrap().0, *want, "{spec}");
        }
        for all in ["-", "all", "ALL"] {
            let ports = PortList::parse(all).unwrap().0;
            assert_eq!(ports.len(), 65535);
            assert_eq!((ports[0], ports[65534]), (1, 65535));
        }
    }

    #[test]
    fn bad_port_lists_say_why() {
        let cases = [
            ("", "empty"),
            ("80,", "empty item"),
            ("0", "port 0"),
            ("70000", "out of range"),
            ("1-70000", "out of range"),
            ("http", "not a port"),
            ("10-5", "backwards"),
            ("1-2-3", "not a port"),
            ("-5", "not a port"),
            ("+5", "not a port"),
            ("99999999999999999999", "out of range"),
        ];
        for (spec, why) in cases {
            let e = PortList::parse(spec).unwrap_err();
            assert!(e.contains(why), "{spec:?}: {e}");
        }
    }

    #[test]
    fn the_top_ports_list_has_no_duplicates_and_no_zero() {
        let mut seen = std::collections::HashSet::new();
        for p in TOP_PORTS {
            assert!(*p != 0);
            assert!(seen.insert(*p), "duplicate {p}");
        }
        assert!(TOP_PORTS.len() >= 300, "{}", TOP_PORTS.len());
        assert_eq!(&TOP_PORTS[..3], &[80, 443, 22]);
        assert_eq!(PortList::top(3).unwrap().0, vec![22, 80, 443]);
        assert!(PortList::top(0).is_err());
        assert!(PortList::top(TOP_PORTS.len() + 1).is_err());
    }

    #[test]
    fn a_self_connect_is_not_an_open_port() {
        let a: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:51000".parse().unwrap();
        assert_eq!(connected_state(a, a), State::Closed);
        assert_eq!(connected_state(b, a), State::Open);
    }

    #[test]
    fn service_names_depend_on_the_protocol() {
        assert_eq!(service_name(22, Protocol::Tcp), Some("ssh"));
        assert_eq!(service_name(514, Protocol::Udp), Some("syslog"));
        assert_eq!(service_name(514, Protocol::Tcp), Some("shell"));
        assert_eq!(service_name(69, Protocol::Tcp), None);
        assert_eq!(service_name(40123, Protocol::Tcp), None);
    }
}
