//! [`ClientStore`] on SQLite.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use super::StoreError;

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
        let store = Self { pool };
        store.run_migrations().await?;
        Ok(store)
    }

    /// Nothing: only this process writes a SQLite table, so no other
    /// replica needs telling (`store.notify` is ignored here).
    async fn announce(
        &self,
        _tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        _client_id: &str,
    ) -> Result<(), sqlx::Error> {
        Ok(())
    }

    /// Creates or updates the tables.
    pub(super) async fn run_migrations(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/sqlite")
            .run(&self.pool)
            .await?;
        Ok(())
    }
}

super::sql::sql_store!(SqliteStore, sqlx::Sqlite);
