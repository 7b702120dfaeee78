//! Crash durability of the client table, with the real binary.

use reqwest::StatusCode;

use crate::support::{closed_port, serve_yaml, spawn_serve, temp_db, url};

#[tokio::test]
async fn acknowledged_clients_survive_kill_9() {
    let db = temp_db();
    let yaml = serve_yaml(&[closed_port()], &db, "");
    let mut p = spawn_serve(&yaml);
    let c = reqwest::Client::new();
    for i in 0..30 {
        let r = c
            .post(url(p.admin, "/clients"))
            .json(&serde_json::json!({"client_id": format!("crash{i}"), "capacity": i + 1, "rate_per_sec": 1}))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    // SIGKILL: no shutdown path runs, only what was committed survives.
    p.child.kill().expect("kill -9");
    p.child.wait().expect("reap");

    let mut p = spawn_serve(&yaml);
    let list: Vec<serde_json::Value> = c
        .get(url(p.admin, "/clients"))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(list.len(), 30);
    for i in 0..30 {
        let id = format!("crash{i}");
        let row = list
            .iter()
            .find(|r| r["client_id"] == id.as_str())
            .expect("row present");
        assert_eq!(row["capacity"], i + 1);
    }
    p.child.kill().expect("kill");
    p.child.wait().expect("reap");
}
