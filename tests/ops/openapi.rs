//! The admin API against its own OpenAPI document: every route is called
//! for each answer the document lists (successes and every error), each
//! real answer must be documented for its route and valid under its
//! schema, and every documented answer must have been seen. A schema that
//! drifts from what the handlers send, an answer the document forgets, or
//! one it promises but the server never gives, fails here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use tollgate::config::Config;

use crate::support::openapi::{validate, Spec};
use crate::support::tls::TestCa;
use crate::support::{self, backend, client, url};

const TOKEN: &str = "openapi-test-token-0123456789";

/// Documented answers no test here produces, and why.
const NOT_PRODUCED: &[(&str, &str, u16)] = &[
    // Metrics are off only in a process where something installed another
    // metrics recorder before tollgate; the tests' process has tollgate's.
    ("/metrics", "get", 404),
    // A reload that cannot run at all: its file-reading thread could not
    // be started, or ended without an answer.
    ("/reload", "post", 500),
];

/// An admin API client that checks each answer against the document.
struct Api {
    spec: Spec,
    http: reqwest::Client,
    admin: SocketAddr,
}

/// One answer as received.
struct Answer {
    status: u16,
    content_type: Option<String>,
    body: Vec<u8>,
}

impl Api {
    /// `path` (concrete) on the admin listener.
    fn url(&self, path: &str) -> String {
        url(self.admin, path)
    }

    /// `method` on `path`, with the bearer token.
    fn req(&self, method: &str, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method.parse().expect("method"), self.url(path))
            .bearer_auth(TOKEN)
    }

    /// Sends `req`, checks its answer against `template`'s operation, and
    /// asserts its status is `want`; returns the body as JSON (null if
    /// empty or not JSON). A JSON body sent expecting success must be
    /// valid under the documented request schema too.
    async fn expect(&mut self, template: &str, req: reqwest::RequestBuilder, want: u16) -> Value {
        let req = req.build().expect("request");
        let method = req.method().as_str().to_owned();
        let json_body = req
            .body()
            .and_then(|b| b.as_bytes())
            .and_then(|b| serde_json::from_slice::<Value>(b).ok());
        if let (true, Some(body)) = ((200..300).contains(&want), json_body) {
            if let Err(e) = self.spec.check_request(template, &method, &body) {
                panic!("{e}");
            }
        }
        let answer = receive(self.http.execute(req).await.expect("an answer")).await;
        self.judge(template, &method, answer, want)
    }

    fn judge(&mut self, template: &str, method: &str, answer: Answer, want: u16) -> Value {
        let text = String::from_utf8_lossy(&answer.body).into_owned();
        assert_eq!(answer.status, want, "{method} {template}: {text}");
        if let Err(e) = self.spec.check(
            template,
            method,
            answer.status,
            answer.content_type.as_deref(),
            &answer.body,
        ) {
            panic!("{e}");
        }
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// A request whose body never finishes: the answer once
    /// `admin.body_read_timeout` is up (then the server closes the
    /// connection, the rest of the body unread).
    async fn half_sent(&mut self, template: &str, method: &str, path: &str) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.admin)
            .await
            .expect("connect");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"capacity\":"
        );
        stream.write_all(head.as_bytes()).await.expect("write");
        let mut bytes = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut bytes))
            .await
            .expect("an answer and a close within 10 s")
            .expect("read");
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
        let answer = Answer {
            status: head
                .get(9..12)
                .and_then(|s| s.parse().ok())
                .expect("a status"),
            content_type: head.lines().find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-type")
                    .then(|| value.trim().to_owned())
            }),
            body: body.as_bytes().to_vec(),
        };
        self.judge(template, method, answer, 408);
    }
}

