//! The client table and bucket snapshots: what survives a restart.
//!
//! [`ClientStore`] is the interface; [`SqliteStore`] implements it with
//! sqlx over one SQLite file (WAL journal, `synchronous=FULL`, so a write
//! is on disk before it is acknowledged), [`PostgresStore`] over a
//! PostgreSQL database that several replicas can share. Both run the same
//! statements (`sql`), checked at run time rather than by sqlx's macros, so
//! a build never needs a database. [`open`] wraps either in [`Guarded`]:
//! every operation bounded in time, tables re-created if they vanish.
//!
//! A row is judged once, where it is read: the store hands out
//! [`ClientRow`]s, each a typed [`Client`] or a [`RejectedRow`] with its
//! reason, and writes only [`Client`]s.

pub mod notify;
mod postgres;
pub mod reload;
pub mod snapshot;
mod sql;
mod sqlite;
pub mod writes;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use crate::limiter::{ApiKey, ClientKey, KeyError, Limits, LimitsError};

pub use postgres::{ConnectCause, PostgresStore};
pub use sqlite::SqliteStore;

/// A client of the client table, validated: what the limiter runs and
/// the only thing the store writes.
#[derive(Debug, Clone, PartialEq)]
pub struct Client {
    /// Its API key: the table's `client_id`.
    pub id: ApiKey,
    /// Its bucket's capacity and refill rate.
    pub limits: Limits,
}

impl Client {
    /// The key its requests are charged to.
    pub fn key(&self) -> ClientKey {
        ClientKey::Api(self.id.clone())
    }
}

/// A row of the client table that makes no usable client, with its values
/// as read. Only a row written behind tollgate's back can be one, since
/// the store writes only [`Client`]s.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedRow {
    /// `client_id` as written.
    pub client_id: String,
    /// `capacity` as written.
    pub capacity: u32,
    /// `rate_per_sec` as written.
    pub rate_per_sec: f64,
    /// `rate` (`1000/day`) as written, if the row has one.
    pub rate: Option<String>,
    /// Why it cannot be used.
    pub reason: InvalidRow,
}

impl RejectedRow {
    /// Says, once per row as read, that the limiter goes on without it.
    /// Start-up and reload both report through here, so the message has
    /// one wording. The id is shown with its control characters escaped:
    /// a row written by hand can hold anything.
    pub fn warn_skipped(&self) {
        let id = crate::escape::Escaped(&self.client_id);
        tracing::warn!(
            client_id = %id,
            problem = %self.problem(),
            "skipping an invalid row of the client table (DELETE /clients/{{id}} removes it)"
        );
    }

    /// What is wrong, as `tollgate check` words a problem: where, then
    /// why (`clients["b"]: capacity must be an integer >= 1 (got 0)`).
    pub fn problem(&self) -> String {
        let id = crate::escape::Escaped(&self.client_id);
        match &self.reason {
            InvalidRow::Key(e) => format!("clients[\"{id}\"].client_id: {e}"),
            InvalidRow::Limits { source, .. } => format!("clients[\"{id}\"]: {source}"),
        }
    }
}

/// Why a row of the client table cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidRow {
    /// The id is not a valid API key.
    #[error("client_id: {0}")]
    Key(#[source] KeyError),
    /// The id is valid, but capacity and rate make no valid limits.
    #[error("limits: {source}")]
    Limits {
        /// The row's id, valid: a reload still unpins it when the row goes.
        id: ApiKey,
        /// Why the limits were refused.
        #[source]
        source: LimitsError,
    },
}

/// One row of the client table, judged once where it is read
/// (`sql::client_row`): a client, or a row the limiter cannot use.
///
/// A bad row comes back as [`ClientRow::Rejected`] rather than failing the
/// read, so one hand-edited row does not hide every other client from
/// start-up, reload and the admin API.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientRow {
    /// A usable client.
    Client(Client),
    /// A row that makes no usable client.
    Rejected(RejectedRow),
}

impl ClientRow {
    /// `client_id` as written.
    pub fn client_id(&self) -> &str {
        match self {
            Self::Client(c) => c.id.as_str(),
            Self::Rejected(r) => &r.client_id,
        }
    }

    /// `capacity` as written.
    pub fn capacity(&self) -> u32 {
        match self {
            Self::Client(c) => c.limits.capacity(),
            Self::Rejected(r) => r.capacity,
        }
    }

    /// `rate_per_sec` as written.
    pub fn rate_per_sec(&self) -> f64 {
        match self {
            Self::Client(c) => c.limits.rate_per_sec(),
            Self::Rejected(r) => r.rate_per_sec,
        }
    }

    /// `rate` as written (`1000/day`), if the rate was given that way.
    pub fn rate(&self) -> Option<String> {
        match self {
            Self::Client(c) => c.limits.rate().map(|r| r.to_string()),
            Self::Rejected(r) => r.rate.clone(),
        }
    }

