//! Active health checks.
//!
//! Every `health_check.interval`, each backend gets `GET health_check.path`
//! with `health_check.timeout`; a 2xx answer is a success, anything else
//! (an error status, a refused connection, a timeout) a failure. The pool
//! flips a backend only after `unhealthy_threshold` consecutive failures or
//! `healthy_threshold` consecutive successes, as pingora's health checks
//! do, so one lost packet does not evict and one lucky answer does not
//! restore. Failed proxy attempts count as failures too (passive checks,
//! see `proxy`), so a dead backend leaves the pool between two rounds.
//!
//! `https://` backends are checked over TLS with the proxy's own client
//! configuration (same roots, SNI = the URL's host), so a backend whose
//! certificate the proxy would refuse is not reported healthy.
//!
//! A pool with `protocol: http2` is checked over HTTP/2 (prior knowledge
//! for `http://`, ALPN `h2` for `https://`): a backend that cannot speak
//! it would fail every request, so it must fail its checks too. With
//! `health_check.grpc` the check is the standard `grpc.health.v1`
//! `Check` call instead of `GET path`, and only SERVING is healthy.
//!
//! A check that fails because this process is out of sockets (no file
//! descriptor, no local port: [`is_local_exhaustion`]) says nothing about
//! the backend and is not counted either way; otherwise a flood of client
//! connections that used up the descriptors would evict healthy backends
//! and turn every later request into a 503.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::future::join_all;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::balancer::{Backend, BackendSpec, Pool, Protocol, Replaced};
use crate::shutdown::{Signal, Ticks};
use crate::telemetry::Throttle;

/// Runs health-check rounds over a pool.
///
/// Clones share their settings: [`Checker::reconfigure`] on any of them
/// (a config reload) changes what the running task checks from its next
/// round on.
#[derive(Debug, Clone)]
pub struct Checker {
    pool: Arc<Pool>,
    probe: Arc<ArcSwap<Probe>>,
    /// The period of rounds; the running task restarts its timer when it
    /// changes.
    interval: Arc<watch::Sender<Option<Duration>>>,
    tls: Arc<rustls::ClientConfig>,
}

/// What one check asks, in which protocol, and how long it may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckSpec {
    /// Path requested (`GET`), unless `grpc` is set.
    pub path: String,
    /// For one check, connection included.
    pub timeout: Duration,
    /// The pool's protocol: checks speak it too.
    pub protocol: Protocol,
    /// `Some(service)`: a `grpc.health.v1.Health/Check` call for that
    /// service (empty: the server as a whole) instead of `GET path`.
    pub grpc: Option<String>,
}

/// How one check is made.
#[derive(Debug)]
struct Probe {
    client: reqwest::Client,
    ask: Ask,
}

/// The request of one check.
#[derive(Debug)]
enum Ask {
    /// `GET` this path; a 2xx is healthy.
    Get(String),
    /// A gRPC health check with this (framed) request message.
    Grpc(bytes::Bytes),
}

impl Checker {
    /// A checker of `pool` requesting `path` with `timeout` over
    /// HTTP/1.1, verifying `https://` backends with `tls` (the proxy's
    /// configuration).
    pub fn new(
        pool: Arc<Pool>,
        path: &str,
        timeout: Duration,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Self {
        let spec = CheckSpec {
            path: path.to_owned(),
            timeout,
            protocol: Protocol::Http1,
            grpc: None,
        };
        Self::with_spec(pool, &spec, tls)
    }

    /// A checker of `pool` making the checks `spec` describes.
    pub fn with_spec(pool: Arc<Pool>, spec: &CheckSpec, tls: &Arc<rustls::ClientConfig>) -> Self {
        Self {
            pool,
            probe: Arc::new(ArcSwap::from_pointee(Probe::new(spec, tls))),
            interval: Arc::new(watch::Sender::new(None)),
            tls: tls.clone(),
        }
    }

    /// Makes the checks `spec` describes every `interval` from the next
    /// round on; a round under way finishes as it started.
    pub fn reconfigure(&self, spec: &CheckSpec, interval: Duration) {
        self.probe.store(Arc::new(Probe::new(spec, &self.tls)));
        self.interval.send_if_modified(|current| {
            let changed = current.is_some_and(|c| c != interval);
            if changed {
                *current = Some(interval);
            }
            changed
        });
    }
}

impl Probe {
    fn new(spec: &CheckSpec, tls: &Arc<rustls::ClientConfig>) -> Self {
        let mut tls = rustls::ClientConfig::clone(tls);
        let mut builder = reqwest::Client::builder()
            .timeout(spec.timeout)
            .connect_timeout(spec.timeout)
            .no_proxy()
            // A fresh connection for every check: a pooled one could hide
            // a backend that no longer accepts connections.
            .pool_max_idle_per_host(0);
        if spec.protocol == Protocol::Http2 {
            // The proxy's own h2 connections offer only `h2` too.
            tls.alpn_protocols = vec![b"h2".to_vec()];
            builder = builder.http2_prior_knowledge();
        }
        let client = builder
            .use_preconfigured_tls(tls)
            .build()
            .unwrap_or_else(|e| {
                // Without our roots every https:// check fails, so such
                // backends show unhealthy rather than unverified.
                tracing::error!(error = %e, "health-check client: falling back to defaults");
                reqwest::Client::new()
            });
        let ask = match &spec.grpc {
            Some(service) => Ask::Grpc(crate::grpc::health_request(service)),
            None => Ask::Get(spec.path.clone()),
        };
        Self { client, ask }
    }

