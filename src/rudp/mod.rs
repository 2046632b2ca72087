//! rudp: reliable, ordered messages over UDP, tuned for latency under loss. Sans-IO: no
//! sockets, no tokio, no clock reads, no OS randomness — the caller feeds datagrams, the time
//! (`now: Instant`) and a seed, and polls for datagrams to send, timers and events.
//!
//! - [`Connection`]: one connection's state machine (`handle_datagram`, `handle_timeout`,
//!   `send`, `close`; `poll_transmit`, `poll_timeout`, `poll_event`). A client creates one with
//!   [`Connection::connect`].
//! - [`Endpoint`]: the server side: a stateless cookie handshake (keyed BLAKE3 over the peer
//!   address, the client's connection id and a coarse time bucket), then demultiplexing by
//!   connection id with a peer-address check; bad datagrams are dropped and counted in
//!   [`EndpointStats`].
//! - [`packet`]: the wire format (docs/PROTOCOL.md, section 6).
//! - [`sim`]: a deterministic in-memory link with a virtual clock, for tests and benchmarks.
//!
//! How it keeps latency low: selective acknowledgements, a fragment is retransmitted as soon
//! as a fragment sent after it is acknowledged (no duplicate-ack counting), RTT from echoed
//! timestamps with a low minimum RTO, and — the part pure ARQ cannot match — spare room in
//! each outgoing datagram re-carries recent unacknowledged fragments while traffic is light,
//! so a lost datagram is usually repaired by the very next one. A NewReno-style congestion
//! window on bytes in flight keeps bulk transfers fair to TCP; small messages never reach it.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use sockit::rudp::{Config, Connection, Endpoint, EndpointConfig, Event};
//!
//! let t0 = Instant::now(); // a driver's clock; here just a starting point
//! let client_addr: std::net::SocketAddr = "127.0.0.1:5000".parse().unwrap();
//! let mut server = Endpoint::new(EndpointConfig::default(), [7; 32], t0);
//! let mut client = Connection::connect(Config::default(), t0, 42);
//! client.send(bytes::Bytes::from_static(b"hello")).unwrap();
//! let mut buf = Vec::new();
//! let mut got = None;
//! for ms in 0..100 {
//!     let now = t0 + Duration::from_millis(ms);
//!     while let Some(n) = client.poll_transmit(now, &mut buf) {
//!         server.handle_datagram(now, client_addr, &buf[..n]);
//!     }
//!     while let Some(t) = server.poll_transmit(now, &mut buf) {
//!         assert_eq!(t.destination, client_addr);
//!         client.handle_datagram(now, &buf[..t.size]);
//!     }
//!     while let Some((_, ev)) = server.poll_event() {
//!         if let Event::Message(m) = ev { got = Some(m); }
//!     }
//!     server.handle_timeout(now);
//!     client.handle_timeout(now);
//! }
//! assert_eq!(got.as_deref(), Some(&b"hello"[..]));
//! ```

use std::fmt;
use std::time::Duration;

mod conn;
mod endpoint;
pub mod packet;
pub mod rng;
pub mod sim;

pub use conn::{Connection, ConnectionStats, Side};
pub use endpoint::{ConnectionHandle, Endpoint, EndpointConfig, EndpointStats, Transmit};

/// Largest message by default (1 MiB).
pub const DEFAULT_MAX_MESSAGE: usize = 1 << 20;
/// Default datagram size limit (bytes of UDP payload).
pub const DEFAULT_MTU: usize = 1200;
/// Smallest accepted MTU.
pub const MIN_MTU: usize = 128;
/// Largest accepted MTU (loopback allows 65000).
pub const MAX_MTU: usize = packet::MAX_FRAGMENT;

