//! The access log (`log.access: true`): one line per answered request,
//! written by a thread of its own.
//!
//! The request path only fills a [`Record`] and offers it to a bounded
//! channel ([`AccessLog::send`]); formatting and writing happen on the
//! writer thread, so a slow terminal, pipe or disk never holds a request
//! up. When the channel is full the record is dropped and counted
//! ([`crate::telemetry::ACCESS_LOG_DROPPED`]) instead of waiting.
//!
//! The queue is bounded twice: in records ([`DEFAULT_CAPACITY`]) and in
//! bytes ([`DEFAULT_MAX_BYTES`]), each record charged its own size and
//! the bytes of its path and request id. A record owns those bytes: the
//! path and id of a parsed request are slices of the whole request head
//! (up to `server.max_header_bytes`, 1 MiB), and a queued slice kept all
//! of it alive: with stdout blocked, 16,384 records with 30 KB headers
//! held 581 MB. Sending copies the path (not the query, which is not
//! logged) and the id, a few dozen bytes, so what the queue holds is
//! what it counts.
//!
//! A record is sent when the response body is finished (or abandoned by a
//! client that went away), not when the response head leaves: operators
//! read `duration_ms` and `bytes_sent` as the whole exchange.
//! [`LoggedBody`] counts the body bytes and sends the record then.

use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method};
use http_body::Frame;
use http_body_util::BodyExt;

use crate::balancer::Backend;
use crate::body::{Body, Watched};
use crate::limiter::ClientKey;
use crate::telemetry::{self, Throttle};

/// Records the channel holds before new ones are dropped: at about 250
/// bytes each, 4 MB; half a second of lines at 30k requests/s, many
/// times what arrives during one [`BATCH_PAUSE`].
pub const DEFAULT_CAPACITY: usize = 16 * 1024;

/// Bytes the queued records may hold before new ones are dropped
/// ([`Record::cost`]): 8 MiB, twice [`DEFAULT_CAPACITY`] records of the
/// usual size, and what bounds the queue when paths are long.
pub const DEFAULT_MAX_BYTES: usize = 8 << 20;

/// How long the writer waits after writing a batch before taking the
/// next one (see `write_lines`).
pub const BATCH_PAUSE: Duration = Duration::from_millis(20);

/// The line format (`log.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `key=value` pairs, values quoted when needed.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where the writer thread puts the lines (stdout by default; tests pass
/// a buffer of their own).
pub type Sink = Box<dyn Write + Send>;

/// Why the access log could not start.
#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    /// The writer thread could not be spawned.
    #[error("cannot start the access log writer thread: {0}")]
    Spawn(#[source] std::io::Error),
}

/// Who the request was charged to: what the limiter keyed on, or the
/// client's address when no bucket was consulted.
#[derive(Debug, Clone)]
pub enum Client {
    /// The limiter's key (an API key client id or an address).
    Key(ClientKey),
    /// The client's address (limiting off, or refused before it).
    Ip(IpAddr),
}

/// Which limit refused the request (`limited` in the line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limited {
    /// The client's own bucket.
    Client,
    /// A rule's bucket (`rate_limit.rules`), by the rule's name.
    Rule(std::sync::Arc<str>),
}

impl Limited {
    fn as_str(&self) -> &str {
        match self {
            Self::Client => "client",
            Self::Rule(name) => name,
        }
    }
}

/// One request as the access log sees it. Every field is cheap to move
/// (the URI and the id share their bytes with the request), so filling
/// one costs no formatting on the request path.
#[derive(Debug)]
pub struct Record {
    /// When the request arrived.
    pub ts: SystemTime,
    /// Who it was charged to.
    pub client: Client,
    /// Its method; `None` (logged `-`) for a request head the HTTP/1.1
    /// parser refused before a method could be read.
    pub method: Option<Method>,
    /// Its target's path and query (only the path is logged: query
    /// strings often carry credentials; the scheme and authority of an
    /// absolute target are not kept, so a queued record stays small);
    /// `None` (logged `-`) when a refused head had none that could be
    /// read, or one too long to log.
    pub uri: Option<PathAndQuery>,
    /// The status answered.
    pub status: u16,
    /// The backend that answered, if one did.
    pub backend: Option<Arc<Backend>>,
    /// Until the body was finished.
    pub duration: Duration,
    /// Response body bytes handed to the connection.
    pub bytes_sent: u64,
    /// Which limit refused it, if one did.
    pub limited: Option<Limited>,
    /// The `X-Request-Id` the backend was given.
    pub request_id: HeaderValue,
    /// The route and the pool (`None`: the request reached none), when
    /// pools or routes are configured; then the line carries `route` and
    /// `pool`. Boxed: most configs have none, and every queued record
    /// would otherwise carry the room.
    pub place: Option<Box<Place>>,
}

