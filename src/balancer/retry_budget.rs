//! A pool's retry budget (`retries.budget_percent`), as Linkerd's and
//! Envoy's: retries may be at most that share of the pool's requests over
//! the last 10 seconds, so a pool whose backends all fail gets its clients'
//! load plus that share, not once more per allowed attempt.
//!
//! The window is ten one-second buckets of two counters each, indexed by
//! the second since the pool's epoch; a bucket whose stamp is older than
//! the current second is reset by the first request that finds it so. All
//! atomics, no lock: a request on a pool with a budget adds one relaxed
//! increment, and a retry reads the ten buckets. The counts are
//! approximate by the few requests that race a bucket's reset, which the
//! percent cannot tell apart.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::Pool;

/// Seconds in the window.
const WINDOW: u64 = 10;

#[derive(Debug, Default)]
struct Bucket {
    /// Second (since the epoch) plus one whose counts these are; 0: none.
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// The budget's counts and its percent (0: no budget).
#[derive(Debug, Default)]
pub(super) struct RetryBudget {
    percent: AtomicU32,
    buckets: [Bucket; WINDOW as usize],
}

impl RetryBudget {
    /// The bucket of `second`, reset if it held an older one.
    fn bucket(&self, second: u64) -> &Bucket {
        let b = &self.buckets[(second % WINDOW) as usize];
        let stamp = second + 1;
        let seen = b.second.load(Ordering::Acquire);
        if seen != stamp
            && b.second
                .compare_exchange(seen, stamp, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            b.requests.store(0, Ordering::Relaxed);
            b.retries.store(0, Ordering::Relaxed);
        }
        b
    }

    /// Requests and retries over the window ending at `second`.
    fn totals(&self, second: u64) -> (u64, u64) {
        let oldest = (second + 1).saturating_sub(WINDOW - 1);
        self.buckets
            .iter()
            .filter(|b| b.second.load(Ordering::Acquire) >= oldest)
            .fold((0, 0), |(q, r), b| {
                (
                    q + b.requests.load(Ordering::Relaxed),
                    r + b.retries.load(Ordering::Relaxed),
                )
            })
    }
}

impl Pool {
    /// Uses this budget from now on (`None`: retries are limited by
    /// `retries.attempts` alone).
    pub fn set_retry_budget(&self, percent: Option<u32>) {
        self.budget
            .percent
            .store(percent.unwrap_or(0), Ordering::Relaxed);
    }

    /// Counts one client request to the pool in the budget's window (a
    /// no-op without a budget).
    pub fn count_request(&self) {
        if self.budget.percent.load(Ordering::Relaxed) == 0 {
            return;
        }
        let second = self.second();
        self.budget
            .bucket(second)
            .requests
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Whether one more retry fits the budget; if it does, it is counted.
    /// Always true without a budget.
    pub fn take_retry(&self) -> bool {
        let percent = u64::from(self.budget.percent.load(Ordering::Relaxed));
        if percent == 0 {
            return true;
        }
        let second = self.second();
        let (requests, retries) = self.budget.totals(second);
        // retries + 1 <= requests * percent / 100, in whole numbers.
        if (retries + 1) * 100 > requests * percent {
            return false;
        }
        self.budget
            .bucket(second)
            .retries
            .fetch_add(1, Ordering::Relaxed);
        true
    }

    fn second(&self) -> u64 {
        self.epoch.elapsed().as_secs()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::balancer::{strategy_for, BackendUrl, Pool, StrategyName};

    fn pool(percent: Option<u32>) -> Pool {
        let urls = BackendUrl::parse("http://127.0.0.1:9000").ok();
        let p = Pool::new(urls, strategy_for(StrategyName::RoundRobin));
        p.set_retry_budget(percent);
        p
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stay_within_their_share_of_the_window() {
        let p = pool(Some(20));
        for _ in 0..100 {
            p.count_request();
        }
        let allowed = (0..100).filter(|_| p.take_retry()).count();
        assert_eq!(allowed, 20);
        // Still inside the window: nothing new is allowed.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!p.take_retry());
        // Past it, the old requests and retries no longer count.
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(!p.take_retry(), "no requests in the window");
        for _ in 0..10 {
            p.count_request();
        }
        assert_eq!((0..10).filter(|_| p.take_retry()).count(), 2);
    }

    #[test]
    fn no_budget_allows_every_retry() {
        let p = pool(None);
        assert!((0..100).all(|_| p.take_retry()));
    }
}
