//! A pool's `max_connections`, `queue`, `retries.budget_percent` and
//! `discovery`: values in range, one DNS name and of the right form.

use super::Add;
use crate::config::schema::{DiscoveryConfig, PoolConfig};

/// Checks the traffic-control keys of the pool at `at` (`pools.NAME`).
pub(super) fn check_pool_traffic(pool: &PoolConfig, at: &str, add: &mut Add<'_>) {
    if pool.max_connections > 0 && pool.queue.timeout.is_zero() && pool.queue.size > 0 {
        add(
            &format!("{at}.queue.timeout"),
            "must be greater than 0 (or queue.size: 0 to refuse at once)".into(),
        );
    }
    if let Some(p) = pool
        .retries
        .budget_percent
        .filter(|p| !(1..=100).contains(p))
    {
        add(
            &format!("{at}.retries.budget_percent"),
            format!("{p}: a percent from 1 to 100 (leave it out for no budget)"),
        );
    }
    if let Some(d) = &pool.discovery {
        check_discovery(d, &format!("{at}.discovery"), add);
    }
}

fn check_discovery(d: &DiscoveryConfig, at: &str, add: &mut Add<'_>) {
    match (&d.dns, &d.dns_srv) {
        (Some(_), Some(_)) | (None, None) => add(
            at,
            "give exactly one of dns (name:port) and dns_srv (_service._proto.name)".into(),
        ),
        (Some(dns), None) => {
            if let Err(e) = crate::discovery::parse_dns(dns) {
                add(&format!("{at}.dns"), e);
            }
        }
        (None, Some(srv)) => {
            if let Err(e) = crate::discovery::parse_srv(srv) {
                add(&format!("{at}.dns_srv"), e);
            }
        }
    }
    if d.interval.is_zero() {
        add(&format!("{at}.interval"), "must be greater than 0".into());
    }
}
