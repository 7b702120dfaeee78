//! Which clients the limiter refused in the current second: the raw
//! material of the status page's "refused most" list.
//!
//! The request path counts a 429 here ([`Refusals::count`]); nothing is
//! counted for an admitted request. The count costs one hash of the key,
//! one uncontended lock of one of [`SHARDS`] small maps (picked by the
//! hash, so proxy threads rarely meet), and one map update; a key's first
//! refusal in a second also clones it. Memory is bounded: each shard holds
//! at most [`PER_SHARD`] clients per second, and a refusal of a client that
//! finds its shard full is only counted in [`Refusals::unattributed`]. The
//! sampler empties the maps every second ([`Refusals::take`]).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::limiter::ClientKey;

/// Maps the counts are spread over.
pub const SHARDS: usize = 16;
/// Distinct clients one shard holds per second (so at most
/// `SHARDS * PER_SHARD` = 4096 clients are named per second).
pub const PER_SHARD: usize = 256;

type Counts = HashMap<ClientKey, u64, foldhash::fast::RandomState>;

/// Refusals per client since the last [`Refusals::take`].
#[derive(Debug)]
pub struct Refusals {
    shards: Box<[Mutex<Counts>]>,
    hasher: foldhash::fast::RandomState,
    unattributed: AtomicU64,
}

impl Default for Refusals {
    fn default() -> Self {
        Self::new()
    }
}

impl Refusals {
    /// No refusals yet.
    pub fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Counts::default())).collect(),
            hasher: foldhash::fast::RandomState::default(),
            unattributed: AtomicU64::new(0),
        }
    }

    /// Counts one request of `client` refused with 429.
    pub fn count(&self, client: &ClientKey) {
        let i = (self.hasher.hash_one(client) as usize) % self.shards.len();
        // A panic while the lock was held leaves a valid map behind.
        let mut counts = self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = counts.get_mut(client) {
            *n += 1;
        } else if counts.len() < PER_SHARD {
            counts.insert(client.clone(), 1);
        } else {
            drop(counts);
            self.unattributed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counts since the last call, and the refusals that could not be
    /// attributed to a client (the shards were full); starts over.
    pub fn take(&self) -> (Vec<(ClientKey, u64)>, u64) {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            let counts = std::mem::take(&mut *shard.lock().unwrap_or_else(PoisonError::into_inner));
            all.extend(counts);
        }
        (all, self.unattributed.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_client_and_starts_over() {
        let r = Refusals::new();
        let a = ClientKey::api("a").expect("key");
        let b = ClientKey::api("b").expect("key");
        for _ in 0..3 {
            r.count(&a);
        }
        r.count(&b);
        let (mut counts, lost) = r.take();
        counts.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        assert_eq!(counts, vec![(a, 3), (b, 1)]);
        assert_eq!(lost, 0);
        assert_eq!(r.take(), (vec![], 0));
    }

    #[test]
    fn memory_is_bounded_and_the_overflow_is_counted() {
        let r = Refusals::new();
        let n = SHARDS * PER_SHARD + 1000;
        for i in 0..n {
            let ip = std::net::IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i as u32));
            r.count(&ClientKey::Ip(ip));
        }
        let (counts, lost) = r.take();
        assert!(counts.len() <= SHARDS * PER_SHARD);
        assert_eq!(counts.iter().map(|(_, n)| n).sum::<u64>() + lost, n as u64);
    }
}
