//! Re-reading the configuration without a restart: on SIGHUP, on
//! `POST /reload`, or in the process through [`Reloader::reload`].
//!
//! A reload reads the config file the process was started with and
//! validates it whole, as `tollgate check` does. An invalid file changes
//! nothing: every problem is logged and returned. A valid one is compared
//! with the running config ([`diff`]) and each changed key is either
//! applied in place or reported as needing a restart; no change is
//! silently ignored. Reloads are serialised (one lock around the whole
//! reload), so a SIGHUP and a `POST /reload` arriving together run one
//! after the other, each against the config the other left.
//!
//! The TLS certificate files are read again on every reload, changed
//! config or not, so a renewed certificate under the same file name is
//! picked up by a SIGHUP as it always was. The signal task stays the one
//! place a SIGHUP goes, and [`Reloader`] the one thing that knows what can
//! be reloaded.

mod diff;

use std::path::PathBuf;
use std::sync::Arc;

use futures_util::StreamExt;
use serde::Serialize;
use signal_hook::consts::SIGHUP;
use signal_hook_tokio::Signals;

use crate::config::{Config, ConfigError};
use crate::events::{EventKind, Events};
use crate::limiter::Registry;
use crate::proxy::identity::Identifier;
use crate::proxy::{Live, Proxy, ProxySettings};
use crate::routing::pools::{PoolSet, PoolUse};
use crate::routing::{Routing, StatsByRoute};
use crate::shutdown::Signal;
use crate::tls::server::{CertError, CertificatePaths, Certificates};
use diff::Part;

/// Everything a reload re-reads and changes; cheap to clone (clones share
/// the lock that serialises reloads).
#[derive(Debug, Clone, Default)]
pub struct Reloader {
    certificates: Option<Arc<Certificates>>,
    /// Set while a file read that timed out has not returned.
    reading: Arc<std::sync::atomic::AtomicBool>,
    file: Option<Arc<FileReload>>,
    /// Where each reload's outcome is recorded for the status page.
    events: Option<Arc<Events>>,
    /// Where each reload's outcome is counted.
    metrics: crate::telemetry::Metrics,
}

/// The config file, the config running now (what was started, with each
/// reload's in-place changes made; never a key that waits for a restart),
/// and what a change is applied to.
#[derive(Debug)]
struct FileReload {
    path: PathBuf,
    /// Held for a whole reload: reloads run one at a time.
    running: tokio::sync::Mutex<Config>,
    targets: Targets,
}

/// The running parts a reload changes in place.
#[derive(Debug, Clone)]
pub struct Targets {
    /// Default limits.
    pub registry: Arc<Registry>,
    /// Identification, proxy timeouts, `rate_limit.enabled`, the routes.
    pub proxy: Arc<Proxy>,
    /// The pools: backends, strategies, health checks.
    pub pools: Arc<PoolSet>,
    /// The routes' counts, kept for routes that stay.
    pub route_stats: Arc<StatsByRoute>,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The config file is invalid (or unreadable); the running
    /// configuration stays.
    #[error("{}", one_line(.0))]
    Invalid(#[source] ConfigError),
    /// A certificate or key file could not be used; the certificates in
    /// use stay, all of them, and nothing else changed.
    #[error("TLS certificates not reloaded, the ones in use stay: {0}")]
    Certificates(#[source] CertError),
    /// The files were not read within [`FILE_READ_TIMEOUT`] (a FIFO, a
    /// hung network mount); nothing changed. The read goes on in the
    /// background and is not waited for, by this reload or by a shutdown.
    #[error(
        "config or certificate files not read within {}s (a FIFO, or a hung \
         mount?); nothing changed",
        FILE_READ_TIMEOUT.as_secs()
    )]
    ReadTimeout,
    /// The files of an earlier reload are still being read (it timed
    /// out); a new read of the same paths would hang the same way.
    #[error(
        "an earlier reload's read of the config or certificate files has not \
         returned yet; nothing changed"
    )]
    StillReading,
    /// The thread that reads the files could not be started, or ended
    /// without an answer.
    #[error("reload interrupted: {0}")]
    Interrupted(String),
}

/// A [`ConfigError`] on one log line.
fn one_line(e: &ConfigError) -> String {
    let problems: Vec<String> = e.problems.iter().map(ToString::to_string).collect();
    format!(
        "invalid configuration {}, the running one stays: {}",
        e.path.display(),
        problems.join("; ")
    )
}

