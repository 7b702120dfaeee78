//! Connection limits per backend and the pool's queue for a free slot
//! (`max_connections`, `queue`): HAProxy's `maxconn` and `timeout queue`.
//!
//! A slot is a backend's [`InFlight`] guard, so a request holds it for as
//! long as it is counted in flight (its response body and an upgraded
//! tunnel included), and gives it back on every path out. Taking a slot is
//! a compare-and-swap on the backend's in-flight count below the limit; no
//! lock while the queue is empty. When no backend the strategy may choose
//! has a free slot, the request waits in the pool's FIFO queue; a slot
//! given back while requests wait goes to the oldest of them, handed over
//! without passing through the count, so a newcomer cannot overtake. A
//! waiter that goes away (client disconnected, timeout) takes itself out
//! of the queue when its future is dropped, so its place frees at once.
//!
//! Correctness of the hand-over rests on two sequentially consistent
//! orders: a waiter counts itself in `queued` before it looks for a free
//! slot one last time, and a slot is given back to the count before
//! `queued` is read. Whichever comes second sees the other, so a slot is
//! never free while a request waits for it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;

use super::{Backend, InFlight, Pool};

/// The settings of a pool's limits, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Requests in flight per backend at most; 0: unlimited.
    pub max_connections: usize,
    /// Requests that may wait for a slot at once; more are refused.
    pub queue_size: usize,
    /// Longest wait for a slot.
    pub queue_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 0,
            queue_size: 1000,
            queue_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a request got no backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No backend takes requests.
    NoBackend,
    /// Every backend is at its limit and the queue is full.
    QueueFull,
    /// The request waited `queue.timeout` without a free slot.
    QueueTimeout,
}

/// What the status page shows of a pool's queue.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QueueStats {
    /// Per-backend limit (0: unlimited).
    pub max_connections: usize,
    /// Requests waiting now.
    pub depth: usize,
    /// Requests that waited and got a slot, since start.
    pub served: u64,
    /// Requests refused: queue full or waited too long, since start.
    pub refused: u64,
    /// Mean wait of the served ones, seconds (0 when none).
    pub mean_wait_secs: f64,
    /// Longest wait of a served one, seconds.
    pub max_wait_secs: f64,
}

/// One pool's limits and its queue.
#[derive(Debug)]
pub(super) struct Gate {
    max: AtomicUsize,
    size: AtomicUsize,
    timeout_ms: AtomicU64,
    /// Waiters in `waiters`; read without the lock by a slot given back.
    queued: AtomicUsize,
    waiters: Mutex<Waiters>,
    served: AtomicU64,
    refused: AtomicU64,
    wait_us_total: AtomicU64,
    wait_us_max: AtomicU64,
    /// `tollgate_queue_depth{pool}` and `tollgate_queue_wait_seconds{pool}`,
    /// registered when the pool first queues.
    instruments: OnceLock<(metrics::Gauge, metrics::Histogram)>,
}

#[derive(Debug, Default)]
struct Waiters {
    next_id: u64,
    line: VecDeque<(u64, oneshot::Sender<InFlight>)>,
}

impl Gate {
    pub(super) fn new(limits: Limits) -> Self {
        let gate = Self {
            max: AtomicUsize::new(0),
            size: AtomicUsize::new(0),
            timeout_ms: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
            waiters: Mutex::new(Waiters::default()),
            served: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            wait_us_total: AtomicU64::new(0),
            wait_us_max: AtomicU64::new(0),
            instruments: OnceLock::new(),
        };
        gate.set(limits);
        gate
    }

