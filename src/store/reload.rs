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

use super::{ClientRecord, ClientStore, StoreError};
use crate::limiter::{ClientKey, Registry};
use crate::shutdown::Ticks;

/// Applies client-table changes to the registry.
#[derive(Debug)]
pub struct TableSync {
    registry: Arc<Registry>,
    store: Arc<dyn ClientStore>,
    last: HashMap<String, (u32, f64)>,
}

/// What one reload applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReloadStats {
    /// Clients added or whose limits changed.
    pub changed: usize,
    /// Clients removed from the table.
    pub removed: usize,
}

impl TableSync {
    /// Starts from `loaded`, the table as start-up read and applied it.
    pub fn new(
        registry: Arc<Registry>,
        store: Arc<dyn ClientStore>,
        loaded: &[ClientRecord],
    ) -> Self {
        Self {
            registry,
            store,
            last: loaded
                .iter()
                .map(|c| (c.client_id.clone(), (c.capacity, c.rate_per_sec)))
                .collect(),
        }
    }

    /// Reads the table once and applies the differences to the last read.
    pub async fn reload(&mut self) -> Result<ReloadStats, StoreError> {
        let rows = self.store.list().await?;
        let mut stats = ReloadStats::default();
        let mut now: HashMap<String, (u32, f64)> = HashMap::with_capacity(rows.len());
        for c in rows {
            let row = (c.capacity, c.rate_per_sec);
            if self.last.get(&c.client_id) != Some(&row) {
                match c.validate() {
                    Ok((key, limits)) => match self.registry.set_limits(&key, limits) {
                        Ok(()) => stats.changed += 1,
                        Err(e) => {
                            tracing::warn!(client_id = %c.client_id, error = %e, "cannot apply a client-table change");
                        }
                    },
                    Err(e) => {
                        tracing::warn!(client_id = %c.client_id, error = %e, "skipping an invalid row of the client table")
                    }
                }
            }
            now.insert(c.client_id, row);
        }
        for gone in self.last.keys().filter(|id| !now.contains_key(*id)) {
            if let Ok(key) = ClientKey::api(gone) {
                self.registry.unpin(&key);
                stats.removed += 1;
            }
        }
        self.last = now;
        Ok(stats)
    }
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
