//! Replicas sharing one PostgreSQL client table: whatever order the admin
//! writes reach them in, through whichever replica, every replica ends up
//! running the limits the table holds.
//!
//! Each replica here is a store (its own connection pool) and a registry on
//! one database; a local admin write is what the admin API does (write the
//! table, then apply to the live bucket). Reloads are called by the test,
//! so every interleaving is exact and repeatable.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tollgate::limiter::{ApiKey, ClientKey, Limits, Registry, RegistryConfig};
use tollgate::store::reload::TableSync;
use tollgate::store::writes::LocalWrites;
use tollgate::store::{
    BucketState, Client, ClientRow, ClientStore, Page, SnapshotDelta, StoreError,
};

use crate::support;

/// One replica: its store, its live buckets, its table sync.
struct Replica {
    store: Arc<dyn ClientStore>,
    registry: Arc<Registry>,
    writes: Arc<LocalWrites>,
    sync: TableSync,
}

impl Replica {
    async fn start(url: &str) -> Self {
        let store = tollgate::store::open(url).await.expect("open postgres");
        Self::on(store).await
    }

    async fn on(store: Arc<dyn ClientStore>) -> Self {
        let registry = Arc::new(Registry::new(RegistryConfig {
            default_limits: Limits::new(100, 1.0).expect("valid"),
            max_clients: std::num::NonZeroUsize::new(1000).expect("nonzero"),
            idle_timeout: Duration::from_secs(600),
            refill_interval: Duration::from_millis(100),
        }));
        let restored = tollgate::store::snapshot::restore(&registry, store.as_ref())
            .await
            .expect("restore");
        let writes = LocalWrites::new();
        let sync = TableSync::new(registry.clone(), store.clone(), &restored.clients)
            .with_local_writes(writes.clone());
        Self {
            store,
            registry,
            writes,
            sync,
        }
    }

    /// A write through this replica's admin API: the table first, then the
    /// live bucket. `capacity: None` deletes. A write the table refuses
    /// (exists, not found) changes nothing, as through the API.
    async fn write(&self, id: &str, capacity: Option<u32>, create: bool) {
        write_through(
            self.store.as_ref(),
            &self.registry,
            &self.writes,
            id,
            capacity,
            create,
        )
        .await;
    }

    async fn reload(&mut self) {
        self.sync.reload().await.expect("reload");
    }

    /// The client-table clients this replica runs, with their capacities.
    fn applied(&self) -> BTreeMap<String, u32> {
        runs(&self.registry)
    }
}

/// What the admin API does for a write: counted as a local write, the
/// table first, then the live bucket. `capacity: None` deletes. A write
/// the table refuses (exists, not found) changes nothing.
async fn write_through(
    store: &dyn ClientStore,
    registry: &Registry,
    writes: &Arc<LocalWrites>,
    id: &str,
    capacity: Option<u32>,
    create: bool,
) {
    let key = ClientKey::Api(ApiKey::new(id).expect("valid id"));
    let write = writes.begin();
    let limits = capacity.map(|c| Limits::new(u64::from(c), 1.0).expect("valid"));
    let done = match (limits, &key) {
        (Some(limits), ClientKey::Api(id)) => {
            let c = Client {
                id: id.clone(),
                limits,
            };
            if create {
                store.create(&c).await
            } else {
                store.update(&c).await
            }
        }
        (None, ClientKey::Api(id)) => store.delete(id.as_str()).await,
        _ => unreachable!("an API key"),
    };
    if done.is_ok() {
        write.apply(|| match limits {
            Some(limits) => registry.set_limits(&key, limits).expect("room"),
            None => {
                registry.unpin(&key);
            }
        });
    }
}

