//! Adding a balancing strategy: implement `balancer::Strategy`.
//!
//! `cargo run --example custom_strategy`: a "primary first" strategy that
//! sends everything to the first healthy backend in configuration order
//! (active/standby failover), plugged into a pool like the built-in ones.

use std::sync::Arc;

use tollgate::balancer::BackendUrl;
use tollgate::balancer::{Backend, Pool, Strategy};

/// Always the first healthy backend: the others are standbys.
#[derive(Debug, Default)]
struct PrimaryFirst;

impl Strategy for PrimaryFirst {
    fn pick(&self, _healthy: &[Arc<Backend>]) -> usize {
        // `healthy` keeps configuration order, so index 0 is the primary
        // while it is healthy, then the first standby.
        0
    }
}

fn main() -> Result<(), String> {
    let urls = [
        "http://10.0.0.1:8080",
        "http://10.0.0.2:8080",
        "http://10.0.0.3:8080",
    ]
    .iter()
    .map(|u| BackendUrl::parse(u))
    .collect::<Result<Vec<_>, _>>()?;
    let pool = Pool::new(urls, Box::new(PrimaryFirst));
    let show = |pool: &Pool| {
        pool.pick()
            .map_or("none".to_string(), |b| b.url().to_string())
    };
    println!("primary healthy:   {}", show(&pool));
    let primary = pool.backends()[0].clone();
    pool.set_healthy(&primary, false);
    println!("primary evicted:   {}", show(&pool));
    pool.set_healthy(&primary, true);
    println!("primary restored:  {}", show(&pool));
    Ok(())
}
