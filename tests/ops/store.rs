//! The client store's contract, run against SQLite and, when
//! `TOLLGATE_TEST_DATABASE_URL` is set, PostgreSQL: the same statements
//! must behave the same on both.

use std::collections::BTreeMap;
use std::sync::Arc;

use tollgate::limiter::{ApiKey, KeyError, Limits, LimitsError, Registry, RegistryConfig};
use tollgate::store::reload::{ReloadStats, TableSync};
use tollgate::store::{
    BucketState, Client, ClientRow, ClientStore, InvalidRow, SnapshotDelta, StoreError,
};

use crate::support;

fn id(id: &str) -> ApiKey {
    ApiKey::new(id).expect("valid id")
}

fn client(id_: &str, capacity: u32, rate_per_sec: f64) -> Client {
    Client {
        id: id(id_),
        limits: Limits::new(u64::from(capacity), rate_per_sec).expect("valid limits"),
    }
}

fn row(id_: &str, capacity: u32, rate_per_sec: f64) -> ClientRow {
    ClientRow::Client(client(id_, capacity, rate_per_sec))
}

async fn contract(store: Arc<dyn ClientStore>) {
    assert!(store.list().await.expect("list").is_empty());
    assert_eq!(store.get(&id("a")).await.expect("get"), None);

    // An id that would break a statement built by pasting text. (Ids with
    // quotes or spaces are not API keys; a row holding one, written by
    // hand, is read as rejected: see `bad_rows`.)
    let odd = "x=1--/or/1=1";
    for c in [
        client("b", 100, 10.0),
        client("a", u32::MAX, 20.5),
        client(odd, 1, 0.0),
    ] {
        store.create(&c).await.expect("create");
    }
    assert!(matches!(
        store.create(&client("a", 5, 1.0)).await,
        Err(StoreError::AlreadyExists(id)) if id == "a"
    ));
    let ids: Vec<String> = store
        .list()
        .await
        .expect("list")
        .iter()
        .map(|c| c.client_id().to_owned())
        .collect();
    assert_eq!(ids, ["a", "b", odd]);
    assert_eq!(
        store.get(&id("a")).await.expect("get"),
        Some(row("a", u32::MAX, 20.5))
    );

    store.update(&client("b", 7, 0.25)).await.expect("update");
    assert_eq!(
        store.get(&id("b")).await.expect("get"),
        Some(row("b", 7, 0.25))
    );
    assert!(matches!(
        store.update(&client("zz", 1, 1.0)).await,
        Err(StoreError::NotFound(id)) if id == "zz"
    ));

    store.delete(odd).await.expect("delete");
    assert!(matches!(
        store.delete(odd).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.list().await.expect("list").len(), 2);

    // Snapshots larger than one statement's batch, then a partial update
    // and deletions, in one transaction each.
    let states: Vec<BucketState> = (0..2500)
        .map(|i| BucketState {
            client_key: format!("ip:10.0.{}.{}", i / 256, i % 256),
            tokens: f64::from(i) + 0.125,
            saved_at_ms: 1_700_000_000_000 + i64::from(i),
        })
        .collect();
    store
        .save_bucket_states(&SnapshotDelta {
            upsert: states.clone(),
            delete: vec![],
        })
        .await
        .expect("save");
    let mut loaded = store.load_bucket_states().await.expect("load");
    loaded.sort_by_key(|s| s.saved_at_ms);
    assert_eq!(loaded, states);

    let mut changed: Vec<BucketState> = states[..10].to_vec();
    for s in &mut changed {
        s.tokens = 0.5;
    }
    store
        .save_bucket_states(&SnapshotDelta {
            upsert: changed.clone(),
            delete: states[1300..]
                .iter()
                .map(|s| s.client_key.clone())
                .collect(),
        })
        .await
        .expect("save");
    let mut loaded = store.load_bucket_states().await.expect("load");
    loaded.sort_by_key(|s| s.saved_at_ms);
    assert_eq!(loaded.len(), 1300);
    assert_eq!(&loaded[..10], &changed[..]);
    assert_eq!(&loaded[10..], &states[10..1300]);
}

#[tokio::test]
async fn sqlite_keeps_the_store_contract() {
    let store = tollgate::store::open(&support::temp_db())
        .await
        .expect("open sqlite");
    contract(store).await;
}

#[tokio::test]
async fn postgres_keeps_the_store_contract() {
    let Some(db) = support::pg_database().await else {
        return;
    };
    let store = tollgate::store::open(&db.url).await.expect("open postgres");
    contract(store.clone()).await;
    // Migrations run again on an existing schema without harm.
    drop(store);
    let again = tollgate::store::open(&db.url).await.expect("reopen");
    assert_eq!(again.list().await.expect("list").len(), 2);
    drop(again);
    db.drop_db().await;
}

/// Runs `sql` on the database at `url` behind the store's back, as an
/// operator editing the table by hand would. The text carries its values,
/// so one statement serves both databases.
async fn by_hand(url: &str, sql: &str) {
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.expect("open sqlite");
        sqlx::query(sql).execute(&pool).await.expect(sql);
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(url).await.expect("open postgres");
        sqlx::query(sql).execute(&pool).await.expect(sql);
        pool.close().await;
    }
}

