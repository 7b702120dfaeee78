//! The config's parsing and validation, by example.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::balancer::StrategyName;
use crate::limiter::Limits;
use crate::tls::server::{Alpn, MinVersion};

/// The shipped config is the demo's routed one (two pools behind three
/// routes, no default pool); every other key is the default.
#[test]
fn the_shipped_config_is_valid_routed_and_otherwise_the_defaults() {
    let text = include_str!("../../config.yaml");
    let c = Config::parse(text).expect("shipped config.yaml is valid");
    let d = Config::parse("").expect("empty config is valid");
    assert_eq!(c.server.listen, d.server.listen);
    assert!(c.backends.is_empty(), "no default pool: {:?}", c.backends);
    assert_eq!(d.backends.len(), 3, "the default without routes");
    assert!(c.is_routed());
    let pools: Vec<(&str, Vec<String>)> = c
        .pools
        .iter()
        .map(|(n, p)| (n.as_str(), p.backends.iter().map(|b| b.name()).collect()))
        .collect();
    assert_eq!(
        pools,
        [
            ("api", vec!["api-1".to_owned(), "api-2".to_owned()]),
            ("web", vec!["web-1".to_owned(), "web-2".to_owned()])
        ]
    );
    assert_eq!(c.pools["api"].strategy, Some(StrategyName::P2c));
    assert_eq!(c.pools["web"].strategy, None, "balancing.strategy");
    let routes: Vec<(&str, &str)> = c
        .routes
        .iter()
        .map(|r| (r.name.as_str(), r.pool.as_str()))
        .collect();
    assert_eq!(
        routes,
        [("api", "api"), ("api-host", "api"), ("web", "web")]
    );
    assert_eq!(c.balancing.strategy, d.balancing.strategy);
    assert_eq!(c.proxy.request_timeout, d.proxy.request_timeout);
    assert_eq!(c.rate_limit.default, d.rate_limit.default);
    assert_eq!(c.rate_limit.ipv6_prefix, d.rate_limit.ipv6_prefix);
    assert_eq!(c.rate_limit.refill_interval, Duration::from_millis(100));
    assert_eq!(c.rate_limit.max_clients.get(), 1_000_000);
    assert_eq!(c.rate_limit.idle_timeout, Duration::from_secs(600));
    assert_eq!(c.health_check.unhealthy_threshold.get(), 2);
    assert_eq!(c.health_check.passive, d.health_check.passive);
    assert_eq!(c.admin.header_read_timeout, d.admin.header_read_timeout);
    assert_eq!(c.admin.body_read_timeout, d.admin.body_read_timeout);
    assert_eq!(c.store.timeout, d.store.timeout);
    assert_eq!(c.server.max_header_bytes, d.server.max_header_bytes);
    assert_eq!(c.server.max_connections, d.server.max_connections);
    assert_eq!(c.server.client_body_timeout, d.server.client_body_timeout);
    assert_eq!(c.server.send_timeout, d.server.send_timeout);
    assert_eq!(
        c.server.http2_max_concurrent_streams,
        d.server.http2_max_concurrent_streams
    );
    assert_eq!(c.proxy.backend_body_timeout, d.proxy.backend_body_timeout);
    assert_eq!(
        c.proxy.allow_underscores_in_headers,
        d.proxy.allow_underscores_in_headers
    );
    assert_eq!(c.proxy.ca_file, d.proxy.ca_file);
    assert_eq!(c.proxy.upgrade_idle_timeout, Duration::from_secs(600));
}

#[test]
fn front_door_limits_are_checked_with_their_field() {
    let problems = Config::parse(
        "server:\n  max_header_bytes: 100\n  send_timeout: 0s\n  client_body_timeout: 0ms\n\
             proxy:\n  backend_body_timeout: 0s\n  upgrade_idle_timeout: 0s\n",
    )
    .expect_err("invalid");
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    for f in [
        "server.max_header_bytes",
        "server.send_timeout",
        "server.client_body_timeout",
        "proxy.backend_body_timeout",
        "proxy.upgrade_idle_timeout",
    ] {
        assert!(fields.contains(&f), "{f} missing from {problems:?}");
    }
    let problems = Config::parse("server:\n  max_connections: 0\n").expect_err("zero connections");
    assert_eq!(problems[0].field, "server.max_connections");
    let problems =
        Config::parse("server:\n  http2_max_concurrent_streams: 0\n").expect_err("zero streams");
    assert_eq!(problems[0].field, "server.http2_max_concurrent_streams");
    let c = Config::parse("server:\n  max_connections: 5000\n").expect("valid");
    assert_eq!(c.server.max_connections.map(NonZeroUsize::get), Some(5000));
}

#[test]
fn an_api_key_header_with_underscores_needs_them_allowed() {
    let problems =
        Config::parse("rate_limit:\n  api_key_header: X_Api_Key\n").expect_err("dropped");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].field, "rate_limit.api_key_header");
    assert!(problems[0].reason.contains("'_'"), "{}", problems[0]);
    let allowed = "rate_limit:\n  api_key_header: X_Api_Key\n\
                       proxy:\n  allow_underscores_in_headers: true\n";
    assert!(Config::parse(allowed).is_ok());
}

