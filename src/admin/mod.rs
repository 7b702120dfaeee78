//! The admin API (axum, on `admin.listen`): the client table, backend
//! state, health, the OpenAPI document, and the status page (`GET /`, an
//! HTML shell that holds no data and so is the one public route; its
//! script reads `GET /status` with the token, see [`crate::status`]).
//!
//! Each handler carries its `#[utoipa::path]` (route, parameters, body,
//! every answer it gives) and is routed through utoipa-axum's `routes!`,
//! so the document served at `/openapi.json` ([`openapi`]) is gathered
//! from exactly the routes the router serves.
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

mod backends;
pub mod client;
pub mod guard;
pub mod openapi;
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
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{AdminError, ErrorBody, InvalidConfigBody};
use crate::limiter::shared::{Bucket, SharedLimiter};
use crate::limiter::{ApiKey, ClientKey, Limits, Rate, Registry, MAX_PINNED};
use crate::reload::{ReloadError, Reloaded, Reloader};
use crate::routing::InForce;
use crate::status::{Board, StatusDocument};
use crate::store::writes::LocalWrites;
use crate::store::{Client, ClientRow, ClientStore, StoreError};

/// Largest accepted request body.
pub const MAX_BODY: usize = 64 * 1024;
const LOCK_STRIPES: usize = 64;

/// What the admin handlers share.
#[derive(Debug, Clone)]
pub struct AdminState {
    registry: Arc<Registry>,
    store: Arc<dyn ClientStore>,
    /// The routes and pools in force (a reload swaps them).
    routing: Arc<dyn InForce>,
    token: Option<Arc<str>>,
    locks: Arc<[tokio::sync::Mutex<()>]>,
    metrics: Option<crate::telemetry::Metrics>,
    shared: Option<Arc<SharedLimiter>>,
    store_timeout: Duration,
    body_read_timeout: Duration,
    /// Filled in by [`router`], from the routes it serves.
    openapi: Arc<str>,
    reloader: Option<Reloader>,
    status: Option<Arc<Board>>,
    /// Counts this replica's client writes, so a reload of the shared
    /// table cannot undo one (see [`crate::store::writes`]).
    writes: Arc<LocalWrites>,
    hosts: Arc<guard::AllowedHosts>,
    bad_tokens: Arc<guard::BadTokens>,
}

impl AdminState {
    /// State over the given parts; `routing` gives the routes and pools in
    /// force whenever asked; `token` is the required bearer token.
    pub fn new(
        registry: Arc<Registry>,
        store: Arc<dyn ClientStore>,
        routing: Arc<dyn InForce>,
        token: Option<String>,
    ) -> Self {
        Self {
            registry,
            store,
            routing,
            openapi: Arc::from(""),
            token: token.map(Into::into),
            locks: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            metrics: None,
            shared: None,
            store_timeout: crate::store::DEFAULT_TIMEOUT,
            body_read_timeout: Duration::from_secs(10),
            reloader: None,
            status: None,
            writes: LocalWrites::new(),
            hosts: Arc::new(guard::AllowedHosts::default()),
            bad_tokens: Arc::new(guard::BadTokens::new()),
        }
    }

    /// Counts client writes in `writes`, the counter the table sync of
    /// this replica orders its reads against.
    pub fn with_local_writes(mut self, writes: Arc<LocalWrites>) -> Self {
        self.writes = writes;
        self
    }

    /// Serves requests whose `Host` names `listen`'s address or one of
    /// `allowed_hosts` (`admin.allowed_hosts`), besides the loopback
    /// names; without this call, the loopback names only.
    pub fn with_allowed_hosts(
        mut self,
        listen: std::net::SocketAddr,
        allowed_hosts: &[String],
    ) -> Self {
        self.hosts = Arc::new(guard::AllowedHosts::new(listen, allowed_hosts));
        self
    }

