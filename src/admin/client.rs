//! A small client of the admin API for the command line: `tollgate
//! backends list | drain NAME [--pool POOL] | enable NAME [--pool POOL]`,
//! `tollgate pools list`, `tollgate routes list` and `tollgate clients
//! list | get ID | add ID | set ID | delete ID`.
//!
//! It speaks to a running tollgate's admin listener (`--admin URL`,
//! bearer token from `TOLLGATE_ADMIN_TOKEN`), so it changes the live
//! process, not a config file. An answer the API refused carries the
//! API's own message, which is what the operator sees.
//!
//! What it prints is safe for a terminal whoever wrote it: control
//! characters in client ids and messages are shown escaped
//! ([`crate::escape`]), an error body is cut at [`MAX_ERROR_BODY`] (a
//! server, or something posing as one, could send gigabytes), and a
//! redirect is reported, never followed: following it would send the
//! token to wherever the `Location` points.

use std::fmt::Write as _;
use std::time::Duration;

/// Environment variable holding the admin API's bearer token.
pub const TOKEN_ENV: &str = "TOLLGATE_ADMIN_TOKEN";

/// The admin URL used when `--admin` is not given.
pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:9090";

/// Most of an error answer's body shown (and read).
pub const MAX_ERROR_BODY: usize = 4096;

/// Largest successful answer read: a page of 1000 clients is well under
/// 1 MiB.
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// Pages `clients list` follows at most: 1000 clients a page, past the
/// client table's maximum.
const MAX_PAGES: usize = 10_000;

/// What to do with the backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendsCommand {
    /// Show every backend of every pool.
    List,
    /// Take one out of rotation.
    Drain(BackendRef),
    /// Put one back.
    Enable(BackendRef),
}

/// A backend by name, in the pool given or (without one) in the one pool
/// that has a backend of that name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendRef {
    /// Its name.
    pub name: String,
    /// Its pool (`--pool`).
    pub pool: Option<String>,
}

impl BackendRef {
    /// The admin API path that does `action` (`drain`, `enable`) to it.
    fn path(&self, action: &str) -> String {
        match &self.pool {
            Some(pool) => format!(
                "/pools/{}/backends/{}/{action}",
                encode(pool),
                encode(&self.name)
            ),
            None => format!("/backends/{}/{action}", encode(&self.name)),
        }
    }
}

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    /// `--admin` is not an http(s) URL.
    #[error("--admin {0:?}: expected http://host:port")]
    BadUrl(String),
    /// No answer from the admin API.
    #[error(
        "cannot reach the admin API at {url}: {reason} (is tollgate running there? see --admin)"
    )]
    Unreachable {
        /// Where it was asked.
        url: String,
        /// Why, with every cause (reqwest's own message alone is only
        /// "error sending request").
        reason: String,
    },
    /// The API answered with an error; `message` is its own.
    #[error("{status}: {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The API's message.
        message: String,
    },
    /// The answer was not the JSON the API sends.
    #[error("unexpected answer from the admin API: {0}")]
    BadAnswer(String),
    /// The API answered with a redirect, which is not followed.
    #[error(
        "the admin API answered {status} with Location: {location}; redirects are not \
         followed (the token goes to --admin only): give the final address as --admin"
    )]
    Redirected {
        /// The HTTP status (3xx).
        status: u16,
        /// Where it pointed, control characters escaped.
        location: String,
    },
}

/// What to do with the client table.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientsCommand {
    /// Show every client.
    List,
    /// Show one.
    Get(String),
    /// Create one with its own limits.
    Add(String, ClientLimits),
    /// Replace one's limits (the API's PUT takes a full body).
    Set(String, ClientLimits),
    /// Remove one: it falls back to the default limits.
    Delete(String),
}

/// The limits `add` and `set` send.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientLimits {
    /// Bucket size.
    pub capacity: u64,
    /// Refill rate, in one of the API's two spellings.
    pub rate: Rate,
}

