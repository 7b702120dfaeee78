//! The backends, pools and routes as the admin API shows them, and the
//! operator's drain and enable.
//!
//! Every handler reads the routing in force when it runs
//! ([`crate::routing::InForce`]), never a copy taken at start: a reload
//! that adds a pool, or a route, is seen by the next request. Backends
//! are listed pool by pool, `default` first, then the others by name.
//!
//! A backend's name is unique within its pool, not across pools, so the
//! drain and enable of `/backends/{name}/...` (from before pools) act on
//! the one backend of that name when there is one, and answer 409 naming
//! the pools when there are several: `/pools/{pool}/backends/{name}/...`
//! says which.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::Json;
use utoipa::{IntoParams, ToSchema};

use super::AdminState;
use crate::balancer::{Backend, StrategyName};
use crate::error::{AdminError, ErrorBody};
use crate::routing::pools::{PoolUse, RetryOn};
use crate::routing::route::Route;
use crate::routing::trie::PathRule;
use crate::routing::Routing;

/// A backend as `/backends` and `/pools` show it.
#[derive(Debug, serde::Serialize, ToSchema)]
#[schema(as = Backend)]
pub(super) struct BackendView {
    /// `backends[].name`; default `host:port`. Unique within its pool.
    name: String,
    /// The pool it belongs to (`default`: the top-level `backends`).
    pool: String,
    url: String,
    #[schema(minimum = 1, maximum = 1000)]
    weight: u32,
    /// Whether it gets new requests: only when `active`. `draining` (the
    /// operator) shows first, then `unhealthy` (failed active checks), then
    /// `ejected` (consecutive 5xx answers).
    state: crate::balancer::State,
    /// Its active health checks pass.
    healthy: bool,
    in_flight: usize,
    /// Health results in a row that succeeded.
    #[schema(format = Int64)]
    consecutive_successes: u32,
    /// Health results in a row that failed (active checks and failed proxy
    /// attempts).
    #[schema(format = Int64)]
    consecutive_failures: u32,
}

impl BackendView {
    fn new(pool: &str, b: &Backend) -> Self {
        Self {
            name: b.name().to_string(),
            pool: pool.to_owned(),
            url: b.url().to_string(),
            weight: b.weight(),
            state: b.state(),
            healthy: b.is_healthy(),
            in_flight: b.in_flight(),
            consecutive_successes: b.consecutive_successes(),
            consecutive_failures: b.consecutive_failures(),
        }
    }
}

/// The backends of `pool`, in configuration order.
fn views(pool: &PoolUse) -> impl Iterator<Item = BackendView> + '_ {
    let backends = pool.pool.backends();
    (0..backends.len()).map(move |i| BackendView::new(&pool.name, &backends[i]))
}

#[utoipa::path(
    get,
    path = "/backends",
    summary = "Every backend of every pool (the default pool first, then the others by name), with its health and requests in flight",
    responses((status = 200, description = "backends", body = [BackendView]))
)]
pub(super) async fn list(State(state): State<AdminState>) -> Json<Vec<BackendView>> {
    let routing = state.routing.current();
    Json(routing.pools_in_order().flat_map(|p| views(p)).collect())
}

/// A pool's upstream timeouts, milliseconds (`proxy` and the pool's
/// `proxy` overrides).
#[derive(Debug, serde::Serialize, ToSchema)]
#[schema(as = PoolTimeouts)]
struct TimeoutsView {
    /// `connect_timeout`.
    connect_ms: u64,
    /// `request_timeout`: for the response headers.
    request_ms: u64,
    /// `backend_body_timeout`: the longest pause in a response body.
    backend_body_ms: u64,
    /// `upgrade_idle_timeout`: an idle upgraded tunnel is closed.
    upgrade_idle_ms: u64,
}

/// A failure a pool's retries are made for (`retries.on`).
#[derive(Debug, serde::Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum RetryReason {
    /// No connection could be made.
    ConnectFailure,
    /// The connection broke before a response came.
    Reset,
    /// The backend answered 502.
    #[serde(rename = "502")]
    BadGateway,
    /// The backend answered 503.
    #[serde(rename = "503")]
    Unavailable,
    /// No response headers within the request timeout.
    #[serde(rename = "504")]
    Timeout,
}