/// Where a request went, for a config with pools or routes.
#[derive(Debug, Clone, Default)]
pub struct Place {
    /// The route it took (`None`: none).
    pub route: Option<Arc<str>>,
    /// The pool it went to (`None`: none).
    pub pool: Option<Arc<str>>,
}

impl Record {
    /// What this record holds in the queue: its own size and the bytes
    /// of its path and request id.
    pub fn cost(&self) -> usize {
        std::mem::size_of::<Message>()
            + self.uri.as_ref().map_or(0, |u| u.as_str().len())
            + self.request_id.len()
    }

    /// The path (without the query) and the request id in bytes of their
    /// own, not slices of the request head they were parsed from.
    fn detach(&mut self) {
        if let Some(uri) = &self.uri {
            self.uri = PathAndQuery::try_from(uri.path()).ok();
        }
        if let Ok(id) = HeaderValue::from_bytes(self.request_id.as_bytes()) {
            self.request_id = id;
        }
    }
}

/// The name a backend goes by in the access log: its configured `name`
/// (default `host:port`), as in `/backends` and the metrics.
fn backend_name(backend: &Backend) -> Arc<str> {
    backend.name()
}

// Not boxed: the queue is a fixed array of slots, so an unboxed record
// costs no allocation per request; a Stop is sent once.
#[allow(clippy::large_enum_variant)]
enum Message {
    Line(Record),
    Stop,
}

/// The request path's handle on the access log: cheap to clone (one
/// reference count: every response that is logged holds a clone, and
/// cloning each field was four atomic writes to lines every proxy thread
/// shares), never blocks.
#[derive(Clone)]
pub struct AccessLog {
    shared: Arc<Shared>,
}

struct Shared {
    tx: SyncSender<Message>,
    /// Bytes the queued records hold ([`Record::cost`]).
    queued: Arc<AtomicUsize>,
    max_bytes: usize,
    dropped: Arc<AtomicU64>,
    /// [`telemetry::ACCESS_LOG_DROPPED`].
    dropped_metric: metrics::Counter,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

/// The writer thread, owned by whoever stops it at shutdown.
#[derive(Debug)]
pub struct Writer {
    tx: SyncSender<Message>,
    thread: std::thread::JoinHandle<()>,
}

static DROPS: Throttle = Throttle::new();
static WRITE_ERRORS: Throttle = Throttle::new();

/// How many records, and how many bytes of them, may wait for the
/// writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Records.
    pub records: usize,
    /// Bytes ([`Record::cost`]).
    pub bytes: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            records: DEFAULT_CAPACITY,
            bytes: DEFAULT_MAX_BYTES,
        }
    }
}

/// Starts the writer thread: lines in `format` to `sink`, at most
/// `bounds` waiting.
/// Dropped lines are counted in `metrics`.
pub fn start(
    format: Format,
    sink: Sink,
    bounds: Bounds,
    metrics: &telemetry::Metrics,
) -> Result<(AccessLog, Writer), AccessLogError> {
    let (tx, rx) = mpsc::sync_channel(bounds.records);
    let queued = Arc::new(AtomicUsize::new(0));
    let written = queued.clone();
    let thread = std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || write_lines(&rx, format, sink, &written))
        .map_err(AccessLogError::Spawn)?;
    let log = AccessLog {
        shared: Arc::new(Shared {
            tx: tx.clone(),
            queued,
            max_bytes: bounds.bytes,
            dropped: Arc::new(AtomicU64::new(0)),
            dropped_metric: metrics.counter(telemetry::ACCESS_LOG_DROPPED, &[]),
        }),
    };
    Ok((log, Writer { tx, thread }))
}

impl AccessLog {
    /// Offers `record` to the writer; drops and counts it when the writer
    /// is behind (the queue holds its records or its bytes already) or
    /// gone.
    pub fn send(&self, mut record: Record) {
        record.detach();
        let cost = record.cost();
        let before = self.shared.queued.fetch_add(cost, Ordering::Relaxed);
        if before + cost > self.shared.max_bytes {
            self.shared.queued.fetch_sub(cost, Ordering::Relaxed);
            self.drop_one();
            return;
        }
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.shared.tx.try_send(Message::Line(record))
        {
            self.shared.queued.fetch_sub(cost, Ordering::Relaxed);
            self.drop_one();
        }
    }

