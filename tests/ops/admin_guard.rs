//! What the admin API refuses before any handler runs: request heads its
//! parser cannot take, a `Host` it does not serve (DNS rebinding),
//! cross-site state changes from a browser, and token guessing.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{backend, balancer, client, closed_port, config, url};

/// Sends `request` on a fresh connection to `addr`; the status, the head
/// (lower-cased) and the body, read until the server closes.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // The server may answer and close before it has read everything.
    let _ = s.write_all(request).await;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("the server answered and closed")
        .ok();
    let text = String::from_utf8_lossy(&got).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, head.to_ascii_lowercase(), body.to_owned())
}

fn assert_json_error(status: u16, head: &str, body: &str) -> Value {
    assert!(head.contains("content-type: application/json"), "{head}");
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body:?}"));
    assert_eq!(v["code"], status, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    v
}

#[tokio::test]
async fn a_two_megabyte_header_gets_a_json_431() {
    let lb = balancer(&config(&[closed_port()])).await;
    let big = "a".repeat(2 * 1024 * 1024);
    let request = format!("GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nx-big: {big}\r\n\r\n");
    let (status, head, body) = raw_exchange(lb.admin_addr(), request.as_bytes()).await;
    assert_eq!(status, 431, "{head}");
    assert_json_error(431, &head, &body);
    // A malformed head too: JSON, as on the proxy listeners.
    let (status, head, body) =
        raw_exchange(lb.admin_addr(), b"GET / HTTP/1.1\r\nno colon here\r\n\r\n").await;
    assert_eq!(status, 400, "{head}");
    assert_json_error(400, &head, &body);
    lb.shutdown().await;
}

/// `method path` on `admin` with the given headers (no body); the status,
/// the `Retry-After` value if any, and the JSON body.
async fn call(
    c: &reqwest::Client,
    admin: SocketAddr,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Option<String>, Value) {
    let mut req = c.request(method, url(admin, path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("answer");
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let ctype = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = r.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    if status >= 400 {
        assert_eq!(
            ctype.as_deref(),
            Some("application/json"),
            "{status}: {text}"
        );
        assert_eq!(body["code"], status, "{text}");
    }
    (status, retry, body)
}

#[tokio::test]
async fn a_host_the_admin_api_does_not_serve_gets_421() {
    let mut cfg = config(&[closed_port()]);
    cfg.admin.allowed_hosts = vec!["admin.test".into()];
    let lb = balancer(&cfg).await;
    let c = client();
    let admin = lb.admin_addr();
    // A DNS-rebinding page: the attacker's name, pointed at the listener.
    for path in ["/clients", "/status", "/", "/openapi.json", "/nowhere"] {
        let (s, _, body) = call(
            &c,
            admin,
            reqwest::Method::GET,
            path,
            &[("host", "rebind.evil.example:9090")],
        )
        .await;
        assert_eq!(s, 421, "{path}: {body}");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("admin.allowed_hosts")),
            "{body}"
        );
    }
    let (s, _, _) = call(
        &c,
        admin,
        reqwest::Method::POST,
        "/reload",
        &[("host", "rebind.evil.example")],
    )
    .await;
    assert_eq!(s, 421);
    // The loopback names, the listen address and the listed name.
    let port = admin.port();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "[::1]".to_owned(),
        "ADMIN.test:8443".to_owned(),
    ] {
        let (s, _, body) = call(
            &c,
            admin,
            reqwest::Method::GET,
            "/clients",
            &[("host", &host)],
        )
        .await;
        assert_eq!(s, 200, "{host}: {body}");
    }
    // The status page's shell from a browser on an allowed host.
    let page = c.get(url(admin, "/")).send().await.expect("GET /");
    assert_eq!(page.status(), 200);
    lb.shutdown().await;
}

#[tokio::test]
async fn a_browser_state_change_for_another_site_gets_403_and_changes_nothing() {
    let b = backend("b0").await;
    let mut cfg = config(&[b.addr]);
    cfg.backends[0].name = Some("b0".into());
    let lb = balancer(&cfg).await;
    let c = client();
    let admin = lb.admin_addr();
    let own = format!("http://{admin}");
    let post = reqwest::Method::POST;
    for headers in [
        vec![("origin", "http://evil.example")],
        vec![("origin", "null")],
        vec![("origin", "http://127.0.0.1:1")],
        vec![("sec-fetch-site", "cross-site")],
        vec![("sec-fetch-site", "same-site"), ("origin", own.as_str())],
    ] {
        let (s, _, body) = call(&c, admin, post.clone(), "/backends/b0/drain", &headers).await;
        assert_eq!(s, 403, "{headers:?}: {body}");
        let (s, _, body) = call(
            &c,
            admin,
            reqwest::Method::DELETE,
            "/clients/someone",
            &headers,
        )
        .await;
        assert_eq!(s, 403, "{headers:?}: {body}");
    }
    let (_, _, backends) = call(&c, admin, reqwest::Method::GET, "/backends", &[]).await;
    assert_eq!(
        backends[0]["state"], "active",
        "a refused drain drained: {backends}"
    );
    // Reading from another site stays allowed (the browser keeps the
    // answer from the page without CORS headers, which are never sent).
    let (s, _, _) = call(
        &c,
        admin,
        reqwest::Method::GET,
        "/backends",
        &[
            ("origin", "http://evil.example"),
            ("sec-fetch-site", "cross-site"),
        ],
    )
    .await;
    assert_eq!(s, 200);
    // The admin's own page, and clients that are no browser.
    for headers in [
        vec![("origin", own.as_str()), ("sec-fetch-site", "same-origin")],
        vec![],
    ] {
        let (s, _, body) = call(&c, admin, post.clone(), "/backends/b0/enable", &headers).await;
        assert_eq!(s, 200, "{headers:?}: {body}");
    }
    lb.shutdown().await;
    b.stop().await;
}

