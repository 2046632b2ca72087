//! A sleep with microsecond precision for open-loop load.
//!
//! tokio's timer rounds every deadline up to its next millisecond tick and a parked worker
//! wakes on a millisecond `epoll_wait` timeout, so a message scheduled at `t` leaves anywhere
//! up to 1–2 ms later. Open-loop latency counts from the scheduled time, so that lateness
//! lands in every sample: it hid a loopback round trip of tens of microseconds under a
//! 1.2 ms median and made the difference between two runs (what a relay adds) mostly noise.
//!
//! Here one thread keeps the deadlines of every waiting client in a heap and sleeps on a
//! condition variable until the earliest (a futex wait: high-resolution, with the thread's
//! timer slack lowered to 1 µs), then wakes the tasks that are due. The cost is one heap
//! insertion per message and one thread wakeup per due instant.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// A deadline waiting in the heap, with the task to wake.
struct Entry {
    at: Instant,
    seq: u64,
    waker: Waker,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// The deadlines and the condition the pacer thread sleeps on.
struct Pacer {
    heap: Mutex<(BinaryHeap<Reverse<Entry>>, u64)>,
    changed: Condvar,
}

/// The pacer, started on first use; `None` if its thread could not be started (then sleeps
/// fall back to tokio's timer).
fn pacer() -> Option<&'static Pacer> {
    static PACER: OnceLock<Option<&'static Pacer>> = OnceLock::new();
    *PACER.get_or_init(|| {
        let p: &'static Pacer = Box::leak(Box::new(Pacer {
            heap: Mutex::new((BinaryHeap::new(), 0)),
            changed: Condvar::new(),
        }));
        match std::thread::Builder::new()
            .name("sockit-pacer".into())
            .spawn(move || run(p))
        {
            Ok(_) => Some(p),
            Err(e) => {
                tracing::warn!(
                    "cannot start the pacing thread ({e}); open-loop timing will be coarse"
                );
                None
            }
        }
    })
}

/// The pacer thread: wakes every task whose deadline has passed, then sleeps until the next.
fn run(p: &'static Pacer) {
    // The default 50 µs timer slack would add itself to every wakeup.
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and affects only this thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
    let Ok(mut guard) = p.heap.lock() else {
        return;
    };
    loop {
        let now = Instant::now();
        let mut due = Vec::new();
        while guard.0.peek().is_some_and(|Reverse(e)| e.at <= now) {
            if let Some(Reverse(e)) = guard.0.pop() {
                due.push(e.waker);
            }
        }
        if !due.is_empty() {
            drop(guard);
            due.into_iter().for_each(Waker::wake);
            guard = match p.heap.lock() {
                Ok(g) => g,
                Err(_) => return,
            };
            continue;
        }
        let next = guard.0.peek().map(|Reverse(e)| e.at);
        guard = match next {
            Some(at) => match p
                .changed
                .wait_timeout(guard, at.saturating_duration_since(now))
            {
                Ok((g, _)) => g,
                Err(_) => return,
            },
            None => match p.changed.wait(guard) {
                Ok(g) => g,
                Err(_) => return,
            },
        };
    }
}

/// Completes at `deadline`, within microseconds rather than tokio's millisecond ticks.
pub fn sleep_until(deadline: Instant) -> SleepUntil {
    SleepUntil {
        deadline,
        registered: None,
        fallback: None,
    }
}

/// The future of [`sleep_until`].
#[derive(Debug)]
pub struct SleepUntil {
    deadline: Instant,
    /// The waker last handed to the pacer (so a re-poll with the same one adds nothing).
    registered: Option<Waker>,
    /// tokio's sleep, when the pacer thread is not available.
    fallback: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl SleepUntil {
    /// The instant this sleep ends.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

impl Future for SleepUntil {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if Instant::now() >= self.deadline {
            return Poll::Ready(());
        }
        if self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        let Some(p) = pacer() else {
            let deadline = self.deadline;
            return self
                .fallback
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())))
                .as_mut()
                .poll(cx);
        };
        let Ok(mut guard) = p.heap.lock() else {
            // A poisoned pacer cannot wake anyone: do not wait on it.
            return Poll::Ready(());
        };
        let earliest = guard.0.peek().map(|Reverse(e)| e.at);
        guard.1 += 1;
        let seq = guard.1;
        guard.0.push(Reverse(Entry {
            at: self.deadline,
            seq,
            waker: cx.waker().clone(),
        }));
        drop(guard);
        if earliest.is_none_or(|e| self.deadline < e) {
            p.changed.notify_one();
        }
        self.registered = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sleeps_never_end_before_their_deadline_in_any_order() {
        let start = Instant::now();
        let mut tasks = Vec::new();
        // Registered latest-first, so the heap has to reorder them.
        for k in (0..50u64).rev() {
            let at = start + Duration::from_micros(2_000 + k * 300);
            tasks.push(tokio::spawn(async move {
                sleep_until(at).await;
                (k, Instant::now() >= at)
            }));
        }
        for t in tasks {
            let (k, on_time) = t.await.unwrap();
            assert!(on_time, "sleep {k} ended before its deadline");
        }
        // A deadline already past completes at once.
        sleep_until(start).await;
    }

    #[tokio::test]
    async fn a_sleep_dropped_early_leaves_the_others_working() {
        let now = Instant::now();
        // Registered, then dropped: its stale entry wakes nobody who minds.
        let mut early = Box::pin(sleep_until(now + Duration::from_millis(5)));
        assert!(futures_util::poll!(early.as_mut()).is_pending());
        drop(early);
        let at = now + Duration::from_millis(10);
        sleep_until(at).await;
        assert!(Instant::now() >= at);
    }
}
