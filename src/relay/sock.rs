//! A relayed stream socket (TCP or unix) used through `&self`, so that both directions of a
//! connection can read and write it at once, and the splice(2) pipe of the fast path.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

use tokio::io::Interest;
use tokio::net::{TcpStream, UnixStream};

/// One end of a relayed connection.
#[derive(Debug)]
pub(crate) enum Sock {
    /// A TCP stream.
    Tcp(TcpStream),
    /// A unix-domain stream.
    Unix(UnixStream),
}

impl Sock {
    pub(crate) fn fd(&self) -> RawFd {
        match self {
            Sock::Tcp(s) => s.as_raw_fd(),
            Sock::Unix(s) => s.as_raw_fd(),
        }
    }

    /// Waits until `interest` may be ready, then runs `f`; retries after a `WouldBlock`.
    pub(crate) async fn io<R>(
        &self,
        interest: Interest,
        mut f: impl FnMut() -> io::Result<R>,
    ) -> io::Result<R> {
        self.io_drain(interest, |_| f()).await
    }

    /// Like [`Sock::io`], but `f` may set its flag to say it emptied the socket's queue (a
    /// read that came back short): the readiness is then cleared along with the result, which
    /// saves the next read, whose only answer would be `WouldBlock`. Safe against a race:
    /// tokio clears only the readiness it saw before `f` ran, and bytes that arrive after the
    /// read raise a new edge.
    pub(crate) async fn io_drain<R>(
        &self,
        interest: Interest,
        mut f: impl FnMut(&mut bool) -> io::Result<R>,
    ) -> io::Result<R> {
        loop {
            let ready = match self {
                Sock::Tcp(s) => s.ready(interest).await,
                Sock::Unix(s) => s.ready(interest).await,
            };
            ready?;
            let mut kept = None;
            let mut g = || {
                let mut drained = false;
                match f(&mut drained) {
                    Ok(v) if drained => {
                        kept = Some(v);
                        Err(io::ErrorKind::WouldBlock.into())
                    }
                    r => r,
                }
            };
            let r = match self {
                Sock::Tcp(s) => s.try_io(interest, &mut g),
                Sock::Unix(s) => s.try_io(interest, &mut g),
            };
            if let Some(v) = kept {
                return Ok(v);
            }
            match r {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }

    /// Reads some bytes; 0 is the end of the stream.
    pub(crate) async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let fd = self.fd();
        self.io(Interest::READABLE, || {
            // SAFETY: `buf` is valid for `buf.len()` bytes and `fd` is open while `self` is.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            cvt(n)
        })
        .await
    }

    /// Reads some bytes once the socket is readable, unless `stop` says so first: then
    /// `None`, with nothing read (the faults changed: the caller rebuilds before reading).
    pub(crate) async fn read_unless(
        &self,
        buf: &mut [u8],
        stop: &impl Fn() -> bool,
    ) -> io::Result<Option<usize>> {
        let fd = self.fd();
        self.io(Interest::READABLE, || {
            if stop() {
                return Ok(None);
            }
            // SAFETY: `buf` is valid for `buf.len()` bytes and `fd` is open while `self` is.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            cvt(n).map(Some)
        })
        .await
    }

    /// Writes all of `buf`.
    pub(crate) async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        let fd = self.fd();
        while !buf.is_empty() {
            let n = self
                .io(Interest::WRITABLE, || {
                    // SAFETY: as in `read`; MSG_NOSIGNAL turns SIGPIPE into EPIPE.
                    let n = unsafe {
                        libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL)
                    };
                    cvt(n)
                })
                .await?;
            buf = &buf[n..];
        }
        Ok(())
    }

    /// The socket's pending error (SO_ERROR), if any; reading it clears it.
    pub(crate) fn take_error(&self) -> Option<io::Error> {
        let mut err: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: SO_ERROR writes one c_int into `err`, whose size `len` gives.
        let rc = unsafe {
            libc::getsockopt(
                self.fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&raw mut err).cast(),
                &mut len,
            )
        };
        (rc == 0 && err != 0).then(|| io::Error::from_raw_os_error(err))
    }

    /// Sends a FIN: the peer reads the end of the stream, and may still send.
    pub(crate) fn shutdown_write(&self) {
        // SAFETY: plain syscall on an fd we own; an error (already closed) is harmless.
        unsafe { libc::shutdown(self.fd(), libc::SHUT_WR) };
    }

    /// Makes the close that follows send a RST instead of a FIN (TCP only).
    pub(crate) fn set_linger_zero(&self) {
        if let Sock::Tcp(_) = self {
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: SO_LINGER with a properly sized `linger` on a socket we own. With a zero
            // time the close never blocks: it sends a RST and drops unsent data.
            unsafe {
                libc::setsockopt(
                    self.fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&raw const linger).cast(),
                    size_of::<libc::linger>() as libc::socklen_t,
                )
            };
        }
    }
}