/// A write to make during a `list`: through this registry and counter,
/// this id gets this capacity.
type DuringList = (Arc<Registry>, Arc<LocalWrites>, &'static str, u32);

/// A store whose next `list` lets a local write through the replica
/// commit and apply after the rows were read and before they are handed
/// over: the race between a reload and an admin write, made certain.
#[derive(Debug)]
struct WriteDuringList {
    inner: Arc<dyn ClientStore>,
    during: std::sync::Mutex<Option<DuringList>>,
}

#[async_trait::async_trait]
impl ClientStore for WriteDuringList {
    async fn list(&self) -> Result<Vec<ClientRow>, StoreError> {
        let rows = self.inner.list().await?;
        let during = self.during.lock().expect("lock").take();
        if let Some((registry, writes, id, capacity)) = during {
            write_through(
                self.inner.as_ref(),
                &registry,
                &writes,
                id,
                Some(capacity),
                false,
            )
            .await;
        }
        Ok(rows)
    }
    async fn list_page(&self, page: &Page<'_>) -> Result<Vec<ClientRow>, StoreError> {
        self.inner.list_page(page).await
    }
    async fn get(&self, id: &ApiKey) -> Result<Option<ClientRow>, StoreError> {
        self.inner.get(id).await
    }
    async fn create(&self, client: &Client) -> Result<(), StoreError> {
        self.inner.create(client).await
    }
    async fn update(&self, client: &Client) -> Result<(), StoreError> {
        self.inner.update(client).await
    }
    async fn delete(&self, id: &str) -> Result<(), StoreError> {
        self.inner.delete(id).await
    }
    async fn save_bucket_states(&self, delta: &SnapshotDelta) -> Result<(), StoreError> {
        self.inner.save_bucket_states(delta).await
    }
    async fn load_bucket_states(&self) -> Result<Vec<BucketState>, StoreError> {
        self.inner.load_bucket_states().await
    }
    async fn migrate(&self) -> Result<(), StoreError> {
        self.inner.migrate().await
    }
}

/// A reload whose read was taken before a local admin write committed
/// does not put the old limits back over the ones the write applied.
#[tokio::test]
async fn a_reload_read_before_a_local_write_does_not_undo_it() {
    let Some(db) = support::pg_database().await else {
        return;
    };
    let store = Arc::new(WriteDuringList {
        inner: tollgate::store::open(&db.url).await.expect("open postgres"),
        during: std::sync::Mutex::new(None),
    });
    let mut a = Replica::on(store.clone()).await;
    a.write("x", Some(3), true).await;
    a.reload().await;
    assert_eq!(a.applied(), BTreeMap::from([("x".to_owned(), 3)]));

    *store.during.lock().expect("lock") = Some((a.registry.clone(), a.writes.clone(), "x", 7));
    a.reload().await;
    assert_eq!(table(a.store.as_ref()).await["x"], 7);
    assert_eq!(
        a.applied(),
        BTreeMap::from([("x".to_owned(), 7)]),
        "the reload put back what it read before the write"
    );
    drop(a);
    db.drop_db().await;
}

/// The table as it is now, with capacities.
async fn table(store: &dyn ClientStore) -> BTreeMap<String, u32> {
    store
        .list()
        .await
        .expect("list")
        .iter()
        .map(|r| (r.client_id().to_owned(), r.capacity()))
        .collect()
}

async fn converged(a: &mut Replica, b: &mut Replica, what: &str) {
    a.reload().await;
    b.reload().await;
    let want = table(a.store.as_ref()).await;
    assert_eq!(a.applied(), want, "replica a after {what}");
    assert_eq!(b.applied(), want, "replica b after {what}");
}

/// The interleavings that left a replica stale for good while the reload
/// compared each read with the previous read instead of with what runs:
/// a local change overwritten through the other replica, a local create
/// deleted there, a local delete re-created there with the old values.
#[tokio::test]
async fn replicas_run_what_the_table_holds_after_interleaved_writes() {
    let Some(db) = support::pg_database().await else {
        return;
    };
    let mut a = Replica::start(&db.url).await;
    let mut b = Replica::start(&db.url).await;

    a.write("x", Some(3), true).await;
    converged(&mut a, &mut b, "x created through a").await;
    b.write("x", Some(9), false).await;
    a.write("x", Some(3), false).await;
    converged(
        &mut a,
        &mut b,
        "x changed through b, changed back through a",
    )
    .await;

    b.write("y", Some(4), true).await;
    a.write("y", None, false).await;
    converged(&mut a, &mut b, "y created through b, deleted through a").await;

    a.write("z", Some(5), true).await;
    converged(&mut a, &mut b, "z created through a").await;
    b.write("z", None, false).await;
    a.write("z", Some(5), true).await;
    converged(&mut a, &mut b, "z deleted through b, re-created through a").await;

    // Random interleavings of writes and reloads (a fixed seed, so a
    // failure repeats).
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |n: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % n
    };
    for step in 0..300u32 {
        let id = ["k0", "k1", "k2"][next(3) as usize];
        let replica = if next(2) == 0 { &mut a } else { &mut b };
        match next(5) {
            0 => replica.write(id, None, false).await,
            1 => replica.write(id, Some(1 + step), true).await,
            2 | 3 => replica.write(id, Some(1 + step), false).await,
            _ => replica.reload().await,
        }
        if step % 50 == 49 {
            converged(&mut a, &mut b, &format!("step {step}")).await;
        }
    }
    drop((a, b));
    db.drop_db().await;
}

