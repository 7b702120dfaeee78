//! The lookup loop of one discovered pool: look up, replace the
//! discovered backends when the answer changed, wait the interval (or the
//! answer's TTL when shorter), until the pool goes or the process stops.

use std::sync::Arc;
use std::time::Duration;

use super::resolve::{lookup, resolver, LookupError};
use super::{DiscoverySpec, Membership};
use crate::health::Checker;
use crate::shutdown::Signal;
use crate::telemetry::{Metrics, DISCOVERY_UPDATES};

/// Shortest wait between two lookups, whatever the TTL says (a TTL of 0
/// must not make a busy loop).
const MIN_WAIT: Duration = Duration::from_secs(1);

/// What a discovered pool's loop works on.
#[derive(Debug)]
pub struct Discovered {
    /// The pool's name (logs, metrics).
    pub pool: Arc<str>,
    /// Its backend set.
    pub membership: Arc<Membership>,
    /// Its checker: added backends are checked before they get requests.
    pub checker: Checker,
    /// Where lookups are counted.
    pub metrics: Metrics,
}

/// Starts looking up `spec` every interval, the first time at once, until
/// `stop` (the pool's discovery ends) or `shutdown` completes.
pub fn spawn(spec: DiscoverySpec, on: Discovered, stop: Signal, shutdown: Signal) {
    tokio::spawn(async move {
        let looping = run(&on.pool, &spec, &on.membership, &on.checker, &on.metrics);
        tokio::select! {
            () = looping => {}
            () = stop.wait() => {}
            () = shutdown.wait() => {}
        }
    });
}

async fn run(
    pool: &str,
    spec: &DiscoverySpec,
    membership: &Membership,
    checker: &Checker,
    metrics: &Metrics,
) {
    let count = |result: &'static str| {
        metrics
            .counter(DISCOVERY_UPDATES, &[("pool", pool), ("result", result)])
            .increment(1);
    };
    let resolver = match resolver(spec) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(pool, error = %e, "DNS discovery cannot start: the pool keeps its configured backends");
            None
        }
    };
    loop {
        let mut wait = spec.interval;
        let answer = match &resolver {
            Some(r) => lookup(r, spec).await,
            None => Err(LookupError::Setup("see the error at start".into())),
        };
        match answer {
            Err(e) => {
                tracing::warn!(pool, error = %e, "DNS discovery failed: the last known backends stay");
                count("failed");
            }
            Ok(found) if found.backends.is_empty() => {
                tracing::warn!(
                    pool,
                    "DNS discovery found no address: the last known backends stay"
                );
                count("empty");
            }
            Ok(found) => {
                if let Some(ttl) = found.ttl {
                    wait = wait.min(ttl.max(MIN_WAIT));
                }
                match membership.set_discovered(checker, found.backends).await {
                    None => count("unchanged"),
                    Some(replaced) => {
                        tracing::info!(
                            pool,
                            added = ?replaced.added,
                            removed = ?replaced.removed,
                            "DNS discovery changed the backends"
                        );
                        count("changed");
                    }
                }
            }
        }
        tokio::time::sleep(wait).await;
    }
}
