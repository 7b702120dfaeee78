//! Bucket levels across restarts.
//!
//! Every `snapshot_interval`, and once more at shutdown, the levels of the
//! buckets that are not full are written in one transaction; only rows
//! whose level changed since the last snapshot are written, and rows of
//! buckets that are full again (or gone) are deleted, since a missing row
//! means "full". At start-up the levels are restored with the refill owed
//! for the time the process was down, capped at capacity.

use std::collections::HashMap;
use std::sync::Arc;

use super::{now_ms, BucketState, ClientRow, ClientStore, SnapshotDelta, StoreError};
use crate::limiter::rules::RuleSet;
use crate::limiter::{ClientKey, Limits, Registry};

/// The stored name of a rule's bucket: `rule:<rule>:<key>`, beside the
/// clients' `ip:` and `key:` names.
fn rule_bucket_name(rule: &str, key: &ClientKey) -> String {
    format!("rule:{rule}:{}", key.encode())
}

/// Writes snapshots, remembering what it wrote last.
#[derive(Debug)]
pub struct Snapshotter {
    registry: Arc<Registry>,
    rules: Option<Arc<RuleSet>>,
    store: Arc<dyn ClientStore>,
    saved: HashMap<String, f64>,
}

/// What one snapshot wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Rows inserted or updated.
    pub written: usize,
    /// Rows deleted.
    pub deleted: usize,
}

impl Snapshotter {
    /// A snapshotter that assumes the table holds `restored` (what start-up
    /// just loaded), so unchanged levels are not written again.
    pub fn new(
        registry: Arc<Registry>,
        store: Arc<dyn ClientStore>,
        restored: &[BucketState],
    ) -> Self {
        Self {
            registry,
            rules: None,
            store,
            saved: restored
                .iter()
                .map(|s| (s.client_key.clone(), s.tokens))
                .collect(),
        }
    }

    /// The same snapshotter, saving the rules' buckets too.
    pub fn with_rules(mut self, rules: Arc<RuleSet>) -> Self {
        self.rules = Some(rules);
        self
    }

    /// Writes one snapshot.
    pub async fn snapshot(&mut self) -> Result<SnapshotStats, StoreError> {
        let now = now_ms();
        let mut current: HashMap<String, f64> = HashMap::new();
        self.registry.for_each(|b| {
            if b.tokens < f64::from(b.capacity) {
                current.insert(b.key.encode(), b.tokens);
            }
        });
        for rule in self.rules.iter().flat_map(|r| r.current().to_vec()) {
            rule.registry.for_each(|b| {
                if b.tokens < f64::from(b.capacity) {
                    current.insert(rule_bucket_name(&rule.name, &b.key), b.tokens);
                }
            });
        }
        let mut delta = SnapshotDelta::default();
        for (key, tokens) in &current {
            if self.saved.get(key) != Some(tokens) {
                delta.upsert.push(BucketState {
                    client_key: key.clone(),
                    tokens: *tokens,
                    saved_at_ms: now,
                });
            }
        }
        delta.delete = self
            .saved
            .keys()
            .filter(|k| !current.contains_key(*k))
            .cloned()
            .collect();
        self.store.save_bucket_states(&delta).await?;
        self.saved = current;
        Ok(SnapshotStats {
            written: delta.upsert.len(),
            deleted: delta.delete.len(),
        })
    }
}

/// What start-up restored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreStats {
    /// Clients loaded from the client table.
    pub clients: usize,
    /// Rows of the client table skipped as invalid (each logged once).
    pub rejected: usize,
    /// Bucket levels restored (not full after the owed refill).
    pub buckets: usize,
}

/// What start-up loaded: counts, and the rows themselves for
/// [`Snapshotter::new`] and [`super::reload::TableSync::new`].
#[derive(Debug, Clone, Default)]
pub struct Restored {
    /// What was applied.
    pub stats: RestoreStats,
    /// The snapshotted bucket levels as read.
    pub states: Vec<BucketState>,
    /// The client table as read, rejected rows included.
    pub clients: Vec<ClientRow>,
}

/// Loads the client table into the registry (pinning each client with its
/// limits), then restores snapshotted levels with the refill owed since
/// they were saved.
pub async fn restore(registry: &Registry, store: &dyn ClientStore) -> Result<Restored, StoreError> {
    let mut stats = RestoreStats::default();
    let clients = store.list().await?;
    let mut limits_of: HashMap<String, Limits> = HashMap::new();
    for row in &clients {
        let client = match row {
            ClientRow::Client(client) => client,
            ClientRow::Rejected(rejected) => {
                rejected.warn_skipped();
                stats.rejected += 1;
                continue;
            }
        };
        let key = client.key();
        if registry.set_limits(&key, client.limits).is_ok() {
            stats.clients += 1;
            limits_of.insert(key.encode(), client.limits);
        }
    }
    let states = store.load_bucket_states().await?;
    let now = now_ms();
    for s in &states {
        let Some(key) = ClientKey::decode(&s.client_key) else {
            continue;
        };
        let limits = limits_of
            .get(&s.client_key)
            .copied()
            .unwrap_or(registry.default_limits());
        let down_secs = (now - s.saved_at_ms).max(0) as f64 / 1000.0;
        let tokens =
            (s.tokens + limits.rate_per_sec() * down_secs).min(f64::from(limits.capacity()));
        if tokens >= f64::from(limits.capacity()) {
            continue;
        }
        // An IP client only if there is room; table clients always fit.
        if registry.set_tokens(&key, tokens).is_ok() {
            stats.buckets += 1;
        }
    }
    Ok(Restored {
        stats,
        states,
        clients,
    })
}

/// Restores the snapshotted levels of the rules' buckets (`rule:` rows),
/// with the refill owed since they were saved; rows of rules no longer
/// configured are left to be deleted by the next snapshot. Returns how
/// many were restored.
pub fn restore_rules(rules: &RuleSet, states: &[BucketState]) -> usize {
    let now = now_ms();
    let current = rules.current();
    let mut restored = 0;
    for s in states {
        let Some(rest) = s.client_key.strip_prefix("rule:") else {
            continue;
        };
        let Some((name, key)) = rest.split_once(':') else {
            continue;
        };
        let (Some(rule), Some(key)) = (
            current.iter().find(|r| &*r.name == name),
            ClientKey::decode(key),
        ) else {
            continue;
        };
        let limits = rule.spec.limits;
        let down_secs = (now - s.saved_at_ms).max(0) as f64 / 1000.0;
        let tokens =
            (s.tokens + limits.rate_per_sec() * down_secs).min(f64::from(limits.capacity()));
        if tokens < f64::from(limits.capacity()) && rule.registry.set_tokens(&key, tokens).is_ok() {
            restored += 1;
        }
    }
    restored
}
