//! Services: what a server does with the messages of one connection, independent of transport.
//!
//! A [`Service`] opens one [`Session`] per TCP connection or per UDP peer. The session sees
//! messages (already framed) and an [`Outbox`]; it never sees a socket. Replies go into the
//! outbox; a session that needs to speak later (a chat room relaying someone else's line) asks
//! the outbox for a [`ConnHandle`], which can be cloned and used from any task. The same session
//! code therefore runs over TCP with any framing and over UDP.
//!
//! Adding a service: implement [`Service`] and [`Session`] in a new module here, then give it a
//! name in [`ServiceKind`].

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::net::PeerAddr;

use crate::message::Message;

pub mod ack;
pub mod chat;
pub mod console;
pub mod echo;
pub mod files;
pub mod hub;
pub mod login;
pub mod lookup;

pub use ack::Ack;
pub use chat::{Chat, ChatConfig, ChatSession};
pub use console::Console;
pub use echo::Echo;
pub use hub::Hub;
pub use login::{Attempt, FlowStep, Login, LoginFlow, LoginSession, Users};
pub use lookup::{Knowledge, Lookup};

/// How many pushed messages may wait for one TCP connection before pushers get
/// [`PushError::Full`].
pub const PUSH_QUEUE: usize = 1024;

/// The transport a session runs over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// A TCP connection, framed.
    Tcp,
    /// UDP datagrams from one peer address.
    Udp,
    /// A reliable-UDP connection: whole messages, in order, with a handshake and a close.
    Rudp,
}

impl Transport {
    /// Whether the peer holds a connection (TCP, rudp) rather than sending loose datagrams:
    /// what chat rooms, logins and greetings need.
    pub fn is_connection(self) -> bool {
        matches!(self, Transport::Tcp | Transport::Rudp)
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
            Transport::Rudp => "rudp",
        })
    }
}

/// Who a session is talking to.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// Server-unique number of this connection or peer, in order of arrival.
    pub id: u64,
    /// The remote address (an IP socket address, or a unix-socket peer).
    pub addr: PeerAddr,
    /// The transport.
    pub transport: Transport,
    /// The authenticated user name, once a login (see `--login`) has succeeded.
    pub user: Option<Arc<str>>,
}

/// The language of the texts a service writes (prompts, notices, "not found").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Lang {
    /// English.
    #[default]
    En,
    /// Chinese: the tutorials' own texts, so their clients' string comparisons match.
    Zh,
}

impl Lang {
    /// Every accepted `--lang` name.
    pub const NAMES: &'static [&'static str] = &["en", "zh"];
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Lang::En => "en",
            Lang::Zh => "zh",
        })
    }
}

impl FromStr for Lang {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "en" | "english" => Ok(Lang::En),
            "zh" | "cn" | "chinese" => Ok(Lang::Zh),
            _ => Err(format!("unknown language '{s}' (expected one of: en, zh)")),
        }
    }
}

/// A kind of server behaviour. One value is shared by every connection.
pub trait Service: Send + Sync + 'static {
    /// Per-connection (per-peer for UDP) state.
    type Session: Session;

    /// Opens the session for a new connection or UDP peer.
    fn open(&self, peer: &PeerInfo) -> Self::Session;

    /// Whether a message that is exactly `bye` or `quit` ends the connection (answered `bye`)
    /// before the session sees it. Services that carry arbitrary payloads turn this off.
    fn quit_words(&self) -> bool {
        true
    }

    /// Re-reads whatever files the service was built from (the server calls this on SIGHUP).
    /// A file that cannot be read keeps the old contents; the service logs why.
    fn reload(&self) {}

    /// Called once when the server starts running (after the binary has printed its banner),
    /// inside the runtime and before any session opens. A service that owns process-wide
    /// resources, such as the console's operator terminal, starts them here. Failures are the
    /// service's to log; the server runs regardless.
    fn start(&self) {}

    /// A service with a stream protocol of its own (file transfer) returns a handler here, and
    /// the TCP server hands it every accepted connection whole instead of framing it into
    /// sessions. Connection limits, the memory budget and shutdown still apply.
    fn stream_handler(&self) -> Option<Arc<dyn StreamHandler>> {
        None
    }
}