/// The answers of the admin API's front guard, on every operation they
/// are documented for: 421 (a Host not served), 403 (a browser's state
/// change from another site), 429 (too many wrong tokens, from an address
/// of its own so that the rest of the test is not throttled).
async fn guard_answers(api: &mut Api) {
    let documented = api.spec.documented();
    let guesser = reqwest::Client::builder()
        .no_proxy()
        .local_address("127.0.0.3".parse::<std::net::IpAddr>().expect("ip"))
        .build()
        .expect("client");
    for (template, method) in api.spec.operations() {
        let concrete = concrete(&template);
        let has = |status: u16| documented.contains(&(template.clone(), method.clone(), status));
        let upper = method.to_uppercase();
        assert!(has(421), "{method} {template}: 421 not documented");
        let req = api
            .req(&upper, &concrete)
            .header("host", "rebind.evil.example");
        api.expect(&template, req, 421).await;
        let changes = !matches!(method.as_str(), "get" | "head");
        assert_eq!(has(403), changes, "{method} {template}");
        if changes {
            let req = api
                .req(&upper, &concrete)
                .header("origin", "http://evil.example");
            api.expect(&template, req, 403).await;
        }
        if !has(401) {
            continue;
        }
        assert!(has(429), "{method} {template}: 429 not documented");
        // Wrong tokens until the address is throttled (a few at most;
        // one more may pass each second the loop takes).
        let mut answer = None;
        for _ in 0..20 {
            let got = receive(
                guesser
                    .request(upper.parse().expect("method"), api.url(&concrete))
                    .bearer_auth("a-wrong-token-0000000000")
                    .send()
                    .await
                    .expect("an answer"),
            )
            .await;
            if got.status != 401 {
                answer = Some(got);
                break;
            }
        }
        let answer = answer.expect("throttled within 20 wrong tokens");
        api.judge(&template, &method, answer, 429);
    }
}

/// A path of `template` with its parameters filled in.
fn concrete(template: &str) -> String {
    template
        .replace("{id}", "probe")
        .replace("{pool}", "api")
        .replace("{name}", "b0")
}

async fn receive(r: reqwest::Response) -> Answer {
    let status = r.status().as_u16();
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = r.bytes().await.expect("body").to_vec();
    Answer {
        status,
        content_type,
        body,
    }
}

