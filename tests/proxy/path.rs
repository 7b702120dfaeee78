//! One request path: every spelling of a path is charged to the rules of
//! that path, the backend receives exactly the path the rules matched,
//! what cannot be put in one form is refused, methods are matched as a
//! backend reads them (HEAD as GET, `get` refused), and a rule key sent
//! twice is refused. Raw requests, since an HTTP client library would
//! normalize some spellings itself before sending them.

use std::net::SocketAddr;

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use tollgate::config::Config;

use crate::support::raw::{RawClient, RawResponse};
use crate::support::{backend, balancer, config};

/// Sends one raw HTTP/1.1 request for `target` with `method` and extra
/// header lines, on a connection of its own.
async fn raw(proxy: SocketAddr, method: &str, target: &str, extra: &str) -> RawResponse {
    let mut c = RawClient::connect(proxy).await;
    c.send(
        format!("{method} {target} HTTP/1.1\r\nHost: t\r\n{extra}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    c.response().await
}

/// The status of a HEAD for `target` (its answer has a length but no
/// body, so only the head is read).
async fn head(proxy: SocketAddr, target: &str) -> u16 {
    let mut c = RawClient::connect(proxy).await;
    c.send(format!("HEAD {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await;
    let head = c.head().await;
    head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// The path the demo backend says it received.
fn received(r: &RawResponse) -> String {
    r.json()["path"].as_str().unwrap_or_default().to_owned()
}

fn with_rules(backend: SocketAddr, yaml: &str) -> Config {
    let mut cfg = config(&[backend]);
    cfg.rate_limit.rules = Config::parse(&format!("rate_limit:\n  rules:\n{yaml}"))
        .unwrap_or_else(|p| panic!("{p:?}"))
        .rate_limit
        .rules;
    cfg
}

/// The issue's spellings of `/api/search`: a capacity-3 rule admitted 25
/// of 25 of them before paths were normalized.
#[tokio::test]
async fn every_spelling_of_a_path_is_charged_to_its_rule() {
    let b = backend("solo").await;
    let lb = balancer(&with_rules(
        b.addr,
        "    - name: search
      match: {path_prefix: /api/search}
      limits: {capacity: 3, rate_per_sec: 0.001}
",
    ))
    .await;
    let p = lb.proxy_addr();
    let spellings = [
        "//api/search",
        "/api/%73earch",
        "/x/../api/search",
        "/api/./search",
        "/api//search",
        "/%61pi/search?q=1",
        "/api/x/%2e%2e/search",
    ];
    let mut admitted = 0;
    for s in spellings {
        let r = raw(p, "GET", s, "").await;
        match r.status {
            200 => {
                admitted += 1;
                assert_eq!(
                    received(&r),
                    "/api/search",
                    "{s}: the backend gets the one path"
                );
            }
            429 => assert!(r.json()["code"] == 429, "{s}"),
            other => panic!("{s}: {other}"),
        }
    }
    assert_eq!(admitted, 3, "the rule's capacity, whatever the spelling");
    for s in [
        "/api%2fsearch",
        "/api%2Fsearch",
        "/api%5csearch",
        "/api\\search",
    ] {
        let r = raw(p, "GET", s, "").await;
        assert_eq!(r.status, 400, "{s}");
        assert_eq!(r.json()["code"], 400, "{s}");
    }
    for s in ["/../api/search", "/%2e%2e/api/search", "/a%00b", "/a%zz"] {
        assert_eq!(raw(p, "GET", s, "").await.status, 400, "{s}");
    }
    lb.shutdown().await;
    b.stop().await;
}

/// `ignore_case: true` charges `/API/search` to a rule on `/api/search`,
/// for a backend that reads the two as one; without it the match is
/// case-sensitive.
#[tokio::test]
async fn ignore_case_charges_every_case_of_the_path() {
    let b = backend("solo").await;
    let lb = balancer(&with_rules(
        b.addr,
        "    - name: exact
      match: {path_prefix: /api/search}
      limits: {capacity: 1, rate_per_sec: 0.001}
    - name: folded
      match: {path_prefix: /api/search, ignore_case: true}
      limits: {capacity: 2, rate_per_sec: 0.001}
",
    ))
    .await;
    let p = lb.proxy_addr();
    let policy = |r: &RawResponse| r.header("ratelimit-policy").join(",");
    let first = raw(p, "GET", "/API/Search", "").await;
    assert_eq!(first.status, 200);
    assert!(policy(&first).contains("\"folded\""), "{}", first.head);
    assert!(!policy(&first).contains("\"exact\""), "{}", first.head);
    assert_eq!(raw(p, "GET", "/Api/SEARCH", "").await.status, 200);
    assert_eq!(raw(p, "GET", "/API/search", "").await.status, 429);
    lb.shutdown().await;
    b.stop().await;
}

/// A rule on GET takes HEAD too (a HEAD flood is a GET flood); a standard
/// method in another case is refused, as nginx does, since a backend that
/// folds case would serve it as that method.
#[tokio::test]
async fn head_is_charged_as_get_and_case_folded_methods_are_refused() {
    let b = backend("solo").await;
    let lb = balancer(&with_rules(
        b.addr,
        "    - name: reads
      match: {path_prefix: /r, methods: [get]}
      limits: {capacity: 2, rate_per_sec: 0.001}
",
    ))
    .await;
    let p = lb.proxy_addr();
    assert_eq!(head(p, "/r").await, 200);
    assert_eq!(head(p, "/r").await, 200);
    assert_eq!(
        raw(p, "GET", "/r", "").await.status,
        429,
        "HEADs spent the GET rule"
    );
    assert_eq!(
        raw(p, "POST", "/r", "Content-Length: 0\r\n").await.status,
        200
    );
    for m in ["get", "Post", "dELETE"] {
        let r = raw(p, m, "/x", "").await;
        assert_eq!(r.status, 400, "{m}");
        assert!(
            r.json()["message"]
                .as_str()
                .is_some_and(|t| t.contains("case-sensitive")),
            "{m}: {}",
            r.json()
        );
    }
    // An extension method of its own is not a standard one in disguise.
    assert_ne!(raw(p, "PURGE", "/x", "").await.status, 400);
    lb.shutdown().await;
    b.stop().await;
}

/// Two values of a rule's key header: the rule would charge one while the
/// backend may read the other.
#[tokio::test]
async fn a_rule_key_header_sent_twice_is_refused() {
    let b = backend("solo").await;
    let lb = balancer(&with_rules(
        b.addr,
        "    - name: tenants
      key: header:X-Tenant
      limits: {capacity: 5, rate_per_sec: 0.001}
",
    ))
    .await;
    let p = lb.proxy_addr();
    assert_eq!(raw(p, "GET", "/", "X-Tenant: a\r\n").await.status, 200);
    let r = raw(p, "GET", "/", "X-Tenant: a\r\nX-Tenant: b\r\n").await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["message"]
            .as_str()
            .is_some_and(|m| m.contains("More than one")),
        "{}",
        r.json()
    );
    lb.shutdown().await;
    b.stop().await;
}

/// `proxy.escaped_slashes: keep` forwards `%2F` untouched, and a rule
/// matches it as text, not as a separator.
#[tokio::test]
async fn keep_forwards_escaped_slashes_as_text() {
    let b = backend("solo").await;
    let mut cfg = with_rules(
        b.addr,
        "    - name: search
      match: {path_prefix: /api/search}
      limits: {capacity: 1, rate_per_sec: 0.001}
",
    );
    cfg.proxy.escaped_slashes = tollgate::proxy::path::EscapedSlashes::Keep;
    let lb = balancer(&cfg).await;
    let p = lb.proxy_addr();
    for _ in 0..3 {
        let r = raw(p, "GET", "/api%2fsearch", "").await;
        assert_eq!(r.status, 200, "not the rule's path: never limited");
        assert_eq!(received(&r), "/api%2Fsearch");
    }
    lb.shutdown().await;
    b.stop().await;
}

/// For random spellings of random paths, the backend receives the
/// normalized path, and the rule on `/api` applies exactly when it
/// applies to that path (seen in `RateLimit-Policy`).
#[tokio::test]
async fn random_spellings_reach_the_backend_as_their_path() {
    let b = backend("solo").await;
    let lb = balancer(&with_rules(
        b.addr,
        "    - name: api
      match: {path_prefix: /api}
      limits: {capacity: 1000000, rate_per_sec: 1000}
",
    ))
    .await;
    let p = lb.proxy_addr();
    let segment = proptest::sample::select(vec!["api", "apix", "a", "b-1", "c_2", "d~3", "Z9"]);
    let paths = proptest::collection::vec(segment, 1..5).prop_map(|s| format!("/{}", s.join("/")));
    let mut runner = TestRunner::deterministic();
    for _ in 0..200 {
        let (path, spelled) = paths
            .clone()
            .prop_flat_map(spell)
            .new_tree(&mut runner)
            .expect("a case")
            .current();
        let r = raw(p, "GET", &spelled, "").await;
        assert_eq!(r.status, 200, "{spelled}");
        assert_eq!(received(&r), path, "{spelled}");
        let charged = r.header("ratelimit-policy").join(",").contains("\"api\"");
        assert_eq!(charged, path.starts_with("/api"), "{spelled} -> {path}");
    }
    lb.shutdown().await;
    b.stop().await;
}

/// A spelling of `path` a client could send: slashes doubled, `./` and
/// `zz/../` inserted at segment starts, characters percent-encoded.
fn spell(path: String) -> impl Strategy<Value = (String, String)> {
    proptest::collection::vec((0u8..4, 0usize..16), 0..6).prop_map(move |edits| {
        let mut s = path.clone();
        for (kind, at) in edits {
            let starts: Vec<usize> = s.match_indices('/').map(|(i, _)| i + 1).collect();
            let at = starts[at % starts.len()];
            match kind {
                0 => s.insert(at, '/'),
                1 => s.insert_str(at, "./"),
                2 => s.insert_str(at, "zz/../"),
                _ => {
                    if let Some(c) = s[at..].chars().next().filter(char::is_ascii_alphanumeric) {
                        s.replace_range(at..at + 1, &format!("%{:02x}", c as u8));
                    }
                }
            }
        }
        (path.clone(), s)
    })
}
