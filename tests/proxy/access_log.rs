//! The access log (`log.access`) and `X-Request-Id`: lines captured from
//! the writer through a sink of the test's own, compared with what the
//! client got and what the backend saw.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use reqwest::StatusCode;
use tokio::net::TcpStream;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tollgate::app::{Running, StartOptions};
use tollgate::config::{CertificateConfig, Config, LogFormat, TlsConfig};
use tollgate::limiter::Limits;

use crate::support::raw::{parser_refusals, split_response, RawClient, REFUSALS_MAX_HEADER_BYTES};
use crate::support::tls::{exchange, TestCa};
use crate::support::{backends, client, closed_port, config, url};

/// What the writer thread writes, sent on to the test as it arrives.
struct ChannelSink(UnboundedSender<Vec<u8>>);

impl Write for ChannelSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.send(buf.to_vec());
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The captured log, a line at a time.
struct Lines {
    rx: UnboundedReceiver<Vec<u8>>,
    buf: Vec<u8>,
}

impl Lines {
    /// The next line; panics if none comes within 5 s.
    async fn next(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return String::from_utf8(line[..end].to_vec()).expect("utf-8 line");
            }
            let chunk = tokio::time::timeout(Duration::from_secs(5), self.rx.recv())
                .await
                .expect("an access log line within 5 s")
                .expect("the writer is running");
            self.buf.extend_from_slice(&chunk);
        }
    }

    /// The next line as JSON.
    async fn next_json(&mut self) -> serde_json::Value {
        let line = self.next().await;
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
    }
}

/// A balancer with `log.access: true`, its lines captured.
async fn logged(mut cfg: Config, format: LogFormat) -> (Running, Lines) {
    cfg.log.access = true;
    cfg.log.format = format;
    let (tx, rx) = unbounded_channel();
    let options = StartOptions {
        access_log_sink: Some(Box::new(ChannelSink(tx))),
        ..StartOptions::default()
    };
    let lb = tollgate::app::start_with(&cfg, options)
        .await
        .expect("balancer starts");
    (
        lb,
        Lines {
            rx,
            buf: Vec::new(),
        },
    )
}

fn request_id(r: &reqwest::Response) -> String {
    r.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned()
}

#[tokio::test]
async fn an_http3_request_gets_its_line_like_any_other() {
    let ca = TestCa::new("h3 CA");
    let cert = ca.issue("app", &["app.test"]);
    let bs = backends(1).await;
    let mut cfg = config(&[bs[0].addr]);
    crate::http3::with_http3(&mut cfg, &cert);
    let (lb, mut lines) = logged(cfg, LogFormat::Json).await;
    let addr = lb.http3_addr().expect("an HTTP/3 listener");
    let mut h3 = crate::http3::H3Client::connect(&ca, addr).await;
    let answer = h3.get("/some/path?q=1").await;
    assert_eq!(answer.head.status(), StatusCode::OK);
    let line = lines.next_json().await;
    assert_eq!(line["request_id"], answer.header("x-request-id"));
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/some/path");
    assert_eq!(line["status"], 200);
    assert_eq!(line["client"], "127.0.0.1");
    assert_eq!(line["backend"], bs[0].addr.to_string().as_str(), "{line}");
    assert_eq!(line["bytes_sent"], answer.body.len());
    lb.shutdown().await;
}

#[tokio::test]
async fn json_line_carries_the_request_id_the_backend_saw() {
    let bs = backends(1).await;
    let (lb, mut lines) = logged(config(&[bs[0].addr]), LogFormat::Json).await;
    let r = client()
        .get(url(lb.proxy_addr(), "/headers?secret=1"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::OK);
    let answered = request_id(&r);
    let body = r.bytes().await.expect("body");
    let seen: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(seen["x-request-id"], answered.as_str());
    assert_eq!(answered.len(), 32, "a new id: 128 bits in hex");

    let line = lines.next_json().await;
    assert_eq!(line["request_id"], answered.as_str());
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/headers", "no query string");
    assert_eq!(line["status"], 200);
    assert_eq!(line["client"], "127.0.0.1");
    // Its name: host:port when the config gives none.
    assert_eq!(line["backend"], bs[0].addr.to_string().as_str(), "{line}");
    assert_eq!(line["limited"], serde_json::Value::Null);
    assert_eq!(line["bytes_sent"], body.len());
    assert!(line["duration_ms"].as_f64().is_some_and(|d| d >= 0.0));
    let ts = line["ts"].as_str().expect("ts");
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[19] == b'.',
        "{ts}"
    );
    lb.shutdown().await;
}