impl ReloadError {
    /// The metric label of this outcome.
    fn result(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid",
            Self::Certificates(_)
            | Self::Interrupted(_)
            | Self::ReadTimeout
            | Self::StillReading => "failed",
        }
    }
}

/// What a reload changed: the answer of `POST /reload`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Reloaded {
    /// Config keys (field paths) that changed and now apply.
    pub applied: Vec<String>,
    /// Config keys that changed but apply only after a restart.
    pub restart_required: Vec<String>,
    /// Certificates now served (0: no TLS listener).
    #[serde(skip)]
    pub certificates: usize,
}

impl Reloader {
    /// A reloader of the TLS listener's `certificates` only, if there is
    /// one (a process started from a [`Config`] built in code).
    pub fn new(certificates: Option<Arc<Certificates>>) -> Self {
        Self {
            certificates,
            reading: Arc::default(),
            file: None,
            events: None,
            metrics: crate::telemetry::Metrics::default(),
        }
    }

    /// The same reloader, counting outcomes in `metrics`.
    pub fn with_metrics(mut self, metrics: crate::telemetry::Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The same reloader, recording each outcome of
    /// [`Reloader::reload_logged`] in `events` (the status page's list).
    pub fn with_events(mut self, events: Arc<Events>) -> Self {
        self.events = Some(events);
        self
    }

    /// The same reloader, re-reading the config file at `path` too;
    /// `running` is the config the process started with, and `targets`
    /// what changes are applied to.
    pub fn with_file(mut self, path: PathBuf, running: Config, targets: Targets) -> Self {
        self.file = Some(Arc::new(FileReload {
            path,
            running: tokio::sync::Mutex::new(running),
            targets,
        }));
        self
    }

    /// Reads everything again and switches to it. Files are read on a
    /// blocking thread: a slow disk must not stall a proxy thread.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let Some(file) = &self.file else {
            let certificates = self.certificates.clone();
            return self
                .read_files(move || reread_certificates(certificates.as_deref(), None))
                .await;
        };
        let mut running = file.running.lock().await;
        let path = file.path.clone();
        let new = self
            .read_files(move || Config::load(&path).map_err(ReloadError::Invalid))
            .await?;
        let changes = diff::diff(&running, &new);
        let mut reloaded = Reloaded::default();
        // Certificates first: the one step that can still fail, and a
        // failure must leave everything as it was.
        let certificates = self.certificates.clone();
        let paths = changes
            .touches(Part::Certificates)
            .then_some(new.server.tls.as_ref())
            .flatten()
            .map(|tls| {
                tls.certificates
                    .iter()
                    .map(CertificatePaths::from)
                    .collect()
            });
        let certs = self
            .read_files(move || reread_certificates(certificates.as_deref(), paths))
            .await?;
        reloaded.certificates = certs.certificates;
        let log_switched = changes.touches(Part::Log) && apply_log(&new);
        for change in &changes.keys {
            match change.part {
                Some(Part::Log) if !log_switched => {
                    reloaded.restart_required.push(change.key.clone());
                }
                Some(_) => reloaded.applied.push(change.key.clone()),
                None => reloaded.restart_required.push(change.key.clone()),
            }
        }
        // Renewed files under the same names: listed once, first, where
        // the diff lists a new list of files (TLS keys come first).
        if certs.applied.iter().any(|k| k == CERTIFICATES_KEY)
            && !changes.touches(Part::Certificates)
        {
            reloaded.applied.insert(0, CERTIFICATES_KEY.to_owned());
        }
        // What runs from now on: the new value of each key applied in
        // place, the old one of each that waits for a restart. It is what
        // the next reload compares with (so it reports that restart
        // again) and what the running parts are rebuilt from (so a key
        // reported as waiting does not slip in with its section).
        let mut in_force = changes.running.clone();
        if !log_switched {
            in_force.log.clone_from(&running.log);
        }
        file.apply(&changes, &in_force).await;
        *running = in_force;
        Ok(reloaded)
    }

    /// [`Reloader::reload`], with the outcome in the log and the metric.
    pub async fn reload_logged(&self) -> Result<Reloaded, ReloadError> {
        let result = self.reload().await;
        match &result {
            Ok(r) => {
                self.metrics.config_reload("applied");
                if !r.restart_required.is_empty() {
                    tracing::warn!(
                        restart_required = %r.restart_required.join(", "),
                        "config reload: these changes take effect only after a restart"
                    );
                }
                tracing::info!(
                    applied = %r.applied.join(", "),
                    restart_required = %r.restart_required.join(", "),
                    certificates = r.certificates,
                    "reloaded"
                );
                self.note(EventKind::Reload, || {
                    let list = |keys: &[String]| {
                        if keys.is_empty() {
                            "nothing".to_owned()
                        } else {
                            keys.join(", ")
                        }
                    };
                    format!(
                        "applied: {}; restart required: {}",
                        list(&r.applied),
                        list(&r.restart_required)
                    )
                });
            }
            Err(e) => {
                self.metrics.config_reload(e.result());
                tracing::error!(error = %e, "reload failed");
                self.note(EventKind::ReloadFailed, || e.to_string());
            }
        }
        result
    }
}