/// Client-table clients `registry` runs, by id, with their capacities.
fn runs(registry: &Registry) -> BTreeMap<String, u32> {
    let mut pinned = BTreeMap::new();
    registry.for_each(|b| {
        if b.pinned {
            pinned.insert(b.key.to_string(), b.capacity);
        }
    });
    pinned
}

/// Polls until `registry` runs `id` with `capacity` (`None`: not at all),
/// failing after `within`; returns how long that took.
async fn until_runs(
    registry: &Registry,
    id: &str,
    capacity: Option<u32>,
    within: Duration,
) -> Duration {
    let started = tokio::time::Instant::now();
    loop {
        if runs(registry).get(id).copied() == capacity {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "after {within:?} the replica runs {:?} for {id}, not {capacity:?}",
            runs(registry).get(id)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// `LISTEN`ing connections of tollgate on the test database.
async fn listeners(db: &support::PgDatabase) -> i64 {
    let pool = sqlx::PgPool::connect(&db.url).await.expect("connect");
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'tollgate-listen' \
         AND query LIKE 'LISTEN%'",
    )
    .fetch_one(&pool)
    .await
    .expect("count listeners");
    pool.close().await;
    n
}

async fn admin_write(
    c: &reqwest::Client,
    admin: std::net::SocketAddr,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) {
    let mut request = c.request(method, support::url(admin, path));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let r = request.send().await.expect("admin request");
    assert!(r.status().is_success(), "{path}: {}", r.status());
}

/// With `store.notify`, a write through one replica runs on the other
/// well before `reload_interval` (an hour here, so only the notification
/// can explain it), deletions too, and after the listening connections
/// were killed the replicas listen again and catch up.
#[tokio::test]
async fn notify_applies_writes_on_every_replica_at_once() {
    let Some(db) = support::pg_database().await else {
        return;
    };
    let mut cfg = support::config(&[support::closed_port()]);
    cfg.store.url = db.url.clone();
    cfg.store.reload_interval = Duration::from_secs(3600);
    let a = support::balancer(&cfg).await;
    let b = support::balancer(&cfg).await;
    let c = support::client();
    let within = Duration::from_secs(1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while listeners(&db).await < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "replicas never LISTENed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut took = Vec::new();
    for i in 0..20u32 {
        let body =
            serde_json::json!({"client_id": format!("c{i}"), "capacity": 3 + i, "rate_per_sec": 1});
        admin_write(
            &c,
            a.admin_addr(),
            reqwest::Method::POST,
            "/clients",
            Some(body),
        )
        .await;
        took.push(until_runs(b.registry(), &format!("c{i}"), Some(3 + i), within).await);
        let body = serde_json::json!({"capacity": 100 + i, "rate_per_sec": 1});
        let path = format!("/clients/c{i}");
        admin_write(&c, b.admin_addr(), reqwest::Method::PUT, &path, Some(body)).await;
        took.push(until_runs(a.registry(), &format!("c{i}"), Some(100 + i), within).await);
        admin_write(&c, a.admin_addr(), reqwest::Method::DELETE, &path, None).await;
        took.push(until_runs(b.registry(), &format!("c{i}"), None, within).await);
    }
    took.sort();
    eprintln!(
        "notify: write through one replica to applied on the other, {} samples: median {:?}, 90th {:?}, max {:?}",
        took.len(),
        took[took.len() / 2],
        took[took.len() * 9 / 10],
        took[took.len() - 1]
    );

    // Kill both listening connections; a write made before they are back
    // arrives by the re-read that follows the reconnection...
    let pool = sqlx::PgPool::connect(&db.url).await.expect("connect");
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = 'tollgate-listen'",
    )
    .fetch_all(&pool)
    .await
    .expect("terminate listeners");
    assert_eq!(killed, [true, true]);
    let body = serde_json::json!({"client_id": "after-kill", "capacity": 7, "rate_per_sec": 1});
    admin_write(
        &c,
        a.admin_addr(),
        reqwest::Method::POST,
        "/clients",
        Some(body),
    )
    .await;
    until_runs(b.registry(), "after-kill", Some(7), Duration::from_secs(5)).await;
    // ...and once they listen again, a write arrives by its notification.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while listeners(&db).await < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "replicas never LISTENed again"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let body = serde_json::json!({"capacity": 8, "rate_per_sec": 1});
    admin_write(
        &c,
        b.admin_addr(),
        reqwest::Method::PUT,
        "/clients/after-kill",
        Some(body),
    )
    .await;
    until_runs(a.registry(), "after-kill", Some(8), within).await;
    pool.close().await;

    a.shutdown().await;
    b.shutdown().await;
    db.drop_db().await;
}
