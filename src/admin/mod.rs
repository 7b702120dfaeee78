//! The admin API (axum, on `admin.listen`): the client table, backend
//! state, health and the OpenAPI document.
//!
//! A write goes to the database first and is applied to the live bucket
//! only after it committed, so an acknowledged change survives a crash and
//! the limiter never runs limits the table does not hold. Writes to the
//! same client id are serialised (striped locks), so concurrent create /
//! update / delete of one client leave the table and the live bucket in
//! the same state.
//!
//! Every store operation, with the wait for its client's lock, ends within
//! `store.timeout`: a database that stops answering gets a 503 JSON error,
//! not a request that hangs. Every error, the ones axum's extractors and
//! router produce included, is JSON `{"code":N,"message":"..."}`.

pub mod client;
pub mod server;

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use crate::balancer::{Backend, Pool};
use crate::error::AdminError;
use crate::limiter::shared::SharedLimiter;
use crate::limiter::{ApiKey, ClientKey, Limits, Rate, Registry, MAX_PINNED};
use crate::reload::{ReloadError, Reloaded, Reloader};
use crate::store::{Client, ClientRow, ClientStore, StoreError};

/// Largest accepted request body.
pub const MAX_BODY: usize = 64 * 1024;
const LOCK_STRIPES: usize = 64;

/// The OpenAPI 3 description of this API, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// What the admin handlers share.
#[derive(Debug, Clone)]
pub struct AdminState {
    registry: Arc<Registry>,
    store: Arc<dyn ClientStore>,
    pool: Arc<Pool>,
    token: Option<Arc<str>>,
    locks: Arc<[tokio::sync::Mutex<()>]>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    shared: Option<Arc<SharedLimiter>>,
    store_timeout: Duration,
    body_read_timeout: Duration,
    openapi: Arc<str>,
    reloader: Option<Reloader>,
}

impl AdminState {
    /// State over the given parts; `token` is the required bearer token.
    pub fn new(
        registry: Arc<Registry>,
        store: Arc<dyn ClientStore>,
        pool: Arc<Pool>,
        token: Option<String>,
    ) -> Self {
        Self {
            registry,
            store,
            pool,
            openapi: openapi_document(token.is_some()).into(),
            token: token.map(Into::into),
            locks: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            metrics: None,
            shared: None,
            store_timeout: crate::store::DEFAULT_TIMEOUT,
            body_read_timeout: Duration::from_secs(10),
            reloader: None,
        }
    }

    /// Serves `POST /reload` with this reloader (the one SIGHUP uses, so
    /// the two are serialised).
    pub fn with_reloader(mut self, reloader: Reloader) -> Self {
        self.reloader = Some(reloader);
        self
    }

    /// Bounds each store operation, the wait for the client's lock
    /// included (`store.timeout`).
    pub fn with_store_timeout(mut self, timeout: Duration) -> Self {
        self.store_timeout = timeout;
        self
    }

    /// Time a client has to send its request body
    /// (`admin.body_read_timeout`).
    pub fn with_body_read_timeout(mut self, timeout: Duration) -> Self {
        self.body_read_timeout = timeout;
        self
    }

    /// Reports clients' levels from the shared (Redis) buckets, which are
    /// what every replica decides by.
    pub fn with_shared_limiter(mut self, shared: Option<Arc<SharedLimiter>>) -> Self {
        self.shared = shared;
        self
    }

    /// Serves `/metrics` from this Prometheus handle.
    pub fn with_metrics(
        mut self,
        handle: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ) -> Self {
        self.metrics = handle;
        self
    }

    async fn lock(&self, id: &ApiKey) -> tokio::sync::MutexGuard<'_, ()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut h);
        let i = (h.finish() as usize) % self.locks.len();
        self.locks[i].lock().await
    }
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/clients", get(list_clients).post(create_client))
        .route(
            "/clients/{id}",
            get(get_client).put(update_client).delete(delete_client),
        )
        .route("/backends", get(backends))
        .route("/backends/{name}/drain", post(drain_backend))
        .route("/backends/{name}/enable", post(enable_backend))
        .route("/healthz", get(healthz))
        .route("/reload", post(reload))
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(metrics_text))
        .fallback(|| async { AdminError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { AdminError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(state.clone(), read_body))
        // Outermost: an unauthorised client's body is never read.
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

async fn authorize(State(state): State<AdminState>, req: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_credentials)
            .unwrap_or("");
        if !constant_time_eq(presented.as_bytes(), token.as_bytes()) {
            return AdminError::Unauthorized.into_response();
        }
    }
    next.run(req).await
}

