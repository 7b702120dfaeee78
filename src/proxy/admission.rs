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

use http::Request;

use super::{ClientBody, Conn, Live, SharedLimits};
use crate::access_log::Limited;
use crate::error::ProxyError;
use crate::limiter::rules::{Rule, RuleSet, Rules};
use crate::limiter::shared::{Bucket, OnFailure, SharedLimiter};
use crate::limiter::{ClientKey, Decision, Limits, Registry, RegistryError};
use crate::routing::hosts::request_host;
use crate::routing::Target;
use crate::telemetry::Metrics;

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
    /// Redis could not answer and this replica's share of the shared
    /// bucket admitted (`on_failure: local`): its tokens are gone from
    /// the share.
    pub(crate) fallback: bool,
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

/// The buckets a request is charged to: the client registry, the rules
/// and, with several replicas, the shared limiter. Every proxy thread's
/// copy shares them.
#[derive(Debug, Clone)]
pub(crate) struct Admission {
    /// `None`: rate limiting off at start-up (a reload cannot turn it on).
    limiter: Option<Arc<Registry>>,
    /// `rate_limit.rules`; `None`: none configured at start-up.
    rules: Option<Arc<RuleSet>>,
    shared: Option<SharedLimits>,
    /// Where refusals and fallbacks are counted.
    metrics: Metrics,
}

/// What admission learned of a request, for its answer and the access log.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// The key the limiter charged.
    pub(crate) client: Option<ClientKey>,
    /// Which limit refused the request.
    pub(crate) limited: Option<Limited>,
    /// Every policy that applied, when rules did (else the client's
    /// decision alone shapes the headers).
    pub(crate) policies: Option<Policies>,
}

/// Who a request is charged to.
struct Identified {
    /// Its API key if the client table knows it, else its address.
    key: ClientKey,
    /// The local client bucket's decision.
    local: Decision,
    /// The address key, when it was computed already.
    ip: Option<ClientKey>,
}

impl Admission {
    /// Admission charging `limiter` (`None`: no limits).
    pub(crate) fn new(limiter: Option<Arc<Registry>>, metrics: Metrics) -> Self {
        Self {
            limiter,
            rules: None,
            shared: None,
            metrics,
        }
    }

    /// Charges requests to `rules` as well.
    pub(crate) fn set_rules(&mut self, rules: Arc<RuleSet>) {
        self.rules = Some(rules);
    }

    /// Checks every request against limits shared with other replicas.
    pub(crate) fn set_shared(&mut self, shared: SharedLimits) {
        self.shared = Some(shared);
    }

    /// The limits shared with other replicas, if any.
    pub(crate) fn shared(&self) -> Option<&SharedLimits> {
        self.shared.as_ref()
    }

    /// The rules in force, if there is a rule set.
    pub(crate) fn rules(&self) -> Option<&Arc<RuleSet>> {
        self.rules.as_ref()
    }

