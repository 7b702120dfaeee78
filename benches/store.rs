//! Client-table figures: admin write latency, start-up time with a large
//! table, snapshot time for many non-full buckets.
//!
//! `cargo bench --bench store` prints `name=value` lines.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate::config::{BackendConfig, BackendUrl, Config};
use tollgate::limiter::{ClientKey, Limits, Registry, RegistryConfig};
use tollgate::store::snapshot::Snapshotter;

const WRITES: usize = 1000;
const TABLE: usize = 100_000;

fn config(db: &str) -> Config {
    let mut c = Config::parse("").expect("defaults");
    c.server.listen = "127.0.0.1:0".parse().expect("addr");
    c.admin.listen = "127.0.0.1:0".parse().expect("addr");
    c.backends = vec![BackendConfig {
        url: BackendUrl::parse("http://127.0.0.1:9").expect("url"),
    }];
    c.store.url = db.to_string();
    c
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

async fn admin_writes(dir: &std::path::Path) {
    let db = format!("sqlite://{}", dir.join("writes.db").display());
    let running = tollgate::app::start(&config(&db)).await.expect("start");
    let c = reqwest::Client::new();
    let u = format!("http://{}/clients", running.admin_addr());
    let mut lat = Vec::with_capacity(WRITES);
    for i in 0..WRITES {
        let t = Instant::now();
        let r = c
            .post(&u)
            .json(&serde_json::json!({"client_id": format!("w{i}"), "capacity": 100, "rate_per_sec": 10}))
            .send()
            .await
            .expect("post");
        assert_eq!(r.status().as_u16(), 201);
        lat.push(t.elapsed());
    }
    lat.sort();
    println!("admin_post_p50_ms={:.3}", percentile(&lat, 0.5));
    println!("admin_post_p99_ms={:.3}", percentile(&lat, 0.99));
    running.shutdown().await;
}

async fn startup_with_large_table(dir: &std::path::Path) {
    let path = dir.join("big.db");
    let db = format!("sqlite://{}", path.display());
    // Create the schema through the store, then bulk-load rows directly.
    drop(tollgate::store::open(&db).await.expect("open"));
    let pool = sqlx::SqlitePool::connect(&db).await.expect("connect");
    let mut tx = pool.begin().await.expect("begin");
    for i in 0..TABLE {
        sqlx::query("INSERT INTO clients (client_id, capacity, rate_per_sec, created_at, updated_at) VALUES (?, 100, 10, 0, 0)")
            .bind(format!("client{i}"))
            .execute(&mut *tx)
            .await
            .expect("insert");
    }
    tx.commit().await.expect("commit");
    pool.close().await;

    let t = Instant::now();
    let running = tollgate::app::start(&config(&db)).await.expect("start");
    let elapsed = t.elapsed();
    assert_eq!(running.registry().pinned_len(), TABLE);
    println!(
        "startup_100k_clients_ms={:.1}",
        elapsed.as_secs_f64() * 1000.0
    );
    running.shutdown().await;
}

async fn snapshot_many(dir: &std::path::Path) {
    let db = format!("sqlite://{}", dir.join("snap.db").display());
    let store = tollgate::store::open(&db).await.expect("open");
    let registry = Arc::new(Registry::new(RegistryConfig {
        default_limits: Limits::new(100, 1.0).expect("valid"),
        max_clients: std::num::NonZeroUsize::new(1_000_000).expect("nonzero"),
        idle_timeout: Duration::from_secs(600),
        refill_interval: Duration::from_millis(100),
    }));
    for i in 0..TABLE as u32 {
        let key = ClientKey::Ip(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)));
        for _ in 0..5 {
            let _ = registry.check(&key);
        }
    }
    let mut snap = Snapshotter::new(registry.clone(), store, &[]);
    let t = Instant::now();
    let stats = snap.snapshot().await.expect("snapshot");
    assert_eq!(stats.written, TABLE);
    println!(
        "snapshot_100k_first_ms={:.1}",
        t.elapsed().as_secs_f64() * 1000.0
    );
    let t = Instant::now();
    let stats = snap.snapshot().await.expect("snapshot");
    println!(
        "snapshot_100k_unchanged_ms={:.1} (rows written: {})",
        t.elapsed().as_secs_f64() * 1000.0,
        stats.written
    );
    // Every level changed (one refill later, 95 -> 95.15 tokens): all rows
    // rewritten.
    tokio::time::sleep(Duration::from_millis(150)).await;
    registry.refill();
    let t = Instant::now();
    let stats = snap.snapshot().await.expect("snapshot");
    assert_eq!(stats.written, TABLE);
    println!(
        "snapshot_100k_all_changed_ms={:.1} (rows written: {})",
        t.elapsed().as_secs_f64() * 1000.0,
        stats.written
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    rt.block_on(async {
        admin_writes(dir.path()).await;
        startup_with_large_table(dir.path()).await;
        snapshot_many(dir.path()).await;
    });
}
