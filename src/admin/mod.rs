//! The admin API (axum, on `admin.listen`): the client table, backend
//! state, health and the OpenAPI document.
//!
//! A write goes to the database first and is applied to the live bucket
//! only after it committed, so an acknowledged change survives a crash and
//! the limiter never runs limits the table does not hold. Writes to the
//! same client id are serialised (striped locks), so concurrent create /
//! update / delete of one client leave the table and the live bucket in
//! the same state.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use crate::balancer::Pool;
use crate::error::AdminError;
use crate::limiter::shared::SharedLimiter;
use crate::limiter::{ClientKey, Limits, Registry, MAX_PINNED};
use crate::store::snapshot::encode_key;
use crate::store::{ClientRecord, ClientStore, StoreError};

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
            token: token.map(Into::into),
            locks: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            metrics: None,
            shared: None,
        }
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

    async fn lock(&self, client_id: &str) -> tokio::sync::MutexGuard<'_, ()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        client_id.hash(&mut h);
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
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(metrics_text))
        .fallback(|| async { AdminError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { AdminError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

async fn authorize(State(state): State<AdminState>, req: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(presented.as_bytes(), token.as_bytes()) {
            return AdminError::Unauthorized.into_response();
        }
    }
    next.run(req).await
}

/// Compares without an early exit, so response time does not leak how much
/// of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewClient {
    client_id: String,
    capacity: u64,
    rate_per_sec: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewLimits {
    capacity: u64,
    rate_per_sec: f64,
}

/// A client as the API shows it.
#[derive(Debug, serde::Serialize)]
struct ClientView {
    client_id: String,
    capacity: u32,
    rate_per_sec: f64,
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
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                AdminError::PayloadTooLarge(format!(
                    "request body is larger than 64 KiB ({MAX_BODY} bytes)"
                ))
            }
            other => AdminError::BadRequest(other.body_text()),
        })
}

fn client_key(id: &str) -> Result<ClientKey, AdminError> {
    ClientKey::api(id).map_err(|e| AdminError::BadRequest(format!("client_id {e}")))
}

fn limits(capacity: u64, rate: f64) -> Result<Limits, AdminError> {
    Limits::new(capacity, rate).map_err(|e| AdminError::BadRequest(e.to_string()))
}

fn view(state: &AdminState, r: ClientRecord) -> ClientView {
    let tokens = ClientKey::api(&r.client_id)
        .ok()
        .and_then(|k| state.registry.tokens(&k))
        .unwrap_or(f64::from(r.capacity));
    view_with(r, tokens)
}

fn view_with(r: ClientRecord, tokens: f64) -> ClientView {
    ClientView {
        client_id: r.client_id,
        capacity: r.capacity,
        rate_per_sec: r.rate_per_sec,
        tokens,
    }
}

/// Views of `records` with their current levels: the shared buckets' with
/// shared limits (this replica's own if Redis cannot answer), else the
/// local ones.
async fn views(state: &AdminState, records: Vec<ClientRecord>) -> Vec<ClientView> {
    if let Some(shared) = &state.shared {
        let buckets: Vec<(String, u32, f64)> = records
            .iter()
            .filter_map(|r| {
                let key = ClientKey::api(&r.client_id).ok()?;
                Some((encode_key(&key), r.capacity, r.rate_per_sec))
            })
            .collect();
        if buckets.len() == records.len() {
            match shared.levels(&buckets).await {
                Ok(levels) => {
                    return records
                        .into_iter()
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
    records.into_iter().map(|r| view(state, r)).collect()
}

async fn view_one(state: &AdminState, record: ClientRecord) -> ClientView {
    if state.shared.is_some() {
        if let Some(v) = views(state, vec![record.clone()]).await.pop() {
            return v;
        }
    }
    view(state, record)
}

fn store_error(e: StoreError) -> AdminError {
    match e {
        StoreError::AlreadyExists(id) => {
            AdminError::Conflict(format!("client {id:?} already exists"))
        }
        StoreError::NotFound(id) => AdminError::NotFound(format!("client {id:?} not found")),
        other => {
            tracing::error!(error = %other, "client table write failed");
            AdminError::Internal("the client table could not be written".into())
        }
    }
}

async fn list_clients(
    State(state): State<AdminState>,
) -> Result<Json<Vec<ClientView>>, AdminError> {
    let records = state.store.list().await.map_err(store_error)?;
    Ok(Json(views(&state, records).await))
}

async fn get_client(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<ClientView>, AdminError> {
    client_key(&id)?;
    let record = state.store.get(&id).await.map_err(store_error)?;
    let record = record.ok_or_else(|| AdminError::NotFound(format!("client {id:?} not found")))?;
    Ok(Json(view_one(&state, record).await))
}

async fn create_client(
    State(state): State<AdminState>,
    parsed: Result<Json<NewClient>, JsonRejection>,
) -> Result<(StatusCode, Json<ClientView>), AdminError> {
    let new = body(parsed)?;
    let key = client_key(&new.client_id)?;
    let limits = limits(new.capacity, new.rate_per_sec)?;
    if state.registry.pinned_len() >= MAX_PINNED {
        return Err(AdminError::Conflict(format!(
            "the client table holds its maximum of {MAX_PINNED} clients"
        )));
    }
    let record = ClientRecord {
        client_id: new.client_id,
        capacity: limits.capacity(),
        rate_per_sec: limits.rate_per_sec(),
    };
    let _serial = state.lock(&record.client_id).await;
    state.store.create(&record).await.map_err(store_error)?;
    apply(&state, &key, Some(limits));
    Ok((StatusCode::CREATED, Json(view_one(&state, record).await)))
}

async fn update_client(
    State(state): State<AdminState>,
    Path(id): Path<String>,
    parsed: Result<Json<NewLimits>, JsonRejection>,
) -> Result<Json<ClientView>, AdminError> {
    let key = client_key(&id)?;
    let new = body(parsed)?;
    let limits = limits(new.capacity, new.rate_per_sec)?;
    let record = ClientRecord {
        client_id: id,
        capacity: limits.capacity(),
        rate_per_sec: limits.rate_per_sec(),
    };
    let _serial = state.lock(&record.client_id).await;
    state.store.update(&record).await.map_err(store_error)?;
    apply(&state, &key, Some(limits));
    Ok(Json(view_one(&state, record).await))
}

async fn delete_client(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<StatusCode, AdminError> {
    let key = client_key(&id)?;
    let _serial = state.lock(&id).await;
    state.store.delete(&id).await.map_err(store_error)?;
    apply(&state, &key, None);
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

#[derive(Debug, serde::Serialize)]
struct BackendView {
    url: String,
    healthy: bool,
    in_flight: usize,
    consecutive_successes: u32,
    consecutive_failures: u32,
}

async fn backends(State(state): State<AdminState>) -> Json<Vec<BackendView>> {
    Json(
        state
            .pool
            .backends()
            .iter()
            .map(|b| BackendView {
                url: b.url().to_string(),
                healthy: b.is_healthy(),
                in_flight: b.in_flight(),
                consecutive_successes: b.consecutive_successes(),
                consecutive_failures: b.consecutive_failures(),
            })
            .collect(),
    )
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
    let text = crate::telemetry::render(handle, &state.pool, &state.registry);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
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
    fn openapi_is_json() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("valid JSON");
        assert_eq!(
            doc["openapi"].as_str().map(|v| v.starts_with("3.")),
            Some(true)
        );
    }
}