    /// The key the row's id names, if the id is a valid API key (a row
    /// rejected for its limits still names one).
    pub fn key(&self) -> Option<ClientKey> {
        match self {
            Self::Client(c) => Some(c.key()),
            Self::Rejected(RejectedRow {
                reason: InvalidRow::Limits { id, .. },
                ..
            }) => Some(ClientKey::Api(id.clone())),
            Self::Rejected(_) => None,
        }
    }

    /// The client, if the row is one.
    pub fn client(&self) -> Option<&Client> {
        match self {
            Self::Client(c) => Some(c),
            Self::Rejected(_) => None,
        }
    }
}

/// A bucket's level at a moment, as snapshotted.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketState {
    /// `ip:<address>` or `key:<api key>`.
    pub client_key: String,
    /// Tokens, fractions included.
    pub tokens: f64,
    /// Wall-clock time of the snapshot, milliseconds since the Unix epoch.
    pub saved_at_ms: i64,
}

/// What a snapshot writes: new or changed levels, and keys whose row can
/// go (their bucket is full again, or gone).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SnapshotDelta {
    /// Rows to insert or replace.
    pub upsert: Vec<BucketState>,
    /// Keys to delete.
    pub delete: Vec<String>,
}

/// One page of the client table: the rows whose `client_id` comes after
/// `after` in the database's order of `client_id`, at most `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page<'a> {
    /// The last `client_id` of the previous page; `None`: from the first.
    pub after: Option<&'a str>,
    /// Rows at most.
    pub limit: u32,
    /// Only ids that contain this text, ASCII letters in any case;
    /// `None`: every id.
    pub search: Option<&'a str>,
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A client with this id exists.
    #[error("client {0:?} already exists")]
    AlreadyExists(String),
    /// No client with this id.
    #[error("client {0:?} not found")]
    NotFound(String),
    /// `store.url` names a database this build does not support.
    #[error("unsupported store URL {:?} (expected sqlite://FILE or postgres://USER@HOST/DB)", crate::redact::url(.0))]
    UnsupportedUrl(String),
    /// PostgreSQL could not be reached when the store was opened.
    #[error("cannot connect to PostgreSQL at {address}: {cause}")]
    Connect {
        /// `host:port` (or the socket path).
        address: String,
        /// Why.
        cause: ConnectCause,
    },
    /// The database failed. (Shown scrubbed: a driver's message may quote
    /// the URL it was given, password and all.)
    #[error("database error: {}", crate::redact::Scrubbed(.0))]
    Database(#[source] sqlx::Error),
    /// A table is missing: the database was dropped and created again, or
    /// emptied, while tollgate ran. [`Guarded`] runs the migrations again.
    #[error("table missing (database re-created or emptied?): {}", crate::redact::Scrubbed(.0))]
    MissingTable(#[source] sqlx::Error),
    /// The database did not answer in time.
    #[error("the database did not answer within {0:?}")]
    Timeout(Duration),
    /// Migrations failed.
    #[error("migration failed: {}", crate::redact::Scrubbed(.0))]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        let missing = match &e {
            // 42P01 undefined_table on PostgreSQL; SQLite has only a message.
            sqlx::Error::Database(db) => {
                db.code().as_deref() == Some("42P01") || db.message().starts_with("no such table")
            }
            _ => false,
        };
        if missing {
            Self::MissingTable(e)
        } else {
            Self::Database(e)
        }
    }
}

/// The client table and bucket snapshots.
#[async_trait]
pub trait ClientStore: Send + Sync + std::fmt::Debug + 'static {
    /// Every row, ordered by id; rows that make no usable client come back
    /// as [`ClientRow::Rejected`], not as an error.
    async fn list(&self) -> Result<Vec<ClientRow>, StoreError>;
    /// One page of rows, ordered by id (rejected rows too, as in
    /// [`list`](Self::list)).
    async fn list_page(&self, page: &Page<'_>) -> Result<Vec<ClientRow>, StoreError>;
    /// One row.
    async fn get(&self, id: &ApiKey) -> Result<Option<ClientRow>, StoreError>;
    /// Adds a client; [`StoreError::AlreadyExists`] if the id is taken.
    async fn create(&self, client: &Client) -> Result<(), StoreError>;
    /// Replaces a client's limits; [`StoreError::NotFound`] if unknown.
    async fn update(&self, client: &Client) -> Result<(), StoreError>;
    /// Removes the row whose `client_id` is `id`, a valid API key or not
    /// (a row written by hand must be removable too);
    /// [`StoreError::NotFound`] if there is none.
    async fn delete(&self, id: &str) -> Result<(), StoreError>;
    /// Applies a snapshot delta in one transaction.
    async fn save_bucket_states(&self, delta: &SnapshotDelta) -> Result<(), StoreError>;
    /// Every snapshotted bucket level.
    async fn load_bucket_states(&self) -> Result<Vec<BucketState>, StoreError>;
    /// Runs the embedded migrations (creating missing tables).
    async fn migrate(&self) -> Result<(), StoreError>;
}

