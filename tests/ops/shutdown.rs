//! Graceful shutdown of the real binary on SIGTERM / SIGINT.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::support::{self, backend, serve_yaml, spawn_serve, temp_db, url};

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

/// A TCP relay to `upstream` that can stop relaying: the server behind it
/// then looks alive (connections open, nothing refused) but never answers,
/// which is how a hung PostgreSQL looks to its clients.
struct Freezer {
    addr: std::net::SocketAddr,
    frozen: tokio::sync::watch::Sender<bool>,
}

impl Freezer {
    async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the relay");
        let addr = listener.local_addr().expect("addr");
        let (frozen, watch) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, watch.clone()));
                tokio::spawn(pump(sr, cw, watch.clone()));
            }
        });
        Self { addr, frozen }
    }

    fn freeze(&self) {
        self.frozen.send_replace(true);
    }
}

/// Copies `from` to `to` until frozen; then holds what it reads.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if *frozen.borrow_and_update() {
            // Keep both halves open and never answer.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_postgres_bounds_admin_calls_and_shutdown() {
    let Some(db) = support::pg_database().await else {
        return;
    };
    // postgres://user@HOST:PORT/db -> the same through the relay.
    let (scheme_user, rest) = db.url.split_once('@').expect("URL with user@");
    let (server, database) = rest.split_once('/').expect("URL with a database");
    let relay = Freezer::start(server.to_owned()).await;
    let relayed = format!("{scheme_user}@{}/{database}\n  timeout: 1s", relay.addr);

    let b = backend("b").await;
    let extra = "rate_limit:\n  default: {capacity: 100, rate_per_sec: 0.01}\n";
    let yaml =
        serve_yaml(&[b.addr], &relayed, extra).replace("drain_timeout: 10s", "drain_timeout: 1s");
    let mut p = spawn_serve(&yaml);
    let c = support::client();
    let r = c
        .post(url(p.admin, "/clients"))
        .json(&serde_json::json!({"client_id": "k", "capacity": 5, "rate_per_sec": 1}))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), StatusCode::CREATED);
    // A bucket that is not full, so the final snapshot has work to do.
    assert_eq!(
        reqwest::get(url(p.proxy, "/")).await.expect("GET").status(),
        StatusCode::OK
    );

    relay.freeze();
    // Reads, and writes queued behind one client's lock: each answers a
    // JSON error once store.timeout (1 s) is up, none waits for the others.
    let started = Instant::now();
    let mut calls = vec![tokio::spawn(c.get(url(p.admin, "/clients")).send())];
    for capacity in 1..=4 {
        calls.push(tokio::spawn(
            c.put(url(p.admin, "/clients/k"))
                .json(&serde_json::json!({"capacity": capacity, "rate_per_sec": 1}))
                .timeout(Duration::from_secs(30))
                .send(),
        ));
    }
    for call in calls {
        let r = call.await.expect("task").expect("an answer");
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body: serde_json::Value = r.json().await.expect("JSON error");
        assert_eq!(body["code"], 503);
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("did not answer")),
            "{body}"
        );
    }
    let answered = started.elapsed();
    println!(
        "5 admin calls against a hung database all answered after {answered:?} (store.timeout 1s)"
    );
    assert!(
        answered < Duration::from_secs(4),
        "admin calls queued behind each other: {answered:?}"
    );

    let signalled = Instant::now();
    signal(&p.child, "-TERM");
    let (status, _) = exit_within(&mut p.child, Duration::from_secs(6)).await;
    println!(
        "exited {:?} after SIGTERM with drain_timeout 1s and a hung database",
        signalled.elapsed()
    );
    assert!(status.code().is_some(), "{status:?}");
    b.stop().await;
    db.drop_db().await;
}

/// SIGTERM while a SIGHUP reload waits on a config file that blocks on
/// read (a FIFO with no writer): the process exits within
/// `drain_timeout`, not after the read (before, the runtime's shutdown
/// waited for the blocked read forever, after "drained; bye"). A POST
/// /reload hanging the same way is cut with the admin listener's drain
/// (issue 23, item 17).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_within_drain_timeout_while_a_reload_blocks_on_a_fifo() {
    use crate::support::fifo::{release_fifo, replace_with_fifo};
    let yaml = serve_yaml(&[support::closed_port()], &temp_db(), "")
        .replace("drain_timeout: 10s", "drain_timeout: 1s");
    let mut p = spawn_serve(&yaml);
    replace_with_fifo(&p.config);
    p.hup();
    p.wait_for_log("SIGHUP: reloading");
    let admin = p.admin;
    let posted = tokio::spawn(async move {
        support::client()
            .post(url(admin, "/reload"))
            .send()
            .await
            .map(|r| r.status())
    });
    signal(&p.child, "-TERM");
    // The bound is drain_timeout plus the time to start and stop: before
    // the fix the process was still there when any bound ran out.
    let start = Instant::now();
    let mut exited = None;
    while start.elapsed() < Duration::from_secs(4) {
        if let Some(status) = p.child.try_wait().expect("wait") {
            exited = Some((status, start.elapsed()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if exited.is_none() {
        let _ = p.child.kill();
        let _ = p.child.wait();
    }
    // Nobody is left blocked on the FIFO (a writer with no reader left
    // waits on a thread of its own, detached).
    drop(release_fifo(&p.config, ""));
    let (status, took) = exited.expect("tollgate exited within 4 s of SIGTERM");
    assert!(status.success(), "{status:?}");
    println!("SIGTERM during a blocked reload: exit after {took:?}");
    let _ = posted.await;
}
