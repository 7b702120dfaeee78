//! Picking up client-table changes made by other replicas.
//!
//! With PostgreSQL several replicas share one client table, but each keeps
//! its own live buckets, and an admin write reaches only the replica that
//! served it. Every `store.reload_interval` each replica reads the table and
//! applies what changed *in the table* since its previous read: new or
//! changed rows set limits, vanished rows return clients to the defaults.
//!
//! Comparing table against table, never table against live state, is what
//! keeps this from undoing a local write: a read taken just before a local
//! admin write commits shows the old row, which equals the previous read,
//! so nothing is applied; the next read shows the new row and applies the
//! value the admin API already applied.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::{ClientRow, ClientStore, StoreError};
use crate::limiter::Registry;
use crate::shutdown::Ticks;

/// Applies client-table changes to the registry.
#[derive(Debug)]
pub struct TableSync {
    registry: Arc<Registry>,
    store: Arc<dyn ClientStore>,
    /// The previous read, by `client_id` as written.
    last: HashMap<String, ClientRow>,
}

/// What one reload applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReloadStats {
    /// Clients added or whose limits changed.
    pub changed: usize,
    /// Clients removed from the table.
    pub removed: usize,
    /// Rows added or changed that make no usable client (each logged once;
    /// the client keeps the limits it had).
    pub rejected: usize,
}

impl TableSync {
    /// Starts from `loaded`, the table as start-up read and applied it.
    pub fn new(registry: Arc<Registry>, store: Arc<dyn ClientStore>, loaded: &[ClientRow]) -> Self {
        Self {
            registry,
            store,
            last: loaded
                .iter()
                .map(|row| (row.client_id().to_owned(), row.clone()))
                .collect(),
        }
    }

    /// Reads the table once and applies the differences to the last read.
    pub async fn reload(&mut self) -> Result<ReloadStats, StoreError> {
        let rows = self.store.list().await?;
        let mut stats = ReloadStats::default();
        let mut now: HashMap<String, ClientRow> = HashMap::with_capacity(rows.len());
        for row in rows {
            let unchanged = self
                .last
                .get(row.client_id())
                .is_some_and(|last| same_values(last, &row));
            if !unchanged {
                match &row {
                    ClientRow::Client(c) => match self.registry.set_limits(&c.key(), c.limits) {
                        Ok(()) => stats.changed += 1,
                        Err(e) => {
                            tracing::warn!(client_id = %c.id, error = %e, "cannot apply a client-table change");
                        }
                    },
                    ClientRow::Rejected(rejected) => {
                        rejected.warn_skipped();
                        stats.rejected += 1;
                    }
                }
            }
            now.insert(row.client_id().to_owned(), row);
        }
        for (_, gone) in self.last.iter().filter(|(id, _)| !now.contains_key(*id)) {
            if let Some(key) = gone.key() {
                self.registry.unpin(&key);
                stats.removed += 1;
            }
        }
        self.last = now;
        Ok(stats)
    }
}

/// Whether a row holds the values it held at the last read. The rate is
/// compared by its bits, so that a NaN written by hand equals itself and
/// its row is reported once, not at every reload.
fn same_values(last: &ClientRow, now: &ClientRow) -> bool {
    last.capacity() == now.capacity()
        && last.rate_per_sec().to_bits() == now.rate_per_sec().to_bits()
        && last.rate() == now.rate()
}

/// Reloads every `every` until `stop` completes. A failed read is logged
/// and retried at the next tick; live limits stay as they were.
pub async fn run(
    mut sync: TableSync,
    every: Duration,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    // The first tick is a period away: start-up has just read the table.
    let mut ticks = Ticks::every(every, tokio::time::MissedTickBehavior::Delay, stop);
    while ticks.next().await {
        match sync.reload().await {
            Ok(s) if s.changed + s.removed > 0 => {
                tracing::info!(
                    changed = s.changed,
                    removed = s.removed,
                    "client table changes applied"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "client table reload failed"),
        }
    }
}