impl Reloader {
    fn note(&self, kind: EventKind, message: impl FnOnce() -> String) {
        if let Some(events) = &self.events {
            events.push(kind, None, message());
        }
    }
}

impl FileReload {
    /// Applies every change that can be made in place (the certificates
    /// are done already). Nothing here can fail. Pools and routes change
    /// together with the rest of the request path's settings, in one
    /// swap: a request runs on the old routes and pools or the new ones,
    /// never a mix.
    async fn apply(&self, changes: &diff::Changes, new: &Config) {
        let t = &self.targets;
        if changes.touches(Part::DefaultLimits) {
            let moved = t.registry.set_default_limits(new.rate_limit.default);
            tracing::debug!(clients = moved, "clients moved to the new default limits");
        }
        if [Part::Proxy, Part::Backends, Part::Health, Part::Routing]
            .into_iter()
            .any(|p| changes.touches(p))
        {
            let routing = routing_for(new, &t.pools, &t.route_stats).await;
            let rl = &new.rate_limit;
            let before = t.proxy.reconfigure(
                Live::new(
                    Identifier::from(rl),
                    ProxySettings::from(new),
                    rl.enabled,
                    routing,
                )
                .with_dry_run(rl.dry_run),
            );
            let retired = t.pools.detach(&new.pool_specs());
            if !retired.is_empty() {
                tokio::spawn(retire_when_unused(before, retired));
            }
        }
        if changes.touches(Part::Rules) {
            t.proxy.replace_rules(&new.rate_limit.rule_specs());
        }
    }
}

/// How long a removed pool keeps serving requests routed to it before the
/// reload that removed it. Past this a request still holding the old
/// routes (one whose backend has not answered its head yet) that retries
/// finds no backend.
const RETIRE_AFTER_AT_MOST: std::time::Duration = std::time::Duration::from_secs(60);

/// Stops removed pools once no request still holds the routes that
/// reached them: a request keeps the settings it was routed with
/// (`before`) until it has its answer, so a request routed just before
/// the swap can still pick from its pool after it.
async fn retire_when_unused(before: Arc<Live>, retired: crate::routing::pools::Retired) {
    released(before, RETIRE_AFTER_AT_MOST).await;
    retired.stop().await;
}

