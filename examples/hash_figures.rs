//! The figures behind `strategy: hash` (docs/traffic.md), deterministic
//! (fixed keys, fixed seed: the same figures on any machine), printed as
//! Markdown tables:
//!
//! 1. Maglev (what tollgate uses) against a ring of virtual nodes (what
//!    it could have used): how evenly 100,000 keys split over 5 backends,
//!    how many move when one leaves and come back when it returns, and
//!    how many entries each keeps.
//! 2. Bounded load: 5 backends, requests with Zipf(1.1) keys over 10,000
//!    distinct keys, 200 in flight at any time (the oldest finishes as
//!    each new one starts); the most loaded backend's in-flight count over
//!    the mean, with `hash_balance_factor` 0 (off) and 125.
//!
//!     cargo run --example hash_figures
//!
//! The ring below exists only for the comparison (160 points per unit of
//! weight, as Ketama-style rings commonly use).

use std::collections::VecDeque;

use rand::{Rng, SeedableRng};
use tollgate::balancer::{key_hash, BackendSpec, BackendUrl, Hash, Pool, Weight};

const KEYS: u64 = 100_000;

fn specs(names: &[usize]) -> Vec<BackendSpec> {
    names
        .iter()
        .filter_map(|i| {
            Some(BackendSpec {
                url: BackendUrl::parse(&format!("http://10.0.0.{i}:8080")).ok()?,
                name: format!("b{i}").into(),
                weight: Weight::ONE,
            })
        })
        .collect()
}

/// A consistent-hash ring with `points` virtual nodes per backend.
struct Ring {
    points: Vec<(u64, String)>,
}

impl Ring {
    fn new(names: &[usize], points: usize) -> Self {
        let mut v: Vec<(u64, String)> = names
            .iter()
            .flat_map(|i| {
                (0..points)
                    .map(move |p| (key_hash(format!("b{i}#{p}").as_bytes()), format!("b{i}")))
            })
            .collect();
        v.sort();
        Self { points: v }
    }

    fn owner(&self, key: u64) -> &str {
        let i = self.points.partition_point(|(p, _)| *p < key) % self.points.len();
        &self.points[i].1
    }
}

fn key(k: u64) -> u64 {
    key_hash(&k.to_le_bytes())
}

fn maglev_owners(p: &Pool) -> Vec<String> {
    (0..KEYS)
        .map(|k| {
            p.pick_for(Some(key(k)))
                .map(|b| b.name().to_string())
                .unwrap_or_default()
        })
        .collect()
}

fn ring_owners(r: &Ring) -> Vec<String> {
    (0..KEYS).map(|k| r.owner(key(k)).to_owned()).collect()
}

/// Most keys on one backend over the mean.
fn imbalance(owners: &[String], n: usize) -> f64 {
    let mut counts = std::collections::HashMap::<&str, usize>::new();
    for o in owners {
        *counts.entry(o).or_default() += 1;
    }
    let max = counts.values().copied().max().unwrap_or(0) as f64;
    max / (owners.len() as f64 / n as f64)
}

fn moved(a: &[String], b: &[String]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64
}

/// Keys of backends other than `gone` that moved.
fn churn(a: &[String], b: &[String], gone: &str) -> f64 {
    a.iter()
        .zip(b)
        .filter(|(x, y)| *x != gone && x != y)
        .count() as f64
        / a.len() as f64
}

fn tables() {
    let five = [0, 1, 2, 3, 4];
    let four = [0, 1, 3, 4];
    println!("## Maglev against a ring (5 backends, {KEYS} keys)\n");
    println!("| table | most keys / mean | moved when b2 leaves | other backends' keys moved | not back when b2 returns | entries (weights 1; at weight 1000) |");
    println!("|---|---|---|---|---|---|");

    let p = Pool::of(specs(&five), Box::new(Hash::new(0)));
    let before = maglev_owners(&p);
    p.replace(specs(&four));
    let after = maglev_owners(&p);
    p.replace(specs(&five));
    let back = maglev_owners(&p);
    println!(
        "| Maglev (65,537 slots) | {:.3} | {:.3} | {:.3} | {:.3} | 65,537; 65,537 |",
        imbalance(&before, 5),
        moved(&before, &after),
        churn(&before, &after, "b2"),
        moved(&before, &back),
    );

    for points in [40, 160] {
        let r5 = Ring::new(&five, points);
        let r4 = Ring::new(&four, points);
        let (before, after) = (ring_owners(&r5), ring_owners(&r4));
        println!(
            "| ring, {points} points per unit of weight | {:.3} | {:.3} | {:.3} | {:.3} | {}; {} per backend |",
            imbalance(&before, 5),
            moved(&before, &after),
            churn(&before, &after, "b2"),
            moved(&before, &ring_owners(&r5)),
            r5.points.len(),
            points * 1000,
        );
    }
    println!();
}

/// The cumulative distribution of Zipf(s) over ranks 1..=n.
fn zipf_cdf(n: usize, s: f64) -> Vec<f64> {
    let w: Vec<f64> = (1..=n).map(|r| 1.0 / (r as f64).powf(s)).collect();
    let total: f64 = w.iter().sum();
    let mut acc = 0.0;
    w.iter()
        .map(|x| {
            acc += x / total;
            acc
        })
        .collect()
}

fn bounded() {
    println!(
        "## Bounded load under Zipf(1.1) keys (5 backends, 200 in flight, 200,000 requests)\n"
    );
    println!("| hash_balance_factor | max/mean in flight, worst | max/mean, average | requests not on their key's first backend |");
    println!("|---|---|---|---|");
    let cdf = zipf_cdf(10_000, 1.1);
    for factor in [0, 125, 150] {
        let p = Pool::of(specs(&[0, 1, 2, 3, 4]), Box::new(Hash::new(factor)));
        let home = Pool::of(specs(&[0, 1, 2, 3, 4]), Box::new(Hash::new(0)));
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut flight = VecDeque::new();
        let (mut worst, mut sum, mut samples, mut away) = (0f64, 0f64, 0u32, 0u32);
        for n in 0..200_000u32 {
            if flight.len() == 200 {
                flight.pop_front();
            }
            let u: f64 = rng.random();
            let k = cdf.partition_point(|c| *c < u) as u64;
            let Some(b) = p.pick_for(Some(key(k))) else {
                continue;
            };
            if home.pick_for(Some(key(k))).map(|h| h.name()) != Some(b.name()) {
                away += 1;
            }
            flight.push_back(b.start_request());
            if n >= 1_000 {
                let loads: Vec<usize> = p.backends().iter().map(|b| b.in_flight()).collect();
                let mean = loads.iter().sum::<usize>() as f64 / loads.len() as f64;
                let ratio = *loads.iter().max().unwrap_or(&0) as f64 / mean;
                worst = worst.max(ratio);
                sum += ratio;
                samples += 1;
            }
        }
        println!(
            "| {factor} | {worst:.3} | {:.3} | {:.1} % |",
            sum / f64::from(samples),
            100.0 * f64::from(away) / 200_000.0
        );
    }
    println!();
}

fn main() {
    tables();
    bounded();
}
