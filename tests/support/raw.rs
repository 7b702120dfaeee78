//! Both ends of the wire as raw bytes: a backend that records exactly what
//! tollgate sent it and can give answers no well-behaved server gives, and
//! a client that writes requests no well-behaved client writes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a test waits for bytes that should come before it gives up.
const PATIENCE: Duration = Duration::from_secs(5);

/// A backend on a raw socket. `GET /health` gets `200 ok` and is not
/// recorded (health checks must pass); every other request's head is
/// recorded as soon as it is read, then its body is read (by
/// `Content-Length` or to the last chunk) and the request answered with
/// `answer(head)`. After a `101` answer the
/// connection is read to its end and dropped.
pub struct RawBackend {
    /// Where it listens.
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawBackend {
    /// Every request head received so far, request line first, in order.
    pub fn heads(&self) -> Vec<String> {
        self.heads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `200 ok` with a length.
pub fn ok(_head: &str) -> String {
    "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".into()
}

/// Starts a raw backend on 127.0.0.1:0.
pub async fn raw_backend(answer: fn(&str) -> String) -> RawBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let heads = Arc::new(Mutex::new(Vec::new()));
    let recorded = heads.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, recorded.clone(), answer));
        }
    });
    RawBackend { addr, heads, task }
}

async fn serve(mut s: TcpStream, heads: Arc<Mutex<Vec<String>>>, answer: fn(&str) -> String) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = fill_until(&mut s, &mut buf, |b| find(b, b"\r\n\r\n")).await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        let health = head.starts_with("GET /health ");
        if !health {
            heads
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(head.clone());
        }
        let lower = head.to_ascii_lowercase();
        if lower.contains("\ntransfer-encoding: chunked") {
            let Some(last) = fill_until(&mut s, &mut buf, |b| find(b, b"0\r\n\r\n")).await else {
                return;
            };
            buf.drain(..last + 5);
        } else if let Some(n) = header(&lower, "content-length").and_then(|v| v.parse().ok()) {
            let n: usize = n;
            if fill_until(&mut s, &mut buf, |b| (b.len() >= n).then_some(n))
                .await
                .is_none()
            {
                return;
            }
            buf.drain(..n);
        }
        let reply = if health { ok(&head) } else { answer(&head) };
        if s.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
        if reply.starts_with("HTTP/1.1 101") {
            let mut sink = [0u8; 1024];
            while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            return;
        }
    }
}

/// Reads into `buf` until `done(buf)` gives a position; `None` at EOF.
async fn fill_until(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    done: impl Fn(&[u8]) -> Option<usize>,
) -> Option<usize> {
    loop {
        if let Some(at) = done(buf) {
            return Some(at);
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The value of the first `name:` line of a lower-cased head.
pub fn header<'a>(lower_head: &'a str, name: &str) -> Option<&'a str> {
    lower_head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        (n == name).then(|| v.trim())
    })
}

/// Every header line of `head` named `name` (case-insensitive), values trimmed.
pub fn header_values(head: &str, name: &str) -> Vec<String> {
    head.lines()
        .skip(1)
        .filter_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
        .collect()
}

/// One response as a raw client read it.
#[derive(Debug)]
pub struct RawResponse {
    /// The status code.
    pub status: u16,
    /// Status line and header lines.
    pub head: String,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.head))
    }

    /// Values of the header `name`.
    pub fn header(&self, name: &str) -> Vec<String> {
        header_values(&self.head, name)
    }
}

