//! Config reload in process: a balancer started from a file, the file
//! rewritten, `POST /reload` on the admin API, and what the next requests
//! get.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::Value;
use tollgate::app::Running;
use tollgate::config::Config;
use tollgate::limiter::ClientKey;

use crate::support::metrics::{parse, scrape};
use crate::support::{backend, client, eventually, temp_db, url, TestBackend};

/// The settings these tests change, written out as a config file.
#[derive(Clone)]
struct Settings {
    backend: SocketAddr,
    db: String,
    capacity: u64,
    rate: f64,
    request_timeout: &'static str,
    api_key_header: &'static str,
    trusted: &'static str,
    listen: &'static str,
    admin: &'static str,
    enabled: bool,
    health_path: &'static str,
    health_interval: &'static str,
    unhealthy_threshold: u32,
    /// More `rate_limit` lines, indented by two spaces.
    rate_limit_extra: String,
}

impl Settings {
    fn new(backend: SocketAddr) -> Self {
        Self {
            backend,
            db: temp_db(),
            capacity: 1_000_000,
            rate: 1_000_000.0,
            request_timeout: "5s",
            api_key_header: "X-API-Key",
            trusted: "[]",
            listen: "127.0.0.1:0",
            admin: "127.0.0.1:0",
            enabled: true,
            health_path: "/health",
            health_interval: "1h",
            unhealthy_threshold: 2,
            rate_limit_extra: String::new(),
        }
    }

    fn yaml(&self) -> String {
        format!(
            "server:\n  listen: {}\n  drain_timeout: 5s\nadmin:\n  listen: {}\n\
             backends:\n  - url: http://{}\nstore:\n  url: {}\n\
             proxy:\n  request_timeout: {}\n\
             health_check:\n  path: {}\n  interval: {}\n  unhealthy_threshold: {}\n\
             rate_limit:\n  enabled: {}\n  api_key_header: {}\n  trusted_proxies: {}\n\
             \x20 default: {{capacity: {}, rate_per_sec: {}}}\n{}",
            self.listen,
            self.admin,
            self.backend,
            self.db,
            self.request_timeout,
            self.health_path,
            self.health_interval,
            self.unhealthy_threshold,
            self.enabled,
            self.api_key_header,
            self.trusted,
            self.capacity,
            self.rate,
            self.rate_limit_extra
        )
    }
}

/// A balancer started from a config file it can re-read.
struct Reloadable {
    lb: Running,
    path: PathBuf,
    http: reqwest::Client,
    _backend: TestBackend,
}

impl Reloadable {
    async fn start(settings: impl FnOnce(&mut Settings)) -> (Self, Settings) {
        let b = backend("b").await;
        let mut s = Settings::new(b.addr);
        settings(&mut s);
        let path = tempfile::tempdir()
            .expect("tempdir")
            .keep()
            .join("config.yaml");
        std::fs::write(&path, s.yaml()).expect("write config");
        let config = Config::load(&path).expect("valid config");
        let lb = tollgate::app::start_with_file(&config, Some(path.clone()))
            .await
            .expect("balancer starts");
        let r = Self {
            lb,
            path,
            http: client(),
            _backend: b,
        };
        (r, s)
    }

    /// Writes `s` to the file and asks for a reload: status and body.
    async fn reload_with(&self, s: &Settings) -> (u16, Value) {
        std::fs::write(&self.path, s.yaml()).expect("write config");
        self.post_reload().await
    }

    async fn post_reload(&self) -> (u16, Value) {
        let r = self
            .http
            .post(url(self.lb.admin_addr(), "/reload"))
            .send()
            .await
            .expect("POST /reload");
        let status = r.status().as_u16();
        (status, r.json().await.expect("JSON body"))
    }

    /// `GET path` with `headers`: status, `X-RateLimit-Limit`,
    /// `X-RateLimit-Remaining`.
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> (u16, u64, u64) {
        let mut req = self.http.get(url(self.lb.proxy_addr(), path));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let r = req.send().await.expect("request");
        let number = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (
            r.status().as_u16(),
            number("x-ratelimit-limit"),
            number("x-ratelimit-remaining"),
        )
    }