/// A self-signed ECDSA certificate for `name`, as PEM files in `dir`.
fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, cert.pem()).expect("write");
    std::fs::write(&k, key.serialize_pem()).expect("write");
    (c, k)
}

#[test]
fn tls_problems_are_reported_with_their_field() {
    let problems = Config::parse("server:\n  listen: null\n").expect_err("no listener");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].field, "server.tls.listen");

    let dir = tempfile::tempdir().expect("tempdir");
    let (a_cert, a_key) = pair(dir.path(), "a.test");
    let (_, b_key) = pair(dir.path(), "b.test");
    let missing = dir.path().join("missing.pem");
    let yaml = format!(
        "server:\n  listen: null\n  tls:\n    listen: 127.0.0.1:0\n    certificates:\n\
             \x20     - {{cert: {a_cert:?}, key: {missing:?}}}\n\
             \x20     - {{cert: {a_cert:?}, key: {b_key:?}}}\n\
             \x20     - {{cert: {missing:?}, key: {a_key:?}}}\n\
             \x20     - {{cert: {a_key:?}, key: {a_key:?}}}\n"
    );
    assert!(Config::parse(&yaml).is_ok(), "parse alone opens no file");
    let problems = Config::parse_and_check_files(&yaml).expect_err("bad files");
    let found: Vec<(&str, &str)> = problems
        .iter()
        .map(|p| (p.field.as_str(), p.reason.as_str()))
        .collect();
    assert_eq!(found.len(), 4, "{found:?}");
    assert_eq!(found[0].0, "server.tls.certificates[0].key");
    assert!(found[0].1.contains("missing.pem"), "{found:?}");
    assert_eq!(found[1].0, "server.tls.certificates[1].key");
    assert!(found[1].1.contains("is not the key of"), "{found:?}");
    assert_eq!(found[2].0, "server.tls.certificates[2].cert");
    assert_eq!(found[3].0, "server.tls.certificates[3].cert");

    let good = format!(
        "server:\n  listen: null\n  tls:\n    listen: 127.0.0.1:0\n    min_version: \"1.3\"\n\
             \x20   certificates: [{{cert: {a_cert:?}, key: {a_key:?}}}]\n"
    );
    let c = Config::parse_and_check_files(&good).expect("valid");
    let tls = c.server.tls.expect("tls");
    assert_eq!(c.server.listen, None);
    assert_eq!(tls.min_version, MinVersion::Tls13);
    assert_eq!(tls.alpn, vec![Alpn::H2, Alpn::Http11], "default ALPN");
}

#[test]
fn http3_needs_tls_and_takes_a_max_age() {
    let problems = Config::parse("server:\n  http3: {listen: 127.0.0.1:8443}\n")
        .expect_err("HTTP/3 without TLS");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].field, "server.http3");
    assert!(problems[0].reason.contains("server.tls"), "{problems:?}");
    let tls = "server:\n  tls:\n    certificates: [{cert: a.pem, key: a.key}]\n";
    let c = Config::parse(&format!("{tls}  http3: {{listen: 127.0.0.1:8443}}\n")).expect("valid");
    let h3 = c.server.http3.expect("http3");
    assert_eq!(h3.listen, SocketAddr::from(([127, 0, 0, 1], 8443)));
    assert_eq!(h3.alt_svc_max_age, std::time::Duration::from_secs(86_400));
    let c = Config::parse(&format!("{tls}  http3: {{alt_svc_max_age: 1h}}\n")).expect("valid");
    let h3 = c.server.http3.expect("http3");
    assert_eq!(h3.listen, SocketAddr::from(([0, 0, 0, 0], 8443)));
    assert_eq!(h3.alt_svc_max_age, std::time::Duration::from_secs(3600));
    let problems = Config::parse(&format!(
        "{tls}  http3: {{listen: 127.0.0.1:8443, port: 1}}\n"
    ))
    .expect_err("unknown key");
    assert!(
        problems[0].field.starts_with("server.http3"),
        "{problems:?}"
    );
    assert!(
        Config::parse("").expect("defaults").server.http3.is_none(),
        "off by default"
    );
}

#[test]
fn tls_versions_and_alpn_names_are_checked() {
    let tls = |body: &str| format!("server:\n  tls:\n    certificates: []\n    {body}\n");
    let c = Config::parse(&tls("min_version: 1.3")).map(|c| c.server.tls);
    assert!(
        matches!(c, Err(ref p) if p[0].field == "server.tls.certificates"),
        "{c:?}"
    );
    for (body, field) in [
        ("min_version: \"1.1\"", "server.tls.min_version"),
        ("alpn: [h2, h3]", "server.tls.alpn"),
    ] {
        let problems = Config::parse(&tls(body)).expect_err(body);
        assert_eq!(problems[0].field, field, "{problems:?}");
    }
    let c = Config::parse("server:\n  tls:\n    min_version: 1.3\n    alpn: []\n");
    let problems = c.expect_err("no certificates");
    assert_eq!(problems.len(), 1, "a number 1.3 is a version: {problems:?}");
    let c = Config::parse("").expect("defaults");
    assert!(c.server.tls.is_none(), "no TLS unless configured");
    assert_eq!(
        c.server.listen,
        Some(SocketAddr::from(([0, 0, 0, 0], 8080)))
    );
}

