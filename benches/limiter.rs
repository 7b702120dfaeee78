//! Limiter throughput, tollgate against `governor` in the same run.
//!
//! `cargo bench --bench limiter`. Both limiters get limits high enough
//! that every check is admitted, so the work compared is the same: find
//! the client's bucket and take a token.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use governor::{Quota, RateLimiter};
use tollgate::limiter::rules::{RuleBounds, RuleKey, RuleSet, RuleSpec};
use tollgate::limiter::{ClientKey, Limits, Registry, RegistryConfig};

const KEYS: usize = 1_000_000;

fn registry(max_clients: usize) -> Registry {
    Registry::new(RegistryConfig {
        default_limits: Limits::new(1_000_000_000, 1e9).expect("valid"),
        max_clients: NonZeroUsize::new(max_clients).expect("nonzero"),
        idle_timeout: Duration::from_secs(3600),
        refill_interval: Duration::from_millis(100),
    })
}

fn governor_quota() -> Quota {
    let n = NonZeroU32::new(1_000_000_000).expect("nonzero");
    Quota::per_second(n).allow_burst(n)
}

fn ips() -> Vec<IpAddr> {
    (0..KEYS as u32)
        .map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)))
        .collect()
}

/// A visiting order that jumps around the whole key space, so lookups miss
/// the cache the way a million real clients would.
fn scattered(n: usize) -> Vec<usize> {
    // 999_983 is prime, so i * p mod n visits every index once.
    (0..n).map(|i| (i * 999_983 + 12_345) % n).collect()
}

fn hot_key(c: &mut Criterion) {
    let mut g = c.benchmark_group("check_hot_key");
    let reg = registry(1000);
    let key = ClientKey::Ip(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
    g.bench_function("tollgate", |b| {
        b.iter(|| black_box(reg.check(black_box(&key)).map(|d| d.allowed())))
    });
    let gov = RateLimiter::keyed(governor_quota());
    let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    g.bench_function("governor", |b| {
        b.iter(|| black_box(gov.check_key(black_box(&ip)).is_ok()))
    });
    g.finish();
}

fn many_keys(c: &mut Criterion) {
    let ips = ips();
    let order = scattered(KEYS);
    let keys: Vec<ClientKey> = ips.iter().map(|ip| ClientKey::Ip(*ip)).collect();

    let reg = registry(KEYS);
    for k in &keys {
        let _ = reg.check(k);
    }
    let gov = RateLimiter::keyed(governor_quota());
    for ip in &ips {
        let _ = gov.check_key(ip);
    }

    let mut g = c.benchmark_group("check_1m_keys");
    let mut i = 0usize;
    g.bench_function("tollgate", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(reg.check(&keys[order[i]]).map(|d| d.allowed()))
        })
    });
    let mut i = 0usize;
    g.bench_function("governor", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(gov.check_key(&ips[order[i]]).is_ok())
        })
    });
    g.finish();

    // Two threads, each checking `iters` keys in its own scattered order;
    // one iteration = one check on each thread at the same time.
    let mut g = c.benchmark_group("check_1m_keys_2threads");
    let two = |iters: u64, check: &(dyn Fn(usize) + Sync)| -> Duration {
        let start = Instant::now();
        std::thread::scope(|s| {
            for t in 0..2usize {
                let order = &order;
                s.spawn(move || {
                    for n in 0..iters as usize {
                        check(order[(n * 2 + t) % KEYS]);
                    }
                });
            }
        });
        start.elapsed()
    };
    g.bench_function("tollgate", |b| {
        b.iter_custom(|iters| {
            two(iters, &|i| {
                let _ = black_box(reg.check(&keys[i]).map(|d| d.allowed()));
            })
        })
    });
    g.bench_function("governor", |b| {
        b.iter_custom(|iters| {
            two(iters, &|i| {
                black_box(gov.check_key(&ips[i]).is_ok());
            })
        })
    });
    g.finish();
}