/// The token of an `Authorization: Bearer <token>` value. The scheme is
/// case-insensitive and followed by one or more spaces (RFC 9110 §11.1,
/// §11.4).
fn bearer_credentials(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim_start_matches(' '))
}

/// Reads the whole body (at most [`MAX_BODY`]) within
/// `admin.body_read_timeout`, so a client that stops sending mid-body gets
/// a 408 instead of holding its connection, and its client's lock, open.
async fn read_body(State(state): State<AdminState>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    let bytes = match tokio::time::timeout(state.body_read_timeout, limited.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return too_large().into_response();
        }
        Ok(Err(e)) => {
            return AdminError::BadRequest(format!("could not read the request body: {e}"))
                .into_response();
        }
        Err(_) => {
            return AdminError::RequestTimeout(format!(
                "the request body was not received within {:?} (admin.body_read_timeout)",
                state.body_read_timeout
            ))
            .into_response();
        }
    };
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

fn too_large() -> AdminError {
    AdminError::PayloadTooLarge(format!(
        "request body is larger than 64 KiB ({MAX_BODY} bytes)"
    ))
}

/// Compares without an early exit, so response time does not leak how much
/// of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `POST /clients`: limits as [`NewLimits`], and the id.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewClient {
    client_id: String,
    #[serde(deserialize_with = "whole_number")]
    capacity: u64,
    rate_per_sec: Option<f64>,
    rate: Option<Rate>,
}

/// `PUT /clients/{id}`: the capacity and exactly one of `rate_per_sec`
/// (tokens per second) and `rate` (`"1000/day"`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewLimits {
    #[serde(deserialize_with = "whole_number")]
    capacity: u64,
    rate_per_sec: Option<f64>,
    rate: Option<Rate>,
}

/// A non-negative integer, written `3` or `3.0`: JSON Schema's `integer`
/// (what the OpenAPI document promises) is any number without a fraction.
fn whole_number<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct Whole;
    impl serde::de::Visitor<'_> for Whole {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a whole number")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(format!("{v} is negative")))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<u64, E> {
            // 2^64 is the first f64 past u64::MAX; below it the cast is exact
            // for whole numbers.
            if v.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&v) {
                Ok(v as u64)
            } else {
                Err(E::invalid_value(serde::de::Unexpected::Float(v), &self))
            }
        }
    }
    d.deserialize_any(Whole)
}

/// `Json<T>` whose rejections are [`AdminError`]s, so they are JSON too.
struct JsonBody<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = AdminError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AdminError> {
        body(Json::<T>::from_request(req, state).await).map(JsonBody)
    }
}

/// The `{id}` path segment, validated as a client id; rejections are
/// [`AdminError`]s (`%FF` is "not UTF-8", not axum's plain-text error).
struct ClientId(ApiKey);

impl<S: Send + Sync> FromRequestParts<S> for ClientId {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AdminError> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e: PathRejection| {
                AdminError::BadRequest(format!("client id in the path: {}", e.body_text()))
            })?;
        api_key(&id).map(Self)
    }
}

/// A client as the API shows it.
#[derive(Debug, serde::Serialize)]
struct ClientView {
    client_id: String,
    capacity: u32,
    /// Always there, also for a client given a `rate` (then derived).
    rate_per_sec: f64,
    /// The rate as written (`"1000/day"`), or null if it was given as
    /// `rate_per_sec`.
    rate: Option<String>,
    /// Current level, fractions included.
    tokens: f64,
}

fn body<T>(parsed: Result<Json<T>, JsonRejection>) -> Result<T, AdminError> {
    parsed
        .map(|Json(v)| v)
        .map_err(|rejection| match rejection {
            JsonRejection::MissingJsonContentType(_) => {
                AdminError::UnsupportedMediaType("Content-Type must be application/json".into())
            }
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => too_large(),
            other => AdminError::BadRequest(other.body_text()),
        })
}

fn api_key(id: &str) -> Result<ApiKey, AdminError> {
    ApiKey::new(id).map_err(|e| AdminError::BadRequest(format!("client_id {e}")))
}