/// A pool's retry policy (`retries`).
#[derive(Debug, serde::Serialize, ToSchema)]
#[schema(as = PoolRetries)]
struct RetriesView {
    /// Retries after the first try, each on another backend.
    #[schema(format = Int64)]
    attempts: u32,
    /// The failures retried (requests without a body only; a method
    /// that is not idempotent only after `connect_failure`).
    on: Vec<RetryReason>,
    /// Retries at most this percent of the pool's requests over 10 s;
    /// null: no budget.
    #[schema(required = true, minimum = 1, maximum = 100)]
    budget_percent: Option<u32>,
}

/// A pool as `/pools` shows it.
#[derive(Debug, serde::Serialize, ToSchema)]
#[schema(as = Pool)]
pub(super) struct PoolView {
    /// `default` (the top-level `backends`) or a key of `pools`.
    name: String,
    strategy: StrategyName,
    /// How its backends are spoken to (`proxy.protocol` or the pool's own).
    protocol: crate::balancer::Protocol,
    timeouts: TimeoutsView,
    retries: RetriesView,
    /// Requests in flight per backend at most (`max_connections`; 0:
    /// unlimited).
    max_connections: usize,
    /// Its backends, in configuration order.
    backends: Vec<BackendView>,
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl PoolView {
    fn new(p: &PoolUse) -> Self {
        let t = &p.timeouts;
        let RetryOn {
            connect_failure,
            reset,
            bad_gateway,
            unavailable,
            timeout,
        } = p.retries.on;
        let on = [
            (connect_failure, RetryReason::ConnectFailure),
            (reset, RetryReason::Reset),
            (bad_gateway, RetryReason::BadGateway),
            (unavailable, RetryReason::Unavailable),
            (timeout, RetryReason::Timeout),
        ];
        Self {
            name: p.name.to_string(),
            strategy: p.strategy,
            protocol: p.protocol,
            timeouts: TimeoutsView {
                connect_ms: ms(t.connect),
                request_ms: ms(t.request),
                backend_body_ms: ms(t.backend_body),
                upgrade_idle_ms: ms(t.upgrade_idle),
            },
            retries: RetriesView {
                attempts: p.retries.attempts,
                on: on
                    .into_iter()
                    .filter(|(on, _)| *on)
                    .map(|(_, r)| r)
                    .collect(),
                budget_percent: p.retries.budget_percent,
            },
            max_connections: p.pool.max_connections(),
            backends: views(p).collect(),
        }
    }
}

#[utoipa::path(
    get,
    path = "/pools",
    summary = "Every pool (the default pool first, then the others by name): its strategy, timeouts, retries and backends",
    responses((status = 200, description = "pools", body = [PoolView]))
)]
pub(super) async fn pools(State(state): State<AdminState>) -> Json<Vec<PoolView>> {
    let routing = state.routing.current();
    Json(routing.pools_in_order().map(|p| PoolView::new(p)).collect())
}

/// What a route matches (`routes[].match`); a condition not written
/// matches everything.
#[derive(Debug, serde::Serialize, ToSchema)]
#[schema(as = RouteMatch)]
struct MatchView {
    /// Host names and `*.` wildcards, lower case; empty: every host.
    hosts: Vec<String>,
    /// This path and those below it, on segment boundaries.
    #[schema(required = true)]
    path_prefix: Option<String>,
    /// This path only.
    #[schema(required = true)]
    path_exact: Option<String>,
    /// Paths compared without regard to ASCII case.
    ignore_case: bool,
    /// Methods; empty: every method (`GET` takes `HEAD` too).
    methods: Vec<String>,
    /// Header values required: an exact value, or `*` for present.
    headers: BTreeMap<String, String>,
}

/// `routes[].rewrite`.
#[derive(Debug, serde::Serialize, ToSchema)]
#[schema(as = RouteRewrite)]
struct RewriteView {
    /// What replaces the matched `path_prefix` (or `path_exact`).
    prefix: String,
}

/// A route as `/routes` shows it, with its counts.
#[derive(Debug, serde::Serialize, ToSchema)]
#[schema(as = Route)]
pub(super) struct RouteView {
    /// `routes[].name`.
    name: String,
    #[serde(rename = "match")]
    matcher: MatchView,
    /// The pool its requests go to.
    pool: String,
    /// Null: the path goes to the backend as it came.
    #[schema(required = true)]
    rewrite: Option<RewriteView>,
    /// Requests that took it since the route was first configured (kept
    /// across reloads that keep its name).
    #[schema(format = Int64, minimum = 0)]
    requests: u64,
    /// Of those, refused with 429.
    #[schema(format = Int64, minimum = 0)]
    limited: u64,
}

