//! Consistent hashing with bounded loads (`strategy: hash`).
//!
//! A request's key (client, address, a header, a cookie or the path,
//! hashed by [`key_hash`]) picks a slot of a Maglev lookup table built over
//! *every* configured backend, not only the ones that take requests: a
//! backend that turns unhealthy, is drained or ejected is skipped by
//! walking on to the next slots, so the keys of every other backend stay
//! where they are, and its own keys come back when it does. Only a change
//! of the configured set (a reload) rebuilds the table, and Maglev moves
//! little more than the leaving backend's share then (measured in
//! `examples/hash_figures.rs`).
//!
//! Maglev rather than a ring of virtual nodes: an O(1) lookup in a table
//! of fixed size whatever the weights (a ring needs points in proportion
//! to weight, 160 per unit: 160,000 for one backend of weight 1000), and a
//! split of the keys as even as a ring's with 160 points per unit (see
//! docs/traffic.md for the figures), for ~0.1 % of other backends' keys
//! moving when the set changes.
//!
//! Bounded load (`hash_balance_factor`, "Consistent Hashing with Bounded
//! Loads", Mirrokni, Thorup and Zadimoghaddam, as HAProxy's
//! `hash-balance-factor`): a backend already carrying its weighted share
//! of the in-flight requests times the factor is passed over for the next
//! one in the walk, so one hot key cannot bury its backend.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;

use super::random::by_weight;
use super::{lighter, Backend, Strategy};

/// Slots of the lookup table: primes, the first at least 100 per backend
/// (Maglev's advice, so shares stay within ~1 % of their weight).
const TABLE_SIZES: [usize; 3] = [65_537, 655_373, 1_048_573];

/// Consistent hashing over a Maglev table, with an optional load bound.
#[derive(Debug, Default)]
pub struct Hash {
    /// Percent of the weighted mean in-flight load a backend may carry
    /// before the walk passes it over; 0: no bound.
    balance_factor: u32,
    table: ArcSwapOption<Table>,
    /// Held by the one request that rebuilds a stale table; the others use
    /// the stale one meanwhile rather than wait.
    building: Mutex<()>,
}

impl Hash {
    /// Hashing with this load bound (percent of the mean; 0 = none).
    pub fn new(balance_factor: u32) -> Self {
        Self {
            balance_factor,
            ..Self::default()
        }
    }

    /// The table for `all`, rebuilt if the configured set changed.
    fn table_for(&self, all: &Arc<Vec<Arc<Backend>>>) -> Arc<Table> {
        if let Some(t) = self.table.load_full().filter(|t| Arc::ptr_eq(&t.all, all)) {
            return t;
        }
        match self.building.try_lock() {
            Ok(_building) => {
                let t = Arc::new(Table::build(all.clone()));
                self.table.store(Some(t.clone()));
                t
            }
            // Someone else is building: the old table still names
            // backends, and the walk only takes ones that are candidates.
            Err(std::sync::TryLockError::WouldBlock) => self
                .table
                .load_full()
                .unwrap_or_else(|| Arc::new(Table::build(all.clone()))),
            Err(std::sync::TryLockError::Poisoned(p)) => {
                let _building = p.into_inner();
                let t = Arc::new(Table::build(all.clone()));
                self.table.store(Some(t.clone()));
                t
            }
        }
    }

    /// Whether `b` may take one more request under the bound, given the
    /// candidates' total in-flight load and total weight.
    fn has_room(&self, b: &Backend, (load, weight): (u128, u128)) -> bool {
        if self.balance_factor == 0 {
            return true;
        }
        // load_b < ceil(factor/100 · (load + 1) · w_b / W), which for a
        // whole load_b is load_b < factor/100 · (load + 1) · w_b / W.
        let mine = b.in_flight() as u128 * 100 * weight;
        mine < u128::from(self.balance_factor) * (load + 1) * u128::from(b.weight())
    }
}

