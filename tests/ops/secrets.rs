//! Passwords in `store.url` and `rate_limit.shared.redis_url` never reach
//! anything tollgate prints: logs (debug level, every crate), `check`,
//! start-up errors, `/reload` answers, `/metrics`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support;

const SECRET: &str = "s3cr3tPW";

/// `url` (`postgres://user@host/db`) with `password` added.
fn with_password(url: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (user, host) = rest.split_once('@').expect("a user in the URL");
    format!("{scheme}://{user}:{password}@{host}")
}

fn yaml(backend: std::net::SocketAddr, store: &str, redis: &str, prefix: &str) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n  drain_timeout: 5s\nadmin:\n  listen: 127.0.0.1:0\n\
         backends:\n  - url: http://{backend}\n\
         store:\n  url: \"{store}\"\n  reload_interval: 200ms\n  timeout: 2s\n\
         rate_limit:\n  shared:\n    redis_url: \"{redis}\"\n    key_prefix: \"{prefix}\"\n\
         log:\n  level: debug\n  format: json\n"
    )
}

/// Runs `tollgate ARGS --config FILE` to the end; its stdout and stderr.
fn run_to_end(args: &[&str], config: &Path) -> (std::process::ExitStatus, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .output()
        .expect("run tollgate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text)
}

/// Waits for a JSON line with `message` in the file `log` (written by a
/// running process) and returns it.
async fn log_line(log: &Path, message: &str) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["message"] == message);
        if let Some(v) = found {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {message:?} line in the log:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn passwords_never_reach_any_output() {
    let Some(db) = support::pg_database().await else {
        return;
    };
    let Ok(redis) = std::env::var("TOLLGATE_TEST_REDIS_URL") else {
        eprintln!("skipped: TOLLGATE_TEST_REDIS_URL is not set");
        return;
    };
    // This Redis wants no password: AUTH with one fails, so every shared
    // check fails with Redis's own error text, and is logged.
    let redis = redis.replacen("redis://", &format!("redis://:{SECRET}@"), 1);
    assert!(redis.contains(&format!(":{SECRET}@")), "{redis}");
    // PostgreSQL here trusts local logins: the password is sent nowhere,
    // and the store works.
    let store = with_password(&db.url, SECRET);
    let prefix = format!("secrets-{}:", std::process::id());
    let backend = support::backend("b").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut output = String::new();

    // A running balancer: start-up, requests whose shared check fails,
    // admin writes, reloads (one with a new password, one invalid),
    // /metrics, shutdown.
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, yaml(backend.addr, &store, &redis, &prefix)).expect("write");
    let log = dir.path().join("serve.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::from(
            std::fs::File::create(dir.path().join("serve.out")).expect("file"),
        ))
        .stderr(Stdio::from(std::fs::File::create(&log).expect("file")))
        .spawn()
        .expect("start tollgate");
    let loaded = log_line(&log, "client table loaded").await;
    assert_eq!(
        loaded["url"],
        with_password(&db.url, "***"),
        "the store URL is shown, its password masked"
    );
    let admin: std::net::SocketAddr = log_line(&log, "admin API listening").await["listen"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("admin address");
    let proxy: std::net::SocketAddr = log_line(&log, "proxy listening").await["listen"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("proxy address");
    let c = support::client();
    for _ in 0..3 {
        c.get(support::url(proxy, "/"))
            .header("x-api-key", "k1")
            .send()
            .await
            .expect("request");
    }
    log_line(
        &log,
        "shared rate limiter unavailable; applying rate_limit.shared.on_failure",
    )
    .await;
    let r = c
        .post(support::url(admin, "/clients"))
        .json(&serde_json::json!({"client_id": "k1", "capacity": 5, "rate_per_sec": 1}))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), reqwest::StatusCode::CREATED);
    let new_password = format!("{SECRET}-2");
    std::fs::write(
        &config,
        yaml(
            backend.addr,
            &with_password(&db.url, &new_password),
            &redis,
            &prefix,
        ),
    )
    .expect("write");
    let r = c
        .post(support::url(admin, "/reload"))
        .send()
        .await
        .expect("reload");
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    let answer = r.text().await.expect("body");
    assert!(answer.contains("store.url"), "{answer}");
    output.push_str(&answer);
    std::fs::write(
        &config,
        yaml(
            backend.addr,
            &format!("mysql://u:{SECRET}@h/db"),
            &format!("http://:{SECRET}@h"),
            &prefix,
        ),
    )
    .expect("write");
    let r = c
        .post(support::url(admin, "/reload"))
        .send()
        .await
        .expect("reload");
    assert_eq!(r.status(), reqwest::StatusCode::BAD_REQUEST);
    let answer = r.text().await.expect("body");
    assert!(
        answer.contains("store.url") && answer.contains("***"),
        "{answer}"
    );
    output.push_str(&answer);
    let metrics = c
        .get(support::url(admin, "/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("body");
    assert!(metrics.contains("tollgate_shared_limiter_failures_total"));
    output.push_str(&metrics);
    let status = c
        .get(support::url(admin, "/status"))
        .send()
        .await
        .expect("status")
        .text()
        .await
        .expect("body");
    output.push_str(&status);
    // The listening connection cut: its loss and reconnection are logged.
    let pool = sqlx::PgPool::connect(&db.url).await.expect("connect");
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name LIKE 'tollgate%'",
    )
    .execute(&pool)
    .await
    .expect("terminate");
    pool.close().await;
    log_line(
        &log,
        "store.notify: listening again; re-reading the client table",
    )
    .await;
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    assert!(child.wait().expect("wait").success());
    output.push_str(&std::fs::read_to_string(&log).expect("log"));
    output.push_str(&std::fs::read_to_string(dir.path().join("serve.out")).expect("out"));

    // PostgreSQL not there at start: the error names it, masked.
    let refused = support::closed_port();
    let down = dir.path().join("down.yaml");
    let down_url = format!("postgres://tollgate:{SECRET}@{refused}/db");
    std::fs::write(&down, yaml(backend.addr, &down_url, &redis, &prefix)).expect("write");
    let (status, text) = run_to_end(&["serve"], &down);
    assert!(!status.success());
    assert!(
        text.contains(&format!("postgres://tollgate:***@{refused}/db")),
        "{text}"
    );
    output.push_str(&text);

    // `check` of a file whose URLs are no good: each named, masked.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        yaml(
            backend.addr,
            &format!("mysql://u:{SECRET}@h/db"),
            &format!("http://:{SECRET}@h"),
            &prefix,
        ),
    )
    .expect("write");
    let (status, text) = run_to_end(&["check"], &bad);
    assert_eq!(status.code(), Some(2), "{text}");
    assert!(
        text.contains("mysql://u:***@h/db") && text.contains("http://:***@h"),
        "{text}"
    );
    output.push_str(&text);
    std::fs::write(
        &bad,
        yaml(
            backend.addr,
            &store,
            &format!("redis://:{SECRET}@h:notaport"),
            &prefix,
        ),
    )
    .expect("write");
    let (status, text) = run_to_end(&["check"], &bad);
    assert_eq!(status.code(), Some(2), "{text}");
    output.push_str(&text);

    assert!(output.len() > 10_000, "too little output captured");
    let leaks: Vec<&str> = output.lines().filter(|l| l.contains(SECRET)).collect();
    assert!(
        leaks.is_empty(),
        "the password was printed:\n{}",
        leaks.join("\n")
    );
    backend.stop().await;
    db.drop_db().await;
}