    fn drop_one(&self) {
        self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        self.shared.dropped_metric.increment(1);
        DROPS.note(|before| {
            tracing::warn!(
                dropped = before + 1,
                "access log writer is behind; lines dropped"
            );
        });
    }

    /// Bytes the records waiting for the writer hold now.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// Records dropped so far by this log.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// `response` with a body that sends `record` (its duration and byte
    /// count filled in) when it is finished or dropped.
    pub fn wrap(
        &self,
        response: http::Response<Body>,
        record: Record,
        started: Instant,
    ) -> http::Response<Body> {
        let (parts, body) = response.into_parts();
        let logged = Logged {
            pending: Some(Pending {
                log: self.clone(),
                record,
                started,
            }),
        };
        http::Response::from_parts(parts, Watched::new(body, logged).boxed_unsync())
    }
}

impl Writer {
    /// Writes what is queued and stops the thread. Blocks: call it off the
    /// async runtime. Lines sent after this are dropped.
    pub fn stop(self) {
        // A send, not a try_send: the writer empties the queue, so there
        // is room for the stop once the lines before it are written.
        if self.tx.send(Message::Stop).is_ok() {
            let _ = self.thread.join();
        }
    }
}

/// The writer thread: takes what is queued, writes it in one batch,
/// flushes, and pauses for [`BATCH_PAUSE`] before looking again.
///
/// The pause is what makes the log cheap under load: while the writer is
/// parked in `recv`, every record sent wakes it (a futex call on the
/// request path and a context switch per request); while it pauses,
/// senders only move a record into the queue. A quiet balancer's line is
/// written at once (the writer waits in `recv` when the queue is empty).
fn write_lines(rx: &Receiver<Message>, format: Format, sink: Sink, queued: &AtomicUsize) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, sink);
    let mut line = Vec::with_capacity(512);
    let mut stop = false;
    while !stop {
        let Ok(first) = rx.recv() else { break };
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Stop => {
                    stop = true;
                    break;
                }
                Message::Line(record) => {
                    queued.fetch_sub(record.cost(), Ordering::Relaxed);
                    line.clear();
                    format_line(&mut line, &record, format);
                    if let Err(e) = out.write_all(&line) {
                        write_failed(&e);
                    }
                }
            }
            next = rx.try_recv().ok();
        }
        if let Err(e) = out.flush() {
            write_failed(&e);
        }
        if !stop {
            std::thread::sleep(BATCH_PAUSE);
        }
    }
    if let Err(e) = out.flush() {
        write_failed(&e);
    }
}

fn write_failed(e: &std::io::Error) {
    WRITE_ERRORS.note(|before| {
        tracing::warn!(error = %e, earlier = before, "access log write failed");
    });
}

