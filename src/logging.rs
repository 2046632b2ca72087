//! A log sink that can never stop, block or crash the process that logs.
//!
//! Log lines go into a bounded queue; one background thread writes them to stderr. When stderr
//! is a pipe whose reader is gone (`sockit serve 2>&1 | head -n 3`) writes fail and the lines are
//! dropped; when the reader is slow the queue fills and new lines are dropped instead of making
//! the server wait. Either way the loss is counted, and reported on stderr as soon as a write
//! succeeds again.
//!
//! `RateLimited` keeps a flood of one kind of event (refusals, evictions) to one log line
//! a second.

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

/// Lines that may wait for the writer thread before new ones are dropped.
const QUEUE_LINES: usize = 4096;
/// Bytes that may wait for the writer thread before new lines are dropped: a `--hex` dump's
/// "line" is a whole chunk's rows (about 4.4 bytes per byte of data), so the line count alone
/// would not bound the memory a stuck stderr can hold.
const QUEUE_BYTES: usize = 16 << 20;

enum Item {
    Line(Vec<u8>),
    /// Answer once every line queued before this one has been handled.
    Flush(SyncSender<()>),
}

/// Where log lines go: a cloneable handle to the queue of the writer thread.
#[derive(Clone)]
pub struct LogSink {
    tx: SyncSender<Item>,
    dropped: Arc<AtomicU64>,
    /// Bytes queued and not yet handled by the writer thread.
    queued: Arc<AtomicUsize>,
}

impl std::fmt::Debug for LogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogSink")
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl LogSink {
    /// Starts the writer thread, writing to the process's stderr.
    pub fn stderr() -> io::Result<LogSink> {
        Self::spawn(io::stderr())
    }

    /// Starts a writer thread that writes to `out`.
    pub fn spawn<W: Write + Send + 'static>(out: W) -> io::Result<LogSink> {
        let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = dropped.clone();
        let queued = Arc::new(AtomicUsize::new(0));
        let in_queue = queued.clone();
        std::thread::Builder::new()
            .name("sockit-log".into())
            .spawn(move || write_loop(rx, out, &counter, &in_queue))?;
        Ok(LogSink {
            tx,
            dropped,
            queued,
        })
    }

    /// Queues one line (or any bytes) without waiting; counts it as dropped if the queue is full.
    pub fn log(&self, bytes: &[u8]) {
        let len = bytes.len();
        if self.queued.fetch_add(len, Ordering::Relaxed) + len > QUEUE_BYTES {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.tx.try_send(Item::Line(bytes.to_vec()))
        {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Lines lost so far (queue full or stderr failing).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits up to `limit` for the lines queued so far to be written (or dropped).
    pub fn flush(&self, limit: Duration) {
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        if self.tx.try_send(Item::Flush(ack_tx)).is_ok() {
            let _ = ack_rx.recv_timeout(limit);
        }
    }
}

fn write_loop<W: Write>(rx: Receiver<Item>, mut out: W, dropped: &AtomicU64, queued: &AtomicUsize) {
    let mut reported = 0u64;
    for item in rx {
        match item {
            Item::Line(line) => {
                queued.fetch_sub(line.len(), Ordering::Relaxed);
                if out.write_all(&line).and_then(|()| out.flush()).is_err() {
                    dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let lost = dropped.load(Ordering::Relaxed);
                if lost > reported {
                    let note = format!("sockit: {} log line(s) dropped\n", lost - reported);
                    if out.write_all(note.as_bytes()).is_ok() {
                        reported = lost;
                    }
                }
            }
            Item::Flush(ack) => {
                let _ = ack.try_send(());
            }
        }
    }
}

/// One event's writer: tracing-subscriber formats an event, then writes it whole.
pub struct EventWriter<'a> {
    sink: &'a LogSink,
}

impl Write for EventWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sink.log(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = EventWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        EventWriter { sink: self }
    }
}

/// Writes `line` and a newline to stderr, ignoring failure: for the last words of a process
/// whose stderr may be closed (`eprintln!` would panic there).
pub fn stderr_line(line: &str) {
    let mut err = io::stderr().lock();
    let _ = err.write_all(line.as_bytes());
    let _ = err.write_all(b"\n");
    let _ = err.flush();
}

/// Counts events and says when to log them: at most once per period.
#[derive(Debug)]
pub(crate) struct RateLimited {
    period: Duration,
    last: Option<Instant>,
    pending: u64,
}

impl RateLimited {
    pub(crate) fn new(period: Duration) -> Self {
        RateLimited {
            period,
            last: None,
            pending: 0,
        }
    }

    /// Records one event; returns how many happened since the last log if it is time to log.
    pub(crate) fn hit(&mut self) -> Option<u64> {
        self.pending += 1;
        let now = Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < self.period => None,
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.pending))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn rate_limited_logs_first_event_then_batches() {
        let mut r = RateLimited::new(Duration::from_secs(3600));
        assert_eq!(r.hit(), Some(1));
        assert_eq!(r.hit(), None);
        assert_eq!(r.hit(), None);
        r.last = Some(Instant::now() - Duration::from_secs(7200));
        assert_eq!(r.hit(), Some(3));
    }

    /// A writer that fails its first `fail` writes, then records everything.
    struct Flaky {
        fail: usize,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Flaky {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.fail > 0 {
                self.fail -= 1;
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            self.got.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn failed_writes_are_counted_and_reported_once_writing_works_again() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = LogSink::spawn(Flaky {
            fail: 2,
            got: got.clone(),
        })
        .unwrap();
        for line in ["a\n", "b\n", "c\n"] {
            sink.log(line.as_bytes());
        }
        sink.flush(Duration::from_secs(5));
        assert_eq!(sink.dropped(), 2);
        let text = String::from_utf8(got.lock().unwrap().clone()).unwrap();
        assert_eq!(text, "c\nsockit: 2 log line(s) dropped\n");
    }

    /// A writer that never returns: the logger must not wait for it.
    struct Stuck;

    impl Write for Stuck {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            std::thread::park();
            Ok(0)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_stderr_holds_at_most_queue_bytes() {
        let sink = LogSink::spawn(Stuck).unwrap();
        let big = vec![b'x'; 1 << 20];
        for _ in 0..64 {
            sink.log(&big);
        }
        // One line may be in the writer's hands; the rest wait within the byte bound.
        assert!(sink.queued.load(Ordering::Relaxed) <= QUEUE_BYTES);
        assert!(sink.dropped() >= 64 - (QUEUE_BYTES >> 20) as u64 - 1);
    }

    #[test]
    fn a_stuck_stderr_never_blocks_the_logger() {
        let sink = LogSink::spawn(Stuck).unwrap();
        for _ in 0..(QUEUE_LINES * 2) {
            sink.log(b"line\n");
        }
        assert!(sink.dropped() >= QUEUE_LINES as u64 - 1);
        sink.flush(Duration::from_millis(10));
    }
}
