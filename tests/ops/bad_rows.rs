//! Rows of the client table written by hand: invalid limits, ids that are
//! no client_id, ids with control characters. Each is reported at start
//! (WARN, check-style, the id escaped), skipped, shown by the API,
//! removable with `DELETE /clients/{id}`, and printed escaped by the
//! command line.

use serde_json::Value;

use crate::support::{self, balancer, client, closed_port, config, url};

/// An id with an ANSI colour sequence and a NUL in it.
const ESCAPED_ID: &str = "esc\u{1b}[31mred\u{0}nul";

/// Rows that make no client: (id, capacity, rate_per_sec, rate). The
/// PostgreSQL schema refuses a capacity below 1 and a negative rate, and
/// its text cannot hold a NUL, so it gets the rows it can store.
fn rows(postgres: bool) -> Vec<(&'static str, i64, f64, Option<&'static str>)> {
    let mut rows = vec![
        ("a b", 5, 1.0, None),
        ("weekly", 5, 1.0, Some("5/week")),
        ("ansi\u{1b}[2J", 5, 1.0, None),
    ];
    if !postgres {
        rows.extend([
            ("zero-cap", 0, 1.0, None),
            ("negative", 5, -1.0, None),
            (ESCAPED_ID, 5, 1.0, None),
        ]);
    }
    rows
}

/// Writes `rows` into the client table at `db_url` behind tollgate's
/// back (the tables made first), with bound values: the ids hold bytes no
/// SQL literal should.
pub(crate) async fn write_by_hand(db_url: &str, rows: &[(&str, i64, f64, Option<&str>)]) {
    drop(tollgate::store::open(db_url).await.expect("open the store"));
    let sql_sqlite = "INSERT INTO clients (client_id, capacity, rate_per_sec, rate, created_at, \
                      updated_at) VALUES (?, ?, ?, ?, 0, 0)";
    let sql_pg = "INSERT INTO clients (client_id, capacity, rate_per_sec, rate, created_at, \
                  updated_at) VALUES ($1, $2, $3, $4, 0, 0)";
    if db_url.starts_with("sqlite:") {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(db_url)
            .await
            .expect("open sqlite");
        // As an operator in the sqlite3 shell can: the schema's CHECKs
        // (capacity >= 1, rate_per_sec >= 0) are not what this is about.
        sqlx::query("PRAGMA ignore_check_constraints = ON")
            .execute(&mut conn)
            .await
            .expect("pragma");
        for (id, capacity, rate_per_sec, rate) in rows {
            sqlx::query(sql_sqlite)
                .bind(*id)
                .bind(*capacity)
                .bind(*rate_per_sec)
                .bind(*rate)
                .execute(&mut conn)
                .await
                .expect("insert");
        }
        conn.close().await.expect("close");
    } else {
        let pool = sqlx::PgPool::connect(db_url).await.expect("open postgres");
        for (id, capacity, rate_per_sec, rate) in rows {
            sqlx::query(sql_pg)
                .bind(*id)
                .bind(*capacity)
                .bind(*rate_per_sec)
                .bind(*rate)
                .execute(&pool)
                .await
                .expect("insert");
        }
        pool.close().await;
    }
}

