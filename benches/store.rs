//! Client-table figures: admin write latency, start-up time with a large
//! table, snapshot time for many non-full buckets.
//!
//! `cargo bench --bench store` prints `name=value` lines for SQLite, and
//! with `TOLLGATE_TEST_DATABASE_URL` set the same figures for PostgreSQL
//! (prefixed `pg_`), each in a database created for the run and dropped.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate::balancer::BackendUrl;
use tollgate::config::{BackendConfig, Config};
use tollgate::limiter::{ClientKey, Limits, Registry, RegistryConfig};
use tollgate::store::snapshot::Snapshotter;

const WRITES: usize = 1000;
const TABLE: usize = 100_000;

fn config(db: &str) -> Config {
    let mut c = Config::parse("").expect("defaults");
    c.server.listen = Some("127.0.0.1:0".parse().expect("addr"));
    c.admin.listen = "127.0.0.1:0".parse().expect("addr");
    c.backends = vec![BackendConfig::new(
        BackendUrl::parse("http://127.0.0.1:9").expect("url"),
    )];
    c.store.url = db.to_string();
    c
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

async fn admin_writes(db: String, label: &str) {
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
    println!("{label}admin_post_p50_ms={:.3}", percentile(&lat, 0.5));
    println!("{label}admin_post_p99_ms={:.3}", percentile(&lat, 0.99));
    running.shutdown().await;
}

async fn startup_with_large_table(db: String, label: &str) {
    // Create the schema through the store, then bulk-load rows directly.
    drop(tollgate::store::open(&db).await.expect("open"));
    if db.starts_with("sqlite:") {
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
    } else {
        let pool = sqlx::PgPool::connect(&db).await.expect("connect");
        sqlx::query("INSERT INTO clients (client_id, capacity, rate_per_sec, created_at, updated_at) SELECT 'client' || g, 100, 10, 0, 0 FROM generate_series(0, $1 - 1) g")
            .bind(TABLE as i64)
            .execute(&pool)
            .await
            .expect("insert");
        pool.close().await;
    }

    let t = Instant::now();
    let running = tollgate::app::start(&config(&db)).await.expect("start");
    let elapsed = t.elapsed();
    assert_eq!(running.registry().pinned_len(), TABLE);
    println!(
        "{label}startup_100k_clients_ms={:.1}",
        elapsed.as_secs_f64() * 1000.0
    );
    // What a replica pays every store.reload_interval on a shared table.
    let loaded = running.store().list().await.expect("list");
    let mut sync = tollgate::store::reload::TableSync::new(
        running.registry().clone(),
        running.store().clone(),
        &loaded,
    );
    let t = Instant::now();
    let stats = sync.reload().await.expect("reload");
    assert_eq!(stats.changed + stats.removed, 0);
    println!(
        "{label}reload_100k_clients_unchanged_ms={:.1}",
        t.elapsed().as_secs_f64() * 1000.0
    );
    running.shutdown().await;
}

async fn snapshot_many(db: String, label: &str) {
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
        "{label}snapshot_100k_first_ms={:.1}",
        t.elapsed().as_secs_f64() * 1000.0
    );
    let t = Instant::now();
    let stats = snap.snapshot().await.expect("snapshot");
    println!(
        "{label}snapshot_100k_unchanged_ms={:.1} (rows written: {})",
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
        "{label}snapshot_100k_all_changed_ms={:.1} (rows written: {})",
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
    let sqlite = |name: &str| format!("sqlite://{}", dir.path().join(name).display());
    rt.block_on(async {
        admin_writes(sqlite("writes.db"), "").await;
        startup_with_large_table(sqlite("big.db"), "").await;
        snapshot_many(sqlite("snap.db"), "").await;
        let Ok(server) = std::env::var("TOLLGATE_TEST_DATABASE_URL") else {
            println!("(PostgreSQL figures skipped: TOLLGATE_TEST_DATABASE_URL is not set)");
            return;
        };
        admin_writes(pg_database(&server, "writes").await, "pg_").await;
        startup_with_large_table(pg_database(&server, "big").await, "pg_").await;
        snapshot_many(pg_database(&server, "snap").await, "pg_").await;
        for name in ["writes", "big", "snap"] {
            drop_pg_database(&server, name).await;
        }
    });
}

fn pg_name(name: &str) -> String {
    format!("tollgate_bench_{name}")
}

/// A fresh database on the server of `server` (an existing one of the same
/// name, left by an interrupted run, is replaced).
async fn pg_database(server: &str, name: &str) -> String {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(server).await.expect("connect");
    let name = pg_name(name);
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        sqlx::query(&sql)
            .execute(&mut conn)
            .await
            .expect("create database");
    }
    let base = server.split('?').next().unwrap_or(server);
    let (prefix, _) = base.rsplit_once('/').expect("URL with a database path");
    format!("{prefix}/{name}")
}

async fn drop_pg_database(server: &str, name: &str) {
    use sqlx::Connection;
    if let Ok(mut conn) = sqlx::PgConnection::connect(server).await {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", pg_name(name));
        let _ = sqlx::query(&sql).execute(&mut conn).await;
    }
}