/// Tunables of one connection. `Default` gives the documented defaults; out-of-range values are
/// clamped by [`Config::normalized`] when a connection is created.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest datagram this side sends (UDP payload bytes), `MIN_MTU..=MAX_MTU`; 1200.
    pub mtu: usize,
    /// Largest message sent or accepted; 1 MiB. A peer exceeding it is aborted.
    pub max_message: usize,
    /// Receive buffer in bytes (out-of-order fragments plus delivered but unpolled messages);
    /// the advertised window is this divided by the fragment size. 2 MiB.
    pub recv_window: usize,
    /// Bytes of messages queued or unacknowledged before [`Connection::send`] refuses
    /// (at least `max_message`); 4 MiB.
    pub send_buffer: usize,
    /// Lower bound of the retransmission timeout; 20 ms.
    pub min_rto: Duration,
    /// Upper bound of the retransmission timeout (after backoff); 2 s.
    pub max_rto: Duration,
    /// RTT assumed before the first sample (first handshake retransmit after 2× this); 200 ms.
    pub initial_rtt: Duration,
    /// Longest an acknowledgement waits for a datagram to ride on; 10 ms.
    pub max_ack_delay: Duration,
    /// A PING is sent after this long without sending anything; 5 s.
    pub keepalive: Duration,
    /// The connection is closed (`TimedOut`) after this long without receiving anything; 30 s.
    pub idle_timeout: Duration,
    /// Redundancy: at most this many bytes of re-carried fragments per datagram (0 disables); 512.
    pub redundancy_bytes: usize,
    /// Redundancy: a fragment is re-carried until it has been sent this many times; 8.
    pub redundancy_max_sends: u32,
    /// Redundancy only while fewer bytes than this are in flight ("light traffic"); 16 KiB.
    pub redundancy_max_in_flight: usize,
    /// Congestion control (NewReno-like on bytes in flight); on by default.
    pub congestion_control: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mtu: DEFAULT_MTU,
            max_message: DEFAULT_MAX_MESSAGE,
            recv_window: 2 << 20,
            send_buffer: 4 << 20,
            min_rto: Duration::from_millis(20),
            max_rto: Duration::from_secs(2),
            initial_rtt: Duration::from_millis(200),
            max_ack_delay: Duration::from_millis(10),
            keepalive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            redundancy_bytes: 512,
            redundancy_max_sends: 8,
            redundancy_max_in_flight: 16 << 10,
            congestion_control: true,
        }
    }
}

impl Config {
    /// The config with every field clamped to a workable range.
    pub fn normalized(mut self) -> Self {
        self.mtu = self.mtu.clamp(MIN_MTU, MAX_MTU);
        self.max_message = self.max_message.clamp(1, 64 << 20);
        self.send_buffer = self.send_buffer.max(self.max_message);
        self.recv_window = self.recv_window.max(2 * self.mtu);
        self.min_rto = self.min_rto.max(Duration::from_millis(1));
        self.max_rto = self.max_rto.max(self.min_rto);
        self.initial_rtt = self.initial_rtt.max(Duration::from_millis(1));
        self.max_ack_delay = self.max_ack_delay.min(Duration::from_millis(200));
        self.keepalive = self.keepalive.max(Duration::from_millis(10));
        self.idle_timeout = self.idle_timeout.max(Duration::from_millis(100));
        self.redundancy_max_sends = self.redundancy_max_sends.max(1);
        self
    }
}

/// What a connection reports to its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The handshake completed (client) or the connection was created (server).
    Connected,
    /// A whole message, in order, exactly once.
    Message(bytes::Bytes),
    /// The connection ended; nothing more will be delivered or sent.
    Closed(CloseReason),
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// [`Connection::close`] completed: everything sent was acknowledged.
    Local,
    /// The peer closed gracefully after its last message.
    Peer,
    /// Nothing was received for the idle timeout (dead peer, or lost path).
    TimedOut,
    /// The peer aborted with this code.
    PeerAborted(AbortCode),
    /// This side aborted because the peer broke the protocol.
    ProtocolViolation(AbortCode),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Local => f.write_str("closed"),
            CloseReason::Peer => f.write_str("closed by peer"),
            CloseReason::TimedOut => f.write_str("timed out"),
            CloseReason::PeerAborted(c) => write!(f, "aborted by peer: {c}"),
            CloseReason::ProtocolViolation(c) => write!(f, "aborted: {c}"),
        }
    }
}

/// Error codes carried by an `ABORT` frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortCode {
    /// Unspecified.
    Other,
    /// A message exceeded the receiver's `max_message`.
    MessageTooLarge,
    /// A close marker arrived in the middle of a message.
    BadClose,
    /// A code this version does not know.
    Unknown(u8),
}

impl AbortCode {
    /// The code's byte on the wire.
    pub fn to_byte(self) -> u8 {
        match self {
            AbortCode::Other => 0,
            AbortCode::MessageTooLarge => 1,
            AbortCode::BadClose => 2,
            AbortCode::Unknown(b) => b,
        }
    }

    /// The code for a byte from the wire.
    pub fn from_byte(b: u8) -> Self {
        match b {
            0 => AbortCode::Other,
            1 => AbortCode::MessageTooLarge,
            2 => AbortCode::BadClose,
            b => AbortCode::Unknown(b),
        }
    }
}

impl fmt::Display for AbortCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AbortCode::Other => f.write_str("error"),
            AbortCode::MessageTooLarge => f.write_str("message too large"),
            AbortCode::BadClose => f.write_str("close inside a message"),
            AbortCode::Unknown(b) => write!(f, "code {b}"),
        }
    }
}

/// Why [`Connection::send`] refused a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Larger than `max_message`.
    #[error("message of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// The send buffer is full; poll and retry once acknowledgements free it.
    #[error("send buffer full")]
    Blocked,
    /// The connection is closing or closed.
    #[error("connection closed")]
    Closed,
}