    /// Serves `GET /status` (and so the status page) from this board.
    pub fn with_status(mut self, board: Arc<Board>) -> Self {
        self.status = Some(board);
        self
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

    /// Serves `/metrics` from these metrics (the running tollgate's).
    pub fn with_metrics(mut self, metrics: crate::telemetry::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    async fn lock(&self, id: &ApiKey) -> tokio::sync::MutexGuard<'_, ()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut h);
        let i = (h.finish() as usize) % self.locks.len();
        self.locks[i].lock().await
    }
}

/// The admin router, serving its OpenAPI document at `/openapi.json`.
pub fn router(mut state: AdminState) -> Router {
    let (routes, api) = routes().split_for_parts();
    state.openapi = openapi::render(api, state.token.is_some()).into();
    routes
        .fallback(|| async { AdminError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { AdminError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(state.clone(), read_body))
        // An unauthorised client's body is never read.
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        // Outermost: a request for another host, or a browser's for
        // another site, reaches nothing else (not even the token check).
        .layer(middleware::from_fn_with_state(state.clone(), guard::front))
        .with_state(state)
}

/// Every route with its handler's `#[utoipa::path]`: one `routes!` per
/// path (utoipa-axum gives each path in one call every handler's method).
fn routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::with_openapi(openapi::base())
        .routes(routes!(list_clients, create_client))
        .routes(routes!(get_client, update_client, delete_client))
        .routes(routes!(backends::list))
        .routes(routes!(backends::drain))
        .routes(routes!(backends::enable))
        .routes(routes!(backends::pools))
        .routes(routes!(backends::drain_in_pool))
        .routes(routes!(backends::enable_in_pool))
        .routes(routes!(backends::routes))
        .routes(routes!(healthz))
        .routes(routes!(reload))
        .routes(routes!(serve_openapi))
        .routes(routes!(metrics_text))
        .routes(routes!(status))
        .routes(routes!(status_page))
}

/// The OpenAPI document of this API as a server with (`token`) or without
/// `admin.token` serves it.
pub fn openapi_document(token: bool) -> String {
    openapi::render(routes().into_openapi(), token)
}

async fn authorize(State(state): State<AdminState>, req: Request, next: Next) -> Response {
    let public = matches!(*req.method(), http::Method::GET | http::Method::HEAD)
        && openapi::is_public(req.uri().path());
    if let (Some(token), false) = (&state.token, public) {
        // No Authorization at all is no guess: 401, not counted.
        let Some(authorization) = req.headers().get(header::AUTHORIZATION) else {
            return AdminError::Unauthorized.into_response();
        };
        let presented = authorization
            .to_str()
            .ok()
            .and_then(bearer_credentials)
            .unwrap_or("");
        let right = constant_time_eq(presented.as_bytes(), token.as_bytes());
        let peer = guard::peer(&req);
        match state
            .bad_tokens
            .judge(peer, right, std::time::Instant::now())
        {
            guard::Verdict::Pass => {}
            guard::Verdict::Wrong => return AdminError::Unauthorized.into_response(),
            guard::Verdict::Throttled(retry_after) => {
                return AdminError::TooManyBadTokens { retry_after }.into_response();
            }
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

/// `POST /clients`: a new client, its capacity and exactly one of
/// `rate_per_sec` and `rate`.
// "Exactly one of" is added to the schema by `openapi::render`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct NewClient {
    /// 1-256 bytes of ASCII letters, digits and `. _ - : ~ + / = @`.
    #[schema(min_length = 1, max_length = 256, pattern = r"^[A-Za-z0-9._:~+/=@-]+$")]
    client_id: String,
    /// Bucket size; `3.0` is accepted as 3.
    #[serde(deserialize_with = "whole_number")]
    #[schema(minimum = 1, maximum = 4294967295_u64)]
    capacity: u64,
    /// Refill rate, tokens per second. Give this or `rate`, not both.
    #[schema(minimum = 0, maximum = 1000000000)]
    rate_per_sec: Option<f64>,
    /// N tokens per unit, e.g. `1000/day`; kept exactly as given. Give this
    /// or `rate_per_sec`, not both.
    #[schema(value_type = Option<String>, pattern = "^[0-9]+/(s|min|hour|day)$")]
    rate: Option<Rate>,
}

/// `PUT /clients/{id}`: the capacity and exactly one of `rate_per_sec`
/// and `rate`.
// "Exactly one of" is added to the schema by `openapi::render`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Limits)]
struct NewLimits {
    /// Bucket size; `3.0` is accepted as 3.
    #[serde(deserialize_with = "whole_number")]
    #[schema(minimum = 1, maximum = 4294967295_u64)]
    capacity: u64,
    /// Refill rate, tokens per second. Give this or `rate`, not both.
    #[schema(minimum = 0, maximum = 1000000000)]
    rate_per_sec: Option<f64>,
    /// N tokens per unit, e.g. `1000/day`; kept exactly as given. Give this
    /// or `rate_per_sec`, not both.
    #[schema(value_type = Option<String>, pattern = "^[0-9]+/(s|min|hour|day)$")]
    rate: Option<Rate>,
}

/// The `{id}` of `/clients/{id}` as the OpenAPI document describes it;
/// [`ClientId`] parses it.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // only its IntoParams impl is used
struct ClientPath {
    /// A client_id, percent-encoded where needed.
    #[param(min_length = 1, max_length = 256, pattern = r"^[A-Za-z0-9._:~+/=@-]+$")]
    id: String,
}

/// The `{id}` of `DELETE /clients/{id}` as the OpenAPI document
/// describes it; [`RowId`] parses it.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // only its IntoParams impl is used
struct RowPath {
    /// The row's client_id as stored, percent-encoded where needed: any
    /// text, so that a row written by hand with an id that is no client_id
    /// can be removed too.
    #[param(min_length = 1, max_length = 4096)]
    id: String,
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
        let RowId(id) = RowId::from_request_parts(parts, state).await?;
        api_key(&id).map(Self)
    }
}

/// Longest id [`RowId`] takes: far past any client_id (256 bytes), short
/// enough to bound the statement.
const MAX_ROW_ID: usize = 4096;

/// The `{id}` path segment as any text of 1 to [`MAX_ROW_ID`] bytes: a
/// row's id as stored, which a row written by hand need not have made a
/// valid client_id. Rejections are [`AdminError`]s.
struct RowId(String);

impl<S: Send + Sync> FromRequestParts<S> for RowId {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AdminError> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e: PathRejection| {
                AdminError::BadRequest(format!("client id in the path: {}", e.body_text()))
            })?;
        if id.is_empty() || id.len() > MAX_ROW_ID {
            return Err(AdminError::BadRequest(format!(
                "client id in the path: 1 to {MAX_ROW_ID} bytes (got {})",
                id.len()
            )));
        }
        Ok(Self(id))
    }
}

/// A client as the API shows it: the table as written (a row written by
/// hand that makes no valid client is shown too).
#[derive(Debug, serde::Serialize, ToSchema)]
#[schema(as = Client)]
struct ClientView {
    client_id: String,
    // u32 is not an int32 (utoipa's default format for it).
    #[schema(format = Int64)]
    capacity: u32,
    /// Always there, also for a client given a `rate` (then derived).
    rate_per_sec: f64,
    /// The rate as written (`"1000/day"`), or null if it was given as
    /// `rate_per_sec`.
    #[schema(required = true)]
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
        let keys: Vec<ClientKey> = rows.iter().filter_map(ClientRow::key).collect();
        let buckets: Vec<(Bucket<'_>, u32, f64)> = rows
            .iter()
            .zip(&keys)
            .map(|(r, key)| {
                let bucket = Bucket { rule: None, key };
                (bucket, r.capacity(), r.rate_per_sec())
            })
            .collect();
        if keys.len() == rows.len() {
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

/// Clients per page of `GET /clients` when `limit` is not given.
pub const DEFAULT_PAGE: u32 = 100;
/// Largest `limit` of `GET /clients`.
pub const MAX_PAGE: u32 = 1000;
/// Longest `after` or `search` accepted.
const MAX_QUERY_TEXT: usize = 1024;

/// The query of `GET /clients`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Clients per page, 1 to 1000; default 100.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Start after this client_id: the `after` of the previous answer's
    /// `Link: <...>; rel="next"`.
    #[param(max_length = 1024)]
    after: Option<String>,
    /// Only clients whose id contains this text (ASCII letters in any
    /// case).
    #[param(max_length = 1024)]
    search: Option<String>,
}

/// [`ListQuery`] from the query string; rejections are [`AdminError`]s.
struct ListParams(ListQuery);

impl<S: Send + Sync> FromRequestParts<S> for ListParams {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AdminError> {
        let axum::extract::Query(q) =
            axum::extract::Query::<ListQuery>::from_request_parts(parts, state)
                .await
                .map_err(|e| AdminError::BadRequest(format!("query: {}", e.body_text())))?;
        if let Some(limit) = q.limit {
            if !(1..=MAX_PAGE).contains(&limit) {
                return Err(AdminError::BadRequest(format!(
                    "query: limit must be 1 to {MAX_PAGE} (got {limit})"
                )));
            }
        }
        for (name, text) in [("after", &q.after), ("search", &q.search)] {
            if text.as_ref().is_some_and(|t| t.len() > MAX_QUERY_TEXT) {
                return Err(AdminError::BadRequest(format!(
                    "query: {name} must be at most {MAX_QUERY_TEXT} bytes"
                )));
            }
        }
        Ok(Self(q))
    }
}

/// The `Link` to the page after one that ended with `last`.
fn next_link(last: &str, limit: u32, search: Option<&str>) -> String {
    let mut link = format!("</clients?after={}&limit={limit}", client::encode(last));
    if let Some(search) = search {
        link.push_str("&search=");
        link.push_str(&client::encode(search));
    }
    link.push_str(">; rel=\"next\"");
    link
}

#[utoipa::path(
    get,
    path = "/clients",
    summary = "List the client table, a page at a time, ordered by client_id",
    params(ListQuery),
    responses(
        (status = 200, description = "one page of clients; unless it is the last, a `Link: </clients?after=ID&limit=N>; rel=\"next\"` header names the next", body = [ClientView],
            headers(("Link" = String, description = "the next page, `<...>; rel=\"next\"`; absent on the last page"))),
        (status = 400, description = "a bad query: limit outside 1-1000, not a number, an unknown or repeated parameter", body = ErrorBody<'static>),
        (status = 500, description = "the client table could not be read", body = ErrorBody<'static>),
        (status = 503, description = "the client table did not answer within store.timeout", body = ErrorBody<'static>),
    )
)]
async fn list_clients(
    State(state): State<AdminState>,
    ListParams(query): ListParams,
) -> Result<Response, AdminError> {
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    let search = query.search.as_deref().filter(|s| !s.is_empty());
    // One row more than the page: whether there is a next page, without a
    // second query.
    let page = crate::store::Page {
        after: query.after.as_deref(),
        limit: limit + 1,
        search,
    };
    let mut rows = within(&state, Op::Read, state.store.list_page(&page)).await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let link = more
        .then(|| rows.last().map(|r| next_link(r.client_id(), limit, search)))
        .flatten();
    let mut response = Json(views(&state, &rows).await).into_response();
    if let Some(value) = link.and_then(|l| http::HeaderValue::try_from(l).ok()) {
        response.headers_mut().insert(header::LINK, value);
    }
    Ok(response)
}

#[utoipa::path(
    get,
    path = "/clients/{id}",
    summary = "One client, with its current tokens",
    params(ClientPath),
    responses(
        (status = 200, description = "the client", body = ClientView),
        (status = 400, description = "the id is no client_id", body = ErrorBody<'static>),
        (status = 404, description = "no such client", body = ErrorBody<'static>),
        (status = 500, description = "the client table could not be read", body = ErrorBody<'static>),
        (status = 503, description = "the client table did not answer within store.timeout", body = ErrorBody<'static>),
    )
)]
async fn get_client(
    State(state): State<AdminState>,
    ClientId(id): ClientId,
) -> Result<Json<ClientView>, AdminError> {
    let row = within(&state, Op::Read, state.store.get(&id))
        .await?
        .ok_or_else(|| store_error(Op::Read, StoreError::NotFound(id.as_str().to_owned())))?;
    Ok(Json(view_one(&state, &row).await))
}

#[utoipa::path(
    post,
    path = "/clients",
    summary = "Add a client; its limits apply to its next request",
    request_body = NewClient,
    responses(
        (status = 201, description = "created", body = ClientView),
        (status = 400, description = "invalid input", body = ErrorBody<'static>),
        (status = 408, description = "the body did not arrive within admin.body_read_timeout", body = ErrorBody<'static>),
        (status = 409, description = "the client_id exists, or the table is full", body = ErrorBody<'static>),
        (status = 413, description = "body over 64 KiB", body = ErrorBody<'static>),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody<'static>),
        (status = 500, description = "the client table could not be written", body = ErrorBody<'static>),
        (status = 503, description = "the client table did not answer within store.timeout; the client may or may not have been stored", body = ErrorBody<'static>),
    )
)]
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
        let write = state.writes.begin();
        state.store.create(&client).await?;
        write.apply(|| apply(&state, &client.key(), Some(client.limits)));
        Ok(())
    })
    .await?;
    let row = ClientRow::Client(client);
    Ok((StatusCode::CREATED, Json(view_one(&state, &row).await)))
}

#[utoipa::path(
    put,
    path = "/clients/{id}",
    summary = "Replace a client's limits (tokens kept, clamped to the new capacity)",
    params(ClientPath),
    request_body = NewLimits,
    responses(
        (status = 200, description = "updated", body = ClientView),
        (status = 400, description = "invalid input", body = ErrorBody<'static>),
        (status = 404, description = "no such client", body = ErrorBody<'static>),
        (status = 408, description = "the body did not arrive within admin.body_read_timeout", body = ErrorBody<'static>),
        (status = 413, description = "body over 64 KiB", body = ErrorBody<'static>),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody<'static>),
        (status = 500, description = "the client table could not be written", body = ErrorBody<'static>),
        (status = 503, description = "the client table did not answer within store.timeout; the change may or may not have been stored", body = ErrorBody<'static>),
    )
)]
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
        let write = state.writes.begin();
        state.store.update(&client).await?;
        write.apply(|| apply(&state, &client.key(), Some(client.limits)));
        Ok(())
    })
    .await?;
    Ok(Json(view_one(&state, &ClientRow::Client(client)).await))
}

#[utoipa::path(
    delete,
    path = "/clients/{id}",
    summary = "Remove a client; it returns to the default limits. Any row can be removed, also one written by hand that makes no valid client",
    params(RowPath),
    responses(
        (status = 204, description = "removed"),
        (status = 400, description = "the id is not UTF-8, or longer than 4096 bytes", body = ErrorBody<'static>),
        (status = 404, description = "no such client", body = ErrorBody<'static>),
        (status = 500, description = "the client table could not be written", body = ErrorBody<'static>),
        (status = 503, description = "the client table did not answer within store.timeout; the client may or may not have been removed", body = ErrorBody<'static>),
    )
)]
async fn delete_client(
    State(state): State<AdminState>,
    RowId(id): RowId,
) -> Result<StatusCode, AdminError> {
    // A row whose id is no API key never had a bucket of its own.
    let key = ApiKey::new(&id).ok();
    within(&state, Op::Write, async {
        let _serial = match &key {
            Some(key) => Some(state.lock(key).await),
            None => None,
        };
        let write = state.writes.begin();
        state.store.delete(&id).await?;
        write.apply(|| {
            if let Some(key) = &key {
                apply(&state, &ClientKey::Api(key.clone()), None);
            }
        });
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

/// `POST /reload`: 200 with what changed; 400 with every problem of an
/// invalid file, or a certificate that cannot be used (the running
/// configuration stays); 503 when the files did not answer in time. The 404 of a state
/// without a reloader is not documented: a running tollgate always has one.
#[utoipa::path(
    post,
    path = "/reload",
    summary = "Re-read the config file (as SIGHUP does) and apply what changed",
    responses(
        (status = 200, description = "what changed", body = Reloaded),
        (status = 400, description = "invalid config file, or a certificate file that cannot be used; the running configuration stays", body = InvalidConfigBody<'static>),
        (status = 500, description = "the reload could not run; nothing changed", body = ErrorBody<'static>),
        (status = 503, description = "the config or certificate files were not read within 5 s (a FIFO, a hung mount); nothing changed", body = ErrorBody<'static>),
    )
)]
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
        // A file that cannot be used is a bad input, as an invalid config
        // file is: 400 whether the config names new files or the same
        // names hold new contents.
        Err(e @ ReloadError::Certificates(_)) => {
            Err(AdminError::InvalidConfig(vec![e.to_string()]))
        }
        Err(e @ (ReloadError::ReadTimeout | ReloadError::StillReading)) => {
            Err(AdminError::Unavailable(e.to_string()))
        }
        Err(e @ ReloadError::Interrupted(_)) => Err(AdminError::Internal(e.to_string())),
    }
}

/// What `/healthz` answers.
// Fields in alphabetical order: the JSON object this replaced printed
// them so.
#[derive(Debug, serde::Serialize, ToSchema)]
struct Health {
    /// Backends whose active health checks pass.
    healthy_backends: usize,
    status: Alive,
    /// Buckets the limiter holds.
    tracked_clients: usize,
}

/// `ok`: the process answers.
#[derive(Debug, serde::Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
enum Alive {
    Ok,
}

#[utoipa::path(
    get,
    path = "/healthz",
    summary = "Liveness of tollgate itself",
    responses((status = 200, description = "alive", body = Health))
)]
async fn healthz(State(state): State<AdminState>) -> Json<Health> {
    let routing = state.routing.current();
    Json(Health {
        healthy_backends: routing
            .pools()
            .values()
            .map(|p| p.pool.healthy_count())
            .sum(),
        status: Alive::Ok,
        tracked_clients: state.registry.len(),
    })
}

/// The 404 is documented but not produced by the tests: a started
/// tollgate always hands its metrics to the admin API; only a program
/// embedding the router without them gets it.
#[utoipa::path(
    get,
    path = "/metrics",
    summary = "Prometheus metrics (text format 0.0.4)",
    responses(
        (status = 200, description = "metrics", body = String, content_type = "text/plain"),
        (status = 404, description = "metrics are off: the embedding program built the admin router without them", body = ErrorBody<'static>),
    )
)]
async fn metrics_text(State(state): State<AdminState>) -> Result<Response, AdminError> {
    let metrics = state.metrics.as_ref().ok_or_else(|| {
        AdminError::NotFound("metrics are off: the admin router was built without them".into())
    })?;
    let routing = state.routing.current();
    // By pool, labelled with it only when pools or routes are configured:
    // without them the series are the ones they always were.
    let backends: Vec<_> = routing
        .pools_in_order()
        .flat_map(|p| {
            let pool = routing.labelled().then(|| p.name.clone());
            p.pool
                .backends()
                .iter()
                .map(|b| (b.clone(), b.label(), pool.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let gauges = crate::telemetry::StateGauges {
        backends: backends
            .iter()
            .map(|(b, label, pool)| crate::telemetry::BackendGauge {
                label,
                pool: pool.as_deref(),
                healthy: b.is_healthy(),
                in_flight: b.in_flight(),
            })
            .collect(),
        clients_tracked: state.registry.len(),
        clients_pinned: state.registry.pinned_len(),
    };
    let text = metrics.render(&gauges);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// The 404 of a state without a board is not documented: a running
/// tollgate always has one.
#[utoipa::path(
    get,
    path = "/status",
    summary = "Everything the status page shows: rates and latency over the last minute, backends with their state and load, the clients refused most, recent events",
    responses((status = 200, description = "the status document", body = StatusDocument))
)]
async fn status(State(state): State<AdminState>) -> Result<Json<StatusDocument>, AdminError> {
    let board = state
        .status
        .as_ref()
        .ok_or_else(|| AdminError::NotFound("this process has no status board".into()))?;
    Ok(Json(board.document()))
}

/// The status page: one HTML file with its CSS and JavaScript inline, no
/// data in it. Public, so a browser can load it and ask for the token;
/// its script reads `/status` and `/clients` with the token.
const STATUS_PAGE: &str = include_str!("status.html");

#[utoipa::path(
    get,
    path = "/",
    summary = "The status page (HTML). Public: it holds no data; its script asks for the admin token and reads /status and /clients with it",
    responses((status = 200, description = "the page", body = String, content_type = "text/html"))
)]
async fn status_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            // Inline script and style only; it talks to this origin alone
            // and cannot be framed.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
                 frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        STATUS_PAGE,
    )
        .into_response()
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    summary = "This document",
    responses((status = 200, description = "OpenAPI 3.1 document", body = Object))
)]
async fn serve_openapi(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi.to_string(),
    )
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
        let shared: Vec<&String> = doc["components"]["responses"]
            .as_object()
            .expect("the guard's answers")
            .keys()
            .collect();
        assert_eq!(shared, ["CrossSite", "MisdirectedHost"]);
        let mut operations = 0;
        for item in doc["paths"].as_object().expect("paths").values() {
            for (method, op) in item.as_object().expect("path item") {
                operations += 1;
                assert!(op["responses"].get("401").is_none());
                assert!(op["responses"].get("429").is_none());
                assert_eq!(
                    op["responses"]["421"]["$ref"],
                    "#/components/responses/MisdirectedHost"
                );
                let changes = !matches!(method.as_str(), "get" | "head");
                assert_eq!(op["responses"].get("403").is_some(), changes, "{method}");
            }
        }
        assert_eq!(operations, 18);
    }

    #[test]
    fn limits_take_exactly_one_rate() {
        let doc: serde_json::Value =
            serde_json::from_str(&openapi_document(false)).expect("valid JSON");
        for name in ["NewClient", "Limits"] {
            let schema = &doc["components"]["schemas"][name];
            assert_eq!(schema["oneOf"], openapi::one_rate(), "{name}");
            assert_eq!(schema["additionalProperties"], false, "{name}");
            let required = if name == "NewClient" {
                serde_json::json!(["client_id", "capacity"])
            } else {
                serde_json::json!(["capacity"])
            };
            assert_eq!(schema["required"], required, "{name}");
            // null is taken as "not given".
            let types = |field: &str| schema["properties"][field]["type"].clone();
            assert_eq!(types("rate_per_sec"), serde_json::json!(["number", "null"]));
            assert_eq!(types("rate"), serde_json::json!(["string", "null"]));
        }
    }

    #[test]
    fn openapi_with_a_token_has_bearer_and_401_everywhere() {
        let doc: serde_json::Value =
            serde_json::from_str(&openapi_document(true)).expect("valid JSON");
        assert_eq!(doc["security"], serde_json::json!([{"bearer": []}]));
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"],
            serde_json::json!({"type": "http", "scheme": "bearer"})
        );
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for op in item.as_object().expect("path item").values() {
                if path == "/" {
                    // The status page's shell: public, no 401.
                    assert_eq!(op["security"], serde_json::json!([]));
                    assert!(op["responses"].get("401").is_none());
                    continue;
                }
                assert_eq!(
                    op["responses"]["401"]["$ref"],
                    "#/components/responses/Unauthorized"
                );
                assert_eq!(
                    op["responses"]["429"]["$ref"],
                    "#/components/responses/TooManyBadTokens"
                );
            }
        }
        assert_eq!(
            doc["components"]["responses"]["Unauthorized"]["content"]["application/json"]["schema"]
                ["$ref"],
            "#/components/schemas/Error"
        );
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    }
}
