//! The client store's contract, run against SQLite and, when
//! `TOLLGATE_TEST_DATABASE_URL` is set, PostgreSQL: the same statements
//! must behave the same on both.

use std::sync::Arc;

use tollgate::store::{BucketState, ClientRecord, ClientStore, SnapshotDelta, StoreError};

use crate::support;

fn client(id: &str, capacity: u32, rate_per_sec: f64) -> ClientRecord {
    ClientRecord {
        client_id: id.into(),
        capacity,
        rate_per_sec,
    }
}

async fn contract(store: Arc<dyn ClientStore>) {
    assert!(store.list().await.expect("list").is_empty());
    assert_eq!(store.get("a").await.expect("get"), None);

    // Ids that would break a statement built by pasting text.
    let odd = "o'brien; DROP TABLE clients; --";
    for c in [
        client("b", 100, 10.0),
        client("a", u32::MAX, 0.5),
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
        .into_iter()
        .map(|c| c.client_id)
        .collect();
    assert_eq!(ids, ["a", "b", odd]);
    assert_eq!(
        store.get("a").await.expect("get"),
        Some(client("a", u32::MAX, 0.5))
    );

    store.update(&client("b", 7, 0.25)).await.expect("update");
    assert_eq!(
        store.get("b").await.expect("get"),
        Some(client("b", 7, 0.25))
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
