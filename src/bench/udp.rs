//! The UDP ping-pong client: send one datagram, wait for its echo, repeat. A datagram that gets
//! no reply in time is counted and the client goes on, as UDP clients must.
//!
//! Datagrams of 8 bytes or more start with a big-endian sequence number (the rest is `x`), so
//! a reply that arrives after its client gave up is recognised: it counts as out of order,
//! not as the reply to the datagram in flight. Datagrams that never get a reply count as lost.
//! Shorter datagrams carry no number and cannot tell a late reply from the current one.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::reply::{FILL, Mismatch, first_difference, is_receipt};
use super::{Shared, Tally};

/// Bytes of the sequence number at the start of a datagram.
const SEQ_BYTES: usize = 8;
/// Unanswered datagrams remembered per client, so that a late reply to one of them takes it
/// off the lost count; older ones stay lost.
const LATE_WINDOW: usize = 64;
/// Room for any datagram.
const DATAGRAM_BUF: usize = 64 * 1024;
/// Bytes of a wrong reply kept to show the user.
const PREVIEW: usize = 200;

thread_local! {
    /// Outgoing datagrams are built here (the fill is written once; only the sequence number
    /// changes). Clients on a thread take turns: none holds a buffer across an `await`.
    static SEND: RefCell<Box<[u8]>> = RefCell::new(vec![FILL; DATAGRAM_BUF].into_boxed_slice());
    /// Incoming datagrams land here and are checked before the next `await`.
    static RECV: RefCell<Box<[u8]>> = RefCell::new(vec![0; DATAGRAM_BUF].into_boxed_slice());
}

/// What one received datagram is.
#[derive(Debug, PartialEq, Eq)]
enum Datagram {
    /// The echo of the datagram in flight.
    Reply,
    /// The echo of an earlier datagram with this sequence number.
    Late(u64),
    /// Not an echo of anything sent.
    Wrong(Mismatch),
}

/// The first `min(size, 8)` bytes of datagram `seq`.
fn prefix(size: usize, seq: u64) -> ([u8; SEQ_BYTES], usize) {
    if size >= SEQ_BYTES {
        (seq.to_be_bytes(), SEQ_BYTES)
    } else {
        ([FILL; SEQ_BYTES], size)
    }
}

/// Classifies datagram `d` received while datagram `seq` of `size` bytes is in flight.
fn classify(d: &[u8], size: usize, seq: u64) -> Datagram {
    let (head, head_len) = prefix(size, seq);
    let common = d.len().min(size);
    let head_diff = d[..head_len.min(d.len())]
        .iter()
        .zip(&head)
        .position(|(a, b)| a != b);
    let body_diff = if common > head_len {
        first_difference(&d[head_len..common]).map(|i| head_len + i)
    } else {
        None
    };
    if d.len() == size && body_diff.is_none() {
        match head_diff {
            None => return Datagram::Reply,
            // Only the sequence number differs.
            Some(_) if head_len == SEQ_BYTES => {
                let mut number = [0; SEQ_BYTES];
                number.copy_from_slice(&d[..SEQ_BYTES]);
                let earlier = u64::from_be_bytes(number);
                if earlier < seq {
                    return Datagram::Late(earlier);
                }
            }
            Some(_) => {}
        }
    }
    if is_receipt(d, size) {
        return Datagram::Reply;
    }
    let at = head_diff.or(body_diff).unwrap_or(common);
    Datagram::Wrong(Mismatch {
        len: d.len() as u64,
        at: at as u64,
        skipped: 0,
        preview: d[..d.len().min(PREVIEW)].to_vec(),
        truncated: d.len() > PREVIEW,
    })
}

async fn send(socket: &UdpSocket, size: usize, seq: u64) -> io::Result<()> {
    let (head, head_len) = prefix(size, seq);
    loop {
        let sent = SEND.with_borrow_mut(|buf| {
            buf[..head_len].copy_from_slice(&head[..head_len]);
            socket.try_send(&buf[..size])
        });
        match sent {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => socket.writable().await?,
            Err(e) => return Err(e),
        }
    }
}