    pub(super) fn set(&self, limits: Limits) {
        self.max.store(limits.max_connections, Ordering::SeqCst);
        self.size.store(limits.queue_size, Ordering::Relaxed);
        let ms = u64::try_from(limits.queue_timeout.as_millis()).unwrap_or(u64::MAX);
        self.timeout_ms.store(ms, Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, Waiters> {
        // Nothing is left half-made under this lock by a panic: entries
        // are pushed and popped whole.
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot of `backend` was given back: if requests wait, the oldest
    /// gets one of `backend`'s free slots.
    pub(super) fn released(self: &Arc<Self>, backend: &Arc<Backend>) {
        if self.queued.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut unsent = Vec::new();
        {
            let mut w = self.lock();
            let max = self.max.load(Ordering::SeqCst);
            while !w.line.is_empty() && backend.takes_requests() {
                let Some(slot) = backend.try_start_request(max, self) else {
                    break;
                };
                if let Some(e) = self.hand_over(&mut w, slot) {
                    unsent.push(e);
                }
            }
        }
        // Dropped outside the lock: each gives its slot back again.
        drop(unsent);
    }

    /// Gives `slot` to the oldest waiter; the slot back if it was gone.
    fn hand_over(&self, w: &mut Waiters, slot: InFlight) -> Option<InFlight> {
        let (_, tx) = w.line.pop_front()?;
        self.counted(w);
        tx.send(slot).err()
    }

    /// Publishes the line's length (`queued`, the depth gauge); called
    /// under the lock after every change, so the last call wins.
    fn counted(&self, w: &Waiters) {
        self.queued.store(w.line.len(), Ordering::SeqCst);
        if let Some((depth, _)) = self.instruments.get() {
            depth.set(w.line.len() as f64);
        }
    }

    fn record_wait(&self, waited: Duration, served: bool) {
        if let Some((_, histogram)) = self.instruments.get() {
            histogram.record(waited.as_secs_f64());
        }
        if served {
            let us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
            self.served.fetch_add(1, Ordering::Relaxed);
            self.wait_us_total.fetch_add(us, Ordering::Relaxed);
            self.wait_us_max.fetch_max(us, Ordering::Relaxed);
        } else {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A place in the queue; dropping it leaves the queue.
struct Ticket<'a> {
    gate: &'a Gate,
    id: u64,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut w = self.gate.lock();
        if let Some(i) = w.line.iter().position(|(id, _)| *id == self.id) {
            w.line.remove(i);
            self.gate.counted(&w);
        }
    }
}

/// How the queue answered a newcomer.
enum Joined<'a> {
    Now(InFlight),
    Wait(Ticket<'a>, oneshot::Receiver<InFlight>),
    Full,
    NoBackend,
}

impl Pool {
    /// Uses these limits from the next request on; a larger limit lets
    /// waiting requests through at once.
    pub fn set_limits(&self, limits: Limits) {
        self.gate.set(limits);
        self.dispatch_waiting();
    }

    /// Hands the free slots of every backend that takes requests to the
    /// waiting requests, oldest first: called when the set of such
    /// backends changed (health, drain, a reload's or discovery's new
    /// backends) or the limit grew, since no slot given back would wake
    /// the waiters then.
    pub(super) fn dispatch_waiting(&self) {
        let max = self.gate.max.load(Ordering::SeqCst);
        if max == 0 || self.gate.queued.load(Ordering::SeqCst) == 0 {
            return;
        }
        let mut unsent = Vec::new();
        {
            let mut w = self.gate.lock();
            while !w.line.is_empty() {
                let Some(slot) = self.take_free(max, &[], None) else {
                    break;
                };
                if let Some(e) = self.gate.hand_over(&mut w, slot) {
                    unsent.push(e);
                }
            }
        }
        drop(unsent);
    }

    /// The pool's per-backend limit (0: unlimited).
    pub fn max_connections(&self) -> usize {
        self.gate.max.load(Ordering::Relaxed)
    }

    /// The queue's figures for the status page.
    pub fn queue_stats(&self) -> QueueStats {
        let g = &self.gate;
        let served = g.served.load(Ordering::Relaxed);
        let total = g.wait_us_total.load(Ordering::Relaxed) as f64 / 1e6;
        QueueStats {
            max_connections: g.max.load(Ordering::Relaxed),
            depth: g.queued.load(Ordering::Relaxed),
            served,
            refused: g.refused.load(Ordering::Relaxed),
            mean_wait_secs: if served == 0 {
                0.0
            } else {
                total / served as f64
            },
            max_wait_secs: g.wait_us_max.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }

    /// A backend for a new request and its slot: chosen by the strategy
    /// among the backends with a free slot, or the first slot given back
    /// when there is none (waiting at most `queue.timeout`, after those
    /// that came earlier).
    pub async fn admit(&self) -> Result<InFlight, Refused> {
        self.admit_for(None, None).await
    }

    /// [`Pool::admit`] for a request with an affinity key (`strategy:
    /// hash`) and perhaps a backend its sticky cookie names. The pinned
    /// backend is taken when it has a free slot and nobody waits; when it
    /// is full the request goes where the key or the strategy sends it,
    /// like any other (a sticky client never waits behind its backend
    /// while others are free).
    pub async fn admit_for(
        &self,
        key: Option<u64>,
        pinned: Option<&Arc<Backend>>,
    ) -> Result<InFlight, Refused> {
        let max = self.gate.max.load(Ordering::SeqCst);
        if max == 0 {
            if let Some(b) = pinned {
                return Ok(b.start_request());
            }
            return self
                .pick_for(key)
                .map(|b| b.start_request())
                .ok_or(Refused::NoBackend);
        }
        if self.gate.queued.load(Ordering::SeqCst) == 0 {
            if let Some(slot) = pinned.and_then(|b| b.try_start_request(max, &self.gate)) {
                return Ok(slot);
            }
            if let Some(slot) = self.take_free(max, &[], key) {
                return Ok(slot);
            }
        }
        let (ticket, rx) = match self.join(max) {
            Joined::Now(slot) => return Ok(slot),
            Joined::NoBackend => return Err(Refused::NoBackend),
            Joined::Full => {
                self.gate.refused.fetch_add(1, Ordering::Relaxed);
                return Err(Refused::QueueFull);
            }
            Joined::Wait(ticket, rx) => (ticket, rx),
        };
        let timeout = Duration::from_millis(self.gate.timeout_ms.load(Ordering::Relaxed));
        let since = tokio::time::Instant::now();
        let got = tokio::time::timeout(timeout, rx).await;
        drop(ticket);
        match got {
            Ok(Ok(slot)) => {
                self.gate.record_wait(since.elapsed(), true);
                Ok(slot)
            }
            // A sender leaves the line only by sending, or with the
            // ticket (dropped above): a closed channel cannot happen
            // while waiting, and would be a wait without a slot.
            Ok(Err(_)) | Err(_) => {
                self.gate.record_wait(since.elapsed(), false);
                Err(Refused::QueueTimeout)
            }
        }
    }

    /// A slot on a backend that takes requests and is none of `tried`,
    /// without waiting (a retry does not queue).
    pub fn admit_excluding(&self, tried: &[Arc<Backend>], key: Option<u64>) -> Option<InFlight> {
        let max = self.gate.max.load(Ordering::SeqCst);
        if max == 0 {
            return self
                .pick_excluding_for(tried, key)
                .map(|b| b.start_request());
        }
        self.take_free(max, tried, key)
    }

    /// A free slot chosen by the strategy among the backends below `max`
    /// (none of `tried`); a few tries when another request takes the
    /// chosen slot first.
    fn take_free(&self, max: usize, tried: &[Arc<Backend>], key: Option<u64>) -> Option<InFlight> {
        for _ in 0..4 {
            let m = self.members.load();
            let free: Vec<Arc<Backend>> = m
                .eligible
                .iter()
                .filter(|b| b.in_flight() < max && !tried.iter().any(|t| Arc::ptr_eq(t, b)))
                .cloned()
                .collect();
            if free.is_empty() {
                return None;
            }
            // Through the key's walk and slow start, as without a limit.
            let chosen = free.get(self.choose(&m, &free, key)?)?;
            if let Some(slot) = chosen.try_start_request(max, &self.gate) {
                return Some(slot);
            }
        }
        None
    }

    /// Joins the queue: first every free slot goes to those already
    /// waiting, then the newcomer takes one, waits, or is refused.
    fn join(&self, max: usize) -> Joined<'_> {
        let gate = &self.gate;
        gate.instruments.get_or_init(|| {
            let labels = [("pool", &*self.name)];
            (
                self.metrics.gauge(crate::telemetry::QUEUE_DEPTH, &labels),
                self.metrics
                    .histogram_with(crate::telemetry::QUEUE_WAIT, &labels),
            )
        });
        let mut unsent = Vec::new();
        let mut w = gate.lock();
        if self.members.load().eligible.is_empty() {
            return Joined::NoBackend;
        }
        // Counted before the last look for a free slot (module docs).
        let id = w.next_id;
        w.next_id += 1;
        let (tx, mut rx) = oneshot::channel();
        w.line.push_back((id, tx));
        gate.counted(&w);
        while !w.line.is_empty() {
            let Some(slot) = self.take_free(max, &[], None) else {
                break;
            };
            if let Some(e) = gate.hand_over(&mut w, slot) {
                unsent.push(e);
            }
        }
        let full = w.line.len() > gate.size.load(Ordering::Relaxed);
        drop(w);
        // Dropped outside the lock: each gives its slot back again.
        drop(unsent);
        let ticket = Ticket { gate, id };
        match rx.try_recv() {
            Ok(slot) => Joined::Now(slot),
            // Leaving the line is the ticket's drop.
            Err(_) if full => Joined::Full,
            Err(_) => Joined::Wait(ticket, rx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::{strategy_for, BackendUrl, StrategyName};

    fn limited(n: u16, max: usize, size: usize) -> Arc<Pool> {
        let urls = (0..n)
            .filter_map(|i| BackendUrl::parse(&format!("http://127.0.0.1:{}", 9000 + i)).ok());
        let pool = Pool::new(urls, strategy_for(StrategyName::RoundRobin));
        pool.set_limits(Limits {
            max_connections: max,
            queue_size: size,
            queue_timeout: Duration::from_secs(5),
        });
        Arc::new(pool)
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_get_slots_in_order_and_never_exceed_the_limit() {
        let pool = limited(2, 1, 10);
        let a = pool.admit().await.expect("free");
        let b = pool.admit().await.expect("free");
        assert!(!Arc::ptr_eq(a.backend(), b.backend()), "prefers a free one");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..3 {
            let (p, tx) = (pool.clone(), tx.clone());
            tokio::spawn(async move {
                let slot = p.admit().await;
                let _ = tx.send((i, slot));
            });
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.queue_stats().depth, 3);
        drop(a);
        let (first, slot) = rx.recv().await.expect("one");
        assert_eq!(first, 0, "the oldest waiter first");
        let slot = slot.expect("slot");
        assert!(pool.backends().iter().all(|b| b.in_flight() <= 1));
        drop(slot);
        assert_eq!(rx.recv().await.map(|(i, _)| i), Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_backend_back_in_rotation_takes_a_waiter_at_once() {
        let pool = limited(2, 1, 10);
        let b1 = pool.backends()[1].clone();
        assert!(pool.set_healthy(&b1, false));
        let _a = pool.admit().await.expect("free");
        let p = pool.clone();
        let waiting = tokio::spawn(async move { p.admit().await.map(|s| s.backend().clone()) });
        tokio::task::yield_now().await;
        assert_eq!(pool.queue_stats().depth, 1);
        assert!(pool.set_healthy(&b1, true));
        let got = waiting.await.expect("task").expect("slot");
        assert!(Arc::ptr_eq(&got, &b1), "the restored backend's slot");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_and_a_long_wait_are_refused() {
        let pool = limited(1, 1, 1);
        let _a = pool.admit().await.expect("free");
        let p = pool.clone();
        let waiting = tokio::spawn(async move { p.admit().await.map(|_| ()) });
        tokio::task::yield_now().await;
        assert_eq!(pool.admit().await.err(), Some(Refused::QueueFull));
        assert_eq!(waiting.await.ok(), Some(Err(Refused::QueueTimeout)));
        assert_eq!(pool.queue_stats().depth, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_dropped_leaves_the_queue_at_once() {
        let pool = limited(1, 1, 1);
        let a = pool.admit().await.expect("free");
        let p = pool.clone();
        let waiting = tokio::spawn(async move { p.admit().await.map(|_| ()) });
        tokio::task::yield_now().await;
        assert_eq!(pool.queue_stats().depth, 1);
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(pool.queue_stats().depth, 0);
        drop(a);
        assert_eq!(pool.backends()[0].in_flight(), 0, "no slot left taken");
    }
}
