//! Admission: the client's bucket and every matching rule's, all or
//! nothing, with dry-run.
//!
//! A request passes when every enforcing bucket it is charged to admits
//! it. Buckets are charged one after the other (each take is atomic on its
//! own), so when one refuses, the tokens the others took are given back:
//! a refused request takes nothing from any bucket. A bucket in dry-run
//! (`rate_limit.dry_run`, or a rule's `dry_run`) is charged and decides as
//! usual, but its refusal is only counted and logged.
//!
//! The answer's rate-limit headers describe one bucket: the one that
//! refused (or would have, in dry-run), else the one with the fewest tokens
//! left; `RateLimit-Policy` lists every policy that applied.

use std::sync::Arc;

use crate::limiter::{ClientKey, Decision, Limits};

/// The name the client's own bucket goes by in the headers.
pub(crate) const CLIENT_POLICY: &str = "tollgate";

/// One bucket a request was charged to.
#[derive(Debug, Clone)]
pub(crate) struct Charged {
    /// `None`: the client's own bucket; else the rule's name.
    pub(crate) rule: Option<Arc<str>>,
    /// What it decided (the shared bucket's answer with shared limits).
    pub(crate) decision: Decision,
    /// Its refusal is not enforced.
    pub(crate) dry_run: bool,
    /// Where its tokens went, to give them back if another bucket refuses.
    pub(crate) taken: Taken,
}

/// What a charge took, so that it can be given back.
#[derive(Debug, Clone, Default)]
pub(crate) struct Taken {
    /// The bucket's key in its registry.
    pub(crate) key: Option<ClientKey>,
    /// The local take admitted (its tokens are gone from the registry).
    pub(crate) local: Option<Decision>,
    /// The shared bucket's check admitted (its tokens are gone from
    /// Redis or the lease).
    pub(crate) shared: bool,
    /// Tokens taken.
    pub(crate) cost: u32,
}

/// A policy named in `RateLimit-Policy`: its capacity and fill time.
#[derive(Debug, Clone)]
pub(crate) struct PolicyLine {
    /// `tollgate` or the rule's name.
    pub(crate) name: Arc<str>,
    /// `q`: capacity.
    pub(crate) capacity: u32,
    /// `w`: seconds to fill from empty; `None` at zero rate.
    pub(crate) fill_secs: Option<u64>,
}

impl PolicyLine {
    pub(crate) fn of_decision(name: Arc<str>, d: &Decision) -> Self {
        Self {
            name,
            capacity: d.limit(),
            fill_secs: d.fill_time().map(ceil_secs),
        }
    }

    pub(crate) fn of_limits(name: Arc<str>, limits: &Limits) -> Self {
        Self {
            name,
            capacity: limits.capacity(),
            fill_secs: limits.fill_time().map(ceil_secs),
        }
    }
}

fn ceil_secs(d: std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Every policy a request was subject to, when rules applied to it: what
/// its headers describe.
#[derive(Debug, Clone)]
pub(crate) struct Policies {
    /// `RateLimit-Policy`: the client's bucket, then each matching rule.
    pub(crate) lines: Vec<PolicyLine>,
    /// The bucket `RateLimit` and `X-RateLimit-*` describe, by name.
    pub(crate) shown_name: Arc<str>,
    /// Its decision.
    pub(crate) shown: Decision,
}

/// Picks the bucket the headers describe: the first that refused (one
/// that enforces before one in dry-run, whose refusal the headers show as
/// if enforced), else the one with the fewest whole tokens left (the first
/// of equals).
pub(crate) fn shown(charged: &[Charged]) -> Option<&Charged> {
    charged
        .iter()
        .find(|c| !c.decision.allowed() && !c.dry_run)
        .or_else(|| charged.iter().find(|c| !c.decision.allowed()))
        .or_else(|| charged.iter().min_by_key(|c| c.decision.remaining()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::{Registry, RegistryConfig};

    fn decision(capacity: u64, takes: usize) -> Decision {
        let registry = Registry::new(RegistryConfig {
            default_limits: Limits::new(capacity, 1.0).expect("valid"),
            max_clients: std::num::NonZeroUsize::new(10).expect("non-zero"),
            idle_timeout: std::time::Duration::from_secs(60),
            refill_interval: std::time::Duration::from_millis(100),
        });
        let key = ClientKey::api("k").expect("key");
        let mut last = None;
        for _ in 0..takes {
            last = Some(registry.check(&key).expect("room"));
        }
        last.expect("at least one take")
    }

    fn charged(name: Option<&str>, d: Decision) -> Charged {
        Charged {
            rule: name.map(Arc::from),
            decision: d,
            dry_run: false,
            taken: Taken::default(),
        }
    }

    #[test]
    fn the_headers_show_the_refusal_else_the_fewest_tokens() {
        let client = charged(None, decision(100, 1));
        let search = charged(Some("search"), decision(10, 3));
        let both = [client.clone(), search.clone()];
        let shown_one = shown(&both).expect("one");
        assert_eq!(shown_one.rule.as_deref(), Some("search"), "7 left beats 99");
        let refused = charged(Some("writes"), decision(1, 2));
        let all = [client, refused, search];
        assert_eq!(shown(&all).expect("one").rule.as_deref(), Some("writes"));
    }
}
