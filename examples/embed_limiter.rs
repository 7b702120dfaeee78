//! Using tollgate's limiter as a library inside another service.
//!
//! `cargo run --example embed_limiter`: a registry with default limits,
//! one client given its own limits, the refill task on tokio's clock, and
//! the decisions a request handler would act on.

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use tollgate::limiter::{refill, ClientKey, Limits, Registry, RegistryConfig};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let interval = Duration::from_millis(100);
    let registry = Arc::new(Registry::new(RegistryConfig {
        default_limits: Limits::new(3, 1.0)?, // burst 3, then 1/s
        max_clients: NonZeroUsize::new(10_000).ok_or("zero")?,
        idle_timeout: Duration::from_secs(600),
        refill_interval: interval,
    }));
    // The periodic refill, stopped by the oneshot at the end.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let ticker = tokio::spawn(refill::run(registry.clone(), interval, async {
        let _ = stopped.await;
    }));

    let anonymous = ClientKey::Ip("192.0.2.10".parse::<IpAddr>()?);
    let partner = ClientKey::api("partner-42")?;
    registry.set_limits(&partner, Limits::new(10, 5.0)?)?;

    for (name, key) in [("anonymous", &anonymous), ("partner-42", &partner)] {
        for n in 1..=5 {
            let d = registry.check(key)?;
            if d.allowed() {
                println!(
                    "{name} request {n}: allowed, {} of {} left",
                    d.remaining(),
                    d.limit()
                );
            } else {
                let wait = d.reset_after().map_or("never".into(), |t| format!("{t:?}"));
                println!("{name} request {n}: 429, retry after {wait}");
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let d = registry.check(&anonymous)?;
    println!(
        "anonymous after 1.1 s: allowed={} remaining={}",
        d.allowed(),
        d.remaining()
    );

    let _ = stop.send(());
    ticker.await?;
    Ok(())
}
