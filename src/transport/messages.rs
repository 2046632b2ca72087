//! Runs one [`Session`] over a connection that carries whole messages (reliable UDP): each
//! message received is one request, each reply one message sent. What TCP's driver does with
//! framing, this does with the transport's own message boundaries: quit words, pushes from
//! other tasks, a session's own feed (chat), the idle timeout and shutdown.
//!
//! Server-written text follows the `raw` newline rule, as over plain UDP: it ends with `\n`
//! when the peer's own last message did.

use std::future::{Future, poll_fn};
use std::io;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio_util::codec::Encoder;
use tracing::debug;

use crate::codec::RawCodec;
use crate::message::Message;
use crate::net::PeerAddr;
use crate::service::{Outbox, Push, Session};
use crate::shutdown::ShutdownListener;
use crate::transport::tcp::{CloseReason, ConnReport, ConnSettings};

/// A connection that delivers whole messages, reliably and in order.
pub trait MessageConn: Send + 'static {
    /// The next message; `None` once the peer closed or the connection failed.
    fn recv(&mut self) -> impl Future<Output = Option<Bytes>> + Send;
    /// Sends one message (waiting while the transport's window is full).
    fn send(&mut self, msg: Bytes) -> impl Future<Output = io::Result<()>> + Send;
    /// Starts an orderly close after what was sent.
    fn close(&mut self);
    /// Why the connection ended, once it has: `None` for the peer's own orderly close.
    fn failure(&self) -> Option<String> {
        None
    }
}

/// What woke the driver.
enum Wake {
    Message(Option<Bytes>),
    Push(Push),
    Fed,
    Idle,
    Shutdown,
}

/// Serves `session` over `conn` until either side closes; the report is the same as TCP's.
pub async fn serve_messages<C: MessageConn, S: Session>(
    mut conn: C,
    mut session: S,
    peer: PeerAddr,
    settings: Arc<ConnSettings>,
    mut closing: ShutdownListener,
) -> ConnReport {
    let started = Instant::now();
    let mut out = Outbox::for_stream(peer);
    let mut codec = RawCodec::new(64 * 1024);
    let mut wbuf = BytesMut::new();
    let mut report = ConnReport {
        reason: CloseReason::PeerClosed,
        messages_in: 0,
        messages_out: 0,
        bytes_in: 0,
        bytes_out: 0,
        duration: started.elapsed(),
    };
    session.on_open(&mut out).await;
    let mut reason = None;
    if let Err(e) = deliver(&mut conn, &mut out, &mut codec, &mut wbuf, &mut report).await {
        reason = Some(CloseReason::Io(e));
    }
    while reason.is_none() {
        if out.is_closing() {
            reason = Some(CloseReason::ServiceClosed);
            break;
        }
        let idle = settings.idle_timeout;
        let wake = {
            let recv = conn.recv();
            let others = poll_fn(|cx| {
                if let Poll::Ready(push) = out.poll_push(cx) {
                    return Poll::Ready(Wake::Push(push));
                }
                match session.poll_feed(cx, &mut out) {
                    Poll::Ready(()) => Poll::Ready(Wake::Fed),
                    Poll::Pending => Poll::Pending,
                }
            });
            tokio::select! {
                biased;
                () = &mut closing => Wake::Shutdown,
                msg = recv => Wake::Message(msg),
                wake = others => wake,
                () = async {
                    match idle {
                        Some(t) => tokio::time::sleep(t).await,
                        None => std::future::pending().await,
                    }
                } => Wake::Idle,
            }
        };
        match wake {
            Wake::Shutdown => reason = Some(CloseReason::Shutdown),
            Wake::Idle => {
                let t = idle.unwrap_or_default();
                out.send(Message::text(format!(
                    "error: idle timeout ({}s without a message)",
                    t.as_secs_f64()
                )));
                reason = Some(CloseReason::IdleTimeout(t));
            }
            Wake::Message(None) => {
                reason = Some(match conn.failure() {
                    Some(why) => CloseReason::Failed(why),
                    None => CloseReason::PeerClosed,
                });
            }
            Wake::Message(Some(bytes)) => {
                report.messages_in += 1;
                report.bytes_in += bytes.len() as u64;
                let msg = codec.decode_datagram(bytes);
                if settings.quit_words && session.ends_on_quit_word() && msg.is_quit_word() {
                    out.send(Message::text("bye"));
                    reason = Some(CloseReason::Quit);
                } else {
                    session.on_message(msg, &mut out).await;
                }
            }
            Wake::Push(Push::Message(msg)) => out.send(msg),
            Wake::Push(Push::Close) => reason = Some(CloseReason::ServiceClosed),
            Wake::Fed => {}
        }
        if let Err(e) = deliver(&mut conn, &mut out, &mut codec, &mut wbuf, &mut report).await {
            reason.get_or_insert(CloseReason::Io(e));
        }
        out.release_idle();
    }
    session.on_close();
    conn.close();
    report.reason = reason.unwrap_or(CloseReason::PeerClosed);
    report.duration = started.elapsed();
    debug!("message connection ended: {}", report.reason);
    report
}

