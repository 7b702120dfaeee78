//! The client table a page at a time: the store's pages on SQLite and
//! PostgreSQL, `GET /clients?limit=&after=&search=` with its `Link`
//! header, the command line following those links, and what the status
//! page's requests cost with 10,000 clients.

use std::net::SocketAddr;

use serde_json::Value;
use tollgate::store::{ClientRow, ClientStore, Page};

use crate::support::{self, balancer, client, closed_port, config, url};

/// Ids `c00000`, `c00001`, ... (sorted as numbers and as text alike).
fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("c{i:05}")).collect()
}

/// Inserts `n` clients ([`ids`]) behind the store's back, in one
/// statement per thousand: through the API each would wait for its own
/// fsync.
async fn fill(db_url: &str, n: usize) {
    // Creates the database and its tables if they are not there yet.
    drop(tollgate::store::open(db_url).await.expect("open the store"));
    let rows: Vec<String> = ids(n)
        .iter()
        .map(|id| format!("('{id}', 10, 1.0, 0, 0)"))
        .collect();
    for chunk in rows.chunks(1000) {
        let sql = format!(
            "INSERT INTO clients (client_id, capacity, rate_per_sec, created_at, updated_at) \
             VALUES {}",
            chunk.join(", ")
        );
        if db_url.starts_with("sqlite:") {
            let pool = sqlx::SqlitePool::connect(db_url)
                .await
                .expect("open sqlite");
            sqlx::query(&sql).execute(&pool).await.expect("insert");
            pool.close().await;
        } else {
            let pool = sqlx::PgPool::connect(db_url).await.expect("open postgres");
            sqlx::query(&sql).execute(&pool).await.expect("insert");
            pool.close().await;
        }
    }
}

fn row_ids(rows: &[ClientRow]) -> Vec<&str> {
    rows.iter().map(ClientRow::client_id).collect()
}

/// The same pages from either database.
async fn store_pages(store: std::sync::Arc<dyn ClientStore>, db_url: &str) {
    fill(db_url, 25).await;
    let all = ids(25);
    let page = |after, limit, search| Page {
        after,
        limit,
        search,
    };
    let first = store
        .list_page(&page(None, 10, None))
        .await
        .expect("first page");
    assert_eq!(row_ids(&first), all[..10]);
    let second = store
        .list_page(&page(Some("c00009"), 10, None))
        .await
        .expect("second page");
    assert_eq!(row_ids(&second), all[10..20]);
    let last = store
        .list_page(&page(Some("c00019"), 10, None))
        .await
        .expect("last page");
    assert_eq!(row_ids(&last), all[20..]);
    // `after` need not be an id in the table.
    let between = store
        .list_page(&page(Some("c00004x"), 3, None))
        .await
        .expect("page");
    assert_eq!(row_ids(&between), ["c00005", "c00006", "c00007"]);
    // Search: a substring, ASCII case ignored, LIKE's wildcards literal.
    let found = store
        .list_page(&page(None, 100, Some("C0001")))
        .await
        .expect("search");
    assert_eq!(row_ids(&found), all[10..20]);
    let found = store
        .list_page(&page(Some("c00012"), 3, Some("0001")))
        .await
        .expect("search, second page");
    assert_eq!(row_ids(&found), ["c00013", "c00014", "c00015"]);
    for literal in ["%", "_", "c0000_"] {
        let found = store
            .list_page(&page(None, 100, Some(literal)))
            .await
            .expect("search");
        assert!(
            found.is_empty(),
            "{literal:?} matched {:?}",
            row_ids(&found)
        );
    }
}

#[tokio::test]
async fn sqlite_pages_the_client_table() {
    let db = support::temp_db();
    let store = tollgate::store::open(&db).await.expect("open sqlite");
    store_pages(store, &db).await;
}

#[tokio::test]
async fn postgres_pages_the_client_table() {
    let Some(db) = support::pg_database().await else {
        return;
    };
    let store = tollgate::store::open(&db.url).await.expect("open postgres");
    store_pages(store.clone(), &db.url).await;
    drop(store);
    db.drop_db().await;
}

/// `GET path` on the admin API: status, `Link` header, body.
async fn get(admin: SocketAddr, path: &str) -> (u16, Option<String>, Value) {
    let r = client().get(url(admin, path)).send().await.expect("answer");
    let status = r.status().as_u16();
    let link = r
        .headers()
        .get("link")
        .map(|v| v.to_str().expect("text").to_owned());
    let body = r.json().await.expect("JSON");
    (status, link, body)
}