fn cvt(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Size the fast path grows a pipe to once a connection fills its default one.
pub(crate) const PIPE_TARGET: usize = 1 << 20;

/// The system's cap on pipe sizes, from /proc/sys/fs/pipe-max-size (1 MiB if unreadable).
pub(crate) fn pipe_max_size() -> usize {
    static MAX: OnceLock<usize> = OnceLock::new();
    *MAX.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(PIPE_TARGET)
    })
}

/// A non-blocking pipe that carries one direction's bytes between two sockets in the kernel.
#[derive(Debug)]
pub(crate) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    size: usize,
}

impl Pipe {
    /// A pipe of the default size (it grows on demand: idle connections keep small pipes, so
    /// thousands of them stay within the per-user pipe budget).
    pub(crate) fn new() -> io::Result<Pipe> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both are fresh descriptors that nobody else owns.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: F_GETPIPE_SZ on our own pipe.
        let size = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
        Ok(Pipe {
            read,
            write,
            size: usize::try_from(size).unwrap_or(65536).max(4096),
        })
    }

    /// Grows the pipe towards 1 MiB (capped by pipe-max-size); keeps its size on failure
    /// (e.g. when the user's pipe budget is spent).
    fn grow(&mut self) {
        let want = PIPE_TARGET.min(pipe_max_size());
        if want <= self.size {
            return;
        }
        let want = libc::c_int::try_from(want).unwrap_or(libc::c_int::MAX);
        // SAFETY: F_SETPIPE_SZ on our own pipe.
        let got = unsafe { libc::fcntl(self.write.as_raw_fd(), libc::F_SETPIPE_SZ, want) };
        if let Ok(got) = usize::try_from(got) {
            self.size = got;
        }
        // Do not try again if the kernel said no.
        if self.size < PIPE_TARGET.min(pipe_max_size()) {
            self.size = usize::MAX >> 1;
        }
    }
}

/// How a one-way transfer ended.
#[derive(Debug)]
pub(crate) enum End {
    /// The source sent a FIN.
    Eof,
    /// Reading the source failed (a RST, usually).
    Read(io::Error),
    /// Writing the destination failed (it reset or vanished).
    Write(io::Error),
    /// A `limit_data` fault used up its bytes.
    Limit,
    /// The faults changed: nothing is in flight; run this direction again with the new ones.
    Reconfigure,
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are open (owned by live sockets/pipes); null offsets mean
    // "current position", as splice requires for sockets and pipes.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    cvt(n)
}

/// Idle pipes kept for reuse.
const POOL_MAX: usize = 256;
static POOL: std::sync::Mutex<Vec<Pipe>> = std::sync::Mutex::new(Vec::new());

/// An empty pipe from the pool, or a new one.
fn take_pipe() -> io::Result<Pipe> {
    match POOL.lock().ok().and_then(|mut p| p.pop()) {
        Some(p) => Ok(p),
        None => Pipe::new(),
    }
}

/// Gives back an empty pipe.
fn put_pipe(pipe: Pipe) {
    if let Ok(mut pool) = POOL.lock() {
        if pool.len() < POOL_MAX {
            pool.push(pipe);
        }
    }
}

/// Below this, a chunk is copied through a per-thread buffer rather than spliced: splicing a
/// few bytes costs more than copying them (the kernel copies a small segment's data into a
/// page anyway) and takes a pipe from the pool. A read that fills the buffer means a stream
/// is flowing: the next chunks are spliced until one comes in short again.
const SMALL: usize = 16 * 1024;

thread_local! {
    /// The copy buffer of small chunks: one per worker thread, none per connection.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; SMALL]);
}

/// What one read moved.
enum Got {
    /// Bytes now in the pipe.
    Spliced(usize),
    /// Bytes read into the fallback buffer (no pipe could be had).
    Copied(usize),
    /// Nothing read: the faults changed.
    Changed,
    /// A small chunk copied through the per-thread buffer and written to the destination
    /// at once: `(read, left)`, where `left` holds what the destination could not take yet.
    Small(usize, Option<Vec<u8>>),
}

/// A write error met while copying a small chunk inside the read step.
#[derive(Debug)]
struct WriteFailed(io::Error);

impl std::fmt::Display for WriteFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for WriteFailed {}

