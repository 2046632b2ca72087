//! sockit: a socket toolkit — TCP and UDP servers, clients, message framing and a load
//! generator, in one library with a thin binary on top.
//!
//! ```no_run
//! use sockit::{Echo, Server, ServerConfig};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn demo() -> std::io::Result<()> {
//! let server = Server::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::default(), Echo).await?;
//! println!("listening on {}", server.local_addr());
//! server.run(CancellationToken::new()).await;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`codec`]: framings (`raw`, `line`, `lenN[le]`, `header[le]`), each bounded.
//! - [`message`]: [`Message`] and its optional JSON [`Header`].
//! - [`service`]: the [`Service`]/[`Session`] interface and the services (`echo`, `ack`,
//!   `lookup`, `chat`, `console`, `hub`, `files`, and `login` in front of any of them).
//! - [`files`]: file transfer: safe names, the `openat`-only store, the wire format, the
//!   overlapped disk side, and the client behind `sockit send`, `get` and `ls`.
//! - [`users`]: the users file behind `--login` (Argon2id hashes) and `sockit user`.
//! - [`transport`]: tokio drivers running a session over a framed stream, over UDP, or over a
//!   connection of whole messages (rudp).
//! - [`server`]: bind, accept loop, connection limit, graceful shutdown.
//! - [`budget`]: the server-wide memory budget for buffered frames and replies.
//! - [`shutdown`]: the shutdown signal every connection checks while it waits.
//! - [`client`]: `sockit connect`.
//! - [`cluster`]: chat across servers over NATS (`serve --cluster`).
//! - [`bench`](mod@bench): `sockit bench`, the load generator.
//! - [`net`]: the address grammar (`HOST:PORT`, `udp:`, `unix:`, …), [`PeerAddr`], name
//!   resolution, the lookups behind `sockit resolve`, the service table behind `sockit port`.
//! - [`ping`]: `sockit ping`, connect-time ping over TCP or UDP.
//! - [`proxy`]: SOCKS5 (RFC 1928/1929) and HTTP CONNECT clients behind `connect --proxy`.
//! - [`tls`]: TLS over any stream (rustls on aws-lc-rs): generated and kept certificates,
//!   pins, CA and mTLS configs, the server and client layers, clear handshake errors.
//! - [`relay`]: `sockit relay`: forwarding, inspection, faults and the toxiproxy-compatible API.
//! - [`rudp`]: reliable UDP, sans-IO: connection state machine, stateless-cookie endpoint,
//!   wire format, and a deterministic network simulator.
//! - [`exec`]: `--exec`/`--sh-exec`: a program per connection, on its stdin and stdout.
//! - [`error`]: the library's error enums.
//! - [`logging`]: a log sink that never blocks or crashes the process on a closed stderr.
//!
//! A new service is a [`Service`] + [`Session`] pair in `service/`; a new stream transport
//! implements [`transport::Stream`] and reuses [`transport::tcp::serve_connection`].

pub mod bench;
pub mod budget;
pub mod client;
pub mod cluster;
pub mod codec;
pub mod error;
pub mod exec;
pub mod files;
pub mod logging;
pub mod message;
pub mod net;
pub mod ping;
pub mod proxy;
pub mod relay;
pub mod rudp;
pub mod scan;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod tls;
pub mod transport;
pub mod users;

pub use codec::{FrameCodec, Framing, Limits};
pub use error::{CodecError, ConfigError};
pub use message::{Header, Message};
pub use net::{Address, PeerAddr};
pub use server::{Server, ServerConfig, ServerReport};
pub use service::{
    Ack, Chat, ChatConfig, ChatSession, ConnHandle, Console, Echo, Hub, Knowledge, Lang, Lookup,
    Outbox, PeerInfo, Service, ServiceKind, Session, Transport,
};