#[test]
fn ca_file_problems_are_reported_on_proxy_ca_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.pem");
    let key_only = dir.path().join("key.pem");
    let ca = dir.path().join("ca.pem");
    let key = rcgen::KeyPair::generate().expect("key");
    std::fs::write(&key_only, key.serialize_pem()).expect("write key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).expect("CA");
    std::fs::write(&ca, cert.pem()).expect("write CA");
    let yaml = |p: &Path| format!("proxy:\n  ca_file: {:?}\n", p.display().to_string());
    for (path, says) in [
        (&missing, "cannot read"),
        (&key_only, "no PEM certificate"),
        (&dir.path().to_path_buf(), "cannot read"),
    ] {
        let problems = Config::parse(&yaml(path)).expect_err("bad ca_file");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "proxy.ca_file");
        assert!(problems[0].reason.contains(says), "{}", problems[0]);
    }
    let c = Config::parse(&yaml(&ca)).expect("a CA file");
    assert_eq!(c.proxy.ca_file.as_deref(), Some(ca.as_path()));
    assert_eq!(Config::parse("").expect("defaults").proxy.ca_file, None);
}

#[test]
fn backend_names_weights_and_passive_checks() {
    let c = Config::parse(
            "backends:\n  - url: http://127.0.0.1:9001\n  - {url: http://127.0.0.1:9002, name: app-2, weight: 3}\n\
             balancing: {strategy: p2c}\n\
             health_check:\n  passive: {consecutive_5xx: 5, ejection_time: 10s, max_ejected_percent: 30}\n",
        )
        .expect("valid");
    assert_eq!(c.backends[0].name(), "127.0.0.1:9001");
    assert_eq!(c.backends[0].weight.get(), 1);
    assert_eq!(c.backends[1].name(), "app-2");
    assert_eq!(c.backends[1].weight.get(), 3);
    assert_eq!(c.balancing.strategy, StrategyName::P2c);
    assert_eq!(c.health_check.passive.consecutive_5xx, 5);
    assert_eq!(
        c.health_check.passive.ejection_time,
        Duration::from_secs(10)
    );
    assert_eq!(c.health_check.passive.max_ejected_percent, 30);
    let d = Config::parse("").expect("defaults");
    assert_eq!(d.health_check.passive, PassiveConfig::default());
    assert_eq!(d.health_check.passive.consecutive_5xx, 0, "off by default");
    assert_eq!(d.balancing.strategy, StrategyName::RoundRobin);

    for (yaml, field, says) in [
            (
                "backends:\n  - {url: http://127.0.0.1:1, weight: 0}\n",
                "backends[0].weight",
                "1 to 1000",
            ),
            (
                "backends:\n  - {url: http://127.0.0.1:1, weight: 1001}\n",
                "backends[0].weight",
                "1 to 1000",
            ),
            (
                "backends:\n  - {url: http://127.0.0.1:1, name: a}\n  - {url: http://127.0.0.1:2, name: a}\n",
                "backends[1].name",
                "unique",
            ),
            (
                "backends:\n  - {url: http://127.0.0.1:1, name: 127.0.0.1:2}\n  - {url: http://127.0.0.1:2}\n",
                "backends[1].name",
                "backends[0]",
            ),
            (
                "backends:\n  - {url: http://127.0.0.1:1, name: \"a/b\"}\n",
                "backends[0].name",
                "letters",
            ),
            (
                "backends:\n  - {url: http://127.0.0.1:1, name: \"\"}\n",
                "backends[0].name",
                "1 to",
            ),
            (
                "health_check:\n  passive: {max_ejected_percent: 101}\n",
                "health_check.passive.max_ejected_percent",
                "0 to 100",
            ),
            (
                "health_check:\n  passive: {consecutive_5xx: 3, ejection_time: 0s}\n",
                "health_check.passive.ejection_time",
                "greater than 0",
            ),
        ] {
            let problems = Config::parse(yaml).expect_err(yaml);
            assert_eq!(problems.len(), 1, "{yaml}: {problems:?}");
            assert_eq!(problems[0].field, field, "{yaml}: {problems:?}");
            assert!(problems[0].reason.contains(says), "{yaml}: {problems:?}");
        }
}

#[test]
fn durations() {
    assert_eq!("250ms".parse::<Dur>(), Ok(Dur::millis(250)));
    assert_eq!("2s".parse::<Dur>(), Ok(Dur::secs(2)));
    assert_eq!("5m".parse::<Dur>(), Ok(Dur::secs(300)));
    assert_eq!("1h".parse::<Dur>(), Ok(Dur::secs(3600)));
    assert!("5".parse::<Dur>().is_err());
    assert!("5x".parse::<Dur>().is_err());
    assert!("-1s".parse::<Dur>().is_err());
    assert!("1.5s".parse::<Dur>().is_err());
}

