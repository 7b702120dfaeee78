//! [`ClientStore`](super::ClientStore) on PostgreSQL, for several replicas
//! sharing one client table. The statements are the SQLite store's
//! (`super::sql`); only opening the pool and the migrations differ.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use super::StoreError;

/// The client table in a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user@host:port/database`) and runs
    /// the embedded migrations. A commit returns once PostgreSQL has made
    /// it durable (its default `synchronous_commit = on`), so an admin write
    /// is on disk before it is acknowledged.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?.application_name("tollgate");
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        let store = Self { pool };
        store.run_migrations().await?;
        Ok(store)
    }

    /// Creates or updates the tables.
    pub(super) async fn run_migrations(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await?;
        Ok(())
    }
}

super::sql::sql_store!(PostgresStore, sqlx::Postgres);
