//! The client table and bucket snapshots: what survives a restart.
//!
//! [`ClientStore`] is the interface; [`SqliteStore`] implements it with
//! sqlx over one SQLite file (WAL journal, `synchronous=FULL`, so a write
//! is on disk before it is acknowledged), [`PostgresStore`] over a
//! PostgreSQL database that several replicas can share. Both run the same
//! statements (`sql`), checked at run time rather than by sqlx's macros, so
//! a build never needs a database.

mod postgres;
pub mod reload;
pub mod snapshot;
mod sql;
mod sqlite;

use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// A client in the client table.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClientRecord {
    /// The client's API key / id.
    pub client_id: String,
    /// Its bucket capacity.
    pub capacity: u32,
    /// Its refill rate.
    pub rate_per_sec: f64,
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
    #[error("unsupported store URL {0:?} (expected sqlite://FILE or postgres://USER@HOST/DB)")]
    UnsupportedUrl(String),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// The client table and bucket snapshots.
#[async_trait]
pub trait ClientStore: Send + Sync + std::fmt::Debug + 'static {
    /// Every client, ordered by id.
    async fn list(&self) -> Result<Vec<ClientRecord>, StoreError>;
    /// One client.
    async fn get(&self, client_id: &str) -> Result<Option<ClientRecord>, StoreError>;
    /// Adds a client; [`StoreError::AlreadyExists`] if the id is taken.
    async fn create(&self, client: &ClientRecord) -> Result<(), StoreError>;
    /// Replaces a client's limits; [`StoreError::NotFound`] if unknown.
    async fn update(&self, client: &ClientRecord) -> Result<(), StoreError>;
    /// Removes a client; [`StoreError::NotFound`] if unknown.
    async fn delete(&self, client_id: &str) -> Result<(), StoreError>;
    /// Applies a snapshot delta in one transaction.
    async fn save_bucket_states(&self, delta: &SnapshotDelta) -> Result<(), StoreError>;
    /// Every snapshotted bucket level.
    async fn load_bucket_states(&self) -> Result<Vec<BucketState>, StoreError>;
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

/// Opens the store named by `store.url`.
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn ClientStore>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(std::sync::Arc::new(SqliteStore::open(url).await?))
    } else if is_shared(url) {
        Ok(std::sync::Arc::new(PostgresStore::open(url).await?))
    } else {
        Err(StoreError::UnsupportedUrl(url.to_owned()))
    }
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
