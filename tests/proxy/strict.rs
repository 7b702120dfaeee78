//! Strict HTTP at the front door (RFC 9110/9112): requests that are
//! ambiguous, or that a backend could read differently from tollgate, are
//! refused with JSON before they are charged or forwarded. Raw bytes on a
//! socket in, raw bytes recorded at the backend.

use tollgate::limiter::{ClientKey, Limits};

use crate::support::raw::{header_values, ok, raw_backend, RawBackend, RawClient, RawResponse};
use crate::support::{self, balancer, config};

/// A JSON error with `status`, as every refusal must be.
fn assert_refused(r: &RawResponse, status: u16) -> serde_json::Value {
    assert_eq!(r.status, status, "{}", r.head);
    assert_eq!(r.header("content-type"), ["application/json"], "{}", r.head);
    let body = r.json();
    assert_eq!(body["code"], status, "{body}");
    assert!(body["message"].is_string(), "{body}");
    body
}

/// Sends `request` on a new connection and reads one response.
async fn one(addr: std::net::SocketAddr, request: &str) -> RawResponse {
    let mut c = RawClient::connect(addr).await;
    c.send(request.as_bytes()).await;
    c.response().await
}

fn only_head(b: &RawBackend) -> String {
    let heads = b.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    heads[0].clone()
}

