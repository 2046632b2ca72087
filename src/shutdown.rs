//! A shutdown signal cheap enough to check on every loop of every connection.
//!
//! Each connection waits on "new input, a push, a timer, or shutdown" every time it goes idle.
//! A general-purpose notifier takes a lock to register a waiter and another to remove it, on
//! every such wait. Here a listener registers its task's waker once; afterwards a check is an
//! atomic load and a pointer comparison, and the lock is taken again only if the waker changes
//! or when the listener is dropped.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

#[derive(Debug, Default)]
struct Inner {
    triggered: AtomicBool,
    next_id: AtomicU64,
    wakers: Mutex<HashMap<u64, Waker>>,
}

/// The sending side: [`ShutdownSignal::trigger`] wakes every listener.
#[derive(Clone, Debug, Default)]
pub struct ShutdownSignal {
    inner: Arc<Inner>,
}

impl ShutdownSignal {
    /// A signal that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires the signal: every listener, present and future, resolves.
    pub fn trigger(&self) {
        self.inner.triggered.store(true, Ordering::Release);
        let wakers = std::mem::take(&mut *self.lock());
        for waker in wakers.into_values() {
            waker.wake();
        }
    }

    /// Whether the signal has fired.
    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.load(Ordering::Acquire)
    }

    /// A future that resolves once the signal fires. It can be polled again after resolving
    /// (it stays resolved), and polled through `&mut` in a loop without being recreated.
    pub fn listen(&self) -> ShutdownListener {
        ShutdownListener {
            inner: self.inner.clone(),
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            registered: None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waker>> {
        // The map holds only wakers: a panic elsewhere cannot leave it inconsistent.
        self.inner
            .wakers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Resolves when its [`ShutdownSignal`] fires.
#[derive(Debug)]
pub struct ShutdownListener {
    inner: Arc<Inner>,
    id: u64,
    registered: Option<Waker>,
}

impl ShutdownListener {
    /// Whether the signal has fired.
    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.load(Ordering::Acquire)
    }

    fn wakers(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waker>> {
        self.inner
            .wakers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Future for ShutdownListener {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_triggered() {
            return Poll::Ready(());
        }
        let stale = !matches!(&self.registered, Some(w) if w.will_wake(cx.waker()));
        if stale {
            let waker = cx.waker().clone();
            self.wakers().insert(self.id, waker.clone());
            self.registered = Some(waker);
            // The signal may have fired between the check above and the registration, after
            // `trigger` had already taken the wakers: look again.
            if self.is_triggered() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}

impl Drop for ShutdownListener {
    fn drop(&mut self) {
        if self.registered.is_some() {
            self.wakers().remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn listeners_resolve_when_triggered_and_stay_resolved() {
        let signal = ShutdownSignal::new();
        let mut listeners: Vec<_> = (0..10).map(|_| signal.listen()).collect();
        let waiting = tokio::spawn(async move {
            for l in &mut listeners {
                l.await;
            }
            // Resolved listeners resolve again at once.
            for l in &mut listeners {
                l.await;
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        signal.trigger();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("listeners wake")
            .unwrap();
        // A listener made after the trigger is resolved from the start.
        signal.listen().await;
    }

    #[tokio::test]
    async fn a_listener_polled_many_times_registers_once_and_unregisters_on_drop() {
        let signal = ShutdownSignal::new();
        let mut listener = signal.listen();
        for _ in 0..100 {
            let pending = tokio::time::timeout(Duration::from_millis(1), &mut listener).await;
            assert!(pending.is_err());
        }
        assert_eq!(signal.lock().len(), 1);
        drop(listener);
        assert!(signal.lock().is_empty());
    }
}