    /// Identifies the client and charges its bucket and every matching
    /// rule's (all or nothing); `Ok(None)` when rate limiting is off. With
    /// shared limits the shared buckets decide; the local ones are charged
    /// too, so that a fallback to them starts from this replica's recent
    /// traffic. `report` gets the key charged, what refused, and the
    /// policies when rules applied.
    pub(crate) async fn admit(
        &self,
        req: &Request<ClientBody>,
        conn: Conn,
        (live, target): (&Live, Target<'_>),
        report: &mut Report,
    ) -> Result<Option<Decision>, ProxyError> {
        let Some(limiter) = self.limiter.as_ref().filter(|_| live.limiting) else {
            return Ok(None);
        };
        let Identified { key, local, ip } = identify(limiter, req, conn, live)?;
        let client = self.charge(None, key.clone(), local, 1).await?;
        report.client = Some(key.clone());
        let route = target.route.map(|r| &*r.name);
        let place = live
            .routing
            .labelled()
            .then(|| (route.unwrap_or(""), &*target.pool.name));
        // Without rules, no Arc of the rule list is taken: its count is a
        // cache line every proxy thread would otherwise write per request.
        let rules = self
            .rules
            .as_ref()
            .filter(|r| !r.is_empty())
            .map(|r| r.current());
        let matching = match &rules {
            Some(rules) => matching_rules(rules, req, route),
            None => Vec::new(),
        };
        if matching.is_empty() {
            return settle_client(client.0, live, report, (&self.metrics, place));
        }
        let asked = Asked {
            req,
            conn,
            live,
            key: &key,
            ip,
        };
        let (charged, lines) = self.charge_rules(client, matching, asked).await?;
        self.settle(charged, lines, (&key, place), report)
    }

    /// Charges each matching rule after the client's bucket, until one
    /// refuses (all or nothing: the rest are only listed). Returns every
    /// bucket charged and the `RateLimit-Policy` lines.
    async fn charge_rules(
        &self,
        client: (Decision, Taken),
        matching: Vec<&Arc<Rule>>,
        mut asked: Asked<'_>,
    ) -> Result<(Vec<Charged>, Vec<PolicyLine>), ProxyError> {
        let live = asked.live;
        let mut lines = vec![PolicyLine::of_decision(Arc::from(CLIENT_POLICY), &client.0)];
        let mut refused = !client.0.allowed() && !live.dry_run;
        let mut charged = vec![Charged {
            rule: None,
            decision: client.0,
            dry_run: live.dry_run,
            taken: client.1,
        }];
        for rule in matching {
            let rule_key = match asked.rule_key(rule) {
                // Keyed by a header the request lacks: not matched.
                None => continue,
                Some(Ok(k)) => k,
                Some(Err(reason)) => {
                    self.give_back(&charged);
                    return Err(ProxyError::BadRequest(reason.into()));
                }
            };
            lines.push(PolicyLine::of_limits(rule.name.clone(), &rule.spec.limits));
            if refused {
                continue;
            }
            let one = match self.charge_rule(rule, rule_key, live).await {
                Ok(one) => one,
                Err(e) => {
                    self.give_back(&charged);
                    return Err(e);
                }
            };
            refused = !one.decision.allowed() && !one.dry_run;
            charged.push(one);
        }
        Ok((charged, lines))
    }

    /// Charges one rule's bucket, locally and (with shared limits) in
    /// Redis.
    async fn charge_rule(
        &self,
        rule: &Rule,
        key: ClientKey,
        live: &Live,
    ) -> Result<Charged, ProxyError> {
        let cost = rule.spec.cost.get();
        let local = rule
            .registry
            .check_cost(&key, cost)
            .map_err(|RegistryError::Full(_)| full(&rule.registry))?;
        let (decision, taken) = self.charge(Some(&rule.name), key, local, cost).await?;
        Ok(Charged {
            rule: Some(rule.name.clone()),
            decision,
            dry_run: live.dry_run || rule.spec.dry_run,
            taken,
        })
    }

    /// The verdict once every bucket was charged: the policies for the
    /// headers, refusals counted, and the first enforced refusal (with
    /// every take given back) or the decision the headers show.
    fn settle(
        &self,
        charged: Vec<Charged>,
        lines: Vec<PolicyLine>,
        (key, place): (&ClientKey, Option<(&str, &str)>),
        report: &mut Report,
    ) -> Result<Option<Decision>, ProxyError> {
        let Some(shown) = shown(&charged) else {
            return Ok(None);
        };
        report.policies = Some(Policies {
            lines,
            shown_name: shown
                .rule
                .clone()
                .unwrap_or_else(|| Arc::from(CLIENT_POLICY)),
            shown: shown.decision,
        });
        let verdict = shown.decision;
        for c in charged.iter().filter(|c| !c.decision.allowed()) {
            let policy = c.rule.as_deref().unwrap_or("client");
            self.metrics.rate_limited(policy, c.dry_run, place);
            if c.dry_run {
                tracing::debug!(policy, client = %key, "dry run: would have refused");
            }
        }
        if let Some(c) = charged.iter().find(|c| !c.decision.allowed() && !c.dry_run) {
            report.limited = Some(c.rule.clone().map_or(Limited::Client, Limited::Rule));
            let refused_by = c.decision;
            self.give_back(&charged);
            return Err(ProxyError::RateLimited(refused_by));
        }
        Ok(Some(verdict))
    }

    /// One bucket (the client's, `rule: None`, or a rule's) with shared
    /// limits: Redis's (or the lease's) answer, or the failure policy's.
    /// Without shared limits, the local decision.
    async fn charge(
        &self,
        rule: Option<&str>,
        key: ClientKey,
        local: Decision,
        cost: u32,
    ) -> Result<(Decision, Taken), ProxyError> {
        let mut taken = Taken {
            key: Some(key),
            local: local.allowed().then_some(local),
            shared: false,
            fallback: false,
            cost,
        };
        let (Some(shared), Some(key)) = (&self.shared, taken.key.as_ref()) else {
            return Ok((local, taken));
        };
        let bucket = Bucket { rule, key };
        // A leased token answers without Redis and without a future. The
        // Redis exchange is boxed: inline, that large future would grow
        // every request's future, which is moved several times per
        // request, with or without shared limits.
        let answer = match shared.limiter.try_local(bucket, &local, cost) {
            Some(v) => Ok(v),
            None => Box::pin(shared.limiter.check_remote(bucket, &local, cost)).await,
        };
        match answer {
            Ok(v) => {
                taken.shared = v.allowed();
                Ok((v, taken))
            }
            Err(_) => {
                self.metrics.shared_fallback(shared.on_failure.as_str());
                match shared.on_failure {
                    OnFailure::Local => Ok(self.share(&shared.limiter, rule, local, taken)),
                    OnFailure::Reject => {
                        self.give_back(std::slice::from_ref(&Charged {
                            rule: rule.map(Arc::from),
                            decision: local,
                            dry_run: false,
                            taken,
                        }));
                        Err(ProxyError::LimiterUnavailable)
                    }
                }
            }
        }
    }

    /// `on_failure: local`: this replica's share of the bucket decides,
    /// never its whole own bucket, since every replica is falling back at
    /// once. A refusal gives the own bucket's token back.
    fn share(
        &self,
        limiter: &SharedLimiter,
        rule: Option<&str>,
        local: Decision,
        mut taken: Taken,
    ) -> (Decision, Taken) {
        let Some(key) = taken.key.take() else {
            return (local, taken);
        };
        let v = limiter.fallback(Bucket { rule, key: &key }, &local, taken.cost);
        taken.fallback = v.allowed();
        if !v.allowed() && taken.local.take().is_some() {
            self.give_back_local(rule, &key, taken.cost);
        }
        taken.key = Some(key);
        (v, taken)
    }

    /// Gives back what `charged` took, for a request that is not
    /// admitted after all.
    fn give_back(&self, charged: &[Charged]) {
        for c in charged {
            let t = &c.taken;
            let Some(key) = &t.key else { continue };
            if t.local.is_some() {
                self.give_back_local(c.rule.as_deref(), key, t.cost);
            }
            let Some(shared) = &self.shared else { continue };
            let bucket = Bucket {
                rule: c.rule.as_deref(),
                key,
            };
            if t.shared {
                shared.limiter.refund(bucket, &c.decision, t.cost);
            } else if t.fallback {
                shared.limiter.refund_fallback(bucket, t.cost);
            }
        }
    }

    /// Gives `cost` tokens back to the local bucket of `key` (the
    /// client's, or the named rule's if it is still in force).
    fn give_back_local(&self, rule: Option<&str>, key: &ClientKey, cost: u32) {
        match rule {
            None => {
                if let Some(limiter) = &self.limiter {
                    limiter.give_back(key, cost);
                }
            }
            Some(name) => {
                let current = self.rules.as_ref().map(|r| r.current());
                if let Some(rule) = current
                    .iter()
                    .flat_map(|r| r.iter())
                    .find(|r| *r.name == *name)
                {
                    rule.registry.give_back(key, cost);
                }
            }
        }
    }
}

/// What the rules' keys are made from.
struct Asked<'a> {
    req: &'a Request<ClientBody>,
    conn: Conn,
    live: &'a Live,
    /// The client's key.
    key: &'a ClientKey,
    /// The address key, computed once when first needed.
    ip: Option<ClientKey>,
}

