//! The admin API over HTTP, the client table behind it, and persistence.

use std::collections::BTreeMap;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tollgate::limiter::{ClientKey, Limits};

use crate::support::{self, backends, balancer, client, config, url};

async fn send(req: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let r = req.send().await.expect("request");
    let status = r.status();
    let text = r.text().await.expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
    };
    (status, body)
}

#[tokio::test]
async fn crud_round_trip_and_limits_apply_at_once() {
    let bs = backends(1).await;
    let mut cfg = config(&[bs[0].addr]);
    cfg.rate_limit.default = Limits::new(100, 0.0).expect("valid");
    let lb = balancer(&cfg).await;
    let c = client();
    let admin = |p: &str| url(lb.admin_addr(), p);

    let (s, body) = send(
        c.post(admin("/clients"))
            .json(&json!({"client_id":"user1","capacity":2,"rate_per_sec":0})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(
        body,
        json!({"client_id":"user1","capacity":2,"rate_per_sec":0.0,"rate":null,"tokens":2.0})
    );

    // Applied to the very next request carrying the key.
    let proxied = |key: &'static str| {
        c.get(url(lb.proxy_addr(), "/"))
            .header("x-api-key", key)
            .send()
    };
    assert_eq!(
        proxied("user1").await.expect("req").status(),
        StatusCode::OK
    );
    assert_eq!(
        proxied("user1").await.expect("req").status(),
        StatusCode::OK
    );
    assert_eq!(
        proxied("user1").await.expect("req").status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    let (s, body) = send(c.get(admin("/clients/user1"))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["tokens"], json!(0.0));

    let (s, body) = send(
        c.put(admin("/clients/user1"))
            .json(&json!({"capacity":5,"rate_per_sec":1.5})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body["capacity"], 5);
    assert_eq!(body["rate_per_sec"], 1.5);

    let (s, body) = send(c.get(admin("/clients"))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body.as_array().map(Vec::len), Some(1));
    assert_eq!(body[0]["client_id"], "user1");

    let (s, body) = send(c.delete(admin("/clients/user1"))).await;
    assert_eq!((s, body), (StatusCode::NO_CONTENT, Value::Null));
    let (s, body) = send(c.get(admin("/clients/user1"))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], 404);
    // Deleted: the key is no longer a client, requests are charged by IP.
    assert!(!lb.registry().unpin(&ClientKey::api("user1").expect("key")));

    let (s, body) = send(c.get(admin("/backends"))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body[0]["url"], format!("http://{}", bs[0].addr));
    assert_eq!(body[0]["healthy"], true);
    let (s, body) = send(c.get(admin("/healthz"))).await;
    assert_eq!((s, body["status"].clone()), (StatusCode::OK, json!("ok")));
    lb.shutdown().await;
}

#[tokio::test]
async fn every_bad_input_gets_a_4xx_json_error_and_writes_nothing() {
    let lb = balancer(&config(&[support::closed_port()])).await;
    let c = client();
    let admin = |p: &str| url(lb.admin_addr(), p);
    let (s, _) = send(
        c.post(admin("/clients"))
            .json(&json!({"client_id":"taken","capacity":1,"rate_per_sec":1})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);

    let long_id = "x".repeat(257);
    let cases: Vec<(&str, reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (
            "unknown field",
            c.post(admin("/clients"))
                .json(&json!({"client_id":"a","capacity":1,"rate_per_sec":1,"burst":5})),
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
        (
            "missing field",
            c.post(admin("/clients"))
                .json(&json!({"client_id":"a","capacity":1})),
            StatusCode::BAD_REQUEST,
            "rate_per_sec",
        ),
        (
            "capacity as string",
            c.post(admin("/clients"))
                .json(&json!({"client_id":"a","capacity":"10","rate_per_sec":1})),
            StatusCode::BAD_REQUEST,
            "capacity",
        ),
        (
            "fractional capacity",
            c.post(admin("/clients"))
                .json(&json!({"client_id":"a","capacity":1.5,"rate_per_sec":1})),
            StatusCode::BAD_REQUEST,
            "capacity",
        ),
        (
            "zero capacity",
            c.post(admin("/clients"))
                .json(&json!({"client_id":"a","capacity":0,"rate_per_sec":1})),
            StatusCode::BAD_REQUEST,
            "capacity",
        ),
        (
            "negative rate",
            c.post(admin("/clients"))
                .json(&json!({"client_id":"a","capacity":1,"rate_per_sec":-1})),
            StatusCode::BAD_REQUEST,
            "rate_per_sec",
        ),
        (
            "huge rate",
            c.post(admin("/clients"))
                .json(&json!({"client_id":"a","capacity":1,"rate_per_sec":1e12})),
            StatusCode::BAD_REQUEST,
            "rate_per_sec",
        ),
        (
            "bad id chars",
            c.post(admin("/clients"))
                .json(&json!({"client_id":"a b","capacity":1,"rate_per_sec":1})),
            StatusCode::BAD_REQUEST,
            "client_id",
        ),
        (
            "long id",
            c.post(admin("/clients"))
                .json(&json!({"client_id":long_id,"capacity":1,"rate_per_sec":1})),
            StatusCode::BAD_REQUEST,
            "client_id",
        ),
        (
            "empty id",
            c.post(admin("/clients"))
                .json(&json!({"client_id":"","capacity":1,"rate_per_sec":1})),
            StatusCode::BAD_REQUEST,
            "client_id",
        ),
        (
            "malformed JSON",
            c.post(admin("/clients"))
                .header("content-type", "application/json")
                .body("{\"client_id\":"),
            StatusCode::BAD_REQUEST,
            "",
        ),
        (
            "not JSON",
            c.post(admin("/clients"))
                .header("content-type", "text/plain")
                .body("client_id=a"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "application/json",
        ),
        (
            "too large",
            c.post(admin("/clients"))
                .header("content-type", "application/json")
                .body(format!("{{\"client_id\":\"{}\"}}", "a".repeat(70_000))),
            StatusCode::PAYLOAD_TOO_LARGE,
            "64",
        ),
        (
            "duplicate",
            c.post(admin("/clients"))
                .json(&json!({"client_id":"taken","capacity":1,"rate_per_sec":1})),
            StatusCode::CONFLICT,
            "exists",
        ),
        (
            "update unknown",
            c.put(admin("/clients/nobody"))
                .json(&json!({"capacity":1,"rate_per_sec":1})),
            StatusCode::NOT_FOUND,
            "not found",
        ),
        (
            "update with id field",
            c.put(admin("/clients/taken"))
                .json(&json!({"client_id":"x","capacity":1,"rate_per_sec":1})),
            StatusCode::BAD_REQUEST,
            "unknown field",
        ),
        (
            "delete unknown",
            c.delete(admin("/clients/nobody")),
            StatusCode::NOT_FOUND,
            "not found",
        ),
        (
            "get bad id",
            c.get(admin("/clients/a%20b")),
            StatusCode::BAD_REQUEST,
            "client_id",
        ),
        (
            "unknown route",
            c.get(admin("/nope")),
            StatusCode::NOT_FOUND,
            "route",
        ),
        (
            "wrong method",
            c.patch(admin("/clients")),
            StatusCode::METHOD_NOT_ALLOWED,
            "method",
        ),
    ];
    for (what, req, want, says) in cases {
        let r = req.send().await.expect("request");
        let status = r.status();
        assert_eq!(
            r.headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap_or("")),
            Some("application/json"),
            "{what}"
        );
        let body: Value = r
            .json()
            .await
            .unwrap_or_else(|e| panic!("{what}: body not JSON: {e}"));
        assert_eq!(status, want, "{what}: {body}");
        assert_eq!(body["code"], want.as_u16(), "{what}");
        let message = body["message"].as_str().unwrap_or("");
        assert!(
            message.contains(says),
            "{what}: message {message:?} should mention {says:?}"
        );
    }
    // Nothing half-written: only the one valid client exists, unchanged.
    let (_, list) = send(c.get(admin("/clients"))).await;
    assert_eq!(
        list,
        json!([{"client_id":"taken","capacity":1,"rate_per_sec":1.0,"rate":null,"tokens":1.0}])
    );
    assert_eq!(lb.registry().pinned_len(), 1);
    lb.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_leave_table_and_buckets_in_agreement() {
    let lb = balancer(&config(&[support::closed_port()])).await;
    let c = client();
    let admin = lb.admin_addr();
    let tasks: Vec<_> = (0..200u32)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                let id = format!("c{}", i % 20);
                let u = url(admin, "/clients");
                let one = url(admin, &format!("/clients/{id}"));
                let status = match i % 3 {
                    0 => {
                        c.post(u)
                            .json(&json!({"client_id":id,"capacity":i + 1,"rate_per_sec":1}))
                            .send()
                            .await
                    }
                    1 => {
                        c.put(one)
                            .json(&json!({"capacity":i + 1,"rate_per_sec":2}))
                            .send()
                            .await
                    }
                    _ => c.delete(one).send().await,
                }
                .expect("request")
                .status();
                assert!(
                    matches!(status.as_u16(), 201 | 200 | 204 | 404 | 409),
                    "unexpected {status}"
                );
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    let table: BTreeMap<String, u32> = lb
        .store()
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|r| (r.client_id().to_owned(), r.capacity()))
        .collect();
    let mut live = BTreeMap::new();
    lb.registry().for_each(|b| {
        if b.pinned {
            live.insert(b.key.to_string(), b.capacity);
        }
    });
    assert_eq!(table, live);
    lb.shutdown().await;
}

#[tokio::test]
async fn bucket_levels_survive_a_restart_with_owed_refill() {
    let bs = backends(1).await;
    let mut cfg = config(&[bs[0].addr]);
    cfg.rate_limit.default = Limits::new(10, 0.5).expect("valid");
    let c = client();

    let lb = balancer(&cfg).await;
    let (s, _) = send(
        c.post(url(lb.admin_addr(), "/clients"))
            .json(&json!({"client_id":"user1","capacity":10,"rate_per_sec":0.1})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    for _ in 0..7 {
        let r = c
            .get(url(lb.proxy_addr(), "/"))
            .header("x-api-key", "user1")
            .send()
            .await
            .expect("req");
        assert_eq!(r.status(), StatusCode::OK);
    }
    for _ in 0..4 {
        c.get(url(lb.proxy_addr(), "/")).send().await.expect("req");
    }
    let before = std::time::Instant::now();
    lb.shutdown().await; // writes the final snapshot

    let lb = balancer(&cfg).await;
    let down = before.elapsed().as_secs_f64();
    let (s, body) = send(c.get(url(lb.admin_addr(), "/clients/user1"))).await;
    assert_eq!(s, StatusCode::OK);
    let tokens = body["tokens"].as_f64().expect("tokens");
    // 3 left, plus 0.1/s for the downtime, plus up to one refill tick.
    assert!(
        tokens >= 3.0 && tokens <= 3.0 + 0.1 * (down + 1.0),
        "{tokens} after {down}s"
    );
    // The IP client (default 10 at 0.5/s) had 6 left.
    let ip_tokens = lb
        .registry()
        .tokens(&ClientKey::Ip("127.0.0.1".parse().expect("ip")))
        .expect("restored");
    assert!(
        ip_tokens >= 6.0 && ip_tokens <= 6.0 + 0.5 * (down + 1.0),
        "{ip_tokens}"
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn bearer_token_is_required_when_configured() {
    let mut cfg = config(&[support::closed_port()]);
    cfg.admin.token = Some("s3cret-token-0123456789".into());
    let lb = balancer(&cfg).await;
    let c = client();
    let u = url(lb.admin_addr(), "/clients");
    let (s, body) = send(c.get(&u)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(body["code"], 401);
    let (s, _) = send(c.get(&u).bearer_auth("wrong-token-0123456789")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = send(
        c.post(&u)
            .json(&json!({"client_id":"a","capacity":1,"rate_per_sec":1})),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(
        lb.store().list().await.expect("list").len(),
        0,
        "refused writes write nothing"
    );
    let (s, body) = send(c.get(&u).bearer_auth("s3cret-token-0123456789")).await;
    assert_eq!((s, body), (StatusCode::OK, json!([])));
    lb.shutdown().await;
}

#[tokio::test]
async fn openapi_document_matches_the_routes() {
    let lb = balancer(&config(&[support::closed_port()])).await;
    let c = client();
    let (s, doc) = send(c.get(url(lb.admin_addr(), "/openapi.json"))).await;
    assert_eq!(s, StatusCode::OK);
    let paths = doc["paths"].as_object().expect("paths");
    let all = ["get", "post", "put", "delete", "patch"];
    let mut documented = 0;
    for (path, ops) in paths {
        let concrete = path
            .replace("{id}", "probe")
            .replace("{pool}", "probe")
            .replace("{name}", "probe");
        for method in all {
            let req = c.request(
                method.to_uppercase().parse().expect("method"),
                url(lb.admin_addr(), &concrete),
            );
            let status = req.send().await.expect("request").status();
            if ops.get(method).is_some() {
                documented += 1;
                // /clients/probe may be 404 (no such client), never a
                // missing route.
                // /backends/probe/drain is 404 too (no such backend).
                let route_missing = status == StatusCode::NOT_FOUND
                    && !path.contains("{id}")
                    && !path.contains("{name}");
                assert!(
                    status != StatusCode::METHOD_NOT_ALLOWED && !route_missing,
                    "{method} {path} is documented but answered {status}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is served but not documented"
                );
            }
        }
    }
    assert_eq!(documented, 18, "the router serves 18 method+path pairs");
    // The routes the router serves are all in the document.
    for route in [
        "/clients",
        "/clients/{id}",
        "/backends",
        "/backends/{name}/drain",
        "/backends/{name}/enable",
        "/pools",
        "/pools/{pool}/backends/{name}/drain",
        "/pools/{pool}/backends/{name}/enable",
        "/routes",
        "/healthz",
        "/metrics",
        "/openapi.json",
        "/reload",
        "/status",
        "/",
    ] {
        assert!(
            paths.contains_key(route),
            "{route} missing from the document"
        );
    }
    lb.shutdown().await;
}

/// Asserts a JSON error body `{"code":status,"message":...}` with a JSON
/// content type, and returns the message.
async fn json_error(r: reqwest::Response, want: StatusCode, what: &str) -> String {
    let status = r.status();
    let ctype = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let text = r.text().await.expect("body");
    assert_eq!(status, want, "{what}: {text}");
    assert_eq!(ctype, "application/json", "{what}: {text}");
    let body: Value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{what}: not JSON: {text}"));
    assert_eq!(body["code"], want.as_u16(), "{what}: {text}");
    body["message"].as_str().expect("message").to_owned()
}

#[tokio::test]
async fn errors_from_extractors_and_routing_are_json() {
    let lb = balancer(&config(&[support::closed_port()])).await;
    let c = client();
    let admin = |p: &str| url(lb.admin_addr(), p);
    let cases: Vec<(&str, reqwest::RequestBuilder, StatusCode)> = vec![
        (
            "path not UTF-8",
            c.get(admin("/clients/%FF")),
            StatusCode::BAD_REQUEST,
        ),
        (
            "path not UTF-8 on PUT",
            c.put(admin("/clients/%FF"))
                .json(&json!({"capacity":1,"rate_per_sec":1})),
            StatusCode::BAD_REQUEST,
        ),
        (
            "path not UTF-8 on DELETE",
            c.delete(admin("/clients/%FF")),
            StatusCode::BAD_REQUEST,
        ),
        (
            "no body, no content type",
            c.post(admin("/clients")),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "empty JSON body",
            c.post(admin("/clients"))
                .header("content-type", "application/json"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "JSON of the wrong shape",
            c.post(admin("/clients"))
                .header("content-type", "application/json")
                .body("[1,2]"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "body not UTF-8",
            c.post(admin("/clients"))
                .header("content-type", "application/json")
                .body(vec![0xff, 0xfe]),
            StatusCode::BAD_REQUEST,
        ),
        (
            "wrong content type on PUT",
            c.put(admin("/clients/a"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("capacity=1"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "unknown route",
            c.get(admin("/a/b/c")),
            StatusCode::NOT_FOUND,
        ),
        (
            "unknown route, other method",
            c.delete(admin("/nothing")),
            StatusCode::NOT_FOUND,
        ),
        (
            "wrong method",
            c.delete(admin("/backends")),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "trailing slash",
            c.get(admin("/clients/")),
            StatusCode::NOT_FOUND,
        ),
    ];
    for (what, req, want) in cases {
        let r = req.send().await.expect("request");
        json_error(r, want, what).await;
    }
    lb.shutdown().await;
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let mut cfg = config(&[support::closed_port()]);
    let token = "s3cret-token-0123456789";
    cfg.admin.token = Some(token.into());
    let lb = balancer(&cfg).await;
    let c = client();
    let u = url(lb.admin_addr(), "/clients");
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let r = c
            .get(&u)
            .header("authorization", format!("{scheme} {token}"))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), StatusCode::OK, "scheme {scheme:?}");
    }
    for wrong in [
        format!("Basic {token}"),
        format!("Bearer{token}"),
        token.to_string(),
    ] {
        let r = c
            .get(&u)
            .header("authorization", wrong.as_str())
            .send()
            .await
            .expect("request");
        json_error(r, StatusCode::UNAUTHORIZED, &wrong).await;
    }
    lb.shutdown().await;
}

#[tokio::test]
async fn openapi_document_says_what_the_server_does() {
    // No token: the document asks for no authentication.
    let lb = balancer(&config(&[support::closed_port()])).await;
    let c = client();
    let (s, doc) = send(c.get(url(lb.admin_addr(), "/openapi.json"))).await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc.get("security").is_none(), "{}", doc["security"]);
    assert!(
        doc["components"].get("securitySchemes").is_none(),
        "{}",
        doc["components"]
    );
    // The path parameter is the body's client_id, same rules; but DELETE
    // takes any id, so that a row written by hand can be removed.
    let mut body_id = doc["components"]["schemas"]["NewClient"]["properties"]["client_id"].clone();
    body_id
        .as_object_mut()
        .expect("a schema")
        .remove("description");
    for method in ["get", "put"] {
        let param = &doc["paths"]["/clients/{id}"][method]["parameters"][0];
        assert_eq!(param["name"], "id");
        assert_eq!(param["schema"], body_id, "{method}");
    }
    let param = &doc["paths"]["/clients/{id}"]["delete"]["parameters"][0];
    assert_eq!(param["name"], "id");
    assert_eq!(
        param["schema"],
        json!({"type": "string", "minLength": 1, "maxLength": 4096})
    );
    // capacity is a JSON Schema integer, and 1.0 is one: accepted.
    let (s, body) = send(
        c.post(url(lb.admin_addr(), "/clients"))
            .json(&json!({"client_id":"whole","capacity":3.0,"rate_per_sec":1})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert_eq!(body["capacity"], 3);
    let (s, body) = send(
        c.put(url(lb.admin_addr(), "/clients/whole"))
            .json(&json!({"capacity":5.0,"rate_per_sec":1})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["capacity"], 5);
    lb.shutdown().await;

    // With a token: bearer is required everywhere, and the document says so.
    let mut cfg = config(&[support::closed_port()]);
    cfg.admin.token = Some("s3cret-token-0123456789".into());
    let lb = balancer(&cfg).await;
    let (s, doc) = send(
        c.get(url(lb.admin_addr(), "/openapi.json"))
            .bearer_auth("s3cret-token-0123456789"),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(doc["security"], json!([{"bearer": []}]));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    lb.shutdown().await;
}

/// Reads one HTTP/1.1 response (head and a Content-Length body) from
/// `stream`; `None` if the connection closed first.
async fn read_response(stream: &mut tokio::net::TcpStream) -> Option<(u16, String)> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    loop {
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if body.len() >= length {
                let status = head.split(' ').nth(1)?.parse().ok()?;
                return Some((status, body.to_owned()));
            }
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test]
async fn admin_requests_have_header_and_body_read_timeouts() {
    use tokio::io::AsyncWriteExt;
    let mut cfg = config(&[support::closed_port()]);
    cfg.admin.header_read_timeout = std::time::Duration::from_millis(300);
    cfg.admin.body_read_timeout = std::time::Duration::from_millis(300);
    let lb = balancer(&cfg).await;
    let limit = std::time::Duration::from_secs(10);

    // Headers never finished: the connection is closed.
    let mut head = tokio::net::TcpStream::connect(lb.admin_addr())
        .await
        .expect("connect");
    head.write_all(b"GET /clients HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .expect("write");
    let answer = tokio::time::timeout(limit, read_response(&mut head))
        .await
        .expect("the header read timeout closes the connection");
    assert!(
        answer.is_none() || answer.as_ref().is_some_and(|(s, _)| *s == 408),
        "{answer:?}"
    );

    // Body never finished: 408, as JSON, and nothing written.
    let mut body = tokio::net::TcpStream::connect(lb.admin_addr())
        .await
        .expect("connect");
    body.write_all(
        b"POST /clients HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{\"client_id\":",
    )
    .await
    .expect("write");
    let (status, text) = tokio::time::timeout(limit, read_response(&mut body))
        .await
        .expect("the body read timeout answers")
        .expect("a response");
    assert_eq!(status, 408, "{text}");
    let json: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(json["code"], 408);
    assert!(lb.store().list().await.expect("list").is_empty());
    lb.shutdown().await;
}

#[tokio::test]
async fn a_half_sent_admin_request_does_not_hold_shutdown_past_the_drain_timeout() {
    use tokio::io::AsyncWriteExt;
    let mut cfg = config(&[support::closed_port()]);
    // Longer than the test waits: only the drain timeout can end these.
    cfg.admin.header_read_timeout = std::time::Duration::from_secs(120);
    cfg.admin.body_read_timeout = std::time::Duration::from_secs(120);
    cfg.server.drain_timeout = std::time::Duration::from_secs(1);
    let lb = balancer(&cfg).await;
    let mut head = tokio::net::TcpStream::connect(lb.admin_addr())
        .await
        .expect("connect");
    head.write_all(b"GET /clients HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .expect("write");
    let mut body = tokio::net::TcpStream::connect(lb.admin_addr())
        .await
        .expect("connect");
    body.write_all(
        b"PUT /clients/a HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
          Content-Length: 100\r\n\r\n{",
    )
    .await
    .expect("write");
    // Both requests have reached the server once a third is answered on a
    // connection opened after them.
    assert_eq!(
        support::get_status(&client(), lb.admin_addr(), "/healthz").await,
        200
    );
    let started = std::time::Instant::now();
    tokio::time::timeout(std::time::Duration::from_secs(30), lb.shutdown())
        .await
        .expect("shutdown finishes despite the half-sent admin requests");
    println!(
        "shutdown took {:?} with drain_timeout 1s",
        started.elapsed()
    );
    drop((head, body));
}

#[tokio::test]
async fn a_failed_read_says_read() {
    let mut cfg = config(&[support::closed_port()]);
    let db = support::temp_db();
    cfg.store.url = db.clone();
    let lb = balancer(&cfg).await;
    // A row tollgate cannot decode (capacity beyond u32), written behind
    // its back: reading the table fails, writing it does not.
    let pool = sqlx::SqlitePool::connect(&db).await.expect("open db");
    sqlx::query(
        "INSERT INTO clients (client_id, capacity, rate_per_sec, created_at, updated_at) \
         VALUES ('huge', 1099511627776, 1, 0, 0)",
    )
    .execute(&pool)
    .await
    .expect("insert");
    let c = client();
    let r = c
        .get(url(lb.admin_addr(), "/clients"))
        .send()
        .await
        .expect("request");
    let message = json_error(r, StatusCode::INTERNAL_SERVER_ERROR, "list").await;
    assert!(message.contains("read"), "{message}");
    assert!(!message.contains("written"), "{message}");
    let r = c
        .get(url(lb.admin_addr(), "/clients/huge"))
        .send()
        .await
        .expect("request");
    let message = json_error(r, StatusCode::INTERNAL_SERVER_ERROR, "get").await;
    assert!(message.contains("read"), "{message}");
    let (s, _) = send(
        c.post(url(lb.admin_addr(), "/clients"))
            .json(&json!({"client_id":"ok","capacity":1,"rate_per_sec":1})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    lb.shutdown().await;
}

#[tokio::test]
async fn rows_written_by_hand_that_make_no_client_are_shown_as_written() {
    let mut cfg = config(&[support::closed_port()]);
    let db = support::temp_db();
    cfg.store.url = db.clone();
    let lb = balancer(&cfg).await;
    let c = client();
    let (s, _) = send(
        c.post(url(lb.admin_addr(), "/clients"))
            .json(&json!({"client_id":"ok","capacity":2,"rate_per_sec":1})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    // Rows the limiter skips (an id that is no API key, a rate above its
    // maximum): the API still shows the table as it is.
    let pool = sqlx::SqlitePool::connect(&db).await.expect("open db");
    sqlx::query(
        "INSERT INTO clients (client_id, capacity, rate_per_sec, created_at, updated_at) \
         VALUES ('a b', 4, 1, 0, 0), ('too-fast', 1, 2e9, 0, 0)",
    )
    .execute(&pool)
    .await
    .expect("insert");
    let too_fast =
        json!({"client_id":"too-fast","capacity":1,"rate_per_sec":2e9,"rate":null,"tokens":1.0});
    let (s, body) = send(c.get(url(lb.admin_addr(), "/clients"))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        body,
        json!([
            {"client_id":"a b","capacity":4,"rate_per_sec":1.0,"rate":null,"tokens":4.0},
            {"client_id":"ok","capacity":2,"rate_per_sec":1.0,"rate":null,"tokens":2.0},
            too_fast,
        ])
    );
    let (s, body) = send(c.get(url(lb.admin_addr(), "/clients/too-fast"))).await;
    assert_eq!((s, body), (StatusCode::OK, too_fast));
    // Writing valid limits over the bad row makes it a client.
    let (s, body) = send(
        c.put(url(lb.admin_addr(), "/clients/too-fast"))
            .json(&json!({"capacity":3,"rate_per_sec":1})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        body,
        json!({"client_id":"too-fast","capacity":3,"rate_per_sec":1.0,"rate":null,"tokens":3.0})
    );
    lb.shutdown().await;
}

/// A client given `rate: "N/unit"` is stored, limited and shown back that
/// way, across a restart; `rate_per_sec` is always there beside it. Exactly
/// one of the two is taken: both or neither is a 400 that writes nothing.
#[tokio::test]
async fn clients_take_a_rate_per_unit_and_show_it_as_given() {
    let bs = backends(1).await;
    let cfg = config(&[bs[0].addr]);
    let c = client();
    let lb = balancer(&cfg).await;
    let admin = |p: &str| url(lb.admin_addr(), p);
    let daily = json!({
        "client_id":"daily","capacity":1000,"rate_per_sec":1000.0 / 86400.0,
        "rate":"1000/day","tokens":1000.0
    });
    // serde_json's default float parsing may land one ulp off the exact
    // value the server wrote; the rest must match exactly.
    let same = |got: &Value, want: &Value| {
        let per_sec = |v: &Value| v["rate_per_sec"].as_f64().unwrap_or(f64::NAN);
        assert!(
            (per_sec(got) - per_sec(want)).abs() < 1e-15,
            "{got} vs {want}"
        );
        let strip = |v: &Value| {
            let mut v = v.clone();
            v.as_object_mut().map(|o| o.remove("rate_per_sec"));
            v
        };
        assert_eq!(strip(got), strip(want));
    };

    let (s, body) = send(
        c.post(admin("/clients"))
            .json(&json!({"client_id":"daily","capacity":1000,"rate":"1000/day"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    same(&body, &daily);
    let (s, body) = send(c.get(admin("/clients/daily"))).await;
    assert_eq!(s, StatusCode::OK);
    same(&body, &daily);

    let bad = [
        (
            json!({"client_id":"x","capacity":1,"rate":"1/s","rate_per_sec":1}),
            "both given",
        ),
        (
            json!({"client_id":"x","capacity":1}),
            "rate_per_sec (tokens per second) or rate",
        ),
        (
            json!({"client_id":"x","capacity":1,"rate":"5/week"}),
            "unknown unit \"week\"",
        ),
        (json!({"client_id":"x","capacity":1,"rate":"abc"}), "N/unit"),
        (json!({"client_id":"x","capacity":1,"rate":5}), "N/unit"),
    ];
    for (body, says) in &bad {
        let r = c
            .post(admin("/clients"))
            .json(body)
            .send()
            .await
            .expect("req");
        let message = json_error(r, StatusCode::BAD_REQUEST, &body.to_string()).await;
        assert!(message.contains(says), "{body}: {message}");
        let mut limits = body.clone();
        if let Some(o) = limits.as_object_mut() {
            o.remove("client_id");
        }
        let r = c
            .put(admin("/clients/daily"))
            .json(&limits)
            .send()
            .await
            .expect("req");
        let message = json_error(r, StatusCode::BAD_REQUEST, &limits.to_string()).await;
        assert!(message.contains(says), "{limits}: {message}");
    }
    let (s, body) = send(c.get(admin("/clients"))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        body.as_array().map(Vec::len),
        Some(1),
        "nothing written: {body}"
    );
    same(&body[0], &daily);

    // 30/min: 5 at once, then one every 2 s.
    let (s, body) = send(
        c.put(admin("/clients/daily"))
            .json(&json!({"capacity":5,"rate":"30/min"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (&body["rate"], &body["rate_per_sec"]),
        (&json!("30/min"), &json!(0.5))
    );
    let proxied = || {
        c.get(url(lb.proxy_addr(), "/"))
            .header("x-api-key", "daily")
            .send()
    };
    for _ in 0..5 {
        assert_eq!(proxied().await.expect("req").status(), StatusCode::OK);
    }
    let refused = proxied().await.expect("req");
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "2");

    // Given per second again, the rate as written goes.
    let (s, body) = send(
        c.put(admin("/clients/daily"))
            .json(&json!({"capacity":5,"rate_per_sec":0.5})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (&body["rate"], &body["rate_per_sec"]),
        (&json!(null), &json!(0.5))
    );

    // Kept across a restart.
    let (s, _) = send(
        c.put(admin("/clients/daily"))
            .json(&json!({"capacity":1000,"rate":"1000/day"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    lb.shutdown().await;
    let lb = balancer(&cfg).await;
    let (s, mut body) = send(c.get(url(lb.admin_addr(), "/clients/daily"))).await;
    assert_eq!(s, StatusCode::OK);
    // The level, spent above, is kept across limit changes and restarts.
    let tokens = body["tokens"].as_f64().expect("tokens");
    assert!(tokens < 1.0, "{tokens}");
    body["tokens"] = json!(1000.0);
    same(&body, &daily);
    lb.shutdown().await;
}
