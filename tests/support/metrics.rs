//! Reading `/metrics` from a balancer's admin listener.

use std::collections::HashMap;
use std::net::SocketAddr;

/// The Prometheus text of `admin`'s `/metrics`.
pub async fn scrape(c: &reqwest::Client, admin: SocketAddr) -> String {
    c.get(super::net::url(admin, "/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text")
}

/// `name{labels} value` lines into a map (comments skipped).
pub fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}
