//! Traffic control per pool, end to end with demo backends: consistent
//! hashing (keys stay put while a backend is drained, about a fifth move
//! when one of five leaves, and the same ones come back), sticky sessions
//! (an opaque cookie, kept while its backend is active, re-set when it is
//! drained, a forged one ignored), and least_time keeping traffic off a
//! slow backend even one request at a time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use reqwest::StatusCode;
use tollgate::app::Running;
use tollgate::config::Config;

use crate::balancing::Scripted;
use crate::support::{backends, client, temp_db, url, TestBackend};

/// A config file with one pool `api` (these `keys`, these backends named
/// b0, b1, ...) that every request is routed to.
fn yaml(backends: &[(usize, SocketAddr)], keys: &str, db: &str) -> String {
    let list: String = backends
        .iter()
        .map(|(i, a)| format!("      - {{url: http://{a}, name: b{i}}}\n"))
        .collect();
    format!(
        "server: {{listen: 127.0.0.1:0, drain_timeout: 5s}}\nadmin: {{listen: 127.0.0.1:0}}\nhealth_check: {{interval: 1h}}\nrate_limit:\n  default: {{capacity: 1000000, rate_per_sec: 1000000}}\nstore: {{url: {db}}}\npools:\n  api:\n{keys}    backends:\n{list}routes:\n  - {{name: all, pool: api}}\n"
    )
}