/// Appends one line (with its newline) for `record` to `out`.
pub fn format_line(out: &mut Vec<u8>, record: &Record, format: Format) {
    let mut ts = [0u8; 24];
    let ts = rfc3339_millis(record.ts, &mut ts);
    let mut ip_buf = [0u8; 15];
    let client: std::borrow::Cow<'_, str> = match &record.client {
        Client::Key(ClientKey::Ip(ip)) | Client::Ip(ip) => ip_text(ip.to_canonical(), &mut ip_buf),
        Client::Key(key) => key.to_string().into(),
    };
    let backend = record.backend.as_deref().map(backend_name);
    let backend = backend.as_deref();
    let limited = record.limited.as_ref().map(Limited::as_str);
    // Ids are visible ASCII unless a client sent otherwise: checked
    // without the UTF-8 decoder the lossy conversion runs.
    let request_id = match record.request_id.to_str() {
        Ok(id) => std::borrow::Cow::Borrowed(id),
        Err(_) => String::from_utf8_lossy(record.request_id.as_bytes()),
    };
    let mut status = itoa::Buffer::new();
    let status = status.format(record.status);
    let mut bytes = itoa::Buffer::new();
    let bytes = bytes.format(record.bytes_sent);
    let mut duration = [0u8; 32];
    let duration = millis(record.duration, &mut duration);
    let place = record.place.as_ref().map(|p| {
        [
            ("route", p.route.as_deref().map_or(Value::Null, Value::Str)),
            ("pool", p.pool.as_deref().map_or(Value::Null, Value::Str)),
        ]
    });
    let core: [(&str, Value<'_>); 10] = [
        ("ts", Value::Str(ts)),
        ("client", Value::Str(&client)),
        (
            "method",
            Value::Str(record.method.as_ref().map_or("-", Method::as_str)),
        ),
        (
            "path",
            Value::Str(record.uri.as_ref().map_or("-", PathAndQuery::path)),
        ),
        ("status", Value::Number(status)),
        ("backend", backend.map_or(Value::Null, Value::Str)),
        ("duration_ms", Value::Number(duration)),
        ("bytes_sent", Value::Number(bytes)),
        ("limited", limited.map_or(Value::Null, Value::Str)),
        ("request_id", Value::Str(&request_id)),
    ];
    // `route` and `pool` follow `backend`; without pools or routes the
    // line is what it always was.
    let (head, tail) = core.split_at(6);
    let fields = head.iter().chain(place.iter().flatten()).chain(tail.iter());
    match format {
        Format::Json => {
            out.push(b'{');
            for (i, (name, value)) in fields.enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                // Field names need no escaping.
                out.push(b'"');
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b"\":");
                match value {
                    Value::Str(s) => json_string(out, s),
                    Value::Number(n) => out.extend_from_slice(n.as_bytes()),
                    Value::Null => out.extend_from_slice(b"null"),
                }
            }
            out.extend_from_slice(b"}\n");
        }
        Format::Text => {
            for (i, (name, value)) in fields.enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                out.extend_from_slice(name.as_bytes());
                out.push(b'=');
                match value {
                    // Quoted when it would otherwise read as something
                    // else: empty, `null`, or holding a separator.
                    Value::Str(s) if needs_quotes(s) => json_string(out, s),
                    Value::Str(s) => out.extend_from_slice(s.as_bytes()),
                    Value::Number(n) => out.extend_from_slice(n.as_bytes()),
                    Value::Null => out.extend_from_slice(b"null"),
                }
            }
            out.push(b'\n');
        }
    }
}

enum Value<'a> {
    Str(&'a str),
    Number(&'a str),
    Null,
}

fn json_string(out: &mut Vec<u8>, s: &str) {
    // Most values (addresses, paths, ids) need no escape: copied whole.
    if !s.bytes().any(|b| b < b' ' || b == b'"' || b == b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// `ip` as text: an IPv4 address written digit by digit in `buf` (the
/// `Display` of `Ipv4Addr` goes through the formatting machinery and was
/// a fifth of the access log's cost per request); IPv6 by `Display`.
fn ip_text(ip: IpAddr, buf: &mut [u8; 15]) -> std::borrow::Cow<'_, str> {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string().into();
    };
    let mut at = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            buf[at] = b'.';
            at += 1;
        }
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(octet).as_bytes();
        buf[at..at + digits.len()].copy_from_slice(digits);
        at += digits.len();
    }
    // Only ASCII digits and dots were written.
    std::str::from_utf8(&buf[..at]).unwrap_or("0.0.0.0").into()
}

fn needs_quotes(s: &str) -> bool {
    s.is_empty()
        || s == "null"
        || s.bytes()
            .any(|b| b <= b' ' || b == b'"' || b == b'=' || b == b'\\' || b >= 0x7f)
}

/// `d` in milliseconds with three decimals (`1.500`), in `buf`; integer
/// arithmetic, as float formatting was a visible part of a line's cost.
fn millis(d: Duration, buf: &mut [u8; 32]) -> &str {
    let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    let mut whole = itoa::Buffer::new();
    let whole = whole.format(micros / 1000).as_bytes();
    let frac = micros % 1000;
    let len = whole.len();
    buf[..len].copy_from_slice(whole);
    buf[len] = b'.';
    buf[len + 1] = b'0' + (frac / 100) as u8;
    buf[len + 2] = b'0' + (frac / 10 % 10) as u8;
    buf[len + 3] = b'0' + (frac % 10) as u8;
    // Only ASCII digits and a dot were written.
    std::str::from_utf8(&buf[..len + 4]).unwrap_or("0.000")
}

