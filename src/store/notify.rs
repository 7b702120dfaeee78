//! `store.notify`: PostgreSQL `LISTEN`/`NOTIFY`, so that an admin write
//! made through one replica reaches every replica's buckets at once
//! instead of at their next `store.reload_interval`.
//!
//! Each client write sends the client id on [`CHANNEL`] from inside its
//! transaction (`PostgresStore::announce`), so the notification exists
//! only if the write committed. Every replica keeps one connection of its
//! own `LISTEN`ing ([`listen`]) and hands each id to the table sync, which
//! reads that row and applies it ([`super::reload::TableSync::reload_row`]).
//!
//! Notifications sent while a replica was not listening are lost, so after
//! every (re)connection the listener asks for a read of the whole table
//! ([`Notice::Resync`]): once `LISTEN` is in place, so nothing can fall
//! between the two. The periodic reload stays as the safety net for what
//! no notification announces (rows edited by hand, a replica running with
//! `notify: false`).

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::mpsc;

pub use super::postgres::CHANNEL;

/// Longest wait between two attempts to get a listening connection back.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// First wait after a failed attempt.
const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// What the listener asks the table sync to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A client's row was written (the id as announced).
    Row(String),
    /// The listener (re)connected: notifications may have been missed,
    /// read the whole table.
    Resync,
}

/// Listens on [`CHANNEL`] of the database at `url` and sends what arrives
/// to `notices`, until `stop` completes or the receiver is gone. A lost
/// connection is made again (with a growing pause while it fails), each
/// time followed by [`Notice::Resync`].
pub async fn listen(
    url: &str,
    timeout: Duration,
    notices: mpsc::Sender<Notice>,
    stop: impl Future<Output = ()> + Send,
) {
    let options = match PgConnectOptions::from_str(url) {
        Ok(o) => o.application_name("tollgate-listen"),
        Err(e) => {
            tracing::error!(error = %crate::redact::Scrubbed(&e), "store.notify: cannot listen");
            return;
        }
    };
    let address = super::postgres::address(&options);
    // A pool of one, used only to make the listening connection (again).
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(timeout)
        .connect_lazy_with(options);
    tokio::select! {
        () = stop => {}
        () = listen_forever(&pool, &address, &notices) => {}
    }
    // Dropped, not closed: closing waits for the server to take the
    // goodbye, and a hung database would hold shutdown.
}

/// Returns only when `notices` is closed.
async fn listen_forever(pool: &sqlx::PgPool, address: &str, notices: &mpsc::Sender<Notice>) {
    let mut backoff = MIN_BACKOFF;
    let mut connected_before = false;
    loop {
        match subscribe(pool).await {
            Ok(mut listener) => {
                if connected_before {
                    tracing::info!(%address, "store.notify: listening again; re-reading the client table");
                } else {
                    tracing::info!(%address, channel = CHANNEL, "store.notify: listening");
                }
                connected_before = true;
                backoff = MIN_BACKOFF;
                if notices.send(Notice::Resync).await.is_err() {
                    return;
                }
                match forward(&mut listener, address, notices).await {
                    Some(e) => {
                        tracing::warn!(%address, error = %crate::redact::Scrubbed(&e), "store.notify: listening connection lost")
                    }
                    None => return,
                }
            }
            Err(e) => {
                tracing::warn!(
                    %address,
                    error = %crate::redact::Scrubbed(&e),
                    retry_ms = backoff.as_millis() as u64,
                    "store.notify: cannot listen; the periodic reload still applies other replicas' writes"
                );
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn subscribe(pool: &sqlx::PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Forwards notifications until the connection fails (`Some(error)`) or
/// `notices` is closed (`None`). A connection the driver could make again
/// at once (it then listens again before returning) is a resync.
async fn forward(
    listener: &mut PgListener,
    address: &str,
    notices: &mpsc::Sender<Notice>,
) -> Option<sqlx::Error> {
    loop {
        let notice = match listener.try_recv().await {
            Ok(Some(n)) => Notice::Row(n.payload().to_owned()),
            Ok(None) => {
                tracing::info!(%address, "store.notify: listening again; re-reading the client table");
                Notice::Resync
            }
            Err(e) => return Some(e),
        };
        if notices.send(notice).await.is_err() {
            return None;
        }
    }
}
