//! The figures of docs/routing.md, "Traffic control": queue waits of a
//! pool with `max_connections` under overload, and the load a failing
//! pool receives with and without a retry budget.
//!
//! `cargo run --example traffic_figures` (everything in this process, on
//! 127.0.0.1 port 0: demo backends, a balancer, the clients).
//!
//! 1. Overload: 2 demo backends answering after 20 ms, `max_connections:
//!    4` each (capacity 8 requests at a time, about 400 per second), 64
//!    clients sending back to back for 5 s, queue {size: 1000, timeout:
//!    5s}. Client latency percentiles (a request's queue wait plus its
//!    20 ms), the pool's own mean and longest wait, and the most requests
//!    either backend saw at once.
//! 2. Retry budget: 3 demo backends that all answer 503, `retries:
//!    {attempts: 2, on: [503]}`, 2000 requests from 8 clients; backend hits
//!    per client request without a budget and with `budget_percent: 20`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tollgate::config::Config;
use tollgate::shutdown::{self, Trigger};

async fn demo(name: &str) -> (SocketAddr, Trigger) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let (stop, signal) = shutdown::channel();
    tokio::spawn(tollgate::demo::serve(l, name.into(), signal.wait()));
    (addr, stop)
}

fn config(backends: &[SocketAddr], pool_keys: &str) -> Config {
    let list: String = backends
        .iter()
        .enumerate()
        .map(|(i, a)| format!("      - url: http://{a}\n        name: b{i}\n"))
        .collect();
    let yaml = format!(
        "server:\n  listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\nrate_limit:\n  enabled: false\nbackends: []\npools:\n  api:\n    strategy: least_connections\n    backends:\n{list}{pool_keys}routes:\n  - name: all\n    pool: api\n"
    );
    let mut c = Config::parse(&yaml).expect("valid");
    let dir = std::env::temp_dir().join(format!("tollgate-figures-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    c.store.url = format!("sqlite://{}", dir.join("t.db").display());
    c
}

async fn backend_json(c: &reqwest::Client, b: SocketAddr) -> serde_json::Value {
    c.get(format!("http://{b}/concurrency"))
        .send()
        .await
        .expect("backend")
        .json()
        .await
        .expect("json")
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

async fn overload() {
    let (a, _sa) = demo("b0").await;
    let (b, _sb) = demo("b1").await;
    let cfg = config(
        &[a, b],
        "    max_connections: 4\n    queue: {size: 1000, timeout: 5s}\n",
    );
    let lb = tollgate::app::start(&cfg).await.expect("starts");
    let proxy = lb.proxy_addr();
    let c = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let until = Instant::now() + Duration::from_secs(5);
    let clients: Vec<_> = (0..64)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut refused = 0u64;
                while Instant::now() < until {
                    let t = Instant::now();
                    let r = c.get(format!("http://{proxy}/delay/20")).send().await;
                    match r.map(|r| r.status().as_u16()) {
                        Ok(200) => seen.push(t.elapsed()),
                        _ => refused += 1,
                    }
                }
                (seen, refused)
            })
        })
        .collect();
    let (mut all, mut refused) = (Vec::new(), 0);
    for t in clients {
        let (seen, r) = t.await.expect("client");
        all.extend(seen);
        refused += r;
    }
    all.sort();
    let stats = lb.pool_named("api").expect("pool").queue_stats();
    let most = [
        backend_json(&c, a).await["max_in_flight"].clone(),
        backend_json(&c, b).await["max_in_flight"].clone(),
    ];
    println!("## Overload: 64 clients, 2 backends x max_connections 4, 20 ms each, 5 s");
    println!(
        "answered {} ({:.0}/s), refused {refused}; client latency ms: p50 {:.1}, p90 {:.1}, p99 {:.1}, max {:.1}",
        all.len(),
        all.len() as f64 / 5.0,
        percentile(&all, 0.5),
        percentile(&all, 0.9),
        percentile(&all, 0.99),
        percentile(&all, 1.0),
    );
    println!(
        "queue: {} waited, mean wait {:.1} ms, longest {:.1} ms; most at once on the backends: {} and {}",
        stats.served,
        stats.mean_wait_secs * 1000.0,
        stats.max_wait_secs * 1000.0,
        most[0],
        most[1],
    );
    lb.shutdown().await;
}

async fn failing_pool(budget: &str) -> (u64, u64, f64) {
    let mut addrs = Vec::new();
    let mut stops = Vec::new();
    for i in 0..3 {
        let (a, s) = demo(&format!("b{i}")).await;
        addrs.push(a);
        stops.push(s);
    }
    let cfg = config(
        &addrs,
        &format!("    retries: {{attempts: 2, on: [\"503\"]{budget}}}\n"),
    );
    let lb = tollgate::app::start(&cfg).await.expect("starts");
    let proxy = lb.proxy_addr();
    let c = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let n = 2000u64;
    let start = Instant::now();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                for _ in 0..n / 8 {
                    let _ = c.get(format!("http://{proxy}/status/503")).send().await;
                }
            })
        })
        .collect();
    for t in clients {
        t.await.expect("client");
    }
    let secs = start.elapsed().as_secs_f64();
    let mut hits = 0;
    for a in &addrs {
        hits += backend_json(&c, *a).await["requests"].as_u64().unwrap_or(0);
    }
    lb.shutdown().await;
    (n, hits, secs)
}

#[tokio::main]
async fn main() {
    overload().await;
    println!("\n## A pool whose 3 backends all answer 503, retries {{attempts: 2, on: [503]}}");
    for (label, budget) in [
        ("no budget", ""),
        ("budget_percent 20", ", budget_percent: 20"),
    ] {
        let (n, hits, secs) = failing_pool(budget).await;
        println!(
            "{label}: {n} client requests in {secs:.2} s -> {hits} backend hits ({:.2} per request; {:.0} hits/s for {:.0} requests/s)",
            hits as f64 / n as f64,
            hits as f64 / secs,
            n as f64 / secs,
        );
    }
}