fn listed(body: &Value) -> Vec<String> {
    body.as_array()
        .expect("a list")
        .iter()
        .map(|c| c["client_id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test]
async fn get_clients_pages_with_a_link_to_the_next_page() {
    let cfg = config(&[closed_port()]);
    fill(&cfg.store.url, 250).await;
    let lb = balancer(&cfg).await;
    let admin = lb.admin_addr();
    let all = ids(250);

    // Default: the first 100, and where the next page starts.
    let (s, link, body) = get(admin, "/clients").await;
    assert_eq!(s, 200);
    assert_eq!(listed(&body), all[..100]);
    assert_eq!(
        link.as_deref(),
        Some("</clients?after=c00099&limit=100>; rel=\"next\"")
    );
    // Following the links visits every client once, in order.
    let mut seen = Vec::new();
    let mut path = "/clients?limit=70".to_owned();
    loop {
        let (s, link, body) = get(admin, &path).await;
        assert_eq!(s, 200, "{path}: {body}");
        seen.extend(listed(&body));
        let Some(link) = link else { break };
        let next = link
            .strip_prefix('<')
            .and_then(|l| l.split_once('>'))
            .map(|(target, _)| target.to_owned())
            .expect("a <target>");
        path = next;
    }
    assert_eq!(seen, all);
    // A page that ends exactly at the end names no next page.
    let (_, link, body) = get(admin, "/clients?after=c00199&limit=50").await;
    assert_eq!(listed(&body), all[200..]);
    assert_eq!(link, None);
    // The search is kept in the link.
    let (_, link, body) = get(admin, "/clients?search=C0001&limit=5").await;
    assert_eq!(listed(&body), all[10..15]);
    assert_eq!(
        link.as_deref(),
        Some("</clients?after=c00014&limit=5&search=C0001>; rel=\"next\"")
    );
    let (_, _, body) = get(admin, "/clients?limit=1000").await;
    assert_eq!(listed(&body).len(), 250);

    for bad in [
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=ten",
        "limit=1&limit=2",
        "page=2",
        &format!("after={}", "a".repeat(1025)),
    ] {
        let (s, link, body) = get(admin, &format!("/clients?{bad}")).await;
        assert_eq!(s, 400, "{bad}: {body}");
        assert_eq!(body["code"], 400, "{bad}: {body}");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("query")),
            "{body}"
        );
        assert_eq!(link, None);
    }
    lb.shutdown().await;
}

/// With 10,000 clients, what one refresh of the status page reads: the
/// status document and one page of clients; and the whole table, page by
/// page, through `tollgate clients list`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_clients_cost_the_status_page_one_page() {
    let cfg = config(&[closed_port()]);
    fill(&cfg.store.url, 10_000).await;
    let lb = balancer(&cfg).await;
    let admin = lb.admin_addr();
    let size = |path: &'static str| async move {
        let r = client().get(url(admin, path)).send().await.expect("answer");
        assert_eq!(r.status(), 200, "{path}");
        r.bytes().await.expect("body").len()
    };
    let status = size("/status").await;
    let page = size("/clients").await;
    let full_page = size("/clients?limit=1000").await;
    eprintln!(
        "10,000 clients: GET /status {status} bytes, GET /clients (100) {page} bytes, \
         GET /clients?limit=1000 {full_page} bytes"
    );
    // The status document does not grow with the client table; a page of
    // clients is a page (each row ~90 bytes).
    assert!(status < 16 * 1024, "/status is {status} bytes");
    assert!(page < 16 * 1024, "/clients is {page} bytes");
    assert!(
        full_page < 128 * 1024,
        "/clients?limit=1000 is {full_page} bytes"
    );

    // The command line lists them all, following the pages.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["clients", "--admin", &format!("http://{admin}"), "list"])
            .env_remove("TOLLGATE_ADMIN_TOKEN")
            .output()
            .expect("run tollgate")
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 10_001, "header and one line per client");
    assert!(lines[1].starts_with("c00000 "), "{}", lines[1]);
    assert!(lines[10_000].starts_with("c09999 "), "{}", lines[10_000]);
    lb.shutdown().await;
}