/// The config file of the tollgate under test: TLS (certificates to spoil),
/// a token (so 401s are documented), a short body read timeout and store
/// timeout (408 and 503 within a second, yet long enough for a loaded
/// machine's fsync not to time out the writes meant to succeed), and a
/// pool `api` with a route to it, whose backends are `b0` (a name the
/// default pool has too) and `a1`.
fn yaml(cert: &Path, key: &Path, backends: [SocketAddr; 2], db: &str, capacity: u64) -> String {
    let [backend, other] = backends;
    format!(
        "server:\n  listen: 127.0.0.1:0\n  tls:\n    listen: 127.0.0.1:0\n    certificates:\n\
         \x20     - {{cert: {cert:?}, key: {key:?}}}\n\
         admin:\n  listen: 127.0.0.1:0\n  token: {TOKEN}\n  body_read_timeout: 1s\n\
         backends:\n  - {{url: http://{backend}, name: b0}}\n\
         pools:\n  api:\n    backends:\n      - {{url: http://{backend}, name: b0}}\n\
         \x20     - {{url: http://{other}, name: a1}}\n\
         routes:\n  - {{name: api, match: {{path_prefix: /api}}, pool: api}}\n\
         store:\n  url: {db}\n  timeout: 1s\n\
         rate_limit:\n  default: {{capacity: {capacity}, rate_per_sec: 1}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_answer_is_what_the_server_sends() {
    let b = backend("b0").await;
    let a1 = backend("a1").await;
    let ca = TestCa::new("openapi CA");
    let site = ca.issue("site", &["app.test"]);
    let db = support::temp_db();
    let path: PathBuf = tempfile::tempdir()
        .expect("tempdir")
        .keep()
        .join("config.yaml");
    let config_file =
        |db: &str, capacity: u64| yaml(&site.cert, &site.key, [b.addr, a1.addr], db, capacity);
    std::fs::write(&path, config_file(&db, 100)).expect("write config");
    let config = Config::load(&path).expect("valid config");
    let lb = tollgate::app::start_with_file(&config, Some(path.clone()))
        .await
        .expect("balancer starts");
    let http = client();
    let doc: Value = http
        .get(url(lb.admin_addr(), "/openapi.json"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("GET /openapi.json")
        .json()
        .await
        .expect("the document is JSON");
    let mut api = Api {
        spec: Spec::new(doc),
        http,
        admin: lb.admin_addr(),
    };
    api.expect("/openapi.json", api.req("GET", "/openapi.json"), 200)
        .await;

    // 401 on every operation, without the token, but the status page's
    // shell: public, and documented so.
    let documented = api.spec.documented();
    let mut public = Vec::new();
    for (template, method) in api.spec.operations() {
        if !documented.contains(&(template.clone(), method.clone(), 401)) {
            public.push((template, method));
            continue;
        }
        let concrete = concrete(&template);
        let req = api.http.request(
            method.to_uppercase().parse().expect("method"),
            api.url(&concrete),
        );
        api.expect(&template, req, 401).await;
    }
    assert_eq!(public, [("/".to_owned(), "get".to_owned())]);
    let shell = api.http.get(api.url("/"));
    api.expect("/", shell, 200).await;
    guard_answers(&mut api).await;

    // The client table. The largest capacity: its format must hold it.
    let new = json!({"client_id": "user1", "capacity": 4_294_967_295_u64, "rate_per_sec": 1000});
    let created = api
        .expect("/clients", api.req("POST", "/clients").json(&new), 201)
        .await;
    assert_eq!(created["capacity"], 4_294_967_295_u64);
    api.expect("/clients", api.req("POST", "/clients").json(&new), 409)
        .await;
    // A rate per unit: shown back as given (a string where the other
    // client has null).
    let daily = json!({"client_id": "daily", "capacity": 1000, "rate": "1000/day"});
    let created = api
        .expect("/clients", api.req("POST", "/clients").json(&daily), 201)
        .await;
    assert_eq!(created["rate"], "1000/day");
    let zero = json!({"client_id": "user2", "capacity": 0, "rate_per_sec": 1});
    api.expect("/clients", api.req("POST", "/clients").json(&zero), 400)
        .await;
    api.expect("/clients", api.req("POST", "/clients").body("{}"), 415)
        .await;
    let big = " ".repeat(70_000);
    let json_body = |r: reqwest::RequestBuilder| r.header("content-type", "application/json");
    api.expect(
        "/clients",
        json_body(api.req("POST", "/clients")).body(big.clone()),
        413,
    )
    .await;
    api.half_sent("/clients", "POST", "/clients").await;
    let listed = api
        .expect("/clients", api.req("GET", "/clients"), 200)
        .await;
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    let page = api
        .expect("/clients", api.req("GET", "/clients?limit=1&after=a"), 200)
        .await;
    assert_eq!(page[0]["client_id"], "daily", "{page}");
    api.expect("/clients", api.req("GET", "/clients?limit=0"), 400)
        .await;

    let one = "/clients/{id}";
    api.expect(one, api.req("GET", "/clients/user1"), 200).await;
    api.expect(one, api.req("GET", "/clients/a%20b"), 400).await;
    api.expect(one, api.req("GET", "/clients/nobody"), 404)
        .await;
    let limits = json!({"capacity": 5, "rate_per_sec": 1});
    api.expect(one, api.req("PUT", "/clients/user1").json(&limits), 200)
        .await;
    api.expect(
        one,
        api.req("PUT", "/clients/user1")
            .json(&json!({"capacity": 0, "rate_per_sec": 1})),
        400,
    )
    .await;
    api.expect(one, api.req("PUT", "/clients/nobody").json(&limits), 404)
        .await;
    api.expect(one, api.req("PUT", "/clients/user1").body("{}"), 415)
        .await;
    api.expect(
        one,
        json_body(api.req("PUT", "/clients/user1")).body(big),
        413,
    )
    .await;
    api.half_sent(one, "PUT", "/clients/user1").await;
    api.expect(one, api.req("DELETE", "/clients/%FF"), 400)
        .await;
    api.expect(one, api.req("DELETE", "/clients/nobody"), 404)
        .await;

    // 500: a row tollgate cannot decode (capacity beyond u32), and writes
    // the database refuses (triggers), all behind tollgate's back.
    let pool = sqlx::SqlitePool::connect(&db).await.expect("open db");
    let sql = |q: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query(q).execute(&pool).await.expect(q);
        }
    };
    sql(
        "INSERT INTO clients (client_id, capacity, rate_per_sec, created_at, updated_at) \
         VALUES ('huge', 1099511627776, 1, 0, 0)",
    )
    .await;
    api.expect("/clients", api.req("GET", "/clients"), 500)
        .await;
    api.expect(one, api.req("GET", "/clients/huge"), 500).await;
    sql("DELETE FROM clients WHERE client_id = 'huge'").await;
    for event in ["INSERT", "UPDATE", "DELETE"] {
        sqlx::query(&format!(
            "CREATE TRIGGER refuse_{event} BEFORE {event} ON clients \
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        ))
        .execute(&pool)
        .await
        .expect("create trigger");
    }
    let user3 = json!({"client_id": "user3", "capacity": 1, "rate_per_sec": 1});
    api.expect("/clients", api.req("POST", "/clients").json(&user3), 500)
        .await;
    api.expect(one, api.req("PUT", "/clients/user1").json(&limits), 500)
        .await;
    api.expect(one, api.req("DELETE", "/clients/user1"), 500)
        .await;
    for event in ["INSERT", "UPDATE", "DELETE"] {
        sqlx::query(&format!("DROP TRIGGER refuse_{event}"))
            .execute(&pool)
            .await
            .expect("drop trigger");
    }
    api.expect(one, api.req("DELETE", "/clients/user1"), 204)
        .await;

    // 503: the database holds its write lock for another connection.
    // Writes wait for it (SQLite's busy timeout, 5 s) past store.timeout;
    // while they wait they hold every connection of tollgate's pool (4),
    // so reads wait for one past store.timeout too.
    let mut holder = pool.acquire().await.expect("a connection");
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *holder)
        .await
        .expect("take the write lock");
    let mut writes = vec![("/clients", "POST", api.req("POST", "/clients").json(&user3))];
    for i in 0..3 {
        let id = format!("/clients/ghost{i}");
        writes.push((one, "PUT", api.req("PUT", &id).json(&limits)));
        writes.push((one, "DELETE", api.req("DELETE", &id)));
    }
    let answers = futures_util::future::join_all(writes.into_iter().map(
        |(template, method, req)| async move {
            (
                template,
                method,
                receive(req.send().await.expect("answer")).await,
            )
        },
    ))
    .await;
    for (template, method, answer) in answers {
        api.judge(template, method, answer, 503);
    }
    api.expect("/clients", api.req("GET", "/clients"), 503)
        .await;
    api.expect(one, api.req("GET", "/clients/user1"), 503).await;
    sqlx::query("ROLLBACK")
        .execute(&mut *holder)
        .await
        .expect("release the write lock");
    drop(holder);

    // Backends.
    let backends = api
        .expect("/backends", api.req("GET", "/backends"), 200)
        .await;
    assert_eq!(backends[0]["name"], "b0", "{backends}");
    assert_eq!(backends[0]["pool"], "default", "{backends}");
    let pools = api.expect("/pools", api.req("GET", "/pools"), 200).await;
    assert_eq!(pools[1]["name"], "api", "{pools}");
    for action in ["drain", "enable"] {
        let template = format!("/backends/{{name}}/{action}");
        let at = |name: &str| format!("/backends/{name}/{action}");
        api.expect(&template, api.req("POST", &at("a1")), 200).await;
        // Both pools have a b0.
        api.expect(&template, api.req("POST", &at("b0")), 409).await;
        api.expect(&template, api.req("POST", &at("%FF")), 400)
            .await;
        api.expect(&template, api.req("POST", &at("nope")), 404)
            .await;
        let template = format!("/pools/{{pool}}/backends/{{name}}/{action}");
        let at = |pool: &str, name: &str| format!("/pools/{pool}/backends/{name}/{action}");
        api.expect(&template, api.req("POST", &at("api", "b0")), 200)
            .await;
        api.expect(&template, api.req("POST", &at("%FF", "b0")), 400)
            .await;
        api.expect(&template, api.req("POST", &at("nope", "b0")), 404)
            .await;
        api.expect(&template, api.req("POST", &at("api", "nope")), 404)
            .await;
    }
    api.expect("/healthz", api.req("GET", "/healthz"), 200)
        .await;

    // The status document with its lists filled: refusals (the default
    // bucket holds 100 tokens), events (the drains above), backends.
    for _ in 0..110 {
        api.http
            .get(url(lb.proxy_addr(), "/"))
            .send()
            .await
            .expect("proxied");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        let answer = receive(api.req("GET", "/status").send().await.expect("answer")).await;
        let doc: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
        let filled = |v: &Value| v.as_array().is_some_and(|a| !a.is_empty());
        if filled(&doc["top_refused"]) && filled(&doc["series"]["p50_ms"]) {
            break answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no refusal in the status document: {doc}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let doc = api.judge("/status", "GET", status, 200);
    assert!(
        !doc["events"].as_array().expect("events").is_empty(),
        "{doc}"
    );
    api.expect("/metrics", api.req("GET", "/metrics"), 200)
        .await;
    api.http
        .get(url(lb.proxy_addr(), "/api/x"))
        .send()
        .await
        .expect("proxied");
    let routes = api.expect("/routes", api.req("GET", "/routes"), 200).await;
    assert_eq!(routes[0]["requests"], 1, "{routes}");

    // Reloads: one applied change and one that needs a restart (so both
    // lists have items to check), an invalid file, then an unusable
    // certificate.
    let moved_db = support::temp_db();
    std::fs::write(&path, config_file(&moved_db, 200)).expect("write config");
    let reloaded = api.expect("/reload", api.req("POST", "/reload"), 200).await;
    assert_eq!(
        reloaded,
        json!({"applied": ["rate_limit.default"], "restart_required": ["store.url"]})
    );
    std::fs::write(&path, config_file(&moved_db, 0)).expect("write config");
    let invalid = api.expect("/reload", api.req("POST", "/reload"), 400).await;
    assert!(
        invalid["problems"]
            .as_array()
            .is_some_and(|p| !p.is_empty()),
        "{invalid}"
    );
    // A certificate that became unusable: a reload from a file checks the
    // certificate files as part of the file (400 above); a process
    // started without a file re-reads them alone, and that is a 400 too.
    // Then a certificate path that blocks on read (a FIFO): 503.
    std::fs::write(&path, config_file(&moved_db, 200)).expect("write config");
    let fileless = tollgate::app::start(&Config::load(&path).expect("valid config"))
        .await
        .expect("second balancer starts");
    api.admin = fileless.admin_addr();
    std::fs::write(&site.cert, "not a certificate").expect("spoil the certificate");
    api.expect("/reload", api.req("POST", "/reload"), 400).await;
    support::fifo::replace_with_fifo(&site.cert);
    api.expect("/reload", api.req("POST", "/reload"), 503).await;
    let released = support::fifo::release_fifo(&site.cert, "");
    tokio::task::spawn_blocking(move || released.join())
        .await
        .expect("join")
        .expect("writer");
    fileless.shutdown().await;

    let missing = api.spec.unexercised(NOT_PRODUCED);
    assert!(
        missing.is_empty(),
        "documented answers no request produced: {missing:?}"
    );
    lb.shutdown().await;
    b.stop().await;
    a1.stop().await;
}

/// The checker refuses what it should: without this, a checker that
/// accepts everything would let the test above pass.
#[test]
fn the_checker_refuses_a_missing_field_a_wrong_type_an_extra_field_and_an_undocumented_status() {
    let doc = json!({
        "paths": {"/things": {"get": {"responses": {
            "200": {"description": "", "content": {"application/json": {"schema": {
                "type": "array", "items": {"$ref": "#/components/schemas/Thing"}}}}},
            "204": {"description": ""}
        }}}},
        "components": {"schemas": {"Thing": {
            "type": "object",
            "required": ["id", "size"],
            "properties": {
                "id": {"type": "string"},
                "size": {"type": "integer", "format": "int32", "minimum": 0},
                "kind": {"type": "string", "enum": ["a", "b"]},
                "note": {"type": ["string", "null"]}
            }
        }}}
    });
    let mut spec = Spec::new(doc.clone());
    let mut check = |status: u16, ctype: Option<&str>, body: &str| {
        spec.check("/things", "GET", status, ctype, body.as_bytes())
    };
    let json = Some("application/json");
    assert_eq!(
        check(200, json, r#"[{"id":"x","size":3,"kind":"a","note":null}]"#),
        Ok(())
    );
    assert_eq!(check(204, None, ""), Ok(()));
    for (status, ctype, body, why) in [
        (200, json, r#"[{"id":"x"}]"#, "\"size\" is missing"),
        (200, json, r#"[{"id":"x","size":"3"}]"#, "not of type"),
        (200, json, r#"[{"id":"x","size":3.5}]"#, "not of type"),
        (200, json, r#"[{"id":"x","size":-1}]"#, "minimum"),
        (200, json, r#"[{"id":"x","size":3000000000}]"#, "int32"),
        (
            200,
            json,
            r#"[{"id":"x","size":1,"kind":"c"}]"#,
            "not one of",
        ),
        (
            200,
            json,
            r#"[{"id":"x","size":1,"extra":1}]"#,
            "undocumented property",
        ),
        (200, Some("text/plain"), "[]", "Content-Type"),
        (204, None, "{}", "without content"),
        (404, json, "{}", "status not documented"),
    ] {
        let e = check(status, ctype, body).expect_err(body);
        assert!(e.contains(why), "{body}: {e}");
    }
    let e = Spec::new(doc.clone())
        .check("/other", "GET", 200, json, b"[]")
        .expect_err("undocumented path");
    assert!(e.contains("operation not documented"), "{e}");
    let e = validate(&doc, &json!({"pattern": "^a$"}), &json!("b"), "$").expect_err("pattern");
    assert!(e.contains("does not match"), "{e}");
    let names = json!({"propertyNames": {"pattern": "^a"}});
    assert_eq!(validate(&doc, &names, &json!({"ab": 1}), "$"), Ok(()));
    let e = validate(&doc, &names, &json!({"ab": 1, "b": 2}), "$").expect_err("propertyNames");
    assert!(
        e.contains("$.b (the name)") && e.contains("does not match"),
        "{e}"
    );
    // A keyword the checker cannot judge fails rather than passes.
    let e = validate(&doc, &json!({"if": true}), &json!("b"), "$").expect_err("if");
    assert!(e.contains("does not know"), "{e}");
}
