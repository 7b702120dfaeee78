//! The periodic refill task: tollgate's `time.Ticker`.
//!
//! Every `refill_interval` it calls [`Registry::refill`], which moves the
//! refill clock by the real time elapsed since the previous tick, so a
//! tick that comes late (a busy runtime, a paused VM) still adds every
//! token that was owed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;

use super::Registry;
use crate::shutdown::Ticks;

/// Runs the refill tick until `shutdown` completes.
///
/// Missed ticks are **skipped**, not burst: one late tick already adds all
/// the time that passed, so firing the missed ones back to back would only
/// burn CPU on sweeps that add nothing, and `Delay` would shift the
/// schedule for no gain.
pub async fn run(
    registry: Arc<Registry>,
    interval: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    run_timed(registry, interval, metrics::Histogram::noop(), shutdown).await;
}

/// [`run`], recording each sweep's duration in `sweeps`.
pub async fn run_timed(
    registry: Arc<Registry>,
    interval: Duration,
    sweeps: metrics::Histogram,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let mut ticks = Ticks::every(interval, MissedTickBehavior::Skip, shutdown);
    while ticks.next().await {
        let started = std::time::Instant::now();
        let report = registry.refill();
        sweeps.record(started.elapsed().as_secs_f64());
        if report.evicted > 0 {
            tracing::debug!(
                evicted = report.evicted,
                scanned = report.scanned,
                "evicted idle buckets"
            );
        }
    }
}
