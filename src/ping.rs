//! `sockit ping`: connect-time ping, like tcping. Each TCP probe times a full connect (SYN to
//! established) and closes the connection; a TLS probe times the connect and the whole TLS
//! handshake (certificate checks included); a unix probe times a connect to the socket; each
//! UDP probe sends a small datagram from a fresh socket to a sockit echo or ack service and
//! times the first reply. Refused and timed-out
//! probes are reported as such and counted as lost; the summary gives sent, received, loss and
//! min/avg/max/mdev of the round-trip times, like `ping`.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

/// Default number of probes.
pub const DEFAULT_COUNT: u64 = 4;

/// What a probe does.
#[derive(Clone, Debug)]
pub enum Probing {
    /// A TCP connect to the address.
    Tcp(SocketAddr),
    /// A datagram to the address and its reply.
    Udp(SocketAddr),
    /// A connect through a dial (a unix socket, TLS): `protocol` names it (`unix`, `tls`).
    Dial {
        /// How to connect.
        dial: crate::transport::stream::Dial,
        /// The addresses it tries (none for a unix socket).
        addrs: Vec<SocketAddr>,
        /// `unix` or `tls`.
        protocol: &'static str,
    },
}

/// What to ping and how.
#[derive(Clone, Debug)]
pub struct PingConfig {
    /// The address probed, as shown (`127.0.0.1:443`, `unix:/run/app.sock`).
    pub name: String,
    /// What each probe does.
    pub probing: Probing,
    /// Probes to send; `None` until cancelled.
    pub count: Option<u64>,
    /// Time between the starts of two probes.
    pub interval: Duration,
    /// How long one probe waits for the connection or the reply.
    pub timeout: Duration,
}

/// How one probe ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// TCP, unix, TLS: the connection was established (with TLS: the handshake finished).
    Connected,
    /// UDP: a reply came back.
    Reply,
    /// The port refused (TCP reset, or ICMP port unreachable for UDP).
    Refused,
    /// Nothing within the timeout.
    Timeout,
    /// Any other failure (network unreachable, …); see `error`.
    Error,
}

/// One probe's result, as printed (and as one `--json` line).
#[derive(Clone, Debug, Serialize)]
pub struct Probe {
    /// Always `"probe"` (tells probe lines from the summary line in `--json`).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The address probed.
    pub address: String,
    /// `tcp`, `udp`, `tls` or `unix`.
    pub protocol: &'static str,
    /// 1, 2, 3, …
    pub seq: u64,
    /// How it ended.
    pub status: Status,
    /// Round-trip (connect) time in milliseconds, for a reply.
    pub time_ms: Option<f64>,
    /// How long the probe waited, in milliseconds, for a timeout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<f64>,
    /// What went wrong, for `error`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Probe {
    /// Whether the probe got an answer.
    pub fn answered(&self) -> bool {
        matches!(self.status, Status::Connected | Status::Reply)
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (addr, seq) = (&self.address, self.seq);
        match (&self.status, self.time_ms) {
            (Status::Connected, Some(ms)) => {
                write!(f, "connected to {addr}: seq={seq} time={ms:.3} ms")
            }
            (Status::Reply, Some(ms)) => write!(f, "reply from {addr}: seq={seq} time={ms:.3} ms"),
            (Status::Refused, _) => write!(f, "refused by {addr}: seq={seq}"),
            (Status::Timeout, _) => write!(
                f,
                "no answer from {addr}: seq={seq} timed out after {:.0} ms",
                self.timeout_ms.unwrap_or(0.0)
            ),
            (_, _) => write!(
                f,
                "error probing {addr}: seq={seq} {}",
                self.error.as_deref().unwrap_or("unknown error")
            ),
        }
    }
}

/// The statistics at the end.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Always `"summary"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The address probed.
    pub address: String,
    /// `tcp`, `udp`, `tls` or `unix`.
    pub protocol: &'static str,
    /// Probes sent.
    pub sent: u64,
    /// Probes answered.
    pub received: u64,
    /// Lost probes as a percentage of those sent (0 when none were sent).
    pub loss_percent: f64,
    /// Fastest answer in milliseconds (`null` without answers).
    pub min_ms: Option<f64>,
    /// Mean answer time in milliseconds.
    pub avg_ms: Option<f64>,
    /// Slowest answer in milliseconds.
    pub max_ms: Option<f64>,
    /// Mean deviation as `ping` computes it: sqrt(mean(t²) − mean(t)²), in milliseconds.
    pub mdev_ms: Option<f64>,
    /// Probes refused.
    pub refused: u64,
    /// Probes timed out.
    pub timeouts: u64,
    /// Wall time of the run in milliseconds.
    pub elapsed_ms: f64,
    /// Whether Ctrl-C ended the run.
    pub interrupted: bool,
}