/// A refill rate as the operator wrote it: sent as given, the server
/// alone converts and judges it.
#[derive(Debug, Clone, PartialEq)]
pub enum Rate {
    /// `--rate-per-sec R`: the body's `rate_per_sec`.
    PerSec(f64),
    /// `--rate N/unit`: the body's `rate` string.
    Unit(String),
}

impl ClientLimits {
    /// The limit fields of a request body.
    fn fields(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut body = serde_json::Map::new();
        body.insert("capacity".into(), self.capacity.into());
        match &self.rate {
            Rate::PerSec(r) => body.insert("rate_per_sec".into(), (*r).into()),
            Rate::Unit(r) => body.insert("rate".into(), r.clone().into()),
        };
        body
    }
}

/// `--rate-per-sec`: judged by the server's own check
/// ([`crate::limiter::check_rate_per_sec`]), so `-0`, `-1`, `NaN` or a
/// rate above the maximum is a usage error with the message the config
/// and the admin API give.
pub fn parse_rate_per_sec(s: &str) -> Result<f64, String> {
    let rate = s
        .parse::<f64>()
        .map_err(|_| format!("{s:?} is not a number (e.g. 10 or 0.5)"))?;
    crate::limiter::check_rate_per_sec(rate).map_err(|e| e.to_string())
}

/// `--rate`: parsed by the one rate parser ([`crate::limiter::Rate`]),
/// so the command line accepts and refuses exactly what the config and
/// the admin API do, with the same message; sent in its canonical form.
pub fn parse_rate(s: &str) -> Result<String, String> {
    s.parse::<crate::limiter::Rate>()
        .map(|rate| rate.to_string())
        .map_err(|e| e.to_string())
}

impl AdminClientError {
    /// The exit status: 2 for a usage error (a bad `--admin`), else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::BadUrl(_) => 2,
            _ => 1,
        }
    }
}

/// A successful answer: its text (empty for a 204) and, for a page of a
/// list, the path of the next page (`Link: <...>; rel="next"`).
#[derive(Debug)]
struct Answer {
    text: String,
    next: Option<String>,
}

/// One request to the admin API: the answer when it succeeded, the API's
/// message as [`AdminClientError::Refused`] when it did not.
async fn call(
    admin: &str,
    token: Option<&str>,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<Answer, AdminClientError> {
    let base = admin.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(AdminClientError::BadUrl(admin.to_owned()));
    }
    let http = reqwest::Client::builder()
        .no_proxy()
        // A redirect would take the token with it.
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| AdminClientError::BadAnswer(e.to_string()))?;
    let url = format!("{base}{path}");
    let mut req = http.request(method, &url);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    if let Some(body) = body {
        // reqwest's `json` needs its `json` feature; the header and the
        // bytes are all it would add.
        req = req
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
    }
    let unreachable = |e: reqwest::Error| AdminClientError::Unreachable {
        url: url.clone(),
        reason: causes(&e),
    };
    let mut answer = req.send().await.map_err(unreachable)?;
    let status = answer.status();
    if status.is_redirection() {
        let location = answer
            .headers()
            .get(reqwest::header::LOCATION)
            .map_or("(none)".into(), |v| {
                crate::escape::escaped(&String::from_utf8_lossy(v.as_bytes()))
            });
        return Err(AdminClientError::Redirected {
            status: status.as_u16(),
            location,
        });
    }
    if !status.is_success() {
        let (head, cut) = read_at_most(&mut answer, MAX_ERROR_BODY)
            .await
            .map_err(unreachable)?;
        return Err(refusal(status, &head, cut));
    }
    let next = answer
        .headers()
        .get(reqwest::header::LINK)
        .and_then(|v| v.to_str().ok())
        .and_then(next_page);
    let (bytes, cut) = read_at_most(&mut answer, MAX_ANSWER)
        .await
        .map_err(unreachable)?;
    if cut {
        return Err(AdminClientError::BadAnswer(format!(
            "{status}: an answer larger than {MAX_ANSWER} bytes"
        )));
    }
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if !text.is_empty() && serde_json::from_str::<serde_json::Value>(&text).is_err() {
        return Err(AdminClientError::BadAnswer(format!(
            "{status}: {}",
            shown(&text, false)
        )));
    }
    Ok(Answer { text, next })
}