fn sweep(c: &mut Criterion) {
    // A million buckets, half of them part-drained (not full), none idle
    // long enough to evict, so every iteration does the same work.
    let reg = Registry::new(RegistryConfig {
        default_limits: Limits::new(100, 10.0).expect("valid"),
        max_clients: NonZeroUsize::new(KEYS).expect("nonzero"),
        idle_timeout: Duration::from_secs(3600),
        refill_interval: Duration::from_millis(100),
    });
    for (n, ip) in ips().into_iter().enumerate() {
        let key = ClientKey::Ip(ip);
        let _ = reg.check(&key);
        if n % 2 == 0 {
            for _ in 0..20 {
                let _ = reg.check(&key);
            }
        }
    }
    let mut g = c.benchmark_group("refill_sweep_1m");
    g.bench_function("tollgate", |b| b.iter(|| black_box(reg.refill())));
    g.finish();

    // The full eviction pass the ticks spread out: every slot examined once.
    let mut g = c.benchmark_group("eviction_pass_1m");
    g.sample_size(20);
    g.bench_function("tollgate", |b| {
        b.iter_batched(
            || (),
            |()| black_box(reg.evict_idle()),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// A newcomer refused at `max_clients` when every tracked bucket holds
/// state (none can be reclaimed): the cost an IP flood imposes per request
/// once the table is full.
fn refuse_when_full(c: &mut Criterion) {
    const CLIENTS: usize = 100_000;
    let reg = Registry::new(RegistryConfig {
        default_limits: Limits::new(100, 10.0).expect("valid"),
        max_clients: NonZeroUsize::new(CLIENTS).expect("nonzero"),
        idle_timeout: Duration::from_secs(3600),
        refill_interval: Duration::from_millis(100),
    });
    // One token taken from each: 99 of 100 left, so none is full.
    for ip in ips().into_iter().take(CLIENTS) {
        let _ = reg.check(&ClientKey::Ip(ip));
    }
    let newcomers: Vec<ClientKey> = (0..1024u32)
        .map(|i| ClientKey::Ip(IpAddr::V4(Ipv4Addr::from(0xc633_6400 + i))))
        .collect();
    let mut g = c.benchmark_group("refuse_at_max_clients_100k");
    let mut i = 0usize;
    g.bench_function("tollgate", |b| {
        b.iter(|| {
            i = (i + 1) % newcomers.len();
            black_box(reg.check(&newcomers[i]).is_err())
        })
    });
    g.finish();
}

/// `n` rules on `/rule-<i>` prefixes (none matches `/`), plus one on
/// `/` when `matching`.
fn rule_set(n: usize, matching: bool) -> RuleSet {
    let mut specs: Vec<RuleSpec> = (0..n)
        .map(|i| RuleSpec {
            name: format!("rule-{i}"),
            path_prefix: format!("/rule-{i}"),
            ignore_case: false,
            routes: Vec::new(),
            hosts: Vec::new(),
            methods: vec![http::Method::GET],
            key: RuleKey::Client,
            limits: Limits::new(1_000_000_000, 1e9).expect("valid"),
            cost: NonZeroU32::MIN,
            dry_run: false,
        })
        .collect();
    if matching {
        specs.push(RuleSpec {
            name: "all".into(),
            path_prefix: "/".into(),
            ..specs.first().cloned().unwrap_or_else(|| RuleSpec {
                name: String::new(),
                path_prefix: String::new(),
                ignore_case: false,
                routes: Vec::new(),
                hosts: Vec::new(),
                methods: Vec::new(),
                key: RuleKey::Client,
                limits: Limits::new(1_000_000_000, 1e9).expect("valid"),
                cost: NonZeroU32::MIN,
                dry_run: false,
            })
        });
    }
    RuleSet::new(
        &specs,
        RuleBounds {
            max_clients: NonZeroUsize::new(1000).expect("nonzero"),
            idle_timeout: Duration::from_secs(3600),
            refill_interval: Duration::from_millis(100),
        },
    )
}

/// The limiter's part of admitting one request with rules, as the proxy
/// does it: the client's bucket, the rules in force matched by method and
/// path, and a take from each matching rule's bucket (headers not
/// included; `scripts/bench.sh` with `RULES=10` measures the whole path).
fn rules(c: &mut Criterion) {
    let mut g = c.benchmark_group("admit_with_rules");
    let reg = registry(1000);
    let key = ClientKey::Ip(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
    let method = http::Method::GET;
    for (label, n, matching) in [
        ("0 rules", 0, false),
        ("10 rules, none matching", 10, false),
        ("1 rule, matching", 0, true),
        ("10 rules + 1 matching", 10, true),
    ] {
        let set = rule_set(n, matching);
        g.bench_function(label, |b| {
            b.iter(|| {
                let mut allowed = reg
                    .check(black_box(&key))
                    .map(|d| d.allowed())
                    .unwrap_or(false);
                let current = set.current();
                for rule in current.iter() {
                    if rule
                        .spec
                        .matches(&method, black_box("/"), Default::default())
                    {
                        allowed &= rule
                            .registry
                            .check_cost(&key, rule.spec.cost.get())
                            .map(|d| d.allowed())
                            .unwrap_or(false);
                    }
                }
                black_box(allowed)
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = hot_key, many_keys, sweep, refuse_when_full, rules
}
criterion_main!(benches);