async fn recv(socket: &UdpSocket, size: usize, seq: u64) -> io::Result<Datagram> {
    loop {
        let got = RECV
            .with_borrow_mut(|buf| socket.try_recv(buf).map(|n| classify(&buf[..n], size, seq)));
        match got {
            Ok(d) => return Ok(d),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => socket.readable().await?,
            Err(e) => return Err(e),
        }
    }
}

/// One client: runs until the run ends, `cancel` fires, or the socket fails.
pub(super) async fn client(
    socket: UdpSocket,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) -> Tally {
    let mut tally = Tally::default();
    let size = shared.size;
    let mut unanswered: VecDeque<u64> = VecDeque::new();
    let mut out_of_order = 0u64;
    let mut cancelled = pin!(cancel.cancelled());
    loop {
        let t0 = Instant::now();
        if shared.done(tally.counts.sent, t0) {
            break;
        }
        let seq = tally.counts.sent;
        tally.counts.sent += 1;
        if let Err(e) = send(&socket, size, seq).await {
            tally.counts.lost += 1;
            tally.fail(format_args!("cannot send: {e}"));
            break;
        }
        let wait = async {
            loop {
                match recv(&socket, size, seq).await? {
                    Datagram::Reply => return io::Result::Ok(None),
                    Datagram::Wrong(m) => return Ok(Some(m)),
                    Datagram::Late(earlier) => {
                        out_of_order += 1;
                        if let Some(i) = unanswered.iter().position(|&s| s == earlier) {
                            unanswered.remove(i);
                        }
                    }
                }
            }
        };
        let outcome = tokio::select! {
            biased;
            outcome = tokio::time::timeout(shared.timeout, wait) => outcome,
            // A reply still on its way when the run is stopped is neither right nor lost.
            () = &mut cancelled => break,
        };
        match outcome {
            Ok(Ok(None)) => tally.record(t0, &shared),
            Ok(Ok(Some(m))) => tally.mismatch(&m, size),
            Ok(Err(e)) => {
                tally.counts.lost += 1;
                tally.fail(format_args!("cannot receive: {e}"));
                break;
            }
            Err(_) => {
                tally.counts.timeouts += 1;
                unanswered.push_back(seq);
                if unanswered.len() > LATE_WINDOW {
                    unanswered.pop_front();
                    tally.counts.lost += 1;
                }
            }
        }
    }
    tally.counts.lost += unanswered.len() as u64;
    tally.counts.out_of_order = out_of_order;
    tally.flush(&shared);
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram(size: usize, seq: u64) -> Vec<u8> {
        let mut d = vec![FILL; size];
        let (head, n) = prefix(size, seq);
        d[..n].copy_from_slice(&head[..n]);
        d
    }

    #[test]
    fn the_echo_of_the_datagram_in_flight_is_its_reply() {
        for size in [0, 1, 7, 8, 64, 65_507] {
            assert_eq!(
                classify(&datagram(size, 5), size, 5),
                Datagram::Reply,
                "{size}"
            );
        }
    }

    #[test]
    fn an_earlier_number_is_a_late_reply_and_a_later_one_is_wrong() {
        assert_eq!(classify(&datagram(64, 3), 64, 5), Datagram::Late(3));
        assert!(matches!(
            classify(&datagram(64, 6), 64, 5),
            Datagram::Wrong(Mismatch { at: 7, .. })
        ));
    }

    #[test]
    fn changed_or_cut_datagrams_are_wrong() {
        let mut d = datagram(64, 1);
        d[20] = b'?';
        assert!(matches!(
            classify(&d, 64, 1),
            Datagram::Wrong(Mismatch {
                at: 20,
                len: 64,
                ..
            })
        ));
        assert!(matches!(
            classify(&datagram(64, 1)[..40], 64, 1),
            Datagram::Wrong(Mismatch {
                at: 40,
                len: 40,
                ..
            })
        ));
        let Datagram::Wrong(m) = classify(b"error: busy", 64, 0) else {
            panic!()
        };
        assert_eq!(m.describe(64), "server replied \"error: busy\"");
        assert!(matches!(
            classify(b"xy", 2, 0),
            Datagram::Wrong(Mismatch { at: 1, .. })
        ));
    }
}