fn limits(
    capacity: u64,
    rate_per_sec: Option<f64>,
    rate: Option<Rate>,
) -> Result<Limits, AdminError> {
    Limits::from_parts(capacity, rate_per_sec, rate)
        .map_err(|e| AdminError::BadRequest(e.to_string()))
}

/// A row's view with this replica's level (its capacity if it has no
/// live bucket).
fn view(state: &AdminState, row: &ClientRow) -> ClientView {
    let tokens = row
        .key()
        .and_then(|k| state.registry.tokens(&k))
        .unwrap_or(f64::from(row.capacity()));
    view_with(row, tokens)
}

/// A row as written, rejected rows included: the API shows the table.
fn view_with(row: &ClientRow, tokens: f64) -> ClientView {
    ClientView {
        client_id: row.client_id().to_owned(),
        capacity: row.capacity(),
        rate_per_sec: row.rate_per_sec(),
        rate: row.rate(),
        tokens,
    }
}

/// Views of `rows` with their current levels: the shared buckets' with
/// shared limits (this replica's own if Redis cannot answer), else the
/// local ones.
async fn views(state: &AdminState, rows: &[ClientRow]) -> Vec<ClientView> {
    if let Some(shared) = &state.shared {
        let buckets: Vec<(String, u32, f64)> = rows
            .iter()
            .filter_map(|r| Some((r.key()?.encode(), r.capacity(), r.rate_per_sec())))
            .collect();
        if buckets.len() == rows.len() {
            match shared.levels(&buckets).await {
                Ok(levels) => {
                    return rows
                        .iter()
                        .zip(levels)
                        .map(|(r, tokens)| view_with(r, tokens))
                        .collect();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "shared levels unavailable; reporting this replica's");
                }
            }
        }
    }
    rows.iter().map(|r| view(state, r)).collect()
}

async fn view_one(state: &AdminState, row: &ClientRow) -> ClientView {
    if state.shared.is_some() {
        if let Some(v) = views(state, std::slice::from_ref(row)).await.pop() {
            return v;
        }
    }
    view(state, row)
}

/// What a store operation was doing, for its error message.
#[derive(Debug, Clone, Copy)]
enum Op {
    Read,
    Write,
}

fn store_error(op: Op, e: StoreError) -> AdminError {
    match e {
        // The store's own wording: one home for each message.
        e @ StoreError::AlreadyExists(_) => AdminError::Conflict(e.to_string()),
        e @ StoreError::NotFound(_) => AdminError::NotFound(e.to_string()),
        StoreError::Timeout(after) => {
            tracing::error!(?op, ?after, "client table did not answer");
            AdminError::Unavailable(match op {
                Op::Read => format!("the client table did not answer within {after:?}"),
                Op::Write => format!(
                    "the client table did not answer within {after:?}; the change may or may \
                     not have been stored: repeat it (PUT and DELETE can be repeated; a \
                     repeated POST answers 409 if the first one was stored)"
                ),
            })
        }
        other => {
            tracing::error!(?op, error = %other, "client table operation failed");
            // The database's own message stays in the log: it may name
            // hosts, users or schema details.
            AdminError::Internal(
                match op {
                    Op::Read => {
                        "the client table could not be read (the cause is in tollgate's log)"
                    }
                    Op::Write => {
                        "the client table could not be written (the cause is in tollgate's log)"
                    }
                }
                .into(),
            )
        }
    }
}