impl Strategy for Hash {
    /// A request without a key is spread at random by weight.
    fn pick(&self, healthy: &[Arc<Backend>]) -> usize {
        by_weight(healthy, &mut rand::rng(), None)
    }

    fn pick_keyed(
        &self,
        all: &Arc<Vec<Arc<Backend>>>,
        healthy: &[Arc<Backend>],
        key: u64,
    ) -> usize {
        let table = self.table_for(all);
        let totals = if self.balance_factor == 0 {
            (0, 0)
        } else {
            healthy.iter().fold((0u128, 0u128), |(l, w), b| {
                (l + b.in_flight() as u128, w + u128::from(b.weight()))
            })
        };
        let found = table.walk(key).find_map(|b| {
            let i = healthy.iter().position(|h| Arc::ptr_eq(h, b))?;
            self.has_room(b, totals).then_some(i)
        });
        // Only a backend newer than a table still being rebuilt can be
        // missing from the walk: the least loaded one then.
        found.unwrap_or_else(|| {
            (1..healthy.len()).fold(0, |best, i| match (healthy.get(i), healthy.get(best)) {
                (Some(b), Some(current)) if lighter(b, current) => i,
                _ => best,
            })
        })
    }
}

/// A Maglev lookup table over one configured backend set.
#[derive(Debug)]
struct Table {
    /// The set it was built for (kept, so a stale table still names live
    /// backends and its identity cannot be reused).
    all: Arc<Vec<Arc<Backend>>>,
    /// Index into `all` of each slot's backend.
    slots: Vec<u32>,
}

impl Table {
    /// Maglev's population, weighted: each round every backend earns its
    /// weight in credit and takes its next preferred free slot per
    /// heaviest weight earned, so slots split in proportion to weight.
    /// Backends are visited in name order, so the table depends on the set,
    /// not on the order of the config.
    fn build(all: Arc<Vec<Arc<Backend>>>) -> Self {
        let n = all.len();
        let size = TABLE_SIZES
            .iter()
            .copied()
            .find(|&m| m >= n.saturating_mul(100))
            .unwrap_or(TABLE_SIZES[TABLE_SIZES.len() - 1]);
        if n == 0 {
            return Self {
                all,
                slots: Vec::new(),
            };
        }
        let mut order: Vec<usize> = (0..n).collect();
        let names: Vec<Arc<str>> = all.iter().map(|b| b.name()).collect();
        order.sort_by(|&a, &b| names.get(a).cmp(&names.get(b)));
        let m = size as u64;
        // (offset, skip, next, credit, weight) per backend, in name order.
        let mut perm: Vec<(u64, u64, u64, u64, u64, u32)> = order
            .iter()
            .filter_map(|&i| {
                let name = names.get(i)?.as_bytes();
                let w = all.get(i).map_or(1, |b| u64::from(b.weight()));
                let offset = mix(fnv1a(name) ^ 0x6d61_676c_6576_0001) % m;
                let skip = mix(fnv1a(name) ^ 0x6d61_676c_6576_0002) % (m - 1) + 1;
                Some((offset, skip, 0, 0, w, u32::try_from(i).ok()?))
            })
            .collect();
        let heaviest = perm.iter().map(|p| p.4).max().unwrap_or(1);
        let mut slots = vec![u32::MAX; size];
        let mut filled = 0;
        while filled < size {
            for (offset, skip, next, credit, weight, index) in &mut perm {
                *credit += *weight;
                if *credit < heaviest {
                    continue;
                }
                *credit -= heaviest;
                loop {
                    let c = ((*offset + *next * *skip) % m) as usize;
                    *next += 1;
                    if let Some(slot) = slots.get_mut(c).filter(|s| **s == u32::MAX) {
                        *slot = *index;
                        filled += 1;
                        break;
                    }
                }
                if filled == size {
                    break;
                }
            }
        }
        Self { all, slots }
    }