#[test]
fn every_problem_is_reported_with_its_field() {
    let text = "
server:
  listen: nowhere
  drain_timeout: 3 parsecs
rate_limit:
  default:
    capacity: 0
    rate_per_sec: 10
backends:
  - url: ftp://example.com:21
balancing:
  strategy: fastest
surprise: true
";
    let problems = Config::parse(text).expect_err("invalid");
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert!(fields.contains(&"server.listen"), "{problems:?}");
    assert!(fields.contains(&"rate_limit.default"), "{problems:?}");
    assert!(fields.contains(&"backends[0].url"), "{problems:?}");
    assert!(fields.contains(&"balancing.strategy"), "{problems:?}");
    assert!(fields.contains(&"surprise"), "{problems:?}");
    let cap = problems
        .iter()
        .find(|p| p.field == "rate_limit.default")
        .expect("capacity problem");
    assert!(cap.reason.contains("capacity"), "{cap}");
}

#[test]
fn unknown_keys_inside_sections_are_rejected() {
    let problems = Config::parse("proxy:\n  conect_timeout: 2s\n").expect_err("typo");
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].field, "proxy.conect_timeout");
    assert!(
        problems[0].reason.contains("unknown field"),
        "{}",
        problems[0]
    );
}

#[test]
fn store_urls_name_a_supported_database() {
    for ok in [
        "sqlite://x.db",
        "sqlite::memory:",
        "postgres://u@h/db",
        "postgresql://u:p@h:5432/db",
    ] {
        let c = Config::parse(&format!("store:\n  url: \"{ok}\"\n"));
        assert!(c.is_ok(), "{ok}: {c:?}");
    }
    let problems = Config::parse("store:\n  url: mysql://h/db\n").expect_err("mysql");
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].field, "store.url");
    assert!(
        problems[0].reason.contains("postgres://"),
        "{:?}",
        problems[0]
    );
}

#[test]
fn admin_allowed_hosts_are_host_names() {
    let c = Config::parse("admin:\n  allowed_hosts: [admin.example.com, \"10.0.0.5:9090\"]\n")
        .expect("valid");
    assert_eq!(
        c.admin.allowed_hosts,
        ["admin.example.com", "10.0.0.5:9090"]
    );
    let problems = Config::parse(
        "admin:\n  allowed_hosts: [ok.example, \"http://a.example\", \"*.example\"]\n",
    )
    .expect_err("bad entries");
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(fields, ["admin.allowed_hosts[1]", "admin.allowed_hosts[2]"]);
}

#[test]
fn public_admin_needs_a_token() {
    let problems = Config::parse("admin:\n  listen: 0.0.0.0:9090\n").expect_err("no token");
    assert_eq!(problems[0].field, "admin.token");
    let ok = Config::parse("admin:\n  listen: 0.0.0.0:9090\n  token: 0123456789abcdef0123\n");
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn redis_urls_are_parsed_by_check() {
    for bad in [
        "redis://:::::",
        "redis://host:99999",
        "redis://h/notadb",
        "http://h:6379",
        "redis+cluster://",
        "redis+cluster://h1:7000,,h2:7001",
        "redis+cluster://h1:7000/1",
        "redis+sentinel://s1:26379,s2:26379",
        "redis+sentinel://s1:26379/mymaster/x",
    ] {
        let problems = Config::parse(&format!(
            "rate_limit:\n  shared:\n    redis_url: \"{bad}\"\n"
        ))
        .expect_err(bad);
        assert_eq!(problems.len(), 1, "{bad}: {problems:?}");
        assert_eq!(problems[0].field, "rate_limit.shared.redis_url");
    }
    for ok in [
        "redis://127.0.0.1:6379",
        "redis://h:6379/2",
        "redis://:pw@h",
        "redis+cluster://h1:7000,h2:7001",
        "redis+cluster://:pw@h1,[::1]:7001",
        "redis+sentinel://s1:26379,s2:26379/mymaster",
        "redis+sentinel://:pw@s1,s2,s3/mymaster/2",
    ] {
        let c = Config::parse(&format!(
            "rate_limit:\n  shared:\n    redis_url: \"{ok}\"\n"
        ));
        assert!(c.is_ok(), "{ok}: {c:?}");
    }
}

#[test]
fn a_cluster_key_prefix_holds_no_hash_tag() {
    let yaml = |url: &str, prefix: &str| {
        format!("rate_limit:\n  shared:\n    redis_url: \"{url}\"\n    key_prefix: \"{prefix}\"\n")
    };
    let problems = Config::parse(&yaml("redis+cluster://h1:7000", "tg{a}:")).expect_err("a brace");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].field, "rate_limit.shared.key_prefix");
    assert!(problems[0].reason.contains("hash tags"), "{problems:?}");
    // One server has no slots: any prefix goes.
    assert!(Config::parse(&yaml("redis://h:6379", "tg{a}:")).is_ok());
    assert!(Config::parse(&yaml("redis+cluster://h1:7000", "tg:")).is_ok());
}