/// A client connection writing raw bytes and reading responses one by one.
pub struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> Self {
        Self {
            stream: TcpStream::connect(addr).await.expect("connect"),
            buf: Vec::new(),
        }
    }

    /// Writes `bytes` as they are.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads the next response; panics if none comes within 5 s.
    pub async fn response(&mut self) -> RawResponse {
        tokio::time::timeout(PATIENCE, self.read_response())
            .await
            .expect("a response within 5 s")
            .expect("a complete response before the connection closed")
    }

    /// Reads the next response head only (status line and headers).
    pub async fn head(&mut self) -> String {
        let read = fill_until(&mut self.stream, &mut self.buf, |b| find(b, b"\r\n\r\n"));
        let end = tokio::time::timeout(PATIENCE, read)
            .await
            .expect("a response head within 5 s")
            .expect("a response head before the connection closed");
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end + 4);
        head
    }

    /// Everything still to come until the server closes the connection.
    pub async fn rest(&mut self) -> Vec<u8> {
        let mut rest = std::mem::take(&mut self.buf);
        tokio::time::timeout(PATIENCE, self.stream.read_to_end(&mut rest))
            .await
            .expect("the connection closed within 5 s")
            .ok();
        rest
    }

    async fn read_response(&mut self) -> Option<RawResponse> {
        let s = &mut self.stream;
        let end = fill_until(s, &mut self.buf, |b| find(b, b"\r\n\r\n")).await?;
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.drain(..end + 4);
        let status = head.get(9..12)?.parse().ok()?;
        let lower = head.to_ascii_lowercase();
        let mut body = Vec::new();
        if header(&lower, "transfer-encoding") == Some("chunked") {
            loop {
                let line = fill_until(s, &mut self.buf, |b| find(b, b"\r\n")).await?;
                let size_text = String::from_utf8_lossy(&self.buf[..line]).into_owned();
                let size = usize::from_str_radix(size_text.trim(), 16).ok()?;
                self.buf.drain(..line + 2);
                fill_until(s, &mut self.buf, |b| (b.len() >= size + 2).then_some(0)).await?;
                body.extend(self.buf.drain(..size));
                self.buf.drain(..2);
                if size == 0 {
                    break;
                }
            }
        } else if let Some(n) = header(&lower, "content-length").and_then(|v| v.parse().ok()) {
            let n: usize = n;
            fill_until(s, &mut self.buf, |b| (b.len() >= n).then_some(n)).await?;
            body.extend(self.buf.drain(..n));
        } else if !(status == 101 || status == 204 || status == 304) {
            s.read_to_end(&mut self.buf).await.ok()?;
            body = std::mem::take(&mut self.buf);
        }
        Some(RawResponse { status, head, body })
    }
}

/// `server.max_header_bytes` for [`parser_refusals`]: above hyper's 64 KiB
/// limit on a URI, so that a long URI gets its 414 rather than a 431.
pub const REFUSALS_MAX_HEADER_BYTES: usize = 96 * 1024;

/// A request hyper's HTTP/1.1 parser refuses, with the status a balancer
/// whose `server.max_header_bytes` is [`REFUSALS_MAX_HEADER_BYTES`]
/// answers, and the method and path its access log line names.
pub struct Refusal {
    /// The bytes sent.
    pub request: Vec<u8>,
    /// The status answered.
    pub status: u16,
    /// `method` in the log line.
    pub method: &'static str,
    /// `path` in the log line.
    pub path: &'static str,
}

/// One request for each way the parser refuses: a malformed header line,
/// a head over the limit, a URI over hyper's, and bytes that are not
/// HTTP at all.
pub fn parser_refusals() -> Vec<Refusal> {
    let big = "a".repeat(120 * 1024);
    let long = "u".repeat(70 * 1024);
    vec![
        Refusal {
            request: b"GET /malformed HTTP/1.1\r\nno colon here\r\n\r\n".to_vec(),
            status: 400,
            method: "GET",
            path: "/malformed",
        },
        Refusal {
            request: format!("GET /big?q=1 HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n")
                .into_bytes(),
            status: 431,
            method: "GET",
            path: "/big",
        },
        Refusal {
            request: format!("POST /{long} HTTP/1.1\r\nhost: x\r\n\r\n").into_bytes(),
            status: 414,
            method: "POST",
            path: "-",
        },
        Refusal {
            request: b"\x01\x02 not http\r\n\r\n".to_vec(),
            status: 400,
            method: "-",
            path: "-",
        },
    ]
}

/// The status, lower-cased head and body of one raw response.
pub fn split_response(raw: &[u8]) -> (u16, String, String) {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, head.to_ascii_lowercase(), body.to_owned())
}