async fn insert_by_hand(url: &str, client_id: &str, capacity: u32, rate_per_sec: f64) {
    let quoted = client_id.replace('\'', "''");
    by_hand(
        url,
        &format!(
            "INSERT INTO clients (client_id, capacity, rate_per_sec, created_at, updated_at) \
             VALUES ('{quoted}', {capacity}, {rate_per_sec:?}, 0, 0)"
        ),
    )
    .await;
}

/// Client-table clients in `registry`, by id, with their capacities.
fn pinned(registry: &Registry) -> BTreeMap<String, u32> {
    let mut pinned = BTreeMap::new();
    registry.for_each(|b| {
        if b.pinned {
            pinned.insert(b.key.to_string(), b.capacity);
        }
    });
    pinned
}

fn rejected(rows: &[ClientRow]) -> Vec<(&str, &InvalidRow)> {
    rows.iter()
        .filter_map(|r| match r {
            ClientRow::Rejected(r) => Some((r.client_id.as_str(), &r.reason)),
            ClientRow::Client(_) => None,
        })
        .collect()
}

/// Rows written by hand that make no client are read as rejected, with
/// their reason, beside the good rows, which load; start-up reports each
/// once, and a reload only a row that changed.
async fn bad_rows(url: &str) {
    let store = tollgate::store::open(url).await.expect("open");
    store
        .create(&client("good-1", 3, 1.0))
        .await
        .expect("create");
    store
        .create(&client("good-2", 5, 0.5))
        .await
        .expect("create");
    let odd = "o'brien; DROP TABLE clients; --";
    insert_by_hand(url, odd, 2, 1.0).await;
    insert_by_hand(url, "too-fast", 1, 2e9).await;

    let rows = store
        .list()
        .await
        .expect("one bad row does not fail the read");
    let ids: Vec<&str> = rows.iter().map(ClientRow::client_id).collect();
    assert_eq!(ids, ["good-1", "good-2", odd, "too-fast"]);
    assert_eq!(
        rejected(&rows),
        [
            (odd, &InvalidRow::Key(KeyError::BadChar('\''))),
            (
                "too-fast",
                &InvalidRow::Limits {
                    id: id("too-fast"),
                    source: LimitsError::RateTooLarge(2e9)
                }
            ),
        ]
    );
    let ClientRow::Rejected(too_fast) =
        store.get(&id("too-fast")).await.expect("get").expect("row")
    else {
        panic!("a row of rate 2e9 was accepted");
    };
    assert_eq!((too_fast.capacity, too_fast.rate_per_sec), (1, 2e9));

    let registry = Arc::new(Registry::new(RegistryConfig {
        default_limits: Limits::new(100, 1.0).expect("valid"),
        max_clients: std::num::NonZeroUsize::new(1000).expect("nonzero"),
        idle_timeout: std::time::Duration::from_secs(600),
        refill_interval: std::time::Duration::from_millis(100),
    }));
    let restored = tollgate::store::snapshot::restore(&registry, store.as_ref())
        .await
        .expect("restore");
    assert_eq!(
        (restored.stats.clients, restored.stats.rejected),
        (2, 2),
        "{:?}",
        restored.stats
    );
    assert_eq!(
        pinned(&registry),
        BTreeMap::from([("good-1".into(), 3), ("good-2".into(), 5)])
    );

    // Start-up reported the bad rows; an unchanged table reports nothing.
    let mut sync = TableSync::new(registry.clone(), store.clone(), &restored.clients);
    assert_eq!(sync.reload().await.expect("reload"), ReloadStats::default());

    // A bad row changed by hand is reported again, once.
    by_hand(
        url,
        "UPDATE clients SET rate_per_sec = 3e9 WHERE client_id = 'too-fast'",
    )
    .await;
    let changed = ReloadStats {
        rejected: 1,
        ..ReloadStats::default()
    };
    assert_eq!(sync.reload().await.expect("reload"), changed);
    assert_eq!(sync.reload().await.expect("reload"), ReloadStats::default());

    // A good row turned bad keeps the limits it had; removed, it is
    // unpinned. Good rows beside it still apply.
    by_hand(
        url,
        "UPDATE clients SET rate_per_sec = 2e9 WHERE client_id = 'good-2'",
    )
    .await;
    by_hand(
        url,
        "UPDATE clients SET capacity = 9 WHERE client_id = 'good-1'",
    )
    .await;
    assert_eq!(
        sync.reload().await.expect("reload"),
        ReloadStats {
            changed: 1,
            rejected: 1,
            ..ReloadStats::default()
        }
    );
    assert_eq!(
        pinned(&registry),
        BTreeMap::from([("good-1".into(), 9), ("good-2".into(), 5)])
    );
    by_hand(url, "DELETE FROM clients WHERE client_id = 'good-2'").await;
    assert_eq!(
        sync.reload().await.expect("reload"),
        ReloadStats {
            removed: 1,
            ..ReloadStats::default()
        }
    );
    assert_eq!(pinned(&registry), BTreeMap::from([("good-1".into(), 9)]));
}

