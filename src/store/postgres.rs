//! [`ClientStore`](super::ClientStore) on PostgreSQL, for several replicas
//! sharing one client table. The statements are the SQLite store's
//! (`super::sql`); what differs is opening the pool, the migrations, and
//! the `NOTIFY` each client write sends (`store.notify`, see
//! [`super::notify`]).
//!
//! Opening says why a database cannot be reached: the pool alone reports
//! only "pool timed out" whatever went wrong, so the first connection is
//! made by hand and its failure classified ([`ConnectCause`]), with the
//! host and port named.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};
use tokio::time::Instant;

use super::{OpenOptions, StoreError};

/// The channel client writes are announced on (`store.notify`); the
/// payload is the client id.
pub const CHANNEL: &str = "tollgate_clients";

/// Least time the pool waits for a connection (as before `store.timeout`
/// bounded the first connection too).
const POOL_ACQUIRE: Duration = Duration::from_secs(5);

/// Wait between two connection attempts at start-up while the cause may
/// pass (a PostgreSQL still starting refuses connections).
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// The client table in a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// Client writes send `NOTIFY` (`store.notify`).
    notify: bool,
}

/// Why a connection to PostgreSQL failed, as an operator would look for it.
#[derive(Debug, thiserror::Error)]
pub enum ConnectCause {
    /// Nothing listens at the address (or a firewall rejects).
    #[error("connection refused (is PostgreSQL running and listening there?)")]
    Refused,
    /// The host name does not resolve.
    #[error("DNS lookup of {host:?} failed: {detail}")]
    Dns {
        /// The host name.
        host: String,
        /// What the resolver said.
        detail: String,
    },
    /// The server refused the user or its password.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Anything else (TLS, a missing database...), as the driver says it.
    #[error("{0}")]
    Other(String),
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user@host:port/database`) and runs
    /// the embedded migrations. A commit returns once PostgreSQL has made
    /// it durable (its default `synchronous_commit = on`), so an admin write
    /// is on disk before it is acknowledged.
    ///
    /// While the database refuses connections or does not answer, opening
    /// tries again until `options.timeout` has passed; a refused login
    /// fails at once.
    pub async fn open(url: &str, options: OpenOptions) -> Result<Self, StoreError> {
        let connect = PgConnectOptions::from_str(url)?.application_name("tollgate");
        first_connection(&connect, options.timeout).await?;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            // Past `store.timeout`, which bounds every operation (see
            // `Guarded`): a database that hangs then reads "did not answer"
            // (503), not a pool error (500) racing it.
            .acquire_timeout(POOL_ACQUIRE.max(options.timeout * 2))
            .connect_with(connect.clone())
            .await
            .map_err(|e| connect_error(&connect, classify(&e, options.timeout)))?;
        let store = Self {
            pool,
            notify: options.notify,
        };
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

    /// Sends the client id on [`CHANNEL`] when the
    /// transaction commits (PostgreSQL holds a `NOTIFY` until then, and
    /// drops it on rollback).
    async fn announce(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        client_id: &str,
    ) -> Result<(), sqlx::Error> {
        if self.notify {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(client_id)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }
}

/// `host:port` of `options`, or the socket path, for messages.
pub(super) fn address(options: &PgConnectOptions) -> String {
    match options.get_socket() {
        Some(socket) => socket.display().to_string(),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    }
}

fn connect_error(options: &PgConnectOptions, cause: ConnectCause) -> StoreError {
    StoreError::Connect {
        address: address(options),
        cause,
    }
}

/// Makes one connection by hand (closed again), retrying what may pass
/// until `timeout`, so a failure comes back with its cause.
async fn first_connection(options: &PgConnectOptions, timeout: Duration) -> Result<(), StoreError> {
    let deadline = Instant::now() + timeout;
    let mut last = ConnectCause::Timeout(timeout);
    loop {
        match tokio::time::timeout_at(deadline, options.connect()).await {
            Ok(Ok(conn)) => {
                // Closing is a courtesy to the server; the pool is next.
                let _ = conn.close().await;
                return Ok(());
            }
            Ok(Err(e)) => {
                last = diagnose(options, &e, timeout).await;
                let passes = matches!(last, ConnectCause::Refused | ConnectCause::Timeout(_));
                if !passes {
                    return Err(connect_error(options, last));
                }
            }
            Err(_elapsed) => return Err(connect_error(options, last)),
        }
        if Instant::now() + RETRY_PAUSE >= deadline {
            return Err(connect_error(options, last));
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// [`classify`], telling a host name that does not resolve from other
/// I/O errors by resolving it: the resolver's error carries no kind.
async fn diagnose(options: &PgConnectOptions, e: &sqlx::Error, timeout: Duration) -> ConnectCause {
    let cause = classify(e, timeout);
    let io_other = matches!(&cause, ConnectCause::Other(_)) && matches!(e, sqlx::Error::Io(_));
    if io_other && options.get_socket().is_none() {
        let host = options.get_host();
        if let Err(lookup) = tokio::net::lookup_host((host, options.get_port())).await {
            return ConnectCause::Dns {
                host: host.to_owned(),
                detail: crate::redact::text(&lookup.to_string()).into_owned(),
            };
        }
    }
    cause
}

/// The cause of a failed connection, from the driver's error.
fn classify(e: &sqlx::Error, timeout: Duration) -> ConnectCause {
    match e {
        sqlx::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => ConnectCause::Refused,
            std::io::ErrorKind::TimedOut => ConnectCause::Timeout(timeout),
            _ => ConnectCause::Other(crate::redact::text(&io.to_string()).into_owned()),
        },
        sqlx::Error::PoolTimedOut => ConnectCause::Timeout(timeout),
        // Class 28: invalid_authorization_specification (28000: no such
        // role, no pg_hba entry) and invalid_password (28P01).
        sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("28")) => {
            ConnectCause::Auth(db.message().to_owned())
        }
        other => ConnectCause::Other(crate::redact::text(&other.to_string()).into_owned()),
    }
}

super::sql::sql_store!(PostgresStore, sqlx::Postgres);

#[cfg(test)]
mod tests {
    use super::{classify, ConnectCause};
    use std::time::Duration;

    #[test]
    fn io_errors_are_classified_by_kind() {
        let t = Duration::from_secs(1);
        let refused = sqlx::Error::Io(std::io::ErrorKind::ConnectionRefused.into());
        assert!(matches!(classify(&refused, t), ConnectCause::Refused));
        let timed_out = sqlx::Error::Io(std::io::ErrorKind::TimedOut.into());
        assert!(matches!(classify(&timed_out, t), ConnectCause::Timeout(d) if d == t));
        assert!(matches!(
            classify(&sqlx::Error::PoolTimedOut, t),
            ConnectCause::Timeout(_)
        ));
    }
}