/// Sends every queued message, one transport message each.
async fn deliver<C: MessageConn>(
    conn: &mut C,
    out: &mut Outbox,
    codec: &mut RawCodec,
    wbuf: &mut BytesMut,
    report: &mut ConnReport,
) -> io::Result<()> {
    let queued: Vec<Message> = out.drain().collect();
    for msg in queued {
        wbuf.clear();
        if codec.encode(&msg, wbuf).is_err() {
            continue;
        }
        let bytes = wbuf.split().freeze();
        report.bytes_out += bytes.len() as u64;
        report.messages_out += 1;
        conn.send(bytes).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{Echo, PeerInfo, Service, Transport};
    use crate::shutdown::ShutdownSignal;
    use tokio::sync::mpsc;

    /// Both ends of an in-memory message connection.
    struct Pipe {
        rx: mpsc::Receiver<Bytes>,
        tx: Option<mpsc::Sender<Bytes>>,
    }

    impl MessageConn for Pipe {
        async fn recv(&mut self) -> Option<Bytes> {
            self.rx.recv().await
        }
        async fn send(&mut self, msg: Bytes) -> io::Result<()> {
            match &self.tx {
                Some(tx) => tx
                    .send(msg)
                    .await
                    .map_err(|_| io::ErrorKind::BrokenPipe.into()),
                None => Err(io::ErrorKind::BrokenPipe.into()),
            }
        }
        fn close(&mut self) {
            self.tx = None;
        }
    }

    #[tokio::test]
    async fn echo_runs_over_messages_and_bye_ends_it() {
        let (to_server, rx) = mpsc::channel(8);
        let (tx, mut from_server) = mpsc::channel(8);
        let conn = Pipe { rx, tx: Some(tx) };
        let peer = PeerAddr::Inet("127.0.0.1:1".parse().unwrap());
        let info = PeerInfo {
            id: 1,
            addr: peer.clone(),
            transport: Transport::Udp,
            user: None,
        };
        let signal = ShutdownSignal::new();
        let task = tokio::spawn(serve_messages(
            conn,
            Echo.open(&info),
            peer,
            Arc::new(ConnSettings::default()),
            signal.listen(),
        ));
        to_server
            .send(Bytes::from_static(b"hello\n"))
            .await
            .unwrap();
        assert_eq!(from_server.recv().await.unwrap(), "hello\n");
        to_server.send(Bytes::from_static(b"bye\n")).await.unwrap();
        assert_eq!(from_server.recv().await.unwrap(), "bye\n");
        let report = task.await.unwrap();
        assert!(matches!(report.reason, CloseReason::Quit));
        assert_eq!(report.messages_in, 2);
        assert!(from_server.recv().await.is_none());
    }
}