#[test]
fn a_huge_capacity_is_not_called_invalid_yaml() {
    let problems = Config::parse(
        "rate_limit:\n  default:\n    capacity: 12345678901234567890123\n    rate_per_sec: 1\n",
    )
    .expect_err("too large");
    assert_eq!(problems.len(), 1, "{problems:?}");
    let p = &problems[0];
    assert!(p.field.starts_with("rate_limit.default"), "{p}");
    assert!(!p.reason.contains("YAML"), "{p}");
    assert!(p.reason.contains("4294967295"), "{p}");
}

#[test]
fn deep_nesting_is_refused_before_parsing() {
    // 100,000 levels took the YAML parser 30-50 s; refused at once.
    let text = format!("backends: {}", "[".repeat(100_000));
    let problems = Config::parse(&text).expect_err("too deep");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].reason.contains("nested"), "{}", problems[0]);
    let text = format!("a: {}", "{a: ".repeat(100_000));
    let problems = Config::parse(&text).expect_err("too deep");
    assert!(problems[0].reason.contains("nested"), "{}", problems[0]);
    // Brackets inside quotes and comments are not nesting.
    let quoted = format!(
        "health_check:\n  path: \"/{}\" # {}\n",
        "[".repeat(100),
        "{".repeat(100)
    );
    assert!(
        Config::parse(&quoted).is_ok(),
        "{:?}",
        Config::parse(&quoted)
    );
    // Ordinary flow collections are fine.
    assert!(Config::parse("rate_limit: {trusted_proxies: [10.0.0.0/8, {}]}\n").is_err());
    assert!(Config::parse("rate_limit: {trusted_proxies: [10.0.0.0/8]}\n").is_ok());
}

#[test]
fn every_problem_of_a_limits_block_is_reported() {
    let problems =
        Config::parse("rate_limit:\n  default:\n    capacity: 0\n    rate_per_sec: -3\n")
            .expect_err("both bad");
    let all: String = problems.iter().map(ToString::to_string).collect();
    assert!(all.contains("capacity"), "{all}");
    assert!(all.contains("rate_per_sec") && all.contains("-3"), "{all}");
}

/// The one problem of `rate_limit: {default: <limits>}`.
fn limits_problem(limits: &str) -> Problem {
    let problems =
        Config::parse(&format!("rate_limit:\n  default: {limits}\n")).expect_err("invalid limits");
    assert_eq!(problems.len(), 1, "{problems:?}");
    problems[0].clone()
}

#[test]
fn limits_take_a_rate_per_unit() {
    let c = Config::parse("rate_limit:\n  default:\n    capacity: 1000\n    rate: 1000/day\n")
        .expect("valid");
    let written = "1000/day".parse().expect("rate");
    assert_eq!(
        c.rate_limit.default,
        Limits::with_rate(1000, written).expect("valid")
    );
    // 0/unit is a fixed allowance, as rate_per_sec: 0 is.
    let c = Config::parse("rate_limit:\n  default: {capacity: 5, rate: 0/s}\n").expect("valid");
    assert_eq!(c.rate_limit.default.fill_time(), None);

    for (limits, field, says) in [
        (
            "{capacity: 5, rate: 5/week}",
            "rate_limit.default.rate",
            "unknown unit \"week\"",
        ),
        (
            "{capacity: 5, rate: abc}",
            "rate_limit.default.rate",
            "N/unit",
        ),
        (
            "{capacity: 5, rate: 1.5/s}",
            "rate_limit.default.rate",
            "whole number",
        ),
        (
            "{capacity: 5, rate: 5}",
            "rate_limit.default.rate",
            "N/unit",
        ),
        (
            "{capacity: 5, rate: 2000000000/s}",
            "rate_limit.default.rate",
            "at most",
        ),
        (
            "{capacity: 5, rate: 5/s, rate_per_sec: 5}",
            "rate_limit.default",
            "both given",
        ),
        (
            "{capacity: 5}",
            "rate_limit.default",
            "rate_per_sec (tokens per second) or rate",
        ),
        (
            "{capacity: 4294967295, rate: 1/day}",
            "rate_limit.default",
            "must be at most",
        ),
    ] {
        let p = limits_problem(limits);
        assert_eq!(p.field, field, "{limits}: {p}");
        assert!(p.reason.contains(says), "{limits}: {p}");
    }
}