impl RouteView {
    fn new(r: &Route) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        let (path_prefix, path_exact) = match r.path() {
            PathRule::Any => (None, None),
            PathRule::Prefix(p) => (Some(p.clone()), None),
            PathRule::Exact(p) => (None, Some(p.clone())),
        };
        Self {
            name: r.name.to_string(),
            matcher: MatchView {
                hosts: r.hosts().iter().map(ToString::to_string).collect(),
                path_prefix,
                path_exact,
                ignore_case: r.ignore_case(),
                methods: r.methods().iter().map(ToString::to_string).collect(),
                headers: r
                    .headers()
                    .iter()
                    .map(|(name, want)| {
                        let value = want.as_ref().map_or_else(
                            || "*".to_owned(),
                            |v| String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        );
                        (name.to_string(), value)
                    })
                    .collect(),
            },
            pool: r.pool.name.to_string(),
            rewrite: r.rewrite_to().map(|to| RewriteView {
                prefix: to.to_owned(),
            }),
            requests: r.stats.requests.load(Relaxed),
            limited: r.stats.limited.load(Relaxed),
        }
    }
}

#[utoipa::path(
    get,
    path = "/routes",
    summary = "Every route in the order they are tried: what it matches, its pool, its rewrite, and how many requests took it and were refused",
    responses((status = 200, description = "routes; empty without `routes`", body = [RouteView]))
)]
pub(super) async fn routes(State(state): State<AdminState>) -> Json<Vec<RouteView>> {
    let routing = state.routing.current();
    Json(routing.routes().iter().map(RouteView::new).collect())
}

/// The `{name}` of `/backends/{name}/...` as the OpenAPI document
/// describes it; [`BackendName`] parses it.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // only its IntoParams impl is used
struct BackendPath {
    /// A backend's name (`backends[].name`, default `host:port`).
    #[param(min_length = 1)]
    name: String,
}

/// The `{pool}` and `{name}` of `/pools/{pool}/backends/{name}/...` as
/// the OpenAPI document describes them; [`PoolBackend`] parses them.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // only its IntoParams impl is used
struct PoolBackendPath {
    /// A pool's name (`default`, or a key of `pools`).
    #[param(min_length = 1)]
    pool: String,
    /// The name of one of its backends.
    #[param(min_length = 1)]
    name: String,
}

/// What the operator does to a backend.
#[derive(Debug, Clone, Copy)]
enum Action {
    Drain,
    Enable,
}

impl Action {
    fn path(self) -> &'static str {
        match self {
            Self::Drain => "drain",
            Self::Enable => "enable",
        }
    }
}

/// The pool that holds the one backend named `name`: 404 when none does,
/// 409 naming them when several do (and the route that says which).
fn only_pool_with(
    routing: &Routing,
    name: &str,
    action: Action,
) -> Result<Arc<PoolUse>, AdminError> {
    let holding: Vec<&Arc<PoolUse>> = routing
        .pools_in_order()
        .filter(|p| p.pool.find(name).is_some())
        .collect();
    match holding.as_slice() {
        [] => Err(no_backend(name)),
        [one] => Ok(Arc::clone(one)),
        several => {
            let names: Vec<&str> = several.iter().map(|p| &*p.name).collect();
            Err(AdminError::Conflict(format!(
                "backend name {name:?} is in {} pools ({}): name the pool \
                 (POST /pools/{{pool}}/backends/{}/{})",
                names.len(),
                names.join(", "),
                super::client::encode(name),
                action.path()
            )))
        }
    }
}

/// Drains or enables the backend `name` of `pool` (`None`: the one pool
/// that has a backend of that name).
fn switch(
    state: &AdminState,
    pool: Option<&str>,
    name: &str,
    action: Action,
) -> Result<Json<BackendView>, AdminError> {
    let routing = state.routing.current();
    let target = match pool {
        Some(p) => routing
            .pools()
            .get(p)
            .cloned()
            .ok_or_else(|| AdminError::NotFound(format!("no pool named {p:?}")))?,
        None => only_pool_with(&routing, name, action)?,
    };
    let backend = match action {
        Action::Drain => target.pool.drain(name),
        Action::Enable => target.pool.enable(name),
    };
    backend
        .map(|b| Json(BackendView::new(&target.name, &b)))
        .ok_or_else(|| match pool {
            Some(p) => AdminError::NotFound(format!("pool {p:?} has no backend named {name:?}")),
            None => no_backend(name),
        })
}

fn no_backend(name: &str) -> AdminError {
    AdminError::NotFound(format!("no backend named {name:?}"))
}

