//! Graceful shutdown of the real binary on SIGTERM / SIGINT.

mod support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use support::{backend, serve_yaml, spawn_serve, temp_db, url};

fn signal(child: &std::process::Child, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

/// Waits for the child to exit, failing after `limit`.
async fn exit_within(
    child: &mut std::process::Child,
    limit: Duration,
) -> (std::process::ExitStatus, Duration) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return (status, start.elapsed());
        }
        assert!(start.elapsed() < limit, "still running after {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn in_flight(admin: std::net::SocketAddr) -> u64 {
    let v: serde_json::Value = reqwest::get(url(admin, "/backends"))
        .await
        .expect("admin")
        .json()
        .await
        .expect("json");
    v.as_array()
        .map(|a| a.iter().filter_map(|b| b["in_flight"].as_u64()).sum())
        .unwrap_or(0)
}

/// Polls the admin API until `n` requests are in flight (10 s at most).
async fn wait_in_flight(admin: std::net::SocketAddr, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while in_flight(admin).await < n {
        assert!(
            Instant::now() < deadline,
            "{n} requests never got in flight"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_accepted_requests_then_exits_0_with_state_saved() {
    let b = backend("b").await;
    let db = temp_db();
    let extra = "rate_limit:\n  default: {capacity: 100, rate_per_sec: 0.01}\n";
    let mut p = spawn_serve(&serve_yaml(&[b.addr], &db, extra));

    // 50 slow requests, each on its own connection.
    let slow: Vec<_> = (0..50)
        .map(|_| {
            let u = url(p.proxy, "/delay/2000");
            tokio::spawn(async move {
                let c = reqwest::Client::builder()
                    .pool_max_idle_per_host(0)
                    .build()
                    .expect("client");
                c.get(&u).send().await.map(|r| r.status())
            })
        })
        .collect();
    wait_in_flight(p.admin, 50).await;
    let signalled = Instant::now();
    signal(&p.child, "-TERM");

    // New connections are refused once the signal is handled, while the
    // 50 are still running.
    let mut refused = false;
    while signalled.elapsed() < Duration::from_millis(1500) {
        if tokio::net::TcpStream::connect(p.proxy).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        refused,
        "the listener still accepted connections after SIGTERM"
    );

    for s in slow {
        assert_eq!(
            s.await.expect("task").expect("accepted request completes"),
            StatusCode::OK
        );
    }
    let (status, took) = exit_within(&mut p.child, Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "exit status");
    println!(
        "exited {took:?} after the last request, {:?} after SIGTERM",
        signalled.elapsed()
    );

    // The bucket the 50 requests drained was flushed on the way out.
    let pool = sqlx::SqlitePool::connect(&db).await.expect("open db");
    let tokens: f64 =
        sqlx::query_scalar("SELECT tokens FROM bucket_states WHERE client_key = 'ip:127.0.0.1'")
            .fetch_one(&pool)
            .await
            .expect("state row written at shutdown");
    assert!((50.0..51.0).contains(&tokens), "tokens {tokens}");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_the_drain_timeout_is_cut_and_the_process_exits() {
    let b = backend("b").await;
    let yaml =
        serve_yaml(&[b.addr], &temp_db(), "").replace("drain_timeout: 10s", "drain_timeout: 1s");
    let mut p = spawn_serve(&yaml);
    let u = url(p.proxy, "/delay/20000");
    let slow = tokio::spawn(async move { reqwest::get(&u).await.map(|r| r.status()) });
    wait_in_flight(p.admin, 1).await;
    let signalled = Instant::now();
    signal(&p.child, "-INT");
    let (status, _) = exit_within(&mut p.child, Duration::from_secs(8)).await;
    let took = signalled.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        took >= Duration::from_millis(900),
        "exited before the drain timeout: {took:?}"
    );
    assert!(
        slow.await.expect("task").is_err(),
        "the cut request saw its connection close"
    );
    println!("exited {took:?} after SIGINT with a 1 s drain timeout");
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_with_a_failure_code() {
    let b = backend("b").await;
    let mut p = spawn_serve(&serve_yaml(&[b.addr], &temp_db(), ""));
    let u = url(p.proxy, "/delay/20000");
    let slow = tokio::spawn(async move { reqwest::get(&u).await.map(|r| r.status()) });
    wait_in_flight(p.admin, 1).await;
    signal(&p.child, "-TERM");
    // Wait until the first signal has been handled (it is logged).
    loop {
        let line = p
            .logs
            .recv_timeout(Duration::from_secs(5))
            .expect("shutdown logged");
        if line["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("shutting down"))
        {
            break;
        }
    }
    let second = Instant::now();
    signal(&p.child, "-TERM");
    let (status, _) = exit_within(&mut p.child, Duration::from_secs(3)).await;
    assert_eq!(status.code(), Some(130));
    assert!(
        second.elapsed() < Duration::from_secs(2),
        "did not exit at once"
    );
    let _ = slow.await;
    b.stop().await;
}