#[test]
fn ipv6_prefix_is_1_to_128() {
    assert_eq!(Config::parse("").expect("valid").rate_limit.ipv6_prefix, 64);
    for ok in [1, 48, 128] {
        let c = Config::parse(&format!("rate_limit:\n  ipv6_prefix: {ok}\n")).expect("valid");
        assert_eq!(c.rate_limit.ipv6_prefix, ok);
    }
    for bad in ["0", "129", "-1", "1000", "abc"] {
        let problems =
            Config::parse(&format!("rate_limit:\n  ipv6_prefix: {bad}\n")).expect_err(bad);
        assert_eq!(
            problems[0].field, "rate_limit.ipv6_prefix",
            "{bad}: {problems:?}"
        );
    }
    let problems = Config::parse("rate_limit:\n  ipv6_prefix: 129\n").expect_err("129");
    assert!(problems[0].reason.contains("1 to 128"), "{problems:?}");
}

#[test]
fn store_timeout_and_admin_read_timeouts_are_checked() {
    let c = Config::parse("").expect("defaults");
    assert_eq!(c.store.timeout, Duration::from_secs(5));
    assert_eq!(c.admin.header_read_timeout, Duration::from_secs(10));
    assert_eq!(c.admin.body_read_timeout, Duration::from_secs(10));
    let problems = Config::parse(
        "store:\n  timeout: 0s\nadmin:\n  header_read_timeout: 0s\n  body_read_timeout: 0ms\n",
    )
    .expect_err("zero");
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    for f in [
        "store.timeout",
        "admin.header_read_timeout",
        "admin.body_read_timeout",
    ] {
        assert!(fields.contains(&f), "{f}: {problems:?}");
    }
}

#[test]
fn proxy_protocol_needs_a_trusted_proxy() {
    assert!(!Config::parse("").expect("defaults").server.proxy_protocol);
    let problems = Config::parse("server:\n  proxy_protocol: true\n").expect_err("nobody trusted");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].field, "server.proxy_protocol");
    assert!(
        problems[0].reason.contains("trusted_proxies"),
        "{problems:?}"
    );
    let c = Config::parse(
        "server:\n  proxy_protocol: true\nrate_limit:\n  trusted_proxies: [10.0.0.0/8]\n",
    )
    .expect("valid");
    assert!(crate::proxy::server::ServeOptions::from(&c)
        .proxy_protocol
        .is_some());
}

