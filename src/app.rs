//! Wiring: from a [`Config`] to running listeners and background tasks,
//! and back down again on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinSet;

use crate::access_log::{self, AccessLogError, Sink, Writer};
use crate::admin::AdminState;
use crate::balancer::Pool;
use crate::config::{Config, LogConfig, LogFormat};
use crate::limiter::rules::{RuleBounds, RuleSet};
use crate::limiter::shared::{SharedLimiter, SharedOptions};
use crate::limiter::{self, Registry, RegistryConfig};
use crate::proxy::http3::{self, Http3Listener};
use crate::proxy::identity::Identifier;
use crate::proxy::server::{
    bind_reuseport, serve_per_core, ConnectionBudget, Drained, Listener, ServeOptions,
};
use crate::proxy::{ClientBody, Live, Proxy, ProxySettings, SharedLimits};
use crate::reload::{self, ReloadError, Reloaded, Reloader};
use crate::routing::pools::PoolSet;
use crate::routing::{Routing, StatsByRoute};
use crate::shutdown::{self, Signal, Ticks, Trigger};
use crate::status::Board;
use crate::store::reload::TableSync;
use crate::store::snapshot::{self, Snapshotter};
use crate::store::writes::LocalWrites;
use crate::store::ClientStore;
use crate::telemetry::Metrics;
use crate::tls::server::{CertError, TlsSettings, TlsTerminator};
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
    #[error("shared rate limiter: {}", crate::redact::Scrubbed(.0))]
    SharedLimiter(#[source] crate::limiter::shared::RedisUrlError),
    /// The roots for `https://` backends could not be loaded.
    #[error("https backends: {0}")]
    BackendTls(#[source] crate::tls::client::ClientTlsError),
    /// Neither `server.listen` nor `server.tls` is set (`tollgate check`
    /// reports this for a config file).
    #[error("no listener: server.listen is null and server.tls is not set")]
    NoListener,
    /// `server.tls` could not be set up (a certificate or key file).
    #[error("TLS listener: {0}")]
    Tls(#[source] CertError),
    /// `server.http3` could not be set up (its UDP socket, QUIC's TLS).
    #[error("HTTP/3 listener: {0}")]
    Http3(#[source] crate::proxy::http3::Http3Error),
    /// `log.access` is on and its writer could not start.
    #[error("access log: {0}")]
    AccessLog(#[source] AccessLogError),
    /// `telemetry.otlp` is set and span export could not be set up.
    #[error("span export: {0}")]
    Otlp(#[source] crate::trace::otlp::OtlpError),
}

/// What [`start_with`] takes besides the config: things a config file
/// cannot name.
#[derive(Default)]
pub struct StartOptions {
    /// Where access log lines go (`log.access: true`); stdout when `None`.
    pub access_log_sink: Option<Sink>,
    /// The file the config was loaded from, which a reload re-reads.
    pub config_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for StartOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartOptions")
            .field("access_log_sink", &self.access_log_sink.is_some())
            .field("config_file", &self.config_file)
            .finish()
    }
}

/// A started tollgate: its listeners are open and its tasks running.
#[derive(Debug)]
pub struct Running {
    plain_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    http3_addr: Option<SocketAddr>,
    admin_addr: SocketAddr,
    reloader: Reloader,
    proxy: Arc<Proxy>,
    /// The pools and their health checkers, which stop when it is dropped.
    pools: Arc<PoolSet>,
    registry: Arc<Registry>,
    store: Arc<dyn ClientStore>,
    trigger: Trigger,
    workers: Vec<std::thread::JoinHandle<Drained>>,
    /// Every background task (refill, health checks, snapshots, admin API,
    /// metrics upkeep, the status sampler, table reload); each stops on
    /// the shutdown signal.
    tasks: JoinSet<()>,
    /// The access log's writer thread, stopped last.
    access_log: Option<Writer>,
    drain_timeout: std::time::Duration,
}

impl Running {
    /// The address of the plain HTTP listener; with `server.listen: null`
    /// the TLS listener's (a started tollgate has one or the other).
    ///
    /// Not an `Option`: nearly every caller runs with a plain listener;
    /// [`Running::plain_addr`] and [`Running::tls_addr`] say which is which.
    pub fn proxy_addr(&self) -> SocketAddr {
        match (self.plain_addr, self.tls_addr) {
            (Some(addr), _) | (None, Some(addr)) => addr,
            (None, None) => unreachable!("start binds server.listen or server.tls.listen"),
        }
    }

    /// The address of the plain HTTP listener, if there is one.
    pub fn plain_addr(&self) -> Option<SocketAddr> {
        self.plain_addr
    }

    /// The address of the TLS listener, if there is one.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// The UDP address of the HTTP/3 listener, if there is one.
    pub fn http3_addr(&self) -> Option<SocketAddr> {
        self.http3_addr
    }

    /// What a reload re-reads (the SIGHUP task holds the same).
    pub fn reloader(&self) -> &Reloader {
        &self.reloader
    }

    /// Reads the TLS certificate files again, as SIGHUP does: new
    /// handshakes get the new certificates, open connections keep theirs;
    /// on an error the certificates in use stay. Started with a config
    /// file ([`start_with_file`]), the file is re-read and applied too.
    pub async fn reload_certificates(&self) -> Result<Reloaded, ReloadError> {
        self.reload().await
    }

    /// Re-reads the config file and applies what changed, as SIGHUP and
    /// `POST /reload` do (see [`crate::reload`]).
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        self.reloader.reload_logged().await
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

    /// The default pool (the top-level backends).
    pub fn pool(&self) -> Arc<Pool> {
        self.proxy.pool()
    }

    /// The pool named `name`, if there is one.
    pub fn pool_named(&self, name: &str) -> Option<Arc<Pool>> {
        self.pools.get(name)
    }

    /// The Redis side of shared limits, when `rate_limit.shared.redis_url`
    /// is set.
    pub fn shared_limiter(&self) -> Option<&Arc<SharedLimiter>> {
        self.proxy.shared_limits().map(|s| &s.limiter)
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
        // The requests' last spans are queued by now.
        if let Some(otlp) = self.proxy.tracing().otlp() {
            otlp.shutdown(self.drain_timeout).await;
        }
        if let Some(writer) = self.access_log {
            stop_access_log(writer, self.drain_timeout).await;
        }
        drained
    }
}

/// Opens the listeners and starts every task, in these steps: build the
/// limiter, build the backend pool (one health round), build the proxy,
/// bind the proxy listeners, open the store (restoring bucket levels),
/// bind the admin listener, spawn the background tasks, serve.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    start_with(config, StartOptions::default()).await
}

/// [`start`], where `config` was loaded from the file at `path`: a reload
/// (SIGHUP, `POST /reload`) re-reads that file. Without a path a reload
/// re-reads the TLS certificates only.
pub async fn start_with_file(
    config: &Config,
    path: Option<std::path::PathBuf>,
) -> Result<Running, StartError> {
    start_with(
        config,
        StartOptions {
            config_file: path,
            ..StartOptions::default()
        },
    )
    .await
}

/// [`start`], with what a config file cannot name.
pub async fn start_with(config: &Config, options: StartOptions) -> Result<Running, StartError> {
    raise_open_file_limit();
    let metrics = Metrics::new();
    let registry = Arc::new(Registry::new(RegistryConfig::from(&config.rate_limit)));
    // Before the pools: their health checkers stop with it.
    let (trigger, signal) = shutdown::channel();
    let parts = (registry.clone(), metrics.clone(), signal.clone());
    let core = build_core(config, parts, options.access_log_sink).await?;
    let bound = bind_proxy(config)?;
    let (store, restored) = open_store(config, &registry).await?;
    if let Some(rules) = core.proxy.rules() {
        let buckets = snapshot::restore_rules(rules, &restored.states);
        if buckets > 0 {
            tracing::info!(buckets, "rule bucket levels restored");
        }
    }
    let (admin_listener, admin_addr) = bind_admin(config).await?;
    let reloader = build_reloader(config, options.config_file, &bound, &core, &registry)
        .with_metrics(metrics.clone());
    let mut tasks = JoinSet::new();
    let admin = Admin {
        listener: admin_listener,
        metrics: metrics.clone(),
        reloader: reloader.clone(),
    };
    spawn_admin(&mut tasks, config, admin, &core, &registry, &store, &signal);
    let restored = (&store, &restored);
    spawn_background(
        &mut tasks, config, &core, &registry, restored, &metrics, &signal,
    );
    let (plain_addr, tls_addr) = (bound.plain_addr, bound.tls_addr);
    let http3_addr = bound.http3.as_ref().map(Http3Listener::local_addr);
    let listening = Listening {
        plain: plain_addr,
        tls: tls_addr,
        http3: http3_addr,
        admin: admin_addr,
    };
    let workers = serve(config, bound, &core.proxy, (signal, metrics), listening)?;
    Ok(Running {
        plain_addr,
        tls_addr,
        http3_addr,
        admin_addr,
        reloader,
        proxy: core.proxy,
        pools: core.pools,
        registry,
        store,
        trigger,
        workers,
        tasks,
        access_log: core.access_log,
        drain_timeout: config.server.drain_timeout,
    })
}

/// The request path and what it is built from: the pools (after one
/// health round each) with their checkers, the routes' counts, the proxy
/// with its rules and shared limits, and the access log's writer.
struct Core {
    proxy: Arc<Proxy>,
    pools: Arc<PoolSet>,
    route_stats: Arc<StatsByRoute>,
    shared_limiter: Option<Arc<SharedLimiter>>,
    access_log: Option<Writer>,
    /// This replica's client writes, counted by the admin API so that the
    /// table sync's reads cannot undo one.
    local_writes: Arc<LocalWrites>,
}

/// Builds the [`Core`]; `sink`: where access log lines go (stdout when
/// `None`).
async fn build_core(
    config: &Config,
    (registry, metrics, signal): (Arc<Registry>, Metrics, Signal),
    sink: Option<Sink>,
) -> Result<Core, StartError> {
    let (registry, metrics) = (&registry, &metrics);
    // One TLS client configuration for the proxy and the health checks.
    let backend_tls = crate::tls::client::backend_client_config(
        config.proxy.ca_file.as_deref(),
        config
            .pool_specs()
            .iter()
            .flat_map(|p| &p.backends)
            .any(|b| b.url.scheme == crate::balancer::Scheme::Https),
    )
    .map_err(StartError::BackendTls)?;
    let pools = Arc::new(PoolSet::new(backend_tls.clone(), metrics.clone(), signal));
    let route_stats = Arc::new(StatsByRoute::default());
    let routing = reload::routing_for(config, &pools, &route_stats).await;
    let (proxy, shared_limiter) =
        build_proxy(config, registry, routing, backend_tls.clone(), metrics)?;
    let proxy = match &config.telemetry.otlp {
        Some(otlp) => {
            let exporting = crate::trace::otlp::Otlp::start(otlp, &backend_tls, metrics)
                .map_err(StartError::Otlp)?;
            tracing::info!(
                endpoint = %crate::redact::url(&otlp.endpoint),
                sample_ratio = otlp.sample_ratio,
                "spans exported over OTLP/HTTP"
            );
            proxy.with_tracing(crate::trace::Tracing::exporting(exporting))
        }
        None => proxy,
    };
    let (proxy, access_log) = if config.log.access {
        let sink = sink.unwrap_or_else(|| Box::new(std::io::stdout()));
        let (log, writer) = access_log::start(
            access_log_format(config.log.format),
            sink,
            access_log::Bounds::default(),
            metrics,
        )
        .map_err(StartError::AccessLog)?;
        (proxy.with_access_log(log), Some(writer))
    } else {
        (proxy, None)
    };
    Ok(Core {
        proxy: Arc::new(proxy),
        pools,
        route_stats,
        shared_limiter,
        access_log,
        local_writes: LocalWrites::new(),
    })
}

/// The admin listener, bound before any task starts.
async fn bind_admin(config: &Config) -> Result<(TcpListener, SocketAddr), StartError> {
    let bind_admin_error = |source| StartError::Bind {
        addr: config.admin.listen,
        source,
    };
    let listener = TcpListener::bind(config.admin.listen)
        .await
        .map_err(bind_admin_error)?;
    let addr = listener.local_addr().map_err(bind_admin_error)?;
    Ok((listener, addr))
}

/// What SIGHUP and `POST /reload` re-read: the TLS certificates, and the
/// config file when tollgate was started from one.
fn build_reloader(
    config: &Config,
    path: Option<std::path::PathBuf>,
    bound: &Bound,
    core: &Core,
    registry: &Arc<Registry>,
) -> Reloader {
    let proxy = &core.proxy;
    let reloader = Reloader::new(bound.tls.as_ref().map(|t| t.certificates().clone()))
        .with_events(core.pools.events().clone());
    let Some(path) = path else {
        return reloader;
    };
    reloader.with_file(
        path,
        config.clone(),
        reload::Targets {
            registry: registry.clone(),
            proxy: proxy.clone(),
            pools: core.pools.clone(),
            route_stats: core.route_stats.clone(),
        },
    )
}

/// The admin side's own parts.
struct Admin {
    listener: TcpListener,
    metrics: Metrics,
    reloader: Reloader,
}

/// Starts the admin API, the status page's sampler and the metrics'
/// upkeep.
fn spawn_admin(
    tasks: &mut JoinSet<()>,
    config: &Config,
    admin: Admin,
    core: &Core,
    registry: &Arc<Registry>,
    store: &Arc<dyn ClientStore>,
    signal: &Signal,
) {
    let proxy = &core.proxy;
    // The proxy, not a pool: the admin API and the status page read the
    // routes and pools in force, which a reload replaces.
    let routing: Arc<dyn crate::routing::InForce> = proxy.clone();
    let board = Arc::new(Board::new(
        routing.clone(),
        core.pools.events().clone(),
        registry.clone(),
        proxy.refusals().clone(),
    ));
    let state = AdminState::new(
        registry.clone(),
        store.clone(),
        routing,
        config.admin.token.clone(),
    )
    .with_metrics(admin.metrics.clone())
    .with_shared_limiter(core.shared_limiter.clone())
    .with_store_timeout(config.store.timeout)
    .with_body_read_timeout(config.admin.body_read_timeout)
    // Only the address counts (ports are ignored): the configured one.
    .with_allowed_hosts(config.admin.listen, &config.admin.allowed_hosts)
    .with_reloader(admin.reloader)
    .with_status(board.clone())
    .with_local_writes(core.local_writes.clone());
    tasks.spawn(crate::status::run(
        board,
        Some(admin.metrics.clone()),
        signal.clone().wait(),
    ));
    tasks.spawn(
        admin
            .metrics
            .upkeep(crate::telemetry::UPKEEP_INTERVAL, signal.clone().wait()),
    );
    tasks.spawn(crate::admin::server::serve(
        admin.listener,
        crate::admin::router(state),
        config.admin.header_read_timeout,
        config.server.drain_timeout,
        signal.clone().wait(),
    ));
}

/// Starts the background tasks of the request path: snapshots, the client
/// table's reload (PostgreSQL), health checks, the shared limiter's
/// upkeep, and the refill of the client and rule buckets.
fn spawn_background(
    tasks: &mut JoinSet<()>,
    config: &Config,
    core: &Core,
    registry: &Arc<Registry>,
    (store, restored): (&Arc<dyn ClientStore>, &snapshot::Restored),
    metrics: &Metrics,
    signal: &Signal,
) {
    let rules = core.proxy.rules();
    let snapshotter = Snapshotter::new(registry.clone(), store.clone(), &restored.states);
    tasks.spawn(run_snapshots(
        match rules {
            Some(rules) => snapshotter.with_rules(rules.clone()),
            None => snapshotter,
        },
        (config.store.snapshot_interval, config.server.drain_timeout),
        metrics.histogram(crate::telemetry::SNAPSHOT),
        signal.clone(),
    ));
    if crate::store::is_shared(&config.store.url) {
        let sync = TableSync::new(registry.clone(), store.clone(), &restored.clients)
            .with_local_writes(core.local_writes.clone())
            .with_metrics(metrics.clone());
        spawn_table_sync(tasks, config, sync, signal);
    }
    if let Some(shared) = &core.shared_limiter {
        tasks.spawn(shared.clone().upkeep(signal.clone().wait()));
    }
    let refill = config.rate_limit.refill_interval;
    tasks.spawn(limiter::refill::run_timed(
        registry.clone(),
        refill,
        metrics.histogram(crate::telemetry::REFILL_SWEEP),
        signal.clone().wait(),
    ));
    if let Some(rules) = rules {
        tasks.spawn(rules.clone().run_refill(refill, signal.clone().wait()));
    }
}

/// Starts one proxy thread per set of listeners, each with its own proxy
/// (and so its own backend connection pool) serving that thread's plain
/// and TLS listeners; logs where everything listens.
fn serve(
    config: &Config,
    bound: Bound,
    proxy: &Arc<Proxy>,
    (signal, metrics): (Signal, Metrics),
    listening: Listening,
) -> Result<Vec<std::thread::JoinHandle<Drained>>, StartError> {
    let serve_options = ServeOptions {
        metrics,
        access_log: proxy.access_log().cloned(),
        ..ServeOptions::from(config)
    };
    let max_connections = serve_options.budget.as_ref().map(ConnectionBudget::limit);
    let threads = bound.threads.len();
    let parts = proxy.clone();
    // Advertised on the TLS listener's answers only: a client learns of
    // HTTP/3 from a TLS connection to the same name (RFC 7838, RFC 9114
    // §3.1.1), and must not be sent there from plain HTTP.
    let alt_svc = listening
        .http3
        .zip(config.server.http3.as_ref())
        .and_then(|(addr, h3)| alt_svc(addr.port(), h3.alt_svc_max_age));
    let mut workers = serve_per_core(
        bound.threads,
        move || {
            let proxy = Arc::new(parts.for_another_thread());
            let alt_svc = alt_svc.clone();
            move |req: http::Request<hyper::body::Incoming>, conn: crate::proxy::Conn| {
                let proxy = proxy.clone();
                let alt_svc = if conn.tls { alt_svc.clone() } else { None };
                async move {
                    let mut response = proxy.handle(req.map(ClientBody::Hyper), conn).await;
                    if let Some(value) = alt_svc {
                        response.headers_mut().insert(http::header::ALT_SVC, value);
                    }
                    response
                }
            }
        },
        serve_options.clone(),
        signal.clone(),
    )
    .map_err(|source| StartError::Bind {
        addr: listening
            .plain
            .or(listening.tls)
            .unwrap_or(config.admin.listen),
        source,
    })?;
    if let Some(listener) = bound.http3 {
        let addr = listener.local_addr();
        let proxy = proxy.clone();
        let worker = http3::serve_thread(
            listener,
            move || {
                let proxy = Arc::new(proxy.for_another_thread());
                move |req, conn| {
                    let proxy = proxy.clone();
                    async move { proxy.handle(req, conn).await }
                }
            },
            serve_options,
            signal,
        )
        .map_err(|source| StartError::Bind { addr, source })?;
        workers.push(worker);
    }
    log_started(config, listening, threads, max_connections, proxy);
    Ok(workers)
}

/// The `Alt-Svc` value offering HTTP/3 on `port` for `max_age`.
fn alt_svc(port: u16, max_age: std::time::Duration) -> Option<http::HeaderValue> {
    http::HeaderValue::try_from(format!("h3=\":{port}\"; ma={}", max_age.as_secs())).ok()
}

fn access_log_format(format: LogFormat) -> access_log::Format {
    match format {
        LogFormat::Text => access_log::Format::Text,
        LogFormat::Json => access_log::Format::Json,
    }
}

/// Writes the access log lines still queued, for at most `within`: a sink
/// that stopped taking lines must not hold the exit.
async fn stop_access_log(writer: Writer, within: std::time::Duration) {
    let (done, stopped) = tokio::sync::oneshot::channel();
    // A thread of its own rather than spawn_blocking: if the sink never
    // returns, the runtime must not wait for it when it shuts down.
    let spawned = std::thread::Builder::new()
        .name("access-log-stop".into())
        .spawn(move || {
            writer.stop();
            let _ = done.send(());
        });
    if spawned.is_err() || tokio::time::timeout(within, stopped).await.is_err() {
        tracing::warn!("access log lines still queued at exit were not written");
    }
}

/// The request path, with limits shared through Redis when configured.
fn build_proxy(
    config: &Config,
    registry: &Arc<Registry>,
    routing: Arc<Routing>,
    backend_tls: Arc<rustls::ClientConfig>,
    metrics: &Metrics,
) -> Result<(Proxy, Option<Arc<SharedLimiter>>), StartError> {
    let rl = &config.rate_limit;
    let identifier = Identifier::from(rl);
    // The limiter is always there, so a reload can switch limiting on.
    let proxy = Proxy::new(
        Some(registry.clone()),
        routing.clone(),
        identifier.clone(),
        ProxySettings::from(config),
        backend_tls,
        metrics.clone(),
    );
    proxy.reconfigure(
        Live::new(identifier, ProxySettings::from(config), rl.enabled, routing)
            .with_dry_run(rl.dry_run),
    );
    // Always there (empty without rules), so a reload can add rules.
    let rules = Arc::new(RuleSet::new(
        &rl.rule_specs(),
        RuleBounds {
            max_clients: rl.max_clients,
            idle_timeout: rl.idle_timeout,
            refill_interval: rl.refill_interval,
        },
    ));
    let proxy = proxy.with_rules(rules);
    let (true, Some(url)) = (rl.enabled, &rl.shared.redis_url) else {
        return Ok((proxy, None));
    };
    let limiter = SharedLimiter::new(SharedOptions {
        url: url.clone(),
        prefix: rl.shared.key_prefix.clone(),
        timeout: rl.shared.timeout,
        mode: rl.shared.mode,
        period: rl.refill_interval,
        max_leases: rl.max_clients.get(),
    })
    .map_err(StartError::SharedLimiter)?
    .with_metrics(metrics.clone());
    tracing::info!(
        on_failure = rl.shared.on_failure.as_str(),
        mode = rl.shared.mode.as_str(),
        "limits shared through Redis"
    );
    let limiter = Arc::new(limiter);
    let proxy = proxy.with_shared_limits(SharedLimits {
        limiter: limiter.clone(),
        on_failure: rl.shared.on_failure,
    });
    Ok((proxy, Some(limiter)))
}

/// The proxy listeners, in one set per proxy thread.
struct Bound {
    threads: Vec<Vec<Listener>>,
    plain_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    tls: Option<TlsTerminator>,
    /// `server.http3`: its UDP socket, on the TLS listener's certificates.
    http3: Option<Http3Listener>,
}

/// One `SO_REUSEPORT` listener per core on `server.listen` and one on
/// `server.tls.listen`; each proxy thread gets one of each. The TLS
/// certificates are loaded first, so a broken file fails the start
/// before any port is open.
fn bind_proxy(config: &Config) -> Result<Bound, StartError> {
    let tls = config
        .server
        .tls
        .as_ref()
        .map(|t| TlsTerminator::new(&TlsSettings::from(t)).map_err(StartError::Tls))
        .transpose()?;
    let n = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let bind = |addr: SocketAddr| {
        let bind_error = |source| StartError::Bind { addr, source };
        let listeners = bind_reuseport(addr, n).map_err(bind_error)?;
        let bound = listeners
            .first()
            .map(std::net::TcpListener::local_addr)
            .transpose()
            .map_err(bind_error)?
            .unwrap_or(addr);
        Ok::<_, StartError>((listeners, bound))
    };
    let mut threads: Vec<Vec<Listener>> = (0..n).map(|_| Vec::with_capacity(2)).collect();
    let mut plain_addr = None;
    if let Some(addr) = config.server.listen {
        let (listeners, bound) = bind(addr)?;
        plain_addr = Some(bound);
        for (set, socket) in threads.iter_mut().zip(listeners) {
            set.push(Listener { socket, tls: None });
        }
    }
    let mut tls_addr = None;
    if let (Some(settings), Some(terminator)) = (&config.server.tls, &tls) {
        let (listeners, bound) = bind(settings.listen)?;
        tls_addr = Some(bound);
        for (set, socket) in threads.iter_mut().zip(listeners) {
            set.push(Listener {
                socket,
                tls: Some(terminator.clone()),
            });
        }
    }
    if plain_addr.is_none() && tls_addr.is_none() {
        return Err(StartError::NoListener);
    }
    let http3 = match (&config.server.http3, &tls) {
        (Some(h3), Some(terminator)) => Some(
            Http3Listener::bind(
                h3.listen,
                terminator,
                config.server.http2_max_concurrent_streams.get(),
            )
            .map_err(StartError::Http3)?,
        ),
        _ => None,
    };
    Ok(Bound {
        threads,
        plain_addr,
        tls_addr,
        tls,
        http3,
    })
}

/// Keeps a shared (PostgreSQL) client table applied: the periodic reload,
/// and with `store.notify` the listener whose notifications it applies.
fn spawn_table_sync(tasks: &mut JoinSet<()>, config: &Config, sync: TableSync, signal: &Signal) {
    let notices = config.store.notify.then(|| {
        // A burst of writes queues here while a read is under way; past
        // that, the listener waits and PostgreSQL holds the rest.
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let (url, timeout) = (config.store.url.clone(), config.store.timeout);
        let stop = signal.clone().wait();
        tasks.spawn(async move { crate::store::notify::listen(&url, timeout, tx, stop).await });
        rx
    });
    tasks.spawn(crate::store::reload::run(
        sync,
        config.store.reload_interval,
        notices,
        signal.clone().wait(),
    ));
}

/// The client table, with the limits and bucket levels it holds restored
/// into `registry`.
async fn open_store(
    config: &Config,
    registry: &Registry,
) -> Result<(Arc<dyn ClientStore>, snapshot::Restored), StartError> {
    let store_error = |source| StartError::Store {
        url: crate::redact::url(&config.store.url).into_owned(),
        source,
    };
    let started = std::time::Instant::now();
    let options = crate::store::OpenOptions {
        timeout: config.store.timeout,
        notify: config.store.notify,
    };
    let store = crate::store::open_with(&config.store.url, options)
        .await
        .map_err(store_error)?;
    let restored = snapshot::restore(registry, store.as_ref())
        .await
        .map_err(store_error)?;
    tracing::info!(
        url = %crate::redact::url(&config.store.url),
        clients = restored.stats.clients,
        rejected_rows = restored.stats.rejected,
        buckets = restored.stats.buckets,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "client table loaded"
    );
    Ok((store, restored))
}

/// The addresses the listeners are bound to.
struct Listening {
    plain: Option<SocketAddr>,
    tls: Option<SocketAddr>,
    http3: Option<SocketAddr>,
    admin: SocketAddr,
}

/// What an operator reads first in the log: where it listens and with
/// which backends and limits.
fn log_started(
    config: &Config,
    listening: Listening,
    threads: usize,
    max_connections: Option<usize>,
    proxy: &Proxy,
) {
    let rl = &config.rate_limit;
    if let Some(addr) = listening.plain {
        tracing::info!(listen = %addr, threads, max_connections, "proxy listening");
    }
    if let (Some(addr), Some(tls)) = (listening.tls, &config.server.tls) {
        tracing::info!(
            listen = %addr,
            threads,
            max_connections,
            certificates = tls.certificates.len(),
            min_version = ?tls.min_version,
            alpn = ?tls.alpn,
            "TLS listening"
        );
    }
    if let Some(addr) = listening.http3 {
        tracing::info!(listen = %addr, "HTTP/3 (QUIC) listening");
    }
    tracing::info!(listen = %listening.admin, auth = config.admin.token.is_some(), "admin API listening");
    if config.is_routed() {
        log_pools(config, proxy);
    } else {
        tracing::info!(
            backends = %config.backends.iter().map(|b| format!("{} ({}, weight {})", b.name(), b.url, b.weight.get())).collect::<Vec<_>>().join(", "),
            healthy = proxy.pool().healthy_count(),
            "backends"
        );
        tracing::info!(strategy = ?config.balancing.strategy, "balancing");
    }
    tracing::info!(
        enabled = rl.enabled,
        capacity = rl.default.capacity(),
        rate_per_sec = rl.default.rate_per_sec(),
        rate = rl.default.rate().map(|r| r.to_string()),
        ipv6_prefix = rl.ipv6_prefix,
        "rate limiting"
    );
}

/// With pools or routes: one line per pool (its strategy, backends and
/// how many take requests) and one with the routes in order, where a
/// config without them logs its one pool's backends and strategy.
fn log_pools(config: &Config, proxy: &Proxy) {
    let routing = proxy.routing();
    for p in routing.pools_in_order() {
        let backends = p.pool.backends();
        tracing::info!(
            name = %p.name,
            strategy = ?p.strategy,
            backends = %backends.iter().map(|b| format!("{} ({}, weight {})", b.name(), b.url(), b.weight())).collect::<Vec<_>>().join(", "),
            healthy = p.pool.healthy_count(),
            "pool"
        );
    }
    tracing::info!(
        routes = %config.routes.iter().map(|r| format!("{} -> {}", r.name, r.pool)).collect::<Vec<_>>().join(", "),
        fallback = routing.fallback().map(|p| p.name.to_string()),
        "routes"
    );
}

/// Writes a snapshot every `interval`, and a last one when shutdown starts.
///
/// The last one gets `drain_timeout`, the time the drain has too, so a
/// database that stopped answering cannot hold the exit past it; a
/// periodic snapshot still running when shutdown starts gives way to it.
async fn run_snapshots(
    mut snapshotter: Snapshotter,
    (interval, drain_timeout): (std::time::Duration, std::time::Duration),
    took: metrics::Histogram,
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
            .unless_stopped(snapshot_once(&mut snapshotter, &took, false))
            .await
        {
            break;
        }
    }
    if tokio::time::timeout(drain_timeout, snapshot_once(&mut snapshotter, &took, true))
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
async fn snapshot_once(snapshotter: &mut Snapshotter, took: &metrics::Histogram, last: bool) {
    let started = std::time::Instant::now();
    let result = snapshotter.snapshot().await;
    took.record(started.elapsed().as_secs_f64());
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
    run_with_file(config, None).await
}

/// [`run`], where `config` was loaded from the file at `path` (which a
/// SIGHUP re-reads).
pub async fn run_with_file(
    config: &Config,
    path: Option<std::path::PathBuf>,
) -> Result<Drained, StartError> {
    // Install the handlers before opening ports, so an early signal is
    // not lost and does not kill the process mid-start.
    let signal = tokio::spawn(shutdown::os_signal());
    let hup = reload::sighup().map_err(StartError::Signals)?;
    let running = start_with_file(config, path).await?;
    tokio::spawn(reload::on_sighup(
        hup,
        running.reloader.clone(),
        running.trigger.signal(),
    ));
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
/// text or JSON lines on stderr; a reload can switch both later (see
/// [`crate::logging`]).
pub fn init_logging(log: &LogConfig) {
    crate::logging::init(log);
}

/// `ab -c 1000` needs more descriptors than the usual soft limit of 1024:
/// raise the soft limit to the hard limit.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
}
