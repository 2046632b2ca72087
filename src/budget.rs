//! The server-wide memory budget for buffered frames and replies (`--max-memory`).
//!
//! Every connection's read and write buffers are charged to one shared counter. A read that
//! could take the total over the budget is not made: the connection is paused (back-pressure;
//! the kernel's socket buffer and then the client's sends fill up) until other connections give
//! memory back. Reads take their charge at the moment they read, never while waiting, so idle
//! connections hold nothing. Replies are charged when they are encoded and may overdraw the
//! budget briefly; the overdraft pauses reading everywhere until it is repaid, which bounds it.
//!
//! Large frames may fill only half of the budget: the other half is kept for between-frames
//! reads and for replies (an echoed frame exists twice while its reply is encoded), so a crowd
//! of clients sending 8 MiB frames slows itself down while everyone sending ordinary messages
//! is still served, and the process stays within the budget.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Default `--max-memory`: 256 MiB.
pub const DEFAULT_MAX_MEMORY: usize = 256 * 1024 * 1024;

/// Wake paused connections only once at least this much is free: less would not let a
/// between-frames read (up to 64 KiB) go ahead anyway.
const WAKE_THRESHOLD: usize = 64 * 1024;

/// A shared byte budget.
#[derive(Debug)]
pub struct MemoryBudget {
    max: usize,
    used: AtomicUsize,
    waiting: AtomicUsize,
    released: Notify,
}

impl MemoryBudget {
    /// A budget of `max` bytes.
    pub fn new(max: usize) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            max,
            used: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            released: Notify::new(),
        })
    }

    /// The budget in bytes.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Bytes charged right now (may exceed [`MemoryBudget::max`] briefly; see the module docs).
    pub fn used(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }

    /// Takes `n` bytes if that keeps the total within the budget.
    pub fn try_take(&self, n: usize) -> bool {
        self.take_within(n, self.max)
    }

    /// Takes `n` bytes for a large frame if that keeps the total within half of the budget
    /// (see the module docs).
    pub fn try_take_large(&self, n: usize) -> bool {
        self.take_within(n, self.max / 2)
    }

    fn take_within(&self, n: usize, limit: usize) -> bool {
        if n == 0 {
            return true;
        }
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(n).filter(|&total| total <= limit)
            })
            .is_ok()
    }

    /// Takes `n` bytes whatever the total: memory that already exists must be counted.
    pub fn take_anyway(&self, n: usize) {
        if n > 0 {
            self.used.fetch_add(n, Ordering::SeqCst);
        }
    }

    /// Gives `n` bytes back and wakes paused connections if that frees enough.
    pub fn give_back(&self, n: usize) {
        if n == 0 {
            return;
        }
        let before = self.used.fetch_sub(n, Ordering::SeqCst);
        let after = before.saturating_sub(n);
        if self.waiting.load(Ordering::SeqCst) > 0
            && self.max.saturating_sub(after) >= WAKE_THRESHOLD
        {
            self.released.notify_waiters();
        }
    }

    /// Whether `n` more bytes would fit now (in the large-frame share if `large`).
    pub fn has_room(&self, n: usize, large: bool) -> bool {
        let limit = if large { self.max / 2 } else { self.max };
        self.used().saturating_add(n) <= limit
    }

    /// Resolves once `need` bytes may fit (in the large-frame share if `large`): at once if
    /// they fit now, else when memory is given back. The caller then tries again.
    pub async fn released(&self, need: usize, large: bool) {
        let notified = self.released.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = WaitGuard(&self.waiting);
        // Checked after registering: a release between the failed take and here is not lost.
        if self.has_room(need, large) {
            return;
        }
        notified.await;
    }
}

struct WaitGuard<'a>(&'a AtomicUsize);

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What one connection holds of a [`MemoryBudget`]; given back when dropped.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<MemoryBudget>,
    held: usize,
}

impl Charge {
    /// A connection's charge, holding nothing yet.
    pub fn new(budget: Arc<MemoryBudget>) -> Charge {
        Charge { budget, held: 0 }
    }

    /// The budget charged.
    pub fn budget(&self) -> &Arc<MemoryBudget> {
        &self.budget
    }

    /// Bytes this connection holds.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Takes `extra` more bytes if the budget allows.
    pub fn try_grow(&mut self, extra: usize) -> bool {
        let ok = self.budget.try_take(extra);
        if ok {
            self.held += extra;
        }
        ok
    }

    /// Takes `extra` more bytes for a frame spanning several reads, within the share of the
    /// budget that large frames may use.
    pub fn try_grow_large(&mut self, extra: usize) -> bool {
        let ok = self.budget.try_take_large(extra);
        if ok {
            self.held += extra;
        }
        ok
    }

    /// Adds `bytes` to the charge, whatever the budget says: memory that already exists.
    pub fn add(&mut self, bytes: usize) {
        self.budget.take_anyway(bytes);
        self.held += bytes;
    }

    /// Makes the charge exactly `bytes`, taking or giving back the difference.
    pub fn settle(&mut self, bytes: usize) {
        if bytes > self.held {
            self.budget.take_anyway(bytes - self.held);
        } else {
            self.budget.give_back(self.held - bytes);
        }
        self.held = bytes;
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give_back(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn takes_stay_within_the_budget_and_overdrafts_are_counted() {
        let budget = MemoryBudget::new(100);
        assert!(budget.try_take(60));
        assert!(!budget.try_take(41));
        assert!(budget.try_take(40));
        budget.take_anyway(10);
        assert_eq!(budget.used(), 110);
        assert!(!budget.try_take(1));
        budget.give_back(110);
        assert!(!budget.try_take_large(51));
        assert!(budget.try_take_large(50));
        assert!(budget.try_take(50));
        budget.give_back(100);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_charge_settles_to_what_it_holds_and_returns_it_on_drop() {
        let budget = MemoryBudget::new(1000);
        let mut a = Charge::new(budget.clone());
        assert!(a.try_grow(300));
        a.settle(120);
        assert_eq!(budget.used(), 120);
        let mut b = Charge::new(budget.clone());
        assert!(!b.try_grow(900));
        assert!(b.try_grow(880));
        drop(a);
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn a_paused_waiter_wakes_when_memory_comes_back() {
        let budget = MemoryBudget::new(128 * 1024);
        let mut hog = Charge::new(budget.clone());
        assert!(hog.try_grow(128 * 1024));
        let waiter = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.released(64 * 1024, false).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(hog);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
    }
}
