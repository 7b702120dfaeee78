//! Running out of file descriptors: a flood of client connections must
//! not make tollgate evict its healthy backends. The real binary runs
//! under a small open-file limit (`ulimit -n`) so the flood is cheap.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{backend, serve_yaml, spawn_serve_with_open_files, temp_db, url, Process};

const PATIENCE: Duration = Duration::from_secs(20);

/// Waits for a log line whose message contains one of `wanted`; returns
/// its index. Fails on a line containing `forbidden`.
fn wait_for_log(p: &Process, wanted: &[&str], forbidden: &str) -> usize {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = p
            .logs
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no log line with any of {wanted:?}"));
        let message = line["message"].as_str().unwrap_or("");
        assert!(!message.contains(forbidden), "{line}");
        if let Some(i) = wanted.iter().position(|w| message.contains(w)) {
            return i;
        }
    }
}

/// Idle connections to `addr`, as many as `n`.
async fn hogs(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        match TcpStream::connect(addr).await {
            Ok(s) => v.push(s),
            Err(_) => break,
        }
    }
    v
}

fn raise_own_limit() {
    rlimit::increase_nofile_limit(u64::MAX).expect("raise the test's open-file limit");
}

async fn backend_state(admin: SocketAddr) -> (bool, u64) {
    let v: serde_json::Value = reqwest::get(url(admin, "/backends"))
        .await
        .expect("admin answers")
        .json()
        .await
        .expect("json");
    let b = &v[0];
    (
        b["healthy"].as_bool().expect("healthy"),
        b["consecutive_successes"].as_u64().expect("successes"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_waits_at_the_budget_while_health_checks_go_on() {
    raise_own_limit();
    let b = backend("b").await;
    let extra = "health_check:\n  interval: 100ms\n  timeout: 500ms\n  healthy_threshold: 1\n";
    // 256 descriptors: the default budget is (256 - 128) / 2 = 64.
    let yaml = serve_yaml(&[b.addr], &temp_db(), extra).replace(
        "  drain_timeout: 10s\n",
        "  drain_timeout: 1s\n  header_read_timeout: 60s\n",
    );
    let mut p = spawn_serve_with_open_files(&yaml, Some(256));
    let flood = hogs(p.proxy, 400).await;
    assert_eq!(flood.len(), 400, "the listen queue takes them all");
    wait_for_log(&p, &["server.max_connections reached"], "backend evicted");
    // Health checks still get sockets: successes keep counting.
    let (healthy, before) = backend_state(p.admin).await;
    assert!(healthy);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (healthy, now) = backend_state(p.admin).await;
        assert!(healthy, "the backend stays in the pool");
        if now >= before + 3 {
            break;
        }
        assert!(Instant::now() < deadline, "health checks stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(flood);
    let r = tokio::time::timeout(PATIENCE, reqwest::get(url(p.proxy, "/")))
        .await
        .expect("answered once the flood is gone")
        .expect("request");
    assert_eq!(r.status(), 200);
    let _ = p.child.kill();
    let _ = p.child.wait();
}

/// A backend that closes its connection after every answer, so that every
/// proxied request needs a new socket.
async fn closing_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 1024];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    addr
}

/// One request on a kept-alive raw connection: status and body.
async fn exchange(s: &mut TcpStream) -> (u16, String) {
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    tokio::time::timeout(PATIENCE, async {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            let Some((head, body)) = text.split_once("\r\n\r\n") else {
                continue;
            };
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .and_then(|v| v.trim().parse().ok())
                })
                .expect("content-length");
            if body.len() >= length {
                let status = head[9..12].parse().expect("status");
                return (status, body.to_owned());
            }
        }
    })
    .await
    .expect("an answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_sockets_is_not_a_backend_failure() {
    raise_own_limit();
    let b = closing_backend().await;
    // No budget worth the name: accept takes every descriptor. A single
    // failure would evict, and an evicted backend would stay out.
    let extra = "health_check:\n  path: /\n  interval: 100ms\n  timeout: 500ms\n  \
                 unhealthy_threshold: 1\n  healthy_threshold: 1000\n";
    let yaml = serve_yaml(&[b], &temp_db(), extra).replace(
        "  drain_timeout: 10s\n",
        "  drain_timeout: 1s\n  max_connections: 100000\n  header_read_timeout: 60s\n",
    );
    let mut p = spawn_serve_with_open_files(&yaml, Some(64));
    let mut c1 = TcpStream::connect(p.proxy).await.expect("connect");
    assert_eq!(exchange(&mut c1).await.0, 200);
    let flood = hogs(p.proxy, 200).await;
    wait_for_log(&p, &["accept failed"], "backend evicted");
    // Active checks: skipped, not failed.
    wait_for_log(&p, &["health check not made"], "backend evicted");
    // Passive: the connect fails here, and the client is told so.
    let (status, body) = exchange(&mut c1).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("out of sockets"), "{body}");
    drop(flood);
    // Once descriptors are free again the backend is still in the pool.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, body) = exchange(&mut c1).await;
        if status == 200 {
            break;
        }
        assert!(body.contains("out of sockets"), "{status} {body}");
        assert!(Instant::now() < deadline, "still out of sockets");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = p.child.kill();
    let _ = p.child.wait();
}