/// What a [`StreamHandler`] gets besides the stream.
#[derive(Debug)]
pub struct StreamContext {
    /// Who connected.
    pub peer: PeerInfo,
    /// The server-wide memory budget.
    pub budget: Arc<crate::budget::MemoryBudget>,
    /// Close a connection silent for this long between requests.
    pub idle_timeout: Option<std::time::Duration>,
    /// Close a connection whose transfer stalls for this long.
    pub frame_timeout: Option<std::time::Duration>,
    /// Fires when the server shuts down.
    pub closing: crate::shutdown::ShutdownListener,
    /// The server's end of the connection (for a child's environment, say).
    pub local: Option<PeerAddr>,
}

/// Serves whole stream connections (see [`Service::stream_handler`]): TCP, unix, or either
/// under a layer such as TLS.
pub trait StreamHandler: Send + Sync + 'static {
    /// Serves one connection to its end.
    fn serve(
        self: Arc<Self>,
        stream: crate::transport::stream::BoxStream,
        ctx: StreamContext,
    ) -> std::pin::Pin<Box<dyn Future<Output = crate::transport::tcp::ConnReport> + Send>>;
}

/// The state and behaviour of one connection.
pub trait Session: Send + 'static {
    /// Called once before the first message; may queue a greeting.
    fn on_open(&mut self, out: &mut Outbox) -> impl Future<Output = ()> + Send {
        let _ = out;
        async {}
    }

    /// Called for each message, in order. The next message is not read until this finishes,
    /// which is what gives a slow service back-pressure instead of an unbounded queue.
    fn on_message(&mut self, msg: Message, out: &mut Outbox) -> impl Future<Output = ()> + Send;

    /// Called once when the connection ends, for whatever reason.
    fn on_close(&mut self) {}

    /// Messages the session produces by itself rather than in reply, such as a chat room's
    /// traffic. The driver polls this whenever the connection has sent everything it owed:
    /// queue a bounded batch into `out` and return `Ready`, or return `Pending` after arranging
    /// for `cx` to be woken. Because it is only polled once earlier output has been written, a
    /// peer that stops reading stops being fed, which is the session's back-pressure signal.
    fn poll_feed(&mut self, cx: &mut Context<'_>, out: &mut Outbox) -> Poll<()> {
        let _ = (cx, out);
        Poll::Pending
    }

    /// Whether a message that is exactly `bye` or `quit` ends the connection before this
    /// session sees it (when the service allows quit words at all). A session that handles
    /// those words itself, such as a chat member saying "bye" to the room, returns false.
    fn ends_on_quit_word(&self) -> bool {
        true
    }
}

/// A message or instruction pushed to a connection from outside its own task.
#[derive(Debug)]
pub enum Push {
    /// Send this message.
    Message(Message),
    /// Close the connection after what was queued before.
    Close,
}

/// Why a push did not reach its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The connection's queue is full: it is not reading fast enough.
    #[error("connection's outgoing queue is full")]
    Full,
    /// The connection is gone.
    #[error("connection is closed")]
    Closed,
}

#[derive(Clone, Debug)]
enum HandleTarget {
    /// A TCP connection's own queue.
    Direct(mpsc::Sender<Push>),
    /// The UDP server's shared queue, tagged with the peer address.
    Tagged(mpsc::Sender<(SocketAddr, Push)>, SocketAddr),
}

/// A cloneable, `Send` handle that pushes messages to one connection from any task.
#[derive(Clone, Debug)]
pub struct ConnHandle {
    target: HandleTarget,
    peer: PeerAddr,
}

impl ConnHandle {
    /// The remote address of the connection.
    pub fn peer(&self) -> &PeerAddr {
        &self.peer
    }

    /// Queues `msg` without waiting; fails if the queue is full or the connection is gone.
    pub fn try_send(&self, msg: Message) -> Result<(), PushError> {
        self.try_push(Push::Message(msg))
    }

    /// Queues `msg`, waiting for room in the queue.
    pub async fn send(&self, msg: Message) -> Result<(), PushError> {
        let sent = match &self.target {
            HandleTarget::Direct(tx) => tx.send(Push::Message(msg)).await.is_ok(),
            HandleTarget::Tagged(tx, addr) => tx.send((*addr, Push::Message(msg))).await.is_ok(),
        };
        if sent { Ok(()) } else { Err(PushError::Closed) }
    }

    /// Asks the connection to close once what is already queued has been sent.
    pub fn close(&self) -> Result<(), PushError> {
        self.try_push(Push::Close)
    }