/// Moves bytes from `src` to `dst` with splice(2) through a pooled pipe, never copying them
/// to user space, until `src` ends; `count` is called with each amount moved. If no pipe can
/// be created (descriptors exhausted), a chunk is copied through a buffer instead.
///
/// Before each chunk, `changed` is asked whether the faults changed; if so the pump returns
/// [`End::Reconfigure`] with nothing read and nothing in flight.
pub(crate) async fn splice_pump(
    src: &Sock,
    dst: &Sock,
    mut count: impl FnMut(usize),
    changed: impl Fn() -> bool,
) -> End {
    let (src_fd, dst_fd) = (src.fd(), dst.fd());
    let mut slot: Option<Pipe> = None;
    let mut buf: Vec<u8> = Vec::new();
    // Small chunks (interactive traffic) are copied; a full read switches to splice.
    let mut streaming = false;
    loop {
        let got = src
            .io_drain(Interest::READABLE, |drained| {
                if changed() {
                    if let Some(pipe) = slot.take() {
                        put_pipe(pipe);
                    }
                    return Ok(Got::Changed);
                }
                if !streaming {
                    return SCRATCH.with_borrow_mut(|scratch| {
                        // SAFETY: `scratch` is valid for its length; `src_fd` is open.
                        let n = unsafe {
                            libc::read(src_fd, scratch.as_mut_ptr().cast(), scratch.len())
                        };
                        let n = cvt(n)?;
                        if n == 0 {
                            return Ok(Got::Copied(0));
                        }
                        // Straight on to the destination; what it cannot take now waits in a
                        // buffer of this connection's own.
                        let mut sent = 0;
                        while sent < n {
                            // SAFETY: as above; MSG_NOSIGNAL turns SIGPIPE into EPIPE.
                            let m = unsafe {
                                libc::send(
                                    dst_fd,
                                    scratch[sent..n].as_ptr().cast(),
                                    n - sent,
                                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                                )
                            };
                            match cvt(m) {
                                Ok(m) => sent += m,
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                                // Reported as a write failure below (nothing is lost that
                                // could still be delivered).
                                Err(e) => return Err(io::Error::new(e.kind(), WriteFailed(e))),
                            }
                        }
                        let left = (sent < n).then(|| scratch[sent..n].to_vec());
                        // A short read emptied the socket: no need to read again to learn it.
                        *drained = n < scratch.len();
                        Ok(Got::Small(n, left))
                    });
                }
                if slot.is_none() {
                    slot = take_pipe().ok();
                }
                match &slot {
                    Some(pipe) => {
                        let size = pipe.size.min(PIPE_TARGET);
                        let r = splice(src_fd, pipe.write.as_raw_fd(), size);
                        if matches!(&r, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
                            // Nothing to read after all: wait without holding the pipe.
                            if let Some(pipe) = slot.take() {
                                put_pipe(pipe);
                            }
                        }
                        r.map(Got::Spliced)
                    }
                    None => {
                        if buf.is_empty() {
                            buf.resize(64 * 1024, 0);
                        }
                        // SAFETY: `buf` is valid for its length; `src_fd` is open.
                        let n = unsafe { libc::read(src_fd, buf.as_mut_ptr().cast(), buf.len()) };
                        cvt(n).map(Got::Copied)
                    }
                }
            })
            .await;
        let n = match got {
            Ok(Got::Spliced(0) | Got::Copied(0)) => {
                if let Some(pipe) = slot.take() {
                    put_pipe(pipe);
                }
                // splice(2) reports a reset socket as the end of the stream (the kernel checks
                // "done" before the pending error): ask for the error to tell RST from FIN.
                if let Some(e) = src.take_error() {
                    return End::Read(e);
                }
                dst.shutdown_write();
                return End::Eof;
            }
            Ok(Got::Copied(n)) => {
                if let Err(e) = dst.write_all(&buf[..n]).await {
                    return End::Write(e);
                }
                count(n);
                continue;
            }
            Ok(Got::Small(n, left)) => {
                if let Some(left) = left {
                    if let Err(e) = dst.write_all(&left).await {
                        return End::Write(e);
                    }
                }
                count(n);
                streaming = n == SMALL;
                continue;
            }
            Ok(Got::Spliced(n)) => {
                streaming = n >= SMALL;
                n
            }
            Ok(Got::Changed) => return End::Reconfigure,
            Err(e) if e.get_ref().is_some_and(|inner| inner.is::<WriteFailed>()) => {
                return match e.into_inner().map(|inner| inner.downcast::<WriteFailed>()) {
                    Some(Ok(w)) => End::Write(w.0),
                    _ => End::Write(io::ErrorKind::BrokenPipe.into()),
                };
            }
            Err(e) => return End::Read(e),
        };
        let Some(mut pipe) = slot.take() else {
            continue;
        };
        if n >= pipe.size {
            pipe.grow();
        }
        let pipe_r = pipe.read.as_raw_fd();
        let mut left = n;
        while left > 0 {
            match dst
                .io(Interest::WRITABLE, || splice(pipe_r, dst_fd, left))
                .await
            {
                // A pipe with bytes left in it is dropped, never pooled.
                Ok(0) => return End::Write(io::ErrorKind::WriteZero.into()),
                Ok(m) => {
                    left -= m;
                    count(m);
                }
                Err(e) => return End::Write(e),
            }
        }
        put_pipe(pipe);
    }
}