/// reqwest's message only repeats the URL; its causes say what happened
/// (connection refused, timed out...).
fn causes(e: &reqwest::Error) -> String {
    match std::error::Error::source(e) {
        Some(cause) => crate::error::Chain(cause).to_string(),
        None => e.to_string(),
    }
}

/// The first `limit` bytes of the body, and whether there was more (the
/// rest is not read: the connection is dropped with the answer).
async fn read_at_most(
    answer: &mut reqwest::Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut bytes = Vec::new();
    while let Some(chunk) = answer.chunk().await? {
        let room = limit - bytes.len();
        if chunk.len() > room {
            bytes.extend_from_slice(&chunk[..room]);
            return Ok((bytes, true));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok((bytes, false))
}

/// The error for a refused request: the API's message if the body is its
/// JSON error, else the body itself; either at most [`MAX_ERROR_BODY`]
/// bytes, control characters escaped.
fn refusal(status: reqwest::StatusCode, body: &[u8], cut: bool) -> AdminClientError {
    let text = String::from_utf8_lossy(body);
    let message = (!cut)
        .then(|| serde_json::from_str::<serde_json::Value>(&text).ok())
        .flatten()
        .and_then(|v| v["message"].as_str().map(str::to_owned));
    match message {
        Some(message) => {
            let cut = message.len() > MAX_ERROR_BODY;
            AdminClientError::Refused {
                status: status.as_u16(),
                message: shown(cut_at(&message, MAX_ERROR_BODY), cut),
            }
        }
        None => AdminClientError::BadAnswer(format!("{status}: {}", shown(&text, cut))),
    }
}

/// `text` for a terminal: control characters escaped, and a note when it
/// was cut.
fn shown(text: &str, cut: bool) -> String {
    let mut out = crate::escape::escaped(text);
    if cut {
        out.push_str(&format!(
            " ... (truncated: only the first {MAX_ERROR_BODY} bytes are shown)"
        ));
    }
    out
}

/// The longest start of `text` of at most `max` bytes, on a character
/// boundary.
fn cut_at(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The path of a `Link: <path>; rel="next"` value, if it names one on the
/// same server (a path, never a URL: the token goes to --admin only).
fn next_page(link: &str) -> Option<String> {
    link.split(',').find_map(|item| {
        let (target, params) = item.trim().split_once(';')?;
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        let next = params.split(';').any(|p| {
            p.trim()
                .strip_prefix("rel=")
                .is_some_and(|rel| rel.trim_matches('"').split(' ').any(|r| r == "next"))
        });
        (next && target.starts_with('/') && !target.starts_with("//")).then(|| target.to_owned())
    })
}

fn parse(text: &str) -> Result<serde_json::Value, AdminClientError> {
    serde_json::from_str(text).map_err(|_| {
        AdminClientError::BadAnswer(shown(
            cut_at(text, MAX_ERROR_BODY),
            text.len() > MAX_ERROR_BODY,
        ))
    })
}

/// Runs `command` against the admin API at `admin` and returns what to
/// print: the API's JSON as it came with `json`, else a table.
pub async fn backends(
    admin: &str,
    token: Option<&str>,
    command: &BackendsCommand,
    json: bool,
) -> Result<String, AdminClientError> {
    let (method, path, one) = match command {
        BackendsCommand::List => (reqwest::Method::GET, "/backends".to_owned(), None),
        BackendsCommand::Drain(b) => (reqwest::Method::POST, b.path("drain"), Some(b)),
        BackendsCommand::Enable(b) => (reqwest::Method::POST, b.path("enable"), Some(b)),
    };
    let text = match call(admin, token, method, &path, None).await {
        Ok(answer) => answer.text,
        // A name more than one pool has: the API names the pools; say
        // how to pick one here.
        Err(AdminClientError::Refused {
            status: 409,
            message,
        }) if one.is_some_and(|b| b.pool.is_none()) => {
            return Err(AdminClientError::Refused {
                status: 409,
                message: format!("{message}; give --pool POOL"),
            })
        }
        Err(e) => return Err(e),
    };
    if json {
        return Ok(crate::escape::json_for_terminal(&text));
    }
    let body = parse(&text)?;
    let items = match command {
        BackendsCommand::List => body.as_array().map_or(&[][..], Vec::as_slice),
        _ => std::slice::from_ref(&body),
    };
    Ok(backend_table(items))
}

/// Backends as a table, a row each.
fn backend_table(items: &[serde_json::Value]) -> String {
    const KEYS: [&str; 7] = [
        "name",
        "pool",
        "state",
        "healthy",
        "weight",
        "in_flight",
        "url",
    ];
    table(
        &[
            "NAME",
            "POOL",
            "STATE",
            "HEALTHY",
            "WEIGHT",
            "IN_FLIGHT",
            "URL",
        ],
        items.iter().map(|b| KEYS.map(|k| cell(&b[k])).to_vec()),
    )
}

/// `GET path`: the API's JSON as it came with `json` (control characters
/// escaped), else the list it holds, for `render` to make a table of.
async fn list_of(
    admin: &str,
    token: Option<&str>,
    path: &str,
    json: bool,
    render: fn(&[serde_json::Value]) -> String,
) -> Result<String, AdminClientError> {
    let text = call(admin, token, reqwest::Method::GET, path, None)
        .await?
        .text;
    if json {
        return Ok(crate::escape::json_for_terminal(&text));
    }
    match parse(&text)? {
        serde_json::Value::Array(items) => Ok(render(&items)),
        other => Err(AdminClientError::BadAnswer(format!(
            "expected a list, got {}",
            shown(cut_at(&other.to_string(), MAX_ERROR_BODY), false)
        ))),
    }
}

/// `tollgate pools list`: each pool with its strategy, its backends (how
/// many take requests, of how many), timeouts and retries; the API's
/// JSON with `json`.
pub async fn pools(
    admin: &str,
    token: Option<&str>,
    json: bool,
) -> Result<String, AdminClientError> {
    list_of(admin, token, "/pools", json, pool_table).await
}

fn pool_table(items: &[serde_json::Value]) -> String {
    table(
        &[
            "NAME", "STRATEGY", "ACTIVE", "BACKENDS", "CONNECT", "REQUEST", "RETRIES",
        ],
        items.iter().map(|p| {
            let backends = p["backends"].as_array().map_or(&[][..], Vec::as_slice);
            let active = backends.iter().filter(|b| b["state"] == "active").count();
            let names: Vec<String> = backends.iter().map(|b| cell(&b["name"])).collect();
            let on: Vec<String> = p["retries"]["on"]
                .as_array()
                .map_or(&[][..], Vec::as_slice)
                .iter()
                .map(cell)
                .collect();
            vec![
                cell(&p["name"]),
                cell(&p["strategy"]),
                format!("{active}/{}", backends.len()),
                if names.is_empty() {
                    "-".into()
                } else {
                    names.join(",")
                },
                millis(&p["timeouts"]["connect_ms"]),
                millis(&p["timeouts"]["request_ms"]),
                match (cell(&p["retries"]["attempts"]), on.is_empty()) {
                    (n, true) => n,
                    (n, false) => format!("{n} on {}", on.join(",")),
                },
            ]
        }),
    )
}

/// `tollgate routes list`: each route in the order they are tried, with
/// what it matches, its pool, its rewrite and its counts; the API's JSON
/// with `json`.
pub async fn routes(
    admin: &str,
    token: Option<&str>,
    json: bool,
) -> Result<String, AdminClientError> {
    list_of(admin, token, "/routes", json, route_table).await
}

fn route_table(items: &[serde_json::Value]) -> String {
    table(
        &["NAME", "POOL", "MATCH", "REWRITE", "REQUESTS", "LIMITED"],
        items.iter().map(|r| {
            vec![
                cell(&r["name"]),
                cell(&r["pool"]),
                conditions(&r["match"]),
                cell(&r["rewrite"]["prefix"]),
                cell(&r["requests"]),
                cell(&r["limited"]),
            ]
        }),
    )
}

/// A route's conditions on one line, as the config writes them
/// (`hosts=a,b path_prefix=/api methods=GET headers=x-canary:1`); `*`
/// when it matches every request.
fn conditions(m: &serde_json::Value) -> String {
    let list = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .map(cell)
            .collect()
    };
    let mut parts = Vec::new();
    let hosts = list(&m["hosts"]);
    if !hosts.is_empty() {
        parts.push(format!("hosts={}", hosts.join(",")));
    }
    for key in ["path_prefix", "path_exact"] {
        if !m[key].is_null() {
            parts.push(format!("{key}={}", cell(&m[key])));
        }
    }
    if m["ignore_case"] == true {
        parts.push("ignore_case".into());
    }
    let methods = list(&m["methods"]);
    if !methods.is_empty() {
        parts.push(format!("methods={}", methods.join(",")));
    }
    if let Some(headers) = m["headers"].as_object().filter(|h| !h.is_empty()) {
        let pairs: Vec<String> = headers
            .iter()
            .map(|(k, v)| format!("{}:{}", crate::escape::escaped(k), cell(v)))
            .collect();
        parts.push(format!("headers={}", pairs.join(",")));
    }
    if parts.is_empty() {
        "*".into()
    } else {
        parts.join(" ")
    }
}

/// Milliseconds as a config writes a duration: `2s`, `500ms`, `10m`.
fn millis(v: &serde_json::Value) -> String {
    let Some(ms) = v.as_u64() else {
        return cell(v);
    };
    match ms {
        0 => "0s".into(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// Runs `command` against the admin API at `admin` and returns what to
/// print: the API's JSON as it came with `json` (nothing for `delete`,
/// whose answer has no body), else a table for `list`, the client's
/// fields one a line for `get`, `add` and `set`, one line for `delete`.
pub async fn clients(
    admin: &str,
    token: Option<&str>,
    command: &ClientsCommand,
    json: bool,
) -> Result<String, AdminClientError> {
    use reqwest::Method;
    let one = |id: &str| format!("/clients/{}", encode(id));
    let (method, path, body) = match command {
        ClientsCommand::List => (Method::GET, "/clients".to_owned(), None),
        ClientsCommand::Get(id) => (Method::GET, one(id), None),
        ClientsCommand::Add(id, limits) => {
            let mut body = serde_json::Map::new();
            body.insert("client_id".into(), id.clone().into());
            body.extend(limits.fields());
            (Method::POST, "/clients".to_owned(), Some(body.into()))
        }
        ClientsCommand::Set(id, limits) => (Method::PUT, one(id), Some(limits.fields().into())),
        ClientsCommand::Delete(id) => (Method::DELETE, one(id), None),
    };
    if let ClientsCommand::List = command {
        let items = every_page(admin, token).await?;
        if json {
            let text = serde_json::Value::Array(items).to_string();
            return Ok(crate::escape::json_for_terminal(&text));
        }
        return Ok(table(
            &["CLIENT_ID", "CAPACITY", "RATE", "TOKENS"],
            items.iter().map(|c| {
                vec![
                    cell(&c["client_id"]),
                    cell(&c["capacity"]),
                    rate(c),
                    tokens(&c["tokens"]),
                ]
            }),
        ));
    }
    let text = call(admin, token, method, &path, body).await?.text;
    if json {
        return Ok(crate::escape::json_for_terminal(&text));
    }
    Ok(match command {
        ClientsCommand::Delete(id) => format!(
            "deleted {}: back to the default limits",
            crate::escape::escaped(id)
        ),
        _ => fields(&parse(&text)?),
    })
}

/// Every client, page after page as the API's `Link` headers lead.
async fn every_page(
    admin: &str,
    token: Option<&str>,
) -> Result<Vec<serde_json::Value>, AdminClientError> {
    let mut items = Vec::new();
    let mut path = format!("/clients?limit={}", super::MAX_PAGE);
    for _ in 0..MAX_PAGES {
        let answer = call(admin, token, reqwest::Method::GET, &path, None).await?;
        match parse(&answer.text)? {
            serde_json::Value::Array(page) => items.extend(page),
            other => {
                return Err(AdminClientError::BadAnswer(format!(
                    "expected a list of clients, got {}",
                    shown(cut_at(&other.to_string(), MAX_ERROR_BODY), false)
                )))
            }
        }
        match answer.next {
            Some(next) if next != path => path = next,
            _ => return Ok(items),
        }
    }
    Err(AdminClientError::BadAnswer(format!(
        "more than {MAX_PAGES} pages of clients: stopped"
    )))
}

/// A client's rate as the operator wrote it: its `rate` string, else
/// `rate_per_sec` per second.
fn rate(client: &serde_json::Value) -> String {
    match client["rate"].as_str() {
        Some(r) => crate::escape::escaped(r),
        None => format!("{}/s", cell(&client["rate_per_sec"])),
    }
}

/// A level rounded down to two decimals (rounding up could show a token
/// that is not there yet); `--json` has it exactly.
fn tokens(v: &serde_json::Value) -> String {
    match v.as_f64() {
        Some(t) => format!("{}", (t * 100.0).floor() / 100.0),
        None => cell(v),
    }
}

/// One client, a field a line: the contract's fields first, in a fixed
/// order, then any others the server adds. `rate` is always shown, as in
/// the table (a server without `rate` strings has only `rate_per_sec`).
fn fields(client: &serde_json::Value) -> String {
    const ORDER: [&str; 5] = ["client_id", "capacity", "rate", "rate_per_sec", "tokens"];
    let Some(map) = client.as_object() else {
        return crate::escape::json_for_terminal(&client.to_string());
    };
    let mut rows: Vec<Vec<String>> = ORDER
        .iter()
        .filter(|k| **k == "rate" || map.contains_key(**k))
        .map(|k| {
            let value = match *k {
                "rate" => rate(client),
                "tokens" => tokens(&map[*k]),
                _ => cell(&map[*k]),
            };
            vec![(*k).to_owned(), value]
        })
        .collect();
    rows.extend(
        map.iter()
            .filter(|(k, _)| !ORDER.contains(&k.as_str()))
            .map(|(k, v)| vec![crate::escape::escaped(k), cell(v)]),
    );
    aligned(&rows)
}

/// A JSON value as a table cell: strings bare, null as `-`, numbers as
/// Rust prints them (`10`, not `10.0`).
fn cell(v: &serde_json::Value) -> String {
    match v {
        // Ids come from the client table, which can be written by hand.
        serde_json::Value::String(s) => crate::escape::escaped(s),
        serde_json::Value::Null => "-".into(),
        serde_json::Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => u.to_string(),
            (None, Some(i), _) => i.to_string(),
            (None, None, Some(f)) => f.to_string(),
            _ => n.to_string(),
        },
        other => crate::escape::json_for_terminal(&other.to_string()),
    }
}

/// A header line and `rows` as aligned columns.
fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut all = vec![header.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>()];
    all.extend(rows);
    aligned(&all)
}

/// Rows as left-aligned columns two spaces apart, without trailing
/// spaces.
fn aligned(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (cell, w) in r.iter().zip(&widths) {
            let _ = write!(line, "{cell:<w$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.pop();
    out
}

/// A name as one path segment (or query value): anything but unreserved
/// characters and `:` percent-encoded (an IPv6 default name has
/// brackets).
pub(super) fn encode(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_encoded_as_one_segment() {
        assert_eq!(encode("app-1"), "app-1");
        assert_eq!(encode("[::1]:9001"), "%5B::1%5D:9001");
        assert_eq!(encode("a/b"), "a%2Fb");
    }

    #[test]
    fn a_backend_is_asked_for_in_its_pool_when_one_is_given() {
        let b = |name: &str, pool: Option<&str>| BackendRef {
            name: name.into(),
            pool: pool.map(Into::into),
        };
        assert_eq!(b("app-1", None).path("drain"), "/backends/app-1/drain");
        assert_eq!(
            b("a/b", Some("api v2")).path("enable"),
            "/pools/api%20v2/backends/a%2Fb/enable"
        );
    }

    #[test]
    fn durations_and_conditions_read_as_the_config_writes_them() {
        let ms = |n: u64| millis(&serde_json::json!(n));
        assert_eq!(
            [
                ms(0),
                ms(250),
                ms(2000),
                ms(1500),
                ms(600_000),
                ms(7_200_000)
            ],
            ["0s", "250ms", "2s", "1500ms", "10m", "2h"]
        );
        let all = serde_json::json!({"hosts": [], "path_prefix": null, "path_exact": null,
            "ignore_case": false, "methods": [], "headers": {}});
        assert_eq!(conditions(&all), "*");
        let some = serde_json::json!({"hosts": ["a.example", "*.b.example"], "path_prefix": "/api",
            "path_exact": null, "ignore_case": true, "methods": ["GET", "POST"],
            "headers": {"x-canary": "1", "x-env": "*"}});
        assert_eq!(
            conditions(&some),
            "hosts=a.example,*.b.example path_prefix=/api ignore_case methods=GET,POST \
             headers=x-canary:1,x-env:*"
        );
    }

    #[test]
    fn the_table_aligns_columns() {
        let t = table(
            &["NAME", "STATE", "HEALTHY"],
            [vec!["app-1".into(), "draining".into(), "true".into()]].into_iter(),
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("NAME   STATE"), "{t}");
        assert!(lines[1].starts_with("app-1  draining  true"), "{t}");
    }

    #[test]
    fn a_rate_is_judged_as_the_server_judges_it() {
        for ok in ["10/s", "100/min", "1000/day", "0/hour"] {
            assert_eq!(parse_rate(ok).as_deref(), Ok(ok));
        }
        for bad in [
            "",
            "10",
            "10/",
            "/s",
            "ten/s",
            "0.5/hour",
            "1/fortnight",
            "-1/s",
            "-0/s",
            "10/s2",
            " 10/s",
            "10 /s",
            "10 / s",
        ] {
            let cli = parse_rate(bad).expect_err(bad);
            let server = bad.parse::<crate::limiter::Rate>().expect_err(bad);
            assert_eq!(cli, server.to_string(), "{bad:?}");
        }
    }

    #[test]
    fn a_rate_per_sec_is_judged_as_the_server_judges_it() {
        assert_eq!(parse_rate_per_sec("2.5"), Ok(2.5));
        assert_eq!(parse_rate_per_sec("0"), Ok(0.0));
        for bad in ["fast", "NaN", "inf", "-inf", "", "-1", "-0", "-0.0", "2e9"] {
            assert!(parse_rate_per_sec(bad).is_err(), "{bad:?}");
        }
        let minus_zero = parse_rate_per_sec("-0.0").expect_err("-0");
        assert!(minus_zero.contains("must not be negative"), "{minus_zero}");
    }

    #[test]
    fn limits_are_sent_as_written() {
        let fields = |rate| serde_json::Value::from(ClientLimits { capacity: 7, rate }.fields());
        assert_eq!(
            fields(Rate::PerSec(0.5)),
            serde_json::json!({"capacity": 7, "rate_per_sec": 0.5})
        );
        assert_eq!(
            fields(Rate::Unit("1000/day".into())),
            serde_json::json!({"capacity": 7, "rate": "1000/day"})
        );
    }

    #[test]
    fn a_client_is_shown_a_field_a_line() {
        let plain = serde_json::json!({
            "client_id": "u", "capacity": 100, "rate_per_sec": 10.0, "tokens": 99.996
        });
        assert_eq!(
            fields(&plain),
            "client_id     u\ncapacity      100\nrate          10/s\nrate_per_sec  10\ntokens        99.99"
        );
        let daily = serde_json::json!({
            "client_id": "d", "capacity": 1000, "rate_per_sec": 0.011574074074074073,
            "tokens": 1000.0, "rate": "1000/day", "extra": null
        });
        let shown = fields(&daily);
        assert!(shown.contains("\nrate          1000/day\n"), "{shown}");
        assert!(shown.ends_with("\nextra         -"), "{shown}");
    }
}
