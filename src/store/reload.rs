//! Picking up client-table changes made by other replicas.
//!
//! With PostgreSQL several replicas share one client table, but each keeps
//! its own live buckets, and an admin write reaches only the replica that
//! served it. Each replica therefore makes its registry run what the table
//! holds: every `store.reload_interval` it reads the whole table, and with
//! `store.notify` it also reads each row another replica announces
//! ([`super::notify`]) as soon as the announcement arrives.
//!
//! A read is compared with what the registry *runs*, never with the
//! previous read: a replica whose registry went astray (a local write
//! overwritten through another replica, a local create deleted there, a
//! delete re-created with the old values) comes back to the table at the
//! next read instead of keeping the stray limits until the row changes
//! again. That a read taken just before a local admin write commits cannot
//! undo the write is [`LocalWrites`]' job.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::notify::Notice;
use super::writes::LocalWrites;
use super::{ClientRow, ClientStore, StoreError};
use crate::limiter::{ApiKey, ClientKey, Registry};
use crate::shutdown::Ticks;

/// Applies the client table to the registry.
#[derive(Debug)]
pub struct TableSync {
    registry: Arc<Registry>,
    store: Arc<dyn ClientStore>,
    writes: Arc<LocalWrites>,
    /// Rejected rows as last reported, by `client_id` as written: each is
    /// logged when it appears or changes, not at every read.
    reported: HashMap<String, ClientRow>,
    /// Where notifications and listener reconnections are counted.
    metrics: crate::telemetry::Metrics,
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
    /// The read was not applied: this replica's own admin writes kept
    /// overlapping it (the next reload or notification reads again).
    pub deferred: bool,
}

/// What one notification ([`TableSync::reload_row`]) told the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowApplied {
    /// The registry ran the row already.
    Unchanged,
    /// The client got the row's limits.
    Changed,
    /// The row is gone: the client is back on the default limits.
    Removed,
    /// The row makes no usable client; the client keeps its limits.
    Rejected,
    /// This replica's own writes kept overlapping the read.
    Deferred,
}

impl TableSync {
    /// Starts from `loaded`, the table as start-up read and applied it.
    pub fn new(registry: Arc<Registry>, store: Arc<dyn ClientStore>, loaded: &[ClientRow]) -> Self {
        Self {
            registry,
            store,
            writes: LocalWrites::new(),
            metrics: crate::telemetry::Metrics::default(),
            reported: loaded
                .iter()
                .filter(|row| row.client().is_none())
                .map(|row| (row.client_id().to_owned(), row.clone()))
                .collect(),
        }
    }

