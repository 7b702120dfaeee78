//! Resident memory per tracked IP client, measured from RSS.
//!
//! `cargo bench --bench limiter_memory`: tracks 1,000,000 IPv4 clients and
//! prints `bytes_per_client=N` (RSS growth / clients), then the same for
//! `governor`'s keyed limiter in a fresh child process for comparison.

use std::net::{IpAddr, Ipv4Addr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use tollgate::limiter::{ClientKey, Limits, Registry, RegistryConfig};

const CLIENTS: u32 = 1_000_000;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
}

fn tollgate() -> f64 {
    let before = rss_bytes();
    let reg = Registry::new(RegistryConfig {
        default_limits: Limits::new(100, 10.0).expect("valid"),
        max_clients: NonZeroUsize::new(CLIENTS as usize).expect("nonzero"),
        idle_timeout: Duration::from_secs(600),
        refill_interval: Duration::from_millis(100),
    });
    for i in 0..CLIENTS {
        let _ = reg.check(&ClientKey::Ip(ip(i)));
    }
    assert_eq!(reg.len(), CLIENTS as usize);
    let after = rss_bytes();
    (after - before) as f64 / f64::from(CLIENTS)
}

fn governor() -> f64 {
    let before = rss_bytes();
    let n = NonZeroU32::new(100).expect("nonzero");
    let gov = governor::RateLimiter::keyed(governor::Quota::per_second(n));
    for i in 0..CLIENTS {
        let _ = gov.check_key(&ip(i));
    }
    let after = rss_bytes();
    std::hint::black_box(&gov);
    (after - before) as f64 / f64::from(CLIENTS)
}

fn main() {
    // Criterion-style flags from `cargo bench` are ignored; `--governor`
    // is how this binary runs the comparison in a clean child process.
    if std::env::args().any(|a| a == "--governor") {
        println!("governor_bytes_per_client={:.1}", governor());
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!("clients={CLIENTS}");
    println!("bytes_per_client={:.1}", tollgate());
    if let Ok(exe) = std::env::current_exe() {
        if let Ok(out) = std::process::Command::new(exe).arg("--governor").output() {
            print!("{}", String::from_utf8_lossy(&out.stdout));
        }
    }
}