/// `POST /backends/{name}/drain`: no new requests, in-flight ones finish.
#[utoipa::path(
    post,
    path = "/backends/{name}/drain",
    summary = "Take a backend out of rotation: no new requests, in-flight ones finish, health checks go on; kept across a reload that keeps the backend. For a name that more than one pool has, use /pools/{pool}/backends/{name}/drain",
    params(BackendPath),
    responses(
        (status = 200, description = "the backend, now draining", body = BackendView),
        (status = 400, description = "the name is not UTF-8", body = ErrorBody<'static>),
        (status = 404, description = "no backend has this name", body = ErrorBody<'static>),
        (status = 409, description = "backends of more than one pool have this name; the message names the pools", body = ErrorBody<'static>),
    )
)]
pub(super) async fn drain(
    State(state): State<AdminState>,
    BackendName(name): BackendName,
) -> Result<Json<BackendView>, AdminError> {
    switch(&state, None, &name, Action::Drain)
}

/// `POST /backends/{name}/enable`: back in rotation.
#[utoipa::path(
    post,
    path = "/backends/{name}/enable",
    summary = "Put a drained backend back in rotation (it gets requests when its health allows). For a name that more than one pool has, use /pools/{pool}/backends/{name}/enable",
    params(BackendPath),
    responses(
        (status = 200, description = "the backend", body = BackendView),
        (status = 400, description = "the name is not UTF-8", body = ErrorBody<'static>),
        (status = 404, description = "no backend has this name", body = ErrorBody<'static>),
        (status = 409, description = "backends of more than one pool have this name; the message names the pools", body = ErrorBody<'static>),
    )
)]
pub(super) async fn enable(
    State(state): State<AdminState>,
    BackendName(name): BackendName,
) -> Result<Json<BackendView>, AdminError> {
    switch(&state, None, &name, Action::Enable)
}

/// `POST /pools/{pool}/backends/{name}/drain`.
#[utoipa::path(
    post,
    path = "/pools/{pool}/backends/{name}/drain",
    summary = "Take one pool's backend out of rotation: no new requests, in-flight ones finish, health checks go on; the other pools' backends of the same name are untouched",
    params(PoolBackendPath),
    responses(
        (status = 200, description = "the backend, now draining", body = BackendView),
        (status = 400, description = "the pool or backend name is not UTF-8", body = ErrorBody<'static>),
        (status = 404, description = "no pool has this name, or the pool has no backend of this name", body = ErrorBody<'static>),
    )
)]
pub(super) async fn drain_in_pool(
    State(state): State<AdminState>,
    PoolBackend(pool, name): PoolBackend,
) -> Result<Json<BackendView>, AdminError> {
    switch(&state, Some(&pool), &name, Action::Drain)
}

/// `POST /pools/{pool}/backends/{name}/enable`.
#[utoipa::path(
    post,
    path = "/pools/{pool}/backends/{name}/enable",
    summary = "Put one pool's drained backend back in rotation (it gets requests when its health allows)",
    params(PoolBackendPath),
    responses(
        (status = 200, description = "the backend", body = BackendView),
        (status = 400, description = "the pool or backend name is not UTF-8", body = ErrorBody<'static>),
        (status = 404, description = "no pool has this name, or the pool has no backend of this name", body = ErrorBody<'static>),
    )
)]
pub(super) async fn enable_in_pool(
    State(state): State<AdminState>,
    PoolBackend(pool, name): PoolBackend,
) -> Result<Json<BackendView>, AdminError> {
    switch(&state, Some(&pool), &name, Action::Enable)
}

/// The `{name}` path segment; rejections are [`AdminError`]s.
pub(super) struct BackendName(String);

impl<S: Send + Sync> FromRequestParts<S> for BackendName {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AdminError> {
        let Path(name) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e: PathRejection| {
                AdminError::BadRequest(format!("backend name in the path: {}", e.body_text()))
            })?;
        Ok(Self(name))
    }
}

/// The `{pool}` and `{name}` path segments; rejections are
/// [`AdminError`]s.
pub(super) struct PoolBackend(String, String);

impl<S: Send + Sync> FromRequestParts<S> for PoolBackend {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AdminError> {
        let Path((pool, name)) = Path::<(String, String)>::from_request_parts(parts, state)
            .await
            .map_err(|e: PathRejection| {
                AdminError::BadRequest(format!(
                    "pool or backend name in the path: {}",
                    e.body_text()
                ))
            })?;
        Ok(Self(pool, name))
    }
}