/// `t` as `2026-11-29T05:37:32.123Z` (UTC, milliseconds) in `buf`.
fn rfc3339_millis(t: SystemTime, buf: &mut [u8; 24]) -> &str {
    let since = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_date(days);
    let parts: [(u64, usize); 7] = [
        (year, 4),
        (month, 2),
        (day, 2),
        (rem / 3600, 2),
        (rem % 3600 / 60, 2),
        (rem % 60, 2),
        (u64::from(since.subsec_millis()), 3),
    ];
    let separators = [b'-', b'-', b'T', b':', b':', b'.', b'Z'];
    let mut at = 0;
    for ((value, width), sep) in parts.into_iter().zip(separators) {
        let mut v = value;
        for i in (0..width).rev() {
            buf[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
        at += width;
        buf[at] = sep;
        at += 1;
    }
    // Only ASCII digits and separators were written.
    std::str::from_utf8(&buf[..at]).unwrap_or("1970-01-01T00:00:00.000Z")
}

/// The proleptic Gregorian date `days` after 1970-01-01. Counts in
/// 400-year eras starting on 1 March, where leap days fall at the end of
/// a year.
fn civil_date(days: u64) -> (u64, u64, u64) {
    // Days from 0000-03-01 to 1970-01-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

struct Pending {
    log: AccessLog,
    record: Record,
    started: Instant,
}

/// Hooks on a response body that count the bytes taken from it and send
/// its record once: at its end, at an error, or when dropped unfinished.
struct Logged {
    pending: Option<Pending>,
}

impl Logged {
    fn finish(&mut self) {
        if let Some(mut p) = self.pending.take() {
            p.record.duration = p.started.elapsed();
            p.log.send(p.record);
        }
    }
}

impl crate::body::Hooks for Logged {
    fn frame(&mut self, frame: &Frame<Bytes>, end: bool) {
        if let (Some(data), Some(p)) = (frame.data_ref(), self.pending.as_mut()) {
            p.record.bytes_sent += data.len() as u64;
        }
        if end {
            self.finish();
        }
    }

    fn error(&mut self) {
        self.finish();
    }

    fn end(&mut self) {
        self.finish();
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            ts: SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_930_652_123),
            client: Client::Ip("127.0.0.1".parse().expect("ip")),
            method: Some(Method::GET),
            uri: Some(PathAndQuery::from_static("/a/b?token=secret")),
            status: 200,
            backend: None,
            duration: Duration::from_micros(1500),
            bytes_sent: 42,
            limited: None,
            request_id: HeaderValue::from_static("abc"),
            place: None,
        }
    }

    #[test]
    fn durations_are_milliseconds_with_three_decimals() {
        let mut buf = [0u8; 32];
        assert_eq!(millis(Duration::ZERO, &mut buf), "0.000");
        assert_eq!(millis(Duration::from_nanos(1_234_567), &mut buf), "1.234");
        assert_eq!(
            millis(Duration::from_micros(12_345_067), &mut buf),
            "12345.067"
        );
        assert_eq!(millis(Duration::MAX, &mut buf), "18446744073709551.615");
    }

    #[test]
    fn a_queued_record_is_small() {
        // DEFAULT_CAPACITY's memory estimate.
        let size = std::mem::size_of::<Message>();
        assert!(size <= 256, "{size} bytes");
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        let mut buf = [0u8; 24];
        let at = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        assert_eq!(rfc3339_millis(at(0), &mut buf), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(at(951_782_400_007), &mut buf),
            "2000-02-29T00:00:00.007Z"
        );
        assert_eq!(
            rfc3339_millis(at(1_795_930_652_123), &mut buf),
            "2026-11-29T05:37:32.123Z"
        );
        assert_eq!(
            rfc3339_millis(at(4_102_444_799_999), &mut buf),
            "2099-12-31T23:59:59.999Z"
        );
    }

    #[test]
    fn json_line_has_every_field_and_no_query() {
        let mut out = Vec::new();
        format_line(&mut out, &record(), Format::Json);
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(
            v,
            serde_json::json!({
                "ts": "2026-11-29T05:37:32.123Z", "client": "127.0.0.1", "method": "GET",
                "path": "/a/b", "status": 200, "backend": null, "duration_ms": 1.5,
                "bytes_sent": 42, "limited": null, "request_id": "abc"
            })
        );
    }

    #[test]
    fn addresses_and_strings_are_written_as_display_and_serde_would() {
        let mut buf = [0u8; 15];
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.12.1",
            "1.22.133.4",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().expect("address");
            assert_eq!(ip_text(ip, &mut buf), ip.to_string());
        }
        for s in [
            "",
            "plain",
            "q\"uote",
            "back\\slash",
            "tab\tnl\n",
            "\u{1}",
            "é ü",
        ] {
            let mut out = Vec::new();
            json_string(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).expect("json"), "{s:?}");
        }
    }

    #[test]
    fn text_line_quotes_what_would_be_ambiguous() {
        let mut r = record();
        r.request_id = HeaderValue::from_static("a=\"b\"");
        r.limited = Some(Limited::Client);
        r.client = Client::Key(ClientKey::api("null").expect("key"));
        let mut out = Vec::new();
        format_line(&mut out, &r, Format::Text);
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "ts=2026-11-29T05:37:32.123Z client=\"null\" method=GET path=/a/b status=200 \
             backend=null duration_ms=1.500 bytes_sent=42 limited=client \
             request_id=\"a=\\\"b\\\"\"\n"
        );
    }

    /// A sink whose first write waits until the test lets it go, and says
    /// when it started waiting.
    struct Gate {
        entered: mpsc::Sender<()>,
        release: Receiver<()>,
        seen: Arc<std::sync::Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.entered.send(());
            let _ = self.release.recv();
            if let Ok(mut seen) = self.seen.lock() {
                seen.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A gate whose writer is stuck on its first line.
    fn blocked(bounds: Bounds) -> (AccessLog, Writer, mpsc::Sender<()>) {
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let gate = Gate {
            entered: entered_tx,
            release: release_rx,
            seen: Arc::default(),
        };
        let (log, writer) = start(
            Format::Json,
            Box::new(gate),
            bounds,
            &telemetry::Metrics::new(),
        )
        .expect("start");
        log.send(record());
        entered.recv().expect("writer reached the sink");
        (log, writer, release)
    }

    /// A record as the proxy fills it from a parsed request: its path and
    /// id are slices of the whole head, here of `head`.
    fn record_in(head: &Bytes, path_len: usize) -> Record {
        let mut r = record();
        r.uri = Some(PathAndQuery::from_maybe_shared(head.slice(..path_len)).expect("path"));
        r.request_id = HeaderValue::from_maybe_shared(head.slice(..16)).expect("id");
        r
    }

    #[test]
    fn queued_records_do_not_keep_their_request_heads() {
        let (log, writer, release) = blocked(Bounds::default());
        // 30 KB heads behind a blocked writer (issue 23: 581 MB RSS).
        let heads: Vec<Bytes> = (0..50)
            .map(|_| Bytes::from([b"/a?".as_slice(), &[b'x'; 30 * 1024]].concat()))
            .collect();
        for head in &heads {
            log.send(record_in(head, 30));
        }
        assert_eq!(log.dropped(), 0);
        assert!(
            heads.iter().all(Bytes::is_unique),
            "a queued record keeps its head"
        );
        // Each is charged its own few dozen bytes.
        assert!(log.queued_bytes() <= 50 * (std::mem::size_of::<Message>() + 64));
        drop(release);
        writer.stop();
        assert_eq!(log.queued_bytes(), 0);
    }

    #[test]
    fn the_queue_is_bounded_in_bytes() {
        let bound = 1 << 20;
        let (log, writer, release) = blocked(Bounds {
            records: DEFAULT_CAPACITY,
            bytes: bound,
        });
        // Paths of 30 KB: 34 fit in 1 MiB, the record cap (16,384) would
        // take all 200.
        let head = Bytes::from([b"/".as_slice(), &[b'p'; 30 * 1024]].concat());
        for _ in 0..200 {
            log.send(record_in(&head, head.len()));
            assert!(log.queued_bytes() <= bound, "{}", log.queued_bytes());
        }
        assert!(log.dropped() >= 160, "dropped {}", log.dropped());
        assert!(
            log.queued_bytes() > bound - 31 * 1024,
            "{}",
            log.queued_bytes()
        );
        drop(release);
        writer.stop();
        assert_eq!(log.queued_bytes(), 0);
    }

    #[test]
    fn a_blocked_sink_drops_and_counts_instead_of_blocking() {
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let gate = Gate {
            entered: entered_tx,
            release: release_rx,
            seen: seen.clone(),
        };
        let bounds = Bounds {
            records: 4,
            bytes: DEFAULT_MAX_BYTES,
        };
        let (log, writer) = start(
            Format::Json,
            Box::new(gate),
            bounds,
            &telemetry::Metrics::new(),
        )
        .expect("start");
        log.send(record());
        // The writer holds the first line and is stuck writing it; the
        // queue is empty.
        entered.recv().expect("writer reached the sink");
        for _ in 0..10 {
            log.send(record());
        }
        assert_eq!(log.dropped(), 6, "4 queued, 6 dropped");
        // Let every write through and stop: 1 + 4 lines arrive.
        for _ in 0..100 {
            let _ = release.send(());
        }
        writer.stop();
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(seen.iter().filter(|&&b| b == b'\n').count(), 5);
    }
}
