//! Pools and routes through the admin API, with real demo backends: the
//! pools and routes listed as configured (and as a reload changes them),
//! each route's counts after traffic, every backend with its pool, and
//! drain and enable by pool: a drain in one pool leaves the other's
//! backend of the same name in rotation, a name two pools have is a 409
//! on the path without a pool, and unknown pools and backends are 404s.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tollgate::app::Running;
use tollgate::config::Config;

use crate::support::{backend, client, temp_db, url, TestBackend};

/// Two pools and two routes:
///
/// - `default` (the top-level backends): `shared` (the demo backend
///   `web-1`) and `web-2`;
/// - `api` (p2c, 5 s request timeout, 2 retries): `shared` (`api-1`) and
///   `api-2`;
/// - route `api`: GET and POST under `/api` to `api`, rewritten to `/`;
///   route `canary`: `/canary` on `*.example.com` with `X-Canary: 1`, to
///   `api`; everything else goes to `default`.
///
/// `more` adds pools (YAML under `pools:`) and routes (items of
/// `routes:`, after the two), as a reload may.
pub fn two_pools_yaml(
    web: [SocketAddr; 2],
    api: [SocketAddr; 2],
    db: &str,
    (more_pools, more_routes): (&str, &str),
) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  drain_timeout: 5s\n\
         admin:\n  listen: 127.0.0.1:0\n\
         backends:\n  - {{url: http://{}, name: shared}}\n  - {{url: http://{}, name: web-2}}\n\
         store:\n  url: {db}\n\
         rate_limit:\n  default: {{capacity: 1000000, rate_per_sec: 1000000}}\n\
         pools:\n  api:\n    strategy: p2c\n    proxy: {{request_timeout: 5s}}\n\
         \x20   retries: {{attempts: 2, on: [connect_failure, \"503\"]}}\n\
         \x20   backends:\n      - {{url: http://{}, name: shared}}\n      - {{url: http://{}, name: api-2}}\n\
         {more_pools}\
         routes:\n\
         \x20 - name: api\n    match: {{path_prefix: /api, methods: [GET, POST]}}\n    pool: api\n\
         \x20   rewrite: {{prefix: /}}\n\
         \x20 - name: canary\n    match: {{path_exact: /canary, hosts: [\"*.example.com\"], headers: {{X-Canary: \"1\"}}}}\n\
         \x20   pool: api\n{more_routes}",
        web[0], web[1], api[0], api[1]
    )
}

/// Four demo backends (`web-1`, `web-2`, `api-1`, `api-2`) behind the
/// config of [`two_pools_yaml`], started from a file so that a reload
/// re-reads it.
pub struct TwoPools {
    /// `web-1`, `web-2`, `api-1`, `api-2`.
    pub backends: Vec<TestBackend>,
    /// The balancer.
    pub lb: Running,
    /// Its config file.
    pub path: PathBuf,
    /// Its store.
    pub db: String,
}

impl TwoPools {
    /// Starts them.
    pub async fn start() -> Self {
        Self::start_with(("", "")).await
    }

    /// Starts them with `more` pools and routes (see [`two_pools_yaml`]).
    pub async fn start_with(more: (&str, &str)) -> Self {
        let mut backends = Vec::new();
        for name in ["web-1", "web-2", "api-1", "api-2"] {
            backends.push(backend(name).await);
        }
        let db = temp_db();
        let path = tempfile::tempdir()
            .expect("tempdir")
            .keep()
            .join("config.yaml");
        let two = Self {
            lb: start_from(&path, &Self::yaml_for(&backends, &db, more)).await,
            backends,
            path,
            db,
        };
        two.lb.pool_named("api").expect("pool api");
        two
    }

    fn yaml_for(backends: &[TestBackend], db: &str, more: (&str, &str)) -> String {
        let a = |i: usize| backends[i].addr;
        two_pools_yaml([a(0), a(1)], [a(2), a(3)], db, more)
    }

    /// The config with `more` pools and routes (see [`two_pools_yaml`]).
    pub fn yaml(&self, more: (&str, &str)) -> String {
        Self::yaml_for(&self.backends, &self.db, more)
    }

    /// The admin API's address.
    pub fn admin(&self) -> SocketAddr {
        self.lb.admin_addr()
    }

    /// Stops everything.
    pub async fn stop(self) {
        self.lb.shutdown().await;
        for b in self.backends {
            b.stop().await;
        }
    }
}

async fn start_from(path: &Path, yaml: &str) -> Running {
    std::fs::write(path, yaml).expect("write config");
    let config = Config::load(path).expect("valid config");
    tollgate::app::start_with_file(&config, Some(path.to_owned()))
        .await
        .expect("balancer starts")
}

/// `method path` on the admin API: status and JSON body.
pub async fn admin(
    c: &reqwest::Client,
    at: SocketAddr,
    method: &str,
    path: &str,
) -> (StatusCode, Value) {
    let r = c
        .request(method.parse().expect("method"), url(at, path))
        .send()
        .await
        .expect("admin request");
    let status = r.status();
    let text = r.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    (status, body)
}

/// `GET path` through the proxy: status, and the demo backend that
/// answered with the path it received.
pub async fn through(
    c: &reqwest::Client,
    proxy: SocketAddr,
    path: &str,
    key: Option<&str>,
) -> (u16, Value) {
    let mut req = c.get(url(proxy, path));
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    let r = req.send().await.expect("proxied");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn names(items: &Value, key: &str) -> Vec<String> {
    items
        .as_array()
        .expect("a list")
        .iter()
        .map(|i| i[key].as_str().expect("a string").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_and_routes_are_listed_as_configured_with_counts_after_traffic() {
    let two = TwoPools::start().await;
    let (c, at, proxy) = (client(), two.admin(), two.lb.proxy_addr());

    let (s, pools) = admin(&c, at, "GET", "/pools").await;
    assert_eq!(s, StatusCode::OK, "{pools}");
    assert_eq!(names(&pools, "name"), ["default", "api"], "default first");
    assert_eq!(pools[0]["strategy"], "round_robin");
    assert_eq!(
        pools[0]["timeouts"],
        json!({"connect_ms": 2000, "request_ms": 30000, "backend_body_ms": 60000, "upgrade_idle_ms": 600000})
    );
    assert_eq!(
        pools[0]["retries"],
        json!({"attempts": 1, "on": ["connect_failure", "reset"], "budget_percent": null})
    );
    assert_eq!(pools[0]["max_connections"], 0);
    assert_eq!(pools[1]["strategy"], "p2c");
    assert_eq!(pools[1]["timeouts"]["request_ms"], 5000);
    assert_eq!(
        pools[1]["retries"],
        json!({"attempts": 2, "on": ["connect_failure", "503"], "budget_percent": null})
    );
    assert_eq!(names(&pools[0]["backends"], "name"), ["shared", "web-2"]);
    assert_eq!(names(&pools[1]["backends"], "name"), ["shared", "api-2"]);
    assert_eq!(pools[1]["backends"][1]["pool"], "api");
    assert_eq!(pools[1]["backends"][1]["state"], "active");

    // Every backend, with its pool, the default pool's first.
    let (_, backends) = admin(&c, at, "GET", "/backends").await;
    let listed: Vec<(String, String)> = backends
        .as_array()
        .expect("list")
        .iter()
        .map(|b| {
            (
                b["pool"].as_str().expect("pool").into(),
                b["name"].as_str().expect("name").into(),
            )
        })
        .collect();
    let want = [
        ("default", "shared"),
        ("default", "web-2"),
        ("api", "shared"),
        ("api", "api-2"),
    ];
    assert_eq!(listed, want.map(|(p, n)| (p.to_owned(), n.to_owned())));

    // Traffic: four to the api route, two to the default pool, and a
    // client with one token whose second request is refused.
    for _ in 0..4 {
        let (s, seen) = through(&c, proxy, "/api/users", None).await;
        assert_eq!(s, 200);
        assert_eq!(seen["path"], "/users", "rewritten: {seen}");
        assert!(
            seen["backend"]
                .as_str()
                .is_some_and(|b| b.starts_with("api-")),
            "{seen}"
        );
    }
    for _ in 0..2 {
        let (s, seen) = through(&c, proxy, "/", None).await;
        assert_eq!(s, 200);
        assert!(
            seen["backend"]
                .as_str()
                .is_some_and(|b| b.starts_with("web-")),
            "{seen}"
        );
    }
    let tiny = json!({"client_id": "tiny", "capacity": 1, "rate_per_sec": 0});
    let r = c
        .post(url(at, "/clients"))
        .json(&tiny)
        .send()
        .await
        .expect("add client");
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(through(&c, proxy, "/api/x", Some("tiny")).await.0, 200);
    assert_eq!(through(&c, proxy, "/api/x", Some("tiny")).await.0, 429);

    let (s, routes) = admin(&c, at, "GET", "/routes").await;
    assert_eq!(s, StatusCode::OK, "{routes}");
    assert_eq!(
        routes,
        json!([
            {
                "name": "api",
                "match": {"hosts": [], "path_prefix": "/api", "path_exact": null,
                          "ignore_case": false, "methods": ["GET", "POST"], "headers": {}},
                "pool": "api",
                "rewrite": {"prefix": "/"},
                "requests": 6,
                "limited": 1
            },
            {
                "name": "canary",
                "match": {"hosts": ["*.example.com"], "path_prefix": null, "path_exact": "/canary",
                          "ignore_case": false, "methods": [], "headers": {"x-canary": "1"}},
                "pool": "api",
                "rewrite": null,
                "requests": 0,
                "limited": 0
            }
        ])
    );
    two.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_in_one_pool_leaves_the_other_pools_backend_of_that_name_in_rotation() {
    let two = TwoPools::start().await;
    let (c, at, proxy) = (client(), two.admin(), two.lb.proxy_addr());

    // Both pools have a `shared`: the path without a pool cannot say which.
    let (s, body) = admin(&c, at, "POST", "/backends/shared/drain").await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], 409);
    let message = body["message"].as_str().expect("message");
    assert!(
        message.contains("default, api"),
        "names the pools: {message}"
    );
    assert!(
        message.contains("/pools/{pool}/backends/shared/drain"),
        "{message}"
    );
    let (s, _) = admin(&c, at, "POST", "/backends/shared/enable").await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(!two.lb.pool().find("shared").expect("shared").is_draining());

    let (s, item) = admin(&c, at, "POST", "/pools/api/backends/shared/drain").await;
    assert_eq!(s, StatusCode::OK, "{item}");
    assert_eq!(item["pool"], "api");
    assert_eq!(item["name"], "shared");
    assert_eq!(item["state"], "draining");
    let api = two.lb.pool_named("api").expect("api");
    assert!(api.find("shared").expect("api's shared").is_draining());
    assert!(!two
        .lb
        .pool()
        .find("shared")
        .expect("default's shared")
        .is_draining());

    // Requests keep flowing to both of the default pool's backends, and
    // the api pool's go to its other backend only.
    let mut web = BTreeSet::new();
    for _ in 0..6 {
        let (s, seen) = through(&c, proxy, "/", None).await;
        assert_eq!(s, 200);
        web.insert(seen["backend"].as_str().expect("backend").to_owned());
    }
    assert_eq!(
        web,
        BTreeSet::from(["web-1".to_owned(), "web-2".to_owned()])
    );
    for _ in 0..6 {
        let (s, seen) = through(&c, proxy, "/api/x", None).await;
        assert_eq!(s, 200);
        assert_eq!(seen["backend"], "api-2", "the drained api-1 got a request");
    }
    let (_, pools) = admin(&c, at, "GET", "/pools").await;
    assert_eq!(pools[0]["backends"][0]["state"], "active", "{pools}");
    assert_eq!(pools[1]["backends"][0]["state"], "draining", "{pools}");

    let (s, item) = admin(&c, at, "POST", "/pools/api/backends/shared/enable").await;
    assert_eq!(s, StatusCode::OK, "{item}");
    assert_eq!(item["state"], "active");

    // A name one pool has works without the pool, as before pools.
    let (s, item) = admin(&c, at, "POST", "/backends/api-2/drain").await;
    assert_eq!(s, StatusCode::OK, "{item}");
    assert_eq!(
        (item["pool"].as_str(), item["state"].as_str()),
        (Some("api"), Some("draining"))
    );
    let (s, item) = admin(&c, at, "POST", "/backends/api-2/enable").await;
    assert_eq!(
        (s, item["state"].as_str()),
        (StatusCode::OK, Some("active"))
    );

    // 404s, 400s: JSON that says what is wrong.
    for (path, status, says) in [
        (
            "/pools/nope/backends/shared/drain",
            404,
            "no pool named \"nope\"",
        ),
        (
            "/pools/api/backends/web-2/drain",
            404,
            "pool \"api\" has no backend named \"web-2\"",
        ),
        (
            "/pools/api/backends/nope/enable",
            404,
            "has no backend named \"nope\"",
        ),
        ("/backends/nope/drain", 404, "no backend named \"nope\""),
        (
            "/pools/%FF/backends/shared/drain",
            400,
            "Invalid UTF-8 in `pool`",
        ),
        (
            "/pools/api/backends/%FF/enable",
            400,
            "Invalid UTF-8 in `name`",
        ),
    ] {
        let (s, body) = admin(&c, at, "POST", path).await;
        assert_eq!(s.as_u16(), status, "{path}: {body}");
        assert_eq!(body["code"], status, "{path}: {body}");
        let message = body["message"].as_str().expect("message");
        assert!(message.contains(says), "{path}: {message}");
    }
    two.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_sees_the_pools_and_routes_a_reload_puts_in_force() {
    let two = TwoPools::start().await;
    let (c, at, proxy) = (client(), two.admin(), two.lb.proxy_addr());
    for _ in 0..3 {
        assert_eq!(through(&c, proxy, "/api/x", None).await.0, 200);
    }
    let assets = backend("static-1").await;
    let pool = format!(
        "  assets:\n    backends: [{{url: \"http://{}\", name: static-1}}]\n",
        assets.addr
    );
    let route = "  - name: assets\n    match: {path_prefix: /static}\n    pool: assets\n";
    std::fs::write(&two.path, two.yaml((&pool, route))).expect("write config");
    let (s, reloaded) = admin(&c, at, "POST", "/reload").await;
    assert_eq!(s, StatusCode::OK, "{reloaded}");

    let (_, pools) = admin(&c, at, "GET", "/pools").await;
    assert_eq!(
        names(&pools, "name"),
        ["default", "api", "assets"],
        "{pools}"
    );
    let (s, seen) = through(&c, proxy, "/static/app.js", None).await;
    assert_eq!((s, seen["backend"].as_str()), (200, Some("static-1")));
    let (_, routes) = admin(&c, at, "GET", "/routes").await;
    assert_eq!(names(&routes, "name"), ["api", "canary", "assets"]);
    // The api route kept its count across the reload.
    assert_eq!(routes[0]["requests"], 3, "{routes}");
    assert_eq!(routes[2]["requests"], 1, "{routes}");
    let (_, healthz) = admin(&c, at, "GET", "/healthz").await;
    assert_eq!(healthz["healthy_backends"], 5, "every pool's: {healthz}");
    let (s, item) = admin(&c, at, "POST", "/pools/assets/backends/static-1/drain").await;
    assert_eq!(
        (s, item["state"].as_str()),
        (StatusCode::OK, Some("draining"))
    );
    two.stop().await;
    assets.stop().await;
}

/// The demo backend answers `GET /path` and any path it does not know
/// like `GET /`, naming itself and the path it received: what the routes'
/// tests (and an operator trying a rewrite) read.
#[tokio::test]
async fn the_demo_backend_answers_any_unknown_path_with_the_path_it_received() {
    let b = backend("echo-1").await;
    let c = client();
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/path"),
        ("GET", "/api/v2/users/7?full=1"),
        ("GET", "/health/deep"),
        ("DELETE", "/things/3"),
    ] {
        let r = c
            .request(method.parse().expect("method"), url(b.addr, path))
            .send()
            .await
            .expect("answer");
        assert_eq!(r.status(), StatusCode::OK, "{method} {path}");
        assert_eq!(r.headers()["x-backend"], "echo-1");
        let body: Value = r.json().await.expect("JSON");
        let plain = path.split('?').next().expect("path");
        assert_eq!(
            body,
            json!({"backend": "echo-1", "method": method, "path": plain}),
            "{method} {path}"
        );
    }
    b.stop().await;
}