/// A balancer started from `text` in a file it can reload.
struct Reloadable {
    lb: Running,
    file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Reloadable {
    async fn start(text: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("tollgate.yaml");
        std::fs::write(&file, text).expect("write config");
        let cfg = Config::load(&file).expect("valid config");
        let lb = tollgate::app::start_with_file(&cfg, Some(file.clone()))
            .await
            .expect("starts");
        Self {
            lb,
            file,
            _dir: dir,
        }
    }

    async fn reload(&self, text: &str) {
        std::fs::write(&self.file, text).expect("write config");
        let r = self.lb.reload().await.expect("reload applies");
        assert!(r.restart_required.is_empty(), "{:?}", r.restart_required);
    }
}

/// Who answered a `GET /` with these headers, and its `Set-Cookie`s.
async fn ask(c: &reqwest::Client, lb: &Running, headers: &[(&str, &str)]) -> (String, Vec<String>) {
    let mut r = c.get(url(lb.proxy_addr(), "/"));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().await.expect("request");
    assert_eq!(r.status(), StatusCode::OK);
    let who = r.headers()["x-backend"].to_str().expect("ascii").to_owned();
    let cookies = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    r.bytes().await.expect("body");
    (who, cookies)
}

const USERS: usize = 500;

/// Who answers each of `USERS` keys in `X-User`.
async fn owners(c: &reqwest::Client, lb: &Running) -> Vec<String> {
    let mut v = Vec::with_capacity(USERS);
    for u in 0..USERS {
        v.push(ask(c, lb, &[("x-user", &format!("user-{u}"))]).await.0);
    }
    v
}

fn moved(a: &[String], b: &[String]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashed_keys_stay_put_and_about_a_fifth_move_when_one_of_five_leaves() {
    let bs = backends(5).await;
    let all: Vec<(usize, SocketAddr)> = bs.iter().map(|b| b.addr).enumerate().collect();
    let db = temp_db();
    let keys = "    strategy: hash\n    hash_key: header:X-User\n";
    let t = Reloadable::start(&yaml(&all, keys, &db)).await;
    let c = client();
    let before = owners(&c, &t.lb).await;
    assert_eq!(owners(&c, &t.lb).await, before, "a key keeps its backend");
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for o in &before {
        *counts.entry(o).or_default() += 1;
    }
    assert_eq!(counts.len(), 5, "{counts:?}");
    assert!(counts.values().all(|n| *n > USERS / 10), "{counts:?}");

    // Draining b2: its keys go elsewhere, no other key moves.
    let admin = url(t.lb.admin_addr(), "/pools/api/backends/b2/drain");
    assert_eq!(c.post(admin).send().await.expect("drain").status(), 200);
    let drained = owners(&c, &t.lb).await;
    for (x, y) in before.iter().zip(&drained) {
        if x == "b2" {
            assert_ne!(y, "b2");
        } else {
            assert_eq!(x, y, "a key of an active backend moved");
        }
    }
    let admin = url(t.lb.admin_addr(), "/pools/api/backends/b2/enable");
    assert_eq!(c.post(admin).send().await.expect("enable").status(), 200);
    assert_eq!(owners(&c, &t.lb).await, before);

    // b2 leaves the config: at most 1/5 + 3 % of the keys move.
    let four: Vec<(usize, SocketAddr)> = all.iter().copied().filter(|(i, _)| *i != 2).collect();
    t.reload(&yaml(&four, keys, &db)).await;
    let after = owners(&c, &t.lb).await;
    let m = moved(&before, &after);
    eprintln!("keys moved when b2 left: {m:.3}");
    assert!(m <= 0.2 + 0.03, "{m} of the keys moved");
    assert!(after.iter().all(|o| o != "b2"));
    // It comes back: the same keys return to it.
    t.reload(&yaml(&all, keys, &db)).await;
    assert_eq!(owners(&c, &t.lb).await, before, "the same keys came back");
    t.lb.shutdown().await;
    for b in bs {
        b.stop().await;
    }
}

/// The cookie `tg_api` as a request header, from a `Set-Cookie`.
fn cookie_of(set: &[String]) -> String {
    let first = set.first().expect("a Set-Cookie");
    first.split(';').next().expect("pair").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_sessions_keep_a_client_on_its_backend_until_it_is_drained() {
    let bs: Vec<TestBackend> = backends(3).await;
    let all: Vec<(usize, SocketAddr)> = bs.iter().map(|b| b.addr).enumerate().collect();
    let keys = "    strategy: round_robin\n    sticky: {cookie: tg_api, ttl: 10m}\n";
    let t = Reloadable::start(&yaml(&all, keys, &temp_db())).await;
    let c = client();
    let (first, set) = ask(&c, &t.lb, &[]).await;
    assert_eq!(set.len(), 1, "{set:?}");
    let s = &set[0];
    assert!(
        s.starts_with("tg_api=") && s.contains("Max-Age=600") && s.contains("HttpOnly"),
        "{s}"
    );
    // Opaque: 32 hex digits, so neither an address nor a name in clear.
    let pinned = cookie_of(&set);
    let token = pinned.trim_start_matches("tg_api=");
    let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    assert!(token.len() == 32 && token.bytes().all(hex), "{s}");
    assert!(!s.contains("127.0.0.1") && !s.contains(':'), "{s}");
    // Round robin alone would rotate; the cookie keeps the backend, and
    // is not set again.
    for _ in 0..12 {
        let (who, set) = ask(&c, &t.lb, &[("cookie", &format!("a=1; {pinned}"))]).await;
        assert_eq!(who, first);
        assert!(set.is_empty(), "{set:?}");
    }
    // A forged value is ignored: answered, and a real cookie issued.
    let (_, set) = ask(
        &c,
        &t.lb,
        &[("cookie", "tg_api=0123456789abcdef0123456789abcdef")],
    )
    .await;
    assert_eq!(set.len(), 1);
    let (_, set) = ask(&c, &t.lb, &[("cookie", "tg_api=not-even-hex")]).await;
    assert_eq!(set.len(), 1);

    // Drained: the client goes elsewhere and is pinned there instead.
    let drain = url(
        t.lb.admin_addr(),
        &format!("/pools/api/backends/{first}/drain"),
    );
    assert_eq!(c.post(drain).send().await.expect("drain").status(), 200);
    let (moved_to, set) = ask(&c, &t.lb, &[("cookie", &pinned)]).await;
    assert_ne!(moved_to, first);
    let repinned = cookie_of(&set);
    assert_ne!(repinned, pinned);
    for _ in 0..6 {
        let (who, set) = ask(&c, &t.lb, &[("cookie", &repinned)]).await;
        assert_eq!(who, moved_to);
        assert!(set.is_empty());
    }
    t.lb.shutdown().await;
    for b in bs {
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_time_keeps_traffic_off_a_slow_backend_one_request_at_a_time() {
    let fast = backends(2).await;
    let slow = Scripted::start("slow", Duration::from_millis(50), 200).await;
    let addrs = vec![(0, fast[0].addr), (1, fast[1].addr), (2, slow.addr)];
    let keys = "    strategy: least_time\n";
    let t = Reloadable::start(&yaml(&addrs, keys, &temp_db())).await;
    let c = client();
    let n = 300;
    let mut to_slow = 0;
    for _ in 0..n {
        if ask(&c, &t.lb, &[]).await.0 == "slow" {
            to_slow += 1;
        }
    }
    // One request at a time, nothing is ever in flight: p2c and least
    // connections see three equal backends and give the slow one a third.
    // least_time has measured it.
    let share = f64::from(to_slow) / f64::from(n);
    eprintln!("least_time sent {to_slow} of {n} to the slow backend");
    assert!(share < 0.1, "the slow backend got {share}");
    t.lb.shutdown().await;
    slow.stop().await;
}