    async fn add_client(&self, id: &str, capacity: u64) {
        let r = self
            .http
            .post(url(self.lb.admin_addr(), "/clients"))
            .json(
                &serde_json::json!({"client_id": id, "capacity": capacity, "rate_per_sec": 0.001}),
            )
            .send()
            .await
            .expect("POST /clients");
        assert_eq!(r.status().as_u16(), 201);
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn reloads(text: &str, result: &str) -> f64 {
    let key = format!("tollgate_config_reloads_total{{result=\"{result}\"}}");
    parse(text).get(&key).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_keeps_the_running_config() {
    let (r, mut s) = Reloadable::start(|s| {
        s.capacity = 10;
        s.rate = 0.001;
    })
    .await;
    let before = scrape(&r.http, r.lb.admin_addr()).await;

    // Unchanged: two empty lists, and two at once are serialised.
    let ((s1, b1), (s2, b2)) = tokio::join!(r.post_reload(), r.post_reload());
    assert_eq!((s1, s2), (200, 200), "{b1} {b2}");
    for body in [b1, b2] {
        assert_eq!(
            body,
            serde_json::json!({"applied": [], "restart_required": []})
        );
    }
    assert_eq!(r.get("/", &[]).await, (200, 10, 9));

    std::fs::write(
        &r.path,
        s.yaml().replace("capacity: 10", "capacity: 0") + "proxy_typo: true\n",
    )
    .expect("write");
    let (status, body) = r.post_reload().await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], 400);
    assert_eq!(body["message"], "invalid configuration");
    let problems = strings(&body["problems"]);
    assert!(
        problems.iter().any(|p| p.starts_with("rate_limit.default")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.starts_with("proxy_typo: ")),
        "{problems:?}"
    );
    // The old limits still apply, the bucket's level with them.
    assert_eq!(r.get("/", &[]).await, (200, 10, 8));

    // Fixed: applies.
    s.capacity = 12;
    let (status, body) = r.reload_with(&s).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(strings(&body["applied"]), vec!["rate_limit.default"]);
    assert_eq!(r.get("/", &[]).await.1, 12);

    let after = scrape(&r.http, r.lb.admin_addr()).await;
    assert!(reloads(&after, "invalid") >= reloads(&before, "invalid") + 1.0);
    assert!(reloads(&after, "applied") >= reloads(&before, "applied") + 3.0);
    r.lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_default_limits_keep_the_tokens_of_existing_clients() {
    let (r, mut s) = Reloadable::start(|s| {
        s.capacity = 10;
        s.rate = 0.001;
    })
    .await;
    r.add_client("vip", 50).await;
    let vip = [("x-api-key", "vip")];
    for remaining in [9, 8, 7] {
        assert_eq!(r.get("/", &[]).await, (200, 10, remaining));
    }
    assert_eq!(r.get("/", &vip).await, (200, 50, 49));

    // More capacity: the 7 tokens stay 7, the client table's client
    // keeps its own limits.
    s.capacity = 20;
    let (status, body) = r.reload_with(&s).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(r.get("/", &[]).await, (200, 20, 6));
    assert_eq!(r.get("/", &vip).await, (200, 50, 48));

    // Less: the 6 tokens are clamped to the new capacity of 4.
    s.capacity = 4;
    let (status, _) = r.reload_with(&s).await;
    assert_eq!(status, 200);
    assert_eq!(r.get("/", &[]).await, (200, 4, 3));
    assert_eq!(r.get("/", &vip).await, (200, 50, 47));
    r.lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identification_changes_apply_to_the_next_request() {
    let (r, mut s) = Reloadable::start(|_| {}).await;
    r.add_client("user1", 7).await;
    let token = [("x-token", "user1")];
    let forwarded = [("x-forwarded-for", "203.0.113.9")];
    let forwarded_ip = ClientKey::Ip("203.0.113.9".parse().expect("ip"));

    // X-Token means nothing yet; X-Forwarded-For from an untrusted peer
    // is not believed.
    assert_eq!(r.get("/", &token).await.1, 1_000_000);
    assert_eq!(r.get("/", &forwarded).await.0, 200);
    assert!(r.lb.registry().tokens(&forwarded_ip).is_none());

    s.api_key_header = "X-Token";
    s.trusted = "[127.0.0.0/8]";
    let (status, body) = r.reload_with(&s).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        strings(&body["applied"]),
        vec!["rate_limit.api_key_header", "rate_limit.trusted_proxies"]
    );
    assert_eq!(r.get("/", &token).await, (200, 7, 6));
    assert_eq!(r.get("/", &[("x-api-key", "user1")]).await.1, 1_000_000);
    assert_eq!(r.get("/", &forwarded).await.0, 200);
    assert!(r.lb.registry().tokens(&forwarded_ip).is_some());
    r.lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_request_timeout_applies_to_the_next_request() {
    let (r, mut s) = Reloadable::start(|_| {}).await;
    assert_eq!(r.get("/delay/600", &[]).await.0, 200);
    s.request_timeout = "150ms";
    let (status, body) = r.reload_with(&s).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(strings(&body["applied"]), vec!["proxy.request_timeout"]);
    assert_eq!(r.get("/delay/600", &[]).await.0, 504);
    assert_eq!(r.get("/", &[]).await.0, 200);
    r.lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_and_store_changes_are_reported_as_needing_a_restart() {
    let (r, mut s) = Reloadable::start(|_| {}).await;
    s.listen = "127.0.0.1:1";
    s.admin = "127.0.0.1:2";
    s.db = temp_db();
    let other = backend("other").await;
    s.backend = other.addr;
    let (status, body) = r.reload_with(&s).await;
    assert_eq!(status, 200, "{body}");
    // The backend set is the one change here that applies in place.
    assert_eq!(strings(&body["applied"]), vec!["backends"]);
    let restart = strings(&body["restart_required"]);
    for key in ["server.listen", "admin.listen", "store.url"] {
        assert!(restart.iter().any(|k| k == key), "{key}: {restart:?}");
    }
    // Still serving where it was.
    assert_eq!(r.get("/", &[]).await.0, 200);
    r.lb.shutdown().await;
    other.stop().await;
}

/// Eight clients, half keep-alive and half with a new connection per
/// request, sending `GET /` to `addr` one after another until stopped.
struct SteadyLoad {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl SteadyLoad {
    fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let clients = (0..8)
            .map(|i| {
                let http = if i % 2 == 0 {
                    client()
                } else {
                    reqwest::Client::builder()
                        .no_proxy()
                        .pool_max_idle_per_host(0)
                        .build()
                        .expect("client")
                };
                let (stop, done, failed) = (stop.clone(), done.clone(), failed.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let ok = match http.get(url(addr, "/")).send().await {
                            Ok(resp) => resp.status() == 200 && resp.bytes().await.is_ok(),
                            Err(_) => false,
                        };
                        if !ok {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Self {
            stop,
            done,
            failed,
            clients,
        }
    }

    /// Until 20 more requests have been answered.
    async fn some_requests(&self) {
        let seen = self.done.load(Ordering::Relaxed);
        eventually("requests between reloads", || {
            self.done.load(Ordering::Relaxed) >= seen + 20
        })
        .await;
    }

    /// Stops the clients: requests made, and how many failed.
    async fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients {
            c.await.expect("client task");
        }
        (
            self.done.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// Steady, bounded load over keep-alive and new connections while the
/// limits and timeouts are reloaded 20 times: no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_reloads_under_load_fail_no_request() {
    let (r, s) = Reloadable::start(|_| {}).await;
    let r = Arc::new(r);
    let load = SteadyLoad::start(r.lb.proxy_addr());
    for i in 0..20u32 {
        let mut next = s.clone();
        if i % 2 == 0 {
            next.capacity = 2_000_000;
            next.request_timeout = "6s";
        }
        let (status, body) = r.reload_with(&next).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            strings(&body["applied"]),
            vec!["proxy.request_timeout", "rate_limit.default"]
        );
        // Some requests between two reloads.
        load.some_requests().await;
    }
    let (done, failed) = load.stop().await;
    assert!(done >= 400);
    assert_eq!(failed, 0);
    if let Ok(r) = Arc::try_unwrap(r) {
        r.lb.shutdown().await;
    }
}

/// Steady, bounded load while the backend set alternates between two
/// backends 20 times; before each reload a slow request is sent to the
/// backend about to be removed. No request fails, and every slow one is
/// answered by the backend it started on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_reloads_alternating_backend_sets_fail_no_request() {
    // Loopback is a trusted proxy, so each slow request can name a client
    // of its own in X-Forwarded-For.
    let (r, s) = Reloadable::start(|s| s.trusted = "[127.0.0.0/8]").await;
    let other = backend("other").await;
    let sets = [s.backend, other.addr];
    let r = Arc::new(r);
    let load = SteadyLoad::start(r.lb.proxy_addr());
    let names = ["b", "other"];
    let mut slow = Vec::new();
    for i in 0..20usize {
        let leaving = names[i % 2];
        // A slow request in flight on the backend about to leave, sent
        // as a client of its own so the test can see when it has passed
        // the limiter (a backend is picked right after); the demo backend
        // names itself in X-Backend.
        let ip = format!("198.51.100.{i}");
        let (http, addr, k) = (client(), r.lb.proxy_addr(), ip.clone());
        slow.push(tokio::spawn(async move {
            let resp = http
                .get(url(addr, "/delay/300"))
                .header("x-forwarded-for", k)
                .send()
                .await
                .expect("slow request answered");
            let by = resp
                .headers()
                .get("x-backend")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            (resp.status().as_u16(), by, leaving)
        }));
        let key = ClientKey::Ip(ip.parse().expect("ip"));
        eventually("the slow request is in flight", || {
            r.lb.registry().tokens(&key).is_some()
                && r.lb.pool().backends().iter().any(|b| b.in_flight() > 0)
        })
        .await;
        let mut next = s.clone();
        next.backend = sets[(i + 1) % 2];
        let (status, body) = r.reload_with(&next).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(strings(&body["applied"]), vec!["backends"]);
        load.some_requests().await;
    }
    let (done, failed) = load.stop().await;
    for s in slow {
        let (status, by, leaving) = s.await.expect("slow request task");
        assert_eq!(status, 200, "a request in flight on a removed backend");
        assert_eq!(by.as_deref(), Some(leaving), "answered where it started");
    }
    assert!(done >= 400);
    assert_eq!(failed, 0);
    if let Ok(r) = Arc::try_unwrap(r) {
        r.lb.shutdown().await;
    }
    other.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_file_a_reload_rereads_only_certificates() {
    let b = backend("b").await;
    let lb = crate::support::balancer(&crate::support::config(&[b.addr])).await;
    let reloaded = lb.reload().await.expect("reload");
    assert!(reloaded.applied.is_empty() && reloaded.restart_required.is_empty());
    lb.shutdown().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_settings_apply_to_the_running_checks() {
    // Checked once at start, then not for an hour.
    let (r, mut s) = Reloadable::start(|_| {}).await;
    assert_eq!(r.lb.pool().healthy_count(), 1);
    // A path that fails, checked often, one failure enough: the backend
    // leaves the pool only if all three reached the running checker.
    s.health_path = "/status/503";
    s.health_interval = "20ms";
    s.unhealthy_threshold = 1;
    let (status, body) = r.reload_with(&s).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        strings(&body["applied"]),
        vec![
            "health_check.path",
            "health_check.interval",
            "health_check.unhealthy_threshold"
        ]
    );
    let pool = r.lb.pool().clone();
    eventually("the backend to fail its new check", || {
        pool.healthy_count() == 0
    })
    .await;
    r.lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limiting_can_be_switched_off_and_on() {
    let (r, mut s) = Reloadable::start(|s| {
        s.capacity = 10;
        s.rate = 0.001;
    })
    .await;
    assert_eq!(r.get("/", &[]).await, (200, 10, 9));
    s.enabled = false;
    let (status, body) = r.reload_with(&s).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(strings(&body["applied"]), vec!["rate_limit.enabled"]);
    // No limit, no headers, no token taken.
    assert_eq!(r.get("/", &[]).await, (200, 0, 0));
    s.enabled = true;
    let (status, _) = r.reload_with(&s).await;
    assert_eq!(status, 200);
    assert_eq!(r.get("/", &[]).await, (200, 10, 8));
    r.lb.shutdown().await;
}

#[tokio::test]
async fn rules_and_dry_run_change_on_reload_and_rules_keep_their_buckets() {
    let (r, mut s) = Reloadable::start(|_| {}).await;
    assert_eq!(r.get("/r", &[]).await.0, 200);
    let rule = |dry_run: bool| {
        format!(
            "  rules:\n    - name: one\n      match: {{path_prefix: /r}}\n      \
             limits: {{capacity: 1, rate_per_sec: 0.001}}\n      dry_run: {dry_run}\n"
        )
    };
    // Tried in dry-run first: nothing refused.
    s.rate_limit_extra = rule(true);
    let (status, body) = r.reload_with(&s).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(strings(&body["applied"]), ["rate_limit.rules"]);
    assert_eq!(strings(&body["restart_required"]), Vec::<String>::new());
    for _ in 0..3 {
        assert_eq!(r.get("/r", &[]).await, (200, 1, 0));
    }
    // Enforced: the rule kept its (empty) bucket across the reload.
    s.rate_limit_extra = rule(false);
    assert_eq!(r.reload_with(&s).await.0, 200);
    assert_eq!(r.get("/r", &[]).await.0, 429);
    assert_eq!(r.get("/other", &[]).await.0, 200);
    // A global dry run lets it through again.
    s.rate_limit_extra = format!("  dry_run: true\n{}", rule(false));
    let (status, body) = r.reload_with(&s).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(strings(&body["applied"]), ["rate_limit.dry_run"]);
    assert_eq!(r.get("/r", &[]).await, (200, 1, 0));
    r.lb.shutdown().await;
}

/// A file emptied or cut down to sections that say neither where to
/// listen nor where to send is refused (400 JSON saying why), and the
/// running config keeps serving (issue 23, item 15).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_or_sectionless_file_is_refused_and_the_running_config_stays() {
    let (r, s) = Reloadable::start(|s| {
        s.capacity = 10;
        s.rate = 0.001;
    })
    .await;
    assert_eq!(r.get("/", &[]).await, (200, 10, 9));
    for text in [
        "",
        "# truncated\n",
        "---\n",
        "{}\n",
        "log: {level: warn}\n",
        "rate_limit:\n  enabled: false\nlog:\n  level: debug\n",
        "server:\nbackends:\n",
    ] {
        std::fs::write(&r.path, text).expect("write config");
        let (status, body) = r.post_reload().await;
        assert_eq!(status, 400, "{text:?}: {body}");
        let problems = strings(&body["problems"]).join("\n");
        assert!(
            problems.contains("none of server, backends, pools or routes is set"),
            "{text:?}: {body}"
        );
    }
    // Still the running config: the same backend, the same limits.
    assert_eq!(r.get("/", &[]).await, (200, 10, 8));
    let (status, body) = r.reload_with(&s).await;
    assert_eq!(status, 200, "{body}");
    r.lb.shutdown().await;
}

/// A change that needs a restart is reported by every reload until the
/// process runs it: the second reload of the same file compares with
/// what runs, not with the file the first one read; writing the running
/// value back clears it (issue 23, item 18).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_restart_is_reported_by_every_reload_until_reverted() {
    let (r, mut s) = Reloadable::start(|_| {}).await;
    s.listen = "127.0.0.1:1";
    s.capacity = 10;
    for round in 0..2 {
        let (status, body) = r.reload_with(&s).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            strings(&body["restart_required"]),
            vec!["server.listen"],
            "round {round}: {body}"
        );
        let applied = if round == 0 {
            vec!["rate_limit.default"]
        } else {
            Vec::new()
        };
        assert_eq!(strings(&body["applied"]), applied, "round {round}: {body}");
    }
    assert_eq!(r.get("/", &[]).await.1, 10);
    s.listen = "127.0.0.1:0";
    let (status, body) = r.reload_with(&s).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(strings(&body["restart_required"]), Vec::<String>::new());
    assert_eq!(strings(&body["applied"]), Vec::<String>::new());
    r.lb.shutdown().await;
}

/// A config path that blocks on read (a FIFO with no writer, as a hung
/// mount would): the reload answers 503 JSON after the read timeout
/// instead of hanging, the next one is refused at once instead of
/// queueing behind it, requests keep being served, and once the read
/// returns reloads work again (issue 23, item 17).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_path_that_blocks_on_read_does_not_hang_reloads() {
    use crate::support::fifo::{release_fifo, replace_with_fifo};
    let (r, s) = Reloadable::start(|_| {}).await;
    replace_with_fifo(&r.path);
    // Bounds on the test, not on tollgate: before, this never answered.
    let bound = std::time::Duration::from_secs(30);
    let (status, body) = tokio::time::timeout(bound, r.post_reload())
        .await
        .expect("a reload of a blocking file answers");
    assert_eq!(status, 503, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("not read within 5s")),
        "{body}"
    );
    let (status, body) = tokio::time::timeout(bound, r.post_reload())
        .await
        .expect("a second reload answers");
    assert_eq!(status, 503, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("has not returned yet")),
        "{body}"
    );
    assert_eq!(r.get("/", &[]).await.0, 200);

    // The stuck read returns (its result is not applied); a file again
    // reloads once it has.
    let released = release_fifo(&r.path, &s.yaml());
    tokio::task::spawn_blocking(move || released.join())
        .await
        .expect("join")
        .expect("writer");
    std::fs::remove_file(&r.path).expect("remove the FIFO");
    std::fs::write(&r.path, s.yaml()).expect("write config");
    let mut last = r.post_reload().await;
    for _ in 0..500 {
        if last.0 == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        last = r.post_reload().await;
    }
    assert_eq!(last.0, 200, "{}", last.1);
    r.lb.shutdown().await;
}