#[test]
fn rules_are_checked_with_their_field_paths() {
    let text = "rate_limit:
  rules:
    - name: search
      match: {path_prefix: /api/search, methods: [GET, post]}
      key: header:X-Tenant
      limits: {capacity: 10, rate: 100/min}
      cost: 2
      dry_run: true
    - name: Bad Name
      match: {path_prefix: api}
      key: cookie:x
      limits: {capacity: 10, rate_per_sec: 1}
      cost: 11
    - name: search
      match: {methods: [\"G T\"]}
      key: header:bad name
      limits: {capacity: 5, rate_per_sec: 1}
      cost: 0
    - name: client
      limits: {capacity: 5, rate_per_sec: 1}
";
    let problems = Config::parse(text).expect_err("rules 1-3 are wrong");
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    for field in [
        "rate_limit.rules[1].name",
        "rate_limit.rules[1].match.path_prefix",
        "rate_limit.rules[1].key",
        "rate_limit.rules[1].cost",
        "rate_limit.rules[2].name",
        "rate_limit.rules[2].match.methods",
        "rate_limit.rules[2].key",
        "rate_limit.rules[2].cost",
    ] {
        assert!(fields.contains(&field), "{field} not in {problems:?}");
    }
    assert!(
        fields.contains(&"rate_limit.rules[3].name"),
        "reserved: {problems:?}"
    );
    assert!(
        !fields.iter().any(|f| f.starts_with("rate_limit.rules[0]")),
        "{problems:?}"
    );
    // Limits are read as the section is: their problems carry the path.
    let bad_limits = Config::parse(
        "rate_limit:\n  rules:\n    - name: x\n      limits: {capacity: 0, rate_per_sec: 1}\n",
    )
    .expect_err("capacity 0");
    assert_eq!(
        bad_limits[0].field, "rate_limit.rules[0].limits",
        "{bad_limits:?}"
    );

    let ok = Config::parse(
        "rate_limit:
  dry_run: true
  rules:
    - name: search
      match: {path_prefix: /api/search, methods: [GET, post]}
      key: header:X-Tenant
      limits: {capacity: 10, rate: 100/min}
      cost: 2
",
    )
    .expect("valid");
    assert!(ok.rate_limit.dry_run);
    let specs = ok.rate_limit.rule_specs();
    assert_eq!(specs.len(), 1);
    assert_eq!(specs[0].methods, [http::Method::GET, http::Method::POST]);
    assert_eq!(specs[0].key.to_string(), "header:x-tenant");
    assert_eq!(specs[0].cost.get(), 2);
}

#[test]
fn rule_methods_in_any_case_and_prefixes_in_normal_form() {
    let c = Config::parse(
        "rate_limit:\n  rules:\n    - name: r\n      match: {path_prefix: /a, methods: [get, Post]}\n      limits: {capacity: 1, rate_per_sec: 1}\n",
    )
    .expect("lower-case methods are accepted");
    let spec = c.rate_limit.rules[0].spec().expect("valid");
    assert_eq!(spec.methods, [http::Method::GET, http::Method::POST]);
    for (prefix, says) in [
        ("/a//b", "write \"/a/b\""),
        ("/a/%62", "write \"/a/b\""),
        ("/a/./b", "write \"/a/b\""),
        ("/a\\\\b", "Backslash"),
        ("/../a", "climbs above the root"),
    ] {
        let text = format!(
            "rate_limit:\n  rules:\n    - name: r\n      match: {{path_prefix: \"{prefix}\"}}\n      limits: {{capacity: 1, rate_per_sec: 1}}\n"
        );
        let problems = Config::parse(&text).expect_err(prefix);
        assert!(
            problems
                .iter()
                .any(|p| p.field == "rate_limit.rules[0].match.path_prefix"
                    && p.reason.contains(says)),
            "{prefix}: {problems:?}"
        );
    }
}

#[test]
fn pools_and_routes_problems_are_named_with_their_field() {
    let text = "
pools:
  api:
    backends: [{url: 'http://127.0.0.1:1', name: a}, {url: 'http://127.0.0.1:2', name: a}]
  idle:
    backends: [{url: 'http://127.0.0.1:3'}]
  default:
    backends: [{url: 'http://127.0.0.1:4'}]
  Bad:
    backends: []
routes:
  - name: all
    match: {path_prefix: /}
    pool: api
  - name: under
    match: {path_prefix: /api, hosts: [a.example.com]}
    pool: api
  - name: all
    match: {path_exact: /x, hosts: ['bad host']}
    pool: nowhere
  - name: edits
    match: {hosts: [b.example.com]}
    pool: api
    request_headers: {set: {Host: evil}}
rate_limit:
  rules:
    - name: r
      match: {routes: [missing]}
      limits: {capacity: 1, rate_per_sec: 1}
";
    let problems = Config::parse(text).expect_err("invalid");
    let has = |field: &str, says: &str| {
        problems
            .iter()
            .any(|p| p.field == field && p.reason.contains(says))
    };
    for (field, says) in [
        ("pools.api.backends[1].name", "names are unique in a pool"),
        ("pools.idle", "no route sends requests"),
        ("pools.default", "top-level backends"),
        ("pools.Bad", "[a-z0-9_-]+"),
        ("pools.Bad.backends", "at least one backend"),
        ("routes[1]", "never taken: routes[0]"),
        ("routes[2].name", "already the name of routes[0]"),
        ("routes[2].pool", "\"nowhere\" is not a pool"),
        ("routes[2].match.hosts", "\"bad host\""),
        ("routes[3].request_headers", "set by tollgate itself"),
        (
            "rate_limit.rules[0].match.routes",
            "\"missing\" is not a route",
        ),
    ] {
        assert!(has(field, says), "{field}: {says}\n{problems:#?}");
    }
    // A route under a host-bound one is not shadowed by it; the default
    // pool may be empty when routes are set.
    let fine = "
pools:
  api:
    backends: [{url: 'http://127.0.0.1:1'}]
  web:
    backends: [{url: 'http://127.0.0.1:2'}]
routes:
  - name: api
    match: {hosts: [api.example.com], path_prefix: /api}
    pool: api
  - name: web
    match: {path_prefix: /api}
    pool: web
";
    let c = Config::parse(fine).expect("valid");
    assert!(c.backends.is_empty(), "no default pool unless written");
    assert_eq!(c.route_specs().len(), 2);
}

#[test]
fn protocols_and_grpc_checks_resolve_per_pool() {
    let text = "
backends: [{url: 'http://127.0.0.1:1'}]
proxy: {protocol: http2}
health_check: {grpc: true, grpc_service: test.Echo}
pools:
  web:
    protocol: http1
    health_check: {grpc: false}
    backends: [{url: 'http://127.0.0.1:2'}]
  grpc:
    backends: [{url: 'http://127.0.0.1:3'}]
    health_check: {grpc_service: other.Svc}
routes:
  - name: web
    match: {path_prefix: /web}
    pool: web
  - name: grpc
    match: {path_prefix: /grpc}
    pool: grpc
";
    let c = Config::parse(text).expect("valid");
    let specs = c.pool_specs();
    let by = |name: &str| {
        specs
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("{name}"))
    };
    use crate::balancer::Protocol;
    assert_eq!(by("default").protocol, Protocol::Http2);
    assert_eq!(by("default").health.grpc.as_deref(), Some("test.Echo"));
    assert_eq!(by("web").protocol, Protocol::Http1);
    assert_eq!(by("web").health.grpc, None);
    assert_eq!(by("grpc").protocol, Protocol::Http2);
    assert_eq!(by("grpc").health.grpc.as_deref(), Some("other.Svc"));
    assert_eq!(by("grpc").health.protocol, Protocol::Http2);
    // The default is HTTP/1.1 and plain GET checks.
    let c = Config::parse("").expect("defaults");
    assert_eq!(c.pool_specs()[0].protocol, Protocol::Http1);
    assert_eq!(c.pool_specs()[0].health.grpc, None);
}

#[test]
fn grpc_checks_need_http2() {
    let text = "
backends: [{url: 'http://127.0.0.1:1'}]
health_check: {grpc: true}
pools:
  api:
    backends: [{url: 'http://127.0.0.1:2'}]
    protocol: http2
    health_check: {grpc: true}
  web:
    backends: [{url: 'http://127.0.0.1:3'}]
routes:
  - name: api
    match: {path_prefix: /api}
    pool: api
  - name: web
    match: {path_prefix: /web}
    pool: web
";
    let problems = Config::parse(text).expect_err("invalid");
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        ["health_check.grpc", "pools.web.health_check.grpc"],
        "{problems:#?}"
    );
    assert!(
        problems[0].reason.contains("need protocol: http2"),
        "{problems:#?}"
    );
    let bad = Config::parse("proxy: {protocol: http3}\n").expect_err("unknown protocol");
    assert_eq!(bad[0].field, "proxy.protocol", "{bad:#?}");
}

