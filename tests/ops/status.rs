//! The status page: `GET /status` by its contract after known traffic,
//! the public HTML shell with a token configured, and the page itself in
//! a headless Chromium (skipped, with the reason printed, where Chromium
//! or chromedriver is not installed).
//!
//! With `TOLLGATE_SCREENSHOT=path` the browser test keeps traffic going
//! for a minute (so the sparklines have a shape) and saves a PNG of
//! the page there; that is how docs/status-page.png is made.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tollgate::app::Running;
use tollgate::config::Config;

use crate::support::webdriver::Browser;
use crate::support::{backends, balancer, client, config, url, TestBackend};

/// Two named backends, health checked every 100 ms, and `token` on the
/// admin API.
async fn setup(names: [&str; 2], token: Option<&str>) -> (Vec<TestBackend>, Config, Running) {
    let bs = backends(2).await;
    let mut cfg = config(&[bs[0].addr, bs[1].addr]);
    for (b, name) in cfg.backends.iter_mut().zip(names) {
        b.name = Some(name.to_owned());
    }
    cfg.health_check.interval = Duration::from_millis(100);
    cfg.health_check.timeout = Duration::from_millis(500);
    cfg.admin.token = token.map(str::to_owned);
    let lb = balancer(&cfg).await;
    (bs, cfg, lb)
}