#[tokio::test]
async fn sqlite_rejects_a_bad_row_and_loads_the_good_ones() {
    bad_rows(&support::temp_db()).await;
}

#[tokio::test]
async fn postgres_rejects_a_bad_row_and_loads_the_good_ones() {
    let Some(db) = support::pg_database().await else {
        return;
    };
    bad_rows(&db.url).await;
    db.drop_db().await;
}

/// The limit a request with `key` is charged against, as seen through `lb`.
async fn limit_seen(c: &reqwest::Client, lb: std::net::SocketAddr, key: &str) -> String {
    let r = c
        .get(support::url(lb, "/"))
        .header("x-api-key", key)
        .send()
        .await
        .expect("request");
    r.headers()["x-ratelimit-limit"]
        .to_str()
        .expect("ascii")
        .to_owned()
}

/// Polls until `lb` charges `key` against `want`; replicas apply table
/// changes at their next reload, so there is nothing to await directly.
async fn until_limit(c: &reqwest::Client, lb: std::net::SocketAddr, key: &str, want: &str) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let seen = limit_seen(c, lb, key).await;
        if seen == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replica still charges {key} against {seen}, not {want}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn replicas_sharing_postgres_pick_up_each_others_admin_writes() {
    let Some(db) = support::pg_database().await else {
        return;
    };
    let b = support::backend("solo").await;
    let mut cfg = support::config(&[b.addr]);
    cfg.store.url = db.url.clone();
    cfg.store.reload_interval = std::time::Duration::from_millis(100);
    let a = support::balancer(&cfg).await;
    let z = support::balancer(&cfg).await;
    let c = support::client();
    let default = "1000000";

    // Written through replica a, applied by replica z.
    let r = c
        .post(support::url(a.admin_addr(), "/clients"))
        .json(&serde_json::json!({"client_id": "team-7", "capacity": 3, "rate_per_sec": 1}))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), reqwest::StatusCode::CREATED);
    assert_eq!(limit_seen(&c, a.proxy_addr(), "team-7").await, "3");
    until_limit(&c, z.proxy_addr(), "team-7", "3").await;

    // Written through z, applied by a.
    let r = c
        .put(support::url(z.admin_addr(), "/clients/team-7"))
        .json(&serde_json::json!({"capacity": 9, "rate_per_sec": 1}))
        .send()
        .await
        .expect("PUT");
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    until_limit(&c, a.proxy_addr(), "team-7", "9").await;

    // Deleted through a: z charges the key to the caller's IP again.
    let r = c
        .delete(support::url(a.admin_addr(), "/clients/team-7"))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(r.status(), reqwest::StatusCode::NO_CONTENT);
    until_limit(&c, z.proxy_addr(), "team-7", default).await;
    assert_eq!(limit_seen(&c, a.proxy_addr(), "team-7").await, default);

    a.shutdown().await;
    z.shutdown().await;
    db.drop_db().await;
}