/// `id` as one path segment: every byte but letters and digits
/// percent-encoded.
fn segment(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Starts a balancer on `db_url` with `rows` written by hand; each is
/// listed by the API and removed by `DELETE /clients/{id}` (204).
async fn every_row_can_be_deleted(db_url: String, postgres: bool) {
    let rows = rows(postgres);
    write_by_hand(&db_url, &rows).await;
    let mut cfg = config(&[closed_port()]);
    cfg.store.url = db_url;
    let lb = balancer(&cfg).await;
    let c = client();
    let admin = lb.admin_addr();
    let listed: Value = c
        .get(url(admin, "/clients?limit=1000"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("JSON");
    let mut ids: Vec<&str> = listed
        .as_array()
        .expect("a list")
        .iter()
        .map(|c| c["client_id"].as_str().expect("id"))
        .collect();
    ids.sort_unstable();
    let mut written: Vec<&str> = rows.iter().map(|r| r.0).collect();
    written.sort_unstable();
    assert_eq!(ids, written, "every row is shown as written");
    for (id, ..) in &rows {
        let r = c
            .delete(url(admin, &format!("/clients/{}", segment(id))))
            .send()
            .await
            .expect("delete");
        let status = r.status().as_u16();
        assert_eq!(
            status,
            204,
            "{id:?}: {}",
            r.text().await.unwrap_or_default()
        );
    }
    let listed: Value = c
        .get(url(admin, "/clients"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("JSON");
    assert_eq!(listed, serde_json::json!([]));
    let r = c
        .delete(url(admin, "/clients/a%20b"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 404, "gone");
    lb.shutdown().await;
}

#[tokio::test]
async fn sqlite_rows_written_by_hand_can_be_deleted() {
    every_row_can_be_deleted(support::temp_db(), false).await;
}

#[tokio::test]
async fn postgres_rows_written_by_hand_can_be_deleted() {
    let Some(db) = support::pg_database().await else {
        return;
    };
    every_row_can_be_deleted(db.url.clone(), true).await;
    db.drop_db().await;
}

/// Whether `text` holds a character a terminal may act on.
fn has_control(text: &str) -> bool {
    text.chars().any(|c| c.is_control() && c != '\n')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_are_reported_at_start_and_printed_escaped() {
    let db = support::temp_db();
    let rows = rows(false);
    write_by_hand(&db, &rows).await;
    let p = support::spawn_serve(&support::serve_yaml(&[closed_port()], &db, ""));

    // One WARN line per row, check-style, naming the id with its control
    // characters escaped.
    let mut problems = Vec::new();
    for line in &p.startup {
        if line["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("skipping an invalid row"))
        {
            assert_eq!(line["level"], "WARN", "{line}");
            let id = line["client_id"].as_str().expect("client_id");
            assert!(!has_control(id), "{line}");
            problems.push(line["problem"].as_str().expect("problem").to_owned());
        }
    }
    problems.sort();
    // Where (the id, escaped), then why, as `tollgate check` words it.
    let expected = [
        ("clients[\"a b\"].client_id: ", "(found ' ')"),
        ("clients[\"ansi\\x1b[2J\"].client_id: ", "may only contain"),
        (
            "clients[\"esc\\x1b[31mred\\x00nul\"].client_id: ",
            "may only contain",
        ),
        ("clients[\"negative\"]: ", "rate_per_sec"),
        ("clients[\"weekly\"]: ", "5/week"),
        ("clients[\"zero-cap\"]: ", "capacity"),
    ];
    assert_eq!(problems.len(), expected.len(), "{problems:#?}");
    for (problem, (start, why)) in problems.iter().zip(expected) {
        assert!(
            problem.starts_with(start) && problem.contains(why),
            "{problem:?} is not {start:?}...{why:?}"
        );
    }

    // The command line shows the ids escaped, in its table, its JSON and
    // its messages.
    let admin = format!("http://{}", p.admin);
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["clients", "--admin", &admin])
            .args(args)
            .env_remove("TOLLGATE_ADMIN_TOKEN")
            .output()
            .expect("run tollgate");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = cli(&["list"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!has_control(&out), "{out:?}");
    assert!(out.contains("esc\\x1b[31mred\\x00nul"), "{out}");
    let (code, out, err) = cli(&["--json", "list"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!has_control(&out), "{out:?}");
    let listed: Value = serde_json::from_str(&out).expect("still JSON");
    assert!(
        listed
            .as_array()
            .expect("a list")
            .iter()
            .any(|c| c["client_id"] == ESCAPED_ID),
        "{listed}"
    );
    // (A NUL cannot be an argument; the ESC is.)
    let (code, out, err) = cli(&["delete", "ansi\u{1b}[2J"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out.trim_end(),
        "deleted ansi\\x1b[2J: back to the default limits"
    );
    let (code, _, err) = cli(&["delete", "ansi\u{1b}[2J"]);
    assert_eq!(code, Some(1));
    assert!(!has_control(&err), "{err:?}");
    let mut child = p.child;
    let _ = child.kill();
    let _ = child.wait();
}