    /// The backends from `key`'s slot on, slot after slot, once round the
    /// table.
    fn walk(&self, key: u64) -> impl Iterator<Item = &Arc<Backend>> + '_ {
        let len = self.slots.len();
        let start = if len == 0 {
            0
        } else {
            (key % len as u64) as usize
        };
        (0..len).filter_map(move |step| {
            let slot = self.slots.get((start + step) % len)?;
            self.all.get(*slot as usize)
        })
    }
}

/// The 64-bit hash of a request key: FNV-1a, then a 64-bit finalizer to
/// spread similar keys. Fixed, not seeded per process, so every replica of
/// tollgate sends a key to the same backend.
pub fn key_hash(bytes: &[u8]) -> u64 {
    mix(fnv1a(bytes))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// SplitMix64's finalizer.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::{BackendSpec, BackendUrl, Pool, Weight};

    fn spec(i: u16, weight: u64) -> Option<BackendSpec> {
        Some(BackendSpec {
            url: BackendUrl::parse(&format!("http://10.0.0.{i}:8080")).ok()?,
            name: format!("b{i}").into(),
            weight: Weight::new(weight)?,
        })
    }

    fn hashed(weights: &[u64], factor: u32) -> Pool {
        let specs = weights.iter().zip(0u16..).filter_map(|(w, i)| spec(i, *w));
        Pool::of(specs, Box::new(Hash::new(factor)))
    }

    const KEYS: u64 = 50_000;

    /// Who `KEYS` keys go to, by backend name.
    fn owners(p: &Pool) -> Vec<Arc<str>> {
        (0..KEYS)
            .filter_map(|k| p.pick_for(Some(key_hash(&k.to_le_bytes()))))
            .map(|b| b.name())
            .collect()
    }

    fn moved(a: &[Arc<str>], b: &[Arc<str>]) -> f64 {
        a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64
    }

    #[test]
    fn a_leaving_backend_moves_only_about_its_share_and_its_keys_come_back() {
        let p = hashed(&[1; 5], 0);
        let before = owners(&p);
        let mine = before.iter().filter(|n| &***n == "b2").count() as f64 / KEYS as f64;
        assert!((mine - 0.2).abs() < 0.01, "b2 owns {mine}");
        let all: Vec<BackendSpec> = (0..5).filter_map(|i| spec(i, 1)).collect();
        let without: Vec<BackendSpec> = all.iter().filter(|s| &*s.name != "b2").cloned().collect();
        p.replace(without);
        let after = owners(&p);
        let m = moved(&before, &after);
        assert!(m <= 0.2 + 0.03, "{m} of the keys moved when 1 of 5 left");
        // Keys that did not belong to b2 mostly stay: Maglev's small churn.
        let churn = before
            .iter()
            .zip(&after)
            .filter(|(x, y)| &***x != "b2" && x != y)
            .count() as f64
            / KEYS as f64;
        assert!(churn < 0.03, "{churn} of the others' keys moved");
        p.replace(all);
        assert_eq!(owners(&p), before, "the same keys come back");
    }

    #[test]
    fn unhealthy_and_drained_backends_are_skipped_without_moving_the_others() {
        let p = hashed(&[1; 5], 0);
        let before = owners(&p);
        let b1 = p.backends()[1].clone();
        p.set_healthy(&b1, false);
        p.drain("b3");
        let after = owners(&p);
        for (x, y) in before.iter().zip(&after) {
            if &**x == "b1" || &**x == "b3" {
                assert!(&**y != "b1" && &**y != "b3");
            } else {
                assert_eq!(x, y, "a key of a backend still in rotation moved");
            }
        }
        // Their keys spread over the others rather than landing on one.
        let spill: Vec<usize> = ["b0", "b2", "b4"]
            .iter()
            .map(|n| {
                before
                    .iter()
                    .zip(&after)
                    .filter(|(x, y)| x != y && &***y == *n)
                    .count()
            })
            .collect();
        let most = *spill.iter().max().unwrap_or(&0) as f64;
        let least = *spill.iter().min().unwrap_or(&0) as f64;
        assert!(least > most * 0.8, "{spill:?}");
        p.set_healthy(&b1, true);
        p.enable("b3");
        assert_eq!(owners(&p), before);
    }

    #[test]
    fn weights_set_the_share_of_keys() {
        let p = hashed(&[1, 2, 5], 0);
        let o = owners(&p);
        for (name, want) in [("b0", 0.125), ("b1", 0.25), ("b2", 0.625)] {
            let got = o.iter().filter(|n| &***n == name).count() as f64 / KEYS as f64;
            assert!((got - want).abs() < 0.01, "{name}: {got}, want {want}");
        }
    }

    #[test]
    fn the_table_depends_on_the_set_not_its_order() {
        let a = hashed(&[1; 4], 0);
        let specs: Vec<BackendSpec> = (0..4).rev().filter_map(|i| spec(i, 1)).collect();
        let b = Pool::of(specs, Box::new(Hash::new(0)));
        assert_eq!(owners(&a), owners(&b));
    }

    #[test]
    fn a_bounded_load_passes_a_full_backend_over() {
        let p = hashed(&[1; 4], 125);
        let key = key_hash(b"hot");
        let home = p.pick_for(Some(key)).expect("picked");
        // The same key keeps going home while there is room...
        let mut held = vec![home.start_request()];
        // 1 in flight of 1 total: cap = 1.25 · 2 / 4 = 0.625 < 1, so the
        // home backend is full and the key spills over.
        let spilled = p.pick_for(Some(key)).expect("picked");
        assert!(!Arc::ptr_eq(&spilled, &home));
        // With the load spread, there is room at home again.
        held.extend(
            p.backends()
                .iter()
                .filter(|b| !Arc::ptr_eq(b, &home))
                .map(|b| b.start_request()),
        );
        assert!(Arc::ptr_eq(&p.pick_for(Some(key)).expect("picked"), &home));
        // Without a bound, a key always goes home.
        let unbounded = hashed(&[1; 4], 0);
        let home = unbounded.pick_for(Some(key)).expect("picked");
        let _busy: Vec<_> = (0..50).map(|_| home.start_request()).collect();
        assert!(Arc::ptr_eq(
            &unbounded.pick_for(Some(key)).expect("picked"),
            &home
        ));
    }

    /// The bound under a skewed load: requests with Zipf(1.1) keys, 200 in
    /// flight at a time; no backend ever carries more than 1.25x the mean
    /// (plus the one request that rounding allows).
    #[test]
    fn under_zipf_keys_no_backend_carries_more_than_the_factor() {
        use rand::{Rng, SeedableRng};
        let p = hashed(&[1; 5], 125);
        let cdf = zipf_cdf(10_000, 1.1);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut flight = std::collections::VecDeque::new();
        let mut worst: f64 = 0.0;
        for n in 0..20_000u32 {
            if flight.len() == 200 {
                flight.pop_front();
            }
            let u: f64 = rng.random();
            let k = cdf.partition_point(|c| *c < u) as u64;
            let b = p
                .pick_for(Some(key_hash(&k.to_le_bytes())))
                .expect("picked");
            flight.push_back(b.start_request());
            if n > 1000 {
                let loads: Vec<usize> = p.backends().iter().map(|b| b.in_flight()).collect();
                let mean = loads.iter().sum::<usize>() as f64 / loads.len() as f64;
                let max = *loads.iter().max().unwrap_or(&0) as f64;
                worst = worst.max(max / mean);
            }
        }
        // cap = ceil(1.25 · (199 + 1) / 5) = 50 → 50 / 40 = 1.25.
        assert!(worst <= 1.25 + 1e-9, "max/mean {worst}");
    }

    /// The cumulative distribution of Zipf(s) over ranks 1..=n.
    pub(crate) fn zipf_cdf(n: usize, s: f64) -> Vec<f64> {
        let weights: Vec<f64> = (1..=n).map(|r| 1.0 / (r as f64).powf(s)).collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect()
    }
}
