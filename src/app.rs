//! Wiring: from a [`Config`] to running listeners and background tasks,
//! and back down again on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinSet;

use crate::admin::AdminState;
use crate::balancer::{strategy_for, Pool, Thresholds};
use crate::config::{Config, LogConfig, LogFormat};
use crate::health::Checker;
use crate::limiter::shared::SharedLimiter;
use crate::limiter::{self, Registry, RegistryConfig};
use crate::proxy::identity::Identifier;
use crate::proxy::server::{
    bind_reuseport, serve_per_core, ConnectionBudget, Drained, ServeOptions,
};
use crate::proxy::{Proxy, ProxySettings, SharedLimits};
use crate::shutdown::{self, Signal, Ticks, Trigger};
use crate::store::snapshot::{self, Snapshotter};
use crate::store::ClientStore;
use tokio::net::TcpListener;

/// Why tollgate could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address in the config.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The client table could not be opened or read.
    #[error("client table ({url}): {source}")]
    Store {
        /// `store.url`.
        url: String,
        /// Why.
        source: crate::store::StoreError,
    },
    /// `rate_limit.shared.redis_url` could not be used.
    #[error("shared rate limiter: {0}")]
    SharedLimiter(#[source] redis::RedisError),
    /// The roots for `https://` backends could not be loaded.
    #[error("https backends: {0}")]
    BackendTls(#[source] crate::tls::client::ClientTlsError),
}

/// A started tollgate: its listeners are open and its tasks running.
#[derive(Debug)]
pub struct Running {
    proxy_addr: SocketAddr,
    admin_addr: SocketAddr,
    proxy: Arc<Proxy>,
    registry: Arc<Registry>,
    store: Arc<dyn ClientStore>,
    trigger: Trigger,
    workers: Vec<std::thread::JoinHandle<Drained>>,
    /// Every background task (refill, health checks, snapshots, admin API,
    /// metrics upkeep, table reload); each stops on the shutdown signal.
    tasks: JoinSet<()>,
}

impl Running {
    /// The address the public listener is bound to.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// The address the admin API is bound to.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The client table.
    pub fn store(&self) -> &Arc<dyn ClientStore> {
        &self.store
    }

    /// The rate limiter (also when limiting is disabled, it exists).
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The backend pool.
    pub fn pool(&self) -> &Arc<Pool> {
        self.proxy.pool()
    }

    /// Stops accepting, drains, stops background tasks.
    pub async fn shutdown(self) -> Drained {
        self.trigger.fire();
        let workers = self.workers;
        let drained = tokio::task::spawn_blocking(move || {
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or(Drained::TimedOut))
                .fold(Drained::Clean, |all, one| {
                    if one == Drained::Clean {
                        all
                    } else {
                        one
                    }
                })
        })
        .await
        .unwrap_or(Drained::TimedOut);
        // The snapshot task writes a last snapshot when it sees the signal;
        // the admin API drains within drain_timeout.
        let mut tasks = self.tasks;
        while let Some(ended) = tasks.join_next().await {
            if let Err(e) = ended {
                tracing::error!(error = %e, "a background task failed");
            }
        }
        drained
    }
}