/// Runs `work` (a client's lock, its store operation and the live update)
/// within `store.timeout`, so a hung database cannot queue writes behind
/// one client's lock, each waiting its own full timeout.
async fn within<T>(
    state: &AdminState,
    op: Op,
    work: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, AdminError> {
    tokio::time::timeout(state.store_timeout, work)
        .await
        .unwrap_or(Err(StoreError::Timeout(state.store_timeout)))
        .map_err(|e| store_error(op, e))
}

async fn list_clients(
    State(state): State<AdminState>,
) -> Result<Json<Vec<ClientView>>, AdminError> {
    let rows = within(&state, Op::Read, state.store.list()).await?;
    Ok(Json(views(&state, &rows).await))
}

async fn get_client(
    State(state): State<AdminState>,
    ClientId(id): ClientId,
) -> Result<Json<ClientView>, AdminError> {
    let row = within(&state, Op::Read, state.store.get(&id))
        .await?
        .ok_or_else(|| store_error(Op::Read, StoreError::NotFound(id.as_str().to_owned())))?;
    Ok(Json(view_one(&state, &row).await))
}

async fn create_client(
    State(state): State<AdminState>,
    JsonBody(new): JsonBody<NewClient>,
) -> Result<(StatusCode, Json<ClientView>), AdminError> {
    let id = api_key(&new.client_id)?;
    let limits = limits(new.capacity, new.rate_per_sec, new.rate)?;
    if state.registry.pinned_len() >= MAX_PINNED {
        return Err(AdminError::Conflict(format!(
            "the client table holds its maximum of {MAX_PINNED} clients"
        )));
    }
    let client = Client { id, limits };
    within(&state, Op::Write, async {
        let _serial = state.lock(&client.id).await;
        state.store.create(&client).await?;
        apply(&state, &client.key(), Some(client.limits));
        Ok(())
    })
    .await?;
    let row = ClientRow::Client(client);
    Ok((StatusCode::CREATED, Json(view_one(&state, &row).await)))
}

async fn update_client(
    State(state): State<AdminState>,
    ClientId(id): ClientId,
    JsonBody(new): JsonBody<NewLimits>,
) -> Result<Json<ClientView>, AdminError> {
    let client = Client {
        id,
        limits: limits(new.capacity, new.rate_per_sec, new.rate)?,
    };
    within(&state, Op::Write, async {
        let _serial = state.lock(&client.id).await;
        state.store.update(&client).await?;
        apply(&state, &client.key(), Some(client.limits));
        Ok(())
    })
    .await?;
    Ok(Json(view_one(&state, &ClientRow::Client(client)).await))
}

async fn delete_client(
    State(state): State<AdminState>,
    ClientId(id): ClientId,
) -> Result<StatusCode, AdminError> {
    within(&state, Op::Write, async {
        let _serial = state.lock(&id).await;
        state.store.delete(&id).await?;
        apply(&state, &ClientKey::Api(id.clone()), None);
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Applies a committed change to the live bucket: own limits (pinned), or
/// back to the defaults.
fn apply(state: &AdminState, key: &ClientKey, limits: Option<Limits>) {
    match limits {
        Some(l) => {
            if let Err(e) = state.registry.set_limits(key, l) {
                // Only possible past MAX_PINNED, checked before the write.
                tracing::error!(%key, error = %e, "could not apply new limits");
            }
        }
        None => {
            state.registry.unpin(key);
        }
    }
}

/// A backend as `/backends` shows it.
#[derive(Debug, serde::Serialize)]
struct BackendView {
    name: String,
    url: String,
    weight: u32,
    state: crate::balancer::State,
    healthy: bool,
    in_flight: usize,
    consecutive_successes: u32,
    consecutive_failures: u32,
}

impl From<&Backend> for BackendView {
    fn from(b: &Backend) -> Self {
        Self {
            name: b.name().to_string(),
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

async fn backends(State(state): State<AdminState>) -> Json<Vec<BackendView>> {
    Json(
        state
            .pool
            .backends()
            .iter()
            .map(|b| BackendView::from(b.as_ref()))
            .collect(),
    )
}

/// `POST /backends/{name}/drain`: no new requests, in-flight ones finish.
async fn drain_backend(
    State(state): State<AdminState>,
    BackendName(name): BackendName,
) -> Result<Json<BackendView>, AdminError> {
    state
        .pool
        .drain(&name)
        .map(|b| Json(BackendView::from(b.as_ref())))
        .ok_or_else(|| no_backend(&name))
}

/// `POST /backends/{name}/enable`: back in rotation.
async fn enable_backend(
    State(state): State<AdminState>,
    BackendName(name): BackendName,
) -> Result<Json<BackendView>, AdminError> {
    state
        .pool
        .enable(&name)
        .map(|b| Json(BackendView::from(b.as_ref())))
        .ok_or_else(|| no_backend(&name))
}

fn no_backend(name: &str) -> AdminError {
    AdminError::NotFound(format!("no backend named {name:?}"))
}

/// The `{name}` path segment; rejections are [`AdminError`]s.
struct BackendName(String);

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

/// `POST /reload`: 200 with what changed; 400 with every problem of an
/// invalid file (the running configuration stays).
async fn reload(State(state): State<AdminState>) -> Result<Json<Reloaded>, AdminError> {
    let reloader = state
        .reloader
        .as_ref()
        .ok_or_else(|| AdminError::NotFound("this process has no config to reload".into()))?;
    match reloader.reload_logged().await {
        Ok(reloaded) => Ok(Json(reloaded)),
        Err(ReloadError::Invalid(e)) => Err(AdminError::InvalidConfig(
            e.problems.iter().map(ToString::to_string).collect(),
        )),
        Err(e) => Err(AdminError::Internal(e.to_string())),
    }
}

async fn healthz(State(state): State<AdminState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "status": "ok",
        "healthy_backends": state.pool.healthy_count(),
        "tracked_clients": state.registry.len(),
    }))
}

async fn metrics_text(State(state): State<AdminState>) -> Result<Response, AdminError> {
    let handle = state.metrics.as_ref().ok_or_else(|| {
        AdminError::NotFound("metrics are off: another metrics recorder was installed first".into())
    })?;
    let backends = state.pool.backends();
    let labels: Vec<_> = backends.iter().map(|b| b.label()).collect();
    let gauges = crate::telemetry::StateGauges {
        backends: backends
            .iter()
            .zip(&labels)
            .map(|(b, label)| crate::telemetry::BackendGauge {
                label,
                healthy: b.is_healthy(),
                in_flight: b.in_flight(),
            })
            .collect(),
        clients_tracked: state.registry.len(),
        clients_pinned: state.registry.pinned_len(),
    };
    let text = crate::telemetry::render(handle, &gauges);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

async fn openapi(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi.to_string(),
    )
}

/// [`OPENAPI`] as this server runs it: without `admin.token` no request
/// is authenticated, so the bearer scheme and the 401 answers go.
fn openapi_document(token: bool) -> String {
    if token {
        return OPENAPI.to_owned();
    }
    let Ok(mut doc) = serde_json::from_str::<serde_json::Value>(OPENAPI) else {
        // A unit test parses it; this cannot happen in a build that passed.
        return OPENAPI.to_owned();
    };
    let Some(root) = doc.as_object_mut() else {
        return OPENAPI.to_owned();
    };
    root.remove("security");
    if let Some(components) = root.get_mut("components").and_then(|c| c.as_object_mut()) {
        components.remove("securitySchemes");
        if let Some(responses) = components
            .get_mut("responses")
            .and_then(|r| r.as_object_mut())
        {
            responses.remove("Unauthorized");
        }
    }
    if let Some(paths) = root.get_mut("paths").and_then(|p| p.as_object_mut()) {
        for item in paths.values_mut().filter_map(|p| p.as_object_mut()) {
            // Operations are objects with `responses`; `parameters` is a list.
            for op in item.values_mut().filter_map(|o| o.as_object_mut()) {
                if let Some(responses) = op.get_mut("responses").and_then(|r| r.as_object_mut()) {
                    responses.remove("401");
                }
            }
        }
    }
    doc.to_string()
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        self.to_response().map(axum::body::Body::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    #[test]
    fn bearer_scheme_any_case() {
        assert_eq!(bearer_credentials("Bearer abc"), Some("abc"));
        assert_eq!(bearer_credentials("bearer  abc"), Some("abc"));
        assert_eq!(bearer_credentials("BEARER abc"), Some("abc"));
        assert_eq!(bearer_credentials("Bearerabc"), None);
        assert_eq!(bearer_credentials("Basic abc"), None);
    }

    #[test]
    fn openapi_without_a_token_has_no_security() {
        let doc: serde_json::Value =
            serde_json::from_str(&openapi_document(false)).expect("valid JSON");
        assert!(doc.get("security").is_none());
        assert!(doc["components"].get("securitySchemes").is_none());
        assert!(doc["components"]["responses"].get("Unauthorized").is_none());
        for item in doc["paths"].as_object().expect("paths").values() {
            for op in item.as_object().expect("path item").values() {
                assert!(op.get("responses").and_then(|r| r.get("401")).is_none());
            }
        }
        // With a token the document is served as written.
        assert_eq!(openapi_document(true), OPENAPI);
    }

    #[test]
    fn openapi_is_json() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("valid JSON");
        assert_eq!(
            doc["openapi"].as_str().map(|v| v.starts_with("3.")),
            Some(true)
        );
    }
}
