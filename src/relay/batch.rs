//! Batched datagram receives for the UDP relay: one recvmmsg(2) takes every datagram queued on
//! a socket (up to [`BATCH`]) into a per-thread buffer, so a busy listening socket costs one
//! system call per batch rather than one per datagram, and no flow keeps a 64 KiB receive
//! buffer of its own.
//!
//! A batch that comes back short of [`BATCH`] emptied the queue, so the socket's readiness is
//! cleared along with it: the receive whose only answer would be `WouldBlock` is saved (the
//! common case of a flow with one reply in flight). tokio clears only the readiness it saw
//! before the call, and a datagram that arrives afterwards raises a new edge.

use std::cell::RefCell;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::codec::MAX_DATAGRAM;

/// Datagrams taken per recvmmsg(2).
pub(crate) const BATCH: usize = 16;
/// Room per datagram: one byte more than the largest, so an oversized one shows as such.
const SLOT: usize = MAX_DATAGRAM + 1;

/// The receive buffers of one worker thread.
struct Buffers {
    data: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
}

thread_local! {
    static BUFFERS: RefCell<Option<Buffers>> = const { RefCell::new(None) };
}

/// The address recvmmsg wrote, if it is an internet one.
fn to_socket_addr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is sized for.
            let sin =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// One recvmmsg(2) into `bufs`, handing each datagram to `each`; returns how many came.
fn recv_into(
    fd: i32,
    bufs: &mut Buffers,
    each: &mut impl FnMut(&[u8], Option<SocketAddr>),
) -> io::Result<usize> {
    let mut iovs: [libc::iovec; BATCH] = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; BATCH];
    // SAFETY: mmsghdr is plain data; all-zero is a valid value, filled in below.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (k, (iov, msg)) in iovs.iter_mut().zip(msgs.iter_mut()).enumerate() {
        iov.iov_base = bufs.data[k * SLOT..].as_mut_ptr().cast();
        iov.iov_len = SLOT;
        msg.msg_hdr.msg_name = (&raw mut bufs.addrs[k]).cast();
        msg.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_hdr.msg_iov = iov;
        msg.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: every header points at a live iovec over its own SLOT bytes of `bufs.data` and at
    // its own sockaddr_storage, all of which outlive the call.
    let n = unsafe {
        libc::recvmmsg(
            fd,
            msgs.as_mut_ptr(),
            BATCH as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    for (k, msg) in msgs.iter().take(n).enumerate() {
        let len = (msg.msg_len as usize).min(SLOT);
        let from = (msg.msg_hdr.msg_namelen > 0)
            .then(|| to_socket_addr(&bufs.addrs[k]))
            .flatten();
        each(&bufs.data[k * SLOT..k * SLOT + len], from);
    }
    Ok(n)
}

/// Waits until `sock` is readable, then receives what is queued (up to [`BATCH`] datagrams)
/// with one recvmmsg(2) and hands each to `each` with its sender (`None` if the socket
/// reported none). Returns how many came (at least one).
///
/// `each` runs while the thread's buffer is borrowed: it must not receive on any socket
/// itself; sending (non-blocking) is what it is for.
pub(crate) async fn recv_each(
    sock: &UdpSocket,
    mut each: impl FnMut(&[u8], Option<SocketAddr>),
) -> io::Result<usize> {
    let fd = sock.as_raw_fd();
    loop {
        sock.readable().await?;
        let mut kept = None;
        let r = sock.try_io(Interest::READABLE, || {
            BUFFERS.with_borrow_mut(|slot| {
                let bufs = slot.get_or_insert_with(|| Buffers {
                    data: vec![0u8; BATCH * SLOT],
                    // SAFETY: sockaddr_storage is plain data; zero is a valid value.
                    addrs: vec![unsafe { std::mem::zeroed() }; BATCH],
                });
                let n = recv_into(fd, bufs, &mut each)?;
                if n < BATCH {
                    // The queue is empty: clear the readiness along with the result.
                    kept = Some(n);
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            })
        });
        if let Some(n) = kept {
            return Ok(n);
        }
        match r {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_brings_every_queued_datagram_with_its_sender_and_size() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = rx.local_addr().unwrap();
        // More than one batch, one of them as large as a datagram can be.
        let sizes: Vec<usize> = (0..BATCH + 5)
            .map(|k| if k == 3 { MAX_DATAGRAM } else { k })
            .collect();
        for (k, &n) in sizes.iter().enumerate() {
            tx.send_to(&vec![k as u8; n], to).await.unwrap();
        }
        let mut got = Vec::new();
        while got.len() < sizes.len() {
            recv_each(&rx, |d, from| got.push((d.to_vec(), from)))
                .await
                .unwrap();
        }
        for (k, (d, from)) in got.iter().enumerate() {
            assert_eq!(d.len(), sizes[k], "datagram {k}'s size");
            assert!(d.iter().all(|&b| b == k as u8), "datagram {k}'s bytes");
            assert_eq!(*from, Some(tx.local_addr().unwrap()));
        }
        // The readiness was cleared with a short batch; a later datagram still wakes us.
        tx.send_to(b"late", to).await.unwrap();
        let mut late = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            recv_each(&rx, |d, _| late.push(d.to_vec())),
        )
        .await
        .expect("a datagram after a drained batch is seen")
        .unwrap();
        assert_eq!(late, vec![b"late".to_vec()]);
    }
}