/// Opens the listeners and starts every task, in these steps: build the
/// limiter, build the backend pool (one health round), build the proxy,
/// bind the proxy listeners, open the store (restoring bucket levels),
/// bind the admin listener, spawn the background tasks, serve.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    raise_open_file_limit();
    // Before anything registers a metric handle.
    let metrics = crate::telemetry::install();
    let registry = Arc::new(Registry::new(RegistryConfig::from(&config.rate_limit)));
    // One TLS client configuration for the proxy and the health checks.
    let backend_tls = crate::tls::client::backend_client_config(
        config.proxy.ca_file.as_deref(),
        config
            .backends
            .iter()
            .any(|b| b.url.scheme == crate::balancer::Scheme::Https),
    )
    .map_err(StartError::BackendTls)?;
    let (pool, checker) = build_pool(config, &backend_tls).await;
    let (proxy, shared_limiter) = build_proxy(config, &registry, pool, backend_tls)?;
    let proxy = Arc::new(proxy);
    let (listeners, proxy_addr) = bind_proxy(config)?;
    let (store, restored) = open_store(config, &registry).await?;
    let bind_admin_error = |source| StartError::Bind {
        addr: config.admin.listen,
        source,
    };
    let admin_listener = TcpListener::bind(config.admin.listen)
        .await
        .map_err(bind_admin_error)?;
    let admin_addr = admin_listener.local_addr().map_err(bind_admin_error)?;

    let (trigger, signal) = shutdown::channel();
    let admin = AdminState::new(
        registry.clone(),
        store.clone(),
        proxy.pool().clone(),
        config.admin.token.clone(),
    )
    .with_metrics(metrics.clone())
    .with_shared_limiter(shared_limiter)
    .with_store_timeout(config.store.timeout)
    .with_body_read_timeout(config.admin.body_read_timeout);
    let mut tasks = JoinSet::new();
    if let Some(handle) = metrics {
        tasks.spawn(crate::telemetry::upkeep(
            handle,
            crate::telemetry::UPKEEP_INTERVAL,
            signal.clone().wait(),
        ));
    }
    tasks.spawn(crate::admin::server::serve(
        admin_listener,
        crate::admin::router(admin),
        config.admin.header_read_timeout,
        config.server.drain_timeout,
        signal.clone().wait(),
    ));
    tasks.spawn(run_snapshots(
        Snapshotter::new(registry.clone(), store.clone(), &restored.states),
        config.store.snapshot_interval,
        config.server.drain_timeout,
        signal.clone(),
    ));
    if crate::store::is_shared(&config.store.url) {
        tasks.spawn(crate::store::reload::run(
            crate::store::reload::TableSync::new(
                registry.clone(),
                store.clone(),
                &restored.clients,
            ),
            config.store.reload_interval,
            signal.clone().wait(),
        ));
    }
    tasks.spawn(checker.run(config.health_check.interval, signal.clone()));
    tasks.spawn(limiter::refill::run(
        registry.clone(),
        config.rate_limit.refill_interval,
        signal.clone().wait(),
    ));

    let options = ServeOptions::from(config);
    let max_connections = options.budget.as_ref().map(ConnectionBudget::limit);
    let threads = listeners.len();
    // One proxy (and so one backend connection pool) per proxy thread.
    let parts = proxy.clone();
    let workers = serve_per_core(
        listeners,
        move || {
            let proxy = Arc::new(parts.for_another_thread());
            move |req, peer| {
                let proxy = proxy.clone();
                async move { proxy.handle(req, peer).await }
            }
        },
        options,
        signal,
    )
    .map_err(|source| StartError::Bind {
        addr: config.server.listen,
        source,
    })?;

    log_started(
        config,
        proxy_addr,
        admin_addr,
        threads,
        max_connections,
        &proxy,
    );
    Ok(Running {
        proxy_addr,
        admin_addr,
        proxy,
        registry,
        store,
        trigger,
        workers,
        tasks,
    })
}

/// The backend pool, after one round of health checks: a dead backend at
/// start never gets traffic, a live one gets it from the first request.
async fn build_pool(
    config: &Config,
    backend_tls: &Arc<rustls::ClientConfig>,
) -> (Arc<Pool>, Checker) {
    let hc = &config.health_check;
    let pool = Arc::new(
        Pool::new(
            config.backends.iter().map(|b| b.url.clone()),
            strategy_for(config.balancing.strategy),
        )
        .with_thresholds(Thresholds::from(hc)),
    );
    let checker = Checker::new(pool.clone(), &hc.path, hc.timeout, backend_tls);
    checker.initial_round().await;
    (pool, checker)
}

/// The request path, with limits shared through Redis when configured.
fn build_proxy(
    config: &Config,
    registry: &Arc<Registry>,
    pool: Arc<Pool>,
    backend_tls: Arc<rustls::ClientConfig>,
) -> Result<(Proxy, Option<Arc<SharedLimiter>>), StartError> {
    let rl = &config.rate_limit;
    let identifier = Identifier::new(rl.api_key_header.0.clone(), rl.trusted_proxies.clone());
    let proxy = Proxy::new(
        rl.enabled.then(|| registry.clone()),
        pool,
        identifier,
        ProxySettings::from(config),
        backend_tls,
    );
    let (true, Some(url)) = (rl.enabled, &rl.shared.redis_url) else {
        return Ok((proxy, None));
    };
    let limiter = SharedLimiter::new(url, &rl.shared.key_prefix, rl.shared.timeout)
        .map_err(StartError::SharedLimiter)?;
    tracing::info!(on_failure = ?rl.shared.on_failure, "limits shared through Redis");
    let limiter = Arc::new(limiter);
    let proxy = proxy.with_shared_limits(SharedLimits {
        limiter: limiter.clone(),
        on_failure: rl.shared.on_failure,
    });
    Ok((proxy, Some(limiter)))
}

/// One `SO_REUSEPORT` listener per core on `server.listen`, and the
/// address they share.
fn bind_proxy(config: &Config) -> Result<(Vec<std::net::TcpListener>, SocketAddr), StartError> {
    let bind_error = |source| StartError::Bind {
        addr: config.server.listen,
        source,
    };
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let listeners = bind_reuseport(config.server.listen, threads).map_err(bind_error)?;
    let proxy_addr = listeners
        .first()
        .map(std::net::TcpListener::local_addr)
        .transpose()
        .map_err(bind_error)?
        .unwrap_or(config.server.listen);
    Ok((listeners, proxy_addr))
}