#[test]
fn traffic_control_keys_are_checked_with_their_field() {
    let pool = |keys: &str| {
        format!(
            "backends: []\npools:\n  api:\n    backends: [{{url: http://127.0.0.1:9000}}]\n{keys}routes:\n  - {{name: all, pool: api}}\n"
        )
    };
    let ok = Config::parse(&pool(
        "    max_connections: 10\n    queue: {size: 5, timeout: 1s}\n    retries: {budget_percent: 20}\n",
    ))
    .expect("valid");
    let api = &ok.pools["api"];
    assert_eq!((api.max_connections, api.queue.size), (10, 5));
    assert_eq!(api.retries.budget_percent, Some(20));
    let spec = ok.pool_specs();
    assert_eq!(spec[1].limits.max_connections, 10);
    assert_eq!(spec[1].retries.budget_percent, Some(20));

    for (keys, field, says) in [
        (
            "    max_connections: 1\n    queue: {timeout: 0s}\n",
            "pools.api.queue.timeout",
            "greater than 0",
        ),
        (
            "    retries: {budget_percent: 0}\n",
            "pools.api.retries.budget_percent",
            "1 to 100",
        ),
        (
            "    discovery: {dns: api.internal}\n",
            "pools.api.discovery.dns",
            "name:port",
        ),
        (
            "    discovery: {dns: \"a:1\", dns_srv: _http._tcp.a}\n",
            "pools.api.discovery",
            "exactly one",
        ),
        (
            "    discovery: {dns_srv: api.internal}\n",
            "pools.api.discovery.dns_srv",
            "_service._proto",
        ),
        (
            "    discovery: {dns: \"a:80\", interval: 0s}\n",
            "pools.api.discovery.interval",
            "greater than 0",
        ),
    ] {
        let yaml = pool(keys);
        let problems = Config::parse(&yaml).expect_err(&yaml);
        assert_eq!(problems.len(), 1, "{yaml}: {problems:?}");
        assert_eq!(problems[0].field, field, "{yaml}: {problems:?}");
        assert!(problems[0].reason.contains(says), "{yaml}: {problems:?}");
    }
    // Discovery alone is a pool: no configured backend is needed.
    let yaml = "backends: []\npools:\n  api:\n    discovery: {dns: \"api.internal:80\"}\nroutes:\n  - {name: all, pool: api}\n";
    let c = Config::parse(yaml).expect("discovery alone");
    assert!(c.pool_specs()[1].discovery.is_some());
}

#[test]
fn span_export_settings_are_checked_with_their_field() {
    let c = Config::parse("telemetry:\n  otlp: {endpoint: 'http://c:4318'}\n").expect("valid");
    let otlp = c.telemetry.otlp.expect("set");
    assert_eq!(otlp.sample_ratio, 0.01);
    assert_eq!(otlp.service_name, "tollgate");
    assert_eq!(otlp.max_queue_size.get(), 2048);
    assert_eq!(Config::parse("").expect("valid").telemetry.otlp, None);

    let text = "telemetry:\n  otlp:\n    endpoint: 'collector:4318'\n    sample_ratio: 1.5\n    \
                service_name: ' '\n    max_queue_size: 1000000\n    timeout: 0s\n    batch_delay: 0s\n";
    let problems = Config::parse(text).expect_err("invalid");
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    for field in [
        "telemetry.otlp.endpoint",
        "telemetry.otlp.sample_ratio",
        "telemetry.otlp.service_name",
        "telemetry.otlp.max_queue_size",
        "telemetry.otlp.timeout",
        "telemetry.otlp.batch_delay",
    ] {
        assert!(fields.contains(&field), "{field} not in {problems:?}");
    }
    let missing =
        Config::parse("telemetry:\n  otlp: {sample_ratio: 1}\n").expect_err("no endpoint");
    assert_eq!(missing[0].field, "telemetry.otlp", "{missing:?}");
    assert!(missing[0].reason.contains("endpoint"), "{missing:?}");
}