async fn admin_json(
    c: &reqwest::Client,
    admin: SocketAddr,
    token: Option<&str>,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = c.request(method, url(admin, path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("admin request");
    let status = r.status();
    let text = r.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// `n` requests through the proxy with `key` (none: by address); the
/// statuses received.
async fn traffic(c: &reqwest::Client, proxy: SocketAddr, key: Option<&str>, n: usize) -> Vec<u16> {
    let mut statuses = Vec::with_capacity(n);
    for _ in 0..n {
        let mut req = c.get(url(proxy, "/"));
        if let Some(k) = key {
            req = req.header("x-api-key", k);
        }
        statuses.push(req.send().await.expect("proxied").status().as_u16());
    }
    statuses
}

/// Polls `GET /status` every 50 ms until `cond` holds (10 s at most).
async fn status_until(
    c: &reqwest::Client,
    admin: SocketAddr,
    token: Option<&str>,
    what: &str,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (s, doc) = admin_json(c, admin, token, reqwest::Method::GET, "/status", None).await;
        assert_eq!(s, StatusCode::OK, "{doc}");
        if cond(&doc) {
            return doc;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {doc:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sum(v: &Value) -> f64 {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).sum())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_backends_rates_the_most_refused_clients_and_events() {
    let (mut bs, _cfg, lb) = setup(["status-a", "status-b"], None).await;
    let c = client();
    let admin = lb.admin_addr();
    for (id, capacity) in [("greedy", 3), ("mild", 1)] {
        let (s, body) = admin_json(
            &c,
            admin,
            None,
            reqwest::Method::POST,
            "/clients",
            Some(json!({"client_id": id, "capacity": capacity, "rate_per_sec": 0})),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
    }
    let anonymous = traffic(&c, lb.proxy_addr(), None, 20).await;
    assert!(anonymous.iter().all(|&s| s == 200), "{anonymous:?}");
    let greedy = traffic(&c, lb.proxy_addr(), Some("greedy"), 8).await;
    assert_eq!(
        greedy.iter().filter(|&&s| s == 429).count(),
        5,
        "{greedy:?}"
    );
    let mild = traffic(&c, lb.proxy_addr(), Some("mild"), 2).await;
    assert_eq!(mild, vec![200, 429]);

    let doc = status_until(&c, admin, None, "both refused clients", |d| {
        d["top_refused"].as_array().map(Vec::len) == Some(2)
            && sum(&d["series"]["refused_per_sec"]) > 0.0
            && d["backends"]
                .as_array()
                .is_some_and(|bs| bs.iter().all(|b| sum(&b["requests_per_sec_series"]) > 0.0))
    })
    .await;
    assert_eq!(
        doc["top_refused"],
        json!([{"client": "greedy", "refused": 5}, {"client": "mild", "refused": 1}])
    );
    let names: Vec<&str> = doc["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| b["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, ["status-a", "status-b"]);
    for b in doc["backends"].as_array().expect("backends") {
        assert_eq!(b["state"], "active", "{b}");
        assert_eq!(b["healthy"], true, "{b}");
        // The demo backend answers 200: no 5xx among its answers.
        assert_eq!(b["error_rate"], 0.0, "{b}");
    }
    assert!(sum(&doc["series"]["requests_per_sec"]) > 0.0, "{doc}");
    assert!(
        doc["series"]["p99_ms"]
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v.as_f64().is_some_and(|ms| ms > 0.0))),
        "{doc}"
    );
    assert_eq!(doc["metrics"], true);
    assert_eq!(doc["clients_pinned"], 2);

    // A backend that stops answering shows unhealthy, with the event.
    bs.pop().expect("second backend").stop().await;
    let doc = status_until(&c, admin, None, "status-b unhealthy", |d| {
        d["backends"][1]["state"] == "unhealthy"
    })
    .await;
    let event = doc["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["backend"] == "status-b")
        .cloned()
        .expect("an event about status-b");
    assert_eq!(event["kind"], "unhealthy", "{event}");
    // A reload is listed too, newest first.
    lb.reload().await.expect("reload");
    let (_, doc) = admin_json(&c, admin, None, reqwest::Method::GET, "/status", None).await;
    assert_eq!(doc["events"][0]["kind"], "reload", "{doc}");
    lb.shutdown().await;
    for b in bs {
        b.stop().await;
    }
}

#[tokio::test]
async fn the_page_shell_is_public_and_the_status_needs_the_token() {
    let token = "status-token-0123456789";
    let (bs, _cfg, lb) = setup(["shell-a", "shell-b"], Some(token)).await;
    let c = client();
    let admin = lb.admin_addr();
    let page = c.get(url(admin, "/")).send().await.expect("GET /");
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let html = page.text().await.expect("html");
    assert!(html.contains("<title>tollgate status</title>"), "{html}");
    // No data in the shell.
    assert!(!html.contains("shell-a"));
    assert!(!html.contains(&bs[0].addr.to_string()));
    let head = c.head(url(admin, "/")).send().await.expect("HEAD /");
    assert_eq!(head.status(), StatusCode::OK);
    for path in ["/status", "/clients", "/backends"] {
        let (s, body) = admin_json(&c, admin, None, reqwest::Method::GET, path, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}: {body}");
    }
    // Only GET and HEAD of the shell are public.
    let (s, _) = admin_json(&c, admin, None, reqwest::Method::POST, "/", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, doc) = admin_json(
        &c,
        admin,
        Some(token),
        reqwest::Method::GET,
        "/status",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{doc}");
    assert_eq!(doc["backends"][0]["name"], "shell-a");
    lb.shutdown().await;
    for b in bs {
        b.stop().await;
    }
}

/// Requests until `stop`: a changing rate of anonymous requests, some
/// slow ones and some 5xx, and a client that keeps being refused, so the
/// screenshot has something to show.
async fn background_traffic(proxy: SocketAddr, stop: Arc<AtomicBool>) {
    let c = client();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let path = match i % 40 {
            0 => "/status/503".to_owned(),
            7 | 19 => format!("/delay/{}", 5 + (i % 7) * 3),
            _ => "/".to_owned(),
        };
        let _ = c.get(url(proxy, &path)).send().await;
        if i.is_multiple_of(3) {
            let _ = c
                .get(url(proxy, "/"))
                .header(
                    "x-api-key",
                    if i.is_multiple_of(9) {
                        "scraper-7"
                    } else {
                        "mobile-app"
                    },
                )
                .send()
                .await;
        }
        // A rate that rises and falls over about half a minute.
        let phase = (i as f64 / 120.0).sin().abs();
        tokio::time::sleep(Duration::from_micros(2000 + (phase * 8000.0) as u64)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_in_a_browser_shows_backends_health_and_edits_clients() {
    let token = "page-token-0123456789";
    let (mut bs, _cfg, lb) = setup(["web-1", "web-2"], Some(token)).await;
    let c = client();
    let admin = lb.admin_addr();
    let post = |body: Value| {
        admin_json(
            &c,
            admin,
            Some(token),
            reqwest::Method::POST,
            "/clients",
            Some(body),
        )
    };
    let (s, _) = post(json!({"client_id": "mobile-app", "capacity": 50, "rate_per_sec": 20})).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = post(json!({"client_id": "scraper-7", "capacity": 5, "rate": "60/min"})).await;
    assert_eq!(s, StatusCode::CREATED);
    let refused = traffic(&c, lb.proxy_addr(), Some("scraper-7"), 8).await;
    assert!(refused.contains(&429), "{refused:?}");

    let screenshot = std::env::var_os("TOLLGATE_SCREENSHOT");
    let Some(browser) = Browser::start(1400, 1350).await else {
        lb.shutdown().await;
        return;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let traffic_task = screenshot
        .is_some()
        .then(|| tokio::spawn(background_traffic(lb.proxy_addr(), stop.clone())));

    // Without a token the page shows nothing and asks for it.
    browser.open(&url(admin, "/")).await;
    browser
        .wait_for(
            "the token prompt",
            "return !document.getElementById('token-panel').hidden",
            Duration::from_secs(10),
        )
        .await;
    let rows = browser
        .eval(
            "return document.querySelectorAll('#backends tbody tr').length",
            json!([]),
        )
        .await;
    assert_eq!(rows, 0, "data shown without a token");
    let stored = browser
        .eval(
            "return sessionStorage.getItem('tollgate.admin_token')",
            json!([]),
        )
        .await;
    assert_eq!(stored, Value::Null);
    browser.fill("#token-input", token).await;
    browser.click("#token-submit").await;

    // The first refresh: both backends with their state, and the client.
    let shown = browser
        .wait_for(
            "both backends and the clients",
            "const rows = [...document.querySelectorAll('#backends tbody tr')];
             const clients = [...document.querySelectorAll('#clients tbody tr')].map(r => r.dataset.id);
             if (rows.length < 2 || !clients.includes('mobile-app')) return null;
             return rows.map(r => [r.dataset.name, r.querySelector('.state').textContent]);",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(shown, json!([["web-1", "active"], ["web-2", "active"]]));
    assert!(!location_has_token(&browser, token).await);
    let stored = browser
        .eval(
            "return sessionStorage.getItem('tollgate.admin_token')",
            json!([]),
        )
        .await;
    assert_eq!(stored, token);
    browser
        .wait_for(
            "scraper-7 among the clients refused most",
            "return [...document.querySelectorAll('#top-refused tbody tr')]
                 .some(r => r.dataset.client === 'scraper-7')",
            Duration::from_secs(10),
        )
        .await;

    if screenshot.is_some() {
        // A minute of traffic: sparklines across the whole window.
        browser
            .wait_for(
                "60 refreshes",
                "return Number(document.body.dataset.refreshes) >= 60",
                Duration::from_secs(120),
            )
            .await;
    }

    // A backend that dies shows unhealthy within two refreshes of the
    // pool marking it so.
    bs.pop().expect("web-2").stop().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, list) = admin_json(
            &c,
            admin,
            Some(token),
            reqwest::Method::GET,
            "/backends",
            None,
        )
        .await;
        if list[1]["state"] == "unhealthy" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "web-2 never unhealthy: {list}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = refreshes(&browser).await;
    let seen_at = browser
        .wait_for(
            "web-2 unhealthy on the page",
            "const r = document.querySelector('#backends tr[data-name=\"web-2\"] .state');
             return r && r.textContent === 'unhealthy' ? Number(document.body.dataset.refreshes) : null;",
            Duration::from_secs(10),
        )
        .await;
    assert!(
        seen_at.as_u64().expect("count") <= before + 2,
        "unhealthy shown at refresh {seen_at}, the pool said so before refresh {before}"
    );

    // A client added through the form exists in the API; a bad one gets
    // the API's message.
    browser.fill("#client-id", "partner-42").await;
    browser.fill("#client-capacity", "0").await;
    browser.fill("#client-rate", "2/min").await;
    browser.click("#client-submit").await;
    let message = browser
        .wait_for(
            "the validation message",
            "return document.getElementById('client-error').textContent || null",
            Duration::from_secs(10),
        )
        .await;
    assert!(
        message.as_str().is_some_and(|m| m.contains("capacity")),
        "{message}"
    );
    browser.fill("#client-capacity", "40").await;
    browser.click("#client-submit").await;
    browser
        .wait_for(
            "partner-42 in the table",
            "return [...document.querySelectorAll('#clients tbody tr')].some(r => r.dataset.id === 'partner-42')",
            Duration::from_secs(10),
        )
        .await;
    let (s, created) = admin_json(
        &c,
        admin,
        Some(token),
        reqwest::Method::GET,
        "/clients/partner-42",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{created}");
    assert_eq!(created["capacity"], 40);
    assert_eq!(created["rate"], "2/min");
    let error = browser
        .eval(
            "return document.getElementById('client-error').textContent",
            json!([]),
        )
        .await;
    assert_eq!(error, "");

    if let Some(path) = screenshot {
        let png = browser.screenshot().await;
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(&path, png).expect("write the screenshot");
        eprintln!(
            "screenshot saved to {}",
            std::path::Path::new(&path).display()
        );
    }

    // The table a page at a time: 120 more clients, and one whose id is
    // 200 characters long, which must wrap rather than widen the page.
    // Wide letters: 200 of them are wider than the window.
    let long_id = format!("x-{}", "w".repeat(198));
    let (s, _) = post(json!({"client_id": long_id, "capacity": 1, "rate_per_sec": 1})).await;
    assert_eq!(s, StatusCode::CREATED);
    for i in 0..120 {
        let id = format!("bulk-{i:03}");
        let (s, _) = post(json!({"client_id": id, "capacity": 1, "rate_per_sec": 1})).await;
        assert_eq!(s, StatusCode::CREATED);
    }
    browser.open(&url(admin, "/")).await;
    let first = browser
        .wait_for(
            "the first page of clients",
            "const ids = [...document.querySelectorAll('#clients tbody tr')].map(r => r.dataset.id);
             return ids.length === 100 && !document.getElementById('client-next').disabled
                 ? [ids[0], ids[99]] : null;",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(first, json!(["bulk-000", "bulk-099"]));
    browser.click("#client-next").await;
    let second = browser
        .wait_for(
            "the second page of clients",
            "const ids = [...document.querySelectorAll('#clients tbody tr')].map(r => r.dataset.id);
             return ids[0] === 'bulk-100' ? ids : null;",
            Duration::from_secs(10),
        )
        .await;
    let second: Vec<&str> = second
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_str().expect("id"))
        .collect();
    assert_eq!(second.len(), 24, "{second:?}");
    assert!(second.ends_with(&["mobile-app", "partner-42", "scraper-7", long_id.as_str()]));
    let layout = browser
        .eval(
            "const cell = [...document.querySelectorAll('#clients tbody tr')]
                 .find(r => r.dataset.id.length === 200).cells[0];
             return [document.documentElement.scrollWidth, document.documentElement.clientWidth,
                     cell.getBoundingClientRect().right,
                     document.getElementById('clients').getBoundingClientRect().right];",
            json!([]),
        )
        .await;
    let n = |i: usize| layout[i].as_f64().expect("a number");
    assert!(n(0) <= n(1), "the page is wider than the window: {layout}");
    assert!(n(2) <= n(3) + 0.5, "the id overflows its table: {layout}");
    assert_eq!(
        browser
            .eval(
                "return document.getElementById('client-next').disabled",
                json!([])
            )
            .await,
        true
    );
    browser.click("#client-prev").await;
    browser
        .wait_for(
            "the first page again",
            "const r = document.querySelector('#clients tbody tr');
             return r && r.dataset.id === 'bulk-000' ? true : null;",
            Duration::from_secs(10),
        )
        .await;

    // Search (by the API, across every page), edit and delete through the
    // page too.
    browser.fill("#client-search", "partner").await;
    let listed = browser
        .wait_for(
            "the search's answer",
            "const ids = [...document.querySelectorAll('#clients tbody tr')].map(r => r.dataset.id);
             return ids.length === 1 ? ids : null;",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(listed, json!(["partner-42"]));
    browser
        .click("#clients tr[data-id=\"partner-42\"] .edit")
        .await;
    browser.fill("#client-capacity", "45").await;
    browser.click("#client-submit").await;
    let http = &c;
    let client_now = |capacity: u64| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (s, body) = admin_json(
                http,
                admin,
                Some(token),
                reqwest::Method::GET,
                "/clients/partner-42",
                None,
            )
            .await;
            let done = match capacity {
                0 => s == StatusCode::NOT_FOUND,
                n => body["capacity"] == n,
            };
            if done {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{s}: {body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    client_now(45).await;
    // Delete asks once more before it deletes.
    let delete = "#clients tr[data-id=\"partner-42\"] .delete";
    browser.click(delete).await;
    browser.click(delete).await;
    client_now(0).await;

    stop.store(true, Ordering::Relaxed);
    if let Some(t) = traffic_task {
        let _ = t.await;
    }
    browser.quit().await;
    lb.shutdown().await;
    for b in bs {
        b.stop().await;
    }
}

async fn refreshes(browser: &Browser) -> u64 {
    browser
        .eval(
            "return Number(document.body.dataset.refreshes || 0)",
            json!([]),
        )
        .await
        .as_u64()
        .expect("a count")
}

async fn location_has_token(browser: &Browser, token: &str) -> bool {
    browser
        .eval("return location.href", json!([]))
        .await
        .as_str()
        .is_some_and(|href| href.contains(token))
}

/// Requests to the `api` route until `stop`: by address (admitted) and
/// as the client `tiny` (one token, never refilled: refused).
async fn route_traffic(proxy: SocketAddr, stop: Arc<AtomicBool>) {
    let c = client();
    while !stop.load(Ordering::Relaxed) {
        let _ = c.get(url(proxy, "/api/x")).send().await;
        let _ = c
            .get(url(proxy, "/api/x"))
            .header("x-api-key", "tiny")
            .send()
            .await;
        let _ = c.get(url(proxy, "/")).send().await;
        // About 100 requests a second: a rate, not a load test.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// [`crate::routes::TwoPools`] with the client `tiny` (one token) and
/// traffic to the `api` route running until the returned flag is set.
async fn two_pools_with_traffic() -> (
    crate::routes::TwoPools,
    Arc<AtomicBool>,
    tokio::task::JoinHandle<()>,
) {
    let two = crate::routes::TwoPools::start().await;
    let (s, body) = admin_json(
        &client(),
        two.admin(),
        None,
        reqwest::Method::POST,
        "/clients",
        Some(json!({"client_id": "tiny", "capacity": 1, "rate_per_sec": 0})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn(route_traffic(two.lb.proxy_addr(), stop.clone()));
    (two, stop, traffic)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_groups_backends_by_pool_and_rates_each_route() {
    let (two, stop, traffic) = two_pools_with_traffic().await;
    let c = client();
    let doc = status_until(&c, two.admin(), None, "the api route's rates", |d| {
        d["routes"][0]["requests_per_sec"].as_f64() > Some(0.0)
            && d["routes"][0]["refused_per_sec"].as_f64() > Some(0.0)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let _ = traffic.await;
    let backends: Vec<(&str, &str)> = doc["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| {
            (
                b["pool"].as_str().expect("pool"),
                b["name"].as_str().expect("name"),
            )
        })
        .collect();
    assert_eq!(
        backends,
        [
            ("default", "shared"),
            ("default", "web-2"),
            ("api", "shared"),
            ("api", "api-2")
        ]
    );
    let routes: Vec<&str> = doc["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .map(|r| r["name"].as_str().expect("name"))
        .collect();
    assert_eq!(routes, ["api", "canary"]);
    let api = &doc["routes"][0];
    assert_eq!(api["pool"], "api");
    assert!(sum(&api["requests_per_sec_series"]) > 0.0, "{api}");
    assert!(sum(&api["refused_per_sec_series"]) > 0.0, "{api}");
    // Of every two requests to the route one is refused: fewer refusals
    // than requests, whatever the second's length.
    assert!(
        api["refused_per_sec"].as_f64() < api["requests_per_sec"].as_f64(),
        "{api}"
    );
    assert_eq!(sum(&doc["routes"][1]["requests_per_sec_series"]), 0.0);
    // The pools' backends of one name are two backends: each its own rate.
    let rate = |i: usize| sum(&doc["backends"][i]["requests_per_sec_series"]);
    assert!(rate(0) > 0.0 && rate(2) > 0.0, "{doc:#}");
    two.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_in_a_browser_groups_backends_by_pool_and_shows_route_rates() {
    let (two, stop, traffic) = two_pools_with_traffic().await;
    let Some(browser) = Browser::start(1400, 1000).await else {
        stop.store(true, Ordering::Relaxed);
        let _ = traffic.await;
        two.stop().await;
        return;
    };
    browser.open(&url(two.admin(), "/")).await;
    let pools = browser
        .wait_for(
            "both pools with their backends",
            "const bodies = [...document.querySelectorAll('#backends tbody')];
             if (bodies.length < 2) return null;
             return bodies.map(b => [b.dataset.pool,
                 b.querySelector('tr.pool th').firstChild.textContent.trim(),
                 [...b.querySelectorAll('tr[data-name]')].map(r => r.dataset.name)]);",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        pools,
        json!([
            ["default", "default", ["shared", "web-2"]],
            ["api", "api", ["shared", "api-2"]]
        ])
    );
    let rates = browser
        .wait_for(
            "the api route's request and 429 rates",
            "const r = document.querySelector('#routes tr[data-route=\"api\"]');
             if (!r || document.getElementById('routes-section').hidden) return null;
             const n = (c) => Number(r.querySelector(c).textContent.replace(/[^0-9.]/g, ''));
             // Both sparklines drawn (two seconds of samples at least).
             const drawn = r.querySelectorAll('svg.spark polyline').length === 2;
             return n('.rps') > 0 && n('.refused') > 0 && drawn ? [r.cells[1].textContent, drawn] : null;",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(rates, json!(["api", true]));
    // A drain in one pool shows in that pool's rows only.
    let (s, _) = admin_json(
        &client(),
        two.admin(),
        None,
        reqwest::Method::POST,
        "/pools/api/backends/shared/drain",
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let states = browser
        .wait_for(
            "api's shared draining",
            "const state = (p) => document.querySelector(
                 '#backends tr[data-pool=\"' + p + '\"][data-name=\"shared\"] .state').textContent;
             return state('api') === 'draining' ? [state('default'), state('api')] : null;",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(states, json!(["active", "draining"]));
    stop.store(true, Ordering::Relaxed);
    let _ = traffic.await;
    browser.quit().await;
    two.stop().await;
}
