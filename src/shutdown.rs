//! Shutdown: the signal that starts it, and how it reaches every task.
//!
//! SIGTERM or SIGINT starts a graceful shutdown; a second one exits at
//! once with status 130. Inside the process a [`Trigger`] flips a watch
//! channel and every [`Signal`] (listeners, background tasks) sees it.

use futures_util::StreamExt;
use signal_hook::consts::{SIGINT, SIGTERM};
use tokio::sync::watch;

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
