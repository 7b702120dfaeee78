//! Re-reading what can change without a restart: on SIGHUP, or in the
//! process through [`Reloader::reload`].
//!
//! Today that is the TLS certificates. The config file (issue 14) is to
//! join them here: the signal task stays the one place a SIGHUP goes, and
//! [`Reloader`] the one thing that knows what can be reloaded.

use std::sync::Arc;

use futures_util::StreamExt;
use signal_hook::consts::SIGHUP;
use signal_hook_tokio::Signals;

use crate::shutdown::Signal;
use crate::tls::server::{CertError, Certificates};

/// Everything a reload re-reads; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Reloader {
    certificates: Option<Arc<Certificates>>,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// A certificate or key file could not be used; the certificates in
    /// use stay, all of them.
    #[error("TLS certificates not reloaded, the ones in use stay: {0}")]
    Certificates(#[source] CertError),
    /// The reload task did not finish (the runtime is shutting down).
    #[error("reload interrupted: {0}")]
    Interrupted(#[source] tokio::task::JoinError),
}

/// What a reload changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Certificates now served (0: no TLS listener).
    pub certificates: usize,
}

impl Reloader {
    /// A reloader of the TLS listener's `certificates`, if there is one.
    pub fn new(certificates: Option<Arc<Certificates>>) -> Self {
        Self { certificates }
    }

    /// Reads everything again and switches to it. Files are read on a
    /// blocking thread: a slow disk must not stall a proxy thread.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.reload_now())
            .await
            .map_err(ReloadError::Interrupted)?
    }

    fn reload_now(&self) -> Result<Reloaded, ReloadError> {
        let mut reloaded = Reloaded::default();
        if let Some(certificates) = &self.certificates {
            reloaded.certificates = certificates.reload().map_err(ReloadError::Certificates)?;
        }
        Ok(reloaded)
    }

    /// [`Reloader::reload`], with the outcome in the log.
    pub async fn reload_logged(&self) -> Result<Reloaded, ReloadError> {
        let result = self.reload().await;
        match &result {
            Ok(r) => tracing::info!(certificates = r.certificates, "reloaded"),
            Err(e) => tracing::error!(error = %e, "reload failed"),
        }
        result
    }
}

/// Catches SIGHUP from now on. Installed before any port opens: SIGHUP's
/// default action ends the process, and a reload sent early must not.
pub fn sighup() -> std::io::Result<Signals> {
    Signals::new([SIGHUP])
}

/// Reloads on every SIGHUP until `stop` completes.
pub async fn on_sighup(mut signals: Signals, reloader: Reloader, stop: Signal) {
    let stop = stop.wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            biased;
            () = &mut stop => break,
            signal = signals.next() => {
                if signal.is_none() {
                    break;
                }
                tracing::info!("SIGHUP: reloading");
                let _ = reloader.reload_logged().await;
            }
        }
    }
    signals.handle().close();
}