/// Returns once `snapshot` is the last holder of what it points to, or
/// after `bound`. Polled: the count drops as requests end, and nothing
/// signals the last one.
async fn released<T>(snapshot: Arc<T>, bound: std::time::Duration) {
    let deadline = tokio::time::Instant::now() + bound;
    while Arc::strong_count(&snapshot) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The pools `config` describes, made live in `pools` (new ones checked
/// once first, kept ones changed in place; removed ones are detached by the
/// caller once the new routes are in force), and
/// the routes to them. Start-up and every reload build it this way.
pub async fn routing_for(config: &Config, pools: &PoolSet, stats: &StatsByRoute) -> Arc<Routing> {
    let specs = config.pool_specs();
    let live = pools.apply(&specs, config.is_routed()).await;
    let uses = specs
        .iter()
        .filter_map(|s| {
            let pool = live.get(&s.name)?.clone();
            let use_ = PoolUse {
                name: Arc::from(s.name.as_str()),
                pool,
                strategy: s.strategy,
                timeouts: s.timeouts,
                retries: s.retries,
                protocol: s.protocol,
                traffic: crate::routing::traffic::Traffic::new(&s.name, s.strategy, &s.traffic),
                idle_connections: s.idle_connections,
            };
            Some((s.name.clone(), Arc::new(use_)))
        })
        .collect();
    Arc::new(Routing::compile(
        config.route_specs(),
        uses,
        stats,
        config.is_routed(),
    ))
}

/// Switches the log level and format; `false` if this process's log
/// output cannot be switched (it was not set up by tollgate).
fn apply_log(new: &Config) -> bool {
    match crate::logging::apply(&new.log) {
        Ok(crate::logging::LevelSource::Config) => true,
        Ok(crate::logging::LevelSource::Environment) => {
            tracing::warn!("RUST_LOG is set: it keeps deciding the log level over log.level");
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "log settings not reloaded");
            false
        }
    }
}

/// The config key a certificate swap is reported under in `applied`.
const CERTIFICATES_KEY: &str = "server.tls.certificates";

/// Reads the certificate files again (`paths`: a new list of them).
fn reread_certificates(
    certificates: Option<&Certificates>,
    paths: Option<Vec<CertificatePaths>>,
) -> Result<Reloaded, ReloadError> {
    let mut reloaded = Reloaded::default();
    if let Some(certificates) = certificates {
        let swapped = match paths {
            Some(paths) => certificates.replace(paths),
            None => certificates.reload(),
        }
        .map_err(ReloadError::Certificates)?;
        reloaded.certificates = swapped.served;
        // New certificates under the same file names are a change the
        // reload applied, as a new list of files is.
        if swapped.changed {
            reloaded.applied.push(CERTIFICATES_KEY.to_owned());
        }
    }
    Ok(reloaded)
}

/// Longest a reload waits for its files (the config and the certificates
/// it names): a local file takes milliseconds; one that takes this long
/// is a FIFO or a hung mount, and would hold the reload lock, and every
/// reload queued behind it, for as long as it blocks.
pub const FILE_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl Reloader {
    /// Runs file work on a thread of its own, waiting at most
    /// [`FILE_READ_TIMEOUT`]. Not the runtime's blocking pool: a read
    /// that never returns would keep a pool thread, and the runtime's
    /// shutdown waits for those, so the process would outlive its drain.
    /// A detached thread is given up on instead; until it returns, later
    /// reloads are refused at once rather than starting another one.
    async fn read_files<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, ReloadError> + Send + 'static,
    ) -> Result<T, ReloadError> {
        use std::sync::atomic::Ordering;
        if self.reading.swap(true, Ordering::AcqRel) {
            return Err(ReloadError::StillReading);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let reading = self.reading.clone();
        let spawned = std::thread::Builder::new()
            .name("reload-files".into())
            .spawn(move || {
                // Cleared however the work ends, a panic included, and
                // before the answer goes: the reload that gets it may
                // be followed at once by another.
                let done = Cleared(reading);
                let result = work();
                drop(done);
                let _ = tx.send(result);
            });
        if let Err(e) = spawned {
            self.reading.store(false, Ordering::Release);
            return Err(ReloadError::Interrupted(e.to_string()));
        }
        match tokio::time::timeout(FILE_READ_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ReloadError::Interrupted(
                "the file reader ended without an answer".into(),
            )),
            Err(_) => Err(ReloadError::ReadTimeout),
        }
    }
}

/// Clears the "still reading" flag when dropped.
struct Cleared(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Cleared {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::Release);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_snapshot_is_released_when_its_last_request_ends_or_at_the_bound() {
        let snapshot = Arc::new(());
        let request = snapshot.clone();
        let start = tokio::time::Instant::now();
        let waiting = tokio::spawn(released(snapshot, Duration::from_secs(60)));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiting.is_finished(), "released while a request held it");
        drop(request);
        waiting.await.expect("no panic");
        let waited = start.elapsed();
        assert!(
            waited < Duration::from_millis(5_100),
            "took {waited:?} after the request ended"
        );

        let snapshot = Arc::new(());
        let _stuck = snapshot.clone();
        let start = tokio::time::Instant::now();
        released(snapshot, Duration::from_secs(60)).await;
        assert!(start.elapsed() >= Duration::from_secs(60));
    }
}