#[tokio::test]
async fn a_body_that_is_not_declared_json_gets_415() {
    let lb = balancer(&config(&[closed_port()])).await;
    let c = client();
    let admin = lb.admin_addr();
    let body = r#"{"client_id":"form","capacity":1,"rate_per_sec":1}"#;
    for ctype in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut req = c.post(url(admin, "/clients")).body(body);
        if let Some(t) = ctype {
            req = req.header("content-type", t);
        }
        let r = req.send().await.expect("answer");
        assert_eq!(r.status(), 415, "{ctype:?}");
    }
    let (s, _, _) = call(&c, admin, reqwest::Method::GET, "/clients/form", &[]).await;
    assert_eq!(s, 404, "a body not declared JSON was stored");
    lb.shutdown().await;
}

#[tokio::test]
async fn wrong_tokens_are_throttled_and_logged_with_the_address_only() {
    const TOKEN: &str = "the-right-token-0123456789";
    const GUESS: &str = "guess-number-0000000000";
    let yaml = format!(
        "server:\n  listen: 127.0.0.1:0\nadmin:\n  listen: 127.0.0.1:0\n  token: {TOKEN}\n\
         backends:\n  - url: http://{}\nstore:\n  url: {}\nlog:\n  format: json\n",
        closed_port(),
        crate::support::temp_db()
    );
    let mut p = crate::support::spawn_serve(&yaml);
    let c = client();
    let bearer = |t: &str| format!("Bearer {t}");
    let get = reqwest::Method::GET;
    // No token at all is no guess.
    for _ in 0..10 {
        let (s, _, _) = call(&c, p.admin, get.clone(), "/clients", &[]).await;
        assert_eq!(s, 401);
    }
    for i in 0..5 {
        let (s, _, body) = call(
            &c,
            p.admin,
            get.clone(),
            "/clients",
            &[("authorization", &bearer(GUESS))],
        )
        .await;
        assert_eq!(s, 401, "guess {i}: {body}");
    }
    let (s, retry, body) = call(
        &c,
        p.admin,
        get.clone(),
        "/clients",
        &[("authorization", &bearer(GUESS))],
    )
    .await;
    assert_eq!(s, 429, "{body}");
    assert_eq!(retry.as_deref(), Some("1"));
    // Even the right token, while throttled: a right guess looks like a
    // wrong one.
    let (s, _, _) = call(
        &c,
        p.admin,
        get.clone(),
        "/clients",
        &[("authorization", &bearer(TOKEN))],
    )
    .await;
    assert_eq!(s, 429);
    // Another address is not held back.
    let other = reqwest::Client::builder()
        .no_proxy()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().expect("ip"))
        .build()
        .expect("client");
    let (s, _, body) = call(
        &other,
        p.admin,
        get.clone(),
        "/clients",
        &[("authorization", &bearer(TOKEN))],
    )
    .await;
    assert_eq!(s, 200, "{body}");

    // Logged at WARN with the address; the guessed token nowhere.
    let mut wrong = 0;
    let throttled = loop {
        let line = p
            .logs
            .recv_timeout(Duration::from_secs(10))
            .expect("the throttling is logged");
        assert!(
            !line.to_string().contains(GUESS),
            "the token was logged: {line}"
        );
        match line["message"].as_str() {
            Some(m) if m.contains("too many wrong bearer tokens") => break line,
            Some(m) if m.contains("wrong bearer token") => {
                assert_eq!(line["level"], "WARN", "{line}");
                assert_eq!(line["peer"], "127.0.0.1", "{line}");
                wrong += 1;
            }
            _ => {}
        }
    };
    assert_eq!(wrong, 5);
    assert_eq!(throttled["level"], "WARN", "{throttled}");
    assert_eq!(throttled["peer"], "127.0.0.1", "{throttled}");
    let _ = p.child.kill();
    let _ = p.child.wait();
}