    /// Counts notifications and reconnections in `metrics`.
    pub fn with_metrics(mut self, metrics: crate::telemetry::Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Orders reads against the local admin writes counted by `writes`
    /// (the admin API's, see [`crate::admin::AdminState::with_local_writes`]).
    pub fn with_local_writes(mut self, writes: Arc<LocalWrites>) -> Self {
        self.writes = writes;
        self
    }

    /// Reads the whole table and makes the registry run it: rows it does
    /// not run get their limits, clients it runs that have no row go back
    /// to the defaults.
    pub async fn reload(&mut self) -> Result<ReloadStats, StoreError> {
        let (writes, store) = (self.writes.clone(), self.store.clone());
        let applied = writes
            .read_then_apply(|| store.list(), |rows| self.apply_table(rows))
            .await?;
        Ok(applied.unwrap_or(ReloadStats {
            deferred: true,
            ..ReloadStats::default()
        }))
    }

    /// Reads the row of `id` and makes the registry run it (or, if it is
    /// gone, puts the client back on the defaults).
    pub async fn reload_row(&mut self, id: &ApiKey) -> Result<RowApplied, StoreError> {
        let (writes, store) = (self.writes.clone(), self.store.clone());
        let applied = writes
            .read_then_apply(|| store.get(id), |row| self.apply_row(id, row))
            .await?;
        Ok(applied.unwrap_or(RowApplied::Deferred))
    }

    fn apply_table(&mut self, rows: Vec<ClientRow>) -> ReloadStats {
        let mut stats = ReloadStats::default();
        let mut in_table = HashSet::with_capacity(rows.len());
        let mut reported = HashMap::new();
        for row in rows {
            match self.apply_present(&row) {
                RowApplied::Changed => stats.changed += 1,
                RowApplied::Rejected => stats.rejected += 1,
                _ => {}
            }
            if let Some(key) = row.key() {
                in_table.insert(key);
            }
            if row.client().is_none() {
                reported.insert(row.client_id().to_owned(), row);
            }
        }
        self.reported = reported;
        for key in self.registry.pinned_keys() {
            if !in_table.contains(&key) && self.registry.unpin(&key) {
                stats.removed += 1;
            }
        }
        stats
    }

    fn apply_row(&mut self, id: &ApiKey, row: Option<ClientRow>) -> RowApplied {
        let Some(row) = row else {
            self.reported.remove(id.as_str());
            return if self.registry.unpin(&ClientKey::Api(id.clone())) {
                RowApplied::Removed
            } else {
                RowApplied::Unchanged
            };
        };
        let applied = self.apply_present(&row);
        if row.client().is_none() {
            self.reported.insert(row.client_id().to_owned(), row);
        } else {
            self.reported.remove(row.client_id());
        }
        applied
    }

    /// Makes the registry run one row of the table. A rejected row changes
    /// nothing (the client keeps the limits it runs) and is reported unless
    /// it was reported with the same values.
    fn apply_present(&self, row: &ClientRow) -> RowApplied {
        match row {
            ClientRow::Client(c) => {
                if self.registry.runs(&c.key(), &c.limits) {
                    return RowApplied::Unchanged;
                }
                match self.registry.set_limits(&c.key(), c.limits) {
                    Ok(()) => RowApplied::Changed,
                    Err(e) => {
                        tracing::warn!(client_id = %c.id, error = %e, "cannot apply a client-table change");
                        RowApplied::Unchanged
                    }
                }
            }
            ClientRow::Rejected(rejected) => {
                let seen = self
                    .reported
                    .get(row.client_id())
                    .is_some_and(|last| same_values(last, row));
                if seen {
                    RowApplied::Unchanged
                } else {
                    rejected.warn_skipped();
                    RowApplied::Rejected
                }
            }
        }
    }
}

/// Whether a row holds the values it held when last reported. The rate is
/// compared by its bits, so that a NaN written by hand equals itself and
/// its row is reported once, not at every reload.
fn same_values(last: &ClientRow, now: &ClientRow) -> bool {
    last.capacity() == now.capacity()
        && last.rate_per_sec().to_bits() == now.rate_per_sec().to_bits()
        && last.rate() == now.rate()
}

/// Reloads every `every` until `stop` completes, and applies what
/// `notices` announces (`store.notify`) as it arrives. A failed read is
/// logged and retried at the next tick; live limits stay as they were.
pub async fn run(
    mut sync: TableSync,
    every: Duration,
    mut notices: Option<mpsc::Receiver<Notice>>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    // The first tick is a period away: start-up has just read the table.
    let mut ticks = Ticks::every(every, tokio::time::MissedTickBehavior::Delay, stop);
    // The listener asks for a whole read on each (re)connection; every one
    // after the first is a reconnection.
    let mut resyncs = 0u64;
    loop {
        let notice = async {
            match notices.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            more = ticks.next() => {
                if !more {
                    return;
                }
                reload_logged(&mut sync).await;
            }
            notice = notice => match notice {
                Some(Notice::Row(id)) => apply_notified(&mut sync, &id).await,
                Some(Notice::Resync) => {
                    if resyncs > 0 {
                        sync.metrics
                            .counter(crate::telemetry::STORE_LISTENER_RECONNECTS, &[])
                            .increment(1);
                    }
                    resyncs += 1;
                    reload_logged(&mut sync).await;
                }
                // The listener stopped: the ticks go on.
                None => notices = None,
            },
        }
    }
}

/// Applies the row a notification named, counting and logging the
/// outcome.
async fn apply_notified(sync: &mut TableSync, id: &str) {
    let Ok(key) = ApiKey::new(id) else {
        // Not written by tollgate (its ids are API keys): ignored.
        tracing::debug!(payload = %crate::redact::text(id).escape_debug(), "store.notify: a notification that names no client");
        return;
    };
    match sync.reload_row(&key).await {
        Ok(applied) => {
            sync.metrics
                .counter(
                    crate::telemetry::STORE_NOTIFICATIONS,
                    &[("result", "applied")],
                )
                .increment(1);
            tracing::debug!(client_id = %key, ?applied, "store.notify: client row applied");
        }
        Err(e) => {
            sync.metrics
                .counter(
                    crate::telemetry::STORE_NOTIFICATIONS,
                    &[("result", "failed")],
                )
                .increment(1);
            tracing::warn!(client_id = %key, error = %e, "store.notify: cannot read the announced row; the next reload applies it");
        }
    }
}

/// One whole-table reload, its outcome logged.
async fn reload_logged(sync: &mut TableSync) {
    match sync.reload().await {
        Ok(s) if s.changed + s.removed > 0 => {
            tracing::info!(
                changed = s.changed,
                removed = s.removed,
                "client table changes applied"
            );
        }
        Ok(s) if s.deferred => {
            tracing::debug!("client table reload deferred: local admin writes kept overlapping it");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "client table reload failed"),
    }
}
