//! One rate parser: a rate is accepted or refused, with the same message,
//! by the config, the admin API, the command line and a row of the client
//! table (issue 23, item 12).

use serde_json::Value;
use tollgate::config::Config;
use tollgate::limiter::{check_rate_per_sec, Rate};

use crate::bad_rows::write_by_hand;
use crate::support::{backend, balancer, client, closed_port, config, temp_db, url};

/// Rates written with spaces, or with a minus sign on zero: refused
/// everywhere.
const BAD_RATES: [&str; 4] = ["10 / s", " 10/s", "10/s ", "-0/s"];

fn config_problems(limits: &str) -> String {
    let yaml = format!("rate_limit:\n  default: {limits}\n");
    let problems = Config::parse(&yaml).expect_err(&yaml);
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// `tollgate clients add x --capacity 5 ARGS`: its exit code and stderr.
/// The admin address is a closed port: a refused rate never gets there.
fn cli(args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["clients", "add", "x", "--capacity", "5"])
        .args(args)
        .arg("--admin")
        .arg(format!("http://{}", closed_port()))
        .output()
        .expect("run tollgate");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn api_refusal(admin: std::net::SocketAddr, body: Value) -> String {
    let r = client()
        .post(url(admin, "/clients"))
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 400, "{body}");
    let v: Value = r.json().await.expect("JSON error");
    v["message"].as_str().expect("message").to_owned()
}

/// The `ratelimit-limit` a request with `key` is answered with: 5 when
/// the row made a client, the default (1000000) when it did not.
async fn limit_for(proxy: std::net::SocketAddr, key: &str) -> String {
    let r = client()
        .get(url(proxy, "/"))
        .header("X-API-Key", key)
        .send()
        .await
        .expect("request");
    r.headers()["x-ratelimit-limit"]
        .to_str()
        .expect("ascii")
        .to_owned()
}

#[tokio::test]
async fn a_rate_gets_one_answer_everywhere() {
    let db = temp_db();
    drop(tollgate::store::open(&db).await.expect("open the store"));
    let mut cfg = config(&[closed_port()]);
    cfg.store.url = db;
    let lb = balancer(&cfg).await;
    let admin = lb.admin_addr();

    for rate in BAD_RATES {
        let expected = rate.parse::<Rate>().expect_err(rate).to_string();
        let problems = config_problems(&format!("{{capacity: 5, rate: {rate:?}}}"));
        assert!(problems.contains(&expected), "config {rate:?}: {problems}");
        let api = api_refusal(
            admin,
            serde_json::json!({"client_id": "x", "capacity": 5, "rate": rate}),
        )
        .await;
        assert!(api.contains(&expected), "API {rate:?}: {api}");
        let (code, stderr) = cli(&["--rate", rate]);
        assert_eq!(code, Some(2), "CLI {rate:?}: {stderr}");
        assert!(stderr.contains(&expected), "CLI {rate:?}: {stderr}");
    }

    let expected = check_rate_per_sec(-0.0).expect_err("-0").to_string();
    assert!(expected.contains("must not be negative"), "{expected}");
    let problems = config_problems("{capacity: 5, rate_per_sec: -0.0}");
    assert!(problems.contains(&expected), "config -0.0: {problems}");
    let api = api_refusal(
        admin,
        serde_json::json!({"client_id": "x", "capacity": 5, "rate_per_sec": -0.0}),
    )
    .await;
    assert!(api.contains(&expected), "API -0.0: {api}");
    let (code, stderr) = cli(&["--rate-per-sec", "-0.0"]);
    assert_eq!(code, Some(2), "CLI -0.0: {stderr}");
    assert!(stderr.contains(&expected), "CLI -0.0: {stderr}");
    lb.shutdown().await;
}

/// Rows written by hand with such rates make no client: a request with
/// their key is charged as one without a key. (SQLite stores `-0.0` as
/// `0.0`; PostgreSQL keeps the sign, and its `rate_per_sec >= 0` CHECK
/// lets `-0` in.)
async fn rows_with_bad_rates_make_no_client(db_url: String, postgres: bool) {
    let mut rows = vec![
        ("spaced", 5, 1.0, Some("10 / s")),
        ("padded", 5, 1.0, Some(" 10/s")),
        ("good", 5, 1.0, Some("10/s")),
    ];
    if postgres {
        rows.push(("minus-zero", 5, -0.0, None));
    }
    write_by_hand(&db_url, &rows).await;
    let b = backend("b").await;
    let mut cfg = config(&[b.addr]);
    cfg.store.url = db_url;
    let lb = balancer(&cfg).await;
    assert_eq!(limit_for(lb.proxy_addr(), "good").await, "5");
    for (key, ..) in &rows {
        if *key != "good" {
            assert_eq!(limit_for(lb.proxy_addr(), key).await, "1000000", "{key}");
        }
    }
    lb.shutdown().await;
    b.stop().await;
}

#[tokio::test]
async fn rows_with_bad_rates_make_no_client_sqlite() {
    rows_with_bad_rates_make_no_client(temp_db(), false).await;
}

#[tokio::test]
async fn rows_with_bad_rates_make_no_client_postgres() {
    let Some(db) = crate::support::pg_database().await else {
        return;
    };
    rows_with_bad_rates_make_no_client(db.url.clone(), true).await;
    db.drop_db().await;
}