#[tokio::test]
async fn the_clients_request_id_is_kept_and_a_bad_one_replaced() {
    let bs = backends(1).await;
    let (lb, mut lines) = logged(config(&[bs[0].addr]), LogFormat::Json).await;
    let c = client();
    let headers_of = |id: &'static str| {
        c.get(url(lb.proxy_addr(), "/headers"))
            .header("x-request-id", id)
            .send()
    };
    let r = headers_of("client-id-42").await.expect("request");
    assert_eq!(request_id(&r), "client-id-42");
    let seen: serde_json::Value = r.json().await.expect("json");
    assert_eq!(seen["x-request-id"], "client-id-42");
    assert_eq!(lines.next_json().await["request_id"], "client-id-42");

    let r = headers_of("two words").await.expect("request");
    let replaced = request_id(&r);
    assert_ne!(replaced, "two words");
    let seen: serde_json::Value = r.json().await.expect("json");
    assert_eq!(seen["x-request-id"], replaced.as_str());
    assert_eq!(lines.next_json().await["request_id"], replaced.as_str());
    lb.shutdown().await;
}

#[tokio::test]
async fn a_refused_request_is_logged_as_limited_by_its_client_bucket() {
    let bs = backends(1).await;
    let mut cfg = config(&[bs[0].addr]);
    cfg.rate_limit.default = Limits::new(1, 0.001).expect("limits");
    let (lb, mut lines) = logged(cfg, LogFormat::Json).await;
    let c = client();
    let first = c
        .get(url(lb.proxy_addr(), "/"))
        .send()
        .await
        .expect("first");
    assert_eq!(first.status(), StatusCode::OK);
    let line = lines.next_json().await;
    assert_eq!(line["limited"], serde_json::Value::Null);

    let refused = c
        .get(url(lb.proxy_addr(), "/"))
        .send()
        .await
        .expect("second");
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let id = request_id(&refused);
    let body = refused.bytes().await.expect("body");
    let line = lines.next_json().await;
    assert_eq!(line["status"], 429);
    assert_eq!(line["limited"], "client");
    assert_eq!(line["backend"], serde_json::Value::Null);
    assert_eq!(line["client"], "127.0.0.1");
    assert_eq!(line["request_id"], id.as_str());
    assert_eq!(line["bytes_sent"], body.len());
    lb.shutdown().await;
}

/// An IPv6 client is logged by the key it is limited by: its network.
#[tokio::test]
async fn an_ipv6_client_is_logged_by_its_network() {
    let bs = backends(1).await;
    let mut cfg = config(&[bs[0].addr]);
    cfg.rate_limit.trusted_proxies = vec!["127.0.0.0/8".parse().expect("cidr")];
    let (lb, mut lines) = logged(cfg, LogFormat::Json).await;
    let r = client()
        .get(url(lb.proxy_addr(), "/"))
        .header("x-forwarded-for", "2001:db8:1:2:3::4")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(lines.next_json().await["client"], "2001:db8:1:2::/64");
    lb.shutdown().await;
}

#[tokio::test]
async fn tollgates_own_errors_are_logged_with_their_request_id() {
    // A backend that is down: 503 from tollgate itself.
    let (lb, mut lines) = logged(config(&[closed_port()]), LogFormat::Json).await;
    let r = client()
        .get(url(lb.proxy_addr(), "/x"))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let id = request_id(&r);
    let line = lines.next_json().await;
    assert_eq!(line["status"], 503);
    assert_eq!(line["backend"], serde_json::Value::Null);
    assert_eq!(line["request_id"], id.as_str());

    // A strict HTTP refusal, before the limiter: the id is there too.
    let mut raw = RawClient::connect(lb.proxy_addr()).await;
    raw.send(b"CONNECT app.example:443 HTTP/1.1\r\nHost: app.example:443\r\nX-Request-Id: refused-1\r\n\r\n")
        .await;
    let r = raw.response().await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("x-request-id"), ["refused-1"]);
    let line = lines.next_json().await;
    assert_eq!(line["status"], 405);
    assert_eq!(line["method"], "CONNECT");
    assert_eq!(line["request_id"], "refused-1");
    assert_eq!(line["limited"], serde_json::Value::Null);
    lb.shutdown().await;
}

