//! A small client of the admin API for the command line: `tollgate
//! backends list | drain NAME | enable NAME`.
//!
//! It speaks to a running tollgate's admin listener (`--admin URL`,
//! bearer token from `TOLLGATE_ADMIN_TOKEN`), so it changes the live
//! process, not a config file. An answer the API refused carries the
//! API's own message, which is what the operator sees.

use std::fmt::Write as _;
use std::time::Duration;

/// Environment variable holding the admin API's bearer token.
pub const TOKEN_ENV: &str = "TOLLGATE_ADMIN_TOKEN";

/// The admin URL used when `--admin` is not given.
pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:9090";

/// What to do with the backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendsCommand {
    /// Show every backend.
    List,
    /// Take one out of rotation.
    Drain(String),
    /// Put one back.
    Enable(String),
}

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    /// `--admin` is not an http(s) URL.
    #[error("--admin {0:?}: expected http://host:port")]
    BadUrl(String),
    /// No answer from the admin API.
    #[error("no answer from the admin API at {url}: {source}")]
    Unreachable {
        /// Where it was asked.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
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
}

/// Runs `command` against the admin API at `admin` and returns what to
/// print: the API's JSON with `json`, else a table or one line.
pub async fn backends(
    admin: &str,
    token: Option<&str>,
    command: &BackendsCommand,
    json: bool,
) -> Result<String, AdminClientError> {
    let base = admin.trim_end_matches('/');
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(AdminClientError::BadUrl(admin.to_owned()));
    }
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| AdminClientError::BadAnswer(e.to_string()))?;
    let (method, url) = match command {
        BackendsCommand::List => (reqwest::Method::GET, format!("{base}/backends")),
        BackendsCommand::Drain(name) => (
            reqwest::Method::POST,
            format!("{base}/backends/{}/drain", encode(name)),
        ),
        BackendsCommand::Enable(name) => (
            reqwest::Method::POST,
            format!("{base}/backends/{}/enable", encode(name)),
        ),
    };
    let mut req = http.request(method, &url);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let unreachable = |source| AdminClientError::Unreachable {
        url: url.clone(),
        source,
    };
    let answer = req.send().await.map_err(unreachable)?;
    let status = answer.status();
    let text = answer.text().await.map_err(unreachable)?;
    let body: serde_json::Value = serde_json::from_str(&text)
        .map_err(|_| AdminClientError::BadAnswer(format!("{status}: {text}")))?;
    if !status.is_success() {
        let message = body["message"].as_str().unwrap_or(&text).to_owned();
        return Err(AdminClientError::Refused {
            status: status.as_u16(),
            message,
        });
    }
    if json {
        return Ok(body.to_string());
    }
    Ok(match command {
        BackendsCommand::List => table(body.as_array().map_or(&[][..], Vec::as_slice)),
        _ => table(std::slice::from_ref(&body)),
    })
}

/// Backends as aligned columns: name, state, healthy, weight, in flight,
/// URL.
fn table(items: &[serde_json::Value]) -> String {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    let mut rows =
        vec![["NAME", "STATE", "HEALTHY", "WEIGHT", "IN_FLIGHT", "URL"].map(String::from)];
    for b in items {
        rows.push(["name", "state", "healthy", "weight", "in_flight", "url"].map(|k| text(&b[k])));
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
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

/// A name as one path segment: anything but unreserved characters and
/// `:` percent-encoded (an IPv6 default name has brackets).
fn encode(name: &str) -> String {
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
    fn the_table_aligns_columns() {
        let t = table(&[serde_json::json!({
            "name": "app-1", "state": "draining", "healthy": true,
            "weight": 3, "in_flight": 0, "url": "http://10.0.0.1:80"
        })]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("NAME   STATE"), "{t}");
        assert!(lines[1].starts_with("app-1  draining  true"), "{t}");
    }
}