    /// The check's request to `backend`.
    fn request(&self, backend: &Backend) -> reqwest::RequestBuilder {
        match &self.ask {
            Ask::Get(path) => self.client.get(format!("{}{path}", backend.url())),
            Ask::Grpc(message) => self
                .client
                .post(format!(
                    "{}{}",
                    backend.url(),
                    crate::grpc::HEALTH_CHECK_PATH
                ))
                .header(http::header::CONTENT_TYPE, "application/grpc")
                .header(http::header::TE, "trailers")
                .body(message.clone()),
        }
    }

    /// Whether `response` says healthy: a 2xx, or for gRPC a SERVING
    /// answer (a refusal comes as `grpc-status` in the headers with no
    /// message).
    async fn healthy(&self, response: reqwest::Response) -> bool {
        match self.ask {
            Ask::Get(_) => response.status().is_success(),
            Ask::Grpc(_) => {
                let refused = response
                    .headers()
                    .get(crate::grpc::GRPC_STATUS)
                    .is_some_and(|s| s != "0");
                if response.status() != http::StatusCode::OK || refused {
                    return false;
                }
                // Bounded by the client's timeout; the answer is 7 bytes.
                match response.bytes().await {
                    Ok(body) => crate::grpc::health_serving(&body),
                    Err(_) => false,
                }
            }
        }
    }

    /// `Some(healthy)`, or `None` when the check could not be made for
    /// want of a socket here.
    async fn check(&self, backend: &Backend) -> Option<bool> {
        match self.request(backend).send().await {
            Ok(r) => Some(self.healthy(r).await),
            Err(e) if error_chain_is_local_exhaustion(&e) => {
                LOCAL_EXHAUSTION.note(|skipped| {
                    tracing::warn!(
                        backend = %backend.url(),
                        error = %e,
                        skipped,
                        "health check not made: this process is out of sockets; \
                         the backend's health is left as it was"
                    );
                });
                None
            }
            Err(e) => {
                // reqwest's own text is only "error sending request"; the
                // reason (refused, certificate not trusted) is in the chain.
                tracing::debug!(
                    backend = %backend.url(),
                    error = %crate::error::Chain(&e),
                    "health check failed"
                );
                Some(false)
            }
        }
    }
}

impl Checker {
    /// The first round: each backend's health is set from its one result,
    /// so a dead backend never gets traffic and a live one gets it at once.
    pub async fn initial_round(&self) {
        self.first_check(&self.pool.backends()).await;
    }

    /// Sets the health of `backends` (new ones: at start, or added by a
    /// reload) from one check each.
    pub async fn first_check(&self, backends: &[Arc<Backend>]) {
        let probe = self.probe.load_full();
        let results = join_all(backends.iter().map(|b| probe.check(b))).await;
        for (backend, ok) in backends.iter().zip(results) {
            // Without a result the backend is given the benefit of the
            // doubt: passive checks remove it at once if it is down.
            let ok = ok.unwrap_or(true);
            self.pool.record_initial(backend, ok);
            if !ok {
                tracing::warn!(backend = %backend.name(), url = %backend.url(), "backend failed its first health check: not in the pool");
            }
        }
    }

    /// Replaces the pool's backend set (a reload): new backends are
    /// checked once first, as at start-up, so a dead one never gets a
    /// request and a live one gets them at once (see
    /// `balancer::Pool::plan`).
    pub async fn replace_backends(&self, specs: Vec<BackendSpec>) -> Replaced {
        let plan = self.pool.plan(specs);
        self.first_check(plan.added()).await;
        self.pool.commit(plan)
    }

    /// One round: every backend checked concurrently (draining and
    /// ejected ones too), results recorded; ejections whose time is up
    /// end here at the latest.
    pub async fn round(&self) {
        self.pool.restore_expired();
        let backends = self.pool.backends();
        let probe = self.probe.load_full();
        let results = join_all(backends.iter().map(|b| probe.check(b))).await;
        for (backend, ok) in backends.iter().zip(results) {
            let Some(ok) = ok else { continue };
            if let Some(t) = self.pool.record(backend, ok) {
                t.log(backend, "active check");
            }
        }
    }

    /// Runs a round every `interval` (until [`Checker::reconfigure`]
    /// changes it) until `shutdown`.
    pub async fn run(self, interval: Duration, shutdown: Signal) {
        self.interval.send_replace(Some(interval));
        let mut changes = self.interval.subscribe();
        loop {
            let every = changes.borrow_and_update().unwrap_or(interval);
            // The first tick is a period away: the initial round (or the
            // last one before the change) just ran.
            let mut ticks = Ticks::every(every, MissedTickBehavior::Delay, shutdown.clone().wait());
            loop {
                tokio::select! {
                    more = ticks.next() => {
                        if !more {
                            return;
                        }
                        self.round().await;
                    }
                    Ok(()) = changes.changed() => break,
                }
            }
        }
    }
}

/// Whether `e` says this process, not the peer, is out of a resource a
/// new connection needs: file descriptors (`EMFILE`, `ENFILE`), local
/// ports or addresses (`EADDRNOTAVAIL`), or kernel buffers (`ENOBUFS`,
/// `ENOMEM`).
pub fn is_local_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::EADDRNOTAVAIL | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// [`is_local_exhaustion`] anywhere in `err`'s chain of sources (reqwest
/// wraps the connect error a few levels down).
fn error_chain_is_local_exhaustion(err: &(dyn std::error::Error + 'static)) -> bool {
    crate::error::chain(err)
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(is_local_exhaustion)
}

/// Checks skipped for want of sockets, logged at most once per
/// [`crate::telemetry::QUIET_PERIOD`]: in a descriptor flood every probe fails the same way.
static LOCAL_EXHAUSTION: Throttle = Throttle::new();
