//! Shutdown: the signal that starts it, and how it reaches every task.
//!
//! SIGTERM or SIGINT starts a graceful shutdown; a second one exits at
//! once with status 130. Inside the process a [`Trigger`] flips a watch
//! channel and every [`Signal`] (listeners, background tasks) sees it.
//! [`Ticks`] is how every periodic background task waits: for its next
//! tick or for shutdown, whichever comes first.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::StreamExt;
use signal_hook::consts::{SIGINT, SIGTERM};
use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior};

/// Starts shutdown for every [`Signal`] made from it.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// Completes when shutdown starts.
#[derive(Debug, Clone)]
pub struct Signal(watch::Receiver<bool>);

/// A new trigger and its signal.
pub fn channel() -> (Trigger, Signal) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Signal(rx))
}

impl Trigger {
    /// Starts shutdown.
    pub fn fire(&self) {
        self.0.send_replace(true);
    }

    /// Another signal of this trigger.
    pub fn signal(&self) -> Signal {
        Signal(self.0.subscribe())
    }
}

impl Signal {
    /// Waits until shutdown starts (at once if it already has, or if the
    /// trigger is gone).
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|fired| *fired).await;
    }
}

/// Waits for SIGTERM or SIGINT, then arms the second-signal exit.
pub async fn os_signal() -> std::io::Result<()> {
    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT])?;
    let first = signals.next().await;
    tracing::info!(signal = ?first, "shutting down: draining in-flight requests");
    tokio::spawn(async move {
        if let Some(sig) = signals.next().await {
            tracing::warn!(signal = sig, "second signal: exiting at once");
            std::process::exit(130);
        }
    });
    Ok(())
}

/// The ticks of a periodic task until it is stopped: `while
/// ticks.next().await { work }` runs the work every `period` and returns
/// once `stop` completes (no new work starts after that).
pub struct Ticks {
    interval: Interval,
    stop: Pin<Box<dyn Future<Output = ()> + Send>>,
    stopped: bool,
}

impl std::fmt::Debug for Ticks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticks")
            .field("period", &self.interval.period())
            .field("stopped", &self.stopped)
            .finish()
    }
}

impl Ticks {
    /// Ticks every `period`, the first one a whole period from now (the
    /// work has usually just been done at start-up); `missed` says what a
    /// late tick does.
    pub fn every(
        period: Duration,
        missed: MissedTickBehavior,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> Self {
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        interval.set_missed_tick_behavior(missed);
        Self {
            interval,
            stop: Box::pin(stop),
            stopped: false,
        }
    }

    /// Waits for the next tick: `true`, or `false` once stopped.
    pub async fn next(&mut self) -> bool {
        let tick = self.interval.tick();
        or_stop(&mut self.stop, &mut self.stopped, tick)
            .await
            .is_some()
    }

    /// Runs `work` unless shutdown starts first; `false` if it did (the
    /// work is dropped unfinished).
    pub async fn unless_stopped(&mut self, work: impl Future<Output = ()>) -> bool {
        or_stop(&mut self.stop, &mut self.stopped, work)
            .await
            .is_some()
    }
}

/// `work`'s output, or `None` if `stop` completes first (or already did);
/// the stop wins a tie, so no work starts once shutdown has.
async fn or_stop<T>(
    stop: &mut Pin<Box<dyn Future<Output = ()> + Send>>,
    stopped: &mut bool,
    work: impl Future<Output = T>,
) -> Option<T> {
    if *stopped {
        return None;
    }
    tokio::select! {
        biased;
        () = stop => {
            *stopped = true;
            None
        }
        out = work => Some(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ticks_every_period_until_stopped() {
        let (trigger, signal) = channel();
        let mut ticks = Ticks::every(
            Duration::from_secs(1),
            MissedTickBehavior::Delay,
            signal.wait(),
        );
        let start = tokio::time::Instant::now();
        assert!(ticks.next().await);
        assert_eq!(start.elapsed(), Duration::from_secs(1), "not at once");
        assert!(ticks.next().await);
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        trigger.fire();
        assert!(!ticks.next().await);
        assert!(!ticks.next().await, "stays stopped");
        assert!(!ticks.unless_stopped(async {}).await);
    }
}
