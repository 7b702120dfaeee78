//! [`ClientStore`] on SQLite.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

/// Rows per statement in snapshot writes (3 parameters a row, well under
/// SQLite's 32,766-parameter limit).
const BATCH: usize = 1000;

use super::{now_ms, BucketState, ClientRecord, ClientStore, SnapshotDelta, StoreError};

/// The client table in one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` (`sqlite://FILE`
    /// or `sqlite::memory:`) and runs the embedded migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: with WAL, NORMAL may lose the last commits on power
            // loss; an acknowledged admin write must not be lost.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool })
    }
}

fn record(row: &sqlx::sqlite::SqliteRow) -> Result<ClientRecord, sqlx::Error> {
    let capacity: i64 = row.try_get("capacity")?;
    Ok(ClientRecord {
        client_id: row.try_get("client_id")?,
        capacity: u32::try_from(capacity).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        rate_per_sec: row.try_get("rate_per_sec")?,
    })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

#[async_trait]
impl ClientStore for SqliteStore {
    async fn list(&self) -> Result<Vec<ClientRecord>, StoreError> {
        let rows =
            sqlx::query("SELECT client_id, capacity, rate_per_sec FROM clients ORDER BY client_id")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.iter().map(record).collect::<Result<_, _>>()?)
    }

    async fn get(&self, client_id: &str) -> Result<Option<ClientRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT client_id, capacity, rate_per_sec FROM clients WHERE client_id = ?",
        )
        .bind(client_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(record).transpose()?)
    }

    async fn create(&self, c: &ClientRecord) -> Result<(), StoreError> {
        let now = now_ms();
        sqlx::query(
            "INSERT INTO clients (client_id, capacity, rate_per_sec, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&c.client_id)
        .bind(i64::from(c.capacity))
        .bind(c.rate_per_sec)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::AlreadyExists(c.client_id.clone())
            } else {
                StoreError::Database(e)
            }
        })?;
        Ok(())
    }

    async fn update(&self, c: &ClientRecord) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE clients SET capacity = ?, rate_per_sec = ?, updated_at = ? WHERE client_id = ?",
        )
        .bind(i64::from(c.capacity))
        .bind(c.rate_per_sec)
        .bind(now_ms())
        .bind(&c.client_id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(c.client_id.clone()));
        }
        Ok(())
    }

    async fn delete(&self, client_id: &str) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM clients WHERE client_id = ?")
            .bind(client_id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(client_id.to_owned()));
        }
        Ok(())
    }

    async fn save_bucket_states(&self, delta: &SnapshotDelta) -> Result<(), StoreError> {
        if delta.upsert.is_empty() && delta.delete.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        // Multi-row statements: one INSERT per row cost ~24 µs a row.
        for chunk in delta.upsert.chunks(BATCH) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO bucket_states (client_key, tokens, saved_at) ",
            );
            q.push_values(chunk, |mut row, s| {
                row.push_bind(&s.client_key)
                    .push_bind(s.tokens)
                    .push_bind(s.saved_at_ms);
            });
            q.push(
                " ON CONFLICT (client_key) DO UPDATE SET tokens = excluded.tokens, saved_at = excluded.saved_at",
            );
            q.build().execute(&mut *tx).await?;
        }
        for chunk in delta.delete.chunks(BATCH) {
            let mut q =
                QueryBuilder::<Sqlite>::new("DELETE FROM bucket_states WHERE client_key IN (");
            let mut keys = q.separated(", ");
            for key in chunk {
                keys.push_bind(key);
            }
            q.push(")");
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn load_bucket_states(&self) -> Result<Vec<BucketState>, StoreError> {
        let rows = sqlx::query("SELECT client_key, tokens, saved_at FROM bucket_states")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(BucketState {
                    client_key: r.try_get("client_key")?,
                    tokens: r.try_get("tokens")?,
                    saved_at_ms: r.try_get("saved_at")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }
}