/// How long one store operation may take when none is configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// A store whose every operation ends within a timeout, and which runs the
/// migrations again when its tables have gone missing.
///
/// A database that stops answering would otherwise hold an admin request,
/// a reload or the shutdown's final snapshot for as long as the TCP
/// connection stays open. A database dropped and created again empty
/// (tables gone, server up) would otherwise fail every call until restart.
#[derive(Debug)]
pub struct Guarded {
    inner: Arc<dyn ClientStore>,
    timeout: Duration,
}

impl Guarded {
    /// `inner`, each operation bounded by `timeout`.
    pub fn new(inner: Arc<dyn ClientStore>, timeout: Duration) -> Self {
        Self { inner, timeout }
    }

    /// Runs `op` once, and once more after the migrations if a table was
    /// missing; all within the timeout. Nothing was written by an attempt
    /// that found its table missing, so the retry cannot apply a write twice.
    async fn call<'a, T, F>(&'a self, op: F) -> Result<T, StoreError>
    where
        F: Fn(&'a dyn ClientStore) -> BoxFuture<'a, Result<T, StoreError>> + Send + 'a,
        T: Send + 'a,
    {
        let attempt = async {
            match op(self.inner.as_ref()).await {
                Err(StoreError::MissingTable(e)) => {
                    tracing::warn!(error = %e, "store tables missing (database re-created?); running the migrations again");
                    self.inner.migrate().await?;
                    op(self.inner.as_ref()).await
                }
                other => other,
            }
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .unwrap_or(Err(StoreError::Timeout(self.timeout)))
    }
}

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

#[async_trait]
impl ClientStore for Guarded {
    async fn list(&self) -> Result<Vec<ClientRow>, StoreError> {
        self.call(|s| s.list()).await
    }
    async fn list_page(&self, page: &Page<'_>) -> Result<Vec<ClientRow>, StoreError> {
        self.call(|s| s.list_page(page)).await
    }
    async fn get(&self, id: &ApiKey) -> Result<Option<ClientRow>, StoreError> {
        self.call(|s| s.get(id)).await
    }
    async fn create(&self, client: &Client) -> Result<(), StoreError> {
        self.call(|s| s.create(client)).await
    }
    async fn update(&self, client: &Client) -> Result<(), StoreError> {
        self.call(|s| s.update(client)).await
    }
    async fn delete(&self, id: &str) -> Result<(), StoreError> {
        self.call(|s| s.delete(id)).await
    }
    async fn save_bucket_states(&self, delta: &SnapshotDelta) -> Result<(), StoreError> {
        self.call(|s| s.save_bucket_states(delta)).await
    }
    async fn load_bucket_states(&self) -> Result<Vec<BucketState>, StoreError> {
        self.call(|s| s.load_bucket_states()).await
    }
    async fn migrate(&self) -> Result<(), StoreError> {
        self.call(|s| s.migrate()).await
    }
}

/// Whether `url` names a database other processes may write to as well
/// (PostgreSQL), so its client table has to be re-read.
pub fn is_shared(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Whether `url` names a database this build supports.
pub fn is_supported(url: &str) -> bool {
    url.starts_with("sqlite:") || is_shared(url)
}

/// How to open a store: the `store` settings besides the URL.
#[derive(Debug, Clone, Copy)]
pub struct OpenOptions {
    /// Bound of each operation, and of reaching the database at all
    /// (`store.timeout`).
    pub timeout: Duration,
    /// PostgreSQL: client writes send `NOTIFY` (`store.notify`).
    pub notify: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            timeout: DEFAULT_TIMEOUT,
            notify: true,
        }
    }
}

/// Opens the store named by `store.url`, each operation bounded by
/// [`DEFAULT_TIMEOUT`].
pub async fn open(url: &str) -> Result<Arc<dyn ClientStore>, StoreError> {
    open_with(url, OpenOptions::default()).await
}

/// Opens the store named by `store.url`, each operation bounded by
/// `timeout` (`store.timeout`), tables re-created if they go missing.
pub async fn open_with_timeout(
    url: &str,
    timeout: Duration,
) -> Result<Arc<dyn ClientStore>, StoreError> {
    open_with(
        url,
        OpenOptions {
            timeout,
            ..OpenOptions::default()
        },
    )
    .await
}

/// Opens the store named by `store.url` with `options`, tables re-created
/// if they go missing.
pub async fn open_with(
    url: &str,
    options: OpenOptions,
) -> Result<Arc<dyn ClientStore>, StoreError> {
    let inner: Arc<dyn ClientStore> = if url.starts_with("sqlite:") {
        Arc::new(SqliteStore::open(url).await?)
    } else if is_shared(url) {
        Arc::new(PostgresStore::open(url, options).await?)
    } else {
        return Err(StoreError::UnsupportedUrl(url.to_owned()));
    };
    Ok(Arc::new(Guarded::new(inner, options.timeout)))
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