#[tokio::test]
async fn http11_needs_exactly_one_valid_host() {
    let b = raw_backend(ok).await;
    let lb = balancer(&config(&[b.addr])).await;
    let addr = lb.proxy_addr();

    let missing = one(addr, "GET / HTTP/1.1\r\n\r\n").await;
    let body = assert_refused(&missing, 400);
    assert_eq!(body["message"], "Missing Host header");

    let twice = one(
        addr,
        "GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
    )
    .await;
    let body = assert_refused(&twice, 400);
    assert_eq!(body["message"], "More than one Host header");

    for bad in [
        "",
        "a b.example",
        "user@a.example",
        "a.example/path",
        "a.example:80x",
        ":80",
        "[::1",
        "a.example\\",
        "a%zz.example",
    ] {
        let r = one(addr, &format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n")).await;
        let body = assert_refused(&r, 400);
        assert_eq!(body["message"], "Invalid Host header", "Host: {bad}");
    }
    assert!(b.heads().is_empty(), "refused requests reached the backend");

    // Valid forms pass unchanged.
    for good in [
        "a.example",
        "a.example:8080",
        "127.0.0.1",
        "[::1]:80",
        "xn--bcher-kva.example",
    ] {
        let r = one(addr, &format!("GET / HTTP/1.1\r\nHost: {good}\r\n\r\n")).await;
        assert_eq!(r.status, 200, "Host: {good}: {}", r.head);
    }
    let heads = b.heads();
    assert_eq!(heads.len(), 5);
    assert_eq!(header_values(&heads[3], "host"), ["[::1]:80"]);

    // HTTP/1.0 has no Host requirement: the backend gets its own name.
    let old = one(addr, "GET /old HTTP/1.0\r\n\r\n").await;
    assert_eq!(old.status, 200, "{}", old.head);
    let head = b.heads().pop().expect("forwarded");
    assert!(head.starts_with("GET /old HTTP/1.1\r\n"), "{head}");
    assert_eq!(header_values(&head, "host"), [b.addr.to_string()]);
    assert!(
        header_values(&head, "x-forwarded-host").is_empty(),
        "{head}"
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn an_absolute_form_target_names_the_host() {
    let b = raw_backend(ok).await;
    let lb = balancer(&config(&[b.addr])).await;
    let r = one(
        lb.proxy_addr(),
        "GET http://app.example:8080/x?y=1 HTTP/1.1\r\nHost: other.example\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.head);
    let head = only_head(&b);
    assert!(head.starts_with("GET /x?y=1 HTTP/1.1\r\n"), "{head}");
    assert_eq!(header_values(&head, "host"), ["app.example:8080"]);
    assert_eq!(
        header_values(&head, "x-forwarded-host"),
        ["app.example:8080"]
    );

    // The target's authority is held to the rules of Host.
    let r = one(
        lb.proxy_addr(),
        "GET http://user@app.example/ HTTP/1.1\r\nHost: app.example\r\n\r\n",
    )
    .await;
    assert_refused(&r, 400);
    // RFC 9112 §3.2: an HTTP/1.1 request without Host is refused whatever
    // its target says.
    let r = one(lb.proxy_addr(), "GET http://app.example/ HTTP/1.1\r\n\r\n").await;
    assert_refused(&r, 400);
    assert_eq!(b.heads().len(), 1);
    lb.shutdown().await;
}

#[tokio::test]
async fn h2_authority_wins_over_a_differing_host() {
    use http_body_util::{BodyExt, Empty};
    let b = raw_backend(ok).await;
    let lb = balancer(&config(&[b.addr])).await;
    let mut sender = support::h2c::connect(lb.proxy_addr()).await;
    let mut send = |host: Option<&'static str>| {
        let mut req = http::Request::get("http://app.example/h2");
        if let Some(h) = host {
            req = req.header("host", h);
        }
        let req = req.body(Empty::<bytes::Bytes>::new()).expect("request");
        sender.send_request(req)
    };
    let r = send(Some("other.example")).await.expect("h2 response");
    assert_eq!(r.status(), 200);
    let _ = r.into_body().collect().await;
    let head = only_head(&b);
    assert!(head.starts_with("GET /h2 HTTP/1.1\r\n"), "{head}");
    assert_eq!(header_values(&head, "host"), ["app.example"]);
    assert_eq!(header_values(&head, "x-forwarded-host"), ["app.example"]);

    // Host rules hold on h2 too.
    let r = send(Some("bad host")).await.expect("h2 response");
    assert_eq!(r.status(), 400);
    assert_eq!(b.heads().len(), 1);
    lb.shutdown().await;
}

#[tokio::test]
async fn connect_is_refused_with_405_and_never_forwarded() {
    let b = raw_backend(ok).await;
    let lb = balancer(&config(&[b.addr])).await;
    let r = one(
        lb.proxy_addr(),
        "CONNECT app.example:443 HTTP/1.1\r\nHost: app.example:443\r\n\r\n",
    )
    .await;
    let body = assert_refused(&r, 405);
    assert_eq!(body["message"], "Method CONNECT is not allowed");
    let allow = r.header("allow");
    assert_eq!(allow.len(), 1, "{}", r.head);
    assert!(
        allow[0].contains("GET") && !allow[0].contains("CONNECT"),
        "{allow:?}"
    );
    assert!(b.heads().is_empty(), "{:?}", b.heads());
    lb.shutdown().await;
}

/// `101` to `/upgrade`, `200 ok` to anything else.
fn switches_on_upgrade_path(head: &str) -> String {
    if head.starts_with("GET /upgrade ") {
        "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
            .into()
    } else {
        ok(head)
    }
}

#[tokio::test]
async fn a_101_nobody_asked_for_is_a_502_and_the_next_request_is_served() {
    let b = raw_backend(switches_on_upgrade_path).await;
    let lb = balancer(&config(&[b.addr])).await;
    let mut c = RawClient::connect(lb.proxy_addr()).await;
    // Pipelined: the second request is already in the proxy's buffer when
    // the backend switches protocols on the first.
    c.send(
        b"GET /upgrade HTTP/1.1\r\nHost: app.example\r\n\r\n\
          GET /after HTTP/1.1\r\nHost: app.example\r\n\r\n",
    )
    .await;
    let first = c.response().await;
    let body = assert_refused(&first, 502);
    assert_eq!(
        body["message"],
        "Bad gateway: backend switched protocols without an upgrade request"
    );
    let second = c.response().await;
    assert_eq!(second.status, 200, "{}", second.head);
    assert_eq!(second.body, b"ok");
    // A backend connection that switched protocols is never reused.
    let again = one(
        lb.proxy_addr(),
        "GET /again HTTP/1.1\r\nHost: app.example\r\n\r\n",
    )
    .await;
    assert_eq!(again.status, 200, "{}", again.head);
    lb.shutdown().await;
}

#[tokio::test]
async fn an_upgrade_answered_200_is_an_ordinary_response() {
    // The upgrade headers reach the backend; a backend that does not
    // switch answers as to any request, and the client gets that answer.
    let b = raw_backend(switches_on_upgrade_path).await;
    let lb = balancer(&config(&[b.addr])).await;
    let ws = "Host: app.example\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let r = one(lb.proxy_addr(), &format!("GET /ws HTTP/1.1\r\n{ws}")).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(r.body, b"ok");
    let head = only_head(&b);
    assert_eq!(header_values(&head, "upgrade"), ["websocket"], "{head}");
    assert_eq!(header_values(&head, "connection"), ["upgrade"], "{head}");
    assert_eq!(
        header_values(&head, "sec-websocket-key"),
        ["dGhlIHNhbXBsZSBub25jZQ=="],
        "{head}"
    );
    // A backend that switches to something the client did not ask for is
    // not believed.
    let foo = ws.replace("Upgrade: websocket", "Upgrade: foo/1");
    let r = one(lb.proxy_addr(), &format!("GET /upgrade HTTP/1.1\r\n{foo}")).await;
    let body = assert_refused(&r, 502);
    assert_eq!(
        body["message"],
        "Bad gateway: backend switched to a protocol the client did not ask for"
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn a_malformed_chunked_body_is_the_clients_400() {
    let b = raw_backend(ok).await;
    let lb = balancer(&config(&[b.addr])).await;
    let r = one(
        lb.proxy_addr(),
        "POST /upload HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\nhello\r\nnot-a-size\r\n\r\n",
    )
    .await;
    let body = assert_refused(&r, 400);
    let message = body["message"].as_str().expect("message");
    assert!(message.starts_with("Malformed request body: "), "{message}");
    // Not held against the backend.
    assert!(lb.pool().backends().iter().all(|b| b.is_healthy()));
    let r = one(
        lb.proxy_addr(),
        "GET / HTTP/1.1\r\nHost: app.example\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.head);
    lb.shutdown().await;
}

#[tokio::test]
async fn a_body_that_breaks_after_the_backend_answered_cuts_the_response() {
    // The demo's /echo answers as soon as the head arrives; by the time
    // the body breaks, its 200 is on its way and cannot become a 400.
    let b = support::backend("echo").await;
    let lb = balancer(&config(&[b.addr])).await;
    let mut c = RawClient::connect(lb.proxy_addr()).await;
    c.send(
        b"POST /echo HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n",
    )
    .await;
    let head = c.head().await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    c.send(b"not-a-size\r\n\r\n").await;
    let rest = c.rest().await;
    assert!(
        !rest.ends_with(b"0\r\n\r\n"),
        "the echo ended as if complete: {:?}",
        String::from_utf8_lossy(&rest)
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn transfer_codings_other_than_chunked_are_refused() {
    let b = raw_backend(ok).await;
    let lb = balancer(&config(&[b.addr])).await;
    let post = |te: &str| {
        format!("POST /in HTTP/1.1\r\nHost: app.example\r\n{te}\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    };
    for te in [
        "Transfer-Encoding: gzip, chunked",
        "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: identity, chunked",
    ] {
        let r = one(lb.proxy_addr(), &post(te)).await;
        let body = assert_refused(&r, 501);
        assert_eq!(
            body["message"], "Transfer-Encoding other than chunked is not implemented",
            "{te}"
        );
    }
    for te in [
        "Transfer-Encoding: chunked, chunked",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
    ] {
        let r = one(lb.proxy_addr(), &post(te)).await;
        let body = assert_refused(&r, 400);
        assert_eq!(body["message"], "Invalid Transfer-Encoding header", "{te}");
    }
    // hyper's parser refuses a last coding other than chunked on its own
    // (the length of such a body cannot be known).
    for te in ["Transfer-Encoding: gzip", "Transfer-Encoding: chunked,"] {
        let r = one(lb.proxy_addr(), &post(te)).await;
        assert_eq!(r.status, 400, "{te}: {}", r.head);
    }
    assert!(b.heads().is_empty(), "{:?}", b.heads());

    // Coding names are case-insensitive: this one is plain chunked.
    let r = one(lb.proxy_addr(), &post("Transfer-Encoding: Chunked")).await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(b.heads().len(), 1);
    lb.shutdown().await;
}

#[tokio::test]
async fn header_names_with_underscores_are_dropped() {
    let b = raw_backend(ok).await;
    let mut cfg = config(&[b.addr]);
    cfg.rate_limit.default = Limits::new(1, 0.0).expect("valid");
    let lb = balancer(&cfg).await;
    lb.registry()
        .set_limits(
            &ClientKey::api("k1").expect("key"),
            Limits::new(1, 0.0).expect("valid"),
        )
        .expect("room");
    let r = one(
        lb.proxy_addr(),
        "GET / HTTP/1.1\r\nHost: app.example\r\nX_API_Key: k1\r\nX-Kept: 1\r\nUser_Agent: x\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.head);
    let head = only_head(&b);
    assert!(!head.contains('_'), "{head}");
    assert_eq!(header_values(&head, "x-kept"), ["1"]);
    // The IP was charged, not k1: tollgate did not see a key, and the
    // backend did not get one either.
    let r = one(
        lb.proxy_addr(),
        "GET / HTTP/1.1\r\nHost: app.example\r\nX-API-Key: k1\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.head);
    lb.shutdown().await;
}

#[tokio::test]
async fn underscores_in_header_names_can_be_allowed() {
    let b = raw_backend(ok).await;
    let mut cfg = config(&[b.addr]);
    cfg.proxy.allow_underscores_in_headers = true;
    let lb = balancer(&cfg).await;
    let r = one(
        lb.proxy_addr(),
        "GET / HTTP/1.1\r\nHost: app.example\r\nX_Custom: 1\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.head);
    assert_eq!(header_values(&only_head(&b), "x_custom"), ["1"]);
    lb.shutdown().await;
}

#[tokio::test]
async fn several_api_key_headers_are_refused() {
    let b = raw_backend(ok).await;
    let mut cfg = config(&[b.addr]);
    cfg.rate_limit.default = Limits::new(1, 0.0).expect("valid");
    let lb = balancer(&cfg).await;
    lb.registry()
        .set_limits(
            &ClientKey::api("k1").expect("key"),
            Limits::new(1, 0.0).expect("valid"),
        )
        .expect("room");
    let with_key = "GET / HTTP/1.1\r\nHost: app.example\r\nX-API-Key: k1\r\n\r\n";
    assert_eq!(one(lb.proxy_addr(), with_key).await.status, 200);
    assert_eq!(one(lb.proxy_addr(), with_key).await.status, 429);
    // k1 is spent; an unknown key in front would be charged to the IP
    // while the backend might read the second.
    let r = one(
        lb.proxy_addr(),
        "GET / HTTP/1.1\r\nHost: app.example\r\nX-API-Key: nope\r\nx-api-key: k1\r\n\r\n",
    )
    .await;
    let body = assert_refused(&r, 400);
    assert_eq!(body["message"], "More than one x-api-key header");
    assert!(
        r.header("ratelimit").is_empty(),
        "a refused request is not charged"
    );
    assert_eq!(b.heads().len(), 1, "{:?}", b.heads());
    // The IP's single token is still there.
    let r = one(
        lb.proxy_addr(),
        "GET / HTTP/1.1\r\nHost: app.example\r\n\r\n",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.head);
    lb.shutdown().await;
}