/// `key=value key="quoted value"` into a map; `null` stays `None`.
fn parse_text(line: &str) -> HashMap<String, Option<String>> {
    let mut fields = HashMap::new();
    let mut rest = line;
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=').expect("key=value");
        let (value, after) = if after.starts_with('"') {
            // A JSON string: find its end by parsing a growing prefix.
            let end = (2..=after.len())
                .find(|&n| serde_json::from_str::<String>(&after[..n]).is_ok())
                .expect("closed quote");
            let v: String = serde_json::from_str(&after[..end]).expect("string");
            (Some(v), &after[end..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            let v = &after[..end];
            ((v != "null").then(|| v.to_owned()), &after[end..])
        };
        fields.insert(key.to_owned(), value);
        rest = after.strip_prefix(' ').unwrap_or(after);
    }
    fields
}

#[tokio::test]
async fn text_lines_parse_into_the_same_fields() {
    let bs = backends(1).await;
    let (lb, mut lines) = logged(config(&[bs[0].addr]), LogFormat::Text).await;
    let r = client()
        .get(url(lb.proxy_addr(), "/bytes/100000"))
        .header("x-request-id", "a=\"b\"")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.expect("body").len(), 100_000);
    let line = lines.next().await;
    let fields = parse_text(&line);
    let field = |k: &str| {
        fields
            .get(k)
            .unwrap_or_else(|| panic!("no {k} in {line}"))
            .clone()
    };
    assert_eq!(fields.len(), 10, "{line}");
    assert_eq!(field("request_id").as_deref(), Some("a=\"b\""), "{line}");
    assert_eq!(field("method").as_deref(), Some("GET"));
    assert_eq!(field("path").as_deref(), Some("/bytes/100000"));
    assert_eq!(field("status").as_deref(), Some("200"));
    assert_eq!(field("bytes_sent").as_deref(), Some("100000"));
    assert_eq!(field("limited"), None);
    assert_eq!(field("client").as_deref(), Some("127.0.0.1"));
    assert!(field("backend").is_some());
    assert!(field("duration_ms")
        .and_then(|d| d.parse::<f64>().ok())
        .is_some());
    lb.shutdown().await;
}

#[tokio::test]
async fn request_ids_are_set_with_the_access_log_off() {
    let bs = backends(1).await;
    let mut cfg = config(&[bs[0].addr]);
    cfg.rate_limit.default = Limits::new(1, 0.001).expect("limits");
    let lb = crate::support::balancer(&cfg).await;
    let c = client();
    let r = c
        .get(url(lb.proxy_addr(), "/headers"))
        .send()
        .await
        .expect("request");
    let id = request_id(&r);
    let seen: serde_json::Value = r.json().await.expect("json");
    assert_eq!(seen["x-request-id"], id.as_str());
    let refused = c
        .get(url(lb.proxy_addr(), "/headers"))
        .header("x-request-id", "mine")
        .send()
        .await
        .expect("request");
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(request_id(&refused), "mine");
    lb.shutdown().await;
}

#[tokio::test]
async fn a_request_id_named_in_connection_still_reaches_the_backend() {
    let bs = backends(1).await;
    let lb = crate::support::balancer(&config(&[bs[0].addr])).await;
    let mut raw = RawClient::connect(lb.proxy_addr()).await;
    raw.send(
        b"GET /headers HTTP/1.1\r\nHost: app\r\nConnection: keep-alive, x-request-id\r\n\
          X-Request-Id: hop-1\r\n\r\n",
    )
    .await;
    let r = raw.response().await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["x-request-id"], "hop-1");
    assert_eq!(r.header("x-request-id"), ["hop-1"]);
    lb.shutdown().await;
}

#[tokio::test]
async fn parser_refusals_are_logged_on_both_listeners() {
    let bs = backends(1).await;
    let ca = TestCa::new("test CA");
    let site = ca.issue("site", &["app.test"]);
    let mut cfg = config(&[bs[0].addr]);
    cfg.server.max_header_bytes = REFUSALS_MAX_HEADER_BYTES;
    cfg.server.tls = Some(TlsConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        certificates: vec![CertificateConfig {
            cert: site.cert.clone(),
            key: site.key.clone(),
        }],
        ..TlsConfig::default()
    });
    let (lb, mut lines) = logged(cfg, LogFormat::Json).await;
    let plain = lb.plain_addr().expect("plain listener");
    let tls = lb.tls_addr().expect("TLS listener");
    for over_tls in [false, true] {
        for refusal in parser_refusals() {
            let tcp = TcpStream::connect(if over_tls { tls } else { plain })
                .await
                .expect("connect");
            let answer = if over_tls {
                exchange(ca.tls_over(tcp).await, &refusal.request).await
            } else {
                exchange(tcp, &refusal.request).await
            };
            let listener = if over_tls { "TLS" } else { "plain" };
            assert_eq!(split_response(&answer).0, refusal.status, "{listener}");
            let line = lines.next_json().await;
            assert_eq!(line["status"], refusal.status, "{listener}: {line}");
            assert_eq!(line["method"], refusal.method, "{listener}: {line}");
            assert_eq!(line["path"], refusal.path, "{listener}: {line}");
            assert_eq!(line["client"], "127.0.0.1", "{line}");
            assert_eq!(line["backend"], serde_json::Value::Null, "{line}");
            let id = line["request_id"].as_str().expect("a request id");
            assert!(
                id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
                "a new id: {line}"
            );
            assert!(line["bytes_sent"].as_u64().is_some_and(|n| n > 0), "{line}");
        }
    }
    lb.shutdown().await;
}
