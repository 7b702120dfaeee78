//! Routes and pools end to end, with demo backends: routes by host and
//! path, the rewrite the backend sees, header edits on both sides, header
//! and method matches, a rule on one route refusing while another admits,
//! per-pool health, draining one pool, metrics and access log lines
//! naming route and pool, and reloads that change routes and pools under
//! load without a failed request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tollgate::app::Running;
use tollgate::config::Config;

use crate::support::metrics::{parse, scrape};
use crate::support::{backend, client, config, eventually, url, TestBackend};

/// `config` over no default pool, with `yaml` (pools, routes, and any
/// other sections) applied on top.
fn routed(yaml: &str) -> Config {
    let parsed = Config::parse(yaml).unwrap_or_else(|p| panic!("{p:#?}\n{yaml}"));
    let mut cfg = config(&[]);
    cfg.pools = parsed.pools;
    cfg.routes = parsed.routes;
    cfg.backends = parsed.backends;
    cfg.rate_limit.rules = parsed.rate_limit.rules;
    cfg.log = parsed.log;
    cfg
}

/// A GET for `path` with this `Host`, and extra headers; the status, the
/// response headers and the body as JSON (Null if not JSON).
async fn get(
    c: &reqwest::Client,
    proxy: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut r = c.get(url(proxy, path)).header("host", host);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

/// Who answered: the demo backend's name.
fn served_by(body: &Value) -> &str {
    body["backend"].as_str().unwrap_or("")
}

struct Three {
    api: [TestBackend; 2],
    web: TestBackend,
    files: TestBackend,
}

async fn three() -> Three {
    Three {
        api: [backend("api-0").await, backend("api-1").await],
        web: backend("web-0").await,
        files: backend("files-0").await,
    }
}

fn three_pools(b: &Three, routes: &str) -> String {
    format!(
        "pools:\n  api:\n    strategy: round_robin\n    backends:\n      - url: http://{}\n        name: api-0\n      - url: http://{}\n        name: api-1\n  web:\n    backends:\n      - url: http://{}\n        name: web-0\n  files:\n    backends:\n      - url: http://{}\n        name: files-0\nroutes:\n{routes}",
        b.api[0].addr, b.api[1].addr, b.web.addr, b.files.addr
    )
}

const ROUTES: &str = "  - name: api
    match: {hosts: [api.example.com], path_prefix: /api}
    pool: api
    rewrite: {prefix: /}
  - name: files
    match: {path_prefix: /static}
    pool: files
  - name: web
    match: {hosts: [\"*.web.example.com\", www.example.com]}
    pool: web
";

#[tokio::test]
async fn requests_go_to_their_pool_by_host_and_path() {
    let b = three().await;
    let lb = crate::support::balancer(&routed(&three_pools(&b, ROUTES))).await;
    let (c, p) = (client(), lb.proxy_addr());
    let mut api_backends = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let (s, _, body) = get(&c, p, "api.example.com", "/api/users?x=1", &[]).await;
        assert_eq!(s, 200);
        assert!(served_by(&body).starts_with("api-"), "{body}");
        assert_eq!(body["path"], "/users", "the rewrite the backend sees");
        api_backends.insert(served_by(&body).to_owned());
    }
    assert_eq!(api_backends.len(), 2, "round robin within the pool");
    // Port and case of the host do not matter; /api alone becomes /.
    let (s, _, body) = get(&c, p, "API.Example.com:8080", "/api", &[]).await;
    assert_eq!((s, body["path"].as_str()), (200, Some("/")));
    // Segment boundaries: /apix is not under /api, and no route takes it.
    let (s, _, body) = get(&c, p, "api.example.com", "/apix", &[]).await;
    assert_eq!(
        (s, body),
        (404, serde_json::json!({"code": 404, "message": "no route"}))
    );
    // The path route takes any host.
    let (s, _, body) = get(&c, p, "api.example.com", "/static/app.css", &[]).await;
    assert_eq!((s, served_by(&body)), (200, "files-0"));
    assert_eq!(body["path"], "/static/app.css", "no rewrite on this route");
    // Wildcards take one or more labels, not the bare name.
    for host in [
        "eu.web.example.com",
        "a.b.web.example.com",
        "www.example.com",
    ] {
        let (s, _, body) = get(&c, p, host, "/", &[]).await;
        assert_eq!((s, served_by(&body)), (200, "web-0"), "{host}");
    }
    let (s, _, _) = get(&c, p, "web.example.com", "/", &[]).await;
    assert_eq!(s, 404, "no default pool, no route");
    lb.shutdown().await;
}

#[tokio::test]
async fn unmatched_requests_go_to_the_default_pool_when_it_has_backends() {
    let b = three().await;
    let fallback = backend("default-0").await;
    let yaml = format!(
        "backends:\n  - url: http://{}\n{}",
        fallback.addr,
        three_pools(&b, ROUTES)
    );
    let lb = crate::support::balancer(&routed(&yaml)).await;
    let (s, _, body) = get(&client(), lb.proxy_addr(), "elsewhere.example", "/x", &[]).await;
    assert_eq!((s, served_by(&body)), (200, "default-0"));
    lb.shutdown().await;
}

#[tokio::test]
async fn header_edits_are_seen_on_both_sides() {
    let b = three().await;
    let routes = "  - name: web
    match: {path_prefix: /}
    pool: web
    request_headers: {set: {X-Env: prod}, remove: [Cookie]}
    response_headers: {set: {Strict-Transport-Security: max-age=63072000}, remove: [X-Backend]}
  - name: api
    match: {path_prefix: /api}
    pool: api
  - name: files
    match: {path_prefix: /static}
    pool: files
";
    // The catch-all comes first, so check refuses the config: routes
    // after it can never be taken.
    let problems = Config::parse(&three_pools(&b, routes)).expect_err("shadowed routes");
    let text = format!("{problems:?}");
    assert!(
        text.contains("routes[1]") && text.contains("never taken"),
        "{text}"
    );
    let routes = "  - name: web
    match: {path_prefix: /}
    pool: web
    request_headers: {set: {X-Env: prod}, remove: [Cookie]}
    response_headers: {set: {Strict-Transport-Security: max-age=63072000}, remove: [X-Backend]}
";
    let yaml = format!(
        "pools:\n  web:\n    backends:\n      - url: http://{}\n        name: web-0\nroutes:\n{routes}",
        b.web.addr
    );
    let lb = crate::support::balancer(&routed(&yaml)).await;
    let (s, headers, body) = get(
        &client(),
        lb.proxy_addr(),
        "h",
        "/headers",
        &[("cookie", "session=secret"), ("x-env", "dev")],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        body["x-env"], "prod",
        "set replaces the client's value: {body}"
    );
    assert!(
        body.get("cookie").is_none(),
        "removed before forwarding: {body}"
    );
    assert_eq!(headers["strict-transport-security"], "max-age=63072000");
    assert!(
        headers.get("x-backend").is_none(),
        "removed from the answer"
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn routes_match_headers_and_methods() {
    let b = three().await;
    let routes = "  - name: canary
    match: {headers: {X-Canary: \"1\"}}
    pool: files
  - name: writes
    match: {methods: [post]}
    pool: api
  - name: rest
    match: {path_prefix: /}
    pool: web
";
    let lb = crate::support::balancer(&routed(&three_pools(&b, routes))).await;
    let (c, p) = (client(), lb.proxy_addr());
    let (_, _, body) = get(&c, p, "h", "/", &[("x-canary", "1")]).await;
    assert_eq!(served_by(&body), "files-0");
    let (_, _, body) = get(&c, p, "h", "/", &[("x-canary", "2")]).await;
    assert_eq!(
        served_by(&body),
        "web-0",
        "a different value does not match"
    );
    let r = c.post(url(p, "/")).body("x").send().await.expect("post");
    let body: Value = r.json().await.expect("json");
    assert!(
        served_by(&body).starts_with("api-"),
        "POST takes the writes route: {body}"
    );
    let (_, _, body) = get(&c, p, "h", "/", &[]).await;
    assert_eq!(served_by(&body), "web-0");
    // The header a route matches on, sent twice: 400, not a guess.
    let mut raw = crate::support::raw::RawClient::connect(p).await;
    raw.send(
        b"GET / HTTP/1.1\r\nHost: h\r\nX-Canary: 1\r\nX-Canary: 2\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw.response().await.status, 400);
    lb.shutdown().await;
}

#[tokio::test]
async fn a_rule_on_one_route_refuses_while_another_admits() {
    let b = three().await;
    let yaml = format!(
        "{}rate_limit:\n  rules:\n    - name: api-burst\n      match: {{routes: [api]}}\n      limits: {{capacity: 2, rate_per_sec: 0.001}}\nlog:\n  access: true\n  format: json\n",
        three_pools(&b, ROUTES)
    );
    let lines = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let cfg = routed(&yaml);
    let lb = tollgate::app::start_with(
        &cfg,
        tollgate::app::StartOptions {
            access_log_sink: Some(Box::new(SharedSink(lines.clone()))),
            ..Default::default()
        },
    )
    .await
    .expect("starts");
    let (c, p) = (client(), lb.proxy_addr());
    let mut api = Vec::new();
    for _ in 0..4 {
        api.push(get(&c, p, "api.example.com", "/api/x", &[]).await.0);
    }
    assert_eq!(api, [200, 200, 429, 429]);
    for _ in 0..5 {
        assert_eq!(get(&c, p, "www.example.com", "/", &[]).await.0, 200);
    }
    let m = parse(&scrape(&c, lb.admin_addr()).await);
    assert_eq!(
        m.get(r#"tollgate_rate_limited_total{policy="api-burst",dry_run="false",route="api",pool="api"}"#),
        Some(&2.0),
        "{m:#?}"
    );
    let web_ok = m
        .iter()
        .filter(|(k, _)| {
            k.starts_with("tollgate_requests_total{")
                && k.contains(r#"status="2xx""#)
                && k.contains(r#"route="web""#)
                && k.contains(r#"pool="web""#)
        })
        .map(|(_, v)| *v)
        .sum::<f64>();
    assert_eq!(web_ok, 5.0, "{m:#?}");
    lb.shutdown().await;
    let text = String::from_utf8(lines.lock().expect("lines").clone()).expect("utf-8");
    let refused: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["status"] == 429)
        .collect();
    assert_eq!(refused.len(), 2, "{text}");
    for v in &refused {
        assert_eq!(
            (&v["route"], &v["pool"], &v["limited"]),
            (&"api".into(), &"api".into(), &"api-burst".into())
        );
    }
}

/// An access log sink the test can read.
struct SharedSink(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for SharedSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn each_pool_has_its_own_health_and_drain() {
    let b = three().await;
    let mut cfg = routed(&three_pools(&b, ROUTES));
    cfg.health_check.interval = Duration::from_millis(100);
    cfg.health_check.timeout = Duration::from_millis(500);
    let lb = crate::support::balancer(&cfg).await;
    let (c, p) = (client(), lb.proxy_addr());
    let api = lb.pool_named("api").expect("api pool");
    let web = lb.pool_named("web").expect("web pool");
    // Draining one pool's backend leaves the other pool untouched.
    api.drain("api-0").expect("api-0 drains");
    for _ in 0..4 {
        let (_, _, body) = get(&c, p, "api.example.com", "/api/x", &[]).await;
        assert_eq!(served_by(&body), "api-1");
        let (_, _, body) = get(&c, p, "www.example.com", "/", &[]).await;
        assert_eq!(served_by(&body), "web-0");
    }
    assert!(web.drain("api-0").is_none(), "names are per pool");
    // A backend of one pool dies: only that pool loses it.
    let Three {
        api: [a0, a1],
        web: w,
        files,
    } = b;
    a1.stop().await;
    let dead = api.find("api-1").expect("api-1");
    eventually("api-1 evicted", || !dead.is_healthy()).await;
    assert!(web.backends().iter().all(|b| b.is_healthy()));
    let (s, _, _) = get(&c, p, "api.example.com", "/api/x", &[]).await;
    assert_eq!(s, 503, "api-0 draining, api-1 dead");
    let (s, _, _) = get(&c, p, "www.example.com", "/", &[]).await;
    assert_eq!(s, 200);
    lb.shutdown().await;
    for t in [a0, w, files] {
        t.stop().await;
    }
}

/// The config file the reload test rewrites: `v` picks one of two route
/// and pool sets; both send every request somewhere.
fn reload_yaml(b: &Three, extra: &TestBackend, v: usize) -> String {
    let head = "server:\n  listen: 127.0.0.1:0\n  drain_timeout: 5s\nadmin:\n  listen: 127.0.0.1:0\nhealth_check:\n  interval: 1h\nrate_limit:\n  default: {capacity: 1000000, rate_per_sec: 1000000}\n";
    let pools = if v.is_multiple_of(2) {
        format!(
            "pools:\n  api:\n    backends:\n      - url: http://{}\n        name: api-0\n  web:\n    backends:\n      - url: http://{}\n        name: web-0\nroutes:\n  - name: api\n    match: {{path_prefix: /api}}\n    pool: api\n    rewrite: {{prefix: /}}\n  - name: web\n    match: {{path_prefix: /}}\n    pool: web\n",
            b.api[0].addr, b.web.addr
        )
    } else {
        format!(
            "pools:\n  api:\n    strategy: least_connections\n    backends:\n      - url: http://{}\n        name: api-0\n      - url: http://{}\n        name: api-1\n  web:\n    backends:\n      - url: http://{}\n        name: web-0\n  extra:\n    backends:\n      - url: http://{}\n        name: extra-0\nroutes:\n  - name: extra\n    match: {{path_prefix: /api/extra}}\n    pool: extra\n  - name: api\n    match: {{path_prefix: /api}}\n    pool: api\n    rewrite: {{prefix: /}}\n  - name: web\n    match: {{path_prefix: /}}\n    pool: web\n",
            b.api[0].addr, b.api[1].addr, b.web.addr, extra.addr
        )
    };
    format!("{head}{pools}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_fail_no_request() {
    let b = three().await;
    let extra = backend("extra-0").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("tollgate.yaml");
    let db = crate::support::temp_db();
    let write = |v: usize| {
        let text = format!("{}store:\n  url: {db}\n", reload_yaml(&b, &extra, v));
        std::fs::write(&file, text).expect("write config");
    };
    write(0);
    let cfg = Config::load(&file).expect("valid");
    let lb: Running = tollgate::app::start_with_file(&cfg, Some(file.clone()))
        .await
        .expect("starts");
    let api_before = lb.pool_named("api").expect("api");
    let p = lb.proxy_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for i in 0..50 {
        let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let c = client();
            let path = ["/api/x", "/api/extra/y", "/"][i % 3];
            while !stop.load(Ordering::Relaxed) {
                let ok = match c.get(url(p, path)).send().await {
                    Ok(r) => {
                        let status = r.status();
                        let body = r.bytes().await;
                        if status != 200 {
                            eprintln!("{path}: {status} {body:?}");
                        }
                        status == 200 && body.is_ok()
                    }
                    Err(e) => {
                        eprintln!("{path}: {e}");
                        false
                    }
                };
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // A slow request started on the first routes finishes on its pool
    // whatever the reloads do meanwhile.
    let slow = {
        let c = client();
        tokio::spawn(async move { c.get(url(p, "/api/delay/1500")).send().await })
    };
    for v in 1..=10 {
        let before = sent.load(Ordering::Relaxed);
        eventually("traffic between reloads", || {
            sent.load(Ordering::Relaxed) > before + 50
        })
        .await;
        write(v);
        let reloaded = lb.reload().await.expect("reload applies");
        assert!(
            reloaded.restart_required.is_empty(),
            "{:?}",
            reloaded.restart_required
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.expect("load task");
    }
    let slow = slow
        .await
        .expect("slow task")
        .expect("slow request answered");
    assert_eq!(slow.status(), 200);
    let (total, failures) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("10 reloads under 50 connections: {total} requests, {failures} failed");
    assert_eq!(failures, 0, "of {total}");
    // The api pool stayed: the same pool, its backend the same object.
    let api_after = lb.pool_named("api").expect("api");
    assert!(Arc::ptr_eq(&api_before, &api_after));
    assert!(
        lb.pool_named("extra").is_none(),
        "the even config has no extra pool"
    );
    lb.shutdown().await;
}