impl Asked<'_> {
    /// The key of `rule`'s bucket for this request: `None` when it is
    /// keyed by a header the request lacks; an error for a malformed one.
    fn rule_key(&mut self, rule: &Rule) -> Option<Result<ClientKey, String>> {
        let (req, conn, live) = (self.req, self.conn, self.live);
        let ip = self
            .ip
            .get_or_insert_with(|| live.identifier.client_key_of(req.headers(), conn));
        rule.key_of(self.key, ip, req.headers())
    }
}

/// The client's key and its local bucket's decision. A key counts only
/// if it is in the client table; any other key is charged to the caller's
/// address like no key at all.
fn identify(
    limiter: &Registry,
    req: &Request<ClientBody>,
    conn: Conn,
    live: &Live,
) -> Result<Identified, ProxyError> {
    let api_key = live
        .identifier
        .api_key(req.headers())
        .map_err(|e| ProxyError::BadApiKey(e.to_string()))?;
    if let Some(pinned) = api_key
        .map(ClientKey::Api)
        .and_then(|k| limiter.check_pinned(&k).map(|d| (k, d)))
    {
        return Ok(Identified {
            key: pinned.0,
            local: pinned.1,
            ip: None,
        });
    }
    let ip = live.identifier.client_key_of(req.headers(), conn);
    let local = limiter
        .check(&ip)
        .map_err(|RegistryError::Full(_)| full(limiter))?;
    Ok(Identified {
        key: ip.clone(),
        local,
        ip: Some(ip),
    })
}

/// The rules that apply to `req` on `route`. The request's host is
/// worked out only if a rule its path reaches names hosts.
fn matching_rules<'r>(
    rules: &'r Rules,
    req: &Request<ClientBody>,
    route: Option<&str>,
) -> Vec<&'r Arc<Rule>> {
    rules.matching(req.method(), req.uri().path(), route, || {
        req.headers()
            .get(http::header::HOST)
            .and_then(|h| request_host(h.as_bytes()))
    })
}

/// The answer for a registry with no room for another client.
fn full(registry: &Registry) -> ProxyError {
    ProxyError::ClientTableFull {
        retry_after: registry.tick_interval(),
    }
}

/// The answer when only the client's bucket applied.
fn settle_client(
    verdict: Decision,
    live: &Live,
    report: &mut Report,
    (metrics, place): (&Metrics, Option<(&str, &str)>),
) -> Result<Option<Decision>, ProxyError> {
    if verdict.allowed() {
        return Ok(Some(verdict));
    }
    if live.dry_run {
        metrics.rate_limited("client", true, place);
        tracing::debug!(client = ?report.client, "dry run: would have refused");
        return Ok(Some(verdict));
    }
    metrics.rate_limited("client", false, place);
    report.limited = Some(Limited::Client);
    Err(ProxyError::RateLimited(verdict))
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