impl Summary {
    /// Builds the summary of `probes`.
    pub fn of(
        address: String,
        protocol: &'static str,
        probes: &[Probe],
        elapsed: Duration,
        interrupted: bool,
    ) -> Summary {
        let times: Vec<f64> = probes.iter().filter_map(|p| p.time_ms).collect();
        let sent = probes.len() as u64;
        let received = times.len() as u64;
        let n = times.len() as f64;
        let stats = (!times.is_empty()).then(|| {
            let mean = times.iter().sum::<f64>() / n;
            let mean_sq = times.iter().map(|t| t * t).sum::<f64>() / n;
            let min = times.iter().copied().fold(f64::INFINITY, f64::min);
            let max = times.iter().copied().fold(0.0, f64::max);
            (
                ms(min),
                ms(mean),
                ms(max),
                ms((mean_sq - mean * mean).max(0.0).sqrt()),
            )
        });
        let count = |s: Status| probes.iter().filter(|p| p.status == s).count() as u64;
        Summary {
            kind: "summary",
            address,
            protocol,
            sent,
            received,
            loss_percent: if sent == 0 {
                0.0
            } else {
                ms((sent - received) as f64 * 100.0 / sent as f64)
            },
            min_ms: stats.map(|s| s.0),
            avg_ms: stats.map(|s| s.1),
            max_ms: stats.map(|s| s.2),
            mdev_ms: stats.map(|s| s.3),
            refused: count(Status::Refused),
            timeouts: count(Status::Timeout),
            elapsed_ms: ms(elapsed.as_secs_f64() * 1e3),
            interrupted,
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "--- {} {} ping statistics ---",
            self.address, self.protocol
        )?;
        write!(
            f,
            "{} probes sent, {} received, {:.1}% loss, time {:.0} ms",
            self.sent, self.received, self.loss_percent, self.elapsed_ms
        )?;
        let lost = [("refused", self.refused), ("timed out", self.timeouts)]
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(what, n)| format!("{n} {what}"))
            .collect::<Vec<_>>();
        if !lost.is_empty() {
            write!(f, " ({})", lost.join(", "))?;
        }
        if let (Some(min), Some(avg), Some(max), Some(mdev)) =
            (self.min_ms, self.avg_ms, self.max_ms, self.mdev_ms)
        {
            write!(
                f,
                "\nrtt min/avg/max/mdev = {min:.3}/{avg:.3}/{max:.3}/{mdev:.3} ms"
            )?;
        }
        Ok(())
    }
}

/// Milliseconds rounded to microseconds (for tidy JSON).
fn ms(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

impl Probing {
    /// `tcp`, `udp`, `unix` or `tls`.
    pub fn protocol(&self) -> &'static str {
        match self {
            Probing::Tcp(_) => "tcp",
            Probing::Udp(_) => "udp",
            Probing::Dial { protocol, .. } => protocol,
        }
    }
}

/// Runs the probes, calling `on_probe` after each; stops early when `cancel` fires (the probe
/// under way is dropped, not counted). Returns the summary.
pub async fn run(
    config: &PingConfig,
    cancel: CancellationToken,
    mut on_probe: impl FnMut(&Probe) -> io::Result<()>,
) -> io::Result<Summary> {
    let start = Instant::now();
    let mut probes = Vec::new();
    let mut interrupted = false;
    let mut seq = 0u64;
    while config.count.is_none_or(|n| seq < n) {
        seq += 1;
        let began = Instant::now();
        let probe = tokio::select! {
            probe = probe_once(config, seq) => probe,
            () = cancel.cancelled() => { interrupted = true; break; }
        };
        on_probe(&probe)?;
        probes.push(probe);
        if config.count.is_some_and(|n| seq >= n) {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep_until((began + config.interval).into()) => {}
            () = cancel.cancelled() => { interrupted = true; break; }
        }
    }
    Ok(Summary::of(
        config.name.clone(),
        config.probing.protocol(),
        &probes,
        start.elapsed(),
        interrupted,
    ))
}

/// One probe.
async fn probe_once(config: &PingConfig, seq: u64) -> Probe {
    let began = Instant::now();
    let outcome = match &config.probing {
        Probing::Udp(addr) => tokio::time::timeout(config.timeout, udp_probe(*addr, seq)).await,
        Probing::Tcp(addr) => tokio::time::timeout(config.timeout, tcp_probe(*addr)).await,
        Probing::Dial { dial, addrs, .. } => {
            tokio::time::timeout(config.timeout, dial_probe(dial, addrs, config.timeout)).await
        }
    };
    let elapsed_ms = ms(began.elapsed().as_secs_f64() * 1e3);
    let mut probe = Probe {
        kind: "probe",
        address: config.name.clone(),
        protocol: config.probing.protocol(),
        seq,
        status: Status::Error,
        time_ms: None,
        timeout_ms: None,
        error: None,
    };
    match outcome {
        Ok(Ok(())) => {
            probe.status = if matches!(config.probing, Probing::Udp(_)) {
                Status::Reply
            } else {
                Status::Connected
            };
            probe.time_ms = Some(elapsed_ms);
        }
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            probe.status = Status::Refused;
        }
        Ok(Err(e)) if e.kind() == io::ErrorKind::TimedOut => {
            probe.status = Status::Timeout;
            probe.timeout_ms = Some(config.timeout.as_secs_f64() * 1e3);
        }
        Ok(Err(e)) => probe.error = Some(e.to_string()),
        Err(_) => {
            probe.status = Status::Timeout;
            probe.timeout_ms = Some(config.timeout.as_secs_f64() * 1e3);
        }
    }
    probe
}