/// The client table, with the limits and bucket levels it holds restored
/// into `registry`.
async fn open_store(
    config: &Config,
    registry: &Registry,
) -> Result<(Arc<dyn ClientStore>, snapshot::Restored), StartError> {
    let store_error = |source| StartError::Store {
        url: config.store.url.clone(),
        source,
    };
    let started = std::time::Instant::now();
    let store = crate::store::open_with_timeout(&config.store.url, config.store.timeout)
        .await
        .map_err(store_error)?;
    let restored = snapshot::restore(registry, store.as_ref())
        .await
        .map_err(store_error)?;
    tracing::info!(
        url = %config.store.url,
        clients = restored.stats.clients,
        rejected_rows = restored.stats.rejected,
        buckets = restored.stats.buckets,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "client table loaded"
    );
    Ok((store, restored))
}

/// What an operator reads first in the log: where it listens and with
/// which backends and limits.
fn log_started(
    config: &Config,
    proxy_addr: SocketAddr,
    admin_addr: SocketAddr,
    threads: usize,
    max_connections: Option<usize>,
    proxy: &Proxy,
) {
    let rl = &config.rate_limit;
    tracing::info!(listen = %proxy_addr, threads, max_connections, "proxy listening");
    tracing::info!(listen = %admin_addr, auth = config.admin.token.is_some(), "admin API listening");
    tracing::info!(
        backends = %config.backends.iter().map(|b| b.url.to_string()).collect::<Vec<_>>().join(", "),
        healthy = proxy.pool().healthy_count(),
        "backends"
    );
    tracing::info!(strategy = ?config.balancing.strategy, "balancing");
    tracing::info!(
        enabled = rl.enabled,
        capacity = rl.default.capacity(),
        rate_per_sec = rl.default.rate_per_sec(),
        "rate limiting"
    );
}

/// Writes a snapshot every `interval`, and a last one when shutdown starts.
///
/// The last one gets `drain_timeout`, the time the drain has too, so a
/// database that stopped answering cannot hold the exit past it; a
/// periodic snapshot still running when shutdown starts gives way to it.
async fn run_snapshots(
    mut snapshotter: Snapshotter,
    interval: std::time::Duration,
    drain_timeout: std::time::Duration,
    signal: Signal,
) {
    // The first tick is a period away: nothing has changed yet. A
    // snapshot under way when shutdown starts gives way to the final one.
    let mut ticks = Ticks::every(
        interval,
        tokio::time::MissedTickBehavior::Delay,
        signal.wait(),
    );
    while ticks.next().await {
        if !ticks
            .unless_stopped(snapshot_once(&mut snapshotter, false))
            .await
        {
            break;
        }
    }
    if tokio::time::timeout(drain_timeout, snapshot_once(&mut snapshotter, true))
        .await
        .is_err()
    {
        tracing::error!(
            ?drain_timeout,
            "final bucket snapshot not written within the drain timeout; levels since the last snapshot are lost"
        );
    }
}

/// Writes one snapshot and records how it went.
async fn snapshot_once(snapshotter: &mut Snapshotter, last: bool) {
    let started = std::time::Instant::now();
    let result = snapshotter.snapshot().await;
    metrics::histogram!(crate::telemetry::SNAPSHOT).record(started.elapsed().as_secs_f64());
    match result {
        Ok(stats) => tracing::debug!(
            written = stats.written,
            deleted = stats.deleted,
            elapsed_ms = started.elapsed().as_millis() as u64,
            final_snapshot = last,
            "bucket snapshot"
        ),
        Err(e) => tracing::error!(error = %e, final_snapshot = last, "bucket snapshot failed"),
    }
}

/// Runs until SIGTERM or SIGINT, then shuts down gracefully.
pub async fn run(config: &Config) -> Result<Drained, StartError> {
    // Install the handlers before opening ports, so an early signal is
    // not lost and does not kill the process mid-start.
    let signal = tokio::spawn(shutdown::os_signal());
    let running = start(config).await?;
    match signal.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(StartError::Signals(e)),
        Err(_) => {}
    }
    let drained = running.shutdown().await;
    match drained {
        Drained::Clean => tracing::info!("drained; bye"),
        Drained::TimedOut => tracing::warn!("drain timeout reached; remaining requests cut"),
    }
    Ok(drained)
}

/// Sets up `tracing` output: `log.level` unless `RUST_LOG` says otherwise,
/// text or JSON lines on stderr.
pub fn init_logging(log: &LogConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(log.level.0.as_str().to_ascii_lowercase()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// `ab -c 1000` needs more descriptors than the usual soft limit of 1024:
/// raise the soft limit to the hard limit.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
}