#[tokio::test]
async fn a_database_recreated_empty_is_migrated_again_and_used() {
    let Some(db) = support::pg_database().await else {
        return;
    };
    let mut cfg = support::config(&[support::closed_port()]);
    cfg.store.url = db.url.clone();
    let lb = support::balancer(&cfg).await;
    let c = support::client();
    let clients = support::url(lb.admin_addr(), "/clients");
    let r = c
        .post(&clients)
        .json(&serde_json::json!({"client_id": "before", "capacity": 3, "rate_per_sec": 1}))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), reqwest::StatusCode::CREATED);

    db.recreate().await;
    // The pool's connections to the dropped database were cut; a request
    // may meet one of them first. After that the tables are back.
    let mut failures = 0;
    let listed = loop {
        let r = c.get(&clients).send().await.expect("GET");
        if r.status() == reqwest::StatusCode::OK {
            break r.json::<serde_json::Value>().await.expect("JSON");
        }
        failures += 1;
        assert!(
            failures < 5,
            "the admin API still fails after the database came back: {}",
            r.text().await.unwrap_or_default()
        );
    };
    assert_eq!(listed, serde_json::json!([]));
    let r = c
        .post(&clients)
        .json(&serde_json::json!({"client_id": "after", "capacity": 4, "rate_per_sec": 1}))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), reqwest::StatusCode::CREATED);
    assert_eq!(lb.store().list().await.expect("list").len(), 1);
    lb.shutdown().await;
    db.drop_db().await;
}

/// A client given `N/unit` is stored and read back as written, restored
/// with its exact rate, and a change of it made in the table is picked up
/// by the reload; a rate that is no rate makes the row rejected.
async fn rates_as_written(url: &str) {
    use std::time::Duration;
    use tollgate::limiter::{ClientKey, Rate};

    let rate = |s: &str| s.parse::<Rate>().expect("rate");
    let store = tollgate::store::open(url).await.expect("open");
    let daily = Client {
        id: id("daily"),
        limits: Limits::with_rate(1, rate("1/day")).expect("valid"),
    };
    store.create(&daily).await.expect("create");
    let row = store.get(&id("daily")).await.expect("get").expect("row");
    assert_eq!(row, ClientRow::Client(daily.clone()));
    assert_eq!(row.rate().as_deref(), Some("1/day"));
    assert_eq!(row.rate_per_sec(), 1.0 / 86_400.0);
    // Given per second, the row has no rate as written.
    store
        .update(&client("daily", 1, 2.0))
        .await
        .expect("update");
    let row = store.get(&id("daily")).await.expect("get").expect("row");
    assert_eq!((row.rate(), row.rate_per_sec()), (None, 2.0));
    store.update(&daily).await.expect("update");

    let registry = Arc::new(Registry::new(RegistryConfig {
        default_limits: Limits::new(100, 1.0).expect("valid"),
        max_clients: std::num::NonZeroUsize::new(1000).expect("nonzero"),
        idle_timeout: Duration::from_secs(600),
        refill_interval: Duration::from_millis(100),
    }));
    let restored = tollgate::store::snapshot::restore(&registry, store.as_ref())
        .await
        .expect("restore");
    assert_eq!(restored.stats.clients, 1);
    let key = ClientKey::api("daily").expect("key");
    let interval = |registry: &Registry| {
        registry
            .check(&key)
            .expect("room")
            .token_interval()
            .expect("a rate")
    };
    assert_eq!(interval(&registry), Duration::from_secs(86_400));

    let mut sync = TableSync::new(registry.clone(), store.clone(), &restored.clients);
    by_hand(
        url,
        "UPDATE clients SET rate = '1/hour' WHERE client_id = 'daily'",
    )
    .await;
    assert_eq!(
        sync.reload().await.expect("reload"),
        ReloadStats {
            changed: 1,
            ..ReloadStats::default()
        }
    );
    assert_eq!(interval(&registry), Duration::from_secs(3600));
    assert_eq!(sync.reload().await.expect("reload"), ReloadStats::default());

    // A rate that is no rate: rejected, the client keeps its limits.
    by_hand(
        url,
        "UPDATE clients SET rate = '5/week' WHERE client_id = 'daily'",
    )
    .await;
    let rows = store.list().await.expect("list");
    assert!(matches!(
        rejected(&rows)[..],
        [(
            "daily",
            InvalidRow::Limits {
                source: LimitsError::BadRate(_),
                ..
            }
        )]
    ));
    assert_eq!(
        sync.reload().await.expect("reload"),
        ReloadStats {
            rejected: 1,
            ..ReloadStats::default()
        }
    );
    assert_eq!(interval(&registry), Duration::from_secs(3600));
}