/// Connects and closes. A loopback connection whose local address is its peer's is the
/// kernel connecting the socket to itself (the port was closed and happened to be picked as
/// the ephemeral port): no listener answered, so it counts as refused.
async fn tcp_probe(addr: SocketAddr) -> io::Result<()> {
    let stream = TcpStream::connect(addr).await?;
    if stream.local_addr()? == stream.peer_addr()? {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "self-connect: no listener",
        ));
    }
    Ok(())
}

/// Connects through `dial` (a unix socket, or TCP and a TLS handshake) and closes. A refused
/// connect keeps its kind, so it counts as refused; a failed handshake is an error that says why.
async fn dial_probe(
    dial: &crate::transport::stream::Dial,
    addrs: &[SocketAddr],
    timeout: Duration,
) -> io::Result<()> {
    use crate::transport::stream::DialError;
    match dial.connect(addrs, timeout).await {
        Ok(_) => Ok(()),
        Err(DialError::Connect { error, .. }) => Err(error),
        Err(e @ DialError::Timeout { .. }) => {
            Err(io::Error::new(io::ErrorKind::TimedOut, e.to_string()))
        }
        Err(e) => Err(io::Error::other(e.to_string())),
    }
}

/// Sends `sockit ping seq=N` from a fresh socket and waits for any reply to it.
async fn udp_probe(addr: SocketAddr, seq: u64) -> io::Result<()> {
    let local: SocketAddr = if addr.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    // Connected: replies from anyone else are filtered out, and an ICMP port unreachable
    // comes back as ECONNREFUSED.
    socket.connect(addr).await?;
    if socket.local_addr()? == addr {
        // Our own socket: it would answer itself.
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "self-connect: no listener",
        ));
    }
    socket
        .send(format!("sockit ping seq={seq}\n").as_bytes())
        .await?;
    let mut buf = [0u8; 2048];
    socket.recv(&mut buf).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(status: Status, time_ms: Option<f64>) -> Probe {
        Probe {
            kind: "probe",
            address: "127.0.0.1:9".into(),
            protocol: "tcp",
            seq: 1,
            status,
            time_ms,
            timeout_ms: None,
            error: None,
        }
    }

    #[test]
    fn summary_statistics() {
        let probes = [
            probe(Status::Connected, Some(1.0)),
            probe(Status::Connected, Some(3.0)),
            probe(Status::Refused, None),
            probe(Status::Timeout, None),
        ];
        let s = Summary::of(
            probes[0].address.clone(),
            "tcp",
            &probes,
            Duration::from_secs(3),
            false,
        );
        assert_eq!((s.sent, s.received, s.refused, s.timeouts), (4, 2, 1, 1));
        assert_eq!(s.loss_percent, 50.0);
        assert_eq!(
            (s.min_ms, s.avg_ms, s.max_ms),
            (Some(1.0), Some(2.0), Some(3.0))
        );
        assert_eq!(s.mdev_ms, Some(1.0));
        let text = s.to_string();
        assert!(
            text.contains("4 probes sent, 2 received, 50.0% loss"),
            "{text}"
        );
        assert!(text.contains("(1 refused, 1 timed out)"), "{text}");
        assert!(text.contains("rtt min/avg/max/mdev = 1.000/2.000/3.000/1.000 ms"));
    }

    #[test]
    fn no_replies_no_times() {
        let s = Summary::of(
            "127.0.0.1:9".into(),
            "udp",
            &[probe(Status::Refused, None)],
            Duration::ZERO,
            false,
        );
        assert_eq!(s.loss_percent, 100.0);
        assert_eq!(s.avg_ms, None);
        assert!(!s.to_string().contains("rtt"));
        let empty = Summary::of(s.address, "udp", &[], Duration::ZERO, true);
        assert_eq!(empty.loss_percent, 0.0);
    }

    #[test]
    fn probe_lines() {
        let mut p = probe(Status::Connected, Some(0.1234));
        assert_eq!(
            p.to_string(),
            "connected to 127.0.0.1:9: seq=1 time=0.123 ms"
        );
        p.status = Status::Refused;
        assert_eq!(p.to_string(), "refused by 127.0.0.1:9: seq=1");
    }
}
