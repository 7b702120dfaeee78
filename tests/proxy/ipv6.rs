//! IPv6 clients limited by network (`rate_limit.ipv6_prefix`): addresses
//! of one /64 share a bucket, other networks do not, 128 keeps every
//! address alone, IPv4-mapped addresses count as IPv4, and a reload
//! changes the grouping for the next request.

use std::net::IpAddr;

use reqwest::StatusCode;
use tollgate::config::Config;
use tollgate::limiter::{ClientKey, Limits};

use crate::support::{backends, balancer, client, config, url};

/// A config whose clients get one token that never comes back, with
/// `X-Forwarded-For` believed from loopback (the test's own address), so
/// the test can speak for any client address.
fn one_token_each(backend: std::net::SocketAddr, ipv6_prefix: u8) -> Config {
    let mut cfg = config(&[backend]);
    cfg.rate_limit.default = Limits::new(1, 0.0).expect("valid");
    cfg.rate_limit.trusted_proxies = vec!["127.0.0.0/8".parse().expect("cidr")];
    cfg.rate_limit.ipv6_prefix = ipv6_prefix;
    cfg
}

/// The status of one request from `client` through `proxy`.
async fn from(http: &reqwest::Client, proxy: std::net::SocketAddr, client: &str) -> StatusCode {
    http.get(url(proxy, "/"))
        .header("x-forwarded-for", client)
        .send()
        .await
        .expect("request")
        .status()
}

fn net(s: &str) -> ClientKey {
    ClientKey::Net(s.parse().expect("network"))
}

fn ip(s: &str) -> ClientKey {
    ClientKey::Ip(s.parse::<IpAddr>().expect("address"))
}

#[tokio::test]
async fn addresses_of_one_network_share_a_bucket() {
    let bs = backends(1).await;
    let lb = balancer(&one_token_each(bs[0].addr, 64)).await;
    let (c, p) = (client(), lb.proxy_addr());

    assert_eq!(from(&c, p, "2001:db8::1").await, StatusCode::OK);
    // Another address of the same /64: the same, spent, bucket.
    assert_eq!(
        from(&c, p, "2001:db8::ffff:2").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        from(&c, p, "[2001:db8::3]:4433").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // The next /64 is another client.
    assert_eq!(from(&c, p, "2001:db8:0:1::1").await, StatusCode::OK);
    let reg = lb.registry();
    assert_eq!(reg.tokens(&net("2001:db8::/64")), Some(0.0));
    assert_eq!(reg.tokens(&net("2001:db8:0:1::/64")), Some(0.0));
    assert_eq!(reg.tokens(&ip("2001:db8::1")), None);

    // IPv4, also written IPv4-mapped, is one address, never a network.
    assert_eq!(from(&c, p, "::ffff:198.51.100.7").await, StatusCode::OK);
    assert_eq!(
        from(&c, p, "198.51.100.7").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(from(&c, p, "198.51.100.8").await, StatusCode::OK);
    assert_eq!(reg.tokens(&ip("198.51.100.7")), Some(0.0));
    lb.shutdown().await;
}

#[tokio::test]
async fn prefix_128_keeps_every_address_alone() {
    let bs = backends(1).await;
    let lb = balancer(&one_token_each(bs[0].addr, 128)).await;
    let (c, p) = (client(), lb.proxy_addr());
    assert_eq!(from(&c, p, "2001:db8::1").await, StatusCode::OK);
    assert_eq!(from(&c, p, "2001:db8::2").await, StatusCode::OK);
    assert_eq!(
        from(&c, p, "2001:db8::1").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(lb.registry().tokens(&ip("2001:db8::2")), Some(0.0));
    lb.shutdown().await;
}

/// A reload that changes `ipv6_prefix` applies to the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_grouping() {
    let bs = backends(1).await;
    let yaml = |prefix: u8| {
        format!(
            "server:\n  listen: 127.0.0.1:0\n  drain_timeout: 5s\nadmin:\n  listen: 127.0.0.1:0\n\
             backends:\n  - url: http://{}\nstore:\n  url: {}\n\
             rate_limit:\n  trusted_proxies: [127.0.0.0/8]\n  ipv6_prefix: {prefix}\n\
             \x20 default: {{capacity: 1, rate_per_sec: 0}}\n",
            bs[0].addr,
            crate::support::temp_db(),
        )
    };
    let path = tempfile::tempdir()
        .expect("tempdir")
        .keep()
        .join("config.yaml");
    std::fs::write(&path, yaml(128)).expect("write config");
    let cfg = Config::load(&path).expect("valid config");
    let lb = tollgate::app::start_with_file(&cfg, Some(path.clone()))
        .await
        .expect("balancer starts");
    let (c, p) = (client(), lb.proxy_addr());
    assert_eq!(from(&c, p, "2001:db8::1").await, StatusCode::OK);
    assert_eq!(from(&c, p, "2001:db8::2").await, StatusCode::OK);

    std::fs::write(&path, yaml(48)).expect("write config");
    let r = c
        .post(url(lb.admin_addr(), "/reload"))
        .send()
        .await
        .expect("reload");
    assert_eq!(r.status(), StatusCode::OK);
    let body: serde_json::Value = r.json().await.expect("json");
    assert!(
        body["applied"]
            .as_array()
            .is_some_and(|a| a.contains(&"rate_limit.ipv6_prefix".into())),
        "{body}"
    );
    assert_eq!(from(&c, p, "2001:db8:0:7::1").await, StatusCode::OK);
    assert_eq!(
        from(&c, p, "2001:db8:0:8::1").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(lb.registry().tokens(&net("2001:db8::/48")), Some(0.0));
    lb.shutdown().await;
}