    /// Whether the connection has gone away.
    pub fn is_closed(&self) -> bool {
        match &self.target {
            HandleTarget::Direct(tx) => tx.is_closed(),
            HandleTarget::Tagged(tx, _) => tx.is_closed(),
        }
    }

    fn try_push(&self, push: Push) -> Result<(), PushError> {
        use mpsc::error::TrySendError;
        let result = match &self.target {
            HandleTarget::Direct(tx) => tx
                .try_send(push)
                .map_err(|e| matches!(e, TrySendError::Full(_))),
            HandleTarget::Tagged(tx, addr) => tx
                .try_send((*addr, push))
                .map_err(|e| matches!(e, TrySendError::Full(_))),
        };
        result.map_err(|full| {
            if full {
                PushError::Full
            } else {
                PushError::Closed
            }
        })
    }
}

#[derive(Debug)]
enum PushSource {
    /// TCP: the channel is created the first time a session asks for a handle, so connections
    /// whose service never pushes pay nothing for it.
    /// The sender is kept to clone further handles from; the receiver is polled by the driver.
    Lazy(Option<(mpsc::Sender<Push>, mpsc::Receiver<Push>)>),
    /// UDP: one channel for the whole socket, owned by the UDP driver.
    Shared(mpsc::Sender<(SocketAddr, Push)>),
}

/// What a session writes to: replies in order, a close request, and push handles.
#[derive(Debug)]
pub struct Outbox {
    /// The first queued message, kept inline: most messages get exactly one reply, and this
    /// spares them an allocation.
    first: Option<Message>,
    /// Any further queued messages, in order after `first`.
    queue: Vec<Message>,
    closing: bool,
    peer: PeerAddr,
    push: PushSource,
    /// UDP: the server's socket, for sessions that fan out to many peers directly.
    socket: Option<Arc<UdpSocket>>,
    /// Largest message body the transport and framing can carry.
    max_message: usize,
}

impl Outbox {
    /// An outbox for one TCP connection (or any stream) with `peer` at the other end.
    pub(crate) fn for_stream(peer: PeerAddr) -> Self {
        Outbox {
            first: None,
            queue: Vec::new(),
            closing: false,
            peer,
            push: PushSource::Lazy(None),
            socket: None,
            max_message: usize::MAX,
        }
    }

    /// An outbox shared by the peers of one UDP socket; see [`Outbox::set_peer`].
    pub(crate) fn for_datagrams(
        pushes: mpsc::Sender<(SocketAddr, Push)>,
        socket: Arc<UdpSocket>,
        peer: SocketAddr,
    ) -> Self {
        Outbox {
            first: None,
            queue: Vec::new(),
            closing: false,
            peer: PeerAddr::Inet(peer),
            push: PushSource::Shared(pushes),
            socket: Some(socket),
            max_message: crate::codec::MAX_DATAGRAM,
        }
    }

    /// The largest message body this connection can carry: a UDP datagram's 65,507 bytes, 255
    /// with `len8` framing, 65,535 with `len16`, no limit otherwise. A session that produces
    /// messages of its own size (a batch of chat lines) keeps within it; a message over it
    /// cannot be encoded and ends the connection.
    pub fn max_message(&self) -> usize {
        self.max_message
    }

    /// Sets what [`Outbox::max_message`] reports.
    pub(crate) fn set_max_message(&mut self, max: usize) {
        self.max_message = max;
    }

    /// The UDP socket this session's peer talks to (`None` over TCP). A session that sends the
    /// same datagram to many peers (a chat room) writes to it directly instead of queueing one
    /// push per peer.
    pub fn datagram_socket(&self) -> Option<&Arc<UdpSocket>> {
        self.socket.as_ref()
    }

