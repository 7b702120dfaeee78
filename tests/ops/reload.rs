//! SIGHUP on the real binary re-reads its config file: a changed default
//! limit and log level apply without a restart, and an invalid file
//! changes nothing.

use crate::support::{backend, serve_yaml, spawn_serve, temp_db, Process};

/// `X-RateLimit-Limit` and `X-RateLimit-Remaining` of `GET /`.
async fn limit_and_remaining(p: &Process) -> (String, String) {
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(format!("http://{}/", p.proxy))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 200);
    let header = |name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    (header("x-ratelimit-limit"), header("x-ratelimit-remaining"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_changed_default_limit_and_log_level() {
    let b = backend("b").await;
    let db = temp_db();
    // `level` continues the `log:` section serve_yaml ends with.
    let config = |capacity: u64, level: &str| {
        serve_yaml(
            &[b.addr],
            &db,
            &format!(
                "  level: {level}\nrate_limit:\n  default: {{capacity: {capacity}, rate_per_sec: 0.001}}\n"
            ),
        )
    };
    let mut p = spawn_serve(&config(10, "info"));
    assert_eq!(limit_and_remaining(&p).await, ("10".into(), "9".into()));

    std::fs::write(&p.config, config(20, "debug")).expect("write config");
    p.hup();
    // A debug line from the reload itself: printed only because the new
    // level is in effect.
    let moved = p.wait_for_log("clients moved to the new default limits");
    assert_eq!(moved["level"], "DEBUG", "{moved}");
    let line = p.wait_for_log("reloaded");
    let applied = line["applied"].as_str().unwrap_or_default();
    assert!(applied.contains("rate_limit.default"), "{line}");
    assert!(applied.contains("log.level"), "{line}");
    assert_eq!(line["restart_required"], "", "{line}");
    // The client's 9 tokens were kept under the new capacity.
    assert_eq!(limit_and_remaining(&p).await, ("20".into(), "8".into()));

    // An invalid file: every problem logged, the running config stays.
    std::fs::write(
        &p.config,
        config(0, "debug").replace("level: debug", "level: loud"),
    )
    .expect("write config");
    p.hup();
    let line = p.wait_for_log("reload failed");
    let error = line["error"].as_str().unwrap_or_default();
    assert!(error.contains("rate_limit.default"), "{line}");
    assert!(error.contains("log.level"), "{line}");
    assert_eq!(limit_and_remaining(&p).await, ("20".into(), "7".into()));

    let _ = p.child.kill();
    let _ = p.child.wait();
    b.stop().await;
}

/// SIGHUP with the config file emptied: refused and logged, the running
/// config keeps serving (issue 23, item 15).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_refuses_an_emptied_file() {
    let b = backend("b").await;
    let yaml = serve_yaml(
        &[b.addr],
        &temp_db(),
        "rate_limit:\n  default: {capacity: 10, rate_per_sec: 0.001}\n",
    );
    let mut p = spawn_serve(&yaml);
    assert_eq!(limit_and_remaining(&p).await, ("10".into(), "9".into()));
    std::fs::write(&p.config, "").expect("empty the config");
    p.hup();
    let line = p.wait_for_log("reload failed");
    let error = line["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("none of server, backends, pools or routes is set"),
        "{line}"
    );
    assert_eq!(limit_and_remaining(&p).await, ("10".into(), "8".into()));
    let _ = p.child.kill();
    let _ = p.child.wait();
    b.stop().await;
}