#[tokio::test]
async fn sqlite_keeps_rates_as_written() {
    rates_as_written(&support::temp_db()).await;
}

#[tokio::test]
async fn postgres_keeps_rates_as_written() {
    let Some(db) = support::pg_database().await else {
        return;
    };
    rates_as_written(&db.url).await;
    db.drop_db().await;
}

/// PostgreSQL that cannot be reached at start-up is reported with its
/// host and port and the cause, not as "pool timed out".
#[tokio::test]
async fn postgres_unreachable_at_start_names_the_address_and_the_cause() {
    use std::time::Duration;
    let Ok(server) = std::env::var("TOLLGATE_TEST_DATABASE_URL") else {
        eprintln!("skipped: TOLLGATE_TEST_DATABASE_URL is not set");
        return;
    };
    // host:port of the test server, for a login it refuses.
    let authority = server
        .split_once("://")
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|a| a.rsplit_once('@').map_or(Some(a), |(_, hp)| Some(hp)))
        .expect("host:port in TOLLGATE_TEST_DATABASE_URL")
        .to_owned();
    let refused = support::closed_port();
    // Accepts connections (the kernel does) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    let cases = [
        (
            format!("postgres://postgres@{refused}/test"),
            format!("{refused}: connection refused"),
        ),
        (
            format!("postgres://no_such_role_tollgate:s3cr3tPW@{authority}/test"),
            format!("{authority}: authentication failed"),
        ),
        (
            "postgres://postgres@db.tollgate.invalid:5432/test".to_owned(),
            "db.tollgate.invalid:5432: DNS lookup of \"db.tollgate.invalid\" failed".to_owned(),
        ),
        (
            format!("postgres://postgres@{silent_addr}/test"),
            format!("{silent_addr}: no answer within 1s"),
        ),
    ];
    for (url, says) in cases {
        let e = tollgate::store::open_with_timeout(&url, Duration::from_secs(1))
            .await
            .expect_err(&url)
            .to_string();
        assert!(
            e.starts_with("cannot connect to PostgreSQL at ") && e.contains(&says),
            "{url}: {e}"
        );
        assert!(!e.contains("s3cr3tPW"), "{url}: {e}");
    }

    // The same through start-up, where the operator reads it.
    let mut cfg = support::config(&[support::closed_port()]);
    cfg.store.url = format!("postgres://tollgate:s3cr3tPW@{refused}/test");
    cfg.store.timeout = Duration::from_secs(1);
    let e = tollgate::app::start(&cfg)
        .await
        .expect_err("no database, no start")
        .to_string();
    assert_eq!(
        e,
        format!(
            "client table (postgres://tollgate:***@{refused}/test): cannot connect to PostgreSQL \
             at {refused}: connection refused (is PostgreSQL running and listening there?)"
        )
    );
    drop(silent);
}