    /// How many messages are queued.
    pub fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.queue.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.first.is_none() && self.queue.is_empty()
    }

    /// Queues a message for this connection.
    pub fn send(&mut self, msg: Message) {
        if self.first.is_none() && self.queue.is_empty() {
            self.first = Some(msg);
        } else {
            self.queue.push(msg);
        }
    }

    /// Closes the connection once the queued messages are sent.
    pub fn close(&mut self) {
        self.closing = true;
    }

    /// Whether [`Outbox::close`] was called.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// The remote address of this connection.
    pub fn peer(&self) -> &PeerAddr {
        &self.peer
    }

    /// A handle through which any task can push messages to this connection later.
    pub fn handle(&mut self) -> ConnHandle {
        let target = match &mut self.push {
            PushSource::Lazy(slot) => {
                let (tx, _) = slot.get_or_insert_with(|| mpsc::channel(PUSH_QUEUE));
                HandleTarget::Direct(tx.clone())
            }
            PushSource::Shared(tx) => {
                // Datagram peers are always IP peers; see `for_datagrams` and `set_peer`.
                let addr = self
                    .peer
                    .socket_addr()
                    .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
                HandleTarget::Tagged(tx.clone(), addr)
            }
        };
        ConnHandle {
            target,
            peer: self.peer.clone(),
        }
    }

    pub(crate) fn set_peer(&mut self, peer: SocketAddr) {
        self.peer = PeerAddr::Inet(peer);
        self.closing = false;
    }

    /// Takes the queued messages in order, leaving the queue's allocation for reuse.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = Message> + '_ {
        self.first.take().into_iter().chain(self.queue.drain(..))
    }

    /// Drops every queued message.
    pub(crate) fn clear(&mut self) {
        self.first = None;
        self.queue.clear();
    }

    /// Frees the queue's memory while the connection is idle.
    pub(crate) fn release_idle(&mut self) {
        if self.queue.is_empty() && self.queue.capacity() > 0 {
            self.queue = Vec::new();
        }
    }

    /// The next pushed message; pending forever if no handle was ever made.
    pub(crate) fn poll_push(&mut self, cx: &mut Context<'_>) -> Poll<Push> {
        match &mut self.push {
            // The outbox holds a sender itself, so `recv` never reports a closed channel.
            PushSource::Lazy(Some((_, rx))) => match rx.poll_recv(cx) {
                Poll::Ready(Some(push)) => Poll::Ready(push),
                _ => Poll::Pending,
            },
            _ => Poll::Pending,
        }
    }
}

/// The services `sockit serve --service` can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServiceKind {
    /// Every message back unchanged.
    Echo,
    /// A timestamped receipt for every message.
    Ack,
    /// Keyword lookup in a knowledge base.
    Lookup,
    /// Multi-client chat rooms.
    Chat,
    /// Two-way chat between the operator's terminal and the clients.
    Console,
    /// Line commands that reach every other service: the default.
    Hub,
    /// File uploads, downloads and listings over header framing.
    Files,
}

impl ServiceKind {
    /// Every accepted `--service` name.
    pub const NAMES: &'static [&'static str] =
        &["hub", "echo", "ack", "lookup", "chat", "console", "files"];

    /// The service's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ServiceKind::Echo => "echo",
            ServiceKind::Ack => "ack",
            ServiceKind::Lookup => "lookup",
            ServiceKind::Chat => "chat",
            ServiceKind::Console => "console",
            ServiceKind::Hub => "hub",
            ServiceKind::Files => "files",
        }
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ServiceKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase();
        [
            ServiceKind::Hub,
            ServiceKind::Echo,
            ServiceKind::Ack,
            ServiceKind::Lookup,
            ServiceKind::Chat,
            ServiceKind::Console,
            ServiceKind::Files,
        ]
        .into_iter()
        .find(|kind| kind.name() == wanted)
        .ok_or_else(|| {
            format!(
                "unknown service '{s}' (expected one of: {})",
                Self::NAMES.join(", ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bodies(out: &mut Outbox) -> Vec<String> {
        out.drain()
            .map(|m| String::from_utf8(m.into_body().to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn the_outbox_keeps_send_order_across_its_inline_slot() {
        let mut out = Outbox::for_stream(PeerAddr::Inet("127.0.0.1:1".parse().unwrap()));
        for m in ["a", "b", "c"] {
            out.send(Message::new(m));
        }
        assert_eq!(bodies(&mut out), ["a", "b", "c"]);
        out.send(Message::new("d"));
        assert_eq!(bodies(&mut out), ["d"]);
        assert!(bodies(&mut out).is_empty());
    }

    #[test]
    fn handles_share_one_lazily_created_channel() {
        let mut out = Outbox::for_stream(PeerAddr::Inet("127.0.0.1:1".parse().unwrap()));
        assert!(matches!(out.push, PushSource::Lazy(None)));
        let a = out.handle();
        let b = out.handle();
        a.try_send(Message::new("1")).unwrap();
        b.try_send(Message::new("2")).unwrap();
        let PushSource::Lazy(Some((_, rx))) = &mut out.push else {
            panic!("channel created by the first handle");
        };
        assert_eq!(rx.len(), 2);
    }
}
